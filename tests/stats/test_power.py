import math

import numpy as np
import pytest
from scipy import stats as scipy_stats
from statsmodels.stats.power import NormalIndPower, TTestIndPower, TTestPower
from statsmodels.stats.proportion import proportion_effectsize

from dspex_lab.stats import (
    power_mcnemar,
    power_paired,
    power_two_proportions,
    power_unpaired,
    sample_size_paired,
    sample_size_two_proportions,
    sample_size_unpaired,
)


@pytest.mark.parametrize("alternative", ["two-sided", "larger", "smaller"])
@pytest.mark.parametrize(("effect_size", "n"), [(0.3, 40), (0.8, 10), (-0.5, 25), (0.0, 30), (1.5, 2)])
def test_t_powers_match_statsmodels(effect_size, n, alternative):
    paired = TTestPower().power(effect_size, n, 0.05, alternative=alternative)
    assert power_paired(effect_size, n, alternative=alternative) == pytest.approx(paired, rel=1e-8)
    unpaired = TTestIndPower().power(effect_size, n, 0.05, ratio=1, alternative=alternative)
    assert power_unpaired(effect_size, n, alternative=alternative) == pytest.approx(unpaired, rel=1e-8)


def test_t_power_stays_finite_where_statsmodels_gives_nan():
    # scipy's nct.cdf fails deep in the tail; statsmodels passes the NaN on, we use the survival function.
    assert math.isnan(TTestPower().power(20.0, 2, 0.05))
    expected = scipy_stats.nct.sf(scipy_stats.t.isf(0.025, 1), 1, 20 * math.sqrt(2))
    assert power_paired(20.0, 2) == pytest.approx(expected, rel=1e-12)
    assert power_paired(-20.0, 2) == pytest.approx(expected, rel=1e-12)


def test_t_power_closed_form_at_zero_effect():
    # Under the null the rejection rate is alpha.
    assert power_paired(0.0, 17, alpha=0.1) == pytest.approx(0.1, abs=1e-12)
    assert power_unpaired(0.0, 17, alpha=0.01, alternative="larger") == pytest.approx(0.01, abs=1e-12)


@pytest.mark.parametrize(("p_a", "p_b", "n"), [(0.6, 0.7, 150), (0.9, 0.95, 400), (0.5, 0.3, 40), (0.0, 0.1, 60)])
def test_two_proportions_match_statsmodels(p_a, p_b, n):
    effect = proportion_effectsize(p_b, p_a)
    reference = NormalIndPower().power(effect, n, 0.05, ratio=1, alternative="two-sided")
    assert power_two_proportions(p_a, p_b, n) == pytest.approx(reference, rel=1e-10)
    assert power_two_proportions(p_b, p_a, n) == pytest.approx(reference, rel=1e-10)


def test_power_mcnemar_closed_form_and_null():
    p_ab, p_ba, n = 0.05, 0.15, 200
    discordance, difference = 0.2, 0.1
    z = scipy_stats.norm.ppf(0.975)
    expected = scipy_stats.norm.cdf((difference * math.sqrt(n) - z * math.sqrt(discordance)) / math.sqrt(0.19))
    expected += scipy_stats.norm.cdf((-difference * math.sqrt(n) - z * math.sqrt(discordance)) / math.sqrt(0.19))
    assert power_mcnemar(p_ab, p_ba, n) == pytest.approx(expected, rel=1e-12)
    assert power_mcnemar(p_ba, p_ab, n) == pytest.approx(expected, rel=1e-12)
    assert power_mcnemar(0.1, 0.1, 50) == pytest.approx(0.05, abs=1e-12)
    assert power_mcnemar(0.0, 0.0, 50) == 0.0
    assert power_mcnemar(0.0, 1.0, 50) == 1.0


def simulated_mcnemar_power(p_ab: float, p_ba: float, n: int, *, exact: bool, repetitions: int = 20_000) -> float:
    rng = np.random.default_rng(1234)
    counts = rng.multinomial(n, [p_ab, p_ba, 1 - p_ab - p_ba], size=repetitions)
    only_a, only_b = counts[:, 0], counts[:, 1]
    discordant = only_a + only_b
    if exact:
        p_values = np.minimum(1.0, 2 * scipy_stats.binom.cdf(np.minimum(only_a, only_b), discordant, 0.5))
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            chi_square = (only_a - only_b) ** 2 / discordant
        p_values = np.where(discordant > 0, scipy_stats.chi2.sf(chi_square, 1), 1.0)
    return float(np.mean(p_values < 0.05))


@pytest.mark.parametrize(("p_ab", "p_ba", "n"), [(0.05, 0.15, 200), (0.1, 0.2, 150), (0.02, 0.08, 300)])
def test_power_mcnemar_agrees_with_simulation(p_ab, p_ba, n):
    approximate = power_mcnemar(p_ab, p_ba, n)
    # The formula targets the asymptotic test (no continuity correction): Monte-Carlo SE <= 0.0035.
    assert approximate == pytest.approx(simulated_mcnemar_power(p_ab, p_ba, n, exact=False), abs=0.03)
    # The exact test that mcnemar_test runs is more conservative; the formula stays within a few points.
    exact = simulated_mcnemar_power(p_ab, p_ba, n, exact=True)
    assert exact - 0.01 <= approximate <= exact + 0.06


@pytest.mark.parametrize("effect_size", [0.2, 0.5, -0.8, 1.2])
@pytest.mark.parametrize(("power", "alpha"), [(0.8, 0.05), (0.9, 0.01)])
def test_sample_sizes_are_the_smallest_reaching_power(effect_size, power, alpha):
    n = sample_size_paired(effect_size, power=power, alpha=alpha)
    assert power_paired(effect_size, n, alpha=alpha) >= power
    assert n == 2 or power_paired(effect_size, n - 1, alpha=alpha) < power
    assert n == math.ceil(TTestPower().solve_power(effect_size, power=power, alpha=alpha))
    per_group = sample_size_unpaired(effect_size, power=power, alpha=alpha)
    assert power_unpaired(effect_size, per_group, alpha=alpha) >= power
    assert per_group == 2 or power_unpaired(effect_size, per_group - 1, alpha=alpha) < power
    assert per_group == math.ceil(TTestIndPower().solve_power(effect_size, power=power, alpha=alpha))


@pytest.mark.parametrize(("p_a", "p_b"), [(0.6, 0.7), (0.9, 0.95), (0.5, 0.2), (0.0, 0.3)])
def test_sample_size_two_proportions(p_a, p_b):
    n = sample_size_two_proportions(p_a, p_b)
    assert power_two_proportions(p_a, p_b, n) >= 0.8
    assert n == 1 or power_two_proportions(p_a, p_b, n - 1) < 0.8
    effect = proportion_effectsize(p_b, p_a)
    assert n == math.ceil(NormalIndPower().solve_power(effect, power=0.8, alpha=0.05, ratio=1))


def test_sample_size_closed_form_normal_limit():
    # For a small d the t answer approaches the normal one, ((z_{a/2} + z_b) / d)^2, plus about 2.
    normal = ((scipy_stats.norm.ppf(0.975) + scipy_stats.norm.ppf(0.8)) / 0.1) ** 2
    assert normal < sample_size_paired(0.1) <= normal + 3
    # Two pairs suffice only when the t critical value with 1 df (12.7) is far below d * sqrt(2).
    assert sample_size_paired(20.0) == 2
    assert sample_size_paired(5.0) == 3


def test_zero_effect_and_invalid_designs_raise():
    for call in (
        lambda: sample_size_paired(0.0),
        lambda: sample_size_unpaired(0.0),
        lambda: sample_size_two_proportions(0.4, 0.4),
    ):
        with pytest.raises(ValueError, match="effect size is 0"):
            call()
    with pytest.raises(ValueError, match="power"):
        sample_size_paired(0.5, power=1.0)
    with pytest.raises(ValueError, match="alpha"):
        power_paired(0.5, 10, alpha=0.0)
    with pytest.raises(ValueError, match="alternative"):
        power_paired(0.5, 10, alternative="greater")
    with pytest.raises(ValueError, match="at least 2"):
        power_paired(0.5, 1)
    with pytest.raises(ValueError, match="at least 2"):
        power_unpaired(0.5, 1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        power_two_proportions(0.5, 1.2, 10)
    with pytest.raises(ValueError, match="sum to at most 1"):
        power_mcnemar(0.6, 0.5, 10)
    with pytest.raises(ValueError, match="too small"):
        sample_size_paired(1e-9)
