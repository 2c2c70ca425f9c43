"""Confidence intervals for one sample: Wilson, Student t and bootstrap (percentile, BCa)."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import special

from dspex_lab.stats._checks import Values, as_generator, as_scores, check_confidence
from dspex_lab.stats._summary import summarize, t_interval

__all__ = [
    "Interval",
    "bootstrap_interval",
    "is_binary",
    "mean_interval",
    "score_interval",
    "score_interval_from_totals",
    "wilson_interval",
]

# Resampled values held in memory at once; bounds memory to ~8 MB whatever n and resamples are.
_BATCH_ELEMENTS = 1_000_000

_MEAN_METHODS = ("t", "wilson", "percentile", "bca", "auto")


@dataclass(frozen=True)
class Interval:
    """A two-sided confidence interval and how it was computed.

    ``method`` names the method actually used ("t", "wilson", "percentile" or
    "bca"), so an "auto" request records its choice.
    """

    low: float
    high: float
    method: str
    confidence: float


def is_binary(values: Values) -> bool:
    """Return whether every value is 0 or 1 (False for an empty sample or any NaN)."""
    array = np.asarray(values, dtype=float)
    # An empty sample carries no evidence that the scores are pass/fail.
    return bool(array.size > 0 and np.all((array == 0) | (array == 1)))


def wilson_interval(successes: int, n: int, *, confidence: float = 0.95) -> Interval:
    """Return the Wilson score interval for a binomial proportion (no continuity correction).

    Args:
        successes: Number of successes, between 0 and ``n``.
        n: Number of trials; with 0 trials both bounds are NaN.
        confidence: Two-sided confidence level.

    Raises:
        ValueError: If the counts are negative, not whole, or ``successes > n``.
    """
    check_confidence(confidence)
    if n < 0 or successes < 0 or successes > n or int(successes) != successes or int(n) != n:
        raise ValueError(f"need whole numbers 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return Interval(math.nan, math.nan, "wilson", confidence)
    z = float(special.ndtri(0.5 + confidence / 2))
    proportion = successes / n
    denominator = 1 + z * z / n
    center = (proportion + z * z / (2 * n)) / denominator
    half_width = z / denominator * math.sqrt(proportion * (1 - proportion) / n + z * z / (4 * n * n))
    # At 0 and n successes the bounds are exactly 0 and 1; the formula only gets there up to rounding.
    low = 0.0 if successes == 0 else max(0.0, center - half_width)
    high = 1.0 if successes == n else min(1.0, center + half_width)
    return Interval(low, high, "wilson", confidence)


def bootstrap_interval(
    values: Values,
    *,
    statistic: Callable[..., float] = np.mean,
    method: str = "percentile",
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int | np.random.Generator,
) -> Interval:
    """Return a nonparametric bootstrap interval for ``statistic(values)``.

    "percentile" takes the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2``
    quantiles (linear interpolation) of the resampled statistics. "bca" adjusts
    those quantile levels for bias (share of resampled statistics below the
    observed one, ties counted half) and for skewness (acceleration from the
    jackknife), as in Efron & Tibshirani (1993) eq. 14.15 and the same convention
    as ``scipy.stats.bootstrap(method="BCa")``. When every jackknife value is equal
    the acceleration is taken as 0 (scipy would return NaN).

    A sample with zero variance gives the degenerate interval ``[x, x]`` with
    ``x = statistic(values)``; fewer than
    two values give NaN bounds, as one value says nothing about spread.

    Args:
        values: One-dimensional scores.
        statistic: Function of a 1-D array returning a scalar; if it accepts an
            ``axis`` keyword it is applied to many resamples at once.
        method: "percentile" or "bca".
        confidence: Two-sided confidence level.
        resamples: Number of bootstrap resamples.
        seed: Int or ``numpy.random.Generator``; required so results are reproducible.

    Raises:
        ValueError: For an unknown method, fewer than one resample, or non-finite values.
    """
    array = as_scores(values)
    check_confidence(confidence)
    method_key = method.lower()
    if method_key not in ("percentile", "bca"):
        raise ValueError(f'bootstrap method must be "percentile" or "bca", got {method!r}')
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    generator = as_generator(seed, "bootstrap_interval")
    if array.size < 2:
        return Interval(math.nan, math.nan, method_key, confidence)
    if np.all(array == array[0]):
        observed = float(statistic(array))
        return Interval(observed, observed, method_key, confidence)
    resampled = resampled_statistics(array, statistic, resamples=resamples, generator=generator)
    tail = (1 - confidence) / 2
    levels = np.array([tail, 1 - tail])
    if method_key == "bca":
        levels = _bca_levels(array, statistic, resampled=resampled, tail=tail)
        if np.any(np.isnan(levels)):
            # The observed statistic lies outside every resample, so the bias correction is infinite.
            return Interval(math.nan, math.nan, method_key, confidence)
    low, high = np.quantile(resampled, levels)
    return Interval(float(low), float(high), method_key, confidence)


def mean_interval(
    values: Values,
    *,
    method: str = "auto",
    confidence: float = 0.95,
    seed: int | np.random.Generator | None = None,
    resamples: int = 10_000,
) -> Interval:
    """Return a confidence interval for the mean of ``values``.

    Args:
        values: One-dimensional scores.
        method: "t" (Student t), "wilson" (0/1 scores only), "percentile" or
            "bca" (bootstrap, need ``seed``), or "auto": Wilson when every value
            is 0 or 1, else t.
        confidence: Two-sided confidence level.
        seed: Int or ``numpy.random.Generator`` for the bootstrap methods.
        resamples: Number of bootstrap resamples.

    Raises:
        ValueError: For an unknown method, Wilson on non-binary scores, a bootstrap
            method without a seed, or non-finite values.
    """
    array = as_scores(values)
    check_confidence(confidence)
    method_key = method.lower()
    if method_key not in _MEAN_METHODS:
        raise ValueError(f"method must be one of {', '.join(_MEAN_METHODS)}; got {method!r}")
    if method_key == "auto":
        method_key = "wilson" if is_binary(array) else "t"
    if method_key == "wilson":
        if array.size and not is_binary(array):
            raise ValueError("the Wilson interval needs scores that are all 0 or 1")
        return wilson_interval(int(array.sum()), int(array.size), confidence=confidence)
    if method_key == "t":
        low, high = summarize(array, confidence=confidence).ci
        return Interval(low, high, "t", confidence)
    if seed is None:
        raise ValueError(f'method="{method_key}" is a bootstrap and needs a seed (int or numpy.random.Generator)')
    return bootstrap_interval(
        array, method=method_key, confidence=confidence, resamples=resamples, seed=seed, statistic=np.mean
    )


def score_interval(values: Values, *, confidence: float = 0.95) -> Interval:
    """Return the interval dspex_lab reports for a mean score: Wilson for 0/1 scores, Student t otherwise.

    The one rule every view follows (an evaluation's result, its live progress, the experiment
    browser, the dashboard's leaderboard and ``dspex journal list``), so the same scores show
    the same interval everywhere. ``values`` are per-example scores (each example's repeats
    averaged first: repeats of one example are not independent). With no value both bounds are
    NaN; one 0/1 value has a Wilson interval, one other value a NaN t interval.

    Examples:
        >>> interval = score_interval([1, 0, 1, 1])
        >>> interval.method, round(interval.low, 3), round(interval.high, 3)
        ('wilson', 0.301, 0.954)
        >>> score_interval([0.5, 0.25, 0.75]).method
        't'
    """
    return mean_interval(values, method="auto", confidence=confidence)


def score_interval_from_totals(
    n: int, mean: float, variance: float, *, binary: bool, confidence: float = 0.95
) -> Interval:
    """Return :func:`score_interval`'s interval for a sample known only by its size, mean and variance.

    For a store that aggregates the per-example scores where they are kept (the journal, in SQL)
    instead of reading every one: the same rule, Wilson when every score is 0 or 1 (``binary``;
    its successes are ``mean * n``), Student t from the sample variance (ddof=1) otherwise. It
    equals ``score_interval(values)`` up to floating-point rounding.

    Examples:
        >>> interval = score_interval_from_totals(4, 0.75, 0.25, binary=True)
        >>> interval.method, round(interval.low, 3), round(interval.high, 3)
        ('wilson', 0.301, 0.954)

    Raises:
        ValueError: a negative ``n`` or variance, or a confidence outside (0, 1).
    """
    check_confidence(confidence)
    if n < 0 or variance < 0:
        raise ValueError(f"need n >= 0 and a variance >= 0, got n={n}, variance={variance}")
    if binary and n > 0:
        return wilson_interval(round(mean * n), n, confidence=confidence)
    if n < 2:
        return Interval(math.nan, math.nan, "t", confidence)
    low, high = t_interval(mean, math.sqrt(variance / n), n, confidence=confidence)
    return Interval(low, high, "t", confidence)


def resampled_statistics(
    values: np.ndarray, statistic: Callable[..., float], *, resamples: int, generator: np.random.Generator
) -> np.ndarray:
    """Return ``statistic`` of ``resamples`` samples drawn with replacement from ``values``."""
    size = values.size
    rows_per_batch = max(1, _BATCH_ELEMENTS // size)
    vectorized = _accepts_axis(statistic)
    results = np.empty(resamples)
    for start in range(0, resamples, rows_per_batch):
        stop = min(resamples, start + rows_per_batch)
        samples = values[generator.integers(0, size, size=(stop - start, size))]
        results[start:stop] = _apply(statistic, samples, vectorized=vectorized)
    return results


def _bca_levels(
    values: np.ndarray, statistic: Callable[..., float], *, resampled: np.ndarray, tail: float
) -> np.ndarray:
    """Return the BCa-adjusted quantile levels for the lower and upper bounds."""
    observed = float(statistic(values))
    # Ties count half, so a symmetric discrete bootstrap distribution gives no bias correction.
    share_below = (np.count_nonzero(resampled < observed) + np.count_nonzero(resampled <= observed)) / (
        2 * resampled.size
    )
    bias = float(special.ndtri(share_below))
    leave_one_out = _jackknife(values, statistic)
    deviations = leave_one_out.mean() - leave_one_out
    spread = float(np.sum(deviations**2))
    acceleration = 0.0 if spread == 0 else float(np.sum(deviations**3)) / (6 * spread**1.5)
    z_tails = np.array([special.ndtri(tail), -special.ndtri(tail)])
    shifted = bias + z_tails
    return special.ndtr(bias + shifted / (1 - acceleration * shifted))


def _jackknife(values: np.ndarray, statistic: Callable[..., float]) -> np.ndarray:
    """Return ``statistic`` of each leave-one-out sample."""
    size = values.size
    rows_per_batch = max(1, _BATCH_ELEMENTS // size)
    vectorized = _accepts_axis(statistic)
    results = np.empty(size)
    columns = np.arange(size - 1)
    for start in range(0, size, rows_per_batch):
        left_out = np.arange(start, min(size, start + rows_per_batch))
        # Row i keeps positions 0..i-1 and i+1..n-1: shift every column at or past i by one.
        indices = columns[None, :] + (columns[None, :] >= left_out[:, None])
        results[left_out] = _apply(statistic, values[indices], vectorized=vectorized)
    return results


def _accepts_axis(statistic: Callable[..., float]) -> bool:
    """Return whether ``statistic`` takes an ``axis`` keyword, so rows can be evaluated at once."""
    try:
        parameters = inspect.signature(statistic).parameters
    except (TypeError, ValueError):
        return False
    return "axis" in parameters


def _apply(statistic: Callable[..., float], samples: np.ndarray, *, vectorized: bool) -> np.ndarray:
    """Return ``statistic`` of each row of ``samples``."""
    if vectorized:
        result = np.asarray(statistic(samples, axis=-1), dtype=float)
        if result.shape == (samples.shape[0],):
            return result
    # A statistic that ignores or misuses ``axis`` is evaluated row by row instead.
    return np.array([float(statistic(row)) for row in samples])
