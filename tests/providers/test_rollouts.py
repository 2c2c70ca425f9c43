"""Repeats and SIMBA-C's exploration are distinct requests to a real provider, with DSPy's cache on (issue 19, item 1).

Every LM here is ``dspy.LM`` with DSPy's default ``cache=True`` against the loopback server, and each
test gets a DSPy cache of its own (memory and disk, and ``DSPY_CACHEDIR`` for worker processes), so
the requests the server counts are exactly the ones the cache did not answer.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dspy
import pytest
from loopback import DEFAULT_API_KEY, Answer, LoopbackProvider

import dspex_lab as dx
from dspex_lab.engine import ProcessExecutor
from dspex_lab.evaluation._result import IDENTICAL_REPEATS

PROGRAM = dx.Program("dspy.Predict", signature="question -> answer", name="qa-hosted")


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """DSPy's default cache (memory and disk) in a directory of this test's own, for this process and its workers."""
    directory = tmp_path / "dspy-cache"
    saved = dspy.cache
    monkeypatch.setenv("DSPY_CACHEDIR", str(directory))
    dspy.configure_cache(enable_disk_cache=True, enable_memory_cache=True, disk_cache_dir=str(directory))
    yield directory
    dspy.cache = saved


def _questions(n: int) -> dx.Dataset:
    return dx.Dataset(
        [{"question": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(n)], inputs=["question"]
    )


def _metric(example: Any, prediction: Any) -> float:
    return float(str(prediction.answer).strip() == example.answer)


def _evaluate(program: Any, data: Any, *, lm: Any, threads: int = 4, executor: Any = None, **options: Any) -> Any:
    if executor is None:
        context = dx.Context(lm=lm, journal=False, threads=threads)
    else:
        context = dx.Context(lm=lm, journal=False, executor=executor)
    # A metric worker processes can import by name.
    with context:
        return dx.evaluate(program, data, metric=dx.metrics.exact_match, progress=False, **options)


class DraftThenAnswer(dspy.Module):
    """Two predictors, two LM calls per trial; the second sees the same draft in every repeat."""

    def __init__(self) -> None:
        super().__init__()
        self.draft = dspy.Predict("question -> draft")
        self.answer = dspy.Predict("question, draft -> answer")

    def forward(self, question: str) -> dspy.Prediction:
        draft = self.draft(question=question).draft
        return self.answer(question=question, draft=draft)


def test_repeats_make_one_request_per_trial_and_a_second_run_only_cache_hits(
    loopback_provider: LoopbackProvider, fresh_cache: Path
) -> None:
    lm = loopback_provider.lm("gpt-4o-mini", cache=True, temperature=0.7)
    first = _evaluate(PROGRAM, _questions(4), lm=lm, repeats=3)
    assert first.n_trials == 12 and first.n_errors == 0
    assert len(loopback_provider.requests) == 12  # was 4: every repeat after the first was a cache hit
    assert not first.identical_repeats

    again = _evaluate(PROGRAM, _questions(4), lm=lm, repeats=3)
    assert len(loopback_provider.requests) == 12  # the same rollout ids: DSPy's cache answers all of them
    assert again.trials.sort_values("trial_id")["prediction"].tolist() == (
        first.trials.sort_values("trial_id")["prediction"].tolist()
    )


def test_repeat_zero_shares_the_cache_entries_of_dspy_evaluate(
    loopback_provider: LoopbackProvider, fresh_cache: Path
) -> None:
    lm = loopback_provider.lm("gpt-4o-mini", cache=True, temperature=0.7)
    data = _questions(3)
    module = dspy.Predict("question -> answer")
    with dspy.context(lm=lm):
        dspy.Evaluate(devset=list(data), metric=_metric, num_threads=1, display_progress=False)(module)
    assert len(loopback_provider.requests) == 3
    _evaluate(module, data, lm=lm, repeats=2)
    assert len(loopback_provider.requests) == 6  # repeat 0 came from dspy.Evaluate's entries; repeat 1 is new


def test_every_call_of_a_multi_predictor_module_is_a_distinct_request_per_repeat(
    loopback_provider: LoopbackProvider, fresh_cache: Path
) -> None:
    # The second predictor gets the same inputs in every repeat (the server always drafts the same text).
    loopback_provider.set_behaviour("gpt-4o-mini", Answer(fields={"draft": "a draft", "answer": "0"}))
    lm = loopback_provider.lm("gpt-4o-mini", cache=True, temperature=0.7)
    result = _evaluate(DraftThenAnswer(), _questions(3), lm=lm, repeats=3)
    assert result.n_trials == 9 and result.n_errors == 0
    assert len(loopback_provider.requests) == 18


def test_predictors_holding_their_own_lm_sample_on_their_own_rollouts(
    loopback_provider: LoopbackProvider, fresh_cache: Path
) -> None:
    # A temperature variable gives each predictor its own LM (module.set_lm): the run's LM stays greedy.
    program = dx.Program(
        "dspy.ChainOfThought",
        signature="question -> answer",
        name="qa-hot",
        variables={"temperature": dx.Float(0.9, low=0.0, high=1.5)},
    )
    lm = loopback_provider.lm("gpt-4o-mini", cache=True, temperature=0.0)
    result = _evaluate(program, _questions(3), lm=lm, repeats=3)
    assert result.n_trials == 9 and result.n_errors == 0
    assert len(loopback_provider.requests) == 9
    assert {request.body.get("temperature") for request in loopback_provider.requests} == {0.9}
    assert not result.identical_repeats


def test_repeats_at_temperature_zero_are_said_to_be_identical_requests(
    loopback_provider: LoopbackProvider, fresh_cache: Path
) -> None:
    lm = loopback_provider.lm("gpt-4o-mini", cache=True, temperature=0.0)
    with warnings.catch_warnings():
        # DSPy warns when a rollout id is sent at temperature 0: none is.
        warnings.filterwarnings("error", message="rollout_id has no effect")
        result = _evaluate(PROGRAM, _questions(2), lm=lm, threads=1, repeats=3)
    assert len(loopback_provider.requests) == 2  # nothing to sample: one request per example, the rest cached
    assert result.identical_repeats
    assert math.isnan(result.variance["within"])  # not a measured zero
    summary = result.to_summary()
    assert summary["identical_repeats"] is True and summary["variance"]["within"] is None
    assert IDENTICAL_REPEATS in result._repr_html_()

    single = _evaluate(PROGRAM, _questions(2), lm=lm, threads=1)
    assert not single.identical_repeats  # one repeat: nothing to say
    hot = _evaluate(PROGRAM, _questions(2), lm=lm.copy(temperature=0.5), threads=1, repeats=2)
    assert not hot.identical_repeats and IDENTICAL_REPEATS not in hot._repr_html_()


def test_process_workers_send_one_request_per_repeat_and_share_the_cache(
    loopback_provider: LoopbackProvider, fresh_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The workers read their key from their environment (it never travels) and their cache dir from DSPY_CACHEDIR.
    monkeypatch.setenv("OPENAI_API_KEY", DEFAULT_API_KEY)
    lm = loopback_provider.lm("gpt-4o-mini", cache=True, temperature=0.7)
    with ProcessExecutor(2, threads_per_worker=2) as executor:
        first = _evaluate(PROGRAM, _questions(4), lm=lm, executor=executor, repeats=3)
        assert first.n_trials == 12 and first.n_errors == 0, first.errors
        assert len(loopback_provider.requests) == 12
        _evaluate(PROGRAM, _questions(4), lm=lm, executor=executor, repeats=3)
    assert len(loopback_provider.requests) == 12


def test_simba_c_exploration_rollouts_are_distinct_requests_and_reproducible(
    loopback_provider: LoopbackProvider, fresh_cache: Path
) -> None:
    # The run's LM is greedy; only the exploration sources run at exploration_temperature, so the server
    # tells their requests apart by temperature.
    lm = loopback_provider.lm("gpt-4o-mini", cache=True, temperature=0.0)
    data = list(_questions(48))  # a valset large enough to carve a confirmation set from
    simba = dx.SimbaC(max_steps=2, bsize=6, num_candidates=2, num_sources=3, patience=3, strategies=("demo",))

    def explorations() -> int:
        return sum(request.body.get("temperature") == 0.7 for request in loopback_provider.requests)

    def optimize() -> Any:
        with dx.Context(lm=lm, journal=False, threads=4):
            return dx.optimize(PROGRAM, data[:12], data[12:], metric=_metric, optimizer=simba, seed=5, progress=False)

    result = optimize()
    steps = result.steps
    assert len(steps[steps["step"] >= 1]) == 2
    # 2 steps x 2 extra sources x 6 examples, each its own request (the same source on the same example
    # in two places, or in two steps, used to be one request answered from the cache).
    assert explorations() == 2 * 2 * 6
    total = len(loopback_provider.requests)
    optimize()
    assert len(loopback_provider.requests) == total  # the same seed draws the same rollout ids: all cached
