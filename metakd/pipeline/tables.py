"""The report's numbers: the results of every planned cell gathered into the benchmark's summary.

:func:`collect` reads each cell's result (:func:`.store.read_result`: the committed result files, so a report
can be rebuilt from them alone), lays the main and ablation tables out by :class:`Row` (a teacher or student
row with its cell per target domain; mean ± std over seeds, the average taken per seed first) on every test
set, the scarcity and zero-shot studies, the robustness attack and the searched architectures, and adds the
analysis of :mod:`.analysis` (paired intervals, costs, dev curves, warnings).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from metakd.pipeline import scarcity_report
from metakd.pipeline.analysis import analyse
from metakd.pipeline.config import (
    PipelineError,
    is_staged,
    main_rows,
    row_spec,
    scarcity_settings,
    zero_shot_settings,
)
from metakd.pipeline.plan import Cell, main_cell_name, plan_cells, student_cell_name, zero_shot_cell_name
from metakd.pipeline.robustness import attack_summary
from metakd.pipeline.store import cell_predictions, read_result
from metakd.stats import mean_std


def report_test_set(config: dict[str, Any]) -> str:
    """The test set of the report's main table and paired intervals: ``report_test_set``, else
    ``test_large`` when the config tests on it, else the first of ``test_sets``."""
    test_sets = list(config.get("test_sets") or ["test"])
    chosen = config.get("report_test_set") or ("test_large" if "test_large" in test_sets else test_sets[0])
    if chosen not in test_sets:
        raise PipelineError(f"`report_test_set` {chosen!r} is not one of `test_sets` {test_sets}")
    return chosen


def cell_accuracy(result: dict[str, Any], domain: str, test_set: str | None = None) -> float | None:
    """Test accuracy of a cell on one domain (a teacher's per-domain metric, else ``test/acc``), on
    ``test_set`` (default: the corpus's test split, as the cell's ``metrics``)."""
    if test_set is None or (test_set == "test" and "test_sets" not in result):
        metrics = result["metrics"]
    else:
        metrics = (result.get("test_sets") or {}).get(test_set)
    if metrics is None:
        return None
    if f"test/acc_{domain}" in metrics:
        return metrics[f"test/acc_{domain}"]
    if result["kind"] == "student" or result["info"].get("domain") == domain:
        return metrics.get("test/acc")
    return None


summarise = mean_std  # mean ± sample std over seeds (``metakd.stats.mean_std``)


@dataclass
class Row:
    """One row of a results table: a model kind, with one cell per target domain (a teacher trained on
    all domains is the same cell in every column)."""

    key: str
    label: str
    kind: str  # "teacher" | "student"
    cells: dict[str, str]  # domain -> cell name
    budget: str | None = None  # "A" / "B" for a staged student, None when the row is the same under both
    study: str = "main"
    method: str | None = None


def table_rows(config: dict[str, Any], planned: set[str]) -> list[Row]:
    """The rows of the main table (teachers, then students per budget) and of the ablation study, each
    with its cell per domain; a row whose cells are not planned (a method left out) is left out."""
    domains = list(config["domains"])
    variants, extra = config.get("variants"), config["extra_teachers"]
    rows: list[Row] = []

    def student_rows(names: list[str], budgets: list[str], study: str) -> None:
        labels = dict(main_rows(names, variants, extra))
        for name in names:
            key, method = f"student_{name}", row_spec(name, variants, extra).method
            for budget in budgets if is_staged(method) else [None]:
                cells = {d: student_cell_name(name, d, budget=budget) for d in domains}
                rows.append(Row(key + ("@A" if budget == "A" else ""), labels[key], "student", cells, budget,
                                study, method))  # fmt: skip

    if "main" in config["studies"]:
        for key, label in main_rows(list(config["methods"]), variants, extra, config.get("teachers") or ()):
            if key.startswith("teacher_"):
                rows.append(Row(key, label, "teacher", {d: main_cell_name(key, d) for d in domains}))
        student_rows(list(config["methods"]), list(config["budgets"]), "main")
    if "ablation" in config["studies"]:
        for name, spec in extra.items():
            label = spec.get("label", f"Teacher: {name}")
            cells = dict.fromkeys(domains, f"teacher/{name}")
            rows.append(Row(f"teacher_{name}", label, "teacher", cells, study="ablation"))
        student_rows(list(config["ablations"]), [config["ablation_budget"]], "ablation")
    return [row for row in rows if row.cells[domains[0]] in planned]


def row_accuracy(
    row: Row, results: dict[tuple[int, str], Any], seeds: list[int], test_set: str | None = None
) -> dict[str, Any]:
    """Per domain: mean ± std of the test accuracy (on ``test_set``) over seeds; ``average``: of the
    per-seed averages over domains (a seed counts only when every domain has its number)."""
    out: dict[str, Any] = {}
    per_seed_avg: list[float] = []
    per_domain: dict[str, list[float]] = {d: [] for d in row.cells}
    for seed in seeds:
        accs = []
        for domain, name in row.cells.items():
            result = results.get((seed, name))
            value = cell_accuracy(result, domain, test_set) if result else None
            if value is not None:
                per_domain[domain].append(value)
            accs.append(value)
        if all(v is not None for v in accs):
            per_seed_avg.append(statistics.fmean(accs))
    for domain in row.cells:
        out[domain] = summarise(per_domain[domain])
    out["average"] = summarise(per_seed_avg)
    return out


def collect(config: dict[str, Any], cells: list[Cell] | None = None) -> dict[str, Any]:
    """Gather the cells' results into the benchmark's JSON (main table, studies, paired intervals,
    costs, teacher dev curves and warnings)."""
    domains = list(config["domains"])
    seeds = list(config["seeds"])
    cells = plan_cells(config) if cells is None else cells
    results = {(seed, cell.name): read_result(config, seed, cell.name) for seed in seeds for cell in cells}
    out: dict[str, Any] = {
        "name": config["name"],
        "corpus": config["corpus"],
        "domains": domains,
        "seeds": seeds,
    }
    rows = table_rows(config, {cell.name for cell in cells})
    primary = report_test_set(config)
    out["test_set"] = primary
    out["by_test_set"] = {}
    out["row_cells"] = {row.key: dict(row.cells) for row in rows}
    for test_set in config.get("test_sets") or ["test"]:
        tables: dict[str, dict[str, Any]] = {}
        for row in rows:
            entry = {"label": row.label, "kind": row.kind, "budget": row.budget, "method": row.method}
            tables.setdefault("ablation" if row.study == "ablation" else "main", {})[row.key] = {
                **entry,
                **row_accuracy(row, results, seeds, test_set),
            }
        out["by_test_set"][test_set] = tables
    out.update(out["by_test_set"][primary])

    def accuracies(name: str, domain: str) -> list[float | None]:
        return [cell_accuracy(r, domain, primary) for s in seeds if (r := results.get((s, name)))]

    if "scarcity" in config["studies"]:
        scarcity_domains, methods, fractions = scarcity_settings(config)
        points: dict[str, Any] = {}  # domain -> row -> fraction -> summary
        for domain in scarcity_domains:
            for method in methods:
                for fraction in fractions:
                    name = student_cell_name(method, domain, fraction)
                    points.setdefault(domain, {}).setdefault(method, {})[str(fraction)] = {
                        "cell": name,
                        **summarise(accuracies(name, domain)),
                    }
        labels = {method: row_spec(method, config.get("variants")).label for method in methods}
        out["scarcity"] = {"domains": scarcity_domains, "labels": labels, "points": points}
        out["scarcity"]["comparisons"] = scarcity_report.scarcity_comparisons(  # scarcity.compare's intervals
            config,
            points,
            lambda s, c: cell_predictions(results.get((s, c)), primary),
            finished=lambda s, c: results.get((s, c)) is not None,
        )
        out["scarcity"]["selection"] = scarcity_report.selection_spread(points, results, seeds)  # L2A's
    if "zero_shot" in config["studies"]:
        domain, _, stand_in = zero_shot_settings(config)
        out["zero_shot"] = {
            key: {
                "cell": name,
                "domain": domain,
                "teacher_domain": teacher_domain,
                **summarise(accuracies(name, domain)),
            }
            for key, name, teacher_domain in (
                ("unseen", zero_shot_cell_name(domain), stand_in),
                ("seen", student_cell_name("meta", domain), None),
            )
        }
    needs = {cell.name: cell.needs for cell in cells}

    def rows_of(seed: int, cell: str) -> list[dict[str, Any]] | None:
        return cell_predictions(results.get((seed, cell)), primary)

    out.update(analyse(config, rows, results, needs, rows_of))
    if config.get("robustness") and "main" in out:
        out["robustness"] = collect_robustness(config, [row for row in rows if row.study == "main"], results)
    searched = {f"{seed}/{name}": r for (seed, name), r in results.items() if r and r["kind"] == "search"}
    if searched:
        from metakd.search.derive import describe

        out["search"] = {
            key: {"domain": r["info"]["domain"], "row": r["info"]["row"],
                  "architecture": describe(r["architecture"]), **r["architecture"].get("cost", {}),
                  "op_entropy": r["architecture"].get("derived_from", {}).get("op_entropy"),
                  "seconds": r["seconds"]}
            for key, r in searched.items()
        }  # fmt: skip
    out["train_and_test_seconds"] = round(sum(r["seconds"] for r in results.values() if r), 1)
    out["cells"] = {f"{seed}/{name}": result is not None for (seed, name), result in results.items()}
    return out


def collect_robustness(
    config: dict[str, Any], rows: list[Row], results: dict[tuple[int, str], Any] | None = None
) -> dict[str, Any]:
    """Per main-table row and domain: clean accuracy, accuracy under attack and attack success rate of the
    attacked examples (``robustness_<domain>.json`` of each cell, else the summary its result file keeps),
    summarised over seeds. ``results``: the cells' results already read, by ``(seed, cell)``."""
    metrics = ("clean_accuracy", "accuracy_under_attack", "attack_success_rate")
    table: dict[str, Any] = {}
    for row in rows:
        entry: dict[str, Any] = {"label": row.label}
        for domain, cell in row.cells.items():
            values: dict[str, list[float]] = {metric: [] for metric in metrics}
            for seed in config["seeds"]:
                attacked = attack_summary(config, seed, cell, domain, (results or {}).get((seed, cell)))
                if attacked:
                    for metric in metrics:
                        values[metric].append(attacked[metric])
            entry[domain] = {metric: summarise(v) for metric, v in values.items()}
        table[row.key] = entry
    return table
