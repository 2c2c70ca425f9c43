"""dx.autolog(): DSPy's own Evaluate and optimizer compile calls, journaled with no change to the user's code."""

import json
import logging

import dspy
import pytest

import dspex_lab as dx
from dspex_lab.integrations import OPTIMIZER_NAMES, AutologCallback


@pytest.fixture
def lab():
    lm = dx.lab_lm("lab/small")
    dspy.configure(lm=lm)
    yield lm
    dx.autolog(disable=True)


def exact(example, prediction, trace=None):
    return example.answer == prediction.answer


def registered():
    return [item for item in dspy.settings.get("callbacks") or [] if isinstance(item, AutologCallback)]


def top_level(journal):
    return journal.experiments().set_index("name")


def test_an_evaluate_call_is_an_experiment_with_trials_gold_and_traces(lab, journal_path):
    devset = dx.datasets.arithmetic(6)
    program = dspy.ChainOfThought("question -> answer")
    bare = dspy.Evaluate(devset=devset, metric=exact, num_threads=2)(program)
    dx.autolog(journal_path)

    result = dspy.Evaluate(devset=devset, metric=exact, num_threads=2)(program)

    assert result.score == bare.score  # the user's result is untouched
    journal = dx.open_journal(journal_path)
    experiment = top_level(journal).loc["dspy.Evaluate ChainOfThought"]
    assert experiment["kind"] == "evaluation" and experiment["status"] == "finished"
    trials = journal.trials(experiment["id"]).set_index("example_id")
    assert list(trials.index) == [example.id for example in devset]
    for example, (_, prediction, score) in zip(devset, result.results, strict=True):
        trial = trials.loc[example.id]
        assert trial["status"] == "ok" and trial["score"] == float(score)
        assert json.loads(trial["prediction"])["answer"] == prediction.answer
        assert trial["input_tokens"] > 0 and trial["output_tokens"] > 0 and trial["lm_calls"] == 1
        assert trial["cost"] > 0
    assert experiment["mean_score"] == pytest.approx(sum(score for *_, score in bare.results) / len(devset))
    # Input and gold: the devset's examples are stored with the experiment.
    stored = dict(journal.dataset_examples(experiment["dataset_fingerprint"]))
    assert stored[devset[0].id]["fields"]["answer"] == devset[0].answer
    assert stored[devset[0].id]["inputs"] == ["question"]
    tree = journal.trace(experiment["id"], f"{devset[0].id}/r0")
    kinds = [span.kind for span in journal.spans(experiment["id"], f"{devset[0].id}/r0")]
    assert kinds[0] == "trial" and kinds.count("module") == 2 and kinds.count("lm") == 1
    assert len(tree.roots) == 1
    loaded = dx.load(experiment["id"], journal=journal)  # a dx.EvaluationResult, traces readable
    assert loaded.traced and loaded.n == len(devset) and loaded.trace(f"{devset[0].id}/r0").roots


@pytest.mark.parametrize("metric_given", ["to Evaluate", "to its call"])
def test_a_failing_program_or_metric_gives_error_trials_and_the_evaluate_goes_on(lab, journal_path, metric_given):
    devset = dx.datasets.arithmetic(4)

    class Flaky(dspy.Module):
        def __init__(self):
            super().__init__()
            self.solve = dspy.Predict("question -> answer")

        def forward(self, question):
            if "Kofi" in question:
                raise RuntimeError("planted failure sk-abcdefghijklmnopqrstuvwxyz012345")
            return self.solve(question=question)

    def strict(example, prediction, trace=None):
        if example.id == devset[1].id:
            raise ValueError("metric broke")
        return exact(example, prediction)

    dx.autolog(journal_path)
    if metric_given == "to Evaluate":
        evaluate = dspy.Evaluate(devset=devset, metric=strict, num_threads=2, max_errors=10)
        result = evaluate(Flaky())
        assert evaluate.metric is strict  # given back
    else:
        result = dspy.Evaluate(devset=devset, num_threads=2, max_errors=10)(Flaky(), metric=strict)

    journal = dx.open_journal(journal_path)
    experiment_id = top_level(journal).loc["dspy.Evaluate Flaky", "id"]
    trials = journal.trials(experiment_id).set_index("example_id")
    failing = [example.id for example in devset if "Kofi" in example.question]
    assert failing and len(result.results) == 4
    for example_id in failing:
        assert trials.loc[example_id, "status"] == "error"
        assert trials.loc[example_id, "error_stage"] == "program"
        assert "planted failure" in trials.loc[example_id, "error_message"]
        assert "sk-abcdefghijklmnop" not in trials.loc[example_id, "error_message"]  # secrets masked
    assert devset[1].id not in failing
    metric_error = trials.loc[devset[1].id]
    assert metric_error["error_stage"] == "metric" and metric_error["prediction"] is not None
    if metric_given == "to Evaluate":  # the metric's own exception, caught as it is scored
        assert metric_error["error_type"] == "ValueError" and metric_error["error_message"] == "metric broke"
    else:  # told apart by the empty prediction DSPy puts in its place
        assert metric_error["error_type"] == "MetricError"
    assert (trials["status"] == "ok").sum() == 4 - len(set(failing) | {devset[1].id})


def test_bootstrap_compile_nests_its_metric_calls_and_restores_the_metric(lab, journal_path):
    trainset = dx.datasets.arithmetic(6)
    program = dspy.ChainOfThought("question -> answer")
    optimizer = dspy.BootstrapFewShot(metric=exact, max_bootstrapped_demos=2, max_labeled_demos=2)
    dx.autolog(journal_path)

    compiled = optimizer.compile(program, trainset=trainset)

    assert optimizer.metric is exact and compiled is not None
    journal = dx.open_journal(journal_path)
    run = top_level(journal).loc["dspy BootstrapFewShot.compile"]
    assert run["kind"] == "optimization" and run["status"] == "finished"
    record = journal.experiment(run["id"])
    assert record["config"]["optimizer"] == "bootstrap" and record["config"]["dspy"] == "BootstrapFewShot"
    (child,) = journal.children(run["id"])
    assert child.role == "compile"
    trials = journal.trials(child.id)
    assert len(trials) >= 2 and set(trials["example_id"]) <= {example.id for example in trainset}
    assert (trials["score"] == 1.0).all()  # bootstrapping stops at the demos it needs: the ones it kept scored
    assert journal.spans(child.id, f"{trials['example_id'].iloc[0]}/r0")


def test_evaluate_inside_a_compile_is_nested_under_it(lab, journal_path):
    data = dx.datasets.arithmetic(10)

    class EvaluatingOptimizer(dspy.teleprompt.Teleprompter):
        def __init__(self, metric):
            super().__init__()
            self.metric = metric

        def compile(self, student, *, trainset, valset=None, **kwargs):
            dspy.Evaluate(devset=valset, metric=self.metric, num_threads=2)(student)
            return student

    dx.autolog(journal_path)
    EvaluatingOptimizer(exact).compile(dspy.Predict("question -> answer"), trainset=data[:6], valset=data[6:])

    journal = dx.open_journal(journal_path)
    names = top_level(journal)
    assert "dspy.Evaluate Predict" not in names.index
    run_id = names.loc["dspy EvaluatingOptimizer.compile", "id"]
    (child,) = journal.children(run_id)
    assert child.role == "compile" and child.kind == "evaluation"
    assert len(journal.trials(child.id)) == 4
    assert journal.experiment(run_id)["summary"]["evaluations"] == 1


def test_a_compile_that_raises_ends_failed_and_gives_the_metric_back(lab, journal_path):
    class Broken(dspy.teleprompt.Teleprompter):
        def __init__(self, metric):
            super().__init__()
            self.metric = metric

        def compile(self, student, *, trainset, **kwargs):
            raise RuntimeError("optimizer broke")

    optimizer = Broken(exact)
    dx.autolog(journal_path)
    with pytest.raises(RuntimeError, match="optimizer broke"):
        optimizer.compile(dspy.Predict("question -> answer"), trainset=dx.datasets.arithmetic(2))

    assert optimizer.metric is exact
    run = top_level(dx.open_journal(journal_path)).loc["dspy Broken.compile"]
    assert run["status"] == "failed" and "optimizer broke" in run["status_detail"]


def test_trace_false_keeps_trials_with_tokens_but_no_spans_and_secrets_stay_out(lab, journal_path):
    secret = "sk-abcdefghijklmnopqrstuvwxyz0123456789"

    class Keyed(dspy.teleprompt.Teleprompter):
        def __init__(self, metric):
            super().__init__()
            self.metric = metric
            self.api_key = secret
            self.note = f"key {secret}"

        def compile(self, student, *, trainset, **kwargs):
            dspy.Evaluate(devset=trainset, metric=self.metric)(student)
            return student

    dx.autolog(journal_path, trace=False)
    Keyed(exact).compile(dspy.Predict("question -> answer"), trainset=dx.datasets.arithmetic(2))

    journal = dx.open_journal(journal_path)
    run_id = top_level(journal).loc["dspy Keyed.compile", "id"]
    (child,) = journal.children(run_id)
    trials = journal.trials(child.id)
    assert len(trials) == 2 and (trials["input_tokens"] > 0).all()
    assert journal.spans(child.id) == []
    settings = journal.experiment(run_id)["config"]["optimizer_config"]
    assert secret not in json.dumps(settings) and set(settings) >= {"api_key", "note"}


def test_mipro_compile_is_journaled_with_its_evaluations(lab, journal_path):
    data = dx.datasets.arithmetic(10)
    optimizer = dspy.MIPROv2(metric=exact, auto=None, num_candidates=2, num_threads=2)
    dx.autolog(journal_path)

    optimizer.compile(
        dspy.ChainOfThought("question -> answer"), trainset=data[:6], valset=data[6:], num_trials=2, minibatch=False
    )

    journal = dx.open_journal(journal_path)
    run_id = top_level(journal).loc["dspy MIPROv2.compile", "id"]
    assert journal.experiment(run_id)["config"]["optimizer"] == "mipro"
    children = journal.children(run_id)
    assert children and all(child.role == "compile" for child in children)
    evaluations = [child for child in children if child.name.startswith("dspy.Evaluate")]
    assert evaluations and all(len(journal.trials(child.id)) == 4 for child in evaluations)


def test_gepa_compile_records_each_scored_rollout_once_with_its_feedback(lab, journal_path):
    def judged(example, prediction, trace=None, pred_name=None, pred_trace=None):
        right = example.answer == prediction.answer
        return dspy.Prediction(score=float(right), feedback="right" if right else f"the answer is {example.answer}")

    data = dx.datasets.arithmetic(8)
    optimizer = dspy.GEPA(metric=judged, reflection_lm=lab, max_metric_calls=24, seed=3)
    dx.autolog(journal_path)

    optimizer.compile(dspy.ChainOfThought("question -> answer"), trainset=data[:4], valset=data[4:])

    journal = dx.open_journal(journal_path)
    run_id = top_level(journal).loc["dspy GEPA.compile", "id"]
    record = journal.experiment(run_id)
    assert record["status"] == "finished" and record["config"]["optimizer"] == "gepa"
    assert record["metric"].endswith("judged")  # found where GEPA keeps it
    assert optimizer.metric_fn is judged  # given back (GEPA keeps its metric as metric_fn)
    children = journal.children(run_id)
    assert children and all(child.role == "compile" for child in children)
    trials = [journal.trials(child.id) for child in children]
    rows = sum(len(frame) for frame in trials)
    # Every rollout GEPA scored is a trial (its per-predictor feedback calls are not counted again).
    assert 0 < rows <= 24 + len(data)
    feedback = {text for frame in trials for text in frame["feedback"].dropna()}
    assert feedback and feedback <= {"right"} | {f"the answer is {example.answer}" for example in data}


def test_disable_turns_it_off_and_a_second_call_does_not_register_twice(lab, journal_path):
    devset = dx.datasets.arithmetic(2)
    program = dspy.Predict("question -> answer")
    first = dx.autolog(journal_path)
    second = dx.autolog(journal_path)
    assert registered() == [second] and first is not second

    dspy.Evaluate(devset=devset, metric=exact)(program)
    assert dx.autolog(disable=True) is None and registered() == []
    dspy.Evaluate(devset=devset, metric=exact)(program)

    journal = dx.open_journal(journal_path)
    assert len(journal.experiments()) == 1


def test_dx_evaluate_is_journaled_once_and_traced_once(lab, journal_path):
    dx.autolog(journal_path)
    program = dx.Program("dspy.Predict", signature="question -> answer", name="qa")
    data = dx.Dataset(dx.datasets.arithmetic(3))
    with dx.Context(lm="lab/small", journal=journal_path):
        result = dx.evaluate(program, data, metric=dx.metrics.exact_match, trace=True, progress=False)
    journal = dx.open_journal(journal_path)
    assert len(journal.experiments()) == 1
    spans = journal.spans(result.experiment_id, f"{data.example_ids[0]}/r0")
    span_ids = [span.span_id for span in spans]
    assert spans and len(span_ids) == len(set(span_ids))


def test_dx_optimize_with_a_dspy_optimizer_is_journaled_once(lab, journal_path):
    dx.autolog(journal_path)
    program = dx.Program("dspy.Predict", signature="question -> answer", name="qa")
    data = dx.Dataset(dx.datasets.arithmetic(8))
    with dx.Context(lm="lab/small", journal=journal_path):
        result = dx.optimize(
            program,
            data[:4],
            data[4:],
            metric=dx.metrics.exact_match,
            optimizer="bootstrap",
            confirm_fraction=0,
            progress=False,
        )
    journal = dx.open_journal(journal_path)
    assert list(journal.experiments()["id"]) == [result.run_id]


def test_a_journal_that_fails_never_breaks_the_evaluate(lab, caplog):
    class Refusing:
        def __getattr__(self, name):
            raise RuntimeError("journal offline")

    callback = AutologCallback(Refusing())
    devset = dx.datasets.arithmetic(3)
    with caplog.at_level(logging.WARNING, logger="dspex_lab.autolog"), dspy.context(callbacks=[callback]):
        result = dspy.Evaluate(devset=devset, metric=exact, num_threads=2)(dspy.Predict("question -> answer"))
    assert len(result.results) == 3
    warnings = [record for record in caplog.records if record.name == "dspex_lab.autolog"]
    assert len(warnings) == 1 and "journal offline" in warnings[0].getMessage()


def test_optimizer_names_are_the_dspy_bridges():
    from dspex_lab.optimization._dspy import DSPY_NAMES

    assert {dspy_name: name for name, dspy_name in DSPY_NAMES.items()} == OPTIMIZER_NAMES
