"""Local-disk storage: the store v2 layout (:mod:`.base`) in a folder.

Objects are written to ``tmp/`` while they are hashed and then ``link()``-ed
to their content address, which fails when the name exists (the bytes are
there already: the temporary is dropped); manifests and run records are
published the same way.  A reader or a crash can never observe a partial
file under a final name, and two writers of the same result leave one.
``durable=True`` adds ``fsync`` of data and folders for power-loss durability;
``kill -9`` safety needs none.  Large ``.npy`` parts load as copy-on-write
memory maps of the stored file.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import StorageConfigError
from .base import Storage
from .factory import check_option

__all__ = ["FileStorage"]


class FileStorage(Storage):
    """Storage in a folder of the local filesystem.

    Parameters
    ----------
    path : str or os.PathLike
        The folder (created if missing).  It must not be a file.
    durable : bool
        ``fsync`` each object, manifest and record before publishing it
        (survives power loss; costs about a millisecond per result).
    safe : bool
        Safe mode: nothing is ever unpickled; results that only pickle can
        store are refused, naming the node.
    compression : None, str or dict
        ``None``, ``"zstd"``, ``"gzip"``, ``"lz4"`` or a preset such as
        ``{"codec": "zstd", "level": 3, "shuffle": "byte"}`` (see
        docs/storage.md).  Never part of a key: results written under one
        setting read under any other.
    """

    def __init__(
        self, path: str | os.PathLike, *, durable: bool = False, safe: bool = False, compression: Any = None,
        lease: bool | float = False,
    ) -> None:
        super().__init__()
        if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
            raise StorageConfigError(
                f"option 'path' of the file storage must be a non-empty str or path, got {path!r}"
            )
        self.path = os.path.abspath(os.fspath(path))
        check_option("file", "durable", durable)  # only True/False: "no" is truthy
        self._set_options("file", safe, compression, lease)
        self.durable = durable
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise StorageConfigError(
                f"storage path {self.path!r} exists and is not a folder; give the path of a "
                "folder (it is created if missing)"
            )
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as exc:
            raise StorageConfigError(f"cannot create storage folder {self.path!r}: {exc}") from exc
        self._fs: Any = None

    def _constructor_args(self) -> tuple[tuple, dict]:
        return (self.path,), {"durable": self.durable, **self._option_kwargs()}

    def __repr__(self) -> str:
        return f"FileStorage({self.path!r})"

    @property
    def fs(self) -> Any:
        if self._fs is None:
            from fsspec.implementations.local import LocalFileSystem

            self._fs = LocalFileSystem()
        return self._fs

    def _join(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    def _object_store(self) -> Any:
        from .objects import ObjectStore

        return ObjectStore(self.fs, self.path, durable=self.durable)
