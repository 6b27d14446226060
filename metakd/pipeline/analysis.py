"""The benchmark report's analysis beyond the accuracy table: paired bootstrap intervals of Meta-KD (the
``compare_to`` row) minus every other student row, of each ``twins`` row minus its no-KD twin and of each
``pairs`` row minus the row it names, the smallest
difference the study can detect, CPU minutes per row, the teachers' dev curves, and warnings about teachers
worse than the student they should improve.

Inputs are the report's :class:`~metakd.pipeline.tables.Row` list, the cells' results keyed by
``(seed, cell)`` and a function giving each cell's per-example predictions on the report's test set (rows
``example_id, domain, label, pred``; from the cells' result files, :mod:`.cellstore`). The Markdown of all of
it is :mod:`.markdown`'s.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from typing import Any

from metakd.stats import mean_std, pair_predictions, paired_bootstrap

RESAMPLES = 10000
BOOTSTRAP_SEED = 0


RowsOf = Callable[[int, str], "list[dict[str, Any]] | None"]
"""A cell's per-example predictions by ``(seed, cell)``, None when it has none."""
Finished = Callable[[int, str], bool]
"""Whether a cell has a result for a seed (it ran and finished), by ``(seed, cell)``."""


class Predictions:
    """Per-example correctness of the cells, read once per (seed, cell). ``finished`` tells a cell that has
    no result for a seed (never run) from a finished one without predictions; without it every cell counts
    as finished."""

    def __init__(self, rows_of: RowsOf, finished: Finished | None = None) -> None:
        self.rows_of = rows_of
        self.finished = finished
        self._rows: dict[tuple[int, str], list[dict[str, Any]] | None] = {}
        self._correct: dict[tuple[tuple, tuple, tuple], tuple[dict, list[str]]] = {}

    def rows(self, seed: int, cell: str) -> list[dict[str, Any]] | None:
        if (seed, cell) not in self._rows:
            self._rows[(seed, cell)] = self.rows_of(seed, cell)
        return self._rows[(seed, cell)]

    def correct(self, row: Any, seeds: Iterable[int], domains: Iterable[str]) -> tuple[dict, list[str]]:
        """``{(domain, seed, example_id): pred == label}`` over the row's cells, and the cells without
        predictions (``seed/cell``); computed once per (cells, seeds, domains)."""
        key = (tuple(row.cells.items()), tuple(seeds), tuple(domains))
        if key not in self._correct:
            self._correct[key] = self._correctness(row, key[1], key[2])
        return self._correct[key]

    def _correctness(self, row: Any, seeds: Iterable[int], domains: Iterable[str]) -> tuple[dict, list[str]]:
        out: dict[tuple[str, int, int], bool] = {}
        missing: list[str] = []
        for seed in seeds:
            for domain in domains:
                rows = self.rows(seed, row.cells[domain])
                if rows is None:
                    missing.append(f"{seed}/{row.cells[domain]}")
                    continue
                for r in rows:
                    if r["domain"] == domain:
                        out[(domain, seed, int(r["example_id"]))] = r["pred"] == r["label"]
        return out, sorted(set(missing))

    def left_out(self, *missing: Iterable[str]) -> dict[str, list[str]]:
        """A comparison's keys for the cells (``seed/cell``, as :meth:`correct` names them) left out of its
        intervals: ``missing_predictions``, the finished cells without per-example predictions, and
        ``not_run``, the cells without a result for that seed; ``not_run`` only when there are any (the
        summary of a study whose cells all ran keeps the keys it had before)."""
        cells = sorted(set().union(*missing))
        not_run = [c for c in cells if self.finished is not None and not self.finished(*_seed_and_cell(c))]
        out = {"missing_predictions": [c for c in cells if c not in not_run]}
        return {**out, "not_run": not_run} if not_run else out


def _seed_and_cell(name: str) -> tuple[int, str]:
    """``1/student/meta/books`` -> ``(1, "student/meta/books")``."""
    seed, _, cell = name.partition("/")
    return int(seed), cell


def compare(
    reference: dict[tuple[str, int, int], bool],
    other: dict[tuple[str, int, int], bool],
    domains: list[str],
    resamples: int = RESAMPLES,
) -> dict[str, Any]:
    """Paired bootstrap intervals of ``acc(reference) - acc(other)``: over all domains (strata = (domain,
    seed)) and per domain (strata = seeds). None where the two share no example."""
    out: dict[str, Any] = {}
    for scope in [None, *domains]:
        a = {k: v for k, v in reference.items() if scope is None or k[0] == scope}
        b = {k: v for k, v in other.items() if scope is None or k[0] == scope}
        if not set(a) & set(b):
            out[scope or "average"] = None
            continue
        correct_a, correct_b, keys = pair_predictions(a, b)
        interval = paired_bootstrap(
            correct_a, correct_b, [k[:2] for k in keys], resamples=resamples, seed=BOOTSTRAP_SEED
        )
        out[scope or "average"] = interval.as_dict()
    return out


def named_rows(name: str, rows: list[Any]) -> dict[str | None, Any]:
    """The main-table student row that ``name`` names, per budget: ``name`` is a row (a method or a
    ``variants`` entry) or a method that several variants use (then the last of them)."""
    students = [row for row in rows if row.study == "main" and row.kind == "student"]
    named = [row for row in students if row.key.split("@")[0] == f"student_{name}"]
    return {row.budget: row for row in named or [row for row in students if row.method == name]}


def reference_rows(config: dict[str, Any], rows: list[Any]) -> dict[str | None, Any]:
    """The Meta-KD row (``compare_to``, see :func:`named_rows`) of each budget's main table."""
    return named_rows(config.get("compare_to", "meta"), rows)


def paired(
    reference: Any,
    other: Any,
    predictions: Predictions,
    config: dict[str, Any],
    resamples: int = RESAMPLES,
) -> dict[str, Any]:
    """The report's entry of ``reference`` minus ``other``: the paired intervals (:func:`compare`) and the
    cells left out of them (:meth:`Predictions.left_out`), labelled by the other row."""
    seeds, domains = list(config["seeds"]), list(config["domains"])
    ref_correct, ref_missing = predictions.correct(reference, seeds, domains)
    other_correct, other_missing = predictions.correct(other, seeds, domains)
    return {
        "reference": reference.key,
        "other": other.key,
        "budget": reference.budget,
        "study": other.study,
        "label": other.label,
        "intervals": compare(ref_correct, other_correct, domains, resamples),
        **predictions.left_out(ref_missing, other_missing),
    }


def comparisons(
    config: dict[str, Any], rows: list[Any], predictions: Predictions, resamples: int = RESAMPLES
) -> list[dict[str, Any]]:
    """Meta-KD minus every other student row of the same budget, and minus every ablation row."""
    references = reference_rows(config, rows)
    out = []
    for row in rows:
        if row.kind != "student":
            continue
        budget = config.get("ablation_budget") if row.study == "ablation" else row.budget
        reference = references.get(budget) or references.get(None)
        if row.budget is None and row.study == "main":  # a row shared by both budgets: one comparison each
            targets = [ref for ref in references.values()]
        else:
            targets = [reference] if reference is not None else []
        for ref in targets:
            if ref is None or ref.key == row.key:
                continue
            out.append(paired(ref, row, predictions, config, resamples))
    return out


def twin_comparisons(
    config: dict[str, Any], rows: list[Any], predictions: Predictions, resamples: int = RESAMPLES
) -> list[dict[str, Any]]:
    """Each row of ``twins`` (``{row: twin}``, names as ``compare_to`` takes them) minus its twin, the same
    student without KD (:func:`row_pairs`)."""
    return row_pairs(list((config.get("twins") or {}).items()), config, rows, predictions, resamples)


def pair_comparisons(
    config: dict[str, Any], rows: list[Any], predictions: Predictions, resamples: int = RESAMPLES
) -> list[dict[str, Any]]:
    """Each ``pairs`` entry ``[row, other]`` (any two rows, named as ``compare_to`` takes them): the row
    minus the other (:func:`row_pairs`), e.g. one transfer set against another for the same student."""
    return row_pairs(
        [tuple(pair) for pair in config.get("pairs") or []], config, rows, predictions, resamples
    )


def row_pairs(
    pairs: list[tuple[str, str]],
    config: dict[str, Any],
    rows: list[Any],
    predictions: Predictions,
    resamples: int = RESAMPLES,
) -> list[dict[str, Any]]:
    """Row minus other for each ``(row, other)`` of ``pairs``, per budget (a row the same under both
    budgets is paired with each of the other's); the entries are those of :func:`comparisons`, labelled by
    the row. Rows not in the report are skipped."""
    out = []
    for name, other_name in pairs:
        others = named_rows(other_name, rows).values()
        for row in named_rows(name, rows).values():
            for other in others:
                if other.key != row.key and (
                    None in (row.budget, other.budget) or row.budget == other.budget
                ):
                    entry = paired(row, other, predictions, config, resamples)
                    out.append({**entry, "budget": row.budget or other.budget, "label": row.label})
    return out


def detectable_difference(compared: list[dict[str, Any]]) -> float | None:
    """The smallest difference on the average that the study can detect: the half-width of the average's
    paired interval (median over the comparisons), as a fraction (0.01 = one accuracy point)."""
    widths = [
        (c["intervals"]["average"]["high"] - c["intervals"]["average"]["low"]) / 2
        for c in compared
        if (c.get("intervals") or {}).get("average")
    ]
    return statistics.median(widths) if widths else None


def cpu_minutes(
    rows: list[Any], results: dict[tuple[int, str], Any], needs: dict[str, list[str]], seeds: list[int]
) -> dict[str, Any]:
    """Per row, mean over seeds of the CPU minutes (user + system) of its own cells and, apart, of the
    teachers they need (shared teachers count in full for every row that uses them)."""

    def total(names: set[str], seed: int) -> float | None:
        values = [(results.get((seed, n)) or {}).get("cpu_seconds") for n in sorted(names)]
        return None if not values or any(v is None for v in values) else sum(values) / 60

    out: dict[str, Any] = {}
    for row in rows:
        own = set(row.cells.values())
        teachers = {t for name in own for t in needs.get(name, [])}
        own_values = [total(own, s) for s in seeds]
        teacher_values = [total(teachers, s) for s in seeds] if teachers else []
        out[row.key] = {
            "own": mean_std(own_values)["mean"],
            "teachers": mean_std(teacher_values)["mean"] if teachers else 0.0,
            "teacher_cells": sorted(teachers),
        }
    return out


def best_check(curve: dict[str, Any] | None) -> dict[str, Any] | None:
    """The first check with the highest ``val/acc`` (what ModelCheckpoint keeps as best), or None."""
    checks = [c for c in (curve or {}).get("checks", []) if c.get("val/acc") is not None]
    if not checks:
        return None
    best = max(c["val/acc"] for c in checks)
    return next(c for c in checks if c["val/acc"] == best)


def teacher_curves(rows: list[Any], results: dict[tuple[int, str], Any], seeds: list[int]) -> dict[str, Any]:
    """Dev curve of every teacher cell and seed: the checks (step, val/acc), the best one, where it
    stopped, the cap and whether early stopping ended it."""
    out: dict[str, Any] = {}
    for row in rows:
        if row.kind != "teacher":
            continue
        for name in dict.fromkeys(row.cells.values()):
            for seed in seeds:
                result = results.get((seed, name))
                curve = (result or {}).get("dev_curve")
                if not curve:
                    continue
                best = best_check(curve) or {}
                end = curve.get("end") or {}
                out.setdefault(name, {})[str(seed)] = {
                    "steps": [c["step"] for c in curve["checks"]],
                    "val_acc": [c.get("val/acc") for c in curve["checks"]],
                    "best_step": best.get("step"),
                    "best_val_acc": best.get("val/acc"),
                    "last_step": end.get("global_step"),
                    "max_steps": end.get("max_steps"),
                    "early_stopped": end.get("early_stopped"),
                }
    return out


def teacher_warnings(
    rows: list[Any], results: dict[tuple[int, str], Any], needs: dict[str, list[str]], seeds: list[int]
) -> list[str]:
    """A line per (seed, domain, teacher) where a teacher's dev accuracy on the domain (at its best
    check) is below the best dev accuracy of the no-KD student of that domain."""
    no_kd = next((r for r in rows if r.kind == "student" and r.method == "none" and r.study == "main"), None)
    if no_kd is None:
        return []
    lines: list[str] = []
    seen: set[tuple[int, str, str]] = set()
    for row in rows:
        if row.kind != "student" or row.method == "none":
            continue
        for domain, name in row.cells.items():
            for teacher in needs.get(name, []):
                for seed in seeds:
                    if (seed, domain, teacher) in seen:
                        continue
                    seen.add((seed, domain, teacher))
                    best = best_check((results.get((seed, teacher)) or {}).get("dev_curve"))
                    student = best_check((results.get((seed, no_kd.cells[domain])) or {}).get("dev_curve"))
                    if best is None or student is None:
                        continue
                    teacher_acc = best.get(f"val/acc_{domain}", best.get("val/acc"))
                    if teacher_acc is not None and teacher_acc < student["val/acc"]:
                        lines.append(
                            f"seed {seed}, {domain}: teacher {teacher} has dev accuracy "
                            f"{100 * teacher_acc:.1f}%, below the no-KD student's "
                            f"{100 * student['val/acc']:.1f}% "
                            f"({no_kd.cells[domain]}): distilling from it is unlikely to help"
                        )
    return lines


def analyse(
    config: dict[str, Any],
    rows: list[Any],
    results: dict[tuple[int, str], Any],
    needs: dict[str, list[str]],
    rows_of: RowsOf,
    resamples: int = RESAMPLES,
) -> dict[str, Any]:
    """Everything of this module for the results JSON."""
    seeds = list(config["seeds"])
    predictions = Predictions(rows_of, lambda seed, cell: results.get((seed, cell)) is not None)
    compared = comparisons(config, rows, predictions, resamples)
    twins = {"twin_comparisons": twin_comparisons(config, rows, predictions, resamples)}
    pairs = {"pair_comparisons": pair_comparisons(config, rows, predictions, resamples)}
    return {
        "comparisons": compared,
        **(twins if config.get("twins") else {}),
        **(pairs if config.get("pairs") else {}),
        "detectable_difference": detectable_difference(compared),
        "cpu_minutes": cpu_minutes(rows, results, needs, seeds),
        "teacher_curves": teacher_curves(rows, results, seeds),
        "warnings": teacher_warnings(rows, results, needs, seeds),
        "bootstrap": {
            "resamples": resamples,
            "confidence": 0.95,
            "seed": BOOTSTRAP_SEED,
            "strata": "(domain, seed); per domain: seed",
        },
    }
