"""Cross-variable constraints written as small, safe Python expressions.

A constraint is stored as text so a program spec stays JSON: the expression is
parsed once, checked against a whitelist of syntax (comparisons, boolean and
arithmetic operators, constants, variable names, ``len``/``abs``/``min``/``max``)
and evaluated without ``eval``.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dspex_lab.errors import ProgramSpecError, VariableError

__all__ = ["Constraint"]

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Mod: operator.mod,
    ast.FloorDiv: operator.floordiv,
}
_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}
_FUNCTIONS: dict[str, Callable[..., Any]] = {"len": len, "abs": abs, "min": min, "max": max}


def _evaluate(node: ast.AST, values: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, values)
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return values[node.id]
    if isinstance(node, (ast.List, ast.Tuple)):
        return tuple(_evaluate(item, values) for item in node.elts)
    if isinstance(node, ast.BoolOp):
        results = (_evaluate(item, values) for item in node.values)
        return all(results) if isinstance(node.op, ast.And) else any(results)
    if isinstance(node, ast.UnaryOp):
        operand = _evaluate(node.operand, values)
        return (not operand) if isinstance(node.op, ast.Not) else -operand
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](_evaluate(node.left, values), _evaluate(node.right, values))
    if isinstance(node, ast.Compare):
        left = _evaluate(node.left, values)
        for comparison, right_node in zip(node.ops, node.comparators, strict=True):
            right = _evaluate(right_node, values)
            if not _COMPARE[type(comparison)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.Call):
        return _FUNCTIONS[node.func.id](*(_evaluate(argument, values) for argument in node.args))  # type: ignore[attr-defined]
    raise ProgramSpecError(f"unsupported syntax {type(node).__name__}")  # unreachable after _check


def _check(node: ast.AST, expression: str) -> set[str]:
    names: set[str] = set()
    for child in ast.walk(node):
        if isinstance(child, ast.Name):
            names.add(child.id)
        elif isinstance(child, ast.Call):
            if not (isinstance(child.func, ast.Name) and child.func.id in _FUNCTIONS) or child.keywords:
                raise ProgramSpecError(f"constraint {expression!r}: only {sorted(_FUNCTIONS)} may be called")
        elif isinstance(child, ast.BinOp) and type(child.op) not in _BINARY:
            raise ProgramSpecError(f"constraint {expression!r}: operator {type(child.op).__name__} is not allowed")
        elif isinstance(child, ast.Compare) and any(type(op) not in _COMPARE for op in child.ops):
            raise ProgramSpecError(f"constraint {expression!r}: 'is' comparisons are not allowed")
        elif isinstance(child, ast.UnaryOp) and not isinstance(child.op, (ast.Not, ast.USub)):
            raise ProgramSpecError(f"constraint {expression!r}: operator {type(child.op).__name__} is not allowed")
        elif not isinstance(
            child,
            (
                ast.Expression,
                ast.Constant,
                ast.Name,
                ast.Load,
                ast.List,
                ast.Tuple,
                ast.BoolOp,
                ast.And,
                ast.Or,
                ast.UnaryOp,
                ast.Not,
                ast.USub,
                ast.BinOp,
                ast.operator,
                ast.Compare,
                ast.cmpop,
                ast.Call,
            ),
        ):
            raise ProgramSpecError(f"constraint {expression!r}: {type(child).__name__} is not allowed")
    return names - set(_FUNCTIONS)


@dataclass(frozen=True)
class Constraint:
    """A condition over several variables that every configuration must satisfy.

    Examples:
        >>> rule = Constraint("temperature <= 0.5 or model == 'lab/large'")
        >>> rule.holds({"temperature": 0.9, "model": "lab/large"})
        True
        >>> sorted(rule.names)
        ['model', 'temperature']
    """

    expression: str
    message: str = ""
    names: frozenset[str] = field(init=False, compare=False)
    _tree: ast.Expression = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        try:
            tree = ast.parse(self.expression, mode="eval")
        except SyntaxError as error:
            raise ProgramSpecError(f"constraint {self.expression!r} is not a valid expression: {error.msg}") from None
        object.__setattr__(self, "names", frozenset(_check(tree, self.expression)))
        object.__setattr__(self, "_tree", tree)

    def holds(self, values: Mapping[str, Any]) -> bool:
        """Return whether the constraint holds for ``values``."""
        return bool(_evaluate(self._tree, values))

    def check(self, values: Mapping[str, Any]) -> None:
        """Raise VariableError naming the variables when the constraint does not hold."""
        if not self.holds(values):
            involved = {name: values[name] for name in sorted(self.names)}
            raise VariableError(
                ", ".join(sorted(self.names)),
                involved,
                f"values satisfying {self.expression!r}",
                detail=self.message or None,
            )

    def to_dict(self) -> dict[str, str]:
        """Return a JSON-ready form."""
        return {"expression": self.expression, **({"message": self.message} if self.message else {})}
