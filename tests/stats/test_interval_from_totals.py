"""``score_interval_from_totals``: the interval of ``score_interval`` from a sample's size, mean and variance."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dspex_lab.stats import score_interval, score_interval_from_totals


def totals(values: np.ndarray) -> tuple[int, float, float]:
    return int(values.size), float(values.mean()), float(values.var(ddof=1)) if values.size > 1 else 0.0


@pytest.mark.parametrize("seed", range(6))
def test_it_equals_score_interval_on_the_same_scores(seed):
    generator = np.random.default_rng(seed)
    size = int(generator.integers(2, 400))
    for values in (
        generator.integers(0, 2, size).astype(float),  # 0/1: Wilson
        generator.integers(0, 5, size) / 4,  # graded: t
        generator.normal(0.6, 0.2, size),
    ):
        n, mean, variance = totals(values)
        binary = bool(np.all((values == 0) | (values == 1)))
        expected = score_interval(values)
        found = score_interval_from_totals(n, mean, variance, binary=binary)
        assert found.method == expected.method == ("wilson" if binary else "t")
        assert found.low == pytest.approx(expected.low, abs=1e-12)
        assert found.high == pytest.approx(expected.high, abs=1e-12)


def test_small_and_constant_samples_follow_score_interval():
    for values in ([0.5], [1.0], [0.0, 0.0], [0.25, 0.25, 0.25], []):
        array = np.asarray(values, dtype=float)
        n, mean, variance = totals(array) if array.size else (0, math.nan, 0.0)
        binary = bool(array.size and np.all((array == 0) | (array == 1)))
        expected, found = score_interval(array), score_interval_from_totals(n, mean, variance, binary=binary)
        assert found.method == expected.method
        for low, high in ((found.low, expected.low), (found.high, expected.high)):
            assert (math.isnan(low) and math.isnan(high)) or low == pytest.approx(high, abs=1e-12)


def test_a_negative_size_or_variance_is_refused():
    with pytest.raises(ValueError, match="n >= 0"):
        score_interval_from_totals(-1, 0.5, 0.1, binary=False)
    with pytest.raises(ValueError, match="variance >= 0"):
        score_interval_from_totals(3, 0.5, -0.1, binary=False)
