"""Errors raised by dspex_lab, as one tree.

Every error the package raises on purpose derives from :class:`DspexLabError`,
so ``except dx.errors.DspexLabError`` catches all of them and nothing else::

    DspexLabError
    ├── ProgramSpecError        a program spec that cannot be built or parsed
    │   └── ModuleNotAllowedError   a module path outside the registry / allow-list
    ├── VariableError           a variable value outside its type or constraints
    ├── DatasetError            a dataset that cannot be read (file and line)
    ├── ExecutionError          an executor or trial runner failure (not a trial's own)
    │   ├── TrialTimeoutError       a trial that ran past its timeout
    │   ├── TrialCancelledError     a trial stopped before its next LM call (run stopped or interrupted)
    │   ├── InvalidScoreError       a metric that returned NaN, ±inf or a non-number
    │   └── PackageError            a reproducibility package that fails verification
    ├── JournalError            a journal that cannot be opened, read or written
    ├── OptimizerError          an optimizer that cannot run
    └── MissingDependencyError  an optional extra is not installed (also ImportError)

Warnings form a second, smaller tree::

    DspexLabWarning             budget thresholds, degraded features, metric failures, runs that all failed
    └── UnderpoweredWarning     a dataset too small to detect the gains a run is looking for

A failing *trial* is not an exception: it is recorded as data with its error
type and message (see :class:`dspex_lab.engine.TrialResult`).
"""

from __future__ import annotations

import reprlib

__all__ = [
    "DatasetError",
    "DspexLabError",
    "DspexLabWarning",
    "ExecutionError",
    "InvalidScoreError",
    "JournalError",
    "MissingDependencyError",
    "ModuleNotAllowedError",
    "OptimizerError",
    "PackageError",
    "ProgramSpecError",
    "TrialCancelledError",
    "TrialTimeoutError",
    "UnderpoweredWarning",
    "VariableError",
]

# An error message shows an offending value, which may come from someone else's spec: never all of it.
# bounded_repr (below) is how every layer renders one; it is not an error, so __all__ (the tree) omits it.
_SHOWN_CHARACTERS = 80
_SHOWN_INTEGER_BITS = 256
_ALLOWED_CHARACTERS = 400


class _BoundedRepr(reprlib.Repr):
    """reprlib's size-limited repr, made safe for values no repr should fully expand."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.maxlevel = 3
        # Room for the quotes and brackets around a long string or number, so one value reads whole up to limit.
        self.maxstring = self.maxother = self.maxlong = max(limit - 20, 12)

    def repr_int(self, value: int, level: int) -> str:
        # repr() of an int past Python's digit limit raises ValueError, and a long one costs quadratic time.
        if value.bit_length() > _SHOWN_INTEGER_BITS:
            return f"<an integer of {value.bit_length():,} bits>"
        return super().repr_int(value, level)

    def repr_instance(self, value: object, level: int) -> str:
        try:
            return super().repr_instance(value, level)
        except Exception:
            return f"<{type(value).__name__} object>"


def bounded_repr(value: object, *, limit: int = _SHOWN_CHARACTERS) -> str:
    """Return a repr of ``value`` of at most ``limit`` characters, without building the full repr first.

    Nesting, long strings, long containers and huge integers are elided, so an error message
    never expands a large (or shared, or self-referencing) structure.

    Examples:
        >>> bounded_repr(["x" * 1000, [[[1]]]])
        "['xxxxxxxxxxxxxxxxxxxxxxxxxxx...xxxxxxxxxxxxxxxxxxxxxxxxxxxx', [[[...]]]]"
        >>> bounded_repr(10**5000)
        '<an integer of 16,610 bits>'
    """
    try:
        shown = _BoundedRepr(limit).repr(value)
    except Exception:
        shown = f"<{type(value).__name__} object>"
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


class DspexLabError(Exception):
    """Base of every error dspex_lab raises on purpose."""


class ProgramSpecError(DspexLabError):
    """A program spec that cannot be parsed, validated or hydrated."""


class ModuleNotAllowedError(ProgramSpecError):
    """A module path that is neither registered nor under an allowed prefix.

    Attributes:
        module: the refused module path.
        allowed_prefixes: the prefixes that would have been accepted.
    """

    def __init__(self, module: str, allowed_prefixes: tuple[str, ...]) -> None:
        self.module = module
        self.allowed_prefixes = allowed_prefixes
        super().__init__(
            f"module {module!r} is not allowed: register it with @dx.register({module.rsplit('.', 1)[-1]!r}) "
            f"or use a module under one of the allowed prefixes {list(allowed_prefixes)}"
        )


class VariableError(DspexLabError, ValueError):
    """A variable value that violates its type, range or a cross-variable constraint.

    Attributes:
        variable: the variable's name (or names, joined by ", ", for a constraint).
        value: the offending value.
        allowed: a human description of what is allowed.
    """

    def __init__(self, variable: str, value: object, allowed: str, *, detail: str | None = None) -> None:
        self.variable = variable
        self.value = value
        self.allowed = allowed
        described = allowed if len(allowed) <= _ALLOWED_CHARACTERS else allowed[:_ALLOWED_CHARACTERS] + "..."
        message = f"variable {bounded_repr(variable)}: {bounded_repr(value)} is not allowed; allowed: {described}"
        if detail:
            message += f" ({detail})"
        super().__init__(message)


class DatasetError(DspexLabError, ValueError):
    """A dataset that cannot be read.

    Attributes:
        path: the file, when the data came from one.
        line: the 1-based line (JSONL/CSV) or row number, when known.
    """

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        self.path = path
        self.line = line
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)


class ExecutionError(DspexLabError):
    """An executor or trial-runner failure that is not a trial's own error."""


class TrialTimeoutError(ExecutionError, TimeoutError):
    """A trial that did not finish within its timeout."""


class TrialCancelledError(ExecutionError):
    """A trial stopped by its cancel token before an LM call (its run stopped, or it timed out)."""


class InvalidScoreError(ExecutionError, ValueError):
    """A metric returned a value that is not a finite number (NaN, ±inf, a string, ...)."""


class PackageError(ExecutionError):
    """A reproducibility package that fails verification or cannot be re-run."""


class JournalError(DspexLabError):
    """A journal that cannot be opened, migrated, read or written."""


class OptimizerError(DspexLabError):
    """An optimizer that cannot run with the given arguments."""


class MissingDependencyError(DspexLabError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""

    def __init__(self, package: str, extra: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(f"{package} is required for this feature: pip install 'dspex_lab[{extra}]'")


class DspexLabWarning(UserWarning):
    """Base of the warnings dspex_lab emits (budget thresholds, degraded features)."""


class UnderpoweredWarning(DspexLabWarning):
    """A dataset too small to detect the gains a run or a planned comparison is looking for.

    Given before the spending starts (``dx.optimize``, an evaluation a registered hypothesis
    names) or with a comparison that found nothing, with the smallest detectable gain and the
    number of examples that would detect the gain of interest.
    """
