"""Type-aware placeholder values for signatures the lab LM has no skill for.

Any signature gets every output field filled with a value of the right shape,
so programs of any structure run through DSPy's adapters end to end. The
values are deterministic in the inputs; they carry no task knowledge.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

from dspex_lab.lm.prompt import CHAT_FORMAT, JSON_FORMAT, OutputField

__all__ = ["excerpt", "render", "value_for_field"]

_SCHEMA_MARKER = "adhere to the JSON schema: "
_EXCERPT_WORDS = 12
# Numbers as a problem states them: 23, 4.5, -3, 1,200 (a thousands separator is not a list separator).
_NUMBER = re.compile(r"(?<![\w.])-?\d{1,3}(?:,\d{3})+(?!\d)|(?<![\w.])-?\d+(?:\.\d+)?")
_COLLECTIONS = ("list", "set", "tuple", "sequence", "frozenset")


def excerpt(inputs: dict[str, str], *, words: int = _EXCERPT_WORDS) -> str:
    """Return the first ``words`` words of the first non-empty input value."""
    for value in inputs.values():
        tokens = value.split()
        if tokens:
            shortened = " ".join(tokens[:words])
            return shortened + (" ..." if len(tokens) > words else "")
    return "no input given"


def _split_arguments(text: str) -> list[str]:
    """Split ``text`` at commas that are not nested in brackets."""
    parts, depth, current = [], 0, []
    for character in text:
        if character in "[(":
            depth += 1
        elif character in "])":
            depth -= 1
        if character == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(character)
    if current:
        parts.append("".join(current).strip())
    return parts


def _unwrap(type_name: str) -> tuple[str, str]:
    """Return ``(head, inner)`` of ``Head[inner]``, or ``(type_name, "")``."""
    if type_name.endswith("]") and "[" in type_name:
        head, inner = type_name.split("[", 1)
        return head.strip(), inner[:-1]
    return type_name, ""


def _numbers_from(inputs: dict[str, str], item_type: str) -> list[int] | list[float]:
    """Return the numbers stated in ``inputs``, in order, as ``item_type`` (``int`` keeps only whole ones)."""
    found = [float(match.replace(",", "")) for value in inputs.values() for match in _NUMBER.findall(str(value))]
    if item_type == "int":
        return [int(number) for number in found if number.is_integer()]
    return found


def _from_schema(schema: Any, definitions: dict[str, Any], *, text: str, draw: int) -> Any:
    if not isinstance(schema, dict):
        return text
    if "$ref" in schema:
        return _from_schema(definitions.get(schema["$ref"].rsplit("/", 1)[-1], {}), definitions, text=text, draw=draw)
    if schema.get("enum"):
        return schema["enum"][draw % len(schema["enum"])]
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            options = [option for option in schema[key] if option.get("type") != "null"] or schema[key]
            return _from_schema(options[0], definitions, text=text, draw=draw)
    kind = schema.get("type")
    if kind == "object":
        properties = schema.get("properties")
        if properties:
            return {name: _from_schema(sub, definitions, text=text, draw=draw) for name, sub in properties.items()}
        extra = schema.get("additionalProperties")
        return {
            "key": _from_schema(
                extra if isinstance(extra, dict) else {"type": "string"}, definitions, text=text, draw=draw
            )
        }
    if kind == "array":
        return [_from_schema(schema.get("items", {"type": "string"}), definitions, text=text, draw=draw)]
    if kind == "integer":
        return 1 + draw % 9
    if kind == "number":
        return round((draw % 100) / 100, 2)
    if kind == "boolean":
        return draw % 2 == 0
    if kind == "null":
        return None
    return text


def _value_for_type(type_name: str, *, note: str, text: str, draw: int) -> Any:
    type_name = type_name.strip()
    if "|" in type_name and "[" not in type_name.split("|", 1)[0]:
        options = [option.strip() for option in type_name.split("|") if option.strip() != "None"]
        return _value_for_type(options[0] if options else "str", note=note, text=text, draw=draw)
    head, inner = _unwrap(type_name)
    lowered = head.lower()
    if lowered in ("str", "any", "object", ""):
        return text
    if lowered == "int":
        return 1 + draw % 9
    if lowered == "float":
        return round((draw % 100) / 100, 2)
    if lowered == "bool":
        return draw % 2 == 0
    if lowered == "literal":
        try:
            options = ast.literal_eval(f"[{inner}]")
        except (ValueError, SyntaxError):
            options = []
        return options[draw % len(options)] if options else text
    if lowered in ("optional", "union"):
        options = [option for option in _split_arguments(inner) if option != "None"] or ["str"]
        return _value_for_type(options[0], note=note, text=text, draw=draw)
    if lowered in ("list", "set", "tuple", "sequence", "frozenset"):
        item_type = _split_arguments(inner)[0] if inner else "str"
        return [_value_for_type(item_type, note="", text=text, draw=draw)]
    if lowered in ("dict", "mapping"):
        arguments = _split_arguments(inner)
        value_type = arguments[1] if len(arguments) == 2 else "str"
        return {"key": _value_for_type(value_type, note="", text=text, draw=draw)}
    if _SCHEMA_MARKER in note:
        # A custom type (e.g. a pydantic model): its JSON schema is in the note.
        try:
            schema = json.loads(note.split(_SCHEMA_MARKER, 1)[1])
        except ValueError:
            return text
        return _from_schema(schema, schema.get("$defs", {}) if isinstance(schema, dict) else {}, text=text, draw=draw)
    return text


def value_for_field(field: OutputField, inputs: dict[str, str], *, draw: int) -> Any:
    """Return a placeholder value of ``field``'s type derived from ``inputs``.

    Args:
        field: the output field to fill.
        inputs: the request's input values (strings as the adapter rendered them).
        draw: a deterministic integer that picks among equally valid values.

    Returns:
        A value the adapter can parse back into the field's type.
    """
    text = excerpt(inputs)
    if "summary" not in field.name:
        text = f"{field.name.replace('_', ' ').capitalize()} for: {text}"
    if field.type_name.strip() == "int" and "word" in field.name:
        # A count of words is the one integer a reader can check, so make it right.
        first = next(iter(inputs.values()), "")
        return len(first.split())
    head, inner = _unwrap(field.type_name.strip())
    if head.lower() in _COLLECTIONS and inner.strip() in ("int", "float"):
        # An intermediate list of numbers (numbers: list[int]) holds the ones the problem states.
        numbers = _numbers_from(inputs, inner.strip())
        if numbers:
            return numbers
    return _value_for_type(field.type_name, note=field.note, text=text, draw=draw)


def _chat_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


def render(values: dict[str, Any], response_format: str) -> str:
    """Return the completion text carrying ``values`` in the requested format."""
    if response_format == JSON_FORMAT:
        return json.dumps(values, ensure_ascii=False, indent=2)
    if response_format == CHAT_FORMAT or values:
        sections = [f"[[ ## {name} ## ]]\n{_chat_value(value)}" for name, value in values.items()]
        return "\n\n".join([*sections, "[[ ## completed ## ]]"])
    return ""
