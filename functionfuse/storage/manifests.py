"""Manifests of store v2: what a cache key's result is made of (docs/format.md).

A manifest is a UTF-8 JSON document stored at ``manifests/<key[:2]>/<key>.json``.
It is immutable, names no path but object hashes, and is *sealed*: its first
member is ``checksum``, BLAKE3 of the document's bytes without that member,
exactly as written (:func:`seal`), so any language verifies it without
re-serializing JSON.  The body is canonical JSON (sorted keys, ``,``/``:``
separators, UTF-8, no NaN).  This module encodes and decodes manifests; it
does no I/O.

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
    "seal",
    "unseal",
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


_PREFIX = b'{"checksum":"'
_HEX = 64
_BODY_AT = len(_PREFIX) + _HEX + 2  # after '",'


def seal(body: bytes) -> bytes:
    """Stored bytes of a JSON object ``body``: ``{"checksum":"<hex>",`` followed by
    the rest of ``body``, where ``<hex>`` is BLAKE3 of ``body`` exactly as written.

    A reader in any language verifies it without re-serializing anything: take
    the 64 hex characters after the prefix, and hash ``{`` plus everything
    after the comma that follows them.
    """
    import blake3

    if not body.startswith(b"{") or body == b"{}":
        raise ValueError("seal() takes a non-empty JSON object")
    digest = blake3.blake3(body).hexdigest().encode()
    return _PREFIX + digest + b'",' + body[1:]


def unseal(data: bytes | memoryview, what: str) -> bytes:
    """The body of sealed bytes (see :func:`seal`), after checking its checksum."""
    import blake3

    data = bytes(data)
    if not data.startswith(_PREFIX) or data[_BODY_AT - 2 : _BODY_AT] != b'",':
        raise CorruptEntryError(f"{what} does not start with its checksum")
    body = b"{" + data[_BODY_AT:]
    stored = data[len(_PREFIX) : _BODY_AT - 2]
    if blake3.blake3(body).hexdigest().encode() != stored:
        raise CorruptEntryError(f"{what}: checksum mismatch (damaged or truncated)")
    return body


def encode_manifest(fields: dict[str, Any]) -> bytes:
    """The stored bytes of a manifest with ``fields`` (``key``, ``result`` and
    ``parts`` at least); ``format`` and ``version`` are added, and the bytes
    are sealed with their checksum (:func:`seal`).

    Raises ValueError for fields that are not plain JSON (NaN included): a
    manifest is read by programs in any language.
    """
    doc = dict(fields)
    doc["format"], doc["version"] = FORMAT, VERSION
    doc.pop("checksum", None)
    missing = [k for k in ("key", "result", "parts") if k not in doc]
    if missing:
        raise ValueError(f"a manifest needs {', '.join(missing)}")
    return seal(canonical_json(doc))


def decode_manifest(data: bytes | memoryview, key: str, where: str) -> dict[str, Any]:
    """Parse and verify a manifest read from ``where`` for cache key ``key``."""
    body = unseal(data, f"manifest {where}")
    try:
        doc = json.loads(body)
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
