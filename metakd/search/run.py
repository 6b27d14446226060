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
    adabert = rosearch is None or not rosearch.enabled or rosearch.initial == "adabert"
    data = prepare_search_data(
        datamodule, teacher, settings.arch_fraction, settings.probes and adabert, settings.probe_steps, seed
    )
    embeddings = pretrained_word_embeddings(settings.embedding)
    search = search_architecture(settings, data, datamodule, embeddings, seed) if adabert else None
    architecture = search.architecture if search is not None else None
    candidates_report = None
    if rosearch is not None and rosearch.enabled:
        architecture, candidates_report = evolve_architecture(
            settings, rosearch, datamodule, data, embeddings, seed, out_dir, str(teacher_ckpt), architecture
        )
    strategy = "+".join(
        name for name, used in (("adabert", adabert), ("rosearch", candidates_report)) if used
    )
    cost = architecture_cost(architecture, len(datamodule.tokenizer), datamodule.num_labels)
    architecture["derived_from"] = {
        "target_domain": datamodule.target_domain,
        "teacher": str(teacher_ckpt),
        "seed": seed,
        "steps": settings.steps,
        "strategy": strategy,
        "selected_by": "rosearch fitness" if candidates_report else "alphas",
    }
    if search is not None:
        entropy = search.entropy_report()["op"]
        architecture["derived_from"]["op_entropy"] = {
            key: round(entropy[key], 4) for key in ("initial", "final", "max")
        }
    architecture["cost"] = cost
    write_architecture(architecture, out_dir / "architecture.json")
    report = {
        "architecture": architecture,
        "settings": asdict(settings),
        "strategy": strategy,
        "edges": search.edge_report(settings.operations, settings.nodes_per_cell) if search else None,
        "depth_probabilities": search.depth_probabilities() if search else None,
        "split": {"weight": len(data.weight_rows), "architecture": len(data.arch_rows)},
        "history": search.history if search else [],
        "entropy": search.entropy_report() if search else None,
        "rosearch": candidates_report,
        "seconds": round(time.monotonic() - start_time, 1),
    }
    if data.probe_weights is not None:
        report["probe_weights"] = data.probe_weights.tolist()
    write_json(out_dir / "search.json", report)
    return architecture


def evolve_architecture(
    settings: SearchSettings,
    ro: Any,
    datamodule: Any,
    data: Any,
    embeddings: torch.Tensor,
    seed: int,
    out_dir: Path,
    teacher: str,
    derived: dict[str, Any] | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """RoSearch's evolutionary search (:mod:`metakd.search.rosearch`) over AdaBERT's cell space with real
    candidates (KD on the weight split, the attack on the architecture split), cached in
    ``ro.cache_dir`` (default ``<out>/candidates``)."""
    from metakd.search.rosearch import (
        CandidateCache,
        CandidateEvaluator,
        attack_measurer,
        kd_trainer,
        run_rosearch,
    )
    from metakd.search.space import Space

    ro.check()
    space = Space(
        tuple(settings.operations),
        settings.nodes_per_cell,
        settings.edges_per_node,
        settings.max_cells,
        settings.hidden_size,
        int(embeddings.shape[1]),
    )
    base = {
        "embedding": {
            "source": settings.embedding,
            "dim": int(embeddings.shape[1]),
            "freeze": settings.freeze_embeddings,
        },
        "dropout": settings.dropout,
    }
    context = {
        "seed": seed,
        "teacher": teacher_identity(teacher),
        "target_domain": datamodule.target_domain,
        "backbone": datamodule.backbone,
        "max_length": datamodule.max_length,
        "split": [settings.arch_fraction, len(data.weight_rows), len(data.arch_rows)],
        "embedding": base["embedding"],
        "dropout": settings.dropout,
        "training": {
            key: getattr(settings, key) for key in ("weight_lr", "batch_size", "gamma", "temperature")
        },
        "candidate_steps": ro.candidate_steps,
        "attack": ro.attack_settings(),
    }
    cache = CandidateCache(ro.cache_dir or out_dir / "candidates", context)
    evaluator = CandidateEvaluator(
        kd_trainer(settings, ro, datamodule, data, embeddings, seed),
        attack_measurer(space, ro, datamodule, data, seed),
        ro,
        cache,
    )
    return run_rosearch(space, ro, evaluator, seed, base, derived)


def teacher_identity(path: str) -> dict[str, Any]:
    """The teacher as the candidate cache knows it: its path, size and modification time (a teacher
    retrained at the same path invalidates the cached candidates)."""
    stat = Path(path).stat()
    return {"path": str(Path(path).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


__all__ = ["evolve_architecture", "run_search"]
