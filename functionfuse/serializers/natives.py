"""Native model and table formats of result parts (store v2): placeholder tables.

Filled in by the native-formats work (skops, safetensors, boosting models,
polars, xarray).  :mod:`~functionfuse.serializers.formats` consults
:data:`TOPS` (top-level module names of the types handled here),
:func:`classify`, :data:`ENCODERS` and :data:`DECODERS`.
"""

from __future__ import annotations

from typing import IO, Any, Callable

TOPS: frozenset[str] = frozenset()
ENCODERS: dict[str, Callable[[Any, IO[bytes]], None]] = {}
DECODERS: dict[str, Callable[[IO[bytes], dict], Any]] = {}
#: Formats whose decoding never runs code from the file (allowed in safe mode).
SAFE_FORMATS: frozenset[str] = frozenset()


def classify(x: Any, top: str) -> tuple[str, Any, dict] | str | None:
    """``(format, payload, info)``, a reason to pickle (``str``), or None (unknown type)."""
    return None
