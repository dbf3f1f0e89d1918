"""Uncertainty of mean scores: percentile bootstrap intervals over examples.

A run scores each strategy on a few dozen to a few hundred examples, so a difference of some
points between two strategies may be noise. `bootstrap_interval` resamples the examples with
replacement and takes the middle `confidence` share of the resampled means; applied to
per-example differences between two strategies on the same examples it is the paired bootstrap,
which is much tighter than comparing two separate intervals because the examples' difficulty
cancels out. The seed is fixed, so a report reads the same each time it is made.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RESAMPLES = 2000
SEED = 0
_BLOCK = 4_000_000  # resampled values drawn at once, to bound memory on large runs


def bootstrap_interval(values: Sequence[float], *, confidence: float = 0.95, resamples: int = RESAMPLES,
                       seed: int = SEED) -> tuple[float, float]:
    """(lo, hi): the percentile bootstrap interval of the mean of `values` (at least one). Where
    every value is the same (one value among them) there is nothing to resample: lo = hi = mean."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        raise ValueError("a bootstrap interval needs at least one value")
    if np.all(data == data[0]):
        return float(data[0]), float(data[0])
    means = _resampled_means(data, resamples, np.random.default_rng(seed))
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(means, [tail, 1 - tail])
    return float(lo), float(hi)


def _resampled_means(data: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """The means of `resamples` samples of `data` drawn with replacement, in blocks."""
    n = data.size
    per_block = max(1, _BLOCK // n)
    parts = []
    for start in range(0, resamples, per_block):
        rows = min(per_block, resamples - start)
        parts.append(data[rng.integers(0, n, size=(rows, n))].mean(axis=1))
    return np.concatenate(parts)
