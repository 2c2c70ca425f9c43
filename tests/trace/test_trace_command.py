"""`dspex trace`: a trial without spans says why; OTLP exports keep experiments apart."""

from __future__ import annotations

import json

import duckdb
import pytest

import dspex_lab as dx
from dspex_lab.cli import main
from dspex_lab.evaluation import evaluate

COT = dx.Program("dspy.ChainOfThought", signature="question -> answer", name="cot")


def _run(journal_path, *, trace: bool, name: str = "traced") -> tuple[str, list[str]]:
    problems = dx.Dataset(dx.datasets.arithmetic(3, seed=5), name="trace-command")
    with dx.Context(journal=journal_path, threads=2):
        result = evaluate(COT, problems, metric=dx.metrics.exact_match, progress=False, trace=trace, name=name)
    return result.experiment_id, [f"{example_id}/r0" for example_id in problems.example_ids]


def _trace(capsys, *arguments: str) -> tuple[int, str, str]:
    code = main(["trace", *arguments])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_traced_trial_prints_its_tree(journal_path, capsys) -> None:
    experiment, trials = _run(journal_path, trace=True)
    code, out, _ = _trace(capsys, experiment, trials[0], "--journal", str(journal_path))
    assert code == 0
    assert out.splitlines()[0].startswith(f"trial {trials[0]}")
    assert "ChainOfThought" in out and "lab/small" in out


def test_a_trial_of_an_untraced_experiment_says_it_was_not_traced(journal_path, capsys) -> None:
    experiment, trials = _run(journal_path, trace=False)
    code, out, err = _trace(capsys, experiment, trials[0], "--journal", str(journal_path))
    assert code == 2 and out == ""
    assert f"trial {trials[0]!r} has no spans: experiment {experiment!r} was not traced" in err
    assert "trace=True" in err


def test_a_trial_given_up_before_any_span_says_so(journal_path, capsys) -> None:
    experiment, trials = _run(journal_path, trace=True)
    # As a trial abandoned at its timeout before anything was captured is stored: an error row, no spans.
    with duckdb.connect(str(journal_path)) as connection:
        connection.execute("DELETE FROM spans WHERE experiment_id = ? AND trace_id = ?", [experiment, trials[1]])
        connection.execute(
            """UPDATE trials SET status = 'error', score = NULL, error_type = 'TrialTimeoutError',
                   error_stage = 'timeout', error_message = 'trial did not finish within 0.5 s'
               WHERE experiment_id = ? AND trial_id = ?""",
            [experiment, trials[1]],
        )
    code, out, err = _trace(capsys, experiment, trials[1], "--journal", str(journal_path))
    assert code == 2 and out == ""
    assert f"trial {trials[1]!r} has no spans: it timed out before any span was recorded" in err
    assert "TrialTimeoutError: trial did not finish within 0.5 s" in err


def test_a_timed_out_trial_keeps_its_spans_marked(journal_path, capsys) -> None:
    problems = dx.Dataset(dx.datasets.arithmetic(2, seed=6), name="hanging")
    lm = dx.lab_lm("lab/small", hang_rate=1.0, hang_seconds=3.0, seed=1)
    with dx.Context(lm=lm, journal=journal_path, threads=2), pytest.warns(dx.errors.DspexLabWarning):
        result = evaluate(COT, problems, metric=dx.metrics.exact_match, progress=False, trace=True, timeout=0.5)
    trial = f"{problems.example_ids[0]}/r0"
    code, out, _ = _trace(capsys, result.experiment_id, trial, "--journal", str(journal_path))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"trial {trial}") and lines[0].rstrip().endswith("timeout")
    lm_line = next(line for line in lines if "lm lab/small" in line)
    assert "unfinished" in lm_line and lm_line.rstrip().endswith("timeout")
    assert next(line for line in lines if "ChatAdapter.format" in line).rstrip().endswith("ok")


def test_an_unknown_trial_or_experiment_is_named(journal_path, capsys) -> None:
    experiment, _ = _run(journal_path, trace=True)
    code, _, err = _trace(capsys, experiment, "no-such-example/r0", "--journal", str(journal_path))
    assert code == 2
    assert f"no trial 'no-such-example/r0' in experiment {experiment!r}" in err
    assert f"dspex trace {experiment} --journal" in err
    code, _, err = _trace(capsys, "no-such-experiment", "x/r0", "--journal", str(journal_path))
    assert code == 2 and "no-such-experiment" in err


def test_otlp_exports_of_two_experiments_on_the_same_data_never_share_a_trace(journal_path, tmp_path, capsys) -> None:
    first, trials = _run(journal_path, trace=True, name="first")
    second, same_trials = _run(journal_path, trace=True, name="second")
    assert trials == same_trials  # the same trial ids: only the experiment tells them apart
    payloads = {}
    for experiment in (first, second):
        path = tmp_path / f"{experiment}.json"
        code, out, _ = _trace(capsys, experiment, "--journal", str(journal_path), "--otlp", str(path))
        assert code == 0 and "OpenTelemetry JSON" in out
        payloads[experiment] = json.loads(path.read_text(encoding="utf-8"))
    trace_ids = {}
    for experiment, name in ((first, "first"), (second, "second")):
        resource_spans = payloads[experiment]["resourceSpans"][0]
        resource = {item["key"]: item["value"]["stringValue"] for item in resource_spans["resource"]["attributes"]}
        assert resource["dspex.experiment.id"] == experiment
        assert resource["dspex.experiment.name"] == name
        spans = resource_spans["scopeSpans"][0]["spans"]
        trace_ids[experiment] = {span["traceId"] for span in spans}
        assert len(trace_ids[experiment]) == len(trials)  # one OTLP trace per trial
    assert not trace_ids[first] & trace_ids[second]


def test_otlp_export_of_an_untraced_experiment_says_why(journal_path, tmp_path, capsys) -> None:
    experiment, _ = _run(journal_path, trace=False)
    code, _, err = _trace(capsys, experiment, "--journal", str(journal_path), "--otlp", str(tmp_path / "out.json"))
    assert code == 2
    assert f"experiment {experiment!r} was not traced" in err
    assert not (tmp_path / "out.json").exists()


@pytest.fixture(autouse=True)
def _no_colour(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
