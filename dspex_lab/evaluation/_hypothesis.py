"""Pre-registered hypotheses: stated and journaled before the runs, decided after them."""

from __future__ import annotations

import html
import math
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from dspex_lab.errors import ExecutionError
from dspex_lab.evaluation._compare import _paired_scores
from dspex_lab.evaluation._result import EvaluationResult
from dspex_lab.program import Program
from dspex_lab.session import current_context
from dspex_lab.stats import paired_test, power_paired, sample_size_paired

__all__ = ["Hypothesis", "Verdict", "hypothesis"]

DIRECTIONS = ("greater", "less", "two-sided")
TARGET_POWER = 0.8


@dataclass(frozen=True)
class Verdict:
    """The outcome of a hypothesis: confirmed, rejected or inconclusive, with the numbers behind it.

    ``p_value`` is one-sided in the stated direction (two-sided for "two-sided"); ``ci`` is the
    (1 - 2·alpha) interval of the difference used for the rejection rule (1 - alpha when two-sided).
    ``power`` is the power to detect ``min_effect`` at this n; ``n_needed`` the n that would reach 80%.
    """

    status: str
    message: str
    test: str
    n: int
    difference: float
    ci: tuple[float, float]
    p_value: float
    effect_size: float
    power: float
    n_needed: int | None
    baseline_experiment: str | None
    treatment_experiment: str | None

    def to_dict(self) -> dict[str, Any]:
        """Return JSON-ready data."""
        data = asdict(self)
        data["ci"] = list(self.ci)
        return {
            key: (None if isinstance(value, float) and not math.isfinite(value) else value)
            for key, value in data.items()
        }

    def _repr_html_(self) -> str:
        colour = {"confirmed": "#1a7f37", "rejected": "#cf222e"}.get(self.status, "#9a6700")
        return (
            f"<div class='dspex-verdict'><b style='color:{colour}'>{html.escape(self.status)}</b>: "
            f"{html.escape(self.message)}</div>"
        )


@dataclass(frozen=True)
class Hypothesis:
    """A hypothesis registered before the runs that will test it."""

    id: str
    statement: str
    metric: str | None
    baseline: str
    treatment: str
    direction: str
    min_effect: float
    alpha: float
    registered_at: datetime

    def decide(
        self, baseline: EvaluationResult, treatment: EvaluationResult, *, method: str = "auto", seed: int | None = None
    ) -> Verdict:
        """Test the hypothesis on the two evaluations (paired) and record the verdict in the journal.

        Rules, for direction "greater" (mirrored for "less"): **confirmed** when the one-sided
        test of "no improvement" is significant at ``alpha``; **rejected** when the upper bound
        of the (1 - 2·alpha) interval is below ``min_effect`` (an effect of interest is ruled
        out, as in an equivalence test) or the effect is significant the other way;
        **inconclusive** otherwise, with the n that would give 80% power to detect ``min_effect``.
        """
        for label, result, expected in (
            ("baseline", baseline, self.baseline),
            ("treatment", treatment, self.treatment),
        ):
            if not isinstance(result, EvaluationResult):
                raise ExecutionError(f"decide({label}=...) takes an EvaluationResult, got {type(result).__name__}")
            if result.name != expected:
                raise ExecutionError(
                    f"hypothesis {self.id} registered {label} {expected!r}, "
                    f"but was given the evaluation {result.name!r}"
                )
            first_started = result.trials["started_at"].min() if len(result.trials) else None
            registered = self.registered_at.replace(tzinfo=None) if self.registered_at else None
            if registered is not None and first_started is not None and first_started < registered:
                raise ExecutionError(
                    f"hypothesis {self.id} was registered at {registered:%Y-%m-%d %H:%M:%S} UTC, after the "
                    f"{label} evaluation {result.name!r} started; a pre-registered hypothesis is tested on runs "
                    "made after it"
                )
            if self.metric and result.metric and not result.metric.endswith(self.metric):
                raise ExecutionError(
                    f"hypothesis {self.id} is about metric {self.metric!r}, but {result.name!r} used {result.metric!r}"
                )
        first, second, _, _ = _paired_scores(baseline, treatment)
        verdict = self._verdict(
            first, second, method=method, seed=seed, experiments=(baseline.experiment_id, treatment.experiment_id)
        )
        current_context().journal.decide_hypothesis(self.id, status=verdict.status, verdict=verdict.to_dict())
        return verdict

    def _verdict(
        self,
        first: np.ndarray,
        second: np.ndarray,
        *,
        method: str,
        seed: int | None,
        experiments: tuple[str | None, str | None],
    ) -> Verdict:
        sign = -1.0 if self.direction == "less" else 1.0
        two_sided = self.direction == "two-sided"
        test = paired_test(first, second, method=method, confidence=1 - self.alpha * (1 if two_sided else 2), seed=seed)
        difference = test.mean_difference
        if two_sided or math.isnan(test.p_value):
            p_value = test.p_value
        else:
            p_value = test.p_value / 2 if sign * difference > 0 else 1 - test.p_value / 2
        low, high = test.ci
        differences = second - first
        n = len(differences)
        spread = float(np.std(differences, ddof=1)) if n > 1 else math.nan
        if spread and math.isfinite(spread):
            standardized = self.min_effect / spread
            # A one-sided test at alpha has the power of a two-sided test at 2*alpha (symmetric statistic).
            test_alpha = self.alpha if two_sided else min(2 * self.alpha, 0.5)
            power = float(power_paired(standardized, n, alpha=test_alpha))
            n_needed = int(sample_size_paired(standardized, power=TARGET_POWER, alpha=test_alpha))
        else:
            power, n_needed = (1.0, None) if n > 1 else (math.nan, None)
        favoured = sign * difference
        if p_value < self.alpha and (two_sided or favoured > 0):
            status = "confirmed"
            message = (
                f"{self.treatment} - {self.baseline} = {difference:+.3f}, p = {p_value:.3g} < {self.alpha} "
                f"({test.test}, n = {n})"
            )
            if power < TARGET_POWER and n_needed is not None:
                # "confirmed" beside "power 0.19" reads as a contradiction unless the two are told apart.
                message += (
                    f"; but underpowered: power {power:.2f} is the chance that n = {n} detects the minimum effect "
                    f"{self.min_effect:g} (about n = {n_needed} would give {TARGET_POWER:.0%}), so an effect found "
                    f"significant at this n is likely overstated (winner's curse): treat {difference:+.3f} as an "
                    f"upper-biased estimate and replicate with n >= {n_needed}"
                )
        elif (two_sided and -self.min_effect < low and high < self.min_effect) or (
            not two_sided and (sign * (high if sign > 0 else low) < self.min_effect or (p_value > 1 - self.alpha))
        ):
            status = "rejected"
            message = (
                f"an effect of {self.min_effect:g} or more is ruled out: difference {difference:+.3f}, "
                f"interval [{low:+.3f}, {high:+.3f}] ({test.test}, n = {n})"
            )
        else:
            status = "inconclusive"
            message = f"difference {difference:+.3f}, interval [{low:+.3f}, {high:+.3f}], p = {p_value:.3g}"
            if power < TARGET_POWER and n_needed is not None:
                message += (
                    f"; underpowered: n = {n} gives {power:.0%} power to detect {self.min_effect:g}, "
                    f"about n = {n_needed} would give {TARGET_POWER:.0%}"
                )
        return Verdict(
            status,
            message,
            test.test,
            n,
            difference,
            (low, high),
            p_value,
            test.effect_size,
            power,
            n_needed,
            *experiments,
        )

    def _repr_html_(self) -> str:
        return (
            f"<div class='dspex-hypothesis'>hypothesis <code>{self.id}</code>: {html.escape(self.statement)} "
            f"({html.escape(self.treatment)} vs {html.escape(self.baseline)}, {self.direction}, "
            f"min effect {self.min_effect:g}, alpha {self.alpha:g}) — registered</div>"
        )


def _name(value: str | Program) -> str:
    if isinstance(value, Program):
        return value.name
    if isinstance(value, str) and value:
        return value
    raise ExecutionError(f"baseline and treatment are evaluation names or dx.Program objects, got {value!r}")


def hypothesis(
    statement: str,
    *,
    metric: str | None,
    baseline: str | Program,
    treatment: str | Program,
    direction: str = "greater",
    min_effect: float,
    alpha: float = 0.05,
) -> Hypothesis:
    """Register a hypothesis in the current journal before running the evaluations that test it.

    Args:
        statement: the hypothesis in words.
        metric: the metric's name (e.g. "exact_match"); checked against the evaluations.
        baseline: the baseline evaluation's name (or its program).
        treatment: the treatment evaluation's name (or its program).
        direction: "greater" (treatment better), "less", or "two-sided".
        min_effect: the smallest difference that would matter, in metric units (> 0).
        alpha: the significance level.
    """
    if direction not in DIRECTIONS:
        raise ExecutionError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if not isinstance(min_effect, (int, float)) or not min_effect > 0:
        raise ExecutionError(f"min_effect must be a positive difference in metric units, got {min_effect!r}")
    if not 0 < alpha < 0.5:
        raise ExecutionError(f"alpha must be in (0, 0.5), got {alpha!r}")
    if not statement or not isinstance(statement, str):
        raise ExecutionError("a hypothesis needs a statement")
    registered = Hypothesis(
        id=uuid.uuid4().hex[:12],
        statement=statement,
        metric=metric,
        baseline=_name(baseline),
        treatment=_name(treatment),
        direction=direction,
        min_effect=float(min_effect),
        alpha=float(alpha),
        registered_at=datetime.now(UTC),
    )
    current_context().journal.register_hypothesis(asdict(registered))
    return registered
