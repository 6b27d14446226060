"""The accuracy interval of one row (the Pareto plot's error bars): hand-computed cases."""

from __future__ import annotations

from pathlib import Path

import pytest

from metakd.pipeline.analysis import Predictions
from metakd.pipeline.pareto import accuracy_intervals, plot_pareto

CONFIG = {"seeds": [1], "domains": ["books", "dvd"]}


def summary_of(rows: dict[str, dict[str, str]]) -> dict:
    return {
        "showcase": {"teacher": "t", "rows": {k: {"label": k} for k in rows}},
        "row_cells": rows,
    }


def predictions(answers: dict[str, list[tuple[str, int, int]]]) -> Predictions:
    """``answers[cell]``: (domain, pred, label) per example; example ids in order."""

    def rows_of(seed: int, cell: str):
        if cell not in answers:
            return None
        return [
            {"domain": d, "example_id": i, "pred": p, "label": y} for i, (d, p, y) in enumerate(answers[cell])
        ]

    return Predictions(rows_of)


def test_a_row_always_right_is_100_percent_with_no_spread_and_the_mean_is_over_domains() -> None:
    rows = {"t": {"books": "tb", "dvd": "td"}, "s": {"books": "sb", "dvd": "sd"}}
    answers = {
        "tb": [("books", 1, 1), ("books", 0, 0)],
        "td": [("dvd", 1, 1), ("dvd", 0, 0)],
        # books 1 of 4 right, dvd 2 of 2: the mean over the (domain, seed) strata is (0.25 + 1) / 2
        "sb": [("books", 1, 1), ("books", 1, 0), ("books", 0, 1), ("books", 1, 0)],
        "sd": [("dvd", 1, 1), ("dvd", 0, 0)],
    }
    out = accuracy_intervals(CONFIG, summary_of(rows), predictions(answers), resamples=2000)
    assert out["t"] == {"mean": 1.0, "low": 1.0, "high": 1.0}
    assert out["s"]["mean"] == pytest.approx(0.625)
    # books is resampled alone: its mean ranges over {0, .25, .5, .75, 1}; dvd is always 1
    assert 0.5 <= out["s"]["low"] < 0.625 < out["s"]["high"] <= 0.875


def test_a_row_without_predictions_has_no_interval_and_no_plot_without_two_points(tmp_path: Path) -> None:
    rows = {"t": {"books": "tb", "dvd": "td"}, "s": {"books": "sb", "dvd": "missing"}}
    answers = {"tb": [("books", 1, 1)], "td": [("dvd", 1, 1)], "sb": [("books", 1, 1)]}
    out = accuracy_intervals(CONFIG, summary_of(rows), predictions(answers), resamples=100)
    assert set(out) == {"t"}
    section = {"teacher": "t", "rows": {"t": {"label": "t", "examples_per_s": 10.0}}}
    assert plot_pareto(section, out, tmp_path / "p.png", "test_large") is None


def test_the_plot_is_written(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    section = {
        "teacher": "t",
        "rows": {
            "t": {"label": "teacher", "examples_per_s": 100.0},
            "s": {"label": "s", "examples_per_s": 900.0},
        },
    }
    intervals = {"t": {"mean": 0.9, "low": 0.88, "high": 0.92}, "s": {"mean": 0.8, "low": 0.78, "high": 0.83}}
    path = plot_pareto(section, intervals, tmp_path / "p.png", "test_large")
    assert path and Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
