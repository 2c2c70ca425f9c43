import math

import numpy as np
import pytest
from scipy import stats as scipy_stats
from statsmodels.stats.proportion import proportion_confint

from dspex_lab.stats import Interval, bootstrap_interval, is_binary, mean_interval, wilson_interval


@pytest.mark.parametrize(("successes", "n"), [(0, 1), (1, 1), (0, 10), (10, 10), (3, 10), (47, 120), (999, 1000)])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_wilson_matches_statsmodels(successes, n, confidence):
    interval = wilson_interval(successes, n, confidence=confidence)
    low, high = proportion_confint(successes, n, alpha=1 - confidence, method="wilson")
    assert (interval.low, interval.high) == pytest.approx((low, high), abs=1e-12)
    assert (interval.method, interval.confidence) == ("wilson", confidence)
    assert 0 <= interval.low <= successes / n <= interval.high <= 1


def test_wilson_closed_form_and_edges():
    # 5 of 10 at 95%: centre 0.5, half-width z/(1+z^2/n) * sqrt(0.025 + z^2/400).
    z = scipy_stats.norm.ppf(0.975)
    half = z / (1 + z * z / 10) * math.sqrt(0.25 / 10 + z * z / 400)
    interval = wilson_interval(5, 10)
    assert (interval.low, interval.high) == pytest.approx((0.5 - half, 0.5 + half), abs=1e-14)
    assert wilson_interval(0, 10).low == 0.0
    empty = wilson_interval(0, 0)
    assert math.isnan(empty.low) and math.isnan(empty.high)
    for successes, n in [(11, 10), (-1, 5), (2.5, 5)]:
        with pytest.raises(ValueError, match="successes"):
            wilson_interval(successes, n)
    with pytest.raises(ValueError, match="confidence"):
        wilson_interval(1, 2, confidence=1.0)


def test_interval_is_frozen():
    interval = Interval(0.1, 0.2, "t", 0.95)
    with pytest.raises(AttributeError):
        interval.low = 0.0  # type: ignore[misc]


@pytest.mark.parametrize("method", ["percentile", "bca"])
@pytest.mark.parametrize(("statistic", "data_seed"), [(np.mean, 1), (np.median, 2)])
def test_bootstrap_agrees_with_scipy(method, statistic, data_seed):
    # Skewed data so that BCa and percentile differ visibly; tolerance is Monte-Carlo error of 10k resamples.
    values = np.random.default_rng(data_seed).lognormal(0, 0.8, size=60)
    ours = bootstrap_interval(values, statistic=statistic, method=method, seed=11)
    reference = scipy_stats.bootstrap(
        (values,), statistic, method=method.replace("bca", "BCa"), n_resamples=10_000, rng=12
    )
    width = reference.confidence_interval.high - reference.confidence_interval.low
    assert ours.low == pytest.approx(reference.confidence_interval.low, abs=0.05 * width)
    assert ours.high == pytest.approx(reference.confidence_interval.high, abs=0.05 * width)
    assert ours.method == method


@pytest.mark.parametrize("method", ["percentile", "bca"])
@pytest.mark.parametrize(("statistic", "data_seed"), [(np.mean, 1), (np.median, 2), (np.std, 3)])
def test_bootstrap_equals_scipy_on_the_same_resamples(method, statistic, data_seed):
    # scipy 1.17 draws rng.integers(0, n, (resamples, n)) in one batch, as we do when n * resamples <= 1e6,
    # so the same seed gives the same resamples and any difference is in the interval formulas.
    # If a scipy release changes how it draws, this fails loudly; the Monte-Carlo test above still holds.
    values = np.random.default_rng(data_seed).lognormal(0, 0.8, size=60)
    ours = bootstrap_interval(values, statistic=statistic, method=method, seed=21)
    reference = scipy_stats.bootstrap(
        (values,), statistic, method=method.replace("bca", "BCa"), n_resamples=10_000, rng=21
    )
    assert (ours.low, ours.high) == pytest.approx(tuple(reference.confidence_interval), rel=1e-9)


def test_bootstrap_in_several_batches_agrees_with_scipy():
    # 1500 values: resamples and jackknife rows are both built in batches of at most 1e6 elements.
    values = np.random.default_rng(9).gamma(0.5, 1.0, size=1500)
    ours = bootstrap_interval(values, method="bca", seed=2, resamples=3000)
    reference = scipy_stats.bootstrap((values,), np.mean, method="BCa", n_resamples=3000, rng=3)
    width = reference.confidence_interval.high - reference.confidence_interval.low
    assert ours.low == pytest.approx(reference.confidence_interval.low, abs=0.06 * width)
    assert ours.high == pytest.approx(reference.confidence_interval.high, abs=0.06 * width)


def test_bca_shifts_right_for_right_skewed_mean():
    values = np.random.default_rng(4).exponential(size=40)
    percentile = bootstrap_interval(values, method="percentile", seed=0)
    bca = bootstrap_interval(values, method="bca", seed=0)
    # Same resamples; BCa moves both bounds up for right-skewed data (positive acceleration).
    assert bca.low > percentile.low and bca.high > percentile.high


def test_bootstrap_is_reproducible_and_seed_is_required():
    values = np.arange(20.0) ** 1.5
    first = bootstrap_interval(values, seed=5, resamples=500)
    assert first == bootstrap_interval(values, seed=5, resamples=500)
    assert first == bootstrap_interval(values, seed=np.random.default_rng(5), resamples=500)
    assert first != bootstrap_interval(values, seed=6, resamples=500)
    with pytest.raises(ValueError, match="seed"):
        bootstrap_interval(values, seed=None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="seed"):
        bootstrap_interval(values, seed=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="percentile"):
        bootstrap_interval(values, seed=1, method="basic")


def test_bootstrap_statistic_without_axis_matches_vectorized():
    values = np.random.default_rng(8).normal(size=25)
    vectorized = bootstrap_interval(values, seed=3, resamples=2000, method="bca")
    row_by_row = bootstrap_interval(values, seed=3, resamples=2000, method="bca", statistic=lambda row: row.mean())
    assert (row_by_row.low, row_by_row.high) == pytest.approx((vectorized.low, vectorized.high), rel=1e-12)


def test_bootstrap_degenerate_and_tiny_samples():
    for method in ("percentile", "bca"):
        constant = bootstrap_interval([0.7] * 12, method=method, seed=0)
        assert constant.low == constant.high == pytest.approx(0.7, rel=1e-15)
        spread_of_constant = bootstrap_interval([0.7] * 12, method=method, seed=0, statistic=np.std)
        assert spread_of_constant.low == spread_of_constant.high == pytest.approx(0.0, abs=1e-15)
        single = bootstrap_interval([0.7], method=method, seed=0)
        assert math.isnan(single.low) and math.isnan(single.high)
        assert math.isnan(bootstrap_interval([], method=method, seed=0).low)
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_interval([1.0, math.nan], seed=0)


def test_is_binary():
    assert is_binary([0, 1, 1.0]) and is_binary(np.array([True, False])) and is_binary([1, 1])
    assert not is_binary([0, 0.5]) and not is_binary([]) and not is_binary([0, 1, math.nan]) and not is_binary([2])


def test_mean_interval_methods():
    binary = np.array([1, 0, 1, 1, 1, 0, 1, 1, 1, 1], dtype=float)
    auto = mean_interval(binary)
    assert auto == wilson_interval(8, 10)
    continuous = np.random.default_rng(2).normal(0.5, 0.1, size=30)
    t = mean_interval(continuous)
    low, high = scipy_stats.t.interval(0.9, 29, loc=continuous.mean(), scale=scipy_stats.sem(continuous))
    t90 = mean_interval(continuous, confidence=0.9)
    assert (t90.low, t90.high, t90.method) == (pytest.approx(low), pytest.approx(high), "t")
    assert t.method == "t" and mean_interval(binary, method="t").method == "t"
    bca = mean_interval(continuous, method="bca", seed=1, resamples=2000)
    assert bca == bootstrap_interval(continuous, method="bca", seed=1, resamples=2000)
    assert mean_interval(continuous, method="percentile", seed=1).method == "percentile"


def test_mean_interval_errors_and_edges():
    with pytest.raises(ValueError, match="needs a seed"):
        mean_interval([1.0, 2.0], method="bca")
    with pytest.raises(ValueError, match="needs a seed"):
        mean_interval([1.0, 2.0], method="percentile")
    with pytest.raises(ValueError, match="0 or 1"):
        mean_interval([0.5, 1.0], method="wilson")
    with pytest.raises(ValueError, match="method must be one of"):
        mean_interval([1.0, 2.0], method="normal")
    with pytest.raises(ValueError, match="NaN"):
        mean_interval([1.0, math.nan])
    # All correct: Wilson stays informative where t collapses to [1, 1].
    all_correct = mean_interval([1.0] * 20)
    assert all_correct.method == "wilson" and all_correct.high == pytest.approx(1.0) and all_correct.low < 0.9
    assert mean_interval([1.0] * 20, method="t") == Interval(1.0, 1.0, "t", 0.95)
    single = mean_interval([0.3])
    assert single.method == "t" and math.isnan(single.low)
    assert math.isnan(mean_interval([]).low)


def test_jackknife_rows_leave_out_one_value_each():
    from dspex_lab.stats._intervals import _jackknife

    # 1500 values span three batches of leave-one-out rows; the mean has the closed form (total - x_i) / (n - 1).
    values = np.random.default_rng(10).normal(size=1500)
    expected = (values.sum() - values) / 1499
    np.testing.assert_allclose(_jackknife(values, np.mean), expected, rtol=1e-12)
    np.testing.assert_allclose(_jackknife(values[:7], lambda row: row.mean()), (values[:7].sum() - values[:7]) / 6)
