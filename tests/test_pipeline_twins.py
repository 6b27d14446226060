"""`twins:` pairs each student row with its no-KD twin: the report adds the paired intervals of row minus twin
(per domain and on the average, computed as the `compare_to` intervals are), and a bad row name is refused."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from golden.pipeline_golden import golden_config
from helpers import REPO

from metakd import pipeline
from metakd.pipeline import cellstore
from metakd.pipeline.formats import interval_text

DOMAINS = ["books", "dvd"]
SEEDS = [1, 2]
N = 10  # test examples per domain
BASE = 5  # every twin is right on examples 0-4 of each domain and seed
CORRECT = {  # (row, domain, seed) -> how many of examples 0..N-1 (from the first) it gets right; else BASE
    ("a_kd", "books", 1): BASE + 3,
    ("a_kd", "books", 2): BASE + 3,
    ("b_kd", "dvd", 1): BASE - 2,
}
KD_A = "Student: A, KD (mixed teacher)"
VARIANTS = {
    "a_none": {"method": "none", "label": "A, no KD"},
    "a_kd": {"method": "vanilla", "label": "A, KD"},
    "b_none": {"method": "none", "label": "B, no KD", "data": {"batch_size": 4}},
    "b_kd": {"method": "vanilla", "label": "B, KD", "data": {"batch_size": 4}},
}  # the B rows differ from the A rows (their cells have other store keys)


def config_file(root: Path, **changes: Any) -> Path:
    """The golden config cut down to the main study of the four variant rows, with ``changes``."""
    config = golden_config(root)
    config.update(
        {
            "studies": ["main"],
            "seeds": SEEDS,
            "methods": list(VARIANTS),
            "variants": VARIANTS,
            "extra_teachers": {},
            "ablations": [],
            "budgets": ["B"],
            "test_sets": ["test"],
            "robustness": None,
            "compare_to": "a_kd",
            **changes,
        }
    )
    path = root / "twins.yaml"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def write_results(config: dict[str, Any], not_run: Any = (), no_predictions: Any = ()) -> None:
    """A result file per planned cell and seed; a student of row r on domain d gets the first
    ``CORRECT[(r, d, seed)]`` test examples right and the others wrong. ``(seed, cell)`` in ``not_run``
    gets no result file, in ``no_predictions`` one without per-example predictions."""
    for seed in SEEDS:
        for cell in pipeline.plan_cells(config):
            if (seed, cell.name) in not_run:
                continue
            domains = DOMAINS if cell.kind == "teacher" else [cell.info["domain"]]
            rows = []
            for d, domain in enumerate(domains):
                right = CORRECT.get((cell.name.split("/")[1], domain, seed), BASE)
                for i in range(N):
                    label = i % 2
                    rows.append({"example_id": 100 * d + i, "domain": domain, "label": label,
                                 "pred": label if i < right else 1 - label})  # fmt: skip
            accuracy = sum(r["pred"] == r["label"] for r in rows) / len(rows)
            payload = {
                "cell": cell.name,
                "kind": cell.kind,
                "seed": seed,
                "info": cell.info,
                "seconds": 1.0,
                "cpu_seconds": 2.0,
                "metrics": {"test/acc": accuracy},
                "predictions": {
                    "test": {"domain_names": DOMAINS, **cellstore.pack_predictions(rows, DOMAINS)}
                },
            }
            if (seed, cell.name) in no_predictions:
                del payload["predictions"]
            key = pipeline.cell_key(config, seed, cell)
            cellstore.write_result_file(pipeline.results_store(config), key, payload)


def report(
    root: Path, not_run: Any = (), no_predictions: Any = (), **changes: Any
) -> tuple[dict[str, Any], str]:
    config = pipeline.load_pipeline_config(config_file(root, **changes))
    write_results(config, not_run, no_predictions)
    json_path, md_path = pipeline.write_results(config)
    return json.loads(json_path.read_text(encoding="utf-8")), md_path.read_text(encoding="utf-8")


def test_each_row_minus_its_twin_by_hand(tmp_path: Path) -> None:
    summary, markdown = report(tmp_path, twins={"a_kd": "a_none", "b_kd": "b_none"})
    first, second = summary["twin_comparisons"]
    assert (first["reference"], first["other"], first["label"]) == ("student_a_kd", "student_a_none", KD_A)
    assert (second["reference"], second["other"]) == ("student_b_kd", "student_b_none")
    assert first["study"] == "main" and first["budget"] is None and first["missing_predictions"] == []
    # a_kd gets 3 more of 10 books examples right in both seeds, the same on dvd
    assert first["intervals"]["books"]["diff"] == pytest.approx(3 / N)
    assert first["intervals"]["dvd"] == {**first["intervals"]["dvd"], "diff": 0.0, "low": 0.0, "high": 0.0}
    assert first["intervals"]["average"]["diff"] == pytest.approx((3 / N + 3 / N + 0 + 0) / 4)
    # b_kd gets 2 fewer right on dvd in seed 1 only; per domain the strata are the seeds
    assert second["intervals"]["books"]["diff"] == 0.0
    assert second["intervals"]["dvd"]["diff"] == pytest.approx((-2 / N + 0) / 2)
    assert second["intervals"]["average"]["diff"] == pytest.approx(-2 / N / 4)
    # computed as the compare_to intervals are: a_kd is also the reference row, minus a_none
    (same,) = [c for c in summary["comparisons"] if c["other"] == "student_a_none"]
    assert same["intervals"] == first["intervals"]
    assert summary["pipeline_config"]["twins"] == {"a_kd": "a_none", "b_kd": "b_none"}

    lines = markdown.splitlines()
    # compare_to names a variants row: the minus table is titled by that row, not "Meta-KD"
    assert f"## {KD_A} minus each other student (accuracy points, paired bootstrap 95% interval)" in lines
    assert any(f"Positive: {KD_A} is better." in line for line in lines)
    title = "## Row minus its no-KD twin (paired bootstrap 95% interval, test set `test`)"
    assert lines.index(title) > lines.index(next(x for x in lines if "minus each other student" in x))
    table = lines[lines.index(title) + 4 :]
    assert table[0] == "| budget | row | twin | books | dvd | average |"
    assert table[2].startswith(f"| - | {KD_A} | Student: A, no KD | ")
    assert table[3].startswith("| - | Student: B, KD (mixed teacher) | Student: B, no KD | ")
    assert table[2].endswith(f"| {interval_text(first['intervals']['average'])} |")


def test_cells_not_run_and_cells_without_predictions_get_a_line_each(tmp_path: Path) -> None:
    """A cell without a result for a seed (never run) is named apart from a finished cell without
    per-example predictions, in the JSON (``not_run``, only where there is one) and in the report."""
    summary, markdown = report(
        tmp_path,
        not_run={(2, "student/a_none/dvd")},
        no_predictions={(1, "student/b_kd/books")},
        twins={"a_kd": "a_none"},
    )
    by_other = {c["other"]: c for c in summary["comparisons"]}
    assert by_other["student_a_none"]["missing_predictions"] == []
    assert by_other["student_a_none"]["not_run"] == ["2/student/a_none/dvd"]
    assert by_other["student_b_kd"]["missing_predictions"] == ["1/student/b_kd/books"]
    assert "not_run" not in by_other["student_b_kd"] and "not_run" not in by_other["student_b_none"]
    # left out of the intervals: dvd is paired on seed 1's examples only, books on both seeds'
    assert by_other["student_a_none"]["intervals"]["dvd"]["n_examples"] == N
    assert by_other["student_a_none"]["intervals"]["books"]["n_examples"] == 2 * N
    (twin,) = summary["twin_comparisons"]
    assert (twin["missing_predictions"], twin["not_run"]) == ([], ["2/student/a_none/dvd"])

    lines = markdown.splitlines()
    missing = "Cells without per-example predictions (left out of the intervals): 1: 1/student/b_kd/books"
    not_run = "Cells not run for these seeds (left out of the intervals): 1: 2/student/a_none/dvd"
    assert lines.count(missing) == 1  # the minus table has it, the twins table (a_kd, a_none) has not
    assert lines.count(not_run) == 2  # under both tables
    first_table = lines.index(next(x for x in lines if "minus each other student" in x))
    twins_table = lines.index(next(x for x in lines if "no-KD twin (paired" in x))
    assert first_table < lines.index(missing) < lines.index(not_run) < twins_table
    assert not any("b_kd" in line for line in lines if line.startswith("Cells not run"))


def test_no_twins_no_table_and_no_key(tmp_path: Path) -> None:
    summary, markdown = report(tmp_path)
    assert "twin_comparisons" not in summary
    assert "no-KD twin" not in markdown


def test_a_twin_named_by_its_method_and_a_row_left_out_of_methods(tmp_path: Path) -> None:
    """A registry method names its row as `compare_to` does; a known row that the report lacks (a config
    that extends this one with fewer rows) is skipped."""
    summary, _ = report(tmp_path, methods=["a_none", "a_kd"], twins={"a_kd": "none", "b_kd": "b_none"})
    (entry,) = summary["twin_comparisons"]
    assert (entry["reference"], entry["other"]) == ("student_a_kd", "student_a_none")
    assert entry["intervals"]["books"]["diff"] == pytest.approx(3 / N)


def test_an_unknown_twin_row_is_refused_in_one_line(tmp_path: Path) -> None:
    path = config_file(tmp_path, twins={"a_kd": "a_nnoe"})
    message = "`twins` names unknown row 'a_nnoe'; known rows: ["
    with pytest.raises(pipeline.PipelineError, match=re.escape(f"{path}: {message}")) as err:
        pipeline.load_pipeline_config(path)
    assert "'a_none'" in str(err.value) and "'vanilla'" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(pipeline.PipelineError, match="`twins` must be a mapping of row -> its no-KD twin"):
        pipeline.load_pipeline_config(config_file(tmp_path / "list", twins=["a_kd", "a_none"]))
    assert_cli_refuses(path, message)


def test_pairs_give_any_row_minus_any_other_by_hand(tmp_path: Path) -> None:
    """`pairs:` [[row, other], ...] adds row minus other, computed as the twins' intervals are, over the
    seeds both rows have; a config without it has neither the table nor the key."""
    summary, markdown = report(
        tmp_path, not_run={(2, "student/b_kd/books"), (2, "student/b_kd/dvd")}, pairs=[["a_kd", "b_kd"]]
    )
    (entry,) = summary["pair_comparisons"]
    assert (entry["reference"], entry["other"], entry["label"]) == ("student_a_kd", "student_b_kd", KD_A)
    # books: a_kd 8 of 10 right in seed 1, b_kd 5 (seed 2 of b_kd never ran: left out of the pairing)
    assert entry["intervals"]["books"]["diff"] == pytest.approx(3 / N)
    # dvd, seed 1: a_kd 5 right, b_kd 3
    assert entry["intervals"]["dvd"]["diff"] == pytest.approx(2 / N)
    assert entry["intervals"]["average"]["diff"] == pytest.approx((3 / N + 2 / N) / 2)
    assert entry["not_run"] == ["2/student/b_kd/books", "2/student/b_kd/dvd"]
    assert summary["pipeline_config"]["pairs"] == [["a_kd", "b_kd"]]
    lines = markdown.splitlines()
    title = "## Row minus another row (paired bootstrap 95% interval, test set `test`)"
    table = lines[lines.index(title) + 4 :]
    assert table[0] == "| budget | row | other | books | dvd | average |"
    assert table[2].startswith(f"| - | {KD_A} | Student: B, KD (mixed teacher) | ")
    assert table[2].endswith(f"| {interval_text(entry['intervals']['average'])} |")
    summary, markdown = report(tmp_path / "none")
    assert "pair_comparisons" not in summary and "Row minus another row" not in markdown


def test_bad_pairs_are_refused_in_one_line(tmp_path: Path) -> None:
    path = config_file(tmp_path, pairs=[["a_kd", "b_nnoe"]])
    message = "`pairs` names unknown row 'b_nnoe'; known rows: ["
    with pytest.raises(pipeline.PipelineError, match=re.escape(f"{path}: {message}")):
        pipeline.load_pipeline_config(path)
    for bad in (["a_kd", "b_kd"], [["a_kd"]], {"a_kd": "b_kd"}):
        with pytest.raises(
            pipeline.PipelineError, match=r"`pairs` must be a list of \[row, other row\] pairs"
        ):
            pipeline.load_pipeline_config(config_file(tmp_path / "bad", pairs=bad))
    assert_cli_refuses(path, message)


def assert_cli_refuses(path: Path, message: str) -> None:
    """The real command stops with exit status 2 and ``error: <config>: <message>`` as its last line."""
    result = subprocess.run(
        [sys.executable, "-m", "metakd", "pipeline", "--config", str(path), "--plan"],
        capture_output=True, text=True, cwd=REPO, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {path}: {message}")
