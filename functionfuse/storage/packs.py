"""Packs: the manifests of small results one process writes, appended to one file.

The format and the rules are in docs/format.md ("Packs"); in short:

* ``packs/<pack-id>.pack`` (local folders only) starts with :data:`HEADER`;
  every other line is ``<key> <sealed manifest>\\n``.  Only its opener appends
  to a pack, one ``write()`` per line, and no line changes in place.
* A reader finds a key's manifest loose first, then in the first line of the
  packs (name order, then file order) that passes the manifest checks.
  :class:`PackIndex` keeps key -> (pack, offset, length) in memory, reading
  each pack once and then only what was appended since.
* Lines are removed by :func:`rewrite`: survivors go to a new pack, the old one
  is unlinked and read again through the open descriptor (lines appended
  meanwhile are copied).  :class:`PackWriter` checks after each append that its
  pack still has a name, and appends the line to a new pack when it has none.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from .runs import new_run_id

__all__ = ["HEADER", "PACKS", "PackIndex", "PackWriter", "pack_writer_alive", "rewrite"]

logger = logging.getLogger(__name__)

#: The folder of packs under a store's root.
PACKS = "packs"
SUFFIX = ".pack"
#: The first line of every pack.
HEADER = b'{"format":"functionfuse-pack","version":1}\n'
_KEY = re.compile(rb"[0-9a-f]{32}\Z")
_NAME = re.compile(r"(\d{8}T\d{6}\.\d{6}Z)-([A-Za-z0-9.-]{1,40})-(\d+)-[0-9a-f]{4,}\.pack\Z")
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)


def line_of(key: str, manifest: bytes) -> bytes:
    """The pack line of ``key``'s sealed manifest bytes."""
    return key.encode("ascii") + b" " + manifest + b"\n"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _create(folder: str, durable: bool) -> tuple[str, int]:
    """A new, empty pack (header written): ``(name, fd)``."""
    for _ in range(8):
        name = new_run_id() + SUFFIX
        path = os.path.join(folder, name)
        try:
            fd = os.open(path, _FLAGS, 0o644)
        except FileNotFoundError:
            os.makedirs(folder, exist_ok=True)
            continue
        except FileExistsError:  # pragma: no cover - 16 random bits and the time alike
            continue
        try:
            _write_all(fd, HEADER)
            if durable:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        return name, fd
    raise FileExistsError(f"could not create a new pack in {folder}")


class PackWriter:
    """The pack this process appends small manifests to, in ``folder`` (``<root>/packs``).

    Opened at the first :meth:`append`, closed by :meth:`close` (the run's end);
    a forked child opens its own.  Not thread-safe: one writer per thread of saves
    (the caching core saves from one thread per run).
    """

    def __init__(self, folder: str, *, durable: bool = False) -> None:
        self.folder = folder
        self.durable = durable
        self.name: str | None = None
        #: Keys appended to the current pack (a key is appended once per pack).
        self.appended: set[str] = set()
        self._fd = -1
        self._pid = 0
        self._size = 0

    def append(self, key: str, manifest: bytes) -> tuple[str, int]:
        """Append ``key``'s manifest; returns ``(pack name, offset of the manifest)``.

        Raises OSError when the write fails; the pack is then abandoned (its cut
        last line is skipped by readers) and the next append opens a new one.
        """
        line = line_of(key, manifest)
        where = self._write(line)
        # Rewritten (unlinked) meanwhile: the rewriter may have missed this line.
        if os.fstat(self._fd).st_nlink == 0:
            self.close()
            where = self._write(line)
        return where

    def _write(self, line: bytes) -> tuple[str, int]:
        if self._fd < 0 or self._pid != os.getpid():
            self._fd = -1  # a forked child leaves the parent's descriptor alone
            self.appended = set()
            self.name, self._fd = _create(self.folder, self.durable)
            self._pid, self._size = os.getpid(), len(HEADER)
        offset = self._size
        try:
            _write_all(self._fd, line)
            if self.durable:
                os.fsync(self._fd)
        except BaseException:
            self.close()
            raise
        self._size += len(line)
        self.appended.add(line[:32].decode("ascii"))
        assert self.name is not None
        return self.name, offset + 33

    def close(self) -> None:
        """Stop appending to the current pack (the next append opens a new one)."""
        if self._fd >= 0 and self._pid == os.getpid():
            try:
                os.close(self._fd)
            except OSError:  # pragma: no cover - closing a descriptor we own
                pass
        self._fd, self.name = -1, None
        self.appended = set()

    def __del__(self) -> None:  # pragma: no cover - interpreter shutdown order
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass


def scan(data: bytes | memoryview, base: int = 0) -> tuple[list[tuple[str, int, int]], int]:
    """The complete lines of pack bytes ``data`` read from offset ``base`` (0: the
    start, header included): ``([(key, offset of manifest, length), ...], consumed)``.

    ``consumed`` counts the bytes up to the last newline: a cut last line is left
    for a later read.  Lines without a key prefix are skipped, and so is the first
    line, whatever it holds (a damaged header costs no line but its own).
    """
    data = bytes(data)
    end = data.rfind(b"\n") + 1
    pos = 0
    if base == 0:
        pos = data.find(b"\n") + 1
        if pos == 0:
            return [], 0
    found = []
    while pos < end:
        nl = data.index(b"\n", pos)
        if nl - pos > 33 and data[pos + 32] == 0x20 and _KEY.match(data, pos, pos + 32):
            found.append((data[pos:pos + 32].decode("ascii"), base + pos + 33, nl - pos - 33))
        pos = nl + 1
    return found, end


@dataclass
class _Seen:
    ino: int
    size: int  # the file size when last read
    consumed: int  # bytes indexed (up to the last complete line)


class PackIndex:
    """key -> where its manifest lines are, over the packs of ``folder``."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self._seen: dict[str, _Seen] = {}
        self._where: dict[str, list[tuple[str, int, int]]] = {}
        self._keys_of: dict[str, list[str]] = {}

    def refresh(self) -> None:
        """Look at ``packs/`` again: new packs, appended lines, packs gone or replaced."""
        try:
            names = {n for n in os.listdir(self.folder) if n.endswith(SUFFIX)}
        except (FileNotFoundError, NotADirectoryError):
            names = set()
        for name in set(self._seen) - names:
            self._drop(name)
        for name in sorted(names):
            path = os.path.join(self.folder, name)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                self._drop(name)
                continue
            seen = self._seen.get(name)
            if seen is not None and seen.ino != st.st_ino:
                self._drop(name)
                seen = None
            if seen is not None and seen.size == st.st_size:
                continue
            start = seen.consumed if seen is not None else 0
            try:
                with open(path, "rb") as fh:
                    fh.seek(start)
                    data = fh.read()
            except FileNotFoundError:
                self._drop(name)
                continue
            if seen is None:
                seen = self._seen[name] = _Seen(st.st_ino, 0, 0)
                if not data.startswith(HEADER) and b"\n" in data:  # its lines are checked one by one
                    logger.warning("pack %s has a damaged header line", path)
            lines, consumed = scan(data, start)
            seen.consumed = start + consumed
            seen.size = start + len(data)
            keys = self._keys_of.setdefault(name, [])
            for key, offset, length in lines:
                self._where.setdefault(key, []).append((name, offset, length))
                keys.append(key)

    def _drop(self, name: str) -> None:
        self._seen.pop(name, None)
        for key in self._keys_of.pop(name, ()):
            spots = self._where.get(key)
            if spots:
                spots[:] = [s for s in spots if s[0] != name]
                if not spots:
                    del self._where[key]

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def keys(self) -> set[str]:
        return set(self._where)

    def candidates(self, key: str) -> list[tuple[str, int, int]]:
        """``(pack name, offset, length)`` of ``key``'s lines, in lookup order."""
        spots = self._where.get(key, ())
        return sorted(spots) if len(spots) > 1 else list(spots)

    def packs_of(self, keys: Iterable[str]) -> set[str]:
        """Names of the packs holding a line of any of ``keys``."""
        return {name for key in keys for name, _, _ in self._where.get(key, ())}

    def names(self) -> list[str]:
        return sorted(self._seen)

    def read(self, name: str, offset: int, length: int) -> bytes:
        """The manifest bytes at ``offset`` of pack ``name`` (FileNotFoundError when gone)."""
        fd = os.open(os.path.join(self.folder, name), os.O_RDONLY)
        try:
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)


def writer_of(name: str) -> tuple[str, int] | None:
    """``(host, pid)`` of the process that opened pack ``name`` (None for another name)."""
    m = _NAME.match(name)
    return (m.group(2), int(m.group(3))) if m else None


def pack_writer_alive(name: str, path: str, grace_s: float, now: float) -> bool:
    """Whether the opener of pack ``name`` may still append to it: its process is alive
    on this host, or (another host) the pack changed less than ``grace_s`` ago."""
    from .runs import _host, process_alive

    who = writer_of(name)
    try:
        mtime = os.stat(path).st_mtime
    except FileNotFoundError:
        return False
    if who is not None and who[0] == _host():
        return who[1] == os.getpid() or process_alive(who[1])
    return now - mtime < grace_s


def rewrite(folder: str, name: str, keep: Callable[[str, bytes], bool], *, durable: bool = False) -> str | None:
    """Rewrite pack ``name`` with the lines ``keep(key, manifest)`` accepts; returns the
    new pack's name (None when no line survives, or the pack is gone).

    Survivors are written to a new pack, the old one is unlinked and then read again
    through the descriptor still open: lines appended meanwhile (``keep``-filtered)
    go to the new pack too.  A cut last line is dropped.
    """
    path = os.path.join(folder, name)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    new_name = None
    new_fd = -1
    try:
        data = _read_from(fd, 0)
        lines, consumed = scan(data, 0)
        survivors = _kept(data, lines, keep)
        if survivors:
            new_name, new_fd = _create(folder, durable)
            _write_all(new_fd, b"".join(survivors))
            if durable:
                os.fsync(new_fd)
        os.unlink(path)
        later = _read_from(fd, consumed)
        if later:
            more, _ = scan(later, consumed)
            late = _kept(later, [(k, o - consumed, n) for k, o, n in more], keep)
            if late:
                if new_fd < 0:
                    new_name, new_fd = _create(folder, durable)
                _write_all(new_fd, b"".join(late))
                if durable:
                    os.fsync(new_fd)
        return new_name
    finally:
        os.close(fd)
        if new_fd >= 0:
            os.close(new_fd)


def _read_from(fd: int, offset: int) -> bytes:
    chunks = []
    while True:
        chunk = os.pread(fd, 1 << 20, offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)


def _kept(data: bytes, lines: list[tuple[str, int, int]], keep: Callable[[str, bytes], bool]) -> list[bytes]:
    out = []
    for key, offset, length in lines:
        manifest = data[offset:offset + length]
        if keep(key, manifest):
            out.append(line_of(key, manifest))
    return out


def iter_lines(folder: str, name: str) -> Iterator[tuple[str, bytes]]:
    """``(key, manifest bytes)`` of every complete line of pack ``name``."""
    with open(os.path.join(folder, name), "rb") as fh:
        data = fh.read()
    lines, _ = scan(data, 0)
    for key, offset, length in lines:
        yield key, data[offset:offset + length]
