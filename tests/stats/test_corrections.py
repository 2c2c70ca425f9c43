import math

import numpy as np
import pytest
from statsmodels.stats.multitest import multipletests

from dspex_lab.stats import benjamini_hochberg, holm

CORRECTIONS = [(holm, "holm"), (benjamini_hochberg, "fdr_bh")]


@pytest.mark.parametrize(("correction", "reference_method"), CORRECTIONS)
@pytest.mark.parametrize("seed", range(5))
def test_corrections_equal_statsmodels_exactly(correction, reference_method, seed):
    rng = np.random.default_rng(seed)
    p_values = np.concatenate([rng.uniform(0, 0.05, size=5), rng.uniform(0, 1, size=15)])
    rng.shuffle(p_values)
    np.testing.assert_array_equal(correction(p_values), multipletests(p_values, method=reference_method)[1])


@pytest.mark.parametrize(("correction", "reference_method"), CORRECTIONS)
def test_corrections_with_ties_bounds_and_single_values(correction, reference_method):
    for p_values in ([0.01, 0.01, 0.04, 0.04, 0.5], [0.0, 1.0, 0.3], [0.02], [0.9, 0.8, 0.99]):
        reference = multipletests(np.array(p_values), method=reference_method)[1]
        np.testing.assert_array_equal(correction(p_values), reference)
    assert correction([]).shape == (0,)


def test_corrections_closed_form():
    p_values = [0.01, 0.04, 0.03, 0.2]
    # Holm: sorted 0.01, 0.03, 0.04, 0.2 times 4, 3, 2, 1 = 0.04, 0.09, 0.08 -> 0.09 (monotone), 0.2.
    assert holm(p_values) == pytest.approx([0.04, 0.09, 0.09, 0.2])
    # BH: sorted times 4/1, 4/2, 4/3, 4/4 = 0.04, 0.06, 0.0533, 0.2 -> step-up minimum gives 0.0533 for ranks 2-3.
    assert benjamini_hochberg(p_values) == pytest.approx([0.04, 0.16 / 3, 0.16 / 3, 0.2])


@pytest.mark.parametrize(("correction", "reference_method"), CORRECTIONS)
def test_nan_p_values_pass_through(correction, reference_method):
    p_values = np.array([0.01, math.nan, 0.04, 0.03, math.nan])
    adjusted = correction(p_values)
    assert np.isnan(adjusted[[1, 4]]).all()
    present = ~np.isnan(p_values)
    np.testing.assert_array_equal(adjusted[present], multipletests(p_values[present], method=reference_method)[1])
    assert np.isnan(correction([math.nan])).all()


@pytest.mark.parametrize("correction", [holm, benjamini_hochberg])
def test_corrections_reject_invalid_input(correction):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        correction([0.5, 1.2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        correction([-0.1])
    with pytest.raises(ValueError, match="one-dimensional"):
        correction([[0.1, 0.2]])
