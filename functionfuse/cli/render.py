"""Human output of the command line: aligned tables, sizes and ages people can read."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

__all__ = ["age", "parse_age", "parse_size", "size", "table", "timestamp"]

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def size(n: int | None) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    if n is None:
        return "-"
    value = float(n)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def timestamp(iso: Any) -> float | None:
    """Seconds since the epoch of an ISO time as stored (``...Z``), or None."""
    from ..storage.base import iso_seconds

    return iso_seconds(iso)


def age(iso: Any, now: float | None = None) -> str:
    """``'2026-11-27T10:00:00Z'`` -> ``'3 h ago'``."""
    when = timestamp(iso)
    if when is None:
        return "-"
    seconds = max(0.0, (time.time() if now is None else now) - when)
    for unit, span in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= span:
            return f"{int(seconds // span)} {unit} ago"
    return f"{int(seconds)} s ago"


def duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "-"
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 10**6, "mb": 10**6, "mib": 1 << 20,
               "g": 10**9, "gb": 10**9, "gib": 1 << 30, "t": 10**12, "tb": 10**12, "tib": 1 << 40}
_AGE_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _split_number(text: str) -> tuple[float, str]:
    text = text.strip().lower()
    i = len(text)
    while i and not (text[i - 1].isdigit() or text[i - 1] == "."):
        i -= 1
    return float(text[:i]), text[i:].strip()


def parse_size(text: str) -> int:
    """``'10GB'`` -> 10**10, ``'512MiB'`` -> 2**29 (ValueError naming the accepted units)."""
    try:
        number, unit = _split_number(text)
        return int(number * _SIZE_UNITS[unit])
    except (ValueError, KeyError):
        raise ValueError(f"not a size: {text!r} (use e.g. 500MB, 10GB, 2GiB)") from None


def parse_age(text: str) -> float:
    """``'30d'`` -> seconds (ValueError naming the accepted units)."""
    try:
        number, unit = _split_number(text)
        return number * _AGE_UNITS[unit or "s"]
    except (ValueError, KeyError):
        raise ValueError(f"not an age: {text!r} (use e.g. 90s, 30min, 12h, 30d, 2w)") from None


def table(rows: Sequence[Sequence[Any]], header: Sequence[str], right: Sequence[int] = ()) -> str:
    """Rows as aligned columns under ``header``; columns in ``right`` are right-aligned."""
    width = len(header)
    cells = [[str(h) for h in header]] + [
        (["" if c is None else str(c) for c in row] + [""] * width)[:width] for row in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for r in cells:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)
