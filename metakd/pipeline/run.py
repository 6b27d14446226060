"""Running the cells of every seed: one after another in this process, or on Ray (:mod:`.ray_runner`).

Both ways run each cell with :func:`.runner.run_cell_and_attack` and report it to the same
:class:`.progress.Progress`; this module chooses between them and is the only one that knows both (the Ray
runner does not import it back).
"""

from __future__ import annotations

import sys
import time
from typing import Any

from metakd.interrupt import Interrupted
from metakd.pipeline.ledger import Entry, cpu_plan, within_budget
from metakd.pipeline.plan import Cell, plan_cells, selected
from metakd.pipeline.progress import Progress
from metakd.pipeline.ray_runner import run_on_ray
from metakd.pipeline.runner import run_cell_and_attack


def run_all(
    config: dict[str, Any],
    in_process: bool = False,
    stream: Any = None,
    workers: int = 1,
    ray_address: str | None = None,
    kinds: list[str] | None = None,
    patterns: list[str] | None = None,
    max_cpu_minutes: float | None = None,
) -> dict[str, int]:
    """Run every cell of every seed (or those ``kinds``/``patterns`` select), in the order of the config's
    ``priorities``, with a progress line per cell; returns counts per status.

    One cell after another in this process by default; on Ray (:mod:`.ray_runner`) with
    ``workers`` > 1 (a local instance running that many cells at a time) or a ``ray_address``. With
    ``max_cpu_minutes``, only the cells up to the first one that the cost model says would take the run past
    that many CPU minutes (:func:`.ledger.within_budget`); the rest is left, and said so (``left`` counts
    the cells to run that it left)."""
    stream = stream or sys.stdout
    cells = [cell for cell in plan_cells(config) if selected(cell, kinds, patterns)]
    entries, left = cpu_plan(config, cells), []
    if max_cpu_minutes is not None:
        entries, left = within_budget(entries, max_cpu_minutes)
        print(budget_note(entries, left, max_cpu_minutes), file=stream, flush=True)
    jobs = [(entry.seed, entry.cell) for entry in entries]
    estimates = {(entry.seed, entry.cell.name): entry.cost for entry in entries}
    progress = Progress(config, jobs, stream, parallel=workers, estimates=estimates)
    counts = _run_jobs(config, jobs, progress, in_process, workers, ray_address)
    if max_cpu_minutes is not None:
        counts["left"] = sum(entry.state == "to run" for entry in left)
        if counts["left"]:
            print(budget_note(entries, left, max_cpu_minutes, finished=True), file=stream, flush=True)
    return counts


def budget_note(entries: list[Entry], left: list[Entry], minutes: float, finished: bool = False) -> str:
    """What ``--max-cpu-minutes`` runs and what it leaves, with their estimated CPU minutes."""
    running = [e for e in entries if e.state == "to run"]
    waiting = [e for e in left if e.state == "to run"]
    spend, rest = sum(e.cost for e in running) / 60, sum(e.cost for e in waiting) / 60
    if finished:
        first = waiting[0]
        return (
            f"stopped before the CPU budget of {minutes:g} minutes: left {len(waiting)} cells to run "
            f"({rest:.1f} CPU-min estimated), from priority {first.priority}, seed {first.seed} "
            f"{first.cell.name} ({first.cost / 60:.1f} CPU-min); run again (with a budget) to go on"
        )
    return (
        f"CPU budget {minutes:g} minutes: running {len(running)} cells to run ({spend:.1f} CPU-min "
        f"estimated); leaving {len(waiting)} ({rest:.1f} CPU-min estimated)"
    )


def _run_jobs(
    config: dict[str, Any],
    jobs: list[tuple[int, Cell]],
    progress: Progress,
    in_process: bool,
    workers: int,
    ray_address: str | None,
) -> dict[str, int]:
    """The jobs one after another, or on Ray; returns the counts per status."""
    if workers > 1 or ray_address:
        try:
            run_on_ray(
                config,
                jobs,
                progress.report,
                in_process=in_process,
                workers=workers if workers > 1 or not ray_address else None,
                address=ray_address,
            )
        except Interrupted as stop:  # run_on_ray reported the cells it stopped
            progress.stopped(stop)
            raise
        return progress.counts
    in_flight: tuple[int, Cell, float] | None = None
    try:
        for seed, cell in jobs:
            progress.running(seed, cell)
            in_flight = (seed, cell, time.monotonic())
            status, seconds, message = run_cell_and_attack(config, seed, cell, in_process=in_process)
            in_flight = None
            progress.report(seed, cell, status, seconds, message)
    except Interrupted as stop:  # the cell in flight keeps its checkpoints; no other cell starts
        if in_flight is not None:
            seed, cell, start = in_flight
            progress.report(seed, cell, "interrupted", time.monotonic() - start, "")
        progress.stopped(stop)
        raise
    return progress.counts
