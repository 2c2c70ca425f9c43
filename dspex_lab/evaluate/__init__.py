"""Evaluation: run programs over datasets, summarise with statistics, compare.

This layer owns :func:`evaluate` and :func:`compare`, the :class:`Context`
they run in, their result objects, and the progress display subscribed to
engine events.
"""

from dspex_lab.evaluate._compare import Comparison, compare
from dspex_lab.evaluate._context import Context, current_context
from dspex_lab.evaluate._evaluate import environment, evaluate
from dspex_lab.evaluate._result import EvaluationResult

__all__ = ["Comparison", "Context", "EvaluationResult", "compare", "current_context", "environment", "evaluate"]
