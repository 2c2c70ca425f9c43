"""``ExperimentBrowser``: a journal's experiments, one experiment's trials, and one trial's trace."""

from __future__ import annotations

import json
import math
import os
from typing import Any

from dspex_lab.errors import DspexLabError, JournalError, MissingDependencyError
from dspex_lab.journal import TRIAL_ORDERS, DuckDBJournal, open_journal
from dspex_lab.notebook._trace_viewer import TraceViewer
from dspex_lab.notebook._widgets_common import front_end_file, json_number
from dspex_lab.stats import wilson_interval

try:
    import anywidget
    import ipywidgets
    import traitlets
except ImportError as error:  # pragma: no cover - exercised only without the notebook extra
    raise MissingDependencyError("anywidget", "notebook") from error

__all__ = ["EXPERIMENT_COLUMNS", "ExperimentBrowser"]

#: The experiment table's columns, each one a sort key.
EXPERIMENT_COLUMNS = ("name", "kind", "status", "mean", "n", "n_trials", "n_errors", "created")

_TRIAL_COLUMNS = (
    "trial_id",
    "example_id",
    "repeat",
    "status",
    "score",
    "error_type",
    "error_message",
    "latency",
    "input_tokens",
    "output_tokens",
    "cost",
)

# An error message is cut to this many characters in the table; the trace shows it whole.
_MESSAGE_CHARACTERS = 300

# Per experiment: its stored summary (a finished evaluation's own interval, which averages repeats per
# example and clusters when asked) and the scored trials' moments (for a live interval on the others).
_STATISTICS_SQL = """
SELECT e.id, e.summary, s.n_scored, s.total, s.sd, s.binary
FROM experiments e LEFT JOIN (
    SELECT experiment_id, count(score) AS n_scored, sum(score) AS total, stddev_samp(score) AS sd,
           bool_and(score = 0 OR score = 1) AS binary
    FROM trials WHERE score IS NOT NULL GROUP BY experiment_id) s ON s.experiment_id = e.id
"""


def _live_interval(n: int, total: float, sd: float | None, binary: bool) -> tuple[float | None, float | None, str]:
    """Return the 95% interval of a mean from its trials' moments: Wilson for 0/1 scores, t otherwise."""
    if n < 2:
        return None, None, ""
    if binary:
        interval = wilson_interval(round(total), n)
        return interval.low, interval.high, "wilson"
    from scipy import stats

    mean = total / n
    half = float(stats.t.ppf(0.975, n - 1)) * (sd or 0.0) / math.sqrt(n)
    return mean - half, mean + half, "t"


class _BrowserTables(anywidget.AnyWidget):
    """The browser's two tables and their filters (the front end); :class:`ExperimentBrowser` fills them."""

    _esm = front_end_file("experiment_browser.js", widget="ExperimentBrowser")
    _css = front_end_file("experiment_browser.css", widget="ExperimentBrowser")

    experiments = traitlets.List().tag(sync=True)
    kinds = traitlets.List().tag(sync=True)
    statuses = traitlets.List().tag(sync=True)
    name_filter = traitlets.Unicode("").tag(sync=True)
    kind_filter = traitlets.Unicode("").tag(sync=True)
    status_filter = traitlets.Unicode("").tag(sync=True)
    sort_column = traitlets.Unicode("created").tag(sync=True)
    sort_descending = traitlets.Bool(True).tag(sync=True)
    selected_experiment = traitlets.Unicode("").tag(sync=True)
    trials = traitlets.List().tag(sync=True)
    trial_total = traitlets.Int(0).tag(sync=True)
    trial_limit = traitlets.Int(200).tag(sync=True)
    trial_status = traitlets.Unicode("").tag(sync=True)
    trial_min_score = traitlets.Float(None, allow_none=True).tag(sync=True)
    trial_max_score = traitlets.Float(None, allow_none=True).tag(sync=True)
    trial_order = traitlets.Unicode("error").tag(sync=True)
    selected_trial = traitlets.Unicode("").tag(sync=True)
    note = traitlets.Unicode("").tag(sync=True)

    @traitlets.validate("sort_column")
    def _check_sort_column(self, proposal: dict[str, Any]) -> str:
        if proposal["value"] not in EXPERIMENT_COLUMNS:
            raise JournalError(f"sort_column must be one of {EXPERIMENT_COLUMNS}, got {proposal['value']!r}")
        return str(proposal["value"])

    @traitlets.validate("trial_order")
    def _check_trial_order(self, proposal: dict[str, Any]) -> str:
        if proposal["value"] not in TRIAL_ORDERS:
            raise JournalError(f"trial_order must be one of {TRIAL_ORDERS}, got {proposal['value']!r}")
        return str(proposal["value"])

    @traitlets.validate("trial_status")
    def _check_trial_status(self, proposal: dict[str, Any]) -> str:
        if proposal["value"] not in ("", "ok", "error"):
            raise JournalError(f"trial_status must be '', 'ok' or 'error', got {proposal['value']!r}")
        return str(proposal["value"])

    @traitlets.validate("trial_min_score", "trial_max_score")
    def _check_score_bound(self, proposal: dict[str, Any]) -> float | None:
        value = proposal["value"]
        if value is not None and not math.isfinite(value):
            raise JournalError(f"{proposal['trait'].name} must be a finite number or None, got {value!r}")
        return value

    @traitlets.validate("trial_limit")
    def _check_trial_limit(self, proposal: dict[str, Any]) -> int:
        if proposal["value"] < 1:
            raise JournalError(f"trial_limit must be at least 1, got {proposal['value']!r}")
        return int(proposal["value"])


class ExperimentBrowser(ipywidgets.VBox):
    """Browse a journal: filter and sort its experiments, open one's trials, open a trial's trace.

    The experiment table shows each experiment's name, kind, status, mean score with its 95% interval,
    n, trials and errors; it filters by name (a substring), kind and status, and sorts by any column.
    A finished evaluation shows the interval it was summarised with (repeats averaged per example,
    clustered if asked); a running or interrupted one a live interval over its scored trials (Wilson for
    0/1 scores, t otherwise). Selecting an experiment lists its trials (filtered by status and score,
    ordered by :data:`~dspex_lab.journal.TRIAL_ORDERS`, at most ``trial_limit`` shown); selecting a traced
    trial opens a :class:`~dspex_lab.notebook.TraceViewer` below the tables. Every filter change queries
    the journal again; Refresh (or :meth:`refresh`) picks up what other kernels wrote meanwhile.

    Args:
        journal: a journal or its path (default: the active ``dx.Context``'s journal).
        trial_limit: the most trials listed at once.

    Raises:
        JournalError: no journal was given and the context has none, or ``trial_limit`` is below 1.
    """

    def __init__(
        self, journal: DuckDBJournal | str | os.PathLike[str] | None = None, *, trial_limit: int = 200
    ) -> None:
        if journal is None:
            from dspex_lab.evaluate import current_context

            journal = current_context().journal
            if journal is None:
                raise JournalError(
                    "ExperimentBrowser needs a journal: pass one (a path or dx.open_journal(...)), "
                    "or enter a dx.Context whose journal is not False"
                )
        self.journal = journal if isinstance(journal, DuckDBJournal) else open_journal(journal)
        self.tables = _BrowserTables(trial_limit=trial_limit)
        self.trace_viewer: TraceViewer | None = None
        super().__init__(children=(self.tables,))
        self.add_class("dspex-experiment-browser")
        self.tables.observe(self._experiments_changed, names=["name_filter", "kind_filter", "status_filter"])
        self.tables.observe(self._sort_changed, names=["sort_column", "sort_descending"])
        self.tables.observe(self._experiment_selected, names=["selected_experiment"])
        self.tables.observe(
            self._trials_changed, names=["trial_status", "trial_min_score", "trial_max_score", "trial_order"]
        )
        self.tables.observe(self._trial_selected, names=["selected_trial"])
        self.tables.on_msg(self._on_front_end_message)
        self._rows: list[dict[str, Any]] = []
        self.refresh()

    # -- What the tables show ----------------------------------------------------------------------

    @property
    def experiments(self) -> list[dict[str, Any]]:
        """The experiment rows shown, filtered and sorted."""
        return list(self.tables.experiments)

    @property
    def trials(self) -> list[dict[str, Any]]:
        """The selected experiment's trial rows shown."""
        return list(self.tables.trials)

    def select_experiment(self, experiment_id: str) -> None:
        """Select an experiment (as a click on its row does) and list its trials.

        Raises:
            JournalError: the journal has no such experiment.
        """
        if experiment_id and not any(row["id"] == experiment_id for row in self._rows):
            raise JournalError(f"no experiment {experiment_id!r} in {self.journal.path}")
        self.tables.selected_experiment = experiment_id

    def select_trial(self, trial_id: str) -> None:
        """Select a trial of the selected experiment (as a click does) and open its trace if it has one.

        Raises:
            JournalError: no experiment is selected, or the trial is not among the trials listed.
        """
        if not self.tables.selected_experiment:
            raise JournalError("select an experiment before a trial")
        if trial_id and not any(row["trial_id"] == trial_id for row in self.tables.trials):
            raise JournalError(
                f"trial {trial_id!r} is not among the trials listed for {self.tables.selected_experiment!r}; "
                "loosen the trial filters"
            )
        self.tables.selected_trial = trial_id

    def refresh(self) -> None:
        """Read the journal again: experiments, the selected experiment's trials, and its trace."""
        self._rows = self._read_experiments()
        with self.tables.hold_sync():
            self.tables.kinds = sorted({row["kind"] for row in self._rows})
            self.tables.statuses = sorted({row["status"] for row in self._rows})
            self._show_experiments()
            if self.tables.selected_experiment:
                if any(row["id"] == self.tables.selected_experiment for row in self._rows):
                    self._show_trials()
                else:
                    self.tables.selected_experiment = ""

    # -- Reading the journal -----------------------------------------------------------------------

    def _read_experiments(self) -> list[dict[str, Any]]:
        summaries = self.journal.experiment_summaries()
        statistics: dict[str, dict[str, Any]] = {}
        if summaries:
            frame = self.journal.sql(_STATISTICS_SQL)
            statistics = {row["id"]: row for row in frame.to_dict("records")}
        return [_experiment_row(summary, statistics.get(summary.id, {})) for summary in summaries]

    def _show_experiments(self) -> None:
        needle = self.tables.name_filter.strip().casefold()
        rows = [
            row
            for row in self._rows
            if (not needle or needle in row["name"].casefold() or needle in row["id"].casefold())
            and (not self.tables.kind_filter or row["kind"] == self.tables.kind_filter)
            and (not self.tables.status_filter or row["status"] == self.tables.status_filter)
        ]
        column = self.tables.sort_column
        present = [row for row in rows if row[column] is not None]
        # Missing values (an experiment without a score) go last whichever way the column is sorted.
        present.sort(key=lambda row: (row[column], row["id"]), reverse=self.tables.sort_descending)
        self.tables.experiments = present + [row for row in rows if row[column] is None]

    def _show_trials(self) -> None:
        tables = self.tables
        low, high = tables.trial_min_score, tables.trial_max_score
        if low is not None and high is not None and low > high:
            tables.note = f"the score filter is empty: at least {low:g} and at most {high:g}"
            tables.trials = []
            tables.trial_total = 0
            return
        rows = self.journal.trial_rows(
            tables.selected_experiment,
            columns=_TRIAL_COLUMNS,
            status=tables.trial_status or None,
            order=tables.trial_order,
            limit=tables.trial_limit,
            with_span_counts=True,
            min_score=low,
            max_score=high,
        )
        tables.trial_total = sum(self.journal.trial_counts(tables.selected_experiment).values())
        tables.trials = [_trial_row(row) for row in rows]
        tables.note = ""
        if tables.selected_trial and not any(row["trial_id"] == tables.selected_trial for row in tables.trials):
            tables.selected_trial = ""

    # -- Reactions to the front end ----------------------------------------------------------------

    def _on_front_end_message(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if isinstance(content, dict) and content.get("type") == "refresh":
            self.refresh()

    def _experiments_changed(self, _change: dict[str, Any]) -> None:
        self.refresh()  # a filter change reads the journal again, so new experiments show up

    def _sort_changed(self, _change: dict[str, Any]) -> None:
        self._show_experiments()

    def _experiment_selected(self, change: dict[str, Any]) -> None:
        with self.tables.hold_sync():
            self.tables.selected_trial = ""
            self.tables.trials = []
            self.tables.trial_total = 0
            self.tables.note = ""
            if change["new"]:
                self._show_trials()
        self._close_trace()

    def _trials_changed(self, _change: dict[str, Any]) -> None:
        if self.tables.selected_experiment:
            with self.tables.hold_sync():
                self._show_trials()

    def _trial_selected(self, change: dict[str, Any]) -> None:
        trial_id = change["new"]
        row = next((row for row in self.tables.trials if row["trial_id"] == trial_id), None)
        if row is None:
            self._close_trace()
            return
        if not row["spans"]:
            self._close_trace()
            self.tables.note = (
                f"trial {trial_id} has no trace: evaluate with dx.evaluate(..., trace=True) to record its spans"
            )
            return
        self.tables.note = ""
        experiment_id = self.tables.selected_experiment
        viewer = self.trace_viewer
        try:
            if viewer is not None and getattr(viewer, "_experiment_id", None) == experiment_id:
                viewer.selected_trial = trial_id
            else:
                self._close_trace()
                self.trace_viewer = TraceViewer(self.journal, experiment_id, trial_id=trial_id)
                self.children = (self.tables, self.trace_viewer)
        except DspexLabError as error:
            self._close_trace()
            self.tables.note = f"the trace of {trial_id} cannot be shown: {error}"

    def _close_trace(self) -> None:
        if self.trace_viewer is not None:
            self.trace_viewer.close()
            self.trace_viewer = None
        self.children = (self.tables,)


def _experiment_row(summary: Any, statistics: dict[str, Any]) -> dict[str, Any]:
    n_scored = int(statistics.get("n_scored") or 0)
    stored = statistics.get("summary")
    stored = json.loads(stored) if isinstance(stored, str) else stored
    mean = json_number(summary.mean_score)
    if summary.status == "finished" and isinstance(stored, dict) and json_number(stored.get("mean")) is not None:
        ci = stored.get("ci") or [None, None]
        mean, low, high = json_number(stored["mean"]), json_number(ci[0]), json_number(ci[1])
        method, n = str(stored.get("ci_method") or ""), int(stored.get("n") or n_scored)
    else:
        low, high, method = _live_interval(
            n_scored, float(statistics.get("total") or 0.0), json_number(statistics.get("sd")),
            bool(statistics.get("binary")),
        )  # fmt: skip
        n = n_scored
    created = summary.created_at
    if created is not None and hasattr(created, "isoformat"):
        created = created.isoformat(sep=" ", timespec="seconds")
    return {
        "id": summary.id,
        "name": summary.name,
        "kind": summary.kind,
        "status": summary.status,
        "status_detail": summary.status_detail or "",
        "mean": mean,
        "ci_low": json_number(low),
        "ci_high": json_number(high),
        "ci_method": method,
        "n": n,
        "n_trials": int(summary.n_trials),
        "n_errors": int(summary.n_errors),
        "created": None if created is None else str(created),
    }


def _trial_row(row: dict[str, Any]) -> dict[str, Any]:
    message = row.get("error_message") or ""
    if len(message) > _MESSAGE_CHARACTERS:
        message = message[: _MESSAGE_CHARACTERS - 1] + "…"
    return {
        "trial_id": row["trial_id"],
        "example_id": row["example_id"],
        "repeat": int(row["repeat"]),
        "status": row["status"],
        "score": json_number(row.get("score")),
        "error_type": row.get("error_type") or "",
        "error_message": message,
        "latency": json_number(row.get("latency")),
        "tokens": int(row.get("input_tokens") or 0) + int(row.get("output_tokens") or 0),
        "cost": json_number(row.get("cost")),
        "spans": int(row.get("spans") or 0),
    }
