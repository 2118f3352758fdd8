import textwrap

import pytest

from functionfuse import GraphError, workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from helpers import run_script


@workflow
def add(a, b):
    return a + b


@workflow
def pair(x):
    return (x, x * 10)


def build():
    a = add(1, 2)
    b = add(a, 3)
    c = add(b, a)
    return c


def names(wf):
    return [n for n, _ in wf.graph_traversal()]


def test_default_names_numbered_per_qualname():
    wf = LocalWorkflow(build(), workflow_name="w")
    assert names(wf) == ["add_0000", "add_0001", "add_0002"]


def test_default_names_stable_when_rebuilt_in_same_process():
    first = names(LocalWorkflow(build(), workflow_name="w"))
    second = names(LocalWorkflow(build(), workflow_name="w"))
    assert first == second == ["add_0000", "add_0001", "add_0002"]


def test_default_names_stable_in_new_process(tmp_path):
    script = tmp_path / "g.py"
    script.write_text(
        textwrap.dedent(
            """
            from functionfuse import workflow
            from functionfuse.backends.builtin.localback import LocalWorkflow

            @workflow
            def f(x):
                return x

            @workflow
            def g(x, y):
                return x

            unrelated = f(0)  # another graph: does not shift numbering
            a = f(1); b = f(a); c = g(a, b)
            print(",".join(n for n, _ in LocalWorkflow(c, workflow_name="w").graph_traversal()))
            """
        )
    )
    out = [run_script(script) for _ in range(2)]
    assert out[0] == out[1] == "f_0000,f_0001,g_0000\n"


def test_set_name_and_get_name_chainable():
    node = add(1, 2).set_name("three")
    assert node.get_name() == "three"
    assert add(1, 1).get_name() == "add_0000"


def test_duplicate_names_rejected_naming_both():
    a = add(1, 2).set_name("same")
    b = add(a, 3).set_name("same")
    with pytest.raises(GraphError) as info:
        LocalWorkflow(b, workflow_name="w")
    msg = str(info.value)
    assert "'same'" in msg and "#%d" % a.seq in msg and "#%d" % b.seq in msg


def test_subscript_and_nested_nodes():
    p = pair(2)
    total = add(p[0], p[1])
    nested = add([p[0], {"k": p}], [(total,)])
    wf = LocalWorkflow(nested, total, p[1], workflow_name="w")
    assert wf.run() == [[2, {"k": (2, 20)}, (22,)], 22, 20]


def test_nested_subscript():
    p = pair(3)
    wf = LocalWorkflow(p[1], workflow_name="w")
    assert wf.run() == 30


def test_passing_root_runs_whole_pipeline():
    a = add(1, 1)
    b = add(a, 1)
    c = add(b, 1).set_name("leaf")
    wf = LocalWorkflow(a, workflow_name="w")
    assert [n for n, _ in wf.graph_traversal()] == ["add_0000", "add_0001", "leaf"]
    assert wf.run() == 2


class Base:
    def inc(self, by):
        self.value += by
        return self.value


@workflow
class Counter(Base):
    def __init__(self, start):
        self.value = start

    def pair(self):
        return (self.value, -self.value)


@workflow
class NoInit(Base):
    value = 100


def test_class_nodes_run_in_call_order_with_inherited_methods():
    c = Counter(1).set_name("counter")
    a = c.inc(1)
    b = c.inc(a)
    p = c.pair()
    wf = LocalWorkflow(a, b, p[1], workflow_name="w")
    assert wf.run() == [2, 4, -4]
    assert names(wf) == ["counter", "Base.inc_0000", "Base.inc_0001", "Counter.pair_0000"]


def test_class_without_init():
    n = NoInit()
    r = n.inc(5)
    assert LocalWorkflow(r, workflow_name="w").run() == 105


def test_unknown_method_is_attribute_error():
    with pytest.raises(AttributeError, match="no method 'nope'"):
        Counter(1).nope()


def test_non_decorated_objects_rejected():
    def plain(x):
        return x

    with pytest.raises(GraphError, match="plain callable 'test_non_decorated_objects_rejected.<locals>.plain'"):
        LocalWorkflow(plain, workflow_name="w")
    with pytest.raises(GraphError, match="decorated function 'add'.*call it"):
        LocalWorkflow(add, workflow_name="w")
    with pytest.raises(GraphError, match="argument 0 .*int.*not a node"):
        LocalWorkflow(3, workflow_name="w")
    with pytest.raises(GraphError, match="instance of workflow class"):
        LocalWorkflow(Counter(1), workflow_name="w")
    with pytest.raises(GraphError, match="instance of the workflow class"):
        add(Counter(1), 1)
    with pytest.raises(GraphError, match="workflow_name"):
        LocalWorkflow(add(1, 2), workflow_name="")


def test_node_from_another_graph_rejected():
    mine = add(1, 2)
    other = add(5, 5)
    wf = LocalWorkflow(mine, workflow_name="w")
    with pytest.raises(GraphError, match="not part of workflow 'w'.*another graph"):
        wf.replace_func(other, lambda a, b: 0)


def test_graph_reusable_by_several_workflows_and_runs():
    a = add(1, 2)
    b = add(a, 10)
    wf1 = LocalWorkflow(b, workflow_name="w1")
    wf2 = LocalWorkflow(a, workflow_name="w2")
    wf2.replace_func(a, lambda x, y: x * y)
    assert wf1.run() == 13
    assert wf2.run() == 2
    assert wf1.run() == 13  # replace_func is per workflow


def test_nodes_in_named_tuples_ordered_dicts_and_sets():
    from collections import OrderedDict, namedtuple

    P = namedtuple("P", "a b")
    one = add(0, 1)

    @workflow
    def show(x):
        return x

    out = LocalWorkflow(show(P(one, 2)), show(OrderedDict(k=one)), show({one, 5}), workflow_name="w").run()
    assert out == [P(1, 2), OrderedDict(k=1), {1, 5}]
    assert type(out[0]) is P and type(out[1]) is OrderedDict


def test_node_as_dict_key_or_hidden_in_object_is_an_error(storage):
    one = add(0, 1)
    with pytest.raises(GraphError, match="dict key"):
        add({one: 1}, 2)

    class Box:
        def __init__(self, v):
            self.v = v

        def __functionfuse_token__(self):
            return self.v

    node = add(Box(one), 1).set_name("boxed")
    wf = LocalWorkflow(node, workflow_name="w")
    wf.set_storage(storage)
    with pytest.raises(GraphError, match="'boxed' has node 'add_0000'.*hidden inside an argument"):
        wf.run()


def test_separate_graphs_in_one_workflow_are_numbered_together():
    wf = LocalWorkflow(add(1, 1), add(2, 2), workflow_name="w")
    assert names(wf) == ["add_0000", "add_0001"]
    assert wf.run() == [2, 4]


def test_building_a_workflow_never_renames_another_workflows_nodes():
    a = add(1, 1)
    b = add(2, 2)
    wf1 = LocalWorkflow(b, workflow_name="one")
    assert names(wf1) == ["add_0000"]
    wf2 = LocalWorkflow(a, b, workflow_name="two")
    assert names(wf2) == ["add_0000", "add_0001"]
    assert names(wf1) == ["add_0000"]


def test_run_set_includes_other_parents_of_nodes_below_the_roots():
    from functionfuse.backends.builtin.localback import LocalWorkflow

    @workflow
    def f(x):
        return x

    @workflow
    def h(a, b):
        return a + b

    @workflow
    class Tally:
        def __init__(self):
            self.total = 0

        def add(self, x):
            self.total += x
            return self.total

    a = f(1).set_name("a")
    b = f(2).set_name("b")
    c = h(a, b).set_name("c")
    other = f(b).set_name("other")  # below b only: not needed, not run
    tally = Tally().set_name("tally")
    added = tally.add(a).set_name("added")
    wf = LocalWorkflow(a, workflow_name="w")
    assert [n for n, _ in wf.graph_traversal()] == ["a", "b", "c", "tally", "added"]
    assert wf.run() == 1
    assert other not in wf.nodes


@workflow
def many(*xs, **kw):
    return sum(xs) + sum(kw.values())


@pytest.mark.parametrize("shape", ["f(a)", "f(a, b)", "f(a, a)", "f(a, b, a)", "f(9 nodes)", "f(a, 1)",
                                   "f(a, x=b)", "f(a[0], b)", "f(other graph, b)", "f(a, c, b)"])
def test_every_argument_shape_records_parents_slots_and_components(shape):
    """The shapes graph building takes a shortcut for (every argument a node) and the
    general path agree: distinct parents in argument order, each parent's children,
    one component for everything connected, and the values the run passes."""
    a, b = add(1, 2), add(10, 20)  # 3, 30 (separate roots: separate graphs until joined)
    c = add(a, 1)  # 4
    other = add(100, 200)  # 300
    args, kwargs, parents, value = {
        "f(a)": ((a,), {}, [a], 3),
        "f(a, b)": ((a, b), {}, [a, b], 33),
        "f(a, a)": ((a, a), {}, [a], 6),
        "f(a, b, a)": ((a, b, a), {}, [a, b], 36),
        "f(9 nodes)": ((a, b) * 4 + (c,), {}, [a, b, c], 136),
        "f(a, 1)": ((a, 1), {}, [a], 4),
        "f(a, x=b)": ((a,), {"x": b}, [a, b], 33),
        "f(a[0], b)": ((pair(a)[0], b), {}, None, 33),
        "f(other graph, b)": ((other, b), {}, [other, b], 330),
        "f(a, c, b)": ((a, c, b), {}, [a, c, b], 37),
    }[shape]
    node = many(*args, **kwargs)
    if parents is None:  # a node[i] argument: its node is the parent
        parents = [args[0].node, b]
    assert list(node.deps) == parents == node.parents
    for parent in parents:
        assert parent.children[-1] is node and parent.component is node.component
    assert node in node.component.nodes
    positions = [i for i, v in enumerate(args) if not isinstance(v, int)] + list(kwargs)
    assert list(node.ref_slots) == positions
    assert LocalWorkflow(node, workflow_name="shapes").run() == value


def test_a_class_built_from_nodes_of_two_graphs_joins_them_and_makes_them_stateful():
    @workflow
    class Acc:
        def __init__(self, a, b):
            self.total = a + b

        def add(self, x):
            self.total += x
            return self.total

    a, b = add(1, 2), add(10, 20)  # two graphs until the instance joins them
    acc = Acc(a, b)
    out = acc.add(a)
    init = acc.node
    assert list(init.deps) == [a, b] and a.component is b.component is init.component is out.component
    assert init.component.stateful and a.children == [init, out] and b.children == [init]
    assert LocalWorkflow(out, workflow_name="acc").run() == 36


def test_workflow_roots_are_its_nodes_without_parents():
    """Roots have neither value parents nor an earlier call on their instance."""
    @workflow
    class Counter:
        def __init__(self):
            self.n = 0

        def bump(self):
            self.n += 1
            return self.n

    a, b = add(1, 2), add(10, 20)
    counter = Counter()
    bumped = counter.bump()  # no arguments, but it runs after the instance is made
    tally = add(add(add(a, b), 1), bumped)
    wf = LocalWorkflow(tally, workflow_name="roots")
    assert wf.roots == [a, b, counter.node] and wf.roots is wf.roots
    assert wf.run() == 35
