"""What every workflow (executor) shares: the node set, names, queries.

A workflow is built from the nodes a user wants; it runs every node
downstream of the roots above them (so passing a pipeline's root runs the
pipeline).  Nothing about a run is stored on the nodes, so a graph can be run
many times and by several workflow objects.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import re
from collections.abc import Iterable, Iterator
from typing import Any

from ..errors import GraphError
from ..graph import (
    BaseNode,
    FunctionNode,
    NodeItem,
    as_leaf,
    collect_ancestors,
    collect_run_set,
    describe,
    has_explicit_names,
    iter_names,
    names_epoch,
    workflow_default_names,
)

__all__ = ["BaseWorkflow", "ancestors_only"]

#: Set by :func:`functionfuse.compute`: workflows built while it is True run
#: only what their nodes need (their ancestors), not everything downstream of
#: their roots.  A context variable, so the constructors' signatures stay those
#: of the original package.
_ANCESTORS_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("ancestors_only", default=False)


@contextlib.contextmanager
def ancestors_only() -> Iterator[None]:
    """Workflows constructed inside this block run only what their nodes need."""
    token = _ANCESTORS_ONLY.set(True)
    try:
        yield
    finally:
        _ANCESTORS_ONLY.reset(token)

logger = logging.getLogger(__name__)


class BaseWorkflow:
    """Common part of :class:`LocalWorkflow` and the distributed workflows.

    Parameters
    ----------
    *nodes : node or node[i]
        The nodes whose results :meth:`run` returns.
    workflow_name : str
        Name under which results are stored.
    """

    def __init__(self, *nodes: Any, workflow_name: str) -> None:
        if not isinstance(workflow_name, str) or not workflow_name:
            raise GraphError(f"workflow_name must be a non-empty string, got {workflow_name!r}")
        if not nodes:
            raise GraphError("a workflow needs at least one node")
        self.workflow_name = workflow_name
        self.leaves: list[BaseNode | NodeItem] = [as_leaf(n, i) for i, n in enumerate(nodes)]
        leaf_nodes = [leaf.node if isinstance(leaf, NodeItem) else leaf for leaf in self.leaves]
        collect = collect_ancestors if _ANCESTORS_ONLY.get() else collect_run_set
        self.nodes: list[BaseNode] = collect(leaf_nodes)
        self._member_ids: set[int] | None = None
        self._funcs: dict[int, Any] = {}
        self._unstored: set[int] = set()
        self.object_storage: Any = None
        self.last_report: Any = None
        self._names_cache: tuple[int, list[tuple[str, BaseNode]]] | None = None
        if has_explicit_names(leaf_nodes):
            self._named()  # reject duplicate names now (default names never clash)

    @property
    def roots(self) -> list[BaseNode]:
        """The workflow's nodes without parents (computed when first asked for)."""
        roots = self.__dict__.get("_roots")
        if roots is None:
            roots = self._roots = [n for n in self.nodes if not n.deps and n.after is None]
        return roots

    @property
    def _members(self) -> set[int]:
        """``id`` of every node of the workflow."""
        if self._member_ids is None:
            self._member_ids = {id(n) for n in self.nodes}
        return self._member_ids

    def _named(self) -> list[tuple[str, BaseNode]]:
        """``(name, node)`` pairs, recomputed only when a name may have changed."""
        epoch = names_epoch()
        cached = self._names_cache
        if cached is None or cached[0] != epoch:
            # Separate graphs in one workflow are numbered together (load_0000,
            # load_0001 ...), as if they were one graph.
            defaults = workflow_default_names(self.nodes)
            cached = (epoch, list(iter_names(self.nodes, defaults)))
            self._names_cache = cached
        return cached[1]

    # -- compatible API ---------------------------------------------------------
    def set_storage(self, object_storage: Any) -> None:
        """Store node results in ``object_storage`` (``None`` for no storage)."""
        if object_storage is not None and not hasattr(object_storage, "scan"):
            raise GraphError(
                f"set_storage needs a storage made by functionfuse.storage.storage_factory "
                f"(or FileStorage/FsspecStorage), got {object_storage!r}"
            )
        self.object_storage = object_storage

    @property
    def storage(self) -> Any:
        return self.object_storage

    def graph_traversal(self) -> Iterator[tuple[str, BaseNode]]:
        """``(name, node)`` for every node of the workflow, in dependency order."""
        yield from list(self._named())

    def find_nodes(self, pattern: str | None = None) -> list[BaseNode]:
        """Nodes whose names fully match the regular expression ``pattern``."""
        if pattern is None:
            return list(self.nodes)
        regex = re.compile(pattern)
        return [node for name, node in self._named() if regex.fullmatch(name)]

    def replace_func(self, node: Any, new_func: Any) -> None:
        """Run ``new_func`` instead of ``node``'s function in this workflow only."""
        target = node.node if isinstance(node, NodeItem) else node
        if not isinstance(target, BaseNode):
            raise GraphError(f"replace_func needs a node of this workflow, got {node!r}")
        if id(target) not in self._members:
            raise GraphError(
                f"{describe(target)} is not part of workflow {self.workflow_name!r} (it belongs to "
                "another graph); pass one of this workflow's nodes, e.g. from find_nodes()"
            )
        if not isinstance(target, FunctionNode):
            raise GraphError(f"replace_func works on function nodes; {describe(target)} is not one")
        func = getattr(new_func, "__wrapped_func__", new_func)
        if not callable(func):
            raise GraphError(f"replace_func needs a callable for {describe(target)}, got {new_func!r}")
        self._funcs[id(target)] = func

    def log_nodes(self, pattern: str | None = None, *, query: str | None = None) -> list[BaseNode]:
        """Keep nodes matching ``pattern`` out of storage: never read, never written,
        run whenever the workflow runs (for nodes that only log or plot).

        ``query=`` is the original package's name for ``pattern``.
        """
        if query is not None:
            if pattern is not None:
                raise GraphError("log_nodes takes pattern or query (its older name), not both")
            pattern = query
        if pattern is None:
            raise GraphError("log_nodes needs a pattern (a regular expression over node names)")
        nodes = self.find_nodes(pattern)
        self._unstored.update(id(n) for n in nodes)
        return nodes

    # -- beyond the original API ---------------------------------------------------
    def explain(self, *, force: str | Iterable[str] | None = None) -> Any:
        """What :meth:`run` would do to every node, and why, without running anything.

        Nothing is computed, loaded or written.  Returns an
        :class:`~functionfuse.explanation.Explanation`; ``print()`` it.
        ``force`` is as for :meth:`run`.
        """
        from ..explanation import explain_plan

        return explain_plan(self._explain_plan(force), self.leaves)

    # -- drawings (functionfuse.drawing, imported when used) -----------------------
    def to_dot(self, *, plan: bool = True) -> str:
        """The graph as Graphviz DOT text, coloured by what a run would do when a storage is set.

        See :func:`functionfuse.drawing.to_dot`; ``plan=False`` draws the bare graph.
        """
        from ..drawing import to_dot

        return to_dot(self, plan=plan)

    def draw(self, path: Any, *, plan: bool = True, timeout: float = 60.0) -> Any:
        """Write a drawing to ``path`` (``.gv``/``.dot`` text; ``.svg``/``.png``/``.pdf`` need Graphviz's ``dot``).

        Returns the :class:`pathlib.Path` written; see :func:`functionfuse.drawing.draw`.
        """
        from ..drawing import draw

        return draw(self, path, plan=plan, timeout=timeout)

    def to_networkx(self, *, plan: bool = True) -> Any:
        """The graph as a ``networkx.DiGraph`` (needs networkx: ``pip install "functionfuse[graph]"``).

        See :func:`functionfuse.drawing.to_networkx` for the node and edge attributes.
        """
        from ..drawing import to_networkx

        return to_networkx(self, plan=plan)

    def _explain_plan(self, force: Any) -> Any:
        return self._make_plan(force)

    def _make_plan(self, force: Any, strict: bool = False) -> Any:
        """Keys and decisions of a run of this workflow (see :func:`functionfuse.caching.make_plan`)."""
        from ..caching import make_plan

        return make_plan(
            self.workflow_name,
            self._named(),
            self._funcs,
            self.object_storage,
            unstored=self._unstored,
            force=force,
            strict=strict,
        )

    def _leaf_names(self) -> list[str]:
        return [leaf.get_name() for leaf in self.leaves]
