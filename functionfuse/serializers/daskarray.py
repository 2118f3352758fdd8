"""Dask arrays stored chunk by chunk, read back lazily.

Under :data:`~functionfuse.serializers.FILE_PROTOCOL` an array is written to
an HDF5 file (one dataset, chunked like the array) with ``dask.array.store``,
which computes and writes one chunk at a time, so an array larger than memory
is stored with bounded memory.  Loading opens the file and wraps the dataset
in a lazy ``dask.array`` with the original chunks: nothing is read until the
array is computed.

Under :data:`~functionfuse.serializers.S3_PROTOCOL` (the S3 storage) the array
is written as a zarr (format 3) array under the workflow's side-data prefix,
``<prefix>/side/<workflow>/<uuid>.zarr/``, again with ``dask.array.store``:
each chunk is computed and uploaded as its own object, never the whole array.
Chunks are compressed (zstd, or the storage's ``compression`` preset) and
carry a CRC-32C, so a damaged chunk raises when read.  HDF5 files get the
storage's preset as HDF5 filters (``hdf5plugin`` for zstd, lz4 and Blosc).  Loading opens the zarr array and returns a lazy ``dask.array``
(``dask.array.from_zarr``) with the original chunks; only the small
``zarr.json`` is read until it is computed.  The zarr store is opened from the
storage's ``s3fs`` options, so a loaded array pickles (to a Dask or Ray
worker) as those options and a path, not as a live connection.

Both writes run on dask's local threaded scheduler: the file or the zarr
array is written from this process even when a ``distributed`` Client is the
default scheduler.

Requires the ``dask`` extra: ``pip install "functionfuse[dask]"`` (dask, h5py
and zarr), plus ``functionfuse[s3]`` for S3.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

try:
    import dask.array as da
    import h5py
    from dask.array.core import Array
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "DaskArraySerializer needs dask and h5py; install them with: pip install 'functionfuse[dask]'"
    ) from exc

from ..errors import CorruptEntryError, SerializationError, StorageError
from . import persistent
from .base import FILE_PROTOCOL, S3_PROTOCOL, generate_name

__all__ = ["DaskArraySerializer"]

logger = logging.getLogger(__name__)

_DATASET = "data"
_LIBVER = ("v110", "latest")
_ZARR_KINDS = frozenset("biufc")  # dtypes with a stable zarr v3 specification


def _zarr() -> Any:
    try:
        import zarr
    except ImportError as exc:  # pragma: no cover - exercised without the extra
        raise SerializationError(
            "DaskArraySerializer stores dask arrays as zarr on S3; install zarr with: "
            "pip install 'functionfuse[dask]'"
        ) from exc
    return zarr


def _regular(chunks: tuple[tuple[int, ...], ...]) -> bool:
    """True when every dimension's chunks are equal except a smaller last one (zarr's grid)."""
    for dim in chunks:
        if len(dim) > 1 and (len(set(dim[:-1])) > 1 or dim[-1] > dim[0]):
            return False
    return True


class DaskArraySerializer:
    """Persistent serializer for ``dask.array.Array`` (see module docstring).

    Register it on a storage::

        storage.register_persistent_serializers(DaskArraySerializer)
    """

    name = "DaskArraySerializer"
    version = "1"
    serializer_class = Array

    @classmethod
    def pickle(cls, obj: Array, protocols: dict) -> tuple[str, dict]:
        """Store ``obj`` chunk by chunk (HDF5 on files, zarr on S3); returns its id."""
        if S3_PROTOCOL not in protocols and FILE_PROTOCOL not in protocols:
            raise SerializationError(
                f"DaskArraySerializer got protocols {sorted(protocols)}; it writes HDF5 under "
                "FILE_PROTOCOL and zarr under S3_PROTOCOL"
            )
        if any(isinstance(c, float) and math.isnan(c) for dim in obj.chunks for c in dim):
            raise SerializationError(
                "a dask array with unknown chunk sizes cannot be stored; call "
                "array.compute_chunk_sizes() in the node before returning it"
            )
        if S3_PROTOCOL in protocols:
            if obj.dtype.kind not in _ZARR_KINDS:
                # Other dtypes have no stable zarr v3 specification yet (zarr warns
                # that their representation may change): not for a cache.
                raise SerializationError(
                    f"DaskArraySerializer cannot store dtype {obj.dtype} in zarr (it stores booleans, "
                    "integers, floats and complex numbers); convert the array or do not register the "
                    "serializer for this result"
                )
            return cls.name, cls._store_zarr(obj, protocols[S3_PROTOCOL])
        if obj.dtype.hasobject or obj.dtype.kind == "U":
            raise SerializationError(
                f"DaskArraySerializer cannot store dtype {obj.dtype} in HDF5; convert the array "
                "(e.g. to bytes 'S' dtype) or do not register the serializer for this result"
            )
        return cls.name, cls._store_hdf5(obj, protocols[FILE_PROTOCOL])

    @classmethod
    def _store_hdf5(cls, obj: Array, handle: Any) -> dict:
        filename = generate_name() + ".h5"
        handle.makedirs()
        path = handle.local_path(filename)
        chunks = tuple(int(c) for c in obj.chunksize) if obj.size else None
        fileobj = None
        if path is not None:
            _check_space(path, obj, handle)
        try:
            # libver v110: the file format of HDF5 1.10, whose metadata (superblock,
            # object headers, chunk index) carries checksums; fletcher32 below
            # covers the chunks.  Damage anywhere in the file then raises when read.
            if path is not None:
                h5 = h5py.File(path, "w", libver=_LIBVER)
            else:
                fileobj = handle.open(filename, "wb")
                h5 = h5py.File(fileobj, "w", libver=_LIBVER)
            with h5:
                # fletcher32: a checksum per chunk, so damaged side data raises
                # when read instead of silently giving wrong numbers.
                filters = {}
                if chunks is not None and getattr(handle, "compression", None) is not None:
                    from ..storage.codecs import hdf5_options

                    filters = hdf5_options(handle.compression)  # the storage's "compression" option
                dset = h5.create_dataset(
                    _DATASET, shape=obj.shape, dtype=obj.dtype, chunks=chunks, fletcher32=chunks is not None,
                    **filters,
                )
                if obj.size:
                    # The local threaded scheduler: an h5py file cannot travel to the
                    # workers of a distributed Client that may be the default one.
                    da.store(obj, dset, lock=True, scheduler="threads")
        except BaseException:
            if fileobj is not None:
                fileobj.close()
            handle.remove(filename)
            raise
        if fileobj is not None:
            fileobj.close()
        size = os.path.getsize(path) if path is not None else handle.fs.size(handle._full(filename))
        return {"format": "hdf5", "file": filename, "dataset": _DATASET, "chunks": obj.chunks, "size": size}

    @classmethod
    def _store_zarr(cls, obj: Array, handle: Any) -> dict:
        zarr = _zarr()
        from zarr.codecs import Crc32cCodec

        from ..storage.codecs import zarr_codecs

        filename = generate_name() + ".zarr"
        # zarr chunks form a regular grid; dask chunks may not.  Writing
        # irregular dask blocks into a regular grid would make two threads
        # update the same zarr chunk, so such arrays are rechunked (block by
        # block, still bounded memory) to their largest chunk size first.
        source = obj if _regular(obj.chunks) else obj.rechunk(obj.chunksize)
        chunks = tuple(max(1, int(c)) for c in source.chunksize)
        try:
            store = zarr.storage.FsspecStore.from_url(
                handle.url(filename), storage_options=handle.storage_options
            )
            target = zarr.create_array(
                store,
                shape=obj.shape,
                dtype=obj.dtype,
                chunks=chunks,
                compressors=[*zarr_codecs(getattr(handle, "compression", None)), Crc32cCodec()],
                zarr_format=3,
                # Every chunk is written, even one holding only the fill
                # value: a missing chunk is then damage, not "all zeros".
                config={"write_empty_chunks": True},
            )
            if obj.size:
                # Chunk-aligned regions: no lock needed, chunks upload in parallel.
                da.store(source, target, lock=False, scheduler="threads")
        except BaseException:
            try:
                handle.remove(filename)
            except Exception as cleanup:  # noqa: BLE001 - keep the real error
                logger.warning("partial zarr array %s left in place: %s", handle.url(filename), cleanup)
            raise
        nchunks = math.prod(len(range(0, n, c)) for n, c in zip(obj.shape, chunks)) if obj.size else 0
        return {"format": "zarr", "file": filename, "chunks": obj.chunks, "nchunks": nchunks}

    @classmethod
    def unpickle(cls, pid: dict, protocols: dict) -> Array:
        """A lazy dask array over the stored HDF5 dataset or zarr array."""
        if pid.get("format") == "zarr":
            return cls._load_zarr(pid, protocols)
        if FILE_PROTOCOL not in protocols:
            raise SerializationError(
                f"DaskArraySerializer cannot read the HDF5 array {pid!r} under {sorted(protocols)}"
            )
        handle = protocols[FILE_PROTOCOL]
        filename = pid["file"]
        path = handle.local_path(filename)
        from ..storage.codecs import ensure_hdf5_filters

        ensure_hdf5_filters()  # datasets written with zstd / lz4 / Blosc filters
        origin = persistent.origin()
        label = path if path is not None else filename
        try:
            size = os.path.getsize(path) if path is not None else handle.fs.size(handle._full(filename))
        except FileNotFoundError as exc:
            raise SerializationError(f"side data {label} of a stored dask array is missing: {exc}") from exc
        if pid.get("size") is not None and size != pid["size"]:
            raise CorruptEntryError(
                f"side data {label} of a stored dask array has {size} bytes, {pid['size']} were written; "
                "it was damaged after it was written (the node is recomputed)"
            )
        try:
            source = _Hdf5Array(path, pid["dataset"], origin) if path is not None else _StoredArray(
                h5py.File(handle.open(filename, "rb"), "r")[pid["dataset"]], label, origin)
        except FileNotFoundError as exc:
            raise SerializationError(f"side data {label} of a stored dask array is missing: {exc}") from exc
        except (OSError, KeyError, ValueError) as exc:  # a file checked by HDF5 that fails its checks
            raise CorruptEntryError(
                f"side data {label} of a stored dask array cannot be opened ({type(exc).__name__}: {exc}); "
                "it was damaged after it was written (the node is recomputed)"
            ) from exc
        chunks = pid["chunks"] if source.size else source.shape
        return da.from_array(source, chunks=chunks, name=f"functionfuse-{filename}", lock=True)

    @classmethod
    def _load_zarr(cls, pid: dict, protocols: dict) -> Array:
        handle = protocols.get(S3_PROTOCOL)
        if handle is None:
            raise SerializationError(
                f"DaskArraySerializer cannot read the zarr array {pid!r} under {sorted(protocols)}: "
                "zarr arrays are read through the S3 storage that wrote them"
            )
        zarr = _zarr()
        filename = pid["file"]
        url = handle.url(filename)
        store = zarr.storage.FsspecStore.from_url(url, storage_options=handle.storage_options, read_only=True)
        try:
            array = zarr.open_array(store, mode="r", zarr_format=3)
        except (FileNotFoundError, zarr.errors.NodeNotFoundError) as exc:
            raise SerializationError(f"side data {url} of a stored dask array is missing: {exc}") from exc
        expected = pid.get("nchunks")
        if expected is not None:  # one listing: a deleted chunk would read as fill values
            try:
                found = len(handle.fs.find(f"{url.split('://', 1)[-1]}/c"))
            except FileNotFoundError:
                found = 0
            if found != expected:
                raise CorruptEntryError(
                    f"stored dask array {url} has {found} of its {expected} chunks; it was damaged "
                    "after it was written (the node is recomputed)"
                )
        chunks = pid["chunks"] if array.size else array.shape
        return da.from_array(
            _ZarrArray(array, url, persistent.origin()), chunks=chunks, name=f"functionfuse-{filename}",
            asarray=True,
        )

    @classmethod
    def remove(cls, pid: dict, protocols: dict) -> None:
        """Delete the HDF5 file or the zarr array."""
        handle = protocols.get(S3_PROTOCOL) or protocols.get(FILE_PROTOCOL)
        if handle is not None:
            handle.remove(pid["file"])


class _StoredArray:
    """A stored array read chunk by chunk, whose read errors name the node and the file.

    Chunks are read when the lazy dask array is computed, often inside another
    node or after the run.  A chunk that fails its checksum (or any read of the
    file's checked metadata) raises :class:`CorruptEntryError` naming the node
    that stored the array and the file, and withdraws the entry (see
    :meth:`~functionfuse.serializers.persistent.EntryOrigin.withdraw`), so that
    the next run recomputes the node instead of loading the same damage again.
    """

    def __init__(self, array: Any, label: str, origin: Any) -> None:
        self.array = array
        self.label = label
        self.origin = origin
        self.shape = array.shape
        self.dtype = array.dtype
        self.ndim = len(array.shape)
        self.size = math.prod(array.shape)

    def _damage(self, exc: BaseException) -> bool:
        """Whether ``exc``, raised reading a chunk, means the stored data is damaged."""
        return not isinstance(exc, MemoryError)

    def __getitem__(self, index: Any) -> Any:
        try:
            return self.array[index]
        except Exception as exc:
            who = self.origin.describe() if self.origin is not None else "its node"
            where = self._where(index)
            problem = f"{type(exc).__name__}: {exc}"
            if not self._damage(exc):
                raise StorageError(
                    f"stored dask array {where} of {who} cannot be read now ({problem}); check the "
                    "storage's connection and run again"
                ) from exc
            withdrawn = self.origin is not None and self.origin.withdraw(f"side data {where} is damaged")
            fix = ("its entry was withdrawn: the next run recomputes the node" if withdrawn else
                   "remove its entry (storage.remove_task or `functionfuse rm`) or rerun the node with force=...")
            raise CorruptEntryError(
                f"stored dask array {where} of {who} is damaged ({problem}); {fix}"
            ) from exc

    def _where(self, index: Any) -> str:
        """The file, and the chunk ``index`` starts in when it is a block of chunks."""
        chunks = getattr(self.array, "chunks", None)
        if not (isinstance(index, tuple) and isinstance(chunks, tuple) and len(index) == len(chunks)
                and all(isinstance(s, slice) and isinstance(c, int) and c > 0 for s, c in zip(index, chunks))):
            return self.label
        coords = [(s.start or 0) // c for s, c in zip(index, chunks)]
        return self._chunk(coords)

    def _chunk(self, coords: list[int]) -> str:
        return f"{self.label} (chunk {tuple(coords)})"


class _Hdf5Array(_StoredArray):
    """An HDF5 dataset of the local disk: pickles (to Dask and Ray workers) as its path."""

    def __init__(self, path: str, dataset: str, origin: Any) -> None:
        self.path = path
        self.dataset = dataset
        super().__init__(h5py.File(path, "r")[dataset], path, origin)

    def __getstate__(self) -> dict:
        return {"path": self.path, "dataset": self.dataset, "origin": self.origin}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["dataset"], state["origin"])


class _ZarrArray(_StoredArray):
    """A zarr array on S3; a failed connection is not damage."""

    def _chunk(self, coords: list[int]) -> str:
        return f"{self.label}/c/{'/'.join(map(str, coords))}"  # the default chunk key encoding of zarr 3

    def _damage(self, exc: BaseException) -> bool:
        if isinstance(exc, (OSError, MemoryError, TimeoutError, ConnectionError)):
            return False
        module = type(exc).__module__.split(".")[0]
        return module not in ("botocore", "aiobotocore", "aiohttp", "s3fs")


def _check_space(path: str, obj: Any, handle: Any) -> None:
    """Refuse, before HDF5 opens the file, an array the disk cannot hold.

    HDF5 does not survive a full disk well: the failed flush leaves the library
    in a state that can crash the interpreter when it exits.  So the space is
    checked first (the array's size when uncompressed, else a margin) and a
    full disk is an ``OSError(ENOSPC)`` the storage reports, with nothing written.
    """
    import errno
    import shutil

    folder = os.path.dirname(path) or "."
    free = shutil.disk_usage(folder).free
    compressed = getattr(handle, "compression", None) is not None
    need = (1 << 20) + (0 if compressed else int(obj.nbytes) + int(obj.nbytes) // 64)
    if need > free:
        raise OSError(errno.ENOSPC, f"No space left on device: the array needs about {need} bytes, "
                      f"{free} are free", path)
