"""``dx.compare`` and ``dx.compare_many``: paired comparisons of evaluations on the same examples."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from dspex_lab.errors import ExecutionError
from dspex_lab.evaluation._power import warn_if_underpowered
from dspex_lab.evaluation._result import EvaluationResult, format_number
from dspex_lab.journal import ExperimentRecord
from dspex_lab.session import current_context
from dspex_lab.stats import (
    PairedTest,
    UnpairedTest,
    benjamini_hochberg,
    holm,
    is_binary,
    paired_test,
    score_correlation,
    welch_test,
)

__all__ = ["Comparison", "ComparisonSet", "compare", "compare_many", "comparison_of"]


def _number(value: float | None) -> float | str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value) if math.isfinite(value) else str(value)


@dataclass(frozen=True)
class Comparison:
    """``b - a``: difference, interval, the test used, p-value and effect size.

    Paired comparisons (the default) use the examples both evaluations scored; ``effect_size``
    is then Cohen's d_z for t/bootstrap/McNemar and the rank-biserial correlation for Wilcoxon.
    Unpaired (Welch) comparisons report Hedges' g.
    """

    a: str
    b: str
    result: PairedTest | UnpairedTest
    paired: bool
    n_only_a: int = 0
    n_only_b: int = 0
    correlation: float = math.nan
    experiment_id: str | None = None
    adjusted_p_value: float | None = None
    correction: str | None = None

    @property
    def difference(self) -> float:
        """Mean difference b - a."""
        return self.result.mean_difference

    @property
    def ci(self) -> tuple[float, float]:
        """Confidence interval of the difference."""
        return self.result.ci

    @property
    def p_value(self) -> float:
        """Two-sided p-value of the test (unadjusted)."""
        return self.result.p_value

    @property
    def test(self) -> str:
        """The test used."""
        return self.result.test

    @property
    def effect_size(self) -> float:
        """Effect size (see the class docstring for which one)."""
        return self.result.effect_size

    @property
    def n(self) -> int:
        """Paired examples (paired) or total observations (unpaired)."""
        return self.result.n if isinstance(self.result, PairedTest) else self.result.n_a + self.result.n_b

    def to_summary(self) -> dict[str, Any]:
        """Return JSON-ready numbers."""
        return {
            "a": self.a,
            "b": self.b,
            "paired": self.paired,
            "test": self.test,
            "n": self.n,
            "difference": _number(self.difference),
            "ci": [_number(self.ci[0]), _number(self.ci[1])],
            "p_value": _number(self.p_value),
            "adjusted_p_value": _number(self.adjusted_p_value),
            "correction": self.correction,
            "effect_size": _number(self.effect_size),
            "correlation": _number(self.correlation),
            "n_only_a": self.n_only_a,
            "n_only_b": self.n_only_b,
        }

    def to_frame(self) -> pd.DataFrame:
        """Return a one-row DataFrame."""
        summary = self.to_summary()
        low, high = summary.pop("ci")
        return pd.DataFrame([{**summary, "ci_low": low, "ci_high": high}])

    def __repr__(self) -> str:
        low, high = self.ci
        return (
            f"Comparison({self.b!r} - {self.a!r}: {format_number(self.difference, '+.3f')} "
            f"[{format_number(low, '+.3f')}, {format_number(high, '+.3f')}], "
            f"p={self.p_value:.3g}, {self.test}, effect={self.effect_size:.2f}, n={self.n})"
        )

    def _repr_html_(self) -> str:
        low, high = self.ci
        confidence = self.result.confidence
        adjusted = (
            f", adjusted p = {self.adjusted_p_value:.3g} ({html.escape(self.correction or '')})"
            if self.adjusted_p_value is not None
            else ""
        )
        pairing = f"{self.n} paired examples" if self.paired else f"{self.n} observations, unpaired"
        excluded = (
            f"; excluded (scored by one side only): {self.n_only_a} / {self.n_only_b}"
            if self.n_only_a or self.n_only_b
            else ""
        )
        return (
            f"<div class='dspex-comparison'><b>{html.escape(self.b)}</b> - <b>{html.escape(self.a)}</b>: "
            f"{format_number(self.difference, '+.3f')} ({confidence:.0%} CI {format_number(low, '+.3f')} to "
            f"{format_number(high, '+.3f')}), p = {self.p_value:.3g}"
            f"{adjusted} — {html.escape(self.test)}, effect size {self.effect_size:.2f}, {pairing}{excluded}</div>"
        )


def _check_results(*results: EvaluationResult) -> None:
    for result in results:
        if not isinstance(result, EvaluationResult):
            raise ExecutionError(f"compare takes EvaluationResult objects, got {type(result).__name__}")


def _paired_scores(a: EvaluationResult, b: EvaluationResult) -> tuple[np.ndarray, np.ndarray, int, int]:
    fingerprint_a = (a.dataset or {}).get("fingerprint")
    fingerprint_b = (b.dataset or {}).get("fingerprint")
    examples_a = set(a.trials["example_id"])
    examples_b = set(b.trials["example_id"])
    if (fingerprint_a and fingerprint_b and fingerprint_a != fingerprint_b) or examples_a != examples_b:
        raise ExecutionError(
            f"{a.name!r} and {b.name!r} were evaluated on different example sets "
            f"({len(examples_a)} and {len(examples_b)} examples, {len(examples_a & examples_b)} shared), so they "
            "cannot be paired; evaluate both on the same dataset, or use dx.compare(a, b, paired=False) for an "
            "unpaired Welch test"
        )
    scores_a, scores_b = a.example_scores, b.example_scores
    shared = scores_a.index.intersection(scores_b.index)
    if len(shared) == 0:
        raise ExecutionError(f"{a.name!r} and {b.name!r} have no example scored by both; nothing to pair")
    return (
        scores_a.loc[shared].to_numpy(dtype=float),
        scores_b.loc[shared].to_numpy(dtype=float),
        len(scores_a.index.difference(shared)),
        len(scores_b.index.difference(shared)),
    )


def comparison_of(
    a: EvaluationResult, b: EvaluationResult, *, paired: bool, method: str, confidence: float, seed: int | None
) -> Comparison:
    """Return ``b - a`` compared as :func:`compare` does, with nothing journaled and no warning."""
    if not paired:
        result = welch_test(a.scores(), b.scores(), confidence=confidence)
        return Comparison(a.name, b.name, result, paired=False)
    first, second, only_a, only_b = _paired_scores(a, b)
    result = paired_test(first, second, method=method, confidence=confidence, seed=seed)
    return Comparison(
        a.name,
        b.name,
        result,
        paired=True,
        n_only_a=only_a,
        n_only_b=only_b,
        correlation=score_correlation(first, second),
    )


def _journal_comparison(name: str, config: dict[str, Any], summary: dict[str, Any]) -> str:
    """Record a comparison (its settings and summary) in the current context's journal; return its id."""
    journal = current_context().journal
    experiment_id = journal.create_experiment(ExperimentRecord(kind="comparison", name=name, config=config))
    journal.finish_experiment(experiment_id, status="finished", summary=summary)
    return experiment_id


def compare(
    a: EvaluationResult,
    b: EvaluationResult,
    *,
    paired: bool = True,
    method: str = "auto",
    confidence: float = 0.95,
    seed: int | None = None,
) -> Comparison:
    """Compare two evaluations: ``b - a``, paired on the examples both scored.

    Args:
        a: the baseline.
        b: the treatment.
        paired: False for an unpaired Welch test (different example sets).
        method: ``"auto"`` (exact McNemar for 0/1 scores, paired t for n >= 30, Wilcoxon below),
            or ``"t"``, ``"wilcoxon"``, ``"mcnemar"``, ``"bootstrap"`` (needs ``seed``).
        confidence: level of the interval.
        seed: seed for the bootstrap.

    Raises:
        ExecutionError: a paired comparison of evaluations on different example sets.
    """
    _check_results(a, b)
    comparison = comparison_of(a, b, paired=paired, method=method, confidence=confidence, seed=seed)
    _warn_if_underpowered(a, b, comparison, alpha=1 - confidence)
    if a.experiment_id and b.experiment_id:
        experiment_id = _journal_comparison(
            f"{b.name} vs {a.name}",
            {"a": a.experiment_id, "b": b.experiment_id, "paired": paired, "method": method, "confidence": confidence},
            comparison.to_summary(),
        )
        comparison = replace(comparison, experiment_id=experiment_id)
    return comparison


def _warn_if_underpowered(a: EvaluationResult, b: EvaluationResult, comparison: Comparison, *, alpha: float) -> None:
    """Say why "not significant" may mean "too few examples": 0/1 scores, paired, p at or above alpha."""
    if not comparison.paired or not comparison.p_value >= alpha or comparison.n < 1:
        return
    if not (is_binary(a.scores()) and is_binary(b.scores())):
        return
    warn_if_underpowered(
        comparison.n,
        what=f"{b.name} vs {a.name} is not significant (p = {comparison.p_value:.2g}); a comparison",
        alpha=alpha,
        baseline=a.mean,
        subject="this comparison",
        stacklevel=4,
    )


@dataclass(frozen=True)
class ComparisonSet:
    """Several treatments against one baseline, with p-values adjusted for multiplicity."""

    baseline: str
    comparisons: tuple[Comparison, ...]
    correction: str

    def to_frame(self) -> pd.DataFrame:
        """Return one row per treatment."""
        return pd.concat([comparison.to_frame() for comparison in self.comparisons], ignore_index=True)

    def __getitem__(self, name: str) -> Comparison:
        for comparison in self.comparisons:
            if comparison.b == name:
                return comparison
        raise KeyError(f"no comparison for {name!r}; treatments: {[c.b for c in self.comparisons]}")

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(c.b)}</td><td>{format_number(c.difference, '+.3f')}</td>"
            f"<td>{format_number(c.ci[0], '+.3f')} to {format_number(c.ci[1], '+.3f')}</td>"
            f"<td>{c.p_value:.3g}</td><td>{(c.adjusted_p_value or math.nan):.3g}</td>"
            f"<td>{html.escape(c.test)}</td><td>{c.effect_size:.2f}</td><td>{c.n}</td></tr>"
            for c in self.comparisons
        )
        return (
            f"<div class='dspex-comparisons'><b>vs {html.escape(self.baseline)}</b> "
            f"({html.escape(self.correction)} adjusted)<table><tr><th>treatment</th><th>difference</th>"
            f"<th>CI</th><th>p</th><th>adjusted p</th><th>test</th><th>effect</th><th>n</th></tr>{rows}</table></div>"
        )


_CORRECTIONS = {"holm": holm, "bh": benjamini_hochberg, "benjamini-hochberg": benjamini_hochberg}


def compare_many(
    results: Sequence[EvaluationResult],
    *,
    baseline: EvaluationResult | str,
    correction: str = "holm",
    method: str = "auto",
    confidence: float = 0.95,
    seed: int | None = None,
) -> ComparisonSet:
    """Compare every result with ``baseline`` and adjust the p-values (Holm, or Benjamini-Hochberg with "bh")."""
    _check_results(*results)
    if correction not in _CORRECTIONS:
        raise ExecutionError(f"correction must be one of {sorted(_CORRECTIONS)}, got {correction!r}")
    if isinstance(baseline, str):
        matches = [result for result in results if result.name == baseline]
        if len(matches) != 1:
            raise ExecutionError(
                f"baseline {baseline!r} must name exactly one result; names: {[r.name for r in results]}"
            )
        baseline = matches[0]
    treatments = [result for result in results if result is not baseline]
    if not treatments:
        raise ExecutionError("compare_many needs at least one result besides the baseline")
    comparisons = [
        comparison_of(baseline, treatment, paired=True, method=method, confidence=confidence, seed=seed)
        for treatment in treatments
    ]
    adjusted = _CORRECTIONS[correction](np.array([comparison.p_value for comparison in comparisons]))
    comparisons = [
        replace(comparison, adjusted_p_value=float(value), correction=correction)
        for comparison, value in zip(comparisons, adjusted, strict=True)
    ]
    _journal_comparison(
        f"{len(comparisons)} vs {baseline.name}",
        {
            "baseline": baseline.experiment_id,
            "treatments": [t.experiment_id for t in treatments],
            "correction": correction,
            "method": method,
            "confidence": confidence,
        },
        {"comparisons": [comparison.to_summary() for comparison in comparisons]},
    )
    return ComparisonSet(baseline.name, tuple(comparisons), correction)
