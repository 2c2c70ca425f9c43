"""Shared by the capture tests: how DSPy's calls reach the recorder, a two-module program and the span tree it
must produce."""

import contextlib

import dspy
import pytest

from dspex_lab.trace import SpanRecorder


@pytest.fixture
def capturing():
    """Hand DSPy's calls to the recorder as traced evaluations do: registered per context with ``dspy.context``."""

    @contextlib.contextmanager
    def enter(recorder: SpanRecorder, **settings):
        with dspy.context(callbacks=[*(dspy.settings.callbacks or []), recorder], **settings):
            yield

    return enter


class TwoStep(dspy.Module):
    """Draft with Predict, then refine with ChainOfThought: two predictors, nested modules, sync and async."""

    def __init__(self) -> None:
        super().__init__()
        self.draft = dspy.Predict("question -> draft")
        self.refine = dspy.ChainOfThought("question, draft -> answer")

    def forward(self, question: str) -> dspy.Prediction:
        return self.refine(question=question, draft=self.draft(question=question).draft)

    async def aforward(self, question: str) -> dspy.Prediction:
        draft = await self.draft.acall(question=question)
        return await self.refine.acall(question=question, draft=draft.draft)


# (depth below the TwoStep span, kind, name) of every span one TwoStep call produces on the lab LM.
TWO_STEP_SPANS = [
    (0, "module", "TwoStep"),
    (1, "module", "Predict"),
    (2, "adapter_format", "ChatAdapter.format"),
    (2, "lm", "lab/small"),
    (2, "adapter_parse", "ChatAdapter.parse"),
    (1, "module", "ChainOfThought"),
    (2, "module", "Predict"),
    (3, "adapter_format", "ChatAdapter.format"),
    (3, "lm", "lab/small"),
    (3, "adapter_parse", "ChatAdapter.parse"),
]


@pytest.fixture
def two_step() -> TwoStep:
    return TwoStep()


@pytest.fixture
def two_step_spans():
    """Return the expected (depth, kind, name) of a TwoStep call whose span sits at ``depth``."""

    def spans_at(depth: int) -> list[tuple[int, str, str]]:
        return [(depth + offset, kind, name) for offset, kind, name in TWO_STEP_SPANS]

    return spans_at
