"""Programs: a DSPy module plus typed variables, as a frozen, JSON-serialisable spec.

This layer owns the :class:`Program` spec, the variable types, their
constraints and semantic bindings (:class:`Binding`: a value → settings and prompt
text of several predictors), the registry of custom modules with the allow-list that
guards hydration, and :meth:`Program.build`, which turns a spec into a live
``dspy.Module``. A spec is data that may come from someone else: it cannot carry
endpoints or credentials, reach private attributes or leave the module tree, or
switch the run to a hosted LM the user did not allow (:func:`set_allowed_models`), and
its text is read within bounds (:func:`parse_json_spec`, :func:`parse_yaml_spec`: no YAML
aliases, bounded size, nesting and integers).
It imports dspy and the redaction policy of :mod:`dspex_lab.trace.redaction`.
"""

from dspex_lab.program._bindings import Binding, BoundSettings, PredictorSettings
from dspex_lab.program._bounded import (
    MAX_SPEC_CHARACTERS,
    check_spec_value,
    compose_yaml_spec,
    parse_json_spec,
    parse_yaml_spec,
)
from dspex_lab.program._constraints import Constraint
from dspex_lab.program._dspy_io import MAX_DSPY_DEMOS, MAX_DSPY_FILE_BYTES
from dspex_lab.program._program import Program
from dspex_lab.program._registry import (
    allowed_prefixes,
    allowing_prefixes,
    register,
    registered_modules,
    resolve_module,
    set_allowed_prefixes,
)
from dspex_lab.program._safety import allowed_models, allowing_models, set_allowed_models
from dspex_lab.program._variables import (
    Bool,
    Choice,
    Demos,
    Float,
    Int,
    ModuleType,
    Text,
    Variable,
    variable_from_dict,
)

__all__ = [
    "MAX_DSPY_DEMOS",
    "MAX_DSPY_FILE_BYTES",
    "MAX_SPEC_CHARACTERS",
    "Binding",
    "Bool",
    "BoundSettings",
    "Choice",
    "Constraint",
    "Demos",
    "Float",
    "Int",
    "ModuleType",
    "PredictorSettings",
    "Program",
    "Text",
    "Variable",
    "allowed_models",
    "allowed_prefixes",
    "allowing_models",
    "allowing_prefixes",
    "check_spec_value",
    "compose_yaml_spec",
    "parse_json_spec",
    "parse_yaml_spec",
    "register",
    "registered_modules",
    "resolve_module",
    "set_allowed_models",
    "set_allowed_prefixes",
    "variable_from_dict",
]
