"""A password in a URL is masked wherever it is written: with a scheme, without one, and percent-encoded (issue 18).

Connection errors quote a URL's authority without its scheme (DSPy's transport says "failed to connect to
user:password@host:port"), so masking only ``scheme://user:password@`` left the password in every stored
error message.
"""

from __future__ import annotations

import pytest

from dspex_lab.trace import REDACTED
from dspex_lab.trace.redaction import is_clean_text, mask_text, redact, redact_for_storage, scrub

MASKED = [
    # What DSPy 3.4.1's transport raises for api_base="http://user:PASS@127.0.0.1:PORT/v1" and for a host without
    # a port ("bad port in authority" quotes the authority).
    (
        "[openai/x] failed to connect to user:PASS@127.0.0.1:43863: [Errno -2] Name or service not known",
        f"[openai/x] failed to connect to user:{REDACTED}@127.0.0.1:43863: [Errno -2] Name or service not known",
    ),
    ("bad port in authority: 'user:PASS@llmproxy'", f"bad port in authority: 'user:{REDACTED}@llmproxy'"),
    (
        "HTTPConnectionPool(host='user:PASS@api.internal', port=80)",
        f"HTTPConnectionPool(host='user:{REDACTED}@api.internal', port=80)",
    ),
    ("failed to connect to user:PASS@localhost:8000", f"failed to connect to user:{REDACTED}@localhost:8000"),
    ("user:PASS@host/v1", f"user:{REDACTED}@host/v1"),
    ("user:PASS@llm.example.com", f"user:{REDACTED}@llm.example.com"),
    ("user:PASS@[::1]:8080", f"user:{REDACTED}@[::1]:8080"),
    ("proxy=user:PASS@proxy.corp:3128", f"proxy=user:{REDACTED}@proxy.corp:3128"),
    # A password may hold a colon, an "@" or other punctuation; all of it is masked.
    ("user:PA:SS@10.0.0.5", f"user:{REDACTED}@10.0.0.5"),
    ("user:PA@SS@db.example.org", f"user:{REDACTED}@db.example.org"),
    ("user:PA(SS)@db.example.org", f"user:{REDACTED}@db.example.org"),
    # Percent-encoded: inside the password, the whole authority, or a URL carried in another URL's query.
    ("user:PA%40SS@db.example.org", f"user:{REDACTED}@db.example.org"),
    ("user%3APASS%40host%2Fv1", f"user%3A{REDACTED}%40host%2Fv1"),
    (
        "next=http%3A%2F%2Fuser%3APASS%40llm.example.com%2Fv1",
        f"next=http%3A%2F%2Fuser%3A{REDACTED}%40llm.example.com%2Fv1",
    ),
    ("https://user%40corp:PA%40SS@llm.example.com/v1", f"https://user%40corp:{REDACTED}@llm.example.com/v1"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), MASKED)
def test_a_password_in_an_authority_is_masked_with_or_without_a_scheme(text: str, expected: str) -> None:
    assert mask_text(text) == expected
    assert "SS" not in mask_text(text)
    # Masked text is clean: masking again changes nothing, and scrub() does not copy it again.
    assert is_clean_text(expected)
    assert mask_text(expected) == expected


@pytest.mark.parametrize(
    "text",
    [
        "ratio 3:4@ noon",
        "meet 10:30@office.",
        "time 12:00@home today",
        "The answer: 42@ the end",
        "scores 3:1@2.5",
        "version 1:2@3.4.5",
        "lambda x:x@y",
        "x = a:b@c",
        "mailto:bob@example.com",
        "email:bob@example.com",
        "mail me at someone@example.com",
        "git@github.com:org/repo.git",
        "ssh://git@github.com/org/repo",
        "a@b.com, c@d.org: hi@x.io",
    ],
)
def test_prose_and_addresses_that_only_resemble_an_authority_are_left_alone(text: str) -> None:
    assert mask_text(text) == text
    assert is_clean_text(text)


def test_every_entry_point_masks_an_authority_without_a_scheme() -> None:
    message = "failed to connect to user:PASS@10.1.2.3:8000"
    value = {"error": message, "attempts": [message], "nested": {"detail": (message,)}}
    for rendering in (redact(value), redact_for_storage(value), scrub(value), redact_for_storage(ValueError(message))):
        assert "PASS" not in repr(rendering)
        assert f"user:{REDACTED}@10.1.2.3:8000" in repr(rendering)


def test_a_long_text_without_a_match_is_scanned_in_one_pass() -> None:
    # Walking back from each "@" never passes the previous one: a megabyte of colons and at-signs stays cheap
    # (a regular expression tried at every colon here would take minutes).
    text = "a:" * 300_000 + "b@x.com " + "c:d@" * 100_000
    masked = mask_text(text)
    assert masked.endswith("c:d@")
    assert f"a:{REDACTED}@x.com" in masked
