"""Task grammars: the bundled task family the lab LM solves and the bundled datasets are written in.

This layer owns the arithmetic word-problem grammar (writing a problem from a
seed, reading one back from its text, solving it exactly). The grammar imports only the
standard library, so both ``dspex_lab.datasets`` and the lab LM (``dspex_lab.lm``)
build on it without importing each other. The plan -> solve -> verify pipeline task
(:mod:`dspex_lab.tasks.pipeline`: ``PlanSolveVerify``, ``pipeline_program()``) needs DSPy and
the program layer, so it loads only when one of its names is first read.
"""

from typing import Any

from dspex_lab._lazy import lazy_exports
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
    "PlanSolveVerify",
    "apply_step",
    "generate_problem",
    "parse_problem",
    "pipeline_program",
]

_load, _list = lazy_exports(
    __name__, globals(), {name: "dspex_lab.tasks.pipeline" for name in ("PlanSolveVerify", "pipeline_program")}
)


def __getattr__(name: str) -> Any:
    return _load(name)


def __dir__() -> list[str]:
    return _list()
