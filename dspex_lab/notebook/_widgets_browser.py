"""``ExperimentBrowser``: a journal's experiments, one experiment's trials, and one trial's trace."""

from __future__ import annotations

import math
import os
from typing import Any

from dspex_lab.errors import DspexLabError, JournalError, MissingDependencyError
from dspex_lab.journal import TRIAL_SORTS, JournalStore
from dspex_lab.notebook._annotating import LABEL_PRESETS, annotate_trial, current_labels, withdraw_trial
from dspex_lab.notebook._trace_viewer import TraceViewer
from dspex_lab.notebook._widgets_common import front_end_file, json_number
from dspex_lab.session import journal_store

try:
    import anywidget
    import ipywidgets
    import traitlets
except ImportError as error:  # pragma: no cover - exercised only without the notebook extra
    raise MissingDependencyError("anywidget", "notebook") from error

__all__ = ["EXPERIMENT_COLUMNS", "ExperimentBrowser"]

#: The experiment table's columns, each one a sort key.
EXPERIMENT_COLUMNS = ("name", "kind", "status", "mean", "n", "n_trials", "n_errors", "created")

# The experiment list reads this many of the newest experiments at most.
_EXPERIMENT_LIMIT = 1000

# An error message is cut to this many characters in the table; the trace shows it whole.
_MESSAGE_CHARACTERS = 300


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
    trial_sort = traitlets.Unicode("status").tag(sync=True)
    trial_descending = traitlets.Bool(False).tag(sync=True)
    selected_trial = traitlets.Unicode("").tag(sync=True)
    note = traitlets.Unicode("").tag(sync=True)
    # Runs nest: every nested experiment (an optimization's candidate evaluations) shown under its run,
    # or only those of the runs in ``expanded``; ``count_note`` says how many of each are shown.
    nested = traitlets.Bool(False).tag(sync=True)
    expanded = traitlets.List(traitlets.Unicode()).tag(sync=True)
    count_note = traitlets.Unicode("").tag(sync=True)
    # The annotation form's preset labels, and the one line saying what the last annotation did (or why not).
    label_presets = traitlets.List(list(LABEL_PRESETS)).tag(sync=True)
    annotation_message = traitlets.Unicode("").tag(sync=True)

    @traitlets.validate("sort_column")
    def _check_sort_column(self, proposal: dict[str, Any]) -> str:
        if proposal["value"] not in EXPERIMENT_COLUMNS:
            raise JournalError(f"sort_column must be one of {EXPERIMENT_COLUMNS}, got {proposal['value']!r}")
        return str(proposal["value"])

    @traitlets.validate("trial_sort")
    def _check_trial_sort(self, proposal: dict[str, Any]) -> str:
        if proposal["value"] not in TRIAL_SORTS:
            raise JournalError(f"trial_sort must be one of {TRIAL_SORTS}, got {proposal['value']!r}")
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
    n, trials and errors; it filters by name or id (a substring, any case), kind and status, and sorts by
    any column. Runs nest: an optimization's candidate evaluations are folded under it (the row says how
    many); its ▸ button (or :meth:`expand`) unfolds one run, and "show nested runs" (``nested``) every
    run, each nested experiment listed under its run. The count above the table says how many
    experiments, and how many nested ones, the filters show.

    A finished evaluation shows the interval it was summarised with (repeats averaged per example,
    clustered if asked); any other experiment the journal's interval over its per-example scores
    (:meth:`~dspex_lab.journal.JournalReader.leaderboard`). Selecting an experiment lists its
    trials, filtered by status and score and sorted by a column of :data:`~dspex_lab.journal.TRIAL_SORTS`
    (failed first by default), at most ``trial_limit`` of them with the number that match; selecting a
    traced trial opens a :class:`~dspex_lab.notebook.TraceViewer` below the tables. Every filter change
    queries the journal again; Refresh (or :meth:`refresh`) picks up what other kernels wrote meanwhile.

    Each trial row shows its label in force; the form under the trial table (or
    :meth:`annotate_selected`) annotates the selected trial through ``journal.annotate``, with the
    operating system's user as author; its Withdraw button (or :meth:`withdraw_selected`) withdraws
    the trial's annotation in force. A refused annotation is said in one line under the form.

    Args:
        journal: a journal or its path (default: the active ``dx.Context``'s journal).
        trial_limit: the most trials listed at once.
        nested: also list the experiments nested in others (an optimization's candidate evaluations,
            each under its run, with its ``parent`` and ``role``); by default they are folded.

    Raises:
        JournalError: ``journal`` is neither a path nor a journal, or ``trial_limit`` is below 1.
    """

    def __init__(
        self,
        journal: JournalStore | str | os.PathLike[str] | None = None,
        *,
        trial_limit: int = 200,
        nested: bool = False,
    ) -> None:
        self.journal = journal_store(journal)
        if not isinstance(nested, bool):
            raise JournalError(f"ExperimentBrowser(nested=...) must be True or False, got {nested!r}")
        self.tables = _BrowserTables(trial_limit=trial_limit, nested=nested)
        self.trace_viewer: TraceViewer | None = None
        super().__init__(children=(self.tables,))
        self.add_class("dspex-experiment-browser")
        self.tables.observe(
            self._experiments_changed, names=["name_filter", "kind_filter", "status_filter", "nested", "expanded"]
        )
        self.tables.observe(self._sort_changed, names=["sort_column", "sort_descending"])
        self.tables.observe(self._experiment_selected, names=["selected_experiment"])
        self.tables.observe(
            self._trials_changed,
            names=["trial_status", "trial_min_score", "trial_max_score", "trial_sort", "trial_descending"],
        )
        self.tables.observe(self._trial_selected, names=["selected_trial"])
        self.tables.on_msg(self._on_front_end_message)
        self._rows: list[dict[str, Any]] = []  # top-level experiments, then the nested ones read
        self._predictions: dict[str, Any] = {}  # the listed trials' predictions (a corrected gold's field)
        self.refresh()

    # -- What the tables show ----------------------------------------------------------------------

    @property
    def nested(self) -> bool:
        """Whether every nested experiment is listed under its run (the "show nested runs" box)."""
        return bool(self.tables.nested)

    @nested.setter
    def nested(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise JournalError(f"ExperimentBrowser.nested must be True or False, got {value!r}")
        self.tables.nested = value

    @property
    def experiments(self) -> list[dict[str, Any]]:
        """The experiment rows shown, filtered and sorted; a nested one (``depth`` 1) follows its run."""
        return list(self.tables.experiments)

    def expand(self, experiment_id: str, *, expanded: bool = True) -> None:
        """Unfold (or fold again) the experiments nested in one run, as its ▸ button does.

        Raises:
            JournalError: no experiment listed has this id, or it has no nested experiment.
        """
        row = next((row for row in self._rows if row["id"] == experiment_id), None)
        if row is None or not row["n_children"]:
            raise JournalError(f"no experiment listed in {self.journal.location} has {experiment_id!r} nested runs")
        others = [item for item in self.tables.expanded if item != experiment_id]
        self.tables.expanded = [*others, experiment_id] if expanded else others

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
            raise JournalError(f"no experiment {experiment_id!r} in {self.journal.location}")
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

    def annotate_selected(self, *, label: str = "", note: str = "", gold: str = "") -> str:
        """Annotate the selected trial (as the form's Annotate button does) and return what was recorded.

        Empty texts are left out. ``gold`` is a JSON object of gold fields, or the value of the
        example's one gold field. The trial's row then shows its new label.

        Raises:
            JournalError: no trial is selected, nothing to record, a text past its bound (see
                ``ANNOTATION_BOUNDS``) or a gold that does not say which field it corrects.
        """
        from dspex_lab.notebook._trace_data import ExampleFields

        experiment_id, trial_id = self.tables.selected_experiment, self.tables.selected_trial
        row = next((row for row in self.tables.trials if row["trial_id"] == trial_id), None)
        if not experiment_id or row is None:
            raise JournalError("select a trial before annotating it")
        trial = {**row, "prediction": self._predictions.get(trial_id)}
        fields = ExampleFields(self.journal, self.journal.experiment(experiment_id))
        said = annotate_trial(
            self.journal, trial, experiment_id=experiment_id, fields=fields, label=label, note=note, gold=gold
        )
        with self.tables.hold_sync():
            self._show_trials()
            self.tables.annotation_message = said
        return said

    def withdraw_selected(self) -> str:
        """Withdraw the selected trial's annotation in force (as the form's Withdraw button does); say what was done.

        The withdrawal is journaled and kept in the history; the trial's row then shows no label.

        Raises:
            JournalError: no trial is selected, or it has no annotation in force.
        """
        experiment_id, trial_id = self.tables.selected_experiment, self.tables.selected_trial
        row = next((row for row in self.tables.trials if row["trial_id"] == trial_id), None)
        if not experiment_id or row is None:
            raise JournalError("select a trial before withdrawing its annotation")
        said = withdraw_trial(self.journal, row, experiment_id=experiment_id)
        with self.tables.hold_sync():
            self._show_trials()
            self.tables.annotation_message = said
        return said

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
        """Read the top-level experiments, then the nested ones of the runs unfolded."""
        board = self.journal.leaderboard(limit=_EXPERIMENT_LIMIT)
        if board.empty:
            return []
        # An ended evaluation's stored summary holds how many examples it scored; the interval itself comes
        # with the leaderboard (the journal's one rule for every view, see JournalReader.score_intervals).
        stored = self.journal.ended_summaries()
        rows = [_experiment_row(row, stored.get(row["experiment_id"])) for row in board.to_dict("records")]
        unfolded = {
            row["id"] for row in rows if row["n_children"] and (self.tables.nested or row["id"] in self.tables.expanded)
        }
        if unfolded:
            # With children the board lists each run's nested experiments right after it: this many rows hold
            # the same top-level experiments and all of theirs, in one read.
            wide = self.journal.leaderboard(
                limit=len(rows) + sum(row["n_children"] for row in rows), children=True
            ).to_dict("records")
            rows += [
                _experiment_row(row, stored.get(row["experiment_id"])) for row in wide if row["parent_id"] in unfolded
            ]
        return rows

    def _show_experiments(self) -> None:
        needle = self.tables.name_filter.strip().casefold()

        def shown(row: dict[str, Any]) -> bool:
            return (
                (not needle or needle in row["name"].casefold() or needle in row["id"].casefold())
                and (not self.tables.kind_filter or row["kind"] == self.tables.kind_filter)
                and (not self.tables.status_filter or row["status"] == self.tables.status_filter)
            )

        nested: dict[str, list[dict[str, Any]]] = {}
        for row in self._rows:
            if row["depth"] and shown(row):
                nested.setdefault(str(row["parent"]), []).append(row)
        # A run whose nested experiments match is listed with them, even if it does not match itself.
        top = [row for row in self._rows if not row["depth"] and (shown(row) or row["id"] in nested)]
        listed = []
        for row in self._sorted(top):
            listed += [row, *self._sorted(nested.get(row["id"], []))]
        self.tables.experiments = listed
        self.tables.count_note = _count_note(self._rows, listed)

    def _sorted(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        column = self.tables.sort_column
        present = [row for row in rows if row[column] is not None]
        # Missing values (an experiment without a score) go last whichever way the column is sorted.
        present.sort(key=lambda row: (row[column], row["id"]), reverse=self.tables.sort_descending)
        return present + [row for row in rows if row[column] is None]

    def _show_trials(self) -> None:
        tables = self.tables
        low, high = tables.trial_min_score, tables.trial_max_score
        if low is not None and high is not None and low > high:
            tables.note = f"the score filter is empty: at least {low:g} and at most {high:g}"
            tables.trials = []
            tables.trial_total = 0
            return
        page, total = self.journal.trial_page(
            tables.selected_experiment,
            status=tables.trial_status or None,
            min_score=low,
            max_score=high,
            sort=tables.trial_sort,
            descending=tables.trial_descending,
            limit=tables.trial_limit,
        )
        rows = page.to_dict("records")
        spans = self.journal.span_counts(tables.selected_experiment, [row["trial_id"] for row in rows])
        labels = current_labels(self.journal, tables.selected_experiment)
        self._predictions = {row["trial_id"]: row.get("prediction") for row in rows}
        tables.trial_total = total
        tables.trials = [_trial_row(row, spans[row["trial_id"]], labels.get(row["trial_id"], "")) for row in rows]
        tables.note = "" if total else self._nested_note(tables.selected_experiment)
        if tables.selected_trial and not any(row["trial_id"] == tables.selected_trial for row in tables.trials):
            tables.selected_trial = ""

    def _nested_note(self, experiment_id: str) -> str:
        """Say where the trials of a run with none of its own are (an optimization's, a DSPy compile's), or ``""``."""
        row = next((row for row in self._rows if row["id"] == experiment_id), None)
        if row is None or row["n_trials"] or not row["n_children"]:
            return ""
        count = row["n_children"]
        return (
            f"{row['name']} has no trials of its own: its {count} nested experiment{'' if count == 1 else 's'} "
            "hold them; unfold it (▸) and select one"
        )

    # -- Reactions to the front end ----------------------------------------------------------------

    def _on_front_end_message(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if not isinstance(content, dict):
            return
        if content.get("type") == "refresh":
            self.refresh()
        elif content.get("type") == "annotate":
            texts = {name: content.get(name) for name in ("label", "note", "gold")}
            try:
                self.annotate_selected(**{name: text if isinstance(text, str) else "" for name, text in texts.items()})
            except DspexLabError as error:
                self.tables.annotation_message = f"not annotated: {' '.join(str(error).split())}"
        elif content.get("type") == "withdraw":
            try:
                self.withdraw_selected()
            except DspexLabError as error:
                self.tables.annotation_message = f"not withdrawn: {' '.join(str(error).split())}"

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
        self.tables.annotation_message = ""
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


def _experiment_row(row: dict[str, Any], summary: dict[str, Any] | None) -> dict[str, Any]:
    n_trials, n_errors = int(row["n_trials"]), int(row["n_errors"])
    # The journal's leaderboard gives every view the same mean and interval (never re-derived here).
    mean, low, high = json_number(row["mean"]), json_number(row["ci_low"]), json_number(row["ci_high"])
    method = row.get("ci_method") if isinstance(row.get("ci_method"), str) else ""
    n = n_trials - n_errors
    if isinstance(summary, dict) and isinstance(summary.get("n"), int) and row["kind"] == "evaluation":
        n = int(summary["n"])
    created = row["created_at"]
    if created is not None and hasattr(created, "isoformat") and not _missing(created):
        created = created.isoformat(sep=" ", timespec="seconds")
    return {
        "id": row["experiment_id"],
        "name": row["name"],
        "kind": row["kind"],
        "status": row["status"],
        "model": row["model"] if isinstance(row["model"], str) else "",
        "mean": mean,
        "ci_low": low,
        "ci_high": high,
        "ci_method": method,
        "n": n,
        "n_trials": n_trials,
        "n_errors": n_errors,
        "created": None if _missing(created) else str(created),
        "parent": row.get("parent_id") if isinstance(row.get("parent_id"), str) else None,
        "role": row.get("role") if isinstance(row.get("role"), str) else None,
        "depth": 1 if isinstance(row.get("parent_id"), str) else 0,
        "n_children": int(row.get("n_children") or 0),
    }


def _count_note(rows: list[dict[str, Any]], listed: list[dict[str, Any]]) -> str:
    """Say how many experiments the table shows of those read, and how many nested ones (``2 of 8 ...``)."""
    top = [row for row in rows if not row["depth"]]
    shown = sum(1 for row in listed if not row["depth"])
    note = f"{shown} of {len(top)} experiment{'' if len(top) == 1 else 's'} shown"
    if len(top) >= _EXPERIMENT_LIMIT:
        note += f" (the newest {_EXPERIMENT_LIMIT})"
    nested = sum(row["n_children"] for row in top)
    if nested:
        runs = sum(1 for row in top if row["n_children"])
        shown_nested = sum(1 for row in listed if row["depth"])
        note += f" · {shown_nested} of {nested} nested in {runs} run{'' if runs == 1 else 's'} shown"
    return note


def _missing(value: Any) -> bool:
    # pandas gives NaT or NaN for a missing timestamp or text.
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value) == "NaT"


def _trial_row(row: dict[str, Any], spans: int, label: str) -> dict[str, Any]:
    message = row.get("error_message")
    message = message if isinstance(message, str) else ""
    if len(message) > _MESSAGE_CHARACTERS:
        message = message[: _MESSAGE_CHARACTERS - 1] + "…"
    error_type = row.get("error_type")
    return {
        "trial_id": row["trial_id"],
        "example_id": row["example_id"],
        "repeat": int(row["repeat"]),
        "status": row["status"],
        "score": json_number(row.get("score")),
        "error_type": error_type if isinstance(error_type, str) else "",
        "error_message": message,
        "latency": json_number(row.get("latency")),
        "tokens": int(json_number(row.get("input_tokens")) or 0) + int(json_number(row.get("output_tokens")) or 0),
        "cost": json_number(row.get("cost")),
        "spans": spans,
        "label": label,
    }
