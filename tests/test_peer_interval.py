"""benchmarks/peer_interval.py: a pipeline row minus a peer's predictions, paired by example."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
from golden.pipeline_golden import EXAMPLES, load, write_fake_results
from helpers import REPO

from metakd import pipeline

sys.path.insert(0, str(REPO / "benchmarks"))
import peer_interval  # noqa: E402


def test_a_row_minus_a_peer_that_gets_three_books_examples_wrong(tmp_path: Path) -> None:
    config = load(tmp_path)
    write_fake_results(config)
    rows = pipeline.table_rows(config, {cell.name for cell in pipeline.plan_cells(config)})
    (row,) = [r for r in rows if r.key == "student_none"]
    peer, flipped = [], 0
    for domain, cell in row.cells.items():
        for seed in config["seeds"]:
            for p in pipeline.cell_predictions(pipeline.read_result(config, seed, cell), "test"):
                if p["domain"] != domain:
                    continue
                pred = p["pred"]
                if (domain, seed) == ("books", 1) and pred == p["label"] and flipped < 3:
                    pred, flipped = 1 - pred, flipped + 1  # the peer gets these wrong
                peer.append({"domain": domain, "seed": seed, "example_id": p["example_id"],
                             "label": p["label"], "pred": pred})  # fmt: skip
    assert flipped == 3
    result = peer_interval.row_minus_peer(config, "none", peer, "test", resamples=200)
    assert result["examples"] == len(peer) == 2 * 2 * EXAMPLES
    assert result["books"]["diff"] == pytest.approx((3 / EXAMPLES + 0) / 2)  # strata: the two seeds
    assert result["dvd"] == {**result["dvd"], "diff": 0.0, "low": 0.0, "high": 0.0}
    assert result["average"]["diff"] == pytest.approx(3 / EXAMPLES / 4)  # four (domain, seed) strata

    path = tmp_path / "peer.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(p) + "\n" for p in peer)
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "peer_interval.py"),
         "--config", str(tmp_path / "golden.yaml"),
         "--row", "none", "--peer", str(path), "--test-set", "test", "--json", str(tmp_path / "i.json")],
        capture_output=True, text=True, cwd=REPO, check=True,
    )  # fmt: skip
    assert "| paired 95% interval | " in out.stdout and "minus the model2vec peer (test)" in out.stdout
    assert json.loads((tmp_path / "i.json").read_text())["books"]["diff"] == pytest.approx(3 / EXAMPLES / 2)


def test_an_unknown_row_is_refused(tmp_path: Path) -> None:
    config = load(tmp_path)
    with pytest.raises(SystemExit, match="'nope' is not a student row"):
        peer_interval.row_minus_peer(config, "nope", [], "test")
