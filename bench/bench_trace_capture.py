"""Measure the recorder's own cost per DSPy call, over DSPy's callback dispatch, on a zero-latency ChainOfThought.

Run: python bench/bench_trace_capture.py [calls] [repeats]

Single-threaded, N ChainOfThought calls per side, the sides interleaved in every repeat, medians of
thread CPU time (less disturbed by other processes on a shared machine than wall time):

* ``none``: no callback;
* ``empty_callback``: an empty ``BaseCallback`` in ``dspy.context(callbacks=...)`` (DSPy's dispatch alone);
* ``empty_in_trial``: the same, each call inside a recorder trial (the trial's root span, no DSPy spans);
* ``recorder``: the recorder in ``dspy.context(callbacks=...)``, each call in a trial (what traced trials do).

A ChainOfThought call is five DSPy calls (ChainOfThought, Predict, the adapter's format and parse, the LM).
The recorder's cost per DSPy call is ``(recorder - empty_in_trial) / 5``: its handlers, without the trial span,
which is paid once per trial.

Then the handler calls DSPy made for one ChainOfThought call are recorded and replayed against the recorder
and against handlers that do nothing, in a tight loop (best of 9): the handlers' own cost with warm caches
and strings already checked for secrets, a lower bound of what they cost inside a running program.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

import dspy
from dspy.utils.callback import BaseCallback

from dspex_lab._dspy_compat import CURRENT_CALL_ID
from dspex_lab.lm import lab_lm
from dspex_lab.trace import SpanRecorder

DSPY_CALLS_PER_PROGRAM_CALL = 5


def _run(program: Any, lm: Any, recorder: SpanRecorder, side: str, calls: int) -> float:
    callbacks = {"none": [], "empty_callback": [BaseCallback()], "empty_in_trial": [BaseCallback()]}.get(
        side, [recorder]
    )
    in_trial = side in ("empty_in_trial", "recorder")
    with dspy.context(lm=lm, callbacks=callbacks):
        start = time.thread_time()
        for index in range(calls):
            if in_trial:
                with recorder.trial(f"trial-{index}"):
                    program(question=f"What is {index} + 3?")
            else:
                program(question=f"What is {index} + 3?")
        return time.thread_time() - start


def measure(calls: int = 500, repeats: int = 5) -> dict[str, float]:
    """Return the median thread CPU seconds of ``calls`` ChainOfThought calls for every side."""
    lm = lab_lm()
    program = dspy.ChainOfThought("question -> answer")
    recorder = SpanRecorder()
    sides = ("none", "empty_callback", "empty_in_trial", "recorder")
    for side in sides:  # warm caches and imports
        _run(program, lm, recorder, side, 50)
    timings: dict[str, list[float]] = {side: [] for side in sides}
    for repeat in range(repeats):
        # Interleaved, in rotating order, so that drift (other processes) affects all sides alike.
        for side in sides[repeat % 4 :] + sides[: repeat % 4]:
            timings[side].append(_run(program, lm, recorder, side, calls))
    return {side: statistics.median(values) for side, values in timings.items()}


class _Calls(BaseCallback):
    """Records every handler call DSPy makes, with the active call id it was made under."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, dict[str, Any], Any]] = []

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("on_"):
            calls = object.__getattribute__(self, "calls")
            return lambda **arguments: calls.append((name, arguments, CURRENT_CALL_ID.get()))
        return super().__getattribute__(name)


class _Nothing(SpanRecorder):
    """A recorder whose DSPy handlers do nothing."""

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("on_") and name != "on_trace":
            return lambda **arguments: None
        return super().__getattribute__(name)


def _replay(recorder: SpanRecorder, calls: list[tuple[str, dict[str, Any], Any]], rounds: int) -> float:
    handlers = [(getattr(recorder, name), arguments, active) for name, arguments, active in calls]
    start = time.thread_time()
    for index in range(rounds):
        with recorder.trial(f"trial-{index}"):
            for handler, arguments, active in handlers:
                CURRENT_CALL_ID.set(active)
                handler(**{**arguments, "call_id": f"{arguments['call_id']}-{index}"})
    CURRENT_CALL_ID.set(None)
    return time.thread_time() - start


def replay(rounds: int = 3000) -> float:
    """Return the recorder's handlers' µs per DSPy call, replaying one ChainOfThought call's handler calls."""
    recorded = _Calls()
    with dspy.context(lm=lab_lm(), callbacks=[recorded]):
        dspy.ChainOfThought("question -> answer")(question="What is 1 + 3?")
    recorder, nothing = SpanRecorder(), _Nothing()
    _replay(recorder, recorded.calls, 300)
    _replay(nothing, recorded.calls, 300)
    best = min(_replay(recorder, recorded.calls, rounds) - _replay(nothing, recorded.calls, rounds) for _ in range(9))
    return best / rounds / DSPY_CALLS_PER_PROGRAM_CALL * 1e6


def main() -> int:
    """Print every side's µs per ChainOfThought call and the recorder's µs per DSPy call."""
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    result = measure(calls, repeats)
    print(f"[thread CPU time, median of {repeats} x {calls} ChainOfThought calls]")
    for side, seconds in result.items():
        print(f"{side:>15}: {seconds / calls * 1e6:7.0f} µs per ChainOfThought call")
    dispatch = (result["empty_callback"] - result["none"]) / calls / DSPY_CALLS_PER_PROGRAM_CALL * 1e6
    trial = (result["empty_in_trial"] - result["empty_callback"]) / calls * 1e6
    handlers = (result["recorder"] - result["empty_in_trial"]) / calls / DSPY_CALLS_PER_PROGRAM_CALL * 1e6
    print(f"DSPy's dispatch to one empty callback: {dispatch:5.1f} µs per DSPy call")
    print(f"the trial's root span:                 {trial:5.1f} µs per trial")
    print(f"the recorder's handlers:               {handlers:5.1f} µs per DSPy call (over DSPy's dispatch)")
    print(f"the same handlers, replayed:           {replay():5.1f} µs per DSPy call (warm, best of 9)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
