"""The ``functionfuse`` command line (docs/cli.md) against a store on a real S3 endpoint.

Every command runs as the user runs it: ``python -m functionfuse --json --store
s3://... --storage-option ...`` in a subprocess, talking to the session's moto
server (tests/conftest.py) over HTTP.  The stores are made by running real
workflows twice, with an argument changed, so every store holds two runs and
two versions of the nodes that depend on that argument.
"""

import json
import os
import posixpath
import subprocess
import sys
import uuid

import numpy as np
import pandas as pd
import pytest

from functionfuse import storage_factory, workflow
from functionfuse.backends.builtin.localback import LocalWorkflow

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
N = 300
NODES = {"arrays", "table", "scaled", "weights", "summary"}


# -- the workflows ----------------------------------------------------------------


@workflow
def arrays(n):
    return np.linspace(0.0, 1.0, n) ** 2


@workflow
def table(a):
    return pd.DataFrame({"x": a, "label": [f"r{i}" for i in range(len(a))]})


@workflow
def scaled(a, scale):
    return a * scale  # scale 1 stores the same bytes as `arrays`: one object, two manifests


@workflow
def weights(a, t, scale):
    # Two parts: the array changes with `scale`, the frame does not (one object, two versions).
    return {"w": a * scale + 0.5, "frame": t.head(5), "scale": scale}


@workflow
def summary(a, scale):
    return {"total": float(a.sum()) * scale, "n": len(a)}  # small: held in its manifest


def expected(scale):
    a = np.linspace(0.0, 1.0, N) ** 2
    t = pd.DataFrame({"x": a, "label": [f"r{i}" for i in range(N)]})
    return {
        "arrays": a,
        "table": t,
        "scaled": a * scale,
        "weights": {"w": a * scale + 0.5, "frame": t.head(5), "scale": scale},
        "summary": {"total": float(a.sum()) * scale, "n": N},
    }


def assert_same(got, want):
    if isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want)
        for k in want:
            assert_same(got[k], want[k])
    elif isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray) and got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    elif isinstance(want, pd.DataFrame):
        pd.testing.assert_frame_equal(got, want)
    else:
        assert type(got) is type(want) and got == want


def storage_at(endpoint, url):
    return storage_factory({"kind": "S3", "options": {"path": url, "s3fs": endpoint.options}})


def run_demo(endpoint, url, scale):
    a = arrays(N).set_name("arrays")
    t = table(a).set_name("table")
    nodes = [
        scaled(a, scale).set_name("scaled"),
        weights(a, t, scale).set_name("weights"),
        summary(a, scale).set_name("summary"),
        t,
    ]
    wf = LocalWorkflow(*nodes, workflow_name="demo")
    wf.set_storage(storage_at(endpoint, url))
    wf.run()
    return wf


def run_other(endpoint, url):
    """A second workflow whose only node has the key of demo's `arrays`: shared."""
    wf = LocalWorkflow(arrays(N).set_name("arrays"), workflow_name="other")
    wf.set_storage(storage_at(endpoint, url))
    wf.run()


def make_store(endpoint, url):
    run_demo(endpoint, url, 1)
    run_demo(endpoint, url, 3)
    run_other(endpoint, url)


# -- the command line ---------------------------------------------------------------


def options_args(endpoint):
    o = endpoint.options
    return [
        "--storage-option", f"key={o['key']}",
        "--storage-option", f"secret={o['secret']}",
        "--storage-option", f"client_kwargs.endpoint_url={o['client_kwargs']['endpoint_url']}",
        "--storage-option", f"client_kwargs.region_name={o['client_kwargs']['region_name']}",
    ]


def cli(endpoint, url, *args, status=0, options=None):
    """Run ``python -m functionfuse --json ...``; returns its single JSON document."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    for name in ("FUNCTIONFUSE_STORE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        env.pop(name, None)
    options = options_args(endpoint) if options is None else options
    cmd = [sys.executable, "-m", "functionfuse", "--json", "--store", url, *options, *args]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=120)
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, f"expected one JSON document, got:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    doc = json.loads(lines[0])
    assert proc.returncode == status, (proc.returncode, doc, proc.stderr)
    assert doc["ok"] is (status == 0), doc
    if status == 0:
        assert doc["command"] == args[0]
    return doc


def s3(endpoint):
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False, **endpoint.options)


def keys_under(endpoint, url):
    """Paths (relative to the store root) of every S3 key under ``url``."""
    root = url.removeprefix("s3://")
    return {posixpath.relpath(p, root) for p in s3(endpoint).find(root)}


def manifest_path(key):
    return f"manifests/{key[:2]}/{key}.json"


def object_path(h):
    return f"objects/{h[:2]}/{h[2:4]}/{h}"


def read_records(endpoint, url, workflow):
    """The run records of ``workflow``, oldest first, as (relative path, parsed JSON)."""
    fs = s3(endpoint)
    root = url.removeprefix("s3://")
    out = []
    for p in sorted(fs.ls(f"{root}/runs/{workflow}", detail=False)):
        if p.endswith(".json"):
            out.append((posixpath.relpath(p, root), json.loads(fs.cat_file(p))))
    return out


# -- a store shared by the tests that change nothing ---------------------------------


@pytest.fixture(scope="module")
def store(s3_endpoint):
    url = f"s3://{s3_endpoint.bucket}/{uuid.uuid4().hex}"
    make_store(s3_endpoint, url)
    return url


@pytest.fixture
def fresh_store(s3_endpoint, s3_url):
    make_store(s3_endpoint, s3_url)
    return s3_url


def current_keys(endpoint, url, workflow):
    storage = storage_at(endpoint, url)
    return {n: storage.read_task_meta(workflow, n)["key"] for n in storage.list_tasks(workflow)}


def test_ls_lists_workflows_with_nodes_runs_bytes(s3_endpoint, store):
    doc = cli(s3_endpoint, store, "ls")
    rows = {r["workflow"]: r for r in doc["workflows"]}
    assert sorted(rows) == ["demo", "other"]
    demo = rows["demo"]
    assert demo["nodes"] == 5 and demo["runs"] == 2
    assert demo["last_outcome"] == "ok" and demo["last_run"] and demo["last_finished"]
    assert rows["other"]["nodes"] == 1 and rows["other"]["runs"] == 1
    per_node = cli(s3_endpoint, store, "ls", "demo")["nodes"]
    assert demo["bytes"] > 0 and demo["bytes"] == sum(n["bytes"] for n in per_node)
    # The same key in both workflows: the same bytes.
    assert rows["other"]["bytes"] == next(n["bytes"] for n in per_node if n["node"] == "arrays")


def test_ls_workflow_lists_nodes_versions_status_formats(s3_endpoint, store):
    doc = cli(s3_endpoint, store, "ls", "demo")
    assert doc["workflow"] == "demo"
    rows = {r["node"]: r for r in doc["nodes"]}
    assert set(rows) == NODES
    keys = current_keys(s3_endpoint, store, "demo")
    for name, row in rows.items():
        assert row["key"] == keys[name] and row["stored"] is True and row["bytes"] > 0 and row["created"]
    assert {n: r["versions"] for n, r in rows.items()} == {
        "arrays": 1, "table": 1, "scaled": 2, "weights": 2, "summary": 2}
    # The second run (scale 1 -> 3) computed what depends on scale and read the rest.
    assert {n: r["status"] for n, r in rows.items()} == {
        "arrays": "read", "table": "read", "scaled": "computed", "weights": "computed", "summary": "computed"}
    assert "scale" in rows["scaled"]["reason"]
    assert {n: r["formats"] for n, r in rows.items()} == {
        "arrays": ["npy"], "table": ["parquet"], "scaled": ["npy"], "weights": ["npy", "parquet"],
        "summary": ["inline"]}


def test_show_gives_meta_parts_lineage_and_history(s3_endpoint, store):
    keys = current_keys(s3_endpoint, store, "demo")
    doc = cli(s3_endpoint, store, "show", "demo", "arrays")
    assert doc["key"] == keys["arrays"] and doc["current"] is True
    assert doc["meta"]["function"].endswith("arrays") and doc["meta"]["arguments"] == {"n": N}
    assert [(p["format"], p["info"]["shape"]) for p in doc["parts"]] == [("npy", [N])]
    assert doc["bytes"] > sum(p["bytes"] for p in doc["parts"]) > 0  # the manifest counts too
    assert doc["inputs"] == []
    assert [(c["node"], c["key"]) for c in doc["consumers"]] == [
        (n, keys[n]) for n in ("scaled", "summary", "table", "weights")]
    assert [(h["key"], h["runs"], h["stored"], h["current"]) for h in doc["history"]] == [
        (keys["arrays"], 2, True, True)]

    doc = cli(s3_endpoint, store, "show", "demo", "weights")
    assert doc["meta"]["arguments"]["scale"] == 3
    assert sorted((i["node"], i["key"], i["current"]) for i in doc["inputs"]) == [
        ("arrays", keys["arrays"], True), ("table", keys["table"], True)]
    assert doc["consumers"] == []
    history = doc["history"]
    assert len(history) == 2 and all(h["stored"] and h["runs"] == 1 for h in history)
    assert [h["current"] for h in history] == [False, True] and history[1]["key"] == keys["weights"]
    assert history[0]["last_run"] < history[1]["first_run"]

    old = cli(s3_endpoint, store, "show", "demo", "weights", "--key", history[0]["key"][:10])
    assert old["key"] == history[0]["key"] and old["current"] is False
    assert old["meta"]["arguments"]["scale"] == 1


def test_runs_counts_what_each_run_did(s3_endpoint, store):
    runs = cli(s3_endpoint, store, "runs", "demo")["runs"]
    assert len(runs) == 2 and runs[0]["run"] < runs[1]["run"]
    assert all(r["outcome"] == "ok" and r["executor"] == "local" and r["seconds"] >= 0 for r in runs)
    assert [(r["computed"], r["read"], r["failed"]) for r in runs] == [(5, 0, 0), (3, 2, 0)]


def test_du_counts_shared_and_unreferenced_bytes(s3_endpoint, store):
    storage, fs, root = storage_at(s3_endpoint, store), s3(s3_endpoint), store.removeprefix("s3://")
    sizes = {}  # node -> bytes of its manifest and objects, straight from S3
    for name, key in current_keys(s3_endpoint, store, "demo").items():
        parts = storage.results.read_manifest(key)["parts"]
        sizes[name] = fs.info(f"{root}/{manifest_path(key)}")["size"] + sum(p["size"] for p in parts)
    demo_bytes, arrays_bytes = sum(sizes.values()), sizes["arrays"]
    doc = cli(s3_endpoint, store, "du")
    rows = {r["workflow"]: r for r in doc["workflows"]}
    assert rows["demo"]["bytes"] == demo_bytes
    assert rows["demo"]["shared_bytes"] == arrays_bytes  # its `arrays` is other's too
    assert rows["demo"]["unique_bytes"] == demo_bytes - arrays_bytes
    assert rows["other"] == {"workflow": "other", "bytes": arrays_bytes, "unique_bytes": 0,
                             "shared_bytes": arrays_bytes, "side_bytes": 0}
    # deduplicated: counted once; plus the small-results objects the latest records name
    records = [storage.results.latest_run(wf) for wf in ("demo", "other")]
    values = {r["values"]["object"] for r in records if "values" in r}
    values_bytes = sum(fs.info(f"{root}/{object_path(h)}")["size"] for h in values)
    assert doc["current_bytes"] == demo_bytes + values_bytes
    assert doc["unreferenced_bytes"] > 0  # the old versions
    assert doc["total_bytes"] == doc["current_bytes"] + doc["unreferenced_bytes"]
    # ... and the store's bytes are what S3 holds but the marker and the records.
    stored = sum(fs.info(f"{root}/{k}")["size"] for k in keys_under(s3_endpoint, store)
                 if k.startswith(("objects/", "manifests/")))
    assert doc["total_bytes"] == stored

    by_node = cli(s3_endpoint, store, "du", "demo")
    assert by_node["workflow"] == "demo"
    nodes = {r["node"]: r for r in by_node["nodes"]}
    assert set(nodes) == NODES
    assert nodes["arrays"]["shared_bytes"] == arrays_bytes and nodes["arrays"]["unique_bytes"] == 0
    assert all(nodes[n]["unique_bytes"] == nodes[n]["bytes"] > 0 for n in NODES - {"arrays"})


def test_verify_finds_no_damage(s3_endpoint, store):
    doc = cli(s3_endpoint, store, "verify")
    assert doc["damaged"] == []
    manifests = [k for k in keys_under(s3_endpoint, store) if k.startswith("manifests/")]
    assert doc["checked"]["records"] == 3 and doc["checked"]["manifests"] == len(manifests) == 8
    assert doc["checked"]["objects"] >= 5
    assert cli(s3_endpoint, store, "verify", "demo")["damaged"] == []


def test_export_writes_plain_files_of_each_format(s3_endpoint, store, tmp_path):
    want = expected(3)
    doc = cli(s3_endpoint, store, "export", "demo", "arrays", str(tmp_path / "a"))
    assert doc["written"] == [str(tmp_path / "a.npy")] and doc["formats"] == ["npy"] and doc["pickled"] is False
    back = np.load(tmp_path / "a.npy", allow_pickle=False)
    assert back.dtype == want["arrays"].dtype
    np.testing.assert_array_equal(back, want["arrays"])

    doc = cli(s3_endpoint, store, "export", "demo", "table", str(tmp_path / "t.parquet"))
    assert doc["written"] == [str(tmp_path / "t.parquet")] and doc["formats"] == ["parquet"]
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "t.parquet"), want["table"])

    doc = cli(s3_endpoint, store, "export", "demo", "summary", str(tmp_path / "s"))
    assert doc["written"] == [str(tmp_path / "s.json")] and doc["formats"] == []
    assert json.loads((tmp_path / "s.json").read_text()) == want["summary"]

    doc = cli(s3_endpoint, store, "export", "demo", "weights", str(tmp_path / "w"))
    assert sorted(doc["formats"]) == ["npy", "parquet"]
    layout = json.loads((tmp_path / "w" / "result.json").read_text())
    files = {p["format"]: tmp_path / "w" / p["file"] for p in layout["parts"]}
    np.testing.assert_array_equal(np.load(files["npy"], allow_pickle=False), want["weights"]["w"])
    pd.testing.assert_frame_equal(pd.read_parquet(files["parquet"]), want["weights"]["frame"])


def test_draw_gives_the_stored_lineage(s3_endpoint, store):
    dot = cli(s3_endpoint, store, "draw", "demo")["dot"]
    assert dot.startswith('digraph "demo" {')
    for parent, child in [("arrays", "table"), ("arrays", "scaled"), ("table", "weights"), ("arrays", "summary")]:
        assert f'"{parent}" -> "{child}";' in dot


def test_bad_input_is_a_clear_error(s3_endpoint, store, tmp_path):
    dest = str(tmp_path / "never")
    for args in (["rm", "nope"],):
        doc = cli(s3_endpoint, store, *args, status=1)
        assert "no workflow 'nope'" in doc["error"] and "'demo'" in doc["error"], (args, doc)
    for args in (["show", "demo", "nope"], ["export", "demo", "nope", dest], ["rm", "demo", "nope"]):
        doc = cli(s3_endpoint, store, *args, status=1)
        assert "no stored node 'nope'" in doc["error"], (args, doc)
    assert not any(tmp_path.iterdir())
    runs = cli(s3_endpoint, store, "runs", "demo")["runs"]  # nothing above wrote a record
    assert [r["outcome"] for r in runs] == ["ok", "ok"]

    # A prefix that is not a store: empty, or holding files but no FFSTORE.json.
    empty = f"s3://{s3_endpoint.bucket}/{uuid.uuid4().hex}"
    doc = cli(s3_endpoint, empty, "ls", status=1)
    assert empty in doc["error"] and "not a functionfuse store" in doc["error"]
    s3(s3_endpoint).pipe_file(f"{empty.removeprefix('s3://')}/runs/demo/x.json", b"{}")
    doc = cli(s3_endpoint, empty, "gc", "--grace", "0s", status=1)
    assert "not a functionfuse store" in doc["error"]
    assert keys_under(s3_endpoint, empty) == {"runs/demo/x.json"}  # gc deleted nothing there

    doc = cli(s3_endpoint, store, "ls", "--no-such-option", status=2)  # usage: exit status 2
    assert "--no-such-option" in doc["error"]


def test_storage_option_values_that_look_like_numbers_stay_strings(s3_endpoint, store):
    """An access key or secret made of digits (MinIO lets one choose them; ``0042``
    even starts with zeros) is a string s3fs must get as it was typed."""
    endpoint = s3_endpoint.options["client_kwargs"]["endpoint_url"]
    options = ["--storage-option", "key=0123456789", "--storage-option", "secret=0042",
               "--storage-option", f"client_kwargs.endpoint_url={endpoint}",
               "--storage-option", "client_kwargs.region_name=us-west-2"]
    doc = cli(s3_endpoint, store, "ls", options=options)  # moto takes any credentials
    assert sorted(r["workflow"] for r in doc["workflows"]) == ["demo", "other"]


def test_storage_option_keys_nest_at_every_dot(s3_endpoint, store):
    """``config_kwargs.retries.max_attempts=2`` is botocore's
    ``Config(retries={"max_attempts": 2})``, the way docs/storage.md sets retries."""
    options = [*options_args(s3_endpoint), "--storage-option", "config_kwargs.retries.max_attempts=2",
               "--storage-option", "config_kwargs.connect_timeout=5"]
    doc = cli(s3_endpoint, store, "ls", options=options)
    assert sorted(r["workflow"] for r in doc["workflows"]) == ["demo", "other"]


# -- tests that change their own store -------------------------------------------------


def flip_a_bit(endpoint, url, h, where):
    path = f"{url.removeprefix('s3://')}/{object_path(h)}"
    fs = s3(endpoint)
    data = bytearray(fs.cat_file(path))
    data[where] ^= 0x10  # one flipped bit, same size
    fs.pipe_file(path, bytes(data))


def test_verify_reports_damaged_objects_by_node_and_export_refuses_them(s3_endpoint, fresh_store, tmp_path):
    keys = current_keys(s3_endpoint, fresh_store, "demo")
    storage = storage_at(s3_endpoint, fresh_store)
    damaged = {n: storage.read_task_meta("demo", n)["parts"][0]["object"] for n in ("table", "scaled")}
    flip_a_bit(s3_endpoint, fresh_store, damaged["table"], 1000)
    flip_a_bit(s3_endpoint, fresh_store, damaged["scaled"], -1)

    for args in (["verify"], ["verify", "demo"]):
        doc = cli(s3_endpoint, fresh_store, *args, status=1)
        assert doc["ok"] is False and "2 damaged item" in doc["error"], doc
        found = sorted((d["what"], d["workflow"], d["node"], d["key"], d["path"]) for d in doc["damaged"])
        assert [f[:4] for f in found] == [("object", "demo", n, keys[n]) for n in ("scaled", "table")]
        assert [f[4].endswith(object_path(damaged[n])) for f, n in zip(found, ("scaled", "table"))] == [True, True]
        assert all("xxh3" in d["problem"].lower() for d in doc["damaged"]), doc["damaged"]

    doc = cli(s3_endpoint, fresh_store, "export", "demo", "scaled", str(tmp_path / "s"), status=1)
    assert damaged["scaled"] in doc["error"]
    assert not any(tmp_path.iterdir())


def test_verify_of_the_whole_store_reports_a_missing_current_manifest(s3_endpoint, fresh_store):
    """A manifest the latest record names is gone: read_task fails, so it is damage.

    ``verify demo`` reports it; ``verify`` (every workflow) must report it as well.
    """
    keys = current_keys(s3_endpoint, fresh_store, "demo")
    s3(s3_endpoint).rm_file(f"{fresh_store.removeprefix('s3://')}/{manifest_path(keys['table'])}")
    one = cli(s3_endpoint, fresh_store, "verify", "demo", status=1)
    assert [(d["node"], d["problem"]) for d in one["damaged"]] == [("table", "missing")]
    every = cli(s3_endpoint, fresh_store, "verify", status=1)
    assert [(d["workflow"], d["node"], d["problem"]) for d in every["damaged"]] == [("demo", "table", "missing")]


def test_rm_node_leaves_the_current_state_and_keeps_shared_results(s3_endpoint, fresh_store):
    keys = current_keys(s3_endpoint, fresh_store, "demo")
    doc = cli(s3_endpoint, fresh_store, "rm", "demo", "weights")
    assert doc["removed"] == ["weights"] and doc["whole_workflow"] is False
    rows = {r["node"]: r for r in cli(s3_endpoint, fresh_store, "ls", "demo")["nodes"]}
    assert set(rows) == NODES - {"weights"}
    assert {r["status"] for r in rows.values()} == {"carried"}  # the latest record is the removal
    assert manifest_path(keys["weights"]) not in keys_under(s3_endpoint, fresh_store)
    records = read_records(s3_endpoint, fresh_store, "demo")
    assert [r["outcome"] for _, r in records] == ["ok", "ok", "removed"]

    # `arrays` is other's current state too: it leaves demo, its result stays.
    assert cli(s3_endpoint, fresh_store, "rm", "demo", "arrays")["removed"] == ["arrays"]
    assert {r["node"] for r in cli(s3_endpoint, fresh_store, "ls", "demo")["nodes"]} == NODES - {"weights", "arrays"}
    assert manifest_path(keys["arrays"]) in keys_under(s3_endpoint, fresh_store)
    storage = storage_at(s3_endpoint, fresh_store)
    assert_same(storage.read_task("other", "arrays"), expected(3)["arrays"])
    for name in NODES - {"weights", "arrays"}:
        assert_same(storage.read_task("demo", name), expected(3)[name])


def _gc_store(s3_endpoint, url):
    """gc --keep-runs 1 --grace 0s on ``url``; returns (report, keys before, keys after, records before)."""
    records = read_records(s3_endpoint, url, "demo")
    before = keys_under(s3_endpoint, url)
    doc = cli(s3_endpoint, url, "gc", "--keep-runs", "1", "--grace", "0s")
    return doc, before, keys_under(s3_endpoint, url), records


def test_gc_removes_old_versions_and_keeps_every_current_result(s3_endpoint, fresh_store):
    storage = storage_at(s3_endpoint, fresh_store)
    (_, first), (_, second) = read_records(s3_endpoint, fresh_store, "demo")
    old_keys = {n: [e["key"]] for n, e in first["nodes"].items() if e["key"] != second["nodes"][n]["key"]}
    assert sorted(old_keys) == ["scaled", "summary", "weights"]
    old_meta = {n: storage.results.read_manifest(old_keys[n][0]) for n in old_keys}
    current = {**current_keys(s3_endpoint, fresh_store, "demo"), "other/arrays": current_keys(
        s3_endpoint, fresh_store, "other")["arrays"]}
    current_objects = {p["object"] for k in set(current.values())
                       for p in storage.results.read_manifest(k)["parts"]}

    dry = cli(s3_endpoint, fresh_store, "gc", "--keep-runs", "1", "--grace", "0s", "--dry-run")
    doc, before, after, records = _gc_store(s3_endpoint, fresh_store)
    assert {k: dry[k] for k in ("records", "manifests", "objects")} == {k: doc[k] for k in ("records", "manifests", "objects")}

    # The first run's record goes; the old versions' manifests go.
    assert doc["records"] == [records[0][0]]
    assert sorted(doc["manifests"]) == sorted(k for v in old_keys.values() for k in v)
    gone = before - after
    assert records[0][0] in gone and records[1][0] not in gone
    assert all(manifest_path(k) in gone for v in old_keys.values() for k in v)
    # The old `w` array goes; objects a current manifest names stay, even when an old
    # version named them too (scale 1's `scaled` is `arrays`' bytes, `frame` is shared).
    old_w = next(p["object"] for p in old_meta["weights"]["parts"] if p["format"] == "npy")
    assert object_path(old_w) in gone and old_w in doc["objects"]
    assert old_meta["scaled"]["parts"][0]["object"] in current_objects
    assert {p["object"] for p in old_meta["weights"]["parts"] if p["format"] == "parquet"} <= current_objects
    assert not {object_path(h) for h in current_objects} & gone
    assert not {manifest_path(k) for k in current.values()} & gone
    assert doc["bytes_freed"] > 0 and doc["size_after"] == doc["size_before"] - doc["bytes_freed"]

    # Every current node still reads back its value; nothing is damaged; a second gc finds nothing.
    storage = storage_at(s3_endpoint, fresh_store)
    for name, value in expected(3).items():
        assert_same(storage.read_task("demo", name), value)
    assert_same(storage.read_task("other", "arrays"), expected(3)["arrays"])
    assert cli(s3_endpoint, fresh_store, "verify")["damaged"] == []
    again = cli(s3_endpoint, fresh_store, "gc", "--keep-runs", "1", "--grace", "0s")
    assert (again["records"], again["manifests"]) == ([], [])


def test_gc_keeps_the_objects_kept_run_records_name(s3_endpoint, fresh_store):
    """A run record names an object of its own: ``values``, the small results
    (docs/format.md, "Run record").  gc keeps the latest record, so it must keep that
    object: a reader following format.md reads it, and a cached rerun names the
    same object again without writing it."""
    doc, _, after, _ = _gc_store(s3_endpoint, fresh_store)
    named = {}
    for name in ("demo", "other"):
        for path, record in read_records(s3_endpoint, fresh_store, name):
            if isinstance(record.get("values"), dict):
                named[path] = record["values"]["object"]
    assert named, "the latest demo record holds the small result of `summary`"
    missing = {path: h for path, h in named.items() if object_path(h) not in after}
    assert not missing, f"gc removed the `values` objects of kept run records {missing}; gc said: {doc}"


def test_a_store_that_is_an_object_or_an_unreachable_endpoint(s3_endpoint, store):
    # The location names an object (a file), not a store prefix.
    doc = cli(s3_endpoint, f"{store}/FFSTORE.json", "ls", status=1)
    assert "is not a functionfuse store" in doc["error"] and "FFSTORE.json" in doc["error"]
    # An endpoint nothing listens on: the error names the store and says it cannot be reached.
    dead = [
        "--storage-option", "key=k", "--storage-option", "secret=s",
        "--storage-option", "client_kwargs.endpoint_url=http://127.0.0.1:9",
        "--storage-option", "client_kwargs.region_name=us-west-2",
        "--storage-option", "config_kwargs.retries.max_attempts=1",
        "--storage-option", "config_kwargs.connect_timeout=1",
    ]
    doc = cli(s3_endpoint, store, "ls", status=1, options=dead)
    assert "S3 endpoint http://127.0.0.1:9 is unreachable" in doc["error"] and store in doc["error"]
