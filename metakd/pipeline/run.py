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
) -> dict[str, int]:
    """Run every cell of every seed (or those ``kinds``/``patterns`` select) with a progress line per
    cell; returns counts per status.

    One cell after another in this process by default; on Ray (:mod:`.ray_runner`) with
    ``workers`` > 1 (a local instance running that many cells at a time) or a ``ray_address``."""
    cells = [cell for cell in plan_cells(config) if selected(cell, kinds, patterns)]
    jobs = [(seed, cell) for seed in config["seeds"] for cell in cells]
    progress = Progress(config, jobs, stream or sys.stdout, parallel=workers)
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
