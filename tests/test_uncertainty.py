"""Bootstrap intervals: nominal coverage on a case with a known answer, seeding, pairing, and the
examples a split needs to resolve a difference."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tunelab.uncertainty import (examples_to_resolve, mean_of, paired_difference, percentile_interval,
                                 resample_indices)


def test_resample_indices_shape_range_and_seed():
    idx = resample_indices(50, resamples=200, seed=3)
    assert idx.shape == (200, 50) and idx.min() >= 0 and idx.max() < 50
    assert np.array_equal(idx, resample_indices(50, resamples=200, seed=3))
    assert not np.array_equal(idx, resample_indices(50, resamples=200, seed=4))
    assert len(np.unique(idx[0])) < 50  # drawn with replacement: ~63% of the examples appear in a resample


def test_90_percent_interval_of_a_mean_covers_the_true_value_about_90_percent_of_the_time():
    p, n, samples = 0.8, 300, 200
    covered = 0
    for seed in range(samples):
        correct = np.random.default_rng(10_000 + seed).random(n) < p
        lo, hi = percentile_interval(mean_of(correct), n, resamples=1000, confidence=0.9, seed=seed)
        covered += lo <= p <= hi
    # Over 200 independent samples the share covered is Binomial(200, 0.9)/200: sd = sqrt(0.9·0.1/200) ≈ 0.021,
    # so 0.84–0.96 is ±~2.8 sd (the percentile bootstrap of a mean also under-covers slightly at n = 300).
    assert 0.84 <= covered / samples <= 0.96


def test_interval_is_reproducible_from_its_seed_and_brackets_the_estimate():
    x = np.random.default_rng(0).normal(size=120)
    a = percentile_interval(mean_of(x), 120, seed=7)
    assert a == percentile_interval(mean_of(x), 120, seed=7)
    assert a != percentile_interval(mean_of(x), 120, seed=8)
    assert a[0] < x.mean() < a[1]
    wider = percentile_interval(mean_of(x), 120, seed=7, confidence=0.99)
    assert wider[0] < a[0] and wider[1] > a[1]


def test_undefined_resamples_are_ignored():
    # The mean over rows where `where` holds is undefined in resamples that draw none of them.
    values, where = np.ones(20), np.eye(20)[0].astype(bool)
    assert percentile_interval(mean_of(values, where), 20, resamples=200) == (1.0, 1.0)
    assert all(math.isnan(v) for v in percentile_interval(lambda idx: math.nan, 20, resamples=50))


def test_paired_difference_of_a_method_with_itself_is_exactly_zero():
    x = np.random.default_rng(1).random(100) < 0.7
    out = paired_difference(mean_of(x), mean_of(x), 100)
    assert out == {"value": 0.0, "interval": [0.0, 0.0]}


def test_pairing_narrows_the_interval_of_a_difference_between_correlated_classifiers():
    # Two classifiers that agree on most examples: B keeps 97% of A's right answers and fixes a quarter of its
    # wrong ones (about 30 of 400 examples differ).
    rng = np.random.default_rng(2)
    n = 400
    a = rng.random(n) < 0.75
    u = rng.random(n)
    b = np.where(a, u > 0.03, u < 0.25)
    paired = paired_difference(mean_of(b), mean_of(a), n, seed=0)
    assert paired["value"] == pytest.approx(b.mean() - a.mean())
    assert paired["interval"][0] < paired["value"] < paired["interval"][1]
    # Unpaired: each method resampled on its own draws, as if they had been tested on different examples; the
    # difficulty the two share then adds to the spread instead of cancelling.
    diffs = [b[i].mean() - a[j].mean() for i, j in zip(resample_indices(n, 1000, 0), resample_indices(n, 1000, 1))]
    unpaired = np.percentile(diffs, [5, 95])
    assert (paired["interval"][1] - paired["interval"][0]) < 0.6 * (unpaired[1] - unpaired[0])


def test_examples_to_resolve():
    # At 300 examples the interval is ±0.05; a difference of 0.025 is half that, so 2² = 4× the examples.
    assert examples_to_resolve(300, 0.05, 0.025) == 1200
    assert examples_to_resolve(300, 0.05, -0.025) == 1200
    assert examples_to_resolve(300, 0.05, 0.1) == 75  # already resolved at 300: 75 would do
    assert examples_to_resolve(100, 0.03, 0.02) == 225
    assert examples_to_resolve(100, 0.031, 0.02) == 241  # 240.25, rounded up
    assert examples_to_resolve(300, 0.05, 0.0) is None
