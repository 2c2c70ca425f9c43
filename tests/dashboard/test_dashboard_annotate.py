"""Annotating a trial from the dashboard's trace page (through the panel objects): the label column,
the form's write through ``journal.annotate``, and the one line a refused annotation shows."""

from __future__ import annotations

import getpass

import pytest

import dspex_lab as dx

pytest.importorskip("panel")

from dspex_lab.journal import ANNOTATION_BOUNDS, open_journal
from dspex_lab.notebook._dashboard import Dashboard

PROBLEMS = 6


@pytest.fixture
def dashboard(tmp_path) -> Dashboard:
    """A dashboard's trace page over a journal holding one untraced evaluation of six arithmetic problems."""
    path = tmp_path / "journal.duckdb"
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=path, threads=1):
        program = dx.Program("dspy.Predict", signature="question -> answer", name="qa")
        data = list(dx.datasets.arithmetic(PROBLEMS, seed=4))
        dx.evaluate(program, data, metric=dx.metrics.exact_match, progress=False)
    board = Dashboard(open_journal(path))
    board.open_page("trace")
    return board


def _fill(board: Dashboard, *, label: str = "", note: str = "", gold: str = "") -> None:
    for widget, text in ((board.annotation_label, label), (board.annotation_note, note), (board.annotation_gold, gold)):
        widget.value = widget.value_input = text


def test_the_form_annotates_the_selected_trial_and_the_table_shows_its_label(dashboard) -> None:
    table = dashboard.trial_table.value
    assert "label" in table.columns and set(table["label"]) == {""}
    dashboard.trial_table.selection = [2]
    trial_id = str(dashboard.trials.iloc[2]["trial_id"])
    assert dashboard.annotation_title.object == f"#### Annotate {trial_id} (not annotated)"
    dashboard.annotation_preset.value = "wrong gold"
    assert dashboard.annotation_label.value_input == "wrong gold"
    _fill(dashboard, label="wrong gold", note="the sum is off by one", gold="42")
    dashboard.annotate_selected()
    experiment_id = dashboard.trace_experiment.value
    [row] = dashboard.journal.annotation_rows(experiment_id)
    assert (row["trial_id"], row["label"], row["note"]) == (trial_id, "wrong gold", "the sum is off by one")
    assert row["corrected_gold"] == {"answer": "42"} and row["author"] == getpass.getuser()
    assert dashboard.trial_table.value["label"].tolist()[2] == "wrong gold"
    assert dashboard.trial_table.selection == [2]
    assert dashboard.annotation_title.object.endswith("(its label now: wrong gold)")
    assert dashboard.annotation_message.object.startswith(f"annotated trial {trial_id} with label")
    assert dashboard.annotation_note.value_input == "" and dashboard.annotation_gold.value_input == ""


def test_a_refused_annotation_is_one_line_and_writes_nothing(dashboard) -> None:
    dashboard.trial_table.selection = [0]
    experiment_id = dashboard.trace_experiment.value
    _fill(dashboard, label="x" * (ANNOTATION_BOUNDS["label"] + 1))
    dashboard.annotate_selected()
    message = dashboard.annotation_message.object
    assert message.startswith("Not annotated:") and "label" in message and "\n" not in message
    _fill(dashboard)
    dashboard.annotate_selected()
    assert "empty" in dashboard.annotation_message.object
    assert dashboard.journal.annotation_rows(experiment_id) == []
    dashboard.trial_table.selection = []
    dashboard.annotate_selected()
    assert dashboard.annotation_message.object == "Select a trial to annotate."


def test_an_annotation_written_by_another_writer_shows_at_the_next_refresh(dashboard, tmp_path) -> None:
    dashboard.trial_table.selection = [1]
    trial_id = str(dashboard.trials.iloc[1]["trial_id"])
    experiment_id = dashboard.trace_experiment.value
    open_journal(tmp_path / "journal.duckdb").annotate(experiment_id, trial_id, label="ambiguous", author="ana")
    assert dashboard.trial_table.value["label"].tolist()[1] == ""
    assert dashboard.refresh()  # the journal file changed: the finished experiment's labels are read again
    assert dashboard.trial_table.value["label"].tolist()[1] == "ambiguous"
    assert dashboard.trial_table.selection == [1]
    assert dashboard.annotation_title.object == f"#### Annotate {trial_id} (its label now: ambiguous)"


def test_the_withdraw_button_leaves_the_trial_with_no_label_and_keeps_the_history(dashboard) -> None:
    dashboard.trial_table.selection = [1]
    trial_id = str(dashboard.trials.iloc[1]["trial_id"])
    experiment_id = dashboard.trace_experiment.value
    dashboard.withdraw_selected()
    assert dashboard.annotation_message.object.startswith("Not withdrawn:")
    assert "there is no annotation in force to withdraw" in dashboard.annotation_message.object
    _fill(dashboard, label="ambiguous")
    dashboard.annotate_selected()
    assert dashboard.trial_table.value["label"].tolist()[1] == "ambiguous"

    dashboard.withdraw_selected()
    assert dashboard.annotation_message.object == f"withdrew the annotation of trial {trial_id}: it has none in force"
    assert dashboard.trial_table.value["label"].tolist()[1] == "" and dashboard.trial_table.selection == [1]
    assert dashboard.annotation_title.object == f"#### Annotate {trial_id} (not annotated)"
    history = dashboard.journal.annotation_rows(experiment_id)
    assert [(row["label"], row["author"]) for row in history] == [
        ("ambiguous", getpass.getuser()),
        (None, getpass.getuser()),
    ]
    dashboard.trial_table.selection = []
    dashboard.withdraw_selected()
    assert dashboard.annotation_message.object == "Select a trial whose annotation to withdraw."
