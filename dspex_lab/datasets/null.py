"""The null task: arithmetic questions whose gold label no configuration can predict.

Each question is a problem of :func:`dspex_lab.datasets.arithmetic` asking
whether the final amount is even or odd; the gold answer is a fair coin the
dataset flips per example, independent of the question. Any program that
answers ``even`` or ``odd`` (the lab LM always does) scores a Bernoulli(1/2)
per example, so every configuration's expected exact-match score is exactly
0.5. An optimizer that reports an improvement here has fitted noise.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from dspex_lab.errors import DatasetError
from dspex_lab.tasks.arithmetic import PARITY_ANSWERS, ask_parity, generate_problem

if TYPE_CHECKING:
    import dspy

__all__ = ["null_arithmetic"]


def null_arithmetic(n: int, *, seed: int = 0) -> list[dspy.Example]:
    """Generate ``n`` questions of the null task (see the module docstring).

    Example ``i`` depends only on ``(seed, i)``. Each example has ``id``
    (``"null-{seed}-{i}"``), ``question`` (problem ``i`` of
    ``arithmetic(n, seed=seed)`` asking "even or odd?"), ``answer`` (``"even"`` or
    ``"odd"``, a coin independent of the question), ``topic`` and ``difficulty``;
    only ``question`` is an input.

    Args:
        n: how many examples to generate (non-negative).
        seed: the seed of the whole set (questions and coins).

    Returns:
        The examples, in order.

    Raises:
        DatasetError: ``n`` is negative or not an integer.
    """
    import dspy

    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise DatasetError(f"null_arithmetic(n) needs a non-negative integer n, got {n!r}")
    examples = []
    for index in range(n):
        problem = generate_problem(seed, index)
        # The coin has its own stream, so it shares nothing with the question's choices.
        coin = random.Random(f"dspex-null-coin:{seed}:{index}").random() < 0.5
        examples.append(
            dspy.Example(
                id=f"null-{seed}-{index}",
                question=ask_parity(problem.question),
                answer=PARITY_ANSWERS[0] if coin else PARITY_ANSWERS[1],
                topic=problem.topic,
                difficulty=problem.difficulty,
            ).with_inputs("question")
        )
    return examples
