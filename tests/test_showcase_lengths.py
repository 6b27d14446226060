"""The showcase times each row on the inputs its own data gives: a row that reads 256 tokens is timed on
256, and the report says so."""

from __future__ import annotations

from helpers import REPO

from metakd import pipeline
from metakd.pipeline.showcase import _cell_data, _landing, render_showcase


def test_each_cell_is_timed_on_its_own_max_length() -> None:
    config = pipeline.load_pipeline_config(REPO / "configs" / "amazon" / "tiny_transfer.yaml")
    _, short = _cell_data(config, 1, "student/bag_m2v_none/books")
    _, long = _cell_data(config, 1, "student/bag_m2v_long_none/books")
    _, teacher = _cell_data(config, 1, "teacher/meta")
    assert (short, long, teacher) == (64, 256, 64)


def test_a_row_timed_on_other_inputs_is_labelled() -> None:
    rows = {
        "teacher_meta": {"label": "Teacher", "average": {"mean": 0.8}},
        "student_a": {"label": "A", "average": {"mean": 0.78}},
        "student_b": {"label": "B", "average": {"mean": 0.76}},
    }
    speed = {
        "teacher_meta": {"examples_per_s": 100.0, "parameters": 10, "seq": 64},
        "student_a": {"examples_per_s": 5000.0, "parameters": 2, "seq": 256},
        "student_b": {"examples_per_s": 9000.0, "parameters": 2, "seq": 64},
        "_setup": {"runtime": "PyTorch", "batch": 32, "seq": 64},
    }
    landing = _landing(rows, "teacher_meta", ["student_a", "student_b"], speed)
    assert landing["rows"]["student_a"]["seq"] == 256 and "seq" not in landing["rows"]["student_b"]
    assert landing["rows"]["student_a"]["speedup"] == 50.0
    section = {"settings": {"domain": "books", "repeats": 3}, "throughput": speed, **landing}
    lines = render_showcase(section, "test_large")
    assert any(line.startswith("| A (timed on 256 tokens) | ") for line in lines)
    assert any(line.startswith("| B | ") for line in lines)
