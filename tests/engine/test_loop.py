"""The coordination loop every executor shares, driven by a scripted backend: delivery once and in order of
arrival, requeues to the front, suspects apart, lost trials as records, stopping, stuck-worker accounting."""

from __future__ import annotations

import ast
import pathlib
import time
from collections.abc import Hashable, Sequence
from typing import Any

import dspy
import pytest

import dspex_lab.engine
from dspex_lab.engine import RetryPolicy, RunStatus, TrialRunner, TrialTask, trial_record
from dspex_lab.engine._contract import (
    Message,
    SetupFailed,
    TrialLost,
    TrialReturned,
    TrialsRequeued,
    TrialsSuspected,
    WorkerStuck,
)
from dspex_lab.engine._loop import TrialLedger, coordinate
from dspex_lab.errors import ExecutionError


def tasks(n: int) -> list[TrialTask]:
    return [TrialTask(index=i, example_id=f"e{i}", example=dspy.Example(x=i).with_inputs("x")) for i in range(n)]


def returned(number: int, *, spans: tuple[Any, ...] = ()) -> TrialReturned:
    record = trial_record(index=number, example_id=f"e{number}", repeat=0, status="ok", score=1.0, prediction=None)
    return TrialReturned(number, record, spans)


class ScriptedBackend:
    """A backend whose rounds are scripted: round k's ``receive`` returns ``rounds[k]`` (a list, or an exception).

    ``submit`` notes the queue and suspects it sees, then takes up to ``per_round`` trials from the queue and
    one suspect.
    """

    def __init__(
        self,
        rounds: Sequence[list[Message] | BaseException],
        *,
        per_round: int = 100,
        replace_at: int = 1,
        refusal: str | None = None,
        replace_refusal: str | None = None,
    ) -> None:
        self.rounds = list(rounds)
        self.per_round = per_round
        self.replace_at = replace_at
        self.refusal = refusal
        self.replace_refusal = replace_refusal
        self.seen: list[tuple[list[int], list[int]]] = []  # (queue, suspects) at each submit
        self.replaced: list[Hashable] = []
        self.stopped: tuple[str, list[Hashable]] | None = None
        self.ledger: TrialLedger | None = None

    def start(self, ledger: TrialLedger) -> str | None:
        self.ledger = ledger
        return self.refusal

    def submit(self) -> None:
        assert self.ledger is not None
        self.seen.append(([item.number for item in self.ledger.queue], [item.number for item in self.ledger.suspects]))
        self.ledger.take(self.ledger.queue, self.per_round)
        self.ledger.take(self.ledger.suspects, 1)

    def receive(self) -> list[Message]:
        if not self.rounds:
            raise AssertionError("the loop waited for trials no round of the script answers")
        answer = self.rounds.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def expire(self) -> list[Message]:
        return []

    def replace(self, worker: Hashable) -> str | None:
        self.replaced.append(worker)
        return self.replace_refusal

    def stop(self, status: str, stuck: Sequence[Hashable]) -> None:
        self.stopped = (status, list(stuck))


def run(backend: ScriptedBackend, n: int, *, stop_at: int | None = None, span_sink: Any = None) -> tuple[Any, list]:
    delivered = []

    def on_result(result: Any) -> bool:
        delivered.append(result)
        return stop_at is not None and len(delivered) >= stop_at

    runner = TrialRunner(dspy.Predict("x -> y"), lambda example, prediction: 1.0, lm=None, retry=RetryPolicy())
    runner.span_sink = span_sink
    return coordinate(tasks(n), backend, runner=runner, on_result=on_result), delivered


def test_each_trial_is_delivered_once_in_order_of_arrival_whichever_copy_answers_first() -> None:
    spans: list[tuple[str, tuple[Any, ...]]] = []
    # A chunk run again after its worker died answers trials 0 and 2 a second time.
    backend = ScriptedBackend(
        [[returned(0, spans=("s0",)), returned(2)], [returned(0, spans=("again",)), returned(1), returned(2)]]
    )
    outcome, delivered = run(backend, 3, span_sink=lambda trial_id, items: spans.append((trial_id, items)))
    assert (outcome.status, outcome.detail) == (RunStatus.FINISHED, None)
    assert [result.index for result in delivered] == [0, 2, 1]
    assert spans == [("e0/r0", ("s0",))]  # the copy's spans are not sent again
    assert backend.stopped == (RunStatus.FINISHED, [])


def test_requeued_trials_go_back_to_the_front_and_suspects_wait_in_their_own_queue() -> None:
    backend = ScriptedBackend(
        [
            [TrialsRequeued((0,))],  # trial 0 did not run: first in line again (1 runs on)
            [TrialsSuspected((0, 1)), returned(2)],  # their worker died: both run alone; 2 answered before
            [TrialsRequeued((0,), isolated=True), TrialsRequeued((2,))],  # 2 is delivered: not queued again
            [returned(0), returned(3)],
            [returned(1)],
        ],
        per_round=2,
    )
    outcome, delivered = run(backend, 4)
    assert outcome.status == RunStatus.FINISHED
    assert backend.seen == [([0, 1, 2, 3], []), ([0, 2, 3], []), ([3], [0, 1]), ([], [0, 1]), ([], [1])]
    assert [result.index for result in delivered] == [2, 0, 3, 1]


def test_a_trial_the_backend_lost_is_recorded_as_an_error_at_the_runner_stage() -> None:
    started = time.time() - 2.0
    lost = TrialLost(1, ExecutionError("the worker died while running this trial alone"), started)
    outcome, delivered = run(ScriptedBackend([[returned(0), lost, TrialLost(0, ValueError("late"), started)]]), 2)
    assert outcome.status == RunStatus.FINISHED and len(delivered) == 2  # trial 0's late loss is not recorded
    record = delivered[1]
    assert (record.example_id, record.status, record.error_stage) == ("e1", "error", "runner")
    assert record.error_type == "ExecutionError" and "died while running" in record.error_message
    assert record.started_at == started and record.score is None


def test_a_stop_drops_the_rest_of_the_round_but_still_notes_stuck_workers_for_the_end() -> None:
    backend = ScriptedBackend([[returned(0), returned(1), WorkerStuck("w1", 1), returned(2)]], replace_at=2)
    outcome, delivered = run(backend, 5, stop_at=1)
    assert outcome.status == RunStatus.STOPPED and [result.index for result in delivered] == [0]
    assert backend.stopped == (RunStatus.STOPPED, ["w1"]) and backend.replaced == []


def test_stuck_workers_are_replaced_at_the_threshold_and_the_others_when_the_run_ends() -> None:
    backend = ScriptedBackend(
        [
            [WorkerStuck("a", 1), WorkerStuck("b", 2), returned(0)],
            [WorkerStuck("c", 1), WorkerStuck("c", 3), returned(1)],
        ],
        replace_at=2,
    )
    outcome, _ = run(backend, 2)
    assert outcome.status == RunStatus.FINISHED
    assert backend.replaced == ["b", "c"] and backend.stopped == (RunStatus.FINISHED, ["a"])


def test_a_backend_that_may_not_replace_a_stuck_worker_stops_the_run_and_says_why() -> None:
    backend = ScriptedBackend([[returned(0), WorkerStuck("t", 1), returned(1)]], replace_refusal="too many stuck")
    outcome, delivered = run(backend, 3)
    assert (outcome.status, outcome.detail) == (RunStatus.STOPPED, "too many stuck") and len(delivered) == 1


def test_a_refused_start_stops_the_run_before_any_trial_and_an_empty_run_starts_nothing() -> None:
    refused = ScriptedBackend([], refusal="no room left")
    outcome, delivered = run(refused, 3)
    assert (outcome.status, outcome.detail, delivered) == (RunStatus.STOPPED, "no room left", [])
    assert refused.seen == [] and refused.stopped == (RunStatus.STOPPED, [])

    empty = ScriptedBackend([])
    outcome, _ = run(empty, 0)
    assert outcome.status == RunStatus.FINISHED and empty.ledger is None and empty.stopped is None


def test_a_worker_that_cannot_rebuild_the_runner_is_one_error_and_the_backend_still_stops() -> None:
    backend = ScriptedBackend([[returned(0), SetupFailed("a worker could not rebuild the trial runner: nope")]])
    with pytest.raises(ExecutionError, match="could not rebuild the trial runner: nope"):
        run(backend, 2)
    assert backend.stopped == (RunStatus.FINISHED, [])


def test_an_interrupt_while_waiting_interrupts_the_run_and_the_backend_cancels() -> None:
    backend = ScriptedBackend([[returned(0)], KeyboardInterrupt()])
    outcome, delivered = run(backend, 3)
    assert outcome.status == RunStatus.INTERRUPTED and len(delivered) == 1
    assert backend.stopped == (RunStatus.INTERRUPTED, [])


def _engine_imports(path: pathlib.Path) -> set[str]:
    """The engine modules ``path`` imports (anywhere in it: at the top or inside a function)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dspex_lab.engine."):
            found.add(node.module.rsplit(".", 1)[1])
    return found


def test_imports_point_one_way_from_the_shared_types_to_the_loop_to_the_executors() -> None:
    engine = pathlib.Path(dspex_lab.engine.__file__).parent
    imports = {path.stem: _engine_imports(path) for path in engine.glob("_*.py") if path.stem != "__init__"}
    assert imports["_contract"] <= {"_trial"}
    assert imports["_loop"] <= {"_contract", "_trial"}
    # Only make_executor (in _executor) names the backends; no backend imports it back.
    assert [name for name, used in imports.items() if "_executor" in used] == []
    assert {name for name, used in imports.items() if used & {"_process", "_dask"}} == {"_executor"}
