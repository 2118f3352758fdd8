"""Ray specifics: init arguments, remote arguments, retries, actors."""

import os
import sys
import threading

import cloudpickle
import pytest

from functionfuse import workflow
from functionfuse.backends.builtin.rayback import RayWorkflow
from functionfuse.errors import ExecutorError, GraphError
from functionfuse.storage import FileStorage

cloudpickle.register_pickle_by_value(sys.modules[__name__])


@workflow
def inc(x):
    return x + 1


@workflow
def resources_seen(x):
    import ray

    return ray.get_runtime_context().get_assigned_resources()


@workflow
def dies_once(marker, x):
    # The first attempt kills its worker process; a retry finds the marker.
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return x * 10


@workflow
def always_dies(x):
    os._exit(1)


@workflow
class Box:
    def __init__(self):
        self.items = []

    def put(self, x):
        self.items.append(x)
        return list(self.items)

    def crash(self):
        os._exit(1)


def test_ray_init_args_conflicting_with_running_ray_are_reported(ray_cluster):
    node = inc(1)
    RayWorkflow(node, workflow_name="w", ray_init_args={"num_cpus": 2})  # matches: fine
    with pytest.raises(ExecutorError, match=r"num_cpus=4 \(the running Ray has 2\).*ray.shutdown"):
        RayWorkflow(node, workflow_name="w", ray_init_args={"num_cpus": 4})
    with pytest.raises(ExecutorError, match="namespace='x' .cannot be checked"):
        RayWorkflow(node, workflow_name="w", ray_init_args={"namespace": "x"})


def test_remote_args_reach_ray(ray_cluster):
    node = resources_seen(1).set_name("res")
    plain = resources_seen(2).set_name("plain")
    wf = RayWorkflow(node, plain, workflow_name="w")
    query = wf.query("res").set_remote_args({"resources": {"disk": 0.5}, "num_cpus": 0.5})
    assert query.nodes == [node]
    seen, default = wf.run(return_results=True)
    assert seen == {"disk": 0.5, "CPU": 0.5}
    assert default == {"CPU": 1.0}


def test_actor_options_and_calls(ray_cluster):
    box = Box().set_name("box")
    a = box.put(1)
    b = box.put(inc(1))
    wf = RayWorkflow(a, b, workflow_name="w")
    wf.query("box").set_remote_args({"num_cpus": 0.5})
    with pytest.raises(GraphError, match="'box': max_restarts cannot be used: a restarted actor has lost"):
        wf.query("box").set_remote_args({"max_restarts": 1})
    wf.query(".*").set_remote_args({"num_cpus": 0.5})  # method calls take the actor's options
    assert wf.run(return_results=True) == [[1], [1, 2]]


def test_max_retries_is_respected_when_a_worker_dies(ray_cluster, tmp_path):
    storage = FileStorage(tmp_path / "s")
    first = inc(1).set_name("first")
    node = dies_once(str(tmp_path / "marker"), first).set_name("flaky")
    wf = RayWorkflow(node, workflow_name="w")
    wf.set_storage(storage)
    wf.query("flaky").set_remote_args({"max_retries": 1})
    assert wf.run(return_results=True) == 20

    dead = always_dies(first).set_name("dead")
    wf = RayWorkflow(dead, workflow_name="w")
    wf.set_storage(storage)
    wf.query("dead").set_remote_args({"max_retries": 0})
    with pytest.raises(ExecutorError, match="node 'dead' failed on the cluster.*(WorkerCrashed|died|exit)"):
        wf.run()
    assert storage.list_tasks("w", "*") == ["first", "flaky"]  # nothing stored was lost


def test_actor_death_names_the_node(ray_cluster):
    box = Box().set_name("box")
    a = box.put(1).set_name("put")
    boom = box.crash().set_name("boom")
    wf = RayWorkflow(a, boom, workflow_name="w")
    # Ray may lose the replies of calls that ran just before the actor died:
    # the first lost call (in call order) is reported, naming the instance.
    with pytest.raises(ExecutorError, match="node '(boom|box|put)' .*actor holding instance 'box' died") as info:
        wf.run()
    assert info.value.node in ("boom", "box", "put")


def test_ray_storage_kind_shared_by_ray_and_local_workflows(ray_cluster, tmp_path):
    from functionfuse.backends.builtin.localback import LocalWorkflow
    from functionfuse.storage import storage_factory

    storage = storage_factory(
        {
            "kind": "ray",
            "options": {"path": str(tmp_path / "s"), "remoteArgs": {"resources": {"disk": 0.01}, "num_cpus": 0.01}},
        }
    )
    a = inc(1).set_name("a")
    b = inc(a).set_name("b")
    wf = RayWorkflow(b, workflow_name="w")
    wf.set_storage(storage)
    assert wf.run(return_results=True) == 3
    assert storage.list_tasks("w", "*") == ["a", "b"]
    local = LocalWorkflow(b, workflow_name="w")
    local.set_storage(storage)
    assert local.run() == 3
    assert {e.node: e.action for e in local.last_report.events} == {"a": "skipped", "b": "read"}
    storage.remove_task("w", pattern="a*")
    assert storage.list_tasks("w", "*") == ["b"]
    assert wf.run(return_results=True) == 3
    # a is recomputed (missing); b keeps its entry: its key depends on a's key, not on a's file
    assert {e.node: e.action for e in wf.last_report.events} == {"a": "computed", "b": "read"}
    storage.remove_workflow("w")
    assert storage.list_tasks("w", "*") == []


@workflow
def after_model(x):
    return x + 1


def test_an_actor_gives_back_its_resources_after_its_last_call(ray_cluster):
    """A node needing the CPUs an instance held runs once the instance's calls are done."""
    box = Box().set_name("model")
    put = box.put(5).set_name("put")
    post = after_model(put[0]).set_name("post")
    wf = RayWorkflow(post, workflow_name="w")
    wf.query("model").set_remote_args({"num_cpus": 2})
    wf.query("post").set_remote_args({"num_cpus": 2})
    result = []
    runner = threading.Thread(target=lambda: result.append(wf.run(return_results=True)), daemon=True)
    runner.start()
    runner.join(60)  # held resources would make it wait forever: fail instead of hanging
    assert not runner.is_alive(), "post never ran: the actor kept its CPUs"
    assert result == [6]


def test_a_node_no_ray_node_can_run_is_an_error_before_submitting(ray_cluster, tmp_path):
    storage = FileStorage(tmp_path / "s")
    first = inc(1).set_name("first")
    gpu = inc(first).set_name("gpu")
    wf = RayWorkflow(gpu, workflow_name="w")
    wf.set_storage(storage)
    wf.query("gpu").set_remote_args({"num_gpus": 1})
    with pytest.raises(ExecutorError, match=r"node 'gpu' asks for \{'CPU': 1.0, 'GPU': 1.0\}.*wait forever"):
        wf.run()
    assert storage.list_tasks("w", "*") == []


def test_same_ray_init_args_again_are_accepted(ray_cluster):
    from functionfuse.backends import raybackend

    started = raybackend._STARTED_WITH[:]
    raybackend._STARTED_WITH[:] = [{"num_cpus": 2, "object_store_memory": 10**8}]
    try:  # as if this process had started Ray with them: a rerun notebook cell
        RayWorkflow(inc(1), workflow_name="w", ray_init_args={"num_cpus": 2, "object_store_memory": 10**8})
    finally:
        raybackend._STARTED_WITH[:] = started


def test_interrupted_run_cancels_its_tasks(ray_cluster, tmp_path):
    import time

    @workflow
    def slow(i, marker):
        time.sleep(3)
        open(marker, "a").close()
        return i

    markers = [str(tmp_path / f"m{i}") for i in range(3)]
    wf = RayWorkflow(*[slow(i, m) for i, m in enumerate(markers)], workflow_name="w")
    import _thread

    timer = threading.Timer(1.0, _thread.interrupt_main)
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        wf.run(return_results=True)
    time.sleep(4)
    assert not any(os.path.exists(m) for m in markers)


def test_ray_storage_saves_while_an_actor_holds_every_cpu(ray_cluster, tmp_path):
    """Storage tasks take no CPU by default: an actor holding both CPUs can still save."""
    from functionfuse.storage import storage_factory

    storage = storage_factory({"kind": "ray", "options": {"path": str(tmp_path / "s"), "remoteArgs": {}}})
    box = Box().set_name("box")
    put = box.put(1).set_name("put")
    wf = RayWorkflow(put, workflow_name="w")
    wf.set_storage(storage)
    wf.query("box").set_remote_args({"num_cpus": 2})
    result = []
    runner = threading.Thread(target=lambda: result.append(wf.run(return_results=True)), daemon=True)
    runner.start()
    runner.join(60)
    assert not runner.is_alive(), "the actor's save waited forever for a CPU"
    assert result == [[1]]
    assert storage.list_tasks("w", "*") == ["put"]


def test_bad_workflow_arguments(ray_cluster):
    with pytest.raises(GraphError, match="ray_init_args must be a dict"):
        RayWorkflow(inc(1), workflow_name="w", ray_init_args=[("num_cpus", 2)])
    with pytest.raises(GraphError, match="workflow_name must be a non-empty string"):
        RayWorkflow(inc(1), workflow_name="")


@workflow
def task_name(x):
    import ray

    return ray.get_runtime_context().get_task_name()


@workflow
class Named:
    def __init__(self):
        import ray

        self.init_name = ray.get_runtime_context().get_task_name()

    def names(self, x):
        import ray

        return self.init_name, ray.get_runtime_context().get_task_name()


def test_ray_tasks_are_named_after_the_function(ray_cluster, tmp_path):
    """Ray's dashboard, ``ray list tasks`` and logs show a task's name: the node's function."""
    log = tmp_path / "loads.txt"

    class LoadLogging(FileStorage):  # records the name of the Ray task loading an entry
        def load(self, workflow_name, filename):
            import ray

            with open(log, "a") as fh:
                fh.write(f"{ray.get_runtime_context().get_task_name()}\n")
            return super().load(workflow_name, filename)

    first = task_name(1).set_name("first")
    plain = task_name(first).set_name("plain")
    with_options = task_name(2).set_name("with_options")
    renamed = task_name(3).set_name("renamed")
    calls = Named().set_name("named").names(first).set_name("call")
    wf = RayWorkflow(plain, with_options, renamed, calls, workflow_name="w")
    wf.set_storage(LoadLogging(tmp_path / "s"))
    wf.query("with_options").set_remote_args({"num_cpus": 0.5})
    wf.query("renamed").set_remote_args({"name": "custom"})  # the user's name wins
    assert wf.run(return_results=True) == ["task_name", "task_name", "custom", ("init-Named", "Named.names")]
    assert not log.exists()

    wf = RayWorkflow(plain, workflow_name="w")
    wf.set_storage(LoadLogging(tmp_path / "s"))
    assert wf.run(return_results=True, force="plain") == "task_name"  # a worker loads 'first'
    assert log.read_text().split() == ["load-task_name"]


@workflow
def add_up(*xs):
    return sum(xs)


def test_the_driver_waits_and_gets_per_run_not_per_node(ray_cluster, monkeypatch):
    """Issue 12: no driver work raw ray.remote does not pay, such as a ray.get or ray.wait
    per node: a run of 80 nodes makes the same few calls as a run of 5."""
    import collections

    import ray

    calls = collections.Counter()
    for name in ("get", "wait"):
        real = getattr(ray, name)

        def counting(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(ray, name, counting)

    def run(n):
        calls.clear()
        wf = RayWorkflow(add_up(*[inc(i) for i in range(n)]), workflow_name="few-calls")
        assert wf.run(return_results=True) == sum(range(1, n + 1))
        return dict(calls)

    small, large = run(5), run(80)
    assert large == small, (small, large)
    assert sum(large.values()) <= 4, large
