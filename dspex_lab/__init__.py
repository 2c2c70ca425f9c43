"""dspex_lab: an interactive research environment for DSPy programs.

Define a :class:`Program` (a DSPy module plus typed variables), evaluate it on a
:class:`Dataset` in parallel with statistics, compare programs, and browse every
experiment and trial in a DuckDB journal. ``import dspex_lab as dx``.
"""

from dspex_lab import datasets, errors, metrics, stats
from dspex_lab.data import Dataset, load_dataset
from dspex_lab.evaluate import (
    Budget,
    Comparison,
    ComparisonSet,
    Context,
    EvaluationResult,
    Hypothesis,
    RerunReport,
    Verdict,
    VerificationReport,
    compare,
    compare_many,
    current_context,
    evaluate,
    export,
    hypothesis,
    rerun_package,
    verify_package,
)
from dspex_lab.journal import open_journal
from dspex_lab.lm import lab_lm, resolve_lm
from dspex_lab.program import (
    Bool,
    Choice,
    Constraint,
    Demos,
    Float,
    Int,
    ModuleType,
    Program,
    Text,
    register,
    set_lm_resolver,
)

# Model variables name LMs; the lab models resolve without a network.
set_lm_resolver(resolve_lm)

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # Widgets need the notebook extra (anywidget); they load on first use so `import dspex_lab` stays light.
    if name == "widgets":
        import dspex_lab.notebook as widgets

        return widgets
    raise AttributeError(f"module 'dspex_lab' has no attribute {name!r}")


__all__ = [
    "Bool",
    "Budget",
    "Choice",
    "Comparison",
    "ComparisonSet",
    "Constraint",
    "Context",
    "Dataset",
    "Demos",
    "EvaluationResult",
    "Float",
    "Hypothesis",
    "Int",
    "ModuleType",
    "Program",
    "RerunReport",
    "Text",
    "Verdict",
    "VerificationReport",
    "__version__",
    "compare",
    "compare_many",
    "current_context",
    "datasets",
    "errors",
    "evaluate",
    "export",
    "hypothesis",
    "lab_lm",
    "load_dataset",
    "metrics",
    "open_journal",
    "register",
    "rerun_package",
    "stats",
    "verify_package",
]
