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
``remove`` and ``local_path``), under :data:`S3_PROTOCOL` an
:class:`S3Protocol` (the same methods on an S3 prefix, plus ``url`` and the
``storage_options`` that open the bucket, for libraries such as zarr that
open their own filesystem).  A serializer dispatches on which constant is
present.
"""

from __future__ import annotations

import posixpath
import uuid
from typing import IO, Any, Protocol, runtime_checkable

__all__ = [
    "FILE_PROTOCOL",
    "S3_PROTOCOL",
    "FileProtocol",
    "S3Protocol",
    "PersistentSerializer",
    "generate_name",
]

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

    #: The storage's compression setting (``functionfuse.storage.codecs.Compression`` or
    #: None), for serializers whose formats compress inside the file (HDF5, zarr).
    compression: Any = None

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


class S3Protocol(FileProtocol):
    """A prefix in an S3 bucket a serializer may write side data under.

    The handle the S3 storage offers under :data:`S3_PROTOCOL`.  It has the
    methods of :class:`FileProtocol` (``open``, ``exists``, ``remove``;
    ``local_path`` is always None) plus :meth:`url` and ``storage_options``,
    the ``s3fs.S3FileSystem`` keyword arguments of the storage, for libraries
    that open their own filesystem (zarr's ``FsspecStore.from_url(url,
    storage_options=...)``).

    A handle pickles as its path and options, never as a live client, so a
    lazy object that keeps it works in another process.

    Parameters
    ----------
    path : str
        ``bucket/prefix/...`` of the folder (without ``s3://``).
    storage_options : dict
        Keyword arguments of ``s3fs.S3FileSystem``.
    fs : s3fs.S3FileSystem, optional
        An open filesystem for these options (made on first use if omitted).
    """

    def __init__(self, path: str, storage_options: dict, fs: Any = None) -> None:
        super().__init__(fs, path.strip("/"))
        self.storage_options = dict(storage_options)

    @property  # type: ignore[override]
    def fs(self) -> Any:
        if self._fs is None:
            import s3fs

            self._fs = s3fs.S3FileSystem(**self.storage_options)
        return self._fs

    @fs.setter
    def fs(self, value: Any) -> None:
        self._fs = value

    def __reduce__(self) -> tuple:
        return (type(self), (self.path, self.storage_options))

    def __getitem__(self, name: str) -> Any:
        """The original package's dict form: ``handle["client"]`` (the s3fs filesystem)
        and ``handle["folder"]`` (``s3://bucket/prefix/...``), for serializers written for it."""
        if name == "client":
            return self.fs
        if name == "folder":
            return self.url()
        raise KeyError(f"an S3 protocol handle has 'client' and 'folder' (the original's keys), not {name!r}")

    def __repr__(self) -> str:
        return f"S3Protocol({self.url()!r})"

    def url(self, filename: str | None = None) -> str:
        """``s3://`` URL of the folder, or of ``filename`` inside it."""
        return "s3://" + (self._full(filename) if filename is not None else self.path)

    def makedirs(self) -> None:
        """Nothing to do: S3 has no folders."""

    def local_path(self, filename: str) -> str | None:
        return None

    def remove(self, filename: str) -> None:
        """Delete ``filename``: one object, or every object under ``filename/``."""
        full = self._full(filename)
        fs = self.fs
        keys = [k for k in fs.find(full) if k == full or k.startswith(full + "/")]
        if keys:
            fs.rm(keys)
