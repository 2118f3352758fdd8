import pytest

from functionfuse import GraphError, workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.storage import FsspecStorage


@workflow
def inc(x):
    return x + 1


@workflow
def add(a, b):
    return a + b


def diamond():
    a = inc(0).set_name("a")
    b = inc(a).set_name("b")
    c = add(a, 10).set_name("c")
    d = add(b, c).set_name("d")
    return a, b, c, d


def test_traversal_is_dependency_and_creation_order():
    a, b, c, d = diamond()
    wf = LocalWorkflow(d, workflow_name="w")
    assert [n for n, _ in wf.graph_traversal()] == ["a", "b", "c", "d"]
    assert [node for _, node in wf.graph_traversal()] == [a, b, c, d]


def test_find_nodes_regex_full_match():
    a, b, c, d = diamond()
    wf = LocalWorkflow(d, workflow_name="w")
    assert wf.find_nodes("[bc]") == [b, c]
    assert wf.find_nodes("a|d") == [a, d]
    assert wf.find_nodes("b.") == []
    assert wf.find_nodes() == [a, b, c, d]


def test_results_in_the_order_given():
    a, b, c, d = diamond()
    assert LocalWorkflow(d, a, c, workflow_name="w").run() == [13, 1, 11]
    assert LocalWorkflow(d, workflow_name="w").run() == 13


def test_replace_func_changes_result_and_key(storage):
    a, b, c, d = diamond()
    wf = LocalWorkflow(d, workflow_name="w")
    wf.set_storage(storage)
    assert wf.run() == 13
    wf.replace_func(b, lambda x: x + 100)
    assert wf.run() == 112
    events = wf.last_report.by_node()
    assert (events["b"].action, events["b"].reason) == ("computed", "code changed")
    assert (events["c"].action, events["c"].reason) == ("read", "cached")  # d needs it
    assert (events["d"].action, events["d"].reason) == ("computed", "input changed")
    with pytest.raises(GraphError, match="callable"):
        wf.replace_func(b, 42)


def test_log_nodes_returns_matches():
    a, b, c, d = diamond()
    wf = LocalWorkflow(d, workflow_name="w")
    assert wf.log_nodes("[ab]") == [a, b]


def test_set_storage_rejects_non_storage():
    wf = LocalWorkflow(inc(1), workflow_name="w")
    with pytest.raises(GraphError, match="storage_factory"):
        wf.set_storage("/tmp/somewhere")


def test_runs_on_any_fsspec_storage():
    storage = FsspecStorage("memory://cache")
    for expected in (("computed",), ("read", "skipped")):
        wf = LocalWorkflow(diamond()[3], workflow_name="w")
        wf.set_storage(storage)
        assert wf.run() == 13
        assert {e.action for e in wf.last_report.events} == set(expected)


def test_report_summary_and_str(storage):
    wf = LocalWorkflow(diamond()[3], workflow_name="w")
    wf.set_storage(storage)
    wf.run()
    assert wf.report.summary() == "workflow 'w': 4 computed"
    assert "d: computed (new)" in str(wf.report)
    assert wf.report.computed == ["a", "b", "c", "d"]


def test_same_graph_many_runs_and_workflows(storage):
    a, b, c, d = diamond()
    w1 = LocalWorkflow(d, workflow_name="one")
    w2 = LocalWorkflow(b, workflow_name="two")
    w2.set_storage(storage)
    for _ in range(3):
        assert w1.run() == 13
        assert w2.run() == 2
    assert storage.list_tasks("two") == ["a", "b", "c", "d"]
