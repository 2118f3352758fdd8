"""Targeted compute, explain, honest reports and arguments in metadata (issue 8 items 4-7)."""

import os
import sys

import cloudpickle
import numpy as np
import pytest

import functionfuse
from functionfuse import GraphError, NodeExecutionError, compute, explain, workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.storage import FileStorage

cloudpickle.register_pickle_by_value(sys.modules[__name__])

RATE = 2


@workflow
def load(n):
    return list(range(n))


@workflow
def scale(xs, factor):
    return [x * factor * RATE for x in xs]


@workflow
def total(xs):
    return sum(xs)


@workflow
def fail(x):
    raise ValueError(f"bad value {x}")


@workflow
def interrupt(x):
    raise KeyboardInterrupt


@workflow
def fit(X, alpha=1.0, *, solver="lbfgs", weights=None):
    return float(alpha)


def graph():
    """load -> scale -> total, plus a sibling branch nobody asked for."""
    data = load(4).set_name("load")
    scaled = scale(data, 3).set_name("scale")
    result = total(scaled).set_name("total")
    sibling = total(load(100).set_name("other")).set_name("sibling")
    both = total([result, sibling]).set_name("both")  # downstream of total: not an ancestor
    return data, scaled, result, both


def _snapshot(path):
    out = {}
    for root, _dirs, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            out[p] = os.stat(p).st_mtime_ns
    return out


# -- compute -----------------------------------------------------------------------------


def test_compute_runs_only_ancestors(tmp_path):
    storage = FileStorage(tmp_path / "s")
    data, scaled, result, both = graph()
    assert compute(result, storage=storage, workflow_name="wf") == 36
    report = compute.last_report
    assert [e.node for e in report.events] == ["load", "scale", "total"]
    assert storage.list_tasks("wf") == ["load", "scale", "total"]

    # the compatible LocalWorkflow still runs everything below the roots
    wf = LocalWorkflow(data, workflow_name="wf")
    wf.set_storage(storage)
    wf.run()
    assert set(wf.last_report.computed) == {"other", "sibling", "both"}
    assert wf.last_report.by_node()["scale"].action == "skipped"  # stored by compute()


def test_compute_is_lazy_and_returns_lists(tmp_path):
    storage = FileStorage(tmp_path / "s")
    data, scaled, result, _ = graph()
    compute(result, storage=storage, workflow_name="wf")
    assert compute(scaled, result, storage=storage, workflow_name="wf") == [[0, 6, 12, 18], 36]
    acts = {e.node: e.action for e in compute.last_report.events}
    assert acts == {"load": "skipped", "scale": "read", "total": "read"}
    assert compute(result, storage=storage, workflow_name="wf", force="scale") == 36
    acts = {e.node: (e.action, e.reason) for e in compute.last_report.events}
    assert acts["scale"] == ("computed", "forced") and acts["total"] == ("computed", "upstream forced")
    assert acts["load"] == ("read", "cached")


def test_compute_without_storage_and_items():
    data = load(3)
    assert compute(data[1], scale(data, 2)[2]) == [1, 8]


def test_compute_arguments_are_checked():
    node = load(3)
    with pytest.raises(GraphError, match="workflow_name"):
        compute(node, storage=object())
    with pytest.raises(GraphError, match="executor must be None"):
        compute(node, executor="spark")
    with pytest.raises(GraphError, match="at least one node"):
        compute()
    with pytest.raises(GraphError, match="argument 0 .*is not a node"):
        compute(5)
    with pytest.raises(GraphError, match="executor must be None"):
        explain(node, executor=object())
    with pytest.raises(GraphError, match="workflow_name"):
        explain(node, storage=object())


def test_compute_on_dask_and_ray(tmp_path, dask_client, ray_cluster):
    storage = FileStorage(tmp_path / "s")
    for executor in (dask_client, "ray"):
        data, scaled, result, both = graph()
        name = f"wf-{'ray' if executor == 'ray' else 'dask'}"
        assert compute(result, storage=storage, workflow_name=name, executor=executor) == 36
        assert storage.list_tasks(name) == ["load", "scale", "total"]
        assert compute(scaled, result, storage=storage, workflow_name=name, executor=executor) == [
            [0, 6, 12, 18],
            36,
        ]
        assert not compute.last_report.computed


# -- explain -----------------------------------------------------------------------------


def test_explain_runs_and_writes_nothing_and_says_why(tmp_path, monkeypatch):
    storage = FileStorage(tmp_path / "s")
    data, scaled, result, _ = graph()
    plan = explain(result, storage=storage, workflow_name="wf")
    assert not os.path.exists(tmp_path / "s" / "wf")
    assert plan.to_compute == ["load", "scale", "total"]
    assert str(plan).splitlines() == [
        "workflow 'wf' would: 3 to compute",
        "  load: compute (new)",
        "  scale: compute (new)",
        "  total: compute (new)",
    ]
    compute(result, storage=storage, workflow_name="wf")
    before = _snapshot(tmp_path / "s")

    plan = explain(result, storage=storage, workflow_name="wf")
    assert {p.node: (p.action, p.reason) for p in plan.entries} == {
        "load": ("skip", "cached"),
        "scale": ("skip", "cached"),
        "total": ("read", "cached"),
    }

    monkeypatch.setitem(globals(), "RATE", 5)  # a global the node's code uses
    plan = explain(result, storage=storage, workflow_name="wf")
    assert {p.node: (p.action, p.reason) for p in plan.entries} == {
        "load": ("read", "cached"),
        "scale": ("compute", "code changed: global RATE"),
        "total": ("compute", "input changed: scale; may be cut off: depends on whether scale changes"),
    }
    plan = explain(total(scale(load(4).set_name("load"), 7).set_name("scale")).set_name("total"),
                   storage=storage, workflow_name="wf", force="load")
    assert plan.by_node()["load"].reason == "forced"
    assert plan.by_node()["scale"].reason == "upstream forced"
    assert _snapshot(tmp_path / "s") == before  # nothing written, nothing touched

    wf = LocalWorkflow(result, workflow_name="wf")
    wf.set_storage(storage)
    assert wf.explain().by_node()["scale"].action == "compute"
    assert _snapshot(tmp_path / "s") == before


def test_explain_names_changed_argument(tmp_path):
    storage = FileStorage(tmp_path / "s")
    compute(fit(load(2), alpha=0.5).set_name("fit"), storage=storage, workflow_name="wf")
    plan = explain(fit(load(2), alpha=0.7).set_name("fit"), storage=storage, workflow_name="wf")
    assert plan.by_node()["fit"].reason == "input changed: argument alpha"
    assert plan.by_node()["load_0000"].action == "read"


def test_explain_without_storage():
    plan = explain(total(load(3)))
    assert [(p.action, p.reason) for p in plan.entries] == [("compute", "no storage")] * 2


def test_workflow_explain_on_dask(tmp_path, dask_client):
    from functionfuse.backends.builtin.daskback import DaskWorkflow

    storage = FileStorage(tmp_path / "s")
    data, scaled, result, _ = graph()
    wf = DaskWorkflow(result, workflow_name="wf", client=dask_client)
    wf.set_storage(storage)
    wf.run()
    assert wf.explain().nodes("compute") == []
    assert set(wf.explain(force="total").nodes("compute")) == {"total", "both"}


# -- reports -------------------------------------------------------------------------------


def test_failure_report_failed_and_not_run(tmp_path):
    storage = FileStorage(tmp_path / "s")
    ok = load(3).set_name("ok")
    bad = fail(ok).set_name("bad")
    after = total(bad).set_name("after")
    side = total(ok).set_name("side")
    wf = LocalWorkflow(after, side, workflow_name="wf")
    wf.set_storage(storage)
    with pytest.raises(NodeExecutionError):
        wf.run()
    acts = {e.node: (e.action, e.reason) for e in wf.last_report.events}
    assert acts["ok"] == ("computed", "new")
    assert acts["bad"] == ("failed", "new")
    assert acts["after"] == ("not run", "new")
    assert wf.last_report.failed == ["bad"] and "after" in wf.last_report.not_run
    assert wf.last_report.by_node()["bad"].seconds > 0
    text = str(wf.last_report)
    assert "  bad: failed (new) in " in text and "time in nodes: computed" in text
    assert "; run " in text.splitlines()[-1]


def test_interrupted_run_reports_not_run(tmp_path):
    storage = FileStorage(tmp_path / "s")
    first = load(3).set_name("first")
    stop = interrupt(first).set_name("stop")
    wf = LocalWorkflow(total(stop).set_name("last"), workflow_name="wf")
    wf.set_storage(storage)
    with pytest.raises(KeyboardInterrupt):
        wf.run()
    acts = {e.node: (e.action, e.reason) for e in wf.last_report.events}
    assert acts == {
        "first": ("computed", "new"),
        "stop": ("not run", "interrupted"),
        "last": ("not run", "new"),
    }
    # without storage too
    wf = LocalWorkflow(total(interrupt(load(2))), workflow_name="w")
    with pytest.raises(KeyboardInterrupt):
        wf.run()
    assert [(e.action, e.reason) for e in wf.last_report.events] == [
        ("computed", "no storage"), ("not run", "interrupted"), ("not run", "no storage")
    ]


def test_report_durations_and_totals(tmp_path):
    storage = FileStorage(tmp_path / "s")
    wf = LocalWorkflow(total(load(1000)), workflow_name="wf")
    wf.set_storage(storage)
    wf.run()
    report = wf.last_report
    assert all(e.seconds > 0 for e in report.events)
    assert report.seconds >= sum(e.seconds for e in report.events)
    lines = str(report).splitlines()
    assert lines[0] == "workflow 'wf': 2 computed"
    assert lines[1].startswith("  load_0000: computed (new) in ")
    assert lines[-1].startswith("  time in nodes: computed ")


# -- arguments in metadata ----------------------------------------------------------------


def test_metadata_records_arguments_by_parameter_name(tmp_path):
    storage = FileStorage(tmp_path / "s")
    weights = np.arange(3000, dtype="float64").reshape(1000, 3)
    data = load(5).set_name("data")
    node = fit(data[1:3], 0.5, solver="saga", weights=weights).set_name("model")
    compute(node, storage=storage, workflow_name="wf")
    args = storage.read_task_meta("wf", "model")["arguments"]
    assert args["X"] == {"node": "data", "item": [{"type": "slice"}]} or args["X"]["node"] == "data"
    assert args["alpha"] == 0.5 and args["solver"] == "saga"
    assert args["weights"]["type"] == "numpy.ndarray"
    assert args["weights"]["shape"] == [1000, 3] and args["weights"]["dtype"] == "float64"
    assert len(args["weights"]["token"]) == 16
    assert storage.read_task_meta("wf", "data")["arguments"] == {"n": 5}


def test_metadata_arguments_of_estimators_and_classes(tmp_path):
    from sklearn.gaussian_process.kernels import RBF
    from sklearn.svm import SVC

    @workflow
    def train(cls, params, kernel):
        return 1

    storage = FileStorage(tmp_path / "s")
    compute(train(SVC, {"C": 0.025}, 1.0 * RBF(1.0)).set_name("t"), storage=storage, workflow_name="wf")
    args = storage.read_task_meta("wf", "t")["arguments"]
    assert args["cls"] == {"class": "sklearn.svm._classes.SVC"}
    assert args["params"] == {"C": 0.025}
    assert args["kernel"]["type"].endswith("Product")
    assert args["kernel"]["params"]["k2"]["params"]["length_scale"] == 1.0


def test_public_names():
    assert functionfuse.compute is compute and functionfuse.explain is explain


def test_unhashable_warning_points_at_the_users_call(tmp_path):
    import threading
    import warnings

    from functionfuse import CacheWarning

    class Holder:
        def __init__(self):
            self.lock = threading.Lock()

    storage = FileStorage(tmp_path / "s")
    node = total([1, fit(Holder()).set_name("f")])
    for call in (
        lambda: compute(node, storage=storage, workflow_name="wf"),
        lambda: _run_local(node, storage),
    ):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call()
        [warning] = [w for w in caught if w.category is CacheWarning]
        assert warning.filename == __file__, warning.filename
        assert "node 'f'" in str(warning.message)


def _run_local(node, storage):
    wf = LocalWorkflow(node, workflow_name="wf")
    wf.set_storage(storage)
    return wf.run()


def test_compute_ignores_name_clashes_outside_what_it_runs():
    data = load(3).set_name("data")
    first = total(data).set_name("result")
    total(scale(data, 2)).set_name("result")  # a re-run cell made a second 'result' on 'data'
    with pytest.raises(GraphError, match="two nodes in one workflow are named 'result'"):
        LocalWorkflow(first, workflow_name="wf")  # compatible semantics: the whole graph
    assert compute(first) == 3


def test_bad_subscript_names_the_node_and_item():
    @workflow
    def pair(x):
        return (x, x)

    with pytest.raises(GraphError, match=r"'pair'.*\[5\].*no such item \(IndexError.*it is a tuple"):
        compute(total([pair(1).set_name("pair")[5]]))
