"""How a candidate is accepted: a one-sided paired test against the incumbent, Holm-corrected across a step.

SIMBA-C and the DSPy bridge accept the same way (see ``docs/optimize.md``): each candidate
evaluated on the validation set is tested against the incumbent on the examples both scored,
with the paired test the optimizer names; the question is one-sided ("is the candidate
better?"), the p-values of a step's candidates are corrected with Holm's method, and a
candidate is significant when its corrected p is below ``alpha`` and its mean difference is
positive. :func:`judge` does that once for both, and :func:`validation_outcome` is the record of
each test journaled in the step's row and its ``validate`` span.

With an objective (``dx.optimize(..., objective=dx.Objective(...))``, see
:mod:`~dspex_lab.optimization._objective`) a candidate is accepted only when its gain is
significant *and* every guardrail holds with confidence on its validation trials. While the
incumbent itself is not shown to meet every guardrail (a baseline that breaks one), the rule is
*feasibility first*: a candidate that meets every guardrail is accepted without a gain test (the
one with the largest mean difference when several do), and the search maximizes the metric from
there. Each verdict records its guardrail checks and the incumbent's, so the journal says why.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dspy
import numpy as np

from dspex_lab.optimization._evaluator import Scores
from dspex_lab.optimization._objective import Objective, check_guardrails, describe_checks
from dspex_lab.optimization._space import Candidate
from dspex_lab.stats import PairedTest, holm, one_sided_p_value, paired_test, score_interval

__all__ = ["Judged", "decision_reason", "finite", "judge", "mean_and_interval", "one_sided", "validation_outcome"]


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
    objective: Objective | None = None,
    examples: Mapping[str, dspy.Example] | None = None,
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
        objective: guardrails every accepted candidate meets with confidence (None: none).
        examples: example id -> example of the validation set (a second metric's guardrail reads them).
    """
    tests = [_paired(incumbent, scores, ids, method) for _, scores in evaluated]
    p_values = np.array([one_sided(test) for test in tests], dtype=float)
    adjusted = holm(p_values) if len(p_values) else p_values
    guard = _Guard(objective, incumbent, examples or {}, alpha)
    judged = []
    for (candidate, scores), test, p_adjusted in zip(evaluated, tests, adjusted, strict=True):
        difference = test.mean_difference if test is not None else math.nan
        error_rate = len(scores.errors) / max(len(ids), 1)
        few_errors = max_error_rate is None or error_rate <= max_error_rate
        # A Python bool: numpy's comparisons give numpy.bool_, which a JSON column would not store as a boolean.
        gain = bool(
            test is not None and math.isfinite(p_adjusted) and p_adjusted < alpha and difference > 0 and few_errors
        )
        checks, significant = guard.verdict(scores, gain=gain, few_errors=few_errors)
        # One-sided p (is the candidate better?), with the two-sided p of the same test beside it.
        outcome = validation_outcome(
            candidate, scores, test, p_value=one_sided(test), p_adjusted=p_adjusted, significant=significant
        )
        outcome["p_two_sided"] = finite(test.p_value) if test is not None else None
        if objective is not None:
            outcome.update(guard.fields(checks, gain=gain))
        judged.append(Judged(candidate, outcome, significant, difference))
    return judged


class _Guard:
    """The objective's side of one step's verdicts: the incumbent's checks, and each candidate's."""

    def __init__(
        self, objective: Objective | None, incumbent: Scores, examples: Mapping[str, dspy.Example], alpha: float
    ) -> None:
        self.objective = objective
        self.examples = examples
        self.alpha = alpha
        self.incumbent = [check.to_json() for check in self.checks(incumbent)]
        self.incumbent_feasible = all(check["holds"] for check in self.incumbent)

    def checks(self, scores: Scores) -> list[Any]:
        if self.objective is None:
            return []
        return check_guardrails(self.objective, scores, examples=self.examples, alpha=self.alpha)

    def verdict(self, scores: Scores, *, gain: bool, few_errors: bool) -> tuple[list[dict[str, Any]], bool]:
        """Return a candidate's checks and whether the rule accepts it (gain and guardrails, or feasibility first)."""
        if self.objective is None:
            return [], gain
        checks = [check.to_json() for check in self.checks(scores)]
        feasible = all(check["holds"] for check in checks)
        if self.incumbent_feasible:
            return checks, gain and feasible
        return checks, feasible and few_errors

    def fields(self, checks: list[dict[str, Any]], *, gain: bool) -> dict[str, Any]:
        """Return what a verdict records about the objective (JSON: the step row and the validate span)."""
        return {
            "gain_significant": gain,
            "feasible": all(check["holds"] for check in checks),
            "guardrails": checks,
            "incumbent_feasible": self.incumbent_feasible,
            "incumbent_guardrails": self.incumbent,
            "rule": "gain and guardrails" if self.incumbent_feasible else "feasibility first",
        }


def decision_reason(verdicts: Sequence[Judged], best: Judged | None, *, alpha: float, incumbent_id: str) -> str:
    """Say why a step accepted ``best`` or rejected every verdict (the step row's ``detail``, the step's conclusion).

    Args:
        verdicts: the step's verdicts.
        best: the accepted one, or None.
        alpha: the acceptance test's level.
        incumbent_id: the incumbent the verdicts were judged against.
    """
    if best is not None:
        test = best.outcome
        if test.get("rule") == "feasibility first":
            return (
                f"accepted {best.candidate.id}: the incumbent {incumbent_id} breaks a guardrail "
                f"({describe_checks(test['incumbent_guardrails'])}) and {best.candidate.id} meets every one "
                f"({describe_checks(test['guardrails'])}); difference {_signed(test['difference'])}"
            )
        reason = (
            f"accepted {best.candidate.id}: {test['test']} p={test['p_value']:.3g} (Holm {test['p_adjusted']:.3g}) "
            f"< alpha={alpha}, difference {test['difference']:+.3f}"
        )
        return reason + (f"; guardrails hold: {describe_checks(test['guardrails'])}" if "guardrails" in test else "")
    if not verdicts:
        return "rejected: no candidate beat the incumbent on the mini-batch"
    if "guardrails" not in verdicts[0].outcome:
        return "rejected: no candidate's paired test was significant after Holm's correction"
    if not verdicts[0].outcome["incumbent_feasible"]:
        return (
            f"rejected: the incumbent {incumbent_id} breaks a guardrail and no candidate meets every one ("
            + "; ".join(f"{item.candidate.id}: {describe_checks(item.outcome['guardrails'])}" for item in verdicts)
            + ")"
        )
    parts = []
    for item in verdicts:
        outcome = item.outcome
        if outcome["gain_significant"]:
            failing = [check for check in outcome["guardrails"] if not check["holds"]]
            parts.append(f"{item.candidate.id}'s gain was significant but {describe_checks(failing)}")
        else:
            parts.append(f"{item.candidate.id}: no significant gain after Holm's correction")
    return "rejected: " + "; ".join(parts)


def _signed(value: Any) -> str:
    return f"{value:+.3f}" if isinstance(value, (int, float)) and math.isfinite(value) else "not tested"
