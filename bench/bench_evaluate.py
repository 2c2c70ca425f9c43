"""Benchmark ``dx.evaluate`` against ``dspy.Evaluate`` (the anchor) on the same program, data, LM and threads.

Three scenarios, all measured in one process and one run, with our DuckDB
journal on (a fresh temporary file per run):

1. ``overhead``: zero-latency lab LM, 2,000 examples, 8 threads; we report our
   wall time divided by dspy's (target at most 1.0).
2. ``latency``: 200 ms lab LM, 1,280 examples, 64 threads; parallel efficiency
   ``(n * latency / threads) / wall`` for both sides (target: ours at least 0.95).
3. ``cpu``: 20 ms lab LM, 1,280 examples, 64 threads, where the CPU is the
   limit; efficiency against ``max(n * latency / threads, n * c1)`` where ``c1``
   is the single-thread time per trial of the bare hydrated module plus metric
   on a zero-latency lab LM, measured in the same run (target: ours at least
   0.7 and above dspy's).

Each repeat runs our side and dspy's back to back, alternating which goes first
(ABAB), so slow phases of a shared machine hit both. Every run gets a fresh but
identical LM and a freshly hydrated module, DSPy's process-wide history is
emptied first, and DSPy's history setting is the same for both sides (on, the
DSPy default, unless ``--disable-history``). Both sides must produce the same
per-example scores; a difference is reported and makes the exit status 1.

Usage::

    /work/venv/bin/python bench/bench_evaluate.py                # default: 5 repeats, about 2 minutes
    /work/venv/bin/python bench/bench_evaluate.py --quick        # smoke run, about 10 s
    /work/venv/bin/python bench/bench_evaluate.py --repeats 5 --json results.json
    /work/venv/bin/python bench/bench_evaluate.py --profile cpu  # where does our time go?
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import importlib
import io
import logging
import pstats
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import dspy
from _common import (
    format_table,
    machine_description,
    median_or_none,
    prepare_for_measurement,
    timed,
    write_json,
)

import dspex_lab as dx

LAB_MODEL = "lab/small"
WARM_UP_EXAMPLES = 64


@dataclass(frozen=True)
class Scenario:
    """One benchmark configuration.

    Attributes:
        name: short identifier (``overhead``, ``latency`` or ``cpu``).
        examples: dataset size.
        latency: lab LM latency per call, in seconds.
        threads: worker threads for both sides.
        kind: ``ratio`` (our wall / dspy's), ``efficiency`` (against n*latency/threads)
            or ``cpu_efficiency`` (against max(n*latency/threads, n*c1)).
        target: the threshold ours must reach (a maximum for ``ratio``, a minimum otherwise).
    """

    name: str
    examples: int
    latency: float
    threads: int
    kind: str
    target: float


def default_scenarios(*, quick: bool) -> list[Scenario]:
    """Return the three scenarios, shrunk for a smoke run when ``quick``."""
    if quick:
        return [
            Scenario("overhead", 300, 0.0, 8, "ratio", 1.0),
            Scenario("latency", 256, 0.2, 64, "efficiency", 0.95),
            Scenario("cpu", 320, 0.02, 64, "cpu_efficiency", 0.7),
        ]
    return [
        Scenario("overhead", 2000, 0.0, 8, "ratio", 1.0),
        Scenario("latency", 1280, 0.2, 64, "efficiency", 0.95),
        Scenario("cpu", 1280, 0.02, 64, "cpu_efficiency", 0.7),
    ]


@dataclass
class SideOutcome:
    """What one measured run of one side produced.

    Attributes:
        seconds: wall time of the whole call (hydration included for both sides).
        cpu_seconds: process CPU time (all threads) over the call.
        scores: per-example scores in dataset order (None for a failed example).
        errors: failed examples.
        load_before: 1-minute load average at the start.
        load_after: 1-minute load average at the end.
        executor_seconds: ours only: ``EvaluationResult.wall_seconds`` (the executor phase).
    """

    seconds: float
    cpu_seconds: float
    scores: list[float | None]
    errors: int
    load_before: float | None
    load_after: float | None
    executor_seconds: float | None = None


@dataclass
class RunRecord:
    """One measured run, as reported.

    Attributes:
        scenario: the scenario's name (``c1`` for the single-thread loop).
        side: ``ours``, ``dspy``, ``ours-nojournal`` (diagnostic) or ``bare`` (the c1 loop).
        repeat: the repeat number (0-based).
        order: position within the repeat (0 ran first).
        seconds: wall time of the whole call; for ``bare``, seconds per trial (c1).
        cpu_seconds: process CPU time over the call; for ``bare``, CPU seconds per trial.
        mean_score: mean per-example score.
        errors: failed examples.
        load_before: 1-minute load average at the start.
        load_after: 1-minute load average at the end.
        executor_seconds: ours only: ``EvaluationResult.wall_seconds`` (the executor phase).
    """

    scenario: str
    side: str
    repeat: int
    order: int
    seconds: float
    cpu_seconds: float
    mean_score: float
    errors: int
    load_before: float | None
    load_after: float | None
    executor_seconds: float | None = None


@dataclass
class Workload:
    """The shared inputs: the program spec, the datasets (by size) and the metric."""

    program: dx.Program
    datasets: dict[int, dx.Dataset]
    metric: Callable[..., Any]
    history_disabled: bool

    def dataset(self, size: int) -> dx.Dataset:
        """Return the arithmetic dataset of ``size`` examples (seed 0), built once."""
        if size not in self.datasets:
            self.datasets[size] = dx.Dataset(dx.datasets.arithmetic(size, seed=0))
        return self.datasets[size]


def fresh_lm(latency: float) -> dspy.BaseLM:
    """Return a new lab LM; every run gets its own so no history or engine state is shared."""
    return dx.lab_lm(LAB_MODEL, latency=latency)


@contextlib.contextmanager
def dspy_settings(workload: Workload, lm: dspy.BaseLM | None = None) -> Iterator[None]:
    """Apply the DSPy settings both sides run under (the LM when given, and the history setting)."""
    overrides: dict[str, Any] = {"disable_history": workload.history_disabled}
    if lm is not None:
        overrides["lm"] = lm
    with dspy.context(**overrides):
        yield


def run_ours(workload: Workload, scenario: Scenario, journal_folder: Path | None, label: str) -> SideOutcome:
    """Run ``dx.evaluate`` once, with the journal on (a fresh file in ``journal_folder``) or off (None)."""
    dataset = workload.dataset(scenario.examples)
    lm = fresh_lm(scenario.latency)
    journal: Path | bool = False if journal_folder is None else journal_folder / f"{label}.duckdb"
    context = dx.Context(lm=lm, journal=journal, threads=scenario.threads)
    prepare_for_measurement()
    with dspy_settings(workload), context, timed() as timing:
        result = dx.evaluate(workload.program, dataset, metric=workload.metric, progress=False)
    trials = result.trials.sort_values("example_index")
    scores = [None if value != value else float(value) for value in trials["score"]]  # NaN -> None
    return SideOutcome(
        timing.seconds,
        timing.cpu_seconds,
        scores,
        int(result.n_errors),
        timing.load_before,
        timing.load_after,
        result.wall_seconds,
    )


def run_dspy(workload: Workload, scenario: Scenario) -> SideOutcome:
    """Run ``dspy.Evaluate`` once on a freshly hydrated module (hydration is timed, as it is inside ours)."""
    devset = list(workload.dataset(scenario.examples))
    lm = fresh_lm(scenario.latency)
    evaluator = dspy.Evaluate(
        devset=devset,
        metric=workload.metric,
        num_threads=scenario.threads,
        display_progress=False,
        display_table=False,
        max_errors=len(devset) + 1,
    )
    prepare_for_measurement()
    with dspy_settings(workload, lm), timed() as timing:
        module = workload.program.build(lm=lm)
        outcome = evaluator(module)
    scores: list[float | None] = []
    failures = 0
    for _example, prediction, score in outcome.results:
        if not prediction.keys():  # dspy substitutes an empty Prediction and failure_score for a failed example
            failures += 1
            scores.append(None)
        else:
            scores.append(float(score))
    return SideOutcome(timing.seconds, timing.cpu_seconds, scores, failures, timing.load_before, timing.load_after)


def run_bare(workload: Workload, size: int) -> SideOutcome:
    """Time the bare hydrated module plus metric in a single-thread loop on a zero-latency lab LM (c1).

    No dspex and no Evaluate: a fresh lab LM, ``program.build`` and a plain loop of
    ``metric(example, module(**example.inputs()))`` under the same DSPy settings.
    """
    examples = list(workload.dataset(size))
    lm = fresh_lm(0.0)
    prepare_for_measurement()
    scores: list[float | None] = []
    with dspy_settings(workload, lm), timed() as timing:
        module = workload.program.build(lm=lm)
        for example in examples:
            scores.append(float(workload.metric(example, module(**example.inputs()))))
    return SideOutcome(timing.seconds, timing.cpu_seconds, scores, 0, timing.load_before, timing.load_after)


def mean_of(scores: list[float | None]) -> float:
    """Return the mean of the scored entries (NaN when none)."""
    present = [score for score in scores if score is not None]
    return sum(present) / len(present) if present else float("nan")


def warm_up(workload: Workload, journal_folder: Path) -> None:
    """Run both sides once on a few examples so imports and first-call caches are paid outside the measurements."""
    scenario = Scenario("warm-up", WARM_UP_EXAMPLES, 0.0, 8, "ratio", 1.0)
    run_ours(workload, scenario, journal_folder, "warm-up")
    run_dspy(workload, scenario)
    run_bare(workload, WARM_UP_EXAMPLES)


def ideal_seconds(scenario: Scenario) -> float:
    """Return the latency-bound ideal wall time ``n * latency / threads``."""
    return scenario.examples * scenario.latency / scenario.threads


def summarise(scenarios: list[Scenario], records: list[RunRecord]) -> dict[str, Any]:
    """Compute per-repeat ratios/efficiencies and their medians for every scenario."""
    summary: dict[str, Any] = {}
    bare_by_repeat = {record.repeat: record.seconds for record in records if record.side == "bare"}
    for scenario in scenarios:
        ours = {
            record.repeat: record for record in records if record.scenario == scenario.name and record.side == "ours"
        }
        theirs = {
            record.repeat: record for record in records if record.scenario == scenario.name and record.side == "dspy"
        }
        repeats = sorted(set(ours) & set(theirs))
        entry: dict[str, Any] = {
            "scenario": asdict(scenario),
            "ours_seconds": [ours[repeat].seconds for repeat in repeats],
            "dspy_seconds": [theirs[repeat].seconds for repeat in repeats],
            "ours_executor_seconds": [ours[repeat].executor_seconds for repeat in repeats],
            "ours_cpu_seconds": [ours[repeat].cpu_seconds for repeat in repeats],
            "dspy_cpu_seconds": [theirs[repeat].cpu_seconds for repeat in repeats],
            "median_cpu_ratio": median_or_none(
                [ours[repeat].cpu_seconds / theirs[repeat].cpu_seconds for repeat in repeats]
            ),
            "ours_median_seconds": median_or_none([ours[repeat].seconds for repeat in repeats]),
            "dspy_median_seconds": median_or_none([theirs[repeat].seconds for repeat in repeats]),
        }
        unjournaled = [
            record.seconds for record in records if record.scenario == scenario.name and record.side == "ours-nojournal"
        ]
        if unjournaled:
            entry["ours_without_journal_seconds"] = unjournaled
            entry["ours_without_journal_median_seconds"] = median_or_none(unjournaled)
        if scenario.kind == "ratio":
            ratios = [ours[repeat].seconds / theirs[repeat].seconds for repeat in repeats]
            entry["ratios"] = ratios
            entry["median_ratio"] = median_or_none(ratios)
            entry["passed"] = entry["median_ratio"] is not None and entry["median_ratio"] <= scenario.target
        else:
            bounds = []
            for repeat in repeats:
                bound = ideal_seconds(scenario)
                if scenario.kind == "cpu_efficiency":
                    bound = max(bound, scenario.examples * bare_by_repeat[repeat])
                bounds.append(bound)
            ours_efficiency = [bound / ours[repeat].seconds for bound, repeat in zip(bounds, repeats, strict=True)]
            dspy_efficiency = [bound / theirs[repeat].seconds for bound, repeat in zip(bounds, repeats, strict=True)]
            entry.update(
                bound_seconds=bounds,
                ours_efficiency=ours_efficiency,
                dspy_efficiency=dspy_efficiency,
                median_ours_efficiency=median_or_none(ours_efficiency),
                median_dspy_efficiency=median_or_none(dspy_efficiency),
            )
            if scenario.kind == "cpu_efficiency":
                c1_values = [bare_by_repeat[repeat] for repeat in repeats]
                entry["c1_seconds"] = c1_values
                entry["median_c1_seconds"] = median_or_none(c1_values)
            passed = entry["median_ours_efficiency"] is not None and entry["median_ours_efficiency"] >= scenario.target
            if scenario.kind == "cpu_efficiency" and passed:
                passed = entry["median_ours_efficiency"] > entry["median_dspy_efficiency"]
            entry["passed"] = passed
        summary[scenario.name] = entry
    return summary


def final_table(scenarios: list[Scenario], summary: dict[str, Any]) -> str:
    """Render the medians as the final table."""
    rows = []
    for scenario in scenarios:
        entry = summary[scenario.name]
        ours_seconds, dspy_seconds = entry["ours_median_seconds"], entry["dspy_median_seconds"]
        setting = f"n={scenario.examples} latency={scenario.latency * 1000:g}ms threads={scenario.threads}"
        if scenario.kind == "ratio":
            rows.append(
                [
                    scenario.name,
                    setting,
                    f"{ours_seconds:.2f} s",
                    f"{dspy_seconds:.2f} s",
                    f"ratio {entry['median_ratio']:.3f}",
                    f"<= {scenario.target:g}",
                    "PASS" if entry["passed"] else "FAIL",
                    f"{entry['median_cpu_ratio']:.3f}",
                ]
            )
        else:
            target = f">= {scenario.target:g}" + (" and > dspy" if scenario.kind == "cpu_efficiency" else "")
            bound = f"bound {median_or_none(entry['bound_seconds']):.2f} s"
            if scenario.kind == "cpu_efficiency":
                bound += f" (c1 {entry['median_c1_seconds'] * 1000:.3f} ms)"
            rows.append(
                [
                    scenario.name,
                    setting,
                    f"{ours_seconds:.2f} s (eff {entry['median_ours_efficiency']:.3f})",
                    f"{dspy_seconds:.2f} s (eff {entry['median_dspy_efficiency']:.3f})",
                    bound,
                    target,
                    "PASS" if entry["passed"] else "FAIL",
                    f"{entry['median_cpu_ratio']:.3f}",
                ]
            )
    return format_table(
        [
            "scenario",
            "setting",
            "ours (median)",
            "dspy (median)",
            "ratio/bound",
            "target",
            "result",
            "cpu ours/dspy (info)",
        ],
        rows,
    )


def raw_table(records: list[RunRecord]) -> str:
    """Render every measured run."""
    rows = []
    for record in records:
        if record.side == "bare":
            wall, cpu = f"{record.seconds * 1000:.3f} ms/trial", f"{record.cpu_seconds * 1000:.3f} ms/trial"
        else:
            wall, cpu = f"{record.seconds:.3f} s", f"{record.cpu_seconds:.3f} s"
        rows.append(
            [
                record.scenario,
                record.side,
                record.repeat,
                record.order,
                wall,
                cpu,
                "" if record.executor_seconds is None else f"{record.executor_seconds:.3f} s",
                f"{record.mean_score:.4f}",
                record.errors,
                f"{record.load_before}->{record.load_after}",
            ]
        )
    return format_table(
        ["scenario", "side", "repeat", "order", "wall", "process cpu", "executor", "mean", "errors", "load"], rows
    )


def measure(
    workload: Workload,
    scenarios: list[Scenario],
    repeats: int,
    journal_folder: Path,
    log: Callable[[str], None],
    *,
    without_journal: bool = False,
) -> tuple[list[RunRecord], list[str]]:
    """Run every scenario ``repeats`` times, alternating sides, plus the c1 loop per repeat.

    With ``without_journal``, each repeat also runs ours with the journal off (side ``ours-nojournal``,
    a diagnostic that separates the journal's cost from the engine's; it is not part of any target).

    Returns:
        The records, and the score mismatches found (empty when both sides agree everywhere).
    """
    records: list[RunRecord] = []
    mismatches: list[str] = []
    cpu_sizes = {scenario.examples for scenario in scenarios if scenario.kind == "cpu_efficiency"}
    for repeat in range(repeats):
        for scenario in scenarios:
            if scenario.kind == "cpu_efficiency":
                size = max(cpu_sizes)
                bare = run_bare(workload, size)
                records.append(
                    RunRecord(
                        "c1",
                        "bare",
                        repeat,
                        0,
                        bare.seconds / size,
                        bare.cpu_seconds / size,
                        mean_of(bare.scores),
                        0,
                        bare.load_before,
                        bare.load_after,
                    )
                )
                log(
                    f"repeat {repeat} c1: {bare.seconds / size * 1000:.3f} ms/trial over {size} examples "
                    f"(mean {mean_of(bare.scores):.4f})"
                )
            sides = ["ours", "dspy"] if repeat % 2 == 0 else ["dspy", "ours"]
            if without_journal:
                sides.append("ours-nojournal")
            scores_by_side: dict[str, list[float | None]] = {}
            for order, side in enumerate(sides):
                if side == "dspy":
                    outcome = run_dspy(workload, scenario)
                else:
                    folder = None if side == "ours-nojournal" else journal_folder
                    outcome = run_ours(workload, scenario, folder, f"{scenario.name}-{repeat}")
                scores_by_side[side] = outcome.scores
                records.append(
                    RunRecord(
                        scenario.name,
                        side,
                        repeat,
                        order,
                        outcome.seconds,
                        outcome.cpu_seconds,
                        mean_of(outcome.scores),
                        outcome.errors,
                        outcome.load_before,
                        outcome.load_after,
                        outcome.executor_seconds,
                    )
                )
                log(
                    f"repeat {repeat} {scenario.name:8s} {side:14s}: {outcome.seconds:7.3f} s  "
                    f"cpu {outcome.cpu_seconds:6.3f} s  mean {mean_of(outcome.scores):.4f}  errors {outcome.errors}  "
                    f"load {outcome.load_before}->{outcome.load_after}"
                )
            if scenario.kind == "cpu_efficiency" and bare.scores != scores_by_side["dspy"]:
                mismatches.append(f"{scenario.name} repeat {repeat}: the bare c1 loop's scores differ from dspy's")
            for side in sides:
                if side != "dspy" and scores_by_side[side] != scores_by_side["dspy"]:
                    differing = sum(
                        1
                        for mine, theirs in zip(scores_by_side[side], scores_by_side["dspy"], strict=True)
                        if mine != theirs
                    )
                    mismatches.append(
                        f"{scenario.name} repeat {repeat}: {side} vs dspy: {differing} examples differ; mean "
                        f"{mean_of(scores_by_side[side]):.6f} vs {mean_of(scores_by_side['dspy']):.6f}"
                    )
    return records, mismatches


# -- profiling ---------------------------------------------------------------------------------


class ThreadProfiles:
    """Profile our trial runner in every worker thread, the journal flusher and the coordinating thread.

    ``cProfile`` only sees the thread that enabled it, so this wraps
    ``TrialRunner.__call__`` and ``TrialWriter.flush`` (in this process only,
    for the duration of a ``with`` block) with a per-call profiler, and merges
    everything at the end. The package's files are not touched.
    """

    def __init__(self) -> None:
        self.profiles: list[cProfile.Profile] = []
        self._local = threading.local()
        self._lock = threading.Lock()

    def _profile_for_thread(self) -> cProfile.Profile:
        profile = getattr(self._local, "profile", None)
        if profile is None:
            profile = cProfile.Profile()
            self._local.profile = profile
            with self._lock:
                self.profiles.append(profile)
        return profile

    def wrap(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """Return ``function`` profiled into the calling thread's profiler."""

        def profiled(*arguments: Any, **keywords: Any) -> Any:
            profile = self._profile_for_thread()
            profile.enable()
            try:
                return function(*arguments, **keywords)
            finally:
                profile.disable()

        return profiled

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Wrap the trial runner and the journal flush while the block runs."""
        from dspex_lab.engine._trial import TrialRunner
        from dspex_lab.journal._duckdb import TrialWriter

        originals = (TrialRunner.__call__, TrialWriter.flush)
        TrialRunner.__call__ = self.wrap(originals[0])  # type: ignore[method-assign]
        TrialWriter.flush = self.wrap(originals[1])  # type: ignore[method-assign]
        try:
            yield
        finally:
            TrialRunner.__call__, TrialWriter.flush = originals  # type: ignore[method-assign]

    def report(self, main: cProfile.Profile, *, limit: int) -> str:
        """Return the merged statistics, sorted by own time and by cumulative time."""
        stream = io.StringIO()
        stats = pstats.Stats(main, stream=stream)
        for profile in self.profiles:
            stats.add(profile)
        stats.sort_stats("tottime").print_stats(limit)
        stats.sort_stats("cumulative").print_stats(limit)
        return stream.getvalue()


class PhaseTimer:
    """Measure the wall and thread-CPU time of named package functions, from the outside.

    Each wrapped function records, per call, its wall time and the CPU time of the
    thread that ran it (``time.thread_time``). Wrapping happens on the classes and
    modules of this process only, for the duration of :meth:`installed`.
    """

    # (module, owner attribute or None for a module-level function, function name, label)
    PHASES: tuple[tuple[str, str | None, str, str], ...] = (
        ("dspex_lab.session._records", None, "environment", "evaluate: environment()"),
        ("dspex_lab.journal._duckdb", "DuckDBJournal", "create_experiment", "journal: create_experiment"),
        ("dspex_lab.journal._duckdb", "DuckDBJournal", "append_trials", "journal: append_trials (flush)"),
        ("dspex_lab.journal._writer", "TrialWriter", "close", "journal: TrialWriter.close"),
        ("dspex_lab.journal._duckdb", "DuckDBJournal", "finish_experiment", "journal: finish_experiment"),
        ("dspex_lab.engine._executor", "ThreadExecutor", "run", "engine: ThreadExecutor.run"),
        ("dspex_lab.engine._trial", "TrialResult", "to_row", "engine: TrialResult.to_row"),
        ("dspex_lab.session._experiment", "Experiment", "trials", "evaluate: Experiment.trials (result frame)"),
        ("dspex_lab.evaluation._result", "EvaluationResult", "to_summary", "evaluate: EvaluationResult.to_summary"),
    )

    def __init__(self) -> None:
        self.calls: dict[str, list[tuple[float, float]]] = {label: [] for *_, label in self.PHASES}
        self._lock = threading.Lock()

    def _wrap(self, function: Callable[..., Any], label: str) -> Callable[..., Any]:
        def measured(*arguments: Any, **keywords: Any) -> Any:
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return function(*arguments, **keywords)
            finally:
                sample = (time.perf_counter() - wall, time.thread_time() - cpu)
                with self._lock:
                    self.calls[label].append(sample)

        return measured

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Wrap every phase while the block runs, and restore the originals after."""
        restore: list[tuple[Any, str, Any]] = []
        try:
            for module_name, owner_name, function_name, label in self.PHASES:
                module = importlib.import_module(module_name)
                owner = module if owner_name is None else getattr(module, owner_name)
                original = owner.__dict__[function_name] if owner_name is not None else getattr(owner, function_name)
                restore.append((owner, function_name, original))
                setattr(owner, function_name, self._wrap(getattr(owner, function_name), label))
            yield
        finally:
            for owner, function_name, original in reversed(restore):
                setattr(owner, function_name, original)

    def report(self) -> str:
        """Return one row per phase: calls, wall and thread-CPU totals."""
        rows = []
        for label, samples in self.calls.items():
            walls = [wall for wall, _cpu in samples]
            rows.append(
                [
                    label,
                    len(samples),
                    f"{sum(walls) * 1000:.1f} ms",
                    f"{sum(cpu for _wall, cpu in samples) * 1000:.1f} ms",
                    f"{max(walls) * 1000:.1f} ms" if walls else "",
                ]
            )
        return format_table(["phase", "calls", "wall (sum)", "thread cpu (sum)", "longest call"], rows)


def profile_ours(workload: Workload, scenario: Scenario, journal_folder: Path, limit: int, repeats: int) -> str:
    """Time our phases over ``repeats`` runs, then run once under per-thread cProfile; return the report."""
    sections = []
    for repeat in range(repeats):
        phases = PhaseTimer()
        with phases.installed():
            outcome = run_ours(workload, scenario, journal_folder, f"phases-{scenario.name}-{repeat}")
        sections.append(
            f"phases of ours on {scenario.name}, run {repeat}: wall {outcome.seconds:.3f} s, process cpu "
            f"{outcome.cpu_seconds:.3f} s, executor {outcome.executor_seconds:.3f} s\n{phases.report()}\n"
        )
    profiles = ThreadProfiles()
    main = cProfile.Profile()
    with profiles.installed():
        main.enable()
        try:
            outcome = run_ours(workload, scenario, journal_folder, f"profile-{scenario.name}")
        finally:
            main.disable()
    header = "\n".join(sections) + (
        f"\nprofiled ours on {scenario.name}: wall {outcome.seconds:.3f} s (executor "
        f"{outcome.executor_seconds:.3f} s, errors {outcome.errors}) under cProfile in {len(profiles.profiles)} "
        "threads + the coordinating thread;\ntimes are inflated by the profiler and summed over threads, and they "
        "include waiting for the GIL (sleep and urandom rows are mostly waiting).\n"
    )
    return header + profiles.report(main, limit=limit)


# -- command line ------------------------------------------------------------------------------


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5, help="repeats per scenario and side (default 5)")
    parser.add_argument("--quick", action="store_true", help="small smoke run (1 repeat unless --repeats is given)")
    parser.add_argument(
        "--module",
        default="Predict",
        choices=["Predict", "ChainOfThought"],
        help="the DSPy module of the program (default Predict)",
    )
    parser.add_argument(
        "--scenarios", default="overhead,latency,cpu", help="comma-separated subset of overhead,latency,cpu"
    )
    parser.add_argument(
        "--disable-history",
        action="store_true",
        help="run both sides with dspy.settings.disable_history=True (default: DSPy's default, on)",
    )
    parser.add_argument(
        "--with-journal-off",
        action="store_true",
        help="diagnostic: also run ours with the journal off in every repeat (not a target)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write every number to this JSON file")
    parser.add_argument(
        "--profile",
        default=None,
        choices=["overhead", "latency", "cpu"],
        help="instead of the comparison, run ours once on this scenario under per-thread cProfile",
    )
    parser.add_argument("--profile-limit", type=int, default=35, help="rows per profile listing")
    arguments = parser.parse_args(argv)
    if arguments.quick and "--repeats" not in (argv if argv is not None else sys.argv[1:]):
        arguments.repeats = 1
    if arguments.repeats < 1:
        parser.error("--repeats must be at least 1")
    return arguments


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return the exit status (1 on a score mismatch, 0 otherwise)."""
    arguments = parse_arguments(argv)
    # dspy.Evaluate logs its average at INFO after each run; keep the output to our own lines.
    logging.getLogger("dspy.evaluate.evaluate").setLevel(logging.WARNING)
    chosen = {name.strip() for name in arguments.scenarios.split(",") if name.strip()}
    scenarios = [scenario for scenario in default_scenarios(quick=arguments.quick) if scenario.name in chosen]
    if arguments.profile:
        scenarios = [
            scenario for scenario in default_scenarios(quick=arguments.quick) if scenario.name == arguments.profile
        ]
    if not scenarios:
        print(f"no scenario selected from {arguments.scenarios!r}", file=sys.stderr)
        return 2
    workload = Workload(
        program=dx.Program(f"dspy.{arguments.module}", signature="question -> answer"),
        datasets={},
        metric=dx.metrics.exact_match,
        history_disabled=arguments.disable_history,
    )

    def log(message: str) -> None:
        print(message, flush=True)

    with tempfile.TemporaryDirectory(prefix="dspex-bench-") as folder:
        journal_folder = Path(folder)
        log(f"machine: {machine_description()}")
        log(
            f"program: {workload.program.module} 'question -> answer'; DSPy history "
            f"{'disabled' if arguments.disable_history else 'enabled (DSPy default)'} for both sides; "
            f"journal: fresh DuckDB file per run in {journal_folder}"
        )
        warm_up(workload, journal_folder)
        if arguments.profile:
            print(profile_ours(workload, scenarios[0], journal_folder, arguments.profile_limit, arguments.repeats))
            return 0
        with timed() as total:
            records, mismatches = measure(
                workload, scenarios, arguments.repeats, journal_folder, log, without_journal=arguments.with_journal_off
            )
    summary = summarise(scenarios, records)

    print("\nall runs (raw):")
    print(raw_table(records))
    print(f"\nfinal table (medians of {arguments.repeats} repeats; benchmark time {total.seconds:.0f} s):")
    print(final_table(scenarios, summary))
    for scenario in scenarios:
        entry = summary[scenario.name]
        if "ours_without_journal_median_seconds" in entry:
            print(
                f"diagnostic: {scenario.name}: ours with the journal off, median "
                f"{entry['ours_without_journal_median_seconds']:.2f} s "
                f"(with it: {entry['ours_median_seconds']:.2f} s)"
            )
    if mismatches:
        print("\nSCORE MISMATCH between ours and dspy.Evaluate:")
        for mismatch in mismatches:
            print(f"  {mismatch}")
    else:
        print("\ncorrectness: ours and dspy.Evaluate produced identical per-example scores in every run.")

    if arguments.json is not None:
        write_json(
            arguments.json,
            {
                "machine": machine_description(),
                "arguments": {
                    key: str(value) if isinstance(value, Path) else value for key, value in vars(arguments).items()
                },
                "history_disabled": arguments.disable_history,
                "benchmark_seconds": total.seconds,
                "summary": summary,
                "runs": [asdict(record) for record in records],
                "mismatches": mismatches,
            },
        )
        print(f"wrote {arguments.json}")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
