"""Golden tests: the Student's numbers, logged keys and weights layout per preset and stage.

``tests/golden/student_golden.json`` was recorded from the code before the distillation redesign
(``tests/golden/student_golden.py``); a refactor must reproduce it, never regenerate it.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from golden.student_golden import GOLDEN_FILE, RUNS, run_all

GOLDEN: dict[str, Any] = json.loads(GOLDEN_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def fresh() -> dict[str, Any]:
    return run_all()


def test_every_run_is_recorded() -> None:
    assert sorted(GOLDEN) == sorted(name for name, _, _ in RUNS)


@pytest.mark.parametrize("name", [name for name, _, _ in RUNS])
def test_student_matches_golden(name: str, fresh: dict[str, Any]) -> None:
    golden, now = GOLDEN[name], fresh[name]
    assert now["state_dict"] == golden["state_dict"]
    assert now["fit_metric_keys"] == golden["fit_metric_keys"]
    assert now["test_metric_keys"] == golden["test_metric_keys"]
    assert len(now["losses"]) == len(golden["losses"]) > 0
    for step, (value, expected) in enumerate(zip(now["losses"], golden["losses"])):
        assert math.isclose(value, expected, rel_tol=1e-5, abs_tol=1e-7), (step, value, expected)
    assert math.isclose(now["init_abs_sum"], golden["init_abs_sum"], rel_tol=1e-9)
    assert math.isclose(now["final_abs_sum"], golden["final_abs_sum"], rel_tol=1e-6)
    assert now["test_acc"] == pytest.approx(golden["test_acc"], abs=1e-6)
