"""``TraceViewer``: browse an experiment's trials and each trial's span tree in a notebook."""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple

from dspex_lab.errors import JournalError, MissingDependencyError
from dspex_lab.journal import TRIAL_ORDERS, JournalStore
from dspex_lab.notebook._trace_data import (
    ExampleFields,
    Prices,
    SpanSearch,
    count,
    lm_columns,
    number,
    shorten,
    span_detail,
)
from dspex_lab.notebook._widgets_common import front_end_file
from dspex_lab.session import journal_store
from dspex_lab.trace import Span
from dspex_lab.trace.redaction import mask_text

try:
    import anywidget
    import traitlets
except ImportError as error:  # pragma: no cover - exercised only without the notebook extra
    raise MissingDependencyError("anywidget", "notebook") from error

__all__ = ["TraceViewer"]

# The journal orders the trial list (failed first, lowest score first, or example order).
_SORTS = TRIAL_ORDERS

# A search opens the ancestors of this many matches at most: a common word can match thousands of spans, and
# opening all their ancestors would draw most of the trial. The other matches are still marked.
_OPENED_MATCHES = 50

# The trial columns the trial list shows (and the header sums).
_TRIAL_COLUMNS = (
    "trial_id",
    "example_id",
    "prediction",
    "status",
    "score",
    "error_type",
    "error_message",
    "latency",
    "input_tokens",
    "output_tokens",
    "cost",
    "unpriced_models",
    "attempts",
)

# An error's message goes to the front end as a tooltip: its first lines, not a whole provider's essay.
_ERROR_TEXT_CHARACTERS = 500


class _SpanRow(NamedTuple):
    """A span as read for the viewer: its attributes stay the stored JSON text until the span is selected."""

    span_id: str
    parent_id: str | None
    kind: str
    name: str
    start_ns: int
    end_ns: int
    status: str
    error: str | None
    attributes: str

    def node(self, trial_start_ns: int) -> dict[str, Any]:
        node: dict[str, Any] = {
            "id": self.span_id,
            "parent": self.parent_id,
            "kind": self.kind,
            "name": self.name,
            "status": self.status,
            "duration_ms": round((self.end_ns - self.start_ns) / 1e6, 3),
            "start_ms": round((self.start_ns - trial_start_ns) / 1e6, 3),
        }
        if self.error and self.status != "ok":
            node["error_type"] = _error_type(self.error)
            node["error"] = _error_text(self.error)
        return node

    def haystack(self) -> str:
        return f"{self.kind} {self.name} {self.error or ''} {self.attributes}".casefold()


def _error_type(error: str) -> str:
    """Return the exception's class name from ``"Type: message"``, else the message's first line."""
    head, separator, _ = error.partition(":")
    parts = head.strip().split(".")  # a class name, possibly qualified: litellm.RateLimitError
    if separator and all(part.isidentifier() for part in parts) and parts[-1][:1].isupper():
        return head.strip()
    return error.strip().splitlines()[0] if error.strip() else "error"


def _error_text(error: str) -> str:
    text = mask_text(error.strip())
    return text if len(text) <= _ERROR_TEXT_CHARACTERS else text[: _ERROR_TEXT_CHARACTERS - 1] + "…"


def _attempt_label(name: str, attributes: dict[str, Any]) -> str | None:
    """Return ``"attempt 2 — RateLimitError"`` for a retried attempt: its number and the error it retried after."""
    attempt, cause = attributes.get("attempt"), attributes.get("retry_cause")
    if not isinstance(cause, str) or not cause.strip():
        return None
    which = f"attempt {attempt}" if count(attempt) is not None else name
    return f"{which} — {cause.split(' (', 1)[0].strip()}"


def _header(record: dict[str, Any], trials: list[dict[str, Any]]) -> dict[str, Any]:
    """Return the header: what the experiment is, its mean with CI, n, errors, tokens and cost."""
    summary = record.get("summary") if isinstance(record.get("summary"), dict) else {}
    scores = [score for trial in trials if (score := number(trial.get("score"))) is not None]
    errors: dict[str, int] = {}
    for trial in trials:
        if trial["status"] != "ok":
            name = trial.get("error_type") or trial["status"]
            errors[name] = errors.get(name, 0) + 1
    unpriced = sorted({model for trial in trials for model in (trial.get("unpriced_models") or "").split(",") if model})
    costs = [cost for trial in trials if (cost := number(trial.get("cost"))) is not None]
    interval = summary.get("ci") if isinstance(summary.get("ci"), list) and len(summary["ci"]) == 2 else None
    return {
        "experiment_id": record["id"],
        "name": record.get("name") or record["id"],
        "kind": record.get("kind"),
        "status": record.get("status"),
        "metric": record.get("metric"),
        "program": record.get("program_name"),
        "dataset": record.get("dataset_name"),
        # The run's own summary when it finished (its interval method); else the mean of the traced trials so far.
        "mean": number(summary.get("mean")) if summary else (sum(scores) / len(scores) if scores else None),
        "ci": [number(bound) for bound in interval] if interval else None,
        "confidence": number(summary.get("confidence")),
        "ci_method": summary.get("ci_method"),
        "n": summary.get("n", len(scores)) if summary else len(scores),
        "n_trials": summary.get("n_trials", len(trials)) if summary else len(trials),
        "n_errors": summary.get("n_errors", sum(errors.values())) if summary else sum(errors.values()),
        "errors": summary.get("errors", errors) if summary else errors,
        "tokens_in": sum(count(trial.get("input_tokens")) or 0 for trial in trials),
        "tokens_out": sum(count(trial.get("output_tokens")) or 0 for trial in trials),
        # Priced trials' dollars; unpriced models are named, never counted as $0.
        "cost": sum(costs) if costs else None,
        "unpriced_models": unpriced,
        "traced_trials": len(trials),
    }


def _trial_entry(row: dict[str, Any], fields: ExampleFields) -> dict[str, Any]:
    """Return one line of the trial list: the example's question and gold answer, the prediction, and the numbers."""
    latency = number(row.get("latency"))
    tokens = [count(row.get("input_tokens")), count(row.get("output_tokens"))]
    message = row.get("error_message")
    texts = fields.row(str(row.get("example_id") or ""), row.get("prediction"))
    return {
        "trial_id": str(row["trial_id"]),
        **{name: shorten(text) for name, text in texts.items()},
        "status": row["status"],
        "score": number(row.get("score")),
        "error_type": row.get("error_type"),
        "error": _error_text(str(message)) if message else None,
        "spans": int(row.get("spans") or 0),
        "latency_ms": None if latency is None else round(latency * 1000, 3),
        "tokens": None if tokens == [None, None] else sum(part or 0 for part in tokens),
        "cost": number(row.get("cost")),
        "unpriced": bool(row.get("unpriced_models")),
        "attempts": count(row.get("attempts")) or 1,
    }


class TraceViewer(anywidget.AnyWidget):
    """A header, a trial list, a collapsible span tree with a timing waterfall and search, and a detail pane.

    The trial list gives each trial's question (the example's inputs), expected (its gold fields: those
    the program outputs), answer, score, error, tokens, cost and latency; it spans the widget's width and
    its columns are resized by dragging their edges.
    The header names the experiment and gives its mean with its confidence interval, n, errors by type,
    tokens and cost (an unpriced model is shown as unpriced, never as $0). The tree is sent as flat nodes,
    parents before children and siblings in start order, and drawn lazily (a node's children only when it is
    expanded, a few hundred at a time). Each node carries its start and duration relative to the trial (the
    waterfall), its error type, and for LM calls the model, temperature, tokens and cost; every other span
    carries the sums of the LM calls below it, so the trial's root row totals the trial. A retried attempt is
    labelled with the error it retried after. A span's attributes (messages, completion, parameters) travel
    only when it is selected; a metric span's detail holds the expected and the predicted values side by
    side, under the example's question. Search matches kind, name, error and the attributes' text,
    case-insensitively, and opens the ancestors of the first matches; the front end counts the matches and
    steps through them. The same search runs over every span of the experiment: ``trial_matches`` counts
    the matching spans of each trial, and the trial list marks those trials.

    Args:
        journal: a journal or its path.
        experiment_id: the traced evaluation (``dx.evaluate(..., trace=True)``).
        trial_id: the trial to open first (default: the first in ``sort_by`` order).
        sort_by: ``"error"`` (failed first, then lowest score), ``"score"`` (lowest first) or ``"trial"``.
    """

    _esm = front_end_file("trace_viewer.js", widget="TraceViewer")
    _css = front_end_file("trace_viewer.css", widget="TraceViewer")

    header = traitlets.Dict().tag(sync=True)
    trials = traitlets.List().tag(sync=True)
    selected_trial = traitlets.Unicode("").tag(sync=True)
    nodes = traitlets.List().tag(sync=True)
    expanded = traitlets.List().tag(sync=True)
    selected_span = traitlets.Unicode("").tag(sync=True)
    detail = traitlets.Dict().tag(sync=True)
    search = traitlets.Unicode("").tag(sync=True)
    matches = traitlets.List().tag(sync=True)
    trial_matches = traitlets.Dict().tag(sync=True)

    def __init__(
        self,
        journal: JournalStore | str | os.PathLike[str],
        experiment_id: str,
        *,
        trial_id: str | None = None,
        sort_by: str = "error",
    ) -> None:
        if sort_by not in _SORTS:
            raise JournalError(f"sort_by must be one of {_SORTS}, got {sort_by!r}")
        super().__init__()
        self._journal = journal_store(journal)
        self._experiment_id = experiment_id
        self._spans: dict[str, _SpanRow] = {}
        self._haystacks: dict[str, str] | None = None
        rows = self._journal.trial_rows(
            experiment_id,
            columns=_TRIAL_COLUMNS,
            order=sort_by,
            traced_only=True,
            with_span_counts=True,
        )
        if not rows:
            raise JournalError(
                f"experiment {experiment_id!r} has no traced trials in {self._journal.location}; "
                "evaluate with dx.evaluate(..., trace=True)"
            )
        record = self._journal.experiment(experiment_id)
        self._fields = ExampleFields(self._journal, record)
        self._experiment_search = SpanSearch(self._journal, experiment_id)
        self._example_ids = {str(row["trial_id"]): str(row.get("example_id") or "") for row in rows}
        self.header = _header(record, rows)
        self.trials = [_trial_entry(row, self._fields) for row in rows]
        self.selected_trial = trial_id or self.trials[0]["trial_id"]

    def _read_spans(self, trial_id: str) -> list[_SpanRow]:
        # Stored rows rather than journal.spans: building a Span (and parsing its attributes) for each of
        # 10,000 spans costs most of a trial's load, and only the selected span's attributes are ever shown.
        return [
            _SpanRow(
                row["span_id"],
                row["parent_id"],
                row["kind"],
                row["name"],
                int(row["start_ns"]),
                int(row["end_ns"]),
                row["status"] or "ok",
                row["error"],
                row["attributes"] or "{}",
            )
            for row in self._journal.span_rows(self._experiment_id, trial_id)
        ]

    @traitlets.observe("selected_trial")
    def _load_trial(self, change: dict[str, Any]) -> None:
        rows = self._read_spans(change["new"])
        if not rows:
            raise JournalError(f"no spans for trial {change['new']!r} of experiment {self._experiment_id!r}")
        self._spans = {row.span_id: row for row in rows}
        self._haystacks = None
        roots = [row.span_id for row in rows if row.parent_id not in self._spans]
        self.selected_span = ""
        self.detail = {}
        # Ordered by start time, a parent comes before its children: the front end never has to sort.
        start_ns = min(row.start_ns for row in rows)
        nodes = _with_usage([row.node(start_ns) for row in rows], rows)
        with self.hold_sync():
            self.expanded = roots
            self.nodes = nodes
            self._update_matches(self.search)

    @traitlets.observe("selected_span")
    def _show_detail(self, change: dict[str, Any]) -> None:
        row = self._spans.get(change["new"])
        if row is None:
            self.detail = {}
            return
        # Through Span, so what is shown is redacted once more on read, like every other view of a span.
        span = Span.from_row({"trace_id": self.selected_trial, **row._asdict()})
        self.detail = span_detail(span, self._fields, self._example_ids.get(self.selected_trial, ""))

    @traitlets.observe("search")
    def _search(self, change: dict[str, Any]) -> None:
        with self.hold_sync():
            self._update_matches(change["new"])
            # Across the whole experiment: how many spans match in each trial (the trial list marks them).
            self.trial_matches = self._experiment_search.counts(change["new"])

    def _update_matches(self, text: str) -> None:
        needle = text.strip().casefold()
        if not needle:
            self.matches = []
            return
        if self._haystacks is None:  # once per trial, on its first search
            self._haystacks = {span_id: row.haystack() for span_id, row in self._spans.items()}
        # The attributes are stored as JSON text, where a quote or backslash appears escaped.
        escaped = json.dumps(needle, ensure_ascii=False)[1:-1]
        found = [
            span_id
            for span_id, haystack in self._haystacks.items()
            if needle in haystack or (escaped != needle and escaped in haystack)
        ]
        # Open every ancestor of the first matches, so matches deep in the tree are visible.
        opened = set(self.expanded)
        for span_id in found[:_OPENED_MATCHES]:
            chain: set[str] = set()  # guards against a parent cycle in damaged data
            parent = self._spans[span_id].parent_id
            while parent in self._spans and parent not in chain:
                chain.add(parent)
                parent = self._spans[parent].parent_id
            opened |= chain
        if len(opened) != len(self.expanded):
            self.expanded = sorted(opened)
        self.matches = found


def _with_usage(nodes: list[dict[str, Any]], rows: list[_SpanRow]) -> list[dict[str, Any]]:
    """Add LM columns to LM nodes, attempt labels, metric scores, and LM sums to every node above an LM call.

    Only LM, attempt and metric spans have their attributes parsed: the rest keep their JSON text until selected.
    """
    prices = Prices()
    by_id = {node["id"]: node for node in nodes}
    for node, row in zip(nodes, rows, strict=True):
        if row.kind == "lm":
            node.update(lm_columns(json.loads(row.attributes), prices))
        elif row.kind == "attempt":
            label = _attempt_label(row.name, json.loads(row.attributes))
            if label is not None:
                node["label"] = label
        elif row.kind == "metric":
            node["score"] = number(json.loads(row.attributes).get("score"))
    # Children come after their parents, so walking backwards adds every subtree up before its parent is read.
    totals: dict[str, dict[str, Any]] = {}
    for node in reversed(nodes):
        own = node if node["kind"] == "lm" else totals.get(node["id"])
        parent = node["parent"]
        if own is None or parent not in by_id or parent == node["id"] or by_id[parent]["kind"] == "lm":
            continue
        total = totals.setdefault(parent, {"lm_calls": 0, "tokens_in": None, "tokens_out": None, "cost": None})
        total["lm_calls"] += own["lm_calls"]
        # Calls without usage (failed ones) add nothing: a subtree of such calls shows no tokens, not 0.
        for key in ("tokens_in", "tokens_out", "cost"):
            if own[key] is not None:
                total[key] = (total[key] or 0) + own[key]
        if own.get("unpriced"):
            total["unpriced"] = True
    for span_id, total in totals.items():
        by_id[span_id].update(total)
    return nodes
