"""Credentials in an LM's URL: refused before any request, and masked wherever a run still meets them (issue 18).

DSPy's HTTP client does not take credentials from a URL: with
``api_base="http://user:PASS@127.0.0.1:PORT/v1"`` it looks up ``user:PASS@127.0.0.1`` as a host name,
never reaches the server, and its error ("failed to connect to user:PASS@127.0.0.1:PORT") quotes the
password without a scheme. These tests run DSPy's real client against the loopback server.
"""

from __future__ import annotations

import json
import warnings

import dspy
import pytest
from loopback import DEFAULT_API_KEY, LoopbackProvider

import dspex_lab as dx
from dspex_lab.errors import DspexLabWarning, ProgramSpecError

PASSWORD = "PASSWORD0123"


def _questions(n: int) -> dx.Dataset:
    return dx.Dataset(
        [{"question": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(n)], inputs=["question"]
    )


def _metric(example, prediction):
    return float(str(prediction.answer).strip() == example.answer)


def _url_with_credentials(provider: LoopbackProvider) -> str:
    return provider.url.replace("http://", f"http://researcher:{PASSWORD}@")


def test_dspy_cannot_use_credentials_in_its_url(loopback_provider: LoopbackProvider) -> None:
    # The claim the refusal rests on: the request never reaches the server, and the error quotes the password.
    lm = dspy.LM("openai/x", api_base=_url_with_credentials(loopback_provider), api_key="k", cache=False, num_retries=0)
    with pytest.raises(Exception, match="failed to connect") as raised:
        lm("hello")
    assert f"researcher:{PASSWORD}@127.0.0.1" in str(raised.value)
    assert loopback_provider.requests == []


@pytest.mark.parametrize("field", ["api_base", "base_url"])
def test_an_lm_with_credentials_in_its_url_is_refused_before_any_request_with_a_way_that_works(
    loopback_provider: LoopbackProvider, tmp_path, field: str
) -> None:
    lm = dspy.LM(
        "openai/gpt-4o-mini", api_key=DEFAULT_API_KEY, cache=False, **{field: _url_with_credentials(loopback_provider)}
    )
    journal = tmp_path / "j.duckdb"
    with pytest.raises(ProgramSpecError) as raised, dx.Context(lm=lm, journal=journal, threads=2):
        dx.evaluate(dx.Program("dspy.Predict", signature="question -> answer"), _questions(3), metric=_metric)
    message = str(raised.value)
    assert "\n" not in message
    assert PASSWORD not in message and "researcher" not in message
    assert field in message and "api_key=" in message and "Authorization" in message
    assert loopback_provider.requests == []
    assert not journal.exists()  # refused before the journal was opened: no experiment to clean up

    # What the message says to do instead works: the credentials arrive as an Authorization header.
    lm = loopback_provider.lm("gpt-4o-mini", extra_headers={"Authorization": f"Bearer {DEFAULT_API_KEY}"})
    with dx.Context(lm=lm, journal=journal, threads=1):
        result = dx.evaluate(dx.Program("dspy.Predict", signature="question -> answer"), _questions(1), metric=_metric)
    assert result.n_errors == 0
    assert [request.authorization for request in loopback_provider.requests] == [f"Bearer {DEFAULT_API_KEY}"]


def test_a_password_quoted_without_a_scheme_never_reaches_the_journal_or_the_display(
    loopback_provider: LoopbackProvider, tmp_path
) -> None:
    # A predictor that carries its own LM is not the context's, so it reaches a run: every trial fails with
    # DSPy's real transport error, which quotes "researcher:PASSWORD0123@127.0.0.1:PORT".
    module = dspy.Predict("question -> answer")
    module.set_lm(dspy.LM("openai/x", api_base=_url_with_credentials(loopback_provider), api_key="k", cache=False))
    journal_path = tmp_path / "j.duckdb"
    with (
        dx.Context(lm=loopback_provider.lm("gpt-4o-mini"), journal=journal_path, threads=2),
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.simplefilter("always")
        # One trial, no retries: each attempt waits on a host-name lookup that cannot succeed.
        result = dx.evaluate(
            module, _questions(1), metric=_metric, name="hosted", retries=0, trace=True, progress=False
        )
    assert loopback_provider.requests == []
    assert set(result.trials["status"]) == {"error"}
    assert all(
        "failed to connect to researcher:[REDACTED]@127.0.0.1" in text for text in result.trials["error_message"]
    )
    assert not any(PASSWORD in str(item.message) for item in caught if issubclass(item.category, DspexLabWarning))

    journal = dx.open_journal(journal_path)
    stored = {
        table: journal.sql(f"SELECT * FROM {table}").to_json(orient="records", date_format="iso")
        for table in ("experiments", "trials", "spans")
    }
    assert json.loads(stored["trials"]) and json.loads(stored["spans"])
    displayed = {
        "result table": result.trials.to_json(orient="records", date_format="iso"),
        "result html": result._repr_html_(),
        "experiment": json.dumps(journal.experiment(result.experiment_id), default=str),
        "trace": repr(journal.spans(result.experiment_id)),
    }
    for where, text in {**stored, **displayed}.items():
        assert PASSWORD not in text, f"the password reached {where}"
