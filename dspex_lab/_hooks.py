"""The plugs through which the package root lends a lower layer what only a higher layer has.

Imports point downward (DESIGN §1), yet two lower layers need a higher one at run time:

- a program's ``model`` variable names an LM, and the lab models live in the ``lm`` layer, which the
  ``program`` layer may not import: :data:`lm_resolver` turns a model name into an LM;
- ``progress=True`` in a Jupyter kernel shows the notebook's widget, which ``evaluation`` and
  ``optimization`` may not import: :data:`progress_factory` returns that display, or None for tqdm;
- ``optimize(..., live=True)`` in a Jupyter kernel draws the notebook's live convergence widget:
  :data:`live_plot_factory` returns it, or None outside a kernel;
- ``Dataset.from_journal(path, ...)`` reads a journal file, and the ``data`` layer imports nothing:
  :data:`journal_opener` opens one.

``import dspex_lab`` fills them before any sub-package can load (importing ``dspex_lab.program``
imports the package root first), without loading the layers behind them; each plug loads its layer
on first call. A lower layer reads the plug when it needs it and has a plain fallback when it is
empty (``dspy.LM`` for a model name, tqdm for progress). This module imports nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["journal_opener", "live_plot_factory", "lm_resolver", "progress_factory"]

#: Turns a ``model`` variable's value into an LM; None means ``dspy.LM(model)``.
lm_resolver: Callable[[str], Any] | None = None

#: Called with the kind of run (``"evaluation"`` or ``"optimization"``); returns an event subscriber
#: that shows the run, or None to leave it to the tqdm bar. None means tqdm always.
progress_factory: Callable[[str], Any] | None = None

#: Returns a subscriber that draws an optimization's convergence live in the notebook, or None where it
#: cannot (outside a Jupyter kernel, or without anywidget). None means no live plot.
live_plot_factory: Callable[[], Any] | None = None

#: Opens the journal file at a path (``dx.open_journal``); None means only an open journal can be read.
journal_opener: Callable[[Any], Any] | None = None
