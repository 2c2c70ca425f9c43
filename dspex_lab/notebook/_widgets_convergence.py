"""``LiveConvergenceWidget``: an optimization's convergence, drawn in the notebook while the run goes.

Why a widget of our own and not the holoviews plot (:class:`~dspex_lab.optimization.LiveConvergence`,
kept for the dashboard and for static export). In a notebook, bokeh's plots need bokeh's JavaScript in
the page (fetched from a CDN unless inlined, so a cluster without internet shows nothing), and a
holoviews ``Pipe`` updates a displayed plot through bokeh's own comm, whose messages the front end
applies only once the busy cell ends: the panels stayed empty until the run was over. This widget
instead sends each step's frames as one synced trait, the mechanism ``RunProgress`` uses (known to
reach the page while the cell still runs), and its front end (``widgets/live_convergence.js``) draws
them as SVG with the JupyterLab theme's CSS variables: nothing is fetched, it updates once per step,
follows the light and dark themes, and its step axis has integer ticks only.

Where it appears: on its first step, the widget displays itself (unless it was displayed already), so
in a cell running ``dx.optimize`` it sits below the run's ``RunProgress`` and its Cancel button, which
the run displays when it starts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pandas as pd

from dspex_lab.errors import MissingDependencyError
from dspex_lab.notebook._widgets_common import front_end_file, json_number
from dspex_lab.optimization import ConvergenceData, convergence_data

try:
    import anywidget
    import traitlets
except ImportError as error:  # pragma: no cover - exercised only without the notebook extra
    raise MissingDependencyError("anywidget", "notebook") from error

__all__ = ["LiveConvergenceWidget"]

# The candidates' columns the front end draws or shows on hover.
_CANDIDATE_FIELDS = (
    "candidate_id", "step", "strategy", "rationale", "outcome", "score", "score_kind", "screen_mean",
    "incumbent_screen_mean", "val_mean", "val_ci_low", "val_ci_high", "p_adjusted", "optimism",
    "parent_step", "parent_score",
)  # fmt: skip
_BEST_FIELDS = ("step", "best_mean", "best_ci_low", "best_ci_high", "incumbent_id", "lm_calls")
_VARIABLE_FIELDS = ("step", "row", "variable", "value", "label", "level", "changed")


def _plain(value: Any) -> Any:
    """Return a frame's cell as JSON: numbers finite or None, integers as int, text as str."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int) or (hasattr(value, "dtype") and getattr(value.dtype, "kind", "") in "iu"):
        return int(value)
    if isinstance(value, float) or (hasattr(value, "dtype") and getattr(value.dtype, "kind", "") == "f"):
        return json_number(value)
    if hasattr(value, "item") and callable(value.item):
        return _plain(value.item())
    return str(value)


def _records(frame: pd.DataFrame, fields: tuple[str, ...]) -> list[dict[str, Any]]:
    columns = [field for field in fields if field in frame.columns]
    return [
        {field: _plain(value) for field, value in zip(columns, row, strict=True)}
        for row in frame[columns].itertuples(index=False, name=None)
    ]


def convergence_payload(data: ConvergenceData, *, step: int | None) -> dict[str, Any]:
    """Turn the convergence frames into the JSON the front end draws (no NaN: JSON has none).

    Args:
        data: the frames of :func:`~dspex_lab.optimization.convergence_data`.
        step: the step that just finished, or None before the first.

    Returns:
        ``best``, ``candidates`` and ``variables`` as lists of records, ``last_step`` (the step axis ends
        there) and ``step``.
    """
    steps = [*data.best["step"].tolist(), *data.candidates["step"].tolist()]
    last_step = max((int(value) for value in steps if not (isinstance(value, float) and math.isnan(value))), default=0)
    return {
        "step": step,
        "last_step": last_step,
        "best": _records(data.best, _BEST_FIELDS),
        "candidates": _records(data.candidates, _CANDIDATE_FIELDS),
        "variables": _records(data.variables, _VARIABLE_FIELDS),
    }


class LiveConvergenceWidget(anywidget.AnyWidget):
    """Draw an optimization's convergence in the notebook, redrawn after every step of the run.

    A subscriber (:class:`~dspex_lab.optimization.Subscriber`): pass it in ``subscribers=`` to
    :func:`dspex_lab.optimize` (``%dspex optimize ... --live`` does). Called with any object that has
    ``steps`` and ``candidates`` DataFrames (an :class:`~dspex_lab.optimization.OptimizationStep`), it
    sends the four panels' data to the page: the incumbent's validation mean with its interval and the
    accepted and rejected candidates; screening versus full evaluation per candidate; the lineage of
    candidates; the incumbent's variables per step. Other objects are ignored.

    On the first step it draws, it displays itself if it has not been displayed yet, so it appears below
    the run's progress (pass ``display=False`` to leave displaying to the caller).

    Thread safety: calls are expected from one thread at a time (the run's).

    Args:
        title: a title above the panels.
        display: shows the widget on its first step if it was not shown before (default:
            ``IPython.display.display``); False never displays it by itself.

    Attributes:
        data: the latest :class:`~dspex_lab.optimization.ConvergenceData` (empty frames before the first step).
    """

    _esm = front_end_file("live_convergence.js", widget="LiveConvergenceWidget")
    _css = front_end_file("live_convergence.css", widget="LiveConvergenceWidget")

    title = traitlets.Unicode("").tag(sync=True)
    payload = traitlets.Dict().tag(sync=True)

    def __init__(self, *, title: str = "", display: Callable[[Any], Any] | bool = True) -> None:
        super().__init__(title=title)
        self._display = display
        self._shown = False
        self.data = convergence_data(pd.DataFrame(), pd.DataFrame())
        self.payload = convergence_payload(self.data, step=None)

    def __call__(self, event: object) -> None:
        """Redraw from ``event.steps`` and ``event.candidates``; ignore events without both frames.

        Raises:
            OptimizerError: the event's frames lack a column or are inconsistent.
        """
        steps = getattr(event, "steps", None)
        candidates = getattr(event, "candidates", None)
        if not isinstance(steps, pd.DataFrame) or not isinstance(candidates, pd.DataFrame):
            return
        data = convergence_data(steps, candidates)
        step = getattr(event, "step", None)
        self.data = data
        self.payload = convergence_payload(data, step=int(step) if isinstance(step, int) else None)
        if not self._shown and self._display is not False:
            self._show()

    def _show(self) -> None:
        if callable(self._display):
            self._display(self)
        else:
            from IPython.display import display

            display(self)
        self._shown = True

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        # Displayed by the caller (a cell's last value, display(widget)): it will not display itself again.
        self._shown = True
        return super()._repr_mimebundle_(**kwargs)
