"""Small statistics shared by the tables: means with bootstrap confidence intervals."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats


def mean_ci(
    values: Sequence[float], *, confidence: float = 0.95, seed: int = 0, n_resamples: int = 2000
) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap CI of the mean (``scipy.stats.bootstrap``).

    A constant sample (all 0 or all 1) has a degenerate interval equal to its mean.
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    m = float(x.mean())
    if np.all(x == x[0]):
        return m, m, m
    res = stats.bootstrap(
        (x,),
        np.mean,
        confidence_level=confidence,
        n_resamples=n_resamples,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return m, float(res.confidence_interval.low), float(res.confidence_interval.high)
