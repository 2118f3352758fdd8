"""Early cutoff (SPEC section 2, issue 13): a recomputed node that gives the same result
does not invalidate its consumers, on every executor and storage.

Executors: the local one (sequential and on a thread pool), Dask (a LocalCluster with
worker processes) and Ray (a local instance).  Storages: a folder, and S3 on moto's
HTTP server.  A code change is a bumped ``version=``: the key changes, the result may
not.
"""

import os
import sys
import uuid

import cloudpickle
import numpy as np
import pytest

from functionfuse import workflow
from functionfuse.backends.builtin.daskback import DaskWorkflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.backends.builtin.rayback import RayWorkflow
from functionfuse.caching import CacheWarning
from functionfuse.errors import GraphError
from functionfuse.storage import storage_factory

# Workers cannot import this test module: send its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

UNCHANGED = "upstream unchanged"


def build(load_version="1", data=(1, 2, 3), clean_version="1", factor=2, salt=None):
    """``load -> clean -> train -> evaluate``; ``salt`` makes ``load`` nondeterministic."""

    @workflow(version=load_version)
    def load():
        rows = list(data)
        if salt is not None:
            rows.append(uuid.uuid4().hex)  # another value every time it runs
        return rows

    @workflow(version=clean_version)
    def clean(rows):
        return [r * 10 for r in rows if isinstance(r, int)]

    @workflow
    def train(rows, factor):
        return sum(rows) * factor

    @workflow
    def evaluate(model):
        return {"score": model + 1}

    rows = load().set_name("load")
    cleaned = clean(rows).set_name("clean")
    model = train(cleaned, factor).set_name("train")
    return evaluate(model).set_name("evaluate")


def _on(kind, request, name):
    """``(make, options)``: ``make(leaf)`` is a workflow named ``name`` on executor ``kind``
    (``local``, ``pool``, ``dask`` or ``ray``, the latter two on the test session's
    cluster); ``options`` are what its ``run()`` needs to return values as a local run."""
    if kind == "dask":
        client = request.getfixturevalue("dask_client")
        return (lambda leaf: DaskWorkflow(leaf, workflow_name=name, client=client)), {}
    if kind == "ray":
        request.getfixturevalue("ray_cluster")
        return (lambda leaf: RayWorkflow(leaf, workflow_name=name)), {"return_results": True}
    return (lambda leaf: LocalWorkflow(leaf, workflow_name=name)), ({"max_workers": 2} if kind == "pool" else {})


@pytest.fixture(params=["local", "pool", "dask", "ray"])
def executor(request):
    """``run(leaf, storage, **options) -> (result, {node: (action, reason)})`` on one executor."""
    make, extra = _on(request.param, request, "ml")

    def run(leaf, storage, **options):
        wf = make(leaf)
        wf.set_storage(storage)
        try:
            result = wf.run(**extra, **options)
        finally:
            run.last = wf.last_report
        return result, {e.node: (e.action, e.reason) for e in wf.last_report.events}

    run.kind = request.param
    run.make = make
    return run


@pytest.fixture(params=["file", "s3"])
def store(request, tmp_path):
    if request.param == "file":
        return storage_factory({"kind": "file", "options": {"path": str(tmp_path / "store")}})
    endpoint = request.getfixturevalue("s3_endpoint")
    url = request.getfixturevalue("s3_url")
    return storage_factory({"kind": "S3", "options": {"path": url, "s3fs": endpoint.options}})


def computed(events):
    return sorted(n for n, (action, _) in events.items() if action == "computed")


def cut_off(events):
    return sorted(n for n, (_, reason) in events.items() if reason == UNCHANGED)


def test_unchanged_result_cuts_off_everything_downstream(executor, store):
    assert executor(build("1"), store)[0] == {"score": 121}
    result, events = executor(build("2"), store)  # load's code changed, its result did not
    assert result == {"score": 121}
    assert computed(events) == ["load"]
    assert cut_off(events) == ["clean", "evaluate", "train"]
    # What nothing needs is not even loaded: locally, and on Dask and Ray, where a worker
    # that cuts a node off hands on its key, loaded only by a consumer that computes.
    assert events["clean"][0] == events["train"][0] == "skipped"
    assert events["evaluate"][0] == "read"  # the result asked for
    # The reused results are stored under their new keys: the next run finds them all.
    result, events = executor(build("2"), store)
    assert result == {"score": 121} and computed(events) == [] and cut_off(events) == []
    assert store.read_task("ml", "train") == 120
    assert store.read_task_meta("ml", "train")["same_as"]


def test_cutoff_stops_where_results_differ_and_resumes_below(executor, store):
    executor(build("1", data=(1, 2, 3)), store)
    # load gives another list, so clean computes another list, but train's sum is the
    # same: evaluate, below it, is cut off again.
    result, events = executor(build("2", data=(3, 2, 1)), store)
    assert result == {"score": 121}
    assert computed(events) == ["clean", "load", "train"]
    assert events["clean"] == ("computed", "input changed: load")
    assert cut_off(events) == ["evaluate"]


def test_a_result_that_changes_only_in_the_second_rerun(executor, store):
    executor(build("1"), store)
    _, events = executor(build("2"), store)
    assert cut_off(events) == ["clean", "evaluate", "train"]
    result, events = executor(build("3", data=(5, 5)), store)  # now load's result changes
    assert result == {"score": 201}
    assert computed(events) == ["clean", "evaluate", "load", "train"]
    assert cut_off(events) == []
    assert store.read_task("ml", "evaluate") == {"score": 201}


def test_never_a_wrong_hit(executor, store):
    executor(build("1"), store)
    # clean's own code changed: it runs, although its input has the same content.
    _, events = executor(build("2", clean_version="2"), store)
    assert events["clean"][0] == "computed" and events["clean"][1].startswith("code changed")
    assert cut_off(events) == ["evaluate", "train"]  # its result is the same
    # train's literal argument changed: it runs, and so does evaluate (another model).
    result, events = executor(build("3", clean_version="2", factor=3), store)
    assert result == {"score": 181}
    assert computed(events) == ["evaluate", "load", "train"] and cut_off(events) == ["clean"]
    assert events["clean"][0] == "read"  # train needed its value (on a cluster, train's worker read it)
    # forced nodes and everything below them run, whatever their content.
    _, events = executor(build("3", clean_version="2", factor=3), store, force="load")
    assert computed(events) == ["clean", "evaluate", "load", "train"]
    assert {events[n][1] for n in ("clean", "train", "evaluate")} == {"upstream forced"}


def test_a_nondeterministic_result_recomputes_downstream(executor, store):
    executor(build("1", salt=True), store)
    _, events = executor(build("2", salt=True), store)
    assert computed(events) == ["clean", "load"]  # load's result differs every time ...
    assert events["clean"][1] == "input changed: load"
    assert cut_off(events) == ["evaluate", "train"]  # ... but clean drops the salt


@workflow
def pair(a, b):
    return a - b


def swapped(version, a, b):
    """``pair(first(), second())`` where ``first`` returns ``a`` and ``second`` ``b``."""

    @workflow(version=version)
    def first():
        return a

    @workflow(version=version)
    def second():
        return b

    return pair(first().set_name("a"), second().set_name("b")).set_name("pair")


def test_inputs_are_compared_by_position_not_as_a_set(executor, store):
    """Swapping the contents of two inputs is a change, though the set of contents is not."""
    assert executor(swapped("1", 10, 3), store)[0] == 7
    result, events = executor(swapped("2", 3, 10), store)
    assert result == -7
    assert events["pair"] == ("computed", "input changed: a, b")


def test_early_cutoff_false_lets_keys_alone_decide(executor, store):
    executor(build("1"), store)
    result, events = executor(build("2"), store, early_cutoff=False)
    assert result == {"score": 121}
    assert computed(events) == ["clean", "evaluate", "load", "train"]
    assert cut_off(events) == []
    # The results stored meanwhile keep their recipes: the next change is cut off again.
    _, events = executor(build("3"), store)
    assert cut_off(events) == ["clean", "evaluate", "train"]
    with pytest.raises(GraphError, match="early_cutoff must be True or False"):
        executor(build("3"), store, early_cutoff="yes")
    with pytest.raises(GraphError, match="early_cutoff must be True or False"):  # without storage too
        executor(build("3"), None, early_cutoff="yes")


def arrays(version, n):
    """``normalize(make(n))``, ``make`` at code version ``version``."""

    @workflow(version=version)
    def make_array(n):
        return np.arange(n, dtype=np.float64)

    return normalize(make_array(n).set_name("make")).set_name("norm")


@workflow
def normalize(x):
    return x / x.max()


def test_a_reused_result_copies_no_data(tmp_path):
    store = storage_factory({"kind": "file", "options": {"path": str(tmp_path)}})
    wf = LocalWorkflow(arrays("1", 1000), workflow_name="arr")
    wf.set_storage(store)
    wf.run()
    before = store.read_task_meta("arr", "norm")
    objects = sorted((tmp_path / "objects").rglob("*"))

    wf = LocalWorkflow(arrays("2", 1000), workflow_name="arr")
    wf.set_storage(store)
    np.testing.assert_array_equal(wf.run(), np.arange(1000) / 999)
    assert wf.last_report.by_node()["norm"].reason == UNCHANGED
    after = store.read_task_meta("arr", "norm")
    assert after["key"] != before["key"] and after["same_as"] == before["key"]
    assert [p["object"] for p in after["parts"]] == [p["object"] for p in before["parts"]]
    # What it was computed from: another key for its input, with the same content.
    assert after["recipe"]["inputs"] != before["recipe"]["inputs"]
    assert after["recipe"]["contents"] == before["recipe"]["contents"]
    assert after["inputs"]["make"] == after["recipe"]["inputs"][0] != before["inputs"]["make"]
    assert sorted((tmp_path / "objects").rglob("*")) == objects  # the array was not written again


def test_explain_names_the_nodes_that_may_be_cut_off(tmp_path):
    store = storage_factory({"kind": "file", "options": {"path": str(tmp_path)}})
    wf = LocalWorkflow(build("1"), workflow_name="ml")
    wf.set_storage(store)
    wf.run()
    wf = LocalWorkflow(build("2"), workflow_name="ml")
    wf.set_storage(store)
    plan = wf.explain().by_node()
    assert plan["load"].action == "compute"
    assert plan["clean"].reason == "input changed: load; may be cut off: depends on whether load changes"
    assert plan["train"].reason == "input changed: clean; may be cut off: depends on whether load changes"
    wf.run()
    assert all(p.action == "skip" or p.action == "read" for p in wf.explain().entries)


def damage_part(store, root, workflow_name, node):
    """Flip the last byte of the first part of ``node``'s stored result (a file store at ``root``)."""
    part = store.read_task_meta(workflow_name, node)["parts"][0]["object"]
    path = next(p for p in root.joinpath("objects").rglob(part))
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_damaged_reused_result_is_computed_instead(tmp_path):
    store = storage_factory({"kind": "file", "options": {"path": str(tmp_path)}})
    wf = LocalWorkflow(arrays("1", 100), workflow_name="arr")
    wf.set_storage(store)
    wf.run()
    damage_part(store, tmp_path, "arr", "norm")

    wf = LocalWorkflow(arrays("2", 100), workflow_name="arr")
    wf.set_storage(store)
    with pytest.warns(CacheWarning, match="norm"):
        np.testing.assert_array_equal(wf.run(), np.arange(100) / 99)
    assert wf.last_report.by_node()["norm"].action == "computed"


def read_source(version, path, consumer=True):
    """``scale(load(path))``, ``load`` (reading a file: an impure node) at ``version``."""

    @workflow(version=version)
    def load(path):
        with open(path) as f:
            return int(f.read())

    @workflow
    def scale(x):
        return x * 10

    loaded = load(path).set_name("load")
    return scale(loaded).set_name("scale") if consumer else loaded


@pytest.mark.parametrize("workflow_name", ["ml", "another"])
def test_an_input_key_stored_again_with_other_content_is_no_match(executor, store, tmp_path, workflow_name):
    """A consumer's manifest records the content its inputs had: a key whose result was
    stored again since (force= on an impure node, by this workflow or another one
    sharing the storage) compares by that content, not by what the key holds now."""
    source = tmp_path / "source.txt"
    source.write_text("1")
    assert executor(read_source("1", str(source)), store)[0] == 10
    source.write_text("2")
    wf = executor.make(read_source("1", str(source), consumer=False))
    wf.workflow_name = workflow_name
    wf.set_storage(store)
    wf.run(force="load")  # load's key now holds 2; scale's stored 10 was computed from 1
    result, events = executor(read_source("2", str(source)), store)  # load's code changed too
    assert result == 20
    assert events["scale"] == ("computed", "input changed: load")


def test_results_only_pickle_can_hold_are_not_compared(executor, store):
    """Pickled bytes name classes whose code may change: such a result never lets its
    consumers be cut off."""
    from fractions import Fraction

    def build_fraction(version):
        @workflow(version=version)
        def make():
            return {"third": Fraction(1, 3)}

        @workflow
        def use(d):
            return float(d["third"] * 3)

        return use(make().set_name("make")).set_name("use")

    executor(build_fraction("1"), store)
    result, events = executor(build_fraction("2"), store)
    assert result == 1.0
    assert events["use"] == ("computed", "input changed: make")


def shaped(version, b=3):
    """Inputs given as ``node[i]`` items, inside a list and a tuple, and as a keyword."""

    @workflow(version=version)
    def source():
        return {"a": [1, 2], "b": b}

    @workflow
    def combine(items, *, extra, pair):
        return sum(items) + extra * 100 + pair[0] * 1000

    s = source().set_name("source")
    return combine([s["a"][0], s["b"]], extra=s["b"], pair=(s["a"][1],)).set_name("combine")


def test_items_nested_inputs_and_keywords(executor, tmp_path):
    store = storage_factory({"kind": "file", "options": {"path": str(tmp_path / "store")}})
    assert executor(shaped("1"), store)[0] == 2304
    result, events = executor(shaped("2"), store)
    assert result == 2304 and events["combine"] == ("read", UNCHANGED)
    result, events = executor(shaped("3", b=4), store)  # now the content differs
    assert result == 2405 and events["combine"][0] == "computed"


def logged(version):
    """``after(note(src()))`` where ``note`` is kept out of storage (a log node)."""

    @workflow(version=version)
    def src():
        return 5

    @workflow
    def note(x):
        return x

    @workflow
    def after(x):
        return x + 1

    return after(note(src().set_name("src")).set_name("note")).set_name("after")


def test_an_input_kept_out_of_storage_has_no_content_to_compare(executor, tmp_path):
    store = storage_factory({"kind": "file", "options": {"path": str(tmp_path / "store")}})

    def run(version):
        wf = executor.make(logged(version))
        wf.log_nodes("note")
        wf.set_storage(store)
        plan = wf.explain().by_node()
        result = wf.run(**({"return_results": True} if executor.kind == "ray" else {}))
        return result, plan, {e.node: (e.action, e.reason) for e in wf.last_report.events}

    run("1")
    result, plan, events = run("2")
    assert result == 6
    assert "may be cut off" not in plan["after"].reason
    assert events["after"] == ("computed", "input changed: note")


@workflow
class Counter:
    def __init__(self, start):
        self.total = start

    def add(self, x):
        self.total += x
        return self.total


def counted(version):
    @workflow(version=version)
    def amount():
        return 2

    @workflow
    def double(x):
        return x * 2

    counter = Counter(10)
    return double(counter.add(amount().set_name("amount")).set_name("add")).set_name("double")


def test_class_nodes_are_never_cut_off_but_feed_nodes_that_are(executor, tmp_path):
    store = storage_factory({"kind": "file", "options": {"path": str(tmp_path / "store")}})
    assert executor(counted("1"), store)[0] == 24
    result, events = executor(counted("2"), store)
    assert result == 24
    assert events["add"][0] == "computed"  # a call of an instance runs (its state is its history)
    assert events["double"] == ("read", UNCHANGED)  # its result is the same: its consumer is reused


def test_compute_takes_early_cutoff(tmp_path):
    from functionfuse import compute

    store = storage_factory({"kind": "file", "options": {"path": str(tmp_path / "store")}})
    compute(build("1"), storage=store, workflow_name="ml")
    assert compute(build("2"), storage=store, workflow_name="ml", early_cutoff=False) == {"score": 121}
    assert compute.last_report.computed == ["load", "clean", "train", "evaluate"]
    assert compute(build("3"), storage=store, workflow_name="ml") == {"score": 121}
    assert compute.last_report.computed == ["load"]


def test_on_a_ray_storage_and_with_worker_processes(ray_cluster, tmp_path):
    """The ray storage kind publishes reused results through its storage task, and the
    local process pool checks candidates in the driver."""
    ray_store = storage_factory({"kind": "ray", "options": {"path": str(tmp_path / "ray"), "remoteArgs": {}}})
    for options in ({}, {"max_workers": 2, "processes": True}):
        store = ray_store if not options else storage_factory(
            {"kind": "file", "options": {"path": str(tmp_path / "pool")}}
        )
        for version, cut in (("1", []), ("2", ["clean", "evaluate", "train"])):
            wf = LocalWorkflow(build(version), workflow_name="ml")
            wf.set_storage(store)
            assert wf.run(**options) == {"score": 121}
            assert sorted(e.node for e in wf.last_report.events if e.reason == UNCHANGED) == cut
        assert store.read_task_meta("ml", "train")["same_as"]


@pytest.mark.parametrize("leaf", [False, True])
@pytest.mark.parametrize("kind", ["dask", "ray"])
def test_a_damaged_reused_result_is_computed_on_a_cluster(kind, leaf, tmp_path, request):
    """A worker that cuts a node off hands on the reused result's key.  When the result
    is damaged, whoever loads it finds out: a consumer that computes (on a worker), or
    the driver for a result it returns.  The run then goes again without the entry: the
    node is computed and written over the new manifest, its consumer gets its value."""
    store = storage_factory({"kind": "file", "options": {"path": str(tmp_path)}})
    make, extra = _on(kind, request, "arr")

    def total(version, total_version):
        @workflow(version=total_version)
        def add_up(x):
            return float(x.sum())

        return add_up(arrays(version, 100)).set_name("total")

    wf = make(arrays("1", 100) if leaf else total("1", "1"))
    wf.set_storage(store)
    wf.run(**extra)
    damage_part(store, tmp_path, "arr", "norm")
    # make's code changes (same result): norm is cut off; total's code changes too, so it
    # computes and loads norm's reused result on its worker.
    wf = make(arrays("2", 100) if leaf else total("2", "2"))
    wf.set_storage(store)
    with pytest.warns(CacheWarning, match="norm"):
        out = wf.run(return_results=True)
    events = {e.node: (e.action, e.reason) for e in wf.last_report.events}
    assert events["norm"][0] == "computed"
    if leaf:
        np.testing.assert_array_equal(out, np.arange(100) / 99)
    else:
        assert out == 50.0 and events["total"][0] == "computed"
    np.testing.assert_array_equal(store.read_task("arr", "norm"), np.arange(100) / 99)


def test_explain_on_dask_names_the_nodes_that_may_be_cut_off(dask_client, tmp_path):
    store = storage_factory({"kind": "file", "options": {"path": str(tmp_path)}})
    wf = DaskWorkflow(build("1"), workflow_name="ml", client=dask_client)
    wf.set_storage(store)
    wf.run()
    wf = DaskWorkflow(build("2"), workflow_name="ml", client=dask_client)
    wf.set_storage(store)
    assert wf.explain().by_node()["evaluate"].reason == (
        "input changed: train; may be cut off: depends on whether load changes"
    )


def test_the_reasons_cutoff_knows_are_those_of_caching():
    from functionfuse import caching, cutoff

    assert (cutoff._INPUT_CHANGED, cutoff._UNHASHABLE, cutoff._REPLAY) == (
        caching.INPUT_CHANGED, caching.UNHASHABLE, caching.REPLAY
    )


def two_inputs(norm_version, path, consumer=True):
    """``use(load(path), norm())``: ``load`` reads a file (impure), ``norm`` changes only
    its code version."""

    @workflow
    def load(path):
        with open(path) as f:
            return int(f.read())

    @workflow(version=norm_version)
    def norm():
        return 1

    @workflow
    def use(x, n):
        return x * 10 + n

    loaded = load(path).set_name("load")
    return use(loaded, norm().set_name("norm")).set_name("use") if consumer else loaded


def test_an_input_with_an_unchanged_key_is_compared_too(executor, store, tmp_path):
    """Every input is compared by content, its key changed or not: a key stored again
    with another result (force= on a node that reads a file) is no match."""
    source = tmp_path / "source.txt"
    source.write_text("1")
    assert executor(two_inputs("1", str(source)), store)[0] == 11
    source.write_text("2")
    executor(two_inputs("1", str(source), consumer=False), store, force="load")  # load's key holds 2
    result, events = executor(two_inputs("2", str(source)), store)  # only norm's key changed
    assert result == 21
    assert events["use"] == ("computed", "input changed: norm")


def noted(note_version, after_version, path):
    @workflow(version=note_version)
    def note(path):
        with open(path) as f:
            return int(f.read())

    @workflow(version=after_version)
    def after(x):
        return x * 100

    return after(note(path).set_name("note")).set_name("after")


def test_an_input_kept_out_of_storage_records_no_content(executor, tmp_path):
    """A consumer computed from a log node's value does not record what an earlier run
    stored under that node's key (another value), nor compare against it later."""
    store = storage_factory({"kind": "file", "options": {"path": str(tmp_path / "store")}})
    source = tmp_path / "source.txt"

    def run(leaf, log=False):
        wf = executor.make(leaf)
        if log:
            wf.log_nodes("note")
        wf.set_storage(store)
        result = wf.run(**({"return_results": True} if executor.kind == "ray" else {}))
        return result, {e.node: (e.action, e.reason) for e in wf.last_report.events}

    source.write_text("1")
    run(noted("1", "1", str(source)))  # note stored, holding 1
    source.write_text("2")
    assert run(noted("1", "2", str(source)), log=True)[0] == 200  # note kept out: after = f(2)
    assert store.read_task_meta("ml", "after")["recipe"]["contents"] == [None]
    source.write_text("1")
    result, events = run(noted("2", "2", str(source)))  # note stored again, holding 1
    assert result == 100 and events["after"][0] == "computed"



@workflow
class Reader:
    def __init__(self, path):
        self.path = path
        self.total = 0

    def read(self):
        with open(self.path) as f:
            self.total = int(f.read())
        return self.total

    def add(self, x):
        return self.total + x


def replayed(version, path):
    @workflow(version=version)
    def k():
        return 5

    @workflow
    def use(v, kk):
        return v * 100 + kk

    reader = Reader(path)
    value = reader.read().set_name("read")
    kn = k().set_name("k")
    return use(value, kn).set_name("use"), reader.add(kn).set_name("add")


def test_a_replayed_input_is_computed_anew_and_stops_a_cutoff(tmp_path):
    """A call replayed to rebuild an instance gives its consumers the value it gets now,
    not the stored one: no cutoff is decided on that stored content."""
    store = storage_factory({"kind": "file", "options": {"path": str(tmp_path / "store")}})
    source = tmp_path / "source.txt"
    source.write_text("1")

    def run(version):
        wf = LocalWorkflow(*replayed(version, str(source)), workflow_name="ml")
        wf.set_storage(store)
        return wf.run(), {e.node: (e.action, e.reason) for e in wf.last_report.events}

    run("1")
    source.write_text("2")
    (use, _), events = run("2")  # k changed: add runs, so read is replayed and reads 2
    assert events["read"][0] == "replayed"
    assert use == 205 and events["use"][0] == "computed"


def ticked(version, path):
    """Two nodes with one key (the same impure call, two names): the second to store loses."""

    def tick_at(v):
        @workflow(version=v)
        def tick(path):
            with open(path) as f:
                n = int(f.read())
            spare = f"{path}.{uuid.uuid4().hex}"  # replaced whole: a twin on another worker reads it whole
            with open(spare, "w") as f:
                f.write(str(n + 1))
            os.replace(spare, path)
            return n

        return tick

    @workflow
    def use(x):
        return x * 10

    @workflow
    def pair(x, y):
        return [x, y]

    a = tick_at("1")(path).set_name("a")
    b = tick_at(version)(path).set_name("b")
    return pair(a, use(b).set_name("ub")).set_name("out")


@pytest.mark.parametrize("kind", ["local", "dask", "ray"])
def test_a_value_another_writer_stored_first_is_the_one_consumers_get(kind, tmp_path, request):
    """When a node's key was stored first by another writer (here a twin node of the same
    run), its consumers get the stored result: what later runs read and early cutoff
    compares."""
    store = storage_factory({"kind": "file", "options": {"path": str(tmp_path / "store")}})
    source = tmp_path / "n.txt"
    source.write_text("0")
    make, extra = _on(kind, request, "ml")

    def run(version, cutoff):
        wf = make(ticked(version, str(source)))
        wf.set_storage(store)
        return wf.run(early_cutoff=cutoff, **extra)

    first = run("1", True)
    held = store.read_task("ml", "b")  # a and b share a key: it holds one of their values
    assert first == [held, held * 10]
    source.write_text(str(held))  # b's new version gives exactly what its key holds
    assert run("2", True) == [held, held * 10]


def many_inputs(path):
    """``use`` of ten small constants and of ``load(path)``: a rerun loads 11 small results,
    enough to take them from the run record's values (past FEW_LOADS)."""

    @workflow
    def const(i):
        return i

    @workflow
    def load(path):
        with open(path) as f:
            return int(f.read())

    @workflow
    def use(*values):
        return sum(values[:-1]) + values[-1] * 1000

    return use(*[const(i).set_name(f"c{i}") for i in range(10)], load(path).set_name("load")).set_name("use")


def test_a_forced_run_on_dask_leaves_no_stale_small_result_in_the_run_record(dask_client, tmp_path):
    """A key stored again by a Dask worker (force=) has no tree on the driver: the run's
    record must not carry the previous record's tree for it (a later cached rerun would
    read the old value from there)."""
    store = storage_factory({"kind": "file", "options": {"path": str(tmp_path / "store")}})
    source = tmp_path / "source.txt"
    source.write_text("1")
    wf = LocalWorkflow(many_inputs(str(source)), workflow_name="ml")
    wf.set_storage(store)
    assert wf.run() == 1045
    source.write_text("2")
    wf = DaskWorkflow(many_inputs(str(source)), workflow_name="ml", client=dask_client)
    wf.set_storage(store)
    assert wf.run(force="load") == 2045
    leaf = many_inputs(str(source))
    wf = LocalWorkflow(*leaf.deps, workflow_name="ml")  # load and the constants, all cached
    wf.set_storage(store)
    assert wf.run()[-1] == 2
    assert wf.last_report.by_node()["load"].action == "read"


def test_a_reused_result_whose_object_is_gone_is_computed(tmp_path):
    """Storage.alias refuses a stored version missing an object (EntryNotFoundError naming
    it): the node is computed instead, and the run goes on."""
    from functionfuse.errors import EntryNotFoundError

    store = storage_factory({"kind": "file", "options": {"path": str(tmp_path)}})
    wf = LocalWorkflow(arrays("1", 100), workflow_name="arr")
    wf.set_storage(store)
    wf.run()
    meta = store.read_task_meta("arr", "norm")
    part = meta["parts"][0]["object"]
    path = next(p for p in (tmp_path / "objects").rglob(part))
    path.chmod(0o644)
    path.unlink()
    with pytest.raises(EntryNotFoundError, match=part):
        store.alias("arr", "norm", "f" * 32, meta["key"], {})
    wf = LocalWorkflow(arrays("2", 100), workflow_name="arr")
    wf.set_storage(store)
    np.testing.assert_array_equal(wf.run(), np.arange(100) / 99)
    assert wf.last_report.by_node()["norm"].action == "computed"
    np.testing.assert_array_equal(store.read_task("arr", "norm"), np.arange(100) / 99)


def rows_at(load_version):
    """The node ``load`` (returning ``[1, 2, 3]``) at code version ``load_version``."""

    @workflow(version=load_version)
    def load():
        return [1, 2, 3]

    return load().set_name("load")


def load_and_clean(load_version):
    """``load -> clean``, ``load`` at code version ``load_version``."""

    @workflow
    def clean(rows):
        return [r * 10 for r in rows]

    return clean(rows_at(load_version)).set_name("clean")


def small_chain(load_version, train_version="ok", fail=False):
    """``load -> clean -> train``; ``train`` (returned) raises with ``fail``."""

    @workflow(version=train_version)
    def train(rows):
        if fail:
            raise RuntimeError("train failed")
        return sum(rows)

    return train(load_and_clean(load_version)).set_name("train")


def test_a_cut_off_input_a_returned_node_computes_from_is_read(executor, store):
    """clean is cut off, train (returned, its code changed) computes from it: clean is
    reported read on every executor (on Dask the returned node's status comes after
    clean's own, which said skipped)."""
    executor(small_chain("1"), store)
    result, events = executor(small_chain("2", "2"), store)
    assert result == 60
    assert events["clean"] == ("read", UNCHANGED) and events["train"][0] == "computed"


def test_a_failed_run_keeps_what_it_cut_off(executor, store):
    """train fails after clean was cut off: clean's reused result is published under its
    new key, the report says so (not "not run"), the record names it, and the next run
    finds it stored."""
    executor(small_chain("1"), store)
    with pytest.raises(Exception, match="train failed"):
        executor(small_chain("2", "f", fail=True), store)
    events = {e.node: (e.action, e.reason) for e in executor.last.events}
    # Locally train's value was taken from clean (read); a worker that loaded it failed
    # before telling the driver (skipped).  Never "not run": it was published.
    assert events["clean"] in (("read", UNCHANGED), ("skipped", UNCHANGED)) and events["train"][0] == "failed"
    result, events = executor(small_chain("2", "2"), store)
    assert result == 60 and events["clean"][0] in ("read", "skipped") and events["clean"][1] != UNCHANGED
    assert computed(events) == ["train"]


@workflow
class Accumulator:
    def __init__(self):
        self.total = 0.0

    def add(self, x):
        self.total += float(x.sum())
        return self.total

    def bump(self, k):
        self.total += k
        return self.total


@pytest.mark.parametrize("kind", ["dask", "ray"])
def test_a_call_after_a_failed_one_on_the_same_instance_is_not_run(kind, tmp_path, request):
    """``acc.add(norm)`` fails on its worker (norm's reused result is damaged), so
    ``acc.bump(1)``, the next call on the same instance, must not run on an instance
    without add's effect (and store what it returns): the run goes again, computes norm,
    replays the chain and returns the right total."""
    store = storage_factory({"kind": "file", "options": {"path": str(tmp_path)}})
    make, _ = _on(kind, request, "acc")

    def graph(version):
        acc = Accumulator().set_name("acc")
        acc.add(arrays(version, 100)).set_name("add")
        return acc.bump(1).set_name("bump")

    wf = make(graph("1"))
    wf.set_storage(store)
    assert wf.run(return_results=True) == 51.0
    damage_part(store, tmp_path, "acc", "norm")
    wf = make(graph("2"))
    wf.set_storage(store)
    with pytest.warns(CacheWarning, match="norm"):
        assert wf.run(return_results=True) == 51.0
    assert store.read_task("acc", "bump") == 51.0


def test_a_returned_node_cut_off_without_its_status_is_still_loaded(dask_client, tmp_path, monkeypatch):
    """A Dask status event that reaches the driver too late (a busy scheduler): the driver
    loads the returned node's reused result by the key the worker handed on."""
    from functionfuse.backends import daskbackend

    store = storage_factory({"kind": "file", "options": {"path": str(tmp_path)}})

    def run(version):
        wf = DaskWorkflow(load_and_clean(version), workflow_name="late", client=dask_client)
        wf.set_storage(store)
        return wf.run(), wf.last_report

    run("1")
    original = daskbackend._DaskEngine._on_status

    def drop_clean(self, msg):
        task = self.reported.get(msg[1])
        if task is None or task.name != "clean":
            original(self, msg)

    monkeypatch.setattr(daskbackend._DaskEngine, "_on_status", drop_clean)
    monkeypatch.setattr(daskbackend._DaskEngine._await_statuses, "__defaults__", (0.2,))
    value, report = run("2")
    assert value == [10, 20, 30]
    assert report.by_node()["clean"].action == "read" and report.by_node()["clean"].reason == UNCHANGED


def test_a_node_whose_result_only_pickle_holds_is_cut_off_itself(executor, store):
    """Its stored version records its inputs' digests: with them unchanged it is reused
    like any other node (reusing it needs no digest of its own).  Its consumers are not
    cut off: nothing tells whether its result is the same."""
    from fractions import Fraction

    def build_chain(version):
        @workflow
        def wrap(rows):
            return {"third": Fraction(sum(rows), 3)}  # a pickle part

        @workflow
        def use(d):
            return float(d["third"])

        return use(wrap(rows_at(version)).set_name("wrap")).set_name("use")

    executor(build_chain("1"), store)
    result, events = executor(build_chain("2"), store)
    assert result == 2.0
    assert events["wrap"] == ("read", UNCHANGED)
    assert events["use"] == ("computed", "input changed: wrap")


def test_a_result_with_side_data_is_never_reused(tmp_path):
    """A dask array stored as an HDF5 file (side data): its node is computed, not cut off
    (two keys sharing one file, gc removing the old key would delete the new one's data);
    after gc keeps only the latest run, the result still loads."""
    import dask.array as da

    from functionfuse.cli import main

    store = storage_factory({"kind": "file", "options": {"path": str(tmp_path)}})

    def build_array(version):
        @workflow
        def arr(rows):
            return da.from_array(np.array(rows) * 10, chunks=2)

        return arr(rows_at(version)).set_name("arr")

    for version in ("1", "2"):
        wf = LocalWorkflow(build_array(version), workflow_name="side")
        wf.set_storage(store)
        np.testing.assert_array_equal(wf.run().compute(), [10, 20, 30])
    assert wf.last_report.by_node()["arr"].action == "computed"
    assert main(["gc", "--store", str(tmp_path), "--keep-runs", "1", "--grace", "0s"]) == 0
    np.testing.assert_array_equal(store.read_task("side", "arr").compute(), [10, 20, 30])


@pytest.mark.parametrize("kind", ["dask", "ray"])
def test_a_call_whose_input_failed_stops_the_later_calls(kind, tmp_path, request):
    """``acc.add(src)`` does not run because ``src`` raised (upstream of the instance): the
    next call, ``acc.bump(1)``, must not run on an instance without add's effect and store
    what it returns.  The next run, with src fixed, gives the right total."""
    store = storage_factory({"kind": "file", "options": {"path": str(tmp_path / "s")}})
    flag = tmp_path / "fail"
    flag.write_text("1")
    make, _ = _on(kind, request, "acc")

    @workflow
    def source(path):
        if os.path.exists(path):
            raise RuntimeError("source failed")
        return np.ones(3)

    def graph():
        acc = Accumulator().set_name("acc")
        acc.add(source(str(flag)).set_name("src")).set_name("add")
        return acc.bump(1).set_name("bump")

    wf = make(graph())
    wf.set_storage(store)
    with pytest.raises(Exception, match="source failed"):
        wf.run(return_results=True)
    actions = {e.node: e.action for e in wf.last_report.events}
    assert actions["src"] == "failed" and actions["add"] == actions["bump"] == "not run", actions
    flag.unlink()
    wf = make(graph())
    wf.set_storage(store)
    assert wf.run(return_results=True) == 4.0
