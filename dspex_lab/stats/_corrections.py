"""Adjusted p-values for families of comparisons."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["benjamini_hochberg", "holm"]


def holm(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Return Holm step-down adjusted p-values (family-wise error control).

    The i-th smallest of m p-values becomes ``max_{j <= i} min(1, (m - j + 1) * p_(j))``,
    as ``statsmodels.stats.multitest.multipletests(p, method="holm")[1]``. NaN entries
    stay NaN and do not count towards m.

    Raises:
        ValueError: If the input is not one-dimensional or a p-value lies outside [0, 1].
    """
    p, present = _split(p_values)
    adjusted = np.full(p.shape, np.nan)
    observed = p[present]
    order = np.argsort(observed, kind="stable")
    count = observed.size
    stepped = np.maximum.accumulate(observed[order] * np.arange(count, 0, -1))
    observed_adjusted = np.empty(count)
    observed_adjusted[order] = np.minimum(stepped, 1.0)
    adjusted[present] = observed_adjusted
    return adjusted


def benjamini_hochberg(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Return Benjamini-Hochberg adjusted p-values (false-discovery-rate control).

    The i-th smallest of m p-values becomes ``min_{j >= i} min(1, p_(j) / (j / m))``,
    as ``statsmodels.stats.multitest.multipletests(p, method="fdr_bh")[1]``. NaN
    entries stay NaN and do not count towards m.

    Raises:
        ValueError: If the input is not one-dimensional or a p-value lies outside [0, 1].
    """
    p, present = _split(p_values)
    adjusted = np.full(p.shape, np.nan)
    observed = p[present]
    order = np.argsort(observed, kind="stable")
    count = observed.size
    # Divide by the rank fraction (rather than multiply by m / rank) to round exactly as statsmodels does.
    raw = observed[order] / (np.arange(1, count + 1) / count)
    stepped = np.minimum.accumulate(raw[::-1])[::-1]
    observed_adjusted = np.empty(count)
    observed_adjusted[order] = np.minimum(stepped, 1.0)
    adjusted[present] = observed_adjusted
    return adjusted


def _split(p_values: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the p-values as a float array and a mask of the non-NaN ones."""
    p = np.asarray(p_values, dtype=float)
    if p.ndim != 1:
        raise ValueError(f"p_values must be one-dimensional, got shape {p.shape}")
    present = ~np.isnan(p)
    if np.any((p[present] < 0) | (p[present] > 1)):
        raise ValueError("p-values must lie in [0, 1]")
    return p, present
