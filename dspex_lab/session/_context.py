"""The context a researcher works in: which LM, which journal, how many threads."""

from __future__ import annotations

import contextvars
import inspect
import os
import threading
from typing import Any

import dspy

from dspex_lab.config import load_settings
from dspex_lab.engine import REIMPORTED_MAIN_EXIT, Executor, make_executor
from dspex_lab.errors import ExecutionError, JournalError
from dspex_lab.journal import JournalStore, memory_journal, open_journal
from dspex_lab.providers import resolve_lm

__all__ = ["Context", "current_context", "journal_store"]

_active: contextvars.ContextVar[Context | None] = contextvars.ContextVar("dspex_context", default=None)
_default: Context | None = None
_default_lock = threading.Lock()


class Context:
    """Where evaluations and optimizations run: the LM, the journal and the executor.

    Use it as a context manager; without one, a process-wide default built from
    :func:`dspex_lab.config.load_settings` applies (the lab LM, ``dspex.duckdb``,
    8 threads). Workers are stateless: every trial receives the context's
    settings through ``contextvars``.

    Args:
        lm: a model string (``"lab/small"``, ``"openai/gpt-4o-mini"``) or a ``dspy.LM``.
        journal: a path, a journal object (any :class:`~dspex_lab.journal.JournalStore`), or False to keep
            results in a new in-memory journal of this context's own (nothing written to disk).
        threads: worker threads for the default thread executor.
        executor: ``"thread"`` or an executor object.
    """

    def __init__(
        self,
        *,
        lm: str | dspy.BaseLM | None = None,
        journal: str | os.PathLike[str] | JournalStore | bool | None = None,
        threads: int | None = None,
        executor: str | Executor | None = None,
    ) -> None:
        settings = load_settings()
        self.lm: dspy.BaseLM = resolve_lm(lm if lm is not None else settings.lm)
        self.journal: JournalStore = _journal_store(journal, default=settings.journal)
        self._executor_spec: str | Executor = executor or settings.executor
        self.executor: Executor = make_executor(
            self._executor_spec, threads=settings.threads if threads is None else threads
        )
        self._tokens: list[contextvars.Token[Context | None]] = []

    def configure(
        self,
        *,
        lm: str | dspy.BaseLM | None = None,
        journal: str | os.PathLike[str] | JournalStore | bool | None = None,
        threads: int | None = None,
        executor: str | Executor | None = None,
    ) -> None:
        """Change this context's LM, journal, threads or executor in place; what is not given stays.

        This is how ``%dspex config lm=... journal=... threads=...`` sets a notebook's session: the
        process-wide default (or the ``with`` block's context) changes, so later runs need no ``with``
        block. Every value is checked before any is set, so a bad one changes nothing. Not for use
        while a run of this context goes (it reads the executor and journal once, when it starts).

        Args:
            lm: a model string or a ``dspy.LM``.
            journal: a path, a journal object, or False for a new in-memory journal.
            threads: trials at once; the thread or process executor is rebuilt with this many.
            executor: ``"thread"``, ``"process"``, ``"dask://host:port"`` or an executor object.

        Raises:
            ExecutionError: ``threads`` for an executor that sizes itself (a Dask cluster, an executor object),
                or a bad value.
            JournalError: a journal that cannot be opened.
        """
        given = {name: value for name, value in (("lm", lm), ("journal", journal)) if value is not None}
        new_lm = resolve_lm(given["lm"]) if "lm" in given else self.lm
        new_journal = self.journal
        if "journal" in given:
            new_journal = _journal_store(given["journal"], default=load_settings().journal)
        spec = self._executor_spec if executor is None else executor
        new_executor = self.executor
        if threads is not None and spec not in ("thread", "process"):
            raise ExecutionError(
                f"threads={threads!r}: this context runs on {self.executor!r}, which sizes itself; "
                "set executor=thread or executor=process with it"
            )
        if executor is not None or threads is not None:
            new_executor = make_executor(spec, threads=self.threads if threads is None else threads)
        self.lm, self.journal, self.executor, self._executor_spec = new_lm, new_journal, new_executor, spec

    @property
    def threads(self) -> int:
        """Worker threads of the executor."""
        return self.executor.threads

    def __enter__(self) -> Context:
        self._tokens.append(_active.set(self))
        return self

    def __exit__(self, *exc_info: Any) -> None:
        _active.reset(self._tokens.pop())

    def __repr__(self) -> str:
        return (
            f"Context(lm={getattr(self.lm, 'model', self.lm)!r}, journal={self.journal.location!r}, "
            f"executor={self.executor!r})"
        )


def _journal_store(journal: str | os.PathLike[str] | JournalStore | bool | None, *, default: str) -> JournalStore:
    """Return the store ``Context(journal=...)`` names: a new in-memory one for False, the settings' file for None."""
    match journal:
        case False:
            return memory_journal()
        case None | True:
            return open_journal(default)
        case str() | os.PathLike():
            return open_journal(journal)
        case JournalStore():
            return journal
    raise JournalError(
        f"Context(journal=...) takes a path, a journal (dx.open_journal(...)) or False, got {type(journal).__name__}"
    )


def refuse_reimported_run() -> None:
    """End a worker process that is re-running the user's script from the top, before it records anything.

    A process pool or Dask worker started with ``spawn`` imports the parent's main script (as module
    ``__mp_main__``) before it works; a script without an ``if __name__ == "__main__":`` guard would
    start its whole run again there, once per worker, each leaving a stray experiment. The worker
    exits at once with :data:`~dspex_lab.engine.REIMPORTED_MAIN_EXIT` (no traceback), and the
    executor that started it tells the user, in one line, to add the guard. It reads the calling
    frames (a few microseconds, once per run): while the child re-imports the script, nothing else
    marks it (``multiprocessing.parent_process()`` is set only after the import).
    """
    frame = inspect.currentframe()
    while frame is not None:
        if frame.f_code.co_name == "<module>" and frame.f_globals.get("__name__") == "__mp_main__":
            raise SystemExit(REIMPORTED_MAIN_EXIT)
        frame = frame.f_back


def journal_store(journal: str | os.PathLike[str] | JournalStore | None = None) -> JournalStore:
    """Return the journal a call names: the store given, a path's journal file, or the current context's when omitted.

    Functions that take ``journal=None`` (export, load, compare...) resolve it here, once, and use the
    store without asking again whether there is one: there always is (an in-memory one at least).

    Raises:
        JournalError: ``journal`` is neither a path nor a journal.
    """
    match journal:
        case None:
            return current_context().journal
        case str() | os.PathLike():
            return open_journal(journal)
        case JournalStore():
            return journal
    raise JournalError(f"journal= takes a path or a journal (dx.open_journal(...)), got {type(journal).__name__}")


def current_context() -> Context:
    """Return the active context, or the process-wide default.

    Every run (evaluate, compare, optimize...) asks for its context first, so this is where a run
    started by accident is refused: in a worker process re-importing the user's script because the
    script has no ``if __name__ == "__main__":`` guard (see :func:`refuse_reimported_run`).
    """
    refuse_reimported_run()
    active = _active.get()
    if active is not None:
        return active
    global _default
    with _default_lock:
        if _default is None:
            _default = Context()
        return _default
