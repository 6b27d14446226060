"""The report's accuracy table (metakd/pipeline/markdown.py) on a hand-made summary."""

from __future__ import annotations

from metakd.pipeline.markdown import render_tables


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
