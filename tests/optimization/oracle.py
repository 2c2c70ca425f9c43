"""Modules whose accuracy is a known function of one variable, for testing optimizer decisions.

``OracleQA`` answers an arithmetic problem correctly when a hash of the question falls
below its ``skill`` attribute, so raising ``skill`` strictly improves it (and a paired
test sees every changed example move the same way). ``CoinQA`` is right on a hash of
the question *and* its configuration: every configuration scores 0.5 in expectation, so
an optimizer that accepts a change on it has been fooled by noise. Neither calls an LM
to answer; both hold a predictor so optimizers have instructions and demos to write.
"""

from __future__ import annotations

import hashlib
import time

import dspy

import dspex_lab as dx
from dspex_lab.tasks.arithmetic import parse_problem


def _fraction(text: str) -> float:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") / 2**64


def _gold(question: str) -> int:
    problem = parse_problem(question)
    assert problem is not None, question
    return problem.solve()


@dx.register("tests.OracleQA")
class OracleQA(dspy.Module):
    def __init__(self, signature: str = "question -> answer", delay: float = 0.0) -> None:
        super().__init__()
        self.predict = dspy.Predict(signature)
        self.skill = 0.3
        self.delay = delay

    def forward(self, question: str) -> dspy.Prediction:
        if self.delay:
            time.sleep(self.delay)
        right = _fraction(question) < self.skill
        return dspy.Prediction(answer=str(_gold(question) if right else -1))


@dx.register("tests.CoinQA")
class CoinQA(dspy.Module):
    def __init__(self, signature: str = "question -> answer") -> None:
        super().__init__()
        self.predict = dspy.Predict(signature)
        self.skill = 0.3

    def forward(self, question: str) -> dspy.Prediction:
        right = (
            _fraction(f"{question}|{self.skill:.6f}|{self.predict.signature.instructions}|{len(self.predict.demos)}")
            < 0.5
        )
        return dspy.Prediction(answer=str(_gold(question) if right else -1))


def oracle_program(module: str = "tests.OracleQA", *, delay: float = 0.0) -> dx.Program:
    """A program whose only typed variable is ``skill`` (``delay``: seconds per answer, for timing tests)."""
    return dx.Program(
        module,
        signature="question -> answer",
        variables={"skill": dx.Float(0.3, low=0.0, high=1.0, target="skill")},
        init={"delay": delay} if delay else None,
        name=module.split(".")[-1],
    )
