import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from dspex_lab.stats import paired_t_test, percentiles, summarize, t_interval


def test_summary_matches_scipy():
    values = np.random.default_rng(0).normal(0.6, 0.2, size=37)
    summary = summarize(values)
    assert summary.mean == pytest.approx(values.mean())
    assert summary.sd == pytest.approx(values.std(ddof=1))
    assert summary.stderr == pytest.approx(scipy_stats.sem(values))
    low, high = scipy_stats.t.interval(0.95, 36, loc=values.mean(), scale=scipy_stats.sem(values))
    assert summary.ci == pytest.approx((low, high))
    assert summarize(values, confidence=0.9).ci[1] < high


def test_summary_edge_cases():
    assert summarize([]).n == 0 and math.isnan(summarize([]).mean)
    one = summarize([0.4])
    assert one.mean == 0.4 and math.isnan(one.stderr) and all(math.isnan(bound) for bound in one.ci)
    constant = summarize([1.0] * 10)
    assert constant.sd == 0 and constant.ci == (1.0, 1.0)
    assert all(math.isnan(bound) for bound in t_interval(0.5, 0.1, 1))  # no interval from one value
    assert t_interval(0.5, 0.0, 5) == (0.5, 0.5)


def test_paired_t_matches_scipy():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 2, size=80).astype(float)
    b = np.clip(a + rng.integers(-1, 2, size=80), 0, 1)
    result = paired_t_test(a, b)
    reference = scipy_stats.ttest_rel(b, a)
    assert result.statistic == pytest.approx(reference.statistic)
    assert result.p_value == pytest.approx(reference.pvalue)
    differences = b - a
    ci = scipy_stats.t.interval(0.95, 79, loc=differences.mean(), scale=scipy_stats.sem(differences))
    assert result.ci == pytest.approx(ci)
    assert result.effect_size == pytest.approx(differences.mean() / differences.std(ddof=1))


def test_paired_edge_cases():
    equal = paired_t_test([1, 0, 1], [1, 0, 1])
    assert (equal.mean_difference, equal.p_value, equal.ci) == (0.0, 1.0, (0.0, 0.0))
    shifted = paired_t_test([0, 0, 0], [1, 1, 1])
    assert shifted.p_value == 0.0 and shifted.ci == (1.0, 1.0)
    assert math.isnan(paired_t_test([1.0], [0.0]).p_value)
    with pytest.raises(ValueError, match="equal lengths"):
        paired_t_test([1, 2], [1])


def test_percentiles_closed_form():
    assert percentiles(range(101)) == {"p50": 50.0, "p95": 95.0, "p99": 99.0}
    assert all(math.isnan(value) for value in percentiles([]).values())
