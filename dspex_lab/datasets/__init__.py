"""Bundled datasets: small, seeded tasks that run offline with the lab LM.

``arithmetic`` is the task with something to find; ``null_arithmetic`` is its
null twin, where no configuration can beat a coin (for testing optimizers).
"""

from __future__ import annotations

from dspex_lab.datasets.arithmetic import TOPICS, arithmetic, parse_problem
from dspex_lab.datasets.null import null_arithmetic

__all__ = ["TOPICS", "arithmetic", "null_arithmetic", "parse_problem"]
