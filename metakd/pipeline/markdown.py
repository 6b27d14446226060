"""The report's Markdown: the accuracy tables of every test set, the paired intervals, the warnings, the
studies (scarcity, zero-shot, robustness, searched architectures), then the costs, the teachers' training
and the environment. The terminal shows the part up to :data:`REPORT_END_OF_PRINTED`.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from metakd.pipeline import scarcity_report
from metakd.pipeline.formats import cost_text, fmt, format_seconds, interval_text, left_out
from metakd.pipeline.showcase import render_showcase

REPORT_END_OF_PRINTED = "<!-- end of the part printed on the terminal -->"
TEST_SET_WORDS = {
    "test": " (the corpus's test split, the paper's protocol)",
    "test_large": " (the large test set: about 1900 reviews per domain outside the labelled 2000)",
}


def budget_line(config: dict[str, Any]) -> str:
    """The step budget, read from the base configs (what the table header states)."""

    def part(kind: str) -> str:
        section = config[kind]
        trainer, data = section.get("trainer", {}), section.get("data", {}).get("init_args", {})
        model = section.get("model", {}).get("init_args", {})
        text = (
            f"{trainer.get('max_epochs', '?')} epochs x {trainer.get('limit_train_batches', 'all')} "
            "batches of "
            f"{data.get('batch_size', '?')}, max_length {data.get('max_length', '?')}"
        )
        if kind == "teacher":
            if trainer.get("max_steps", -1) not in (-1, None):
                text = (
                    f"at most {trainer['max_steps']} steps (lr warm-up and decay over them) of "
                    f"{data.get('batch_size', '?')}, max_length {data.get('max_length', '?')}"
                )
            stop = early_stopping_of(trainer)
            if stop:
                every = trainer.get("val_check_interval", 1.0)
                every = f"{every} steps" if isinstance(every, int) else f"{every} epoch"
                text += (
                    f", dev check every {every}, early stopping on {stop.get('monitor', 'val/acc')} "
                    f"(patience {stop.get('patience', 3)} checks)"
                )
            text = f"{model.get('backbone', 'minilm-l6')}; {text}"
        else:
            fresh, architecture = model.get("student_config"), model.get("student_model")
            if fresh:
                size = f"fresh BERT {fresh.get('num_hidden_layers', '?')}L/H{fresh.get('hidden_size', '?')}"
            elif architecture:
                options = ", ".join(f"{k} {v}" for k, v in (architecture.get("init_args") or {}).items())
                size = str(architecture.get("class_path", "?")).rsplit(".", 1)[-1]
                size += f" ({options})" if options else ""
            else:
                backbone = model.get("student_backbone", "minilm-l6")
                size = f"{backbone} layers {model.get('student_layers', 'all')}"
            if trainer.get("max_steps", -1) not in (-1, None):
                every = trainer.get("val_check_interval", 1.0)
                every = f"{every} steps" if isinstance(every, int) else f"{every} epoch"
                text = (
                    f"{trainer['max_steps']} steps of {data.get('batch_size', '?')}, max_length "
                    f"{data.get('max_length', '?')}, lr {model.get('prediction_lr', '?')}, a dev check every "
                    f"{every} (the best one kept)"
                )
            text = f"{size}; {text}"
            if "intermediate_epochs" in model:
                epochs = model["intermediate_epochs"]
                text += f"; intermediate stage (two-stage methods) {epochs} epoch(s)"
        return text

    return f"teachers: {part('teacher')}. students: {part('student')}"


def early_stopping_of(trainer: dict[str, Any]) -> dict[str, Any] | None:
    """The init args of an ``EarlyStopping`` callback in a trainer config, or None."""
    for callback in trainer.get("callbacks") or []:
        if isinstance(callback, dict) and str(callback.get("class_path", "")).endswith("EarlyStopping"):
            return callback.get("init_args") or {}
    return None


def render_markdown(config: dict[str, Any], summary: dict[str, Any]) -> str:
    seeds = summary["seeds"]
    primary = summary.get("test_set", "test")
    lines = [f"# Benchmark: {summary['name']}", ""]
    lines.append(
        f"Test accuracy (%) on `{primary}`{TEST_SET_WORDS.get(primary, '')}, model selected on the dev set "
        f"(best `val/acc`); seeds {seeds}"
        + (" (mean ± std over seeds; the average is taken per seed first)" if len(seeds) > 1 else "")
        + "."
    )
    lines += ["", f"**Budget** — {budget_line(config)}.", ""]
    if config.get("is_quick"):
        lines += ["*Quick mode: a smoke test of the pipeline, not a result.*", ""]
    lines += render_tables(config, summary) + render_comparisons(config, summary)
    lines += render_showcase(summary.get("showcase"), summary.get("test_set", "test"))
    for test_set, tables in (summary.get("by_test_set") or {}).items():
        if test_set != primary:
            lines += [f"## Test accuracy on `{test_set}`{TEST_SET_WORDS.get(test_set, '')}", ""]
            lines += render_tables(config, {**summary, **tables, "ablation": tables.get("ablation")})
    if "scarcity" in summary:
        scarcity = summary["scarcity"]
        for domain, rows in scarcity["points"].items():
            fractions = sorted({float(f) for points in rows.values() for f in points})
            lines += [f"## Data scarcity ({domain})", ""]
            lines.append(f"| {domain} student | " + " | ".join(f"{100 * f:g}%" for f in fractions) + " |")
            lines.append("| --- |" + " ---: |" * len(fractions))
            for method, points in rows.items():
                values = [fmt(points.get(str(f), {})) for f in fractions]
                lines.append(f"| {scarcity['labels'].get(method, method)} | " + " | ".join(values) + " |")
            lines.append("")
        if scarcity.get("plot"):
            lines += ["", f"![data scarcity]({Path(scarcity['plot']).name})"]
        lines.append("")
        lines += scarcity_report.render(scarcity, scarcity["labels"])
    if "zero_shot" in summary and summary["zero_shot"]:
        zero = summary["zero_shot"]
        lines += ["## Zero-shot", "", "| Meta-KD student | domain | test accuracy |", "| --- | --- | ---: |"]
        if "unseen" in zero:
            lines.append(
                f"| teacher never saw the domain (stand-in `{zero['unseen']['teacher_domain']}`) | "
                f"{zero['unseen']['domain']} | {fmt(zero['unseen'])} |"
            )
        if "seen" in zero:
            lines.append(f"| teacher saw the domain | {zero['seen']['domain']} | {fmt(zero['seen'])} |")
        lines.append("")
    if summary.get("robustness"):
        domains, settings = summary["domains"], config["robustness"]
        lines += [
            "## Robustness",
            "",
            "Word-substitution attack (`python -m metakd robustness`, source "
            f"{settings.get('source', 'wordnet')}, at "
            f"most {100 * float(settings.get('max_fraction', 0.2)):.0f}% of the words, "
            f"{settings.get('max_candidates', 8)} candidates per word) on "
            f"{settings.get('max_examples', 100)} test "
            "examples per domain (seeded): accuracy under attack (clean accuracy on the same examples), "
            "and attack success rate.",
            "",
            "| method | " + " | ".join(domains) + " |",
            "| --- |" + " ---: |" * len(domains),
        ]
        for row in summary["robustness"].values():
            cells = [
                f"{fmt(row[d]['accuracy_under_attack'])} ({fmt(row[d]['clean_accuracy'])})" for d in domains
            ]
            lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "| attack success rate | " + " | ".join(domains) + " |",
            "| --- |" + " ---: |" * len(domains),
        ]
        for row in summary["robustness"].values():
            lines.append(
                f"| {row['label']} | "
                + " | ".join(fmt(row[d]["attack_success_rate"]) for d in domains)
                + " |"
            )
        lines.append("")
    if summary.get("search"):
        header = "| cell | architecture | parameters | FLOPs/token | operation entropy | search time |"
        lines += ["## Searched architectures", "", header,
                  "| --- | --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
        for key, entry in summary["search"].items():
            entropy = entry.get("op_entropy")
            moved = "-"
            if entropy:
                moved = f"{entropy['initial']:.3f} -> {entropy['final']:.3f} (max {entropy['max']:.3f})"
            lines.append(
                f"| {key} | {entry['architecture']} | {entry.get('parameters', 0):,} | "
                f"{entry.get('flops_per_token', 0):,} | {moved} | {format_seconds(entry['seconds'])} |"
            )
        lines.append("")
    lines += [REPORT_END_OF_PRINTED, ""]  # the terminal shows the report up to here
    lines += render_costs(config, summary)
    if summary.get("teacher_curves_plot"):
        lines += ["![teacher dev curves](" + Path(summary["teacher_curves_plot"]).name + ")", ""]
    lines += [
        f"Compute: {format_seconds(summary['train_and_test_seconds'])} of fit + test over all cells.",
        "",
        "## Environment",
        "",
    ]
    lines += [f"- {k}: {v}" for k, v in summary["versions"].items()]
    lines += [
        "",
        f"The exact config of every cell is in `{summary['json']}` (`cell_configs`) and in "
        f"`{Path(config['runs_dir']) / config['name']}/<seed>/<cell>/cell.yaml`.",
        "",
    ]
    return "\n".join(lines)


BUDGET_TITLES = {
    "A": "budget A: every student the same prediction-stage steps, a staged method's intermediate stage "
    "on top",
    "B": "budget B: every student the same total steps (a staged method's intermediate stage included)",
}


def _table(domains: list[str], rows: dict[str, Any], seeds: int | None = None) -> list[str]:
    """A row whose average has fewer seeds than the study's (``seeds``) says how many it has."""
    lines = ["| method | " + " | ".join(domains) + " | average |", "| --- |" + " ---: |" * (len(domains) + 1)]
    for row in rows.values():
        cells = [fmt(row[d]) for d in domains] + [fmt(row["average"])]
        n = (row.get("average") or {}).get("n")
        label = row["label"] + (f" ({n} of {seeds} seeds)" if seeds and n and n < seeds else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines + [""]


def render_tables(config: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    """Markdown of the accuracy tables: teachers with the students of the first budget, the students of
    the other budget, the ablation study (its teachers and students)."""
    domains = summary["domains"]
    n_seeds = len(summary.get("seeds") or [])
    main = summary.get("main") or {}
    budgets = list(config.get("budgets") or ["B"])
    lines: list[str] = []
    if main:
        first = {
            k: r for k, r in main.items() if r["kind"] == "teacher" or r.get("budget") in (budgets[0], None)
        }
        if len(budgets) > 1:
            lines += [f"Students: {BUDGET_TITLES[budgets[0]]}.", ""]
        lines += _table(domains, first, n_seeds)
        for budget in budgets[1:]:
            students = {
                k: r for k, r in main.items() if r["kind"] == "student" and r.get("budget") in (budget, None)
            }
            lines += [f"## Students, {BUDGET_TITLES[budget]}", ""] + _table(domains, students, n_seeds)
    ablation = summary.get("ablation") or {}
    if ablation:
        title = BUDGET_TITLES[config.get("ablation_budget", "B")].split(":")[0]
        lines += [f"## Ablations of Meta-KD (students: {title})", ""] + _table(domains, ablation, n_seeds)
    return lines


def render_comparisons(config: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    """Markdown of the paired intervals (per domain and on the average) and of the warnings."""
    domains = summary["domains"]
    comparisons_ = summary.get("comparisons") or []
    lines: list[str] = []
    if comparisons_:
        main = summary.get("main") or {}
        reference = next(
            (r["label"] for r in main.values() if r.get("method") == config.get("compare_to")),
            (main.get(comparisons_[0]["reference"]) or {}).get("label", "Meta-KD"),
        )  # compare_to names a method, else a variants row
        lines += [
            f"## {reference} minus each other student (accuracy points, paired bootstrap 95% interval)",
            "",
            f"Test examples resampled within each (domain, seed), {summary['bootstrap']['resamples']} "
            "replicates; the average weighs every (domain, seed) equally, as the table does. **Bold**: the "
            "interval excludes 0 (a significant difference). Positive: "
            + ("Meta-KD" if config.get("compare_to", "meta") == "meta" else reference)
            + " is better.",
            "",
        ]
        lines += _interval_table(domains, comparisons_)
        detectable = summary.get("detectable_difference")
        if detectable is not None:
            lines += [
                "",
                f"Smallest difference this study can detect on the average: about ±{100 * detectable:.1f} "
                "points (the half-width of the average's 95% interval, median over the rows above).",
            ]
        lines += _missing_predictions(comparisons_) + [""]
    for key in PAIRED_SECTIONS:
        lines += _paired_section(summary, key)
    if summary.get("warnings"):
        lines += ["## Warnings", ""] + [f"- {w}" for w in summary["warnings"]] + [""]
    return lines


PAIRED_SECTIONS = {
    # summary key: (title, what the numbers are, the paired column's heading, what a positive number means)
    "twin_comparisons": (
        "Row minus its no-KD twin",
        "Accuracy points of each row minus the same student without KD (`twins`)",
        "twin",
        "the row beats its twin",
    ),
    "pair_comparisons": (
        "Row minus another row",
        "Accuracy points of each row minus the other row named beside it (`pairs`), over the seeds both have",
        "other",
        "the row beats the other",
    ),
}
"""The report's row-minus-other sections after the ``compare_to`` table, in this order."""


def _paired_section(summary: dict[str, Any], key: str) -> list[str]:
    """The Markdown of ``summary[key]``'s row-minus-other intervals as :data:`PAIRED_SECTIONS` describes
    them (``twins``: each row minus its no-KD twin; ``pairs``: each row minus the other it names); nothing
    without entries."""
    title, what, heading, positive = PAIRED_SECTIONS[key]
    entries = summary.get(key) or []
    if not entries:
        return []
    domains, main, test_set = summary["domains"], summary.get("main") or {}, summary.get("test_set", "test")
    lines = [
        f"## {title} (paired bootstrap 95% interval, test set `{test_set}`)",
        "",
        f"{what}; test examples resampled within each (domain, seed), {summary['bootstrap']['resamples']} "
        f"replicates. **Bold**: the interval excludes 0. Positive: {positive}.",
        "",
    ]
    labels = {c["other"]: main.get(c["other"], {}).get("label", c["other"]) for c in entries}
    table = _interval_table(domains, entries, labels, heading)
    return lines + table + _missing_predictions(entries) + [""]


def _interval_table(
    domains: list[str],
    entries: list[dict[str, Any]],
    other_labels: dict[str, str] | None = None,
    heading: str = "",
) -> list[str]:
    """The rows of a paired-interval table (budget, row, [the row it is paired with, labelled by
    ``other_labels`` under ``heading``,] per domain and the average)."""
    column = "" if other_labels is None else f" {heading} |"
    lines = [
        f"| budget | row |{column} " + " | ".join(domains) + " | average |",
        "| --- | --- |" + " --- |" * bool(column) + " ---: |" * (len(domains) + 1),
    ]
    for c in entries:
        values = [interval_text(c["intervals"].get(d)) for d in [*domains, "average"]]
        other = "" if other_labels is None else f" {other_labels[c['other']]} |"
        lines.append(f"| {c['budget'] or '-'} | {c['label']} |{other} " + " | ".join(values) + " |")
    return lines


def _missing_predictions(entries: list[dict[str, Any]]) -> list[str]:
    """A line per kind of cell left out of the intervals (:func:`.formats.left_out`; none: no line)."""
    lines: list[str] = []
    for words, cells in left_out(entries):
        shown = ", ".join(cells[:12]) + (" ..." if len(cells) > 12 else "")
        lines += ["", f"{words} (left out of the intervals): {len(cells)}: {shown}"]
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
