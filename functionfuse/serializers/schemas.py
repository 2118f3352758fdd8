"""Schemas of dataclass, attrs and pydantic results: record them, and notice when they change.

A result that holds instances of a dataclass, an attrs class or a pydantic (v2)
model is pickled, and a pickle rebuilds an instance field by field into
whatever the class is *now*.  If the class gained, lost, renamed, reordered or
retyped a field since the result was written, the loaded object has the wrong
shape.  So the manifest's ``schema`` member (see ``docs/format.md``) records
each such class with its fields, and a reader compares that record with the
class as it is now, **before** unpickling anything: from the manifest and the
importable class only.  A difference means the node is recomputed with reason
``result schema changed``.

The ``schema`` records
----------------------
:func:`schemas_of` returns a JSON-able list, one record per distinct class, in
the order the classes were first met::

    [
      {
        "class": "shapes.Point",           # module + "." + qualified name
        "module": "shapes",                # the module part of "class"
        "kind": "dataclass",               # "dataclass" | "attrs" | "pydantic"
        "fields": [["x", "int"], ["y", "list[float]"], ["tag", "Optional[str]"]]
      },
      ...
    ]

- ``class`` names the class as pickle by reference finds it: its
  ``__module__`` (``__main__`` for a script or a notebook) and its
  ``__qualname__`` (``Outer.Inner`` for a nested class).
- ``module`` repeats the module part, so a reader splits ``class`` without
  guessing where the module name ends (``pkg.mod.Outer.Inner``).  A reader
  given a record without ``module`` finds the longest prefix of ``class`` that
  is a module.
- ``fields`` lists ``[name, type]`` pairs in the class's field order (the
  order of positional constructor arguments): ``dataclasses.fields`` (so
  ``ClassVar`` and ``InitVar`` pseudo-fields are not fields), ``__attrs_attrs__``
  (attrs), ``model_fields`` (pydantic).
- A field's *type* is a normalised text of its annotation that is the same in
  every process and session (never a repr with a memory address):

  - builtins by name (``int``, ``str``, ``None``); other classes by module and
    qualified name (``shapes.Other``, ``collections.abc.Sequence``,
    ``typing.Any``);
  - generics with their arguments, ``typing`` aliases written as the builtin
    they stand for: ``List[int]`` and ``list[int]`` are both ``list[int]``,
    ``typing.Sequence[int]`` is ``collections.abc.Sequence[int]``;
  - ``Optional[X]`` for ``Optional[X]``, ``Union[X, None]`` and ``X | None``;
    ``Union[A, B]`` for ``Union[A, B]`` and ``A | B`` (arguments in written
    order); ``Literal['a', 1]``; ``collections.abc.Callable[[int], str]``;
    ``~T`` for a type variable;
  - ``Annotated[X, ...]`` is ``X`` (metadata such as validation constraints is
    not the shape);
  - string annotations and forward references (``"Other"``,
    ``from __future__ import annotations``) are evaluated like
    :func:`typing.get_type_hints` does, in the module of the class that
    declares the field, then written as above; a name that does not resolve
    stays as its source text, normalised (``dict[str, 'Other']`` becomes
    ``dict[str, Other]``);
  - an attrs attribute declared without a type has type ``""``.

Which classes get a record
--------------------------
Every distinct class of the given objects that is a dataclass, an attrs class
or a pydantic v2 model; and, to any depth, the classes of such instances found
in those instances' fields and in the items, keys and values of exact
``list``, ``tuple``, ``set``, ``frozenset`` and ``dict`` objects met on the way
(the given objects included).  An object met twice is looked at once, so
cycles end.  Nothing else is looked into: an ordinary object's attributes are
not searched.

No record is made for a class pickle cannot find by name: one defined in a
function (``<locals>`` in its qualified name) or a parametrised pydantic
generic (``Model[int]``).  cloudpickle stores such a class by value, with its
definition, so the stored object keeps its own shape; and a class defined in
the node's function is part of the function's code, which the cache key
already follows.

Checking a record
-----------------
:func:`changed_schema` finds each recorded class as it is now (its module from
``sys.modules``, imported when it is not loaded yet; ``__main__`` is the
running script or notebook), computes its record and returns a short
description of the first difference, or None when every record matches::

    result schema changed: shapes.Point gained field z
    result schema changed: shapes.Point lost field y
    result schema changed: shapes.Point field y renamed to z
    result schema changed: shapes.Point fields reordered (x, y) -> (y, x)
    result schema changed: shapes.Point field x int -> float
    result schema changed: shapes.Point is now attrs, was dataclass
    result schema changed: shapes.Point is no longer a dataclass
    result schema changed: class shapes.Point no longer exists

A class that cannot be found (module gone or failing to import, name gone)
counts as changed.  It never raises: a record that is not of the shape above
gives ``result schema changed: malformed schema record (...)``.

Cost
----
Importing this module imports neither attrs nor pydantic: a class is an attrs
class when it has ``__attrs_attrs__`` and ``attr`` is loaded, and a pydantic
model when ``pydantic.BaseModel``, taken from ``sys.modules``, is in its MRO.
An object of any other class costs one ``type()`` and one dict lookup (the
answer is cached per class).

Limitations
-----------
- Classes are named by module: a result written by ``python pipeline.py``
  (``__main__.Point``) and read where ``pipeline`` is imported instead finds no
  ``__main__.Point`` and is recomputed (safe, but a cache miss).
- pydantic v1 models (and ``pydantic.v1``) are not recognised; pydantic
  dataclasses are dataclasses.
- Only the declared fields are compared: a change of a field's default, of
  validators or of methods is not a schema change.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import importlib
import inspect
import re
import sys
import types
import typing
from collections.abc import Iterable
from typing import Any

from ..modules import lookup

__all__ = ["REASON", "changed_schema", "schemas_of"]

#: The reason a node is recomputed for; every description starts with it.
REASON = "result schema changed"

DATACLASS = "dataclass"
ATTRS = "attrs"
PYDANTIC = "pydantic"
_KINDS_NAMES = (DATACLASS, ATTRS, PYDANTIC)
_ARTICLE = {DATACLASS: "a dataclass", ATTRS: "an attrs class", PYDANTIC: "a pydantic model"}

#: Containers looked into for instances (exact types only).
_CONTAINERS = (list, tuple, set, frozenset, dict)


class _Info(typing.NamedTuple):
    """What :func:`schemas_of` needs to know about a class, cached per class."""

    kind: str
    names: tuple[str, ...]  # field names, in order (to reach nested instances)
    recordable: bool  # pickle can find the class by module and qualname


#: Per class: its :class:`_Info`, :data:`_CONTAINER` for a container looked
#: into, or None when it is neither.
_CACHE: dict[type, _Info | None] = {}
_CONTAINER = _Info("container", (), False)
_CACHE_LIMIT = 4096
_MISSING = object()
_IDENTIFIER_PATH = re.compile(r"[^\W\d]\w*(?:\.[^\W\d]\w*)*")
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


# -- kinds --------------------------------------------------------------------------------


def _kind_of(cls: type) -> str | None:
    """``"dataclass"``, ``"attrs"``, ``"pydantic"`` or None, without importing anything."""
    try:
        if getattr(cls, "__dataclass_fields__", None) is not None:
            return DATACLASS
        if getattr(cls, "__attrs_attrs__", None) is not None and "attr" in sys.modules:
            return ATTRS
        main = sys.modules.get("pydantic.main")  # where pydantic.BaseModel lives
        base = getattr(main, "BaseModel", None) if main is not None else None
        if (
            base is not None
            and isinstance(cls, type)
            and base in cls.__mro__
            and isinstance(getattr(cls, "model_fields", None), dict)
        ):
            return PYDANTIC
    except Exception:  # noqa: BLE001 - a class with a hostile metaclass is just not one of these
        return None
    return None


def _field_names(cls: type, kind: str) -> tuple[str, ...]:
    if kind == DATACLASS:
        return tuple(f.name for f in dataclasses.fields(cls))
    if kind == ATTRS:
        return tuple(a.name for a in cls.__attrs_attrs__)  # type: ignore[attr-defined]
    return tuple(cls.model_fields)  # type: ignore[attr-defined]


def _recordable(cls: type) -> bool:
    module = getattr(cls, "__module__", None)
    qualname = getattr(cls, "__qualname__", None)
    return (
        isinstance(module, str)
        and isinstance(qualname, str)
        and bool(module)
        and _IDENTIFIER_PATH.fullmatch(qualname) is not None
    )


def _info(cls: type) -> _Info | None:
    try:
        return _CACHE[cls]
    except KeyError:
        pass
    except TypeError:  # an unhashable class (a metaclass with __eq__ and no __hash__)
        return _compute_info(cls)
    info = _compute_info(cls)
    if len(_CACHE) >= _CACHE_LIMIT:
        _CACHE.clear()
    _CACHE[cls] = info
    return info


def _compute_info(cls: type) -> _Info | None:
    if any(cls is c for c in _CONTAINERS):
        return _CONTAINER
    kind = _kind_of(cls)
    if kind is None:
        return None
    try:
        names = _field_names(cls, kind)
    except Exception:  # noqa: BLE001 - not a well-formed class of its kind
        return None
    return _Info(kind, names, _recordable(cls))


# -- type text ----------------------------------------------------------------------------


class _Scope(typing.NamedTuple):
    """Where a string annotation's names are looked up (as typing.get_type_hints does)."""

    globalns: dict[str, Any]  # a copy of the class body (eval may add __builtins__)
    localns: dict[str, Any]  # the module's namespace, searched first


def _scope(owner: type) -> _Scope:
    module = sys.modules.get(getattr(owner, "__module__", None) or "")
    module_ns = getattr(module, "__dict__", None) or {}
    try:
        class_ns = dict(vars(owner))
    except TypeError:
        class_ns = {}
    name = getattr(owner, "__name__", None)
    if isinstance(name, str):
        class_ns.setdefault(name, owner)
    # typing.get_type_hints looks in the module first, then the class body.
    return _Scope(class_ns, module_ns)


def _type_text(annotation: Any, scope: _Scope | None, depth: int = 0) -> str:
    """A stable text for an annotation (see the module docstring)."""
    try:
        return _type_text_unsafe(annotation, scope, depth)
    except Exception:  # noqa: BLE001 - an odd annotation still gets some text
        return _ADDRESS.sub("", repr(annotation))


def _type_text_unsafe(t: Any, scope: _Scope | None, depth: int) -> str:
    if depth > 32:
        return "..."
    if t is None or t is type(None):
        return "None"
    if t is Ellipsis:
        return "..."
    if isinstance(t, typing.ForwardRef):
        t = t.__forward_arg__
    if isinstance(t, str):
        return _string_annotation(t, scope, depth)
    if isinstance(t, list):  # the parameters of Callable[[a, b], r]
        return "[" + ", ".join(_type_text_unsafe(a, scope, depth + 1) for a in t) + "]"
    if isinstance(t, typing.TypeVar):
        return "~" + t.__name__
    origin = typing.get_origin(t)
    if origin is not None:
        args = typing.get_args(t)
        if origin is typing.Annotated:
            return _type_text_unsafe(args[0], scope, depth + 1)
        if origin is typing.Union or origin is types.UnionType:
            if len(args) == 2 and type(None) in args:
                other = args[0] if args[1] is type(None) else args[1]
                return f"Optional[{_type_text_unsafe(other, scope, depth + 1)}]"
            return "Union[" + ", ".join(_type_text_unsafe(a, scope, depth + 1) for a in args) + "]"
        if origin is typing.Literal:
            return "Literal[" + ", ".join(_literal_text(a) for a in args) + "]"
        name = _type_text_unsafe(origin, scope, depth + 1)
        if not args:
            return name
        return f"{name}[" + ", ".join(_type_text_unsafe(a, scope, depth + 1) for a in args) + "]"
    if isinstance(t, type):
        module = getattr(t, "__module__", None)
        qualname = getattr(t, "__qualname__", None) or t.__name__
        if module == "builtins" or not module:
            return qualname
        return f"{module}.{qualname}"
    module = getattr(t, "__module__", None)
    qualname = getattr(t, "__qualname__", None)
    if isinstance(module, str) and isinstance(qualname, str) and module != "typing":  # NewType, ...
        return qualname if module == "builtins" else f"{module}.{qualname}"
    return _ADDRESS.sub("", repr(t))  # typing special forms: "typing.NoReturn", ...


def _evaluate(text: str, scope: _Scope) -> Any:
    """The value of a string annotation, or ``_MISSING`` when a name does not resolve (yet)."""
    try:
        return eval(text, scope.globalns, scope.localns)  # as typing.get_type_hints does
    except Exception:  # noqa: BLE001 - NameError mostly; any error leaves the text as written
        return _MISSING


def _string_annotation(text: str, scope: _Scope | None, depth: int) -> str:
    if scope is not None:
        value = _evaluate(text, scope)
        if value is not _MISSING:
            return _type_text_unsafe(value, scope, depth + 1)
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, ValueError):
        return text.strip()
    if isinstance(tree, ast.Constant) and isinstance(tree.value, str):  # "'Other'": quoted twice
        return _string_annotation(tree.value, None, depth + 1)
    return ast.unparse(tree)


def _literal_text(value: Any) -> str:
    if isinstance(value, enum.Enum):
        cls = type(value)
        return f"{cls.__module__}.{cls.__qualname__}.{value.name}"
    return _ADDRESS.sub("", repr(value))


# -- records ------------------------------------------------------------------------------


def _declaring_class(cls: type, name: str) -> type:
    for base in getattr(cls, "__mro__", (cls,)):
        try:
            if name in inspect.get_annotations(base):
                return base
        except Exception:  # noqa: BLE001, S112 - not a class with readable annotations
            continue
    return cls


def _fields(cls: type, kind: str) -> list[list[str]]:
    if kind == DATACLASS:
        items = [(f.name, f.type, True) for f in dataclasses.fields(cls)]
    elif kind == ATTRS:
        items = [(a.name, a.type, a.type is not None) for a in cls.__attrs_attrs__]  # type: ignore[attr-defined]
    else:
        items = [(n, f.annotation, True) for n, f in cls.model_fields.items()]  # type: ignore[attr-defined]
    scopes: dict[type, _Scope] = {}
    out = []
    for name, annotation, typed in items:
        if not typed:
            out.append([name, ""])
            continue
        owner = _declaring_class(cls, name)
        scope = scopes.get(owner)
        if scope is None:
            scope = scopes[owner] = _scope(owner)
        out.append([name, _type_text(annotation, scope)])
    return out


def _record(cls: type, kind: str) -> dict[str, Any]:
    module = cls.__module__
    return {
        "class": f"{module}.{cls.__qualname__}",
        "module": module,
        "kind": kind,
        "fields": _fields(cls, kind),
    }


def schemas_of(objects: Iterable[Any]) -> list[dict[str, Any]]:
    """Schema records of the dataclass, attrs and pydantic classes among ``objects``.

    One record per distinct class, in the order first met; classes of such
    instances in their fields and in plain containers are included, to any
    depth (see the module docstring for the JSON shape and what is searched).
    Objects of other classes give nothing.

    >>> import dataclasses
    >>> @dataclasses.dataclass
    ... class Point:
    ...     x: int
    ...     y: "list[float]"
    >>> [r["fields"] for r in schemas_of([Point(1, [2.0]), 3, "text"])]
    [[['x', 'int'], ['y', 'list[float]']]]
    """
    records: list[dict[str, Any]] = []
    recorded: set[type] = set()
    seen: dict[int, Any] = {}  # id -> object, kept alive so that ids are not reused
    cache = _CACHE
    for top in objects:
        try:
            if cache[type(top)] is None:  # the common case: a known plain class
                continue
        except (KeyError, TypeError):
            pass
        stack = [top]
        while stack:
            obj = stack.pop()
            cls = type(obj)
            try:
                info = cache[cls]
            except (KeyError, TypeError):
                info = _info(cls)
            if info is None or id(obj) in seen:
                continue
            seen[id(obj)] = obj
            if info is _CONTAINER:
                items: Iterable[Any] = obj
                if cls is dict:
                    items = [*obj.values(), *obj.keys()]
            else:
                if info.recordable and cls not in recorded:
                    recorded.add(cls)
                    records.append(_record(cls, info.kind))
                items = _field_values(obj, info.names)
            pending = []
            for item in items:  # only what may hold a schema class goes on the stack
                try:
                    if cache[type(item)] is None:
                        continue
                except (KeyError, TypeError):
                    pass
                pending.append(item)
            pending.reverse()  # popped in order
            stack.extend(pending)
    return records


def _field_values(obj: Any, names: tuple[str, ...]) -> list[Any]:
    values = []
    for name in names:
        try:
            values.append(getattr(obj, name))
        except Exception:  # noqa: BLE001, S112 - a field not set (init=False) or a failing descriptor
            continue
    return values


# -- checking -----------------------------------------------------------------------------


class _Malformed(Exception):
    pass


def _check_record(record: Any) -> tuple[str, str, str, list[tuple[str, str]]]:
    if not isinstance(record, dict):
        raise _Malformed(f"a {type(record).__name__}, not an object")
    name = record.get("class")
    if not isinstance(name, str) or not name:
        raise _Malformed("no class name")
    module = record.get("module", "")
    if not isinstance(module, str):
        raise _Malformed(f"module of {name} is not a string")
    if module and not (name.startswith(module + ".") and len(name) > len(module) + 1):
        raise _Malformed(f"class {name} is not in module {module}")
    kind = record.get("kind")
    if kind not in _KINDS_NAMES:
        raise _Malformed(f"unknown kind {kind!r} of {name}")
    fields = record.get("fields")
    if not isinstance(fields, list):
        raise _Malformed(f"fields of {name} are not a list")
    pairs = []
    for field in fields:
        if (
            not isinstance(field, (list, tuple))
            or len(field) != 2
            or not isinstance(field[0], str)
            or not isinstance(field[1], str)
        ):
            raise _Malformed(f"a field of {name} is not a [name, type] pair")
        pairs.append((field[0], field[1]))
    return name, module, kind, pairs


def _find_class(name: str, module: str) -> tuple[Any, str | None]:
    """The object ``name`` reaches now, or None and why not."""
    if module:
        candidates = [module]
    else:  # no module given: the longest prefix that is a module
        parts = name.split(".")
        candidates = [".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]
        loaded = [c for c in candidates if c in sys.modules]
        for candidate in loaded:
            found = lookup(candidate, name[len(candidate) + 1 :])
            if found is not None:
                return found, None
        candidates = [c for c in candidates if c not in loaded]
    problem = None
    for candidate in candidates:
        if candidate not in sys.modules:
            try:
                importlib.import_module(candidate)
            except Exception as exc:  # noqa: BLE001 - any failure to import means the class is gone
                missing = getattr(exc, "name", None) if isinstance(exc, ModuleNotFoundError) else None
                if not (missing and (candidate == missing or candidate.startswith(missing + "."))):
                    # the module is there but fails (a missing dependency, an error in its code)
                    problem = problem or f"module {candidate} cannot be imported ({type(exc).__name__})"
                continue
        found = lookup(candidate, name[len(candidate) + 1 :])
        if found is not None:
            return found, None
    return None, problem


def _difference(name: str, old: list[tuple[str, str]], new: list[tuple[str, str]]) -> str | None:
    if old == new:
        return None
    old_names = [n for n, _ in old]
    new_names = [n for n, _ in new]
    if old_names == new_names:
        for (field, was), (_, now) in zip(old, new):
            if was != now:
                return f"{name} field {field} {was} -> {now}"
    lost = [n for n in old_names if n not in new_names]
    gained = [n for n in new_names if n not in old_names]
    if len(lost) == 1 and len(gained) == 1 and old_names.index(lost[0]) == new_names.index(gained[0]):
        return f"{name} field {lost[0]} renamed to {gained[0]}"
    parts = []
    if lost:
        parts.append(f"lost field{'s' if len(lost) > 1 else ''} {', '.join(lost)}")
    if gained:
        parts.append(f"gained field{'s' if len(gained) > 1 else ''} {', '.join(gained)}")
    if parts:
        return f"{name} " + " and ".join(parts)
    if old_names != new_names:
        return f"{name} fields reordered ({', '.join(old_names)}) -> ({', '.join(new_names)})"
    return f"{name} fields changed"  # pragma: no cover - unreachable: names equal and types equal


def changed_schema(records: Any) -> str | None:
    """How the classes recorded by :func:`schemas_of` differ from the classes now, or None.

    Returns ``"result schema changed: <what>"`` for the first record that no
    longer matches (a class gone, of another kind, with fields gained, lost,
    renamed, reordered or retyped), or for a malformed record; None when all
    match (or nothing was recorded).  Imports a recorded class's module when it
    is not loaded yet.  Never raises.

    >>> changed_schema([{"class": "json.Nope", "module": "json", "kind": "dataclass", "fields": []}])
    'result schema changed: class json.Nope no longer exists'
    """
    if records is None:
        return None
    if not isinstance(records, list):
        return f"{REASON}: malformed schema record (a {type(records).__name__}, not a list)"
    for record in records:
        try:
            description = _changed_one(record)
        except _Malformed as exc:
            return f"{REASON}: malformed schema record ({exc})"
        except Exception as exc:  # noqa: BLE001 - never raise: a class that cannot be read has changed
            name = record.get("class") if isinstance(record, dict) else None
            return f"{REASON}: cannot read the schema of {name} ({type(exc).__name__})"
        if description is not None:
            return f"{REASON}: {description}"
    return None


def _changed_one(record: Any) -> str | None:
    name, module, kind, fields = _check_record(record)
    cls, problem = _find_class(name, module)
    if cls is None:
        return f"class {name} no longer exists" + (f": {problem}" if problem else "")
    if not isinstance(cls, type):
        return f"{name} is no longer a class"
    now = _kind_of(cls)
    if now is None:
        return f"{name} is no longer {_ARTICLE[kind]}"
    if now != kind:
        return f"{name} is now {now}, was {kind}"
    current = [(n, t) for n, t in _fields(cls, now)]
    return _difference(name, fields, current)
