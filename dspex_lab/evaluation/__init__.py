"""Evaluation: run programs over datasets, summarise with statistics, compare.

This layer owns :func:`evaluate`, :func:`compare`, :func:`compare_many` and :func:`load`,
pre-registered hypotheses, cost budgets, reproducibility packages, the
:class:`Context` they run in, their result objects, and the progress display
subscribed to engine events.
"""

from dspex_lab.engine import Budget
from dspex_lab.evaluation._compare import Comparison, ComparisonSet, compare, compare_many, comparison_of
from dspex_lab.evaluation._evaluate import environment, evaluate
from dspex_lab.evaluation._export import export
from dspex_lab.evaluation._hypothesis import Hypothesis, Verdict, hypothesis
from dspex_lab.evaluation._load import load
from dspex_lab.evaluation._package_reports import RerunReport, TrialDifference, VerificationReport
from dspex_lab.evaluation._power import power_advice, warn_if_underpowered
from dspex_lab.evaluation._progress import installed_display
from dspex_lab.evaluation._rerun import rerun_package
from dspex_lab.evaluation._result import EvaluationResult
from dspex_lab.evaluation._verify import verify_package
from dspex_lab.session import Context, current_context

__all__ = [
    "Budget",
    "Comparison",
    "ComparisonSet",
    "Context",
    "EvaluationResult",
    "Hypothesis",
    "RerunReport",
    "TrialDifference",
    "Verdict",
    "VerificationReport",
    "compare",
    "compare_many",
    "comparison_of",
    "current_context",
    "environment",
    "evaluate",
    "export",
    "hypothesis",
    "installed_display",
    "load",
    "power_advice",
    "rerun_package",
    "verify_package",
    "warn_if_underpowered",
]
