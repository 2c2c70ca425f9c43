"""``dx.optimize``: improve a program on a trainset, judged on a validation set, every trial journaled."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dspy
import numpy as np

from dspex_lab import metrics
from dspex_lab.data import Dataset
from dspex_lab.engine import Budget, RetryPolicy, RunPolicy
from dspex_lab.errors import ExecutionError, OptimizerError
from dspex_lab.evaluation import installed_display, warn_if_underpowered
from dspex_lab.optimization._display import RunDisplay, Subscriber, live_plot
from dspex_lab.optimization._dspy import DspyOptimizer
from dspex_lab.optimization._evaluator import CandidateEvaluator
from dspex_lab.optimization._objective import Objective
from dspex_lab.optimization._optuna import OptunaSearch, run_optuna
from dspex_lab.optimization._result import OptimizationResult
from dspex_lab.optimization._schedule import look_ends
from dspex_lab.optimization._session import OptimizationStep, RunSession, start_run
from dspex_lab.optimization._setup import Metric, OptimizationSetup
from dspex_lab.optimization._simba_c import SimbaC, planned_calls_per_trial, run_simba_c
from dspex_lab.optimization._spending import Spending
from dspex_lab.program import Program
from dspex_lab.session import RunInterrupted, current_context, lm_state, metric_name
from dspex_lab.trace.redaction import redact

__all__ = ["DSPY_OPTIMIZERS", "OptimizationStep", "optimize"]

#: Names ``optimizer=`` accepts for DSPy's own optimizers (run through dspex_lab's engine and journal).
DSPY_OPTIMIZERS = ("simba", "mipro", "gepa", "bootstrap")
OPTIMIZER_NAMES = ("simba-c", *DSPY_OPTIMIZERS, "optuna")

#: The part of the valset held out for the confirmation when no testset is given.
CONFIRM_FRACTION = 0.3
#: The fewest examples a carved confirmation split (and the selection part left) may have.
MINIMUM_SPLIT = 5
# The confirmation split's random stream, apart from every stream the optimizers draw from the seed.
_CONFIRMATION_STREAM = 7_001


@dataclass(frozen=True)
class _Sets:
    """The run's data, checked: the trainset, the valset as given, its selection part and the confirmation set."""

    trainset: Dataset
    given_valset: Dataset
    valset: Dataset
    confirm_set: Dataset | None
    confirmation: dict[str, Any]


def _dataset(value: Dataset | Sequence[dspy.Example], role: str) -> Dataset:
    if isinstance(value, Dataset):
        data = value
    elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        data = Dataset(list(value))
    else:
        raise OptimizerError(f"{role} must be a dx.Dataset or a sequence of dspy.Example, got {type(value).__name__}")
    if len(data) == 0:
        raise OptimizerError(f"{role} is empty")
    return data


def _resolve_optimizer(
    optimizer: SimbaC | DspyOptimizer | OptunaSearch | str,
) -> SimbaC | DspyOptimizer | OptunaSearch:
    if isinstance(optimizer, str):
        key = optimizer.lower().replace("_", "-")
        if key in ("simba-c", "simbac"):
            return SimbaC()
        if key == "optuna":
            return OptunaSearch()
        if key in DSPY_OPTIMIZERS:
            return DspyOptimizer(key)
        raise OptimizerError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZER_NAMES)}")
    if isinstance(optimizer, (SimbaC, DspyOptimizer, OptunaSearch)):
        return optimizer
    raise OptimizerError(
        f"optimizer must be dx.SimbaC(...), dx.OptunaSearch(...) or one of {', '.join(OPTIMIZER_NAMES)}, "
        f"got {type(optimizer).__name__}"
    )


def _check_sets(trainset: Dataset, valset: Dataset, optimizer: SimbaC | DspyOptimizer) -> None:
    overlap = set(trainset.example_ids) & set(valset.example_ids)
    if overlap:
        raise OptimizerError(
            f"the valset shares {len(overlap)} examples with the trainset (e.g. {sorted(overlap)[0]}); a candidate "
            "chosen on an example cannot be judged on it: split the data, e.g. data.split(...)"
        )
    bsize = getattr(optimizer, "bsize", None)
    if bsize is not None and len(trainset) < bsize:
        raise OptimizerError(
            f"the trainset has {len(trainset)} examples, fewer than the mini-batch (bsize={bsize}); "
            f"use a larger trainset or SimbaC(bsize={len(trainset)})"
        )


def _check_budget(
    budget: Budget | None, optimizer: SimbaC | DspyOptimizer, valset: Dataset, confirm: Dataset | None
) -> None:
    if budget is None:
        return
    if not isinstance(budget, Budget):
        raise OptimizerError(f"budget must be a dx.Budget, got {type(budget).__name__}")
    if isinstance(optimizer, SimbaC) and budget.lm_calls is not None:
        # Sized by its schedule, in LM calls (its trials at the calls per trial it planned): the baseline and a
        # candidate up to the first look of the validation examples it judges on, the first step's trajectories
        # (the incumbent's alone in a bootstrap step) and screening, and the confirmation.
        plan = optimizer.schedule
        per_trial = plan.calls_per_trial if plan is not None else 1.0
        judged_on = plan.validation_size if plan is not None and plan.subset else len(valset)
        confirming = 2 * len(confirm) if confirm is not None else 0
        first_look = look_ends(judged_on, optimizer.validation_looks or 1)[0]
        programs = 1 if optimizer.bootstrap else (optimizer.num_sources or 1) + (optimizer.num_candidates or 1)
        trials = first_look + programs * (optimizer.bsize or 1) + first_look + confirming
        one_step = math.ceil(trials * per_trial)
        if budget.lm_calls < one_step:
            raise OptimizerError(
                f"Budget(lm_calls={budget.lm_calls}) is too small for one SIMBA-C step: the baseline and one step "
                f"need at least {one_step} LM calls ({trials} trials at {per_trial:g} calls each: {first_look} "
                f"validation examples at the first look, {programs} programs x bsize={optimizer.bsize}, one "
                f"candidate to the first look, {confirming} confirmation trials); raise the budget or lower "
                "bsize/num_candidates/num_sources"
            )


def _scheduled(
    optimizer: SimbaC | DspyOptimizer, budget: Budget | None, sets: _Sets, program: Program
) -> SimbaC | DspyOptimizer:
    """Return SIMBA-C with the hyperparameters the user left unset sized to the budget (see ``_schedule``).

    Planned at one LM call per predictor of ``program`` a trial, until the baseline measures them.
    """
    if not isinstance(optimizer, SimbaC):
        return optimizer
    return optimizer.scheduled(
        budget=budget if isinstance(budget, Budget) else None,
        train_size=len(sets.trainset),
        val_size=len(sets.valset),
        confirm_size=len(sets.confirm_set) if sets.confirm_set is not None else 0,
        calls_per_trial=planned_calls_per_trial(program),
    )


def _check_objective(objective: Objective | None, optimizer: SimbaC | DspyOptimizer, sets: _Sets) -> None:
    """Check ``objective=``: a :class:`Objective`, on sets large enough for each of its guardrails to hold."""
    if objective is None:
        return
    if not isinstance(objective, Objective):
        raise OptimizerError(
            f"objective must be a dx.Objective(guardrails=[dx.Guardrail(...)]), got {type(objective).__name__}"
        )
    needed = objective.minimum_examples(_acceptance(optimizer)[0])
    for role, data in (("selection part of the valset", sets.valset), ("confirmation set", sets.confirm_set)):
        if data is not None and len(data) < needed:
            raise OptimizerError(
                f"the {role} has {len(data)} examples: a latency_p95 guardrail's one-sided bound needs at least "
                f"{needed} (the largest of n latencies bounds the 95th percentile once 0.95**n <= alpha); "
                "pass more examples"
            )


def _acceptance(optimizer: SimbaC | DspyOptimizer) -> tuple[float, str]:
    """Return the optimizer's significance level and paired test (the confirmation uses the same)."""
    if isinstance(optimizer, SimbaC):
        return optimizer.alpha, optimizer.test
    options = optimizer.options
    return float(options.get("alpha", 0.05)), str(options.get("test", "auto"))


def _confirmation_split(
    train: Dataset,
    val: Dataset,
    testset: Dataset | Sequence[dspy.Example] | None,
    fraction: float | None,
    seed: int,
    optimizer: SimbaC | DspyOptimizer,
) -> tuple[Dataset, Dataset | None, dict[str, Any]]:
    """Return the selection set, the confirmation set (or None) and how they were made (recorded in the config).

    The confirmation set is data the optimizer never sees: the testset when one is given, else a
    seeded part of the valset carved off before the search starts.
    """
    alpha, test = _acceptance(optimizer)
    common = {"alpha": alpha, "test": test, "alternative": "greater"}
    if testset is not None:
        if fraction is not None:
            raise OptimizerError(
                f"confirm_fraction={fraction!r} carves a confirmation set from the valset, but a testset is given; "
                "pass one or the other"
            )
        confirm = _dataset(testset, "testset")
        for role, other in (("trainset", train), ("valset", val)):
            overlap = set(confirm.example_ids) & set(other.example_ids)
            if overlap:
                raise OptimizerError(
                    f"the testset shares {len(overlap)} examples with the {role} (e.g. {sorted(overlap)[0]}); a "
                    "confirmation must be on data the optimizer never saw: split the data, e.g. data.split(...)"
                )
        return val, confirm, {"source": "testset", "n": len(confirm), **common, "testset": confirm.manifest()}
    fraction = CONFIRM_FRACTION if fraction is None else fraction
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
        raise OptimizerError(f"confirm_fraction must be a number in [0, 1), got {fraction!r}")
    if fraction == 0:
        return val, None, {"source": None, "n": 0, **common}
    size = round(len(val) * fraction)
    if size < MINIMUM_SPLIT or len(val) - size < MINIMUM_SPLIT:
        raise OptimizerError(
            f"the valset has {len(val)} examples: too few to carve a confirmation set of confirm_fraction={fraction} "
            f"with at least {MINIMUM_SPLIT} examples on each side; pass a larger valset, a testset=, or "
            "confirm_fraction=0 (then nothing is claimed)"
        )
    order = np.random.default_rng([seed, _CONFIRMATION_STREAM]).permutation(len(val))
    held = sorted(int(position) for position in order[:size])
    kept = sorted(set(range(len(val))) - set(held))
    selection = val.select(kept).with_name(f"{val.name} (selection)")
    confirm = val.select(held).with_name(f"{val.name} (confirmation)")
    return (
        selection,
        confirm,
        {
            "source": "valset",
            "n": len(confirm),
            "fraction": fraction,
            "seed": seed,
            "selection_n": len(selection),
            "example_ids": list(confirm.example_ids),
            **common,
        },
    )


def optimize(
    program: Program,
    trainset: Dataset | Sequence[dspy.Example],
    valset: Dataset | Sequence[dspy.Example],
    *,
    metric: Metric | str,
    optimizer: SimbaC | DspyOptimizer | OptunaSearch | str = "simba-c",
    objective: Objective | None = None,
    budget: Budget | None = None,
    seed: int = 0,
    testset: Dataset | Sequence[dspy.Example] | None = None,
    confirm_fraction: float | None = None,
    name: str | None = None,
    resume: str | None = None,
    timeout: float | None = None,
    retries: int = 3,
    max_errors: int | float | None = None,
    trace: bool = False,
    progress: bool | Subscriber = True,
    subscribers: Sequence[Subscriber] = (),
    live: bool = False,
) -> OptimizationResult:
    """Optimize ``program`` on ``trainset``, accepting changes on ``valset`` evidence, and journal every decision.

    Args:
        program: the program to improve: its typed variables, and instructions and demos for every predictor.
        trainset: examples for mini-batches, trajectories and demos.
        valset: held-out examples on which candidates are accepted (must not overlap the trainset).
        metric: ``metric(example, prediction)`` returning a finite number or bool, or a ``dx.metrics.NAMES`` name.
        optimizer: ``dx.SimbaC(...)`` (or ``"simba-c"``), ``dx.OptunaSearch(...)`` (or ``"optuna"``: Optuna's
            samplers over the typed variables), or DSPy's ``"simba"``, ``"mipro"``, ``"gepa"``,
            ``"bootstrap"``.
        objective: ``dx.Objective(guardrails=[...])``: a candidate is accepted only when its gain is
            significant and every guardrail holds with confidence (``docs/optimize.md``). None: the metric alone.
        budget: limits on LM calls, tokens or dollars for the whole run (SIMBA-C sizes its steps by it); it stops
            cleanly when spent, holding back enough for the confirmation.
        seed: makes mini-batches, sources, proposals and the confirmation split reproducible.
        testset: examples no optimizer sees, where the best is tested against the baseline at the end (the
            headline: ``result.comparison``); must not overlap the trainset or the valset.
        confirm_fraction: without a testset, the share of the valset carved off (seeded) for the confirmation
            (default 0.3, at least 5 examples a side); 0 runs no confirmation, and nothing is claimed.
        name: the run's name (default: the program's name and the optimizer).
        resume: the id of an interrupted run to continue (the same run); finished evaluations are not repeated.
        timeout: seconds a trial may take (retries included).
        retries: retries of transient LM failures per trial.
        max_errors: an error budget per evaluation (a count or a fraction).
        trace: capture every trial's span tree (the decisions' spans are always recorded).
        progress: show the run (True: a live widget in Jupyter, a line per step elsewhere), or a
            :class:`Subscriber` given every event and step (a :class:`RunDisplay` also hears begin and end).
        subscribers: :class:`Subscriber` objects called with an :class:`OptimizationStep` after every step.
        live: draw the convergence below the progress in a Jupyter kernel, redrawn every step (else a warning).

    Returns:
        The :class:`OptimizationResult`; an interrupted run is marked so and raises
        :class:`~dspex_lab.session.RunInterrupted` (a KeyboardInterrupt) naming the id to resume.

    Raises:
        OptimizerError: bad arguments (see the message), or a resume that does not match.
    """
    chosen = _checked_optimizer(program, metric := _named_metric(metric), seed, optimizer)
    sets = _sets(trainset, valset, testset, confirm_fraction, seed, chosen)
    chosen = _checked_plan(program, chosen, sets, budget, objective)
    setup = _setup(
        program,
        sets,
        metric=metric,
        optimizer=chosen,
        budget=budget,
        seed=seed,
        name=name,
        resume=resume,
        objective=objective,
        policy=_policy(timeout, retries, max_errors),
        trace=trace,
        progress=progress,
        subscribers=_with_live_plot(subscribers) if live else subscribers,
    )
    # Held for the whole run: opening the DuckDB file costs tens of milliseconds, and a run writes often.
    with setup.journal.hold():
        return _displayed(setup)


def _with_live_plot(subscribers: Sequence[Subscriber]) -> Sequence[Subscriber]:
    """Add the notebook's live convergence plot to ``subscribers``, or warn (one line) where there is none."""
    plot = live_plot()
    if plot is None:
        warnings.warn(
            "optimize(live=True) draws in a Jupyter kernel with the notebook extra only; nothing is drawn here "
            "(subscribers=[dx.optimization.LiveConvergence()] keeps the frames for a dashboard pane)",
            stacklevel=3,
        )
        return subscribers
    return [*subscribers, plot]


def _checked_plan(
    program: Program,
    optimizer: SimbaC | DspyOptimizer,
    sets: _Sets,
    budget: Budget | None,
    objective: Objective | None,
) -> SimbaC | DspyOptimizer:
    """Size the optimizer by the budget, check that the budget and the objective fit it, warn when underpowered.

    All before any LM call is spent. Returns the optimizer with its schedule resolved.
    """
    chosen = _scheduled(optimizer, budget, sets, program)
    _check_budget(budget, chosen, sets.valset, sets.confirm_set)
    _check_objective(objective, chosen, sets)
    warn_if_underpowered(len(sets.valset), what="valset", alpha=_acceptance(chosen)[0])
    return chosen


def _named_metric(metric: Metric | str) -> Metric:
    """Return the shipped metric ``metric`` names (``dx.metrics.NAMES``), or ``metric`` itself when not a name."""
    if not isinstance(metric, str):
        return metric
    try:
        return metrics.get(metric)
    except ExecutionError as error:
        raise OptimizerError(str(error)) from None


def _checked_optimizer(
    program: Program, metric: Metric, seed: int, optimizer: SimbaC | DspyOptimizer | OptunaSearch | str
) -> SimbaC | DspyOptimizer | OptunaSearch:
    """Check the program, the metric and the seed; return the optimizer ``optimizer=`` names."""
    if not isinstance(program, Program):
        raise OptimizerError(
            f"optimize() takes a dx.Program (the search space is its variables), got {type(program).__name__}; "
            "wrap a module class with dx.Program('module.path', signature=...)"
        )
    if not callable(metric):
        raise OptimizerError(f"metric must be callable as metric(example, prediction), got {metric!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise OptimizerError(f"seed must be an integer, got {seed!r}")
    return _resolve_optimizer(optimizer)


def _sets(
    trainset: Dataset | Sequence[dspy.Example],
    valset: Dataset | Sequence[dspy.Example],
    testset: Dataset | Sequence[dspy.Example] | None,
    confirm_fraction: float | None,
    seed: int,
    optimizer: SimbaC | DspyOptimizer,
) -> _Sets:
    """Check the data and carve the confirmation set (see :func:`_confirmation_split`)."""
    train = _dataset(trainset, "trainset")
    given_val = _dataset(valset, "valset")
    _check_sets(train, given_val, optimizer)
    val, confirm, confirmation = _confirmation_split(train, given_val, testset, confirm_fraction, seed, optimizer)
    return _Sets(train, given_val, val, confirm, confirmation)


def _policy(timeout: float | None, retries: int, max_errors: int | float | None) -> RunPolicy:
    try:
        return RunPolicy(timeout=timeout, retry=RetryPolicy(retries=retries), max_errors=max_errors)
    except (ValueError, ExecutionError) as error:
        raise OptimizerError(str(error)) from error


def _setup(
    program: Program,
    sets: _Sets,
    *,
    metric: Metric,
    optimizer: SimbaC | DspyOptimizer,
    budget: Budget | None,
    seed: int,
    name: str | None,
    resume: str | None,
    objective: Objective | None,
    policy: RunPolicy,
    trace: bool,
    progress: bool | Subscriber,
    subscribers: Sequence[Subscriber],
) -> OptimizationSetup:
    """Resolve the run's surroundings (the current context's LM, executor, journal, display) and record its config."""
    context = current_context()
    lm = context.lm
    config = redact(
        {
            "optimizer": optimizer.name,
            "optimizer_config": optimizer.config(),
            "seed": seed,
            "budget": budget.limits() if budget is not None else None,
            "trainset": sets.trainset.manifest(),
            "valset": sets.given_valset.manifest(),
            "confirmation": sets.confirmation,
            "metric": metric_name(metric),
            "lm": getattr(lm, "model", repr(lm)),
            "lm_state": lm_state(lm),
            "timeout": policy.timeout,
            "retries": policy.retry.retries,
            "trace": trace,
            # Only with an objective: the config of a run without one stays what it was (resume compares it).
            **({"objective": objective.config()} if objective is not None else {}),
        }
    )
    for subscriber in subscribers:
        if not isinstance(subscriber, Subscriber):
            raise OptimizerError(f"subscribers must be callables taking an event, got {subscriber!r}")
    display = progress if isinstance(progress, Subscriber) else installed_display("optimization") if progress else None
    return OptimizationSetup(
        program=program,
        trainset=sets.trainset,
        valset=sets.valset,
        confirm_set=sets.confirm_set,
        metric=metric,
        optimizer=optimizer,
        seed=seed,
        budget=budget,
        name=name or f"{program.name} ({optimizer.name})",
        resume=resume,
        config=config,
        policy=policy,
        trace=trace,
        lm=lm,
        executor=context.executor,
        journal=context.journal,
        display=display,
        print_steps=progress is True and display is None,
        subscribers=tuple(subscribers),
        objective=objective,
    )


def _displayed(setup: OptimizationSetup) -> OptimizationResult:
    """Run the optimization; a display that spans the whole run (the notebook widget) hears when it begins and ends."""
    display = setup.display if isinstance(setup.display, RunDisplay) else None
    status = "failed"
    if display is not None:
        display.begin(setup.name)
    try:
        result = _run(setup)
        status = result.status
        return result
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        if display is not None:
            display.finish(status)


def _run(setup: OptimizationSetup) -> OptimizationResult:
    """Start (or resume) the run, search, confirm, and record how it ended."""
    with start_run(setup) as run:  # leaving flushes the run's trials to the journal
        evaluator = CandidateEvaluator(
            run,
            metric=setup.metric,
            lm=setup.lm,
            executor=setup.executor,
            policy=setup.policy,
            spending=Spending(budget=setup.budget),
            trace=setup.trace,
            sinks=[setup.display] if setup.display is not None else [],
        )
        session = RunSession(setup, evaluator)
        if run.resumed:
            session.load_recorded(replay=isinstance(setup.optimizer, SimbaC))
        try:
            if isinstance(setup.optimizer, SimbaC):
                status, detail = run_simba_c(session, setup.optimizer)
            elif isinstance(setup.optimizer, OptunaSearch):
                status, detail = run_optuna(session, setup.optimizer)
            else:
                status, detail = setup.optimizer.run_dspy(session)
            session.confirm()
            session.end(status, detail)
        except KeyboardInterrupt:
            session.end("interrupted", "interrupted by the user")
            raise RunInterrupted(
                f"optimization interrupted; finished evaluations are journaled: continue with resume={run.id!r}",
                experiment_id=run.id,
                kind="optimization",
            ) from None
        except BaseException as error:
            session.end("failed", f"{type(error).__name__}: {error}")
            raise
    return session.result()
