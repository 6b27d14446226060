"""Running one cell: fit it, test it on every test set and record its result.

:func:`run_cell` runs a planned cell in its store folder (:mod:`.store`), skipping it when a result with its
key exists (whichever config made it) and first retraining a needed teacher whose committed result exists
but whose checkpoint is not here (:func:`ensure_local`, checked against the committed dev accuracy). The fit
resumes from ``last.ckpt`` after an interruption. Its result file holds the test metrics and per-example
predictions of every test set, the dev curve, the CPU seconds, the environment and the config without
machine paths (:mod:`.cellstore`). :func:`run_cell_and_attack` adds the robustness attack
(:mod:`.robustness`); it is what the sequential run (:mod:`.run`) and each Ray task (:mod:`.ray_runner`)
call for a cell.
"""

from __future__ import annotations

import json
import resource
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from metakd.pipeline import cellstore
from metakd.pipeline.invoke import run_cli
from metakd.pipeline.plan import Cell, planned_cell
from metakd.pipeline.robustness import run_cell_robustness
from metakd.pipeline.scarcity_report import SELECTION_KEY, selection_of
from metakd.pipeline.store import (
    RESULT_FILE,
    RETRAINED_FILE,
    cell_config,
    cell_dir,
    link_view,
    prune_checkpoints,
    read_result,
    results_store,
    store_dir,
    store_path,
)
from metakd.pipeline.writers import (
    DEV_CURVE_FILE,
    PREDICTIONS_FILE,
    TEST_METRICS_FILE,
    read_predictions,
    test_set_path,
)
from metakd.utils import write_json


def run_cell(
    config: dict[str, Any], seed: int, cell: Cell, in_process: bool = False
) -> tuple[str, float, str]:
    """Fit and test one cell in its store folder; returns (status, seconds, message), status
    done|skipped|failed|blocked. A cell whose key has a result (this or any other config's) is skipped."""
    directory = store_path(config, seed, cell)
    link_view(cell_dir(config, seed, cell.name), directory)
    if read_result(config, seed, cell.name) is not None:
        return "skipped", 0.0, ""
    for need in cell.needs:
        if read_result(config, seed, need) is None:
            return "blocked", 0.0, f"needs {need}"
    for need in cell.needs:  # a need finished elsewhere (a committed result) but not here: train it again
        problem = ensure_local(config, seed, planned_cell(config, need), in_process)
        if problem:
            return "failed", 0.0, problem
    return _run_in_store(config, seed, cell, directory, in_process)


def ensure_local(config: dict[str, Any], seed: int, cell: Cell, in_process: bool = False) -> str:
    """Make a finished cell's files that a later cell reads (a teacher's ``best.ckpt``, a search's
    ``architecture.json``) exist in the local store: when only its committed result exists here, train it
    again with the same config and seed, and check its dev accuracy (a search: its architecture) against the
    committed result. Returns "" or the reason the cell cannot be used."""
    directory = store_path(config, seed, cell)
    wanted = directory / ("architecture.json" if cell.kind == "search" else "checkpoints/best.ckpt")
    if wanted.is_file():
        return ""
    committed = read_result(config, seed, cell.name)
    status, _, message = _run_in_store(config, seed, cell, directory, in_process, record=False)
    if status != "done":
        return f"retraining {cell.name} (its checkpoint is not here) failed: {message}"
    retrained = json.loads((directory / RETRAINED_FILE).read_text(encoding="utf-8"))
    if cell.kind == "search":
        same = retrained.get("architecture") == committed.get("architecture")
        what = "architecture"
    else:
        ours, theirs = _best_dev(retrained), _best_dev(committed)
        same = ours is not None and theirs is not None and abs(ours - theirs) < 1e-6
        what = f"best dev accuracy {ours} here, {theirs} in the committed result"
    if not same:
        return (
            f"{cell.name} (seed {seed}) was trained again because its checkpoint is not here, and does not "
            f"match its committed result ({what}); see {directory / RETRAINED_FILE}"
        )
    return ""


def _best_dev(result: dict[str, Any] | None) -> float | None:
    end = ((result or {}).get("dev_curve") or {}).get("end") or {}
    return end.get("best_score")


def _run_in_store(
    config: dict[str, Any], seed: int, cell: Cell, directory: Path, in_process: bool, record: bool = True
) -> tuple[str, float, str]:
    """Fit and test ``cell`` in ``directory``; with ``record``, write its result file (committed store and a
    copy in ``directory``), else only ``retrained.json`` (a cell trained again for its checkpoint)."""
    full = cell_config(config, seed, cell)
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / "cell.yaml"
    config_path.write_text(yaml.safe_dump(full, sort_keys=False), encoding="utf-8")
    timeout = config.get("cell_timeout_s")
    start, cpu_start = time.monotonic(), _cpu_seconds(in_process)
    payload: dict[str, Any] = {"cell": cell.name, "kind": cell.kind, "seed": seed, "info": cell.info}
    if cell.kind == "search":
        if (
            run_cli(
                ["search", "--config", str(config_path)],
                directory / "search.log",
                in_process,
                timeout,
                label=f"{seed}/{cell.name}",
            )  # fmt: skip
            != 0
        ):
            return "failed", time.monotonic() - start, f"search failed, see {directory / 'search.log'}"
        payload["metrics"] = {}
        payload["architecture"] = json.loads((directory / "architecture.json").read_text(encoding="utf-8"))
    else:
        failed = _fit_and_test(
            config, f"{seed}/{cell.name}", directory, config_path, in_process, timeout, payload
        )
        if failed:
            return "failed", time.monotonic() - start, failed
    seconds = time.monotonic() - start
    payload["seconds"] = round(seconds, 1)
    # user + system CPU time of the fit and tests (this call's part only when `cpu_incomplete`: resumed)
    payload["cpu_seconds"] = round(_cpu_seconds(in_process) - cpu_start, 1)
    payload["environment"] = cellstore.package_versions()
    payload["config"] = cellstore.identity(full, store_dir(config))
    payload["requested_by"] = {"config": config["name"], "cell": cell.name}
    if not record:
        write_json(directory / RETRAINED_FILE, {k: v for k, v in payload.items() if k != "predictions"})
        return "done", seconds, ""
    key = directory.name
    path = cellstore.write_result_file(results_store(config), key, payload)
    shutil.copyfile(path, directory / RESULT_FILE)
    if cell.kind != "search":
        prune_checkpoints(directory, config["keep_checkpoints"].get(cell.kind, "all"))
    return "done", seconds, ""


def _fit_and_test(
    config: dict[str, Any],
    label: str,
    directory: Path,
    config_path: Path,
    in_process: bool,
    timeout: float | None,
    payload: dict[str, Any],
) -> str:
    """Fit (resuming from ``last.ckpt``), then test the best checkpoint on every test set; fills
    ``payload`` (metrics per test set, predictions, dev curve). Returns "" or why it failed."""
    fit_marker = directory / "fit.done"
    if fit_marker.is_file():  # fitted by an earlier call: its CPU time is not in this one's measurement
        payload["cpu_incomplete"] = True
    else:
        args = ["fit", "--config", str(config_path)]
        if (directory / "checkpoints" / "last.ckpt").is_file():
            args += ["--ckpt_path", "last"]  # an interrupted fit continues
            payload["cpu_incomplete"] = True
        if run_cli(args, directory / "fit.log", in_process, timeout, label=label) != 0:
            return f"fit failed, see {directory / 'fit.log'}"
        fit_marker.write_text("ok\n", encoding="utf-8")
    by_set: dict[str, Any] = {}
    predictions: dict[str, Any] = {}
    for test_set in config["test_sets"]:
        metrics_path = test_set_path(directory / TEST_METRICS_FILE, test_set)
        metrics_path.unlink(missing_ok=True)
        args = ["test", "--config", str(config_path), "--ckpt_path", "best"]
        if test_set != "test":
            args += ["--data.init_args.test_set", test_set]
        log_path = test_set_path(directory / "test.log", test_set)
        if (
            run_cli(args, log_path, in_process, timeout, label=f"{label} {test_set}") != 0
            or not metrics_path.is_file()
        ):
            return f"test on {test_set} failed, see {log_path}"
        tested = json.loads(metrics_path.read_text(encoding="utf-8"))
        if not tested["metrics"]:
            return f"the test run on {test_set} logged no test metrics (empty test set?), see {directory}"
        by_set[test_set] = tested["metrics"]
        rows = read_predictions(test_set_path(directory / PREDICTIONS_FILE, test_set))
        if rows:
            names = list(dict.fromkeys([*config["domains"], *(str(r["domain"]) for r in rows)]))
            predictions[test_set] = {"domain_names": names, **cellstore.pack_predictions(rows, names)}
    curve_path = directory / DEV_CURVE_FILE
    payload["metrics"] = by_set.get("test", by_set[config["test_sets"][0]])
    payload["test_sets"] = by_set
    curve = json.loads(curve_path.read_text(encoding="utf-8")) if curve_path.is_file() else None
    payload["dev_curve"] = cellstore.store_relative(curve, store_dir(config))
    payload["predictions"] = predictions
    if (selection := selection_of(directory)) is not None:  # L2A's selection probabilities
        payload[SELECTION_KEY] = selection
    return ""


def _cpu_seconds(in_process: bool) -> float:
    """User + system CPU seconds of this process (in-process cells) or of its finished children."""
    usage = resource.getrusage(resource.RUSAGE_SELF if in_process else resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_cell_and_attack(
    config: dict[str, Any], seed: int, cell: Cell, in_process: bool = False
) -> tuple[str, float, str]:
    """:func:`run_cell`, then, with a ``robustness:`` block, the attack of the finished cell (a failed
    attack fails the cell). What the sequential run and each Ray task run."""
    status, seconds, message = run_cell(config, seed, cell, in_process=in_process)
    if status in ("done", "skipped") and config.get("robustness"):
        failed = run_cell_robustness(config, seed, cell, in_process)
        if failed:
            status, message = "failed", failed
    return status, seconds, message
