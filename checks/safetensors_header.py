"""Read a safetensors file's header through a CheckTarget: tensor names, dtypes and shapes, never the weights.

The format: 8 bytes little-endian u64 N, then N bytes of UTF-8 JSON mapping each
tensor name to {dtype, shape, data_offsets} (plus an optional `__metadata__`),
then the tensor data. A checkpoint of many GB costs two small reads.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field

from checks.target import CheckTarget

# The safetensors library refuses headers above this size; anything larger is not a header.
MAX_HEADER_BYTES = 100_000_000
METADATA_KEY = "__metadata__"


class HeaderError(ValueError):
    """The file is not a readable safetensors file; the message says what is wrong and where."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as its header entry describes it."""

    dtype: str
    shape: list[int]


@dataclass(frozen=True)
class SafetensorsHeader:
    """A parsed header: tensors by name, the free-form metadata, and the sizes that were checked."""

    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)
    header_bytes: int = 0
    file_size: int = 0


def read_header(transport: CheckTarget, path: str) -> SafetensorsHeader:
    """Parse the header of the safetensors file at `path`; HeaderError if it is missing, truncated or malformed."""
    stat = transport.stat(path)
    if stat is None:
        raise HeaderError(f"{path}: no such file")
    if stat.is_dir:
        raise HeaderError(f"{path}: is a directory, not a safetensors file")
    length = _header_length(transport, path, stat.size)
    raw = _read_exactly(transport, path, 8, length)
    tensors, metadata, data_end = _parse_entries(path, raw)
    # A download or conversion that stopped early leaves a valid header over missing data.
    expected_size = 8 + length + data_end
    if stat.size != expected_size:
        raise HeaderError(
            f"{path}: file is {stat.size} bytes but its header describes {expected_size} bytes "
            f"({'truncated' if stat.size < expected_size else 'trailing bytes'})"
        )
    return SafetensorsHeader(tensors=tensors, metadata=metadata, header_bytes=length, file_size=stat.size)


def _header_length(transport: CheckTarget, path: str, file_size: int) -> int:
    prefix = transport.read_from(path, 0, 8)
    if len(prefix) < 8:
        raise HeaderError(f"{path}: file is {file_size} bytes, too short for the 8-byte header length")
    (length,) = struct.unpack("<Q", prefix)
    if length > MAX_HEADER_BYTES:
        raise HeaderError(
            f"{path}: header length field says {length} bytes (limit {MAX_HEADER_BYTES}): not a safetensors file, or corrupt"
        )
    if length > file_size - 8:
        raise HeaderError(f"{path}: header length field says {length} bytes but only {file_size - 8} follow (truncated)")
    return length


def _read_exactly(transport: CheckTarget, path: str, offset: int, size: int) -> bytes:
    """Read `size` bytes from `offset`, in as many calls as the transport needs (it may return short reads)."""
    chunks: list[bytes] = []
    got = 0
    while got < size:
        chunk = transport.read_from(path, offset + got, size - got)
        if not chunk:
            raise HeaderError(f"{path}: header ends after {got} of {size} bytes (truncated)")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _parse_entries(path: str, raw: bytes) -> tuple[dict[str, TensorInfo], dict[str, str], int]:
    """Tensors, metadata and the end of the data section, validating each entry's fields."""
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HeaderError(f"{path}: header is not valid JSON ({exc})") from exc
    if not isinstance(document, dict):
        raise HeaderError(f"{path}: header is a JSON {type(document).__name__}, not an object")
    metadata = document.pop(METADATA_KEY, None) or {}
    tensors: dict[str, TensorInfo] = {}
    data_end = 0
    for name, entry in document.items():
        tensors[name], end = _parse_entry(path, name, entry)
        data_end = max(data_end, end)
    return tensors, metadata if isinstance(metadata, dict) else {}, data_end


def _parse_entry(path: str, name: str, entry: object) -> tuple[TensorInfo, int]:
    if not isinstance(entry, dict):
        raise HeaderError(f"{path}: header entry {name!r} is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str):
        raise HeaderError(f"{path}: tensor {name!r} has no dtype")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise HeaderError(f"{path}: tensor {name!r} has an invalid shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets) and 0 <= offsets[0] <= offsets[1]):
        raise HeaderError(f"{path}: tensor {name!r} has invalid data_offsets {offsets!r}")
    return TensorInfo(dtype=dtype, shape=shape), offsets[1]
