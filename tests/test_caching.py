"""Correct caching (SPEC section 2) on the local backend with file storage."""

import collections
import os
import textwrap
import threading

import pytest

from functionfuse import CacheWarning, HashingError, NodeExecutionError, SerializationError, workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from helpers import result_files, run_script, store_files

# Call counters are test state, not inputs of the nodes that update them.
__functionfuse_ignore__ = {"CALLS", "LOADS", "COUNTS"}
CALLS = collections.Counter()
LOADS = collections.Counter()


@pytest.fixture(autouse=True)
def _reset_counters():
    CALLS.clear()
    LOADS.clear()


def _load_tracked(tag, data):
    LOADS[tag] += 1
    return Tracked(tag, data)


class Tracked:
    """A result that counts how often it is unpickled."""

    def __init__(self, tag, data):
        self.tag, self.data = tag, data

    def __reduce__(self):
        return _load_tracked, (self.tag, self.data)


@workflow
def source(n):
    CALLS["source"] += 1
    return Tracked("source", list(range(n)))


@workflow
def step(t, tag):
    CALLS[tag] += 1
    return Tracked(tag, [x + 1 for x in t.data])


@workflow
def total(t):
    CALLS["total"] += 1
    return sum(t.data)


def chain(n=5, length=3):
    node = source(n).set_name("source")
    for i in range(length):
        node = step(node, f"s{i}").set_name(f"s{i}")
    return total(node).set_name("total")


def run(leaf, storage, **kw):
    wf = LocalWorkflow(leaf, workflow_name="wf")
    wf.set_storage(storage)
    return wf, wf.run(**kw)


def actions(wf):
    return {e.node: (e.action, e.reason) for e in wf.last_report.events}


def test_first_run_computes_and_stores_everything(storage):
    wf, result = run(chain(), storage)
    assert result == sum(range(5)) + 3 * 5
    assert set(actions(wf).values()) == {("computed", "new")}
    assert storage.list_tasks("wf") == ["s0", "s1", "s2", "source", "total"]


def test_resume_is_lazy(storage):
    run(chain(), storage)
    CALLS.clear()
    LOADS.clear()
    wf, result = run(chain(), storage)
    assert result == 25
    assert CALLS == {}
    assert LOADS == {}  # only the small leaf was read; no intermediate was unpickled
    acts = actions(wf)
    assert acts["total"] == ("read", "cached")
    assert all(acts[n] == ("skipped", "cached") for n in ("source", "s0", "s1", "s2"))


def test_planning_times_its_phases_and_logs_them_at_debug(storage, caplog):
    import logging

    run(chain(), storage)
    wf = LocalWorkflow(chain(), workflow_name="wf")
    wf.set_storage(storage)
    with caplog.at_level(logging.DEBUG, logger="functionfuse.caching"):
        plan = wf._make_plan(None)
    assert set(plan.phases) == {"listing", "tasks and keys", "decisions"}
    assert all(seconds >= 0 for seconds in plan.phases.values())
    logged = [r.getMessage() for r in caplog.records if "planned" in r.getMessage()]
    assert logged and logged[0].startswith("workflow 'wf': 5 nodes planned in ") and "keys " in logged[0]


def test_planning_keys_f_of_a_node_inline_as_compute_key_does(storage):
    """make_plan keys the commonest node, f(previous), without compute_key once the
    function is keyed: the keys are compute_key's, for plain functions, versioned ones,
    closures, defaults, and nodes made from node[i] or with literals beside them."""
    from functionfuse.caching import Task, compute_key, make_plan

    scale = 3

    @workflow
    def source(n):
        return list(range(n))

    @workflow
    def step(xs, offset=1):
        return [x * scale + offset for x in xs]

    @workflow(version="2")
    def versioned(xs):
        return xs[::-1]

    @workflow
    def pick(pair):
        return pair

    def other_step(xs, offset=1):
        return [x - offset for x in xs]

    node = source(4)
    for _ in range(3):
        node = versioned(step(node))
    node = pick(step(node, 5)[0])
    replaced = step(node)
    node = step(step(replaced))
    wf = LocalWorkflow(node, workflow_name="inline")
    wf.set_storage(storage)
    wf.replace_func(replaced, other_step)  # its task's function is not its node's
    plan = wf._make_plan(None)
    assert plan.task(replaced).func is other_step
    # A backend's extra key input (a plugin's seed) for one f(previous) node, and none.
    extra = {id(plan.tasks[4].node): b"seed=3"}
    with_extra = make_plan("inline", wf._named(), wf._funcs, storage, extra=extra)
    for p, given in ((plan, {}), (with_extra, extra)):
        key_of: dict = {}
        for task in p.tasks:  # each key again, by compute_key alone (no shared caches)
            fresh = Task(task.node, task.name, task.func)
            compute_key(fresh, key_of, False, {}, given.get(id(task.node), b""))
            key_of[id(task.node)] = fresh.key
            assert (task.key, task.fingerprint, task.code) == (fresh.key, fresh.fingerprint, fresh.code), task.name
        assert len({t.key for t in p.tasks}) == len(p.tasks) == 12
    changed = [t.name for t, u in zip(plan.tasks, with_extra.tasks) if t.key != u.key]
    assert changed == [t.name for t in plan.tasks[4:]]  # the node with the extra input and all below it


def test_a_run_record_carries_over_exactly_the_nodes_the_run_did_not_store(storage):
    """The record of a run that stored or found every node of the last record carries
    nothing over; one of a run of part of the graph carries the rest (``others``)."""
    from functionfuse import compute

    def records():
        return storage.results.latest_run("parts")

    def graph():
        a = source_node(2).set_name("a")
        b = double(a).set_name("b")
        c = double(b).set_name("c")
        side = double(a).set_name("side")
        return b, c, side

    b, c, side = graph()
    wf = LocalWorkflow(c, side, workflow_name="parts")
    wf.set_storage(storage)
    wf.run()
    assert records()["others"] == {} and set(records()["nodes"]) == {"a", "b", "c", "side"}
    keys = {n: e["key"] for n, e in records()["nodes"].items()}
    b, c, side = graph()
    assert compute(b, storage=storage, workflow_name="parts") == 8
    assert set(records()["nodes"]) == {"a", "b"}
    assert records()["others"] == {"c": keys["c"], "side": keys["side"]}
    b, c, side = graph()
    wf = LocalWorkflow(c, side, workflow_name="parts")
    wf.set_storage(storage)
    wf.run()
    assert records()["others"] == {} and {n: e["key"] for n, e in records()["nodes"].items()} == keys


@workflow
def source_node(n):
    return n * 2


@workflow
def double(x):
    return x * 2


def test_only_needed_inputs_are_loaded(storage):
    run(chain(), storage)
    LOADS.clear()
    storage.remove_task("wf", "total")
    wf, result = run(chain(), storage)
    assert result == 25
    assert LOADS == {"s2": 1}
    assert actions(wf)["total"] == ("computed", "new")


def test_argument_change_recomputes_node_and_downstream_only(storage):
    a = source(5).set_name("source")
    left = step(a, "left").set_name("left")
    right = step(a, "right").set_name("right")
    run([total(left).set_name("tl"), total(right).set_name("tr")][1], storage)  # builds both branches
    CALLS.clear()
    a = source(5).set_name("source")
    left = step(a, "left").set_name("left")
    right = step(a, "right2").set_name("right")  # literal argument changed
    wf, _ = run(total(right).set_name("tr"), storage)
    total(left).set_name("tl")
    acts = actions(wf)
    assert acts["right"] == ("computed", "input changed: argument tag")
    assert acts["tr"] == ("computed", "input changed: right")
    assert acts["source"][0] == "read"  # needed by the node that runs
    assert acts["left"] == ("skipped", "cached")
    assert CALLS == {"right2": 1, "total": 1}


def _define(tmp_path, body, name):
    path = tmp_path / f"mod_{name}_{abs(hash(body))}.py"
    path.write_text(textwrap.dedent(body))
    namespace = {"workflow": workflow, "CALLS": CALLS, "__functionfuse_ignore__": {"CALLS"}}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    return namespace[name]


def test_code_change_reason_and_comment_change_is_not_a_change(tmp_path, storage):
    v1 = "@workflow\ndef double(x):\n    CALLS['double'] += 1\n    return 2 * x\n"
    v1_comment = "@workflow\ndef double(x):\n    '''doc'''\n    CALLS['double'] += 1  # hi\n    return 2 * x\n"
    v2 = "@workflow\ndef double(x):\n    CALLS['double'] += 1\n    return 3 * x\n"

    def build(src):
        double = _define(tmp_path, src, "double")
        return double(4).set_name("d")

    wf, r = run(build(v1), storage)
    assert r == 8
    wf, r = run(build(v1_comment), storage)
    assert actions(wf)["d"] == ("read", "cached")
    wf, r = run(build(v2), storage)
    assert r == 12
    assert actions(wf)["d"] == ("computed", "code changed: the function")
    # the version of the old code is kept: going back to it is a hit
    wf, r = run(build(v1), storage)
    assert r == 8 and actions(wf)["d"] == ("read", "cached")


def test_closure_values_are_inputs(storage):
    def build(k):
        @workflow
        def scaled(x):
            return x * k

        return scaled(2).set_name("scaled")

    wf, r = run(build(3), storage)
    assert r == 6
    wf, r = run(build(3), storage)
    assert actions(wf)["scaled"] == ("read", "cached")
    wf, r = run(build(4), storage)
    assert r == 8
    assert actions(wf)["scaled"] == ("computed", "input changed")


def test_force_recomputes_matching_nodes_and_downstream(storage):
    run(chain(), storage)
    CALLS.clear()
    wf, r = run(chain(), storage, force="s1")
    assert r == 25
    acts = actions(wf)
    assert acts["s1"] == ("computed", "forced")
    assert acts["s2"] == ("computed", "upstream forced")
    assert acts["total"] == ("computed", "upstream forced")
    assert acts["source"] == ("skipped", "cached")
    assert acts["s0"] == ("read", "cached")
    assert CALLS == {"s1": 1, "s2": 1, "total": 1}
    wf, _ = run(chain(), storage)
    assert actions(wf)["s1"] == ("skipped", "cached")


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "manifest"])
def test_corrupt_entry_is_recomputed_with_warning(storage, damage):
    run(chain(), storage)
    manifest, objects = result_files(storage, "wf", "s2")
    path = manifest if damage == "manifest" else objects[0]
    with open(path, "rb") as fh:
        data = bytearray(fh.read())
    if damage in ("flip", "manifest"):
        data[-5] ^= 0x55
    elif damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data = b""
    with open(path, "wb") as fh:
        fh.write(bytes(data))
    storage.remove_task("wf", "total")
    CALLS.clear()
    with pytest.warns(CacheWarning, match="'s2'.*unusable"):
        wf, r = run(chain(), storage)
    assert r == 25
    acts = actions(wf)
    assert acts["s2"] == ("computed", "corrupt entry")
    assert CALLS == {"s2": 1, "total": 1}
    wf, r = run(chain(), storage)  # the entry was repaired
    assert r == 25 and actions(wf)["total"] == ("read", "cached")
    assert storage.read_task("wf", "s2").data == [x + 3 for x in range(5)]


def test_node_error_names_node_and_keeps_stored_results(storage):
    @workflow
    def boom(t):
        raise RuntimeError("bad input")

    leaf = boom(step(source(5).set_name("source"), "s0").set_name("s0")).set_name("boom")
    wf = LocalWorkflow(leaf, workflow_name="wf")
    wf.set_storage(storage)
    with pytest.raises(NodeExecutionError, match="'boom' failed: RuntimeError: bad input") as info:
        wf.run()
    assert isinstance(info.value.__cause__, RuntimeError)
    assert info.value.node == "boom"
    assert storage.list_tasks("wf") == ["s0", "source"]
    assert actions(wf)["s0"] == ("computed", "new")


def test_unpicklable_result_is_a_clear_error_and_loses_nothing(storage):
    @workflow
    def make_lock(t):
        return threading.Lock()

    run(chain(), storage)
    before = store_files(storage.path)
    leaf = make_lock(chain()).set_name("locker")
    wf = LocalWorkflow(leaf, workflow_name="wf")
    wf.set_storage(storage)
    with pytest.raises(SerializationError, match="node 'locker'.*_thread.lock.*register_persistent_serializers"):
        wf.run()
    assert store_files(storage.path) == before
    assert storage.list_tasks("wf") == ["s0", "s1", "s2", "source", "total"]


def test_unhashable_argument_warns_and_always_recomputes(storage):
    class Opaque:  # holds a lock: its state is not plain data
        def __init__(self):
            self.lock = threading.Lock()

    @workflow
    def use(o, x):
        CALLS["use"] += 1
        return x

    for _ in range(2):
        with pytest.warns(CacheWarning, match="node 'u'.*argument 0.*Opaque.*recomputed on every run"):
            wf, r = run(use(Opaque(), 1).set_name("u"), storage)
    assert CALLS["use"] == 2
    assert actions(wf)["u"] == ("computed", "unhashable input")
    wf = LocalWorkflow(use(Opaque(), 1).set_name("u"), workflow_name="wf")
    wf.set_storage(storage)
    with pytest.raises(HashingError, match="node 'u': argument 0"):
        wf.run(strict_hashing=True)


def test_log_nodes_never_stored_always_run(storage):
    @workflow
    def show(x):
        CALLS["show"] += 1
        return x

    def build():
        return show(chain()).set_name("show")

    for i in range(2):
        wf = LocalWorkflow(build(), workflow_name="wf")
        wf.set_storage(storage)
        wf.log_nodes("sh.*")
        assert wf.run() == 25
    assert CALLS["show"] == 2
    assert "show" not in storage.list_tasks("wf")
    assert actions(wf)["show"] == ("computed", "not stored")


def test_always_read_gives_children_the_stored_form(storage):
    storage.always_read = True

    @workflow
    def peek(t):
        return LOADS["source"]

    LOADS.clear()
    wf, r = run(peek(source(3).set_name("source")).set_name("peek"), storage)
    assert r == 1  # the child received the object re-read from storage


def test_without_storage_everything_runs(storage):
    wf = LocalWorkflow(chain(), workflow_name="wf")
    assert wf.run() == 25
    assert set(actions(wf).values()) == {("computed", "no storage")}


COUNTS = collections.Counter()


@workflow
class Accumulator:
    def __init__(self, start):
        COUNTS["init"] += 1
        self.total = start

    def add(self, x):
        COUNTS["add"] += 1
        self.total += x
        return self.total


def build_chain():
    acc = Accumulator(10).set_name("acc")
    calls = [acc.add(i).set_name(f"add{i}") for i in range(4)]
    return calls


def test_class_chain_cached_and_replayed(storage):
    COUNTS.clear()
    calls = build_chain()
    wf = LocalWorkflow(*calls, workflow_name="wf")
    wf.set_storage(storage)
    assert wf.run() == [10, 11, 13, 16]
    assert COUNTS == {"init": 1, "add": 4}

    COUNTS.clear()
    wf = LocalWorkflow(*build_chain(), workflow_name="wf")
    wf.set_storage(storage)
    assert wf.run() == [10, 11, 13, 16]
    assert COUNTS == {}  # nothing replayed: every call is stored

    storage.remove_task("wf", "add2")
    COUNTS.clear()
    wf = LocalWorkflow(*build_chain(), workflow_name="wf")
    wf.set_storage(storage)
    assert wf.run() == [10, 11, 13, 16]
    assert COUNTS == {"init": 1, "add": 3}  # replayed add0, add1; computed add2; add3 read
    acts = actions(wf)
    assert acts["acc"] == ("replayed", "replay")
    assert acts["add0"] == ("replayed", "replay")
    assert acts["add2"] == ("computed", "new")
    assert acts["add3"] == ("read", "cached")


def test_class_chain_key_covers_history(storage):
    COUNTS.clear()
    wf = LocalWorkflow(*build_chain(), workflow_name="wf")
    wf.set_storage(storage)
    wf.run()
    acc = Accumulator(20).set_name("acc")  # constructor argument changed
    calls = [acc.add(i).set_name(f"add{i}") for i in range(4)]
    wf = LocalWorkflow(*calls, workflow_name="wf")
    wf.set_storage(storage)
    assert wf.run() == [20, 21, 23, 26]
    assert {e.action for e in wf.last_report.events} == {"computed"}


CRASH_SCRIPT = """
import os, sys, json
from functionfuse import workflow, storage_factory
from functionfuse.backends.builtin.localback import LocalWorkflow

@workflow
def step(x, i):
    if os.environ.get("CRASH_AT") == str(i):
        os.kill(os.getpid(), 9)
    return x + [i]

node = []
for i in range(6):
    node = step(node, i).set_name(f"step{i}")
wf = LocalWorkflow(node, workflow_name="crash")
wf.set_storage(storage_factory({"kind": "file", "options": {"path": sys.argv[1]}}))
result = wf.run()
print(json.dumps({"result": result, "events": [[e.node, e.action] for e in wf.last_report.events]}))
"""


def test_kill_9_mid_run_resumes_from_stored_nodes(tmp_path):
    import json

    script = tmp_path / "crash.py"
    script.write_text(CRASH_SCRIPT)
    store = tmp_path / "store"
    os.environ["CRASH_AT"] = "3"
    try:
        proc = run_script(script, store, check=False)
    finally:
        del os.environ["CRASH_AT"]
    assert proc.returncode == -9
    out = json.loads(run_script(script, store))
    assert out["result"] == [0, 1, 2, 3, 4, 5]
    assert [a for _, a in out["events"]] == ["skipped", "skipped", "read", "computed", "computed", "computed"]
    assert not os.path.exists(store / "tmp") or os.listdir(store / "tmp") == []


def test_force_propagates_through_log_nodes(storage):
    def build():
        s = source(3).set_name("source")
        mid = step(s, "mid").set_name("mid")
        return total(mid).set_name("total")

    def make():
        wf = LocalWorkflow(build(), workflow_name="wf")
        wf.set_storage(storage)
        wf.log_nodes("mid")
        return wf

    make().run()
    wf = make()
    wf.run(force="source")
    assert actions(wf)["total"] == ("computed", "upstream forced")


def test_shared_object_stored_once_and_identity_kept(storage):
    import dask.array as da

    from functionfuse.serializers.daskarray import DaskArraySerializer

    storage.register_persistent_serializers(DaskArraySerializer)
    x = da.ones(10, chunks=5)
    storage.save("wf", "n", "0" * 32, {"a": x, "b": x}, {})
    assert len(os.listdir(os.path.join(storage.path, "side", "wf"))) == 1
    loaded = storage.load("wf", "0" * 32)
    assert loaded["a"] is loaded["b"]


class Tagged:
    def __init__(self, v):
        self.v = v


class TaggedSerializer:
    name = "tagged"
    serializer_class = Tagged

    @staticmethod
    def pickle(obj, protocols):
        from functionfuse.serializers import FILE_PROTOCOL

        with protocols[FILE_PROTOCOL].open(f"t-{obj.v}", "wb") as fh:
            fh.write(str(obj.v).encode())
        return f"t-{obj.v}"

    @staticmethod
    def unpickle(name, protocols):
        from functionfuse.serializers import FILE_PROTOCOL

        with protocols[FILE_PROTOCOL].open(name, "rb") as fh:
            return Tagged(int(fh.read()))

    @staticmethod
    def remove(name, protocols):
        from functionfuse.serializers import FILE_PROTOCOL

        protocols[FILE_PROTOCOL].remove(name)


def test_missing_serializer_is_an_error_and_keeps_the_entry(storage):
    from functionfuse import SerializerNotRegisteredError
    from functionfuse.storage import FileStorage

    @workflow
    def tagged():
        return Tagged(4)

    storage.register_persistent_serializers(TaggedSerializer)
    wf = LocalWorkflow(tagged().set_name("arr"), workflow_name="wf")
    wf.set_storage(storage)
    wf.run()
    before = store_files(storage.path)
    wf = LocalWorkflow(tagged().set_name("arr"), workflow_name="wf")
    wf.set_storage(FileStorage(storage.path))  # serializer not registered here
    with pytest.raises(SerializerNotRegisteredError, match="node 'arr'.*'tagged'.*register"):
        wf.run()
    assert store_files(storage.path) == before
    assert storage.read_task("wf", "arr").v == 4


def test_keyword_order_does_not_change_the_key(storage):
    @workflow
    def kw(a, b):
        return a - b

    run(kw(a=5, b=1).set_name("kw"), storage)
    wf, r = run(kw(b=1, a=5).set_name("kw"), storage)
    assert r == 4 and actions(wf)["kw"] == ("read", "cached")


def _mul(x, k):
    return float((x * k).sum())


def test_partial_arguments_are_inputs(storage):
    import functools

    import numpy as np

    a = np.zeros(5000)
    b = a.copy()
    b[2500] = 1.0  # differs only deep inside: an abbreviated repr would not show it
    results = []
    for k in (a, b, b):
        wf, r = run(workflow(functools.partial(_mul, k=k))(1.0).set_name("n"), storage)
        results.append((r, actions(wf)["n"]))
    assert results == [(0.0, ("computed", "new")), (1.0, ("computed", "input changed")), (1.0, ("read", "cached"))]


class Scale:
    def __init__(self, k):
        self.k = k

    def __call__(self, x):
        return x * self.k

    def __functionfuse_token__(self):
        return self.k


class Opaque:
    """A callable holding a lock: its state is not plain data."""

    def __init__(self):
        self.lock = threading.Lock()

    def __call__(self, x):
        return x


def test_callable_objects_are_keyed_by_their_state(storage):
    for k, expected in ((2, ("computed", "new")), (3, ("computed", "input changed")), (3, ("read", "cached"))):
        wf, r = run(workflow(Scale(k))(5).set_name("c"), storage)
        assert (r, actions(wf)["c"]) == (5 * k, expected)
    with pytest.warns(CacheWarning, match="node 'o'.*Opaque"):
        wf, _ = run(workflow(Opaque())(1).set_name("o"), storage)
    assert actions(wf)["o"] == ("computed", "unhashable input")


def test_class_node_closures_are_inputs(storage):
    def make(k):
        @workflow
        class Model:
            def fit(self, x):
                return x * k

        return Model

    for k in (2, 3):
        wf, r = run(make(k)().fit(5).set_name("fit"), storage)
        assert r == 5 * k
        assert actions(wf)["fit"][0] == "computed"


@workflow
class Estimator:
    def __init__(self):
        self.coef = 0

    def fit(self, x):
        self.coef = x
        return self  # sklearn style

    def refit(self, x):
        self.coef = x
        return x


@workflow
def predict(model):
    return model.coef


@pytest.mark.parametrize("with_storage", [True, False])
def test_method_returning_self_gives_children_the_state_at_that_call(storage, with_storage):
    def build():
        m = Estimator().set_name("m")
        fitted = m.fit(1).set_name("fit")
        m.refit(100).set_name("refit")
        return predict(fitted).set_name("predict")

    for _ in range(2):  # cold, then warm: the same answer
        wf = LocalWorkflow(build(), workflow_name="wf")
        if with_storage:
            wf.set_storage(storage)
        assert wf.run() == 1


def test_replayed_method_returning_self_gives_children_a_snapshot(storage):
    def build():
        m = Estimator().set_name("m")
        fitted = m.fit(1).set_name("fit")
        m.refit(100).set_name("refit")
        return predict(fitted).set_name("predict")

    wf = LocalWorkflow(build(), workflow_name="wf")
    wf.set_storage(storage)
    assert wf.run() == 1
    storage.remove_task("wf", pattern="[rp]*")  # refit must run: fit is replayed, predict recomputed
    wf = LocalWorkflow(build(), workflow_name="wf")
    wf.set_storage(storage)
    assert wf.run() == 1
    assert actions(wf)["fit"] == ("replayed", "replay")
