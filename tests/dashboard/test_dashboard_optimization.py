"""The optimization page's history and timeline, checked on the frames they are drawn from and on the panes.

A short SIMBA-C run on the lab LM gives the history (every candidate's screening and validation score,
the best so far, the baseline) and the timeline (its nested evaluations over wall-clock time); a run
written by hand into an in-memory journal gives every colour a bar can take (failed, interrupted,
running, accepted, rejected...), which a run on the lab LM cannot promise.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest

pytest.importorskip("panel")
pytest.importorskip("holoviews")

import holoviews as hv

import dspex_lab as dx
from dspex_lab.journal import ExperimentRecord, memory_journal, open_journal
from dspex_lab.notebook._dashboard import Dashboard
from dspex_lab.notebook._dashboard_optimization import (
    HISTORY_COLUMNS,
    TIMELINE_COLUMNS,
    TIMELINE_OUTCOMES,
    history_data,
    history_plot,
    timeline_frame,
    timeline_note,
    timeline_plot,
    variables_text,
)
from dspex_lab.optimization import CANDIDATE_COLUMNS


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A journal holding one two-step SIMBA-C run (built once)."""
    path = tmp_path_factory.mktemp("optimization-page") / "journal.duckdb"
    data = list(dx.datasets.arithmetic(50, seed=4))
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=path, threads=2):
        result = dx.optimize(
            dx.Program("dspy.Predict", signature="question -> answer", name="qa-opt"),
            data[:24],
            data[24:],
            metric=dx.metrics.exact_match,
            optimizer=dx.SimbaC(max_steps=2, bsize=6, num_candidates=2, num_sources=1, patience=2),
            progress=False,
            seed=2,
        )
    return {"path": path, "result": result}


def test_the_history_has_one_point_per_score_each_candidate_got(run: dict) -> None:
    result = run["result"]
    history = history_data(result.steps, result.candidates)
    assert list(history.points.columns) == list(HISTORY_COLUMNS)
    candidates = result.candidates.set_index("candidate_id")
    for kind, column in (("screening", "screen_mean"), ("validation", "val_mean")):
        points = history.points[history.points["kind"] == kind].set_index("candidate_id")
        scored = candidates[pd.to_numeric(candidates[column], errors="coerce").notna()]
        assert sorted(points.index) == sorted(scored.index), kind
        assert list(points["score"]) == pytest.approx([float(scored.loc[name, column]) for name in points.index])
        assert list(points["step"]) == [int(scored.loc[name, "step"]) for name in points.index]
        # Screening left of its step's tick, validation right of it: never on each other.
        assert ((points["x"] < points["step"]) if kind == "screening" else (points["x"] > points["step"])).all()
    validation = history.points[history.points["kind"] == "validation"].set_index("candidate_id")
    assert list(validation["ci_low"]) == pytest.approx(
        [float(candidates.loc[c, "val_ci_low"]) for c in validation.index]
    )
    assert list(history.best["best_mean"]) == pytest.approx(list(result.steps["best_mean"]))
    assert history.baseline == pytest.approx(float(result.steps.loc[result.steps["step"] == 0, "best_mean"].iloc[0]))
    # A point's hover names its candidate's variables and their values.
    first = history.points.iloc[0]
    values = candidates.loc[first["candidate_id"], "values"]
    assert all(f"{name}=" in first["variables"] for name in values)


def test_variables_read_as_one_line_with_long_texts_and_lists_shortened() -> None:
    text = variables_text({"module": "dspy.Predict", "instructions": "x " * 100, "demos": [1, 2, 3], "k": 0.123456})
    assert text.startswith("module=dspy.Predict; instructions=x x")
    assert "demos=3 items" in text and "k=0.123" in text
    assert len(text.split("; ")[1]) <= len("instructions=") + 40
    assert variables_text('{"a": 1}') == "a=1" and variables_text(None) == ""


def test_the_timeline_has_one_bar_per_nested_evaluation_from_its_start_to_its_end(run: dict) -> None:
    journal = open_journal(run["path"])
    result = run["result"]
    frame = timeline_frame(journal, result.run_id, result.candidates)
    children = journal.children(result.run_id)
    assert list(frame.columns) == list(TIMELINE_COLUMNS)
    assert list(frame["experiment_id"]) == [child.id for child in children]
    # Each bar spans its evaluation's trials: from the first one's start to the last one's end.
    trials = [journal.trial_rows(child.id) for child in children]
    starts = [min(row["started_at"] for row in rows) for rows in trials]
    ends = [max(row["finished_at"] for row in rows) for rows in trials]
    assert list(frame["start"]) == [pd.Timestamp(start) for start in starts]
    assert list(frame["end"]) == [pd.Timestamp(end) for end in ends]
    assert list(frame["seconds"]) == pytest.approx(
        [(end - start).total_seconds() for start, end in zip(starts, ends, strict=True)]
    )
    # A child's recorded end is its last trial's, not the run's end (when the run closes them all).
    assert list(frame["end"]) == [pd.Timestamp(child.finished_at) for child in children]
    assert frame["end"].nunique() > 1
    assert list(frame["n_trials"]) == [child.n_trials for child in children]
    assert list(frame["role"]) == [child.role for child in children]
    assert frame.loc[frame["role"] == "baseline", "outcome"].tolist() == ["baseline"]
    assert set(frame["outcome"]) <= set(TIMELINE_OUTCOMES)
    note = timeline_note(frame)
    assert f'data-bars="{len(children)}"' in note and "candidate-screen" in note


def candidates(*rows: tuple[str, int, str | None, float | None, float | None, bool]) -> pd.DataFrame:
    """A candidates frame: (id, step, parent, screening mean, validation mean, accepted) per candidate."""
    records = [
        {
            **dict.fromkeys(CANDIDATE_COLUMNS),
            "candidate_id": name, "step": step, "parent_id": parent, "strategy": "baseline" if parent is None else "x",
            "values": {"k": step}, "screen_mean": screen, "val_mean": validation, "accepted": accepted,
        }
        for name, step, parent, screen, validation, accepted in rows
    ]  # fmt: skip
    return pd.DataFrame(records, columns=list(CANDIDATE_COLUMNS))


def test_each_bar_is_coloured_by_how_it_ended_or_what_became_of_its_candidate() -> None:
    journal = memory_journal()
    run_id = journal.create_experiment(ExperimentRecord(kind="optimization", name="run", id="run"))
    bars = [
        ("c0", "val", "baseline", "finished"),
        ("c1", "screen", "candidate-screen", "finished"),
        ("c1", "val", "candidate-validation", "finished"),
        ("c2", "val", "candidate-validation", "finished"),
        ("c3", "screen", "candidate-screen", "finished"),
        ("c4", "screen", "candidate-screen", "failed"),
        ("c5", "screen", "candidate-screen", "interrupted"),
        ("c1", "confirm", "confirmation", "finished"),
        ("c6", "screen", "candidate-screen", "running"),
    ]
    for candidate, phase, role, status in bars:
        child = journal.create_experiment(
            ExperimentRecord(
                kind="evaluation", name=f"run {candidate} {phase}", id=f"run/{candidate}/{phase}", parent_id=run_id,
                role=role, config={"candidate": candidate, "phase": phase},
            )
        )  # fmt: skip
        if status != "running":
            journal.finish_experiment(child, status=status)
    frame = timeline_frame(
        journal,
        run_id,
        candidates(
            ("c0", 0, None, 0.5, 0.5, False),
            ("c1", 1, "c0", 0.9, 0.8, True),
            ("c2", 1, "c0", 0.7, 0.55, False),
            ("c3", 1, "c0", 0.4, None, False),
        ),
        now=pd.Timestamp.now(tz="UTC").tz_localize(None) + pd.Timedelta(seconds=5),
    )
    assert list(frame["outcome"]) == [
        "baseline", "accepted", "accepted", "rejected", "screened only", "failed", "interrupted", "confirmation",
        "running",
    ]  # fmt: skip
    running = frame.iloc[-1]
    assert running["seconds"] >= 5  # a running evaluation's bar reaches now
    plot = timeline_plot(frame)
    drawn = {element.label: len(element) for element in plot}
    assert sum(drawn.values()) == len(bars)
    assert drawn["accepted"] == 2 and drawn["failed"] == 1
    assert all(element.label in TIMELINE_OUTCOMES for element in plot)


def test_an_empty_run_draws_an_empty_timeline_and_says_so() -> None:
    journal = memory_journal()
    run_id = journal.create_experiment(ExperimentRecord(kind="optimization", name="run", id="run"))
    frame = timeline_frame(journal, run_id)
    assert frame.empty and list(frame.columns) == list(TIMELINE_COLUMNS)
    assert 'data-bars="0"' in timeline_note(frame)
    hv.render(timeline_plot(frame), backend="bokeh")  # draws without a bar


def test_the_optimization_page_draws_the_history_and_the_timeline(run: dict) -> None:
    result = run["result"]
    dashboard = Dashboard(open_journal(run["path"]))
    dashboard.open_page("optimization")
    assert dashboard.run_select.value == result.run_id
    children = open_journal(run["path"]).children(result.run_id)
    assert list(dashboard.timeline["experiment_id"]) == [child.id for child in children]
    assert f'data-bars="{len(children)}"' in dashboard.timeline_note.object
    timeline = dashboard.timeline_plot.object
    assert sum(len(element) for element in timeline) == len(children)
    history = dashboard.history_plot.object
    labels = [element.label for element in history]
    assert labels[:4] == [
        "best so far: interval", "best so far (validation mean)", "screening (mini-batch mean)", "validation (mean)",
    ]  # fmt: skip
    baseline = next(element for element in history if element.label == "baseline (validation mean)")
    expected = history_data(result.steps, result.candidates).baseline
    assert list(baseline.dframe()["baseline"]) == pytest.approx([expected, expected])
    # Whole steps only on the history's axis, and a transparent ground that follows the page's theme.
    figure = hv.render(history, backend="bokeh")
    assert figure.xaxis[0].ticker.min_interval == 1 and figure.background_fill_alpha == 0.0
    assert not math.isnan(expected)


def test_no_run_clears_the_page(run: dict) -> None:
    dashboard = Dashboard(open_journal(run["path"]))
    dashboard.open_page("optimization")
    dashboard.run_select.value = None
    assert dashboard.timeline.empty
    assert dashboard.timeline_plot.object is None and dashboard.history_plot.object is None
    assert dashboard.timeline_note.object == ""


def test_history_plot_draws_a_run_before_its_first_step(run: dict) -> None:
    empty = history_data(pd.DataFrame(), pd.DataFrame())
    assert empty.points.empty and math.isnan(empty.baseline)
    hv.render(history_plot(empty), backend="bokeh")


def test_a_run_with_no_nested_evaluation_has_no_bars() -> None:
    assert timeline_frame(memory_journal(), "no-such-run").empty
