"""Split a result into a JSON tree and parts in plain formats, and join them back (store v2).

This is the layer between a node's result and the objects of a store (see
``docs/format.md``, "Manifest" and "Part formats").  It knows nothing about
where bytes live: :func:`split` returns the manifest's ``result`` tree and a
list of :class:`Part` (each writes its bytes to a file object), and
:func:`join` rebuilds the value from the tree, the manifest's ``parts``
entries and one reader per part.

The ``result`` tree
-------------------
A node is a JSON object, one of:

Containers
    ``{"t": "list", "items": [node, ...]}``, ``{"t": "tuple", "items": [...]}``,
    ``{"t": "dict", "items": [[key, node], ...]}``.  Only exact ``list``,
    ``tuple`` and ``dict`` are containers.  Dict items keep their order, and a
    key is a JSON scalar decoded by type: string, integer (``1``), float
    (``1.0``: a number written with a fraction or exponent is a float), ``true``
    / ``false``, ``null``.  So ``{1: a}``, ``{"1": a}``, ``{1.0: a}`` and
    ``{True: a}`` stay distinct.  A dict with any other key (an int outside
    the signed 64-bit range, a non-finite float, a tuple, a ``str`` subclass
    ...) is a pickled leaf.
``{"json": value}``
    Plain JSON data: a string, an integer in ``[-2**63, 2**63)``, a finite
    float, ``true``/``false``/``null``, or a JSON *array* of such (nested),
    which decodes to Python lists.  An exact ``list`` whose items are all such
    leaves is written in this compact form.  JSON objects never appear here
    (the writer always uses ``{"t": "dict"}``, whose item order survives
    re-serialisation with sorted keys); a reader accepts them as dicts.
``{"float": "nan" | "inf" | "-inf"}``
    A non-finite float.  A NaN whose bits are not the canonical quiet NaN
    ``0x7ff8000000000000`` adds ``"bits": "<16 hex digits>"`` (the IEEE-754
    bits as an integer), so a NaN's sign and payload survive too.
``{"int": "-0x1f..."}``
    An int outside ``[-2**63, 2**63)``, in Python's ``hex()`` notation.
``{"bytes": "<base64>"}``
    A ``bytes`` value (standard base64 alphabet, with padding).
``{"numpy": "<dtype.str>", "json": value}`` / ``{"numpy": "<dtype.str>", "hex": "..."}``
    A numpy scalar (``np.float64(0.5)``, ``np.int32(3)``, ``np.datetime64``
    ...).  ``json`` for bool, integer (in the JSON range) and finite float
    dtypes up to 8 bytes, whose value converts exactly; otherwise ``hex``, the
    scalar's raw bytes in that dtype (``np.frombuffer``).  Structured scalars
    are pickled.  A reader that ignores ``numpy`` still gets the right value
    from ``json``.
``{"part": i}``
    Part ``i`` of the manifest's ``parts``, decoded by its format.  A ``json``
    part holds a *tree node* (this grammar, which may itself refer to parts),
    so a large subtree keeps its types.  The same index may appear more than
    once: it decodes to one object (identity kept).
``{"part": i, "item": k}``
    Item ``k`` of the list that pickle part ``i`` decodes to (below).

How a value is split
--------------------
- npy / parquet: see :mod:`~functionfuse.serializers.formats` for the exact
  rules (arrays of non-object dtype; DataFrames, Series and pyarrow Tables
  that parquet gives back with the same dtypes, labels and index, checked by
  rules and by a probe).  The same array or frame object found twice is one
  part referenced twice.
- Pickle: every leaf no plain format holds (other objects, subclasses of
  list/tuple/dict such as namedtuple or OrderedDict, dicts with keys JSON
  cannot type, containers nested deeper than ``max_depth``) goes into **one**
  pickle part holding the list of those leaves, one pickle stream, so objects
  the leaves share stay shared.  When the whole result is such a leaf, the
  part holds the value itself and the tree is ``{"part": 0}``.
- Identity: the whole value is pickled (one part, tree ``{"part": 0}``) when
  the tree would lose identity: the same ``list`` or ``dict`` object reached
  twice, a container that contains itself, or an object that a pickled leaf
  refers to and that is also a container or an npy/parquet part elsewhere in
  the tree (found from the pickler's memo).  Tuples, strings, numbers and
  bytes are immutable and are not tracked: a tuple reached twice is written
  twice.  Memory shared between different arrays (views) is not kept, as with
  pickle.
- Size: any node whose encoded size, estimated, exceeds ``inline_limit``
  (64 KiB) becomes a ``json`` part, bottom-up, so the manifest's tree stays
  small.
- Safe mode (``safe=True``): anything that would be pickled raises
  :class:`~functionfuse.errors.SerializationError` naming its path in the value
  (``result['model']``), its type and the reason; :func:`join` refuses to
  decode pickle parts.

Importing this module imports no numpy, pandas or pyarrow: a leaf's type is
checked by its module name against ``sys.modules`` first.
"""

from __future__ import annotations

import base64
import math
import struct
import sys
from typing import IO, Any, Mapping, Sequence

from ..errors import SerializationError, StorageError
from . import formats, persistent, schemas
from .formats import JSON, MMAP_THRESHOLD, NPY, PARQUET, PICKLE, Source, type_name

__all__ = [
    "Part",
    "split",
    "plain_tree",
    "join",
    "INLINE_LIMIT",
    "MAX_DEPTH",
    "MMAP_THRESHOLD",
    "NPY",
    "PARQUET",
    "JSON",
    "PICKLE",
]

INLINE_LIMIT = 64 * 1024
MAX_DEPTH = 64
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1
_QUIET_NAN = 0x7FF8000000000000


class Part:
    """One part of a split result.

    ``format`` is ``"npy"``, ``"parquet"``, ``"json"`` or ``"pickle"``;
    ``info`` a small JSON-able dict for the manifest (npy: ``dtype`` (the
    ``.npy`` descr), ``shape``, ``fortran_order``; parquet: ``type``
    (``pandas.DataFrame`` / ``pandas.Series`` / ``pyarrow.Table``), ``rows``,
    ``columns`` (the first 256, plus ``ncolumns`` past that), and what the
    reader restores: ``name``, ``object_columns``, ``columns_dtype``,
    ``index_freq``; json: ``t``; pickle: ``type``, or ``types`` for a list of
    pickled leaves).  :func:`join` needs ``format`` and ``info``.
    """

    __slots__ = ("format", "info", "_payload")

    def __init__(self, fmt: str, info: dict, payload: Any) -> None:
        self.format = fmt
        self.info = info
        self._payload = payload

    def write(self, f: IO[bytes], compression: Any = None) -> None:
        """Stream the part's bytes into ``f``; only ``f.write`` is called.

        ``compression`` reaches formats that compress inside the file (parquet).
        """
        formats.encode(self.format, self._payload, f, compression)

    def to_bytes(self) -> bytes:
        """The part's bytes (what :meth:`write` writes)."""
        import io

        buf = io.BytesIO()
        self.write(buf)
        return buf.getvalue()

    def entry(self) -> dict:
        """``{"format": ..., "info": ...}``: the manifest fields this layer owns."""
        return {"format": self.format, "info": self.info}

    def __repr__(self) -> str:
        return f"Part({self.format!r}, {self.info!r})"


# --------------------------------------------------------------------------
# split


def _fmt_path(path: Any) -> str:
    keys = []
    while path is not None:
        path, key = path
        keys.append(key)
    return "result" + "".join(f"[{k!r}]" for k in reversed(keys))


class _Whole(Exception):
    """The tree cannot keep identity: pickle the whole value."""


def _valid_key(k: Any) -> str | None:
    """Why ``k`` cannot be a tree dict key, or None when it can."""
    t = type(k)
    if t is str or t is bool or k is None:
        return None
    if t is int:
        return None if _INT_MIN <= k <= _INT_MAX else "an int key outside the signed 64-bit range"
    if t is float:
        return None if math.isfinite(k) else "a non-finite float key"
    return f"a key of type {type_name(k)}"


_FLAT = frozenset({str, int, float, bool, type(None)})


def _flat_json(x: list) -> tuple[dict, int] | None:
    """Fast path: a list of JSON scalars only, as one ``{"json": [...]}`` node (None if not)."""
    types = set(map(type, x))
    if not types <= _FLAT:
        return None
    if int in types:
        ints = [v for v in x if type(v) is int]
        if min(ints) < _INT_MIN or max(ints) > _INT_MAX:
            return None
    if float in types and not all(map(math.isfinite, [v for v in x if type(v) is float])):
        return None
    size = 24 * len(x) + 24
    if str in types:
        size += sum(len(v) for v in x if type(v) is str)
    return {"json": list(x)}, size


def _float_node(x: float) -> dict:
    if x != x:
        bits = struct.unpack("<Q", struct.pack("<d", x))[0]
        node: dict = {"float": "nan"}
        if bits != _QUIET_NAN:
            node["bits"] = f"{bits:016x}"
        return node
    return {"float": "inf" if x > 0 else "-inf"}


class _Splitter:
    def __init__(self, safe: bool, inline_limit: int, max_depth: int, persistence: Any = None) -> None:
        self.safe = safe
        self.persistence = persistence
        self.inline_limit = inline_limit
        self.max_depth = max_depth
        self.parts: list[Part] = []
        self.json_parts: list[tuple[Part, dict]] = []
        self.leaf_nodes: dict[int, dict] = {}  # id -> node of objects stored as parts or pickled
        self.containers: dict[int, Any] = {}  # id -> path of list/dict containers in the tree
        self.tracked: dict[int, Any] = {}  # id -> object whose identity the tree must keep
        self.pickled: list[Any] = []
        self.pickled_nodes: list[dict] = []
        self.pickled_paths: list[Any] = []

    # The walk returns (node, estimated encoded size).
    def walk(self, x: Any, path: Any, depth: int) -> tuple[dict, int]:
        t = type(x)
        if t is str:
            node, size = {"json": x}, len(x) + 12
        elif x is None or t is bool:
            return {"json": x}, 14
        elif t is int:
            if _INT_MIN <= x <= _INT_MAX:
                return {"json": x}, 30
            node = {"int": hex(x)}
            size = len(node["int"]) + 12
        elif t is float:
            return ({"json": x}, 32) if math.isfinite(x) else (_float_node(x), 48)
        elif t is bytes:
            node = {"bytes": base64.b64encode(x).decode("ascii")}
            size = len(node["bytes"]) + 13
        else:
            known = self.leaf_nodes.get(id(x))
            if known is not None:
                return known, 32
            if t is list or t is tuple or t is dict:
                node, size = self.container(x, t, path, depth)
            elif t.__module__ == "numpy" and self.is_numpy_scalar(x):
                node, size = self.numpy_scalar(x, path)
            else:
                return self.leaf(x, path)
        if size > self.inline_limit:
            return self.json_part(node)
        return node, size

    def container(self, x: Any, t: type, path: Any, depth: int) -> tuple[dict, int]:
        if depth >= self.max_depth:
            return self.pickle_leaf(x, path, f"nested deeper than {self.max_depth} containers")
        if t is dict:
            for k in x:
                reason = _valid_key(k)
                if reason is not None:
                    return self.pickle_leaf(x, path, f"a dict with {reason} ({k!r:.40})")
        if t is not tuple:
            seen = self.containers.get(id(x))
            if seen is not None:
                raise _Whole(
                    f"{_fmt_path(path)} is the same {t.__name__} object as {_fmt_path(seen)} "
                    "(shared references and cycles are kept only by pickle)"
                )
            self.containers[id(x)] = path
            self.tracked[id(x)] = x
        size = 24
        if t is dict:
            items: list = []
            for k, v in x.items():
                node, s = self.walk(v, (path, k), depth + 1)
                items.append([k, node])
                size += s + (len(k) if type(k) is str else 24) + 6
            return {"t": "dict", "items": items}, size
        if t is list:
            flat = _flat_json(x)
            if flat is not None:
                return flat
        items = []
        compact = t is list
        for i, v in enumerate(x):
            node, s = self.walk(v, (path, i), depth + 1)
            items.append(node)
            size += s + 1
            if compact and (len(node) != 1 or "json" not in node):
                compact = False
        if compact:
            return {"json": [n["json"] for n in items]}, size
        return {"t": t.__name__, "items": items}, size

    @staticmethod
    def is_numpy_scalar(x: Any) -> bool:
        np = sys.modules.get("numpy")
        return np is not None and isinstance(x, np.generic)

    def numpy_scalar(self, x: Any, path: Any) -> tuple[dict, int]:
        dt = x.dtype
        if dt.fields is not None or dt.hasobject or dt.metadata:
            return self.pickle_leaf(x, path, f"a structured numpy scalar of dtype {dt!r}")
        kind = dt.kind
        value: Any = None
        if kind == "b":
            value = bool(x)
        elif kind in "iu":
            value = int(x)
            if not _INT_MIN <= value <= _INT_MAX:
                value = None
        elif kind == "f" and dt.itemsize <= 8:
            value = float(x)
            if not math.isfinite(value):
                value = None
        if value is not None:
            return {"numpy": dt.str, "json": value}, 48
        raw = x.tobytes().hex()
        return {"numpy": dt.str, "hex": raw}, len(raw) + 40

    def leaf(self, x: Any, path: Any) -> tuple[dict, int]:
        if self.persistence is not None:
            serializer = self.persistence.match(type(x))
            if serializer is not None:
                info = {"serializer": serializer.name, "type": type_name(x), "side": self.persistence.side,
                        "version": str(getattr(serializer, "version", ""))}
                return self.add_part(x, persistent.SERIALIZER, (serializer, x, self.persistence), info)
        found = formats.classify(x)
        if not isinstance(found, tuple):
            return self.pickle_leaf(x, path, found or "no plain format holds it")
        fmt, payload, info = found
        return self.add_part(x, fmt, payload, info)

    def add_part(self, x: Any, fmt: str, payload: Any, info: dict) -> tuple[dict, int]:
        node = {"part": len(self.parts)}
        self.parts.append(Part(fmt, info, payload))
        self.leaf_nodes[id(x)] = node
        self.tracked[id(x)] = x
        return node, 16

    def pickle_leaf(self, x: Any, path: Any, reason: str) -> tuple[dict, int]:
        if self.safe:
            raise SerializationError(
                f"{_fmt_path(path)} is a {type_name(x)}, which only pickle can store ({reason}); "
                "safe mode stores no pickle"
            )
        node: dict = {"part": None, "item": len(self.pickled)}
        self.pickled.append(x)
        self.pickled_nodes.append(node)
        self.pickled_paths.append(path)
        self.leaf_nodes[id(x)] = node
        return node, 32

    def json_part(self, node: dict) -> tuple[dict, int]:
        info: dict = {"t": node.get("t", next(iter(node)))}
        if "items" in node:
            info["items"] = len(node["items"])
        part = Part(JSON, info, None)
        self.json_parts.append((part, node))
        ref = {"part": len(self.parts)}
        self.parts.append(part)
        return ref, 16

    def finish(self) -> None:
        """Write the pickle part of the pickled leaves, then encode the json parts."""
        if self.pickled:
            info: dict = {"types": [type_name(x) for x in self.pickled]}
            persistence = self.persistence
            try:
                if persistence is not None and persistence.matters:
                    data, pids, memo = persistent.dumps(self.pickled, persistence)
                    if pids:
                        persistent.describe_pids(info, pids, persistence)
                else:
                    data, memo = formats.dumps_pickle(self.pickled)
            except Exception as exc:  # noqa: BLE001
                raise self.pickle_error(exc) from exc
            shared = [key for key in memo if key in self.tracked]
            if shared:
                where = [
                    _fmt_path(self.containers[key]) if key in self.containers else type_name(obj)
                    for key, obj in ((k, self.tracked[k]) for k in shared[:3])
                ]
                raise _Whole(f"a pickled leaf refers to objects also stored in the tree ({', '.join(where)})")
            index = len(self.parts)
            records = schemas.schemas_of(self.pickled)
            if records:
                info["schemas"] = records
            self.parts.append(Part(PICKLE, info, data))
            for node in self.pickled_nodes:
                node["part"] = index
        for part, node in self.json_parts:
            part._payload = formats.dumps_json(node)

    def pickle_error(self, exc: BaseException) -> SerializationError:
        for x, path in zip(self.pickled, self.pickled_paths):
            try:
                formats.dumps_pickle(x)
            except Exception as inner:  # noqa: BLE001
                return SerializationError(
                    f"{_fmt_path(path)} ({type_name(x)}) cannot be pickled: {type(inner).__name__}: {inner}"
                )
        return SerializationError(f"the pickled parts of the result cannot be pickled: {exc}")


def _pickle_whole(value: Any, persistence: Any = None) -> tuple[dict, list[Part]]:
    info: dict = {"type": type_name(value)}
    try:
        if persistence is not None and persistence.matters:
            data, pids, _ = persistent.dumps(value, persistence)
            if pids:
                persistent.describe_pids(info, pids, persistence)
        else:
            data, _ = formats.dumps_pickle(value)
    except Exception as exc:  # noqa: BLE001
        raise SerializationError(f"result ({type_name(value)}) cannot be pickled: {exc}") from exc
    records = schemas.schemas_of([value])
    if records:
        info["schemas"] = records
    return {"part": 0}, [Part(PICKLE, info, data)]


def _plain_leaf(v: Any) -> tuple[dict, int] | None:
    """A JSON scalar or flat list of them as :meth:`_Splitter.walk` encodes it, or None."""
    t = type(v)
    if t is str:
        return {"json": v}, len(v) + 12
    if v is None or t is bool:
        return {"json": v}, 14
    if t is int:
        return ({"json": v}, 30) if _INT_MIN <= v <= _INT_MAX else None
    if t is float:
        return ({"json": v}, 32) if math.isfinite(v) else None
    if t is list:
        return _flat_json(v)
    return None


def plain_tree(value: Any, inline_limit: int = INLINE_LIMIT) -> dict | None:
    """The tree :func:`split` gives a small plain result, without its general walk, or None.

    Plain means a JSON scalar, a flat list of them, or a dict of string keys to
    those, whose tree stays inline (no parts).  The tree is the very one
    ``split`` returns (a test holds them equal), so a reader never tells the
    paths apart; anything else (nested containers, tuples, a list held twice,
    big values) returns None and takes the general path.
    """
    if type(value) is dict:
        size = 24
        items = []
        lists: set[int] = set()
        for k, v in value.items():
            if type(k) is not str:
                return None
            leaf = _plain_leaf(v)
            if leaf is None:
                return None
            if type(v) is list:
                if id(v) in lists:
                    return None  # a shared list: split refuses it (pickled whole)
                lists.add(id(v))
            items.append([k, leaf[0]])
            size += leaf[1] + len(k) + 6
        return {"t": "dict", "items": items} if size <= inline_limit else None
    leaf = _plain_leaf(value)
    if leaf is None or leaf[1] > inline_limit:
        return None
    return leaf[0]


def split(
    value: Any, *, safe: bool = False, inline_limit: int = INLINE_LIMIT, max_depth: int = MAX_DEPTH,
    persistence: Any = None,
) -> tuple[dict, list[Part]]:
    """Split ``value`` into the manifest's ``result`` tree and its parts.

    Returns ``(tree, parts)``: ``tree`` is JSON-able (the module doc gives its
    grammar), ``parts[i]`` is the :class:`Part` that ``{"part": i}`` names.
    With ``safe=True`` a value that needs pickle raises
    :class:`~functionfuse.errors.SerializationError` naming where it sits.
    ``persistence`` (a :class:`~.persistent.Persistence`) hands objects of
    persistent serializers to them (``serializer`` parts); their side data is
    written when the part is written.
    """
    splitter = _Splitter(safe, inline_limit, max_depth, persistence)
    try:
        tree, _ = splitter.walk(value, None, 0)
        if splitter.pickled and tree is splitter.pickled_nodes[0]:
            return _pickle_whole(value, persistence)  # the result itself is the one pickled leaf
        splitter.finish()
    except _Whole as whole:
        if safe:
            raise SerializationError(f"{whole}; safe mode stores no pickle") from None
        return _pickle_whole(value, persistence)
    return tree, splitter.parts


# --------------------------------------------------------------------------
# join


def _entry(part: Any) -> tuple[str, dict]:
    if isinstance(part, Mapping):
        return part["format"], part.get("info") or {}
    return part.format, part.info or {}


def _copy_json(v: Any) -> Any:
    t = type(v)
    if t is list:
        return [_copy_json(x) for x in v]
    if t is dict:
        return {k: _copy_json(x) for k, x in v.items()}
    return v


def _float_value(node: dict) -> float:
    bits = node.get("bits")
    if bits is not None:
        return struct.unpack("<d", struct.pack("<Q", int(bits, 16)))[0]
    word = node["float"]
    if word not in ("nan", "inf", "-inf"):
        raise SerializationError(f"bad float node {node!r}")
    return float(word)


def _numpy_value(node: dict) -> Any:
    import numpy as np

    dt = np.dtype(node["numpy"])
    if "hex" in node:
        raw = bytes.fromhex(node["hex"])
        if dt.itemsize == 0:
            return np.zeros((), dtype=dt)[()]
        return np.frombuffer(raw, dtype=dt)[0]
    return dt.type(node["json"])


class _Joiner:
    copy = True  # copy JSON lists out of the tree (off when the tree is used once)

    def __init__(self, parts: Sequence[Any], readers: Any, safe: bool, mmap_threshold: int | None) -> None:
        self.parts = parts
        self.readers = readers
        self.safe = safe
        self.mmap_threshold = mmap_threshold
        self.done: dict[int, Any] = {}
        self.active: set[int] = set()

    def node(self, n: Any, path: Any) -> Any:
        if type(n) is not dict:
            raise SerializationError(f"{_fmt_path(path)}: a tree node must be a JSON object, not {n!r:.60}")
        t = n.get("t")
        if t is not None:
            items = n["items"]
            if t == "list":
                return [self.node(c, (path, i)) for i, c in enumerate(items)]
            if t == "tuple":
                return tuple(self.node(c, (path, i)) for i, c in enumerate(items))
            if t == "dict":
                out = {}
                copy = self.copy
                for k, c in items:
                    if type(k) is not str and _valid_key(k) is not None:
                        raise SerializationError(f"{_fmt_path(path)}: bad dict key {k!r:.60}")
                    if type(c) is dict and len(c) == 1 and "json" in c:  # a plain leaf: the common case
                        v = c["json"]
                        out[k] = _copy_json(v) if copy and type(v) is list else v
                    else:
                        out[k] = self.node(c, (path, k))
                return out
            raise SerializationError(f"{_fmt_path(path)}: unknown container {t!r}")
        if "part" in n:
            value = self.part(n["part"], path)
            if "item" in n:
                value = value[n["item"]]
            return value
        if "numpy" in n:
            return _numpy_value(n)
        if "json" in n:
            return _copy_json(n["json"]) if self.copy else n["json"]
        if "float" in n:
            return _float_value(n)
        if "int" in n:
            return int(n["int"], 16)
        if "bytes" in n:
            return base64.b64decode(n["bytes"], validate=True)
        raise SerializationError(f"{_fmt_path(path)}: unknown tree node {n!r:.80}")

    def part(self, i: Any, path: Any) -> Any:
        if i in self.done:
            return self.done[i]
        if type(i) is not int or not 0 <= i < len(self.parts):
            raise SerializationError(
                f"{_fmt_path(path)}: no part {i!r} (the manifest lists {len(self.parts)})"
            )
        if i in self.active:
            raise SerializationError(f"{_fmt_path(path)}: json part {i} refers to itself")
        fmt, info = _entry(self.parts[i])
        if fmt == PICKLE and self.safe:
            types = info.get("type") or ", ".join(info.get("types", ())) or "?"
            raise SerializationError(
                f"{_fmt_path(path)} is stored as a pickle (part {i}: {types}); safe mode does not unpickle"
            )
        try:
            value = formats.decode(fmt, info, Source(self.readers[i]), mmap_threshold=self.mmap_threshold)
        except (SerializationError, StorageError):
            raise  # the storage's own verdict (a damaged object, a missing one) names it already
        except Exception as exc:  # noqa: BLE001
            raise SerializationError(f"{_fmt_path(path)}: cannot read part {i} ({fmt}): {exc}") from exc
        if fmt == JSON:
            self.active.add(i)
            try:
                value = self.node(value, path)
            finally:
                self.active.discard(i)
        self.done[i] = value
        return value


NOT_PLAIN = object()


def plain_value(tree: Any) -> Any:
    """The value of a tree that is a JSON leaf, or a dict of string keys to JSON leaves,
    copied (lists are copied) -- the usual small result; :data:`NOT_PLAIN` for any other
    tree (use :func:`join`)."""
    if type(tree) is not dict:
        return NOT_PLAIN
    if len(tree) == 1 and "json" in tree:
        v = tree["json"]
        return _copy_json(v) if type(v) in (list, dict) else v
    if tree.get("t") != "dict" or len(tree) != 2:
        return NOT_PLAIN
    out = {}
    for item in tree["items"]:
        if type(item) is not list or len(item) != 2:
            return NOT_PLAIN
        k, c = item
        if type(k) is not str or type(c) is not dict or len(c) != 1 or "json" not in c:
            return NOT_PLAIN
        v = c["json"]
        out[k] = _copy_json(v) if type(v) in (list, dict) else v
    return out


def join(
    tree: Any,
    parts: Sequence[Any],
    readers: Any,
    *,
    safe: bool = False,
    mmap_threshold: int | None = MMAP_THRESHOLD,
    copy: bool = True,
) -> Any:
    """Rebuild a value from its ``result`` tree.

    ``parts[i]`` is the manifest's part entry (a dict with ``format`` and
    ``info``) or a :class:`Part`; ``readers[i]`` (any object indexable by
    ``i``: a list, a dict) gives part ``i``'s stored bytes, after the storage
    has checked and decompressed them: ``bytes``, a local path, a binary file,
    or a callable opening one (see :class:`~functionfuse.serializers.formats.Source`).
    Only the parts the tree names are read, each once.  An ``npy`` part given
    as a path of ``mmap_threshold`` bytes or more is memory-mapped
    copy-on-write (``None`` never maps).  With ``safe=True`` a pickle part
    raises :class:`~functionfuse.errors.SerializationError` instead of running
    ``pickle.load``.  ``copy=False`` hands out the tree's JSON lists themselves
    (for a tree parsed for this call only).
    """
    joiner = _Joiner(parts, readers, safe, mmap_threshold)
    joiner.copy = copy
    return joiner.node(tree, None)
