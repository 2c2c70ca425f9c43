"""``TraceViewer``: browse an experiment's trials and each trial's span tree in a notebook."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from dspex_lab.errors import JournalError, MissingDependencyError
from dspex_lab.journal import DuckDBJournal, open_journal

try:
    import anywidget
    import traitlets
except ImportError as error:  # pragma: no cover - exercised only without the notebook extra
    raise MissingDependencyError("anywidget", "notebook") from error

__all__ = ["TraceViewer"]

# The front-end sources live in the repository's widgets/ folder (see DESIGN §1).
_WIDGETS = Path(__file__).resolve().parents[2] / "widgets"

_SORTS = ("error", "score", "trial")


def _span_node(span: Any) -> dict[str, Any]:
    return {
        "id": span.span_id,
        "parent": span.parent_id,
        "kind": span.kind,
        "name": span.name,
        "status": span.status,
        "duration_ms": round(span.duration * 1000, 3),
    }


class TraceViewer(anywidget.AnyWidget):
    """A trial list, a collapsible span tree with search, and a detail pane for one experiment.

    The tree is sent as flat nodes and rendered lazily (a node's children are drawn only when it is
    expanded); a span's attributes (messages, completion, parameters) travel only when it is selected.

    Args:
        journal: a journal or its path.
        experiment_id: the traced evaluation (``dx.evaluate(..., trace=True)``).
        trial_id: the trial to open first (default: the first in ``sort_by`` order).
        sort_by: ``"error"`` (failed first, then lowest score), ``"score"`` (lowest first) or ``"trial"``.
    """

    _esm = _WIDGETS / "trace_viewer.js"
    _css = _WIDGETS / "trace_viewer.css"

    trials = traitlets.List().tag(sync=True)
    selected_trial = traitlets.Unicode("").tag(sync=True)
    nodes = traitlets.List().tag(sync=True)
    expanded = traitlets.List().tag(sync=True)
    selected_span = traitlets.Unicode("").tag(sync=True)
    detail = traitlets.Dict().tag(sync=True)
    search = traitlets.Unicode("").tag(sync=True)
    matches = traitlets.List().tag(sync=True)

    def __init__(
        self,
        journal: DuckDBJournal | str | os.PathLike[str],
        experiment_id: str,
        *,
        trial_id: str | None = None,
        sort_by: str = "error",
    ) -> None:
        if sort_by not in _SORTS:
            raise JournalError(f"sort_by must be one of {_SORTS}, got {sort_by!r}")
        super().__init__()
        self._journal = journal if isinstance(journal, DuckDBJournal) else open_journal(journal)
        self._experiment_id = experiment_id
        self._spans: dict[str, Any] = {}
        order = {
            "error": "t.status = 'ok', coalesce(t.score, -1), t.example_index, t.repeat",
            "score": "coalesce(t.score, -1), t.example_index, t.repeat",
            "trial": "t.example_index, t.repeat",
        }[sort_by]
        frame = self._journal.sql(
            f"""SELECT t.trial_id, t.status, t.score, t.error_type, count(s.span_id) AS spans
                FROM trials t JOIN spans s ON s.experiment_id = t.experiment_id AND s.trace_id = t.trial_id
                WHERE t.experiment_id = ?
                GROUP BY t.trial_id, t.status, t.score, t.error_type, t.example_index, t.repeat
                ORDER BY {order}""",
            [experiment_id],
        )
        if frame.empty:
            raise JournalError(
                f"experiment {experiment_id!r} has no traced trials in {self._journal.path}; "
                "evaluate with dx.evaluate(..., trace=True)"
            )
        frame = frame.astype(object).where(frame.notna(), None)
        self.trials = frame.to_dict("records")
        self.selected_trial = trial_id or str(frame["trial_id"].iloc[0])

    @traitlets.observe("selected_trial")
    def _load_trial(self, change: dict[str, Any]) -> None:
        spans = self._journal.spans(self._experiment_id, change["new"])
        if not spans:
            raise JournalError(f"no spans for trial {change['new']!r} of experiment {self._experiment_id!r}")
        self._spans = {span.span_id: span for span in spans}
        roots = [span.span_id for span in spans if span.parent_id not in self._spans]
        self.selected_span = ""
        self.detail = {}
        self.expanded = roots
        self.nodes = [_span_node(span) for span in spans]
        self._update_matches(self.search)

    @traitlets.observe("selected_span")
    def _show_detail(self, change: dict[str, Any]) -> None:
        span = self._spans.get(change["new"])
        if span is None:
            self.detail = {}
            return
        self.detail = {
            "id": span.span_id,
            "kind": span.kind,
            "name": span.name,
            "status": span.status,
            "error": span.error,
            "duration_ms": round(span.duration * 1000, 3),
            "attributes": span.json_attributes,
        }

    @traitlets.observe("search")
    def _search(self, change: dict[str, Any]) -> None:
        self._update_matches(change["new"])

    def _update_matches(self, text: str) -> None:
        needle = text.strip().casefold()
        if not needle:
            self.matches = []
            return
        found = [
            span.span_id
            for span in self._spans.values()
            if needle in f"{span.kind} {span.name} {json.dumps(span.json_attributes, default=str)}".casefold()
        ]
        # Open every ancestor of a match, so matches deep in the tree are visible.
        opened = set(self.expanded)
        for span_id in found:
            parent = self._spans[span_id].parent_id
            while parent in self._spans and parent not in opened:
                opened.add(parent)
                parent = self._spans[parent].parent_id
        self.expanded = sorted(opened)
        self.matches = found
