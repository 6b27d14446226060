"""The scarcity study with augmentation rows (configs/amazon/scarcity_augment.yaml): cells per domain,
fraction and row; variants with trainer options; the teacher checkpoint filled into L2A's data options;
bad fractions; every kind of cell resolves in the CLI; the report per domain; the L2A selection study's
paired intervals and selection spread."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers import REPO

from metakd import pipeline
from metakd.errors import ConfigError

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
    assert l2a["trainer"]["callbacks"][0]["class_path"] == "metakd.l2a_selector.L2ASelector"
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


def test_l2a_study_reports_paired_intervals_and_the_selection_spread(tmp_path: Path) -> None:
    """configs/amazon/scarcity_l2a_selection.yaml on hand-made result files of 2 seeds: learned minus
    random selection is +25 points on books (3 of 4 test reviews right against 2 of 4, every seed) and 0
    on kitchen; the selection probabilities' summary (a result file's ``l2a_selection``, copied there
    from the cell's l2a_selection.json) is averaged over the seeds."""
    from metakd.pipeline import cellstore, scarcity_report
    from metakd.pipeline.scarcity_report import SELECTION_FILE, selection_of

    config = pipeline.load_pipeline_config(REPO / "configs" / "amazon" / "scarcity_l2a_selection.yaml")
    assert config["scarcity"]["compare"] == [["meta_l2a", "meta_l2a_random"]] and len(config["seeds"]) == 5
    config.update(runs_dir=str(tmp_path / "runs"), results_dir=str(tmp_path / "results"), seeds=[1, 2])
    primary = pipeline.report_test_set(config)  # the intervals' test set (test_large)
    learned, random = "meta_l2a", "meta_l2a_random"
    correct = {(learned, "books"): [1, 1, 1, 0], (random, "books"): [1, 0, 1, 0],
               (learned, "kitchen"): [1, 1, 0, 0], (random, "kitchen"): [1, 1, 0, 0]}  # fmt: skip
    spread = {1: (0.4, 0.1), 2: (0.5, 0.2)}  # learned cells: (mean, std) of the probabilities per seed
    for seed in (1, 2):
        for (row, domain), right in correct.items():
            cell = pipeline.student_cell_name(row, domain, 0.1)
            rows = [{"domain": domain, "example_id": i, "pred": r, "label": 1} for i, r in enumerate(right)]
            mean, std = spread[seed] if row == learned else (0.5, 0.0)
            by_kind = {"mix": {"mean": mean - 0.1}, "sr": {"mean": mean + 0.1}}
            probabilities = {"mean": mean, "std": std, "mean_abs_from_half": std, "share_above_half": 0.25,
                             "by_kind": by_kind}  # fmt: skip
            folder = tmp_path / "cell" / str(seed) / cell  # what the selector wrote, as a fit leaves it
            folder.mkdir(parents=True)
            written = {"learn": row == learned, "updates": 100 if row == learned else 0,
                       "probabilities": probabilities, "history": [{"step": 1}]}  # fmt: skip
            (folder / SELECTION_FILE).write_text(json.dumps(written))
            names = list(config["domains"])
            payload = {
                "cell": cell, "kind": "student", "seed": seed, "info": {}, "metrics": {}, "seconds": 1.0,
                "cpu_seconds": 1.0, "dev_curve": None, "l2a_selection": selection_of(folder),
                "predictions": {primary: {"domain_names": names, **cellstore.pack_predictions(rows, names)}},
            }  # fmt: skip
            assert "history" not in payload["l2a_selection"]
            key = pipeline.cell_key(config, seed, cell)
            cellstore.write_result_file(pipeline.results_store(config), key, payload)
    summary = pipeline.collect(config)
    [comparison] = summary["scarcity"]["comparisons"]
    assert (comparison["first"], comparison["second"], comparison["fraction"]) == (learned, random, "0.1")
    assert comparison["intervals"]["books"]["diff"] == pytest.approx(0.25)
    assert comparison["intervals"]["kitchen"]["diff"] == 0.0
    assert comparison["intervals"]["average"]["diff"] == pytest.approx(0.125)
    books = summary["scarcity"]["selection"]["books"][learned]["0.1"]
    assert books["mean"] == pytest.approx(0.45)
    assert books["mean_std_over_seeds"] == pytest.approx(0.1 / 2**0.5)  # stdev(0.4, 0.5)
    assert books["std_within_cell"] == pytest.approx(0.15) and books["updates"] == 100
    assert books["by_kind"] == pytest.approx({"mix": 0.35, "sr": 0.55})
    summary.update(versions={}, json="x.json", train_and_test_seconds=0)
    markdown = pipeline.render_markdown(config, summary)
    assert "| Meta-KD + L2A - Meta-KD + L2A, random selection | 10% | +25.0 [" in markdown
    row = "| books | Meta-KD + L2A | 10% | 2 | 0.450 ± 0.071 | 0.150 | 0.150 | 0.25 | 100 |"
    assert row + " mix 0.35, sr 0.55 |" in markdown
    assert "| kitchen | Meta-KD + L2A, random selection | 10% | 2 | 0.500 ± 0.000 | 0.000 |" in markdown
    assert comparison["missing_predictions"] == [] and "not_run" not in comparison

    # a cell without a result for seed 2 (never run) is named apart from one without predictions
    never_run, bare = (pipeline.student_cell_name(row, "books", 0.1) for row in (learned, random))
    cellstore.result_path(pipeline.results_store(config), pipeline.cell_key(config, 2, never_run)).unlink()
    key = pipeline.cell_key(config, 1, bare)
    bare_result = cellstore.read_result_file(pipeline.results_store(config), key)
    cellstore.write_result_file(pipeline.results_store(config), key, {**bare_result, "predictions": None})
    summary = pipeline.collect(config)
    [comparison] = summary["scarcity"]["comparisons"]
    assert comparison["missing_predictions"] == [f"1/{bare}"] and comparison["not_run"] == [f"2/{never_run}"]
    lines = scarcity_report.render(summary["scarcity"], summary["scarcity"]["labels"])
    assert f"Cells without per-example predictions (left out): 1/{bare}" in lines
    assert f"Cells not run for these seeds (left out): 2/{never_run}" in lines

    config["scarcity"]["compare"] = [["meta_l2a", "meta"]]
    with pytest.raises(ConfigError, match=r"scarcity.compare: \['meta_l2a', 'meta'\] must be a pair"):
        pipeline.collect(config)
