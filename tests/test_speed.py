"""``benchmarks/speed.py``: every model on every runtime in one run (tiny models), ratios within a runtime,
accuracy retained from pipeline results, the Pareto front."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from helpers import REPO, run_python

sys.path.insert(0, str(REPO / "benchmarks"))
import speed  # noqa: E402


def test_pareto_front() -> None:
    points = [(1.0, 99.0), (10.0, 95.0), (5.0, 94.0), (20.0, 90.0), (20.0, 89.0), (2.0, 99.0)]
    # (1, 99) is beaten by (2, 99); (5, 94) by (10, 95); (20, 89) by (20, 90)
    assert speed.pareto_front(points) == [5, 1, 3]


def test_accuracy_retained_reads_a_pipeline_table(tmp_path: Path) -> None:
    spec = speed.ModelSpec(
        "textcnn", "TextCNN", {}, {}, ("amazon_tiny.json", "student_textcnn_tang", "teacher_meta")
    )
    assert speed.accuracy_retained(tmp_path, spec) is None  # no results yet
    table = {
        "student_textcnn_tang": {"average": {"mean": 0.87, "n": 3}},
        "teacher_meta": {"average": {"mean": 0.9, "n": 1}},
    }
    (tmp_path / "amazon_tiny.json").write_text(json.dumps({"main": table}), encoding="utf-8")
    accuracy = speed.accuracy_retained(tmp_path, spec)
    assert accuracy["retained"] == pytest.approx(0.87 / 0.9) and accuracy["student_seeds"] == 3
    # a teacher that is not a row of the table: its own JSON file
    fixed = speed.ModelSpec("t", "T", {}, {}, ("amazon_tiny.json", "student_textcnn_tang", "teacher.json"))
    assert speed.accuracy_retained(tmp_path, fixed) is None
    (tmp_path / "teacher.json").write_text(json.dumps({"average": 0.92}), encoding="utf-8")
    assert speed.accuracy_retained(tmp_path, fixed)["retained"] == pytest.approx(0.87 / 0.92)


def test_accuracy_retained_reads_a_named_test_set(tmp_path: Path) -> None:
    row = "student_bag_m2v_long_metakd_mse_transfer"
    spec = speed.ModelSpec("bag", "Bag", {}, {}, ("amazon_tiny_bag.json", row, "teacher_meta", "test_large"))
    main = {row: {"average": {"mean": 0.85, "n": 3}}, "teacher_meta": {"average": {"mean": 0.9, "n": 3}}}
    large = {row: {"average": {"mean": 0.82, "n": 3}}, "teacher_meta": {"average": {"mean": 0.8, "n": 3}}}
    summary = {"test_set": "test", "main": main, "by_test_set": {"test": {"main": main}}}
    path = tmp_path / "amazon_tiny_bag.json"
    path.write_text(json.dumps(summary), encoding="utf-8")
    assert speed.accuracy_retained(tmp_path, spec) is None  # the file has no test_large
    summary["by_test_set"]["test_large"] = {"main": large}
    path.write_text(json.dumps(summary), encoding="utf-8")
    accuracy = speed.accuracy_retained(tmp_path, spec)
    assert accuracy["retained"] == pytest.approx(0.82 / 0.8) and accuracy["test_set"] == "test_large"
    # without a test set: the main table, under the file's own test set
    default = speed.ModelSpec("bag", "Bag", {}, {}, ("amazon_tiny_bag.json", row, "teacher_meta"))
    accuracy = speed.accuracy_retained(tmp_path, default)
    assert accuracy["retained"] == pytest.approx(0.85 / 0.9) and accuracy["test_set"] == "test"


def test_speed_benchmark_tiny(tmp_path: Path) -> None:
    run_python("benchmarks/speed.py", "--tiny", "--quick", "--out", tmp_path, timeout=600)
    report = json.loads((tmp_path / "speed.json").read_text())
    names = {"teacher", *(spec.name for spec in speed.STUDENTS)}
    assert set(report["inference"]) == names
    assert {"bilstm", "textcnn", "pqrnn", "pqrnn_features", "textcnn_m2v128", "bag_m2v"} <= names
    for entry in report["inference"].values():
        assert set(entry["runtimes"]) == {"pytorch", "onnx", "onnx_int8"}
        for runtime, row in entry["runtimes"].items():
            teacher = report["inference"]["teacher"]["runtimes"][runtime]
            assert row["speedup_vs_teacher"] == pytest.approx(
                row["examples_per_s"] / teacher["examples_per_s"]
            )
            assert row["p50_latency_ms"] > 0 and row["size_mb"] > 0
    assert report["inference"]["teacher"]["runtimes"]["onnx"]["speedup_vs_teacher"] == pytest.approx(1.0)
    assert {"framework_overhead", "meta_weighting", "teacher_cache"} <= set(report["training"])
    # every meta-step option is timed against the plain step and compared with the exact weights
    agreement = report["meta_agreement"]
    for name in (
        "meta_weighting",
        "meta_weighting_jvp",
        "meta_weighting_jvp_last1",
        "meta_weighting_jvp_head",
    ):
        assert report["training"][name]["ratio"] > 0
        assert -1 <= agreement[name]["pearson_w"] <= 1
    assert agreement["meta_weighting"]["pearson_g"] == pytest.approx(1.0)
    assert agreement["meta_weighting_jvp"]["pearson_g"] == pytest.approx(1.0, abs=1e-5)  # the same weights
    markdown = (tmp_path / "speed.md").read_text()
    assert "| meta weights | step ratio | r (g) | r (w) |" in markdown
    assert markdown.startswith("# ") and "| pqrnn | onnx_int8 |" in markdown
    # --no-inference keeps that inference table (and says so) and measures the training sections again
    run_python("benchmarks/speed.py", "--tiny", "--quick", "--no-inference", "--out", tmp_path, timeout=600)
    again = json.loads((tmp_path / "speed.json").read_text())
    assert again["inference"] == report["inference"]
    assert again["training"]["meta_weighting"] != report["training"]["meta_weighting"]  # a new measurement
    assert "carried over: measured at" in (tmp_path / "speed.md").read_text()
    # both flags: nothing is timed; the accuracy column is read again from the results files under --out
    row = "student_bag_m2v_long_metakd_mse_transfer"
    large = {row: {"average": {"mean": 0.8, "n": 5}}, "teacher_meta": {"average": {"mean": 0.84, "n": 5}}}
    summary = {"main": {}, "by_test_set": {"test_large": {"main": large}}}
    (tmp_path / "amazon_tiny_bag.json").write_text(json.dumps(summary), encoding="utf-8")
    run_python(
        "benchmarks/speed.py", "--tiny", "--no-inference", "--no-training", "--out", tmp_path, timeout=600
    )
    third = json.loads((tmp_path / "speed.json").read_text())
    assert third["inference"] == report["inference"]
    assert third["training"]["meta_weighting"]["ratio"] == again["training"]["meta_weighting"]["ratio"]
    assert "carried over: measured at" in third["training"]["meta_weighting"]["what"]
    assert third["accuracy"]["bag_m2v"]["retained"] == pytest.approx(0.8 / 0.84)
    assert "accuracy" not in again or "bag_m2v" not in again["accuracy"]
    markdown = (tmp_path / "speed.md").read_text()
    assert "as are the training sections below; the accuracy column is read again" in markdown
    assert "Training cost at seq 32, batch 32: 3 timed steps" in markdown  # the --quick run that measured it
    # the carried table (read back from key-sorted JSON) keeps the teacher first, then STUDENTS' order
    rows = [
        line.split(" | ")[0][2:]
        for line in markdown.splitlines()
        if line.endswith("|") and "| pytorch |" in line
    ]
    assert rows == ["teacher", *(spec.name for spec in speed.STUDENTS)]
