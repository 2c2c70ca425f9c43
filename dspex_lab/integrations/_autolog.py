"""``dx.autolog()``: journal every ``dspy.Evaluate`` call and every DSPy optimizer ``compile``, unchanged.

One DSPy callback (:class:`AutologCallback`), added to ``dspy.settings.callbacks``, hears what DSPy
already announces through its public callback API:

- ``on_evaluate_start``/``on_evaluate_end``: a ``dspy.Evaluate(...)(program)`` call becomes an
  evaluation experiment on its devset (examples stored, so input and gold are browsable), with one
  trial per example: prediction, score, error, latency, tokens, cost. While it runs, the
  ``Evaluate``'s ``metric`` attribute is wrapped (and given back at the end), so each trial is
  recorded, and streamed to the journal, as soon as it is scored, with the metric's own exception
  when it raised; a metric given to the call instead is read from the returned result;
- ``on_module_start``/``on_module_end`` of the evaluated program's top-level call (the call DSPy
  makes from ``Evaluate`` with the example's inputs) open and close that trial's trace; every
  module, adapter, LM and tool call under it is a span (:class:`~dspex_lab.trace.SpanRecorder`), and
  the LM spans give the trial's tokens and cost;
- ``on_compile_start``/``on_compile_end``: an optimizer's ``compile`` becomes an optimization
  experiment (the kind and vocabulary of ``dx.optimize``'s DSPy bridge: ``optimizer``, ``dspy``,
  ``optimizer_config``, ``trainset``, ``valset``). Each ``Evaluate`` run inside it (MIPROv2's
  candidate evaluations) is nested under it (role ``compile``), and so are the metric calls the
  optimizer makes itself (BootstrapFewShot's bootstrapping): while the compile runs, the
  optimizer's ``metric`` attribute is wrapped, and restored when it ends.

What is never done: no DSPy class is patched (the one private name needed, DSPy's active call id,
which says whose call a module call is, is read through :mod:`dspex_lab._dspy_compat`), the user's
program and data are not changed, and a failure here never reaches the user's run: a program or metric that raises is an
error trial (DSPy's ``Evaluate`` goes on, as it always does), and a journal that cannot be written
is logged once, while ``Evaluate`` returns its result as usual. Secrets are masked by the same
builders every other trial, span and config goes through.

A nested compile (MIPROv2 calling ``BootstrapFewShot.compile`` for its demos) belongs to the
outermost one. Runs dspex_lab already journals are left to it: an ``Evaluate`` or a ``compile``
started inside a ``dx.evaluate`` trial or ``dx.optimize``'s DSPy bridge (both count their LM calls
in a :func:`~dspex_lab.providers.metering` block, which :func:`~dspex_lab.providers.current_meter`
tells) is not journaled a second time.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dspy
from dspy.utils import BaseCallback

from dspex_lab._dspy_compat import CURRENT_CALL_ID
from dspex_lab._records import trial_id
from dspex_lab.data import Dataset
from dspex_lab.engine import metric_feedback, metric_score, to_json_value, trial_record
from dspex_lab.errors import DatasetError
from dspex_lab.evaluation import EvaluationResult
from dspex_lab.journal import JournalStore
from dspex_lab.providers import call_cost, current_meter
from dspex_lab.session import Experiment, experiment_record, journal_store, lm_state, metric_name
from dspex_lab.trace import Span, SpanRecorder, TraceCollector, current_collector
from dspex_lab.trace.redaction import mask_text, redact

__all__ = ["OPTIMIZER_NAMES", "AutologCallback", "autolog"]

logger = logging.getLogger("dspex_lab.autolog")

#: DSPy's optimizers by the name ``dx.optimize(optimizer=...)`` gives them (its DSPy bridge's vocabulary).
OPTIMIZER_NAMES = {"SIMBA": "simba", "MIPROv2": "mipro", "GEPA": "gepa", "BootstrapFewShot": "bootstrap"}

#: Where DSPy's optimizers keep the metric they were given (``GEPA`` names it ``metric_fn``).
_METRIC_ATTRIBUTES = ("metric", "metric_fn")

_installed: AutologCallback | None = None
_install_lock = threading.Lock()


def autolog(
    journal: str | os.PathLike[str] | JournalStore | None = None, *, disable: bool = False, trace: bool = True
) -> AutologCallback | None:
    """Journal every ``dspy.Evaluate`` call and DSPy optimizer ``compile`` of this process, from now on.

    No change to the user's code: after ``dx.autolog()``, a script's ``dspy.Evaluate(devset=...,
    metric=...)(program)`` is an evaluation experiment with a trial per example (inputs, prediction,
    gold, score, error, tokens, cost) and its trace, and ``SomeOptimizer(...).compile(program,
    trainset=...)`` an optimization experiment holding the evaluations and metric calls it made.
    Browse them with ``dspex journal list`` and ``dspex journal trials``, the dashboard or the notebook.

    Calling it again replaces the previous registration (never two); ``disable=True`` removes it.

    Args:
        journal: where to record: a path, a journal (``dx.open_journal(...)``), or None for the
            current context's journal (``dx.Context``'s, by default ``dspex.duckdb``), resolved now.
        disable: stop autologging instead.
        trace: store each trial's span tree (module, adapter and LM calls); False keeps only trials
            (tokens and cost are counted either way).

    Returns:
        The registered callback (its ``journal`` is where the runs go), or None when disabled.

    Raises:
        JournalError: ``journal`` is neither a path nor a journal.
    """
    global _installed
    with _install_lock:
        if _installed is not None:
            _unregister(_installed)
            _installed = None
        if disable:
            return None
        callback = AutologCallback(journal_store(journal), trace=trace)
        dspy.settings.configure(callbacks=[*(dspy.settings.get("callbacks") or []), callback])
        _installed = callback
        return callback


def _unregister(callback: AutologCallback) -> None:
    kept = [item for item in dspy.settings.get("callbacks") or [] if item is not callback]
    dspy.settings.configure(callbacks=kept)


def _logged(method: Callable[..., None]) -> Callable[..., None]:
    """Run a callback handler so that nothing it raises reaches DSPy or the user (logged once per callback)."""

    @functools.wraps(method)
    def handler(self: AutologCallback, *args: Any, **kwargs: Any) -> None:
        try:
            method(self, *args, **kwargs)
        except Exception as error:
            self.report(f"{method.__name__} failed: {type(error).__name__}: {error}")

    return handler


_PLAIN = (str, int, float, bool, type(None))


def _inputs_key(inputs: Any) -> Any:
    """Return a key equal for equal inputs (``1``, ``1.0`` and ``True`` apart, as their JSON texts are).

    Their typed items when all are plain values: the usual case, and the cheap one, as the key is
    computed for every trial; else their JSON text.
    """
    items = dict(inputs)
    if all(type(value) in _PLAIN for value in items.values()):
        return tuple(sorted((name, type(value).__name__, value) for name, value in items.items()))
    return json.dumps(to_json_value(items), sort_keys=True, ensure_ascii=False, default=repr)


def _dataset(examples: Sequence[Any], name: str) -> Dataset:
    """Return ``examples`` as a dataset (ids, fingerprint, stored examples); inputs unmarked become no inputs."""
    try:
        return Dataset(examples, name=name)
    except DatasetError:
        # Examples without with_inputs(): every field is kept as gold, none is an input.
        return Dataset([dict(example.toDict()) for example in examples], inputs=(), name=name)


@dataclass
class _Call:
    """One top-level program call that is a trial: where it ran, what it returned, its trace."""

    example_id: str
    index: int
    repeat: int
    scope: Any
    collector: TraceCollector
    started: tuple[float, float] = field(default_factory=lambda: (time.time(), time.perf_counter()))
    ended: float | None = None
    outputs: Any = None
    exception: BaseException | None = None
    spans: tuple[Span, ...] = ()
    # Where the spans go as soon as the call ends (an Evaluate's trial: its id is known from the start);
    # None when they wait for the trial's row (a compile's metric call gives its repeat).
    sink: Experiment | None = None


class _Trials:
    """The trials of one experiment made from DSPy's own calls: example lookup, repeats, rows."""

    def __init__(self, data: Dataset, originals: Sequence[Any]) -> None:
        self.data = data
        self.by_object = {id(example): position for position, example in enumerate(originals)}
        self.by_inputs: dict[Any, list[int]] = {}
        names = data.inputs  # read off each example by name: example.inputs() copies the example
        for position, example in enumerate(data):
            self.by_inputs.setdefault(_inputs_key({name: example[name] for name in names}), []).append(position)
        self.repeats: dict[str, int] = {}
        self.lock = threading.Lock()

    def position(self, example: Any) -> int | None:
        """Return the dataset position of ``example`` (the same object, or the same inputs)."""
        found = self.by_object.get(id(example))
        if found is not None:
            return found
        try:
            positions = self.by_inputs.get(_inputs_key(example.inputs()))
        except Exception:
            return None
        return positions[0] if positions else None

    def claim(self, position: int) -> tuple[str, int]:
        """Return the example id and the next repeat of the example at ``position``."""
        example_id = self.data.example_ids[position]
        with self.lock:
            repeat = self.repeats.get(example_id, 0)
            self.repeats[example_id] = repeat + 1
        return example_id, repeat


@dataclass
class _EvaluateRun:
    """One ``dspy.Evaluate`` call being journaled."""

    experiment: Experiment
    trials: _Trials
    program: Any
    metric: str
    unclaimed: dict[Any, list[int]]
    calls: dict[int, _Call] = field(default_factory=dict)
    # Devset positions whose trial was recorded when the metric returned (see AutologCallback._scoring_metric).
    streamed: set[int] = field(default_factory=set)
    # The Evaluate whose metric attribute was wrapped, and the metric to give back.
    restore: tuple[Any, Any] | None = None
    # A top-level run holds the journal file open while it runs (see AutologCallback._hold).
    held: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)


@dataclass
class _CompileRun:
    """One optimizer ``compile`` being journaled, with its metric wrapped while it runs."""

    experiment: Experiment
    optimizer: Any
    trainset: _Trials
    metric: Any
    metric_label: str
    token: contextvars.Token[_CompileRun | None] | None
    metric_attribute: str = "metric"  # where the optimizer keeps its metric (GEPA: metric_fn)
    nested: list[str] = field(default_factory=list)
    evaluations: list[Experiment] = field(default_factory=list)
    metric_trials: Experiment | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    held: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)


_CURRENT_COMPILE: contextvars.ContextVar[_CompileRun | None] = contextvars.ContextVar(
    "dspex_lab_autolog_compile", default=None
)
# The last top-level program call a compile made on this thread, for the metric call that scores it.
_LAST_CALL = threading.local()


class AutologCallback(BaseCallback):
    """The DSPy callback ``dx.autolog()`` registers: DSPy's runs become experiments, trials and spans.

    Thread safety: DSPy calls the handlers from the user's thread and from ``Evaluate``'s and
    ``dspy.Parallel``'s workers; the open runs are kept in dicts guarded by one lock, a trial's
    spans by its own collector. Handlers never raise (see :func:`_logged`).

    Args:
        journal: where the runs are recorded.
        trace: store each trial's span tree.

    Attributes:
        journal: where the runs are recorded.
        trace: whether span trees are stored.
    """

    def __init__(self, journal: JournalStore, *, trace: bool = True) -> None:
        super().__init__()
        self.journal = journal
        self.trace = trace
        self._recorder = SpanRecorder(capture_prompts=trace)
        self._evaluations: dict[str, _EvaluateRun] = {}
        self._compiles: dict[str, _CompileRun] = {}
        self._calls: dict[str, tuple[_Call, Any]] = {}
        # DSPy calls inside one of autolog's traces, handed to the span recorder (and only those: a
        # dx.evaluate run's own recorder traces its calls, never twice).
        self._traced: set[str] = set()
        self._collectors: set[int] = set()
        self._lock = threading.Lock()
        self._reported = False

    def __repr__(self) -> str:
        return f"AutologCallback(journal={self.journal!r}, trace={self.trace})"

    def report(self, problem: str) -> None:
        """Log a failure of autolog once (later ones go to the debug log): the user's run goes on."""
        text = mask_text(problem)
        if self._reported:
            logger.debug("dx.autolog: %s", text)
            return
        self._reported = True
        logger.warning("dx.autolog could not journal a DSPy run (the run itself is unaffected): %s", text)

    # -- Evaluate ---------------------------------------------------------------------------------

    @_logged
    def on_evaluate_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        """Start the evaluation experiment of a ``dspy.Evaluate`` call (nested in the compile it runs in)."""
        if current_meter() is not None:
            return  # inside a dx.evaluate trial or dx.optimize's DSPy compile: that run journals it
        program = inputs.get("program")
        devset = inputs.get("devset") or instance.devset
        metric = inputs.get("metric") or instance.metric
        data = _dataset(list(devset), "devset")
        label = metric_name(getattr(metric, "__wrapped__", metric))
        parent = self._compile_of(CURRENT_CALL_ID.get())
        name = f"dspy.Evaluate {type(program).__name__}"
        threads = inputs.get("num_threads") or instance.num_threads
        config = {"dspy": "Evaluate", "threads": threads, "failure_score": instance.failure_score}
        record = self._record(
            "evaluation", name, program=program, data=data, metric=label, config=config, parent=parent
        )
        held = contextlib.ExitStack()
        if parent is None:
            experiment = self._start(record, held)
        else:
            experiment = parent.experiment.child(record)
            with parent.lock:
                parent.evaluations.append(experiment)
        trials = _Trials(data, list(devset))
        unclaimed = {key: list(positions) for key, positions in trials.by_inputs.items()}
        run = _EvaluateRun(experiment, trials, program, label, unclaimed, held=held)
        if inputs.get("metric") is None and callable(instance.metric) and not _is_wrapper(instance.metric):
            # Read by Evaluate after this handler returns: each trial is recorded as soon as it is scored.
            run.restore = (instance, instance.metric)
            instance.metric = self._scoring_metric(instance.metric)
        with self._lock:
            self._evaluations[call_id] = run

    @_logged
    def on_evaluate_end(self, call_id: str, outputs: Any | None, exception: BaseException | None = None) -> None:
        """Record the trials of a ``dspy.Evaluate`` call and finish its experiment."""
        with self._lock:
            run = self._evaluations.pop(call_id, None)
        if run is None:
            return
        if run.restore is not None and _is_wrapper(run.restore[0].metric):
            run.restore[0].metric = run.restore[1]
        with run.held:
            results = list(getattr(outputs, "results", None) or [])
            for position, example_id in enumerate(run.trials.data.example_ids):
                call = run.calls.get(position)
                result = results[position] if position < len(results) else None
                if position in run.streamed or (call is None and result is None):
                    continue  # recorded when scored, or never run (DSPy stopped the evaluation first)
                row = _evaluate_row(call, result, position=position, example_id=example_id)
                self._save(run.experiment, row, call)
            status, detail = _ending(exception)
            self._finish(run.experiment, run.metric, status, detail)

    # -- compile ----------------------------------------------------------------------------------

    @_logged
    def on_compile_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        """Start the optimization experiment of a ``compile`` (a nested compile joins the outermost one)."""
        if current_meter() is not None:
            return  # dx.optimize's DSPy bridge runs this compile and journals it itself
        outer = self._compile_of(CURRENT_CALL_ID.get())
        if outer is not None:
            with self._lock:
                self._compiles[call_id] = outer
            outer.nested.append(call_id)
            return
        student, trainset = inputs.get("student"), list(inputs.get("trainset") or [])
        valset = inputs.get("valset")
        data = _dataset(trainset, "trainset")
        where = next((name for name in _METRIC_ATTRIBUTES if callable(getattr(instance, name, None))), None)
        metric = getattr(instance, where) if where is not None else None
        label = metric_name(metric) if metric is not None else "none"
        dspy_name = type(instance).__name__
        config = {
            "optimizer": _optimizer_name(dspy_name),
            "dspy": dspy_name,
            "optimizer_config": _settings(instance),
            "trainset": data.manifest(),
            "valset": _dataset(list(valset), "valset").manifest() if valset else None,
        }
        name = f"dspy {dspy_name}.compile"
        record = self._record("optimization", name, program=student, data=data, metric=label, config=config)
        held = contextlib.ExitStack()
        experiment = self._start(record, held)
        run = _CompileRun(experiment, instance, _Trials(data, trainset), metric, label, None, held=held)
        run.metric_attribute = where or "metric"
        run.token = _CURRENT_COMPILE.set(run)
        with self._lock:
            self._compiles[call_id] = run
        if metric is not None:
            try:
                setattr(instance, run.metric_attribute, self._journaled_metric(run, metric))
            except AttributeError:  # a read-only metric: the compile's Evaluate runs are still journaled
                run.metric = None

    @_logged
    def on_compile_end(self, call_id: str, outputs: Any | None, exception: BaseException | None = None) -> None:
        """Restore the optimizer's metric and finish the compile's experiments."""
        with self._lock:
            run = self._compiles.pop(call_id, None)
        if run is None or call_id in run.nested:
            return
        if run.metric is not None:
            setattr(run.optimizer, run.metric_attribute, run.metric)
        if run.token is not None:
            try:
                _CURRENT_COMPILE.reset(run.token)
            except ValueError:  # ended in another context than it started in
                _CURRENT_COMPILE.set(None)
        with run.held:
            if run.metric_trials is not None:
                self._finish(run.metric_trials, run.metric_label, "finished", None)
            status, detail = _ending(exception)
            run.experiment.finish(status, detail=detail, summary=_compile_summary(run, outputs))

    def _compile_of(self, active: str | None) -> _CompileRun | None:
        with self._lock:
            found = self._compiles.get(active) if active is not None else None
        return found if found is not None else _CURRENT_COMPILE.get()

    def _scoring_metric(self, metric: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap an Evaluate's metric: a trial is recorded (and streamed to the journal) once it is scored.

        The metric's own exception is the trial's error (DSPy's Evaluate logs it and scores
        ``failure_score``); the wrapper re-raises it, so Evaluate behaves as without autolog.
        """

        @functools.wraps(metric)
        def scoring(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                run = self._evaluations.get(CURRENT_CALL_ID.get())
            if run is None or len(args) < 2:
                return metric(*args, **kwargs)
            try:
                value = metric(*args, **kwargs)
            except Exception as error:
                self._scored(run, example=args[0], prediction=args[1], value=None, error=error)
                raise
            self._scored(run, example=args[0], prediction=args[1], value=value, error=None)
            return value

        scoring._dspex_autolog = True  # type: ignore[attr-defined]
        return scoring

    @_logged
    def _scored(self, run: _EvaluateRun, *, example: Any, prediction: Any, value: Any, error: Exception | None) -> None:
        call: _Call | None = getattr(_LAST_CALL, "call", None)
        _LAST_CALL.call = None
        if call is None or call.outputs is not prediction:
            position = run.trials.by_object.get(id(example))
            call = run.calls.get(position) if position is not None else None
        else:
            position = call.index
        if position is None:
            return  # not a devset example: left to the result DSPy returns
        fields = {"index": position, "example_id": run.trials.data.example_ids[position], "repeat": 0}
        row = _metric_row(call, fields, prediction=prediction, value=value, error=error)
        with self._lock:
            if position in run.streamed:
                return
            run.streamed.add(position)
        self._save(run.experiment, row, call)

    def _journaled_metric(self, run: _CompileRun, metric: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap an optimizer's metric: each call the optimizer makes itself is a trial of the compile."""

        @functools.wraps(metric)
        def journaled(*args: Any, **kwargs: Any) -> Any:
            if CURRENT_CALL_ID.get() in self._evaluations or len(args) < 2:
                return metric(*args, **kwargs)  # inside an Evaluate (journaled there), or not a scoring call
            # GEPA's per-predictor feedback calls (pred_name given) score the same trial again.
            again = (len(args) > 3 and args[3] is not None) or kwargs.get("pred_name") is not None
            try:
                value = metric(*args, **kwargs)
            except Exception as error:
                if not again:
                    self._metric_trial(run, example=args[0], prediction=args[1], value=None, error=error)
                raise
            if not again:
                self._metric_trial(run, example=args[0], prediction=args[1], value=value, error=None)
            return value

        return journaled

    @_logged
    def _metric_trial(
        self, run: _CompileRun, *, example: Any, prediction: Any, value: Any, error: Exception | None
    ) -> None:
        call: _Call | None = getattr(_LAST_CALL, "call", None)
        if call is not None and call.outputs is not prediction:
            call = None
        _LAST_CALL.call = None
        if call is not None:
            example_id, position, repeat = call.example_id, call.index, call.repeat
        else:
            position = run.trainset.position(example)
            if position is None:
                return  # an example outside the trainset (a demo candidate DSPy made up): not a trial
            example_id, repeat = run.trainset.claim(position)
        with run.lock:
            if run.metric_trials is None:
                record = self._record(
                    "evaluation",
                    f"{run.experiment.name} metric calls",
                    program=None,
                    data=run.trainset.data,
                    metric=run.metric_label,
                    config={"dspy": type(run.optimizer).__name__, "metric_calls": True},
                    parent=run,
                    store_examples=False,  # stored with the compile's record
                )
                run.metric_trials = run.experiment.child(record)
        fields = {"index": position, "example_id": example_id, "repeat": repeat}
        row = _metric_row(call, fields, prediction=prediction, value=value, error=error)
        self._save(run.metric_trials, row, call)

    # -- the trials' traces -----------------------------------------------------------------------

    @_logged
    def on_module_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        """Open a trial for the evaluated program's (or a compile's) top-level call; trace what runs inside."""
        active = CURRENT_CALL_ID.get()
        with self._lock:
            evaluation = self._evaluations.get(active) if active is not None else None
            compiling = self._compiles.get(active) if active is not None else None
        if evaluation is not None and instance is evaluation.program:
            self._open_evaluate_trial(call_id, evaluation, inputs.get("kwargs") or {})
        elif compiling is not None:
            self._open_compile_trial(call_id, compiling, inputs.get("kwargs") or {})
        if self._is_traced(active):
            self._traced.add(call_id)
            self._recorder.on_module_start(call_id, instance, inputs)

    @_logged
    def on_module_end(self, call_id: str, outputs: Any | None, exception: BaseException | None = None) -> None:
        """Close a module span; for a trial's top-level call, close its trace."""
        if call_id in self._traced:
            self._traced.discard(call_id)
            self._recorder.on_module_end(call_id, outputs, exception)
        with self._lock:
            opened = self._calls.pop(call_id, None)
        if opened is None:
            return
        call, scope = opened
        call.ended, call.outputs, call.exception = time.perf_counter(), outputs, exception
        if call.collector.root is not None and exception is not None:
            call.collector.root.fail(mask_text(f"{type(exception).__name__}: {exception}"))
        scope.__exit__(None, None, None)
        call.spans = tuple(call.collector.spans)
        if self.trace and call.sink is not None and call.spans:
            # Streamed now, through the journal writer's thread, while the evaluation goes on.
            call.sink.add_spans(trial_id(call.example_id, call.repeat), call.spans)
        with self._lock:
            self._collectors.discard(id(call.collector))
        _LAST_CALL.call = call

    def _open_evaluate_trial(self, call_id: str, run: _EvaluateRun, kwargs: dict[str, Any]) -> None:
        key = _inputs_key(kwargs)
        with self._lock:
            waiting = run.unclaimed.get(key)
            position = waiting.pop(0) if waiting else None
        if position is None:
            return
        call = self._open_trial(call_id, run.trials.data.example_ids[position], position, 0)
        call.sink = run.experiment
        run.calls[position] = call

    def _open_compile_trial(self, call_id: str, run: _CompileRun, kwargs: dict[str, Any]) -> None:
        positions = run.trainset.by_inputs.get(_inputs_key(kwargs))
        if not positions:
            return  # not a trainset example's run (a proposal or a summary): part of the compile only
        example_id, repeat = run.trainset.claim(positions[0])
        self._open_trial(call_id, example_id, positions[0], repeat)

    def _open_trial(self, call_id: str, example_id: str, position: int, repeat: int) -> _Call:
        attributes = {"example_id": example_id, "repeat": repeat, "autolog": True}
        scope = self._recorder.trial(trial_id(example_id, repeat), attributes=attributes)
        collector = scope.__enter__()
        call = _Call(example_id, position, repeat, scope, collector)
        with self._lock:
            self._calls[call_id] = (call, scope)
            self._collectors.add(id(collector))
        return call

    def _is_traced(self, active: str | None) -> bool:
        collector = current_collector()
        if collector is not None and id(collector) in self._collectors:
            return True
        return active is not None and active in self._traced

    def _start_span(self, handler: str, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        if self._is_traced(CURRENT_CALL_ID.get()):
            self._traced.add(call_id)
            getattr(self._recorder, handler)(call_id, instance, inputs)

    def _end_span(self, handler: str, call_id: str, outputs: Any, exception: BaseException | None) -> None:
        if call_id in self._traced:
            self._traced.discard(call_id)
            getattr(self._recorder, handler)(call_id, outputs, exception)

    @_logged
    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        """Open an LM span inside a trial."""
        self._start_span("on_lm_start", call_id, instance, inputs)

    @_logged
    def on_lm_end(self, call_id: str, outputs: Any | None, exception: BaseException | None = None) -> None:
        """Close an LM span with its tokens and cost."""
        self._end_span("on_lm_end", call_id, outputs, exception)

    @_logged
    def on_adapter_format_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        """Open an adapter-format span inside a trial."""
        self._start_span("on_adapter_format_start", call_id, instance, inputs)

    @_logged
    def on_adapter_format_end(self, call_id: str, outputs: Any | None, exception: BaseException | None = None) -> None:
        """Close an adapter-format span."""
        self._end_span("on_adapter_format_end", call_id, outputs, exception)

    @_logged
    def on_adapter_parse_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        """Open an adapter-parse span inside a trial."""
        self._start_span("on_adapter_parse_start", call_id, instance, inputs)

    @_logged
    def on_adapter_parse_end(self, call_id: str, outputs: Any | None, exception: BaseException | None = None) -> None:
        """Close an adapter-parse span."""
        self._end_span("on_adapter_parse_end", call_id, outputs, exception)

    @_logged
    def on_tool_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        """Open a tool span inside a trial."""
        self._start_span("on_tool_start", call_id, instance, inputs)

    @_logged
    def on_tool_end(self, call_id: str, outputs: Any | None, exception: BaseException | None = None) -> None:
        """Close a tool span."""
        self._end_span("on_tool_end", call_id, outputs, exception)

    # -- the journal --------------------------------------------------------------------------------

    def _record(
        self,
        kind: str,
        name: str,
        *,
        program: Any,
        data: Dataset,
        metric: str,
        config: dict[str, Any],
        parent: _CompileRun | None = None,
        store_examples: bool = True,
    ) -> Any:
        lm = dspy.settings.lm
        settings = {**config, "autolog": True, "trace": self.trace}
        settings["lm"] = getattr(lm, "model", None if lm is None else repr(lm))
        settings["lm_state"] = lm_state(lm) if lm is not None else None
        return experiment_record(
            kind,
            name,
            program=(type(program).__name__ if program is not None else "program", None, None),
            data=data,
            metric=metric,
            config=redact(to_json_value(settings)),
            n_planned=len(data) if kind == "evaluation" else None,
            store_examples=store_examples,
            parent_id=parent.experiment.id if parent is not None else None,
            role="compile" if parent is not None else None,
        )

    def _start(self, record: Any, held: contextlib.ExitStack) -> Experiment:
        """Start a top-level experiment with the journal held open until ``held`` closes.

        As ``dx.evaluate`` does for its run: opening a DuckDB file costs tens of milliseconds, and
        the trial writer flushes every 0.4 s, so a run that did not hold the file would open it for
        every flush, and twice more at its end (other processes reach the journal through this
        process's service meanwhile).
        """
        held.enter_context(self.journal.hold())
        try:
            return Experiment.start(self.journal, record)
        except BaseException:
            held.close()
            raise

    def _save(self, experiment: Experiment, row: dict[str, Any], call: _Call | None) -> None:
        experiment.record(row)
        if self.trace and call is not None and call.sink is None and call.spans:
            experiment.span_sink(trial_id(row["example_id"], row["repeat"]), call.spans)

    def _finish(self, experiment: Experiment, metric: str, status: str, detail: str | None) -> None:
        # The writer's last rows first (a top-level run's; a nested one shares its root's writer): the
        # summary's frame is then built without the writer thread competing for the interpreter.
        experiment.close()
        trials = experiment.trials()
        if status == "finished" and len(trials) and not (trials["status"] == "ok").any():
            status, detail = "failed", f"every one of its {len(trials)} trials failed; no trial scored"
        result = EvaluationResult(
            experiment_id=experiment.id,
            name=experiment.name,
            status=status,
            trials=trials,
            metric=metric,
            journal=self.journal,
        )
        experiment.finish(status, detail=detail, summary=result.to_summary() if len(trials) else None)
        if experiment.parent is None and not experiment.saved:
            self.report(f"the journal refused the trials of {experiment.id}; they were saved to {experiment.fallback}")


def _is_wrapper(metric: Any) -> bool:
    """Tell whether ``metric`` is autolog's scoring wrapper of an Evaluate's metric."""
    return getattr(metric, "_dspex_autolog", False) is True


def _ending(exception: BaseException | None) -> tuple[str, str | None]:
    """Return how a DSPy call that raised ``exception`` (or None) ended: its status and, masked, why."""
    if exception is None:
        return "finished", None
    status = "interrupted" if isinstance(exception, KeyboardInterrupt) else "failed"
    return status, mask_text(f"{type(exception).__name__}: {exception}")[:2000]


def _usage(spans: Sequence[Span]) -> dict[str, Any]:
    """Return the tokens, LM calls and cost of a trial's LM spans (cost None when a model is unpriced)."""
    input_tokens = output_tokens = calls = 0
    cost: float | None = 0.0
    unpriced: set[str] = set()
    for item in spans:
        if item.kind != "lm":
            continue
        attributes = item.attributes
        prompt, completion = int(attributes.get("prompt_tokens") or 0), int(attributes.get("completion_tokens") or 0)
        input_tokens, output_tokens, calls = input_tokens + prompt, output_tokens + completion, calls + 1
        spent = attributes.get("cost")
        if spent is None:
            spent = call_cost(str(attributes.get("model")), prompt, completion) if attributes.get("model") else None
        if spent is None:
            unpriced.add(str(attributes.get("model")))
        elif cost is not None:
            cost += float(spent)
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "lm_calls": calls,
        "cost": None if unpriced else cost,
        "unpriced_models": ",".join(sorted(unpriced)) or None,
    }


def _timing(call: _Call | None) -> dict[str, Any]:
    if call is None:
        now = time.time()
        return {"latency": 0.0, "started_at": now, "finished_at": now}
    ended = call.ended if call.ended is not None else time.perf_counter()
    latency = max(0.0, ended - call.started[1])
    return {"latency": latency, "started_at": call.started[0], "finished_at": call.started[0] + latency}


def _prediction_text(prediction: Any) -> str:
    return json.dumps(to_json_value(prediction), ensure_ascii=False, default=repr)


def _evaluate_row(call: _Call | None, result: Any, *, position: int, example_id: str) -> dict[str, Any]:
    """Return the trial row of one devset example of a ``dspy.Evaluate`` call.

    DSPy's ``Evaluate`` hides a failure behind ``(dspy.Prediction(), failure_score)``; the program's
    own call tells which failed: it raised (a program error), or it answered but the result holds
    another prediction (the metric raised).
    """
    fields: dict[str, Any] = {"index": position, "example_id": example_id, "repeat": 0}
    fields.update(_timing(call))
    fields.update(_usage(call.spans if call is not None else ()))
    prediction, value = (result[1], result[2]) if result is not None else (None, None)
    if call is not None and call.exception is not None:
        error = call.exception
        return trial_record(
            **fields,
            status="error",
            score=None,
            prediction=None,
            error_type=type(error).__name__,
            error_message=str(error),
            error_stage="program",
        ).to_row()
    if result is None or (call is not None and call.outputs is not prediction):
        answered = call.outputs if call is not None else None
        return trial_record(
            **fields,
            status="error",
            score=None,
            prediction=_prediction_text(answered) if answered is not None else None,
            error_type="MetricError" if result is not None else "NotScored",
            error_message="the metric raised on this prediction (DSPy's Evaluate logged it and scored it failure_score)"
            if result is not None
            else "the evaluation stopped before this trial was scored",
            error_stage="metric" if result is not None else "program",
        ).to_row()
    return _scored_row(fields, prediction, value)


def _metric_row(
    call: _Call | None, trial: dict[str, Any], *, prediction: Any, value: Any, error: Exception | None
) -> dict[str, Any]:
    """Return the trial row of one metric call as it returned or raised (``trial``: index, example id, repeat)."""
    fields = dict(trial)
    fields.update(_timing(call))
    fields.update(_usage(call.spans if call is not None else ()))
    if error is not None:
        return trial_record(
            **fields,
            status="error",
            score=None,
            prediction=_prediction_text(prediction),
            error_type=type(error).__name__,
            error_message=str(error),
            error_stage="metric",
        ).to_row()
    return _scored_row(fields, prediction, value)


def _scored_row(fields: dict[str, Any], prediction: Any, value: Any) -> dict[str, Any]:
    try:
        score = metric_score(value)
    except Exception as error:
        return trial_record(
            **fields,
            status="error",
            score=None,
            prediction=_prediction_text(prediction),
            error_type=type(error).__name__,
            error_message=str(error),
            error_stage="metric",
        ).to_row()
    return trial_record(
        **fields,
        status="ok",
        score=score,
        prediction=_prediction_text(prediction),
        feedback=metric_feedback(value),
    ).to_row()


def _optimizer_name(dspy_name: str) -> str:
    """Return the name ``dx.optimize(optimizer=...)`` gives a DSPy optimizer, or its class name."""
    return OPTIMIZER_NAMES.get(dspy_name, dspy_name)


def _settings(optimizer: Any) -> dict[str, Any]:
    """Return an optimizer's plain settings (numbers, text, flags), as its own attributes hold them."""
    found = {}
    for name, value in sorted(vars(optimizer).items()):
        if not name.startswith("_") and (value is None or isinstance(value, (bool, int, float, str))):
            found[name] = value
    return found


def _compile_summary(run: _CompileRun, outputs: Any) -> dict[str, Any]:
    means = []
    for child in run.evaluations:
        scores = [row["score"] for row in child.recorded().values() if row.get("score") is not None]
        if scores:
            means.append(sum(scores) / len(scores))
    return {
        "evaluations": len(run.evaluations),
        "metric_calls": len(run.metric_trials.recorded()) if run.metric_trials is not None else 0,
        "best_evaluation_mean": max(means) if means else None,
        "program": type(outputs).__name__ if outputs is not None else None,
    }
