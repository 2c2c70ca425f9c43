"""Power and sample size for the paired, unpaired and proportion comparisons in this layer."""

from __future__ import annotations

import math
from collections.abc import Callable

from scipy import special
from scipy import stats as scipy_stats

__all__ = [
    "minimum_detectable_difference",
    "minimum_detectable_effect_paired",
    "power_mcnemar",
    "power_paired",
    "power_two_proportions",
    "power_unpaired",
    "sample_size_paired",
    "sample_size_two_proportions",
    "sample_size_unpaired",
]

_ALTERNATIVES = ("two-sided", "larger", "smaller")

# The doubling search stops here: a design needing more examples than this is not a design.
_LARGEST_SAMPLE = 2**40


def power_paired(effect_size: float, n: int, *, alpha: float = 0.05, alternative: str = "two-sided") -> float:
    """Return the power of the paired t-test (one-sample t on differences).

    Uses the noncentral t with ``n - 1`` degrees of freedom and noncentrality
    ``effect_size * sqrt(n)``, as ``statsmodels.stats.power.TTestPower().power``.

    Args:
        effect_size: Cohen's d_z, the true mean difference over the SD of differences.
        n: Number of pairs, at least 2.
        alpha: Significance level.
        alternative: "two-sided", "larger" (mean difference > 0) or "smaller".

    Raises:
        ValueError: If ``n < 2``, ``alpha`` is outside (0, 1) or the alternative is unknown.
    """
    _check_design(alpha, alternative)
    if n < 2:
        raise ValueError(f"the paired t-test needs at least 2 pairs, got n={n}")
    return _t_power(effect_size * math.sqrt(n), n - 1, alpha=alpha, alternative=alternative)


def power_unpaired(
    effect_size: float, n_per_group: int, *, alpha: float = 0.05, alternative: str = "two-sided"
) -> float:
    """Return the power of the two-sample (pooled-variance) t-test with equal group sizes.

    Uses the noncentral t with ``2n - 2`` degrees of freedom and noncentrality
    ``effect_size * sqrt(n / 2)``, as ``statsmodels.stats.power.TTestIndPower().power``
    with ``ratio=1``. It is also a close guide for Welch's test when variances are similar.

    Args:
        effect_size: Cohen's d, the true mean difference over the common SD.
        n_per_group: Observations in each group, at least 2.
        alpha: Significance level.
        alternative: "two-sided", "larger" (b above a) or "smaller".

    Raises:
        ValueError: If ``n_per_group < 2``, ``alpha`` is outside (0, 1) or the alternative is unknown.
    """
    _check_design(alpha, alternative)
    if n_per_group < 2:
        raise ValueError(f"the two-sample t-test needs at least 2 per group, got n_per_group={n_per_group}")
    return _t_power(effect_size * math.sqrt(n_per_group / 2), 2 * n_per_group - 2, alpha=alpha, alternative=alternative)


def power_two_proportions(p_a: float, p_b: float, n_per_group: int, *, alpha: float = 0.05) -> float:
    """Return the two-sided power to detect ``p_a != p_b`` with independent groups of equal size.

    The effect size is Cohen's h = ``2 asin(sqrt(p_b)) - 2 asin(sqrt(p_a))`` and the power
    is the normal approximation on the arcsine scale, as
    ``statsmodels.stats.power.NormalIndPower().power(h, n_per_group, alpha, ratio=1)``:
    ``Phi(|h| sqrt(n/2) - z) + Phi(-|h| sqrt(n/2) - z)`` with ``z = Phi^-1(1 - alpha/2)``.
    For paired 0/1 scores on the same examples use ``power_mcnemar``.

    Raises:
        ValueError: If a proportion is outside [0, 1], ``n_per_group < 1`` or ``alpha`` is outside (0, 1).
    """
    _check_design(alpha, "two-sided")
    if n_per_group < 1:
        raise ValueError(f"n_per_group must be at least 1, got {n_per_group}")
    shift = abs(_cohens_h(p_a, p_b)) * math.sqrt(n_per_group / 2)
    critical = float(special.ndtri(1 - alpha / 2))
    return float(special.ndtr(shift - critical) + special.ndtr(-shift - critical))


def power_mcnemar(p_discordant_ab: float, p_discordant_ba: float, n: int, *, alpha: float = 0.05) -> float:
    """Return the approximate two-sided power of McNemar's test on ``n`` pairs.

    Closed-form normal approximation (Connor 1987) for the asymptotic McNemar test
    without continuity correction. With discordance ``p = p_ab + p_ba`` and difference
    ``d = p_ab - p_ba`` the statistic has null SD ``sqrt(p)`` and alternative SD
    ``sqrt(p - d**2)``, so::

        power = Phi((|d| sqrt(n) - z sqrt(p)) / sqrt(p - d**2))
              + Phi((-|d| sqrt(n) - z sqrt(p)) / sqrt(p - d**2)),  z = Phi^-1(1 - alpha/2)

    It equals ``alpha`` when ``d = 0``. The exact test that ``mcnemar_test`` runs is
    somewhat more conservative, so treat the result as slightly optimistic for small
    discordant counts. Without discordant pairs (p = 0) the power is 0; when every pair
    is discordant in one direction (``sqrt(p - d**2) = 0``) it is 1.

    Args:
        p_discordant_ab: Probability that a pair is right under ``a`` only.
        p_discordant_ba: Probability that a pair is right under ``b`` only.
        n: Number of pairs, at least 1.
        alpha: Significance level.

    Raises:
        ValueError: If a probability is negative, they sum past 1, ``n < 1`` or ``alpha`` is outside (0, 1).
    """
    _check_design(alpha, "two-sided")
    if p_discordant_ab < 0 or p_discordant_ba < 0 or p_discordant_ab + p_discordant_ba > 1:
        raise ValueError("discordant probabilities must be non-negative and sum to at most 1")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    discordance = p_discordant_ab + p_discordant_ba
    difference = abs(p_discordant_ab - p_discordant_ba)
    if discordance == 0:
        return 0.0
    alternative_sd = math.sqrt(max(0.0, discordance - difference**2))
    if alternative_sd == 0:
        return 1.0
    critical = float(special.ndtri(1 - alpha / 2)) * math.sqrt(discordance)
    shift = difference * math.sqrt(n)
    return float(special.ndtr((shift - critical) / alternative_sd) + special.ndtr((-shift - critical) / alternative_sd))


def sample_size_paired(effect_size: float, *, power: float = 0.8, alpha: float = 0.05) -> int:
    """Return the smallest number of pairs whose two-sided paired t-test reaches ``power``.

    Raises:
        ValueError: If ``effect_size`` is 0 (no sample size detects no difference) or
            ``power``/``alpha`` are outside (0, 1).
    """
    _check_target(effect_size, power=power, alpha=alpha)
    return _smallest_n(lambda n: power_paired(effect_size, n, alpha=alpha), power, smallest=2)


def sample_size_unpaired(effect_size: float, *, power: float = 0.8, alpha: float = 0.05) -> int:
    """Return the smallest per-group size whose two-sided two-sample t-test reaches ``power``.

    Raises:
        ValueError: If ``effect_size`` is 0 (no sample size detects no difference) or
            ``power``/``alpha`` are outside (0, 1).
    """
    _check_target(effect_size, power=power, alpha=alpha)
    return _smallest_n(lambda n: power_unpaired(effect_size, n, alpha=alpha), power, smallest=2)


def sample_size_two_proportions(p_a: float, p_b: float, *, power: float = 0.8, alpha: float = 0.05) -> int:
    """Return the smallest per-group size reaching ``power`` in ``power_two_proportions``.

    Raises:
        ValueError: If ``p_a == p_b`` (no sample size detects no difference), a proportion
            is outside [0, 1] or ``power``/``alpha`` are outside (0, 1).
    """
    _check_target(_cohens_h(p_a, p_b), power=power, alpha=alpha)
    return _smallest_n(lambda n: power_two_proportions(p_a, p_b, n, alpha=alpha), power, smallest=1)


def minimum_detectable_difference(n: int, *, alpha: float = 0.05, power: float = 0.8, baseline: float = 0.5) -> float:
    """Return the smallest gain over ``baseline`` that ``n`` examples of 0/1 scores detect with ``power``.

    The approximation is the two-proportion test of :func:`power_two_proportions` (Cohen's h on
    the arcsine scale, two-sided at ``alpha``) with ``n`` scores per program, i.e. the two
    programs' scores on the same examples taken as uncorrelated. A paired test (McNemar) on
    positively correlated scores detects somewhat smaller gains, so this is a conservative
    guide for planning, not a property of one run. In closed form (the far tail, whose power
    ``Phi(-2 z(1 - alpha/2) - z(power))`` moves the gain by less than 1e-4, neglected)::

        h = (z(1 - alpha/2) + z(power)) * sqrt(2 / n),
        gain = sin(asin(sqrt(baseline)) + h / 2) ** 2 - baseline

    Without a known baseline, 0.5 is where a 0/1 score varies most (nearly the largest gain).

    Args:
        n: Examples each program is scored on, at least 1.
        alpha: Two-sided significance level.
        power: The probability of detecting the gain, in (0, 1).
        baseline: The baseline's success rate, in [0, 1).

    Returns:
        The gain, or ``inf`` when not even a perfect score would be detected with that power.

    Raises:
        ValueError: For ``n < 1``, ``alpha``/``power`` outside (0, 1) or ``baseline`` outside [0, 1).

    Examples:
        >>> round(minimum_detectable_difference(60), 3), round(minimum_detectable_difference(400), 3)
        (0.245, 0.098)
    """
    _check_design(alpha, "two-sided")
    if not 0 < power < 1:
        raise ValueError(f"power must lie strictly between 0 and 1, got {power}")
    if isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if not 0 <= baseline < 1:
        raise ValueError(f"baseline must lie in [0, 1), got {baseline}")
    if power_two_proportions(baseline, 1.0, n, alpha=alpha) < power:
        return math.inf
    return _smallest_effect(
        lambda gain: power_two_proportions(baseline, baseline + gain, n, alpha=alpha), power, 1 - baseline
    )


def minimum_detectable_effect_paired(n: int, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """Return the smallest Cohen's d_z that a two-sided paired t-test on ``n`` pairs detects with ``power``.

    Multiply by the SD of the per-example differences for the difference in metric units.

    Raises:
        ValueError: For ``n < 2`` or ``alpha``/``power`` outside (0, 1).
    """
    _check_design(alpha, "two-sided")
    if not 0 < power < 1:
        raise ValueError(f"power must lie strictly between 0 and 1, got {power}")
    if n < 2:
        raise ValueError(f"the paired t-test needs at least 2 pairs, got n={n}")
    largest = 1.0
    while power_paired(largest, n, alpha=alpha) < power:
        largest *= 2
    return _smallest_effect(lambda effect: power_paired(effect, n, alpha=alpha), power, largest)


def _smallest_effect(power_at: Callable[[float], float], target: float, largest: float) -> float:
    """Return the smallest effect in (0, largest] whose power reaches ``target`` (power grows with the effect)."""
    low, high = 0.0, largest
    for _ in range(60):  # 2**-60 of the range: far below any printed digit
        middle = (low + high) / 2
        if power_at(middle) >= target:
            high = middle
        else:
            low = middle
    return high


def _t_power(noncentrality: float, degrees: int, *, alpha: float, alternative: str) -> float:
    """Return the rejection probability of a t-test under a noncentral t alternative."""
    tail = alpha / 2 if alternative == "two-sided" else alpha
    critical = float(scipy_stats.t.isf(tail, degrees))
    power = 0.0
    if alternative in ("two-sided", "larger"):
        power += float(scipy_stats.nct.sf(critical, degrees, noncentrality))
    if alternative in ("two-sided", "smaller"):
        # P(T < -c | nc) = P(T > c | -nc). scipy's nct.cdf returns NaN deep in the tail (e.g. df=1, nc=28),
        # where statsmodels then reports NaN power; the survival function stays finite there.
        power += float(scipy_stats.nct.sf(critical, degrees, -noncentrality))
    return power


def _cohens_h(p_a: float, p_b: float) -> float:
    """Return Cohen's h, the difference of arcsine-transformed proportions."""
    if not (0 <= p_a <= 1 and 0 <= p_b <= 1):
        raise ValueError(f"proportions must lie in [0, 1], got p_a={p_a}, p_b={p_b}")
    return 2 * math.asin(math.sqrt(p_b)) - 2 * math.asin(math.sqrt(p_a))


def _check_design(alpha: float, alternative: str) -> None:
    """Raise ValueError for an alpha outside (0, 1) or an unknown alternative."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha}")
    if alternative not in _ALTERNATIVES:
        raise ValueError(f"alternative must be one of {', '.join(_ALTERNATIVES)}; got {alternative!r}")


def _check_target(effect_size: float, *, power: float, alpha: float) -> None:
    """Raise ValueError when no sample size can be computed for this design."""
    _check_design(alpha, "two-sided")
    if not 0 < power < 1:
        raise ValueError(f"power must lie strictly between 0 and 1, got {power}")
    if effect_size == 0:
        raise ValueError("effect size is 0: no sample size has more than alpha power to detect no difference")
    if not math.isfinite(effect_size):
        raise ValueError(f"effect size must be finite, got {effect_size}")


def _smallest_n(power_at: Callable[[int], float], target: float, *, smallest: int) -> int:
    """Return the smallest ``n >= smallest`` with ``power_at(n) >= target``, assuming power grows with n."""
    if power_at(smallest) >= target:
        return smallest
    low, high = smallest, smallest * 2
    # Double until the target is reached, then bisect: O(log n) power evaluations.
    while power_at(high) < target:
        if high > _LARGEST_SAMPLE:
            raise ValueError("effect size too small: the required sample size exceeds 2**40")
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        if power_at(middle) >= target:
            high = middle
        else:
            low = middle
    return high
