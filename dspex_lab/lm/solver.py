"""The lab LM's one task skill: solving the bundled arithmetic problems, imperfectly.

The solver reads the problem text with the dataset's own grammar, computes the
answer step by step, and slips on a step with a probability that depends on the
skill the step needs and on the configuration a real model would be sensitive
to (see :mod:`dspex_lab.lm._skills` and ``docs/lab_world.md``). Each slip has a
skill-specific kind (adding the group count and size instead of multiplying
them, off by one, the wrong operation, a dropped step...) and the reasoning
text shows it. It never sees a gold answer.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from dspex_lab.lm._skills import OPERATION_SKILL_INDEX, SlipOption, slip_options
from dspex_lab.tasks.arithmetic import ArithmeticProblem, ArithmeticStep, apply_step

__all__ = ["SHARED_LUCK", "Draws", "Solution", "exact_expression", "pick_option", "solve"]


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


_OPENINGS = ("Start with {start} {item}.", "Initially there are {start} {item}.", "We begin with {start} {item}.")
_CLOSINGS = ("So the final count is {value} {item}.", "That leaves {value} {item}.", "The answer is {value}.")
_SYMBOLS = {"add": "+", "subtract": "-", "multiply": "*", "divide": "/"}


def _line(step: ArithmeticStep, expression: str, after: int) -> str:
    clause = step.clause[:1].upper() + step.clause[1:]
    return f"{clause}: {expression} = {after}."


def exact_expression(step: ArithmeticStep, before: int) -> str:
    """Return the working of ``step`` done right from ``before``, as the reasoning shows it."""
    if step.group_size:
        symbol = "+" if step.operation == "add_groups" else "-"
        product = step.amount * step.group_size
        return f"{step.amount} * {step.group_size} = {product}, so {before} {symbol} {product}"
    return f"{before} {_SYMBOLS[step.operation]} {step.amount}"


def pick_option(options: tuple[SlipOption, ...], draw: float) -> SlipOption:
    """Return the option whose share of the cumulative weights holds ``draw`` (the last one past them)."""
    cumulative = 0.0
    for option in options:
        cumulative += option.weight
        if draw < cumulative:
            return option
    return options[-1]


#: The share of a step's luck that belongs to the question rather than the prompt (see :func:`solve`).
SHARED_LUCK = 0.8


def solve(
    problem: ArithmeticProblem,
    *,
    slip_probabilities: tuple[float, ...],
    draws: Draws,
    luck_key: str | None = None,
) -> Solution:
    """Work ``problem`` step by step, slipping on each step at its skill's rate.

    A step slips when its *luck*, a uniform number, falls below its skill's slip
    probability. With ``luck_key`` (the question and the rollout, not the prompt), a
    step's luck is, with probability :data:`SHARED_LUCK`, the step's own draw under that
    key, shared by every prompt, model and temperature that asks the same question in
    the same rollout; otherwise it is drawn afresh from the prompt's stream. Either way
    it is uniform, so each step slips at exactly its rate; but a question that is hard
    for one configuration stays mostly hard for the next, as it does for a real model,
    and a configuration with lower slip rates slips on mostly a subset of the steps
    (``docs/lab_world.md``, section 2.2).

    Args:
        problem: the parsed problem.
        slip_probabilities: the slip probability per skill, in ``SKILLS`` order.
        draws: the deterministic random stream of this call (keyed by the whole prompt).
        luck_key: the key of the question's shared luck; None draws every step from ``draws``.

    Returns:
        The stated answer and the reasoning text.
    """
    lines = [_OPENINGS[draws.integer(len(_OPENINGS))].format(start=problem.start, item=problem.item)]
    value = problem.start
    slips = 0
    for position, step in enumerate(problem.steps):
        stream = draws
        if luck_key is not None and draws.uniform() < SHARED_LUCK:
            stream = Draws(f"{luck_key}|step{position}")
        if stream.uniform() < slip_probabilities[OPERATION_SKILL_INDEX[step.operation]]:
            slips += 1
            option = pick_option(slip_options(step, value), stream.uniform())
            if option.expression is not None:
                lines.append(_line(step, option.expression, option.after))
            value = option.after
            continue
        after = apply_step(value, step)
        lines.append(_line(step, exact_expression(step, value), after))
        value = after
    lines.append(_CLOSINGS[draws.integer(len(_CLOSINGS))].format(value=value, item=problem.item))
    return Solution(answer=value, reasoning=" ".join(lines), slips=slips)
