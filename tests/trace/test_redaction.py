"""Secrets never reach a span: secret-named keys and API-key-shaped strings are masked."""

from __future__ import annotations

import json

import dspy
import pytest
from dspy.lm15 import Message, Response, TextPart, Usage

from dspex_lab.trace import REDACTED, SpanRecorder, add_secret_pattern, decision, redact, redaction, to_otlp
from dspex_lab.trace.redaction import is_clean_text, is_secret_key, mask_text, redact_for_storage, scrub

SECRET = "sk-test-123456"


class EchoEngine:
    """An offline engine that answers a ChainOfThought and repeats the secret in its completion."""

    def complete(self, request):
        text = f"[[ ## reasoning ## ]]\nThe key {SECRET} does not matter.\n\n[[ ## answer ## ]]\n2\n\n"
        text += "[[ ## completed ## ]]"
        return Response(
            id="echo",
            model=request.model,
            message=Message.assistant((TextPart(text),)),
            finish_reason="stop",
            usage=Usage(input_tokens=10, output_tokens=5),
        )

    def close(self) -> None:
        pass


def keyed_lm() -> dspy.LM:
    """A real ``dspy.LM`` holding an API key, answering through an offline engine (no network)."""
    lm = dspy.LM("openai/x", api_key=SECRET, cache=False, num_retries=0)
    # dspy refuses an api_key next to a custom engine at construction; swapping the engine afterwards keeps the key
    # in lm.kwargs, which is exactly the situation the recorder must not leak.
    lm._engine_spec = EchoEngine()
    return lm


def test_an_api_key_never_appears_in_any_span() -> None:
    lm = keyed_lm()
    assert lm.kwargs["api_key"] == SECRET
    recorder = SpanRecorder()
    with (
        dspy.context(lm=lm, callbacks=[recorder]),
        recorder.trial("t-secret") as collector,
        decision("configure", values={"api_key": SECRET, "note": f"uses {SECRET}"}),
    ):
        dspy.ChainOfThought("question -> answer")(question=f"My key is {SECRET}, what is 1 + 1?")
    spans = collector.spans
    assert any(item.kind == "lm" for item in spans)
    rows = json.dumps([item.to_row() for item in spans])
    otlp = json.dumps(to_otlp(spans))
    text = repr([item.attributes for item in spans])  # the live attributes, before any serialisation
    for rendering in (rows, otlp, text):
        assert SECRET not in rendering
        assert "123456" not in rendering
    assert REDACTED in rows
    lm_span = next(item for item in spans if item.kind == "lm")
    assert lm_span.json_attributes["parameters"]["api_key"] == REDACTED


@pytest.mark.parametrize(
    "key",
    ["api_key", "API_KEY", "Authorization", "x-api-key", "X-Api-Key", "client_secret", "aws_secret_access_key",
     "password", "access_token", "openai_api_key", "ANTHROPIC_API_KEY"],
)  # fmt: skip
def test_secret_keys(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize("key", ["max_tokens", "prompt_tokens", "total_tokens", "model", "temperature", "api_base"])
def test_ordinary_keys(key: str) -> None:
    assert not is_secret_key(key)


def test_nested_headers_and_values_are_masked() -> None:
    value = {
        "headers": {"Authorization": "Bearer abcdefghijklmnop", "x-api-key": "whatever", "Accept": "json"},
        "messages": [{"role": "user", "content": "token sk-proj-AbC123xyz789 and AKIAABCDEFGHIJKLMNOP"}],
        "model": "openai/gpt",
        "max_tokens": 100,
    }
    result = redact(value)
    assert result["headers"] == {"Authorization": REDACTED, "x-api-key": REDACTED, "Accept": "json"}
    assert result["messages"][0]["content"] == f"token {REDACTED} and {REDACTED}"
    assert result["model"] == "openai/gpt" and result["max_tokens"] == 100
    assert value["headers"]["x-api-key"] == "whatever", "redact must not mutate its input"


def test_ordinary_text_is_left_alone() -> None:
    for text in ["use scikit-learn", "a task-force-alpha", "sk-learn is a library", "Bearer of bad news"]:
        assert mask_text(text) == text
    assert mask_text("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.abc") == f"Authorization: {REDACTED}"
    assert mask_text("AUTHORIZATION: BEARER eyJhbGciOiJIUzI1NiJ9.abc") == f"AUTHORIZATION: {REDACTED}"


def test_scrub_copies_only_when_needed() -> None:
    clean = {"messages": [{"role": "user", "content": "hello"}], "n": 1}
    assert scrub(clean) is clean
    dirty = {"messages": [{"role": "user", "content": f"key {SECRET}"}]}
    assert scrub(dirty) is not dirty
    assert scrub(dirty)["messages"][0]["content"] == f"key {REDACTED}"


def test_deep_values_are_cut_off() -> None:
    value: dict = {}
    cursor = value
    for _ in range(40):
        cursor["next"] = {}
        cursor = cursor["next"]
    cursor["password"] = "hunter2"
    assert "hunter2" not in json.dumps(redact(value))
    assert "hunter2" not in json.dumps(scrub(value))


@pytest.fixture
def isolated_patterns(monkeypatch: pytest.MonkeyPatch):
    """Let a test add patterns without leaking them into other tests."""
    for name in ("_key_patterns", "_extra_value_patterns"):
        monkeypatch.setattr(redaction, name, list(getattr(redaction, name)))
    for name in ("_key_regex", "_extra_value_regex"):
        monkeypatch.setattr(redaction, name, getattr(redaction, name))
    yield
    monkeypatch.undo()
    redaction._secret_key_cached.cache_clear()
    redaction._clean_texts.clear()


@pytest.mark.usefixtures("isolated_patterns")
def test_added_patterns_apply_to_keys_and_values() -> None:
    assert not is_secret_key("my_internal_pin")
    add_secret_pattern(r"_pin$")
    assert is_secret_key("my_internal_pin")
    text = "ticket ACME-7f3a9c21 is secret"
    assert mask_text(text) == text  # checked (and remembered as clean) before the pattern exists
    add_secret_pattern(r"ACME-[0-9a-f]{8}", applies_to="values")
    assert mask_text(text) == f"ticket {REDACTED} is secret"
    assert scrub({"note": text}) == {"note": f"ticket {REDACTED} is secret"}
    with pytest.raises(ValueError):
        add_secret_pattern("(", applies_to="values")
    with pytest.raises(ValueError):
        add_secret_pattern("x", applies_to="both")


# -- one policy for storage and display (issue 9, item 5) ----------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Error code: 401 - {'error': {'message': 'Incorrect API key provided: lab-9f8e7d6c5b4a3210ffee. "
            "You can find your API key at https://platform.openai.com/account/api-keys.'}}",
            "Error code: 401 - {'error': {'message': 'Incorrect API key provided: [REDACTED]. "
            "You can find your API key at https://platform.openai.com/account/api-keys.'}}",
        ),
        ("invalid token=AbC123dEf456GhI789 given", "invalid token=[REDACTED] given"),
        ('"x-api-key": "zz99aa88bb77cc66dd55"', '"x-api-key": "[REDACTED]"'),
        ("secret: 0123456789abcdefXYZ", "secret: [REDACTED]"),
        ("password: Tr0ub4dor&3horse, then", "password: [REDACTED], then"),
        ("postgres://admin:hunter2@db.local:5432/x", "postgres://admin:[REDACTED]@db.local:5432/x"),
        ("see https://user:pa55@llm.example/v1 now", "see https://user:[REDACTED]@llm.example/v1 now"),
    ],
)
def test_keys_quoted_in_provider_errors_and_urls_are_masked(text: str, expected: str) -> None:
    assert mask_text(text) == expected
    assert not is_clean_text(text)


@pytest.mark.parametrize(
    "text",
    [
        "the key insight is 42",
        "max_tokens: 1000, prompt_tokens=1234567890123",
        "Use the primary key of each row",
        "the password field is required",
        "tokens: 512 in, 64 out",
        "https://platform.openai.com/account/api-keys",
        "mail me at someone@example.com",
    ],
)
def test_prose_about_keys_and_tokens_stays_readable(text: str) -> None:
    assert mask_text(text) is text


def test_header_containers_mask_every_header_but_harmless_ones() -> None:
    config = {
        "lm_state": {
            "extra_headers": {"Authorization": "Basic abc", "X-Custom-Auth": "v", "Content-Type": "json"},
            "default_headers": {"OpenAI-Organization": "org-1"},
            "api_base": "https://u:p4ss@h/v1",
            "temperature": 0.5,
        }
    }
    state = redact(config)["lm_state"]
    assert state["extra_headers"] == {"Authorization": REDACTED, "X-Custom-Auth": REDACTED, "Content-Type": "json"}
    assert state["default_headers"] == {"OpenAI-Organization": REDACTED}
    assert state["api_base"] == f"https://u:{REDACTED}@h/v1"
    assert state["temperature"] == 0.5
    assert scrub({"headers": {"X-Custom-Auth": "v"}}) == {"headers": {"X-Custom-Auth": REDACTED}}


def test_redact_for_storage_returns_json_ready_masked_copies() -> None:
    error = ValueError("Incorrect API key provided: abcd1234efgh5678")
    stored = redact_for_storage({1: error, "pair": (1, 2), "nested": {"api_key": "x"}, "ok": None})
    assert stored == {
        "1": f"Incorrect API key provided: {REDACTED}",
        "pair": [1, 2],
        "nested": {"api_key": REDACTED},
        "ok": None,
    }
    assert json.loads(json.dumps(stored)) == stored
    traceback_text = f'Traceback (most recent call last):\n  ...\nAuthenticationError: key "{SECRET}"'
    assert SECRET not in redact_for_storage(traceback_text)
    assert redact_for_storage(3.5) == 3.5
