"""dspex_lab: an interactive research environment for DSPy programs.

Define a :class:`Program` (a DSPy module plus typed variables), evaluate it on a
:class:`Dataset` in parallel with statistics, compare programs, and browse every
experiment and trial in a DuckDB journal. ``import dspex_lab as dx``.

``import dspex_lab`` is cheap: every public name loads its layer (and DSPy,
pandas, scipy, DuckDB as that layer needs them) the first time it is read, so
``dspex --help`` and ``dspex journal list`` never load DSPy or scipy. This
module is also where the layers are wired together: the trace layer's readers
into the journal, and the lab LM into the program layer's model variables.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

from dspex_lab._lazy import lazy_exports
from dspex_lab.journal._store import TraceReader, set_trace_reader

if TYPE_CHECKING:
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
        load,
        rerun_package,
        verify_package,
    )
    from dspex_lab.journal import open_journal
    from dspex_lab.lm import lab_lm
    from dspex_lab.notebook import ExperimentBrowser, RunProgress, VariableControls
    from dspex_lab.optimize import OptimizationResult, SimbaC, optimize
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
    )

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    **{name: "dspex_lab.data" for name in ("Dataset", "load_dataset")},
    **{
        name: "dspex_lab.evaluate"
        for name in (
            "Budget",
            "Comparison",
            "ComparisonSet",
            "Context",
            "EvaluationResult",
            "Hypothesis",
            "RerunReport",
            "Verdict",
            "VerificationReport",
            "compare",
            "compare_many",
            "current_context",
            "evaluate",
            "export",
            "hypothesis",
            "load",
            "rerun_package",
            "verify_package",
        )
    },
    "open_journal": "dspex_lab.journal",
    "lab_lm": "dspex_lab.lm",
    # The notebook's widgets need the notebook extra (anywidget); reading one loads that layer.
    **{name: "dspex_lab.notebook" for name in ("ExperimentBrowser", "RunProgress", "VariableControls")},
    **{name: "dspex_lab.optimize" for name in ("OptimizationResult", "SimbaC", "optimize")},
    **{
        name: "dspex_lab.program"
        for name in (
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
    *("config", "data", "engine", "journal", "lm", "program", "tasks", "trace"),
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
    from dspex_lab.lm import resolve_lm

    return resolve_lm(model)


def _layer_loaded(name: str, module: types.ModuleType) -> None:
    """Wire a layer into the others as it finishes loading (the package root may import every layer)."""
    if name == "program":
        # Model variables name LMs; the lab models resolve without a network. The program layer
        # cannot import the lm layer, so the root hands it the resolver.
        module.set_lm_resolver(_resolve_lm)
    elif name == "evaluate":
        # progress=True shows the notebook's widget in a Jupyter kernel; the evaluate and optimize layers
        # cannot import the notebook layer, so the root installs it behind their progress hook.
        from dspex_lab.evaluate._progress import set_progress_factory

        set_progress_factory(_notebook_progress)


def _notebook_progress(kind: str) -> Any:
    """Return a displayed ``RunProgress`` widget inside a Jupyter kernel with anywidget, else None (tqdm)."""
    ipython = sys.modules.get("IPython")  # never imported here: a kernel has always loaded it already
    shell = ipython.get_ipython() if ipython is not None else None
    if getattr(shell, "kernel", None) is None:
        return None
    import importlib.util

    if importlib.util.find_spec("anywidget") is None:
        return None
    from dspex_lab.notebook._widgets_progress import show_run_progress

    return show_run_progress(kind)


def _spans_from_rows(rows: list[dict[str, Any]]) -> list[Any]:
    from dspex_lab.trace import Span

    return [Span.from_row(row) for row in rows]


def _tree_from_rows(rows: list[dict[str, Any]]) -> Any:
    from dspex_lab.trace import TraceTree

    return TraceTree.from_spans(_spans_from_rows(rows))


class _Package(types.ModuleType):
    """The package's module type: sees each sub-package as Python binds it here, once it has loaded.

    That moment wires the layer (:func:`_layer_loaded`) however it was imported (``dx.Program``,
    ``from dspex_lab.program import Program``, or through another layer). And importing
    ``dspex_lab.evaluate`` (or ``dspex_lab.optimize``) would bind the sub-package as that attribute,
    hiding the function of the same name: that binding is dropped, so the name resolves (lazily) to
    the function, as it did when it was imported eagerly.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and value.__name__ == f"{__name__}.{name}":
            _layer_loaded(name, value)
            if name in ("evaluate", "optimize"):
                self.__dict__.pop(name, None)
                return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

# The journal stores span rows and cannot import the trace layer; the package (which may import
# every layer) tells it how rows become Span and TraceTree objects.
set_trace_reader(TraceReader(spans=_spans_from_rows, tree=_tree_from_rows))

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
    "ExperimentBrowser",
    "Float",
    "Hypothesis",
    "Int",
    "ModuleType",
    "OptimizationResult",
    "Program",
    "RerunReport",
    "RunProgress",
    "SimbaC",
    "Text",
    "VariableControls",
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
    from dspex_lab.notebook._magics import register

    register(ipython)
