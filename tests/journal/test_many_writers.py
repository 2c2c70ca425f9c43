"""Several processes writing one journal while another polls it: behaviour, not timings (see bench/bench_journal.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import dspex_lab as dx
from dspex_lab.journal._service import service_address, service_available

WORKER = Path(__file__).with_name("evaluation_worker.py")

POLLER = """
import sys, time
from pathlib import Path
from dspex_lab.journal import open_journal

journal, stop, log = open_journal(sys.argv[1]), Path(sys.argv[2]), open(sys.argv[3], "w", buffering=1)
while not stop.exists():
    try:
        frame = journal.experiments()
        log.write(f"ok {int(frame['n_trials'].sum()) if len(frame) else 0}\\n")
    except Exception as error:
        log.write(f"error {error!r}\\n")
    time.sleep(0.05)
"""


def start_worker(journal: Path, log: Path, n: int, *, latency: float = 0.02, resume: str | None = None):
    arguments = [sys.executable, str(WORKER), str(journal), str(n), str(latency), "4", str(log)]
    return subprocess.Popen(
        [*arguments, *([resume] if resume else [])], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def done_line(log: Path) -> tuple[str, int]:
    _, experiment_id, n_trials = next(line for line in log.read_text().splitlines() if line.startswith("done ")).split()
    return experiment_id, int(n_trials)


def stored_counts(journal: Path) -> dict[str, tuple[int, int]]:
    frame = dx.open_journal(journal).sql(
        "SELECT experiment_id, count(*) AS n, count(DISTINCT trial_id) AS d FROM trials GROUP BY experiment_id"
    )
    return {row.experiment_id: (int(row.n), int(row.d)) for row in frame.itertuples()}


def wait_for_lines(log: Path, count: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and sum(line[:1].isdigit() for line in log.read_text().splitlines()) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{log} did not reach {count} finished trials in {timeout} s")


def test_three_writers_and_a_poller_lose_nothing_and_the_poller_sees_steady_progress(tmp_path):
    journal = tmp_path / "shared.duckdb"
    stop, poll_log = tmp_path / "stop", tmp_path / "polls.log"
    poller = subprocess.Popen([sys.executable, "-c", POLLER, str(journal), str(stop), str(poll_log)])
    logs = [tmp_path / f"writer-{number}.log" for number in range(3)]
    writers = [start_worker(journal, log, n) for log, n in zip(logs, (30, 40, 50), strict=True)]
    try:
        outputs = [writer.communicate(timeout=120) for writer in writers]
    finally:
        stop.touch()
        poller.wait(timeout=30)
    for writer, (_, stderr) in zip(writers, outputs, strict=True):
        assert writer.returncode == 0, stderr
        assert "could not be written" not in stderr
    counts = stored_counts(journal)
    for log, n in zip(logs, (30, 40, 50), strict=True):
        experiment_id, n_trials = done_line(log)
        assert n_trials == n
        assert counts[experiment_id] == (n, n), "every trial stored exactly once"
    polls = poll_log.read_text().splitlines()
    assert polls and not [line for line in polls if not line.startswith("ok ")], "the poller never errors"
    totals = [int(line.split()[1]) for line in polls]
    assert totals == sorted(totals), "the poller's trial total never goes down"
    assert dx.open_journal(journal).experiments()["n_trials"].sum() == 120
    assert not service_available(journal), "the serving process withdrew its service when its run ended"
    assert not service_address(journal).socket.exists()


def test_a_writer_survives_the_serving_process_being_killed_and_the_killed_run_resumes(tmp_path):
    journal = tmp_path / "shared.duckdb"
    host_log, other_log = tmp_path / "host.log", tmp_path / "other.log"
    host = start_worker(journal, host_log, 400, latency=0.05)
    wait_for_lines(host_log, 20)  # the host's run holds the journal and serves it
    assert service_available(journal)
    other = start_worker(journal, other_log, 150, latency=0.05)
    wait_for_lines(other_log, 20)  # the second writer writes through the host's service
    os.kill(host.pid, signal.SIGKILL)
    host.communicate(timeout=30)
    kill_time = time.time()
    _, stderr = other.communicate(timeout=120)
    assert other.returncode == 0, stderr
    assert "could not be written" not in stderr
    other_id, _ = done_line(other_log)
    counts = stored_counts(journal)
    assert counts[other_id] == (150, 150), "the surviving writer lost nothing when the serving process died"

    host_id = next(line.split()[1] for line in host_log.read_text().splitlines() if line.startswith("started "))
    finished = [line.split() for line in host_log.read_text().splitlines() if line[:1].isdigit()]
    safe = {example for stamp, example in finished if float(stamp) < kill_time - 1.0}
    stored = {example for example, _ in dx.open_journal(journal).finished_keys(host_id)}
    assert safe <= stored, "trials the killed host finished a second before the kill are journaled"

    resumed_log = tmp_path / "resumed.log"
    resumed = start_worker(journal, resumed_log, 400, latency=0.05, resume=host_id)
    _, stderr = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, stderr
    assert stored_counts(journal)[host_id] == (400, 400), "resume finishes the run without running a trial twice"


def test_a_stale_service_socket_left_by_a_killed_process_is_removed_and_calls_go_to_the_file(journal_path):
    from dspex_lab.journal import ExperimentRecord

    journal = dx.open_journal(journal_path)
    experiment = journal.create_experiment(ExperimentRecord(kind="evaluation", name="fallback"))
    address = service_address(journal.path)
    # What kill -9 of a serving process leaves: a socket file nothing listens on, and a lock nobody holds.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(address.socket))
    assert address.socket.exists() and not service_available(journal.path)
    started = time.monotonic()
    assert [summary.id for summary in journal.experiment_summaries()] == [experiment]
    journal.finish_experiment(experiment, status="finished")
    # Generous for a loaded machine, yet below the 60 s lock timeout a call stuck on the dead socket would wait.
    assert time.monotonic() - started < 30.0
    assert journal.experiment(experiment)["status"] == "finished"
    assert not address.socket.exists(), "the stale socket was removed"


def test_a_waiter_whose_marker_folder_is_removed_by_a_leaving_waiter_still_leaves_its_marker(tmp_path, monkeypatch):
    from dspex_lab.journal import _file

    folder = tmp_path / "waiting"
    real_open, removals = os.open, []

    def open_after_another_waiter_left(path, *arguments, **options):
        if Path(path).parent == folder and not removals:
            removals.append(path)
            folder.rmdir()  # the last other waiter leaves between our mkdir and our open
        return real_open(path, *arguments, **options)

    monkeypatch.setattr(os, "open", open_after_another_waiter_left)
    marker = _file._leave_marker(folder)
    assert removals, "the race was staged"
    assert marker is not None and marker.parent == folder and marker.exists()
