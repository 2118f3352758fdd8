"""Local-disk storage with a fast, crash-safe publish path.

Same entry policy as every storage (:mod:`.base`); the primitives use the OS
directly because they sit on the hot path of every node:

* **Publish** writes into an anonymous ``O_TMPFILE`` inode in the target
  folder and links it to its final name with ``linkat``: a reader or a crash
  can never observe a partial file under the final name, no temporary name is
  ever visible, and ``linkat`` fails if the name exists, which makes publishing
  create-if-absent for concurrent writers.  Where ``O_TMPFILE`` is not
  supported, a temporary file named with a UUID and the pid (unique across
  threads, processes and machines sharing the folder) is renamed into place.
* Entries get fresh names (they embed the key), so no rename ever replaces an
  existing file (the slow case on ext4).
* ``durable=True`` adds an ``fsync`` of the data (and of the folder when a new
  entry is linked) for power-loss durability; ``kill -9`` safety needs none.
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from typing import Any

from ..errors import StorageConfigError
from .base import Storage
from .factory import check_option

__all__ = ["FileStorage"]

_O_TMPFILE = getattr(os, "O_TMPFILE", 0)
_SEP = os.sep
_SMALL = 1 << 16


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class FileStorage(Storage):
    """Storage in a folder of the local filesystem.

    Parameters
    ----------
    path : str or os.PathLike
        The folder (created if missing).  It must not be a file.
    durable : bool
        ``fsync`` each entry before publishing it (survives power loss; costs
        about a millisecond per entry).
    """

    def __init__(self, path: str | os.PathLike, *, durable: bool = False) -> None:
        super().__init__()
        if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
            raise StorageConfigError(
                f"option 'path' of the file storage must be a non-empty str or path, got {path!r}"
            )
        self.path = os.path.abspath(os.fspath(path))
        check_option("file", "durable", durable)  # only True/False: "no" is truthy
        self.durable = durable
        self._tmpfile_ok = bool(_O_TMPFILE) and os.path.isdir("/proc/self/fd")
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
        return (self.path,), {"durable": self.durable}

    def __repr__(self) -> str:
        return f"FileStorage({self.path!r})"

    @property
    def fs(self) -> Any:
        if self._fs is None:
            from fsspec.implementations.local import LocalFileSystem

            self._fs = LocalFileSystem()
        return self._fs

    _sep = os.sep

    def _join(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    def _listdir(self, path: str) -> list[str]:
        try:
            return os.listdir(path)
        except FileNotFoundError:
            return []

    def _read(self, path: str) -> bytes | bytearray:
        # Most entries are small: one read() of up to 64 KiB, no fstat, no
        # file object (this is the cache-hit hot path).  Larger ones are read
        # into one preallocated buffer.
        fd = os.open(path, os.O_RDONLY)
        try:
            head = os.read(fd, _SMALL)
            if len(head) < _SMALL:
                return head
            size = os.fstat(fd).st_size
            buf = bytearray(max(size, _SMALL))
            buf[:_SMALL] = head
            view = memoryview(buf)
            filled = _SMALL
            while filled < size:
                got = os.readv(fd, [view[filled:]])
                if got == 0:
                    break
                filled += got
            view.release()
            del buf[filled:]
            return buf
        finally:
            os.close(fd)

    def _read_head(self, path: str, size: int) -> bytes:
        with open(path, "rb", buffering=0) as f:
            return f.read(size)

    def _ensure_dir(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def _publish(self, folder: str, name: str, data: bytes, overwrite: bool = False) -> bool:
        final = folder + _SEP + name  # os.path.join, for a plain name
        if self._tmpfile_ok and not overwrite:
            try:
                fd = os.open(folder, _O_TMPFILE | os.O_WRONLY, 0o644)
            except FileNotFoundError:  # the folder was removed behind our back
                os.makedirs(folder, exist_ok=True)
                return self._publish(folder, name, data, overwrite)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                    raise
                self._tmpfile_ok = False  # the filesystem does not support O_TMPFILE
            else:
                try:
                    written = os.write(fd, data)  # all of it, but for huge data
                    if written < len(data):
                        _write_all(fd, memoryview(data)[written:])
                    if self.durable:
                        os.fsync(fd)
                    try:
                        # src_dir_fd forces linkat(), which follows the /proc link.
                        os.link(f"/proc/self/fd/{fd}", final, src_dir_fd=fd, follow_symlinks=True)
                    except FileExistsError:
                        return False
                finally:
                    os.close(fd)
                if self.durable:
                    self._sync_dir(folder)
                return True
        if not overwrite and os.path.exists(final):
            return False
        tmp = os.path.join(folder, f".tmp-{uuid.uuid4().hex}-{os.getpid()}")
        os.makedirs(folder, exist_ok=True)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                if self.durable:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        self._sync_dir(folder)
        return True

    def _sync_dir(self, folder: str) -> None:
        if self.durable:
            fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _delete(self, path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def _delete_tree(self, path: str) -> None:
        try:
            shutil.rmtree(path)
        except FileNotFoundError:
            pass
