"""Evaluation: run programs over datasets, summarise with statistics, compare.

This layer owns :func:`evaluate`, :func:`compare`, :func:`compare_many` and :func:`load`,
pre-registered hypotheses, cost budgets, reproducibility packages, the
:class:`Context` they run in, their result objects, and the progress display
subscribed to engine events.
"""

from dspex_lab.engine import Budget
from dspex_lab.evaluate._compare import Comparison, ComparisonSet, compare, compare_many
from dspex_lab.evaluate._context import Context, current_context
from dspex_lab.evaluate._evaluate import environment, evaluate
from dspex_lab.evaluate._export import export
from dspex_lab.evaluate._hypothesis import Hypothesis, Verdict, hypothesis
from dspex_lab.evaluate._load import load
from dspex_lab.evaluate._package_reports import RerunReport, TrialDifference, VerificationReport
from dspex_lab.evaluate._power import power_advice, warn_if_underpowered
from dspex_lab.evaluate._rerun import rerun_package
from dspex_lab.evaluate._result import EvaluationResult
from dspex_lab.evaluate._verify import verify_package

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
    "current_context",
    "environment",
    "evaluate",
    "export",
    "hypothesis",
    "load",
    "power_advice",
    "rerun_package",
    "verify_package",
    "warn_if_underpowered",
]
