"""Trace capture against the installed DSPy: its private surface, and every method it dispatches to callbacks.

When one of these tests fails after a DSPy upgrade, read its message: it names what moved. Traced runs keep
working meanwhile (through DSPy's ordinary callback dispatch, more slowly); direct dispatch needs updating.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import logging
import pkgutil
import subprocess
import sys

import dspy
import pytest

import dspex_lab as dx
from dspex_lab import _dspy_compat
from dspex_lab.evaluation import evaluate
from dspex_lab.trace import SpanRecorder, TraceTree, dispatch


def _import_every_dspy_module() -> None:
    # Every module, so that methods decorated in modules `import dspy` does not load (TypeSafe) are counted too.
    # Skipped: scripts run as subprocesses (an interpreter's worker takes over stdout when imported) and vendored code.
    for info in pkgutil.walk_packages(dspy.__path__, "dspy.", onerror=lambda name: None):
        if info.name.endswith(("_worker", "__main__")) or info.name.startswith("dspy._vendor"):
            continue
        try:
            importlib.import_module(info.name)
        except Exception:  # an optional dependency of that module is missing: its classes cannot be used anyway
            continue


_import_every_dspy_module()

# The handler kind DSPy calls for a method -> the span kind the recorder gives it.
SPAN_KIND_OF_HANDLER = {
    "module": "module",
    "lm": "lm",
    "adapter_format": "adapter_format",
    "adapter_parse": "adapter_parse",
    "tool": "tool",
    "evaluate": "evaluation",
    "interpreter_execute": "interpreter",
    "interpreter_tool_call": "interpreter",
    "interpreter_startup": "interpreter",
    "interpreter_shutdown": "interpreter",
    "compile": "compile",
}

# Named in issue 9 or covered before it; the enumeration must find at least these.
KNOWN = {
    "Module.__call__",
    "Module.acall",
    "BaseLM.__call__",
    "BaseLM.acall",
    "ChatAdapter.format",
    "ChatAdapter.parse",
    "Tool.__call__",
    "Tool.acall",
    "Evaluate.__call__",
    "TypeSafe.__call__",
    "TypeSafe.acall",
    "Retrieve.__call__",
    "LocalInterpreter.execute",
    "BootstrapFewShot.compile",
}


def _label(method: dispatch.DecoratedMethod) -> str:
    return f"{method.owner.__qualname__}.{method.name}"


def _independent_enumeration() -> set[str]:
    """Find decorated methods another way: a function whose ``__wrapped__`` chain or closures reach a function
    whose qualified name is ``with_callbacks.<locals>...``."""
    found = set()
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "dspy" or name.startswith("dspy.")):
            continue
        for value in list(vars(module).values()):
            if isinstance(value, type) and value.__module__.startswith("dspy"):
                found.update(f"{value.__qualname__}.{key}" for key, item in vars(value).items() if _reaches(item))
    return found


def _reaches(function, depth: int = 0) -> bool:
    if depth > 6 or not callable(function):
        return False
    if getattr(getattr(function, "__code__", None), "co_qualname", "").startswith("with_callbacks."):
        return True
    inner = [getattr(function, "__wrapped__", None)]
    for cell in getattr(function, "__closure__", None) or ():
        try:
            inner.append(cell.cell_contents)
        except ValueError:  # an empty cell
            continue
    return any(_reaches(item, depth + 1) for item in inner if inspect.isfunction(item))


def test_dspy_private_surface_is_what_direct_dispatch_expects() -> None:
    reason = dispatch.unsupported_reason()
    assert reason is None, (
        f"DSPy {dspy.__version__} changed the private surface that dspex_lab.trace.dispatch imitates: {reason}. "
        "Traced runs fall back to DSPy's callback dispatch (slower) until dispatch.py is updated."
    )


def test_enumeration_finds_every_decorated_method() -> None:
    assert dispatch.install()
    found = {_label(method) for method in dispatch.decorated_methods()}
    missing = KNOWN - found
    assert not missing, f"dispatch.decorated_methods() no longer finds {sorted(missing)} in DSPy {dspy.__version__}"
    independent = _independent_enumeration()
    # Classes of dspy's own modules: the independent walk does not look at subclasses defined elsewhere.
    ours = {
        _label(method)
        for method in dispatch.decorated_methods()
        if method.owner.__module__.startswith("dspy")
        and method.owner in vars(sys.modules[method.owner.__module__]).values()
    }
    assert ours == independent, (
        f"the two enumerations of DSPy {dspy.__version__}'s with_callbacks methods disagree: "
        f"only dispatch finds {sorted(ours - independent)}, "
        f"only the qualified-name walk finds {sorted(independent - ours)}"
    )


def _instance(method: dispatch.DecoratedMethod):
    if method.kind.startswith("interpreter_"):
        # DSPy tells an interpreter by a runtime Protocol, which needs a real instance. Shut down before use, so
        # that no call below starts a process: each fails at once, which is still a call with a span.
        instance = method.owner()
        instance.shutdown()
        return instance
    # Without __init__: every call fails early on a missing attribute, before it could reach a network or a disk.
    return object.__new__(method.owner)


def _arguments(method: dispatch.DecoratedMethod) -> dict[str, object]:
    function = inspect.unwrap(method.owner.__dict__[method.name])
    parameters = list(inspect.signature(function).parameters.values())[1:]
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {item.name: None for item in parameters if item.default is item.empty and item.kind in kinds}


def _spans_of_one_call(method: dispatch.DecoratedMethod, mode: str) -> list:
    recorder = SpanRecorder()
    instance = _instance(method)
    entered = dspy.context(callbacks=[recorder]) if mode == "callbacks" else dispatch.direct(recorder)
    with entered, recorder.trial("t") as collector:
        try:
            outcome = getattr(instance, method.name)(**_arguments(method))
            if inspect.iscoroutine(outcome):
                asyncio.run(outcome)
        except Exception:  # called with placeholders: failing is expected, and a failed call still has its span
            pass
    return [item for item in collector.spans if item.kind != "trial"]


@pytest.mark.parametrize("method", dispatch.decorated_methods() if dispatch.install() else [], ids=_label)
def test_every_decorated_method_produces_a_span_under_both_dispatches(method, caplog) -> None:
    expected = SPAN_KIND_OF_HANDLER.get(method.kind)
    assert expected is not None, f"{_label(method)}: DSPy handler kind {method.kind!r} has no span kind"
    with caplog.at_level(logging.WARNING, logger="dspex_lab.trace.dispatch"):
        direct = _spans_of_one_call(method, "direct")
    through_dspy = _spans_of_one_call(method, "callbacks")
    assert not [record for record in caplog.records if "span recorder failed" in record.getMessage()]
    assert [item.kind for item in direct] == [expected], (
        f"{_label(method)} under direct dispatch gave spans {[(item.kind, item.name) for item in direct]}, "
        f"expected one {expected!r} span"
    )
    # DSPy's own dispatch may report one call twice: an adapter that inherits format/parse is wrapped again by
    # Adapter.__init_subclass__. Its kind and name must still be the ones direct dispatch gives.
    assert through_dspy, f"{_label(method)} gave no span under DSPy's callback dispatch"
    assert {(item.kind, item.name) for item in through_dspy} == {(direct[0].kind, direct[0].name)}, (
        f"{_label(method)}: DSPy's dispatch chose {[(item.kind, item.name) for item in through_dspy]}, "
        f"direct dispatch {(direct[0].kind, direct[0].name)}"
    )


def test_a_users_optimizer_defined_after_installation_is_covered() -> None:
    assert dispatch.install()

    class Halving(dspy.teleprompt.Teleprompter):
        def compile(self, student, *, trainset, teacher=None, valset=None, **kwargs):
            return student

    assert dispatch.install()
    assert (Halving, "compile", "compile") in {
        (item.owner, item.name, item.kind) for item in dispatch.decorated_methods()
    }
    recorder = SpanRecorder()
    program = dspy.Predict("question -> answer")
    with dispatch.direct(recorder), recorder.trial("t") as collector:
        Halving().compile(program, trainset=[dspy.Example(question="q", answer="a")])
    compiled = [item for item in collector.spans if item.kind == "compile"]
    assert [
        (item.name, item.json_attributes.get("trainset"), item.json_attributes.get("program")) for item in compiled
    ] == [("Halving.compile", 1, "Predict")]


def test_import_survives_dspy_moving_its_private_names() -> None:
    # Run in a fresh interpreter: the names are gone before dspex_lab is first imported.
    script = """
import sys, dspy
names = ("dsp.utils.settings", "utils.callback", "utils.callback_context")
settings, callback, context = (sys.modules[f"dspy.{name}"] for name in names)
del settings.thread_local_overrides, settings.main_thread_config, context.ACTIVE_CALL_ID, callback.ACTIVE_CALL_ID
import dspex_lab, dspex_lab.trace
from dspex_lab.trace import dispatch
print(dispatch.install(), dispatch.unsupported_reason(), sep="|")
"""
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    installed, reason = completed.stdout.strip().splitlines()[-1].split("|")
    assert installed == "False"
    assert "thread_local_overrides" in reason


@pytest.fixture
def moved_private_name(monkeypatch):
    """Make direct dispatch look for a DSPy private name that is not there, as after an upgrade that moved it."""
    dispatch.uninstall()
    monkeypatch.setattr(_dspy_compat, "OVERRIDES_NAME", "overrides_moved_elsewhere")
    monkeypatch.setitem(dispatch._state, "surface", None)
    monkeypatch.setitem(dispatch._state, "warned", False)
    yield
    monkeypatch.undo()
    dispatch._state["surface"] = None
    assert dispatch.install()


def test_a_moved_private_name_falls_back_to_callback_dispatch(moved_private_name, journal_path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="dspex_lab.trace.dispatch"):
        assert not dispatch.install()
    assert "overrides_moved_elsewhere" in dispatch.unsupported_reason()
    assert any("callback dispatch" in record.getMessage() for record in caplog.records)
    assert not dspy.Module.__call__.__dict__.get("__dspex_direct__")  # nothing was wrapped

    problems = dx.Dataset(dx.datasets.arithmetic(3, seed=2), name="fallback")
    program = dx.Program("dspy.ChainOfThought", signature="question -> answer", name="cot")
    with dx.Context(journal=journal_path, threads=2):
        result = evaluate(program, problems, metric=dx.metrics.exact_match, progress=False, trace=True)
    spans = dx.open_journal(journal_path).spans(result.experiment_id)
    tree = TraceTree.from_spans(spans)
    kinds = [node.span.kind for node in tree.walk()]
    assert kinds.count("trial") == 3
    assert kinds.count("lm") == 3 and kinds.count("adapter_parse") == 3
    assert not [node for node in tree.walk() if node.orphan]
    assert json.dumps(spans[0].json_attributes)  # stored and readable
