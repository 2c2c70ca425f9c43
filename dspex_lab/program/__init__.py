"""Programs: a DSPy module plus typed variables, as a frozen, JSON-serialisable spec.

This layer owns the :class:`Program` spec, the variable types and their
constraints, the registry of custom modules with the allow-list that guards
hydration, and :meth:`Program.build`, which turns a spec into a live
``dspy.Module``. It imports only dspy.
"""

from dspex_lab.program._constraints import Constraint
from dspex_lab.program._program import Program, set_lm_resolver
from dspex_lab.program._registry import (
    allowed_prefixes,
    register,
    registered_modules,
    resolve_module,
    set_allowed_prefixes,
)
from dspex_lab.program._variables import Bool, Choice, Demos, Float, Int, ModuleType, Text, Variable

__all__ = [
    "Bool",
    "Choice",
    "Constraint",
    "Demos",
    "Float",
    "Int",
    "ModuleType",
    "Program",
    "Text",
    "Variable",
    "allowed_prefixes",
    "register",
    "registered_modules",
    "resolve_module",
    "set_allowed_prefixes",
    "set_lm_resolver",
]
