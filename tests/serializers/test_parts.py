"""split / join of results into a JSON tree and plain-format parts (store v2, issue 9)."""

import collections
import datetime
import io
import json
import math
import os
import struct
import subprocess
import sys
import textwrap
import threading
import zoneinfo

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from functionfuse.errors import SerializationError
from functionfuse.serializers.parts import INLINE_LIMIT, Part, join, split
from helpers import canonical, roundtrip

# --------------------------------------------------------------------------
# helpers




def float_bits(x):
    return struct.unpack("<Q", struct.pack("<d", x))[0]


def same(a, b):
    """Equality that also requires the same types, float bits (NaN, -0.0), dict order and key types."""
    assert type(a) is type(b), (type(a), type(b))
    if type(a) is float:
        assert float_bits(a) == float_bits(b), (a, b)
    elif type(a) in (list, tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            same(x, y)
    elif type(a) is dict:
        assert len(a) == len(b)
        for (ka, va), (kb, vb) in zip(a.items(), b.items()):
            same(ka, kb)
            same(va, vb)
    elif type(a) is np.ndarray:
        same_array(a, b)
    elif isinstance(a, np.generic):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), (a, b)
    else:
        assert a == b, (a, b)


def same_array(a, b):
    assert type(b) is np.ndarray
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    assert a.shape == b.shape
    fortran = a.flags.f_contiguous and not a.flags.c_contiguous
    assert (b.flags.f_contiguous and not b.flags.c_contiguous) == fortran
    assert a.tobytes(order="A") == b.tobytes(order="A")


def same_frame(a, b):
    assert type(a) is type(b)
    if isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b, check_exact=True, check_freq=True, check_flags=True)
        assert [repr(d) for d in a.dtypes] == [repr(d) for d in b.dtypes]
        assert list(a.dtypes) == list(b.dtypes)
        assert repr(a.columns.dtype) == repr(b.columns.dtype)
        assert type(a.columns) is type(b.columns)
    else:
        pd.testing.assert_series_equal(a, b, check_exact=True, check_freq=True, check_flags=True)
        assert repr(a.dtype) == repr(b.dtype)
        assert a.name == b.name and type(a.name) is type(b.name)
    assert type(a.index) is type(b.index)
    assert repr(a.index.dtype) == repr(b.index.dtype)
    assert list(a.index.names) == list(b.index.names)
    assert getattr(a.index, "freq", None) == getattr(b.index, "freq", None)
    dtypes_a = list(a.dtypes) if isinstance(a, pd.DataFrame) else [a.dtype]
    dtypes_b = list(b.dtypes) if isinstance(b, pd.DataFrame) else [b.dtype]
    for x, y in zip(dtypes_a, dtypes_b):
        if getattr(x, "tz", None) is not None and str(x.tz) != "UTC":
            assert type(x.tz) is type(y.tz)


def formats_of(parts):
    return [p.format for p in parts]


class Box:
    def __init__(self, v=None):
        self.v = v

    def __eq__(self, other):
        return type(other) is Box and self.v == other.v


Point = collections.namedtuple("Point", "x y")


class MyList(list):
    pass


class MyFrame(pd.DataFrame):
    @property
    def _constructor(self):
        return MyFrame


# --------------------------------------------------------------------------
# import hygiene


def test_import_does_not_load_numpy_pandas_pyarrow():
    code = (
        "import sys, functionfuse.serializers.parts, functionfuse.serializers.formats\n"
        "print(','.join(m for m in ('numpy', 'pandas', 'pyarrow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_plain_data_split_and_join_load_no_numpy():
    code = (
        "import sys, json\n"
        "from functionfuse.serializers.parts import split, join\n"
        "v = {'a': [1, 2.5, float('nan')], 3: (b'x', None), 'big': list(range(20000))}\n"
        "tree, parts = split(v)\n"
        "back = join(tree, [p.entry() for p in parts], [p.to_bytes() for p in parts])\n"
        "assert back['a'][:2] == [1, 2.5] and back[3] == (b'x', None) and back['big'][-1] == 19999\n"
        "print(','.join(m for m in ('numpy', 'pandas', 'pyarrow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# --------------------------------------------------------------------------
# the tree of plain data

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
    | st.binary()
)
keys = (
    st.text(max_size=5)
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.booleans()
    | st.none()
)
plain = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=6)
    | st.lists(children, max_size=6).map(tuple)
    | st.dictionaries(keys, children, max_size=6)
    | st.dictionaries(st.integers(), children, max_size=3),  # int keys beyond int64 -> pickled dict
    max_leaves=40,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=plain, limit=st.sampled_from([48, 300, INLINE_LIMIT]))
def test_plain_values_round_trip_exactly(value, limit):
    back, tree, parts = roundtrip(value, inline_limit=limit)
    same(value, back)
    assert set(formats_of(parts)) <= {"json", "pickle"}


@settings(max_examples=200, deadline=None)
@given(value=plain)
def test_safe_split_refuses_only_what_needs_pickle(value):
    try:
        tree, parts = split(value, safe=True)
    except SerializationError as exc:
        assert "safe mode" in str(exc) and "result" in str(exc)
        assert "pickle" in formats_of(split(value)[1])
        return
    assert "pickle" not in formats_of(parts)
    same(value, join(canonical(tree), [p.entry() for p in parts], [p.to_bytes() for p in parts], safe=True))


def test_tree_shapes_follow_the_documented_grammar():
    tree, parts = split({"coef": np.zeros(3), "score": 0.93, 1: "one", "1": (True, None), 2.0: [1, [2, "x"]]})
    assert parts[0].format == "npy"
    assert parts[0].info == {"dtype": "<f8", "shape": [3], "fortran_order": False}
    assert tree == {
        "t": "dict",
        "items": [
            ["coef", {"part": 0}],
            ["score", {"json": 0.93}],
            [1, {"json": "one"}],
            ["1", {"t": "tuple", "items": [{"json": True}, {"json": None}]}],
            [2.0, {"json": [1, [2, "x"]]}],
        ],
    }
    text = json.dumps(tree)
    assert '[2.0, {"json"' in text and '[1, {"json": "one"}]' in text  # int and float keys stay apart in JSON


def test_dict_key_types_and_order_survive_canonical_json():
    value = {"b": 1, "a": 2, 1: 3, "1": 4, 1.5: 5, False: 6, None: 7, "True": 8}
    back, _, _ = roundtrip(value)
    same(value, back)
    assert list(back) == list(value)
    back, _, _ = roundtrip({-0.0: "negative zero"})
    assert float_bits(next(iter(back))) == float_bits(-0.0)


@pytest.mark.parametrize(
    "x",
    [
        float("nan"),
        -float("nan"),
        struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000001))[0],  # signalling-NaN payload
        float("inf"),
        -float("inf"),
        -0.0,
        5e-324,
        1.7976931348623157e308,
        0.1,
    ],
)
def test_floats_keep_their_bits(x):
    back, tree, parts = roundtrip([x])
    assert not parts
    assert float_bits(back[0]) == float_bits(x)


@pytest.mark.parametrize(
    "x",
    [2**63 - 1, -(2**63), 2**63, -(2**63) - 1, 10**5000, -(10**5000)],
    ids=["max", "min", "over", "under", "huge", "-huge"],
)
def test_ints_of_any_size(x):
    back, tree, parts = roundtrip(x)
    assert back == x and type(back) is int and not parts
    assert ("json" in tree) == (-(2**63) <= x < 2**63)


def test_big_dict_keys_and_bad_keys_pickle_the_dict_only():
    value = {"ok": {"a": 1}, "bad": {2**70: "x"}, "nan": {float("nan"): 1}, "tuple": {(1, 2): 3}}
    back, tree, parts = roundtrip(value)
    assert formats_of(parts) == ["pickle"]
    assert parts[0].info == {"types": ["dict", "dict", "dict"]}
    assert tree["items"][0] == ["ok", {"t": "dict", "items": [["a", {"json": 1}]]}]
    assert back["bad"] == {2**70: "x"} and back["tuple"] == {(1, 2): 3}
    assert math.isnan(next(iter(back["nan"])))


def test_bytes_inline_and_large():
    small, big = b"\x00\xffabc", os.urandom(200_000)
    back, tree, parts = roundtrip({"s": small, "b": big})
    assert back == {"s": small, "b": big}
    assert formats_of(parts) == ["json"]
    assert len(json.dumps(tree)) < 200


# --------------------------------------------------------------------------
# containers the tree cannot represent, identity, depth


def test_container_subclasses_are_pickled_with_their_type():
    dd = collections.defaultdict(list, a=[1])
    value = {
        "nt": Point(1, 2),
        "od": collections.OrderedDict(b=1, a=2),
        "dd": dd,
        "ml": MyList([1, 2]),
        "set": {1, 2},
        "fs": frozenset({3}),
        "c": 1 + 2j,
        "dec": __import__("decimal").Decimal("1.10"),
        "dt": datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc),
        "ba": bytearray(b"xy"),
        "s": "plain",
    }
    back, tree, parts = roundtrip(value)
    assert formats_of(parts) == ["pickle"]
    for k, v in value.items():
        assert type(back[k]) is type(v) and back[k] == v
    assert back["dd"].default_factory is list
    assert str(back["dec"]) == "1.10"


def test_whole_value_pickled_when_it_is_one_object():
    back, tree, parts = roundtrip(Point(1, 2))
    assert tree == {"part": 0} and formats_of(parts) == ["pickle"]
    assert parts[0].info["type"].endswith("test_parts.Point")
    assert back == Point(1, 2) and type(back) is Point


def test_shared_list_pickles_the_whole_value_and_keeps_identity():
    shared = [1, 2]
    value = {"a": shared, "b": shared}
    back, tree, parts = roundtrip(value)
    assert tree == {"part": 0} and formats_of(parts) == ["pickle"]
    assert back["a"] is back["b"] and back == value


def test_cycle_pickles_the_whole_value():
    cyc = [1]
    cyc.append(cyc)
    back, tree, parts = roundtrip(cyc)
    assert tree == {"part": 0}
    assert back[1] is back
    d = {}
    d["self"] = d
    back, tree, _ = roundtrip({"x": d})
    assert tree == {"part": 0} and back["x"]["self"] is back["x"]


def test_shared_tuples_are_written_twice_and_stay_equal():
    t = (1, "a")
    back, tree, parts = roundtrip([t, t])
    assert not parts and back == [t, t]


def test_same_array_twice_is_one_part_and_one_object():
    a = np.arange(5.0)
    back, tree, parts = roundtrip({"a": a, "b": [a]})
    assert formats_of(parts) == ["npy"]
    assert back["a"] is back["b"][0]


def test_same_pickled_object_twice_is_one_item():
    box = Box(3)
    back, tree, parts = roundtrip({"a": box, "b": (box,)})
    assert formats_of(parts) == ["pickle"]
    assert back["a"] is back["b"][0]


def test_pickled_leaves_share_what_they_share():
    inner = Box("inner")
    back, tree, parts = roundtrip({"a": Box(inner), "b": Box(inner), "x": np.ones(2)})
    assert sorted(formats_of(parts)) == ["npy", "pickle"]
    assert back["a"].v is back["b"].v


def test_object_referring_to_a_tree_list_pickles_the_whole_value():
    lst = [1, 2]
    value = {"data": lst, "model": Box(lst)}
    back, tree, parts = roundtrip(value)
    assert tree == {"part": 0}
    assert back["model"].v is back["data"]


def test_object_referring_to_an_array_part_pickles_the_whole_value():
    arr = np.arange(3)
    value = {"coef": arr, "model": Box(arr)}
    back, tree, parts = roundtrip(value)
    assert tree == {"part": 0}
    assert back["model"].v is back["coef"]


def test_depth_limit_pickles_the_deep_subtree():
    deep = current = []
    for _ in range(100):
        nxt = []
        current.append(nxt)
        current = nxt
    value = {"deep": deep, "x": 1}
    back, tree, parts = roundtrip(value)
    assert formats_of(parts) == ["pickle"]
    same(value, back)
    with pytest.raises(SerializationError, match=r"result\['deep'\](\[0\]){63} is a list.*deeper than 64"):
        split(value, safe=True)
    back, tree, parts = roundtrip(value, max_depth=200)
    assert not parts


def test_unpicklable_leaf_names_its_path():
    with pytest.raises(SerializationError, match=r"result\['lock'\] \(_thread.lock\) cannot be pickled"):
        split({"ok": Box(1), "lock": threading.Lock()})


# --------------------------------------------------------------------------
# large subtrees become json parts


def test_large_subtree_becomes_a_json_part_keeping_types():
    big = {i: (i, str(i), float(i)) for i in range(5000)}
    value = {"small": 1, "big": big, "arr": np.ones(2)}
    back, tree, parts = roundtrip(value)
    assert sorted(formats_of(parts)) == ["json", "npy"]
    same(value["big"], back["big"])
    assert len(json.dumps(tree)) < 300
    js = next(p for p in parts if p.format == "json")
    assert js.info == {"t": "dict", "items": 5000}
    json.loads(js.to_bytes().decode("utf-8"))  # any JSON reader opens it


def test_manifest_tree_stays_small_with_many_medium_children():
    value = [list(range(2000)) for _ in range(200)]
    back, tree, parts = roundtrip(value)
    assert back == value
    assert len(json.dumps(tree)) < 2 * INLINE_LIMIT
    assert set(formats_of(parts)) == {"json"}


def test_json_part_may_refer_to_pickled_leaves_and_arrays():
    a = np.arange(4)
    value = [[i, Box(i)] for i in range(3000)] + [a]
    back, tree, parts = roundtrip(value)
    assert back[:-1] == value[:-1] and back[-1] is not a
    same_array(a, back[-1])
    assert sorted(formats_of(parts)) == ["json", "npy", "pickle"]


# --------------------------------------------------------------------------
# numpy arrays and scalars

DTYPES = [
    "?", "i1", "u1", "<i2", ">i2", "<u4", "<i8", "<u8", "<f2", "<f4", "<f8", ">f8", "g", "<c8", "<c16", "G",
    "<M8[ns]", "<M8[D]", "<M8", "<m8[s]", ">m8[us]", "<U5", "|S3", "|V4",
    [("a", "<i4"), ("b", "<f8", (2,))],
    [("x", [("y", "u1"), ("z", "<U2")]), ("w", "?")],
]  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(), (0,), (3,), (2, 3), (0, 4, 2)], ids=str)
def test_arrays_round_trip_through_npy(dtype, shape):
    dt = np.dtype(dtype)
    raw = np.random.default_rng(0).integers(0, 256, size=int(np.prod(shape)) * dt.itemsize, dtype=np.uint8)
    arr = np.frombuffer(raw.tobytes(), dtype=dt).reshape(shape).copy() if dt.itemsize else np.zeros(shape, dt)
    back, tree, parts = roundtrip(arr)
    assert formats_of(parts) == ["npy"]
    same_array(arr, back)
    assert np.load(io.BytesIO(parts[0].to_bytes()), allow_pickle=False).dtype == dt


def test_fortran_order_views_and_non_latin1_field_names():
    fortran = np.asfortranarray(np.arange(12.0).reshape(3, 4))
    view = np.arange(20)[::3]
    named = np.zeros(2, dtype=[("Ā", "<i4")])  # needs .npy version 3.0 (UTF-8 header)
    back, tree, parts = roundtrip({"fortran": fortran, "view": view, "named": named})
    assert formats_of(parts) == ["npy", "npy", "npy"]
    same_array(fortran, back["fortran"])
    assert back["fortran"].flags.f_contiguous and parts[0].info["fortran_order"] is True
    assert np.array_equal(back["view"], view) and back["view"].flags.c_contiguous
    same_array(named, back["named"])
    assert parts[2].to_bytes()[6:8] == b"\x03\x00"


@pytest.mark.parametrize(
    "dtype",
    [np.dtype([("a", "u1"), ("b", "<f8")], align=True)],
    ids=["aligned-struct"],
)
def test_dtypes_the_npy_header_changes_are_pickled(dtype):
    arr = np.zeros(3, dtype=dtype)
    back, tree, parts = roundtrip({"a": arr})
    assert formats_of(parts) == ["pickle"]
    assert repr(back["a"].dtype) == repr(dtype)
    same_array(arr, back["a"])


@settings(max_examples=150, deadline=None)
@given(
    arr=hnp.arrays(
        dtype=(
            hnp.scalar_dtypes() | hnp.byte_string_dtypes() | hnp.unicode_string_dtypes() | hnp.array_dtypes()
        ),
        shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
    ),
    fortran=st.booleans(),
)
def test_arrays_property(arr, fortran):
    if fortran:
        arr = np.asfortranarray(arr)
    back, tree, parts = roundtrip({"a": arr})
    assert formats_of(parts) == ["npy"]
    same_array(arr, back["a"])


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # np.matrix
@pytest.mark.parametrize(
    "make",
    [
        lambda: np.array([1, "a", None], dtype=object),
        lambda: np.zeros(2, dtype=[("o", object)]),
        lambda: np.matrix([[1, 2]]),
        lambda: np.ma.masked_array([1, 2], mask=[0, 1]),
        lambda: np.zeros(2, dtype=np.dtype(float, metadata={"unit": "m"})),
    ],
    ids=["object", "object-field", "matrix", "masked", "dtype-metadata"],
)
def test_arrays_npy_cannot_hold_are_pickled(make):
    arr = make()
    back, tree, parts = roundtrip({"a": arr})
    assert formats_of(parts) == ["pickle"]
    assert type(back["a"]) is type(arr)
    assert back["a"].dtype == arr.dtype
    with pytest.raises(SerializationError, match=r"result\['a'\] is a numpy"):
        split({"a": arr}, safe=True)


@pytest.mark.parametrize(
    "x",
    [
        np.float64(0.1), np.float64("nan"), np.float32(-0.0), np.float32("-inf"), np.float16(0.1),
        np.longdouble(1) / 3, np.int8(-5), np.int64(-(2**63)), np.uint64(2**64 - 1), np.uint8(7), np.bool_(True),
        np.complex128(1 - 2j), np.complex64(float("nan")), np.datetime64("NaT"), np.datetime64("2020-01-02T03:04:05.123456789"),
        np.datetime64("2020", "Y"), np.timedelta64(5, "s"), np.str_("héllo"), np.str_(""), np.bytes_(b"ab\x00c"), np.void(b"\x01\x02"),
    ],
    ids=repr,
)  # fmt: skip
def test_numpy_scalars_inline(x):
    back, tree, parts = roundtrip({"x": x})
    assert not parts
    assert type(back["x"]) is type(x)
    same(x, back["x"])
    split({"x": x}, safe=True)


def test_numpy_scalar_json_form_is_readable():
    tree, _ = split(np.float32(0.5))
    assert tree == {"numpy": "<f4", "json": 0.5}


def test_structured_numpy_scalar_is_pickled():
    x = np.zeros(1, dtype=[("a", "<i4")])[0]
    back, tree, parts = roundtrip([x])
    assert formats_of(parts) == ["pickle"] and back[0] == x


# --------------------------------------------------------------------------
# pandas


def _attrs_frame():
    df = pd.DataFrame({"a": [1]})
    df.attrs["source"] = (1, 2)
    return df


def _no_dup_frame():
    return pd.DataFrame({"a": [1]}).set_flags(allows_duplicate_labels=False)


PARQUET_FRAMES = {
    "numeric": lambda: pd.DataFrame({"i": [1, 2, 3], "f": [0.5, float("nan"), -0.0], "b": [True, False, True], "u": np.array([1, 2, 2**64 - 1], dtype="u8")}),
    "str": lambda: pd.DataFrame({"s": ["x", None, "z"]}),
    "string-pyarrow": lambda: pd.DataFrame({"s": pd.array(["x", None], dtype="string[pyarrow]")}),
    "object-str": lambda: pd.DataFrame({"o": pd.Series(["x", "y"], dtype=object)}),
    "object-str-none": lambda: pd.DataFrame({"o": pd.Series(["x", None], dtype=object)}),
    "object-all-none": lambda: pd.DataFrame({"o": pd.Series([None, None], dtype=object)}),
    "category": lambda: pd.DataFrame({"c": pd.Categorical(["a", None, "a"], categories=["z", "a", "b"], ordered=True)}),
    "tz-utc": lambda: pd.DataFrame({"t": pd.date_range("2020", periods=3, tz="UTC")}),
    "tz-paris": lambda: pd.DataFrame({"t": pd.date_range("2020", periods=3, tz=zoneinfo.ZoneInfo("Europe/Paris"))}),
    "datetime-ns": lambda: pd.DataFrame({"t": pd.Series(pd.date_range("2020", periods=2)).astype("datetime64[ns]")}),
    "timedelta": lambda: pd.DataFrame({"d": pd.to_timedelta([1, 2], unit="s")}),
    "nullable": lambda: pd.DataFrame({"I": pd.array([1, None], dtype="Int64"), "B": pd.array([True, None], dtype="boolean"), "F": pd.array([0.5, None], dtype="Float64")}),
    "float16": lambda: pd.DataFrame({"h": np.array([0.1, 2], dtype=np.float16)}),
    "period-interval": lambda: pd.DataFrame({"p": pd.period_range("2020", periods=2, freq="M"), "iv": pd.interval_range(0, 2)}),
    "freq-index": lambda: pd.DataFrame({"a": [1, 2, 3]}, index=pd.date_range("2020", periods=3, freq="W-SUN", name="when")),
    "range-step": lambda: pd.DataFrame({"a": [1, 2]}, index=pd.RangeIndex(10, 14, 2, name="r")),
    "str-index": lambda: pd.DataFrame({"a": [1, 2]}, index=pd.Index(["p", "q"], name="k")),
    "multiindex-rows": lambda: pd.DataFrame({"a": [1, 2]}, index=pd.MultiIndex.from_tuples([("a", 1), ("b", 2)], names=["x", None])),
    "object-column-labels": lambda: pd.DataFrame({"a": [1]}).set_axis(pd.Index(["a"], dtype=object), axis=1),
    "columns-name": lambda: pd.DataFrame({"a": [1]}).rename_axis("cols", axis=1),
    "no-columns": lambda: pd.DataFrame(columns=pd.Index([], dtype="str")),
    "no-rows": lambda: pd.DataFrame({"a": pd.Series([], dtype="int32"), "s": pd.Series([], dtype="str")}),
    "series-named": lambda: pd.Series([1.5, 2.5], name="y", index=pd.Index(["a", "b"])),
    "series-unnamed": lambda: pd.Series([1, 2]),
    "series-category": lambda: pd.Series(pd.Categorical(["a", "b"]), name="c"),
    "series-object-str": lambda: pd.Series(["a", None], dtype=object),
}  # fmt: skip

PICKLE_FRAMES = {
    "multiindex-columns": lambda: pd.DataFrame([[1, 2]], columns=pd.MultiIndex.from_tuples([("a", "x"), ("a", "y")])),
    "int-labels": lambda: pd.DataFrame([[1, 2]]),
    "duplicate-labels": lambda: pd.DataFrame([[1, 2]], columns=["a", "a"]),
    "object-mixed": lambda: pd.DataFrame({"o": pd.Series([1, "a"], dtype=object)}),
    "object-nan-and-str": lambda: pd.DataFrame({"o": pd.Series(["a", float("nan")], dtype=object)}),
    "object-bytes": lambda: pd.DataFrame({"o": pd.Series([b"a"], dtype=object)}),
    "object-lists": lambda: pd.DataFrame({"o": pd.Series([[1], [2]], dtype=object)}),
    "object-np-str": lambda: pd.DataFrame({"o": pd.Series([np.str_("a")], dtype=object)}),
    "object-index-mixed": lambda: pd.DataFrame({"a": [1, 2]}, index=pd.Index(["p", 1], dtype=object)),
    "attrs": _attrs_frame,
    "no-duplicate-labels-flag": _no_dup_frame,
    "subclass": lambda: MyFrame({"a": [1]}),
    "series-int-name": lambda: pd.Series([1], name=3),
}  # fmt: skip

# Whatever format these end up in, they must come back exactly (the probe decides).
ANY_FRAMES = {
    "datetime-s": lambda: pd.DataFrame({"t": pd.Series(pd.date_range("2020", periods=2)).astype("datetime64[s]")}),
    "int-categories": lambda: pd.DataFrame({"c": pd.Categorical([1, 2, 1])}),
    "empty-category": lambda: pd.DataFrame({"c": pd.Categorical([], categories=["x"])}),
    "string-python": lambda: pd.DataFrame({"s": pd.array(["x", None], dtype="string[python]")}),
    "object-index": lambda: pd.DataFrame({"a": [1, 2]}, index=pd.Index(["p", "q"], dtype=object)),
    "index-name-clash": lambda: pd.DataFrame({"a": [1, 2]}, index=pd.Index([3, 4], name="a")),
    "sparse": lambda: pd.DataFrame({"s": pd.arrays.SparseArray([0, 1, 0])}),
    "business-day-freq": lambda: pd.DataFrame({"a": [1, 2]}, index=pd.bdate_range("2020-01-01", periods=2)),
    "complex": lambda: pd.DataFrame({"c": [1 + 2j]}),
    "empty": lambda: pd.DataFrame(),
    "timezone-utc-object": lambda: pd.DataFrame({"t": pd.date_range("2020", periods=2, tz=datetime.timezone.utc)}),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(PARQUET_FRAMES))
def test_frames_parquet_holds_exactly(name):
    df = PARQUET_FRAMES[name]()
    back, tree, parts = roundtrip({"df": df})
    assert formats_of(parts) == ["parquet"], parts
    same_frame(df, back["df"])
    info = parts[0].info
    assert info["type"] == f"pandas.{type(df).__name__}" and info["rows"] == len(df)
    split({"df": df}, safe=True)


@pytest.mark.parametrize("name", sorted(PICKLE_FRAMES))
def test_frames_parquet_cannot_hold_are_pickled(name):
    df = PICKLE_FRAMES[name]()
    back, tree, parts = roundtrip({"df": df})
    assert formats_of(parts) == ["pickle"]
    same_frame(df, back["df"])
    assert back["df"].attrs == df.attrs
    assert back["df"].flags.allows_duplicate_labels == df.flags.allows_duplicate_labels
    with pytest.raises(SerializationError, match=r"result\['df'\] is a .*safe mode"):
        split({"df": df}, safe=True)


@pytest.mark.parametrize("name", sorted(ANY_FRAMES))
def test_frames_round_trip_whatever_the_format(name):
    df = ANY_FRAMES[name]()
    back, tree, parts = roundtrip(df)
    assert len(parts) == 1
    same_frame(df, back)


def test_parquet_info_and_fixups():
    index = pd.date_range("2020", periods=2, freq="D")
    df = pd.DataFrame({"o": pd.Series(["x", None], dtype=object, index=index), "n": [1, 2]}, index=index)
    df.columns = df.columns.astype(object)
    _, parts = split(df)
    assert parts[0].info == {
        "type": "pandas.DataFrame",
        "rows": 2,
        "columns": ["o", "n"],
        "columns_dtype": "object",
        "object_columns": ["o"],
        "index_freq": "D",
    }


def test_wide_frame_info_is_capped():
    df = pd.DataFrame(np.zeros((1, 300)), columns=[f"c{i}" for i in range(300)])
    _, parts = split(df)
    assert len(parts[0].info["columns"]) == 256 and parts[0].info["ncolumns"] == 300


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cols=st.lists(
        st.sampled_from(
            ["int8", "int64", "uint32", "float32", "float64", "bool", "str", "object", "Int64", "category"]
            + ["datetime64[ns]", "datetime64[us, UTC]"]
        ),
        min_size=0,
        max_size=5,
    ),
    rows=st.integers(0, 6),
    seed=st.integers(0, 2**32 - 1),
)  # fmt: skip
def test_frames_property(cols, rows, seed):
    rng = np.random.default_rng(seed)
    data = {}
    for i, dtype in enumerate(cols):
        ints = rng.integers(0, 5, size=rows)
        if dtype in ("str", "object", "category"):
            values = pd.Series([None if v == 0 else f"v{v}" for v in ints], dtype=object)
            data[f"c{i}"] = values.astype(dtype) if dtype != "object" else values
        elif dtype == "datetime64[ns]":
            data[f"c{i}"] = pd.Series(pd.to_datetime(ints, unit="D")).astype(dtype)
        elif dtype.startswith("datetime"):
            data[f"c{i}"] = pd.Series(pd.to_datetime(ints, unit="D")).dt.tz_localize("UTC")
        elif dtype == "Int64":
            data[f"c{i}"] = pd.array([None if v == 0 else int(v) for v in ints], dtype="Int64")
        else:
            data[f"c{i}"] = ints.astype(dtype)
    df = pd.DataFrame(data, index=pd.RangeIndex(rows))
    back, tree, parts = roundtrip(df)
    same_frame(df, back)


# --------------------------------------------------------------------------
# pyarrow tables


@pytest.mark.parametrize(
    "table, fmt",
    [
        (pa.table({"a": [1, 2], "b": ["x", None], "ts": pa.array([1, 2], pa.timestamp("ns", tz="UTC"))}), "parquet"),
        (pa.table({"d": pa.array([1], pa.duration("s")), "dec": pa.array([1], pa.decimal128(5, 2))}), "parquet"),
        (pa.table({"a": [1]}).replace_schema_metadata({"k": "v"}), "parquet"),
        (pa.table({"a": pa.array([1, 2], pa.timestamp("s"))}), "pickle"),
        (pa.table({"a": pa.array([1], pa.date64())}), "pickle"),
        (pa.table({"d": pa.array(["x", "y"]).dictionary_encode()}), "pickle"),
        (pa.table([pa.array([1]), pa.array([2])], names=["a", "a"]), "pickle"),
    ],
    ids=["basic", "duration-decimal", "metadata", "timestamp-s", "date64", "dictionary", "duplicate-names"],
)
def test_arrow_tables(table, fmt):
    back, tree, parts = roundtrip({"t": table})
    assert formats_of(parts) == [fmt]
    assert type(back["t"]) is pa.Table
    assert back["t"].schema.equals(table.schema, check_metadata=True)
    assert back["t"].equals(table)


# --------------------------------------------------------------------------
# readers, writers, mmap, safe join


def test_write_needs_only_write():
    class WriteOnly:
        def __init__(self):
            self.chunks = []

        def write(self, data):
            self.chunks.append(bytes(data))

    value = {
        "a": np.arange(3),
        "df": pd.DataFrame({"x": [1]}),
        "t": pa.table({"y": [1]}),
        "p": Box(1),
        "j": list(range(30000)),
    }
    tree, parts = split(value)
    assert sorted(formats_of(parts)) == ["json", "npy", "parquet", "parquet", "pickle"]
    for part in parts:
        sink = WriteOnly()
        part.write(sink)
        assert b"".join(sink.chunks) == part.to_bytes()


def test_readers_of_every_kind(tmp_path):
    value = {"a": np.arange(3), "df": pd.DataFrame({"x": [1]}), "p": Box(1), "j": list(range(30000))}
    tree, parts = split(value)
    blobs = [p.to_bytes() for p in parts]
    paths = []
    for i, blob in enumerate(blobs):
        path = tmp_path / f"part{i}"
        path.write_bytes(blob)
        paths.append(path)

    class Stream:  # not seekable
        def __init__(self, data):
            self._f = io.BytesIO(data)
            self.closed = False

        def read(self, n=-1):
            return self._f.read(n)

        def seekable(self):
            return False

        def close(self):
            self.closed = True

    opened = []

    def opener(i):
        def open_():
            stream = Stream(blobs[i])
            opened.append(stream)
            return stream

        return open_

    variants = {
        "bytes": blobs,
        "memoryview": [memoryview(b) for b in blobs],
        "str-path": [str(p) for p in paths],
        "pathlike": paths,
        "file": [io.BytesIO(b) for b in blobs],
        "callable": [opener(i) for i in range(len(blobs))],
        "dict": dict(enumerate(blobs)),
    }
    for name, readers in variants.items():
        back = join(tree, parts, readers)
        np.testing.assert_array_equal(back["a"], value["a"])
        same_frame(value["df"], back["df"])
        assert back["p"] == value["p"] and back["j"] == value["j"], name
    assert opened and all(s.closed for s in opened)


def test_join_does_not_alias_the_tree():
    tree, parts = split({"a": [1, [2]]})
    back = join(tree, parts, [])
    back["a"][1].append(3)
    assert tree == {"t": "dict", "items": [["a", {"json": [1, [2]]}]]}
    assert join(tree, parts, []) == {"a": [1, [2]]}


def test_join_reads_only_named_parts_once():
    a = np.arange(3)
    tree, parts = split({"a": a, "b": a})
    calls = []

    def opener():
        calls.append(1)
        return io.BytesIO(parts[0].to_bytes())

    back = join(tree, parts, [opener])
    assert calls == [1] and back["a"] is back["b"]
    assert join({"json": 5}, [], []) == 5


def test_large_npy_from_a_path_is_memory_mapped_copy_on_write(tmp_path):
    arr = np.arange(1000, dtype="<f8").reshape(10, 100, order="F")
    tree, parts = split(arr)
    path = tmp_path / "obj"
    path.write_bytes(parts[0].to_bytes())
    before = path.read_bytes()
    back = join(tree, parts, [str(path)], mmap_threshold=0)
    assert isinstance(back, np.memmap) and back.mode == "c"
    np.testing.assert_array_equal(back, arr)
    assert back.flags.f_contiguous
    back[0, 0] = -1.0
    assert path.read_bytes() == before
    plain = join(tree, parts, [str(path)])  # default threshold 64 MiB: read into memory
    assert type(plain) is np.ndarray
    in_memory = join(tree, parts, [path.read_bytes()], mmap_threshold=0)  # bytes cannot be mapped
    assert type(in_memory) is np.ndarray


def test_safe_join_refuses_pickle_by_path():
    tree, parts = split({"model": Box(1), "a": np.arange(2)})
    readers = [p.to_bytes() for p in parts]
    with pytest.raises(SerializationError, match=r"result\['model'\] is stored as a pickle .*Box.*safe mode"):
        join(tree, parts, readers, safe=True)
    tree2, parts2 = split({"a": np.arange(2), "df": pd.DataFrame({"x": [1.0]}), "n": [1, (2, 3)]})
    join(tree2, parts2, [p.to_bytes() for p in parts2], safe=True)


def test_safe_split_names_the_path_and_type():
    with pytest.raises(SerializationError, match=r"result\['cfg'\]\[1\] is a .*Box, which only pickle"):
        split({"cfg": [1, Box(2)]}, safe=True)
    shared = {}
    with pytest.raises(SerializationError, match=r"result\['b'\] is the same dict object as result\['a'\]"):
        split({"a": shared, "b": shared}, safe=True)
    with pytest.raises(SerializationError, match=r"result\[0\] is a pandas.DataFrame.*labels that are not str"):
        split([pd.DataFrame([[1]])], safe=True)
    seconds = pd.DataFrame({"t": pd.Series(pd.date_range("2020", periods=2)).astype("datetime64[s]")})
    changed = r"column 't' of dtype dtype\('<M8\[s\]'\) is read back as dtype\('<M8\[ms\]'\)"
    with pytest.raises(SerializationError, match=changed):
        split({"df": seconds}, safe=True)


@pytest.mark.parametrize(
    "tree, parts",
    [
        ({"t": "set", "items": []}, []),
        ({"what": 1}, []),
        ([1], []),
        ({"part": 3}, []),
        ({"t": "dict", "items": [[[1], {"json": 1}]]}, []),
        ({"float": "zero"}, []),
        ({"part": 0}, [{"format": "xz", "info": {}}]),
    ],
)
def test_bad_trees_raise_serialization_error(tree, parts):
    with pytest.raises(SerializationError):
        join(tree, parts, [b""] * len(parts))


def test_json_part_referring_to_itself_is_an_error():
    with pytest.raises(SerializationError, match="refers to itself"):
        join({"part": 0}, [{"format": "json", "info": {}}], [b'{"part": 0}'])


def test_corrupt_part_is_a_serialization_error():
    tree, parts = split(np.arange(3))
    with pytest.raises(SerializationError, match=r"cannot read part 0 \(npy\)"):
        join(tree, parts, [b"garbage"])


# --------------------------------------------------------------------------
# parts open without functionfuse


def test_npy_and_parquet_parts_open_without_functionfuse(tmp_path):
    arr = np.asfortranarray(np.arange(6, dtype=">i4").reshape(2, 3))
    df = pd.DataFrame(
        {"s": ["x", None], "t": pd.date_range("2020", periods=2, tz="UTC"), "c": pd.Categorical(["a", "b"])}
    )
    table = pa.table({"a": [1, 2]})
    tree, parts = split({"arr": arr, "df": df, "t": table})
    assert formats_of(parts) == ["npy", "parquet", "parquet"]
    for name, part in zip(["a.npy", "df.parquet", "t.parquet"], parts):
        (tmp_path / name).write_bytes(part.to_bytes())
    # Only the directory holding numpy/pandas/pyarrow goes on sys.path: no .pth files, so the
    # editable install of functionfuse is not found.
    site = os.path.dirname(os.path.dirname(np.__file__))
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.append({site!r})
        try:
            import functionfuse
        except ImportError:
            pass
        else:
            raise SystemExit("functionfuse is importable: " + functionfuse.__file__)
        import numpy, pandas, pyarrow.parquet
        a = numpy.load("a.npy", allow_pickle=False)
        assert a.dtype == numpy.dtype(">i4") and a.shape == (2, 3) and a.flags.f_contiguous
        assert a.tolist() == [[0, 1, 2], [3, 4, 5]], a.tolist()
        df = pandas.read_parquet("df.parquet")
        assert list(df.columns) == ["s", "t", "c"] and df["s"].tolist()[0] == "x"
        assert str(df["t"].dt.tz) == "UTC" and df["c"].dtype == "category"
        assert pyarrow.parquet.read_table("t.parquet").column("a").to_pylist() == [1, 2]
        assert pandas.read_parquet("t.parquet")["a"].tolist() == [1, 2]
        print("ok")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "ok"


def test_part_repr_and_entry():
    part = split(np.zeros(2))[1][0]
    assert isinstance(part, Part)
    assert part.entry() == {"format": "npy", "info": {"dtype": "<f8", "shape": [2], "fortran_order": False}}
    assert "npy" in repr(part)


@pytest.mark.parametrize("value", [
    {"a": 1, "b": "x", "c": [1, [2, 3]], "d": None, "e": 1.5},
    [1, 2, 3], "text", 7, {}, None,
])
def test_plain_value_gives_what_join_gives_for_plain_trees(value):
    from functionfuse.serializers.parts import NOT_PLAIN, plain_value

    tree, parts = split(value)
    assert not parts
    got = plain_value(tree)
    assert got is not NOT_PLAIN and got == join(tree, [], ()) == value
    if isinstance(value, dict) and "c" in value:
        got["c"].append(9)  # lists are copies: the tree is intact
        assert join(tree, [], ()) == value


@pytest.mark.parametrize("value", [{1: "int key"}, {"t": (1, 2)}, (1, 2), {"n": float("nan")}, {"b": b"x"}])
def test_plain_value_leaves_other_trees_to_join(value):
    from functionfuse.serializers.parts import NOT_PLAIN, plain_value

    tree, _ = split(value)
    assert plain_value(tree) is NOT_PLAIN


# --------------------------------------------------------------------------
# plain_tree: the fast path for small plain results gives split's tree exactly

_scalars = st.one_of(
    st.none(), st.booleans(), st.text(max_size=20),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
)
_leaves = st.one_of(_scalars, st.lists(_scalars, max_size=6), st.tuples(_scalars))
_plain_like = st.one_of(
    _leaves,
    st.dictionaries(st.one_of(st.text(max_size=8), st.integers(-3, 3)), _leaves, max_size=6),
    st.dictionaries(st.text(max_size=4), st.dictionaries(st.text(max_size=3), _scalars, max_size=2), max_size=2),
)


@settings(max_examples=400, deadline=None)
@given(value=_plain_like, limit=st.sampled_from([INLINE_LIMIT, 64, 200]))
def test_plain_tree_is_splits_tree_or_none(value, limit):
    from functionfuse.serializers.parts import plain_tree

    fast = plain_tree(value, limit)
    tree, parts = split(value, inline_limit=limit)
    if fast is not None:
        assert not parts
        assert json.dumps(fast) == json.dumps(tree)  # same members, same order


def test_plain_tree_declines_a_shared_list_and_big_values():
    from functionfuse.serializers.parts import plain_tree

    shared = [1, 2]
    assert plain_tree({"a": shared, "b": shared}) is None
    assert plain_tree({"a": [1, 2], "b": [1, 2]}) is not None
    assert plain_tree("x" * INLINE_LIMIT) is None
    assert plain_tree({"a": 2**64}) is None
    assert plain_tree((1, 2)) is None
    assert plain_tree({1: 2}) is None
    # the usual small results do take it
    for value in ({"i": 1, "name": "x", "vals": [1, 2.5, None]}, 3, "s", [1, "a"], {}, [], None, 1.5):
        assert plain_tree(value) is not None, value


@pytest.mark.parametrize("make", [
    lambda n: "x" * n,
    lambda n: {"k": "x" * n},
    lambda n: {"key": ["x" * n, 1, 2.5]},
    lambda n: ["x" * n, None, True],
])
def test_plain_tree_agrees_with_split_at_the_inline_limit(make):
    from functionfuse.serializers.parts import plain_tree

    for n in range(120):
        value = make(n)
        tree, parts = split(value, inline_limit=100)
        fast = plain_tree(value, 100)
        assert (fast is not None) == (not parts), n
        if fast is not None:
            assert json.dumps(fast) == json.dumps(tree)
