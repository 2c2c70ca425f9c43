"""Direct dispatch: the recorder sees what DSPy's callback dispatch would show it, at a fraction of the cost."""

from __future__ import annotations

import asyncio
import inspect
import json
from collections import Counter
from typing import Any, ClassVar

import dspy
import pytest
from dspy.utils.callback import BaseCallback

from dspex_lab.lm import lab_lm
from dspex_lab.trace import SpanRecorder, TraceTree, dispatch, metric
from dspex_lab.trace.dispatch import _binder


class CountingCallback(BaseCallback):
    """A user's own callback: counts the calls it is shown."""

    def __init__(self) -> None:
        super().__init__()
        self.starts: Counter[str] = Counter()

    def on_module_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self.starts["module"] += 1

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self.starts["lm"] += 1

    def on_adapter_format_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self.starts["format"] += 1


def shape(spans) -> list[tuple[int, str, str]]:
    return [(node.depth, node.span.kind, node.span.name) for node in TraceTree.from_spans(spans).walk()]


@pytest.fixture(autouse=True)
def installed():
    assert dispatch.install()
    yield
    assert dispatch.installed()


def _signatures():
    def positional(self, signature, demos, inputs): ...
    def keywords(self, prompt=None, *, messages=None, **kwargs): ...
    def anything(self, *args, **kwargs): ...
    def only_keywords(self, **kwargs): ...
    def mixed(self, a, b=2, *rest, c, d=4, **extra): ...

    return {"positional": positional, "keywords": keywords, "anything": anything, "only": only_keywords, "mixed": mixed}


CALLS = {
    "positional": [
        ((1, [], {"q": 1}), {}),
        ((1,), {"demos": [], "inputs": {}}),
        ((), {"signature": 1, "demos": 2, "inputs": 3}),
    ],
    "keywords": [
        ((), {}),
        (("hi",), {}),
        ((), {"messages": [{"role": "user"}], "temperature": 0.1}),
        (("p",), {"n": 2}),
    ],
    "anything": [((), {}), ((1, 2), {"x": 3})],
    "only": [((), {}), ((), {"a": 1, "b": 2})],
    "mixed": [((1,), {"c": 3}), ((1, 5, 6, 7), {"c": 3, "z": 9}), ((1,), {"b": 0, "c": 1, "d": 2})],
}


@pytest.mark.parametrize(("name", "call"), [(name, call) for name, calls in CALLS.items() for call in calls])
def test_binding_matches_inspect_getcallargs(name, call) -> None:
    function = _signatures()[name]
    args, kwargs = call
    expected = inspect.getcallargs(function, "self", *args, **kwargs)
    expected.pop("self")
    assert _binder(function)(function, "self", args, dict(kwargs)) == expected


@pytest.mark.parametrize(
    ("name", "args", "kwargs"),
    [("positional", (1, 2), {}), ("positional", (1, 2, 3), {"demos": 4}), ("mixed", (), {"c": 1}), ("only", (1,), {})],
)
def test_calls_that_do_not_fit_raise_as_dspy_would(name, args, kwargs) -> None:
    function = _signatures()[name]
    with pytest.raises(TypeError):
        _binder(function)(function, "self", args, kwargs)


def test_trees_are_the_same_as_under_dspy_callbacks(two_step) -> None:
    program = two_step
    trees = {}
    for mode in ("callbacks", "direct"):
        recorder = SpanRecorder()
        with dspy.context(lm=lab_lm(), callbacks=[recorder] if mode == "callbacks" else []):
            if mode == "direct":
                with dispatch.direct(recorder), recorder.trial("t") as collector:
                    program(question="What is 3 + 4?")
            else:
                with recorder.trial("t") as collector:
                    program(question="What is 3 + 4?")
        trees[mode] = collector.spans
    assert shape(trees["direct"]) == shape(trees["callbacks"])
    for ours, theirs in zip(trees["direct"], trees["callbacks"], strict=True):
        # Same attributes, key for key and value for value (ids and times differ by nature).
        assert json.dumps(ours.json_attributes, sort_keys=True) == json.dumps(theirs.json_attributes, sort_keys=True)


def test_a_users_callback_still_sees_every_call_next_to_direct_dispatch(two_step) -> None:
    program = two_step
    alone = CountingCallback()
    with dspy.context(lm=lab_lm(), callbacks=[alone]):
        program(question="What is 1 + 2?")

    recorder, user = SpanRecorder(), CountingCallback()
    with dspy.context(lm=lab_lm(), callbacks=[user]), dispatch.direct(recorder), recorder.trial("t") as collector:
        program(question="What is 1 + 2?")
    assert user.starts == alone.starts == Counter({"module": 4, "lm": 2, "format": 2})
    assert shape(collector.spans)[:3] == [(0, "trial", "t"), (1, "module", "TwoStep"), (2, "module", "Predict")]
    assert len(collector.spans) == 1 + 4 + 3 * 2


def test_a_callback_registered_inside_the_program_joins_for_its_subtree() -> None:
    user = CountingCallback()

    class Inner(dspy.Module):
        def __init__(self) -> None:
            super().__init__()
            self.predict = dspy.Predict("question -> answer")

        def forward(self, question: str) -> dspy.Prediction:
            with dspy.context(callbacks=[user]):
                return self.predict(question=question)

    recorder = SpanRecorder()
    with dspy.context(lm=lab_lm()), dispatch.direct(recorder), recorder.trial("t") as collector:
        Inner()(question="What is 5 + 5?")
    assert user.starts == Counter({"module": 1, "lm": 1, "format": 1})
    assert shape(collector.spans) == [
        (0, "trial", "t"),
        (1, "module", "Inner"),
        (2, "module", "Predict"),
        (3, "adapter_format", "ChatAdapter.format"),
        (3, "lm", "lab/small"),
        (3, "adapter_parse", "ChatAdapter.parse"),
    ]


def test_unbound_calls_go_through_dspy_untouched() -> None:
    user, recorder = CountingCallback(), SpanRecorder()
    with dspy.context(lm=lab_lm(), callbacks=[user]), recorder.trial("t") as collector:
        dspy.Predict("question -> answer")(question="What is 2 + 2?")
    assert user.starts == Counter({"module": 1, "lm": 1, "format": 1})
    # The recorder is neither registered nor bound: it sees nothing, only its own trial span.
    assert [item.kind for item in collector.spans] == ["trial"]


def test_adapters_defined_after_installation_are_wrapped_by_the_next_install() -> None:
    class ShoutingAdapter(dspy.ChatAdapter):
        def format(self, signature, demos, inputs):
            return super().format(signature, demos, inputs)

    recorder = SpanRecorder()
    assert dispatch.install()
    adapter = ShoutingAdapter()
    with dspy.context(lm=lab_lm(), adapter=adapter), dispatch.direct(recorder), recorder.trial("t") as collector:
        dspy.Predict("question -> answer")(question="What is 6 + 1?")
    formats = [item for item in collector.spans if item.kind == "adapter_format"]
    # ShoutingAdapter.format calls ChatAdapter.format: two nested format spans, as under DSPy's own dispatch.
    assert [item.name for item in formats] == ["ShoutingAdapter.format", "ShoutingAdapter.format"]


def test_uninstall_restores_dspys_methods() -> None:
    wrapped = dspy.Module.__call__
    dispatch.uninstall()
    try:
        assert not dispatch.installed()
        assert dspy.Module.__call__ is not wrapped
        assert dspy.Module.__call__.__code__.co_qualname.startswith("with_callbacks.")
        with pytest.raises(RuntimeError, match="not installed"), dispatch.direct(SpanRecorder()):
            pass
    finally:
        assert dispatch.install()


@pytest.mark.parametrize("mode", ["callbacks", "direct"])
def test_async_trials_under_gather_keep_their_own_trees(mode: str, two_step, two_step_spans) -> None:
    program = two_step
    recorder = SpanRecorder()

    async def trial(index: int):
        with recorder.trial(f"trial-{index}") as collector:
            await program.acall(question=f"Question number {index}: what is {index} + 2?")
            with metric("exact_match") as handle:
                handle.set(score=1.0)
        return collector

    async def main():
        return await asyncio.gather(*(trial(index) for index in range(8)))

    lm = lab_lm(latency=0.002)
    if mode == "callbacks":
        with dspy.context(lm=lm, callbacks=[recorder]):
            collectors = asyncio.run(main())
    else:
        with dspy.context(lm=lm), dispatch.direct(recorder):
            collectors = asyncio.run(main())
    for index, collector in enumerate(collectors):
        spans = collector.spans
        assert {item.trace_id for item in spans} == {f"trial-{index}"}
        assert shape(spans) == [(0, "trial", f"trial-{index}"), *two_step_spans(1), (1, "metric", "exact_match")]
        for item in spans:
            if item.kind == "lm":
                assert f"Question number {index}:" in json.dumps(item.json_attributes["messages"])


def test_instance_and_class_level_callbacks_are_honoured() -> None:
    user = CountingCallback()

    class Noted(dspy.Predict):
        callbacks: ClassVar[list] = [user]  # shadowed by Module.__init__'s instance list unless removed

    predict = Noted("question -> answer")
    del predict.__dict__["callbacks"]  # leave only the class-level list, which DSPy's dispatch also reads
    recorder = SpanRecorder()
    with dspy.context(lm=lab_lm()), dispatch.direct(recorder), recorder.trial("t") as collector:
        predict(question="What is 4 + 1?")
    assert user.starts["module"] == 1
    assert [item.kind for item in collector.spans] == ["trial", "module", "adapter_format", "lm", "adapter_parse"]

    instance_level, own = CountingCallback(), dspy.Predict("question -> answer", callbacks=[])
    own.callbacks = [instance_level]
    with dspy.context(lm=lab_lm()), dispatch.direct(recorder), recorder.trial("t2") as collector:
        own(question="What is 4 + 2?")
    assert instance_level.starts["module"] == 1
    assert [item.kind for item in collector.spans] == ["trial", "module", "adapter_format", "lm", "adapter_parse"]
