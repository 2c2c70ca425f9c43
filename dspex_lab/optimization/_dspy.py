"""DSPy's own optimizers (SIMBA, MIPROv2, GEPA, BootstrapFewShot) run through dspex_lab's engine and journal.

``dx.optimize(..., optimizer="simba")`` (or ``"mipro"``, ``"gepa"``, ``"bootstrap"``)
runs DSPy's optimizer unchanged and records it the way SIMBA-C is recorded, so the two
can be compared side by side:

1. **Baseline.** The program is lifted (instruction and demo variables per predictor),
   recorded as candidate ``c0`` and evaluated on the validation set through the
   engine: step 0.
2. **Compile.** DSPy's ``compile`` runs on the hydrated module with the run's LM, the
   metric and the seed, on the *trainset only*. MIPROv2 and GEPA want a validation set
   of their own to select on; they get a seeded split of the trainset
   (``validation_fraction``), never the valset the result is judged on. Every LM call of
   the compile is metered into the run's spending, and the run's :class:`~dspex_lab.Budget`
   stops it: the LM the compile uses refuses further calls once the budget is spent, and
   the run ends ``stopped``.
3. **Compile trials.** Every metric call DSPy makes is journaled as a trial (example,
   score, prediction) in an evaluation experiment per *configuration* that produced the
   prediction: the instructions and demos of the top-level module DSPy called, read when
   the call started through DSPy's public callback API (``on_module_start``), so no DSPy
   internals are touched. Experiments are named ``<run>/compile/e1``, ``e2``, ... in the
   order configurations first appear (``compile2/...`` for a resumed run's re-run compile);
   a configuration that is a DSPy candidate (SIMBA's programs, MIPROv2's trials, GEPA's
   proposals, BootstrapFewShot's teacher with one example held out) gets its own
   experiment. A compile trial carries the LM calls, tokens and cost of its own program run
   and metric (the calls on its thread since its top-level call began); the compile's other
   calls (DSPy's proposals, reflections, data summaries) are counted for the run as a whole,
   in the step rows and the compile span.
4. **Candidates.** DSPy's final program becomes a :class:`~dspex_lab.Program` candidate
   (instructions and demos read from the compiled predictors into the lifted variables;
   demos as plain dicts of their fields), and so do up to ``validate_top`` of the
   intermediate programs DSPy exposes (``candidate_programs`` of SIMBA and MIPROv2,
   ``detailed_results.candidates`` of GEPA), best by DSPy's own score first. Each is
   recorded (strategy ``dspy``), evaluated on the validation set, and tested against the
   baseline with the paired test SIMBA-C uses and the same convention: the one-sided p of
   "the candidate is better", Holm-corrected over the evaluated ones.
   There is one step per evaluated candidate, DSPy's final choice last. A step's screening
   entry holds DSPy's own score of the candidate and of the unchanged program (on DSPy's
   data, where it reports them), so the convergence plot shows the score DSPy selected on
   next to the held-out validation score.
5. **The best** is DSPy's own final choice, reported even when it is not significantly
   better (or is worse) than the baseline, because that is what the optimizer returns; it
   is *accepted* only when its corrected paired test is significant with a positive
   difference, as in SIMBA-C. Intermediate candidates are measured, never chosen. Either way
   the run's headline is the held-out confirmation ``dx.optimize`` runs after the search.

Resuming (``resume=``) reuses every finished validation evaluation; DSPy keeps no state
between calls, so the compile itself runs again.

Defaults: SIMBA's are DSPy's own (read from the installed ``dspy.SIMBA`` signature; 3.4.1:
``bsize=32, num_candidates=6, max_steps=8, max_demos=4``); the others are lighter than DSPy's to
keep a lab run to minutes. The settings a run used are recorded (``result.settings``).

=============  ==========================================================================
optimizer      defaults (DSPy's own argument names)
=============  ==========================================================================
``simba``      DSPy's (above), ``num_threads=4``
``mipro``      ``auto="light", max_bootstrapped_demos=2, max_labeled_demos=2, num_threads=4``
``gepa``       ``auto="light", reflection_minibatch_size=3, use_merge=False, num_threads=4``
``bootstrap``  ``max_bootstrapped_demos=4, max_labeled_demos=4, max_rounds=1``
all            ``validate_top=2, alpha=0.05, test="auto"``; mipro and gepa also
               ``validation_fraction=0.3``; mipro's ``minibatch_size`` is at most its split
=============  ==========================================================================
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import inspect
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import dspy
import numpy as np
from dspy.utils import BaseCallback

from dspex_lab._dspy_compat import gated_lm_copy, quiet_parallel_progress
from dspex_lab.engine import metric_feedback, metric_score, to_json_value, trial_record
from dspex_lab.errors import MissingDependencyError, OptimizerError, VariableError
from dspex_lab.optimization._acceptance import finite, judge
from dspex_lab.optimization._decisions import DecisionTrace
from dspex_lab.optimization._evaluator import Scores
from dspex_lab.optimization._objective import baseline_detail, describe_checks
from dspex_lab.optimization._session import RunSession, StepRecord
from dspex_lab.optimization._space import Candidate, Slots, lift
from dspex_lab.optimization._spending import BudgetSpent, Spending
from dspex_lab.program import Program
from dspex_lab.providers import Meter, Usage, metering
from dspex_lab.session import Experiment
from dspex_lab.trace.spans import now_ns

__all__ = ["DSPY_NAMES", "DspyOptimizer"]

#: DSPy's optimizers by the name ``optimizer=`` takes.
DSPY_NAMES = {"simba": "SIMBA", "mipro": "MIPROv2", "gepa": "GEPA", "bootstrap": "BootstrapFewShot"}

_COMMON = {"validate_top": 2, "alpha": 0.05, "test": "auto"}
# SIMBA's search settings as DSPy 3.4.1 sets them, used when the installed DSPy's signature does not say.
_SIMBA_SEARCH = {"bsize": 32, "num_candidates": 6, "max_steps": 8, "max_demos": 4}


def _simba_defaults() -> dict[str, Any]:
    """Return DSPy SIMBA's own defaults for its search settings, read from the installed DSPy's signature."""
    try:
        parameters = inspect.signature(dspy.SIMBA.__init__).parameters
    except (TypeError, ValueError):  # pragma: no cover - a DSPy whose SIMBA has no readable signature
        return dict(_SIMBA_SEARCH)
    found = {}
    for name, fallback in _SIMBA_SEARCH.items():
        parameter = parameters.get(name)
        default = parameter.default if parameter is not None else inspect.Parameter.empty
        found[name] = default if isinstance(default, int) and not isinstance(default, bool) else fallback
    return found


_DEFAULTS: dict[str, dict[str, Any]] = {
    # DSPy's own search settings; num_threads only sets how many trials run at once.
    "simba": {**_simba_defaults(), "num_threads": 4},
    "mipro": {
        "auto": "light",
        "max_bootstrapped_demos": 2,
        "max_labeled_demos": 2,
        "num_threads": 4,
        "validation_fraction": 0.3,
    },
    "gepa": {
        "auto": "light",
        "reflection_minibatch_size": 3,
        "use_merge": False,
        "num_threads": 4,
        "validation_fraction": 0.3,
    },
    "bootstrap": {"max_bootstrapped_demos": 4, "max_labeled_demos": 4, "max_rounds": 1},
}
# Further DSPy arguments a caller may set, beyond the defaults above.
_EXTRA: dict[str, tuple[str, ...]] = {
    "simba": ("temperature_for_sampling", "temperature_for_candidates"),
    "mipro": ("num_candidates", "num_trials", "minibatch", "minibatch_size", "init_temperature", "max_errors"),
    "gepa": ("max_metric_calls", "max_full_evals", "candidate_selection_strategy", "max_merge_invocations"),
    "bootstrap": ("metric_threshold", "max_errors"),
}
_GEPA_BUDGETS = ("auto", "max_metric_calls", "max_full_evals")
# Arguments of DSPy's compile() rather than its constructor.
_COMPILE_ARGUMENTS = {"mipro": ("num_trials", "minibatch", "minibatch_size")}
_OURS = ("validate_top", "alpha", "test", "validation_fraction")


class DspyOptimizer:
    """One of DSPy's optimizers, run by :func:`dx.optimize <dspex_lab.optimization>` with every trial journaled.

    See the module docstring for what is recorded and how the best program is chosen.

    Args:
        name: ``"simba"``, ``"mipro"``, ``"gepa"`` or ``"bootstrap"``.
        **options: DSPy's own arguments of that optimizer (e.g. ``max_steps=4, bsize=16`` for
            SIMBA, ``auto="medium"`` for MIPROv2), plus ``validate_top`` (intermediate DSPy
            candidates evaluated on the validation set besides the final one), ``alpha`` and
            ``test`` (the paired test) and, for MIPROv2 and GEPA, ``validation_fraction`` (the
            part of the trainset they get as their own validation set).

    Attributes:
        name: the name given.
        options: every option, defaults included (what :meth:`config` records).
        last_compiled: the module DSPy's compile returned in the latest run, for inspection (None
            before a run, or when the compile raised).

    Raises:
        OptimizerError: an unknown name, or an option that optimizer does not take.

    Example:
        >>> DspyOptimizer("simba", max_steps=2).config()["max_steps"]
        2
    """

    def __init__(self, name: str, **options: Any) -> None:
        if not isinstance(name, str) or name not in DSPY_NAMES:
            raise OptimizerError(f"unknown DSPy optimizer {name!r}; choose one of {', '.join(DSPY_NAMES)}")
        allowed = {*_DEFAULTS[name], *_EXTRA[name], *_COMMON}
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise OptimizerError(
                f"DspyOptimizer({name!r}) does not take {', '.join(unknown)}; it takes {', '.join(sorted(allowed))}"
            )
        values = {**_COMMON, **_DEFAULTS[name]}
        if name == "gepa" and any(key in options for key in _GEPA_BUDGETS):
            values.pop("auto")  # GEPA takes exactly one of auto, max_metric_calls, max_full_evals
        if name == "mipro" and "auto" not in options and ("num_trials" in options or "num_candidates" in options):
            values["auto"] = None  # MIPROv2 sizes its search either by auto or by these two
        values.update(options)
        self.name = name
        self.options = values
        self.last_compiled: dspy.Module | None = None
        self._check()

    def _check(self) -> None:
        options = self.options
        top = options["validate_top"]
        if isinstance(top, bool) or not isinstance(top, int) or top < 0:
            raise OptimizerError(f"DspyOptimizer(validate_top={top!r}): must be an integer >= 0")
        alpha = options["alpha"]
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
            raise OptimizerError(f"DspyOptimizer(alpha={alpha!r}): must be between 0 and 1")
        if options["test"] not in ("auto", "t", "wilcoxon", "mcnemar"):
            raise OptimizerError(f"DspyOptimizer(test={options['test']!r}): one of 'auto', 't', 'wilcoxon', 'mcnemar'")
        fraction = options.get("validation_fraction")
        if fraction is not None and (
            isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1
        ):
            raise OptimizerError(f"DspyOptimizer(validation_fraction={fraction!r}): must be between 0 and 1")
        if (
            self.name == "mipro"
            and options["auto"] is None
            and (options.get("num_trials") is None or options.get("num_candidates") is None)
        ):
            raise OptimizerError(
                "DspyOptimizer('mipro', auto=None) needs num_candidates and num_trials (or auto='light', 'medium', "
                "'heavy')"
            )
        if (
            self.name == "mipro"
            and options["auto"] is not None
            and (options.get("num_trials") is not None or options.get("num_candidates") is not None)
        ):
            raise OptimizerError(
                f"DspyOptimizer('mipro', auto={options['auto']!r}) sets num_candidates and num_trials itself; "
                "pass auto=None to set them"
            )
        if self.name == "gepa" and sum(key in options for key in _GEPA_BUDGETS) != 1:
            raise OptimizerError("DspyOptimizer('gepa') takes exactly one of auto, max_metric_calls, max_full_evals")

    @property
    def bsize(self) -> int | None:
        """SIMBA's mini-batch size (``dx.optimize`` checks the trainset holds one); None for the others."""
        return self.options["bsize"] if self.name == "simba" else None

    def config(self) -> dict[str, Any]:
        """Return the optimizer and its options as JSON (recorded with the run, checked on resume)."""
        return {"optimizer": self.name, "dspy": DSPY_NAMES[self.name], **dict(sorted(self.options.items()))}

    def __repr__(self) -> str:
        options = ", ".join(f"{key}={value!r}" for key, value in sorted(self.options.items()))
        return f"DspyOptimizer({self.name!r}, {options})"

    # -- the run ---------------------------------------------------------------------------------

    def _max_demos(self) -> int:
        options = self.options
        if self.name == "simba":
            return int(options["max_demos"])
        if self.name == "gepa":
            return 8
        return max(1, int(options["max_bootstrapped_demos"]) + int(options["max_labeled_demos"]))

    def run_dspy(self, session: RunSession) -> tuple[str, str]:
        """Run the optimizer for ``dx.optimize`` and return the run's status and why it ended.

        Args:
            session: the run's journal side (records, steps, spans), its setup (program, metric,
                seed: SIMBA's and MIPROv2's compile seed, GEPA's seed; BootstrapFewShot samples with
                DSPy's fixed seed; LM) and its evaluator.

        Raises:
            MissingDependencyError: MIPROv2 without optuna (the ``optimize`` extra).
            OptimizerError: the budget cannot cover the baseline, the baseline scores on no
                example, or DSPy's compile failed (the message names the optimizer).
        """
        if self.name == "mipro" and importlib.util.find_spec("optuna") is None:
            raise MissingDependencyError("optuna", "optimize")
        budget = session.evaluator.spending.budget
        validation = len(session.val_examples)
        if budget is not None and budget.lm_calls is not None and budget.lm_calls < validation:
            raise OptimizerError(
                f"Budget(lm_calls={budget.lm_calls}) is too small for the baseline alone ({validation} "
                "validation examples, at least one LM call each); raise the budget"
            )
        lifted, slots = lift(session.setup.program, lm=session.setup.lm, max_demos=self._max_demos())
        run = _DspyRun(self, session, lifted, slots)
        return run.run()


def _demo_dict(demo: Any) -> dict[str, Any]:
    data = demo.toDict() if hasattr(demo, "toDict") else dict(demo)
    return {
        str(key): to_json_value(value)
        for key, value in data.items()
        if key != "augmented" and not str(key).startswith("dspy_")
    }


def read_configuration(module: dspy.Module) -> dict[str, tuple[str, list[dict[str, Any]]]]:
    """Return each predictor's instructions and demos (plain dicts of their fields) in ``module``."""
    return {
        name: (str(predictor.signature.instructions), [_demo_dict(demo) for demo in predictor.demos])
        for name, predictor in module.named_predictors()
    }


def _key(configuration: Mapping[str, tuple[str, list[dict[str, Any]]]]) -> str:
    return json.dumps(configuration, sort_keys=True, ensure_ascii=False, default=repr)


class _ThreadMeter(Meter):
    """A meter that also keeps, per thread, the calls since that thread's last top-level module call began.

    DSPy runs a program and then its metric on one thread (``dspy.Parallel``'s workers included), so
    the calls in that window are the trial's own.
    """

    def __init__(self) -> None:
        super().__init__()
        self._window = threading.local()

    def _add(self, call: Any) -> None:
        super()._add(call)
        calls = getattr(self._window, "calls", None)
        if calls is not None:
            calls.append(call)

    def open_window(self) -> None:
        """Start counting this thread's calls afresh (a top-level module call begins)."""
        self._window.calls = []

    def window(self) -> Usage:
        """Return the usage of this thread's calls since :meth:`open_window`."""
        calls = [call.freeze() for call in getattr(self._window, "calls", None) or ()]
        unpriced = sorted({call.model for call in calls if call.cost is None})
        return Usage(
            input_tokens=sum(call.input_tokens or 0 for call in calls),
            output_tokens=sum(call.output_tokens or 0 for call in calls),
            lm_calls=len(calls),
            cost=None if unpriced else math.fsum(call.cost or 0.0 for call in calls),
            unpriced_models=tuple(unpriced),
        )


class _TopModules(BaseCallback):
    """Remembers, per thread, the configuration of the last top-level module call (DSPy's public callbacks)."""

    def __init__(self, meter: _ThreadMeter) -> None:
        self._local = threading.local()
        self._meter = meter

    def on_module_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        depth = getattr(self._local, "depth", 0)
        self._local.depth = depth + 1
        if depth == 0 and isinstance(instance, dspy.Module):
            self._meter.open_window()
            self._local.clock = time.perf_counter()
            self._local.started_at = time.time()
            # Read at the start: BootstrapFewShot restores the teacher's demos before calling the metric.
            try:
                self._local.started = read_configuration(instance)
            except Exception:
                self._local.started = None

    def on_module_end(self, call_id: str, outputs: Any | None, exception: Exception | None = None) -> None:
        depth = max(0, getattr(self._local, "depth", 1) - 1)
        self._local.depth = depth
        if depth == 0:
            self._local.last = getattr(self._local, "started", None)

    def last(self) -> dict[str, tuple[str, list[dict[str, Any]]]] | None:
        """The configuration of the last finished top-level call on this thread."""
        return getattr(self._local, "last", None)

    def began(self) -> tuple[float, float] | None:
        """When the last top-level call on this thread began: (epoch seconds, perf_counter)."""
        started_at = getattr(self._local, "started_at", None)
        return None if started_at is None else (started_at, self._local.clock)


class _BudgetExhaustedError(RuntimeError):
    """Raised by the compile's LM in place of a call the run's budget no longer allows."""


class _CompileGate:
    """Lets the compile's LM calls through while the run's budget has room for them.

    The compile's calls are counted in the run's :class:`Spending` when the compile ends; until
    then every call let through is pending, and the gate asks the spending whether the budget
    is spent with them (``Spending.exhausted(pending)``). A response-cache hit passes the gate
    too, so the pending calls may exceed the billed ones: it stops early, never late. Once the
    budget is spent the gate stays shut.
    """

    def __init__(self, spending: Spending, meter: Meter) -> None:
        self.spending = spending
        self.meter = meter
        self.calls = 0
        self.spent: str | None = None
        self._lock = threading.Lock()
        budget = spending.budget
        # The meter's tokens and dollars are read only for a budget that limits them (reading costs a pass).
        self._metered = budget is not None and (budget.tokens is not None or budget.usd is not None)

    def before_call(self) -> None:
        with self._lock:
            if self.spent is None and self.spending.budget is not None:
                pending = Usage(lm_calls=self.calls)
                if self._metered:
                    usage = self.meter.usage()
                    pending = Usage(usage.input_tokens, usage.output_tokens, self.calls, usage.cost or 0.0)
                self.spent = self.spending.exhausted(pending)
            if self.spent is not None:
                raise _BudgetExhaustedError(f"the optimization's {self.spent}: no further LM calls")
            self.calls += 1


@contextlib.contextmanager
def quiet_compile() -> Iterator[None]:
    """Keep DSPy's compile from printing: its INFO logs and its progress bars.

    A journaled run reports its own progress (one line per step, or a live plot), and in
    a notebook DSPy's bars would fill the output cell. DSPy's logs below ERROR are held
    back through the standard ``logging`` API (during its own compile they are about its
    own prompts, e.g. SIMBA passing its feedback fields as text: nothing a user can act on). The bars are turned
    off by :func:`dspex_lab._dspy_compat.quiet_parallel_progress` (not public DSPy API: if DSPy's executor class
    is gone the bars simply show, with a warning, and ``tests/test_dspy_compat.py`` fails loudly when the
    attribute is no longer what DSPy reads). Process-wide while the compile runs.
    """
    logger = logging.getLogger("dspy")
    level = logger.level
    logger.setLevel(max(level, logging.ERROR))
    try:
        with quiet_parallel_progress():
            yield
    finally:
        logger.setLevel(level)


def _guarded(lm: dspy.BaseLM, guard: _CompileGate) -> dspy.BaseLM:
    """Return a copy of ``lm`` that asks ``guard`` before every call; its own copies (SIMBA's rollouts) do too.

    A callback cannot refuse a call, so the copy's class is swapped (see
    :func:`dspex_lab._dspy_compat.gated_lm_copy`).
    """
    return gated_lm_copy(lm, guard.before_call, name_prefix="Budgeted")  # type: ignore[no-any-return]


def _module_lm(student: dspy.Module, lm: dspy.BaseLM, guard: _CompileGate) -> dspy.BaseLM:
    """Return the LM DSPy's SIMBA runs ``student`` under: ``lm``, or the one LM every predictor holds, guarded.

    A program whose variables give predictors LMs of their own (``model:solve``, a binding's
    temperature) holds one LM object per predictor, and DSPy's ``Module.deepcopy`` copies each apart,
    so an optimizer that asks the module for its one LM (``dspy.SIMBA`` through ``Module.get_lm``)
    fails even when they are all alike. When every predictor's LM has the same model and settings,
    the predictors are cleared and that LM, behind the budget's gate, becomes the compile's context
    LM: the same calls, one LM for DSPy. Predictors with differing LMs are left as they are.
    """
    predictors = [predictor for _, predictor in student.named_predictors()]
    held = [predictor.lm for predictor in predictors]
    if not held or any(item is None for item in held):
        return lm
    first = held[0]
    signature = (type(first), first.model, repr(sorted(first.kwargs.items())))
    if any((type(item), item.model, repr(sorted(item.kwargs.items()))) != signature for item in held[1:]):
        return lm
    for predictor in predictors:
        predictor.lm = None
    # Built on the run's LM (a model variable naming the run's model), the predictors' LMs are copies of
    # the guarded ``lm`` already: a second gate would count every call twice and shut at half the budget.
    return first if type(first) is type(lm) else _guarded(first, guard)


class _Group:
    """One configuration's compile trials: an evaluation experiment of its own, nested in the run."""

    def __init__(self, experiment: Experiment, number: int) -> None:
        # The id stays readable (``<run>/compile/e1``); the run is found through the record's parent_id.
        self.experiment = experiment
        self.experiment_id = experiment.id
        self.number = number
        self.repeats: dict[str, int] = {}
        self.trials = 0
        self.scores: list[float] = []


class _CompileTrials:
    """Journals every metric call DSPy makes during compile, grouped by the configuration that predicted."""

    def __init__(self, run: _DspyRun, prefix: str, meter: _ThreadMeter) -> None:
        self.run = run
        self.prefix = prefix
        self.meter = meter
        self.callback = _TopModules(meter)
        self.attributed = Usage()
        self.groups: dict[str, _Group] = {}
        self._lock = threading.Lock()
        self._by_object = {id(example): (example_id, index) for example_id, index, example in run.train_examples}
        self._by_inputs = {
            _inputs_key(example): (example_id, index) for example_id, index, example in run.train_examples
        }

    def metric(self, metric: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap the user's metric: DSPy calls it as ``metric(example, prediction, trace, ...)``."""

        def journaled(gold: Any, pred: Any, trace: Any = None, pred_name: Any = None, pred_trace: Any = None) -> Any:
            try:
                value = metric(gold, pred)
                score = metric_score(value)
            except Exception as error:
                if pred_name is None:
                    self._record(gold, pred, None, error)
                raise
            if pred_name is None:  # GEPA's per-predictor feedback calls score the same trial again
                self._record(gold, pred, score, None, feedback=metric_feedback(value))
            return value if isinstance(value, dspy.Prediction) else score

        return journaled

    def _record(
        self,
        example: Any,
        prediction: Any,
        score: float | None,
        error: Exception | None,
        *,
        feedback: str | None = None,
    ) -> None:
        configuration = self.callback.last()
        began = self.callback.began() or (time.time(), time.perf_counter())
        # The LM calls of the program run (and of the metric) that made this trial; the window is
        # then closed, so a second metric call on the same prediction is not charged again.
        usage = self.meter.window()
        self.meter.open_window()
        key = _key(configuration) if configuration is not None else "unknown"
        example_id, index = self._by_object.get(id(example)) or self._by_inputs.get(
            _inputs_key(example), (f"unlisted-{abs(hash(_inputs_key(example))) % 10**10}", -1)
        )
        with self._lock:
            group = self.groups.get(key)
            if group is None:
                number = len(self.groups) + 1
                experiment = self.run.compile_experiment(f"{self.prefix}/e{number}", number, configuration)
                group = self.groups[key] = _Group(experiment, number)
            repeat = group.repeats.get(example_id, 0)
            group.repeats[example_id] = repeat + 1
            group.trials += 1
            if score is not None:
                group.scores.append(score)
            self.attributed = self.attributed + usage
        row = trial_record(
            index=index,
            example_id=example_id,
            repeat=repeat,
            status="ok" if error is None else "error",
            score=score,
            prediction=json.dumps(to_json_value(prediction), ensure_ascii=False) if error is None else None,
            error_type=type(error).__name__ if error is not None else None,
            error_message=str(error) if error is not None else None,
            error_stage="metric" if error is not None else None,
            latency=time.perf_counter() - began[1],
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cost=usage.cost,
            lm_calls=usage.lm_calls,
            started_at=began[0],
            finished_at=time.time(),
            unpriced_models=",".join(usage.unpriced_models) or None,
            feedback=feedback,
        ).to_row()
        # Recorded now, counted with the rest of the compile's calls when it ends (see _DspyRun.compile).
        group.experiment.record(row)

    def group_of(self, configuration: Mapping[str, tuple[str, list[dict[str, Any]]]]) -> _Group | None:
        """Return the compile experiment of a configuration, if DSPy scored it during compile."""
        return self.groups.get(_key(configuration))


def _inputs_key(example: Any) -> str:
    try:
        inputs = dict(example.inputs())
    except Exception:
        inputs = {"repr": repr(example)}
    return json.dumps(to_json_value(inputs), sort_keys=True, ensure_ascii=False)


@dataclasses.dataclass
class _Proposal:
    """One of DSPy's programs as a candidate of the run, with its step's decision trace (see ``_DspyRun.assess``).

    Attributes:
        candidate: the candidate.
        dspy_score: DSPy's own score of it (on DSPy's data), when it kept one.
        group: its compile trials, when DSPy scored its configuration during compile.
        trace: its step's decision trace.
        proposed_ns: when it was made a candidate.
        validated_ns: when its validation started and ended.
        spent: the run's spending when its validation ended.
    """

    candidate: Candidate
    dspy_score: float | None
    group: _Group | None
    trace: DecisionTrace
    proposed_ns: int
    validated_ns: tuple[int, int] = (0, 0)
    spent: dict[str, Any] = dataclasses.field(default_factory=dict)


class _DspyRun:
    """One run of a DSPy optimizer: baseline, compile, candidates, validation, steps."""

    def __init__(self, optimizer: DspyOptimizer, session: RunSession, lifted: Program, slots: Slots) -> None:
        self.optimizer = optimizer
        self.session = session
        self.evaluator = session.evaluator
        self.slots = slots
        self.metric = session.setup.metric
        self.seed = session.setup.seed
        self.lm = session.setup.lm
        self.baseline = Candidate(
            "c0", lifted, None, 0, "baseline", "the program as given, with instructions and demos lifted"
        )
        self.train_examples = session.train_examples
        self.val_examples = session.val_examples
        self.validation: dict[str, Scores] = {}
        self._compiles: int | None = None

    # -- journal ---------------------------------------------------------------------------------

    def compile_experiment(
        self, phase: str, number: int, configuration: Mapping[str, tuple[str, list[dict[str, Any]]]] | None
    ) -> Experiment:
        """Return the experiment, nested in the run, of the trials DSPy's compile scored with ``configuration``.

        It is inserted with its first trial (:meth:`~dspex_lab.session.Experiment.record`).
        """
        program, fits = self.baseline.program, False
        # A configuration that does not fit the lifted variables keeps the baseline's spec, and says so.
        with contextlib.suppress(OptimizerError):
            if configuration is not None:
                program, fits = self.to_program(configuration), True
        holder = Candidate(f"e{number}", program, None, 0, "dspy", "a configuration DSPy scored during compile")
        record = self.session.record(holder, phase, role="compile")
        # What DSPy actually ran: each predictor's instructions and demos, as read when the call began.
        extra = {"dspy_configuration": configuration, "program_spec_is_configuration": fits}
        return self.session.run.child(dataclasses.replace(record, config={**record.config, **extra}))

    def to_program(self, configuration: Mapping[str, tuple[str, list[dict[str, Any]]]]) -> Program:
        """Return the lifted program holding ``configuration``'s instructions and demos.

        Raises:
            OptimizerError: the configuration does not fit the lifted variables (too many demos, text too long).
        """
        names = list(configuration)
        values: dict[str, Any] = {}
        for scope, variable in self.slots.instructions.items():
            predictor = scope or names[0]
            if predictor not in configuration:
                raise OptimizerError(f"DSPy's program has no predictor {predictor!r}; it has {', '.join(names)}")
            instructions, demos = configuration[predictor]
            values[variable] = instructions
            values[self.slots.demos[scope]] = demos
        try:
            return self.baseline.program.with_values(**values)
        except VariableError as error:
            raise OptimizerError(
                f"DSPy {DSPY_NAMES[self.optimizer.name]}'s program does not fit the lifted variables: {error}"
            ) from error

    # -- the run ---------------------------------------------------------------------------------

    def run(self) -> tuple[str, str]:
        session = self.session
        if "c0" not in session.candidate_rows:
            session.record_candidates([self.baseline])
        try:
            baseline = self.validate(self.baseline)
            if baseline.stopped:
                raise BudgetSpent(baseline.stopped)
            if not baseline.by_example:
                raise OptimizerError(
                    "the baseline scored on no validation example (every trial failed: "
                    + ", ".join(sorted(set(baseline.errors.values())))
                    + "); fix the program or metric before optimizing"
                )
            detail = baseline_detail(
                session.setup.objective, baseline, examples=self._val_by_id(), alpha=self.optimizer.options["alpha"]
            )
            self.finish_step(StepRecord(0, "finished", "c0", detail=detail))
            trace = DecisionTrace(session.run_id, 1)
            compiled, stopped = self.compile(trace)
            if stopped is not None:
                detail = f"budget: {stopped} during DSPy {DSPY_NAMES[self.optimizer.name]}'s compile"
                return self._stop_at(trace, detail)
            return self.assess(compiled, trace)
        except BudgetSpent as spent:
            return "stopped", f"budget: {spent}"

    def _val_by_id(self) -> dict[str, dspy.Example]:
        """Return example id -> example of the validation set (a second metric's guardrail reads them)."""
        return {example_id: example for example_id, _, example in self.val_examples}

    def validate(self, candidate: Candidate) -> Scores:
        if candidate.id not in self.validation:
            self.validation[candidate.id] = self.evaluator.evaluate(
                candidate.program, self.val_examples, record=self.session.record(candidate, "val")
            )
        return self.validation[candidate.id]

    def finish_step(self, record: StepRecord, *, spending: dict[str, Any] | None = None) -> None:
        """Journal and announce a finished step, with the validation numbers of its incumbent."""
        self.session.finish_step(record, self.validation.get(record.incumbent_id), spending=spending)

    def _prefix(self) -> str:
        # Each compile (a resumed run compiles again) labels its configurations apart: compile, compile2, ...
        if self._compiles is None:
            self._compiles = self.session.journaled_compiles()
        self._compiles += 1
        return "compile" if self._compiles == 1 else f"compile{self._compiles}"

    def _split(self) -> tuple[list[dspy.Example], list[dspy.Example] | None]:
        examples = [example for _, _, example in self.train_examples]
        fraction = self.optimizer.options.get("validation_fraction")
        if fraction is None:
            return examples, None
        order = np.random.default_rng(self.seed).permutation(len(examples))
        size = max(1, round(len(examples) * fraction))
        if len(examples) - size < 1:
            raise OptimizerError(
                f"the trainset ({len(examples)} examples) is too small to split off DSPy's own validation set "
                f"(validation_fraction={fraction}); use more training examples"
            )
        held = {int(index) for index in order[:size]}
        train = [example for position, example in enumerate(examples) if position not in held]
        return train, [examples[index] for index in sorted(held)]

    def _teleprompter(self, metric: Callable[..., Any], lm: dspy.BaseLM) -> tuple[Any, dict[str, Any]]:
        name = self.optimizer.name
        options = {key: value for key, value in self.optimizer.options.items() if key not in _OURS}
        compile_options = {key: options.pop(key) for key in _COMPILE_ARGUMENTS.get(name, ()) if key in options}
        if name == "simba":
            return dspy.SIMBA(metric=metric, prompt_model=lm, **options), {"seed": self.seed}
        if name == "mipro":
            teleprompter = dspy.MIPROv2(metric=metric, prompt_model=lm, task_model=lm, seed=self.seed, **options)
            return teleprompter, {"seed": self.seed, **compile_options}
        if name == "gepa":
            return dspy.GEPA(metric=metric, reflection_lm=lm, seed=self.seed, track_stats=True, **options), {}
        return dspy.BootstrapFewShot(metric=metric, **options), {}

    def compile(self, trace: DecisionTrace) -> tuple[dspy.Module | None, str | None]:
        """Run DSPy's compile, metered and guarded (its span goes in ``trace``); return the module and a budget stop."""
        spending: Spending = self.evaluator.spending
        meter = _ThreadMeter()
        guard = _CompileGate(spending, meter)
        lm = _guarded(self.lm, guard)
        trials = _CompileTrials(self, self._prefix(), meter)
        teleprompter, compile_options = self._teleprompter(trials.metric(self.metric), lm)
        student = self.baseline.program.build(lm=lm)
        # Only DSPy's SIMBA asks the module for its one LM; the others keep the predictors' own LMs, which
        # their task-model contexts cannot override (they would run the stages at the run LM's settings).
        student_lm = _module_lm(student, lm, guard) if self.optimizer.name == "simba" else lm
        train, own_val = self._split()
        if own_val is not None:
            compile_options["valset"] = own_val
        if self.optimizer.name == "mipro" and "minibatch_size" not in compile_options:
            # DSPy's default mini-batch (35) may exceed a small split of the trainset, which it refuses.
            compile_options["minibatch_size"] = min(35, len(own_val or train))
        dspy_name = DSPY_NAMES[self.optimizer.name]
        failure: BaseException | None = None
        compiled = None
        started, started_ns = time.perf_counter(), now_ns()
        callbacks = [*(dspy.settings.callbacks or []), trials.callback]
        with metering(meter, overrides={"lm": student_lm, "callbacks": callbacks}), quiet_compile():
            try:
                compiled = teleprompter.compile(student, trainset=train, **compile_options)
            except Exception as error:
                failure = error
        usage = meter.usage()
        # Every call of the compile, its trials' own (each carried in its journaled row too) and the rest
        # (DSPy's proposals, reflections, summaries), counted once for the run.
        attributed = trials.attributed
        spending.add_usage(usage, trials=sum(group.trials for group in trials.groups.values()))
        self.optimizer.last_compiled = compiled
        trace.add(
            "evaluation",
            f"compile {dspy_name}",
            {
                "optimizer": dspy_name,
                "trainset": len(train),
                "own_valset": len(own_val) if own_val is not None else 0,
                "lm_calls": usage.lm_calls,
                "tokens": usage.input_tokens + usage.output_tokens,
                "lm_calls_outside_trials": usage.lm_calls - attributed.lm_calls,
                "seconds": round(time.perf_counter() - started, 3),
                "experiments": [group.experiment_id for group in trials.groups.values()],
                "metric_calls": sum(group.trials for group in trials.groups.values()),
            },
            start_ns=started_ns,
        )
        self._trials = trials
        if guard.spent is not None:
            return compiled, guard.spent
        if failure is not None or compiled is None:
            raise OptimizerError(f"DSPy {dspy_name}'s compile failed: {type(failure).__name__}: {failure}") from failure
        return compiled, None

    def _intermediates(self, compiled: dspy.Module) -> list[tuple[float | None, dspy.Module, str]]:
        """Return DSPy's intermediate programs with their DSPy score and where they came from."""
        name = self.optimizer.name
        found: list[tuple[float | None, dspy.Module, str]] = []
        if name in ("simba", "mipro"):
            for position, item in enumerate(getattr(compiled, "candidate_programs", None) or []):
                if isinstance(item, dict) and isinstance(item.get("program"), dspy.Module):
                    score = finite(item.get("score"))
                    if score is not None and name == "mipro":
                        score /= 100  # MIPROv2 keeps dspy.Evaluate's percentages
                    found.append((score, item["program"], f"candidate_programs[{position}]"))
        elif name == "gepa":
            results = getattr(compiled, "detailed_results", None)
            programs = getattr(results, "candidates", None) or []
            scores = list(getattr(results, "val_aggregate_scores", None) or [])
            for position, program in enumerate(programs):
                if isinstance(program, dspy.Module):
                    score = scores[position] if position < len(scores) else None
                    found.append((finite(score), program, f"detailed_results.candidates[{position}]"))
        found.sort(key=lambda item: -(item[0] if item[0] is not None else -math.inf))
        return found

    def _dspy_score(
        self, compiled: dspy.Module, final_key: str, intermediates: list[tuple[float | None, dspy.Module, str]]
    ) -> float | None:
        """Return DSPy's own score of its final choice (on its data, not ours), when it kept one."""
        value = getattr(compiled, "score", None)  # MIPROv2's full-evaluation score of its choice, a percentage
        if self.optimizer.name == "mipro" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return finite(value / 100)
        for score, program, _ in intermediates:
            if score is not None and _key(read_configuration(program)) == final_key:
                return score
        return None

    def assess(self, compiled: dspy.Module, trace: DecisionTrace) -> tuple[str, str]:
        """Record DSPy's candidates, evaluate them on the validation set and record a step for each.

        ``trace`` is step 1's (it holds the compile); each further candidate's step has its own.
        """
        dspy_name = DSPY_NAMES[self.optimizer.name]
        chosen, baseline_score, changed = self._chosen(compiled)
        proposals = self._proposals(chosen, trace)
        if not proposals:
            detail = f"DSPy {dspy_name}'s final choice is the baseline configuration"
            trace.conclude(detail, name="kept c0")
            self.session.record_trace(trace)
            self.finish_step(StepRecord(1, "finished", "c0", detail=detail))
            return "finished", detail
        final_id = proposals[-1].candidate.id if changed else "c0"
        stopped = self._validate_all(proposals)
        if stopped is not None:
            return self._stop_at(trace, stopped)
        # One convention with SIMBA-C: a candidate is accepted on the one-sided p of "it is better".
        verdicts = judge(
            self.validation["c0"],
            [(proposal.candidate, self.validation[proposal.candidate.id]) for proposal in proposals],
            ids=[key for key, _, _ in self.val_examples],
            method=self.optimizer.options["test"],
            alpha=self.optimizer.options["alpha"],
            objective=self.session.setup.objective,
            examples=self._val_by_id(),
        )
        outcomes = []
        for position, (proposal, verdict) in enumerate(zip(proposals, verdicts, strict=True), start=1):
            outcome = {**verdict.outcome, "dspy_score": proposal.dspy_score}
            self._record_proposal_step(position, proposal, outcome, final_id=final_id, baseline_score=baseline_score)
            outcomes.append(outcome)
        final = next((outcome for outcome in outcomes if outcome["candidate"] == final_id), None)
        if final is None:
            return "finished", f"DSPy {dspy_name} finished; its final choice is the baseline configuration"
        # The run's claim is the held-out confirmation's (dx.optimize); this says what the acceptance rule decided.
        verdict_text = "accepted" if final["significant"] else "not accepted"
        return "finished", f"DSPy {dspy_name} finished; its final choice {final_id} was {verdict_text} on the valset"

    def _chosen(
        self, compiled: dspy.Module
    ) -> tuple[list[tuple[float | None, dict[str, Any], str]], float | None, bool]:
        """Return the configurations to validate (DSPy's score, configuration, origin), DSPy's final choice last.

        Also DSPy's own score of the unchanged program (when it kept one: SIMBA and MIPROv2 score it
        too), and whether DSPy's final choice changed the program at all.
        """
        dspy_name = DSPY_NAMES[self.optimizer.name]
        final_configuration = read_configuration(compiled)
        final_key = _key(final_configuration)
        baseline_key = _key(read_configuration(self.baseline.program.build(lm=self.lm)))
        seen = {baseline_key, final_key}
        intermediates = self._intermediates(compiled)
        baseline_score = next(
            (score for score, program, _ in intermediates if _key(read_configuration(program)) == baseline_key), None
        )
        chosen: list[tuple[float | None, dict[str, Any], str]] = []
        for score, program, origin in intermediates:
            if len(chosen) >= self.optimizer.options["validate_top"]:
                break
            configuration = read_configuration(program)
            if _key(configuration) in seen:
                continue
            seen.add(_key(configuration))
            chosen.append((score, configuration, f"DSPy {dspy_name}'s {origin}"))
        if final_key != baseline_key:
            score = self._dspy_score(compiled, final_key, intermediates)
            chosen.append((score, final_configuration, f"DSPy {dspy_name}'s final choice"))
        return chosen, baseline_score, final_key != baseline_key

    def _proposals(
        self, chosen: list[tuple[float | None, dict[str, Any], str]], trace: DecisionTrace
    ) -> list[_Proposal]:
        """Make (or, for a resumed run, take back) a candidate of each chosen configuration, one step each."""
        session = self.session
        # A resumed run reuses the candidates (and so the finished validations) the same configurations had.
        recorded = {row["fingerprint"]: row for row in session.candidate_rows.values() if row.get("strategy") == "dspy"}
        number = len(session.candidate_rows)
        proposals: list[_Proposal] = []
        for position, (score, configuration, origin) in enumerate(chosen, start=1):
            step_trace = trace if position == 1 else DecisionTrace(session.run_id, position)
            group = self._trials.group_of(configuration)
            candidate_program = self.to_program(configuration)
            row = recorded.pop(candidate_program.fingerprint, None)
            if row is not None:
                candidate = Candidate(
                    row["candidate_id"], candidate_program, "c0", int(row["step"]), "dspy", row.get("rationale") or ""
                )
            else:
                scored = f"DSPy's score {score:.3f}" if score is not None else "no DSPy score"
                trials_note = f"; compile trials in {group.experiment_id}" if group is not None else ""
                candidate = Candidate(
                    f"c{number}", candidate_program, "c0", position, "dspy", f"{origin} ({scored}{trials_note})"
                )
                number += 1
                session.record_candidates([candidate])
            proposals.append(_Proposal(candidate, score, group, step_trace, now_ns()))
        return proposals

    def _validate_all(self, proposals: list[_Proposal]) -> str | None:
        """Evaluate every proposal on the validation set; return why the budget stopped it, or None."""
        for proposal in proposals:
            candidate = proposal.candidate
            started = now_ns()
            try:
                scores = self.validate(candidate)
            except BudgetSpent as error:
                return f"budget: {error} while validating {candidate.id}"
            if scores.stopped:
                return f"budget: {scores.stopped} while validating {candidate.id}"
            proposal.validated_ns = (started, now_ns())
            # Each step reports what the run had spent when its candidate's evaluation ended.
            proposal.spent = self.evaluator.spending.to_summary()
        return None

    def _record_proposal_step(
        self,
        position: int,
        proposal: _Proposal,
        outcome: dict[str, Any],
        *,
        final_id: str,
        baseline_score: float | None,
    ) -> None:
        """Record one candidate's step: its decision trace (proposed, validated, decided) and its row."""
        candidate, score, group, step_trace = proposal.candidate, proposal.dspy_score, proposal.group, proposal.trace
        is_final = candidate.id == final_id
        accepted = is_final and outcome["significant"]
        # With an objective, DSPy's final choice is kept only when it meets every guardrail with confidence.
        kept = is_final and outcome.get("feasible", True)
        step_trace.add(
            "decision",
            f"propose {candidate.id}",
            {
                "candidate": candidate.id,
                "parent": candidate.parent_id,
                "strategy": candidate.strategy,
                "rationale": candidate.rationale,
                "compile_experiment": group.experiment_id if group is not None else None,
            },
            start_ns=proposal.proposed_ns,
            end_ns=proposal.proposed_ns,
        )
        start_ns, end_ns = proposal.validated_ns
        step_trace.add("evaluation", f"validate {candidate.id}", dict(outcome), start_ns=start_ns, end_ns=end_ns)
        detail = self._step_detail(candidate, outcome, is_final=is_final, accepted=accepted)
        step_trace.conclude(detail)
        self.session.record_trace(step_trace)
        screening = {
            "candidate": candidate.id,
            "mean": score,
            "incumbent_mean": baseline_score,
            "gain": score - baseline_score if score is not None and baseline_score is not None else None,
            "n": group.trials if group is not None else 0,
            "errors": 0,
            "experiment_id": group.experiment_id if group is not None else None,
        }
        record = StepRecord(
            position,
            "finished",
            candidate.id if kept else "c0",
            accepted_id=candidate.id if accepted else None,
            screening=[screening] if score is not None else [],
            evaluations=[outcome],
            detail=detail,
        )
        self.finish_step(record, spending=proposal.spent)

    def _step_detail(self, candidate: Candidate, outcome: dict[str, Any], *, is_final: bool, accepted: bool) -> str:
        """Say what a candidate's step decided: measured only, accepted, or kept without being accepted."""
        p_text = (
            f"p={outcome['p_value']:.3g} (Holm {outcome['p_adjusted']:.3g})"
            if outcome["p_value"] is not None
            else "no paired test"
        )
        if not is_final:
            return f"measured {candidate.id} ({candidate.rationale.split(' (')[0]}): {p_text}; not DSPy's choice"
        if accepted:
            if outcome.get("rule") == "feasibility first":
                return (
                    f"accepted {candidate.id}, DSPy's final choice: the baseline breaks a guardrail and it meets every "
                    f"one ({describe_checks(outcome['guardrails'])})"
                )
            return f"accepted {candidate.id}, DSPy's final choice: {p_text} < alpha={self.optimizer.options['alpha']}"
        if not outcome.get("feasible", True):
            return (
                f"kept c0: {candidate.id}, DSPy's final choice, does not meet every guardrail "
                f"({describe_checks(outcome['guardrails'])})"
            )
        difference = outcome["difference"] if outcome["difference"] is not None else math.nan
        return f"kept {candidate.id}, DSPy's final choice, not significant: {p_text}, difference {difference:+.3f}"

    def _stop_at(self, trace: DecisionTrace, detail: str) -> tuple[str, str]:
        # The candidates stay recorded and their finished evaluations journaled; one stopped step says why.
        trace.conclude(detail, name="stopped")
        self.session.record_trace(trace)
        self.finish_step(StepRecord(1, "stopped", "c0", detail=detail))
        return "stopped", detail
