"""Uncertainty of a few seeds' scores: percentile bootstrap CIs and paired comparisons.

With n values the bootstrap is exact (all n**n resamples, each equally likely) when that is at
most `resamples`; beyond that it draws `resamples` resamples with a fixed seed.
But: with three seeds every interval is coarse, and a paired CI that excludes zero is a weak
signal (all three differences of one sign), not a test at the 5% level.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np


def bootstrap_means(values, resamples: int = 10_000, seed: int = 0) -> np.ndarray:
    """Means of the bootstrap resamples of `values`: exact enumeration when it is small enough."""
    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    if n == 0:
        raise ValueError("no values to bootstrap")
    if n**n <= resamples:
        return np.array([x[list(idx)].mean() for idx in itertools.product(range(n), repeat=n)])
    rng = np.random.default_rng(seed)
    return x[rng.integers(0, n, size=(resamples, n))].mean(axis=1)


def bootstrap_ci(values, level: float = 0.95, resamples: int = 10_000,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (numpy's linear percentile)."""
    means = bootstrap_means(values, resamples, seed)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def sign_flip_p(differences) -> float:
    """Two-sided p-value of the exact paired sign-flip test that the mean difference is zero."""
    d = np.asarray(differences, dtype=np.float64)
    observed = abs(d.mean())
    flips = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))
    extreme = np.abs((flips * d).mean(axis=1)) >= observed - 1e-12
    return float(extreme.mean())


@dataclass(frozen=True)
class Summary:
    mean: float
    ci: tuple[float, float]
    n: int


@dataclass(frozen=True)
class PairedDifference:
    """An arm minus the base arm, paired by seed."""

    mean: float
    ci: tuple[float, float]
    p: float  # exact sign-flip test
    n: int

    @property
    def significant(self) -> bool:
        """The 95% bootstrap CI of the paired difference excludes zero."""
        return self.n > 1 and (self.ci[0] > 0 or self.ci[1] < 0)


def summarize(values, level: float = 0.95) -> Summary:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return Summary(math.nan, (math.nan, math.nan), 0)
    return Summary(float(np.mean(finite)), bootstrap_ci(finite, level), len(finite))


def paired_difference(arm: dict, base: dict, level: float = 0.95) -> PairedDifference:
    """`arm` minus `base` over the seeds both have a finite value for (dicts seed -> value)."""
    seeds = sorted(s for s in arm if s in base and arm[s] is not None and base[s] is not None
                   and math.isfinite(arm[s]) and math.isfinite(base[s]))
    if not seeds:
        return PairedDifference(math.nan, (math.nan, math.nan), math.nan, 0)
    d = [arm[s] - base[s] for s in seeds]
    return PairedDifference(float(np.mean(d)), bootstrap_ci(d, level), sign_flip_p(d), len(d))
