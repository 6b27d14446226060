"""The scarcity study with augmentation rows (configs/amazon/scarcity_augment.yaml): cells per domain,
fraction and row; variants with trainer options; the teacher checkpoint filled into L2A's data options;
bad fractions; every kind of cell resolves in the CLI; the report per domain."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers import REPO

from metakd import pipeline

CONFIG = REPO / "configs" / "amazon" / "scarcity_augment.yaml"


def test_cells_of_the_augmentation_study(tmp_path: Path) -> None:
    config = pipeline.load_pipeline_config(CONFIG)
    config["runs_dir"] = str(tmp_path)
    cells = {cell.name: cell for cell in pipeline.plan_cells(config)}
    domains, rows, fractions = pipeline.scarcity_settings(config)
    assert domains == ["books", "kitchen"] and sorted(fractions) == [0.01, 0.05, 0.1, 0.2, 0.5, 1.0]
    students = [c for c in cells.values() if c.kind == "student"]
    assert len(students) == len(domains) * len(rows) * len(fractions)
    assert set(cells) - {c.name for c in students} == {
        "teacher/meta",
        "teacher/single/books",
        "teacher/single/kitchen",
    }
    l2a = pipeline.cell_config(config, 7, cells["student/meta_l2a_1pct/kitchen"])
    teacher = str(pipeline.best_checkpoint(config, 7, "teacher/meta"))
    assert l2a["model"]["init_args"]["teacher_ckpt"] == teacher
    assert l2a["data"]["init_args"]["augment"]["init_args"]["teacher_ckpt"] == teacher  # @teacher_ckpt filled
    assert l2a["data"]["init_args"]["train_fraction"] == 0.01
    assert l2a["trainer"]["callbacks"][0]["class_path"] == "metakd.l2a.L2ASelector"
    assert "metakd.pipeline.TestMetricsWriter" in [c["class_path"] for c in l2a["trainer"]["callbacks"]]
    random = pipeline.cell_config(config, 7, cells["student/meta_l2a_random_10pct/books"])
    assert random["trainer"]["callbacks"][0]["init_args"]["learn"] is False
    tinybert = pipeline.cell_config(config, 7, cells["student/tinybert_eda/kitchen"])  # 100%: no fraction
    assert tinybert["model"]["init_args"]["teacher_ckpt"] == str(
        pipeline.best_checkpoint(config, 7, "teacher/single/kitchen")
    )
    assert "train_fraction" not in tinybert["data"]["init_args"]
    assert tinybert["data"]["init_args"]["augment"]["class_path"] == "eda"


def test_bad_fractions_are_refused(tmp_path: Path) -> None:
    for bad in ([0.0, 0.5], [1.5]):
        path = tmp_path / "bad.yaml"
        path.write_text(
            yaml.safe_dump({"extends": str(CONFIG), "scarcity": {"fractions": bad}}), encoding="utf-8"
        )
        with pytest.raises(pipeline.PipelineError, match=r"scarcity.fractions must lie in \(0, 1\]"):
            pipeline.load_pipeline_config(path)


def test_every_kind_of_augmentation_cell_resolves_in_the_cli(tmp_path: Path, capsys) -> None:
    from metakd.cli import main as cli_main

    config = pipeline.load_pipeline_config(CONFIG)
    config["runs_dir"] = str(tmp_path)
    for name in (
        "student/meta_eda_5pct/books",
        "student/meta_l2a_no_target_10pct/books",
        "student/meta_5x/kitchen",
    ):
        cell = next(c for c in pipeline.plan_cells(config) if c.name == name)
        path = tmp_path / "cell.yaml"
        path.write_text(yaml.safe_dump(pipeline.cell_config(config, 1, cell)), encoding="utf-8")
        with pytest.raises(SystemExit) as exit_:
            cli_main(["fit", "--config", str(path), "--print_config"])
        assert exit_.value.code in (0, None), name
        printed = yaml.safe_load(capsys.readouterr().out)
        assert printed["model"]["class_path"] == "metakd.Student"


def test_report_has_a_table_per_domain(tmp_path: Path) -> None:
    config = pipeline.load_pipeline_config(CONFIG)
    config["runs_dir"], config["results_dir"] = str(tmp_path), str(tmp_path / "results")
    summary = pipeline.collect(config)
    summary.update(versions={}, json="x.json", train_and_test_seconds=0)
    markdown = pipeline.render_markdown(config, summary)
    assert "## Data scarcity (books)" in markdown and "## Data scarcity (kitchen)" in markdown
    assert "| books student | 1% | 5% | 10% | 20% | 50% | 100% |" in markdown
    assert "| Meta-KD + L2A, random selection | — | — | — | — | — | — |" in markdown
