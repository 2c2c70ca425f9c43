"""The experiment object: start, run, nest, resume, finish; and the one resume rule."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

import dspex_lab as dx
from dspex_lab.engine import RetryPolicy, RunPolicy, ThreadExecutor, TrialRunner
from dspex_lab.errors import DspexLabWarning, ExecutionError, JournalError, OptimizerError
from dspex_lab.session import Experiment, check_resumable, experiment_record, identity, metric_name, plan_trials

PROGRAM = dx.Program("dspy.Predict", signature="question -> answer", name="predict")
OTHER = dx.Program("dspy.ChainOfThought", signature="question -> answer", name="cot")


@pytest.fixture(scope="module")
def data() -> dx.Dataset:
    return dx.Dataset(dx.datasets.arithmetic(12, seed=5), name="arith-12")


@pytest.fixture
def journal(journal_path: Path):
    return dx.open_journal(journal_path)


def record_of(data: dx.Dataset, program: dx.Program = PROGRAM, **changes):
    config = {"repeats": 1, "lm": "lab/small", "lm_state": None, **changes.pop("config", {})}
    return experiment_record(
        "evaluation",
        "exp",
        program=program,
        data=data,
        metric=metric_name(dx.metrics.exact_match),
        config=config,
        **changes,
    )


def run_some(experiment: Experiment, data: dx.Dataset, count: int | None = None, program: dx.Program = PROGRAM):
    lm = dx.lab_lm("lab/small")
    runner = TrialRunner(
        program.build(lm=lm), dx.metrics.exact_match, lm=lm, retry=RetryPolicy(), span_sink=experiment.span_sink
    )
    tasks = plan_trials(data, 1)[:count]
    return experiment.run(tasks, runner, executor=ThreadExecutor(4), policy=RunPolicy())


def test_a_started_experiment_records_its_trials_and_its_end(journal, data):
    record = record_of(data)
    with Experiment.start(journal, record) as experiment:
        report = run_some(experiment, data)
        assert report.status == "finished"
        experiment.finish("finished", summary={"n": 12})
    stored = journal.experiment(record.id)
    assert stored["status"] == "finished" and stored["kind"] == "evaluation"
    assert journal.finished_keys(record.id) == set(experiment.recorded())
    assert len(experiment.recorded()) == 12
    assert list(experiment.trials()["example_id"]) == list(data.example_ids)


def test_resume_runs_only_the_missing_trials(journal, data):
    record = record_of(data)
    with Experiment.start(journal, record) as first:
        run_some(first, data, count=5)
        first.finish("interrupted")
    with Experiment.resume(journal, record.id, record_of(data)) as again:
        assert again.resumed and len(again.recorded()) == 5
        report = run_some(again, data)
        assert len(report.results) == 7  # the 5 recorded trials did not run again
        again.finish("finished")
    assert len(journal.finished_keys(record.id)) == 12
    assert len(again.trials()) == 12


@pytest.mark.parametrize(
    ("change", "what"),
    [
        (dict(program=OTHER), "program"),
        (dict(config={"repeats": 3}), "repeats"),
        (dict(config={"lm": "lab/large"}), "LM"),
    ],
)
def test_resume_refuses_another_run(journal, data, change, what):
    record = record_of(data)
    with Experiment.start(journal, record) as first:
        run_some(first, data, count=2)
        first.finish("interrupted")
    with pytest.raises(ExecutionError, match=f"cannot resume {record.id}: it ran with a different {what}"):
        Experiment.resume(journal, record.id, record_of(data, **change))
    assert journal.experiment(record.id)["status"] == "interrupted"  # nothing was claimed


def test_resume_refuses_a_running_or_unknown_experiment(journal, data):
    record = record_of(data)
    with Experiment.start(journal, record) as experiment:
        run_some(experiment, data, count=1)
    with pytest.raises(ExecutionError, match="still running"):
        Experiment.resume(journal, record.id, record)
    with pytest.raises(OptimizerError, match="cannot resume 'nope'"):
        Experiment.resume(journal, "nope", record, error=OptimizerError)


def test_a_finished_optimization_is_final(journal, data):
    record = dataclasses.replace(record_of(data), kind="optimization")
    with Experiment.start(journal, record) as run:
        run.finish("finished")
    with pytest.raises(OptimizerError, match=r"already finished; read it with dx\.OptimizationResult\.from_journal"):
        Experiment.resume(journal, record.id, record, error=OptimizerError)


def test_children_are_nested_created_with_their_first_trial_and_found_again_on_resume(journal, data):
    parent_record = dataclasses.replace(record_of(data), kind="optimization")
    with Experiment.start(journal, parent_record) as run:
        used = run.child(record_of(data, parent_id=parent_record.id, role="baseline"))
        unused = run.child(record_of(data, parent_id=parent_record.id, role="candidate-validation"))
        assert run.child(record_of(data, parent_id=parent_record.id, role="baseline", experiment_id=used.id)) is used
        run_some(used, data, count=4)
        run.finish("interrupted")
    children = journal.children(parent_record.id)
    assert [child.id for child in children] == [used.id]  # an evaluation that ran nothing left nothing
    assert children[0].role == "baseline" and journal.parent(used.id) == parent_record.id
    with Experiment.resume(journal, parent_record.id, parent_record) as again:
        assert again.has_child(used.id) and not again.has_child(unused.id)
        (found,) = again.children()
        assert set(found.recorded()) == set(used.recorded()) and len(found.recorded()) == 4


def test_record_keeps_the_first_of_a_trial_recorded_twice(journal, data):
    record = record_of(data)
    with Experiment.start(journal, record) as experiment:
        run_some(experiment, data, count=1)
        (row,) = experiment.recorded().values()
        experiment.record({**row, "score": 0.5})
        experiment.finish("finished")
    assert experiment.recorded()[(row["example_id"], 0)]["score"] == row["score"]
    assert len(journal.trial_rows(record.id)) == 1


def test_trials_the_journal_cannot_take_are_saved_aside_and_the_result_stands(journal, data, monkeypatch):
    record = record_of(data)
    experiment = Experiment.start(journal, record)
    run_some(experiment, data, count=3)

    def refuse(*arguments, **options):
        raise JournalError("disk full")

    monkeypatch.setattr(type(journal), "append_trials", refuse)
    monkeypatch.setattr(type(journal), "create_experiment", refuse)
    with pytest.warns(DspexLabWarning, match="could not be written.*disk full.*3 trials"):
        experiment.finish("finished")
    assert not experiment.saved and experiment.fallback is not None
    saved = [json.loads(line) for line in experiment.fallback.read_text().splitlines()]
    assert sorted(row["example_id"] for row in saved) == sorted(key for key, _ in experiment.recorded())
    assert experiment.fallback.stat().st_mode & 0o777 == 0o600
    assert len(experiment.trials()) == 3
    experiment.fallback.unlink()


def test_the_resume_rule_reads_new_and_stored_records_alike(journal, data):
    record = record_of(data)
    with Experiment.start(journal, record) as experiment:
        experiment.finish("finished")
    stored = journal.experiment(record.id)
    assert identity(stored) == identity(record)
    check_resumable(stored, record)  # the same run: no error
    live = dataclasses.replace(record, program_fingerprint=None)
    with pytest.raises(ExecutionError, match="a live DSPy module cannot be checked"):
        check_resumable(stored, live)
    older = {**stored, "metric": None, "config": {"repeats": 1}}  # written before metric and LM were recorded
    check_resumable(older, dataclasses.replace(record, metric="other"))


@pytest.mark.parametrize(
    ("raised", "status"), [(RuntimeError("workers would not start"), "failed"), (KeyboardInterrupt(), "interrupted")]
)
def test_an_experiment_left_by_an_exception_says_why_it_ended(journal, data, raised, status):
    record = record_of(data)
    with pytest.raises(type(raised)), Experiment.start(journal, record) as experiment:
        run_some(experiment, data, count=2)
        raise raised
    stored = journal.experiment(record.id)
    assert stored["status"] == status and stored["status_detail"].startswith(type(raised).__name__)
    assert len(journal.finished_keys(record.id)) == 2  # the trials recorded before it stay


def test_an_experiment_finished_before_an_exception_keeps_its_end(journal, data):
    record = record_of(data)
    with pytest.raises(RuntimeError), Experiment.start(journal, record) as experiment:
        experiment.finish("finished")
        raise RuntimeError("after the end")
    assert journal.experiment(record.id)["status"] == "finished"


def test_resuming_another_kind_names_both_kinds(journal, data):
    record = record_of(data)
    with Experiment.start(journal, record) as experiment:
        experiment.finish("interrupted")
    optimization = dataclasses.replace(record, kind="optimization")
    with pytest.raises(ExecutionError, match=r"it is an evaluation, not an optimization"):
        Experiment.resume(journal, record.id, optimization)


class _Graders:
    @staticmethod
    def strict(example, prediction):
        return example.answer == prediction.answer


class _Scorer:
    def __call__(self, example, prediction):
        return 1.0


def test_a_metric_is_recorded_under_its_qualified_name():
    assert metric_name(dx.metrics.exact_match) == "dspex_lab.metrics.exact_match"
    assert metric_name(_Graders.strict) == f"{__name__}._Graders.strict"
    assert metric_name(_Scorer()) == f"{__name__}._Scorer"
