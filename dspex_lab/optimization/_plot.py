"""Convergence plots of an optimization run, static or updated live while the run goes.

Two layers, as in optuna's ``visualization``: :func:`convergence_data` turns the run's ``steps`` and
``candidates`` frames into plain frames, one per panel (pure pandas, testable without a plotting
library), and the ``_draw_*`` functions turn those into holoviews elements. holoviews, bokeh and panel
are imported only inside functions, so ``import dspex_lab`` stays light.

The holoviews plots serve the dashboard and static export. They fetch nothing from outside (bokeh and
panel inline in a notebook, from the dashboard's own server when served), tick the step axis at whole
steps, and draw on a transparent ground with grey text, readable on light and dark pages. In a notebook,
a run's live plot is ``dspex_lab.notebook.LiveConvergenceWidget``: it draws the same frames (from
:func:`convergence_data`) in the widget front end, where updates reach the page while the cell runs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from dspex_lab.errors import MissingDependencyError, OptimizerError

__all__ = ["ConvergenceData", "LiveConvergence", "convergence_data", "convergence_plot", "pareto_plot"]

# Columns each panel reads; the run's frames may carry more (lm_calls, cost, detail, ...).
STEP_COLUMNS = ("step", "incumbent_id", "best_mean", "best_ci_low", "best_ci_high", "lm_calls")
CANDIDATE_COLUMNS = (
    "candidate_id",
    "step",
    "parent_id",
    "strategy",
    "rationale",
    "values",
    "screen_mean",
    "incumbent_screen_mean",
    "val_mean",
    "val_ci_low",
    "val_ci_high",
    "p_adjusted",
    "accepted",
)

# What became of a candidate, in legend order.
OUTCOMES = ("baseline", "accepted", "rejected", "screened only", "not evaluated")

# Screening and full scores of one step are drawn side by side around the step's tick.
_SCREEN_OFFSET = 0.15
_RATIONALE_CHARACTERS = 120
_VALUE_CHARACTERS = 40
# A cell of the variables panel is one step wide: its label is cut shorter than the hover's value.
_LABEL_CHARACTERS = 12
# A string variable longer than this (or with a line break) is text, not a choice: it is not drawn.
_TEXT_CHARACTERS = 60
# The plot area's size, so every panel's axes line up whatever its legend's width.
_FRAME_WIDTH = 600
_FRAME_HEIGHT = 240
# Text, axes and grid lines: a grey that reads on JupyterLab's light and dark grounds alike.
_NEUTRAL = "#8b949e"


@dataclass(frozen=True)
class ConvergenceData:
    """The frames the four convergence panels draw, built by :func:`convergence_data`.

    Attributes:
        best: one row per step: ``step``, ``best_mean``, ``best_ci_low``, ``best_ci_high``,
            ``incumbent_id``, ``lm_calls``.
        candidates: one row per candidate: the run's columns (``rationale`` truncated) plus
            ``outcome`` (one of :data:`OUTCOMES`), ``score`` (validation mean, else screening mean,
            else the parent's score) and ``score_kind`` (which of those it is), ``optimism``
            (screening minus validation mean), and the parent's ``parent_step`` / ``parent_score``.
        edges: one row per candidate with a parent: ``parent_step``, ``parent_score``, ``step``,
            ``score``, ``candidate_id``.
        variables: one row per step and drawn variable: ``step``, ``variable``, ``row`` (the variable's
            position, top first), ``value`` (as shown on hover),
            ``label`` (shortened, printed on the cell),
            ``level`` (0..1 within the variable, so a change shows as a change of colour), ``changed``.
    """

    best: pd.DataFrame
    candidates: pd.DataFrame
    edges: pd.DataFrame
    variables: pd.DataFrame


def _check_frame(frame: object, name: str, columns: tuple[str, ...]) -> pd.DataFrame:
    if not isinstance(frame, pd.DataFrame):
        raise OptimizerError(f"convergence plot: {name} must be a pandas DataFrame, not {type(frame).__name__}")
    if len(frame.columns) == 0 and len(frame) == 0:
        # Nothing recorded yet (a live plot before the baseline): draw empty panels.
        return pd.DataFrame({column: pd.Series(dtype=object) for column in columns})
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise OptimizerError(
            f"convergence plot: the {name} frame has no column {missing[0]!r}"
            + (f" (nor {missing[1:]})" if len(missing) > 1 else "")
            + f"; it needs {list(columns)}"
        )
    return frame


def _numbers(frame: pd.DataFrame, column: str, name: str) -> np.ndarray:
    """Return a column as floats, NaN for None/NA (frames built from JSON carry both)."""
    numbers = []
    for row, value in enumerate(frame[column]):
        if value is None or value is pd.NA:
            numbers.append(math.nan)
            continue
        try:
            numbers.append(float(value))
        except (TypeError, ValueError) as error:
            raise OptimizerError(
                f"convergence plot: the {name} frame's column {column!r} has {value!r} in row {row}; expected a number"
            ) from error
    return np.array(numbers, dtype=float)


def _truncate(text: Any, limit: int) -> str:
    if text is None or (isinstance(text, float) and math.isnan(text)) or text is pd.NA:
        return ""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _outcome(row: pd.Series) -> str:
    if row["strategy"] == "baseline":
        return "baseline"
    if bool(row["accepted"]):
        return "accepted"
    if not math.isnan(row["val_mean"]):
        return "rejected"
    if not math.isnan(row["screen_mean"]):
        return "screened only"
    return "not evaluated"


def _candidate_frame(candidates: pd.DataFrame) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "candidate_id": candidates["candidate_id"].astype(str).tolist(),
            "step": [int(step) for step in candidates["step"]],
            "parent_id": [None if pd.isna(parent) else str(parent) for parent in candidates["parent_id"]],
            "strategy": candidates["strategy"].astype(str).tolist(),
            "rationale": [_truncate(text, _RATIONALE_CHARACTERS) for text in candidates["rationale"]],
            "accepted": [not pd.isna(flag) and bool(flag) for flag in candidates["accepted"]],
        },
        dtype=object,
    )
    for column in ("screen_mean", "incumbent_screen_mean", "val_mean", "val_ci_low", "val_ci_high", "p_adjusted"):
        frame[column] = _numbers(candidates, column, "candidates")
    frame["step"] = frame["step"].astype(int)
    frame["outcome"] = [_outcome(row) for _, row in frame.iterrows()] if len(frame) else []
    frame["optimism"] = frame["screen_mean"] - frame["val_mean"]
    duplicated = frame["candidate_id"][frame["candidate_id"].duplicated()]
    if len(duplicated):
        raise OptimizerError(
            f"convergence plot: candidate {duplicated.iloc[0]!r} appears twice in the candidates frame"
        )
    known = set(frame["candidate_id"])
    for candidate_id, parent_id in zip(frame["candidate_id"], frame["parent_id"], strict=True):
        if parent_id is not None and parent_id not in known:
            raise OptimizerError(
                f"convergence plot: candidate {candidate_id!r} has parent {parent_id!r}, "
                "which is not in the candidates frame"
            )
    return frame


def _place_candidates(frame: pd.DataFrame) -> pd.DataFrame:
    """Give every candidate a score to draw it at: validation, else screening, else its parent's."""
    parents = dict(zip(frame["candidate_id"], frame["parent_id"], strict=True))
    own: dict[str, tuple[float, str]] = {}
    for candidate_id, validation, screening in zip(
        frame["candidate_id"], frame["val_mean"], frame["screen_mean"], strict=True
    ):
        if not math.isnan(validation):
            own[candidate_id] = (validation, "validation")
        elif not math.isnan(screening):
            own[candidate_id] = (screening, "screening")
    scored = [score for score, _ in own.values()]
    floor = min(scored) if scored else 0.0
    scores, kinds = [], []
    for candidate_id in frame["candidate_id"]:
        if candidate_id in own:
            score, kind = own[candidate_id]
        else:
            # An unevaluated candidate sits at its nearest evaluated ancestor's score (parents are
            # checked to exist, and a cycle is cut by the visited set).
            ancestor, visited = parents[candidate_id], {candidate_id}
            while ancestor is not None and ancestor not in own and ancestor not in visited:
                visited.add(ancestor)
                ancestor = parents[ancestor]
            score, kind = (own[ancestor][0] if ancestor in own else floor), "not evaluated"
        scores.append(score)
        kinds.append(kind)
    frame = frame.assign(score=np.array(scores, dtype=float), score_kind=kinds)
    position = dict(zip(frame["candidate_id"], zip(frame["step"], frame["score"], strict=True), strict=True))
    frame["parent_step"] = [
        float(position[parent][0]) if parent is not None else math.nan for parent in frame["parent_id"]
    ]
    frame["parent_score"] = [position[parent][1] if parent is not None else math.nan for parent in frame["parent_id"]]
    return frame


def _values(raw: Any, candidate_id: str) -> Mapping[str, Any]:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as error:
            raise OptimizerError(
                f"convergence plot: candidate {candidate_id!r} has values that are not JSON"
            ) from error
    if not isinstance(raw, Mapping):
        raise OptimizerError(
            f"convergence plot: candidate {candidate_id!r} has values of type {type(raw).__name__}; "
            "expected a dict of variable name -> value"
        )
    return raw


def _variable_kind(name: str, value: Any) -> str:
    """Return how a variable is drawn: ``demos`` (counted), ``rules`` (counted), ``scalar`` or ``other``."""
    base = name.split(":", 1)[0].rsplit(".", 1)[-1]
    if base == "demos" or isinstance(value, list | tuple):
        return "demos"
    if base == "instructions" or (isinstance(value, str) and ("\n" in value or len(value) > _TEXT_CHARACTERS)):
        return "rules"
    if value is None or isinstance(value, bool | int | float | str):
        return "scalar"
    return "other"


def _rules(instructions: Any) -> int:
    """Count the rules appended to instructions: the non-blank lines after the first."""
    lines = [line for line in str(instructions or "").splitlines() if line.strip()]
    return max(len(lines) - 1, 0)


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return _truncate(value, _VALUE_CHARACTERS) if value is not None else "None"


def _label(value: Any) -> str:
    """Return a cell's short label: a dotted path (a module type) by its last part."""
    shown = _shown(value)
    if isinstance(value, str) and "." in value and " " not in value:
        shown = value.rsplit(".", 1)[-1] or shown
    return _truncate(shown, _LABEL_CHARACTERS)


def _variable_frame(best: pd.DataFrame, raw_candidates: pd.DataFrame) -> pd.DataFrame:
    values_by_id = {
        str(candidate_id): raw
        for candidate_id, raw in zip(raw_candidates["candidate_id"], raw_candidates["values"], strict=True)
    }
    rows: dict[str, list[tuple[int, Any]]] = {}
    kinds: dict[str, str] = {}
    for step, incumbent_id in zip(best["step"], best["incumbent_id"], strict=True):
        if incumbent_id not in values_by_id:
            raise OptimizerError(
                f"convergence plot: step {step} names incumbent {incumbent_id!r}, which is not in the candidates frame"
            )
        for name, value in _values(values_by_id[incumbent_id], incumbent_id).items():
            kind = kinds.setdefault(name, _variable_kind(name, value))
            if kind == "demos":
                rows.setdefault(f"{name} (demos)", []).append((step, len(value) if value else 0))
            elif kind == "rules":
                rows.setdefault(f"{name} (rules)", []).append((step, _rules(value)))
            else:
                rows.setdefault(name, []).append((step, value))
    records = []
    for name, trajectory in rows.items():
        values = [value for _, value in trajectory]
        distinct = list(dict.fromkeys(json.dumps(value, sort_keys=True, default=str) for value in values))
        if kinds.get(name) == "other" and len(distinct) == 1:
            continue  # structured values that never change say nothing about convergence
        numeric = all(isinstance(value, int | float) and not isinstance(value, bool) for value in values)
        if numeric:
            low, high = min(values), max(values)
            levels = [0.5 if high == low else (value - low) / (high - low) for value in values]
        else:
            keys = [json.dumps(value, sort_keys=True, default=str) for value in values]
            levels = [0.5 if len(distinct) == 1 else distinct.index(key) / (len(distinct) - 1) for key in keys]
        for index, ((step, value), level) in enumerate(zip(trajectory, levels, strict=True)):
            records.append(
                {
                    "step": int(step),
                    "variable": name,
                    "value": _shown(value),
                    "label": _label(value),
                    "level": float(level),
                    "changed": index > 0 and value != trajectory[index - 1][1],
                }
            )
    frame = pd.DataFrame.from_records(records, columns=["step", "variable", "value", "label", "level", "changed"])
    # A numeric row per variable, named by tick labels: a live plot starts empty, and an axis that starts
    # numeric cannot become categorical when the first variables arrive.
    rows_by_name = {name: row for row, name in enumerate(dict.fromkeys(frame["variable"]))}
    frame.insert(2, "row", [rows_by_name[name] for name in frame["variable"]])
    # Object, not pandas' arrow strings: holoviews reshapes a heat map's columns onto its grid.
    return frame.astype(
        {
            "step": int,
            "variable": object,
            "row": int,
            "value": object,
            "label": object,
            "level": float,
            "changed": bool,
        }
    )


def convergence_data(steps: pd.DataFrame, candidates: pd.DataFrame) -> ConvergenceData:
    """Build the frames the convergence panels draw from a run's steps and candidates.

    Args:
        steps: one row per step (step 0 is the baseline), with at least :data:`STEP_COLUMNS`.
        candidates: one row per candidate, with at least :data:`CANDIDATE_COLUMNS`.

    Returns:
        The per-panel frames; see :class:`ConvergenceData`.

    Raises:
        OptimizerError: a frame is not a DataFrame or lacks a column (the message names it), a
            candidate's parent or a step's incumbent is not among the candidates, or a candidate's
            ``values`` is not a dict.
    """
    steps = _check_frame(steps, "steps", STEP_COLUMNS)
    candidates = _check_frame(candidates, "candidates", CANDIDATE_COLUMNS)
    best = pd.DataFrame(
        {
            "step": np.array([int(step) for step in steps["step"]], dtype=int),
            "best_mean": _numbers(steps, "best_mean", "steps"),
            "best_ci_low": _numbers(steps, "best_ci_low", "steps"),
            "best_ci_high": _numbers(steps, "best_ci_high", "steps"),
            "incumbent_id": pd.Series([str(value) for value in steps["incumbent_id"]], dtype=object),
            "lm_calls": _numbers(steps, "lm_calls", "steps"),
        }
    )
    best = best.sort_values("step", kind="stable").reset_index(drop=True)
    placed = _place_candidates(_candidate_frame(candidates))
    with_parent = placed[placed["parent_id"].notna()]
    edges = pd.DataFrame(
        {
            "parent_step": with_parent["parent_step"].astype(float),
            "parent_score": with_parent["parent_score"].astype(float),
            "step": with_parent["step"].astype(float),
            "score": with_parent["score"].astype(float),
            "candidate_id": with_parent["candidate_id"].astype(object),
        }
    ).reset_index(drop=True)
    return ConvergenceData(best=best, candidates=placed, edges=edges, variables=_variable_frame(best, candidates))


def _holoviews() -> Any:
    """Import holoviews with its bokeh backend loaded (once), or say which extra to install."""
    try:
        import holoviews as hv
    except ImportError as error:  # pragma: no cover - exercised only without the dashboard extra
        raise MissingDependencyError("holoviews", "dashboard") from error
    if "bokeh" not in hv.Store.renderers:
        # In a notebook this also loads bokeh's JavaScript, so the returned plot displays as is: inline, from
        # the installed bokeh, never from a CDN (a cluster without internet would show nothing). Panel draws
        # holoviews in a notebook; inline there makes it embed its stylesheets too instead of linking its CDN.
        import panel as pn

        pn.config.inline = True
        hv.extension("bokeh", logo=False, inline=True)
    return hv


def _whole_steps() -> Any:
    """Return a bokeh ticker that puts the step axis's ticks on whole steps only (never -0.5 or 0.5)."""
    from bokeh.models import BasicTicker

    return BasicTicker(min_interval=1, num_minor_ticks=0)


def follow_theme(plot: Any, element: Any) -> None:
    """Draw on a transparent ground with mid-grey text, readable on a light and a dark page alike.

    A bokeh canvas cannot read the page's CSS variables, so instead of a white block it takes the page's
    own background (the notebook's or the dashboard's, light or dark) and text that contrasts with both.
    A holoviews plot hook: ``element.opts(hooks=[follow_theme])``.
    """
    figure = plot.state
    figure.background_fill_alpha = 0.0
    figure.border_fill_alpha = 0.0
    figure.outline_line_color = _NEUTRAL
    figure.title.text_color = _NEUTRAL
    for axis in [*figure.xaxis, *figure.yaxis]:
        axis.axis_label_text_color = axis.major_label_text_color = _NEUTRAL
        axis.axis_line_color = axis.major_tick_line_color = axis.minor_tick_line_color = _NEUTRAL
    for grid in [*figure.xgrid, *figure.ygrid]:
        grid.grid_line_color = _NEUTRAL
        grid.grid_line_alpha = 0.25
    for legend in figure.legend:
        legend.background_fill_alpha = 0.0
        legend.border_line_alpha = 0.0
        legend.label_text_color = _NEUTRAL
        legend.inactive_fill_alpha = 0.0


def _panel(hv: Any, data: ConvergenceData, layers: list[Any], title: str, ylabel: str, **layer_options: Any) -> Any:
    """Overlay one panel's layers on the run's step axis, with its title, labels and legend."""
    # Every panel spans the same steps (half a step of margin), so they read as one timeline. Ranges are
    # options of each layer, not of the overlay: only there does a live redraw recompute them
    # (framewise) instead of keeping the first, empty, frame's.
    last_step = max([0, *data.best["step"], *data.candidates["step"]])
    layers = [layer.opts(framewise=True, xlim=(-0.5, last_step + 0.5), **layer_options) for layer in layers]
    return hv.Overlay(layers).opts(
        title=title,
        xlabel="step",
        ylabel=ylabel,
        frame_width=_FRAME_WIDTH,
        frame_height=_FRAME_HEIGHT,
        # Outside the axes, so the legend never hides a point; clicking an entry hides its layer.
        legend_position="right",
        legend_opts={"click_policy": "hide"},
        show_grid=True,
        xticks=_whole_steps(),
        hooks=[follow_theme],
    )


def _outcome_points(hv: Any, frame: pd.DataFrame, y: str, outcome: str, hover: list[str], **style: Any) -> Any:
    rows = frame[frame["outcome"] == outcome]
    vdims = [y, *[column for column in hover if column != y]]
    return hv.Scatter(rows, "step", vdims, label=outcome).opts(tools=["hover"], **style)


_OUTCOME_MARKERS = {
    "baseline": "square",
    "accepted": "star",
    "rejected": "x",
    "screened only": "triangle",
    "not evaluated": "circle",
}


def _draw_best(data: ConvergenceData) -> Any:
    hv = _holoviews()
    best = data.best
    band = hv.Area(best, "step", ["best_ci_low", "best_ci_high"], label="incumbent CI").opts(alpha=0.25)
    line = hv.Curve(best, "step", ["best_mean", "incumbent_id", "lm_calls"], label="incumbent (validation mean)").opts(
        tools=["hover"], line_width=2
    )
    hover = ["candidate_id", "strategy", "val_ci_low", "val_ci_high", "p_adjusted"]
    points = [
        _outcome_points(hv, data.candidates, "val_mean", outcome, hover, marker=_OUTCOME_MARKERS[outcome], size=12)
        for outcome in ("accepted", "rejected")
    ]
    return _panel(hv, data, [band, line, *points], "Best so far (validation set, with CI)", "validation mean score")


def _draw_screening(data: ConvergenceData) -> Any:
    hv = _holoviews()
    frame = data.candidates.assign(
        screen_x=data.candidates["step"] - _SCREEN_OFFSET, full_x=data.candidates["step"] + _SCREEN_OFFSET
    )
    screened = frame[frame["screen_mean"].notna()]
    full = frame[frame["val_mean"].notna()]
    both = frame[frame["screen_mean"].notna() & frame["val_mean"].notna()]
    hover = ["candidate_id", "strategy", "screen_mean", "val_mean", "optimism"]
    links = hv.Segments(
        both, ["screen_x", "screen_mean", "full_x", "val_mean"], ["candidate_id", "optimism"], label="same candidate"
    ).opts(alpha=0.4, tools=["hover"])
    incumbent = hv.Scatter(
        screened[screened["incumbent_screen_mean"].notna()],
        "screen_x",
        ["incumbent_screen_mean", "candidate_id"],
        label="incumbent on the same mini-batch",
    ).opts(marker="dash", size=14, tools=["hover"])
    screen = hv.Scatter(
        screened, "screen_x", ["screen_mean", *[c for c in hover if c != "screen_mean"]], label="screening (mini-batch)"
    ).opts(marker="circle", size=8, tools=["hover"])
    validation = hv.Scatter(
        full, "full_x", ["val_mean", *[c for c in hover if c != "val_mean"]], label="full (validation set)"
    ).opts(marker="square", size=8, tools=["hover"])
    layers = [links, incumbent, screen, validation]
    return _panel(hv, data, layers, "Screening vs full evaluation per step", "mean score")


def _draw_lineage(data: ConvergenceData) -> Any:
    hv = _holoviews()
    edges = hv.Segments(
        data.edges, ["parent_step", "parent_score", "step", "score"], ["candidate_id"], label="parent → child"
    ).opts(alpha=0.5, tools=["hover"])
    hover = ["candidate_id", "strategy", "rationale", "score_kind"]
    points = [
        _outcome_points(
            hv,
            data.candidates,
            "score",
            outcome,
            hover,
            marker=_OUTCOME_MARKERS[outcome],
            size=16 if outcome == "accepted" else 9,
        )
        for outcome in OUTCOMES
    ]
    return _panel(hv, data, [edges, *points], "Lineage (validation score, else screening)", "mean score")


def _draw_variables(data: ConvergenceData) -> Any:
    hv = _holoviews()
    # A diverging map, translucent: an unchanging variable sits at its neutral middle, and the
    # value printed on each cell stays readable on light and dark themes.
    variables = data.variables
    cells = hv.HeatMap(variables, ["step", "row"], ["level", "variable", "value", "changed"]).opts(
        cmap="coolwarm", clim=(0.0, 1.0), alpha=0.35, colorbar=False, tools=["hover"]
    )
    labels = hv.Labels(variables, ["step", "row"], "label").opts(text_font_size="8pt")
    ticks = list(dict.fromkeys(zip(variables["row"].tolist(), variables["variable"].tolist(), strict=True)))
    title = "Incumbent's variables per step (colour = value)"
    panel = _panel(
        hv,
        data,
        [cells, labels],
        title,
        "",
        yticks=ticks or [(0, "")],
        ylim=(-0.5, max(len(ticks), 1) - 0.5),
        invert_yaxis=True,
    )
    return panel.opts(show_legend=False)


_PANELS = (_draw_best, _draw_screening, _draw_lineage, _draw_variables)


def _arrange(hv: Any, panels: list[Any], title: str | None) -> Any:
    # One column: each panel keeps a wide plot area with its legend beside it.
    layout = hv.Layout(panels).cols(1)
    return _displayed_offline(layout.opts(title=title) if title else layout)


def _displayed_offline(layout: Any) -> Any:
    """Make a notebook cell draw ``layout`` through panel's own pane, so nothing is fetched from a CDN.

    holoviews draws a cell through panel, but links panel's stylesheets on panel's CDN whatever the
    settings (holoviews 1.23, panel 1.9: its renderer skips panel's inline step); panel's own pane embeds
    them when ``panel.config.inline`` is set, which :func:`_holoviews` does. The layout stays a plain
    holoviews ``Layout`` for everything else (``hv.render``, ``hv.save``, a dashboard pane).
    """

    def _repr_mimebundle_(include: Any = None, exclude: Any = None) -> Any:
        import panel as pn

        return pn.pane.HoloViews(layout)._repr_mimebundle_(include, exclude)

    layout._repr_mimebundle_ = _repr_mimebundle_
    return layout


def convergence_plot(steps: pd.DataFrame, candidates: pd.DataFrame, *, title: str | None = None) -> Any:
    """Draw an optimization run's convergence as four linked panels.

    The panels: (a) the incumbent's validation mean per step with its CI band, accepted candidates
    and rejected fully-evaluated ones marked; (b) each candidate's screening (mini-batch) mean next
    to its full validation mean, with the incumbent's mean on the same mini-batch, so screening's
    optimism shows; (c) the lineage tree, candidates at (step, score) with parent → child edges,
    strategy and rationale on hover; (d) the incumbent's variables per step (numbers and choices;
    instructions and demos as their count of rules and demos).

    Args:
        steps: the run's steps frame (``OptimizationResult.steps``).
        candidates: the run's candidates frame (``OptimizationResult.candidates``).
        title: a title above the panels.

    Returns:
        A holoviews ``Layout`` for the bokeh backend (displays in a notebook;
        ``holoviews.render(layout, backend="bokeh")`` gives the bokeh model).

    Raises:
        OptimizerError: a frame lacks a column or is inconsistent (see :func:`convergence_data`).
        MissingDependencyError: holoviews is not installed.
    """
    data = convergence_data(steps, candidates)
    hv = _holoviews()
    return _arrange(hv, [draw(data) for draw in _PANELS], title)


def pareto_plot(points: pd.DataFrame, *, title: str | None = None) -> Any:
    """Draw the quality-vs-cost points of a run (``OptimizationResult.pareto()``), the front joined by a line.

    Each point has its 95% interval both ways (quality: the score interval; cost per example:
    Student t); the front's points are stars, the others circles, and the best is ringed.
    Candidate, strategy, p95 latency and n show on hover. Points of unknown cost are not drawn.

    Args:
        points: the frame of :func:`~dspex_lab.optimization._pareto.pareto_points`.
        title: the plot's title.

    Returns:
        A holoviews ``Overlay`` for the bokeh backend, drawn offline in a notebook (nothing from a CDN).

    Raises:
        OptimizerError: ``points`` lacks a column of the Pareto frame.
        MissingDependencyError: holoviews is not installed.
    """
    from dspex_lab.optimization._pareto import PARETO_COLUMNS

    frame = _check_frame(points, "points", PARETO_COLUMNS)
    frame = frame[frame["cost"].notna() & frame["quality"].notna()].copy()
    hv = _holoviews()
    hover = ["candidate_id", "strategy", "quality_ci_low", "quality_ci_high", "cost_ci_low", "cost_ci_high",
             "latency_p95", "n"]  # fmt: skip
    frame["quality_error"] = (frame["quality_ci_high"] - frame["quality_ci_low"]).fillna(0.0) / 2
    frame["cost_error"] = (frame["cost_ci_high"] - frame["cost_ci_low"]).fillna(0.0) / 2
    front = frame[frame["on_front"].astype(bool)].sort_values("cost")
    layers = [
        hv.ErrorBars(frame, "cost", ["quality", "quality_error"], label="95% CI").opts(alpha=0.5),
        hv.ErrorBars(frame, "cost", ["quality", "cost_error"], horizontal=True).opts(alpha=0.5),
        hv.Curve(front, "cost", ["quality", "candidate_id"], label="Pareto front").opts(interpolation="steps-post"),
        hv.Scatter(front, "cost", ["quality", *hover], label="on the front").opts(
            marker="star", size=14, tools=["hover"]
        ),
        hv.Scatter(frame[~frame["on_front"].astype(bool)], "cost", ["quality", *hover], label="dominated").opts(
            marker="circle", size=8, tools=["hover"]
        ),
        hv.Scatter(frame[frame["best"].astype(bool)], "cost", ["quality", *hover], label="best").opts(
            marker="circle", size=20, fill_alpha=0.0, line_width=2, tools=["hover"]
        ),
        hv.Labels(frame, ["cost", "quality"], "candidate_id").opts(text_font_size="8pt", yoffset=0.01),
    ]
    overlay = hv.Overlay(layers).opts(
        title=title or "Quality vs cost per example (validation set)",
        xlabel="cost per example (US dollars)",
        ylabel="validation mean score",
        frame_width=_FRAME_WIDTH,
        frame_height=_FRAME_HEIGHT,
        legend_position="right",
        legend_opts={"click_policy": "hide"},
        show_grid=True,
        hooks=[follow_theme],
    )
    return _displayed_offline(overlay)


def _empty_data() -> ConvergenceData:
    empty = pd.DataFrame()
    return convergence_data(empty, empty)


class LiveConvergence:
    """A convergence plot that redraws on every optimization event it is called with.

    Pass it as a subscriber to an optimization run: called with any object that has ``steps`` and
    ``candidates`` DataFrame attributes, it sends the new frames through a holoviews ``Pipe``, so the
    panel pane from :meth:`view` (a served dashboard) updates in place while the run goes. Other objects
    are ignored. In a notebook use ``dspex_lab.notebook.LiveConvergenceWidget`` (what ``%dspex optimize
    --live`` shows): a bokeh plot in a cell receives its updates only once the busy cell ends.

    Calls are expected from one thread at a time (the run's event loop); display happens in the
    notebook's thread.

    Attributes:
        pipe: the holoviews stream the panels redraw from; its ``data`` is the latest
            :class:`ConvergenceData`.
        layout: the holoviews layout of the four live panels (what the notebook displays).
    """

    def __init__(self, *, title: str | None = None) -> None:
        hv = _holoviews()
        self._steps = pd.DataFrame()
        self._candidates = pd.DataFrame()
        self.pipe = hv.streams.Pipe(data=_empty_data())
        self.layout = _arrange(hv, [hv.DynamicMap(draw, streams=[self.pipe]) for draw in _PANELS], title)

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
        self._steps, self._candidates = steps, candidates
        self.pipe.send(data)

    @property
    def steps(self) -> pd.DataFrame:
        """The steps frame of the latest event (empty before the first)."""
        return self._steps

    @property
    def candidates(self) -> pd.DataFrame:
        """The candidates frame of the latest event (empty before the first)."""
        return self._candidates

    @property
    def data(self) -> ConvergenceData:
        """The panels' frames built from the latest event."""
        data: ConvergenceData = self.pipe.data
        return data

    def view(self) -> Any:
        """Return a panel pane of the live plot, for a dashboard or ``.servable()``.

        Raises:
            MissingDependencyError: panel is not installed.
        """
        try:
            import panel as pn
        except ImportError as error:  # pragma: no cover - exercised only without the dashboard extra
            raise MissingDependencyError("panel", "dashboard") from error
        return pn.pane.HoloViews(self.layout)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> Any:
        return self.layout._repr_mimebundle_(include, exclude)
