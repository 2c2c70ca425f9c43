"""A separate process that runs SIMBA-C on the lab LM into a journal and can SIGKILL itself at a chosen point.

Usage: python resume_worker.py JOURNAL [--resume RUN_ID] [--kill KIND@N] [--threads N] [--max-lm-calls N]

``--kill KIND@N``: once the journal holds at least N trials (counting this process's own), the
process kills itself with SIGKILL at the next ``trial`` it finishes (before the journal writer
flushes it, so the last trials are lost as in a real crash), right after the next ``proposals``
it journals (the step's candidates are in the journal, their screening is not), or when the next
``step`` it runs (not one it replays) is finished. Prints ``done <id> <status>`` at the end.
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


def _progress(path: str) -> dict[str, int]:
    """Return how many trials the journal holds and the last finished step (-1: none, or no journal yet)."""
    if not os.path.exists(path):
        return {"trials": 0, "finished_step": -1}
    journal = dx.open_journal(path)
    trials = journal.sql("select count(*) as n from trials")["n"].iloc[0]
    steps = journal.sql("select coalesce(max(step), -1) as step from optimization_steps where status = 'finished'")
    return {"trials": int(trials), "finished_step": int(steps["step"].iloc[0])}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("journal")
    parser.add_argument("--resume")
    parser.add_argument("--kill")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-lm-calls", type=int)
    arguments = parser.parse_args()
    kind, _, threshold = (arguments.kill or "none@0").partition("@")
    journaled = _progress(arguments.journal)
    trials = {"count": journaled["trials"]}

    def reached(wanted: str) -> None:
        if kind == wanted and trials["count"] >= int(threshold):
            os.kill(os.getpid(), signal.SIGKILL)

    def on_event(event: object) -> None:
        if isinstance(event, TrialFinished):
            trials["count"] += 1
            reached("trial")

    def on_step(event: object) -> None:
        if event.step > journaled["finished_step"]:
            reached("step")

    # The crash window between "proposals journaled" and "screened": a real crash can land there.
    record_candidates = DuckDBJournal.record_candidates

    def recording(self, run_id, candidates):  # type: ignore[no-untyped-def]
        record_candidates(self, run_id, candidates)
        if candidates:
            reached("proposals")

    DuckDBJournal.record_candidates = recording  # type: ignore[method-assign]

    data = list(dx.datasets.arithmetic(90, seed=23))
    budget = dx.Budget(lm_calls=arguments.max_lm_calls) if arguments.max_lm_calls else None
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=arguments.journal, threads=arguments.threads):
        result = dx.optimize(
            program(),
            data[:30],
            data[30:],
            metric=dx.metrics.exact_match,
            optimizer=OPTIMIZER,
            seed=SEED,
            budget=budget,
            resume=arguments.resume,
            progress=on_event,
            subscribers=[on_step],
        )
    print(f"done {result.run_id} {result.status}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
