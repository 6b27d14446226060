"""metakd.stats: mean ± std over seeds and the paired bootstrap interval, on values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from metakd.stats import mean_std, pair_predictions, paired_bootstrap


def test_mean_std_is_the_sample_std_and_skips_missing_values() -> None:
    out = mean_std([0.65, None, 0.72, float("nan")])
    assert out["n"] == 2 and out["values"] == [0.65, 0.72]
    assert out["mean"] == pytest.approx(0.685)
    assert out["std"] == pytest.approx(0.07 / math.sqrt(2))  # |a - b| / sqrt(2) for two values
    assert mean_std([0.5]) == {"mean": 0.5, "std": 0.0, "n": 1, "values": [0.5]}
    assert mean_std([None])["mean"] is None


def test_always_right_against_always_wrong_is_a_sure_difference_of_one() -> None:
    interval = paired_bootstrap([1, 1, 1, 1], [0, 0, 0, 0], ["s"] * 4, resamples=200)
    assert (interval.diff, interval.low, interval.high) == (1.0, 1.0, 1.0)
    assert interval.significant and interval.n_examples == 4 and interval.n_strata == 1


def test_identical_predictions_give_zero_and_no_significance() -> None:
    same = [1, 0, 1, 1, 0]
    interval = paired_bootstrap(same, same, ["s"] * 5, resamples=200)
    assert (interval.diff, interval.low, interval.high, interval.significant) == (0.0, 0.0, 0.0, False)


def test_strata_weigh_equally_whatever_their_size() -> None:
    # stratum x: a right, b wrong on both examples (gap 1); stratum y: both wrong on all four (gap 0).
    # Equal weights per stratum: (1 + 0) / 2 = 0.5, not the pooled 2/6. Within-stratum gaps are
    # constant, so every replicate is 0.5 too.
    a = [1, 1, 0, 0, 0, 0]
    b = [0, 0, 0, 0, 0, 0]
    strata = [("x", 1), ("x", 1), ("y", 1), ("y", 1), ("y", 1), ("y", 1)]
    interval = paired_bootstrap(a, b, strata, resamples=300)
    assert interval.diff == pytest.approx(0.5)
    assert interval.low == pytest.approx(0.5) and interval.high == pytest.approx(0.5)
    assert interval.n_strata == 2


def test_two_examples_one_gap_spans_zero_to_one() -> None:
    # d = [1, 0]: a replicate's mean is 0 (p 1/4), 1/2 (p 1/2) or 1 (p 1/4); the 2.5% and 97.5%
    # percentiles are therefore 0 and 1, and 0 is not excluded.
    interval = paired_bootstrap([1, 0], [0, 0], ["s", "s"], resamples=10000, seed=3)
    assert interval.diff == 0.5
    assert (interval.low, interval.high) == (0.0, 1.0)
    assert not interval.significant


def test_large_sample_interval_matches_the_normal_approximation() -> None:
    # 2000 paired examples: gap +1 on 400, -1 on 200, 0 on 1400. Mean 0.1; var = 0.3 - 0.01 = 0.29;
    # standard error sqrt(0.29 / 2000) = 0.01204, so about 0.1 ± 1.96 * 0.01204 = [0.0764, 0.1236].
    a = np.array([1] * 400 + [0] * 200 + [1] * 700 + [0] * 700)
    b = np.array([0] * 400 + [1] * 200 + [1] * 700 + [0] * 700)
    interval = paired_bootstrap(a, b, np.zeros(2000), resamples=4000, seed=0)
    assert interval.diff == pytest.approx(0.1)
    assert interval.low == pytest.approx(0.0764, abs=0.004)
    assert interval.high == pytest.approx(0.1236, abs=0.004)
    assert interval.significant
    again = paired_bootstrap(a, b, np.zeros(2000), resamples=4000, seed=0)
    assert again == interval  # seeded: reproducible


def test_the_interval_covers_the_true_difference_about_95_percent_of_the_time() -> None:
    # Toy truth: method a is right with p 0.85, b with p 0.80, independently, on 3 strata of 150 examples.
    # The true stratified difference is 0.05; a 95% interval should cover it in roughly 95% of datasets.
    rng = np.random.default_rng(12345)
    strata = np.repeat([0, 1, 2], 150)
    covered = 0
    trials = 200
    for trial in range(trials):
        a = rng.random(450) < 0.85
        b = rng.random(450) < 0.80
        interval = paired_bootstrap(a, b, strata, resamples=500, seed=trial)
        covered += interval.low <= 0.05 <= interval.high
    assert 0.88 <= covered / trials <= 0.99


def test_pairing_keeps_the_common_examples_only() -> None:
    a = {("books", 1, 0): True, ("books", 1, 1): False, ("dvd", 1, 0): True}
    b = {("books", 1, 1): True, ("dvd", 1, 0): False, ("dvd", 1, 5): True}
    correct_a, correct_b, keys = pair_predictions(a, b)
    assert keys == [("books", 1, 1), ("dvd", 1, 0)]
    assert correct_a.tolist() == [0.0, 1.0] and correct_b.tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="no test example in common"):
        pair_predictions({("x", 1, 0): True}, {("y", 1, 0): True})


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="one length"):
        paired_bootstrap([1, 0], [1], ["s", "s"])
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap([1], [1], ["s"], confidence=1.5)
