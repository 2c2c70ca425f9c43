import math

import numpy as np
import pytest
from scipy import special
from scipy import stats as scipy_stats

from dspex_lab.stats import UnpairedTest, welch_test


@pytest.mark.parametrize(("size_a", "size_b", "seed"), [(20, 35, 0), (5, 8, 1), (2, 2, 2), (60, 15, 3)])
@pytest.mark.parametrize("confidence", [0.9, 0.95])
def test_welch_matches_scipy(size_a, size_b, seed, confidence):
    rng = np.random.default_rng(seed)
    a = rng.normal(0.5, 0.1, size=size_a)
    b = rng.normal(0.6, 0.3, size=size_b)
    result = welch_test(a, b, confidence=confidence)
    reference = scipy_stats.ttest_ind(b, a, equal_var=False)
    assert isinstance(result, UnpairedTest) and result.test == "Welch t-test"
    assert (result.n_a, result.n_b) == (size_a, size_b)
    assert result.mean_difference == pytest.approx(b.mean() - a.mean())
    assert result.statistic == pytest.approx(reference.statistic, rel=1e-12)
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-10)
    assert result.ci == pytest.approx(tuple(reference.confidence_interval(confidence)), rel=1e-10)


def test_welch_interval_uses_satterthwaite_degrees_of_freedom():
    a = np.array([0.1, 0.2, 0.4, 0.3])
    b = np.array([0.5, 0.9, 0.2, 0.8, 0.7, 1.0])
    share_a, share_b = a.var(ddof=1) / 4, b.var(ddof=1) / 6
    degrees = (share_a + share_b) ** 2 / (share_a**2 / 3 + share_b**2 / 5)
    half = scipy_stats.t.ppf(0.975, degrees) * math.sqrt(share_a + share_b)
    difference = b.mean() - a.mean()
    assert welch_test(a, b).ci == pytest.approx((difference - half, difference + half), rel=1e-12)


def test_hedges_g_closed_form():
    a = np.array([0.1, 0.2, 0.4, 0.3, 0.35])
    b = np.array([0.5, 0.9, 0.2, 0.8, 0.7, 1.0, 0.6])
    pooled = math.sqrt((4 * a.var(ddof=1) + 6 * b.var(ddof=1)) / 10)
    correction = special.gamma(5) / (math.sqrt(5) * special.gamma(4.5))
    assert welch_test(a, b).effect_size == pytest.approx((b.mean() - a.mean()) / pooled * correction, rel=1e-12)
    # The usual approximation 1 - 3 / (4 m - 1) is within 0.1% at m = 10.
    assert correction == pytest.approx(1 - 3 / (4 * 10 - 1), rel=1e-3)
    assert welch_test(b, a).effect_size == pytest.approx(-welch_test(a, b).effect_size)


def test_welch_edge_cases():
    equal = welch_test([0.5, 0.5, 0.5], [0.5, 0.5])
    assert (equal.p_value, equal.ci, equal.statistic, equal.effect_size) == (1.0, (0.0, 0.0), 0.0, 0.0)
    apart = welch_test([0.0, 0.0], [1.0, 1.0, 1.0])
    assert (apart.p_value, apart.ci, apart.statistic) == (0.0, (1.0, 1.0), math.inf)
    one_constant = welch_test([1.0, 1.0, 1.0], [0.2, 0.9, 0.4])
    # With one constant sample Welch reduces to a one-sample t-test of the other, on n - 1 df.
    other = np.array([0.2, 0.9, 0.4])
    statistic = (other.mean() - 1.0) / (other.std(ddof=1) / math.sqrt(3))
    assert one_constant.statistic == pytest.approx(statistic)
    assert one_constant.p_value == pytest.approx(2 * scipy_stats.t.sf(abs(statistic), 2))
    tiny = welch_test([1.0], [0.2, 0.5])
    assert tiny.mean_difference == pytest.approx(-0.65) and math.isnan(tiny.p_value) and math.isnan(tiny.ci[0])
    empty = welch_test([], [1.0, 2.0])
    assert empty.n_a == 0 and math.isnan(empty.mean_difference)
    with pytest.raises(ValueError, match="NaN"):
        welch_test([1.0, math.nan], [1.0, 2.0])
