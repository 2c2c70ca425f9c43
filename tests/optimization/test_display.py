"""What a run talks to while it goes: subscribers and run displays, reached through typed protocols."""

from __future__ import annotations

from typing import Any

import dspy
import pytest
from oracle import oracle_program

import dspex_lab as dx
from dspex_lab.engine import RunFinished, RunStarted, TrialFinished
from dspex_lab.errors import DspexLabWarning, OptimizerError
from dspex_lab.optimization import LiveConvergence, OptimizationStep, RunDisplay, Subscriber

FAST = dict(max_steps=2, bsize=8, num_candidates=2, num_sources=2, patience=2, strategies=("mutate",))


class _Recording:
    """A run display that keeps what it was told, in order."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def begin(self, title: str) -> None:
        self.calls.append(("begin", title))

    def finish(self, status: str) -> None:
        self.calls.append(("finish", status))

    def __call__(self, event: Any) -> None:
        self.calls.append(type(event).__name__)


@pytest.fixture
def data() -> list[dspy.Example]:
    return list(dx.datasets.arithmetic(120, seed=7))


def test_the_notebook_widget_and_the_live_plot_satisfy_the_protocols() -> None:
    pytest.importorskip("anywidget")
    assert isinstance(dx.RunProgress(), RunDisplay)
    assert isinstance(LiveConvergence(), Subscriber) and not isinstance(LiveConvergence(), RunDisplay)
    assert isinstance(print, Subscriber) and not isinstance("text", Subscriber)


def test_a_run_display_hears_the_run_begin_then_its_events_then_how_it_ended(data) -> None:
    display = _Recording()
    steps: list[int] = []
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=False, threads=2):
        result = dx.optimize(
            oracle_program(), data[:40], data[40:120], metric=dx.metrics.exact_match,
            optimizer=dx.SimbaC(**FAST), seed=1, progress=display,
            subscribers=[lambda event: steps.append(event.step)],
        )  # fmt: skip
    calls = display.calls
    assert calls[0] == ("begin", result.name) and calls[-1] == ("finish", result.status)
    middle = set(calls[1:-1])
    assert {RunStarted.__name__, TrialFinished.__name__, RunFinished.__name__, OptimizationStep.__name__} <= middle
    assert calls.count(OptimizationStep.__name__) == len(steps) == len(result.steps)


def test_a_display_hears_the_end_of_a_failed_run(data) -> None:
    display = _Recording()

    def broken(example: Any, prediction: Any) -> float:
        raise ZeroDivisionError("metric")

    with (
        dx.Context(lm=dx.lab_lm("lab/small"), journal=False),
        pytest.warns(DspexLabWarning, match="every trial"),
        pytest.raises(OptimizerError, match="baseline"),
    ):
        dx.optimize(
            oracle_program(), data[:40], data[40:120], metric=broken, optimizer=dx.SimbaC(**FAST), progress=display
        )
    assert display.calls[0][0] == "begin" and display.calls[-1] == ("finish", "failed")


def test_a_subscriber_that_is_not_callable_is_refused_before_the_run(data) -> None:
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=False), pytest.raises(OptimizerError, match="subscribers"):
        dx.optimize(
            oracle_program(), data[:40], data[40:120], metric=dx.metrics.exact_match,
            optimizer=dx.SimbaC(**FAST), progress=False, subscribers=["not a function"],
        )  # fmt: skip
