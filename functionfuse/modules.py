"""Which code is the user's, and names for code that do not depend on how it was run.

A cache key must be the same whether the user's module runs as a script
(``python pipeline.py``: module ``__main__``), is imported (``pipeline`` or
``pkg.pipeline``) or is pasted into a notebook cell (``__main__`` again, with
no file).  So the module a piece of *user* code lives in never enters a key:
user functions and classes are named by their ``__qualname__`` alone, and their
code (see :mod:`functionfuse.fingerprint`) says the rest.

Code of *installed* packages (anything under the interpreter's standard
library or ``site-packages`` folders, and functionfuse itself) is named by
module and qualified name, and counts by the installed distribution's version,
not by its source.

A module is the user's when it is ``__main__``, has no file (a notebook, an
``exec``), or its file lies outside those folders (a script's folder, a
project installed in editable mode).
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import sys
import sysconfig
from typing import Any

__all__ = ["is_user_module", "is_user_file", "lookup", "stable_type_name", "stable_name", "package_version"]


def _library_roots() -> tuple[str, ...]:
    roots = set()
    for name in ("stdlib", "platstdlib", "purelib", "platlib"):
        try:
            path = sysconfig.get_path(name)
        except KeyError:  # pragma: no cover - odd interpreters
            continue
        if path:
            roots.add(os.path.realpath(path))
    for path in sys.path:
        if path and ("site-packages" in path or "dist-packages" in path):
            roots.add(os.path.realpath(path))
    here = os.path.dirname(os.path.realpath(__file__))
    roots.add(here)  # functionfuse itself, even when installed in editable mode
    return tuple(sorted(r.rstrip(os.sep) + os.sep for r in roots))


_ROOTS: tuple[str, ...] | None = None


def is_user_file(path: str) -> bool:
    """Whether a source file is the user's (outside the standard library,
    ``site-packages`` and functionfuse itself)."""
    global _ROOTS
    if _ROOTS is None:
        _ROOTS = _library_roots()
    return not os.path.realpath(path).startswith(_ROOTS)


def is_user_module(name: str | None) -> bool:
    """Whether the module called ``name`` is the user's own code.

    >>> is_user_module("__main__"), is_user_module("json"), is_user_module("functionfuse.graph")
    (True, False, False)
    """
    if not name or name == "__main__":
        return True
    try:
        return _USER[name]
    except KeyError:
        pass
    module = sys.modules.get(name)
    if module is None:
        # Not importable by name (loaded with spec_from_file_location and never
        # registered, or an exec'd namespace): the user's.  Not memoised: it
        # may be imported later.
        top = name.partition(".")[0]
        return top != "functionfuse" and top not in sys.builtin_module_names and top not in sys.stdlib_module_names
    answer = _classify(name, module)
    if len(_USER) >= 4096:
        _USER.clear()
    _USER[name] = answer
    return answer


_USER: dict[str, bool] = {}


def _classify(name: str, module: Any) -> bool:
    top = name.partition(".")[0]
    if top == "functionfuse" or top in sys.builtin_module_names or name in sys.builtin_module_names:
        return False
    path = getattr(module, "__file__", None)
    if path:
        return is_user_file(path)
    spec = getattr(module, "__spec__", None)
    if spec is not None and spec.origin in ("frozen", "built-in"):
        return False
    locations = list(getattr(spec, "submodule_search_locations", None) or getattr(module, "__path__", None) or ())
    if locations:  # a namespace package: where its folders are
        return any(is_user_file(os.path.join(loc, "")) for loc in locations)
    return True  # no file at all: a notebook, an exec'd module


_ABSENT = object()


def lookup(module: str, qualname: str) -> Any:
    """The object a module's qualified name reaches, or None (the module not
    imported, or a name missing on the way): how pickle by reference finds it.

    >>> import json
    >>> lookup("json", "dumps") is json.dumps, lookup("json", "nope")
    (True, None)
    """
    found: Any = sys.modules.get(module)
    if found is None:
        return None
    for part in qualname.split("."):
        found = getattr(found, part, _ABSENT)
        if found is _ABSENT:
            return None
    return found


def stable_type_name(cls: type) -> str:
    """Name of a class that is the same however its module was run.

    Installed classes keep their module (``sklearn.linear_model._logistic.LogisticRegression``);
    the user's classes are named by qualified name alone (``Config``, ``Model.Head``).
    """
    module = getattr(cls, "__module__", None)
    qualname = getattr(cls, "__qualname__", None) or getattr(cls, "__name__", repr(cls))
    if is_user_module(module):
        return qualname
    return f"{module}.{qualname}"


def stable_name(obj: Any) -> str:
    """:func:`stable_type_name` for any named object (function, class, method)."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    if is_user_module(module):
        return qualname
    return f"{module}.{qualname}"


@functools.lru_cache(maxsize=1024)
def package_version(module_name: str) -> str:
    """Version of the distribution that provides top-level module ``module_name``
    (``"stdlib"`` for the standard library, ``""`` when unknown).

    >>> package_version("json")
    'stdlib'
    """
    top = module_name.partition(".")[0]
    if not top:
        return ""
    if top in sys.stdlib_module_names or top in sys.builtin_module_names:
        return "stdlib"
    if top == "functionfuse":
        from . import __version__

        return __version__
    dists = _packages().get(top) or [top]
    for dist in dists:
        try:
            return f"{dist}=={importlib.metadata.version(dist)}"
        except (importlib.metadata.PackageNotFoundError, ValueError):
            continue
    module = sys.modules.get(top)
    version = getattr(module, "__version__", None)
    return f"{top}=={version}" if isinstance(version, str) else ""


@functools.lru_cache(maxsize=1)
def _packages() -> dict[str, list[str]]:
    try:
        return importlib.metadata.packages_distributions()
    except Exception:  # noqa: BLE001 - broken metadata of some installed package
        return {}
