"""Programs to and from DSPy's own saved format: a live module or a ``program.save("x.json")`` file.

A DSPy researcher's program is a module, often compiled, sometimes saved with DSPy's
``Module.save``. :func:`program_from_dspy` lifts it into a :class:`~dspex_lab.program.Program`
whose variables hold what DSPy saves per predictor: the instructions (a ``Text``), the
demos (a ``Demos``) and the LM's model, temperature and max_tokens. The variables are
named and targeted as SIMBA-C's own lift names them (``instructions``/``demos`` for a
module of one predictor, ``instructions__solve``/``demos__solve`` per predictor otherwise),
so an optimizer finds them instead of adding its own. :func:`save_dspy` writes a program
back in DSPy's format, through the built module's ``save``, so ``module.load(path)`` in
plain DSPy restores it.

A saved file is data from anyone, read as the rest of a spec is (``docs/security.md``):

* only DSPy's JSON state is read. ``save_program=True`` directories and ``.pkl`` files are
  cloudpickles, which are code: they are refused, never unpickled;
* at most :data:`MAX_DSPY_FILE_BYTES` bytes, parsed within the spec bounds
  (:func:`~dspex_lab.program.parse_json_spec`), at most :data:`MAX_DSPY_DEMOS` demos per predictor;
* the file does not name its class, so the caller does (``module_class=``), and the class goes
  through the registry and its allow-list like any spec's module;
* a saved LM is not an endpoint to trust: only its model name, temperature and max_tokens are
  kept, each checked as a binding's settings are; ``api_base``, keys and headers never travel,
  in either direction;
* state the program cannot carry (changed field prefixes or descriptions, keys DSPy's
  ``load_state`` would set as attributes) is refused rather than dropped, because the program
  would then predict differently from the module it came from.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dspy

from dspex_lab.errors import DspexLabWarning, ProgramSpecError, bounded_repr
from dspex_lab.program._bindings import MAX_TEMPERATURE, MAX_TOKENS, BoundSettings
from dspex_lab.program._bounded import MAX_SPEC_CHARACTERS, parse_json_spec
from dspex_lab.program._registry import module_name, registered_modules
from dspex_lab.program._safety import FORBIDDEN_INIT_KEYS
from dspex_lab.program._variables import Choice, Demos, Float, Int, Text, Variable
from dspex_lab.trace.redaction import is_secret_key

if TYPE_CHECKING:
    from dspex_lab.program._program import Program

__all__ = ["MAX_DSPY_DEMOS", "MAX_DSPY_FILE_BYTES", "program_from_dspy", "save_dspy"]

#: The largest saved DSPy state read, in bytes: the program it becomes must read back as a spec.
MAX_DSPY_FILE_BYTES = MAX_SPEC_CHARACTERS
#: The most demos a saved predictor may hold: the default bound of a ``dx.Demos`` variable.
MAX_DSPY_DEMOS = Demos().max

# What DSPy's Predict.dump_state writes; load_state sets any other key as an attribute, so no other is read.
_PREDICTOR_KEYS = frozenset({"traces", "train", "demos", "signature", "lm", "fields"})
# The LM settings a program carries; each is checked as a binding's setting is.
_CARRIED_LM_SETTINGS = ("model", "temperature", "max_tokens")
# Bookkeeping of DSPy's LM state (and the lab LM's simulator state) that does not change what a predictor asks.
_LM_BOOKKEEPING = frozenset(
    {
        "_dspy_lm_class",
        "model_type",
        "cache",
        "num_retries",
        "finetuning_model",
        "launch_kwargs",
        "train_kwargs",
        "engine",
        "async_engine",
    }
)
_IMPORTED = "imported from DSPy"
# Keys of a saved LM that name where it is or who calls it (DSPy's own unsafe keys among them): never read or written.
_ENDPOINT_KEYS = (FORBIDDEN_INIT_KEYS - {"model"}) | {"model_list"}


def program_from_dspy(
    source: dspy.Module | str | os.PathLike[str],
    *,
    name: str | None = None,
    module_class: str | type | None = None,
    signature: str | None = None,
) -> Program:
    """Return the program of a live DSPy module, or of a file saved with DSPy's ``module.save("x.json")``.

    See :meth:`~dspex_lab.program.Program.from_dspy`, which delegates here.
    """
    if isinstance(source, dspy.Module):
        where = f"the {type(source).__name__} module"
        module_path = _module_path(module_class if module_class is not None else type(source), where=where)
        if signature is None and module_path not in registered_modules():
            signature = _derive_signature(source, module_path)
        state = _live_state(source, where=where)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        where = str(path)
        if module_class is None:
            raise ProgramSpecError(
                f"{where}: a saved DSPy state does not name its module class; pass module_class= (a name registered "
                "with dx.register, or a dspy built-in such as 'dspy.ChainOfThought' with signature=...)"
            )
        module_path = _module_path(module_class, where=where)
        if signature is None and module_path.startswith("dspy.") and module_path not in registered_modules():
            raise ProgramSpecError(
                f"{where}: {module_path} is constructed with a signature, which a saved state does not hold; "
                "pass signature= (e.g. 'question -> answer')"
            )
        state = _read_saved_state(path)
        name = name if name is not None else path.stem
    else:
        raise ProgramSpecError(
            f"from_dspy takes a dspy.Module or the path of a saved .json state, got {bounded_repr(source)}"
        )
    program = _lift_state(state, module_path, signature=signature, name=name, where=where)
    if isinstance(source, dspy.Module):
        _check_live_fields(source, program, where=where)
    return program


def _module_path(module_class: str | type, *, where: str) -> str:
    """Return the spec name of ``module_class``: a registered name or a dspy built-in."""
    if isinstance(module_class, str):
        return module_class
    try:
        return module_name(module_class)
    except ProgramSpecError as error:
        raise ProgramSpecError(f"{where}: {error}") from None


def _derive_signature(module: dspy.Module, module_path: str) -> str:
    """Return the signature text a dspy built-in was constructed with, read from its first predictor.

    A built-in may add fields of its own (``dspy.ChainOfThought`` prepends ``reasoning``): the
    class is built once over a probe signature to see which fields it adds, and those are removed.
    """
    from dspex_lab.program._program import Program

    predictors = module.named_predictors()
    if not predictors:
        raise ProgramSpecError(f"the {type(module).__name__} module has no predictor to read a signature from")
    original = predictors[0][1].signature
    probe = "dspex_probe_input -> dspex_probe_output"
    probed = Program(module_path, signature=probe).build().named_predictors()
    added = set(probed[0][1].signature.fields) - set(dspy.Signature(probe).fields) if probed else set()
    for field_name in added & set(original.fields):
        original = original.delete(field_name)
    return _signature_text(original)


def _signature_text(signature: type[dspy.Signature]) -> str:
    """Return ``signature`` as signature text with its field types (``question -> answer: int``)."""

    def field_text(name: str, field: Any) -> str:
        annotation = field.annotation
        if annotation is str:
            return name
        shown = annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")
        return f"{name}: {shown}"

    inputs = ", ".join(field_text(name, field) for name, field in signature.input_fields.items())
    outputs = ", ".join(field_text(name, field) for name, field in signature.output_fields.items())
    return f"{inputs} -> {outputs}"


def _live_state(module: dspy.Module, *, where: str) -> dict[str, Any]:
    """Return a live module's state as DSPy would save it, read through the same bounds as a file."""
    try:
        text = json.dumps(module.dump_state(), ensure_ascii=False)
    except (TypeError, ValueError) as error:
        raise ProgramSpecError(f"{where}: its DSPy state is not JSON: {error}") from None
    state = parse_json_spec(text, source=where)
    if not isinstance(state, dict):
        raise ProgramSpecError(f"{where}: its DSPy state is not a JSON object")
    return state


def _read_saved_state(path: Path) -> dict[str, Any]:
    """Read DSPy's JSON state from ``path``, refusing pickles, other formats and files over the limit."""
    if path.is_dir():
        pickled = " (program.pkl: saved with save_program=True)" if (path / "program.pkl").exists() else ""
        raise ProgramSpecError(
            f"{path} is a directory{pickled}; dspex_lab reads only DSPy's JSON state, saved with "
            "module.save('program.json'): a cloudpickle is code, and a program is data"
        )
    if path.suffix != ".json":
        raise ProgramSpecError(
            f"{path}: dspex_lab reads only DSPy's JSON state (module.save('program.json')); "
            f"{path.suffix or 'a file without a suffix'} is not read (a .pkl is a cloudpickle, which is code)"
        )
    try:
        size = path.stat().st_size
        if size > MAX_DSPY_FILE_BYTES:
            raise ProgramSpecError(
                f"{path}: {size:,} bytes, more than the limit of {MAX_DSPY_FILE_BYTES:,} for a saved DSPy program"
            )
        with path.open("rb") as file:
            raw = file.read(MAX_DSPY_FILE_BYTES + 1)
    except OSError as error:
        raise ProgramSpecError(f"{path}: cannot be read: {error.strerror or error}") from None
    if len(raw) > MAX_DSPY_FILE_BYTES:
        raise ProgramSpecError(f"{path}: more than the limit of {MAX_DSPY_FILE_BYTES:,} bytes for a saved DSPy program")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ProgramSpecError(f"{path}: not UTF-8 text (byte {error.start}); a DSPy state is JSON") from None
    state = parse_json_spec(text, source=str(path))
    if not isinstance(state, dict):
        raise ProgramSpecError(f"{path}: a DSPy state is a JSON object of predictor -> state")
    return state


def _lift_state(
    state: dict[str, Any], module_path: str, *, signature: str | None, name: str | None, where: str
) -> Program:
    """Return the program of ``module_path`` holding the saved state's instructions, demos and LM settings."""
    from dspex_lab.program._program import Program

    try:
        predictors = dict(Program(module_path, signature=signature).build().named_predictors())
    except ProgramSpecError as error:
        raise ProgramSpecError(f"{where}: {error}") from None
    states = _predictor_states(state, predictors, where=where)
    single = len(predictors) == 1
    variables: dict[str, Variable] = {}
    left_out: list[str] = []
    for predictor_name, predictor_state in states.items():
        scope = "" if single else predictor_name
        variables.update(_predictor_variables(predictor_state, scope, where=f"{where}, predictor {predictor_name!r}"))
        settings, dropped = _lm_settings(predictor_state.get("lm"), where=f"{where}, predictor {predictor_name!r}")
        variables.update(_lm_variables(settings, scope))
        left_out.extend(f"{predictor_name}: {item}" for item in dropped)
    program = Program(module_path, signature=signature, variables=variables, name=name)
    _check_rebuilt(program, states, where=where)
    if left_out:
        warnings.warn(
            f"{where}: LM settings a program does not carry were left out ({'; '.join(left_out)}); "
            "configure the LM with dx.Context(lm=...)",
            DspexLabWarning,
            stacklevel=4,
        )
    return program


def _predictor_states(state: Mapping[str, Any], predictors: Mapping[str, Any], *, where: str) -> dict[str, Any]:
    """Return predictor name → saved state, refusing a state whose predictors are not the module's."""
    saved = {key: value for key, value in state.items() if key != "metadata"}
    if list(predictors) == ["self"]:
        # A dspy.Predict saves its own state at the top, not under a name.
        saved = {"self": saved}
    missing = sorted(set(predictors) - set(saved))
    unexpected = sorted(set(saved) - set(predictors))
    if missing or unexpected:
        raise ProgramSpecError(
            f"{where}: the saved predictors are not the module's: missing {bounded_repr(missing, limit=200)}, "
            f"unexpected {bounded_repr(unexpected, limit=200)}; the module has {sorted(predictors)}"
        )
    for predictor_name, predictor_state in saved.items():
        if not isinstance(predictor_state, dict):
            raise ProgramSpecError(f"{where}: predictor {predictor_name!r}'s state is not a JSON object")
        unknown = sorted(set(predictor_state) - _PREDICTOR_KEYS)
        if unknown:
            raise ProgramSpecError(
                f"{where}: predictor {predictor_name!r} has keys {bounded_repr(unknown, limit=200)} that a "
                f"DSPy predictor does not save (expected some of {sorted(_PREDICTOR_KEYS)})"
            )
        if predictor_state.get("fields"):
            raise ProgramSpecError(
                f"{where}: predictor {predictor_name!r} has per-field decision settings ('fields'), which a "
                "program does not carry"
            )
    return {predictor_name: saved[predictor_name] for predictor_name in predictors}


def _scoped(setting: str, scope: str) -> tuple[str, str]:
    """Return (variable name, target) of ``setting`` for a scope, named as SIMBA-C's lift names them."""
    if not scope:
        return setting, setting
    target = f"{setting}:{scope}"
    return target.replace(":", "__").replace(".", "_"), target


def _predictor_variables(predictor_state: Mapping[str, Any], scope: str, *, where: str) -> dict[str, Variable]:
    """Return the instructions and demos variables of one saved predictor."""
    signature_state = predictor_state.get("signature")
    if not isinstance(signature_state, dict) or not isinstance(signature_state.get("instructions"), str):
        raise ProgramSpecError(f"{where}: 'signature' must be an object with 'instructions' text")
    demos = predictor_state.get("demos", [])
    if not isinstance(demos, list) or not all(isinstance(demo, dict) for demo in demos):
        raise ProgramSpecError(f"{where}: 'demos' must be a list of objects (field -> value)")
    if len(demos) > MAX_DSPY_DEMOS:
        raise ProgramSpecError(f"{where}: {len(demos)} demos, more than the limit of {MAX_DSPY_DEMOS} per predictor")
    instructions_name, instructions_target = _scoped("instructions", scope)
    demos_name, demos_target = _scoped("demos", scope)
    return {
        instructions_name: Text(signature_state["instructions"], target=instructions_target, description=_IMPORTED),
        demos_name: Demos(demos, max=MAX_DSPY_DEMOS, target=demos_target, description=_IMPORTED),
    }


def _lm_settings(lm_state: Any, *, where: str) -> tuple[dict[str, Any], list[str]]:
    """Return the model, temperature and max_tokens a saved LM keeps, and what was left out and why."""
    if lm_state is None:
        return {}, []
    if not isinstance(lm_state, dict):
        raise ProgramSpecError(f"{where}: 'lm' must be an object or null, got {bounded_repr(lm_state)}")
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    for key, value in lm_state.items():
        normalised = str(key).lower().replace("-", "_")
        if key in _CARRIED_LM_SETTINGS and value is not None:
            try:
                checked = BoundSettings.from_data({key: value}, where=where).lm_settings()
            except ProgramSpecError as error:
                dropped.append(f"{key} ({str(error)[len(where) + 2 :]})")
            else:
                kept.update(checked)
        elif normalised in _ENDPOINT_KEYS or is_secret_key(str(key)):
            dropped.append(f"{key} (an endpoint or credential never travels in a program)")
        elif key not in _LM_BOOKKEEPING and key not in _CARRIED_LM_SETTINGS and value is not None:
            dropped.append(f"{key} (not a program setting)")
    if "model" not in kept and kept:
        dropped.extend(f"{key} (no valid model to apply it to)" for key in sorted(kept))
        kept = {}
    return kept, dropped


def _lm_variables(settings: Mapping[str, Any], scope: str) -> dict[str, Variable]:
    """Return one variable per kept LM setting of a predictor (or of the whole module of one predictor)."""
    variables: dict[str, Variable] = {}
    for setting, value in settings.items():
        variable_name, target = _scoped(setting, scope)
        if setting == "model":
            variables[variable_name] = Choice(value, choices=(value,), target=target, description=_IMPORTED)
        elif setting == "temperature":
            variables[variable_name] = Float(value, low=0.0, high=MAX_TEMPERATURE, target=target, description=_IMPORTED)
        else:
            variables[variable_name] = Int(value, low=1, high=MAX_TOKENS, target=target, description=_IMPORTED)
    return variables


def _text_module(program: Program) -> dspy.Module:
    """Build ``program``'s module with its instructions and demos only.

    The saved models are checked when the program runs, as any spec's; reading what the
    module holds needs no LM.
    """
    from dspex_lab.program._program import Program

    text_only = {name: variable for name, variable in program.variables.items() if isinstance(variable, (Text, Demos))}
    return Program(program.module, signature=program.signature, variables=text_only).build()


def _check_rebuilt(program: Program, states: Mapping[str, Any], *, where: str) -> None:
    """Refuse a program whose module, built, would not hold the saved field texts.

    The lifted program sets instructions and demos; field prefixes and descriptions come from
    the class. A state saved after an optimizer rewrote a field's prefix (COPRO does) cannot be
    carried, and dropping it would change every prompt.
    """
    rebuilt = dict(_text_module(program).named_predictors())
    for predictor_name, saved in states.items():
        built = rebuilt[predictor_name].dump_state()["signature"]["fields"]
        saved_fields = saved["signature"].get("fields")
        if saved_fields != built:
            module = f"{program.module}({program.signature!r})" if program.signature else program.module
            raise ProgramSpecError(
                f"{where}: predictor {predictor_name!r}'s saved field texts {bounded_repr(saved_fields, limit=160)} "
                f"are not those {module} builds ({bounded_repr(built, limit=160)}); a program carries "
                "instructions and demos, not field texts: check module_class= and signature=, or register a class "
                "that builds these fields"
            )


def _check_live_fields(module: dspy.Module, program: Program, *, where: str) -> None:
    """Refuse a live module whose field types or predictor settings the program would not rebuild."""
    rebuilt = dict(_text_module(program).named_predictors())
    for predictor_name, predictor in module.named_predictors():
        built = rebuilt[predictor_name]
        original = [(field, info.annotation) for field, info in predictor.signature.fields.items()]
        mine = [(field, info.annotation) for field, info in built.signature.fields.items()]
        if original != mine:
            raise ProgramSpecError(
                f"{where}: predictor {predictor_name!r} has fields {bounded_repr(original, limit=160)}, but "
                f"{program.module} rebuilds {bounded_repr(mine, limit=160)}; pass signature= or register the class"
            )
        if predictor.config != built.config:
            raise ProgramSpecError(
                f"{where}: predictor {predictor_name!r} was constructed with settings "
                f"{bounded_repr(predictor.config, limit=160)} that {program.module} does not rebuild; "
                "register a module class that sets them"
            )


def save_dspy(program: Program, path: str | os.PathLike[str], *, lm: dspy.BaseLM | None = None) -> Path:
    """Write ``program``'s built module in DSPy's JSON format; see :meth:`~dspex_lab.program.Program.save_dspy`."""
    target = Path(path)
    if target.suffix != ".json":
        raise ProgramSpecError(
            f"{target}: save_dspy writes DSPy's JSON state, so the path must end with .json "
            "(a .pkl or a save_program directory is a cloudpickle, which is code)"
        )
    module = program.build(lm=lm)
    handle, temporary = tempfile.mkstemp(suffix=".json", prefix=f".{target.stem}.", dir=target.parent)
    os.close(handle)
    try:
        module.save(temporary)
        state = json.loads(Path(temporary).read_text(encoding="utf-8"))
        Path(temporary).write_text(
            json.dumps(_without_endpoints(state), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return target


def _without_endpoints(state: dict[str, Any]) -> dict[str, Any]:
    """Return a saved state with no endpoint or credential in any predictor's LM (DSPy keeps ``api_base``)."""

    def clean(predictor_state: Any) -> Any:
        if not isinstance(predictor_state, dict) or not isinstance(predictor_state.get("lm"), dict):
            return predictor_state
        lm_state = {
            key: value
            for key, value in predictor_state["lm"].items()
            if str(key).lower().replace("-", "_") not in _ENDPOINT_KEYS and not is_secret_key(str(key))
        }
        return {**predictor_state, "lm": lm_state}

    if "signature" in state and "demos" in state:  # a dspy.Predict saves its own state at the top
        return clean(state)
    return {key: clean(value) if key != "metadata" else value for key, value in state.items()}
