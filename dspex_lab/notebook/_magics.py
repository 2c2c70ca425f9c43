"""IPython magics: ``%load_ext dspex_lab`` then ``%%dspex program``, ``%dspex evaluate`` and friends.

Every magic returns the same result object as the Python API, so Jupyter renders its rich HTML.
Nothing a user does ends in a traceback wall: a mistake is one short ``UsageError`` line, and a run
stopped with Cancel or the kernel's stop button prints one line, binds its partial result to ``_``
(and to ``--out NAME``) and says how to continue it with ``--resume``. Experiments are named by id or
by name (:func:`~dspex_lab.session.resolve_experiment`); ``%dspex config key=value ...`` sets the
session's LM, journal and threads, so no magic needs a ``with dx.Context`` block.
"""

from __future__ import annotations

import argparse
import keyword
import shlex
from pathlib import Path
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class

from dspex_lab.errors import DspexLabError, VariableError, bounded_repr
from dspex_lab.session import RunInterrupted, current_context, resolve_experiment

SUBCOMMANDS = ("program", "evaluate", "compare", "optimize", "trace", "sql", "config", "dashboard")
# A program cell is typed or pasted, not a data file: bounded before YAML parses it (then within
# dspex_lab.program's YAML bounds: no anchors or aliases, limited nesting and size).
MAX_PROGRAM_CELL = 256 * 1024
PROGRAM_CELL = "%%dspex program cell"
OPTIMIZERS = ("simba-c", "optuna", "simba", "mipro", "gepa", "bootstrap")
# What `%dspex config key=value` sets (Context.configure's parameters).
CONFIG_KEYS = ("lm", "journal", "threads", "executor")


class _Parser(argparse.ArgumentParser):
    """An argparse parser that raises UsageError with the usage line instead of exiting the kernel."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message}\nusage: {self.format_usage().removeprefix('usage: ').strip()}")


def _parser(command: str) -> _Parser:
    parser = _Parser(prog=f"%dspex {command}", add_help=False)
    if command == "program":
        parser.prog = "%%dspex program"
        parser.add_argument("name")
    elif command == "evaluate":
        parser.add_argument("program")
        parser.add_argument("--data", required=True, help="a notebook variable, or a JSONL/JSON/CSV/Parquet file")
        parser.add_argument("--metric", required=True)
        _add_run_options(parser)
        parser.add_argument("--repeats", type=int, default=1)
        parser.add_argument("--trace", action="store_true")
        parser.add_argument("--no-progress", action="store_true", help="no progress display")
    elif command == "compare":
        parser.add_argument("a")
        parser.add_argument("b")
    elif command == "optimize":
        parser.add_argument("program")
        parser.add_argument("--train", required=True)
        parser.add_argument("--val", required=True)
        parser.add_argument("--metric", required=True)
        parser.add_argument(
            "--guardrail",
            dest="guardrails",
            action="append",
            default=[],
            metavar="BOUND",
            help="a bound every accepted candidate meets with confidence (repeatable), as dspex optimize takes it",
        )
        parser.add_argument("--optimizer", default="simba-c", choices=OPTIMIZERS)
        parser.add_argument("--max-steps", type=int, help="SIMBA-C steps at most")
        parser.add_argument("--bsize", type=int, help="SIMBA-C mini-batch size")
        parser.add_argument("--max-lm-calls", type=int)
        parser.add_argument("--max-usd", type=float)
        parser.add_argument("--seed", type=int, default=0)
        _add_run_options(parser)
        parser.add_argument("--live", action="store_true", help="draw the convergence plot live")
        parser.add_argument("--no-progress", action="store_true", help="no progress display")
    elif command == "trace":
        parser.add_argument("experiment")
        parser.add_argument("trial", nargs="?")
        parser.add_argument("--text", action="store_true", help="print the span tree as text")
        parser.add_argument("--prompts", action="store_true", help="with --text: show LM messages")
    elif command == "sql":
        parser.prog = "%%dspex sql"
    elif command == "config":
        parser.add_argument("settings", nargs="*", metavar="KEY=VALUE", help=f"keys: {', '.join(CONFIG_KEYS)}")
    elif command == "dashboard":
        parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
        parser.add_argument("--stop", action="store_true", help="stop the dashboard this kernel started")
    return parser


def _add_run_options(parser: _Parser) -> None:
    """Add what evaluate and optimize share: file inputs, the experiment's name, where to bind, what to resume."""
    parser.add_argument("--inputs", help="a data file's input fields, comma-separated (default: the signature's)")
    parser.add_argument("--name", help="the experiment's name")
    parser.add_argument("--out", help="also bind the result (a partial one when interrupted) to this variable")
    parser.add_argument("--resume", help="continue an interrupted run (its id or name); no trial runs twice")


def _line_of(body: str, *path: str) -> int | None:
    """Return the 1-based body line of the node at ``path`` (mapping keys), or of its deepest existing parent.

    ``_line_of(body, "variables", "temperature", "value")`` is the line of the temperature's value; without
    a ``value`` key, the line where ``temperature:`` is defined. None when the body has no such mapping.
    """
    import yaml

    from dspex_lab.program import compose_yaml_spec

    try:
        node = compose_yaml_spec(body, source=PROGRAM_CELL)
    except DspexLabError:
        return None
    line = None
    for key in path:
        if not isinstance(node, yaml.MappingNode):
            break
        match = next((pair for pair in node.value if getattr(pair[0], "value", None) == key), None)
        if match is None:
            break
        line = match[0].start_mark.line + 1
        node = match[1]
    return line


@magics_class
class DspexMagics(Magics):
    """The ``%dspex`` line magic and ``%%dspex`` cell magic."""

    _dashboard_server: Any = None  # the dashboard this kernel started (one at a time)

    @line_cell_magic
    def dspex(self, line: str, cell: str | None = None) -> Any:
        """Dispatch ``%dspex SUBCOMMAND ...`` (or the cell form) to its handler."""
        try:
            words = shlex.split(line)
        except ValueError as error:
            raise UsageError(f"%dspex: cannot parse the line: {error}") from None
        if not words or words[0] not in SUBCOMMANDS:
            given = repr(words[0]) if words else "nothing"
            raise UsageError(f"%dspex: unknown subcommand {given}; expected one of {', '.join(SUBCOMMANDS)}")
        command, rest = words[0], words[1:]
        if command in ("program", "sql") and cell is None:
            raise UsageError(f"%dspex {command} is a cell magic: write %%dspex {command} on the cell's first line")
        args = _parser(command).parse_args(rest)
        try:
            return getattr(self, f"_{command}")(args, cell)
        except DspexLabError as error:
            raise UsageError(f"{type(error).__name__}: {error}") from None
        except RunInterrupted as stop:
            self._interrupted(stop, args, words)
        except KeyboardInterrupt as stop:
            # Stopped before a run began or after it ended (loading data, a query): nothing to bind or resume.
            print(f"%dspex {command} interrupted{f': {stop}' if str(stop) else ''}")
        return None

    def _interrupted(self, stop: RunInterrupted, args: argparse.Namespace, words: list[str]) -> None:
        """Print one line for a stopped run, bind its partial result to ``_`` (and ``--out``), say how to resume."""
        result = stop.result if stop.result is not None else _read_back(stop)
        if result is None:
            unit = "step" if stop.kind == "optimization" else "trial"
            bound = f"no {unit} finished, so there is no partial result"
        else:
            self._bind(result, args.out)
            self._bind_underscore(result)
            done = f"{result.n_trials} trials" if stop.kind == "evaluation" else f"{len(result.steps)} steps"
            bound = f"{done} kept; the partial result is in _" + (f" and {args.out}" if args.out else "")
        again = [word for word in words if not word.startswith("--resume=")]
        if "--resume" in again:
            at = again.index("--resume")
            del again[at : at + 2]
        resume = shlex.join([*again, "--resume", stop.experiment_id])
        print(f"{stop.kind} {stop.experiment_id} interrupted: {bound}; continue it with %dspex {resume}")

    def _bind_underscore(self, result: Any) -> None:
        """Make ``result`` the last output ``_`` (``_`` moves to ``__``, ``__`` to ``___``), as if the cell showed it.

        Set through the display hook's own record, which IPython compares ``_`` with before it updates it
        again: a bare assignment would read as the user's own ``_`` and stop later outputs reaching it.
        """
        hook = self.shell.displayhook
        hook.___, hook.__, hook._ = getattr(hook, "__", None), getattr(hook, "_", None), result
        self.shell.push({"_": hook._, "__": hook.__, "___": hook.___}, interactive=False)

    def _bind(self, result: Any, out: str | None) -> None:
        """Bind a run's result where the notebook finds it: ``_dspex_last``, and ``--out NAME`` when given."""
        self.shell.user_ns["_dspex_last"] = result
        if out is not None:
            self.shell.user_ns[out] = result

    def _lookup(self, name: str, what: str) -> Any:
        namespace = self.shell.user_ns
        if name not in namespace:
            raise UsageError(f"%dspex: no {what} named {name!r} in the notebook namespace")
        return namespace[name]

    def _program(self, args: argparse.Namespace, cell: str) -> Any:
        from dspex_lab.program import Program, parse_yaml_spec, variable_from_dict

        if len(cell) > MAX_PROGRAM_CELL:
            raise UsageError(
                f"ProgramSpecError: the cell body has {len(cell):,} characters; a program spec has at most "
                f"{MAX_PROGRAM_CELL:,} (put long instructions or demos in a file and load them in Python)"
            )
        try:
            data = parse_yaml_spec(cell, source=PROGRAM_CELL)
        except DspexLabError as error:
            raise UsageError(f"{type(error).__name__}: {error}") from None
        if not isinstance(data, dict):
            raise UsageError("ProgramSpecError: the cell body must be a YAML mapping with at least 'module'")
        # Each variable is checked alone first, so an error maps back to the line that defines it.
        variables = data.get("variables")
        for name, description in variables.items() if isinstance(variables, dict) else ():
            if not isinstance(description, dict):
                continue
            try:
                variable_from_dict(dict(description), name=str(name))
            except DspexLabError as error:
                # A bad value points at its `value:` line; anything else at the variable's own line.
                field = "value" if isinstance(error, VariableError) else ""
                line = _line_of(cell, "variables", str(name), field)
                shown = bounded_repr(name)
                where = f" (variable {shown}, line {line} of the cell)" if line else f" (variable {shown})"
                raise UsageError(f"{type(error).__name__}{where}: {error}") from None
        try:
            program = Program.from_dict(data)
        except DspexLabError as error:
            raise UsageError(f"{type(error).__name__}: {error}") from None
        self.shell.user_ns[args.name] = program
        return program

    def _data(self, name: str, args: argparse.Namespace, program: Any, option: str = "--data") -> Any:
        """A dataset from the namespace by name, else read from the file of that name.

        A file's input fields are ``--inputs``, else the inputs of the program's signature.
        """
        from dspex_lab.data import load_dataset

        namespace = self.shell.user_ns
        if name in namespace:
            return namespace[name]
        if not Path(name).exists() and name.isidentifier():
            raise UsageError(f"%dspex: {option} {name!r} is neither a notebook variable nor a file")
        return load_dataset(name, inputs=_inputs(args.inputs, program, name))

    def _metric(self, name: str, command: str, option: str = "--metric") -> Any:
        """A callable from the namespace by name, else the dx.metrics function of that name (errors name ``option``)."""
        import dspex_lab.metrics as metrics

        metric = self.shell.user_ns.get(name)
        if not callable(metric) and name in metrics.NAMES:
            metric = metrics.get(name)
        if not callable(metric):
            known = ", ".join(metrics.NAMES)
            raise UsageError(
                f"%dspex {command}: {option} {name!r} is neither a callable in the namespace nor a dx.metrics "
                f"name ({known})"
            )
        return metric

    def _evaluate(self, args: argparse.Namespace, cell: str | None) -> Any:
        from dspex_lab.evaluation import evaluate

        program = self._lookup(args.program, "program")
        _check_out(args.out)
        data = self._data(args.data, args, program)
        metric = self._metric(args.metric, "evaluate")
        result = evaluate(
            program,
            data,
            metric=metric,
            name=args.name,
            repeats=args.repeats,
            trace=args.trace,
            progress=not args.no_progress,
            resume=self._resumed(args.resume, "evaluation"),
        )
        self._bind(result, args.out)
        return result

    def _resumed(self, experiment: str | None, kind: str) -> str | None:
        """The id ``--resume`` names (an id or a name, see resolve_experiment), or None without it."""
        if experiment is None:
            return None
        return resolve_experiment(current_context().journal, experiment, kinds=(kind,))

    def _experiment_id(self, name: str) -> str:
        """The id of the experiment ``name`` names: a result in the namespace, else an experiment id or name."""
        value = self.shell.user_ns.get(name)
        for field in ("experiment_id", "run_id"):  # an EvaluationResult, an OptimizationResult
            if isinstance(getattr(value, field, None), str):
                return str(getattr(value, field))
        return resolve_experiment(current_context().journal, name)

    def _compare(self, args: argparse.Namespace, cell: str | None) -> Any:
        from dspex_lab.evaluation import EvaluationResult, compare, load

        results = []
        for name in (args.a, args.b):
            value = self.shell.user_ns.get(name)
            # Not a result in the notebook: an evaluation in the journal, by id or by name.
            results.append(value if isinstance(value, EvaluationResult) else load(name))
        return compare(results[0], results[1])

    def _optimize(self, args: argparse.Namespace, cell: str | None) -> Any:
        from dspex_lab.engine import Budget
        from dspex_lab.optimization import SimbaC, optimize

        program = self._lookup(args.program, "program")
        _check_out(args.out)
        train = self._data(args.train, args, program, "--train")
        val = self._data(args.val, args, program, "--val")
        metric = self._metric(args.metric, "optimize")
        objective = self._objective(args.guardrails)
        simba_options = {key: value for key, value in (("max_steps", args.max_steps), ("bsize", args.bsize)) if value}
        if simba_options and args.optimizer != "simba-c":
            raise UsageError(f"%dspex optimize: --max-steps and --bsize set SIMBA-C, not --optimizer {args.optimizer}")
        optimizer: Any = SimbaC(**simba_options) if simba_options else args.optimizer
        budget = None
        if args.max_lm_calls is not None or args.max_usd is not None:
            budget = Budget(lm_calls=args.max_lm_calls, usd=args.max_usd)
        subscribers = []
        if args.live:
            from dspex_lab.notebook._widgets_convergence import LiveConvergenceWidget

            # It displays itself at the first step, below the run's progress and its Cancel button.
            subscribers.append(LiveConvergenceWidget())
        result = optimize(
            program,
            train,
            val,
            metric=metric,
            optimizer=optimizer,
            objective=objective,
            budget=budget,
            seed=args.seed,
            name=args.name,
            resume=self._resumed(args.resume, "optimization"),
            subscribers=subscribers,
            progress=not args.no_progress,
        )
        self._bind(result, args.out)
        return result

    def _objective(self, texts: list[str]) -> Any:
        """The objective ``--guardrail`` words say (None without one), read as ``dspex optimize`` reads them."""
        from dspex_lab.optimization import parse_objective

        def metric(name: str) -> Any:
            return self._metric(name, "optimize", option="--guardrail's metric")

        try:
            return parse_objective(texts, option="--guardrail", metric=metric)
        except DspexLabError as error:
            raise UsageError(f"%dspex optimize: {error}") from None

    def _trace(self, args: argparse.Namespace, cell: str | None) -> Any:
        """A trial's span tree (the TraceViewer widget, or text), or the list of an experiment's trials or steps."""
        journal = current_context().journal
        experiment = self._experiment_id(args.experiment)
        record = journal.experiment(experiment)
        if record.get("kind") == "optimization" and args.trial is None:
            import pandas as pd

            rows = journal.step_rows(experiment)
            return pd.DataFrame(
                [{"trace": f"step-{row['step']}", "status": row["status"], "decision": row["detail"]} for row in rows]
            )
        if args.text or record.get("kind") == "optimization":
            if args.trial is None:
                raise UsageError(f"%dspex trace {args.experiment} --text needs a TRIAL (or drop --text for the viewer)")
            if not journal.span_rows(experiment, args.trial):
                raise UsageError(f"trial {args.trial!r} of {experiment!r} has no stored spans (was it traced?)")
            print(journal.trace(experiment, args.trial).to_text(show_prompts=args.prompts))
            return None
        from dspex_lab.notebook._trace_viewer import TraceViewer

        return TraceViewer(journal, experiment, trial_id=args.trial)

    def _sql(self, args: argparse.Namespace, cell: str) -> Any:
        return current_context().journal.sql(cell)

    def _config(self, args: argparse.Namespace, cell: str | None) -> dict[str, Any]:
        """Set the session's LM, journal, threads or executor from ``key=value`` words, then show the settings."""
        from dspex_lab.trace.redaction import mask_text

        context = current_context()
        if args.settings:
            context.configure(**self._config_values(args.settings))
        # What is shown is masked like anything persisted: a URL password or a key pasted into a model name
        # or path never reaches the notebook's output (which is saved with the notebook).
        settings = {
            "lm": getattr(context.lm, "model", type(context.lm).__name__),
            "api_base": getattr(context.lm, "kwargs", {}).get("api_base"),
            "journal": context.journal.location,
            "threads": context.threads,
            "executor": repr(context.executor),
        }
        return {key: mask_text(str(value)) for key, value in settings.items() if value is not None}

    def _config_values(self, words: list[str]) -> dict[str, Any]:
        """Read ``key=value`` words into Context.configure's arguments.

        ``lm=NAME`` takes a ``dspy.LM`` held by that notebook variable, else a model string;
        ``journal=memory`` a new in-memory journal, else a path; ``threads`` an integer.
        """
        import dspy

        values: dict[str, Any] = {}
        for word in words:
            key, equals, value = word.partition("=")
            if not equals or key not in CONFIG_KEYS or not value:
                raise UsageError(f"%dspex config: {word!r} is not KEY=VALUE with a key of {', '.join(CONFIG_KEYS)}")
            values[key] = value
        held = self.shell.user_ns.get(values.get("lm", ""))
        if isinstance(held, dspy.BaseLM):
            values["lm"] = held
        if values.get("journal") == "memory":
            values["journal"] = False
        if "threads" in values:
            try:
                values["threads"] = int(values["threads"])
            except ValueError:
                raise UsageError(f"%dspex config: threads={values['threads']!r} is not an integer") from None
        return values

    def _dashboard(self, args: argparse.Namespace, cell: str | None) -> Any:
        """Start the journal dashboard on 127.0.0.1 from a thread of this kernel, or stop it."""
        from IPython.display import HTML, display

        running = self._dashboard_server
        if args.stop:
            if running is None or not running.running:
                raise UsageError("%dspex dashboard --stop: no dashboard started by this kernel is running")
            running.stop()
            print(f"stopped the dashboard at {running.url}")
            return None
        if running is not None and running.running:
            if args.port in (0, running.port):
                display(HTML(_dashboard_link(running, "already running")))
                return running
            raise UsageError(
                f"%dspex dashboard: one is already running at {running.url}; stop it with %dspex dashboard --stop"
            )
        from dspex_lab.notebook._dashboard import serve_dashboard

        self._dashboard_server = serve_dashboard(current_context().journal, port=args.port)
        display(HTML(_dashboard_link(self._dashboard_server, "started")))
        return self._dashboard_server


def _inputs(given: str | None, program: Any, path: str) -> list[str]:
    """A data file's input fields: ``--inputs a,b``, else the inputs of the program's signature."""
    if given:
        return [field.strip() for field in given.split(",") if field.strip()]
    signature = getattr(program, "signature", None)
    if isinstance(signature, str):
        import dspy

        return list(dspy.Signature(signature).input_fields)
    raise UsageError(f"%dspex: say which fields of {path} are inputs with --inputs question[,context]")


def _check_out(out: str | None) -> None:
    if out is not None and (not out.isidentifier() or keyword.iskeyword(out)):
        raise UsageError(f"%dspex: --out {out!r} is not a Python variable name")


def _read_back(stop: RunInterrupted) -> Any:
    """The partial result of a stopped run, read from the journal; None when it holds none (no finished step)."""
    journal = current_context().journal
    try:
        if stop.kind == "optimization":
            from dspex_lab.optimization import OptimizationResult

            return OptimizationResult.from_journal(journal, stop.experiment_id)
        from dspex_lab.evaluation import load

        return load(stop.experiment_id, journal=journal)
    except DspexLabError:
        return None


def _dashboard_link(server: Any, state: str) -> str:
    from html import escape

    url = escape(server.url)
    store = server.journal
    # A file by its name only: a saved notebook keeps no home paths.
    journal = f"journal {Path(store.path).name}" if store.durable else store.location
    return f'dspex dashboard {state}: <a href="{url}" target="_blank">{url}</a> ({escape(journal)})'


def register_magics(ipython: Any) -> None:
    """Register the dspex magics on an IPython shell."""
    ipython.register_magics(DspexMagics)
