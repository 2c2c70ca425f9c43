"""Power before spending: say up front when a dataset is too small to detect the gain a run looks for.

The check is a planning guide for 0/1 scores (the common case: exact match, pass/fail), made
before any score is known: :func:`dspex_lab.stats.minimum_detectable_difference` (a
two-proportion approximation at a baseline of 0.5, where a 0/1 score varies most; a paired test
on correlated scores does somewhat better, so the warning errs on the side of asking for more
data). It warns with one :class:`~dspex_lab.errors.UnderpoweredWarning` naming the smallest
gain the run can detect and the examples that would detect the gain of interest.
"""

from __future__ import annotations

import math
import warnings

from dspex_lab.errors import UnderpoweredWarning
from dspex_lab.stats import minimum_detectable_difference, sample_size_two_proportions

__all__ = ["PLAUSIBLE_GAIN", "TARGET_POWER", "power_advice", "warn_if_underpowered"]

# A gain of this size (10 points of a 0/1 score) is what a prompt, demo or configuration change
# plausibly buys; a run that cannot detect it is likely to end "not significant" whatever it tries.
PLAUSIBLE_GAIN = 0.10
TARGET_POWER = 0.8
# The baseline success rate assumed when none is known yet.
UNKNOWN_BASELINE = 0.5


def power_advice(
    n: int,
    *,
    what: str,
    alpha: float,
    gain: float = PLAUSIBLE_GAIN,
    power: float = TARGET_POWER,
    baseline: float = UNKNOWN_BASELINE,
    subject: str = "this run",
) -> str | None:
    """Return the advice when ``n`` examples cannot detect ``gain`` with ``power`` at ``alpha``, else None.

    Args:
        n: examples each program is scored on.
        what: what the examples are called in the message (``"valset"``).
        alpha: the run's two-sided significance level.
        gain: the gain of interest, in score units.
        power: the power the design should reach.
        baseline: the baseline's success rate, if known.
        subject: what detects (``"this run"``, ``"this comparison"``).

    Examples:
        >>> print(power_advice(60, what="valset", alpha=0.05))  # doctest: +NORMALIZE_WHITESPACE
        valset of 60 examples: the smallest gain this run can detect at alpha 0.05 with 80% power is ~0.24
        (0/1 scores, baseline 0.50); use >= 388 examples to detect 0.10
        >>> power_advice(400, what="valset", alpha=0.05) is None
        True
    """
    if not 0 < gain < 1:  # not a gain of a 0/1 score: nothing this approximation can say
        return None
    baseline = min(max(baseline, 0.0), 1.0 - gain)  # a gain above a perfect score is not a design
    detectable = minimum_detectable_difference(n, alpha=alpha, power=power, baseline=baseline)
    if detectable <= gain:
        return None
    needed = sample_size_two_proportions(baseline, baseline + gain, power=power, alpha=alpha)
    smallest = "no gain at all" if math.isinf(detectable) else f"~{detectable:.2f}"
    return (
        f"{what} of {n} examples: the smallest gain {subject} can detect at alpha {alpha:g} with {power:.0%} power "
        f"is {smallest} (0/1 scores, baseline {baseline:.2f}); use >= {needed} examples to detect {gain:.2f}"
    )


def warn_if_underpowered(
    n: int,
    *,
    what: str,
    alpha: float,
    gain: float = PLAUSIBLE_GAIN,
    baseline: float = UNKNOWN_BASELINE,
    subject: str = "this run",
    stacklevel: int = 3,
) -> str | None:
    """Warn once (:class:`UnderpoweredWarning`) when ``n`` examples cannot detect ``gain``; return the advice."""
    advice = power_advice(n, what=what, alpha=alpha, gain=gain, baseline=baseline, subject=subject)
    if advice is not None:
        warnings.warn(advice, UnderpoweredWarning, stacklevel=stacklevel)
    return advice
