"""Bootstrap confidence intervals for metrics measured on a finite set of examples.

Method: Efron's percentile bootstrap (Efron & Tibshirani 1993, *An Introduction to the Bootstrap*,
ch. 13). The n evaluation examples are drawn n times with replacement, the metric is recomputed on
the drawn examples, and this is repeated `resamples` times; the (1 − confidence)/2 and
(1 + confidence)/2 percentiles of the recomputed values bound the interval.

The metric is recomputed from scratch on every resample rather than averaged from per-example scores,
because several metrics are not averages: macro F1 comes from per-class counts, r² and Pearson from
whole-sample moments, and corpus-level BLEU/chrF from n-gram counts summed over the corpus before the
score is taken. A statistic is therefore a plain function of an index array (the drawn examples) to a
float; callers compose them freely, e.g. the mean over several training seeds' statistics at the same
indices.

Differences between two methods use the paired bootstrap (Koehn 2004, "Statistical Significance Tests
for Machine Translation Evaluation"): every method predicts the same examples, so both are recomputed
on the SAME drawn indices. The examples' shared difficulty then cancels, and the interval of the
difference is much narrower than the one two independent resamplings would give. `resample_indices`
with one seed always draws the same indices, which is what pairs two separate calls.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike

Statistic = Callable[[np.ndarray], float]


def resample_indices(n: int, resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """`resamples` × n example indices drawn with replacement; the same seed gives the same indices."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n)) if n else np.zeros((resamples, 0), int)


def mean_of(values: ArrayLike, where: ArrayLike | None = None) -> Statistic:
    """The statistic "mean of per-example `values` over the drawn examples", over those where `where` holds
    if given (nan when none of them was drawn)."""
    values = np.asarray(values, dtype=float)
    if where is None:
        return lambda idx: float(values[idx].mean()) if len(idx) else math.nan
    weights = np.asarray(where, dtype=float)

    def masked_mean(idx: np.ndarray) -> float:
        count = weights[idx].sum()
        return float(values[idx] @ weights[idx] / count) if count else math.nan
    return masked_mean


def _bounds(values: np.ndarray, confidence: float) -> tuple[float, float]:
    # A resample can leave a statistic undefined (no unanswerable question drawn): it carries no information
    # about the interval, so it is dropped rather than poisoning the percentiles.
    values = values[np.isfinite(values)]
    if not values.size:
        return math.nan, math.nan
    tail = 100 * (1 - confidence) / 2
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def percentile_interval(statistic: Statistic, n: int, *, resamples: int = 1000, confidence: float = 0.9,
                        seed: int = 0) -> tuple[float, float]:
    """(lo, hi): the percentile bootstrap interval of `statistic` over n examples.

    Args:
        statistic: the metric recomputed on the examples at an index array (repeats allowed).
        n: number of examples the statistic is defined over.
        resamples: bootstrap resamples drawn.
        confidence: the interval's nominal coverage, e.g. 0.9 for the 5th–95th percentiles.
        seed: seeds the draws; the same seed draws the same indices for every statistic.
    """
    values = np.array([statistic(idx) for idx in resample_indices(n, resamples, seed)], dtype=float)
    return _bounds(values, confidence)


def paired_difference(a: Statistic, b: Statistic, n: int, *, resamples: int = 1000, confidence: float = 0.9,
                      seed: int = 0) -> dict[str, float | list[float]]:
    """a − b on all n examples (`value`) and its paired bootstrap interval (`interval`: [lo, hi]), both
    statistics recomputed on the same drawn indices."""
    values = np.array([a(idx) - b(idx) for idx in resample_indices(n, resamples, seed)], dtype=float)
    everything = np.arange(n)
    return {"value": float(a(everything) - b(everything)), "interval": list(_bounds(values, confidence))}


def examples_to_resolve(n: int, half_width: float, difference: float) -> int | None:
    """Examples a split would need for an interval whose half-width is `half_width` at n examples to shrink
    below |difference|, given that the half-width scales as 1/sqrt(n): n · (half_width / |difference|)²,
    rounded up. None for a zero difference (no number of examples resolves it) or an undefined half-width."""
    if difference == 0 or not math.isfinite(half_width):
        return None
    needed = n * (half_width / abs(difference)) ** 2
    return math.ceil(needed - 1e-9 * needed)  # 1200.0000000000002 is 1200 examples, not 1201
