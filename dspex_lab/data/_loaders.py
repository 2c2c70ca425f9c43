"""Readers that turn JSONL, JSON, CSV, Parquet files and DuckDB queries into datasets."""

from __future__ import annotations

import csv
import hashlib
import json
import numbers
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import duckdb

from dspex_lab.data._canonical import file_sha256
from dspex_lab.data._dataset import Dataset, normalize_inputs
from dspex_lab.errors import DatasetError

__all__ = ["dataset_from_query", "load_dataset"]

_JSON_LINES_SUFFIXES = (".jsonl", ".ndjson")
_JSON_SUFFIXES = (".json",)
_DELIMITED_SUFFIXES = {".csv": ",", ".tsv": "\t"}
_PARQUET_SUFFIXES = (".parquet", ".pq")
_SUPPORTED = sorted((*_JSON_LINES_SUFFIXES, *_JSON_SUFFIXES, *_DELIMITED_SUFFIXES, *_PARQUET_SUFFIXES))
_DUCKDB_LINE = re.compile(r"\bLine:\s*(\d+)")


def load_dataset(
    path: str | os.PathLike[str],
    *,
    inputs: str | Iterable[str],
    name: str | None = None,
    fields: Iterable[str] | None = None,
    limit: int | None = None,
) -> Dataset:
    """Read a dataset file, choosing the reader by extension.

    * ``.jsonl`` / ``.ndjson``: one JSON object per line; blank lines are skipped.
    * ``.json``: a JSON list of objects, or a Hugging Face export: ``{"rows": [...]}`` (the dataset
      viewer's rows, each ``{"row_idx": ..., "row": {...}}`` or a plain object), or one object per line
      (what ``datasets.Dataset.to_json`` writes).
    * ``.csv`` / ``.tsv``: a header row, then records; every value is read as text
      (so ``"007"`` stays ``"007"``); an empty cell is None, a quoted empty cell ``""``
      is the empty string.
    * ``.parquet`` / ``.pq``: columns keep their Parquet types.

    CSV and Parquet are read with DuckDB. The SHA-256 of the file's bytes is kept
    for :meth:`Dataset.manifest`.

    Args:
        path: the file.
        inputs: the input field names; every record must have them.
        name: a display name; defaults to the file's stem.
        fields: keep only these fields (inputs are always kept); each must be present.
        limit: read at most this many records.

    Returns:
        The dataset.

    Raises:
        DatasetError: the file is missing or unreadable, has an unsupported extension,
            or a record is malformed; the error carries the path and, when known,
            the 1-based line.
    """
    input_names = normalize_inputs(inputs)
    required = _required_fields(input_names, fields)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, numbers.Integral) or limit < 0):
        raise DatasetError(f"limit must be a non-negative int or None, got {limit!r}")
    path_text = os.fspath(path)
    file = Path(path_text)
    if not file.exists():
        raise DatasetError("no such file", path=path_text)
    if not file.is_file():
        raise DatasetError("not a regular file", path=path_text)
    suffix = file.suffix.lower()
    keep = None if fields is None else required
    if suffix in _JSON_LINES_SUFFIXES:
        records, digest = _read_json_lines(path_text, required, keep=keep, limit=limit)
    elif suffix in _JSON_SUFFIXES:
        records, digest = _read_json(path_text, required, keep=keep, limit=limit)
    elif suffix in _DELIMITED_SUFFIXES:
        records, digest = _read_delimited(path_text, _DELIMITED_SUFFIXES[suffix], required, keep=keep, limit=limit)
    elif suffix in _PARQUET_SUFFIXES:
        records, digest = _read_parquet(path_text, required, keep=keep, limit=limit)
    else:
        raise DatasetError(f"unsupported file extension {suffix!r}; supported: {_SUPPORTED}", path=path_text)
    return Dataset._build(
        records, inputs=input_names, name=name or file.stem, source=str(file.resolve()), source_sha256=digest
    )


def dataset_from_query(sql: str, *, inputs: str | Iterable[str], name: str | None = None) -> Dataset:
    """Run a DuckDB query on a private in-memory connection and wrap its rows.

    The query may read files directly, e.g.
    ``SELECT question, answer FROM 'data/*.parquet' WHERE split = 'dev'``.
    The query text is kept for :meth:`Dataset.manifest`.

    Args:
        sql: the query; its last statement must return rows.
        inputs: the input column names.
        name: a display name, ``"query"`` by default.

    Returns:
        The dataset, one example per row, in the query's order.

    Raises:
        DatasetError: the query fails, returns no result set, repeats a column
            name or lacks an input column.
    """
    input_names = normalize_inputs(inputs)
    with duckdb.connect(":memory:") as connection:
        try:
            relation = connection.sql(sql)
            if relation is None:
                raise DatasetError("the query returned no result set; end it with a SELECT")
            _check_columns(list(relation.columns), input_names, path=None)
            records = _fetch_records(relation)
        except duckdb.Error as error:
            raise DatasetError(f"DuckDB query failed: {_duckdb_message(error)}") from error
    return Dataset._build(records, inputs=input_names, name=name or "query", query=sql)


def _required_fields(inputs: tuple[str, ...], fields: Iterable[str] | None) -> tuple[str, ...]:
    """Return the fields every record must have: the inputs, then any other requested fields."""
    if fields is None:
        return inputs
    requested = (fields,) if isinstance(fields, str) else tuple(fields)
    for field in requested:
        if not isinstance(field, str) or not field:
            raise DatasetError(f"field names must be non-empty strings, got {field!r}")
    return tuple(dict.fromkeys((*inputs, *requested)))


def _check_record(record: Any, required: Sequence[str], *, path: str, line: int | None, label: str) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise DatasetError(f"{label} is {_json_type(record)}, expected a JSON object", path=path, line=line)
    missing = [field for field in required if field not in record]
    if missing:
        raise DatasetError(
            f"{label} is missing field(s) {missing}; fields present: {list(record)}", path=path, line=line
        )
    return record


def _project(record: dict[str, Any], keep: Sequence[str] | None) -> dict[str, Any]:
    return record if keep is None else {field: record[field] for field in keep}


def _read_json_lines(
    path: str, required: Sequence[str], *, keep: Sequence[str] | None, limit: int | None
) -> tuple[list[dict[str, Any]], str]:
    records: list[dict[str, Any]] = []
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        # Iterating a binary file splits on b"\n" only; str.splitlines would also split
        # on U+2028 and friends, which JSON strings may contain unescaped.
        for line_number, raw_line in enumerate(handle, start=1):
            digest.update(raw_line)
            if limit is not None and len(records) >= limit:
                # Keep reading only to hash the whole file for the manifest.
                continue
            try:
                text = raw_line.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DatasetError(
                    f"not valid UTF-8 ({error.reason} at byte {error.start})", path=path, line=line_number
                ) from error
            if line_number == 1:
                text = text.removeprefix("\ufeff")
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as error:
                raise DatasetError(
                    f"invalid JSON: {error.msg} (column {error.colno})", path=path, line=line_number
                ) from error
            record = _check_record(value, required, path=path, line=line_number, label="record")
            records.append(_project(record, keep))
    return records, digest.hexdigest()


def _read_json(
    path: str, required: Sequence[str], *, keep: Sequence[str] | None, limit: int | None
) -> tuple[list[dict[str, Any]], str]:
    with open(path, "rb") as handle:
        data = handle.read()
    digest = hashlib.sha256(data).hexdigest()
    try:
        value = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as error:
        raise DatasetError(f"not valid UTF-8 ({error.reason} at byte {error.start})", path=path) from error
    except json.JSONDecodeError as error:
        if error.msg == "Extra data" and data.lstrip().startswith(b"{"):
            # Hugging Face's Dataset.to_json writes one object per line, even to a file named .json.
            return _read_json_lines(path, required, keep=keep, limit=limit)
        raise DatasetError(f"invalid JSON: {error.msg} (column {error.colno})", path=path, line=error.lineno) from error
    if isinstance(value, dict) and isinstance(value.get("rows"), list):
        # A Hugging Face dataset-viewer export: {"rows": [{"row_idx": 0, "row": {...}}, ...]}, or plain objects.
        value = [_unwrapped_row(item) for item in value["rows"]]
    if not isinstance(value, list):
        raise DatasetError(
            f'expected a JSON list of objects or {{"rows": [...]}}, got {_json_type(value)} '
            "(use .jsonl for one object per line)",
            path=path,
        )
    items = value if limit is None else value[:limit]
    records = [
        _project(_check_record(item, required, path=path, line=None, label=f"record {number}"), keep)
        for number, item in enumerate(items, start=1)
    ]
    return records, digest


def _unwrapped_row(item: Any) -> Any:
    """Return the record of a dataset-viewer row (``{"row_idx": 0, "row": {...}}``), or ``item`` itself."""
    if isinstance(item, dict) and "row_idx" in item and isinstance(item.get("row"), dict):
        return item["row"]
    return item


def _read_delimited(
    path: str, delimiter: str, required: Sequence[str], *, keep: Sequence[str] | None, limit: int | None
) -> tuple[list[dict[str, Any]], str]:
    digest = file_sha256(path)
    header = _read_header(path, delimiter)
    _check_columns(header, required, path=path)
    # Giving DuckDB the columns (all VARCHAR) and the dialect turns off its sniffer:
    # the sniffer silently reads a file with one bad row as a single column, guesses
    # "#" as a comment marker, and reports bad rows without a line number.
    columns = "{" + ", ".join(f"{_sql_string(column)}: 'VARCHAR'" for column in header) + "}"
    selected = ", ".join(_sql_identifier(column) for column in (keep or header))
    query = (
        f"SELECT {selected} FROM read_csv($path, header = true, auto_detect = false, columns = {columns}, "
        f"delim = {_sql_string(delimiter)}, quote = '\"', escape = '\"', comment = '', "
        "allow_quoted_nulls = false)"
    )
    if limit is not None:
        query += f" LIMIT {int(limit)}"
    with duckdb.connect(":memory:") as connection:
        try:
            records = _fetch_records(connection.sql(query, params={"path": path}))
        except duckdb.Error as error:
            message = _duckdb_message(error)
            match = _DUCKDB_LINE.search(message)
            line = int(match.group(1)) if match else None
            raise DatasetError(f"DuckDB could not read the CSV: {message}", path=path, line=line) from error
    return records, digest


def _read_header(path: str, delimiter: str) -> list[str]:
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            header = next(csv.reader(handle, delimiter=delimiter, quotechar='"', doublequote=True), None)
    except UnicodeDecodeError as error:
        raise DatasetError(f"not valid UTF-8 ({error.reason})", path=path) from error
    except csv.Error as error:
        raise DatasetError(f"cannot parse the header row: {error}", path=path, line=1) from error
    if not header:
        raise DatasetError("empty file: expected a header row naming the columns", path=path)
    for number, column in enumerate(header, start=1):
        if not column:
            raise DatasetError(f"header column {number} has no name; columns: {header}", path=path, line=1)
    return header


def _read_parquet(
    path: str, required: Sequence[str], *, keep: Sequence[str] | None, limit: int | None
) -> tuple[list[dict[str, Any]], str]:
    digest = file_sha256(path)
    with duckdb.connect(":memory:") as connection:
        try:
            columns = list(connection.sql("SELECT * FROM read_parquet($path)", params={"path": path}).columns)
            _check_columns(columns, required, path=path)
            selected = ", ".join(_sql_identifier(column) for column in (keep or columns))
            query = f"SELECT {selected} FROM read_parquet($path)"
            if limit is not None:
                query += f" LIMIT {int(limit)}"
            records = _fetch_records(connection.sql(query, params={"path": path}))
        except duckdb.Error as error:
            raise DatasetError(
                f"DuckDB could not read the Parquet file: {_duckdb_message(error)}", path=path
            ) from error
    return records, digest


def _check_columns(columns: list[str], required: Sequence[str], *, path: str | None) -> None:
    duplicates = sorted({column for column in columns if columns.count(column) > 1})
    if duplicates:
        raise DatasetError(f"repeated column name(s) {duplicates}; columns present: {columns}", path=path)
    for field in required:
        if field not in columns:
            raise DatasetError(f"missing column {field!r}; columns present: {columns}", path=path)


def _fetch_records(relation: duckdb.DuckDBPyRelation) -> list[dict[str, Any]]:
    # Fetch through Arrow: DuckDB's own fetchall needs pytz for TIMESTAMPTZ columns,
    # and to_arrow_table (newer DuckDB) / arrow (older, where it returns a Table) avoid it.
    table = relation.to_arrow_table() if hasattr(relation, "to_arrow_table") else relation.arrow()
    return table.to_pylist()


def _duckdb_message(error: duckdb.Error) -> str:
    """Return DuckDB's message without its list of option suggestions, on one line."""
    message = str(error).split("\nPossible fixes", 1)[0]
    return "; ".join(line.strip() for line in message.splitlines() if line.strip())


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _sql_identifier(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    if type(value) in names:
        return names[type(value)]
    return "a number" if isinstance(value, int | float) else type(value).__name__
