"""Golden tests: the MetaTeacher's numbers per weighting, meta engine, scope, domain loss and t_i scaling,
and the checkpoints of an earlier version, which must still load and compute the same logits.

``tests/golden/teacher_golden.json`` and the ``*_v1.ckpt`` files were recorded from the code before the
MetaTeacher was split into parts (``tests/golden/teacher_golden.py``); a refactor must reproduce them,
never regenerate them.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from golden.teacher_golden import CHECKPOINTS, GOLDEN_FILE, RUNS, checkpoint_outputs, run_all

GOLDEN: dict[str, Any] = json.loads(GOLDEN_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def fresh() -> dict[str, Any]:
    return run_all()


def assert_close(now: list, expected: list, rel: float = 1e-5, abs_tol: float = 1e-7, what: str = "") -> None:
    assert len(now) == len(expected), what
    for index, (value, golden) in enumerate(zip(now, expected)):
        if golden is None:  # NaN
            assert value is None, (what, index, value)
        else:
            assert value is not None and math.isclose(value, golden, rel_tol=rel, abs_tol=abs_tol), (
                what, index, value, golden,
            )  # fmt: skip


def test_every_run_is_recorded() -> None:
    assert sorted(GOLDEN["runs"]) == sorted(name for name, _, _ in RUNS)


@pytest.mark.parametrize("name", [name for name, _, _ in RUNS])
def test_teacher_matches_golden(name: str, fresh: dict[str, Any]) -> None:
    golden, now = GOLDEN["runs"][name], fresh[name]
    for key in ("fit_metric_keys", "state_dict", "checkpoint_keys", "hyper_parameters", "checkpoint_entries"):
        assert now[key] == golden[key], key
    assert len(now["steps"]) == len(golden["steps"]) > 0
    for step, (value, expected) in enumerate(zip(now["steps"], golden["steps"])):
        assert sorted(value) == sorted(expected), step
        assert value["example_ids"] == expected["example_ids"], step
        assert_close(value["weights"], expected["weights"], abs_tol=1e-6, what=f"step {step} weights")
        scalars = sorted(k for k in expected if k not in ("example_ids", "weights"))
        now_scalars, golden_scalars = [value[k] for k in scalars], [expected[k] for k in scalars]
        assert_close(now_scalars, golden_scalars, what=f"step {step} {scalars}")
    assert_close(now["transferability"], golden["transferability"], rel=1e-6, what="t_i")
    assert_close(now["prototypes"], golden["prototypes"], rel=1e-6, abs_tol=1e-7, what="prototypes")
    assert math.isclose(now["final_abs_sum"], golden["final_abs_sum"], rel_tol=1e-6)


@pytest.mark.parametrize("name", sorted(CHECKPOINTS))
def test_old_checkpoints_load_and_compute_the_same(name: str) -> None:
    from metakd.teachers import FrozenTeacher, load_metakd_teacher

    path = str(CHECKPOINTS[name])
    golden = GOLDEN["checkpoints"][name]
    teacher = load_metakd_teacher(path)  # the class named in the checkpoint
    assert type(teacher).__name__ == {"teacher": "MetaTeacher", "mtl": "MultiTaskTeacher"}[name]
    now = checkpoint_outputs(teacher)
    for key in ("logits", "transferability", "prototypes"):
        assert_close(now[key], golden[key], rel=1e-6, abs_tol=1e-6, what=key)
    assert (now["transferable"] is None) == (golden["transferable"] is None)
    if golden["transferable"] is not None:
        assert_close(now["transferable"], golden["transferable"], rel=1e-6, abs_tol=1e-6, what="transferable")
    assert math.isclose(now["last_hidden_abs_sum"], golden["last_hidden_abs_sum"], rel_tol=1e-6)
    frozen = FrozenTeacher(path, ["label0", "label1"], ["dom0", "dom1", "dom2"], target_domain="dom1")
    assert frozen.kind == "metakd" and frozen.uses_domains and frozen.num_layers == 1
    assert ("transferable" in frozen.provides) == (name == "teacher")
