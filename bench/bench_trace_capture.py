"""Measure the recorder's capture overhead on a zero-latency ChainOfThought run.

Run: python bench/bench_trace_capture.py [calls] [repeats]
Prints the median (of 3 by default) wall and CPU time of N single-threaded calls with no callbacks,
with an empty ``BaseCallback`` registered with DSPy (DSPy's own dispatch cost), with the recorder
registered with DSPy, and with the recorder bound by direct dispatch (what traced evaluations use).
"""

from __future__ import annotations

import statistics
import sys
import time

import dspy
from dspy.utils.callback import BaseCallback

from dspex_lab.lm import lab_lm
from dspex_lab.trace import SpanRecorder, dispatch


def measure(calls: int = 500, repeats: int = 3, *, clock=time.perf_counter) -> dict[str, float]:
    lm = lab_lm()
    program = dspy.ChainOfThought("question -> answer")
    recorder = SpanRecorder()
    if not dispatch.install():
        raise SystemExit("direct dispatch is not available for this DSPy version")

    def run(callbacks: list, *, traced: bool, direct: bool = False) -> float:
        with dspy.context(lm=lm, callbacks=callbacks):
            start = clock()
            for index in range(calls):
                if direct:
                    with dispatch.direct(recorder), recorder.trial(f"trial-{index}"):
                        program(question=f"What is {index} + 3?")
                elif traced:
                    with recorder.trial(f"trial-{index}"):
                        program(question=f"What is {index} + 3?")
                else:
                    program(question=f"What is {index} + 3?")
            return clock() - start

    run([], traced=False)  # warm caches and imports
    timings: dict[str, list[float]] = {"none": [], "empty_callback": [], "recorder": [], "direct": []}
    for _ in range(repeats):
        # Interleaved so that drift (thermal, other processes) affects all sides alike.
        timings["none"].append(run([], traced=False))
        timings["empty_callback"].append(run([BaseCallback()], traced=False))
        timings["recorder"].append(run([recorder], traced=True))
        timings["direct"].append(run([], traced=True, direct=True))
    return {name: statistics.median(values) for name, values in timings.items()}


if __name__ == "__main__":
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    for label, clock in (("wall", time.perf_counter), ("cpu", time.process_time)):
        result = measure(calls, repeats, clock=clock)
        print(f"[{label} time, median of {repeats} x {calls} ChainOfThought calls]")
        for name, seconds in result.items():
            print(f"{name:>15}: {seconds:.3f} s  ({seconds / calls * 1e6:.0f} µs/call)")
        print(f"recorder / none           = {result['recorder'] / result['none']:.3f}")
        print(f"recorder / empty callback = {result['recorder'] / result['empty_callback']:.3f}")
        print(f"direct / none             = {result['direct'] / result['none']:.3f}")
