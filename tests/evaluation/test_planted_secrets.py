"""A key planted everywhere a user's text enters a trial is found nowhere a run keeps or shows.

Planted: a metric's error, a program's error (as a provider's would quote it), a program's output,
a provider's 401 (which quotes the key it was sent), and an LM's ``extra_headers``. Looked for: every
table of the journal, the export package, the result's HTML and table, and the CLI's journal and
trace output. Paths: threads, process and Dask workers, and a DSPy optimizer's compile.
"""

from __future__ import annotations

import contextlib
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from local_dask import local_cluster

import dspex_lab as dx
from dspex_lab.cli import main as cli_main
from dspex_lab.engine import DaskExecutor, ProcessExecutor
from dspex_lab.errors import DspexLabWarning

KEY = "sk-plantedKEY0123456789abcdefXYZ"

PLANTING_MODULE = """
import dspy

class Planting(dspy.Module):
    def __init__(self):
        super().__init__()
        self.answer = dspy.Predict("question -> answer")

    def forward(self, question):
        number = sum(map(ord, question)) % 4
        if number == 0:
            raise RuntimeError(f"Incorrect API key provided: {KEY}")
        if number == 1:
            return dspy.Prediction(answer=f"the token is {KEY}", note={"api_key": KEY})
        return self.answer(question=question)
"""

PLANTING_METRIC = """
def planting_metric(example, prediction, trace=None):
    if sum(map(ord, example.question)) % 4 == 2:
        raise ValueError(f"metric could not score it with token={KEY}")
    return float(str(example.answer).strip() == str(getattr(prediction, "answer", "")).strip())
"""


def notebook_definitions() -> tuple[Any, Any]:
    """The module class and metric as a notebook defines them (in __main__, travelling by value)."""
    namespace: dict[str, Any] = {"__name__": "__main__", "KEY": KEY}
    exec(PLANTING_MODULE, namespace)
    exec(PLANTING_METRIC, namespace)
    return namespace["Planting"], namespace["planting_metric"]


def everything_kept(journal_path: Path, experiment_ids: list[str], tmp_path: Path, capsys: Any) -> str:
    """Every text the run left: journal tables, export packages and the CLI's output."""
    journal = dx.open_journal(journal_path)
    texts = []
    for (table,) in journal.sql("SELECT table_name FROM information_schema.tables").itertuples(index=False):
        texts.append(journal.sql(f'SELECT * FROM "{table}"').to_csv())
    for experiment_id in experiment_ids:
        experiment = journal.experiment(experiment_id)
        if experiment["kind"] == "evaluation" and experiment["program_spec"] is not None:
            package = dx.export(experiment_id, tmp_path / f"{len(texts)}.zip", journal=journal)
            with zipfile.ZipFile(package) as archive:
                texts.extend(archive.read(name).decode("utf-8", "replace") for name in archive.namelist())
        capsys.readouterr()
        cli_main(["journal", "trials", experiment_id, "--journal", str(journal_path), "--limit", "100"])
        cli_main(["trace", experiment_id, "--journal", str(journal_path)])
        for trial in journal.sql("SELECT trial_id FROM trials WHERE experiment_id = ? LIMIT 8", [experiment_id])[
            "trial_id"
        ]:
            cli_main(["trace", experiment_id, trial, "--journal", str(journal_path), "--prompts"])
        texts.append(capsys.readouterr().out)
    return "\n".join(texts)


def planted_run(executor: Any, journal_path: Path) -> tuple[Any, Any, str]:
    """A live module planting keys, and a program spec (exportable) whose metric plants them."""
    planting, metric = notebook_definitions()
    data = dx.datasets.arithmetic(16, seed=5)
    program = dx.Program("dspy.Predict", signature="question -> answer", name="spec")
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=journal_path, executor=executor), shown_warnings() as shown:
        live = dx.evaluate(planting(), data, metric=metric, trace=True, progress=False)
        spec = dx.evaluate(program, data, metric=metric, trace=True, progress=False)
    return live, spec, "".join(shown)


@contextlib.contextmanager
def shown_warnings() -> Iterator[list[str]]:
    """Collect the warnings a run shows (their text is shown to the user too)."""
    shown: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield shown
    shown.extend(str(item.message) for item in caught)


@pytest.fixture(scope="module")
def dask_client() -> Iterator[Any]:
    yield from local_cluster(1, 4)


@pytest.mark.parametrize("path", ["thread", "process", "dask"])
def test_a_planted_key_is_nowhere_after_an_evaluation(path, tmp_path, capsys, request):
    journal_path = tmp_path / "planted.duckdb"
    if path == "process":
        with ProcessExecutor(1, threads_per_worker=4) as executor:
            result, spec, warned = planted_run(executor, journal_path)
    elif path == "dask":
        result, spec, warned = planted_run(DaskExecutor(request.getfixturevalue("dask_client")), journal_path)
    else:
        result, spec, warned = planted_run("thread", journal_path)

    stages = set(result.trials["error_stage"].dropna())
    assert {"program", "metric"} <= stages, "both kinds of planted error happened"
    assert result.trials["prediction"].str.contains("the token is").any(), "the planted output was recorded"
    shown = warned + "".join(item._repr_html_() + item.trials.to_csv() + repr(item) for item in (result, spec))
    kept = everything_kept(journal_path, [result.experiment_id, spec.experiment_id], tmp_path, capsys)
    assert ("[REDACTED]" in kept and "dspex-package" in kept.lower()) or "checksum" in kept.lower()
    assert KEY not in shown and KEY not in kept


def test_a_planted_key_is_nowhere_after_a_dspy_optimizer_compiles(tmp_path, capsys):
    _, metric = notebook_definitions()
    program = dx.Program("dspy.Predict", signature="question -> answer", name="planted")
    data = dx.Dataset(dx.datasets.arithmetic(48, seed=8), name="arith-48")
    train, val = data.split(0.5, 0.5, seed=1)
    journal_path = tmp_path / "compile.duckdb"
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=journal_path, threads=2), shown_warnings() as shown:
        run = dx.optimize(program, trainset=train, valset=val, metric=metric, optimizer="bootstrap")
    journal = dx.open_journal(journal_path)
    experiments = list(journal.sql("SELECT id FROM experiments")["id"])
    errors = journal.sql("SELECT error_message FROM trials WHERE error_stage = 'metric'")["error_message"]
    assert len(errors) > 0 and errors.str.contains("REDACTED").all(), "the compile's metric errors were kept, masked"
    kept = everything_kept(journal_path, experiments, tmp_path, capsys) + run._repr_html_() + "".join(shown)
    assert KEY not in kept


def test_a_key_quoted_by_a_provider_or_in_extra_headers_is_nowhere(loopback_provider, tmp_path, capsys):
    # The server does not know this key: it answers 401 quoting it, as OpenAI's does.
    lm = loopback_provider.lm("gpt-4o-mini", api_key=KEY, extra_headers={"X-Api-Key": KEY}, cache=True)
    journal_path = tmp_path / "provider.duckdb"
    program = dx.Program("dspy.Predict", signature="question -> answer", name="provider")
    with dx.Context(lm=lm, journal=journal_path, threads=1), pytest.warns(DspexLabWarning) as warned:
        result = dx.evaluate(program, dx.datasets.arithmetic(4, seed=2), metric=dx.metrics.exact_match, progress=False)
    assert result.n_errors == 4 and set(result.trials["error_type"]) == {"LMAuthError"}
    assert loopback_provider.requests and all(KEY in str(request.headers) for request in loopback_provider.requests)
    shown = result._repr_html_() + result.trials.to_csv() + "".join(str(item.message) for item in warned)
    kept = everything_kept(journal_path, [result.experiment_id], tmp_path, capsys)
    assert "Incorrect API key provided: [REDACTED]" in kept
    assert KEY not in shown and KEY not in kept


def test_trial_records_have_one_constructor():
    # Every path builds its records with trial_record, which masks; a direct TrialResult(...) would bypass it.
    import ast

    package = Path(dx.__file__).parent
    direct = []
    for source in package.rglob("*.py"):
        tree = ast.parse(source.read_text(encoding="utf-8"))
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef) or function.name == "trial_record":
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == (
                    "TrialResult"
                ):
                    direct.append(f"{source.relative_to(package)}:{node.lineno}")
    assert direct == []


def test_a_masked_prediction_stays_valid_json():
    from dspex_lab.engine import trial_record

    record = trial_record(
        index=0,
        example_id="e",
        repeat=0,
        status="ok",
        score=1.0,
        prediction='{"answer": "password: hunter2\\"}", "headers": {"Authorization": "Basic abc"}}',
    )
    import json

    decoded = json.loads(record.prediction)
    assert "hunter2" not in record.prediction and decoded["headers"]["Authorization"] == "[REDACTED]"
