"""The benchmark report beyond the accuracy table: paired bootstrap intervals against Meta-KD, CPU cost
per row, teacher dev curves, warnings about teachers worse than the student they should improve, and the
Markdown for all of it. Used by :func:`metakd.pipeline.collect` / ``render_markdown``.

Inputs are the pipeline's :class:`~metakd.pipeline.Row` list, the cells' results keyed by ``(seed, cell)``
and a function giving each cell's per-example predictions on the report's test set (rows ``example_id,
domain, label, pred``; from the cells' result files, :mod:`metakd.cellstore`).
"""

from __future__ import annotations

import gzip
import json
import statistics
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from metakd.stats import mean_std, pair_predictions, paired_bootstrap

RESAMPLES = 10000
BOOTSTRAP_SEED = 0


RowsOf = Callable[[int, str], "list[dict[str, Any]] | None"]
"""A cell's per-example predictions by ``(seed, cell)``, None when it has none."""


class Predictions:
    """Per-example correctness of the cells, read once per (seed, cell)."""

    def __init__(self, rows_of: RowsOf) -> None:
        self.rows_of = rows_of
        self._rows: dict[tuple[int, str], list[dict[str, Any]] | None] = {}

    def rows(self, seed: int, cell: str) -> list[dict[str, Any]] | None:
        if (seed, cell) not in self._rows:
            self._rows[(seed, cell)] = self.rows_of(seed, cell)
        return self._rows[(seed, cell)]

    def correct(self, row: Any, seeds: Iterable[int], domains: Iterable[str]) -> tuple[dict, list[str]]:
        """``{(domain, seed, example_id): pred == label}`` over the row's cells, and the cells without
        predictions (``seed/cell``)."""
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


def reference_rows(config: dict[str, Any], rows: list[Any]) -> dict[str | None, Any]:
    """The Meta-KD row (``compare_to``) of each budget's main table."""
    method = config.get("compare_to", "meta")
    return {
        row.budget: row
        for row in rows
        if row.study == "main" and row.kind == "student" and row.method == method
    }


def comparisons(
    config: dict[str, Any], rows: list[Any], predictions: Predictions, resamples: int = RESAMPLES
) -> list[dict[str, Any]]:
    """Meta-KD minus every other student row of the same budget, and minus every ablation row."""
    seeds, domains = list(config["seeds"]), list(config["domains"])
    references = reference_rows(config, rows)
    out = []
    cache: dict[str, tuple[dict, list[str]]] = {}

    def correct(row: Any) -> tuple[dict, list[str]]:
        if row.key not in cache:
            cache[row.key] = predictions.correct(row, seeds, domains)
        return cache[row.key]

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
            ref_correct, ref_missing = correct(ref)
            row_correct, row_missing = correct(row)
            out.append(
                {
                    "reference": ref.key,
                    "other": row.key,
                    "budget": ref.budget,
                    "study": row.study,
                    "label": row.label,
                    "intervals": compare(ref_correct, row_correct, domains, resamples),
                    "missing_predictions": sorted(set(ref_missing) | set(row_missing)),
                }
            )
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
    predictions = Predictions(rows_of)
    compared = comparisons(config, rows, predictions, resamples)
    return {
        "comparisons": compared,
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


def bundle_predictions(path: Path, cells: Iterable[tuple[int, str]], rows_of: RowsOf) -> int:
    """Write every cell's predictions into one gzip JSON Lines file (rows get ``seed`` and ``cell``);
    returns the number of rows. The file is not written when no cell has predictions."""
    lines = []
    for seed, cell in cells:
        for row in rows_of(seed, cell) or []:
            lines.append(json.dumps({"seed": seed, "cell": cell, **row}, sort_keys=True))
    if not lines:
        path.unlink(missing_ok=True)
        return 0
    partial = path.with_name(f".{path.name}.partial")
    with gzip.GzipFile(partial, "wb", mtime=0) as handle:  # mtime 0: the same rows give the same bytes
        handle.write(("\n".join(lines) + "\n").encode("utf-8"))
    partial.replace(path)
    return len(lines)


# --------------------------------------------------------------------------------------------------
# Markdown


def _points(value: float) -> str:
    return f"{100 * value:+.1f}"


def interval_text(interval: dict[str, Any] | None) -> str:
    """``+1.2 [-0.3, +2.7]`` in accuracy points; bold when significant (the interval excludes 0)."""
    if not interval:
        return "—"
    text = f"{_points(interval['diff'])} [{_points(interval['low'])}, {_points(interval['high'])}]"
    return f"**{text}**" if interval["significant"] else text


def cost_text(cost: dict[str, Any] | None) -> str:
    if not cost or cost.get("own") is None:
        return "—"
    text = f"{cost['own']:.1f}"
    if cost.get("teachers"):
        text += f" (+{cost['teachers']:.1f})"
    return text


def fmt(stat: dict[str, Any]) -> str:
    if not stat or stat.get("mean") is None:
        return "—"
    text = f"{100 * stat['mean']:.1f}"
    if stat["n"] > 1:
        text += f" ± {100 * stat['std']:.1f}"
    return text


BUDGET_TITLES = {
    "A": "budget A: every student the same prediction-stage steps, a staged method's intermediate stage "
    "on top",
    "B": "budget B: every student the same total steps (a staged method's intermediate stage included)",
}


def _table(domains: list[str], rows: dict[str, Any]) -> list[str]:
    lines = ["| method | " + " | ".join(domains) + " | average |", "| --- |" + " ---: |" * (len(domains) + 1)]
    for row in rows.values():
        cells = [fmt(row[d]) for d in domains] + [fmt(row["average"])]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    return lines + [""]


def render_tables(config: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    """Markdown of the accuracy tables: teachers with the students of the first budget, the students of
    the other budget, the ablation study (its teachers and students)."""
    domains = summary["domains"]
    main = summary.get("main") or {}
    budgets = list(config.get("budgets") or ["B"])
    lines: list[str] = []
    if main:
        first = {
            k: r for k, r in main.items() if r["kind"] == "teacher" or r.get("budget") in (budgets[0], None)
        }
        if len(budgets) > 1:
            lines += [f"Students: {BUDGET_TITLES[budgets[0]]}.", ""]
        lines += _table(domains, first)
        for budget in budgets[1:]:
            students = {
                k: r for k, r in main.items() if r["kind"] == "student" and r.get("budget") in (budget, None)
            }
            lines += [f"## Students, {BUDGET_TITLES[budget]}", ""] + _table(domains, students)
    ablation = summary.get("ablation") or {}
    if ablation:
        title = BUDGET_TITLES[config.get("ablation_budget", "B")].split(":")[0]
        lines += [f"## Ablations of Meta-KD (students: {title})", ""] + _table(domains, ablation)
    return lines


def render_comparisons(config: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    """Markdown of the paired intervals (per domain and on the average) and of the warnings."""
    domains = summary["domains"]
    comparisons_ = summary.get("comparisons") or []
    lines: list[str] = []
    if comparisons_:
        reference = next(
            (
                r["label"]
                for r in (summary.get("main") or {}).values()
                if r.get("method") == config.get("compare_to")
            ),
            "Meta-KD",
        )
        lines += [
            f"## {reference} minus each other student (accuracy points, paired bootstrap 95% interval)",
            "",
            f"Test examples resampled within each (domain, seed), {summary['bootstrap']['resamples']} "
            "replicates; the average weighs every (domain, seed) equally, as the table does. **Bold**: the "
            "interval excludes 0 (a significant difference). Positive: Meta-KD is better.",
            "",
            "| budget | row | " + " | ".join(domains) + " | average |",
            "| --- | --- |" + " ---: |" * (len(domains) + 1),
        ]
        for c in comparisons_:
            values = [interval_text(c["intervals"].get(d)) for d in [*domains, "average"]]
            lines.append(f"| {c['budget'] or '-'} | {c['label']} | " + " | ".join(values) + " |")
        detectable = summary.get("detectable_difference")
        if detectable is not None:
            lines += [
                "",
                f"Smallest difference this study can detect on the average: about ±{100 * detectable:.1f} "
                "points (the half-width of the average's 95% interval, median over the rows above).",
            ]
        missing = sorted({m for c in comparisons_ for m in c["missing_predictions"]})
        if missing:
            shown = ", ".join(missing[:12]) + (" ..." if len(missing) > 12 else "")
            lines += [
                "",
                f"Cells without per-example predictions (left out of the intervals): {len(missing)}: {shown}",
            ]
        lines.append("")
    if summary.get("warnings"):
        lines += ["## Warnings", ""] + [f"- {w}" for w in summary["warnings"]] + [""]
    return lines


def render_costs(config: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    """Markdown of the teachers' dev accuracy and steps, and of every row's CPU minutes."""
    costs = summary.get("cpu_minutes") or {}
    curves = summary.get("teacher_curves") or {}
    rows = {**(summary.get("main") or {}), **(summary.get("ablation") or {})}
    if not rows or not any(c.get("own") is not None for c in costs.values()) and not curves:
        return []
    lines = [
        "## Cost and teacher training",
        "",
        "CPU-min: user + system CPU minutes per seed of the row's own cells (fit and test, all domains), "
        "and in brackets of the teachers they need. Teachers: best dev accuracy (mean over seeds, and over "
        "domains for per-domain teachers), the step of the best dev check and the last step.",
        "",
        "| row | budget | CPU-min | best dev (%) | steps: best / last |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for key, row in rows.items():
        dev, steps = _teacher_dev(curves, key) if row["kind"] == "teacher" else ("", "")
        lines.append(
            f"| {row['label']} | {row.get('budget') or ''} | {cost_text(costs.get(key))} | {dev} | {steps} |"
        )
    return lines + [""]


def _teacher_dev(curves: dict[str, Any], key: str) -> tuple[str, str]:
    """Best dev accuracy (mean over seeds; for per-domain teachers over domains too) and steps."""
    names = [n for n in curves if _teacher_row_of(n) == key]
    best = [v["best_val_acc"] for n in names for v in curves[n].values() if v.get("best_val_acc") is not None]
    steps = [
        (v["best_step"], v["last_step"])
        for n in names
        for v in curves[n].values()
        if v.get("best_step") is not None
    ]
    if not best:
        return "—", "—"
    dev = f"{100 * statistics.fmean(best):.1f}"
    text = f"{statistics.fmean(s[0] for s in steps):.0f} / {statistics.fmean(s[1] for s in steps):.0f}"
    return dev, text


def _teacher_row_of(cell: str) -> str:
    """``teacher/single/books`` -> ``teacher_single``; ``teacher/mixed`` -> ``teacher_mixed``."""
    parts = cell.split("/")
    return f"teacher_{parts[1]}"
