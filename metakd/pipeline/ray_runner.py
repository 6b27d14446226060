"""Pipeline cells fanned out over Ray (``python -m metakd pipeline --workers N`` or ``--ray-address``).

The cells of a pipeline are independent models except that a student needs its teacher's checkpoint.
:func:`run_on_ray` runs each cell with :func:`.runner.run_cell_and_attack` (the same function as the
sequential run, so reuse and resume are unchanged: a cell with a matching ``result.json`` is skipped, an
interrupted fit resumes from ``last.ckpt``) as a Ray task, on a local Ray instance (``workers`` cells at
a time) or on the cluster at ``ray_address``:

- a cell is submitted once every cell it needs (same seed) has finished; a student whose teacher
  failed is reported ``blocked`` by ``run_cell``, as in the sequential run;
- each task asks for its resources (:func:`cell_resources`): ``cell_cpus`` CPUs (pipeline config,
  default 1), and ``trainer.devices`` GPUs when the cell's ``trainer.accelerator`` is ``gpu``/``cuda``;
- a cell that fails (or whose worker dies) is run once more; a second failure is recorded in the
  cell's ``failed.json`` (attempts and messages) and reported like a failed sequential cell;
- a stop (SIGINT/SIGTERM of the driver: :mod:`metakd.interrupt`) submits nothing more, cancels the
  running tasks (Ray raises the stop in each: the cell stops as in a sequential run and keeps its
  checkpoints), waits up to ``STOP_GRACE_S`` for them, kills the rest, reports them ``interrupted``
  and shuts Ray down.

On a cluster every node needs metakd installed and the pipeline's ``runs_dir`` and data at the same
paths (a shared filesystem): a student reads its teacher's checkpoint and the driver reads
``result.json`` from there. Tasks run in the driver's working directory, so relative paths mean the
same as in the sequential run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from metakd.interrupt import STOP_GRACE_S, Interrupted, deferred, reinstall, stop_signals
from metakd.pipeline.config import PipelineError
from metakd.pipeline.plan import Cell
from metakd.pipeline.runner import run_cell_and_attack
from metakd.pipeline.store import cell_config, cell_dir
from metakd.utils import write_json

FAILURE_FILE = "failed.json"
ATTEMPTS = 2
"""A failed cell is run once more before its failure is recorded."""
OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "WANDB_MODE", "METAKD_CACHE")
"""Environment variables passed on to the workers of a remote cluster (a local instance inherits them)."""

Report = Callable[[int, Cell, str, float, str], None]


def cell_resources(config: dict[str, Any], seed: int, cell: Cell) -> dict[str, float]:
    """Ray resources of one cell: ``cell_cpus`` CPUs, and the trainer's devices as GPUs on a GPU run."""
    cpus = config.get("cell_cpus", 1)
    if not isinstance(cpus, (int, float)) or isinstance(cpus, bool) or cpus <= 0:
        raise PipelineError(f"`cell_cpus` must be a positive number of CPUs per cell, got {cpus!r}")
    trainer = cell_config(config, seed, cell).get("trainer") or {}
    gpus = 0
    if str(trainer.get("accelerator", "cpu")).lower() in ("gpu", "cuda"):
        devices = trainer.get("devices", 1)
        if isinstance(devices, int) and devices > 0:
            gpus = devices
        elif isinstance(devices, (list, tuple)):
            gpus = len(devices)
        else:
            raise PipelineError(
                f"cell {cell.name}: on Ray a GPU cell needs trainer.devices as a count or a list of ids, "
                f"got {devices!r}"
            )
    return {"num_cpus": float(cpus), "num_gpus": float(gpus)}


def _run_cell_task(cwd: str, config: dict[str, Any], seed: int, cell: Cell, in_process: bool) -> tuple:
    """The Ray task: :func:`metakd.pipeline.runner.run_cell_and_attack` in the driver's working directory.

    ``ray.cancel`` (without force) raises the stop in the task through the SIGINT handler installed here:
    the cell stops as in a sequential run (a subprocess fit gets the signal) and reports ``interrupted``.
    """
    os.chdir(cwd)
    start = time.monotonic()
    with stop_signals():
        try:
            return run_cell_and_attack(config, seed, cell, in_process=in_process)
        except Interrupted:
            return "interrupted", time.monotonic() - start, ""


def _init_ray(workers: int | None, address: str | None, config: dict[str, Any]) -> Any:
    try:
        import ray
    except ImportError as err:
        raise PipelineError(
            "--workers > 1 and --ray-address run the cells on Ray, which is not installed: "
            "pip install 'metakd[ray]'"
        ) from err
    if ray.is_initialized():
        return ray, False
    if address:
        env = {key: os.environ[key] for key in OFFLINE_ENV if key in os.environ}
        ray.init(address=address, runtime_env={"env_vars": env} if env else None, log_to_driver=False)
    else:
        cpus = float(config.get("cell_cpus", 1))
        ray.init(num_cpus=max(1, round(workers * cpus)), include_dashboard=False, log_to_driver=False)
    reinstall()  # ray.init replaces the SIGTERM handler with its own (sys.exit)
    return ray, True


def run_on_ray(
    config: dict[str, Any],
    jobs: list[tuple[int, Cell]],
    report: Report,
    in_process: bool = False,
    workers: int | None = None,
    address: str | None = None,
) -> None:
    """Run ``jobs`` (seed, cell) as Ray tasks, at most ``workers`` at a time (None: as many as the
    cluster's resources allow), students after their teachers; ``report`` gets each final status."""
    for seed, cell in jobs:
        cell_resources(config, seed, cell)  # a bad setting fails before Ray starts
    ray, started = _init_ray(workers, address, config)
    task = ray.remote(max_retries=0)(_run_cell_task)
    cwd = os.getcwd()
    pending = list(jobs)
    planned = {(seed, cell.name) for seed, cell in jobs}  # a need outside the selection: run_cell checks it
    finished: set[tuple[int, str]] = set()
    attempts: dict[tuple[int, str], list[str]] = {}
    running: dict[Any, tuple[int, Cell]] = {}

    def submit(seed: int, cell: Cell) -> None:
        resources = cell_resources(config, seed, cell)
        ref = task.options(**resources).remote(cwd, config, seed, cell, in_process)
        running[ref] = (seed, cell)

    try:
        while pending or running:
            for seed, cell in list(pending):
                if workers is not None and len(running) >= workers:
                    break
                if all((seed, need) in finished or (seed, need) not in planned for need in cell.needs):
                    pending.remove((seed, cell))
                    submit(seed, cell)
            if not running:
                raise PipelineError(  # cannot happen with plan_cells (teachers first), but never hang
                    f"cells {[c.name for _, c in pending]} need cells that are not in the plan"
                )
            ready: list[Any] = []
            while not ready:
                with deferred():  # a stop raised inside ray.wait's C code turns into a SystemError
                    ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
            ref = ready[0]
            try:
                with deferred():
                    status, seconds, message = ray.get(ref)
            except Exception as err:  # noqa: BLE001 - a crashed worker is a failed attempt
                status, seconds, message = "failed", 0.0, f"{type(err).__name__}: {err}"
            if status == "interrupted":  # stopped in its worker, not by this driver (e.g. a drained node)
                status, message = "failed", "interrupted in its worker (SIGINT/SIGTERM)"
            seed, cell = running.pop(ref)
            key = (seed, cell.name)
            if status == "failed":
                attempts.setdefault(key, []).append(message)
                if len(attempts[key]) < ATTEMPTS:
                    submit(seed, cell)
                    continue
                write_json(
                    cell_dir(config, seed, cell.name) / FAILURE_FILE,
                    {
                        "cell": cell.name,
                        "seed": seed,
                        "attempts": len(attempts[key]),
                        "messages": attempts[key],
                    },
                )
                message = f"after {len(attempts[key])} attempts: {message}"
            elif status == "done":
                Path(cell_dir(config, seed, cell.name) / FAILURE_FILE).unlink(missing_ok=True)
            finished.add(key)
            report(seed, cell, status, seconds, message)
    except Interrupted:
        _stop_tasks(ray, running, report)
        raise
    finally:
        for ref in running:
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()


def _stop_tasks(ray: Any, running: dict[Any, tuple[int, Cell]], report: Report) -> None:
    """Cancel the running tasks (each stops its cell), wait up to STOP_GRACE_S, kill those still running,
    and report each cell with the status its task returned (``interrupted`` unless it had finished)."""
    refs = list(running)
    # (the stop was received: a signal now is the second, which exits at once, so nothing is raised here)
    for ref in refs:
        ray.cancel(ref)
    done, _ = ray.wait(refs, num_returns=len(refs), timeout=STOP_GRACE_S) if refs else ([], [])
    for ref in refs:
        seed, cell = running.pop(ref)
        status, seconds, message = "interrupted", 0.0, ""
        if ref in done:
            try:
                status, seconds, message = ray.get(ref, timeout=1)
            except Exception:  # noqa: BLE001 - cancelled before it could return
                pass
        else:
            ray.cancel(ref, force=True)
        if status == "failed":  # (a normal run retries a failure: here it is only stopped)
            status, message = "interrupted", ""
        report(seed, cell, status, seconds, message)
