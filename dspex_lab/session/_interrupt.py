"""The interrupt a run raises once it has recorded what it finished: which experiment to resume, and what it got."""

from __future__ import annotations

from typing import Any

__all__ = ["RunInterrupted"]


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by the user (Ctrl-C, the kernel's stop button, a widget's Cancel), its finished trials kept.

    Still a ``KeyboardInterrupt``, so a script stops as before; a caller that handles it (the ``%dspex``
    magics) reads which experiment to resume and the partial result from its fields instead of its message.
    Not a :class:`~dspex_lab.errors.DspexLabError`: nothing went wrong, the user asked the run to stop.

    Args:
        message: the line shown when nobody handles it (it names the id to resume with).
        experiment_id: the interrupted experiment, as ``resume=`` takes it.
        kind: ``"evaluation"`` or ``"optimization"``.
        result: the partial result when the run built one (an evaluation does), else None.
    """

    def __init__(self, message: str, *, experiment_id: str, kind: str, result: Any = None) -> None:
        super().__init__(message)
        self.experiment_id = experiment_id
        self.kind = kind
        self.result = result
