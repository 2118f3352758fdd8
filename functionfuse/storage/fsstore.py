"""A storage on any fsspec filesystem (``memory://``, ``s3://`` ...).

The layout and policy live in :class:`~functionfuse.storage.base.Storage`;
this class opens the filesystem from a URL and runs the storage's calls
through :meth:`FsspecStorage._io`, which hands errors of the filesystem to the
:meth:`~functionfuse.storage.base.Storage._failure` hook: a subclass for a
remote filesystem (see :class:`~functionfuse.storage.s3store.S3Storage`) turns
connection, credential and missing-bucket errors into :class:`StorageError`
messages that name the endpoint and say what to fix.  On a filesystem other
than S3, publishing is "look, then write", atomic only as far as the
filesystem's ``pipe_file`` is (``memory://`` is, for tests).
"""

from __future__ import annotations

import os
import posixpath
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

    def _join(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def _object_store(self) -> Any:
        from .objects import ObjectStore

        with self._io("opening", self.url):
            return ObjectStore(self.fs, self.root)
