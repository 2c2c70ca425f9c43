"""Multi-step arithmetic word problems: the bundled dataset of dspex_lab.

A problem opens with a starting amount ("Maya has 12 apples."), applies two to
four operations, one clause each, and asks for the final amount::

    Maya has 12 apples. She buys 3 bags with 7 apples each and gives away 5
    apples. Then she doubles her apples. How many apples does she have now?

The grammar that writes and reads these problems lives in
:mod:`dspex_lab.tasks.arithmetic`, where the lab LM reads it too; this module
turns written problems into ``dspy.Example`` and re-exports the grammar's
public names so ``dx.datasets.arithmetic`` keeps offering them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dspex_lab.errors import DatasetError
from dspex_lab.tasks.arithmetic import (
    TOPICS,
    ArithmeticProblem,
    ArithmeticStep,
    apply_step,
    generate_problem,
    parse_problem,
)

if TYPE_CHECKING:
    import dspy

__all__ = [
    "TOPICS",
    "ArithmeticProblem",
    "ArithmeticStep",
    "apply_step",
    "arithmetic",
    "parse_problem",
]


def arithmetic(n: int, *, seed: int = 0) -> list[dspy.Example]:
    """Generate ``n`` multi-step arithmetic word problems.

    Example ``i`` depends only on ``(seed, i)``, so a longer list extends a
    shorter one. Each example has ``id`` (``"arith-{seed}-{i}"``), ``question``,
    ``answer`` (the exact integer as a string), ``topic`` and ``difficulty``
    (the number of operations, 2 to 4); only ``question`` is an input.

    Args:
        n: how many examples to generate (non-negative).
        seed: the seed of the whole set.

    Returns:
        The examples, in order.

    Raises:
        DatasetError: ``n`` is negative or not an integer.
    """
    import dspy

    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise DatasetError(f"arithmetic(n) needs a non-negative integer n, got {n!r}")
    examples = []
    for index in range(n):
        problem = generate_problem(seed, index)
        examples.append(
            dspy.Example(
                id=f"arith-{seed}-{index}",
                question=problem.question,
                answer=str(problem.answer),
                topic=problem.topic,
                difficulty=problem.difficulty,
            ).with_inputs("question")
        )
    return examples
