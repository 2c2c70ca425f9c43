"""Paired comparisons of two programs scored on the same examples."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

from dspex_lab.stats._summary import t_interval

__all__ = ["PairedTest", "paired_t_test"]


@dataclass(frozen=True)
class PairedTest:
    """Result of a paired test of ``b - a``; ``effect_size`` is Cohen's d_z (mean difference / SD of differences)."""

    test: str
    n: int
    mean_difference: float
    ci: tuple[float, float]
    statistic: float
    p_value: float
    effect_size: float
    confidence: float


def paired_t_test(a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95) -> PairedTest:
    """Compare paired samples with Student's paired t-test on ``b - a``.

    When every difference is equal there is no sampling variability: the
    interval collapses to the difference, p is 1 if it is zero and 0 otherwise.
    """
    first = np.asarray(a, dtype=float)
    second = np.asarray(b, dtype=float)
    if first.shape != second.shape:
        raise ValueError(f"paired samples need equal lengths, got {first.size} and {second.size}")
    differences = second - first
    n = int(differences.size)
    if n == 0:
        return PairedTest("paired t-test", 0, math.nan, (math.nan, math.nan), math.nan, math.nan, math.nan, confidence)
    mean = float(differences.mean())
    if n == 1:
        return PairedTest("paired t-test", 1, mean, (math.nan, math.nan), math.nan, math.nan, math.nan, confidence)
    sd = float(differences.std(ddof=1))
    if sd == 0:
        p_value = 1.0 if mean == 0 else 0.0
        statistic = 0.0 if mean == 0 else math.copysign(math.inf, mean)
        effect = 0.0 if mean == 0 else math.copysign(math.inf, mean)
        return PairedTest("paired t-test", n, mean, (mean, mean), statistic, p_value, effect, confidence)
    stderr = sd / math.sqrt(n)
    result = scipy_stats.ttest_rel(second, first)
    return PairedTest(
        "paired t-test",
        n,
        mean,
        t_interval(mean, stderr, n, confidence=confidence),
        float(result.statistic),
        float(result.pvalue),
        mean / sd,
        confidence,
    )
