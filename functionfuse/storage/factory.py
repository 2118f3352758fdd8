"""``storage_factory``: the original package's dictionary interface."""

from __future__ import annotations

from typing import Any

from ..errors import StorageConfigError
from .base import Storage

__all__ = ["storage_factory", "KINDS"]

#: kind -> (required options, optional options, description)
KINDS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    "file": (("path",), ("durable",), "a folder on a disk every process can reach"),
    "S3": (("path", "s3fs"), (), "an S3 bucket/prefix through s3fs"),
    "ray": (
        ("remoteArgs", "path"),
        ("rayInitArgs", "durable", "timeout"),
        "file storage whose I/O runs in Ray tasks",
    ),
}

_AVAILABLE = {"file", "S3", "ray"}


def _kinds_text() -> str:
    return "; ".join(
        f"{kind!r} (options: {', '.join(req + tuple(o + '?' for o in opt))}) - {desc}"
        for kind, (req, opt, desc) in KINDS.items()
    )


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
        :class:`~functionfuse.storage.raystore.RayStorage`).

    Returns
    -------
    Storage

    Raises
    ------
    StorageConfigError
        An unknown kind, a missing or unknown option, or a bad path; the message
        lists the valid kinds and options.

    Examples
    --------
    >>> import tempfile
    >>> storage = storage_factory({"kind": "file", "options": {"path": tempfile.mkdtemp()}})
    >>> storage.list_tasks("wf", "*")
    []
    """
    if not isinstance(opt, dict):
        raise StorageConfigError(
            f"storage_factory takes a dict like {{'kind': 'file', 'options': {{'path': ...}}}}, got {opt!r}"
        )
    kind = opt.get("kind")
    if kind not in KINDS:
        raise StorageConfigError(f"unknown storage kind {kind!r}; valid kinds: {_kinds_text()}")
    options = opt.get("options")
    required, optional, _ = KINDS[kind]
    if not isinstance(options, dict):
        raise StorageConfigError(
            f"storage kind {kind!r} needs an 'options' dict with {', '.join(map(repr, required))}"
        )
    missing = [o for o in required if o not in options]
    if missing:
        raise StorageConfigError(
            f"storage kind {kind!r} is missing option(s) {', '.join(map(repr, missing))}; "
            f"it takes {', '.join(required + tuple(o + ' (optional)' for o in optional))}"
        )
    unknown = sorted(set(options) - set(required) - set(optional))
    if unknown:
        raise StorageConfigError(
            f"storage kind {kind!r} got unknown option(s) {', '.join(map(repr, unknown))}; "
            f"it takes {', '.join(required + tuple(o + ' (optional)' for o in optional))}"
        )
    if kind not in _AVAILABLE:
        raise StorageConfigError(
            f"storage kind {kind!r} is not available in functionfuse "
            f"{_version()} yet; available kinds: {', '.join(sorted(_AVAILABLE))}"
        )
    if kind == "S3":
        from .s3store import S3Storage

        return S3Storage(options["path"], options["s3fs"])
    if kind == "ray":
        from .raystore import RayStorage

        if not isinstance(options["remoteArgs"], dict):
            raise StorageConfigError(
                "option 'remoteArgs' of storage kind 'ray' must be a dict of Ray task options, "
                f"e.g. {{'resources': {{'disk': 0.01}}}} (or {{}} for Ray's defaults), "
                f"got {options['remoteArgs']!r}"
            )

        return RayStorage(
            options["path"],
            options["remoteArgs"],
            options.get("rayInitArgs"),
            durable=bool(options.get("durable", False)),
            timeout=options.get("timeout"),
        )
    from .local import FileStorage

    return FileStorage(options["path"], durable=bool(options.get("durable", False)))


def _version() -> str:
    from .. import __version__

    return __version__
