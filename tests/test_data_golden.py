"""Golden tests: the datamodules' cache keys, sizes, datasets and shuffled batches per case.

``tests/golden/data_golden.json`` was recorded before ``MultiDomainDataModule`` was split into parts
(``tests/golden/data_golden.py``); a refactor must reproduce it, never regenerate it. The fingerprints key
the tokenisation cache, the augmented records and every teacher-output cache on disk.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from golden.data_golden import CASES, GOLDEN_FILE, run_all

GOLDEN: dict[str, Any] = json.loads(GOLDEN_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def fresh() -> dict[str, Any]:
    return run_all()


def test_every_case_is_recorded() -> None:
    assert sorted(GOLDEN) == sorted(name for name, _, _ in CASES)


@pytest.mark.parametrize("name", [name for name, _, _ in CASES])
def test_datamodule_matches_golden(name: str, fresh: dict[str, Any]) -> None:
    golden, now = GOLDEN[name], fresh[name]
    assert now["split_fingerprint"] == golden["split_fingerprint"]
    assert now["data_fingerprint"] == golden["data_fingerprint"]
    assert now == golden
