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
  their pickle bytes (pickles are not canonical).

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

import dataclasses
import datetime
import decimal
import enum
import fractions
import hashlib
import pathlib
import types
import uuid
from collections.abc import Callable
from typing import Any

from .errors import HashingError

__all__ = ["normalize_token", "tokenize", "hash_bytes", "Dispatch", "Unhashable"]

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
        if found is None:
            toplevel = cls.__module__.partition(".")[0]
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
    return f"{cls.__module__}.{cls.__qualname__}"


def _len_prefixed(tag: bytes, data: bytes) -> bytes:
    return b"%s%d:%s" % (tag, len(data), data)


class Encoder:
    """Canonical, type-tagged byte encoding of a value.

    ``ref_hook`` lets the caching layer encode graph references (a node passed
    as an argument) as the key of that node: it returns bytes for objects it
    handles and ``None`` otherwise.
    """

    __slots__ = ("ref_hook", "_active")

    def __init__(self, ref_hook: Callable[[Any], bytes | None] | None = None) -> None:
        self.ref_hook = ref_hook
        self._active: set[int] = set()

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

    def _feed_other(self, obj: Any, cls: type, out: list[bytes]) -> None:
        custom = getattr(cls, "__functionfuse_token__", None)
        if custom is not None:
            out.append(_len_prefixed(b"U", _type_name(cls).encode()))
            self._guarded(obj, lambda: self._feed(_call_normalizer(custom, obj), out))
            return
        func = normalize_token.dispatch(cls)
        if func is not None:
            out.append(_len_prefixed(b"R", _type_name(cls).encode()))
            self._guarded(obj, lambda: self._feed(_call_normalizer(func, obj), out))
            return
        if dataclasses.is_dataclass(cls):
            fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
            out.append(_len_prefixed(b"D", _type_name(cls).encode()))
            self._guarded(obj, lambda: self._mapping(fields, out))
            return
        for base, enc in _SUBCLASS:
            if isinstance(obj, base):
                out.append(_len_prefixed(b"K", _type_name(cls).encode()))
                enc(self, obj, out)
                return
        raise Unhashable(
            obj,
            f"no deterministic token for a value of type {_type_name(cls)}",
        )

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


def _enc_type(e: Encoder, obj: Any, out: list[bytes]) -> None:
    out.append(_len_prefixed(b"C", _type_name(obj).encode()))


def _enc_function(e: Encoder, obj: Any, out: list[bytes]) -> None:
    from .fingerprint import function_fingerprint

    out.append(_len_prefixed(b"P", function_fingerprint(obj).encode()))


def _enc_builtin_function(e: Encoder, obj: Any, out: list[bytes]) -> None:
    name = f"{getattr(obj, '__module__', None)}.{obj.__qualname__}"
    out.append(_len_prefixed(b"B", name.encode()))


def _enc_repr(tag: bytes) -> Callable[[Encoder, Any, list[bytes]], None]:
    def enc(e: Encoder, obj: Any, out: list[bytes]) -> None:
        text = f"{_type_name(type(obj))}|{obj!r}"
        out.append(_len_prefixed(tag, text.encode()))

    return enc


def _enc_datetime(e: Encoder, obj: Any, out: list[bytes]) -> None:
    text = f"{_type_name(type(obj))}|{obj.isoformat()}|{obj.tzinfo!r}"
    out.append(_len_prefixed(b"t", text.encode()))


def _enc_enum(e: Encoder, obj: Any, out: list[bytes]) -> None:
    out.append(_len_prefixed(b"E", f"{_type_name(type(obj))}.{obj.name}".encode()))


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
]


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

    @normalize_token.register(np.random.RandomState)
    def _randomstate(x: Any) -> Any:
        return ("RandomState", _array(x.get_state(legacy=False)["state"]["key"]),
                x.get_state(legacy=False)["state"]["pos"])


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
