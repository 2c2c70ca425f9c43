"""LiveConvergenceWidget through its Python state: what each step sends to the page, and where it displays.

The drawing itself (SVG in the JupyterLab theme, mid-run updates, no outside request) is checked in
JupyterLab by test_live_convergence_jupyterlab.py.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest

pytest.importorskip("anywidget")

import dspex_lab as dx
from dspex_lab.errors import OptimizerError
from dspex_lab.notebook import LiveConvergenceWidget
from dspex_lab.notebook._widgets_convergence import convergence_payload
from dspex_lab.optimization import OptimizationStep, Subscriber, convergence_data

# The four-step run the plot tests draw (tests/optimization/test_plot.py), loaded by path: test folders
# are not packages.
_PLOT_TESTS = Path(__file__).resolve().parents[1] / "optimization" / "test_plot.py"
_spec = importlib.util.spec_from_file_location("_plot_tests", _PLOT_TESTS)
assert _spec is not None and _spec.loader is not None
_plot_tests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_plot_tests)
run_frames = _plot_tests.run_frames


PROGRAM = """\
module: dspy.ChainOfThought
signature: "question -> answer"
variables:
  temperature:
    type: float
    value: 0.5
    low: 0.0
    high: 1.0"""


def step_event(step: int, steps: Any, candidates: Any) -> OptimizationStep:
    return OptimizationStep(run_id="run", step=step, steps=steps, candidates=candidates)


def test_each_step_sends_the_panels_data_as_strict_json():
    steps, candidates = run_frames()
    shown: list[Any] = []
    widget = LiveConvergenceWidget(title="run", display=shown.append)
    assert isinstance(widget, Subscriber)
    assert widget.payload == {"step": None, "last_step": 0, "best": [], "candidates": [], "variables": []}
    widget(step_event(1, steps.head(2), candidates.head(4)))
    first = widget.payload
    assert (first["step"], first["last_step"]) == (1, 1)
    assert [row["step"] for row in first["best"]] == [0, 1]
    assert [row["candidate_id"] for row in first["candidates"]] == ["c0", "c1", "c2", "c3"]
    widget(step_event(4, steps, candidates))
    payload = widget.payload
    # JSON without NaN (a strict parser in the page would refuse it): a missing score is null.
    text = json.dumps(payload, allow_nan=False)
    assert json.loads(text) == payload
    expected = convergence_data(steps, candidates)
    assert payload["last_step"] == 4 and payload["step"] == 4
    assert [row["best_mean"] for row in payload["best"]] == pytest.approx(list(expected.best["best_mean"]))
    by_id = {row["candidate_id"]: row for row in payload["candidates"]}
    assert by_id["c3"]["outcome"] == "screened only" and by_id["c3"]["val_mean"] is None
    assert by_id["c3"]["screen_mean"] == pytest.approx(0.45)
    assert by_id["c1"]["outcome"] == "accepted" and by_id["c1"]["parent_step"] == 0
    assert all(isinstance(row["step"], int) for row in payload["candidates"])
    assert len(payload["variables"]) == len(expected.variables)
    assert {row["variable"] for row in payload["variables"]} == set(expected.variables["variable"])
    assert widget.data.best.equals(expected.best)


def test_other_objects_are_ignored_and_bad_frames_are_refused():
    steps, candidates = run_frames()
    widget = LiveConvergenceWidget(display=False)
    widget("a log line")
    widget(SimpleNamespace(steps=steps))
    assert widget.payload["step"] is None and widget.data.best.empty
    with pytest.raises(OptimizerError, match="no column 'val_mean'"):
        widget(step_event(1, steps, candidates.drop(columns=["val_mean"])))


def test_it_displays_itself_once_at_its_first_step_unless_shown_before():
    steps, candidates = run_frames()
    shown: list[Any] = []
    widget = LiveConvergenceWidget(display=shown.append)
    widget("not a step")
    assert shown == []  # nothing to draw yet: no empty box above the run's output
    widget(step_event(0, steps.head(1), candidates.head(1)))
    widget(step_event(1, steps.head(2), candidates.head(4)))
    assert shown == [widget]

    earlier: list[Any] = []
    displayed = LiveConvergenceWidget(display=earlier.append)
    data, _metadata = displayed._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in data
    displayed(step_event(0, steps.head(1), candidates.head(1)))
    assert earlier == []  # the caller displayed it: it does not appear twice

    never = LiveConvergenceWidget(display=False)
    never(step_event(0, steps.head(1), candidates.head(1)))
    assert never.payload["step"] == 0


def test_the_payload_of_empty_frames_draws_empty_panels():
    empty = convergence_data(pd.DataFrame(), pd.DataFrame())
    assert convergence_payload(empty, step=None) == {
        "step": None,
        "last_step": 0,
        "best": [],
        "candidates": [],
        "variables": [],
    }


def test_the_live_magic_draws_every_step_in_the_widget(shell, monkeypatch):
    """%dspex optimize --live: the widget (not a holoviews layout) is displayed once, at the first step."""
    import IPython.display

    shown: list[Any] = []
    monkeypatch.setattr(IPython.display, "display", lambda *objects, **_: shown.extend(objects))
    shell.run_cell_magic("dspex", "program qa", PROGRAM)
    problems = list(dx.datasets.arithmetic(40, seed=3))
    shell.user_ns.update(train=problems[:16], val=problems[16:])
    result = shell.run_line_magic(
        "dspex", "optimize qa --train train --val val --metric exact_match --max-steps 2 --bsize 8 --live --name live"
    )
    (live,) = [item for item in shown if isinstance(item, LiveConvergenceWidget)]
    assert not [item for item in shown if type(item).__module__.startswith("holoviews")]
    assert live.payload["step"] == int(result.steps["step"].max())
    assert [row["step"] for row in live.payload["best"]] == list(result.steps["step"])
    assert [row["best_mean"] for row in live.payload["best"]] == pytest.approx(list(result.steps["best_mean"]))


def test_optimize_live_adds_the_notebooks_plot_and_warns_where_there_is_none(tmp_path, monkeypatch):
    from dspex_lab import _hooks

    problems = list(dx.datasets.arithmetic(40, seed=3))
    program = dx.Program("dspy.Predict", signature="question -> answer", name="qa")
    options = {"metric": dx.metrics.exact_match, "optimizer": dx.SimbaC(max_steps=1, bsize=8), "progress": False}
    # Outside a Jupyter kernel (this test process) the root's factory gives nothing: one warning, no plot.
    assert dx._notebook_live_plot() is None
    with dx.Context(lm=dx.lab_lm(), journal=tmp_path / "j.duckdb"):
        with pytest.warns(UserWarning, match=r"optimize\(live=True\) draws in a Jupyter kernel"):
            dx.optimize(program, problems[:16], problems[16:], live=True, name="no-kernel", **options)
        # In a kernel the factory gives the widget, which hears every step and displays itself once.
        shown: list[Any] = []
        made: list[LiveConvergenceWidget] = []

        def factory() -> LiveConvergenceWidget:
            made.append(LiveConvergenceWidget(display=shown.append))
            return made[-1]

        monkeypatch.setattr(_hooks, "live_plot_factory", factory)
        result = dx.optimize(program, problems[:16], problems[16:], live=True, name="kernel", **options)
    (widget,) = made
    assert shown == [widget]
    assert [row["step"] for row in widget.payload["best"]] == list(result.steps["step"])
