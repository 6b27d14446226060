"""Logging as users run it: `python -m metakd fit` with the default (CSV) logger and with
``configs/loggers/wandb.yaml`` under WANDB_MODE=offline (tiny teacher, tiny JSONL corpus)."""

from __future__ import annotations

import csv
import json
import struct
from pathlib import Path

import pytest
import yaml
from helpers import REPO, run_metakd, tiny_encoder_config

_WORDS = {"pos": ["good", "great", "fine", "nice"], "neg": ["bad", "awful", "poor", "boring"]}


def write_tiny_setup(directory: Path) -> Path:
    """A 2-domain JSONL corpus and a tiny MetaTeacher fit config in ``directory``; returns the config.

    2 optimiser steps, then one validation batch (limit_train_batches=2 ends the epoch at step 2).
    """
    directory.mkdir(parents=True, exist_ok=True)
    lines = []
    for domain in ("books", "dvd"):
        for i in range(20):
            label = "pos" if i % 2 else "neg"
            words = [_WORDS[label][(i + k) % 4] for k in range(3)]
            lines.append(
                json.dumps({"text": f"the {domain} is " + " ".join(words), "label": label, "domain": domain})
            )
    corpus = directory / "train.jsonl"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = {
        "seed_everything": 0,
        "model": {
            "class_path": "metakd.MetaTeacher",
            "init_args": {
                "backbone": "minilm-l6",
                "encoder_config": tiny_encoder_config(),
                "transferability_cache": False,
            },
        },
        "data": {
            "class_path": "datamodules.JsonlDataModule",
            "init_args": {
                "train_file": str(corpus),
                # explicit: with label_names inferred, the datamodule's hparams (None) and the model's
                # linked label_names clash in Lightning's hparams merge whenever a logger is active
                "label_names": ["neg", "pos"],
                "backbone": "minilm-l6",
                "max_length": 32,
                "batch_size": 4,
                "cache_dir": str(directory / "cache"),
            },
        },
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": 2,
            "limit_train_batches": 2,
            "limit_val_batches": 1,
            "num_sanity_val_steps": 0,
            "enable_progress_bar": False,
            "enable_model_summary": False,
        },
    }
    path = directory / "tiny.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def wandb_offline_config(run_file: Path) -> dict:
    """The config updates recorded in an offline W&B run file (``run-<id>.wandb``).

    The file is W&B's LevelDB-style log (7-byte header, 32 KiB blocks, records with a 7-byte header:
    crc32, length, type FULL/FIRST/MIDDLE/LAST) of ``wandb_internal_pb2.Record`` protobufs.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    data = run_file.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    pos, block, pending, raw_records = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            raw_records.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            raw_records.append(pending + chunk)
    config: dict = {}
    for raw in raw_records:
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        items = (
            record.config.update if kind == "config" else record.run.config.update if kind == "run" else []
        )
        for item in items:
            config[item.key or ".".join(item.nested_key)] = json.loads(item.value_json)
    return config


def test_default_logger_writes_val_acc_csv(tmp_path):
    pytest.importorskip("pytorch_lightning")
    try:
        import tensorboard  # noqa: F401

        pytest.skip("tensorboard is installed: Lightning's default logger is then TensorBoard, not CSV")
    except ImportError:
        pass
    config = write_tiny_setup(tmp_path / "setup")
    root = tmp_path / "run"
    run_metakd("fit", "--config", config, f"--trainer.default_root_dir={root}")
    metrics = list(root.glob("lightning_logs/version_*/metrics.csv"))
    assert len(metrics) == 1, list(root.rglob("*"))
    with open(metrics[0], newline="") as handle:
        rows = list(csv.DictReader(handle))
    values = [float(r["val/acc"]) for r in rows if r.get("val/acc")]
    assert values and all(0.0 <= v <= 1.0 for v in values)
    domain_columns = {c for c in rows[0] if c.startswith("val/acc_")}
    assert domain_columns == {"val/acc_books", "val/acc_dvd"}
    # LightningCLI's resolved config beside the metrics, checkpoints under the root
    saved = yaml.safe_load((metrics[0].parent / "config.yaml").read_text())
    assert saved["model"]["class_path"] == "metakd.MetaTeacher"
    assert (root / "checkpoints" / "last.ckpt").is_file()


def test_wandb_offline_run_has_config_and_cli_config(tmp_path):
    pytest.importorskip("wandb")
    config = write_tiny_setup(tmp_path / "setup")
    root = tmp_path / "run"
    run_metakd(
        "fit",
        "--config",
        config,
        "--config",
        REPO / "configs" / "loggers" / "wandb.yaml",
        f"--trainer.default_root_dir={root}",
        "--model.init_args.learning_rate=3e-05",
        wandb_mode="offline",
    )
    # LightningCLI's config.yaml: in trainer.log_dir (= the W&B logger's save_dir = default_root_dir)
    cli_config = yaml.safe_load((root / "config.yaml").read_text())
    assert cli_config["trainer"]["logger"]["class_path"].endswith("WandbLogger")
    assert cli_config["model"]["init_args"]["learning_rate"] == 3e-05
    # W&B's own files: an offline run folder under <root>/wandb/, nothing of it at LightningCLI's path
    runs = list((root / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list(root.rglob("*"))
    run_files = list(runs[0].glob("run-*.wandb"))
    assert len(run_files) == 1
    wandb_config_yaml = runs[0] / "files" / "config.yaml"
    if wandb_config_yaml.exists():  # written by some wandb versions / on sync: W&B's format, not ours
        assert wandb_config_yaml.resolve() != (root / "config.yaml").resolve()
    # the resolved CLI config was uploaded to the run's config
    uploaded = wandb_offline_config(run_files[0])
    init_args = uploaded["model"]["init_args"]
    assert uploaded["model"]["class_path"] == "metakd.MetaTeacher"
    assert init_args["learning_rate"] == 3e-05
    assert init_args["encoder_config"]["hidden_size"] == tiny_encoder_config()["hidden_size"]
    assert uploaded["data"]["class_path"] == "datamodules.JsonlDataModule"
