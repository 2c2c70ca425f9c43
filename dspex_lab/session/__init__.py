"""The session: where a researcher's runs happen, and the experiments they leave.

:class:`Context` is what every run reads its surroundings from: the LM, the executor that runs
trials, the journal that keeps them, the thread count. It is a context manager (``with
dx.Context(...)``) that nests; :func:`current_context` returns the innermost one (or the default,
built from settings and the environment).

This layer sits between the engine and the journal below and evaluation and optimization above:
it may import the engine, the journal and the providers, and nothing above it.
"""

from __future__ import annotations

from dspex_lab.session._context import Context, current_context

__all__ = ["Context", "current_context"]
