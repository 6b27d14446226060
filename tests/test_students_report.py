"""``benchmarks/students.py`` on fake finished cells: tiny checkpoints built here, result files carrying two
test sets (the report's ``test_large`` first), attack summaries from the runs folder or, failing that, from
the result files. The end-to-end run after a real search pipeline: tests/test_adabert.py."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from helpers import REPO, tiny_student, tiny_teacher, tiny_trainer

from metakd import pipeline
from metakd.pipeline import cellstore
from metakd.pipeline.store import link_view
from metakd.utils import import_object

# (seed, cell) -> accuracy per test set; a pooled teacher has one per domain
ACCURACY = {
    (1, "teacher/mixed"): {"test": {"books": 0.80, "dvd": 0.75}, "test_large": {"books": 0.85, "dvd": 0.70}},
    (1, "student/vanilla/books"): {"test": 0.70, "test_large": 0.725},
    (1, "student/vanilla/dvd"): {"test": 0.60, "test_large": 0.655},
    (2, "teacher/mixed"): {"test": {"books": 0.90, "dvd": 0.50}, "test_large": {"books": 0.95, "dvd": 0.55}},
    (2, "student/vanilla/books"): {"test": 0.40, "test_large": 0.475},
    (2, "student/vanilla/dvd"): {"test": 0.30, "test_large": 0.355},  # its checkpoint is missing
}
ATTACK = {"clean_accuracy": 0.8, "accuracy_under_attack": 0.6, "attack_success_rate": 0.25, "examples": 5}


def metrics_of(cell: str, accuracy: float | dict[str, float]) -> dict[str, float]:
    if isinstance(accuracy, dict):  # the pooled teacher: per domain, and its mean
        return {"test/acc": sum(accuracy.values()) / 2, **{f"test/acc_{d}": a for d, a in accuracy.items()}}
    return {"test/acc": accuracy}


def save_checkpoint(model: Any, data: Any, path: Path) -> Path:
    trainer = tiny_trainer(max_steps=1, limit_val_batches=0)
    trainer.fit(model, datamodule=data)
    path.parent.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture
def finished_cells(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """A pipeline config (2 domains, seeds 1-2, test and test_large, the vanilla student) whose cells are
    finished: a tiny checkpoint each, result files, and attack reports in the runs folder or result files."""
    from test_pipeline import tiny_pipeline_config

    config_path = tiny_pipeline_config(tmp_path)
    raw = yaml.safe_load(config_path.read_text())
    raw.update(seeds=[1, 2], studies=["main"], methods=["vanilla"], test_sets=["test", "test_large"],
               robustness={"max_examples": 5, "max_fraction": 0.5, "source": "embedding"})  # fmt: skip
    config_path.write_text(yaml.safe_dump(raw))
    config = pipeline.load_pipeline_config(config_path)
    section = config["student"]["data"]
    data = import_object(section["class_path"])(**section["init_args"])
    teacher = save_checkpoint(tiny_teacher(data), data, tmp_path / "made" / "teacher.ckpt")
    student = save_checkpoint(
        tiny_student(None, data, distillation="none", target_domain="books"),
        data,
        tmp_path / "made" / "s.ckpt",
    )
    settings = config["robustness"]
    for (seed, cell), accuracy in ACCURACY.items():
        planned = pipeline.planned_cell(config, cell)
        link_view(pipeline.cell_dir(config, seed, cell), pipeline.store_path(config, seed, cell))
        if (seed, cell) != (2, "student/vanilla/dvd"):
            checkpoint = pipeline.best_checkpoint(config, seed, cell)
            checkpoint.parent.mkdir(parents=True)
            shutil.copyfile(teacher if cell.startswith("teacher") else student, checkpoint)
        by_set = {name: metrics_of(cell, value) for name, value in accuracy.items()}
        payload = {"cell": cell, "kind": planned.kind, "seed": seed, "info": planned.info,
                   "metrics": by_set["test"], "test_sets": by_set}  # fmt: skip
        if cell == "teacher/mixed":  # dvd: a runs-folder report and a summary; the report wins
            payload["robustness"] = {"dvd": {**ATTACK, "settings": settings}}
            report = {**ATTACK, "accuracy_under_attack": 0.1, "pipeline_settings": settings}
            pipeline.robustness_path(config, seed, cell, "dvd").write_text(json.dumps(report))
        elif cell == "student/vanilla/books":  # no runs-folder report: the result file's summary
            payload["robustness"] = {"books": {**ATTACK, "settings": settings}}
        else:  # a summary made with other settings: not this config's attack
            payload["robustness"] = {"dvd": {**ATTACK, "settings": {**settings, "max_examples": 9}}}
        cellstore.write_result_file(
            pipeline.results_store(config), pipeline.cell_key(config, seed, cell), payload
        )
    return config_path, config


def run_students(*args: str) -> int:
    spec = importlib.util.spec_from_file_location("students_bench", REPO / "benchmarks" / "students.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    try:
        return module.main([*args, "--repeats", "1", "--seq", "12", "--batch", "2", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)


def table_line(markdown: str, *cells: str) -> str:
    """The one line of the Markdown table that starts with these cells."""
    found = [line for line in markdown.splitlines() if line.startswith("| " + " | ".join(cells) + " |")]
    assert len(found) == 1, (cells, markdown)
    return found[0]


def test_students_report_both_test_sets_primary_first(
    finished_cells: tuple[Path, dict[str, Any]], capsys: pytest.CaptureFixture
) -> None:
    config_path, config = finished_cells
    assert run_students("--config", str(config_path)) == 0  # the config's first seed
    summary = json.loads((Path(config["results_dir"]) / "tiny_students.json").read_text())
    assert summary["seeds"] == [1] and summary["test_sets"] == ["test_large", "test"]
    entries = summary["entries"]
    assert set(entries) == {f"{row}/{d}" for row in ("teacher", "minilm_2l") for d in ("books", "dvd")}
    for key, expected_large, expected_test in [
        ("teacher/books", 0.85, 0.80),
        ("teacher/dvd", 0.70, 0.75),
        ("minilm_2l/books", 0.725, 0.70),
        ("minilm_2l/dvd", 0.655, 0.60),
    ]:
        entry = entries[key]
        assert entry["accuracy"] == expected_large  # the report's test set
        assert entry["accuracy_by_test_set"] == {"test_large": expected_large, "test": expected_test}
        assert list(entry["accuracy_by_test_set"]) == ["test_large", "test"]
        assert entry["parameters"] > 0 and entry["examples_per_s"] > 0
    # attacks: the runs-folder report, else the result file's summary made with the config's settings
    assert entries["teacher/dvd"]["accuracy_under_attack"] == 0.1
    assert entries["minilm_2l/books"]["accuracy_under_attack"] == 0.6
    assert entries["minilm_2l/books"]["attacked_examples"] == 5
    for key in ("teacher/books", "minilm_2l/dvd"):
        assert "accuracy_under_attack" not in entries[key]

    markdown = (Path(config["results_dir"]) / "tiny_students.md").read_text()
    header = table_line(markdown, "domain", "model")
    assert "| vs teacher | test_large acc | test acc | under attack (clean) |" in header
    student, teacher = "MiniLM 2-layer student, vanilla KD", "teacher (MiniLM-L6, mixed-domain)"
    assert "| 72.5 | 70.0 | 60.0 (80.0) | 25.0 |" in table_line(markdown, "books", student)
    assert "| 65.5 | 60.0 | — (—) | — |" in table_line(markdown, "dvd", student)
    assert "| 70.0 | 75.0 | 10.0 (80.0) |" in table_line(markdown, "dvd", teacher)

    # --seed picks another seed; --seeds reports several, one row each (a cell without checkpoint skipped)
    assert run_students("--config", str(config_path), "--seed", "2") == 0
    summary = json.loads((Path(config["results_dir"]) / "tiny_students.json").read_text())
    entries = summary["entries"]
    assert summary["seeds"] == [2] and set(entries) == {"teacher/books", "teacher/dvd", "minilm_2l/books"}
    assert entries["minilm_2l/books"]["accuracy_by_test_set"] == {"test_large": 0.475, "test": 0.40}
    assert "skipping 2/student/vanilla/dvd" in capsys.readouterr().out
    moved = Path(config["results_dir"]).parent / "elsewhere"  # the pipeline's --results-store
    pipeline.results_store(config).rename(moved)
    assert run_students("--config", str(config_path), "--seeds", "1", "2", "--results-store", str(moved)) == 0
    summary = json.loads((Path(config["results_dir"]) / "tiny_students.json").read_text())
    assert len(summary["entries"]) == 7 and summary["entries"]["2/teacher/books"]["accuracy"] == 0.95
    assert summary["entries"]["1/teacher/books"]["accuracy"] == 0.85
    markdown = (Path(config["results_dir"]) / "tiny_students.md").read_text()
    assert "| 95.0 | 90.0 |" in table_line(markdown, "2", "books", teacher)
    assert "| 72.5 | 70.0 |" in table_line(markdown, "1", "books", student)
