"""The functionfuse command line on file storage, driven as a user drives it:
``python -m functionfuse`` / the ``functionfuse`` console script in subprocesses
(docs/cli.md).  S3 and gc beside a running workflow: test_cli_s3.py, test_gc_concurrent.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig

import numpy as np
import pandas as pd
import pytest

from functionfuse import storage_factory, workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.cli import main
from functionfuse.storage.objects import object_path


def cli(store, *args, json_out=True, env=None):
    """Run the real command line; returns (exit status, parsed JSON or text, stderr)."""
    cmd = [sys.executable, "-m", "functionfuse"] + (["--json"] if json_out else [])
    cmd += (["--store", str(store)] if store is not None else []) + [str(a) for a in args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    out = done.stdout
    if json_out:
        lines = [line for line in out.splitlines() if line.strip()]
        assert len(lines) == 1, f"--json must print exactly one document, got {out!r} (stderr {done.stderr!r})"
        out = json.loads(lines[0])
    return done.returncode, out, done.stderr


def _build(k: int, version: int = 1):
    @workflow
    def load(n):
        return np.arange(n, dtype=np.float64)

    @workflow
    def scale(a, k):
        return a * k

    @workflow
    def table(a):
        return pd.DataFrame({"x": a[:50], "label": [f"r{i}" for i in range(50)]})

    @workflow
    def stats(a, t):
        return {"mean": float(a.mean()), "rows": len(t), "version": version}

    @workflow
    def bundle(a):
        return {"head": a[:10].copy(), "tail": a[-10:].copy(), "note": "two arrays"}

    a = load(2000).set_name("load")
    b = scale(a, k).set_name("scale")
    t = table(b).set_name("table")
    return [stats(b, t).set_name("stats"), bundle(b).set_name("bundle")]


def _run(path, k, version=1, name="demo"):
    wf = LocalWorkflow(*_build(k, version), workflow_name=name)
    wf.set_storage(storage_factory({"kind": "file", "options": {"path": str(path)}}))
    return wf.run(), wf


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "store"
    _run(path, 2)
    _run(path, 3)
    _run(path, 2)  # A -> B -> A: the third run reads everything
    return path


def test_ls_lists_workflows_and_nodes(store):
    _run(store, 5, name="other")
    rc, doc, _ = cli(store, "ls")
    assert rc == 0 and doc["ok"] and doc["command"] == "ls"
    by = {w["workflow"]: w for w in doc["workflows"]}
    assert set(by) == {"demo", "other"}
    assert by["demo"]["nodes"] == 5 and by["demo"]["runs"] == 3 and by["demo"]["last_outcome"] == "ok"
    assert by["demo"]["bytes"] > 16000  # the 2000-float array alone
    rc, doc, _ = cli(store, "ls", "demo")
    nodes = {n["node"]: n for n in doc["nodes"]}
    assert set(nodes) == {"load", "scale", "table", "stats", "bundle"}
    assert nodes["scale"]["versions"] == 2 and nodes["load"]["versions"] == 1
    assert nodes["scale"]["formats"] == ["npy"] and nodes["table"]["formats"] == ["parquet"]
    assert nodes["stats"]["formats"] == ["inline"]
    assert {n["status"] for n in nodes.values()} <= {"read", "skipped"}  # the third run computed nothing


def test_human_output_is_an_aligned_table(store):
    rc, text, _ = cli(store, "ls", "demo", json_out=False)
    assert rc == 0
    lines = text.rstrip("\n").splitlines()
    assert lines[0].split()[:3] == ["NODE", "VERSIONS", "LAST"]
    key_col = lines[0].index("KEY")
    assert all(len(line) >= key_col and line[key_col - 2:key_col] == "  " for line in lines[1:])
    assert any("KiB" in line for line in lines[1:]) and any("ago" in line for line in lines[1:])


def test_show_gives_meta_parts_lineage_and_history(store):
    rc, doc, _ = cli(store, "show", "demo", "scale")
    assert rc == 0 and doc["current"]
    assert doc["meta"]["function"].endswith("scale") and doc["meta"]["arguments"]["k"] == 2
    assert [p["format"] for p in doc["parts"]] == ["npy"]
    assert [i["node"] for i in doc["inputs"]] == ["load"] and doc["inputs"][0]["current"]
    assert {c["node"] for c in doc["consumers"]} == {"table", "stats", "bundle"}
    history = {h["key"]: h for h in doc["history"]}
    assert len(history) == 2 and history[doc["key"]]["runs"] == 2
    other = next(k for k in history if k != doc["key"])
    rc, old, _ = cli(store, "show", "demo", "scale", "--key", other[:10])
    assert rc == 0 and not old["current"] and old["meta"]["arguments"]["k"] == 3


def test_runs_counts_what_each_run_did(store):
    rc, doc, _ = cli(store, "runs", "demo")
    runs = doc["runs"]
    assert len(runs) == 3 and all(r["outcome"] == "ok" and r["host"] for r in runs)
    assert runs[0]["computed"] == 5 and runs[1]["computed"] == 4  # load is reused by the second
    assert runs[2]["computed"] == 0 and runs[2]["read"] + runs[2]["skipped"] == 5
    assert all(r["seconds"] is not None and r["seconds"] >= 0 for r in runs)


def test_du_tells_shared_from_unique(store):
    _run(store, 2, name="twin")  # the same results under another workflow: shared, stored once
    rc, doc, _ = cli(store, "du")
    by = {w["workflow"]: w for w in doc["workflows"]}
    assert by["demo"]["shared_bytes"] == by["twin"]["shared_bytes"] > 0
    assert by["demo"]["unique_bytes"] == by["twin"]["unique_bytes"] == 0
    assert doc["unreferenced_bytes"] > 0  # scale with k=3 and its consumers
    rc, doc, _ = cli(store, "du", "demo")
    assert {n["node"] for n in doc["nodes"]} == {"load", "scale", "table", "stats", "bundle"}
    assert all(n["bytes"] == n["unique_bytes"] + n["shared_bytes"] for n in doc["nodes"])


def test_verify_reports_damage_by_node_and_fails(store):
    rc, doc, _ = cli(store, "verify")
    assert rc == 0 and doc["ok"] and doc["damaged"] == [] and doc["checked"]["objects"] >= 4
    _, show, _ = cli(store, "show", "demo", "table")
    obj = store / object_path(show["parts"][0]["object"])
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0x10
    obj.write_bytes(bytes(data))
    rc, doc, _ = cli(store, "verify", "demo")
    assert rc == 1 and doc["ok"] is False and "damaged" in doc["error"]
    assert [(d["node"], d["what"]) for d in doc["damaged"]] == [("table", "object")]
    assert "XXH3" in doc["damaged"][0]["problem"]
    rc, text, _ = cli(store, "verify", json_out=False)
    assert rc == 1 and "DAMAGED" in text and "table" in text
    # export refuses the damaged part (checked in place before it is copied), writing nothing
    rc, doc, _ = cli(store, "export", "demo", "table", store.parent / "t.parquet")
    assert rc == 1 and "corrupt" in doc["error"] and not (store.parent / "t.parquet").exists()
    assert doc["error"].startswith("node 'table' of workflow 'demo' not exported")
    # the damage verify reports is real: loading the node detects it too
    from functionfuse.errors import CorruptEntryError

    storage = storage_factory({"kind": "file", "options": {"path": str(store)}})
    with pytest.raises(CorruptEntryError):
        storage.read_task("demo", "table")


def test_export_writes_plain_files(store, tmp_path):
    dest = tmp_path / "out"
    rc, doc, _ = cli(store, "export", "demo", "scale", dest / "scale")
    assert rc == 0 and doc["written"] == [str(dest / "scale.npy")] and not doc["pickled"]
    np.testing.assert_array_equal(np.load(dest / "scale.npy"), np.arange(2000.0) * 2)
    rc, doc, _ = cli(store, "export", "demo", "table", dest / "t.parquet")
    assert doc["written"] == [str(dest / "t.parquet")]
    assert pd.read_parquet(dest / "t.parquet")["label"].tolist()[:2] == ["r0", "r1"]
    rc, doc, _ = cli(store, "export", "demo", "stats", dest / "stats")
    assert json.loads((dest / "stats.json").read_text()) == {"mean": 1999.0, "rows": 50, "version": 1}
    rc, doc, _ = cli(store, "export", "demo", "bundle", dest / "bundle")
    layout = json.loads((dest / "bundle" / "result.json").read_text())
    files = [p["file"] for p in layout["parts"]]
    assert sorted(files) == ["part-0.npy", "part-1.npy"]
    arrays = sorted(np.load(dest / "bundle" / f)[0] for f in files)
    assert arrays == [0.0, 3980.0]


def test_export_of_a_pickled_result_says_so_and_never_unpickles(tmp_path):
    marker = tmp_path / "ran"

    class Trap:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    @workflow
    def trapped():
        return Trap()

    wf = LocalWorkflow(trapped().set_name("trap"), workflow_name="evil")
    wf.set_storage(storage_factory({"kind": "file", "options": {"path": str(tmp_path / "s")}}))
    wf.run()
    if marker.exists():
        marker.unlink()  # pickling it ran nothing, but be sure the CLI alone is tested
    for args in (("ls",), ("ls", "evil"), ("show", "evil", "trap"), ("du",), ("verify",), ("draw", "evil"),
                 ("runs", "evil")):
        rc, doc, err = cli(tmp_path / "s", *args)
        assert rc == 0, (args, doc, err)
    rc, doc, _ = cli(tmp_path / "s", "export", "evil", "trap", tmp_path / "x")
    assert rc == 0 and doc["pickled"] and doc["written"] == [str(tmp_path / "x.pkl")]
    rc, text, _ = cli(tmp_path / "s", "export", "evil", "trap", tmp_path / "y", json_out=False)
    assert "pickle" in text and "trust" in text
    assert not marker.exists()


def test_rm_removes_nodes_and_workflows(store):
    rc, doc, _ = cli(store, "rm", "demo", "--pattern", "sta*")
    assert rc == 0 and doc["removed"] == ["stats"]
    _, doc, _ = cli(store, "ls", "demo")
    assert {n["node"] for n in doc["nodes"]} == {"load", "scale", "table", "bundle"}
    rc, doc, _ = cli(store, "rm", "demo", "nope")
    assert rc == 1 and "nope" in doc["error"]
    rc, doc, _ = cli(store, "rm", "demo")
    assert rc == 0 and doc["whole_workflow"]
    assert cli(store, "ls")[1]["workflows"] == []


def test_gc_keeps_what_latest_runs_need(store):
    before = sorted(p.relative_to(store).as_posix() for p in store.rglob("*") if p.is_file())
    rc, dry, _ = cli(store, "gc", "--keep-runs", "1", "--grace", "0s", "--dry-run")
    assert rc == 0 and dry["dry_run"] and len(dry["records"]) == 2 and dry["manifests"]
    after_dry = sorted(p.relative_to(store).as_posix() for p in store.rglob("*") if p.is_file())
    assert after_dry == before  # a dry run deletes nothing
    rc, doc, _ = cli(store, "gc", "--keep-runs", "1", "--grace", "0s")
    assert rc == 0 and doc["manifests"] == dry["manifests"] and doc["objects"] == dry["objects"]
    assert doc["bytes_freed"] > 0 and doc["size_after"] < doc["size_before"]
    # everything the latest run needs is there: a rerun reads it all
    out, wf = _run(store, 2)
    assert not wf.last_report.computed
    storage = storage_factory({"kind": "file", "options": {"path": str(store)}})
    np.testing.assert_array_equal(storage.read_task("demo", "scale"), np.arange(2000.0) * 2)
    assert cli(store, "verify")[0] == 0
    # the default keeps 10 runs: the older version comes back with its records
    rc, doc, _ = cli(store, "gc", "--grace", "0s")
    assert doc["manifests"] == [] and doc["records"] == []


def test_gc_policies(store):
    rc, doc, _ = cli(store, "gc", "--older-than", "30d", "--grace", "0s", "--dry-run")
    assert doc["records"] == []  # every record is young
    rc, doc, _ = cli(store, "gc", "--max-size", "1B", "--grace", "0s")
    assert len(doc["records"]) == 2 and doc["over_max_size"]  # the latest run's results stay
    rc, text, _ = cli(store, "gc", "--max-size", "1B", "--grace", "0s", json_out=False)
    assert "never removed" in text
    _, wf = _run(store, 2)
    assert not wf.last_report.computed


def test_gc_default_grace_keeps_fresh_unreferenced_results(store):
    rc, doc, _ = cli(store, "gc", "--keep-runs", "1")
    assert doc["manifests"] == [] and doc["objects"] == [] and doc["kept_young"] > 0


def test_gc_removes_stale_temporaries(store):
    tmp = store / "tmp"
    tmp.mkdir(exist_ok=True)
    old = tmp / "deadbeef-1"
    old.write_bytes(b"x" * 100)
    os.utime(old, (1, 1))
    rc, doc, _ = cli(store, "gc")
    assert doc["temporaries"] == 1 and not old.exists()


def test_draw_gives_dot_and_renders(store, tmp_path):
    rc, text, _ = cli(store, "draw", "demo", json_out=False)
    assert rc == 0 and text.startswith('digraph "demo" {') and text.rstrip().endswith("}")
    assert '"load" -> "scale";' in text and '"scale" -> "bundle";' in text
    rc, doc, _ = cli(store, "draw", "demo", "-o", tmp_path / "g.gv")
    assert rc == 0 and (tmp_path / "g.gv").read_text().startswith("digraph")
    env = {**os.environ, "PATH": str(tmp_path / "empty-bin")}
    if shutil.which("dot") is None:
        rc, doc, _ = cli(store, "draw", "demo", "-o", tmp_path / "g.svg", env=env)
        assert rc == 1 and "Graphviz" in doc["error"] and "apt install graphviz" in doc["error"]
    rc, doc, _ = cli(store, "draw", "demo", "-o", tmp_path / "g.txt")
    assert rc == 2 and ".svg" in doc["error"]


@pytest.mark.parametrize("args, words", [
    (("ls", "nope"), ["nope", "demo"]),
    (("show", "demo", "scal"), ["scal", "did you mean", "scale"]),
    (("show", "demo", "scale", "--key", "ffff"), ["ffff", "versions"]),
    (("runs", "nope"), ["nope"]),
    (("export", "demo", "nope", "x"), ["nope"]),
    (("gc", "--max-size", "lots"), ["lots", "10GB"]),
    (("gc", "--keep-runs", "0"), ["keep_runs"]),
    (("bogus",), ["bogus"]),
])
def test_bad_input_is_a_clear_error(store, args, words):
    before = sorted(p.relative_to(store).as_posix() for p in store.rglob("*") if p.is_file())
    rc, doc, _ = cli(store, *args)
    assert rc in (1, 2) and doc["ok"] is False
    for w in words:
        assert w in doc["error"], (w, doc["error"])
    assert sorted(p.relative_to(store).as_posix() for p in store.rglob("*") if p.is_file()) == before


def test_store_location_errors(tmp_path, store):
    rc, doc, _ = cli(tmp_path / "missing", "ls")
    assert rc == 1 and "does not exist" in doc["error"]
    (tmp_path / "afile").write_text("x")
    rc, doc, _ = cli(tmp_path / "afile", "ls")
    assert rc == 1 and "is a file" in doc["error"]
    (tmp_path / "plain").mkdir()
    rc, doc, _ = cli(tmp_path / "plain", "ls")
    assert rc == 1 and "not a functionfuse store" in doc["error"]
    env = {k: v for k, v in os.environ.items() if k != "FUNCTIONFUSE_STORE"}
    rc, doc, _ = cli(None, "ls", env=env)
    assert rc == 2 and "FUNCTIONFUSE_STORE" in doc["error"]
    rc, doc, _ = cli(None, "ls", env={**env, "FUNCTIONFUSE_STORE": str(store)})
    assert rc == 0 and doc["workflows"][0]["workflow"] == "demo"


def test_damaged_run_record_and_manifest_are_reported_not_fatal(store):
    runs = sorted((store / "runs" / "demo").iterdir())
    runs[0].write_bytes(runs[0].read_bytes()[:-20])
    rc, doc, _ = cli(store, "runs", "demo")
    assert rc == 0 and "damaged" in doc["runs"][0] and len(doc["runs"]) == 3
    rc, doc, _ = cli(store, "verify", "demo")
    assert rc == 1 and doc["damaged"][0]["what"] == "run record"
    assert cli(store, "ls", "demo")[0] == 0


def test_console_script_and_main_agree(store, capsys):
    script = os.path.join(sysconfig.get_path("scripts"), "functionfuse")
    assert os.path.exists(script), "the console script is installed with the package"
    done = subprocess.run([script, "--json", "--store", str(store), "ls"], capture_output=True, text=True, timeout=60)
    assert json.loads(done.stdout)["workflows"][0]["workflow"] == "demo"
    assert main(["--store", str(store), "--json", "ls"]) == 0
    assert json.loads(capsys.readouterr().out)["workflows"][0]["workflow"] == "demo"


def test_du_and_ls_count_side_data(tmp_path):
    import dask.array as da

    @workflow
    def lazy(n):
        return da.ones((n, 100), chunks=(n // 4, 100))

    wf = LocalWorkflow(lazy(4000).set_name("big"), workflow_name="dask")
    wf.set_storage(storage_factory({"kind": "file", "options": {"path": str(tmp_path / "s")}}))
    wf.run()
    side = sum(p.stat().st_size for p in (tmp_path / "s" / "side").rglob("*") if p.is_file())
    assert side > 0  # the HDF5 file of the dask array
    rc, doc, _ = cli(tmp_path / "s", "du")
    [row] = doc["workflows"]
    assert row["side_bytes"] == side and row["bytes"] >= side and row["unique_bytes"] >= side
    assert doc["total_bytes"] >= side
    rc, doc, _ = cli(tmp_path / "s", "du", "dask")
    assert doc["side_bytes"] == side
    rc, doc, _ = cli(tmp_path / "s", "ls")
    assert doc["workflows"][0]["bytes"] >= side
