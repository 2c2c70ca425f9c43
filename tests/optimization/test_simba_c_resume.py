"""A SIMBA-C run killed (SIGKILL) at random points and resumed each time decides what an uninterrupted one does."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import dspex_lab as dx

HERE = Path(__file__).parent
WORKER = HERE / "resume_worker.py"

# Wall-clock columns: the only ones allowed to differ between the two runs.
CLOCK_COLUMNS = {"created_at", "started_at", "finished_at"}


def _worker(journal: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(WORKER), str(journal), *arguments],
        capture_output=True,
        text=True,
        cwd=HERE,
        timeout=300,
        check=False,
    )


def _run_id(journal: Any) -> str:
    ids = journal.sql("select id from experiments where kind = 'optimization'")["id"].tolist()
    assert len(ids) == 1, ids
    return str(ids[0])


def _normalized(value: Any, run_id: str) -> Any:
    """Return ``value`` with the run's id (a random id, part of every evaluation's id) replaced by ``RUN``."""
    if isinstance(value, str):
        return value.replace(run_id, "RUN")
    if isinstance(value, dict):
        return {key: _normalized(item, run_id) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normalized(item, run_id) for item in value]
    if isinstance(value, float) and value != value:
        return "NaN"
    return value


def _decisions(path: Path) -> dict[str, Any]:
    """Every decision column of a journal's one optimization run: candidates, steps and final spending."""
    journal = dx.open_journal(path)
    run_id = _run_id(journal)
    candidates = [
        {key: value for key, value in row.items() if key not in CLOCK_COLUMNS | {"run_id"}}
        for row in journal.candidate_rows(run_id)
    ]
    steps = [
        {key: value for key, value in row.items() if key not in CLOCK_COLUMNS | {"run_id"}}
        for row in journal.step_rows(run_id)
    ]
    experiment = journal.experiment(run_id)
    spending = {
        key: (experiment.get("summary") or {}).get("spending", {}).get(key) for key in ("lm_calls", "tokens", "cost")
    }
    return _normalized(
        {
            "status": experiment["status"],
            "candidates": sorted(candidates, key=lambda row: int(row["candidate_id"][1:])),
            "steps": steps,
            "spending": spending,
        },
        run_id,
    )


def _differences(resumed: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """Return each differing cell as ``table[row].column: resumed != uninterrupted`` (readable when it fails)."""
    found = []
    for table in ("candidates", "steps"):
        if len(resumed[table]) != len(expected[table]):
            found.append(f"{table}: {len(resumed[table])} rows != {len(expected[table])}")
        for position, (left, right) in enumerate(zip(resumed[table], expected[table], strict=False)):
            for column in sorted(set(left) | set(right)):
                if left.get(column) != right.get(column):
                    found.append(
                        f"{table}[{position}].{column}: {left.get(column)!r:.300} != {right.get(column)!r:.300}"
                    )
    for key in ("status", "spending"):
        if resumed[key] != expected[key]:
            found.append(f"{key}: {resumed[key]!r} != {expected[key]!r}")
    return found


@pytest.mark.parametrize(
    ("options", "kills", "ending"),
    [
        # Two threads: trials finish in any order, so nothing may depend on the order they are counted in.
        ([], 6, "finished"),
        # A budget that stops the run inside an evaluation of the last step. One thread, because with
        # more, which of the trials in flight finish before the stop is chance in any run.
        (["--threads", "1", "--max-lm-calls", "500"], 3, "stopped"),
    ],
    ids=["two-threads", "budget-stop"],
)
def test_a_run_killed_at_random_points_and_resumed_decides_exactly_as_an_uninterrupted_run(
    tmp_path: Path, options: list[str], kills: int, ending: str
) -> None:
    uninterrupted = tmp_path / "a.duckdb"
    finished = _worker(uninterrupted, *options)
    assert finished.returncode == 0, finished.stderr[-3000:]
    expected = _decisions(uninterrupted)
    assert expected["status"] == ending
    # The run makes decisions worth comparing: acceptances, merges, and rules written by the LM.
    assert {"demo", "rule", "mutate", "merge"} <= {row["strategy"] for row in expected["candidates"]}
    assert any(row["accepted_id"] for row in expected["steps"])
    total = int(dx.open_journal(uninterrupted).sql("select count(*) as n from trials")["n"].iloc[0])

    # Seeded kill points spread over the run, each once the journal holds a share of the run's
    # trials: at a trial (before the journal writer flushes it), right after a step's proposals are
    # journaled (before they are screened), or when a step is finished.
    choose = random.Random(18 + kills)
    shares = sorted(choose.uniform(0.05, 0.7) for _ in range(kills))
    plan = [f"{choose.choice(('trial', 'proposals', 'step'))}@{round(share * total)}" for share in shares]
    killed = tmp_path / "b.duckdb"
    run_id: str | None = None
    happened = 0
    for kill in [*plan, None]:
        arguments = [*options, *(["--resume", run_id] if run_id is not None else [])]
        outcome = _worker(killed, *arguments, *(["--kill", kill] if kill is not None else []))
        if run_id is None:
            run_id = _run_id(dx.open_journal(killed))
        if outcome.returncode == -signal.SIGKILL:
            happened += 1
            continue
        assert outcome.returncode == 0, outcome.stderr[-3000:]
        assert f"done {run_id} {ending}" in outcome.stdout
        break
    assert happened == len(plan), f"only {happened} of the kills {plan} happened before the run ended"

    resumed = _decisions(killed)
    differences = _differences(resumed, expected)
    assert not differences, f"{len(differences)} differences:\n" + "\n".join(differences)
    assert resumed == expected
