import os

import dask
import dask.array as da
import h5py
import numpy as np
import pytest

from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.errors import CorruptEntryError, EntryNotFoundError
from functionfuse.serializers.daskarray import DaskArraySerializer
from functionfuse.testing.stores import _save


@pytest.fixture
def dstorage(storage):
    storage.register_persistent_serializers(DaskArraySerializer)
    return storage


COMPUTED_BLOCKS = []
__functionfuse_ignore__ = ["COMPUTED_BLOCKS"]  # a record of the test, not an input of the nodes


def _block(x, block_info=None):
    COMPUTED_BLOCKS.append(block_info[0]["chunk-location"])
    return x * 2


@workflow
def make(n, chunk):
    return {"array": da.arange(n, chunks=chunk).map_blocks(_block, dtype="int64"), "n": n}


@workflow
def mean(d):
    return float(d["array"].mean().compute())


def test_stored_as_hdf5_chunk_by_chunk_and_read_lazily(dstorage):
    COMPUTED_BLOCKS.clear()
    wf = LocalWorkflow(mean(make(100, 10).set_name("make")).set_name("mean"), workflow_name="wf")
    wf.set_storage(dstorage)
    assert wf.run() == 99.0
    side = os.path.join(dstorage.path, "side", "wf")
    [h5name] = os.listdir(side)
    with h5py.File(os.path.join(side, h5name), "r") as h5:
        dset = h5["data"]
        assert dset.chunks == (10,)
        assert dset.shape == (100,)
        np.testing.assert_array_equal(dset[:], np.arange(100) * 2)
    # each block computed once for storing, once for the child (which got the live array)
    assert len(COMPUTED_BLOCKS) == 20

    COMPUTED_BLOCKS.clear()
    loaded = dstorage.read_task("wf", "make")
    assert isinstance(loaded["array"], da.Array)
    assert loaded["array"].chunks == ((10,) * 10,)
    assert loaded["array"].name.startswith("functionfuse-")
    assert COMPUTED_BLOCKS == []  # nothing recomputed: it reads HDF5
    np.testing.assert_array_equal(loaded["array"].compute(), np.arange(100) * 2)


def test_always_read_hands_children_the_hdf5_backed_array(dstorage):
    dstorage.always_read = True

    @workflow
    def name_of(d):
        return d["array"].name

    wf = LocalWorkflow(name_of(make(20, 5)), workflow_name="wf")
    wf.set_storage(dstorage)
    assert wf.run().startswith("functionfuse-")


def test_subclass_of_registered_type_matches(dstorage):
    class MyArray(da.Array):
        pass

    arr = da.ones((4, 4), chunks=2)
    sub = MyArray(arr.dask, arr.name, arr.chunks, meta=arr._meta)
    dstorage.save("wf", "n", "0" * 32, [sub], {})
    assert dstorage.read_meta("wf", "0" * 32)["persistent"] == ["DaskArraySerializer"]
    out = dstorage.load("wf", "0" * 32)[0]
    np.testing.assert_array_equal(out.compute(), np.ones((4, 4)))


def test_remove_task_and_workflow_delete_hdf5(dstorage):
    _save(dstorage, "wf", "a", da.zeros(10, chunks=5), "0" * 32)
    _save(dstorage, "wf", "b", {"x": da.zeros(10, chunks=5)}, "1" * 32)
    side = os.path.join(dstorage.path, "side", "wf")
    assert len(os.listdir(side)) == 2
    dstorage.remove_task("wf", "a")
    assert len(os.listdir(side)) == 1
    dstorage.remove_workflow("wf")
    assert not os.path.exists(os.path.join(dstorage.path, "wf"))


def test_every_version_keeps_its_side_data(dstorage):
    def build(n):
        return make(n, 5).set_name("make")

    for n in (10, 20):
        wf = LocalWorkflow(build(n), workflow_name="wf")
        wf.set_storage(dstorage)
        wf.run()
    assert len(os.listdir(os.path.join(dstorage.path, "side", "wf"))) == 2  # n=10 and n=20
    assert dstorage.read_task("wf", "make")["n"] == 20
    wf = LocalWorkflow(build(10), workflow_name="wf")
    wf.set_storage(dstorage)
    wf.run()
    assert wf.last_report.events[-1].action in ("read", "skipped")
    assert dstorage.read_task("wf", "make")["n"] == 10


def test_larger_than_chunk_memory_is_streamed(dstorage):
    # 64 MB of float64 in 1 MB chunks, generated lazily: storing must not build it whole.
    import tracemalloc

    arr = da.random.default_rng(0).random((8192, 1024), chunks=(128, 1024))
    tracemalloc.start()
    try:
        with dask.config.set(scheduler="synchronous"):
            dstorage.save("wf", "big", "2" * 32, arr, {})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, f"peak {peak / 2**20:.1f} MiB while storing a 64 MiB array"
    loaded = dstorage.load("wf", "2" * 32)
    assert loaded.shape == arr.shape and loaded.chunksize == (128, 1024)
    np.testing.assert_allclose(loaded[:3, :5].compute(), arr[:3, :5].compute())


def test_empty_array_round_trips(dstorage):
    dstorage.save("wf", "e", "3" * 32, da.zeros((0, 3), chunks=1), {})
    assert dstorage.load("wf", "3" * 32).shape == (0, 3)


def test_damaged_hdf5_side_data_is_detected(dstorage):
    arr = da.arange(1000, chunks=100)
    dstorage.save("wf", "a", "0" * 32, arr, {})
    side = os.path.join(dstorage.path, "side", "wf")
    [name] = os.listdir(side)
    path = os.path.join(side, name)
    with h5py.File(path, "r") as h5:
        offset = h5["data"].id.get_chunk_info(3).byte_offset
    with open(path, "r+b") as fh:
        fh.seek(offset + 10)
        byte = fh.read(1)
        fh.seek(offset + 10)
        fh.write(bytes([byte[0] ^ 0xFF]))
    loaded = dstorage.load("wf", "0" * 32)
    with pytest.raises(CorruptEntryError, match=r"\(chunk \(3,\)\) of node 'a' of workflow 'wf'.*withdrawn") as caught:
        loaded.compute()
    assert isinstance(caught.value.__cause__, OSError)  # HDF5's own error, kept
    with pytest.raises(EntryNotFoundError):  # withdrawn: the next load recomputes
        dstorage.load("wf", "0" * 32)


def test_failed_save_leaves_no_side_data(dstorage):
    from functionfuse import SerializationError

    class Bad:
        def __reduce__(self):
            raise RuntimeError("no")

    with pytest.raises(SerializationError, match="node 'n'.*RuntimeError: no"):
        dstorage.save("wf", "n", "0" * 32, [da.ones(4, chunks=2), Bad()], {})
    side = os.path.join(dstorage.path, "side", "wf")
    assert not os.path.exists(side) or os.listdir(side) == []
