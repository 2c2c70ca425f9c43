"""Where an optimization stands, as its display hears it: the same numbers as its result, step by step."""

from __future__ import annotations

from typing import Any

import dspy
import pytest
from oracle import oracle_program

import dspex_lab as dx
from dspex_lab.optimization import OptimizationEnded, OptimizationStarted, OptimizationStep

FAST = dict(max_steps=2, bsize=8, num_candidates=2, num_sources=2, patience=2)


class _Recording:
    """A run display that keeps every event and call, in order."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def begin(self, title: str) -> None:
        self.calls.append(("begin", title))

    def finish(self, status: str) -> None:
        self.calls.append(("finish", status))

    def __call__(self, event: Any) -> None:
        self.calls.append(event)

    def of(self, kind: type) -> list[Any]:
        return [call for call in self.calls if isinstance(call, kind)]


@pytest.fixture
def data() -> list[dspy.Example]:
    return list(dx.datasets.arithmetic(120, seed=7))


def test_the_display_hears_the_run_start_and_end_with_the_results_numbers(data) -> None:
    display = _Recording()
    steps: list[Any] = []
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=False, threads=2):
        result = dx.optimize(
            oracle_program(), data[:40], data[40:120], metric=dx.metrics.exact_match, optimizer=dx.SimbaC(**FAST),
            seed=1, progress=display, budget=dx.Budget(lm_calls=5_000), subscribers=[steps.append],
        )  # fmt: skip
    calls = display.calls
    assert calls[0] == ("begin", result.name) and isinstance(calls[1], OptimizationStarted)
    assert isinstance(calls[-2], OptimizationEnded) and calls[-1] == ("finish", result.status)
    started, ended = calls[1].standing, calls[-2].standing
    assert (started.step, started.lm_calls, started.planned_steps) == (None, 0, FAST["max_steps"])
    assert started.budget == ended.budget == {"lm_calls": 5_000}
    # The final standing is the result's: its whole spending, and its best with the best's interval.
    assert calls[-2].status == result.status
    assert {key: getattr(ended, key) for key in ("lm_calls", "tokens", "cost", "trials")} == {
        key: result.spending[key] for key in ("lm_calls", "tokens", "cost", "trials")
    }
    assert ended.best_id == result.best_id and ended.step == int(result.steps["step"].max())
    assert (ended.best_mean, ended.best_ci_low, ended.best_ci_high) == (result.best_result.mean, *result.best_result.ci)
    assert (ended.best_ci_method, ended.best_n) == (result.best_result.ci_method, result.best_result.n)
    # Every step's standing goes to every subscriber, its step in order; its spending is the step row's.
    standings = [event.standing for event in display.of(OptimizationStep)]
    assert [standing.step for standing in standings] == [event.step for event in steps] == [0, 1, 2]
    assert [standing.lm_calls for standing in standings] == list(result.steps["lm_calls"])
    assert all(event.standing is not None for event in steps)


def test_the_steps_table_shows_the_best_with_the_results_interval(data) -> None:
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=False, threads=2):
        result = dx.optimize(
            oracle_program(), data[:40], data[40:120], metric=dx.metrics.exact_match, optimizer=dx.SimbaC(**FAST),
            seed=1, progress=False,
        )  # fmt: skip
    last = result.steps.iloc[-1]
    # One interval rule (dx.stats.score_interval): the journaled step row and the result agree, 0/1 scores or not.
    assert (last["best_mean"], last["best_ci_low"], last["best_ci_high"]) == pytest.approx(
        (result.best_result.mean, *result.best_result.ci)
    )
    assert result.best_result.ci_method == "wilson"
    baseline = result.candidates[result.candidates["candidate_id"] == "c0"].iloc[0]
    assert (baseline["val_ci_low"], baseline["val_ci_high"]) == pytest.approx(result.baseline.ci)


def test_a_subscriber_that_is_not_the_display_hears_steps_only(data) -> None:
    heard: list[Any] = []
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=False, threads=2):
        dx.optimize(
            oracle_program(), data[:40], data[40:120], metric=dx.metrics.exact_match, optimizer=dx.SimbaC(**FAST),
            seed=1, progress=False, subscribers=[heard.append],
        )  # fmt: skip
    assert heard and all(isinstance(event, OptimizationStep) for event in heard)


def test_the_printed_step_lines_say_step_k_of_n(data, capsys) -> None:
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=False, threads=2):
        dx.optimize(
            oracle_program(), data[:40], data[40:120], metric=dx.metrics.exact_match, optimizer=dx.SimbaC(**FAST),
            seed=1, progress=True,
        )  # fmt: skip
    err = capsys.readouterr().err
    assert " step 0 of 2: baseline" in err and " step 1 of 2: " in err
