"""TFRecord files and ``tf.train.Example`` protos, read with numpy only.

Why not TensorFlow: importing it costs ~2.3 s, and ``tf.io.parse_example`` must
still copy every record (JPEGs included) out of the file. Here a file is
memory-mapped and each record's features are walked by their length prefixes:
only the pages holding the wanted keys (action, state: ~1% of a LIBERO record)
are ever touched; image bytes are skipped without being read.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_HEADER = struct.Struct("<QI")  # record length, masked CRC32C of the length
_FOOTER = struct.Struct("<I")  # masked CRC32C of the data


class TFRecordError(ValueError):
    """A file is not a well-formed TFRecord file or Example proto."""


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC32C (Castagnoli); pure Python, meant for the 8-byte record headers only."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """The masked CRC that TFRecord stores."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


@dataclass(frozen=True)
class Record:
    """Where one record's data lies in its file, and the CRC the writer stored for it."""

    offset: int
    length: int
    data_crc: int


def open_mapped(path: str | Path) -> mmap.mmap:
    """Map a non-empty file read-only (mmap cannot map an empty file)."""
    with open(path, "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def scan_records(buf: mmap.mmap | bytes, path: str | Path, size: int | None = None) -> Iterator[Record]:
    """Yield the records of a mapped TFRecord file, checking each length's CRC."""
    size = len(buf) if size is None else size
    pos = 0
    while pos < size:
        if pos + _HEADER.size > size:
            raise TFRecordError(f"{path}: truncated record header at byte {pos}")
        length, length_crc = _HEADER.unpack_from(buf, pos)
        if masked_crc32c(bytes(buf[pos : pos + 8])) != length_crc:
            raise TFRecordError(f"{path}: bad length CRC at byte {pos} (not a TFRecord file, or corrupt)")
        start = pos + _HEADER.size
        end = start + length
        if end + _FOOTER.size > size:
            raise TFRecordError(f"{path}: record at byte {pos} runs past the end of the file")
        (data_crc,) = _FOOTER.unpack_from(buf, end)
        yield Record(offset=start, length=length, data_crc=data_crc)
        pos = end + _FOOTER.size


def _varint(buf, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _skip(buf, pos: int, wire_type: int) -> int:
    if wire_type == 0:
        return _varint(buf, pos)[1]
    if wire_type == 1:
        return pos + 8
    if wire_type == 2:
        length, pos = _varint(buf, pos)
        return pos + length
    if wire_type == 5:
        return pos + 4
    raise TFRecordError(f"unsupported protobuf wire type {wire_type}")


def _feature_entries(buf, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(key, value_start, value_end) of each Features map entry of the Example in buf[start:end]."""
    pos = start
    while pos < end:
        tag, pos = _varint(buf, pos)
        if tag != 0x0A:  # Example.features (field 1, length-delimited)
            pos = _skip(buf, pos, tag & 7)
            continue
        length, pos = _varint(buf, pos)
        features_end = pos + length
        while pos < features_end:
            tag, pos = _varint(buf, pos)
            if tag != 0x0A:  # Features.feature map entry (field 1); anything else is skipped
                pos = _skip(buf, pos, tag & 7)
                continue
            length, pos = _varint(buf, pos)
            entry_end = pos + length
            key = b""
            value = (pos, pos)
            while pos < entry_end:
                etag, pos = _varint(buf, pos)
                elen, pos = _varint(buf, pos)
                if etag == 0x0A:
                    key = bytes(buf[pos : pos + elen])
                elif etag == 0x12:
                    value = (pos, pos + elen)
                pos += elen
            yield key, value[0], value[1]


def _parse_feature(buf, start: int, end: int):
    """Decode one Feature: float32 array, int64 array or list of bytes."""
    if start == end:
        return np.zeros(0, dtype=np.float32)
    tag, pos = _varint(buf, start)
    length, pos = _varint(buf, pos)
    kind = tag >> 3
    list_end = pos + length
    if kind == 2:  # FloatList
        return _float_list(buf, pos, list_end)
    if kind == 3:  # Int64List
        return _int64_list(buf, pos, list_end)
    if kind == 1:  # BytesList
        values = []
        while pos < list_end:
            _, pos = _varint(buf, pos)
            n, pos = _varint(buf, pos)
            values.append(bytes(buf[pos : pos + n]))
            pos += n
        return values
    raise TFRecordError(f"unknown Feature kind {kind}")


def _float_list(buf, pos: int, end: int) -> np.ndarray:
    chunks = []
    while pos < end:
        tag, pos = _varint(buf, pos)
        if tag == 0x0A:  # packed (what TF writes)
            n, pos = _varint(buf, pos)
            chunks.append(np.frombuffer(buf, dtype="<f4", count=n // 4, offset=pos))
            pos += n
        elif tag == 0x0D:  # unpacked fixed32, legal protobuf too
            chunks.append(np.frombuffer(buf, dtype="<f4", count=1, offset=pos))
            pos += 4
        else:
            pos = _skip(buf, pos, tag & 7)
    # Copy: the result must not keep the file's mapping alive or change under it.
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)


def _int64_list(buf, pos: int, end: int) -> np.ndarray:
    values = []
    while pos < end:
        tag, pos = _varint(buf, pos)
        if tag == 0x0A:
            n, pos = _varint(buf, pos)
            stop = pos + n
            while pos < stop:
                v, pos = _varint(buf, pos)
                values.append(v)
        elif tag == 0x08:
            v, pos = _varint(buf, pos)
            values.append(v)
        else:
            pos = _skip(buf, pos, tag & 7)
    arr = np.array(values, dtype=np.uint64)
    return arr.astype(np.int64)  # two's complement, as protobuf encodes negatives


def parse_example(buf, record: Record, keys: frozenset[bytes] | set[bytes]) -> dict[str, object]:
    """The wanted features of one Example; every other feature is skipped unread."""
    out: dict[str, object] = {}
    for key, start, end in _feature_entries(buf, record.offset, record.offset + record.length):
        if key in keys:
            out[key.decode()] = _parse_feature(buf, start, end)
    return out


def read_examples(path: str | Path, keys: list[str]) -> Iterator[dict[str, object]]:
    """Parse the given feature keys of every Example in one TFRecord file."""
    wanted = frozenset(k.encode() for k in keys)
    size = Path(path).stat().st_size
    if size == 0:
        return
    with open_mapped(path) as buf:
        for index, record in enumerate(scan_records(buf, path, size)):
            try:
                example = parse_example(buf, record, wanted)
            except (IndexError, TFRecordError) as exc:
                raise TFRecordError(f"{path}: record {index} at byte {record.offset}: malformed Example proto ({exc})") from None
            yield example
