"""Experiments are named by id or by name through one rule (session.resolve_experiment)."""

from __future__ import annotations

import pytest

import dspex_lab as dx
from dspex_lab.errors import JournalError
from dspex_lab.journal import memory_journal
from dspex_lab.session import experiment_record, resolve_experiment

QA = dx.Program("dspy.Predict", signature="question -> answer")
DATA = dx.Dataset(dx.datasets.arithmetic(2, seed=0))


def add(journal, kind: str, name: str, *, parent_id: str | None = None) -> str:
    record = experiment_record(
        kind,
        name,
        program=QA,
        data=DATA,
        metric="exact_match",
        config={},
        parent_id=parent_id,
        role="candidate" if parent_id else None,
    )
    return journal.create_experiment(record)


def test_an_id_wins_over_a_name():
    journal = memory_journal()
    first = add(journal, "evaluation", "base")
    add(journal, "evaluation", first)  # named like the first one's id
    assert resolve_experiment(journal, first) == first
    assert resolve_experiment(journal, "base") == first


def test_the_callers_kind_and_top_level_runs_are_preferred():
    journal = memory_journal()
    run = add(journal, "optimization", "qa")
    evaluation = add(journal, "evaluation", "qa")
    add(journal, "evaluation", "qa", parent_id=run)  # a candidate of the run, named alike
    assert resolve_experiment(journal, "qa", kinds=("optimization",)) == run
    assert resolve_experiment(journal, "qa", kinds=("evaluation",)) == evaluation
    with pytest.raises(JournalError, match="2 experiments are named 'qa'"):  # the candidate is not counted
        resolve_experiment(journal, "qa")
    # A name of another kind only still resolves: the caller says what that experiment is.
    only = add(journal, "optimization", "tuned")
    assert resolve_experiment(journal, "tuned", kinds=("evaluation",)) == only


def test_an_ambiguous_name_lists_the_newest_five_and_counts_the_rest():
    journal = memory_journal()
    ids = [add(journal, "evaluation", "again") for _ in range(7)]
    with pytest.raises(JournalError) as caught:
        resolve_experiment(journal, "again")
    message = str(caught.value)
    assert message.startswith("7 experiments are named 'again' in an in-memory journal")
    assert message.endswith(" and 2 more; name one by its id")
    assert sum(experiment_id in message for experiment_id in ids) == 5
    assert "(evaluation, running, started " in message


def test_an_unknown_name_suggests_close_ones_and_a_bad_one_is_refused():
    journal = memory_journal()
    add(journal, "evaluation", "qa-base")
    with pytest.raises(JournalError, match=r"no experiment 'qa-bse' in .*, by id or by name; close names: 'qa-base'$"):
        resolve_experiment(journal, "qa-bse")
    with pytest.raises(JournalError, match=r"^no experiment 'zzz' in an in-memory journal .*, by id or by name$"):
        resolve_experiment(journal, "zzz")
    for bad in ("", "  ", None, 3):
        with pytest.raises(JournalError, match="an experiment is named by its id or name"):
            resolve_experiment(journal, bad)  # type: ignore[arg-type]


def test_dx_load_takes_a_name():
    with dx.Context(lm=dx.lab_lm(), journal=False):
        result = dx.evaluate(QA, DATA, metric=dx.metrics.exact_match, name="named", progress=False)
        assert dx.load("named").experiment_id == result.experiment_id
        with pytest.raises(JournalError, match="no experiment 'unnamed' in "):
            dx.load("unnamed")
