"""The plan: every cell (one model: a teacher, a search or a student) of one seed, and what it needs.

:func:`plan_cells` turns a checked config (:mod:`.config`) into cells: the teachers the rows of ``methods``
need (single-domain, mixed-domain, meta-teacher, the ablation study's extra teachers), a student per row,
target domain and budget (budget A gives a staged method its own cell with the intermediate epochs on top:
:func:`budget_overrides`), the scarcity study's students per training fraction, the zero-shot pair and the
ablation rows. A cell is a name, a kind, overrides of the base config and the cells it needs; its resolved
config and store key are :mod:`.store`'s. Teachers come first, so a sequential run never waits.
"""

from __future__ import annotations

import copy
import fnmatch
import json
from dataclasses import dataclass, field
from typing import Any

from metakd.pipeline.config import (
    DEFAULT_METHODS,
    PipelineError,
    deep_merge,
    is_staged,
    row_spec,
    scarcity_settings,
    zero_shot_settings,
)


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


def zero_shot_cell_name(domain: str) -> str:
    return f"student/meta_zeroshot/{domain}"


def search_cell_name(method: str, domain: str) -> str:
    return f"search/{method}/{domain}"


def main_cell_name(row: str, domain: str) -> str:
    return {
        "teacher_single": f"teacher/single/{domain}",
        "teacher_mixed": "teacher/mixed",
        "teacher_meta": "teacher/meta",
    }.get(row, f"student/{row.removeprefix('student_')}/{domain}")


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
        roles = {spec.teacher_role for spec in specs} | set(config.get("teachers") or [])
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


def selected(cell: Cell, kinds: list[str] | None = None, patterns: list[str] | None = None) -> bool:
    """Whether ``--kinds`` (teacher/student) and ``--cells`` (shell patterns of names) select ``cell``."""
    if kinds and cell.kind not in kinds:
        return False
    return not patterns or any(fnmatch.fnmatchcase(cell.name, p) for p in patterns)


def cell_study(cell: Cell) -> str:
    """The study a cell belongs to (``main`` for the main study's teachers and students)."""
    study = str(cell.info.get("study", "main"))
    return "zero_shot" if study == "zero_shot_reference" else study


def in_group(group: dict[str, Any], seed: int, cell: Cell) -> bool:
    """Whether a ``priorities`` group names this cell: its seed is one of the group's ``seeds`` (when
    given), and one of its ``rows``, ``studies``, ``teachers`` or ``cells`` (when any is given) names it."""
    if "seeds" in group and seed not in group["seeds"]:
        return False
    row = str(cell.info.get("row", ""))
    selectors = {
        "rows": lambda r: row in (f"student_{r}", f"student_{r}@A", f"search_{r}"),
        "studies": lambda s: cell_study(cell) == s,
        "teachers": lambda t: cell.kind == "teacher" and row == f"teacher_{t}",
        "cells": lambda pattern: fnmatch.fnmatchcase(cell.name, pattern),
    }
    given = [key for key in selectors if key in group]
    return not given or any(selectors[key](value) for key in given for value in group[key])


def priorities(config: dict[str, Any], jobs: list[tuple[int, Cell]]) -> dict[tuple[int, str], int]:
    """The priority of each ``(seed, cell)``: the number of the first ``priorities`` group that names it
    (1 for every cell of a config without groups; one more than the last group for a cell none names),
    raised to that of the most urgent cell of the same seed that needs it (a teacher runs with its first
    student)."""
    groups = config.get("priorities") or []
    rank = {
        (seed, cell.name): next(
            (number for number, group in enumerate(groups, 1) if in_group(group, seed, cell)), len(groups) + 1
        )
        for seed, cell in jobs
    }
    for seed, cell in reversed(jobs):  # students come after what they need: their rank is final first
        for need in cell.needs:
            if (seed, need) in rank:
                rank[(seed, need)] = min(rank[(seed, need)], rank[(seed, cell.name)])
    return rank


def ordered_jobs(config: dict[str, Any], cells: list[Cell]) -> list[tuple[int, Cell]]:
    """Every ``(seed, cell)`` in the order they run: by priority, then seed, then the planned order (the
    cells a cell needs come before it: they have its priority or a more urgent one)."""
    jobs = [(seed, cell) for seed in config["seeds"] for cell in cells]
    rank = priorities(config, jobs)
    return sorted(jobs, key=lambda job: rank[(job[0], job[1].name)])  # stable: seed, then planned order
