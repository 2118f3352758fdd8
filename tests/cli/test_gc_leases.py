"""gc and runs in progress: run leases keep what a running workflow uses, even an old
version no record names any more; a damaged latest record stops gc (docs/cli.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from functionfuse import storage_factory, workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.storage.runs import encode_lease, lease_path, new_run_id


def cli(store, *args):
    done = subprocess.run([sys.executable, "-m", "functionfuse", "--json", "--store", str(store), *map(str, args)],
                          capture_output=True, text=True, timeout=120, check=False)
    return done.returncode, json.loads(done.stdout)


def files(store):
    return sorted(p.relative_to(store).as_posix() for p in store.rglob("*") if p.is_file())


@workflow
def scaled(factor):
    return [factor] * 100


@workflow
def summed(xs):
    return sum(xs)


def run(store, factor):
    wf = LocalWorkflow(summed(scaled(factor).set_name("scaled")).set_name("summed"), workflow_name="w")
    wf.set_storage(storage_factory({"kind": "file", "options": {"path": str(store)}}))
    return wf.run(), wf.last_report


# A run of factor F that, with a gate, waits in its last node until the gate file exists.
RUNNER = textwrap.dedent("""
    import os, sys, time
    from functionfuse import storage_factory, workflow
    from functionfuse.backends.builtin.localback import LocalWorkflow

    store, factor, gate = sys.argv[1], int(sys.argv[2]), sys.argv[3]

    @workflow
    def scaled(factor):
        return [factor] * 100

    @workflow
    def summed(xs):
        return sum(xs)

    @workflow
    def wait_for_gate(total, gate):
        if gate != "-":
            open(gate + ".waiting", "w").close()
            while not os.path.exists(gate):
                time.sleep(0.02)
        return total

    node = wait_for_gate(summed(scaled(factor).set_name("scaled")).set_name("summed"), gate).set_name("gate")
    storage = storage_factory({"kind": "file", "options": {"path": store}})
    wf = LocalWorkflow(node, workflow_name="w")
    wf.set_storage(storage)
    assert wf.run() == factor * 100
    if gate != "-":  # the old version was read, and is still there after gc ran meanwhile
        assert [e.action for e in wf.last_report.events if e.node == "summed"] == ["read"], wf.last_report
        assert storage.read_task("w", "summed") == factor * 100
""")


def test_gc_keeps_an_old_version_a_running_workflow_reads(tmp_path):
    store = tmp_path / "store"
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    gate = tmp_path / "gate"
    for factor in (2, 3):  # the latest record names only factor 3's keys
        subprocess.run([sys.executable, str(script), str(store), str(factor), "-"], check=True, timeout=120)
    proc = subprocess.Popen([sys.executable, str(script), str(store), "2", str(gate)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(str(gate) + ".waiting"):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the runner did not start"
            time.sleep(0.02)
        assert len([f for f in files(store) if f.endswith(".running")]) == 1  # the running run's lease
        rc, doc = cli(store, "gc", "--keep-runs", "1", "--grace", "0s")
        assert rc == 0 and doc["leases"] == 1, doc
        # only the first run's last node (its gate argument differs) goes: factor 2's scaled and
        # summed are the running run's, factor 3's the latest record's
        assert len(doc["manifests"]) == 1, doc
        assert len(doc["records"]) == 1  # the first run's record goes; the run's base record stays
    finally:
        gate.touch()
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert not [f for f in files(store) if f.endswith(".running")]  # the lease went with the run
    assert cli(store, "verify")[0] == 0
    rc, doc = cli(store, "gc", "--keep-runs", "1", "--grace", "0s")  # no run now: factor 3's go
    assert rc == 0 and len(doc["manifests"]) == 3 and doc["leases"] == 0
    assert cli(store, "verify")[0] == 0


def test_a_finished_run_leaves_no_lease(tmp_path):
    run(tmp_path, 2)
    assert not [f for f in files(tmp_path) if f.endswith(".running")]


def test_stale_leases_are_removed_and_live_ones_kept(tmp_path):
    _, old_report = run(tmp_path, 2)  # factor 2: a version only an older record names
    run(tmp_path, 3)
    storage = storage_factory({"kind": "file", "options": {"path": str(tmp_path)}})
    results = storage.results
    # a lease of a crashed run on this host (a pid that does not exist) and one 2 days old
    dead = new_run_id()
    path_dead = lease_path("w", dead)
    (tmp_path / path_dead).write_bytes(encode_lease("w", dead, base=None, keys=["a" * 32], started="2026-01-01T00:00:00Z"))
    rc, out = cli(tmp_path, "gc", "--grace", "0s", "--dry-run")
    assert rc == 0 and out["stale_leases"] == [path_dead]
    assert (tmp_path / path_dead).exists()  # a dry run removes nothing
    rc, out = cli(tmp_path, "gc", "--grace", "0s")
    assert out["stale_leases"] == [path_dead] and not (tmp_path / path_dead).exists()
    # a live lease (this process, just now) protects its keys, even with --keep-runs 1
    scaled_2 = {e.node: e.key for e in old_report.events}
    live = new_run_id()
    results.begin_run("w", live, base=None, keys=[scaled_2["scaled"]])
    rc, out = cli(tmp_path, "gc", "--keep-runs", "1", "--grace", "0s", "--dry-run")
    assert out["leases"] == 1 and scaled_2["scaled"] not in out["manifests"]
    assert scaled_2["summed"] in out["manifests"]  # not leased: it would go
    results.end_run("w", live)
    assert not (tmp_path / lease_path("w", live)).exists()


def test_a_damaged_latest_record_stops_gc_and_removes_nothing(tmp_path):
    run(tmp_path, 2)
    run(tmp_path, 3)
    record = sorted((tmp_path / "runs" / "w").glob("*.json"))[-1]
    data = bytearray(record.read_bytes())
    data[len(data) // 2] ^= 0x01
    record.write_bytes(bytes(data))
    before = files(tmp_path)
    rc, out = cli(tmp_path, "gc", "--keep-runs", "1", "--grace", "0s")
    assert rc == 1 and out["ok"] is False
    assert "latest run record of workflow 'w'" in out["error"] and record.name in out["error"]
    assert files(tmp_path) == before
    # a new run supersedes the damaged record: gc works again and keeps what it needs
    run(tmp_path, 3)
    rc, out = cli(tmp_path, "gc", "--keep-runs", "1", "--grace", "0s")
    assert rc == 0
    assert run(tmp_path, 3)[1].computed == []


@pytest.mark.parametrize("bad", ["-1h", "soon"])
def test_bad_lease_timeout_is_a_usage_error(tmp_path, bad):
    run(tmp_path, 2)
    rc, out = cli(tmp_path, "gc", "--lease-timeout", bad)
    assert rc == 2 and out["ok"] is False and bad in out["error"] or "lease" in out["error"], out


def test_a_bad_run_id_is_refused_and_writes_nothing(tmp_path):
    run(tmp_path, 2)
    before = files(tmp_path)
    storage = storage_factory({"kind": "file", "options": {"path": str(tmp_path)}})
    for bad in ("../../etc/x", "", "20261127T000000.000000Z"):
        with pytest.raises(ValueError, match="not a run id"):
            storage.begin_run("w", bad, base=None, keys=["a" * 32])
        with pytest.raises(ValueError, match="not a run id"):
            storage.end_run("w", bad)
    assert files(tmp_path) == before
