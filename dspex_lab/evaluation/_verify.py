"""Verify a reproducibility package: checksums, required files, program spec, data fingerprint, run settings.

A package is untrusted input, so it is opened through :class:`PackageArchive`
(member count, declared sizes, compression ratio and total checked before any
byte is decompressed; zip-slip names, repeated names and symbolic links refused),
its JSON is read so that no nesting or number escapes as a raw error, its program
spec through the bounded reader of :mod:`dspex_lab.program`, and its run settings are checked against
:data:`~dspex_lab.evaluation._package_format.RUN_LIMITS`. Problems are reported, not
raised.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dspex_lab.errors import DatasetError, DspexLabError, PackageError, bounded_repr
from dspex_lab.evaluation._package_format import (
    CHECKSUM_FILE,
    DATASET_MANIFEST_FILE,
    ENVIRONMENT_FILE,
    EXAMPLES_FILE,
    PROGRAM_FILE,
    REQUIRED_FILES,
    RUN_FILE,
    SUMMARY_FILE,
    TRIALS_FILE,
    PackageArchive,
    check_run_settings,
    read_examples,
    read_trials,
)
from dspex_lab.evaluation._package_reports import VerificationReport
from dspex_lab.program import Program

__all__ = ["verify_package"]

_CHECKSUM_LINE = re.compile(r"^([0-9a-f]{64})  (\S.*)$")


def verify_package(path: str | os.PathLike[str]) -> VerificationReport:
    """Check a package's files against its checksum manifest and its contents against each other.

    Checks that every file listed in ``MANIFEST.sha256`` is present with the same SHA-256, that
    no unlisted file was added, that the required files are there, that ``program.json`` parses
    as a :class:`~dspex_lab.Program` with the recorded fingerprint, and that the examples (when
    included) rebuild a dataset with the manifest's fingerprint. Before reading anything it checks
    the zip's member count, sizes and compression ratios (a zip bomb is refused at once), and it
    checks the run settings a re-run would take from ``run.json`` against their limits.

    Args:
        path: the package zip.

    Returns:
        The report; ``ok`` is False when any problem was found. Problems are reported, not raised.
    """
    package = Path(path)
    if not package.is_file():
        return VerificationReport(package, False, (f"{package}: no such file",), ())
    try:
        archive = PackageArchive(package)
    except PackageError as error:
        return VerificationReport(package, False, (str(error),), ())
    with archive:
        problems: list[str] = []
        checked = _check_checksums(archive, problems)
        contents = _PackageContents(archive, problems)
        _check_objects(contents, problems)
        _check_run(contents, problems)
        _check_program(contents, problems)
        _check_examples(contents, problems)
        _check_trials(contents, problems)
    return VerificationReport(package, not problems, tuple(problems), checked)


def _check_checksums(archive: PackageArchive, problems: list[str]) -> tuple[str, ...]:
    names = archive.names  # unique: PackageArchive refuses a repeated name
    if CHECKSUM_FILE not in names:
        problems.append(f"{CHECKSUM_FILE}: missing, so no file can be checked")
        return ()
    listed: dict[str, str] = {}
    try:
        text = archive.read(CHECKSUM_FILE).decode("utf-8", errors="replace")
    except PackageError as error:
        problems.append(str(error))
        return ()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        match = _CHECKSUM_LINE.match(line)
        if match is None:
            problems.append(f"{CHECKSUM_FILE}:{number}: not '<sha256>  <path>': {line[:80]!r}")
            continue
        digest, name = match.groups()
        if name in listed:
            problems.append(f"{CHECKSUM_FILE}:{number}: {name} is listed twice")
        listed[name] = digest
    present = set(names)
    checked = []
    for name, digest in listed.items():
        if name not in present:
            problems.append(f"{name}: listed in {CHECKSUM_FILE} but missing from the zip")
            continue
        checked.append(name)
        try:
            actual = archive.sha256(name)
        except PackageError as error:
            problems.append(str(error))
            continue
        if actual != digest:
            problems.append(f"{name}: altered (SHA-256 {actual[:16]}..., {CHECKSUM_FILE} says {digest[:16]}...)")
    for name in sorted(present - set(listed) - {CHECKSUM_FILE}):
        problems.append(f"{name}: in the zip but not listed in {CHECKSUM_FILE}")
    for name in REQUIRED_FILES:
        if name not in present and name not in listed:
            problems.append(f"{name}: required but absent from the zip and from {CHECKSUM_FILE}")
    return tuple(checked)


class _PackageContents:
    """Reads a package's JSON files once, recording a problem for any that do not parse."""

    def __init__(self, archive: PackageArchive, problems: list[str]) -> None:
        self.archive = archive
        self.problems = problems
        self.names = set(archive.names)
        self._cache: dict[str, Any] = {}

    def text(self, name: str) -> str | None:
        if name not in self.names:
            return None
        try:
            return self.archive.read(name).decode("utf-8")
        except PackageError as error:
            self.problems.append(str(error))
            return None
        except UnicodeDecodeError as error:
            self.problems.append(f"{name}: not UTF-8 text ({error})")
            return None

    def json(self, name: str) -> Any:
        if name not in self._cache:
            text = self.text(name)
            value = None
            if text is not None:
                try:
                    value = json.loads(text)
                except json.JSONDecodeError as error:
                    self.problems.append(f"{name}:{error.lineno}: not valid JSON ({error.msg})")
                except RecursionError:
                    self.problems.append(f"{name}: JSON nested too deeply to read")
                except ValueError as error:  # e.g. an integer past Python's digit limit
                    self.problems.append(f"{name}: JSON that cannot be read ({str(error)[:120]})")
            self._cache[name] = value
        return self._cache[name]


def _check_objects(contents: _PackageContents, problems: list[str]) -> None:
    for name in (RUN_FILE, DATASET_MANIFEST_FILE, SUMMARY_FILE, ENVIRONMENT_FILE):
        value = contents.json(name)
        if value is not None and not isinstance(value, dict):
            problems.append(f"{name}: a JSON {type(value).__name__}, expected an object")


def _check_run(contents: _PackageContents, problems: list[str]) -> None:
    run = contents.json(RUN_FILE)
    if isinstance(run, Mapping):
        problems.extend(check_run_settings(run))


def _check_program(contents: _PackageContents, problems: list[str]) -> None:
    text = contents.text(PROGRAM_FILE)
    if text is None:
        return
    try:
        program = Program.from_json(text, source=PROGRAM_FILE)
    except DspexLabError as error:
        run = contents.json(RUN_FILE)
        imports = run.get("imports") if isinstance(run, Mapping) and isinstance(run.get("imports"), Mapping) else {}
        needed = [module for module in imports.get("program") or [] if isinstance(module, str)]
        # The package says where its custom modules come from; importing them stays the user's choice.
        hint = f" (it was run with custom modules from {', '.join(needed)}: add --import for each)" if needed else ""
        problems.append(f"{PROGRAM_FILE}: does not parse as a dx.Program: {error}{hint}")
        return
    run = contents.json(RUN_FILE)
    recorded = run.get("program_fingerprint") if isinstance(run, Mapping) else None
    if recorded is not None and program.fingerprint != recorded:
        problems.append(
            f"{PROGRAM_FILE}: program fingerprint {program.fingerprint[:16]}... differs from "
            f"{_prefix(recorded)}... recorded in {RUN_FILE}"
        )


def _check_examples(contents: _PackageContents, problems: list[str]) -> None:
    manifest = contents.json(DATASET_MANIFEST_FILE)
    if not isinstance(manifest, Mapping):
        return
    if manifest.get("examples_file") is None:
        if EXAMPLES_FILE in contents.names:
            problems.append(f"{EXAMPLES_FILE}: present, but {DATASET_MANIFEST_FILE} says the data is not included")
        return
    text = contents.text(EXAMPLES_FILE)
    if text is None:
        if EXAMPLES_FILE not in contents.names:
            problems.append(f"{EXAMPLES_FILE}: named in {DATASET_MANIFEST_FILE} but absent")
        return
    recorded_sha256 = manifest.get("examples_sha256")
    actual_sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if recorded_sha256 != actual_sha256:
        problems.append(f"{EXAMPLES_FILE}: SHA-256 differs from examples_sha256 in {DATASET_MANIFEST_FILE}")
    try:
        dataset = read_examples(text, manifest)
    except DatasetError as error:
        problems.append(str(error))
        return
    if len(dataset) != manifest.get("n"):
        problems.append(
            f"{EXAMPLES_FILE}: {len(dataset)} examples, {DATASET_MANIFEST_FILE} says {bounded_repr(manifest.get('n'))}"
        )
    if dataset.fingerprint != manifest.get("fingerprint"):
        problems.append(
            f"{EXAMPLES_FILE}: the examples' fingerprint {dataset.fingerprint[:16]}... differs from "
            f"{_prefix(manifest.get('fingerprint'))}... in {DATASET_MANIFEST_FILE}"
        )


def _prefix(digest: Any) -> str:
    """Return the start of a recorded digest, which a hostile package may have replaced by anything."""
    return digest[:16] if isinstance(digest, str) else bounded_repr(digest, limit=24)


def _check_trials(contents: _PackageContents, problems: list[str]) -> None:
    text = contents.text(TRIALS_FILE)
    if text is None:
        return
    try:
        read_trials(text)
    except DatasetError as error:
        problems.append(str(error))
