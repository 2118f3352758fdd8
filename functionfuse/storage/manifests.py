"""Manifests of store v2: what a cache key's result is made of (docs/format.md).

A manifest is a UTF-8 JSON document stored at ``manifests/<key[:2]>/<key>.json``.
It is immutable, names no path but object hashes, and carries a ``checksum``:
BLAKE3 of its canonical JSON (sorted keys, ``,``/``:`` separators, UTF-8,
no NaN) without the ``checksum`` member.  This module encodes and decodes
manifests; it does no I/O.

Decoding never trusts the document: a manifest that is not JSON, is of
another format or version, names another key, lacks a required member or has
the wrong checksum raises :class:`~functionfuse.errors.CorruptEntryError`
naming where it was read from, and the node is recomputed.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import CorruptEntryError

__all__ = [
    "FORMAT",
    "VERSION",
    "manifest_path",
    "canonical_json",
    "encode_manifest",
    "decode_manifest",
]

FORMAT = "functionfuse-manifest"
VERSION = 2

#: Members a reader needs, and the JSON type each must have.
REQUIRED: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "version": int,
    "key": str,
    "result": dict,
    "parts": list,
    "checksum": str,
}
_PART_REQUIRED: dict[str, type | tuple[type, ...]] = {"format": str, "object": str, "size": int, "xxh3": str}


def manifest_path(key: str) -> str:
    """Path of a key's manifest, relative to the store root.

    >>> manifest_path("3f9a0c1d2e3f40516273849aabbccdde")
    'manifests/3f/3f9a0c1d2e3f40516273849aabbccdde.json'
    """
    if len(key) < 3 or not all(c in "0123456789abcdef" for c in key):
        raise ValueError(f"a cache key is lowercase hex, got {key!r}")
    return f"manifests/{key[:2]}/{key}.json"


def canonical_json(doc: dict) -> bytes:
    """The canonical bytes of a JSON document (what checksums are taken over).

    >>> canonical_json({"b": 1, "a": [1.5, "é"]})
    b'{"a":[1.5,"\\xc3\\xa9"],"b":1}'
    """
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _checksum(doc: dict) -> str:
    import blake3

    body = {k: v for k, v in doc.items() if k != "checksum"}
    return blake3.blake3(canonical_json(body)).hexdigest()


def encode_manifest(fields: dict[str, Any]) -> bytes:
    """The stored bytes of a manifest with ``fields`` (``key``, ``result`` and
    ``parts`` at least); ``format``, ``version`` and ``checksum`` are added.

    Raises ValueError for fields that are not plain JSON (NaN included): a
    manifest is read by programs in any language.
    """
    doc = dict(fields)
    doc["format"], doc["version"] = FORMAT, VERSION
    doc.pop("checksum", None)
    missing = [k for k in ("key", "result", "parts") if k not in doc]
    if missing:
        raise ValueError(f"a manifest needs {', '.join(missing)}")
    doc["checksum"] = _checksum(doc)
    return canonical_json(doc)


def decode_manifest(data: bytes | memoryview, key: str, where: str) -> dict[str, Any]:
    """Parse and verify a manifest read from ``where`` for cache key ``key``."""
    try:
        doc = json.loads(bytes(data))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptEntryError(f"manifest {where} is not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise CorruptEntryError(f"manifest {where} is not a JSON object")
    for name, kind in REQUIRED.items():
        if not isinstance(doc.get(name), kind) or isinstance(doc.get(name), bool):
            raise CorruptEntryError(f"manifest {where}: member {name!r} is missing or not a {_kind(kind)}")
    if doc["format"] != FORMAT or doc["version"] != VERSION:
        raise CorruptEntryError(
            f"manifest {where} is {doc['format']!r} version {doc['version']}, not {FORMAT!r} version {VERSION}"
        )
    if doc["key"] != key:
        raise CorruptEntryError(f"manifest {where} is for key {doc['key']!r}, not {key!r}")
    try:
        expected = _checksum(doc)
    except ValueError as exc:  # NaN or another non-JSON value decoded from a damaged file
        raise CorruptEntryError(f"manifest {where}: {exc}") from None
    if doc["checksum"] != expected:
        raise CorruptEntryError(f"manifest {where}: checksum mismatch (stored {doc['checksum'][:12]}, computed {expected[:12]})")
    for i, part in enumerate(doc["parts"]):
        if not isinstance(part, dict):
            raise CorruptEntryError(f"manifest {where}: part {i} is not an object")
        for name, kind in _PART_REQUIRED.items():
            if not isinstance(part.get(name), kind) or isinstance(part.get(name), bool):
                raise CorruptEntryError(f"manifest {where}: part {i} member {name!r} is missing or not a {_kind(kind)}")
    return doc


def _kind(kind: type | tuple[type, ...]) -> str:
    names = {str: "string", int: "integer", dict: "object", list: "array"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)
