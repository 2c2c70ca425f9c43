"""The optimization page's importance tab: which variables mattered, a forest plot of effects with intervals."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("panel")
pytest.importorskip("holoviews")

import holoviews as hv

import dspex_lab as dx
from dspex_lab.journal import open_journal
from dspex_lab.notebook._dashboard import Dashboard
from dspex_lab.notebook._dashboard_optimization import IMPORTANCE_PLOT_COLUMNS, importance_data, importance_plot


def test_the_plot_has_one_row_per_estimable_contrast_in_the_tables_order(optimization_run: dict) -> None:
    frame = optimization_run["result"].importance()
    data = importance_data(frame)
    estimable = frame[frame["estimable"]]

    assert list(data.columns) == list(IMPORTANCE_PLOT_COLUMNS)
    assert list(data["label"]) == [f"{row.variable}: {row.contrast}" for row in estimable.itertuples()]
    assert list(data["row"]) == list(range(len(estimable)))
    assert list(data["effect"]) == pytest.approx(list(estimable["effect"]))
    assert (data["ci_low"] <= data["effect"]).all() and (data["effect"] <= data["ci_high"]).all()


def test_the_optimization_page_draws_the_importance_tab(optimization_run: dict) -> None:
    result = optimization_run["result"]
    dashboard = Dashboard(open_journal(optimization_run["path"]))
    dashboard.open_page("optimization")
    assert dashboard.run_select.value == result.run_id

    pd.testing.assert_frame_equal(dashboard.importance, result.importance())
    plot = dashboard.importance_plot.object
    intervals = next(element for element in plot if isinstance(element, hv.Segments))
    points = next(element for element in plot if isinstance(element, hv.Scatter))
    estimable = int(dashboard.importance["estimable"].sum())
    assert len(intervals) == len(points) == estimable > 0
    # The table under the plot lists every contrast, the not estimable ones with why.
    table = dashboard.importance_table.object
    assert table.count("<tr>") == len(dashboard.importance) + 1
    assert "dspy.ChainOfThought vs dspy.Predict" in table and "not estimable: never changed" in table
    # A zero line, labelled rows, a transparent ground that follows the page's theme.
    figure = hv.render(plot, backend="bokeh")
    assert figure.background_fill_alpha == 0.0
    assert dict(figure.yaxis[0].major_label_overrides)[0].startswith(dashboard.importance.iloc[0]["variable"])


def test_no_run_clears_the_importance(optimization_run: dict) -> None:
    dashboard = Dashboard(open_journal(optimization_run["path"]))
    dashboard.open_page("optimization")
    dashboard.run_select.value = None
    assert dashboard.importance.empty
    assert dashboard.importance_plot.object is None and dashboard.importance_table.object == ""


def test_a_run_without_a_baseline_says_why_in_one_line(tmp_path: Path) -> None:
    dashboard = Dashboard(open_journal(run_path := tmp_path / "journal.duckdb"))
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=run_path):
        evaluation = dx.evaluate(
            dx.Program("dspy.Predict", signature="question -> answer", name="qa"),
            dx.datasets.arithmetic(3),
            metric=dx.metrics.exact_match,
            progress=False,
        )
    dashboard.refresh_importance(evaluation.experiment_id)
    assert dashboard.importance.empty and dashboard.importance_plot.object is None
    assert dashboard.importance_table.object.startswith("Which variables mattered: not estimable (run ")


def test_an_empty_importance_draws_an_empty_plot() -> None:
    data = importance_data(pd.DataFrame(columns=["variable", "contrast", "effect", "ci_low", "ci_high", "share",
                                                 "candidates", "estimable"]))  # fmt: skip
    assert data.empty
    figure = hv.render(importance_plot(data), backend="bokeh")
    assert figure.title.text == "Which variables mattered: effect on the metric"
