"""A separate process that runs SIMBA-C into a journal, for the kill -9 and resume test.

Usage: python optimization_worker.py JOURNAL [RESUME_ID]

Prints "run <id>" as soon as the run exists, then "done <id> <status>" at the end.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from oracle import oracle_program

import dspex_lab as dx


def main() -> None:
    journal = sys.argv[1]
    resume = sys.argv[2] if len(sys.argv) > 2 else None
    data = list(dx.datasets.arithmetic(120, seed=21))
    program = oracle_program(delay=0.004)

    def announce(event: object) -> None:
        print(f"run {event.run_id} step {event.step}", flush=True)

    optimizer = dx.SimbaC(max_steps=4, bsize=16, num_candidates=3, num_sources=2, strategies=("mutate",), patience=4)
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=journal, threads=2):
        result = dx.optimize(
            program,
            data[:60],
            data[60:],
            metric=dx.metrics.exact_match,
            optimizer=optimizer,
            seed=5,
            resume=resume,
            progress=False,
            subscribers=[announce],
        )
    print(f"done {result.run_id} {result.status}", flush=True)


if __name__ == "__main__":
    main()
