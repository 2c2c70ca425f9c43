import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from statsmodels.formula.api import ols
from statsmodels.stats.anova import anova_lm

from dspex_lab.stats import clustered_stderr, variance_components


def clustered_data(seed: int, cluster_sizes: list[int]) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    values, keys = [], []
    for index, size in enumerate(cluster_sizes):
        shared = rng.normal(0, 0.3)
        values.extend(0.5 + shared + rng.normal(0, 0.2, size=size))
        keys.extend([f"example-{index}"] * size)
    return np.array(values), keys


def statsmodels_cluster_se(values: np.ndarray, keys: list) -> float:
    codes = pd.factorize(pd.Series(keys))[0]
    fit = sm.OLS(values, np.ones(values.size)).fit(cov_type="cluster", cov_kwds={"groups": codes})
    return float(fit.bse[0])


@pytest.mark.parametrize("sizes", [[3] * 12, [1, 5, 2, 8, 3, 3, 1, 4], [2, 2], [10, 1, 1, 1]])
def test_clustered_stderr_matches_statsmodels(sizes):
    values, keys = clustered_data(len(sizes), sizes)
    assert clustered_stderr(values, keys) == pytest.approx(statsmodels_cluster_se(values, keys), rel=1e-10)


def test_clustered_stderr_closed_form():
    values = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    keys = ["a", "a", "b", "b", "c", "c"]
    # Mean 0.5; cluster residual sums 0, 1, -1; G=3, N=6: var = 3/2 * 2 / 36.
    assert clustered_stderr(values, keys) == pytest.approx(math.sqrt(1.5 * 2 / 36), rel=1e-14)
    # Key types are kept apart: int 1 and str "1" are different clusters.
    assert clustered_stderr([1.0, 0.0], [1, "1"]) == pytest.approx(0.5)


def test_clustered_stderr_of_singletons_is_the_ordinary_stderr():
    values = np.random.default_rng(3).normal(size=40)
    ordinary = values.std(ddof=1) / math.sqrt(values.size)
    assert clustered_stderr(values, range(40)) == pytest.approx(ordinary, rel=1e-12)
    hc1 = sm.OLS(values, np.ones(40)).fit(cov_type="HC1").bse[0]
    assert clustered_stderr(values, range(40)) == pytest.approx(hc1, rel=1e-12)


def test_clustered_stderr_grows_with_within_cluster_correlation():
    values, keys = clustered_data(5, [6] * 20)
    ordinary = values.std(ddof=1) / math.sqrt(values.size)
    assert clustered_stderr(values, keys) > 1.5 * ordinary


def test_clustered_stderr_edges():
    assert math.isnan(clustered_stderr([1.0, 2.0, 3.0], ["x", "x", "x"]))
    assert math.isnan(clustered_stderr([], []))
    assert clustered_stderr([0.5] * 6, [0, 0, 1, 1, 2, 2]) == 0.0
    with pytest.raises(ValueError, match="one key per value"):
        clustered_stderr([1.0, 2.0], ["a"])
    with pytest.raises(ValueError, match="NaN"):
        clustered_stderr([1.0, math.nan], ["a", "b"])


def anova_mean_squares(values: np.ndarray, keys: list) -> tuple[float, float]:
    frame = pd.DataFrame({"y": values, "g": keys})
    table = anova_lm(ols("y ~ C(g)", data=frame).fit())
    return float(table["mean_sq"]["Residual"]), float(table["mean_sq"]["C(g)"])


@pytest.mark.parametrize("sizes", [[4] * 10, [2, 5, 3, 7, 2, 4]])
def test_variance_components_match_anova_mean_squares(sizes):
    values, keys = clustered_data(11, sizes)
    within_mean_square, between_mean_square = anova_mean_squares(values, keys)
    total = sum(sizes)
    typical_size = (total - sum(size**2 for size in sizes) / total) / (len(sizes) - 1)
    within, between = variance_components(values, keys)
    assert within == pytest.approx(within_mean_square, rel=1e-10)
    assert between == pytest.approx(max(0.0, (between_mean_square - within_mean_square) / typical_size), rel=1e-10)


def test_variance_components_closed_form_balanced():
    # Two examples, two trials each: means 1 and 3, within SS = 0.5 + 0.5 over 2 df.
    values = [0.5, 1.5, 2.5, 3.5]
    within, between = variance_components(values, ["a", "a", "b", "b"])
    # MSW = 0.5; MSB = 2 * (1 + 1) / 1 = 4; between = (4 - 0.5) / 2.
    assert (within, between) == pytest.approx((0.5, 1.75))


def test_variance_components_recover_simulated_truth():
    rng = np.random.default_rng(7)
    true_example = rng.normal(0, 0.5, size=400)
    values = np.repeat(true_example, 5) + rng.normal(0, 0.2, size=2000)
    within, between = variance_components(values, np.repeat(np.arange(400), 5))
    assert within == pytest.approx(0.04, rel=0.1) and between == pytest.approx(0.25, rel=0.2)


def test_variance_components_edges():
    # Examples that agree more than trials do give a negative moment estimate, clipped to 0.
    assert variance_components([0.0, 1.0, 0.0, 1.0], ["a", "a", "b", "b"])[1] == 0.0
    within, between = variance_components([1.0, 2.0, 4.0], ["a", "b", "c"])
    assert math.isnan(within) and math.isnan(between)
    within, between = variance_components([1.0, 2.0], ["a", "a"])
    assert within == pytest.approx(0.5) and math.isnan(between)
    assert variance_components([1.0] * 6, [0, 0, 1, 1, 2, 2]) == (0.0, 0.0)
    assert all(math.isnan(part) for part in variance_components([], []))
    with pytest.raises(ValueError, match="one key per value"):
        variance_components([1.0], [])
