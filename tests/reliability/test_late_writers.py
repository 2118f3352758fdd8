"""Late writers on a real Dask cluster (issue 11, item 6).

0.1.0 returned from ``read_task`` whatever was written last; after a Dask worker
died, the cluster recomputed tasks of an earlier run and their stale entries
became "the" result.  Here a worker process is killed (SIGKILL) in the middle of
a run, the cluster recomputes what it lost, and afterwards a task on a worker
publishes the entry of the earlier run's key again, as such a recomputed task
would.  What ``read_task`` / ``read_task_meta`` return, and what the next run
reads, is the latest run's, every time.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

from functionfuse import workflow
from functionfuse.backends.builtin.daskback import DaskWorkflow
from functionfuse.storage import FileStorage

pytestmark = pytest.mark.reliability


@workflow
def load(i):
    return np.full(1000, float(i))


@workflow
def scale(a, factor):
    time.sleep(0.3)  # slow enough for the kill to land inside the run
    return a * factor


@workflow
def total(*parts):
    return float(sum(p.sum() for p in parts))


def build(factor):
    scaled = [scale(load(i).set_name(f"load{i}"), factor).set_name(f"scale{i}") for i in range(6)]
    return [total(*scaled).set_name("total"), *scaled]


@pytest.fixture
def cluster_client():
    import distributed

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        with distributed.Client(cluster, set_as_default=False) as client:
            yield client


def test_a_killed_worker_and_a_late_writer_never_change_what_the_latest_run_reads(cluster_client, tmp_path):
    storage = FileStorage(tmp_path / "store")

    def run(factor):
        wf = DaskWorkflow(*build(factor), workflow_name="late", client=cluster_client)
        wf.set_storage(storage)
        return wf, wf.run()

    _, first = run(1)
    old_key = storage.read_task_meta("late", "scale3")["key"]

    # Run 2: a worker is killed while it runs; the nanny starts a new one and the
    # scheduler recomputes what the dead worker held.
    pids = list(cluster_client.run(os.getpid).values())
    fired = []

    def kill():
        os.kill(pids[0], signal.SIGKILL)
        fired.append(time.monotonic())

    killer = threading.Timer(0.8, kill)
    killer.start()
    wf2, second = run(2)
    ended = time.monotonic()
    killer.join()
    assert fired and fired[0] < ended, "the run ended before the worker was killed"
    assert second[0] == 2 * first[0]
    assert pids[0] not in cluster_client.run(os.getpid).values(), "the worker was not killed"
    new_key = storage.read_task_meta("late", "scale3")["key"]
    assert new_key != old_key

    # A late writer: a task on a worker publishes run 1's entry of scale3 again
    # (its manifest written after run 2 ended, as a recomputed stale task would).
    os.remove(next(p for p in (tmp_path / "store" / "manifests").rglob(f"{old_key}.json")))
    meta = {"node": "scale3", "workflow": "late"}

    def late_write(storage, key, value, meta):
        storage.save("late", "scale3", key, value, dict(meta))
        return key

    assert cluster_client.submit(late_write, storage, old_key, np.full(1000, 3.0), meta, pure=False).result() == old_key
    assert storage.results.read_manifest(old_key)["key"] == old_key  # it is there, newest of all

    for name in ("scale3", "total"):
        assert storage.read_task_meta("late", name)["key"] != old_key
    assert np.array_equal(storage.read_task("late", "scale3"), np.full(1000, 6.0))
    assert storage.read_task("late", "total") == second[0]
    wf3, third = run(2)
    assert third[0] == second[0]
    assert not wf3.last_report.nodes("computed"), wf3.last_report.summary()


def test_a_late_writer_publishing_an_old_key_changes_nothing_deterministic(tmp_path):
    """Without a cluster: run 1 (factor 1), run 2 (factor 2), then a writer publishes run 1's
    entry of a node again, newest of all on disk (as a late task would)."""
    from functionfuse.backends.builtin.localback import LocalWorkflow

    storage = FileStorage(tmp_path / "store")

    def run(factor):
        wf = LocalWorkflow(*build(factor), workflow_name="late")
        wf.set_storage(storage)
        return wf, wf.run()

    run(1)
    old = {name: storage.read_task_meta("late", name)["key"] for name in ("scale0", "total")}
    _, second = run(2)
    storage.results.delete_manifests(old.values())
    time.sleep(0.01)
    storage.save("late", "scale0", old["scale0"], np.full(1000, 0.0), {})
    storage.save("late", "total", old["total"], -1.0, {})  # and a value no run ever gave

    assert storage.read_task("late", "total") == second[0]
    assert np.array_equal(storage.read_task("late", "scale0"), second[1])
    assert storage.read_task_meta("late", "total")["key"] != old["total"]
    wf, third = run(2)
    assert third[0] == second[0] and not wf.last_report.nodes("computed")
