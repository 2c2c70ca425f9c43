"""A separate process that evaluates into a journal, for crash, resume and concurrency tests.

Usage: python evaluation_worker.py JOURNAL N LATENCY THREADS LOG [RESUME_ID]

Every finished trial is appended to LOG as "<unix time> <trial>" and flushed at once,
so the parent knows what had finished before it killed this process.
"""

import signal
import sys
import time

import dspex_lab as dx
from dspex_lab.engine import RunStarted, TrialFinished


def main() -> None:
    # A shell without job control starts background commands with SIGINT ignored, and Python keeps an
    # ignored SIGINT ignored: restore Ctrl-C so the test's SIGINT reaches the run however CI launched us.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    journal, n, latency, threads, log_path = (
        sys.argv[1],
        int(sys.argv[2]),
        float(sys.argv[3]),
        int(sys.argv[4]),
        sys.argv[5],
    )
    resume = sys.argv[6] if len(sys.argv) > 6 else None
    problems = dx.Dataset(dx.datasets.arithmetic(n, seed=9), name=f"crash-{n}")
    program = dx.Program("dspy.Predict", signature="question -> answer", name="crash-test")
    log = open(log_path, "a", buffering=1)  # noqa: SIM115 - open for the whole process, line-buffered

    def record(event: object) -> None:
        if isinstance(event, RunStarted):
            log.write(f"started {event.run_id}\n")
        elif isinstance(event, TrialFinished):
            log.write(f"{time.time():.6f} {event.result.example_id}\n")

    with dx.Context(lm=dx.lab_lm("lab/small", latency=latency), journal=journal, threads=threads):
        result = dx.evaluate(program, problems, metric=dx.metrics.exact_match, resume=resume, progress=record)
    log.write(f"done {result.experiment_id} {result.n_trials}\n")


if __name__ == "__main__":
    main()
