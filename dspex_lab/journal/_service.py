"""The journal service: while a run holds a journal, its process serves the other processes' journal calls.

DuckDB lets one process at a time have a database file open, and opening it costs tens of
milliseconds, so several processes taking turns at one file spend most of their time waiting for
it (measured before this service: writers waited up to 3.6 s, a 10 Hz poller managed 1.4 polls/s).
Instead, the process whose run holds the file (``DuckDBJournal.hold``) also answers the journal
calls of every other process over a local socket: they never open the file, and calls cost a
round trip and the query itself.

The service is advertised in ``<journal>.service`` (a JSON file: host, pid, port and the
connection's secret, readable by the file's owner only). A caller that finds no file, a file of a
dead process, or a service that stops answering makes the call on the file itself, as before, so
a crash of the serving process (``kill -9``) costs nothing but one retried call. Every call that
writes is idempotent (trials by primary key, experiments by id, status updates by value), so a
call retried after the serving process died cannot duplicate anything.

Only the one-call journal methods travel (their arguments and results are pickled between
processes of one user on one machine, bound to 127.0.0.1 and authenticated with the secret).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import struct
import threading
import time
from dataclasses import dataclass
from multiprocessing import AuthenticationError
from multiprocessing.connection import Connection, Listener, answer_challenge, deliver_challenge
from pathlib import Path
from typing import Any

from dspex_lab.errors import JournalError

__all__ = ["JournalService", "ServiceGone", "ServiceReply", "call_service", "service_available", "service_file"]


class ServiceGone(Exception):  # noqa: N818 - a signal to the caller, not an error shown to users
    """The serving process stopped answering: make the call on the file instead."""


@dataclass(frozen=True)
class ServiceReply:
    """What the serving process sent back: a result, or the error the call raised there."""

    value: Any = None
    error: BaseException | None = None


def service_file(journal_path: Path) -> Path:
    """Return where the service of a journal is advertised."""
    return journal_path.with_name(journal_path.name + ".service")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # another user's process: never a service of ours
    return True


@dataclass
class _Client:
    port: int
    pid: int
    connection: Connection
    lock: threading.Lock


_clients: dict[Path, _Client] = {}
_clients_lock = threading.Lock()


def _advertised(journal_path: Path) -> tuple[int, int, bytes] | None:
    """Return (pid, port, secret) of a live service of another process, or None."""
    path = service_file(journal_path)
    try:
        # A journal can come from someone else, and replies are unpickled: trust only a service file this user
        # wrote for itself (ours, not readable or writable by anyone else), as JournalService writes it.
        status = path.stat()
        if status.st_uid != os.getuid() or status.st_mode & 0o077:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        pid, port, secret, host = int(data["pid"]), int(data["port"]), bytes.fromhex(data["secret"]), data["host"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if pid == os.getpid() or host != socket.gethostname() or not _pid_alive(pid):
        return None
    return pid, port, secret


def service_available(journal_path: Path) -> bool:
    """Return whether another live process advertises a service for this journal."""
    return _advertised(journal_path) is not None


def _client(journal_path: Path) -> _Client | None:
    advertised = _advertised(journal_path)
    if advertised is None:
        return None
    pid, port, secret = advertised
    with _clients_lock:
        client = _clients.get(journal_path)
        if client is not None and (client.pid, client.port) == (pid, port):
            return client
        if client is not None:
            with contextlib.suppress(OSError):
                client.connection.close()
        try:
            connection = _connect(port, secret)
        except (OSError, EOFError, ValueError, AuthenticationError):
            _clients.pop(journal_path, None)
            return None
        client = _Client(port, pid, connection, threading.Lock())
        _clients[journal_path] = client
        return client


# A serving process answers the handshake at once; a call may wait for the file's lock behind a long query.
HANDSHAKE_TIMEOUT = 2.0
CALL_TIMEOUT = 120.0


def _receive_timeout(connection: Connection, seconds: float) -> None:
    # On the socket itself, so Connection's blocking reads end with an OSError instead of hanging forever
    # on a process that stopped answering without closing (a Python socket timeout would make them fail).
    endpoint = socket.socket(fileno=os.dup(connection.fileno()))
    try:
        whole = int(seconds)
        endpoint.setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", whole, int((seconds - whole) * 1e6))
        )
    finally:
        endpoint.close()


def _connect(port: int, secret: bytes) -> Connection:
    """Connect and authenticate as ``multiprocessing.connection.Client`` does, but never wait forever."""
    endpoint = socket.create_connection(("127.0.0.1", port), timeout=HANDSHAKE_TIMEOUT)
    endpoint.settimeout(None)
    connection = Connection(endpoint.detach())
    try:
        _receive_timeout(connection, HANDSHAKE_TIMEOUT)
        answer_challenge(connection, secret)
        deliver_challenge(connection, secret)
        _receive_timeout(connection, CALL_TIMEOUT)
    except BaseException:
        connection.close()
        raise
    return connection


def call_service(journal_path: Path, method: str, arguments: tuple[Any, ...], options: dict[str, Any]) -> Any:
    """Make one journal call through another process's service.

    Raises:
        ServiceGone: there is no live service, or it stopped answering (make the call locally).
        Exception: whatever the call raised in the serving process.
    """
    client = _client(journal_path)
    if client is None:
        raise ServiceGone(method)
    with client.lock:
        try:
            client.connection.send((method, arguments, options))
            reply = client.connection.recv()
        except (OSError, EOFError) as error:
            with _clients_lock:
                if _clients.get(journal_path) is client:
                    del _clients[journal_path]
            with contextlib.suppress(OSError):
                client.connection.close()
            raise ServiceGone(method) from error
    if not isinstance(reply, ServiceReply):
        raise JournalError(f"the journal service of {journal_path} answered {type(reply).__name__}, not a reply")
    if reply.error is not None:
        raise reply.error
    return reply.value


class JournalService:
    """Answer other processes' journal calls from this process, which holds the journal file.

    Args:
        journal: the journal whose methods are called (this process's ``DuckDBJournal``).
        allowed: the method names other processes may call.
        call_lock: held while a call runs, and by whoever stops the service: a call that finds the
            service stopped is not run (its caller makes it on the file), so no journal work starts
            after :meth:`stop` (a daemon thread inside DuckDB at interpreter exit aborts the process).
    """

    def __init__(self, journal: Any, allowed: set[str] | frozenset[str], *, call_lock: Any) -> None:
        self.journal = journal
        self.allowed = frozenset(allowed)
        self.call_lock = call_lock
        self.secret = secrets.token_bytes(32)
        self.listener = Listener(("127.0.0.1", 0), authkey=self.secret)
        self.port = int(self.listener.address[1])
        self._connections: set[Connection] = set()
        self._lock = threading.Lock()
        self._stopped = False
        self.last_call = 0.0  # time.monotonic() of the last call served (0: none yet)
        self._file = service_file(journal.path)
        self._advertise()
        threading.Thread(target=self._accept, name="dspex-journal-service", daemon=True).start()

    def _advertise(self) -> None:
        text = json.dumps(
            {"host": socket.gethostname(), "pid": os.getpid(), "port": self.port, "secret": self.secret.hex()}
        )
        partial = self._file.with_name(f"{self._file.name}.{os.getpid()}.tmp")
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(partial, self._file)  # atomic: a reader sees the old file or the whole new one

    def _accept(self) -> None:
        while True:
            try:
                connection = self.listener.accept()
            except Exception:
                # A caller that failed authentication, or the listener closed by stop().
                if self._stopped:
                    return
                continue
            with self._lock:
                if self._stopped:
                    connection.close()
                    return
                self._connections.add(connection)
            threading.Thread(target=self._serve, args=(connection,), name="dspex-journal-call", daemon=True).start()

    def _serve(self, connection: Connection) -> None:
        try:
            while True:
                try:
                    method, arguments, options = connection.recv()
                except (OSError, EOFError, ValueError, TypeError):
                    return
                if method not in self.allowed:
                    reply = ServiceReply(error=JournalError(f"the journal service does not serve {method!r}"))
                else:
                    reply = self._call(method, arguments, options)
                try:
                    connection.send(reply)
                except (OSError, ValueError):
                    return
                except Exception as error:  # a result or error that does not pickle
                    connection.send(ServiceReply(error=JournalError(f"journal call {method} failed: {error!r}")))
        finally:
            with self._lock:
                self._connections.discard(connection)
            with contextlib.suppress(OSError):
                connection.close()

    def _call(self, method: str, arguments: tuple[Any, ...], options: dict[str, Any]) -> ServiceReply:
        with self.call_lock:
            if self._stopped:
                return ServiceReply(error=ServiceGone(method))
            self.last_call = time.monotonic()
            try:
                return ServiceReply(value=getattr(self.journal, method)(*arguments, **options))
            except Exception as error:
                return ServiceReply(error=error)

    def stop(self) -> None:
        """Stop advertising and serving; callers that were connected make their next call on the file."""
        with self.call_lock, self._lock:
            self._stopped = True
            connections = list(self._connections)
        with contextlib.suppress(OSError):
            # Only our own advertisement: another process may have taken over the journal since.
            if _advertised_pid(self._file) == os.getpid():
                self._file.unlink()
        # Closing a socket does not wake a thread blocked on it: connect once to end accept(), and shut
        # down each caller's connection to end its recv(); the serving threads then close them.
        with contextlib.suppress(OSError):
            # Unauthenticated and closed at once: accept() fails its handshake and the thread sees it stopped.
            socket.create_connection(("127.0.0.1", self.port), timeout=HANDSHAKE_TIMEOUT).close()
        with contextlib.suppress(OSError):
            self.listener.close()
        for connection in connections:
            with contextlib.suppress(OSError, ValueError):
                endpoint = socket.socket(fileno=os.dup(connection.fileno()))
                try:
                    endpoint.shutdown(socket.SHUT_RDWR)
                finally:
                    endpoint.close()


def _advertised_pid(path: Path) -> int | None:
    try:
        return int(json.loads(path.read_text(encoding="utf-8"))["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
