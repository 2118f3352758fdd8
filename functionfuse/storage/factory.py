"""``storage_factory``: the original package's dictionary interface.

Every option of every kind is declared once, in :data:`OPTIONS`, with the
types it accepts; :func:`check_options` checks a configuration against that
table before any storage is created (so nothing is connected to, started or
written for a bad configuration).
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from typing import Any

from ..errors import StorageConfigError
from .base import Storage

__all__ = ["storage_factory", "check_options", "check_option", "Option", "OPTIONS", "KINDS"]


@dataclass(frozen=True)
class Option:
    """How one storage option is checked.

    ``types`` are the accepted types (``bool`` is accepted only where it is
    listed, although it is an ``int``), ``expected`` describes them in error
    messages, ``example`` is a valid value written as Python, ``required`` says
    whether the option must be given and ``none_ok`` whether ``None`` is
    accepted (meaning "the default").
    """

    types: tuple[type, ...]
    expected: str
    example: str
    required: bool = False
    none_ok: bool = False


_PATH = Option((str, os.PathLike), "a str or os.PathLike folder path", "'/data/cache'", required=True)
_DURABLE = Option((bool,), "a bool (True or False)", "True")
_SAFE = Option((bool,), "a bool (True or False)", "True")
_LEASE = Option((bool, int, float), "True, False or a time to live in seconds", "60")
_COMPRESSION = Option(
    (str, dict), "None, 'zstd', 'gzip', 'lz4' or a preset dict", "{'codec': 'zstd', 'level': 3}", none_ok=True
)

#: kind -> (description, {option: Option}), options in the order they are listed.
OPTIONS: dict[str, tuple[str, dict[str, Option]]] = {
    "file": (
        "a folder on a disk every process can reach",
        {"path": _PATH, "durable": _DURABLE, "safe": _SAFE, "compression": _COMPRESSION, "lease": _LEASE},
    ),
    "S3": (
        "an S3 bucket/prefix through s3fs",
        {
            "path": Option(
                (str,),
                "a string like '/bucket/prefix' or 's3://bucket/prefix'",
                "'/bucket/prefix'",
                required=True,
            ),
            "s3fs": Option(
                (dict,),
                "a dict of s3fs.S3FileSystem keyword arguments ({} for the defaults)",
                "{'endpoint_url': 'http://host:9000', 'key': ..., 'secret': ...}",
                required=True,
                none_ok=True,
            ),
            "safe": _SAFE,
            "compression": _COMPRESSION,
            "lease": _LEASE,
        },
    ),
    "ray": (
        "file storage whose I/O runs in Ray tasks",
        {
            "remoteArgs": Option(
                (dict,),
                "a dict of Ray task options ({} for Ray's defaults)",
                "{'resources': {'disk': 0.01}}",
                required=True,
            ),
            "path": _PATH,
            "rayInitArgs": Option(
                (dict,), "a dict of ray.init arguments", "{'address': 'auto'}", none_ok=True
            ),
            "durable": _DURABLE,
            "timeout": Option((int, float), "a number of seconds", "30", none_ok=True),
            "safe": _SAFE,
            "compression": _COMPRESSION,
        },
    ),
}

#: kind -> (required options, optional options, description); derived from :data:`OPTIONS`.
KINDS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    kind: (
        tuple(n for n, o in opts.items() if o.required),
        tuple(n for n, o in opts.items() if not o.required),
        desc,
    )
    for kind, (desc, opts) in OPTIONS.items()
}

_TOP_LEVEL = ("kind", "options")
_TRUE_WORDS = {"true", "yes", "on", "1", "y", "t"}
_FALSE_WORDS = {"false", "no", "off", "0", "n", "f", ""}


def _kinds_text() -> str:
    return "; ".join(
        f"{kind!r} (options: {', '.join(req + tuple(o + '?' for o in opt))}) - {desc}"
        for kind, (req, opt, desc) in KINDS.items()
    )


def _takes(kind: str) -> str:
    required, optional, _ = KINDS[kind]
    return ", ".join(required + tuple(o + " (optional)" for o in optional))


def _close(word: Any, choices: list[str]) -> str | None:
    """The choice ``word`` most likely misspells (case and surrounding blanks ignored), or None."""
    lowered = {c.lower(): c for c in choices}
    match = difflib.get_close_matches(str(word).strip().lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[match[0]] if match else None


def _got(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def check_option(kind: str, name: str, value: Any) -> None:
    """Check the type of option ``name`` of storage kind ``kind`` against :data:`OPTIONS`.

    Raises
    ------
    StorageConfigError
        ``value`` has the wrong type; the message names the option, the kind,
        the type given and the type expected, and shows a valid value.

    Examples
    --------
    >>> check_option("file", "durable", True)
    >>> try:
    ...     check_option("file", "durable", "no")
    ... except StorageConfigError as exc:
    ...     print(exc)  # doctest: +NORMALIZE_WHITESPACE
    option 'durable' of storage kind 'file' must be a bool (True or False), got 'no' (str);
    write {'durable': False}, without quotes, or leave the option out for its default
    """
    spec = OPTIONS[kind][1][name]
    if value is None and spec.none_ok:
        return
    if isinstance(value, spec.types) and (bool in spec.types or not isinstance(value, bool)):
        if name == "compression":  # the values too: a codec that exists, a level in its range
            from .codecs import normalize

            normalize(value)
        return
    expected = spec.expected + (" or None" if spec.none_ok else "")
    fix = f"e.g. {{{name!r}: {spec.example}}}"
    if spec.types == (bool,):
        word = str(value).strip().lower() if isinstance(value, (str, int, float)) else None
        if word in _TRUE_WORDS or word in _FALSE_WORDS:
            quoted = ", without quotes" if isinstance(value, str) else ""
            fix = f"write {{{name!r}: {word in _TRUE_WORDS}}}{quoted}"
    if not spec.required:
        fix += ", or leave the option out for its default"
    raise StorageConfigError(
        f"option {name!r} of storage kind {kind!r} must be {expected}, got {_got(value)}; {fix}"
    )


def check_options(opt: Any) -> tuple[str, dict[str, Any]]:
    """Check a ``storage_factory`` configuration; return its ``(kind, options)``.

    Checks, in order: that ``opt`` is a dict of only ``kind`` and ``options``;
    the kind; that ``options`` is a dict; unknown options (with a "did you
    mean" for misspellings); missing required options; each option's type.
    Values beyond their types (an empty path, a negative timeout ...) are
    checked by the storage's constructor.

    Raises
    ------
    StorageConfigError
        The first problem found, with how to fix it.

    Examples
    --------
    >>> check_options({"kind": "file", "options": {"path": "cache"}})
    ('file', {'path': 'cache'})
    >>> try:
    ...     check_options({"kind": "file", "options": {"pth": "cache"}})
    ... except StorageConfigError as exc:
    ...     print(exc)  # doctest: +NORMALIZE_WHITESPACE
    unknown option 'pth' for storage kind 'file'; did you mean 'path'?
    It takes path, durable (optional), safe (optional), compression (optional), lease (optional)
    """
    example = "{'kind': 'file', 'options': {'path': ...}}"
    if not isinstance(opt, dict):
        raise StorageConfigError(f"storage_factory takes a dict like {example}, got {_got(opt)}")
    for key in opt:
        if key not in _TOP_LEVEL:
            close = _close(key, [k for k in _TOP_LEVEL if k not in opt])
            hint = f"did you mean {close!r}? " if close else ""
            raise StorageConfigError(
                f"unknown key {key!r} in the storage configuration; {hint}"
                f"it takes 'kind' and 'options', like {example}"
            )
    if "kind" not in opt:
        raise StorageConfigError(f"the storage configuration has no 'kind'; valid kinds: {_kinds_text()}")
    kind = opt["kind"]
    if not isinstance(kind, str) or kind not in OPTIONS:
        close = _close(kind, list(OPTIONS)) if isinstance(kind, str) else None
        hint = f"did you mean {close!r}? " if close else ""
        raise StorageConfigError(f"unknown storage kind {kind!r}; {hint}valid kinds: {_kinds_text()}")
    options = opt.get("options")
    declared = OPTIONS[kind][1]
    if not isinstance(options, dict):
        required = ", ".join(repr(n) for n, o in declared.items() if o.required)
        got = f", got {_got(options)}" if "options" in opt else ""
        raise StorageConfigError(f"storage kind {kind!r} needs an 'options' dict with {required}{got}")
    unknown = [n for n in options if n not in declared]
    if unknown:
        free = [n for n in declared if n not in options]
        close = {n: _close(n, free) for n in unknown}
        if len(unknown) == 1:
            name = unknown[0]
            hint = f"; did you mean {close[name]!r}? It" if close[name] else "; it"
            what = f"option {name!r}"
        else:
            hint = "; it"
            what = "options " + ", ".join(
                f"{n!r}" + (f" (did you mean {close[n]!r}?)" if close[n] else "") for n in unknown
            )
        raise StorageConfigError(f"unknown {what} for storage kind {kind!r}{hint} takes {_takes(kind)}")
    missing = [n for n, o in declared.items() if o.required and n not in options]
    if missing:
        raise StorageConfigError(
            f"storage kind {kind!r} is missing option(s) {', '.join(map(repr, missing))}; "
            f"it takes {_takes(kind)}"
        )
    for name, value in options.items():
        check_option(kind, name, value)
    return kind, options


def storage_factory(opt: dict[str, Any]) -> Storage:
    """Create a storage from ``{"kind": ..., "options": {...}}``.

    Parameters
    ----------
    opt : dict
        ``{"kind": "file", "options": {"path": "storage"}}``.  Valid kinds:
        ``"file"``, ``"S3"`` (``{"kind": "S3", "options": {"path": "/bucket/prefix",
        "s3fs": {...}}}``, ``path`` may also be ``"s3://bucket/prefix"`` and ``s3fs``
        holds ``s3fs.S3FileSystem`` keyword arguments: an
        :class:`~functionfuse.storage.s3store.S3Storage`), ``"ray"``
        (``{"kind": "ray", "options": {"path": P, "remoteArgs": {"resources":
        {"disk": 0.01}}, "rayInitArgs": {...}}}``: a
        :class:`~functionfuse.storage.raystore.RayStorage`).  The options of
        each kind and their types are in :data:`OPTIONS`.

    Returns
    -------
    Storage

    Raises
    ------
    StorageConfigError
        An unknown kind or option (with a "did you mean" for misspellings), a
        missing option, an option of the wrong type, or a bad path; the
        message says how to fix it.  Nothing is created, started or connected
        to before the whole configuration is checked.

    Examples
    --------
    >>> import tempfile
    >>> storage = storage_factory({"kind": "file", "options": {"path": tempfile.mkdtemp()}})
    >>> storage.list_tasks("wf", "*")
    []
    """
    kind, options = check_options(opt)
    if kind == "S3":
        from .s3store import S3Storage

        return S3Storage(
            options["path"], options["s3fs"], safe=options.get("safe", False), compression=options.get("compression"),
            lease=options.get("lease", False),
        )
    if kind == "ray":
        from .raystore import RayStorage

        return RayStorage(
            options["path"],
            options["remoteArgs"],
            options.get("rayInitArgs"),
            durable=options.get("durable", False),
            timeout=options.get("timeout"),
            safe=options.get("safe", False),
            compression=options.get("compression"),
        )
    from .local import FileStorage

    return FileStorage(
        options["path"],
        durable=options.get("durable", False),
        safe=options.get("safe", False),
        compression=options.get("compression"),
        lease=options.get("lease", False),
    )
