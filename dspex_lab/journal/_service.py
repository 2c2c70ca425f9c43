"""The journal service: while a run holds a journal, its process serves the other processes' journal calls.

DuckDB lets one process at a time have a database file open, and opening it costs tens of
milliseconds, so several processes taking turns at one file spend most of their time waiting for
it (measured before this service: writers waited up to 3.6 s, a 10 Hz poller managed 1.4 polls/s).
Instead, the process whose run holds the file (``DuckDBJournal.hold``) also answers the journal
calls of every other process of the same user: they never open the file, and calls cost a round
trip and the query itself.

Trust (docs/security.md): the user is trusted; other local users, anyone who can write the
journal's folder, and anyone on the network are not. So:

- The service is a Unix socket in the user's private runtime folder (:func:`runtime_dir`: a folder
  the user owns with no access for anyone else, checked with ``lstat`` every time, never a path in
  the journal's folder), named by a hash of the journal's path. Nothing is read from or written to
  the journal's folder to find it, so whoever can write that folder has nothing to plant.
- Both ends check the other's user id with ``SO_PEERCRED``, which the kernel fills in: there is no
  secret to steal and no challenge to reflect.
- A serving process holds an ``flock`` on ``<name>.lock`` beside its socket for its whole life. The
  kernel drops it when the process dies, however it dies, so a socket whose lock is free is stale
  (pid reuse cannot fool it) and is removed, under that lock, by whoever finds it.
- Nothing received is unpickled: calls and replies travel in ``_wire``'s typed, bounded format.
- A peer is accepted without reading anything from it, each connection has its own thread, a
  message that has started must finish within ``FRAME_TIMEOUT``, and connections are capped, so
  no peer can stall the others.

A caller that finds no service, a stale one, or one that stops answering makes the call on the
file itself, as before, so a crash of the serving process (``kill -9``) costs nothing but one
retried call. Every call that writes is idempotent (trials by primary key, experiments by id,
status updates by value), so a call retried after the serving process died cannot duplicate
anything. Where the runtime folder is unsafe or missing (another user made it, or the platform has
no ``SO_PEERCRED``), there is no service and processes take turns at the file, as before it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import socket
import stat
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dspex_lab.errors import DspexLabError, JournalError
from dspex_lab.journal import _wire

__all__ = [
    "JournalService",
    "ServiceAddress",
    "ServiceGone",
    "call_service",
    "process_start_time",
    "runtime_dir",
    "service_address",
    "service_available",
]

log = logging.getLogger("dspex_lab.journal")

RUNTIME_DIR_ENV = "DSPEX_RUNTIME_DIR"

# A serving process answers at once; a call may wait for the file's lock behind a long query.
CONNECT_TIMEOUT = 2.0
CALL_TIMEOUT = 120.0
# Once a message has started, each further read must come within this (a stalled peer ends its own connection).
FRAME_TIMEOUT = 30.0
# Kernels, dashboards, CLIs and pollers of one user on one journal: far fewer than this.
MAX_CONNECTIONS = 64
LISTEN_BACKLOG = 16
# A Unix socket's path must fit in sockaddr_un (108 bytes on Linux, with its terminating NUL).
_MAX_SOCKET_PATH = 107


class ServiceGone(Exception):  # noqa: N818 - a signal to the caller, not an error shown to users
    """There is no live service, or it stopped answering: make the call on the file instead."""


class ServiceUnavailable(Exception):  # noqa: N818 - a reason logged once, never shown as an error
    """This process cannot use services safely (see the message); journal calls go to the file."""


# -- where services live -----------------------------------------------------------------------


def runtime_dir() -> Path:
    """Return this user's private folder for journal services, creating it if needed.

    ``$DSPEX_RUNTIME_DIR`` if set, else ``$XDG_RUNTIME_DIR/dspex_lab`` where that folder exists,
    else ``<temp dir>/dspex_lab-<uid>``. It must be a real folder (not a symbolic link) owned by this
    user with no permission for group or others.

    Raises:
        ServiceUnavailable: it cannot be created, or it is not private (another user may have made it first).
    """
    configured = os.environ.get(RUNTIME_DIR_ENV)
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if configured:
        folder = Path(configured)
    elif xdg and Path(xdg).is_dir():
        folder = Path(xdg) / "dspex_lab"
    else:
        folder = Path(tempfile.gettempdir()) / f"dspex_lab-{os.getuid()}"
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder, 0o700)
        status = os.lstat(folder)
    except OSError as error:
        raise ServiceUnavailable(f"cannot create the private folder {folder}: {error}") from error
    if not stat.S_ISDIR(status.st_mode) or status.st_uid != os.getuid() or status.st_mode & 0o077:
        raise ServiceUnavailable(
            f"{folder} is not a private folder of this user (owner uid {status.st_uid}, mode "
            f"{stat.filemode(status.st_mode)}); set {RUNTIME_DIR_ENV} to a folder only you can use"
        )
    return folder


@dataclass(frozen=True)
class ServiceAddress:
    """Where the service of one journal lives, in the private runtime folder."""

    socket: Path
    lock: Path
    waiting: Path


def service_address(journal_path: Path) -> ServiceAddress:
    """Return the socket, lock and waiting-marker paths of a journal's service.

    Raises:
        ServiceUnavailable: the runtime folder is unsafe, or its paths are too long for a Unix socket.
    """
    if not hasattr(socket, "SO_PEERCRED") or not hasattr(socket, "AF_UNIX"):
        raise ServiceUnavailable(f"this platform ({sys.platform}) cannot check a Unix socket peer's user")
    folder = runtime_dir()
    name = hashlib.sha256(os.fsencode(journal_path)).hexdigest()[:32]
    address = ServiceAddress(folder / f"{name}.sock", folder / f"{name}.lock", folder / f"{name}.waiting")
    if len(os.fsencode(address.socket)) > _MAX_SOCKET_PATH:
        raise ServiceUnavailable(f"{address.socket} is too long for a Unix socket; set {RUNTIME_DIR_ENV} shorter")
    return address


_unavailable_logged: set[str] = set()


def _address_or_none(journal_path: Path) -> ServiceAddress | None:
    try:
        return service_address(journal_path)
    except ServiceUnavailable as reason:
        text = str(reason)
        if text not in _unavailable_logged:
            _unavailable_logged.add(text)
            log.warning("journal service disabled, processes take turns at %s instead: %s", journal_path, text)
        return None


def process_start_time(pid: int) -> int | None:
    """Return when a process started (clock ticks since boot, from ``/proc``), or None if it is gone.

    With the pid, this names one process: a pid reused by a later process has another start time.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            text = handle.read()
    except OSError:
        return None
    try:
        # The command name (field 2) is in parentheses and may hold spaces: fields follow the last ")".
        return int(text[text.rindex(b")") + 2 :].split()[19])
    except (ValueError, IndexError):
        return None


def _peer_uid(endpoint: socket.socket) -> int:
    credentials = endpoint.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", credentials)
    return int(uid)


@contextlib.contextmanager
def _lock_file(path: Path) -> Iterator[int]:
    """Open (creating) a lock file of the private folder without following links; yield its descriptor."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode) or status.st_uid != os.getuid():
            raise ServiceUnavailable(f"{path} is not a lock file of this user")
        yield descriptor
    finally:
        os.close(descriptor)


def _lock_free(address: ServiceAddress) -> bool:
    """Return whether no live process serves this address (its lock can be taken)."""
    try:
        with _lock_file(address.lock) as descriptor:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True
    except (OSError, ServiceUnavailable):
        return False


def _remove_if_stale(address: ServiceAddress) -> None:
    """Remove a socket nobody serves: under the lock, so a service starting meanwhile is never removed."""
    with contextlib.suppress(OSError, ServiceUnavailable), _lock_file(address.lock) as descriptor:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # a live service holds it
        with contextlib.suppress(FileNotFoundError):
            os.unlink(address.socket)
        log.info("removed the stale journal service socket %s", address.socket)


def service_available(journal_path: Path) -> bool:
    """Return whether a live process of this user serves this journal."""
    address = _address_or_none(journal_path)
    return address is not None and address.socket.exists() and not _lock_free(address)


# -- calling a service -------------------------------------------------------------------------


@dataclass
class _Client:
    endpoint: socket.socket
    lock: threading.Lock


_clients: dict[Path, _Client] = {}
_clients_lock = threading.Lock()


def _connect(address: ServiceAddress) -> socket.socket | None:
    endpoint = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        endpoint.settimeout(CONNECT_TIMEOUT)
        endpoint.connect(str(address.socket))
        # The kernel says who is at the other end: only a process of this user is ever sent a call.
        if _peer_uid(endpoint) != os.getuid():
            log.warning("refused journal service %s: served by another user", address.socket)
            endpoint.close()
            return None
    except OSError as error:
        endpoint.close()
        if error.errno in {errno.ECONNREFUSED, errno.ENOTSOCK}:
            _remove_if_stale(address)
        return None
    return endpoint


def _client(journal_path: Path) -> _Client | None:
    with _clients_lock:
        client = _clients.get(journal_path)
        if client is not None:
            return client
        address = _address_or_none(journal_path)
        if address is None:
            return None
        endpoint = _connect(address)
        if endpoint is None:
            return None
        client = _Client(endpoint, threading.Lock())
        _clients[journal_path] = client
        return client


def _drop(journal_path: Path, client: _Client) -> None:
    with _clients_lock:
        if _clients.get(journal_path) is client:
            del _clients[journal_path]
    with contextlib.suppress(OSError):
        client.endpoint.close()


def call_service(journal_path: Path, method: str, arguments: tuple[Any, ...], options: dict[str, Any]) -> Any:
    """Make one journal call through another process's service.

    Raises:
        ServiceGone: there is no live service, or it stopped answering (make the call locally).
        JournalError: the call's arguments or its reply cannot travel.
        DspexLabError: the error the call raised in the serving process (its class and message).
    """
    client = _client(journal_path)
    if client is None:
        raise ServiceGone(method)  # before encoding: most calls of a process that holds no service end here
    try:
        # Encoded whole before anything is sent, so a value that cannot travel never leaves half a message.
        message = _wire.encode({"method": method, "arguments": list(arguments), "options": options})
    except _wire.WireError as error:
        raise JournalError(f"journal call {method} cannot go to the serving process: {error}") from error
    with client.lock:
        try:
            client.endpoint.settimeout(FRAME_TIMEOUT)
            _wire.send_encoded(client.endpoint, message)
            reply = _wire.receive(client.endpoint, first_byte_timeout=CALL_TIMEOUT, rest_timeout=FRAME_TIMEOUT)
        except (OSError, EOFError, _wire.WireError) as error:
            _drop(journal_path, client)
            raise ServiceGone(method) from error
    if not isinstance(reply, dict) or not ({"value"} == reply.keys() or {"error"} == reply.keys()):
        _drop(journal_path, client)
        raise ServiceGone(method)
    if "error" in reply:
        raise _error_from(reply["error"], method)
    return reply["value"]


# Errors a call may raise in the serving process, rebuilt by name in the caller (message only).
def _error_classes() -> dict[str, type[Exception]]:
    from dspex_lab import errors

    classes: dict[str, type[Exception]] = {
        name: value
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, DspexLabError)
    }
    classes.update({cls.__name__: cls for cls in (ValueError, TypeError, KeyError, LookupError)})
    return classes


def _error_from(description: Any, method: str) -> Exception:
    if not isinstance(description, dict) or description.get("type") == "ServiceGone":
        return ServiceGone(method)
    name, message = str(description.get("type"))[:100], str(description.get("message"))[:10_000]
    cls = _error_classes().get(name)
    if cls is None:
        return JournalError(f"journal call {method} failed in the serving process: {name}: {message}")
    try:
        return cls(message)
    except TypeError:  # an error class with required fields: keep its name in a JournalError
        return JournalError(f"{name}: {message}")


def _error_description(error: BaseException) -> dict[str, str]:
    return {"type": type(error).__name__, "message": str(error)}


# -- serving -----------------------------------------------------------------------------------


class JournalService:
    """Answer other processes' journal calls from this process, which holds the journal file.

    Use :meth:`start`, which returns None where services cannot be used safely.

    Args:
        journal: the journal whose methods are called (this process's ``DuckDBJournal``).
        allowed: the method names other processes may call.
        call_lock: held while a call runs, and by whoever stops the service: a call that finds the
            service stopped is not run (its caller makes it on the file), so no journal work starts
            after :meth:`stop` (a daemon thread inside DuckDB at interpreter exit aborts the process).
    """

    @classmethod
    def start(cls, journal: Any, allowed: set[str] | frozenset[str], *, call_lock: Any) -> JournalService | None:
        """Start serving, or return None (and log why once) where no service can run safely."""
        address = _address_or_none(journal.path)
        if address is None:
            return None
        try:
            return cls(journal, allowed, call_lock=call_lock, address=address)
        except ServiceUnavailable as error:
            log.info("journal %s not served to other processes: %s", journal.path, error)
            return None
        except OSError as error:
            log.warning("journal %s not served to other processes: %s", journal.path, error)
            return None

    def __init__(
        self, journal: Any, allowed: set[str] | frozenset[str], *, call_lock: Any, address: ServiceAddress
    ) -> None:
        self.journal = journal
        self.allowed = frozenset(allowed)
        self.call_lock = call_lock
        self.address = address
        # Each caller's connection, and whether a message of it is under way (False: idle between calls).
        self._connections: dict[socket.socket, bool] = {}
        self._lock = threading.Lock()
        self._stopped = False
        self.last_call = 0.0  # time.monotonic() of the last call served (0: none yet)
        self.refused = 0  # connections refused: another user, or over MAX_CONNECTIONS
        self._lock_descriptor = self._take_lock()
        try:
            # We hold the lock, so a socket left here is stale (its process died): replace it.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(address.socket)
            self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._listener.bind(str(address.socket))
            self._listener.listen(LISTEN_BACKLOG)
            self._socket_inode = os.lstat(address.socket).st_ino
        except BaseException:
            os.close(self._lock_descriptor)
            raise
        threading.Thread(target=self._accept, name="dspex-journal-service", daemon=True).start()

    def _take_lock(self) -> int:
        descriptor = os.open(self.address.lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            status = os.fstat(descriptor)
            if not stat.S_ISREG(status.st_mode) or status.st_uid != os.getuid():
                raise ServiceUnavailable(f"{self.address.lock} is not a lock file of this user")
            deadline = time.monotonic() + CONNECT_TIMEOUT
            while True:
                try:
                    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return descriptor
                except BlockingIOError:
                    # Another process of ours still serves this journal (it is letting go of the file).
                    if time.monotonic() > deadline:
                        raise ServiceUnavailable("another process still serves this journal") from None
                    time.sleep(0.02)
        except BaseException:
            os.close(descriptor)
            raise

    def _accept(self) -> None:
        while True:
            try:
                endpoint, _ = self._listener.accept()
            except OSError:
                if self._stopped:
                    return
                continue
            # Checked before anything is read: a peer of another user never gets a thread or a byte.
            try:
                trusted = _peer_uid(endpoint) == os.getuid()
            except OSError:
                trusted = False
            with self._lock:
                if self._stopped:
                    endpoint.close()
                    return
                if not trusted or (len(self._connections) >= MAX_CONNECTIONS and not self._evict_idle()):
                    self.refused += 1
                    endpoint.close()
                    continue
                self._connections[endpoint] = False
            threading.Thread(target=self._serve, args=(endpoint,), name="dspex-journal-call", daemon=True).start()

    def _evict_idle(self) -> bool:
        """Make room by closing the connection of a caller idle between calls (it reconnects when it calls)."""
        for endpoint, busy in self._connections.items():
            if not busy:
                del self._connections[endpoint]
                with contextlib.suppress(OSError):
                    endpoint.shutdown(socket.SHUT_RDWR)
                return True
        return False

    def _serve(self, endpoint: socket.socket) -> None:
        try:
            while True:
                endpoint.settimeout(None)
                if not endpoint.recv(1, socket.MSG_PEEK):
                    return  # the caller closed, or was evicted while idle
                with self._lock:
                    if endpoint not in self._connections:
                        return
                    self._connections[endpoint] = True
                try:
                    request = _wire.receive(endpoint, first_byte_timeout=FRAME_TIMEOUT, rest_timeout=FRAME_TIMEOUT)
                except (OSError, EOFError, _wire.WireError):
                    return  # stalled mid-message, or not our format: end this connection only
                reply = self._reply(request)
                try:
                    _wire.send(endpoint, reply)
                except _wire.WireError as error:  # a result that cannot travel
                    _wire.send(endpoint, {"error": _error_description(JournalError(str(error)))})
                with self._lock:
                    if endpoint in self._connections:
                        self._connections[endpoint] = False
        except OSError:
            return
        finally:
            with self._lock:
                self._connections.pop(endpoint, None)
            with contextlib.suppress(OSError):
                endpoint.close()

    def _reply(self, request: Any) -> dict[str, Any]:
        if not isinstance(request, dict) or set(request) != {"method", "arguments", "options"}:
            return {"error": _error_description(JournalError("a journal call must name a method and its arguments"))}
        method, arguments, options = request["method"], request["arguments"], request["options"]
        if not isinstance(method, str) or method not in self.allowed:
            return {"error": _error_description(JournalError(f"the journal service does not serve {method!r:.80}"))}
        if not isinstance(arguments, list) or not isinstance(options, dict):
            return {"error": _error_description(JournalError(f"malformed arguments for journal call {method}"))}
        return self._call(getattr(self.journal, method), method, arguments, options)

    def _call(
        self, function: Callable[..., Any], method: str, arguments: list[Any], options: dict[str, Any]
    ) -> dict[str, Any]:
        with self.call_lock:
            if self._stopped:
                return {"error": {"type": "ServiceGone", "message": method}}
            self.last_call = time.monotonic()
            try:
                return {"value": function(*arguments, **options)}
            except Exception as error:
                return {"error": _error_description(error)}

    def stop(self) -> None:
        """Stop serving; callers that were connected make their next call on the file."""
        with self.call_lock, self._lock:
            if self._stopped:
                return
            self._stopped = True
            connections = list(self._connections)
        with contextlib.suppress(OSError):
            # Still under our lock, so the socket there is ours (checked by inode all the same).
            if os.lstat(self.address.socket).st_ino == self._socket_inode:
                os.unlink(self.address.socket)
        # Closing a socket does not wake a thread blocked on it: shut the listener and each caller's
        # connection down, which ends accept() and recv(); the serving threads then close them.
        for endpoint in [self._listener, *connections]:
            with contextlib.suppress(OSError):
                endpoint.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._listener.close()
        os.close(self._lock_descriptor)
