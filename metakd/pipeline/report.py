"""The report's files: ``<results_dir>/<name>.json`` (the summary of :mod:`.tables`, the config and every
cell's config and key), ``<name>.md`` (:mod:`.markdown`), the plots (data scarcity, teachers' dev curves; with
matplotlib) and ``<name>_predictions.jsonl.gz`` (every cell's per-example predictions in one file).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from metakd.pipeline import cellstore
from metakd.pipeline.analysis import Predictions, RowsOf
from metakd.pipeline.markdown import budget_line, render_markdown
from metakd.pipeline.pareto import accuracy_intervals, plot_pareto
from metakd.pipeline.plan import plan_cells
from metakd.pipeline.showcase import showcase
from metakd.pipeline.store import cell_config, cell_key, cell_predictions, read_result, store_dir
from metakd.pipeline.tables import collect, report_test_set
from metakd.utils import write_json


def plot_scarcity(summary: dict[str, Any], path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    scarcity = summary["scarcity"]
    domains = list(scarcity["points"])
    figure, axes = plt.subplots(1, len(domains), figsize=(5 * len(domains), 3.8), squeeze=False)
    for axis, domain in zip(axes[0], domains):
        for method, values in scarcity["points"][domain].items():
            xs = sorted(float(f) for f, v in values.items() if v.get("mean") is not None)
            ys = [100 * values[str(x)]["mean"] for x in xs]
            errs = [100 * values[str(x)]["std"] for x in xs]
            label = scarcity["labels"].get(method, method)
            axis.errorbar([100 * x for x in xs], ys, yerr=errs, marker="o", capsize=3, label=label)
        axis.set_xscale("log")
        axis.set_xlabel(f"% of {domain} training data (log scale)")
        axis.set_ylabel("test accuracy (%)")
        axis.set_title(domain)
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return str(path)


def plot_teacher_curves(curves: dict[str, Any], path: Path) -> str | None:
    """Dev accuracy against optimiser steps, one line per teacher cell and seed (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, axis = plt.subplots(figsize=(7, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (cell, seeds) in enumerate(sorted(curves.items())):
        for number, (_, curve) in enumerate(sorted(seeds.items())):
            points = [(s, 100 * a) for s, a in zip(curve["steps"], curve["val_acc"]) if a is not None]
            if not points:
                continue
            axis.plot(
                *zip(*points),
                color=colours[index % len(colours)],
                alpha=0.85,
                linewidth=1.2,
                label=cell if number == 0 else None,
            )
    axis.set_xlabel("optimiser step")
    axis.set_ylabel("dev accuracy (%)")
    axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return str(path)


def write_results(config: dict[str, Any]) -> tuple[Path, Path]:
    results_dir = Path(config["results_dir"])
    results_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = results_dir / f"{config['name']}.json", results_dir / f"{config['name']}.md"
    cells = plan_cells(config)
    summary = collect(config, cells)
    summary["budget"] = budget_line(config)
    summary["quick"] = bool(config.get("is_quick"))
    summary["versions"] = cellstore.package_versions()
    summary["json"] = str(json_path)
    summary["showcase"] = showcase(config, summary)
    if "scarcity" in summary:
        summary["scarcity"]["plot"] = plot_scarcity(summary, results_dir / f"{config['name']}_scarcity.png")
    if summary.get("teacher_curves"):
        curves_path = results_dir / f"{config['name']}_teacher_curves.png"
        summary["teacher_curves_plot"] = plot_teacher_curves(summary["teacher_curves"], curves_path)
    predictions_path = results_dir / f"{config['name']}_predictions.jsonl.gz"
    primary = report_test_set(config)
    # every cell's predictions, each result file read once for the plot and the bundle
    predictions = Predictions(lambda seed, name: cell_predictions(read_result(config, seed, name), primary))
    if summary["showcase"]:  # accuracy with its interval against speed
        intervals = accuracy_intervals(config, summary, predictions)
        for key, interval in intervals.items():
            summary["showcase"]["rows"][key]["interval"] = [interval["low"], interval["high"]]
        pareto_path = results_dir / f"{config['name']}_pareto.png"
        summary["showcase"]["plot"] = plot_pareto(summary["showcase"], intervals, pareto_path, primary)
    count = bundle_predictions(
        predictions_path,
        [(seed, cell.name) for seed in config["seeds"] for cell in cells],
        predictions.rows,
    )
    summary["predictions_file"] = str(predictions_path) if count else None
    summary["pipeline_config"] = {k: v for k, v in config.items() if k not in ("teacher", "student")}
    summary["cell_configs"] = {  # without machine paths; the cells' own files are <results_store>/<key>.json
        f"{seed}/{cell.name}": cellstore.identity(cell_config(config, seed, cell), store_dir(config))
        for seed in config["seeds"]
        for cell in cells
    }
    summary["cell_keys"] = {
        f"{seed}/{cell.name}": cell_key(config, seed, cell) for seed in config["seeds"] for cell in cells
    }
    write_json(json_path, summary)
    md_path.write_text(render_markdown(config, summary), encoding="utf-8")
    return json_path, md_path


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
