"""The context a researcher works in: which LM, which journal, how many threads."""

from __future__ import annotations

import contextvars
import os
import threading
from typing import Any

import dspy

from dspex_lab.config import load_settings
from dspex_lab.engine import Executor, make_executor
from dspex_lab.journal import DuckDBJournal, open_journal
from dspex_lab.providers import resolve_lm

__all__ = ["Context", "current_context"]

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
        journal: a path, a journal object, or False to keep results in memory only.
        threads: worker threads for the default thread executor.
        executor: ``"thread"`` or an executor object.
    """

    def __init__(
        self,
        *,
        lm: str | dspy.BaseLM | None = None,
        journal: str | os.PathLike[str] | DuckDBJournal | bool | None = None,
        threads: int | None = None,
        executor: str | Executor | None = None,
    ) -> None:
        settings = load_settings()
        self.lm: dspy.BaseLM = resolve_lm(lm if lm is not None else settings.lm)
        if journal is False:
            self.journal: DuckDBJournal | None = None
        elif isinstance(journal, DuckDBJournal):
            self.journal = journal
        else:
            self.journal = open_journal(journal if journal not in (None, True) else settings.journal)  # type: ignore[arg-type]
        self.executor: Executor = make_executor(
            executor or settings.executor, threads=settings.threads if threads is None else threads
        )
        self._tokens: list[contextvars.Token[Context | None]] = []

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
        journal = str(self.journal.path) if self.journal is not None else None
        return f"Context(lm={getattr(self.lm, 'model', self.lm)!r}, journal={journal!r}, executor={self.executor!r})"


def current_context() -> Context:
    """Return the active context, or the process-wide default."""
    active = _active.get()
    if active is not None:
        return active
    global _default
    with _default_lock:
        if _default is None:
            _default = Context()
        return _default
