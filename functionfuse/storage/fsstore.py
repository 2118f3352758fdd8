"""A storage on any fsspec filesystem (``memory://``, ``file://``, ``s3://`` ...).

The entry policy lives in :class:`~functionfuse.storage.base.Storage`; this
class only maps its primitives onto fsspec calls.  Publishing writes the
object under a hidden temporary name that carries a UUID and the pid (so
concurrent writers never share a temp file) and then moves it into place.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from typing import Any

from ..errors import StorageConfigError
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

    def _constructor_args(self) -> tuple[tuple, dict]:
        return (self.url,), {"storage_options": self.storage_options}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    def _connect(self) -> None:
        import fsspec

        fs, root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        self._fs, self._root = fs, root.rstrip("/") or "/"

    @property
    def fs(self) -> Any:
        if self._fs is None:
            self._connect()
        return self._fs

    @property
    def root(self) -> str:
        if self._root is None:
            self._connect()
        return self._root  # type: ignore[return-value]

    def _join(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def _listdir(self, path: str) -> list[str]:
        try:
            items = self.fs.ls(path, detail=False, refresh=True)
        except FileNotFoundError:
            return []
        except TypeError:  # filesystems without ``refresh``
            items = self.fs.ls(path, detail=False)
        return [posixpath.basename(p.rstrip("/")) for p in items]

    def _read(self, path: str) -> bytes:
        return self.fs.cat_file(path)

    def _read_head(self, path: str, size: int) -> bytes:
        return self.fs.cat_file(path, start=0, end=size)

    def _ensure_dir(self, path: str) -> None:
        self.fs.makedirs(path, exist_ok=True)

    def _publish(self, folder: str, name: str, data: bytes, overwrite: bool = False) -> bool:
        final = posixpath.join(folder, name)
        if not overwrite and self.fs.exists(final):
            return False
        tmp = posixpath.join(folder, f".tmp-{uuid.uuid4().hex}-{os.getpid()}")
        self.fs.pipe_file(tmp, data)
        self.fs.mv(tmp, final)
        return True

    def _delete(self, path: str) -> None:
        try:
            self.fs.rm_file(path)
        except FileNotFoundError:
            pass

    def _delete_tree(self, path: str) -> None:
        try:
            self.fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass
