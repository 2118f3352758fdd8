"""A storage on any fsspec filesystem (``memory://``, ``file://``, ``s3://`` ...).

The entry policy lives in :class:`~functionfuse.storage.base.Storage`; this
class only maps its primitives onto fsspec calls.  Publishing writes the
object under a hidden temporary name that carries a UUID and the pid (so
concurrent writers never share a temp file) and then moves it into place.

Every primitive runs inside :meth:`FsspecStorage._io`, which hands errors of
the filesystem to the :meth:`~functionfuse.storage.base.Storage._failure`
hook: a subclass for a remote filesystem (see
:class:`~functionfuse.storage.s3store.S3Storage`) turns connection,
credential and missing-bucket errors into :class:`StorageError` messages that
name the endpoint and say what to fix.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from contextlib import contextmanager
from typing import Any, Iterator

from ..errors import FunctionFuseError, StorageConfigError
from .base import Storage

__all__ = ["FsspecStorage"]


class FsspecStorage(Storage):
    """Storage rooted at an fsspec URL.

    Parameters
    ----------
    url : str
        Root of the storage, e.g. ``"memory://cache"``.
    storage_options : dict, optional
        Keyword arguments for the filesystem (``fsspec.core.url_to_fs``).
    """

    def __init__(self, url: str, storage_options: dict | None = None) -> None:
        super().__init__()
        if not isinstance(url, str) or not url:
            raise StorageConfigError(f"storage url must be a non-empty string, got {url!r}")
        self.url = url
        self.storage_options = dict(storage_options or {})
        self._fs: Any = None
        self._root: str | None = None
        self._pid = 0

    def _constructor_args(self) -> tuple[tuple, dict]:
        return (self.url,), {"storage_options": self.storage_options}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    def _connect(self) -> None:
        import fsspec

        fs, root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        self._fs, self._root = fs, root.rstrip("/") or "/"

    def _connected(self) -> None:
        # A process forked after the first use must not reuse the parent's
        # filesystem object (its event loop thread and connections stay behind).
        pid = os.getpid()
        if self._fs is None or self._pid != pid:
            self._fs = None
            self._connect()
            self._pid = pid

    @property
    def fs(self) -> Any:
        if self._fs is None or self._pid != os.getpid():
            self._connected()
        return self._fs

    @property
    def root(self) -> str:
        if self._root is None:
            self._connected()
        return self._root  # type: ignore[return-value]

    @contextmanager
    def _io(self, action: str, path: str) -> Iterator[None]:
        """Run one filesystem call; errors go through :meth:`_failure`."""
        try:
            yield
        except FunctionFuseError:
            raise
        except Exception as exc:
            err = self._failure(exc, action, path)
            if err is None:
                raise
            raise err from exc

    def _missing(self, exc: FileNotFoundError, action: str, path: str) -> None:
        """Re-raise a FileNotFoundError that means more than "no such object"."""
        err = self._failure(exc, action, path)
        if err is not None:
            raise err from exc

    def _join(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def _listdir(self, path: str) -> list[str]:
        with self._io("listing", path):
            fs = self.fs
            try:
                items = fs.ls(path, detail=False, refresh=True)
            except FileNotFoundError as exc:
                self._missing(exc, "listing", path)
                return []
            except TypeError:  # filesystems without ``refresh``
                items = fs.ls(path, detail=False)
        return [posixpath.basename(p.rstrip("/")) for p in items]

    def _read(self, path: str) -> bytes:
        with self._io("reading", path):
            try:
                return self.fs.cat_file(path)
            except FileNotFoundError as exc:
                self._missing(exc, "reading", path)
                raise

    def _read_head(self, path: str, size: int) -> bytes:
        with self._io("reading", path):
            try:
                return self.fs.cat_file(path, start=0, end=size)
            except FileNotFoundError as exc:
                self._missing(exc, "reading", path)
                raise

    def _ensure_dir(self, path: str) -> None:
        with self._io("creating the folder", path):
            self.fs.makedirs(path, exist_ok=True)

    def _publish(self, folder: str, name: str, data: bytes, overwrite: bool = False) -> bool:
        final = posixpath.join(folder, name)
        with self._io("writing", final):
            fs = self.fs
            if not overwrite and fs.exists(final):
                return False
            tmp = posixpath.join(folder, f".tmp-{uuid.uuid4().hex}-{os.getpid()}")
            fs.pipe_file(tmp, data)
            fs.mv(tmp, final)
        return True

    def _delete(self, path: str) -> None:
        with self._io("deleting", path):
            try:
                self.fs.rm_file(path)
            except FileNotFoundError as exc:
                self._missing(exc, "deleting", path)

    def _delete_tree(self, path: str) -> None:
        with self._io("deleting", path):
            try:
                self.fs.rm(path, recursive=True)
            except FileNotFoundError as exc:
                self._missing(exc, "deleting", path)
