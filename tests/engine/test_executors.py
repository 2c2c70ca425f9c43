"""Process and Dask executors: the same trials as threads, the driver alone journaling, stop, timeout,
resume, refusals up front, no secret in what travels, and a worker killed mid-run."""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import dspy
import pytest
from local_dask import local_cluster
from loopback import LoopbackProvider

import dspex_lab as dx
from dspex_lab.engine import DaskExecutor, ProcessExecutor, TrialFinished, make_executor
from dspex_lab.engine import _dask as dask_module
from dspex_lab.engine import _process as process_module
from dspex_lab.engine._remote import decode
from dspex_lab.errors import ExecutionError

distributed = pytest.importorskip("distributed")

PROGRAM = dx.Program("dspy.ChainOfThought", signature="question -> answer", name="arith")
SECRET = "sk-dspex-secret-7f3a9c1e55"


@pytest.fixture(scope="module")
def process_executor() -> Iterator[ProcessExecutor]:
    # The workers start inside this environment: a provider key is theirs to read, never sent to them.
    with pytest.MonkeyPatch.context() as patch, ProcessExecutor(2, threads_per_worker=4) as executor:
        patch.setenv("OPENAI_API_KEY", SECRET)
        patch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        yield executor


@pytest.fixture(scope="module")
def dask_client() -> Iterator[Any]:
    yield from local_cluster(2, 4)


@pytest.fixture(params=["process", "dask"])
def remote(request: pytest.FixtureRequest) -> Any:
    """Each remote executor in turn (the pool and the cluster are shared by the module's tests)."""
    if request.param == "process":
        return request.getfixturevalue("process_executor")
    return DaskExecutor(request.getfixturevalue("dask_client"))


def evaluate(executor: Any, data: Any, *, journal: Any = False, lm: Any = None, **options: Any) -> Any:
    with dx.Context(lm=lm or dx.lab_lm("lab/small"), journal=journal, executor=executor):
        return dx.evaluate(PROGRAM, data, metric=dx.metrics.exact_match, progress=False, **options)


def scores(result: Any) -> list[tuple[str, float | None, str]]:
    frame = result.trials.sort_values("trial_id")
    return list(zip(frame["trial_id"], frame["score"], frame["status"], strict=True))


class Sent:
    """Captures every byte string the driver sends to workers (plans and task payloads)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.payloads: list[bytes] = []
        original = process_module.encode

        def capture(value: Any) -> bytes:
            data = original(value)
            self.payloads.append(data)
            return data

        monkeypatch.setattr(process_module, "encode", capture)
        monkeypatch.setattr(dask_module, "encode", capture)


def test_remote_executors_give_the_same_trials_and_spans_as_threads(remote, tmp_path) -> None:
    data = dx.datasets.arithmetic(24, seed=3)
    threaded = evaluate("thread", data, journal=tmp_path / "thread.duckdb", repeats=2, trace=True)
    remote_result = evaluate(remote, data, journal=tmp_path / "remote.duckdb", repeats=2, trace=True)

    assert remote_result.n_trials == 48
    assert scores(remote_result) == scores(threaded)
    spans = {}
    for name in ("thread", "remote"):
        journal = dx.open_journal(tmp_path / f"{name}.duckdb")
        spans[name] = journal.sql("SELECT kind, count(*) AS n FROM spans GROUP BY kind ORDER BY kind")
    assert spans["remote"].to_dict("records") == spans["thread"].to_dict("records")
    assert int(spans["remote"]["n"].sum()) > 48


def test_the_configured_adapter_travels_to_the_workers(remote, tmp_path) -> None:
    # The trace names the adapter that formatted each call (XMLAdapter falls back to JSONAdapter, as in threads).
    data = dx.datasets.arithmetic(6, seed=23)
    for expected, adapter in (
        ("ChatAdapter", None),
        ("JSONAdapter", dspy.JSONAdapter()),
        ("XMLAdapter", dspy.XMLAdapter()),
    ):
        names = {}
        for label, executor in (("thread", "thread"), ("remote", remote)):
            journal = tmp_path / f"{expected}-{label}.duckdb"
            with dspy.context(adapter=adapter):
                result = evaluate(executor, data, journal=journal, trace=True)
            assert result.n_errors == 0
            frame = dx.open_journal(journal).sql("SELECT DISTINCT name FROM spans WHERE kind = 'adapter_format'")
            names[label] = sorted(frame["name"])
        assert names["remote"] == names["thread"]
        assert f"{expected}.format" in names["remote"]


def test_an_adapter_that_cannot_be_rebuilt_in_a_worker_is_refused_before_any_trial(remote) -> None:
    class Custom(dspy.ChatAdapter):
        pass

    for adapter, words in (
        (Custom(), "adapter Custom cannot be rebuilt"),
        (dspy.ChatAdapter(callbacks=[object()]), "has callbacks"),
    ):
        with dspy.context(adapter=adapter), pytest.raises(ExecutionError, match=words):
            evaluate(remote, dx.datasets.arithmetic(4, seed=29))


def test_a_model_the_kernel_allowed_may_be_built_by_workers_and_only_while_building() -> None:
    from dspex_lab.engine import RetryPolicy, TrialRunner
    from dspex_lab.engine._remote import plan_for, runner_for
    from dspex_lab.errors import ProgramSpecError
    from dspex_lab.program import allowed_models, set_allowed_models

    spec = {
        "module": "dspy.Predict",
        "signature": "question -> answer",
        "variables": {
            "model": {"type": "choice", "value": "openai/gpt-4o-mini", "choices": ["lab/small", "openai/gpt-4o-mini"]}
        },
    }
    lm = dx.lab_lm("lab/small")
    set_allowed_models(["openai/gpt-4o-mini"])
    try:
        module = dx.Program.from_dict(spec).build(lm=lm)
        plan = plan_for(TrialRunner(module, dx.metrics.exact_match, lm=lm, retry=RetryPolicy()), executor="process")
    finally:
        set_allowed_models([])
    assert plan.allowed is not None and "openai/gpt-4o-mini" in plan.allowed["models"]

    runner, _ = runner_for(plan)  # a worker whose own allow-list is empty, as here now
    assert [predictor.lm.model for _, predictor in runner.module.named_predictors()] == ["openai/gpt-4o-mini"]
    assert allowed_models() == frozenset()
    with pytest.raises(ProgramSpecError, match="set_allowed_models"):
        runner_for(dataclasses.replace(plan, allowed=None, key="without-the-kernel-allow-list"))


def test_only_the_driver_touches_the_journal(remote, tmp_path, monkeypatch) -> None:
    sent = Sent(monkeypatch)
    journal = tmp_path / "driver-only.duckdb"
    result = evaluate(remote, dx.datasets.arithmetic(8, seed=1), journal=journal)

    assert result.n_trials == 8
    assert sent.payloads, "nothing was captured: the executor no longer sends through encode"
    # What a worker receives names no journal: it could not write one if it tried.
    assert not any(str(journal).encode() in payload or b"duckdb" in payload for payload in sent.payloads)
    assert len(dx.open_journal(journal).trials(result.experiment_id)) == 8


def test_the_api_key_never_travels_and_workers_read_their_own(
    tmp_path, monkeypatch, process_executor, dask_client
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # the driver's LM has the key; only its object holds it
    sent = Sent(monkeypatch)
    journal = tmp_path / "secret.duckdb"
    environment = {"OPENAI_API_KEY": SECRET, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    dask_client.run(lambda: os.environ.update(environment))
    with LoopbackProvider(api_key=SECRET) as provider:
        lm = provider.lm(api_key=SECRET, temperature=0.0)
        for executor in (process_executor, DaskExecutor(dask_client)):
            evaluate(executor, dx.datasets.arithmetic(3, seed=2), journal=journal, lm=lm, trace=True)
        requests = provider.requests

    assert len(requests) >= 6
    assert all(request.authorization == f"Bearer {SECRET}" for request in requests)
    assert sent.payloads and not any(SECRET.encode() in payload for payload in sent.payloads)
    assert any(provider.url.encode() in payload for payload in sent.payloads)  # the endpoint the user chose does
    opened = dx.open_journal(journal)
    for table in ("experiments", "trials", "spans"):
        text = opened.sql(f"SELECT * FROM {table}").to_csv()
        assert SECRET not in text and len(text) > 100


def test_a_budget_stops_the_run_and_cancels_queued_trials(remote) -> None:
    data = dx.datasets.arithmetic(60, seed=4)
    lm = dx.lab_lm("lab/small", latency=0.02)
    with pytest.warns(dx.errors.DspexLabWarning) as caught:
        result = evaluate(remote, data, lm=lm, budget=dx.Budget(lm_calls=20, pilot=4))

    assert result.status == "stopped"
    assert 4 <= result.n_trials < 40
    assert "lm_calls" in (result.status_detail or "")
    assert any("stopped early" in str(warning.message) for warning in caught)


def test_a_trial_past_its_timeout_is_recorded_as_timed_out(remote) -> None:
    lm = dx.lab_lm("lab/small", hang_rate=1.0, hang_seconds=6.0)
    started = time.perf_counter()
    with pytest.warns(dx.errors.DspexLabWarning) as caught:
        result = evaluate(remote, dx.datasets.arithmetic(4, seed=5), lm=lm, timeout=0.5, retries=0)
    elapsed = time.perf_counter() - started

    assert set(result.trials["error_stage"]) == {"timeout"}
    assert set(result.trials["error_type"]) == {"TrialTimeoutError"}
    assert any("every trial" in str(warning.message) for warning in caught)
    assert elapsed < 5.5  # not the 6 s hang: the run gave up on each trial at its deadline (plus the grace)


def test_an_interrupted_run_resumes_with_every_trial_once(remote, tmp_path) -> None:
    data = dx.datasets.arithmetic(30, seed=6)
    journal = tmp_path / "resume.duckdb"
    seen = []

    def interrupt_after_ten(event: Any) -> None:
        if isinstance(event, TrialFinished):
            seen.append(event.result.trial_id)
            if len(seen) == 10:
                raise KeyboardInterrupt

    lm = dx.lab_lm("lab/small", latency=0.02)
    with pytest.raises(KeyboardInterrupt, match="resume=") as raised:
        evaluate(remote, data, journal=journal, lm=lm, subscribers=[interrupt_after_ten])
    experiment_id = str(raised.value).split("resume=")[1].strip("')\"")
    opened = dx.open_journal(journal)
    assert opened.experiment(experiment_id)["status"] == "interrupted"
    assert 10 <= len(opened.trials(experiment_id)) < 30

    resumed = evaluate(remote, data, journal=journal, lm=lm, resume=experiment_id)
    trials = dx.open_journal(journal).trials(experiment_id)
    assert resumed.n_trials == 30
    assert len(trials) == 30 and trials["trial_id"].is_unique


def test_a_metric_the_workers_cannot_import_is_one_clear_error(remote, tmp_path, monkeypatch) -> None:
    data = dx.datasets.arithmetic(12, seed=9)
    assert evaluate(remote, data[:2]).n_trials == 2  # the workers are up before the module below exists
    (tmp_path / "driver_only_metrics.py").write_text("def always_one(example, prediction):\n    return 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from driver_only_metrics import always_one

    context = dx.Context(lm=dx.lab_lm("lab/small"), journal=False, executor=remote)
    with context, pytest.raises(ExecutionError, match=r"could not rebuild the trial runner.*driver_only_metrics"):
        dx.evaluate(PROGRAM, data, metric=always_one, progress=False)
    # The executor is still usable, and the failed run's late messages do not leak into the next one.
    assert evaluate(remote, data).n_trials == 12


def test_a_stopped_dask_run_cancels_its_trials_on_the_workers() -> None:
    from dspex_lab.engine import RetryPolicy, TrialRunner, TrialTask
    from dspex_lab.engine._remote import cancel_run, encode, plan_for, run_remote_trial, task_payload

    lm = dx.lab_lm("lab/small")
    runner = TrialRunner(PROGRAM.build(lm=lm), dx.metrics.exact_match, lm=lm, retry=RetryPolicy(retries=0))
    plan = encode(plan_for(runner, executor="dask", cloudpickle_functions=True))
    example = dx.datasets.arithmetic(1, seed=10)[0]
    payload = encode(task_payload(TrialTask(index=0, example_id="e0", example=example)))

    kind, result, _ = run_remote_trial(plan, payload, None, "live-run")
    assert kind == "ok" and result.status == "ok" and result.lm_calls == 1
    cancel_run("stopped-run", "run stopped")  # what the driver runs on every worker when it stops
    kind, result, _ = run_remote_trial(plan, payload, None, "stopped-run")
    assert (result.status, result.error_stage, result.lm_calls) == ("error", "cancelled", 0)
    assert "run stopped" in result.error_message


def test_dask_chunks_take_about_half_a_second_shrink_as_the_run_drains_and_hold_one_trial_under_a_timeout() -> None:
    assert dask_module.chunk_size(1280, 64, None, None) == 1  # until results say how long a trial takes
    assert dask_module.chunk_size(1280, 64, None, 0.02) == dask_module.MAX_CHUNK == 8
    assert dask_module.chunk_size(1280, 64, None, 0.1) == 5  # 0.5 s / 0.1 s
    assert dask_module.chunk_size(1280, 64, None, 0.6) == 1  # an interrupt must not wait for chunk-mates
    # A share of what is left per thread, rounded up: only the last 64 trials travel alone.
    shares = [dask_module.chunk_size(pending, 64, None, 0.001) for pending in (511, 449, 320, 128, 65, 64, 1)]
    assert shares == [8, 8, 5, 2, 2, 1, 1]
    assert dask_module.chunk_size(1280, 64, 30.0, 0.02) == 1  # the driver's deadline counts from submission


def test_a_chunk_runs_its_trials_in_order_and_a_stopped_run_makes_them_cancelled_records() -> None:
    from dspex_lab.engine import RetryPolicy, TrialRunner, TrialTask
    from dspex_lab.engine._remote import cancel_run, encode, plan_for, run_remote_chunk, task_payload

    lm = dx.lab_lm("lab/small")
    runner = TrialRunner(PROGRAM.build(lm=lm), dx.metrics.exact_match, lm=lm, retry=RetryPolicy(retries=0))
    plan = encode(plan_for(runner, executor="dask", cloudpickle_functions=True))
    examples = dx.datasets.arithmetic(3, seed=11)
    payloads = [
        (submission, encode(task_payload(TrialTask(index=index, example_id=f"e{index}", example=example))))
        for index, (submission, example) in enumerate(zip((7, 3, 5), examples, strict=True))
    ]

    kind, answer = run_remote_chunk(plan, payloads, None, "live-chunk")
    assert kind == "ok" and [submission for submission, _, _ in answer] == [7, 3, 5]
    assert [(result.example_id, result.status, result.lm_calls) for _, result, _ in answer] == [
        ("e0", "ok", 1),
        ("e1", "ok", 1),
        ("e2", "ok", 1),
    ]
    cancel_run("stopped-chunk", "run stopped")
    kind, answer = run_remote_chunk(plan, payloads, None, "stopped-chunk")
    assert {(result.error_stage, result.lm_calls) for _, result, _ in answer} == {("cancelled", 0)}

    unimportable = encode(dataclasses.replace(decode(plan), metric=("import", "no_such_module:metric"), key="x1"))
    kind, answer = run_remote_chunk(unimportable, payloads, None, "setup-chunk")
    assert kind == "setup" and "no_such_module:metric" in answer


def test_trials_of_a_chunk_dask_cancelled_by_itself_are_queued_again_then_recorded_as_errors(
    dask_client, monkeypatch
) -> None:
    # Dask cancels every task that holds trial 0 (as the scheduler cancelling keys, or a lost connection, would).
    # (Delivery once, whichever copy of a chunk answers first, is the loop's: see test_loop.py.)
    map_tasks = dask_client.map
    cancelled: list[str] = []

    def map_cancelling_trial_zero(function: Any, plans: list[bytes], payloads: list[Any], *args: Any, **kwargs: Any):
        futures = map_tasks(function, plans, payloads, *args, **kwargs)
        for future, chunk in zip(futures, payloads, strict=True):
            if [submission for submission, _ in chunk] == [0]:
                dask_client.cancel([future])
                cancelled.append(future.key)
        return futures

    monkeypatch.setattr(dask_client, "map", map_cancelling_trial_zero)
    executor = DaskExecutor(dask_client)
    # Half a second per trial: the cancel lands first. With a timeout every task holds one trial.
    result = evaluate(executor, dx.datasets.arithmetic(5, seed=14), lm=dx.lab_lm("lab/small", latency=0.5), timeout=30)

    times = dask_module.MAX_REQUEUES + 1
    assert len(cancelled) == times and executor.cancelled_by_dask == times
    frame = result.trials.set_index("example_index")
    assert result.n_trials == 5 and frame.loc[0, "status"] == "error" and frame.loc[0, "error_stage"] == "runner"
    assert f"task was cancelled or lost {times} times" in frame.loc[0, "error_message"]
    assert set(frame.drop(index=0)["status"]) == {"ok"}


def test_dask_sends_a_long_run_in_fewer_tasks_than_trials_and_batches_its_submissions(dask_client, monkeypatch) -> None:
    submitted: list[int] = []
    batches: list[int] = []
    map_tasks = dask_client.map

    def counting_map(function: Any, plans: list[bytes], payloads: list[Any], *args: Any, **kwargs: Any) -> Any:
        batches.append(len(payloads))
        submitted.extend(len(chunk) for chunk in payloads)
        return map_tasks(function, plans, payloads, *args, **kwargs)

    monkeypatch.setattr(dask_client, "map", counting_map)
    data = dx.datasets.arithmetic(64, seed=13)
    threaded = evaluate("thread", data)
    chunked = evaluate(DaskExecutor(dask_client), data)

    assert sum(submitted) == 64 and max(submitted) > 1 and submitted[-1] == 1
    assert len(batches) < len(submitted) and batches[0] > 1  # the first window goes in one message
    # Before any result says how long a trial takes: one single trial per thread of the cluster, no more.
    assert submitted[: batches[0]] == [1] * batches[0] and batches[0] == sum(dask_client.nthreads().values())
    assert scores(chunked) == scores(threaded)


def test_results_dask_never_delivers_stop_the_run_with_one_clear_error(dask_client, monkeypatch, tmp_path) -> None:
    import threading

    release = threading.Event()

    def stuck_gather(futures: Any, *args: Any, **kwargs: Any) -> Any:
        release.wait(30)
        raise RuntimeError("released")

    monkeypatch.setattr(dask_module, "GATHER_TIMEOUT", 1.0)
    monkeypatch.setattr(dask_client, "gather", stuck_gather)
    executor = DaskExecutor(dask_client)
    started = time.perf_counter()
    try:
        with pytest.raises(ExecutionError, match="did not arrive within 1 s"):
            evaluate(executor, dx.datasets.arithmetic(8, seed=19), journal=tmp_path / "j.duckdb")
    finally:
        release.set()
    assert time.perf_counter() - started < 20
    assert executor.stalled_gathers == 1


def test_dask_futures_whose_done_callbacks_never_come_are_still_collected(dask_client, monkeypatch) -> None:
    # Swallow every third future's done-callback: the run must notice the finished futures by their state.
    map_tasks = dask_client.map
    count = {"submitted": 0}

    def map_with_lost_callbacks(*args: Any, **kwargs: Any) -> Any:
        futures = map_tasks(*args, **kwargs)
        for future in futures:
            count["submitted"] += 1
            if count["submitted"] % 3 == 0:
                future.add_done_callback = lambda callback: None
        return futures

    monkeypatch.setattr(dask_client, "map", map_with_lost_callbacks)
    data = dx.datasets.arithmetic(24, seed=17)
    executor = DaskExecutor(dask_client)
    result = evaluate(executor, data)

    assert count["submitted"] >= 3 and executor.missed_callbacks >= count["submitted"] // 3
    assert scores(result) == scores(evaluate("thread", data))


def notebook_function(source: str, **names: Any) -> Any:
    """A function as a notebook cell defines it: in ``__main__``, with the given globals."""
    namespace: dict[str, Any] = {"__name__": "__main__", **names}
    exec(source, namespace)
    return next(value for key, value in namespace.items() if key not in names and callable(value))


def test_a_metric_defined_in_the_notebook_runs_on_the_workers(remote) -> None:
    metric = notebook_function(
        "def same_answer(example, prediction):\n"
        "    return SCALE * float(str(example.answer).strip() == str(prediction.answer).strip())\n",
        SCALE=1.0,
    )
    assert metric.__module__ == "__main__"
    data = dx.datasets.arithmetic(12, seed=31)
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=False, executor=remote):
        result = dx.evaluate(PROGRAM, data, metric=metric, progress=False)
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=False, executor="thread"):
        threaded = dx.evaluate(PROGRAM, data, metric=metric, progress=False)
    assert result.n_errors == 0
    assert scores(result) == scores(threaded)


def test_a_notebook_metric_that_would_carry_an_lm_with_its_key_is_refused(remote) -> None:
    judge = dspy.LM("openai/gpt-4o-mini", api_key=SECRET)
    for source, names in (
        ("def judged(example, prediction):\n    return JUDGE is not None\n", {"JUDGE": judge}),
        ("def judged(example, prediction, lm=None):\n    return lm is not None\n", {}),
    ):
        metric = notebook_function(source, **names)
        if not names:
            metric.__defaults__ = (judge,)
        with pytest.raises(ExecutionError, match="an LM object that would be copied"):
            evaluate_with(remote, metric)


def test_a_module_class_defined_in_the_notebook_runs_on_the_workers_unless_it_carries_an_lm(remote) -> None:
    source = (
        "import dspy\n"
        "class Doubler(dspy.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.answer = dspy.Predict('question -> answer')\n"
        "    def forward(self, question):\n"
        "        return self.answer(question=question)\n"
    )
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(source, namespace)
    module = namespace["Doubler"]()
    data = dx.datasets.arithmetic(6, seed=41)
    results = {}
    for label, executor in (("thread", "thread"), ("remote", remote)):
        with dx.Context(lm=dx.lab_lm("lab/small"), journal=False, executor=executor):
            results[label] = dx.evaluate(module, data, metric=dx.metrics.exact_match, progress=False)
    assert results["remote"].n_errors == 0 and scores(results["remote"]) == scores(results["thread"])

    namespace["JUDGE"] = dspy.LM("openai/gpt-4o-mini", api_key=SECRET)
    exec("class Judged(Doubler):\n    def forward(self, question):\n        return JUDGE\n", namespace)
    context = dx.Context(lm=dx.lab_lm("lab/small"), journal=False, executor=remote)
    with context, pytest.raises(ExecutionError, match="an LM object that would be copied"):
        dx.evaluate(namespace["Judged"](), data, metric=dx.metrics.exact_match, progress=False)


def evaluate_with(executor: Any, metric: Any) -> Any:
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=False, executor=executor):
        return dx.evaluate(PROGRAM, dx.datasets.arithmetic(4, seed=37), metric=metric, progress=False)


def test_a_lambda_metric_is_refused_before_any_trial(process_executor) -> None:
    context = dx.Context(lm=dx.lab_lm("lab/small"), journal=False, executor=process_executor)
    with context, pytest.raises(ExecutionError, match=r"lambda.*top level of a module"):
        dx.evaluate(PROGRAM, dx.datasets.arithmetic(2), metric=lambda example, prediction: 1.0, progress=False)


def test_a_closure_metric_is_refused_for_dask_and_an_lm_that_is_not_data_for_both(dask_client) -> None:
    threshold = 0.5

    def closure(example: Any, prediction: Any) -> float:
        return float(threshold > 0)

    context = dx.Context(lm=dx.lab_lm("lab/small"), journal=False, executor=DaskExecutor(dask_client))
    with context, pytest.raises(ExecutionError, match="closure"):
        dx.evaluate(PROGRAM, dx.datasets.arithmetic(2), metric=closure, progress=False)
    dummy = dspy.utils.DummyLM([{"reasoning": "r", "answer": "1"}] * 4)
    context = dx.Context(lm=dummy, journal=False, executor=DaskExecutor(dask_client))
    with context, pytest.raises(ExecutionError, match=r"DummyLM.*cannot travel"):
        dx.evaluate(PROGRAM, dx.datasets.arithmetic(2), metric=dx.metrics.exact_match, progress=False)


def test_a_worker_process_killed_mid_run_loses_and_repeats_nothing(process_executor, tmp_path) -> None:
    data = dx.datasets.arithmetic(40, seed=7)
    journal = tmp_path / "killed.duckdb"
    executor = process_executor
    victims: list[int] = []
    restarts = executor.restarts

    def kill_a_worker(event: Any) -> None:
        if isinstance(event, TrialFinished) and event.done == 8:
            victims.append(executor.pids[0])
            os.kill(victims[0], signal.SIGKILL)

    result = evaluate(
        executor, data, journal=journal, lm=dx.lab_lm("lab/small", latency=0.05), subscribers=[kill_a_worker]
    )
    assert executor.restarts == restarts + 1 and victims[0] not in executor.pids
    trials = dx.open_journal(journal).trials(result.experiment_id)
    assert len(trials) == 40 and trials["trial_id"].is_unique
    assert set(trials["status"]) == {"ok"}


def test_a_dask_worker_killed_mid_run_loses_and_repeats_nothing(dask_client, tmp_path) -> None:
    data = dx.datasets.arithmetic(40, seed=8)
    journal = tmp_path / "killed-dask.duckdb"
    executor = DaskExecutor(dask_client)
    workers = dask_client.run(os.getpid)
    victim = next(iter(workers.values()))

    def kill_a_worker(event: Any) -> None:
        if isinstance(event, TrialFinished) and event.done == 8:
            os.kill(victim, signal.SIGKILL)

    result = evaluate(
        executor, data, journal=journal, lm=dx.lab_lm("lab/small", latency=0.05), subscribers=[kill_a_worker]
    )
    trials = dx.open_journal(journal).trials(result.experiment_id)
    assert len(trials) == 40 and trials["trial_id"].is_unique
    assert set(trials["status"]) == {"ok"}
    assert victim not in dask_client.run(os.getpid).values()


def test_make_executor_understands_the_specs() -> None:
    process = make_executor("process", threads=6)
    assert isinstance(process, ProcessExecutor) and process.threads >= 6 and process.pids == []
    with pytest.raises(ExecutionError, match="unknown executor 'threads'"):
        make_executor("threads")
    with pytest.raises(ExecutionError, match="positive integer"):
        ProcessExecutor(0)
    with pytest.raises(ExecutionError, match="cannot reach the Dask scheduler"):
        DaskExecutor("dask://127.0.0.1:9", connect_timeout=1)
