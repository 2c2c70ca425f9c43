"""The lab LM's answers to judge requests: a gold answer and a prediction in, agreement out.

A judge request names a gold answer and a prediction among its inputs (``gold`` and
``prediction``, as ``dx.metrics.judge`` asks; ``ground_truth`` and ``system_response``, as
DSPy's ``SemanticF1`` and ``CompleteAndGrounded`` ask). The lab judge compares them, never
the question: numerically when the gold holds a number (the last number of each), else as
text after trimming and case-folding. Every score field is answered with agreement (the
top of the range its description states, ``from X to Y``, or 1.0) or disagreement (the
bottom, or 0.0); every bool field with True or False; the reasoning says what was
compared. The answer is deterministic: no draw, no slip (``docs/lab_world.md``, section 11).
"""

from __future__ import annotations

import re
from typing import Any

from dspex_lab.lm.prompt import OutputField, PromptView

__all__ = ["GOLD_NAMES", "PREDICTION_NAMES", "answer_judgement"]

#: Input names that hold the reference answer of a judge request.
GOLD_NAMES = ("gold", "ground_truth")
#: Input names that hold the answer being judged.
PREDICTION_NAMES = ("prediction", "system_response")

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_RANGE = re.compile(r"from (-?\d+(?:\.\d+)?) to (-?\d+(?:\.\d+)?)")
_SCORE_TYPES = frozenset({"float", "int"})
_REASONING_NAMES = frozenset({"reasoning", "rationale", "discussion"})


def _last_number(text: str) -> float | None:
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def _agree(gold: str, prediction: str) -> tuple[bool, str]:
    """Return whether ``prediction`` agrees with ``gold``, and how that was decided."""
    expected = _last_number(gold)
    if expected is not None:
        got = _last_number(prediction)
        shown = "no number" if got is None else f"{got:g}"
        reason = f"the gold number is {expected:g}, the prediction's {shown}"
        return got is not None and abs(got - expected) < 1e-9, reason
    same = gold.strip().casefold() == prediction.strip().casefold()
    return same, "the gold and predicted texts are " + ("the same" if same else "different")


def _score(field: OutputField, agree: bool) -> float:
    found = _RANGE.search(field.description)
    low, high = (float(found.group(1)), float(found.group(2))) if found else (0.0, 1.0)
    return high if agree else low


def answer_judgement(view: PromptView, fields: tuple[OutputField, ...]) -> dict[str, Any] | None:
    """Return the values of a judge request's output fields, or None when ``view`` is not one.

    Fields this does not recognise (key-idea lists, claims) are left out for the caller to fill.
    """
    gold = next((view.inputs[name] for name in GOLD_NAMES if name in view.inputs), None)
    prediction = next((view.inputs[name] for name in PREDICTION_NAMES if name in view.inputs), None)
    if gold is None or prediction is None or not fields:
        return None
    agree, reason = _agree(gold, prediction)
    values: dict[str, Any] = {}
    for field in fields:
        if field.name in _REASONING_NAMES:
            values[field.name] = f"{reason}, so the prediction {'agrees' if agree else 'does not agree'}."
        elif field.type_name == "bool":
            values[field.name] = agree
        elif field.type_name in _SCORE_TYPES:
            score = _score(field, agree)
            values[field.name] = int(score) if field.type_name == "int" else score
    return values
