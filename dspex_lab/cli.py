"""The ``dspex`` command: demo, evaluate, optimize, and journal queries from a terminal."""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import math
import os
import re
import shutil
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dspex_lab.metrics import NAMES as METRIC_NAMES

__all__ = ["main"]

_METRIC_HELP = f"one of {', '.join(METRIC_NAMES)}, or module:qualname (a module given with --import or importable)"
_IMPORT_HELP = "import this module first (repeatable), so its registered modules and metrics can be used"
_INPUTS_HELP = "comma-separated input fields, e.g. question (default: the inputs of the program's signature)"
# dspex_lab.optimization.GUARDRAIL_SYNTAX, written out: `dspex --help` does not import the optimization layer.
_GUARDRAIL_HELP = "cost<=USD, latency_p95<=SECONDS, error_rate<=FRACTION, or metric:NAME>=NUMBER (or <=)"
_JOURNAL_HELP = "journal file (default: DSPEX_JOURNAL, dspex.toml or [tool.dspex], else dspex.duckdb)"
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
# Error messages in `dspex journal trials` are cut to this many characters (after masking secrets).
_ERROR_CHARACTERS = 120
# `dspex journal trials` cuts an example's question, gold answer and the prediction to these many characters.
_TEXT_CHARACTERS = {"question": 48, "expected": 24, "prediction": 24}
# On a terminal, those texts share its width, none narrower than this; a trial's label takes at most this many.
_NARROWEST_TEXT = 8
_LABEL_CHARACTERS = 24
_STEP_TRACE = re.compile(r"step-(\d+)")
# The exit status of a command whose reader went away (`dspex journal list | head`), as a shell reports
# one ended by SIGPIPE: 128 + 13.
_BROKEN_PIPE_STATUS = 141


def _console() -> Any:
    from rich.console import Console

    class _PipedConsole(Console):
        def on_broken_pipe(self) -> None:
            # rich exits with status 1 here; main() ends every command whose reader went away the same way.
            self.quiet = True
            raise BrokenPipeError

    # Tables stay readable when output goes to a file or a CI log (no terminal width to read).
    return _PipedConsole(highlight=False, width=None if sys.stdout.isatty() else 160)


def _number(value: float, spec: str = ".3f") -> str:
    """Format a number, never as negative zero (-0.000 reads as a real negative difference)."""
    text = format(value, spec)
    if text.lstrip("+-").strip("0.") == "" and text.startswith("-"):
        return text[1:] if "+" not in spec else "+" + text[1:]
    return text


def _format_ci(summary: dict[str, Any]) -> str:
    low, high = summary["ci"]
    if low is None or high is None:
        return "—"
    return f"[{_number(low)}, {_number(high)}]"


def _results_table(results: Sequence[Any]) -> Any:
    from rich.table import Table

    table = Table(title="Evaluations", show_lines=False)
    for column in ("program", "mean", "95% CI", "n", "errors", "tokens in/out", "cost $", "p50 latency", "experiment"):
        table.add_column(column, justify="right" if column not in ("program", "experiment") else "left")
    for result in results:
        summary = result.to_summary()
        mean = summary["mean"]
        table.add_row(
            result.name,
            "—" if mean is None else _number(mean),
            _format_ci(summary),
            str(summary["n"]),
            str(summary["n_errors"]),
            f"{summary['tokens']['input']:,}/{summary['tokens']['output']:,}",
            "—" if summary["cost"] is None else f"{summary['cost']:.4f}",
            "—" if summary["latency"]["p50"] is None else f"{summary['latency']['p50'] * 1000:.1f} ms",
            str(result.experiment_id),
        )
    return table


def _demo(arguments: argparse.Namespace) -> int:
    import dspex_lab as dx

    console = _console()
    dataset = dx.Dataset(dx.datasets.arithmetic(arguments.n, seed=arguments.seed), name=f"arithmetic-{arguments.n}")
    predict = dx.Program("dspy.Predict", signature="question -> answer", name="predict")
    chain = dx.Program("dspy.ChainOfThought", signature="question -> answer", name="chain-of-thought")
    console.print(
        f"dspex demo: {len(dataset)} arithmetic word problems, lab LM {arguments.lm!r} (an offline simulator), "
        f"{arguments.threads} threads"
    )
    with dx.Context(lm=arguments.lm, journal=arguments.journal, threads=arguments.threads) as context:
        results = [
            dx.evaluate(program, dataset, metric=dx.metrics.exact_match, progress=not arguments.quiet)
            for program in (predict, chain)
        ]
        comparison = dx.compare(results[0], results[1])
    console.print(_results_table(results))
    low, high = comparison.ci
    console.print(
        f"Paired comparison ({comparison.test}, n={comparison.n}): chain-of-thought - predict = "
        f"{_number(comparison.difference, '+.3f')} (95% CI {_number(low, '+.3f')} to {_number(high, '+.3f')}), "
        f"p = {comparison.p_value:.2g}, "
        f"d_z = {comparison.effect_size:.2f}"
    )
    _print_where(console, context.journal)
    return 0


def _print_where(console: Any, journal: Any) -> None:
    """Say where the run was recorded: a journal file with how to browse it, or that nothing was written."""
    if journal.durable:
        path = Path(journal.path).resolve()
        console.print(f"Journal: {path}  (browse with: dspex journal list --journal {path})")
    else:
        console.print(f"Journal: {journal.location}; nothing was written to disk")


def _import_modules(names: Sequence[str]) -> None:
    """Import the modules the user named with ``--import`` (registering their custom modules and metrics)."""
    from dspex_lab.errors import ProgramSpecError

    for name in names:
        if not _DOTTED.fullmatch(name):
            raise ProgramSpecError(
                f"--import {name!r}: give a Python import path such as mypackage.modules (letters, digits, "
                "underscores and dots), not a file name"
            )
    # As `python -m` does: a module in the working directory is importable.
    if names and "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise ProgramSpecError(f"--import {name}: cannot import it ({error})") from None


def _metric(name: str, *, option: str = "--metric") -> Any:
    """Return a lab metric by name, or ``module:qualname`` (``mylab.metrics:Graders.strict``) from a module.

    The module is imported as ``--import`` imports it: the user's own command line chooses it, so it
    is allowed here, while a program spec or a package (data) never chooses what is imported.
    ``option`` is what errors name (a guardrail's second metric is found by the same rule).
    """
    import dspex_lab as dx

    if name in METRIC_NAMES:
        return dx.metrics.get(name)
    module_name, colon, qualname = name.partition(":")
    parts = qualname.split(".")
    if not colon or not _DOTTED.fullmatch(module_name) or not all(part.isidentifier() for part in parts):
        raise dx.errors.ExecutionError(f"{option} {name!r}: {_METRIC_HELP}")
    if any(part.startswith("_") for part in parts):
        raise dx.errors.ExecutionError(f"{option} {name}: {qualname!r} is private; name a public function")
    _import_modules([module_name])
    found: Any = sys.modules[module_name]
    for part in parts:
        found = getattr(found, part, None)
    if not callable(found):
        raise dx.errors.ExecutionError(f"{option} {name}: module {module_name} has no function {qualname!r}")
    return found


def _input_fields(given: str | None, program: Any, data: str) -> tuple[list[str], str]:
    """Return a data file's input fields and where they came from: ``--inputs``, else the program.

    Without ``--inputs`` they are the inputs of the spec's signature, or, for a custom module
    without one, the parameters its ``forward`` requires (what the program is called with).
    """
    from dspex_lab.errors import DatasetError

    if given:
        return [field.strip() for field in given.split(",") if field.strip()], "--inputs"
    if program.signature is not None:
        import dspy

        return list(dspy.Signature(program.signature).input_fields), f"the signature {program.signature!r}"
    from dspex_lab.program import resolve_module

    parameters = inspect.signature(resolve_module(program.module).forward).parameters.values()
    required = [
        parameter.name
        for parameter in parameters
        if parameter.name != "self"
        and parameter.default is inspect.Parameter.empty
        and parameter.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    if required:
        return required, f"{program.module}.forward's parameters"
    raise DatasetError(
        f"cannot tell which fields are inputs: {program.module} has no signature and its forward names no "
        "parameters; say them with --inputs question[,context]",
        path=data,
    )


def _load_data(path: str, inputs: tuple[list[str], str]) -> Any:
    """Load a dataset file with the given input fields; an error says where inferred fields came from."""
    import dspex_lab as dx

    fields, source = inputs
    try:
        return dx.load_dataset(path, inputs=fields)
    except dx.errors.DatasetError as error:
        if source == "--inputs":
            raise
        hint = f" (input fields {', '.join(fields)} from {source}; choose them with --inputs)"
        explained = dx.errors.DatasetError(f"{error}{hint}")
        explained.path, explained.line = error.path, error.line
        raise explained from None


def _read_program(spec_path: Path) -> Any:
    """Read a JSON program spec file: bounded in size before it is read, then by the program layer's reader."""
    import dspex_lab as dx
    from dspex_lab.program import MAX_SPEC_CHARACTERS

    if not spec_path.is_file():
        raise dx.errors.ProgramSpecError(f"{spec_path}: no such program spec file")
    with spec_path.open("rb") as spec_file:
        data = spec_file.read(MAX_SPEC_CHARACTERS + 1)  # read with a bound: the file may grow after a stat()
    if len(data) > MAX_SPEC_CHARACTERS:
        raise dx.errors.ProgramSpecError(
            f"{spec_path}: more than a program spec's limit of {MAX_SPEC_CHARACTERS:,} bytes"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise dx.errors.ProgramSpecError(f"{spec_path}: not UTF-8 text (byte {error.start})") from None
    return dx.Program.from_json(text, source=str(spec_path))


def _evaluate(arguments: argparse.Namespace) -> int:
    """Evaluate a spec on a data file; exit 1 when every trial failed (the warning says how), else 0."""
    import dspex_lab as dx

    _import_modules(arguments.imports)
    program = _read_program(Path(arguments.spec))
    dataset = _load_data(arguments.data, _input_fields(arguments.inputs, program, arguments.data))
    metric = _metric(arguments.metric)
    with dx.Context(lm=arguments.lm, journal=arguments.journal, threads=arguments.threads) as context:
        resume = _resumed(context.journal, arguments.resume, kind="evaluation")
        result = dx.evaluate(
            program,
            dataset,
            metric=metric,
            name=arguments.name,
            repeats=arguments.repeats,
            timeout=arguments.timeout,
            resume=resume,
            progress=not arguments.quiet,
            trace=arguments.trace,
        )
    _console().print(_results_table([result]))
    if arguments.json:
        print(json.dumps({"experiment_id": result.experiment_id, **result.to_summary()}))
    if arguments.trace:
        print(f"its traces: dspex trace {result.experiment_id} --journal {arguments.journal}")
    # Nothing was measured: a script (or CI) must not read this run as a result. The warning said why.
    return 1 if result.n_trials and result.n_errors == result.n_trials else 0


def _optimize(arguments: argparse.Namespace) -> int:
    """Optimize a spec on a trainset, judged on a valset; print the held-out verdict and where to read why."""
    import dspex_lab as dx
    from dspex_lab.optimization import parse_objective

    _import_modules(arguments.imports)
    program = _read_program(Path(arguments.spec))
    inputs = _input_fields(arguments.inputs, program, arguments.train)
    trainset = _load_data(arguments.train, inputs)
    valset = _load_data(arguments.val, inputs)
    testset = _load_data(arguments.test, inputs) if arguments.test else None
    metric = _metric(arguments.metric)
    objective = parse_objective(
        arguments.guardrails, option="--guardrail", metric=lambda name: _metric(name, option="metric")
    )
    limits = {"lm_calls": arguments.max_lm_calls, "usd": arguments.max_usd}
    budget = (
        dx.Budget(**{key: value for key, value in limits.items() if value is not None})
        if any(value is not None for value in limits.values())
        else None
    )
    if arguments.optimizer == "simba-c":
        settings = {"max_steps": arguments.max_steps, "bsize": arguments.bsize}
        optimizer: Any = dx.SimbaC(**{key: value for key, value in settings.items() if value is not None})
    else:
        optimizer = arguments.optimizer
    with dx.Context(lm=arguments.lm, journal=arguments.journal, threads=arguments.threads) as context:
        resume = _resumed(context.journal, arguments.resume, kind="optimization")
        result = dx.optimize(
            program,
            trainset,
            valset,
            metric=metric,
            optimizer=optimizer,
            objective=objective,
            budget=budget,
            seed=arguments.seed,
            testset=testset,
            confirm_fraction=arguments.confirm_fraction,
            name=arguments.name,
            resume=resume,
            trace=arguments.trace,
            progress=not arguments.quiet,
        )
    _print_optimization(result, arguments)
    return 0


def _print_optimization(result: Any, arguments: argparse.Namespace) -> None:
    """Print a run's verdict: the held-out test's headline first; the validation means labelled as selection data."""
    # A run's default name already ends with its optimizer ("qa (simba-c)"): say it once.
    title = result.name if result.name.endswith(f"({result.optimizer})") else f"{result.name} ({result.optimizer})"
    print(f"{title}: {result.status}" + (f", {result.status_detail}" if result.status_detail else ""))
    print(result.headline)
    print(result.optimistic.capitalize())
    _print_pareto(result.journal, result.run_id, result.pareto)
    if arguments.output:
        Path(arguments.output).write_text(result.best.to_json(), encoding="utf-8")
        print(f"wrote the best configuration to {arguments.output}")
    if result.run_id:
        print(f"why each candidate exists: dspex trace {result.run_id} --journal {arguments.journal}")
    if arguments.json:
        print(json.dumps(result.to_summary()))


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return _number(value)
    return str(value)


def _text_table(title: str, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Return rows as a plain-text table under a title (plain text: listing a journal does not load rich)."""
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max([len(column), *(len(line[index]) for line in cells)]) for index, column in enumerate(columns)]
    lines = [
        title,
        "  ".join(column.ljust(width) for column, width in zip(columns, widths, strict=True)).rstrip(),
        "  ".join("-" * width for width in widths),
    ]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in cells]
    return "\n".join(lines)


def _existing_journal(path: str) -> Any:
    """Open the journal a reading command names; one that does not exist is an error, not an empty table."""
    from dspex_lab.errors import JournalError
    from dspex_lab.journal import open_journal

    if not Path(path).exists():
        raise JournalError(
            f"no journal at {Path(path).resolve()}: nothing was recorded there "
            "(name one with --journal, DSPEX_JOURNAL or journal = ... in dspex.toml)"
        )
    return open_journal(path)


def _experiment_id(journal: Any, experiment: str, *, kinds: Sequence[str] = ()) -> str:
    """Return the id of the experiment named by id or by name (the rule of ``dx.load`` and the magics)."""
    from dspex_lab.errors import JournalError

    try:
        journal.experiment(experiment)  # an id is read from the journal alone (DSPy is not loaded for it)
    except JournalError:
        from dspex_lab.session import resolve_experiment

        return resolve_experiment(journal, experiment, kinds=kinds)
    return experiment


def _resumed(journal: Any, experiment: str | None, *, kind: str) -> str | None:
    """Return the id of the run ``--resume`` names (by id or by name), or None without ``--resume``."""
    return None if experiment is None else _experiment_id(journal, experiment, kinds=(kind,))


def _journal(arguments: argparse.Namespace) -> int:
    # Only the journal layer: listing a journal loads neither DSPy nor scipy (see bench/bench_startup.py).
    journal = _existing_journal(arguments.journal)
    if arguments.journal_command == "list":
        _journal_list(journal, nested=arguments.nested)
    elif arguments.journal_command == "trials":
        arguments.experiment = _experiment_id(journal, arguments.experiment)
        _journal_trials(journal, arguments)
    elif arguments.journal_command == "annotate":
        arguments.experiment = _experiment_id(journal, arguments.experiment)
        _journal_annotate(journal, arguments)
    elif arguments.journal_command == "annotations":
        _journal_annotations(journal, arguments)
    elif arguments.journal_command == "sql":
        _console().print(journal.sql(arguments.query).to_string(index=False, max_rows=arguments.limit))
    return 0


def _journal_list(journal: Any, *, nested: bool) -> None:
    """Print the journal's experiments, newest first; runs nest, their nested experiments folded unless ``nested``.

    An optimization's candidate evaluations (dozens per run) are its children: the run's row counts them
    and a last line says how many are hidden; with ``nested`` (``--all``) each is listed under its run.
    """
    # The mean and interval every view shows (the journal's one rule), never re-derived here.
    intervals = journal.score_intervals()
    no_interval = (None, None, None, "")
    summaries = journal.experiment_summaries(children=True)
    below: dict[str, list[Any]] = {}
    for summary in reversed(summaries):  # oldest first under each run
        if summary.parent_id is not None:
            below.setdefault(summary.parent_id, []).append(summary)
    listed: list[tuple[Any, int]] = []
    for summary in summaries:
        if summary.parent_id is None:
            listed.append((summary, 0))
            listed += [(child, 1) for child in below.get(summary.id, [])] if nested else []
    if nested:  # nested in an experiment that is not listed (deeper, or its parent gone): never left out
        placed = {summary.id for summary, _ in listed}
        listed += [(summary, 1) for summary in summaries if summary.id not in placed]
    rows = []
    for summary, depth in listed:
        mean, low, high, method = intervals.get(summary.id, no_interval)
        rows.append(
            {
                "id": summary.id,
                "name": f"  {summary.name}" if depth else summary.name,
                "kind": summary.kind,
                "status": summary.status,
                "trials": summary.n_trials,
                "errors": summary.n_errors,
                "mean": mean,
                "95% CI": _interval_cell(low, high, method),
                "created": None if summary.created_at is None else str(summary.created_at)[:19],
                "nested": len(below.get(summary.id, [])) or None,
                "role": summary.role,
            }
        )
    hidden = sum(1 for summary in summaries if summary.parent_id is not None)
    columns: tuple[str, ...] = ("id", "name", "kind", "status", "trials", "errors", "mean", "95% CI", "created")
    columns += ("nested", "role") if nested else ("nested",) if hidden else ()
    print(_text_table(f"Experiments in {journal.path}", rows, columns))
    if hidden and not nested:
        runs = sum(1 for run in below if any(summary.id == run for summary, _ in listed))
        print(
            f"{hidden} nested experiment{'s' if hidden != 1 else ''} hidden (an optimization's candidate evaluations, "
            f"in {runs} run{'s' if runs != 1 else ''}): dspex journal list --all lists them under their runs"
        )


def _interval_cell(low: float | None, high: float | None, method: str) -> str | None:
    """Return ``[0.254, 0.746] wilson`` (None without an interval: the table shows a dash)."""
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return None
    return f"[{_number(low)}, {_number(high)}] {method}"


def _journal_trials(journal: Any, arguments: argparse.Namespace) -> None:
    """Print an experiment's trials, filtered and sorted: question, expected, prediction and any (masked) error."""
    from dspex_lab.errors import JournalError

    if arguments.limit < 0:
        raise JournalError(f"--limit must be zero or more, got {arguments.limit}")
    record = journal.experiment(arguments.experiment)  # an unknown experiment is an error, not an empty table
    filters = {"status": arguments.status, "min_score": arguments.min_score, "max_score": arguments.max_score}
    stored = ("trial_id", "example_id", "status", "score", "latency", "input_tokens", "output_tokens", "prediction")
    stored += ("error_type", "error_message")
    rows = journal.trial_rows(
        arguments.experiment, columns=stored, order=arguments.sort, limit=arguments.limit, **filters
    )
    labels = _current_labels(journal, arguments.experiment)
    _add_texts(journal, record, rows, widths=_text_widths(rows, labelled=bool(labels)))
    shown = [f"status={arguments.status}"] if arguments.status else []
    shown += [f"score>={arguments.min_score}"] if arguments.min_score is not None else []
    shown += [f"score<={arguments.max_score}"] if arguments.max_score is not None else []
    title = f"Trials of {arguments.experiment}" + (f" ({', '.join(shown)})" if shown else "")
    title += f", by {arguments.sort}" if arguments.sort != "trial" else ""
    columns: tuple[str, ...] = ("trial_id", "status", "score", "latency", "input_tokens", "output_tokens")
    columns += (*_TEXT_CHARACTERS, "label", "error") if labels else (*_TEXT_CHARACTERS, "error")
    for row in rows:
        row["label"] = labels.get(str(row["trial_id"]))
    print(_text_table(title, rows, columns))
    # Counted in the journal, not by fetching every matching trial (a million-trial experiment stays quick).
    _, total = journal.trial_page(arguments.experiment, limit=0, **filters)
    if total > len(rows):
        print(f"{total - len(rows)} more trials (show more with --limit {total})")
    if not rows and not any(journal.trial_counts(arguments.experiment).values()):
        _say_nested(journal, arguments.experiment)


def _say_nested(journal: Any, experiment_id: str) -> None:
    """Say where the trials of a run with none of its own are: in its nested experiments (an optimization's)."""
    children = journal.children(experiment_id)
    if children:
        listed = ", ".join(f"{child.id} ({child.name}, {child.n_trials} trials)" for child in children[:5])
        more = f" and {len(children) - 5} more" if len(children) > 5 else ""
        print(
            f"{experiment_id} has no trials of its own: its {len(children)} nested experiments hold them: "
            f"{listed}{more} (all of them: dspex journal list --all)"
        )


def _current_labels(journal: Any, experiment_id: str) -> dict[str, str]:
    """Return each annotated trial's current label (``(note)`` or ``(gold)`` for an annotation without one)."""
    labels = {}
    for row in journal.annotation_rows(experiment_id, current=True):
        label = row["label"] or ("(gold)" if row["corrected_gold"] is not None else "(note)")
        labels[str(row["trial_id"])] = " ".join(label.split())[:_LABEL_CHARACTERS]
    return labels


def _terminal_width() -> int | None:
    """Return the terminal's width in characters, or None when the output is not a terminal (a pipe, a file)."""
    if not sys.stdout.isatty():
        return None
    return shutil.get_terminal_size().columns


def _text_widths(rows: Sequence[dict[str, Any]], *, labelled: bool) -> dict[str, int]:
    """Return how many characters question, expected, prediction and error may take on a line.

    On a terminal the texts share what the other columns leave of its width (question twice what the
    others get), each at least :data:`_NARROWEST_TEXT`; into a pipe or a file, the fixed widths of
    :data:`_TEXT_CHARACTERS` and :data:`_ERROR_CHARACTERS`, so scripts read the same lines anywhere.
    """
    fixed = {**_TEXT_CHARACTERS, "error": _ERROR_CHARACTERS}
    width = _terminal_width()
    if width is None:
        return fixed
    others = ("trial_id", "status", "score", "latency", "input_tokens", "output_tokens")
    used = sum(max(len(name), *(len(_cell(row.get(name))) for row in rows)) for name in others) if rows else 0
    used += (_LABEL_CHARACTERS + 2) if labelled else 0
    texts = ["question", "expected", "prediction"] + (
        ["error"] if any(row["status"] == "error" for row in rows) else []
    )
    shares = {"question": 2, "expected": 1, "prediction": 1, "error": 2}
    budget = width - used - 2 * (len(others) + len(texts) - 1)
    total = sum(shares[name] for name in texts)
    sized = {name: max(_NARROWEST_TEXT, budget * shares[name] // total) for name in texts}
    return {**fixed, **sized}


def _add_texts(
    journal: Any, record: dict[str, Any], rows: list[dict[str, Any]], *, widths: dict[str, int] | None = None
) -> None:
    """Give each trial row its question, expected and prediction, and its error, each on one line, masked and cut.

    Question and expected are read from the examples stored with the experiment (as the trace pages
    read them: expected is the gold fields the program outputs); a dataset too large to be stored
    shows a dash there. ``widths`` cuts each text (default: :data:`_TEXT_CHARACTERS` and
    :data:`_ERROR_CHARACTERS`).
    """
    from dspex_lab.notebook import ExampleFields
    from dspex_lab.trace.redaction import mask_text

    def cut(text: str, characters: int) -> str | None:
        # Masked before it is cut short, so a cut cannot hide a key from the pattern that finds it.
        line = " ".join(mask_text(text).split())
        return (line if len(line) <= characters else line[: characters - 1] + "…") or None

    widths = {**_TEXT_CHARACTERS, "error": _ERROR_CHARACTERS, **(widths or {})}
    fields = ExampleFields(journal, record)
    for row in rows:
        texts = fields.row(str(row.pop("example_id") or ""), row.pop("prediction"))
        for name in _TEXT_CHARACTERS:  # the trace pages call the prediction "answer"
            row[name] = cut(texts["answer" if name == "prediction" else name], widths[name])
        message = cut(str(row.pop("error_message") or ""), widths["error"]) or ""
        row["error"] = f"{row.pop('error_type') or 'unknown'}: {message}" if row["status"] == "error" else None


def _journal_annotate(journal: Any, arguments: argparse.Namespace) -> None:
    """Record a verdict on one trial, or withdraw it (``--withdraw``), and say what the trial now shows."""
    if arguments.withdraw:
        from dspex_lab.errors import JournalError

        given = [f"--{name}" for name in ("label", "note", "gold") if getattr(arguments, name) is not None]
        if given:
            raise JournalError(
                f"--withdraw takes no {', '.join(given)}: withdraw first, then annotate trial {arguments.trial} again"
            )
        # The journal refuses a trial with no annotation in force to withdraw.
        annotation = journal.annotate(arguments.experiment, arguments.trial, author=arguments.author, withdraw=True)
        print(
            f"withdrew the annotation of trial {arguments.trial} of {arguments.experiment}: it has none in force "
            f"(withdrawal {annotation})"
        )
        return
    gold = (
        None if arguments.gold is None else _gold_fields(journal, arguments.experiment, arguments.trial, arguments.gold)
    )
    annotation = journal.annotate(
        arguments.experiment, arguments.trial, label=arguments.label, note=arguments.note, corrected_gold=gold,
        author=arguments.author,
    )  # fmt: skip
    shown = [f"label {arguments.label!r}"] if arguments.label is not None else []
    shown += ["a note"] if arguments.note is not None else []
    shown += [f"gold {json.dumps(gold, ensure_ascii=False)}"] if gold is not None else []
    print(
        f"annotated trial {arguments.trial} of {arguments.experiment} with {', '.join(shown)} (annotation {annotation})"
    )


def _journal_annotations(journal: Any, arguments: argparse.Namespace) -> None:
    """Print a run's annotations in force (``--history``: every one, in the order written)."""
    experiment = _experiment_id(journal, arguments.experiment)
    from dspex_lab.journal import is_withdrawal

    rows = journal.annotation_rows(experiment, current=not arguments.history)
    for row in rows:
        if is_withdrawal(row):  # in the history only: it ends the annotation before it
            row["label"] = "(withdrawn)"
        row["created"] = str(row.pop("created_at"))[:19]
        row["note"] = " ".join(str(row["note"]).split())[: _TEXT_CHARACTERS["question"]] if row["note"] else None
        gold = row.pop("corrected_gold")
        row["gold"] = None if gold is None else json.dumps(gold, ensure_ascii=False)[: _TEXT_CHARACTERS["expected"]]
    title = f"{'Every annotation' if arguments.history else 'Annotations in force'} of {experiment}"
    print(_text_table(title, rows, ("trial_id", "label", "note", "gold", "author", "created")))


def _gold_fields(journal: Any, experiment_id: str, trial_id: str, text: str) -> dict[str, Any]:
    """Return ``--gold`` as the example's gold fields: a JSON object as given, else the one gold field's value.

    A plain value (``--gold 42``) needs the example stored with the experiment and exactly one gold
    field (the field the program outputs), so a correction can never land in the wrong field.
    """
    from dspex_lab.errors import JournalError
    from dspex_lab.notebook import ExampleFields

    trials = journal.trial_rows(experiment_id, columns=("trial_id", "example_id", "prediction"))
    found = next((row for row in trials if row["trial_id"] == trial_id), None)
    if found is None:
        raise JournalError(
            f"no trial {trial_id!r} in experiment {experiment_id!r}; "
            f"list them with: dspex journal trials {experiment_id}"
        )
    fields = ExampleFields(journal, journal.experiment(experiment_id))
    return fields.corrected_gold(str(found["example_id"]), found["prediction"], text, option="--gold")


def _print_more(journal: Any, experiment_id: str, shown: int) -> None:
    total = sum(journal.trial_counts(experiment_id).values())
    if total > shown:
        print(f"{total - shown} more trials (show more with --limit {total})")


def _export(arguments: argparse.Namespace) -> int:
    import dspex_lab as dx

    include_data = {"auto": "auto", "yes": True, "no": False}[arguments.include_data]
    experiment = _experiment_id(_existing_journal(arguments.journal), arguments.experiment, kinds=("evaluation",))
    path = dx.export(experiment, arguments.path, journal=arguments.journal, include_data=include_data)
    print(f"Wrote {path}  (check it with: dspex verify {path}; re-run it with: dspex rerun {path})")
    return 0


def _verify(arguments: argparse.Namespace) -> int:
    import dspex_lab as dx

    _import_modules(arguments.imports)
    report = dx.verify_package(arguments.package)
    print(report)
    return 0 if report.ok else 1


def _rerun(arguments: argparse.Namespace) -> int:
    import dspex_lab as dx

    _import_modules(arguments.imports)
    report = dx.rerun_package(
        arguments.package,
        metric=_metric(arguments.metric) if arguments.metric else None,
        journal=arguments.journal,
        threads=arguments.threads,
        model=arguments.model,
        api_base=arguments.api_base,
    )
    print(report)
    return 0 if report.identical else 1


def _trace(arguments: argparse.Namespace) -> int:
    import dspex_lab as dx

    _import_modules(arguments.imports)
    journal = _existing_journal(arguments.journal)
    arguments.experiment = _experiment_id(journal, arguments.experiment)
    if arguments.otlp:
        from dspex_lab.trace import to_otlp_json

        record = journal.experiment(arguments.experiment)
        spans = journal.spans(arguments.experiment, arguments.trial)
        if not spans:
            raise dx.errors.JournalError(_why_no_spans(journal, arguments.experiment, arguments.trial))
        # Trial ids repeat across experiments on the same data: the experiment id keeps their OTLP traces apart.
        payload = to_otlp_json(spans, experiment_id=arguments.experiment, experiment_name=record.get("name"))
        Path(arguments.otlp).write_text(payload, encoding="utf-8")
        print(f"wrote {len(spans)} spans as OpenTelemetry JSON to {arguments.otlp}")
        return 0
    if arguments.trial is None and journal.experiment(arguments.experiment).get("kind") == "optimization":
        steps = journal.step_rows(arguments.experiment)
        rows = [{"trace": f"step-{row['step']}", "status": row["status"], "decision": row["detail"]} for row in steps]
        print(_text_table(f"Steps of optimization run {arguments.experiment}", rows, ("trace", "status", "decision")))
        print(f"\nshow one: dspex trace {arguments.experiment} step-1 --journal {journal.path}")
        _print_importance(journal, arguments.experiment)
        _print_pareto(journal, arguments.experiment)
        return 0
    if arguments.trial is None:
        columns = ("trial_id", "status", "score", "error_type", "spans")
        rows = journal.trial_rows(
            arguments.experiment, columns=columns[:-1], order="error", limit=arguments.limit, with_span_counts=True
        )
        if not rows:
            raise dx.errors.JournalError(f"no trials for experiment {arguments.experiment!r} in {journal.path}")
        print(_text_table(f"Trials of {arguments.experiment}, failed first", rows, columns))
        _print_more(journal, arguments.experiment, len(rows))
        print(f"\nshow one: dspex trace {arguments.experiment} TRIAL_ID --journal {journal.path}")
        return 0
    if not journal.span_rows(arguments.experiment, arguments.trial):
        raise dx.errors.JournalError(_why_no_spans(journal, arguments.experiment, arguments.trial))
    tree = journal.trace(arguments.experiment, arguments.trial)
    print(tree.to_text(show_prompts=arguments.prompts, width=arguments.width))
    step = _STEP_TRACE.fullmatch(arguments.trial)
    if step and journal.experiment(arguments.experiment).get("kind") == "optimization":
        _print_step_why(journal, arguments.experiment, int(step.group(1)))
    return 0


def _print_importance(journal: Any, run_id: str) -> None:
    """Print which variables mattered in an optimization run (``result.importance()``), read from the journal."""
    from dspex_lab.errors import DspexLabError
    from dspex_lab.optimization import importance_text, run_importance
    from dspex_lab.trace.redaction import mask_text

    print()
    try:
        print(mask_text(importance_text(run_importance(journal, run_id))))
    except DspexLabError as error:  # a run that has not recorded its baseline yet
        print(f"Which variables mattered: not estimable ({mask_text(str(error))})")


def _print_pareto(journal: Any, run_id: str, points: Any = None) -> None:
    """Print an optimization run's quality-vs-cost front in a few lines (``result.pareto()``), read from the journal.

    ``points`` reads the front instead (a run whose journal refused its trials holds them in memory).
    """
    from dspex_lab.errors import DspexLabError
    from dspex_lab.optimization import pareto_text, run_pareto

    print()
    try:
        print(pareto_text(points() if points is not None else run_pareto(journal, run_id)))
    except DspexLabError as error:  # a run that has not recorded its baseline yet
        print(f"Pareto front: none yet ({error})")


def _print_step_why(journal: Any, run_id: str, step: int) -> None:
    """Print why each candidate of an optimization step exists and what became of it, as ``run.why()`` says.

    Under each candidate's ``why`` line, its differences from the incumbent: on the step's
    mini-batch (the screen) and, when it was validated, on the valset with the paired test's interval.
    """
    from dspex_lab.errors import ProgramSpecError
    from dspex_lab.optimization import OptimizationResult
    from dspex_lab.trace.redaction import mask_text

    try:
        result = OptimizationResult.from_journal(journal, run_id)
    except ProgramSpecError as error:  # a custom module, registered by the user's code
        raise ProgramSpecError(
            f"why step {step} of run {run_id}: {error}; give the module that registers it with --import MODULE"
        ) from None
    row = next((row for row in journal.step_rows(run_id) if row["step"] == step), None)
    if row is None:
        return
    screens = {str(item.get("candidate")): item for item in row.get("screening") or []}
    validations = {str(item.get("candidate")): item for item in row.get("evaluations") or []}
    print(f"\nWhy, step {step}: {mask_text(str(row.get('detail') or row.get('status')))}")
    for candidate in result.candidates.loc[result.candidates["step"] == step, "candidate_id"]:
        print(f"- {mask_text(result.why(candidate))}")
        differences = []
        screen = screens.get(candidate)
        if screen is not None and screen.get("gain") is not None:
            differences.append(f"screen {_number(screen['gain'], '+.3f')} (n={screen.get('n')})")
        validation = validations.get(candidate)
        if validation is not None and validation.get("difference") is not None:
            low, high = validation.get("diff_ci_low"), validation.get("diff_ci_high")
            interval = f"95% CI {_number(low, '+.3f')} to {_number(high, '+.3f')}, " if None not in (low, high) else ""
            differences.append(
                f"validation {_number(validation['difference'], '+.3f')} "
                f"({interval}{validation.get('test')}, n={validation.get('n')})"
            )
        if differences:
            print(f"  differences from the incumbent: {'; '.join(differences)}")


# How a trial that stopped before its work ended is recorded (the engine's TrialTimeoutError/TrialCancelledError).
_GIVEN_UP = {"timeout": "timed out", "cancelled": "was cancelled"}
_GIVEN_UP_ERRORS = {"TrialTimeoutError": "timed out", "TrialCancelledError": "was cancelled"}


def _why_no_spans(journal: Any, experiment_id: str, trial_id: str | None) -> str:
    """Say why an experiment's trial (or, with ``trial_id`` None, the experiment) has no stored spans."""
    record = journal.experiment(experiment_id)  # an unknown experiment is reported as such
    config = record.get("config") or {}
    listing = f"dspex trace {experiment_id} --journal {journal.path}"
    if trial_id is None:
        if not config.get("trace"):
            return f"experiment {experiment_id!r} was not traced (its config has trace=false): it has no spans"
        return f"experiment {experiment_id!r} was traced but has no stored spans; its trials: {listing}"
    columns = ("trial_id", "status", "error_type", "error_stage", "error_message")
    rows = journal.trial_rows(experiment_id, columns=columns)
    trial = next((row for row in rows if row["trial_id"] == trial_id), None)
    if trial is None:
        return f"no trial {trial_id!r} in experiment {experiment_id!r}; list its trials with: {listing}"
    if not config.get("trace"):
        return (
            f"trial {trial_id!r} has no spans: experiment {experiment_id!r} was not traced (its config has "
            "trace=false); run it with trace=True, e.g. dx.evaluate(..., trace=True), to keep each trial's span tree"
        )
    failure = f"{trial.get('error_type')}: {str(trial.get('error_message') or '')[:200]}"
    given_up = _GIVEN_UP.get(str(trial.get("error_stage"))) or _GIVEN_UP_ERRORS.get(str(trial.get("error_type")))
    if trial.get("status") == "error" and given_up is not None:
        return f"trial {trial_id!r} has no spans: it {given_up} before any span was recorded ({failure})"
    if trial.get("status") == "error":
        return f"trial {trial_id!r} has no spans: it failed before any span was stored ({failure})"
    return (
        f"trial {trial_id!r} of traced experiment {experiment_id!r} finished ({trial.get('status')}) "
        "but no spans were stored for it (were they lost when the run was interrupted?)"
    )


def _parser() -> argparse.ArgumentParser:
    """Return the ``dspex`` parser: one subcommand group at a time, each with its handler."""
    parser = argparse.ArgumentParser(prog="dspex", description="Research environment for DSPy programs.")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_demo(commands)
    _add_evaluate(commands)
    _add_optimize(commands)
    _add_journal(commands)
    _add_packages(commands)
    _add_trace(commands)
    _add_dashboard(commands)
    return parser


def _add_demo(commands: Any) -> None:
    """Add ``dspex demo``: Predict against ChainOfThought on the lab LM."""
    demo = commands.add_parser("demo", help="evaluate Predict vs ChainOfThought on the lab LM and compare them")
    demo.add_argument("--journal", default=None, help=_JOURNAL_HELP)
    demo.add_argument("--lm", default="lab/small", help="LM to use (default: the offline lab/small)")
    demo.add_argument("-n", type=int, default=200, help="number of problems (default: 200)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--threads", type=int, default=8)
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(handler=_demo)


def _add_evaluate(commands: Any) -> None:
    """Add ``dspex evaluate``: a program spec on a dataset file."""
    evaluate = commands.add_parser("evaluate", help="evaluate a program spec (JSON) on a dataset file")
    evaluate.add_argument("spec", help="program spec JSON (from Program.to_json())")
    evaluate.add_argument("data", help="dataset: .jsonl, .csv or .parquet")
    evaluate.add_argument("--metric", required=True, help=_METRIC_HELP)
    evaluate.add_argument("--inputs", help=_INPUTS_HELP)
    evaluate.add_argument("--journal", default=None, help=_JOURNAL_HELP)
    evaluate.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE", help=_IMPORT_HELP)
    evaluate.add_argument("--lm", default=None, help="LM (default: DSPEX_LM or lab/small)")
    evaluate.add_argument("--threads", type=int, default=None)
    evaluate.add_argument("--repeats", type=int, default=1)
    evaluate.add_argument("--timeout", type=float, default=None)
    evaluate.add_argument("--resume", default=None, help="the evaluation to resume: its experiment id or name")
    evaluate.add_argument("--name", default=None)
    evaluate.add_argument(
        "--trace", action="store_true", help="record every trial's span tree (read it with dspex trace)"
    )
    evaluate.add_argument("--json", action="store_true", help="also print the summary as JSON")
    evaluate.add_argument("--quiet", action="store_true")
    evaluate.set_defaults(handler=_evaluate)


def _add_optimize(commands: Any) -> None:
    """Add ``dspex optimize``: a program spec optimized on a trainset, judged on a valset."""
    optimize = commands.add_parser("optimize", help="optimize a program spec (JSON) on a trainset, judged on a valset")
    optimize.add_argument("spec", help="program spec JSON (from Program.to_json())")
    optimize.add_argument("train", help="trainset: .jsonl, .csv or .parquet")
    optimize.add_argument("--val", required=True, help="valset (must not overlap the trainset)")
    optimize.add_argument(
        "--test", default=None, help="testset the optimizer never sees: the best is tested against the baseline on it"
    )
    optimize.add_argument(
        "--confirm-fraction",
        type=float,
        default=None,
        help="without --test, the part of the valset held out for that test (default 0.3; 0: claim nothing)",
    )
    optimize.add_argument("--metric", required=True, help=_METRIC_HELP)
    optimize.add_argument(
        "--guardrail",
        dest="guardrails",
        action="append",
        default=[],
        metavar="BOUND",
        help="accept a candidate only when this bound holds with confidence (repeatable): "
        f"{_GUARDRAIL_HELP}; a second metric's NAME as for --metric",
    )
    optimize.add_argument("--inputs", help=_INPUTS_HELP)
    optimize.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE", help=_IMPORT_HELP)
    optimize.add_argument(
        "--optimizer", choices=("simba-c", "optuna", "simba", "mipro", "gepa", "bootstrap"), default="simba-c"
    )
    optimize.add_argument("--max-steps", type=int, default=None, help="SIMBA-C steps (default 8)")
    optimize.add_argument("--bsize", type=int, default=None, help="SIMBA-C mini-batch size (default 32)")
    optimize.add_argument("--max-lm-calls", type=int, default=None, help="budget: LM calls for the whole run")
    optimize.add_argument("--max-usd", type=float, default=None, help="budget: dollars for the whole run")
    optimize.add_argument("--seed", type=int, default=0)
    optimize.add_argument("--journal", default=None, help=_JOURNAL_HELP)
    optimize.add_argument("--lm", default=None, help="LM (default: DSPEX_LM or lab/small)")
    optimize.add_argument("--threads", type=int, default=None)
    optimize.add_argument("--resume", default=None, help="the optimization run to resume: its id or name")
    optimize.add_argument("--name", default=None)
    optimize.add_argument("--trace", action="store_true", help="record the span tree of every evaluation's trials")
    optimize.add_argument("--output", "-o", default=None, help="write the best configuration's spec (JSON) here")
    optimize.add_argument("--json", action="store_true", help="also print the summary as JSON")
    optimize.add_argument("--quiet", action="store_true")
    optimize.set_defaults(handler=_optimize)


def _add_journal(commands: Any) -> None:
    """Add ``dspex journal list|trials|annotate|annotations|sql``: browse a journal and annotate its trials."""
    journal = commands.add_parser("journal", help="browse a journal")
    journal.add_argument("--journal", default=None, help=_JOURNAL_HELP)
    journal_commands = journal.add_subparsers(dest="journal_command", required=True)
    # --journal is accepted before or after the subcommand; SUPPRESS keeps an absent one from
    # overwriting a value given before it.
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--journal", default=argparse.SUPPRESS, help=_JOURNAL_HELP)
    listing = journal_commands.add_parser("list", help="list experiments", parents=[where])
    listing.add_argument(
        "--all",
        dest="nested",
        action="store_true",
        help="also list the experiments nested in others (an optimization's candidate evaluations)",
    )
    trials = journal_commands.add_parser("trials", help="list an experiment's trials", parents=[where])
    trials.add_argument("experiment", help="experiment id or name")
    trials.add_argument("--limit", type=int, default=50, help="show at most this many trials (default: 50)")
    trials.add_argument("--status", choices=("ok", "error"), default=None, help="only scored or only failed trials")
    trials.add_argument("--min-score", type=float, default=None, help="only trials scored at least this")
    trials.add_argument("--max-score", type=float, default=None, help="only trials scored at most this")
    trials.add_argument(
        "--sort",
        choices=("trial", "score", "error", "latency"),
        default="trial",
        help="trial (example order), score (lowest first), error (failed first) or latency (slowest first)",
    )
    annotate = journal_commands.add_parser(
        "annotate",
        help="record a verdict on a trial (a label, a note, a corrected gold), or withdraw it",
        parents=[where],
    )
    annotate.add_argument("experiment", help="experiment id or name")
    annotate.add_argument("trial", help="trial id, as `dspex journal trials` lists it (e.g. arith-0-3/r0)")
    annotate.add_argument("--label", default=None, help="a short tag such as 'wrong gold' (at most 100 characters)")
    annotate.add_argument("--note", default=None, help="free text (at most 4,000 characters)")
    annotate.add_argument(
        "--gold",
        default=None,
        help='the right gold: a JSON object (\'{"answer": "42"}\') or the one gold field\'s value',
    )
    annotate.add_argument("--author", default=None, help="who annotates (default: your user name)")
    annotate.add_argument(
        "--withdraw",
        action="store_true",
        help="withdraw the trial's annotation in force (kept in the history, as who withdrew it and when)",
    )
    annotations = journal_commands.add_parser(
        "annotations", help="list a run's annotations (each trial's in force)", parents=[where]
    )
    annotations.add_argument("experiment", help="experiment id or name")
    annotations.add_argument("--history", action="store_true", help="every annotation, superseded ones too")
    sql = journal_commands.add_parser("sql", help="run a SQL query over the journal", parents=[where])
    sql.add_argument("query")
    sql.add_argument("--limit", type=int, default=50)
    journal.set_defaults(handler=_journal)


def _add_packages(commands: Any) -> None:
    """Add ``dspex export``, ``verify`` and ``rerun``: an evaluation's reproducibility package."""
    export = commands.add_parser("export", help="write an evaluation's reproducibility package (a zip)")
    export.add_argument("experiment", help="the evaluation's experiment id or name")
    export.add_argument("path", help="the zip to write, or a folder to write dspex-<experiment>.zip into")
    export.add_argument("--journal", default=None, help=_JOURNAL_HELP)
    export.add_argument(
        "--include-data",
        choices=("auto", "yes", "no"),
        default="auto",
        help="include the examples: auto (when stored and at most 20,000 examples / 50 MB), yes, or no",
    )
    export.set_defaults(handler=_export)

    verify = commands.add_parser("verify", help="check a package's checksums, program spec and data fingerprint")
    verify.add_argument("package", help="the package zip")
    verify.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE", help=_IMPORT_HELP)
    verify.set_defaults(handler=_verify)

    rerun = commands.add_parser("rerun", help="re-run a package's evaluation and compare every trial's score")
    rerun.add_argument("package", help="the package zip")
    rerun.add_argument("--journal", default=None, help="journal for the re-run (default: a temporary one)")
    rerun.add_argument("--threads", type=int, default=None, help="worker threads (default: as recorded)")
    rerun.add_argument(
        "--model", default=None, help="the LM model to run; needed for a hosted model (a package cannot choose one)"
    )
    rerun.add_argument("--api-base", default=None, help="the endpoint for --model; needed when the package records one")
    rerun.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE", help=_IMPORT_HELP)
    rerun.add_argument("--metric", default=None, help=f"the metric, when it is not a lab metric: {_METRIC_HELP}")
    rerun.set_defaults(handler=_rerun)


def _add_trace(commands: Any) -> None:
    """Add ``dspex trace``: a trial's span tree, an experiment's trials or a run's steps."""
    trace = commands.add_parser("trace", help="print a trial's span tree (evaluations run with trace=True)")
    trace.add_argument("experiment", help="experiment id or name (an optimization run: its steps)")
    trace.add_argument(
        "trial",
        nargs="?",
        help="trial id such as 'arith-0-3/r0', or a run's step-N (with why each candidate exists); "
        "without it, list the trials",
    )
    trace.add_argument("--journal", default=None, help=_JOURNAL_HELP)
    trace.add_argument("--prompts", action="store_true", help="show LM messages and completions")
    trace.add_argument("--width", type=int, default=110)
    trace.add_argument("--limit", type=int, default=50)
    trace.add_argument("--otlp", metavar="PATH", help="write the trial's (or experiment's) spans as OTLP JSON")
    trace.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import this module first (repeatable): a run of a custom module needs it to say why",
    )
    trace.set_defaults(handler=_trace)


def _add_dashboard(commands: Any) -> None:
    """Add ``dspex dashboard``: the journal dashboard served until Ctrl-C."""
    dashboard = commands.add_parser("dashboard", help="serve the journal dashboard (Panel) until Ctrl-C")
    dashboard.add_argument("--journal", default=None, help=_JOURNAL_HELP)
    dashboard.add_argument("--port", type=int, default=0, help="port (default: a free one, printed)")
    dashboard.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    dashboard.add_argument("--no-browser", action="store_true", help="do not open a web browser")
    dashboard.add_argument(
        "--allow-remote", action="store_true", help="allow a non-loopback --host: anyone reaching it reads the journal"
    )
    dashboard.set_defaults(handler=_dashboard)


def _dashboard(arguments: argparse.Namespace) -> int:
    import time

    from dspex_lab.notebook import serve_dashboard

    server = serve_dashboard(
        arguments.journal,
        port=arguments.port,
        host=arguments.host,
        show=not arguments.no_browser,
        allow_remote=arguments.allow_remote,
    )
    print(f"dspex dashboard of {server.journal.location} at {server.url} (Ctrl-C stops it)", flush=True)
    try:
        while server.running:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``dspex`` command; return its exit code.

    0 when it did what was asked; 1 when it ran but measured nothing (every trial failed) or a
    package failed its check; 2 for an error (one line on stderr); 130 when interrupted; 141 when
    the reader of its output went away (``dspex journal list | head``), which ends it quietly.
    """
    from dspex_lab.errors import DspexLabError

    arguments = _parser().parse_args(argv)
    formatwarning = warnings.formatwarning
    warnings.formatwarning = _one_line_warning
    try:
        # The re-run's journal defaults to a temporary one on purpose: it must not mix with the original's.
        if getattr(arguments, "journal", "") is None and arguments.command != "rerun":
            from dspex_lab.config import load_settings

            arguments.journal = load_settings().journal
        status = int(arguments.handler(arguments))
        sys.stdout.flush()  # here, not at exit: a closed pipe is then caught below
        return status
    except BrokenPipeError:
        _silence_stdout()
        return _BROKEN_PIPE_STATUS
    except DspexLabError as error:
        print(f"dspex: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        print(f"dspex: interrupted: {interrupt}", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = formatwarning


def _one_line_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None
) -> str:
    """Format a warning as one line on stderr: ``dspex: warning: ...``, not Python's two with a source line.

    A warning of dspex_lab's own is its message; another package's is named by its category.
    """
    from dspex_lab.errors import DspexLabWarning

    named = "" if issubclass(category, DspexLabWarning) else f"{category.__name__}: "
    return f"dspex: warning: {named}{' '.join(str(message).split())}\n"


def _silence_stdout() -> None:
    """Point stdout at the null device, so what is still buffered cannot fail again at exit."""
    try:
        descriptor = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a file (a test's capture): nothing is flushed to a pipe at exit
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, descriptor)
    os.close(null)


if __name__ == "__main__":
    sys.exit(main())
