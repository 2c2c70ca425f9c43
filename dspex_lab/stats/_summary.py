"""Summaries of one sample of scores: mean, spread, t interval, percentiles."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

__all__ = ["Summary", "percentiles", "summarize", "t_interval"]


@dataclass(frozen=True)
class Summary:
    """Mean, standard deviation (ddof=1), standard error and a t confidence interval.

    With one value the SD, SE and interval are NaN: one observation says nothing
    about spread. With zero variance the interval collapses to the mean.
    """

    n: int
    mean: float
    sd: float
    stderr: float
    ci: tuple[float, float]
    confidence: float


def t_interval(mean: float, stderr: float, n: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Return the two-sided Student-t interval ``mean ± t(n-1) · stderr``."""
    if n < 2 or math.isnan(stderr):
        return (math.nan, math.nan)
    if stderr == 0:
        return (mean, mean)
    critical = float(scipy_stats.t.ppf(0.5 + confidence / 2, n - 1))
    return (mean - critical * stderr, mean + critical * stderr)


def summarize(values: Sequence[float] | np.ndarray, *, confidence: float = 0.95) -> Summary:
    """Summarise a sample of scores.

    Examples:
        >>> s = summarize([1.0, 0.0, 1.0, 1.0])
        >>> round(s.mean, 3), round(s.stderr, 3)
        (0.75, 0.25)
    """
    array = np.asarray(values, dtype=float)
    n = int(array.size)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, (math.nan, math.nan), confidence)
    mean = float(array.mean())
    if n == 1:
        return Summary(1, mean, math.nan, math.nan, (math.nan, math.nan), confidence)
    sd = float(array.std(ddof=1))
    stderr = sd / math.sqrt(n)
    return Summary(n, mean, sd, stderr, t_interval(mean, stderr, n, confidence=confidence), confidence)


def percentiles(values: Sequence[float] | np.ndarray, points: Sequence[float] = (50, 95, 99)) -> dict[str, float]:
    """Return ``{"p50": ..., ...}`` by linear interpolation (NaN for an empty sample)."""
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        return {f"p{point:g}": math.nan for point in points}
    return {f"p{point:g}": float(np.percentile(array, point)) for point in points}
