import asyncio
import contextvars
import json
import os
import subprocess
import sys
import time
import typing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dspy
import pydantic
import pytest
from dspy import lm15
from dspy.teleprompt.simba_utils import OfferFeedback
from dspy.utils.exceptions import LMProviderError, LMRateLimitError, is_retryable_lm_error

from dspex_lab.datasets import arithmetic, parse_problem
from dspex_lab.errors import ProgramSpecError
from dspex_lab.lm import LAB_MODELS, LabEngine, LabLM, LabLMError, LabRateLimitError, lab_lm, lm_cost
from dspex_lab.lm._skills import read_instructions
from dspex_lab.providers import resolve_lm

ROOT = Path(__file__).resolve().parents[2]


def _request(text, *, model="lab/small", temperature=None, seed=None):
    return lm15.Request(
        model=model, messages=(lm15.Message.user(text),), config=lm15.Config(temperature=temperature, seed=seed)
    )


def test_predict_and_chain_of_thought_return_parsed_predictions():
    example = arithmetic(1, seed=0)[0]
    with dspy.context(lm=lab_lm()):
        direct = dspy.Predict("question -> answer: int")(question=example.question)
        reasoned = dspy.ChainOfThought("question -> answer")(question=example.question)
    assert isinstance(direct.answer, int)
    assert isinstance(reasoned.answer, str) and reasoned.answer.strip().isdigit()
    assert "=" in reasoned.reasoning


def test_json_adapter_gets_a_json_answer():
    example = arithmetic(1, seed=0)[0]
    with dspy.context(lm=lab_lm(), adapter=dspy.JSONAdapter()):
        prediction = dspy.ChainOfThought("question -> answer: int")(question=example.question)
    assert isinstance(prediction.answer, int)
    assert prediction.reasoning


def test_lab_lm_is_a_dspy_lm_with_a_custom_engine():
    lm = lab_lm("lab/large")
    assert isinstance(lm, dspy.LM) and isinstance(lm, LabLM)
    assert isinstance(lm.engine, LabEngine)
    assert "forward" not in LabLM.__dict__ and "aforward" not in LabLM.__dict__
    assert lm.model == "lab/large" and lm.num_retries == 0 and lm.cache is False


def test_async_calls_work():
    example = arithmetic(1, seed=0)[0]

    async def run():
        with dspy.context(lm=lab_lm()):
            return await dspy.Predict("question -> answer: int").acall(question=example.question)

    assert isinstance(asyncio.run(run()).answer, int)


def test_a_plain_prompt_gets_a_plain_reply():
    outputs = lab_lm()("Say hello to the lab.")
    assert isinstance(outputs, list) and outputs[0]


def _accuracy(examples, *, model, temperature, reasoning):
    program = dspy.ChainOfThought("question -> answer") if reasoning else dspy.Predict("question -> answer")
    correct = 0
    with dspy.context(lm=lab_lm(model, temperature=temperature)):
        for example in examples:
            correct += str(program(question=example.question).answer).strip() == example.answer
    return correct / len(examples)


@pytest.fixture(scope="module")
def accuracy_table():
    examples = arithmetic(300, seed=0)
    return {
        (model, temperature, reasoning): _accuracy(examples, model=model, temperature=temperature, reasoning=reasoning)
        for model in LAB_MODELS
        for temperature in (0.2, 1.2)
        for reasoning in (False, True)
    }


def test_reasoning_beats_direct_answers(accuracy_table):
    for model in LAB_MODELS:
        for temperature in (0.2, 1.2):
            # lab/large slips less, so Predict's 1.8x penalty costs it less (docs/lab_world.md, section 2).
            assert accuracy_table[model, temperature, True] >= accuracy_table[model, temperature, False] + 0.05
    assert accuracy_table["lab/small", 0.2, True] >= accuracy_table["lab/small", 0.2, False] + 0.10


def test_low_temperature_beats_high_temperature(accuracy_table):
    for model in LAB_MODELS:
        for reasoning in (False, True):
            # lab/large has fewer slips for temperature to multiply: its expected gap is about 0.1, not more.
            margin = 0.10 if model == "lab/small" else 0.05
            assert accuracy_table[model, 0.2, reasoning] >= accuracy_table[model, 1.2, reasoning] + margin


def test_large_beats_small(accuracy_table):
    for temperature in (0.2, 1.2):
        for reasoning in (False, True):
            large = accuracy_table["lab/large", temperature, reasoning]
            assert large > accuracy_table["lab/small", temperature, reasoning]


def test_accuracies_are_informative(accuracy_table):
    assert all(0.05 < value < 0.97 for value in accuracy_table.values())
    assert 0.6 <= accuracy_table["lab/small", 0.2, True] <= 0.9
    assert accuracy_table["lab/small", 0.2, False] < accuracy_table["lab/small", 0.2, True]


class _CarefulSolve(dspy.Signature):
    """Solve the word problem step by step, carefully; double-check each operation and answer with an integer."""

    question: str = dspy.InputField()
    answer: str = dspy.OutputField()


def test_demos_and_careful_instructions_help():
    examples = arithmetic(300, seed=5)
    demos = [
        dspy.Example(question=e.question, reasoning="Work it out.", answer=e.answer) for e in arithmetic(4, seed=99)
    ]

    def accuracy(program):
        with dspy.context(lm=lab_lm(temperature=0.7)):
            return sum(str(program(question=e.question).answer) == e.answer for e in examples) / len(examples)

    plain = dspy.ChainOfThought("question -> answer")
    helped = dspy.ChainOfThought(_CarefulSolve)
    helped.predict.demos = demos
    assert accuracy(helped) > accuracy(plain) + 0.03


def test_the_solver_does_not_read_the_gold_answer():
    examples = arithmetic(60, seed=3)
    # Demos that state the very same questions with wrong gold answers: an
    # oracle (or a copier) would repeat them; a solver recomputes.
    wrong = [dspy.Example(question=e.question, answer=str(int(e.answer) + 7)) for e in examples]
    program = dspy.Predict("question -> answer")
    program.demos = wrong[:3]
    solved = copied = 0
    with dspy.context(lm=lab_lm("lab/large", temperature=0.0)):
        for example, mislabeled in zip(examples, wrong, strict=True):
            answer = str(program(question=mislabeled.question).answer)
            solved += answer == str(parse_problem(example.question).solve())
            copied += answer == mislabeled.answer
    # Wrong demos hurt the skills they show (docs/lab_world.md, section 3), so the
    # bar is lower than the model's clean accuracy; copying stays near zero.
    assert solved >= 0.5 * len(examples)
    assert copied <= 2


def _cot_outputs(lm, questions):
    program = dspy.ChainOfThought("question -> answer")
    with dspy.context(lm=lm):
        return [(p.reasoning, p.answer) for p in (program(question=q) for q in questions)]


def test_the_same_prompt_gives_the_same_completion():
    questions = [example.question for example in arithmetic(20, seed=11)]
    assert _cot_outputs(lab_lm(temperature=1.0), questions) == _cot_outputs(lab_lm(temperature=1.0), questions)


@pytest.mark.slow
def test_completions_are_identical_in_another_process():
    questions = [example.question for example in arithmetic(10, seed=11)]
    script = (
        "import json, dspy\n"
        "from dspex_lab.lm import lab_lm\n"
        "from dspex_lab.datasets import arithmetic\n"
        "qs = [e.question for e in arithmetic(10, seed=11)]\n"
        "program = dspy.ChainOfThought('question -> answer')\n"
        "with dspy.context(lm=lab_lm(temperature=1.0)):\n"
        "    print(json.dumps([[p.reasoning, p.answer] for p in (program(question=q) for q in qs)]))\n"
    )
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "12345"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=environment, check=True, timeout=60
    )
    other = [tuple(pair) for pair in json.loads(result.stdout.strip().splitlines()[-1])]
    assert other == _cot_outputs(lab_lm(temperature=1.0), questions)


def test_copy_with_rollout_id_varies_outputs_at_positive_temperature():
    question = arithmetic(1, seed=21)[0].question
    lm = lab_lm(temperature=1.0)
    outputs = {_cot_outputs(lm.copy(rollout_id=rollout, temperature=1.0), [question])[0] for rollout in range(20)}
    assert len({reasoning for reasoning, _ in outputs}) >= 3
    again = _cot_outputs(lm.copy(rollout_id=3, temperature=1.0), [question])
    assert again == _cot_outputs(lm.copy(rollout_id=3, temperature=1.0), [question])


def test_several_rollouts_give_different_correctness():
    examples = arithmetic(30, seed=22)
    lm = lab_lm(temperature=1.2)
    per_rollout = []
    for rollout in range(4):
        outputs = _cot_outputs(lm.copy(rollout_id=rollout), [e.question for e in examples])
        per_rollout.append(tuple(answer == e.answer for (_, answer), e in zip(outputs, examples, strict=True)))
    assert len(set(per_rollout)) > 1


def test_rollout_does_not_matter_at_temperature_zero():
    question = arithmetic(1, seed=21)[0].question
    lm = lab_lm(temperature=0.0)
    baseline = _cot_outputs(lm, [question])
    assert all(_cot_outputs(lm.copy(rollout_id=r), [question]) == baseline for r in range(5))


def test_request_seed_changes_the_draw():
    engine = LabEngine()
    question = arithmetic(1, seed=24)[0].question
    texts = {engine.complete(_request(question, temperature=1.0, seed=seed)).message.text for seed in range(15)}
    assert len(texts) >= 3


def test_determinism_holds_under_threads():
    questions = [example.question for example in arithmetic(120, seed=31)]
    lm = lab_lm(temperature=0.8)
    program = dspy.ChainOfThought("question -> answer")

    def run(question):
        with dspy.context(lm=lm):
            return program(question=question).reasoning

    sequential = [run(q) for q in questions]
    with ThreadPoolExecutor(max_workers=8) as pool:
        threaded = list(pool.map(lambda q: contextvars.copy_context().run(run, q), questions))
    assert threaded == sequential


class _Verdict(pydantic.BaseModel):
    label: str
    confidence: float


class _Generic(dspy.Signature):
    """Describe the text."""

    text: str = dspy.InputField()
    summary: str = dspy.OutputField()
    n_words: int = dspy.OutputField()
    is_long: bool = dspy.OutputField()
    tags: list[str] = dspy.OutputField()
    kind: typing.Literal["poem", "news report"] = dspy.OutputField()
    score: float = dspy.OutputField()
    verdict: _Verdict = dspy.OutputField()


@pytest.mark.parametrize("adapter", [dspy.ChatAdapter(), dspy.JSONAdapter()], ids=["chat", "json"])
def test_generic_signatures_get_well_typed_values(adapter):
    text = "The quick brown fox jumps over the lazy dog"
    with dspy.context(lm=lab_lm(), adapter=adapter):
        prediction = dspy.Predict(_Generic)(text=text)
        simple = dspy.Predict("text -> summary: str, n_words: int, is_long: bool")(text=text)
    assert isinstance(prediction.summary, str) and prediction.summary
    assert prediction.n_words == 9
    assert isinstance(prediction.is_long, bool)
    assert isinstance(prediction.tags, list) and all(isinstance(tag, str) for tag in prediction.tags)
    assert prediction.kind in ("poem", "news report")
    assert isinstance(prediction.score, float)
    assert isinstance(prediction.verdict, _Verdict)
    assert simple.n_words == 9 and isinstance(simple.is_long, bool) and "quick brown fox" in simple.summary


def test_simba_feedback_signature_parses_with_advice_per_module():
    names = ["predict", "solver.predict"]
    with dspy.context(lm=lab_lm()):
        feedback = dspy.Predict(OfferFeedback)(
            program_code="class P(dspy.Module): ...",
            modules_defn="predict: question -> answer",
            program_inputs="{'question': '...'}",
            oracle_metadata="",
            worse_program_trajectory="...",
            worse_program_outputs="answer: 3",
            worse_reward_value=0.0,
            worse_reward_info="",
            better_program_trajectory="...",
            better_program_outputs="answer: 4",
            better_reward_value=1.0,
            better_reward_info="",
            module_names=names,
        )
    assert isinstance(feedback.discussion, str) and feedback.discussion
    assert set(feedback.module_advice) == set(names)
    # The trajectories show no question, so nothing diverges and no module gets a skill rule
    # (the old canned "step by step" advice is gone; tests/lm/test_lab_world.py covers diagnoses).
    assert "no skill to correct" in feedback.discussion
    assert all(read_instructions(advice).rules == frozenset() for advice in feedback.module_advice.values())


def test_dspy_simba_runs_on_the_lab_lm():
    trainset = arithmetic(8, seed=41)
    metric = lambda example, prediction, trace=None: float(str(prediction.answer) == example.answer)  # noqa: E731
    optimizer = dspy.SIMBA(metric=metric, bsize=4, num_candidates=2, max_steps=1, num_threads=1)
    with dspy.context(lm=lab_lm(temperature=0.7)):
        optimized = optimizer.compile(dspy.ChainOfThought("question -> answer"), trainset=trainset, seed=0)
    assert isinstance(optimized, dspy.Module)


def test_usage_is_reported_in_history():
    lm = lab_lm()
    with dspy.context(lm=lm):
        dspy.ChainOfThought("question -> answer")(question=arithmetic(1)[0].question)
    usage = lm.history[-1]["usage"]
    assert usage["prompt_tokens"] > 50 and usage["completion_tokens"] > 5
    output = lm.history[-1]["outputs"][0]
    text = output if isinstance(output, str) else output["text"]
    assert usage["completion_tokens"] == len(text) // 4 + 1


def test_lm_cost_uses_the_lab_price_table():
    assert lm_cost("lab/small", 1_000_000, 1_000_000) == pytest.approx(0.75)
    assert lm_cost("lab/large", 1_000_000, 0) == pytest.approx(2.5)
    assert lm_cost("lab/large", 1000, 500) > lm_cost("lab/small", 1000, 500)
    assert lm_cost("openai/gpt-4o", 10, 10) is None


def _run_calls(lm, count, *, seed):
    outcomes = []
    program = dspy.Predict("question -> answer")
    with dspy.context(lm=lm):
        for example in arithmetic(count, seed=seed):
            try:
                program(question=example.question)
                outcomes.append(None)
            except Exception as error:
                outcomes.append(error)
    return outcomes


def test_error_rate_is_roughly_right_and_not_retryable():
    outcomes = _run_calls(lab_lm(error_rate=0.2), 500, seed=51)
    errors = [error for error in outcomes if error is not None]
    assert 0.12 <= len(errors) / len(outcomes) <= 0.28
    assert all(isinstance(error, LMProviderError) and not isinstance(error, LMRateLimitError) for error in errors)
    assert all(isinstance(error.__cause__, LabLMError) for error in errors)
    assert not any(is_retryable_lm_error(error) for error in errors)


def test_rate_limits_are_dspy_rate_limit_errors_and_not_retried_by_dspy():
    lm = lab_lm(rate_limit_rate=1.0)
    calls = []
    original = lm.engine.complete
    lm.engine.complete = lambda request: (calls.append(request), original(request))[1]
    with dspy.context(lm=lm), pytest.raises(LMRateLimitError) as raised:
        dspy.Predict("question -> answer")(question="What is 2 + 2?")
    assert isinstance(raised.value.__cause__, LabRateLimitError)
    assert is_retryable_lm_error(raised.value)
    assert len(calls) == 1


def test_rate_limit_rate_is_roughly_right():
    outcomes = _run_calls(lab_lm(rate_limit_rate=0.3), 400, seed=52)
    share = sum(isinstance(error, LMRateLimitError) for error in outcomes) / len(outcomes)
    assert 0.2 <= share <= 0.4


def test_a_rate_limited_call_can_succeed_when_retried():
    lm = lab_lm(rate_limit_rate=0.5, seed=3)
    program = dspy.Predict("question -> answer")
    questions = [example.question for example in arithmetic(40, seed=53)]
    with dspy.context(lm=lm):
        limited = None
        for question in questions:
            try:
                program(question=question)
            except LMRateLimitError:
                limited = question
                break
        assert limited is not None
        for _ in range(20):
            try:
                prediction = program(question=limited)
                break
            except LMRateLimitError:
                continue
        else:
            pytest.fail("a retried call never succeeded")
    assert prediction.answer


def test_fault_pattern_is_seeded_and_repeatable():
    first = [error is None for error in _run_calls(lab_lm(error_rate=0.3, seed=1), 60, seed=54)]
    again = [error is None for error in _run_calls(lab_lm(error_rate=0.3, seed=1), 60, seed=54)]
    other = [error is None for error in _run_calls(lab_lm(error_rate=0.3, seed=2), 60, seed=54)]
    assert first == again
    assert first != other


def test_latency_and_hangs_sleep():
    question = "What is 2 + 2?"
    started = time.perf_counter()
    LabEngine(latency=0.05).complete(_request(question))
    assert time.perf_counter() - started >= 0.05
    started = time.perf_counter()
    LabEngine(hang_rate=1.0, hang_seconds=0.1).complete(_request(question))
    assert time.perf_counter() - started >= 0.1


def test_max_tokens_truncates():
    response = LabEngine().complete(
        lm15.Request(
            model="lab/small",
            messages=(lm15.Message.user("Tell me about the lab. " * 50),),
            config=lm15.Config(max_tokens=5),
        )
    )
    assert response.finish_reason == "length"
    assert len(response.message.text) <= 20


def test_unknown_model_in_a_request_is_refused():
    with pytest.raises(lm15.UnsupportedModelError):
        LabEngine().complete(_request("hi", model="lab/huge"))


def test_dump_and_load_state_round_trip():
    lm = lab_lm("lab/large", error_rate=0.1, seed=5, temperature=0.3).copy(rollout_id=2)
    state = lm.dump_state()
    json.dumps(state)
    loaded = dspy.BaseLM.load_state(state, allow_custom_lm_class=True)
    assert isinstance(loaded, LabLM)
    assert loaded.engine.dump_state() == lm.engine.dump_state()
    assert loaded.engine.rollout_id == 2
    question = arithmetic(1, seed=61)[0].question
    assert _cot_outputs(loaded, [question]) == _cot_outputs(lm, [question])


def test_resolve_lm(monkeypatch):
    monkeypatch.delenv("DSPEX_LM", raising=False)
    default = resolve_lm(None)
    assert isinstance(default, LabLM) and default.model == "lab/small"
    monkeypatch.setenv("DSPEX_LM", "lab/large")
    assert resolve_lm(None).model == "lab/large"
    assert resolve_lm("lab/large").model == "lab/large"
    other = resolve_lm("openai/gpt-4o-mini")
    assert type(other) is dspy.LM and other.model == "openai/gpt-4o-mini"
    lm = lab_lm()
    assert resolve_lm(lm) is lm
    with pytest.raises(ProgramSpecError, match=r"dspy\.BaseLM"):
        resolve_lm(42)
    with pytest.raises(ProgramSpecError):
        resolve_lm("lab/huge")
    with pytest.raises(ProgramSpecError):
        resolve_lm("  ")


@pytest.mark.parametrize("arguments", [{"error_rate": 1.5}, {"latency": -1}, {"temperature": 3.0}, {"seed": "x"}])
def test_bad_lab_lm_arguments_are_spec_errors(arguments):
    with pytest.raises(ProgramSpecError):
        lab_lm(**arguments)


@pytest.mark.parametrize("adapter", [dspy.ChatAdapter(), dspy.JSONAdapter()])
def test_typed_intermediate_fields_hold_the_problems_numbers_not_the_answer(adapter):
    problem = arithmetic(1, seed=0)[0]  # "Kofi has 23 seedlings. He buys 4 packets with 4 seedlings each. ..."
    with dspy.context(lm=LabLM("lab/small"), adapter=adapter):
        whole = dspy.Predict("question -> numbers: list[int], answer: int")(question=problem.question)
        measured = dspy.Predict("question -> quantities: list[float], total: float")(question=problem.question)
    assert whole.numbers == [23, 4, 4, 3] and isinstance(whole.answer, int)
    assert measured.quantities == [23.0, 4.0, 4.0, 3.0]
    from dspex_lab.lm.generic import value_for_field
    from dspex_lab.lm.prompt import OutputField

    stated = {"question": "Pay 1,200 dollars, then 3.5 more; version v1.2 is free"}
    assert value_for_field(OutputField("amounts", "list[float]", "", ""), stated, draw=0) == [1200.0, 3.5]
    assert value_for_field(OutputField("amounts", "list[int]", "", ""), stated, draw=0) == [1200]
