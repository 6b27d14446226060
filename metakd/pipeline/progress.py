"""The run's progress on its terminal: a line per finished cell (status, seconds, elapsed time, ETA), the
counts per status, and what a stop left behind (which cell was interrupted and how the next call resumes it).

The run's ETA is the estimated CPU seconds of the cells still to run (the CPU plan's cost model:
:mod:`.ledger`) divided by the cores the run uses: the CPU seconds per wall-clock second of the cells this run
has finished (times the cells run at once), before the first one the machine's cores (one cell at a time) or
``workers x cell_cpus`` (on Ray).

The estimates learn as the run goes: once a cell finishes, the cells still to run of its row (a student row
across domains; a teacher row across seeds) are estimated at the measured / estimated ratio of that row's
finished cells, and the other cells of its kind at that of the kind's (a fresh machine's first run starts from
built-in rates that may be far off for a small student).

The progress of each model inside its cell (steps done of total, rate) is its command's own progress bar
(see :mod:`.invoke`).
"""

from __future__ import annotations

import os
import time
from typing import Any

from metakd.interrupt import Interrupted
from metakd.pipeline.formats import format_seconds
from metakd.pipeline.plan import Cell
from metakd.pipeline.store import RESULT_FILE, read_result, store_path


class Progress:
    """One line per finished cell (status, seconds, elapsed, ETA) and the counts per status."""

    def __init__(
        self,
        config: dict[str, Any],
        jobs: list[tuple[int, Cell]],
        stream: Any,
        parallel: int = 1,
        estimates: dict[tuple[int, str], float] | None = None,
    ) -> None:
        self.config, self.jobs, self.stream, self.parallel = config, jobs, stream, max(1, parallel)
        self.estimates = estimates or {}  # estimated CPU seconds of each job still to run
        self.counts = {"done": 0, "skipped": 0, "failed": 0, "blocked": 0}
        self.ratios: dict[
            str, list[float]
        ] = {}  # measured / estimated CPU of finished cells, by row and kind
        self.cpu_and_wall = [0.0, 0.0]  # of the cells this run finished
        self.finished: set[tuple[int, str]] = set()
        self.interrupted: list[tuple[int, Cell]] = []
        self.started = time.monotonic()
        self.width = len(str(len(jobs)))

    def running(self, seed: int, cell: Cell) -> None:
        """The running cell on a terminal, overwritten by its result line."""
        if hasattr(self.stream, "isatty") and self.stream.isatty():
            print(
                f"[{len(self.finished) + 1:{self.width}d}/{len(self.jobs)}] seed {seed} {cell.name:<36} "
                "running...",
                end="\r",
                file=self.stream,
                flush=True,
            )

    def report(self, seed: int, cell: Cell, status: str, seconds: float, message: str) -> None:
        if status == "interrupted":
            self.interrupted.append((seed, cell))
            message = message or resume_note(self.config, seed, cell)
        self.counts[status] = self.counts.get(status, 0) + 1
        if status == "done":
            result = read_result(self.config, seed, cell.name) or {}
            if result.get("cpu_seconds") is not None and seconds > 0:
                self.cpu_and_wall[0] += float(result["cpu_seconds"])
                self.cpu_and_wall[1] += seconds
                estimate = self.estimates.get((seed, cell.name))
                if estimate and not result.get("cpu_incomplete"):
                    for group in (_row(cell), cell.kind):
                        self.ratios.setdefault(group, []).append(float(result["cpu_seconds"]) / estimate)
        self.finished.add((seed, cell.name))
        left = sum(
            self.estimates.get((s, c.name), 0.0) * self.correction(c)
            for s, c in self.jobs
            if (s, c.name) not in self.finished and read_result(self.config, s, c.name) is None
        )
        elapsed, eta = time.monotonic() - self.started, format_seconds(left / self.cores())
        line = (
            f"[{len(self.finished):{self.width}d}/{len(self.jobs)}] seed {seed} {cell.name:<36} {status:<7} "
            f"{seconds:7.1f}s | elapsed {format_seconds(elapsed)} | ETA {eta} ({left / 60:.1f} CPU-min left)"
        )
        if message:
            line += f" | {message}"
        print(line, file=self.stream, flush=True)

    def correction(self, cell: Cell) -> float:
        """The factor on a cell's estimate: the mean measured / estimated ratio of its row's finished cells,
        else of its kind's, else 1."""
        ratios = self.ratios.get(_row(cell)) or self.ratios.get(cell.kind)
        return sum(ratios) / len(ratios) if ratios else 1.0

    def cores(self) -> float:
        """The cores the run keeps busy (see the module docstring)."""
        cpu, wall = self.cpu_and_wall
        if wall > 0 and cpu > 0:
            return self.parallel * cpu / wall
        if self.parallel > 1:
            return float(self.parallel * self.config.get("cell_cpus", 1))
        return float(os.cpu_count() or 1)

    def stopped(self, stop: Interrupted) -> Interrupted:
        """``stop`` with what finished and what was interrupted (its :attr:`Interrupted.detail`)."""
        finished = {k: v for k, v in self.counts.items() if v and k != "interrupted"}
        parts = [
            f"{len(self.finished) - len(self.interrupted)} of {len(self.jobs)} cells finished"
            + (" (" + ", ".join(f"{k} {v}" for k, v in finished.items()) + ")" if finished else "")
        ]
        parts += [
            f"seed {seed} {cell.name} interrupted ({resume_note(self.config, seed, cell)})"
            for seed, cell in self.interrupted
        ]
        parts.append(f"{len(self.jobs) - len(self.finished)} not started")
        stop.detail = ", ".join(parts)
        return stop


def _row(cell: Cell) -> str:
    """A cell's row: its name without the domain (students), its name (teachers: one cell a seed)."""
    return cell.name.rsplit("/", 1)[0] if cell.kind == "student" else cell.name


def resume_note(config: dict[str, Any], seed: int, cell: Cell) -> str:
    """What the next call does with an interrupted cell: resume its fit from ``last.ckpt``, run only its
    test, or start it over."""
    directory = store_path(config, seed, cell)
    if (directory / RESULT_FILE).is_file():
        return "it had finished: the next call reuses it"
    if cell.kind == "search":
        return "a search keeps no checkpoint: it starts over"
    if (directory / "fit.done").is_file():
        return "its fit is done: the next call runs its test"
    last = directory / "checkpoints" / "last.ckpt"
    if last.is_file():
        return f"the next call resumes it from {last}"
    return "no checkpoint yet: the next call starts it over"
