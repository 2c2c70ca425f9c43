"""Typed variables: the configuration space of a program."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass, field, replace
from typing import Any, ClassVar

import numpy as np

from dspex_lab.errors import ProgramSpecError, VariableError, bounded_repr
from dspex_lab.program._bindings import MAX_BINDING_CASES, Binding

__all__ = ["Bool", "Choice", "Demos", "Float", "Int", "ModuleType", "Text", "Variable", "variable_from_dict"]

# Targets a variable can bind to besides dotted attribute paths.
LM_TARGETS = ("temperature", "max_tokens", "model")
PROGRAM_TARGETS = ("instructions", "demos", "module")
# A target is a dotted attribute path or one of the names above: a few dozen characters.
MAX_TARGET_CHARACTERS = 200
# A variable shared by every stage of a pipeline binds a handful of targets; far above that is a mistake.
MAX_TARGETS = 32


@dataclass(frozen=True)
class Variable:
    """Base of the typed variables; subclasses add their value domain.

    A variable has a current ``value`` and a ``target`` saying what it configures:
    ``"temperature"``, ``"max_tokens"``, ``"model"`` (the module's LM, or one predictor's
    with ``"temperature:<predictor>"``), ``"instructions"`` or ``"demos"`` (every
    predictor, or one with ``"instructions:<predictor>"``), ``"module"`` (the module
    type), or a dotted attribute path such as ``"retrieve.k"``. When ``target`` is None
    it is inferred from the variable's name when the program is built.

    ``targets`` binds one value to several targets at once
    (``targets=("temperature:plan", "temperature:solve")``); it excludes ``target``.
    ``binding`` (``Choice``, ``Bool`` and ``Int`` only) maps each value to settings and
    prompt text of several predictors (a :class:`~dspex_lab.program.Binding`, or a plain
    mapping value → {predictor: settings}); a bound variable has no target.
    """

    value: Any
    _: KW_ONLY
    target: str | None = None
    targets: tuple[str, ...] | None = None
    binding: Binding | None = None
    description: str = ""
    kind: ClassVar[str] = "variable"
    bindable: ClassVar[bool] = False

    def _check_fields(self) -> None:
        """Check the fields every variable has; subclasses call it first, since a spec may hold anything."""
        owner = type(self).__name__
        if self.target is not None and (not isinstance(self.target, str) or len(self.target) > MAX_TARGET_CHARACTERS):
            raise ProgramSpecError(
                f"{owner}: target must be a string of at most {MAX_TARGET_CHARACTERS} characters "
                f"such as 'temperature' or 'retrieve.k', got {bounded_repr(self.target)}"
            )
        if not isinstance(self.description, str):
            raise ProgramSpecError(f"{owner}: description must be a string, got {bounded_repr(self.description)}")
        if self.targets is not None:
            object.__setattr__(self, "targets", _checked_targets(owner, self.targets, target=self.target))
        if self.binding is not None:
            if not self.bindable:
                raise ProgramSpecError(
                    f"{owner}: binding= needs a Choice, Bool or Int variable (a value that names a case), not a {owner}"
                )
            if self.target is not None or self.targets is not None:
                raise ProgramSpecError(
                    f"{owner}: a variable with binding= configures predictors through it; give no target or targets"
                )
            if not isinstance(self.binding, Binding):
                object.__setattr__(self, "binding", Binding(self.binding))

    def _check_binding(self, domain: tuple[Any, ...] | None) -> None:
        """Check the binding's cases against this variable's domain (every value of ``domain`` covered)."""
        if self.binding is not None:
            checked = self.binding.for_domain(
                lambda value: self.validate(value, name="binding case"), domain, owner=type(self).__name__
            )
            object.__setattr__(self, "binding", checked)

    def validate(self, value: Any, *, name: str = "?") -> Any:
        """Return ``value`` normalised to this variable's domain or raise VariableError."""
        raise NotImplementedError

    def sample(self, rng: np.random.Generator) -> Any:
        """Draw a value from this variable's domain with ``rng``."""
        raise NotImplementedError

    def allowed(self) -> str:
        """Describe the allowed values, for error messages and displays."""
        raise NotImplementedError

    def with_value(self, value: Any, *, name: str = "?") -> Variable:
        """Return a copy holding ``value`` after validation."""
        return replace(self, value=self.validate(value, name=name))

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready description of this variable."""
        data: dict[str, Any] = {"type": self.kind, "value": self.value}
        if self.target is not None:
            data["target"] = self.target
        if self.targets is not None:
            data["targets"] = list(self.targets)
        if self.binding is not None:
            data["binding"] = self.binding.to_dict()
        if self.description:
            data["description"] = self.description
        data.update(self._domain())
        return data

    def _domain(self) -> dict[str, Any]:
        return {}


def _checked_targets(owner: str, targets: Any, *, target: str | None) -> tuple[str, ...]:
    """Return ``targets`` as a tuple after checking it is a short list of distinct target strings."""
    if target is not None:
        raise ProgramSpecError(f"{owner}: give target= or targets=, not both (got target={bounded_repr(target)})")
    if isinstance(targets, (str, bytes)) or not isinstance(targets, (list, tuple)):
        raise ProgramSpecError(
            f"{owner}: targets must be a list of targets such as ['temperature:plan', 'temperature:solve'], "
            f"got {bounded_repr(targets)}"
        )
    if not 0 < len(targets) <= MAX_TARGETS:
        raise ProgramSpecError(f"{owner}: targets must list 1 to {MAX_TARGETS} targets, got {len(targets)}")
    for item in targets:
        if not isinstance(item, str) or not item or len(item) > MAX_TARGET_CHARACTERS:
            raise ProgramSpecError(
                f"{owner}: each target is a non-empty string of at most {MAX_TARGET_CHARACTERS} characters, "
                f"got {bounded_repr(item)}"
            )
    if len(set(targets)) != len(targets):
        raise ProgramSpecError(f"{owner}: targets lists a target twice: {bounded_repr(list(targets))}")
    return tuple(targets)


def _check_domain_number(owner: str, field: str, value: Any, *, integer: bool = False) -> None:
    """Refuse a domain bound (low, high, step, max...) that is not a number (of the right kind)."""
    kinds: tuple[type, ...] = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, kinds) or (not integer and math.isnan(value)):
        kind = "an integer" if integer else "a number"
        raise ProgramSpecError(f"{owner}: {field} must be {kind}, got {bounded_repr(value)}")


def _check_number(value: Any, *, name: str, allowed: str, integer: bool) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise VariableError(name, value, allowed, detail=f"expected a number, got {type(value).__name__}")
    if integer:
        if isinstance(value, (float, np.floating)) and not float(value).is_integer():
            raise VariableError(name, value, allowed, detail="expected an integer")
        return int(value)
    if not math.isfinite(float(value)):
        raise VariableError(name, value, allowed, detail="expected a finite number")
    return float(value)


@dataclass(frozen=True, kw_only=True)
class Float(Variable):
    """A real-valued variable in ``[low, high]`` (temperature, top_p, thresholds).

    Examples:
        >>> Float(0.7, low=0.0, high=1.5).validate(0.2, name="temperature")
        0.2
    """

    low: float = -math.inf
    high: float = math.inf
    log: bool = False
    step: float | None = None
    kind: ClassVar[str] = "float"

    def __post_init__(self) -> None:
        self._check_fields()
        _check_domain_number("Float", "low", self.low)
        _check_domain_number("Float", "high", self.high)
        if not isinstance(self.log, bool):
            raise ProgramSpecError(f"Float: log must be true or false, got {bounded_repr(self.log)}")
        if self.step is not None:
            _check_domain_number("Float", "step", self.step)
            if not 0 < self.step < math.inf:
                raise ProgramSpecError(f"Float: step must be a positive finite number, got {self.step}")
        if self.low > self.high:
            raise ProgramSpecError(f"Float: low={self.low} is above high={self.high}")
        if self.log and self.low <= 0:
            raise ProgramSpecError("Float(log=True) needs low > 0")
        object.__setattr__(self, "value", self.validate(self.value, name="default"))

    def allowed(self) -> str:
        return f"a float in [{self.low}, {self.high}]"

    def validate(self, value: Any, *, name: str = "?") -> float:
        number = float(_check_number(value, name=name, allowed=self.allowed(), integer=False))
        if not self.low <= number <= self.high:
            raise VariableError(name, value, self.allowed())
        return number

    def sample(self, rng: np.random.Generator) -> float:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise VariableError("?", None, self.allowed(), detail="cannot sample an unbounded Float")
        if self.log:
            drawn = float(np.exp(rng.uniform(np.log(self.low), np.log(self.high))))
        else:
            drawn = float(rng.uniform(self.low, self.high))
        if self.step:
            drawn = self.low + round((drawn - self.low) / self.step) * self.step
        return min(max(round(drawn, 12), self.low), self.high)

    def _domain(self) -> dict[str, Any]:
        domain: dict[str, Any] = {}
        if math.isfinite(self.low):
            domain["low"] = self.low
        if math.isfinite(self.high):
            domain["high"] = self.high
        if self.log:
            domain["log"] = True
        if self.step is not None:
            domain["step"] = self.step
        return domain


@dataclass(frozen=True, kw_only=True)
class Int(Variable):
    """An integer variable in ``[low, high]`` (max_tokens, retrieval k)."""

    low: int | None = None
    high: int | None = None
    kind: ClassVar[str] = "int"
    bindable: ClassVar[bool] = True

    def __post_init__(self) -> None:
        self._check_fields()
        for bound in ("low", "high"):
            if getattr(self, bound) is not None:
                _check_domain_number("Int", bound, getattr(self, bound), integer=True)
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ProgramSpecError(f"Int: low={self.low} is above high={self.high}")
        object.__setattr__(self, "value", self.validate(self.value, name="default"))
        finite = self.low is not None and self.high is not None and self.high - self.low < MAX_BINDING_CASES
        self._check_binding(tuple(range(self.low, self.high + 1)) if finite else None)  # type: ignore[arg-type]

    def allowed(self) -> str:
        low = "-inf" if self.low is None else self.low
        high = "inf" if self.high is None else self.high
        return f"an integer in [{low}, {high}]"

    def validate(self, value: Any, *, name: str = "?") -> int:
        number = int(_check_number(value, name=name, allowed=self.allowed(), integer=True))
        if (self.low is not None and number < self.low) or (self.high is not None and number > self.high):
            raise VariableError(name, value, self.allowed())
        return number

    def sample(self, rng: np.random.Generator) -> int:
        if self.low is None or self.high is None:
            raise VariableError("?", None, self.allowed(), detail="cannot sample an unbounded Int")
        return int(rng.integers(self.low, self.high + 1))

    def _domain(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in ("low", "high") if getattr(self, key) is not None}


@dataclass(frozen=True, kw_only=True)
class Choice(Variable):
    """One of a fixed list of JSON values (model names, adapters, strategies)."""

    choices: tuple[Any, ...] = ()
    kind: ClassVar[str] = "choice"
    bindable: ClassVar[bool] = True

    def __post_init__(self) -> None:
        self._check_fields()
        object.__setattr__(self, "choices", tuple(self.choices))
        if not self.choices:
            raise ProgramSpecError(f"{type(self).__name__} needs a non-empty choices list")
        object.__setattr__(self, "value", self.validate(self.value, name="default"))
        self._check_binding(self.choices)

    def allowed(self) -> str:
        return f"one of {bounded_repr(list(self.choices), limit=300)}"

    def validate(self, value: Any, *, name: str = "?") -> Any:
        if value not in self.choices:
            raise VariableError(name, value, self.allowed())
        return value

    def sample(self, rng: np.random.Generator) -> Any:
        return self.choices[int(rng.integers(len(self.choices)))]

    def _domain(self) -> dict[str, Any]:
        return {"choices": list(self.choices)}


@dataclass(frozen=True, kw_only=True)
class Bool(Variable):
    """A boolean switch."""

    kind: ClassVar[str] = "bool"
    bindable: ClassVar[bool] = True

    def __post_init__(self) -> None:
        self._check_fields()
        object.__setattr__(self, "value", self.validate(self.value, name="default"))
        self._check_binding((False, True))

    def allowed(self) -> str:
        return "True or False"

    def validate(self, value: Any, *, name: str = "?") -> bool:
        if not isinstance(value, (bool, np.bool_)):
            raise VariableError(name, value, self.allowed())
        return bool(value)

    def sample(self, rng: np.random.Generator) -> bool:
        return bool(rng.integers(2))


@dataclass(frozen=True, kw_only=True)
class Text(Variable):
    """Free text, typically instructions, with an optional length limit."""

    max_length: int | None = None
    kind: ClassVar[str] = "text"

    def __post_init__(self) -> None:
        self._check_fields()
        if self.max_length is not None:
            _check_domain_number("Text", "max_length", self.max_length, integer=True)
        object.__setattr__(self, "value", self.validate(self.value, name="default"))

    def allowed(self) -> str:
        return "a string" + (f" of at most {self.max_length} characters" if self.max_length else "")

    def validate(self, value: Any, *, name: str = "?") -> str:
        if not isinstance(value, str):
            raise VariableError(name, value, self.allowed(), detail=f"got {type(value).__name__}")
        if self.max_length is not None and len(value) > self.max_length:
            raise VariableError(name, f"{value[:40]}…", self.allowed(), detail=f"length {len(value)}")
        return value

    def sample(self, rng: np.random.Generator) -> str:
        # Text has no finite domain to draw from; proposals come from optimizers.
        return self.value

    def _domain(self) -> dict[str, Any]:
        return {"max_length": self.max_length} if self.max_length is not None else {}


@dataclass(frozen=True)
class Demos(Variable):
    """Few-shot demonstrations: a list of example dicts, at most ``max`` of them."""

    value: Any = field(default_factory=tuple)
    _: KW_ONLY
    max: int = 8
    kind: ClassVar[str] = "demos"

    def __post_init__(self) -> None:
        self._check_fields()
        _check_domain_number("Demos", "max", self.max, integer=True)
        object.__setattr__(self, "value", self.validate(self.value, name="default"))

    def allowed(self) -> str:
        return f"a list of at most {self.max} demos (dicts of field -> value)"

    def validate(self, value: Any, *, name: str = "?") -> tuple[dict[str, Any], ...]:
        if isinstance(value, (str, bytes, dict)) or not isinstance(value, Sequence):
            raise VariableError(name, value, self.allowed(), detail=f"got {type(value).__name__}")
        if len(value) > self.max:
            raise VariableError(name, f"<{len(value)} demos>", self.allowed())
        demos = []
        for position, demo in enumerate(value):
            if hasattr(demo, "toDict"):
                demo = demo.toDict()
            if not isinstance(demo, dict):
                raise VariableError(name, demo, self.allowed(), detail=f"demo {position} is not a dict")
            demos.append(dict(demo))
        return tuple(demos)

    def sample(self, rng: np.random.Generator) -> tuple[dict[str, Any], ...]:
        # Drawing demos needs a training pool; optimizers do that, not the variable.
        return self.value

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["value"] = [dict(demo) for demo in self.value]
        return data

    def _domain(self) -> dict[str, Any]:
        return {"max": self.max}


@dataclass(frozen=True, kw_only=True)
class ModuleType(Choice):
    """The module class itself, swapped at build time (e.g. Predict ↔ ChainOfThought)."""

    kind: ClassVar[str] = "module_type"
    # Swapping the module class changes which predictors exist: a binding to them would not hold.
    bindable: ClassVar[bool] = False


_TYPES: dict[str, type[Variable]] = {cls.kind: cls for cls in (Float, Int, Choice, Bool, Text, Demos, ModuleType)}


def variable_from_dict(data: dict[str, Any], *, name: str = "?") -> Variable:
    """Rebuild a variable from :meth:`Variable.to_dict` output."""
    data = dict(data)
    kind = data.pop("type", None)
    if not isinstance(kind, str) or kind not in _TYPES:
        raise ProgramSpecError(
            f"variable {bounded_repr(name)}: unknown type {bounded_repr(kind)}; expected one of {sorted(_TYPES)}"
        )
    cls = _TYPES[kind]
    if "choices" in data:
        if not isinstance(data["choices"], (list, tuple)):
            raise ProgramSpecError(
                f"variable {bounded_repr(name)}: 'choices' must be a list, got {bounded_repr(data['choices'])}"
            )
        data["choices"] = tuple(data["choices"])
    try:
        if data.get("binding") is not None:
            data["binding"] = Binding.from_dict(data["binding"])
        return cls(**data)
    except VariableError as error:
        if error.variable == "default":  # the constructor checks its value before it has a name: give it one
            raise VariableError(name, error.value, error.allowed) from None
        raise
    except ProgramSpecError as error:  # a domain field of the wrong kind: say which variable holds it
        raise ProgramSpecError(f"variable {bounded_repr(name)} ({kind}): {error}") from None
    except (TypeError, ValueError, OverflowError) as error:
        # A spec is data from anyone: a domain of the wrong JSON type is a spec error, not a crash.
        raise ProgramSpecError(f"variable {bounded_repr(name)} ({kind}): {str(error)[:300]}") from None
