"""What verifying and re-running a reproducibility package found: frozen reports that print themselves."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RerunReport", "TrialDifference", "VerificationReport"]


@dataclass(frozen=True)
class VerificationReport:
    """What :func:`verify_package` found.

    Attributes:
        path: the package checked.
        ok: True when no problem was found.
        problems: one sentence per problem (a missing, extra or altered file, a spec that does
            not parse, data whose fingerprint differs from the manifest's).
        files_checked: the files whose checksums were compared, in manifest order.
    """

    path: Path
    ok: bool
    problems: tuple[str, ...]
    files_checked: tuple[str, ...]

    def __str__(self) -> str:
        verdict = "OK" if self.ok else f"FAILED ({len(self.problems)} problem{'s' if len(self.problems) != 1 else ''})"
        lines = [f"Package {self.path}: {verdict}", f"  {len(self.files_checked)} files checked against checksums"]
        lines += [f"  - {problem}" for problem in self.problems]
        return "\n".join(lines)


@dataclass(frozen=True)
class TrialDifference:
    """One trial whose status or score changed between the package and the re-run.

    Attributes:
        example_id: the example's id.
        repeat: the repeat (rollout) index.
        old_status: the recorded status (``ok`` or ``error``).
        new_status: the re-run's status.
        old_score: the recorded score (None for an error).
        new_score: the re-run's score.
        old_error_type: the recorded error type, if any.
        new_error_type: the re-run's error type, if any.
    """

    example_id: str
    repeat: int
    old_status: str
    new_status: str
    old_score: float | None
    new_score: float | None
    old_error_type: str | None = None
    new_error_type: str | None = None

    def __str__(self) -> str:
        def describe(status: str, score: float | None, error_type: str | None) -> str:
            if status == "ok":
                return f"ok {score!r}"
            return f"{status} ({error_type})" if error_type else status

        old = describe(self.old_status, self.old_score, self.old_error_type)
        new = describe(self.new_status, self.new_score, self.new_error_type)
        return f"{self.example_id}/r{self.repeat}: {old} -> {new}"


@dataclass(frozen=True)
class RerunReport:
    """How a re-run of a package compares with its recorded results, trial by trial.

    Attributes:
        path: the package.
        original_experiment_id: the experiment the package was exported from.
        experiment_id: the re-run's experiment id.
        journal: where the re-run is recorded (its journal's location: ``journal <path>``, or an
            in-memory journal when none was given).
        n_compared: trials present in both the package and the re-run, matched by (example id, repeat).
        n_identical: compared trials with the same status and the same score.
        differences: the compared trials that differ.
        only_in_package: trial ids recorded in the package that the re-run did not produce.
        only_in_rerun: trial ids the re-run produced that the package does not record.
        old_mean: the recorded mean score.
        new_mean: the re-run's mean score.
    """

    path: Path
    original_experiment_id: str
    experiment_id: str
    journal: str
    n_compared: int
    n_identical: int
    differences: tuple[TrialDifference, ...]
    only_in_package: tuple[str, ...]
    only_in_rerun: tuple[str, ...]
    old_mean: float | None
    new_mean: float | None

    @property
    def identical(self) -> bool:
        """True when every recorded trial was re-run and kept its status and score."""
        return (
            self.n_compared > 0
            and self.n_identical == self.n_compared
            and not self.only_in_package
            and not self.only_in_rerun
        )

    def __str__(self) -> str:
        verdict = "REPRODUCED" if self.identical else "NOT REPRODUCED"
        lines = [
            f"Re-run of {self.path} (experiment {self.original_experiment_id}): {verdict}",
            f"  trials compared: {self.n_compared}, identical: {self.n_identical}, differing: {len(self.differences)}",
            f"  mean score: recorded {format_number(self.old_mean)}, re-run {format_number(self.new_mean)}",
        ]
        if self.only_in_package:
            lines.append(f"  recorded but not re-run: {len(self.only_in_package)} ({preview(self.only_in_package)})")
        if self.only_in_rerun:
            lines.append(f"  re-run but not recorded: {len(self.only_in_rerun)} ({preview(self.only_in_rerun)})")
        lines += [f"  - {difference}" for difference in self.differences[:20]]
        if len(self.differences) > 20:
            lines.append(f"  ... and {len(self.differences) - 20} more differing trials")
        lines.append(f"  re-run experiment {self.experiment_id} in {self.journal}")
        return "\n".join(lines)


def format_number(value: float | None) -> str:
    """Return a score with four decimals, or a dash for none."""
    return "—" if value is None else f"{value:.4f}"


def preview(names: Sequence[str]) -> str:
    """Return the first five names joined, with an ellipsis when there are more."""
    shown = ", ".join(names[:5])
    return shown + (", ..." if len(names) > 5 else "")
