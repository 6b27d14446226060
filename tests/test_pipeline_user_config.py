"""The README's config for a user's JSONL corpus (configs/jsonl/pipeline.yaml, on the built-in budget) runs
end to end on the tiny corpus, with tiny models swapped in for speed."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import REPO
from test_pipeline import tiny_pipeline_config

from metakd import pipeline

CONFIG = REPO / "configs" / "jsonl" / "pipeline.yaml"


def test_the_readme_shows_the_user_config_verbatim() -> None:
    text = CONFIG.read_text(encoding="utf-8")
    assert len([line for line in text.splitlines() if not line.startswith("#")]) <= 10
    assert text in (REPO / "README.md").read_text(encoding="utf-8")


def test_the_user_config_runs_on_the_tiny_corpus(tmp_path: Path) -> None:
    tiny_pipeline_config(tmp_path)  # writes train/val/test.jsonl (domains books, dvd, music)
    text = (
        CONFIG.read_text(encoding="utf-8")
        .replace("my_data/", f"{tmp_path}/")
        .replace("dev.jsonl", "val.jsonl")
    )
    text = text.replace("[books, dvd, electronics, kitchen]", "[books, dvd]")
    path = tmp_path / "pipeline.yaml"
    path.write_text(text, encoding="utf-8")
    config = pipeline.load_pipeline_config(path)
    # the built-in budget, with the user's data block under both kinds of cell
    assert config["methods"] == ["textcnn_none", "textcnn_none_transfer", "textcnn_metakd"]
    assert config["teacher"]["trainer"]["max_steps"] == 150
    assert config["student"]["data"]["init_args"]["train_file"] == f"{tmp_path}/train.jsonl"
    assert config["student"]["data"]["init_args"]["batch_size"] == 32
    # a few steps on short inputs
    config = pipeline.deep_merge(
        config,
        {
            "runs_dir": str(tmp_path / "runs"),
            "results_dir": str(tmp_path / "results"),
            "data": {},
            "teacher": {
                "trainer": {"max_steps": 4, "val_check_interval": 2, "accelerator": "cpu", "logger": False},
                # the real MiniLM (the Meta-KD transfer set needs a pre-trained teacher), on 16 tokens
                "model": {"init_args": {"transferability_cache": False}},
                "data": {"init_args": {"max_length": 16, "cache_dir": str(tmp_path / "cache")}},
            },
            "student": {
                "trainer": {"max_steps": 4, "val_check_interval": 2, "accelerator": "cpu", "logger": False},
                "data": {"init_args": {"max_length": 16, "cache_dir": str(tmp_path / "cache")}},
            },
        },
    )
    counts = pipeline.run_all(config, in_process=True)
    assert counts == {"done": 7, "skipped": 0, "failed": 0, "blocked": 0}
    json_path, _ = pipeline.write_results(config)
    summary = json.loads(json_path.read_text())
    rows = {"student_textcnn_none", "student_textcnn_none_transfer", "student_textcnn_metakd"}
    assert set(summary["main"]) == {"teacher_meta"} | rows
    assert all(row["average"]["mean"] is not None for row in summary["main"].values())
