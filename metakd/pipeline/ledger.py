"""The CPU plan (``pipeline --plan``, ``--max-cpu-minutes``): every cell of every seed with its state, its
priority and its estimated CPU minutes, and the totals.

A cell's state:

- **done**: a result with its key exists and was made for this config (``requested_by`` in its result file);
- **reusable**: a result with its key exists, made for another config or study: it is not run again;
- **to run**: no result yet. When a to-run cell needs a finished cell whose checkpoint (a search: its
  architecture) is not in the local store, that cell is trained again first (:func:`.runner.ensure_local`):
  the plan says so on its line, and adds its cost to the to-run cell that triggers it.

Estimates come from :class:`.costs.CostModel`, fitted to the CPU seconds measured by every finished cell in
``results_store`` (every config's). :func:`within_budget` keeps the to-run cells, in priority order, whose
estimates add up to at most the budget: the run stops before the first cell that would pass it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from metakd.pipeline import cellstore
from metakd.pipeline.costs import CostModel
from metakd.pipeline.plan import Cell, ordered_jobs, planned_cell, priorities
from metakd.pipeline.store import cell_identity, read_result, results_store, store_path

STATES = ("done", "reusable", "to run")


@dataclass
class Entry:
    """One cell of one seed in the CPU plan."""

    seed: int
    cell: Cell
    priority: int
    state: str  # one of STATES
    estimate: float  # CPU seconds of the cell alone, from the cost model
    measured: float | None = None  # CPU seconds in its result file
    made_for: str | None = None  # the config its result was made for (reusable: another one)
    retrains: list[str] = field(default_factory=list)  # finished cells it trains again first (to run)
    retrain_cost: float = 0.0  # their estimated CPU seconds
    retrained_for: list[str] = field(default_factory=list)  # (a finished cell) the to-run cells needing it
    source: str = "family"  # what the estimate comes from: its family's fit, its kind's or built-in rates

    @property
    def cost(self) -> float:
        """The CPU seconds running this cell will spend (0 for a finished one)."""
        return self.estimate + self.retrain_cost if self.state == "to run" else 0.0


def cost_model(config: dict[str, Any]) -> CostModel:
    """The cost model fitted to every result file in ``results_store``."""
    return CostModel(cellstore.result_files(results_store(config)), len(config["domains"]))


def _locally_usable(config: dict[str, Any], seed: int, cell: Cell) -> bool:
    directory = store_path(config, seed, cell)
    return (directory / ("architecture.json" if cell.kind == "search" else "checkpoints/best.ckpt")).is_file()


def _estimate(config: dict[str, Any], model: CostModel, seed: int, cell: Cell) -> tuple[float, str]:
    """The estimated CPU seconds of a cell and where the estimate comes from."""
    resolved = cell_identity(config, seed, cell)
    fit = model.fit_for(cell.kind, resolved)
    test_sets = [] if cell.kind == "search" else list(config["test_sets"])
    return fit.estimate(model.units(cell.kind, resolved, test_sets)), fit.source


def cpu_plan(config: dict[str, Any], cells: list[Cell], model: CostModel | None = None) -> list[Entry]:
    """The entries of every seed's ``cells`` in run order (:func:`.plan.ordered_jobs`)."""
    model = model or cost_model(config)
    jobs = ordered_jobs(config, cells)
    rank = priorities(config, jobs)
    entries: list[Entry] = []
    by_job: dict[tuple[int, str], Entry] = {}
    for seed, cell in jobs:
        result = read_result(config, seed, cell.name)
        estimate, source = _estimate(config, model, seed, cell)
        entry = Entry(seed, cell, rank[(seed, cell.name)], "to run", estimate, source=source)
        if result is not None:
            entry.made_for = (result.get("requested_by") or {}).get("config")
            entry.state = "done" if entry.made_for == config["name"] else "reusable"
            entry.measured = result.get("cpu_seconds")
        entries.append(entry)
        by_job[(seed, cell.name)] = entry
    charged: set[tuple[int, str]] = set()
    for entry in entries:  # a to-run cell that needs a finished cell missing here trains it again first
        if entry.state != "to run":
            continue
        for need in entry.cell.needs:
            seed = entry.seed
            needed = planned_cell(config, need)
            if read_result(config, seed, need) is None or _locally_usable(config, seed, needed):
                continue
            done = by_job.get((seed, need))
            if done is not None:
                done.retrained_for.append(entry.cell.name)
            if (seed, need) not in charged:
                charged.add((seed, need))
                entry.retrains.append(need)
                entry.retrain_cost += _estimate(config, model, seed, needed)[0]
    return entries


def within_budget(entries: list[Entry], minutes: float) -> tuple[list[Entry], list[Entry]]:
    """``(run, left)``: the entries up to the first to-run cell whose estimate would take the total past
    ``minutes`` CPU minutes, and the rest (in run order)."""
    spent = 0.0
    for index, entry in enumerate(entries):
        if spent + entry.cost > 60 * minutes:
            return entries[:index], entries[index:]
        spent += entry.cost
    return entries, []


def minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f}"


def _names(names: list[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def describe(entry: Entry) -> str:
    """The state column of a plan line, with what it depends on."""
    text = entry.state
    if entry.state == "reusable":
        text = f"reusable (made for {entry.made_for or 'another config'})"
    if entry.retrained_for:
        text += f"; its checkpoint is not here: trained again for {_names(entry.retrained_for)}"
    if entry.retrains:
        text += f", after training {_names(entry.retrains)} again (+{minutes(entry.retrain_cost)})"
    return text


def render_plan(config: dict[str, Any], entries: list[Entry], model: CostModel) -> list[str]:
    """The lines of ``--plan``: one per cell and seed (priority, seed, kind, name, estimated and measured CPU
    minutes, state, needs), then the totals and how the estimates were made."""
    lines = [
        f"plan of {config['name']}: {len(entries)} cells over seeds {config['seeds']}; CPU minutes estimated "
        "by the cost model (est) and measured (cpu)",
    ]
    width = max([len(e.cell.name) for e in entries] + [4])
    lines.append(f"{'prio':>4} {'seed':>4} {'kind':<8} {'cell':<{width}} {'est':>7} {'cpu':>7}  state")
    for e in entries:
        needs = f" | needs {', '.join(e.cell.needs)}" if e.cell.needs else ""
        lines.append(
            f"{e.priority:>4} {e.seed:>4} {e.cell.kind:<8} {e.cell.name:<{width}} {minutes(e.estimate):>7} "
            f"{minutes(e.measured):>7}  {describe(e)}{needs}"
        )
    return lines + totals(entries, model)


def totals(entries: list[Entry], model: CostModel) -> list[str]:
    """Done, reusable and to-run counts and CPU minutes, the to-run part per priority, and the cost model's
    error on the finished cells."""
    done = [e for e in entries if e.state == "done"]
    reusable = [e for e in entries if e.state == "reusable"]
    left = [e for e in entries if e.state == "to run"]
    retrained = sum(len(e.retrains) for e in left)
    lines = [
        f"done: {len(done)} cells, {minutes(sum(e.measured or 0 for e in done))} CPU-min measured "
        f"({minutes(sum(e.estimate for e in done))} estimated)",
        f"reusable: {len(reusable)} cells (made for other configs: not run again)",
        f"to run: {len(left)} cells, {minutes(sum(e.cost for e in left))} CPU-min estimated"
        + (f" (with {retrained} finished cells trained again for their checkpoints)" if retrained else ""),
    ]
    for priority in sorted({e.priority for e in entries}):
        mine = [e for e in left if e.priority == priority]
        lines.append(
            f"  priority {priority}: {len(mine)} cells to run, {minutes(sum(e.cost for e in mine))} CPU-min"
        )
    error, unseen = model.mean_error(), model.mean_error(leave_one_out=True)
    sources = {source: sum(e.source == source for e in entries) for source in ("family", "kind", "default")}
    lines.append(
        f"cost model: {len(model.families)} families fitted on {len(model.finished)} finished cells"
        + (
            f" (estimates within {100 * error:.0f}% of the measured CPU time on average; each estimated "
            f"from the others: {100 * unseen:.0f}%)"
            if error is not None and unseen is not None
            else ""
        )
        + "; cells estimated from their family's fit / their kind's / built-in rates: "
        + " / ".join(str(count) for count in sources.values())
    )
    return lines
