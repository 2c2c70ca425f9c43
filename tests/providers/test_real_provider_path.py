"""The real-provider path, end to end: dx.evaluate on dspy.LM's own HTTP client against a loopback server.

Cancellation, the one retry layer, cost and budgets, secrets, and traces, as a researcher with a
hosted model would meet them (issue 9, items 2-7).
"""

from __future__ import annotations

import json
import time
import zipfile

import pytest
from loopback import DEFAULT_API_KEY, Answer, Hang, LoopbackProvider, RateLimited, ServerError, Unauthorized

import dspex_lab as dx
from dspex_lab.errors import DspexLabWarning, ExecutionError

PROGRAM = dx.Program("dspy.Predict", signature="question -> answer", name="qa-hosted")


def _questions(n: int) -> dx.Dataset:
    return dx.Dataset(
        [{"question": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(n)], inputs=["question"]
    )


def _metric(example, prediction):
    return float(str(prediction.answer).strip() == example.answer)


def test_a_timed_out_trial_makes_no_further_request(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # as the loopback_provider fixture does
    # A hang of 300 s (stopping the server ends it), so that even a very slow machine's run, 0.6 s timeouts
    # and all, stays far below it: the 60 s bound below separates "did not wait" from "waited".
    with LoopbackProvider(max_hang_seconds=300) as loopback_provider:
        loopback_provider.set_behaviour("gpt-4o-mini", Hang(seconds=300))
        lm = loopback_provider.lm("gpt-4o-mini")
        started = time.monotonic()
        with (
            dx.Context(lm=lm, journal=tmp_path / "j.duckdb", threads=2),
            pytest.warns(DspexLabWarning, match="every trial"),
        ):
            result = dx.evaluate(PROGRAM, _questions(2), metric=_metric, timeout=0.6, retries=3, progress=False)
        elapsed = time.monotonic() - started
        requests_at_return = len(loopback_provider.requests)
        time.sleep(2.0)
        requests_later = len(loopback_provider.requests)
    assert elapsed < 60.0  # the provider hangs for 300 s: the run did not wait for it
    assert set(result.trials["error_stage"]) == {"timeout"}
    assert requests_at_return <= 2  # one request per trial: no retry after the deadline, no JSON fallback call
    assert requests_later == requests_at_return, "a timed-out trial went on calling the provider"


def test_retry_after_is_honoured_once_not_multiplied(loopback_provider: LoopbackProvider, tmp_path) -> None:
    loopback_provider.script("gpt-4o-mini", RateLimited(retry_after=0.3), RateLimited(retry_after=0.3))
    loopback_provider.set_behaviour("gpt-4o-mini", Answer(fields={"answer": "0"}))
    lm = loopback_provider.lm("gpt-4o-mini")
    with dx.Context(lm=lm, journal=tmp_path / "j.duckdb", threads=1):
        result = dx.evaluate(PROGRAM, _questions(1), metric=_metric, retries=3, progress=False)
    [row] = result.trials.to_dict("records")
    assert row["status"] == "ok" and row["attempts"] == 3
    assert [entry["wait"] for entry in json.loads(row["retries"])] == [0.3, 0.3]
    times = [request.time for request in loopback_provider.requests]
    assert len(times) == 3  # DSPy's client retries are off: only ours, one request per attempt
    assert times[1] - times[0] >= 0.29 and times[2] - times[1] >= 0.29


def test_a_persistently_failing_provider_costs_retries_plus_one_requests(
    loopback_provider: LoopbackProvider, tmp_path
) -> None:
    loopback_provider.set_behaviour("gpt-4o-mini", ServerError(500))
    lm = loopback_provider.lm("gpt-4o-mini")
    with (
        dx.Context(lm=lm, journal=tmp_path / "j.duckdb", threads=1),
        pytest.warns(DspexLabWarning, match="every trial"),
    ):
        result = dx.evaluate(PROGRAM, _questions(1), metric=_metric, retries=2, progress=False)
    [row] = result.trials.to_dict("records")
    assert row["status"] == "error" and row["attempts"] == 3
    assert len(loopback_provider.requests) == 3  # was up to 16 with DSPy's retries multiplied by ours


def test_a_priced_model_reports_cost_and_a_dollar_budget_stops_the_run(
    loopback_provider: LoopbackProvider, tmp_path
) -> None:
    loopback_provider.set_behaviour("gpt-4o-mini", Answer(fields={"answer": "0"}, input_tokens=1000, output_tokens=50))
    lm = loopback_provider.lm("gpt-4o-mini")
    with dx.Context(lm=lm, journal=tmp_path / "j.duckdb", threads=2):
        priced = dx.evaluate(PROGRAM, _questions(3), metric=_metric, progress=False)
        per_trial = priced.trials["cost"]
        assert per_trial.notna().all() and (per_trial > 0).all()
        limit = float(per_trial.iloc[0]) * 5.5
        with pytest.warns(DspexLabWarning, match="budget"):
            stopped = dx.evaluate(
                PROGRAM, _questions(40), metric=_metric, budget=dx.Budget(usd=limit, pilot=2), progress=False
            )
    assert stopped.status == "stopped" and "usd" in stopped.status_detail
    spent = float(stopped.trials["cost"].sum())
    # Overshoot is at most the trials in flight when the limit was reached (2 threads).
    assert limit <= spent <= limit + 2 * float(per_trial.iloc[0]) + 1e-12
    assert len(stopped.trials) < 40


def test_a_dollar_budget_on_an_unpriced_model_is_refused_before_any_request(
    loopback_provider: LoopbackProvider, tmp_path
) -> None:
    lm = loopback_provider.lm("house-model-without-a-price")
    with dx.Context(lm=lm, journal=tmp_path / "j.duckdb", threads=2), pytest.raises(ExecutionError, match="no known"):
        dx.evaluate(PROGRAM, _questions(3), metric=_metric, budget=dx.Budget(usd=1.0), progress=False)
    assert loopback_provider.requests == []


def test_an_unpriced_model_says_so(loopback_provider: LoopbackProvider, tmp_path) -> None:
    loopback_provider.set_behaviour("house-model-without-a-price", Answer(fields={"answer": "0"}))
    lm = loopback_provider.lm("house-model-without-a-price")
    with dx.Context(lm=lm, journal=tmp_path / "j.duckdb", threads=2):
        result = dx.evaluate(PROGRAM, _questions(2), metric=_metric, progress=False)
    assert result.trials["cost"].isna().all()
    assert set(result.trials["unpriced_models"]) == {"openai/house-model-without-a-price"}


def test_a_key_echoed_by_the_provider_is_never_stored_or_shown(loopback_provider: LoopbackProvider, tmp_path) -> None:
    loopback_provider.set_behaviour("gpt-4o-mini", Unauthorized())
    lm = loopback_provider.lm("gpt-4o-mini", extra_headers={"Authorization": f"Bearer {DEFAULT_API_KEY}"})
    path = tmp_path / "j.duckdb"
    with dx.Context(lm=lm, journal=path, threads=1), pytest.warns(DspexLabWarning, match="every trial"):
        result = dx.evaluate(PROGRAM, _questions(2), metric=_metric, progress=False, trace=True)
    journal = dx.open_journal(path)
    stored = journal.sql("SELECT error_message, traceback FROM trials").to_json()
    stored += journal.sql("SELECT CAST(config AS VARCHAR) AS c FROM experiments").to_json()
    stored += journal.sql("SELECT CAST(attributes AS VARCHAR) AS a, error FROM spans").to_json()
    assert "401" in stored or "Unauthorized" in stored or "AuthenticationError" in stored
    assert DEFAULT_API_KEY not in stored
    assert DEFAULT_API_KEY not in result._repr_html_()
    package = tmp_path / "run.zip"
    with dx.Context(lm=lm, journal=path):
        dx.export(result.experiment_id, package)
    with zipfile.ZipFile(package) as archive:
        for name in archive.namelist():
            assert DEFAULT_API_KEY not in archive.read(name).decode("utf-8", "replace"), name


def test_retried_attempts_are_labelled_in_the_trace(loopback_provider: LoopbackProvider, tmp_path) -> None:
    loopback_provider.script("gpt-4o-mini", RateLimited(retry_after=0.05))
    loopback_provider.set_behaviour("gpt-4o-mini", Answer(fields={"answer": "0"}))
    lm = loopback_provider.lm("gpt-4o-mini")
    path = tmp_path / "j.duckdb"
    with dx.Context(lm=lm, journal=path, threads=1):
        result = dx.evaluate(PROGRAM, _questions(1), metric=_metric, progress=False, trace=True)
    tree = dx.open_journal(path).trace(result.experiment_id, result.trials["trial_id"][0])
    text = tree.to_text()
    assert "attempt 1" in text and "attempt 2" in text
    rows = dx.open_journal(path).span_rows(result.experiment_id)
    attempts = [row for row in rows if row["kind"] == "attempt"]
    assert len(attempts) == 2
    assert any("RateLimit" in json.dumps(row["attributes"]) for row in attempts)
    lm_spans = [row for row in rows if row["kind"] == "lm"]
    assert len(lm_spans) == 2


def test_an_lm_judge_in_the_metric_is_part_of_the_trial_cost(loopback_provider: LoopbackProvider, tmp_path) -> None:
    import dspy

    loopback_provider.set_behaviour("gpt-4o-mini", Answer(fields={"answer": "0"}, input_tokens=100, output_tokens=10))
    loopback_provider.set_behaviour("gpt-4o", Answer(fields={"verdict": "1"}, input_tokens=100, output_tokens=10))
    judge_lm = loopback_provider.lm("gpt-4o")

    def judged(example, prediction):
        with dspy.context(lm=judge_lm):
            return float(dspy.Predict("answer -> verdict")(answer=prediction.answer).verdict)

    with dx.Context(lm=loopback_provider.lm("gpt-4o-mini"), journal=tmp_path / "j.duckdb", threads=1):
        result = dx.evaluate(PROGRAM, _questions(1), metric=judged, progress=False)
    [row] = result.trials.to_dict("records")
    assert row["lm_calls"] == 2
    mini, full = dx.providers.model_price("openai/gpt-4o-mini"), dx.providers.model_price("openai/gpt-4o")
    assert row["cost"] == pytest.approx(mini.cost(100, 10) + full.cost(100, 10))
