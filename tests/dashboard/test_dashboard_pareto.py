"""The optimization page's Pareto tab: quality vs cost per example of every validated candidate, the front marked."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest

pytest.importorskip("panel")
pytest.importorskip("holoviews")

import holoviews as hv

from dspex_lab.journal import open_journal
from dspex_lab.notebook._dashboard import Dashboard
from dspex_lab.optimization import PARETO_COLUMNS


def layer(plot: Any, label: str) -> Any:
    return next(element for element in plot if element.label == label)


def test_the_pareto_tab_draws_every_point_with_both_intervals_the_front_and_the_best(guarded_run: dict) -> None:
    result = guarded_run["result"]
    dashboard = Dashboard(open_journal(guarded_run["path"]))
    dashboard.open_page("optimization")
    assert dashboard.run_select.value == result.run_id

    points = result.pareto()
    pd.testing.assert_frame_equal(dashboard.pareto, points)
    front = points[points["on_front"]]
    # The cheap baseline and the large model the cost guardrail rejected are both on the front.
    assert len(front) >= 2 and points["cost"].max() > 2e-4 and not points.loc[points["cost"].idxmax(), "accepted"]
    plot = dashboard.pareto_plot.object
    assert layer(plot, "on the front").data["candidate_id"].tolist() == front["candidate_id"].tolist()
    assert sorted(layer(plot, "dominated").data["candidate_id"]) == sorted(points[~points["on_front"]]["candidate_id"])
    assert layer(plot, "best").data["candidate_id"].tolist() == [result.best_id]
    # Both intervals, of every point: the score's vertically, the cost's (a t interval) horizontally.
    vertical, horizontal = (element for element in plot if isinstance(element, hv.ErrorBars))
    assert len(vertical) == len(horizontal) == len(points)
    half = (points["cost_ci_high"] - points["cost_ci_low"]) / 2
    assert sorted(horizontal.data["cost_error"]) == pytest.approx(sorted(half))
    assert (points["cost_ci_low"] < points["cost"]).all() and (points["quality_ci_low"] < points["quality"]).all()
    note = dashboard.pareto_note.object
    assert f'data-points="{len(points)}" data-front="{len(front)}"' in note
    assert f"the best, {result.best_id}, is on it" in note
    # The page's theme: a transparent ground, the axes named for what they hold.
    figure = hv.render(plot, backend="bokeh")
    assert figure.background_fill_alpha == 0.0
    assert figure.xaxis[0].axis_label == "cost per example (US dollars)"
    assert figure.title.text == "Pareto front: quality vs cost per example"


def test_no_run_clears_the_pareto_tab(guarded_run: dict) -> None:
    dashboard = Dashboard(open_journal(guarded_run["path"]))
    dashboard.open_page("optimization")
    assert not dashboard.pareto.empty
    dashboard.run_select.value = None
    assert dashboard.pareto.empty and dashboard.pareto_plot.object is None and dashboard.pareto_note.object == ""


def frame(*rows: tuple[str, float, float, bool, bool]) -> pd.DataFrame:
    """A Pareto frame of (candidate, quality, cost, best, on_front) rows, each interval +-10%."""
    records = [
        {**dict.fromkeys(PARETO_COLUMNS), "candidate_id": key, "quality": quality, "quality_ci_low": quality * 0.9,
         "quality_ci_high": quality * 1.1, "n": 40, "cost": cost, "cost_ci_low": cost * 0.9,
         "cost_ci_high": cost * 1.1, "best": best, "on_front": on_front}
        for key, quality, cost, best, on_front in rows
    ]  # fmt: skip
    return pd.DataFrame(records, columns=list(PARETO_COLUMNS))


def test_a_dominated_best_is_drawn_off_the_front_and_ringed(guarded_run: dict) -> None:
    # With an objective the best may be dominated: a cheaper, better candidate broke a guardrail or had no test.
    points = frame(("c0", 0.5, 1e-4, False, True), ("c2", 0.7, 3e-4, False, True), ("c4", 0.45, 2e-4, True, False))
    dashboard = Dashboard(open_journal(guarded_run["path"]))
    dashboard.refresh_pareto(SimpleNamespace(pareto=lambda: points))
    plot = dashboard.pareto_plot.object
    assert layer(plot, "on the front").data["candidate_id"].tolist() == ["c0", "c2"]
    assert layer(plot, "Pareto front").data["candidate_id"].tolist() == ["c0", "c2"]  # the line joins the front only
    assert layer(plot, "dominated").data["candidate_id"].tolist() == ["c4"]
    assert layer(plot, "best").data["candidate_id"].tolist() == ["c4"]
    note = dashboard.pareto_note.object
    assert 'data-points="3" data-front="2"' in note and "the best, c4, is off it" in note


def test_an_unpriced_run_says_why_and_draws_nothing(guarded_run: dict) -> None:
    unpriced = frame(("c0", 0.5, math.nan, False, False), ("c1", 0.6, math.nan, True, False))
    dashboard = Dashboard(open_journal(guarded_run["path"]))
    dashboard.refresh_pareto(SimpleNamespace(pareto=lambda: unpriced))
    assert dashboard.pareto_plot.object is None
    assert dashboard.pareto_note.object == (
        '<div class="dspex-pareto-note" data-points="0" data-front="0">Pareto front: none; the cost of the 2 '
        "candidates evaluated is unknown (an unpriced model).</div>"
    )
