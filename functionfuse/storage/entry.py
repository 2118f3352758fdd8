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
from typing import Any

from ..errors import CorruptEntryError

__all__ = ["MAGIC", "HEADER", "pack", "unpack", "parse_head", "Entry", "SUFFIX"]

MAGIC = b"FFENTRY1"
HEADER = struct.Struct("<IIQI")
PREFIX = len(MAGIC) + HEADER.size
SUFFIX = ".ffr"


@dataclass(slots=True)
class Entry:
    """A decoded entry (payload not unpickled)."""

    meta_bytes: bytes | memoryview
    pids: list
    payload: memoryview

    @property
    def meta(self) -> dict:
        return json.loads(bytes(self.meta_bytes))


def pack(meta: dict, pids: list, payload: bytes, extra_json: bytes = b"") -> bytes:
    """Encode an entry; ``meta`` gains ``payload_size`` (the CRC-32 lives in the header).

    ``extra_json`` holds pre-encoded JSON members (``"k":v,...``) shared by
    many entries, spliced into the metadata object to save re-encoding them.
    """
    pid_bytes = pickle.dumps(pids, protocol=5) if pids else b""
    meta["payload_size"] = len(payload)
    meta["payload_crc32"] = f"{zlib.crc32(payload):08x}"
    meta_bytes = json.dumps(meta, separators=(",", ":"), default=str).encode()
    if extra_json:
        meta_bytes = meta_bytes[:-1] + b"," + extra_json + b"}" if len(meta_bytes) > 2 else b"{" + extra_json + b"}"
    # In file order, so a reader checks everything after the prefix in one call.
    crc = zlib.crc32(payload, zlib.crc32(pid_bytes, zlib.crc32(meta_bytes)))
    return b"".join(
        (MAGIC, HEADER.pack(len(meta_bytes), len(pid_bytes), len(payload), crc), meta_bytes, pid_bytes, payload)
    )


def parse_head(data: bytes, where: str) -> tuple[int, int, int, int]:
    """Check the fixed prefix; returns (meta_len, pids_len, payload_len, crc)."""
    if len(data) < PREFIX or data[: len(MAGIC)] != MAGIC:
        raise CorruptEntryError(f"{where}: not a functionfuse entry (bad or missing header)")
    return HEADER.unpack_from(data, len(MAGIC))


def unpack(data: bytes, where: str, *, verify: bool = True) -> Entry:
    """Decode and verify an entry read whole; raises CorruptEntryError."""
    meta_len, pids_len, payload_len, crc = parse_head(data, where)
    start = PREFIX
    expected = start + meta_len + pids_len + payload_len
    if len(data) != expected:
        raise CorruptEntryError(
            f"{where}: entry is {len(data)} bytes, its header says {expected} (truncated or extended)"
        )
    view = memoryview(data)
    meta = view[start : start + meta_len]
    pids_view = view[start + meta_len : start + meta_len + pids_len]
    payload = view[start + meta_len + pids_len :]
    if verify:
        actual = zlib.crc32(view[start:])
        if actual != crc:
            raise CorruptEntryError(f"{where}: checksum mismatch (stored {crc:08x}, read {actual:08x})")
    pids = pickle.loads(pids_view) if pids_len else []
    return Entry(meta, pids, payload)


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
