"""Read a DSPy adapter's prompt back into fields, types, instructions and demos.

The lab LM sees only what a real provider would see: the system text and the
messages DSPy's ChatAdapter or JSONAdapter wrote. This module recovers the
structure those adapters encode in text, so the engine can answer in the
requested format.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

__all__ = ["DemoTurn", "OutputField", "PromptView", "SystemView", "read_prompt"]

CHAT_FORMAT = "chat"
JSON_FORMAT = "json"
TEXT_FORMAT = "text"

_FIELD_LINE = re.compile(r"^\d+\. `(?P<name>[^`]+)` \((?P<type>.+?)\):(?: |$)(?P<description>.*)$", re.MULTILINE)
_OBJECTIVE_MARKER = "In adhering to this structure, your objective is:"
_JSON_BLOCK_MARKER = "Outputs will be a JSON object with the following fields."
_FIELD_HEADER = re.compile(r"\[\[ ## (\w+) ## \]\]\n?")
_RESPOND_MARKER = "\n\nRespond with "


@dataclass(frozen=True)
class OutputField:
    """An output field the adapter asks for.

    Attributes:
        name: the field name.
        type_name: the annotation as the adapter printed it (``int``, ``list[str]``...).
        note: the adapter's formatting note for the field (may carry a JSON schema).
        description: the field description, if any.
    """

    name: str
    type_name: str
    note: str
    description: str


@dataclass(frozen=True)
class SystemView:
    """What a system message says: the response format, the fields and the instructions."""

    response_format: str
    input_names: tuple[str, ...]
    output_fields: tuple[OutputField, ...]
    instructions: str


@dataclass(frozen=True)
class DemoTurn:
    """One few-shot demo: a user turn and the assistant turn that answers it.

    Attributes:
        inputs: the ``[[ ## name ## ]]`` sections of the user turn.
        outputs: the output fields of the assistant turn (sections or a JSON object), as text.
    """

    inputs: dict[str, str]
    outputs: dict[str, str]


@dataclass(frozen=True)
class PromptView:
    """A whole request as the simulator understands it.

    Attributes:
        system: the parsed system message.
        inputs: the input field values of the last user message.
        demo_count: how many few-shot demos (prior assistant turns) the prompt holds.
        last_user_text: the raw text of the last user message.
        demos: the demos, in order (an assistant turn with the user turn before it).
    """

    system: SystemView
    inputs: dict[str, str]
    demo_count: int
    last_user_text: str
    demos: tuple[DemoTurn, ...] = ()


def _fields_section(system: str, start: str, end: str) -> str:
    begin = system.find(start)
    if begin < 0:
        return ""
    begin += len(start)
    finish = system.find(end, begin)
    return system[begin : finish if finish >= 0 else len(system)]


def _chat_notes(system: str, names: list[str]) -> dict[str, str]:
    notes = {}
    for name in names:
        match = re.search(r"^\{" + re.escape(name) + r"\}\s+# note: (.*)$", system, re.MULTILINE)
        if match:
            notes[name] = match.group(1)
    return notes


def _json_notes(system: str) -> dict[str, str]:
    block = _fields_section(system, _JSON_BLOCK_MARKER, _OBJECTIVE_MARKER).strip()
    try:
        template = json.loads(block)
    except ValueError:
        return {}
    notes = {}
    for name, placeholder in template.items() if isinstance(template, dict) else ():
        if isinstance(placeholder, str) and "# note: " in placeholder:
            notes[name] = placeholder.split("# note: ", 1)[1]
    return notes


def _read_system(system: str) -> SystemView:
    if _JSON_BLOCK_MARKER in system:
        response_format = JSON_FORMAT
    elif "[[ ## completed ## ]]" in system:
        response_format = CHAT_FORMAT
    else:
        response_format = TEXT_FORMAT
    input_section = _fields_section(system, "Your input fields are:", "Your output fields are:")
    output_section = _fields_section(system, "Your output fields are:", "All interactions will be structured")
    input_names = tuple(match["name"] for match in _FIELD_LINE.finditer(input_section))
    raw_outputs = [
        (match["name"], match["type"], match["description"].strip()) for match in _FIELD_LINE.finditer(output_section)
    ]
    names = [name for name, _, _ in raw_outputs]
    notes = _json_notes(system) if response_format == JSON_FORMAT else _chat_notes(system, names)
    outputs = tuple(
        OutputField(name, type_name, notes.get(name, ""), description) for name, type_name, description in raw_outputs
    )
    objective = system.split(_OBJECTIVE_MARKER, 1)[1] if _OBJECTIVE_MARKER in system else ""
    instructions = "\n".join(line.strip() for line in objective.strip().splitlines())
    return SystemView(response_format, input_names, outputs, instructions)


# Parsing the same system message on every call would dominate the engine's
# cost; programs reuse a handful of system messages, so a bounded memo suffices.
_SYSTEM_MEMO: dict[str, SystemView] = {}
_SYSTEM_MEMO_LOCK = threading.Lock()
_SYSTEM_MEMO_LIMIT = 512


def read_system(system: str) -> SystemView:
    """Return the parsed view of a system message (memoized)."""
    view = _SYSTEM_MEMO.get(system)
    if view is None:
        view = _read_system(system)
        with _SYSTEM_MEMO_LOCK:
            if len(_SYSTEM_MEMO) >= _SYSTEM_MEMO_LIMIT:
                _SYSTEM_MEMO.clear()
            _SYSTEM_MEMO[system] = view
    return view


def read_inputs(text: str) -> dict[str, str]:
    """Return the ``[[ ## name ## ]]`` input sections of a user message."""
    cut = text.rfind(_RESPOND_MARKER)
    if cut >= 0:
        text = text[:cut]
    pieces = _FIELD_HEADER.split(text)
    # split() alternates: leading text, name, value, name, value...
    return {pieces[index]: pieces[index + 1].strip() for index in range(1, len(pieces) - 1, 2)}


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


# Programs repeat the same demo turns in every prompt; memoize their parsing.
@lru_cache(maxsize=4096)
def _read_demo(user_text: str, assistant_text: str) -> DemoTurn:
    outputs = read_inputs(assistant_text)
    outputs.pop("completed", None)
    if not outputs:
        try:
            loaded = json.loads(assistant_text)
        except ValueError:
            loaded = None
        if isinstance(loaded, dict):
            outputs = {str(name): _as_text(value) for name, value in loaded.items()}
    return DemoTurn(read_inputs(user_text), outputs)


def read_prompt(system: str, messages: list[tuple[str, str]]) -> PromptView:
    """Parse a request given as a system text and ``(role, text)`` messages."""
    system_view = read_system(system)
    last_user_text = next((text for role, text in reversed(messages) if role == "user"), "")
    demos = tuple(
        _read_demo(messages[index - 1][1] if index and messages[index - 1][0] == "user" else "", text)
        for index, (role, text) in enumerate(messages)
        if role == "assistant"
    )
    inputs = read_inputs(last_user_text)
    if not inputs and last_user_text:
        # A plain prompt (lm("...")) has no field markers: treat it as one input.
        inputs = {"prompt": last_user_text.strip()}
    return PromptView(system_view, inputs, len(demos), last_user_text, demos)
