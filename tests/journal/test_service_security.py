"""The journal service under attack: another local user, and whoever can write the journal's folder.

Each attack is played by the user ``nobody`` (``setpriv``, so these tests need root) against a journal
in a folder anyone can write, as a shared project folder is. The attacker's scripts use only the
system Python's standard library. See docs/security.md for the threat model.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import dspex_lab as dx
from dspex_lab.journal import ExperimentRecord, _wire
from dspex_lab.journal._service import (
    MAX_CONNECTIONS,
    JournalService,
    call_service,
    runtime_dir,
    service_address,
    service_available,
)

SYSTEM_PYTHON = "/usr/bin/python3"
WORKER = Path(__file__).with_name("evaluation_worker.py")
AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", SYSTEM_PYTHON, "-c"]

needs_second_user = pytest.mark.skipif(
    os.getuid() != 0 or shutil.which("setpriv") is None or not Path(SYSTEM_PYTHON).exists(),
    reason="plays the attacker as the user nobody: needs root, setpriv and a system python3",
)


def as_nobody(script: str, *arguments: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*AS_NOBODY, script, *arguments],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(autouse=True)
def own_runtime_folder(monkeypatch) -> Iterator[Path]:
    # Each test serves from a runtime folder of its own, so changing its mode disturbs no other test.
    folder = Path(tempfile.mkdtemp(prefix="dspex-runtime-", dir="/tmp"))
    monkeypatch.setenv("DSPEX_RUNTIME_DIR", str(folder))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def shared_folder() -> Iterator[Path]:
    # A project folder every local user can write (not sticky): outside pytest's private temp folder.
    folder = Path(tempfile.mkdtemp(prefix="dspex-shared-", dir="/tmp"))
    folder.chmod(0o777)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def start_holder(journal: Path, log: Path, n: int = 400) -> subprocess.Popen[str]:
    """Start an evaluation in another process: its run holds the journal and serves it."""
    process = subprocess.Popen(
        [sys.executable, str(WORKER), str(journal), str(n), "0.05", "4", str(log)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not (log.exists() and sum(line[:1].isdigit() for line in log.read_text().splitlines()) >= 10):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the holder did not start its run"
        time.sleep(0.05)
    return process


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
    process.communicate(timeout=30)


# -- 1. links planted in the journal's folder ---------------------------------------------------

PLANT_LINKS = """
import os, sys
folder, name, target, first = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
for pid in range(first, first + 50):
    os.symlink(target, os.path.join(folder, f"{name}.service.{pid}.tmp"))
for suffix in (".service", ".service.lock", ".sock"):
    os.symlink(target, os.path.join(folder, name + suffix))
os.mkdir(os.path.join(folder, "attacker"), 0o777)
os.symlink(os.path.join(folder, "attacker"), os.path.join(folder, name + ".waiting"))
"""


@needs_second_user
def test_links_planted_in_the_journal_folder_are_never_written_through(shared_folder, tmp_path):
    # Before: the service wrote <journal>.service.<pid>.tmp without O_EXCL|O_NOFOLLOW, through the link,
    # clobbering the target and handing the attacker the secret that let it send a pickle.
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    journal_path = shared_folder / "shared.duckdb"
    planter = as_nobody(PLANT_LINKS, str(shared_folder), journal_path.name, str(victim), str(os.getpid() - 5))
    assert planter.wait(timeout=60) == 0, planter.communicate()

    journal = dx.open_journal(journal_path)
    with journal.hold():
        experiment = journal.create_experiment(ExperimentRecord(kind="evaluation", name="held"))
        assert service_available(journal.path), "this process serves the journal while its run holds it"

    assert victim.read_text() == "precious"
    ours = {path.name for path in shared_folder.iterdir() if not path.is_symlink()}
    assert ours <= {"shared.duckdb", "shared.duckdb.wal", "attacker"}, "nothing but the journal is written there"
    assert not list((shared_folder / "attacker").iterdir())
    assert journal.experiment(experiment)["name"] == "held"


HOLD_FILE = """
import sys, time, duckdb
connection = duckdb.connect(sys.argv[1])
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
connection.close()
"""


@needs_second_user
def test_a_waiting_marker_folder_planted_in_the_journal_folder_is_never_used(shared_folder, tmp_path):
    # Before: a process waiting for the file announced itself in <journal>.waiting/, which whoever can write the
    # journal's folder could plant (here: a link to a folder the attacker reads) or fill.
    journal_path = shared_folder / "shared.duckdb"
    dx.open_journal(journal_path).experiment_summaries()  # the file exists
    planter = as_nobody(PLANT_LINKS, str(shared_folder), journal_path.name, str(tmp_path / "unused"), "1")
    assert planter.wait(timeout=60) == 0, planter.communicate()
    attacker_folder = shared_folder / "attacker"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_FILE, str(journal_path), "600"], stdout=subprocess.PIPE, text=True
    )  # holds the file (until stopped below) without serving it, as a process that has not started its service yet
    assert holder.stdout.readline().strip() == "holding"
    seen: set[str] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.update(os.listdir(attacker_folder))
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with pytest.raises(dx.errors.JournalError, match="stayed locked"):
            dx.journal.DuckDBJournal(journal_path, lock_timeout=1.0).experiment_summaries()
    finally:
        done.set()
        watcher.join()
        stop(holder)
    assert seen == set(), "no marker was made where another user can see or plant it"
    assert service_address(journal_path.resolve()).waiting.parent == runtime_dir()


# -- 2. an advertisement of the attacker's, swapped in ------------------------------------------

LISTEN_AND_SWAP = """
import ctypes, json, os, socket, sys, threading, time
folder, name, report = sys.argv[1], sys.argv[2], sys.argv[3]
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(64)
hits = []
def accept():
    while True:
        connection, _ = listener.accept()
        hits.append(1)
        connection.close()
threading.Thread(target=accept, daemon=True).start()
advert = {"host": socket.gethostname(), "pid": os.getpid(), "port": listener.getsockname()[1], "secret": "00" * 32}
fake = os.path.join(folder, ".attacker")
with open(fake, "w") as handle:
    json.dump(advert, handle)
os.chmod(fake, 0o600)
real = os.path.join(folder, name + ".service").encode()
libc = ctypes.CDLL(None, use_errno=True)
stopped = threading.Event()
threading.Thread(target=lambda: (sys.stdin.readline(), stopped.set()), daemon=True).start()
print("swapping", flush=True)
while not stopped.is_set():  # until the test's stdin line (or its end)
    libc.renameat2(-100, fake.encode(), -100, real, 2)  # AT_FDCWD, RENAME_EXCHANGE: swap the two files
    if not os.path.exists(real):
        os.link(fake, real)  # nothing to swap with: offer our own advertisement outright
time.sleep(0.5)
open(report, "w").write(str(len(hits)))
"""


@needs_second_user
def test_an_advertisement_swapped_into_the_journal_folder_never_receives_a_call(shared_folder, tmp_path):
    # Before: a client stat()ed the advertisement, then read it again by name; an attacker exchanging its
    # own file with the real one in a loop received ~0.5% of the calls, and its reply was unpickled.
    journal_path = shared_folder / "shared.duckdb"
    holder = start_holder(journal_path, tmp_path / "holder.log")
    report = shared_folder / "hits"
    attacker = as_nobody(LISTEN_AND_SWAP, str(shared_folder), journal_path.name, str(report))
    try:
        assert attacker.stdout.readline().strip() == "swapping", attacker.communicate()
        journal = dx.open_journal(journal_path)
        for _ in range(400):  # the race was lost on ~0.5% of calls: all of these run while the attacker swaps
            journal.experiment_summaries()
        attacker.stdin.write("stop\n")
        attacker.stdin.flush()
        assert attacker.wait(timeout=60) == 0, attacker.communicate()
    finally:
        stop(holder)
        stop(attacker)
    assert report.read_text() == "0", "no journal call reached the attacker's listener"


# -- 3. what a killed serving process leaves behind ----------------------------------------------

# Listens on the given ports until its stdin has a line (or closes), then writes how many connections came.
LISTEN_ON = """
import socket, sys, threading
ports, report = [int(port) for port in sys.argv[1].split(",") if port], sys.argv[2]
hits = []
def serve(listener):
    while True:
        connection, _ = listener.accept()
        hits.append(1)
        connection.close()
for port in ports:
    listener = socket.socket()
    try:
        listener.bind(("127.0.0.1", port))
    except OSError:
        continue
    listener.listen(64)
    threading.Thread(target=serve, args=(listener,), daemon=True).start()
print("listening", flush=True)
sys.stdin.readline()
open(report, "w").write(str(len(hits)))
"""


def listening_ports() -> set[int]:
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:
            for line in handle.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":  # LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@needs_second_user
def test_after_the_serving_process_is_killed_nobody_else_can_answer_in_its_place(shared_folder, tmp_path):
    # Before: kill -9 left <journal>.service (port and secret); a live process with the recorded pid passed the
    # liveness check, so clients connected to whoever took the port next, and answered its challenge first.
    journal_path = shared_folder / "shared.duckdb"
    before = listening_ports()
    holder = start_holder(journal_path, tmp_path / "holder.log")
    ports = listening_ports() - before  # what the holder listens on (an attacker reads the same table)
    os.kill(holder.pid, signal.SIGKILL)
    stop(holder)
    for advert in shared_folder.glob("*.service"):  # as a pid reused by a live process would make it look
        data = json.loads(advert.read_text())
        advert.write_text(json.dumps({**data, "pid": os.getppid()}))
    report = shared_folder / "hits"
    attacker = as_nobody(LISTEN_ON, ",".join(map(str, sorted(ports))), str(report))
    try:
        assert attacker.stdout.readline().strip() == "listening", attacker.communicate()  # holds the freed ports
        journal = dx.open_journal(journal_path)
        for _ in range(20):
            assert journal.experiment_summaries()
        attacker.stdin.write("done\n")
        attacker.stdin.flush()
        assert attacker.wait(timeout=60) == 0, attacker.communicate()
    finally:
        stop(attacker)
    assert report.read_text() == "0", "no journal call went to a port the dead service had"
    assert not service_address(journal.path).socket.exists(), "the dead service's socket was removed"


# -- 4. an idle connection from another user ----------------------------------------------------

HOLD_IDLE = """
import socket, sys, time
ports, seconds = [int(port) for port in sys.argv[1].split(",") if port], float(sys.argv[2])
idle = []
for port in ports:
    for _ in range(4):
        try:
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=1))
        except OSError:
            pass
for line in open("/proc/net/unix").readlines()[1:]:
    fields = line.split()
    if len(fields) > 7 and "dspex" in fields[7]:
        try:
            endpoint = socket.socket(socket.AF_UNIX)
            endpoint.connect(fields[7])
            idle.append(endpoint)
        except OSError:
            pass
print(len(idle), flush=True)
time.sleep(seconds)
"""

# Prints how long its five journal calls took, not counting the interpreter's start and imports (which a
# loaded machine can stretch to many seconds): the stalls these tests guard against block the calls.
POLL = """
import sys, time
from dspex_lab.journal import open_journal
journal = open_journal(sys.argv[1])
started = time.monotonic()
for _ in range(5):
    journal.experiments()
print(f"{time.monotonic() - started:.3f}")
"""


def calls_took(poller: subprocess.CompletedProcess) -> float:
    """Seconds the POLL script's five journal calls took, as it printed them."""
    assert poller.returncode == 0, poller.stderr
    return float(poller.stdout.split()[-1])


@needs_second_user
def test_idle_connections_from_another_user_do_not_stall_anyone(shared_folder, tmp_path):
    # Before: the handshake ran on the single accept thread with no timeout, so one idle connection to the
    # service's port stalled every other process's journal calls (p50 0.05 s -> 19 s).
    journal_path = shared_folder / "shared.duckdb"
    before = listening_ports()
    holder = start_holder(journal_path, tmp_path / "holder.log", n=2000)
    attacker = as_nobody(HOLD_IDLE, ",".join(map(str, sorted(listening_ports() - before))), "600")  # killed when done
    try:
        attacker.stdout.readline()  # its connections are open
        poller = subprocess.run([sys.executable, "-c", POLL, str(journal_path)], capture_output=True, timeout=120)
        assert holder.poll() is None, "the holder still serves while the poller runs"
    finally:
        stop(attacker)
        stop(holder)
    elapsed = calls_took(poller)  # stalled, each call took about 19 s; served, the five take well under 1 s
    assert elapsed < 15, f"five journal calls took {elapsed:.1f} s with another user's idle connections open"


# -- the service's own guards, without an attacker process ---------------------------------------


@pytest.fixture
def served(journal_path) -> Iterator[dx.journal.DuckDBJournal]:
    journal = dx.open_journal(journal_path)
    with journal.hold():
        journal.create_experiment(ExperimentRecord(kind="evaluation", name="served", id="e1"))
        yield journal


def test_the_runtime_folder_is_private_to_the_user(monkeypatch):
    monkeypatch.delenv("DSPEX_RUNTIME_DIR")
    folder = runtime_dir()
    status = folder.lstat()
    assert folder.is_dir() and not folder.is_symlink()
    assert status.st_uid == os.getuid() and status.st_mode & 0o077 == 0


@needs_second_user
def test_a_runtime_folder_another_user_made_first_disables_the_service(tmp_path, monkeypatch, journal_path):
    planted = Path(tempfile.mkdtemp(prefix="dspex-runtime-", dir="/tmp"))
    try:
        os.chown(planted, 65534, 65534)  # made by nobody before this user's first run
        planted.chmod(0o700)
        monkeypatch.setenv("DSPEX_RUNTIME_DIR", str(planted))
        journal = dx.open_journal(journal_path)
        with journal.hold():
            journal.create_experiment(ExperimentRecord(kind="evaluation", name="unserved"))
            assert not service_available(journal.path)
        assert list(planted.iterdir()) == [], "nothing of ours is created in a folder another user owns"
        assert [summary.name for summary in journal.experiment_summaries()] == ["unserved"]
    finally:
        shutil.rmtree(planted, ignore_errors=True)


CONNECT_AND_CALL = """
import json, socket, struct, sys
endpoint = socket.socket(socket.AF_UNIX)
endpoint.connect(sys.argv[1])
payload = json.dumps({"method": "experiment_summaries", "arguments": [], "options": {}}).encode()
try:
    endpoint.sendall(struct.pack(">4sII", b"DXJ1", len(payload), 0) + payload)
    print(repr(endpoint.recv(100)), flush=True)
except (ConnectionResetError, BrokenPipeError):
    print("closed", flush=True)
"""


@needs_second_user
def test_a_peer_of_another_user_that_reaches_the_socket_is_refused_by_its_credentials(served):
    # The private folder already keeps other users out; this checks the second guard, as if it had not.
    address = service_address(served.path)
    folder = address.socket.parent
    service = JournalService.start(served, {"experiment_summaries"}, call_lock=threading.Lock())
    assert service is None, "a second service cannot start while this process serves the journal"
    mode = folder.stat().st_mode
    try:
        folder.chmod(0o711)
        address.socket.chmod(0o777)
        caller = as_nobody(CONNECT_AND_CALL, str(address.socket))
        output, errors = caller.communicate(timeout=60)
    finally:
        folder.chmod(mode & 0o777)
    assert caller.returncode == 0, errors
    assert output.strip() in {"b''", "closed"}, "closed without a byte of reply"


def test_no_peer_can_stall_the_others(served):
    address = service_address(served.path)
    idle = []
    try:
        for number in range(MAX_CONNECTIONS + 8):  # more than the service keeps: silent, or half a message
            endpoint = socket.socket(socket.AF_UNIX)
            endpoint.connect(str(address.socket))
            if number % 4 == 0:
                endpoint.sendall(b"DXJ1\x00")
            idle.append(endpoint)
        poller = subprocess.run([sys.executable, "-c", POLL, str(served.path)], capture_output=True, timeout=120)
        elapsed = calls_took(poller)  # a stalled call waits out FRAME_TIMEOUT (30 s) at least
        assert elapsed < 15, f"five journal calls took {elapsed:.1f} s with {len(idle)} idle peers connected"
    finally:
        for endpoint in idle:
            endpoint.close()


def test_a_reply_is_typed_data_never_code(served):
    assert call_service(served.path, "experiment", ("e1",), {})["name"] == "served"
    summaries = call_service(served.path, "experiment_summaries", (), {})
    assert [type(summary).__name__ for summary in summaries] == ["ExperimentSummary"]
    assert call_service(served.path, "finished_keys", ("e1",), {}) == set()
    frame = call_service(served.path, "sql", ("SELECT 1 AS one, 'x' AS two",), {})
    assert frame.to_dict("records") == [{"one": 1, "two": "x"}]
    with pytest.raises(dx.errors.JournalError, match="read-only"):
        call_service(served.path, "sql", ("DELETE FROM trials",), {})


class Planted:
    def __reduce__(self):
        return (os.system, ("touch /tmp/should-never-exist",))


@pytest.mark.parametrize(
    "message",
    [
        b"\x80\x04\x95",  # a pickle
        json.dumps({"$w": "record", "type": "Planted", "v": {}}).encode(),
        json.dumps({"$w": "module", "v": "os"}).encode(),
        json.dumps({"$w": "table", "blob": 3}).encode(),
        b"[" * 100_000 + b"]" * 100_000,
    ],
)
def test_the_wire_format_builds_only_its_own_types(message):
    with pytest.raises(_wire.WireError):
        _wire.decode(message, [])


def test_the_wire_format_refuses_what_it_does_not_carry_and_round_trips_what_it_does():
    with pytest.raises(_wire.WireError, match="cannot travel"):
        _wire.encode(Planted())
    value = {
        "tuple": (1, "a"),
        "set": {("e", 1)},
        "nan": float("nan"),
        3: [b"\x00", None, True],
        "record": ExperimentRecord(kind="evaluation", name="x", examples=(("a", {"q": 1}),), id="r"),
    }
    decoded = _wire.decode(*_wire.encode(value))
    assert decoded["tuple"] == (1, "a") and decoded["set"] == {("e", 1)} and decoded[3] == [b"\x00", None, True]
    assert decoded["nan"] != decoded["nan"] and decoded["record"] == value["record"]


def test_a_frame_announcing_more_than_the_limit_is_refused_before_it_is_read():
    reader, writer = socket.socketpair()
    with reader, writer:
        writer.sendall(b"DXJ1" + (_wire.MAX_MESSAGE_BYTES + 1).to_bytes(4, "big") + (0).to_bytes(4, "big"))
        with pytest.raises(_wire.WireError, match="at most"):
            _wire.receive(reader, first_byte_timeout=5, rest_timeout=5)
