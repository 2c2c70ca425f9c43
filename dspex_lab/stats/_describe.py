"""A full description of one sample: centre, spread, interval, quantiles and histogram."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dspex_lab.stats._checks import Values, as_scores, check_confidence
from dspex_lab.stats._intervals import Interval, mean_interval
from dspex_lab.stats._summary import percentiles, summarize

__all__ = ["Description", "describe", "histogram"]

_DESCRIBED_PERCENTILES = (5, 25, 50, 75, 95)


@dataclass(frozen=True)
class Description:
    """Everything ``describe`` reports about one sample.

    ``sd`` uses ddof=1 and, like ``stderr``, is NaN for fewer than two values.
    ``ci`` is the "auto" interval of the mean (Wilson for 0/1 scores, else t).
    ``percentiles`` has keys "p5", "p25", "p50", "p75", "p95" (linear
    interpolation). ``histogram`` is ``(counts, edges)`` as from ``histogram``.
    """

    n: int
    mean: float
    sd: float
    stderr: float
    ci: Interval
    median: float
    percentiles: dict[str, float]
    minimum: float
    maximum: float
    histogram: tuple[tuple[int, ...], tuple[float, ...]]


def histogram(values: Values, *, bins: int = 10) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Return ``(counts, edges)`` of ``bins`` equal-width bins, exactly as ``numpy.histogram``.

    There are ``bins`` counts and ``bins + 1`` edges. Following numpy, an empty
    sample is binned over [0, 1] and a constant sample over ``[x - 0.5, x + 0.5]``.

    Raises:
        ValueError: If ``bins`` is below 1 or ``values`` holds a non-finite number.
    """
    array = as_scores(values)
    if isinstance(bins, bool) or not isinstance(bins, int | np.integer) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    counts, edges = np.histogram(array, bins=int(bins))
    return tuple(int(count) for count in counts), tuple(float(edge) for edge in edges)


def describe(values: Values, *, confidence: float = 0.95, bins: int = 10) -> Description:
    """Describe a sample of scores.

    An empty sample gives n = 0 and NaN statistics; one value gives NaN spread.

    Examples:
        >>> d = describe([0.0, 1.0, 1.0, 1.0])
        >>> d.n, d.mean, d.median, d.ci.method
        (4, 0.75, 1.0, 'wilson')

    Raises:
        ValueError: If ``values`` holds a non-finite number or ``bins`` is below 1.
    """
    array = as_scores(values)
    check_confidence(confidence)
    summary = summarize(array, confidence=confidence)
    quantiles = percentiles(array, _DESCRIBED_PERCENTILES)
    return Description(
        n=summary.n,
        mean=summary.mean,
        sd=summary.sd,
        stderr=summary.stderr,
        ci=mean_interval(array, method="auto", confidence=confidence),
        median=quantiles["p50"],
        percentiles=quantiles,
        minimum=float(array.min()) if array.size else math.nan,
        maximum=float(array.max()) if array.size else math.nan,
        histogram=histogram(array, bins=bins),
    )
