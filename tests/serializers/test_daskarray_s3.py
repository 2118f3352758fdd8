"""DaskArraySerializer under S3_PROTOCOL: zarr (format 3) on a real S3 endpoint (moto's server)."""

import pickle
import re

import dask
import dask.array as da
import numpy as np
import pytest
import s3fs
import zarr

from functionfuse import SerializationError, workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.serializers import FILE_PROTOCOL, S3_PROTOCOL
from functionfuse.serializers.base import S3Protocol
from functionfuse.serializers.daskarray import DaskArraySerializer
from functionfuse.storage import S3Storage
from functionfuse.testing.stores import _save


@pytest.fixture
def s3storage(s3_endpoint, s3_url):
    storage = S3Storage(s3_url, s3_endpoint.options)
    storage.register_persistent_serializers(DaskArraySerializer)
    return storage


@pytest.fixture
def fs(s3_endpoint):
    return s3fs.S3FileSystem(use_listings_cache=False, **s3_endpoint.options)


def _side(storage, wf="wf"):
    return f"{storage.bucket}/{storage.prefix}/side/{wf}"


def _zarrs(fs, storage, wf="wf"):
    try:
        return sorted(p.rsplit("/", 1)[-1] for p in fs.ls(_side(storage, wf), detail=False, refresh=True))
    except FileNotFoundError:
        return []


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


def test_storage_offers_the_s3_protocol(s3storage):
    protocols = s3storage._persistence("wf").protocols()
    assert list(protocols) == [S3_PROTOCOL] and FILE_PROTOCOL not in protocols
    handle = protocols[S3_PROTOCOL]
    assert isinstance(handle, S3Protocol)
    assert handle.url("x.zarr") == f"{s3storage.url}/side/wf/x.zarr"
    assert handle.local_path("x.zarr") is None
    clone = pickle.loads(pickle.dumps(handle))  # path and options, no live client
    assert clone._fs is None and clone.url() == handle.url()
    assert clone.storage_options == handle.storage_options


def test_stored_as_zarr_chunk_by_chunk_and_read_lazily(s3storage, fs):
    COMPUTED_BLOCKS.clear()
    wf = LocalWorkflow(mean(make(100, 10).set_name("make")).set_name("mean"), workflow_name="wf")
    wf.set_storage(s3storage)
    assert wf.run() == 99.0
    [name] = _zarrs(fs, s3storage)
    assert name.endswith(".zarr")
    root = f"{_side(s3storage)}/{name}"
    keys = sorted(k[len(root) + 1 :] for k in fs.find(root))
    assert keys == sorted(["zarr.json"] + [f"c/{i}" for i in range(10)])  # one object per chunk
    # the side data is plain zarr a user can open
    store = zarr.storage.FsspecStore.from_url(
        "s3://" + root, storage_options=s3storage.s3fs_options, read_only=True
    )
    array = zarr.open_array(store, mode="r")
    assert array.metadata.zarr_format == 3 and array.chunks == (10,) and array.shape == (100,)
    np.testing.assert_array_equal(array[:], np.arange(100) * 2)
    # each block computed once for storing, once for the child (which got the live array)
    assert len(COMPUTED_BLOCKS) == 20

    COMPUTED_BLOCKS.clear()
    loaded = s3storage.read_task("wf", "make")
    assert isinstance(loaded["array"], da.Array)
    assert loaded["array"].chunks == ((10,) * 10,)
    assert loaded["array"].name.startswith("functionfuse-")
    assert COMPUTED_BLOCKS == []  # nothing recomputed: it reads zarr
    np.testing.assert_array_equal(loaded["array"][35:45].compute(), np.arange(35, 45) * 2)
    # a loaded array travels to other processes as options and a path
    again = pickle.loads(pickle.dumps(loaded["array"]))
    assert int(again.sum().compute(scheduler="sync")) == 2 * sum(range(100))


def test_store_runs_on_local_threads_whatever_the_default_scheduler(s3storage):
    COMPUTED_BLOCKS.clear()
    with dask.config.set(scheduler="processes"):  # would compute the blocks in other processes
        s3storage.save("wf", "a", "0" * 32, da.arange(20, chunks=5).map_blocks(_block, dtype="int64"), {})
    assert len(COMPUTED_BLOCKS) == 4  # computed here


def test_always_read_hands_children_the_zarr_backed_array(s3storage):
    s3storage.always_read = True

    @workflow
    def name_of(d):
        return d["array"].name

    wf = LocalWorkflow(name_of(make(20, 5)), workflow_name="wf")
    wf.set_storage(s3storage)
    assert wf.run().startswith("functionfuse-")


@pytest.mark.parametrize(
    "array",
    [
        da.arange(24, chunks=((3, 7, 5, 9),)),  # irregular chunks
        da.ones((7, 5), chunks=(3, 2), dtype=bool),
        da.from_array(np.arange(12, dtype=">f4").reshape(3, 4), chunks=2),
        da.zeros((0, 3), chunks=1),
        da.from_array(np.array(4.5)),
        da.from_array(np.arange(6, dtype=np.complex64), chunks=4),
    ],
    ids=["irregular", "bool", "big-endian", "empty", "0-d", "complex"],
)
def test_round_trips(s3storage, array):
    s3storage.save("wf", "a", "0" * 32, array, {})
    loaded = s3storage.load("wf", "0" * 32)
    assert loaded.shape == array.shape and loaded.dtype == array.dtype.newbyteorder("=")  # native byte order
    if array.size:
        assert loaded.chunks == array.chunks
    np.testing.assert_array_equal(loaded.compute(), array.compute())


@pytest.mark.parametrize("values", [["a", "b"], [b"a", b"b"], [object(), 1], ["2020-01-01"]])
def test_dtypes_without_a_stable_zarr_spec_are_refused(s3storage, fs, values):
    array = np.array(values, dtype="M8[D]" if values == ["2020-01-01"] else None)
    with pytest.raises(SerializationError, match=re.escape(f"cannot store dtype {array.dtype} in zarr")):
        s3storage.save("wf", "u", "0" * 32, da.from_array(array, chunks=1), {})
    assert _zarrs(fs, s3storage) == []


def test_remove_task_and_workflow_delete_zarr(s3storage, fs):
    _save(s3storage, "wf", "a", da.arange(10, chunks=5), "0" * 32)
    _save(s3storage, "wf", "b", {"x": da.arange(10, chunks=5)}, "1" * 32)
    assert len(_zarrs(fs, s3storage)) == 2
    s3storage.remove_task("wf", "a")
    assert len(_zarrs(fs, s3storage)) == 1
    assert int(s3storage.read_task("wf", "b")["x"].sum().compute()) == 45
    s3storage.remove_workflow("wf")
    assert fs.find(f"{s3storage.bucket}/{s3storage.prefix}") == [f"{s3storage.bucket}/{s3storage.prefix}/FFSTORE.json"]


def test_every_version_keeps_its_side_data(s3storage, fs):
    for n in (10, 20):
        wf = LocalWorkflow(make(n, 5).set_name("make"), workflow_name="wf")
        wf.set_storage(s3storage)
        wf.run()
    assert len(_zarrs(fs, s3storage)) == 2  # n=10 and n=20
    assert s3storage.read_task("wf", "make")["n"] == 20
    wf = LocalWorkflow(make(20, 5).set_name("make"), workflow_name="wf")
    wf.set_storage(s3storage)
    wf.run(force="make")  # a forced result is written again under the same key
    assert s3storage.read_task("wf", "make")["n"] == 20


def test_losing_writer_removes_its_side_data(s3storage, fs):
    """Create-if-absent: the second writer of an entry gets 412 and deletes its own zarr."""
    first = s3storage.save("wf", "a", "0" * 32, da.arange(10, chunks=5), {})
    [kept] = _zarrs(fs, s3storage)
    second = s3storage.save("wf", "a", "0" * 32, da.arange(10, chunks=5) + 1, {})
    assert first == second
    assert _zarrs(fs, s3storage) == [kept]
    np.testing.assert_array_equal(s3storage.load("wf", "0" * 32).compute(), np.arange(10))


def test_larger_than_chunk_memory_is_streamed(s3storage):
    # 64 MB of float64 in 1 MB chunks, generated lazily: storing must not build it
    # whole.  (Constant chunks compress to a few bytes, so the copies moto keeps in
    # this process do not count.)
    import tracemalloc

    arr = da.full((8192, 1024), 1.5, chunks=(128, 1024))
    tracemalloc.start()
    try:
        s3storage.save("wf", "big", "2" * 32, arr, {})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 24 * 2**20, f"peak {peak / 2**20:.1f} MiB while storing a 64 MiB array"
    loaded = s3storage.load("wf", "2" * 32)
    assert loaded.shape == arr.shape and loaded.chunksize == (128, 1024)
    assert float(loaded[::1000, ::100].sum().compute()) == 1.5 * 9 * 11


def test_damaged_chunk_is_detected(s3storage, fs):
    s3storage.save("wf", "a", "0" * 32, da.arange(1000, chunks=100), {})
    [name] = _zarrs(fs, s3storage)
    chunk = f"{_side(s3storage)}/{name}/c/3"
    data = bytearray(fs.cat_file(chunk))
    data[len(data) // 2] ^= 0xFF
    fs.pipe_file(chunk, bytes(data))
    loaded = s3storage.load("wf", "0" * 32)
    np.testing.assert_array_equal(loaded[:300].compute(), np.arange(300))
    with pytest.raises(Exception, match="(?i)crc|checksum"):
        loaded.compute()


def test_failed_save_leaves_no_side_data(s3storage, fs):
    class Bad:
        def __reduce__(self):
            raise RuntimeError("no")

    with pytest.raises(SerializationError, match="node 'n'.*RuntimeError: no"):
        s3storage.save("wf", "n", "0" * 32, [da.ones(4, chunks=2), Bad()], {})
    assert fs.find(f"{s3storage.bucket}/{s3storage.prefix}") == [f"{s3storage.bucket}/{s3storage.prefix}/FFSTORE.json"]


def test_missing_side_data_is_a_serialization_error(s3storage, fs):
    s3storage.save("wf", "a", "0" * 32, da.arange(10, chunks=5), {})
    [name] = _zarrs(fs, s3storage)
    fs.rm(f"{_side(s3storage)}/{name}", recursive=True)
    with pytest.raises(SerializationError, match="missing"):
        s3storage.load("wf", "0" * 32)


@workflow
def zeros_then_range(n):
    # half of the chunks hold only the fill value (0): they are written too
    return {"array": da.concatenate([da.zeros(n, chunks=10, dtype="int64"), da.arange(n, chunks=10)])}


@workflow
def total(d):
    return int(d["array"].sum().compute())


def test_a_deleted_chunk_is_detected_and_the_node_recomputed(s3storage, fs):
    from functionfuse.caching import CacheWarning

    wf = LocalWorkflow(total(zeros_then_range(50).set_name("make")).set_name("total"), workflow_name="wf")
    wf.set_storage(s3storage)
    assert wf.run() == sum(range(50))
    [name] = _zarrs(fs, s3storage)
    chunks = fs.find(f"{_side(s3storage)}/{name}/c")
    assert len(chunks) == 10  # fill-value-only chunks are stored as well
    fs.rm_file(chunks[0])  # an all-zero chunk: reading it would still give the right sum
    fs.rm_file(chunks[-1])
    with pytest.warns(CacheWarning, match="node 'make'.*has 8 of its 10 chunks"):
        assert wf.run(force="total") == sum(range(50))
    events = wf.last_report.by_node()
    assert (events["make"].action, events["make"].reason) == ("computed", "corrupt entry")


def test_a_damaged_chunk_names_the_stored_array(s3storage, fs):
    from functionfuse.errors import CorruptEntryError, NodeExecutionError

    wf = LocalWorkflow(total(zeros_then_range(50).set_name("make")).set_name("total"), workflow_name="wf")
    wf.set_storage(s3storage)
    wf.run()
    [name] = _zarrs(fs, s3storage)
    chunk = fs.find(f"{_side(s3storage)}/{name}/c")[-1]
    data = bytearray(fs.cat_file(chunk))
    data[len(data) // 2] ^= 0xFF
    fs.pipe_file(chunk, bytes(data))
    pattern = f"node 'total'.*stored dask array .*{name}/c/9 of node 'make' of workflow 'wf'.*is damaged.*withdrawn"
    with pytest.raises(NodeExecutionError, match=pattern) as info:
        wf.run(force="total")
    assert isinstance(info.value.__cause__, CorruptEntryError)
    from functionfuse.caching import CacheWarning

    with pytest.warns(CacheWarning, match="node 'make'"):
        wf.run(force="total")  # the next run recomputes the array it withdrew
    assert wf.last_report.by_node()["make"].action == "computed"
