"""The frozen program spec and its hydration into a live ``dspy.Module``."""

from __future__ import annotations

import functools
import hashlib
import html
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import dspy
import numpy as np

from dspex_lab import _hooks
from dspex_lab.errors import ProgramSpecError, VariableError, bounded_repr
from dspex_lab.program._bindings import BoundSettings, PredictorSettings, check_predictor_name, wrap_instructions
from dspex_lab.program._bounded import check_spec_value, parse_json_spec
from dspex_lab.program._constraints import Constraint
from dspex_lab.program._dspy_io import program_from_dspy, save_dspy
from dspex_lab.program._registry import module_name, resolve_module
from dspex_lab.program._safety import (
    check_attribute_target,
    check_init,
    check_model_allowed,
    set_attribute_in_tree,
)
from dspex_lab.program._variables import (
    LM_TARGETS,
    PROGRAM_TARGETS,
    Choice,
    Demos,
    Float,
    Int,
    ModuleType,
    Text,
    Variable,
    variable_from_dict,
)

__all__ = ["Program"]

SPEC_VERSION = 1


def _lm_resolver(model: str) -> dspy.BaseLM:
    """Return the LM a ``model`` variable's value names (the package root plugs in the lab models)."""
    resolver = _hooks.lm_resolver
    return resolver(model) if resolver is not None else dspy.LM(model)


def _canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


@functools.lru_cache(maxsize=256)
def _check_signature(signature: str) -> None:
    # Parsing builds a pydantic model (milliseconds); an optimizer makes many programs with one signature.
    try:
        dspy.Signature(signature)
    except Exception as error:
        raise ProgramSpecError(f"signature {bounded_repr(signature)} is not valid: {str(error)[:300]}") from None


def _infer_targets(name: str, variable: Variable) -> tuple[str, ...]:
    """Return what a variable binds to: its targets, its one target (inferred from its name), or none (a binding)."""
    if variable.binding is not None:
        return ()
    if variable.targets is not None:
        return variable.targets
    if variable.target is not None:
        return (variable.target,)
    if isinstance(variable, ModuleType):
        return ("module",)
    if isinstance(variable, Demos):
        return ("demos",)
    return (name,)


# (setting, predictor) → variable; predictor "" is the whole module.
_Claims = dict[tuple[str, str], str]


def _check_claims(variables: Mapping[str, Variable], targets: Mapping[str, tuple[str, ...]]) -> None:
    """Refuse two variables setting the same LM setting of the same predictor (or of the whole module).

    A module-wide setting (``temperature``) is the default beneath per-predictor ones
    (``temperature:solve``, a binding's ``solve`` entry), so those two do not clash.
    """
    claims: _Claims = {}

    def claim(setting: str, predictor: str, variable: str) -> None:
        other = claims.setdefault((setting, predictor), variable)
        if other != variable:
            where = f"predictor {predictor!r}" if predictor else "the whole module"
            raise ProgramSpecError(
                f"variables {other!r} and {variable!r} both set {setting} of {where}; give each setting one "
                "variable (a module-wide one such as 'temperature' is the default beneath per-predictor ones)"
            )

    for name, bound in targets.items():
        for target in bound:
            base, _, predictor = target.partition(":")
            if base in LM_TARGETS:
                claim(base, predictor, name)
        binding = variables[name].binding
        if binding is not None:
            for setting, predictor in sorted(binding.claims()):
                claim(setting, predictor, name)


def _check_target(name: str, variable: Variable, target: str, *, alone: bool) -> None:
    expected: dict[str, tuple[type[Variable], ...]] = {
        "temperature": (Float,),
        "max_tokens": (Int,),
        "model": (Choice, Text),
        "module": (ModuleType, Choice),
    }
    base = target.split(":", 1)[0]
    if base in expected and not isinstance(variable, expected[base]):
        kinds = " or ".join(cls.__name__ for cls in expected[base])
        raise ProgramSpecError(
            f"variable {bounded_repr(name)} binds to {target!r} and must be a {kinds}, not {type(variable).__name__}"
        )
    if base == "instructions" and not isinstance(variable, Text):
        raise ProgramSpecError(f"variable {bounded_repr(name)} binds to {target!r} and must be a Text")
    if base == "demos" and not isinstance(variable, Demos):
        raise ProgramSpecError(f"variable {bounded_repr(name)} binds to {target!r} and must be a Demos")
    if base not in LM_TARGETS and base not in PROGRAM_TARGETS:
        check_attribute_target(name, target)
    if base in LM_TARGETS and ":" in target:
        check_predictor_name(target.partition(":")[2], where=f"variable {bounded_repr(name)}, target {target!r}")
    if base == "module" and (target != "module" or not alone):
        raise ProgramSpecError(
            f"variable {bounded_repr(name)}: 'module' swaps the whole module class and is a variable's only target"
        )
    if isinstance(variable, ModuleType):
        for choice in variable.choices:
            resolve_module(choice)


# A variant's name shows each value in at most this many characters (instructions can be paragraphs).
_VARIANT_VALUE_CHARACTERS = 24


def _variant_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return f"{len(value)} items"
    text = " ".join(str(value).split())
    if len(text) > _VARIANT_VALUE_CHARACTERS:
        return text[: _VARIANT_VALUE_CHARACTERS - 1] + "…"
    return text


def _variant_name(base: str, values: Mapping[str, Any]) -> str:
    """Return the default name of a variant of the program named ``base``, e.g. ``qa[temperature=0.2]``."""
    return f"{base}[{','.join(f'{name}={_variant_value(value)}' for name, value in values.items())}]"


class Program:
    """A DSPy module plus the typed variables that configure it; frozen and JSON-serialisable.

    Args:
        module: a module path (``"dspy.ChainOfThought"``), a registered name, or the class.
        signature: the signature string passed as the module's first argument, if any.
        variables: name → variable; each binds to a target (see :class:`Variable`).
        name: a human name, not part of the fingerprint.
        init: extra JSON keyword arguments for the module's constructor; never endpoints
            or credentials (``api_base``, ``api_key``, headers, URLs... are refused).
        constraints: cross-variable constraints (expressions or :class:`Constraint`).

    Examples:
        >>> import dspex_lab as dx
        >>> qa = dx.Program("dspy.Predict", signature="question -> answer",
        ...                 variables={"temperature": dx.Float(0.7, low=0.0, high=1.5)})
        >>> qa.with_values(temperature=0.2).values
        {'temperature': 0.2}
        >>> dx.Program.from_json(qa.to_json()) == qa
        True
    """

    __slots__ = (
        "_constraints",
        "_fingerprint",
        "_init",
        "_module",
        "_name",
        "_signature",
        "_targets",
        "_variables",
        "_variant",
    )

    def __init__(
        self,
        module: str | type,
        *,
        signature: str | type | None = None,
        variables: Mapping[str, Variable] | None = None,
        name: str | None = None,
        init: Mapping[str, Any] | None = None,
        constraints: Iterable[str | Constraint] | None = None,
    ) -> None:
        module_path = module if isinstance(module, str) else module_name(module)
        resolve_module(module_path)
        if isinstance(signature, type) and issubclass(signature, dspy.Signature):
            signature = signature.signature
        if signature is not None and not isinstance(signature, str):
            raise ProgramSpecError(
                f"signature must be a string such as 'question -> answer', got {bounded_repr(signature)}"
            )
        if signature is not None:
            _check_signature(signature)
        init_values = dict(init or {})
        try:
            _canonical_json(init_values)
        except (TypeError, ValueError) as error:
            raise ProgramSpecError(f"init arguments must be JSON values: {error}") from None
        check_init(init_values)
        checked: dict[str, Variable] = {}
        targets: dict[str, tuple[str, ...]] = {}
        for variable_name, variable in (variables or {}).items():
            if not isinstance(variable, Variable):
                raise ProgramSpecError(
                    f"variable {bounded_repr(variable_name)} must be a dx variable (dx.Float, dx.Choice, ...), "
                    f"got {bounded_repr(variable)}"
                )
            bound = _infer_targets(variable_name, variable)
            for target in bound:
                _check_target(variable_name, variable, target, alone=len(bound) == 1)
            checked[variable_name] = variable
            targets[variable_name] = bound
        _check_claims(checked, targets)
        rules = tuple(rule if isinstance(rule, Constraint) else Constraint(rule) for rule in (constraints or ()))
        for rule in rules:
            unknown = sorted(rule.names - checked.keys())
            if unknown:
                raise ProgramSpecError(
                    f"constraint {bounded_repr(rule.expression)} names unknown variables {bounded_repr(unknown)}"
                )
        object.__setattr__(self, "_module", module_path)
        object.__setattr__(self, "_signature", signature)
        object.__setattr__(self, "_variables", MappingProxyType(checked))
        object.__setattr__(self, "_targets", MappingProxyType(targets))
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_init", MappingProxyType(init_values))
        object.__setattr__(self, "_constraints", rules)
        object.__setattr__(self, "_fingerprint", None)
        # (base name, values set since) of a with_values variant: its default name, never part of the spec.
        object.__setattr__(self, "_variant", None)
        self._check_constraints(self.values)

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("Program is frozen: use with_values(...) to get a configured copy")

    # -- read access ---------------------------------------------------------------------------

    @property
    def module(self) -> str:
        """The spec name of the module class."""
        return self._module

    @property
    def signature(self) -> str | None:
        """The signature string, if the module takes one."""
        return self._signature

    @property
    def name(self) -> str:
        """The human name (defaults to the module's short name)."""
        return self._name or self._module.rsplit(".", 1)[-1]

    @property
    def variables(self) -> Mapping[str, Variable]:
        """Name → variable (read-only)."""
        return self._variables

    @property
    def targets(self) -> Mapping[str, str]:
        """Name → resolved target, as text: several targets joined by ", ", ``"binding"`` for a semantic binding.

        For the targets themselves use :attr:`bound_targets`.
        """
        return {
            name: "binding" if self._variables[name].binding is not None else ", ".join(bound)
            for name, bound in self._targets.items()
        }

    @property
    def bound_targets(self) -> Mapping[str, tuple[str, ...]]:
        """Name → every target the variable binds to (empty for a variable with a semantic binding)."""
        return self._targets

    @property
    def init(self) -> Mapping[str, Any]:
        """Extra constructor keyword arguments."""
        return self._init

    @property
    def constraints(self) -> tuple[Constraint, ...]:
        """Cross-variable constraints."""
        return self._constraints

    @property
    def values(self) -> dict[str, Any]:
        """Name → current value."""
        return {name: variable.value for name, variable in self._variables.items()}

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the canonical spec without its name; stable across processes."""
        if self._fingerprint is None:
            spec = self.to_dict()
            spec.pop("name", None)
            digest = hashlib.sha256(_canonical_json(spec).encode("utf-8")).hexdigest()
            object.__setattr__(self, "_fingerprint", digest)
        return self._fingerprint  # type: ignore[return-value]

    def _module_run(self) -> str:
        """Return the module class :meth:`build` constructs: a module variable's value, else the spec's module."""
        for name, bound in self._targets.items():
            if bound == ("module",):
                return str(self._variables[name].value)
        return self._module

    # -- configuration -------------------------------------------------------------------------

    def _check_constraints(self, values: Mapping[str, Any]) -> None:
        for rule in self._constraints:
            rule.check(values)

    def with_values(self, **values: Any) -> Program:
        """Return a copy with some variables set, after validating each value and every constraint."""
        unknown = sorted(set(values) - self._variables.keys())
        if unknown:
            raise VariableError(
                ", ".join(unknown),
                values[unknown[0]],
                f"one of the program's variables {sorted(self._variables)}",
                detail="unknown variable",
            )
        updated = {
            name: variable.with_value(values[name], name=name) if name in values else variable
            for name, variable in self._variables.items()
        }
        if self._name is None:
            return self._replace(variables=updated)
        # A named program's variant is told apart by name (qa[temperature=0.2]) unless the caller renamed it.
        base, before = self._variant if self._variant is not None else (self._name, {})
        changed = {**before, **values}
        variant = self._replace(variables=updated, name=_variant_name(base, changed))
        object.__setattr__(variant, "_variant", (base, changed))
        return variant

    def with_name(self, name: str) -> Program:
        """Return a copy with another human name."""
        return self._replace(name=name)

    def sample(self, *, seed: int | np.random.Generator, max_tries: int = 1000) -> Program:
        """Return a copy with every samplable variable drawn at random, respecting constraints."""
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        for _ in range(max_tries):
            drawn = {name: variable.sample(rng) for name, variable in self._variables.items()}
            if all(rule.holds(drawn) for rule in self._constraints):
                return self.with_values(**drawn)
        raise VariableError(
            ", ".join(sorted({name for rule in self._constraints for name in rule.names})),
            None,
            "a configuration satisfying every constraint",
            detail=f"none found in {max_tries} draws",
        )

    def _replace(self, **changes: Any) -> Program:
        arguments: dict[str, Any] = {
            "signature": self._signature,
            "variables": dict(self._variables),
            "name": self._name,
            "init": dict(self._init),
            "constraints": self._constraints,
        }
        arguments.update(changes)
        return Program(self._module, **arguments)

    # -- serialisation -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Return the spec as JSON-ready data."""
        data: dict[str, Any] = {"dspex_program": SPEC_VERSION, "module": self._module}
        if self._signature is not None:
            data["signature"] = self._signature
        if self._name is not None:
            data["name"] = self._name
        if self._init:
            data["init"] = dict(self._init)
        data["variables"] = {name: variable.to_dict() for name, variable in self._variables.items()}
        if self._constraints:
            data["constraints"] = [rule.to_dict() for rule in self._constraints]
        return data

    def to_json(self, *, indent: int | None = 2) -> str:
        """Return the spec as JSON text."""
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Program:
        """Rebuild a program from :meth:`to_dict` data."""
        if not isinstance(data, Mapping) or "module" not in data:
            raise ProgramSpecError("a program spec is a JSON object with at least a 'module' key")
        # Data from anyone: bounded in depth, size and integer length before anything walks or prints it.
        check_spec_value(data)
        version = data.get("dspex_program", SPEC_VERSION)
        if version != SPEC_VERSION:
            raise ProgramSpecError(
                f"program spec version {bounded_repr(version)} is not supported (this dspex_lab reads {SPEC_VERSION})"
            )
        known = {"dspex_program", "module", "signature", "name", "init", "variables", "constraints"}
        extra = sorted(set(data) - known)
        if extra:
            raise ProgramSpecError(
                f"unknown keys in program spec: {bounded_repr(extra, limit=200)}; expected some of {sorted(known)}"
            )
        # A spec is data from anyone: every field is checked for its JSON type before it is used.
        if not isinstance(data["module"], str) or not data["module"]:
            raise ProgramSpecError(
                f"'module' must be a module name such as 'dspy.Predict', got {bounded_repr(data['module'])}"
            )
        for key, kind, example in (
            ("signature", str, "'question -> answer'"),
            ("name", str, "a string"),
            ("init", Mapping, "a JSON object"),
            ("variables", Mapping, "a JSON object of name -> variable"),
            ("constraints", list, "a list of expressions"),
        ):
            if data.get(key) is not None and not isinstance(data[key], kind):
                raise ProgramSpecError(
                    f"'{key}' must be {example}, got {type(data[key]).__name__}: {bounded_repr(data[key])}"
                )
        variables = {}
        for name, description in (data.get("variables") or {}).items():
            if not isinstance(description, Mapping):
                raise ProgramSpecError(
                    f"variable {bounded_repr(name)} must be a JSON object with 'type' and 'value', "
                    f"got {bounded_repr(description)}"
                )
            variables[name] = variable_from_dict(dict(description), name=name)
        constraints = []
        for rule in data.get("constraints") or ():
            if isinstance(rule, Mapping) and isinstance(rule.get("expression"), str):
                constraints.append(Constraint(rule["expression"], str(rule.get("message", ""))))
            elif isinstance(rule, str):
                constraints.append(Constraint(rule))
            else:
                raise ProgramSpecError(
                    f"a constraint is an expression string or {{'expression': ...}}, got {bounded_repr(rule)}"
                )
        return cls(
            data["module"],
            signature=data.get("signature"),
            variables=variables,
            name=data.get("name"),
            init=data.get("init"),
            constraints=constraints,
        )

    @classmethod
    def from_json(cls, text: str, *, source: str = "program spec") -> Program:
        """Rebuild a program from :meth:`to_json` text, read within bounds (see :mod:`dspex_lab.program._bounded`).

        Args:
            text: the JSON text.
            source: what the text is (a file name), for error messages.

        Raises:
            ProgramSpecError: the text is not valid JSON, breaks a bound (size, nesting, integer
                length) or does not describe a valid program.
        """
        return cls.from_dict(parse_json_spec(text, source=source))

    @classmethod
    def from_dspy(
        cls,
        source: dspy.Module | str | os.PathLike[str],
        *,
        name: str | None = None,
        module_class: str | type | None = None,
        signature: str | None = None,
    ) -> Program:
        """Lift a live DSPy module, or a file saved with DSPy's ``module.save("x.json")``, into a program.

        Each predictor's instructions and demos become ``Text`` and ``Demos`` variables, named as
        SIMBA-C names them (``instructions``/``demos`` for one predictor, ``instructions__solve``/
        ``demos__solve`` per predictor), so optimizers search them; a saved LM keeps only its model,
        temperature and max_tokens, each checked as a spec's (endpoints and keys never travel; what
        is left out is said in a ``DspexLabWarning``). Built, the program predicts as the module did.

        Args:
            source: a ``dspy.Module`` (its class registered with :func:`~dspex_lab.program.register`,
                or a dspy built-in whose signature is read from it), or the path of a ``.json`` state.
            name: the program's name (default: the file's stem, or the module's class name).
            module_class: the class the state belongs to, a registered name or a dspy built-in;
                required for a path, since a saved state does not name its class.
            signature: the signature text a dspy built-in is constructed with (``"question -> answer"``);
                required with a built-in ``module_class`` for a path.

        Raises:
            ProgramSpecError: the source is a pickle or a ``save_program=True`` directory (code, never
                read), is over :data:`~dspex_lab.program.MAX_DSPY_FILE_BYTES` bytes or
                :data:`~dspex_lab.program.MAX_DSPY_DEMOS` demos per predictor, its predictors or field
                texts are not those the class builds, or its class cannot be named in a spec.
        """
        return program_from_dspy(source, name=name, module_class=module_class, signature=signature)

    def to_dspy(self, *, lm: dspy.BaseLM | None = None) -> dspy.Module:
        """Return the live DSPy module with the current values applied: :meth:`build`, named for DSPy users."""
        return self.build(lm=lm)

    def save_dspy(self, path: str | os.PathLike[str], *, lm: dspy.BaseLM | None = None) -> Path:
        """Write the built module in DSPy's own JSON format, so ``module.load(path)`` in plain DSPy restores it.

        Written through the module's ``save``; every predictor's instructions and demos, and the LM
        of a predictor the program configures (without ``api_base`` or any credential). DSPy loads
        an LM of its own class as is; a lab model's LM is a custom class, which DSPy loads only with
        ``module.load(path, allow_unsafe_lm_state=True)``.

        Args:
            path: a ``.json`` file (written atomically).
            lm: the run's LM the program's LM settings configure, as in :meth:`build`.

        Returns:
            The path written.
        """
        return save_dspy(self, path, lm=lm)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Program) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={value!r}" for name, value in self.values.items() if not isinstance(value, tuple))
        return f"Program({self.name!r}, module={self._module!r}{', ' if shown else ''}{shown})"

    def _repr_html_(self) -> str:
        shown_targets = self.targets
        rows = "".join(
            f"<tr><td>{html.escape(name)}</td><td>{html.escape(type(variable).__name__)}</td>"
            f"<td>{html.escape(repr(variable.value)[:80])}</td><td>{html.escape(variable.allowed())}</td>"
            f"<td>{html.escape(shown_targets[name])}</td></tr>"
            for name, variable in self._variables.items()
        )
        return (
            f"<div class='dspex-program'><b>{html.escape(self.name)}</b> "
            f"<code>{html.escape(self._module_run())}</code> <code>{html.escape(self._signature or '')}</code> "
            f"<small>{self.fingerprint[:12]}</small>"
            "<table><tr><th>variable</th><th>type</th><th>value</th><th>allowed</th><th>target</th></tr>"
            f"{rows}</table>{self._predictors_html()}</div>"
        )

    def _predictors_html(self) -> str:
        """Return a table of what each predictor gets, when some variable binds predictors one by one."""
        per_predictor = any(variable.binding is not None for variable in self._variables.values()) or any(
            ":" in target and target.partition(":")[0] in LM_TARGETS
            for bound in self._targets.values()
            for target in bound
        )
        if not per_predictor:
            return ""
        try:
            effective = self.effective()
        except ProgramSpecError as error:
            return f"<p class='dspex-error'>{html.escape(str(error)[:300])}</p>"

        def cell(value: Any) -> str:
            return "" if value is None else html.escape(str(value)[:80])

        rows = "".join(
            f"<tr><td>{html.escape(name)}</td><td>{cell(record.model)}</td><td>{cell(record.temperature)}</td>"
            f"<td>{cell(record.max_tokens)}</td><td>{cell(' / '.join(record.prefixes) or None)}</td>"
            f"<td>{cell(' / '.join(record.suffixes) or None)}</td>"
            f"<td>{cell(', '.join(sorted({v for names in (record.sources or {}).values() for v in names})) or None)}"
            "</td>"
            "</tr>"
            for name, record in effective.items()
        )
        return (
            "<table class='dspex-predictors'><tr><th>predictor</th><th>model</th><th>temperature</th>"
            "<th>max_tokens</th><th>prefix</th><th>suffix</th><th>set by</th></tr>"
            f"{rows}</table>"
        )

    # -- hydration -----------------------------------------------------------------------------

    def build(self, *, lm: dspy.BaseLM | None = None) -> dspy.Module:
        """Hydrate a live ``dspy.Module`` configured with the current variable values.

        Args:
            lm: the base LM that temperature/max_tokens variables configure when the
                program has no ``model`` variable; defaults to ``dspy.settings.lm``.
                Programs without LM-level variables leave predictors on the context LM.

        In order: the module is constructed; instructions, demos and attribute targets are set;
        module-wide LM settings (``temperature``...) give every predictor one LM; a predictor with
        settings of its own (``temperature:solve``, a binding's ``solve`` entry) gets its own LM,
        the module-wide settings overlaid with its own; last, each binding's prefix and suffix wrap
        the predictor's instructions (prefixes in the order the variables are declared, outermost
        first), so they hold whatever the instructions are, an optimizer's included.

        A ``model`` value resolves only a lab model, the model of the LM it replaces
        (``lm`` or the context's), or a model allowed with
        :func:`~dspex_lab.program.set_allowed_models` (see :mod:`dspex_lab.program._safety`).

        Raises:
            ProgramSpecError: the module cannot be constructed, a target or bound predictor does
                not exist or leaves the module tree, or the model is not allowed.
        """
        module = self._construct()
        predictors = dict(module.named_predictors())
        self._apply_direct_targets(module, predictors)
        module_wide, own = self._lm_settings(predictors)
        run_lm = lm or dspy.settings.lm
        resolved: dict[str, dspy.BaseLM] = {}
        # Predictors with the same settings share one LM object: DSPy asks a module for its one LM
        # (``Module.get_lm``, e.g. in dspy.SIMBA), which is only defined when every predictor holds the same.
        configured: dict[tuple[tuple[str, str], ...], dspy.BaseLM] = {}

        def lm_for(settings: Mapping[str, tuple[Any, str]], scope: str) -> dspy.BaseLM:
            key = tuple(sorted((name, repr(value)) for name, (value, _) in settings.items()))
            if key not in configured:
                configured[key] = self._configured_lm(settings, run_lm, resolved, scope=scope)
            return configured[key]

        if module_wide:
            module.set_lm(lm_for(module_wide, "the module"))
        for predictor_name, settings in own.items():
            predictors[predictor_name].lm = lm_for({**module_wide, **settings}, f"predictor {predictor_name!r}")
        for predictor_name, entries in self._bound_texts().items():
            predictor = predictors[predictor_name]
            prefixes = [settings.prefix for _, settings in entries]
            suffixes = [settings.suffix for _, settings in entries]
            predictor.signature = predictor.signature.with_instructions(
                wrap_instructions(predictor.signature.instructions, prefixes, suffixes)
            )
        # The spec travels to process and Dask workers, which rebuild the module from it (engine/_remote.py).
        module.dspex_program = self.to_dict()
        return module

    def effective(self) -> dict[str, PredictorSettings]:
        """Return, per predictor, the settings and prompt text this program puts in force, and their sources.

        What :meth:`build` would configure, read without an LM: a setting the program leaves to
        the run's LM is None. For displays, and for optimizers that move the variables shared
        by several predictors together.

        Raises:
            ProgramSpecError: as :meth:`build`, for the module, its targets and bound predictors.
        """
        module = self._construct()
        predictors = dict(module.named_predictors())
        self._apply_direct_targets(module, predictors)
        module_wide, own = self._lm_settings(predictors)
        texts = self._bound_texts()
        effective = {}
        for name, predictor in predictors.items():
            settings = {**module_wide, **own.get(name, {})}
            entries = texts.get(name, [])
            sources: dict[str, tuple[str, ...]] = {key: (variable,) for key, (_, variable) in settings.items()}
            instruction_variables = tuple(
                variable
                for variable, bound in self._targets.items()
                if "instructions" in bound or f"instructions:{name}" in bound
            )
            for key in ("prefix", "suffix"):
                named = tuple(variable for variable, bound in entries if getattr(bound, key))
                if named:
                    sources[key] = named
            if instruction_variables:
                sources["instructions"] = instruction_variables
            prefixes = tuple(bound.prefix for _, bound in entries if bound.prefix)
            suffixes = tuple(bound.suffix for _, bound in entries if bound.suffix)
            base = predictor.signature.instructions
            effective[name] = PredictorSettings(
                predictor=name,
                model=settings["model"][0] if "model" in settings else None,
                temperature=settings["temperature"][0] if "temperature" in settings else None,
                max_tokens=settings["max_tokens"][0] if "max_tokens" in settings else None,
                instructions=wrap_instructions(base, prefixes, suffixes),
                base_instructions=base,
                prefixes=prefixes,
                suffixes=suffixes,
                sources=sources,
            )
        return effective

    def _construct(self) -> dspy.Module:
        """Construct the module class (a module variable's value, else the spec's) with the spec's arguments."""
        module_class = self._module_run()
        cls = resolve_module(module_class)
        arguments = (self._signature,) if self._signature is not None else ()
        try:
            return cls(*arguments, **self._init)  # type: ignore[no-any-return]
        except Exception as error:
            raise ProgramSpecError(f"cannot construct {module_class}: {type(error).__name__}: {error}") from error

    def _apply_direct_targets(self, module: dspy.Module, predictors: dict[str, Any]) -> None:
        """Set instructions, demos and attribute targets (LM targets are set by :meth:`build` after)."""
        for name, bound in self._targets.items():
            value = self._variables[name].value
            for target in bound:
                base, _, predictor_name = target.partition(":")
                if base in ("instructions", "demos"):
                    for predictor in self._select_predictors(predictors, predictor_name, variable=name):
                        if base == "instructions":
                            predictor.signature = predictor.signature.with_instructions(value)
                        else:
                            predictor.demos = [dspy.Example(**demo) for demo in value]
                elif base not in LM_TARGETS and base != "module":
                    set_attribute_in_tree(module, target, value, variable=name, shared_types=(dspy.BaseLM,))

    def _lm_settings(
        self, predictors: dict[str, Any]
    ) -> tuple[dict[str, tuple[Any, str]], dict[str, dict[str, tuple[Any, str]]]]:
        """Return the module-wide LM settings and each predictor's own, as setting → (value, variable).

        Checks every predictor a target or a binding names (in every case, not only the current
        value's), so a spec broken for some value fails on its first build.
        """
        module_wide: dict[str, tuple[Any, str]] = {}
        own: dict[str, dict[str, tuple[Any, str]]] = {}
        for name, bound in self._targets.items():
            value = self._variables[name].value
            for target in bound:
                base, _, predictor_name = target.partition(":")
                if base not in LM_TARGETS:
                    continue
                if not predictor_name:
                    module_wide[base] = (value, name)
                    continue
                self._select_predictors(predictors, predictor_name, variable=name)
                own.setdefault(predictor_name, {})[base] = (value, name)
        for name, variable in self._variables.items():
            if variable.binding is None:
                continue
            for predictor_name in variable.binding.predictors():
                self._select_predictors(predictors, predictor_name, variable=name)
            for predictor_name, settings in variable.binding.settings_for(variable.value).items():
                for key, setting in settings.lm_settings().items():
                    own.setdefault(predictor_name, {})[key] = (setting, name)
        return module_wide, own

    def _bound_texts(self) -> dict[str, list[tuple[str, BoundSettings]]]:
        """Return predictor → (variable, settings) of every binding giving it text, in declaration order."""
        texts: dict[str, list[tuple[str, BoundSettings]]] = {}
        for name, variable in self._variables.items():
            if variable.binding is None:
                continue
            for predictor_name, settings in variable.binding.settings_for(variable.value).items():
                if settings.prefix or settings.suffix:
                    texts.setdefault(predictor_name, []).append((name, settings))
        return texts

    def _configured_lm(
        self,
        settings: Mapping[str, tuple[Any, str]],
        run_lm: dspy.BaseLM | None,
        resolved: dict[str, dspy.BaseLM],
        *,
        scope: str,
    ) -> dspy.BaseLM:
        """Return the LM for ``settings``: its model (checked, resolved once per build) or the run's, with them."""
        remaining = {key: value for key, (value, _) in settings.items() if key != "model"}
        if "model" in settings:
            model, variable = settings["model"]
            check_model_allowed(variable, model, run_model=getattr(run_lm, "model", None))
            if run_lm is not None and model == getattr(run_lm, "model", None):
                # The run's own model: its LM as configured (endpoint, keys, cache), never a fresh one
                # that would send the calls to the provider's default endpoint instead.
                base_lm = run_lm
            else:
                if model not in resolved:
                    resolved[model] = _lm_resolver(model)
                base_lm = resolved[model]
        elif run_lm is None:
            raise ProgramSpecError(
                f"program {self.name!r} sets {sorted(remaining)} of {scope} but no LM is configured: "
                "pass lm=..., use dx.Context(lm=...), or add a 'model' variable"
            )
        else:
            base_lm = run_lm
        return base_lm.copy(**remaining) if remaining else base_lm

    @staticmethod
    def _select_predictors(predictors: dict[str, Any], predictor_name: str, *, variable: str) -> list[Any]:
        if not predictor_name:
            return list(predictors.values())
        if predictor_name not in predictors:
            raise ProgramSpecError(
                f"variable {variable!r} targets predictor {predictor_name!r}, which does not exist; "
                f"predictors: {sorted(predictors)}"
            )
        return [predictors[predictor_name]]
