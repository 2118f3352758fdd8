"""Worker tracebacks that name the user's file, line and source text.

A node's function reaches a Dask or Ray worker pickled by value (it is
defined in ``__main__``, in a notebook, in a module registered with
``cloudpickle.register_pickle_by_value``, or it is a closure).  cloudpickle
(3.1.3 and later) writes every code object it pickles with ``co_filename``
set to ``"<dynamic-code>"``, so a traceback formatted on the worker reads
``File "<dynamic-code>", line 12, in f`` with no source line: the user cannot
tell which file failed, nor see the failing line.

Two layers fix this, whatever cloudpickle does:

1. **On the way out** (:func:`dumps`, used for everything the driver sends to
   workers): a :class:`cloudpickle.Pickler` whose ``reducer_override`` sends
   each code object with :mod:`marshal` (the format of ``.pyc`` files), which
   keeps every attribute, ``co_filename`` included, for the code object and
   the code objects nested in its constants.  cloudpickle still decides what
   travels by value and rebuilds functions and classes around these code
   objects; only the code objects' encoding changes.  The worker therefore
   runs code that names its real file: its own tracebacks, logs and
   ``linecache`` (which finds the source when the file exists on the worker)
   are right, with no per-node work on either side (a function is pickled
   once per run, and unpickled once per worker process).  ``reducer_override``
   comes before any reducer cloudpickle registers for code objects, so a
   change of cloudpickle's reducer does not undo this.

2. **On the way back** (:func:`localize`, on the driver, only when a node
   failed): the worker's traceback text is rewritten where it still lacks
   what the user needs.

   * A frame still naming a placeholder file (``<dynamic-code>``, or whatever
     placeholder the installed cloudpickle writes, found once by a round trip)
     is matched to the code objects reachable from the failing node's
     function -- its code and nested code, its closure, the functions and
     classes it uses that travel by value, partials, bound methods, callable
     objects, plugins -- by the code's name and a line of its line table, and
     gets the real file name when exactly one file matches.
   * A frame without a source line (the worker lacks the file: another
     machine, or a notebook cell that only the driver's ``linecache`` holds)
     gets the line from the driver's ``linecache``.

The first layer makes the second one rarely needed; the second one keeps
tracebacks readable with a cloudpickle that sends code objects some other
way, and fills in source lines that only the driver has.
"""

from __future__ import annotations

import functools
import io
import linecache
import marshal
import re
import types
from collections.abc import Iterable, Iterator
from typing import Any

from ..modules import lookup

import cloudpickle

__all__ = ["dumps", "code_objects", "localize", "placeholders"]

# -- 1. sending code objects with their file name ----------------------------------------------

_CODE = types.CodeType
_BASE_OVERRIDE = getattr(cloudpickle.Pickler, "reducer_override", None)


def _reduce_code(code: types.CodeType) -> Any:
    try:
        data = marshal.dumps(code)
    except ValueError:  # a hand-made code object holding unmarshallable constants
        return NotImplemented  # cloudpickle's own reducer
    return marshal.loads, (data,)


class _Pickler(cloudpickle.Pickler):
    """cloudpickle, with code objects keeping ``co_filename``."""

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is _CODE:
            return _reduce_code(obj)
        if _BASE_OVERRIDE is None:  # pragma: no cover - a cloudpickle without one
            return NotImplemented
        return _BASE_OVERRIDE(self, obj)


def dumps(obj: Any, protocol: int | None = None) -> bytes:
    """``cloudpickle.dumps(obj)``, with code objects naming their real file."""
    with io.BytesIO() as file:
        _Pickler(file, protocol=protocol).dump(obj)
        return file.getvalue()


# -- 2. the driver's view of a worker's traceback ---------------------------------------------

#: A frame line of a formatted traceback (also inside exception groups: ``  |   File ...``).
_FRAME = re.compile(r'^(?P<indent>[ |]*)File "(?P<file>[^"\n]+)", line (?P<line>\d+), in (?P<name>.+)$')

_PLACEHOLDERS: frozenset[str] | None = None


def placeholders() -> frozenset[str]:
    """File names cloudpickle gives code it pickles by value (found once, by a round trip)."""
    global _PLACEHOLDERS
    if _PLACEHOLDERS is None:
        found = {"<dynamic-code>"}

        def probe() -> None:  # a local function: cloudpickle sends it by value
            pass

        try:
            name = cloudpickle.loads(cloudpickle.dumps(probe)).__code__.co_filename
        except Exception:  # noqa: BLE001 - the fixed marker is enough
            name = probe.__code__.co_filename
        if name != probe.__code__.co_filename:
            found.add(name)
        _PLACEHOLDERS = frozenset(found)
    return _PLACEHOLDERS


def _registered() -> tuple[str, ...]:
    try:
        return tuple(cloudpickle.list_registry_pickle_by_value())
    except Exception:  # noqa: BLE001 - an older cloudpickle
        return ()


def _by_value(obj: Any, registered: tuple[str, ...]) -> bool:
    """Whether cloudpickle sends the function or class ``obj`` by value (approximately)."""
    module = getattr(obj, "__module__", None)
    if module is None or module in ("__main__", "__mp_main__"):
        return True
    if module == "builtins":
        return False
    if any(module == m or module.startswith(m + ".") for m in registered):
        return True
    qualname = getattr(obj, "__qualname__", "")
    if "<locals>" in qualname or "<lambda>" in qualname:
        return True
    return lookup(module, qualname) is not obj


def _module_by_value(module: types.ModuleType, registered: tuple[str, ...]) -> bool:
    name = module.__name__
    return any(name == m or name.startswith(m + ".") for m in registered)


def _names(code: types.CodeType) -> set[str]:
    """Global and attribute names used by ``code`` and the code nested in it."""
    out: set[str] = set()
    stack = [code]
    while stack:
        co = stack.pop()
        out.update(co.co_names)
        stack.extend(c for c in co.co_consts if type(c) is _CODE)
    return out


_CALLABLE_KINDS = (
    types.FunctionType,
    types.MethodType,
    functools.partial,
    type,
    staticmethod,
    classmethod,
    property,
    types.CodeType,
)


def code_objects(roots: Iterable[Any]) -> Iterator[types.CodeType]:
    """Code objects reachable from ``roots`` the way cloudpickle sends them by value.

    Follows functions (code, nested code, closure, defaults, ``__wrapped__``,
    and the globals their code names that travel by value, also as attributes
    of modules registered by value), classes sent by value (their methods,
    properties and bases), bound methods, partials, and callable objects (their
    class, and the callables among their attributes).  Each object is visited
    once; objects cloudpickle sends by reference (library code) are not entered.
    """
    registered = _registered()
    seen: set[int] = set()
    keep: list[Any] = []  # ids stay unique while the walk holds the objects
    stack: list[tuple[Any, bool]] = [(root, True) for root in roots if root is not None]

    def push(value: Any) -> None:
        if isinstance(value, _CALLABLE_KINDS) or callable(value):
            stack.append((value, False))

    while stack:
        obj, root = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        keep.append(obj)
        if type(obj) is _CODE:
            yield obj
            stack.extend((c, False) for c in obj.co_consts if type(c) is _CODE)
        elif isinstance(obj, types.FunctionType):
            if not root and not _by_value(obj, registered):
                continue
            stack.append((obj.__code__, False))
            for cell in obj.__closure__ or ():
                try:
                    push(cell.cell_contents)
                except ValueError:  # an empty cell
                    pass
            for value in (obj.__defaults__ or ()) + tuple((obj.__kwdefaults__ or {}).values()):
                push(value)
            wrapped = getattr(obj, "__wrapped__", None)
            if wrapped is not None:
                push(wrapped)
            names = _names(obj.__code__)
            space = obj.__globals__
            for name in names:
                value = space.get(name)
                if value is None:
                    continue
                if isinstance(value, types.ModuleType):
                    if _module_by_value(value, registered):
                        for attr in names:
                            push(getattr(value, attr, None))
                elif isinstance(value, (types.FunctionType, type)):
                    if _by_value(value, registered):
                        stack.append((value, False))
                else:
                    push(value)
        elif isinstance(obj, type):
            if not root and not _by_value(obj, registered):
                continue
            for value in vars(obj).values():
                push(value)
            for base in obj.__bases__:
                push(base)
        elif isinstance(obj, (staticmethod, classmethod)):
            push(obj.__func__)
        elif isinstance(obj, property):
            for value in (obj.fget, obj.fset, obj.fdel):
                push(value)
        elif isinstance(obj, types.MethodType):
            push(obj.__func__)
            push(type(obj.__self__))
        elif isinstance(obj, functools.partial):
            push(obj.func)
            for value in obj.args + tuple(obj.keywords.values()):
                push(value)
        else:  # a callable object sent by value (or a plugin given as a root)
            cls = type(obj)
            if not root and not _by_value(cls, registered):
                continue
            stack.append((cls, False))
            try:
                attrs = vars(obj)
            except TypeError:  # no __dict__ (slots)
                slots = getattr(cls, "__slots__", ())
                attrs = {s: getattr(obj, s, None) for s in slots if isinstance(s, str)}
            for value in attrs.values():
                if root and isinstance(value, (list, tuple)):  # a plugin collection's plugins
                    stack.extend((item, True) for item in value[:64] if not isinstance(item, (str, bytes)))
                else:
                    push(value)


def _lines(code: types.CodeType) -> set[int]:
    out = {code.co_firstlineno}
    out.update(line for _, _, line in code.co_lines() if line is not None)
    return out


def _resolve(candidates: list[types.CodeType], name: str, line: int) -> str | None:
    """The file of the one code object named ``name`` covering ``line`` (None if not one)."""
    files = {c.co_filename for c in candidates if c.co_name == name and line in _lines(c)}
    files -= placeholders()
    return files.pop() if len(files) == 1 else None


def localize(text: str, roots: Iterable[Any] = ()) -> str:
    """A worker's traceback as the driver can best show it.

    Frames naming cloudpickle's placeholder file get the real file of the
    matching code object reachable from ``roots`` (the failing node's
    function, class, plugin ...); frames without a source line get it from
    this process's ``linecache``.  Text that needs neither is returned as is.
    """
    if not text or 'File "' not in text:
        return text
    marks = placeholders()
    lines = text.split("\n")
    out: list[str] = []
    candidates: list[types.CodeType] | None = None
    changed = False
    for i, line in enumerate(lines):
        match = _FRAME.match(line)
        if match is None:
            out.append(line)
            continue
        indent, filename, lineno, name = match["indent"], match["file"], int(match["line"]), match["name"]
        if filename in marks:
            if candidates is None:
                candidates = list(code_objects(roots))
            real = _resolve(candidates, name, lineno)
            if real is not None:
                filename = real
                line = f'{indent}File "{real}", line {lineno}, in {name}'
                changed = True
        out.append(line)
        following = lines[i + 1] if i + 1 < len(lines) else ""
        if not following.startswith(indent + "  ") and filename not in marks:
            source = linecache.getline(filename, lineno).strip()
            if source:
                out.append(f"{indent}  {source}")
                changed = True
    return "\n".join(out) if changed else text
