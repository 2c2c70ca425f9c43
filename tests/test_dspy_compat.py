"""Probes of every entry of dspex_lab._dspy_compat against the installed DSPy, and the one-door guard.

Each probe names its entry and what changed when it fails: after a DSPy upgrade, read the message, then fix
that entry (and only it) in dspex_lab/_dspy_compat.py. The guard test fails when a module of dspex_lab other
than _dspy_compat.py touches a DSPy private name.
"""

from __future__ import annotations

import ast
import asyncio
import copy
import inspect
from pathlib import Path
from typing import Any

import dspy
import pytest

import dspex_lab as dx
from dspex_lab import _dspy_compat as compat
from dspex_lab.engine import CancelToken, install_lm_guard
from dspex_lab.errors import TrialCancelledError

PACKAGE = Path(dx.__file__).parent


def _changed(entry: str, what: str) -> str:
    return (
        f"dspex_lab._dspy_compat.{entry}: DSPy {dspy.__version__} changed what it relies on "
        f"(written against {compat.WRITTEN_FOR}): {what}"
    )


class _Seen(dspy.utils.BaseCallback):
    def __init__(self) -> None:
        self.starts: list[tuple[str, str, Any]] = []

    def on_module_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self.starts.append(("module", call_id, compat.CURRENT_CALL_ID.get()))

    def on_adapter_format_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self.starts.append(("adapter_format", call_id, instance))


# --- the active call id -----------------------------------------------------------------------------------------


def test_current_call_id_is_the_id_dspy_sets_around_a_decorated_call() -> None:
    assert compat.CURRENT_CALL_ID_FOUND, _changed(
        "CURRENT_CALL_ID", "dspy.utils.callback_context.ACTIVE_CALL_ID is gone"
    )
    inside: list[Any] = []

    @dspy.utils.with_callbacks
    def call(self: Any) -> None:
        inside.append(compat.CURRENT_CALL_ID.get())

    seen = _Seen()
    with dspy.context(callbacks=[seen]):
        call(object())
    assert len(seen.starts) == 1 and inside == [seen.starts[0][1]], _changed(
        "CURRENT_CALL_ID", "with_callbacks no longer sets ACTIVE_CALL_ID to the call id it gives on_module_start"
    )
    # Set after the start handler: the handler reads its caller's id, the parent.
    assert seen.starts[0][2] is None, _changed("CURRENT_CALL_ID", "ACTIVE_CALL_ID is set before on_*_start runs")


# --- adapter subclasses --------------------------------------------------------------------------------------------


def test_keep_inherited_callback_wrappers_leaves_one_format_span() -> None:
    class Shouting(dspy.ChatAdapter):
        pass

    assert "format" in vars(Shouting), _changed(
        "keep_inherited_callback_wrappers", "Adapter.__init_subclass__ no longer wraps format in every subclass"
    )
    compat.keep_inherited_callback_wrappers(Shouting)
    assert "format" not in vars(Shouting) and "parse" not in vars(Shouting)
    seen = _Seen()
    signature = dspy.ensure_signature("question -> answer")
    with dspy.context(callbacks=[seen]):
        Shouting().format(signature, demos=[], inputs={"question": "q"})
    assert [kind for kind, *_ in seen.starts] == ["adapter_format"], _changed(
        "keep_inherited_callback_wrappers", f"a callback saw {seen.starts}"
    )


# --- the LM call guard --------------------------------------------------------------------------------------------


def test_lm_entry_points_are_guarded_and_a_cancelled_trial_makes_no_call() -> None:
    assert install_lm_guard(), _changed("wrap_lm_entry_points", "dspy.BaseLM has no __call__/acall of its own")
    patches = compat.active_patches()
    assert any(name.endswith("BaseLM.__call__") for name in patches)
    assert any(name.endswith("BaseLM.acall") for name in patches)
    lm = dspy.utils.DummyLM([{"answer": "1"}, {"answer": "2"}])
    token = CancelToken()
    handle = token.bind()
    try:
        token.cancel("probe")
        with pytest.raises(TrialCancelledError):
            lm("question")
        with pytest.raises(TrialCancelledError):
            asyncio.run(lm.acall("question"))
    finally:
        CancelToken.unbind(handle)
    assert lm.history == [], _changed("wrap_lm_entry_points", "an LM call went past the guard")
    assert lm("question"), "outside a trial the guarded call behaves as DSPy's"


def test_lm_takes_request_timeout_only_for_dspys_own_clients() -> None:
    assert compat.lm_takes_request_timeout(dspy.LM("openai/gpt-4o-mini")), _changed(
        "lm_takes_request_timeout", "dspy.LM.engine is no longer a string for DSPy's own clients"
    )
    assert not compat.lm_takes_request_timeout(dx.lab_lm("lab/small")), _changed(
        "lm_takes_request_timeout", "a custom engine's LM has a string engine"
    )


# --- the LM history layout ----------------------------------------------------------------------------------------


def test_lm_call_usage_finds_this_calls_history_entry() -> None:
    lm = dx.lab_lm("lab/small")
    first = lm("What is 2 + 3? probe one")
    second = lm("What is 4 + 4? probe two, a longer question")
    entry = lm.history[-1]
    for key in ("outputs", "usage", "response", "cost", "response_model"):
        assert key in entry, _changed("lm_call_usage", f"LM history entries have no {key!r}")
    usage_first, usage_second = compat.lm_call_usage(lm, first), compat.lm_call_usage(lm, second)
    assert usage_first is not None and usage_second is not None, _changed(
        "lm_call_usage", "a call's outputs are no longer its history entry's 'outputs'"
    )
    assert usage_second["prompt_tokens"] == entry["usage"]["prompt_tokens"] > usage_first["prompt_tokens"] > 0
    assert usage_first["cache_hit"] is False and usage_first["response_model"] == "lab/small"
    assert compat.lm_call_usage(lm, ["not an output of this LM"]) is None


# --- metering -----------------------------------------------------------------------------------------------------


def test_provider_map_rates_prices_a_known_model() -> None:
    rates = compat.provider_map_rates("openai", "gpt-4o-mini")
    assert rates is not None, _changed("provider_map_rates", "dspy.clients.model_metadata no longer prices gpt-4o-mini")
    assert rates == pytest.approx((0.15e-6, 0.60e-6))
    assert compat.provider_map_rates("openai", "no-such-model-dspex") is None


def test_metering_hooks_see_each_call_with_its_history_entry() -> None:
    calls: list[tuple[str, Any]] = []
    costs: list[tuple[Any, float]] = []
    hooks = compat.MeteringHooks(
        lambda model, usage: calls.append((model, usage)) or len(calls),
        lambda handle, cost: costs.append((handle, cost)),
    )
    entries: list[Any] = []
    tap = hooks.settings()["caller_modules"][-1]
    take_cost = tap.history._on_entry
    tap.history._on_entry = lambda entry: (entries.append(entry), take_cost(entry))
    lm = dx.lab_lm("lab/small")
    with dspy.context(**hooks.settings()):
        lm("What is 6 + 1? metering probe", rollout_id=11, temperature=1.0)
        with dspy.track_usage():
            lm("What is 6 + 2? metering probe", rollout_id=12, temperature=1.0)
    assert [model for model, _ in calls] == ["lab/small", "lab/small"], _changed(
        "MeteringHooks", f"usage_tracker.add_usage or the nested track_usage roll-up reported {calls}"
    )
    assert calls[0][1]["prompt_tokens"] > 0
    assert entries and entries[0]["usage"] is calls[0][1], _changed(
        "MeteringHooks", "the history entry handed to caller_modules no longer carries the add_usage mapping"
    )
    assert copy.deepcopy(hooks.tracker) is hooks.tracker
    # DSPy's cost, when it reports one, reaches on_cost for the call it belongs to.
    usage = {"prompt_tokens": 1, "completion_tokens": 1}
    hooks.tracker.add_usage("openai/gpt-4o-mini", usage)
    hooks.tracker.take_cost({"usage": usage, "cost": 0.25})
    assert costs == [(3, 0.25)]


def test_metering_setting_names_are_dspy_settings() -> None:
    for name in compat.METERING_SETTING_NAMES:
        assert name in dspy.settings.config, _changed("METERING_SETTING_NAMES", f"{name!r} is no DSPy setting")


# --- DSPy's compile -----------------------------------------------------------------------------------------------


def test_quiet_parallel_progress_turns_the_bars_off_and_restores_the_class() -> None:
    from dspy.utils.parallelizer import ParallelExecutor

    assert "self.disable_progress_bar" in inspect.getsource(ParallelExecutor), _changed(
        "quiet_parallel_progress", "ParallelExecutor no longer reads disable_progress_bar"
    )
    before = ParallelExecutor.__init__
    with compat.quiet_parallel_progress():
        assert ParallelExecutor(num_threads=2).disable_progress_bar is True
        assert any(name.endswith("ParallelExecutor.__init__") for name in compat.active_patches())
    assert ParallelExecutor.__init__ is before
    assert ParallelExecutor().disable_progress_bar is False
    assert not any(name.endswith("ParallelExecutor.__init__") for name in compat.active_patches())


def test_gated_lm_copy_asks_before_every_call_and_survives_deepcopy() -> None:
    lm = dspy.utils.DummyLM([{"answer": "1"}] * 3)
    asked: list[int] = []
    gated = compat.gated_lm_copy(lm, lambda: asked.append(1))
    assert isinstance(gated, type(lm)) and type(gated).__name__ == "BudgetedDummyLM"
    gated("question")
    asyncio.run(gated.acall("question"))
    assert len(asked) == 2
    assert copy.deepcopy(gated) is gated, _changed("gated_lm_copy", "a deep copy of the LM loses its gate")
    assert type(lm) is dspy.utils.DummyLM

    def refuse() -> None:
        raise RuntimeError("spent")

    refused = compat.gated_lm_copy(lm, refuse)
    with pytest.raises(RuntimeError, match="spent"):
        refused("question")


# --- the one-door guard -------------------------------------------------------------------------------------------

# DSPy modules (and the names in them) that are public: exported by ``dspy`` or ``dspy.utils`` or documented.
PUBLIC_DSPY_MODULES = {"dspy", "dspy.utils", "dspy.lm15", "dspy.utils.exceptions", "dspy.utils.callback"}
PUBLIC_FROM_CALLBACK = {"BaseCallback", "with_callbacks"}
# DSPy internals known by name; none may appear outside the compatibility module.
KNOWN_INTERNALS = {
    "thread_local_overrides",
    "main_thread_config",
    "ACTIVE_CALL_ID",
    "caller_modules",
    "callback_context",
    "UsageTracker",
    "usage_tracker",
    "ParallelExecutor",
    "parallelizer",
    "model_metadata",
    "disable_progress_bar",
    "supports_decision_requests",
    "_get_on_start_handler",
    "_get_active_callbacks",
}
# Attributes whose assignment patches a class (or an object's class).
PATCHED_ATTRIBUTES = {"__class__", "__call__", "acall", "__init__", "forward", "aforward", "format", "parse"}
# The package module swaps its own module's class to load layers lazily; it is not DSPy.
ALLOWED_PATCHES = {("__init__.py", "__class__")}


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _dspy_names(tree: ast.AST) -> set[str]:
    """Local names bound to dspy or to something imported from it."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {
                (alias.asname or alias.name).split(".")[0] for alias in node.names if alias.name.startswith("dspy")
            }
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "dspy":
            names |= {alias.asname or alias.name for alias in node.names}
    return names


def _root(node: ast.AST) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def private_dspy_access(source: str, filename: str) -> list[str]:
    """Every access to a DSPy private name in ``source``, as ``file:line: what``."""
    tree = ast.parse(source)
    docstrings = _docstrings(tree)
    dspy_names = _dspy_names(tree)
    local_classes = {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef) and any(_root(base) in dspy_names for base in node.bases)
    }
    found: list[str] = []

    def flag(node: ast.AST, what: str) -> None:
        found.append(f"{filename}:{node.lineno}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "dspy":
            module = node.module or ""
            for alias in node.names:
                private_module = module not in PUBLIC_DSPY_MODULES
                if module == "dspy.utils.callback" and alias.name not in PUBLIC_FROM_CALLBACK:
                    private_module = True
                if alias.name.startswith("_") or private_module:
                    flag(node, f"from {module} import {alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("dspy.") and alias.name not in PUBLIC_DSPY_MODULES:
                    flag(node, f"import {alias.name}")
        elif isinstance(node, ast.Attribute):
            if node.attr in KNOWN_INTERNALS:
                flag(node, f"DSPy internal .{node.attr}")
            elif node.attr.startswith("_") and not node.attr.startswith("__") and _root(node) in dspy_names:
                flag(node, f"private DSPy attribute .{node.attr}")
        elif isinstance(node, ast.Name) and node.id in KNOWN_INTERNALS:
            flag(node, f"DSPy internal {node.id}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            words = set(node.value.replace(".", " ").replace("/", " ").split())
            hits = words & KNOWN_INTERNALS
            if hits or node.value.startswith(("dspy.dsp.", "dspy.utils.callback_context")):
                flag(node, f"DSPy internal named in a string: {node.value!r}")
        if isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if not isinstance(target, ast.Attribute) or (Path(filename).name, target.attr) in ALLOWED_PATCHES:
                    continue
                if target.attr in PATCHED_ATTRIBUTES or _root(target.value) in dspy_names | local_classes:
                    flag(node, f"patches .{target.attr}")
        setter = (
            isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("setattr", "delattr")
        )
        if setter and node.args and _root(node.args[0]) in dspy_names | local_classes:
            flag(node, f"{node.func.id} on a DSPy class")
    return found


def test_no_dspy_private_name_outside_the_compatibility_module() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "_dspy_compat.py" and path.parent == PACKAGE:
            continue
        found += private_dspy_access(path.read_text(encoding="utf-8"), str(path.relative_to(PACKAGE.parent)))
    assert not found, "DSPy private names outside dspex_lab/_dspy_compat.py (move them there):\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("source", "what"),
    [
        ("from dspy.utils.callback_context import ACTIVE_CALL_ID", "from dspy.utils.callback_context import"),
        ("from dspy.utils.callback import _get_on_start_handler", "import _get_on_start_handler"),
        ("import dspy\nx = dspy.settings.caller_modules", "internal .caller_modules"),
        ("import dspy\ndspy.utils.callback._get_active_callbacks(x)", "internal ._get_active_callbacks"),
        ("import dspy\nx = dspy.clients._private", "private DSPy attribute ._private"),
        ("from dspy.dsp.utils.settings import settings", "from dspy.dsp.utils.settings import"),
        ("import importlib\nimportlib.import_module('dspy.dsp.utils.settings')", "named in a string"),
        ("import dspy\ndspy.BaseLM.__call__ = f", "patches .__call__"),
        ("copied.__class__ = Guarded", "patches .__class__"),
        ("from dspy import ChatAdapter\nclass A(ChatAdapter): pass\ndelattr(A, 'format')", "delattr on a DSPy"),
        ("import dspy\nsetattr(dspy.Module, '__call__', f)", "setattr on a DSPy"),
    ],
)
def test_the_guard_catches_each_kind_of_access(source: str, what: str) -> None:
    found = private_dspy_access(source, "probe.py")
    assert any(what in item for item in found), found


def test_the_guard_lets_public_dspy_through() -> None:
    source = (
        "import dspy\nfrom dspy import ChatAdapter\nfrom dspy.utils import BaseCallback\n"
        "from dspy.utils.exceptions import is_retryable_lm_error\n"
        "with dspy.context(callbacks=[x]):\n    dspy.settings.callbacks\n"
        "lm = dspy.LM('openai/x')\nlm.kwargs['temperature'] = 0.5\n"
    )
    assert private_dspy_access(source, "probe.py") == []
