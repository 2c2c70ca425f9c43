"""The quality-vs-cost Pareto front of an optimization run's evaluated candidates, as plain data.

Every candidate evaluated on the validation set (the baseline included) is a point: its mean
score with the interval every view shows (:func:`dspex_lab.stats.score_interval`: Wilson for
0/1 scores, Student t otherwise) against its mean cost per example in US dollars with a
Student t interval, both from the evaluation's journaled trials. A point is on the front when no
other point scores at least as well for at most its cost, and strictly better on one of the two.
A point whose cost is unknown (an unpriced model) is listed but never on the front.

The front is built from the journal's rows alone (:func:`pareto_points`), so a run read back
with :meth:`OptimizationResult.from_journal` has the same front; :func:`pareto_plot` in
:mod:`~dspex_lab.optimization._plot` draws it, :func:`pareto_text` says it in a few lines (the end
of ``dspex optimize`` and ``dspex trace RUN``), and :func:`run_pareto` reads it from a journal
without rebuilding the run's programs (a custom module need not be imported to see it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from dspex_lab.optimization._evaluator import evaluation_id
from dspex_lab.stats import score_interval, t_interval

__all__ = ["PARETO_COLUMNS", "front_mask", "pareto_points", "pareto_text", "run_pareto"]

#: The columns of ``OptimizationResult.pareto()``, one row per candidate evaluated on the validation set.
PARETO_COLUMNS = (
    "candidate_id", "step", "strategy", "quality", "quality_ci_low", "quality_ci_high", "n", "cost",
    "cost_ci_low", "cost_ci_high", "latency_p95", "accepted", "best", "on_front",
)  # fmt: skip


def front_mask(quality: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Return which points are on the front: maximize ``quality``, minimize ``cost`` (NaN is never on it).

    Example:
        >>> front_mask(np.array([0.5, 0.7, 0.6, 0.7]), np.array([1.0, 2.0, 3.0, 2.0])).tolist()
        [True, True, False, True]
    """
    quality = np.asarray(quality, dtype=float)
    cost = np.asarray(cost, dtype=float)
    known = np.isfinite(quality) & np.isfinite(cost)
    on_front = known.copy()
    for index in np.flatnonzero(known):
        at_least = known & (quality >= quality[index]) & (cost <= cost[index])
        strictly = (quality > quality[index]) | (cost < cost[index])
        if np.any(at_least & strictly):
            on_front[index] = False
    return on_front


def _point(trials: pd.DataFrame) -> dict[str, float | int]:
    """Return one evaluation's quality, cost per example (with intervals) and p95 latency, from its trials."""
    if trials.empty:
        return {**dict.fromkeys(PARETO_COLUMNS[3:11], math.nan), "n": 0}
    scored = trials[(trials["status"] == "ok") & trials["score"].notna()]
    # One value per example (an evaluation runs each once; repeats, if any, are averaged as every view does).
    scores = pd.to_numeric(scored["score"]).groupby(scored["example_id"]).mean().to_numpy(dtype=float)
    interval = score_interval(scores)
    costs = pd.to_numeric(trials["cost"], errors="coerce").groupby(trials["example_id"]).sum(min_count=1)
    if costs.isna().any():
        cost, low, high = math.nan, math.nan, math.nan
    else:
        values = costs.to_numpy(dtype=float)
        cost = float(values.mean())
        stderr = float(values.std(ddof=1)) / math.sqrt(values.size) if values.size > 1 else math.nan
        low, high = t_interval(cost, stderr, int(values.size))
    latencies = pd.to_numeric(trials["latency"], errors="coerce").dropna().to_numpy(dtype=float)
    return {
        "quality": float(scores.mean()) if scores.size else math.nan,
        "quality_ci_low": float(interval.low),
        "quality_ci_high": float(interval.high),
        "n": int(scores.size),
        "cost": cost,
        "cost_ci_low": float(low),
        "cost_ci_high": float(high),
        "latency_p95": float(np.quantile(latencies, 0.95)) if latencies.size else math.nan,
    }


def pareto_points(
    candidates: pd.DataFrame, trials: Callable[[str], pd.DataFrame], *, run_id: str, best_id: str
) -> pd.DataFrame:
    """Return every candidate evaluated on the validation set as a point, the front marked (see the module).

    Args:
        candidates: the run's candidates frame (``OptimizationResult.candidates``).
        trials: reads an evaluation's trials by experiment id (the journal's, or a run's in-memory rows).
        run_id: the run.
        best_id: the run's best candidate (marked ``best``).

    Returns:
        One row per point (:data:`PARETO_COLUMNS`), cheapest first; ``on_front`` marks the front.
    """
    validated = candidates[candidates["val_mean"].notna()]
    rows = []
    for row in validated.itertuples():
        point = _point(trials(evaluation_id(run_id, str(row.candidate_id), "val")))
        rows.append(
            {
                "candidate_id": row.candidate_id,
                "step": int(row.step),
                "strategy": row.strategy,
                **point,
                "accepted": bool(row.accepted),
                "best": row.candidate_id == best_id,
            }
        )
    if not rows:
        return pd.DataFrame(columns=list(PARETO_COLUMNS))
    frame = pd.DataFrame(rows)
    frame["on_front"] = front_mask(frame["quality"].to_numpy(), frame["cost"].to_numpy())
    ordered = frame.sort_values(["cost", "quality"], ascending=[True, False], kind="stable", na_position="last")
    return ordered.reset_index(drop=True)[list(PARETO_COLUMNS)]


def run_pareto(journal: Any, run_id: str) -> pd.DataFrame:
    """Return :func:`pareto_points` of run ``run_id`` read from ``journal``: its step, candidate and trial rows only.

    Raises:
        JournalError: ``run_id`` is not an optimization run, or has no baseline step yet.
    """
    from dspex_lab.errors import JournalError
    from dspex_lab.optimization._result import best_candidate_id, candidates_frame

    record = journal.experiment(run_id)
    if record.get("kind") != "optimization":
        raise JournalError(f"experiment {run_id} is a {record.get('kind')}, not an optimization run")
    step_rows, candidate_rows = journal.step_rows(run_id), journal.candidate_rows(run_id)
    if not step_rows or not candidate_rows:
        raise JournalError(f"optimization run {run_id} has no finished baseline step yet")
    candidates = candidates_frame(candidate_rows, step_rows)
    return pareto_points(candidates, journal.trials, run_id=run_id, best_id=best_candidate_id(step_rows))


def _money(value: float) -> str:
    return "unknown" if math.isnan(value) else f"${value:.3g}"


def _said(row: Any) -> str:
    return (
        f"{row.quality:.3f} [{row.quality_ci_low:.3f}, {row.quality_ci_high:.3f}] at "
        f"{_money(row.cost)} [{_money(row.cost_ci_low)}, {_money(row.cost_ci_high)}] (n = {row.n})"
    )


def pareto_text(points: pd.DataFrame, *, shown: int = 5) -> str:
    """Say a run's front in a few lines: each front candidate's validation mean and cost per example, with intervals.

    Args:
        points: the frame of :func:`pareto_points` (``OptimizationResult.pareto()``).
        shown: the most front candidates listed (the cheapest; a last line counts the others).

    Example:
        >>> points = pd.DataFrame([
        ...     {"candidate_id": "c0", "quality": 0.5, "quality_ci_low": 0.4, "quality_ci_high": 0.6, "n": 100,
        ...      "cost": 1e-4, "cost_ci_low": 9e-5, "cost_ci_high": 1.1e-4, "best": False, "on_front": True},
        ...     {"candidate_id": "c3", "quality": 0.7, "quality_ci_low": 0.6, "quality_ci_high": 0.8, "n": 100,
        ...      "cost": 2e-4, "cost_ci_low": 1.8e-4, "cost_ci_high": 2.2e-4, "best": True, "on_front": True}])
        >>> print(pareto_text(points))
        Pareto front (validation mean vs cost per example; 2 of 2 candidates evaluated on the valset):
          c0         0.500 [0.400, 0.600] at $0.0001 [$9e-05, $0.00011] (n = 100)
          c3 (best)  0.700 [0.600, 0.800] at $0.0002 [$0.00018, $0.00022] (n = 100)
    """
    front = points[points["on_front"].astype(bool)]
    if points.empty:
        return "Pareto front: no candidate was evaluated on the valset yet."
    if front.empty:
        return f"Pareto front: none; the cost of the {len(points)} candidates evaluated is unknown (an unpriced model)."
    names = [f"{row.candidate_id}{' (best)' if row.best else ''}" for row in front.itertuples()]
    width = max(len(name) for name in names)
    lines = [
        f"Pareto front (validation mean vs cost per example; {len(front)} of {len(points)} candidates evaluated "
        "on the valset):"
    ]
    lines += [
        f"  {name.ljust(width)}  {_said(row)}" for name, row in zip(names[:shown], front.itertuples(), strict=False)
    ]
    if len(front) > shown:
        lines.append(f"  and {len(front) - shown} more on the front (all of them: run.pareto())")
    best = points[points["best"].astype(bool) & ~points["on_front"].astype(bool)]
    # The run keeps what it accepted: a point that dominates it had no significant gain, or broke a guardrail.
    lines += [f"  the best, {row.candidate_id}, is not on the front: {_said(row)}" for row in best.itertuples()]
    return "\n".join(lines)
