"""The on-storage format of one node result (an *entry*).

One object holds everything, so a cache hit is a single read::

    MAGIC (8 bytes)  b"FFENTRY1"
    <IIQI>           meta length, persistent-id length, payload length, CRC-32
    meta             UTF-8 JSON: node, key, lineage, serializer, sizes, time ...
    pids             pickled list of persistent ids (may be empty)
    payload          the pickled result

The CRC-32 covers meta, pids and payload; together with the lengths it
detects truncation and corruption.  (CRC-32 runs at ~6 GB/s here, far above
the disk, and the key, not a content hash, is the identity of a result.)
Metadata can be read from the first few hundred bytes without touching the
payload.
"""

from __future__ import annotations

import json
import pickle
import struct
import zlib
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as _json_str
from typing import Any

from ..errors import CorruptEntryError

__all__ = ["MAGIC", "HEADER", "pack", "unpack", "parse_head", "Entry", "SUFFIX", "json_object"]

MAGIC = b"FFENTRY1"
HEADER = struct.Struct("<IIQI")
PREFIX = len(MAGIC) + HEADER.size
SUFFIX = ".ffr"
_MAGIC_LEN = len(MAGIC)
_unpack_header = HEADER.unpack_from
_pack_header = HEADER.pack
_crc32 = zlib.crc32
_SMALL = 1 << 16  # below this, copying slices of an entry beats memoryviews

_json_encoder = json.JSONEncoder(separators=(",", ":"), default=str)
try:
    from json.encoder import c_make_encoder as _c_make_encoder
except ImportError:  # pragma: no cover - a Python without the _json accelerator
    _c_make_encoder = None


# json.dumps(obj, separators=(",", ":"), default=str) builds this C encoder on
# every call (most of its cost for small objects); here it is built once.  It
# keeps no cycle markers (metadata has no cycles: one would raise RecursionError
# instead of ValueError), so threads can share it.
_c_json = _c_make_encoder(None, str, _json_str, None, ":", ",", False, False, True) if _c_make_encoder else None


def json_object(obj: dict) -> str:
    """``json.dumps(obj, separators=(",", ":"), default=str)``, faster for metadata."""
    if _c_json is None:  # pragma: no cover
        return _json_encoder.encode(obj)
    return "".join(_c_json(obj, 0))


@dataclass(slots=True)
class Entry:
    """A decoded entry (payload not unpickled)."""

    meta_bytes: bytes | memoryview
    pids: list
    payload: bytes | memoryview  # bytes for small entries

    @property
    def meta(self) -> dict:
        return json.loads(bytes(self.meta_bytes))


def pack(meta: dict, pids: list, payload: bytes, extra_json: bytes = b"") -> bytes:
    """Encode an entry; ``meta`` gains ``payload_size`` (the CRC-32 lives in the header).

    ``extra_json`` holds pre-encoded JSON members (``"k":v,...``) shared by
    many entries, spliced into the metadata object to save re-encoding them.
    """
    pid_bytes = pickle.dumps(pids, protocol=5) if pids else b""
    payload_crc = _crc32(payload)
    meta["payload_size"] = len(payload)
    meta["payload_crc32"] = f"{payload_crc:08x}"
    meta_bytes = json_object(meta).encode()
    if extra_json:
        meta_bytes = meta_bytes[:-1] + b"," + extra_json + b"}" if len(meta_bytes) > 2 else b"{" + extra_json + b"}"
    # In file order, so a reader checks everything after the prefix in one call.
    crc = _crc32(payload, _crc32(pid_bytes, _crc32(meta_bytes)))
    return b"".join(
        (MAGIC, _pack_header(len(meta_bytes), len(pid_bytes), len(payload), crc), meta_bytes, pid_bytes, payload)
    )


def parse_head(data: bytes, where: str) -> tuple[int, int, int, int]:
    """Check the fixed prefix; returns (meta_len, pids_len, payload_len, crc)."""
    if len(data) < PREFIX or data[: len(MAGIC)] != MAGIC:
        raise CorruptEntryError(f"{where}: not a functionfuse entry (bad or missing header)")
    return HEADER.unpack_from(data, len(MAGIC))


def unpack(data: bytes, where: str, *, verify: bool = True) -> Entry:
    """Decode and verify an entry read whole; raises CorruptEntryError."""
    size = len(data)
    if size < PREFIX or data[:_MAGIC_LEN] != MAGIC:
        parse_head(data, where)  # raises, with the message
    meta_len, pids_len, payload_len, crc = _unpack_header(data, _MAGIC_LEN)
    meta_end = PREFIX + meta_len
    pids_end = meta_end + pids_len
    if size != pids_end + payload_len:
        raise CorruptEntryError(
            f"{where}: entry is {size} bytes, its header says {pids_end + payload_len} (truncated or extended)"
        )
    # Small entries (the common case) are sliced as bytes: cheaper than views.
    view = data if size < _SMALL else memoryview(data)
    if verify:
        actual = _crc32(view[PREFIX:])
        if actual != crc:
            raise CorruptEntryError(f"{where}: checksum mismatch (stored {crc:08x}, read {actual:08x})")
    pids = pickle.loads(view[meta_end:pids_end]) if pids_len else []
    return Entry(view[PREFIX:meta_end], pids, view[pids_end:])


def read_meta_and_pids(head: bytes, where: str) -> tuple[dict, list, int]:
    """Metadata and persistent ids from the start of an entry.

    ``head`` must hold at least the prefix, the meta and the pids; returns the
    number of bytes needed when it is too short (as the third value, with an
    empty meta).
    """
    meta_len, pids_len, _payload_len, _crc = parse_head(head, where)
    need = PREFIX + meta_len + pids_len
    if len(head) < need:
        return {}, [], need
    try:
        meta = json.loads(head[PREFIX : PREFIX + meta_len])
        pids = pickle.loads(head[PREFIX + meta_len : need]) if pids_len else []
    except (ValueError, pickle.UnpicklingError, EOFError) as exc:
        raise CorruptEntryError(f"{where}: unreadable metadata ({exc})") from None
    return meta, pids, 0
