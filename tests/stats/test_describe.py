import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from dspex_lab.stats import Description, describe, histogram, mean_interval, wilson_interval


def test_describe_matches_numpy_and_scipy():
    values = np.random.default_rng(0).gamma(2.0, 0.2, size=53)
    description = describe(values, confidence=0.9, bins=7)
    assert isinstance(description, Description)
    assert description.n == 53
    assert description.mean == pytest.approx(values.mean())
    assert description.sd == pytest.approx(values.std(ddof=1))
    assert description.stderr == pytest.approx(scipy_stats.sem(values))
    low, high = scipy_stats.t.interval(0.9, 52, loc=values.mean(), scale=scipy_stats.sem(values))
    assert (description.ci.low, description.ci.high, description.ci.method) == (
        pytest.approx(low),
        pytest.approx(high),
        "t",
    )
    assert description.median == pytest.approx(np.median(values))
    expected = {f"p{point}": np.percentile(values, point) for point in (5, 25, 50, 75, 95)}
    assert description.percentiles == pytest.approx(expected)
    assert list(description.percentiles) == ["p5", "p25", "p50", "p75", "p95"]
    assert (description.minimum, description.maximum) == (values.min(), values.max())
    counts, edges = np.histogram(values, bins=7)
    assert description.histogram == (tuple(counts), tuple(edges))


def test_describe_binary_scores_use_wilson():
    description = describe([1, 1, 1, 0, 1])
    assert description.ci == wilson_interval(4, 5)
    all_correct = describe([1.0] * 8)
    assert all_correct.sd == 0 and all_correct.ci == wilson_interval(8, 8) and all_correct.ci.low < 1


def test_describe_edge_cases():
    empty = describe([])
    assert empty.n == 0 and math.isnan(empty.mean) and math.isnan(empty.minimum) and math.isnan(empty.ci.low)
    assert math.isnan(empty.median) and sum(empty.histogram[0]) == 0
    single = describe([0.25])
    assert single.mean == single.median == single.minimum == single.maximum == 0.25
    assert math.isnan(single.sd) and math.isnan(single.stderr) and math.isnan(single.ci.low)
    constant = describe([0.5] * 4)
    assert constant.sd == 0 and (constant.ci.low, constant.ci.high) == (0.5, 0.5)
    assert constant.histogram == histogram([0.5] * 4)
    with pytest.raises(ValueError, match="NaN"):
        describe([0.1, math.nan])
    assert describe([0, 1], confidence=0.8).ci == mean_interval([0, 1], confidence=0.8)


def test_histogram_matches_numpy_and_validates_bins():
    values = [0.0, 0.1, 0.1, 0.5, 0.9, 1.0]
    counts, edges = histogram(values, bins=4)
    assert counts == (3, 0, 1, 2) and edges == pytest.approx((0.0, 0.25, 0.5, 0.75, 1.0))
    assert all(isinstance(count, int) for count in counts) and all(isinstance(edge, float) for edge in edges)
    assert len(histogram(values)[0]) == 10 and sum(histogram(values)[0]) == len(values)
    # A constant sample is binned around itself, as numpy does.
    assert histogram([2.0, 2.0], bins=2) == ((0, 2), (1.5, 2.0, 2.5))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="bins"):
            histogram(values, bins=bad)
    with pytest.raises(ValueError, match="NaN"):
        histogram([1.0, math.inf])
