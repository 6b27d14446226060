"""The pipeline's robustness study: the word-substitution attack (``python -m metakd robustness``) of every
finished main-study cell on each of its domains, with the settings of the config's ``robustness:`` block.

A cell's report is ``robustness_<domain>.json`` in its folder; one made with the same settings is reused. Its
summary (clean accuracy, accuracy under attack, attack success rate, examples, split, settings) is copied into
the cell's result file under ``robustness.<domain>``, so that committed result files rebuild the robustness
table without the runs folder (``--report-only``). The report
(:func:`metakd.pipeline.tables.collect_robustness`) summarises them over seeds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from metakd.pipeline import cellstore
from metakd.pipeline.config import PipelineError
from metakd.pipeline.invoke import run_cli
from metakd.pipeline.plan import Cell
from metakd.pipeline.store import best_checkpoint, cell_dir, cell_key, read_result, results_store
from metakd.utils import write_json

ROBUSTNESS_OPTIONS = {
    key: "--" + key.replace("_", "-")
    for key in ("max_examples", "seed", "max_fraction", "max_substitutions", "max_candidates", "source",
                "wordnet_dir", "min_similarity", "pos_check", "min_word_similarity")
}  # fmt: skip
"""Keys of the pipeline's ``robustness:`` block and the ``python -m metakd robustness`` options they set."""

SUMMARY_KEYS = ("clean_accuracy", "accuracy_under_attack", "attack_success_rate", "examples", "split")
"""What a cell's result file keeps of each attack report (the per-example details stay in the runs folder)."""


def robustness_domains(config: dict[str, Any], cell: Cell) -> list[str]:
    """The domains a main-study cell is attacked on (its domain; every domain for a pooled teacher)."""
    if cell.kind == "search" or "study" in cell.info or "train_fraction" in cell.info:
        return []
    return [cell.info["domain"]] if "domain" in cell.info else list(config["domains"])


def robustness_path(config: dict[str, Any], seed: int, cell: str, domain: str) -> Path:
    return cell_dir(config, seed, cell) / f"robustness_{domain}.json"


def run_cell_robustness(config: dict[str, Any], seed: int, cell: Cell, in_process: bool = False) -> str:
    """Attack a finished cell's best checkpoint on each of its domains (``robustness:`` settings); a report
    made with the same settings is reused. Returns an error message, or "" when every attack ran."""
    settings = dict(config["robustness"])
    unknown = sorted(set(settings) - set(ROBUSTNESS_OPTIONS))
    if unknown:
        raise PipelineError(f"robustness: unknown keys {unknown}; known: {sorted(ROBUSTNESS_OPTIONS)}")
    directory = cell_dir(config, seed, cell.name)
    for domain in robustness_domains(config, cell):
        path = robustness_path(config, seed, cell.name, domain)
        if not best_checkpoint(config, seed, cell.name).is_file() and not path.is_file():
            return (
                f"robustness needs {best_checkpoint(config, seed, cell.name)} (keep_checkpoints "
                f"{config['keep_checkpoints'].get(cell.kind)!r} for {cell.kind}s removed it)"
            )
        existing = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        if existing is not None and existing.get("pipeline_settings") == settings:
            record_robustness(config, seed, cell.name, domain, existing)
            continue
        args = ["robustness", "--ckpt", str(best_checkpoint(config, seed, cell.name)),
                "--config", str(directory / "cell.yaml"), "--domain", domain, "--out", str(path)]  # fmt: skip
        for key, value in settings.items():
            if value is not None:
                args += [ROBUSTNESS_OPTIONS[key], str(value)]
        log_path = directory / f"robustness_{domain}.log"
        if run_cli(args, log_path, in_process, config.get("cell_timeout_s")) != 0 or not path.is_file():
            return f"robustness failed, see {log_path}"
        report = {**json.loads(path.read_text(encoding="utf-8")), "pipeline_settings": settings}
        write_json(path, report)
        record_robustness(config, seed, cell.name, domain, report)
    return ""


def record_robustness(
    config: dict[str, Any], seed: int, cell: str, domain: str, report: dict[str, Any]
) -> None:
    """Copy an attack report's summary and settings into the cell's result file (``robustness.<domain>``);
    nothing when the cell has no result file or already holds the same summary."""
    store, key = results_store(config), cell_key(config, seed, cell)
    result = cellstore.read_result_file(store, key)
    if result is None:
        return
    summary = {name: report[name] for name in SUMMARY_KEYS if name in report}
    summary["settings"] = report.get("pipeline_settings")
    if result.get("robustness", {}).get(domain) != summary:
        result.setdefault("robustness", {})[domain] = summary
        cellstore.write_result_file(store, key, result)


def recorded_robustness(result: dict[str, Any] | None, domain: str, settings: dict[str, Any]) -> dict | None:
    """The attack summary a result file holds for ``domain``, if it was made with ``settings``."""
    summary = (result or {}).get("robustness", {}).get(domain)
    return summary if summary and summary.get("settings") == settings else None


def attack_summary(
    config: dict[str, Any], seed: int, cell: str, domain: str, result: dict[str, Any] | None = None
) -> dict | None:
    """A cell's attack report on ``domain``: its ``robustness_<domain>.json`` in the runs folder, else the
    summary its result file keeps (``result``, read when not given) if made with the config's
    ``robustness:`` settings; None when neither."""
    path = robustness_path(config, seed, cell, domain)
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    if not config.get("robustness"):
        return None
    return recorded_robustness(result or read_result(config, seed, cell), domain, config["robustness"])
