"""Dask arrays stored chunk by chunk, read back lazily.

Under :data:`~functionfuse.serializers.FILE_PROTOCOL` an array is written to
an HDF5 file (one dataset, chunked like the array) with ``dask.array.store``,
which computes and writes one chunk at a time, so an array larger than memory
is stored with bounded memory.  Loading opens the file and wraps the dataset
in a lazy ``dask.array`` with the original chunks: nothing is read until the
array is computed.

Requires the ``dask`` extra: ``pip install "functionfuse[dask]"``.
"""

from __future__ import annotations

import math
from typing import Any

try:
    import dask.array as da
    import h5py
    from dask.array.core import Array
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "DaskArraySerializer needs dask and h5py; install them with: pip install 'functionfuse[dask]'"
    ) from exc

from ..errors import SerializationError
from .base import FILE_PROTOCOL, S3_PROTOCOL, generate_name

__all__ = ["DaskArraySerializer"]

_DATASET = "data"


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
        if FILE_PROTOCOL not in protocols:
            raise SerializationError(
                f"DaskArraySerializer got protocols {sorted(protocols)}; this version writes HDF5 "
                "under FILE_PROTOCOL only"
            )
        if any(isinstance(c, float) and math.isnan(c) for dim in obj.chunks for c in dim):
            raise SerializationError(
                "a dask array with unknown chunk sizes cannot be stored; call "
                "array.compute_chunk_sizes() in the node before returning it"
            )
        if obj.dtype.hasobject or obj.dtype.kind == "U":
            raise SerializationError(
                f"DaskArraySerializer cannot store dtype {obj.dtype} in HDF5; convert the array "
                "(e.g. to bytes 'S' dtype) or do not register the serializer for this result"
            )
        handle = protocols[FILE_PROTOCOL]
        filename = generate_name() + ".h5"
        handle.makedirs()
        path = handle.local_path(filename)
        chunks = tuple(int(c) for c in obj.chunksize) if obj.size else None
        fileobj = None
        try:
            if path is not None:
                h5 = h5py.File(path, "w")
            else:
                fileobj = handle.open(filename, "wb")
                h5 = h5py.File(fileobj, "w")
            with h5:
                # fletcher32: a checksum per chunk, so damaged side data raises
                # when read instead of silently giving wrong numbers.
                dset = h5.create_dataset(
                    _DATASET, shape=obj.shape, dtype=obj.dtype, chunks=chunks, fletcher32=chunks is not None
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
        return cls.name, {"format": "hdf5", "file": filename, "dataset": _DATASET, "chunks": obj.chunks}

    @classmethod
    def unpickle(cls, pid: dict, protocols: dict) -> Array:
        if FILE_PROTOCOL not in protocols:
            raise SerializationError(f"DaskArraySerializer cannot read {pid!r} under {sorted(protocols)}")
        handle = protocols[FILE_PROTOCOL]
        filename = pid["file"]
        path = handle.local_path(filename)
        try:
            h5 = h5py.File(path if path is not None else handle.open(filename, "rb"), "r")
        except (FileNotFoundError, OSError) as exc:
            raise SerializationError(f"side data {filename} of a stored dask array is missing: {exc}") from exc
        dset = h5[pid["dataset"]]
        chunks = pid["chunks"] if dset.size else dset.shape
        return da.from_array(dset, chunks=chunks, name=f"functionfuse-{filename}", lock=True)

    @classmethod
    def remove(cls, pid: dict, protocols: dict) -> None:
        handle = protocols.get(FILE_PROTOCOL) or protocols.get(S3_PROTOCOL)
        if handle is not None:
            handle.remove(pid["file"])
