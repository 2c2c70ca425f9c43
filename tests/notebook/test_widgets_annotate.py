"""ExperimentBrowser's annotation form through its Python state and the message its Annotate button sends:
the trial rows' labels, the write through ``journal.annotate`` and the one line a refused annotation shows."""

from __future__ import annotations

import getpass
from typing import Any

import pytest

import dspex_lab as dx

pytest.importorskip("anywidget")

from dspex_lab.journal import ANNOTATION_BOUNDS

PREDICT = dx.Program("dspy.Predict", signature="question -> answer", name="predict")


def front_end_message(widget: Any, content: dict[str, Any]) -> None:
    """Deliver a custom message as the front end's ``model.send(content)`` does."""
    widget._handle_msg({"content": {"data": {"method": "custom", "content": content}}, "buffers": []})


def front_end_update(widget: Any, **state: Any) -> None:
    """Deliver a state change as the front end's ``model.set(...); model.save_changes()`` does."""
    widget._handle_msg({"content": {"data": {"method": "update", "state": state, "buffer_paths": []}}, "buffers": []})


@pytest.fixture
def browser(journal_path) -> dx.ExperimentBrowser:
    """A browser over one untraced evaluation of five arithmetic problems, that experiment selected."""
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=journal_path, threads=1):
        result = dx.evaluate(PREDICT, dx.datasets.arithmetic(5, seed=3), metric=dx.metrics.exact_match, progress=False)
    opened = dx.ExperimentBrowser(journal_path)
    opened.select_experiment(result.experiment_id)
    return opened


def test_the_annotate_button_writes_through_the_journal_and_the_row_shows_the_label(browser) -> None:
    assert browser.tables.label_presets[:3] == ["good", "wrong gold", "ambiguous"]
    assert {row["label"] for row in browser.trials} == {""}
    trial_id = browser.trials[1]["trial_id"]
    front_end_update(browser.tables, selected_trial=trial_id)
    front_end_message(browser.tables, {"type": "annotate", "label": "ambiguous", "note": "two readings", "gold": "7"})
    experiment_id = browser.tables.selected_experiment
    [row] = browser.journal.annotation_rows(experiment_id)
    assert (row["trial_id"], row["label"], row["note"]) == (trial_id, "ambiguous", "two readings")
    assert row["corrected_gold"] == {"answer": "7"} and row["author"] == getpass.getuser()
    assert next(trial for trial in browser.trials if trial["trial_id"] == trial_id)["label"] == "ambiguous"
    assert browser.tables.annotation_message.startswith(f"annotated trial {trial_id} with label 'ambiguous'")
    # A later annotation supersedes it in the row; a note alone leaves the trial without a label.
    assert browser.annotate_selected(note="checked again").endswith("with a note")
    assert next(trial for trial in browser.trials if trial["trial_id"] == trial_id)["label"] == "(note)"
    front_end_update(browser.tables, selected_trial=browser.trials[0]["trial_id"])
    assert browser.tables.annotation_message == ""  # another trial's form starts blank


def test_a_refused_annotation_is_one_line_in_the_widget_and_writes_nothing(browser) -> None:
    experiment_id = browser.tables.selected_experiment
    front_end_message(browser.tables, {"type": "annotate", "label": "good"})
    assert browser.tables.annotation_message == "not annotated: select a trial before annotating it"
    front_end_update(browser.tables, selected_trial=browser.trials[0]["trial_id"])
    too_long = "x" * (ANNOTATION_BOUNDS["note"] + 1)
    front_end_message(browser.tables, {"type": "annotate", "label": "good", "note": too_long})
    message = browser.tables.annotation_message
    assert message.startswith("not annotated:") and "note" in message and "\n" not in message
    front_end_message(browser.tables, {"type": "annotate", "label": " ", "note": "", "gold": ""})
    assert "empty" in browser.tables.annotation_message
    front_end_message(browser.tables, {"type": "annotate", "gold": '{"question": "1 + 1"}'})
    assert browser.tables.annotation_message.startswith("not annotated:")
    assert "question" in browser.tables.annotation_message
    assert browser.journal.annotation_rows(experiment_id) == []
    with pytest.raises(dx.errors.JournalError, match="empty"):
        browser.annotate_selected()


def test_the_withdraw_button_withdraws_the_label_in_force(browser) -> None:
    experiment_id = browser.tables.selected_experiment
    trial_id = browser.trials[2]["trial_id"]
    front_end_update(browser.tables, selected_trial=trial_id)
    front_end_message(browser.tables, {"type": "withdraw"})
    assert browser.tables.annotation_message.startswith("not withdrawn: trial")
    assert "was never annotated" in browser.tables.annotation_message
    browser.annotate_selected(label="wrong gold")

    front_end_message(browser.tables, {"type": "withdraw"})
    assert browser.tables.annotation_message == f"withdrew the annotation of trial {trial_id}: it has none in force"
    assert next(trial for trial in browser.trials if trial["trial_id"] == trial_id)["label"] == ""
    assert [row["label"] for row in browser.journal.annotation_rows(experiment_id)] == ["wrong gold", None]
    front_end_update(browser.tables, selected_trial="")
    with pytest.raises(dx.errors.JournalError, match="select a trial before withdrawing its annotation"):
        browser.withdraw_selected()
