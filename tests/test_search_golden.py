"""Golden tests: AdaBERT's search history, operation probabilities and derived architecture.

``tests/golden/search_golden.json`` was recorded before the split of ``metakd/search/adabert.py``
(``tests/golden/search_golden.py``); a refactor must reproduce it, never regenerate it.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from golden.search_golden import GOLDEN_FILE, RUNS, run_all

GOLDEN: dict[str, Any] = json.loads(GOLDEN_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def fresh() -> dict[str, Any]:
    return run_all()


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6)


def test_every_run_is_recorded() -> None:
    assert sorted(GOLDEN) == sorted(name for name, _ in RUNS)


@pytest.mark.parametrize("name", [name for name, _ in RUNS])
def test_search_matches_golden(name: str, fresh: dict[str, Any]) -> None:
    golden, now = GOLDEN[name], fresh[name]
    assert (now["num_cells"], now["cell"], now["cost"], now["split"]) == (
        golden["num_cells"], golden["cell"], golden["cost"], golden["split"]
    )  # fmt: skip
    assert len(now["history"]) == len(golden["history"]) > 0
    for row, expected in zip(now["history"], golden["history"]):
        assert set(expected) <= set(row)  # new keys may be added; the recorded ones must not change
        for key, value in expected.items():
            assert close(row[key], value), (name, row["step"], key, row[key], value)
    for edge, expected in zip(now["edges"], golden["edges"], strict=True):
        assert (edge["from"], edge["to"]) == (expected["from"], expected["to"])
        assert all(close(edge["probabilities"][op], p) for op, p in expected["probabilities"].items())
    assert all(
        close(a, b) for a, b in zip(now["depth_probabilities"], golden["depth_probabilities"], strict=True)
    )
    if golden["probe_weights"] is None:
        assert now["probe_weights"] is None
    else:
        assert all(close(a, b) for a, b in zip(now["probe_weights"], golden["probe_weights"], strict=True))
