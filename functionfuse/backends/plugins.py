"""Plugins: code run on the worker right before a node (seeding, initialisation).

A plugin is attached to nodes with ``workflow.set_plugin(pattern, plugin)`` or
``workflow.query(pattern).set_plugin(plugin)`` on the distributed backends.
For every node that has it, in traversal order, the driver calls
``plugin.local_initialize()`` and then ``plugin.remote_initialize()``; the
function the latter returns is sent with the node and called on the worker
just before the node's function.

Two fixes over the original package:

* every run starts from the plugin as configured (the backend works on a copy),
  so :class:`RandomStatePlugin` gives node *k* the same seed on every run, and
  a rerun finds its cached results;
* what a plugin does to a node is part of that node's cache key
  (:meth:`Plugin.token`): changing the seed recomputes the seeded nodes.

Examples
--------
>>> plugin = RandomStatePlugin(min=0, max=10, seed=8, seed_func=print)
>>> seeds = []
>>> for _ in range(4):
...     plugin.local_initialize()
...     seeds.append(plugin.seed)
>>> seeds
[9, 10, 0, 1]
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable, Iterable
from typing import Any

from ..fingerprint import code_fingerprint

__all__ = ["Plugin", "InitializerPlugin", "RandomStatePlugin", "PluginCollection"]


class Plugin:
    """Base class of plugins (every method is optional)."""

    def local_initialize(self) -> Any:
        """Called on the driver for each node having the plugin, in traversal order."""
        return None

    def remote_initialize(self) -> Callable[[], Any] | None:
        """A picklable function to call on the worker before the node runs."""
        return None

    def token(self) -> Any:
        """What the plugin contributes to the node's cache key, as plain data.

        Called after :meth:`local_initialize`.  ``None`` (the default for
        plugins that do not change results, such as logging set-up) adds
        nothing.
        """
        return None


class _CallWith:
    """``func(*args)``, picklable (a closure over a lambda may not be)."""

    __slots__ = ("func", "args")

    def __init__(self, func: Callable, *args: Any) -> None:
        self.func = func
        self.args = args

    def __call__(self) -> Any:
        return self.func(*self.args)

    def __reduce__(self) -> tuple:
        # ``random.seed`` is a method of the module's hidden Random instance;
        # pickled as it is, the worker would seed a copy of that instance.
        # Module-level functions travel by name, so the worker's own is called.
        func = self.func
        module, name = getattr(func, "__module__", None), getattr(func, "__name__", None)
        owner = getattr(func, "__self__", None)
        if module and name and owner is not None and not isinstance(owner, types.ModuleType):
            try:
                same = getattr(sys.modules.get(module), name, None) == func
            except Exception:  # noqa: BLE001 - an odd __eq__: pickle by value
                same = False
            if same:
                return (_call_module_attr, (module, name, self.args))
        return (_CallWith, (func, *self.args))


def _call_module_attr(module: str, name: str, args: tuple) -> _CallWith:
    return _CallWith(getattr(importlib.import_module(module), name), *args)


class _Sequence:
    __slots__ = ("funcs",)

    def __init__(self, funcs: list[Callable]) -> None:
        self.funcs = funcs

    def __call__(self) -> None:
        for func in self.funcs:
            func()


def _callable_token(func: Callable) -> str:
    # The code only: a seed function is often a bound method of a generator
    # whose state is not an input (``random.seed``, ``rng.seed``).
    return code_fingerprint(func)


class InitializerPlugin(Plugin):
    """Call ``func()`` on the worker before each node that has the plugin."""

    def __init__(self, func: Callable[[], Any]) -> None:
        if not callable(func):
            raise TypeError(f"InitializerPlugin needs a callable, got {func!r}")
        self._func = func

    def remote_initialize(self) -> Callable[[], Any]:
        return _CallWith(self._func)

    def token(self) -> Any:
        return ("initializer", _callable_token(self._func))


class RandomStatePlugin(Plugin):
    """Seed each node: node *k* (in traversal order) gets ``seed + k + 1``.

    Seeds wrap to ``min`` past ``max``; ``seed_func(seed)`` is called on the
    worker (for example ``numpy.random.seed`` or ``random.seed``).
    """

    def __init__(self, min: int, max: int, seed: int, seed_func: Callable[[int], Any]) -> None:  # noqa: A002
        if not callable(seed_func):
            raise TypeError(f"RandomStatePlugin needs a callable seed_func, got {seed_func!r}")
        if min > max:
            raise ValueError(f"RandomStatePlugin: min ({min}) is greater than max ({max})")
        self.min, self.max = min, max
        self.seed = seed
        self.seed_func = seed_func

    def local_initialize(self) -> None:
        self.seed += 1
        if self.seed > self.max:
            self.seed = self.min

    def remote_initialize(self) -> Callable[[], Any]:
        return _CallWith(self.seed_func, self.seed)

    def token(self) -> Any:
        return ("random_state", self.seed, _callable_token(self.seed_func))


class PluginCollection(Plugin):
    """Several plugins applied in order."""

    def __init__(self, plugins: Iterable[Any]) -> None:
        self.plugins = list(plugins)

    def local_initialize(self) -> list[Any]:
        return [p.local_initialize() for p in self.plugins]

    def remote_initialize(self) -> Callable[[], None]:
        funcs = [p.remote_initialize() for p in self.plugins]
        return _Sequence([f for f in funcs if f is not None])

    def token(self) -> Any:
        tokens = [getattr(p, "token", lambda: None)() for p in self.plugins]
        return None if all(t is None for t in tokens) else ("collection", tokens)
