"""The loopback provider, exercised through DSPy's real HTTP client (``dspy.LM("openai/...")``)."""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
import time

import dspy
import pytest
from loopback import (
    DEFAULT_API_KEY,
    Answer,
    Hang,
    LoopbackProvider,
    RateLimited,
    ServerError,
    Unauthorized,
    answers,
)


def _predict(lm: dspy.LM, question: str = "What is 2 + 2?") -> dspy.Prediction:
    with dspy.context(lm=lm):
        return dspy.Predict("question -> answer")(question=question)


def test_a_normal_answer_goes_through_dspy_predict_end_to_end(loopback_provider: LoopbackProvider) -> None:
    loopback_provider.script("gpt-4o-mini", Answer(fields={"answer": "4"}, input_tokens=120, output_tokens=8))
    lm = loopback_provider.lm("gpt-4o-mini")

    prediction = _predict(lm)

    assert prediction.answer == "4"
    [request] = loopback_provider.requests
    assert request.method == "POST"
    assert request.path == "/v1/chat/completions"
    assert request.model == "gpt-4o-mini"
    assert request.authorization == f"Bearer {DEFAULT_API_KEY}"
    assert request.body["messages"][-1]["content"].startswith("[[ ## question ## ]]\nWhat is 2 + 2?")
    entry = lm.history[-1]
    assert entry["usage"]["prompt_tokens"] == 120
    assert entry["usage"]["completion_tokens"] == 8
    # gpt-4o-mini is in DSPy's price map, so the call is priced.
    assert entry["cost"] is not None and entry["cost"] > 0


def test_every_output_field_of_the_signature_is_answered(loopback_provider: LoopbackProvider) -> None:
    with dspy.context(lm=loopback_provider.lm("gpt-4o-mini")):
        prediction = dspy.ChainOfThought("question -> answer, confidence")(question="Why?")

    assert prediction.reasoning == "loopback reasoning"
    assert prediction.answer == "loopback answer"
    assert prediction.confidence == "loopback confidence"


def test_scripts_are_consumed_in_order_then_the_default_applies(loopback_provider: LoopbackProvider) -> None:
    loopback_provider.script("gpt-4o-mini", *answers(["one", "two"]))
    loopback_provider.set_behaviour("gpt-4o-mini", Answer(fields={"answer": "default"}))
    lm = loopback_provider.lm("gpt-4o-mini")

    got = [_predict(lm, f"q{index}").answer for index in range(3)]

    assert got == ["one", "two", "default"]


def test_429_sends_retry_after_and_dspy_waits_for_it(loopback_provider: LoopbackProvider) -> None:
    loopback_provider.script("gpt-4o-mini", RateLimited(retry_after=0.4), Answer(fields={"answer": "4"}))
    lm = loopback_provider.lm("gpt-4o-mini", num_retries=1)

    assert _predict(lm).answer == "4"

    first, second = loopback_provider.requests
    # DSPy's client honoured the header: the retry came no sooner than it said.
    assert second.time - first.time >= 0.4


def test_429_without_retries_raises_a_rate_limit_error_carrying_the_hint(loopback_provider: LoopbackProvider) -> None:
    loopback_provider.set_behaviour("gpt-4o-mini", RateLimited(retry_after=7))
    lm = loopback_provider.lm("gpt-4o-mini", num_retries=0)

    with pytest.raises(dspy.utils.exceptions.LMRateLimitError) as caught:
        lm("hello")

    assert caught.value.retry_after == 7
    assert len(loopback_provider.requests) == 1


def test_500_is_a_server_error_retried_by_dspy_as_configured(loopback_provider: LoopbackProvider) -> None:
    loopback_provider.set_behaviour("gpt-4o-mini", ServerError())
    # DSPy backs off 1 s before its single retry.
    lm = loopback_provider.lm("gpt-4o-mini", num_retries=1)

    with pytest.raises(dspy.utils.exceptions.LMServerError):
        lm("hello")

    assert len(loopback_provider.requests) == 2


def test_401_echoes_the_key_it_was_given_like_openai(loopback_provider: LoopbackProvider) -> None:
    lm = loopback_provider.lm("gpt-4o-mini", api_key="sk-wrong-key-987654321", num_retries=2)

    with pytest.raises(dspy.utils.exceptions.LMAuthError) as caught:
        lm("hello")

    # The key reaches the error message: exactly the leak the redaction layer must stop.
    assert "Incorrect API key provided: sk-wrong-key-987654321" in str(caught.value)
    [request] = loopback_provider.requests  # an auth error is not retried
    assert request.authorization == "Bearer sk-wrong-key-987654321"


def test_unauthorized_can_be_forced_even_with_the_right_key(loopback_provider: LoopbackProvider) -> None:
    loopback_provider.script("gpt-4o-mini", Unauthorized())

    with pytest.raises(dspy.utils.exceptions.LMAuthError, match=DEFAULT_API_KEY):
        loopback_provider.lm("gpt-4o-mini", num_retries=0)("hello")


def test_a_hang_outlasts_the_client_timeout_and_no_further_request_follows(loopback_provider: LoopbackProvider) -> None:
    loopback_provider.set_behaviour("gpt-4o-mini", Hang(seconds=20))  # the fixture's longest hang
    lm = loopback_provider.lm("gpt-4o-mini", num_retries=0, timeout=0.5)

    started = time.monotonic()
    with pytest.raises(dspy.utils.exceptions.LMTransportError, match="timed out"):
        lm("hello")

    # At least the client's timeout; the upper bound is a hang guard, generous yet below the 20 s hang.
    assert 0.5 <= time.monotonic() - started < 15.0
    time.sleep(0.3)
    assert len(loopback_provider.requests) == 1


def test_a_hang_is_bounded_by_the_server_which_closes_the_connection() -> None:
    with LoopbackProvider(max_hang_seconds=0.5) as provider:
        provider.set_behaviour("gpt-4o-mini", Hang(seconds=300))
        lm = provider.lm("gpt-4o-mini", num_retries=0)
        started = time.monotonic()
        with pytest.raises(dspy.utils.exceptions.LMTransportError, match="closed connection"):
            lm("hello")
        assert 0.5 <= time.monotonic() - started < 60.0  # the cap, not the 300 s hang; 60 s is a hang guard


def test_stopping_the_server_releases_hanging_requests_at_once() -> None:
    provider = LoopbackProvider(max_hang_seconds=300).start()
    provider.set_behaviour("gpt-4o-mini", Hang(seconds=300))
    errors: list[BaseException] = []
    lm = provider.lm("gpt-4o-mini", num_retries=0)

    def call() -> None:
        try:
            lm("hello")
        except Exception as error:
            errors.append(error)

    caller = threading.Thread(target=call)
    caller.start()
    while not provider.requests:
        time.sleep(0.01)
    started = time.monotonic()
    provider.__exit__(None, None, None)
    caller.join(timeout=60)

    assert not caller.is_alive()
    assert time.monotonic() - started < 60.0  # far below the 300 s hang: stopping released it
    assert len(errors) == 1
    assert not provider.running


def test_hangs_beyond_the_concurrency_bound_are_refused_with_503() -> None:
    # The first hang lasts until the server stops (300 s at most), so the second request meets it however
    # slowly the machine gets there.
    with LoopbackProvider(max_hang_seconds=300, max_concurrent_hangs=1) as provider:
        provider.set_behaviour("gpt-4o-mini", Hang(seconds=300))
        hanging = threading.Thread(target=_swallow, args=(provider.lm("gpt-4o-mini", num_retries=0),))
        hanging.start()
        while not provider.requests:
            time.sleep(0.01)

        with pytest.raises(dspy.utils.exceptions.LMServerError):
            provider.lm("gpt-4o-mini", num_retries=0)("hello")
    hanging.join(timeout=60)
    assert not hanging.is_alive()


def _swallow(lm: dspy.LM) -> None:
    with contextlib.suppress(Exception):
        lm("hello")


def test_latency_delays_the_answer(loopback_provider: LoopbackProvider) -> None:
    loopback_provider.script("gpt-4o-mini", Answer(fields={"answer": "4"}, latency=0.3))

    started = time.monotonic()
    assert _predict(loopback_provider.lm("gpt-4o-mini")).answer == "4"

    assert time.monotonic() - started >= 0.3


def test_an_oversized_body_is_refused_before_it_is_read() -> None:
    with LoopbackProvider(max_body_bytes=100) as provider:
        host, port = provider.url.removeprefix("http://").split("/")[0].split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=5)
        body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 500}]})
        connection.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()

        assert response.status == 413
        assert "exceeds 100" in json.loads(response.read())["error"]["message"]
        connection.close()


def test_the_server_stops_itself_after_its_lifetime() -> None:
    with LoopbackProvider(max_lifetime_seconds=2.0) as provider:
        assert provider.running
        deadline = time.monotonic() + 60  # a hang guard: the server stops itself 2 s after it started
        while provider.running and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not provider.running
        with pytest.raises(dspy.utils.exceptions.LMTransportError):
            provider.lm("gpt-4o-mini", num_retries=0)("hello")


def test_the_url_is_refused_outside_the_context() -> None:
    provider = LoopbackProvider()
    with pytest.raises(RuntimeError, match="not running"):
        _ = provider.url
