"""The result of an evaluation: trials as data, statistics computed from them."""

from __future__ import annotations

import html
import math
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from dspex_lab.stats import (
    Interval,
    Summary,
    clustered_stderr,
    mean_interval,
    percentiles,
    summarize,
    t_interval,
    variance_components,
)

__all__ = ["EvaluationResult"]


@dataclass(frozen=True, eq=False)
class EvaluationResult:
    """An evaluation's trials and the statistics a researcher reports.

    Errors are counted apart (``n_errors``, ``errors``) and never averaged in:
    ``mean``, ``stderr`` and ``ci`` are over examples with at least one scored
    trial, each example contributing the mean of its scored repeats.
    """

    experiment_id: str | None
    name: str
    status: str
    trials: pd.DataFrame
    program: dict[str, Any] | None = None
    dataset: dict[str, Any] | None = None
    metric: str | None = None
    wall_seconds: float | None = None
    confidence: float = 0.95
    clusters: pd.Series | None = None
    status_detail: str | None = None
    spending: dict[str, Any] | None = None

    # -- per-example scores --------------------------------------------------------------------

    @cached_property
    def example_scores(self) -> pd.Series:
        """Mean score per example id over its scored repeats (examples with no score are absent)."""
        scored = self.trials[self.trials["status"] == "ok"]
        if scored.empty:
            return pd.Series(dtype=float, name="score")
        order = scored.groupby("example_id", sort=False)["example_index"].min().sort_values()
        return scored.groupby("example_id", sort=False)["score"].mean().reindex(order.index).rename("score")

    @cached_property
    def summary(self) -> Summary:
        """Mean, SD, SE and t interval over per-example scores."""
        return summarize(self.example_scores.to_numpy(), confidence=self.confidence)

    @property
    def mean(self) -> float:
        """Mean per-example score."""
        return self.summary.mean

    @property
    def stderr(self) -> float:
        """Standard error of the mean (clustered when the evaluation had a cluster field)."""
        if self.clusters is not None:
            scores = self.example_scores
            return clustered_stderr(scores.to_numpy(), self.clusters.reindex(scores.index).to_numpy())
        return self.summary.stderr

    @cached_property
    def interval(self) -> Interval:
        """The confidence interval with the method used.

        Wilson for 0/1 per-example scores, a t interval otherwise; with clusters, a t interval
        on the clustered SE with (clusters - 1) degrees of freedom.
        """
        scores = self.scores()
        if self.clusters is not None:
            groups = self.clusters.reindex(self.example_scores.index).nunique()
            low, high = t_interval(self.mean, self.stderr, int(groups), confidence=self.confidence)
            return Interval(low, high, "t (clustered)", self.confidence)
        return mean_interval(scores, method="auto", confidence=self.confidence)

    @property
    def ci(self) -> tuple[float, float]:
        """Two-sided confidence interval of the mean (95% by default); see :attr:`interval`."""
        return (self.interval.low, self.interval.high)

    @property
    def ci_method(self) -> str:
        """How :attr:`ci` was computed."""
        return self.interval.method

    @property
    def repeats(self) -> int:
        """Trials per example (the largest repeat index + 1)."""
        return int(self.trials["repeat"].max()) + 1 if len(self.trials) else 0

    @cached_property
    def variance(self) -> dict[str, float]:
        """Within-example (across repeats) and between-example variance of scored trials."""
        scored = self.trials[self.trials["status"] == "ok"]
        if scored.empty:
            return {"within": math.nan, "between": math.nan}
        within, between = variance_components(scored["score"].to_numpy(dtype=float), scored["example_id"].to_numpy())
        return {"within": within, "between": between}

    @property
    def n(self) -> int:
        """Examples with at least one scored trial."""
        return self.summary.n

    @property
    def n_trials(self) -> int:
        """Trials recorded (scored and failed)."""
        return len(self.trials)

    @property
    def n_errors(self) -> int:
        """Trials that failed."""
        return int((self.trials["status"] == "error").sum()) if len(self.trials) else 0

    @property
    def errors(self) -> dict[str, int]:
        """Failed trials counted by error type."""
        failed = self.trials[self.trials["status"] == "error"]
        return dict(Counter(failed["error_type"].fillna("unknown")).most_common())

    @property
    def latency(self) -> dict[str, float]:
        """Trial latency percentiles in seconds (p50, p95, p99) over all trials."""
        return percentiles(self.trials["latency"].to_numpy(dtype=float) if len(self.trials) else [], (50, 95, 99))

    @property
    def tokens(self) -> dict[str, int]:
        """Input and output tokens over all trials."""
        if not len(self.trials):
            return {"input": 0, "output": 0}
        return {
            "input": int(self.trials["input_tokens"].fillna(0).sum()),
            "output": int(self.trials["output_tokens"].fillna(0).sum()),
        }

    @property
    def cost(self) -> float | None:
        """Total cost in USD, or None when some model's price is unknown."""
        if not len(self.trials):
            return 0.0
        costs = self.trials["cost"]
        return None if costs.isna().any() else float(costs.sum())

    @property
    def lm_calls(self) -> int:
        """LM calls over all trials."""
        return int(self.trials["lm_calls"].fillna(0).sum()) if len(self.trials) else 0

    def table(self) -> pd.DataFrame:
        """Return the trials as a DataFrame (one row per trial)."""
        return self.trials.copy()

    def to_summary(self) -> dict[str, Any]:
        """Return the headline numbers as JSON-ready data (what the journal stores)."""

        def number(value: float | None) -> float | None:
            return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)

        return {
            "mean": number(self.mean),
            "stderr": number(self.stderr),
            "sd": number(self.summary.sd),
            "ci": [number(self.ci[0]), number(self.ci[1])],
            "ci_method": self.ci_method,
            "confidence": self.confidence,
            "n": self.n,
            "repeats": self.repeats,
            "variance": {key: number(value) for key, value in self.variance.items()},
            "n_trials": self.n_trials,
            "n_errors": self.n_errors,
            "errors": self.errors,
            "latency": {key: number(value) for key, value in self.latency.items()},
            "tokens": self.tokens,
            "cost": number(self.cost),
            "lm_calls": self.lm_calls,
            "wall_seconds": number(self.wall_seconds),
            "spending": self.spending,
        }

    def __repr__(self) -> str:
        low, high = self.ci
        return (
            f"EvaluationResult({self.name!r}: mean={self.mean:.3f} [{low:.3f}, {high:.3f}] n={self.n} "
            f"errors={self.n_errors} status={self.status!r} id={self.experiment_id!r})"
        )

    def _repr_html_(self) -> str:
        low, high = self.ci
        errors = ", ".join(f"{html.escape(str(kind))}: {count}" for kind, count in self.errors.items()) or "none"
        latency = self.latency
        cost = "unknown" if self.cost is None else f"${self.cost:.4f}"
        experiment = html.escape(str(self.experiment_id))
        rows = [
            (
                "mean score",
                f"<b>{self.mean:.3f}</b> ({self.confidence:.0%} CI {low:.3f} - {high:.3f}, "
                f"{html.escape(self.ci_method)}; SE {self.stderr:.3f})",
            ),
            ("examples scored", f"{self.n} of {self.trials['example_id'].nunique() if len(self.trials) else 0}"),
            ("errors", f"{self.n_errors} ({errors}) — counted apart, not averaged in"),
            ("latency p50 / p95 / p99", " / ".join(f"{latency[k]:.3f} s" for k in ("p50", "p95", "p99"))),
            ("tokens in / out", f"{self.tokens['input']:,} / {self.tokens['output']:,}"),
            ("cost", cost),
            ("status", html.escape(self.status)),
            ("experiment", f"<code>{experiment}</code> — <code>dspex journal trials {experiment}</code>"),
        ]
        body = "".join(f"<tr><th style='text-align:left'>{key}</th><td>{value}</td></tr>" for key, value in rows)
        return f"<div class='dspex-evaluation'><h4>{html.escape(self.name)}</h4><table>{body}</table></div>"

    def scores(self) -> np.ndarray:
        """Return per-example scores as an array (example order)."""
        return self.example_scores.to_numpy(dtype=float)
