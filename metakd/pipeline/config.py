"""The pipeline config and its checks (``python -m metakd pipeline --config <file>``).

A pipeline config names the corpus and its target ``domains``, the base LightningCLI configs of every
teacher and student (``teacher:``, ``student:``, a shared ``data:`` block), the ``studies``, the rows of the
main table (``methods``: registry methods or ``variants``), the ``budgets``, the ``seeds`` and where runs
and results go. :func:`load_pipeline_config` reads one (``extends:``, ``quick:``, the built-in budget of
:data:`DEFAULTS_FILE` for a config with neither ``teacher:`` nor ``student:``) and :func:`check_choices`
refuses bad settings with one line naming the file and the key. What a row means (its method, teacher role
and label: :class:`RowSpec`) and the study settings are read here too, so that the plan and the report read
them the same way.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from metakd.errors import MetakdError

DEFAULTS_FILE = Path(__file__).resolve().parent.parent / "pipeline_defaults.yaml"
"""The built-in budget of a config that has neither ``teacher:`` nor ``student:`` (a user's corpus)."""

STUDIES = ("main", "scarcity", "zero_shot", "ablation")
BUDGETS = ("A", "B")
KEEP_CHECKPOINTS = ("all", "best", "none")
DEFAULT_METHODS = ("none", "vanilla", "tinybert", "meta")
"""The Meta-KD paper's comparison: the default ``methods`` of a pipeline config."""


TEACHER_ROWS = {
    "single": ("teacher_single", "Teacher: single-domain"),
    "mixed": ("teacher_mixed", "Teacher: mixed-domain"),
    "meta": ("teacher_meta", "Teacher: meta-teacher"),
}
"""Teacher roles the pipeline trains (``Distiller.teacher_role``), as table rows."""


VARIANT_KEYS = ("method", "label", "teacher", "model", "data", "trainer", "search")


class PipelineError(MetakdError, RuntimeError):
    """A bad pipeline configuration."""


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
    methods: list[str],
    variants: dict[str, Any] | None = None,
    extra_teachers: dict[str, Any] | None = None,
    teachers: Any = (),
) -> list[tuple[str, str]]:
    """``(row key, label)`` of the main table: the teachers the rows need (and the roles of ``teachers``,
    trained whether a row needs them or not), then one row per entry of ``methods``, labelled from the
    registry or the variant (``Student: <label> (<teacher>)``)."""
    from metakd.distill import TEACHER_ROLES

    extra_teachers = extra_teachers or {}
    specs = [row_spec(method, variants, extra_teachers) for method in methods]
    roles = {spec.teacher_role for spec in specs} | set(teachers)
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


def deep_merge(base: Any, override: Any) -> Any:
    """``override`` merged into a copy of ``base`` (mappings recursively; other values replace)."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = copy.deepcopy(base)
        for key, value in override.items():
            merged[key] = deep_merge(merged[key], value) if key in merged else copy.deepcopy(value)
        return merged
    return copy.deepcopy(override)


def read_extended(path: Path) -> dict[str, Any]:
    """The YAML of ``path`` merged onto the file its ``extends:`` names (recursively), unprocessed. The
    other file's ``priorities`` are not inherited: they order (and extend) that file's own study."""
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise PipelineError(f"cannot read the pipeline config {path}: {err}") from err
    if not isinstance(config, dict):
        raise PipelineError(f"{path}: a pipeline config is a mapping, got {type(config).__name__}")
    if "extends" in config:
        base = read_extended(path.parent / config.pop("extends"))
        base.pop("priorities", None)
        config = deep_merge(base, config)
    return config


def load_pipeline_config(path: str | Path, quick: bool = False) -> dict[str, Any]:
    """Read a pipeline config; ``extends: <file>`` merges onto another one, ``quick`` (or ``--quick``)
    merges the ``quick:`` section and appends ``_quick`` to the name. A top-level ``data:`` block is
    the datamodule of every cell: it is merged under ``teacher:`` and ``student:``, whose own ``data:``
    keys override it. A config with neither ``teacher:`` nor ``student:`` (a user's corpus: ``data``,
    ``domains`` and a name) is merged onto the built-in budget, :data:`DEFAULTS_FILE`."""
    path = Path(path)
    config = read_extended(path)
    if "teacher" not in config and "student" not in config:
        config = deep_merge(read_extended(DEFAULTS_FILE), config)
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
    check_priorities(path, config)
    apply_priorities(config)
    check_choices(path, config)
    return config


PRIORITY_KEYS = ("name", "rows", "studies", "teachers", "seeds", "cells")


def check_priorities(path: str | Path, config: dict[str, Any]) -> None:
    """``priorities`` is a list of groups, each a mapping of :data:`PRIORITY_KEYS` naming known rows (a
    variant or a registry method), studies, teacher roles, seeds and cell-name patterns."""
    groups = config.get("priorities")
    if groups is None:
        return
    if not isinstance(groups, list) or not all(isinstance(group, dict) for group in groups):
        raise PipelineError(
            f"{path}: `priorities` must be a list of groups, each a mapping of {list(PRIORITY_KEYS[1:])} "
            f"(the first group runs first), got {groups!r}"
        )
    rows = set(config.get("variants") or {}) | set(registered_methods())
    known = {"studies": set(STUDIES), "teachers": set(TEACHER_ROWS), "rows": rows}
    for number, group in enumerate(groups, 1):
        where = f"{path}: priorities, group {number}"
        unknown = sorted(set(group) - set(PRIORITY_KEYS))
        if unknown:
            raise PipelineError(f"{where} has unknown keys {unknown}; known: {list(PRIORITY_KEYS)}")
        if not set(group) - {"name"}:
            raise PipelineError(f"{where} selects nothing: give rows, studies, teachers, seeds or cells")
        for key in PRIORITY_KEYS[1:]:
            values = group.get(key, [])
            kind = int if key == "seeds" else str
            if not isinstance(values, list) or not all(
                isinstance(v, kind) and not isinstance(v, bool) for v in values
            ):
                raise PipelineError(f"{where}: `{key}` must be a list of {kind.__name__}s, got {values!r}")
            bad = sorted(set(values) - known[key]) if key in known else []
            if bad:
                raise PipelineError(f"{where}: unknown {key} {bad}; known: {sorted(known[key])}")


def apply_priorities(config: dict[str, Any]) -> None:
    """The plan covers what the ``priorities`` groups name: their studies join ``studies``, their teacher
    roles join ``teachers``, and their rows join ``methods`` (the main study's rows), unless a study of the
    plan has them already (``ablations`` with the ablation study, the scarcity rows with that study)."""
    groups = config.get("priorities") or []
    for group in groups:
        config["studies"] += [s for s in group.get("studies", []) if s not in config["studies"]]
    planned = set(config["methods"])
    if "ablation" in config["studies"]:
        planned |= set(config["ablations"])
    if "scarcity" in config["studies"]:
        planned |= set(scarcity_settings(config)[1])
    for group in groups:
        for row in group.get("rows", []):
            if row not in planned:
                config["methods"].append(row)
                planned.add(row)
        if group.get("teachers"):
            teachers = config.setdefault("teachers", [])
            teachers += [t for t in group["teachers"] if t not in teachers]


def check_choices(path: str | Path, config: dict[str, Any]) -> None:
    """``studies``, ``methods``, ``budgets``, ``extra_teachers``, ``ablations``, ``keep_checkpoints``,
    ``twins`` and ``pairs`` name known ones and are well formed."""
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
    check_twins(path, config)
    check_pairs(path, config)


def check_twins(path: str | Path, config: dict[str, Any]) -> None:
    """``twins`` (optional) maps a main-table row to its no-KD twin, each named as ``compare_to`` names a
    row: a ``variants`` entry or a registry method (a row left out of ``methods``, e.g. by a config that
    ``extends`` this one with fewer rows, is skipped by the report)."""
    twins = config.get("twins")
    if twins is None:
        return
    if not isinstance(twins, dict) or not all(isinstance(n, str) for pair in twins.items() for n in pair):
        raise PipelineError(f"{path}: `twins` must be a mapping of row -> its no-KD twin row, got {twins!r}")
    check_row_names(path, config, "twins", [*twins, *twins.values()])


def check_pairs(path: str | Path, config: dict[str, Any]) -> None:
    """``pairs`` (optional) lists ``[row, other]`` pairs of rows, each named as ``compare_to`` names a row;
    the report gives the paired intervals of row minus other."""
    pairs = config.get("pairs")
    if pairs is None:
        return
    if not isinstance(pairs, list) or not all(
        isinstance(pair, list) and len(pair) == 2 and all(isinstance(n, str) for n in pair) for pair in pairs
    ):
        raise PipelineError(f"{path}: `pairs` must be a list of [row, other row] pairs, got {pairs!r}")
    check_row_names(path, config, "pairs", [name for pair in pairs for name in pair])


def check_row_names(path: str | Path, config: dict[str, Any], key: str, names: list[str]) -> None:
    """Each of ``names`` (given under ``key``) is a ``variants`` entry or a registry method."""
    known = set(config.get("variants") or {}) | set(registered_methods())
    for name in names:
        if name not in known:
            raise PipelineError(f"{path}: `{key}` names unknown row {name!r}; known rows: {sorted(known)}")


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
