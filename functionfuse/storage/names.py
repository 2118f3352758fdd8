"""Node and workflow names as safe path components.

Names are never trusted as paths.  Every byte outside ``[A-Za-z0-9_.-]`` is
percent-encoded (so ``/``, ``..``, spaces, commas and glob characters are
inert), a leading dot is encoded so no name is hidden or special, and very long
names are shortened with a digest (their exact text lives in the entry's
metadata).  Decoding gives the name back exactly.

>>> encode_name("a/b c")
'a%2Fb%20c'
>>> decode_name(encode_name("../x*?[]"))
'../x*?[]'
>>> encode_name("a~b"), is_shortened(encode_name("a~b"))
('a%7Eb', False)
"""

from __future__ import annotations

import hashlib
import re
from urllib.parse import quote, unquote

__all__ = ["encode_name", "decode_name", "is_shortened", "MAX_ENCODED"]

_PLAIN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,149}")
_SAFE = "_.-"
MAX_ENCODED = 150
_cache: dict[str, str] = {}


def encode_name(name: str) -> str:
    """Encode ``name`` as a single, safe path component."""
    cached = _cache.get(name)
    if cached is not None:
        return cached
    if not isinstance(name, str) or not name:
        raise ValueError(f"a workflow or node name is a non-empty string, got {name!r}")  # "" is no path component
    if _PLAIN.fullmatch(name):
        enc = name
    else:
        # quote() leaves "~" alone (RFC 3986 unreserved); "~" marks a shortened
        # name here, so it is encoded: "a~b" and a shortened name never meet.
        enc = quote(name, safe=_SAFE, errors="surrogatepass").replace("~", "%7E")
        if enc.startswith("."):
            enc = "%2E" + enc[1:]
        if len(enc) > MAX_ENCODED:
            digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:16]
            enc = enc[:100].rstrip("%0123456789ABCDEF") + "~" + digest
    if len(_cache) < 100_000:
        _cache[name] = enc
    return enc


def is_shortened(enc: str) -> bool:
    """True when ``enc`` was shortened and cannot be decoded on its own."""
    return "~" in enc


def decode_name(enc: str) -> str:
    """Inverse of :func:`encode_name` (for names that were not shortened)."""
    return unquote(enc, errors="surrogatepass")
