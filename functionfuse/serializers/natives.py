"""Native model and table formats of result parts (store v2): skops, safetensors, boosting models, polars, xarray.

:mod:`~functionfuse.serializers.formats` hands a leaf here when the top-level
name of its type's module is in :data:`TOPS`; :func:`classify` answers as
:func:`formats.classify <functionfuse.serializers.formats.classify>` does:
``(format, payload, info)``, a reason to pickle (``str``), or None (not a type
of this module).  :data:`ENCODERS` write a payload with ``f.write`` only and
:data:`DECODERS` read a part back from a seekable binary file.

As in :mod:`~functionfuse.serializers.formats`, no library is imported to
find out whether a value is one of its types: the library is taken from
``sys.modules``.  A format's writer (skops, safetensors) is imported when a
value of its type appears.  Every rule below is *exact*: a value is written in
a native format only when reading it back gives a value equal to the one
written, to the bit, with the same types, or to what ``pickle`` would give
back; anything else gets a reason and is pickled.  Checks that need the
written form (a *probe*) write and read it back in memory while classifying.

Rules
-----
``skops`` (scikit-learn estimators)
    The type's module is under ``sklearn`` (the exact scikit-learn class: a
    user's subclass lives in the user's module) and it is a
    ``sklearn.base.BaseEstimator``; this includes ``Pipeline``,
    ``ColumnTransformer`` and other meta-estimators, whatever they hold.  The
    estimator is written with ``skops.io.dumps``; then ``get_untrusted_types``
    of those bytes must be empty (loading needs no trust beyond skops' default
    trusted types: functions, lambdas, trees of ``sklearn.tree`` and other
    types skops does not trust by default send the estimator to pickle), and a
    probe ``skops.io.loads`` (default trust) must give back an object equal to
    the estimator: same types, attributes (key types and order of dicts
    included; skops turns ``{1: a, "1": b}`` into one key), float bits, array
    dtypes, shapes and memory order, and shared sub-objects.  The bytes are
    skops' own, which name arrays by object ids: the same estimator written
    twice is not byte-identical.  ``info``: ``type``, ``class``, ``sklearn`` and
    ``skops`` versions.
    Read with ``skops.io.loads`` and skops' default trusted types only.
``safetensors`` (PyTorch)
    A ``torch.Tensor`` or ``torch.nn.Parameter`` (exact types), or a state dict:
    a ``collections.OrderedDict`` (what ``Module.state_dict()`` returns) whose
    keys are all ``str`` and values all exact ``torch.Tensor``.  (An exact
    ``dict`` of tensors is a container of the result tree: each tensor is a
    part of its own.)  Every tensor must be dense (``torch.strided``), on the
    CPU, contiguous, of a dtype safetensors writes and reads back (a probe per
    dtype: not ``complex128``, quantized or sub-byte dtypes), without
    conjugate / negative bits, dimension names, Python attributes or backward
    hooks.  Kept: dtype, shape, bits, ``requires_grad`` (restored with
    ``requires_grad_``; like pickle, a non-leaf tensor comes back as a leaf and
    ``.grad`` is not kept), key order, the container type and a state dict's
    ``_metadata`` (module versions).  Tensors of a state dict that share memory
    (tied weights) are written once: another key that is the same tensor
    object, or the same view of the same storage (offset, shape, strides,
    dtype), is recorded as an alias of the first and comes back as the same
    object / the same view of the loaded storage; any other overlap is
    pickled.  Storage beyond a tensor's own elements (a tensor that is a slice
    of a larger one) is not kept, as with ``npy``.  The restore data (key
    order, aliases, ``requires_grad``, container) is the JSON string under
    ``"functionfuse"`` in the file's ``__metadata__``; the single tensor of a
    tensor part is named ``"tensor"``.  ``info``: ``type``, ``tensors``,
    ``dtypes``, ``nbytes``, and ``shape`` / ``dtype`` / ``requires_grad`` for a
    single tensor.
``xgboost`` / ``lightgbm`` / ``catboost``
    Exact types: ``xgboost.Booster`` and the scikit-learn API classes
    (``XGBModel``, ``XGBClassifier``, ``XGBRegressor``, ``XGBRanker``,
    ``XGBRFClassifier``, ``XGBRFRegressor``); ``lightgbm.Booster``,
    ``LGBMModel``, ``LGBMClassifier``, ``LGBMRegressor``, ``LGBMRanker``;
    ``CatBoost``, ``CatBoostClassifier``, ``CatBoostRegressor``,
    ``CatBoostRanker``.  Fitted models only.  The part is the library's native
    model file: xgboost's UBJSON model (``Booster.save_raw("ubj")``),
    LightGBM's text model (``model_to_string``, UTF-8), CatBoost's ``cbm``
    (what ``save_model(format="cbm")`` writes).  A native model file does not
    hold everything pickle keeps (a wrapper's constructor parameters,
    ``classes_``, a LightGBM booster's ``best_score``, xgboost's training
    configuration ...), so that remainder, the object's pickle state without
    the model, goes to ``info["state"]`` as typed JSON (below), and the part
    is only native when that state encodes exactly: a callable objective, a
    callback or any other object outside the typed-JSON grammar sends the model
    to pickle.  xgboost: the training configuration (``save_config``) goes to
    ``info["config"]`` and a probe reloads the model and checks that
    ``save_raw`` and ``save_config`` give the same bytes back.  Read with the
    library's own loader (``Booster.load_model`` + ``load_config``,
    ``Booster.__setstate__`` with the model string, ``CatBoost.__setstate__``
    with the ``cbm`` bytes: what unpickling runs) and the typed state.
``polars`` (``polars.DataFrame`` / ``polars.Series``)
    Exact types.  Written as a parquet file by ``write_parquet`` (a Series as a
    one-column frame).  A probe writes and reads back the first row, and the
    schema must be equal (``==`` and ``repr``); ``Object`` columns cannot be
    written and are pickled.  The sorted flags of columns (``SORTED_ASC`` /
    ``SORTED_DESC``), which parquet drops, are recorded in ``info["sorted"]``
    and set back with ``set_sorted``.  ``info``: ``type``, ``rows``,
    ``columns`` (first 256), ``name`` of a Series.
``zarr`` (``xarray.Dataset`` / ``xarray.DataArray``)
    Exact types; every variable held in memory as a plain numpy array (not
    dask-backed or another duck array), no object dtype, a DataArray's name
    ``None`` or a ``str``, encodings expressible in typed JSON.  Written with
    ``to_zarr`` (zarr format 3, no ``_FillValue``, encodings dropped) into a
    temporary folder, then packed into one zip file (stored, sorted names,
    fixed timestamps) that ``zarr.storage.ZipStore`` opens.  Read eagerly
    (``.load()``) with each datetime / timedelta variable decoded to its own
    unit; the order of variables, their encodings (``info["encoding"]``) and
    the ``freq`` of datetime indexes are set back.  The whole value is written
    and read back while classifying and must compare equal: variable order,
    dims, dtypes, bits of the values, attributes (zarr keeps them as JSON:
    tuples, numpy values or sets in ``attrs`` send the value to pickle),
    encodings, index types and ``freq``.  The payload is the zip's bytes.

Typed JSON (``info["state"]``, ``info["encoding"]``)
    A JSON value: ``str``, ``bool``, ``null``, integers in the signed 64-bit
    range and finite floats stand for themselves (Python's ``json`` keeps
    ``1`` and ``1.0`` apart); everything else is an object with one tag:
    ``{"int": hex}``, ``{"float": 16 hex digits of the IEEE bits}``,
    ``{"bytes": base64}``, ``{"list"|"tuple": [...]}``,
    ``{"dict"|"odict": [[key, value], ...]}``, ``{"ddict": [...], "factory":
    name}``, ``{"np": dtype, "hex": bytes}`` (a numpy scalar), ``{"ndarray":
    dtype, "shape": [...], "fortran": bool, "b64": data}``, ``{"dtype": str}``,
    ``{"nptype": str}`` and ``{"object": name, "state": value}`` for the few
    classes allowed (``LabelEncoder``).  A list, dict, array or object also
    carries ``"n"``, its number in the order of writing; the same object
    reached again is ``{"ref": n}``, so sharing inside the state is kept (a
    value that contains itself is refused).  An encoded state is decoded and
    compared with the original before it is used.
"""

from __future__ import annotations

import base64
import collections
import importlib
import io
import json
import logging
import math
import os
import shutil
import struct
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from typing import IO, Any

from .typenames import type_name as _type_name

log = logging.getLogger(__name__)

__all__ = [
    "CATBOOST",
    "DECODERS",
    "ENCODERS",
    "LIGHTGBM",
    "POLARS",
    "SAFETENSORS",
    "SAFE_FORMATS",
    "SKOPS",
    "TOPS",
    "XGBOOST",
    "ZARR",
    "classify",
]

SKOPS = "skops"
SAFETENSORS = "safetensors"
XGBOOST = "xgboost"
LIGHTGBM = "lightgbm"
CATBOOST = "catboost"
POLARS = "polars"
ZARR = "zarr"

_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1
_MAX_INFO_COLUMNS = 256
#: Largest typed-JSON state (characters) put in a part's info.
_MAX_STATE_CHARS = 1 << 20
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_COPY_CHUNK = 1 << 20


# --------------------------------------------------------------------------
# strict comparison


_ATOMS = (type(None), bool, int, str, bytes)


def _float_bits(x: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", x))[0]


class _Same:
    """Deep, strict equality: types, float bits, dict order, array layout, shared objects.

    ``memo`` maps the id of an object of ``a`` to the id of its counterpart in
    ``b``: an object reached twice in ``a`` must be one object in ``b`` too.
    Every visited object is kept alive so that ids are not reused meanwhile.
    """

    MAX_DEPTH = 400

    def __init__(self) -> None:
        self.memo: dict[int, int] = {}
        self.keep: list[Any] = []

    def __call__(self, a: Any, b: Any, depth: int = 0) -> bool:
        if depth > self.MAX_DEPTH:
            return False
        t = type(a)
        if t is not type(b):
            return False
        if t in _ATOMS:
            return a == b
        if t is float:
            return _float_bits(a) == _float_bits(b)
        if t is complex:
            return _float_bits(a.real) == _float_bits(b.real) and _float_bits(a.imag) == _float_bits(b.imag)
        if a is b:
            return True
        np = sys.modules.get("numpy")
        if np is not None and isinstance(a, np.generic):
            return a.dtype == b.dtype and a.tobytes() == b.tobytes()
        if t is tuple:
            return len(a) == len(b) and all(self(x, y, depth + 1) for x, y in zip(a, b))
        if isinstance(a, (type, type(len), type(_type_name))) or callable(a) and not hasattr(a, "__dict__"):
            return False  # classes, functions, builtins: only the same object is the same
        key = id(a)
        if key in self.memo:
            return self.memo[key] == id(b)
        self.memo[key] = id(b)
        self.keep.append((a, b))
        if np is not None and t is np.ndarray:
            return self.array(np, a, b, depth)
        if t is list:
            return len(a) == len(b) and all(self(x, y, depth + 1) for x, y in zip(a, b))
        if isinstance(a, dict):
            if len(a) != len(b) or not self.plain_state(a, b, depth):
                return False
            if isinstance(a, collections.defaultdict) and a.default_factory is not b.default_factory:
                return False
            return all(
                self(ka, kb, depth + 1) and self(va, vb, depth + 1)
                for (ka, va), (kb, vb) in zip(a.items(), b.items())
            )
        if t in (set, frozenset):
            return a == b and sorted(map(_type_name, a)) == sorted(map(_type_name, b))
        return self.reduced(a, b, depth)

    def plain_state(self, a: Any, b: Any, depth: int) -> bool:
        """Attributes of a builtin-container subclass (an OrderedDict's ``_metadata``)."""
        da, db = getattr(a, "__dict__", None), getattr(b, "__dict__", None)
        if da is None and db is None:
            return True
        return self(dict(da or {}), dict(db or {}), depth + 1)

    def array(self, np: Any, a: Any, b: Any, depth: int) -> bool:
        if a.dtype != b.dtype or repr(a.dtype) != repr(b.dtype) or a.shape != b.shape:
            return False
        fa = a.flags.f_contiguous and not a.flags.c_contiguous
        fb = b.flags.f_contiguous and not b.flags.c_contiguous
        if fa != fb:
            return False
        if a.dtype.hasobject:
            return all(self(x, y, depth + 1) for x, y in zip(a.ravel(order="K"), b.ravel(order="K")))
        return a.tobytes(order="A") == b.tobytes(order="A")

    def reduced(self, a: Any, b: Any, depth: int) -> bool:
        """Objects compare by what pickle would store of them (``__reduce_ex__``)."""
        try:
            ra, rb = a.__reduce_ex__(5), b.__reduce_ex__(5)
        except Exception:  # noqa: BLE001 - cannot tell: not the same
            return False
        if isinstance(ra, str) or isinstance(rb, str):
            return ra == rb
        ra, rb = tuple(ra) + (None,) * (6 - len(ra)), tuple(rb) + (None,) * (6 - len(rb))
        if ra[0] is not rb[0] or not self(ra[1], rb[1], depth + 1) or not self(ra[2], rb[2], depth + 1):
            return False
        for ia, ib in ((ra[3], rb[3]), (ra[4], rb[4])):
            if (ia is None) != (ib is None):
                return False
            if ia is not None and not self(list(ia), list(ib), depth + 1):
                return False
        return ra[5] is rb[5]


def _same(a: Any, b: Any) -> bool:
    """Whether ``b`` is ``a`` given back exactly (see :class:`_Same`)."""
    try:
        return _Same()(a, b)
    except RecursionError:
        return False


# --------------------------------------------------------------------------
# typed JSON


class _Unencodable(Exception):
    """A value outside the typed-JSON grammar."""


_FACTORIES: dict[str, Any] = {
    "list": list,
    "dict": dict,
    "set": set,
    "int": int,
    "float": float,
    "OrderedDict": collections.OrderedDict,
}

#: Classes allowed as ``{"object": name, "state": ...}``: name -> (module to import, attribute).
_CLASSES: dict[str, tuple[str, str]] = {
    "sklearn.preprocessing._label.LabelEncoder": ("sklearn.preprocessing", "LabelEncoder"),
}


def _simple_dtype(np: Any, dt: Any) -> str:
    """``dt.str`` when it names ``dt`` exactly (no fields, sub-arrays, objects or metadata)."""
    if dt.hasobject or dt.fields is not None or dt.subdtype is not None or dt.metadata:
        raise _Unencodable(f"a numpy dtype {dt!r}")
    text = dt.str
    back = np.dtype(text)
    if back != dt or repr(back) != repr(dt):
        raise _Unencodable(f"a numpy dtype {dt!r}")
    return text


class _Encoder:
    """Typed JSON of a value (module docstring).

    A mutable object (list, dict, array, allowed object) gets the number ``"n"``
    the first time it is written, in the order of writing; reaching it again
    writes ``{"ref": n}``, so objects shared inside the value stay shared.  A
    value that contains itself is refused.
    """

    def __init__(self) -> None:
        self.numbers: dict[int, int] = {}
        self.active: set[int] = set()
        self.keep: list[Any] = []

    def __call__(self, v: Any, depth: int = 0) -> Any:
        if depth > 64:
            raise _Unencodable("values nested more than 64 deep")
        t = type(v)
        if v is None or t is bool or t is str:
            return v
        if t is int:
            return v if _INT_MIN <= v <= _INT_MAX else {"int": hex(v)}
        if t is float:
            return v if math.isfinite(v) else {"float": f"{_float_bits(v):016x}"}
        if t is bytes:
            return {"bytes": base64.b64encode(v).decode("ascii")}
        if t is tuple:
            return {"tuple": [self(x, depth + 1) for x in v]}
        key = id(v)
        if key in self.numbers:
            if key in self.active:
                raise _Unencodable("a value that contains itself")
            return {"ref": self.numbers[key]}
        number = len(self.numbers)
        self.numbers[key] = number
        self.keep.append(v)
        self.active.add(key)
        try:
            node = self.mutable(v, t, depth)
        finally:
            self.active.discard(key)
        node["n"] = number
        return node

    def mutable(self, v: Any, t: type, depth: int) -> dict:
        if t is list:
            return {"list": [self(x, depth + 1) for x in v]}
        if t is dict or t is collections.OrderedDict or t is collections.defaultdict:
            items = [[self(k, depth + 1), self(x, depth + 1)] for k, x in v.items()]
            if t is dict:
                return {"dict": items}
            if t is collections.OrderedDict:
                if getattr(v, "__dict__", None):
                    raise _Unencodable("an OrderedDict with attributes")
                return {"odict": items}
            names = [n for n, f in _FACTORIES.items() if f is v.default_factory]
            if v.default_factory is not None and not names:
                raise _Unencodable(f"a defaultdict of {v.default_factory!r}")
            return {"ddict": items, "factory": names[0] if names else None}
        np = sys.modules.get("numpy")
        if np is not None:
            if t is np.ndarray:
                text = _simple_dtype(np, v.dtype)
                fortran = bool(v.flags.f_contiguous and not v.flags.c_contiguous)
                raw = v.tobytes(order="F" if fortran else "C")
                return {
                    "ndarray": text,
                    "shape": list(v.shape),
                    "fortran": fortran,
                    "b64": base64.b64encode(raw).decode("ascii"),
                }
            if isinstance(v, np.generic) and t.__module__ == "numpy":
                return {"np": _simple_dtype(np, v.dtype), "hex": v.tobytes().hex()}
            if isinstance(v, np.dtype):
                return {"dtype": _simple_dtype(np, v)}
            if isinstance(v, type) and issubclass(v, np.generic) and v.__module__ == "numpy":
                text = np.dtype(v).str
                if np.dtype(text).type is not v:
                    raise _Unencodable(f"the numpy type {v!r}")
                return {"nptype": text}
        name = _type_name(v)
        if name in _CLASSES:
            state = v.__getstate__()
            if type(state) is not dict:
                raise _Unencodable(f"a {name} whose state is not a dict")
            return {"object": name, "state": self(state, depth + 1)}
        raise _Unencodable(f"a {name}")


def _enc(v: Any) -> Any:
    """``v`` as typed JSON (module docstring), or :class:`_Unencodable`."""
    return _Encoder()(v)


class _Decoder:
    """The value of a typed-JSON node; numbered objects are kept for ``{"ref": n}``."""

    def __init__(self) -> None:
        self.objects: dict[int, Any] = {}

    def __call__(self, node: Any) -> Any:
        t = type(node)
        if node is None or t in (bool, str, int, float):
            return node
        if t is not dict or not node:
            raise ValueError(f"bad typed-JSON node {node!r:.60}")
        if "ref" in node:
            return self.objects[node["ref"]]
        value = self.value(node)
        if "n" in node:
            self.objects[node["n"]] = value
        return value

    def value(self, node: dict) -> Any:
        if "list" in node:
            return [self(x) for x in node["list"]]
        if "tuple" in node:
            return tuple(self(x) for x in node["tuple"])
        for tag in ("dict", "odict", "ddict"):
            if tag in node:
                pairs = [(self(k), self(x)) for k, x in node[tag]]
                if tag == "dict":
                    return dict(pairs)
                if tag == "odict":
                    return collections.OrderedDict(pairs)
                factory = node.get("factory")
                return collections.defaultdict(_FACTORIES[factory] if factory is not None else None, pairs)
        if "int" in node:
            return int(node["int"], 16)
        if "float" in node:
            return struct.unpack("<d", struct.pack("<Q", int(node["float"], 16)))[0]
        if "bytes" in node:
            return base64.b64decode(node["bytes"], validate=True)
        if "ndarray" in node or "np" in node or "dtype" in node or "nptype" in node:
            return self.numpy(node)
        if "object" in node:
            module, attr = _CLASSES[node["object"]]
            cls = getattr(importlib.import_module(module), attr)
            obj = cls.__new__(cls)
            _set_state(obj, self(node["state"]))
            return obj
        raise ValueError(f"bad typed-JSON node {node!r:.60}")

    @staticmethod
    def numpy(node: dict) -> Any:
        import numpy as np

        if "dtype" in node:
            return np.dtype(node["dtype"])
        if "nptype" in node:
            return np.dtype(node["nptype"]).type
        if "np" in node:
            dt = np.dtype(node["np"])
            if dt.itemsize == 0:
                return np.zeros((), dtype=dt)[()]
            return np.frombuffer(bytes.fromhex(node["hex"]), dtype=dt)[0]
        dt = np.dtype(node["ndarray"])
        shape = tuple(node["shape"])
        order = "F" if node.get("fortran") else "C"
        if dt.itemsize == 0 or 0 in shape:
            return np.zeros(shape, dtype=dt, order=order)
        raw = base64.b64decode(node["b64"], validate=True)
        return np.frombuffer(raw, dtype=dt).reshape(shape, order=order).copy(order=order)


def _dec(node: Any) -> Any:
    """The value of a typed-JSON node (module docstring)."""
    return _Decoder()(node)


def _set_state(obj: Any, state: dict) -> None:
    """What unpickling does with an object's state."""
    setstate = getattr(obj, "__setstate__", None)
    if setstate is not None:
        setstate(state)
    else:
        obj.__dict__.update(state)


def _state_node(state: Any, what: str) -> Any:
    """``state`` as typed JSON, checked by decoding it; a reason (``_Unencodable``) if not exact."""
    try:
        node = _enc(state)
    except _Unencodable as exc:
        raise _Unencodable(f"its {what} holds {exc}, which typed JSON cannot hold") from None
    text = json.dumps(node, allow_nan=False, separators=(",", ":"))
    if len(text) > _MAX_STATE_CHARS:
        raise _Unencodable(f"its {what} takes {len(text)} characters of JSON (more than {_MAX_STATE_CHARS})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        back = _dec(json.loads(text))
    if not _same(state, back):
        raise _Unencodable(f"its {what} does not come back exactly from typed JSON")
    return node


# --------------------------------------------------------------------------
# helpers


def _zip_folder(folder: str) -> bytes:
    """The files under ``folder`` as one stored zip: sorted names, fixed timestamps."""
    names = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in files:
            full = os.path.join(root, name)
            names.append(os.path.relpath(full, folder).replace(os.sep, "/"))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for rel in sorted(names):
            info = zipfile.ZipInfo(rel, date_time=_ZIP_TIME)
            info.external_attr = 0o644 << 16
            with open(os.path.join(folder, rel), "rb") as src, z.open(info, "w") as dst:
                shutil.copyfileobj(src, dst, _COPY_CHUNK)
    return out.getvalue()


def _write_bytes(payload: Any, f: IO[bytes]) -> None:
    f.write(payload)


def _exact_class(x: Any, module: Any, names: tuple[str, ...]) -> str | None | bool:
    """True for an exact class ``module.<name>``, a reason for a subclass of one, None otherwise."""
    classes = [c for c in (getattr(module, n, None) for n in names) if isinstance(c, type)]
    if type(x) in classes:
        return True
    if classes and isinstance(x, tuple(classes)):
        return f"a subclass of a {module.__name__} model ({_type_name(x)})"
    return None


# --------------------------------------------------------------------------
# skops


def _classify_sklearn(x: Any) -> tuple[str, Any, dict] | str | None:
    base = sys.modules.get("sklearn.base")
    if base is None or not isinstance(x, base.BaseEstimator):
        return None
    try:
        import skops
        import skops.io as sio
    except ImportError:
        return "skops is not installed (the skops format needs it)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = sio.dumps(x)
        untrusted = sio.get_untrusted_types(data=data)
        if untrusted:
            shown = ", ".join(untrusted[:4]) + (" ..." if len(untrusted) > 4 else "")
            return f"loading it with skops would trust types beyond skops' defaults ({shown})"
        back = sio.loads(data)
    if not _same(x, back):
        return "skops does not give it back exactly"
    info = {
        "type": _type_name(x),
        "class": type(x).__name__,
        "sklearn": getattr(sys.modules.get("sklearn"), "__version__", None),
        "skops": getattr(skops, "__version__", None),
    }
    return SKOPS, data, info


def _decode_skops(f: IO[bytes], info: dict) -> Any:
    import skops.io as sio

    return sio.loads(f.read())  # skops' default trusted types only


# --------------------------------------------------------------------------
# safetensors

_SINGLE_KEY = "tensor"
_META_KEY = "functionfuse"
_dtype_ok: dict[Any, bool] = {}


def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype_round_trips(torch: Any, dtype: Any) -> bool:
    ok = _dtype_ok.get(dtype)
    if ok is None:
        try:
            import safetensors.torch as st

            back = st.load(st.save({"t": torch.zeros(1, dtype=dtype)}))["t"]
            ok = back.dtype == dtype
        except Exception:  # noqa: BLE001 - any failure: safetensors does not hold it
            ok = False
        _dtype_ok[dtype] = ok
    return ok


def _tensor_rules(torch: Any, t: Any) -> str | None:
    """Why safetensors cannot hold tensor ``t`` exactly, or None."""
    if t.layout != torch.strided:
        return f"a tensor of layout {t.layout}"
    if t.device.type != "cpu":
        return f"a tensor on device {t.device}"
    if t.is_quantized:
        return "a quantized tensor"
    if t.is_conj() or t.is_neg():
        return "a tensor with a conjugate or negative bit"
    if any(n is not None for n in (getattr(t, "names", None) or ())):
        return "a named tensor"
    if not t.is_contiguous():
        return f"a non-contiguous tensor (strides {tuple(t.stride())})"
    if getattr(t, "__dict__", None):
        return "a tensor with Python attributes"
    if getattr(t, "_backward_hooks", None):
        return "a tensor with backward hooks"
    if not _dtype_round_trips(torch, t.dtype):
        return f"a tensor of dtype {t.dtype}, which safetensors does not hold"
    return None


def _classify_torch(x: Any) -> tuple[str, Any, dict] | str | None:
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(x, torch.Tensor):
        return None
    parameter = getattr(getattr(torch, "nn", None), "Parameter", None)
    if type(x) is not torch.Tensor and type(x) is not parameter:
        return f"a subclass of torch.Tensor ({_type_name(x)})"
    try:
        import safetensors.torch  # noqa: F401 - the writer
    except ImportError:
        return "safetensors is not installed (the safetensors format needs it)"
    reason = _tensor_rules(torch, x)
    if reason is not None:
        return reason
    kind = "torch.nn.Parameter" if type(x) is parameter else "torch.Tensor"
    meta = {"type": kind, "order": [_SINGLE_KEY], "requires_grad": [_SINGLE_KEY] if x.requires_grad else []}
    info = {
        "type": kind,
        "tensors": 1,
        "dtype": _dtype_name(x.dtype),
        "shape": list(x.shape),
        "requires_grad": bool(x.requires_grad),
        "nbytes": int(x.numel() * x.element_size()),
    }
    return SAFETENSORS, ({_SINGLE_KEY: x}, meta), info


def _classify_state_dict(x: Any) -> tuple[str, Any, dict] | str | None:
    """An ``OrderedDict`` of tensors (top module ``collections``)."""
    if type(x) is not collections.OrderedDict or not x:
        return None
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(next(iter(x.values())), torch.Tensor):
        return None
    try:
        import safetensors.torch  # noqa: F401 - the writer
    except ImportError:
        return "safetensors is not installed (the safetensors format needs it)"
    storages: dict[tuple[int, int], str] = {}
    aliases: dict[str, list] = {}
    tensors: dict[str, Any] = {}
    requires_grad = []
    dtypes = set()
    nbytes = 0
    for key, t in x.items():
        if type(key) is not str:
            return f"a state dict with a key of type {_type_name(key)}"
        if type(t) is not torch.Tensor:
            return f"an OrderedDict of tensors whose {key!r} is a {_type_name(t)}"
        reason = _tensor_rules(torch, t)
        if reason is not None:
            return f"a state dict whose {key!r} is {reason}"
        if t.requires_grad:
            requires_grad.append(key)
        storage = t.untyped_storage()
        ptr, size = storage.data_ptr(), storage.nbytes()
        first = storages.get((ptr, size)) if ptr and size else None
        if first is not None:
            base = x[first]
            if t is base:
                aliases[key] = [first, "same"]
                continue
            same_view = (
                t.dtype == base.dtype
                and t.storage_offset() == base.storage_offset()
                and t.shape == base.shape
                and t.stride() == base.stride()
            )
            if not same_view:
                return f"a state dict whose tensors {first!r} and {key!r} share memory in different ways"
            aliases[key] = [first, "view"]
            continue
        if ptr and size:
            storages[(ptr, size)] = key
        tensors[key] = t
        dtypes.add(_dtype_name(t.dtype))
        nbytes += t.numel() * t.element_size()
    extra = dict(getattr(x, "__dict__", None) or {})
    meta: dict[str, Any] = {
        "type": "collections.OrderedDict",
        "order": list(x),
        "requires_grad": requires_grad,
        "aliases": aliases,
    }
    if extra:
        try:
            meta["attributes"] = _state_node(extra, "attributes")
        except _Unencodable as exc:
            return str(exc)
    info = {
        "type": "collections.OrderedDict",
        "tensors": len(x),
        "dtypes": sorted(dtypes),
        "nbytes": int(nbytes),
    }
    if aliases:
        info["aliases"] = len(aliases)
    return SAFETENSORS, (tensors, meta), info


def _encode_safetensors(payload: Any, f: IO[bytes]) -> None:
    import safetensors.torch as st

    tensors, meta = payload
    plain = {k: t.detach() for k, t in tensors.items()}
    f.write(st.save(plain, metadata={_META_KEY: json.dumps(meta, separators=(",", ":"))}))


def _safetensors_metadata(data: bytes) -> dict:
    """The ``__metadata__`` of a safetensors file (8-byte little-endian header size, JSON header)."""
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size].decode("utf-8"))
    return header.get("__metadata__") or {}


def _decode_safetensors(f: IO[bytes], info: dict) -> Any:
    import safetensors.torch as st

    data = f.read()
    loaded = st.load(data)
    text = _safetensors_metadata(data).get(_META_KEY)
    if text is None:  # a plain safetensors file: its tensors, in the file's order
        return loaded
    meta = json.loads(text)
    for key in meta.get("requires_grad", ()):
        if key in loaded:
            loaded[key].requires_grad_(True)
    kind = meta.get("type")
    if kind in ("torch.Tensor", "torch.nn.Parameter"):
        t = loaded[_SINGLE_KEY]
        if kind == "torch.nn.Parameter":
            import torch

            return torch.nn.Parameter(t.detach(), requires_grad=t.requires_grad)
        return t
    aliases = meta.get("aliases", {})
    out = collections.OrderedDict()
    for key in meta["order"]:
        if key in aliases:
            first, how = aliases[key]
            base = loaded[first]
            if how == "same":
                out[key] = base
            else:
                view = base.new_empty(0)
                view.set_(base.untyped_storage(), base.storage_offset(), base.shape, base.stride())
                out[key] = view.requires_grad_(key in meta.get("requires_grad", ()))
        else:
            out[key] = loaded[key]
    if "attributes" in meta:
        out.__dict__.update(_dec(meta["attributes"]))
    return out


# --------------------------------------------------------------------------
# boosting models

_XGB_CLASSES = ("XGBModel", "XGBClassifier", "XGBRegressor", "XGBRanker", "XGBRFClassifier", "XGBRFRegressor")
_LGB_CLASSES = ("LGBMModel", "LGBMClassifier", "LGBMRegressor", "LGBMRanker")
_CB_CLASSES = ("CatBoost", "CatBoostClassifier", "CatBoostRegressor", "CatBoostRanker")


def _load_xgb_booster(xgb: Any, raw: bytes, config: str) -> Any:
    booster = xgb.Booster()
    booster.load_model(bytearray(raw))
    booster.load_config(config)
    return booster


def _booster_and_state(x: Any, lib: Any, classes: Any, label: str) -> tuple[Any, dict | None] | str | None:
    """``(booster, wrapper state or None)`` of a boosting library's ``Booster`` or fitted
    sklearn-API model ``x``; a reason (``str``) or None (not one of its types) otherwise."""
    if type(x) is getattr(lib, "Booster", None):
        return x, None
    found = _exact_class(x, lib, classes)
    if found is not True:
        if found is None and isinstance(x, getattr(lib, "Booster", ())):
            return f"a subclass of {lib.__name__}.Booster ({_type_name(x)})"
        return found
    state = dict(x.__getstate__())
    booster = state.get("_Booster")
    if booster is None:
        return f"an unfitted {label} model (no model for a native file)"
    return booster, state


def _classify_xgboost(x: Any) -> tuple[str, Any, dict] | str | None:
    xgb = sys.modules.get("xgboost")
    if xgb is None:
        return None
    found = _booster_and_state(x, xgb, _XGB_CLASSES, "xgboost")
    if not isinstance(found, tuple):
        return found
    booster, state = found
    if state is not None:
        if type(booster) is not xgb.Booster:
            return f"an xgboost model holding a {_type_name(booster)}"
        state["_Booster"] = None
    extra = {k: v for k, v in vars(booster).items() if k != "handle"}
    raw = bytes(booster.save_raw("ubj"))
    config = booster.save_config()
    back = _load_xgb_booster(xgb, raw, config)
    if bytes(back.save_raw("ubj")) != raw or back.save_config() != config:
        return "xgboost does not give its model and configuration back exactly"
    info: dict[str, Any] = {"type": _type_name(x), "xgboost": xgb.__version__, "config": config}
    try:
        if extra:
            info["booster_state"] = _state_node(extra, "booster attributes")
        if state is not None:
            info["state"] = _state_node(state, "parameters and attributes")
    except _Unencodable as exc:
        return str(exc)
    return XGBOOST, raw, info


def _decode_xgboost(f: IO[bytes], info: dict) -> Any:
    import xgboost as xgb

    booster = _load_xgb_booster(xgb, f.read(), info["config"])
    if "booster_state" in info:
        booster.__dict__.update(_dec(info["booster_state"]))
    if "state" not in info:
        return booster
    cls = _model_class(xgb, info["type"], _XGB_CLASSES)
    state = _dec(info["state"])
    state["_Booster"] = booster
    model = cls.__new__(cls)
    _set_state(model, state)
    return model


def _model_class(module: Any, name: str, allowed: tuple[str, ...]) -> type:
    """The class named by a part's ``info["type"]``: one of ``allowed`` in ``module`` only."""
    short = name.rpartition(".")[2]
    if short not in allowed:
        raise ValueError(f"{name!r} is not a {module.__name__} model class")
    return getattr(module, short)


def _lgb_booster_state(lgb: Any, booster: Any) -> tuple[str, dict] | str:
    if type(booster) is not lgb.Booster:
        return f"a LightGBM model holding a {_type_name(booster)}"
    state = dict(booster.__getstate__())
    model = state.get("_handle")
    if type(model) is not str:
        return "a LightGBM booster without a model"
    state["_handle"] = None
    return model, state


def _classify_lightgbm(x: Any) -> tuple[str, Any, dict] | str | None:
    lgb = sys.modules.get("lightgbm")
    if lgb is None:
        return None
    found = _booster_and_state(x, lgb, _LGB_CLASSES, "LightGBM")
    if not isinstance(found, tuple):
        return found
    booster, state = found
    if state is not None:
        state["_Booster"] = None
    found_booster = _lgb_booster_state(lgb, booster)
    if isinstance(found_booster, str):
        return found_booster
    model, bstate = found_booster
    info: dict[str, Any] = {"type": _type_name(x), "lightgbm": lgb.__version__}
    try:
        info["booster_state"] = _state_node(bstate, "booster attributes")
        if state is not None:
            info["state"] = _state_node(state, "parameters and attributes")
    except _Unencodable as exc:
        return str(exc)
    return LIGHTGBM, model.encode("utf-8"), info


def _decode_lightgbm(f: IO[bytes], info: dict) -> Any:
    import lightgbm as lgb

    bstate = _dec(info["booster_state"])
    bstate["_handle"] = f.read().decode("utf-8")
    booster = lgb.Booster.__new__(lgb.Booster)
    booster.__setstate__(bstate)  # what unpickling a Booster runs: parses the model string
    if "state" not in info:
        return booster
    cls = _model_class(lgb, info["type"], _LGB_CLASSES)
    state = _dec(info["state"])
    state["_Booster"] = booster
    model = cls.__new__(cls)
    _set_state(model, state)
    return model


_CB_MODEL = "__model"


def _classify_catboost(x: Any) -> tuple[str, Any, dict] | str | None:
    cb = sys.modules.get("catboost")
    if cb is None:
        return None
    found = _exact_class(x, cb, _CB_CLASSES)
    if found is not True:
        return found
    if not x.is_fitted():
        return "an unfitted CatBoost model (no model for a native file)"
    state = dict(x.__getstate__())
    blob = state.get(_CB_MODEL)
    if type(blob) is not bytes:
        return "a CatBoost model whose state has no cbm model"
    state[_CB_MODEL] = None
    info: dict[str, Any] = {"type": _type_name(x), "catboost": getattr(cb, "__version__", None)}
    try:
        info["state"] = _state_node(state, "parameters and attributes")
    except _Unencodable as exc:
        return str(exc)
    return CATBOOST, blob, info


def _decode_catboost(f: IO[bytes], info: dict) -> Any:
    import catboost as cb

    cls = _model_class(cb, info["type"], _CB_CLASSES)
    state = _dec(info["state"])
    state[_CB_MODEL] = f.read()
    model = cls.__new__(cls)
    model.__setstate__(state)  # what unpickling runs: loads the cbm bytes
    return model


# --------------------------------------------------------------------------
# polars


def _sorted_flags(flags: dict) -> dict[str, str]:
    out = {}
    for name, f in flags.items():
        if f.get("SORTED_ASC"):
            out[name] = "asc"
        elif f.get("SORTED_DESC"):
            out[name] = "desc"
    return out


def _classify_polars(x: Any) -> tuple[str, Any, dict] | str | None:
    pl = sys.modules.get("polars")
    if pl is None:
        return None
    if type(x) is pl.DataFrame:
        kind, frame = "polars.DataFrame", x
    elif type(x) is pl.Series:
        kind, frame = "polars.Series", x.to_frame()
    elif isinstance(x, (pl.DataFrame, pl.Series)):
        return f"a subclass of a polars type ({_type_name(x)})"
    else:
        return None
    try:
        buf = io.BytesIO()
        frame.head(1).write_parquet(buf)
        buf.seek(0)
        back = pl.read_parquet(buf)
    except Exception as exc:  # noqa: BLE001 - polars refuses it (Object columns ...): pickle
        return f"polars cannot write it as parquet ({type(exc).__name__}: {exc})"
    if back.schema != frame.schema or repr(back.schema) != repr(frame.schema):
        return "parquet does not give its schema back exactly"
    names = list(frame.columns)
    info: dict[str, Any] = {"type": kind, "rows": int(frame.height), "columns": names[:_MAX_INFO_COLUMNS]}
    if len(names) > _MAX_INFO_COLUMNS:
        info["ncolumns"] = len(names)
    if kind == "polars.Series":
        info["name"] = x.name
    flags = _sorted_flags(frame.flags)
    if flags:
        info["sorted"] = flags
    return POLARS, frame, info


def _encode_polars(payload: Any, f: IO[bytes]) -> None:
    payload.write_parquet(f)


def _decode_polars(f: IO[bytes], info: dict) -> Any:
    import polars as pl

    frame = pl.read_parquet(f)
    flags = info.get("sorted") or {}
    if flags:
        frame = frame.with_columns(
            [pl.col(name).set_sorted(descending=how == "desc") for name, how in flags.items()]
        )
    if info.get("type") == "polars.Series":
        return frame.to_series(0)
    return frame


# --------------------------------------------------------------------------
# xarray / zarr

_DA_VARIABLE = "__xarray_dataarray_variable__"


def _classify_xarray(x: Any) -> tuple[str, Any, dict] | str | None:
    xr = sys.modules.get("xarray")
    np = sys.modules.get("numpy")
    if xr is None or np is None:
        return None
    info: dict[str, Any]
    if type(x) is xr.Dataset:
        ds = x
        info = {"type": "xarray.Dataset"}
    elif type(x) is xr.DataArray:
        name = x.name
        if name is not None and type(name) is not str:
            return f"a DataArray named by a {_type_name(name)}, not a str"
        variable = name if name is not None else _DA_VARIABLE
        if variable in x.coords:
            return f"a DataArray named like one of its coordinates ({variable!r})"
        ds = x.to_dataset(name=variable)
        info = {"type": "xarray.DataArray", "name": name, "variable": variable}
    elif isinstance(x, (xr.Dataset, xr.DataArray)):
        return f"a subclass of an xarray type ({_type_name(x)})"
    else:
        return None
    try:
        import zarr  # noqa: F401 - the writer
    except ImportError:
        return "zarr is not installed (the zarr format needs it)"
    times: dict[str, str] = {}
    deltas: dict[str, str] = {}
    for name, var in ds.variables.items():
        if type(name) is not str:
            return f"a variable named by a {_type_name(name)}"
        if var.chunks is not None:
            return f"its variable {name!r} is chunked (dask-backed)"
        if name not in ds.indexes and type(var.data) is not np.ndarray:
            return f"its variable {name!r} holds a {_type_name(var.data)}, not a numpy array"
        dt = var.dtype
        if dt.hasobject:
            return f"its variable {name!r} has dtype object"
        if dt.kind in "mM":
            unit, count = np.datetime_data(dt)
            if count != 1 or unit not in ("s", "ms", "us", "ns"):
                return f"its variable {name!r} has dtype {dt}"
            (times if dt.kind == "M" else deltas)[name] = unit
    encoding = {name: dict(var.encoding) for name, var in ds.variables.items() if var.encoding}
    if ds.encoding:
        encoding[""] = dict(ds.encoding)
    freqs = {}
    for name, index in ds.indexes.items():
        freq = getattr(index, "freq", None)
        if freq is not None:
            freqs[name] = freq.freqstr
    info.update({
        "variables": list(ds.variables),
        "coords": list(ds.coords),
        "dims": {str(k): int(v) for k, v in ds.sizes.items()},
    })
    if times:
        info["times"] = times
    if deltas:
        info["timedeltas"] = deltas
    if freqs:
        info["freq"] = freqs
    try:
        if encoding:
            info["encoding"] = _state_node(encoding, "encoding")
    except _Unencodable as exc:
        return str(exc)
    try:
        data = _write_zarr_zip(ds)
        back = _read_zarr_zip(io.BytesIO(data), info)
    except Exception as exc:  # noqa: BLE001 - xarray / zarr refuse it: pickle
        return f"xarray cannot write it as zarr ({type(exc).__name__}: {exc})"
    reason = _xarray_diff(xr, np, x, back)
    if reason is not None:
        return f"zarr does not give it back exactly: {reason}"
    return ZARR, data, info


def _write_zarr_zip(ds: Any) -> bytes:
    plain = ds.drop_encoding()
    encoding = {name: {"_FillValue": None} for name in plain.variables}
    with tempfile.TemporaryDirectory(prefix="functionfuse-zarr-") as tmp:
        store = os.path.join(tmp, "store")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zarr warns that string dtypes are not in its v3 spec yet
            plain.to_zarr(store, mode="w", consolidated=False, zarr_format=3, encoding=encoding)
        return _zip_folder(store)


def _read_zarr_zip(f: IO[bytes], info: dict) -> Any:
    import xarray as xr
    from zarr.storage import ZipStore

    fd, path = tempfile.mkstemp(prefix="functionfuse-", suffix=".zarr.zip")
    try:
        with os.fdopen(fd, "wb") as tmp:
            shutil.copyfileobj(f, tmp, _COPY_CHUNK)
        store = ZipStore(path, mode="r")
        try:
            times = {k: xr.coders.CFDatetimeCoder(time_unit=u) for k, u in (info.get("times") or {}).items()}
            deltas = {
                k: xr.coders.CFTimedeltaCoder(time_unit=u) for k, u in (info.get("timedeltas") or {}).items()
            }
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                opened = xr.open_dataset(
                    store,
                    engine="zarr",
                    consolidated=False,
                    chunks=None,
                    decode_times=times or True,
                    decode_timedelta=deltas or None,
                )
                loaded = opened.load()
                opened.close()
        finally:
            store.close()
    finally:
        os.unlink(path)
    return _restore_xarray(xr, loaded, info)


def _restore_xarray(xr: Any, loaded: Any, info: dict) -> Any:
    """Variable order, encodings, index frequencies; a DataArray out of its dataset."""
    coords = set(info.get("coords", ()))
    freqs = info.get("freq") or {}
    ds = xr.Dataset(attrs=loaded.attrs)
    for name in info.get("variables", list(loaded.variables)):
        if name in freqs:  # a datetime / timedelta index with a frequency, which zarr does not keep
            index = loaded.indexes[name]
            ds = ds.assign_coords({name: type(index)(index, freq=freqs[name], name=index.name)})
            ds.variables[name].attrs.update(loaded.variables[name].attrs)
            continue
        var = loaded.variables[name].copy(deep=False)
        var.encoding = {}
        ds = ds.assign_coords({name: var}) if name in coords else ds.assign({name: var})
    encoding = _dec(info["encoding"]) if "encoding" in info else {}
    for name, var in ds.variables.items():
        var.encoding = dict(encoding.get(name, {}))
    ds.encoding = dict(encoding.get("", {}))
    if info.get("type") == "xarray.DataArray":
        da = ds[info["variable"]]
        da.name = info.get("name")
        return da
    return ds


def _xarray_diff(xr: Any, np: Any, a: Any, b: Any) -> str | None:
    """What differs between ``a`` and its round trip ``b``, or None."""
    if type(a) is not type(b):
        return f"it is read back as a {_type_name(b)}"
    if type(a) is xr.DataArray:
        if type(a.name) is not type(b.name) or a.name != b.name:
            return "its name changes"
        if not _same(dict(a.attrs), dict(b.attrs)) or not _same(dict(a.encoding), dict(b.encoding)):
            return "its attrs or encoding change"
        variable = _DA_VARIABLE if a.name is None else a.name
        a, b = a.to_dataset(name=variable), b.to_dataset(name=variable)
    if list(a.variables) != list(b.variables) or list(a.coords) != list(b.coords):
        return "the order of its variables changes"
    if list(a.sizes.items()) != list(b.sizes.items()):
        return "its dimensions change"
    if not _same(dict(a.attrs), dict(b.attrs)) or not _same(dict(a.encoding), dict(b.encoding)):
        return "its attrs or encoding change"
    for name, va in a.variables.items():
        vb = b.variables[name]
        if type(va) is not type(vb) or va.dims != vb.dims:
            return f"variable {name!r} changes type or dims"
        if va.dtype != vb.dtype or va.dtype.str != vb.dtype.str:  # zarr spells native order "<"
            return f"variable {name!r} of dtype {va.dtype} is read back as {vb.dtype}"
        if not _same(dict(va.attrs), dict(vb.attrs)):
            return f"the attrs of variable {name!r} change"
        if not _same(dict(va.encoding), dict(vb.encoding)):
            return f"the encoding of variable {name!r} changes"
        xa, xb = np.asarray(va.values), np.asarray(vb.values)
        if xa.shape != xb.shape or xa.tobytes() != xb.tobytes():
            return f"the values of variable {name!r} change"
    if list(a.xindexes) != list(b.xindexes):
        return "its indexes change"
    for name in a.xindexes:
        ia, ib = a.xindexes[name], b.xindexes[name]
        if type(ia) is not type(ib):
            return f"index {name!r} changes type"
        pa, pb = a.indexes[name], b.indexes[name]
        if type(pa) is not type(pb) or pa.dtype != pb.dtype or pa.name != pb.name:
            return f"index {name!r} changes"
        if getattr(pa, "freq", None) != getattr(pb, "freq", None):
            return f"the freq of index {name!r} changes"
    return None


def _decode_zarr(f: IO[bytes], info: dict) -> Any:
    return _read_zarr_zip(f, info)


# --------------------------------------------------------------------------
# tables

TOPS: frozenset[str] = frozenset(
    {"sklearn", "torch", "collections", "xgboost", "lightgbm", "catboost", "polars", "xarray"}
)

_CLASSIFIERS: dict[str, Callable[[Any], tuple[str, Any, dict] | str | None]] = {
    "sklearn": _classify_sklearn,
    "torch": _classify_torch,
    "collections": _classify_state_dict,
    "xgboost": _classify_xgboost,
    "lightgbm": _classify_lightgbm,
    "catboost": _classify_catboost,
    "polars": _classify_polars,
    "xarray": _classify_xarray,
}

ENCODERS: dict[str, Callable[[Any, IO[bytes]], None]] = {
    SKOPS: _write_bytes,
    SAFETENSORS: _encode_safetensors,
    XGBOOST: _write_bytes,
    LIGHTGBM: _write_bytes,
    CATBOOST: _write_bytes,
    POLARS: _encode_polars,
    ZARR: _write_bytes,
}
DECODERS: dict[str, Callable[[IO[bytes], dict], Any]] = {
    SKOPS: _decode_skops,
    SAFETENSORS: _decode_safetensors,
    XGBOOST: _decode_xgboost,
    LIGHTGBM: _decode_lightgbm,
    CATBOOST: _decode_catboost,
    POLARS: _decode_polars,
    ZARR: _decode_zarr,
}
#: Formats whose decoding never runs code from the file (allowed in safe mode).
SAFE_FORMATS: frozenset[str] = frozenset(ENCODERS)


def classify(x: Any, top: str) -> tuple[str, Any, dict] | str | None:
    """``(format, payload, info)``, a reason to pickle (``str``), or None (unknown type).

    ``top`` is the top-level name of ``type(x).__module__``.  Never raises: a
    failure while checking ``x`` is a reason to pickle it.
    """
    classifier = _CLASSIFIERS.get(top)
    if classifier is None:
        return None
    try:
        return classifier(x)
    except Exception as exc:
        log.debug("native format check of a %s failed", _type_name(x), exc_info=True)
        return f"its native format could not be checked ({type(exc).__name__}: {exc})"
