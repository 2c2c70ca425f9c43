"""Metrics shipped with dspex_lab: ``metric(example, prediction) -> float``.

Each metric compares the prediction's answer field with the example's gold
field. The field is ``answer`` when the example has one, otherwise the
example's only label; pass ``field=...`` through :func:`for_field` to choose.
Any callable with the same shape works as a metric, returning a number or bool.

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
import re
import string
from collections import Counter
from collections.abc import Callable
from typing import Any

__all__ = ["contains", "exact_match", "f1", "for_field", "numeric_match"]

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
