import dataclasses
import datetime
import enum
import pathlib
import pickle
import threading
from collections import OrderedDict, namedtuple

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from functionfuse import HashingError, normalize_token, tokenize


def check_token(value, other):
    """Idempotent, stable across a pickle round trip, different for different input."""
    t = tokenize(value)
    assert tokenize(value) == t
    assert tokenize(pickle.loads(pickle.dumps(value))) == t
    assert tokenize(other) != t


def test_golden_digests():
    """Pinned digests: changing the encoding breaks every user's cache; do it on purpose only."""
    pinned = {
        "int": tokenize(1),
        "str": tokenize("1"),
        "nested": tokenize({"a": [1, 2.5, None, True], "b": (b"x", frozenset({3}))}),
        "array": tokenize(np.arange(6, dtype="int64").reshape(2, 3)),
    }
    assert pinned == {
        "int": "770d322cb9fa7fc475b6125a23b3e22544dc1244525066b4f434d1d275fc7461",
        "str": "bfeb840cc599f3ab63a194d72649a9446e9acd7ecd8e358c61c79321837674e4",
        "nested": "fad7c43972202cb35e6fab895ca4876df11e07bd9f460344dc8af0fc61ef4dd6",
        "array": "0c0588d0d85a4d1082fe91db38391e4fe322126c1ce49d14a34dedeed2c71d3c",
    }


def test_golden_digests_of_installed_types():
    """Installed (stdlib, numpy, pandas) types keep their module in the encoding:
    naming the user's types without theirs must not move these."""
    import decimal
    import fractions
    import logging
    import re
    import uuid

    pinned = {
        "datetime": tokenize(datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)),
        "date": tokenize(datetime.date(2024, 1, 2)),
        "path": tokenize(pathlib.PurePosixPath("/a/b")),
        "ordered": tokenize(OrderedDict(a=1)),
        "regexflag": tokenize(re.IGNORECASE),
        "decimal": tokenize(decimal.Decimal("1.5")),
        "fraction": tokenize(fractions.Fraction(1, 3)),
        "uuid": tokenize(uuid.UUID(int=5)),
        "classes": tokenize((int, dict, OrderedDict)),
        "range": tokenize(range(3)),
        "frame": tokenize(pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})),
        "npscalar": tokenize(np.float32(1.5)),
        "logger": tokenize(logging.getLogger("x")),
    }
    assert pinned == {
        "datetime": "6adcbe8bfddfded2f022b33c6790981e537bc6550748d3d36fb2e7f6749a2e59",
        "date": "1a6475f8e46bc87d8546373eb66fe5bc5774fa4204436ab41c8cfd0333c3dcf5",
        "path": "36aaad3a792edc823ab166d7138646ec75a53785bcac0e9fb252dd21d8c6cef6",
        "ordered": "ae673af1adbd20a49503e1e7057ac94a0dfa7139bbfa71c80ccd8136db9d3d49",
        "regexflag": "6a93fb23434eab11ca7ac613e525135262168b194b649b750161121649d678a3",
        "decimal": "11c9cd666b3da374eb719ceccf2b6b11ef8fbe4f52de9dc4241ad9e1134b687d",
        "fraction": "56f4f2dd6965e0bda7a4c59d3036fddd91682e4a898543b791c7f6a6a1ba0e53",
        "uuid": "67c2c58e75203026f5bbda69f9c57dc17db76f94b52d057f865231857f12315e",
        "classes": "bb0f07ece08c24f0a62f16e97f8e617b771afb96d9c5dc6d850a97c69b5ab159",
        "range": "6e99da0f24cc9d36e63894a279fac0268e36ab67f6590a1424ca3632a8d183bc",
        "frame": "0bcfd4c031ee3c4d84b873351f3ab6f81734fcb352b5456daed13ba77b6e57c8",
        "npscalar": "efd7bd5083d4eeff014a15961994a75adcaf188fd638ae370ccbad6b28452abe",
        "logger": "d6843dce55176b5464be90216b5790e0b3a87d5f969083740f4a1935e9d47b79",
    }


def test_user_types_are_named_without_their_module():
    """Deliberate encoding change: the user's enum members, dataclasses and named
    tuples are tagged with their qualified name alone (was module + qualname)."""
    from functionfuse.hashing import Encoder

    from functionfuse.fingerprint import code_token

    def part(cls):  # the user's class: qualname + "@" + its code token
        name = cls.__qualname__.encode() + b"@" + code_token(cls).encode()
        return b"%d:%s" % (len(name), name)

    # enum members: the member's value too ("v" + its encoding)
    assert Encoder().encode(Color.RED) == b"K" + part(Color) + b"E9:Color.REDv3:i1e"
    assert Encoder().encode(Point(1, 2)) == b"K" + part(Point) + b"ti1ei2ee"
    # Instances encoded by their fields carry their class's code: editing a
    # method of a user's dataclass changes the key.

    name = b"Config@" + code_token(Config).encode()
    assert Encoder().encode(Config(0.5, [])) == b"D%d:%sds2:lrf0x1.0000000000000p-1es6:layerslee" % (len(name), name)


def test_type_tags_prevent_collisions():
    values = [1, 1.0, True, "1", b"1", [1], (1,), {1}, frozenset({1}), {1: None}, None, 0, False, "", b""]
    tokens = [tokenize(v) for v in values]
    assert len(set(tokens)) == len(values)


def test_container_equality_semantics():
    # dict order changes what iterating code produces: it is part of the value
    assert tokenize({"a": 1, "b": 2}) != tokenize({"b": 2, "a": 1})
    assert tokenize({"a": 1, "b": 2}) == tokenize(dict([("a", 1), ("b", 2)]))
    assert tokenize({3, 1, 2}) == tokenize({2, 3, 1})
    assert tokenize([1, 2]) != tokenize([2, 1])
    assert tokenize([[1], 2]) != tokenize([1, [2]])
    assert tokenize("ab", "c") != tokenize("a", "bc")


def test_float_edge_cases():
    assert tokenize(0.0) != tokenize(-0.0)
    assert tokenize(float("nan")) == tokenize(float("nan"))
    assert tokenize(0.1 + 0.2) != tokenize(0.3)


def test_numpy_by_content():
    a = np.arange(10.0)
    check_token(a, a + 1)
    assert tokenize(a) == tokenize(a.copy())
    assert tokenize(a) != tokenize(a.astype("float32"))
    assert tokenize(a.reshape(2, 5)) != tokenize(a.reshape(5, 2))
    assert tokenize(a[::2]) == tokenize(np.ascontiguousarray(a[::2]))
    assert tokenize(np.float64(1.0)) != tokenize(1.0)
    check_token(np.array(["a", None], dtype=object), np.array(["a", 1], dtype=object))


def test_pandas_by_content():
    df = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    check_token(df, df.assign(a=[1, 3]))
    assert tokenize(df) == tokenize(df.copy())
    assert tokenize(df) != tokenize(df.rename(columns={"a": "c"}))
    assert tokenize(df) != tokenize(df.set_axis([5, 6]))
    s = pd.Series([1.0, 2.0], name="s")
    check_token(s, s.rename("t"))
    assert tokenize(df["a"]) != tokenize(df["a"].astype("float64"))


class Color(enum.Enum):
    RED = 1
    BLUE = 2


@dataclasses.dataclass
class Config:
    lr: float
    layers: list


Point = namedtuple("Point", "x y")


def test_stdlib_types():
    check_token(Color.RED, Color.BLUE)
    check_token(Config(0.1, [1, 2]), Config(0.1, [1, 3]))
    check_token(Point(1, 2), Point(2, 1))
    assert tokenize(Point(1, 2)) != tokenize((1, 2))
    check_token(pathlib.PurePosixPath("/a/b"), pathlib.PurePosixPath("/a/c"))
    check_token(datetime.datetime(2024, 1, 1), datetime.datetime(2024, 1, 2))
    check_token(OrderedDict(a=1), OrderedDict(a=2))
    assert tokenize(OrderedDict(a=1)) != tokenize({"a": 1})
    check_token(range(3), range(4))
    check_token(slice(1, 2), slice(1, 3))


class Opaque:
    """Holds a lock: its pickled state is not plain data."""

    def __init__(self):
        self.lock = threading.Lock()


class WithToken:
    def __init__(self, v):
        self.v = v

    def __functionfuse_token__(self):
        return ("WithToken", self.v)


class Registered:
    def __init__(self, v):
        self.v = v


def test_unhashable_is_loud():
    match = "Opaque.*'lock'.*__functionfuse_token__.*normalize_token.register"
    with pytest.raises(HashingError, match=match):
        tokenize(Opaque())
    cyclic = []
    cyclic.append(cyclic)
    with pytest.raises(HashingError, match="cycle"):
        tokenize(cyclic)


def test_custom_token_and_registration():
    assert tokenize(WithToken(1)) == tokenize(WithToken(1))
    assert tokenize(WithToken(1)) != tokenize(WithToken(2))
    normalize_token.register(Registered, lambda r: r.v)
    assert tokenize(Registered([1])) == tokenize(Registered([1]))
    assert tokenize(Registered([1])) != tokenize(Registered([2]))
    assert tokenize(Registered(1)) != tokenize(1)


def test_functions_hash_by_source_not_identity():
    def f(x):
        return x + 1

    def g(x):
        return x + 2

    f2 = f
    assert tokenize(f) == tokenize(f2)
    assert tokenize(f) != tokenize(g)


json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda children: st.lists(children, max_size=4)
    | st.tuples(children, children)
    | st.dictionaries(st.text(max_size=5), children, max_size=4)
    | st.frozensets(st.integers() | st.text(max_size=3), max_size=4),
    max_leaves=20,
)


@given(json_like)
def test_property_idempotent_and_pickle_stable(value):
    t = tokenize(value)
    assert tokenize(value) == t
    assert tokenize(pickle.loads(pickle.dumps(value))) == t


@given(json_like, json_like)
def test_property_different_values_differ(a, b):
    if a != b:
        assert tokenize(a) != tokenize(b)
    elif type(a) is type(b) is dict and list(a) == list(b) and repr(a) == repr(b):
        assert tokenize(a) == tokenize(b)


def test_fast_argument_path_agrees_with_the_encoder():
    from functionfuse import workflow
    from functionfuse.caching import _fast_args
    from functionfuse.hashing import Encoder

    @workflow
    def f(*args, **kwargs):
        return None

    parent = f(1)
    key_of = {id(parent): "k" * 32}
    hook = lambda o: b"@" + key_of[id(o)].encode() if o is parent else None  # noqa: E731
    for args, kwargs in [
        ((), {}),
        ((1, -5, "x", "ünï", 2.5, None, True, False), {}),
        ((parent, 3), {"b": parent, "a": "s", "c": 1.0}),
        ((10**30,), {"z": None}),
    ]:
        node = f(*args, **kwargs)
        assert _fast_args(node, key_of) == Encoder(hook).encode((args, dict(sorted(kwargs.items()))))
    assert _fast_args(f([1]), key_of) is None  # containers take the full path


def test_numpy_structured_and_masked():
    a = np.zeros(2, dtype=[("a", "<f8")])
    b = np.zeros(2, dtype=[("b", "<i8")])
    assert tokenize(a) != tokenize(b)
    m1 = np.ma.array([1, 2, 3], mask=[0, 1, 0])
    m2 = np.ma.array([1, 2, 3], mask=[0, 0, 0])
    assert tokenize(m1) != tokenize(m2)


def test_pandas_categoricals():
    s1 = pd.Series(pd.Categorical(["a", "b"], categories=["a", "b"]))
    s2 = pd.Series(pd.Categorical(["a", "b"], categories=["b", "a"]))
    s3 = pd.Series(pd.Categorical(["a", "b"], categories=["a", "b"], ordered=True))
    assert len({tokenize(s1), tokenize(s2), tokenize(s3)}) == 3


def test_failing_normalizer_is_unhashable_not_a_crash():
    df = pd.DataFrame({"a": [[1], [2]]})  # list cells: pandas cannot hash them
    with pytest.raises(HashingError, match="DataFrame.*normalizer raised TypeError"):
        tokenize(df)
