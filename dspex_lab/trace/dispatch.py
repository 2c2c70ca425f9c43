"""Hand DSPy calls to a span recorder without DSPy's per-call callback machinery.

DSPy wraps ``Module.__call__``/``acall``, ``BaseLM.__call__``/``acall``, every
adapter's ``format``/``parse``, ``Tool.__call__``/``acall`` and
``Evaluate.__call__`` in ``with_callbacks``. Once any callback is registered,
each of those calls pays for ``inspect.getcallargs``, a ``uuid4`` (a system
call for randomness) and a handler lookup whose ``isinstance`` checks include a
runtime-checkable Protocol. On a zero-latency LM that costs about as much as the
call itself (``bench/bench_trace_capture.py``), so a traced evaluation would run
at half speed for reasons that have nothing to do with recording.

:func:`direct` binds a :class:`~dspex_lab.trace.recorder.SpanRecorder` to the
current context instead of registering it with DSPy. While it is bound, the
methods above call the recorder's ``on_*_start``/``on_*_end`` handlers
themselves, with what DSPy would pass: the same ``inputs`` mapping, a fresh call
id, and ``ACTIVE_CALL_ID`` set to that id around the call (so ``dspy.Parallel``,
which binds the active id into its workers, keeps working). When some other
callback is active for a call (``dspy.settings.callbacks`` or the instance's
own), that call and everything below it go through DSPy with the recorder
appended, so both see every call, in DSPy's order.

:func:`install` replaces those methods, once per process, with thin wrappers:
with no recorder bound they call DSPy's own decorated method after one
context-variable read. It returns False, and callers keep registering the
recorder as an ordinary callback, when this DSPy version does not have the
decorated methods where they are expected.

Thread safety: installing is serialised by a lock and idempotent. A binding is
kept in DSPy's per-context settings (``dspy.context``), so it follows the context
into threads started with ``contextvars.copy_context()``, asyncio tasks, and the
workers of ``dspy.Parallel`` and ``asyncify``, which copy DSPy's settings.

Usage (what :class:`~dspex_lab.engine.TrialRunner` does for ``dx.evaluate(..., trace=True)``)::

    if dispatch.install():
        with dispatch.direct(recorder), recorder.trial("trial-1") as collector:
            program(question="...")
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import dspy
from dspy.dsp.utils.settings import main_thread_config as _main_config
from dspy.dsp.utils.settings import thread_local_overrides as _thread_overrides
from dspy.utils.callback import ACTIVE_CALL_ID

from dspex_lab.trace.recorder import new_span_id

if TYPE_CHECKING:
    from dspex_lab.trace.recorder import SpanRecorder

__all__ = ["direct", "install", "installed", "settings", "uninstall"]

logger = logging.getLogger(__name__)

_KINDS = ("module", "lm", "adapter_format", "adapter_parse", "tool", "evaluate")


class _Bound:
    """A recorder and its handlers, looked up once per binding rather than once per call."""

    __slots__ = ("handlers", "recorder")

    def __init__(self, recorder: SpanRecorder) -> None:
        self.recorder = recorder
        self.handlers = {
            kind: (getattr(recorder, f"on_{kind}_start"), getattr(recorder, f"on_{kind}_end")) for kind in _KINDS
        }


# The binding lives in DSPy's own per-context settings, which dspy.Parallel and asyncify carry into their
# worker threads (plain context variables do not reach dspy.Parallel's workers).
_SETTING = "dspex_lab_direct_recorder"

# The method names DSPy decorates with ``with_callbacks`` on modules, LMs, adapters, tools and Evaluate.
_METHODS = ("__call__", "acall", "format", "parse")
_MARK = "__dspex_direct__"
_lock = threading.Lock()
# (class, attribute) -> the attribute's value before it was wrapped, to restore on uninstall.
_originals: dict[tuple[type, str], Any] = {}
_state = {"installed": False}
# Each recorder's handlers, looked up once.
_bindings: weakref.WeakKeyDictionary[SpanRecorder, _Bound] = weakref.WeakKeyDictionary()


def _is_callback_wrapper(value: Any) -> bool:
    # functools.wraps copies the wrapped function's name, so the wrapper is recognised by its code object.
    code = getattr(value, "__code__", None)
    return code is not None and code.co_qualname.startswith("with_callbacks.") and hasattr(value, "__wrapped__")


def _kind(owner: type, method: str) -> str:
    # DSPy's own handler choice (dspy.utils.callback._get_on_start_handler), decided once per method.
    if issubclass(owner, dspy.BaseLM):
        return "lm"
    if issubclass(owner, dspy.Evaluate):
        return "evaluate"
    if issubclass(owner, dspy.Adapter):
        return "adapter_format" if method == "format" else "adapter_parse"
    if issubclass(owner, dspy.Tool):
        return "tool"
    return "module"


def _subclasses(root: type) -> Iterator[type]:
    seen: set[type] = set()
    pending = [root]
    while pending:
        cls = pending.pop()
        if cls in seen:
            continue
        seen.add(cls)
        yield cls
        pending.extend(cls.__subclasses__())


def _targets() -> Iterator[tuple[type, str, str]]:
    for root in (dspy.Module, dspy.BaseLM, dspy.Adapter, dspy.Tool, dspy.Evaluate):
        for owner in _subclasses(root):
            for method in _METHODS:
                value = owner.__dict__.get(method)
                if value is None or getattr(value, _MARK, False) or not _is_callback_wrapper(value):
                    continue
                if method in ("format", "parse") and not issubclass(owner, dspy.Adapter):
                    continue
                yield owner, method, _kind(owner, method)


def install() -> bool:
    """Wrap DSPy's callback-decorated methods so that :func:`direct` can dispatch to a recorder.

    Safe to call repeatedly: classes defined since the last call (a user's adapter
    or LM subclass) are wrapped, wrapped ones are left alone.

    Returns:
        True when direct dispatch is available (the core methods are wrapped).
    """
    with _lock:
        for owner, method, kind in list(_targets()):
            decorated = owner.__dict__[method]
            _originals[(owner, method)] = decorated
            setattr(owner, method, _wrap(decorated, kind))
        core = ((dspy.Module, "__call__"), (dspy.BaseLM, "__call__"), (dspy.ChatAdapter, "format"))
        _state["installed"] = all(getattr(vars(owner).get(method), _MARK, False) for owner, method in core)
        return _state["installed"]


def installed() -> bool:
    """Tell whether the methods every traced program goes through are wrapped."""
    return _state["installed"]


def uninstall() -> None:
    """Put DSPy's methods back as they were before :func:`install`."""
    with _lock:
        for (owner, method), original in _originals.items():
            setattr(owner, method, original)
        _originals.clear()
        _state["installed"] = False


def settings(recorder: SpanRecorder) -> dict[str, Any]:
    """Return the DSPy settings that bind ``recorder`` for direct dispatch, to merge into a ``dspy.context``.

    ``with dspy.context(lm=lm, **dispatch.settings(recorder))`` is :func:`direct`
    without a second ``dspy.context`` (each copies every setting), which is how
    the trial runner binds it once per trial.

    Args:
        recorder: the recorder whose handlers receive the calls.

    Returns:
        A one-entry mapping of DSPy setting names to values.

    Raises:
        RuntimeError: when :func:`install` has not succeeded, since the calls would then go unrecorded.
    """
    if not _state["installed"]:
        raise RuntimeError("direct dispatch is not installed for this DSPy version; register the recorder instead")
    bound = _bindings.get(recorder)
    if bound is None:
        bound = _bindings[recorder] = _Bound(recorder)
    return {_SETTING: bound}


def direct(recorder: SpanRecorder) -> contextlib.AbstractContextManager[None]:
    """Dispatch DSPy calls made in this context straight to ``recorder`` (see the module docstring).

    Args:
        recorder: the recorder whose handlers receive the calls; it is not added to
            ``dspy.settings.callbacks``.

    Returns:
        The ``with`` block inside which calls are dispatched to ``recorder``.

    Raises:
        RuntimeError: when :func:`install` has not succeeded, since the calls would then go unrecorded.
    """
    return dspy.context(**settings(recorder))


def _other_callbacks(overrides: dict[str, Any], instance: Any) -> bool:
    # What DSPy's _get_active_callbacks reads, without its three-call path through Settings.__getattr__
    # and Module.__getattribute__ on every call.
    if overrides.get("callbacks", _main_config.get("callbacks")):
        return True
    own = getattr(instance, "__dict__", None)
    if own is not None and "callbacks" in own:
        return bool(own["callbacks"])
    # No instance attribute (a class-level list, or an __init__ that did not set one): ask as DSPy does.
    return bool(getattr(instance, "callbacks", None))


def _through_dspy(recorder: SpanRecorder) -> contextlib.AbstractContextManager[None]:
    # Another callback is active: let DSPy dispatch this subtree, to it and to the recorder, in its own order.
    callbacks = [*(dspy.settings.get("callbacks") or []), recorder]
    return dspy.context(**{_SETTING: None, "callbacks": callbacks})


def _binding(instance: Any) -> tuple[_Bound | None, bool]:
    """Return the recorder bound to this context (None: call DSPy as is) and whether DSPy must dispatch."""
    overrides = _thread_overrides.get()
    bound = overrides.get(_SETTING)
    return bound, bound is not None and _other_callbacks(overrides, instance)


def _start(bound: _Bound, kind: str, instance: Any, inputs: dict[str, Any]) -> tuple[str, str | None]:
    """Hand a call's start to the recorder and make it the active call; return its id and the previous one."""
    call_id = new_span_id()
    try:
        bound.handlers[kind][0](call_id=call_id, instance=instance, inputs=inputs)
    except Exception as error:  # as in DSPy: a failing callback is logged, never fails the call
        logger.warning("span recorder failed on the start of a %s call: %s", kind, error)
    # Set after the start handler, as DSPy does: the handler reads the caller's id as the parent.
    parent = ACTIVE_CALL_ID.get()
    ACTIVE_CALL_ID.set(call_id)
    return call_id, parent


def _end(bound: _Bound, kind: str, call: tuple[str, str | None], outputs: Any, exception: BaseException | None) -> None:
    call_id, parent = call
    ACTIVE_CALL_ID.set(parent)
    try:
        bound.handlers[kind][1](call_id=call_id, outputs=outputs, exception=exception)
    except Exception as error:
        logger.warning("span recorder failed on the end of a %s call: %s", kind, error)


def _wrap(decorated: Callable[..., Any], kind: str) -> Callable[..., Any]:
    # The async wrapper goes through the helpers above; the sync one, on every traced call, has them inlined.
    raw = inspect.unwrap(decorated, stop=lambda item: not _is_callback_wrapper(item))
    bind = _binder(raw)

    if inspect.iscoroutinefunction(raw):

        @functools.wraps(decorated)
        async def dispatch_async(instance: Any, *args: Any, **kwargs: Any) -> Any:
            bound, through_dspy = _binding(instance)
            if bound is None:
                return await decorated(instance, *args, **kwargs)
            if through_dspy:
                with _through_dspy(bound.recorder):
                    return await decorated(instance, *args, **kwargs)
            call = _start(bound, kind, instance, bind(raw, instance, args, kwargs))
            outputs = exception = None
            try:
                outputs = await raw(instance, *args, **kwargs)
                return outputs
            except BaseException as error:
                exception = error
                raise
            finally:
                _end(bound, kind, call, outputs, exception)

        setattr(dispatch_async, _MARK, True)
        return dispatch_async

    @functools.wraps(decorated)
    def dispatch(instance: Any, *args: Any, **kwargs: Any) -> Any:
        # _binding, _start and _end inlined: this wrapper runs for every module, adapter and LM call of a traced
        # trial, and on a zero-latency LM three extra calls per DSPy call are a measurable share of the trial.
        overrides = _thread_overrides.get()
        bound = overrides.get(_SETTING)
        if bound is None:
            return decorated(instance, *args, **kwargs)
        if _other_callbacks(overrides, instance):
            with _through_dspy(bound.recorder):
                return decorated(instance, *args, **kwargs)
        start, end = bound.handlers[kind]
        inputs = bind(raw, instance, args, kwargs)  # arguments that do not fit raise DSPy's TypeError here
        call_id = new_span_id()
        try:
            start(call_id, instance, inputs)
        except Exception as error:  # as in DSPy: a failing callback is logged, never fails the call
            logger.warning("span recorder failed on the start of a %s call: %s", kind, error)
        # Set after the start handler, as DSPy does: the handler reads the caller's id as the parent.
        parent = ACTIVE_CALL_ID.get()
        ACTIVE_CALL_ID.set(call_id)
        outputs = exception = None
        try:
            outputs = raw(instance, *args, **kwargs)
            return outputs
        except BaseException as error:
            exception = error
            raise
        finally:
            ACTIVE_CALL_ID.set(parent)
            try:
                end(call_id, outputs, exception)
            except Exception as error:
                logger.warning("span recorder failed on the end of a %s call: %s", kind, error)

    setattr(dispatch, _MARK, True)
    return dispatch


_Binder = Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], dict[str, Any]]


def _getcallargs(raw: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict:
    # What DSPy passes as ``inputs``; raises TypeError for a call that does not fit, as DSPy's dispatch does.
    inputs = inspect.getcallargs(raw, instance, *args, **kwargs)
    inputs.pop(next(iter(inspect.signature(raw).parameters)), None)
    return inputs


def _binder(raw: Callable[..., Any]) -> _Binder:
    """Return a function computing ``inspect.getcallargs`` minus ``self`` for ``raw``, fast for simple calls.

    Binding is planned once per method from its signature; a call that does not
    fit the plan (a missing or duplicated argument) falls back to
    ``inspect.getcallargs`` itself, so errors are DSPy's.
    """
    parameters = list(inspect.signature(raw).parameters.values())[1:]
    kinds = inspect.Parameter
    positional = [p.name for p in parameters if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)]
    by_keyword = {p.name for p in parameters if p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)}
    defaults = {p.name: p.default for p in parameters if p.default is not p.empty and p.kind != kinds.VAR_KEYWORD}
    keyword_only = [p.name for p in parameters if p.kind == kinds.KEYWORD_ONLY]
    variadic = (kinds.VAR_POSITIONAL, kinds.VAR_KEYWORD)
    required = [p.name for p in parameters if p.default is p.empty and p.kind not in variadic]
    var_positional = next((p.name for p in parameters if p.kind == kinds.VAR_POSITIONAL), None)
    var_keyword = next((p.name for p in parameters if p.kind == kinds.VAR_KEYWORD), None)

    if not positional and not by_keyword and var_positional and var_keyword:
        # ``(self, *args, **kwargs)``: Module.__call__ and acall.
        def bind_any(raw: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict:
            return {var_positional: args, var_keyword: dict(kwargs)}

        return bind_any

    def bind(raw: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict:
        if not kwargs and len(args) == len(positional) and not keyword_only:
            # Every parameter given by position, as DSPy calls adapters' format and parse.
            inputs = dict(zip(positional, args, strict=True))
            if var_positional is not None:
                inputs[var_positional] = ()
            if var_keyword is not None:
                inputs[var_keyword] = {}
            return inputs
        if len(args) > len(positional) and var_positional is None:
            return _getcallargs(raw, instance, args, kwargs)
        inputs = dict(zip(positional, args, strict=False))
        rest: dict[str, Any] = {}
        for key, value in kwargs.items():
            if key in by_keyword and key not in inputs:
                inputs[key] = value
            elif var_keyword is not None and key not in inputs and key not in by_keyword:
                rest[key] = value
            else:
                return _getcallargs(raw, instance, args, kwargs)
        for name in required:
            if name not in inputs:
                return _getcallargs(raw, instance, args, kwargs)
        for name, default in defaults.items():
            inputs.setdefault(name, default)
        if var_positional is not None:
            inputs[var_positional] = args[len(positional) :]
        if var_keyword is not None:
            inputs[var_keyword] = rest
        return inputs

    return bind
