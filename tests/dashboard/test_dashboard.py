"""The dashboard's pages through their Panel objects, on a small journal built with the lab LM.

The journal holds two traced evaluations of the same problems, their comparison and a short
SIMBA-C run; every value a page shows is checked against the journal or against ``dx.compare``.
"""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("panel")
pytest.importorskip("holoviews")

import holoviews as hv

import dspex_lab as dx
from dspex_lab.errors import JournalError
from dspex_lab.journal import ExperimentRecord, memory_journal, open_journal
from dspex_lab.notebook._dashboard import PAGES, Dashboard, serve_dashboard
from dspex_lab.notebook._dashboard_data import (
    comparison_view,
    journal_signature,
    trace_html,
    trace_rows,
)

PROBLEMS = 30


def evaluate(program_class: str, name: str, data, *, trace: bool = True):
    program = dx.Program(program_class, signature="question -> answer", name=name)
    return dx.evaluate(program, data, metric=dx.metrics.exact_match, progress=False, trace=trace)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A journal with two traced evaluations, their comparison and an optimization run (built once)."""
    path = tmp_path_factory.mktemp("dashboard") / "journal.duckdb"
    data = list(dx.datasets.arithmetic(PROBLEMS + 30, seed=5))
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=path, threads=2):
        untraced = evaluate("dspy.Predict", "qa-untraced", data[:5], trace=False)
        predict = evaluate("dspy.Predict", "qa-predict", data[:PROBLEMS])
        cot = evaluate("dspy.ChainOfThought", "qa-cot", data[:PROBLEMS])
        comparison = dx.compare(predict, cot)
        run = dx.optimize(
            dx.Program("dspy.Predict", signature="question -> answer", name="qa-opt"),
            data[:PROBLEMS],
            data[PROBLEMS:],
            metric=dx.metrics.exact_match,
            optimizer=dx.SimbaC(max_steps=1, bsize=6, num_candidates=2, num_sources=1, patience=1),
            progress=False,
            seed=3,
        )
    return {"path": path, "untraced": untraced, "a": predict, "b": cot, "comparison": comparison, "run": run}


def opened(dashboard: Dashboard) -> Dashboard:
    """Show every page once (each is queried and drawn when first shown), then the first page again."""
    for page in PAGES:
        dashboard.open_page(page)
    dashboard.open_page(PAGES[0])
    return dashboard


@pytest.fixture
def dashboard(lab: dict) -> Dashboard:
    return opened(Dashboard(open_journal(lab["path"])))


def test_a_session_draws_only_its_first_page_and_each_other_when_first_shown(lab) -> None:
    dashboard = Dashboard(open_journal(lab["path"]))
    assert dashboard.opened == {"experiments"} and not dashboard.table.value.empty
    # The menus are filled, but no other page is queried or drawn until it is shown.
    assert lab["b"].experiment_id in dashboard.trace_experiment.values
    assert dashboard.comparison is None and dashboard.trials.empty and dashboard.why_table.value.empty
    assert all(not dashboard.tabs[index].objects for index in range(1, len(PAGES)))
    dashboard.tabs.active = PAGES.index("trace")  # what a click on the tab does
    assert dashboard.opened == {"experiments", "trace"} and dashboard.trials_total == PROBLEMS
    dashboard.open_page("compare")
    assert dashboard.tabs.active == PAGES.index("compare") and dashboard.comparison is not None
    with pytest.raises(ValueError, match="no dashboard page 'graphs'"):
        dashboard.open_page("graphs")


def test_the_compare_page_opens_on_a_pair_with_examples_in_common_and_says_when_one_has_none(lab, tmp_path) -> None:
    path = tmp_path / "two-datasets.duckdb"
    shutil.copy(lab["path"], path)
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=path, threads=2):
        other = evaluate("dspy.Predict", "other-data", list(dx.datasets.arithmetic(8, seed=11)), trace=False)
        again = evaluate("dspy.Predict", "first-data-again", list(dx.datasets.arithmetic(10, seed=5)), trace=False)
    dashboard = Dashboard(open_journal(path))
    dashboard.open_page("compare")
    # The two newest evaluations share no example: the newest is compared with the newest of those sharing
    # the most with it (qa-predict and qa-cot share its 10 examples; qa-untraced 5), as the baseline.
    assert (dashboard.compare_a.value, dashboard.compare_b.value) == (lab["b"].experiment_id, again.experiment_id)
    assert len(dashboard.comparison.pairs) == 10 and dashboard.scatter_plot.object is not None
    # A pair without an example in common says so in one line, with no empty plot.
    dashboard.compare_a.value = other.experiment_id
    summary = dashboard.compare_summary.object
    assert summary.startswith("**No example in common:**") and "\n" not in summary
    assert other.experiment_id in summary and again.experiment_id in summary
    assert dashboard.difference_plot.object is None and dashboard.scatter_plot.object is None


def test_the_experiments_page_shows_the_journal_leaderboard(lab, dashboard) -> None:
    expected = open_journal(lab["path"]).leaderboard()
    table = dashboard.table.value

    assert list(table["experiment_id"]) == list(expected["experiment_id"])
    shown = table.set_index("experiment_id")
    for experiment in (lab["a"], lab["b"]):
        assert shown.loc[experiment.experiment_id, "name"] == experiment.name
        assert shown.loc[experiment.experiment_id, "n_trials"] == PROBLEMS
        assert shown.loc[experiment.experiment_id, "mean"] == pytest.approx(experiment.mean, abs=1e-4)
    assert {"comparison", "optimization", "evaluation"} <= set(table["kind"])


def test_the_leaderboard_draws_each_scored_experiment_with_its_interval(lab, dashboard) -> None:
    drawing = dashboard.leaderboard_plot.object
    bars = drawing.get(0)
    assert isinstance(bars, hv.ErrorBars)
    frame = bars.dframe().set_index("experiment")
    board = dashboard.board.set_index("label")
    for label, row in frame.iterrows():
        assert row["mean"] == pytest.approx(board.loc[label, "mean"])
        assert row["mean"] - row["below"] == pytest.approx(board.loc[label, "ci_low"])
        assert row["mean"] + row["above"] == pytest.approx(board.loc[label, "ci_high"])
    # Experiments without a score (the comparison, the run itself) are in the table, not in the drawing.
    assert len(frame) == int(dashboard.board["mean"].notna().sum())


def test_the_filters_narrow_the_leaderboard(lab, dashboard) -> None:
    dashboard.name_filter.value = "qa-c"
    names = set(dashboard.table.value["name"])
    assert "qa-cot" in names and "qa-predict" not in names
    assert all("qa-c" in name for name in names)
    assert lab["b"].experiment_id in set(dashboard.table.value["experiment_id"])
    dashboard.name_filter.value = ""
    dashboard.kind_filter.value = "optimization"
    assert list(dashboard.table.value["experiment_id"]) == [lab["run"].run_id]
    dashboard.kind_filter.value = ""
    dashboard.status_filter.value = "running"
    assert dashboard.table.value.empty
    # The menus keep every evaluation whatever the leaderboard shows.
    assert lab["a"].experiment_id in dashboard.compare_a.values


def test_the_compare_page_matches_dx_compare(lab, dashboard) -> None:
    a, b = lab["a"].experiment_id, lab["b"].experiment_id
    # It opens on the two newest evaluations, the older as the baseline.
    assert (dashboard.compare_a.value, dashboard.compare_b.value) == (a, b)
    expected = dx.compare(dx.load(a, journal=lab["path"]), dx.load(b, journal=lab["path"]))
    test = dashboard.comparison.test

    assert test.mean_difference == pytest.approx(expected.difference)
    assert test.ci == pytest.approx(expected.ci)
    assert test.p_value == pytest.approx(expected.p_value)
    assert len(dashboard.comparison.pairs) == expected.n
    assert f"{expected.difference:+.3f}" in dashboard.compare_summary.object
    difference = dashboard.difference_plot.object.get(0).dframe().iloc[0]
    assert difference["difference"] - difference["below"] == pytest.approx(expected.ci[0])
    assert difference["difference"] + difference["above"] == pytest.approx(expected.ci[1])


def test_the_scatter_pairs_each_example_and_jitters_zero_one_scores(lab, dashboard) -> None:
    pairs = dashboard.comparison.pairs
    stored = open_journal(lab["path"]).paired_scores(lab["a"].experiment_id, lab["b"].experiment_id)

    assert list(pairs["example_id"]) == list(stored["example_id"])
    assert list(pairs["score_a"]) == list(stored["score_a"])
    assert ((pairs["x"] - pairs["score_a"]).abs() <= 0.08).all()
    assert ((pairs["y"] - pairs["score_b"]).abs() <= 0.08).all()
    assert (pairs["x"] != pairs["score_a"]).any()
    drawn = dashboard.scatter_plot.object.get(1).dframe()
    assert list(drawn["example_id"]) == list(pairs["example_id"])
    # The same pair jitters the same way at every refresh.
    again = comparison_view(open_journal(lab["path"]), lab["a"].experiment_id, lab["b"].experiment_id)
    assert list(again.pairs["x"]) == list(pairs["x"])


def test_comparing_an_experiment_with_itself_says_so(lab, dashboard) -> None:
    dashboard.compare_b.value = dashboard.compare_a.value
    assert "two different experiments" in dashboard.compare_summary.object
    assert dashboard.scatter_plot.object is None


def test_the_trace_page_pages_trials_and_draws_the_selected_tree(lab, dashboard) -> None:
    journal = open_journal(lab["path"])
    experiment_id = lab["b"].experiment_id
    assert dashboard.trace_experiment.value == experiment_id
    assert dashboard.trials_total == PROBLEMS
    assert dashboard.trial_count.object == f"trials 1 to {PROBLEMS} of {PROBLEMS}"
    # In example order by default (not the ids' text order, where arith-5-10 comes before arith-5-2).
    assert list(dashboard.trials["trial_id"]) == list(journal.trials(experiment_id)["trial_id"])
    first = dashboard.trials.iloc[0]["trial_id"]
    tree = journal.trace(experiment_id, first)

    assert f"Trial {first}" in dashboard.trace_view.object
    assert dashboard.trace_view.object.count('class="dspex-span ') == len(tree)
    dashboard.trial_sort.value = "score"
    dashboard.trial_descending.value = True
    scores = list(dashboard.trials["score"])
    assert scores == sorted(scores, reverse=True)
    dashboard.trial_table.selection = [len(dashboard.trials) - 1]
    assert f"Trial {dashboard.trials.iloc[-1]['trial_id']}" in dashboard.trace_view.object


def test_the_trace_page_explains_an_untraced_trial(lab, dashboard) -> None:
    dashboard.trace_experiment.value = lab["untraced"].experiment_id
    assert dashboard.trials_total == 5
    assert "trace=True" in dashboard.trace_view.object


def test_trace_rows_follow_the_tree_and_the_html_escapes_text(lab) -> None:
    journal = open_journal(lab["path"])
    experiment_id = lab["a"].experiment_id
    trial_id = journal.trial_page(experiment_id, limit=1)[0].iloc[0]["trial_id"]
    rows = trace_rows(journal, experiment_id, trial_id)
    nodes = list(journal.trace(experiment_id, trial_id).walk())

    assert [row["name"] for row in rows] == [node.span.name for node in nodes]
    assert [row["depth"] for row in rows] == [node.depth for node in nodes]
    assert rows[0]["start_ms"] == 0 and all(row["duration_ms"] >= 0 for row in rows)
    lm_rows = [row for row in rows if row["kind"] == "lm"]
    assert lm_rows and all(row["tokens"] > 0 for row in lm_rows)
    hostile = [{**rows[0], "name": "<script>x</script>", "error": "a < b", "status": "error"}]
    rendered = trace_html(hostile)
    assert "<script>x" not in rendered and "&lt;script&gt;" in rendered and "a &lt; b" in rendered


def test_the_optimization_page_draws_the_runs_convergence(lab, dashboard) -> None:
    run = lab["run"]
    assert dashboard.run_select.value == run.run_id
    layout = dashboard.run_plot.object
    assert isinstance(layout, hv.Layout) and len(layout) == 4
    best = layout.values()[0].get(1).dframe()  # the incumbent's validation mean per step
    assert list(best["best_mean"]) == pytest.approx(list(run.steps["best_mean"]))


def test_a_refresh_picks_up_an_experiment_written_after_start(lab, dashboard) -> None:
    dashboard.refresh()  # lets a checkpoint that ended after the page was built count once
    assert dashboard.refresh() is False  # nothing changed on disk: no query
    data = list(dx.datasets.arithmetic(PROBLEMS, seed=5))
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=lab["path"], threads=2):
        fresh = evaluate("dspy.Predict", "fresh-predict", data[:10], trace=False)

    assert dashboard.refresh() is True
    assert dashboard.table.value.iloc[0]["experiment_id"] == fresh.experiment_id
    assert dashboard.table.value.iloc[0]["mean"] == pytest.approx(fresh.mean, abs=1e-4)
    assert fresh.experiment_id in dashboard.compare_b.values


def test_a_running_experiments_pages_follow_its_new_trials_and_finished_ones_are_not_requeried(lab, tmp_path) -> None:
    path = tmp_path / "live.duckdb"
    shutil.copy(lab["path"], path)
    journal = open_journal(path)
    dashboard = Dashboard(journal)
    dashboard.open_page("trace")
    running = journal.create_experiment(ExperimentRecord(kind="evaluation", name="live-run"))
    rows = [
        {"trial_id": f"e{index}/r0", "example_id": f"e{index}", "index": index, "repeat": 0, "status": "ok",
         "score": float(index % 2)}
        for index in range(6)
    ]  # fmt: skip
    journal.append_trials(running, rows[:2])
    assert dashboard.refresh() is True
    dashboard.trace_experiment.value = running
    assert dashboard.trials_total == 2
    calls = []
    dashboard.refresh_comparison = lambda: calls.append("comparison")  # the two finished evaluations

    journal.append_trials(running, rows[2:])
    assert dashboard.refresh() is True
    assert dashboard.trials_total == 6 and list(dashboard.trials["trial_id"])[-1] == "e5/r0"
    assert calls == []
    journal.finish_experiment(running, status="finished")
    assert dashboard.refresh() is True
    assert dashboard.board.set_index("experiment_id").loc[running, "status"] == "finished"


def test_the_journal_signature_changes_when_the_journal_is_written(tmp_path: Path) -> None:
    journal = open_journal(tmp_path / "new.duckdb")
    absent = journal_signature(journal)
    assert absent.stamps == ((-1, -1), (-1, -1))
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=journal.path, threads=1):
        evaluate("dspy.Predict", "one", list(dx.datasets.arithmetic(3, seed=1)), trace=False)
    assert journal_signature(journal) != absent


def test_a_journal_kept_in_memory_is_shown_and_its_writes_are_noticed() -> None:
    journal = memory_journal()
    dashboard = opened(Dashboard(journal))
    assert dashboard.table.value.empty and "an in-memory journal" in dashboard.view[0].object
    empty = journal_signature(journal)
    assert dashboard.refresh() is False  # nothing written: no page re-queried
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=journal, threads=1):
        result = evaluate("dspy.Predict", "kept-in-memory", list(dx.datasets.arithmetic(3, seed=1)))
    assert journal_signature(journal) != empty
    assert dashboard.refresh() is True
    assert list(dashboard.table.value["experiment_id"]) == [result.experiment_id]
    assert dashboard.trace_experiment.value == result.experiment_id and dashboard.trials_total == 3
    dashboard.show_trace(str(dashboard.trials.iloc[0]["trial_id"]))
    assert "spans</h4>" in dashboard.trace_view.object


def test_an_absent_journal_shows_empty_pages(tmp_path: Path) -> None:
    dashboard = Dashboard(open_journal(tmp_path / "not-yet.duckdb"))
    assert dashboard.table.value.empty
    assert dashboard.leaderboard_plot.object is None
    assert not dashboard.compare_a.value and not dashboard.run_select.value


def test_serving_binds_loopback_and_stops(lab) -> None:
    with serve_dashboard(lab["path"]) as server:
        assert server.url == f"http://127.0.0.1:{server.port}/"
        with urllib.request.urlopen(server.url, timeout=30) as response:
            page = response.read().decode()
        assert response.status == 200 and "bokeh" in page.lower()
    assert not server.running
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(server.url, timeout=5)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.7", "example.org"])
def test_a_non_loopback_host_is_refused_without_allow_remote(lab, host: str) -> None:
    with pytest.raises(JournalError, match=r"not a loopback address.*allow_remote"):
        serve_dashboard(lab["path"], host=host)


@pytest.mark.parametrize("port", [-1, 70000, 1.5, True])
def test_a_bad_port_is_refused(lab, port) -> None:
    with pytest.raises(JournalError, match="port must be an integer"):
        serve_dashboard(lab["path"], port=port)


def test_refresh_seconds_must_be_reasonable(lab) -> None:
    with pytest.raises(JournalError, match="refresh_seconds"):
        serve_dashboard(lab["path"], refresh_seconds=0)


def test_the_command_refuses_a_remote_host_with_one_clear_error(lab, capsys) -> None:
    from dspex_lab.cli import main

    code = main(["dashboard", "--journal", str(lab["path"]), "--host", "192.0.2.7", "--no-browser"])
    error = capsys.readouterr().err
    assert code == 2
    assert error.startswith("dspex: error: refusing to serve the dashboard on '192.0.2.7'")
    assert "--allow-remote" in error and "Traceback" not in error
