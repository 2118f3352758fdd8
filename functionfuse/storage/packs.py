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
import mmap
import os
import re
import struct
import threading
import uuid
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import xxhash

from .runs import new_run_id

__all__ = ["HEADER", "PACKS", "PackIndex", "PackWriter", "pack_writer_alive", "rewrite"]

logger = logging.getLogger(__name__)

#: The folder of packs under a store's root.
PACKS = "packs"
SUFFIX = ".pack"
INDEX_SUFFIX = ".idx"
#: The first 8 bytes of a pack's index file (see :func:`encode_index`).
INDEX_MAGIC = b"FFPKIDX1"
_ENTRY = struct.Struct("<16sQI")  # key (binary), offset of the manifest, its length
_INDEX_HEAD = 8 + 8 + 16  # magic, pack size, XXH3-128 of the entries
#: The first line of every pack.
HEADER = b'{"format":"functionfuse-pack","version":1}\n'
_KEY = re.compile(rb"[0-9a-f]{32}\Z")
_NAME = re.compile(r"(\d{8}T\d{6}\.\d{6}Z)-([A-Za-z0-9.-]{1,40})-(\d+)-[0-9a-f]{4,}\.pack\Z")
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)


def line_of(key: str, manifest: bytes) -> bytes:
    """The pack line of ``key``'s sealed manifest bytes."""
    return key.encode("ascii") + b" " + manifest + b"\n"


def _write_all(fd: int, data: bytes) -> None:
    written = os.write(fd, data)
    if written < len(data):  # a short write (a signal, a nearly full disk): the rest
        view = memoryview(data)[written:]
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
    a forked child opens its own.  Thread-safe (a Dask worker saves from several
    threads).
    """

    def __init__(self, folder: str, *, durable: bool = False) -> None:
        self.folder = folder
        self.durable = durable
        self.name: str | None = None
        #: Keys appended to the current pack (a key is appended once per pack).
        self.appended: set[str] = set()
        self._lines: list[tuple[str, int, int]] = []  # (key, offset, length), for the index
        self._fd = -1
        self._pid = 0
        self._size = 0
        self._lock = threading.Lock()

    def append(self, key: str, manifest: bytes) -> tuple[str, int]:
        """Append ``key``'s manifest; returns ``(pack name, offset of the manifest)``.

        Raises OSError when the write fails; the pack is then abandoned (its cut
        last line is skipped by readers) and the next append opens a new one.
        """
        line = line_of(key, manifest)
        with self._lock:
            where = self._write(key, line)
            # Rewritten (unlinked) meanwhile: the rewriter may have missed this line.
            if os.fstat(self._fd).st_nlink == 0:
                self._close()
                where = self._write(key, line)
            return where

    def _write(self, key: str, line: bytes) -> tuple[str, int]:
        if self._fd < 0 or self._pid != os.getpid():
            self._fd = -1  # a forked child leaves the parent's descriptor alone
            self.appended = set()
            self._lines = []
            self.name, self._fd = _create(self.folder, self.durable)
            self._pid, self._size = os.getpid(), len(HEADER)
        offset = self._size
        try:
            _write_all(self._fd, line)
            if self.durable:
                os.fsync(self._fd)
        except BaseException:
            self._close()
            raise
        self._size += len(line)
        self.appended.add(key)
        self._lines.append((key, offset + 33, len(line) - 34))
        assert self.name is not None
        return self.name, offset + 33

    def close(self) -> None:
        """Stop appending to the current pack and write its index file (the next
        append opens a new pack)."""
        with self._lock:
            self._close(index=True)

    def _close(self, index: bool = False) -> None:
        if self._fd >= 0 and self._pid == os.getpid():
            if index and self.name is not None and os.fstat(self._fd).st_nlink:
                try:
                    write_index(self.folder, self.name, self._lines, self._size, durable=self.durable)
                except OSError as exc:  # readers search the pack instead
                    logger.warning("the index of pack %s was not written: %s", self.name, exc)
            try:
                os.close(self._fd)
            except OSError:  # pragma: no cover - closing a descriptor we own
                pass
        self._fd, self.name = -1, None
        self.appended = set()
        self._lines = []

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


def encode_index(lines: Iterable[tuple[str, int, int]], pack_size: int) -> bytes:
    """The index file of a pack of ``pack_size`` bytes holding ``lines``
    (``(key, offset of the manifest, length)``): :data:`INDEX_MAGIC`, the pack size
    (u64), the XXH3-128 of the entries (16 bytes), then one 28-byte entry per line,
    sorted by key then offset: the key's 16 bytes, the offset (u64), the length (u32);
    integers little-endian (docs/format.md, "Packs")."""
    entries = b"".join(_ENTRY.pack(bytes.fromhex(k), o, n) for k, o, n in sorted(lines))
    return INDEX_MAGIC + struct.pack("<Q", pack_size) + xxhash.xxh3_128(entries).digest() + entries


def decode_index(data: bytes, pack_size: int) -> list[tuple[bytes, int, int]] | None:
    """The entries of an index file (binary keys), or None when it is damaged or
    covers another size than the pack's ``pack_size`` (then the pack is searched)."""
    entries = _checked_entries(data, pack_size)
    return None if entries is None else list(_ENTRY.iter_unpack(entries))


def _checked_entries(data: bytes, pack_size: int) -> bytes | None:
    """The entries part of a good index file covering ``pack_size`` bytes, else None."""
    if len(data) < _INDEX_HEAD or data[:8] != INDEX_MAGIC or (len(data) - _INDEX_HEAD) % _ENTRY.size:
        return None
    if struct.unpack_from("<Q", data, 8)[0] != pack_size:
        return None
    entries = data[_INDEX_HEAD:]
    if xxhash.xxh3_128(entries).digest() != data[16:_INDEX_HEAD]:
        return None
    return entries


def write_index(folder: str, name: str, lines: list[tuple[str, int, int]], pack_size: int, *,
                durable: bool = False) -> None:
    """Publish the index file of pack ``name`` (a temporary under the store's ``tmp/``,
    then renamed into place)."""
    data = encode_index(lines, pack_size)
    tmp_folder = os.path.join(os.path.dirname(folder), "tmp")
    os.makedirs(tmp_folder, exist_ok=True)
    tmp = os.path.join(tmp_folder, f"{uuid.uuid4().hex}-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        _write_all(fd, data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, os.path.join(folder, name[: -len(SUFFIX)] + INDEX_SUFFIX))
    except BaseException:
        os.unlink(tmp)
        raise


def index_path(folder: str, name: str) -> str:
    return os.path.join(folder, name[: -len(SUFFIX)] + INDEX_SUFFIX)


@dataclass
class _Seen:
    ino: int
    size: int  # the file size when last read
    consumed: int  # bytes indexed (up to the last complete line)


#: Packs smaller than this in all are searched for one key (:meth:`PackIndex.lines`)
#: rather than indexed: a search of 1 MB takes about 0.15 ms, indexing it 2 ms.
SEARCH_BELOW = 8 << 20
#: Single-key lookups searched before the index is built all the same.
SEARCHES = 4


class PackIndex:
    """key -> where its manifest lines are, over the packs of ``folder``.

    The in-memory index (:meth:`refresh`) is built on the first batch question
    (:meth:`keys`, ``in``) or after :data:`SEARCHES` single lookups; until then
    :meth:`lines` searches the packs for the key, which is cheaper for a few keys.
    """

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self._seen: dict[str, _Seen] = {}
        self._where: dict[str, list[tuple[str, int, int]]] = {}
        self._keys_of: dict[str, list[str]] = {}
        self._built = False
        self._searches = 0
        self._indexes: dict[tuple[str, int], bytes | None] = {}  # (pack, size) -> checked index entries

    def refresh(self) -> None:
        """Look at ``packs/`` again: new packs, appended lines, packs gone or replaced."""
        self._built = True
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
            if seen is None:
                entries = self._index_of(name, st.st_size)
                if entries is not None:  # a closed pack: its index file, not its lines
                    self._seen[name] = _Seen(st.st_ino, st.st_size, st.st_size)
                    keys = self._keys_of.setdefault(name, [])
                    for key, offset, length in _ENTRY.iter_unpack(entries):
                        k = key.hex()
                        self._where.setdefault(k, []).append((name, offset, length))
                        keys.append(k)
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
        """Whether the index (as last refreshed, if ever) has a line of ``key``."""
        return key in self._where

    def keys(self) -> set[str]:
        """Keys of the index as last refreshed."""
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

    def lines(self, key: str) -> list[tuple[str, int, bytes]]:
        """``(pack name, offset, manifest bytes)`` of every complete line of ``key``, in
        lookup order, as the packs are now (searched, or from the refreshed index)."""
        if not self._built and self._searches < SEARCHES:
            self._searches += 1
            found = self._search(key)
            if found is not None:
                return found
        self.refresh()
        out = []
        for name, offset, length in self.candidates(key):
            try:
                out.append((name, offset, self.read(name, offset, length)))
            except FileNotFoundError:  # rewritten since the refresh: look again
                return self.lines(key)
        return out

    def _search(self, key: str) -> list[tuple[str, int, bytes]] | None:
        """:meth:`lines` pack by pack: through a pack's index file when it has a good
        one, else by searching the pack (None when packs without index are too big
        for that: then the in-memory index is built)."""
        try:
            names = sorted(n for n in os.listdir(self.folder) if n.endswith(SUFFIX))
        except (FileNotFoundError, NotADirectoryError):
            return []
        wanted = key.encode("ascii")
        needle = b"\n" + wanted + b" "
        out: list[tuple[str, int, bytes]] = []
        searched = 0
        for name in names:
            try:
                fd = os.open(os.path.join(self.folder, name), os.O_RDONLY)
            except FileNotFoundError:
                continue  # rewritten meanwhile: its lines are in a newer pack
            try:
                size = os.fstat(fd).st_size
                indexed = self._index_of(name, size)
                if indexed is not None:
                    found = _lines_by_index(fd, indexed, wanted)
                    if found is not None:
                        out.extend((name, offset, data) for offset, data in found)
                        continue
                searched += size
                if searched > SEARCH_BELOW:
                    return None
                if not size:
                    continue
                with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mm:
                    at = mm.find(needle)
                    while at >= 0:
                        start = at + len(needle)
                        end = mm.find(b"\n", start)
                        if end < 0:
                            break  # being written, or cut
                        out.append((name, start, mm[start:end]))
                        at = mm.find(needle, end)
            finally:
                os.close(fd)
        return out

    def has_index(self, name: str, size: int) -> bool:
        """Whether pack ``name`` of ``size`` bytes has a good index file."""
        return self._index_of(name, size) is not None

    def _index_of(self, name: str, size: int) -> bytes | None:
        """The checked entries of pack ``name``'s index file, when it has a good one
        covering ``size`` bytes (cached: a pack's content never changes under its name)."""
        cached = self._indexes.get((name, size), False)
        if cached is not False:
            return cached
        try:
            with open(index_path(self.folder, name), "rb") as fh:
                got = _checked_entries(fh.read(), size)
        except FileNotFoundError:
            got = None
        if len(self._indexes) > 4096:
            self._indexes.clear()
        self._indexes[(name, size)] = got
        return got

    def read(self, name: str, offset: int, length: int) -> bytes:
        """The manifest bytes at ``offset`` of pack ``name`` (FileNotFoundError when gone)."""
        fd = os.open(os.path.join(self.folder, name), os.O_RDONLY)
        try:
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)


def _lines_by_index(fd: int, entries: bytes, key: bytes) -> list[tuple[int, bytes]] | None:
    """``(offset, manifest bytes)`` of ``key``'s lines in the pack open as ``fd``, found
    by bisecting its index entries; None when a line is not where the index says
    (the pack is searched instead)."""
    size = _ENTRY.size
    count = len(entries) // size
    binary = bytes.fromhex(key.decode("ascii"))
    lo, hi = 0, count
    while lo < hi:  # the first entry whose key is >= binary
        mid = (lo + hi) // 2
        if entries[mid * size:mid * size + 16] < binary:
            lo = mid + 1
        else:
            hi = mid
    out = []
    at = lo
    while at < count and entries[at * size:at * size + 16] == binary:
        _, offset, length = _ENTRY.unpack_from(entries, at * size)
        data = os.pread(fd, length + 34, offset - 33)
        if data[:33] != key + b" " or data[-1:] != b"\n" or len(data) != length + 34:
            return None
        out.append((offset, data[33:-1]))
        at += 1
    return out


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
    new_lines: list[tuple[str, int, int]] = []
    new_size = 0
    try:
        data = _read_from(fd, 0)
        lines, consumed = scan(data, 0)
        survivors = _kept(data, lines, keep)
        if survivors:
            new_name, new_fd = _create(folder, durable)
            new_size = _append_lines(new_fd, survivors, len(HEADER), new_lines, durable)
        os.unlink(path)
        with_index = index_path(folder, name)
        if os.path.exists(with_index):
            os.unlink(with_index)
        later = _read_from(fd, consumed)
        if later:
            more, _ = scan(later, consumed)
            late = _kept(later, [(k, o - consumed, n) for k, o, n in more], keep)
            if late:
                if new_fd < 0:
                    new_name, new_fd = _create(folder, durable)
                    new_size = len(HEADER)
                new_size = _append_lines(new_fd, late, new_size, new_lines, durable)
        if new_name is not None:
            write_index(folder, new_name, new_lines, new_size, durable=durable)
        return new_name
    finally:
        os.close(fd)
        if new_fd >= 0:
            os.close(new_fd)


def _append_lines(fd: int, lines: list[bytes], size: int, where: list[tuple[str, int, int]], durable: bool) -> int:
    """Append whole ``lines`` to a pack of ``size`` bytes, noting each in ``where``; the new size."""
    _write_all(fd, b"".join(lines))
    if durable:
        os.fsync(fd)
    for line in lines:
        where.append((line[:32].decode("ascii"), size + 33, len(line) - 34))
        size += len(line)
    return size


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
