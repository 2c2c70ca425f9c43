"""dspex_lab: an interactive research environment for DSPy programs.

Define a :class:`Program` (a DSPy module plus typed variables), evaluate it on a
:class:`Dataset` in parallel with statistics, compare programs, and browse every
experiment and trial in a DuckDB journal. ``import dspex_lab as dx``.

``import dspex_lab`` is cheap: every public name loads its layer (and DSPy,
pandas, scipy, DuckDB as that layer needs them) the first time it is read, so
``dspex --help`` and ``dspex journal list`` never load DSPy or scipy. This
module is also where the layers are wired together: the trace layer's readers
into the journal, the lab LM into the program layer's model variables and the
notebook's progress widget into runs (:mod:`dspex_lab._hooks`).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from dspex_lab import _hooks
from dspex_lab._lazy import lazy_exports
from dspex_lab.journal import TraceReader, set_trace_reader

if TYPE_CHECKING:
    from dspex_lab import datasets, errors, metrics, stats
    from dspex_lab.data import Dataset, load_dataset
    from dspex_lab.evaluation import (
        Budget,
        Comparison,
        ComparisonSet,
        EvaluationResult,
        Hypothesis,
        RerunReport,
        Verdict,
        VerificationReport,
        compare,
        compare_many,
        evaluate,
        export,
        hypothesis,
        load,
        rerun_package,
        verify_package,
    )
    from dspex_lab.integrations import autolog
    from dspex_lab.journal import open_journal
    from dspex_lab.lm import lab_lm
    from dspex_lab.notebook import ExperimentBrowser, RunProgress, VariableControls
    from dspex_lab.optimization import Guardrail, Objective, OptimizationResult, OptunaSearch, SimbaC, optimize
    from dspex_lab.program import (
        Binding,
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
    )
    from dspex_lab.session import Context, current_context

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    **{name: "dspex_lab.data" for name in ("Dataset", "load_dataset")},
    **{
        name: "dspex_lab.evaluation"
        for name in (
            "Budget",
            "Comparison",
            "ComparisonSet",
            "EvaluationResult",
            "Hypothesis",
            "RerunReport",
            "Verdict",
            "VerificationReport",
            "compare",
            "compare_many",
            "evaluate",
            "export",
            "hypothesis",
            "load",
            "rerun_package",
            "verify_package",
        )
    },
    **{name: "dspex_lab.session" for name in ("Context", "current_context")},
    "open_journal": "dspex_lab.journal",
    "autolog": "dspex_lab.integrations",
    "lab_lm": "dspex_lab.lm",
    # The notebook's widgets need the notebook extra (anywidget); reading one loads that layer.
    **{name: "dspex_lab.notebook" for name in ("ExperimentBrowser", "RunProgress", "VariableControls")},
    **{
        name: "dspex_lab.optimization"
        for name in ("Guardrail", "Objective", "OptimizationResult", "OptunaSearch", "SimbaC", "optimize")
    },
    **{
        name: "dspex_lab.program"
        for name in (
            "Binding",
            "Bool",
            "Choice",
            "Constraint",
            "Demos",
            "Float",
            "Int",
            "ModuleType",
            "Program",
            "Text",
            "register",
        )
    },
}

# The public sub-modules, and (not in __all__) the layers, reachable as attributes as when they loaded eagerly.
_MODULES = (
    *("datasets", "errors", "metrics", "stats"),
    *("config", "data", "engine", "evaluation", "journal", "lm", "optimization", "program", "providers"),
    *("integrations", "session", "tasks", "trace"),
)
_load, _list = lazy_exports(__name__, globals(), _EXPORTS, modules=_MODULES)


def __getattr__(name: str) -> Any:
    # Widgets need the notebook extra (anywidget); they load on first use like every other layer.
    if name == "widgets":
        import dspex_lab.notebook as widgets

        return widgets
    return _load(name)


def __dir__() -> list[str]:
    return sorted({*_list(), "widgets"})


def _resolve_lm(model: str) -> Any:
    from dspex_lab.providers import resolve_lm

    return resolve_lm(model)


def _notebook_progress(kind: str) -> Any:
    """Return a displayed ``RunProgress`` widget inside a Jupyter kernel with anywidget, else None (tqdm)."""
    ipython = sys.modules.get("IPython")  # never imported here: a kernel has always loaded it already
    shell = ipython.get_ipython() if ipython is not None else None
    if getattr(shell, "kernel", None) is None:
        return None
    import importlib.util

    if importlib.util.find_spec("anywidget") is None:
        return None
    from dspex_lab.notebook import show_run_progress

    return show_run_progress(kind)


def _notebook_live_plot() -> Any:
    """Return a ``LiveConvergenceWidget`` inside a Jupyter kernel with anywidget, else None (no live plot)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if getattr(shell, "kernel", None) is None:
        return None
    import importlib.util

    if importlib.util.find_spec("anywidget") is None:
        return None
    from dspex_lab.notebook import LiveConvergenceWidget

    return LiveConvergenceWidget()


def _open_journal_file(path: Any) -> Any:
    from dspex_lab.journal import open_journal

    return open_journal(path)


def _spans_from_rows(rows: list[dict[str, Any]]) -> list[Any]:
    from dspex_lab.trace import Span

    return [Span.from_row(row) for row in rows]


def _tree_from_rows(rows: list[dict[str, Any]]) -> Any:
    from dspex_lab.trace import TraceTree

    return TraceTree.from_spans(_spans_from_rows(rows))


# Lower layers reach the lab models and the notebook's progress widget through these plugs (see _hooks):
# filled now, before any layer loads, without loading the layers behind them.
_hooks.lm_resolver = _resolve_lm
_hooks.progress_factory = _notebook_progress
_hooks.live_plot_factory = _notebook_live_plot
_hooks.journal_opener = _open_journal_file

# The journal stores span rows and cannot import the trace layer; the package (which may import
# every layer) tells it how rows become Span and TraceTree objects.
set_trace_reader(TraceReader(spans=_spans_from_rows, tree=_tree_from_rows))

__all__ = [
    "Binding",
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
    "ExperimentBrowser",
    "Float",
    "Guardrail",
    "Hypothesis",
    "Int",
    "ModuleType",
    "Objective",
    "OptimizationResult",
    "OptunaSearch",
    "Program",
    "RerunReport",
    "RunProgress",
    "SimbaC",
    "Text",
    "VariableControls",
    "Verdict",
    "VerificationReport",
    "__version__",
    "autolog",
    "compare",
    "compare_many",
    "current_context",
    "datasets",
    "errors",
    "evaluate",
    "export",
    "hypothesis",
    "lab_lm",
    "load",
    "load_dataset",
    "metrics",
    "open_journal",
    "optimize",
    "register",
    "rerun_package",
    "stats",
    "verify_package",
]


def load_ipython_extension(ipython: Any) -> None:
    """Register the ``%dspex`` magics (``%load_ext dspex_lab``); IPython is imported only here."""
    from dspex_lab.notebook import register_magics

    register_magics(ipython)
