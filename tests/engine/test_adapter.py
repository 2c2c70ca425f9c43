"""The caching ChatAdapter trials use by default must send exactly what dspy.ChatAdapter() sends.

These tests fail loudly when a DSPy release changes how the system message is formatted
(if it starts to depend on more than the signature, the messages differ) or stops calling
``format_system_message`` (the cache stops being used).
"""

import gc
from typing import Literal

import dspy
import pydantic
import pytest

import dspex_lab as dx
from dspex_lab.engine import RetryPolicy, ThreadExecutor, TrialRunner, TrialTask
from dspex_lab.engine._adapter import CachingChatAdapter, default_adapter


class Answer(pydantic.BaseModel):
    value: int
    unit: str


class Typed(dspy.Signature):
    """Answer with a number and its unit, and say how sure you are."""

    question: str = dspy.InputField(desc="a word problem")
    hints: list[str] = dspy.InputField()
    answer: Answer = dspy.OutputField()
    confidence: Literal["low", "high"] = dspy.OutputField()
    steps: list[int] = dspy.OutputField(desc="intermediate numbers")


SIGNATURES = {
    "plain": dspy.Signature("question -> answer"),
    "chain of thought": dspy.ChainOfThought("question -> answer").predict.signature,
    "instructions": dspy.Signature("question, context: list[str] -> answer: float", "Be brief."),
    "typed": Typed,
}
INPUTS = {
    "plain": {"question": "2+2?"},
    "chain of thought": {"question": "3 bags of 7?"},
    "instructions": {"question": "pi?", "context": ["circles", "ratios"]},
    "typed": {"question": "3 m plus 4 m?", "hints": ["add"]},
}
DEMOS = {
    "plain": [{"question": "1+1?", "answer": "2"}],
    "chain of thought": [{"question": "1+2?", "reasoning": "one plus two", "answer": "3"}],
    "instructions": [],
    "typed": [
        {
            "question": "1 m plus 1 m?",
            "hints": [],
            "answer": Answer(value=2, unit="m"),
            "confidence": "high",
            "steps": [1, 1],
        }
    ],
}


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_messages_are_exactly_chat_adapters_on_every_call(name):
    signature, inputs, demos = SIGNATURES[name], INPUTS[name], DEMOS[name]
    expected = dspy.ChatAdapter().format(signature, demos, inputs)
    adapter = CachingChatAdapter()
    first = adapter.format(signature, demos, inputs)
    second = adapter.format(signature, demos, inputs)
    assert first == expected
    assert second == expected
    assert (adapter.misses, adapter.hits) == (1, 1), "DSPy no longer calls format_system_message per call"


def test_a_signature_with_new_instructions_gets_its_own_message():
    adapter = CachingChatAdapter()
    base = SIGNATURES["plain"]
    changed = base.with_instructions("Answer in French.")
    one = adapter.format_system_message(base)
    other = adapter.format_system_message(changed)
    assert one != other
    assert "Answer in French." in other
    assert other == dspy.ChatAdapter().format_system_message(changed)


def test_the_cache_lets_go_of_signatures_nobody_uses():
    adapter = CachingChatAdapter()
    for index in range(50):
        adapter.format_system_message(SIGNATURES["plain"].with_instructions(f"variant {index}"))
    gc.collect()
    assert len(adapter._system) < 50


def test_parsing_and_the_json_fallback_behave_as_chat_adapters():
    # A completion without ChatAdapter's field markers: both must fall back to JSONAdapter the same way.
    lm = dspy.utils.DummyLM([{"answer": "4"}] * 6, adapter=dspy.JSONAdapter())  # answers in JSON
    with pytest.raises(dspy.utils.exceptions.AdapterParseError):
        CachingChatAdapter(use_json_adapter_fallback=False)(lm, {}, SIGNATURES["plain"], [], {"question": "2+2?"})
    signature = SIGNATURES["plain"]
    ours = CachingChatAdapter()(lm, {}, signature, [], {"question": "2+2?"})
    theirs = dspy.ChatAdapter()(lm, {}, signature, [], {"question": "2+2?"})
    assert ours == theirs == [{"answer": "4"}]
    assert isinstance(ours, list) and isinstance(CachingChatAdapter(), dspy.ChatAdapter)


def _run_trials(program, lm, examples):
    runner = TrialRunner(program.build(lm=lm), dx.metrics.exact_match, lm=lm, retry=RetryPolicy(retries=0))
    results = []
    tasks = [TrialTask(index=i, example_id=f"e{i}", example=example) for i, example in enumerate(examples)]
    ThreadExecutor(4).run(tasks, runner, on_result=results.append)
    return sorted(results, key=lambda result: result.index)


def test_trials_use_the_cache_and_score_as_bare_dspy_does():
    program = dx.Program("dspy.ChainOfThought", signature="question -> answer", name="adapter-test")
    examples = list(dx.datasets.arithmetic(12, seed=3))
    lm = dx.lab_lm("lab/small")
    hits = default_adapter().hits
    results = _run_trials(program, lm, examples)
    assert default_adapter().hits >= hits + len(examples) - 1
    module = program.build(lm=lm)
    with dspy.context(lm=lm):
        bare = [float(dx.metrics.exact_match(example, module(**example.inputs()))) for example in examples]
    assert [result.score for result in results] == bare
    assert all(result.ok for result in results)


def test_an_adapter_the_researcher_configured_is_used_as_is():
    program = dx.Program("dspy.Predict", signature="question -> answer", name="adapter-test")
    examples = list(dx.datasets.arithmetic(4, seed=5))
    lm = dx.lab_lm("lab/small")
    seen = []

    class Recording(dspy.JSONAdapter):
        def format(self, signature, demos, inputs):
            seen.append(type(self).__name__)
            return super().format(signature, demos, inputs)

    hits = default_adapter().hits
    with dspy.context(adapter=Recording()):
        results = _run_trials(program, lm, examples)
    assert len(results) == len(examples)
    assert seen.count("Recording") >= len(examples)
    assert default_adapter().hits == hits


def test_dspy_callbacks_see_each_format_and_parse_once():
    from dspy.utils.callback import BaseCallback

    calls = []

    class Counting(BaseCallback):
        def on_adapter_format_start(self, call_id, instance, inputs):
            calls.append("format")

        def on_adapter_parse_start(self, call_id, instance, inputs):
            calls.append("parse")

    lm = dspy.utils.DummyLM([{"answer": "4"}])
    with dspy.context(callbacks=[Counting()]):
        CachingChatAdapter()(lm, {}, SIGNATURES["plain"], [], {"question": "2+2?"})
    assert calls == ["format", "parse"]
