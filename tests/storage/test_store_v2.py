"""Store v2 through workflows, on file and S3 storage: native formats, kept versions,
content addressing, safe mode, result schemas, 0.1.0 leftovers, memory maps."""

import dataclasses
import importlib
import json
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.errors import SerializationError
from functionfuse.storage import FileStorage, S3Storage

# Call counters are test state, not inputs of the nodes that update them.
__functionfuse_ignore__ = {"CALLS"}
CALLS = []


@pytest.fixture(params=["file", "s3"])
def any_storage(request, tmp_path):
    if request.param == "file":
        return FileStorage(tmp_path / "store")
    endpoint = request.getfixturevalue("s3_endpoint")
    return S3Storage(request.getfixturevalue("s3_url"), endpoint.options)


def _run(storage, leaf, name="wf", **kwargs):
    wf = LocalWorkflow(leaf, workflow_name=name)
    wf.set_storage(storage)
    result = wf.run(**kwargs)
    return wf, result


def _actions(wf):
    return {e.node: (e.action, e.reason) for e in wf.last_report.events}


def _object_bytes(storage, hash):
    path = f"objects/{hash[:2]}/{hash[2:4]}/{hash}"
    if isinstance(storage, FileStorage):
        with open(os.path.join(storage.path, path), "rb") as fh:
            return fh.read()
    return storage.fs.cat_file(storage._join(path))


def _object_sizes(storage):
    """Bytes of every stored object, by hash."""
    top = storage._join("objects")
    try:
        found = storage.fs.find(top, detail=True)
    except FileNotFoundError:
        return {}
    return {os.path.basename(p): info["size"] for p, info in found.items()}


@workflow
def tables(n):
    CALLS.append("tables")
    rng = np.random.default_rng(n)
    frame = pd.DataFrame({"x": rng.normal(size=n), "label": [f"r{i}" for i in range(n)]})
    return {"weights": rng.normal(size=(n, 3)), "frame": frame, "n": n, "name": "tables"}


def test_native_formats_part_by_part_open_without_functionfuse(any_storage, tmp_path):
    _, value = _run(any_storage, tables(1000).set_name("t"))
    meta = any_storage.read_task_meta("wf", "t")
    formats = sorted(p["format"] for p in meta["parts"])
    assert formats == ["npy", "parquet"]
    assert meta["result"]["t"] == "dict"  # n and name are inline JSON
    back = any_storage.read_task("wf", "t")
    np.testing.assert_array_equal(back["weights"], value["weights"])
    pd.testing.assert_frame_equal(back["frame"], value["frame"])
    assert back["n"] == 1000 and back["name"] == "tables"
    # Each part is a plain file of its format: numpy and pandas open it, functionfuse unneeded.
    paths = {}
    for part in meta["parts"]:
        path = tmp_path / f"part.{part['format']}"
        path.write_bytes(_object_bytes(any_storage, part["object"]))
        paths[part["format"]] = str(path)
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["functionfuse"] = None  # importing it would fail
        import numpy, pandas
        a = numpy.load({paths["npy"]!r}, allow_pickle=False)
        f = pandas.read_parquet({paths["parquet"]!r})
        print(a.shape, len(f), list(f.columns))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(1000, 3) 1000 ['x', 'label']"


@workflow
def fit(alpha):
    CALLS.append(f"fit {alpha}")
    return {"alpha": alpha, "coef": np.full(1000, alpha)}


def test_a_b_a_hits_and_every_version_is_kept(any_storage):
    CALLS.clear()
    for alpha in (150, 200, 150, 200):
        _, result = _run(any_storage, fit(alpha).set_name("fit"))
        assert result["alpha"] == alpha
        assert any_storage.read_task("wf", "fit")["alpha"] == alpha  # the latest run's version
    assert CALLS == ["fit 150", "fit 200"]


@workflow
def big(seed):
    CALLS.append("big")
    return np.random.default_rng(0).normal(size=1 << 20)  # 8 MiB, the same for any seed


def test_same_bytes_are_stored_once_in_bytes_on_disk(any_storage):
    CALLS.clear()
    _run(any_storage, big(1).set_name("a"), name="wf1")
    one = sum(_object_sizes(any_storage).values())
    _run(any_storage, big(2).set_name("b"), name="wf1")  # another key, the same bytes
    _run(any_storage, big(3).set_name("c"), name="wf2")  # another workflow too
    assert CALLS == ["big"] * 3
    sizes = _object_sizes(any_storage)
    assert len(sizes) == 1 and sum(sizes.values()) == one
    assert 8 << 20 <= one < (8 << 20) + 4096


def test_a_key_stored_by_another_workflow_is_a_hit_without_a_copy(any_storage):
    CALLS.clear()
    _run(any_storage, fit(3).set_name("fit"), name="first")
    files = sorted(_object_sizes(any_storage))
    wf, result = _run(any_storage, fit(3).set_name("fit"), name="second")
    assert CALLS == ["fit 3"] and result["alpha"] == 3
    assert _actions(wf)["fit"] == ("read", "cached")
    assert sorted(_object_sizes(any_storage)) == files
    assert any_storage.read_task("second", "fit")["alpha"] == 3


# -- safe mode and crafted pickles ---------------------------------------------------------


class Payload:
    """Unpickling it runs code: it writes a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@workflow
def plain(x):
    CALLS.append("plain")
    return {"x": x}


@workflow
def more(*xs, bump=1):
    return sum(x["x"] for x in xs) + bump


def _plant_pickle(storage, key, marker):
    """Replace the manifest of ``key`` by one whose result is a malicious pickle part."""
    from functionfuse.storage.manifests import encode_manifest, manifest_path

    doc = storage.read_meta("wf", key)
    ref = storage.results.objects.put_bytes(pickle.dumps(Payload(marker)))
    doc["result"] = {"part": 0}
    doc["parts"] = [{"format": "pickle", "info": {"type": "Payload"}, "codec": None, **ref.to_json()}]
    doc.pop("persistent", None)
    storage.results._publish(manifest_path(key), encode_manifest(doc), replace=True)


@workflow
def padded(x):
    return {"x": x, "pad": "p" * 600}  # too large to travel in run records: read from its manifest


def test_a_crafted_pickle_never_runs_in_metadata_operations_nor_in_safe_mode(any_storage, tmp_path):
    CALLS.clear()
    marker = tmp_path / "pwned"
    _run(any_storage, padded(1).set_name("p"))
    key = any_storage.read_task_meta("wf", "p")["key"]
    _plant_pickle(any_storage, key, str(marker))
    # Every metadata operation reads JSON only.
    assert any_storage.list_tasks("wf") == ["p"]
    assert any_storage.read_task_meta("wf", "p")["parts"][0]["format"] == "pickle"
    wf = LocalWorkflow(padded(1).set_name("p"), workflow_name="wf")
    wf.set_storage(any_storage)
    assert wf.explain().by_node()["p"].action == "read"
    assert not marker.exists()
    # Safe mode refuses the pickle by node name and recomputes the node.
    args, kwargs = any_storage._constructor_args()
    safe = type(any_storage)(*args, **{**kwargs, "safe": True})
    with pytest.warns(Warning, match="node 'p'.*pickle.*safe mode"):
        wf, result = _run(safe, padded(1).set_name("p"))
    assert result["x"] == 1 and _actions(wf)["p"] == ("computed", "unreadable entry")
    assert not marker.exists()
    assert safe.read_task("wf", "p")["x"] == 1  # replaced by a safe (JSON) result
    any_storage.remove_task("wf", "p")
    assert not marker.exists()


@workflow
def opaque():
    return Payload("never-used")


def test_safe_mode_refuses_results_only_pickle_can_hold(tmp_path):
    safe = FileStorage(tmp_path / "store", safe=True)
    with pytest.raises(SerializationError) as info:
        _run(safe, opaque().set_name("op"))
    msg = str(info.value)
    assert "node 'op'" in msg and "Payload" in msg and "safe mode" in msg
    assert "register_persistent_serializers" in msg and "log_nodes" in msg


# -- result schemas ------------------------------------------------------------------------


SHAPES_V1 = """
import dataclasses

@dataclasses.dataclass
class Point:
    x: int
    y: int
"""

SHAPES_V2 = """
import dataclasses

@dataclasses.dataclass
class Point:
    x: int
    y: int
    z: int = 0
"""


def test_a_changed_result_schema_recomputes_the_node(any_storage, tmp_path, monkeypatch):
    (tmp_path / "shapes_v2mod.py").write_text(SHAPES_V1)
    monkeypatch.syspath_prepend(str(tmp_path))
    shapes = importlib.import_module("shapes_v2mod")

    @workflow(version="1")  # the key stays the same whatever the class becomes
    def point():
        return shapes.Point(1, 2)

    _run(any_storage, point().set_name("pt"))
    meta = any_storage.read_task_meta("wf", "pt")
    [record] = meta["parts"][0]["info"]["schemas"]
    assert record["class"] == "shapes_v2mod.Point" and record["fields"] == [["x", "int"], ["y", "int"]]
    wf, _ = _run(any_storage, point().set_name("pt"))
    assert _actions(wf)["pt"] == ("read", "cached")
    (tmp_path / "shapes_v2mod.py").write_text(SHAPES_V2)
    shapes = importlib.reload(shapes)
    wf, result = _run(any_storage, point().set_name("pt"))
    assert _actions(wf)["pt"] == ("computed", "result schema changed")
    assert dataclasses.asdict(result) == {"x": 1, "y": 2, "z": 0}
    sys.modules.pop("shapes_v2mod", None)


# -- what 0.1.0 left, memory maps --------------------------------------------------------


def test_entries_of_0_1_0_are_ignored(tmp_path):
    root = tmp_path / "store"
    (root / "wf" / ".data").mkdir(parents=True)
    (root / "wf" / f"p-{'a' * 32}.ffr").write_bytes(b"FFR1" + os.urandom(200))
    (root / "objects").mkdir()
    (root / "objects" / f"x-{'b' * 32}.ffr").write_bytes(b"FFR1")  # a 0.1.0 workflow named "objects"
    storage = FileStorage(root)
    CALLS.clear()
    wf, result = _run(storage, plain(2).set_name("p"))
    assert result == {"x": 2} and CALLS == ["plain"]
    wf, _ = _run(storage, plain(2).set_name("p"))
    assert _actions(wf)["p"] == ("read", "cached")
    assert (root / "wf" / f"p-{'a' * 32}.ffr").exists()  # left alone


@workflow
def large():
    return np.arange(9 << 20, dtype=np.float64)  # 72 MiB


def test_large_arrays_load_as_copy_on_write_memory_maps(tmp_path):
    storage = FileStorage(tmp_path / "store")
    _run(storage, large().set_name("big"))
    [part] = storage.read_task_meta("wf", "big")["parts"]
    path = os.path.join(storage.path, "objects", part["object"][:2], part["object"][2:4], part["object"])
    before = os.stat(path).st_mtime_ns
    arr = storage.read_task("wf", "big")
    assert isinstance(arr, np.memmap) and arr.flags.writeable
    assert arr[12345] == 12345.0
    arr[:10] = -1  # copy-on-write: the stored file never changes
    again = storage.read_task("wf", "big")
    assert again[0] == 0.0 and os.stat(path).st_mtime_ns == before
    small = storage.results  # below 64 MiB: loaded eagerly
    ref = small.save("c" * 32, np.arange(1000.0))
    assert not isinstance(small.load("c" * 32), np.memmap) and ref["parts"][0]["format"] == "npy"


def test_run_records_are_one_small_sealed_document_per_run(tmp_path):
    storage = FileStorage(tmp_path / "store")
    for x in (1, 2):
        _run(storage, plain(x).set_name("p"))
    folder = tmp_path / "store" / "runs" / "wf"
    records = sorted(os.listdir(folder))
    assert len(records) == 2 and all(r.endswith(".json") for r in records)
    data = (folder / records[-1]).read_bytes()
    doc = json.loads(data)
    assert doc["outcome"] == "ok" and doc["executor"] == "local"
    assert doc["nodes"]["p"]["action"] == "computed" and len(doc["nodes"]["p"]["key"]) == 32
    assert len(data) < 2048


# -- compression ---------------------------------------------------------------------------


def _with(storage, **options):
    args, kwargs = storage._constructor_args()
    return type(storage)(*args, **{**kwargs, **options})


@pytest.mark.parametrize("codec", ["zstd", "gzip", "lz4", {"codec": "zstd", "level": 9, "shuffle": "byte"}])
def test_compression_never_changes_a_key_and_reads_under_any_setting(any_storage, codec):
    CALLS.clear()
    packed = _with(any_storage, compression=codec)
    _, value = _run(packed, tables(5000).set_name("t"))
    meta = packed.read_task_meta("wf", "t")
    name = codec if isinstance(codec, str) else codec["codec"]
    assert {p["format"]: p["codec"] for p in meta["parts"]} == {"npy": name, "parquet": None}
    for setting in (None, "gzip", "lz4"):  # switched: nothing recomputed
        wf, back = _run(_with(any_storage, compression=setting), tables(5000).set_name("t"))
        assert _actions(wf)["t"] == ("read", "cached")
        np.testing.assert_array_equal(back["weights"], value["weights"])
        pd.testing.assert_frame_equal(back["frame"], value["frame"])
    assert CALLS == ["tables"]


def test_parquet_parts_carry_their_codec_inside_the_file(tmp_path):
    import pyarrow.parquet as pq

    storage = FileStorage(tmp_path / "store", compression="zstd")
    _run(storage, tables(1000).set_name("t"))
    [part] = [p for p in storage.read_task_meta("wf", "t")["parts"] if p["format"] == "parquet"]
    path = tmp_path / "store" / "objects" / part["object"][:2] / part["object"][2:4] / part["object"]
    assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "ZSTD"


@workflow
def lazy_array(n):
    import dask.array as da

    return da.arange(n, chunks=n // 4, dtype="float64")


def test_dask_arrays_take_the_compression_preset(any_storage):
    packed = _with(any_storage, compression={"codec": "zstd", "level": 5, "shuffle": "byte"})
    _run(packed, lazy_array(4000).set_name("a"))
    back = _with(any_storage).read_task("wf", "a")  # read without the option
    np.testing.assert_array_equal(back.compute(), np.arange(4000.0))
    [part] = packed.read_task_meta("wf", "a")["parts"]
    assert part["format"] == "serializer" and part["info"]["serializer"] == "DaskArraySerializer"
    pid = json.loads(_object_bytes(packed, part["object"]))["pid"]
    if isinstance(packed, FileStorage):
        import h5py
        import hdf5plugin  # noqa: F401 - the zstd filter

        with h5py.File(os.path.join(packed.path, part["info"]["side"], pid["file"]), "r") as h5:
            filters = h5[pid["dataset"]]._filters
        assert "shuffle" in filters and "32015" in filters  # byte shuffle, then hdf5plugin's zstd
    else:
        meta = json.loads(packed.fs.cat_file(packed._join(part["info"]["side"], pid["file"], "zarr.json")))
        [codec] = [c for c in meta["codecs"] if c["name"] == "blosc"]
        assert codec["configuration"]["cname"] == "zstd" and codec["configuration"]["shuffle"] == "shuffle"


def test_small_results_travel_in_the_run_record(tmp_path, monkeypatch):
    storage = FileStorage(tmp_path / "store")
    CALLS.clear()
    _run(storage, plain(7).set_name("p"))
    [name] = os.listdir(tmp_path / "store" / "runs" / "wf")
    record = json.loads((tmp_path / "store" / "runs" / "wf" / name).read_bytes())
    key = record["nodes"]["p"]["key"]
    ref = record["values"]  # one object holding every small result the record names
    values = json.loads(_object_bytes(storage, ref["object"]))
    assert values == {key: {"t": "dict", "items": [["x", {"json": 7}]]}}
    objects = set(_object_sizes(storage))
    _run(storage, plain(7).set_name("p"))  # the same values: no new object
    assert set(_object_sizes(storage)) == objects
    result = _run(storage, plain(7).set_name("p"))[1]
    result["x"] = 8  # the value handed out is a copy: the next run still gets 7
    assert _run(storage, plain(7).set_name("p"))[1] == {"x": 7} and CALLS == ["plain"]
    # A cached rerun of many small results reads the record's object once: from the
    # first load when the executor knows many are coming (the cached leaves it returns),
    # else past the first few loads (each of which opens its manifest).
    from functionfuse.caching import FEW_LOADS

    leaves = [plain(i).set_name(f"p{i}") for i in range(20)]
    wf = LocalWorkflow(*leaves, workflow_name="many")
    wf.set_storage(storage)
    wf.run()
    opened = []
    real = storage.results.read_manifest
    monkeypatch.setattr(storage.results, "read_manifest", lambda k: opened.append(k) or real(k))

    def rerun(*extra):
        opened.clear()
        leaves = [plain(i).set_name(f"p{i}") for i in range(20)]
        wf = LocalWorkflow(*leaves, *extra, workflow_name="many")
        wf.set_storage(storage)
        assert wf.run()[:20] == [{"x": i} for i in range(20)]
        assert wf.last_report.read == [f"p{i}" for i in range(20)]
        return leaves

    rerun()
    assert opened == []  # 20 cached leaves announced: the record's object from the first
    leaves = rerun(plain(99).set_name("new"))  # the same, one node computed besides
    assert opened == []
    opened.clear()
    wf = LocalWorkflow(more(*[plain(i).set_name(f"p{i}") for i in range(20)]).set_name("more"), workflow_name="many")
    wf.set_storage(storage)
    assert wf.run() == 190 + 1  # the 20 loaded as inputs of a node that runs: not known ahead
    assert len(opened) == FEW_LOADS


def test_a_damaged_run_record_is_planned_without(tmp_path, caplog):
    storage = FileStorage(tmp_path / "store")
    _run(storage, plain(3).set_name("p"))
    folder = tmp_path / "store" / "runs" / "wf"
    [name] = os.listdir(folder)
    data = bytearray((folder / name).read_bytes())
    data[-5] ^= 0x20
    (folder / name).write_bytes(bytes(data))
    CALLS.clear()
    with caplog.at_level("WARNING"):
        wf, result = _run(storage, plain(3).set_name("p"))
    assert result == {"x": 3} and CALLS == [] and _actions(wf)["p"] == ("read", "cached")
    assert "run record" in caplog.text


def test_safe_mode_never_unpickles_a_persistent_id(tmp_path):
    import base64

    import cloudpickle

    from functionfuse.storage.manifests import encode_manifest, manifest_path

    storage = FileStorage(tmp_path / "store")
    _run(storage, padded(2).set_name("p"))
    key = storage.read_task_meta("wf", "p")["key"]
    marker = tmp_path / "pwned"
    planted = {"serializer": "DaskArraySerializer",
               "pickled_pid": base64.b64encode(cloudpickle.dumps(Payload(str(marker)))).decode()}
    ref = storage.results.objects.put_bytes(json.dumps(planted).encode())
    doc = storage.read_meta("wf", key)
    doc.pop("persistent", None)
    doc["result"] = {"part": 0}
    doc["parts"] = [{"format": "serializer", "info": {"serializer": "DaskArraySerializer", "side": "side/wf"},
                     "codec": None, **ref.to_json()}]
    storage.results._publish(manifest_path(key), encode_manifest(doc), replace=True)
    safe = FileStorage(tmp_path / "store", safe=True)
    with pytest.raises(SerializationError, match="pickled; safe mode does not unpickle"):
        safe.read_task("wf", "p")
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_large_parquet_parts_are_checked_before_they_are_read(tmp_path, damage):
    from functionfuse.errors import CorruptEntryError

    storage = FileStorage(tmp_path / "store")
    _run(storage, tables(400_000).set_name("t"))
    [part] = [p for p in storage.read_task_meta("wf", "t")["parts"] if p["format"] == "parquet"]
    assert part["size"] >= 4 << 20  # read from its file, checked in place
    path = tmp_path / "store" / "objects" / part["object"][:2] / part["object"][2:4] / part["object"]
    data = bytearray(path.read_bytes())
    path.unlink()
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    else:
        del data[-100:]
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptEntryError, match=part["object"]):
        storage.read_task("wf", "t")


def test_a_damaged_latest_record_falls_back_to_the_one_before(tmp_path, caplog):
    storage = FileStorage(tmp_path / "store")
    _run(storage, plain(1).set_name("p"))
    _run(storage, plain(2).set_name("p"))
    folder = tmp_path / "store" / "runs" / "wf"
    latest = sorted(os.listdir(folder))[-1]
    data = bytearray((folder / latest).read_bytes())
    data[-5] ^= 0x20
    (folder / latest).write_bytes(bytes(data))
    with caplog.at_level("WARNING"):
        assert storage.read_task("wf", "p") == {"x": 1}  # the run before the damaged record
    assert "using the run record before it" in caplog.text


def test_a_rerun_that_changes_nothing_names_the_same_small_results_unread(tmp_path, monkeypatch):
    storage = FileStorage(tmp_path / "store")

    def chain():
        node = plain(0).set_name("p0")
        for i in range(1, 20):
            node = plain(node).set_name(f"p{i}")  # a dict argument: each result is small
        return node

    _run(storage, chain())
    fetched = []
    real = storage._fetch_values
    monkeypatch.setattr(storage, "_fetch_values", lambda ref: fetched.append(ref) or real(ref))
    folder = tmp_path / "store" / "runs" / "wf"
    wf, _ = _run(storage, chain())  # only the leaf is loaded: the values object is not read
    assert wf.last_report.read == ["p19"] and fetched == []
    first, second = (json.loads((folder / name).read_bytes()) for name in sorted(os.listdir(folder)))
    assert second["values"] == first["values"]  # the same object, named again


def test_bad_input_to_the_storage_methods_is_a_clear_error_and_loses_nothing(tmp_path):
    from helpers import store_files

    from functionfuse.errors import StorageConfigError

    storage = FileStorage(tmp_path / "store")
    _run(storage, padded(5).set_name("p"))
    before = store_files(storage.path, "objects", "manifests", "runs")
    for bad in ("../../etc", "zz", "ABCDEF"):
        with pytest.raises(ValueError, match=f"cache key is lowercase hex, got '{re_escape(bad)}'"):
            storage.present([bad])
        with pytest.raises(ValueError, match="cache key"):
            storage.load("wf", bad)
        with pytest.raises(ValueError, match="cache key"):
            storage.read_meta("wf", bad)
    with pytest.raises(ValueError, match="not a run id: 'bad id'"):
        storage.record_run("wf", "bad id", {}, started="", finished="", outcome="ok", executor="x")
    with pytest.raises(ValueError, match="outcome must be one of.*'great'"):
        storage.record_run("wf", "20261127T150406.123456Z-h-1-9f2c", {}, started="", finished="",
                           outcome="great", executor="x")
    with pytest.raises(StorageConfigError, match="option 'compression'.*'brotli'.*zstd"):
        FileStorage(tmp_path / "other", compression="brotli")
    with pytest.raises(StorageConfigError, match="'compression'.*level"):
        FileStorage(tmp_path / "other", compression={"codec": "zstd", "level": 99})
    with pytest.raises(StorageConfigError, match="option 'safe'.*bool"):
        S3Storage("s3://bucket/prefix", {}, safe="yes")
    assert store_files(storage.path, "objects", "manifests", "runs") == before
    assert storage.read_task("wf", "p")["x"] == 5


def re_escape(text):
    import re

    return re.escape(text)


@workflow
def drawn(i):
    """A small impure result: a new number on every call."""
    CALLS.append(i)
    return {"i": i, "draw": len(CALLS) * 1000 + i}


@pytest.mark.parametrize("loads", [3, 12])  # fewer and more than FEW_LOADS: manifests, then the record's object
def test_a_result_another_workflow_stored_again_is_what_a_rerun_reads(any_storage, loads):
    """Workflow A's run record carries its small results; workflow B (the same nodes, so
    the same keys) stores one again with force=.  A's next cached rerun returns what
    the store holds now, however many results it loads, and records it."""
    import functionfuse

    def nodes():
        return [drawn(i).set_name(f"d{i}") for i in range(loads)]

    wf_a = LocalWorkflow(*nodes(), workflow_name="a")
    wf_a.set_storage(any_storage)
    first = wf_a.run()
    assert wf_a.run() == first  # cached: the record now carries every small result
    assert all(e.action == "read" for e in wf_a.last_report.events)
    wf_b = LocalWorkflow(*nodes(), workflow_name="b")
    wf_b.set_storage(any_storage)
    forced = wf_b.run(force="d1")
    assert forced[1] != first[1] and forced[0] == first[0]
    for _ in range(2):  # and again from the record this rerun writes
        again = wf_a.run()
        assert again[1] == forced[1], "A served the result its record held, not the stored one"
        assert again == [forced[1] if i == 1 else first[i] for i in range(loads)]
        assert {e.node: e.action for e in wf_a.last_report.events}["d1"] == "read"
    assert functionfuse.compute(drawn(1), storage=any_storage, workflow_name="a") == forced[1]


def test_overwrite_notes_go_with_their_results(any_storage, caplog):
    """A key stored again leaves a note (docs/format.md, "Overwrite notes"); removing
    the result removes it, gc removes a note whose result is gone (a remover killed in
    between), and a store whose notes cannot be listed reads manifests instead."""
    import logging

    from functionfuse.errors import StorageError
    from functionfuse.storage.gc import collect
    from functionfuse.storage.inventory import Inventory

    results = any_storage.results
    wf = LocalWorkflow(*[drawn(i).set_name(f"d{i}") for i in range(10)], workflow_name="notes")
    wf.set_storage(any_storage)
    first = wf.run()
    assert results.overwritten() == set()
    key = {e.node: e.key for e in wf.last_report.events}["d4"]
    forced = wf.run(force="d4")
    assert results.overwritten() == {key} and forced[4] != first[4]
    # The notes cannot be listed: the record's copies are not used at all (manifests are).
    real = results.overwritten
    results.overwritten = lambda: (_ for _ in ()).throw(StorageError("listing refused"))
    try:
        with caplog.at_level(logging.WARNING, logger="functionfuse"):
            assert wf.run() == forced
    finally:
        results.overwritten = real
    assert "could not list the results written over" in caplog.text
    any_storage.remove_task("notes", "d4")
    assert results.overwritten() == set()  # its result removed, its note with it
    # A note left by a remover killed between the manifest and the note: gc removes it.
    stray = "0123456789abcdef0123456789abcdef"
    results._note_overwrite(stray)
    assert collect(Inventory(results), dry_run=True).overwrite_notes == [f"overwrites/{stray}.json"]
    assert results.overwritten() == {stray}  # a dry run removes nothing
    assert collect(Inventory(results)).overwrite_notes == [f"overwrites/{stray}.json"]
    assert results.overwritten() == set()


def test_the_overwrite_note_is_written_before_the_manifest(any_storage, monkeypatch):
    """A writer killed between the two leaves a note over the old manifest (readers read
    the manifest: right either way), never a new manifest without its note (records would
    go on serving the old copy)."""
    results = any_storage.results
    wf = LocalWorkflow(drawn(7).set_name("d"), workflow_name="order")
    wf.set_storage(any_storage)
    wf.run()
    written = []
    real = results._publish

    def publish(relative, data, *, replace):
        written.append(relative.split("/")[0])
        return real(relative, data, replace=replace)

    monkeypatch.setattr(results, "_publish", publish)
    wf.run(force="d")
    assert written.index("overwrites") < written.index("manifests"), written
