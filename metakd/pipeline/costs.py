"""The CPU plan's cost model: the CPU seconds a cell will take, fitted to the finished cells' measured ones.

A cell's **work** is read from its resolved config (:func:`work_units`)::

    units = max_length x (trained examples + EVAL_WEIGHT x tested examples)

- trained examples: ``max_steps x batch_size x accumulate_grad_batches`` when the trainer is capped in
  steps (a teacher that stops early counts its cap: its family's rate absorbs how early its members
  stop), else ``epochs x`` the examples of an epoch: ``limit_train_batches x batch_size`` when that is a
  count, else the training set's size (times ``limit_train_batches`` when that is a fraction). A search
  cell trains ``search.steps x search.batch_size`` examples.
- tested examples: the size of each test set the cell is scored on.
- The sizes of training and test sets are learned from finished cells on the same data (``train_examples``
  in a result's dev curve, the number of per-example predictions of each test set); a data set that no
  finished cell has seen counts :data:`DEFAULT_TRAIN_PER_DOMAIN` / :data:`DEFAULT_TEST_PER_DOMAIN` examples
  per domain (Amazon's split), times ``train_fraction``.

A **family** (:func:`family`) is the cells that cost the same per unit: a teacher by its class, backbone,
instance weighting and meta-weight engine, domain loss, and whether it trains on one domain or all; a
student by its architecture, distillation method and whether it caches its teacher's outputs; a search by
its config. Each family's CPU seconds are fitted as ``overhead + rate x units`` (least squares when its
cells have different units, else ``rate = sum(cpu) / sum(units)`` and no overhead). A family with no
finished cell takes the fit of all finished cells of its kind, and a kind with none takes
:data:`DEFAULT_RATES` (measured from the main job's committed results on the 2-core machine).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from metakd.pipeline.cellstore import parse_id_ranges

EVAL_WEIGHT = 1 / 3
"""A tested example costs about a third of a trained one (a forward pass, no backward)."""
DEFAULT_TRAIN_PER_DOMAIN = 1620
DEFAULT_TEST_PER_DOMAIN = {"test": 200, "test_large": 1900}
DEFAULT_RATES = {"teacher": 1.5e-3, "student": 1.0e-3, "search": 1.0e-3}
"""CPU seconds per unit when nothing of a kind has finished: benchmarks/results/main_job*.json (a MiniLM-L6
meta-teacher, 300 steps of 32 at max_length 64: about 16 CPU minutes; 2-layer students, 3 epochs of a
domain's 1620 reviews: 5 to 7 CPU minutes each)."""
_DATA_KEYS_IGNORED = ("batch_size", "eval_batch_size", "cache_dir", "num_workers", "test_set", "max_length")


def data_identity(resolved: dict[str, Any]) -> str:
    """Which data a cell reads (its datamodule and options that change the examples, not the batches)."""
    data = resolved.get("data") or {}
    init_args = {k: v for k, v in (data.get("init_args") or {}).items() if k not in _DATA_KEYS_IGNORED}
    return json.dumps({"class_path": data.get("class_path"), **init_args}, sort_keys=True, default=str)


def _domains_read(resolved: dict[str, Any], corpus_domains: int) -> int:
    init_args = (resolved.get("data") or {}).get("init_args") or {}
    if init_args.get("target_domain"):
        return 1
    return len(init_args.get("domains") or []) or corpus_domains


@dataclass
class DataSizes:
    """Training and test set sizes by :func:`data_identity`, learned from finished cells."""

    train: dict[str, int] = field(default_factory=dict)
    test: dict[tuple[str, str], int] = field(default_factory=dict)

    def learn(self, result: dict[str, Any]) -> None:
        resolved = result.get("config") or {}
        identity = data_identity(resolved)
        end = (result.get("dev_curve") or {}).get("end") or {}
        if end.get("train_examples"):
            self.train[identity] = int(end["train_examples"])
        for test_set, packed in (result.get("predictions") or {}).items():
            self.test[(identity, test_set)] = len(parse_id_ranges(packed.get("ids") or []))

    def train_examples(self, resolved: dict[str, Any], corpus_domains: int) -> float:
        known = self.train.get(data_identity(resolved))
        if known is not None:
            return float(known)
        init_args = (resolved.get("data") or {}).get("init_args") or {}
        fraction = float(init_args.get("train_fraction") or 1.0)
        return DEFAULT_TRAIN_PER_DOMAIN * _domains_read(resolved, corpus_domains) * fraction

    def test_examples(self, resolved: dict[str, Any], test_set: str, corpus_domains: int) -> float:
        known = self.test.get((data_identity(resolved), test_set))
        if known is not None:
            return float(known)
        per_domain = DEFAULT_TEST_PER_DOMAIN.get(test_set, DEFAULT_TEST_PER_DOMAIN["test"])
        return float(per_domain * _domains_read(resolved, corpus_domains))


def trained_examples(kind: str, resolved: dict[str, Any], sizes: DataSizes, corpus_domains: int) -> float:
    """How many training examples the cell's config asks for (see the module docstring)."""
    init_args = (resolved.get("data") or {}).get("init_args") or {}
    if kind == "search":
        search = resolved.get("search") or {}
        return float(search.get("steps", 0)) * float(search.get("batch_size", init_args.get("batch_size", 1)))
    trainer = resolved.get("trainer") or {}
    batch = float(init_args.get("batch_size") or 1) * float(trainer.get("accumulate_grad_batches") or 1)
    limit = trainer.get("limit_train_batches")
    epoch = sizes.train_examples(resolved, corpus_domains)
    if isinstance(limit, int) and not isinstance(limit, bool):
        epoch = min(epoch, limit * float(init_args.get("batch_size") or 1))
    elif isinstance(limit, float):
        epoch *= limit
    by_epochs = float(trainer["max_epochs"]) * epoch if (trainer.get("max_epochs") or 0) > 0 else math.inf
    max_steps = trainer.get("max_steps")
    by_steps = float(max_steps) * batch if max_steps not in (None, -1) and max_steps > 0 else math.inf
    planned = min(by_epochs, by_steps)
    return planned if math.isfinite(planned) else epoch


def work_units(
    kind: str, resolved: dict[str, Any], test_sets: Iterable[str], sizes: DataSizes, corpus_domains: int
) -> float:
    """``max_length x (trained examples + EVAL_WEIGHT x tested examples)`` of a cell."""
    init_args = (resolved.get("data") or {}).get("init_args") or {}
    length = float(init_args.get("max_length") or 128)
    tested = sum(sizes.test_examples(resolved, t, corpus_domains) for t in test_sets)
    return length * (trained_examples(kind, resolved, sizes, corpus_domains) + EVAL_WEIGHT * tested)


def family(kind: str, resolved: dict[str, Any]) -> str:
    """The cells that cost the same per unit of work (see the module docstring)."""
    model = resolved.get("model") or {}
    args = model.get("init_args") or {}
    data_args = (resolved.get("data") or {}).get("init_args") or {}
    if kind == "teacher":
        weighting = args.get("weighting", "prototype")
        parts = [model.get("class_path"), args.get("backbone"), f"weighting={weighting}",
                 f"domain_loss={args.get('domain_loss', 'corruption')}"]  # fmt: skip
        if "meta" in str(weighting):
            parts.append(f"engine={args.get('meta_engine', 'jvp')}/{args.get('meta_params', 'all')}")
        parts.append("one domain" if data_args.get("target_domain") else "pooled")
    elif kind == "student":
        student_model = args.get("student_model") or {}
        architecture = student_model or {k: args.get(k) for k in ("student_backbone", "student_layers",
                                                                   "student_config")}  # fmt: skip
        parts = [json.dumps(architecture, sort_keys=True), f"method={args.get('distillation', 'meta')}",
                 f"cache={args.get('cache_teacher_outputs', 'none')}"]  # fmt: skip
    else:
        parts = [json.dumps(resolved.get("search") or {}, sort_keys=True)]
    return f"{kind}: " + ", ".join(str(p) for p in parts)


@dataclass
class Fit:
    """``cpu seconds = overhead + rate x units`` of a family (or a kind), from ``cells`` finished cells."""

    overhead: float
    rate: float
    cells: int
    source: str  # "family", "kind" or "default"

    def estimate(self, units: float) -> float:
        return self.overhead + self.rate * units


def fit(points: list[tuple[float, float]], source: str) -> Fit:
    """Least squares of ``cpu = overhead + rate x units`` over ``(units, cpu)`` points when their units
    differ (by 20% or more) and give a positive overhead and rate; else the rate of the sums."""
    units = [u for u, _ in points]
    cpu = [c for _, c in points]
    if len(points) >= 2 and min(units) > 0 and max(units) >= 1.2 * min(units):
        mean_u, mean_c = sum(units) / len(units), sum(cpu) / len(cpu)
        spread = sum((u - mean_u) ** 2 for u in units)
        rate = sum((u - mean_u) * (c - mean_c) for u, c in points) / spread
        overhead = mean_c - rate * mean_u
        if rate > 0 and overhead >= 0:
            return Fit(overhead, rate, len(points), source)
    return Fit(0.0, sum(cpu) / max(sum(units), 1e-9), len(points), source)


@dataclass
class Finished:
    """A finished cell as the cost model sees it."""

    kind: str
    family: str
    units: float
    cpu_seconds: float


class CostModel:
    """Fits per family over finished cells' results and estimates any cell's CPU seconds."""

    def __init__(self, results: Iterable[dict[str, Any]], corpus_domains: int) -> None:
        # a resumed cell measured only its last call's CPU time (`cpu_incomplete`): no evidence of its cost
        results = [
            r
            for r in results
            if r.get("cpu_seconds") is not None and r.get("config") and not r.get("cpu_incomplete")
        ]
        self.corpus_domains = corpus_domains
        self.sizes = DataSizes()
        for result in results:
            self.sizes.learn(result)
        self.finished = [
            Finished(
                r["kind"],
                family(r["kind"], r["config"]),
                self.units(r["kind"], r["config"], list(r.get("test_sets") or ["test"])),
                float(r["cpu_seconds"]),
            )
            for r in results
        ]
        by_family: dict[str, list[tuple[float, float]]] = {}
        by_kind: dict[str, list[tuple[float, float]]] = {}
        for cell in self.finished:
            by_family.setdefault(cell.family, []).append((cell.units, cell.cpu_seconds))
            by_kind.setdefault(cell.kind, []).append((cell.units, cell.cpu_seconds))
        self.families = {name: fit(points, "family") for name, points in by_family.items()}
        self.kinds = {name: fit(points, "kind") for name, points in by_kind.items()}

    def units(self, kind: str, resolved: dict[str, Any], test_sets: Iterable[str]) -> float:
        return work_units(kind, resolved, test_sets, self.sizes, self.corpus_domains)

    def fit_for(self, kind: str, resolved: dict[str, Any]) -> Fit:
        found = self.families.get(family(kind, resolved)) or self.kinds.get(kind)
        return found or Fit(0.0, DEFAULT_RATES.get(kind, DEFAULT_RATES["student"]), 0, "default")

    def estimate(self, kind: str, resolved: dict[str, Any], test_sets: Iterable[str]) -> float:
        """Estimated CPU seconds of a cell (``resolved``: its config as :func:`.cellstore.identity` gives)."""
        return self.fit_for(kind, resolved).estimate(self.units(kind, resolved, test_sets))

    def mean_error(self, leave_one_out: bool = False) -> float | None:
        """Mean of ``|estimate - measured| / measured`` over the finished cells: of the fits themselves, or
        (``leave_one_out``) of each cell estimated by the fits of the others (as a cell still to run is)."""
        errors = []
        for index, cell in enumerate(self.finished):
            if cell.cpu_seconds <= 0:
                continue
            fitted = self.families[cell.family]
            if leave_one_out:
                others = [c for i, c in enumerate(self.finished) if i != index]
                points = [(c.units, c.cpu_seconds) for c in others if c.family == cell.family] or [
                    (c.units, c.cpu_seconds) for c in others if c.kind == cell.kind
                ]
                default = Fit(0.0, DEFAULT_RATES.get(cell.kind, DEFAULT_RATES["student"]), 0, "default")
                fitted = fit(points, "family") if points else default
            errors.append(abs(fitted.estimate(cell.units) - cell.cpu_seconds) / cell.cpu_seconds)
        return sum(errors) / len(errors) if errors else None
