"""Content-addressed objects of store v2 (docs/format.md), on local files and S3 through fsspec.

Under the storage root: ``objects/ab/cd/abcd...`` (64 hex: the BLAKE3-256 of the bytes;
immutable) and ``tmp/<uuid>-<pid>`` (temporaries of local writers).

Contract
    * ``put_bytes``, ``put_file`` and ``writer()`` return an :class:`ObjectRef`: ``hash``
      (BLAKE3-256, the name: cryptographic, so a shared cache cannot be fooled by a
      crafted collision), ``size``, and ``xxh3`` (XXH3-128, the load check), both
      computed in one pass over chunks of at most :data:`CHUNK` bytes (bounded memory).
    * An object path exists only with its complete content: a crash leaves temporaries
      (:meth:`ObjectStore.remove_stale_temporaries`), never a partial object.
    * Publishing is create-if-absent: the same bytes are stored once.  An existing
      object of the wrong size (truncated) is replaced atomically, and ``replace=True``
      replaces it anyway (for a caller that found a bad checksum).  Readers never delete.
    * ``get_bytes`` checks size and XXH3 (:class:`~functionfuse.errors.CorruptEntryError`);
      ``open`` and ``local_path`` (to memory-map) check nothing.
    * Filesystem errors become :class:`~functionfuse.errors.StorageError` naming the
      object and the storage (a missing object: ``EntryNotFoundError``); S3 errors are
      explained by :class:`~functionfuse.storage.s3store.S3Storage`'s rules.

Local files
    A writer fills ``tmp/<uuid>-<pid>`` (``fsync`` if ``durable``), then ``link()`` s it
    to its name: atomic, and it fails if the name exists (dedup: the temporary is
    dropped).  ``put_bytes`` hashes first and writes nothing when the object is there.

S3
    The name is known once every byte is hashed, so a writer spools
    (``SpooledTemporaryFile``: memory up to ``part_size``, then an anonymous local file
    that vanishes with the process), HEADs the name, and uploads with ``If-None-Match:
    *``: a PUT, or above ``part_size`` a multipart upload (one part in memory at a
    time) with the condition on ``CompleteMultipartUpload``.  Both appear only when complete, so
    nothing goes to ``tmp/``.  ``412`` means another writer published the same bytes:
    fine.  ``409 ConditionalRequestConflict`` is retried; an endpoint without
    conditional writes (``501``) gets HEAD then PUT (racers write the same bytes).
    Uploads re-check size and XXH3, so a file changed after hashing is never
    published.  A killed upload leaves an invisible multipart upload, which
    ``remove_stale_temporaries`` aborts.

:meth:`ObjectStore.exists` batches: a ``stat`` per object locally; on S3 concurrent
HEADs (:data:`HEAD_CONCURRENCY` in flight), one round trip of latency per batch.  Not
a LIST per prefix: queried hashes rarely share one of the 65,536 ``ab/cd/`` prefixes,
so that costs as many requests, each listing a whole prefix.  (Not ``fs.info``: s3fs
adds a LIST for each missing key.)  A store may be shared by threads; a writer may not.
"""

from __future__ import annotations

import asyncio
import errno
import io
import logging
import os
import posixpath
import re
import tempfile
import time
import uuid
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterable, Iterator

import blake3
import xxhash

from ..errors import (
    CorruptEntryError, EntryNotFoundError, FunctionFuseError, StorageError,
)

__all__ = ["ObjectRef", "ObjectStore", "ObjectWriter", "object_path"]

logger = logging.getLogger(__name__)

#: Bytes hashed and written at a time (smaller writes are gathered up to this).
CHUNK = 8 << 20
#: Default S3 part size and in-memory spool limit (S3's smallest part is 5 MiB).
PART_SIZE = 8 << 20
#: HEAD requests in flight in :meth:`ObjectStore.exists` on S3.
HEAD_CONCURRENCY = 64
_HASH = re.compile(r"[0-9a-f]{64}\Z")
_XXH3 = re.compile(r"[0-9a-f]{32}\Z")


def object_path(hash: str) -> str:
    """Path of an object relative to the store root (the hash is validated: never a path trick).

    >>> object_path("ab" * 32)
    'objects/ab/ab/abababababababababababababababababababababababababababababababab'
    """
    if not isinstance(hash, str) or not _HASH.match(hash):
        raise ValueError(f"an object hash is 64 lowercase hex characters, got {hash!r}")
    return f"objects/{hash[:2]}/{hash[2:4]}/{hash}"


@dataclass(frozen=True)
class ObjectRef:
    """An object: ``hash`` (BLAKE3-256 hex), ``size`` (bytes), ``xxh3`` (XXH3-128 hex).

    ``to_json()`` gives the manifest part's members ``object``, ``size`` and
    ``xxh3``; ``from_json()`` reads them (other members are ignored).
    """

    hash: str
    size: int
    xxh3: str

    def __post_init__(self) -> None:
        object_path(self.hash)
        if type(self.size) is not int or self.size < 0:
            raise ValueError(f"an object size is an int >= 0, got {self.size!r}")
        if not isinstance(self.xxh3, str) or not _XXH3.match(self.xxh3):
            raise ValueError(f"an XXH3-128 checksum is 32 lowercase hex characters, got {self.xxh3!r}")

    def to_json(self) -> dict:
        return {"object": self.hash, "size": self.size, "xxh3": self.xxh3}

    @classmethod
    def from_json(cls, doc: dict) -> ObjectRef:
        try:
            return cls(doc["object"], doc["size"], doc["xxh3"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"an object reference needs 'object', 'size' and 'xxh3', got {doc!r}") from exc


class _Hasher:
    def __init__(self) -> None:
        self.b3, self.x3, self.size = blake3.blake3(), xxhash.xxh3_128(), 0

    def update(self, view: Any) -> None:
        self.b3.update(view)
        self.x3.update(view)
        self.size += len(view)

    def ref(self) -> ObjectRef:
        return ObjectRef(self.b3.hexdigest(), self.size, self.x3.hexdigest())


def _view(data: Any) -> memoryview:
    view = memoryview(data)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


#: Chunks from this size on are hashed in a thread while they are written.
_OVERLAP = 1 << 20
_POOL: list = []


def _hash_pool() -> Any:
    """One thread that hashes chunks while the caller writes them (per process)."""
    if not _POOL or _POOL[0][1] != os.getpid():
        from concurrent.futures import ThreadPoolExecutor

        _POOL[:] = [(ThreadPoolExecutor(max_workers=1, thread_name_prefix="functionfuse-hash"), os.getpid())]
    return _POOL[0][0]


class _Retry(Exception):
    """Upload again (a conflict, or conditional writes turned off)."""


class ObjectWriter(io.BufferedIOBase):
    """A binary, sequential, write-only file that hashes while writing (:meth:`ObjectStore.writer`).

    ``commit()``, ``close()`` or leaving the ``with`` block publishes it and sets
    ``ref``; an exception in the block or ``discard()`` drops it, and so does
    the garbage collector.  Formats that seek (HDF5) go through a local file and
    ``put_file``.
    """

    def __init__(self, store: ObjectStore, replace: bool = False) -> None:
        self._store, self._replace, self._done = store, replace, False
        self._hasher, self._pending, self.ref = _Hasher(), bytearray(), None
        self._tmp, self._sink = store._open_sink()

    closed = property(lambda self: self._done)  # type: ignore[assignment]

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._hasher.size + len(self._pending)

    def write(self, data: Any) -> int:
        if self._done:
            raise ValueError("write to a committed or discarded object writer")
        view = _view(data)
        if len(view) >= CHUNK:
            self._drain()
            for start in range(0, len(view), CHUNK):  # chunk by chunk: each stays in cache
                self._emit(view[start : start + CHUNK])  # for the hash and the write
        else:
            self._pending += view
            if len(self._pending) >= CHUNK:
                self._drain()
        return len(view)

    def _drain(self) -> None:
        if self._pending:
            self._emit(self._pending)
            self._pending = bytearray()

    def _emit(self, view: Any) -> None:
        # BLAKE3 (which releases the GIL) runs in a thread beside the write, and
        # XXH3 (a fifth of its cost) after the write in this one: on two cores
        # the chunk costs about the slower of the two, not their sum.
        hasher = self._hasher
        if len(view) < _OVERLAP:
            with self._store._io("writing", "a new object", self._tmp or "the local spool"):
                _write_all(self._sink, view)
            hasher.update(view)
            return
        hashing = _hash_pool().submit(hasher.b3.update, view)
        try:
            with self._store._io("writing", "a new object", self._tmp or "the local spool"):
                _write_all(self._sink, view)
            hasher.x3.update(view)
            hasher.size += len(view)
        finally:
            hashing.result()

    def commit(self) -> ObjectRef:
        """Publish the object (create-if-absent) and return its reference."""
        if self.ref is not None:
            return self.ref
        if self._done:
            raise ValueError("the object writer was discarded")
        try:
            self._drain()
            ref = self._hasher.ref()
            self._store._publish(self._tmp, self._sink, ref, self._replace)
            self.ref = ref
        finally:
            self.discard()
        return ref

    def close(self) -> None:
        if not self._done:
            self.commit()

    def discard(self) -> None:
        """Drop what was written and the temporary (idempotent)."""
        self._done = True
        if getattr(self, "_sink", None) is not None:
            self._sink.close()
        if getattr(self, "_tmp", None) is not None:
            with suppress(FileNotFoundError):
                os.unlink(self._tmp)
        self._sink = self._tmp = None

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.commit() if exc_type is None else self.discard()

    def __del__(self) -> None:
        self.discard()


class ObjectStore:
    """Content-addressed objects under ``root`` of the fsspec filesystem ``fs``.

    ``durable=True`` fsyncs a local object and its folder (survives power loss;
    ``kill -9`` needs none).  ``part_size`` is the S3 part size and in-memory
    spool limit, ``spool_dir`` the local folder of remote writers' spools.
    """

    def __init__(
        self, fs: Any, root: str | os.PathLike, *, durable: bool = False, part_size: int = PART_SIZE,
        spool_dir: str | None = None,
    ) -> None:
        from fsspec.implementations.local import LocalFileSystem

        self._fs, self._pid, self.durable, self.spool_dir = fs, os.getpid(), durable, spool_dir
        self.part_size = max(part_size, 5 << 20)
        self._local = isinstance(fs, LocalFileSystem)
        protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
        #: S3 gets conditional and multipart uploads; any other fsspec filesystem (``memory://``
        #: in tests) gets a plain check-then-write, atomic only as its ``pipe_file`` is.
        self._s3 = "s3" in protocols or "s3a" in protocols
        self._conditional = True  # S3: If-None-Match: * (off for endpoints without it)
        root = os.fspath(root)
        self.root = os.path.abspath(root) if self._local else (root.rstrip("/") or "/")
        self.url = self.root if self._local else fs.unstrip_protocol(self.root)

    @classmethod
    def from_url(cls, url: str, storage_options: dict | None = None, **kwargs: Any) -> ObjectStore:
        """The store at ``url`` (a folder, ``file://...``, ``s3://bucket/prefix``)."""
        import fsspec

        options = dict(storage_options or {})
        if url.startswith(("s3://", "s3a://")):
            options.setdefault("use_listings_cache", False)  # see other processes' objects at once
        try:
            fs, root = fsspec.core.url_to_fs(url, **options)
        except (ImportError, ValueError, TypeError) as exc:
            raise StorageError(f"cannot open the object store {url!r}: {exc}") from exc
        return cls(fs, root, **kwargs)

    def __repr__(self) -> str:
        return f"ObjectStore({self.url!r})"

    @property
    def fs(self) -> Any:
        """The filesystem; a new s3fs client in a forked or unpickled process (they are not fork-safe)."""
        if self._pid != os.getpid() and not self._local:
            options = {**self._fs.storage_options, "skip_instance_cache": True}
            self._fs, self._pid = type(self._fs)(**options), os.getpid()
        return self._fs

    def path(self, hash: str) -> str:
        """The object's path on ``fs``."""
        return posixpath.join(self.root, object_path(hash))

    def local_path(self, ref: ObjectRef | str) -> str | None:
        """The object's local file, to memory-map (``None`` on remote storage; not checked)."""
        return self.path(_hash(ref)) if self._local else None

    @contextmanager
    def _io(self, action: str, hash: str, path: str) -> Iterator[None]:
        try:
            yield
        except FunctionFuseError:
            raise
        except Exception as exc:
            raise self._error(exc, action, hash, path) from exc

    def _error(self, exc: BaseException, action: str, hash: str, path: str) -> StorageError:
        where = f"{'object ' if _HASH.match(hash) else ''}{hash} of storage {self.url}"
        if self._s3:  # one explanation of S3 failures: S3Storage's
            from .s3store import S3Storage

            try:
                err = S3Storage(self.url, dict(self.fs.storage_options))._failure(exc, action, path)
            except StorageError:
                err = None
            if err is not None:
                return type(err)(f"{where}: {err}")
        if isinstance(exc, FileNotFoundError):
            return EntryNotFoundError(f"{where} does not exist (no {path}) while {action} it")
        advice = _ADVICE.get(getattr(exc, "errno", None), "")
        return StorageError(f"{where}: {action} {path} failed: {type(exc).__name__}: {exc}{advice}")

    # -- writing ---------------------------------------------------------------
    def writer(self, *, replace: bool = False) -> ObjectWriter:
        """A file that becomes an object, hashed while written::

            with store.writer() as f:
                numpy.save(f, array)        # df.to_parquet(f), pickle.dump(x, f) ...
            ref = f.ref
        """
        return ObjectWriter(self, replace)

    def put_bytes(self, data: bytes | bytearray | memoryview, *, replace: bool = False) -> ObjectRef:
        """Store ``data``; nothing is written when the object exists with its size."""
        view, hasher = _view(data), _Hasher()
        hasher.update(view)
        ref = hasher.ref()
        if not self._local:
            self._upload(_ViewReader(view), ref, replace)
            return ref
        if not replace and self._sizes([ref.hash])[0] == ref.size and _touch(self.path(ref.hash)):
            return ref  # reused, its time refreshed: gc's grace period starts again (docs/cli.md)
        tmp, sink = self._open_sink()
        try:
            with self._io("writing", ref.hash, tmp):  # type: ignore[arg-type]
                _write_all(sink, view)
            self._publish(tmp, sink, ref, replace)
        finally:
            sink.close()
            with suppress(FileNotFoundError):
                os.unlink(tmp)  # type: ignore[arg-type]
        return ref

    def put_file(self, local_path: str | os.PathLike, *, replace: bool = False) -> ObjectRef:
        """Store a local file's bytes (copied, never moved; reading it may raise ``OSError``)."""
        with open(local_path, "rb") as src:
            if self._local:  # one pass: copy into tmp/ while hashing
                with self.writer(replace=replace) as w:
                    for chunk in iter(lambda: src.read(CHUNK), b""):
                        w.write(chunk)
                return w.ref  # type: ignore[return-value]
            hasher = _Hasher()  # S3: hash, HEAD, then upload from the file (checked again)
            for chunk in iter(lambda: src.read(CHUNK), b""):
                hasher.update(chunk)
            ref = hasher.ref()
            src.seek(0)
            self._upload(src, ref, replace)
            return ref

    def _open_sink(self) -> tuple[str | None, BinaryIO]:
        if not self._local:
            return None, tempfile.SpooledTemporaryFile(max_size=self.part_size, dir=self.spool_dir)
        tmp = posixpath.join(self.root, "tmp", f"{uuid.uuid4().hex}-{os.getpid()}")
        with self._io("creating a temporary for", "a new object", tmp):
            try:
                return tmp, open(tmp, "xb", buffering=0)
            except FileNotFoundError:
                os.makedirs(os.path.dirname(tmp), exist_ok=True)
                return tmp, open(tmp, "xb", buffering=0)

    def _publish(self, tmp: str | None, sink: Any, ref: ObjectRef, replace: bool) -> None:
        """Publish a complete sink as ``ref``: link (local) or upload (remote) if absent."""
        if tmp is None:
            sink.seek(0)
            return self._upload(sink, ref, replace)
        final = self.path(ref.hash)
        with self._io("publishing", ref.hash, final):
            if self.durable:
                os.fsync(sink.fileno())
            sink.close()
            if not replace:
                for _ in range(3):  # gc may delete the same bytes between link and stat
                    try:
                        return self._into_place(os.link, tmp, final)
                    except FileExistsError:
                        size = _stat_size(final)
                        if size is None:
                            continue  # gone meanwhile: link again
                        if size == ref.size and _touch(final):
                            return  # the same bytes are there, reused: the caller drops tmp
                        break
            self._into_place(os.replace, tmp, final)  # replace a damaged copy, atomically

    def _into_place(self, move: Any, tmp: str, final: str) -> None:
        folder = os.path.dirname(final)
        try:
            move(tmp, final)
        except FileNotFoundError:
            os.makedirs(folder, exist_ok=True)
            move(tmp, final)
            if self.durable:
                _fsync_dir(os.path.dirname(folder))
                _fsync_dir(os.path.dirname(os.path.dirname(folder)))
        if self.durable:
            _fsync_dir(folder)

    def _upload(self, src: Any, ref: ObjectRef, replace: bool) -> None:
        """HEAD, then upload ``src`` unless the object is there (a copy of the wrong size is replaced)."""
        got = None if replace else self._sizes([ref.hash])[0]
        if got == ref.size:
            return
        replace, final = replace or got is not None, self.path(ref.hash)
        if not self._s3:
            with self._io("writing", ref.hash, final):
                data = src.read(ref.size + 1)
                if len(data) != ref.size or xxhash.xxh3_128(data).hexdigest() != ref.xxh3:
                    raise StorageError(f"object {ref.hash} of storage {self.url}: its source changed while stored")
                self.fs.pipe_file(final, bytes(data))
            return
        for attempt in range(5):
            if attempt:
                src.seek(0)
                time.sleep(0.05 * attempt)
            with self._io("uploading", ref.hash, final):
                try:
                    return self._upload_once(src, ref, final, replace or not self._conditional)
                except _Retry:
                    continue
        raise StorageError(f"object {ref.hash} of storage {self.url}: conditional uploads kept conflicting")

    def _upload_once(self, src: Any, ref: ObjectRef, final: str, overwrite: bool) -> None:
        """One PUT, or a multipart upload above ``part_size``: one part in memory at a time."""
        from .s3store import _error_code

        bucket, key, _ = self.fs.split_path(final)
        where, cond = {"Bucket": bucket, "Key": key}, ({} if overwrite else {"IfNoneMatch": "*"})
        x3, parts, upload = xxhash.xxh3_128(), [], None

        def read() -> bytes:
            part = bytes(src.read(self.part_size))
            x3.update(part)
            return part

        def check(size: int) -> None:
            if size != ref.size or x3.hexdigest() != ref.xxh3:
                raise StorageError(
                    f"object {ref.hash} of storage {self.url}: its source changed while it was stored "
                    f"({size} bytes, expected {ref.size}); nothing was published"
                )

        try:
            part = read()
            if len(part) < self.part_size:
                check(len(part))
                self.fs.call_s3("put_object", Body=part, **where, **cond)
                return
            upload = self.fs.call_s3("create_multipart_upload", **where)["UploadId"]
            size = 0
            while part:
                n, size = len(parts) + 1, size + len(part)
                out = self.fs.call_s3("upload_part", Body=part, PartNumber=n, UploadId=upload, **where)
                parts.append({"PartNumber": n, "ETag": out["ETag"]})
                part = read()
            check(size)
            done = {"MultipartUpload": {"Parts": parts}, "UploadId": upload}
            self.fs.call_s3("complete_multipart_upload", **done, **where, **cond)
        except BaseException as exc:
            if upload is not None:
                with suppress(Exception):  # the original error matters
                    self.fs.call_s3("abort_multipart_upload", UploadId=upload, **where)
            code = _error_code(exc) if isinstance(exc, Exception) else None
            if isinstance(exc, FileExistsError) or code in ("PreconditionFailed", "412"):
                return  # another writer published the same bytes first
            if code == "ConditionalRequestConflict":
                raise _Retry from exc
            if not overwrite and code in ("NotImplemented", "501"):
                logger.warning("storage %s: no conditional writes, publishing with HEAD then PUT", self.url)
                self._conditional = False
                raise _Retry from exc
            raise

    # -- reading ---------------------------------------------------------------
    def get_bytes(self, ref: ObjectRef) -> bytes:
        """The object's bytes, checked: size and XXH3 (else :class:`CorruptEntryError`)."""
        path = self.path(ref.hash)
        with self._io("reading", ref.hash, path):
            if self._local:
                with open(path, "rb", buffering=0) as f:
                    data = f.read()
            elif self._s3:  # one GET; concurrent ranged GETs (after a HEAD) for large objects only
                data = self.fs.cat_file(path, max_concurrency=None if ref.size > 4 * self.part_size else 1)
            else:
                data = self.fs.cat_file(path)
        what = f"object {ref.hash} at {path} in storage {self.url} is corrupt"
        if len(data) != ref.size:
            raise CorruptEntryError(f"{what}: {len(data)} bytes, expected {ref.size} (truncated or altered)")
        xxh3 = xxhash.xxh3_128(data).hexdigest()
        if xxh3 != ref.xxh3:
            raise CorruptEntryError(f"{what}: XXH3-128 {xxh3}, expected {ref.xxh3} (altered)")
        return data

    def checked_path(self, ref: ObjectRef) -> str:
        """The local file of an object after checking its size and XXH3 over a memory map
        (no copy into Python); for readers that open a path natively (parquet)."""
        import mmap

        path = self.path(ref.hash)
        with self._io("reading", ref.hash, path):
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                what = f"object {ref.hash} at {path} in storage {self.url} is corrupt"
                if size != ref.size:
                    raise CorruptEntryError(f"{what}: {size} bytes, expected {ref.size} (truncated or altered)")
                if size == 0:
                    digest = xxhash.xxh3_128(b"").hexdigest()
                else:
                    with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
                        digest = xxhash.xxh3_128(view).hexdigest()
        if digest != ref.xxh3:
            raise CorruptEntryError(f"{what}: XXH3-128 {digest}, expected {ref.xxh3} (altered)")
        return path

    def open(self, ref: ObjectRef | str) -> BinaryIO:
        """A readable binary file of the object (for streaming readers; nothing is checked)."""
        hash = _hash(ref)
        path = self.path(hash)
        with self._io("opening", hash, path):
            if self._local:
                return open(path, "rb")
            if isinstance(ref, ObjectRef):
                return self.fs.open(path, "rb", size=ref.size)  # no HEAD for the size
            return self.fs.open(path, "rb")

    # -- existence, listing and removal ------------------------------------------
    def exists(self, items: Iterable[ObjectRef | str]) -> set[str]:
        """The hashes among ``items`` that are stored (a reference's object with its size)."""
        wanted = {_hash(i): i.size if isinstance(i, ObjectRef) else None for i in items}
        sizes = self._sizes(list(wanted))
        return {h for (h, want), got in zip(wanted.items(), sizes) if got is not None and want in (None, got)}

    def _sizes(self, hashes: list[str]) -> list[int | None]:
        """Stored sizes, ``None`` for absent objects: ``stat`` locally, concurrent HEADs on S3."""
        from fsspec.asyn import sync

        paths = [self.path(h) for h in hashes]
        if self._local:
            out: list[Any] = [_stat_size(p) for p in paths]
        elif not self._s3:
            out = [self._generic_size(p) for p in paths]
        else:
            out = sync(self.fs.loop, self._heads, paths)
        for h, p, got in zip(hashes, paths, out):
            if isinstance(got, BaseException):
                raise self._error(got, "checking", h, p) from got
        return out

    def _generic_size(self, path: str) -> Any:
        try:
            return self.fs.size(path)
        except FileNotFoundError:
            return None
        except Exception as exc:  # noqa: BLE001 - raised, named, by _sizes
            return exc

    async def _heads(self, paths: list[str]) -> list[Any]:
        limit = asyncio.Semaphore(HEAD_CONCURRENCY)

        async def one(path: str) -> Any:
            bucket, key, _ = self.fs.split_path(path)
            async with limit:
                try:
                    return (await self.fs._call_s3("head_object", Bucket=bucket, Key=key))["ContentLength"]
                except FileNotFoundError:
                    return None
                except Exception as exc:  # noqa: BLE001 - raised, named, by _sizes
                    return exc

        return await asyncio.gather(*(one(p) for p in paths))

    def delete(self, hash: str) -> None:
        """Remove an object (absent is fine).  For ``gc``; readers never delete."""
        path = self.path(hash)
        with self._io("deleting", hash, path):
            with suppress(FileNotFoundError):
                self.fs.rm_file(path)

    def iter_hashes(self) -> Iterator[str]:
        """Every stored object's hash, for ``gc`` (one paginated listing on S3)."""
        top = posixpath.join(self.root, "objects")
        with self._io("listing", "the objects", top):
            paths = []
            with suppress(FileNotFoundError):
                paths = self.fs.find(top)
        for p in paths:
            name = posixpath.basename(p)
            if _HASH.match(name) and p.endswith(object_path(name)):
                yield name

    def listing(self) -> dict[str, tuple[int, float]]:
        """Every stored object's hash -> (size, modification time), for ``gc`` and ``du``
        (one walk locally, one paginated listing on S3)."""
        top = posixpath.join(self.root, "objects")
        out: dict[str, tuple[int, float]] = {}
        with self._io("listing", "the objects", top):
            if self._local:
                try:
                    for a in os.scandir(top):
                        for b in (os.scandir(a.path) if a.is_dir() else ()):
                            for e in (os.scandir(b.path) if b.is_dir() else ()):
                                if _HASH.match(e.name) and e.path.endswith(object_path(e.name)):
                                    st = e.stat()
                                    out[e.name] = (st.st_size, st.st_mtime)
                except FileNotFoundError:
                    pass
                return out
            found: dict = {}
            with suppress(FileNotFoundError):
                found = self.fs.find(top, detail=True)
        for p, info in found.items():
            name = posixpath.basename(p)
            if _HASH.match(name) and p.endswith(object_path(name)):
                out[name] = (int(info.get("size") or 0), _mtime(info))
        return out

    def remove_stale_temporaries(self, older_than_s: float = 3600) -> int:
        """Remove temporaries older than ``older_than_s`` seconds; on S3, also abort multipart
        uploads of objects started that long ago (a killed writer's).  Returns how many."""
        cutoff, removed, tmp = time.time() - older_than_s, 0, posixpath.join(self.root, "tmp")
        if self._local:  # one scandir (fsspec's find costs a millisecond on an empty folder)
            with self._io("removing temporaries in", "the temporaries", tmp):
                try:
                    entries = list(os.scandir(tmp))
                except FileNotFoundError:
                    return 0
                for entry in entries:
                    with suppress(FileNotFoundError):
                        if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                            os.unlink(entry.path)
                            removed += 1
            return removed
        with self._io("removing temporaries in", "the temporaries", tmp):
            found = {}
            if not self._s3:  # S3 writers spool locally: nothing of theirs is under tmp/
                with suppress(FileNotFoundError):
                    found = self.fs.find(tmp, detail=True)
            for p, info in found.items():
                if _mtime(info) < cutoff:
                    with suppress(FileNotFoundError):
                        self.fs.rm_file(p)
                        removed += 1
            if self._s3:
                bucket, key, _ = self.fs.split_path(posixpath.join(self.root, "objects"))
                page: dict = {"IsTruncated": True}
                while page.get("IsTruncated"):
                    keys = [k for k in ("KeyMarker", "UploadIdMarker") if "Next" + k in page]
                    more = {k: page["Next" + k] for k in keys}
                    page = self.fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=key + "/", **more)
                    for up in page.get("Uploads", []):
                        if up["Initiated"].timestamp() < cutoff:
                            self.fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=up["Key"],
                                            UploadId=up["UploadId"])
                            removed += 1
        return removed


class _ViewReader:
    """``read(n)`` and ``seek(0)`` over a memoryview, without copying it."""

    def __init__(self, view: memoryview) -> None:
        self.view, self.pos = view, 0

    def read(self, n: int) -> memoryview:
        self.pos += n
        return self.view[self.pos - n : self.pos]

    def seek(self, pos: int) -> None:
        self.pos = pos


def _write_all(f: Any, data: Any) -> None:
    view = memoryview(data)
    while view:
        view = view[f.write(view) :]


def _hash(ref: ObjectRef | str) -> str:
    return ref.hash if isinstance(ref, ObjectRef) else ref


def _stat_size(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        return exc  # type: ignore[return-value] - raised, named, by _sizes


#: What to do about the OS errors a store meets most (appended to the message).
_ADVICE = {
    errno.ENOSPC: ". The disk is full: free space there (`functionfuse gc` removes what no recent run "
                  "uses) or give the storage another path; nothing partial was kept, and the next run "
                  "resumes from what is stored",
    errno.EDQUOT: ". The disk quota is exhausted: free space or raise the quota; nothing partial was kept",
    errno.EACCES: ". Permission denied: the store's folder must be writable by this user",
    errno.EROFS: ". The file system is read-only: give the storage a writable path",
}


def _touch(path: str) -> bool:
    """Set a reused object's modification time to now; False when it is gone
    (a read-only store: True, the object is there)."""
    try:
        os.utime(path)
    except FileNotFoundError:
        return False
    except OSError:
        return os.path.exists(path)
    return True


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mtime(info: dict) -> float:
    """An fsspec ``info``'s modification time (``inf``, never stale, when unknown)."""
    value = info.get("LastModified") or info.get("mtime") or float("inf")
    return value.timestamp() if hasattr(value, "timestamp") else float(value)
