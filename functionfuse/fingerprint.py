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
import contextlib
import enum
import functools
import inspect
import logging
import os
import sys
import textwrap
import types
import weakref
from collections.abc import Iterator
from typing import Any

from .hashing import hash_bytes
from .modules import is_user_file, is_user_module, package_version, stable_name

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
    if getattr(obj, "__name__", None) == "<lambda>":
        # The source of a lambda is its whole line: two lambdas on one line
        # would share it.  Only a line holding exactly one lambda identifies it.
        if sum(isinstance(n, ast.Lambda) for n in ast.walk(tree)) != 1:
            return None
    return ast.dump(_strip(tree), annotate_fields=False, include_attributes=False)


def _code_token(code: types.CodeType) -> str:
    parts = [code.co_name, code.co_code.hex(), repr(code.co_names), repr(code.co_varnames)]
    for const in code.co_consts:
        parts.append(_code_token(const) if isinstance(const, types.CodeType) else _const_repr(const))
    return "|".join(parts)


def _const_repr(const: Any) -> str:
    """``repr`` of a code constant, with frozensets (``x in {"a", "b"}``) in a
    fixed order: their iteration order depends on PYTHONHASHSEED."""
    if isinstance(const, frozenset):
        return "frozenset(" + ",".join(sorted(_const_repr(c) for c in const)) + ")"
    if isinstance(const, tuple):
        return "(" + ",".join(_const_repr(c) for c in const) + ")"
    return repr(const)


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


_SOURCES: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()


def _source_or_code(obj: Any) -> str:
    try:
        return _SOURCES[obj]
    except (KeyError, TypeError):
        pass
    text = _read_source_or_code(obj)
    if isinstance(obj, types.FunctionType):
        _SOURCES[obj] = text
    return text


def _read_source_or_code(obj: Any) -> str:
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
    # Never repr(): it may hold a memory address or an abbreviated value.
    return "opaque:" + _qualname(obj)


# Attributes every class has, or that restate what the members already say.
_CLASS_NOISE = frozenset({
    "__dict__", "__weakref__", "__module__", "__doc__", "__qualname__", "__annotations__",
    "__dataclass_fields__", "__dataclass_params__", "__match_args__", "__slots__",
    "__orig_bases__", "__parameters__", "__static_attributes__", "__firstlineno__",
})
_CLASS_IN_PROGRESS: set[int] = set()


def _class_body(cls: type) -> str:
    """A class's own code: each method's normalised source, nested classes,
    and class-level values (by token), in name order.

    Built from the members rather than from ``inspect.getsource(cls)``, which
    finds a class only through its module's file: a class pasted in a notebook
    (or defined in a script run as ``__main__`` from elsewhere) gets the same
    fingerprint as when its module is imported.
    """
    if id(cls) in _CLASS_IN_PROGRESS:  # a class attribute holding an instance of the class
        return "cycle"
    _CLASS_IN_PROGRESS.add(id(cls))
    try:
        parts = []
        annotations = vars(cls).get("__annotations__")
        if isinstance(annotations, dict):
            parts.append("fields=" + ",".join(map(str, annotations)))
        fields = vars(cls).get("__dataclass_fields__")
        if isinstance(fields, dict):  # defaults and default factories of a dataclass
            for fname, field in fields.items():
                default = getattr(field, "default", None)
                factory = getattr(field, "default_factory", None)
                parts.append(
                    f"default {fname}="
                    + ("" if type(default).__name__ == "_MISSING_TYPE" else _member_token(default))
                    + "|"
                    + ("" if type(factory).__name__ == "_MISSING_TYPE" else _member_token(factory))
                )
        for name, value in sorted(vars(cls).items()):
            if name in _CLASS_NOISE:
                continue
            if isinstance(value, property):
                funcs = [f for f in (value.fget, value.fset, value.fdel) if f is not None]
                parts.append(name + "=property:" + ";".join(_source_or_code(f) for f in funcs))
                continue
            if isinstance(value, enum.Enum) and type(value) is cls:  # a member: its value
                parts.append(f"{name}=member:{_member_token(value.value)}")
                continue
            target = getattr(value, "__func__", value)  # staticmethod / classmethod
            if isinstance(target, types.FunctionType) and not is_user_module(target.__module__):
                # Put there by a library (enum's _generate_next_value_ ...): its version counts.
                parts.append(f"{name}={_library_token(target, target.__module__)}")
            elif isinstance(target, types.FunctionType):
                parts.append(f"{name}={type(value).__name__}:{_source_or_code(target)}")
            elif inspect.isclass(value) and getattr(value, "__qualname__", "").startswith(cls.__qualname__ + "."):
                parts.append(f"{name}=class:{_class_body(value)}")
            elif name.startswith("__") and name.endswith("__"):
                continue  # descriptors and slots Python adds (__new__ of enums ...)
            else:
                parts.append(f"{name}={_member_token(value)}")
        return "|".join(parts)
    finally:
        _CLASS_IN_PROGRESS.discard(id(cls))


def _member_token(value: Any) -> str:
    from .errors import HashingError
    from .hashing import tokenize

    try:
        return "value:" + tokenize(value)[:32]
    except (HashingError, RecursionError):
        return "type:" + stable_name(type(value))


def _qualname(obj: Any) -> str:
    # The user's code is named without its module: ``__main__`` (a script, a
    # notebook) and the imported module give one key (see functionfuse.modules).
    return stable_name(obj)


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
    cached = _CLASS_FP.get(id(obj))
    if cached is not None and cached[0] is obj:
        return cached[1]
    if isinstance(obj, functools.partial):
        # The wrapped function's code; the bound arguments are inputs.
        text = "partial|" + code_fingerprint(obj.func)
    elif isinstance(obj, types.MethodType):
        text = "method|" + code_fingerprint(obj.__func__)
    elif inspect.isclass(obj):
        parts = [
            _qualname(base) + ":" + _class_body(base)
            for base in obj.__mro__
            if is_user_module(base.__module__)
        ]
        # Installed bases count by their package's version, not their source.
        parts += sorted({
            f"{stable_name(base)}@{package_version(base.__module__)}"
            for base in obj.__mro__
            if base.__module__ != "builtins" and not is_user_module(base.__module__)
        })
        text = "class|" + "\n".join(parts)
    elif not isinstance(obj, (types.FunctionType, types.BuiltinFunctionType)) and callable(obj):
        # A callable object: the code of its class; its state is an input.
        text = "callable|" + code_fingerprint(type(obj))
    else:
        target = inspect.unwrap(obj) if callable(obj) else obj
        text = "function|" + _qualname(obj) + "|" + _source_or_code(target)
    digest = hash_bytes(text.encode("utf-8", "surrogatepass"))
    if inspect.isclass(obj):
        # Class-level values can be reassigned (``Model.K = 5`` in a notebook):
        # a class's fingerprint is kept for one plan only.
        if _PLANNING:
            _CLASS_FP[id(obj)] = (obj, digest)
        return digest
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
    if is_user_module(getattr(func, "__module__", None)):
        # The user's function: what it calls and reads counts too.
        code = hash_bytes(f"{code}|{_deep_token(func)}".encode())
    extra = function_inputs(func)
    if not any(extra) or id(func) in _IN_PROGRESS:  # a closure that holds itself
        return code
    _IN_PROGRESS.add(id(func))
    try:
        return hash_bytes(f"{code}|{tokenize(*extra)}".encode())
    finally:
        _IN_PROGRESS.discard(id(func))


# -- what a function refers to -------------------------------------------------------
#
# A node's key follows the code it really uses: the module-level values its
# code names (constants, configuration dicts, arrays) and the helper functions
# and classes it calls, transitively through the user's own modules.  Installed
# packages are not followed: they count by their distribution's version.
#
# Global *values* may change between two runs in one process (a notebook
# re-assigning ``SCALE``), so the walk is redone once per plan: results are
# memoised only until :func:`begin_plan` is called again.

_DEEP: dict[int, tuple[Any, str]] = {}  # user functions/classes: code and references
_VALUES: dict[int, tuple[Any, str]] = {}  # module-level values: their tokens
_CLASS_FP: dict[int, tuple[Any, str]] = {}  # class fingerprints (class-level values may change)
_ACTIVE: set[int] = set()  # objects being followed (cycles: mutual recursion, self-reference)
_ACTIVE_MODULES: set[tuple[int, frozenset[str]]] = set()  # user modules being followed, by attributes
_PLANNING = 0
_CUTS = 0  # cycles cut so far: a token computed while one was cut is not memoised


def _clear() -> None:
    _DEEP.clear()
    _VALUES.clear()
    _CLASS_FP.clear()


@contextlib.contextmanager
def planning() -> Iterator[None]:
    """Memoise what functions refer to for the duration of one plan (or run).

    Outside a plan nothing is memoised, so a direct :func:`~functionfuse.hashing.tokenize`
    always sees module-level values and class attributes as they are now.
    """
    global _PLANNING
    if _PLANNING == 0:
        _clear()
    _PLANNING += 1
    try:
        yield
    finally:
        _PLANNING -= 1
        if _PLANNING == 0:
            _clear()


def begin_plan() -> None:
    """Forget the references followed so far (module-level values may have changed)."""
    _clear()


# Global names, attribute names and imports per code object (code objects
# compare by value: a bounded dict).
_CodeNames = tuple[frozenset[str], frozenset[str], tuple[tuple[str, tuple[str, ...]], ...]]
_NAMES: dict[types.CodeType, _CodeNames] = {}
_GLOBAL_OPS = frozenset({"LOAD_GLOBAL", "LOAD_NAME", "STORE_GLOBAL", "DELETE_GLOBAL", "STORE_NAME"})


def _code_names(code: types.CodeType) -> _CodeNames:
    """``(global names, attribute names, imports)`` of a code object and the code
    nested in it; imports as ``(module, (names imported from it...))``.

    Global names come from the instructions that read globals, so an attribute
    called like a global (``m.start()`` beside a module-level ``start``) is not
    taken for it; attribute names serve to follow the user's modules.
    """
    cached = _NAMES.get(code)
    if cached is not None:
        return cached
    import dis

    globals_: set[str] = set()
    attrs: set[str] = set()
    imports: list[tuple[str, list[str]]] = []
    stack = [code]
    while stack:
        c = stack.pop()
        current: tuple[str, list[str]] | None = None
        for ins in dis.get_instructions(c):
            op = ins.opname
            if op in _GLOBAL_OPS:
                globals_.add(ins.argval)
            elif op in ("LOAD_ATTR", "LOAD_METHOD", "STORE_ATTR", "IMPORT_FROM"):
                attrs.add(ins.argval)
                if op == "IMPORT_FROM" and current is not None:
                    current[1].append(ins.argval)
            elif op == "IMPORT_NAME":
                current = (ins.argval, [])
                imports.append(current)
        stack.extend(k for k in c.co_consts if isinstance(k, types.CodeType))
    result = (frozenset(globals_), frozenset(attrs), tuple((m, tuple(f)) for m, f in imports))
    if len(_NAMES) >= 4096:
        _NAMES.clear()
    _NAMES[code] = result
    return result


def _library_token(obj: Any, module: str | None) -> str:
    return f"lib:{stable_name(obj)}@{package_version(module or '')}"


def _value_token(value: Any) -> str:
    """Token of a module-level value (memoised by identity for one plan)."""
    cached = _VALUES.get(id(value)) if _PLANNING else None
    if cached is not None and cached[0] is value:
        return cached[1]
    from .errors import HashingError
    from .hashing import tokenize

    try:
        token = "value:" + tokenize(value)[:32]
    except (HashingError, RecursionError) as exc:
        # Locks, clients, open files ...: state that is not the computation's
        # input.  Their type counts — with its code, for the user's classes.
        cls = type(value)
        token = "type:" + stable_name(cls)
        if is_user_module(getattr(cls, "__module__", None)):
            token += "@" + _deep_token(cls)
        logger.debug("a module-level %s cannot be hashed (%s); only its type counts", cls, exc)
    if _PLANNING:
        _VALUES[id(value)] = (value, token)
    return token


def _static(obj: Any, name: str) -> Any:
    """``getattr`` that runs no user code (``__getattr__`` proxies, properties)."""
    try:
        return inspect.getattr_static(obj, name)
    except AttributeError:
        return None


def _unwrapped(value: Any) -> Any:
    """A @workflow function/class, or a ``functools.wraps`` wrapper (lru_cache ...),
    as the user's function or class it wraps."""
    for _ in range(100):
        inner = _static(value, "__wrapped_func__")
        if inner is None:
            inner = _static(value, "__wrapped__")
            if inner is None or isinstance(value, (types.ModuleType, type)):
                return value
            if not callable(inner):
                return value
        value = inner
    return value


def _module_token(module: types.ModuleType, attrs: frozenset[str]) -> str:
    name = module.__name__
    if not is_user_module(name):
        return f"module:{name}@{package_version(name)}"
    visit = (id(module), attrs)
    if visit in _ACTIVE_MODULES:  # modules importing each other
        global _CUTS
        _CUTS += 1
        return "cycle:module:" + name
    # A user module used as ``helpers.scale(...)``: follow the attributes the
    # code names.
    _ACTIVE_MODULES.add(visit)
    try:
        parts = []
        members = vars(module)
        for attr in sorted(attrs):
            if attr in members:
                token = _ref_token(members[attr], attrs)
                if token is not None:
                    parts.append(f"{attr}={token}")
    finally:
        _ACTIVE_MODULES.discard(visit)
    return "usermodule:" + hash_bytes("|".join(parts).encode())[:32]


def _ref_token(value: Any, attrs: frozenset[str]) -> str | None:
    """Token of one module-level object a function refers to."""
    value = _unwrapped(value)
    if isinstance(value, types.ModuleType):
        return _module_token(value, attrs)
    if isinstance(value, (types.FunctionType, types.MethodType, functools.partial)) or inspect.isclass(value):
        module = getattr(value, "__module__", None)
        if isinstance(value, functools.partial):
            module = getattr(value.func, "__module__", None)
        if not is_user_module(module):
            return _library_token(value, module)
        return "code:" + _deep_token(value)
    if isinstance(value, (types.BuiltinFunctionType, types.BuiltinMethodType)):
        return _library_token(value, getattr(value, "__module__", None))
    return _value_token(value)


def _functions_of(obj: Any) -> list[Any]:
    """The plain functions whose references count for ``obj``."""
    if isinstance(obj, functools.partial):
        return _functions_of(obj.func)
    if isinstance(obj, types.MethodType):
        return _functions_of(obj.__func__)
    if inspect.isclass(obj):
        funcs = []
        for base in obj.__mro__:
            if not is_user_module(base.__module__):
                continue
            for member in vars(base).values():
                if isinstance(member, property):
                    funcs.extend(f for f in (member.fget, member.fset, member.fdel) if f is not None)
                    continue
                if inspect.isclass(member) and member.__qualname__.startswith(base.__qualname__ + "."):
                    funcs.extend(_functions_of(member))  # a nested class
                    continue
                target = getattr(member, "__func__", member)
                if isinstance(target, types.FunctionType):
                    funcs.append(target)
        return funcs
    if isinstance(obj, types.FunctionType):
        return [inspect.unwrap(obj)]
    return []


def references(obj: Any) -> dict[str, str]:
    """Tokens of the module-level objects ``obj``'s code refers to, by name.

    ``{"SCALE": "value:…", "helper": "code:…", "np": "module:numpy@numpy==2.1.0"}``.
    Functions and classes of the user's modules are followed (their code and,
    recursively, what they refer to); installed ones count by package version;
    other values by their token (:func:`functionfuse.hashing.tokenize`), or by
    their type alone when they cannot be hashed (a logger, a lock).

    Module-level *state* that is not an input (a call counter, a memo cache)
    is left out when its module lists it in ``__functionfuse_ignore__``
    (``__functionfuse_ignore__ = {"CALLS"}``).
    """
    out: dict[str, str] = {}
    for func in _functions_of(obj):
        code = getattr(func, "__code__", None)
        if not isinstance(code, types.CodeType):
            continue
        glb = getattr(func, "__globals__", {})
        names, attrs, imports = _code_names(code)
        ignored = glb.get("__functionfuse_ignore__", ())
        for name in sorted(names):
            if name not in glb or name in ignored:
                continue
            value = glb[name]
            if value is func or value is obj:
                continue
            token = _ref_token(value, attrs)
            if token is not None:
                out[name] = token
        for module_name, imported in imports:
            # ``import helpers`` / ``import numpy as np`` / ``from helpers import scale``
            # inside the function.
            token = _import_token(module_name, imported, attrs)
            if token is not None:
                out[f"import {module_name}"] = token
    return out


def _import_token(module_name: str, imported: tuple[str, ...], attrs: frozenset[str]) -> str | None:
    module = sys.modules.get(module_name)
    if module is None:
        return _unimported_token(module_name)
    if not is_user_module(module_name):
        return f"module:{module_name}@{package_version(module_name)}"
    # What the code takes from it: the names imported, and attributes it names.
    return _module_token(module, attrs | frozenset(imported))


def _unimported_token(module_name: str) -> str | None:
    """A module the function imports that is not imported yet (at plan time),
    found without importing anything: an installed one counts by its version,
    as it does once imported, so its key is the same before and after the
    import; one of the user's by its source file (a submodule of the user's
    package: not at all, since locating it would import the package)."""
    import importlib.util

    top = module_name.partition(".")[0]
    submodule = top not in sys.modules and "." in module_name
    try:
        spec = importlib.util.find_spec(top if submodule else module_name)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    origin = getattr(spec, "origin", None)
    locations = list(getattr(spec, "submodule_search_locations", None) or ())
    where = origin if origin and os.path.isfile(origin) else (locations[0] if locations else None)
    if where is None:
        return None
    if not is_user_file(where):
        return f"module:{module_name}@{package_version(module_name)}"
    if submodule or where != origin:
        return None
    try:
        with open(origin, "rb") as fh:
            return "source:" + hash_bytes(fh.read())[:32]
    except OSError:
        return None


def code_token(obj: Any) -> str:
    """Fingerprint of a user function or class *and* everything it refers to,
    transitively (what an argument that is such a class, or an instance of it,
    contributes to a key)."""
    return _deep_token(obj)


def _deep_token(obj: Any) -> str:
    global _CUTS
    oid = id(obj)
    cached = _DEEP.get(oid)
    if cached is not None and cached[0] is obj:
        return cached[1]
    if oid in _ACTIVE:  # a cycle: the outer call covers it
        _CUTS += 1
        return "cycle:" + stable_name(obj)
    cuts = _CUTS
    _ACTIVE.add(oid)
    try:
        own = code_fingerprint(obj)
        refs = references(obj)
        inputs = _inputs_token(obj)
    finally:
        _ACTIVE.discard(oid)
    token = hash_bytes("|".join([own, inputs, *(f"{k}={v}" for k, v in sorted(refs.items()))]).encode())[:32]
    # A token that cut a cycle stands for this object only seen from the outer
    # one: memoising it would hide an edit of that outer function.
    if _PLANNING and _CUTS == cuts:
        _DEEP[oid] = (obj, token)
    return token


def _inputs_token(obj: Any) -> str:
    """Closure values and defaults of a helper — of every method, for a class
    (a node's own are inputs of its key)."""
    extra = function_inputs(obj)
    if not any(extra):
        return ""
    return _value_token(extra)


def node_fingerprint(obj: Any, version: str | None = None) -> tuple[str, dict[str, Any]]:
    """Fingerprint of a node's callable and the parts it is made of.

    Returns ``(fingerprint, parts)`` where ``parts`` is ``{"function": <own
    code>, "refs": {name: token}}`` — what the run metadata records, so a later
    run can say *what* changed (the function, a global, a helper).  With an
    explicit ``version`` the version stands for the code and nothing is
    followed.
    """
    own = code_fingerprint(obj, version)
    if version is not None:
        return own, {"function": own, "refs": {}}
    _ACTIVE.add(id(obj))
    try:
        refs = references(obj)
    finally:
        _ACTIVE.discard(id(obj))
    if not refs:
        return own, {"function": own, "refs": {}}
    text = own + "|" + "|".join(f"{k}={v}" for k, v in sorted(refs.items()))
    return hash_bytes(text.encode()), {"function": own, "refs": refs}


def describe_change(old: dict | None, new: dict | None) -> str | None:
    """What differs between two ``parts`` of :func:`node_fingerprint` (for reports),
    or None when it cannot tell.

    >>> describe_change({"function": "a", "refs": {"SCALE": "value:1"}}, {"function": "a", "refs": {"SCALE": "value:2"}})
    'global SCALE'
    >>> describe_change({"function": "a", "refs": {}}, {"function": "b", "refs": {}})
    'the function'
    """
    if not isinstance(old, dict) or not isinstance(new, dict):
        return None
    if old.get("function") != new.get("function"):
        return "the function"
    before, after = old.get("refs") or {}, new.get("refs") or {}
    words = []
    for name in after:
        if name not in before:
            words.append(f"new {_kind(after[name])} {name}")
        elif before[name] != after[name]:
            words.append(f"{_kind(after[name])} {name}")
    words.extend(f"{_kind(before[n])} {n} no longer used" for n in before if n not in after)
    return ", ".join(words) or None


def _kind(token: str) -> str:
    if token.startswith(("code:", "callable:", "usermodule:")):
        return "helper"
    if token.startswith(("module:", "lib:")):
        return "package"
    return "global"
