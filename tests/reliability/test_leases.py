"""Node leases (issue 11, item 7): concurrent runs on one storage compute each node once.

Runs are real processes started together on one store (file storage, and S3 on
the moto server with half of them pretending to be another host).  Each node
appends its name to a count file when it is computed: the counts must be one
per node, every run must give the right values, and no lease may be left.  A
run whose holder is killed takes the node over (at once when the holder was on
this host, after the time to live otherwise); a lease renewed while its node
runs is not taken over; two runs needing each other's nodes both finish.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import damage_manifest, manifest_span, stored_keys

from functionfuse import storage_factory, workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.progress import Progress
from functionfuse.storage.leases import lease_path

pytestmark = pytest.mark.reliability
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = '''
import json, os, socket, sys, time

HOST = sys.argv[4]
if HOST != "-":
    socket.gethostname = lambda: HOST  # another machine, as far as leases can tell

from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.storage import storage_factory

LOCATION, COUNTS, SPEC = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])


def note(name):
    with open(COUNTS, "a") as f:
        f.write(name + "\\n")


@workflow
def slow(i, seconds):
    note(f"slow{i}")
    time.sleep(float(os.environ.get("LEASE_TEST_SLEEP", seconds)))  # not part of the key
    return i * 10


@workflow
def total(*xs):
    note("total")
    return sum(xs)


def storage():
    kind = "S3" if LOCATION.startswith("s3://") else "file"
    options = {"path": LOCATION, "lease": SPEC.get("lease", True)}
    if SPEC.get("s3fs"):
        options["s3fs"] = SPEC["s3fs"]
    return storage_factory({"kind": kind, "options": options})


nodes = [slow(i, SPEC.get("seconds", 0.3)).set_name(f"slow{i}") for i in SPEC.get("order", range(4))]
leaf = total(*sorted(nodes, key=lambda n: n.name)).set_name("total")
wf = LocalWorkflow(leaf, *nodes, workflow_name=SPEC.get("wf", "lease"))
wf.set_storage(storage())
print("READY", flush=True)
if SPEC.get("go"):  # start together: wait for the test to say go
    while not os.path.exists(SPEC["go"]):
        time.sleep(0.005)
values = wf.run(**SPEC.get("run", {}))
events = wf.last_report.events
print(json.dumps({"total": values[0], "events": {e.node: e.action for e in events},
                  "reasons": {e.node: e.reason for e in events}}), flush=True)
'''


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "lease_run.py"
    path.write_text(SCRIPT)
    return path


def start(script, location, counts, spec, host="-", sleep=None):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if sleep is not None:
        env["LEASE_TEST_SLEEP"] = str(sleep)
    return subprocess.Popen([sys.executable, str(script), location, str(counts), json.dumps(spec), host],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def together(script, location, counts, spec, hosts, tmp_path, sleep=None):
    """Start one run per host name (``spec`` for all, or one spec per run), all waiting
    at the start line, then let them go at once."""
    go = tmp_path / f"go-{len(list(tmp_path.glob('go-*')))}"
    specs = spec if isinstance(spec, list) else [spec] * len(hosts)
    procs = [start(script, location, counts, {**sp, "go": str(go)}, host=h, sleep=sleep)
             for sp, h in zip(specs, hosts)]
    for proc in procs:
        line = proc.stdout.readline()
        assert line.strip() == "READY", line + proc.stderr.read()
    go.touch()
    return procs


def waited(outs):
    """How many nodes were read because another run computed them meanwhile."""
    return sum(r == "computed by another run" for o in outs for r in o["reasons"].values())


def hold(store, key, *, node, run, pid, ttl):
    """Publish a node lease of ``key`` as another run holding it would."""
    from functionfuse.storage.base import utc_now_iso
    from functionfuse.storage.leases import _encode
    from functionfuse.storage.runs import _host

    holder = {"format": "functionfuse-node-lease", "key": key, "workflow": "other", "node": node, "run": run,
              "host": _host(), "pid": pid, "token": "t", "ttl": ttl, "acquired": utc_now_iso(),
              "renewed": utc_now_iso()}
    assert store.results._publish(lease_path(key), _encode(holder), replace=False)


def finish(proc, timeout=120):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def computations(counts):
    return collections.Counter(counts.read_text().split())


def no_leases_left(fs, root):
    try:
        return [p for p in fs.find(f"{root}/leases")]
    except FileNotFoundError:
        return []


def test_four_processes_compute_each_node_once_on_files(script, tmp_path):
    store, counts = str(tmp_path / "store"), tmp_path / "counts"
    procs = together(script, store, counts, {"seconds": 0.3}, ["-"] * 4, tmp_path)
    outs = [finish(p) for p in procs]
    assert all(o["total"] == 60 for o in outs)
    assert computations(counts) == {f"slow{i}": 1 for i in range(4)} | {"total": 1}
    actions = collections.Counter(a for o in outs for a in o["events"].values())
    assert actions["computed"] == 5 and actions["read"] == 15, outs
    assert waited(outs) >= 1, outs  # they ran at once: some waited for another
    assert not list((tmp_path / "store").rglob("leases/*.json"))
    print(f"4 processes, 5 nodes: {sum(computations(counts).values())} computations, "
          f"{waited(outs)} nodes read after waiting")


def test_four_processes_on_two_hosts_compute_each_node_once_on_s3(script, tmp_path, s3_endpoint, s3_url):
    import s3fs

    counts = tmp_path / "counts"
    spec = {"seconds": 0.3, "s3fs": s3_endpoint.options}
    procs = together(script, s3_url, counts, spec, ["host-a", "host-b", "host-a", "host-b"], tmp_path)
    outs = [finish(p) for p in procs]
    assert all(o["total"] == 60 for o in outs)
    assert computations(counts) == {f"slow{i}": 1 for i in range(4)} | {"total": 1}
    assert waited(outs) >= 1, outs
    print(f"4 processes on 2 hosts (S3), 5 nodes: {sum(computations(counts).values())} computations")
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3_endpoint.options)
    assert no_leases_left(fs, s3_url.removeprefix("s3://")) == []


def test_pools_of_processes_compute_each_node_once(script, tmp_path):
    store, counts = str(tmp_path / "store"), tmp_path / "counts"
    spec = {"seconds": 0.3, "run": {"max_workers": 2, "processes": True}}
    procs = together(script, store, counts, spec, ["-"] * 3, tmp_path)
    outs = [finish(p) for p in procs]
    assert waited(outs) >= 1, outs
    assert all(o["total"] == 60 for o in outs)
    assert computations(counts) == {f"slow{i}": 1 for i in range(4)} | {"total": 1}
    assert not list((tmp_path / "store").rglob("leases/*.json"))


@pytest.mark.parametrize("host", ["-", "host-elsewhere"])
def test_a_killed_holder_is_taken_over(script, tmp_path, host):
    """A run killed while it computes a node leaves its lease.  On this host a dead
    holder's lease is taken at once; from another host, once its time to live (2 s
    here) has passed without renewal."""
    store, counts = str(tmp_path / "store"), tmp_path / "counts"
    spec = {"seconds": 0.5, "lease": 30 if host == "-" else 2, "order": [0]}
    holder = start(script, store, counts, spec, host=host, sleep=60)
    deadline = time.time() + 30
    while not (counts.exists() and "slow0" in counts.read_text()):
        assert time.time() < deadline and holder.poll() is None
        time.sleep(0.02)
    holder.send_signal(signal.SIGKILL)  # inside slow0, holding its lease
    holder.communicate(timeout=30)
    assert list((tmp_path / "store").rglob("leases/*.json"))  # left by the killed holder

    started = time.time()
    out = finish(start(script, store, counts, spec, sleep=0.1))
    waited = time.time() - started
    assert out["events"]["slow0"] == "computed" and out["total"] == 0
    assert computations(counts)["slow0"] == 2  # the killed one, then the one that took over
    assert not list((tmp_path / "store").rglob("leases/*.json"))
    if host == "-":
        assert waited < 10  # well within the time to live (30 s): its process is gone
    else:
        assert 1.5 < waited < 30  # waited for the time to live


def test_a_lease_renewed_while_its_node_runs_is_not_taken_over(script, tmp_path):
    store, counts = str(tmp_path / "store"), tmp_path / "counts"
    spec = {"seconds": 3.0, "lease": 1, "order": [0]}  # the node runs three times the time to live
    procs = [start(script, store, counts, spec) for _ in range(3)]
    outs = [finish(p) for p in procs]
    assert all(o["total"] == 0 for o in outs)
    assert computations(counts) == {"slow0": 1, "total": 1}


def test_two_runs_needing_each_others_nodes_both_finish(script, tmp_path):
    """Run A computes slow0 then slow1; run B slow1 then slow0 (same keys in two
    workflows): each waits for the node the other computes, never both at once."""
    store, counts = str(tmp_path / "store"), tmp_path / "counts"
    specs = [{"seconds": 0.5, "order": [0, 1], "wf": "a"}, {"seconds": 0.5, "order": [1, 0], "wf": "b"}]
    a, b = together(script, store, counts, specs, ["-", "-"], tmp_path)
    outs = [finish(a, timeout=60), finish(b, timeout=60)]
    assert [o["total"] == 10 for o in outs] == [True, True]
    assert computations(counts)["slow0"] == 1 and computations(counts)["slow1"] == 1


@pytest.mark.parametrize("processes", [False, True])
def test_two_pooled_runs_needing_each_others_nodes_both_finish(script, tmp_path, processes):
    """The same with pools, where a run holds several leases at once while its driver
    goes on: two runs each holding some of the other's nodes."""
    store, counts = str(tmp_path / "store"), tmp_path / "counts"
    run = {"max_workers": 2, "processes": processes}
    specs = [{"seconds": 0.5, "order": [0, 1, 2, 3], "wf": "a", "run": run},
             {"seconds": 0.5, "order": [3, 2, 1, 0], "wf": "b", "run": run}]
    a, b = together(script, store, counts, specs, ["-", "-"], tmp_path)
    outs = [finish(a, timeout=60), finish(b, timeout=60)]
    assert [o["total"] for o in outs] == [60, 60]
    assert all(computations(counts)[f"slow{i}"] == 1 for i in range(4)), computations(counts)


@workflow
def quick(i):
    return i + 1


def test_waiting_is_logged_and_shown_in_progress(tmp_path, caplog):
    """A lease held by a live process, not renewed: the run waits (log line and
    progress postfix), then takes it over once its time to live has passed."""
    from functionfuse.storage.runs import _host

    store = storage_factory({"kind": "file", "options": {"path": str(tmp_path / "s"), "lease": 1}})
    wf = LocalWorkflow(quick(1).set_name("q"), workflow_name="w")
    wf.set_storage(store)
    [key] = [t.key for t in wf._make_plan(None).tasks]
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        hold(store, key, node="q", run="r1", pid=sleeper.pid, ttl=1.0)
        seen = []
        original = Progress.node_waiting

        def spy(self, name, held):
            original(self, name, held)
            seen.append(self._postfix())

        Progress.node_waiting = spy
        try:
            with caplog.at_level(logging.INFO, logger="functionfuse"):
                assert wf.run(progress=True) == 2
        finally:
            Progress.node_waiting = original
    finally:
        sleeper.kill()
        sleeper.wait()
    assert "node 'q': waiting for run r1" in caplog.text
    assert "is stale" in caplog.text
    assert seen and f"waiting for q (computed by {_host()}:{sleeper.pid})" in seen[0]
    assert wf.last_report.by_node()["q"].action == "computed"


def test_a_dask_worker_waits_for_another_run_and_reads_its_result(tmp_path, dask_client):
    """On Dask the worker computing a node takes its lease; held by another run,
    the worker waits, and reads the result that run stores."""
    import threading

    from functionfuse.backends.builtin.daskback import DaskWorkflow

    store = storage_factory({"kind": "file", "options": {"path": str(tmp_path / "s"), "lease": 30}})
    wf = DaskWorkflow(quick(41).set_name("q"), workflow_name="w", client=dask_client)
    wf.set_storage(store)
    [key] = [t.key for t in wf._make_plan(None).tasks]
    hold(store, key, node="q", run="r1", pid=os.getpid(), ttl=30.0)

    def other_run_finishes():  # stores the node's result, then drops its lease
        time.sleep(1.0)
        store.save("other", "q", key, 42, {})
        os.remove(tmp_path / "s" / lease_path(key))

    finisher = threading.Thread(target=other_run_finishes)
    finisher.start()
    assert wf.run() == 42
    finisher.join()
    assert wf.last_report.by_node()["q"].action == "read"


def test_gc_removes_the_leases_of_killed_runs_only(script, tmp_path):
    import contextlib
    import io

    from functionfuse.cli import main

    store, counts = str(tmp_path / "store"), tmp_path / "counts"
    spec = {"seconds": 0.5, "lease": 30, "order": [0]}
    holder = start(script, store, counts, spec, sleep=60)
    deadline = time.time() + 30
    while not (counts.exists() and "slow0" in counts.read_text()):
        assert time.time() < deadline and holder.poll() is None
        time.sleep(0.02)
    live = start(script, str(tmp_path / "other"), tmp_path / "counts2", spec, sleep=60)
    while not ((tmp_path / "counts2").exists() and "slow0" in (tmp_path / "counts2").read_text()):
        assert time.time() < deadline and live.poll() is None
        time.sleep(0.02)
    holder.send_signal(signal.SIGKILL)
    holder.communicate(timeout=30)
    try:
        for location, expected in ((store, 1), (str(tmp_path / "other"), 0)):
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                assert main(["--json", "--store", location, "gc"]) == 0
            assert len(json.loads(out.getvalue())["node_leases"]) == expected, location
        assert not list((tmp_path / "store").rglob("leases/*.json"))
        assert list((tmp_path / "other").rglob("leases/*.json"))  # its holder is alive: kept
    finally:
        live.kill()
        live.communicate()


@pytest.mark.parametrize("bad, words", [
    (0, "must be True, False or a time to live in seconds > 0, got 0"),
    (-5.0, "got -5.0"),
    ("yes", "got 'yes' (str); e.g. {'lease': 60}"),
    ([60], "must be True, False or a time to live in seconds, got [60] (list)"),
])
def test_a_bad_lease_option_is_a_clear_error(tmp_path, bad, words):
    from functionfuse.errors import StorageConfigError

    with pytest.raises(StorageConfigError, match="option 'lease' of storage kind 'file'") as caught:
        storage_factory({"kind": "file", "options": {"path": str(tmp_path), "lease": bad}})
    assert words in str(caught.value)


def test_the_lease_option_travels_with_the_storage(tmp_path):
    import pickle

    storage = storage_factory({"kind": "file", "options": {"path": str(tmp_path), "lease": 7.5}})
    assert pickle.loads(pickle.dumps(storage)).lease_ttl == 7.5
    assert storage_factory({"kind": "file", "options": {"path": str(tmp_path), "lease": True}}).lease_ttl == 60.0
    assert storage_factory({"kind": "file", "options": {"path": str(tmp_path)}}).lease_ttl is None


def test_the_ray_kind_refuses_the_lease_option(tmp_path):
    from functionfuse.errors import StorageConfigError
    from functionfuse.storage import RayStorage

    with pytest.raises(StorageConfigError, match="unknown option 'lease' for storage kind 'ray'"):
        storage_factory({"kind": "ray", "options": {"path": str(tmp_path), "remoteArgs": {}, "lease": True}})
    with pytest.raises(StorageConfigError, match="option 'lease' is not available on the ray storage kind"):
        RayStorage(str(tmp_path), {}, lease=True)


@workflow
class Counter:
    def __init__(self):
        self.items = []

    def put(self, x):
        self.items.append(x)
        return list(self.items)


def test_calls_of_stateful_classes_take_no_lease(tmp_path):
    """Reading another run's result of a method call would leave the live object
    without the call's effect: such calls are computed (replayed), never waited for."""
    store = storage_factory({"kind": "file", "options": {"path": str(tmp_path / "s"), "lease": 30}})
    box = Counter().set_name("box")
    first = box.put(1).set_name("first")
    second = box.put(2).set_name("second")
    wf = LocalWorkflow(first, second, workflow_name="w")
    wf.set_storage(store)
    plan = wf._make_plan(None)

    key = next(t.key for t in plan.tasks if t.name == "first")
    hold(store, key, node="first", run="r", pid=os.getpid(), ttl=30.0)
    started = time.monotonic()
    assert wf.run() == [[1], [1, 2]]  # the object saw both calls
    assert time.monotonic() - started < 10  # no wait for the held lease (its time to live is 30 s)


def test_an_unusable_result_of_another_run_is_computed_here(tmp_path):
    """The waited-for run stored a result this run cannot load (damaged since): the node
    is computed here instead of failing the run."""
    import threading

    store = storage_factory({"kind": "file", "options": {"path": str(tmp_path / "s"), "lease": 30}})
    wf = LocalWorkflow(quick(5).set_name("q"), workflow_name="w")
    wf.set_storage(store)
    [key] = [t.key for t in wf._make_plan(None).tasks]

    hold(store, key, node="q", run="r", pid=os.getpid(), ttl=30.0)

    def other_run_stores_garbage():
        time.sleep(0.5)
        store.save("other", "q", key, {"big": list(range(300))}, {})

        def flip(data):
            data[-5] ^= 0x01
            return data

        damage_manifest(tmp_path / "s", key, flip)
        os.remove(tmp_path / "s" / lease_path(key))

    other = threading.Thread(target=other_run_stores_garbage)
    other.start()
    with pytest.warns(Warning, match="node 'q'"):
        assert wf.run() == 6
    other.join()
    assert wf.last_report.by_node()["q"].action == "computed"


def test_an_entry_two_runs_find_damaged_is_replaced_once(script, tmp_path):
    store, counts = str(tmp_path / "store"), tmp_path / "counts"
    finish(start(script, store, counts, {"seconds": 0.3, "order": [0]}))
    for key in stored_keys(tmp_path / "store"):
        path, begin, end = manifest_span(tmp_path / "store", key)
        with open(path, "rb") as fh:
            doc = json.loads(fh.read()[begin:end])
        if doc.get("node") == "slow0":

            def flip(data):
                data[-3] ^= 0x01
                return data

            damage_manifest(tmp_path / "store", key, flip)
    # The same key (seconds=0.3), computed slowly now: both runs find the entry damaged at once.
    procs = together(script, store, counts, {"seconds": 0.3, "order": [0]}, ["-", "-"], tmp_path, sleep=1.0)
    outs = [finish(p) for p in procs]
    assert [o["total"] for o in outs] == [0, 0]
    assert computations(counts)["slow0"] == 2, outs  # the first run, then one replacement
    assert sorted(o["events"]["slow0"] for o in outs) == ["computed", "read"], outs


@pytest.mark.parametrize("kind", ["file", "S3"])
def test_a_result_stored_between_the_check_and_the_taking_is_read(tmp_path, kind, request):
    """The race behind a node computed twice: this run finds the result not stored,
    then its holder stores it and lets the lease go, then this run takes the lease.
    The lease is checked once more once taken: the result is read, and the lease
    this run took is deleted."""
    from functionfuse.storage.leases import acquire

    if kind == "S3":
        options = {"path": request.getfixturevalue("s3_url"), "lease": 30,
                   "s3fs": request.getfixturevalue("s3_endpoint").options}
    else:
        options = {"path": str(tmp_path / "s"), "lease": 30}
    store = storage_factory({"kind": kind, "options": options})
    key = "ab" * 16
    asked = []

    def stored():
        asked.append(len(asked))
        if len(asked) == 1:  # the other run stores now, after this answer was made
            store.save("other", "n", key, {"v": 1}, {"function": "f"})
            return False
        return bool(store.present([key]))

    assert acquire(store.results, key, ttl=30, workflow="w", node="n", run_id="r", stored=stored) is None
    assert len(asked) == 2
    assert not store.results.objects.fs.exists(store.results._path(lease_path(key)))
    assert store.load("w", key) == {"v": 1}


def test_a_failing_second_check_leaves_no_lease(tmp_path):
    """The check made once the lease is taken fails (the store does not answer): the
    lease just taken is deleted before the error goes up, so no other run waits out
    its time to live for a node nobody computes."""
    from functionfuse.storage.leases import acquire

    store = storage_factory({"kind": "file", "options": {"path": str(tmp_path / "s"), "lease": 30}})
    key = "cd" * 16
    asked = []

    def stored():
        asked.append(1)
        if len(asked) == 2:
            raise OSError("the store does not answer")
        return False

    with pytest.raises(OSError, match="does not answer"):
        acquire(store.results, key, ttl=30, workflow="w", node="n", run_id="r", stored=stored)
    assert not os.path.exists(store.results._path(lease_path(key)))
    lease = acquire(store.results, key, ttl=30, workflow="w", node="n", run_id="r2", stored=lambda: False)
    assert lease is not None  # at once: nothing was left to wait for
    lease.release()
