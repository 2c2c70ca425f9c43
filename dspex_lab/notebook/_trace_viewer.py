"""``TraceViewer``: browse an experiment's trials and each trial's span tree in a notebook."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple

from dspex_lab.errors import DspexLabError, JournalError, MissingDependencyError
from dspex_lab.journal import TRIAL_ORDERS, DuckDBJournal, open_journal
from dspex_lab.trace import Span

try:
    import anywidget
    import traitlets
except ImportError as error:  # pragma: no cover - exercised only without the notebook extra
    raise MissingDependencyError("anywidget", "notebook") from error

__all__ = ["TraceViewer"]

# The front end's sources live in the repository's top-level widgets/ folder (DESIGN §1). A wheel ships them
# as the data package dspex_lab.notebook.widgets (pyproject maps it onto widgets/); a source checkout or an
# editable install reads them where they are.
_FRONT_END_FOLDERS = (
    Path(__file__).resolve().parent / "widgets",
    Path(__file__).resolve().parents[2] / "widgets",
)

# The journal orders the trial list (failed first, lowest score first, or example order).
_SORTS = TRIAL_ORDERS

# A search opens the ancestors of this many matches at most: a common word can match thousands of spans, and
# opening all their ancestors would draw most of the trial. The other matches are still marked.
_OPENED_MATCHES = 50


def _front_end_file(name: str) -> Path:
    """Return the path of one of the widget's front-end files, packaged or in a source checkout.

    Raises:
        DspexLabError: the file is in neither place (a broken install).
    """
    for folder in _FRONT_END_FOLDERS:
        if (folder / name).is_file():
            return folder / name
    searched = ", ".join(str(folder / name) for folder in _FRONT_END_FOLDERS)
    raise DspexLabError(
        f"the trace viewer's front end {name} is missing (looked in {searched}); reinstall dspex_lab, "
        "or in a source checkout restore the top-level widgets/ folder"
    )


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

    def node(self) -> dict[str, Any]:
        return {
            "id": self.span_id,
            "parent": self.parent_id,
            "kind": self.kind,
            "name": self.name,
            "status": self.status,
            "duration_ms": round((self.end_ns - self.start_ns) / 1e6, 3),
        }

    def haystack(self) -> str:
        return f"{self.kind} {self.name} {self.error or ''} {self.attributes}".casefold()


class TraceViewer(anywidget.AnyWidget):
    """A trial list, a collapsible span tree with search, and a detail pane for one experiment.

    The tree is sent as flat nodes, parents before children and siblings in start order, and drawn lazily
    (a node's children only when it is expanded, a few hundred at a time); a span's attributes (messages,
    completion, parameters) travel only when it is selected. Search matches kind, name, error and the
    attributes' text, case-insensitively, and opens the ancestors of the first matches.

    Args:
        journal: a journal or its path.
        experiment_id: the traced evaluation (``dx.evaluate(..., trace=True)``).
        trial_id: the trial to open first (default: the first in ``sort_by`` order).
        sort_by: ``"error"`` (failed first, then lowest score), ``"score"`` (lowest first) or ``"trial"``.
    """

    _esm = _front_end_file("trace_viewer.js")
    _css = _front_end_file("trace_viewer.css")

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
        self._spans: dict[str, _SpanRow] = {}
        self._haystacks: dict[str, str] | None = None
        trials = self._journal.trial_rows(
            experiment_id,
            columns=("trial_id", "status", "score", "error_type"),
            order=sort_by,
            traced_only=True,
            with_span_counts=True,
        )
        if not trials:
            raise JournalError(
                f"experiment {experiment_id!r} has no traced trials in {self._journal.path}; "
                "evaluate with dx.evaluate(..., trace=True)"
            )
        self.trials = trials
        self.selected_trial = trial_id or str(trials[0]["trial_id"])

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
        nodes = [row.node() for row in rows]
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
        with self.hold_sync():
            self._update_matches(change["new"])

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
