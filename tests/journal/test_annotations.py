"""Annotations of trials (schema 8): the table, its migration, the journal calls, and their bounds."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from journal_files import layout, unpacked
from journal_rows import trial_row

import dspex_lab as dx
from dspex_lab.errors import JournalError
from dspex_lab.journal import SCHEMA_VERSION, ExperimentRecord, JournalStore, memory_journal
from dspex_lab.journal._annotations import (
    ANNOTATION_COLUMNS,
    MAX_GOLD_BYTES,
    MAX_LABEL,
    MAX_NOTE,
    annotation_record,
    is_withdrawal,
)

FIXTURES = Path(__file__).with_name("fixtures")


# -- the migration ----------------------------------------------------------------------------------


def test_a_version_7_journal_migrates_to_the_layout_of_a_new_one_and_keeps_its_trials(tmp_path):
    migrated_path = unpacked(7, tmp_path)
    with duckdb.connect(str(migrated_path), read_only=True) as connection:
        assert connection.execute("SELECT value FROM dspex_meta").fetchall() == [("7",)]
        before = connection.execute("SELECT trial_id, score, prediction FROM trials ORDER BY trial_id").fetchall()
    assert len(before) == 8
    migrated = dx.open_journal(migrated_path)
    assert SCHEMA_VERSION == 8
    assert migrated.sql("select value from dspex_meta where key = 'schema_version'")["value"][0] == "8"
    after = migrated.sql("select trial_id, score, prediction, feedback from trials order by trial_id")
    assert [tuple(row[:3]) for row in after.itertuples(index=False)] == before
    assert after["feedback"].isna().all()
    assert migrated.annotations().empty
    trial = after["trial_id"][0]
    migrated.annotate(migrated.experiment_summaries()[0].id, trial, label="checked", author="migration test")
    assert list(migrated.annotations()["trial_id"]) == [trial]

    # A new journal written by the same code as the fixture: the same tables, columns, order and keys.
    sys.path.insert(0, str(FIXTURES))
    try:
        from make_journal_v7 import write
    finally:
        sys.path.remove(str(FIXTURES))
    new_path = tmp_path / "new.duckdb"
    write(new_path)
    assert len(dx.open_journal(new_path).experiment_summaries()) == 1  # written, and its file closed
    assert layout(migrated_path) == layout(new_path)


# -- the journal calls, on both stores --------------------------------------------------------------


@pytest.fixture(params=["duckdb", "memory"])
def annotated(request, tmp_path) -> tuple[JournalStore, str]:
    """A store with one evaluation of three examples (e1 repeated) and its stored examples."""
    store = dx.open_journal(tmp_path / "journal.duckdb") if request.param == "duckdb" else memory_journal()
    examples = tuple(
        (f"e{index}", {"fields": {"question": f"{index}+{index}?", "answer": str(2 * index)}, "inputs": ["question"]})
        for index in range(3)
    )
    record = ExperimentRecord(kind="evaluation", name="run", id="run", dataset_fingerprint="fp", examples=examples)
    store.create_experiment(record)
    rows = [trial_row("e0", 0), trial_row("e1", 1), trial_row("e1", 1, repeat=1), trial_row("e2", 2, score=0.0)]
    store.append_trials("run", rows)
    return store, "run"


def test_a_later_annotation_supersedes_an_earlier_one_and_the_history_stays(annotated):
    store, run = annotated
    first = store.annotate(run, "e1/r0", label="wrong gold", corrected_gold={"answer": "3"}, author="ana")
    second = store.annotate(run, "e1/r0", note="gold was right after all", author="bo")
    other = store.annotate(run, "e2/r0", label="ambiguous")
    history = store.annotation_rows(run)
    assert [row["id"] for row in history] == [first, second, other]
    assert history[0]["corrected_gold"] == {"answer": "3"} and history[0]["example_id"] == "e1"
    assert (history[1]["label"], history[1]["author"]) == (None, "bo")
    assert history[2]["author"]  # the operating system's user name by default
    current = store.annotation_rows(run, current=True)
    assert [(row["trial_id"], row["label"], row["note"]) for row in current] == [
        ("e1/r0", None, "gold was right after all"),
        ("e2/r0", "ambiguous", None),
    ]
    frame = store.annotations(run, current=True)
    assert list(frame.columns) == list(ANNOTATION_COLUMNS) and list(frame["id"]) == [second, other]
    assert pd.api.types.is_datetime64_any_dtype(frame["created_at"])
    assert store.annotations().shape == (3, len(ANNOTATION_COLUMNS))
    assert store.annotations("no-such-run").empty


def test_writing_the_same_annotation_record_again_changes_nothing(annotated):
    store, run = annotated
    record = annotation_record(run, "e0/r0", label="typo in question")
    assert store.record_annotation(record) == store.record_annotation(record) == record["id"]
    assert [row["id"] for row in store.annotation_rows(run)] == [record["id"]]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"trial_id": "e9/r0", "label": "x"}, "no trial 'e9/r0' in experiment 'run'"),
        ({"label": None}, "is empty: give a label, a note or a corrected gold"),
        ({"label": "x" * (MAX_LABEL + 1)}, f"label is {MAX_LABEL + 1} characters; at most {MAX_LABEL}"),
        ({"note": "n" * (MAX_NOTE + 1)}, f"note is {MAX_NOTE + 1} characters; at most {MAX_NOTE}"),
        ({"label": 3}, "label must be text, got int"),
        ({"corrected_gold": "4"}, "corrected_gold must be a mapping"),
        ({"corrected_gold": {"answer": "x" * MAX_GOLD_BYTES}}, f"at most {MAX_GOLD_BYTES} are kept"),
        ({"corrected_gold": {"answer": float("nan")}}, "JSON values only"),
        ({"corrected_gold": {"question": "3+3?"}}, "names the input field(s) ['question'] of example 'e1'"),
        ({"label": "x", "author": ""}, "author must be non-empty"),
    ],
)
def test_a_bad_annotation_is_refused_with_what_is_wrong(annotated, options, message):
    store, run = annotated
    arguments = {"trial_id": "e1/r0", **options}
    with pytest.raises(JournalError, match=re.escape(message)):
        store.annotate(run, arguments.pop("trial_id"), **arguments)
    assert store.annotation_rows() == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"note": "n" * (MAX_NOTE + 1)}, "note is 4001 characters"),
        ({"id": "'; DROP TABLE trials; --"}, "annotation id must be 32 lowercase hex digits"),
        ({"corrected_gold": "[1, 2]"}, "corrected_gold must be a JSON object"),
        ({"author": ""}, "an annotation needs an author"),
        # Nothing recorded is a withdrawal, and this trial has no annotation in force to withdraw.
        ({"label": None}, "trial 'e0/r0' of experiment 'run' was never annotated: there is no annotation in force"),
        ({"extra": 1}, "has exactly the fields"),
    ],
)
def test_a_record_written_directly_is_checked_as_annotate_checks_it(annotated, change, message):
    # What another process sends through the journal service reaches record_annotation, not annotate.
    store, run = annotated
    record = {**annotation_record(run, "e0/r0", label="x"), **change}
    with pytest.raises(JournalError, match=re.escape(message)):
        store.record_annotation(record)
    assert store.annotation_rows() == []


def test_a_withdrawal_leaves_the_trial_with_no_annotation_in_force_and_stays_in_the_history(annotated):
    store, run = annotated
    first = store.annotate(run, "e1/r0", label="wrong gold", corrected_gold={"answer": "3"}, author="ana")
    store.annotate(run, "e2/r0", label="ambiguous")
    withdrawal = store.annotate(run, "e1/r0", withdraw=True, author="bo")

    assert [row["trial_id"] for row in store.annotation_rows(run, current=True)] == ["e2/r0"]
    assert list(store.annotations(run, current=True)["trial_id"]) == ["e2/r0"]
    history = store.annotation_rows(run)
    assert [row["id"] for row in history] == [first, history[1]["id"], withdrawal]
    withdrawn = history[2]
    assert (withdrawn["trial_id"], withdrawn["example_id"], withdrawn["author"]) == ("e1/r0", "e1", "bo")
    assert is_withdrawal(withdrawn) and not is_withdrawal(history[0])
    # Annotated again, the trial has that annotation in force.
    again = store.annotate(run, "e1/r0", label="good")
    assert [row["id"] for row in store.annotation_rows(run, current=True)] == [history[1]["id"], again]


@pytest.mark.parametrize(
    ("first", "options", "message"),
    [
        (None, {}, "trial 'e1/r0' of experiment 'run' was never annotated: there is no annotation in force"),
        ("withdrawn", {}, "has its annotation withdrawn already: there is no annotation in force"),
        ("annotated", {"label": "x"}, "withdrawing the annotation of trial 'e1/r0' takes no label, note or corrected"),
        ("annotated", {"note": "because"}, "takes no label, note or corrected gold"),
        ("annotated", {"withdraw": 1}, "annotate(withdraw=...) must be True or False, got 1"),
    ],
)
def test_a_withdrawal_is_refused_with_what_is_wrong(annotated, first, options, message):
    store, run = annotated
    if first is not None:
        store.annotate(run, "e1/r0", label="wrong gold")
    if first == "withdrawn":
        store.annotate(run, "e1/r0", withdraw=True)
    written = store.annotation_rows(run)
    with pytest.raises(JournalError, match=re.escape(message)):
        store.annotate(run, "e1/r0", **{"withdraw": True, **options})
    assert store.annotation_rows(run) == written


def test_writing_the_same_withdrawal_again_changes_nothing(annotated):
    # The journal service may retry a write: the withdrawal already written is not refused as a second one.
    store, run = annotated
    store.annotate(run, "e0/r0", label="typo in question")
    record = annotation_record(run, "e0/r0", withdraw=True)
    assert store.record_annotation(record) == store.record_annotation(record) == record["id"]
    assert len(store.annotation_rows(run)) == 2 and store.annotation_rows(run, current=True) == []


def test_a_gold_correction_at_the_bounds_is_kept(annotated):
    store, run = annotated
    padding = MAX_GOLD_BYTES - len(json.dumps({"answer": ""}))
    store.annotate(run, "e1/r1", label="l" * MAX_LABEL, note="n" * MAX_NOTE, corrected_gold={"answer": "a" * padding})
    (row,) = store.annotation_rows(run)
    assert len(row["corrected_gold"]["answer"]) == padding and row["trial_id"] == "e1/r1"


_ANNOTATE_THROUGH_SERVICE = """
import sys
import dspex_lab as dx
from dspex_lab.journal._annotations import annotation_record
journal = dx.open_journal(sys.argv[1], lock_timeout=30)
record = annotation_record("run", "e2/r0", label="through the service", author="remote")
# The service may retry a write: the same record twice is one annotation.
print(journal.record_annotation(record), journal.record_annotation(record))
print(journal.annotate("run", "e0/r0", note="second"))
"""


def test_another_process_annotates_through_the_serving_process(tmp_path):
    store = dx.open_journal(tmp_path / "journal.duckdb")
    store.create_experiment(ExperimentRecord(kind="evaluation", name="run", id="run"))
    store.append_trials("run", [trial_row("e0", 0), trial_row("e2", 2)])
    with store.hold():
        assert store.annotation_rows() == []  # this process now holds the file and serves it
        completed = subprocess.run(
            [sys.executable, "-c", _ANNOTATE_THROUGH_SERVICE, str(store.path)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert completed.returncode == 0, completed.stderr
    first, again, second = completed.stdout.split()
    assert first == again
    rows = store.annotation_rows("run")
    assert (rows[0]["id"], rows[0]["label"], rows[0]["author"]) == (first, "through the service", "remote")
    assert [row["id"] for row in rows] == [first, second]
