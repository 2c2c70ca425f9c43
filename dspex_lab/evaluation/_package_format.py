"""The reproducibility package format: its layout, its limits, and bounded reading of an untrusted zip.

A package is a zip that holds everything needed to run an evaluation again
somewhere else. Layout::

    program.json              the dx.Program spec (variable values included); Program.from_json reads it
    dataset/manifest.json     name, n, inputs, fields, fingerprint, SHA-256 of the data file and of the source
    dataset/examples.jsonl    one {"id": ..., **fields} per line (left out for large or unstored data)
    run.json                  metric, repeats, timeout, retries, threads, LM model and state, seeds
    environment.json          versions recorded at run time, and the installed packages at export time
    results/trials.csv        one row per trial: example id, repeat, status, score, error type, ...
    results/summary.json      the recorded summary (mean, CI, errors, tokens, cost)
    README.md                 what the package is and how to check and re-run it
    MANIFEST.sha256           "<sha256>  <path>" for every file above

The checksums detect accidental damage and edits made without updating the
manifest; they are not a signature, so they do not prove who wrote a package.
A package is therefore read as untrusted data: :class:`PackageArchive` checks
the member count, each member's declared size and compression ratio and the
total before reading anything, and reads with a bound, so a zip bomb is refused
at once; it refuses member names that could escape a folder if the zip were
extracted (zip-slip: absolute paths, ``..``, backslashes, drive letters, control
characters), repeated names and symbolic links; the run settings a re-run takes
from a package are bounded (:data:`RUN_LIMITS`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
import stat
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from dspex_lab.data import Dataset
from dspex_lab.errors import DatasetError, PackageError, bounded_repr

__all__ = [
    "CHECKSUM_FILE",
    "DATASET_MANIFEST_FILE",
    "ENVIRONMENT_FILE",
    "EXAMPLES_FILE",
    "MAX_COMPRESSION_RATIO",
    "MAX_DATA_MEMBER_BYTES",
    "MAX_MEMBERS",
    "MAX_METADATA_MEMBER_BYTES",
    "MAX_TOTAL_BYTES",
    "PACKAGE_FORMAT",
    "PROGRAM_FILE",
    "README_FILE",
    "REQUIRED_FILES",
    "RUN_FILE",
    "RUN_LIMITS",
    "SUMMARY_FILE",
    "TRIALS_FILE",
    "PackageArchive",
    "check_run_settings",
]

PACKAGE_FORMAT = "dspex_lab.package/1"

PROGRAM_FILE = "program.json"
DATASET_MANIFEST_FILE = "dataset/manifest.json"
EXAMPLES_FILE = "dataset/examples.jsonl"
RUN_FILE = "run.json"
ENVIRONMENT_FILE = "environment.json"
TRIALS_FILE = "results/trials.csv"
SUMMARY_FILE = "results/summary.json"
README_FILE = "README.md"
CHECKSUM_FILE = "MANIFEST.sha256"
REQUIRED_FILES = (
    PROGRAM_FILE,
    DATASET_MANIFEST_FILE,
    RUN_FILE,
    ENVIRONMENT_FILE,
    TRIALS_FILE,
    SUMMARY_FILE,
    README_FILE,
)

# A package has ten files; the data and trial files may be large, everything else is small.
MAX_MEMBERS = 64
MAX_DATA_MEMBER_BYTES = 1024 * 1024 * 1024
MAX_METADATA_MEMBER_BYTES = 16 * 1024 * 1024
MAX_TOTAL_BYTES = 2 * 1024 * 1024 * 1024
# Text data deflates by 3-20x; a zip bomb by 1000x. Small members are exempt (a few KB of zeros is harmless).
MAX_COMPRESSION_RATIO = 200
_RATIO_EXEMPT_BYTES = 1024 * 1024
_DATA_MEMBERS = frozenset({EXAMPLES_FILE, TRIALS_FILE})
_CHUNK_BYTES = 1 << 20
# A package's names are plain relative paths such as "dataset/manifest.json"; anything else is a zip-slip attempt.
_DRIVE_LETTER = re.compile(r"^[A-Za-z]:")
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")

# (lowest, highest) allowed for run settings a re-run takes from run.json; None means unbounded on that side.
RUN_LIMITS: Mapping[str, tuple[float, float]] = {
    "threads": (1, 64),
    "repeats": (1, 100),
    "retries": (0, 10),
    "timeout": (0.001, 3600.0),
    "max_errors": (0, 1e9),
    "latency": (0.0, 10.0),
    "error_rate": (0.0, 1.0),
    "rate_limit_rate": (0.0, 1.0),
    "hang_rate": (0.0, 1.0),
    "hang_seconds": (0.0, 60.0),
    "num_retries": (0, 10),
    "temperature": (0.0, 2.0),
    "max_tokens": (1, 1_000_000),
}
_INTEGER_SETTINGS = frozenset({"threads", "repeats", "retries", "num_retries", "max_tokens"})


def member_name_problem(name: str) -> str | None:
    """Return why a zip member name is not a plain relative path inside the package, or None when it is.

    Refused: empty names, control characters (NUL included), backslashes, absolute paths, drive
    letters, and empty, ``.`` or ``..`` path components: any of them can place a file outside the
    folder a package is extracted to (zip-slip), or name two files alike on some system.
    """
    if not name:
        return "an empty name"
    if _CONTROL_CHARACTER.search(name):
        return "a control character (NUL, newline...) in its name"
    if "\\" in name:
        return "a backslash in its name"
    if name.startswith("/"):
        return "an absolute path"
    if _DRIVE_LETTER.match(name):
        return "a drive letter"
    parts = name.removesuffix("/").split("/")
    if ".." in parts:
        return "a '..' component"
    if any(part in ("", ".") for part in parts):
        return "an empty or '.' component"
    return None


def member_limit(name: str) -> int:
    """Return the most bytes the member ``name`` may hold once decompressed."""
    return MAX_DATA_MEMBER_BYTES if name in _DATA_MEMBERS else MAX_METADATA_MEMBER_BYTES


class PackageArchive:
    """A package zip opened for bounded reading.

    Opening checks the member count, every member's declared size against its limit,
    the declared total and each large member's compression ratio, before any member
    is decompressed; :meth:`read` and :meth:`sha256` then stop as soon as a member
    yields more bytes than it declared.

    Args:
        path: the zip file.

    Raises:
        PackageError: the file is not a readable zip, or it breaks a limit (naming the
            member and the limit).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as error:
            raise PackageError(f"{path}: not a readable zip archive ({error})") from None
        try:
            self._infos = self._checked_members()
        except PackageError:
            self._zip.close()
            raise

    def _checked_members(self) -> dict[str, zipfile.ZipInfo]:
        every = self._zip.infolist()
        infos = [info for info in every if not info.is_dir()]
        if len(infos) > MAX_MEMBERS:
            raise PackageError(f"{self.path}: {len(infos)} files, more than a package's limit of {MAX_MEMBERS}")
        self._check_names(every)
        total = 0
        for info in infos:
            limit = member_limit(info.filename)
            if info.file_size > limit:
                raise PackageError(
                    f"{self.path}: {info.filename} declares {info.file_size:,} bytes uncompressed, "
                    f"more than the {limit:,} a package member may hold"
                )
            if info.file_size > _RATIO_EXEMPT_BYTES and info.file_size > MAX_COMPRESSION_RATIO * max(
                info.compress_size, 1
            ):
                raise PackageError(
                    f"{self.path}: {info.filename} expands {info.file_size / max(info.compress_size, 1):,.0f}-fold "
                    f"({info.compress_size:,} to {info.file_size:,} bytes), more than {MAX_COMPRESSION_RATIO}-fold: "
                    "refusing what looks like a zip bomb"
                )
            total += info.file_size
        if total > MAX_TOTAL_BYTES:
            raise PackageError(
                f"{self.path}: {total:,} bytes uncompressed in all, more than a package's limit of {MAX_TOTAL_BYTES:,}"
            )
        return {info.filename: info for info in infos}

    def _check_names(self, infos: list[zipfile.ZipInfo]) -> None:
        if len(infos) > MAX_MEMBERS * 2:  # directory entries count here: the check below is per entry
            raise PackageError(f"{self.path}: {len(infos)} entries, more than a package holds")
        seen: set[str] = set()
        for info in infos:
            # orig_filename is the name as stored: zipfile cuts .filename at a NUL, hiding what follows it.
            name = info.orig_filename
            problem = member_name_problem(name)
            if problem is None and stat.S_ISLNK(info.external_attr >> 16):
                problem = "a symbolic link"
            if problem is None and name in seen:
                problem = "a name that appears more than once (each reader could see a different file)"
            if problem is not None:
                raise PackageError(
                    f"{self.path}: member {bounded_repr(name, limit=120)} has {problem}; a package's members are "
                    "plain relative paths such as dataset/manifest.json, so this zip is refused"
                )
            seen.add(name)

    @property
    def names(self) -> list[str]:
        """Every file name in the zip, in archive order (repeated names included)."""
        return [info.filename for info in self._zip.infolist() if not info.is_dir()]

    def __contains__(self, name: object) -> bool:
        return name in self._infos

    def _chunks(self, name: str) -> Iterator[bytes]:
        info = self._infos[name]
        remaining = info.file_size
        with self._zip.open(info) as member:
            while True:
                chunk = member.read(min(_CHUNK_BYTES, remaining + 1))
                if not chunk:
                    return
                remaining -= len(chunk)
                if remaining < 0:
                    raise PackageError(f"{self.path}: {name} holds more bytes than the {info.file_size:,} it declares")
                yield chunk

    def read(self, name: str) -> bytes:
        """Return a member's bytes, reading at most its declared (and checked) size."""
        try:
            return b"".join(self._chunks(name))
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
            raise PackageError(f"{self.path}: {name} cannot be read ({error})") from None

    def sha256(self, name: str) -> str:
        """Return a member's SHA-256, streamed in bounded chunks."""
        digest = hashlib.sha256()
        try:
            for chunk in self._chunks(name):
                digest.update(chunk)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
            raise PackageError(f"{self.path}: {name} cannot be read ({error})") from None
        return digest.hexdigest()

    def close(self) -> None:
        """Close the zip."""
        self._zip.close()

    def __enter__(self) -> PackageArchive:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def check_run_settings(run: Mapping[str, Any]) -> list[str]:
    """Return one sentence per run setting of ``run.json`` outside :data:`RUN_LIMITS`.

    Checks ``threads``, ``repeats``, ``retries``, ``timeout``, ``max_errors`` and, in the
    LM state, the lab engine's latency, fault rates and hang length, ``num_retries``,
    ``temperature`` and ``max_tokens``.
    """
    problems: list[str] = []
    for key in ("threads", "repeats", "retries", "timeout", "max_errors"):
        _check_setting(problems, key, run.get(key), where=key)
    lm = run.get("lm")
    state = lm.get("state") if isinstance(lm, Mapping) else None
    if isinstance(state, Mapping):
        for key in ("num_retries", "temperature", "max_tokens"):
            _check_setting(problems, key, state.get(key), where=f"lm.state.{key}")
        engine = state.get("engine")
        engine_state = engine.get("state") if isinstance(engine, Mapping) else None
        if isinstance(engine_state, Mapping):
            for key in ("latency", "error_rate", "rate_limit_rate", "hang_rate", "hang_seconds"):
                _check_setting(problems, key, engine_state.get(key), where=f"lm.state.engine.state.{key}")
    return [f"{RUN_FILE}: {problem}" for problem in problems]


def _check_setting(problems: list[str], key: str, value: Any, *, where: str) -> None:
    if value is None:
        return
    low, high = RUN_LIMITS[key]
    integer = key in _INTEGER_SETTINGS
    kinds: tuple[type, ...] = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
        kind = "an integer" if integer else "a finite number"
        problems.append(f"{where} is {bounded_repr(value)}, not {kind}")
    elif not low <= value <= high:
        problems.append(f"{where} is {bounded_repr(value)}, outside the allowed range [{low:g}, {high:g}]")


def json_bytes(value: Any) -> bytes:
    """Return ``value`` as indented UTF-8 JSON with a final newline."""
    return (json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n").encode("utf-8")


def dataset_from_records(
    records: Sequence[tuple[str, Mapping[str, Any]]], *, inputs: Sequence[str], name: str
) -> Dataset:
    """Build a dataset from (example id, fields) pairs."""
    return Dataset(
        [dict(fields) for _, fields in records],
        inputs=list(inputs),
        name=name,
        ids=[example_id for example_id, _ in records],
    )


def read_examples(text: str, manifest: Mapping[str, Any]) -> Dataset:
    """Rebuild the dataset from the examples file; DatasetError names the file and line."""
    key = manifest.get("id_key") or "id"
    keep_key = bool(manifest.get("id_is_field"))
    inputs = manifest.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise DatasetError(f"no input field names in {DATASET_MANIFEST_FILE}", path=EXAMPLES_FILE)
    if not isinstance(key, str):
        raise DatasetError(
            f"id_key in {DATASET_MANIFEST_FILE} is {bounded_repr(key)}, not a field name", path=EXAMPLES_FILE
        )
    records: list[tuple[str, dict[str, Any]]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            fields = json.loads(line)
        except json.JSONDecodeError as error:
            raise DatasetError(f"not valid JSON ({error.msg})", path=EXAMPLES_FILE, line=number) from None
        except RecursionError:
            raise DatasetError("JSON nested too deeply to read", path=EXAMPLES_FILE, line=number) from None
        except ValueError as error:  # e.g. an integer past Python's digit limit
            raise DatasetError(
                f"JSON that cannot be read ({str(error)[:120]})", path=EXAMPLES_FILE, line=number
            ) from None
        if not isinstance(fields, dict) or key not in fields:
            raise DatasetError(f"not a JSON object with the example id under {key!r}", path=EXAMPLES_FILE, line=number)
        example_id = fields[key] if keep_key else fields.pop(key)
        if not isinstance(example_id, str):
            raise DatasetError(
                f"example id {bounded_repr(example_id)} is not a string", path=EXAMPLES_FILE, line=number
            )
        records.append((example_id, fields))
    try:
        return dataset_from_records(records, inputs=inputs, name=str(manifest.get("name") or "dataset"))
    except DatasetError as error:
        raise DatasetError(f"cannot rebuild the dataset: {error}", path=EXAMPLES_FILE) from None


COMPARED_COLUMNS = ("example_id", "repeat", "status", "score")


def read_trials(text: str) -> dict[tuple[str, int], dict[str, Any]]:
    """Return the recorded trials keyed by (example id, repeat); DatasetError names the line."""
    reader = csv.DictReader(io.StringIO(text))
    missing = [column for column in COMPARED_COLUMNS if column not in (reader.fieldnames or ())]
    if missing:
        raise DatasetError(f"missing column(s) {missing}", path=TRIALS_FILE, line=1)
    trials: dict[tuple[str, int], dict[str, Any]] = {}
    for row in reader:
        line = reader.line_num
        try:
            repeat = int(row["repeat"])
            score = float(row["score"]) if row["score"] else None
        except ValueError as error:
            raise DatasetError(f"unreadable repeat or score ({error})", path=TRIALS_FILE, line=line) from None
        key = (row["example_id"], repeat)
        if key in trials:
            raise DatasetError(f"trial {key[0]}/r{repeat} appears twice", path=TRIALS_FILE, line=line)
        trials[key] = {"status": row["status"], "score": score, "error_type": row.get("error_type") or None}
    return trials
