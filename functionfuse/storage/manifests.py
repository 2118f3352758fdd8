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
import re
from typing import Any

import blake3
import orjson

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
_KEY = re.compile(r"[0-9a-f]{3,}")


def manifest_path(key: str) -> str:
    """Path of a key's manifest, relative to the store root.

    >>> manifest_path("3f9a0c1d2e3f40516273849aabbccdde")
    'manifests/3f/3f9a0c1d2e3f40516273849aabbccdde.json'
    """
    if not _KEY.fullmatch(key):
        raise ValueError(f"a cache key is lowercase hex, got {key!r}")
    return f"manifests/{key[:2]}/{key}.json"


def canonical_json(doc: dict) -> bytes:
    """The canonical bytes of a JSON document (what checksums are taken over).

    >>> canonical_json({"b": 1, "a": [1.5, "é"]})
    b'{"a":[1.5,"\\xc3\\xa9"],"b":1}'
    """
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def fast_canonical_json(doc: dict) -> bytes:
    """:func:`canonical_json` with orjson, for documents whose floats are known finite
    (run records): orjson would write a NaN as ``null`` instead of refusing it."""
    try:
        return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    except TypeError as exc:  # what only json writes: integers beyond 64 bits
        try:
            return canonical_json(doc)
        except ValueError:
            raise TypeError(str(exc)) from None


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
    if not body.startswith(b"{") or body == b"{}":
        raise ValueError("seal() takes a non-empty JSON object")
    digest = blake3.blake3(body).hexdigest().encode()
    return _PREFIX + digest + b'",' + body[1:]


def unseal(data: bytes | memoryview, what: str) -> bytes:
    """The body of sealed bytes (see :func:`seal`), after checking its checksum."""
    check(data, what)
    return b"{" + bytes(data[_BODY_AT:])


def _seal_problem(data: bytes | bytearray | memoryview) -> str | None:
    """What is wrong with the seal of ``data`` (see :func:`seal`), or None."""
    view = memoryview(data)
    if view[: len(_PREFIX)] != _PREFIX or view[_BODY_AT - 2 : _BODY_AT] != b'",':
        return " does not start with its checksum"
    hasher = blake3.blake3(b"{")
    hasher.update(view[_BODY_AT:])
    if hasher.hexdigest().encode() != view[len(_PREFIX) : _BODY_AT - 2]:
        return ": checksum mismatch (damaged or truncated)"
    return None


def check(data: bytes | bytearray | memoryview, what: str) -> None:
    """Check the checksum of sealed bytes (see :func:`seal`) without copying them.

    The sealed bytes are themselves a JSON object (with the ``checksum`` member).
    """
    problem = _seal_problem(data)
    if problem is not None:
        raise CorruptEntryError(f"{what}{problem}")


def encode_manifest(fields: dict[str, Any]) -> bytes:
    """The stored bytes of a manifest with ``fields`` (``key``, ``result`` and
    ``parts`` at least); ``format`` and ``version`` are added, and the bytes
    are sealed with their checksum (:func:`seal`).

    Raises TypeError for fields that are not plain JSON: a manifest is read by
    programs in any language.  Floats must be finite: the result tree tags
    NaN and infinities (``{"float": "nan"}``), argument summaries tag them as
    strings, and durations are finite (a NaN given here would be written as
    ``null``).
    """
    doc = dict(fields)
    doc["format"], doc["version"] = FORMAT, VERSION
    doc.pop("checksum", None)
    missing = [k for k in ("key", "result", "parts") if k not in doc]
    if missing:
        raise ValueError(f"a manifest needs {', '.join(missing)}")
    return seal(fast_canonical_json(doc))


def parse_json(data: bytes | bytearray | memoryview, what: str) -> Any:
    """Parse JSON bytes (orjson; Python's json for what orjson refuses, such as integers
    beyond 64 bits); :class:`CorruptEntryError` naming ``what`` when it is not JSON."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(bytes(data))
    except (ValueError, UnicodeDecodeError, TypeError) as exc:
        raise CorruptEntryError(f"{what} is not JSON ({exc})") from None


def manifest_doc(fields: dict[str, Any]) -> dict[str, Any]:
    """The document :func:`decode_manifest` returns for what :func:`encode_manifest` wrote
    from ``fields`` (without decoding the bytes again)."""
    doc = dict(fields)
    doc["format"], doc["version"] = FORMAT, VERSION
    doc.pop("checksum", None)
    return doc


def decode_manifest(data: bytes | bytearray | memoryview, key: str, where: Any) -> dict[str, Any]:
    """Parse and verify a manifest read from ``where`` for cache key ``key``.

    ``where`` (a string, or a callable returning one: built only for an error
    message) says where the bytes were read.
    """
    problem = _seal_problem(data)
    if problem is None:
        try:
            doc = orjson.loads(data)  # the sealed bytes are JSON too: no copy of the body
        except orjson.JSONDecodeError:
            doc = parse_json(data, f"manifest {_text(where)}")
        problem = _doc_problem(doc, key)
        if problem is None:
            del doc["checksum"]
            return doc
    raise CorruptEntryError(f"manifest {_text(where)}{problem}")


def _text(where: Any) -> str:
    return where() if callable(where) else str(where)


def _doc_problem(doc: Any, key: str) -> str | None:
    """What makes ``doc`` not a manifest of ``key``, or None."""
    if type(doc) is not dict:
        return " is not a JSON object"
    for name, kind in REQUIRED.items():
        value = doc.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            return f": member {name!r} is missing or not a {_kind(kind)}"
    if doc["format"] != FORMAT or doc["version"] != VERSION:
        return f" is {doc['format']!r} version {doc['version']}, not {FORMAT!r} version {VERSION}"
    if doc["key"] != key:
        return f" is for key {doc['key']!r}, not {key!r}"
    for i, part in enumerate(doc["parts"]):
        if type(part) is not dict:
            return f": part {i} is not an object"
        for name, kind in _PART_REQUIRED.items():
            value = part.get(name)
            if not isinstance(value, kind) or isinstance(value, bool):
                return f": part {i} member {name!r} is missing or not a {_kind(kind)}"
    return None


def _kind(kind: type | tuple[type, ...]) -> str:
    names = {str: "string", int: "integer", dict: "object", list: "array"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)
