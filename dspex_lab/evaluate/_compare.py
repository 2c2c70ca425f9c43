"""``dx.compare``: a paired comparison of two evaluations on the examples they share."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from dspex_lab.errors import ExecutionError
from dspex_lab.evaluate._context import current_context
from dspex_lab.evaluate._result import EvaluationResult
from dspex_lab.journal import ExperimentRecord
from dspex_lab.stats import PairedTest, paired_t_test

__all__ = ["Comparison", "compare"]


@dataclass(frozen=True)
class Comparison:
    """``b - a`` on shared examples: difference, interval, test and effect size (Cohen's d_z)."""

    a: str
    b: str
    paired: PairedTest
    n_only_a: int
    n_only_b: int
    experiment_id: str | None = None

    @property
    def difference(self) -> float:
        """Mean of per-example differences b - a."""
        return self.paired.mean_difference

    @property
    def ci(self) -> tuple[float, float]:
        """Confidence interval of the difference."""
        return self.paired.ci

    @property
    def p_value(self) -> float:
        """Two-sided p-value of the paired test."""
        return self.paired.p_value

    @property
    def test(self) -> str:
        """The test used."""
        return self.paired.test

    @property
    def effect_size(self) -> float:
        """Cohen's d_z."""
        return self.paired.effect_size

    @property
    def n(self) -> int:
        """Examples scored by both."""
        return self.paired.n

    def to_frame(self) -> pd.DataFrame:
        """Return a one-row DataFrame."""
        return pd.DataFrame(
            [
                {
                    "a": self.a,
                    "b": self.b,
                    "n": self.n,
                    "difference": self.difference,
                    "ci_low": self.ci[0],
                    "ci_high": self.ci[1],
                    "p_value": self.p_value,
                    "test": self.test,
                    "effect_size": self.effect_size,
                }
            ]
        )

    def to_summary(self) -> dict[str, Any]:
        """Return JSON-ready numbers."""

        def number(value: float) -> float | None:
            return None if math.isnan(value) else float(value) if math.isfinite(value) else str(value)  # type: ignore[return-value]

        return {
            "a": self.a,
            "b": self.b,
            "n": self.n,
            "difference": number(self.difference),
            "ci": [number(self.ci[0]), number(self.ci[1])],
            "p_value": number(self.p_value),
            "test": self.test,
            "effect_size": number(self.effect_size),
            "n_only_a": self.n_only_a,
            "n_only_b": self.n_only_b,
        }

    def __repr__(self) -> str:
        return (
            f"Comparison({self.b!r} - {self.a!r}: {self.difference:+.3f} [{self.ci[0]:+.3f}, {self.ci[1]:+.3f}], "
            f"p={self.p_value:.3g}, {self.test}, d_z={self.effect_size:.2f}, n={self.n})"
        )

    def _repr_html_(self) -> str:
        return (
            f"<div class='dspex-comparison'><b>{html.escape(self.b)}</b> - <b>{html.escape(self.a)}</b>: "
            f"{self.difference:+.3f} (95% CI {self.ci[0]:+.3f} - {self.ci[1]:+.3f}), p = {self.p_value:.3g} "
            f"({html.escape(self.test)}), d<sub>z</sub> = {self.effect_size:.2f}, n = {self.n} paired examples</div>"
        )


def compare(a: EvaluationResult, b: EvaluationResult, *, confidence: float = 0.95) -> Comparison:
    """Compare two evaluations paired on the examples both scored (difference is ``b - a``)."""
    for label, result in (("a", a), ("b", b)):
        if not isinstance(result, EvaluationResult):
            raise ExecutionError(f"compare({label}=...) takes an EvaluationResult, got {type(result).__name__}")
    scores_a, scores_b = a.example_scores, b.example_scores
    shared = scores_a.index.intersection(scores_b.index)
    if len(shared) == 0:
        raise ExecutionError(f"{a.name!r} and {b.name!r} share no scored examples; a paired comparison needs them")
    paired = paired_t_test(scores_a.loc[shared].to_numpy(), scores_b.loc[shared].to_numpy(), confidence=confidence)
    comparison = Comparison(
        a.name, b.name, paired, len(scores_a.index.difference(shared)), len(scores_b.index.difference(shared))
    )
    journal = current_context().journal
    if journal is not None and a.experiment_id and b.experiment_id:
        experiment_id = journal.create_experiment(
            ExperimentRecord(
                kind="comparison",
                name=f"{b.name} vs {a.name}",
                config={"a": a.experiment_id, "b": b.experiment_id, "confidence": confidence},
            )
        )
        journal.finish_experiment(experiment_id, status="finished", summary=comparison.to_summary())
        comparison = Comparison(
            comparison.a, comparison.b, paired, comparison.n_only_a, comparison.n_only_b, experiment_id
        )
    return comparison
