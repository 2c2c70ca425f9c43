"""Paired comparisons of two programs scored on the same examples."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special
from scipy import stats as scipy_stats

from dspex_lab.stats._checks import Values, as_generator, as_pairs, check_confidence, difference_effect_size
from dspex_lab.stats._intervals import is_binary, resampled_statistics
from dspex_lab.stats._summary import t_interval

__all__ = [
    "PairedTest",
    "choose_paired_test",
    "cohens_dz",
    "mcnemar_test",
    "one_sided_p_value",
    "paired_bootstrap_test",
    "paired_t_test",
    "paired_test",
    "score_correlation",
    "wilcoxon_test",
]

_PAIRED_METHODS = ("auto", "t", "wilcoxon", "mcnemar", "bootstrap")


@dataclass(frozen=True)
class PairedTest:
    """Result of a paired test of ``b - a``.

    ``effect_size`` is Cohen's d_z (mean difference / SD of differences) except for
    the Wilcoxon test, where it is the matched-pairs rank-biserial correlation.
    """

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


def cohens_dz(a: Values, b: Values) -> float:
    """Return Cohen's d_z of ``b - a``: mean difference divided by the SD (ddof=1) of differences.

    NaN for fewer than two pairs; with identical differences it is 0 when they are
    zero and signed infinity otherwise.

    Raises:
        ValueError: If the lengths differ or a score is not finite.
    """
    first, second = as_pairs(a, b)
    return difference_effect_size(second - first)


def score_correlation(a: Values, b: Values) -> float:
    """Return the Pearson correlation of paired scores; NaN if either sample is constant or n < 2.

    A high correlation is what makes a paired test more powerful than an unpaired one.

    Raises:
        ValueError: If the lengths differ or a score is not finite.
    """
    first, second = as_pairs(a, b)
    if first.size < 2 or np.all(first == first[0]) or np.all(second == second[0]):
        return math.nan
    first_centered = first - first.mean()
    second_centered = second - second.mean()
    denominator = math.sqrt(float(np.sum(first_centered**2)) * float(np.sum(second_centered**2)))
    # Rounding can push |r| a hair past 1 for perfectly correlated samples.
    return max(-1.0, min(1.0, float(np.sum(first_centered * second_centered)) / denominator))


def wilcoxon_test(a: Values, b: Values, *, confidence: float = 0.95) -> PairedTest:
    """Compare paired samples with the two-sided Wilcoxon signed-rank test on ``b - a``.

    Zero differences are dropped before ranking (scipy's default ``zero_method="wilcox"``)
    and the statistic and p-value are those of ``scipy.stats.wilcoxon`` with its defaults:
    the statistic is ``min(W+, W-)``. When every difference is zero there is no evidence
    either way: p = 1 and the statistic and effect size are 0.

    ``effect_size`` is the matched-pairs rank-biserial correlation
    ``(W+ - W-) / (W+ + W-)`` over the non-zero differences (Kerby 2014), in [-1, 1].
    ``ci`` is the Student t interval of the mean difference, not a Hodges-Lehmann
    interval, so it describes the mean that ``mean_difference`` reports.

    Raises:
        ValueError: If the lengths differ or a score is not finite.
    """
    first, second = as_pairs(a, b)
    check_confidence(confidence)
    differences = second - first
    n = int(differences.size)
    name = "Wilcoxon signed-rank"
    if n == 0:
        return PairedTest(name, 0, math.nan, (math.nan, math.nan), math.nan, math.nan, math.nan, confidence)
    mean = float(differences.mean())
    ci = _mean_t_interval(differences, confidence)
    nonzero = differences[differences != 0]
    if nonzero.size == 0:
        return PairedTest(name, n, mean, ci, 0.0, 1.0, 0.0, confidence)
    ranks = scipy_stats.rankdata(np.abs(nonzero))
    positive_sum = float(ranks[nonzero > 0].sum())
    negative_sum = float(ranks[nonzero < 0].sum())
    rank_biserial = (positive_sum - negative_sum) / (positive_sum + negative_sum)
    result = scipy_stats.wilcoxon(differences)
    return PairedTest(name, n, mean, ci, float(result.statistic), float(result.pvalue), rank_biserial, confidence)


def mcnemar_test(a: Values, b: Values, *, confidence: float = 0.95) -> PairedTest:
    """Compare paired 0/1 scores with the exact (binomial) McNemar test.

    Only discordant pairs carry information: ``n01`` pairs where only ``b`` is correct and
    ``n10`` where only ``a`` is. Under the null each discordant pair is a fair coin, so
    ``p = min(1, 2 * P(Binomial(n01 + n10, 1/2) <= min(n01, n10)))`` and the statistic is
    ``min(n01, n10)``, as statsmodels ``mcnemar(table, exact=True)``. Without discordant
    pairs p = 1.

    ``ci`` is the Wald interval of the paired difference of proportions
    ``d = (n01 - n10) / n`` with standard error ``sqrt((n01 + n10) / n - d**2) / sqrt(n)``
    and a normal quantile; it collapses to ``[d, d]`` when every pair moves the same way,
    and is unreliable for small ``n``. ``effect_size`` is Cohen's d_z.

    Raises:
        ValueError: If the lengths differ or a score is not 0 or 1.
    """
    first, second = as_pairs(a, b)
    check_confidence(confidence)
    if first.size and not (is_binary(first) and is_binary(second)):
        raise ValueError("McNemar's test needs scores that are all 0 or 1")
    n = int(first.size)
    name = "exact McNemar"
    if n == 0:
        return PairedTest(name, 0, math.nan, (math.nan, math.nan), math.nan, math.nan, math.nan, confidence)
    only_b = int(np.count_nonzero((first == 0) & (second == 1)))
    only_a = int(np.count_nonzero((first == 1) & (second == 0)))
    discordant = only_a + only_b
    smaller = min(only_a, only_b)
    p_value = 1.0 if discordant == 0 else min(1.0, 2 * float(scipy_stats.binom.cdf(smaller, discordant, 0.5)))
    difference = (only_b - only_a) / n
    # max() guards against a tiny negative variance from rounding when all pairs move one way.
    stderr = math.sqrt(max(0.0, discordant / n - difference**2) / n)
    z = float(special.ndtri(0.5 + confidence / 2))
    ci = (difference - z * stderr, difference + z * stderr)
    effect = difference_effect_size(second - first)
    return PairedTest(name, n, difference, ci, float(smaller), p_value, effect, confidence)


def paired_bootstrap_test(
    a: Values,
    b: Values,
    *,
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int | np.random.Generator,
) -> PairedTest:
    """Compare paired samples by resampling pairs (the differences ``b - a``) with replacement.

    ``ci`` is the percentile interval of the resampled mean differences. The two-sided
    p-value shifts the resampled means to the null (subtracting the observed mean, which
    centres them on 0) and counts how often they are at least as far from 0 as the
    observed mean: ``p = (1 + #{|m* - mean| >= |mean|}) / (resamples + 1)``; the +1 keeps
    p above 0, so the smallest attainable p is ``1 / (resamples + 1)``. ``statistic``
    is the mean difference divided by the SD of the resampled means; ``effect_size``
    is Cohen's d_z. With identical differences the interval is ``[d, d]``.

    Raises:
        ValueError: If the lengths differ, a score is not finite, resamples < 1 or no seed.
    """
    first, second = as_pairs(a, b)
    check_confidence(confidence)
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    generator = as_generator(seed, "paired_bootstrap_test")
    differences = second - first
    n = int(differences.size)
    name = "paired bootstrap"
    if n < 2:
        mean = float(differences.mean()) if n else math.nan
        return PairedTest(name, n, mean, (math.nan, math.nan), math.nan, math.nan, math.nan, confidence)
    mean = float(differences.mean())
    effect = difference_effect_size(differences)
    if np.all(differences == differences[0]):
        # Every resample equals the sample: no variability, p is as small as the procedure allows.
        p_value = 1.0 if mean == 0 else 1 / (resamples + 1)
        statistic = 0.0 if mean == 0 else math.copysign(math.inf, mean)
        return PairedTest(name, n, mean, (mean, mean), statistic, p_value, effect, confidence)
    resampled = resampled_statistics(differences, np.mean, resamples=resamples, generator=generator)
    tail = (1 - confidence) / 2
    low, high = np.quantile(resampled, [tail, 1 - tail])
    as_extreme = int(np.count_nonzero(np.abs(resampled - mean) >= abs(mean)))
    p_value = (1 + as_extreme) / (resamples + 1)
    spread = float(resampled.std(ddof=1)) if resamples > 1 else math.nan
    statistic = mean / spread if spread > 0 else math.nan
    return PairedTest(name, n, mean, (float(low), float(high)), statistic, p_value, effect, confidence)


def choose_paired_test(a: Values, b: Values) -> str:
    """Return the default test for these pairs.

    "mcnemar" when both samples are all 0/1; otherwise "paired t-test" from 30 pairs
    on (the mean difference is then close enough to normal) and "wilcoxon" below.

    Raises:
        ValueError: If the lengths differ or a score is not finite.
    """
    first, second = as_pairs(a, b)
    if is_binary(first) and is_binary(second):
        return "mcnemar"
    return "paired t-test" if first.size >= 30 else "wilcoxon"


def paired_test(
    a: Values,
    b: Values,
    *,
    method: str = "auto",
    confidence: float = 0.95,
    seed: int | np.random.Generator | None = None,
) -> PairedTest:
    """Run a paired test of ``b - a`` chosen by ``method``.

    Args:
        a: Scores of the baseline, one per example.
        b: Scores of the candidate on the same examples, in the same order.
        method: "auto" (see ``choose_paired_test``), "t", "wilcoxon", "mcnemar" or
            "bootstrap" (10,000 resamples; needs ``seed``).
        confidence: Two-sided confidence level of the interval.
        seed: Int or ``numpy.random.Generator``, used only by "bootstrap".

    Returns:
        The result; its ``test`` field names the test that ran.

    Raises:
        ValueError: For an unknown method or "bootstrap" without a seed.
    """
    method_key = method.lower()
    if method_key not in _PAIRED_METHODS:
        raise ValueError(f"method must be one of {', '.join(_PAIRED_METHODS)}; got {method!r}")
    if method_key == "auto":
        method_key = {"mcnemar": "mcnemar", "paired t-test": "t", "wilcoxon": "wilcoxon"}[choose_paired_test(a, b)]
    if method_key == "t":
        return paired_t_test(a, b, confidence=confidence)
    if method_key == "wilcoxon":
        return wilcoxon_test(a, b, confidence=confidence)
    if method_key == "mcnemar":
        return mcnemar_test(a, b, confidence=confidence)
    if seed is None:
        raise ValueError('method="bootstrap" is random and needs a seed (int or numpy.random.Generator)')
    return paired_bootstrap_test(a, b, confidence=confidence, seed=seed)


def one_sided_p_value(test: PairedTest) -> float:
    """Return the p-value of "``b`` is better than ``a``" (``b - a > 0``) from a two-sided paired test.

    The paired t-test, the Wilcoxon signed-rank test and the exact McNemar test have null
    distributions symmetric about zero, so the one-sided p is half the two-sided one in the
    observed direction and one minus that half against it. For the exact McNemar test this is
    the binomial tail ``P(Binomial(n01 + n10, 1/2) <= n10)`` when ``b`` won more discordant
    pairs (its two-sided p is twice the smaller tail); at its cap of 1 it gives 0.5. NaN when
    the test has no p-value.
    """
    if not math.isfinite(test.p_value) or not math.isfinite(test.mean_difference):
        return math.nan
    half = test.p_value / 2
    return half if test.mean_difference > 0 else 1 - half


def _mean_t_interval(differences: np.ndarray, confidence: float) -> tuple[float, float]:
    """Return the Student t interval of the mean of ``differences``."""
    if differences.size < 2:
        return (math.nan, math.nan)
    stderr = float(differences.std(ddof=1)) / math.sqrt(differences.size)
    return t_interval(float(differences.mean()), stderr, int(differences.size), confidence=confidence)
