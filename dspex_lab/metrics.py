"""Metrics shipped with dspex_lab: ``metric(example, prediction) -> float``.

Three kinds, all ``metric(example, prediction)``:

- string metrics (:func:`exact_match`, :func:`numeric_match`, :func:`contains`, :func:`f1`)
  compare the prediction's answer field with the example's gold field. The field is ``answer``
  when the example has one, otherwise the example's only label; pass ``field=...`` through
  :func:`for_field` to choose;
- DSPy's own metrics by name (:func:`answer_exact_match`, :func:`answer_passage_match`,
  :func:`semantic_f1`, :func:`complete_and_grounded`), which call DSPy's functions and modules;
- an LLM-as-judge metric with its own rubric and LM (:func:`judge`).

Every shipped metric has a name, and :func:`get` returns it (:data:`NAMES` lists them): the names
are an allow-list, so a name read from a command line, a notebook spec or a package never chooses
what is imported. Any callable with the same shape works as a metric, returning a number, a bool,
or a ``dspy.Prediction(score=..., feedback=...)`` whose feedback text is recorded with the trial.

Examples:
    >>> import dspy
    >>> gold = dspy.Example(question="2+2?", answer="4").with_inputs("question")
    >>> exact_match(gold, dspy.Prediction(answer=" 4. "))
    1.0
    >>> numeric_match(gold, dspy.Prediction(answer="The answer is 4.0"))
    1.0
    >>> round(f1(dspy.Example(answer="the red fox"), dspy.Prediction(answer="a red fox")), 3)
    1.0
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import string
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from dspex_lab.errors import ExecutionError, InvalidScoreError

__all__ = [
    "NAMES",
    "Judge",
    "answer_exact_match",
    "answer_passage_match",
    "complete_and_grounded",
    "contains",
    "exact_match",
    "f1",
    "for_field",
    "get",
    "judge",
    "numeric_match",
    "resolve",
    "semantic_f1",
]

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def _gold_field(example: Any, field: str | None) -> str:
    if field is not None:
        return field
    if "answer" in example:
        return "answer"
    labels = list(example.labels().keys()) if hasattr(example, "labels") else []
    if len(labels) == 1:
        return labels[0]
    raise ValueError(
        f"cannot tell which field to score: the example has labels {labels}; use dx.metrics.for_field(metric, 'name')"
    )


def _values(example: Any, prediction: Any, field: str | None) -> tuple[str, str]:
    name = _gold_field(example, field)
    if name not in prediction:
        raise ValueError(f"the prediction has no {name!r} field (it has {list(prediction.keys())})")
    return str(example[name]), str(prediction[name])


def _normalize(text: str) -> str:
    text = text.strip().casefold()
    return text.strip(string.punctuation + " ").strip()


def exact_match(example: Any, prediction: Any, trace: Any = None, *, field: str | None = None) -> float:
    """Score 1.0 when the answers are equal after trimming, case-folding and outer punctuation."""
    gold, predicted = _values(example, prediction, field)
    return float(_normalize(gold) == _normalize(predicted))


def _last_number(text: str) -> float | None:
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def numeric_match(
    example: Any, prediction: Any, trace: Any = None, *, field: str | None = None, tolerance: float = 1e-6
) -> float:
    """Score 1.0 when the last number in the prediction equals the gold number within ``tolerance``."""
    gold, predicted = _values(example, prediction, field)
    expected, got = _last_number(gold), _last_number(predicted)
    if expected is None:
        raise ValueError(f"the gold answer {gold!r} contains no number")
    return float(got is not None and abs(got - expected) <= tolerance * max(1.0, abs(expected)))


def contains(example: Any, prediction: Any, trace: Any = None, *, field: str | None = None) -> float:
    """Score 1.0 when the normalised gold answer appears inside the prediction."""
    gold, predicted = _values(example, prediction, field)
    return float(_normalize(gold) in predicted.casefold())


def _tokens(text: str) -> list[str]:
    text = text.casefold()
    text = "".join(character for character in text if character not in string.punctuation)
    return _ARTICLES.sub(" ", text).split()


def f1(example: Any, prediction: Any, trace: Any = None, *, field: str | None = None) -> float:
    """Score the token-level F1 between answers (lower case, no punctuation or articles)."""
    gold, predicted = _values(example, prediction, field)
    gold_tokens, predicted_tokens = _tokens(gold), _tokens(predicted)
    if not gold_tokens or not predicted_tokens:
        return float(gold_tokens == predicted_tokens)
    common = sum((Counter(gold_tokens) & Counter(predicted_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def for_field(metric: Callable[..., float], field: str) -> Callable[..., float]:
    """Return ``metric`` bound to score ``field`` instead of the default answer field."""
    bound = functools.partial(metric, field=field)
    functools.update_wrapper(bound, metric)
    bound.__name__ = f"{metric.__name__}[{field}]"  # type: ignore[attr-defined]
    return bound


# -- DSPy's own metrics, by name ---------------------------------------------------------------


def answer_exact_match(example: Any, prediction: Any, trace: Any = None, *, frac: float = 1.0) -> bool:
    """Score with DSPy's ``dspy.evaluate.answer_exact_match``: exact match (or F1 >= ``frac``) on ``answer``.

    The gold ``answer`` may be a string or a list of acceptable strings.
    """
    import dspy

    return bool(dspy.evaluate.answer_exact_match(example, prediction, trace, frac=frac))


def answer_passage_match(example: Any, prediction: Any, trace: Any = None) -> bool:
    """Score with DSPy's ``answer_passage_match``: a passage of ``prediction.context`` holds the gold answer."""
    import dspy

    return bool(dspy.evaluate.answer_passage_match(example, prediction, trace))


# DSPy's LM-using metric modules, built once per process on first use: DSPy modules keep no per-call
# state, so worker threads share one instance (as dspy.Evaluate shares the program).
_MODULES: dict[str, Any] = {}
_MODULES_LOCK = threading.Lock()


def _dspy_module(name: str) -> Any:
    found = _MODULES.get(name)
    if found is None:
        import dspy

        with _MODULES_LOCK:
            found = _MODULES.get(name)
            if found is None:
                found = _MODULES[name] = getattr(dspy.evaluate, name)()
    return found


def _response_view(example: Any, prediction: Any) -> tuple[Any, Any]:
    """Return the example and prediction as DSPy's judge modules read them: ``question`` and ``response``.

    An example or prediction without ``response`` lends its ``answer`` (the lab's datasets and most
    QA programs name their output so); one with ``response`` is passed as it is.
    """
    import dspy

    def with_response(item: Any, kind: type) -> Any:
        if "response" in item or "answer" not in item:
            return item
        values = dict(item.toDict()) if hasattr(item, "toDict") else dict(item.items())
        return kind(**values, response=str(item["answer"]))

    return with_response(example, dspy.Example), with_response(prediction, dspy.Prediction)


def semantic_f1(example: Any, prediction: Any, trace: Any = None) -> Any:
    """Score with DSPy's ``SemanticF1`` module: an LM judges the recall and precision of the response.

    The judge's LM is the run's (DSPy's context LM); its calls are the metric's spending and spans
    (``docs/metrics.md``). ``answer`` stands in for ``response`` where that field is missing.
    """
    return _dspy_module("SemanticF1")(*_response_view(example, prediction), trace=trace)


def complete_and_grounded(example: Any, prediction: Any, trace: Any = None) -> Any:
    """Score with DSPy's ``CompleteAndGrounded``: completeness against the gold and groundedness in ``context``.

    Needs ``prediction.context`` (the retrieved passages); ``answer`` stands in for ``response``.
    """
    return _dspy_module("CompleteAndGrounded")(*_response_view(example, prediction), trace=trace)


# -- LLM as judge ------------------------------------------------------------------------------

PASS_FAIL = "pass/fail"
# A judge's feedback (its reasoning) is kept to this many characters on the prediction it returns.
_MAX_FEEDBACK = 4000


def _inputs_text(example: Any) -> str:
    inputs = example.inputs() if hasattr(example, "inputs") else example
    values = dict(inputs.toDict()) if hasattr(inputs, "toDict") else dict(inputs)
    if len(values) == 1:
        return str(next(iter(values.values())))
    return "\n".join(f"{name}: {value}" for name, value in values.items())


class Judge:
    """An LLM-as-judge metric: its own rubric and LM, a score on its scale, its reasoning as feedback.

    Build one with :func:`judge`. Calling it asks the LM, through a ``dspy.ChainOfThought`` over
    ``question, gold, prediction -> reasoning, score`` (or ``verdict`` for pass/fail), and returns
    ``dspy.Prediction(score=..., feedback=reasoning)``. Thread-safe: trials share one judge.
    """

    def __init__(
        self, rubric: str, *, lm: Any = None, name: str = "judge", scale: Any = (0.0, 1.0), field: str | None = None
    ) -> None:
        import dspy

        if not isinstance(rubric, str) or not rubric.strip():
            raise ExecutionError(f"judge(rubric=...) needs the rubric as a non-empty string, got {rubric!r:.60}")
        if lm is not None and not isinstance(lm, dspy.BaseLM):
            raise ExecutionError(f"judge(lm=...) must be a dspy.BaseLM or None (the run's LM), got {type(lm).__name__}")
        if not isinstance(name, str) or not name.isidentifier():
            raise ExecutionError(f"judge(name={name!r}): the name must be an identifier (it names the metric)")
        self.rubric, self.lm, self.field, self.__name__ = rubric.strip(), lm, field, name
        self.scale = _checked_scale(scale)
        # Runs record a metric by module and qualified name: a judge's names its rubric, scale and LM too
        # (a digest), so a run is never resumed under another rubric by the same name.
        judged = json.dumps([self.rubric, self.scale, getattr(lm, "model", None), field])
        self.__qualname__ = f"Judge[{name}:{hashlib.sha256(judged.encode()).hexdigest()[:12]}]"
        self._predict = dspy.ChainOfThought(self._signature())

    def _signature(self) -> Any:
        import dspy

        if self.scale is None:
            output = ("verdict", (bool, dspy.OutputField(desc="whether the prediction meets the rubric")))
        else:
            low, high = self.scale
            description = f"how well the prediction meets the rubric, from {low:g} to {high:g}"
            output = ("score", (float, dspy.OutputField(desc=description)))
        fields = {
            "question": (str, dspy.InputField(desc="the task's input")),
            "gold": (str, dspy.InputField(desc="the reference answer")),
            "prediction": (str, dspy.InputField(desc="the answer to judge")),
            output[0]: output[1],
        }
        return dspy.make_signature(fields, self.rubric, signature_name="JudgeRubric")

    def __call__(self, example: Any, prediction: Any, trace: Any = None) -> Any:
        """Judge ``prediction`` against ``example``'s gold answer; return its score and feedback."""
        import dspy

        gold, predicted = _values(example, prediction, self.field)
        arguments = {"question": _inputs_text(example), "gold": gold, "prediction": predicted}
        if self.lm is not None:
            with dspy.context(lm=self.lm):
                answer = self._predict(**arguments)
        else:
            answer = self._predict(**arguments)
        feedback = str(getattr(answer, "reasoning", "") or "")[:_MAX_FEEDBACK]
        return dspy.Prediction(score=self._score(answer), feedback=feedback)

    def _score(self, answer: Any) -> float:
        if self.scale is None:
            verdict = answer.verdict
            if not isinstance(verdict, bool):
                raise InvalidScoreError(f"judge {self.__name__!r}: the verdict {verdict!r:.60} is not true or false")
            return 1.0 if verdict else 0.0
        low, high = self.scale
        score = answer.score
        if not isinstance(score, (int, float)) or not math.isfinite(score) or not low <= score <= high:
            shown = f"{score!r:.60}"
            scale = f"{low:g}..{high:g}"
            raise InvalidScoreError(f"judge {self.__name__!r}: the score {shown} is outside its scale {scale}")
        return float(score)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle the judge as its arguments (a worker process rebuilds its predictor); never with its own LM.

        A judge of the run's LM (``lm=None``) judges with the LM each worker rebuilds; its own LM, which may
        hold an API key and need not pickle, is never sent.
        """
        if self.lm is not None:
            raise TypeError(
                f"judge {self.__name__!r} has its own LM, which is never sent to worker processes; use "
                "executor='thread', or lm=None to judge with the run's LM"
            )
        scale = PASS_FAIL if self.scale is None else self.scale
        return (_judge_from_arguments, (self.rubric, None, self.__name__, scale, self.field))

    def __repr__(self) -> str:
        scale = PASS_FAIL if self.scale is None else f"{self.scale[0]:g}..{self.scale[1]:g}"
        model = getattr(self.lm, "model", "the run's LM")
        return f"Judge({self.__name__!r}, scale={scale}, lm={model})"


def _judge_from_arguments(rubric: str, lm: Any, name: str, scale: Any, field: str | None) -> Judge:
    return Judge(rubric, lm=lm, name=name, scale=scale, field=field)


def _checked_scale(scale: Any) -> tuple[float, float] | None:
    if scale == PASS_FAIL:
        return None
    if (
        isinstance(scale, tuple)
        and len(scale) == 2
        and all(isinstance(bound, (int, float)) and not isinstance(bound, bool) for bound in scale)
        and math.isfinite(scale[0])
        and math.isfinite(scale[1])
        and scale[0] < scale[1]
    ):
        return float(scale[0]), float(scale[1])
    raise ExecutionError(f"judge(scale={scale!r}): give (low, high) with low < high, or {PASS_FAIL!r}")


def judge(
    rubric: str, *, lm: Any = None, name: str = "judge", scale: Any = (0.0, 1.0), field: str | None = None
) -> Judge:
    """Return an LLM-as-judge metric that scores a prediction against the gold answer by ``rubric``.

    The judge's LM calls are the metric's: in a traced run they are spans under the trial's metric
    span, and the trial counts them apart from the program's (``metric_lm_calls``, ``metric_cost``;
    ``docs/metrics.md``). A judge whose LM fails, or answers outside the scale, makes the trial a
    metric error, never a score of 0.

    Args:
        rubric: what a good answer is; the judge's instructions.
        lm: the judge's own LM; None uses the run's LM (DSPy's context LM while the trial is scored).
        name: the metric's name, as runs record it.
        scale: ``(low, high)`` for a score in that range, or ``"pass/fail"`` for a verdict scored 1 or 0.
        field: the gold and predicted field (default ``answer``, or the example's only label).

    Example:
        >>> judge("Full marks when the answer is the same number as the gold answer.", scale="pass/fail")
        Judge('judge', scale=pass/fail, lm=the run's LM)
    """
    return Judge(rubric, lm=lm, name=name, scale=scale, field=field)


# -- names -------------------------------------------------------------------------------------

_BY_NAME: dict[str, Callable[..., Any]] = {
    "exact_match": exact_match,
    "numeric_match": numeric_match,
    "contains": contains,
    "f1": f1,
    "answer_exact_match": answer_exact_match,
    "answer_passage_match": answer_passage_match,
    "semantic_f1": semantic_f1,
    "complete_and_grounded": complete_and_grounded,
}

#: The names :func:`get` knows: the string metrics, then DSPy's metrics.
NAMES: tuple[str, ...] = tuple(_BY_NAME)


def get(name: str) -> Callable[..., Any]:
    """Return the shipped metric called ``name`` (one of :data:`NAMES`); names never choose an import.

    Raises:
        ExecutionError: ``name`` is not one of :data:`NAMES`.

    Example:
        >>> get("answer_exact_match").__name__
        'answer_exact_match'
    """
    found = _BY_NAME.get(name) if isinstance(name, str) else None
    if found is None:
        raise ExecutionError(f"no metric {name!r} in dx.metrics: use one of {', '.join(NAMES)}")
    return found


def resolve(metric: Any) -> Callable[..., Any]:
    """Return ``metric`` itself when it is callable, or the shipped metric it names (see :func:`get`).

    Raises:
        ExecutionError: ``metric`` is neither callable nor one of :data:`NAMES`.
    """
    if isinstance(metric, str):
        return get(metric)
    if not callable(metric):
        raise ExecutionError(f"metric must be callable as metric(example, prediction) or a name, got {metric!r:.80}")
    return metric
