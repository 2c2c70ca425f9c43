"""What travels to a worker process, and how a stateless worker rebuilds a trial runner from it.

The process and Dask executors send each worker a :class:`WorkPlan` (once per run and
worker) and then one small task payload per trial. A plan is data: the program spec
(``dx.Program.to_dict()``, never a pickled module when the program has a spec), the
metric by reference, the LM configuration as allow-listed fields, the retry policy and
whether to trace. Secrets never travel: an LM's ``api_key`` (and headers, and anything
else not on :data:`LM_FIELDS`) stays in the driver, and the worker's LM reads its
credentials from the worker's own environment, as ``dspy.LM`` / LiteLLM do.

The metric travels by reference (``module:qualname``, imported in the worker). A plain
function defined in a notebook (no closure, not a lambda, no LM object among the globals
and defaults it uses) is sent with cloudpickle (a dependency of DSPy, and what Dask uses
anyway). Anything else (a lambda, a closure, a function that would carry an LM) is
refused before any trial starts with one :class:`~dspex_lab.errors.ExecutionError`
naming the fix.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import importlib
import inspect
import pickle
import threading
import time
import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import dspy

from dspex_lab.engine._cancel import STUCK_GRACE, CancelToken
from dspex_lab.engine._trial import RetryPolicy, TrialResult, TrialRunner, TrialTask
from dspex_lab.errors import ExecutionError

__all__ = [
    "LM_FIELDS",
    "WorkPlan",
    "cancel_run",
    "cancel_run_on_worker",
    "decode",
    "encode",
    "held_after_stop",
    "plan_for",
    "run_remote_chunk",
    "run_remote_trial",
    "run_stopped",
    "runner_for",
    "stuck_threads",
]

# The LM fields that may travel to a worker. Not here, so never sent: api_key, headers, and
# anything a provider might put a credential in.
LM_FIELDS = (
    "temperature",
    "max_tokens",
    "max_completion_tokens",
    "top_p",
    "n",
    "stop",
    "seed",
    "api_base",
    "base_url",
    "api_version",
    "rollout_id",
    "reasoning_effort",
)
_LAB_ENGINE_FIELDS = ("latency", "error_rate", "rate_limit_rate", "hang_rate", "hang_seconds", "seed")
_BUILT_IN_PACKAGES = ("dspy", "dspex_lab", "builtins")


@dataclasses.dataclass(frozen=True)
class WorkPlan:
    """Everything a worker needs to rebuild the driver's :class:`TrialRunner`, as data.

    Attributes:
        key: a digest of the rest; workers cache the rebuilt runner under it.
        program: the program spec (``dx.Program.to_dict()``), or None for a live module.
        module: a live module without a spec, pickled (None when ``program`` is given).
        state: the predictors' state (demos, instructions; never their LMs) when the module was
            changed after it was built from ``program``, else None.
        imports: modules the worker imports first (where registered custom modules live).
        metric: ``("import", "module:qualname")``, ``("pickle", bytes)`` or ``("cloudpickle", bytes)``.
        lm: the LM as allow-listed fields (see :func:`describe_lm`), or None.
        retry: the retry policy's fields.
        trace: whether the worker captures span trees.
        adapter: the DSPy adapter configured in the driver (see :func:`describe_adapter`), or None
            for DSPy's default.
        allowed: the driver's allow-lists for hydration, ``{"models": [...], "prefixes": [...]}``
            (``set_allowed_models``, ``set_allowed_prefixes``), so a program the kernel may build
            the workers may build too; the worker's own lists still apply besides.
    """

    key: str
    program: dict[str, Any] | None
    module: bytes | None
    state: dict[str, Any] | None
    imports: tuple[str, ...]
    metric: tuple[str, Any]
    lm: dict[str, Any] | None
    retry: dict[str, Any]
    trace: bool
    adapter: dict[str, Any] | None = None
    allowed: dict[str, list[str]] | None = None


def encode(value: Any) -> bytes:
    """Serialise what goes to a worker (one function, so tests can read every byte that leaves)."""
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def decode(data: bytes) -> Any:
    """Read what :func:`encode` wrote."""
    return pickle.loads(data)


def plan_for(runner: TrialRunner, *, executor: str, cloudpickle_functions: bool = False) -> WorkPlan:
    """Describe ``runner`` as a :class:`WorkPlan`, or refuse up front with one clear error.

    Args:
        runner: the driver's runner.
        executor: the executor's name, for messages (``"process"``, ``"dask"``).
        cloudpickle_functions: send a plain function or module class of a notebook with cloudpickle.

    Raises:
        ExecutionError: the metric, the LM or a live module cannot travel to a worker.
    """
    spec = getattr(runner.module, "dspex_program", None)
    module_bytes = None
    state = None
    if spec is not None:
        # A module changed after it was built (an optimizer's demos, say) travels as its spec plus its state.
        from dspex_lab.program import Program

        state = _predictor_state(runner.module)
        if _predictor_state(Program.from_dict(spec).build(lm=runner.lm)) == state:
            state = None
    else:
        module_bytes = _pickled_module(runner.module, executor=executor, cloud=cloudpickle_functions)
    imports = tuple(
        sorted(
            {
                type(part).__module__
                for _, part in [("", runner.module), *runner.module.named_sub_modules()]
                if type(part).__module__.split(".")[0] not in _BUILT_IN_PACKAGES and type(part).__module__ != "__main__"
            }
        )
    )
    body = {
        "program": spec,
        "module": module_bytes,
        "state": state,
        "imports": imports,
        "metric": metric_reference(runner.metric, executor=executor, cloudpickle_functions=cloudpickle_functions),
        "lm": describe_lm(runner.lm, executor=executor),
        "retry": dataclasses.asdict(runner.retry),
        "trace": runner.recorder is not None,
        "adapter": describe_adapter(dspy.settings.adapter, executor=executor),
        "allowed": _driver_allow_lists() if spec is not None else None,
    }
    key = hashlib.sha256(encode(body)).hexdigest()[:24]
    return WorkPlan(key=key, **body)


def metric_reference(metric: Callable[..., Any], *, executor: str, cloudpickle_functions: bool) -> tuple[str, Any]:
    """Return how ``metric`` travels: an import reference, pickled data of an importable class, or cloudpickle."""
    name = getattr(metric, "__qualname__", None) or type(metric).__name__
    module = getattr(metric, "__module__", None) or ""
    fix = (
        f"the {executor} executor runs the metric in other processes, which import it by name: define "
        f"{name!r} at the top level of a module (say my_metrics.py), import it from there, and pass that; "
        "or use executor='thread'"
    )
    if isinstance(metric, (types.FunctionType, types.BuiltinFunctionType)):
        lambda_or_local = "<lambda>" in name or "<locals>" in name
        if not lambda_or_local and module and module != "__main__" and _imported(module, name) is metric:
            return ("import", f"{module}:{name}")
        if (
            cloudpickle_functions
            and isinstance(metric, types.FunctionType)
            and not lambda_or_local
            and metric.__closure__ is None
        ):
            import cloudpickle

            carried = _lm_it_would_carry(metric)
            if carried is not None:
                raise ExecutionError(
                    f"metric {name!r} uses {carried!r}, an LM object that would be copied, credentials and all, to "
                    f"the {executor} workers: build the judge LM inside the metric (its key then comes from the "
                    "workers' environment), or use executor='thread'"
                )
            return ("cloudpickle", cloudpickle.dumps(metric))
        what = "a lambda" if "<lambda>" in name else "a closure" if "<locals>" in name else "defined in the notebook"
        raise ExecutionError(f"metric {name!r} is {what}, so it cannot be sent by reference: {fix}")
    cls = type(metric)
    if cls.__module__ != "__main__" and "<locals>" not in cls.__qualname__:
        try:
            return ("pickle", pickle.dumps(metric, protocol=pickle.HIGHEST_PROTOCOL))
        except Exception as error:
            raise ExecutionError(f"metric {metric!r:.80} cannot be pickled ({error}): {fix}") from None
    raise ExecutionError(f"metric {metric!r:.80} is an instance of a class defined in the notebook: {fix}")


def _lm_it_would_carry(function: types.FunctionType) -> str | None:
    """Return the name of a global or default value holding an LM (or an ``api_key``) that cloudpickle would copy."""
    names: set[str] = set()
    codes = [function.__code__]
    while codes:
        code = codes.pop()
        names.update(code.co_names)
        codes.extend(constant for constant in code.co_consts if isinstance(constant, types.CodeType))
    candidates = [(name, function.__globals__.get(name)) for name in sorted(names)]
    candidates += [(f"default {index}", value) for index, value in enumerate(function.__defaults__ or ())]
    candidates += list((function.__kwdefaults__ or {}).items())
    for name, value in candidates:
        if isinstance(value, dspy.BaseLM) or (
            not isinstance(value, (type, types.ModuleType)) and getattr(value, "api_key", None)
        ):
            return name
    return None


def _imported(module: str, qualname: str) -> Any:
    try:
        found: Any = importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError):
        return None
    return found


def resolve_metric(reference: tuple[str, Any]) -> Callable[..., Any]:
    """Return the metric a :func:`metric_reference` names (in the worker)."""
    kind, value = reference
    if kind == "import":
        module, _, qualname = value.partition(":")
        found = _imported(module, qualname)
        if found is None:
            raise ExecutionError(f"the worker cannot import the metric {value!r}: is its module on the worker's path?")
        return found  # type: ignore[no-any-return]
    if kind == "cloudpickle":
        import cloudpickle

        return cloudpickle.loads(value)  # type: ignore[no-any-return]
    return pickle.loads(value)  # type: ignore[no-any-return]


def describe_lm(lm: Any, *, executor: str) -> dict[str, Any] | None:
    """Return ``lm`` as allow-listed data: model, class, lab engine settings, request fields; never secrets.

    Raises:
        ExecutionError: the LM is neither a ``dspy.LM`` nor the lab LM, so it cannot be described, or its
            endpoint URL carries credentials (``dx.Context`` refuses such an LM first; this keeps them out
            of a plan built any other way).
    """
    if lm is None:
        return None
    from dspex_lab.lm import LabLM
    from dspex_lab.providers import credentials_in_url

    problem = credentials_in_url(lm)
    if problem is not None:
        raise ExecutionError(f"{problem}; the {executor} executor would also send them to its workers")

    model = getattr(lm, "model", None)
    kwargs = dict(getattr(lm, "kwargs", {}) or {})
    fields = {key: kwargs[key] for key in LM_FIELDS if kwargs.get(key) is not None}
    description: dict[str, Any] = {"model": model, "fields": fields, "cache": bool(getattr(lm, "cache", False))}
    if isinstance(lm, LabLM):
        state = lm.dump_state().get("engine", {})
        engine = state.get("state", {}) if isinstance(state, dict) else {}
        if not str(state.get("class", "")).endswith(":LabEngine"):
            raise ExecutionError(
                f"the run's lab LM uses a custom engine ({state.get('class')!r}), which cannot be rebuilt in a "
                f"worker; the {executor} executor needs dx.lab_lm(...) or a dspy.LM, or use executor='thread'"
            )
        description["kind"] = "lab"
        description["engine"] = {key: engine[key] for key in _LAB_ENGINE_FIELDS if key in engine}
        if engine.get("rollout_id") is not None:
            description["fields"]["rollout_id"] = engine["rollout_id"]
        return description
    if type(lm) is dspy.LM:
        description["kind"] = "dspy"
        description["model_type"] = getattr(lm, "model_type", "chat")
        return description
    raise ExecutionError(
        f"the run's LM ({type(lm).__name__}) cannot travel to {executor} workers as data: they rebuild a "
        "dspy.LM or a lab LM from its model name and settings; use one of those, or executor='thread'"
    )


# DSPy's adapters that travel to workers (rebuilt there by class name, with their flags).
ADAPTERS = ("ChatAdapter", "JSONAdapter", "XMLAdapter")
_ADAPTER_FLAGS = ("use_native_function_calling", "use_json_adapter_fallback", "parallel_tool_calls")


def describe_adapter(adapter: Any, *, executor: str) -> dict[str, Any] | None:
    """Return the adapter configured with ``dspy.configure``/``dspy.context`` as data, or None for DSPy's default.

    Workers run the program with the same adapter as threads would: one of DSPy's
    :data:`ADAPTERS`, rebuilt by name with the flags that differ from its defaults.

    Raises:
        ExecutionError: the adapter is another class, or carries callbacks or response types
            that cannot be rebuilt in a worker.
    """
    from dspex_lab.engine._adapter import CachingChatAdapter

    if adapter is None or type(adapter) is CachingChatAdapter:
        return None
    cls = type(adapter)
    fix = f"configure one of dspy.{', dspy.'.join(ADAPTERS)} with plain settings, or use executor='thread'"
    if cls.__name__ not in ADAPTERS or getattr(dspy, cls.__name__, None) is not cls:
        raise ExecutionError(f"the configured adapter {cls.__name__} cannot be rebuilt in {executor} workers: {fix}")
    if getattr(adapter, "callbacks", None):
        raise ExecutionError(
            f"the configured {cls.__name__} has callbacks, which cannot travel to {executor} workers: {fix}"
        )
    fresh = cls()
    if getattr(adapter, "native_response_types", None) != getattr(fresh, "native_response_types", None):
        raise ExecutionError(
            f"the configured {cls.__name__} has custom native_response_types, which cannot travel to {executor} "
            f"workers: {fix}"
        )
    accepted = inspect.signature(cls.__init__).parameters
    flags = {}
    for name in _ADAPTER_FLAGS:
        value = getattr(adapter, name, None)
        if value == getattr(fresh, name, None):
            continue
        if name not in accepted or not (value is None or isinstance(value, bool)):
            raise ExecutionError(
                f"the configured {cls.__name__} has {name}={value!r}, which cannot be rebuilt in {executor} workers: "
                f"{fix}"
            )
        flags[name] = value
    return {"class": cls.__name__, "flags": flags}


def build_adapter(description: dict[str, Any] | None) -> Any:
    """Rebuild an adapter from :func:`describe_adapter` data (None: DSPy's default)."""
    if description is None:
        return None
    name = description["class"]
    if name not in ADAPTERS:
        raise ExecutionError(f"a work plan names adapter {name!r}, which is not one of DSPy's {', '.join(ADAPTERS)}")
    return getattr(dspy, name)(**description["flags"])


def build_lm(description: dict[str, Any] | None) -> dspy.BaseLM | None:
    """Rebuild an LM from :func:`describe_lm` data; credentials come from this process's environment."""
    if description is None:
        return None
    fields = dict(description["fields"])
    rollout_id = fields.pop("rollout_id", None)
    if description["kind"] == "lab":
        from dspex_lab.lm import lab_lm

        lm: Any = lab_lm(description["model"], cache=description["cache"], **description["engine"])
        extra = {key: value for key, value in fields.items() if value is not None}
        if rollout_id is not None:
            extra["rollout_id"] = rollout_id
        return lm.copy(**extra) if extra else lm  # type: ignore[no-any-return]
    if rollout_id is not None:
        fields["rollout_id"] = rollout_id
    return dspy.LM(
        description["model"],
        model_type=description["model_type"],
        cache=description["cache"],
        num_retries=0,
        **fields,
    )


def _predictor_state(module: dspy.Module) -> dict[str, Any]:
    return {
        name: {key: value for key, value in predictor.dump_state().items() if key != "lm"}
        for name, predictor in module.named_predictors()
    }


def _pickled_module(module: dspy.Module, *, executor: str, cloud: bool) -> bytes:
    for name, predictor in module.named_predictors():
        if getattr(predictor, "lm", None) is not None:
            raise ExecutionError(
                f"predictor {name!r} of this live module has its own LM, which would carry its credentials to "
                f"{executor} workers; pass a dx.Program (its spec travels, the LM is rebuilt in the worker) "
                "or use executor='thread'"
            )
    if type(module).__module__ == "__main__" and not cloud:
        raise ExecutionError(
            f"module {type(module).__name__} is defined in the notebook, so {executor} workers cannot import it: "
            "define it in a module, or pass a dx.Program, or use executor='thread'"
        )
    if type(module).__module__ == "__main__":
        # Its class (and any notebook base class) travels by value, with the globals its methods use.
        notebook_classes = [cls for cls in type(module).__mro__ if cls.__module__ == "__main__"]
        for method in (value for cls in notebook_classes for value in vars(cls).values()):
            carried = _lm_it_would_carry(method) if isinstance(method, types.FunctionType) else None
            if carried is not None:
                raise ExecutionError(
                    f"module {type(module).__name__} is defined in the notebook and its {method.__name__} uses "
                    f"{carried!r}, an LM object that would be copied, credentials and all, to the {executor} workers: "
                    "pass a dx.Program, or use executor='thread'"
                )
    try:
        if cloud:
            import cloudpickle

            return cloudpickle.dumps(module)  # type: ignore[no-any-return]
        return pickle.dumps(module, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as error:
        raise ExecutionError(
            f"the live module {type(module).__name__} cannot be sent to {executor} workers ({error}); "
            "pass a dx.Program or use executor='thread'"
        ) from None


class SpanStash:
    """A span sink for a worker: keeps each trial's spans (as journal rows) until its result is sent."""

    def __init__(self) -> None:
        self._spans: dict[str, list[dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def __call__(self, trial_id: str, spans: Sequence[Any]) -> None:
        """Keep ``spans`` of ``trial_id`` (thread-safe)."""
        rows = [item.to_row() for item in spans]
        with self._lock:
            self._spans.setdefault(trial_id, []).extend(rows)

    def take(self, trial_id: str) -> list[dict[str, Any]]:
        """Return and forget the spans kept for ``trial_id``."""
        with self._lock:
            return self._spans.pop(trial_id, [])


_runners: dict[str, tuple[TrialRunner, SpanStash]] = {}
_runners_lock = threading.Lock()


def runner_for(plan: WorkPlan) -> tuple[TrialRunner, SpanStash]:
    """Return this worker's runner for ``plan`` (built once per worker and plan) and its span stash."""
    with _runners_lock:
        cached = _runners.get(plan.key)
        if cached is not None:
            return cached
        for name in plan.imports:
            importlib.import_module(name)
        lm = build_lm(plan.lm)
        if plan.program is not None:
            from dspex_lab.program import Program

            with _allowing(plan.allowed):
                module = Program.from_dict(plan.program).build(lm=lm)
            for name, predictor in module.named_predictors():
                if plan.state is not None and name in plan.state:
                    own_lm = predictor.lm
                    predictor.load_state({**plan.state[name], "lm": None})
                    predictor.lm = own_lm
        else:
            if plan.metric[0] == "cloudpickle":
                import cloudpickle

                module = cloudpickle.loads(plan.module)
            else:
                module = pickle.loads(plan.module)  # type: ignore[arg-type]
        recorder = None
        if plan.trace:
            from dspex_lab.trace import SpanRecorder

            recorder = SpanRecorder()
        stash = SpanStash()
        runner = TrialRunner(
            module,
            resolve_metric(plan.metric),
            lm=lm,
            retry=RetryPolicy(**plan.retry),
            recorder=recorder,
            span_sink=stash,
            adapter=build_adapter(plan.adapter),
        )
        if len(_runners) > 16:
            _runners.clear()
        _runners[plan.key] = (runner, stash)
        return runner, stash


def _driver_allow_lists() -> dict[str, list[str]]:
    from dspex_lab.program import allowed_models, allowed_prefixes

    return {"models": sorted(allowed_models()), "prefixes": list(allowed_prefixes())}


@contextlib.contextmanager
def _allowing(allowed: dict[str, list[str]] | None) -> Iterator[None]:
    """Add the driver's allow-lists to this worker's while a program is built (callers hold ``_runners_lock``)."""
    if not allowed:
        yield
        return
    from dspex_lab.program import allowing_models, allowing_prefixes

    with allowing_models(allowed["models"]), allowing_prefixes(allowed["prefixes"]):
        yield


def task_payload(task: TrialTask) -> tuple[int, str, int, dict[str, Any], tuple[str, ...]]:
    """Return ``task`` as plain data: index, example id, repeat, the example's fields and its input keys."""
    example = task.example
    return (task.index, task.example_id, task.repeat, dict(example.toDict()), tuple(example.inputs().keys()))


def task_from(payload: tuple[int, str, int, dict[str, Any], tuple[str, ...]]) -> TrialTask:
    """Rebuild a :class:`TrialTask` from :func:`task_payload` data."""
    index, example_id, repeat, fields, inputs = payload
    example = dspy.Example(**fields).with_inputs(*inputs)
    return TrialTask(index=index, example_id=example_id, example=example, repeat=repeat)


# Dask workers: the tokens of trials running now, by run, and the runs the driver stopped.
_running: dict[str, set[CancelToken]] = {}
_stopped_runs: dict[str, str] = {}
_running_lock = threading.Lock()
# Threads of trials given up at their deadline that were still running STUCK_GRACE seconds later.
_stuck: set[threading.Thread] = set()
_stopped_at: dict[str, float] = {}  # run -> when cancel_run stopped it (time.monotonic)


def stuck_threads() -> int:
    """Return how many trial threads of this process are stuck.

    Stuck: given up at their deadline, or still running :data:`STUCK_GRACE` seconds after their
    run was stopped (a trial without a timeout).
    """
    with _running_lock:
        _stuck.difference_update([thread for thread in _stuck if not thread.is_alive()])
        given_up = len(_stuck)
    return given_up + held_after_stop()


def held_after_stop() -> int:
    """Return how many trials of stopped runs still run here :data:`STUCK_GRACE` seconds after the stop.

    A trial without a timeout that hangs ignores its run's cancel and holds its thread (a Dask
    worker's) until the process ends.
    """
    now = time.monotonic()
    with _running_lock:
        return sum(len(tokens) for run, tokens in _running.items() if now - _stopped_at.get(run, now) > STUCK_GRACE)


def run_stopped(run_key: str) -> bool:
    """Return whether the driver stopped ``run_key`` (see :func:`cancel_run`)."""
    with _running_lock:
        return run_key in _stopped_runs


def cancel_run(run_key: str, reason: str) -> None:
    """Cancel every trial of ``run_key`` running in this worker, and the ones that start later (Dask)."""
    with _running_lock:
        _stopped_runs[run_key] = reason
        _stopped_at[run_key] = time.monotonic()
        while len(_stopped_runs) > 256:
            stopped = next(iter(_stopped_runs))
            del _stopped_runs[stopped]
            _stopped_at.pop(stopped, None)
        tokens = list(_running.get(run_key, ()))
    for token in tokens:
        token.cancel(reason)


async def cancel_run_on_worker(run_key: str, reason: str) -> None:
    """:func:`cancel_run` as a coroutine, which Dask's ``client.run(..., wait=False)`` requires."""
    cancel_run(run_key, reason)


def run_remote_trial(
    plan_bytes: bytes, payload: bytes, timeout: float | None, run_key: str | None = None
) -> tuple[str, TrialResult | str, list[dict[str, Any]]]:
    """Run one trial in a worker (the Dask task); return ``("ok", result, span rows)`` or ``("setup", error, [])``.

    A worker that cannot rebuild the runner (a metric it cannot import, say) answers
    ``"setup"`` with the error's text: that is the environment's failure, not the trial's.
    A trial of a run stopped with :func:`cancel_run` makes no LM call and is recorded as cancelled.
    """
    try:
        runner, stash = runner_for(decode(plan_bytes))
    except Exception as error:
        return ("setup", f"{type(error).__name__}: {error}", [])
    return ("ok", *_run_task(runner, stash, payload, timeout, run_key))


def _run_task(
    runner: TrialRunner, stash: SpanStash, payload: bytes, timeout: float | None, run_key: str | None
) -> tuple[TrialResult, list[dict[str, Any]]]:
    """Run one encoded trial with a rebuilt runner; return its record and its span rows."""
    task = task_from(decode(payload))
    token = CancelToken(timeout)
    if run_key is not None:
        with _running_lock:
            reason = _stopped_runs.get(run_key)
            if reason is None:
                _running.setdefault(run_key, set()).add(token)
        if reason is not None:
            token.cancel(reason)
    try:
        result = runner(task, token=token) if timeout is None else _run_until_deadline(runner, task, token)
    finally:
        if run_key is not None:
            with _running_lock:
                tokens = _running.get(run_key)
                if tokens is not None:
                    tokens.discard(token)
                    if not tokens:
                        del _running[run_key]
    return result, stash.take(task.trial_id)


def _run_until_deadline(runner: TrialRunner, task: TrialTask, token: CancelToken) -> TrialResult:
    """Run a trial on a thread of its own and give it up at its deadline.

    The caller's thread (a Dask worker's) is back at the deadline even when the trial is stuck
    in code that cannot be cancelled (a metric that never returns); such a thread, still
    running :data:`STUCK_GRACE` seconds later, is counted by :func:`stuck_threads`, so the
    driver can have the worker replaced.
    """
    outcome: list[TrialResult] = []
    started = time.time()

    def run_trial() -> None:
        try:
            outcome.append(runner(task, token=token))
        except BaseException as error:  # the runner records errors; this is a last resort
            outcome.append(
                TrialRunner.failure(task, error, stage="runner", started=started, clock=time.perf_counter(), attempt=1)
            )

    thread = threading.Thread(target=contextvars.copy_context().run, args=(run_trial,), name="dspex-trial", daemon=True)
    thread.start()
    thread.join(token.remaining())
    if not thread.is_alive():
        return outcome[0]
    result = runner.abandon(task, token, started=started, reason=f"timeout after {token.timeout:g} s")
    thread.join(STUCK_GRACE)
    if thread.is_alive():
        with _running_lock:
            _stuck.add(thread)
    return result


def run_remote_chunk(
    plan_bytes: bytes, payloads: Sequence[tuple[int, bytes]], timeout: float | None, run_key: str | None = None
) -> tuple[str, list[tuple[int, TrialResult, list[dict[str, Any]]]] | str]:
    """Run a chunk of trials one after another in a worker (one Dask task for several trials).

    One Dask task costs the scheduler, the worker and the driver a few milliseconds of CPU
    whatever it runs, about a trial's own cost on the lab LM; a chunk pays that once for all
    its trials. The trials run in order on the task's thread, each with its own cancel token,
    so a run stopped with :func:`cancel_run` stops the running one and makes the rest
    cancelled records without an LM call.

    Args:
        plan_bytes: the encoded :class:`WorkPlan`.
        payloads: ``(submission, encoded task payload)`` pairs; the submission numbers key the results.
        timeout: each trial's timeout in seconds, or None.
        run_key: the run, for :func:`cancel_run`.

    Returns:
        ``("ok", [(submission, result, span rows), ...])`` in the order given, or
        ``("setup", error text)`` when this worker cannot rebuild the runner.
    """
    try:
        runner, stash = runner_for(decode(plan_bytes))  # once per chunk, not once per trial
    except Exception as error:
        return ("setup", f"{type(error).__name__}: {error}")
    results = [(submission, *_run_task(runner, stash, payload, timeout, run_key)) for submission, payload in payloads]
    return ("ok", results)


def spans_from(rows: Sequence[dict[str, Any]]) -> tuple[Any, ...]:
    """Rebuild spans sent by a worker (journal rows) for the driver's span sink."""
    if not rows:
        return ()
    from dspex_lab.trace.spans import Span

    return tuple(Span.from_row(row) for row in rows)
