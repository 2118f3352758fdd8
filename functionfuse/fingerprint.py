"""Function fingerprints: what a node's code contributes to its cache key.

A fingerprint is the SHA-256 of the function's qualified name and its
*normalised* source: the source is parsed with :mod:`ast`, docstrings and
decorators are dropped and the tree is dumped without positions, so comments,
docstrings, blank lines and formatting do not change it while any change to
what the code does does.

When the user gives ``version=`` to the decorator, the version replaces the
source: the user promises to bump it when behaviour changes, and may refactor
freely in between.

Fingerprints are computed on the driver, when the graph is keyed.  Source
introspection needs the source file, which worker processes may not have.

Values captured in a closure are *inputs*, not code: they are tokenized with
the arguments (see :func:`closure_values`), so a run can tell "code changed"
from "input changed".
"""

from __future__ import annotations

import ast
import functools
import inspect
import logging
import sys
import textwrap
import types
import weakref
from typing import Any

from .hashing import hash_bytes

__all__ = [
    "code_fingerprint",
    "function_fingerprint",
    "function_inputs",
    "closure_values",
    "normalized_source",
]

logger = logging.getLogger(__name__)

_CACHE: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()


def _strip(tree: ast.Module) -> ast.AST:
    # Only the outermost definition loses its decorators (``@workflow`` and
    # friends are not the function's behaviour); decorators inside it are code.
    for top in tree.body:
        if isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            top.decorator_list = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                node.body = body[1:] or [ast.Pass()]
    return tree


def normalized_source(obj: Any) -> str | None:
    """Source of a function or class with docstrings, comments, decorators
    and formatting removed, or ``None`` when the source is not available.

    >>> def f(x):
    ...     "doc"
    ...     return x + 1  # comment
    >>> def g(x):
    ...     return x + 1
    >>> normalized_source(f) == normalized_source(g).replace("'g'", "'f'")
    True
    """
    try:
        source = inspect.getsource(obj)
    except (OSError, TypeError):
        return None
    try:
        tree = ast.parse(textwrap.dedent(source))
    except SyntaxError:
        # A lambda in the middle of an expression: its source line may not
        # parse alone.  Fall back to the code object.
        return None
    return ast.dump(_strip(tree), annotate_fields=False, include_attributes=False)


def _code_token(code: types.CodeType) -> str:
    parts = [code.co_name, code.co_code.hex(), repr(code.co_names), repr(code.co_varnames)]
    for const in code.co_consts:
        parts.append(_code_token(const) if isinstance(const, types.CodeType) else repr(const))
    return "|".join(parts)


def _find_code(code: types.CodeType, name: str) -> list[types.CodeType]:
    found = [code] if code.co_name == name else []
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            found.extend(_find_code(const, name))
    return found


def _source_is_running_code(obj: Any) -> bool:
    """Whether the source file still holds the code that runs.

    A module edited on disk but not re-imported (a long-lived notebook) would
    otherwise key the old code's results under the new source.  Checked where
    a standalone compile is comparable (functions without free variables), on
    names, variables and constants: an edit that only swaps an operator goes
    unnoticed.
    """
    code = getattr(obj, "__code__", None)
    if code is None or code.co_freevars:
        return True
    module = sys.modules.get(getattr(obj, "__module__", None) or "")
    loader = getattr(module, "__loader__", None)
    if loader is not None and type(loader).__module__.startswith("_pytest"):
        return True  # pytest's assertion rewriting compiles from a modified tree
    try:
        compiled = compile(textwrap.dedent(inspect.getsource(obj)), "<fingerprint>", "exec")
    except (OSError, TypeError, SyntaxError, ValueError):
        return True
    running = _static_token(code)
    return any(_static_token(c) == running for c in _find_code(compiled, code.co_name))


def _static_token(code: types.CodeType) -> tuple:
    # Names, variables and constants only: CPython 3.11 rewrites co_code of a
    # function that has run (specialisation), so bytecode cannot be compared.
    consts = tuple(_static_token(c) if isinstance(c, types.CodeType) else repr(c) for c in code.co_consts)
    return (code.co_name, code.co_names, code.co_varnames, consts)


def _source_or_code(obj: Any) -> str:
    src = normalized_source(obj)
    if src is not None and not inspect.isclass(obj) and not _source_is_running_code(obj):
        logger.warning(
            "the source of %s on disk differs from the code that runs (edited but not "
            "re-imported?); fingerprinting its bytecode instead",
            getattr(obj, "__qualname__", obj),
        )
        src = None
    if src is not None:
        return "src:" + src
    code = getattr(obj, "__code__", None)
    if isinstance(code, types.CodeType):
        logger.debug("no source for %r; fingerprinting its bytecode", obj)
        return "code:" + _code_token(code)
    if inspect.isclass(obj):
        parts = []
        for name, value in sorted(vars(obj).items()):
            func = getattr(value, "__func__", value)
            code = getattr(func, "__code__", None)
            # Extension types (Cython, C) have no code objects, only descriptors.
            parts.append(name + "=" + (_code_token(code) if isinstance(code, types.CodeType) else ""))
        return "class:" + "|".join(parts)
    # Never repr(): it may hold a memory address or an abbreviated value.
    return "opaque:" + _qualname(obj)


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', None)}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


def code_fingerprint(obj: Any, version: str | None = None) -> str:
    """Fingerprint of a function's or class's code (cached per object).

    For a class, the code of every class in its MRO (except builtins) counts, so
    a stateful chain is re-run when any method or base class changes.
    ``version``, when given, replaces the source.
    """
    if version is not None:
        return hash_bytes(f"version|{_qualname(obj)}|{version}".encode())
    try:
        return _CACHE[obj]
    except (KeyError, TypeError):
        pass
    if isinstance(obj, functools.partial):
        # The wrapped function's code; the bound arguments are inputs.
        text = "partial|" + code_fingerprint(obj.func)
    elif isinstance(obj, types.MethodType):
        text = "method|" + code_fingerprint(obj.__func__)
    elif inspect.isclass(obj):
        parts = [
            _qualname(base) + ":" + _source_or_code(base)
            for base in obj.__mro__
            if base.__module__ != "builtins"
        ]
        text = "class|" + "\n".join(parts)
    elif not isinstance(obj, (types.FunctionType, types.BuiltinFunctionType)) and callable(obj):
        # A callable object: the code of its class; its state is an input.
        text = "callable|" + code_fingerprint(type(obj))
    else:
        target = inspect.unwrap(obj) if callable(obj) else obj
        text = "function|" + _qualname(obj) + "|" + _source_or_code(target)
    digest = hash_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        _CACHE[obj] = digest
    except TypeError:
        pass
    return digest


def closure_values(func: Any) -> tuple[Any, ...]:
    """Values captured by ``func``'s closure, in cell order (empty cells as None)."""
    cells = getattr(func, "__closure__", None) or ()
    values = []
    for cell in cells:
        try:
            values.append(cell.cell_contents)
        except ValueError:
            values.append(None)
    return tuple(values)


def function_inputs(func: Any) -> tuple[Any, ...]:
    """What a callable reads besides its arguments and globals; these count as
    inputs of a node's key.

    * a function: its closure values and default values;
    * ``functools.partial``: its bound arguments, plus the inputs of the function;
    * a bound method: the object it is bound to, plus the method's inputs;
    * a class: the closure and default values of every method in its MRO;
    * any other callable object: the object itself (hashed by its
      ``__functionfuse_token__``, a registered normalizer, or as a dataclass;
      otherwise it is unhashable and the node is recomputed with a warning).
    """
    if isinstance(func, types.FunctionType):
        return (closure_values(func), func.__defaults__, func.__kwdefaults__)
    if isinstance(func, functools.partial):
        return ("partial", func.args, func.keywords, function_inputs(func.func))
    if isinstance(func, types.MethodType):
        return ("method", func.__self__, function_inputs(func.__func__))
    if inspect.isclass(func):
        parts = []
        for base in func.__mro__:
            if base.__module__ == "builtins":
                continue
            for name, value in sorted(vars(base).items()):
                target = getattr(value, "__func__", value)  # staticmethod / classmethod
                if isinstance(target, types.FunctionType):
                    inputs = function_inputs(target)
                    if any(inputs):
                        parts.append((base.__qualname__, name, inputs))
        return tuple(parts)
    if isinstance(func, types.BuiltinFunctionType) or not callable(func):
        return ()
    return ("callable", func)


_IN_PROGRESS: set[int] = set()


def function_fingerprint(func: Any) -> str:
    """Fingerprint of a function used as a *value* (an argument): its code plus
    its closure values and defaults."""
    from .hashing import tokenize

    code = code_fingerprint(func)
    extra = function_inputs(func)
    if not any(extra) or id(func) in _IN_PROGRESS:  # a closure that holds itself
        return code
    _IN_PROGRESS.add(id(func))
    try:
        return hash_bytes(f"{code}|{tokenize(*extra)}".encode())
    finally:
        _IN_PROGRESS.discard(id(func))
