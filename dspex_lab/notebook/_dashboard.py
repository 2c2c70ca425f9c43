"""The journal dashboard: a Panel app over one journal, served by Panel's (bokeh's) server.

Four pages — experiments, compare, trace, optimization — each drawn from one function of
:mod:`dspex_lab.notebook._dashboard_data`. A session opens on the experiments page; each other page
is queried and drawn the first time it is shown, so a session starts without the comparison's
statistics (scipy), the trace page's pricing (DSPy) or the optimization page's four plots, which
were most of a start-up (bench/README.md, ``bench_dashboard.py --startup``). Every browser session
gets its own :class:`Dashboard`,
which checks the journal files every two seconds (two ``stat`` calls) and re-queries only when
they changed, so a kernel writing to the same journal shows up without a reload and an idle
dashboard costs the writer nothing. The server binds 127.0.0.1 unless told otherwise, because
the journal holds prompts, answers and program specs.
"""

from __future__ import annotations

import contextlib
import html
import ipaddress
import math
import os
import socket
import threading
import time
import warnings
from typing import TYPE_CHECKING, Any

import pandas as pd

from dspex_lab.errors import DspexLabError, DspexLabWarning, JournalError, MissingDependencyError
from dspex_lab.notebook._dashboard_data import (
    ComparisonView,
    board_note,
    comparison_view,
    journal_signature,
    leaderboard_frame,
    nested_html,
    trace_html,
    trace_rows,
    trial_frame,
    trial_table,
    why_frame,
)
from dspex_lab.notebook._dashboard_optimization import (
    compile_run_note,
    history_data,
    history_plot,
    importance_data,
    importance_plot,
    is_compile_run,
    pareto_note,
    timeline_frame,
    timeline_note,
    timeline_plot,
)

if TYPE_CHECKING:
    from dspex_lab.journal import JournalStore
    from dspex_lab.notebook._trace_data import ExampleFields, SpanSearch

__all__ = ["Dashboard", "DashboardServer", "serve_dashboard"]

# The pages, in the order of their tabs; the first is drawn when a session starts, each other when first shown.
PAGES = ("experiments", "compare", "trace", "optimization")
KINDS = ("evaluation", "comparison", "optimization")
# What an experiment can be: running, or how it ended (a budget or max_errors stop is "stopped").
STATUSES = ("running", "finished", "stopped", "interrupted", "failed")
# The optimization page's views of a run, in the order of their tabs.
RUN_VIEWS = ("convergence", "history", "timeline", "importance", "pareto")
# The trace page's sort menu: label -> trial column (one of the journal's TRIAL_SORTS).
TRIAL_SORTS = {
    "example order": "example_index",
    "score": "score",
    "latency": "latency",
    "status": "status",
    "error type": "error_type",
    "trial id": "trial_id",
}
# Rows of the leaderboard drawn as points with intervals; the table below holds them all.
_PLOTTED_EXPERIMENTS = 40
_TRIALS_PER_PAGE = 50
# The trial table's text columns start this wide (pixels); every column is resized by dragging its edge.
_TRIAL_TABLE_WIDTHS = {"trial": 110, "question": 320, "expected": 110, "answer": 150, "label": 110, "error": 180}
# A span search lists this many matching spans at most (the count says how many match in all).
_SEARCH_SHOWN = 200
_LEADERBOARD_SHOWN = (
    "experiment_id", "name", "kind", "status", "program", "model", "n_trials", "n_errors", "mean", "ci_low",
    "ci_high", "created_at", "n_children", "role",
)  # fmt: skip


def _panel() -> Any:
    try:
        import panel as pn
    except ImportError as error:  # pragma: no cover - exercised only without the dashboard extra
        raise MissingDependencyError("panel", "dashboard") from error
    return pn


def _holoviews() -> Any:
    try:
        import holoviews as hv
    except ImportError as error:  # pragma: no cover - exercised only without the dashboard extra
        raise MissingDependencyError("holoviews", "dashboard") from error
    if "bokeh" not in hv.Store.renderers:
        # The plots are drawn with bokeh: importing its holoviews backend registers it (and makes it current)
        # once per process, writing nothing anywhere. hv.extension would also put bokeh's whole script (or a
        # CDN link) in the output of the notebook cell that runs `%dspex dashboard`, which a served dashboard
        # never needs: its pages get bokeh's and panel's scripts from their own server's /static. Shown
        # inline in a notebook, the pages need pn.extension(inline=True) first, as any panel object does.
        import holoviews.plotting.bokeh  # registers the bokeh backend (its import is the point)
    return hv


class Dashboard:
    """One session's pages over a journal; :attr:`view` is the Panel layout to serve or display.

    Thread safety: a dashboard belongs to one Panel session (its callbacks run on that session's
    thread); the journal it reads may be written by other threads and processes at the same time.

    Args:
        journal: the journal to show.
        refresh_seconds: how often a served session checks the journal for changes.
    """

    def __init__(self, journal: JournalStore, *, refresh_seconds: float = 2.0) -> None:
        pn = _panel()
        self.journal = journal
        self.refresh_seconds = refresh_seconds
        self.board = pd.DataFrame()
        self.comparison: ComparisonView | None = None
        self.trials = pd.DataFrame()
        self.trials_total = 0
        # The trace page's experiment: its examples (question, expected) and its spans' text (search).
        self._trace_data: tuple[str, ExampleFields, SpanSearch] | None = None
        self.matches = pd.DataFrame()
        self.shown_trial = ""
        # The trace page's experiment's labels in force, by trial id (read with each page of trials).
        self.labels: dict[str, str] = {}
        self._signature = journal_signature(journal)
        # Each experiment's status at the last refresh: pages of finished experiments need no re-query.
        self._statuses: dict[str, str] = {}
        self._callback: Any = None
        self.status = pn.pane.Markdown("", sizing_mode="stretch_width")
        self._experiments_widgets(pn)
        self._compare_widgets(pn)
        self._trace_widgets(pn)
        self._annotation_widgets(pn)
        self._optimization_widgets(pn)
        # Pages drawn so far; the others are empty holders, filled and queried by open_page.
        self.opened: set[str] = {"experiments"}
        self._holders = {page: pn.Column(sizing_mode="stretch_width") for page in PAGES[1:]}
        self.tabs = pn.Tabs(
            ("Experiments", self._experiments_page()),
            ("Compare", self._holders["compare"]),
            ("Trace", self._holders["trace"]),
            ("Optimization", self._holders["optimization"]),
            dynamic=False,
        )
        self.tabs.param.watch(lambda event: self.open_page(PAGES[event.new]), "active")
        self.view = pn.Column(
            pn.pane.Markdown(f"## dspex dashboard — {journal.location}"),
            self.status,
            self.tabs,
            sizing_mode="stretch_width",
        )
        self.refresh(force=True)

    def open_page(self, page: str) -> None:
        """Show one page (``compare``, ``trace``...), querying and drawing it the first time it is shown."""
        if page not in PAGES:
            raise ValueError(f"no dashboard page {page!r}; the pages are {', '.join(PAGES)}")
        if self.tabs.active != PAGES.index(page):
            self.tabs.active = PAGES.index(page)  # its watcher comes back here
            return
        if page in self.opened:
            return
        self.opened.add(page)
        if page == "compare":
            self._holders[page].objects = [self._compare_page()]
            if not (self.compare_a.value and self.compare_b.value):
                self._choose_pair()
            self.refresh_comparison()
        elif page == "trace":
            self._holders[page].objects = [self._trace_page()]
            self._first_trial_page()
        elif page == "optimization":
            self._holders[page].objects = [self._optimization_page()]
            self.refresh_run()

    def _when_open(self, page: str, draw: Any) -> None:
        # A page not shown yet is drawn when it is: a menu set meanwhile (its default) costs no query.
        if page in self.opened:
            draw()

    # -- widgets: each page's controls and panes, watched so a change redraws that page ----------

    def _experiments_widgets(self, pn: Any) -> None:
        """Make the experiments page's filters, table and leaderboard plot."""
        self.name_filter = pn.widgets.TextInput(label="Name contains", placeholder="any name")
        self.kind_filter = pn.widgets.Select(label="Kind", options=["", *KINDS])
        self.status_filter = pn.widgets.Select(label="Status", options=["", *STATUSES])
        # Runs nest: an optimization's candidate evaluations are folded under it (its row's ▸ shows them),
        # or listed under their runs with this box ticked.
        self.show_nested = pn.widgets.Checkbox(label="Show nested runs")
        self.board_count = pn.pane.Markdown("", sizing_mode="stretch_width")
        self.table = pn.widgets.Tabulator(
            pd.DataFrame(columns=list(_LEADERBOARD_SHOWN)),
            disabled=True,
            show_index=False,
            pagination="local",
            page_size=20,
            sizing_mode="stretch_width",
            row_content=self._nested_rows,
        )
        self.leaderboard_plot = pn.pane.HoloViews(None, sizing_mode="stretch_width")
        for widget in (self.name_filter, self.kind_filter, self.status_filter, self.show_nested):
            widget.param.watch(lambda _event: self.refresh_leaderboard(), "value")

    def _compare_widgets(self, pn: Any) -> None:
        """Make the compare page's two menus, its summary and its two plots."""
        self._pairing = False  # True while _choose_pair sets both menus: one drawing, after both
        self.compare_a = pn.widgets.Select(label="Baseline (a)", options={})
        self.compare_b = pn.widgets.Select(label="Compared (b)", options={})
        self.compare_summary = pn.pane.Markdown("Pick two evaluations.", sizing_mode="stretch_width")
        self.difference_plot = pn.pane.HoloViews(None)
        self.scatter_plot = pn.pane.HoloViews(None)
        for widget in (self.compare_a, self.compare_b):
            widget.param.watch(lambda _event: self._pair_changed(), "value")

    def _trace_widgets(self, pn: Any) -> None:
        """Make the trace page's menus, paging buttons, trial table and span tree."""
        self.trace_experiment = pn.widgets.Select(label="Experiment", options={})
        self.trial_status = pn.widgets.Select(label="Trial status", options=["", "ok", "error"])
        self.trial_sort = pn.widgets.Select(label="Sort by", options=TRIAL_SORTS)
        self.trial_descending = pn.widgets.Checkbox(label="descending")
        self.trial_offset = 0
        self.previous_page = pn.widgets.Button(label="◀ previous", width=100)
        self.next_page = pn.widgets.Button(label="next ▶", width=100)
        self.trial_count = pn.pane.Markdown("")
        # Sorted by the menu in the journal (across pages), so the headers do not sort one page.
        self.trial_table = pn.widgets.Tabulator(
            pd.DataFrame(),
            disabled=True,
            show_index=False,
            selectable=1,
            sortable=False,
            widths=_TRIAL_TABLE_WIDTHS,
            text_align={"score": "right", "tokens": "right", "cost": "right", "latency": "right"},
            sizing_mode="stretch_width",
            height=320,
        )
        self.trace_view = pn.pane.HTML("Select a trial.", sizing_mode="stretch_width")
        self.span_select = pn.widgets.Select(label="Span", options={}, sizing_mode="stretch_width")
        self.span_view = pn.pane.HTML("Select a span.", sizing_mode="stretch_width")
        self.span_search = pn.widgets.TextInput(
            label="Search the experiment's spans", placeholder="text in span names, prompts, completions or errors"
        )
        self.search_count = pn.pane.Markdown("")
        self.search_results = pn.widgets.Tabulator(
            pd.DataFrame(columns=["trial", "span", "text"]),
            disabled=True,
            show_index=False,
            selectable=1,
            widths={"trial": 110, "span": 200},
            sizing_mode="stretch_width",
            height=200,
            visible=False,
        )
        for widget in (self.trace_experiment, self.trial_status, self.trial_sort, self.trial_descending):
            widget.param.watch(lambda _event: self._when_open("trace", self._first_trial_page), "value")
        self.previous_page.on_click(lambda _event: self._move_trial_page(-1))
        self.next_page.on_click(lambda _event: self._move_trial_page(1))
        self.trial_table.param.watch(lambda _event: self.refresh_trace(), "selection")
        self.span_select.param.watch(lambda _event: self.refresh_span(), "value")
        # Each keystroke searches (not only Enter or leaving the box): the spans' text is held in memory.
        self.span_search.param.watch(lambda event: self.search_spans(event.new), "value_input")
        self.search_results.param.watch(lambda _event: self._open_match(), "selection")

    def _annotation_widgets(self, pn: Any) -> None:
        """Make the trace page's form that annotates the selected trial (a label, a note, a corrected gold)."""
        from dspex_lab.notebook._annotating import LABEL_PRESETS

        self.annotation_title = pn.pane.Markdown("#### Annotate: select a trial")
        self.annotation_preset = pn.widgets.Select(label="Preset", options=["", *LABEL_PRESETS], width=140)
        self.annotation_label = pn.widgets.TextInput(label="Label", placeholder="a short tag", width=200)
        self.annotation_note = pn.widgets.TextAreaInput(label="Note", placeholder="why", height=60, width=360)
        self.annotation_gold = pn.widgets.TextInput(
            label="Corrected gold", placeholder='42, or {"answer": "42"}', width=220
        )
        self.annotate_button = pn.widgets.Button(label="Annotate", width=100)
        self.withdraw_button = pn.widgets.Button(label="Withdraw", width=100)
        self.annotation_message = pn.pane.Markdown("", sizing_mode="stretch_width")
        self.annotation_preset.param.watch(lambda event: self._choose_preset(event.new), "value")
        self.annotate_button.on_click(lambda _event: self.annotate_selected())
        self.withdraw_button.on_click(lambda _event: self.withdraw_selected())

    def _optimization_widgets(self, pn: Any) -> None:
        """Make the optimization page's run menu, headline, history, timeline, convergence plot and why table."""
        self.run_select = pn.widgets.Select(label="Optimization run", options={})
        self.history_plot = pn.pane.HoloViews(None)
        self.timeline_plot = pn.pane.HoloViews(None)
        self.timeline_note = pn.pane.HTML("", sizing_mode="stretch_width")
        self.timeline = pd.DataFrame()
        self.importance_plot = pn.pane.HoloViews(None)
        self.importance_table = pn.pane.HTML("", sizing_mode="stretch_width")
        self.importance = pd.DataFrame()
        self.pareto_plot = pn.pane.HoloViews(None)
        self.pareto_note = pn.pane.HTML("", sizing_mode="stretch_width")
        self.pareto = pd.DataFrame()
        self.run_plot = pn.pane.HoloViews(None)
        self.run_message = pn.pane.Markdown("")
        # The run's figures, one tab each (the order of RUN_VIEWS); a DSPy compile autolog journaled opens on
        # its timeline, the one figure it has.
        self.run_views = pn.Tabs(
            ("Convergence", self.run_plot),
            ("History", self.history_plot),
            ("Timeline", pn.Column(self.timeline_note, self.timeline_plot, sizing_mode="stretch_width")),
            ("Importance", pn.Column(self.importance_plot, self.importance_table, sizing_mode="stretch_width")),
            ("Pareto", pn.Column(self.pareto_note, self.pareto_plot, sizing_mode="stretch_width")),
            dynamic=True,
        )
        self.why_table = pn.widgets.Tabulator(
            pd.DataFrame(),
            disabled=True,
            show_index=False,
            widths={"rationale": 300, "step outcome": 300},
            sizing_mode="stretch_width",
            height=320,
        )
        self.run_select.param.watch(lambda _event: self._when_open("optimization", self.refresh_run), "value")

    # -- layout --------------------------------------------------------------------------------

    def _experiments_page(self) -> Any:
        pn = _panel()
        return pn.Column(
            pn.Row(self.name_filter, self.kind_filter, self.status_filter, self.show_nested),
            self.board_count,
            self.leaderboard_plot,
            self.table,
            sizing_mode="stretch_width",
        )

    def _compare_page(self) -> Any:
        pn = _panel()
        return pn.Column(
            pn.Row(self.compare_a, self.compare_b),
            self.compare_summary,
            pn.Row(self.difference_plot, self.scatter_plot),
            sizing_mode="stretch_width",
        )

    def _trace_page(self) -> Any:
        pn = _panel()
        return pn.Column(
            pn.Row(self.trace_experiment, self.trial_status, self.trial_sort, self.trial_descending),
            pn.Row(self.previous_page, self.next_page, self.trial_count),
            self.trial_table,
            self.annotation_title,
            pn.Row(
                self.annotation_preset,
                self.annotation_label,
                self.annotation_note,
                self.annotation_gold,
                pn.Column(pn.Spacer(height=18), self.annotate_button),
                pn.Column(pn.Spacer(height=18), self.withdraw_button),
            ),
            self.annotation_message,
            pn.Row(self.span_search, self.search_count),
            self.search_results,
            pn.Row(
                pn.Column(self.trace_view, sizing_mode="stretch_width"),
                pn.Column(self.span_select, self.span_view, sizing_mode="stretch_width"),
                sizing_mode="stretch_width",
            ),
            sizing_mode="stretch_width",
        )

    def _optimization_page(self) -> Any:
        pn = _panel()
        return pn.Column(
            self.run_select,
            self.run_message,
            # One figure at a time: the convergence panels' grid was drawn off its frames (bokeh 3.9, panel 1.9)
            # when other plots shared its column; each view is drawn when it is opened.
            self.run_views,
            pn.pane.Markdown("#### Why: each candidate, what was decided and on what evidence"),
            self.why_table,
            sizing_mode="stretch_width",
        )

    # -- refreshing ----------------------------------------------------------------------------

    def start(self) -> Dashboard:
        """Check the journal every ``refresh_seconds`` in the current Panel session; return self."""
        pn = _panel()
        if self._callback is None:
            self._callback = pn.state.add_periodic_callback(self.refresh, period=int(self.refresh_seconds * 1000))
        return self

    def refresh(self, *, force: bool = False) -> bool:
        """Re-query the pages if the journal changed on disk (or always, with ``force``).

        Returns:
            Whether the pages were re-queried.
        """
        signature = journal_signature(self.journal)
        if not force and signature == self._signature:
            return False
        self._signature = signature
        before = (self.compare_a.value, self.compare_b.value, self.trace_experiment.value, self.run_select.value)
        was_running = {key for key, value in self._statuses.items() if value == "running"}
        self.refresh_leaderboard()
        # Setting a menu's first value draws its page (a watcher); pages already drawn are redrawn here,
        # and only if what they show can have changed: a finished experiment's trials never change.
        self._refresh_menus()
        changing = was_running | {key for key, value in self._statuses.items() if value == "running"}

        def may_change(*experiment_ids: str) -> bool:
            return any(key not in self._statuses or key in changing for key in experiment_ids)

        if before[2] and self.trace_experiment.value == before[2] and may_change(before[2]):
            self._when_open("trace", self.refresh_trials)
        elif before[2] and self.trace_experiment.value == before[2]:
            self._when_open("trace", self._refresh_labels)  # another process may have annotated its trials
        same_pair = (self.compare_a.value, self.compare_b.value) == before[:2]
        if before[0] and before[1] and same_pair and may_change(before[0], before[1]):
            self._when_open("compare", self.refresh_comparison)
        elif "compare" in self.opened and not (before[0] and before[1]) and self._choose_pair():
            self.refresh_comparison()
        if before[3] and self.run_select.value == before[3] and may_change(before[3]):
            self._when_open("optimization", self.refresh_run)
        self._show_status()
        return True

    def _show_status(self) -> None:
        # What the experiments page shows under its filters, counted again whenever they change.
        self.status.object = f"Updated {time.strftime('%H:%M:%S')} · {self.board_count.object}"

    def refresh_leaderboard(self) -> None:
        """Re-query the experiments page with the current filters and redraw it."""
        self.board = leaderboard_frame(
            self.journal,
            name=self.name_filter.value,
            kind=self.kind_filter.value,
            status=self.status_filter.value,
            children=self.show_nested.value,
        )
        self.board_count.object = board_note(self.journal, self.board)
        shown = self.board[[column for column in _LEADERBOARD_SHOWN if column in self.board.columns]].copy()
        if "parent_id" in self.board:
            # A nested experiment sits right after its run (the leaderboard's order): marked, as in the browser.
            inner = self.board["parent_id"].notna()
            shown.loc[inner, "name"] = "↳ " + shown.loc[inner, "name"].astype(str)
            shown["role"] = shown["role"].fillna("")
        if "created_at" in shown:
            shown["created_at"] = shown["created_at"].astype(str).str.slice(0, 19)
        for column in ("mean", "ci_low", "ci_high"):
            if column in shown:
                shown[column] = shown[column].astype(float).round(4)
        self.table.expanded = []
        self.table.value = shown.rename(columns={"n_children": "nested"})
        self.leaderboard_plot.object = self._leaderboard_drawing(self.board)
        self._show_status()

    def _nested_rows(self, row: pd.Series) -> Any:
        """Return what a leaderboard row shows when expanded: the experiments nested in it."""
        pn = _panel()
        nested = self.journal.leaderboard(parent=str(row["experiment_id"]), limit=10_000)
        return pn.pane.HTML(nested_html(nested), sizing_mode="stretch_width")

    def _leaderboard_drawing(self, board: pd.DataFrame) -> Any:
        hv = _holoviews()
        scored = board[board["mean"].notna()].head(_PLOTTED_EXPERIMENTS) if len(board) else board
        if not len(scored):
            return None
        frame = pd.DataFrame(
            {
                "experiment": scored["label"].astype(str),
                "mean": scored["mean"].astype(float),
                "below": (scored["mean"] - scored["ci_low"]).astype(float).fillna(0.0),
                "above": (scored["ci_high"] - scored["mean"]).astype(float).fillna(0.0),
                "n": scored["n_trials"],
            }
        ).iloc[::-1]  # newest at the top once the axes are inverted
        bars = hv.ErrorBars(frame, "experiment", ["mean", "below", "above"])
        points = hv.Scatter(frame, "experiment", ["mean", "n"]).opts(size=8, tools=["hover"])
        height = 80 + 22 * len(frame)
        return (bars * points).opts(
            invert_axes=True,
            height=height,
            responsive=True,
            title="Mean score with 95% interval (Wilson for 0/1 scores, t otherwise; newest at the top)",
            xlabel="",
            ylabel="mean score",
            show_grid=True,
        )

    def _refresh_menus(self) -> None:
        # The menus list every experiment, nested ones too, whatever the leaderboard shows.
        board = leaderboard_frame(self.journal, children=True)
        # An optimization's own evaluations (those with a parent) come after the researcher's, newest first in each.
        board = board.assign(nested=board["parent_id"].notna() if "parent_id" in board else False)
        board = board.sort_values("nested", kind="stable")
        self._statuses = dict(zip(board["experiment_id"], board["status"], strict=True))
        evaluations = board[board["kind"] == "evaluation"]
        options = dict(zip(evaluations["label"], evaluations["experiment_id"], strict=True))
        runs = board[board["kind"] == "optimization"]
        run_options = dict(zip(runs["label"], runs["experiment_id"], strict=True))
        newest = list(evaluations.loc[~evaluations["nested"], "experiment_id"]) or list(options.values())
        for select in (self.compare_a, self.compare_b, self.trace_experiment):
            _set_options(select, {"": "", **options})
        # A page opens on something to look at: the newest evaluation, the newest run (the compare page's
        # pair is chosen when it is first shown: _choose_pair).
        if not self.trace_experiment.value and newest:
            self.trace_experiment.value = newest[0]
        _set_options(self.run_select, {"": "", **run_options})
        if not self.run_select.value and run_options:
            self.run_select.value = next(iter(run_options.values()))

    def _choose_pair(self) -> bool:
        """Set the compare page's menus to the newest evaluation and the one sharing most examples with it.

        The two newest evaluations may share nothing (two datasets): the page would open on an empty plot.

        Returns:
            Whether a pair was set (the caller draws it).
        """
        pair = self.journal.comparable_pair()
        if pair is None or pair[0] not in self.compare_a.values or pair[1] not in self.compare_b.values:
            return False
        self._pairing = True
        try:
            self.compare_a.value, self.compare_b.value = pair[0], pair[1]  # a: the baseline, b: the newest
        finally:
            self._pairing = False
        return True

    def _pair_changed(self) -> None:
        if not self._pairing:
            self._when_open("compare", self.refresh_comparison)

    def refresh_comparison(self) -> None:
        """Redraw the compare page for the two selected experiments."""
        a, b = self.compare_a.value, self.compare_b.value
        if not a or not b:
            self.comparison = None
            self.compare_summary.object = "Pick two evaluations."
            self.difference_plot.object = self.scatter_plot.object = None
            return
        try:
            self.comparison = comparison_view(self.journal, a, b)
        except DspexLabError as error:
            self.comparison = None
            self.compare_summary.object = f"**Cannot compare:** {error}"
            self.difference_plot.object = self.scatter_plot.object = None
            return
        view = self.comparison
        self.compare_summary.object = _comparison_text(view)
        if view.pairs.empty:  # no example scored in both: the line above says so, with no empty plot
            self.difference_plot.object = self.scatter_plot.object = None
            return
        self.difference_plot.object = _difference_drawing(view)
        self.scatter_plot.object = _scatter_drawing(view)

    def _first_trial_page(self) -> None:
        self.trial_offset = 0
        self.refresh_trials()
        if len(self.trials) and self.trial_table.selection == [0]:
            self.refresh_trace()  # the same row of another experiment: the selection's watcher does not fire
        elif len(self.trials):
            self.trial_table.selection = [0]
        else:
            self.trace_view.object = "Select a trial."

    def _move_trial_page(self, direction: int) -> None:
        offset = self.trial_offset + direction * _TRIALS_PER_PAGE
        if 0 <= offset < max(self.trials_total, 1):
            self.trial_offset = offset
            self.refresh_trials()

    def refresh_trials(self) -> None:
        """Re-query the trace page's table of trials (one page, filtered and sorted in the journal)."""
        experiment_id = self.trace_experiment.value
        if not experiment_id:
            self.trials, self.trials_total = pd.DataFrame(), 0
        else:
            self.trials, self.trials_total = trial_frame(
                self.journal,
                experiment_id,
                status=self.trial_status.value,
                sort=self.trial_sort.value,
                descending=self.trial_descending.value,
                limit=_TRIALS_PER_PAGE,
                offset=self.trial_offset,
            )
        shown = self.trials
        self.labels = {}
        if experiment_id and not shown.empty:
            from dspex_lab.notebook._annotating import current_labels

            self.labels = current_labels(self.journal, experiment_id)
            shown = trial_table(shown, self._experiment_data(experiment_id)[0], self.labels)
        self.trial_table.value = shown
        last = min(self.trial_offset + _TRIALS_PER_PAGE, self.trials_total)
        first = self.trial_offset + 1 if self.trials_total else 0
        self.trial_count.object = f"trials {first} to {last} of {self.trials_total:,}"

    def _refresh_labels(self) -> None:
        """Re-query the trial table if its experiment's labels in force changed (one annotations read)."""
        from dspex_lab.notebook._annotating import current_labels

        experiment_id = self.trace_experiment.value
        if not experiment_id or current_labels(self.journal, experiment_id) == self.labels:
            return
        selection = list(self.trial_table.selection)
        self.refresh_trials()
        self.trial_table.selection = selection
        self._show_annotation_title(self.selected_trial())

    def _experiment_data(self, experiment_id: str) -> tuple[ExampleFields, SpanSearch]:
        """Return the trace page's experiment's examples and span search, read once per experiment."""
        from dspex_lab.notebook._trace_data import ExampleFields, SpanSearch

        if self._trace_data is None or self._trace_data[0] != experiment_id:
            record = self.journal.experiment(experiment_id)
            fields = ExampleFields(self.journal, record)
            self._trace_data = (experiment_id, fields, SpanSearch(self.journal, experiment_id))
        return self._trace_data[1], self._trace_data[2]

    def show_trace(self, trial_id: str, *, span_id: str | None = None) -> None:
        """Draw one trial's span tree of the selected experiment, and a span's detail (default: its metric's)."""
        experiment_id = self.trace_experiment.value
        try:
            rows = trace_rows(self.journal, experiment_id, trial_id)
        except DspexLabError as error:
            self.trace_view.object = f'<p class="dspex-trace-note">{html.escape(str(error))}</p>'
            self.shown_trial = ""
            self.span_select.options = {}
            self.span_view.object = "Select a span."
            return
        self.shown_trial = trial_id
        self.trace_view.object = f"<h4>Trial {html.escape(trial_id)} — {len(rows)} spans</h4>" + trace_html(rows)
        # Numbered, so two spans of one name stay two entries; indented by depth, as in the tree.
        options = {
            f"{position}. {chr(0xA0) * 2 * row['depth']}{row['kind']} {row['name']}": row["span_id"]
            for position, row in enumerate(rows, start=1)
        }
        metric = next((row["span_id"] for row in rows if row["kind"] == "metric"), None)
        chosen = span_id if span_id in options.values() else metric or next(iter(options.values()), None)
        self.span_select.options = options
        if self.span_select.value == chosen:
            self.refresh_span()  # the same id in another trial: the watcher does not fire
        else:
            self.span_select.value = chosen

    def refresh_span(self) -> None:
        """Draw the detail of the span chosen in the trace page's span menu: prompt, completion, expected vs got."""
        from dspex_lab.notebook._trace_data import detail_html, span_detail

        span_id = self.span_select.value
        experiment_id = self.trace_experiment.value
        if not span_id or not self.shown_trial or not experiment_id:
            self.span_view.object = "Select a span."
            return
        spans = self.journal.spans(experiment_id, self.shown_trial)
        chosen = next((span for span in spans if span.span_id == span_id), None)
        if chosen is None:
            self.span_view.object = f"No span {html.escape(span_id)} in trial {html.escape(self.shown_trial)}."
            return
        fields, _ = self._experiment_data(experiment_id)
        # The trial's root span names its example (the question and the gold fields are the example's).
        root = next((span for span in spans if span.kind == "trial"), None)
        example_id = str(root.json_attributes.get("example_id") or "") if root is not None else ""
        self.span_view.object = detail_html(span_detail(chosen, fields, example_id))

    def search_spans(self, text: str | None) -> None:
        """List the spans of the trace page's experiment whose name, prompt, completion or error holds ``text``."""
        experiment_id = self.trace_experiment.value
        if not experiment_id or not (text or "").strip():
            self.matches = pd.DataFrame()
            self.search_results.visible = False
            self.search_count.object = ""
            return
        _, search = self._experiment_data(experiment_id)
        found, total = search.find(text or "", limit=_SEARCH_SHOWN)
        self.matches = pd.DataFrame(found, columns=["trial_id", "span_id", "kind", "name", "snippet"])
        trials = len(set(self.matches["trial_id"]))
        where = f" in {trials:,} trial{'s' if trials != 1 else ''}"
        if total > _SEARCH_SHOWN:
            where = f", the first {_SEARCH_SHOWN} listed"
        self.search_count.object = f"{total:,} matching span{'s' if total != 1 else ''}{where}" if total else "no match"
        self.search_results.value = pd.DataFrame(
            {
                "trial": self.matches["trial_id"],
                "span": self.matches["kind"] + " " + self.matches["name"],
                "text": self.matches["snippet"],
            }
        )
        self.search_results.visible = bool(total)

    def _open_match(self) -> None:
        selection = self.search_results.selection
        if selection and selection[0] < len(self.matches):
            match = self.matches.iloc[selection[0]]
            self.show_trace(str(match["trial_id"]), span_id=str(match["span_id"]))

    def refresh_trace(self) -> None:
        """Draw the span tree of the trial selected in the trace page's table."""
        trial = self.selected_trial()
        self._show_annotation_title(trial)
        if trial is not None:
            self.show_trace(str(trial["trial_id"]))

    def selected_trial(self) -> dict[str, Any] | None:
        """Return the row (of :func:`trial_frame`) of the trial selected in the trace page's table, if any."""
        selection = self.trial_table.selection
        if selection and selection[0] < len(self.trials):
            return dict(self.trials.iloc[selection[0]])
        return None

    def _show_annotation_title(self, trial: dict[str, Any] | None) -> None:
        if trial is None:
            self.annotation_title.object = "#### Annotate: select a trial"
            return
        trial_id = str(trial["trial_id"])
        label = self.labels.get(trial_id)
        now = f" (its label now: {label})" if label else " (not annotated)"
        self.annotation_title.object = f"#### Annotate {trial_id}{now}"

    def _choose_preset(self, preset: str) -> None:
        if preset:
            self.annotation_label.value = self.annotation_label.value_input = preset

    def annotate_selected(self) -> None:
        """Annotate the selected trial with the form's label, note and corrected gold, then show its label.

        The write goes through ``journal.annotate`` (author: the operating system's user); what it
        refuses (an empty annotation, a text past its bound, an unreadable gold) is shown as one line.
        """
        from dspex_lab.notebook._annotating import annotate_trial

        target = self._annotation_target("Select a trial to annotate.")
        if target is None:
            return
        trial, experiment_id = target
        try:
            said = annotate_trial(
                self.journal,
                trial,
                experiment_id=experiment_id,
                fields=self._experiment_data(experiment_id)[0],
                label=self.annotation_label.value_input or "",
                note=self.annotation_note.value_input or "",
                gold=self.annotation_gold.value_input or "",
            )
        except DspexLabError as error:
            self.annotation_message.object = f"Not annotated: {html.escape(str(error))}"
            return
        self._annotated(trial, said)
        self.annotation_note.value = self.annotation_note.value_input = ""
        self.annotation_gold.value = self.annotation_gold.value_input = ""

    def withdraw_selected(self) -> None:
        """Withdraw the selected trial's annotation in force (journaled, kept in the history), then show it has none.

        What the journal refuses (a trial with no annotation in force) is shown as one line.
        """
        from dspex_lab.notebook._annotating import withdraw_trial

        target = self._annotation_target("Select a trial whose annotation to withdraw.")
        if target is None:
            return
        trial, experiment_id = target
        try:
            said = withdraw_trial(self.journal, trial, experiment_id=experiment_id)
        except DspexLabError as error:
            self.annotation_message.object = f"Not withdrawn: {html.escape(str(error))}"
            return
        self._annotated(trial, said)

    def _annotation_target(self, missing: str) -> tuple[dict[str, Any], str] | None:
        """Return the selected trial and its experiment for the annotate form, or say ``missing`` and return None."""
        trial = self.selected_trial()
        experiment_id = self.trace_experiment.value
        if trial is None or not experiment_id:
            self.annotation_message.object = missing
            return None
        return trial, experiment_id

    def _annotated(self, trial: dict[str, Any], said: str) -> None:
        """Show a trial's new label in force after the form wrote to the journal, keeping it selected."""
        selection = list(self.trial_table.selection)
        self.refresh_trials()
        self.trial_table.selection = selection
        self._show_annotation_title(trial)
        self.annotation_message.object = html.escape(said)

    def refresh_run(self) -> None:
        """Draw the selected optimization run's history, timeline, convergence and lineage, and its why table."""
        run_id = self.run_select.value
        if not run_id:
            self.timeline = pd.DataFrame()
            self.run_plot.object = self.history_plot.object = self.timeline_plot.object = None
            self.run_message.object = self.timeline_note.object = ""
            self.why_table.value = pd.DataFrame()
            self.refresh_importance(None)
            self.refresh_pareto(None)
            return
        from dspex_lab.optimization import OptimizationResult

        if self._draw_compile_run(run_id):
            return
        try:
            result = OptimizationResult.from_journal(self.journal, run_id)
        except DspexLabError as error:
            # A run without a finished baseline has no result yet, but its evaluations have times.
            result = None
            self.why_table.value = pd.DataFrame()
            self.run_plot.object = self.history_plot.object = None
            self.run_message.object = f"**Cannot draw run {run_id}:** {error}"
        # With the candidates known, each bar is coloured by what became of its candidate.
        self.timeline = timeline_frame(self.journal, run_id, result.candidates if result is not None else None)
        self.timeline_plot.object = timeline_plot(self.timeline)
        self.timeline_note.object = timeline_note(self.timeline)
        self.refresh_importance(run_id)
        self.refresh_pareto(result)
        if result is None:
            return
        try:
            self.history_plot.object = history_plot(history_data(result.steps, result.candidates))
            self.run_plot.object = result.plot()
            # The run's claim is its held-out test's headline; the plot's validation means are selection data.
            self.run_message.object = (
                f"**{html.escape(result.headline)}** {html.escape(result.optimistic.capitalize())}."
            )
            self.why_table.value = why_frame(result).round(4)
        except DspexLabError as error:
            self.why_table.value = pd.DataFrame()
            self.run_plot.object = self.history_plot.object = None
            self.run_message.object = f"**Cannot draw run {run_id}:** {error}"

    def _draw_compile_run(self, run_id: str) -> bool:
        """Draw a DSPy compile journaled by ``dx.autolog()`` (its timeline, and why nothing else); False for other runs.

        Such a run has no steps or candidates (:func:`compile_run_note`), so the result the other
        views are drawn from cannot be built: the page shows what there is instead of that error.
        """
        record = self.journal.experiment(run_id)
        if not is_compile_run(record):
            return False
        self.timeline = timeline_frame(self.journal, run_id)
        self.timeline_plot.object = timeline_plot(self.timeline)
        self.timeline_note.object = timeline_note(self.timeline)
        self.run_message.object = compile_run_note(record, self.timeline)
        self.run_plot.object = self.history_plot.object = None
        self.why_table.value = pd.DataFrame()
        self.refresh_importance(None)
        self.importance_table.object = "Which variables mattered: not estimable (the run records no candidates)."
        self.refresh_pareto(None)
        self.run_views.active = RUN_VIEWS.index("timeline")
        return True

    def refresh_importance(self, run_id: str | None) -> None:
        """Draw which variables mattered in run ``run_id`` (``result.importance()``): a forest plot and its table."""
        from dspex_lab.optimization import importance_html, run_importance

        self.importance, self.importance_plot.object, self.importance_table.object = pd.DataFrame(), None, ""
        if run_id is None:
            return
        try:
            self.importance = run_importance(self.journal, run_id)
        except DspexLabError as error:  # a run that has not recorded its baseline yet
            self.importance_table.object = html.escape(f"Which variables mattered: not estimable ({error})")
            return
        drawn = importance_data(self.importance)
        self.importance_plot.object = importance_plot(drawn) if len(drawn) else None
        self.importance_table.object = importance_html(self.importance)

    def refresh_pareto(self, result: Any) -> None:
        """Draw quality vs cost per example of a run's candidates (``result.pareto()``), the front and the best marked.

        ``result`` is the run's :class:`~dspex_lab.optimization.OptimizationResult`; None clears the tab.
        """
        from dspex_lab.optimization import pareto_plot

        self.pareto, self.pareto_plot.object, self.pareto_note.object = pd.DataFrame(), None, ""
        if result is None:
            return
        self.pareto = result.pareto()
        self.pareto_note.object = pareto_note(self.pareto)
        if self.pareto["cost"].notna().any():
            self.pareto_plot.object = pareto_plot(self.pareto, title="Pareto front: quality vs cost per example")

    def stop(self) -> None:
        """Stop checking the journal."""
        if self._callback is not None:
            self._callback.stop()
            self._callback = None


def _set_options(select: Any, options: dict[str, str]) -> None:
    # Sending hundreds of unchanged options to the browser at every refresh is most of a refresh's cost.
    if select.options != options:
        select.options = options


def _number(value: float) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:+.3f}".replace("-0.000", "+0.000")


def _comparison_text(view: ComparisonView) -> str:
    n = len(view.pairs)
    if not n:
        return (
            f"**No example in common:** {view.a} and {view.b} have no example scored in both "
            "(different datasets?); pick another pair."
        )
    if view.test is None:
        return f"Only {n} example(s) scored in both: no paired test."
    test = view.test
    low, high = test.ci
    return (
        f"**b - a = {_number(test.mean_difference)}** "
        f"({test.confidence:.0%} CI [{_number(low)}, {_number(high)}], {test.test}, p = {test.p_value:.3g}) "
        f"on {n} examples scored in both · mean a = {view.mean_a:.3f}, mean b = {view.mean_b:.3f}"
    )


def _difference_drawing(view: ComparisonView) -> Any:
    if view.test is None:
        return None
    hv = _holoviews()
    test = view.test
    low, high = test.ci
    difference = test.mean_difference
    frame = pd.DataFrame(
        {
            "comparison": ["b - a"],
            "difference": [difference],
            "below": [difference - low if math.isfinite(low) else 0.0],
            "above": [high - difference if math.isfinite(high) else 0.0],
        }
    )
    bars = hv.ErrorBars(frame, "comparison", ["difference", "below", "above"]).opts(line_width=3)
    point = hv.Scatter(frame, "comparison", "difference").opts(size=12, tools=["hover"])
    zero = hv.HLine(0).opts(color="grey", line_dash="dashed")
    return (bars * point * zero).opts(
        invert_axes=True, width=420, height=160, title="Paired difference with its CI", ylabel="score difference"
    )


def _scatter_drawing(view: ComparisonView) -> Any:
    hv = _holoviews()
    pairs = view.pairs
    points = hv.Scatter(pairs, "x", ["y", "example_id", "score_a", "score_b"]).opts(size=6, alpha=0.5, tools=["hover"])
    low = float(min(pairs["x"].min(), pairs["y"].min(), 0.0)) if len(pairs) else 0.0
    high = float(max(pairs["x"].max(), pairs["y"].max(), 1.0)) if len(pairs) else 1.0
    diagonal = hv.Curve([(low, low), (high, high)]).opts(color="grey", line_dash="dashed")
    return (diagonal * points).opts(
        width=420,
        height=420,
        xlabel=f"score a ({view.a})",
        ylabel=f"score b ({view.b})",
        title="Per example (jittered when scores are 0/1)",
    )


# -- serving ---------------------------------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _wait_listening(host: str, port: int, *, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    target = "127.0.0.1" if host in ("0.0.0.0", "") else host
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((target, port), timeout=0.5):
            return True
        time.sleep(0.05)
    return False


class _ServerThread(threading.Thread):
    """Runs a bokeh server on an event loop of its own; ``stop`` closes its sockets and ends the loop."""

    def __init__(self, make_server: Any, *, show: bool) -> None:
        super().__init__(name="dspex-dashboard", daemon=True)
        self._make_server = make_server
        self._show = show
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._loop: Any = None
        self._server: Any = None

    def run(self) -> None:
        import asyncio

        from tornado.ioloop import IOLoop

        asyncio.set_event_loop(asyncio.new_event_loop())
        try:
            self._loop = IOLoop.current()
            self._server = self._make_server()
            self._server.start()
        except BaseException as error:  # reported to the caller of serve_dashboard
            self.error = error
            self.ready.set()
            return
        self.ready.set()
        if self._show:
            self._server.show("/")
        self._loop.start()
        self._loop.close(all_fds=True)

    def stop(self) -> None:
        if self._loop is not None and self._server is not None:

            def shutdown() -> None:
                self._server.stop()
                self._loop.stop()

            self._loop.add_callback(shutdown)
        self.join(timeout=10.0)


class DashboardServer:
    """A running dashboard server (Panel on bokeh's server, in a thread of this process).

    Attributes:
        url: where to open it.
        port: the port it listens on.
        host: the address it is bound to.
        journal: the journal it shows.
    """

    def __init__(self, thread: Any, *, host: str, port: int, journal: JournalStore) -> None:
        self._thread = thread
        self.host = host
        self.port = port
        self.journal = journal
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{port}/"
        self._stopped = threading.Event()

    def __repr__(self) -> str:
        state = "stopped" if self._stopped.is_set() else "running"
        return f"DashboardServer({self.url!r}, {self.journal.location}, {state})"

    def __enter__(self) -> DashboardServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the server still runs."""
        return not self._stopped.is_set()

    def stop(self) -> None:
        """Stop the server and its sessions (idempotent)."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._thread.stop()


def serve_dashboard(
    journal: str | os.PathLike[str] | JournalStore | None = None,
    *,
    port: int = 0,
    host: str = "127.0.0.1",
    show: bool = False,
    allow_remote: bool = False,
    refresh_seconds: float = 2.0,
) -> DashboardServer:
    """Serve the journal dashboard from a background thread and return at once.

    Args:
        journal: a journal path or object (default: the current :class:`~dspex_lab.Context`'s journal).
        port: the port; 0 picks a free one.
        host: the address to bind; a loopback address unless ``allow_remote``.
        show: open the dashboard in a web browser.
        allow_remote: allow a non-loopback ``host``. Anyone who can reach it can then read the
            journal: prompts, answers, program specs and errors.
        refresh_seconds: how often each open page checks the journal for new data.

    Returns:
        The running server; ``server.url`` is where to open it, ``server.stop()`` ends it.

    Raises:
        JournalError: a non-loopback ``host`` without ``allow_remote``, a bad port, or a server that
            did not start listening.
        MissingDependencyError: panel or holoviews is not installed (the ``dashboard`` extra).

    Example:
        >>> server = serve_dashboard("dspex.duckdb")  # doctest: +SKIP
        >>> server.url  # doctest: +SKIP
        'http://127.0.0.1:40123/'
        >>> server.stop()  # doctest: +SKIP
    """
    pn = _panel()
    _holoviews()
    if isinstance(journal, (str, os.PathLike)):
        from dspex_lab.journal import open_journal

        store = open_journal(journal)  # as journal_store would, without the session layer (it loads DSPy)
    else:
        from dspex_lab.session import journal_store

        store = journal_store(journal)
    _check_serving(store, host=host, port=port, refresh_seconds=refresh_seconds, allow_remote=allow_remote)
    try:
        chosen = port or _free_port(host)
    except OSError as error:
        raise JournalError(f"cannot bind the dashboard to {host}: {error}") from error

    def session() -> Any:
        return Dashboard(store, refresh_seconds=refresh_seconds).start().view

    thread = _ServerThread(
        lambda: pn.serve(
            session,
            port=chosen,
            address=host,
            websocket_origin=_origins(host, chosen),
            show=False,
            start=False,
            verbose=False,
            title="dspex dashboard",
        ),
        show=show,
    )
    thread.start()
    server = DashboardServer(thread, host=host, port=chosen, journal=store)
    if not thread.ready.wait(30.0) or thread.error is not None or not _wait_listening(host, chosen, timeout=10.0):
        server.stop()
        raise JournalError(f"the dashboard server did not start on {host}:{chosen}: {thread.error or 'timed out'}")
    return server


def _check_serving(store: JournalStore, *, host: str, port: int, refresh_seconds: float, allow_remote: bool) -> None:
    """Refuse a bad port, a refresh too frequent, or a non-loopback host not allowed; warn for one allowed."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise JournalError(f"port must be an integer from 0 to 65535 (0 picks a free one), got {port!r}")
    if not isinstance(refresh_seconds, (int, float)) or not refresh_seconds >= 0.2:
        raise JournalError(f"refresh_seconds must be at least 0.2, got {refresh_seconds!r}")
    if _is_loopback(host):
        return
    if not allow_remote:
        raise JournalError(
            f"refusing to serve the dashboard on {host!r}, which is not a loopback address: anyone who can "
            "reach it could read the journal (prompts, answers, program specs); bind 127.0.0.1, or pass "
            "allow_remote=True (dspex dashboard --allow-remote) if that is what you want"
        )
    warnings.warn(
        f"the dashboard listens on {host}: anyone who can reach that address can read every experiment, "
        f"prompt and answer in {store.location}",
        DspexLabWarning,
        stacklevel=3,  # the caller of serve_dashboard
    )


def _origins(host: str, port: int) -> list[str]:
    """Return the page origins the server accepts websocket connections from."""
    if _is_loopback(host):
        return [f"{host}:{port}", f"localhost:{port}", f"127.0.0.1:{port}"]
    return ["*"] if host in ("0.0.0.0", "::") else [f"{host}:{port}"]
