"""Benchmark the journal under many writers, and at a million trials.

1. ``writers``: 3 writer processes run real ``dx.evaluate`` runs (lab LM) into one journal file while a
   poller process calls ``journal.experiments()`` every 100 ms. The anchor is one writer process alone,
   measured in the same run first. Printed: the longest time any writer's journal access waited
   (``access_waits()``: on the file, until it was open; through another process's journal service, the
   whole round trip), each evaluation's time against the alone median (median and worst ratio; target
   ≤ 1.5 times), the poller's polls per second (target ≥ 5, errors counted) and a nothing-lost check: every
   evaluation's trials are in the journal exactly once.
2. ``million``: 1,000,000 trials (10 experiments of 20,000 examples, 5 repeats each, spans off) ingested
   through ``TrialWriter`` (what ``dx.evaluate`` uses; target ≥ 100,000 trials/s, rows built before
   the clock starts), then the queries the dashboard and the CLI make, each the median of several runs
   (target < 100 ms each): the experiment list (``experiment_summaries()`` and ``leaderboard()``), one
   experiment's trials filtered, sorted and limited (``trial_page``, and ``trial_rows`` as ``dspex
   journal trials`` calls it), and a comparison's paired scores (``paired_scores``). The journal file's
   size per trial is printed.

Usage::

    /work/venv/bin/python bench/bench_journal.py            # 60 s of writers, 1,000,000 trials: ~3 minutes
    /work/venv/bin/python bench/bench_journal.py --quick    # 15 s of writers, 200,000 trials
    /work/venv/bin/python bench/bench_journal.py --only writers --json results.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import format_table, machine_description, median_or_none, timed, write_json

WRITERS = 3
POLL_INTERVAL = 0.1
EXAMPLES, LATENCY, THREADS = 100, 0.05, 8  # one evaluation: ~1.3 s alone on the 2-core CI machine
TARGET_RATIO, TARGET_WAIT, TARGET_POLLS = 1.5, 0.5, 5.0
TARGET_INGEST, TARGET_QUERY = 100_000, 0.1


# -- worker processes ---------------------------------------------------------------------------------------


def run_writer(journal: str, start_at: float, duration: float, output: str, label: str) -> None:
    """Evaluate into the journal from ``start_at`` until ``duration`` is over; write what happened as JSON."""
    import faulthandler
    import signal

    import dspex_lab as dx
    from dspex_lab.journal._duckdb import access_waits

    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` prints every thread's stack if a writer hangs

    problems = dx.Dataset(dx.datasets.arithmetic(EXAMPLES, seed=5), name="bench-journal")
    program = dx.Program("dspy.Predict", signature="question -> answer", name=f"writer-{label}")
    evaluations = []
    time.sleep(max(0.0, start_at - time.time()))
    end = time.monotonic() + duration
    with dx.Context(lm=dx.lab_lm("lab/small", latency=LATENCY), journal=journal, threads=THREADS):
        while time.monotonic() < end:
            with timed() as timing:
                result = dx.evaluate(program, problems, metric=dx.metrics.exact_match, progress=False)
            evaluations.append({"id": result.experiment_id, "seconds": timing.seconds, "trials": result.n_trials})
    Path(output).write_text(json.dumps({"evaluations": evaluations, "waits": access_waits()}), encoding="utf-8")


def run_poller(journal: str, start_at: float, duration: float, output: str) -> None:
    """Call ``experiments()`` every 100 ms; record polls, errors and whether the trial total ever went down."""
    from dspex_lab.journal import open_journal

    reader = open_journal(journal)
    polls, errors, totals = 0, [], []
    time.sleep(max(0.0, start_at - time.time()))
    begin = time.monotonic()
    while time.monotonic() - begin < duration:
        started = time.monotonic()
        try:
            frame = reader.experiments()
            totals.append(int(frame["n_trials"].sum()) if len(frame) else 0)
            polls += 1
        except Exception as error:
            errors.append(repr(error))
        time.sleep(max(0.0, POLL_INTERVAL - (time.monotonic() - started)))
    elapsed = time.monotonic() - begin
    monotone = all(later >= earlier for earlier, later in itertools.pairwise(totals))
    Path(output).write_text(
        json.dumps(
            {"polls": polls, "seconds": elapsed, "errors": errors[:5], "n_errors": len(errors), "monotone": monotone}
        ),
        encoding="utf-8",
    )


def _spawn(arguments: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *arguments])


# -- scenario 1: many writers -------------------------------------------------------------------------------


def measure_writers(folder: Path, duration: float, alone_duration: float) -> dict[str, Any]:
    """Run one writer alone (the anchor), then 3 writers and a poller together, on fresh journals."""
    startup = 4.0  # processes import dspex_lab before start_at, so imports are not measured
    alone_journal = folder / "alone.duckdb"
    out = folder / "alone.json"
    process = _spawn(["--writer", str(alone_journal), str(time.time() + startup), str(alone_duration), str(out), "0"])
    if process.wait() != 0:
        raise SystemExit(f"the alone writer failed (exit {process.returncode}); see its error above")
    alone = json.loads(out.read_text())
    alone_median = median_or_none([item["seconds"] for item in alone["evaluations"]])

    journal = folder / "shared.duckdb"
    start_at = time.time() + startup
    processes = [
        _spawn(["--writer", str(journal), str(start_at), str(duration), str(folder / f"w{i}.json"), str(i)])
        for i in range(WRITERS)
    ]
    processes.append(_spawn(["--poller", str(journal), str(start_at), str(duration), str(folder / "poller.json")]))
    codes = [process.wait() for process in processes]
    if any(codes):
        raise SystemExit(f"a writer or the poller failed (exit codes {codes}); see the errors above")
    writers = [json.loads((folder / f"w{i}.json").read_text()) for i in range(WRITERS)]
    poller = json.loads((folder / "poller.json").read_text())

    from dspex_lab.journal import open_journal

    reader = open_journal(journal)
    evaluations = [item for writer in writers for item in writer["evaluations"]]
    stored = reader.sql(
        "SELECT experiment_id, count(*) AS n, count(DISTINCT trial_id) AS distinct_trials FROM trials "
        "GROUP BY experiment_id"
    ).set_index("experiment_id")
    lost = [
        item["id"]
        for item in evaluations
        if item["id"] not in stored.index
        or stored.loc[item["id"], "n"] != item["trials"]
        or stored.loc[item["id"], "distinct_trials"] != item["trials"]
    ]
    ratios = [item["seconds"] / alone_median for item in evaluations]
    return {
        "alone_evaluations": len(alone["evaluations"]),
        "alone_median_seconds": alone_median,
        "evaluations": len(evaluations),
        "median_ratio": median_or_none(ratios),
        "worst_ratio": max(ratios),
        "longest_write_wait": max(writer["waits"]["write"]["longest"] for writer in writers),
        "longest_read_wait_in_writers": max(writer["waits"]["read"]["longest"] for writer in writers),
        "polls_per_second": poller["polls"] / poller["seconds"],
        "poll_errors": poller["n_errors"],
        "poll_error_examples": poller["errors"],
        "poller_saw_monotone_progress": poller["monotone"],
        "evaluations_incomplete_or_duplicated": lost,
        "exit_codes": codes,
    }


# -- scenario 2: a million trials ---------------------------------------------------------------------------


def trial_rows(experiment: int, examples: int, repeats: int) -> list[dict[str, Any]]:
    """Build the rows of one experiment, as ``TrialResult.to_row()`` makes them (about 10% failed)."""
    now = time.time()
    rows = []
    for index in range(examples):
        example_id = f"example-{index}"
        for repeat in range(repeats):
            failed = (index * 7 + repeat + experiment) % 10 == 0
            rows.append(
                {
                    "trial_id": f"{example_id}/r{repeat}",
                    "example_id": example_id,
                    "index": index,
                    "repeat": repeat,
                    "status": "error" if failed else "ok",
                    "score": None if failed else ((index * 31 + repeat * 7 + experiment * 3) % 5) / 4,
                    "prediction": None if failed else '{"answer": "42"}',
                    "error_type": "TimeoutError" if failed else None,
                    "error_message": "the LM did not answer in 30 s" if failed else None,
                    "error_stage": "lm" if failed else None,
                    "traceback": None,
                    "latency": 0.02 + (index % 97) / 1000,
                    "input_tokens": 40 + index % 13,
                    "output_tokens": 5 + repeat,
                    "cost": 0.00001 * (index % 7),
                    "lm_calls": 1,
                    "attempts": 1,
                    "started_at": now,
                    "finished_at": now + 0.02,
                    "retries": None,
                    "unpriced_models": None,
                }
            )
    return rows


def median_seconds(call: Any, repeats: int) -> float:
    call()  # the first call pays for imports and the file's first open; the median is of the rest
    seconds = []
    for _ in range(repeats):
        with timed() as timing:
            call()
        seconds.append(timing.seconds)
    return float(median_or_none(seconds) or 0.0)


def load_average() -> float:
    """Return the machine's 1-minute load average (printed next to every figure: the machine is shared)."""
    return os.getloadavg()[0]


def measure_million(folder: Path, trials: int, query_repeats: int) -> dict[str, Any]:
    """Ingest ``trials`` trials through TrialWriter, then time the dashboard's and the CLI's queries."""
    from dspex_lab.journal import ExperimentRecord, open_journal

    experiments, repeats = 10, 5
    examples = trials // (experiments * repeats)
    journal = open_journal(folder / "million.duckdb")
    ids, ingest_seconds, ingest_loads = [], 0.0, []
    for experiment in range(experiments):
        rows = trial_rows(experiment, examples, repeats)
        record = ExperimentRecord(
            kind="evaluation", name=f"million-{experiment}", program_name="bench", config={"lm": "lab/small"}
        )
        with timed() as timing, journal.hold():  # as dx.evaluate writes: holding the file, through a TrialWriter
            writer = journal.writer(record.id, create=record)
            for row in rows:
                writer.add(row)
            writer.close()
            journal.finish_experiment(record.id, status="finished")
        ingest_seconds += timing.seconds
        ingest_loads.append(load_average())
        ids.append(record.id)
        del rows
    stored = int(journal.sql("SELECT count(*) AS n FROM trials")["n"].iloc[0])
    size = os.path.getsize(journal.path) + (
        os.path.getsize(f"{journal.path}.wal") if os.path.exists(f"{journal.path}.wal") else 0
    )
    target = ids[3]
    queries = {
        "experiment_summaries()": lambda: journal.experiment_summaries(),
        "leaderboard()": lambda: journal.leaderboard(),
        "trial_page(status='ok', min_score=0.5, sort='latency', descending=True, limit=50)": lambda: journal.trial_page(
            target, status="ok", min_score=0.5, sort="latency", descending=True, limit=50
        ),
        "trial_page(offset=10_000, limit=100)": lambda: journal.trial_page(target, offset=10_000, limit=100),
        "trial_rows(status='error', order='latency', limit=50) (dspex journal trials)": lambda: journal.trial_rows(
            target, status="error", order="latency", limit=50
        ),
        "paired_scores(a, b)": lambda: journal.paired_scores(ids[0], ids[1]),
    }
    # Cold: each query opens the file (a CLI command, or a reader while no run holds the journal). Held: the
    # reader holds the journal (a dashboard that keeps it open, or any process while a run serves it).
    timings, loads = {}, {}
    for name, call in queries.items():
        timings[name] = median_seconds(call, query_repeats)
        loads[f"cold: {name}"] = load_average()
    held = {}
    with journal.hold():
        for name, call in queries.items():
            held[name] = median_seconds(call, query_repeats)
            loads[f"held: {name}"] = load_average()
    return {
        "trials": stored,
        "ingest_seconds": ingest_seconds,
        "ingest_trials_per_second": stored / ingest_seconds,
        "bytes_per_trial": size / stored,
        "query_seconds": timings,
        "query_seconds_held": held,
        "ingest_load_average": max(ingest_loads),
        "load_averages": loads,
    }


# -- reporting ----------------------------------------------------------------------------------------------


def report_writers(result: dict[str, Any]) -> bool:
    checks = [
        ("longest writer wait for the journal (s)", f"{result['longest_write_wait']:.3f}", f"≤ {TARGET_WAIT}",
         result["longest_write_wait"] <= TARGET_WAIT),
        ("evaluation time / alone, median", f"{result['median_ratio']:.2f}", f"≤ {TARGET_RATIO}",
         result["median_ratio"] <= TARGET_RATIO),
        ("evaluation time / alone, worst", f"{result['worst_ratio']:.2f}", f"≤ {TARGET_RATIO}",
         result["worst_ratio"] <= TARGET_RATIO),
        ("poller polls per second", f"{result['polls_per_second']:.1f}", f"≥ {TARGET_POLLS}",
         result["polls_per_second"] >= TARGET_POLLS),
        ("poller errors", str(result["poll_errors"]), "0", result["poll_errors"] == 0),
        ("poller saw monotone progress", str(result["poller_saw_monotone_progress"]), "True",
         result["poller_saw_monotone_progress"]),
        ("evaluations missing or duplicating trials", str(len(result["evaluations_incomplete_or_duplicated"])), "0",
         not result["evaluations_incomplete_or_duplicated"]),
    ]  # fmt: skip
    print(
        f"\n3 writers + 1 poller: {result['evaluations']} evaluations of {EXAMPLES} examples "
        f"(alone: median {result['alone_median_seconds']:.2f} s over {result['alone_evaluations']})"
    )
    print(format_table(["figure", "value", "target", "met"], [(*row[:3], "yes" if row[3] else "NO") for row in checks]))
    if result["poll_error_examples"]:
        print("poll errors:", *result["poll_error_examples"], sep="\n  ")
    return all(row[3] for row in checks)


def report_million(result: dict[str, Any]) -> bool:
    rows = [
        ("ingest (trials/s)", f"{result['ingest_trials_per_second']:,.0f}", f"≥ {TARGET_INGEST:,}",
         result["ingest_trials_per_second"] >= TARGET_INGEST, f"{result['ingest_load_average']:.2f} (highest)"),
    ]  # fmt: skip
    for label, key in (("cold", "query_seconds"), ("held", "query_seconds_held")):
        rows += [
            (f"{label}: {name} (ms)", f"{seconds * 1000:.1f}", f"< {TARGET_QUERY * 1000:.0f}", seconds < TARGET_QUERY,
             f"{result['load_averages'][f'{label}: {name}']:.2f}")
            for name, seconds in result[key].items()
        ]  # fmt: skip
    print(f"\n{result['trials']:,} trials, {result['bytes_per_trial']:.1f} bytes per trial in the journal file")
    print(
        format_table(
            ["figure", "value", "target", "met", "load average"],
            [(*row[:3], "yes" if row[3] else "NO", row[4]) for row in rows],
        )
    )
    return all(row[3] for row in rows)


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="15 s of writers and 200,000 trials")
    parser.add_argument("--only", choices=("writers", "million"), default=None, help="run one scenario")
    parser.add_argument("--duration", type=float, default=None, help="seconds of writing (default 60, quick 15)")
    parser.add_argument("--trials", type=int, default=None, help="trials to ingest (default 1,000,000)")
    parser.add_argument("--query-repeats", type=int, default=7, help="timed runs per query (default 7)")
    parser.add_argument("--json", type=Path, default=None, help="also write every number to this JSON file")
    parser.add_argument("--writer", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--poller", nargs=4, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the scenarios, print their figures against the targets; exit 1 if a target is missed."""
    arguments = parse_arguments(argv)
    if arguments.writer:
        journal, start_at, duration, output, label = arguments.writer
        run_writer(journal, float(start_at), float(duration), output, label)
        return 0
    if arguments.poller:
        journal, start_at, duration, output = arguments.poller
        run_poller(journal, float(start_at), float(duration), output)
        return 0
    duration = arguments.duration or (15.0 if arguments.quick else 60.0)
    trials = arguments.trials or (200_000 if arguments.quick else 1_000_000)
    print("machine:", json.dumps(machine_description()))
    results: dict[str, Any] = {"machine": machine_description()}
    met = True
    with tempfile.TemporaryDirectory(prefix="bench-journal-") as folder:
        if arguments.only in (None, "writers"):
            results["writers"] = measure_writers(Path(folder), duration, alone_duration=min(duration, 15.0))
            met &= report_writers(results["writers"])
        if arguments.only in (None, "million"):
            results["million"] = measure_million(Path(folder), trials, arguments.query_repeats)
            met &= report_million(results["million"])
    if arguments.json:
        write_json(arguments.json, results)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
