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
    assert (events["b"].action, events["b"].reason) == ("computed", "code changed: the function")
    assert (events["c"].action, events["c"].reason) == ("read", "cached")  # d needs it
    assert (events["d"].action, events["d"].reason) == ("computed", "input changed: b")
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


# -- runs without storage (the plain-function path, no plan) ----------------------


class Big:
    """A value whose lifetime a weak reference can follow."""

    def __init__(self, n):
        self.n = n


@workflow
def big(n):
    return Big(n)


@workflow
def grow(b):
    return Big(b.n + 1)


@workflow
def alive(refs, b):
    return [r() is not None for r in refs]


def test_without_storage_values_are_dropped_after_their_last_consumer():
    import weakref

    refs = []

    @workflow
    def keep_ref(b):
        refs.append(weakref.ref(b))
        return Big(b.n + 1)

    @workflow
    def check(b):
        return [r() is not None for r in refs]

    first = big(0)
    second = keep_ref(first)
    third = keep_ref(second)
    wf = LocalWorkflow(check(third), workflow_name="w")
    late = keep_ref(first)  # made after the workflow: not part of its run
    # ``first`` was dropped once ``second`` ran, ``second`` once ``third`` ran.
    assert wf.run() == [False, False]
    assert LocalWorkflow(late, workflow_name="w").run().n == 1


def test_without_storage_returned_values_are_kept_and_items_extracted():
    @workflow
    def pair(x):
        return (x, {"k": [x, x + 1]})

    @workflow
    def combine(a, *rest, scale=1, extra=None):
        return (a + sum(rest) + sum(extra or [])) * scale

    p = pair(1)
    a = inc(p[0])
    b = combine(a, p[1]["k"][1], scale=inc(1), extra=[p[0], inc(a)])
    wf = LocalWorkflow(b, a, p[1], workflow_name="w")
    assert wf.run() == [(2 + 2 + 1 + 3) * 2, 2, {"k": [1, 2]}]
    assert [name.rsplit(".", 1)[-1] for name in wf.last_report.computed] == [
        "pair_0000", "inc_0000", "inc_0001", "inc_0002", "combine_0000"
    ]
    assert {e.reason for e in wf.last_report.events} == {"no storage"}


def test_without_storage_failure_names_the_node_and_reports_progress():
    from functionfuse import NodeExecutionError

    @workflow
    def boom(x):
        raise ValueError("no")

    wf = LocalWorkflow(inc(boom(inc(1).set_name("first")).set_name("bad")), workflow_name="w")
    with pytest.raises(NodeExecutionError, match="'bad' failed: ValueError: no") as info:
        wf.run()
    assert info.value.node == "bad"
    assert [(e.node, e.action) for e in wf.last_report.events] == [
        ("first", "computed"), ("bad", "failed"), ("inc_0001", "not run")
    ]


def test_without_storage_replace_func_and_class_nodes():
    a, b, c, d = diamond()
    wf = LocalWorkflow(d, workflow_name="w")
    wf.replace_func(b, lambda x: x + 100)
    assert wf.run() == 112

    @workflow
    class Counter:
        def __init__(self, start):
            self.n = start

        def bump(self, by):
            self.n += by
            return self.n

    counter = Counter(inc(0))
    wf = LocalWorkflow(add(counter.bump(1), counter.bump(inc(1))), workflow_name="w")
    assert wf.run() == 2 + 4
    assert len(wf.last_report.computed) == 6


def test_names_checked_lazily_only_without_explicit_names():
    x = inc(0)
    wf = LocalWorkflow(inc(x), workflow_name="w")
    assert [name for name, _ in wf.graph_traversal()] == ["inc_0000", "inc_0001"]
    y = inc(inc(0).set_name("inc_0001"))
    with pytest.raises(GraphError, match="two nodes in one workflow"):
        LocalWorkflow(y, workflow_name="w")


def test_run_set_of_a_component_with_several_roots():
    r1, r2 = inc(0).set_name("r1"), inc(10).set_name("r2")
    both = add(r1, r2).set_name("both")
    only2 = inc(r2).set_name("only2")
    # Leaves reaching both roots: the whole component.
    assert [n for n, _ in LocalWorkflow(both, workflow_name="w").graph_traversal()] == ["r1", "r2", "both", "only2"]
    # Reaching r1 only: downstream of r1, plus r2 that `both` needs (not only2).
    assert [n for n, _ in LocalWorkflow(r1, workflow_name="w").graph_traversal()] == ["r1", "r2", "both"]
    assert LocalWorkflow(r1, workflow_name="w").run() == 1
    assert LocalWorkflow(only2, both, workflow_name="w").run() == [12, 12]


def test_without_storage_each_node_is_timed_by_its_own_work():
    """One clock reading per node: a slow node's time is its own, not the next node's,
    and a node that fails is timed too."""
    import time

    @workflow
    def slow(x):
        time.sleep(0.05)
        return x + 1

    @workflow
    def fail(x):
        time.sleep(0.03)
        raise ValueError("boom")

    first = inc(0)
    slow_node = slow(first)
    quick_after = inc(slow_node)
    wf = LocalWorkflow(quick_after, workflow_name="w")
    assert wf.run() == 3
    seconds = {e.node: e.seconds for e in wf.last_report.events}
    assert seconds[slow_node.get_name()] >= 0.05
    assert seconds[first.get_name()] < 0.02 and seconds[quick_after.get_name()] < 0.02
    assert all(e.action == "computed" for e in wf.last_report.events)

    slow_node = slow(inc(0))
    failing = fail(slow_node)
    wf = LocalWorkflow(failing, workflow_name="w")
    with pytest.raises(Exception, match="boom"):
        wf.run()
    events = {e.node: e for e in wf.last_report.events}
    assert events[failing.get_name()].action == "failed" and 0.03 <= events[failing.get_name()].seconds < 1
    assert events[slow_node.get_name()].seconds >= 0.05
