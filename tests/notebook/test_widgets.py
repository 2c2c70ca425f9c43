"""RunProgress, ExperimentBrowser and VariableControls through their Python state and simulated front-end messages.

The front ends only draw these traits and send back what the user chose, so the state after real runs on the
lab LM, and after the messages a click sends, is what these tests check. The browser tests in
test_widgets_jupyterlab.py check the drawing itself.
"""

from __future__ import annotations

import inspect
import math
import sys
import threading
import time
import types
from collections import Counter
from pathlib import Path
from typing import Any

import dspy
import pytest
from scipy import stats

import dspex_lab as dx
from dspex_lab.engine import RunFinished, RunStarted, TrialFinished, TrialResult

pytest.importorskip("anywidget")

from dspex_lab.evaluation._progress import TqdmProgress, progress_display
from dspex_lab.notebook._widgets_common import front_end_file

COT = dx.Program("dspy.ChainOfThought", signature="question -> answer", name="cot")
PREDICT = dx.Program("dspy.Predict", signature="question -> answer", name="predict")


def front_end_message(widget: Any, content: dict[str, Any]) -> None:
    """Deliver a custom message as the front end's ``model.send(content)`` does."""
    widget._handle_msg({"content": {"data": {"method": "custom", "content": content}}, "buffers": []})


def front_end_update(widget: Any, **state: Any) -> None:
    """Deliver a state change as the front end's ``model.set(...); model.save_changes()`` does."""
    widget._handle_msg({"content": {"data": {"method": "update", "state": state, "buffer_paths": []}}, "buffers": []})


@pytest.fixture(autouse=True)
def widget_errors_fail_the_test(caplog):
    # ipywidgets logs (and swallows) an exception raised while handling a front-end message.
    yield
    failures = [record.getMessage() for record in caplog.records if "Exception in widget method" in record.getMessage()]
    assert not failures, failures


def wilson(successes: int, n: int) -> tuple[float, float]:
    """The Wilson score interval in closed form (95%)."""
    z = stats.norm.ppf(0.975)
    p = successes / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


def trial(index: int, *, score: float | None, cost: float | None = 0.001, unpriced: str | None = None,
          error_type: str | None = None) -> TrialResult:  # fmt: skip
    return TrialResult(
        index=index,
        example_id=f"e{index}",
        repeat=0,
        status="ok" if score is not None else "error",
        score=score,
        prediction=None,
        error_type=error_type,
        input_tokens=10,
        output_tokens=5,
        cost=cost,
        lm_calls=1,
        unpriced_models=unpriced,
    )


# -- front-end files ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["run_progress", "experiment_browser", "variable_controls"])
def test_front_ends_exist_render_and_use_the_theme_variables(name):
    script = front_end_file(f"{name}.js", widget=name).read_text()
    css = front_end_file(f"{name}.css", widget=name).read_text()
    assert "export default { render }" in script
    for variable in ("--jp-ui-font-color1", "--jp-layout-color1", "--jp-border-color2", "--jp-brand-color1"):
        assert f"var({variable}," in css, variable  # always with a fallback outside JupyterLab
    # Every colour is a theme variable's fallback, never a fixed colour of its own.
    for line in css.splitlines():
        if "#" in line and "var(" not in line:
            pytest.fail(f"a fixed colour outside a fallback in {name}.css: {line.strip()}")


def test_the_wheel_ships_every_front_end_where_the_package_looks():
    import fnmatch
    import tomllib

    from dspex_lab.notebook import _widgets_common

    repository = Path(dx.__file__).resolve().parents[1]
    config = tomllib.loads((repository / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"]["dspex_lab.notebook.widgets"] == "widgets"
    patterns = config["package-data"]["dspex_lab.notebook.widgets"]
    assert _widgets_common._FRONT_END_FOLDERS[0] == repository / "dspex_lab" / "notebook" / "widgets"
    for name in ("run_progress", "experiment_browser", "variable_controls"):
        for suffix in (".js", ".css"):
            assert any(fnmatch.fnmatch(name + suffix, pattern) for pattern in patterns), name + suffix


def test_a_missing_front_end_file_is_named_with_what_to_do():
    with pytest.raises(dx.errors.DspexLabError, match=r"RunProgress widget's front end nothing\.js is missing"):
        front_end_file("nothing.js", widget="RunProgress")


# -- RunProgress -------------------------------------------------------------------------------------------


def test_run_progress_follows_a_real_evaluation(journal_path):
    problems = dx.Dataset(dx.datasets.arithmetic(30, seed=5), name="progress")
    widget = dx.RunProgress()
    with dx.Context(lm=dx.lab_lm("lab/small", error_rate=0.2, seed=3), journal=journal_path, threads=4):
        result = dx.evaluate(COT, problems, metric=dx.metrics.exact_match, progress=widget, retries=0)
    trials = result.trials
    scored = trials["score"].dropna()
    assert widget.status == "finished" and widget.title == result.name
    assert (widget.done, widget.total, widget.runs) == (30, 30, 1)
    assert widget.n_scored == len(scored) and widget.n_errors == result.n_errors > 0
    assert widget.errors == dict(Counter(trials.loc[trials["status"] == "error", "error_type"]))
    assert widget.mean == pytest.approx(scored.mean())
    low, high = wilson(int(scored.sum()), len(scored))  # exact_match scores are 0/1
    assert (widget.ci_low, widget.ci_high, widget.ci_method) == (pytest.approx(low), pytest.approx(high), "wilson")
    assert widget.input_tokens == trials["input_tokens"].sum() and widget.output_tokens == trials["output_tokens"].sum()
    assert widget.cost == pytest.approx(trials["cost"].sum()) and widget.unpriced_models == []
    assert widget.elapsed == pytest.approx(result.wall_seconds) and widget.eta is None


def test_run_progress_is_the_run_display_the_optimizer_calls_with_the_protocols_signatures():
    from dspex_lab.optimization import RunDisplay, Subscriber

    widget = dx.RunProgress()
    assert isinstance(widget, RunDisplay) and isinstance(widget, Subscriber)
    # isinstance checks only that the methods exist: their parameters must be the ones the run passes.
    for name in ("begin", "finish"):
        expected = inspect.signature(getattr(RunDisplay, name)).parameters.values()
        actual = inspect.signature(getattr(dx.RunProgress, name)).parameters.values()
        assert [(p.name, p.kind) for p in actual] == [(p.name, p.kind) for p in expected], name
    (event,) = list(inspect.signature(dx.RunProgress.__call__).parameters.values())[1:]
    assert event.kind in (event.POSITIONAL_ONLY, event.POSITIONAL_OR_KEYWORD) and event.default is event.empty
    widget.begin("optimize qa")
    assert (widget.title, widget.status) == ("optimize qa", "running")
    widget.finish("stopped")
    assert widget.status == "stopped" and widget.eta is None


def test_run_progress_uses_a_t_interval_for_graded_scores():
    widget = dx.RunProgress()
    scores = [0.2, 0.5, 0.9, 0.4, 0.75]
    widget(RunStarted("r", "graded", len(scores)))
    for index, score in enumerate(scores):
        widget(TrialFinished("r", trial(index, score=score), index + 1, len(scores), 0))
    low, high = stats.t.interval(0.95, len(scores) - 1, loc=sum(scores) / 5, scale=stats.sem(scores))
    assert (widget.ci_low, widget.ci_high, widget.ci_method) == (pytest.approx(low), pytest.approx(high), "t")


def test_unpriced_calls_are_named_never_counted_as_free():
    widget = dx.RunProgress()
    widget(RunStarted("r", "mixed", 3))
    widget(TrialFinished("r", trial(0, score=1.0, cost=0.002), 1, 3, 0))
    widget(TrialFinished("r", trial(1, score=0.0, cost=None, unpriced="acme/model-x"), 2, 3, 0))
    widget(
        TrialFinished("r", trial(2, score=None, cost=None, unpriced="acme/model-x,other/y", error_type="E"), 3, 3, 1)
    )
    widget(RunFinished("r", "finished", 3, 3, 1, 0.5))
    assert widget.unpriced_models == ["acme/model-x", "other/y"]
    assert widget.cost == pytest.approx(0.002)  # the priced part only, shown beside the unpriced models
    assert widget.errors == {"E": 1} and widget.lm_calls == 3


def test_a_resumed_run_counts_the_trials_done_before():
    widget = dx.RunProgress()
    widget(RunStarted("r", "resumed", 10, 6))
    widget(TrialFinished("r", trial(6, score=1.0), 1, 4, 0))
    time.sleep(0.25)  # the view is refreshed at most five times a second while trials finish
    widget(TrialFinished("r", trial(7, score=0.0), 2, 4, 0))
    assert (widget.done, widget.total, widget.already_done) == (8, 10, 6)
    widget(RunFinished("r", "stopped", 2, 4, 0, 0.3))
    assert (widget.done, widget.status, widget.n_scored) == (8, "stopped", 2)


def test_cancel_without_a_running_run_does_nothing():
    widget = dx.RunProgress()
    assert widget.cancel() is False
    front_end_message(widget, {"type": "cancel"})
    assert widget.status == "waiting"


def test_cancel_after_the_last_trial_is_ignored_so_no_interrupt_outlives_the_run():
    widget = dx.RunProgress()
    widget(RunStarted("r", "closing", 2))
    widget(TrialFinished("r", trial(0, score=1.0), 1, 2, 0))
    widget(TrialFinished("r", trial(1, score=1.0), 2, 2, 0))
    assert widget.cancel() is False
    widget(RunFinished("r", "finished", 2, 2, 0, 0.1))
    assert widget.status == "finished"


# 60 s uncancelled (2 threads, 0.3 s a call): a run that went on after Cancel cannot pass check_cancelled.
SLOW_TRIALS = 400


def slow_run(journal_path, widget: dx.RunProgress, *, subscribers=()) -> float:
    """Run a slow evaluation until it is cancelled; return the time.monotonic() at which it stopped."""
    problems = dx.Dataset(dx.datasets.arithmetic(SLOW_TRIALS, seed=1), name="slow")
    lm = dx.lab_lm("lab/small", latency=0.3)
    with dx.Context(lm=lm, journal=journal_path, threads=2), pytest.raises(KeyboardInterrupt, match="resume with"):
        dx.evaluate(PREDICT, problems, metric=dx.metrics.exact_match, progress=widget, subscribers=subscribers)
    return time.monotonic()


def check_cancelled(journal_path, widget: dx.RunProgress) -> None:
    journal = dx.open_journal(journal_path)
    (experiment,) = journal.experiment_summaries()
    assert experiment.status == widget.status == "interrupted"  # one word for a cancelled run, as the journal's
    # Every trial the widget saw finish is in the journal, and the run stopped well before its last trial.
    assert 0 < experiment.n_trials == widget.done < SLOW_TRIALS


def when_trials_done(widget: dx.RunProgress, count: int, action: Any) -> threading.Thread:
    """Start a thread that calls ``action`` once the widget shows ``count`` trials done.

    A loaded machine may take seconds to finish the first trials; a fixed timer could cancel before any.
    """

    def wait_then_act() -> None:
        deadline = time.monotonic() + 60  # a hang guard only
        while widget.done < count and time.monotonic() < deadline:
            time.sleep(0.01)
        action()

    thread = threading.Thread(target=wait_then_act)
    thread.start()
    return thread


def check_stopped_at_once(asked: list[tuple[float, int]], stopped: float, widget: dx.RunProgress) -> None:
    """The run stopped within the trials in flight when Cancel came, counted in trials, not seconds."""
    ((asked_at, done_then),) = asked
    finished_after = widget.done - done_then
    # Two threads: at most the two trials in flight (and the one that raises the interrupt) finish after it.
    assert finished_after <= 3, f"{finished_after} trials finished after Cancel ({done_then} before)"
    assert stopped - asked_at < 30.0  # a hang guard only


def test_cancel_from_another_thread_interrupts_the_run_at_once(journal_path):
    widget = dx.RunProgress()
    asked: list[tuple[float, int]] = []

    def click() -> None:
        asked.append((time.monotonic(), widget.done))
        assert widget.cancel() is True

    timer = when_trials_done(widget, 2, click)
    stopped = slow_run(journal_path, widget)
    timer.join()
    check_stopped_at_once(asked, stopped, widget)
    check_cancelled(journal_path, widget)


class HookedComm:
    """A fake kernel comm with ipykernel 7's routing hook, which the kernel calls on its shell-channel thread."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.comm_id = kwargs.get("comm_id") or "fake-comm"
        self.kernel = None
        self.sent: list[Any] = []
        self.routed: list[Any] = []
        self._handler = None

    def _reply_subshell_for(self, data: Any, default: Any) -> Any:
        self.routed.append(data)
        return default

    def open(self, *args: Any, **kwargs: Any) -> None:
        pass

    def send(self, data: Any = None, *args: Any, **kwargs: Any) -> None:
        self.sent.append(data)

    def close(self, *args: Any, **kwargs: Any) -> None:
        pass

    def on_msg(self, callback: Any) -> None:
        self._handler = callback

    def on_close(self, callback: Any) -> None:
        pass


def test_cancel_arriving_on_the_kernels_shell_channel_thread_stops_the_run(journal_path, monkeypatch):
    import comm

    monkeypatch.setattr(comm, "create_comm", HookedComm)
    widget = dx.RunProgress()
    assert isinstance(widget.comm, HookedComm) and widget.cancel_mode == "immediate"
    asked: list[tuple[float, int]] = []
    message = {"method": "custom", "content": {"type": "cancel"}}

    def shell_channel_thread() -> None:
        asked.append((time.monotonic(), widget.done))
        assert widget.comm._reply_subshell_for(message, None) is None  # routed on as before

    timer = when_trials_done(widget, 2, shell_channel_thread)
    stopped = slow_run(journal_path, widget)
    timer.join()
    check_stopped_at_once(asked, stopped, widget)
    assert widget.comm.routed == [message]
    check_cancelled(journal_path, widget)


def test_cancel_handled_on_the_runs_own_thread_stops_at_the_next_trial(journal_path):
    widget = dx.RunProgress()
    seen: list[int] = []

    def click_after_three(event: Any) -> None:
        # As in an async cell, where the kernel's main thread handles the click between two trials.
        if isinstance(event, TrialFinished):
            seen.append(event.done)
            if event.done == 3:
                front_end_message(widget, {"type": "cancel"})

    slow_run(journal_path, widget, subscribers=[click_after_three])
    assert widget.done == 4  # the trial after the click raised the interrupt; it is kept
    check_cancelled(journal_path, widget)


def test_progress_true_shows_the_widget_in_a_jupyter_kernel_and_tqdm_elsewhere(journal_path, monkeypatch, capsys):
    problems = dx.Dataset(dx.datasets.arithmetic(4, seed=2), name="automatic")
    assert isinstance(progress_display("evaluation"), TqdmProgress)  # no IPython kernel in pytest

    shown: list[Any] = []
    shell = types.SimpleNamespace(kernel=object())
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))
    monkeypatch.setitem(sys.modules, "IPython.display", types.SimpleNamespace(display=shown.append))
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=journal_path, threads=2):
        dx.evaluate(COT, problems, metric=dx.metrics.exact_match)
    (widget,) = shown
    assert isinstance(widget, dx.RunProgress) and (widget.done, widget.status) == (4, "finished")
    assert "trial" not in capsys.readouterr().err  # no tqdm bar beside the widget

    # A terminal IPython has no kernel: the tqdm bar again.
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: types.SimpleNamespace()))
    assert isinstance(progress_display("evaluation"), TqdmProgress)
    shown.clear()
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=journal_path, threads=2):
        dx.evaluate(COT, problems, metric=dx.metrics.exact_match)
    assert shown == [] and "4/4" in capsys.readouterr().err


OPTIMIZED = dx.Program(
    "dspy.Predict",
    signature="question -> answer",
    name="opt",
    variables={"temperature": dx.Float(0.0, low=0.0, high=1.0)},
)


def test_run_progress_spans_an_optimization_and_shows_its_best(journal_path):
    data = list(dx.datasets.arithmetic(48, seed=17))
    program = OPTIMIZED
    widget = dx.RunProgress()
    optimizer = dx.SimbaC(max_steps=1, bsize=8, num_candidates=2, num_sources=1, patience=1)
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=journal_path, threads=2):
        result = dx.optimize(
            program, data[:24], data[24:], metric=dx.metrics.exact_match, optimizer=optimizer, progress=widget
        )
    assert widget.status == result.status == "finished"
    assert widget.title == "opt (simba-c)"  # the optimization's name, not its evaluations' ids
    assert widget.runs >= 2  # the baseline and at least one candidate evaluation
    assert widget.step == result.steps["step"].max()
    assert widget.best["best_mean"] == pytest.approx(result.steps["best_mean"].iloc[-1])
    assert widget.lm_calls > 0


def test_optimize_with_progress_true_shows_one_widget_for_the_whole_run(journal_path, monkeypatch, capsys):
    shown: list[Any] = []
    shell = types.SimpleNamespace(kernel=object())
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))
    monkeypatch.setitem(sys.modules, "IPython.display", types.SimpleNamespace(display=shown.append))
    data = list(dx.datasets.arithmetic(48, seed=17))
    optimizer = dx.SimbaC(max_steps=1, bsize=8, num_candidates=2, num_sources=1, patience=1)
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=journal_path, threads=2):
        result = dx.optimize(OPTIMIZED, data[:24], data[24:], metric=dx.metrics.exact_match, optimizer=optimizer)
    (widget,) = shown
    assert isinstance(widget, dx.RunProgress) and widget.status == result.status == "finished"
    assert widget.runs >= 2 and widget.title == "opt (simba-c)"
    assert " step " not in capsys.readouterr().err  # the widget replaces the printed step lines


def test_cancel_stops_an_optimization_between_or_during_its_evaluations(journal_path):
    data = list(dx.datasets.arithmetic(96, seed=17))
    widget = dx.RunProgress()
    timer = threading.Timer(1.5, widget.cancel)
    optimizer = dx.SimbaC(max_steps=6, bsize=12, num_candidates=3, num_sources=2, patience=6)
    timer.start()
    lm = dx.lab_lm("lab/small", latency=0.05)
    with dx.Context(lm=lm, journal=journal_path, threads=2), pytest.raises(KeyboardInterrupt, match="resume="):
        dx.optimize(OPTIMIZED, data[:48], data[48:], metric=dx.metrics.exact_match, optimizer=optimizer,
                    progress=widget)  # fmt: skip
    timer.join()
    (run,) = [row for row in dx.open_journal(journal_path).experiment_summaries() if row.kind == "optimization"]
    assert run.status == widget.status == "interrupted"


# -- ExperimentBrowser -------------------------------------------------------------------------------------


@pytest.fixture
def browsed(journal_path):
    problems = dx.Dataset(dx.datasets.arithmetic(12, seed=3), name="browse")
    with dx.Context(lm=dx.lab_lm("lab/small", error_rate=0.25, seed=4), journal=journal_path, threads=4):
        traced = dx.evaluate(COT, problems, metric=dx.metrics.exact_match, progress=False, trace=True, retries=0)
    with dx.Context(lm=dx.lab_lm("lab/large"), journal=journal_path, threads=4):
        plain = dx.evaluate(PREDICT, problems, metric=dx.metrics.exact_match, progress=False, name="plain-predict")
    return journal_path, traced, plain


def test_browser_lists_experiments_with_their_means_and_intervals(browsed):
    path, traced, plain = browsed
    browser = dx.ExperimentBrowser(path)
    rows = {row["id"]: row for row in browser.experiments}
    assert set(rows) == {traced.experiment_id, plain.experiment_id}
    for result in (traced, plain):
        row = rows[result.experiment_id]
        assert (row["name"], row["kind"], row["status"]) == (result.name, "evaluation", "finished")
        assert row["mean"] == pytest.approx(result.mean)
        assert (row["ci_low"], row["ci_high"]) == (pytest.approx(result.ci[0]), pytest.approx(result.ci[1]))
        assert (row["n_trials"], row["n_errors"]) == (result.n_trials, result.n_errors)
    assert browser.tables.kinds == ["evaluation"] and browser.tables.statuses == ["finished"]


def test_browser_filters_and_sorts_as_the_front_end_asks(browsed):
    path, _traced, plain = browsed
    browser = dx.ExperimentBrowser(path)
    front_end_update(browser.tables, name_filter="PLAIN")
    assert [row["id"] for row in browser.experiments] == [plain.experiment_id]
    front_end_update(browser.tables, name_filter="", status_filter="interrupted")
    assert browser.experiments == []
    front_end_update(browser.tables, status_filter="", sort_column="mean", sort_descending=False)
    means = [row["mean"] for row in browser.experiments]
    assert means == sorted(means) and len(means) == 2
    front_end_update(browser.tables, sort_descending=True)
    assert [row["mean"] for row in browser.experiments] == sorted(means, reverse=True)
    with pytest.raises(dx.errors.JournalError, match="sort_column must be one of"):
        browser.tables.sort_column = "colour"


def test_selecting_an_experiment_then_a_trial_opens_its_trace(browsed):
    path, traced, _plain = browsed
    browser = dx.ExperimentBrowser(path)
    front_end_update(browser.tables, selected_experiment=traced.experiment_id)
    assert len(browser.trials) == browser.tables.trial_total == 12
    assert browser.trials[0]["status"] == "error"  # failed first, the default order
    front_end_update(browser.tables, trial_status="ok", trial_sort="score")
    assert {row["status"] for row in browser.trials} == {"ok"}
    assert browser.tables.trial_total == len(browser.trials) == traced.n_trials - traced.n_errors
    assert [row["score"] for row in browser.trials] == sorted(row["score"] for row in browser.trials)
    front_end_update(browser.tables, trial_status="", trial_min_score=1.0)
    assert browser.trials and all(row["score"] == 1.0 for row in browser.trials)
    front_end_update(browser.tables, trial_min_score=None)

    first, second = browser.trials[0]["trial_id"], browser.trials[1]["trial_id"]
    front_end_update(browser.tables, selected_trial=first)
    viewer = browser.trace_viewer
    assert isinstance(viewer, dx.widgets.TraceViewer) and viewer.selected_trial == first
    assert browser.children == (browser.tables, viewer)
    assert any(node["kind"] == "lm" for node in viewer.nodes)
    front_end_update(browser.tables, selected_trial=second)
    assert browser.trace_viewer is viewer and viewer.selected_trial == second  # the same viewer, moved

    front_end_update(browser.tables, selected_experiment="")
    assert browser.trace_viewer is None and browser.children == (browser.tables,) and browser.trials == []


def test_a_trial_without_a_trace_says_how_to_record_one(browsed):
    path, _traced, plain = browsed
    browser = dx.ExperimentBrowser(path)
    browser.select_experiment(plain.experiment_id)
    browser.select_trial(browser.trials[0]["trial_id"])
    assert browser.trace_viewer is None and "trace=True" in browser.tables.note
    with pytest.raises(dx.errors.JournalError, match="not among the trials listed"):
        browser.select_trial("nope")
    with pytest.raises(dx.errors.JournalError, match="no experiment 'nope'"):
        browser.select_experiment("nope")


def test_an_empty_score_range_is_explained_not_queried(browsed):
    path, traced, _plain = browsed
    browser = dx.ExperimentBrowser(path)
    browser.select_experiment(traced.experiment_id)
    front_end_update(browser.tables, trial_min_score=0.8, trial_max_score=0.2)
    assert browser.trials == [] and "score filter is empty" in browser.tables.note


def test_refresh_picks_up_experiments_written_meanwhile(browsed):
    path, _traced, _plain = browsed
    browser = dx.ExperimentBrowser(path)
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=path, threads=2):
        later = dx.evaluate(PREDICT, dx.datasets.arithmetic(3, seed=9), metric=dx.metrics.exact_match,
                            progress=False, name="later")  # fmt: skip
    assert later.experiment_id not in {row["id"] for row in browser.experiments}
    front_end_message(browser.tables, {"type": "refresh"})
    assert later.experiment_id in {row["id"] for row in browser.experiments}


def test_without_a_journal_file_the_browser_shows_the_contexts_in_memory_journal():
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=False, threads=2) as context:
        result = dx.evaluate(PREDICT, dx.datasets.arithmetic(4, seed=2), metric=dx.metrics.exact_match,
                             progress=False, name="in-memory", trace=True)  # fmt: skip
        browser = dx.ExperimentBrowser()
    assert browser.journal is context.journal and not browser.journal.durable
    (row,) = browser.experiments
    assert (row["id"], row["name"], row["n_trials"]) == (result.experiment_id, "in-memory", 4)
    browser.select_experiment(result.experiment_id)
    assert len(browser.trials) == 4
    browser.select_trial(browser.trials[0]["trial_id"])
    assert browser.trace_viewer is not None and browser.trace_viewer.trials
    with pytest.raises(dx.errors.JournalError, match="no experiment 'nope' in an in-memory journal"):
        browser.select_experiment("nope")


def test_an_unfinished_experiment_shows_the_interval_its_result_reported(journal_path):
    problems = dx.Dataset(dx.datasets.arithmetic(20, seed=6), name="unfinished")

    def stop_after_eight(event: Any) -> None:
        if isinstance(event, TrialFinished) and event.done == 8:
            raise KeyboardInterrupt("stopped by the test")

    lm = dx.lab_lm("lab/small", error_rate=0.2, seed=1)
    with dx.Context(lm=lm, journal=journal_path, threads=1), pytest.raises(KeyboardInterrupt):
        dx.evaluate(PREDICT, problems, metric=dx.metrics.exact_match, progress=stop_after_eight, retries=0)
    browser = dx.ExperimentBrowser(journal_path, trial_limit=3)
    (row,) = browser.experiments
    scores = dx.open_journal(journal_path).trials(row["id"]).query("status == 'ok'")["score"]
    # exact_match scores are 0/1: Wilson, the rule of every view (dx.stats.score_interval), not a t interval.
    low, high = wilson(int(scores.sum()), len(scores))
    assert row["ci_method"] == "wilson"
    assert row["status"] == "interrupted" and row["n_trials"] == 8 and row["n"] == len(scores)
    assert (row["mean"], row["ci_low"], row["ci_high"]) == (
        pytest.approx(scores.mean()),
        pytest.approx(low),
        pytest.approx(high),
    )
    browser.select_experiment(row["id"])
    assert len(browser.trials) == 3 and browser.tables.trial_total == 8  # the limit, and how many match


# -- VariableControls --------------------------------------------------------------------------------------


def controlled_program(*, switch: bool = True, **extra: Any) -> dx.Program:
    switches = {"verbose": dx.Bool(False, target="verbose_flag")} if switch else {}  # not buildable: no such attribute
    return dx.Program(
        "dspy.ChainOfThought",
        signature="question -> answer",
        name="qa",
        variables={
            **switches,
            "temperature": dx.Float(0.0, low=0.0, high=1.5),
            "max_tokens": dx.Int(256, low=16, high=4096),
            "model": dx.Choice("lab/small", choices=["lab/small", "lab/large"]),
            "instructions": dx.Text("Answer with a number.", max_length=200),
            "module": dx.ModuleType("dspy.ChainOfThought", choices=["dspy.Predict", "dspy.ChainOfThought"]),
            "demos": dx.Demos(max=4),
        },
        **extra,
    )


def test_controls_match_each_variables_domain():
    controls = dx.VariableControls(controlled_program())
    by_name = {spec["name"]: spec for spec in controls.controls}
    assert by_name["temperature"].items() >= {"control": "slider", "low": 0.0, "high": 1.5, "step": 0.015}.items()
    assert by_name["max_tokens"].items() >= {"control": "slider", "low": 16, "high": 4096, "integer": True}.items()
    assert by_name["model"]["control"] == "dropdown" and by_name["model"]["choices"] == ["lab/small", "lab/large"]
    assert by_name["module"]["choices"] == ["dspy.Predict", "dspy.ChainOfThought"]
    assert by_name["verbose"]["control"] == "checkbox"
    assert by_name["instructions"].items() >= {"control": "text", "max_length": 200}.items()
    assert by_name["demos"]["control"] == "fixed"  # set by optimizers, not by hand
    assert set(controls.values) == {"temperature", "max_tokens", "model", "instructions", "module", "verbose"}
    assert controls.program is controls._base and controls.preview == {"status": "none"}


def test_short_one_line_text_is_a_one_line_box_and_other_text_a_text_area():
    def multiline(text: dx.Text) -> bool:
        program = dx.Program("dspy.Predict", signature="question -> answer", variables={"instructions": text})
        return dx.VariableControls(program).controls[0]["multiline"]

    assert multiline(dx.Text("Answer with a number.", max_length=80)) is False  # Enter sends it
    assert multiline(dx.Text("Q:\nA:", max_length=40)) is True  # a value of two lines keeps its line break
    assert multiline(dx.Text("Answer with a number.", max_length=81)) is True  # long enough to span lines
    assert multiline(dx.Text("Answer with a number.")) is True  # instructions with no limit


def test_typing_pause_reaches_the_front_end_and_bad_delays_are_refused():
    assert dx.VariableControls(PREDICT_WITH_TEMPERATURE).get_state()["typing_pause"] == 0.4
    assert dx.VariableControls(PREDICT_WITH_TEMPERATURE, typing_pause=None).get_state()["typing_pause"] is None
    assert dx.VariableControls(PREDICT_WITH_TEMPERATURE, typing_pause=2).typing_pause == 2.0
    for option in ("typing_pause", "preview_delay"):
        for wrong in (-0.1, math.inf, math.nan, True, "0.4"):
            with pytest.raises(dx.errors.ProgramSpecError, match=f"{option} must be a non-negative number"):
                dx.VariableControls(PREDICT_WITH_TEMPERATURE, **{option: wrong})
    with pytest.raises(dx.errors.ProgramSpecError, match="preview_delay must be"):
        dx.VariableControls(PREDICT_WITH_TEMPERATURE, preview_delay=None)


def test_text_sent_while_typing_makes_the_program_and_one_preview_of_the_last_text():
    example = dspy.Example(question="What is 2 + 3?", answer="5").with_inputs("question")
    program = dx.Program(
        "dspy.Predict",
        signature="question -> answer",
        name="typed",
        variables={"instructions": dx.Text("Answer.", max_length=60)},
    )
    controls = dx.VariableControls(program, example=example, lm="lab/small", preview_delay=0.3)
    runs: list[dict[str, Any]] = []
    compute = controls._compute_preview
    controls._compute_preview = lambda program: runs.append(dict(program.values)) or compute(program)
    for typed in ("Rep", "Reply in", "Reply in digits."):  # what each pause in typing sends
        front_end_update(controls, values={"instructions": typed})
    assert controls.program.values["instructions"] == "Reply in digits."
    deadline = time.monotonic() + 20
    while controls.preview.get("status") != "ok" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert runs == [{"instructions": "Reply in digits."}]
    assert controls.preview["values"] == {"instructions": "Reply in digits."}
    with pytest.raises(dx.errors.VariableError):
        controls.values = {"instructions": "x" * 61}  # past max_length, as the box's own limit refuses
    assert controls.values == {"instructions": "Reply in digits."}


def test_front_end_changes_make_the_program_and_out_of_domain_values_never_do():
    base = controlled_program()
    controls = dx.VariableControls(base)
    front_end_update(
        controls, values={**controls.values, "temperature": 0.45, "max_tokens": 512.0, "model": "lab/large"}
    )
    program = controls.program
    assert program == base.with_values(temperature=0.45, max_tokens=512, model="lab/large")
    assert program.values["max_tokens"] == 512 and isinstance(program.values["max_tokens"], int)
    assert program.name != base.name  # a variant is told apart by name

    before = dict(controls.values)
    for wrong in ({"temperature": 2.0}, {"max_tokens": 8}, {"model": "lab/huge"}, {"instructions": "x" * 201}):
        with pytest.raises(dx.errors.VariableError):
            controls.values = {**before, **wrong}
        assert controls.values == before
    with pytest.raises(dx.errors.VariableError, match="unknown variable"):
        controls.values = {"colour": "red"}
    controls.values = {"verbose": True}  # a partial change keeps the other values
    assert controls.values == {**before, "verbose": True}


def test_a_broken_constraint_is_shown_and_not_previewed():
    program = controlled_program(switch=False, constraints=["temperature <= 1.0 or model == 'lab/large'"])
    example = dx.datasets.arithmetic(1, seed=0)[0]
    controls = dx.VariableControls(program, example=example, preview_delay=0.0)
    controls.values = {"temperature": 1.2}
    assert "temperature <= 1.0" in controls.error
    with pytest.raises(dx.errors.VariableError):
        controls.program  # noqa: B018
    controls.values = {"model": "lab/large"}
    assert controls.error == "" and controls.program.values["temperature"] == 1.2


def test_preview_runs_the_program_on_the_example_with_the_metric():
    example = dx.datasets.arithmetic(1, seed=0)[0]
    lm = dx.lab_lm("lab/large")
    program = controlled_program(switch=False)
    controls = dx.VariableControls(program, example=example, lm=lm, metric=dx.metrics.exact_match)
    preview = controls.run_preview()
    expected = controls.program.build(lm=lm)(**example.inputs())
    assert preview["status"] == "ok" and controls.preview == preview
    assert preview["outputs"]["answer"] == expected.answer and "reasoning" in preview["outputs"]
    assert preview["score"] == dx.metrics.exact_match(example, expected)


def test_preview_is_debounced_and_shows_the_last_values():
    example = dspy.Example(question="What is 2 + 3?", answer="5").with_inputs("question")
    controls = dx.VariableControls(PREDICT_WITH_TEMPERATURE, example=example, lm="lab/small", preview_delay=0.2)
    runs: list[dict[str, Any]] = []
    compute = controls._compute_preview
    controls._compute_preview = lambda program: runs.append(program.values) or compute(program)
    for temperature in (0.1, 0.2, 0.3):
        controls.values = {"temperature": temperature}
    assert controls.preview["status"] == "pending"
    deadline = time.monotonic() + 20
    while controls.preview.get("status") != "ok" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert controls.preview["status"] == "ok" and controls.preview["values"] == {"temperature": 0.3}
    assert runs == [{"temperature": 0.3}]  # three quick changes, one run


PREDICT_WITH_TEMPERATURE = dx.Program(
    "dspy.Predict",
    signature="question -> answer",
    name="predict-t",
    variables={"temperature": dx.Float(0.0, low=0.0, high=1.0)},
)


def test_a_dict_example_is_read_through_the_signature_and_bad_arguments_are_refused():
    controls = dx.VariableControls(PREDICT_WITH_TEMPERATURE, example={"question": "What is 1 + 1?"}, lm="lab/small")
    assert controls.run_preview()["status"] == "ok"
    with pytest.raises(dx.errors.ProgramSpecError, match="lacks the input fields"):
        dx.VariableControls(PREDICT_WITH_TEMPERATURE, example={"query": "?"})
    with pytest.raises(dx.errors.ProgramSpecError, match="with_inputs"):
        dx.VariableControls(PREDICT_WITH_TEMPERATURE, example=dspy.Example(question="?"))
    with pytest.raises(dx.errors.ProgramSpecError, match=r"takes a dx\.Program"):
        dx.VariableControls(dspy.Predict("question -> answer"))
    with pytest.raises(dx.errors.ProgramSpecError, match="without example="):
        dx.VariableControls(PREDICT_WITH_TEMPERATURE).run_preview()


def test_a_program_that_fails_shows_its_error_in_the_preview():
    example = dx.datasets.arithmetic(1, seed=0)[0]
    controls = dx.VariableControls(controlled_program(), example=example, lm="lab/small")
    preview = controls.run_preview()
    assert preview["status"] == "error" and "has no attribute 'verbose_flag'" in preview["error"]


def test_ipykernel_still_routes_comm_messages_through_the_hook_cancel_relies_on():
    # RunProgress's immediate Cancel wraps a private ipykernel hook: the kernel's shell-channel thread asks
    # each comm `_reply_subshell_for(data, subshell_id)` before the busy main thread sees the message. If an
    # ipykernel release drops or renames it, Cancel falls back to "next trial" (which cannot reach a busy
    # kernel): this test says so loudly instead of letting the button go quiet.
    import inspect

    import ipykernel.kernelbase
    from ipykernel.comm import Comm

    assert callable(getattr(Comm, "_reply_subshell_for", None)), "ipykernel's Comm lost _reply_subshell_for"
    source = inspect.getsource(ipykernel.kernelbase)
    assert 'getattr(comm, "_reply_subshell_for"' in source, "ipykernel no longer routes comm messages via the hook"
