"""``Dataset.from_journal``: a run's examples back from the journal, filtered and corrected by annotations."""

from __future__ import annotations

import pytest

import dspex_lab as dx
from dspex_lab.data._annotation_filter import AnnotationState, parse_where
from dspex_lab.errors import DatasetError, JournalError

NONE = AnnotationState(label=None, annotated=False, corrected=False)
NOTE_ONLY = AnnotationState(label=None, annotated=True, corrected=False)
WRONG = AnnotationState(label="wrong gold", annotated=True, corrected=True)
QUOTED = AnnotationState(label="it's fine", annotated=True, corrected=False)


@pytest.mark.parametrize(
    ("where", "kept"),
    [
        ("label = 'wrong gold'", [WRONG]),
        ("LABEL = 'wrong gold'", [WRONG]),
        ("label != 'wrong gold'", [QUOTED]),
        ("label <> 'wrong gold'", [QUOTED]),
        ("label = 'it''s fine'", [QUOTED]),
        ("label in ('wrong gold', 'it''s fine')", [WRONG, QUOTED]),
        ("label not in ('wrong gold')", [QUOTED]),
        ("annotated", [NOTE_ONLY, WRONG, QUOTED]),
        ("not annotated", [NONE]),
        ("corrected", [WRONG]),
        ("not annotated or label != 'wrong gold'", [NONE, QUOTED]),
        ("annotated and not (label = 'wrong gold' or label = 'it''s fine')", [NOTE_ONLY]),
        ("not not corrected", [WRONG]),
    ],
)
def test_the_where_grammar_keeps_what_it_says(where, kept):
    keep = parse_where(where)
    assert [state for state in (NONE, NOTE_ONLY, WRONG, QUOTED) if keep(state)] == kept


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("label = wrong", "unknown word 'wrong' (labels are quoted: 'like this') at character 9"),
        ("label == 'x'", "expected a quoted label such as 'wrong gold', found '=' at character 8"),
        ("label = 'x'; DROP TABLE annotations", "unexpected ';' at character 12"),
        ("label = 'x' --", "unexpected '-' at character 13"),
        ("label in ()", "found ')' at character 11"),
        ("(annotated", "expected ')', found the end at character 11"),
        ("annotated or", "expected label, annotated, corrected, not or '(', found the end"),
        ("annotated label = 'x'", "expected and, or or the end, found 'label' at character 11"),
        ("label = 'open", "a quoted label that is never closed at character 9"),
        ("label", "expected =, !=, in or not in after label, found the end"),
        ("   ", "where is empty"),
        ("annotated or " * 200 + "annotated", "at most 2000"),
    ],
)
def test_a_where_outside_the_grammar_is_refused_saying_where(where, message):
    with pytest.raises(DatasetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_where(where)


@pytest.fixture
def annotated_run(tmp_path) -> tuple[dx.journal.DuckDBJournal, str, dx.Dataset]:
    """An evaluation of eight problems journaled to a file, its first three trials annotated."""
    data = dx.Dataset(dx.datasets.arithmetic(8, seed=5), name="eight")
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=tmp_path / "j.duckdb", threads=2):
        result = dx.evaluate(
            dx.Program("dspy.Predict", signature="question -> answer"), data, metric=dx.metrics.exact_match,
            name="plain", progress=False,
        )  # fmt: skip
    journal = dx.open_journal(tmp_path / "j.duckdb")
    run = str(result.experiment_id)
    first, second, third = data.example_ids[:3]
    journal.annotate(run, f"{first}/r0", label="wrong gold", corrected_gold={"answer": "-1"})
    journal.annotate(run, f"{second}/r0", label="wrong gold")
    journal.annotate(run, f"{second}/r0", label="ok")  # supersedes "wrong gold"
    journal.annotate(run, f"{third}/r0", note="only a note")
    return journal, run, data


def test_a_run_comes_back_with_its_ids_and_its_corrected_gold(annotated_run):
    journal, run, data = annotated_run
    everything = dx.Dataset.from_journal(journal, run)
    assert everything.example_ids == data.example_ids and everything.inputs == data.inputs
    assert everything.name == "eight"
    assert everything[0].answer == "-1" and everything[0].question == data[0].question
    assert [example.answer for example in everything][1:] == [example.answer for example in data][1:]
    assert everything[0].inputs().keys() == ["question"]


def test_where_picks_examples_by_their_annotation_in_force(annotated_run):
    journal, run, data = annotated_run
    ids = data.example_ids
    wrong = dx.Dataset.from_journal(journal.path, run, where="label = 'wrong gold'", name="to fix")
    assert wrong.example_ids == (ids[0],) and wrong.name == "to fix" and wrong[0].answer == "-1"
    assert dx.Dataset.from_journal(journal, run, where="annotated").example_ids == ids[:3]
    assert dx.Dataset.from_journal(journal, run, where="not annotated").example_ids == ids[3:]
    kept = dx.Dataset.from_journal(journal, run, where="not annotated or label != 'wrong gold'")
    assert kept.example_ids == (ids[1], *ids[3:])  # the third has a note and no label: no label to compare
    assert len(dx.Dataset.from_journal(journal, run, where="label = 'nobody wrote this'")) == 0
    assert journal.annotations().shape[0] == 4  # reading changed nothing


def test_a_bad_where_fails_before_the_journal_is_read_and_an_unstored_run_says_why(tmp_path):
    with pytest.raises(DatasetError, match="unknown word 'drop'"):
        dx.Dataset.from_journal(tmp_path / "never-made.duckdb", "run", where="drop table trials")
    assert not (tmp_path / "never-made.duckdb").exists()
    journal = dx.journal.memory_journal()
    journal.create_experiment(dx.journal.ExperimentRecord(kind="evaluation", name="big", id="big"))
    with pytest.raises(DatasetError, match="the examples of run 'big' are not in an in-memory journal"):
        dx.Dataset.from_journal(journal, "big")
    with pytest.raises(JournalError, match="no experiment 'nope'"):
        dx.Dataset.from_journal(journal, "nope")
    with pytest.raises(TypeError, match="needs a journal or a journal file's path, got int"):
        dx.Dataset.from_journal(3, "big")


def test_a_withdrawn_annotation_no_longer_picks_its_example(annotated_run):
    journal, run, data = annotated_run
    first = data.example_ids[0]
    journal.annotate(run, f"{first}/r0", withdraw=True)
    assert dx.Dataset.from_journal(journal, run, where="label = 'wrong gold'").example_ids == ()
    everything = dx.Dataset.from_journal(journal, run)
    assert everything[0].answer == data[0].answer  # its corrected gold was withdrawn with it


def test_an_optimization_run_reads_the_annotations_of_its_nested_evaluations(tmp_path):
    pytest.importorskip("optuna")
    from oracle import oracle_program

    examples = dx.datasets.arithmetic(50, seed=3)
    path = tmp_path / "j.duckdb"
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=path, threads=1):
        result = dx.optimize(
            oracle_program(), examples[:10], examples[10:], metric=dx.metrics.exact_match,
            optimizer=dx.OptunaSearch("random", n_trials=3), seed=0, progress=False,
        )  # fmt: skip
    journal = dx.open_journal(path)
    children = {child.role: child for child in journal.children(result.run_id)}
    baseline, confirmation = children["baseline"], children["confirmation"]
    on_val = journal.trial_rows(baseline.id, columns=["trial_id", "example_id"])[0]
    on_confirm = journal.trial_rows(confirmation.id, columns=["trial_id", "example_id"])[0]
    journal.annotate(baseline.id, on_val["trial_id"], label="wrong gold", corrected_gold={"answer": "-7"})
    journal.annotate(confirmation.id, on_confirm["trial_id"], label="wrong gold")

    wrong = dx.Dataset.from_journal(journal, result.run_id, where="label = 'wrong gold'")
    assert wrong.example_ids == (on_val["example_id"], on_confirm["example_id"])
    assert wrong[0].answer == "-7" and wrong.name == f"run {result.run_id}"
    # Unfiltered: every example the run's evaluations were given (its valset's and its confirmation set's),
    # each once; here the trainset was never evaluated, so it was never stored.
    everything = dx.Dataset.from_journal(journal, result.run_id)
    stored = {row["example_id"] for child in children.values() for row in journal.trial_rows(child.id)}
    assert set(everything.example_ids) == stored and len(everything) == 40
    # The nested evaluation alone reads as before.
    assert dx.Dataset.from_journal(journal, baseline.id, where="annotated").example_ids == (on_val["example_id"],)


def test_two_datasets_of_a_run_with_one_id_for_different_examples_are_refused_by_name():
    journal = dx.journal.memory_journal()
    record = dx.journal.ExperimentRecord
    journal.create_experiment(record(kind="optimization", name="run", id="run"))
    for child, answer in (("on-val", "2"), ("on-test", "3")):
        stored = (("q1", {"fields": {"question": "1+1?", "answer": answer}, "inputs": ["question"]}),)
        journal.create_experiment(
            record(
                kind="evaluation", name=child, id=child, parent_id="run", role="candidate-validation",
                dataset_fingerprint=f"fingerprint-{child}", examples=stored,
            )
        )  # fmt: skip
    with pytest.raises(DatasetError, match="hold two different examples with id 'q1'; read one of its evaluations"):
        dx.Dataset.from_journal(journal, "run")
    assert dx.Dataset.from_journal(journal, "on-test")[0].answer == "3"
