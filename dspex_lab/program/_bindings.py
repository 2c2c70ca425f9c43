"""Semantic bindings: a variable's value mapped to the LM settings and prompt text of each bound predictor.

A shared variable such as ``rigor`` means several things at once: at ``"high"`` the
``solve`` predictor runs cold with a "work step by step" prefix and ``verify`` gets a
stricter suffix; at ``"low"`` both run warmer and terser. A :class:`Binding` declares
that mapping once, as data: for each value of the variable's domain (or a ``default``),
each bound predictor's :class:`BoundSettings` (``temperature``, ``max_tokens``,
``model``, an instruction ``prefix`` and ``suffix``).

A binding travels inside a program spec, so it is checked like the rest of a spec
that may come from someone else: typed settings within ranges, at most
:data:`MAX_BINDING_TEXT_CHARACTERS` characters of each text and
:data:`MAX_BINDING_TOTAL_CHARACTERS` in all, at most :data:`MAX_BINDING_CASES` cases of
:data:`MAX_BOUND_PREDICTORS` predictors, predictor names that are dotted public
identifiers (never a private attribute or an import path), and no key or value that
carries an endpoint or a credential. Model values are checked against the allow-list
when the program is built (:func:`~dspex_lab.program.set_allowed_models`).

In JSON a binding is ``{"cases": [{"value": ..., "predictors": {name: settings}}, ...],
"default": {name: settings}}``: a list, because a variable's values (``true``, ``3``)
are not all JSON object keys.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from dspex_lab.errors import ProgramSpecError, bounded_repr
from dspex_lab.program._safety import _URL, FORBIDDEN_INIT_KEYS
from dspex_lab.trace.redaction import is_secret_key, mask_text

__all__ = [
    "BINDING_SETTINGS",
    "MAX_BINDING_CASES",
    "MAX_BINDING_TEXT_CHARACTERS",
    "MAX_BINDING_TOTAL_CHARACTERS",
    "MAX_BOUND_PREDICTORS",
    "Binding",
    "BoundSettings",
    "PredictorSettings",
    "check_predictor_name",
    "wrap_instructions",
]

# The LM settings a binding may give a predictor (the same names as the per-predictor targets).
BINDING_SETTINGS = ("temperature", "max_tokens", "model")
_TEXTS = ("prefix", "suffix")
# A "rigor" or "verbosity" has a handful of values and binds a handful of stages; these are far above that.
MAX_BINDING_CASES = 256
MAX_BOUND_PREDICTORS = 32
# A prefix is a sentence or a paragraph of instructions, not a document.
MAX_BINDING_TEXT_CHARACTERS = 4_000
MAX_BINDING_TOTAL_CHARACTERS = 200_000
MAX_PREDICTOR_NAME_CHARACTERS = 200
MAX_MODEL_CHARACTERS = 200
# Providers accept temperatures in [0, 2]; no provider takes a million output tokens per call.
MAX_TEMPERATURE = 2.0
MAX_TOKENS = 1_000_000


def check_predictor_name(name: Any, *, where: str) -> str:
    """Return ``name`` if it can name a predictor (``solve``, ``solve.predict``), else raise.

    A predictor name is a dotted path of public identifiers, as ``dspy.Module.named_predictors``
    gives them: never empty, private (``_x``), or longer than :data:`MAX_PREDICTOR_NAME_CHARACTERS`.

    Raises:
        ProgramSpecError: saying ``where`` the name was given.
    """
    if not isinstance(name, str) or not 0 < len(name) <= MAX_PREDICTOR_NAME_CHARACTERS:
        raise ProgramSpecError(f"{where}: a predictor name is a non-empty string, got {bounded_repr(name)}")
    if not all(part.isidentifier() and not part.startswith("_") for part in name.split(".")):
        raise ProgramSpecError(
            f"{where}: {bounded_repr(name)} is not a predictor name; predictors are named by public "
            "attribute paths such as 'solve' or 'solve.predict'"
        )
    return name


def _number(value: Any, *, where: str, setting: str, low: float, high: float, integer: bool) -> float | int:
    kinds: tuple[type, ...] = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, kinds) or not math.isfinite(float(value)):
        kind = "an integer" if integer else "a number"
        raise ProgramSpecError(f"{where}: {setting} must be {kind} in [{low:g}, {high:g}], got {bounded_repr(value)}")
    if not low <= value <= high:
        raise ProgramSpecError(f"{where}: {setting} must be in [{low:g}, {high:g}], got {value}")
    return int(value) if integer else float(value)


def _text(value: Any, *, where: str, setting: str) -> str:
    if not isinstance(value, str):
        raise ProgramSpecError(f"{where}: {setting} must be a string, got {bounded_repr(value)}")
    if len(value) > MAX_BINDING_TEXT_CHARACTERS:
        raise ProgramSpecError(
            f"{where}: {setting} has {len(value):,} characters, more than {MAX_BINDING_TEXT_CHARACTERS:,}"
        )
    if mask_text(value) != value:
        raise ProgramSpecError(f"{where}: {setting} holds a key-shaped value; a program spec carries no credentials")
    return value


def _model(value: Any, *, where: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_MODEL_CHARACTERS:
        raise ProgramSpecError(
            f"{where}: model must be a model name such as 'lab/large' of at most {MAX_MODEL_CHARACTERS} "
            f"characters, got {bounded_repr(value)}"
        )
    if _URL.match(value) or mask_text(value) != value:
        raise ProgramSpecError(
            f"{where}: model must name a model, not an endpoint or a credential; configure the LM with dx.Context"
        )
    return value.strip()


@dataclass(frozen=True)
class BoundSettings:
    """What a binding gives one predictor at one value: LM settings and text around its instructions.

    ``None`` and ``""`` leave a setting to whatever else configures it (a module-wide
    variable, the context LM, the signature's instructions).

    Examples:
        >>> BoundSettings.from_data({"temperature": 0, "prefix": "Check each step."}).to_dict()
        {'temperature': 0.0, 'prefix': 'Check each step.'}
    """

    temperature: float | None = None
    max_tokens: int | None = None
    model: str | None = None
    prefix: str = ""
    suffix: str = ""

    @classmethod
    def from_data(cls, data: Any, *, where: str = "binding") -> BoundSettings:
        """Check a mapping of setting → value (from Python or JSON) and return it as settings.

        Raises:
            ProgramSpecError: the data is not a mapping, names an unknown setting or an endpoint
                or credential, or holds a value of the wrong type or out of range.
        """
        if isinstance(data, BoundSettings):
            return data
        if not isinstance(data, Mapping):
            raise ProgramSpecError(
                f"{where}: settings are a mapping such as {{'temperature': 0.0, 'prefix': '...'}}, "
                f"got {bounded_repr(data)}"
            )
        known = (*BINDING_SETTINGS, *_TEXTS)
        for key in data:
            normalised = str(key).lower().replace("-", "_")
            if key not in known and (normalised in FORBIDDEN_INIT_KEYS or is_secret_key(str(key))):
                raise ProgramSpecError(
                    f"{where}: {bounded_repr(key)} is refused; a program spec cannot carry endpoints or "
                    "credentials (configure the LM with dx.Context(lm=...))"
                )
            if key not in known:
                raise ProgramSpecError(f"{where}: unknown setting {bounded_repr(key)}; expected some of {list(known)}")
        values: dict[str, Any] = {}
        if data.get("temperature") is not None:
            values["temperature"] = _number(
                data["temperature"], where=where, setting="temperature", low=0.0, high=MAX_TEMPERATURE, integer=False
            )
        if data.get("max_tokens") is not None:
            values["max_tokens"] = _number(
                data["max_tokens"], where=where, setting="max_tokens", low=1, high=MAX_TOKENS, integer=True
            )
        if data.get("model") is not None:
            values["model"] = _model(data["model"], where=where)
        for key in _TEXTS:
            if data.get(key) is not None:
                values[key] = _text(data[key], where=where, setting=key)
        return cls(**values)

    def lm_settings(self) -> dict[str, Any]:
        """Return the LM settings this entry sets (temperature, max_tokens, model)."""
        return {key: getattr(self, key) for key in BINDING_SETTINGS if getattr(self, key) is not None}

    def to_dict(self) -> dict[str, Any]:
        """Return the settings this entry sets, as JSON-ready data."""
        data = self.lm_settings()
        data.update({key: getattr(self, key) for key in _TEXTS if getattr(self, key)})
        return data


# One case's settings: (predictor, settings) pairs in declaration order.
PredictorSettingsMap = tuple[tuple[str, BoundSettings], ...]


def _predictor_map(data: Any, *, where: str) -> PredictorSettingsMap:
    if isinstance(data, tuple) and all(isinstance(item, tuple) and len(item) == 2 for item in data):
        data = dict(data)
    if not isinstance(data, Mapping):
        raise ProgramSpecError(
            f"{where}: expected a mapping of predictor → settings such as {{'solve': {{'temperature': 0.0}}}}, "
            f"got {bounded_repr(data)}"
        )
    if len(data) > MAX_BOUND_PREDICTORS:
        raise ProgramSpecError(f"{where}: {len(data)} predictors, more than {MAX_BOUND_PREDICTORS}")
    return tuple(
        (
            check_predictor_name(predictor, where=where),
            BoundSettings.from_data(settings, where=f"{where}, predictor {predictor!r}"),
        )
        for predictor, settings in data.items()
    )


def _case_pairs(cases: Any) -> list[tuple[Any, Any]]:
    if isinstance(cases, Mapping):
        return list(cases.items())
    if isinstance(cases, (str, bytes)) or not isinstance(cases, Iterable):
        raise ProgramSpecError(
            "binding: cases are a mapping of value → {predictor: settings}, "
            f"such as {{'high': {{'solve': {{'temperature': 0.0}}}}}}, got {bounded_repr(cases)}"
        )
    pairs = list(cases)[: MAX_BINDING_CASES + 1]
    if not all(isinstance(pair, tuple) and len(pair) == 2 for pair in pairs):
        raise ProgramSpecError(f"binding: cases must be (value, settings) pairs, got {bounded_repr(pairs)}")
    return pairs


@dataclass(frozen=True)
class Binding:
    """A declared mapping from a variable's value to each bound predictor's settings and prompt text.

    Give it to a ``Choice``, ``Bool`` or ``Int`` variable as ``binding=``; every value of the
    variable's domain needs a case, or the binding a ``default``. Building the program gives each
    bound predictor its own LM (the module's or context's LM with these settings) and wraps its
    instructions in the prefix and suffix (see :meth:`dspex_lab.program.Program.build`).

    Args:
        cases: value → {predictor: settings}; settings are a mapping with some of
            ``temperature``, ``max_tokens``, ``model``, ``prefix``, ``suffix``.
        default: {predictor: settings} for the values without a case.

    Examples:
        >>> rigor = Binding({"high": {"solve": {"temperature": 0.0, "prefix": "Work step by step."}},
        ...                  "low": {"solve": {"temperature": 0.7}}})
        >>> rigor.settings_for("high")["solve"].prefix
        'Work step by step.'
        >>> Binding.from_dict(rigor.to_dict()) == rigor
        True
    """

    cases: Any
    default: Any = None

    def __post_init__(self) -> None:
        pairs = _case_pairs(self.cases)
        if len(pairs) > MAX_BINDING_CASES:
            raise ProgramSpecError(f"binding: more than {MAX_BINDING_CASES} cases")
        cases = tuple((value, _predictor_map(settings, where=f"binding case {value!r}")) for value, settings in pairs)
        default = None if self.default is None else _predictor_map(self.default, where="binding default")
        object.__setattr__(self, "cases", cases)
        object.__setattr__(self, "default", default)
        total = sum(
            len(settings.prefix) + len(settings.suffix)
            for predictor_map in (*(settings for _, settings in cases), default or ())
            for _, settings in predictor_map
        )
        if total > MAX_BINDING_TOTAL_CHARACTERS:
            raise ProgramSpecError(
                f"binding: {total:,} characters of prompt text in all, more than {MAX_BINDING_TOTAL_CHARACTERS:,}"
            )

    def for_domain(self, validate: Callable[[Any], Any], domain: tuple[Any, ...] | None, *, owner: str) -> Binding:
        """Return this binding with its case values checked against a variable's domain.

        Args:
            validate: the variable's value check; a case value it refuses is an error.
            domain: every value of the domain when it is finite and small, else None (then a
                ``default`` is required).
            owner: the variable's kind, for messages (``"Choice"``).

        Raises:
            ProgramSpecError: a case value is outside the domain or given twice, or a value of the
                domain has no case and there is no default.
        """
        checked: list[tuple[Any, PredictorSettingsMap]] = []
        seen: list[Any] = []
        for value, settings in self.cases:
            try:
                normalised = validate(value)
            except Exception:
                raise ProgramSpecError(
                    f"{owner} binding: case {bounded_repr(value)} is not one of the variable's values"
                ) from None
            if any(_same(normalised, other) for other in seen):
                raise ProgramSpecError(f"{owner} binding: case {bounded_repr(value)} is given twice")
            seen.append(normalised)
            checked.append((normalised, settings))
        if self.default is None:
            if domain is None:
                raise ProgramSpecError(
                    f"{owner} binding: the variable has too many values to list (more than {MAX_BINDING_CASES}) "
                    "or is unbounded; give the binding a default"
                )
            missing = [value for value in domain if not any(_same(value, other) for other in seen)]
            if missing:
                raise ProgramSpecError(
                    f"{owner} binding: no case for {bounded_repr(missing)} and no default; "
                    "every value needs settings (or give default=...)"
                )
        return Binding(tuple(checked), default=self.default)

    def settings_for(self, value: Any) -> dict[str, BoundSettings]:
        """Return predictor → settings at ``value`` (its case, else the default, else nothing)."""
        for case, settings in self.cases:
            if _same(case, value):
                return dict(settings)
        return dict(self.default or ())

    def predictors(self) -> list[str]:
        """Return every predictor any case or the default binds, in first-declared order."""
        names: dict[str, None] = {}
        for predictor_map in (*(settings for _, settings in self.cases), self.default or ()):
            names.update((predictor, None) for predictor, _ in predictor_map)
        return list(names)

    def claims(self) -> set[tuple[str, str]]:
        """Return every (setting, predictor) pair some value of the binding sets (LM settings only)."""
        return {
            (setting, predictor)
            for predictor_map in (*(settings for _, settings in self.cases), self.default or ())
            for predictor, settings in predictor_map
            for setting in settings.lm_settings()
        }

    def to_dict(self) -> dict[str, Any]:
        """Return the binding as JSON-ready data (see the module docstring for the shape)."""
        data: dict[str, Any] = {
            "cases": [
                {"value": value, "predictors": {name: settings.to_dict() for name, settings in predictor_map}}
                for value, predictor_map in self.cases
            ]
        }
        if self.default is not None:
            data["default"] = {name: settings.to_dict() for name, settings in self.default}
        return data

    @classmethod
    def from_dict(cls, data: Any) -> Binding:
        """Rebuild a binding from :meth:`to_dict` data, checking its JSON shape first.

        Raises:
            ProgramSpecError: the data is not ``{"cases": [...], "default": {...}}`` or a case
                is not ``{"value": ..., "predictors": {...}}``.
        """
        if not isinstance(data, Mapping) or not isinstance(data.get("cases"), list):
            raise ProgramSpecError(
                "binding must be a JSON object {'cases': [{'value': ..., 'predictors': {...}}], 'default': {...}}, "
                f"got {bounded_repr(data)}"
            )
        extra = sorted(str(key) for key in set(data) - {"cases", "default"})
        if extra:
            raise ProgramSpecError(f"binding: unknown keys {bounded_repr(extra)}; expected 'cases' and 'default'")
        if len(data["cases"]) > MAX_BINDING_CASES:
            raise ProgramSpecError(f"binding: more than {MAX_BINDING_CASES} cases")
        pairs = []
        for case in data["cases"]:
            if not isinstance(case, Mapping) or set(case) != {"value", "predictors"}:
                raise ProgramSpecError(
                    f"binding: a case is {{'value': ..., 'predictors': {{...}}}}, got {bounded_repr(case)}"
                )
            pairs.append((case["value"], case["predictors"]))
        return cls(tuple(pairs), default=data.get("default"))


def _same(left: Any, right: Any) -> bool:
    """Tell whether two domain values are the same value (``True`` is not ``1`` here)."""
    return bool(left == right) and isinstance(left, bool) == isinstance(right, bool)


@dataclass(frozen=True)
class PredictorSettings:
    """The settings and prompt text a program puts in force on one predictor, and which variables set them.

    ``None`` means the program leaves the setting to the LM the predictor runs on (the
    context's, or the ``lm`` given to :meth:`~dspex_lab.program.Program.build`).

    Attributes:
        predictor: the predictor's name (``solve``, ``solve.predict``).
        model: the model it calls, when the program chooses one.
        temperature: its temperature, when the program sets one.
        max_tokens: its output-token limit, when the program sets one.
        instructions: the instructions it runs with: ``base_instructions`` wrapped in the
            bindings' prefixes and suffixes.
        base_instructions: the signature's instructions or an instructions variable's text.
        prefixes: the bindings' prefixes, in the order the variables are declared.
        suffixes: the bindings' suffixes, in the same order.
        sources: setting (``temperature``, ``instructions``, ``prefix``...) → the variables that set it.
    """

    predictor: str
    model: str | None
    temperature: float | None
    max_tokens: int | None
    instructions: str
    base_instructions: str
    prefixes: tuple[str, ...] = ()
    suffixes: tuple[str, ...] = ()
    sources: Mapping[str, tuple[str, ...]] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the record as JSON-ready data (for displays and journals)."""
        return {
            "predictor": self.predictor,
            "model": self.model,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "instructions": self.instructions,
            "base_instructions": self.base_instructions,
            "prefixes": list(self.prefixes),
            "suffixes": list(self.suffixes),
            "sources": {key: list(names) for key, names in (self.sources or {}).items()},
        }


def wrap_instructions(instructions: str, prefixes: Iterable[str], suffixes: Iterable[str]) -> str:
    """Return ``instructions`` with the prefixes before and the suffixes after, blank-line separated.

    Examples:
        >>> print(wrap_instructions("Answer.", ["Be careful."], ["Check the result."]))
        Be careful.
        <BLANKLINE>
        Answer.
        <BLANKLINE>
        Check the result.
    """
    return "\n\n".join(part for part in (*prefixes, instructions, *suffixes) if part)
