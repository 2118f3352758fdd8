"""Per-format codecs of result parts (store v2): ``npy``, ``parquet``, ``json``, ``pickle``.

:mod:`functionfuse.serializers.parts` walks a result and asks this module two
things about a leaf: *can a plain format hold it exactly* (:func:`classify`),
and, later, *write it* / *read it back* (:func:`encode` / :func:`decode`).

No library is imported to find out whether a value is one of its types: the
leaf's ``type(x).__module__`` is looked at first, and the library is taken
from ``sys.modules`` (it is loaded, since the value exists).  ``pyarrow`` is
the one exception: it is imported when a pandas object appears, because it is
the parquet writer.

Rules
-----
``npy``
    ``type(x) is numpy.ndarray`` (no subclass: ``np.matrix`` and masked arrays
    are pickled), a dtype without objects (``dtype.hasobject`` false), without
    dtype ``metadata``, and that ``np.load`` gives back exactly from the
    ``.npy`` header (a probe: an empty array of the dtype is written and read,
    and ``==`` and ``repr`` of the dtypes must agree; this sends aligned
    structs, whose ``align=True`` flag the header drops, to pickle).  ``.npy``
    keeps the dtype (byte order, datetime units, structured fields,
    sub-arrays), the shape (0-d and empty included) and Fortran order.  It
    does not keep strides of a non-contiguous view, the ``writeable`` flag, or
    memory shared with other arrays (pickle does not either).  The file is
    version 1.0, or 2.0 / 3.0 when the header needs it (3.0: field names
    outside latin-1).
``parquet`` for ``pandas.DataFrame`` / ``pandas.Series``
    Exact types only (no subclass), and all of:

    - column labels: a flat ``pandas.Index`` (not a ``MultiIndex``) of unique
      labels of type ``str`` exactly, its name ``None`` or a ``str`` (a frame
      without columns has a ``RangeIndex``, read back as ``Index``: pickled); a
      Series's name is ``None`` or a ``str`` (the Series is written as a
      one-column frame, the column named after it, ``"0"`` when unnamed);
    - ``attrs`` empty (pandas stores ``attrs`` as JSON, which turns tuples into
      lists), ``flags.allows_duplicate_labels`` true;
    - object-dtype columns hold only ``str`` and ``None`` (checked value by
      value, ``type(v) is str``); object-dtype index levels only ``str``;
      object-dtype categories only ``str``;
    - then a *probe*: the frame's first row (or the empty frame; an object
      column whose first value is ``None`` gets one of its strings, so that
      pyarrow infers the type it infers for the whole) is written and read
      back exactly as the real part will be, and the signature of the
      result — column labels and their index type/dtype/name, every dtype
      (repr, equality, categories, time zone class), index type, level
      dtypes, names — must equal the original's.  This catches what pandas
      and pyarrow change at the type level (``datetime64[s]`` read back as
      ``[ms]``, integer categoricals read back as ints, object index read back
      as ``str``, ``string[python]`` read back as pyarrow storage ...).

    Three things the reader restores after ``pandas.read_parquet``, recorded in
    the part's ``info``: ``object_columns`` (object-dtype columns of ``str`` /
    ``None``, which pandas >= 3 reads back as ``str`` dtype), ``columns_dtype:
    "object"`` (column labels in an object-dtype Index), and ``index_freq``
    (the ``freq`` of a DatetimeIndex / TimedeltaIndex, which parquet drops).
    Time zones count as the same when both are UTC (``datetime.timezone.utc``
    is read back as ``zoneinfo.ZoneInfo("UTC")``); any other change of tz
    class (pytz to zoneinfo) sends the frame to pickle.
``parquet`` for ``pyarrow.Table``
    Exact type, no dictionary-typed field anywhere (parquet re-encodes
    dictionaries), and a probe with the empty table whose schema must come
    back equal, metadata included (``timestamp[s]``, ``date64`` and nested
    list field names do not).  Chunk layout is not kept.
``json``
    A tree node (the grammar of the manifest's ``result``, see
    :mod:`~functionfuse.serializers.parts`) as compact UTF-8 JSON.
``pickle``
    A cloudpickle stream (protocol 5), read with ``pickle.load``, which runs
    code; refused in safe mode.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import sys
from typing import IO, Any, Callable

from ..errors import SchemaChangedError, SerializationError
from . import natives, persistent
from .typenames import type_name

__all__ = [
    "NPY",
    "PARQUET",
    "JSON",
    "PICKLE",
    "FORMATS",
    "MMAP_THRESHOLD",
    "PICKLE_PROTOCOL",
    "Source",
    "classify",
    "encode",
    "decode",
    "type_name",
]

NPY, PARQUET, JSON, PICKLE = "npy", "parquet", "json", "pickle"
FORMATS = (NPY, PARQUET, JSON, PICKLE)
PICKLE_PROTOCOL = 5
MMAP_THRESHOLD = 64 * 2**20
_MAX_INFO_COLUMNS = 256


# --------------------------------------------------------------------------
# classification


def classify(x: Any) -> tuple[str, Any, dict] | str | None:
    """Which plain format holds ``x`` exactly.

    Returns ``(format, payload, info)`` when ``npy`` or ``parquet`` holds
    ``x`` (``payload`` is what :func:`encode` writes), a reason (``str``) when
    ``x`` is an array or table that must be pickled, and ``None`` when ``x`` is
    none of the types this module knows (the caller pickles it).
    """
    module = type(x).__module__ or ""
    top = module.partition(".")[0]
    if top == "numpy":
        return _classify_ndarray(x)
    if top == "pandas":
        return _classify_pandas(x)
    if top == "pyarrow":
        return _classify_table(x)
    if top in natives.TOPS:
        return natives.classify(x, top)
    return None


def _classify_ndarray(x: Any) -> tuple[str, Any, dict] | str | None:
    np = sys.modules.get("numpy")
    if np is None or not isinstance(x, np.ndarray):
        return None
    if type(x) is not np.ndarray:
        return f"a subclass of numpy.ndarray ({type_name(x)})"
    dt = x.dtype
    if dt.hasobject:
        return f"an array of dtype {dt} (holds Python objects)"
    if dt.metadata:
        return "an array whose dtype carries metadata"
    fmt = np.lib.format
    header = fmt.header_data_from_array_1_0(x)
    version = _npy_version(header)
    try:  # probe: the dtype as np.load gives it back from this header
        buf = io.BytesIO()
        fmt.write_array(buf, np.empty(0, dtype=dt), version=version, allow_pickle=False)
        buf.seek(0)
        back = np.load(buf, allow_pickle=False).dtype
        same = back == dt and repr(back) == repr(dt)
    except Exception:  # noqa: BLE001 - any failure means npy cannot describe it
        same = False
    if not same:
        return f"an array of dtype {dt!r} that the .npy header does not give back exactly"
    info = {
        "dtype": _jsonable_descr(header["descr"]),
        "shape": list(x.shape),
        "fortran_order": header["fortran_order"],
    }
    return NPY, (x, version), info


def _npy_version(header: dict) -> tuple[int, int] | None:
    """The .npy version for ``header``: None (1.0) unless it needs 2.0 (long) or 3.0 (non-latin-1 names).

    Passed explicitly so that numpy does not warn about choosing 2.0 / 3.0 itself.
    """
    text = repr(header)
    try:
        text.encode("latin1")
    except UnicodeEncodeError:
        return (3, 0)
    return (2, 0) if len(text) > 65000 else None


def _jsonable_descr(descr: Any) -> Any:
    if isinstance(descr, (list, tuple)):
        return [_jsonable_descr(d) for d in descr]
    return descr


def _classify_pandas(x: Any) -> tuple[str, Any, dict] | str | None:
    pd = sys.modules.get("pandas")
    if pd is None:
        return None
    if type(x) is pd.DataFrame:
        kind = "pandas.DataFrame"
    elif type(x) is pd.Series:
        kind = "pandas.Series"
    elif isinstance(x, (pd.DataFrame, pd.Series)):
        return f"a subclass of a pandas type ({type_name(x)})"
    else:
        return None
    try:
        import pyarrow  # noqa: F401 - the parquet writer; a pandas object is present
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return "pyarrow is not installed (parquet needs it)"
    reason = _frame_rules(pd, x, kind)
    if isinstance(reason, str):
        return reason
    frame, info = reason
    try:
        probe = _probe_frame(pd, frame)
        buf = io.BytesIO()
        _write_frame(frame=probe, f=buf)
        buf.seek(0)
        back = _read_frame(buf, info)
    except Exception as exc:  # noqa: BLE001 - pyarrow refuses many things, each means pickle
        return f"pyarrow cannot write it as parquet ({type(exc).__name__}: {exc})"
    if _pandas_sig(pd, x) != _pandas_sig(pd, back):
        return f"parquet does not keep it exactly: {_sig_diff(pd, x, back)}"
    return PARQUET, frame, info


def _sig_diff(pd: Any, x: Any, back: Any) -> str:
    """Say what the probe changed, for the safe-mode error."""
    if type(x) is pd.Series:
        pairs = [(x.name, x.dtype, back.dtype)]
    elif len(x.columns) == len(back.columns):
        pairs = list(zip(x.columns, x.dtypes, back.dtypes))
    else:
        return f"its columns {list(x.columns)[:5]} are read back as {list(back.columns)[:5]}"
    for label, a, b in pairs:
        if _dtype_sig(pd, a) != _dtype_sig(pd, b):
            return f"column {label!r} of dtype {a!r} is read back as {b!r}"
    if _index_sig(pd, x.index) != _index_sig(pd, back.index):
        return f"its index {_index_sig(pd, x.index)} is read back as {_index_sig(pd, back.index)}"
    if type(x) is pd.DataFrame:
        before, after = _index_sig(pd, x.columns), _index_sig(pd, back.columns)
        if before != after:
            return f"its column labels {before} are read back as {after}"
    return "its labels or flags change"


def _frame_rules(pd: Any, x: Any, kind: str) -> tuple[Any, dict] | str:
    """The frame written for ``x`` and the part's ``info``, or why not parquet."""
    if x.attrs:
        return "it has attrs (parquet keeps them only as JSON)"
    if not x.flags.allows_duplicate_labels:
        return "it disallows duplicate labels (a flag parquet does not keep)"
    info: dict[str, Any] = {"type": kind, "rows": int(len(x))}
    if kind == "pandas.Series":
        name = x.name
        if name is not None and type(name) is not str:
            return f"its name is a {type_name(name)}, not a str"
        info["name"] = name
        label = name if name is not None else "0"
        frame = x.to_frame(name=label)
    else:
        frame = x
        cols = frame.columns
        if isinstance(cols, pd.MultiIndex):
            return "its column labels are a MultiIndex"
        if not all(type(c) is str for c in cols):
            return "it has column labels that are not str"
        if type(cols) is not pd.Index:  # an empty RangeIndex comes back as Index
            return f"its column labels are a {type(cols).__name__}, not a flat Index"
        if not cols.is_unique:
            return "it has duplicate column labels"
        if cols.name is not None and type(cols.name) is not str:
            return "its columns' name is not a str"
        if cols.dtype == object:
            info["columns_dtype"] = "object"
    labels = list(frame.columns)
    info["columns"] = labels[:_MAX_INFO_COLUMNS]
    if len(labels) > _MAX_INFO_COLUMNS:
        info["ncolumns"] = len(labels)
    object_columns = []
    for i, dt in enumerate(frame.dtypes):
        col = frame.iloc[:, i]
        if dt == object:
            if not set(map(type, col.to_numpy())) <= {str, type(None)}:
                return f"its column {labels[i]!r} holds objects other than str and None"
            object_columns.append(labels[i])
        elif isinstance(dt, pd.CategoricalDtype) and dt.categories.dtype == object:
            if not set(map(type, dt.categories)) <= {str}:
                return f"its categorical column {labels[i]!r} has categories that are not str"
    if object_columns:
        info["object_columns"] = object_columns
    index = frame.index
    levels = index.levels if isinstance(index, pd.MultiIndex) else [index]
    for level in levels:
        if level.dtype == object and not set(map(type, level)) <= {str}:
            return "its index holds objects other than str"
    if isinstance(index, pd.MultiIndex):
        for level, codes in zip(index.levels, index.codes):
            if level.dtype == object and (codes < 0).any():
                return "its MultiIndex has missing labels in an object level"
    freq = getattr(index, "freq", None) if isinstance(index, (pd.DatetimeIndex, pd.TimedeltaIndex)) else None
    if freq is not None:
        freqstr = freq.freqstr
        try:
            same = pd.tseries.frequencies.to_offset(freqstr) == freq
        except Exception:  # noqa: BLE001
            same = False
        if not same:
            return f"its index frequency {freq!r} has no exact string form"
        info["index_freq"] = freqstr
    return frame, info


def _probe_frame(pd: Any, frame: Any) -> Any:
    """The first row of ``frame`` (or ``frame`` when empty), with object columns typed like the whole."""
    if len(frame) == 0:
        return frame
    probe = frame.iloc[:1].copy()
    for i, dt in enumerate(frame.dtypes):
        if dt == object and probe.iloc[0, i] is None:
            col = frame.iloc[:, i]
            present = col[col.notna()]
            if len(present):
                probe.iloc[0, i] = present.iloc[0]
    return probe


def _dtype_sig(pd: Any, dt: Any) -> tuple:
    sig: tuple = (type(dt).__module__, type(dt).__qualname__, repr(dt), str(dt))
    if isinstance(dt, pd.CategoricalDtype):
        cats = dt.categories
        sig += (bool(dt.ordered), _dtype_sig(pd, cats.dtype), tuple(cats))
    tz = getattr(dt, "tz", None)
    if tz is not None:
        sig += ("UTC",) if str(tz) == "UTC" else (type(tz).__module__, type(tz).__qualname__, str(tz))
    return sig


def _index_sig(pd: Any, index: Any) -> tuple:
    levels = index.levels if isinstance(index, pd.MultiIndex) else [index]
    return (
        type(index).__qualname__,
        tuple(index.names),
        tuple((type(level).__qualname__, _dtype_sig(pd, level.dtype)) for level in levels),
        getattr(index, "freq", None) if isinstance(index, (pd.DatetimeIndex, pd.TimedeltaIndex)) else None,
    )


def _pandas_sig(pd: Any, x: Any) -> tuple:
    """Everything about a DataFrame / Series that parquet might change, without its values."""
    sig: tuple = (
        type(x).__qualname__,
        tuple(sorted(x.attrs)),
        x.flags.allows_duplicate_labels,
        _index_sig(pd, x.index),
    )
    if type(x) is pd.Series:
        return sig + (x.name, _dtype_sig(pd, x.dtype))
    cols = x.columns
    return sig + (
        tuple(cols),
        _index_sig(pd, cols),
        tuple(_dtype_sig(pd, dt) for dt in x.dtypes),
    )


def _classify_table(x: Any) -> tuple[str, Any, dict] | str | None:
    pa = sys.modules.get("pyarrow")
    if pa is None or type(x) is not getattr(pa, "Table", None):
        return None
    import pyarrow.parquet as pq

    if any(_has_dictionary(pa, field.type) for field in x.schema):
        return "a dictionary-typed column (parquet re-encodes dictionaries)"
    try:
        buf = io.BytesIO()
        pq.write_table(x.schema.empty_table(), buf)
        buf.seek(0)
        back = pq.read_table(buf)
    except Exception as exc:  # noqa: BLE001
        return f"pyarrow cannot write it as parquet ({type(exc).__name__}: {exc})"
    if not back.schema.equals(x.schema, check_metadata=True):
        return "parquet does not keep its schema exactly"
    names = list(x.schema.names)
    info = {"type": "pyarrow.Table", "rows": int(x.num_rows), "columns": names[:_MAX_INFO_COLUMNS]}
    if len(names) > _MAX_INFO_COLUMNS:
        info["ncolumns"] = len(names)
    return PARQUET, x, info


def _has_dictionary(pa: Any, t: Any) -> bool:
    if pa.types.is_dictionary(t):
        return True
    return any(_has_dictionary(pa, t.field(i).type) for i in range(getattr(t, "num_fields", 0)))


# --------------------------------------------------------------------------
# encoding


def _write_table(table: Any, f: Any, compression: Any) -> None:
    """Parquet into an Arrow buffer, then one write: pyarrow writing through a Python
    file object pays a Python call per page; the buffer holds the (compressed) file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..storage.codecs import parquet_options

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **parquet_options(compression, table.schema))
    f.write(memoryview(sink.getvalue()))


def _write_frame(frame: Any, f: Any, compression: Any = None) -> None:
    import pyarrow as pa

    _write_table(pa.Table.from_pandas(frame, preserve_index=None), f, compression)


def _write_npy(payload: tuple[Any, tuple[int, int] | None], f: Any) -> None:
    """An ``.npy`` file: the header, then the array's memory as it is when contiguous.

    ``numpy.lib.format.write_array`` copies a file-like target's data twice
    (buffered iteration, then ``tobytes``); a contiguous array is handed to
    ``f.write`` without a copy, in its memory order (which the header's
    ``fortran_order`` states).
    """
    np = sys.modules["numpy"]
    fmt = np.lib.format
    array, version = payload
    data = None
    if version in (None, (1, 0), (2, 0)) and array.size:
        if array.flags.c_contiguous:
            data = array
        elif array.flags.f_contiguous:
            data = array.T  # C-contiguous: the same bytes in the same (Fortran) order
    if data is None:
        fmt.write_array(f, array, version=version, allow_pickle=False)
        return
    header = fmt.header_data_from_array_1_0(array)
    (fmt.write_array_header_2_0 if version == (2, 0) else fmt.write_array_header_1_0)(f, header)
    f.write(memoryview(data.reshape(-1).view(np.uint8)))


def encode(fmt: str, payload: Any, f: IO[bytes], compression: Any = None) -> None:
    """Write ``payload`` in format ``fmt`` to ``f`` (only ``f.write`` is used).

    ``payload`` is the array / frame / table for ``npy`` and ``parquet``, and
    the encoded bytes for ``json`` and ``pickle`` (made when the value was
    split, so that errors surface there).  ``compression`` (the storage's
    setting) is applied by formats that compress inside the file (parquet);
    the storage compresses other formats as a whole.
    """
    if fmt == NPY:
        _write_npy(payload, f)
    elif fmt == PARQUET:
        pd = sys.modules.get("pandas")
        if pd is not None and type(payload) is pd.DataFrame:
            _write_frame(payload, f, compression)
        else:
            _write_table(payload, f, compression)
    elif fmt in (JSON, PICKLE):
        f.write(payload)
    elif fmt == persistent.SERIALIZER:
        persistent.encode(payload, f)
    elif fmt in natives.ENCODERS:
        natives.ENCODERS[fmt](payload, f)
    else:
        raise SerializationError(f"unknown part format {fmt!r}")


def dumps_json(node: Any) -> bytes:
    """A tree node as compact UTF-8 JSON (no NaN: they are tagged in the tree)."""
    return json.dumps(node, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


def dumps_pickle(obj: Any) -> tuple[bytes, dict]:
    """cloudpickle ``obj``; also returns the pickler's memo (id -> object) to find shared objects."""
    import cloudpickle

    buf = io.BytesIO()
    pickler = cloudpickle.Pickler(buf, protocol=PICKLE_PROTOCOL)
    pickler.dump(obj)
    memo = {key: value[1] for key, value in pickler.memo.copy().items()}
    return buf.getvalue(), memo


# --------------------------------------------------------------------------
# decoding


class Source:
    """Access to one part's stored bytes, from what a storage hands to ``join``.

    ``reader`` is one of:

    - ``bytes`` / ``bytearray`` / ``memoryview``: the bytes themselves;
    - a ``str`` or ``os.PathLike``: a local file (``npy`` parts of
      ``mmap_threshold`` bytes or more are memory-mapped copy-on-write);
    - a binary file object (anything with ``read``), read from its position
      and not closed;
    - a callable returning a binary file object, called once and closed after.
    """

    def __init__(self, reader: Any) -> None:
        self.reader = reader

    @property
    def path(self) -> str | None:
        r = self.reader
        return os.fspath(r) if isinstance(r, (str, os.PathLike)) else None

    def size(self) -> int | None:
        r = self.reader
        if isinstance(r, (bytes, bytearray, memoryview)):
            return memoryview(r).nbytes
        path = self.path
        return os.path.getsize(path) if path is not None else None

    def open(self) -> tuple[IO[bytes], bool]:
        """A seekable binary file and whether the caller must close it."""
        r = self.reader
        if isinstance(r, (bytes, bytearray, memoryview)):
            return io.BytesIO(r), True
        if self.path is not None:
            return open(self.path, "rb"), True
        if hasattr(r, "read"):
            f, owned = r, False
        elif callable(r):
            f, owned = r(), True
        else:
            raise SerializationError(
                f"a part reader must be bytes, a path, a file or a callable, not {type_name(r)}"
            )
        seekable = getattr(f, "seekable", None)
        if seekable is None or not seekable():
            data = f.read()
            if owned:
                f.close()
            return io.BytesIO(data), True
        return f, owned


def decode(fmt: str, info: dict, source: Source, *, mmap_threshold: int | None = MMAP_THRESHOLD) -> Any:
    """Read one part (a ``json`` part returns its tree node, still to be joined)."""
    if fmt == NPY and mmap_threshold is not None and source.path is not None:
        size = source.size()
        if size is not None and size >= mmap_threshold:
            import numpy as np

            return np.load(source.path, mmap_mode="c", allow_pickle=False)
    decoder = _DECODERS.get(fmt) or natives.DECODERS.get(fmt)
    if decoder is None:
        raise SerializationError(f"unknown part format {fmt!r}")
    if fmt == PARQUET:
        # A path, or an Arrow buffer over the bytes: pyarrow reads either natively
        # (columns in parallel), not through a Python file object.
        if source.path is not None:
            return decoder(source.path, info or {})
        if isinstance(source.reader, (bytes, bytearray, memoryview)):
            import pyarrow as pa

            return decoder(pa.BufferReader(pa.py_buffer(source.reader)), info or {})
    f, owned = source.open()
    try:
        return decoder(f, info or {})
    finally:
        if owned:
            f.close()


def _decode_npy(f: IO[bytes], info: dict) -> Any:
    import numpy as np

    return np.load(f, allow_pickle=False)


def _read_frame(f: Any, info: dict) -> Any:
    import pandas as pd

    frame = pd.read_parquet(f, engine="pyarrow")
    for label in info.get("object_columns", ()):
        col = frame[label]
        missing = col.isna().to_numpy()
        col = col.astype(object)
        if missing.any():
            col[missing] = None
        frame[label] = col
    if info.get("columns_dtype") == "object":
        frame.columns = frame.columns.astype(object)
    freq = info.get("index_freq")
    if freq is not None:
        frame.index = type(frame.index)(frame.index, freq=freq)
    if info.get("type") == "pandas.Series":
        series = frame.iloc[:, 0]
        series.name = info.get("name")
        return series
    return frame


def _decode_parquet(f: IO[bytes], info: dict) -> Any:
    kind = info.get("type")
    if kind in ("pandas.DataFrame", "pandas.Series"):
        return _read_frame(f, info)
    import pyarrow.parquet as pq

    return pq.read_table(f)


def _decode_json(f: IO[bytes], info: dict) -> Any:
    return json.loads(f.read().decode("utf-8"))


def _decode_pickle(f: IO[bytes], info: dict) -> Any:
    records = info.get("schemas")
    if records:  # checked before anything is unpickled: never the wrong shape
        from .schemas import changed_schema

        change = changed_schema(records)
        if change is not None:
            raise SchemaChangedError(change)
    if info.get("persistent"):
        return persistent.loads(f, info)
    return pickle.load(f)


_DECODERS: dict[str, Callable[[IO[bytes], dict], Any]] = {
    NPY: _decode_npy,
    PARQUET: _decode_parquet,
    JSON: _decode_json,
    PICKLE: _decode_pickle,
    persistent.SERIALIZER: persistent.decode,
}
