"""Input validation shared by the statistics modules."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Values = Sequence[float] | np.ndarray


def as_scores(values: Values, name: str = "values") -> np.ndarray:
    """Return ``values`` as a one-dimensional float array with no NaN or infinity.

    Raises:
        ValueError: If ``values`` is not one-dimensional or holds a non-finite number.
    """
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        # Silently dropping NaN would change n (and break pairing); propagating it hides the problem.
        raise ValueError(f"{name} contain NaN or infinite scores; drop or impute missing scores first")
    return array


def as_pairs(a: Values, b: Values) -> tuple[np.ndarray, np.ndarray]:
    """Return two validated score arrays of equal length.

    Raises:
        ValueError: If the lengths differ or either sample holds a non-finite number.
    """
    first = as_scores(a, "a")
    second = as_scores(b, "b")
    if first.shape != second.shape:
        raise ValueError(f"paired samples need equal lengths, got {first.size} and {second.size}")
    return first, second


def check_confidence(confidence: float) -> None:
    """Raise ValueError unless ``0 < confidence < 1``."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")


def as_generator(seed: int | np.random.Generator | None, purpose: str) -> np.random.Generator:
    """Return a generator for an explicit ``seed``; randomness never comes from global state.

    Raises:
        ValueError: If ``seed`` is None.
        TypeError: If ``seed`` is neither an int nor a ``numpy.random.Generator``.
    """
    if seed is None:
        raise ValueError(f"{purpose} is random: pass seed=<int or numpy.random.Generator> to make it reproducible")
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise TypeError(f"seed must be an int or numpy.random.Generator, got {type(seed).__name__}")
    return np.random.default_rng(int(seed))


def difference_effect_size(differences: np.ndarray) -> float:
    """Return Cohen's d_z of paired differences: mean / SD (ddof=1).

    With fewer than two differences it is NaN; with zero spread it is 0 for a zero
    mean and signed infinity otherwise, the same convention as ``paired_t_test``.
    """
    if differences.size < 2:
        return math.nan
    mean = float(differences.mean())
    sd = float(differences.std(ddof=1))
    if sd == 0:
        return 0.0 if mean == 0 else math.copysign(math.inf, mean)
    return mean / sd
