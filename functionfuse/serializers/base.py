"""Serializer protocol and the protocol constants storages hand to serializers.

A *persistent serializer* takes over objects of one type (and its subclasses)
wherever they occur inside a node's result.  The result itself is still
pickled; each object a serializer takes is replaced in the pickle by the small
*persistent id* the serializer returns, and its data goes wherever the
serializer puts it (an HDF5 file, a zarr store ...).

A serializer is a class or an instance with:

``name``
    A unique, stable string recorded in every entry it writes.
``serializer_class``
    The type it handles (subclasses match too, most specific wins).
``version``
    Optional; recorded in the entry's metadata.
``pickle(obj, protocols) -> pid``
    Store ``obj`` and return a small picklable id.  Returning
    ``(name, payload)`` follows the original package's convention; any other
    value is treated as the payload.
``unpickle(payload, protocols) -> obj``
    Rebuild the object from the payload.
``remove(payload, protocols)``
    Delete the data behind the payload.

``protocols`` maps a protocol constant to the handle a storage offers: under
:data:`FILE_PROTOCOL` a :class:`FileProtocol` (a folder with ``open``,
``remove`` and ``local_path``), under :data:`S3_PROTOCOL` an S3 handle.  A
serializer dispatches on which constant is present.
"""

from __future__ import annotations

import posixpath
import uuid
from typing import IO, Any, Protocol, runtime_checkable

__all__ = ["FILE_PROTOCOL", "S3_PROTOCOL", "FileProtocol", "PersistentSerializer", "generate_name"]

FILE_PROTOCOL = "file_protocol"
S3_PROTOCOL = "s3 protocol"


def generate_name() -> str:
    """A fresh, collision-free file name for a serializer's side data."""
    return uuid.uuid4().hex


@runtime_checkable
class PersistentSerializer(Protocol):
    """What :meth:`register_persistent_serializers` accepts (see module doc)."""

    name: str
    serializer_class: type

    def pickle(self, obj: Any, protocols: dict) -> Any: ...

    def unpickle(self, pid: Any, protocols: dict) -> Any: ...

    def remove(self, pid: Any, protocols: dict) -> None: ...


class FileProtocol:
    """A folder a serializer may write side data into.

    Parameters
    ----------
    fs : fsspec.AbstractFileSystem
        The filesystem of the storage.
    path : str
        The folder (created on first write).
    """

    def __init__(self, fs: Any, path: str) -> None:
        self.fs = fs
        self.path = path
        self._made = False

    def _full(self, filename: str) -> str:
        if "/" in filename or filename in ("", ".", ".."):
            raise ValueError(f"serializer file names must be plain names, got {filename!r}")
        return posixpath.join(self.path, filename)

    def open(self, filename: str, mode: str = "rb") -> IO[bytes]:
        """Open ``filename`` inside the folder (creating the folder to write)."""
        if "w" in mode or "a" in mode:
            self.makedirs()
        return self.fs.open(self._full(filename), mode)

    def makedirs(self) -> None:
        if not self._made:
            self.fs.makedirs(self.path, exist_ok=True)
            self._made = True

    def local_path(self, filename: str) -> str | None:
        """An OS path for ``filename`` when the storage is on the local disk."""
        protocol = self.fs.protocol
        protocols = (protocol,) if isinstance(protocol, str) else protocol
        if "file" in protocols or "local" in protocols:
            return self._full(filename)
        return None

    def exists(self, filename: str) -> bool:
        return self.fs.exists(self._full(filename))

    def remove(self, filename: str) -> None:
        """Delete ``filename`` (a file or a folder); a missing file is not an error."""
        try:
            self.fs.rm(self._full(filename), recursive=True)
        except FileNotFoundError:
            pass
