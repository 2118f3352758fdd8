"""Damage anywhere in a store (issue 11, item 1), layout-agnostic.

A store is filled once with results of every format (plain data, npy, parquet,
skops, HDF5 dask arrays); then, trial after trial, one file of a copy of it is
damaged — a bit flip at a random offset (half of them in the first 4 KiB) or a
truncation — and the workflow runs again.  Every time the run must give the
right values (damage detected, the node recomputed) or raise a FunctionFuseError
naming a node; never a wrong value, never another exception; and the run after
it is healthy.  The files to damage are found by walking the store, not by
knowing its layout.  ``FUNCTIONFUSE_RELIABILITY_TRIALS`` sets the number of
trials (the long mode uses 200).
"""

from __future__ import annotations

import os
import random
import shutil

import numpy as np
import pandas as pd
import pytest
from helpers import stored_keys

from functionfuse import storage_factory, workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.errors import CorruptEntryError, EntryNotFoundError, FunctionFuseError

pytestmark = [
    pytest.mark.reliability,
    pytest.mark.filterwarnings("ignore::functionfuse.caching.CacheWarning"),
]

TRIALS = int(os.environ.get("FUNCTIONFUSE_RELIABILITY_TRIALS", "40"))


@workflow
def plain(n):
    return {"n": n, "items": list(range(n)), "name": "plain"}


@workflow
def array(n):
    return np.arange(n, dtype=np.float64) * 1.5


@workflow
def frame(n):
    return pd.DataFrame({"x": np.arange(n), "label": [f"r{i}" for i in range(n)]})


@workflow
def model(n):
    from sklearn.linear_model import LinearRegression

    x = np.arange(n, dtype=float).reshape(-1, 1)
    return LinearRegression().fit(x, 2 * x[:, 0] + 1)


@workflow
def lazy(n):
    import dask.array as da

    return da.arange(n, chunks=n // 4, dtype=np.float64) * 2.0


@workflow
def summary(p, a, f, m, z):
    # Consumes everything, so every stored result is loaded when the leaves are.
    return {
        "plain": p["items"][-1],
        "array": float(a.sum()),
        "frame": int(f["x"].sum()),
        "model": round(float(m.coef_[0]), 6),
        "lazy": float(z.sum().compute()),
    }


def graph():
    p, a, f = plain(50).set_name("plain"), array(5000).set_name("array"), frame(300).set_name("frame")
    m, z = model(20).set_name("model"), lazy(4000).set_name("lazy")
    return [p, a, f, m, z, summary(p, a, f, m, z).set_name("summary")]


def outputs(values):
    p, a, f, m, z, s = values
    return {
        "plain": p,
        "array": a.tolist(),
        "frame": f.to_dict("list"),
        "model": float(m.coef_[0]),
        "lazy": np.asarray(z).tolist(),
        "summary": s,
    }


def run(store):
    wf = LocalWorkflow(*graph(), workflow_name="damage")
    wf.set_storage(storage_factory({"kind": "file", "options": {"path": str(store)}}))
    return outputs(wf.run()), wf.last_report


def damaged(data, rng):
    """``(damaged bytes, what was done)``: a truncation (a quarter of the time) or one
    flipped bit, half of the flips in the first 4 KiB."""
    data = bytearray(data)
    if rng.random() < 0.25:
        cut = rng.randrange(len(data))
        return bytes(data[:cut]), f"truncated to {cut} of {len(data)} bytes"
    limit = min(len(data), 4096) if rng.random() < 0.5 else len(data)
    offset = rng.randrange(limit)
    data[offset] ^= 1 << rng.randrange(8)
    return bytes(data), f"bit flipped at {offset} of {len(data)}"


def damage(path, rng):
    data = path.read_bytes()
    if not data:
        return "empty file left alone"
    data, how = damaged(data, rng)
    path.write_bytes(data)
    return how


def judge(where, attempt, expected, outcomes):
    """Run ``attempt()``: the right value, or a FunctionFuseError naming a node and the
    storage; anything else fails the test.  Counts the outcome."""
    try:
        got = attempt()
    except FunctionFuseError as exc:
        assert getattr(exc, "node", None) or "node '" in str(exc), f"{where}: {exc!r} names no node"
        assert "storage" in str(exc), f"{where}: {exc!r} names no storage"
        outcomes["error naming a node"] += 1
    except Exception as exc:  # noqa: BLE001 - the point of the test
        pytest.fail(f"{where}: {type(exc).__name__}: {exc}")
    else:
        assert got == expected, f"{where}: a wrong value"
        outcomes["right value"] += 1


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    store = tmp_path_factory.mktemp("damage") / "pristine"
    expected, report = run(store)
    assert len(report.computed) == 6
    return store, expected


def test_damage_anywhere_gives_the_right_value_or_an_error_naming_the_node(pristine, tmp_path):
    store, expected = pristine
    every = sorted(p.relative_to(store) for p in store.rglob("*") if p.is_file())
    assert any(str(f).endswith(".h5") for f in every)  # the dask array's side data
    files = every
    rng = random.Random(20261127)
    outcomes = {"right value": 0, "error naming a node": 0}
    for trial in range(TRIALS):
        copy = tmp_path / f"t{trial}"
        shutil.copytree(store, copy)
        target = copy / files[rng.randrange(len(files))]
        how = damage(target, rng)
        where = f"trial {trial}: {target.relative_to(copy)} {how}"
        judge(where, lambda: run(copy)[0], expected, outcomes)
        healthy, _ = run(copy)  # the next run is healthy
        assert healthy == expected, f"{where}: the run after it is wrong"
        shutil.rmtree(copy)
    print(f"{TRIALS} trials: {outcomes}")
    assert sum(outcomes.values()) == TRIALS


def test_damage_anywhere_on_s3(s3_endpoint, s3_url):
    """The same on S3 (the moto server): dask arrays go to zarr side data there."""
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3_endpoint.options)

    def run_s3(url):
        wf = LocalWorkflow(*graph(), workflow_name="damage")
        wf.set_storage(storage_factory({"kind": "S3", "options": {"path": url, "s3fs": s3_endpoint.options}}))
        return outputs(wf.run())

    expected = run_s3(s3_url)
    root = s3_url.removeprefix("s3://")
    every = sorted(p[len(root) + 1 :] for p in fs.find(root))
    assert any(f.startswith("side/") for f in every)  # the zarr side data
    files = every
    rng = random.Random(7)
    trials = max(8, TRIALS // 4)
    outcomes = {"right value": 0, "error naming a node": 0}
    for trial in range(trials):
        copy = f"{root}-t{trial}"
        fs.copy(root, copy, recursive=True)
        target = files[rng.randrange(len(files))]
        data = fs.cat_file(f"{copy}/{target}")
        if not data:
            continue
        data, how = damaged(data, rng)
        fs.pipe_file(f"{copy}/{target}", data)
        where = f"trial {trial}: {target} {how}"
        judge(where, lambda: run_s3(f"s3://{copy}"), expected, outcomes)
        assert run_s3(f"s3://{copy}") == expected, f"{where}: the run after it is wrong"
    print(f"{trials} trials on S3: {outcomes}")


def _lazy_run(storage):
    """Run the graph; the lazy array is returned uncomputed, with the report."""
    wf = LocalWorkflow(*graph(), workflow_name="damage")
    wf.set_storage(storage)
    values = wf.run()
    return values, wf.last_report


def test_a_damaged_hdf5_chunk_is_found_when_computed_and_recomputed_by_the_next_run(tmp_path):
    import h5py

    store = tmp_path / "s"
    expected, _ = run(store)
    [h5] = list((store / "side").rglob("*.h5"))
    with h5py.File(h5, "r") as f:
        chunk = f["data"].id.get_chunk_info(2)  # the third of four chunks
    data = bytearray(h5.read_bytes())
    data[chunk.byte_offset + 5] ^= 0x10
    h5.write_bytes(bytes(data))

    open_store = lambda: storage_factory({"kind": "file", "options": {"path": str(store)}})  # noqa: E731
    values, report = _lazy_run(open_store())
    assert report.by_node()["lazy"].action == "read"  # loading reads no chunk: nothing seen yet
    with pytest.raises(CorruptEntryError) as caught:
        np.asarray(values[4])
    message = str(caught.value)
    assert "node 'lazy'" in message and str(h5) in message and "chunk (2,)" in message, message
    assert "withdrawn: the next run recomputes" in message, message

    values, report = _lazy_run(open_store())
    assert report.by_node()["lazy"].action == "computed"
    assert report.by_node()["summary"].action != "computed"  # same key: its stored value stands
    assert outputs(values) == expected


def test_a_damaged_zarr_chunk_on_s3_is_found_when_computed_and_recomputed_by_the_next_run(s3_endpoint, s3_url):
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3_endpoint.options)

    def open_store():
        return storage_factory({"kind": "S3", "options": {"path": s3_url, "s3fs": s3_endpoint.options}})

    expected = outputs(_lazy_run(open_store())[0])
    root = s3_url.removeprefix("s3://")
    [chunk] = [p for p in fs.find(f"{root}/side") if p.endswith("/c/2")]
    data = bytearray(fs.cat_file(chunk))
    data[len(data) // 2] ^= 0x10
    fs.pipe_file(chunk, bytes(data))

    values, report = _lazy_run(open_store())
    assert report.by_node()["lazy"].action == "read"
    with pytest.raises(CorruptEntryError) as caught:
        np.asarray(values[4])
    message = str(caught.value)
    assert "node 'lazy'" in message and chunk.rsplit("/", 3)[0].rsplit("/", 1)[-1] in message, message
    assert "/c/2 of node" in message and "withdrawn: the next run recomputes" in message, message

    values, report = _lazy_run(open_store())
    assert report.by_node()["lazy"].action == "computed"
    assert outputs(values) == expected


def test_a_truncated_hdf5_file_is_found_on_load_and_recomputed_in_the_same_run(tmp_path):
    store = tmp_path / "s"
    expected, _ = run(store)
    [h5] = list((store / "side").rglob("*.h5"))
    h5.write_bytes(h5.read_bytes()[:-100])
    got, report = run(store)
    assert got == expected
    event = report.by_node()["lazy"]
    assert (event.action, event.reason) == ("computed", "corrupt entry")


def test_a_lazy_hdf5_array_pickles_as_its_path_and_reports_damage_where_it_is_computed(tmp_path):
    import subprocess
    import sys

    import cloudpickle
    import h5py

    store = tmp_path / "s"
    expected, _ = run(store)
    values, _ = _lazy_run(storage_factory({"kind": "file", "options": {"path": str(store)}}))
    shipped = tmp_path / "lazy.pkl"
    shipped.write_bytes(cloudpickle.dumps(values[4]))  # what goes to a Dask or Ray worker
    del values
    worker = (  # another process computes it, as a worker would
        "import pickle, sys, numpy as np\n"
        "from functionfuse.errors import CorruptEntryError\n"
        "try:\n"
        "    print(np.asarray(pickle.load(open(sys.argv[1], 'rb'))).tolist())\n"
        "except CorruptEntryError as exc:\n"
        "    print('CorruptEntryError', exc)\n"
    )

    def compute_elsewhere():
        out = subprocess.run([sys.executable, "-c", worker, str(shipped)], capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    assert compute_elsewhere() == str(expected["lazy"])
    [h5] = list((store / "side").rglob("*.h5"))
    with h5py.File(h5, "r") as f:
        offset = f["data"].id.get_chunk_info(0).byte_offset
    data = bytearray(h5.read_bytes())
    data[offset] ^= 0x01
    h5.write_bytes(bytes(data))
    reported = compute_elsewhere()
    assert reported.startswith("CorruptEntryError") and "node 'lazy'" in reported, reported
    assert "withdrawn" in reported, reported
    assert run(store)[0] == expected


def test_a_withdrawal_spares_a_manifest_written_again_since(tmp_path):
    from functionfuse.storage.results import ResultStore

    store = tmp_path / "s"
    run(store)
    results = ResultStore.from_url(str(store))
    [key] = [k for k in _keys(store) if results.read_manifest(k).get("node") == "lazy"]
    doc = results.read_manifest(key)
    origin = results._origin(key, doc)
    assert not results.withdraw(key, origin.identity + "x", "a test")  # another manifest since
    assert results.read_manifest(key)["key"] == key
    assert origin.withdraw("a test")
    with pytest.raises(EntryNotFoundError):
        results.read_manifest(key)
    assert not origin.withdraw("a test")  # already gone


def _keys(store):
    return sorted(stored_keys(store))


@pytest.mark.parametrize("nodes", [12, 3])  # 3: too few loads for the run to read the object
def test_a_damaged_small_results_object_is_written_again_by_the_next_run(tmp_path, caplog, nodes):
    """Run records name one object holding the small results (docs/format.md); a run
    whose results are the same names the same object.  Found damaged, it must be
    written again, not named again: content addressing alone would keep the damage."""
    import json

    from functionfuse.storage.inventory import Inventory
    from functionfuse.storage.results import ResultStore

    store = tmp_path / "s"

    def run_small():
        wf = LocalWorkflow(*[plain(i).set_name(f"p{i}") for i in range(nodes)], workflow_name="small")
        wf.set_storage(storage_factory({"kind": "file", "options": {"path": str(store)}}))
        return wf.run()

    expected = run_small()
    assert run_small() == expected  # cached: the values object is read (12 loads > 8)
    [latest] = sorted((store / "runs" / "small").glob("*.json"))[-1:]
    ref = json.loads(latest.read_bytes())["values"]
    [obj] = list((store / "objects").rglob(ref["object"]))
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0x04
    obj.write_bytes(bytes(data))

    assert run_small() == expected  # read from the manifests instead
    assert "small-results object" in caplog.text or "small results of the latest run record" in caplog.text
    latest = sorted((store / "runs" / "small").glob("*.json"))[-1]
    ref_now = json.loads(latest.read_bytes())["values"]
    assert ref_now["object"] != ref["object"] or obj.read_bytes() != bytes(data), \
        "the damaged object was named again, not written again"
    if ref_now["object"] == ref["object"]:
        _, damage = Inventory(ResultStore.from_url(str(store))).verify()
        assert damage == []
    caplog.clear()
    assert run_small() == expected
    assert "unusable" not in caplog.text


@workflow
def small(n):
    return list(range(n))


def test_a_missing_bucket_names_the_storage_says_what_to_do_and_keeps_the_botocore_error(s3_endpoint):
    """Item 8: a bucket that does not exist (a typo in the path): the error names the
    storage, says what to do, and keeps botocore's error in its causes."""
    import botocore.exceptions

    from functionfuse.errors import StorageError

    url = "s3://functionfuse-no-such-bucket/prefix"
    wf = LocalWorkflow(small(3).set_name("small"), workflow_name="errors")
    wf.set_storage(storage_factory({"kind": "S3", "options": {"path": url, "s3fs": s3_endpoint.options}}))
    with pytest.raises(StorageError) as caught:
        wf.run()
    message = str(caught.value)
    assert "functionfuse-no-such-bucket" in message, message
    causes, exc = [], caught.value
    while exc is not None:
        causes.append(exc)
        exc = exc.__cause__  # botocore's error kept as the cause, not only as context
    assert any(isinstance(c, botocore.exceptions.ClientError) for c in causes), [type(c) for c in causes]
    assert "create it" in message or "fix the storage path" in message, message


_SERVER: list = []


@workflow
def cut(n):
    _SERVER[0].stop()  # the S3 endpoint goes away while the node runs
    return list(range(n))


def test_an_endpoint_cut_mid_run_names_the_node_and_the_storage_and_keeps_the_botocore_error():
    import botocore.exceptions
    from moto.server import ThreadedMotoServer

    from functionfuse.errors import StorageError

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    _SERVER[:] = [server]
    host, port = server.get_host_and_port()
    options = {"key": "k", "secret": "s", "client_kwargs": {"endpoint_url": f"http://{host}:{port}",
                                                            "region_name": "us-west-2"},
               "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1}}
    import s3fs

    s3fs.S3FileSystem(skip_instance_cache=True, **options).mkdir("cut-bucket")
    wf = LocalWorkflow(cut(3).set_name("cut"), workflow_name="errors")
    wf.set_storage(storage_factory({"kind": "S3", "options": {"path": "s3://cut-bucket/p", "s3fs": options}}))
    try:
        with pytest.raises(StorageError) as caught:
            wf.run()
    finally:
        _SERVER.clear()
    message = str(caught.value)
    assert "node 'cut'" in message and "s3://cut-bucket/p" in message, message
    causes, exc = [], caught.value
    while exc is not None:
        causes.append(exc)
        exc = exc.__cause__  # botocore's error kept as the cause, not only as context
    assert any(isinstance(c, botocore.exceptions.BotoCoreError) for c in causes), [type(c) for c in causes]
    print(message)


@workflow
def big(n):
    return np.arange(n, dtype=np.float64)  # 72 MiB for n = 9 << 20: memory-mapped when read


@workflow
def sampled_sum(a, step):
    return float(a[::step].sum())


def test_a_damaged_memory_mapped_array_is_found_after_its_load_and_recomputed(tmp_path):
    """Item 2, memory maps: the load stays O(1); the part's XXH3 is checked in the
    background.  A node computed from it is stored only once the check passed: here
    it failed, so the node fails with a CorruptEntryError naming the damaged node and
    file, stores nothing, and the entry is withdrawn; the next run recomputes both."""
    store = tmp_path / "s"
    n = 9 << 20

    def run_big(step):
        array = big(n).set_name("big")
        wf = LocalWorkflow(sampled_sum(array, step).set_name("sum"), array, workflow_name="mapped")
        wf.set_storage(storage_factory({"kind": "file", "options": {"path": str(store)}}))
        return wf, wf.run()

    run_big(1)
    meta = storage_factory({"kind": "file", "options": {"path": str(store)}}).read_task_meta("mapped", "big")
    [part] = meta["parts"]
    [obj] = list((store / "objects").rglob(part["object"]))
    with open(obj, "r+b") as f:  # element n // 2, which the sum of every 1024th element reads
        f.seek(part["size"] - 8 * (n // 2))
        byte = f.read(1)
        f.seek(part["size"] - 8 * (n // 2))
        f.write(bytes([byte[0] ^ 0x20]))

    with pytest.raises(CorruptEntryError) as caught:
        run_big(1024)  # "sum" (a new key) reads "big", a memory map of the damaged file
    message = str(caught.value)
    assert "memory-mapped array" in message and "node 'big'" in message and str(obj) in message, message
    assert "withdrawn: the next run recomputes the node" in message, message

    wf, (total, array) = run_big(1024)
    events = wf.last_report.by_node()
    assert (events["big"].action, events["sum"].action) == ("computed", "computed")
    assert total == float(np.arange(n, dtype=np.float64)[::1024].sum()) and array[n // 2] == n // 2


def test_a_run_that_only_reads_a_damaged_memory_map_withdraws_it(tmp_path):
    from functionfuse.storage import latecheck

    store = tmp_path / "s"
    n = 9 << 20

    def run_big():
        wf = LocalWorkflow(big(n).set_name("big"), workflow_name="mapped")
        wf.set_storage(storage_factory({"kind": "file", "options": {"path": str(store)}}))
        return wf, wf.run()

    run_big()
    [obj] = [p for p in (store / "objects").rglob("*") if p.is_file() and p.stat().st_size > n]
    data = bytearray(obj.read_bytes())
    data[-8] ^= 0x01
    obj.write_bytes(bytes(data))
    try:
        run_big()  # the load is O(1): the check runs after it, and this run may end first
    except CorruptEntryError as exc:  # ... or not: then this run raises it
        assert "memory-mapped array" in str(exc) and "node 'big'" in str(exc), exc
    latecheck.wait_idle()
    assert not list((store / "manifests").rglob("*.json"))  # withdrawn
    wf, array = run_big()  # recomputed: not this run's read, so not raised here
    assert wf.last_report.by_node()["big"].action == "computed" and array[-1] == n - 1



@workflow
class Holder:
    def __init__(self, array):
        self.array = array

    def total(self, offset):
        return float(self.array.sum()) + offset


def test_a_damaged_memory_map_reached_through_a_class_instance_stores_nothing(tmp_path):
    """The array goes into an object (not stored itself) whose method's result is
    stored: that result is stored only once the array's check passed."""
    store = tmp_path / "s"
    n = 9 << 20

    def run_holder(offset):
        array = big(n).set_name("big")
        holder = Holder(array).set_name("holder")
        wf = LocalWorkflow(holder.total(offset).set_name("total"), array, workflow_name="held")
        wf.set_storage(storage_factory({"kind": "file", "options": {"path": str(store)}}))
        wf.log_nodes("holder")  # the instance is kept out of storage
        return wf, wf.run()

    wf, (total, _) = run_holder(0)
    [obj] = [p for p in (store / "objects").rglob("*") if p.is_file() and p.stat().st_size > n]
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0x08
    obj.write_bytes(bytes(data))
    with pytest.raises(CorruptEntryError, match="memory-mapped array .* of node 'big'"):
        run_holder(1)  # a new key for "total": computed from the damaged array
    wf, (again, _) = run_holder(1)
    assert wf.last_report.by_node()["big"].action == "computed" and again == total + 1
