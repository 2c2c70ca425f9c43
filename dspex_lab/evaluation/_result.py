"""The result of an evaluation: trials as data, statistics computed from them."""

from __future__ import annotations

import html
import json
import math
import shlex
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from dspex_lab.errors import DspexLabError, JournalError
from dspex_lab.stats import (
    Interval,
    Summary,
    clustered_stderr,
    percentiles,
    score_interval,
    summarize,
    t_interval,
    variance_components,
)
from dspex_lab.trace.redaction import mask_text

if TYPE_CHECKING:
    from dspex_lab.journal import JournalStore
    from dspex_lab.trace import TraceTree

__all__ = ["EvaluationResult", "format_number"]

# The rich HTML of a traced evaluation shows up to this many failed trials, and as many of the lowest-scoring
# ones, each with its span tree cut to _TRACE_LINES lines.
_SHOWN_TRIALS = 10
_TRACE_LINES = 200
_ERROR_CHARACTERS = 300
_CELL = "style='text-align:left;vertical-align:top'"
# What the result says, once, when its repeats could not differ (see EvaluationResult.identical_repeats).
IDENTICAL_REPEATS = (
    "repeats at temperature 0 are identical requests (no LM of the program samples): within-example "
    "variance is not measured"
)
# What the result shows in place of a mean and an interval when no trial produced a score.
NO_SCORE = "no trial scored"


def format_number(value: float, spec: str = ".3f") -> str:
    """Format a mean, interval end or difference, never as ``-0.000`` (a rounded negative zero).

    Examples:
        >>> format_number(-0.0001), format_number(-0.0001, "+.3f"), format_number(-0.25)
        ('0.000', '+0.000', '-0.250')
    """
    text = format(value, spec)
    if text.startswith("-") and not text.strip("-+0.") and any(digit == "0" for digit in text):
        return ("+" if "+" in spec else "") + text[1:]
    return text


def _no_journal() -> JournalStore:
    """Return a new, empty in-memory journal: the store of a result built without one (DuckDB loads when needed)."""
    from dspex_lab.journal import memory_journal

    return memory_journal()


def _journal_option(journal: JournalStore) -> str:
    """Return `` --journal PATH`` for commands about a journal file, or nothing when it is the settings' default."""
    from dspex_lab.config import load_settings

    path = Path(journal.path).resolve()
    try:
        default = Path(load_settings().journal).resolve()
    except DspexLabError:  # unreadable settings: say the path rather than rely on them
        default = None
    return "" if path == default else f" --journal {shlex.quote(str(path))}"


def _gold(labels: dict[str, Any] | None, prediction: Any) -> dict[str, Any] | None:
    """Return an example's gold: its non-input fields the prediction has (else all of them), None if unknown."""
    if labels is None:
        return None
    try:
        predicted = json.loads(prediction) if isinstance(prediction, str) else {}
    except ValueError:
        predicted = {}
    named = {name: value for name, value in labels.items() if isinstance(predicted, dict) and name in predicted}
    return named or labels


@dataclass(frozen=True, eq=False)
class EvaluationResult:
    """An evaluation's trials and the statistics a researcher reports.

    Errors are counted apart (``n_errors``, ``errors``) and never averaged in:
    ``mean``, ``stderr`` and ``ci`` are over examples with at least one scored
    trial, each example contributing the mean of its scored repeats. A trial whose metric raised
    (``error_stage == "metric"``: the program answered, the scoring failed) is a *metric error*,
    counted apart from the program's own failures (``n_metric_errors``, ``metric_errors`` against
    ``n_program_errors``). A run in which no trial was scored has status ``failed`` and no interval.

    ``journal`` is the journal the trials are recorded in (the context's: a file, or the in-memory
    journal of a ``dx.Context(journal=False)``). An evaluation run with ``trace=True`` stored its spans
    there; :meth:`trace` reads a trial's span tree from it, and the rich HTML shows the failed and
    lowest-scoring trials with theirs. The commands the HTML offers (``dspex journal``, ``dspex
    trace``) name a journal file; for an in-memory journal it offers :meth:`trace` and :meth:`table`.

    ``identical_repeats`` is True when the run had several repeats but no LM of the program samples
    (temperature 0, or the lab LM without a temperature): every repeat was the same request, so the
    within-example variance is NaN (not measured) rather than a zero, and the summary and HTML say so.
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
    journal: JournalStore = field(default_factory=_no_journal)
    traced: bool = False
    identical_repeats: bool = False

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
        # The one rule every view shares (dx.stats.score_interval), so the same trials show the same interval.
        return score_interval(scores, confidence=self.confidence)

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
        """Within-example (across repeats) and between-example variance of scored trials.

        ``within`` is NaN when the repeats were identical requests (:attr:`identical_repeats`): their zero
        spread is how the run was configured, not a measurement.
        """
        scored = self.trials[self.trials["status"] == "ok"]
        if scored.empty:
            return {"within": math.nan, "between": math.nan}
        within, between = variance_components(scored["score"].to_numpy(dtype=float), scored["example_id"].to_numpy())
        return {"within": math.nan if self.identical_repeats else within, "between": between}

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
        """Failed trials counted by error type (program and metric errors alike)."""
        failed = self.trials[self.trials["status"] == "error"]
        return dict(Counter(failed["error_type"].fillna("unknown")).most_common())

    @property
    def n_metric_errors(self) -> int:
        """Trials whose program answered but whose metric raised (or returned no finite number)."""
        return int(self._metric_failed.sum()) if len(self.trials) else 0

    @property
    def n_program_errors(self) -> int:
        """Trials that failed before scoring: the program raised, timed out or was cancelled."""
        return self.n_errors - self.n_metric_errors

    @property
    def metric_errors(self) -> dict[str, int]:
        """Metric errors counted by error type."""
        failed = self.trials[self._metric_failed] if len(self.trials) else self.trials
        return dict(Counter(failed["error_type"].fillna("unknown")).most_common()) if len(failed) else {}

    @property
    def _metric_failed(self) -> pd.Series:
        stage = self.trials["error_stage"] if "error_stage" in self.trials else pd.Series(None, index=self.trials.index)
        return (self.trials["status"] == "error") & (stage == "metric")

    @property
    def scored(self) -> bool:
        """Whether at least one trial produced a score (else there is no mean and no interval)."""
        return self.n > 0

    def errors_line(self) -> str:
        """Return the errors in one line, program and metric errors apart (``"none"`` without errors)."""
        if not self.n_errors:
            return "none"
        parts = []
        if self.n_program_errors:
            program = {
                kind: count - self.metric_errors.get(kind, 0)
                for kind, count in self.errors.items()
                if count - self.metric_errors.get(kind, 0)
            }
            parts.append(
                f"program {self.n_program_errors} (" + ", ".join(f"{k} x{v}" for k, v in program.items()) + ")"
            )
        if self.n_metric_errors:
            parts.append(
                f"metric raised {self.n_metric_errors} ("
                + ", ".join(f"{kind} x{count}" for kind, count in self.metric_errors.items())
                + ")"
            )
        return "; ".join(parts)

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
        """Return the trials as a DataFrame (one row per trial), each beside its example's input and gold.

        ``input`` (the example's input fields) and ``gold`` (its fields the prediction also has, else
        all its other fields) are dicts read from the examples stored with the experiment in its
        journal, placed around ``prediction`` so a row reads input, score, prediction, gold; they are
        None where the example was not stored (a dataset past the journal's size limit, or a journal
        that can no longer be read).
        """
        frame = self.trials.copy()
        inputs, labels = self._example_fields()
        at = frame.columns.get_loc("prediction") if "prediction" in frame.columns else len(frame.columns)
        ids = list(frame["example_id"]) if "example_id" in frame.columns else [None] * len(frame)
        predictions = list(frame["prediction"]) if "prediction" in frame.columns else [None] * len(frame)
        frame.insert(at, "input", [inputs.get(example_id) for example_id in ids])
        gold = [
            _gold(labels.get(example_id), prediction) for example_id, prediction in zip(ids, predictions, strict=True)
        ]
        frame.insert(at + 2 if "prediction" in frame.columns else at + 1, "gold", gold)
        return frame

    def _example_fields(self) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        """Return (input fields, gold fields) per example id, from the examples stored with the experiment."""
        if self.experiment_id is None:
            return {}, {}
        try:
            fingerprint = self.journal.experiment(self.experiment_id).get("dataset_fingerprint")
            stored = self.journal.dataset_examples(fingerprint) if fingerprint else []
        except JournalError:  # the journal moved or was deleted since the run: the trials still show
            return {}, {}
        inputs, gold = {}, {}
        for example_id, record in stored:
            names = set(record.get("inputs") or [])
            fields = record.get("fields") or {}
            inputs[example_id] = {name: value for name, value in fields.items() if name in names}
            gold[example_id] = {name: value for name, value in fields.items() if name not in names}
        return inputs, gold

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
            "identical_repeats": self.identical_repeats,
            "variance": {key: number(value) for key, value in self.variance.items()},
            "n_trials": self.n_trials,
            "n_errors": self.n_errors,
            "n_program_errors": self.n_program_errors,
            "n_metric_errors": self.n_metric_errors,
            "errors": self.errors,
            "metric_errors": self.metric_errors,
            "latency": {key: number(value) for key, value in self.latency.items()},
            "tokens": self.tokens,
            "cost": number(self.cost),
            "lm_calls": self.lm_calls,
            "wall_seconds": number(self.wall_seconds),
            "spending": self.spending,
        }

    def score_text(self) -> str:
        """Return the mean with its interval (``0.500 [0.254, 0.746]``), or ``no trial scored``."""
        if not self.scored:
            return NO_SCORE
        low, high = self.ci
        if math.isnan(low) or math.isnan(high):  # one non-0/1 score: a mean without a spread
            return f"{format_number(self.mean)} (no interval from n = {self.n})"
        return f"{format_number(self.mean)} [{format_number(low)}, {format_number(high)}]"

    def __repr__(self) -> str:
        errors = f"errors={self.n_errors}"
        if self.n_metric_errors:
            errors += f" (metric {self.n_metric_errors}, program {self.n_program_errors})"
        return (
            f"EvaluationResult({self.name!r}: mean={self.score_text()} n={self.n} "
            f"{errors} status={self.status!r} id={self.experiment_id!r})"
        )

    def _repr_html_(self) -> str:
        low, high = self.ci
        latency = self.latency
        cost = "unknown" if self.cost is None else f"${self.cost:.4f}"
        experiment = html.escape(str(self.experiment_id))
        if not self.scored:
            score = f"<b>{NO_SCORE}</b>: every trial failed (see the errors below)"
        elif math.isnan(low) or math.isnan(high):
            score = f"<b>{format_number(self.mean)}</b> (no interval from n = {self.n})"
        else:
            score = (
                f"<b>{format_number(self.mean)}</b> ({self.confidence:.0%} CI {format_number(low)} - "
                f"{format_number(high)}, {html.escape(self.ci_method)}; SE {self.stderr:.3f})"
            )
        rows = [
            ("mean score", score),
            ("examples scored", f"{self.n} of {self.trials['example_id'].nunique() if len(self.trials) else 0}"),
            ("errors", f"{self.n_errors} ({html.escape(self.errors_line())}) — counted apart, not averaged in"),
            ("latency p50 / p95 / p99", " / ".join(f"{latency[k]:.3f} s" for k in ("p50", "p95", "p99"))),
            ("tokens in / out", f"{self.tokens['input']:,} / {self.tokens['output']:,}"),
            ("cost", cost),
            ("status", html.escape(self.status)),
            ("experiment", f"<code>{experiment}</code> — {self._trials_command_html()}"),
        ]
        if self.identical_repeats:
            rows.insert(2, ("repeats", f"{self.repeats}: {html.escape(IDENTICAL_REPEATS)}"))
        body = "".join(f"<tr><th style='text-align:left'>{key}</th><td>{value}</td></tr>" for key, value in rows)
        return (
            f"<div class='dspex-evaluation'><h4>{html.escape(self.name)}</h4><table>{body}</table>"
            f"{self._trials_html()}</div>"
        )

    def trace(self, trial_id: str) -> TraceTree:
        """Return one trial's span tree, read from the evaluation's journal.

        Args:
            trial_id: the trial's id (``"<example_id>/r<repeat>"``, the ``trial_id`` column of :meth:`table`).

        Returns:
            The trial's :class:`~dspex_lab.trace.TraceTree`.

        Raises:
            JournalError: the result names no experiment, or the trial has no spans in the journal (it was
                run without ``trace=True``).
        """
        if self.experiment_id is None:
            raise JournalError(
                f"evaluation {self.name!r} names no experiment to read traces of: run it with "
                "dx.evaluate(..., trace=True), or load it with dx.load(experiment_id)"
            )
        return self.journal.trace(self.experiment_id, trial_id)

    def _trials_command_html(self) -> str:
        """Return how to list the trials, as HTML: a ``dspex journal`` command for a file, else where they are."""
        experiment = shlex.quote(str(self.experiment_id))
        if not self.journal.durable:  # no command can reach it from outside this process
            return f"in {html.escape(self.journal.location)}: <code>result.table()</code>"
        return f"<code>{html.escape(f'dspex journal trials {experiment}{_journal_option(self.journal)}')}</code>"

    def _trace_commands(self, trial_id: str | None = None) -> str:
        """Return the commands that open ``trial_id``'s trace (or list the trials): by file, else ``result.trace``."""
        experiment = shlex.quote(str(self.experiment_id))
        if not self.journal.durable:
            return "result.table()" if trial_id is None else f"result.trace({trial_id!r})"
        path = str(self.journal.path)
        if trial_id is None:
            return f"dspex trace {experiment} --journal {shlex.quote(path)}"
        return (
            f"dspex trace {experiment} {shlex.quote(trial_id)} --journal {shlex.quote(path)}\n"
            f"dx.widgets.TraceViewer({path!r}, {str(self.experiment_id)!r}, trial_id={trial_id!r})"
        )

    def _trials_html(self) -> str:
        """Return the failed and lowest-scoring trials, each with its span tree in a ``<details>`` element.

        Everything a trace needs is inlined, so the section works in a notebook and in HTML exported from it
        without a server or a kernel; the commands to open the full trace come with each tree.
        """
        if not self.traced or self.experiment_id is None or not len(self.trials):
            return ""
        trials = self.trials.sort_values(["example_index", "repeat"], kind="stable")
        failed = trials[trials["status"] == "error"]
        scored = trials[trials["status"] == "ok"].sort_values("score", kind="stable")
        groups = [
            ("failed trials", failed.head(_SHOWN_TRIALS), len(failed)),
            ("lowest-scoring trials", scored.head(_SHOWN_TRIALS), len(scored)),
        ]
        shown = [trial_id for _, group, _ in groups for trial_id in group["trial_id"]]
        try:
            trees = self._trace_texts(shown)
            unreadable = None
        except JournalError as error:  # the journal moved or was deleted since the run: still show the trials
            trees, unreadable = {}, str(error)
        listing = html.escape(self._trace_commands())
        parts = [f"<h5>Trials and their traces</h5><p>all trials: <code>{listing}</code></p>"]
        if unreadable is not None:
            parts.append(f"<p>traces unavailable: {html.escape(mask_text(unreadable))}</p>")
        for title, group, total in groups:
            if not total:
                continue
            parts.append(f"<h5>{title} ({len(group)} of {total} shown)</h5>")
            rows = "".join(self._trial_row(record, trees) for record in group.to_dict("records"))
            parts.append(
                "<table class='dspex-trials'><tr><th>trial</th><th>status</th><th>score</th><th>error</th>"
                f"<th style='text-align:left'>trace</th></tr>{rows}</table>"
            )
            if total > len(group):
                parts.append(f"<p>{total - len(group)} more {title}: {self._trials_command_html()}</p>")
        return "".join(parts)

    def _trial_row(self, record: dict[str, Any], trees: dict[str, tuple[int, str]]) -> str:
        trial_id = str(record["trial_id"])
        score = record.get("score")
        score_text = "—" if score is None or (isinstance(score, float) and math.isnan(score)) else f"{score:.3f}"
        error = ""
        if record.get("status") == "error":
            # Masked before it is cut short, so a cut cannot hide a key from the pattern that finds it.
            message = mask_text(str(record.get("error_message") or ""))
            if len(message) > _ERROR_CHARACTERS:
                message = message[:_ERROR_CHARACTERS] + "…"
            error = f"{record.get('error_type') or 'unknown'}: {message}"
        if trial_id in trees:
            spans, text = trees[trial_id]
            trace = (
                f"<details><summary>{spans} spans</summary><pre>{html.escape(text)}</pre>"
                f"<pre>{html.escape(self._trace_commands(trial_id))}</pre></details>"
            )
        else:
            trace = "no spans stored"
        cells = [f"<code>{html.escape(trial_id)}</code>", html.escape(str(record.get("status"))), score_text]
        cells += [html.escape(error), trace]
        return "<tr>" + "".join(f"<td {_CELL}>{cell}</td>" for cell in cells) + "</tr>"

    def _trace_texts(self, trial_ids: list[str]) -> dict[str, tuple[int, str]]:
        """Return (span count, rendered tree) per trial, reading the spans of all of them in one query."""
        from dspex_lab.trace import Span, TraceTree

        if not trial_ids:
            return {}
        spans: dict[str, list[Span]] = {}
        for span in self.journal.spans(self.experiment_id, trial_ids):
            spans.setdefault(span.trace_id, []).append(span)
        texts = {}
        for trial_id, trial_spans in spans.items():
            lines = TraceTree.from_spans(trial_spans).to_text(width=110).splitlines()
            if len(lines) > _TRACE_LINES:
                lines = [*lines[:_TRACE_LINES], f"… {len(lines) - _TRACE_LINES} more lines: open the full trace below"]
            texts[trial_id] = (len(trial_spans), "\n".join(lines))
        return texts

    def scores(self) -> np.ndarray:
        """Return per-example scores as an array (example order)."""
        return self.example_scores.to_numpy(dtype=float)
