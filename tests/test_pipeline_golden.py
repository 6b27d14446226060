"""Golden tests of the benchmark pipeline: its plan (cells, needs, store keys, resolved configs) and its
report (JSON and Markdown) from fixed fake result files, as recorded from main's single-module pipeline
(``tests/golden/pipeline_golden.py``; never regenerated to make a refactor pass); and the store keys of
configs/amazon/benchmark.yaml's cells, which are being trained: a change that moves them orphans those cells.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from golden.pipeline_golden import (
    GOLDEN_JSON,
    GOLDEN_MD,
    load,
    normalised,
    plan_record,
    report_record,
    write_fake_results,
)
from helpers import REPO

from metakd import pipeline

GOLDEN = json.loads(GOLDEN_JSON.read_text(encoding="utf-8"))

BENCHMARK_KEYS = {  # configs/amazon/benchmark.yaml, seed 1, computed with main's single-module pipeline
    "teacher/mixed": "e0cf3ee8604d9df5",
    "teacher/meta": "db3328efb9ff41f6",
    "student/none/books": "e07eac8c0f68e554",
    "student/none/dvd": "6145d4f2702ef9eb",
    "student/none/electronics": "19666a1b58edb1a9",
    "student/none/kitchen": "6278fcb66f20ced8",
    "student/vanilla/books": "21d81396c92e3c3b",
    "student/vanilla/dvd": "46882dbe70de2f08",
    "student/vanilla/electronics": "cc1a7083c9080e6d",
    "student/vanilla/kitchen": "071f31a0949a0fc0",
    "student/tinybert_meta_budgetA/books": "a06a08df4ab8517b",
    "student/tinybert_meta_budgetA/dvd": "fe4bd2f190a8be9c",
    "student/tinybert_meta_budgetA/electronics": "01cdd86261cce966",
    "student/tinybert_meta_budgetA/kitchen": "7d7de6a40d207292",
    "student/meta_budgetA/books": "5b2f0569b3c4b608",
    "student/meta_budgetA/dvd": "d5b3b6a86704a04f",
    "student/meta_budgetA/electronics": "74ee1a644ae20020",
    "student/meta_budgetA/kitchen": "3609d51d40d888ea",
    # priorities 2 and 3 (computed with main's single-module pipeline, these rows added to `methods`)
    "student/pkd_meta/books": "bb3be11878c9ec33",
    "student/theseus_meta_budgetA/dvd": "78c0246585114512",
    "student/fastbert_l2_budgetA/kitchen": "ff87f131a64c3ec6",
    "teacher/mtl": "cb6531ed2fc776f8",
    "student/mtl_tinybert_budgetA/books": "4f4b001dbda00a39",
}
TEACHER_KEYS = {  # (seed, cell) of the other seeds
    (2, "teacher/meta"): "f0968cb6a2f7a20f",
    (2, "teacher/mixed"): "9a96149bc0668905",
    (3, "teacher/meta"): "e57a6b0b95dfec12",
    (3, "teacher/mixed"): "c3db20653d694efd",
}


def test_the_plan_matches_the_golden_record(tmp_path: Path) -> None:
    fresh = plan_record(load(tmp_path), tmp_path)
    assert [c["name"] for c in fresh["cells"]] == [c["name"] for c in GOLDEN["plan"]["cells"]]
    for now, golden in zip(fresh["cells"], GOLDEN["plan"]["cells"]):
        assert now == golden, golden["name"]
    assert fresh["cell_configs"] == GOLDEN["plan"]["cell_configs"]


def test_the_report_matches_the_golden_record(tmp_path: Path) -> None:
    summary, markdown = report_record(tmp_path)
    for key in sorted(set(summary) | set(GOLDEN["report"])):
        assert summary.get(key) == GOLDEN["report"].get(key), key
    assert markdown.splitlines() == GOLDEN_MD.read_text(encoding="utf-8").splitlines()


def test_the_benchmark_cells_keep_their_store_keys() -> None:
    config = pipeline.load_pipeline_config(REPO / "configs" / "amazon" / "benchmark.yaml")
    for name, key in BENCHMARK_KEYS.items():
        assert pipeline.cell_key(config, 1, name) == key, name
    for (seed, name), key in TEACHER_KEYS.items():
        assert pipeline.cell_key(config, seed, name) == key, (seed, name)


def test_report_only_works_from_the_result_files_alone(tmp_path: Path, capsys) -> None:
    """``--report-only`` with no local store and no runs folder: the tables and intervals come from the
    result files (the robustness reports live in the runs folder: gone with it)."""
    config = load(tmp_path)
    write_fake_results(config)
    shutil.rmtree(tmp_path / "runs")
    assert not pipeline.store_dir(config).exists()
    assert pipeline.main(["--config", str(tmp_path / "golden.yaml"), "--report-only"]) == 0
    assert "| Student: Meta-KD (meta-teacher) |" in capsys.readouterr().out
    summary = json.loads((tmp_path / "results" / "golden.json").read_text(encoding="utf-8"))
    again = normalised(summary, tmp_path)
    for key in ("main", "ablation", "by_test_set", "comparisons", "scarcity", "zero_shot", "cpu_minutes"):
        if key == "scarcity":
            again[key]["plot"] = GOLDEN["report"][key]["plot"]
        assert again[key] == GOLDEN["report"][key], key


def test_attacks_recorded_in_the_result_files_rebuild_the_robustness_table(tmp_path: Path) -> None:
    """An attack's summary is copied into the cell's result file (here by the reuse of a report made with
    the same settings), so ``--report-only`` without the runs folder gives the same robustness table."""
    config = load(tmp_path)
    write_fake_results(config)
    settings = config["robustness"]
    cells = [cell for cell in pipeline.plan_cells(config) if pipeline.robustness_domains(config, cell)]
    for seed in config["seeds"]:
        for cell in cells:
            paths = [
                pipeline.robustness_path(config, seed, cell.name, d)
                for d in pipeline.robustness_domains(config, cell)
            ]
            if not all(path.is_file() for path in paths):
                continue  # a cell that has not finished
            for path in paths:
                report = json.loads(path.read_text(encoding="utf-8"))
                path.write_text(json.dumps({**report, "pipeline_settings": settings}), encoding="utf-8")
            assert pipeline.run_cell_robustness(config, seed, cell) == ""
    recorded = pipeline.read_result(config, 1, "student/meta_budgetA/books")["robustness"]["books"]
    attacked = json.loads(
        pipeline.robustness_path(config, 1, "student/meta_budgetA/books", "books").read_text()
    )
    assert recorded["attack_success_rate"] == attacked["attack_success_rate"]
    assert recorded["settings"] == settings
    shutil.rmtree(tmp_path / "runs")
    assert pipeline.main(["--config", str(tmp_path / "golden.yaml"), "--report-only"]) == 0
    summary = json.loads((tmp_path / "results" / "golden.json").read_text(encoding="utf-8"))
    assert normalised(summary, tmp_path)["robustness"] == GOLDEN["report"]["robustness"]
