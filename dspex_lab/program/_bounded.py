"""Bounded reading of program-spec text: JSON (spec files, packages) and YAML (``%%dspex program`` cells).

A spec may come from someone else, and Python's parsers trust their input: YAML
aliases share one object under many names, so a few hundred bytes of
``&a [*a, *a, ...]`` unfold into billions of items the moment anything walks
or prints them; deep nesting exhausts the stack (``RecursionError``); a long
integer literal trips Python's digit limit (``ValueError``). Every spec text is
therefore read here, once, within these bounds:

* at most :data:`MAX_SPEC_CHARACTERS` characters;
* YAML anchors and aliases (``&name``, ``*name``, ``<<: *name``) are refused
  while the document is composed, before any object exists, and so are YAML
  tags outside the safe set (as with ``yaml.safe_load``);
* at most :data:`MAX_DEPTH` levels of nesting and :data:`MAX_NODES` values;
* integers of at most :data:`MAX_INTEGER_DIGITS` digits.

Any breach, and any syntax error, is one :class:`~dspex_lab.errors.ProgramSpecError`
naming the source and, when known, the line. :func:`check_spec_value` applies the
same depth, size and integer bounds to spec data built in Python.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from dspex_lab.errors import ProgramSpecError, bounded_repr

__all__ = [
    "MAX_DEPTH",
    "MAX_INTEGER_DIGITS",
    "MAX_NODES",
    "MAX_SPEC_CHARACTERS",
    "check_spec_value",
    "compose_yaml_spec",
    "parse_json_spec",
    "parse_yaml_spec",
]

# A spec with long instructions and a few demos is tens of kilobytes; these are far above any real one.
MAX_SPEC_CHARACTERS = 8 * 1024 * 1024
MAX_DEPTH = 64
MAX_NODES = 100_000
MAX_INTEGER_DIGITS = 100
_INTEGER_BOUND = 10**MAX_INTEGER_DIGITS

_YAML_EXPECTED = "expected a YAML mapping such as 'module: dspy.Predict' with optional signature, variables, ..."
# Brackets outside JSON strings: used only after the parser gave up, to say on which line nesting went too deep.
_JSON_NESTING_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


def _line_of_offset(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _check_length(text: Any, source: str) -> None:
    if not isinstance(text, str):
        raise ProgramSpecError(f"{source}: expected text (a str), got {type(text).__name__}")
    if len(text) > MAX_SPEC_CHARACTERS:
        raise ProgramSpecError(
            f"{source}: {len(text):,} characters, more than a program spec's limit of {MAX_SPEC_CHARACTERS:,}"
        )


# -- JSON --------------------------------------------------------------------------------------------------


def _bounded_integer(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INTEGER_DIGITS:
        raise _IntegerTooLongError(text)
    return int(text)


class _IntegerTooLongError(Exception):
    """Raised from inside ``json.loads`` so the caller can say where the literal is."""


def _nesting_line(text: str) -> int | None:
    depth = 0
    for match in _JSON_NESTING_TOKENS.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return _line_of_offset(text, match.start())
        elif token in "]}":
            depth -= 1
    return None


def parse_json_spec(text: str, *, source: str = "program spec") -> Any:
    """Parse JSON spec text within the bounds of this module.

    Args:
        text: the JSON text.
        source: what the text is, for error messages (a file name, ``program.json``).

    Returns:
        The parsed value (an object for any useful spec; the caller checks its shape).

    Raises:
        ProgramSpecError: invalid JSON, or too long, too deep, too many values or too long an integer;
            the message names ``source`` and the line.
    """
    _check_length(text, source)
    try:
        value = json.loads(text, parse_int=_bounded_integer)
    except json.JSONDecodeError as error:
        raise ProgramSpecError(f"{source} is not valid JSON: line {error.lineno}: {error.msg}") from None
    except _IntegerTooLongError as error:
        literal = str(error)
        line = _line_of_offset(text, max(text.find(literal), 0))
        raise ProgramSpecError(
            f"{source}, line {line}: an integer of {len(literal.lstrip('-')):,} digits; "
            f"a program spec's integers have at most {MAX_INTEGER_DIGITS}"
        ) from None
    except (RecursionError, MemoryError):
        line = _nesting_line(text)
        where = f", line {line}" if line is not None else ""
        raise ProgramSpecError(f"{source}{where}: nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as error:  # Python's own limits (e.g. digits of a number), whatever remains
        raise ProgramSpecError(f"{source} cannot be read as JSON: {error}") from None
    check_spec_value(value, source=source)
    return value


def check_spec_value(value: Any, *, source: str = "program spec") -> None:
    """Check that spec data is at most :data:`MAX_DEPTH` deep, :data:`MAX_NODES` values and bounded integers.

    Walks without recursion, and counts a container each time it is reached, so data that
    shares or contains itself is refused rather than walked forever.

    Raises:
        ProgramSpecError: naming the path of the offending value (``init.x[0]``).
    """
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    nodes = 0
    while stack:
        item, path, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise ProgramSpecError(f"{source}: more than {MAX_NODES:,} values; a program spec holds far fewer")
        if depth > MAX_DEPTH:
            raise ProgramSpecError(f"{source}: {path or 'the spec'} is nested more than {MAX_DEPTH} levels deep")
        if isinstance(item, dict):
            for key, child in item.items():
                step = f"{path}.{key if isinstance(key, str) else bounded_repr(key, limit=40)}"
                _check_integer(key, step, source)
                stack.append((child, step, depth + 1))
        elif isinstance(item, (list, tuple)):
            stack.extend((child, f"{path}[{index}]", depth + 1) for index, child in enumerate(item))
        else:
            _check_integer(item, path, source)


def _is_long_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and not -_INTEGER_BOUND < value < _INTEGER_BOUND


def _check_integer(value: Any, path: str, source: str) -> None:
    if _is_long_integer(value):
        where = bounded_repr(path.lstrip("."), limit=120)[1:-1] or "the spec"
        raise ProgramSpecError(f"{source}: {where} is an integer of more than {MAX_INTEGER_DIGITS} digits")


# -- YAML --------------------------------------------------------------------------------------------------


class _BoundedComposer(yaml.SafeLoader):
    """PyYAML's safe loader, composing no alias or anchor and at most MAX_DEPTH levels and MAX_NODES nodes."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _YamlRefusedError(
                line,
                "YAML anchors and aliases (&name, *name, <<: *name) are not allowed in a program spec; "
                "write each value out",
            )
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise _YamlRefusedError(line, f"more than {MAX_NODES:,} values; a program spec holds far fewer")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _YamlRefusedError(line, f"nested more than {MAX_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        # Checked on the text: int() of a long hex or binary literal has no digit limit, and its repr then raises.
        digits = str(node.value).replace("_", "").lstrip("+-")
        if len(digits) > MAX_INTEGER_DIGITS + 2:  # room for a 0x / 0b / 0o prefix
            raise _YamlRefusedError(
                node.start_mark.line + 1,
                f"an integer literal of {len(digits):,} characters; "
                f"a program spec's integers have at most {MAX_INTEGER_DIGITS} digits",
            )
        value: int = super().construct_yaml_int(node)
        if _is_long_integer(value):
            raise _YamlRefusedError(
                node.start_mark.line + 1,
                f"an integer of more than {MAX_INTEGER_DIGITS} digits; a program spec's integers have at most that",
            )
        return value


_BoundedComposer.add_constructor("tag:yaml.org,2002:int", _BoundedComposer.construct_yaml_int)


class _YamlRefusedError(Exception):
    def __init__(self, line: int, problem: str) -> None:
        super().__init__(problem)
        self.line = line
        self.problem = problem


def _yaml_error(error: Exception, source: str) -> ProgramSpecError:
    if isinstance(error, _YamlRefusedError):
        return ProgramSpecError(f"line {error.line} of the {source}: {error.problem}")
    if isinstance(error, yaml.YAMLError):
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1} of the {source}" if mark is not None else f"the {source}"
        problem = getattr(error, "problem", None) or str(error)
        return ProgramSpecError(f"YAML error at {where}: {problem} ({_YAML_EXPECTED})")
    return ProgramSpecError(f"the {source} cannot be read as YAML: {type(error).__name__}: {error}")


def _run_loader(text: str, source: str, *, construct: bool) -> Any:
    _check_length(text, source)
    loader: _BoundedComposer | None = None
    try:
        loader = _BoundedComposer(text)  # its reader refuses control characters at once
        return loader.get_single_data() if construct else loader.get_single_node()
    except (yaml.YAMLError, _YamlRefusedError) as error:
        raise _yaml_error(error, source) from None
    except (RecursionError, MemoryError, ValueError, TypeError, OverflowError) as error:
        # Not expected within the bounds above; a spec must still never surface as a raw traceback.
        raise _yaml_error(error, source) from None
    finally:
        if loader is not None:
            loader.dispose()


def parse_yaml_spec(text: str, *, source: str = "program spec") -> Any:
    """Parse YAML spec text safely and within the bounds of this module.

    Args:
        text: the YAML text.
        source: what the text is, for error messages (``%%dspex program cell``).

    Returns:
        The parsed value (a mapping for any useful spec; the caller checks its shape).

    Raises:
        ProgramSpecError: a YAML syntax error, an anchor or alias, an unsafe tag, or too long,
            too deep, too many values or too long an integer; the message names ``source`` and the line.
    """
    return _run_loader(text, source, construct=True)


def compose_yaml_spec(text: str, *, source: str = "program spec") -> yaml.Node | None:
    """Compose YAML spec text into PyYAML's node tree (with line marks), within the same bounds.

    Raises:
        ProgramSpecError: as :func:`parse_yaml_spec`.
    """
    node: yaml.Node | None = _run_loader(text, source, construct=False)
    return node
