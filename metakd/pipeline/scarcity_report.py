"""The scarcity study's report beyond its accuracy tables: paired intervals between two rows named in
``scarcity.compare`` (e.g. L2A's learned against its random selection), and the spread of L2A's selection
probabilities. :class:`metakd.l2a_selector.L2ASelector` writes ``l2a_selection.json`` into a cell's
folder, and the pipeline copies it into the cell's result file (``l2a_selection``), so the report is
rebuilt from the result files alone. Used by :func:`.tables.collect`, :mod:`.runner` and :mod:`.markdown`.

``points`` is the pipeline's scarcity summary: ``{domain: {row: {fraction: {"cell": name, ...}}}}``;
``results`` the cells' results keyed by ``(seed, cell)``.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metakd.errors import ConfigError
from metakd.pipeline.analysis import RESAMPLES, Finished, Predictions, RowsOf, compare
from metakd.pipeline.formats import interval_text, left_out

SELECTION_FILE = "l2a_selection.json"
"""What ``L2ASelector`` writes into a cell's folder (its ``default_root_dir``)."""
SELECTION_KEY = "l2a_selection"
"""Where a cell's result file keeps it (without the per-update history)."""


def selection_of(directory: Path) -> dict[str, Any] | None:
    """The selector's summary in a finished cell's folder, for its result file (None: no selector)."""
    path = directory / SELECTION_FILE
    if not path.is_file():
        return None
    return {k: v for k, v in json.loads(path.read_text(encoding="utf-8")).items() if k != "history"}


@dataclass
class CellRow:
    """One row of the study at one fraction: its cell per domain (what :class:`Predictions` reads)."""

    cells: dict[str, str]


def cell_row(points: dict[str, Any], row: str, fraction: str) -> CellRow:
    return CellRow({domain: rows[row][fraction]["cell"] for domain, rows in points.items()})


def compare_pairs(config: dict[str, Any], rows: list[str]) -> list[tuple[str, str]]:
    """``scarcity.compare``: pairs ``[first, second]`` of the study's rows, checked."""
    pairs = (config.get("scarcity") or {}).get("compare") or []
    out = []
    for pair in pairs:
        if not (isinstance(pair, list | tuple) and len(pair) == 2 and all(p in rows for p in pair)):
            raise ConfigError(
                f"scarcity.compare: {pair!r} must be a pair [first, second] of the study's rows {rows}"
            )
        out.append((str(pair[0]), str(pair[1])))
    return out


def scarcity_comparisons(
    config: dict[str, Any],
    points: dict[str, Any],
    rows_of: RowsOf,
    resamples: int = RESAMPLES,
    finished: Finished | None = None,
) -> list[dict[str, Any]]:
    """For each pair of ``scarcity.compare`` and each fraction: paired bootstrap intervals of
    ``acc(first) - acc(second)`` per domain (strata: seeds) and over the domains (strata: domain, seed), and
    the cells left out of them (:meth:`.analysis.Predictions.left_out`; ``finished`` tells the never-run)."""
    domains = list(points)
    rows = sorted({row for domain in domains for row in points[domain]})
    predictions, seeds = Predictions(rows_of, finished), list(config["seeds"])
    out = []
    for first, second in compare_pairs(config, rows):
        fractions = sorted({f for d in domains for f in points[d].get(first, {})}, key=float)
        for fraction in fractions:
            a, missing_a = predictions.correct(cell_row(points, first, fraction), seeds, domains)
            b, missing_b = predictions.correct(cell_row(points, second, fraction), seeds, domains)
            out.append(
                {
                    "first": first,
                    "second": second,
                    "fraction": fraction,
                    "intervals": compare(a, b, domains, resamples),
                    **predictions.left_out(missing_a, missing_b),
                }
            )
    return out


def selection_spread(
    points: dict[str, Any], results: dict[tuple[int, str], Any], seeds: list[int]
) -> dict[str, Any]:
    """Per domain, row and fraction whose results hold an ``l2a_selection``: over seeds, the mean (and
    its std) of the candidates' mean selection probability, and the means of the within-cell std, of
    ``|p - 1/2|``, of the share above 1/2, of the updates and of each edit type's mean probability."""
    out: dict[str, Any] = {}
    for domain, rows in points.items():
        for row, fractions in rows.items():
            for fraction, point in fractions.items():
                found = [(results.get((seed, point["cell"])) or {}).get(SELECTION_KEY) for seed in seeds]
                files = [f for f in found if f]
                if not files:
                    continue
                p = [f["probabilities"] for f in files]
                kinds = sorted({k for q in p for k in q["by_kind"]})
                out.setdefault(domain, {}).setdefault(row, {})[fraction] = {
                    "seeds": len(files),
                    "learn": all(f["learn"] for f in files),
                    "mean": statistics.fmean(q["mean"] for q in p),
                    "mean_std_over_seeds": statistics.stdev([q["mean"] for q in p]) if len(p) > 1 else 0.0,
                    "std_within_cell": statistics.fmean(q["std"] for q in p),
                    "mean_abs_from_half": statistics.fmean(q["mean_abs_from_half"] for q in p),
                    "share_above_half": statistics.fmean(q["share_above_half"] for q in p),
                    "updates": statistics.fmean(f["updates"] for f in files),
                    "by_kind": {
                        k: statistics.fmean(q["by_kind"][k]["mean"] for q in p if k in q["by_kind"])
                        for k in kinds
                    },
                }
    return out


def render(scarcity: dict[str, Any], labels: dict[str, str]) -> list[str]:
    """Markdown of the pairs' intervals and of the selection probabilities (nothing when neither exists)."""
    lines: list[str] = []
    domains = list(scarcity.get("points") or {})
    if scarcity.get("comparisons"):
        lines += [
            "## Scarcity: paired differences (accuracy points, paired bootstrap 95% interval)",
            "",
            "First row minus second, test examples resampled within each (domain, seed); **bold**: the "
            "interval excludes 0.",
            "",
            "| first - second | fraction | " + " | ".join(domains) + " | average |",
            "| --- | ---: |" + " ---: |" * (len(domains) + 1),
        ]
        for c in scarcity["comparisons"]:
            values = [interval_text(c["intervals"].get(d)) for d in [*domains, "average"]]
            pair = f"{labels.get(c['first'], c['first'])} - {labels.get(c['second'], c['second'])}"
            lines.append(f"| {pair} | {100 * float(c['fraction']):g}% | " + " | ".join(values) + " |")
        for words, cells in left_out(scarcity["comparisons"]):
            lines += ["", f"{words} (left out): {', '.join(cells)}"]
        lines.append("")
    if scarcity.get("selection"):
        lines += [
            "## L2A selection probabilities",
            "",
            "At the end of training, over the candidates of a cell: the mean selection probability (± its "
            "std over seeds), its std within a cell, the mean |p - 1/2|, the share above 1/2, the policy "
            "updates, and the mean per edit type. A selector that learnt nothing stays at its initial "
            "probability with no spread.",
            "",
            "| domain | row | fraction | seeds | mean p | std in cell | mean abs(p - 1/2) | share > 1/2 | "
            "updates | by edit type |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for domain, rows in scarcity["selection"].items():
            for row, fractions in rows.items():
                for fraction, s in fractions.items():
                    kinds = ", ".join(f"{k} {v:.2f}" for k, v in s["by_kind"].items())
                    lines.append(
                        f"| {domain} | {labels.get(row, row)} | {100 * float(fraction):g}% | {s['seeds']} | "
                        f"{s['mean']:.3f} ± {s['mean_std_over_seeds']:.3f} | {s['std_within_cell']:.3f} | "
                        f"{s['mean_abs_from_half']:.3f} | {s['share_above_half']:.2f} | {s['updates']:.0f} | "
                        f"{kinds} |"
                    )
        lines.append("")
    return lines


__all__ = [
    "SELECTION_FILE",
    "SELECTION_KEY",
    "compare_pairs",
    "render",
    "scarcity_comparisons",
    "selection_of",
    "selection_spread",
]
