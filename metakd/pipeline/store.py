"""A cell in the cell store: its resolved config, its key, its folders and its result.

:func:`cell_config` resolves a planned cell (:mod:`.plan`) into the full LightningCLI config it runs with:
the base config of its kind, its overrides, its seed, the checkpoint of the teacher it needs and the
pipeline's recording callbacks (:mod:`.writers`), with its store folder as run folder. Its key
(:func:`cell_key`) is the hash of that config without run paths (:mod:`.cellstore`), so every config and
study that asks for the same model finds the same folder ``<store_dir>/<key>`` (:func:`store_path`); the
per-config view ``<runs_dir>/<name>/<seed>/<cell>`` (:func:`cell_dir`) links to it. :func:`read_result`
reads a cell's result from its committed result file (``results_store``), else from the local store.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from metakd.pipeline import cellstore
from metakd.pipeline.config import PipelineError, deep_merge
from metakd.pipeline.plan import Cell, planned_cell
from metakd.pipeline.writers import DEV_CURVE_FILE, PREDICTIONS_FILE, TEST_METRICS_FILE

RESULT_FILE = "result.json"
RETRAINED_FILE = "retrained.json"
TEACHER_OUTPUTS_DIR = "teacher_outputs"
"""The store's folder of teacher outputs (logits on a training set), shared by all of a teacher's students."""


TEACHER_CKPT_PLACEHOLDER = "@teacher_ckpt"
"""A string in a student cell's ``data`` section (e.g. L2A's ``augment.init_args.teacher_ckpt``) that the
pipeline replaces with the path of the cell's teacher checkpoint (per seed)."""


def store_dir(config: dict[str, Any]) -> Path:
    """The local cell store (``store_dir``; default ``store`` beside ``runs_dir``): one folder per cell key,
    shared by every pipeline config whose ``runs_dir`` has the same parent (:mod:`.cellstore`)."""
    return Path(config.get("store_dir") or Path(config["runs_dir"]).parent / "store")


def results_store(config: dict[str, Any]) -> Path:
    """Where the cells' result files are written and read (``results_store``; default
    ``<results_dir>/cells``): the files to commit."""
    return Path(config.get("results_store") or Path(config["results_dir"]) / "cells")


def cell_key(config: dict[str, Any], seed: int, cell: Cell | str) -> str:
    """The store key of a cell (:func:`.cellstore.cell_key` of its config with store-relative paths)."""
    cell = planned_cell(config, cell) if isinstance(cell, str) else cell
    return cellstore.cell_key(_cell_config(config, seed, cell, paths=False))


def cell_identity(config: dict[str, Any], seed: int, cell: Cell | str) -> dict[str, Any]:
    """What the cell's key is the hash of (:func:`.cellstore.identity`): its config as its result file
    records it, with no machine paths."""
    cell = planned_cell(config, cell) if isinstance(cell, str) else cell
    return cellstore.identity(_cell_config(config, seed, cell, paths=False))


def store_path(config: dict[str, Any], seed: int, cell: Cell | str) -> Path:
    """The cell's folder in the local store."""
    return store_dir(config) / cell_key(config, seed, cell)


def cell_dir(config: dict[str, Any], seed: int, cell: str) -> Path:
    """The per-config view of a cell, ``<runs_dir>/<name>/<seed>/<cell>``: a symbolic link to its store
    folder once the cell has run."""
    return Path(config["runs_dir"]) / config["name"] / str(seed) / cell


def best_checkpoint(config: dict[str, Any], seed: int, cell: str) -> Path:
    return store_path(config, seed, cell) / "checkpoints" / "best.ckpt"


def cell_config(config: dict[str, Any], seed: int, cell: Cell) -> dict[str, Any]:
    """The full LightningCLI config of a cell: base config <- budget <- cell overrides <- paths (a search
    cell: its search config <- target domain <- teacher, out, seed). Its run folder is its store folder."""
    return _cell_config(config, seed, cell, paths=True)


def _cell_config(config: dict[str, Any], seed: int, cell: Cell, paths: bool) -> dict[str, Any]:
    """:func:`cell_config`; with ``paths`` False, the cells it needs are ``@store/<key>`` and it has no run
    folder (what its key is computed from)."""
    if cell.kind == "search":
        return search_cell_config(config, seed, cell, paths)

    def needed(need: str, *parts: str) -> str:
        return str(Path(cellstore.STORE_TOKEN, cell_key(config, seed, need), *parts))

    merged = deep_merge(config[cell.kind], cell.overrides)
    merged["seed_everything"] = int(seed)
    init_args = merged.setdefault("model", {}).setdefault("init_args", {})
    teachers = [need for need in cell.needs if not need.startswith("search/")]
    if teachers:
        init_args["teacher_ckpt"] = needed(teachers[0], "checkpoints", "best.ckpt")
        merged["data"] = _fill(merged.get("data"), TEACHER_CKPT_PLACEHOLDER, init_args["teacher_ckpt"])
        # what a student needs from its teacher (logits, ...) is computed once per teacher and data set
        init_args.setdefault("cache_dir", str(Path(cellstore.STORE_TOKEN, TEACHER_OUTPUTS_DIR)))
    for need in cell.needs:
        if need.startswith("search/"):  # the architecture this domain's search derived
            student_model = init_args.setdefault("student_model", {})
            student_model.setdefault("init_args", {})["architecture"] = needed(need, "architecture.json")
    if not paths:
        return merged
    directory = store_dir(config) / cellstore.cell_key(merged)
    trainer = merged.setdefault("trainer", {})
    trainer["default_root_dir"] = str(directory)
    if config.get("progress", True):  # the model's progress bar (on the pipeline's terminal); no number
        trainer["enable_progress_bar"] = True
    callbacks = list(trainer.get("callbacks") or [])
    for writer, filename in (
        ("TestMetricsWriter", TEST_METRICS_FILE),
        ("DevCurveWriter", DEV_CURVE_FILE),
        ("PredictionsWriter", PREDICTIONS_FILE),
    ):
        callbacks.append(
            {"class_path": f"metakd.pipeline.{writer}", "init_args": {"path": str(directory / filename)}}
        )
    trainer["callbacks"] = callbacks
    return cellstore.fill_store(merged, store_dir(config))


def search_cell_config(config: dict[str, Any], seed: int, cell: Cell, paths: bool = True) -> dict[str, Any]:
    """The config of ``python -m metakd search`` for one domain (``variants.<row>.search`` names the file;
    its ``data:`` defaults to the students' ``data:``)."""
    path = Path(cell.overrides["config"])
    try:
        base = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise PipelineError(f"cannot read the search config {path} of {cell.name}: {err}") from err
    # the students' data (same corpus, length, cache) unless the search config gives its own
    merged = deep_merge(
        deep_merge({"data": config["student"].get("data", {})}, base), {"data": cell.overrides["data"]}
    )
    teacher_key = cell_key(config, seed, cell.needs[0])
    merged["teacher_ckpt"] = str(Path(cellstore.STORE_TOKEN, teacher_key, "checkpoints", "best.ckpt"))
    merged["seed"] = int(seed)
    if not paths:
        return merged
    merged["out"] = str(store_dir(config) / cellstore.cell_key(merged))
    return cellstore.fill_store(merged, store_dir(config))


def _fill(value: Any, placeholder: str, replacement: str) -> Any:
    if value == placeholder:
        return replacement
    if isinstance(value, dict):
        return {key: _fill(item, placeholder, replacement) for key, item in value.items()}
    if isinstance(value, list):
        return [_fill(item, placeholder, replacement) for item in value]
    return value


def link_view(view: Path, target: Path) -> None:
    """Point the per-config view ``view`` at the store folder ``target`` (a symbolic link; a real folder
    left by an older metakd is moved aside to ``<view>.pre-store``)."""
    target = target.absolute()
    if view.is_symlink():
        if Path(os.readlink(view)) == target:
            return
        view.unlink()
    elif view.exists():
        view.rename(view.with_name(view.name + ".pre-store"))
    view.parent.mkdir(parents=True, exist_ok=True)
    view.symlink_to(target, target_is_directory=True)


def read_result(config: dict[str, Any], seed: int, cell: str) -> dict[str, Any] | None:
    """The result of a cell: its committed result file (``results_store``), else the copy in its local
    store folder; None when the cell has not finished anywhere."""
    key = cell_key(config, seed, cell)
    result = cellstore.read_result_file(results_store(config), key)
    if result is None:
        local = store_dir(config) / key / RESULT_FILE
        result = json.loads(local.read_text(encoding="utf-8")) if local.is_file() else None
    return result


def cell_predictions(result: dict[str, Any] | None, test_set: str) -> list[dict[str, Any]] | None:
    """The per-example predictions of a result on ``test_set`` (rows ``example_id, domain, label, pred``)."""
    packed = ((result or {}).get("predictions") or {}).get(test_set)
    return None if packed is None else cellstore.unpack_predictions(packed, packed["domain_names"])


def prune_checkpoints(directory: Path, keep: str) -> None:
    """After a cell finished: ``all`` keeps its checkpoints, ``best`` only ``checkpoints/best.ckpt`` (what a
    student loads as teacher), ``none`` removes the folder (its numbers and predictions are saved)."""
    folder = directory / "checkpoints"
    if keep == "all" or not folder.is_dir():
        return
    if keep == "none":
        shutil.rmtree(folder)
        return
    for path in folder.iterdir():
        if path.name != "best.ckpt":
            path.unlink()
