"""Statistics: pure, seeded functions over arrays of scores.

This layer owns intervals, summaries and paired tests. It imports only numpy
and scipy, keeps no state, and every number it returns is checked in tests
against scipy or a closed form.
"""

from dspex_lab.stats._clustered import clustered_stderr, variance_components
from dspex_lab.stats._corrections import benjamini_hochberg, holm
from dspex_lab.stats._describe import Description, describe, histogram
from dspex_lab.stats._intervals import (
    Interval,
    bootstrap_interval,
    is_binary,
    mean_interval,
    score_interval,
    score_interval_from_totals,
    wilson_interval,
)
from dspex_lab.stats._paired import (
    PairedTest,
    choose_paired_test,
    cohens_dz,
    mcnemar_test,
    one_sided_p_value,
    paired_bootstrap_test,
    paired_t_test,
    paired_test,
    score_correlation,
    wilcoxon_test,
)
from dspex_lab.stats._power import (
    minimum_detectable_difference,
    minimum_detectable_effect_paired,
    power_mcnemar,
    power_paired,
    power_two_proportions,
    power_unpaired,
    sample_size_paired,
    sample_size_two_proportions,
    sample_size_unpaired,
)
from dspex_lab.stats._summary import Summary, percentiles, summarize, t_interval
from dspex_lab.stats._unpaired import UnpairedTest, welch_test

__all__ = [
    "Description",
    "Interval",
    "PairedTest",
    "Summary",
    "UnpairedTest",
    "benjamini_hochberg",
    "bootstrap_interval",
    "choose_paired_test",
    "clustered_stderr",
    "cohens_dz",
    "describe",
    "histogram",
    "holm",
    "is_binary",
    "mcnemar_test",
    "mean_interval",
    "minimum_detectable_difference",
    "minimum_detectable_effect_paired",
    "one_sided_p_value",
    "paired_bootstrap_test",
    "paired_t_test",
    "paired_test",
    "percentiles",
    "power_mcnemar",
    "power_paired",
    "power_two_proportions",
    "power_unpaired",
    "sample_size_paired",
    "sample_size_two_proportions",
    "sample_size_unpaired",
    "score_correlation",
    "score_interval",
    "score_interval_from_totals",
    "summarize",
    "t_interval",
    "variance_components",
    "welch_test",
    "wilcoxon_test",
    "wilson_interval",
]
