import subprocess
import sys
import textwrap

import pytest

import dspex_lab as dx
from dspex_lab.errors import DspexLabWarning, JournalError
from dspex_lab.session import _records

PREDICT = dx.Program("dspy.Predict", signature="question -> answer", name="predict")
COT = dx.Program("dspy.ChainOfThought", signature="question -> answer", name="cot")


@pytest.fixture(scope="module")
def problems() -> dx.Dataset:
    return dx.Dataset(dx.datasets.arithmetic(40, seed=5), name="arith-40")


def test_load_rebuilds_the_result_the_run_returned(problems, journal_path):
    with dx.Context(lm="lab/small", journal=journal_path, threads=4):
        original = dx.evaluate(COT, problems, metric=dx.metrics.exact_match, progress=False, trace=True, repeats=2)
    loaded = dx.load(original.experiment_id, journal=journal_path)
    assert loaded.to_summary() | {"wall_seconds": None} == original.to_summary() | {"wall_seconds": None}
    assert loaded.wall_seconds == pytest.approx(original.wall_seconds)
    assert (loaded.name, loaded.status, loaded.metric) == ("cot", "finished", original.metric)
    assert loaded.program == COT.to_dict() and loaded.dataset == problems.manifest()
    assert list(loaded.table()["trial_id"]) == list(original.table()["trial_id"])
    assert loaded.traced and loaded.trace(loaded.table()["trial_id"].iloc[0]).to_text()
    assert "Trials and their traces" in loaded._repr_html_()


def test_load_defaults_to_the_context_journal(problems, journal_path):
    with dx.Context(lm="lab/small", journal=journal_path, threads=4):
        original = dx.evaluate(PREDICT, problems, metric=dx.metrics.exact_match, progress=False)
        loaded = dx.load(original.experiment_id)
    assert loaded.mean == pytest.approx(original.mean) and not loaded.traced
    # Without a journal file, the context's journal is an in-memory one, which never saw that run.
    with dx.Context(lm="lab/small", journal=False), pytest.raises(JournalError, match="in-memory journal"):
        dx.load(original.experiment_id)


def test_compare_works_on_results_another_process_wrote(tmp_path, problems):
    journal_path = tmp_path / "shared.duckdb"
    script = textwrap.dedent(
        f"""
        import dspex_lab as dx
        problems = dx.Dataset(dx.datasets.arithmetic(40, seed=5), name="arith-40")
        with dx.Context(lm="lab/small", journal={str(journal_path)!r}, threads=4):
            for kind, name in (("dspy.Predict", "predict"), ("dspy.ChainOfThought", "cot")):
                program = dx.Program(kind, signature="question -> answer", name=name)
                result = dx.evaluate(program, problems, metric=dx.metrics.exact_match, progress=False)
                print(result.experiment_id, result.mean)
        """
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    (predict_id, predict_mean), (cot_id, cot_mean) = [line.split() for line in completed.stdout.split("\n") if line]
    with dx.Context(lm="lab/small", journal=journal_path):
        predict, cot = dx.load(predict_id), dx.load(cot_id)
        comparison = dx.compare(predict, cot)
    assert predict.mean == pytest.approx(float(predict_mean)) and cot.mean == pytest.approx(float(cot_mean))
    assert comparison.n == 40 and comparison.paired
    assert comparison.difference == pytest.approx(cot.mean - predict.mean)
    assert comparison.experiment_id is not None


def test_other_kinds_and_unknown_ids_are_one_clear_error(problems, journal_path):
    with dx.Context(lm="lab/small", journal=journal_path, threads=4):
        a = dx.evaluate(PREDICT, problems, metric=dx.metrics.exact_match, progress=False)
        b = dx.evaluate(COT, problems, metric=dx.metrics.exact_match, progress=False)
        comparison = dx.compare(a, b)
    with pytest.raises(JournalError, match="no experiment 'nope'"):
        dx.load("nope", journal=journal_path)
    with pytest.raises(JournalError, match=r"'comparison', not an evaluation.*dx\.load.*dx\.compare"):
        dx.load(comparison.experiment_id, journal=journal_path)
    journal = dx.open_journal(journal_path)
    run_id = journal.create_experiment(dx.journal.ExperimentRecord(kind="optimization", name="opt"))
    with pytest.raises(JournalError, match=r"dx.OptimizationResult.from_journal\(journal, '"):
        dx.load(run_id, journal=journal_path)


def test_clustered_statistics_come_back_from_the_stored_examples(problems, journal_path):
    with dx.Context(lm="lab/small", journal=journal_path, threads=4):
        original = dx.evaluate(COT, problems, metric=dx.metrics.exact_match, progress=False, cluster="topic")
    loaded = dx.load(original.experiment_id, journal=journal_path)
    assert loaded.ci_method == "t (clustered)"
    assert loaded.stderr == pytest.approx(original.stderr) and loaded.ci == pytest.approx(original.ci)


def test_clustered_without_stored_examples_warns_and_takes_the_dataset(problems, journal_path, monkeypatch):
    monkeypatch.setattr(_records, "MAX_STORED_EXAMPLES", 10)  # too large to store
    with dx.Context(lm="lab/small", journal=journal_path, threads=4):
        original = dx.evaluate(COT, problems, metric=dx.metrics.exact_match, progress=False, cluster="topic")
    with pytest.warns(DspexLabWarning, match="NOT clustered.*dataset="):
        unclustered = dx.load(original.experiment_id, journal=journal_path)
    assert unclustered.ci_method != "t (clustered)"
    rebuilt = dx.load(original.experiment_id, journal=journal_path, dataset=problems)
    assert rebuilt.ci == pytest.approx(original.ci)
    other = dx.Dataset(dx.datasets.arithmetic(40, seed=6), name="other")
    with pytest.raises(JournalError, match="pass the dataset it was evaluated on"):
        dx.load(original.experiment_id, journal=journal_path, dataset=other)


def test_an_interrupted_evaluation_loads_with_its_finished_trials(problems, journal_path):
    from dspex_lab.engine import TrialFinished

    finished = []

    def interrupt_after_five(event):
        if isinstance(event, TrialFinished):
            finished.append(event.result.example_id)
            if len(finished) == 5:
                raise KeyboardInterrupt

    with dx.Context(lm="lab/small", journal=journal_path, threads=2), pytest.raises(KeyboardInterrupt) as stopped:
        dx.evaluate(PREDICT, problems, metric=dx.metrics.exact_match, progress=interrupt_after_five)
    experiment_id = str(stopped.value).split()[1]
    loaded = dx.load(experiment_id, journal=journal_path)
    assert loaded.status == "interrupted" and loaded.n_trials == 5
    assert loaded.mean == pytest.approx(loaded.table()["score"].mean())
