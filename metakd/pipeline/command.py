"""``python -m metakd pipeline --config configs/amazon/benchmark.yaml [--quick] [--seeds 1 2 3]``.

The command line of the benchmark pipeline (:mod:`metakd.pipeline`): reads and checks the config, applies
the command-line overrides, then lists the CPU plan (``--plan``: every cell's state and estimated CPU
minutes), runs the cells in priority order (within ``--max-cpu-minutes`` when given) and writes the report,
or only rebuilds the report from the result files (``--report-only``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from metakd.interrupt import Interrupted
from metakd.pipeline.config import BUDGETS, STUDIES, PipelineError, check_choices, load_pipeline_config
from metakd.pipeline.ledger import cost_model, cpu_plan, render_plan
from metakd.pipeline.markdown import REPORT_END_OF_PRINTED, budget_line
from metakd.pipeline.plan import plan_cells, selected
from metakd.pipeline.report import write_results
from metakd.pipeline.run import run_all


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m metakd pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="pipeline config, e.g. configs/amazon/benchmark.yaml")
    parser.add_argument("--quick", action="store_true", help="merge the config's `quick:` budget (minutes)")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the config's `seeds`)")
    parser.add_argument("--domains", nargs="+", help="only these target domains (columns); cells are shared")
    parser.add_argument("--studies", nargs="+", choices=list(STUDIES), help="override `studies`")
    parser.add_argument("--budgets", nargs="+", choices=list(BUDGETS), help="override `budgets`")
    parser.add_argument(
        "--kinds",
        nargs="+",
        choices=["teacher", "student"],
        help="run only these kinds of cells (the report covers all)",
    )
    parser.add_argument(
        "--cells",
        nargs="+",
        metavar="PATTERN",
        help="run only the cells whose name matches one of these shell patterns, e.g. 'teacher/single/*'",
    )
    parser.add_argument(
        "--runs-dir", help="override `runs_dir` (cells live in <runs_dir>/<name>/<seed>/<cell>)"
    )
    parser.add_argument("--results-dir", help="override `results_dir` (<name>.json / <name>.md)")
    parser.add_argument(
        "--store-dir",
        help="override `store_dir`, the local cell store configs share (default: `store` beside runs_dir)",
    )
    parser.add_argument(
        "--results-store",
        help="override `results_store`, the folder of the cells' result files (default <results_dir>/cells)",
    )
    parser.add_argument(
        "--plan",
        action="store_true",
        help="list every cell of every seed with its priority, state (done, reusable, to run) and estimated "
        "CPU minutes, then the totals, and exit",
    )
    parser.add_argument(
        "--max-cpu-minutes",
        type=float,
        metavar="N",
        help="run the cells still to run in the config's priority order, and stop before the first one whose "
        "estimated CPU minutes would take the run past N (it says what it left)",
    )
    parser.add_argument("--report-only", action="store_true", help="only rebuild the JSON/Markdown")
    parser.add_argument(
        "--methods",
        nargs="+",
        help="override `methods`: the students of the main study (and the teachers they need); names of the "
        "metakd.distill registry (e.g. none vanilla tinybert meta)",
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run the cells' fit/test in this process instead of subprocesses (config key `in_process`)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        help="run this many cells at a time on a local Ray instance (config key `workers`; default 1: one "
        "after another in this process). Needs pip install 'metakd[ray]'",
    )
    parser.add_argument(
        "--ray-address",
        help="run the cells on the Ray cluster at this address, e.g. ray://head:10001 or auto "
        "(config key `ray_address`); runs_dir must be on a filesystem the nodes share",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = load_pipeline_config(args.config, quick=args.quick)
    # command-line overrides (argparse's `choices` check --studies and --methods)
    for key in ("seeds", "studies", "methods", "domains", "runs_dir", "results_dir", "budgets", "store_dir",
                "results_store"):  # fmt: skip
        if getattr(args, key):
            config[key] = getattr(args, key)
    check_choices(args.config, config)
    if args.in_process:
        config["in_process"] = True
    for key in ("workers", "ray_address"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    workers = config.get("workers", 1)
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise PipelineError(f"`workers` (--workers) must be a whole number >= 1, got {workers!r}")
    if args.max_cpu_minutes is not None and args.max_cpu_minutes <= 0:
        raise PipelineError(f"--max-cpu-minutes must be a positive number, got {args.max_cpu_minutes:g}")
    if args.plan:
        cells = [cell for cell in plan_cells(config) if selected(cell, args.kinds, args.cells)]
        model = cost_model(config)
        print("\n".join(render_plan(config, cpu_plan(config, cells, model), model)), flush=True)
        return 0
    counts = {"failed": 0, "blocked": 0}
    if not args.report_only:
        print(f"pipeline {config['name']}: seeds {config['seeds']}, studies {config['studies']}", flush=True)
        print(f"budget: {budget_line(config)}", flush=True)
        try:
            counts = run_all(
                config,
                in_process=bool(config["in_process"]),
                workers=workers,
                ray_address=config.get("ray_address"),
                kinds=args.kinds,
                patterns=args.cells,
                max_cpu_minutes=args.max_cpu_minutes,
            )
        except Interrupted as stop:  # no report: the next call finishes the run and writes it
            words = ["pipeline", *(sys.argv[1:] if argv is None else argv)]
            stop.resume = f"to resume, run the same command: python -m metakd {shlex.join(words)}"
            raise
        print("cells: " + ", ".join(f"{k} {v}" for k, v in counts.items()), flush=True)
    json_path, md_path = write_results(config)
    report = md_path.read_text(encoding="utf-8")
    printed = report.split(REPORT_END_OF_PRINTED)[0].split("\nCompute:")[0]
    print("\n" + printed.strip() + "\n", flush=True)  # the tables, the intervals and the warnings
    print(f"wrote {json_path} and {md_path}", flush=True)
    for line in json.loads(json_path.read_text(encoding="utf-8")).get("warnings") or []:
        print(f"WARNING: {line}", file=sys.stderr, flush=True)
    return 1 if counts["failed"] or counts["blocked"] else 0
