"""Store v2 results by key on local files and S3 (docs/format.md): save, load, dedup,
damage, safe mode, run records.  ``ResultStore`` is not wired into the storages yet."""

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from helpers import damage_manifest

from functionfuse.errors import CorruptEntryError, EntryNotFoundError, SerializationError
from functionfuse.storage.results import ResultStore
from functionfuse.storage.runs import new_run_id

KEY_A = "a" * 32
KEY_B = "b" * 32


@pytest.fixture(params=["file", "s3"])
def store(request, tmp_path):
    if request.param == "file":
        return ResultStore.from_url(str(tmp_path / "store"))
    endpoint = request.getfixturevalue("s3_endpoint")
    url = request.getfixturevalue("s3_url")
    return ResultStore.from_url(url, endpoint.options)


def value():
    frame = pd.DataFrame({"x": np.arange(1000), "name": [f"n{i}" for i in range(1000)]})
    return {"weights": np.linspace(0, 1, 5000), "table": frame, "score": 0.5, "tags": ["a", "b"]}


def test_round_trip_of_parts_in_plain_formats(store):
    manifest = store.save(KEY_A, value(), {"node": "fit", "workflow": "wf"})
    assert sorted(p["format"] for p in manifest["parts"]) == ["npy", "parquet"]
    got = store.load(KEY_A)
    assert got["score"] == 0.5 and got["tags"] == ["a", "b"]
    np.testing.assert_array_equal(got["weights"], value()["weights"])
    pd.testing.assert_frame_equal(got["table"], value()["table"])
    assert store.present([KEY_A, KEY_B]) == {KEY_A}
    with pytest.raises(EntryNotFoundError):
        store.load(KEY_B)


def test_same_content_is_stored_once_across_keys(store):
    first = store.save(KEY_A, value(), {"workflow": "one"})
    second = store.save(KEY_B, value(), {"workflow": "two"})
    assert [p["object"] for p in first["parts"]] == [p["object"] for p in second["parts"]]
    assert len(list(store.objects.iter_hashes())) == 2  # one npy, one parquet


def test_a_damaged_part_or_manifest_is_detected_never_decoded(tmp_path):
    store = ResultStore.from_url(str(tmp_path / "store"))
    manifest = store.save(KEY_A, value())
    part = manifest["parts"][0]
    path = store.objects.local_path(part["object"])
    with open(path, "rb") as fh:
        data = bytearray(fh.read())
    data[len(data) // 2] ^= 0x10
    os.chmod(path, 0o644)
    with open(path, "wb") as fh:
        fh.write(data)
    with pytest.raises(CorruptEntryError, match=part["object"]):
        store.load(KEY_A)
    store.start_pack()  # as a run does
    store.save(KEY_B, [1, 2, 3])  # a small result: a line of the run's pack
    store.close_pack()

    def flip(raw):
        raw[-5] ^= 0x01
        return raw

    assert damage_manifest(store.objects.root, KEY_B, flip).endswith(".pack")
    with pytest.raises(CorruptEntryError, match="checksum"):
        store.load(KEY_B)


def test_safe_mode_never_unpickles_and_refuses_what_needs_pickle(tmp_path):
    class Model:
        pass

    unsafe = ResultStore.from_url(str(tmp_path / "store"))
    unsafe.save(KEY_A, {"model": pickle.dumps(1), "obj": Model()})
    safe = ResultStore.from_url(str(tmp_path / "store"), safe=True)
    with pytest.raises(SerializationError, match="pickle"):
        safe.load(KEY_A)
    with pytest.raises(SerializationError, match=r"result\['obj'\]"):
        safe.save(KEY_B, {"obj": Model()})
    assert safe.present([KEY_B]) == set()


def test_files_open_without_functionfuse(tmp_path):
    store = ResultStore.from_url(str(tmp_path / "store"))
    manifest = store.save(KEY_A, value())
    paths = {p["format"]: store.objects.local_path(p["object"]) for p in manifest["parts"]}
    code = (
        "import sys, numpy, pandas\n"
        "try:\n    import functionfuse\n    sys.exit('functionfuse importable')\nexcept ImportError:\n    pass\n"
        f"print(numpy.load({paths['npy']!r}).shape, pandas.read_parquet({paths['parquet']!r}).shape)\n"
    )
    site = [p for p in sys.path if p.endswith("site-packages")]
    env = {"PYTHONPATH": os.pathsep.join(site), "PATH": os.environ.get("PATH", "")}
    out = subprocess.run([sys.executable, "-I", "-S", "-c", f"import sys; sys.path[:0] = {site!r}\n" + code],
                         capture_output=True, text=True, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(5000,) (1000, 2)"


def test_run_records_give_the_latest_run(store):
    assert store.latest_run("wf") is None
    ids = [new_run_id(t) for t in (1000.0, 2000.0)]
    for run_id, key in zip(ids, (KEY_A, KEY_B)):
        store.record_run("wf", run_id, {"fit": {"key": key, "action": "computed"}},
                         started="s", finished="f", outcome="ok", executor="local")
    latest = store.latest_run("wf")
    assert latest["run"] == ids[1] and latest["nodes"]["fit"]["key"] == KEY_B
    assert store.latest_run("other") is None


def test_concurrent_savers_of_one_key_leave_one_valid_manifest(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    store = ResultStore.from_url(str(tmp_path / "store"))
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: store.save(KEY_A, value()), range(8)))
    assert store.load(KEY_A)["score"] == 0.5
    assert os.listdir(os.path.join(store.objects.root, "tmp")) == []
    with open(os.path.join(store.objects.root, "manifests", "aa", KEY_A + ".json"), "rb") as fh:
        doc = json.loads(fh.read())
    assert doc["key"] == KEY_A


def test_saving_a_stored_key_again_keeps_the_first_manifest(store):
    first = store.save(KEY_A, [1, 2, 3], {"node": "first"})
    again = store.save(KEY_A, [1, 2, 3], {"node": "second"})  # create-if-absent: no error
    assert again["key"] == KEY_A
    assert store.read_manifest(KEY_A)["node"] == first["node"] == "first"


def test_a_record_in_another_workflows_folder_is_not_taken(tmp_path):
    import shutil

    store = ResultStore.from_url(str(tmp_path / "store"))
    run_id = new_run_id()
    path = store.record_run("x", run_id, {}, started="s", finished="f", outcome="ok", executor="local")
    other = os.path.join(store.objects.root, "runs", "y")
    os.makedirs(other)
    shutil.copy(os.path.join(store.objects.root, path), other)
    assert store.latest_run("x")["workflow"] == "x"
    assert store.latest_run("y") is None


def test_any_fsspec_filesystem_holds_a_store():
    store = ResultStore.from_url("memory://results-generic")
    store.save("a" * 32, {"x": [1, 2]})
    assert store.present(["a" * 32, "b" * 32]) == {"a" * 32}
    assert store.load("a" * 32) == {"x": [1, 2]}


def test_many_unknown_keys_on_s3_cost_one_listing_not_a_head_each(s3_endpoint, s3_url):
    import functionfuse.storage.results as results_module

    store = ResultStore.from_url(s3_url, s3_endpoint.options)
    stored = [f"{i:032x}" for i in range(70)]
    for key in stored[:5]:
        store.save(key, {"k": key})
    calls = []
    real = store.objects.fs.call_s3
    store.objects.fs.call_s3 = lambda method, *a, **k: calls.append(method) or real(method, *a, **k)
    try:
        assert store.present(stored) == set(stored[:5])
        assert calls == ["list_objects_v2"]
        results_module.LIST_PAGES, saved = 0, results_module.LIST_PAGES  # a store too large to list
        try:
            assert store.present(stored) == set(stored[:5])  # concurrent HEADs instead
        finally:
            results_module.LIST_PAGES = saved
    finally:
        del store.objects.fs.call_s3
