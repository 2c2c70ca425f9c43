"""Comparison of two independent samples (different examples or different runs)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import special
from scipy import stats as scipy_stats

from dspex_lab.stats._checks import Values, as_scores, check_confidence

__all__ = ["UnpairedTest", "welch_test"]


@dataclass(frozen=True)
class UnpairedTest:
    """Result of an unpaired test of ``mean(b) - mean(a)``; ``effect_size`` is Hedges' g."""

    test: str
    n_a: int
    n_b: int
    mean_difference: float
    ci: tuple[float, float]
    statistic: float
    p_value: float
    effect_size: float
    confidence: float


def welch_test(a: Values, b: Values, *, confidence: float = 0.95) -> UnpairedTest:
    """Compare independent samples with Welch's t-test (unequal variances) on ``mean(b) - mean(a)``.

    The statistic ``difference / sqrt(va/na + vb/nb)`` and its two-sided p-value equal
    those of ``scipy.stats.ttest_ind(b, a, equal_var=False)``.
    The interval uses the Welch-Satterthwaite degrees of freedom
    ``(va/na + vb/nb)**2 / ((va/na)**2 / (na-1) + (vb/nb)**2 / (nb-1))``.
    ``effect_size`` is Hedges' g: the difference over the pooled SD times the exact
    small-sample correction ``J = Gamma(m/2) / (sqrt(m/2) * Gamma((m-1)/2))``,
    ``m = na + nb - 2``.

    Each sample needs two values, otherwise every statistic is NaN. When both samples
    are constant the interval collapses to the difference, p is 1 if it is zero and 0
    otherwise, as in ``paired_t_test``.

    Raises:
        ValueError: If a score is not finite.
    """
    first = as_scores(a, "a")
    second = as_scores(b, "b")
    check_confidence(confidence)
    size_a, size_b = int(first.size), int(second.size)
    name = "Welch t-test"
    if size_a == 0 or size_b == 0:
        return UnpairedTest(name, size_a, size_b, math.nan, (math.nan, math.nan), *[math.nan] * 3, confidence)
    difference = float(second.mean() - first.mean())
    if size_a < 2 or size_b < 2:
        return UnpairedTest(name, size_a, size_b, difference, (math.nan, math.nan), *[math.nan] * 3, confidence)
    variance_a = float(first.var(ddof=1))
    variance_b = float(second.var(ddof=1))
    share_a, share_b = variance_a / size_a, variance_b / size_b
    stderr = math.sqrt(share_a + share_b)
    pooled_sd = math.sqrt(((size_a - 1) * variance_a + (size_b - 1) * variance_b) / (size_a + size_b - 2))
    if stderr == 0:
        p_value = 1.0 if difference == 0 else 0.0
        extreme = 0.0 if difference == 0 else math.copysign(math.inf, difference)
        return UnpairedTest(
            name, size_a, size_b, difference, (difference, difference), extreme, p_value, extreme, confidence
        )
    degrees = (share_a + share_b) ** 2 / (share_a**2 / (size_a - 1) + share_b**2 / (size_b - 1))
    critical = float(scipy_stats.t.ppf(0.5 + confidence / 2, degrees))
    # Computed directly rather than via scipy.stats.ttest_ind, which warns spuriously when one sample is constant.
    statistic = difference / stderr
    p_value = min(1.0, 2 * float(scipy_stats.t.sf(abs(statistic), degrees)))
    return UnpairedTest(
        name,
        size_a,
        size_b,
        difference,
        (difference - critical * stderr, difference + critical * stderr),
        statistic,
        p_value,
        difference / pooled_sd * _hedges_correction(size_a + size_b - 2),
        confidence,
    )


def _hedges_correction(degrees: int) -> float:
    """Return Hedges' exact bias correction ``J(m)`` for ``m`` degrees of freedom."""
    if degrees < 2:
        # Gamma((m - 1) / 2) has a pole at m = 1, so J(1) = 0.
        return 0.0
    half = degrees / 2
    return math.exp(special.gammaln(half) - special.gammaln(half - 0.5)) / math.sqrt(half)
