"""IPython magics: ``%load_ext dspex_lab`` then ``%%dspex program``, ``%dspex evaluate`` and friends.

Every magic returns the same result object as the Python API, so Jupyter renders its rich HTML.
Errors surface as one short ``UsageError`` line, never a traceback wall.
"""

from __future__ import annotations

import argparse
import shlex
from typing import Any

import yaml
from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class

from dspex_lab.errors import DspexLabError

SUBCOMMANDS = ("program", "evaluate", "compare", "optimize", "trace", "sql", "config", "dashboard")
DASHBOARD_GAP = "the dspex dashboard (issue 11) does not exist yet; there is nothing to start"


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
        parser.add_argument("--data", required=True)
        parser.add_argument("--metric", required=True)
        parser.add_argument("--repeats", type=int, default=1)
        parser.add_argument("--trace", action="store_true")
        parser.add_argument("--name")
    elif command == "compare":
        parser.add_argument("a")
        parser.add_argument("b")
    elif command == "sql":
        parser.prog = "%%dspex sql"
    elif command == "dashboard":
        parser.add_argument("--port", type=int)
    return parser


def _line_of(body: str, key: str) -> int | None:
    """Return the 1-based body line where ``key:`` is defined, or None."""
    for number, line in enumerate(body.splitlines(), start=1):
        if line.strip().startswith(f"{key}:"):
            return number
    return None


@magics_class
class DspexMagics(Magics):
    """The ``%dspex`` line magic and ``%%dspex`` cell magic."""

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
        if command in ("optimize", "trace"):
            raise UsageError(f"%dspex {command} is not built yet; use the Python API or the dspex command line")
        args = _parser(command).parse_args(rest)
        try:
            return getattr(self, f"_{command}")(args, cell)
        except DspexLabError as error:
            raise UsageError(f"{type(error).__name__}: {error}") from None

    def _lookup(self, name: str, what: str) -> Any:
        namespace = self.shell.user_ns
        if name not in namespace:
            raise UsageError(f"%dspex: no {what} named {name!r} in the notebook namespace")
        return namespace[name]

    def _program(self, args: argparse.Namespace, cell: str) -> Any:
        from dspex_lab.program import Program
        from dspex_lab.program._variables import variable_from_dict

        try:
            data = yaml.safe_load(cell)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f"line {mark.line + 1}" if mark is not None else "the body"
            problem = getattr(error, "problem", None) or str(error)
            raise UsageError(f"ProgramSpecError: YAML error at {where} of the cell: {problem}") from None
        if not isinstance(data, dict):
            raise UsageError("ProgramSpecError: the cell body must be a YAML mapping with at least 'module'")
        # Each variable is checked alone first, so an error maps back to the line that defines it.
        for name, description in (data.get("variables") or {}).items():
            if not isinstance(description, dict):
                continue
            try:
                variable_from_dict(dict(description), name=str(name))
            except DspexLabError as error:
                line = _line_of(cell, str(name))
                where = f" (variable {name!r}, line {line} of the cell)" if line else f" (variable {name!r})"
                raise UsageError(f"{type(error).__name__}{where}: {error}") from None
        try:
            program = Program.from_dict(data)
        except DspexLabError as error:
            raise UsageError(f"{type(error).__name__}: {error}") from None
        self.shell.user_ns[args.name] = program
        return program

    def _evaluate(self, args: argparse.Namespace, cell: str | None) -> Any:
        import dspex_lab.metrics as metrics
        from dspex_lab.data import load_dataset
        from dspex_lab.evaluate._evaluate import evaluate

        program = self._lookup(args.program, "program")
        namespace = self.shell.user_ns
        data = namespace[args.data] if args.data in namespace else load_dataset(args.data)
        metric = self.shell.user_ns.get(args.metric)
        if not callable(metric):
            metric = getattr(metrics, args.metric, None)
        if not callable(metric):
            raise UsageError(
                f"%dspex evaluate: --metric {args.metric!r} is neither a callable in the namespace "
                "nor a dx.metrics name"
            )
        result = evaluate(
            program, data, metric=metric, name=args.name, repeats=args.repeats, trace=args.trace, progress=False
        )
        self.shell.user_ns["_dspex_last"] = result
        return result

    def _compare(self, args: argparse.Namespace, cell: str | None) -> Any:
        from dspex_lab.evaluate._compare import compare
        from dspex_lab.evaluate._load import load

        results = []
        for name in (args.a, args.b):
            value = self.shell.user_ns.get(name)
            results.append(value if value is not None else load(name))
        return compare(results[0], results[1])

    def _sql(self, args: argparse.Namespace, cell: str) -> Any:
        from dspex_lab.evaluate._context import current_context

        journal = current_context().journal
        if journal is None:
            raise UsageError("%%dspex sql: the current dx.Context has no journal to query")
        return journal.sql(cell)

    def _config(self, args: argparse.Namespace, cell: str | None) -> dict[str, Any]:
        from dspex_lab.evaluate._context import current_context

        context = current_context()
        journal = context.journal
        return {
            "lm": getattr(context.lm, "model", type(context.lm).__name__),
            "journal": str(getattr(journal, "path", journal)),
            "threads": context.threads,
        }

    def _dashboard(self, args: argparse.Namespace, cell: str | None) -> None:
        raise UsageError(DASHBOARD_GAP)


def register(ipython: Any) -> None:
    """Register the dspex magics on an IPython shell."""
    ipython.register_magics(DspexMagics)
