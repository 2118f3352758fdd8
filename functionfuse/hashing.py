"""Deterministic, type-tagged value tokens.

Invariants
----------
* **Same value, same token, everywhere.**  A token depends only on the value,
  never on the process, the machine, ``PYTHONHASHSEED`` or which optional
  libraries are installed.  One algorithm (SHA-256) is used for every digest.
* **Types are part of the value.**  Every encoding starts with a type tag, so
  ``1``, ``1.0``, ``True`` and ``"1"`` never collide.
* **Equal sets hash alike.**  Set elements are sorted by their canonical
  encoding.  Dicts keep insertion order: it changes what code iterating them
  produces, and a miss is safe where a wrong hit is not.
* **Unhashable is loud.**  A value of an unknown type raises
  :class:`~functionfuse.errors.HashingError` (strict) or, in the caching layer,
  becomes a random token (a guaranteed cache miss) with a warning.  It is never
  silently replaced by a constant, and arbitrary objects are never keyed on
  their pickle bytes (pickles are not canonical): the last-resort path encodes
  the structure ``__reduce_ex__`` describes (class, arguments, attributes),
  value by value, and only when that structure is plain data.

What hashes
-----------
Builtins and containers; numpy and pandas values by content; classes of any
metaclass (``abc.ABC`` subclasses, enums, scikit-learn estimator classes) by
name, plus, for the user's own classes, their code; enum members (the user's
with their value); dataclasses and named tuples; scikit-learn estimators and
kernels by class, parameters and fitted state; compiled regular expressions;
``functools.partial`` by function, arguments and keywords; callables of
installed packages that are not plain functions (``np.mean``, ``str.lower``)
by name and package version when that name gives them back; and, last, any
object whose pickled form (``__reduce_ex__``) is its class and plain attribute
data.  An instance of one of the user's classes carries its class's code
whichever path encodes it.

Type names in the encoding come from :func:`functionfuse.modules.stable_type_name`:
the user's classes are named without their module, so a value built in a
script run as ``python pipeline.py`` (module ``__main__``) hashes like the same
value built by ``import pipeline``.

Extending
---------
Register a normalizer that turns your type into values this module already
knows (numbers, strings, bytes, containers, numpy arrays ...)::

    from functionfuse.hashing import normalize_token

    @normalize_token.register(MyConfig)
    def _(cfg):
        return (cfg.name, cfg.params)

or, without touching a registry, give the class a ``__functionfuse_token__``
method returning such a value.  Registrations for third-party libraries can be
lazy (``normalize_token.register_lazy("numpy")``) so that importing
functionfuse does not import them.

The encoding is pinned by golden tests: any change to it is a deliberate cache
break for every user.
"""

from __future__ import annotations

import copyreg
import dataclasses
import datetime
import decimal
import enum
import fractions
import functools
import hashlib
import importlib
import os
import pathlib
import re
import sys
import types
import uuid
from collections.abc import Callable
from typing import Any

from .errors import HashingError
from .modules import is_user_module, lookup, package_version, stable_type_name

__all__ = ["normalize_token", "tokenize", "hash_bytes", "Dispatch", "Unhashable", "user_stacklevel"]

HASH_NAME = "sha256"


def hash_bytes(data: bytes | memoryview) -> str:
    """Hex digest of ``data`` with the library's one fixed algorithm.

    >>> hash_bytes(b"")[:16]
    'e3b0c44298fc1c14'
    """
    return hashlib.sha256(data).hexdigest()


class Unhashable(Exception):
    """Internal signal: a value (``obj``) has no deterministic encoding."""

    def __init__(self, obj: object, reason: str) -> None:
        super().__init__(reason)
        self.obj = obj
        self.reason = reason


class Dispatch:
    """Type -> normalizer registry that follows the class hierarchy.

    A normalizer takes a value and returns another value that the tokenizer
    already knows how to encode (for example a tuple of fields).  Lookup walks
    the MRO, so a registration for a base class covers its subclasses; lazy
    registrations keyed by top-level module name run on first use.
    """

    def __init__(self) -> None:
        self._lookup: dict[type, Callable[[Any], Any]] = {}
        self._lazy: dict[str, Callable[[], None]] = {}
        self._cache: dict[type, Callable[[Any], Any] | None] = {}

    def register(self, cls: type | tuple[type, ...], func: Callable | None = None):
        """Register ``func`` as the normalizer of ``cls`` (usable as a decorator)."""

        def wrapper(f: Callable[[Any], Any]) -> Callable[[Any], Any]:
            for c in cls if isinstance(cls, tuple) else (cls,):
                self._lookup[c] = f
            self._cache.clear()
            return f

        return wrapper(func) if func is not None else wrapper

    def register_lazy(self, toplevel: str, func: Callable[[], None] | None = None):
        """Run ``func`` (which registers types) the first time a value from the
        top-level module ``toplevel`` is tokenized."""

        def wrapper(f: Callable[[], None]) -> Callable[[], None]:
            self._lazy[toplevel] = f
            return f

        return wrapper(func) if func is not None else wrapper

    def dispatch(self, cls: type) -> Callable[[Any], Any] | None:
        """The normalizer for ``cls``, or ``None`` when none is registered."""
        try:
            return self._cache[cls]
        except KeyError:
            pass
        found = None
        for base in cls.__mro__:
            if base in self._lookup:
                found = self._lookup[base]
                break
        if found is None and self._lazy:
            # A user's subclass (of a scikit-learn estimator, a numpy array ...)
            # triggers the registrations of the libraries its bases come from.
            for base in cls.__mro__:
                toplevel = (getattr(base, "__module__", None) or "").partition(".")[0]
                register = self._lazy.pop(toplevel, None)
                if register is not None:
                    register()
                    self._cache.clear()
                    return self.dispatch(cls)
        self._cache[cls] = found
        return found

    def __call__(self, obj: Any) -> Any:
        func = self.dispatch(type(obj))
        if func is None:
            raise Unhashable(obj, f"no normalizer registered for {_type_name(type(obj))}")
        return func(obj)


normalize_token = Dispatch()


@normalize_token.register_lazy("logging")
def _register_logging() -> None:
    import logging

    normalize_token.register(logging.Logger, lambda lg: ("Logger", lg.name))


def _call_normalizer(func: Callable[[Any], Any], obj: Any) -> Any:
    try:
        return func(obj)
    except Unhashable:
        raise
    except Exception as exc:  # a normalizer failing on odd data: unhashable, not a crash
        raise Unhashable(obj, f"its normalizer raised {type(exc).__name__}: {exc}") from exc


def _type_name(cls: type) -> str:
    """Full name of a class, for messages (encodings use ``stable_type_name``)."""
    return f"{cls.__module__}.{cls.__qualname__}"


_STABLE_NAMES: dict[type, bytes] = {}


def _stable_name_bytes(cls: type) -> bytes:
    """``stable_type_name(cls)`` as bytes (memoised: it is on every tagged value's path)."""
    try:
        return _STABLE_NAMES[cls]
    except KeyError:
        pass
    except TypeError:  # a metaclass that makes its classes unhashable
        return stable_type_name(cls).encode("utf-8", "surrogatepass")
    name = stable_type_name(cls).encode("utf-8", "surrogatepass")
    if len(_STABLE_NAMES) >= 4096:
        _STABLE_NAMES.clear()
    _STABLE_NAMES[cls] = name
    return name


def _len_prefixed(tag: bytes, data: bytes) -> bytes:
    return b"%s%d:%s" % (tag, len(data), data)


class Encoder:
    """Canonical, type-tagged byte encoding of a value.

    ``ref_hook`` lets the caching layer encode graph references (a node passed
    as an argument) as the key of that node: it returns bytes for objects it
    handles and ``None`` otherwise.
    """

    __slots__ = ("ref_hook", "_active", "_classes")

    def __init__(self, ref_hook: Callable[[Any], bytes | None] | None = None) -> None:
        self.ref_hook = ref_hook
        self._active: set[int] = set()
        # The user's classes met in this encoding (their code token is not
        # memoised across encodings: module-level values may change).
        self._classes: dict[type, bytes] | None = None

    def encode(self, obj: Any) -> bytes:
        out: list[bytes] = []
        self._feed(obj, out)
        return b"".join(out)

    # Hot builtins are tested first, then the exact-type table, then the
    # slower paths (graph references, custom tokens, registry, subclasses).
    def _feed(self, obj: Any, out: list[bytes]) -> None:
        cls = type(obj)
        if cls is int:
            out.append(b"i%de" % obj)
            return
        if cls is str:
            data = obj.encode("utf-8", "surrogatepass")
            out.append(b"s%d:%s" % (len(data), data))
            return
        if cls is tuple:
            self._seq(b"t", obj, out)
            return
        enc = _EXACT.get(cls)
        if enc is not None:
            enc(self, obj, out)
            return
        if self.ref_hook is not None:
            ref = self.ref_hook(obj)
            if ref is not None:
                out.append(ref)
                return
        self._feed_other(obj, cls, out)

    def _class_bytes(self, cls: type) -> bytes:
        """:func:`_instance_class_bytes`, memoised for the user's classes for
        the duration of this encoding (a list of a thousand enum members)."""
        memo = self._classes
        try:
            cached = _INSTANCE_CLASSES.get(cls)
            if cached is None and memo is not None:
                cached = memo.get(cls)
        except TypeError:  # a metaclass that makes its classes unhashable
            return _instance_class_bytes(cls)
        if cached is not None:
            return cached
        data = _instance_class_bytes(cls)
        if memo is None:
            memo = self._classes = {}
        memo[cls] = data
        return data

    def _feed_other(self, obj: Any, cls: type, out: list[bytes]) -> None:
        # The class part of the tags below (U, R, D, K, O) carries, for the
        # user's classes, their code (see ``_instance_class_bytes``): what such
        # a value does in a node comes from its methods too.
        custom = getattr(cls, "__functionfuse_token__", None)
        if custom is not None:
            out.append(_len_prefixed(b"U", self._class_bytes(cls)))
            self._guarded(obj, lambda: self._feed(_call_normalizer(custom, obj), out))
            return
        func = normalize_token.dispatch(cls)
        if func is not None:
            out.append(_len_prefixed(b"R", self._class_bytes(cls)))
            self._guarded(obj, lambda: self._feed(_call_normalizer(func, obj), out))
            return
        if isinstance(obj, type):  # a class whose metaclass is not ``type`` (ABCMeta, EnumType ...)
            _enc_type(self, obj, out)
            return
        if dataclasses.is_dataclass(cls):
            try:
                fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
            except AttributeError as exc:  # a field(init=False) never set
                raise Unhashable(obj, f"a dataclass field is not set ({exc})") from None
            out.append(_len_prefixed(b"D", self._class_bytes(cls)))
            self._guarded(obj, lambda: self._mapping(fields, out))
            return
        for base, enc in _SUBCLASS:
            if isinstance(obj, base):
                out.append(_len_prefixed(b"K", self._class_bytes(cls)))
                enc(self, obj, out)
                return
        name = _installed_callable_name(obj)
        if name is not None:
            out.append(_len_prefixed(b"G", name))
            return
        self._feed_reduced(obj, cls, out)

    def _feed_reduced(self, obj: Any, cls: type, out: list[bytes]) -> None:
        """Last resort: an object whose pickled form is its class plus plain data.

        Encoded as ``O`` + the class's stable name, then the constructor
        arguments, the state (attribute dicts in name order when the state is
        the default ``__getstate__``), list items and dict items.  Anything
        that does not have this shape is unhashable.
        """
        args, kwargs, state, slots, listitems, dictitems = _reduced(obj, cls)
        out.append(_len_prefixed(b"O", self._class_bytes(cls)))

        def feed(value: Any, where: str) -> None:
            self._feed_part(value, out, obj, where)

        def action() -> None:
            feed(args, "its constructor arguments")
            for pairs, what in ((kwargs, "constructor argument"), (state, "attribute"), (slots, "slot")):
                out.append(b"d")
                for key, value in pairs:
                    feed(key, f"the name of its {what} {key!r}")
                    feed(value, f"its {what} {key!r}")
                out.append(b"e")
            feed(listitems, "its items")
            feed(dictitems, "its items")

        self._guarded(obj, action)

    def _feed_part(self, value: Any, out: list[bytes], whole: Any, where: str) -> None:
        """Feed ``value``, a part of ``whole``; if it cannot be hashed, ``whole``
        cannot, and the error says which part (``where``) and why."""
        try:
            self._feed(value, out)
        except Unhashable as inner:
            raise Unhashable(
                whole, f"{where} cannot be hashed ({_type_name(type(inner.obj))}: {inner.reason})"
            ) from None

    def _enter(self, obj: Any) -> int:
        oid = id(obj)
        if oid in self._active:
            raise Unhashable(obj, "the value contains itself (a reference cycle)")
        self._active.add(oid)
        return oid

    def _guarded(self, obj: Any, action: Callable[[], None]) -> None:
        oid = self._enter(obj)
        action()
        self._active.discard(oid)

    # -- containers -------------------------------------------------------
    # On Unhashable the encoder is abandoned, so no try/finally is needed to
    # keep ``_active`` consistent.
    def _seq(self, tag: bytes, obj: Any, out: list[bytes]) -> None:
        oid = self._enter(obj)
        out.append(tag)
        feed = self._feed
        for item in obj:
            feed(item, out)
        out.append(b"e")
        self._active.discard(oid)

    def _unordered(self, tag: bytes, obj: Any, out: list[bytes]) -> None:
        oid = self._enter(obj)
        out.append(tag)
        out.extend(sorted(self.encode(item) for item in obj))
        out.append(b"e")
        self._active.discard(oid)

    def _mapping(self, obj: Any, out: list[bytes]) -> None:
        # Insertion order counts: dicts are ordered, and code that iterates a
        # dict (json.dumps, DataFrame(d) ...) gives different results.
        oid = self._enter(obj)
        out.append(b"d")
        feed = self._feed
        for k, v in obj.items():
            feed(k, out)
            feed(v, out)
        out.append(b"e")
        self._active.discard(oid)


def _enc_none(e: Encoder, obj: Any, out: list[bytes]) -> None:
    out.append(b"N")


def _enc_bool(e: Encoder, obj: Any, out: list[bytes]) -> None:
    out.append(b"T" if obj else b"F")


def _enc_int(e: Encoder, obj: Any, out: list[bytes]) -> None:
    out.append(b"i%de" % int(obj))


def _enc_float(e: Encoder, obj: Any, out: list[bytes]) -> None:
    out.append(b"f" + float(obj).hex().encode() + b"e")


def _enc_complex(e: Encoder, obj: Any, out: list[bytes]) -> None:
    out.append(b"c" + obj.real.hex().encode() + b"," + obj.imag.hex().encode() + b"e")


def _enc_str(e: Encoder, obj: Any, out: list[bytes]) -> None:
    out.append(_len_prefixed(b"s", str(obj).encode("utf-8", "surrogatepass")))


def _enc_bytes(e: Encoder, obj: Any, out: list[bytes]) -> None:
    out.append(_len_prefixed(b"b", bytes(obj)))


_INSTANCE_CLASSES: dict[type, bytes] = {}


def _instance_class_bytes(cls: type) -> bytes:
    """The class part of an instance (tags ``U``, ``R``, ``D``, ``K``, ``O``).

    For the user's classes it carries the class's code too, with the helpers
    and module-level values its methods use: what such an object does in a
    node comes from its methods, so editing them changes the key.
    """
    try:
        cached = _INSTANCE_CLASSES.get(cls)
    except TypeError:  # a metaclass that makes its classes unhashable
        cached = None
    if cached is not None:
        return cached
    name = _stable_name_bytes(cls)
    if is_user_module(getattr(cls, "__module__", None)):
        # Not memoised here: the class's helpers and module-level values may
        # change between runs (fingerprint memoises them for one plan).
        from .fingerprint import code_token  # fingerprint imports this module

        return name + b"@" + code_token(cls).encode()
    if len(_INSTANCE_CLASSES) >= 4096:
        _INSTANCE_CLASSES.clear()
    try:
        _INSTANCE_CLASSES[cls] = name
    except TypeError:
        pass
    return name


def _enc_type(e: Encoder, obj: Any, out: list[bytes]) -> None:
    # Installed classes: ``C`` + module.qualname.  The user's classes: ``A`` +
    # qualname + the fingerprint of their code, so that editing a class passed
    # as an argument changes the key, and ``__main__`` vs imported agree.
    name = _stable_name_bytes(obj)
    if not is_user_module(getattr(obj, "__module__", None)):
        out.append(_len_prefixed(b"C", name))
        return
    from .fingerprint import code_token  # fingerprint imports this module

    out.append(_len_prefixed(b"A", name) + _len_prefixed(b"", code_token(obj).encode()))


def _enc_function(e: Encoder, obj: Any, out: list[bytes]) -> None:
    from .fingerprint import function_fingerprint

    out.append(_len_prefixed(b"P", function_fingerprint(obj).encode()))


def _enc_builtin_function(e: Encoder, obj: Any, out: list[bytes]) -> None:
    owner = getattr(obj, "__self__", None)
    if owner is None or isinstance(owner, types.ModuleType):  # len, math.sqrt ...
        name = f"{getattr(obj, '__module__', None)}.{obj.__qualname__}"
        out.append(_len_prefixed(b"B", name.encode()))
        return
    _enc_bound_builtin(e, obj, owner, out)


def _enc_bound_builtin(e: Encoder, obj: Any, owner: Any, out: list[bytes]) -> None:
    """A C method bound to an object (``"{}-{}".format``, ``[].append``,
    ``dict.fromkeys``, ``(1).__add__``): its name and the object, which is
    part of what it does."""
    out.append(_len_prefixed(b"W", obj.__name__.encode("utf-8", "surrogatepass")))

    e._guarded(obj, lambda: e._feed_part(owner, out, obj, "the object it is bound to"))


def _enc_partial(e: Encoder, obj: Any, out: list[bytes]) -> None:
    """``functools.partial`` / ``partialmethod``: the function (by its
    fingerprint, through the encoder), the bound arguments and the keywords by
    name; a partial's own attributes (``p.attr = ...``) by name too."""
    out.append(b"Q" if isinstance(obj, functools.partial) else b"J")

    def action() -> None:
        keywords = obj.keywords or {}
        if not all(type(k) is str for k in keywords):
            raise Unhashable(obj, "its keyword names are not strings")
        attrs = getattr(obj, "__dict__", None) or {}
        if not isinstance(obj, functools.partial):  # partialmethod keeps its fields there
            attrs = {k: v for k, v in attrs.items() if k not in ("func", "args", "keywords")}
        if not all(type(k) is str for k in attrs):
            raise Unhashable(obj, "its attribute names are not strings")
        e._feed(obj.func, out)
        e._feed(tuple(obj.args), out)
        e._mapping(dict(sorted(keywords.items())), out)
        e._mapping(dict(sorted(attrs.items())), out)

    e._guarded(obj, action)




def _installed_callable_name(obj: Any) -> bytes | None:
    """``module.qualname|version`` of a callable of an installed package that
    is reachable by that name (numpy's array-function dispatchers such as
    ``np.mean``, method descriptors such as ``str.lower``, a library's
    ``Class.classmethod``), else ``None``.

    Reachable means: the ``getattr`` chain over the qualified name, from the
    module, gives back the object itself (an equal bound method for a
    classmethod).  Anything else (an instance with state, a method bound to
    some object, the user's code) is left to the other paths.
    """
    try:
        if not callable(obj):
            return None
        objclass = getattr(obj, "__objclass__", None)  # method / slot descriptors
        module = getattr(objclass if isinstance(objclass, type) else obj, "__module__", None)
        qualname = getattr(obj, "__qualname__", None)
        if type(module) is not str or type(qualname) is not str or is_user_module(module):
            return None
        target = lookup(module, qualname)
        if target is None:
            return None
        if target is not obj and not (
            type(obj) is types.MethodType and type(target) is types.MethodType and target == obj
        ):
            return None
        version = package_version(module)
    except Exception:  # noqa: BLE001 - odd objects (proxies, failing __getattr__): not by name
        return None
    return f"{module}.{qualname}|{version}".encode("utf-8", "surrogatepass")


def _enc_repr(tag: bytes) -> Callable[[Encoder, Any, list[bytes]], None]:
    def enc(e: Encoder, obj: Any, out: list[bytes]) -> None:
        text = f"{stable_type_name(type(obj))}|{obj!r}"
        out.append(_len_prefixed(tag, text.encode()))

    return enc


def _enc_datetime(e: Encoder, obj: Any, out: list[bytes]) -> None:
    text = f"{stable_type_name(type(obj))}|{obj.isoformat()}|{obj.tzinfo!r}"
    out.append(_len_prefixed(b"t", text.encode()))


def _enc_enum(e: Encoder, obj: Any, out: list[bytes]) -> None:
    # The class's code (for the user's enums) is in the ``K`` tag before this.
    name = obj.name
    if isinstance(name, str):
        out.append(_len_prefixed(b"E", b"%s.%s" % (_stable_name_bytes(type(obj)), name.encode())))
        if is_user_module(getattr(type(obj), "__module__", None)):
            # The user's member's value too (``A = 1`` edited to ``A = 5``),
            # or only its name when the value cannot be hashed.
            try:
                value = Encoder(e.ref_hook).encode(obj._value_)
            except (Unhashable, RecursionError):
                out.append(b"n")
            else:
                out.append(_len_prefixed(b"v", value))
        return
    # A Flag value that no member names (``Perm(0)``, unnamed bits): its value.
    out.append(_len_prefixed(b"E", _stable_name_bytes(type(obj)) + b"#"))
    e._feed(obj._value_, out)


def _enc_namedtuple_or_tuple(e: Encoder, obj: Any, out: list[bytes]) -> None:
    e._seq(b"t", obj, out)


def _enc_slice(e: Encoder, obj: Any, out: list[bytes]) -> None:
    out.append(b"x")
    for part in (obj.start, obj.stop, obj.step):
        e._feed(part, out)


_EXACT: dict[type, Callable[[Encoder, Any, list[bytes]], None]] = {
    type(None): _enc_none,
    bool: _enc_bool,
    int: _enc_int,
    float: _enc_float,
    complex: _enc_complex,
    str: _enc_str,
    bytes: _enc_bytes,
    bytearray: lambda e, o, out: out.append(_len_prefixed(b"y", bytes(o))),
    memoryview: lambda e, o, out: out.append(_len_prefixed(b"y", o.tobytes())),
    list: lambda e, o, out: e._seq(b"l", o, out),
    tuple: lambda e, o, out: e._seq(b"t", o, out),
    dict: lambda e, o, out: e._mapping(o, out),
    set: lambda e, o, out: e._unordered(b"S", o, out),
    frozenset: lambda e, o, out: e._unordered(b"Z", o, out),
    type: _enc_type,
    types.FunctionType: _enc_function,
    types.BuiltinFunctionType: _enc_builtin_function,
    types.MethodWrapperType: lambda e, o, out: _enc_bound_builtin(e, o, o.__self__, out),
    functools.partial: _enc_partial,
    functools.partialmethod: _enc_partial,
    range: _enc_repr(b"r"),
    slice: _enc_slice,
    type(Ellipsis): lambda e, o, out: out.append(b"."),
    # A module (e.g. captured by a closure) is identified by name, like a global.
    types.ModuleType: lambda e, o, out: out.append(_len_prefixed(b"M", o.__name__.encode())),
    decimal.Decimal: _enc_repr(b"m"),
    fractions.Fraction: _enc_repr(b"m"),
    uuid.UUID: _enc_repr(b"m"),
    datetime.datetime: _enc_datetime,
    datetime.date: _enc_repr(b"t"),
    datetime.time: _enc_datetime,
    datetime.timedelta: _enc_repr(b"t"),
}

# Subclasses of builtins (IntEnum, namedtuple, OrderedDict, PosixPath ...) are
# tagged with their own class name first (in ``_feed_other``), then encoded as
# their base.  Order matters: Enum before int, dataclasses handled separately.
_SUBCLASS: list[tuple[type, Callable[[Encoder, Any, list[bytes]], None]]] = [
    (enum.Enum, _enc_enum),
    (pathlib.PurePath, lambda e, o, out: _enc_str(e, o.as_posix(), out)),
    (bool, _enc_bool),
    (int, _enc_int),
    (float, _enc_float),
    (str, _enc_str),
    (bytes, _enc_bytes),
    (tuple, _enc_namedtuple_or_tuple),
    (list, lambda e, o, out: e._seq(b"l", o, out)),
    (dict, lambda e, o, out: e._mapping(o, out)),
    (frozenset, lambda e, o, out: e._unordered(b"Z", o, out)),
    (set, lambda e, o, out: e._unordered(b"S", o, out)),
    (datetime.datetime, _enc_datetime),
    (datetime.date, _enc_repr(b"t")),
    (functools.partial, _enc_partial),
    (functools.partialmethod, _enc_partial),
]


# Compiled regular expressions: by pattern and flags (the class name is in the tag).
normalize_token.register(re.Pattern, lambda p: (p.pattern, p.flags))


_DEFAULT_GETSTATE = getattr(object, "__getstate__", None)  # Python >= 3.11


def _plain_state(value: Any) -> bool:
    return value is None or type(value) is dict


def _items(mapping: dict | None, sort: bool, obj: Any) -> list[tuple[Any, Any]]:
    if not mapping:
        return []
    if not sort:
        return list(mapping.items())
    if not all(type(k) is str for k in mapping):
        raise Unhashable(obj, "its pickled state has attribute names that are not strings")
    return sorted(mapping.items())


def _slots_set(obj: Any, cls: type) -> bool:
    """Whether any ``__slots__`` attribute declared in Python is set on ``obj``."""
    for base in cls.__mro__:
        names = base.__dict__.get("__slots__", ())
        for name in (names,) if isinstance(names, str) else names:
            if name in ("__dict__", "__weakref__"):
                continue
            if name.startswith("__") and not name.endswith("__"):
                name = f"_{base.__name__.lstrip('_')}{name}"
            if hasattr(obj, name):
                return True
    return False


def _reduced(obj: Any, cls: type) -> tuple[Any, ...]:
    """``(args, kwargs items, state items, slot items, list items, dict items)``
    of an object whose ``__reduce_ex__(4)`` has the common, plain shape, else
    :class:`Unhashable`.

    Accepted: ``copyreg.__newobj__(cls, *args)`` / ``copyreg.__newobj_ex__(cls,
    args, kwargs)`` or ``cls(*args)`` itself as the callable, and as state
    ``None``, a dict or a ``(dict | None, dict | None)`` pair (``__dict__`` and
    slots).  Rejected: any other callable (a C type's opaque reconstructor, a
    global name), other state shapes (a custom ``__getstate__``'s tuple or
    blob), no state although the object has attributes (a custom
    ``__reduce__`` that may leave some out), and a state setter.
    """
    try:
        rv = obj.__reduce_ex__(4)
    except Exception as exc:  # locks, generators, open files, C objects ...
        raise Unhashable(obj, f"it cannot be pickled ({type(exc).__name__}: {exc})") from None
    if not isinstance(rv, tuple) or not 2 <= len(rv) <= 5:
        raise Unhashable(obj, "it pickles by reference to a global name, not by value")
    func, args = rv[0], rv[1]
    state = rv[2] if len(rv) > 2 else None
    listitems = rv[3] if len(rv) > 3 else None
    dictitems = rv[4] if len(rv) > 4 else None
    if type(args) is not tuple:
        raise Unhashable(obj, "its pickled form is not a class and plain data")
    kwargs: dict | None = None
    if func is copyreg.__newobj__ and args and args[0] is cls:
        args = args[1:]
    elif func is copyreg.__newobj_ex__ and len(args) == 3 and args[0] is cls:
        args, kwargs = args[1], args[2]
        if type(args) is not tuple or type(kwargs) is not dict:
            raise Unhashable(obj, "its pickled form is not a class and plain data")
    elif func is not cls:
        name = getattr(func, "__qualname__", None) or type(func).__qualname__
        raise Unhashable(obj, f"it pickles through {name}, not through its class and plain data")
    slots = None
    if type(state) is tuple and len(state) == 2 and _plain_state(state[0]) and _plain_state(state[1]):
        state, slots = state
    elif not _plain_state(state):
        raise Unhashable(obj, f"its pickled state is a {type(state).__qualname__}, not attribute data")
    if state is None and (getattr(obj, "__dict__", None) or (slots is None and _slots_set(obj, cls))):
        # A custom __reduce__ that keeps its attributes out of the state: it
        # may drop some, and two different objects must not hash alike.
        raise Unhashable(obj, "its pickled form leaves out its attributes")
    # Attribute dicts from the default __getstate__: their order is not part
    # of the value.  A custom __getstate__'s dict keeps its order.
    default_reduce = (
        getattr(cls, "__reduce_ex__", None) is object.__reduce_ex__
        and getattr(cls, "__reduce__", None) is object.__reduce__
    )
    default = default_reduce and getattr(cls, "__getstate__", None) is _DEFAULT_GETSTATE
    try:
        items = [] if listitems is None else list(listitems)
        pairs = [] if dictitems is None else [tuple(kv) for kv in dictitems]
    except Exception as exc:  # noqa: BLE001 - an iterator that cannot be read
        raise Unhashable(obj, f"its pickled items cannot be read ({type(exc).__name__}: {exc})") from None
    return (
        args,
        _items(kwargs, True, obj),  # keyword arguments: order is not semantic
        _items(state, default, obj),
        _items(slots, True, obj),
        items,
        pairs,
    )


def tokenize(*args: Any, **kwargs: Any) -> str:
    """Deterministic hex token of the given values.

    Raises
    ------
    HashingError
        When a value has no deterministic encoding.  Fix it by giving the class
        a ``__functionfuse_token__`` method or by registering a normalizer with
        ``functionfuse.hashing.normalize_token.register(cls)``.

    Examples
    --------
    >>> tokenize(1) == tokenize(1)
    True
    >>> tokenize(1) == tokenize("1")
    False
    >>> tokenize({"a": 1, "b": 2}) == tokenize({"b": 2, "a": 1})  # dicts are ordered
    False
    """
    try:
        data = Encoder().encode((args, kwargs))
    except Unhashable as exc:
        raise HashingError(
            f"cannot hash a value of type {_type_name(type(exc.obj))}: {exc.reason}. "
            "Give the class a __functionfuse_token__() method returning plain data, or "
            "register a normalizer with functionfuse.hashing.normalize_token.register(cls)."
        ) from None
    return hash_bytes(data)


# -- where a warning should point -------------------------------------------------

_PACKAGE_DIR = os.path.dirname(os.path.realpath(__file__)) + os.sep
_IMPORT_MACHINERY = os.path.dirname(os.path.realpath(importlib.__file__)) + os.sep
_LIBRARY_FILE: dict[str, bool] = {}


def _warnings_internal(filename: str) -> bool:
    # The frames ``warnings.warn`` itself skips when counting ``stacklevel``
    # (``_is_internal_frame`` in CPython's warnings module).
    return "importlib" in filename and "_bootstrap" in filename


def _library_file(filename: str) -> bool:
    """Whether a frame in ``filename`` is functionfuse's or the import machinery's."""
    try:
        return _LIBRARY_FILE[filename]
    except KeyError:
        pass
    if filename.startswith("<"):  # "<frozen runpy>", "<stdin>", "<string>" ...
        found = filename.startswith(("<frozen importlib", "<frozen runpy"))
    else:
        real = os.path.realpath(filename)
        found = (
            real.startswith(_PACKAGE_DIR)
            or real.startswith(_IMPORT_MACHINERY)
            or os.path.basename(real) == "runpy.py"
            or _warnings_internal(real)
        )
    _LIBRARY_FILE[filename] = found
    return found


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning point at the user's code.

    Call it in the function that calls :func:`warnings.warn` and pass the
    result straight on::

        warnings.warn(message, CacheWarning, stacklevel=user_stacklevel())

    The count is the one ``warnings.warn`` uses when called from that same
    function (the caller of ``user_stacklevel``): 1 is that function itself,
    2 its caller and so on, with the import system's ``_bootstrap`` frames
    not counted (``warnings.warn`` skips them too).  The frame it designates is
    the innermost one whose file is neither inside the functionfuse package
    nor part of the import machinery (``importlib``, ``runpy``).  When every
    frame is the library's, it designates the outermost one.

    >>> user_stacklevel()  # called from the user's code: that code itself
    1
    """
    frame = sys._getframe(1)
    level = 1
    while True:
        if not _library_file(frame.f_code.co_filename):
            return level
        back = frame.f_back
        while back is not None and _warnings_internal(back.f_code.co_filename):
            back = back.f_back
        if back is None:
            return level
        frame = back
        level += 1


# -- lazy registrations for scientific types -----------------------------------


@normalize_token.register_lazy("numpy")
def _register_numpy() -> None:
    import numpy as np

    def _dtype_text(dtype: Any) -> str:
        # Structured dtypes: '|V8' alone would not tell fields apart.
        return dtype.str if dtype.names is None and dtype.subdtype is None else repr(dtype.descr)

    @normalize_token.register(np.ndarray)
    def _array(x: Any) -> Any:
        if x.dtype.hasobject:
            return ("ndarray-object", x.shape, x.tolist())
        data = np.ascontiguousarray(x)
        digest = hashlib.sha256(data.view(np.uint8).reshape(-1) if data.size else b"").digest()
        return ("ndarray", _dtype_text(x.dtype), x.shape, digest)

    @normalize_token.register(np.ma.MaskedArray)
    def _masked(x: Any) -> Any:
        return ("masked", _array(np.ma.getdata(x)), _array(np.ma.getmaskarray(x)), x.fill_value)

    @normalize_token.register(np.generic)
    def _scalar(x: Any) -> Any:
        if x.dtype.hasobject:
            return ("npscalar-object", x.item())
        return ("npscalar", _dtype_text(x.dtype), x.tobytes())

    @normalize_token.register(np.dtype)
    def _dtype(x: Any) -> Any:
        return ("dtype", x.str, str(x))

    @normalize_token.register(np.random.Generator)
    def _generator(x: Any) -> Any:
        return ("Generator", type(x.bit_generator).__name__, x.bit_generator.state)

    @normalize_token.register(np.ufunc)
    def _ufunc(x: Any) -> Any:
        # numpy's own ufuncs by name; others (np.frompyfunc) share names.
        if getattr(np, x.__name__, None) is not x:
            raise Unhashable(x, f"the ufunc {x.__name__!r} is not numpy's own")
        return ("ufunc", x.__name__)

    @normalize_token.register(np.random.RandomState)
    def _randomstate(x: Any) -> Any:
        # The whole state: key and position, and the cached Gaussian
        # (``has_gauss``, ``gauss``) that the next normal draw returns.
        return ("RandomState", x.get_state(legacy=False))


@normalize_token.register_lazy("pandas")
def _register_pandas() -> None:
    import pandas as pd

    def _hashed(obj: Any) -> bytes:
        values = pd.util.hash_pandas_object(obj, index=False, categorize=True)
        return values.to_numpy().tobytes()

    @normalize_token.register(pd.Index)
    def _index(x: Any) -> Any:
        return ("Index", str(x.dtype), list(x.names), len(x), _hashed(x.to_series(index=None)))

    def _dtype_info(dtype: Any) -> Any:
        if isinstance(dtype, pd.CategoricalDtype):
            return ("category", _index(dtype.categories), bool(dtype.ordered))
        return str(dtype)

    @normalize_token.register(pd.Series)
    def _series(x: Any) -> Any:
        return ("Series", x.name, _dtype_info(x.dtype), _index(x.index), _hashed(x))

    @normalize_token.register(pd.DataFrame)
    def _frame(x: Any) -> Any:
        columns = [
            (name, _dtype_info(dtype), _hashed(x.iloc[:, i]))
            for i, (name, dtype) in enumerate(x.dtypes.items())
        ]
        return ("DataFrame", _index(x.columns), _index(x.index), columns)


@normalize_token.register_lazy("sklearn")
def _register_sklearn() -> None:
    from sklearn.base import BaseEstimator
    from sklearn.gaussian_process.kernels import Kernel

    # Set by set_output() / set_fit_request(): they change what the estimator
    # returns or is given, so they are part of its value.
    config = ("_sklearn_output_config", "_metadata_request")

    @normalize_token.register((BaseEstimator, Kernel))
    def _estimator(est: Any) -> Any:
        # Nested estimators and kernels among the parameters are normalized
        # again by the encoder.
        params = dict(sorted(est.get_params(deep=False).items()))
        attrs = getattr(est, "__dict__", {})
        fitted = {
            name: value
            for name, value in sorted(attrs.items())
            if name.endswith("_") and not name.startswith("_")
        }
        settings = {name: attrs[name] for name in config if name in attrs}
        return (stable_type_name(type(est)), params, fitted, settings)
