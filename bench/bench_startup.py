"""Benchmark start-up: ``import dspex_lab`` against ``import dspy``, ``dspex journal list`` against ``import duckdb``.

Every measurement is the wall time of a fresh interpreter (a subprocess, started
and waited for), so it includes what a user pays: interpreter start, imports,
and for ``dspex journal list`` reading a small journal and printing its table.
The four commands run interleaved, round after round, in an order rotated each
round, so a slow phase of a shared machine hits all of them; medians are reported.

| ratio | anchor | target |
| --- | --- | --- |
| ``python -c "import dspex_lab"`` / ``python -c "import dspy"`` | DSPy's import | ≤ 0.3 |
| ``dspex journal list`` (a small journal) / ``python -c "import duckdb"`` | DuckDB's import | ≤ 2.0 |

The small journal (two evaluations of 10 problems on the offline lab LM) is
written into a temporary folder before the first round. ``dspex`` is the
console script next to this interpreter, or ``python -m dspex_lab.cli``.

Usage::

    /work/venv/bin/python bench/bench_startup.py               # 7 rounds, about half a minute
    /work/venv/bin/python bench/bench_startup.py --rounds 11 --json startup.json
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import format_table, machine_description, write_json

IMPORT_TARGET = 0.3
JOURNAL_TARGET = 2.0


def dspex_command() -> list[str]:
    """Return how to run the ``dspex`` command with this interpreter's environment."""
    script = Path(sys.executable).with_name("dspex")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "dspex_lab.cli"]


def write_small_journal(folder: Path) -> Path:
    """Write a small journal (two 10-problem evaluations on the lab LM) in a subprocess and return its path."""
    path = folder / "small.duckdb"
    code = (
        "import sys\n"
        "import dspex_lab as dx\n"
        "data = dx.Dataset(dx.datasets.arithmetic(10, seed=0), name='arithmetic-10')\n"
        "with dx.Context(lm='lab/small', journal=sys.argv[1], threads=2):\n"
        "    for module in ('dspy.Predict', 'dspy.ChainOfThought'):\n"
        "        program = dx.Program(module, signature='question -> answer')\n"
        "        dx.evaluate(program, data, metric=dx.metrics.exact_match, progress=False)\n"
    )
    completed = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=600)
    if completed.returncode != 0:
        raise RuntimeError(f"could not write the small journal with {sys.executable}:\n{completed.stderr}")
    return path


def wall_time(command: list[str], *, cwd: Path) -> float:
    """Return the wall time of one run of ``command`` (it must succeed)."""
    start = time.perf_counter()
    completed = subprocess.run(command, cwd=cwd, capture_output=True, timeout=300)
    elapsed = time.perf_counter() - start
    if completed.returncode != 0:
        raise RuntimeError(f"{command} failed: {completed.stderr.decode(errors='replace')}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print medians, ratios and whether each target is met."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="fresh subprocesses per command (at least 5)")
    parser.add_argument("--json", type=Path, help="also write the raw timings here")
    arguments = parser.parse_args(argv)
    if arguments.rounds < 5:
        parser.error("--rounds must be at least 5: the ratios are medians of at least 5 runs each")

    with tempfile.TemporaryDirectory(prefix="dspex-bench-startup-") as folder:
        cwd = Path(folder)
        journal = write_small_journal(cwd)
        commands = {
            "import dspex_lab": [sys.executable, "-c", "import dspex_lab"],
            "import dspy": [sys.executable, "-c", "import dspy"],
            "dspex journal list": [*dspex_command(), "journal", "list", "--journal", str(journal)],
            "import duckdb": [sys.executable, "-c", "import duckdb"],
        }
        names = list(commands)
        for name in names:  # warm the file-system cache once; not measured
            wall_time(commands[name], cwd=cwd)
        times: dict[str, list[float]] = {name: [] for name in names}
        for round_index in range(arguments.rounds):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                times[name].append(wall_time(commands[name], cwd=cwd))

    medians = {name: statistics.median(values) for name, values in times.items()}
    import_ratio = medians["import dspex_lab"] / medians["import dspy"]
    journal_ratio = medians["dspex journal list"] / medians["import duckdb"]
    print(f"bench_startup: {arguments.rounds} rounds, interleaved; {machine_description()}")
    print(
        format_table(
            ["command", "median s", "min s", "max s"],
            [
                [name, f"{medians[name]:.3f}", f"{min(values):.3f}", f"{max(values):.3f}"]
                for name, values in times.items()
            ],
        )
    )
    met_import = import_ratio <= IMPORT_TARGET
    met_journal = journal_ratio <= JOURNAL_TARGET
    print(
        f"import dspex_lab / import dspy = {import_ratio:.3f}  "
        f"(target <= {IMPORT_TARGET}: {'met' if met_import else 'NOT met'})"
    )
    print(
        f"dspex journal list / import duckdb = {journal_ratio:.3f}  "
        f"(target <= {JOURNAL_TARGET}: {'met' if met_journal else 'NOT met'})"
    )
    if arguments.json is not None:
        write_json(
            arguments.json,
            {
                "rounds": arguments.rounds,
                "times": times,
                "medians": medians,
                "ratios": {"import": import_ratio, "journal_list": journal_ratio},
                "targets_met": {"import": met_import, "journal_list": met_journal},
            },
        )
    return 0 if met_import and met_journal else 1


if __name__ == "__main__":
    sys.exit(main())
