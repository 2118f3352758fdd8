"""LocalWorkflow.run(max_workers=N, processes=...): thread and process pools
(issue 10, item 4; design in functionfuse/backends/pool.py)."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from functionfuse import storage_factory, workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.errors import NodeExecutionError

MODES = [
    pytest.param({"max_workers": 2}, id="threads"),
    pytest.param({"max_workers": 2, "processes": True}, id="processes"),
]


@workflow
def make(i):
    return np.full(1000, float(i))


@workflow
def combine(a, b):
    return {"sum": float((a + b).sum()), "first": float(a[0])}


@workflow
def total(parts):
    return sum(p["sum"] for p in parts)


@workflow
class Log:
    def __init__(self):
        self.seen = []

    def add(self, x):
        self.seen.append(float(x["first"]))
        return list(self.seen)


def build():
    arrays = [make(i).set_name(f"make_{i}") for i in range(6)]
    pairs = [combine(arrays[i], arrays[i + 1]).set_name(f"pair_{i}") for i in range(5)]
    log = Log().set_name("log")
    calls = [log.add(p).set_name(f"log_{i}") for i, p in enumerate(pairs)]
    return [total(pairs).set_name("total"), calls[-1]]


def stored(path):
    storage = storage_factory({"kind": "file", "options": {"path": str(path)}})
    return {name: storage.read_task_meta("w", name)["key"] for name in storage.list_tasks("w")}


def run(path, **mode):
    wf = LocalWorkflow(*build(), workflow_name="w")
    wf.set_storage(storage_factory({"kind": "file", "options": {"path": str(path)}}))
    return wf.run(**mode), wf.last_report


@pytest.mark.parametrize("mode", MODES)
def test_same_results_keys_storage_and_report_as_one_by_one(tmp_path, mode):
    expected, seq_report = run(tmp_path / "seq")
    got, report = run(tmp_path / "pool", **mode)
    assert got == expected
    assert expected[1] == [0.0, 1.0, 2.0, 3.0, 4.0]  # the class chain ran in call order
    assert stored(tmp_path / "pool") == stored(tmp_path / "seq")
    assert sorted((e.node, e.action, e.reason) for e in report.events) == sorted(
        (e.node, e.action, e.reason) for e in seq_report.events
    )
    again, report = run(tmp_path / "pool", **mode)  # a resume on the pool: nothing computed
    assert again == expected and not report.computed
    assert {e.node for e in report.events if e.action == "read"} == {"total", "log_4"}


@workflow
def meet(name, folder):
    """Wait until the other node of the pair has started: only passes when they run together."""
    open(os.path.join(folder, name), "w").close()
    other = "b" if name == "a" else "a"
    deadline = time.monotonic() + 20
    while not os.path.exists(os.path.join(folder, other)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"node {name} ran alone")
        time.sleep(0.01)
    return os.getpid(), threading.get_ident()


@pytest.mark.parametrize("mode", MODES)
def test_independent_nodes_run_concurrently(tmp_path, mode):
    folder = tmp_path / "meet"
    folder.mkdir()
    nodes = [meet(n, str(folder)).set_name(f"meet_{n}") for n in ("a", "b")]
    wf = LocalWorkflow(*nodes, workflow_name="m")
    wf.set_storage(storage_factory({"kind": "file", "options": {"path": str(tmp_path / "s")}}))
    (pid_a, thread_a), (pid_b, thread_b) = wf.run(**mode)
    if mode.get("processes"):
        assert os.getpid() not in (pid_a, pid_b) and pid_a != pid_b
    else:
        assert pid_a == pid_b == os.getpid() and thread_a != thread_b


@workflow
def slow_ok(i):
    time.sleep(0.3)
    return i


@workflow
def broken(i):
    raise ValueError(f"bad input {i}")


@pytest.mark.parametrize("mode", MODES)
def test_a_failure_names_the_node_and_keeps_what_finished(tmp_path, mode):
    nodes = [broken(1).set_name("broken"), slow_ok(2).set_name("slow_ok")]
    wf = LocalWorkflow(*nodes, workflow_name="f")
    storage = storage_factory({"kind": "file", "options": {"path": str(tmp_path)}})
    wf.set_storage(storage)
    with pytest.raises(NodeExecutionError, match="node 'broken' failed: ValueError: bad input 1") as info:
        wf.run(**mode)
    assert info.value.node == "broken"
    actions = {e.node: e.action for e in wf.last_report.events}
    assert actions["broken"] == "failed" and actions["slow_ok"] == "computed"
    assert storage.read_task("f", "slow_ok") == 2  # it was running: it finished and was stored


@workflow
def make_generator(n):
    return (i for i in range(n))


def test_a_value_a_process_cannot_send_back_names_the_node(tmp_path):
    wf = LocalWorkflow(make_generator(3).set_name("gen"), workflow_name="g")
    with pytest.raises(NodeExecutionError, match="node 'gen'"):
        wf.run(max_workers=2, processes=True)


def test_no_storage_runs_on_the_pool_too():
    wf = LocalWorkflow(*build(), workflow_name="w")
    assert wf.run(max_workers=2) == wf.run()


@pytest.mark.parametrize("kwargs, error, words", [
    ({"max_workers": 0}, ValueError, "positive integer"),
    ({"max_workers": 2.5}, ValueError, "positive integer"),
    ({"max_workers": True}, ValueError, "positive integer"),
    ({"processes": True}, ValueError, "max_workers"),
    ({"max_workers": 2, "processes": "yes"}, TypeError, "True or False"),
])
def test_bad_pool_options_are_clear_errors(kwargs, error, words):
    wf = LocalWorkflow(make(1), workflow_name="w")
    with pytest.raises(error, match=words):
        wf.run(**kwargs)


@workflow
def crash(i):
    time.sleep(0.2)
    os._exit(3)  # a worker killed: out of memory, a segfault in native code ...


def test_a_dead_worker_process_is_an_executor_error_naming_the_candidates(tmp_path):
    from functionfuse.errors import ExecutorError

    nodes = [slow_ok(5).set_name("slow_a"), crash(1).set_name("crasher")]
    wf = LocalWorkflow(*nodes, workflow_name="c")
    wf.set_storage(storage_factory({"kind": "file", "options": {"path": str(tmp_path)}}))
    with pytest.raises(ExecutorError, match="a worker process died") as info:
        wf.run(max_workers=2, processes=True)
    assert "crasher" in str(info.value)
    assert {e.node: e.action for e in wf.last_report.events}["crasher"] == "not run"
    # the pool is replaced: the next run works (without the crashing node)
    wf2 = LocalWorkflow(slow_ok(6).set_name("slow_b"), workflow_name="c2")
    assert wf2.run(max_workers=2, processes=True) == 6


@workflow
def started_then_slow(i, marker):
    open(marker, "w").close()  # running now (a node still queued is cancelled, not run)
    time.sleep(0.3)
    return i


@workflow
class Fragile:
    def __init__(self, marker):
        deadline = time.monotonic() + 20
        while not os.path.exists(marker) and time.monotonic() < deadline:
            time.sleep(0.01)
        raise RuntimeError("cannot build")

    def get(self):
        return 1


def test_a_driver_failure_keeps_what_the_pool_finished(tmp_path):
    marker = str(tmp_path / "started")
    nodes = [started_then_slow(7, marker).set_name("slow_c"), Fragile(marker).set_name("fragile").get().set_name("get")]
    wf = LocalWorkflow(*nodes, workflow_name="d")
    storage = storage_factory({"kind": "file", "options": {"path": str(tmp_path)}})
    wf.set_storage(storage)
    with pytest.raises(NodeExecutionError, match="fragile"):
        wf.run(max_workers=2, processes=True)
    assert storage.read_task("d", "slow_c") == 7  # running when the driver failed: finished and stored
