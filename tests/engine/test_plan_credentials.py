"""A work plan never carries credentials from an LM's URL to process or Dask workers (issue 18).

``api_base`` travels in the plan so workers reach the same endpoint; a URL with user information in it
would carry the password to every worker (and DSPy's client could not use it anyway). ``dx.Context``
refuses such an LM first; these tests build the runner directly, as an engine caller could.
"""

from __future__ import annotations

import dspy
import pytest

import dspex_lab as dx
from dspex_lab.engine import RetryPolicy, TrialRunner
from dspex_lab.engine._remote import describe_lm, encode, plan_for
from dspex_lab.errors import ExecutionError

PASSWORD = "PASSWORD0123"


@pytest.mark.parametrize(
    ("field", "url"),
    [
        ("api_base", f"http://researcher:{PASSWORD}@llm.example.com/v1"),
        ("base_url", f"https://researcher:{PASSWORD}@10.0.0.5:8443/v1"),
        ("api_base", f"https://{PASSWORD}@llm.example.com/v1"),  # a token as the user, no password
        ("api_base", f"researcher:{PASSWORD}@llm.example.com:8000/v1"),  # no scheme
    ],
)
def test_describe_lm_refuses_an_endpoint_with_user_information(field: str, url: str) -> None:
    lm = dspy.LM("openai/gpt-4o-mini", api_key="sk-test-0123456789", **{field: url})
    with pytest.raises(ExecutionError) as raised:
        describe_lm(lm, executor="process")
    message = str(raised.value)
    assert PASSWORD not in message and "researcher" not in message
    assert field in message and "process executor" in message


def test_a_plan_for_a_runner_with_credentials_in_its_url_is_refused() -> None:
    lm = dspy.LM("openai/gpt-4o-mini", api_base=f"http://researcher:{PASSWORD}@llm.example.com/v1", api_key="k")
    module = dx.Program("dspy.Predict", signature="question -> answer").build(lm=lm)
    runner = TrialRunner(module, dx.metrics.exact_match, lm=lm, retry=RetryPolicy())
    for executor in ("process", "dask"):
        with pytest.raises(ExecutionError, match="credentials in its URL"):
            plan_for(runner, executor=executor)

    # The same endpoint without its credentials travels; the key stays behind, as before.
    clean = lm.copy(api_base="http://llm.example.com/v1")
    sent = encode(plan_for(TrialRunner(module, dx.metrics.exact_match, lm=clean, retry=RetryPolicy()), executor="dask"))
    assert b"llm.example.com/v1" in sent and PASSWORD.encode() not in sent
