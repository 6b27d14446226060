"""Statistics of the benchmark: mean ± std over seeds and paired bootstrap intervals of accuracy gaps.

The table's average of a method is the mean over seeds of its per-seed average over domains, so every
(domain, seed) pair -- a *stratum* -- weighs the same, whatever its test-set size. The difference of two
methods on the same test examples is measured the same way:

    diff = mean over strata s of [acc_a(s) - acc_b(s)],   acc(s) = mean of 1[pred == label] in s

and its paired bootstrap resamples, in every stratum independently, that stratum's test examples with
replacement (the same draw for both methods: the pairing), recomputes ``diff``, and takes the 2.5% and
97.5% percentiles of the resampled values (a percentile interval). A difference is *significant* when
its interval excludes 0.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


def mean_std(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean, sample standard deviation (0 for one value), n and the values, ignoring None and NaN."""
    kept = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not kept:
        return {"mean": None, "std": None, "n": 0, "values": []}
    std = statistics.stdev(kept) if len(kept) > 1 else 0.0
    return {"mean": statistics.fmean(kept), "std": std, "n": len(kept), "values": kept}


@dataclass
class PairedInterval:
    """A paired bootstrap interval of ``acc_a - acc_b`` (fractions, not percent)."""

    diff: float  # the observed difference (mean over strata)
    low: float
    high: float
    significant: bool  # the interval excludes 0
    n_examples: int
    n_strata: int
    resamples: int
    confidence: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_bootstrap(
    correct_a: Sequence[float] | np.ndarray,
    correct_b: Sequence[float] | np.ndarray,
    strata: Sequence[Hashable] | np.ndarray,
    resamples: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedInterval:
    """Paired bootstrap percentile interval of the stratified accuracy difference ``a - b``.

    Args:
        correct_a, correct_b: per test example, 1 if method a (b) predicted it right, else 0; the same
            examples in the same order for both (the pairing).
        strata: per example, its stratum (e.g. ``(domain, seed)``); examples are resampled within it.
        resamples: bootstrap replicates.
        confidence: the interval's nominal coverage (0.95: the 2.5% and 97.5% percentiles).
        seed: the resampling generator's seed (the interval is reproducible).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    a, b, keys = _check(np.asarray(correct_a, float), np.asarray(correct_b, float), _labels(strata))
    delta = a - b
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(keys == s) for s in np.unique(keys)]
    total = np.zeros(resamples)
    for rows in groups:  # each stratum: its mean difference in every replicate
        draws = rng.integers(0, len(rows), size=(resamples, len(rows)))
        total += delta[rows][draws].mean(axis=1)
    replicates = total / len(groups)
    tail = (1 - confidence) / 2
    low, high = np.quantile(replicates, [tail, 1 - tail])
    observed = float(np.mean([delta[rows].mean() for rows in groups]))
    return PairedInterval(
        diff=observed,
        low=float(low),
        high=float(high),
        significant=bool(low > 0 or high < 0),
        n_examples=int(len(delta)),
        n_strata=len(groups),
        resamples=int(resamples),
        confidence=float(confidence),
    )


def pair_predictions(
    a: Mapping[tuple[Hashable, ...], bool], b: Mapping[tuple[Hashable, ...], bool]
) -> tuple[np.ndarray, np.ndarray, list[tuple[Hashable, ...]]]:
    """Join two methods' per-example correctness on their common keys ``(stratum..., example_id)``.

    Returns ``(correct_a, correct_b, keys)`` over the keys both have, sorted; raises when they share none.
    """
    common = sorted(set(a) & set(b), key=repr)
    if not common:
        raise ValueError("the two methods have no test example in common: nothing to pair")
    return (
        np.array([float(a[k]) for k in common]),
        np.array([float(b[k]) for k in common]),
        common,
    )


def _labels(strata: Sequence[Hashable] | np.ndarray) -> np.ndarray:
    """Strata as integer labels (any hashables, e.g. tuples)."""
    index: dict[Hashable, int] = {}
    items = strata.tolist() if isinstance(strata, np.ndarray) else list(strata)
    return np.array([index.setdefault(tuple(s) if isinstance(s, list) else s, len(index)) for s in items])


def _check(a: np.ndarray, b: np.ndarray, strata: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if a.ndim != 1 or a.shape != b.shape or strata.shape != a.shape:
        raise ValueError(
            f"correct_a, correct_b and strata must be 1-d of one length, got {a.shape}, {b.shape}, "
            f"{strata.shape}"
        )
    if not len(a):
        raise ValueError("no examples to compare")
    return a, b, strata
