"""Nothing lost, nothing silently wrong: journals that fail, bad scores, resumes that would mix runs."""

import json
import os
import time

import pytest

import dspex_lab as dx
from dspex_lab.errors import DspexLabWarning, ExecutionError, JournalError
from dspex_lab.journal import DuckDBJournal

PROGRAM = dx.Program("dspy.Predict", signature="question -> answer", name="qa-predict")


@pytest.fixture
def problems():
    return dx.Dataset(dx.datasets.arithmetic(12, seed=4), name="arith-12")


def test_a_journal_that_cannot_be_written_still_returns_the_result(problems, tmp_path, monkeypatch):
    def refuse(self, *args, **kwargs):
        raise JournalError(f"journal {self.path} is read-only")

    monkeypatch.setattr(DuckDBJournal, "create_experiment", refuse)
    monkeypatch.setattr(DuckDBJournal, "append_trials", refuse)
    monkeypatch.setattr(DuckDBJournal, "_open", lambda self, write: (_ for _ in ()).throw(JournalError("read-only")))
    journal = DuckDBJournal(tmp_path / "readonly.duckdb", lock_timeout=0.5)
    with dx.Context(lm="lab/small", journal=journal, threads=2), pytest.warns(DspexLabWarning) as caught:
        result = dx.evaluate(PROGRAM, problems, metric=dx.metrics.exact_match, progress=False)
    assert result.n == 12 and result.status == "finished"
    message = next(str(item.message) for item in caught if "could not be written" in str(item.message))
    saved = message.rsplit("saved to ", 1)[1].strip()
    assert os.stat(saved).st_mode & 0o077 == 0, "the saved trials are readable by their user only"
    with open(saved, encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    assert len(rows) == 12 and {row["example_id"] for row in rows} == set(problems.example_ids)
    os.unlink(saved)


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_scores_are_errors_and_the_experiment_ends_failed(problems, tmp_path, value):
    with dx.Context(lm="lab/small", journal=tmp_path / "j.duckdb", threads=2), pytest.warns(DspexLabWarning):
        result = dx.evaluate(PROGRAM, problems, metric=lambda example, prediction: value, progress=False)
    assert result.n_errors == 12 and set(result.trials["error_type"]) == {"InvalidScoreError"}
    # Nothing scored: the run ended (nothing is left running) as a failed measurement, not a finished one.
    assert result.status == "failed"
    assert dx.open_journal(tmp_path / "j.duckdb").experiment(result.experiment_id)["status"] == "failed"


def test_resume_refuses_another_lm_or_metric(problems, tmp_path):
    path = tmp_path / "j.duckdb"
    with dx.Context(lm="lab/small", journal=path, threads=2):
        first = dx.evaluate(PROGRAM, problems, metric=dx.metrics.exact_match, progress=False)
        with pytest.raises(ExecutionError, match="metric"):
            dx.evaluate(PROGRAM, problems, metric=dx.metrics.f1, progress=False, resume=first.experiment_id)
    with dx.Context(lm="lab/large", journal=path, threads=2), pytest.raises(ExecutionError, match="same LM"):
        dx.evaluate(PROGRAM, problems, metric=dx.metrics.exact_match, progress=False, resume=first.experiment_id)


def test_an_empty_dataset_is_an_error(tmp_path):
    with dx.Context(lm="lab/small", journal=False), pytest.raises(dx.errors.DspexLabError):
        dx.evaluate(PROGRAM, dx.Dataset([], inputs=["question"]), metric=dx.metrics.exact_match, progress=False)


@pytest.mark.parametrize(
    ("options", "message"),
    [({"timeout": float("nan")}, "timeout"), ({"repeats": 0}, "repeats"), ({"max_errors": -2}, "max_errors")],
)
def test_run_options_are_validated(problems, options, message):
    with dx.Context(lm="lab/small", journal=False), pytest.raises(ExecutionError, match=message):
        dx.evaluate(PROGRAM, problems, metric=dx.metrics.exact_match, progress=False, **options)


def test_threads_zero_is_refused():
    with pytest.raises(ExecutionError, match="threads"):
        dx.Context(threads=0, journal=False)


def test_a_corrupt_journal_is_reported_as_corrupt_at_once(tmp_path):
    path = tmp_path / "broken.duckdb"
    path.write_bytes(os.urandom(256 * 1024))
    started = time.monotonic()
    with pytest.raises(JournalError, match="corrupt"):
        dx.open_journal(path, lock_timeout=300).experiments()
    # Retrying as if locked would wait out the 300 s lock timeout; 60 s is generous for a loaded machine.
    assert time.monotonic() - started < 60
