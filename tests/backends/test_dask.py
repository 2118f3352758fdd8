"""Dask specifics: client lifecycle, per-task options, retries, dead workers."""

import os
import sys

import cloudpickle
import dask
import distributed
import pytest

from functionfuse import workflow
from functionfuse.backends.builtin.daskback import DaskWorkflow
from functionfuse.errors import ExecutorError
from functionfuse.storage import FileStorage

cloudpickle.register_pickle_by_value(sys.modules[__name__])


@workflow
def inc(x):
    return x + 1


@workflow
def worker_address(x):
    return distributed.get_worker().address, os.getpid()


@workflow
def fails_once(marker, x):
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError("transient")
    return x * 10


@workflow
def kills_worker(x):
    os._exit(1)


@workflow
class Box:
    def __init__(self):
        self.items = []

    def put(self, x):
        self.items.append(x)
        return list(self.items), distributed.get_worker().address

    def crash(self):
        os._exit(1)


@pytest.fixture
def fragile_client():
    """A cluster of its own, where one worker death is fatal to a task."""
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        with distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster, distributed.Client(cluster, set_as_default=False) as client:
            yield client


def test_without_a_client_a_local_cluster_is_started_and_closed():
    node = worker_address(1)
    wf = DaskWorkflow(node, workflow_name="w", cluster_kwargs={"n_workers": 1, "threads_per_worker": 1})
    address, pid = wf.run()
    assert pid != os.getpid()
    with pytest.raises(ValueError):  # no client left behind
        distributed.default_client()
    assert wf.run()[1] != pid  # a new cluster for each run


def test_workers_and_resources_options(dask_client):
    workers = sorted(dask_client.scheduler_info(n_workers=-1)["workers"])
    nodes = [worker_address(i).set_name(f"n{i}") for i in range(4)]
    wf = DaskWorkflow(*nodes, workflow_name="w", client=dask_client)
    wf.query("n[0-3]").set_remote_args({"workers": [workers[1]], "allow_other_workers": False})
    assert {addr for addr, _ in wf.run()} == {workers[1]}
    wf = DaskWorkflow(*nodes, workflow_name="w", client=dask_client)
    wf.query(".*").set_remote_args({"resources": {"disk": 1}, "priority": 5, "retries": 0})
    assert len(wf.run()) == 4


def test_instance_needing_resources_nobody_has_is_an_error(dask_client):
    box = Box().set_name("box")
    wf = DaskWorkflow(box.put(1), workflow_name="w", client=dask_client)
    wf.query("box").set_remote_args({"resources": {"gpu": 1}})
    with pytest.raises(ExecutorError, match=r"node 'box' needs the resources \{'gpu': 1\}, which no worker"):
        wf.run()


def test_instance_lives_on_one_worker(dask_client):
    box = Box().set_name("box")
    calls = [box.put(inc(i)) for i in range(5)]
    res = DaskWorkflow(*calls, workflow_name="w", client=dask_client).run()
    assert [r[0] for r in res] == [[1, 2, 3, 4, 5][: i + 1] for i in range(5)]
    assert len({r[1] for r in res}) == 1


def test_retries_option(dask_client, tmp_path):
    node = fails_once(str(tmp_path / "marker"), 2).set_name("flaky")
    wf = DaskWorkflow(node, workflow_name="w", client=dask_client)
    wf.query("flaky").set_remote_args({"retries": 1})
    assert wf.run() == 20


def test_dead_worker_is_reported_with_the_node_name(fragile_client, tmp_path):
    storage = FileStorage(tmp_path / "s")
    first = inc(1).set_name("first")
    dead = kills_worker(first).set_name("dead")
    wf = DaskWorkflow(dead, workflow_name="w", client=fragile_client)
    wf.set_storage(storage)
    with pytest.raises(ExecutorError, match="node 'dead' failed on the cluster: KilledWorker"):
        wf.run()
    assert storage.list_tasks("w", "*") == ["first"]


def test_death_of_the_worker_holding_an_instance_is_reported(fragile_client):
    box = Box().set_name("box")
    a = box.put(1).set_name("put")
    boom = box.crash().set_name("boom")
    after = box.put(2).set_name("after")
    wf = DaskWorkflow(a, boom, after, workflow_name="w", client=fragile_client)
    with pytest.raises(ExecutorError, match="node 'boom'"):
        wf.run()


def test_ray_storage_kind_from_dask_workers(dask_client, ray_cluster, tmp_path):
    """Dask workers join the running Ray to do the storage's I/O (they do not start their own)."""
    from functionfuse.storage import storage_factory

    storage = storage_factory(
        {"kind": "ray", "options": {"path": str(tmp_path / "s"), "remoteArgs": {"resources": {"disk": 0.01}}}}
    )
    first = inc(1).set_name("first")
    second = inc(first).set_name("second")
    wf = DaskWorkflow(second, workflow_name="w", client=dask_client)
    wf.set_storage(storage)
    assert wf.run() == 3
    assert storage.list_tasks("w", "*") == ["first", "second"]
    wf = DaskWorkflow(inc(second).set_name("third"), workflow_name="w", client=dask_client)
    wf.set_storage(storage)
    assert wf.run() == 4
    assert {e.node: e.action for e in wf.last_report.events} == {
        "first": "skipped",
        "second": "read",  # loaded on a Dask worker, through a Ray task
        "third": "computed",
    }
    # the Dask workers joined this Ray: no other Ray node appeared
    assert len([n for n in ray_cluster.nodes() if n["Alive"]]) == 1


def test_a_node_needing_resources_nobody_has_is_an_error(dask_client):
    node = inc(1).set_name("gpu")
    wf = DaskWorkflow(node, workflow_name="w", client=dask_client)
    wf.query("gpu").set_remote_args({"resources": {"GPU": 1}})
    with pytest.raises(ExecutorError, match=r"node 'gpu' needs the resources \{'GPU': 1\}.*wait forever"):
        wf.run()


def test_interrupted_run_cancels_its_tasks(dask_client, tmp_path):
    import _thread
    import threading
    import time

    @workflow
    def slow(i, marker):
        time.sleep(3)
        open(marker, "a").close()
        return i

    markers = [str(tmp_path / f"m{i}") for i in range(4)]
    wf = DaskWorkflow(*[slow(i, m) for i, m in enumerate(markers)], workflow_name="w", client=dask_client)
    threading.Timer(1.0, _thread.interrupt_main).start()
    with pytest.raises(KeyboardInterrupt):
        wf.run()
    time.sleep(6.5)  # without cancelling, all four would be done by now (2 workers x 2 rounds)
    # the two running when interrupted may finish; the queued ones never start
    assert sum(os.path.exists(m) for m in markers) <= 2


def test_bad_client_is_reported():
    from functionfuse.errors import GraphError

    with pytest.raises(GraphError, match="client must be a distributed.Client, got 'tcp://x:8786'"):
        DaskWorkflow(inc(1), workflow_name="w", client="tcp://x:8786")


@workflow
def sleepy(x):
    import time

    time.sleep(3)
    return x


def test_instance_lost_while_idle_fails_instead_of_waiting_forever(fragile_client):
    """The worker holding an instance dies between calls: its next call could never run."""
    import threading
    import time

    w0, w1 = sorted(fragile_client.scheduler_info(n_workers=-1)["workers"])
    box = Box().set_name("box")
    first = box.put(1).set_name("first")
    later = box.put(sleepy(2).set_name("sleepy")).set_name("later")
    wf = DaskWorkflow(first, later, workflow_name="w", client=fragile_client)
    wf.query("box").set_remote_args({"workers": [w0]})
    wf.query("sleepy").set_remote_args({"workers": [w1], "allow_other_workers": False})
    errors = []

    def run():
        try:
            wf.run()
        except Exception as exc:  # noqa: BLE001 - checked below
            errors.append(exc)

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    time.sleep(1.5)  # 'first' ran on w0; 'sleepy' is sleeping on w1
    try:
        fragile_client.run(os._exit, 1, workers=[w0])
    except Exception:  # noqa: BLE001 - the worker's connection drops
        pass
    runner.join(60)
    assert not runner.is_alive(), "the run waited forever for a worker that is gone"
    assert len(errors) == 1 and isinstance(errors[0], ExecutorError)
    assert "holding the instance 'box' died" in str(errors[0])


@workflow
def current_key(x):
    return distributed.get_worker().get_current_task()


def test_task_keys_are_named_after_the_function(dask_client, tmp_path):
    """Dask's dashboard groups tasks by key prefix: the prefix is the node's function."""
    from dask.utils import key_split

    storage = FileStorage(tmp_path / "s")
    first = inc(1).set_name("first")
    node = current_key(first).set_name("key")
    box = Box().set_name("box")
    put = box.put(first).set_name("put")
    wf = DaskWorkflow(node, put, workflow_name="w", client=dask_client)
    wf.set_storage(storage)
    with distributed.get_task_stream(client=dask_client) as stream:
        key, _ = wf.run()
    assert key.startswith("current_key-") and key_split(key) == "current_key"  # as the worker saw it
    seen = sorted(key_split(t["key"]) for t in stream.data)  # as the scheduler saw them
    assert seen == ["Box.put", "current_key", "inc", "init-Box"]

    with distributed.get_task_stream(client=dask_client) as stream:
        wf.run(force="key")  # 'first' is cached: a worker loads it for 'key'
    assert sorted(key_split(t["key"]) for t in stream.data) == ["current_key", "load-inc"]


@workflow
def add_up(*xs):
    return sum(xs)


def test_a_run_is_submitted_as_one_graph_per_group_of_options(dask_client, tmp_path, monkeypatch):
    """Issue 12: not one Client.submit per node.  Plain nodes go to the scheduler in
    batches, one Client.get per run of consecutive nodes with the same options."""
    calls = {"get": 0, "submit": 0}
    get, submit = dask_client.get, dask_client.submit

    def counting_get(*args, **kwargs):
        calls["get"] += 1
        return get(*args, **kwargs)

    def counting_submit(*args, **kwargs):
        calls["submit"] += 1
        return submit(*args, **kwargs)

    monkeypatch.setattr(dask_client, "get", counting_get)
    monkeypatch.setattr(dask_client, "submit", counting_submit)
    incs = [inc(i).set_name(f"inc{i}") for i in range(60)]
    wf = DaskWorkflow(add_up(*incs).set_name("total"), workflow_name="batched", client=dask_client)
    assert wf.run() == sum(range(1, 61))
    assert calls == {"get": 1, "submit": 0}

    # A node with its own options splits the batch: before it, it, after it.
    calls.update(get=0, submit=0)
    incs = [inc(i).set_name(f"inc{i}") for i in range(60)]
    wf = DaskWorkflow(add_up(*incs).set_name("total"), workflow_name="batched2", client=dask_client)
    wf.set_storage(FileStorage(tmp_path / "s"))
    wf.query("inc30").set_remote_args({"retries": 2})
    assert wf.run() == sum(range(1, 61))
    assert calls == {"get": 3, "submit": 0}
    assert wf.run() == sum(range(1, 61))  # cached: the total is loaded on a worker, in one batch


# -- what the scheduler makes of each node's options, and of released values -------------


class _Scheduled(distributed.diagnostics.plugin.SchedulerPlugin):
    """Records, per function (key prefix), the restrictions the scheduler started its task with."""

    name = "functionfuse-test-scheduled"

    def __init__(self):
        self.seen = {}

    async def start(self, scheduler):
        self.scheduler = scheduler

    def transition(self, key, start, finish, *args, **kwargs):
        from dask.utils import key_split

        ts = self.scheduler.tasks.get(key)
        if finish == "processing" and ts is not None:
            self.seen[key_split(key)] = {
                "priority": -ts.priority[0],
                "resources": dict(ts.resource_restrictions or {}),
                "workers": sorted(ts.worker_restrictions or ()),
                "loose": ts.loose_restrictions,
                "retries": ts.retries,
            }


@workflow
def heavy(x):
    return x + 1


@workflow
def pinned(x):
    return x + 2


def test_each_option_reaches_the_scheduler_as_dask_annotations(dask_client):
    """resources, priority, retries, workers and allow_other_workers are what the scheduler
    schedules each node's task with (nodes without options get none)."""
    workers = sorted(dask_client.scheduler_info(n_workers=-1)["workers"])
    dask_client.register_plugin(_Scheduled())
    try:
        a = heavy(1).set_name("a")
        b = pinned(a).set_name("b")
        wf = DaskWorkflow(inc(b).set_name("c"), workflow_name="options", client=dask_client)
        wf.query("a").set_remote_args({"resources": {"disk": 1}, "priority": 7, "retries": 3})
        wf.query("b").set_remote_args({"workers": [workers[1]], "allow_other_workers": True})
        assert wf.run() == 5
        seen = dask_client.run_on_scheduler(lambda dask_scheduler: dict(dask_scheduler.plugins[_Scheduled.name].seen))
    finally:
        dask_client.unregister_scheduler_plugin(_Scheduled.name)
    assert seen["heavy"] == {"priority": 7, "resources": {"disk": 1}, "workers": [], "loose": False, "retries": 3}
    assert seen["pinned"] == {"priority": 0, "resources": {}, "workers": [workers[1]], "loose": True, "retries": 0}
    assert seen["inc"] == {"priority": 0, "resources": {}, "workers": [], "loose": False, "retries": 0}


def test_an_instance_lives_on_the_worker_its_options_name(dask_client):
    workers = sorted(dask_client.scheduler_info(n_workers=-1)["workers"])
    for wanted in workers:  # the second worker too, which no default choice would pick first
        box = Box().set_name("box")
        wf = DaskWorkflow(box.put(1).set_name("p1"), box.put(2).set_name("p2"), workflow_name="w", client=dask_client)
        wf.query("box").set_remote_args({"workers": [wanted]})
        assert [address for _, address in wf.run()] == [wanted, wanted]


@workflow
def first_value(x):
    return [x] * 1000


@workflow
def released(x, prefix):
    """x, and the keys the cluster still holds whose function is ``prefix`` (polled for a
    while: the driver releases a value asynchronously once its last consumer finished)."""
    import time

    client = distributed.get_client()
    held = None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        held = [str(k) for k, where in client.who_has().items() if where and str(k).startswith(prefix)]
        if not held:
            break
        time.sleep(0.05)
    return x, held


def test_a_value_is_released_from_the_cluster_once_its_consumers_finished(dask_client):
    """first -> second -> third: by the time third runs, first's only consumer (second) has
    finished, so the driver has dropped first's value and no worker holds it any more."""
    first = first_value(3).set_name("first")
    second = inc(first[0]).set_name("second")
    third = released(second, "first_value-").set_name("third")
    wf = DaskWorkflow(third, workflow_name="release", client=dask_client)
    assert wf.run() == (4, [])


def test_a_run_larger_than_a_batch_is_several_graphs_that_refer_to_each_other(dask_client, tmp_path, monkeypatch):
    """When the buffer is full it is submitted, and later batches refer to the keys of
    earlier ones (held by futures): a chain and a fan-in across 7 batches of 10."""
    import functionfuse.backends.daskbackend as daskbackend

    monkeypatch.setattr(daskbackend, "BATCH", 10)
    gets = []
    get = dask_client.get
    monkeypatch.setattr(dask_client, "get", lambda graph, *a, **k: gets.append(len(graph)) or get(graph, *a, **k))
    node = inc(0).set_name("c0")
    chain = [node]
    for i in range(1, 40):
        node = inc(node).set_name(f"c{i}")
        chain.append(node)
    total = add_up(*chain[::2], *[inc(i).set_name(f"f{i}") for i in range(20)]).set_name("total")
    wf = DaskWorkflow(total, workflow_name="batches", client=dask_client)
    wf.set_storage(FileStorage(tmp_path / "s"))
    expected = sum(range(1, 41, 2)) + sum(range(1, 21))
    assert wf.run() == expected
    assert gets == [10] * 6 + [1]
    assert wf.run() == expected and wf.last_report.read == ["total"]
