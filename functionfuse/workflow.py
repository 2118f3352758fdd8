"""The ``@workflow`` decorator: turns functions and classes into node factories.

Calling a decorated function runs nothing; it returns a node of the graph (see
:mod:`functionfuse.graph`).  Decorating a class makes stateful nodes: each
instance is a node, and each method call on it is a node that runs after the
previous call on the same instance.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, TypeVar, overload

from .graph import BaseNode, ClassInitNode, FunctionNode, Instance

__all__ = ["workflow", "NodeFactory", "ClassFactory"]

F = TypeVar("F")

_new_node = object.__new__
_init_node = BaseNode.__init__


class NodeFactory:
    """A decorated function: calling it returns a :class:`~functionfuse.graph.FunctionNode`."""

    def __init__(self, func: Callable[..., Any], *, version: str | None = None) -> None:
        if not callable(func):
            raise TypeError(f"@workflow decorates functions and classes, not {func!r}")
        self.func = func
        self.version = None if version is None else str(version)
        self.__wrapped_func__ = func
        self._qualname = getattr(func, "__qualname__", type(func).__qualname__)
        functools.update_wrapper(self, func)

    def __call__(self, *args: Any, **kwargs: Any) -> FunctionNode:
        # FunctionNode(self.func, args, kwargs, self.version, self._qualname)
        # without the class call and FunctionNode.__init__ frame (graph
        # building is a hot path).
        node = _new_node(FunctionNode)
        node.func = self.func
        node.version = self.version
        _init_node(node, self._qualname, args, kwargs)
        return node

    def __repr__(self) -> str:
        return f"<workflow function {self.func.__qualname__}>"

    def __functionfuse_token__(self) -> tuple:
        # A decorated function captured by another node's closure: its code.
        from .fingerprint import code_fingerprint

        return ("workflow-function", code_fingerprint(self.func, self.version))


class ClassFactory:
    """A decorated class: calling it returns an :class:`~functionfuse.graph.Instance`."""

    def __init__(self, cls: type, *, version: str | None = None) -> None:
        self.cls = cls
        self.class_spec = cls  # the original package's attribute name
        self.version = None if version is None else str(version)
        self.__wrapped_func__ = cls
        functools.update_wrapper(self, cls, updated=())

    def __call__(self, *args: Any, **kwargs: Any) -> Instance:
        return Instance(ClassInitNode(self.cls, args, kwargs, self.version))

    def __repr__(self) -> str:
        return f"<workflow class {self.cls.__qualname__}>"

    def __functionfuse_token__(self) -> tuple:
        from .fingerprint import code_fingerprint

        return ("workflow-class", code_fingerprint(self.cls, self.version))


@overload
def workflow(func: F, /) -> Any: ...


@overload
def workflow(*, version: str | None = None) -> Callable[[F], Any]: ...


def workflow(func: Any = None, /, *, version: str | None = None) -> Any:
    """Make a function or a class a node factory of a workflow graph.

    Parameters
    ----------
    func : function or class
        What to decorate.  Use ``@workflow`` bare, or ``@workflow(version=...)``.
    version : str, optional
        An explicit code version.  When given it replaces the function's source
        in the cache key: bump it when behaviour changes; refactor freely
        otherwise.  Without it, the normalised source is used.

    Returns
    -------
    NodeFactory or ClassFactory
        Calling it creates nodes; nothing is run until a workflow runs.

    Examples
    --------
    >>> @workflow
    ... def add(a, b):
    ...     return a + b
    >>> node = add(1, 2).set_name("three")
    >>> node.get_name()
    'three'
    """

    def decorate(obj: Any) -> Any:
        if inspect.isclass(obj):
            return ClassFactory(obj, version=version)
        return NodeFactory(obj, version=version)

    if func is None:
        return decorate
    return decorate(func)
