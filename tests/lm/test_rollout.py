"""Repeat r of a trial runs on DSPy rollout ids of its own (dspex_lab.providers.for_repeat), on any LM."""

from __future__ import annotations

import dspy

from dspex_lab.datasets import arithmetic
from dspex_lab.lm import lab_lm
from dspex_lab.providers import ROLLOUT_STRIDE, for_repeat, lm_samples, repeat_rollout_id, repeats_can_differ


class TwoPredictors(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hot = dspy.ChainOfThought("question -> answer")
        self.cold = dspy.Predict("question, answer -> verdict")

    def forward(self, question: str) -> dspy.Prediction:
        answer = self.hot(question=question).answer
        return self.cold(question=question, answer=answer)


def _answer(module: dspy.Module, lm: dspy.BaseLM, question: str) -> str:
    with dspy.context(lm=lm):
        return str(module(question=question).answer)


def test_repeats_of_the_lab_lm_differ_and_each_is_reproducible() -> None:
    question = arithmetic(1, seed=23)[0].question
    module, lm = dspy.ChainOfThought("question -> answer"), lab_lm(temperature=1.0)
    answers = [_answer(*for_repeat(module, lm, repeat), question) for repeat in range(16)]
    assert len(set(answers)) >= 3
    assert _answer(*for_repeat(module, lm, 5), question) == answers[5]
    assert _answer(module, lm, question) == answers[0]  # repeat 0 is the plain call


def test_repeat_zero_is_the_module_and_lm_as_they_are() -> None:
    module, lm = dspy.Predict("question -> answer"), lab_lm(temperature=1.0)
    assert for_repeat(module, lm, 0) == (module, lm)


def test_only_the_lms_that_sample_get_a_rollout_and_the_module_is_left_alone() -> None:
    module = TwoPredictors()
    hot, cold, run = lab_lm(temperature=0.9), lab_lm(temperature=0.0), lab_lm()
    module.hot.predict.lm, module.cold.lm = hot, cold
    variant, run_lm = for_repeat(module, run, 2)
    assert run_lm is run  # the lab LM with no temperature is greedy: no rollout id, no DSPy warning
    assert variant is not module and variant.cold.lm is cold
    assert variant.hot.predict.lm.kwargs["rollout_id"] == 2 * ROLLOUT_STRIDE
    assert variant.hot.predict.lm.kwargs["temperature"] == 0.9
    assert module.hot.predict.lm is hot and "rollout_id" not in hot.kwargs


def test_an_lm_a_custom_module_keeps_as_an_attribute_gets_the_rollout_too() -> None:
    class Judged(dspy.Module):
        def __init__(self) -> None:
            super().__init__()
            self.judge_lm = lab_lm(temperature=0.7)
            self.answer = dspy.Predict("question -> answer")

    module = Judged()
    variant, _ = for_repeat(module, lab_lm(), 1)
    assert variant.judge_lm.kwargs["rollout_id"] == ROLLOUT_STRIDE and "rollout_id" not in module.judge_lm.kwargs


def test_a_predictor_config_temperature_makes_the_run_lm_sample() -> None:
    cold = lab_lm(temperature=0.0)
    assert not repeats_can_differ(dspy.Predict("question -> answer"), cold)
    module = dspy.Predict("question -> answer", temperature=1.0)
    assert repeats_can_differ(module, cold)
    variant, run_lm = for_repeat(module, cold, 3)
    assert variant is module and run_lm.kwargs["rollout_id"] == 3 * ROLLOUT_STRIDE


def test_rollout_ids_build_on_the_lms_own_and_leave_room_for_dspy_modules_counting_up() -> None:
    assert repeat_rollout_id(None, 0) is None and repeat_rollout_id(7, 0) == 7
    assert repeat_rollout_id(7, 1) - repeat_rollout_id(7, 0) == ROLLOUT_STRIDE
    assert ROLLOUT_STRIDE > 1000  # dspy.BestOfN / dspy.Refine use rollout_id + i for their N attempts
    assert repeat_rollout_id("mine", 2) == "mine/r2"


def test_which_lms_sample() -> None:
    assert lm_samples(dspy.LM("openai/gpt-4o-mini"))  # no temperature: the provider's default, which samples
    assert not lm_samples(dspy.LM("openai/gpt-4o-mini", temperature=0.0))
    assert not lm_samples(lab_lm())  # the lab LM without a temperature is greedy
    assert lm_samples(lab_lm(), temperature=0.5)
