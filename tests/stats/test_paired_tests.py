import itertools
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats
from statsmodels.stats.contingency_tables import mcnemar

from dspex_lab.stats import (
    PairedTest,
    choose_paired_test,
    cohens_dz,
    mcnemar_test,
    paired_bootstrap_test,
    paired_t_test,
    paired_test,
    score_correlation,
    wilcoxon_test,
)


def continuous_pairs(seed: int, n: int, shift: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.uniform(0, 1, size=n)
    return a, np.clip(a + shift + rng.normal(0, 0.2, size=n), 0, 1)


def binary_pairs(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2, size=n).astype(float)
    flip = rng.random(n) < 0.3
    return a, np.where(flip, 1 - a, a)


# --- Wilcoxon ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "differences",
    [
        [0.3, -0.1, 0.25, 0.4, -0.05, 0.6, 0.2],  # exact distribution
        [1, 1, 2, -3, 4, 0, 0, -1, 2],  # ties and zeros, n <= 13: scipy's exhaustive permutation test
        list(np.round(np.random.default_rng(2).normal(0.3, 1, size=30), 1)),  # ties, 13 < n <= 50: asymptotic
        list(np.random.default_rng(3).normal(0.2, 1, size=80)),  # normal approximation (n > 50)
        [1.0],
    ],
)
def test_wilcoxon_matches_scipy(differences):
    a = np.linspace(0, 1, len(differences))
    b = a + np.array(differences)
    result = wilcoxon_test(a, b)
    reference = scipy_stats.wilcoxon(b - a, zero_method="wilcox")
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-12)
    assert result.statistic == pytest.approx(reference.statistic, rel=1e-12)
    assert result.test == "Wilcoxon signed-rank" and result.n == len(differences)


def test_wilcoxon_exact_p_by_enumeration():
    # Distinct magnitudes, no zeros: under the null every sign pattern of ranks 1..n is equally likely.
    differences = np.array([0.5, -0.1, 0.9, 0.3, -0.7, 1.2, 0.8, 0.6])
    n = differences.size
    ranks = scipy_stats.rankdata(np.abs(differences))
    observed = ranks[differences > 0].sum()
    null_sums = np.array(
        [
            sum(r for r, s in zip(range(1, n + 1), signs, strict=True) if s)
            for signs in itertools.product([0, 1], repeat=n)
        ]
    )
    centre = n * (n + 1) / 4
    exact = np.mean(np.abs(null_sums - centre) >= abs(observed - centre))
    result = wilcoxon_test(np.zeros(n), differences)
    assert result.p_value == pytest.approx(exact, rel=1e-12)


def test_wilcoxon_effect_size_and_interval():
    differences = np.array([2.0, -1.0, 3.0, 0.0, 4.0])
    result = wilcoxon_test(np.zeros(5), differences)
    # Zero dropped; ranks of |2, -1, 3, 4| are 2, 1, 3, 4: W+ = 9, W- = 1, r = 8 / 10.
    assert result.effect_size == pytest.approx(0.8)
    assert result.mean_difference == pytest.approx(1.6)
    low, high = scipy_stats.t.interval(0.95, 4, loc=1.6, scale=scipy_stats.sem(differences))
    assert result.ci == pytest.approx((low, high))
    assert wilcoxon_test(np.zeros(4), np.ones(4)).effect_size == 1.0
    assert wilcoxon_test(np.ones(4), np.zeros(4)).effect_size == -1.0


def test_wilcoxon_edge_cases():
    same = wilcoxon_test([0.2, 0.5, 0.9], [0.2, 0.5, 0.9])
    assert (same.p_value, same.statistic, same.effect_size, same.mean_difference, same.ci) == (
        1.0,
        0.0,
        0.0,
        0.0,
        (0.0, 0.0),
    )
    single = wilcoxon_test([0.0], [1.0])
    assert single.p_value == 1.0 and math.isnan(single.ci[0])
    assert math.isnan(wilcoxon_test([], []).p_value)
    with pytest.raises(ValueError, match="equal lengths"):
        wilcoxon_test([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        wilcoxon_test([1.0, math.nan], [1.0, 2.0])


# --- McNemar ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mcnemar_matches_statsmodels(seed):
    a, b = binary_pairs(seed, 40 + 10 * seed)
    result = mcnemar_test(a, b)
    table = [
        [np.sum((a == 0) & (b == 0)), np.sum((a == 0) & (b == 1))],
        [np.sum((a == 1) & (b == 0)), np.sum((a == 1) & (b == 1))],
    ]
    reference = mcnemar(table, exact=True)
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-12)
    assert result.statistic == reference.statistic
    assert result.test == "exact McNemar"


def test_mcnemar_closed_form():
    # 7 pairs improve, 1 gets worse, 12 unchanged: p = 2 * P(Bin(8, 1/2) <= 1) = 2 * 9 / 256.
    a = np.array([0] * 7 + [1] + [1] * 6 + [0] * 6, dtype=float)
    b = np.array([1] * 7 + [0] + [1] * 6 + [0] * 6, dtype=float)
    result = mcnemar_test(a, b)
    assert result.p_value == pytest.approx(18 / 256, rel=1e-14)
    difference = 6 / 20
    stderr = math.sqrt((8 / 20 - difference**2) / 20)
    z = scipy_stats.norm.ppf(0.975)
    assert result.mean_difference == pytest.approx(difference)
    assert result.ci == pytest.approx((difference - z * stderr, difference + z * stderr))
    # The Wald standard error is the population SD of the differences over sqrt(n).
    assert stderr == pytest.approx((b - a).std(ddof=0) / math.sqrt(20))
    assert result.effect_size == pytest.approx((b - a).mean() / (b - a).std(ddof=1))


def test_mcnemar_edge_cases():
    all_correct = mcnemar_test([1, 1, 1, 1], [1, 1, 1, 1])
    assert (all_correct.p_value, all_correct.mean_difference, all_correct.ci, all_correct.effect_size) == (
        1.0,
        0.0,
        (0.0, 0.0),
        0.0,
    )
    concordant = mcnemar_test([0, 1, 0, 1], [0, 1, 0, 1])
    assert concordant.p_value == 1.0 and concordant.statistic == 0.0
    every_pair_improves = mcnemar_test([0] * 6, [1] * 6)
    assert every_pair_improves.p_value == pytest.approx(2 / 64) and every_pair_improves.ci == (1.0, 1.0)
    assert every_pair_improves.effect_size == math.inf
    assert mcnemar_test([0], [1]).p_value == 1.0
    assert math.isnan(mcnemar_test([], []).p_value)
    with pytest.raises(ValueError, match="0 or 1"):
        mcnemar_test([0, 0.5], [1, 1])


# --- Paired bootstrap -------------------------------------------------------------------------


def test_paired_bootstrap_interval_agrees_with_scipy():
    a, b = continuous_pairs(4, 50)
    result = paired_bootstrap_test(a, b, seed=1)
    # Same resamples as scipy for n * resamples <= 1e6 (see test_intervals), so the percentile CI agrees closely.
    reference = scipy_stats.bootstrap((b - a,), np.mean, method="percentile", n_resamples=10_000, rng=1)
    assert result.ci == pytest.approx(tuple(reference.confidence_interval), rel=1e-9)
    other_seed = scipy_stats.bootstrap((b - a,), np.mean, method="percentile", n_resamples=10_000, rng=99)
    width = other_seed.confidence_interval.high - other_seed.confidence_interval.low
    assert result.ci == pytest.approx(tuple(other_seed.confidence_interval), abs=0.05 * width)
    assert result.test == "paired bootstrap" and result.mean_difference == pytest.approx((b - a).mean())
    assert result.effect_size == pytest.approx(cohens_dz(a, b))


@pytest.mark.parametrize(("seed", "shift"), [(5, 0.03), (6, 0.05), (7, 0.0)])
def test_paired_bootstrap_p_approximates_normal_theory(seed, shift):
    # For a large sample the resampled mean is close to normal with SD = sd(ddof=0) / sqrt(n).
    a, b = continuous_pairs(seed, 200, shift)
    differences = b - a
    result = paired_bootstrap_test(a, b, seed=seed)
    z = differences.mean() / (differences.std(ddof=0) / math.sqrt(differences.size))
    expected = 2 * scipy_stats.norm.sf(abs(z))
    assert result.p_value == pytest.approx(expected, abs=0.02)


def test_paired_bootstrap_p_value_formula():
    a, b = continuous_pairs(8, 30)
    result = paired_bootstrap_test(a, b, seed=3, resamples=999)
    generator = np.random.default_rng(3)
    differences = b - a
    means = differences[generator.integers(0, 30, size=(999, 30))].mean(axis=1)
    extreme = np.sum(np.abs(means - differences.mean()) >= abs(differences.mean()))
    assert result.p_value == pytest.approx((1 + extreme) / 1000)
    assert result.statistic == pytest.approx(differences.mean() / means.std(ddof=1))


def test_paired_bootstrap_edges_and_seed():
    a, b = continuous_pairs(9, 20)
    assert paired_bootstrap_test(a, b, seed=4) == paired_bootstrap_test(a, b, seed=np.random.default_rng(4))
    with pytest.raises(ValueError, match="seed"):
        paired_bootstrap_test(a, b, seed=None)  # type: ignore[arg-type]
    same = paired_bootstrap_test([0.1, 0.4, 0.8], [0.1, 0.4, 0.8], seed=0)
    assert (same.p_value, same.ci, same.mean_difference) == (1.0, (0.0, 0.0), 0.0)
    shifted = paired_bootstrap_test([0, 0, 0], [1, 1, 1], seed=0, resamples=99)
    assert shifted.p_value == pytest.approx(0.01) and shifted.ci == (1.0, 1.0)
    assert math.isnan(paired_bootstrap_test([1.0], [0.0], seed=0).p_value)
    assert math.isnan(paired_bootstrap_test([], [], seed=0).mean_difference)


# --- Effect size, correlation, dispatch --------------------------------------------------------


def test_cohens_dz_and_correlation_closed_form():
    a, b = continuous_pairs(10, 25)
    differences = b - a
    assert cohens_dz(a, b) == pytest.approx(differences.mean() / differences.std(ddof=1))
    assert cohens_dz(a, b) == pytest.approx(paired_t_test(a, b).effect_size)
    assert score_correlation(a, b) == pytest.approx(scipy_stats.pearsonr(a, b).statistic, rel=1e-12)
    assert score_correlation(a, 2 * a + 1) == 1.0 and score_correlation(a, -a) == -1.0
    assert math.isnan(score_correlation([1.0, 1.0, 1.0], [0.0, 1.0, 0.5]))
    assert math.isnan(score_correlation([0.3], [0.4]))
    assert math.isnan(cohens_dz([0.3], [0.4]))
    assert cohens_dz([1, 2], [1, 2]) == 0.0 and cohens_dz([1, 2], [2, 3]) == math.inf


def test_choose_paired_test():
    assert choose_paired_test([0, 1, 1], [1, 1, 0]) == "mcnemar"
    assert choose_paired_test([0.0] * 30, [1.0] * 30) == "mcnemar"
    assert choose_paired_test(*continuous_pairs(0, 30)) == "paired t-test"
    assert choose_paired_test(*continuous_pairs(0, 29)) == "wilcoxon"
    # One binary sample is not enough for McNemar.
    assert choose_paired_test([0, 1, 1], [0.5, 1, 0]) == "wilcoxon"


def test_paired_test_dispatch():
    binary = binary_pairs(1, 40)
    large = continuous_pairs(2, 40)
    small = continuous_pairs(3, 12)
    assert paired_test(*binary) == mcnemar_test(*binary)
    assert paired_test(*large) == paired_t_test(*large)
    assert paired_test(*small) == wilcoxon_test(*small)
    assert paired_test(*small, method="t").test == "paired t-test"
    assert paired_test(*large, method="wilcoxon").test == "Wilcoxon signed-rank"
    assert paired_test(*binary, method="mcnemar", confidence=0.9) == mcnemar_test(*binary, confidence=0.9)
    bootstrap = paired_test(*small, method="bootstrap", seed=2)
    assert isinstance(bootstrap, PairedTest) and bootstrap == paired_bootstrap_test(*small, seed=2)
    with pytest.raises(ValueError, match="needs a seed"):
        paired_test(*small, method="bootstrap")
    with pytest.raises(ValueError, match="method must be one of"):
        paired_test(*small, method="sign")
