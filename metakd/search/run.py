"""One search run for one target domain: load the teacher, prepare the split and its knowledge, search
AdaBERT's architecture (:mod:`metakd.search.adabert`), optionally pick among it and its mutants by
RoSearch's fitness (:mod:`metakd.search.rosearch`), and write ``<out>/architecture.json`` and
``<out>/search.json``."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from metakd.errors import StudentConfigError
from metakd.search.adabert import SearchSettings, search_architecture
from metakd.search.knowledge import prepare_search_data


def run_search(
    settings: SearchSettings,
    datamodule: Any,
    teacher_ckpt: str,
    out_dir: str | Path,
    seed: int = 42,
    rosearch: Any = None,
) -> dict[str, Any]:
    """Search one target domain (module docstring); writes ``<out>/architecture.json`` and
    ``<out>/search.json`` (settings, final alphas as probabilities, losses, timing) and returns the
    architecture."""
    from metakd.backbones import check_same_tokenizer, pretrained_word_embeddings
    from metakd.students.adabert import architecture_cost, write_architecture
    from metakd.teachers import FrozenTeacher
    from metakd.utils import write_json

    settings.check()
    if datamodule.target_domain is None:
        raise StudentConfigError("search: set data.init_args.target_domain (the search is per domain)")
    start_time = time.monotonic()
    torch.manual_seed(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    datamodule.setup("fit")
    check_same_tokenizer(settings.embedding, "search.embedding", datamodule.backbone, "data")
    teacher = FrozenTeacher(
        teacher_ckpt, datamodule.label_names, datamodule.domain_names, datamodule.target_domain
    )
    teacher.check_tokenizer(datamodule.backbone)
    data = prepare_search_data(
        datamodule, teacher, settings.arch_fraction, settings.probes, settings.probe_steps, seed
    )
    embeddings = pretrained_word_embeddings(settings.embedding)
    search = search_architecture(settings, data, datamodule, embeddings, seed)
    architecture = search.architecture
    candidates_report = None
    if rosearch is not None and rosearch.enabled:
        from metakd.search.rosearch import evolve

        architecture, candidates_report = evolve(architecture, settings, rosearch, datamodule, data, seed)
    cost = architecture_cost(architecture, len(datamodule.tokenizer), datamodule.num_labels)
    architecture["derived_from"] = {
        "target_domain": datamodule.target_domain,
        "teacher": str(teacher_ckpt),
        "seed": seed,
        "steps": settings.steps,
        "selected_by": "rosearch fitness" if candidates_report else "alphas",
    }
    architecture["cost"] = cost
    write_architecture(architecture, out_dir / "architecture.json")
    report = {
        "architecture": architecture,
        "settings": asdict(settings),
        "edges": search.edge_report(settings.operations, settings.nodes_per_cell),
        "depth_probabilities": search.depth_probabilities(),
        "split": {"weight": len(data.weight_rows), "architecture": len(data.arch_rows)},
        "history": search.history,
        "rosearch": candidates_report,
        "seconds": round(time.monotonic() - start_time, 1),
    }
    if data.probe_weights is not None:
        report["probe_weights"] = data.probe_weights.tolist()
    write_json(out_dir / "search.json", report)
    return architecture


__all__ = ["run_search"]
