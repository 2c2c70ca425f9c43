"""``VariableControls``: sliders, dropdowns, switches and text boxes bound to a program's variables."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Mapping
from typing import Any

import dspy

from dspex_lab.errors import MissingDependencyError, ProgramSpecError, VariableError
from dspex_lab.notebook._widgets_common import front_end_file, json_number
from dspex_lab.program import Bool, Choice, Demos, Float, Int, Program, Text, Variable

try:
    import anywidget
    import traitlets
except ImportError as error:  # pragma: no cover - exercised only without the notebook extra
    raise MissingDependencyError("anywidget", "notebook") from error

__all__ = ["VariableControls"]

# A bounded Float's slider moves in this many steps unless the variable names its own step.
_SLIDER_STEPS = 100

# Output values longer than this are cut in the preview (a model can write pages).
_PREVIEW_CHARACTERS = 4000

# A Text limited to this many characters, whose value is one line, is a one-line box (Enter sends it);
# a longer or unlimited one (instructions) is a text area, where Enter starts a new line.
_ONE_LINE_CHARACTERS = 80


def _control(name: str, variable: Variable) -> dict[str, Any]:
    """Describe the control that edits ``variable`` within its domain, for the front end."""
    spec: dict[str, Any] = {"name": name, "description": variable.description, "allowed": variable.allowed()}
    if isinstance(variable, Float):
        bounded = math.isfinite(variable.low) and math.isfinite(variable.high)
        step = variable.step or ((variable.high - variable.low) / _SLIDER_STEPS if bounded else None)
        spec |= {
            "control": "slider" if bounded and variable.high > variable.low else "number",
            "integer": False,
            "low": json_number(variable.low),
            "high": json_number(variable.high),
            "step": step,
        }
    elif isinstance(variable, Int):
        bounded = variable.low is not None and variable.high is not None
        spec |= {
            "control": "slider" if bounded and variable.high > variable.low else "number",  # type: ignore[operator]
            "integer": True,
            "low": variable.low,
            "high": variable.high,
            "step": 1,
        }
    elif isinstance(variable, Choice):  # ModuleType too
        spec |= {"control": "dropdown", "choices": list(variable.choices)}
    elif isinstance(variable, Bool):
        spec |= {"control": "checkbox"}
    elif isinstance(variable, Text):
        one_line = variable.max_length is not None and variable.max_length <= _ONE_LINE_CHARACTERS
        spec |= {
            "control": "text",
            "max_length": variable.max_length,
            "multiline": not one_line or "\n" in variable.value,
        }
    elif isinstance(variable, Demos):
        spec |= {"control": "fixed", "shown": f"{len(variable.value)} demos (set by an optimizer)"}
    else:
        spec |= {"control": "fixed", "shown": json.dumps(variable.value, default=str)[:200]}
    return spec


def _shown(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= _PREVIEW_CHARACTERS else text[: _PREVIEW_CHARACTERS - 1] + "…"


class VariableControls(anywidget.AnyWidget):
    """Edit a program's variables with controls that cannot leave their domains, and preview the result.

    A bounded ``Float`` or ``Int`` is a slider between its bounds (an unbounded one a number box that
    refuses values outside them), a ``Choice`` or ``ModuleType`` a dropdown of its choices, a ``Bool`` a
    checkbox, a ``Text`` a text box limited to its ``max_length`` (one line when that is short, a text area
    otherwise); ``Demos`` are shown, not edited (an optimizer sets them). A focused slider moves by its step
    with the arrow keys (by ten steps with Page Up/Down, to its bounds with Home/End). A text box sends its
    value on Enter (Ctrl/Cmd+Enter in a text area), when the box is left, and after ``typing_pause`` seconds
    without a keystroke; Escape puts back the value last sent. :attr:`program` is the program with the
    current values. Given an ``example``, every change runs the program on it (after ``preview_delay``
    seconds without a further change) and shows its output fields, and the ``metric``'s score if one is
    given. A combination that breaks one of the program's constraints is shown as an error and not
    previewed.

    Args:
        program: the program whose variables to edit.
        example: a ``dspy.Example`` with its inputs marked (``.with_inputs(...)``), or a dict of the
            signature's input fields, to preview on.
        lm: the LM of the preview (a model string or ``dspy.BaseLM``; default: the active
            ``dx.Context``'s, the lab LM unless configured otherwise).
        metric: ``metric(example, prediction)``, shown for the preview.
        preview_delay: seconds of quiet after a change before the preview runs.
        typing_pause: seconds without a keystroke after which a text box sends what was typed; ``None``
            sends it only on Enter or when the box is left (for a preview too slow to follow typing).

    Raises:
        ProgramSpecError: ``program`` is not a ``dx.Program``, the example's inputs cannot be told, or a
            delay is negative.
    """

    _esm = front_end_file("variable_controls.js", widget="VariableControls")
    _css = front_end_file("variable_controls.css", widget="VariableControls")

    title = traitlets.Unicode("").tag(sync=True)
    controls = traitlets.List().tag(sync=True)
    values = traitlets.Dict().tag(sync=True)
    error = traitlets.Unicode("").tag(sync=True)
    preview = traitlets.Dict().tag(sync=True)
    typing_pause = traitlets.Float(None, allow_none=True).tag(sync=True)

    def __init__(
        self,
        program: Program,
        *,
        example: dspy.Example | Mapping[str, Any] | None = None,
        lm: str | dspy.BaseLM | None = None,
        metric: Callable[[dspy.Example, Any], Any] | None = None,
        preview_delay: float = 0.5,
        typing_pause: float | None = 0.4,
    ) -> None:
        if not isinstance(program, Program):
            raise ProgramSpecError(f"VariableControls takes a dx.Program, got {type(program).__name__}")
        _check_seconds("preview_delay", preview_delay)
        if typing_pause is not None:
            _check_seconds("typing_pause", typing_pause)
        if metric is not None and not callable(metric):
            raise ProgramSpecError(f"metric must be callable as metric(example, prediction), got {metric!r}")
        self._base = program
        self._editable = {
            name: variable for name, variable in program.variables.items() if not isinstance(variable, Demos)
        }
        self._example, self._inputs = _preview_inputs(program, example)
        self._metric = metric
        self._delay = float(preview_delay)
        self._lm = _preview_lm(lm) if example is not None else None
        self._program = program
        self._lock = threading.Lock()
        self._generation = 0
        self._timer: threading.Timer | None = None
        super().__init__(
            title=program.name,
            controls=[_control(name, variable) for name, variable in program.variables.items()],
            values={name: variable.value for name, variable in self._editable.items()},
            preview={"status": "idle" if example is not None else "none"},
            typing_pause=None if typing_pause is None else float(typing_pause),
        )

    @property
    def program(self) -> Program:
        """The program with the controls' current values (``program.with_values(...)``).

        Raises:
            VariableError: the values break one of the program's constraints.
        """
        changed = {name: value for name, value in self.values.items() if value != self._base.values[name]}
        return self._base.with_values(**changed) if changed else self._base

    @traitlets.validate("values")
    def _check_values(self, proposal: dict[str, Any]) -> dict[str, Any]:
        # Every value passes its variable's own check here, whether it came from the front end or from
        # Python: a value outside a domain never reaches the program.
        proposed = proposal["value"]
        unknown = sorted(set(proposed) - self._editable.keys())
        if unknown:
            raise VariableError(
                ", ".join(unknown),
                proposed[unknown[0]],
                f"one of the editable variables {sorted(self._editable)}",
                detail="unknown variable",
            )
        current = dict(self.values) if self.values else {}
        return {
            name: variable.validate(proposed[name], name=name) if name in proposed else current[name]
            for name, variable in self._editable.items()
        }

    @traitlets.observe("values")
    def _values_changed(self, _change: dict[str, Any]) -> None:
        try:
            self._program = self.program
        except VariableError as error:
            self.error = str(error)
            return
        self.error = ""
        if self._example is not None:
            self._schedule_preview()

    # -- Preview ------------------------------------------------------------------------------------

    def _schedule_preview(self) -> None:
        with self._lock:
            self._generation += 1
            generation = self._generation
            if self._timer is not None:
                self._timer.cancel()
            self._timer = threading.Timer(self._delay, self._preview_later, args=(generation,))
            self._timer.daemon = True
            self._timer.start()
        self.preview = {**self.preview, "status": "pending"}

    def _preview_later(self, generation: int) -> None:
        with self._lock:
            if generation != self._generation:
                return
        self.preview = {**self.preview, "status": "running"}
        result = self._compute_preview(self._program)
        with self._lock:
            if generation != self._generation:
                return  # the values changed while this ran: a newer preview is on its way
            self.preview = result

    def run_preview(self) -> dict[str, Any]:
        """Run the program with the current values on the example now, show the result and return it.

        Raises:
            ProgramSpecError: the widget was made without an example.
        """
        if self._example is None:
            raise ProgramSpecError("VariableControls was made without example=, so there is nothing to preview")
        with self._lock:
            self._generation += 1
            if self._timer is not None:
                self._timer.cancel()
        result = self._compute_preview(self._program)
        self.preview = result
        return result

    def _compute_preview(self, program: Program) -> dict[str, Any]:
        values = dict(program.values)
        try:
            module = program.build(lm=self._lm)
            prediction = module(**self._inputs)
        except Exception as error:  # the program's own failure is what the preview shows
            return {"status": "error", "error": f"{type(error).__name__}: {error}", "values": _json(values)}
        outputs = {key: _shown(value) for key, value in dict(prediction.items()).items()}
        result: dict[str, Any] = {"status": "ok", "outputs": outputs, "values": _json(values)}
        if self._metric is not None:
            try:
                result["score"] = json_number(self._metric(self._example, prediction))
            except Exception as error:
                result["metric_error"] = f"{type(error).__name__}: {error}"
        return result


def _check_seconds(name: str, seconds: Any) -> None:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds < math.inf:
        raise ProgramSpecError(f"{name} must be a non-negative number of seconds, got {seconds!r}")


def _json(values: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(values, default=str))


def _preview_lm(lm: str | dspy.BaseLM | None) -> dspy.BaseLM:
    from dspex_lab.providers import resolve_lm

    if lm is not None:
        return resolve_lm(lm)
    from dspex_lab.session import current_context

    return current_context().lm


def _preview_inputs(
    program: Program, example: dspy.Example | Mapping[str, Any] | None
) -> tuple[dspy.Example | None, dict[str, Any]]:
    """Return the example to score against and the inputs to call the program with."""
    if example is None:
        return None, {}
    if isinstance(example, dspy.Example):
        if example._input_keys is None:
            raise ProgramSpecError(
                "the preview example does not say which fields are inputs: pass dspy.Example(...).with_inputs(...)"
            )
        return example, dict(example.inputs().items())
    if isinstance(example, Mapping):
        if program.signature is None:
            raise ProgramSpecError(
                "a dict example needs the program's signature to tell its inputs; pass a dspy.Example "
                "with .with_inputs(...) instead"
            )
        try:
            fields = list(dspy.ensure_signature(program.signature).input_fields)
        except Exception as error:  # DSPy's own parse error, re-raised as ours
            raise ProgramSpecError(f"cannot read the inputs of signature {program.signature!r}: {error}") from error
        missing = [name for name in fields if name not in example]
        if missing:
            raise ProgramSpecError(f"the preview example lacks the input fields {missing} of {program.signature!r}")
        return dspy.Example(**example).with_inputs(*fields), {name: example[name] for name in fields}
    raise ProgramSpecError(f"example must be a dspy.Example or a dict, got {type(example).__name__}")
