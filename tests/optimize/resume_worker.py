"""A separate process that runs SIMBA-C on the lab LM into a journal and can SIGKILL itself at a chosen point.

Usage: python resume_worker.py JOURNAL [--resume RUN_ID] [--kill KIND:N]

``--kill trials:N`` kills the process when this process has finished its N-th trial (before
the journal writer's next flush, so the last trials are lost as in a real crash);
``--kill candidates:N`` right after the N-th call that journals candidates (the step's
proposals are in the journal, its screening is not); ``--kill step:N`` when the N-th step
row is finished. Prints ``run <id>`` once the run exists and ``done <id> <status>`` at the end.
"""

import argparse
import os
import signal
import sys

import dspex_lab as dx
from dspex_lab.engine import TrialFinished
from dspex_lab.journal import DuckDBJournal

# Small and fast, but every strategy (and so every source of LM calls) is exercised: demos and
# mutations from trajectories, rules written by the lab LM, and merges of what screened well.
OPTIMIZER = dx.SimbaC(max_steps=4, bsize=8, num_candidates=4, num_sources=3, patience=4, full_evals=2)
SEED = 11


def program() -> dx.Program:
    """A lab-LM program whose module type and temperature are part of the search space."""
    return dx.Program(
        "dspy.Predict",
        signature="question -> answer",
        name="qa",
        variables={
            "module": dx.ModuleType("dspy.Predict", choices=("dspy.Predict", "dspy.ChainOfThought")),
            "temperature": dx.Float(0.8, low=0.0, high=1.0),
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("journal")
    parser.add_argument("--resume")
    parser.add_argument("--kill")
    arguments = parser.parse_args()
    kind, _, count = (arguments.kill or "none:0").partition(":")
    remaining = {"left": int(count)}

    def tick(wanted: str) -> None:
        if kind == wanted:
            remaining["left"] -= 1
            if remaining["left"] <= 0:
                os.kill(os.getpid(), signal.SIGKILL)

    def on_event(event: object) -> None:
        if isinstance(event, TrialFinished):
            tick("trials")

    def on_step(event: object) -> None:
        print(f"run {event.run_id} step {event.step}", flush=True)
        tick("step")

    # The test's crash window between "proposals journaled" and "screened": a real crash can land there.
    record_candidates = DuckDBJournal.record_candidates

    def recording(self, run_id, candidates):  # type: ignore[no-untyped-def]
        record_candidates(self, run_id, candidates)
        if candidates:
            tick("candidates")

    DuckDBJournal.record_candidates = recording  # type: ignore[method-assign]

    data = list(dx.datasets.arithmetic(90, seed=23))
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=arguments.journal, threads=2):
        result = dx.optimize(
            program(),
            data[:30],
            data[30:],
            metric=dx.metrics.exact_match,
            optimizer=OPTIMIZER,
            seed=SEED,
            resume=arguments.resume,
            progress=on_event,
            subscribers=[on_step],
        )
    print(f"done {result.run_id} {result.status}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
