"""Local hyperparameter sweeps without a W&B server: ``python -m metakd sweep SWEEP.yaml --count N``.

The same sweep YAML drives both ways of running a sweep:

* with a W&B server: ``wandb sweep sweeps/meta_teacher.yaml`` then ``wandb agent <id>``;
* locally: ``python -m metakd sweep sweeps/meta_teacher.yaml --count 8 [--out DIR]``, which asks W&B's
  open-source sweep engine (the ``sweeps`` package, ``pip install 'metakd[sweep]'``) for each trial's
  parameters (``sweeps.next_run``: grid, random or bayes, as the YAML says) and runs the YAML's
  ``command`` as a subprocess per trial.

Each trial gets its own folder ``DIR/trial-NNN/`` (``--trainer.default_root_dir``) with ``output.log``
(stdout and stderr) and ``sweep_metrics.jsonl``. The metric is read from that JSONL file, which
:class:`SweepMetricsRecorder` (added to the trial's ``trainer.callbacks``) fills with the scalar
``trainer.callback_metrics`` after every validation run; that works with any logger (or none). When it
is missing (a command that is not the metakd CLI), the driver falls back to the CSV logger's
``metrics.csv`` files under the trial folder. A trial's score is the best (per ``metric.goal``) value of
the sweep metric over its validations, as W&B's engine itself counts it.

Results: ``DIR/leaderboard.csv`` and ``DIR/leaderboard.md`` (rewritten after every trial), sorted by the
metric, with each trial's status: ``finished``, ``failed`` (non-zero exit, metric kept if any was
logged), ``no_metric`` (exited 0 but never logged the metric), ``timeout`` or ``interrupted`` (SIGINT
or SIGTERM: the trial gets the signal, the sweep stops, exit 130/143: :mod:`metakd.interrupt`). A failed
trial does not stop the sweep; the bayes engine imputes a value for it (``metric.impute``).

Command templating follows ``wandb agent``: ``${env}`` is dropped, ``${interpreter}`` is this Python,
``${program}`` the YAML's ``program``, ``${args}`` the trial's parameters as ``--name=value``,
``${args_no_hyphens}`` as ``name=value`` and ``${args_json}`` as one JSON string. ``--extra-args`` are
inserted just before ``${args}`` (so that the sweep's parameters still win over an extra ``--config``);
the per-trial ``--trainer.default_root_dir`` and the metrics recorder come last.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pytorch_lightning.callbacks import Callback

from metakd.errors import MetakdError
from metakd.interrupt import Interrupted, run_child

METRICS_ENV = "METAKD_SWEEP_METRICS"
METRICS_FILE = "sweep_metrics.jsonl"
RECORDER_CLASS = "metakd.sweep.SweepMetricsRecorder"
DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]
_MACRO = re.compile(r"\$\{[^}]*\}")


class SweepError(MetakdError, ValueError):
    """A sweep file or command line that cannot be run."""


# --------------------------------------------------------------------------------- trial side
def scalar_metrics(metrics: Any, prefix: str = "") -> dict[str, float]:
    """The scalar entries of ``trainer.callback_metrics`` whose name starts with ``prefix``, as floats."""
    out: dict[str, float] = {}
    for name, value in metrics.items():
        if not name.startswith(prefix) or (hasattr(value, "numel") and value.numel() != 1):
            continue
        try:
            out[name] = float(value)
        except (TypeError, ValueError):
            continue
    return out


class SweepMetricsRecorder(Callback):
    """Appends the scalar ``trainer.callback_metrics`` after each validation run to a JSON Lines file.

    The file is ``path``, or ``$METAKD_SWEEP_METRICS`` (set by the sweep driver); without either the
    callback does nothing. Each line: ``{"step": ..., "epoch": ..., "<metric>": value, ...}``.
    """

    def __init__(self, path: str | None = None) -> None:
        self.path = path

    def _target(self) -> str | None:
        return self.path or os.environ.get(METRICS_ENV) or None

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        target = self._target()
        if target is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        record: dict[str, Any] = {"step": int(trainer.global_step), "epoch": int(trainer.current_epoch)}
        record.update(scalar_metrics(trainer.callback_metrics))
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        with open(target, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


# ------------------------------------------------------------------------------- sweep config
def load_sweep_config(path: str | os.PathLike) -> dict[str, Any]:
    """The sweep YAML as a dict (not validated)."""
    with open(path, encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    if not isinstance(config, dict):
        raise SweepError(f"{path}: a sweep file must be a YAML mapping, got {type(config).__name__}")
    return config


# What metakd uses of W&B's sweep engine: a module named `sweeps` without them is something else (run
# from the metakd repository, `import sweeps` finds its `sweeps/` folder of YAML files as a namespace
# package when the engine is not installed).
SWEEP_ENGINE_API = ("next_run", "SweepConfig", "schema_violations_from_proposed_config")
SWEEP_INSTALL_HINT = (
    "local sweeps need W&B's sweep engine: pip install 'metakd[sweep]' (the `sweeps` package)"
)


def _import_sweeps() -> Any:
    """W&B's sweep engine (the ``sweeps`` package), recognised by what it provides."""
    try:
        with warnings.catch_warnings():  # sweeps 0.2 declares a pydantic-1 style config
            warnings.simplefilter("ignore")
            import sweeps
    except ImportError as err:
        raise SweepError(SWEEP_INSTALL_HINT) from err
    missing = [name for name in SWEEP_ENGINE_API if not hasattr(sweeps, name)]
    if missing:
        locations = [getattr(sweeps, "__file__", None) or "", *map(str, getattr(sweeps, "__path__", []))]
        where = ", ".join(dict.fromkeys(filter(None, locations)))
        raise SweepError(
            f"{SWEEP_INSTALL_HINT}; the `sweeps` module found ({where or 'unknown location'}) is not the "
            f"engine: it has no {', '.join(missing)}"
        )
    return sweeps


def sweep_engine_available() -> bool:
    """Whether W&B's sweep engine can be imported (not just any module named ``sweeps``)."""
    try:
        _import_sweeps()
    except SweepError:
        return False
    return True


def schema_violations(config: dict[str, Any]) -> list[str]:
    """Messages for everything in ``config`` that W&B's sweep schema rejects (empty: valid)."""
    sweeps = _import_sweeps()
    return list(sweeps.schema_violations_from_proposed_config(config))


def validate_sweep_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config with the schema's defaults filled in; raises :class:`SweepError` when invalid."""
    sweeps = _import_sweeps()
    problems = schema_violations(config)
    if problems:
        raise SweepError("invalid sweep config:\n  " + "\n  ".join(problems))
    return dict(sweeps.SweepConfig(config))


# ------------------------------------------------------------------------------ command lines
def _plain(value: Any) -> Any:
    """numpy scalars (what the engine samples) as Python values."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        try:
            return value.item()
        except (TypeError, ValueError):
            return value
    return value


def format_value(value: Any) -> str:
    """A parameter value as LightningCLI (jsonargparse) reads it on the command line."""
    value = _plain(value)
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    return json.dumps(value)


def trial_params(run_config: dict[str, Any]) -> dict[str, Any]:
    """``{name: value}`` from a SweepRun's ``{name: {"value": value}}`` config."""
    return {
        name: _plain(entry["value"] if isinstance(entry, dict) and "value" in entry else entry)
        for name, entry in run_config.items()
    }


def build_command(
    sweep_config: dict[str, Any],
    params: dict[str, Any],
    extra_args: list[str] | None = None,
    trailing_args: list[str] | None = None,
    interpreter: str | None = None,
) -> list[str]:
    """The argv of one trial from the sweep's ``command`` (see the module docstring for the macros).

    ``extra_args`` go just before the parameters; ``trailing_args`` after everything.
    """
    command = sweep_config.get("command") or DEFAULT_COMMAND
    if not isinstance(command, list) or not all(isinstance(item, str) for item in command):
        raise SweepError(f"the sweep's command must be a list of strings, got {command!r}")
    extra = list(extra_args or [])
    args = [f"--{name}={format_value(value)}" for name, value in params.items()]
    argv: list[str] = []
    placed_extra = False
    for item in command:
        if item == "${env}":
            continue
        if item == "${interpreter}":
            argv.append(interpreter or sys.executable)
        elif item == "${program}":
            program = sweep_config.get("program")
            if not program:
                raise SweepError("the sweep's command uses ${program} but the sweep file has no `program`")
            argv.append(str(program))
        elif item in ("${args}", "${args_no_hyphens}", "${args_json}"):
            if not placed_extra:
                argv.extend(extra)
                placed_extra = True
            if item == "${args}":
                argv.extend(args)
            elif item == "${args_no_hyphens}":
                argv.extend(a[2:] for a in args)
            else:
                argv.append(json.dumps({name: _plain(value) for name, value in params.items()}))
        elif _MACRO.search(item):
            raise SweepError(
                f"unsupported macro in the sweep's command: {item!r} (local sweeps know ${{env}}, "
                "${interpreter}, ${program}, ${args}, ${args_no_hyphens}, ${args_json})"
            )
        else:
            argv.append(item)
    if not placed_extra:
        argv.extend(extra)
    argv.extend(trailing_args or [])
    return argv


def is_lightning_cli(argv: list[str]) -> bool:
    """Whether ``argv`` runs ``python -m metakd`` / ``metakd`` (so Lightning options may be appended)."""
    for i, item in enumerate(argv):
        if item == "-m" and i + 1 < len(argv) and argv[i + 1] == "metakd":
            return True
        if Path(item).name == "metakd":
            return True
    return False


# ---------------------------------------------------------------------------------- metrics
def read_metric_history(trial_dir: Path, metric: str) -> list[dict[str, float]]:
    """The trial's logged values of ``metric`` as ``[{metric: value}, ...]`` (see the module docstring)."""
    history: list[dict[str, float]] = []
    recorded = trial_dir / METRICS_FILE
    if recorded.is_file():
        for line in recorded.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if metric in record:
                history.append({metric: float(record[metric])})
        if history:
            return history
    for path in sorted(trial_dir.rglob("metrics.csv")):
        with open(path, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                value = row.get(metric)
                if value not in (None, ""):
                    try:
                        history.append({metric: float(value)})
                    except ValueError:
                        continue
    return history


def best_value(history: list[dict[str, float]], metric: str, goal: str) -> float | None:
    values = [h[metric] for h in history if metric in h and math.isfinite(h[metric])]
    if not values:
        return None
    return max(values) if goal == "maximize" else min(values)


# ------------------------------------------------------------------------------ leaderboard
@dataclass
class Trial:
    index: int
    params: dict[str, Any]
    argv: list[str]
    directory: Path
    status: str = "pending"
    returncode: int | None = None
    metric: float | None = None
    duration_s: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.directory.name


def sort_trials(trials: list[Trial], goal: str) -> list[Trial]:
    """Best metric first (per goal); trials without a metric last, in order."""
    sign = -1.0 if goal == "maximize" else 1.0
    return sorted(trials, key=lambda t: (t.metric is None, sign * (t.metric or 0.0), t.index))


def write_leaderboard(out_dir: Path, trials: list[Trial], metric: str, goal: str) -> None:
    """``leaderboard.csv`` and ``leaderboard.md`` in ``out_dir``, sorted by the metric."""
    names: list[str] = []
    for trial in trials:
        names.extend(n for n in trial.params if n not in names)
    header = ["rank", "trial", "status", metric, "duration_s", *names, "dir"]
    rows = []
    for rank, trial in enumerate(sort_trials(trials, goal), start=1):
        rows.append(
            [
                rank,
                trial.name,
                trial.status,
                "" if trial.metric is None else f"{trial.metric:.6g}",
                f"{trial.duration_s:.1f}",
                *[format_value(trial.params[n]) if n in trial.params else "" for n in names],
                str(trial.directory),
            ]
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "leaderboard.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    lines = [
        f"# Sweep leaderboard ({metric}, {goal})",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |")
    (out_dir / "leaderboard.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------- driver
def run_trial(trial: Trial, metric: str, goal: str, env: dict[str, str], timeout: float | None) -> Trial:
    trial.directory.mkdir(parents=True, exist_ok=True)
    (trial.directory / "command.txt").write_text(shlex.join(trial.argv) + "\n", encoding="utf-8")
    start = time.monotonic()
    with open(trial.directory / "output.log", "w", encoding="utf-8") as log:
        try:
            # the trial gets a stop signal forwarded (metakd.interrupt); its exit 130/143 stops the sweep
            trial.returncode = run_child(
                trial.argv, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout
            )
        except Interrupted:
            trial.status = "interrupted"
            trial.duration_s = time.monotonic() - start
            trial.history = read_metric_history(trial.directory, metric)
            trial.metric = best_value(trial.history, metric, goal)
            raise
        except subprocess.TimeoutExpired:
            trial.returncode = None
            trial.status = "timeout"
        except OSError as err:
            log.write(f"\ncould not start the trial: {err}\n")
            trial.returncode = None
            trial.status = "failed"
    trial.duration_s = time.monotonic() - start
    trial.history = read_metric_history(trial.directory, metric)
    trial.metric = best_value(trial.history, metric, goal)
    if trial.status == "pending":
        if trial.returncode != 0:
            trial.status = "failed"
        elif trial.metric is None:
            trial.status = "no_metric"
        else:
            trial.status = "finished"
    return trial


def run_sweep(
    sweep_file: str | os.PathLike,
    count: int,
    out_dir: str | os.PathLike,
    extra_args: list[str] | None = None,
    seed: int | None = None,
    wandb_mode: str = "offline",
    timeout: float | None = None,
    dry_run: bool = False,
) -> list[Trial]:
    """Run ``count`` trials of the sweep (fewer when a grid is exhausted); returns them in run order."""
    sweeps = _import_sweeps()
    raw_config = load_sweep_config(sweep_file)
    config = validate_sweep_config(raw_config)
    metric_section = config.get("metric") or {}
    metric = metric_section.get("name")
    if not metric:
        raise SweepError(f"{sweep_file}: a local sweep needs `metric: {{name: ..., goal: ...}}`")
    goal = metric_section.get("goal", "minimize")
    if seed is not None:
        import random

        import numpy as np

        random.seed(seed)
        np.random.seed(seed)
    out = Path(out_dir)
    env = dict(os.environ)
    env["WANDB_MODE"] = wandb_mode
    env.setdefault("PYTHONUNBUFFERED", "1")
    trials: list[Trial] = []
    runs: list[Any] = []
    for index in range(count):
        with warnings.catch_warnings():  # the GP's sklearn convergence chatter
            warnings.simplefilter("ignore")
            suggestion = sweeps.next_run(raw_config, runs, validate=True)
        if suggestion is None:  # grid exhausted
            break
        params = trial_params(suggestion.config)
        directory = (out / f"trial-{index:03d}").resolve()
        probe = build_command(config, params, extra_args)
        trailing = []
        if is_lightning_cli(probe):
            trailing = [f"--trainer.default_root_dir={directory}", f"--trainer.callbacks+={RECORDER_CLASS}"]
        argv = build_command(config, params, extra_args, trailing)
        trial = Trial(index=index, params=params, argv=argv, directory=directory)
        if dry_run:
            print(shlex.join(argv))
            trial.status = "dry_run"
            trials.append(trial)
            continue
        print(f"[sweep] {trial.name}: {shlex.join(argv)}", flush=True)
        run_env = dict(env)
        run_env[METRICS_ENV] = str(directory / METRICS_FILE)
        run_env.setdefault("WANDB_DIR", str(directory))
        try:
            run_trial(trial, metric, goal, run_env, timeout)
        except Interrupted as stop:  # the leaderboard keeps the finished trials and the interrupted one
            write_leaderboard(out, [*trials, trial], metric, goal)
            stop.detail = (
                f"{len(trials)} of {count} trials finished, {trial.name} interrupted; "
                f"leaderboard: {out / 'leaderboard.md'}"
            )
            stop.resume = "a new call starts a new sweep (a local sweep does not resume)"
            raise
        shown = "-" if trial.metric is None else f"{trial.metric:.4f}"
        print(f"[sweep] {trial.name}: {trial.status}, {metric}={shown} ({trial.duration_s:.0f}s)", flush=True)
        trials.append(trial)
        suggestion.name = trial.name
        suggestion.state = "finished" if trial.status == "finished" else "failed"
        suggestion.summary_metrics = trial.history[-1] if trial.history else {}
        suggestion.history = trial.history
        runs.append(suggestion)
        write_leaderboard(out, trials, metric, goal)
    return trials


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m metakd sweep",
        description="Run a W&B sweep file locally (no server): W&B's sweep engine proposes the parameters, "
        "each trial runs the file's command as a subprocess; writes OUT/leaderboard.{csv,md}.",
    )
    parser.add_argument("sweep_file", help="sweep YAML (e.g. sweeps/meta_teacher.yaml)")
    parser.add_argument("--count", type=int, required=True, help="number of trials")
    parser.add_argument(
        "--out", default=None, help="output folder (default: runs/sweeps/<sweep name>-<date-time>)"
    )
    parser.add_argument(
        "--extra-args",
        action="append",
        default=[],
        help="extra arguments for every trial, inserted before the sweep parameters (shell-quoted string; "
        'repeatable), e.g. --extra-args "--config my_overrides.yaml"',
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of the parameter sampling")
    parser.add_argument("--wandb-mode", default="offline", help="WANDB_MODE of the trials (default offline)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per trial before it is killed")
    parser.add_argument("--dry-run", action="store_true", help="print the trials' commands without running")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m metakd sweep``: 0 when at least one trial finished with a metric."""
    args = build_parser().parse_args(argv)
    if args.count < 1:
        raise SweepError(f"--count must be >= 1, got {args.count}")
    extra = [token for chunk in args.extra_args for token in shlex.split(chunk)]
    out = args.out or os.path.join(
        "runs", "sweeps", f"{Path(args.sweep_file).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    try:
        trials = run_sweep(
            args.sweep_file,
            args.count,
            out,
            extra_args=extra,
            seed=args.seed,
            wandb_mode=args.wandb_mode,
            timeout=args.timeout,
            dry_run=args.dry_run,
        )
    except OSError as err:  # e.g. the sweep file or the output folder; printed by the error boundary
        raise SweepError(str(err)) from err
    if args.dry_run:
        return 0
    print(f"[sweep] leaderboard: {Path(out) / 'leaderboard.md'}")
    return 0 if any(t.status == "finished" for t in trials) else 1
