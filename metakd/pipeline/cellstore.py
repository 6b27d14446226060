"""The cell store: one place for every finished cell of every pipeline config and study.

A *cell* (one teacher, search or student model of a pipeline) is identified by its **key**: the sha256 of
its resolved LightningCLI config with the seed, minus what changes no number (run folders, the pipeline's
recording callbacks, progress bars, cache folders, the test set a test run reads), and with the
checkpoints it loads named by *their* keys (``@store/<key>/...``) instead of machine paths. Two configs or
studies that ask for the same model therefore ask for the same key, and the second one reuses the first
one's cell instead of training it again.

Two places hold a cell:

- the **local store** ``<store_dir>/<key>/``: checkpoints, logs, ``cell.yaml`` and the raw outputs of the
  run (not committed; ``<runs_dir>/<name>/<seed>/<cell>`` is a symbolic link to it, the per-config view);
- the **result file** ``<results_store>/<key>.json``: what the report needs and what is committed: the
  metrics and per-example predictions on every test set, the dev curve, CPU seconds, the environment and
  the resolved config with no machine paths. Reports are rebuilt from these files alone
  (``pipeline --report-only``), so a study can be finished over several days and machines.

This module knows nothing of pipeline configs (:mod:`metakd.pipeline.store` resolves a planned cell into
the config whose key is computed here).
"""

from __future__ import annotations

import copy
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from metakd.utils import atomic_write_bytes, sha256_json

STORE_TOKEN = "@store"
"""Stands for the local store folder in a cell's identity (checkpoint paths of the cells it needs)."""
RESULT_FORMAT = 1

_DROPPED_TRAINER_KEYS = ("default_root_dir", "enable_progress_bar")
_DROPPED_INIT_ARGS = {"model": ("cache_dir",), "data": ("cache_dir", "num_workers", "test_set")}
_RECORDING_CALLBACKS = ("metakd.pipeline.", "metakd.progress.")


def identity(config: dict[str, Any], store_dir: str | Path | None = None) -> dict[str, Any]:
    """What decides whether two cells are the same model: ``config`` (a cell's resolved config) as plain
    JSON without the keys that change no number, with ``store_dir`` written as :data:`STORE_TOKEN`."""
    plain = json.loads(json.dumps(config, default=str))
    if store_dir is not None:
        plain = _replace_prefix(plain, str(Path(store_dir)), STORE_TOKEN)
    trainer = plain.get("trainer")
    if isinstance(trainer, dict):
        for key in _DROPPED_TRAINER_KEYS:
            trainer.pop(key, None)
        if isinstance(trainer.get("callbacks"), list):
            trainer["callbacks"] = [
                c
                for c in trainer["callbacks"]
                if not (isinstance(c, dict) and str(c.get("class_path", "")).startswith(_RECORDING_CALLBACKS))
            ]
    for section, keys in _DROPPED_INIT_ARGS.items():
        block = plain.get(section)
        init_args = block.get("init_args") if isinstance(block, dict) else None
        if isinstance(init_args, dict):
            for key in keys:
                init_args.pop(key, None)
    plain.pop("out", None)  # a search cell's output folder
    return plain


def cell_key(config: dict[str, Any], store_dir: str | Path | None = None) -> str:
    """The store key of a cell: 16 hex digits of the sha256 of its :func:`identity`."""
    return sha256_json(identity(config, store_dir), length=16)


def store_relative(value: Any, store_dir: str | Path) -> Any:
    """``value`` (strings, lists, mappings) with paths in the local store written as ``@store/...``."""
    return _replace_prefix(value, str(Path(store_dir)), STORE_TOKEN)


def _replace_prefix(value: Any, prefix: str, token: str) -> Any:
    if isinstance(value, str):
        if value == prefix or value.startswith(prefix + os.sep) or value.startswith(prefix + "/"):
            return token + value[len(prefix) :]
        return value
    if isinstance(value, dict):
        return {k: _replace_prefix(v, prefix, token) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_prefix(v, prefix, token) for v in value]
    return value


def fill_store(value: Any, store_dir: str | Path) -> Any:
    """``value`` with :data:`STORE_TOKEN` prefixes replaced by the local store folder."""
    if isinstance(value, str):
        return str(Path(store_dir)) + value[len(STORE_TOKEN) :] if value.startswith(STORE_TOKEN) else value
    if isinstance(value, dict):
        return {k: fill_store(v, store_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [fill_store(v, store_dir) for v in value]
    return value


# --------------------------------------------------------------------------------------------------
# result files


def result_path(results_store: str | Path, key: str) -> Path:
    return Path(results_store) / f"{key}.json"


def result_files(results_store: str | Path) -> list[dict[str, Any]]:
    """Every result file in ``results_store`` (every config's finished cells), by key."""
    folder = Path(results_store)
    paths = sorted(folder.glob("*.json")) if folder.is_dir() else []
    return [json.loads(path.read_text(encoding="utf-8")) for path in paths]


def read_result_file(results_store: str | Path, key: str) -> dict[str, Any] | None:
    path = result_path(results_store, key)
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _digits(values: list[int]) -> str | list[int]:
    """Class indices as a string of digits when they all are 0-9 (compact JSON), else the list."""
    return "".join(str(v) for v in values) if all(0 <= v <= 9 for v in values) else list(values)


def _undigits(value: str | list[int]) -> list[int]:
    return [int(c) for c in value] if isinstance(value, str) else [int(v) for v in value]


def id_ranges(ids: list[int]) -> str:
    """Sorted example ids as runs: ``[0, 1, 2, 5, 7, 8]`` -> ``"0-2,5,7-8"``."""
    runs: list[str] = []
    start = previous = None
    for i in ids:
        if previous is not None and i == previous + 1:
            previous = i
            continue
        if start is not None:
            runs.append(str(start) if start == previous else f"{start}-{previous}")
        start = previous = i
    if start is not None:
        runs.append(str(start) if start == previous else f"{start}-{previous}")
    return ",".join(runs)


def parse_id_ranges(text: str | list[int]) -> list[int]:
    """The ids of :func:`id_ranges` (a list, the first result files' form, is returned as it is)."""
    if isinstance(text, list):
        return [int(i) for i in text]
    ids: list[int] = []
    for run in filter(None, text.split(",")):
        first, _, last = run.partition("-")
        ids.extend(range(int(first), int(last or first) + 1))
    return ids


def pack_predictions(rows: list[dict[str, Any]], domain_names: list[str]) -> dict[str, Any]:
    """Per-example predictions (``PredictionsWriter`` rows) in a compact, diff-friendly form: example ids
    as runs (:func:`id_ranges`), and domain index, gold label and predicted label as digit strings, sorted
    by example id."""
    rows = sorted(rows, key=lambda r: int(r["example_id"]))
    index = {name: i for i, name in enumerate(domain_names)}
    return {
        "ids": id_ranges([int(r["example_id"]) for r in rows]),
        "domain": _digits([index.get(r["domain"], r["domain"]) for r in rows]),
        "label": _digits([int(r["label"]) for r in rows]),
        "pred": _digits([int(r["pred"]) for r in rows]),
    }


def unpack_predictions(packed: dict[str, Any], domain_names: list[str]) -> list[dict[str, Any]]:
    """The rows of :func:`pack_predictions`: ``{"example_id", "domain", "label", "pred"}``."""
    domains, labels, preds = (_undigits(packed[k]) for k in ("domain", "label", "pred"))
    return [
        {"example_id": i, "domain": domain_names[d], "label": y, "pred": p}
        for i, d, y, p in zip(parse_id_ranges(packed["ids"]), domains, labels, preds)
    ]


def write_result_file(results_store: str | Path, key: str, payload: dict[str, Any]) -> Path:
    """Write a cell's result file atomically: indented JSON, the predictions of each test set on one line
    (small diffs, a readable file)."""
    path = result_path(results_store, key)
    payload = {"format": RESULT_FORMAT, "key": key, **copy.deepcopy(payload)}
    predictions = payload.pop("predictions", None) or {}
    text = json.dumps(payload, indent=2, sort_keys=True, default=str)
    if predictions:
        items = [
            f"    {json.dumps(name)}: {json.dumps(packed, sort_keys=True)}"
            for name, packed in sorted(predictions.items())
        ]
        text = text[: text.rindex("}")].rstrip() + ',\n  "predictions": {\n' + ",\n".join(items) + "\n  }\n}"
    json.loads(text)  # still JSON
    atomic_write_bytes(path, (text + "\n").encode("utf-8"))
    return path


def package_versions() -> dict[str, str]:
    """The environment a result was made in (a result file's ``environment``, the report's versions): Python,
    platform, the versions of the main packages, the CPU count and the git commit."""
    from importlib import metadata

    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for name in (
        "torch",
        "pytorch-lightning",
        "transformers",
        "datasets",
        "tokenizers",
        "onnxruntime",
        "metakd",
    ):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    versions["cpu_count"] = str(os.cpu_count())
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode == 0:
            versions["git_commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return versions
