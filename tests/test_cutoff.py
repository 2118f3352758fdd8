"""Early cutoff (SPEC section 2, issue 13): a recomputed node that gives the same result
does not invalidate its consumers, on every executor and storage.

Executors: the local one (sequential and on a thread pool), Dask (a LocalCluster with
worker processes) and Ray (a local instance).  Storages: a folder, and S3 on moto's
HTTP server.  A code change is a bumped ``version=``: the key changes, the result may
not.
"""

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


@pytest.fixture(params=["local", "pool", "dask", "ray"])
def executor(request):
    """``run(leaf, storage, **options) -> (result, {node: (action, reason)})`` on one executor."""
    kind = request.param
    if kind == "dask":
        client = request.getfixturevalue("dask_client")
        make = lambda leaf: DaskWorkflow(leaf, workflow_name="ml", client=client)  # noqa: E731
        extra: dict = {}
    elif kind == "ray":
        request.getfixturevalue("ray_cluster")
        make = lambda leaf: RayWorkflow(leaf, workflow_name="ml")  # noqa: E731
        extra = {"return_results": True}
    else:
        make = lambda leaf: LocalWorkflow(leaf, workflow_name="ml")  # noqa: E731
        extra = {"max_workers": 2} if kind == "pool" else {}

    def run(leaf, storage, **options):
        wf = make(leaf)
        wf.set_storage(storage)
        result = wf.run(**extra, **options)
        run.last = wf.last_report
        return result, {e.node: (e.action, e.reason) for e in wf.last_report.events}

    run.kind = kind
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
    # Locally what nothing needs is not even loaded; a worker loads it for its consumers.
    expected = "skipped" if executor.kind in ("local", "pool") else "read"
    assert events["clean"][0] == events["train"][0] == expected
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
    assert after["recipe"]["digest"] == before["recipe"]["digest"]
    assert after["inputs"]["make"] != before["inputs"]["make"]
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


def test_a_damaged_reused_result_is_computed_instead(tmp_path):
    store = storage_factory({"kind": "file", "options": {"path": str(tmp_path)}})
    wf = LocalWorkflow(arrays("1", 100), workflow_name="arr")
    wf.set_storage(store)
    wf.run()
    part = store.read_task_meta("arr", "norm")["parts"][0]["object"]
    path = next(p for p in (tmp_path / "objects").rglob(part))
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))

    wf = LocalWorkflow(arrays("2", 100), workflow_name="arr")
    wf.set_storage(store)
    with pytest.warns(CacheWarning, match="norm"):
        np.testing.assert_array_equal(wf.run(), np.arange(100) / 99)
    assert wf.last_report.by_node()["norm"].action == "computed"
