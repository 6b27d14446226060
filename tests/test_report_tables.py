"""The report's accuracy table and the lines under its paired-interval tables (metakd/pipeline/markdown.py,
scarcity_report.py) on hand-made summaries."""

from __future__ import annotations

from metakd.pipeline import scarcity_report
from metakd.pipeline.markdown import render_comparisons, render_tables


def _stat(mean: float, std: float, n: int) -> dict:
    return {"mean": mean, "std": std, "n": n, "values": [mean] * n}


def test_a_row_with_fewer_seeds_than_the_study_says_how_many() -> None:
    summary = {
        "domains": ["books"],
        "seeds": [1, 2, 3],
        "main": {
            "teacher_meta": {
                "kind": "teacher",
                "label": "Teacher: meta-teacher",
                "books": _stat(0.8, 0.01, 3),
                "average": _stat(0.8, 0.01, 3),
            },
            "student_bag": {
                "kind": "student",
                "label": "Student: bag",
                "budget": None,
                "books": _stat(0.755, 0.0, 1),
                "average": _stat(0.755, 0.0, 1),
            },
        },
    }
    lines = render_tables({"budgets": ["B"]}, summary)
    assert "| Teacher: meta-teacher | 80.0 ± 1.0 | 80.0 ± 1.0 |" in lines
    assert "| Student: bag (1 of 3 seeds) | 75.5 | 75.5 |" in lines


INTERVAL = {"diff": 0.01, "low": -0.01, "high": 0.03, "significant": False}
MISSING = "Cells without per-example predictions (left out of the intervals): "
NOT_RUN = "Cells not run for these seeds (left out of the intervals): "


def _comparison(other: str, **left_out: list[str]) -> dict:
    intervals = {"books": INTERVAL, "average": INTERVAL}
    entry = {"reference": "student_meta", "other": other, "budget": None, "label": other}
    return {**entry, "intervals": intervals, **left_out}


def _comparisons_summary(*comparisons: dict) -> dict:
    main = {"student_meta": {"kind": "student", "label": "Meta-KD", "method": "meta"}}
    return {
        "domains": ["books"],
        "main": main,
        "comparisons": list(comparisons),
        "bootstrap": {"resamples": 10},
    }


def test_cells_not_run_and_cells_without_predictions_get_a_line_each() -> None:
    summary = _comparisons_summary(
        _comparison("a", missing_predictions=["1/student/a/books"], not_run=["2/student/a/books"]),
        _comparison(
            "b", missing_predictions=["1/student/a/books"], not_run=["2/student/b/books", "3/x/books"]
        ),
        _comparison("c", missing_predictions=[]),
    )
    lines = render_comparisons({"compare_to": "meta"}, summary)
    assert lines[lines.index(MISSING + "1: 1/student/a/books") + 1 :][:2] == [
        "",
        NOT_RUN + "3: 2/student/a/books, 2/student/b/books, 3/x/books",
    ]
    # all cells ran: only the existing line; all cells have predictions: only the new one
    only_missing = render_comparisons(
        {}, _comparisons_summary(_comparison("a", missing_predictions=["1/a/b"]))
    )
    assert MISSING + "1: 1/a/b" in only_missing and not any(x.startswith(NOT_RUN) for x in only_missing)
    only_not_run = _comparisons_summary(_comparison("a", missing_predictions=[], not_run=["1/a/b"]))
    lines = render_comparisons({}, only_not_run)
    assert NOT_RUN + "1: 1/a/b" in lines and not any(x.startswith(MISSING) for x in lines)


def test_a_summary_without_not_run_renders_as_before() -> None:
    """A summary written before ``not_run`` lists every cell left out under ``missing_predictions``."""
    cells = [f"1/student/a/d{i:02d}" for i in range(13)]
    lines = render_comparisons({}, _comparisons_summary(_comparison("a", missing_predictions=cells)))
    assert MISSING + "13: " + ", ".join(cells[:12]) + " ..." in lines
    assert not any(x.startswith("Cells not run") for x in lines)


def test_the_scarcity_pairs_name_cells_not_run_apart() -> None:
    entry = {"first": "x", "second": "y", "fraction": "0.1", "intervals": {"books": INTERVAL}}
    scarcity = {"points": {"books": {}}, "comparisons": [
        {**entry, "missing_predictions": ["1/student/x/books"], "not_run": ["2/student/y/books"]},
        {**entry, "missing_predictions": []},
    ]}  # fmt: skip
    lines = scarcity_report.render(scarcity, {})
    assert "Cells without per-example predictions (left out): 1/student/x/books" in lines
    assert "Cells not run for these seeds (left out): 2/student/y/books" in lines
    old = {"points": {"books": {}}, "comparisons": [{**entry, "missing_predictions": ["2/student/y/books"]}]}
    lines = scarcity_report.render(old, {})
    assert "Cells without per-example predictions (left out): 2/student/y/books" in lines
    assert not any(x.startswith("Cells not run") for x in lines)
