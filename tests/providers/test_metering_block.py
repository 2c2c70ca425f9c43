"""The metering block as a context manager: what it restores on the way out, and usage() against calls()."""

from __future__ import annotations

import math

import dspy
import pytest

from dspex_lab.errors import ProgramSpecError
from dspex_lab.providers import Meter, current_meter, metering, model_price


def _bill(model: str, input_tokens: int | None, output_tokens: int | None) -> None:
    # What DSPy does for every billed call: hand the call's usage to settings.usage_tracker.
    usage = {} if input_tokens is None else {"prompt_tokens": input_tokens, "completion_tokens": output_tokens}
    dspy.settings.usage_tracker.add_usage(model, usage)


def test_usage_totals_agree_with_the_calls_one_by_one() -> None:
    meter = Meter()
    with metering(meter):
        _bill("lab/small", 100, 20)
        _bill("lab/large", 300, 40)
    usage = meter.usage()
    calls = meter.calls()
    assert [call.cost_source for call in calls] == ["price_table", "price_table"]
    assert usage.lm_calls == 2
    assert (usage.input_tokens, usage.output_tokens) == (400, 60)
    small, large = model_price("lab/small"), model_price("lab/large")
    assert small is not None and large is not None
    expected = math.fsum([small.cost(100, 20), large.cost(300, 40)])
    assert usage.cost == pytest.approx(expected, rel=1e-12)
    assert usage.cost == pytest.approx(math.fsum(call.cost or 0.0 for call in calls), rel=1e-12)

    with metering(meter):
        _bill("not-a-priced-model", 5, 5)
        _bill("lab/small", None, None)  # no usage reported: unpriced even for a priced model
    usage = meter.usage()
    assert usage.cost is None
    assert usage.unpriced_models == ("lab/small", "not-a-priced-model")
    assert [call.cost_source for call in meter.calls()][2:] == ["unpriced", "unpriced"]


def test_leaving_a_block_restores_the_meter_and_dspy_settings_even_on_an_error() -> None:
    tracker_before = dspy.settings.usage_tracker
    outer = Meter()
    with metering(outer):
        outer_tracker = dspy.settings.usage_tracker
        with pytest.raises(ValueError, match="inside"), metering() as inner:
            assert current_meter() is inner
            raise ValueError("inside")
        assert current_meter() is outer
        assert dspy.settings.usage_tracker is outer_tracker
        _bill("lab/small", 10, 1)
    assert current_meter() is None
    assert dspy.settings.usage_tracker is tracker_before
    assert outer.usage().lm_calls == 1
    assert inner.usage().lm_calls == 0


def test_a_refused_block_leaves_nothing_bound() -> None:
    with pytest.raises(ProgramSpecError, match="usage_tracker"), metering(overrides={"usage_tracker": None}):
        pass
    assert current_meter() is None
    with pytest.raises(ProgramSpecError, match="Meter"), metering("a meter"):  # type: ignore[arg-type]
        pass
    assert current_meter() is None


def test_a_block_yields_a_new_meter_each_time_when_none_is_given() -> None:
    with metering() as first:
        _bill("lab/small", 1, 1)
    with metering() as second:
        pass
    assert first is not second
    assert (first.usage().lm_calls, second.usage().lm_calls) == (1, 0)
