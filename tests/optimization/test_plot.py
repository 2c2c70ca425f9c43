import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("holoviews")
pytest.importorskip("bokeh")

import holoviews as hv
from bokeh.models import GlyphRenderer, Legend, Plot

from dspex_lab.errors import OptimizerError
from dspex_lab.optimization._plot import (
    CANDIDATE_COLUMNS,
    STEP_COLUMNS,
    LiveConvergence,
    convergence_data,
    convergence_plot,
)

NAN = math.nan
BASE_INSTRUCTIONS = "Solve the arithmetic problem."


def values(*, temperature=0.7, module="dspy.Predict", rules=(), demos=0, model="lab/small"):
    return {
        "temperature": temperature,
        "module": module,
        "model": model,
        "instructions:solve": "\n".join([BASE_INSTRUCTIONS, *rules]),
        "demos:solve": [{"question": f"q{index}", "answer": str(index)} for index in range(demos)],
    }


def candidate(candidate_id, step, parent, strategy, vals, *, screen=NAN, incumbent=NAN, val=NAN, accepted=False):
    half = 0.05 if not math.isnan(val) else NAN
    return {
        "candidate_id": candidate_id,
        "step": step,
        "parent_id": parent,
        "strategy": strategy,
        "rationale": None if strategy == "baseline" else f"{strategy} proposal for {candidate_id}: " + "why " * 60,
        "values": vals,
        "screen_mean": screen,
        "incumbent_screen_mean": incumbent,
        "val_mean": val,
        "val_ci_low": val - half,
        "val_ci_high": val + half,
        "p_value": 0.01 if accepted else (0.4 if not math.isnan(val) else NAN),
        "p_adjusted": 0.03 if accepted else (0.9 if not math.isnan(val) else NAN),
        "accepted": accepted,
    }


RULE = "When multiplying groups, multiply the group size by the count."


def run_frames():
    """A four-step run: the baseline, two accepted candidates (a demo, then a rule), rejections."""
    rows = [
        candidate("c0", 0, None, "baseline", values(), val=0.50),
        # step 1: a demo is accepted; a temperature mutation is rejected after full evaluation; one only screened
        candidate("c1", 1, "c0", "demo", values(demos=1), screen=0.70, incumbent=0.50, val=0.58, accepted=True),
        candidate("c2", 1, "c0", "mutate", values(temperature=0.3), screen=0.65, incumbent=0.50, val=0.52),
        candidate("c3", 1, "c0", "mutate", values(module="dspy.ChainOfThought"), screen=0.45, incumbent=0.50),
        # step 2: nothing significant; one candidate never screened (NaN screen)
        candidate("c4", 2, "c1", "rule", values(demos=1, rules=[RULE]), screen=0.75, incumbent=0.60, val=0.61),
        candidate("c5", 2, "c1", "mutate", values(demos=1, temperature=1.1), screen=0.55, incumbent=0.60),
        candidate("c6", 2, "c1", "dspy", values(demos=1, model="lab/large")),
        # step 3: a rule and a temperature change are accepted together
        candidate(
            "c7",
            3,
            "c1",
            "rule",
            values(demos=1, rules=[RULE], temperature=0.3),
            screen=0.85,
            incumbent=0.62,
            val=0.70,
            accepted=True,
        ),
        candidate("c8", 3, "c1", "demo", values(demos=2), screen=0.70, incumbent=0.62, val=0.60),
        candidate("c9", 3, "c4", "mutate", values(demos=1, rules=[RULE], temperature=0.9), screen=0.50, incumbent=0.62),
        # step 4: a child of the new incumbent, rejected
        candidate(
            "c10",
            4,
            "c7",
            "demo",
            values(demos=2, rules=[RULE], temperature=0.3),
            screen=0.80,
            incumbent=0.72,
            val=0.69,
        ),
        candidate(
            "c11", 4, "c7", "mutate", values(demos=1, rules=[RULE], temperature=0.1), screen=0.66, incumbent=0.72
        ),
    ]
    candidates = pd.DataFrame(rows)
    steps = pd.DataFrame(
        {
            "step": [0, 1, 2, 3, 4],
            "status": ["running", "running", "running", "running", "finished"],
            "incumbent_id": ["c0", "c1", "c1", "c7", "c7"],
            "accepted_id": [None, "c1", None, "c7", None],
            "best_mean": [0.50, 0.58, 0.58, 0.70, 0.70],
            "best_ci_low": [0.44, 0.52, 0.52, 0.65, 0.65],
            "best_ci_high": [0.56, 0.64, 0.64, 0.75, 0.75],
            "lm_calls": [40, 130, 220, 320, 410],
            "tokens": [4000, 13000, 22000, 32000, 41000],
            "cost": [None] * 5,
            "detail": [None, None, None, None, "3 steps without a significant gain"],
        }
    )
    return steps, candidates


def figures(layout):
    """Map each panel's title to its bokeh figure."""
    root = hv.render(layout, backend="bokeh")
    return {figure.title.text: figure for figure in root.select({"type": Plot})}


def panel(layout, starts_with):
    found = [figure for title, figure in figures(layout).items() if title.startswith(starts_with)]
    assert len(found) == 1, starts_with
    return found[0]


def legend_renderers(figure):
    """Map each legend label of a figure to its glyph renderers."""
    items = {}
    for legend in figure.select({"type": Legend}):
        for item in legend.items:
            items[item.label["value"]] = item.renderers
    return items


def glyphs(figure, name):
    return [renderer for renderer in figure.select({"type": GlyphRenderer}) if type(renderer.glyph).__name__ == name]


def test_best_panel_draws_the_ci_band_the_incumbent_and_the_decisions():
    steps, candidates = run_frames()
    figure = panel(convergence_plot(steps, candidates, title="lab run"), "Best so far")
    (band,) = glyphs(figure, "Patch")
    # A band is drawn as one polygon: the upper bounds left to right, then the lower ones back.
    assert list(band.data_source.data["y"]) == pytest.approx(
        list(steps["best_ci_high"]) + list(steps["best_ci_low"])[::-1]
    )
    assert list(band.data_source.data["x"]) == list(steps["step"]) + list(steps["step"])[::-1]
    (line,) = glyphs(figure, "Line")
    assert list(line.data_source.data["best_mean"]) == pytest.approx(list(steps["best_mean"]))
    items = legend_renderers(figure)
    (accepted,) = items["accepted"]
    assert sorted(accepted.data_source.data["candidate_id"]) == ["c1", "c7"]
    assert list(accepted.data_source.data["val_mean"]) == pytest.approx([0.58, 0.70])
    (rejected,) = items["rejected"]
    assert sorted(rejected.data_source.data["candidate_id"]) == ["c10", "c2", "c4", "c8"]
    assert set(items) >= {"incumbent CI", "incumbent (validation mean)"}


def test_screening_panel_pairs_each_screened_candidate_with_its_full_score():
    steps, candidates = run_frames()
    figure = panel(convergence_plot(steps, candidates), "Screening vs full")
    items = legend_renderers(figure)
    (screen,) = items["screening (mini-batch)"]
    screened = candidates[candidates["screen_mean"].notna()]
    assert len(screen.data_source.data["screen_mean"]) == len(screened) == 10
    (full,) = items["full (validation set)"]
    assert len(full.data_source.data["val_mean"]) == candidates["val_mean"].notna().sum() == 7
    (links,) = items["same candidate"]
    both = screened[screened["val_mean"].notna()]
    assert list(links.data_source.data["screen_mean"]) == pytest.approx(list(both["screen_mean"]))
    assert list(links.data_source.data["val_mean"]) == pytest.approx(list(both["val_mean"]))
    # Screening is optimistic in this run: every linked candidate scored lower on the full set.
    assert all(np.asarray(links.data_source.data["screen_mean"]) > np.asarray(links.data_source.data["val_mean"]))
    (incumbent,) = items["incumbent on the same mini-batch"]
    assert len(incumbent.data_source.data["incumbent_screen_mean"]) == 10


def test_lineage_has_one_edge_per_child_and_hover_carries_strategy_and_rationale():
    steps, candidates = run_frames()
    figure = panel(convergence_plot(steps, candidates), "Lineage")
    items = legend_renderers(figure)
    (edges,) = items["parent → child"]
    assert len(edges.data_source.data["candidate_id"]) == candidates["parent_id"].notna().sum() == 11
    (accepted,) = items["accepted"]
    assert sorted(accepted.data_source.data["candidate_id"]) == ["c1", "c7"]
    drawn = sum(
        len(renderers[0].data_source.data["candidate_id"])
        for label, renderers in items.items()
        if label != "parent → child"
    )
    assert drawn == len(candidates)
    (not_evaluated,) = items["not evaluated"]
    # c6 was never screened: it sits at its parent's (c1) validation score.
    assert list(not_evaluated.data_source.data["candidate_id"]) == ["c6"]
    assert list(not_evaluated.data_source.data["score"]) == pytest.approx([0.58])
    rationales = [text for renderers in items.values() for text in renderers[0].data_source.data.get("rationale", [])]
    assert any(text.startswith("rule proposal for c4") for text in rationales)
    assert max(len(text) for text in rationales) <= 120
    hover_fields = {field for tool in figure.tools if type(tool).__name__ == "HoverTool" for _, field in tool.tooltips}
    assert {"@{strategy}", "@{rationale}"} <= hover_fields


def test_variable_panel_shows_scalars_and_counts_of_demos_and_rules_per_step():
    steps, candidates = run_frames()
    data = convergence_data(steps, candidates)
    assert set(data.variables["variable"]) == {
        "temperature",
        "module",
        "model",
        "instructions:solve (rules)",
        "demos:solve (demos)",
    }
    counts = data.variables.set_index(["variable", "step"])["value"]
    assert [counts["demos:solve (demos)", step] for step in range(5)] == ["0", "1", "1", "1", "1"]
    assert [counts["instructions:solve (rules)", step] for step in range(5)] == ["0", "0", "0", "1", "1"]
    assert [counts["temperature", step] for step in range(5)] == ["0.7", "0.7", "0.7", "0.3", "0.3"]
    changed = data.variables[data.variables["changed"]]
    assert sorted(zip(changed["variable"], changed["step"], strict=True)) == [
        ("demos:solve (demos)", 1),
        ("instructions:solve (rules)", 3),
        ("temperature", 3),
    ]
    figure = panel(convergence_plot(steps, candidates), "Incumbent's variables")
    (text,) = glyphs(figure, "Text")
    assert len(text.data_source.data["label"]) == 5 * 5
    # Rows are named by tick labels, the first variable on top; the raw instructions are not drawn.
    names = figure.yaxis[0].major_label_overrides
    assert sorted(names.values()) == sorted(set(data.variables["variable"]))
    assert figure.y_range.start > figure.y_range.end
    # A module type is printed by its class name; the hover keeps the full path.
    labels = dict(
        zip(
            zip([names[row] for row in text.data_source.data["row"]], text.data_source.data["step"], strict=True),
            text.data_source.data["label"],
            strict=True,
        )
    )
    assert labels["module", 0] == "Predict"
    assert labels["temperature", 4] == "0.3"
    (cells,) = glyphs(figure, "Rect")
    assert "dspy.Predict" in set(cells.data_source.data["value"])
    # Colour follows the value within each variable: temperature drops from 0.7 to 0.3 at step 3.
    levels = data.variables.set_index(["variable", "step"])["level"]
    assert [levels["temperature", step] for step in range(5)] == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert {levels["model", step] for step in range(5)} == {0.5}


@pytest.mark.parametrize("rows", [0, 1])
def test_empty_and_one_step_frames_render(rows):
    steps, candidates = run_frames()
    steps, candidates = steps.head(rows), candidates.head(rows)
    figure = panel(convergence_plot(steps, candidates), "Best so far")
    (line,) = glyphs(figure, "Line")
    assert len(line.data_source.data["best_mean"]) == rows
    assert len(figures(convergence_plot(pd.DataFrame(), pd.DataFrame()))) == 4


@pytest.mark.parametrize(("frame", "column"), [("steps", "best_ci_low"), ("candidates", "parent_id")])
def test_a_missing_column_is_one_clear_error_naming_it(frame, column):
    steps, candidates = run_frames()
    frames = {"steps": steps, "candidates": candidates}
    frames[frame] = frames[frame].drop(columns=[column])
    with pytest.raises(OptimizerError, match=rf"the {frame} frame has no column '{column}'"):
        convergence_plot(frames["steps"], frames["candidates"])


def test_inconsistent_frames_are_clear_errors():
    steps, candidates = run_frames()
    orphan = candidates.copy()
    orphan.loc[orphan["candidate_id"] == "c5", "parent_id"] = "c99"
    with pytest.raises(OptimizerError, match=r"candidate 'c5' has parent 'c99'"):
        convergence_data(steps, orphan)
    unknown = steps.copy()
    unknown.loc[2, "incumbent_id"] = "c42"
    with pytest.raises(OptimizerError, match=r"step 2 names incumbent 'c42'"):
        convergence_data(unknown, candidates)
    with pytest.raises(OptimizerError, match="must be a pandas DataFrame"):
        convergence_data(steps.to_dict(), candidates)


def test_frames_read_back_from_the_journal_draw_the_same():
    # Read back from DuckDB: values as JSON text, nullable booleans, None for a missing number.
    steps, candidates = run_frames()
    journal_candidates = candidates.assign(
        values=[json.dumps(values) for values in candidates["values"]],
        accepted=pd.array([*candidates["accepted"][:-1], pd.NA], dtype="boolean"),
        screen_mean=[None if math.isnan(value) else value for value in candidates["screen_mean"]],
    )
    journal_steps = steps.astype({"lm_calls": "Int64"})
    expected, drawn = convergence_data(steps, candidates), convergence_data(journal_steps, journal_candidates)
    pd.testing.assert_frame_equal(drawn.variables, expected.variables)
    pd.testing.assert_frame_equal(drawn.best, expected.best)
    assert list(drawn.candidates["outcome"]) == list(expected.candidates["outcome"])


def test_a_value_that_is_not_a_number_names_its_column_and_row():
    steps, candidates = run_frames()
    candidates["val_mean"] = [*candidates["val_mean"][:3], "n/a", *candidates["val_mean"][4:]]
    with pytest.raises(OptimizerError, match=r"column 'val_mean' has 'n/a' in row 3; expected a number"):
        convergence_data(steps, candidates)


def test_required_columns_are_in_the_run_contract():
    steps, candidates = run_frames()
    assert set(STEP_COLUMNS) <= set(steps.columns)
    assert set(CANDIDATE_COLUMNS) <= set(candidates.columns)


def test_live_plot_follows_the_events_and_ignores_other_objects():
    steps, candidates = run_frames()
    live = LiveConvergence(title="live")
    assert live.data.best.empty and live.steps.empty
    live(SimpleNamespace(steps=steps.head(2), candidates=candidates.head(4)))
    assert list(live.pipe.data.best["step"]) == [0, 1]
    assert len(live.pipe.data.candidates) == 4
    live(SimpleNamespace(steps=steps, candidates=candidates))
    assert list(live.pipe.data.best["best_mean"]) == pytest.approx(list(steps["best_mean"]))
    assert live.candidates is candidates
    live("a log line")
    live(SimpleNamespace(steps=steps.head(1)))
    assert len(live.pipe.data.best) == 5
    # The live layout draws what the pipe holds.
    figure = panel(live.layout, "Lineage")
    (edges,) = legend_renderers(figure)["parent → child"]
    assert len(edges.data_source.data["candidate_id"]) == 11


def test_a_displayed_live_plot_updates_in_place():
    # What a notebook cell holds: the bokeh models drawn once, then updated by each event.
    steps, candidates = run_frames()
    live = LiveConvergence()
    root = hv.renderer("bokeh").get_plot(live.layout).state
    shown = {figure.title.text.split(" ")[0]: figure for figure in root.select({"type": Plot})}
    (line,) = glyphs(shown["Best"], "Line")
    assert len(line.data_source.data["best_mean"]) == 0
    live(SimpleNamespace(steps=steps.head(2), candidates=candidates.head(4)))
    assert list(line.data_source.data["best_mean"]) == pytest.approx([0.50, 0.58])
    live(SimpleNamespace(steps=steps, candidates=candidates))
    assert list(line.data_source.data["best_mean"]) == pytest.approx(list(steps["best_mean"]))
    # The axes follow the run (they started on the empty frame's ranges).
    for figure in shown.values():
        assert (figure.x_range.start, figure.x_range.end) == (-0.5, 4.5)
    variables = shown["Incumbent's"]
    assert variables.yaxis[0].major_label_overrides == {
        0: "temperature",
        1: "module",
        2: "model",
        3: "instructions:solve (rules)",
        4: "demos:solve (demos)",
    }
    (text,) = glyphs(variables, "Text")
    assert len(text.data_source.data["label"]) == 25


def test_live_plot_displays_through_panel_and_its_mimebundle():
    pn = pytest.importorskip("panel")
    live = LiveConvergence()
    pane = live.view()
    assert isinstance(pane, pn.pane.HoloViews)
    assert pane.object is live.layout


def test_plots_display_in_a_notebook_through_panels_pane_which_embeds_its_stylesheets(monkeypatch):
    # holoviews' own notebook route links panel's stylesheets on a CDN; panel's pane, with panel's inline
    # setting, embeds them. Both the static and the live plot take that route.
    pn = pytest.importorskip("panel")
    shown = []

    def pane_bundle(pane, include=None, exclude=None):
        shown.append(pane.object)
        return {"text/html": "<div>convergence</div>"}, {"text/html": {"shown": True}}

    monkeypatch.setattr(pn.pane.HoloViews, "_repr_mimebundle_", pane_bundle)
    steps, candidates = run_frames()
    static = convergence_plot(steps, candidates, title="static")
    live = LiveConvergence()
    assert static._repr_mimebundle_() == ({"text/html": "<div>convergence</div>"}, {"text/html": {"shown": True}})
    data, metadata = live._repr_mimebundle_()
    assert shown == [static, live.layout]
    assert data == {"text/html": "<div>convergence</div>"}
    assert metadata == {"text/html": {"shown": True}}


def test_step_axes_tick_whole_steps_on_a_transparent_ground_live_too():
    # Ticks at whole steps only (a step is a count, never -0.5 or 0.5), and no white block on a dark page:
    # the canvas takes the page's ground, with text and axes in a grey that reads on both themes.
    from bokeh.models import BasicTicker

    steps, candidates = run_frames()
    live = LiveConvergence()
    shown = hv.renderer("bokeh").get_plot(live.layout).state
    live(SimpleNamespace(steps=steps, candidates=candidates))
    for figure in [*figures(convergence_plot(steps, candidates)).values(), *shown.select({"type": Plot})]:
        (axis,) = figure.xaxis
        assert isinstance(axis.ticker, BasicTicker), figure.title.text
        assert (axis.ticker.min_interval, axis.ticker.num_minor_ticks) == (1, 0)
        assert (figure.background_fill_alpha, figure.border_fill_alpha) == (0.0, 0.0)
        assert axis.major_label_text_color == figure.yaxis[0].major_label_text_color == figure.title.text_color
        for legend in figure.legend:
            assert legend.background_fill_alpha == 0.0
            assert legend.label_text_color == figure.title.text_color


def test_holoviews_loads_bokeh_inline_never_from_a_cdn(monkeypatch):
    from dspex_lab.optimization import _plot

    pn = pytest.importorskip("panel")
    calls = []
    monkeypatch.setattr(pn.config, "inline", False)
    monkeypatch.delitem(hv.Store.renderers, "bokeh")
    monkeypatch.setattr(hv, "extension", lambda *backends, **options: calls.append((backends, options)))
    assert _plot._holoviews() is hv
    assert calls == [(("bokeh",), {"logo": False, "inline": True})]
    assert pn.config.inline  # panel, which draws holoviews in a notebook, embeds its stylesheets too
