"""The dashboard optimization page's history, timeline, importance and Pareto front: each figure's frames, then drawing.

Two layers, as the convergence plots (:mod:`dspex_lab.optimization`): :func:`history_data` and
:func:`timeline_frame` build plain frames from the run's steps and candidates and from the journal's
:meth:`~dspex_lab.journal.JournalReader.child_timeline` (testable without a plotting library);
:func:`history_plot` and :func:`timeline_plot` draw them with holoviews' bokeh backend.

The history is every candidate's score per step (its mini-batch screening and its validation mean, told
apart), the incumbent's best-so-far validation mean with its interval, and the baseline as a reference
line; hovering a point names the candidate and its variables' values. The timeline is the run's nested
evaluations (baseline, screening, validation, confirmation...) as bars over wall-clock time, coloured by
what became of them, so a researcher sees where the time went. The importance is ``result.importance()``
drawn as a forest plot: each estimable contrast's effect on the metric with its interval, around a zero
line (:func:`importance_data` builds its rows, :func:`importance_plot` draws them). The Pareto tab is
``result.pareto()`` drawn by :func:`~dspex_lab.optimization.pareto_plot` (quality against cost per example,
both intervals, the front joined and the best ringed) under :func:`pareto_note`. All draw on a
transparent ground with grey text (readable on a light and a dark page) and fetch nothing from outside:
the served dashboard gives bokeh's JavaScript from its own server.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from dspex_lab.journal import JournalReader

__all__ = [
    "HISTORY_COLUMNS",
    "IMPORTANCE_PLOT_COLUMNS",
    "TIMELINE_COLUMNS",
    "TIMELINE_OUTCOMES",
    "OptimizationHistory",
    "compile_run_note",
    "history_data",
    "history_plot",
    "importance_data",
    "importance_plot",
    "is_compile_run",
    "pareto_note",
    "timeline_frame",
    "timeline_note",
    "timeline_plot",
    "variables_text",
]

# One row per score a candidate got: its screening (mini-batch) mean and its validation mean.
HISTORY_COLUMNS = (
    "candidate_id", "step", "x", "kind", "score", "ci_low", "ci_high", "outcome", "strategy", "variables",
)  # fmt: skip
# One row per evaluation nested in the run, oldest first.
TIMELINE_COLUMNS = (
    "experiment_id", "row", "label", "role", "candidate", "outcome", "status", "start", "end", "seconds",
    "duration", "n_trials", "n_errors", "mean",
)  # fmt: skip
# One row per estimable contrast of result.importance(), top to bottom in the table's order.
IMPORTANCE_PLOT_COLUMNS = ("row", "label", "effect", "ci_low", "ci_high", "share", "candidates")
# What a timeline bar's colour says, in legend order, with the colour (readable on light and dark grounds).
TIMELINE_OUTCOMES = {
    "baseline": "#4a90d9",
    "accepted": "#2ca02c",
    "rejected": "#e07b39",
    "screened only": "#9aa5b1",
    "confirmation": "#9467bd",
    "other": "#17becf",
    "running": "#d4b106",
    "interrupted": "#b9770e",
    "failed": "#c0392b",
}
# A candidate's screening and validation points are drawn this far either side of its step's tick.
_SCREEN_OFFSET = 0.15
_VARIABLE_CHARACTERS = 40
_VARIABLES_CHARACTERS = 400
# The timeline names each bar on the axis up to this many bars; past it only the hover names them.
_LABELLED_BARS = 60
_BAR_HEIGHT = 14
_FRAME_WIDTH = 600
_FRAME_HEIGHT = 260
# Text, axes and grid lines: the convergence plots' grey, which reads on light and dark grounds alike.
_NEUTRAL = "#8b949e"


@dataclass(frozen=True)
class OptimizationHistory:
    """What the history figure draws, built by :func:`history_data`.

    Attributes:
        points: one row per score a candidate got (:data:`HISTORY_COLUMNS`): ``kind`` is ``screening``
            (its mini-batch mean) or ``validation`` (its validation mean, with its interval), ``x`` its
            step moved a little left (screening) or right (validation), ``outcome`` what became of it
            (as the convergence plots say) and ``variables`` its variables' values as one line.
        best: the incumbent per step: ``step``, ``best_mean``, ``best_ci_low``, ``best_ci_high``,
            ``incumbent_id``, ``lm_calls``.
        baseline: the baseline's validation mean (step 0's best), NaN before it is known.
    """

    points: pd.DataFrame
    best: pd.DataFrame
    baseline: float


def _shown(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:.3g}"
    elif isinstance(value, list | tuple):
        text = f"{len(value)} item{'' if len(value) == 1 else 's'}"
    elif isinstance(value, str):
        text = " ".join(value.split())
    else:
        text = json.dumps(value, default=str)
    return text if len(text) <= _VARIABLE_CHARACTERS else text[: _VARIABLE_CHARACTERS - 1] + "…"


def variables_text(values: Any) -> str:
    """Return a candidate's variables as one line, ``name=value; ...`` (long texts and lists shortened)."""
    if isinstance(values, str):
        try:
            values = json.loads(values)
        except json.JSONDecodeError:
            return values[:_VARIABLES_CHARACTERS]
    if not isinstance(values, Mapping):
        return ""
    text = "; ".join(f"{name}={_shown(value)}" for name, value in values.items())
    return text if len(text) <= _VARIABLES_CHARACTERS else text[: _VARIABLES_CHARACTERS - 1] + "…"


def history_data(steps: pd.DataFrame, candidates: pd.DataFrame) -> OptimizationHistory:
    """Build the history figure's frames from a run's steps and candidates (``OptimizationResult``'s).

    Raises:
        OptimizerError: a frame lacks a column or is inconsistent (see
            :func:`~dspex_lab.optimization.convergence_data`).
    """
    from dspex_lab.optimization import convergence_data

    data = convergence_data(steps, candidates)
    placed = data.candidates
    variables = {
        str(candidate_id): variables_text(values)
        for candidate_id, values in zip(candidates.get("candidate_id", []), candidates.get("values", []), strict=True)
    }
    rows = []
    for row in placed.to_dict("records"):
        for kind, column, offset in (
            ("screening", "screen_mean", -_SCREEN_OFFSET),
            ("validation", "val_mean", _SCREEN_OFFSET),
        ):
            if math.isnan(row[column]):
                continue
            validation = kind == "validation"
            rows.append(
                {
                    "candidate_id": row["candidate_id"],
                    "step": int(row["step"]),
                    "x": row["step"] + offset,
                    "kind": kind,
                    "score": float(row[column]),
                    "ci_low": float(row["val_ci_low"]) if validation else math.nan,
                    "ci_high": float(row["val_ci_high"]) if validation else math.nan,
                    "outcome": row["outcome"],
                    "strategy": row["strategy"],
                    "variables": variables.get(row["candidate_id"], ""),
                }
            )
    points = pd.DataFrame(rows, columns=list(HISTORY_COLUMNS)).astype({"x": float, "score": float})
    first = data.best[data.best["step"] == 0]["best_mean"]
    baseline = float(first.iloc[0]) if len(first) else math.nan
    return OptimizationHistory(points=points, best=data.best, baseline=baseline)


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _still_running(row: Mapping[str, Any]) -> bool:
    # A run ends its children when it ends: a child reads "running" after its last trial until then, so one
    # is still running only while its trials are fewer than it planned (or it has none yet).
    planned = row["n_planned"]
    return row["status"] == "running" and (not row["n_trials"] or (planned is not None and row["n_trials"] < planned))


def _bar_name(row: Mapping[str, Any]) -> str:
    return str(row.get("name") or row["role"] or row["experiment_id"])


def _bar_outcome(row: Mapping[str, Any], outcomes: Mapping[str, str]) -> str:
    """Say what a bar's colour is: how it ended if not well, else its role, else its candidate's fate."""
    status = row["status"]
    if status == "failed" or _still_running(row):
        return "running" if status == "running" else "failed"
    if status in ("interrupted", "cancelled"):
        return "interrupted"
    if row["role"] in ("baseline", "confirmation"):
        return str(row["role"])
    outcome = outcomes.get(str(row["candidate"]))
    return outcome if outcome in ("baseline", "accepted", "rejected", "screened only") else "other"


def timeline_frame(
    journal: JournalReader, run_id: str, candidates: pd.DataFrame | None = None, *, now: Any = None
) -> pd.DataFrame:
    """Return the timeline's bars: one row per evaluation nested in ``run_id``, oldest first.

    Each bar runs from the evaluation's first trial's start to its last trial's end (the journal's
    ``child_timeline``); one without a trial runs from its record's creation to its end or last write,
    and one still running to ``now`` (UTC, naive). ``outcome`` (a key of :data:`TIMELINE_OUTCOMES`) is
    ``failed``, ``interrupted`` or ``running`` for one that did not finish well, ``baseline`` or
    ``confirmation`` for those roles, else what became of its candidate in ``candidates`` (the run's
    candidates frame): ``baseline`` (the incumbent's own screening), ``accepted``, ``rejected`` or
    ``screened only``; ``other`` without one (an exploration, a DSPy compile).
    """
    from dspex_lab.optimization import convergence_data

    outcomes: dict[str, str] = {}
    if candidates is not None and len(candidates):
        placed = convergence_data(pd.DataFrame(), candidates).candidates
        outcomes = dict(zip(placed["candidate_id"], placed["outcome"], strict=True))
    moment = pd.Timestamp(now) if now is not None else pd.Timestamp.now(tz="UTC").tz_localize(None)
    rows = []
    for position, child in enumerate(journal.child_timeline(run_id)):
        start = pd.Timestamp(child["first_trial_at"] or child["started_at"])
        ended = child["last_trial_at"] or child["finished_at"] or child["last_seen_at"]
        end = max(pd.Timestamp(moment if _still_running(child) else ended), start)
        seconds = (end - start).total_seconds()
        candidate = child["candidate"] or ""
        mean = child["mean_score"]
        rows.append(
            {
                "experiment_id": child["experiment_id"],
                "row": position,
                # A bar without a candidate (a DSPy compile's own evaluation) is named as its experiment is.
                "label": f"{candidate} {child['role'] or ''}".strip() if candidate else _bar_name(child),
                "role": child["role"] or "",
                "candidate": candidate,
                "outcome": _bar_outcome(child, outcomes),
                "status": child["status"],
                "start": start,
                "end": end,
                "seconds": seconds,
                "duration": _duration(seconds),
                "n_trials": int(child["n_trials"]),
                "n_errors": int(child["n_errors"]),
                "mean": math.nan if mean is None else float(mean),
            }
        )
    frame = pd.DataFrame(rows, columns=list(TIMELINE_COLUMNS))
    return frame.astype({"start": "datetime64[ns]", "end": "datetime64[ns]", "seconds": float, "mean": float})


def timeline_note(frame: pd.DataFrame) -> str:
    """Say where a run's time went, as HTML: its evaluations' span of wall-clock time and each role's time.

    The element carries ``data-bars`` (how many bars the timeline draws), so a test can read it.
    """
    if frame.empty:
        return '<div class="dspex-timeline-note" data-bars="0">No evaluation nested in this run yet.</div>'
    wall = (frame["end"].max() - frame["start"].min()).total_seconds()
    # Evaluations may overlap, so each role's share is of the evaluations' summed time, not of the wall clock.
    by_role = frame.groupby("role", sort=False)["seconds"].sum().sort_values(ascending=False)
    busy = float(by_role.sum())
    shares = ", ".join(
        f"{role or 'other'} {_duration(seconds)}" + (f" ({seconds / busy:.0%})" if busy > 0 else "")
        for role, seconds in by_role.items()
    )
    count = len(frame)
    first = frame["start"].min().strftime("%Y-%m-%d %H:%M:%S")
    return (
        f'<div class="dspex-timeline-note" data-bars="{count}">{count} evaluation{"" if count == 1 else "s"} '
        f"from {first} UTC over {_duration(wall)} of wall-clock time · evaluation time by role: {shares}</div>"
    )


def importance_data(frame: pd.DataFrame) -> pd.DataFrame:
    """Return the importance plot's rows: each estimable contrast of ``frame`` (``result.importance()``), in order.

    ``label`` is ``variable: contrast``; a contrast that is not estimable has no point to draw (the table
    under the plot says why).
    """
    rows = [
        {
            "row": position,
            "label": f"{row['variable']}: {row['contrast']}",
            "effect": float(row["effect"]),
            "ci_low": float(row["ci_low"]),
            "ci_high": float(row["ci_high"]),
            "share": float(row["share"]),
            "candidates": int(row["candidates"]),
        }
        for position, row in enumerate(item for item in frame.to_dict("records") if item["estimable"])
    ]
    return pd.DataFrame(rows, columns=list(IMPORTANCE_PLOT_COLUMNS))


def is_compile_run(record: Mapping[str, Any]) -> bool:
    """Tell whether an experiment record is a DSPy ``compile`` journaled by ``dx.autolog()``."""
    return record.get("kind") == "optimization" and (record.get("config") or {}).get("autolog") is True


def compile_run_note(record: Mapping[str, Any], timeline: pd.DataFrame) -> str:
    """Say, as Markdown, what the page can draw of a DSPy compile journaled by ``dx.autolog()``.

    Such a run holds what DSPy's ``compile`` announces through its callbacks: the ``dspy.Evaluate``
    runs it makes and the metric calls of its optimizer, each an evaluation nested under it. DSPy
    does not say which program an evaluation scored, so the run has no steps and no candidates:
    nothing to draw a history, a why table, importance or a Pareto front from. The page draws its
    timeline (``timeline``, the run's :func:`timeline_frame`) and says why there is nothing more.
    """
    config = record.get("config") or {}
    count = len(timeline)
    nested = f"{count} evaluation{'' if count == 1 else 's'} nested in it"
    best = (record.get("summary") or {}).get("best_evaluation_mean")
    if isinstance(best, (int, float)) and math.isfinite(best):
        nested += f"; its best dspy.Evaluate run scored {best:.3f}"
    bridged = config.get("optimizer") not in (None, config.get("dspy"))
    instead = (
        f' `dx.optimize(..., optimizer="{html.escape(str(config["optimizer"]))}")` records each candidate and step.'
        if bridged
        else ""
    )
    return (
        f"**{html.escape(str(record.get('name') or ''))}, journaled by `dx.autolog()`:** DSPy's "
        f"`{html.escape(str(config.get('dspy') or 'optimizer'))}.compile` announces the evaluations and metric "
        f"calls it makes ({nested}; see the Timeline tab), not which program each one scored, so the run has no "
        "steps or candidates: no history, why table, importance or Pareto front to draw. Open an evaluation on "
        "the trace page for its trials and traces." + instead
    )


def pareto_note(points: pd.DataFrame) -> str:
    """Say, as HTML, what the Pareto tab draws: how many candidates are on the front, and where the best is.

    The element carries ``data-points`` (points with a known cost, the ones drawn) and ``data-front``, so a
    test can read them.
    """
    from dspex_lab.optimization import pareto_text

    known = points[points["cost"].notna() & points["quality"].notna()] if len(points) else points
    front = int(points["on_front"].astype(bool).sum()) if len(points) else 0
    if front:
        best = points[points["best"].astype(bool)]
        where = (
            f"the best, {best.iloc[0]['candidate_id']}, is {'on' if bool(best.iloc[0]['on_front']) else 'off'} it"
            if len(best)
            else "the best was not evaluated on the valset"
        )
        said = (
            f"{front} of {len(points)} candidates evaluated on the valset are on the front (no other scores at "
            f"least as well for at most their cost); {where}. Validation means are selection data; each interval "
            "is 95%: the score's, and a t interval of the cost per example."
        )
    else:
        said = pareto_text(points)  # why there is no front: nothing evaluated yet, or an unpriced model
    return f'<div class="dspex-pareto-note" data-points="{len(known)}" data-front="{front}">{html.escape(said)}</div>'


# -- drawing ----------------------------------------------------------------------------------------------


def _holoviews() -> Any:
    from dspex_lab.notebook._dashboard import _holoviews as loaded

    return loaded()


def history_plot(history: OptimizationHistory) -> Any:
    """Draw the history: each candidate's screening and validation scores per step, the best so far, the baseline."""
    from bokeh.models import BasicTicker

    from dspex_lab.optimization import follow_theme

    hv = _holoviews()
    best = history.best
    hover = ["candidate_id", "step", "outcome", "strategy", "variables"]
    points = history.points
    layers = [
        hv.Area(best, "step", ["best_ci_low", "best_ci_high"], label="best so far: interval").opts(alpha=0.2),
        hv.Curve(best, "step", ["best_mean", "incumbent_id"], label="best so far (validation mean)").opts(
            line_width=2, tools=["hover"]
        ),
        hv.Scatter(
            points[points["kind"] == "screening"], "x", ["score", *hover], label="screening (mini-batch mean)"
        ).opts(marker="triangle", size=9, alpha=0.7, tools=["hover"]),
        hv.Scatter(
            points[points["kind"] == "validation"], "x", ["score", *hover, "ci_low", "ci_high"],
            label="validation (mean)",
        ).opts(marker="circle", size=10, tools=["hover"]),
    ]  # fmt: skip
    last_step = int(max([0, *best["step"], *points["step"]]))
    if not math.isnan(history.baseline):
        # A line across the axis, not an HLine: only an element with data gets a legend entry.
        across = [(-0.5, history.baseline), (last_step + 0.5, history.baseline)]
        baseline = hv.Curve(across, "step", "baseline", label="baseline (validation mean)")
        layers.append(baseline.opts(color=_NEUTRAL, line_dash="dashed"))
    layers = [layer.opts(xlim=(-0.5, last_step + 0.5)) for layer in layers]
    return hv.Overlay(layers).opts(
        title="History: every candidate's score per step",
        xlabel="step",
        ylabel="mean score",
        frame_width=_FRAME_WIDTH,
        frame_height=_FRAME_HEIGHT,
        legend_position="right",
        legend_opts={"click_policy": "hide"},
        show_grid=True,
        xticks=BasicTicker(min_interval=1, num_minor_ticks=0),  # whole steps only
        hooks=[follow_theme],
    )


def timeline_plot(frame: pd.DataFrame) -> Any:
    """Draw the timeline: one bar per nested evaluation over wall-clock time, coloured by its outcome."""
    from dspex_lab.optimization import follow_theme

    hv = _holoviews()
    bars = frame.assign(low=frame["row"] - 0.38, high=frame["row"] + 0.38)
    hover = ["label", "outcome", "status", "candidate", "n_trials", "n_errors", "mean", "duration", "experiment_id"]
    layers = [
        hv.Rectangles(bars[bars["outcome"] == outcome], ["start", "low", "end", "high"], hover, label=outcome).opts(
            color=colour, line_color=colour, line_width=1, tools=["hover"]
        )
        for outcome, colour in TIMELINE_OUTCOMES.items()
        if (bars["outcome"] == outcome).any()
    ]
    count = len(frame)
    ticks = list(zip(frame["row"], frame["label"], strict=True)) if count <= _LABELLED_BARS else []
    return hv.Overlay(layers or [hv.Rectangles([], ["start", "low", "end", "high"])]).opts(
        title="Timeline: each evaluation of the run over wall-clock time",
        xlabel="time (UTC)",
        ylabel="",
        yticks=ticks or [(0, "")],
        ylim=(-0.5, max(count, 1) - 0.5),
        invert_yaxis=True,
        frame_width=_FRAME_WIDTH,
        frame_height=max(_FRAME_HEIGHT // 2, min(_BAR_HEIGHT * count, 4 * _FRAME_HEIGHT)),
        legend_position="right",
        legend_opts={"click_policy": "hide"},
        show_grid=True,
        hooks=[follow_theme],
    )


def importance_plot(data: pd.DataFrame, *, confidence: float = 0.95) -> Any:
    """Draw which variables mattered: each contrast's effect on the metric with its interval, and zero."""
    from dspex_lab.optimization import follow_theme

    hv = _holoviews()
    hover = ["label", "ci_low", "ci_high", "share", "candidates"]
    count = len(data)
    layers = [
        hv.VLine(0).opts(color=_NEUTRAL, line_dash="dashed", line_width=1),
        hv.Segments(data, ["ci_low", "row", "ci_high", "row"], hover, label=f"{confidence:.0%} interval").opts(
            color="#4a90d9", line_width=3, tools=["hover"]
        ),
        hv.Scatter(data, "effect", ["row", *hover], label="effect").opts(color="#2ca02c", size=10, tools=["hover"]),
    ]
    return hv.Overlay(layers).opts(
        title="Which variables mattered: effect on the metric",
        xlabel="effect on the mean score (other variables held fixed)",
        ylabel="",
        yticks=list(zip(data["row"], data["label"], strict=True)) or [(0, "")],
        ylim=(-0.5, max(count, 1) - 0.5),
        invert_yaxis=True,
        frame_width=_FRAME_WIDTH,
        frame_height=max(_FRAME_HEIGHT // 2, min(3 * _BAR_HEIGHT * count, 2 * _FRAME_HEIGHT)),
        legend_position="right",
        show_grid=True,
        hooks=[follow_theme],
    )
