"""How serializers name a value's type in manifests and messages (one rule for every format)."""

from __future__ import annotations

from typing import Any

__all__ = ["type_name"]


def type_name(x: Any) -> str:
    """``module.QualName`` of ``type(x)`` (``builtins.`` left out)."""
    t = type(x)
    module = getattr(t, "__module__", "") or ""
    qual = getattr(t, "__qualname__", t.__name__)
    return qual if module == "builtins" else f"{module}.{qual}"
