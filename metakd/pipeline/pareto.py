"""Accuracy against speed (issue 21's Pareto plot): one point per row of the report's showcase (the teacher
and every student row), its average accuracy on the report's test set over seeds and domains with a 95%
bootstrap interval (test examples resampled within (domain, seed), as the paired intervals), against its
examples per second from the showcase (the same runtime and batch for every row)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from metakd.pipeline.analysis import BOOTSTRAP_SEED, RESAMPLES, Predictions
from metakd.stats import pair_predictions, paired_bootstrap


def accuracy_intervals(
    config: dict[str, Any], summary: dict[str, Any], predictions: Predictions, resamples: int = RESAMPLES
) -> dict[str, dict[str, float]]:
    """``{row: {"mean", "low", "high"}}`` for each row of the showcase whose cells have predictions: the
    bootstrap interval of its accuracy (the paired bootstrap against a model that is always wrong)."""
    section = summary.get("showcase") or {}
    seeds, domains = list(config["seeds"]), list(config["domains"])
    out = {}
    for key in section.get("rows") or {}:
        cells = (summary.get("row_cells") or {}).get(key)
        if not cells or set(domains) - set(cells):
            continue
        correct, missing = predictions.correct(SimpleNamespace(cells=cells), seeds, domains)
        if missing or not correct:
            continue
        right, wrong, keys = pair_predictions(correct, dict.fromkeys(correct, False))
        interval = paired_bootstrap(
            right, wrong, [k[:2] for k in keys], resamples=resamples, seed=BOOTSTRAP_SEED
        )
        out[key] = {"mean": interval.diff, "low": interval.low, "high": interval.high}
    return out


def plot_pareto(section: dict[str, Any], intervals: dict[str, Any], path: Path, test_set: str) -> str | None:
    """The plot (needs matplotlib; None without it or without throughput): accuracy with its interval
    against examples per second, log scale, the teacher marked."""
    rows = {
        k: r for k, r in (section.get("rows") or {}).items() if r.get("examples_per_s") and k in intervals
    }
    if len(rows) < 2:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, axes = plt.subplots(figsize=(7.5, 4.5))
    for key, row in rows.items():
        mean, low, high = (100 * intervals[key][k] for k in ("mean", "low", "high"))
        teacher = key == section.get("teacher")
        axes.errorbar(
            row["examples_per_s"], mean, yerr=[[mean - low], [high - mean]], fmt="s" if teacher else "o",
            color="black" if teacher else None, capsize=3, label=row["label"],
        )  # fmt: skip
    axes.set_xscale("log")
    axes.set_xlabel(
        f"examples per second ({((section.get('throughput') or {}).get('_setup') or {}).get('runtime', '')})"
    )
    axes.set_ylabel(f"{test_set} accuracy %, average (95% interval)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="best")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return str(path)
