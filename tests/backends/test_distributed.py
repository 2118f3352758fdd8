"""Behaviour both distributed backends share, on real clusters.

Every test runs on a local Ray (``ray.init(num_cpus=2)``) and on a
``distributed.LocalCluster`` with two worker processes (see conftest.py).
"""

import os
import pickle
import random
import sys
import threading
import time

import cloudpickle
import pytest
from helpers import damage_manifest

from functionfuse import workflow
from functionfuse.backends.builtin.daskback import DaskWorkflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.backends.builtin.rayback import RayWorkflow
from functionfuse.backends.plugins import InitializerPlugin, PluginCollection, RandomStatePlugin
from functionfuse.caching import CacheWarning
from functionfuse.errors import ExecutorError, GraphError, NodeExecutionError
from functionfuse.storage import FileStorage

# Workers cannot import this test module: send its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(params=["ray", "dask"])
def backend(request):
    """``make(*nodes, workflow_name=...)`` building a workflow of each backend."""
    if request.param == "ray":
        request.getfixturevalue("ray_cluster")

        def make(*nodes, workflow_name="wf"):
            return RayWorkflow(*nodes, workflow_name=workflow_name)

        make.run = lambda wf, **kw: wf.run(return_results=True, **kw)
    else:
        client = request.getfixturevalue("dask_client")

        def make(*nodes, workflow_name="wf"):
            return DaskWorkflow(*nodes, workflow_name=workflow_name, client=client)

        make.run = lambda wf, **kw: wf.run(**kw)
    make.name = request.param
    return make


@workflow
def where(x):
    return x, os.getpid()


@workflow
def inc(x):
    return x + 1


@workflow
def add(a, b):
    return a + b


@workflow
def total(items):
    return sum(items)


@workflow
def merge(d):
    return {k: v * 2 for k, v in d.items()}


@workflow
def fail(x):
    raise ValueError(f"bad value {x}")


@workflow
def draw(x):
    return random.random()


@workflow
class Counter:
    def __init__(self, start):
        self.value = start

    def add(self, x):
        self.value += x
        return self.value, os.getpid()

    def get(self):
        return self.value


def pipeline():
    a = inc(1).set_name("a")
    b = inc(a).set_name("b")
    c = add(a, 10).set_name("c")
    d = add(b, c).set_name("d")
    return a, b, c, d


def actions(wf):
    return {e.node: e.action for e in wf.last_report.events}


def test_results_and_work_in_worker_processes(backend):
    w = where(5)
    t = total([w[0], inc(w[0]), {"k": 1}["k"]])
    m = merge({"x": w[0], "y": t})
    wf = backend(t, m, w[1])
    res = backend.run(wf)
    assert res[0] == 5 + 6 + 1
    assert res[1] == {"x": 10, "y": 24}
    assert res[2] != os.getpid()  # computed in a worker process


def test_single_indexed_leaf(backend):
    w = where(3)
    assert backend.run(backend(w[0])) == 3


def test_resume_is_lazy_and_changes_recompute_downstream_only(backend, tmp_path):
    storage = FileStorage(tmp_path / "s")
    a, b, c, d = pipeline()
    wf = backend(d)
    wf.set_storage(storage)
    assert backend.run(wf) == 3 + 12
    assert set(actions(wf).values()) == {"computed"}

    # Intermediate entries are never loaded on a resume: a corrupt one would warn.
    for name in ("a", "b", "c"):
        (entry,) = storage.list_tasks("wf", name)
        key = wf.last_report.by_node()[name].key
        damage_manifest(tmp_path / "s", key, lambda raw: raw[:-3])
    wf2 = backend(d)
    wf2.set_storage(storage)
    assert backend.run(wf2) == 15
    assert actions(wf2) == {"a": "skipped", "b": "skipped", "c": "skipped", "d": "read"}


def test_changed_argument_recomputes_node_and_downstream(backend, tmp_path):
    storage = FileStorage(tmp_path / "s")
    a, b, c, d = pipeline()
    wf = backend(d)
    wf.set_storage(storage)
    backend.run(wf)
    a2 = inc(1).set_name("a")
    b2 = inc(a2).set_name("b")
    c2 = add(a2, 20).set_name("c")
    d2 = add(b2, c2).set_name("d")
    wf2 = backend(d2)
    wf2.set_storage(storage)
    assert backend.run(wf2) == 3 + 22
    report = wf2.last_report.by_node()
    assert {n: (e.action, e.reason) for n, e in report.items()} == {
        "a": ("read", "cached"),  # c needs it
        "b": ("read", "cached"),
        "c": ("computed", "input changed: argument b"),
        "d": ("computed", "input changed: c"),
    }


def test_cross_backend_resume_both_ways(backend, tmp_path):
    storage = FileStorage(tmp_path / "s")
    a, b, c, d = pipeline()
    local = LocalWorkflow(d, c, workflow_name="wf")
    local.set_storage(storage)
    assert local.run() == [15, 12]
    wf = backend(d, c)
    wf.set_storage(storage)
    assert backend.run(wf) == [15, 12]
    assert "computed" not in actions(wf).values()

    e = inc(d).set_name("e")
    wf = backend(e)
    wf.set_storage(storage)
    assert backend.run(wf) == 16
    assert actions(wf) == {"a": "skipped", "b": "skipped", "c": "skipped", "d": "read", "e": "computed"}
    local = LocalWorkflow(e, workflow_name="wf")
    local.set_storage(storage)
    assert local.run() == 16
    assert actions(local)["e"] == "read"
    assert "computed" not in actions(local).values()


def test_node_error_names_the_node_and_keeps_stored_work(backend, tmp_path):
    storage = FileStorage(tmp_path / "s")
    ok = inc(1).set_name("ok")
    bad = fail(ok).set_name("bad")
    after = inc(bad).set_name("after")
    side = inc(ok).set_name("side")
    wf = backend(after, side)
    wf.set_storage(storage)
    with pytest.raises(NodeExecutionError, match="node 'bad' failed: ValueError: bad value 2") as info:
        backend.run(wf)
    assert info.value.node == "bad"
    assert isinstance(info.value.__cause__, ValueError)
    assert "raise ValueError" in info.value.remote_traceback
    assert storage.list_tasks("wf", "*") == ["ok", "side"]  # the independent branch was awaited
    with pytest.raises(NodeExecutionError):
        backend.run(wf)
    assert actions(wf)["side"] == "skipped" and actions(wf)["ok"] == "read"


def test_errors_raised_even_without_return_results(backend):
    wf = backend(fail(1).set_name("boom"))
    with pytest.raises(NodeExecutionError, match="'boom'"):
        wf.run(return_results=False)


def test_unpicklable_function_is_reported_before_anything_runs(backend, tmp_path):
    storage = FileStorage(tmp_path / "s")
    lock = threading.Lock()

    @workflow
    def locked(x):
        with lock:
            return x

    @workflow
    def touch(path):
        open(path, "w").close()
        return 1

    marker = tmp_path / "first-ran"
    first = touch(str(marker)).set_name("first")
    node = locked(first).set_name("locked")
    wf = backend(node)
    wf.set_storage(storage)
    with pytest.raises(ExecutorError, match="node 'locked' cannot be sent to a worker.*lock"):
        with pytest.warns(CacheWarning, match="node 'locked'.*_thread.lock cannot be hashed"):
            backend.run(wf)
    time.sleep(1.0)  # a submitted 'first' would have run by now
    assert not marker.exists()  # not even 'first' was submitted
    assert storage.list_tasks("wf", "*") == []


def test_stateful_instance_stays_on_one_worker_in_call_order(backend, tmp_path):
    storage = FileStorage(tmp_path / "s")
    counter = Counter(10).set_name("counter")
    first = counter.add(1).set_name("first")
    second = counter.add(inc(1)).set_name("second")
    third = counter.add(5).set_name("third")
    value = counter.get().set_name("value")
    wf = backend(first, second, third[0], value)
    wf.set_storage(storage)
    res = backend.run(wf)
    assert [res[0][0], res[1][0], res[2], res[3]] == [11, 13, 18, 18]
    assert res[0][1] == res[1][1] != os.getpid()  # one worker process holds the instance

    # Resume: nothing runs; then a changed last call replays the chain.
    assert backend.run(wf) == res
    assert "computed" not in actions(wf).values()
    counter = Counter(10).set_name("counter")
    first = counter.add(1).set_name("first")
    second = counter.add(inc(1)).set_name("second")
    third = counter.add(5).set_name("third")
    value = counter.get().set_name("value")
    last = counter.add(100).set_name("last")
    wf = backend(value, last[0])
    wf.set_storage(storage)
    assert backend.run(wf) == [18, 118]
    acts = actions(wf)
    assert acts["last"] == "computed"
    assert acts["first"] == acts["second"] == acts["third"] == acts["value"] == "replayed"


def test_corrupt_entry_needed_by_a_running_node_is_recomputed(backend, tmp_path):
    storage = FileStorage(tmp_path / "s")
    a, b, c, d = pipeline()
    wf = backend(d)
    wf.set_storage(storage)
    backend.run(wf)
    key_b = wf.last_report.by_node()["b"].key
    damage_manifest(tmp_path / "s", key_b, lambda raw: raw[:-5])
    e = inc(d).set_name("e")
    f = add(b, 100).set_name("f")  # needs b's value
    g = add(b, 1).set_name("g")  # so does g: still one warning
    wf = backend(e, f, g)
    wf.set_storage(storage)
    with pytest.warns(CacheWarning, match="node 'b'") as record:
        assert backend.run(wf) == [16, 103, 4]
    assert len([w for w in record if "node 'b'" in str(w.message)]) == 1
    assert actions(wf)["b"] == "computed"
    assert wf.last_report.by_node()["b"].reason == "corrupt entry"
    wf = backend(e, f, g)
    wf.set_storage(storage)
    assert backend.run(wf) == [16, 103, 4]  # the entry was replaced by a good one
    assert actions(wf)["b"] == "skipped"


def test_random_state_plugin_seeds_in_traversal_order_and_keys_are_stable(backend, tmp_path):
    storage = FileStorage(tmp_path / "s")
    nodes = [draw(i).set_name(f"draw{i}") for i in range(4)]
    other = inc(1).set_name("other")

    def build(seed, top=9):
        wf = backend(*nodes, other, workflow_name="seeded")
        wf.set_plugin("draw.*", RandomStatePlugin(min=0, max=top, seed=seed, seed_func=random.seed))
        wf.set_storage(storage)
        return wf

    wf = build(7)
    values = backend.run(wf)
    # node k gets seed + k + 1, wrapping to min past max: 8, 9, 0, 1
    assert values[:4] == [random.Random(s).random() for s in (8, 9, 0, 1)]
    wf = build(7)
    assert backend.run(wf) == values  # the same seeds on every run: a full cache hit
    assert "computed" not in actions(wf).values()
    wf = build(7, top=10)  # seeds 8, 9, 10, 0: the last two change
    backend.run(wf)
    acts = actions(wf)
    assert [acts[f"draw{i}"] for i in range(4)] == ["read", "read", "computed", "computed"]
    assert acts["other"] == "read"


def test_initializer_plugins_run_on_the_worker_before_the_node(backend, tmp_path):
    marker = tmp_path / "init.txt"

    def init():
        with open(marker, "a") as fh:
            fh.write(f"{os.getpid()}\n")

    @workflow
    def check(x):
        return marker.read_text().count("\n")

    node = check(1).set_name("check")
    wf = backend(node)
    wf.query("check").set_plugin(PluginCollection([InitializerPlugin(init)]))
    assert backend.run(wf) >= 1
    assert str(os.getpid()) not in marker.read_text().split()


def test_bad_query_options_and_plugins_are_clear(backend):
    a, b, c, d = pipeline()
    wf = backend(d)
    assert [n.get_name() for n in wf.query("[ab]").nodes] == ["a", "b"]
    with pytest.raises(GraphError, match="unknown .*option.*'bogus'"):
        wf.query("a").set_remote_args({"bogus": 1})
    with pytest.raises(GraphError, match="not a plugin"):
        wf.set_plugin("a", object())
    with pytest.raises(GraphError, match="max_pending_tasks"):
        wf.run(max_pending_tasks=-1)


def test_max_pending_tasks_with_class_nodes(backend):
    counter = Counter(0).set_name("counter")
    calls = [counter.add(i).set_name(f"add{i}") for i in range(6)]
    others = [inc(i).set_name(f"inc{i}") for i in range(6)]
    wf = backend(calls[-1][0], total(others).set_name("sum"))
    assert wf.run(return_results=True, max_pending_tasks=1) == [15, 21]
    assert wf.run(return_results=True, max_pending_tasks=2) == [15, 21]


def test_force_recomputes_matching_nodes_and_downstream(backend, tmp_path):
    storage = FileStorage(tmp_path / "s")
    a, b, c, d = pipeline()
    wf = backend(d)
    wf.set_storage(storage)
    backend.run(wf)
    assert backend.run(wf, force="b") == 15
    reasons = {e.node: (e.action, e.reason) for e in wf.last_report.events}
    assert reasons == {
        "a": ("read", "cached"),
        "b": ("computed", "forced"),
        "c": ("read", "cached"),
        "d": ("computed", "upstream forced"),
    }


def _cannot_rebuild():
    raise RuntimeError("this object cannot be rebuilt here")


class Fragile:
    def __reduce__(self):
        return (_cannot_rebuild, ())


@workflow
def fragile(x):
    return Fragile()


def test_a_result_that_cannot_reach_the_driver_names_the_node(backend):
    wf = backend(fragile(1).set_name("fragile"))
    with pytest.raises(ExecutorError, match="node 'fragile': its result cannot be brought back") as info:
        backend.run(wf)
    assert info.value.node == "fragile"


# -- worker tracebacks name the user's file, line and source ------------------------------
# cloudpickle writes "<dynamic-code>" as the file of code it sends by value; the
# user must still see this file, the failing line and its text.


def _line_of(text):
    """The line number of the one line of this file containing ``text``."""
    with open(__file__) as fh:
        found = [i for i, line in enumerate(fh, 1) if line.strip() == text]
    assert len(found) == 1, (text, found)
    return found[0]


def _assert_frame(traceback_text, name, source):
    """A frame of this file, in ``name``, at the line of ``source``, showing it."""
    frame = f'File "{__file__}", line {_line_of(source)}, in {name}\n    {source}'
    assert frame in traceback_text, f"{frame!r} not in:\n{traceback_text}"


@workflow
def raises_itself(x):
    raise ArithmeticError(f"the node itself raised {x}")


def _helper_that_raises(x):
    raise LookupError(f"a helper raised {x}")


@workflow
def calls_a_helper(x):
    return _helper_that_raises(x) + 1


def make_closure_node(offset):
    @workflow
    def shifted(x):
        def check(y):
            raise OverflowError(f"a nested function raised {y + offset}")

        return check(x)

    return shifted


@workflow
class Failing:
    def __init__(self, start):
        self.start = start

    def explode(self, x):
        raise KeyError(f"a method raised {self.start + x}")


def _failing_method(x):
    return Failing(1).explode(x)


CASES = {
    "node": (raises_itself, [("raises_itself", 'raise ArithmeticError(f"the node itself raised {x}")')]),
    "helper": (
        calls_a_helper,
        [
            ("calls_a_helper", "return _helper_that_raises(x) + 1"),
            ("_helper_that_raises", 'raise LookupError(f"a helper raised {x}")'),
        ],
    ),
    "closure": (
        make_closure_node(10),
        [
            ("shifted", "return check(x)"),
            ("check", 'raise OverflowError(f"a nested function raised {y + offset}")'),
        ],
    ),
    "method": (_failing_method, [("explode", 'raise KeyError(f"a method raised {self.start + x}")')]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_worker_traceback_names_the_users_file_line_and_source(backend, case):
    func, frames = CASES[case]
    wf = backend(func(5).set_name("broken"))
    with pytest.raises(NodeExecutionError, match="node 'broken' failed") as info:
        backend.run(wf)
    text = info.value.remote_traceback
    assert "<dynamic-code>" not in text
    for name, source in frames:
        _assert_frame(text, name, source)
        _assert_frame(str(info.value), name, source)


def test_placeholder_file_names_are_resolved_on_the_driver(backend, monkeypatch):
    """With code sent the way cloudpickle does (as "<dynamic-code>"), the driver
    still finds the file of each frame among the node's code, and its source."""
    from functionfuse.backends import remote

    monkeypatch.setattr(remote, "dumps", cloudpickle.dumps)
    for case in sorted(CASES):
        func, frames = CASES[case]
        wf = backend(func(5).set_name("broken"))
        with pytest.raises(NodeExecutionError) as info:
            backend.run(wf)
        assert "<dynamic-code>" not in info.value.remote_traceback
        for name, source in frames:
            _assert_frame(info.value.remote_traceback, name, source)


def test_source_only_the_driver_has_is_filled_in(backend):
    """A notebook cell's code: its file exists nowhere, only the driver's linecache
    holds its text (as IPython does); the worker's traceback gets the line."""
    import linecache
    import uuid

    filename = f"/nonexistent/ipykernel/{uuid.uuid4().hex}.py"
    source = "def cell_function(x):\n    y = x * 2\n    raise RuntimeError(f'cell failed {y}')\n"
    namespace = {"__name__": "__main__"}
    exec(compile(source, filename, "exec"), namespace)
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    try:
        wf = backend(workflow(namespace["cell_function"])(4).set_name("cell"))
        with pytest.raises(NodeExecutionError, match="cell failed 8") as info:
            backend.run(wf)
    finally:
        linecache.cache.pop(filename, None)
    frame = f"File \"{filename}\", line 3, in cell_function\n    raise RuntimeError(f'cell failed {{y}}')"
    assert frame in info.value.remote_traceback, info.value.remote_traceback


def _uses_a_library(x):
    return os.path.join(cloudpickle.dumps(x).hex(), _helper_that_raises(x))


def _triple(x):
    return x * 3


@workflow
def apply(x, func, label):
    return label, func(x)


def test_specs_load_where_the_test_module_cannot_be_imported(tmp_path):
    """A spec whose arguments are plain scalars is pickled by the C pickler (its function
    travels as its own pickle); one holding a function defined here carries it by value.
    Both load and run in a fresh interpreter that cannot import this module."""
    import subprocess

    from functionfuse.backends.remote import _plain, build_spec

    root = inc(1)  # plain arguments: the C pickler
    by_value = apply(root, _triple, "by value")  # a function of this module as an argument
    wf = LocalWorkflow(inc(root), by_value, workflow_name="specs")
    plan = wf._make_plan(None)
    functions: dict = {}
    for task in plan.tasks:
        (tmp_path / f"{task.name}.spec").write_bytes(build_spec(plan, task, None, None, functions=functions))
    assert _plain(root.args) and not _plain(by_value.args)
    # The plain specs are tuples of builtin values (written and read by the C pickler).
    kinds = {p.stem: type(pickle.loads(p.read_bytes())).__name__ for p in tmp_path.glob("*.spec")}
    assert sorted(kinds.values()) == ["NodeSpec", "tuple", "tuple"], kinds
    script = tmp_path / "load.py"
    script.write_text(
        "import pathlib, sys\n"
        "from functionfuse.backends.remote import _unpack\n"
        "for path in sorted(pathlib.Path(sys.argv[1]).glob('*.spec')):\n"
        "    spec = _unpack(path.read_bytes())\n"
        "    args, kwargs = spec.fill((5,))\n"
        "    print(path.stem, repr(spec.task.func(*args, **kwargs)))\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, env=env,
                         cwd=str(tmp_path), timeout=120)
    assert out.returncode == 0, out.stderr
    results = sorted(line.split(" ", 1)[1] for line in out.stdout.splitlines())
    assert results == ["('by value', 15)", "2", "6"]


def test_code_objects_follow_what_travels_by_value():
    """The driver's fallback finds code the way cloudpickle sends it: globals by
    value, nested code, closures, partials, bound methods, callable objects."""
    import functools

    from functionfuse.backends.tracebacks import code_objects

    class Scaler:
        def __call__(self, x):
            return _helper_that_raises(x)

    names = lambda *roots: {c.co_name for c in code_objects(roots)}  # noqa: E731
    assert {"calls_a_helper", "_helper_that_raises"} <= names(calls_a_helper.func)
    assert {"shifted", "check"} <= names(make_closure_node(1).func)
    assert {"__init__", "explode"} <= names(Failing.cls)
    assert {"__call__", "_helper_that_raises"} <= names(Scaler())
    assert "_helper_that_raises" in names(functools.partial(_helper_that_raises, 1))
    assert "__call__" in names(Scaler().__call__)
    # library code (sent by reference) is not entered
    assert {c.co_filename for c in code_objects([_uses_a_library])} == {__file__}
    assert "_helper_that_raises" in names(_uses_a_library)


def test_localize_rewrites_placeholders_and_fills_missing_source_only():
    from functionfuse.backends.tracebacks import localize

    line = _line_of('raise LookupError(f"a helper raised {x}")')
    text = (
        "Traceback (most recent call last):\n"
        f'  File "<dynamic-code>", line {line}, in _helper_that_raises\n'
        f'  File "{__file__}", line {line}, in _helper_that_raises\n'
        "    the worker's own line is kept\n"
        '  File "<dynamic-code>", line 1, in no_such_function\n'
        "LookupError: x\n"
    )
    out = localize(text, [calls_a_helper.func])
    source = 'raise LookupError(f"a helper raised {x}")'
    assert out == (
        "Traceback (most recent call last):\n"
        f'  File "{__file__}", line {line}, in _helper_that_raises\n'
        f"    {source}\n"
        f'  File "{__file__}", line {line}, in _helper_that_raises\n'
        "    the worker's own line is kept\n"
        '  File "<dynamic-code>", line 1, in no_such_function\n'  # nothing matches: left as it is
        "LookupError: x\n"
    )
    grouped = f'  |   File "{__file__}", line {line}, in _helper_that_raises\n  | LookupError: x\n'
    assert localize(grouped) == (
        f'  |   File "{__file__}", line {line}, in _helper_that_raises\n'
        f"  |     {source}\n"
        "  | LookupError: x\n"
    )
    assert localize("no frames here") == "no frames here"


@workflow
def slow_fail(x):
    import time

    time.sleep(0.05)
    raise ValueError("slow failure")


def test_failure_report_names_failed_and_not_run_with_durations(backend, tmp_path):
    storage = FileStorage(tmp_path / "s")
    ok = inc(1).set_name("ok")
    bad = slow_fail(ok).set_name("bad")
    after = inc(bad).set_name("after")
    wf = backend(after)
    wf.set_storage(storage)
    with pytest.raises(NodeExecutionError, match="'bad'"):
        backend.run(wf)
    report = wf.last_report
    acts = {e.node: e.action for e in report.events}
    assert acts == {"ok": "computed", "bad": "failed", "after": "not run"}
    assert report.by_node()["bad"].seconds >= 0.05  # measured on the worker
    assert report.seconds is not None and report.seconds >= 0.05
    assert "bad: failed (new) in " in str(report)


@workflow
def nap(x):
    time.sleep(0.05)
    return x + 1


def test_the_report_gives_every_computed_node_its_duration(backend, tmp_path):
    """SPEC section 2: a run reports what happened to every node, with durations, also
    when no progress is shown (the workers' statuses say it)."""
    wf = backend(nap(nap(1).set_name("first")).set_name("second"))
    wf.set_storage(FileStorage(tmp_path / "s"))
    assert backend.run(wf) == 3
    events = wf.last_report.by_node()
    assert all(events[n].action == "computed" and events[n].seconds >= 0.05 for n in ("first", "second"))
    assert "second: computed (new) in " in str(wf.last_report)


@pytest.mark.parametrize("status", [("computed", 0.0012345678901234, 4321, None),
                                    ("read", 0.0, 1, "upstream unchanged"), ("failed", 1e-07, 99999, None)])
def test_a_packed_status_comes_back_exactly(status):
    """Ray's tasks return their status as bytes (cheaper for Ray than a tuple): every
    field comes back as it was, the seconds to the last digit."""
    from functionfuse.backends.remote import pack_status, unpack_status

    packed = pack_status(status)
    assert type(packed) is bytes
    assert unpack_status(packed) == status
    assert unpack_status(status) == status  # a tuple (an actor's status) passes through


def test_a_compact_spec_gives_the_worker_what_the_full_one_does(tmp_path, monkeypatch):
    """Plain specs travel as tuples of builtin values (remote._compact); the worker
    rebuilds from one the same task, arguments and cache fields as from the full
    NodeSpec: positional, keyword and ``node[i]`` inputs, literals of every scalar
    type, a stored node with its cache fields."""
    from functionfuse.backends import remote
    from functionfuse.cutoff import want_contents

    @workflow
    def mix(a, b, *, scale, label, extra, flag=None, raw=b""):
        return a, b, scale, label, extra, flag, raw

    pair = where(3).set_name("pair")
    node = mix(inc(1).set_name("one"), pair[0], scale=2.5, label="x", extra=inc(4).set_name("four"), flag=True,
               raw=b"\x00").set_name("mix")
    wf = LocalWorkflow(node, workflow_name="compact")
    wf.set_storage(FileStorage(tmp_path / "s"))
    plan = wf._make_plan(None)
    want_contents(plan)
    functions: dict = {}
    task = plan.task(node)
    compact = remote.build_spec(plan, task, None, b"storage", functions=functions)
    assert type(pickle.loads(compact)) is tuple
    monkeypatch.setattr(remote, "_plain", lambda values: False)
    full = remote.build_spec(plan, task, None, b"storage", functions=functions)
    assert type(pickle.loads(full)).__name__ == "NodeSpec"
    a, b = remote._unpack(compact), remote._unpack(full)
    deps = (2, (3, 77), 5)
    assert a.fill(deps) == b.fill(deps) == (
        (2, 3), {"scale": 2.5, "label": "x", "extra": 5, "flag": True, "raw": b"\x00"})
    assert (a.where, a.workflow, a.storage, a.run, a.plugin) == (b.where, b.workflow, b.storage, b.run, b.plugin)
    ta, tb = a.task, b.task
    assert ta.fields(remote._SENT) == tb.fields(remote._SENT) == task.fields(remote._SENT)
    assert ta.__dict__ == tb.__dict__ and ta.key == task.key and ta.store
    for field in ("name", "run", "reason", "action", "seconds", "uses", "key", "fingerprint", "code", "entry", "store"):
        assert getattr(ta, field) == getattr(tb, field), field
    assert [(d.name, d.key) for d in ta.deps] == [(d.name, d.key) for d in tb.deps] == [
        ("one", plan.task(node.deps[0]).key), ("pair", plan.task(pair).key), ("four", plan.task(node.deps[2]).key)]
    assert (ta.node.name, ta.node.key, ta.node.qualname) == (tb.node.name, tb.node.key, tb.node.qualname)
    assert ta.func(1, 2, scale=0, label="", extra=3) == tb.func(1, 2, scale=0, label="", extra=3)


def test_a_result_a_cluster_stored_again_is_what_a_local_rerun_reads(backend, tmp_path):
    """Workflow A's record carries its small results; workflow B, on the cluster, forces
    one of the same nodes (same key): the worker writes over the manifest and notes it,
    so A's cached rerun (more than 8 loads: the record's copies) returns the new one."""
    storage = FileStorage(tmp_path / "s")

    def nodes():
        return [draw(i).set_name(f"r{i}") for i in range(10)]

    a = LocalWorkflow(*nodes(), workflow_name="a")
    a.set_storage(storage)
    first = a.run()
    assert a.run() == first
    b = backend(*nodes(), workflow_name="b")
    b.set_storage(storage)
    backend.run(b, force="r3")
    assert [e.action for e in b.last_report.events if e.node == "r3"] == ["computed"]
    again = a.run()
    assert again[3] != first[3]
    assert again[:3] + again[4:] == first[:3] + first[4:]
    c = LocalWorkflow(*nodes(), workflow_name="b")
    c.set_storage(storage)
    assert c.run()[3] == again[3]  # what B stored is what A reads
