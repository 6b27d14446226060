"""``python -m metakd pipeline --config configs/amazon/benchmark.yaml [--quick] [--seeds 1 2 3]``.

Trains the paper's comparison on one split, seed and step budget and writes a results JSON and a
Markdown table (rows = methods, columns = target domains + average; test accuracy, selected on dev):

- teachers: single-domain (one per domain: ``weighting: none``, ``domain_loss: none``,
  ``data.target_domain``), mixed-domain (``weighting: none``, ``domain_loss: none``), meta-teacher
  (the defaults);
- students per domain, one row per method of ``methods`` (default: the paper's fine-tuning without KD,
  vanilla KD, TinyBERT-KD and Meta-KD; or any other method of the ``metakd.distill`` registry),
  each distilled from the teacher its registry entry names (``teacher_role``: the mixed-domain teacher,
  that domain's single-domain teacher, the meta-teacher, or none) and labelled by its entry;
- optional studies (``studies: [main, scarcity, zero_shot]``): data scarcity (Meta-KD vs TinyBERT-KD
  on one domain at several ``train_fraction``; PNG plot when matplotlib is installed) and zero-shot
  (a meta-teacher trained without the target domain, the student distilled with ``teacher_domain``).

Each *cell* is one model: a folder ``<runs_dir>/<name>/<seed>/<cell>`` with ``cell.yaml`` (the exact,
fully merged LightningCLI config), the logs of ``python -m metakd fit --config cell.yaml`` and
``python -m metakd test --config cell.yaml --ckpt_path best`` (two subprocesses), and ``result.json``
once both succeeded. A cell with a ``result.json`` is skipped, so an interrupted pipeline continues
where it stopped (a fit cut off mid-way resumes from its ``last.ckpt``). Test metrics are written by
:class:`TestMetricsWriter`, a callback placed in the cell's config (no log parsing).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from metakd.utils import write_json

try:  # the callback needs Lightning; the rest of the module does not
    from pytorch_lightning import Callback as _Callback
except ImportError:  # pragma: no cover
    _Callback = object  # type: ignore[assignment,misc]

RESULT_FILE = "result.json"
TEST_METRICS_FILE = "test_metrics.json"

DEFAULT_METHODS = ("none", "vanilla", "tinybert", "meta")
"""The Meta-KD paper's comparison: the default ``methods`` of a pipeline config."""
TEACHER_ROWS = {
    "single": ("teacher_single", "Teacher: single-domain"),
    "mixed": ("teacher_mixed", "Teacher: mixed-domain"),
    "meta": ("teacher_meta", "Teacher: meta-teacher"),
}
"""Teacher roles the pipeline trains (``Distiller.teacher_role``), as table rows."""


def method_entry(name: str) -> Any:
    """The registry entry (a ``Distiller`` class) of a method name, with a clear error."""
    from metakd.distill import DISTILLERS

    if name not in DISTILLERS:
        raise PipelineError(f"unknown method {name!r} in `methods`; {DISTILLERS.choices_hint(name)}")
    cls = DISTILLERS.get(name)
    if cls.teacher_role is not None and cls.teacher_role not in TEACHER_ROWS:
        raise PipelineError(
            f"method {name!r} names teacher_role {cls.teacher_role!r}; "
            f"the pipeline trains {sorted(TEACHER_ROWS)}"
        )
    return cls


def registered_methods() -> list[str]:
    from metakd.distill import DISTILLERS

    return DISTILLERS.names()


VARIANT_KEYS = ("method", "label", "teacher", "model", "data", "search")


@dataclass(frozen=True)
class RowSpec:
    """A student row of the main table: a registry method, or a config ``variants`` entry (a method with
    its own teacher role, Student and data overrides and label)."""

    name: str
    method: str
    label: str
    teacher_role: str | None
    model: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    search: str | None = None  # a search config: the architecture is searched per domain first


def row_spec(name: str, variants: dict[str, Any] | None = None) -> RowSpec:
    """The row ``name`` of ``methods``: a ``variants`` entry, else the registry method of that name."""
    variant = (variants or {}).get(name)
    if variant is None:
        entry = method_entry(name)
        return RowSpec(name, name, entry.label, entry.teacher_role)
    entry = method_entry(variant["method"])
    role = variant.get("teacher", entry.teacher_role)
    role = None if role in (None, "none") else role
    if role is not None and role not in TEACHER_ROWS:
        raise PipelineError(
            f"variants.{name}.teacher must be one of {sorted(TEACHER_ROWS)} or none, got {role!r}"
        )
    return RowSpec(
        name,
        variant["method"],
        str(variant.get("label", entry.label)),
        role,
        dict(variant.get("model") or {}),
        dict(variant.get("data") or {}),
        variant.get("search"),
    )


def main_rows(methods: list[str], variants: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """``(row key, label)`` of the main table: the teachers the rows need, then one row per entry of
    ``methods``, labelled from the registry or the variant (``Student: <label> (<teacher>)``)."""
    from metakd.distill import TEACHER_ROLES

    specs = [row_spec(method, variants) for method in methods]
    roles = {spec.teacher_role for spec in specs}
    rows = [TEACHER_ROWS[role] for role in TEACHER_ROWS if role in roles]
    for spec in specs:
        label = f"Student: {spec.label}"
        if spec.teacher_role is not None:
            label += f" ({TEACHER_ROLES[spec.teacher_role]})"
        rows.append((f"student_{spec.name}", label))
    return rows


class PipelineError(RuntimeError):
    """A bad pipeline configuration."""


# --------------------------------------------------------------------------------------------------
# callback used inside the cells' test runs


class TestMetricsWriter(_Callback):  # type: ignore[misc,valid-type]
    """Writes ``trainer.callback_metrics`` of a test run (``test/*``) to ``path`` as JSON, atomically."""

    __test__ = False  # not a pytest class

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def on_test_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.is_global_zero:
            return
        from metakd.sweep import scalar_metrics

        metrics = scalar_metrics(trainer.callback_metrics, prefix="test/")
        payload = {"metrics": metrics, "ckpt_path": str(getattr(trainer, "ckpt_path", None) or "")}
        write_json(Path(self.path), payload)


# --------------------------------------------------------------------------------------------------
# config


def deep_merge(base: Any, override: Any) -> Any:
    """``override`` merged into a copy of ``base`` (mappings recursively; other values replace)."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = copy.deepcopy(base)
        for key, value in override.items():
            merged[key] = deep_merge(merged[key], value) if key in merged else copy.deepcopy(value)
        return merged
    return copy.deepcopy(override)


def _read_extended(path: Path) -> dict[str, Any]:
    """The YAML of ``path`` merged onto the file its ``extends:`` names (recursively), unprocessed."""
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise PipelineError(f"cannot read the pipeline config {path}: {err}") from err
    if not isinstance(config, dict):
        raise PipelineError(f"{path}: a pipeline config is a mapping, got {type(config).__name__}")
    if "extends" in config:
        config = deep_merge(_read_extended(path.parent / config.pop("extends")), config)
    return config


def load_pipeline_config(path: str | Path, quick: bool = False) -> dict[str, Any]:
    """Read a pipeline config; ``extends: <file>`` merges onto another one, ``quick`` (or ``--quick``)
    merges the ``quick:`` section and appends ``_quick`` to the name."""
    path = Path(path)
    config = _read_extended(path)
    if quick or config.pop("apply_quick", False):
        overrides = config.get("quick") or {}
        config = deep_merge(config, overrides)
        config["name"] = f"{config.get('name', config.get('corpus', 'benchmark'))}_quick"
        config["is_quick"] = True
    config.pop("quick", None)
    for key in ("teacher", "student", "domains"):
        if key not in config:
            raise PipelineError(f"{path}: the pipeline config needs `{key}`")
    config.setdefault("corpus", "benchmark")
    config.setdefault("name", config["corpus"])
    config.setdefault("studies", ["main"])
    config.setdefault("seeds", [42])
    config.setdefault("runs_dir", "runs/benchmark")
    config.setdefault("results_dir", "benchmarks/results")
    config.setdefault("methods", list(DEFAULT_METHODS))
    config.setdefault("variants", {})
    config.setdefault("in_process", False)
    check_choices(path, config)
    return config


def check_choices(path: str | Path, config: dict[str, Any]) -> None:
    """``studies`` and ``methods`` name known ones."""
    unknown = set(config["studies"]) - {"main", "scarcity", "zero_shot"}
    if unknown:
        raise PipelineError(
            f"{path}: unknown studies {sorted(unknown)}; choose from main, scarcity, zero_shot"
        )
    methods = config["methods"]
    if not isinstance(methods, list) or not methods or len(set(methods)) != len(methods):
        raise PipelineError(
            f"{path}: `methods` must be a non-empty list of distinct method names, got {methods!r}"
        )
    variants = config.get("variants") or {}
    if not isinstance(variants, dict):
        raise PipelineError(f"{path}: `variants` must be a mapping of row name -> {{method, label, ...}}")
    for name, variant in variants.items():
        if not isinstance(variant, dict) or "method" not in variant:
            raise PipelineError(
                f"{path}: variants.{name} must be a mapping with `method` (a registry method)"
            )
        unknown = sorted(set(variant) - set(VARIANT_KEYS))
        if unknown:
            raise PipelineError(
                f"{path}: variants.{name} has unknown keys {unknown}; known: {list(VARIANT_KEYS)}"
            )
        if name in registered_methods():
            raise PipelineError(
                f"{path}: variants.{name} has the name of a registry method; pick another name"
            )
    for method in methods:
        try:
            row_spec(method, variants)
        except PipelineError as err:
            raise PipelineError(f"{path}: {err}") from None


# --------------------------------------------------------------------------------------------------
# cells


@dataclass
class Cell:
    """One model of the benchmark: its name, kind (teacher/student), overrides and dependencies."""

    name: str
    kind: str  # "teacher" | "student"
    overrides: dict[str, Any]
    needs: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


def fraction_tag(fraction: float) -> str:
    return f"{round(fraction * 100):d}pct"


def student_cell_name(method: str, domain: str, fraction: float | None = None) -> str:
    """``student/<method>/<domain>``; below 100% of the data ``student/<method>_<N>pct/<domain>``."""
    if fraction is not None and fraction < 1.0:
        return f"student/{method}_{fraction_tag(fraction)}/{domain}"
    return f"student/{method}/{domain}"


def scarcity_settings(config: dict[str, Any]) -> tuple[str, list[str], list[float]]:
    """The scarcity study's target domain, student methods and training-data fractions."""
    scarcity = config.get("scarcity") or {}
    fractions = [float(f) for f in scarcity.get("fractions", [0.1, 0.2, 0.5, 1.0])]
    return (
        scarcity.get("domain", config["domains"][0]),
        list(scarcity.get("methods", ["tinybert", "meta"])),
        fractions,
    )


def zero_shot_settings(config: dict[str, Any]) -> tuple[str, list[str], str]:
    """The zero-shot study's target domain, the teacher's domains (all others) and the stand-in domain."""
    zero = config.get("zero_shot") or {}
    domain = zero.get("domain", config["domains"][0])
    others = [d for d in zero.get("all_domains", config["domains"]) if d != domain]
    return domain, others, zero.get("teacher_domain", others[0])


def zero_shot_cell_name(domain: str) -> str:
    return f"student/meta_zeroshot/{domain}"


def plan_cells(config: dict[str, Any]) -> list[Cell]:
    """Every cell of one seed, teachers first, without duplicates (a study reuses the main cells)."""
    domains: list[str] = list(config["domains"])
    studies = config["studies"]
    cells: dict[str, Cell] = {}

    def teacher(name: str, overrides: dict[str, Any], **info: Any) -> str:
        cells.setdefault(name, Cell(name, "teacher", overrides, info=info))
        return name

    def student(name: str, overrides: dict[str, Any], needs: list[str], **info: Any) -> str:
        cells.setdefault(name, Cell(name, "student", overrides, needs, info))
        return name

    plain = {"model": {"init_args": {"weighting": "none", "domain_loss": "none"}}}

    def single_teacher(domain: str) -> str:
        overrides = deep_merge(plain, {"data": {"init_args": {"target_domain": domain}}})
        return teacher(f"teacher/single/{domain}", overrides, row="teacher_single", domain=domain)

    def mixed_teacher() -> str:
        return teacher("teacher/mixed", plain, row="teacher_mixed")

    def meta_teacher() -> str:
        return teacher("teacher/meta", {}, row="teacher_meta")

    teacher_of_role = {"mixed": mixed_teacher, "meta": meta_teacher}

    def student_cell(method: str, domain: str, fraction: float | None = None, **info: Any) -> str:
        spec = row_spec(method, config.get("variants"))
        data: dict[str, Any] = {"target_domain": domain, **copy.deepcopy(spec.data)}
        name = student_cell_name(method, domain, fraction)
        if fraction is not None and fraction < 1.0:
            data["train_fraction"] = fraction
        model: dict[str, Any] = {"distillation": spec.method, **copy.deepcopy(spec.model)}
        needs: list[str] = []
        role = spec.teacher_role
        if role is None:
            model["teacher_ckpt"] = None
        else:  # cell_config sets teacher_ckpt to the needed teacher's checkpoint, per seed
            needs = [single_teacher(domain) if role == "single" else teacher_of_role[role]()]
        info.setdefault("row", f"student_{method}")
        if fraction is not None:
            info["train_fraction"] = fraction
        if spec.search is not None:  # the searched architecture of this domain (metakd.search)
            searched = search_cell_name(method, domain)
            overrides = {"config": spec.search, "data": {"init_args": {"target_domain": domain}}}
            info_search = {"row": f"search_{method}", "domain": domain}
            cells.setdefault(searched, Cell(searched, "search", overrides, list(needs), info_search))
            needs = [*needs, searched]
        return student(
            name, {"model": {"init_args": model}, "data": {"init_args": data}}, needs, domain=domain, **info
        )

    if "main" in studies:
        methods = list(config.get("methods", DEFAULT_METHODS))
        roles = {row_spec(method, config.get("variants")).teacher_role for method in methods}
        if "single" in roles:  # the teachers of the chosen methods, each also a row of the table
            for domain in domains:
                single_teacher(domain)
        if "mixed" in roles:
            mixed_teacher()
        if "meta" in roles:
            meta_teacher()
        for method in methods:
            for domain in domains:
                student_cell(method, domain)
    if "scarcity" in studies:
        domain, methods, fractions = scarcity_settings(config)
        for method in methods:
            for fraction in fractions:
                student_cell(method, domain, fraction, study="scarcity")
    if "zero_shot" in studies:
        domain, others, stand_in = zero_shot_settings(config)
        without = teacher(
            f"teacher/meta_without_{domain}",
            {"data": {"init_args": {"domains": others}}},
            study="zero_shot",
            domain=domain,
        )
        student(
            zero_shot_cell_name(domain),
            {
                "model": {"init_args": {"distillation": "meta", "teacher_domain": stand_in}},
                "data": {"init_args": {"target_domain": domain}},
            },
            [without],
            study="zero_shot",
            domain=domain,
            teacher_domain=stand_in,
        )
        meta_teacher()
        student_cell("meta", domain, study="zero_shot_reference")
    order = {"teacher": 0, "search": 1, "student": 2}
    return sorted(cells.values(), key=lambda c: order[c.kind])  # stable: the planned order within a kind


def search_cell_name(method: str, domain: str) -> str:
    return f"search/{method}/{domain}"


def cell_dir(config: dict[str, Any], seed: int, cell: str) -> Path:
    return Path(config["runs_dir"]) / config["name"] / str(seed) / cell


def best_checkpoint(config: dict[str, Any], seed: int, cell: str) -> Path:
    return cell_dir(config, seed, cell) / "checkpoints" / "best.ckpt"


def cell_config(config: dict[str, Any], seed: int, cell: Cell) -> dict[str, Any]:
    """The full LightningCLI config of a cell: base config <- budget <- cell overrides <- paths (a search
    cell: its search config <- target domain <- teacher, out, seed)."""
    if cell.kind == "search":
        return search_cell_config(config, seed, cell)
    merged = deep_merge(config[cell.kind], cell.overrides)
    directory = cell_dir(config, seed, cell.name)
    merged["seed_everything"] = int(seed)
    trainer = merged.setdefault("trainer", {})
    trainer["default_root_dir"] = str(directory)
    callbacks = list(trainer.get("callbacks") or [])
    callbacks.append(
        {
            "class_path": "metakd.pipeline.TestMetricsWriter",
            "init_args": {"path": str(directory / TEST_METRICS_FILE)},
        }
    )
    trainer["callbacks"] = callbacks
    init_args = merged.setdefault("model", {}).setdefault("init_args", {})
    if cell.needs:
        init_args["teacher_ckpt"] = str(best_checkpoint(config, seed, cell.needs[0]))
    for need in cell.needs[1:]:
        if need.startswith("search/"):  # the architecture this domain's search derived
            student_model = init_args.setdefault("student_model", {})
            architecture = str(cell_dir(config, seed, need) / "architecture.json")
            student_model.setdefault("init_args", {})["architecture"] = architecture
    return merged


def search_cell_config(config: dict[str, Any], seed: int, cell: Cell) -> dict[str, Any]:
    """The config of ``python -m metakd search`` for one domain (``variants.<row>.search`` names the file;
    its ``data:`` defaults to the students' ``data:``)."""
    path = Path(cell.overrides["config"])
    try:
        base = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise PipelineError(f"cannot read the search config {path} of {cell.name}: {err}") from err
    # the students' data (same corpus, length, cache) unless the search config gives its own
    merged = deep_merge(
        deep_merge({"data": config["student"].get("data", {})}, base), {"data": cell.overrides["data"]}
    )
    merged["teacher_ckpt"] = str(best_checkpoint(config, seed, cell.needs[0]))
    merged["out"] = str(cell_dir(config, seed, cell.name))
    merged["seed"] = int(seed)
    return merged


# --------------------------------------------------------------------------------------------------
# running


@contextlib.contextmanager
def _output_to(log_path: Path) -> Iterator[Any]:
    """Send this process's output to ``log_path`` for the duration of the block: ``sys.stdout``/``stderr``
    and file descriptors 1 and 2 (loggers bound to the old streams, native code)."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(log_path, "w", encoding="utf-8") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                    yield log
            finally:
                for stream in (sys.stdout, sys.stderr):
                    stream.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        for fd in saved:
            os.close(fd)


def _run_cli(args: list[str], log_path: Path, in_process: bool, timeout: float | None) -> int:
    """``python -m metakd <args>`` in a subprocess, or in this process (no interpreter start-up and
    imports per cell; ``timeout`` does not apply); the output goes to ``log_path`` either way."""
    if in_process:
        from metakd.cli import main as cli_main

        with _output_to(log_path):
            try:
                return int(cli_main(args) or 0)
            except SystemExit as exit_:
                return int(exit_.code or 0) if not isinstance(exit_.code, str) else 1
            except Exception:  # noqa: BLE001 - a failed cell must not stop the pipeline
                traceback.print_exc()
                return 1
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    env.setdefault("WANDB_MODE", "disabled")
    with open(log_path, "w", encoding="utf-8") as log:
        try:
            process = subprocess.run(
                [sys.executable, "-m", "metakd", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            log.write(f"\n[pipeline] timed out after {timeout} s\n")
            return 124
    return process.returncode


def run_cell(
    config: dict[str, Any], seed: int, cell: Cell, in_process: bool = False
) -> tuple[str, float, str]:
    """Fit and test one cell; returns (status, seconds, message), status done|skipped|failed|blocked."""
    directory = cell_dir(config, seed, cell.name)
    result_path = directory / RESULT_FILE
    full = cell_config(config, seed, cell)
    if result_path.is_file():
        stored = json.loads(result_path.read_text(encoding="utf-8")).get("config")
        if stored == json.loads(json.dumps(full)):
            return "skipped", 0.0, ""
        # A finished cell is reused only for the very config it was run with: a changed budget or
        # hyperparameter must not be reported with an older run's numbers.
        return "failed", 0.0, f"{result_path} comes from another config than this cell's; remove {directory}"
    for need in cell.needs:
        if not (cell_dir(config, seed, need) / RESULT_FILE).is_file():
            return "blocked", 0.0, f"needs {need}"
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / "cell.yaml"
    config_path.write_text(yaml.safe_dump(full, sort_keys=False), encoding="utf-8")
    timeout = config.get("cell_timeout_s")
    start = time.monotonic()
    if cell.kind == "search":
        if (
            _run_cli(["search", "--config", str(config_path)], directory / "search.log", in_process, timeout)
            != 0
        ):
            return "failed", time.monotonic() - start, f"search failed, see {directory / 'search.log'}"
        seconds = time.monotonic() - start
        architecture = json.loads((directory / "architecture.json").read_text(encoding="utf-8"))
        payload = {"cell": cell.name, "kind": cell.kind, "seed": seed, "info": cell.info, "metrics": {},
                   "architecture": architecture, "seconds": round(seconds, 1), "config": full}  # fmt: skip
        write_json(result_path, payload)
        return "done", seconds, ""
    fit_marker = directory / "fit.done"
    if not fit_marker.is_file():
        args = ["fit", "--config", str(config_path)]
        if (directory / "checkpoints" / "last.ckpt").is_file():
            args += ["--ckpt_path", "last"]  # an interrupted fit continues
        if _run_cli(args, directory / "fit.log", in_process, timeout) != 0:
            return "failed", time.monotonic() - start, f"fit failed, see {directory / 'fit.log'}"
        fit_marker.write_text("ok\n", encoding="utf-8")
    metrics_path = directory / TEST_METRICS_FILE
    metrics_path.unlink(missing_ok=True)
    args = ["test", "--config", str(config_path), "--ckpt_path", "best"]
    if _run_cli(args, directory / "test.log", in_process, timeout) != 0 or not metrics_path.is_file():
        return "failed", time.monotonic() - start, f"test failed, see {directory / 'test.log'}"
    seconds = time.monotonic() - start
    tested = json.loads(metrics_path.read_text(encoding="utf-8"))
    if not tested["metrics"]:
        return "failed", seconds, f"the test run logged no test metrics (empty test split?), see {directory}"
    payload = {
        "cell": cell.name,
        "kind": cell.kind,
        "seed": seed,
        "info": cell.info,
        "metrics": tested["metrics"],
        "best_checkpoint": tested.get("ckpt_path"),
        "seconds": round(seconds, 1),
        "config": full,
    }
    write_json(result_path, payload)
    return "done", seconds, ""


def run_all(config: dict[str, Any], in_process: bool = False, stream: Any = None) -> dict[str, int]:
    """Run every cell of every seed with a progress line per cell; returns counts per status."""
    stream = stream or sys.stdout
    cells = plan_cells(config)
    jobs = [(seed, cell) for seed in config["seeds"] for cell in cells]
    counts = {"done": 0, "skipped": 0, "failed": 0, "blocked": 0}
    durations: dict[str, list[float]] = {"teacher": [], "search": [], "student": []}
    started = time.monotonic()
    width = len(str(len(jobs)))
    live = hasattr(stream, "isatty") and stream.isatty()
    for index, (seed, cell) in enumerate(jobs, 1):
        if live:  # the running cell on a terminal, overwritten by its result line
            print(
                f"[{index:{width}d}/{len(jobs)}] seed {seed} {cell.name:<36} running...",
                end="\r",
                file=stream,
                flush=True,
            )
        status, seconds, message = run_cell(config, seed, cell, in_process=in_process)
        if status in ("done", "skipped") and config.get("robustness"):
            failed = run_cell_robustness(config, seed, cell, in_process)
            if failed:
                status, message = "failed", failed
        counts[status] += 1
        if status == "done":
            durations[cell.kind].append(seconds)
        remaining = [c for s, c in jobs[index:] if not (cell_dir(config, s, c.name) / RESULT_FILE).is_file()]
        eta = estimate_eta(remaining, durations)
        elapsed = time.monotonic() - started
        line = (
            f"[{index:{width}d}/{len(jobs)}] seed {seed} {cell.name:<36} {status:<7} "
            f"{seconds:7.1f}s | elapsed {format_seconds(elapsed)} | ETA {eta}"
        )
        if message:
            line += f" | {message}"
        print(line, file=stream, flush=True)
    return counts


ROBUSTNESS_OPTIONS = {
    key: "--" + key.replace("_", "-")
    for key in ("max_examples", "seed", "max_fraction", "max_substitutions", "max_candidates", "source",
                "wordnet_dir", "min_similarity")
}  # fmt: skip
"""Keys of the pipeline's ``robustness:`` block and the ``python -m metakd robustness`` options they set."""


def robustness_domains(config: dict[str, Any], cell: Cell) -> list[str]:
    """The domains a main-study cell is attacked on (its domain; every domain for a pooled teacher)."""
    if cell.kind == "search" or "study" in cell.info or "train_fraction" in cell.info:
        return []
    return [cell.info["domain"]] if "domain" in cell.info else list(config["domains"])


def robustness_path(config: dict[str, Any], seed: int, cell: str, domain: str) -> Path:
    return cell_dir(config, seed, cell) / f"robustness_{domain}.json"


def run_cell_robustness(config: dict[str, Any], seed: int, cell: Cell, in_process: bool = False) -> str:
    """Attack a finished cell's best checkpoint on each of its domains (``robustness:`` settings); a report
    made with the same settings is reused. Returns an error message, or "" when every attack ran."""
    settings = dict(config["robustness"])
    unknown = sorted(set(settings) - set(ROBUSTNESS_OPTIONS))
    if unknown:
        raise PipelineError(f"robustness: unknown keys {unknown}; known: {sorted(ROBUSTNESS_OPTIONS)}")
    directory = cell_dir(config, seed, cell.name)
    for domain in robustness_domains(config, cell):
        path = robustness_path(config, seed, cell.name, domain)
        if (
            path.is_file()
            and json.loads(path.read_text(encoding="utf-8")).get("pipeline_settings") == settings
        ):
            continue
        args = ["robustness", "--ckpt", str(best_checkpoint(config, seed, cell.name)),
                "--config", str(directory / "cell.yaml"), "--domain", domain, "--out", str(path)]  # fmt: skip
        for key, value in settings.items():
            if value is not None:
                args += [ROBUSTNESS_OPTIONS[key], str(value)]
        log_path = directory / f"robustness_{domain}.log"
        if _run_cli(args, log_path, in_process, config.get("cell_timeout_s")) != 0 or not path.is_file():
            return f"robustness failed, see {log_path}"
        report = json.loads(path.read_text(encoding="utf-8"))
        write_json(path, {**report, "pipeline_settings": settings})
    return ""


def estimate_eta(remaining: list[Cell], durations: dict[str, list[float]]) -> str:
    if not remaining:
        return "0s"
    known = [d for values in durations.values() for d in values]
    if not known:
        return "?"
    total = 0.0
    for cell in remaining:
        values = durations[cell.kind] or known
        total += statistics.median(values)
    return format_seconds(total)


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


# --------------------------------------------------------------------------------------------------
# results


def cell_accuracy(result: dict[str, Any], domain: str) -> float | None:
    """Test accuracy of a cell on one domain (a teacher's per-domain metric, else ``test/acc``)."""
    metrics = result["metrics"]
    if f"test/acc_{domain}" in metrics:
        return metrics[f"test/acc_{domain}"]
    if result["kind"] == "student" or result["info"].get("domain") == domain:
        return metrics.get("test/acc")
    return None


def summarise(values: list[float]) -> dict[str, Any]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return {"mean": None, "std": None, "n": 0, "values": []}
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "n": len(values), "values": values}


def read_result(config: dict[str, Any], seed: int, cell: str) -> dict[str, Any] | None:
    path = cell_dir(config, seed, cell) / RESULT_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def collect(config: dict[str, Any], cells: list[Cell] | None = None) -> dict[str, Any]:
    """Gather the cells' results into the benchmark's JSON (main table and studies)."""
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
    if "main" in config["studies"]:
        table: dict[str, Any] = {}
        planned = {cell.name for cell in cells}
        for key, label in main_rows(list(config["methods"]), config.get("variants")):
            if main_cell_name(key, domains[0]) not in planned:
                continue
            row: dict[str, Any] = {"label": label}
            per_seed_avg: list[float] = []
            per_domain: dict[str, list[float]] = {d: [] for d in domains}
            for seed in seeds:
                accs = []
                for domain in domains:
                    name = main_cell_name(key, domain)
                    result = results.get((seed, name))
                    value = cell_accuracy(result, domain) if result else None
                    if value is not None:
                        per_domain[domain].append(value)
                    accs.append(value)
                if all(v is not None for v in accs):
                    per_seed_avg.append(statistics.fmean(accs))
            for domain in domains:
                row[domain] = summarise(per_domain[domain])
            row["average"] = summarise(per_seed_avg)
            table[key] = row
        out["main"] = table

    def accuracies(name: str, domain: str) -> list[float | None]:
        return [cell_accuracy(r, domain) for s in seeds if (r := results.get((s, name)))]

    if "scarcity" in config["studies"]:
        domain, methods, fractions = scarcity_settings(config)
        points: dict[str, Any] = {}
        for method in methods:
            for fraction in fractions:
                name = student_cell_name(method, domain, fraction)
                points.setdefault(method, {})[str(fraction)] = {
                    "cell": name,
                    **summarise(accuracies(name, domain)),
                }
        out["scarcity"] = {"domain": domain, "points": points}
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
    if config.get("robustness") and "main" in out:
        out["robustness"] = collect_robustness(config, out["main"])
    searched = {f"{seed}/{name}": r for (seed, name), r in results.items() if r and r["kind"] == "search"}
    if searched:
        from metakd.search.adabert import describe

        out["search"] = {
            key: {"domain": r["info"]["domain"], "row": r["info"]["row"],
                  "architecture": describe(r["architecture"]), **r["architecture"].get("cost", {}),
                  "seconds": r["seconds"]}
            for key, r in searched.items()
        }  # fmt: skip
    out["train_and_test_seconds"] = round(sum(r["seconds"] for r in results.values() if r), 1)
    out["cells"] = {f"{seed}/{name}": result is not None for (seed, name), result in results.items()}
    return out


def collect_robustness(config: dict[str, Any], main: dict[str, Any]) -> dict[str, Any]:
    """Per main-table row and domain: clean accuracy, accuracy under attack and attack success rate of the
    attacked examples (``robustness_<domain>.json`` of each cell), summarised over seeds."""
    table: dict[str, Any] = {}
    for key, row in main.items():
        entry: dict[str, Any] = {"label": row["label"]}
        for domain in config["domains"]:
            values: dict[str, list[float]] = {
                "clean_accuracy": [],
                "accuracy_under_attack": [],
                "attack_success_rate": [],
            }
            for seed in config["seeds"]:
                path = robustness_path(config, seed, main_cell_name(key, domain), domain)
                if path.is_file():
                    report = json.loads(path.read_text(encoding="utf-8"))
                    for metric in values:
                        values[metric].append(report[metric])
            entry[domain] = {metric: summarise(v) for metric, v in values.items()}
        table[key] = entry
    return table


def main_cell_name(row: str, domain: str) -> str:
    return {
        "teacher_single": f"teacher/single/{domain}",
        "teacher_mixed": "teacher/mixed",
        "teacher_meta": "teacher/meta",
    }.get(row, f"student/{row.removeprefix('student_')}/{domain}")


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
            text = f"{model.get('backbone', 'minilm-l6')}; {text}"
        else:
            fresh = model.get("student_config")
            if fresh:
                size = f"fresh BERT {fresh.get('num_hidden_layers', '?')}L/H{fresh.get('hidden_size', '?')}"
            else:
                backbone = model.get("student_backbone", "minilm-l6")
                size = f"{backbone} layers {model.get('student_layers', 'all')}"
            epochs = model.get("intermediate_epochs", "?")
            text = f"{size}; {text}; intermediate stage (two-stage methods) {epochs} epoch(s)"
        return text

    return f"teachers: {part('teacher')}. students: {part('student')}"


def fmt(stat: dict[str, Any]) -> str:
    if stat.get("mean") is None:
        return "—"
    text = f"{100 * stat['mean']:.1f}"
    if stat["n"] > 1:
        text += f" ± {100 * stat['std']:.1f}"
    return text


def package_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for name in (
        "torch",
        "pytorch-lightning",
        "transformers",
        "datasets",
        "tokenizers",
        "onnxruntime",
        "metakd",
    ):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    versions["cpu_count"] = str(os.cpu_count())
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode == 0:
            versions["git_commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return versions


def render_markdown(config: dict[str, Any], summary: dict[str, Any]) -> str:
    domains = summary["domains"]
    seeds = summary["seeds"]
    lines = [f"# Benchmark: {summary['name']}", ""]
    lines.append(
        f"Test accuracy (%), model selected on the dev set (best `val/acc`); seeds {seeds}"
        + (" (mean ± std)" if len(seeds) > 1 else "")
        + "."
    )
    lines += ["", f"**Budget** — {budget_line(config)}.", ""]
    if config.get("is_quick"):
        lines += ["*Quick mode: a smoke test of the pipeline, not a result.*", ""]
    if "main" in summary:
        lines.append("| method | " + " | ".join(domains) + " | average |")
        lines.append("| --- |" + " ---: |" * (len(domains) + 1))
        for row in summary["main"].values():
            cells = [fmt(row[d]) for d in domains] + [fmt(row["average"])]
            lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
        lines.append("")
    if "scarcity" in summary:
        scarcity = summary["scarcity"]
        fractions = sorted({float(f) for points in scarcity["points"].values() for f in points})
        lines += [f"## Data scarcity ({scarcity['domain']})", ""]
        lines.append("| student | " + " | ".join(f"{round(100 * f)}%" for f in fractions) + " |")
        lines.append("| --- |" + " ---: |" * len(fractions))
        for method, points in scarcity["points"].items():
            values = [fmt(points.get(str(f), {})) for f in fractions]
            lines.append(f"| {method} | " + " | ".join(values) + " |")
        if scarcity.get("plot"):
            lines += ["", f"![data scarcity]({Path(scarcity['plot']).name})"]
        lines.append("")
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
        settings = config["robustness"]
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
        header = "| cell | architecture | parameters | FLOPs/token | search time |"
        lines += ["## Searched architectures", "", header,
                  "| --- | --- | ---: | ---: | ---: |"]  # fmt: skip
        for key, entry in summary["search"].items():
            lines.append(
                f"| {key} | {entry['architecture']} | {entry.get('parameters', 0):,} | "
                f"{entry.get('flops_per_token', 0):,} | {format_seconds(entry['seconds'])} |"
            )
        lines.append("")
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


def plot_scarcity(summary: dict[str, Any], path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    points = summary["scarcity"]["points"]
    figure, axis = plt.subplots(figsize=(5, 3.5))
    for method, values in points.items():
        xs = sorted(float(f) for f, v in values.items() if v.get("mean") is not None)
        ys = [100 * values[str(x)]["mean"] for x in xs]
        errs = [100 * values[str(x)]["std"] for x in xs]
        axis.errorbar([100 * x for x in xs], ys, yerr=errs, marker="o", capsize=3, label=method)
    axis.set_xlabel(f"% of {summary['scarcity']['domain']} training data")
    axis.set_ylabel("test accuracy (%)")
    axis.legend()
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
    summary["versions"] = package_versions()
    summary["json"] = str(json_path)
    if "scarcity" in summary:
        summary["scarcity"]["plot"] = plot_scarcity(summary, results_dir / f"{config['name']}_scarcity.png")
    summary["pipeline_config"] = {k: v for k, v in config.items() if k not in ("teacher", "student")}
    summary["cell_configs"] = {
        f"{seed}/{cell.name}": cell_config(config, seed, cell) for seed in config["seeds"] for cell in cells
    }
    write_json(json_path, summary)
    md_path.write_text(render_markdown(config, summary), encoding="utf-8")
    return json_path, md_path


# --------------------------------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m metakd pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="pipeline config, e.g. configs/amazon/benchmark.yaml")
    parser.add_argument("--quick", action="store_true", help="merge the config's `quick:` budget (minutes)")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the config's `seeds`)")
    parser.add_argument("--domains", nargs="+", help="only these target domains (columns); cells are shared")
    parser.add_argument(
        "--studies", nargs="+", choices=["main", "scarcity", "zero_shot"], help="override `studies`"
    )
    parser.add_argument(
        "--runs-dir", help="override `runs_dir` (cells live in <runs_dir>/<name>/<seed>/<cell>)"
    )
    parser.add_argument("--results-dir", help="override `results_dir` (<name>.json / <name>.md)")
    parser.add_argument("--plan", action="store_true", help="list the cells and exit")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = load_pipeline_config(args.config, quick=args.quick)
    # command-line overrides (argparse's `choices` check --studies and --methods)
    for key in ("seeds", "studies", "methods", "domains", "runs_dir", "results_dir"):
        if getattr(args, key):
            config[key] = getattr(args, key)
    if args.in_process:
        config["in_process"] = True
    if args.plan:
        for cell in plan_cells(config):
            print(f"{cell.kind:<8} {cell.name:<36} needs {cell.needs or '-'}")
        return 0
    counts = {"failed": 0, "blocked": 0}
    if not args.report_only:
        print(f"pipeline {config['name']}: seeds {config['seeds']}, studies {config['studies']}", flush=True)
        print(f"budget: {budget_line(config)}", flush=True)
        counts = run_all(config, in_process=bool(config["in_process"]))
        print("cells: " + ", ".join(f"{k} {v}" for k, v in counts.items()), flush=True)
    json_path, md_path = write_results(config)
    report = md_path.read_text(encoding="utf-8")
    print("\n" + report.split("\nCompute:")[0].strip() + "\n", flush=True)  # the tables, per domain
    print(f"wrote {json_path} and {md_path}", flush=True)
    return 1 if counts["failed"] or counts["blocked"] else 0


if __name__ == "__main__":
    sys.exit(main())
