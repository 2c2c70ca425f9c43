"""Benchmark the dashboard's pages on a journal of a million trials, anchored on the same pages over a small one.

Each journal is written through the journal's own writing path (``create_experiment`` and
``append_trials`` inside ``journal.hold()``, as a run writes): a few hundred evaluations over the same
example ids (0/1 scores, so any two compare), one traced trial, and one short SIMBA-C run on the lab LM
for the optimization page. Then one :class:`~dspex_lab.notebook._dashboard.Dashboard` is built on it
and every page's query and update is timed, median of ``--repeats``:

- the raw journal queries the pages make (``leaderboard``, a filtered ``leaderboard``, ``trial_page``
  sorted by score, ``paired_scores``, one trial's ``trace``) — target < 100 ms each at a million trials;
- each page's whole update (query, frames, holoviews objects, Panel widgets; no browser);
- the idle refresh (nothing changed on disk: two ``stat`` calls) and a forced refresh of every page.

The small journal (``--anchor-trials``, default 2,000) is measured the same way in the same run, and the
ratio says how much a page slows down from a small journal to a large one.

With ``--startup N``, it times instead what a user waits for when starting ``dspex dashboard`` on the small
journal, N times: from the command to the server listening, and to its first page served (a session built:
the experiments page queried and laid out), wall and CPU time of the server process (CPU moves less with the
load of a shared machine).

Run: python bench/bench_dashboard.py [--trials 1000000] [--experiments 400] [--repeats 7] [--json PATH]
     python bench/bench_dashboard.py --startup 5
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import format_table, machine_description, median_or_none, timed, write_json

import dspex_lab as dx
from dspex_lab.journal import DuckDBJournal, ExperimentRecord, open_journal
from dspex_lab.trace import Span

TARGET_MS = 100.0
# Trials per append: what a long run's writer flushes in one transaction at most.
_BATCH = 50_000


def _trial_rows(experiment_index: int, examples: int, start: float) -> list[dict[str, Any]]:
    # Skill differs per experiment, so the leaderboard's means and intervals differ too.
    skill = 0.3 + 0.4 * ((experiment_index * 37) % 100) / 100
    rows = []
    for example in range(examples):
        correct = ((example * 7919 + experiment_index * 104729) % 1000) / 1000 < skill
        failed = (example + experiment_index) % 97 == 0
        rows.append(
            {
                "trial_id": f"ex-{example}/r0",
                "example_id": f"ex-{example}",
                "index": example,
                "repeat": 0,
                "status": "error" if failed else "ok",
                "score": None if failed else float(correct),
                "error_type": "AdapterParseError" if failed else None,
                "error_message": "could not parse the answer" if failed else None,
                "latency": 0.02 + (example % 13) / 1000,
                "input_tokens": 120,
                "output_tokens": 12,
                "cost": 0.0,
                "lm_calls": 1,
                "attempts": 1,
                "started_at": start + example * 0.001,
                "finished_at": start + example * 0.001 + 0.02,
            }
        )
    return rows


def _trace_spans(trial_id: str, start_ns: int) -> list[dict[str, Any]]:
    def span(span_id: str, parent: str | None, kind: str, name: str, begin: int, end: int, **attributes: Any) -> Any:
        return Span(
            trial_id,
            span_id,
            parent_id=parent,
            kind=kind,
            name=name,
            start_ns=start_ns + begin * 1000,
            end_ns=start_ns + end * 1000,
            attributes=attributes,
        ).to_row()

    return [
        span("s0", None, "trial", trial_id, 0, 2000),
        span("s1", "s0", "attempt", "attempt 1", 10, 1900, attempt=1),
        span("s2", "s1", "module", "Predict", 20, 1800, signature="question -> answer"),
        span("s3", "s2", "adapter_format", "ChatAdapter.format", 30, 300),
        span("s4", "s2", "lm", "lab/small", 310, 1500, total_tokens=132, prompt_tokens=120, completion_tokens=12),
        span("s5", "s2", "adapter_parse", "ChatAdapter.parse", 1510, 1600),
        span("s6", "s0", "metric", "exact_match", 1910, 1990, score=1.0),
    ]


def build_journal(path: Path, *, trials: int, experiments: int) -> dict[str, Any]:
    """Write ``trials`` trials over ``experiments`` evaluations (and one optimization run); return ids and timings."""
    journal = open_journal(path)
    examples = max(trials // experiments, 1)
    ids: list[str] = []
    start = time.time()
    with timed() as ingest, journal.hold():
        for index in range(experiments):
            record = ExperimentRecord(
                kind="evaluation",
                name=f"{'predict' if index % 2 else 'cot'}-{index:04d}",
                program_name="qa",
                dataset_name="bench",
                dataset_fingerprint="bench-data",
                metric="exact_match",
                config={"lm": {"model": "lab/small"}, "trace": index == 0},
                n_planned=examples,
            )
            experiment_id = journal.create_experiment(record)
            rows = _trial_rows(index, examples, start + index)
            for offset in range(0, len(rows), _BATCH):
                spans = _trace_spans(rows[0]["trial_id"], time.time_ns()) if index == 0 and offset == 0 else ()
                journal.append_trials(experiment_id, rows[offset : offset + _BATCH], spans=spans)
            journal.finish_experiment(experiment_id, status="finished")
            ids.append(experiment_id)
    run_id = _optimization_run(path)
    return {
        "ids": ids,
        "run_id": run_id,
        "trials": examples * experiments,
        "ingest_seconds": ingest.seconds,
        "file_bytes": path.stat().st_size,
    }


def _optimization_run(path: Path) -> str:
    data = list(dx.datasets.arithmetic(40, seed=3))
    program = dx.Program("dspy.Predict", signature="question -> answer", name="bench-opt")
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=path, threads=2):
        run = dx.optimize(
            program,
            data[:20],
            data[20:],
            metric=dx.metrics.exact_match,
            optimizer=dx.SimbaC(max_steps=2, bsize=6, num_candidates=2, num_sources=1, patience=2),
            progress=False,
            seed=1,
        )
    return run.run_id


def _median_ms(action: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Return the median wall and CPU milliseconds of ``action`` (CPU: every thread of this process)."""
    action()  # warm: first imports and caches are not what a user waits for on every refresh
    wall, cpu = [], []
    for _ in range(repeats):
        with timed() as timing:
            action()
        wall.append(timing.seconds)
        cpu.append(timing.cpu_seconds)
    return 1000 * float(median_or_none(wall) or math.nan), 1000 * float(median_or_none(cpu) or math.nan)


def measure(journal: DuckDBJournal, built: dict[str, Any], *, repeats: int) -> dict[str, tuple[float, float]]:
    """Time each page's queries and updates on one journal (median wall and CPU milliseconds)."""
    from dspex_lab.notebook._dashboard import PAGES, Dashboard

    a, b = built["ids"][0], built["ids"][1]
    traced_trial = "ex-0/r0"
    dashboard = Dashboard(journal)
    for page in PAGES:  # each page is drawn when first shown; a refresh redraws those shown
        dashboard.open_page(page)
    dashboard.compare_a.value, dashboard.compare_b.value = a, b
    dashboard.trace_experiment.value = a
    dashboard.trial_sort.value = "score"
    dashboard.trial_descending.value = True

    def filtered_page() -> None:
        dashboard.name_filter.value = "predict-00" if dashboard.name_filter.value != "predict-00" else "predict-01"

    results = {
        "query: leaderboard (500 newest, mean and CI)": lambda: journal.leaderboard(),
        "query: leaderboard, name filter": lambda: journal.leaderboard(name="predict-00"),
        "query: trial_page (by score, descending, 50)": lambda: journal.trial_page(
            a, sort="score", descending=True, limit=50
        ),
        "query: trial_page, errors only": lambda: journal.trial_page(a, status="error", limit=50),
        "query: paired_scores of two experiments": lambda: journal.paired_scores(a, b),
        "query: one trial's trace": lambda: journal.trace(a, traced_trial),
        "query: comparable_pair (the compare page's first pair)": journal.comparable_pair,
        "page: experiments (query, table, drawing)": dashboard.refresh_leaderboard,
        "page: experiments after a filter change": filtered_page,
        "page: compare (pairs, paired test, drawings)": dashboard.refresh_comparison,
        "page: trace, trial table": dashboard.refresh_trials,
        "page: trace, one trial's tree": lambda: dashboard.show_trace(traced_trial),
        "page: optimization (convergence, lineage)": lambda: dashboard.refresh_run(),
        "refresh, nothing changed (stat only)": dashboard.refresh,
        "refresh after a write (leaderboard, menus)": lambda: dashboard.refresh(force=True),
    }
    dashboard.run_select.value = built["run_id"]
    return {label: _median_ms(action, repeats) for label, action in results.items()}


def _process_cpu_seconds(pid: int) -> float:
    """Return a running process's user and system CPU seconds so far (Linux: /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_startup(path: Path, *, rounds: int) -> list[dict[str, float]]:
    """Start ``dspex dashboard`` on ``path`` ``rounds`` times; time it listening and serving its first page."""
    timings = []
    for _ in range(rounds):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        command = [sys.executable, "-m", "dspex_lab.cli", "dashboard", "--journal", str(path), "--no-browser"]
        start = time.perf_counter()
        server = subprocess.Popen(
            [*command, "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        try:
            server.stdout.readline()  # type: ignore[union-attr]  # the line giving the URL: it listens
            listening, listening_cpu = time.perf_counter() - start, _process_cpu_seconds(server.pid)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=300) as response:
                response.read()  # served once the session (its first page) is built
            served, served_cpu = time.perf_counter() - start, _process_cpu_seconds(server.pid)
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=60)
        timings.append(
            {"listening": listening, "listening_cpu": listening_cpu, "served": served, "served_cpu": served_cpu}
        )
    return timings


def _startup(rounds: int, anchor_trials: int, json_path: str | None) -> int:
    with tempfile.TemporaryDirectory(prefix="dspex-bench-dashboard-") as folder:
        path = Path(folder) / "small.duckdb"
        build_journal(path, trials=anchor_trials, experiments=4)
        print(f"load average before measuring: {machine_description()['load_average']}")
        timings = measure_startup(path, rounds=rounds)
    rows = [
        [
            label,
            f"{median_or_none([t[key] for t in timings]):.2f} s",
            f"{median_or_none([t[key + '_cpu'] for t in timings]):.2f} s",
        ]
        for label, key in (("listening (URL printed)", "listening"), ("first page served (session built)", "served"))
    ]
    print(f"\n`dspex dashboard` start-up, medians of {rounds} (wall, and the server's CPU):")
    print(format_table(["from the command to", "wall", "CPU"], rows))
    if json_path:
        write_json(json_path, {"machine": machine_description(), "startup": timings})
    return 0


def main() -> int:
    """Build both journals, time every page on each, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1_000_000, help="trials in the large journal")
    parser.add_argument("--experiments", type=int, default=400, help="evaluations in the large journal")
    parser.add_argument("--anchor-trials", type=int, default=2_000, help="trials in the small (anchor) journal")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", default=None, help="also write the figures here")
    parser.add_argument("--startup", type=int, default=0, help="time `dspex dashboard` starting this many times")
    arguments = parser.parse_args()
    if arguments.startup:
        return _startup(arguments.startup, arguments.anchor_trials, arguments.json)

    with tempfile.TemporaryDirectory(prefix="dspex-bench-dashboard-") as folder:
        small_path, large_path = Path(folder) / "small.duckdb", Path(folder) / "large.duckdb"
        small = build_journal(small_path, trials=arguments.anchor_trials, experiments=4)
        large = build_journal(large_path, trials=arguments.trials, experiments=arguments.experiments)
        print(f"load average before measuring: {machine_description()['load_average']}")
        print(
            f"large journal: {large['trials']:,} trials in {arguments.experiments} evaluations, written in "
            f"{large['ingest_seconds']:.1f} s ({large['trials'] / large['ingest_seconds']:,.0f} trials/s), "
            f"{large['file_bytes'] / large['trials']:.0f} bytes per trial"
        )
        small_times = measure(open_journal(small_path), small, repeats=arguments.repeats)
        large_times = measure(open_journal(large_path), large, repeats=arguments.repeats)

    rows = []
    for label, (large_ms, large_cpu_ms) in large_times.items():
        small_ms = small_times[label][0]
        verdict = ("ok" if large_ms < TARGET_MS else "OVER") if label.startswith("query") else ""
        ratio = f"{large_ms / small_ms:.2f}" if small_ms else "—"
        rows.append([label, f"{large_ms:.1f} ms", f"{large_cpu_ms:.1f} ms", f"{small_ms:.1f} ms", ratio, verdict])
    print(
        f"\nMedians of {arguments.repeats} (after one warm-up); target < {TARGET_MS:.0f} ms per query "
        f"at {large['trials']:,} trials; anchor: the same on {small['trials']:,} trials. CPU time counts every "
        "thread of this process (DuckDB's too), so it can exceed wall time; it moves less with other load."
    )
    headers = ["measurement", f"{large['trials']:,} trials", "its CPU", "anchor", "ratio", "target"]
    print(format_table(headers, rows))
    if arguments.json:
        write_json(
            arguments.json,
            {"machine": machine_description(), "large": large_times, "small": small_times, "trials": large["trials"]},
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
