"""Task grammars: the bundled task family the lab LM solves and the bundled datasets are written in.

This layer owns the arithmetic word-problem grammar (writing a problem from a
seed, reading one back from its text, solving it exactly). It imports only the
standard library, so both ``dspex_lab.datasets`` and the lab LM (``dspex_lab.lm``)
build on it without importing each other.
"""

from dspex_lab.tasks.arithmetic import (
    MAXIMUM_STEPS,
    MINIMUM_STEPS,
    TOPICS,
    ArithmeticProblem,
    ArithmeticStep,
    GeneratedProblem,
    apply_step,
    generate_problem,
    parse_problem,
)

__all__ = [
    "MAXIMUM_STEPS",
    "MINIMUM_STEPS",
    "TOPICS",
    "ArithmeticProblem",
    "ArithmeticStep",
    "GeneratedProblem",
    "apply_step",
    "generate_problem",
    "parse_problem",
]
