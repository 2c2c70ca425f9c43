"""The result of an optimization run, built from the run's journal rows.

Every number here comes from three kinds of rows: the run's steps, its candidates
and the trials of its evaluations. :meth:`OptimizationResult.from_journal` reads them
back, so a result can be rebuilt in another kernel, or another day, and equals the
one :func:`dx.optimize <dspex_lab.optimization>` returned.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from dspex_lab.errors import ExecutionError, JournalError, OptimizerError
from dspex_lab.evaluation import Comparison, EvaluationResult, comparison_of
from dspex_lab.journal import JournalStore, trials_frame
from dspex_lab.optimization._evaluator import evaluation_id
from dspex_lab.program import Program
from dspex_lab.stats import one_sided_p_value
from dspex_lab.trace.redaction import mask_text

__all__ = ["CANDIDATE_COLUMNS", "STEP_COLUMNS", "Confirmation", "OptimizationResult", "best_candidate_id"]

#: The label of every number measured on the data that chose the winner.
OPTIMISTIC = "optimistic: measured on the data that chose it"

STEP_COLUMNS = (
    "step", "status", "incumbent_id", "accepted_id", "best_mean", "best_ci_low", "best_ci_high",
    "lm_calls", "tokens", "cost", "detail",
)  # fmt: skip
CANDIDATE_COLUMNS = (
    "candidate_id", "step", "parent_id", "strategy", "rationale", "values", "screen_mean",
    "incumbent_screen_mean", "val_mean", "val_ci_low", "val_ci_high", "p_value", "p_adjusted", "accepted",
)  # fmt: skip


def steps_frame(step_rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Return the steps table (one row per step, step 0 the baseline) from journal step rows."""
    frame = pd.DataFrame([{column: row.get(column) for column in STEP_COLUMNS} for row in step_rows])
    if frame.empty:
        return pd.DataFrame(columns=list(STEP_COLUMNS))
    for column in ("best_mean", "best_ci_low", "best_ci_high", "cost"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame.sort_values("step", kind="stable").reset_index(drop=True)


def candidates_frame(
    candidate_rows: Sequence[Mapping[str, Any]], step_rows: Sequence[Mapping[str, Any]]
) -> pd.DataFrame:
    """Return the candidates table from journal candidate rows and the steps' screening and evaluations."""
    screening: dict[str, Mapping[str, Any]] = {}
    evaluations: dict[str, Mapping[str, Any]] = {}
    accepted = {row.get("accepted_id") for row in step_rows if row.get("accepted_id")}
    for row in step_rows:
        for item in row.get("screening") or []:
            screening[item["candidate"]] = item
        for item in row.get("evaluations") or []:
            evaluations[item["candidate"]] = item
    baseline_step = next((row for row in step_rows if row.get("step") == 0), None)
    records = []
    for row in sorted(candidate_rows, key=lambda row: (int(row["step"]), _number_of(row["candidate_id"]))):
        key = row["candidate_id"]
        screen = screening.get(key, {})
        evaluation = evaluations.get(key, {})
        if row.get("parent_id") is None and baseline_step is not None:
            evaluation = {
                "mean": baseline_step.get("best_mean"),
                "ci_low": baseline_step.get("best_ci_low"),
                "ci_high": baseline_step.get("best_ci_high"),
            }
        records.append(
            {
                "candidate_id": key,
                "step": int(row["step"]),
                "parent_id": row.get("parent_id"),
                "strategy": row["strategy"],
                "rationale": row.get("rationale"),
                "values": row.get("values") or {},
                "screen_mean": _float(screen.get("mean")),
                "incumbent_screen_mean": _float(screen.get("incumbent_mean")),
                "val_mean": _float(evaluation.get("mean")),
                "val_ci_low": _float(evaluation.get("ci_low")),
                "val_ci_high": _float(evaluation.get("ci_high")),
                "p_value": _float(evaluation.get("p_value")),
                "p_adjusted": _float(evaluation.get("p_adjusted")),
                "accepted": key in accepted,
            }
        )
    if not records:
        return pd.DataFrame(columns=list(CANDIDATE_COLUMNS))
    return pd.DataFrame(records, columns=list(CANDIDATE_COLUMNS))


def best_candidate_id(step_rows: Sequence[Mapping[str, Any]]) -> str:
    """Return the incumbent after the last finished step (the run's best), from step rows in step order."""
    finished = [row for row in step_rows if row.get("status") != "running"]
    return str((finished or step_rows)[-1]["incumbent_id"])


@dataclass(frozen=True)
class Confirmation:
    """The headline test of an optimization: the best against the baseline on data the optimizer never saw.

    The validation set chose the best (out of many candidates, over many steps), so a test of
    the best against the baseline on it is biased towards a gain. The confirmation set is held
    out before the search begins: the ``testset`` given to ``dx.optimize``, or a seeded part of
    the valset. One paired test (``alternative="greater"``: one-sided, "the best is better") at
    ``alpha`` runs there once per run, so a run claims a gain that is not there with probability
    at most ``alpha``.

    Attributes:
        status: ``confirmed`` (a significant gain, and with an objective every guardrail met there),
            ``infeasible`` (a significant gain, but a guardrail not shown to hold there), ``not significant``,
            ``unchanged`` (the optimizer kept the baseline: nothing to test), ``not run`` (no confirmation set),
            ``stopped`` (the budget ran out during it) or ``incomplete`` (no example scored by both).
        source: ``testset``, ``valset`` (a split carved from it) or None.
        n: examples in the confirmation set.
        alpha: the significance level (the optimizer's).
        baseline: the baseline's evaluation on the confirmation set (None when not evaluated).
        best: the best's evaluation on the confirmation set.
        comparison: the paired comparison of ``best`` against ``baseline`` (its ``p_value`` is
            two-sided; the decision uses :attr:`p_value`).
        p_value: the one-sided p of "the best is better" (NaN without a test).
        detail: why there is no test, when there is none.
        settings: how the confirmation set was made (fraction, seed, size), as recorded.
        guardrails: with an objective, the guardrail checks on the confirmation set, candidate id ->
            checks as recorded (see :class:`~dspex_lab.optimization._objective.GuardrailCheck`); a
            significant gain whose best does not meet every guardrail there is ``infeasible``, not confirmed.
    """

    status: str
    source: str | None
    n: int
    alpha: float
    baseline: EvaluationResult | None = None
    best: EvaluationResult | None = None
    comparison: Comparison | None = None
    p_value: float = math.nan
    detail: str | None = None
    settings: Mapping[str, Any] | None = None
    guardrails: Mapping[str, Sequence[Mapping[str, Any]]] | None = None

    @property
    def significant(self) -> bool:
        """Whether the held-out test supports a gain (the only claim an optimization makes)."""
        return self.status == "confirmed"

    def where(self) -> str:
        """Say, in words, where the confirmation examples come from."""
        settings = self.settings or {}
        if self.source == "testset":
            return f"{self.n} held-out examples (the testset)"
        if self.source == "valset":
            fraction = settings.get("fraction")
            share = f"{fraction:.0%} of the valset" if isinstance(fraction, (int, float)) else "part of the valset"
            return f"{self.n} held-out examples ({share}, split off with seed {settings.get('seed')} before the search)"
        return "no held-out examples"

    def headline(self, best_id: str) -> str:
        """Return the one sentence every view prints about the run's result (with an objective, its guardrails too)."""
        from dspex_lab.optimization._objective import held_out_sentence

        return self._gain_headline(best_id) + held_out_sentence(self.guardrails, best_id)

    def _gain_headline(self, best_id: str) -> str:
        if self.status == "unchanged":
            return "The optimizer kept the baseline: no change, so nothing is claimed."
        if self.status == "not run":
            return (
                f"{best_id} was not tested on held-out data ({self.detail or 'no confirmation set'}): "
                "nothing is claimed."
            )
        if self.status in ("stopped", "incomplete") or self.comparison is None:
            return f"{best_id} was not confirmed ({self.detail or self.status}): nothing is claimed."
        comparison = self.comparison
        low, high = comparison.ci
        numbers = (
            f"{comparison.difference:+.3f} [{low:+.3f}, {high:+.3f}], one-sided p = {self.p_value:.3g} "
            f"({comparison.test}, n = {comparison.n})"
        )
        if self.significant or self.status == "infeasible":
            return f"{best_id} beats the baseline on {self.where()}: {numbers} < alpha = {self.alpha:g}."
        return (
            f"{best_id} is not significantly better than the baseline on {self.where()}: {numbers}, "
            f"not below alpha = {self.alpha:g}; no gain is claimed."
        )

    def to_summary(self) -> dict[str, Any]:
        """Return the confirmation as JSON values."""
        summary: dict[str, Any] = {
            "status": self.status,
            "significant": self.significant,
            "source": self.source,
            "n": self.n,
            "alpha": self.alpha,
            "alternative": "greater",
            "p_value": _json_number(self.p_value),
            "detail": self.detail,
        }
        if self.comparison is not None:
            summary["comparison"] = self.comparison.to_summary()
        if self.guardrails is not None:
            summary["guardrails"] = {key: [dict(check) for check in checks] for key, checks in self.guardrails.items()}
        return summary


def _number_of(candidate_id: str) -> tuple[int, str]:
    # c2 before c10; ids of other shapes (DSPy's optimizers may name theirs) after, by text.
    digits = candidate_id.lstrip("c")
    return (int(digits), "") if digits.isdigit() else (1 << 30, candidate_id)


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


@dataclass(frozen=True, eq=False)
class OptimizationResult:
    """What an optimization run found, and everything it decided on the way.

    Attributes:
        run_id: the run's id in the journal.
        name: the run's name.
        optimizer: ``simba-c``, ``simba``, ``mipro``, ``gepa`` or ``bootstrap``.
        status: ``finished``, ``stopped`` (a budget) or ``interrupted``.
        status_detail: why it ended.
        best: the best configuration found (the accepted incumbent), a :class:`~dspex_lab.Program`.
        best_id: its candidate id.
        baseline: the starting program's evaluation on the validation set (the selection part).
        best_result: the best configuration's evaluation on the validation set: optimistic, since
            that is the data that chose it.
        comparison: the headline: the paired comparison of the best against the baseline on the
            confirmation set, data the optimizer never saw (None when the baseline stayed best or
            there was no confirmation); see ``confirmation`` for its one-sided p and verdict.
        confirmation: the held-out test, its verdict and where its data came from.
        steps: one row per step (see :data:`STEP_COLUMNS`).
        candidates: one row per candidate (see :data:`CANDIDATE_COLUMNS`).
        spending: LM calls, tokens, cost and trials of the whole run.
        config: the optimizer's hyperparameters and the run's settings as recorded.
        journal: the journal it is stored in (a file, or the in-memory journal of the process that ran it).
        read_trials: reads an evaluation's trials by experiment id (the journal's; a run whose journal
            refused its trials reads its in-memory rows); None: the journal's.
    """

    run_id: str
    name: str
    optimizer: str
    status: str
    status_detail: str | None
    best: Program
    best_id: str
    baseline: EvaluationResult
    best_result: EvaluationResult
    comparison: Comparison | None
    steps: pd.DataFrame
    candidates: pd.DataFrame
    spending: dict[str, Any]
    config: dict[str, Any]
    journal: JournalStore
    confirmation: Confirmation | None = None
    read_trials: Callable[[str], pd.DataFrame] | None = field(default=None, repr=False)

    # -- reading ---------------------------------------------------------------------------------

    @property
    def improvement(self) -> float:
        """The best configuration's validation mean minus the baseline's (optimistic: the valset chose it)."""
        return self.best_result.mean - self.baseline.mean

    @property
    def settings(self) -> dict[str, Any]:
        """The optimizer's settings this run used, defaults included (as recorded with the run)."""
        return dict(self.config.get("optimizer_config") or {})

    @property
    def headline(self) -> str:
        """The one sentence about the result that every view prints (the held-out test's verdict)."""
        confirmation = self.confirmation or Confirmation("not run", None, 0, math.nan, detail="not recorded")
        return confirmation.headline(self.best_id)

    @property
    def optimistic(self) -> str:
        """The validation means of the best and the baseline, labelled as measured on the selection data."""
        if self.best_result is self.baseline:
            return f"validation {self.baseline.mean:.3f} (n = {self.baseline.n}), the baseline's"
        return (
            f"validation {self.best_result.mean:.3f} vs baseline {self.baseline.mean:.3f} "
            f"({self.improvement:+.3f}, n = {self.best_result.n}; {OPTIMISTIC})"
        )

    def lineage(self, candidate_id: str | None = None) -> list[str]:
        """Return the chain of candidate ids from the baseline to ``candidate_id`` (default: the best)."""
        parents = dict(zip(self.candidates["candidate_id"], self.candidates["parent_id"], strict=True))
        current: str | None = candidate_id or self.best_id
        if current not in parents:
            raise KeyError(f"no candidate {current!r}; candidates: {', '.join(parents)}")
        chain: list[str] = []
        while current is not None and current not in chain:
            chain.append(current)
            parent = parents.get(current)
            current = None if parent is None or (isinstance(parent, float) and math.isnan(parent)) else parent
        return chain[::-1]

    def why(self, candidate_id: str) -> str:
        """Return, in words, why a candidate exists and what became of it."""
        rows = self.candidates[self.candidates["candidate_id"] == candidate_id]
        if rows.empty:
            raise KeyError(f"no candidate {candidate_id!r}")
        row = rows.iloc[0]
        parts = [
            f"{candidate_id} ({row['strategy']}, step {row['step']}, parent {row['parent_id']}): {row['rationale']}"
        ]
        if not math.isnan(row["screen_mean"]):
            parts.append(f"screened {row['screen_mean']:.3f} vs incumbent {row['incumbent_screen_mean']:.3f}")
        if not math.isnan(row["val_mean"]):
            parts.append(
                f"validation {row['val_mean']:.3f} [{row['val_ci_low']:.3f}, {row['val_ci_high']:.3f}]"
                + (f", p={row['p_value']:.3g} (Holm {row['p_adjusted']:.3g})" if not math.isnan(row["p_value"]) else "")
            )
        parts.append("accepted" if row["accepted"] else "not accepted")
        return "; ".join(parts)

    def importance(
        self, *, confidence: float = 0.95, n_bootstrap: int = 2000, seed: int = 0, method: str = "effects"
    ) -> pd.DataFrame:
        """Return which variables mattered: each variable's effect on the metric, with its interval.

        ``method="optuna"`` returns Optuna's importance instead (``get_param_importances`` with Optuna's
        default evaluator) over the typed variables of the fully validated candidates, to read beside this
        one: see :func:`~dspex_lab.optimization._optuna.optuna_importance`.

        Estimated from every configuration the run scored and its per-example scores (screening and
        validation; for DSPy's optimizers also the configurations their compile scored): least squares
        with one fixed effect per example, intervals by a cluster bootstrap over examples (seeded).
        One row per contrast (a numeric variable over the range tried, a choice's other value, a
        bool, rules added, demos), with an optuna-style share of the fitted scores' variance. A
        variable the candidates never changed, or never changed apart from another, is *not
        estimable*: its effect is NaN, never 0. See :mod:`dspex_lab.optimization._importance` and
        docs/optimize.md, "Which variables mattered".
        """
        if method == "optuna":
            from dspex_lab.optimization._optuna import optuna_importance

            return optuna_importance(self)
        if method != "effects":
            raise OptimizerError(f"importance(method={method!r}): choose 'effects' (the default) or 'optuna'")
        from dspex_lab.optimization._importance import run_importance

        return run_importance(self.journal, self.run_id, confidence=confidence, n_bootstrap=n_bootstrap, seed=seed)

    def pareto(self) -> pd.DataFrame:
        """Return quality vs cost per example of every candidate evaluated on the validation set, the front marked.

        One row per candidate (the baseline included; columns
        :data:`~dspex_lab.optimization._pareto.PARETO_COLUMNS`): its validation mean with the score
        interval, its mean cost per example in US dollars with a t interval, its p95 latency, and
        ``on_front`` (no other candidate scores at least as well for at most its cost); cheapest
        first. Computed from the journaled trials, so a result read back from the journal has the
        same front. Validation means are selection data (optimistic for the ones the run kept).
        """
        from dspex_lab.optimization._pareto import pareto_points

        reader = self.read_trials or self.journal.trials
        return pareto_points(self.candidates, reader, run_id=self.run_id, best_id=self.best_id)

    def pareto_plot(self) -> Any:
        """Return the quality-vs-cost plot of :meth:`pareto` (holoviews; needs the ``dashboard`` extra)."""
        from dspex_lab.optimization._plot import pareto_plot

        return pareto_plot(self.pareto(), title=f"{self.name}: quality vs cost per example (validation set)")

    def plot(self) -> Any:
        """Return the convergence plot (holoviews; needs the ``dashboard`` extra)."""
        from dspex_lab.optimization._plot import convergence_plot

        return convergence_plot(self.steps, self.candidates, title=f"{self.name} ({self.optimizer})")

    def to_summary(self) -> dict[str, Any]:
        """Return the headline numbers as JSON values."""
        summary: dict[str, Any] = {
            "run_id": self.run_id,
            "optimizer": self.optimizer,
            "status": self.status,
            "status_detail": self.status_detail,
            "best_id": self.best_id,
            "headline": self.headline,
            "selection": {
                "note": OPTIMISTIC,
                "baseline_mean": _json_number(self.baseline.mean),
                "best_mean": _json_number(self.best_result.mean),
                "best_ci": [_json_number(value) for value in self.best_result.ci],
                "n": self.best_result.n,
            },
            "steps": int(len(self.steps) - 1) if len(self.steps) else 0,
            "candidates": len(self.candidates),
            **self.spending,
        }
        if self.confirmation is not None:
            summary["confirmation"] = self.confirmation.to_summary()
        return summary

    def __repr__(self) -> str:
        return (
            f"OptimizationResult({self.optimizer} {self.status}: {self.headline} {self.optimistic.capitalize()}. "
            f"{len(self.candidates)} candidates, {self.spending.get('lm_calls', 0):,} LM calls)"
        )

    def _repr_html_(self) -> str:
        escape = html.escape
        low, high = self.best_result.ci
        base_low, base_high = self.baseline.ci
        lines = [
            f"<div class='dspex-optimization'><b>{escape(self.name)}</b> — {escape(self.optimizer)}, "
            f"{escape(self.status)}{': ' + escape(self.status_detail) if self.status_detail else ''}",
            f"<p><b>{escape(self.headline)}</b></p>",
            "<table>",
            "<tr><th></th><th style='text-align:left'>validation mean</th><th style='text-align:left'>95% CI</th>"
            "<th style='text-align:left'>n</th></tr>",
            f"<tr><td>baseline</td><td>{self.baseline.mean:.3f}</td><td>[{base_low:.3f}, {base_high:.3f}]</td>"
            f"<td>{self.baseline.n}</td></tr>",
            f"<tr><td>best ({escape(self.best_id)})</td><td>{self.best_result.mean:.3f}</td>"
            f"<td>[{low:.3f}, {high:.3f}]</td><td>{self.best_result.n}</td></tr>",
            "</table>",
            f"<p><i>The validation means are selection data ({escape(OPTIMISTIC)}) for the best; the claim "
            "above is the held-out test's.</i></p>",
        ]
        confirmation = self.confirmation
        if confirmation is not None and confirmation.baseline is not None and confirmation.best is not None:
            rows = (("baseline", confirmation.baseline), (f"best ({self.best_id})", confirmation.best))
            lines.append(
                "<table><tr><th></th><th style='text-align:left'>held-out mean</th>"
                "<th style='text-align:left'>95% CI</th><th style='text-align:left'>n</th></tr>"
            )
            for label, evaluation in rows:
                low_, high_ = evaluation.ci
                lines.append(
                    f"<tr><td>{escape(label)}</td><td>{evaluation.mean:.3f}</td>"
                    f"<td>[{low_:.3f}, {high_:.3f}]</td><td>{evaluation.n}</td></tr>"
                )
            lines.append("</table>")
        cost = self.spending.get("cost")
        lines.append(
            f"<p>{len(self.steps) - 1 if len(self.steps) else 0} steps, {len(self.candidates)} candidates, "
            f"{self.spending.get('trials', 0):,} trials, {self.spending.get('lm_calls', 0):,} LM calls, "
            f"{self.spending.get('tokens', 0):,} tokens, "
            + (f"${cost:.4f}" if cost is not None else "cost unknown (an unpriced model)")
            + "</p>"
        )
        lines.append(f"<p>Lineage: {' → '.join(escape(item) for item in self.lineage())}</p>")
        lines.append(self._pareto_html())
        lines.append("<table><tr><th>step</th><th>decision</th><th>best so far</th></tr>")
        for row in self.steps.itertuples():
            best = "" if row.best_mean is None or pd.isna(row.best_mean) else f"{row.best_mean:.3f}"
            lines.append(
                f"<tr><td>{row.step}</td><td style='text-align:left'>{escape(mask_text(str(row.detail or '')))}</td>"
                f"<td>{best}</td></tr>"
            )
        lines.append("</table>")
        lines.append(self._importance_html())
        if self.run_id:
            lines.append(
                f"<p>Journal: run <code>{escape(self.run_id)}</code> — "
                f"<code>dspex trace {escape(self.run_id)} step-1</code> shows why each candidate of step 1 exists.</p>"
            )
        lines.append("</div>")
        return "\n".join(lines)

    def _importance_html(self) -> str:
        from dspex_lab.optimization._importance import importance_html, importance_or_reason

        frame, reason = importance_or_reason(self.importance)
        if frame is None:
            return f"<p><i>{html.escape(str(reason))}</i></p>"
        return "<p><b>Which variables mattered</b></p>\n" + importance_html(frame)

    def _pareto_html(self) -> str:
        """Return the summary's row of the Pareto front: each front candidate's validation mean and cost per example."""
        points = self.pareto()
        front = points[points["on_front"].astype(bool)]
        if front.empty:
            return "<p>Pareto front (quality vs cost per example): none, the candidates' cost is unknown.</p>"
        items = ", ".join(
            f"{html.escape(str(row.candidate_id))}{' (best)' if row.best else ''} {row.quality:.3f} at ${row.cost:.3g}"
            for row in front.itertuples()
        )
        return (
            f"<p>Pareto front (validation mean vs cost per example, {len(front)} of {len(points)} candidates "
            f"evaluated; <code>run.pareto()</code>, <code>run.pareto_plot()</code>): {items}</p>"
        )

    # -- rebuilding ------------------------------------------------------------------------------

    @classmethod
    def from_journal(cls, journal: JournalStore, run_id: str) -> OptimizationResult:
        """Rebuild a run's result from its journal alone (an in-memory journal: in the process that ran it).

        Raises:
            JournalError: there is no optimization run ``run_id`` in the journal.
        """
        run = journal.experiment(run_id)
        if run.get("kind") != "optimization":
            raise JournalError(f"experiment {run_id} is a {run.get('kind')}, not an optimization run")
        step_rows = journal.step_rows(run_id)
        candidate_rows = journal.candidate_rows(run_id)
        if not step_rows or not candidate_rows:
            raise JournalError(f"optimization run {run_id} has no finished baseline step in {journal.location}")

        def trials(experiment_id: str) -> pd.DataFrame:
            return journal.trials(experiment_id)

        summary = run.get("summary") or {}
        return build_result(
            run_id=run_id,
            name=run["name"],
            config=run.get("config") or {},
            status=summary.get("status") or run["status"],
            status_detail=summary.get("status_detail") or run.get("status_detail"),
            step_rows=step_rows,
            candidate_rows=candidate_rows,
            trials=trials,
            spending=summary.get("spending") or _spending_from_steps(step_rows),
            journal=journal,
            confirmation=summary.get("confirmation"),
        )


def _spending_from_steps(step_rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    last = step_rows[-1]
    return {"lm_calls": last.get("lm_calls") or 0, "tokens": last.get("tokens") or 0, "cost": last.get("cost")}


def _json_number(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def build_result(
    *,
    run_id: str,
    name: str,
    config: dict[str, Any],
    status: str,
    status_detail: str | None,
    step_rows: Sequence[Mapping[str, Any]],
    candidate_rows: Sequence[Mapping[str, Any]],
    trials: Callable[[str], pd.DataFrame],
    spending: dict[str, Any],
    journal: JournalStore,
    confirmation: Mapping[str, Any] | None = None,
) -> OptimizationResult:
    """Assemble an :class:`OptimizationResult` from step rows, candidate rows and evaluation trials.

    ``confirmation`` is what the run recorded about its confirmation (``{"status": "evaluated"}``
    once both evaluations ran); the held-out test itself is computed here, from their trials.
    """
    steps = steps_frame(step_rows)
    candidates = candidates_frame(candidate_rows, step_rows)
    best_id = best_candidate_id(step_rows)
    specs = {row["candidate_id"]: row for row in candidate_rows}
    baseline_id = next(row["candidate_id"] for row in candidate_rows if row.get("parent_id") is None)
    val_dataset = config.get("valset")

    def evaluation(candidate_id: str, phase: str = "val", dataset: Any = val_dataset) -> EvaluationResult:
        experiment_id = evaluation_id(run_id, candidate_id, phase)
        return EvaluationResult(
            experiment_id=experiment_id,
            name=f"{name} {candidate_id}" + (f" ({phase})" if phase != "val" else ""),
            status="finished",
            trials=trials(experiment_id),
            program=specs[candidate_id]["program_spec"],
            dataset=dataset,
            metric=config.get("metric"),
            journal=journal,
        )

    baseline = evaluation(baseline_id)
    best_result = evaluation(best_id) if best_id != baseline_id else baseline
    held_out = _confirm(config, confirmation, best_id, baseline_id, evaluation)
    return OptimizationResult(
        run_id=run_id,
        name=name,
        optimizer=str(config.get("optimizer", "simba-c")),
        status=status,
        status_detail=status_detail,
        best=Program.from_dict(specs[best_id]["program_spec"]),
        best_id=best_id,
        baseline=baseline,
        best_result=best_result,
        comparison=held_out.comparison,
        steps=steps,
        candidates=candidates,
        spending=dict(spending),
        config=config,
        journal=journal,
        confirmation=held_out,
        read_trials=trials,
    )


def _confirm(
    config: Mapping[str, Any],
    recorded: Mapping[str, Any] | None,
    best_id: str,
    baseline_id: str,
    evaluation: Callable[..., EvaluationResult],
) -> Confirmation:
    """Return the held-out test of the best against the baseline, from the confirmation trials."""
    settings = config.get("confirmation")
    if not isinstance(settings, Mapping):
        # A run journaled before confirmations existed: its numbers are all selection data.
        return Confirmation("not run", None, 0, math.nan, detail="the run recorded no confirmation set")
    alpha = float(settings.get("alpha") or 0.05)
    source, n = settings.get("source"), int(settings.get("n") or 0)

    def verdict(status: str, detail: str | None = None, **found: Any) -> Confirmation:
        return Confirmation(status, source, n, alpha, detail=detail, settings=settings, **found)

    if best_id == baseline_id:
        return verdict("unchanged")
    if source is None:
        return verdict("not run", "confirm_fraction=0 and no testset")
    state = (recorded or {}).get("status")
    if state == "stopped":
        return verdict("stopped", str((recorded or {}).get("detail") or "the budget ran out"))
    if state != "evaluated":
        return verdict("not run", "the run ended before its confirmation")
    dataset = settings.get("testset")
    baseline = evaluation(baseline_id, "confirm", dataset)
    best = evaluation(best_id, "confirm", dataset)
    test = str(settings.get("test") or "auto")
    try:
        comparison = comparison_of(baseline, best, paired=True, method=test, confidence=0.95, seed=None)
    except ExecutionError as error:
        return verdict("incomplete", str(error), baseline=baseline, best=best)
    p_value = one_sided_p_value(comparison.result)  # type: ignore[arg-type]
    significant = math.isfinite(p_value) and p_value < alpha and comparison.difference > 0
    # With an objective: the guardrails as checked on the confirmation set when the run ended (recorded there).
    guardrails = (recorded or {}).get("guardrails")
    feasible = guardrails is None or all(check.get("holds") for check in guardrails.get(best_id, ()))
    return verdict(
        ("confirmed" if feasible else "infeasible") if significant else "not significant",
        baseline=baseline,
        best=best,
        comparison=comparison,
        p_value=p_value,
        guardrails=guardrails,
    )


def memory_trials(rows_by_experiment: Mapping[str, Sequence[Mapping[str, Any]]]) -> Callable[[str], pd.DataFrame]:
    """Return a trials reader over in-memory rows (a run whose journal refused its trials)."""

    def read(experiment_id: str) -> pd.DataFrame:
        rows = [dict(row) for row in rows_by_experiment.get(experiment_id, ())]
        frame = trials_frame(rows, experiment_id=None)
        return frame.sort_values(["example_index", "repeat"], kind="stable").reset_index(drop=True)

    return read
