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
- budgets (``budgets: [A, B]``): B gives every student the same total epochs, A the same
  prediction-stage epochs with a staged method's intermediate stage on top (its own cells);
- optional studies (``studies: [main, scarcity, zero_shot, ablation]``): data scarcity (rows of
  ``methods`` or ``variants``, e.g. Meta-KD vs TinyBERT-KD or with augmentation, on one or more target
  domains at several ``train_fraction``; PNG plot when matplotlib is installed),
  zero-shot (a meta-teacher trained without the target domain, the student distilled with
  ``teacher_domain``) and ablations (``extra_teachers`` and the rows named in ``ablations``).

Every seed trains its own teachers and students. The report (:mod:`metakd.report`) gives mean ± std
over seeds, paired bootstrap intervals of Meta-KD minus each other row from the cells' per-example
predictions, CPU minutes per row, the teachers' dev curves, and warnings about teachers whose dev
accuracy is below the no-KD student's.

Each *cell* is one model: a folder ``<runs_dir>/<name>/<seed>/<cell>`` with ``cell.yaml`` (the exact,
fully merged LightningCLI config), the logs of ``python -m metakd fit --config cell.yaml`` and
``python -m metakd test --config cell.yaml --ckpt_path best`` (two subprocesses), and ``result.json``
once both succeeded. A cell with a ``result.json`` is skipped, so an interrupted pipeline continues
where it stopped (a fit cut off mid-way resumes from its ``last.ckpt``). Test metrics, the dev curve and
the per-example test predictions are written by callbacks placed in the cell's config
(:class:`TestMetricsWriter`, :class:`DevCurveWriter`, :class:`PredictionsWriter`; no log parsing).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import fnmatch
import json
import os
import platform
import resource
import shlex
import shutil
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

from metakd import cellstore
from metakd.errors import MetakdError, main_with_boundary
from metakd.interrupt import Interrupted, interrupted_exit, note, run_child
from metakd.stats import mean_std
from metakd.utils import write_json

try:  # the callback needs Lightning; the rest of the module does not
    from pytorch_lightning import Callback as _Callback
except ImportError:  # pragma: no cover
    _Callback = object  # type: ignore[assignment,misc]

DEFAULTS_FILE = Path(__file__).with_name("pipeline_defaults.yaml")
RESULT_FILE = "result.json"
TEST_METRICS_FILE = "test_metrics.json"
DEV_CURVE_FILE = "dev_curve.json"
PREDICTIONS_FILE = "predictions.jsonl"
STUDIES = ("main", "scarcity", "zero_shot", "ablation")
REPORT_END_OF_PRINTED = "<!-- end of the part printed on the terminal -->"
BUDGETS = ("A", "B")

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


VARIANT_KEYS = ("method", "label", "teacher", "model", "data", "trainer", "search")


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
    trainer: dict[str, Any] = field(default_factory=dict)
    search: str | None = None  # a search config: the architecture is searched per domain first


def row_spec(name: str, variants: dict[str, Any] | None = None, extra_teachers: Any = ()) -> RowSpec:
    """The row ``name`` of ``methods``: a ``variants`` entry, else the registry method of that name. A
    variant's ``teacher`` is a role, ``none``, or one of ``extra_teachers`` (the ablation study's)."""
    variant = (variants or {}).get(name)
    if variant is None:
        entry = method_entry(name)
        return RowSpec(name, name, entry.label, entry.teacher_role)
    entry = method_entry(variant["method"])
    role = variant.get("teacher", entry.teacher_role)
    role = None if role in (None, "none") else role
    if role is not None and role not in TEACHER_ROWS and role not in extra_teachers:
        raise PipelineError(
            f"variants.{name}.teacher must be one of {sorted(TEACHER_ROWS)}, none or an extra teacher "
            f"({sorted(extra_teachers)}), got {role!r}"
        )
    return RowSpec(
        name,
        variant["method"],
        str(variant.get("label", entry.label)),
        role,
        dict(variant.get("model") or {}),
        dict(variant.get("data") or {}),
        dict(variant.get("trainer") or {}),
        variant.get("search"),
    )


def main_rows(
    methods: list[str], variants: dict[str, Any] | None = None, extra_teachers: dict[str, Any] | None = None
) -> list[tuple[str, str]]:
    """``(row key, label)`` of the main table: the teachers the rows need, then one row per entry of
    ``methods``, labelled from the registry or the variant (``Student: <label> (<teacher>)``)."""
    from metakd.distill import TEACHER_ROLES

    extra_teachers = extra_teachers or {}
    specs = [row_spec(method, variants, extra_teachers) for method in methods]
    roles = {spec.teacher_role for spec in specs}
    rows = [TEACHER_ROWS[role] for role in TEACHER_ROWS if role in roles]
    for spec in specs:
        label = f"Student: {spec.label}"
        role = spec.teacher_role
        if role is not None:
            words = TEACHER_ROLES.get(role) or extra_teachers[role].get("label", role).removeprefix(
                "Teacher: "
            )
            label += f" ({words})"
        rows.append((f"student_{spec.name}", label))
    return rows


def is_staged(method: str) -> bool:
    """The registry method trains stages before its last one (e.g. TinyBERT-KD's and Meta-KD's
    intermediate stage): budget A gives it ``intermediate_epochs`` on top (see :func:`budget_overrides`)."""
    try:
        return len(method_entry(method)().stages()) > 1
    except TypeError:  # a method without defaults for every argument: not one the budgets can tell
        return False


class PipelineError(MetakdError, RuntimeError):
    """A bad pipeline configuration."""


# --------------------------------------------------------------------------------------------------
# callback used inside the cells' test runs


def test_set_path(path: str | Path, test_set: str | None) -> Path:
    """``path`` for the test set ``test_set``: unchanged for ``test`` (the corpus's test split), else with
    ``_<test_set>`` before the suffix (``predictions.jsonl`` -> ``predictions_test_large.jsonl``)."""
    path = Path(path)
    if test_set in (None, "test"):
        return path
    return path.with_name(f"{path.stem}_{test_set}{path.suffix}")


def _test_set_of(trainer: Any) -> str | None:
    return getattr(getattr(trainer, "datamodule", None), "test_set", None)


class TestMetricsWriter(_Callback):  # type: ignore[misc,valid-type]
    """Writes ``trainer.callback_metrics`` of a test run (``test/*``) to ``path`` as JSON, atomically (for a
    datamodule's other ``test_set``, to :func:`test_set_path`)."""

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
        write_json(test_set_path(self.path, _test_set_of(trainer)), payload)


class DevCurveWriter(_Callback):  # type: ignore[misc,valid-type]
    """Records the dev curve of a fit: ``val/*`` after every validation run, then how the fit ended.

    ``path`` (JSON) holds ``{"checks": [{"step", "epoch", "val/acc", ...}, ...], "end": {...}}``, rewritten
    atomically after each check. A resumed fit keeps the earlier checks (a check at the same step is
    replaced). ``end``: the last global step, the trainer's ``max_steps``/``max_epochs``, the best
    checkpoint and its score, and whether early stopping stopped the fit.
    """

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.checks: dict[int, dict[str, Any]] = {}

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        path = Path(self.path)
        stored = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        self.checks = {int(c["step"]): c for c in stored.get("checks", [])}

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or trainer.state.fn != "fit":
            return
        from metakd.sweep import scalar_metrics

        entry = {"step": int(trainer.global_step), "epoch": int(trainer.current_epoch)}
        entry.update(scalar_metrics(trainer.callback_metrics, prefix="val/"))
        self.checks[entry["step"]] = entry
        self._write(None)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.is_global_zero:
            return
        from pytorch_lightning.callbacks import EarlyStopping

        checkpoint = trainer.checkpoint_callback
        score = getattr(checkpoint, "best_model_score", None)
        stoppers = [c for c in trainer.callbacks if isinstance(c, EarlyStopping)]
        end = {
            "global_step": int(trainer.global_step),
            "max_steps": int(trainer.max_steps),
            "max_epochs": trainer.max_epochs,
            "best_model_path": str(getattr(checkpoint, "best_model_path", "") or ""),
            "best_score": float(score) if score is not None else None,
            "early_stopped": any(int(c.wait_count) >= int(c.patience) for c in stoppers),
            "early_stopping": [{"monitor": c.monitor, "patience": c.patience} for c in stoppers],
        }
        self._write(end)

    def _write(self, end: dict[str, Any] | None) -> None:
        path = Path(self.path)
        payload: dict[str, Any] = {"checks": [self.checks[s] for s in sorted(self.checks)]}
        if end is not None:
            payload["end"] = end
        write_json(path, payload)


class PredictionsWriter(_Callback):  # type: ignore[misc,valid-type]
    """Saves the per-example predictions of a test run to ``path`` (JSON Lines, one row per example).

    Reads what ``test_step`` returns: a dict with ``example_ids``, ``domain_ids``, ``labels`` and
    ``logits`` for the rows it evaluated. Row: ``{"example_id", "domain", "label", "pred", "logits"}``
    (``domain`` by name when the module has ``domain_names``). A ``test_step`` that returns nothing
    gives no file (the report then says that the cell's predictions are missing). On several devices each
    rank writes its own rows to ``<path>.rank<k>``.
    """

    KEYS = ("example_ids", "domain_ids", "labels", "logits")

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.rows: list[dict[str, Any]] = []

    def on_test_start(self, trainer: Any, pl_module: Any) -> None:
        self.rows = []

    def on_test_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if not isinstance(outputs, dict) or any(key not in outputs for key in self.KEYS):
            return
        names = list(getattr(pl_module, "domain_names", None) or [])
        logits = outputs["logits"].detach().float().cpu()
        for example, domain, label, row in zip(
            outputs["example_ids"].tolist(),
            outputs["domain_ids"].tolist(),
            outputs["labels"].tolist(),
            logits,
        ):
            self.rows.append(
                {
                    "example_id": int(example),
                    "domain": names[domain] if domain < len(names) else int(domain),
                    "label": int(label),
                    "pred": int(row.argmax()),
                    "logits": [round(float(v), 5) for v in row],
                }
            )

    def on_test_end(self, trainer: Any, pl_module: Any) -> None:
        path = test_set_path(self.path, _test_set_of(trainer))
        if trainer.world_size > 1:
            path = path.with_name(f"{path.name}.rank{trainer.global_rank}")
        if not self.rows:
            path.unlink(missing_ok=True)  # no stale file from an earlier run
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text("".join(json.dumps(r) + "\n" for r in self.rows), encoding="utf-8")
        os.replace(partial, path)


def read_predictions(path: Path) -> list[dict[str, Any]] | None:
    """The rows a :class:`PredictionsWriter` wrote, or None when there is no file."""
    if not path.is_file():
        return None
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


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
    merges the ``quick:`` section and appends ``_quick`` to the name. A top-level ``data:`` block is
    the datamodule of every cell: it is merged under ``teacher:`` and ``student:``, whose own ``data:``
    keys override it. A config with neither ``teacher:`` nor ``student:`` (a user's corpus: ``data``,
    ``domains`` and a name) is merged onto the built-in budget, :data:`DEFAULTS_FILE`."""
    path = Path(path)
    config = _read_extended(path)
    if "teacher" not in config and "student" not in config:
        config = deep_merge(_read_extended(DEFAULTS_FILE), config)
    if quick or config.pop("apply_quick", False):
        overrides = config.get("quick") or {}
        config = deep_merge(config, overrides)
        config["name"] = f"{config.get('name', config.get('corpus', 'benchmark'))}_quick"
        config["is_quick"] = True
    config.pop("quick", None)
    if config.get("data") is not None:
        if not isinstance(config["data"], dict):
            raise PipelineError(f"{path}: `data` is a datamodule config (class_path, init_args)")
        for kind in ("teacher", "student"):
            config[kind] = deep_merge({"data": config["data"]}, config.get(kind) or {})
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
    config.setdefault("budgets", ["B"])
    config.setdefault("extra_teachers", {})
    config.setdefault("ablations", [])
    config.setdefault("ablation_budget", config["budgets"][0] if config["budgets"] else "B")
    config.setdefault("compare_to", "meta")
    config.setdefault("keep_checkpoints", {"teacher": "all", "student": "all"})
    config.setdefault("test_sets", ["test"])
    check_choices(path, config)
    return config


KEEP_CHECKPOINTS = ("all", "best", "none")


def check_choices(path: str | Path, config: dict[str, Any]) -> None:
    """``studies``, ``methods``, ``budgets``, ``extra_teachers``, ``ablations`` and ``keep_checkpoints``
    name known ones and are well formed."""
    unknown = set(config["studies"]) - set(STUDIES)
    if unknown:
        raise PipelineError(f"{path}: unknown studies {sorted(unknown)}; choose from {', '.join(STUDIES)}")
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
    budgets = config["budgets"]
    if (
        not isinstance(budgets, list)
        or not budgets
        or set(budgets) - set(BUDGETS)
        or len(set(budgets)) < len(budgets)
    ):
        raise PipelineError(f"{path}: `budgets` must be a list of distinct {list(BUDGETS)}, got {budgets!r}")
    if config["ablation_budget"] not in BUDGETS:
        raise PipelineError(f"{path}: `ablation_budget` must be one of {list(BUDGETS)}")
    extra = config["extra_teachers"]
    if not isinstance(extra, dict) or any(not isinstance(v, dict) for v in extra.values()):
        raise PipelineError(f"{path}: `extra_teachers` maps a teacher name to its overrides of `teacher:`")
    bad = [n for n in extra if "/" in n or n in TEACHER_ROWS or n == "none" or n.startswith("meta_without_")]
    if bad:
        raise PipelineError(
            f"{path}: extra teacher names {bad} clash with the pipeline's (no '/', not "
            f"{sorted(TEACHER_ROWS)}, not none, not meta_without_*)"
        )
    for name in config["ablations"]:
        if name not in variants and name not in registered_methods():
            raise PipelineError(
                f"{path}: ablations names {name!r}, neither a `variants` entry nor a registry method"
            )
    test_sets = config["test_sets"]
    if (
        not isinstance(test_sets, list)
        or not test_sets
        or not all(isinstance(t, str) and t for t in test_sets)
        or len(set(test_sets)) < len(test_sets)
    ):
        raise PipelineError(
            f"{path}: `test_sets` must be a list of distinct evaluation set names (e.g. [test, test_large]), "
            f"got {test_sets!r}"
        )
    keep = config["keep_checkpoints"]
    if (
        not isinstance(keep, dict)
        or set(keep) - {"teacher", "student"}
        or set(keep.values()) - set(KEEP_CHECKPOINTS)
        or keep.get("teacher") == "none"
    ):
        raise PipelineError(
            f"{path}: `keep_checkpoints` maps teacher to all|best (students load its best.ckpt) and student "
            f"to all|best|none, got {keep!r}"
        )
    rows = [*methods, *config["ablations"]]
    if "scarcity" in config["studies"]:
        try:
            rows += scarcity_settings(config)[1]
        except PipelineError as err:
            raise PipelineError(f"{path}: {err}") from None
    for method in rows:
        try:
            row_spec(method, variants, extra)
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


def student_cell_name(
    method: str, domain: str, fraction: float | None = None, budget: str | None = None
) -> str:
    """``student/<method>/<domain>``; below 100% of the data ``student/<method>_<N>pct/<domain>``; under
    budget A (a staged method's extra intermediate epochs) ``student/<method>_budgetA/<domain>``."""
    if fraction is not None and fraction < 1.0:
        method = f"{method}_{fraction_tag(fraction)}"
    if budget == "A":
        method = f"{method}_budgetA"
    return f"student/{method}/{domain}"


def budget_overrides(config: dict[str, Any], budget: str) -> dict[str, Any]:
    """Overrides of a staged student's config under ``budget``.

    The student base config states budget B: ``trainer.max_epochs`` epochs in all, of which a staged
    method spends ``intermediate_epochs`` on the intermediate stage. Budget A gives every student the same
    prediction-stage epochs: a staged method gets ``max_epochs + intermediate_epochs``.
    """
    if budget == "B":
        return {}
    trainer = config["student"].get("trainer") or {}
    init_args = (config["student"].get("model") or {}).get("init_args") or {}
    if "max_epochs" not in trainer or "intermediate_epochs" not in init_args:
        raise PipelineError(
            "budget A needs student.trainer.max_epochs and student.model.init_args.intermediate_epochs in "
            "the pipeline config (it adds the intermediate epochs on top)"
        )
    return {"trainer": {"max_epochs": int(trainer["max_epochs"]) + int(init_args["intermediate_epochs"])}}


def scarcity_settings(config: dict[str, Any]) -> tuple[list[str], list[str], list[float]]:
    """The scarcity study's target domains (``domains``, or the one ``domain``), rows (registry methods
    or ``variants``) and training-data fractions, each in (0, 1]."""
    scarcity = config.get("scarcity") or {}
    fractions = [float(f) for f in scarcity.get("fractions", [0.1, 0.2, 0.5, 1.0])]
    bad = [f for f in fractions if not 0.0 < f <= 1.0]
    if bad:
        raise PipelineError(f"scarcity.fractions must lie in (0, 1], got {bad}")
    domains = scarcity.get("domains") or [scarcity.get("domain", config["domains"][0])]
    return list(domains), list(scarcity.get("methods", ["tinybert", "meta"])), fractions


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

    def extra_teacher(key: str) -> str:
        overrides = {k: v for k, v in config["extra_teachers"][key].items() if k != "label"}
        return teacher(f"teacher/{key}", overrides, row=f"teacher_{key}", study="ablation")

    def teacher_of(role: str, domain: str) -> str:
        if role == "single":
            return single_teacher(domain)
        return {"mixed": mixed_teacher, "meta": meta_teacher}.get(role, lambda: extra_teacher(role))()

    def student_cell(
        method: str, domain: str, fraction: float | None = None, budget: str | None = None, **info: Any
    ) -> str:
        """A student of the row ``method`` (a registry method or a ``variants`` entry); ``budget`` "A"
        gives a staged method its own cell with the intermediate epochs on top."""
        spec = row_spec(method, config.get("variants"), config["extra_teachers"])
        staged_a = budget == "A" and is_staged(spec.method)
        data: dict[str, Any] = {"target_domain": domain, **copy.deepcopy(spec.data)}
        name = student_cell_name(method, domain, fraction, "A" if staged_a else None)
        if fraction is not None and fraction < 1.0:
            data["train_fraction"] = fraction
        model: dict[str, Any] = {"distillation": spec.method, **copy.deepcopy(spec.model)}
        overrides: dict[str, Any] = {"model": {"init_args": model}, "data": {"init_args": data}}
        if spec.trainer:
            overrides["trainer"] = copy.deepcopy(spec.trainer)
        needs: list[str] = []
        if spec.teacher_role is None:  # no pipeline teacher; a variant may name a fixed checkpoint of its own
            model.setdefault("teacher_ckpt", None)
        else:  # cell_config sets teacher_ckpt to the needed teacher's checkpoint, per seed
            needs = [teacher_of(spec.teacher_role, domain)]
        info.setdefault("row", f"student_{method}" + ("@A" if staged_a else ""))
        if fraction is not None:
            info["train_fraction"] = fraction
        if staged_a:
            info["budget"] = "A"
        if spec.search is not None:  # the searched architecture of this domain (metakd.search)
            searched = search_cell_name(method, domain)
            search_overrides = {"config": spec.search, "data": {"init_args": {"target_domain": domain}}}
            info_search = {"row": f"search_{method}", "domain": domain}
            cells.setdefault(searched, Cell(searched, "search", search_overrides, list(needs), info_search))
            needs = [*needs, searched]
        if staged_a:
            overrides = deep_merge(budget_overrides(config, "A"), overrides)
        return student(name, overrides, needs, domain=domain, method=spec.method, **info)

    if "main" in studies:
        methods = list(config.get("methods", DEFAULT_METHODS))
        specs = [row_spec(m, config.get("variants"), config["extra_teachers"]) for m in methods]
        roles = {spec.teacher_role for spec in specs}
        if "single" in roles:  # the teachers of the chosen methods, each also a row of the table
            for domain in domains:
                single_teacher(domain)
        if "mixed" in roles:
            mixed_teacher()
        if "meta" in roles:
            meta_teacher()
        for budget in config["budgets"]:
            for method in methods:
                for domain in domains:
                    student_cell(method, domain, budget=budget)
    if "scarcity" in studies:
        scarcity_domains, methods, fractions = scarcity_settings(config)
        for domain in scarcity_domains:
            for fraction in fractions:
                for method in methods:
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
    if "ablation" in studies:
        for key in config["extra_teachers"]:
            extra_teacher(key)
        for method in config["ablations"]:
            for domain in domains:
                student_cell(method, domain, budget=config["ablation_budget"], study="ablation")
    order = {"teacher": 0, "search": 1, "student": 2}
    return sorted(cells.values(), key=lambda c: order[c.kind])  # stable: the planned order within a kind


def search_cell_name(method: str, domain: str) -> str:
    return f"search/{method}/{domain}"


def store_dir(config: dict[str, Any]) -> Path:
    """The local cell store (``store_dir``; default ``store`` beside ``runs_dir``): one folder per cell key,
    shared by every pipeline config whose ``runs_dir`` has the same parent (:mod:`metakd.cellstore`)."""
    return Path(config.get("store_dir") or Path(config["runs_dir"]).parent / "store")


def results_store(config: dict[str, Any]) -> Path:
    """Where the cells' result files are written and read (``results_store``; default
    ``<results_dir>/cells``): the files to commit."""
    return Path(config.get("results_store") or Path(config["results_dir"]) / "cells")


_PLAN_CACHE: dict[str, dict[str, Cell]] = {}


def planned_cell(config: dict[str, Any], name: str) -> Cell:
    """The planned cell called ``name`` (plans are cached per config)."""
    fingerprint = json.dumps(
        {k: v for k, v in config.items() if not k.startswith("_")}, sort_keys=True, default=str
    )
    if fingerprint not in _PLAN_CACHE:
        if len(_PLAN_CACHE) > 32:
            _PLAN_CACHE.clear()
        _PLAN_CACHE[fingerprint] = {cell.name: cell for cell in plan_cells(config)}
    cells = _PLAN_CACHE[fingerprint]
    if name not in cells:
        raise PipelineError(f"no cell {name!r} in the plan of {config['name']}")
    return cells[name]


def cell_key(config: dict[str, Any], seed: int, cell: Cell | str) -> str:
    """The store key of a cell (:func:`metakd.cellstore.cell_key` of its config with store-relative paths)."""
    cell = planned_cell(config, cell) if isinstance(cell, str) else cell
    return cellstore.cell_key(_cell_config(config, seed, cell, paths=False))


def store_path(config: dict[str, Any], seed: int, cell: Cell | str) -> Path:
    """The cell's folder in the local store."""
    return store_dir(config) / cell_key(config, seed, cell)


def cell_dir(config: dict[str, Any], seed: int, cell: str) -> Path:
    """The per-config view of a cell, ``<runs_dir>/<name>/<seed>/<cell>``: a symbolic link to its store
    folder once the cell has run."""
    return Path(config["runs_dir"]) / config["name"] / str(seed) / cell


def best_checkpoint(config: dict[str, Any], seed: int, cell: str) -> Path:
    return store_path(config, seed, cell) / "checkpoints" / "best.ckpt"


def cell_config(config: dict[str, Any], seed: int, cell: Cell) -> dict[str, Any]:
    """The full LightningCLI config of a cell: base config <- budget <- cell overrides <- paths (a search
    cell: its search config <- target domain <- teacher, out, seed). Its run folder is its store folder."""
    return _cell_config(config, seed, cell, paths=True)


def _cell_config(config: dict[str, Any], seed: int, cell: Cell, paths: bool) -> dict[str, Any]:
    """:func:`cell_config`; with ``paths`` False, the cells it needs are ``@store/<key>`` and it has no run
    folder (what its key is computed from)."""
    if cell.kind == "search":
        return search_cell_config(config, seed, cell, paths)

    def needed(need: str, *parts: str) -> str:
        return str(Path(cellstore.STORE_TOKEN, cell_key(config, seed, need), *parts))

    merged = deep_merge(config[cell.kind], cell.overrides)
    merged["seed_everything"] = int(seed)
    init_args = merged.setdefault("model", {}).setdefault("init_args", {})
    teachers = [need for need in cell.needs if not need.startswith("search/")]
    if teachers:
        init_args["teacher_ckpt"] = needed(teachers[0], "checkpoints", "best.ckpt")
        merged["data"] = _fill(merged.get("data"), TEACHER_CKPT_PLACEHOLDER, init_args["teacher_ckpt"])
        # what a student needs from its teacher (logits, ...) is computed once per teacher and data set
        init_args.setdefault("cache_dir", str(Path(cellstore.STORE_TOKEN, TEACHER_OUTPUTS_DIR)))
    for need in cell.needs:
        if need.startswith("search/"):  # the architecture this domain's search derived
            student_model = init_args.setdefault("student_model", {})
            student_model.setdefault("init_args", {})["architecture"] = needed(need, "architecture.json")
    if not paths:
        return merged
    directory = store_dir(config) / cellstore.cell_key(merged)
    trainer = merged.setdefault("trainer", {})
    trainer["default_root_dir"] = str(directory)
    callbacks = list(trainer.get("callbacks") or [])
    for writer, filename in (
        ("TestMetricsWriter", TEST_METRICS_FILE),
        ("DevCurveWriter", DEV_CURVE_FILE),
        ("PredictionsWriter", PREDICTIONS_FILE),
    ):
        callbacks.append(
            {"class_path": f"metakd.pipeline.{writer}", "init_args": {"path": str(directory / filename)}}
        )
    trainer["callbacks"] = callbacks
    return cellstore.fill_store(merged, store_dir(config))


TEACHER_OUTPUTS_DIR = "teacher_outputs"
"""The store's folder of teacher outputs (logits on a training set), shared by all of a teacher's students."""


def search_cell_config(config: dict[str, Any], seed: int, cell: Cell, paths: bool = True) -> dict[str, Any]:
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
    teacher_key = cell_key(config, seed, cell.needs[0])
    merged["teacher_ckpt"] = str(Path(cellstore.STORE_TOKEN, teacher_key, "checkpoints", "best.ckpt"))
    merged["seed"] = int(seed)
    if not paths:
        return merged
    merged["out"] = str(store_dir(config) / cellstore.cell_key(merged))
    return cellstore.fill_store(merged, store_dir(config))


TEACHER_CKPT_PLACEHOLDER = "@teacher_ckpt"
"""A string in a student cell's ``data`` section (e.g. L2A's ``augment.init_args.teacher_ckpt``) that the
pipeline replaces with the path of the cell's teacher checkpoint (per seed)."""


def _fill(value: Any, placeholder: str, replacement: str) -> Any:
    if value == placeholder:
        return replacement
    if isinstance(value, dict):
        return {key: _fill(item, placeholder, replacement) for key, item in value.items()}
    if isinstance(value, list):
        return [_fill(item, placeholder, replacement) for item in value]
    return value


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
    imports per cell; ``timeout`` does not apply); the output goes to ``log_path`` either way.

    A stop (SIGINT/SIGTERM: :mod:`metakd.interrupt`) raises :class:`Interrupted`: in this process it stops
    the run in flight; a subprocess gets the signal forwarded, and its exit 130/143 raises it too."""
    if in_process:
        from metakd.cli import main as cli_main

        with _output_to(log_path):
            try:
                code = int(cli_main(args) or 0)
            except SystemExit as exit_:
                code = int(exit_.code or 0) if not isinstance(exit_.code, str) else 1
            except Exception:  # noqa: BLE001 - a failed cell must not stop the pipeline
                traceback.print_exc()
                return 1
        signum = interrupted_exit(code)
        if signum is not None:  # (only without an outer stop handler: otherwise Interrupted propagates)
            raise note(signum)
        return code
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    env.setdefault("WANDB_MODE", "disabled")
    with open(log_path, "w", encoding="utf-8") as log:
        try:
            return run_child(
                [sys.executable, "-m", "metakd", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            log.write(f"\n[pipeline] timed out after {timeout} s\n")
            return 124


def run_cell(
    config: dict[str, Any], seed: int, cell: Cell, in_process: bool = False
) -> tuple[str, float, str]:
    """Fit and test one cell in its store folder; returns (status, seconds, message), status
    done|skipped|failed|blocked. A cell whose key has a result (this or any other config's) is skipped."""
    directory = store_path(config, seed, cell)
    _link_view(cell_dir(config, seed, cell.name), directory)
    if read_result(config, seed, cell.name) is not None:
        return "skipped", 0.0, ""
    for need in cell.needs:
        if read_result(config, seed, need) is None:
            return "blocked", 0.0, f"needs {need}"
    for need in cell.needs:  # a need finished elsewhere (a committed result) but not here: train it again
        problem = ensure_local(config, seed, planned_cell(config, need), in_process)
        if problem:
            return "failed", 0.0, problem
    return _run_in_store(config, seed, cell, directory, in_process)


def _link_view(view: Path, target: Path) -> None:
    """Point the per-config view ``view`` at the store folder ``target`` (a symbolic link; a real folder
    left by an older metakd is moved aside to ``<view>.pre-store``)."""
    target = target.absolute()
    if view.is_symlink():
        if Path(os.readlink(view)) == target:
            return
        view.unlink()
    elif view.exists():
        view.rename(view.with_name(view.name + ".pre-store"))
    view.parent.mkdir(parents=True, exist_ok=True)
    view.symlink_to(target, target_is_directory=True)


def ensure_local(config: dict[str, Any], seed: int, cell: Cell, in_process: bool = False) -> str:
    """Make a finished cell's files that a later cell reads (a teacher's ``best.ckpt``, a search's
    ``architecture.json``) exist in the local store: when only its committed result exists here, train it
    again with the same config and seed, and check its dev accuracy (a search: its architecture) against the
    committed result. Returns "" or the reason the cell cannot be used."""
    directory = store_path(config, seed, cell)
    wanted = directory / ("architecture.json" if cell.kind == "search" else "checkpoints/best.ckpt")
    if wanted.is_file():
        return ""
    committed = read_result(config, seed, cell.name)
    status, _, message = _run_in_store(config, seed, cell, directory, in_process, record=False)
    if status != "done":
        return f"retraining {cell.name} (its checkpoint is not here) failed: {message}"
    retrained = json.loads((directory / RETRAINED_FILE).read_text(encoding="utf-8"))
    if cell.kind == "search":
        same = retrained.get("architecture") == committed.get("architecture")
        what = "architecture"
    else:
        ours, theirs = _best_dev(retrained), _best_dev(committed)
        same = ours is not None and theirs is not None and abs(ours - theirs) < 1e-6
        what = f"best dev accuracy {ours} here, {theirs} in the committed result"
    if not same:
        return (
            f"{cell.name} (seed {seed}) was trained again because its checkpoint is not here, and does not "
            f"match its committed result ({what}); see {directory / RETRAINED_FILE}"
        )
    return ""


def _best_dev(result: dict[str, Any] | None) -> float | None:
    end = ((result or {}).get("dev_curve") or {}).get("end") or {}
    return end.get("best_score")


RETRAINED_FILE = "retrained.json"


def _run_in_store(
    config: dict[str, Any], seed: int, cell: Cell, directory: Path, in_process: bool, record: bool = True
) -> tuple[str, float, str]:
    """Fit and test ``cell`` in ``directory``; with ``record``, write its result file (committed store and a
    copy in ``directory``), else only ``retrained.json`` (a cell trained again for its checkpoint)."""
    full = cell_config(config, seed, cell)
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / "cell.yaml"
    config_path.write_text(yaml.safe_dump(full, sort_keys=False), encoding="utf-8")
    timeout = config.get("cell_timeout_s")
    start, cpu_start = time.monotonic(), _cpu_seconds(in_process)
    payload: dict[str, Any] = {"cell": cell.name, "kind": cell.kind, "seed": seed, "info": cell.info}
    if cell.kind == "search":
        if (
            _run_cli(["search", "--config", str(config_path)], directory / "search.log", in_process, timeout)
            != 0
        ):
            return "failed", time.monotonic() - start, f"search failed, see {directory / 'search.log'}"
        payload["metrics"] = {}
        payload["architecture"] = json.loads((directory / "architecture.json").read_text(encoding="utf-8"))
    else:
        failed = _fit_and_test(config, cell, directory, config_path, in_process, timeout, payload)
        if failed:
            return "failed", time.monotonic() - start, failed
    seconds = time.monotonic() - start
    payload["seconds"] = round(seconds, 1)
    # user + system CPU time of the fit and tests (this run's part, when the fit was resumed)
    payload["cpu_seconds"] = round(_cpu_seconds(in_process) - cpu_start, 1)
    payload["environment"] = package_versions()
    payload["config"] = cellstore.identity(full, store_dir(config))
    payload["requested_by"] = {"config": config["name"], "cell": cell.name}
    if not record:
        write_json(directory / RETRAINED_FILE, {k: v for k, v in payload.items() if k != "predictions"})
        return "done", seconds, ""
    key = directory.name
    path = cellstore.write_result_file(results_store(config), key, payload)
    shutil.copyfile(path, directory / RESULT_FILE)
    if cell.kind != "search":
        prune_checkpoints(directory, config["keep_checkpoints"].get(cell.kind, "all"))
    return "done", seconds, ""


def _fit_and_test(
    config: dict[str, Any],
    cell: Cell,
    directory: Path,
    config_path: Path,
    in_process: bool,
    timeout: float | None,
    payload: dict[str, Any],
) -> str:
    """Fit (resuming from ``last.ckpt``), then test the best checkpoint on every test set; fills
    ``payload`` (metrics per test set, predictions, dev curve). Returns "" or why it failed."""
    fit_marker = directory / "fit.done"
    if not fit_marker.is_file():
        args = ["fit", "--config", str(config_path)]
        if (directory / "checkpoints" / "last.ckpt").is_file():
            args += ["--ckpt_path", "last"]  # an interrupted fit continues
        if _run_cli(args, directory / "fit.log", in_process, timeout) != 0:
            return f"fit failed, see {directory / 'fit.log'}"
        fit_marker.write_text("ok\n", encoding="utf-8")
    by_set: dict[str, Any] = {}
    predictions: dict[str, Any] = {}
    for test_set in config["test_sets"]:
        metrics_path = test_set_path(directory / TEST_METRICS_FILE, test_set)
        metrics_path.unlink(missing_ok=True)
        args = ["test", "--config", str(config_path), "--ckpt_path", "best"]
        if test_set != "test":
            args += ["--data.init_args.test_set", test_set]
        log_path = test_set_path(directory / "test.log", test_set)
        if _run_cli(args, log_path, in_process, timeout) != 0 or not metrics_path.is_file():
            return f"test on {test_set} failed, see {log_path}"
        tested = json.loads(metrics_path.read_text(encoding="utf-8"))
        if not tested["metrics"]:
            return f"the test run on {test_set} logged no test metrics (empty test set?), see {directory}"
        by_set[test_set] = tested["metrics"]
        rows = read_predictions(test_set_path(directory / PREDICTIONS_FILE, test_set))
        if rows:
            names = list(dict.fromkeys([*config["domains"], *(str(r["domain"]) for r in rows)]))
            predictions[test_set] = {"domain_names": names, **cellstore.pack_predictions(rows, names)}
    curve_path = directory / DEV_CURVE_FILE
    payload["metrics"] = by_set.get("test", by_set[config["test_sets"][0]])
    payload["test_sets"] = by_set
    curve = json.loads(curve_path.read_text(encoding="utf-8")) if curve_path.is_file() else None
    payload["dev_curve"] = cellstore.store_relative(curve, store_dir(config))
    payload["predictions"] = predictions
    from metakd.scarcity_report import SELECTION_KEY, selection_of  # L2A's selection probabilities

    if (selection := selection_of(directory)) is not None:
        payload[SELECTION_KEY] = selection
    return ""


def _cpu_seconds(in_process: bool) -> float:
    """User + system CPU seconds of this process (in-process cells) or of its finished children."""
    usage = resource.getrusage(resource.RUSAGE_SELF if in_process else resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def prune_checkpoints(directory: Path, keep: str) -> None:
    """After a cell finished: ``all`` keeps its checkpoints, ``best`` only ``checkpoints/best.ckpt`` (what a
    student loads as teacher), ``none`` removes the folder (its numbers and predictions are saved)."""
    folder = directory / "checkpoints"
    if keep == "all" or not folder.is_dir():
        return
    if keep == "none":
        shutil.rmtree(folder)
        return
    for path in folder.iterdir():
        if path.name != "best.ckpt":
            path.unlink()


def selected(cell: Cell, kinds: list[str] | None = None, patterns: list[str] | None = None) -> bool:
    """Whether ``--kinds`` (teacher/student) and ``--cells`` (shell patterns of names) select ``cell``."""
    if kinds and cell.kind not in kinds:
        return False
    return not patterns or any(fnmatch.fnmatchcase(cell.name, p) for p in patterns)


class Progress:
    """One line per finished cell (status, seconds, elapsed, ETA) and the counts per status."""

    def __init__(
        self, config: dict[str, Any], jobs: list[tuple[int, Cell]], stream: Any, parallel: int = 1
    ) -> None:
        self.config, self.jobs, self.stream, self.parallel = config, jobs, stream, max(1, parallel)
        self.counts = {"done": 0, "skipped": 0, "failed": 0, "blocked": 0}
        self.durations: dict[str, list[float]] = {"teacher": [], "search": [], "student": []}
        self.finished: set[tuple[int, str]] = set()
        self.interrupted: list[tuple[int, Cell]] = []
        self.started = time.monotonic()
        self.width = len(str(len(jobs)))

    def running(self, seed: int, cell: Cell) -> None:
        """The running cell on a terminal, overwritten by its result line."""
        if hasattr(self.stream, "isatty") and self.stream.isatty():
            print(
                f"[{len(self.finished) + 1:{self.width}d}/{len(self.jobs)}] seed {seed} {cell.name:<36} "
                "running...",
                end="\r",
                file=self.stream,
                flush=True,
            )

    def report(self, seed: int, cell: Cell, status: str, seconds: float, message: str) -> None:
        if status == "interrupted":
            self.interrupted.append((seed, cell))
            message = message or resume_note(self.config, seed, cell)
        self.counts[status] = self.counts.get(status, 0) + 1
        if status == "done":
            self.durations[cell.kind].append(seconds)
        self.finished.add((seed, cell.name))
        remaining = [
            c
            for s, c in self.jobs
            if (s, c.name) not in self.finished and read_result(self.config, s, c.name) is None
        ]
        eta = estimate_eta(remaining, self.durations, self.parallel)
        elapsed = time.monotonic() - self.started
        line = (
            f"[{len(self.finished):{self.width}d}/{len(self.jobs)}] seed {seed} {cell.name:<36} {status:<7} "
            f"{seconds:7.1f}s | elapsed {format_seconds(elapsed)} | ETA {eta}"
        )
        if message:
            line += f" | {message}"
        print(line, file=self.stream, flush=True)

    def stopped(self, stop: Interrupted) -> Interrupted:
        """``stop`` with what finished and what was interrupted (its :attr:`Interrupted.detail`)."""
        finished = {k: v for k, v in self.counts.items() if v and k != "interrupted"}
        parts = [
            f"{len(self.finished) - len(self.interrupted)} of {len(self.jobs)} cells finished"
            + (" (" + ", ".join(f"{k} {v}" for k, v in finished.items()) + ")" if finished else "")
        ]
        parts += [
            f"seed {seed} {cell.name} interrupted ({resume_note(self.config, seed, cell)})"
            for seed, cell in self.interrupted
        ]
        parts.append(f"{len(self.jobs) - len(self.finished)} not started")
        stop.detail = ", ".join(parts)
        return stop


def resume_note(config: dict[str, Any], seed: int, cell: Cell) -> str:
    """What the next call does with an interrupted cell: resume its fit from ``last.ckpt``, run only its
    test, or start it over."""
    directory = store_path(config, seed, cell)
    if (directory / RESULT_FILE).is_file():
        return "it had finished: the next call reuses it"
    if cell.kind == "search":
        return "a search keeps no checkpoint: it starts over"
    if (directory / "fit.done").is_file():
        return "its fit is done: the next call runs its test"
    last = directory / "checkpoints" / "last.ckpt"
    if last.is_file():
        return f"the next call resumes it from {last}"
    return "no checkpoint yet: the next call starts it over"


def run_all(
    config: dict[str, Any],
    in_process: bool = False,
    stream: Any = None,
    workers: int = 1,
    ray_address: str | None = None,
    kinds: list[str] | None = None,
    patterns: list[str] | None = None,
) -> dict[str, int]:
    """Run every cell of every seed (or those ``kinds``/``patterns`` select) with a progress line per
    cell; returns counts per status.

    One cell after another in this process by default; on Ray (:mod:`metakd.ray_dispatch`) with
    ``workers`` > 1 (a local instance running that many cells at a time) or a ``ray_address``."""
    cells = [cell for cell in plan_cells(config) if selected(cell, kinds, patterns)]
    jobs = [(seed, cell) for seed in config["seeds"] for cell in cells]
    progress = Progress(config, jobs, stream or sys.stdout, parallel=workers)
    if workers > 1 or ray_address:
        from metakd.ray_dispatch import run_on_ray

        try:
            run_on_ray(
                config,
                jobs,
                progress.report,
                in_process=in_process,
                workers=workers if workers > 1 or not ray_address else None,
                address=ray_address,
            )
        except Interrupted as stop:  # run_on_ray reported the cells it stopped
            progress.stopped(stop)
            raise
        return progress.counts
    in_flight: tuple[int, Cell, float] | None = None
    try:
        for seed, cell in jobs:
            progress.running(seed, cell)
            in_flight = (seed, cell, time.monotonic())
            status, seconds, message = run_cell_and_attack(config, seed, cell, in_process=in_process)
            in_flight = None
            progress.report(seed, cell, status, seconds, message)
    except Interrupted as stop:  # the cell in flight keeps its checkpoints; no other cell starts
        if in_flight is not None:
            seed, cell, start = in_flight
            progress.report(seed, cell, "interrupted", time.monotonic() - start, "")
        progress.stopped(stop)
        raise
    return progress.counts


ROBUSTNESS_OPTIONS = {
    key: "--" + key.replace("_", "-")
    for key in ("max_examples", "seed", "max_fraction", "max_substitutions", "max_candidates", "source",
                "wordnet_dir", "min_similarity", "pos_check", "min_word_similarity")
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
        if not best_checkpoint(config, seed, cell.name).is_file() and not path.is_file():
            return (
                f"robustness needs {best_checkpoint(config, seed, cell.name)} (keep_checkpoints "
                f"{config['keep_checkpoints'].get(cell.kind)!r} for {cell.kind}s removed it)"
            )
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


def run_cell_and_attack(
    config: dict[str, Any], seed: int, cell: Cell, in_process: bool = False
) -> tuple[str, float, str]:
    """:func:`run_cell`, then, with a ``robustness:`` block, the attack of the finished cell (a failed
    attack fails the cell). What the sequential run and each Ray task run."""
    status, seconds, message = run_cell(config, seed, cell, in_process=in_process)
    if status in ("done", "skipped") and config.get("robustness"):
        failed = run_cell_robustness(config, seed, cell, in_process)
        if failed:
            status, message = "failed", failed
    return status, seconds, message


def estimate_eta(remaining: list[Cell], durations: dict[str, list[float]], parallel: int = 1) -> str:
    if not remaining:
        return "0s"
    known = [d for values in durations.values() for d in values]
    if not known:
        return "?"
    total = 0.0
    for cell in remaining:
        values = durations[cell.kind] or known
        total += statistics.median(values)
    return format_seconds(total / parallel)


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


def read_result(config: dict[str, Any], seed: int, cell: str) -> dict[str, Any] | None:
    """The result of a cell: its committed result file (``results_store``), else the copy in its local
    store folder; None when the cell has not finished anywhere."""
    key = cell_key(config, seed, cell)
    result = cellstore.read_result_file(results_store(config), key)
    if result is None:
        local = store_dir(config) / key / RESULT_FILE
        result = json.loads(local.read_text(encoding="utf-8")) if local.is_file() else None
    return result


def cell_predictions(result: dict[str, Any] | None, test_set: str) -> list[dict[str, Any]] | None:
    """The per-example predictions of a result on ``test_set`` (rows ``example_id, domain, label, pred``)."""
    packed = ((result or {}).get("predictions") or {}).get(test_set)
    return None if packed is None else cellstore.unpack_predictions(packed, packed["domain_names"])


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
        for key, label in main_rows(list(config["methods"]), variants, extra):
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
    from metakd import report

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
        from metakd import scarcity_report  # scarcity.compare's intervals, L2A's selection probabilities

        out["scarcity"]["comparisons"] = scarcity_report.scarcity_comparisons(
            config, points, lambda s, c: cell_predictions(results.get((s, c)), primary)
        )
        out["scarcity"]["selection"] = scarcity_report.selection_spread(points, results, seeds)
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

    out.update(report.analyse(config, rows, results, needs, rows_of))
    if config.get("robustness") and "main" in out:
        out["robustness"] = collect_robustness(config, [row for row in rows if row.study == "main"])
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


def collect_robustness(config: dict[str, Any], rows: list[Row]) -> dict[str, Any]:
    """Per main-table row and domain: clean accuracy, accuracy under attack and attack success rate of the
    attacked examples (``robustness_<domain>.json`` of each cell), summarised over seeds."""
    metrics = ("clean_accuracy", "accuracy_under_attack", "attack_success_rate")
    table: dict[str, Any] = {}
    for row in rows:
        entry: dict[str, Any] = {"label": row.label}
        for domain, cell in row.cells.items():
            values: dict[str, list[float]] = {metric: [] for metric in metrics}
            for seed in config["seeds"]:
                path = robustness_path(config, seed, cell, domain)
                if path.is_file():
                    attacked = json.loads(path.read_text(encoding="utf-8"))
                    for metric in metrics:
                        values[metric].append(attacked[metric])
            entry[domain] = {metric: summarise(v) for metric, v in values.items()}
        table[row.key] = entry
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


def early_stopping_of(trainer: dict[str, Any]) -> dict[str, Any] | None:
    """The init args of an ``EarlyStopping`` callback in a trainer config, or None."""
    for callback in trainer.get("callbacks") or []:
        if isinstance(callback, dict) and str(callback.get("class_path", "")).endswith("EarlyStopping"):
            return callback.get("init_args") or {}
    return None


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


TEST_SET_WORDS = {
    "test": " (the corpus's test split, the paper's protocol)",
    "test_large": " (the large test set: about 1900 reviews per domain outside the labelled 2000)",
}


def render_markdown(config: dict[str, Any], summary: dict[str, Any]) -> str:
    from metakd import report

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
    lines += report.render_tables(config, summary) + report.render_comparisons(config, summary)
    for test_set, tables in (summary.get("by_test_set") or {}).items():
        if test_set != primary:
            lines += [f"## Test accuracy on `{test_set}`{TEST_SET_WORDS.get(test_set, '')}", ""]
            lines += report.render_tables(config, {**summary, **tables, "ablation": tables.get("ablation")})
    if "scarcity" in summary:
        scarcity = summary["scarcity"]
        for domain, rows in scarcity["points"].items():
            fractions = sorted({float(f) for points in rows.values() for f in points})
            lines += [f"## Data scarcity ({domain})", ""]
            lines.append(f"| {domain} student | " + " | ".join(f"{100 * f:g}%" for f in fractions) + " |")
            lines.append("| --- |" + " ---: |" * len(fractions))
            for method, points in rows.items():
                values = [report.fmt(points.get(str(f), {})) for f in fractions]
                lines.append(f"| {scarcity['labels'].get(method, method)} | " + " | ".join(values) + " |")
            lines.append("")
        if scarcity.get("plot"):
            lines += ["", f"![data scarcity]({Path(scarcity['plot']).name})"]
        lines.append("")
        from metakd import scarcity_report

        lines += scarcity_report.render(scarcity, scarcity["labels"])
    if "zero_shot" in summary and summary["zero_shot"]:
        zero = summary["zero_shot"]
        lines += ["## Zero-shot", "", "| Meta-KD student | domain | test accuracy |", "| --- | --- | ---: |"]
        if "unseen" in zero:
            lines.append(
                f"| teacher never saw the domain (stand-in `{zero['unseen']['teacher_domain']}`) | "
                f"{zero['unseen']['domain']} | {report.fmt(zero['unseen'])} |"
            )
        if "seen" in zero:
            lines.append(
                f"| teacher saw the domain | {zero['seen']['domain']} | {report.fmt(zero['seen'])} |"
            )
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
                f"{report.fmt(row[d]['accuracy_under_attack'])} ({report.fmt(row[d]['clean_accuracy'])})"
                for d in domains
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
                + " | ".join(report.fmt(row[d]["attack_success_rate"]) for d in domains)
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
    lines += report.render_costs(config, summary)
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
    from metakd import report

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
    if summary.get("teacher_curves"):
        curves_path = results_dir / f"{config['name']}_teacher_curves.png"
        summary["teacher_curves_plot"] = plot_teacher_curves(summary["teacher_curves"], curves_path)
    predictions_path = results_dir / f"{config['name']}_predictions.jsonl.gz"
    primary = report_test_set(config)
    count = report.bundle_predictions(
        predictions_path,
        [(seed, cell.name) for seed in config["seeds"] for cell in cells],
        lambda seed, name: cell_predictions(read_result(config, seed, name), primary),
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


# --------------------------------------------------------------------------------------------------
# command line


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
    if args.plan:
        for cell in plan_cells(config):
            if selected(cell, args.kinds, args.cells):
                print(f"{cell.kind:<8} {cell.name:<36} needs {cell.needs or '-'}")
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


if __name__ == "__main__":
    sys.exit(main_with_boundary(main)())
