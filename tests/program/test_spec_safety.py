"""A program spec is data: hostile specs are refused with a ProgramSpecError naming what is wrong."""

from __future__ import annotations

import json
import time
import tracemalloc
from pathlib import Path

import dspy
import pytest

import dspex_lab as dx
from dspex_lab.cli import main
from dspex_lab.errors import ProgramSpecError
from dspex_lab.program import Constraint, allowed_models, set_allowed_models
from dspex_lab.program._constraints import MAX_SEQUENCE_LENGTH


@pytest.fixture(autouse=True)
def no_allowed_models():
    set_allowed_models([])
    yield
    set_allowed_models([])


def write_spec(folder: Path, spec: dict) -> Path:
    path = folder / "spec.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    return path


def write_data(folder: Path) -> Path:
    path = folder / "problems.jsonl"
    path.write_text("\n".join(json.dumps(example.toDict()) for example in dx.datasets.arithmetic(3, seed=1)))
    return path


def evaluate_spec(folder: Path, spec: dict, *extra: str) -> int:
    arguments = ["evaluate", str(write_spec(folder, spec)), str(write_data(folder)), "--inputs", "question"]
    return main([*arguments, "--metric", "numeric_match", "--quiet", "--journal", str(folder / "j.duckdb"), *extra])


# -- init carries no endpoint or credential ------------------------------------------------------


@pytest.mark.parametrize(
    ("init", "named"),
    [
        ({"api_base": "http://127.0.0.1:9/v1"}, "init.api_base"),
        ({"base_url": "http://127.0.0.1:9/v1"}, "init.base_url"),
        ({"API-Key": "abc"}, "init.API-Key"),
        ({"extra_headers": {"Authorization": "Bearer x"}}, "init.extra_headers"),
        ({"config": {"client_secret": "x"}}, "init.config.client_secret"),
        ({"config": [{"password": "x"}]}, "init.config[0].password"),
        ({"note": "https://evil.example/v1"}, "init.note"),
        ({"note": "sk-abcdef0123456789"}, "init.note"),
    ],
)
def test_init_cannot_carry_endpoints_or_credentials(init, named):
    with pytest.raises(ProgramSpecError) as caught:
        dx.Program("dspy.Predict", signature="question -> answer", init=init)
    assert str(caught.value).startswith(named + ":")


def test_plain_init_arguments_still_work():
    program = dx.Program("dspy.ReAct", signature="question -> answer", init={"tools": [], "max_iters": 3})
    assert program.init["max_iters"] == 3


def test_a_spec_file_with_an_endpoint_is_refused_by_dspex_evaluate_before_any_request(
    tmp_path, capsys, monkeypatch, loopback_provider
):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-environment-0123456789")
    spec = {
        "module": "dspy.Predict",
        "signature": "question -> answer",
        "init": {"api_base": loopback_provider.url},
        "variables": {"model": {"type": "choice", "value": "openai/gpt-4o-mini", "choices": ["openai/gpt-4o-mini"]}},
    }
    assert evaluate_spec(tmp_path, spec) == 2
    error = capsys.readouterr().err
    assert "init.api_base" in error and "cannot carry endpoints or credentials" in error
    assert loopback_provider.requests == []


# -- a spec cannot switch the run to a hosted LM ------------------------------------------------------


def hosted_choice_spec() -> dict:
    return {
        "module": "dspy.Predict",
        "signature": "question -> answer",
        "variables": {
            "model": {"type": "choice", "value": "openai/gpt-4o-mini", "choices": ["lab/small", "openai/gpt-4o-mini"]}
        },
    }


def test_a_model_variable_cannot_switch_a_lab_run_to_a_hosted_model_through_dspex_evaluate(
    tmp_path, capsys, monkeypatch, loopback_provider
):
    # Were the model resolved, DSPy would send the environment's key to this server.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-environment-0123456789")
    monkeypatch.setenv("OPENAI_API_BASE", loopback_provider.url)
    monkeypatch.setenv("OPENAI_BASE_URL", loopback_provider.url)
    assert evaluate_spec(tmp_path, hosted_choice_spec()) == 2
    error = capsys.readouterr().err
    assert "variable 'model' selects model 'openai/gpt-4o-mini'" in error
    assert "set_allowed_models" in error
    assert loopback_provider.requests == []


def test_lab_models_and_the_runs_own_model_are_allowed():
    program = dx.Program.from_dict(hosted_choice_spec())
    assert program.with_values(model="lab/small").build(lm=dx.lab_lm("lab/large")).lm.model == "lab/small"
    own = dspy.LM("openai/gpt-4o-mini", api_key="sk-test-0123456789")
    built = program.with_values(model="openai/gpt-4o-mini").build(lm=own)
    assert built.lm.model == "openai/gpt-4o-mini"
    with pytest.raises(ProgramSpecError, match="neither a lab model"):
        program.build(lm=dx.lab_lm())


def test_the_allow_list_comes_from_the_setting_or_the_environment(monkeypatch):
    program = dx.Program.from_dict(hosted_choice_spec())
    set_allowed_models(["openai/gpt-4o-mini"])
    assert program.build(lm=dx.lab_lm()).lm.model == "openai/gpt-4o-mini"
    set_allowed_models([])
    monkeypatch.setenv("DSPEX_ALLOWED_MODELS", "anthropic/claude, openai/gpt-4o-mini")
    assert allowed_models() == {"anthropic/claude", "openai/gpt-4o-mini"}
    assert program.build(lm=dx.lab_lm()).lm.model == "openai/gpt-4o-mini"
    with pytest.raises(ProgramSpecError, match="model strings"):
        set_allowed_models([""])


# -- attribute targets stay inside the module tree ----------------------------------------------------


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("__class__.forward", "reaches '__class__'"),
        ("_compiled", "reaches '_compiled'"),
        ("demos.__len__", "reaches '__len__'"),
        ("lm", "would replace 'lm'"),
        ("callbacks", "would replace 'callbacks'"),
        ("a..b", "not a dotted attribute path"),
    ],
)
def test_attribute_targets_cannot_reach_private_names(target, message):
    spec = {"module": "dspy.Predict", "signature": "q -> a", "variables": {"hook": {"type": "text", "value": "x"}}}
    spec["variables"]["hook"]["target"] = target
    with pytest.raises(ProgramSpecError, match="variable 'hook'") as caught:
        dx.Program.from_dict(spec)
    assert message in str(caught.value)


def test_a_target_cannot_replace_a_method_or_reach_a_class():
    original = dspy.Predict.forward
    for target, message in [("forward", "holds a method"), ("signature.instructions", "is a")]:
        program = dx.Program("dspy.Predict", signature="q -> a", variables={"hook": dx.Text("x", target=target)})
        with pytest.raises(ProgramSpecError, match="variable 'hook'") as caught:
            program.build(lm=dx.lab_lm())
        assert message in str(caught.value)
    assert dspy.Predict.forward is original
    assert dspy.Predict("q -> a").signature.instructions != "x"


def test_a_hostile_target_in_a_spec_file_leaves_dspy_untouched(tmp_path, capsys):
    original = dspy.Predict.forward
    spec = {
        "module": "dspy.Predict",
        "signature": "question -> answer",
        "variables": {"hook": {"type": "text", "value": "x", "target": "__class__.forward"}},
    }
    assert evaluate_spec(tmp_path, spec) == 2
    assert "variable 'hook'" in capsys.readouterr().err
    assert dspy.Predict.forward is original


# -- constraints are bounded --------------------------------------------------------------------------


def test_a_huge_literal_repetition_is_refused_when_parsed_without_allocating_it():
    tracemalloc.start()
    started, cpu_started = time.monotonic(), time.thread_time()
    try:
        with pytest.raises(ProgramSpecError, match="repeating a literal 1,000,000,000 times"):
            Constraint("len('x'*1000000000) > 0")
        cpu = time.thread_time() - cpu_started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert cpu < 0.5  # building the string would take about 0.7 s of CPU and 1 GB
    assert peak < 10 * 1024 * 1024
    assert time.monotonic() - started < 60  # a hang guard only


@pytest.mark.parametrize(
    ("expression", "values", "message"),
    [
        ("len(text * count) > 0", {"text": "ab", "count": 10**9}, "repetition of 2,000,000,000 items"),
        ("len(text + text) > 0", {"text": "a" * MAX_SEQUENCE_LENGTH, "count": 1}, "concatenation exceeds"),
        ("len(text % count) > 0", {"text": "%0999999999d", "count": 1}, "'%' formatting of strings"),
        ("count * count * count * count > 0", {"text": "", "count": 2**100}, "exceeds 256 bits"),
    ],
)
def test_evaluation_is_bounded_for_values_coming_from_variables(expression, values, message):
    rule = Constraint(expression)
    tracemalloc.start()
    started, cpu_started = time.monotonic(), time.thread_time()
    try:
        with pytest.raises(ProgramSpecError, match="constraint") as caught:
            rule.holds(values)
        cpu = time.thread_time() - cpu_started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert message in str(caught.value)
    assert cpu < 0.5  # building any of these values would take 0.6 s to 4 s of CPU (or gigabytes)
    assert peak < 10 * 1024 * 1024
    assert time.monotonic() - started < 60  # a hang guard only


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("x > 0 and " * 300 + "x > 0", "characters exceeds"),
        (" + ".join(["x"] * 150) + " > 0", "more than 200 syntax nodes"),
        ("x > " + "9" * 100, "integer literal exceeds"),
        ("x in " + repr("y" * (MAX_SEQUENCE_LENGTH + 1)), "exceeds"),
    ],
)
def test_oversized_expressions_are_refused_when_parsed(expression, message):
    with pytest.raises(ProgramSpecError) as caught:
        Constraint(expression)
    assert message in str(caught.value)


def test_small_constraints_still_evaluate():
    rule = Constraint("len(text * 3) == 6 and count * 2 < 10 and -count < 0")
    assert rule.holds({"text": "ab", "count": 4})
    assert not rule.holds({"text": "ab", "count": 5})


def test_allowing_widens_the_allow_lists_for_a_block_and_restores_them():
    # A worker building a program the driver allowed: the driver's lists join the worker's own, then leave.
    from dspex_lab.program import (
        allowed_models,
        allowed_prefixes,
        allowing_models,
        allowing_prefixes,
        set_allowed_models,
    )

    set_allowed_models(["openai/own-model"])
    try:
        with allowing_models(["openai/driver-model"]), allowing_prefixes(["driverpkg."]):
            assert allowed_models() >= {"openai/own-model", "openai/driver-model"}
            assert allowed_prefixes()[-1] == "driverpkg." and "dspy." in allowed_prefixes()
        assert "openai/driver-model" not in allowed_models() and "openai/own-model" in allowed_models()
        assert "driverpkg." not in allowed_prefixes()
        with pytest.raises(ProgramSpecError, match="allowed models are model strings"), allowing_models([""]):
            pass
        assert allowed_models() >= {"openai/own-model"}
    finally:
        set_allowed_models([])
