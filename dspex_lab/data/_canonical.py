"""Canonical JSON and hashing used for example ids, fingerprints and file digests.

Everything here must give the same bytes in every process, on every Python hash
seed and for every field order, because ids and fingerprints are stored in
journals and compared across runs.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import hashlib
import json
import math
import os
import uuid
from collections.abc import Mapping
from typing import Any

import numpy

from dspex_lab.errors import DatasetError

__all__ = [
    "DSPY_PREFIX",
    "canonical_json",
    "content_hash",
    "example_fields",
    "file_sha256",
    "to_canonical",
]

# dspy stores bookkeeping such as per-instance random uuids under this prefix;
# including them would make ids and fingerprints differ between identical loads.
DSPY_PREFIX = "dspy_"

_FILE_CHUNK_SIZE = 1 << 20


def example_fields(example: Any) -> dict[str, Any]:
    """Return an example's data fields, without dspy's bookkeeping fields.

    Args:
        example: a ``dspy.Example`` (or anything with ``items(include_dspy=...)``).

    Returns:
        The fields in the example's own order.
    """
    return dict(example.items(include_dspy=False))


def to_canonical(value: Any) -> Any:
    """Convert a value to plain JSON types, deterministically.

    Non-JSON types are tagged (``{"$decimal": "1.50"}``) so that, for example, the
    string ``"1.50"`` and the decimal ``1.50`` do not hash alike.

    Args:
        value: a field value.

    Returns:
        A structure of dicts with string keys, lists, strings, ints, floats, bools and None.

    Raises:
        TypeError: the value has a type with no deterministic representation.
    """
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        # JSON has no NaN/Infinity; tagging keeps the output strict JSON.
        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, numpy.generic):
        return to_canonical(value.item())
    if isinstance(value, numpy.ndarray):
        return to_canonical(value.tolist())
    if isinstance(value, Mapping):
        if all(isinstance(key, str) for key in value):
            return {key: to_canonical(item) for key, item in value.items()}
        pairs = [[to_canonical(key), to_canonical(item)] for key, item in value.items()]
        pairs.sort(key=lambda pair: canonical_json(pair[0]))
        return {"$map": pairs}
    if isinstance(value, list | tuple):
        return [to_canonical(item) for item in value]
    if isinstance(value, set | frozenset):
        # Set iteration order depends on the hash seed, so sort the members.
        return {"$set": sorted((to_canonical(item) for item in value), key=canonical_json)}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$bytes": bytes(value).hex()}
    if isinstance(value, decimal.Decimal):
        return {"$decimal": str(value)}
    # datetime before date: a datetime is also a date (and pandas.Timestamp is a datetime).
    if isinstance(value, datetime.datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, datetime.date):
        return {"$date": value.isoformat()}
    if isinstance(value, datetime.time):
        return {"$time": value.isoformat()}
    if isinstance(value, datetime.timedelta):
        return {"$timedelta": [value.days, value.seconds, value.microseconds]}
    if isinstance(value, uuid.UUID):
        return {"$uuid": str(value)}
    if hasattr(value, "model_dump"):
        # pydantic models, including dspy types such as dspy.Image.
        return to_canonical(value.model_dump(mode="json"))
    if hasattr(value, "toDict"):
        # Nested dspy.Example values.
        return to_canonical(value.toDict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_canonical(dataclasses.asdict(value))
    raise TypeError(f"a value of type {type(value).__qualname__} has no deterministic representation")


def canonical_json(value: Any) -> str:
    """Serialize a value as canonical JSON: sorted keys, no whitespace, UTF-8 text.

    Args:
        value: a value accepted by :func:`to_canonical`.

    Returns:
        The JSON text.
    """
    return json.dumps(to_canonical(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def content_hash(fields: Mapping[str, Any], *, position: int | None = None) -> str:
    """Return the SHA-256 hex digest of a record's canonical JSON.

    Args:
        fields: the record's fields.
        position: the record's 0-based position, used only in the error message.

    Returns:
        The full 64-character hex digest.

    Raises:
        DatasetError: a field value cannot be represented deterministically.
    """
    try:
        text = canonical_json(dict(fields))
    except TypeError as error:
        where = f"example {position}" if position is not None else "example"
        field_names = [name for name, value in fields.items() if _is_unrepresentable(value)]
        raise DatasetError(f"{where}, field(s) {field_names}: {error}") from error
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _is_unrepresentable(value: Any) -> bool:
    try:
        to_canonical(value)
    except TypeError:
        return True
    return False


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Return the SHA-256 hex digest of a file's bytes, read in chunks.

    Args:
        path: the file.

    Returns:
        The hex digest.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_FILE_CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()
