"""How a candidate is accepted: a one-sided paired test against the incumbent, Holm-corrected across a step.

SIMBA-C and the DSPy bridge accept the same way (see ``docs/optimize.md``): each candidate
evaluated on the validation set is tested against the incumbent on the examples both scored,
with the paired test the optimizer names; the question is one-sided ("is the candidate
better?"), the p-values of a step's candidates are corrected with Holm's method, and a
candidate is significant when its corrected p is below ``alpha`` and its mean difference is
positive. :func:`judge` does that once for both, and :func:`validation_outcome` is the record of
each test journaled in the step's row and its ``validate`` span.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dspex_lab.optimization._evaluator import Scores
from dspex_lab.optimization._space import Candidate
from dspex_lab.stats import PairedTest, holm, one_sided_p_value, paired_test, score_interval

__all__ = ["Judged", "finite", "judge", "mean_and_interval", "one_sided", "validation_outcome"]


def finite(value: Any) -> float | None:
    """Return ``value`` as a float for a JSON column: None for None, NaN or an infinity."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def mean_and_interval(scores: dict[str, float]) -> tuple[float | None, float | None, float | None]:
    """Return the mean of per-example scores and its 95% interval (None where undefined).

    The interval is :func:`dspex_lab.stats.score_interval`'s (Wilson for 0/1 scores, Student t
    otherwise), the rule of every view: a step's best and a candidate's validation interval are the
    ones the run's result, the progress display and the leaderboard show for the same trials.
    """
    values = np.array(list(scores.values()), dtype=float)
    if values.size == 0:
        return None, None, None
    interval = score_interval(values)
    return float(values.mean()), finite(interval.low), finite(interval.high)


def one_sided(test: PairedTest | None) -> float:
    """The p-value of "the candidate is better", from a symmetric two-sided paired test (NaN without a test).

    Only improvements are ever accepted, so the question is one-sided. For the t-test,
    Wilcoxon's normal approximation and the exact McNemar (binomial) test, the one-sided
    p is half the two-sided one in the observed direction (an exact McNemar's two-sided p
    is twice the smaller tail, capped at 1, so half of it is that tail, or 0.5 at the cap).
    """
    return math.nan if test is None else one_sided_p_value(test)


def validation_outcome(
    candidate: Candidate, scores: Scores, test: Any, *, p_value: float, p_adjusted: float, significant: bool
) -> dict[str, Any]:
    """Return the journal record of one full evaluation: the candidate's mean and CI, and its paired test."""
    mean, low, high = mean_and_interval(scores.by_example)
    return {
        "candidate": candidate.id,
        "experiment_id": scores.experiment_id,
        "mean": mean,
        "ci_low": low,
        "ci_high": high,
        "n": scores.n,
        "errors": len(scores.errors),
        "difference": finite(test.mean_difference) if test is not None else None,
        "diff_ci_low": finite(test.ci[0]) if test is not None else None,
        "diff_ci_high": finite(test.ci[1]) if test is not None else None,
        "test": test.test if test is not None else None,
        "p_value": finite(p_value),
        "p_adjusted": finite(float(p_adjusted)),
        "significant": bool(significant),
    }


@dataclass(frozen=True)
class Judged:
    """One candidate's test against the incumbent.

    Attributes:
        candidate: the candidate.
        outcome: its journal record (:func:`validation_outcome`, with the two-sided p as ``p_two_sided``).
        significant: accepted by the rule (corrected p below alpha, a positive difference, few enough errors).
        difference: the mean paired difference, candidate minus incumbent (NaN without a test).
    """

    candidate: Candidate
    outcome: dict[str, Any]
    significant: bool
    difference: float


def _paired(incumbent: Scores, scores: Scores, ids: Sequence[str], method: str) -> PairedTest | None:
    common = [key for key in ids if key in scores.by_example and key in incumbent.by_example]
    if len(common) < 2:
        return None
    try:
        return paired_test(
            [incumbent.by_example[key] for key in common], [scores.by_example[key] for key in common], method=method
        )
    except ValueError:
        return None


def judge(
    incumbent: Scores,
    evaluated: Sequence[tuple[Candidate, Scores]],
    *,
    ids: Sequence[str],
    method: str,
    alpha: float,
    max_error_rate: float | None = None,
) -> list[Judged]:
    """Test each evaluated candidate against the incumbent and apply the acceptance rule (see the module docstring).

    Args:
        incumbent: the incumbent's validation scores.
        evaluated: the step's candidates with their validation scores, in the order they were evaluated.
        ids: the validation set's example ids, in order.
        method: the paired test (``auto``, ``t``, ``wilcoxon``, ``mcnemar``).
        alpha: the significance level of the corrected one-sided p.
        max_error_rate: a candidate failing on more than this fraction of the validation set is not
            accepted (None: no such limit).
    """
    tests = [_paired(incumbent, scores, ids, method) for _, scores in evaluated]
    p_values = np.array([one_sided(test) for test in tests], dtype=float)
    adjusted = holm(p_values) if len(p_values) else p_values
    judged = []
    for (candidate, scores), test, p_adjusted in zip(evaluated, tests, adjusted, strict=True):
        difference = test.mean_difference if test is not None else math.nan
        error_rate = len(scores.errors) / max(len(ids), 1)
        # A Python bool: numpy's comparisons give numpy.bool_, which a JSON column would not store as a boolean.
        significant = bool(
            test is not None
            and math.isfinite(p_adjusted)
            and p_adjusted < alpha
            and difference > 0
            and (max_error_rate is None or error_rate <= max_error_rate)
        )
        # One-sided p (is the candidate better?), with the two-sided p of the same test beside it.
        outcome = validation_outcome(
            candidate, scores, test, p_value=one_sided(test), p_adjusted=p_adjusted, significant=significant
        )
        outcome["p_two_sided"] = finite(test.p_value) if test is not None else None
        judged.append(Judged(candidate, outcome, significant, difference))
    return judged
