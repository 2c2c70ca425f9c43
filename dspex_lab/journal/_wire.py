"""The journal service's wire format: typed, bounded, and never executable.

Nothing received from a socket is unpickled. A message is one frame::

    b"DXJ1" | u32 JSON length | u32 blob count | u64 length of each blob | JSON | blobs

The JSON holds the values; anything JSON has no type for is a tagged object ``{"$w": tag, ...}``
of a closed set of tags (tuples, sets, maps with non-string keys, dates and times, decimals, bytes,
and the journal's own frozen records by registered name), and tables travel as Arrow IPC streams in
the blobs. A decoder builds only those types: an unknown tag, an unregistered record or a malformed
frame is a :class:`WireError`, and every length is checked against a limit before anything is read.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import decimal
import json
import math
import socket
import struct
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from dspex_lab._records import ExperimentRecord
from dspex_lab.journal._store import ExperimentSummary

__all__ = [
    "MAX_BLOBS",
    "MAX_MESSAGE_BYTES",
    "WireError",
    "decode",
    "encode",
    "receive",
    "send",
    "send_encoded",
    "wire_record",
]

MAGIC = b"DXJ1"
_HEADER = struct.Struct(">4sII")
_BLOB_LENGTH = struct.Struct(">Q")

# A journal call's arguments or result: a page of trials with their spans, or a query's table.
MAX_MESSAGE_BYTES = 1 << 30
MAX_BLOBS = 64
_TAG = "$w"

_Record = TypeVar("_Record", bound=type)
_records: dict[str, type] = {}


class WireError(Exception):
    """A value that cannot travel, or a frame that is not one this format wrote."""


def wire_record(cls: _Record) -> _Record:
    """Let a frozen dataclass travel by name (its fields travel as values; nothing else is called)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} is not a dataclass")
    _records[cls.__name__] = cls
    return cls


# The journal's records that travel as arguments and results, registered with the format itself: whoever
# encodes or decodes a call has them, and `import dspex_lab` (which loads the records and the protocol, not
# this module) does not load the wire format.
wire_record(ExperimentRecord)
wire_record(ExperimentSummary)


# -- values ----------------------------------------------------------------------------------


def _pack(value: Any, blobs: list[bytes]) -> Any:
    """Return a JSON-ready form of ``value``, appending tables to ``blobs``."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else {_TAG: "float", "v": repr(value)}
    if isinstance(value, dict):
        if all(isinstance(key, str) for key in value) and _TAG not in value:
            return {key: _pack(item, blobs) for key, item in value.items()}
        return {_TAG: "map", "v": [[_pack(key, blobs), _pack(item, blobs)] for key, item in value.items()]}
    if isinstance(value, list):
        return [_pack(item, blobs) for item in value]
    if isinstance(value, tuple):
        return {_TAG: "tuple", "v": [_pack(item, blobs) for item in value]}
    if isinstance(value, (set, frozenset)):
        return {_TAG: "set", "v": [_pack(item, blobs) for item in value]}
    if isinstance(value, dt.datetime):
        return {_TAG: "datetime", "v": value.isoformat()}
    if isinstance(value, dt.date):
        return {_TAG: "date", "v": value.isoformat()}
    if isinstance(value, dt.time):
        return {_TAG: "time", "v": value.isoformat()}
    if isinstance(value, dt.timedelta):
        return {_TAG: "timedelta", "v": [value.days, value.seconds, value.microseconds]}
    if isinstance(value, decimal.Decimal):
        return {_TAG: "decimal", "v": str(value)}
    if isinstance(value, uuid.UUID):
        return {_TAG: "uuid", "v": str(value)}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {_TAG: "bytes", "v": base64.b64encode(bytes(value)).decode("ascii")}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        name = type(value).__name__
        if _records.get(name) is not type(value):
            raise WireError(f"{name} is not a record the journal service carries")
        fields = {item.name: _pack(getattr(value, item.name), blobs) for item in dataclasses.fields(value)}
        return {_TAG: "record", "type": name, "v": fields}
    return _pack_other(value, blobs)


def _pack_other(value: Any, blobs: list[bytes]) -> Any:
    # Tables and numpy/pandas scalars, without importing numpy, pandas or pyarrow for plain calls.
    module = type(value).__module__.split(".", 1)[0]
    if module == "pandas" and type(value).__name__ == "DataFrame":
        return {_TAG: "frame", "blob": _blob(_arrow_of_frame(value), blobs)}
    if module == "pyarrow" and type(value).__name__ == "Table":
        return {_TAG: "table", "blob": _blob(value, blobs)}
    if module == "numpy" and hasattr(value, "item") and getattr(value, "shape", None) == ():
        return _pack(value.item(), blobs)
    if module == "pandas" and type(value).__name__ == "Timestamp":
        return _pack(value.to_pydatetime(), blobs)
    if module == "pandas" and type(value).__name__ in {"NaTType", "NAType"}:
        return None
    raise WireError(f"a {type(value).__name__} cannot travel to or from the journal service")


def _arrow_of_frame(frame: Any) -> Any:
    import pandas as pd
    import pyarrow as pa

    keep_index = not (isinstance(frame.index, pd.RangeIndex) and frame.index.start == 0 and frame.index.step == 1)
    try:
        return pa.Table.from_pandas(frame, preserve_index=keep_index)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as error:
        raise WireError(f"a table whose columns Arrow cannot type cannot travel: {error}") from error


def _blob(table: Any, blobs: list[bytes]) -> int:
    import pyarrow as pa

    if len(blobs) >= MAX_BLOBS:
        raise WireError(f"a message carries at most {MAX_BLOBS} tables")
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    blobs.append(sink.getvalue().to_pybytes())
    return len(blobs) - 1


def _unpacker(blobs: list[bytes]) -> Callable[[dict[str, Any]], Any]:
    def unpack(item: dict[str, Any]) -> Any:
        tag = item.get(_TAG)
        if tag is None:
            return item
        value = item.get("v")
        try:
            return _UNPACK[tag](value, item, blobs)
        except KeyError as error:
            raise WireError(f"unknown or malformed value tagged {str(tag)[:40]!r}") from error
        except (TypeError, ValueError, decimal.InvalidOperation, OverflowError) as error:
            raise WireError(f"malformed value tagged {str(tag)[:40]!r}: {error}") from error

    return unpack


def _table(item: dict[str, Any], blobs: list[bytes]) -> Any:
    import pyarrow as pa

    index = item["blob"]
    if not isinstance(index, int) or not 0 <= index < len(blobs):
        raise WireError("a table refers to a blob the message does not carry")
    try:
        return pa.ipc.open_stream(pa.py_buffer(blobs[index])).read_all()
    except (pa.ArrowInvalid, OSError) as error:
        raise WireError(f"a table that is not a valid Arrow stream: {error}") from error


def _record(value: Any, item: dict[str, Any]) -> Any:
    cls = _records.get(item["type"]) if isinstance(item.get("type"), str) else None
    if cls is None or not isinstance(value, dict):
        raise WireError(f"{str(item.get('type'))[:40]!r} is not a record the journal service carries")
    return cls(**value)


def _float(value: Any) -> float:
    if value not in {"nan", "inf", "-inf"}:
        raise ValueError(value)
    return float(value)


_UNPACK: dict[str, Callable[[Any, dict[str, Any], list[bytes]], Any]] = {
    "float": lambda value, _item, _blobs: _float(value),
    "map": lambda value, _item, _blobs: {key: item for key, item in value},
    "tuple": lambda value, _item, _blobs: tuple(value),
    "set": lambda value, _item, _blobs: set(value),
    "datetime": lambda value, _item, _blobs: dt.datetime.fromisoformat(value),
    "date": lambda value, _item, _blobs: dt.date.fromisoformat(value),
    "time": lambda value, _item, _blobs: dt.time.fromisoformat(value),
    "timedelta": lambda value, _item, _blobs: dt.timedelta(*value),
    "decimal": lambda value, _item, _blobs: decimal.Decimal(value),
    "uuid": lambda value, _item, _blobs: uuid.UUID(value),
    "bytes": lambda value, _item, _blobs: base64.b64decode(value, validate=True),
    "record": lambda value, item, _blobs: _record(value, item),
    "table": lambda _value, item, blobs: _table(item, blobs),
    "frame": lambda _value, item, blobs: _table(item, blobs).to_pandas(),
}


def encode(value: Any) -> tuple[bytes, list[bytes]]:
    """Return the JSON text and the blobs of one message.

    Raises:
        WireError: a value of a type the format does not carry, or a message over the size limit.
    """
    blobs: list[bytes] = []
    try:
        text = json.dumps(_pack(value, blobs), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except RecursionError as error:
        raise WireError("a value nested too deeply to travel") from error
    payload = text.encode("utf-8")
    if len(payload) + sum(len(blob) for blob in blobs) > MAX_MESSAGE_BYTES:
        raise WireError(f"a message over {MAX_MESSAGE_BYTES} bytes cannot travel")
    return payload, blobs


def decode(payload: bytes, blobs: list[bytes]) -> Any:
    """Return the value of one message's JSON text and blobs.

    Raises:
        WireError: anything but a message :func:`encode` could have written.
    """
    try:
        return json.loads(payload.decode("utf-8"), object_hook=_unpacker(blobs), parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise WireError(f"a message that is not this format's JSON: {str(error)[:200]}") from error


def _no_constant(name: str) -> Any:
    raise WireError(f"{name} is not a JSON value")  # NaN and Infinity travel tagged


# -- frames ----------------------------------------------------------------------------------


def send(endpoint: socket.socket, value: Any) -> None:
    """Send one message (raises :class:`WireError` before sending anything if it cannot travel)."""
    send_encoded(endpoint, encode(value))


def send_encoded(endpoint: socket.socket, message: tuple[bytes, list[bytes]]) -> None:
    """Send one message already encoded with :func:`encode`."""
    payload, blobs = message
    header = _HEADER.pack(MAGIC, len(payload), len(blobs)) + b"".join(_BLOB_LENGTH.pack(len(blob)) for blob in blobs)
    endpoint.sendall(header + payload)
    for blob in blobs:
        endpoint.sendall(blob)


def receive(endpoint: socket.socket, *, first_byte_timeout: float | None, rest_timeout: float) -> Any:
    """Receive one message.

    Waits up to ``first_byte_timeout`` (None: for ever) for a message to start, and then at most
    ``rest_timeout`` for each further read, so a peer that stops mid-message cannot hold a reader.

    Raises:
        EOFError: the peer closed the connection before a message started.
        OSError: the connection failed or timed out.
        WireError: a frame this format did not write, or one over the size limits.
    """
    endpoint.settimeout(first_byte_timeout)
    first = endpoint.recv(1)
    if not first:
        raise EOFError("the peer closed the connection")
    endpoint.settimeout(rest_timeout)
    magic, length, count = _HEADER.unpack(first + _exactly(endpoint, _HEADER.size - 1))
    if magic != MAGIC:
        raise WireError("a frame that does not start with this format's marker")
    if count > MAX_BLOBS:
        raise WireError(f"a frame announcing {count} blobs (at most {MAX_BLOBS})")
    lengths = [_BLOB_LENGTH.unpack(_exactly(endpoint, _BLOB_LENGTH.size))[0] for _ in range(count)]
    if length + sum(lengths) > MAX_MESSAGE_BYTES:
        raise WireError(f"a frame announcing {length + sum(lengths)} bytes (at most {MAX_MESSAGE_BYTES})")
    payload = _exactly(endpoint, length)
    blobs = [_exactly(endpoint, size) for size in lengths]
    return decode(payload, blobs)


def _exactly(endpoint: socket.socket, size: int) -> bytes:
    buffer = bytearray(size)
    view = memoryview(buffer)
    received = 0
    while received < size:
        count = endpoint.recv_into(view[received:], min(size - received, 1 << 20))
        if count == 0:
            raise EOFError("the peer closed the connection in the middle of a message")
        received += count
    return bytes(buffer)
