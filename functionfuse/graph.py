"""Nodes, edges, naming and traversal of a functionfuse graph.

A node is created by calling a decorated function (:class:`FunctionNode`),
by instantiating a decorated class (:class:`ClassInitNode`) or by calling a
method on such an instance (:class:`ClassCallNode`).  Nothing runs at build
time: a node only records its callable, its arguments, and its parents.

Invariants
----------
* **Creation order is a topological order.**  A node can only take nodes that
  already exist as arguments, and a method call comes after the previous call on
  the same instance, so sorting by creation sequence gives dependency order.
  Traversal is therefore deterministic and costs no graph search.
* **Names are a function of the graph.**  Default names are
  ``<qualname>_<NNNN>``, numbered per qualname inside a connected component in
  creation order.  Building the same graph again (a new process, or a notebook
  cell re-run) gives the same names, unlike a process-wide counter.
* **Graphs are immutable once built** (except for names): running a workflow
  never stores results on nodes, so a graph can be run many times and by
  several workflow objects.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Iterable, Iterator
from typing import Any

from .errors import GraphError

__all__ = [
    "BaseNode",
    "FunctionNode",
    "ClassInitNode",
    "ClassCallNode",
    "NodeItem",
    "Instance",
    "collect_run_set",
    "collect_ancestors",
    "as_leaf",
    "describe",
]

_SEQ = itertools.count()


class _Epoch:
    """Bumped whenever an existing node's name may change (set_name, merges),
    so workflows can cache their name list."""

    value = 0


def names_epoch() -> int:
    """The current naming epoch (see :class:`_Epoch`)."""
    return _Epoch.value


class _Component:
    """The connected component a node belongs to; owns default naming.

    It also counts what lets a workflow skip work: its ``roots`` (nodes with
    no parent: when a workflow's leaves reach them all, its run set is the
    whole component), its nodes with an ``explicit`` name (without any,
    default names cannot clash) and whether it holds ``stateful`` (class) nodes.
    """

    __slots__ = ("nodes", "named", "roots", "explicit", "stateful")

    def __init__(self) -> None:
        self.nodes: list[BaseNode] = []
        self.named = False
        self.roots = 1  # a component is created for a root
        self.explicit = 0
        self.stateful = False

    def assign_default_names(self) -> None:
        counters: dict[str, int] = {}
        suffixes = _suffixes(len(self.nodes))
        for node in self.nodes:
            q = node.qualname
            i = counters.get(q, 0)
            counters[q] = i + 1
            node._default_name = q + suffixes[i] if i < _MAX_SUFFIXES else f"{q}_{i:04d}"
        self.named = True


_SUFFIXES: list[str] = []
_MAX_SUFFIXES = 100_000


def _suffixes(count: int) -> list[str]:
    """``["_0000", "_0001", ...]`` with at least ``count`` items (up to a cap):
    concatenating beats formatting the number for every node."""
    have = len(_SUFFIXES)
    if have < count and have < _MAX_SUFFIXES:
        _SUFFIXES.extend(f"_{i:04d}" for i in range(have, min(max(count, 2 * have), _MAX_SUFFIXES)))
    return _SUFFIXES


def _merge(components: list[_Component]) -> _Component:
    """Merge components into the largest one, keeping creation order."""
    target = max(components, key=lambda c: len(c.nodes))
    others = [c for c in components if c is not target]
    if others:
        for comp in others:
            for node in comp.nodes:
                node.component = target
            target.nodes.extend(comp.nodes)
            target.roots += comp.roots
            target.explicit += comp.explicit
            target.stateful = target.stateful or comp.stateful
        target.nodes.sort(key=lambda n: n.seq)
        target.named = False
        _Epoch.value += 1
    return target


def _attach(node: BaseNode, parents: Any) -> _Component:
    """Make ``node`` a child of each of ``parents`` (distinct); returns their component,
    merged into one when they lie in several."""
    comp = parents[0].component
    merge = False
    for p in parents:
        p.children.append(node)
        if p.component is not comp:
            merge = True
    if not merge:
        return comp
    return _merge(list({id(p.component): p.component for p in parents}.values()))


def _is_ref(value: Any) -> bool:
    return isinstance(value, (BaseNode, NodeItem))


_CONTAINERS = (list, tuple, dict, set, frozenset)


def _contains_ref(value: Any) -> bool:
    """Whether a container argument holds nodes (searched recursively).

    Lists, tuples (named tuples too), dicts (and subclasses such as
    OrderedDict) and sets are searched; a node used as a dict key is an error.
    """
    if isinstance(value, dict):
        for k in value:
            if _is_ref(k):
                raise GraphError(f"a node cannot be a dict key ({k!r}); use it as a value instead")
        return any(_is_ref(v) or _contains_ref(v) for v in value.values())
    if isinstance(value, _CONTAINERS):
        return any(_is_ref(v) or _contains_ref(v) for v in value)
    if isinstance(value, Instance):
        raise GraphError(
            f"an instance of the workflow class {value._init.qualname!r} was passed as an "
            "argument; pass the result of one of its method calls instead"
        )
    return False


def _refs_in(value: Any, out: list[BaseNode]) -> None:
    if isinstance(value, BaseNode):
        out.append(value)
    elif isinstance(value, NodeItem):
        out.append(value.node)
    elif isinstance(value, dict):
        for v in value.values():
            _refs_in(v, out)
    elif isinstance(value, _CONTAINERS):
        for v in value:
            _refs_in(v, out)


class BaseNode:
    """A vertex of the graph.  Subclasses define what runs.

    ``args``/``kwargs`` are the call's arguments as given; ``ref_slots`` the
    positions (ints) and keywords (strs) among them that hold a node or a
    ``node[i]``; ``nested`` those holding containers with nodes inside;
    ``deps`` the distinct parents (a read-only sequence: for ``f(node)`` it is
    ``args`` itself); ``children`` the nodes made from this one, in creation order.
    """

    __slots__ = (
        "qualname",
        "seq",
        "args",
        "kwargs",
        "deps",
        "after",
        "children",
        "component",
        "ref_slots",
        "nested",
        "_name",
        "_default_name",
        "__weakref__",
    )

    def __init__(self, qualname: str, args: tuple, kwargs: dict, after: BaseNode | None = None):
        self.qualname = qualname
        self.seq = next(_SEQ)
        self.args = args
        self.kwargs = kwargs
        self.after = after
        self.children: list[BaseNode] = []
        self._name: str | None = None
        self._default_name: str | None = None
        if len(args) == 1 and not kwargs and after is None and type(args[0]) is FunctionNode:
            # The commonest node, f(previous_node): what the general path below
            # does for it, without its loop (a third of the cost of building).
            # No allocation beyond the node and its children list: the arguments
            # tuple is the parents' (read-only) sequence, and the slot is shared.
            parent = args[0]
            self.ref_slots = _FIRST_SLOT
            self.nested = _NO_NESTED
            self.deps = args
            parent.children.append(self)
            comp = parent.component
            comp.nodes.append(self)
            comp.named = False
            self.component = comp
            return
        if not kwargs and after is None and 1 < len(args) < len(_SLOTS_OF) and type(args[-1]) is FunctionNode:
            for a in args:
                if type(a) is not FunctionNode:
                    break
            else:  # f(a, b, ...), every argument a node: the same, for several parents
                self.ref_slots = _SLOTS_OF[len(args)]
                self.nested = _NO_NESTED
                deps = args if len(args) == 2 and args[0] is not args[1] else tuple(dict.fromkeys(args))
                self.deps = deps
                comp = _attach(self, deps)
                comp.nodes.append(self)
                comp.named = False
                self.component = comp
                return
        slots: list[int | str] = []
        ref: Any = None  # the last node argument found (the only one, when one)
        nested: list[int | str] = _NO_NESTED
        i = 0
        for a in args:
            cls = type(a)
            if cls in _ATOMS:
                pass
            elif cls is FunctionNode or isinstance(a, _REFS):
                slots.append(i)
                ref = a
            elif (cls in _SCANNED or isinstance(a, _NESTING)) and _contains_ref(a):
                nested = [*nested, i]
            i += 1
        if kwargs:
            for k, a in kwargs.items():
                cls = type(a)
                if cls in _ATOMS:
                    pass
                elif isinstance(a, _REFS):
                    slots.append(k)
                    ref = a
                elif (cls in _SCANNED or isinstance(a, _NESTING)) and _contains_ref(a):
                    nested = [*nested, k]
        self.ref_slots = slots if slots else _NO_SLOTS
        self.nested = nested
        if not (slots or nested or after is not None):
            self.deps = _NO_DEPS
            comp = _Component()
        elif len(slots) == 1 and not nested and after is None:
            parent = ref.node if type(ref) is NodeItem else ref
            self.deps = (parent,)
            parent.children.append(self)
            comp = parent.component
        elif not nested and after is None:  # several parents passed directly: _link, inlined
            deps: list[BaseNode] = []
            for where in slots:
                ref = args[where] if type(where) is int else kwargs[where]
                parent = ref.node if type(ref) is NodeItem else ref
                if parent not in deps:  # few parents: a linear scan beats a set
                    deps.append(parent)
            self.deps = deps
            comp = _attach(self, deps)
        else:
            self.deps = []
            comp = self._link(args, kwargs, after)
        comp.nodes.append(self)
        comp.named = False
        self.component = comp

    def _link(self, args: tuple, kwargs: dict, after: BaseNode | None) -> _Component:
        """Record parents (deduplicated) and merge their components."""
        parents: list[BaseNode] = []
        for where in self.ref_slots:
            ref = args[where] if type(where) is int else kwargs[where]
            parents.append(ref if isinstance(ref, BaseNode) else ref.node)
        for where in self.nested:
            _refs_in(args[where] if isinstance(where, int) else kwargs[where], parents)
        deps = self.deps
        for p in parents:  # few parents: a linear scan beats a set
            if p not in deps:
                deps.append(p)
        return _attach(self, deps if after is None or after in deps else [*deps, after])

    # -- compatible API ---------------------------------------------------
    def set_name(self, name: str) -> BaseNode:
        """Give the node an explicit name (used in storage); returns the node."""
        if not isinstance(name, str) or not name:
            raise GraphError(f"node names must be non-empty strings, got {name!r} for {describe(self)}")
        if self._name is None:
            self.component.explicit += 1
        self._name = name
        _Epoch.value += 1
        return self

    def get_name(self) -> str:
        """The node's explicit name, or its default ``<qualname>_<NNNN>``."""
        if self._name is not None:
            return self._name
        if not self.component.named:
            self.component.assign_default_names()
        return self._default_name  # type: ignore[return-value]

    @property
    def name(self) -> str:
        return self.get_name()

    @property
    def parents(self) -> list[BaseNode]:
        """Value parents plus the ordering parent of a method call."""
        if self.after is None or self.after in self.deps:
            return list(self.deps)
        return [*self.deps, self.after]

    def __getitem__(self, index: Any) -> NodeItem:
        return NodeItem(self, (index,))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.get_name()!r}>"

    # -- used by executors -----------------------------------------------
    @property
    def callable(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def resolve_args(self, value_of: Any) -> tuple[tuple, dict]:
        """Arguments with every node reference replaced by ``value_of(ref)``."""
        top, nested = self.ref_slots, self.nested
        if not top and not nested:
            return self.args, self.kwargs
        args = list(self.args)
        kwargs = self.kwargs
        copied = False
        for where in top:
            if where.__class__ is int:
                args[where] = value_of(args[where])
            else:
                if not copied:
                    kwargs, copied = dict(kwargs), True
                kwargs[where] = value_of(kwargs[where])
        if nested and not copied:
            kwargs = dict(kwargs)
        for where in nested:
            if isinstance(where, int):
                args[where] = _substitute(args[where], value_of)
            else:
                kwargs[where] = _substitute(kwargs[where], value_of)
        return tuple(args), kwargs


def _substitute(value: Any, value_of: Any, kinds: Any = None) -> Any:
    """``value`` with every ``kinds`` instance (nodes by default) inside the
    containers the graph searches replaced by ``value_of(instance)``."""
    if isinstance(value, kinds or _REF_KINDS):
        return value_of(value)
    cls = type(value)
    if cls is list:
        return [_substitute(v, value_of, kinds) for v in value]
    if cls is tuple:
        return tuple(_substitute(v, value_of, kinds) for v in value)
    if cls is dict:
        return {k: _substitute(v, value_of, kinds) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # named tuple
        return cls(*(_substitute(v, value_of, kinds) for v in value))
    if isinstance(value, dict):
        return cls((k, _substitute(v, value_of, kinds)) for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return cls(_substitute(v, value_of, kinds) for v in value)
    return value


class FunctionNode(BaseNode):
    """A call of a decorated function."""

    __slots__ = ("func", "version")

    def __init__(
        self, func: Any, args: tuple, kwargs: dict, version: str | None = None, qualname: str | None = None
    ):
        self.func = func
        self.version = version
        if qualname is None:
            qualname = getattr(func, "__qualname__", type(func).__qualname__)
        BaseNode.__init__(self, qualname, args, kwargs)


class ClassInitNode(BaseNode):
    """The construction of a decorated class; its value is the instance."""

    __slots__ = ("cls", "version", "calls")

    def __init__(self, cls: type, args: tuple, kwargs: dict, version: str | None = None):
        self.cls = cls
        self.version = version
        self.calls: list[ClassCallNode] = []
        super().__init__(cls.__qualname__, args, kwargs)
        self.component.stateful = True


class ClassCallNode(BaseNode):
    """A method call on a stateful class node; runs after the previous call."""

    __slots__ = ("init", "method", "index")

    def __init__(self, init: ClassInitNode, method: str, args: tuple, kwargs: dict):
        self.init = init
        self.method = method
        self.index = len(init.calls)
        previous = init.calls[-1] if init.calls else init
        func = getattr(init.cls, method)
        super().__init__(getattr(func, "__qualname__", method), args, kwargs, after=previous)
        init.calls.append(self)


class NodeItem:
    """A lazy subscript of a node's result: ``node[i]`` (and ``node[i][j]``)."""

    __slots__ = ("node", "path")

    def __init__(self, node: BaseNode, path: tuple):
        self.node = node
        self.path = path

    @property
    def index(self) -> Any:
        return self.path[0] if len(self.path) == 1 else self.path

    def __getitem__(self, index: Any) -> NodeItem:
        return NodeItem(self.node, (*self.path, index))

    def extract(self, value: Any) -> Any:
        try:
            for i in self.path:
                value = value[i]
        except (LookupError, TypeError) as exc:
            raise GraphError(
                f"{self!r}: the result of node {self.node.get_name()!r} has no such item "
                f"({type(exc).__name__}: {exc}); it is a {type(value).__name__}. Check the "
                "subscript, or what that node returns"
            ) from exc
        return value

    def get_name(self) -> str:
        return self.node.get_name()

    def __repr__(self) -> str:
        return f"<NodeItem {self.node.get_name()!r}{''.join(f'[{i!r}]' for i in self.path)}>"


_REF_KINDS = (BaseNode, NodeItem)


class _MethodCall:
    __slots__ = ("_init", "_method")

    def __init__(self, init: ClassInitNode, method: str):
        self._init = init
        self._method = method

    def __call__(self, *args: Any, **kwargs: Any) -> ClassCallNode:
        return ClassCallNode(self._init, self._method, args, kwargs)


class Instance:
    """What calling a decorated class returns: ``obj.method(...)`` makes nodes.

    Methods are looked up on the class (inherited ones included), so a class
    without its own ``__init__`` works too.
    """

    __slots__ = ("_init",)

    def __init__(self, init: ClassInitNode):
        self._init = init

    def set_name(self, name: str) -> Instance:
        self._init.set_name(name)
        return self

    def get_name(self) -> str:
        return self._init.get_name()

    @property
    def node(self) -> ClassInitNode:
        return self._init

    def __getattr__(self, attr: str) -> _MethodCall:
        cls = self._init.cls
        try:
            member = inspect.getattr_static(cls, attr)
        except AttributeError:
            raise AttributeError(
                f"workflow class {cls.__qualname__!r} has no method {attr!r}"
            ) from None
        if not (callable(member) or isinstance(member, (staticmethod, classmethod))):
            raise AttributeError(
                f"{cls.__qualname__}.{attr} is not a method; only method calls become nodes"
            )
        return _MethodCall(self._init, attr)

    def __repr__(self) -> str:
        return f"<Instance of {self._init.qualname} {self._init.get_name()!r}>"


_REFS = (BaseNode, NodeItem)
_SCANNED = frozenset((list, tuple, dict))
_ATOMS = frozenset((int, float, str, bool, bytes, type(None)))
_NO_NESTED: list = []  # shared, never mutated: most nodes have no nested nodes
_NO_SLOTS: tuple = ()
_NO_DEPS: tuple = ()  # the deps of a root node, shared
_FIRST_SLOT = (0,)  # the ref_slots of f(node), shared
_SLOTS_OF = [tuple(range(n)) for n in range(9)]  # those of f(a, b, ...), shared
_SLOTS_OF[1] = _FIRST_SLOT
_NESTING = (*_CONTAINERS, Instance)


def describe(obj: Any) -> str:
    """A short human description of a node for error messages."""
    if isinstance(obj, NodeItem):
        obj = obj.node
    if isinstance(obj, FunctionNode):
        return f"node {obj.get_name()!r} (function {obj.qualname}, created #{obj.seq})"
    if isinstance(obj, ClassInitNode):
        return f"node {obj.get_name()!r} (class {obj.qualname}, created #{obj.seq})"
    if isinstance(obj, ClassCallNode):
        return f"node {obj.get_name()!r} (method {obj.qualname}, created #{obj.seq})"
    return repr(obj)


def as_leaf(obj: Any, position: int) -> BaseNode | NodeItem:
    """Validate one positional argument of a workflow constructor."""
    if isinstance(obj, (BaseNode, NodeItem)):
        return obj
    if isinstance(obj, Instance):
        raise GraphError(
            f"argument {position} is an instance of workflow class {obj._init.qualname!r}, "
            "not a node; pass the result of one of its method calls (obj.method(...))"
        )
    func = getattr(obj, "__wrapped_func__", None)
    if func is not None:
        raise GraphError(
            f"argument {position} is the decorated function {func.__qualname__!r}, not a node; "
            f"call it to create a node, e.g. {func.__name__}(...)"
        )
    if callable(obj) and hasattr(obj, "__qualname__"):
        raise GraphError(
            f"argument {position} is the plain callable {obj.__qualname__!r}, which is not a "
            "node; decorate it with @functionfuse.workflow and pass the node its call returns"
        )
    raise GraphError(
        f"argument {position} ({type(obj).__name__}: {obj!r:.60}) is not a node; workflows take "
        "nodes made by calling @workflow-decorated functions (or node[i] items)"
    )


def _ancestors_roots(leaves: Iterable[BaseNode]) -> list[BaseNode]:
    roots: list[BaseNode] = []
    seen: set[int] = set()
    stack = list(leaves)
    pop, push, extend = stack.pop, stack.append, stack.extend
    while stack:
        node = pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        deps, after = node.deps, node.after
        if deps:
            extend(deps)
        if after is not None:
            push(after)
        elif not deps:
            roots.append(node)
    return roots


def _components(nodes: Iterable[BaseNode]) -> list[_Component]:
    """The distinct components of ``nodes`` (usually all in one)."""
    nodes = nodes if isinstance(nodes, list) else list(nodes)
    if nodes:
        first = nodes[0].component
        for n in nodes:
            if n.component is not first:
                break
        else:
            return [first]
    return list({id(n.component): n.component for n in nodes}.values())


def collect_run_set(leaves: Iterable[BaseNode]) -> list[BaseNode]:
    """Every node downstream of the roots above ``leaves``, and every node those
    need, in creation order."""
    leaves = list(leaves)
    comps = _components(leaves)
    # Every node of a component is downstream of one of its roots, so when
    # the leaves reach every root of their components (always, with a single
    # root) the run set is those components' nodes: no traversal needed.
    if all(c.roots == 1 for c in comps):
        return _whole(comps)
    stack = _ancestors_roots(leaves)
    if len(stack) == sum(c.roots for c in comps):
        return _whole(comps)
    seen: set[int] = set()
    out: list[BaseNode] = []
    pop, extend, add = stack.pop, stack.extend, seen.add
    while stack:
        node = pop()
        if id(node) in seen:
            continue
        add(id(node))
        out.append(node)
        extend(node.children)
    # A node below those roots may also have a parent from elsewhere (c = h(a, b)
    # reached from a's root): add what such nodes need, not what hangs below it.
    missing: list[BaseNode] = []
    for node in out:
        for parent in node.deps:
            if id(parent) not in seen:
                missing.append(parent)
        if node.after is not None and id(node.after) not in seen:
            missing.append(node.after)
    _gather_ancestors(missing, seen, out)
    out.sort(key=_seq_of)
    return out


def _gather_ancestors(stack: list[BaseNode], seen: set[int], out: list[BaseNode]) -> None:
    """Append to ``out`` the nodes of ``stack`` and everything they need (parents,
    earlier calls on the same instance) not in ``seen`` yet."""
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        out.append(node)
        stack.extend(node.deps)
        if node.after is not None:
            stack.append(node.after)


def collect_ancestors(leaves: Iterable[BaseNode]) -> list[BaseNode]:
    """``leaves`` and every node they need, transitively, in creation order:
    the run set of a targeted :func:`functionfuse.compute`."""
    out: list[BaseNode] = []
    _gather_ancestors(list(leaves), set(), out)
    out.sort(key=_seq_of)
    return out


def _whole(comps: list[_Component]) -> list[BaseNode]:
    """All nodes of ``comps`` in creation order."""
    if len(comps) == 1:
        return list(comps[0].nodes)
    return sorted((n for c in comps for n in c.nodes), key=_seq_of)


def has_explicit_names(leaves: Iterable[BaseNode]) -> bool:
    """Whether a node in the graphs of ``leaves`` was given a name.

    Without explicit names the default names of a workflow are unique by
    construction (``<qualname>_<NNNN>``, numbered per qualname), so checking
    them can wait until they are needed.
    """
    return any(c.explicit for c in _components(leaves))


def is_stateful(leaves: Iterable[BaseNode]) -> bool:
    """Whether the graphs of ``leaves`` hold class (stateful) nodes."""
    return any(c.stateful for c in _components(leaves))


def _seq_of(node: BaseNode) -> int:
    return node.seq


def workflow_default_names(nodes: list[BaseNode]) -> dict[int, str] | None:
    """Default names for a workflow spanning several unconnected graphs.

    Their nodes are numbered together, in creation order, as if they were one
    graph, without touching the graphs themselves (so building one workflow
    never renames the nodes of another).  ``None`` when ``nodes`` lie in one
    graph, whose own numbering (``get_name()``) applies.
    """
    comps = {id(n.component): n.component for n in nodes}
    if len(comps) < 2:
        return None
    everything = sorted((n for c in comps.values() for n in c.nodes), key=_seq_of)
    counters: dict[str, int] = {}
    names: dict[int, str] = {}
    suffixes = _suffixes(len(everything))
    for node in everything:
        q = node.qualname
        i = counters.get(q, 0)
        counters[q] = i + 1
        names[id(node)] = q + suffixes[i] if i < _MAX_SUFFIXES else f"{q}_{i:04d}"
    return names


def iter_names(
    nodes: Iterable[BaseNode], defaults: dict[int, str] | None = None
) -> Iterator[tuple[str, BaseNode]]:
    """``(name, node)`` pairs, checking that names are unique."""
    nodes = list(nodes)
    if defaults is None:
        for comp in _components(nodes):
            if not comp.named:
                comp.assign_default_names()
        names = [n._name or n._default_name for n in nodes]
    else:
        names = [n._name or defaults[id(n)] for n in nodes]
    if len(set(names)) == len(names):
        return iter(list(zip(names, nodes)))
    return _check_names(nodes, defaults)


def _check_names(
    nodes: Iterable[BaseNode], defaults: dict[int, str] | None = None
) -> Iterator[tuple[str, BaseNode]]:
    by_name: dict[str, BaseNode] = {}
    for node in nodes:
        if defaults is not None and node._name is None:
            name = defaults[id(node)]
        else:
            name = node.get_name()
        other = by_name.get(name)
        if other is not None:
            raise GraphError(
                f"two nodes in one workflow are named {name!r}: {describe(other)} and "
                f"{describe(node)}; give one of them another name with .set_name(...)"
            )
        by_name[name] = node
        yield name, node
