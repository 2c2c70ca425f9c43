"""Cost of LM calls: metering through DSPy's real client against the loopback provider, and price lookup."""

from __future__ import annotations

import asyncio
import contextvars
import math
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import dspy
import pytest
from loopback import Answer, LoopbackProvider, RateLimited

from dspex_lab.errors import ProgramSpecError
from dspex_lab.lm import lab_lm, lm_cost
from dspex_lab.providers import (
    HOSTED_PRICES,
    HOSTED_PRICES_AS_OF,
    Meter,
    Usage,
    call_cost,
    current_meter,
    is_priced,
    metering,
    model_price,
)
from dspex_lab.providers._metering import _provider_map_price

# gpt-4o-mini's list price in US dollars per token (input, output).
GPT_4O_MINI = (0.15e-6, 0.60e-6)


@pytest.fixture(autouse=True)
def offline_price_map(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    yield


def _ask(lm: dspy.BaseLM, question: str = "What is 2 + 2?") -> dspy.Prediction:
    with dspy.context(lm=lm):
        return dspy.Predict("question -> answer")(question=question)


def test_a_priced_model_costs_usage_times_price_as_dspy_reports_it(loopback_provider: LoopbackProvider) -> None:
    loopback_provider.script("gpt-4o-mini", Answer(fields={"answer": "4"}, input_tokens=1_000, output_tokens=200))
    lm = loopback_provider.lm("gpt-4o-mini")

    with metering() as meter:
        _ask(lm)

    usage = meter.usage()
    expected = 1_000 * GPT_4O_MINI[0] + 200 * GPT_4O_MINI[1]
    assert usage == Usage(1_000, 200, 1, pytest.approx(expected, rel=1e-9), ())
    assert usage.cost > 0
    [call] = meter.calls()
    # The cost came from DSPy (the history entry), not from our table: if DSPy stops handing
    # history entries to settings.caller_modules, this turns "price_table" and fails loudly.
    assert call.cost_source == "reported"
    assert call.cost == lm.history[-1]["cost"]


def test_an_unknown_model_is_unpriced_not_free(loopback_provider: LoopbackProvider) -> None:
    loopback_provider.script("my-own-model", Answer(input_tokens=50, output_tokens=5))

    with metering() as meter:
        _ask(loopback_provider.lm("my-own-model"))

    usage = meter.usage()
    assert usage.cost is None
    assert usage.unpriced_models == ("openai/my-own-model",)
    assert (usage.input_tokens, usage.output_tokens, usage.lm_calls) == (50, 5, 1)
    assert meter.calls()[0].cost_source == "unpriced"


def test_a_call_without_reported_usage_is_unpriced_even_for_a_priced_model(
    loopback_provider: LoopbackProvider,
) -> None:
    loopback_provider.script("gpt-4o-mini", Answer(report_usage=False))

    with metering() as meter:
        _ask(loopback_provider.lm("gpt-4o-mini"))

    [call] = meter.calls()
    assert (call.input_tokens, call.output_tokens, call.cost_source) == (None, None, "unpriced")
    assert meter.usage() == Usage(0, 0, 1, None, ("openai/gpt-4o-mini",))


def test_one_unpriced_call_makes_the_whole_cost_unknown(loopback_provider: LoopbackProvider) -> None:
    with metering() as meter:
        _ask(loopback_provider.lm("gpt-4o-mini"))
        _ask(loopback_provider.lm("my-own-model"))

    usage = meter.usage()
    assert usage.lm_calls == 2
    assert usage.cost is None
    assert usage.unpriced_models == ("openai/my-own-model",)
    assert [call.cost is None for call in meter.calls()] == [False, True]


def test_two_concurrent_metered_trials_do_not_mix(loopback_provider: LoopbackProvider) -> None:
    # Both calls are in flight at once (latency), on one shared LM, as trials of one run are.
    loopback_provider.set_behaviour("gpt-4o-mini", Answer(latency=0.3, input_tokens=100, output_tokens=10))
    loopback_provider.set_behaviour("my-own-model", Answer(latency=0.3, input_tokens=7, output_tokens=3))
    shared = loopback_provider.lm("gpt-4o-mini")
    other = loopback_provider.lm("my-own-model")
    barrier = threading.Barrier(2)
    usages: dict[str, Usage] = {}

    def trial(name: str, lm: dspy.BaseLM, calls: int) -> None:
        with metering() as meter:
            barrier.wait()
            for index in range(calls):
                _ask(lm, f"{name} {index}")
        usages[name] = meter.usage()

    threads = [
        threading.Thread(target=trial, args=("priced", shared, 2)),
        threading.Thread(target=trial, args=("unpriced", other, 1)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert usages["priced"] == Usage(200, 20, 2, pytest.approx(200 * GPT_4O_MINI[0] + 20 * GPT_4O_MINI[1]), ())
    assert usages["unpriced"] == Usage(7, 3, 1, None, ("openai/my-own-model",))


def test_many_threads_on_one_lm_each_count_only_their_own_calls(loopback_provider: LoopbackProvider) -> None:
    lm = loopback_provider.lm("gpt-4o-mini")
    results: dict[int, Usage] = {}

    def trial(index: int) -> None:
        with metering() as meter:
            _ask(lm, "x" * (400 * index))
        results[index] = meter.usage()

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(trial, range(1, 9)))

    assert all(usage.lm_calls == 1 for usage in results.values())
    # Longer questions, more prompt tokens: each meter saw its own request's usage.
    inputs = [results[index].input_tokens for index in range(1, 9)]
    assert inputs == sorted(inputs) and len(set(inputs)) == 8


def test_worker_threads_that_copy_the_context_count_into_the_trial(loopback_provider: LoopbackProvider) -> None:
    lm = loopback_provider.lm("gpt-4o-mini")

    with metering() as meter, ThreadPoolExecutor(max_workers=2) as pool:
        context = contextvars.copy_context()
        pool.submit(context.run, _ask, lm, "in a copied context").result()
        # A thread that does not carry the context is another trial's business.
        pool.submit(_ask, lm, "outside").result()

    assert meter.usage().lm_calls == 1


def test_dspy_parallel_inside_a_trial_counts_into_its_meter(loopback_provider: LoopbackProvider) -> None:
    lm = loopback_provider.lm("gpt-4o-mini")
    predict = dspy.Predict("question -> answer")
    examples = [dspy.Example(question=f"q{index}").with_inputs("question") for index in range(4)]

    with metering() as meter, dspy.context(lm=lm):
        dspy.Parallel(num_threads=2)([(predict, example) for example in examples])

    assert meter.usage().lm_calls == 4
    assert all(call.cost_source == "reported" for call in meter.calls())


def test_nested_meters_count_into_both(loopback_provider: LoopbackProvider) -> None:
    lm = loopback_provider.lm("gpt-4o-mini")

    with metering() as run:
        _ask(lm, "before")
        with metering() as trial:
            assert current_meter() is trial
            _ask(lm, "inside")
        assert current_meter() is run

    assert current_meter() is None
    assert trial.usage().lm_calls == 1
    assert run.usage().lm_calls == 2
    assert run.usage().cost == pytest.approx(sum(call.cost for call in run.calls()))
    assert trial.calls()[0].cost_source == "reported"


def test_a_meter_can_be_reused_across_blocks(loopback_provider: LoopbackProvider) -> None:
    meter = Meter()
    lm = loopback_provider.lm("gpt-4o-mini")
    for attempt in range(2):
        with metering(meter):
            _ask(lm, f"attempt {attempt}")

    assert meter.usage().lm_calls == 2


def test_overrides_apply_in_the_metered_block_and_its_calls_are_counted(loopback_provider: LoopbackProvider) -> None:
    lm = loopback_provider.lm("gpt-4o-mini")
    with metering(overrides={"lm": lm}) as meter:
        assert dspy.settings.lm is lm
        dspy.Predict("question -> answer")(question="what is 2 + 2?")

    assert dspy.settings.lm is not lm
    assert meter.usage().lm_calls == 1
    with pytest.raises(ProgramSpecError, match="usage_tracker"), metering(overrides={"usage_tracker": None}):
        pass


def test_without_history_calls_are_priced_from_the_table(loopback_provider: LoopbackProvider) -> None:
    loopback_provider.script("gpt-4o-mini", Answer(input_tokens=1_000, output_tokens=100))
    loopback_provider.script("my-own-model", Answer(input_tokens=1_000, output_tokens=100))

    with metering() as meter, dspy.context(disable_history=True):
        _ask(loopback_provider.lm("gpt-4o-mini"))
        _ask(loopback_provider.lm("my-own-model"))

    priced, unpriced = meter.calls()
    assert priced.cost_source == "price_table"
    assert priced.cost == pytest.approx(1_000 * GPT_4O_MINI[0] + 100 * GPT_4O_MINI[1])
    assert unpriced.cost_source == "unpriced"
    assert meter.usage().unpriced_models == ("openai/my-own-model",)


def test_cache_hits_are_not_billed(loopback_provider: LoopbackProvider) -> None:
    lm = loopback_provider.lm("gpt-4o-mini", cache=True)
    # Unique, so DSPy's persistent cache cannot already hold the first answer.
    question = f"a question asked twice, cached the second time {uuid.uuid4()}"

    with metering() as meter:
        _ask(lm, question)
        _ask(lm, question)

    assert len(loopback_provider.requests) == 1
    assert meter.usage().lm_calls == 1


def test_a_retried_rate_limit_is_one_billed_call(loopback_provider: LoopbackProvider) -> None:
    loopback_provider.script("gpt-4o-mini", RateLimited(retry_after=0.1), Answer(input_tokens=10, output_tokens=2))

    with metering() as meter:
        _ask(loopback_provider.lm("gpt-4o-mini", num_retries=1))

    assert len(loopback_provider.requests) == 2
    assert meter.usage() == Usage(10, 2, 1, pytest.approx(10 * GPT_4O_MINI[0] + 2 * GPT_4O_MINI[1]), ())


def test_async_calls_are_metered(loopback_provider: LoopbackProvider) -> None:
    loopback_provider.script("gpt-4o-mini", Answer(input_tokens=30, output_tokens=3))
    lm = loopback_provider.lm("gpt-4o-mini")

    async def ask() -> None:
        with dspy.context(lm=lm):
            await dspy.Predict("question -> answer").acall(question="async?")

    with metering() as meter:
        asyncio.run(ask())

    [call] = meter.calls()
    assert (call.input_tokens, call.output_tokens, call.cost_source) == (30, 3, "reported")


def test_a_nested_track_usage_block_is_still_counted(loopback_provider: LoopbackProvider) -> None:
    loopback_provider.script("gpt-4o-mini", Answer(input_tokens=40, output_tokens=4))

    with metering() as meter:
        with dspy.track_usage() as tracker:
            _ask(loopback_provider.lm("gpt-4o-mini"))
        assert tracker.get_total_tokens()["openai/gpt-4o-mini"]["prompt_tokens"] == 40

    [call] = meter.calls()
    assert (call.input_tokens, call.cost_source) == (40, "price_table")
    assert call.cost == pytest.approx(40 * GPT_4O_MINI[0] + 4 * GPT_4O_MINI[1])


def test_the_lab_lm_is_priced_from_its_profile() -> None:
    lm = lab_lm("lab/small")

    with metering() as meter:
        _ask(lm, "Tom has 3 apples and buys 4 more. How many apples does he have?")

    [call] = meter.calls()
    assert call.cost_source == "price_table"
    assert call.cost == pytest.approx(lm_cost("lab/small", call.input_tokens, call.output_tokens))
    assert meter.usage().cost > 0


def test_an_empty_meter_costs_zero_and_usages_add() -> None:
    assert Meter().usage() == Usage(0, 0, 0, 0.0, ())
    total = Usage(10, 1, 1, 0.5, ()) + Usage(5, 2, 1, None, ("b",)) + Usage(1, 1, 1, 0.25, ("a",))
    assert total == Usage(16, 4, 3, None, ("a", "b"))
    assert (Usage(1, 1, 1, 0.5, ()) + Usage(1, 1, 1, 0.25, ())).cost == 0.75


def test_metering_refuses_a_meter_of_the_wrong_type() -> None:
    with pytest.raises(ProgramSpecError, match="Meter"), metering(object()):  # type: ignore[arg-type]
        pass


def test_is_priced_knows_lab_table_and_provider_map_models() -> None:
    assert is_priced("lab/large")
    assert is_priced("openai/gpt-4o-mini")
    assert is_priced("gpt-4o-mini")  # a bare name is OpenAI's, as in dspy.LM
    assert is_priced(dspy.LM("openai/gpt-4o-mini"))
    assert is_priced(lab_lm("lab/small"))
    assert "openai/gpt-5-mini" not in HOSTED_PRICES
    assert is_priced("openai/gpt-5-mini")  # DSPy's bundled price map
    assert not is_priced("openai/my-own-model")
    assert not is_priced("ollama_chat/llama-never-heard-of")


def test_is_priced_refuses_what_is_not_an_lm() -> None:
    with pytest.raises(ProgramSpecError, match="is_priced"):
        is_priced(42)
    with pytest.raises(ProgramSpecError, match="non-empty"):
        is_priced("  ")


def test_model_price_says_where_the_price_came_from() -> None:
    assert model_price("lab/small").source == "lab"
    assert model_price("openai/gpt-4o").source == "table"
    assert model_price("openai/gpt-5-mini").source == "provider_map"
    assert model_price("openai/my-own-model") is None


def test_the_table_agrees_with_dspys_price_map_where_it_has_the_model() -> None:
    assert HOSTED_PRICES_AS_OF == "2025-07-01"
    # The guarded read of DSPy's (non-public) price map must keep working.
    assert _provider_map_price("openai/gpt-4o-mini") is not None
    compared = 0
    for name, price in HOSTED_PRICES.items():
        provider = _provider_map_price(name)
        if provider is None:
            continue
        compared += 1
        assert math.isclose(provider.input_per_million, price.input_per_million, rel_tol=1e-9), name
        assert math.isclose(provider.output_per_million, price.output_per_million, rel_tol=1e-9), name
    assert compared >= 6


def test_call_cost_prices_from_the_table_and_validates_counts() -> None:
    assert call_cost("openai/gpt-4o-mini", 1_000_000, 1_000_000) == pytest.approx(0.75)
    assert call_cost("lab/large", 1_000, 0) == pytest.approx(lm_cost("lab/large", 1_000, 0))
    assert call_cost("openai/my-own-model", 10, 10) is None
    with pytest.raises(ProgramSpecError, match="input_tokens"):
        call_cost("openai/gpt-4o-mini", -1, 0)
    with pytest.raises(ProgramSpecError, match="output_tokens"):
        call_cost("openai/gpt-4o-mini", 0, 1.5)  # type: ignore[arg-type]
