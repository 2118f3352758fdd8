"""Packs: the manifests of small results one run writes, appended to one file.

The format and the rules are in docs/format.md ("Packs"); in short:

* ``packs/<pack-id>.pack`` (local folders only) starts with :data:`HEADER`;
  every other line is ``<key> <sealed manifest>\\n``.  Only its opener appends
  to a pack, one line per save, and no line changes in place.  The opener holds
  an exclusive ``flock`` on the pack while it may append (the run), and writes
  the pack's index file (:func:`encode_index`) before letting go.
* A reader finds a key's manifest loose first, then in the first line of the
  packs (name order, then file order) that passes the manifest checks:
  through index files, by searching packs, or through :class:`PackIndex`'s
  in-memory index.  A pack that vanishes between a listing and its reading was
  rewritten: the reader lists again.
* Lines are removed by :func:`rewrite`, which takes the pack's lock (a pack
  still being written is left alone: :data:`BUSY`), writes the survivors to a
  new pack named to sort just before the old one, then unlinks the old one.
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import re
import struct
import threading
import uuid
from dataclasses import dataclass
from typing import Callable, Iterable

import xxhash

from .runs import new_run_id

__all__ = ["BUSY", "HEADER", "PACKS", "PackIndex", "PackWriter", "rewrite"]

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
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
#: What :func:`rewrite` returns for a pack whose writer still holds it.
BUSY = "busy"
#: Listings of ``packs/`` a reader makes when packs vanish under it (rewritten).
RELIST = 8


def line_of(key: str, manifest: bytes) -> bytes:
    """The pack line of ``key``'s sealed manifest bytes."""
    return key.encode("ascii") + b" " + manifest + b"\n"


def _write_all(fd: int, data: bytes) -> None:
    written = os.write(fd, data)
    if written < len(data):  # a short write (a signal, a nearly full disk): the rest
        view = memoryview(data)[written:]
        while view:
            view = view[os.write(fd, view):]


def _locked_new(folder: str, name_of: Callable[[], str], durable: bool) -> tuple[str, int]:
    """A new, empty pack (header written) named by ``name_of()``, locked (``flock``
    exclusive) before anything is in it: ``(name, fd)``."""
    for _ in range(8):
        name = name_of()
        path = os.path.join(folder, name)
        try:
            fd = os.open(path, _FLAGS, 0o644)
        except FileNotFoundError:
            os.makedirs(folder, exist_ok=True)
            continue
        except FileExistsError:  # pragma: no cover - 16 random bits and the time alike
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # A rewriter may have taken the empty file between its creation and the
            # lock (and unlinked it): then it is not ours to fill.
            if os.stat(path).st_ino != os.fstat(fd).st_ino:
                raise FileNotFoundError(path)
            _write_all(fd, HEADER)
            if durable:  # the file, and its name in the folder
                os.fsync(fd)
                folder_fd = os.open(folder, os.O_RDONLY)
                try:
                    os.fsync(folder_fd)
                finally:
                    os.close(folder_fd)
        except (BlockingIOError, FileNotFoundError):
            os.close(fd)
            continue
        except BaseException:
            os.close(fd)
            raise
        return name, fd
    raise FileExistsError(f"could not create a new pack in {folder}")


class PackWriter:
    """The pack a run appends small manifests to, in ``folder`` (``<root>/packs``).

    Opened (and locked) at the first :meth:`append`; :meth:`close` (the run's end)
    writes its index file and lets go of it.  A forked child opens its own.
    Thread-safe (several threads of one process may save).
    """

    def __init__(self, folder: str, *, durable: bool = False) -> None:
        self.folder = folder
        self.durable = durable
        self.name: str | None = None
        #: Keys appended to the current pack (a key is appended once per pack).
        self.appended: set[str] = set()
        self._lines: list[tuple[str, int, int]] = []  # (key, offset, length), for the index
        self._fd = -1
        self._pid = os.getpid()
        self._size = 0
        self._lock = threading.Lock()

    def _forked(self) -> None:
        """In a forked child: forget the parent's pack (and a lock a parent thread held)."""
        self._pid, self._fd, self.name = os.getpid(), -1, None
        self.appended, self._lines, self._lock = set(), [], threading.Lock()

    def append(self, key: str, manifest: bytes) -> tuple[str, int]:
        """Append ``key``'s manifest; returns ``(pack name, offset of the manifest)``.

        Raises OSError when the write fails; the pack is then abandoned (its cut
        last line is skipped by readers) and the next append opens a new one.
        """
        if self._pid != os.getpid():
            self._forked()
        line = line_of(key, manifest)
        with self._lock:
            if self._fd < 0:
                self.appended, self._lines = set(), []
                self.name, self._fd = _locked_new(self.folder, lambda: new_run_id() + SUFFIX, self.durable)
                self._size = len(HEADER)
            offset = self._size
            try:
                _write_all(self._fd, line)
                if self.durable:
                    os.fsync(self._fd)
            except BaseException:
                self._close(index=False)
                raise
            self._size += len(line)
            self.appended.add(key)
            self._lines.append((key, offset + 33, len(line) - 34))
            return self.name, offset + 33  # type: ignore[return-value]

    def close(self) -> None:
        """Write the pack's index file and let go of the pack (the next append opens
        a new one)."""
        if self._pid != os.getpid():
            self._forked()
            return
        with self._lock:
            self._close(index=True)

    def _close(self, index: bool) -> None:
        if self._fd >= 0:
            if index and self.name is not None:
                try:
                    write_index(self.folder, self.name, self._lines, self._size, durable=self.durable)
                except OSError as exc:  # readers search the pack instead
                    logger.warning("the index of pack %s was not written: %s", self.name, exc)
            try:
                os.close(self._fd)  # lets go of the lock
            except OSError:  # pragma: no cover - closing a descriptor we own
                pass
        self._fd, self.name = -1, None
        self.appended, self._lines = set(), []

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


#: Packs without index file smaller than this in all are searched for one key
#: (:meth:`PackIndex.lines`) rather than indexed: a search of 1 MB takes about 0.15 ms,
#: indexing it 2 ms.
SEARCH_BELOW = 8 << 20
#: Single-key lookups made before the in-memory index is built all the same.
SEARCHES = 4


class _Vanished(Exception):
    """A listed pack was gone when read: rewritten meanwhile, list again."""


class PackIndex:
    """key -> where its manifest lines are, over the packs of ``folder``.

    The in-memory index (:meth:`refresh`) is built on the first batch question
    (:meth:`keys`, ``in``) or after :data:`SEARCHES` single lookups; until then
    :meth:`lines` goes pack by pack, through index files or by searching.
    """

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self._seen: dict[str, _Seen] = {}
        self._where: dict[str, list[tuple[str, int, int]]] = {}
        self._keys_of: dict[str, list[str]] = {}
        self._built = False
        self._searches = 0
        self._indexes: dict[tuple[str, int], bytes | None] = {}  # (pack, size) -> checked index entries

    def _listing(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.folder) if n.endswith(SUFFIX))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def refresh(self) -> None:
        """Look at ``packs/`` again: new packs, appended lines, packs gone or replaced."""
        self._built = True
        for _ in range(RELIST):
            try:
                return self._refresh()
            except _Vanished:
                continue  # a pack was rewritten under us: its successor is listed now
        self._refresh(final=True)

    def _refresh(self, final: bool = False) -> None:
        names = self._listing()
        for name in set(self._seen) - set(names):
            self._drop(name)
        for name in names:
            path = os.path.join(self.folder, name)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                self._drop(name)
                if final:
                    continue
                raise _Vanished(name) from None
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
                if final:
                    continue
                raise _Vanished(name) from None
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
        lookup order, as the packs are now."""
        for _ in range(RELIST):
            try:
                return self._lines(key)
            except _Vanished:
                continue
        return self._lines(key, final=True)

    def _lines(self, key: str, final: bool = False) -> list[tuple[str, int, bytes]]:
        if not self._built and self._searches < SEARCHES:
            self._searches += 1
            found = self._search(key, final)
            if found is not None:
                return found
        self.refresh()
        out = []
        for name, offset, length in self.candidates(key):
            try:
                data = self._read_line(name, offset, length, key)
            except FileNotFoundError:
                if final:
                    continue
                raise _Vanished(name) from None
            if data is None:  # not where the index file said: index the pack from its lines
                self._indexes[(name, self._seen[name].size)] = None
                self._drop(name)
                if final:
                    continue
                raise _Vanished(name)
            out.append((name, offset, data))
        return out

    def _read_line(self, name: str, offset: int, length: int, key: str) -> bytes | None:
        """The manifest of ``key``'s line at ``offset``, or None when no such line is there."""
        fd = os.open(os.path.join(self.folder, name), os.O_RDONLY)
        try:
            data = os.pread(fd, length + 34, offset - 33)
        finally:
            os.close(fd)
        if data[:33] != key.encode("ascii") + b" " or data[-1:] != b"\n" or len(data) != length + 34:
            return None
        return data[33:-1]

    def _search(self, key: str, final: bool) -> list[tuple[str, int, bytes]] | None:
        """:meth:`lines` pack by pack: through a pack's index file when it has a good
        one, else by searching the pack (None when packs without index are too big
        for that: then the in-memory index is built)."""
        wanted = key.encode("ascii")
        needle = b"\n" + wanted + b" "
        out: list[tuple[str, int, bytes]] = []
        searched = 0
        for name in self._listing():
            try:
                fd = os.open(os.path.join(self.folder, name), os.O_RDONLY)
            except FileNotFoundError:
                if final:
                    continue
                raise _Vanished(name) from None
            try:
                size = os.fstat(fd).st_size
                indexed = self._index_of(name, size)
                if indexed is not None:
                    found = _lines_by_index(fd, indexed, wanted)
                    if found is not None:
                        out.extend((name, offset, data) for offset, data in found)
                        continue
                    self._indexes[(name, size)] = None  # it points elsewhere: search the pack
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


_REWRITTEN = re.compile(r"(.*)-r([0-9a-f]{8})\Z")


def _successors(name: str) -> Callable[[], str]:
    """Names for the pack that replaces ``name`` when it is rewritten, tried in turn:
    ``<base>-r<8 hex>.pack`` with the number one less than ``name``'s (``ffffffff`` for
    a first rewrite).  Each sorts just before ``name`` and after every other pack
    sorting before it (``-`` sorts before ``.``), so the lines keep their place in the
    lookup order, and the name does not grow with rewrites."""
    stem = name[: -len(SUFFIX)]
    m = _REWRITTEN.match(stem)
    base, number = (m.group(1), int(m.group(2), 16)) if m else (stem, 1 << 32)
    state = [number]

    def next_name() -> str:
        state[0] -= 1  # a name left by a rewriter that crashed is skipped
        return f"{base}-r{max(state[0], 0):08x}{SUFFIX}"

    return next_name


def rewrite(folder: str, name: str, keep: Callable[[str, bytes], bool], *, durable: bool = False) -> str | None:
    """Rewrite pack ``name`` with the lines ``keep(key, manifest)`` accepts (a cut last
    line goes); returns the new pack's name, None when no line survived or the pack is
    gone, or :data:`BUSY` when its writer still holds it (nothing done).

    The pack's lock is taken first (the writer's, or another rewriter's, makes this
    one step back); the survivors are written to a new pack, locked while it is
    filled, with its index file; only then is the old pack unlinked.  A crash in
    between leaves both, whose common lines are the same bytes.
    """
    path = os.path.join(folder, name)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    new_fd = -1
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return BUSY
        try:
            if os.stat(path).st_ino != os.fstat(fd).st_ino:
                return None  # rewritten by another meanwhile
        except FileNotFoundError:
            return None
        data = _read_from(fd, 0)
        lines, _ = scan(data, 0)
        survivors = _kept(data, lines, keep)
        new_name = None
        if survivors:
            new_name, new_fd = _locked_new(folder, _successors(name), durable)
            where: list[tuple[str, int, int]] = []
            size = _append_lines(new_fd, survivors, len(HEADER), where, durable)
            write_index(folder, new_name, where, size, durable=durable)
        os.unlink(path)
        old_index = index_path(folder, name)
        if os.path.exists(old_index):
            os.unlink(old_index)
        return new_name
    finally:
        os.close(fd)
        if new_fd >= 0:
            os.close(new_fd)


def is_busy(folder: str, name: str) -> bool:
    """Whether pack ``name``'s writer still holds it (it may append)."""
    try:
        fd = os.open(os.path.join(folder, name), os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


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
