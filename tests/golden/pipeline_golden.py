"""Golden (characterization) record of the benchmark pipeline's plan and report.

A synthetic pipeline config (every study, both budgets, variants, extra teachers, two test sets, two
seeds, a robustness block; data paths that are never read) is planned, and a fixed set of fake result
files (deterministic numbers, per-example predictions, dev curves, CPU seconds, a few cells missing) is
turned into the report. Recorded: every cell of the plan (kind, needs, info, store key), the full config of
a few cells, the report's JSON and its Markdown (machine paths and package versions taken out).

``python tests/golden/pipeline_golden.py`` rewrites ``pipeline_golden.json`` and ``pipeline_golden.md`` from
the current code; ``tests/test_pipeline_golden.py`` compares a fresh record with the committed files. They
were recorded from main's single-module pipeline (commit 6eaacfa, with this generator), before the pipeline
became a package of rooms (issue 24), and must not be regenerated to make a refactor pass (only when the
plan or the report changes on purpose, with that change).
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

GOLDEN_JSON = HERE / "pipeline_golden.json"
GOLDEN_MD = HERE / "pipeline_golden.md"
ROOT_TOKEN = "<root>"
DOMAINS = ["books", "dvd"]
SEEDS = [1, 2]
EXAMPLES = 12  # per domain and test set
MISSING = {(2, "student/meta_no_t/dvd"), (2, "teacher/single/dvd")}  # cells that have not finished
NO_PREDICTIONS = {(1, "student/vanilla/books")}  # a finished cell without per-example predictions
CONFIG_CELLS = ("teacher/meta", "student/tinybert_budgetA/dvd", "student/meta_50pct/books",
                "student/meta_zeroshot/books", "student/from_mtl/dvd")  # fmt: skip


def golden_config(root: Path) -> dict[str, Any]:
    """The synthetic pipeline config (as a YAML file would give it, before load_pipeline_config)."""
    data = {
        "class_path": "datamodules.JsonlDataModule",
        "init_args": {
            "train_file": "/golden/data/train.jsonl",
            "val_file": "/golden/data/val.jsonl",
            "test_file": "/golden/data/test.jsonl",
            "backbone": "minilm-l6",
            "max_length": 16,
            "batch_size": 8,
        },
    }
    trainer = {"accelerator": "cpu", "devices": 1, "max_epochs": 3, "enable_progress_bar": False}
    return {
        "corpus": "golden",
        "name": "golden",
        "domains": DOMAINS,
        "seeds": SEEDS,
        "studies": ["main", "scarcity", "zero_shot", "ablation"],
        "methods": ["none", "vanilla", "tinybert", "meta"],
        "budgets": ["A", "B"],
        "test_sets": ["test", "test_large"],
        "runs_dir": str(root / "runs"),
        "results_dir": str(root / "results"),
        "keep_checkpoints": {"teacher": "best", "student": "best"},
        "progress": False,  # the cells' progress bars (issue 25, after this record): off, as when recorded
        "robustness": {"max_examples": 10, "source": "wordnet"},
        "scarcity": {
            "domains": ["books"],
            "methods": ["tinybert", "meta"],
            "fractions": [0.5, 1.0],
            "compare": [["meta", "tinybert"]],
        },
        "zero_shot": {"domain": "books", "teacher_domain": "dvd", "all_domains": [*DOMAINS, "music"]},
        "extra_teachers": {
            "mtl": {"label": "Teacher: multi-task", "model": {"class_path": "metakd.MultiTaskTeacher"}},
            "no_dl": {"model": {"init_args": {"domain_loss": "none"}}},
        },
        "variants": {
            "meta_no_t": {
                "method": "meta",
                "label": "Meta-KD without t_i",
                "model": {"distillation_options": {"transferability_weights": False}},
            },
            "from_mtl": {"method": "vanilla", "teacher": "mtl", "label": "vanilla KD"},
            "from_no_dl": {"method": "meta", "teacher": "no_dl", "data": {"batch_size": 4}},
        },
        "ablations": ["meta_no_t", "from_mtl", "from_no_dl"],
        "ablation_budget": "A",
        "teacher": {
            "trainer": {**trainer, "max_steps": 40, "val_check_interval": 10},
            "model": {"class_path": "metakd.MetaTeacher", "init_args": {"backbone": "minilm-l6"}},
            "data": data,
        },
        "student": {
            "trainer": trainer,
            "model": {
                "class_path": "metakd.Student",
                "init_args": {
                    "student_backbone": "minilm-l6",
                    "student_layers": [0, 5],
                    "intermediate_epochs": 1,
                },
            },
            "data": data,
        },
    }


def load(root: Path) -> dict[str, Any]:
    import yaml

    from metakd import pipeline

    root.mkdir(parents=True, exist_ok=True)
    path = root / "golden.yaml"
    path.write_text(yaml.safe_dump(golden_config(root)), encoding="utf-8")
    return pipeline.load_pipeline_config(path)


def plan_record(config: dict[str, Any], root: Path) -> dict[str, Any]:
    from metakd import pipeline

    cells = pipeline.plan_cells(config)
    planned = [
        {
            "kind": cell.kind,
            "name": cell.name,
            "needs": cell.needs,
            "info": cell.info,
            "keys": [pipeline.cell_key(config, seed, cell) for seed in SEEDS],
        }
        for cell in cells
    ]
    by_name = {cell.name: cell for cell in cells}
    configs = {name: pipeline.cell_config(config, 1, by_name[name]) for name in CONFIG_CELLS}
    return normalised({"cells": planned, "cell_configs": configs}, root)


def _rng(seed: int, cell: str, what: str) -> random.Random:
    return random.Random(f"{seed}/{cell}/{what}")


def _predictions(seed: int, cell: Any, test_set: str, domains: list[str]) -> list[dict[str, Any]]:
    rng = _rng(seed, cell.name, test_set)
    skill = 0.55 + 0.4 * rng.random()
    rows = []
    for d, domain in enumerate(domains):
        for i in range(EXAMPLES):
            label = (i + d) % 2
            rows.append({"example_id": 100 * d + i, "domain": domain, "label": label,
                         "pred": label if rng.random() < skill else 1 - label})  # fmt: skip
    return rows


def _metrics(rows: list[dict[str, Any]], domains: list[str]) -> dict[str, float]:
    def acc(selected: list[dict[str, Any]]) -> float:
        return sum(r["pred"] == r["label"] for r in selected) / len(selected)

    metrics = {"test/acc": acc(rows), "test/loss": round(1 - acc(rows), 4)}
    if len(domains) > 1:
        metrics.update({f"test/acc_{d}": acc([r for r in rows if r["domain"] == d]) for d in domains})
    return metrics


def _curve(seed: int, cell: Any, domains: list[str]) -> dict[str, Any]:
    rng = _rng(seed, cell.name, "curve")
    checks = []
    for step in (10, 20, 30, 40):
        check = {"step": step, "epoch": step // 20, "val/acc": round(0.5 + 0.45 * rng.random(), 4)}
        if cell.kind == "teacher":
            check.update({f"val/acc_{d}": round(0.5 + 0.45 * rng.random(), 4) for d in domains})
        checks.append(check)
    end = {"global_step": 40, "max_steps": 40, "max_epochs": 3, "early_stopped": seed == 2,
           "best_score": max(c["val/acc"] for c in checks)}  # fmt: skip
    return {"checks": checks, "end": end}


def _selection(seed: int, cell: Any) -> dict[str, Any]:
    rng = _rng(seed, cell.name, "selection")
    probabilities = {
        "mean": round(rng.random(), 3),
        "std": round(0.2 * rng.random(), 3),
        "mean_abs_from_half": round(0.3 * rng.random(), 3),
        "share_above_half": round(rng.random(), 2),
        "by_kind": {kind: {"mean": round(rng.random(), 3)} for kind in ("eda", "source")},
    }
    return {"learn": True, "updates": 10 + seed, "probabilities": probabilities}


def write_fake_results(config: dict[str, Any]) -> None:
    """A result file per planned cell and seed (but MISSING), and robustness reports of the main cells."""
    from metakd import pipeline
    from metakd.pipeline import cellstore

    for seed in SEEDS:
        for cell in pipeline.plan_cells(config):
            if (seed, cell.name) in MISSING:
                continue
            domain = cell.info.get("domain")
            pooled = cell.kind == "teacher" and ("domain" not in cell.info or cell.info.get("study"))
            domains = list(config["domains"]) if pooled else [domain]
            rng = _rng(seed, cell.name, "cost")
            payload: dict[str, Any] = {
                "cell": cell.name,
                "kind": cell.kind,
                "seed": seed,
                "info": cell.info,
                "seconds": round(100 * rng.random(), 1),
                "cpu_seconds": round(200 * rng.random(), 1),
                "dev_curve": _curve(seed, cell, domains),
                "test_sets": {},
                "predictions": {},
            }
            for test_set in config["test_sets"]:
                rows = _predictions(seed, cell, test_set, domains)
                payload["test_sets"][test_set] = _metrics(rows, domains)
                if (seed, cell.name) not in NO_PREDICTIONS:
                    names = list(config["domains"])
                    packed = cellstore.pack_predictions(rows, names)
                    payload["predictions"][test_set] = {"domain_names": names, **packed}
            payload["metrics"] = payload["test_sets"]["test"]
            if cell.info.get("study") == "scarcity" and cell.info["method"] == "meta":
                payload["l2a_selection"] = _selection(seed, cell)  # as a selector leaves it
            cellstore.write_result_file(
                pipeline.results_store(config), pipeline.cell_key(config, seed, cell), payload
            )
            for attacked in pipeline.robustness_domains(config, cell):
                path = pipeline.robustness_path(config, seed, cell.name, attacked)
                path.parent.mkdir(parents=True, exist_ok=True)
                rng = _rng(seed, cell.name, f"robustness/{attacked}")
                clean = round(rng.random(), 3)
                path.write_text(json.dumps({"clean_accuracy": clean,
                                            "accuracy_under_attack": round(clean * rng.random(), 3),
                                            "attack_success_rate": round(rng.random(), 3)}))  # fmt: skip


def report_record(root: Path) -> tuple[dict[str, Any], str]:
    """The report's JSON and Markdown of the fake results (machine paths and versions taken out)."""
    from metakd import pipeline

    config = load(root)
    write_fake_results(config)
    json_path, md_path = pipeline.write_results(config)
    summary = json.loads(json_path.read_text(encoding="utf-8"))
    summary.pop("versions")
    # added after this record (issue 25: the showcase and the rows' cells it reads; the progress switch)
    for key in ("row_cells", "showcase"):
        summary.pop(key, None)
    summary["pipeline_config"].pop("progress", None)
    for key in ("predictions_file", "teacher_curves_plot"):  # present or not with matplotlib / rows
        summary[key] = Path(summary[key]).name if summary.get(key) else None
    if "scarcity" in summary:
        summary["scarcity"]["plot"] = Path(summary["scarcity"]["plot"]).name if summary["scarcity"].get(
            "plot") else None  # fmt: skip
    markdown = md_path.read_text(encoding="utf-8").replace(str(root), ROOT_TOKEN)
    lines, kept, skipping = markdown.splitlines(), [], False
    for line in lines:  # the environment section lists this machine's package versions
        if line == "## Environment":
            skipping = True
        elif skipping and line.startswith("The exact config"):
            skipping = False
        if not skipping:
            kept.append(line)
    return normalised(summary, root), "\n".join(kept) + "\n"


def normalised(value: Any, root: Path) -> Any:
    """``value`` as plain JSON with ``root`` written as ROOT_TOKEN and floats to 12 significant digits."""
    text = json.dumps(value, sort_keys=True, default=str).replace(str(root), ROOT_TOKEN)

    def rounded(item: Any) -> Any:
        if isinstance(item, float):
            return float(f"{item:.12g}")
        if isinstance(item, dict):
            return {k: rounded(v) for k, v in item.items()}
        if isinstance(item, list):
            return [rounded(v) for v in item]
        return item

    return rounded(json.loads(text))


def record() -> tuple[dict[str, Any], str]:
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        plan = plan_record(load(root / "plan"), root / "plan")
        report, markdown = report_record(root / "report")
    return {"plan": plan, "report": report}, markdown


if __name__ == "__main__":
    data, markdown = record()
    GOLDEN_JSON.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    GOLDEN_MD.write_text(markdown, encoding="utf-8")
    print(f"wrote {GOLDEN_JSON} and {GOLDEN_MD}")
