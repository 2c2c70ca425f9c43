"""Uncertainty when scores are not independent: clustered standard errors and variance components."""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import numpy as np

from dspex_lab.stats._checks import Values, as_scores

__all__ = ["clustered_stderr", "variance_components"]


def clustered_stderr(values: Values, clusters: Sequence[Hashable] | np.ndarray) -> float:
    """Return the cluster-robust standard error of the mean of ``values``.

    Observations sharing a cluster key (e.g. trials of one example, examples from
    one source document) may be correlated; clusters are assumed independent.
    With residuals ``e = y - mean(y)``, cluster sums ``S_g`` over ``G`` clusters and
    ``N`` observations the variance of the mean is::

        G / (G - 1) * sum_g S_g**2 / N**2

    This is the "CR1" convention of statsmodels ``OLS(y, ones).fit(cov_type="cluster")``
    with its default ``use_correction=True``: the factor
    ``G / (G - 1) * (N - 1) / (N - K)`` reduces to ``G / (G - 1)`` because the model has
    only the constant (K = 1). When every cluster holds one observation the result
    equals the ordinary (HC1-style) standard error ``sd(ddof=1) / sqrt(N)``.

    Args:
        values: One score per observation.
        clusters: One hashable cluster key per observation.

    Returns:
        The standard error, or NaN with fewer than two clusters (no between-cluster
        variation can be seen).

    Raises:
        ValueError: If the lengths differ or ``values`` holds a non-finite number.
    """
    array = as_scores(values)
    codes, cluster_count = _codes(clusters, array.size)
    if cluster_count < 2:
        return math.nan
    residuals = array - array.mean()
    cluster_sums = np.bincount(codes, weights=residuals, minlength=cluster_count)
    variance = cluster_count / (cluster_count - 1) * float(np.sum(cluster_sums**2)) / array.size**2
    return math.sqrt(variance)


def variance_components(values: Values, groups: Sequence[Hashable] | np.ndarray) -> tuple[float, float]:
    """Return ``(within, between)`` variance of repeated measurements per example.

    Method-of-moments estimates of the one-way random-effects ANOVA
    ``y_gi = mu + u_g + e_gi`` (groups may be unbalanced)::

        within  = MSW = sum_g sum_i (y_gi - mean_g)**2 / (N - G)
        between = max(0, (MSB - MSW) / n0),  MSB = sum_g n_g (mean_g - mean)**2 / (G - 1)
        n0      = (N - sum_g n_g**2 / N) / (G - 1)

    ``within`` is the trial-to-trial noise of one example; ``between`` is how much
    examples differ in their true score. A negative moment estimate of ``between``
    is clipped to 0.

    Args:
        values: One score per measurement.
        groups: One hashable example key per measurement.

    Returns:
        ``(within, between)``. ``within`` is NaN when no group has two measurements;
        ``between`` is NaN with fewer than two groups or when ``within`` is NaN.

    Raises:
        ValueError: If the lengths differ or ``values`` holds a non-finite number.
    """
    array = as_scores(values)
    codes, group_count = _codes(groups, array.size)
    total = array.size
    if total == 0:
        return (math.nan, math.nan)
    sizes = np.bincount(codes, minlength=group_count).astype(float)
    group_means = np.bincount(codes, weights=array, minlength=group_count) / sizes
    within_squares = float(np.sum((array - group_means[codes]) ** 2))
    within = within_squares / (total - group_count) if total > group_count else math.nan
    if group_count < 2 or math.isnan(within):
        return (within, math.nan)
    between_mean_square = float(np.sum(sizes * (group_means - array.mean()) ** 2)) / (group_count - 1)
    typical_size = (total - float(np.sum(sizes**2)) / total) / (group_count - 1)
    between = max(0.0, (between_mean_square - within) / typical_size)
    return (within, between)


def _codes(keys: Sequence[Hashable] | np.ndarray, size: int) -> tuple[np.ndarray, int]:
    """Return integer codes for ``keys`` (in order of first appearance) and the number of distinct keys."""
    keys = list(keys)
    if len(keys) != size:
        raise ValueError(f"need one key per value, got {len(keys)} keys for {size} values")
    # A dict keeps any hashable key (strings, tuples, ints) distinct without numpy's type coercion.
    lookup: dict[Hashable, int] = {}
    codes = np.fromiter((lookup.setdefault(key, len(lookup)) for key in keys), dtype=np.intp, count=size)
    return codes, len(lookup)
