"""The lab LM's one skill: solving the bundled arithmetic problems, imperfectly.

The solver reads the problem text with the dataset's own grammar, computes the
answer step by step, and makes plausible slips (off-by-one, wrong operation,
dropped step) at a per-step rate that depends on the configuration a real
model would be sensitive to: model size, temperature, whether reasoning is
written out, the number of few-shot demos and the instructions. It never sees
a gold answer.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from dspex_lab.lm.profiles import LabModelProfile
from dspex_lab.tasks.arithmetic import ArithmeticProblem, ArithmeticStep, apply_step

__all__ = ["Draws", "Solution", "solve", "step_error_probability"]

# Each group names phrasings that tell a model to work more carefully; every
# group present lowers the slip rate a little (capped), as prompt wording does.
_INSTRUCTION_HINTS: tuple[tuple[str, ...], ...] = (
    ("step by step", "step-by-step"),
    ("carefully", "careful"),
    ("double-check", "double check", "verify", "recheck", "re-check", "check each"),
    ("integer", "number", "numeric"),
)
_INSTRUCTION_BONUS = 0.06
_DEMO_BONUS = 0.05
_MAXIMUM_HELPFUL_DEMOS = 4
_TEMPERATURE_SENSITIVITY = 0.9
_MAXIMUM_STEP_ERROR = 0.9


class Draws:
    """A deterministic stream of uniform numbers in [0, 1) keyed by a string.

    Blocks of BLAKE2b output are cut into 32-bit numbers, which is both
    reproducible across processes (unlike ``hash()``) and cheap.
    """

    __slots__ = ("_block", "_key", "_pool", "_position")

    def __init__(self, key: str) -> None:
        self._key = key.encode()
        self._block = 0
        self._pool = b""
        self._position = 0

    def uniform(self) -> float:
        """Return the next number of the stream."""
        if self._position + 4 > len(self._pool):
            self._pool = hashlib.blake2b(self._key + self._block.to_bytes(4, "little"), digest_size=64).digest()
            self._block += 1
            self._position = 0
        value = int.from_bytes(self._pool[self._position : self._position + 4], "little")
        self._position += 4
        return value / 4294967296.0

    def integer(self, upper: int) -> int:
        """Return the next number of the stream as an integer in ``[0, upper)``."""
        return int(self.uniform() * upper)


def step_error_probability(
    profile: LabModelProfile, *, temperature: float, reasoning: bool, demo_count: int, instructions: str
) -> float:
    """Return the chance of a slip per solution step under a configuration.

    Args:
        profile: the simulated model.
        temperature: the sampling temperature (higher means more slips).
        reasoning: whether the prompt asks for a reasoning field before the answer.
        demo_count: few-shot demos in the prompt (up to four help a little each).
        instructions: the signature instructions (careful wording helps a little).

    Returns:
        The per-step slip probability.
    """
    probability = profile.step_error_rate * (1.0 + _TEMPERATURE_SENSITIVITY * temperature * temperature)
    if not reasoning:
        probability *= profile.direct_answer_penalty
    probability *= 1.0 - _DEMO_BONUS * min(demo_count, _MAXIMUM_HELPFUL_DEMOS)
    lowered = instructions.lower()
    hints = sum(1 for group in _INSTRUCTION_HINTS if any(phrase in lowered for phrase in group))
    probability *= 1.0 - _INSTRUCTION_BONUS * min(hints, 3)
    return min(probability, _MAXIMUM_STEP_ERROR)


@dataclass(frozen=True)
class Solution:
    """A worked (possibly wrong) solution.

    Attributes:
        answer: the final number the model states.
        reasoning: the worked steps as text, slips included.
        slips: how many steps went wrong.
    """

    answer: int
    reasoning: str
    slips: int


_OPERATION_SYMBOLS = {"add": "+", "subtract": "-", "multiply": "*", "divide": "/"}
_OPENINGS = ("Start with {start} {item}.", "Initially there are {start} {item}.", "We begin with {start} {item}.")
_CLOSINGS = ("So the final count is {value} {item}.", "That leaves {value} {item}.", "The answer is {value}.")


def _describe(step: ArithmeticStep, before: int, after: int, *, operation: str, product: int | None) -> str:
    clause = step.clause[:1].upper() + step.clause[1:]
    if operation in ("add_groups", "subtract_groups"):
        symbol = "+" if operation == "add_groups" else "-"
        return f"{clause}: {step.amount} * {step.group_size} = {product}, so {before} {symbol} {product} = {after}."
    if operation == "mixed_groups":
        # The slip of adding the group count and size instead of multiplying.
        symbol = "+" if step.operation == "add_groups" else "-"
        return f"{clause}: {step.amount} + {step.group_size} = {product}, so {before} {symbol} {product} = {after}."
    return f"{clause}: {before} {_OPERATION_SYMBOLS[operation]} {step.amount} = {after}."


def _slipped_step(step: ArithmeticStep, before: int, draws: Draws) -> tuple[int, str | None]:
    """Return the wrong result of ``step`` and the text showing it (None: the step was skipped)."""
    kind = draws.uniform()
    correct = apply_step(before, step)
    if kind < 0.45:
        after = max(correct + (1 if draws.uniform() < 0.5 else -1), 0)
        if step.operation in ("add_groups", "subtract_groups"):
            product = step.amount * step.group_size
            return after, _describe(step, before, after, operation=step.operation, product=product)
        return after, _describe(step, before, after, operation=step.operation, product=None)
    if kind < 0.8:
        if step.operation in ("add_groups", "subtract_groups"):
            product = step.amount + step.group_size
            after = before + product if step.operation == "add_groups" else max(before - product, 0)
            return after, _describe(step, before, after, operation="mixed_groups", product=product)
        swapped = {"add": "subtract", "subtract": "add", "multiply": "add", "divide": "subtract"}[step.operation]
        after = max(apply_step(before, ArithmeticStep(swapped, step.amount)), 0)
        return after, _describe(step, before, after, operation=swapped, product=None)
    return before, None


def solve(problem: ArithmeticProblem, *, step_error: float, draws: Draws) -> Solution:
    """Work ``problem`` step by step, slipping at rate ``step_error`` per step.

    Args:
        problem: the parsed problem.
        step_error: the per-step slip probability.
        draws: the deterministic random stream of this call.

    Returns:
        The stated answer and the reasoning text.
    """
    lines = [_OPENINGS[draws.integer(len(_OPENINGS))].format(start=problem.start, item=problem.item)]
    value = problem.start
    slips = 0
    for step in problem.steps:
        if draws.uniform() < step_error:
            slips += 1
            value, text = _slipped_step(step, value, draws)
            if text is not None:
                lines.append(text)
            continue
        after = apply_step(value, step)
        product = step.amount * step.group_size if step.group_size else None
        lines.append(_describe(step, value, after, operation=step.operation, product=product))
        value = after
    lines.append(_CLOSINGS[draws.integer(len(_CLOSINGS))].format(value=value, item=problem.item))
    return Solution(answer=value, reasoning=" ".join(lines), slips=slips)
