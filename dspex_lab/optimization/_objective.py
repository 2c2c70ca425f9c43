"""Objectives with guardrails: maximize the run's metric subject to bounds on cost, latency, errors or another metric.

``dx.optimize(..., objective=dx.Objective(guardrails=[...]))`` keeps the run's metric as the
quantity to maximize and adds :class:`Guardrail` bounds a candidate must meet *with confidence*:
its one-sided ``1 - alpha`` confidence bound, computed from its validation trials, must be on
the right side of the bound. Each quantity has the bound that fits its distribution:

===================  ====================================  ===========================================
quantity             what is bounded                       one-sided bound at ``1 - alpha``
===================  ====================================  ===========================================
``cost``             mean US dollars per example           Student t upper bound of the mean
``latency_p95``      95th percentile of trial seconds      order statistic (distribution-free)
``error_rate``       fraction of examples that failed      Clopper-Pearson (exact binomial)
``metric``           mean of a second metric               Clopper-Pearson for 0/1 values, else t
===================  ====================================  ===========================================

A second metric is computed from each scored trial's stored prediction (its output fields, as the
journal keeps them), ``metric(example, dspy.Prediction(**fields))``: no trial is run again, and
the checks of a run read back from the journal are the ones recorded when it ran.

Requiring every guardrail to hold, each at level ``alpha``, is an intersection-union test: a
candidate that breaks any one of them is accepted with probability at most ``alpha``, so no
correction across guardrails is needed (Berger, 1982).

The command line and the notebook say guardrails as text (:data:`GUARDRAIL_SYNTAX`):
``dspex optimize ... --guardrail "cost<=0.0005" --guardrail "metric:f1>=0.6"`` and ``%dspex
optimize`` read them with :func:`parse_objective`, so both faces accept exactly the same words.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dspy
import numpy as np
from scipy import stats

from dspex_lab.errors import DspexLabError, OptimizerError, bounded_repr
from dspex_lab.optimization._evaluator import Scores
from dspex_lab.session import metric_name
from dspex_lab.stats import is_binary

__all__ = [
    "GUARDRAIL_SYNTAX",
    "QUANTITIES",
    "Guardrail",
    "GuardrailCheck",
    "Objective",
    "baseline_detail",
    "check_guardrails",
    "clopper_pearson_bound",
    "describe_checks",
    "held_out_checks",
    "held_out_sentence",
    "mean_bound",
    "meets_estimates",
    "parse_guardrail",
    "parse_objective",
    "quantile_upper_bound",
]

#: The quantities a guardrail may bound, with what each one is.
QUANTITIES = {
    "cost": "mean US dollars per example (every trial's LM calls, errors included)",
    "latency_p95": "95th percentile of a trial's seconds",
    "error_rate": "fraction of examples whose trial failed",
    "metric": "mean of a second metric over the scored examples",
}
# Quantities bounded from above only: a guardrail asking for more cost or more errors is a mistake.
_UPPER_ONLY = ("cost", "latency_p95", "error_rate")
_LATENCY_QUANTILE = 0.95
#: How a guardrail is written on the command line and in ``%dspex optimize`` (:func:`parse_guardrail`).
GUARDRAIL_SYNTAX = (
    "cost<=USD, latency_p95<=SECONDS, error_rate<=FRACTION, or metric:NAME>=NUMBER (or <=), "
    "e.g. cost<=0.0005 or metric:f1>=0.6"
)
# QUANTITY, a comparison (any run of <, > and =, judged after the split), then the bound.
_GUARDRAIL_TEXT = re.compile(r"\s*(?P<name>[^<>=]*?)\s*(?P<comparison>[<>=]+)\s*(?P<bound>.*?)\s*")


def _number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


@dataclass(frozen=True)
class Guardrail:
    """A bound a candidate must meet with confidence to be accepted.

    Args:
        quantity: ``cost``, ``latency_p95``, ``error_rate`` or ``metric`` (see the module docstring).
        at_most: the upper bound (US dollars per example, seconds, a fraction, or the metric's units).
        at_least: the lower bound (``metric`` only).
        metric: the second metric, ``metric(example, prediction)`` (``metric`` only).

    Raises:
        OptimizerError: an unknown quantity, a missing or extra bound, or a bound of the wrong type or sign.

    Example:
        >>> Guardrail("latency_p95", at_most=1.0).describe()
        'latency p95 <= 1 s'
    """

    quantity: str
    at_most: float | None = None
    at_least: float | None = None
    metric: Callable[[dspy.Example, Any], Any] | None = None

    def __post_init__(self) -> None:
        quantity = self.quantity
        if quantity not in QUANTITIES:
            raise OptimizerError(f"Guardrail({quantity!r}): unknown quantity; choose one of {', '.join(QUANTITIES)}")
        bounds = [name for name in ("at_most", "at_least") if getattr(self, name) is not None]
        if len(bounds) != 1:
            raise OptimizerError(f"Guardrail({quantity!r}) takes exactly one of at_most=, at_least=")
        (side,) = bounds
        bound = getattr(self, side)
        if not _number(bound):
            raise OptimizerError(f"Guardrail({quantity!r}, {side}={bound!r}): the bound must be a finite number")
        if quantity in _UPPER_ONLY and side != "at_most":
            raise OptimizerError(f"Guardrail({quantity!r}) is an upper bound: use at_most=, not at_least=")
        if quantity in ("cost", "latency_p95") and bound <= 0:
            raise OptimizerError(f"Guardrail({quantity!r}, at_most={bound!r}): must be above 0")
        if quantity == "error_rate" and not 0 < bound < 1:
            raise OptimizerError(f"Guardrail('error_rate', at_most={bound!r}): must be a fraction in (0, 1)")
        if quantity == "metric" and not callable(self.metric):
            raise OptimizerError("Guardrail('metric') needs metric=, a callable metric(example, prediction)")
        if quantity != "metric" and self.metric is not None:
            raise OptimizerError(f"Guardrail({quantity!r}) takes no metric= (only Guardrail('metric', ...) does)")

    @property
    def side(self) -> str:
        """``at_most`` or ``at_least``."""
        return "at_most" if self.at_most is not None else "at_least"

    @property
    def bound(self) -> float:
        """The bound's value."""
        return float(self.at_most if self.at_most is not None else self.at_least)  # type: ignore[arg-type]

    @property
    def name(self) -> str:
        """The guardrail's name in records: the quantity, or ``metric:<name>`` for a second metric."""
        return f"metric:{metric_name(self.metric)}" if self.quantity == "metric" else self.quantity

    def describe(self) -> str:
        """Say the guardrail in words: ``cost per example <= $0.002``."""
        return f"{_label(self.name)} {'<=' if self.side == 'at_most' else '>='} {_shown(self.quantity, self.bound)}"

    def config(self) -> dict[str, Any]:
        """Return the guardrail as JSON (recorded with the run, checked on resume)."""
        return {"quantity": self.quantity, "name": self.name, self.side: self.bound}


@dataclass(frozen=True)
class Objective:
    """Maximize the run's metric subject to guardrails (``dx.optimize(..., objective=...)``).

    Args:
        guardrails: the bounds every accepted candidate meets with confidence (at least one).
        alpha: the level of each guardrail's one-sided bound (default: the optimizer's ``alpha``).

    Raises:
        OptimizerError: no guardrail, something that is not a :class:`Guardrail`, two guardrails
            on the same quantity, or an ``alpha`` outside (0, 1).
    """

    guardrails: tuple[Guardrail, ...] = ()
    alpha: float | None = None

    def __post_init__(self) -> None:
        guardrails = self.guardrails
        if isinstance(guardrails, Guardrail):
            guardrails = (guardrails,)
        if not isinstance(guardrails, Iterable) or isinstance(guardrails, (str, bytes, Mapping)):
            raise OptimizerError(f"Objective(guardrails={guardrails!r}): a list of dx.Guardrail(...)")
        guardrails = tuple(guardrails)
        for item in guardrails:
            if not isinstance(item, Guardrail):
                raise OptimizerError(f"Objective(guardrails=...): {item!r} is not a dx.Guardrail(...)")
        if not guardrails:
            raise OptimizerError("Objective() needs at least one dx.Guardrail(...); without one, leave objective out")
        names = [item.name for item in guardrails]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise OptimizerError(f"Objective(guardrails=...): two guardrails on {', '.join(twice)}; keep one")
        if self.alpha is not None and not (_number(self.alpha) and 0 < self.alpha < 1):
            raise OptimizerError(f"Objective(alpha={self.alpha!r}): must be between 0 and 1")
        object.__setattr__(self, "guardrails", guardrails)

    def config(self) -> dict[str, Any]:
        """Return the objective as JSON (recorded with the run, checked on resume)."""
        return {"guardrails": [item.config() for item in self.guardrails], "alpha": self.alpha}

    def minimum_examples(self, alpha: float) -> int:
        """Return the fewest examples on which every guardrail can hold (the p95's order statistic needs most)."""
        if not any(item.quantity == "latency_p95" for item in self.guardrails):
            return 2
        # The largest of n values bounds the p95 at 1 - alpha once 0.95**n <= alpha.
        return max(2, math.ceil(math.log(self.level(alpha)) / math.log(_LATENCY_QUANTILE)))

    def level(self, alpha: float) -> float:
        """Return the guardrails' level: the objective's own ``alpha``, else the optimizer's."""
        return float(self.alpha) if self.alpha is not None else float(alpha)


# -- guardrails written as text --------------------------------------------------------------------


def parse_guardrail(
    text: str, *, option: str = "--guardrail", metric: Callable[[str], Callable[..., Any]] | None = None
) -> Guardrail:
    """Read one guardrail written as text (:data:`GUARDRAIL_SYNTAX`): ``cost<=0.0005``, ``metric:f1>=0.6``.

    Args:
        text: the guardrail as the user wrote it.
        option: where it was written, named in errors (``--guardrail``, ``%dspex optimize --guardrail``).
        metric: finds a second metric by the name after ``metric:`` (the face's own rule, as for
            ``--metric``); it raises a :class:`~dspex_lab.errors.DspexLabError` saying why a name is unknown.
            Default: a ``dx.metrics`` function by name.

    Raises:
        OptimizerError: one line naming ``option`` and ``text``, what is wrong, and the accepted syntax.

    Example:
        >>> parse_guardrail("latency_p95 <= 1.5").describe()
        'latency p95 <= 1.5 s'
    """

    def wrong(what: str) -> OptimizerError:
        return OptimizerError(f"{option} {bounded_repr(text)}: {what}; write {GUARDRAIL_SYNTAX}")

    match = _GUARDRAIL_TEXT.fullmatch(text)
    if match is None:
        raise wrong("no comparison (<= or >=)")
    name, comparison, written = match.group("name", "comparison", "bound")
    quantity, colon, metric_text = name.partition(":")
    if quantity not in QUANTITIES or (quantity == "metric") != bool(colon):
        known = ", ".join(item for item in QUANTITIES if item != "metric")
        shown = f"{name!r} is not a quantity" if name else "no quantity before the comparison"
        raise wrong(f"{shown} ({known}, or metric:NAME for a second metric)")
    if comparison not in ("<=", ">="):
        raise wrong(f"{comparison!r} is not a bound's comparison (<= or >=)")
    if quantity in _UPPER_ONLY and comparison == ">=":
        raise wrong(f"{quantity} is bounded from above only ({quantity}<=NUMBER)")
    try:
        bound = float(written)
    except ValueError:
        raise wrong(f"the bound {written!r} is not a number" if written else "no bound after the comparison") from None
    side = "at_most" if comparison == "<=" else "at_least"
    found = None
    if quantity == "metric":
        if not metric_text:
            raise wrong("metric: needs the second metric's name")
        try:
            found = (metric or _lab_metric)(metric_text)
        except DspexLabError as error:
            raise OptimizerError(f"{option} {bounded_repr(text)}: {error}") from None
    try:
        return Guardrail(quantity, metric=found, **{side: bound})
    except OptimizerError as error:
        raise wrong(str(error)) from None


def _lab_metric(name: str) -> Callable[..., Any]:
    """Return the ``dx.metrics`` function called ``name``."""
    from dspex_lab import metrics

    if name not in metrics.NAMES:
        raise OptimizerError(f"no metric {name!r} in dx.metrics ({', '.join(metrics.NAMES)})")
    return metrics.get(name)


def parse_objective(
    texts: Sequence[str], *, option: str = "--guardrail", metric: Callable[[str], Callable[..., Any]] | None = None
) -> Objective | None:
    """Read guardrails written as text into an :class:`Objective` (None when there are none).

    Each text is read by :func:`parse_guardrail` (``option`` and ``metric`` are passed on).

    Raises:
        OptimizerError: a text that is not a guardrail, or two on the same quantity (one line naming ``option``).

    Example:
        >>> [item.describe() for item in parse_objective(["cost<=0.0005", "error_rate<=0.05"]).guardrails]
        ['cost per example <= $0.0005', 'error rate <= 5.0%']
    """
    guardrails = [parse_guardrail(text, option=option, metric=metric) for text in texts]
    names = [item.name for item in guardrails]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise OptimizerError(f"{option}: {', '.join(twice)} is bounded twice; give one {option} for each quantity")
    return Objective(guardrails=tuple(guardrails)) if guardrails else None


# -- one-sided bounds -------------------------------------------------------------------------------


def mean_bound(values: Sequence[float] | np.ndarray, *, alpha: float, upper: bool = True) -> float:
    """Return the one-sided ``1 - alpha`` Student t bound of a mean (NaN with fewer than two values).

    Example:
        >>> round(mean_bound([1.0, 2.0, 3.0], alpha=0.05), 4)
        3.6859
    """
    array = np.asarray(values, dtype=float)
    if array.size < 2:
        return math.nan
    half = float(stats.t.ppf(1 - alpha, array.size - 1)) * float(array.std(ddof=1)) / math.sqrt(array.size)
    mean = float(array.mean())
    return mean + half if upper else mean - half


def quantile_upper_bound(values: Sequence[float] | np.ndarray, *, quantile: float, alpha: float) -> float:
    """Return a distribution-free one-sided ``1 - alpha`` upper bound of a quantile: an order statistic.

    The k-th smallest of n values is at or above the quantile ``q`` unless at least k values fall
    below it, so ``P(X_(k) >= x_q) >= P(Binomial(n, q) <= k - 1)``; k is the smallest with that
    probability at least ``1 - alpha``. With too few values (``q**n > alpha``) no order statistic
    is a bound and the result is infinite.

    Example:
        >>> quantile_upper_bound(range(1, 101), quantile=0.95, alpha=0.05)
        99.0
    """
    array = np.sort(np.asarray(values, dtype=float))
    n = array.size
    if n == 0:
        return math.inf
    ranks = np.arange(1, n + 1)
    covered = stats.binom.cdf(ranks - 1, n, quantile) >= 1 - alpha
    if not covered.any():
        return math.inf
    return float(array[int(np.argmax(covered))])


def clopper_pearson_bound(successes: int, n: int, *, alpha: float, upper: bool = True) -> float:
    """Return the one-sided ``1 - alpha`` Clopper-Pearson (exact) bound of a proportion (NaN for n = 0).

    Example:
        >>> round(clopper_pearson_bound(0, 59, alpha=0.05), 4)
        0.0495
    """
    if n <= 0:
        return math.nan
    if upper:
        return 1.0 if successes >= n else float(stats.beta.ppf(1 - alpha, successes + 1, n - successes))
    return 0.0 if successes <= 0 else float(stats.beta.ppf(alpha, successes, n - successes + 1))


# -- checks -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GuardrailCheck:
    """One guardrail checked on one evaluation (journaled as :meth:`to_json` in the verdict's record).

    Attributes:
        name: the guardrail's name (``cost``, ``latency_p95``, ``error_rate``, ``metric:<name>``).
        side: ``at_most`` or ``at_least``.
        bound: the guardrail's bound.
        estimate: the measured value (mean cost, empirical p95, error rate, mean of the metric); None if unknown.
        confidence_bound: the one-sided ``1 - alpha`` bound on the quantity (None where there is none).
        method: ``t``, ``order statistic`` or ``clopper-pearson``.
        n: the values it was computed from.
        alpha: the level.
        holds: whether the confidence bound is on the right side of the bound.
        note: why there is no bound (an unpriced model, too few examples, a failing metric), else None.
    """

    name: str
    side: str
    bound: float
    estimate: float | None
    confidence_bound: float | None
    method: str
    n: int
    alpha: float
    holds: bool
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the check as JSON values, with its sentence (``text``)."""
        return {**{key: _finite(value) for key, value in self.__dict__.items()}, "text": self.text()}

    def text(self) -> str:
        """Say the check in words: ``p95 latency 1.4 s (95% upper bound 1.52 s) > 1 s bound``."""
        quantity = self.name.split(":")[0]
        label = _label(self.name)
        level = f"{1 - self.alpha:.0%} {'upper' if self.side == 'at_most' else 'lower'} bound"
        bound = _shown(quantity, self.bound)
        measured = _shown(quantity, self.estimate) if self.estimate is not None else "unknown"
        if self.confidence_bound is None or not math.isfinite(self.confidence_bound):
            return f"{label} {measured}: no {level} ({self.note or 'too few values'}), so <= {bound} is not shown"
        sign = ("<=" if self.holds else ">") if self.side == "at_most" else (">=" if self.holds else "<")
        return f"{label} {measured} ({level} {_shown(quantity, self.confidence_bound)}) {sign} {bound} bound"


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _label(name: str) -> str:
    if name.startswith("metric:"):
        return name.split(":", 1)[1].rsplit(".", 1)[-1]  # the metric's own name, without its module
    return {"cost": "cost per example", "latency_p95": "latency p95", "error_rate": "error rate"}[name]


def _shown(quantity: str, value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "unknown" if value is None else str(value)
    if quantity == "cost":
        return f"${value:.3g}"
    if quantity == "latency_p95":
        return f"{value:.3g} s"
    if quantity == "error_rate":
        return f"{value:.1%}"
    return f"{value:.3g}"


def check_guardrails(
    objective: Objective, scores: Scores, *, examples: Mapping[str, dspy.Example], alpha: float
) -> list[GuardrailCheck]:
    """Check every guardrail of ``objective`` on one evaluation's scores.

    Args:
        objective: the run's objective.
        scores: the evaluation (with its per-example costs, latencies, errors and predictions).
        examples: example id -> example, for a second metric.
        alpha: the optimizer's level (the objective's own ``alpha`` wins).
    """
    level = objective.level(alpha)
    return [_check(guardrail, scores, examples, level) for guardrail in objective.guardrails]


def _check(guardrail: Guardrail, scores: Scores, examples: Mapping[str, dspy.Example], alpha: float) -> GuardrailCheck:
    quantity = guardrail.quantity
    upper = guardrail.side == "at_most"
    note = None
    if quantity == "cost":
        values = list(scores.costs.values())
        known = [value for value in values if value is not None]
        estimate = float(np.mean(known)) if known and len(known) == len(values) else None
        if len(known) < len(values):
            note = "an unpriced model: its cost is unknown"
        bound = mean_bound(known, alpha=alpha) if estimate is not None else math.nan
        method, n = "t", len(values)
    elif quantity == "latency_p95":
        values = list(scores.latencies.values())
        estimate = float(np.quantile(values, _LATENCY_QUANTILE)) if values else None
        bound = quantile_upper_bound(values, quantile=_LATENCY_QUANTILE, alpha=alpha)
        method, n = "order statistic", len(values)
        if not math.isfinite(bound):
            note = f"{n} trials; a 95th percentile's bound needs at least {math.ceil(math.log(alpha) / math.log(0.95))}"
    elif quantity == "error_rate":
        n = scores.n + len(scores.errors)
        estimate = len(scores.errors) / n if n else None
        bound = clopper_pearson_bound(len(scores.errors), n, alpha=alpha)
        method = "clopper-pearson"
    else:
        measured, failed = _second_metric(guardrail, scores, examples)
        n = len(measured)
        estimate = float(np.mean(measured)) if measured else None
        if failed:
            bound, method, note = math.nan, "t", failed
        elif is_binary(measured):
            bound = clopper_pearson_bound(int(sum(measured)), n, alpha=alpha, upper=upper)
            method = "clopper-pearson"
        else:
            bound, method = mean_bound(measured, alpha=alpha, upper=upper), "t"
    holds = math.isfinite(bound) and (bound <= guardrail.bound if upper else bound >= guardrail.bound)
    return GuardrailCheck(
        guardrail.name,
        guardrail.side,
        guardrail.bound,
        estimate,
        bound if math.isfinite(bound) else None,
        method,
        n,
        alpha,
        bool(holds),
        note,
    )


def _second_metric(
    guardrail: Guardrail, scores: Scores, examples: Mapping[str, dspy.Example]
) -> tuple[list[float], str | None]:
    """Return the second metric on every scored example (from its stored prediction), or why it failed."""
    metric = guardrail.metric
    values: list[float] = []
    if metric is None:  # Guardrail('metric') refuses this; kept so the type is narrowed without an assert
        return values, f"{guardrail.name} has no metric"

    for example_id in scores.by_example:
        try:
            fields = json.loads(scores.predictions.get(example_id) or "{}")
            value = metric(examples[example_id], dspy.Prediction(**fields))
            number = float(value)
        except Exception as error:  # a second metric that fails leaves the guardrail unshown, never the run broken
            return values, f"{guardrail.name} failed on example {example_id}: {type(error).__name__}: {error}"
        if not math.isfinite(number):
            return values, f"{guardrail.name} gave {number} on example {example_id}"
        values.append(number)
    return values, None


def describe_checks(checks: Sequence[Mapping[str, Any]]) -> str:
    """Join journaled checks' sentences: those that fail first (what a rejection is about)."""
    ordered = sorted(checks, key=lambda check: bool(check.get("holds")))
    return "; ".join(str(check.get("text")) for check in ordered)


def baseline_detail(
    objective: Objective | None, scores: Scores, *, examples: Mapping[str, dspy.Example], alpha: float
) -> str:
    """Return the baseline step's ``detail``: ``baseline``, and with an objective whether the baseline meets it."""
    if objective is None:
        return "baseline"
    checks = [check.to_json() for check in check_guardrails(objective, scores, examples=examples, alpha=alpha)]
    if all(check["holds"] for check in checks):
        return f"baseline; it meets every guardrail ({describe_checks(checks)})"
    return (
        f"baseline; it breaks a guardrail ({describe_checks(checks)}): feasibility first, a candidate that meets "
        "every guardrail is accepted without a gain test"
    )


def meets_estimates(objective: Objective, scores: Scores, *, examples: Mapping[str, dspy.Example]) -> bool:
    """Return whether every guardrail's point estimate on ``scores`` is within its bound (no confidence asked).

    Screening on a mini-batch only shortlists: while the incumbent breaks a guardrail, a candidate
    whose mini-batch estimates meet every one is worth a full evaluation even when it scores lower.
    """
    for check in check_guardrails(objective, scores, examples=examples, alpha=0.5):
        if check.estimate is None:
            return False
        if (check.estimate > check.bound) if check.side == "at_most" else (check.estimate < check.bound):
            return False
    return True


def held_out_checks(
    objective: Objective, scores: Mapping[str, Scores], *, examples: Sequence[Any], alpha: float
) -> dict[str, list[dict[str, Any]]]:
    """Return each confirmation evaluation's guardrail checks (candidate id -> checks as JSON), as the run records them.

    Args:
        objective: the run's objective.
        scores: candidate id -> its scores on the confirmation set (the baseline and the best).
        examples: the confirmation set as (example id, position, example) triples.
        alpha: the confirmation's level (the optimizer's ``alpha``; the objective's own wins).
    """
    by_id = {example_id: example for example_id, _, example in examples}
    return {
        key: [check.to_json() for check in check_guardrails(objective, value, examples=by_id, alpha=alpha)]
        for key, value in scores.items()
    }


def held_out_sentence(guardrails: Mapping[str, Sequence[Mapping[str, Any]]] | None, best_id: str) -> str:
    """Return what the headline adds about the guardrails on the confirmation set ('' without an objective)."""
    if not guardrails or best_id not in guardrails:
        return ""
    best = guardrails[best_id]
    baseline = guardrails.get("c0") or []
    if all(check.get("holds") for check in best):
        broken = [check for check in baseline if not check.get("holds")]
        also = f", which the baseline does not ({describe_checks(broken)})" if broken else ""
        return f" On the same held-out data {best_id} meets every guardrail ({describe_checks(best)}){also}."
    failing = [check for check in best if not check.get("holds")]
    return (
        f" But on the same held-out data {best_id} is not shown to meet every guardrail ({describe_checks(failing)}): "
        "no gain within the objective is claimed."
    )
