"""Cross-variable constraints written as small, safe Python expressions.

A constraint is stored as text so a program spec stays JSON: the expression is
parsed once, checked against a whitelist of syntax (comparisons, boolean and
arithmetic operators, constants, variable names, ``len``/``abs``/``min``/``max``)
and evaluated without ``eval``.

A spec may come from someone else, so evaluation is bounded in size and time:
the expression is at most :data:`MAX_EXPRESSION_LENGTH` characters and
:data:`MAX_NODES` syntax nodes; a repetition of a literal (``'x' * 1000000000``)
whose result would exceed :data:`MAX_SEQUENCE_LENGTH` is refused when parsed; at
evaluation every intermediate string, list or tuple is kept under that length
(checked before it is built) and integers under :data:`MAX_INTEGER_BITS` bits;
``%`` on strings (printf formatting, which can pad to any width) is refused.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dspex_lab.errors import ProgramSpecError, VariableError, bounded_repr

__all__ = ["MAX_EXPRESSION_LENGTH", "MAX_INTEGER_BITS", "MAX_NODES", "MAX_SEQUENCE_LENGTH", "Constraint"]

MAX_EXPRESSION_LENGTH = 2_000
MAX_NODES = 200
MAX_SEQUENCE_LENGTH = 100_000
MAX_INTEGER_BITS = 256


def _shown(expression: str) -> str:
    return bounded_repr(expression, limit=120)


def _bounded(expression: str, what: str) -> ProgramSpecError:
    return ProgramSpecError(f"constraint {_shown(expression)}: {what}; constraints are evaluated with bounded size")


def _check_result(value: Any, expression: str) -> Any:
    if isinstance(value, (str, bytes, tuple, list)) and len(value) > MAX_SEQUENCE_LENGTH:
        raise _bounded(expression, f"a value of {len(value):,} items exceeds {MAX_SEQUENCE_LENGTH:,}")
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_INTEGER_BITS:
        raise _bounded(expression, f"an integer exceeds {MAX_INTEGER_BITS} bits")
    return value


def _repetition_length(left: Any, right: Any) -> int | None:
    """Return the length ``left * right`` would have when it repeats a sequence, else None."""
    for sequence, count in ((left, right), (right, left)):
        if isinstance(sequence, (str, bytes, tuple, list)) and isinstance(count, int) and not isinstance(count, bool):
            return len(sequence) * max(count, 0)
    return None


def _apply_binary(operation: ast.operator, left: Any, right: Any, expression: str) -> Any:
    if isinstance(operation, ast.Mult):
        length = _repetition_length(left, right)
        if length is not None and length > MAX_SEQUENCE_LENGTH:
            raise _bounded(expression, f"a repetition of {length:,} items exceeds {MAX_SEQUENCE_LENGTH:,}")
        if (
            isinstance(left, int)
            and isinstance(right, int)
            and left.bit_length() + right.bit_length() > MAX_INTEGER_BITS + 1
        ):
            raise _bounded(expression, f"a product exceeds {MAX_INTEGER_BITS} bits")
    elif isinstance(operation, ast.Add):
        sequences = (str, bytes, tuple, list)
        if (
            isinstance(left, sequences)
            and isinstance(right, sequences)
            and len(left) + len(right) > MAX_SEQUENCE_LENGTH
        ):
            raise _bounded(expression, f"a concatenation exceeds {MAX_SEQUENCE_LENGTH:,} items")
    elif isinstance(operation, ast.Mod) and isinstance(left, (str, bytes)):
        raise ProgramSpecError(f"constraint {_shown(expression)}: '%' formatting of strings is not allowed")
    return _check_result(_BINARY[type(operation)](left, right), expression)


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
# (fewest, most) arguments each function takes; None: no upper bound.
_ARITY: dict[str, tuple[int, int | None]] = {"len": (1, 1), "abs": (1, 1), "min": (1, None), "max": (1, None)}
# What a well-formed expression can still raise on values of the wrong type: incompatible comparisons,
# len() of a number, division by zero, min() of an empty list, a float overflow.
_EVALUATION_ERRORS = (TypeError, ValueError, ArithmeticError, RecursionError, MemoryError)


def _evaluate(node: ast.AST, values: Mapping[str, Any], expression: str = "") -> Any:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, values, expression)
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return values[node.id]
    if isinstance(node, (ast.List, ast.Tuple)):
        return tuple(_evaluate(item, values, expression) for item in node.elts)
    if isinstance(node, ast.BoolOp):
        results = (_evaluate(item, values, expression) for item in node.values)
        return all(results) if isinstance(node.op, ast.And) else any(results)
    if isinstance(node, ast.UnaryOp):
        operand = _evaluate(node.operand, values, expression)
        return (not operand) if isinstance(node.op, ast.Not) else _check_result(-operand, expression)
    if isinstance(node, ast.BinOp):
        left = _evaluate(node.left, values, expression)
        return _apply_binary(node.op, left, _evaluate(node.right, values, expression), expression)
    if isinstance(node, ast.Compare):
        left = _evaluate(node.left, values, expression)
        for comparison, right_node in zip(node.ops, node.comparators, strict=True):
            right = _evaluate(right_node, values, expression)
            if not _COMPARE[type(comparison)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.Call):
        return _FUNCTIONS[node.func.id](*(_evaluate(argument, values, expression) for argument in node.args))  # type: ignore[attr-defined]
    raise ProgramSpecError(f"unsupported syntax {type(node).__name__}")  # unreachable after _check


def _check(node: ast.AST, expression: str) -> set[str]:
    names: set[str] = set()
    for count, child in enumerate(ast.walk(node), start=1):
        if count > MAX_NODES:
            raise _bounded(expression, f"more than {MAX_NODES} syntax nodes")
        if isinstance(child, ast.Constant):
            _check_constant(child.value, expression)
        if isinstance(child, ast.BinOp) and isinstance(child.op, ast.Mult):
            _check_literal_repetition(child, expression)
        if isinstance(child, ast.Name):
            names.add(child.id)
        elif isinstance(child, ast.Call):
            if not (isinstance(child.func, ast.Name) and child.func.id in _FUNCTIONS) or child.keywords:
                raise ProgramSpecError(f"constraint {_shown(expression)}: only {sorted(_FUNCTIONS)} may be called")
            _check_arity(child.func.id, len(child.args), expression)
        elif isinstance(child, ast.BinOp) and type(child.op) not in _BINARY:
            raise ProgramSpecError(
                f"constraint {_shown(expression)}: operator {type(child.op).__name__} is not allowed"
            )
        elif isinstance(child, ast.Compare) and any(type(op) not in _COMPARE for op in child.ops):
            raise ProgramSpecError(f"constraint {_shown(expression)}: 'is' comparisons are not allowed")
        elif isinstance(child, ast.UnaryOp) and not isinstance(child.op, (ast.Not, ast.USub)):
            raise ProgramSpecError(
                f"constraint {_shown(expression)}: operator {type(child.op).__name__} is not allowed"
            )
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
            raise ProgramSpecError(f"constraint {_shown(expression)}: {type(child).__name__} is not allowed")
    return names - set(_FUNCTIONS)


def _check_arity(function: str, count: int, expression: str) -> None:
    fewest, most = _ARITY[function]
    if count < fewest or (most is not None and count > most):
        takes = f"{fewest} argument" if fewest == most else f"at least {fewest} argument"
        raise ProgramSpecError(f"constraint {_shown(expression)}: {function}() takes {takes}, got {count}")


def _check_constant(value: Any, expression: str) -> None:
    if isinstance(value, (str, bytes)) and len(value) > MAX_SEQUENCE_LENGTH:
        raise _bounded(expression, f"a literal of {len(value):,} characters exceeds {MAX_SEQUENCE_LENGTH:,}")
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_INTEGER_BITS:
        raise _bounded(expression, f"an integer literal exceeds {MAX_INTEGER_BITS} bits")
    if not isinstance(value, (str, int, float, bool, type(None))):
        raise ProgramSpecError(f"constraint {_shown(expression)}: literal {bounded_repr(value)} is not allowed")


def _literal_length(node: ast.AST) -> int | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return len(node.value)
    if isinstance(node, (ast.List, ast.Tuple)):
        return len(node.elts)
    return None


def _check_literal_repetition(node: ast.BinOp, expression: str) -> None:
    # Caught when parsed, so "len('x' * 1000000000) > 0" is refused before anything is allocated.
    for sequence, count in ((node.left, node.right), (node.right, node.left)):
        length = _literal_length(sequence)
        if (
            length is not None
            and isinstance(count, ast.Constant)
            and isinstance(count.value, int)
            and length * max(count.value, 0) > MAX_SEQUENCE_LENGTH
        ):
            raise _bounded(
                expression,
                f"repeating a literal {count.value:,} times exceeds {MAX_SEQUENCE_LENGTH:,} items",
            )


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
        if not isinstance(self.expression, str):
            raise ProgramSpecError(f"a constraint is an expression string, got {type(self.expression).__name__}")
        if len(self.expression) > MAX_EXPRESSION_LENGTH:
            raise ProgramSpecError(
                f"constraint {_shown(self.expression)}: {len(self.expression):,} characters exceeds "
                f"{MAX_EXPRESSION_LENGTH:,}"
            )
        try:
            tree = ast.parse(self.expression, mode="eval")
        except (RecursionError, MemoryError):
            raise ProgramSpecError(f"constraint {_shown(self.expression)}: nested too deeply") from None
        except SyntaxError as error:
            raise ProgramSpecError(
                f"constraint {_shown(self.expression)} is not a valid expression: {error.msg}"
            ) from None
        object.__setattr__(self, "names", frozenset(_check(tree, self.expression)))
        object.__setattr__(self, "_tree", tree)

    def holds(self, values: Mapping[str, Any]) -> bool:
        """Return whether the constraint holds for ``values``.

        Raises:
            ProgramSpecError: a variable it names has no value, or it cannot be evaluated on these
                values (``len`` of a number, ``1/0``, comparing a string with a number...).
        """
        missing = sorted(self.names - set(values))
        if missing:
            raise ProgramSpecError(f"constraint {_shown(self.expression)} needs a value for {bounded_repr(missing)}")
        try:
            return bool(_evaluate(self._tree, values, self.expression))
        except _EVALUATION_ERRORS as error:
            involved = {name: values[name] for name in sorted(self.names)}
            given = f" with {bounded_repr(involved, limit=200)}" if involved else ""
            raise ProgramSpecError(
                f"constraint {_shown(self.expression)} cannot be evaluated{given}: "
                f"{type(error).__name__}: {str(error)[:200]}"
            ) from None

    def check(self, values: Mapping[str, Any]) -> None:
        """Raise VariableError naming the variables when the constraint does not hold."""
        if not self.holds(values):
            involved = {name: values[name] for name in sorted(self.names)}
            raise VariableError(
                ", ".join(sorted(self.names)),
                involved,
                f"values satisfying {_shown(self.expression)}",
                detail=self.message or None,
            )

    def to_dict(self) -> dict[str, str]:
        """Return a JSON-ready form."""
        return {"expression": self.expression, **({"message": self.message} if self.message else {})}
