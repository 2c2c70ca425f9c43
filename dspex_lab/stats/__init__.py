"""Statistics: pure, seeded functions over arrays of scores.

This layer owns intervals, summaries and paired tests. It imports only numpy
and scipy, keeps no state, and every number it returns is checked in tests
against scipy or a closed form.
"""

from dspex_lab.stats._paired import PairedTest, paired_t_test
from dspex_lab.stats._summary import Summary, percentiles, summarize, t_interval

__all__ = ["PairedTest", "Summary", "paired_t_test", "percentiles", "summarize", "t_interval"]
