"""Review fixes in functionfuse.hashing:

1. the user's classes carry their code on every instance path (normalizer
   ``R``, ``__functionfuse_token__`` ``U``, builtin subclasses ``K``, enum
   members), and the user's enum members their value;
2. compiled regular expressions hash (pattern, flags);
3. ``numpy.random.RandomState`` hashes its whole state (cached Gaussian too);
4. ``functools.partial`` / ``partialmethod`` hash (function, args, keywords);
5. callables of installed packages that are not plain functions hash by name
   and version when reachable by it; C methods bound to an object hash the
   object;
6. the hot paths of the encoder stay where they were.
"""

import enum
import functools
import importlib.util
import itertools
import json
import operator
import os
import pickle
import random
import re
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pandas as pd
import pytest

from functionfuse import HashingError, normalize_token, tokenize
from functionfuse.hashing import Encoder, Unhashable
from functionfuse.modules import package_version

_COUNTER = itertools.count()


def load(tmp_path, source):
    """Import ``source`` as a fresh user module (a file outside site-packages)."""
    name = f"review_mod_{os.getpid()}_{next(_COUNTER)}"
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def versions(tmp_path, source, old, new):
    """The same class-defining source loaded twice: as is, and with ``old`` -> ``new``."""
    assert old in source
    return load(tmp_path, source), load(tmp_path, source), load(tmp_path, source.replace(old, new))


# -- 1. the user's classes carry their code on every path --------------------------


SCALE = """
    import numpy as np
    from sklearn.base import BaseEstimator, TransformerMixin

    class Scale(BaseEstimator, TransformerMixin):
        def __init__(self, factor=2.0):
            self.factor = factor

        def fit(self, X, y=None):
            return self

        def transform(self, X):
            return np.asarray(X) * self.factor
"""


def test_user_estimator_edited_transform_changes_its_token(tmp_path):
    # The registered (scikit-learn) normalizer path, tag R.
    a, same, edited = versions(tmp_path, SCALE, "* self.factor", "* self.factor + 1")
    assert Encoder().encode(a.Scale()).startswith(b"R")
    assert tokenize(a.Scale()) == tokenize(same.Scale())  # the module's name does not count
    assert tokenize(a.Scale()) != tokenize(edited.Scale())
    assert tokenize(a.Scale(3.0)) != tokenize(a.Scale())


def test_user_class_with_a_registered_normalizer_carries_its_code(tmp_path):
    source = """
        class Box:
            def __init__(self, v):
                self.v = v

            def area(self):
                return self.v * self.v
    """
    a, same, edited = versions(tmp_path, source, "self.v * self.v", "self.v + self.v")
    for module in (a, same, edited):
        normalize_token.register(module.Box, lambda b: b.v)
    assert Encoder().encode(a.Box(1)).startswith(b"R")
    assert tokenize(a.Box(1)) == tokenize(same.Box(1))
    assert tokenize(a.Box(1)) != tokenize(edited.Box(1))


def test_functionfuse_token_class_carries_its_code(tmp_path):
    source = """
        class Tok:
            def __init__(self, v):
                self.v = v

            def __functionfuse_token__(self):
                return self.v

            def run(self, x):
                return x + self.v
    """
    a, same, edited = versions(tmp_path, source, "x + self.v", "x - self.v")
    assert Encoder().encode(a.Tok(1)).startswith(b"U")
    assert tokenize(a.Tok(1)) == tokenize(same.Tok(1))
    assert tokenize(a.Tok(1)) != tokenize(edited.Tok(1))


def test_builtin_subclasses_carry_their_code(tmp_path):
    source = """
        import collections
        import typing

        class Params(dict):
            def scaled(self, k):
                return {n: v * k for n, v in self.items()}

        class Pair(typing.NamedTuple):
            x: int
            y: int

            def norm(self):
                return abs(self.x) + abs(self.y)

        Plain = collections.namedtuple("Plain", "x y")

        class Level(int):
            def up(self):
                return Level(self + 1)
    """
    a, same, edited = versions(tmp_path, source, "v * k", "v * k * 2")
    a2, _, edited2 = versions(tmp_path, source, "abs(self.x) + abs(self.y)", "max(abs(self.x), abs(self.y))")
    a3, _, edited3 = versions(tmp_path, source, "Level(self + 1)", "Level(self + 2)")
    assert Encoder().encode(a.Params(x=1)).startswith(b"K")
    assert tokenize(a.Params(x=1)) == tokenize(same.Params(x=1))
    assert tokenize(a.Params(x=1)) != tokenize(edited.Params(x=1))
    assert tokenize(a2.Pair(1, 2)) != tokenize(edited2.Pair(1, 2))
    assert tokenize(a3.Level(1)) != tokenize(edited3.Level(1))
    # Still by value, and unlike the base type's value.
    assert tokenize(a.Pair(1, 2)) == tokenize(same.Pair(1, 2))
    assert tokenize(a.Pair(1, 2)) != tokenize(a.Pair(2, 1))
    assert tokenize(a.Plain(1, 2)) == tokenize(same.Plain(1, 2))
    assert tokenize(a.Params(x=1)) != tokenize({"x": 1})


ENUM = """
    import enum

    class Mode(enum.Enum):
        A = 1
        B = 2

        def describe(self):
            return self.name.lower()
"""


def test_user_enum_member_follows_its_value_and_its_class_code(tmp_path):
    a, same, revalued = versions(tmp_path, ENUM, "A = 1", "A = 5")
    _, _, edited = versions(tmp_path, ENUM, "self.name.lower()", "self.name.upper()")
    assert tokenize(a.Mode.A) == tokenize(same.Mode.A)
    assert tokenize(a.Mode.A) != tokenize(revalued.Mode.A)
    assert tokenize(a.Mode.A) != tokenize(edited.Mode.A)
    assert tokenize(a.Mode.A) != tokenize(a.Mode.B)


def test_user_enum_member_value_is_encoded_without_the_class_code(tmp_path):
    """Even if the class's code token did not cover member values, the member's
    own encoding changes with its value."""
    a, _, revalued = versions(tmp_path, ENUM, "A = 1", "A = 5")
    import functionfuse.hashing as hashing

    original = hashing._instance_class_bytes
    try:
        hashing._instance_class_bytes = hashing._stable_name_bytes  # class part: name only
        assert Encoder().encode(a.Mode.A) != Encoder().encode(revalued.Mode.A)
        assert Encoder().encode(a.Mode.A).endswith(b"v3:i1e")
    finally:
        hashing._instance_class_bytes = original


def test_user_enum_with_an_unhashable_value_falls_back_to_the_name(tmp_path):
    module = load(
        tmp_path,
        """
        import enum
        import threading

        class Locks(enum.Enum):
            FIRST = threading.Lock()
            SECOND = threading.Lock()
        """,
    )
    first = Encoder().encode(module.Locks.FIRST)
    assert first.endswith(b"E11:Locks.FIRSTn")  # the name only, never a repr
    assert b"object at" not in first and b"_thread" not in first
    assert tokenize(module.Locks.FIRST) == tokenize(module.Locks.FIRST)
    assert tokenize(module.Locks.FIRST) != tokenize(module.Locks.SECOND)


def test_installed_classes_keep_their_encoding():
    from sklearn.svm import SVC

    assert Encoder().encode(re.IGNORECASE) == b"K12:re.RegexFlagE23:re.RegexFlag.IGNORECASE"
    assert Encoder().encode(SVC()).startswith(b"R24:sklearn.svm._classes.SVCt")
    assert Encoder().encode(np.int64(1)).startswith(b"R11:numpy.int64t")
    assert Encoder().encode(enum.Enum("Local", "X").X).startswith(b"K")  # a user enum: no crash


# -- 2. compiled regular expressions -------------------------------------------------


def test_compiled_patterns_hash_by_pattern_and_flags():
    p = re.compile(r"a+\d")
    assert tokenize(p) == tokenize(re.compile(r"a+\d"))
    assert tokenize(p) == tokenize(pickle.loads(pickle.dumps(p)))
    others = [re.compile(r"a*\d"), re.compile(r"a+\d", re.I), re.compile(rb"a+\d"), r"a+\d"]
    tokens = {tokenize(p), *(tokenize(o) for o in others)}
    assert len(tokens) == 5
    assert Encoder().encode(p).startswith(b"R10:re.Pattern")


# -- 3. RandomState: the whole state ----------------------------------------------


def test_randomstate_tokens_cover_the_cached_gaussian():
    drawn = np.random.RandomState(0)
    drawn.standard_normal()  # caches the second Gaussian of the pair
    state = drawn.get_state(legacy=False)
    assert state["has_gauss"] == 1

    no_gauss = np.random.RandomState()
    no_gauss.set_state(dict(state, has_gauss=0, gauss=0.0))
    other_gauss = np.random.RandomState()
    other_gauss.set_state(dict(state, gauss=state["gauss"] + 1.0))
    twin = np.random.RandomState()
    twin.set_state(state)

    assert tokenize(drawn) == tokenize(twin)
    assert tokenize(drawn) != tokenize(no_gauss)
    assert tokenize(drawn) != tokenize(other_gauss)
    # ... because their next draws differ
    nexts = [rs.standard_normal() for rs in (np.random.RandomState(), no_gauss, other_gauss)]
    twin_next = twin.standard_normal()
    assert twin_next != nexts[1] and twin_next != nexts[2]
    assert tokenize(np.random.RandomState(0)) != tokenize(np.random.RandomState(1))


# -- 4. functools.partial / partialmethod ---------------------------------------------


def scale(x, factor=1, *, offset=0):
    return x * factor + offset


def shift(x, factor=1, *, offset=0):
    return x + factor + offset


def test_partials_hash_by_function_arguments_and_keywords():
    p = functools.partial(scale, 2, offset=1)
    assert tokenize(p) == tokenize(functools.partial(scale, 2, offset=1))
    assert tokenize(p) == tokenize(pickle.loads(pickle.dumps(p)))
    different = [
        functools.partial(scale, 3, offset=1),
        functools.partial(scale, 2, offset=2),
        functools.partial(scale, 2),
        functools.partial(shift, 2, offset=1),
        functools.partial(scale, offset=1),
        scale,
    ]
    tokens = {tokenize(p), *(tokenize(d) for d in different)}
    assert len(tokens) == len(different) + 1
    # keywords by name, not by the order they were given in
    assert tokenize(functools.partial(scale, factor=2, offset=1)) == tokenize(
        functools.partial(scale, offset=1, factor=2)
    )
    # nested, and over an installed callable
    assert tokenize(functools.partial(p, 5)) != tokenize(functools.partial(p, 6))
    assert tokenize(functools.partial(np.mean, axis=0)) != tokenize(functools.partial(np.mean, axis=1))
    assert tokenize(functools.partial(np.mean, axis=0)) != tokenize(functools.partial(np.sum, axis=0))
    assert Encoder().encode(p).startswith(b"QP")


def test_partial_with_unhashable_arguments_or_cycles_is_loud():
    with pytest.raises(HashingError, match="lock"):
        tokenize(functools.partial(scale, threading.Lock()))
    loop = functools.partial(scale, [])
    loop.args[0].append(loop)
    with pytest.raises(HashingError, match="cycle"):
        tokenize(loop)


def test_partial_attributes_count():
    p = functools.partial(scale, 2)
    q = functools.partial(scale, 2)
    q.note = "x"
    assert tokenize(p) != tokenize(q)


def test_partialmethod():
    pm = functools.partialmethod(scale, 2)
    assert tokenize(pm) == tokenize(functools.partialmethod(scale, 2))
    assert tokenize(pm) != tokenize(functools.partialmethod(scale, 3))
    assert tokenize(pm) != tokenize(functools.partial(scale, 2))


# -- 5. installed callables that are not plain functions ----------------------------


def test_installed_callables_hash_by_name_and_version():
    callables = [np.mean, np.sum, np.linalg.norm, np.concatenate, str.lower, str.upper, dict.get,
                 int.__add__, object.__init__, pd.DataFrame.from_dict]
    tokens = [tokenize(c) for c in callables]
    assert len(set(tokens)) == len(tokens)
    for c in callables:
        assert tokenize(c) == tokenize(c)
    assert Encoder().encode(np.mean) == b"G%d:numpy.mean|%s" % (
        len(f"numpy.mean|{package_version('numpy')}"),
        package_version("numpy").encode(),
    )
    assert Encoder().encode(np.linalg.norm).startswith(b"G") and b"numpy.linalg.norm|numpy==" in Encoder().encode(
        np.linalg.norm
    )
    assert Encoder().encode(str.lower) == b"G25:builtins.str.lower|stdlib"
    assert tokenize(np.mean) == tokenize(pickle.loads(pickle.dumps(np.mean)))


def test_stateful_callables_are_not_hashed_by_name():
    assert tokenize(operator.itemgetter(1)) != tokenize(operator.itemgetter(2))
    assert tokenize(operator.attrgetter("a")) != tokenize(operator.attrgetter("b"))
    # C methods bound to an object: the object is part of what they do
    assert tokenize("a{}".format) != tokenize("b{}".format)
    assert tokenize([1].append) != tokenize([2].append)
    assert tokenize((1).__add__) != tokenize((2).__add__)
    assert tokenize(dict.fromkeys) != tokenize(set.union)
    assert tokenize(dict.fromkeys) == tokenize(dict.fromkeys)
    with pytest.raises(HashingError, match="bound to"):
        tokenize(random.random)  # the module-level Random's state
    assert tokenize(len) == tokenize(len)  # module-level builtins: unchanged


class Spoof:
    """A user's callable that claims an installed name: not hashed by that name."""

    def __init__(self, v):
        self.v = v
        self.__module__ = "json"
        self.__qualname__ = "dumps"

    def __call__(self, x):
        return x


def test_a_callable_is_hashed_by_name_only_if_the_name_gives_it_back():
    assert not Encoder().encode(Spoof(1)).startswith(b"G")
    assert tokenize(Spoof(1)) != tokenize(Spoof(2))
    assert tokenize(Spoof(1)) != tokenize(json.dumps)


def test_user_callables_are_not_hashed_by_name(tmp_path):
    module = load(
        tmp_path,
        """
        import functools

        @functools.lru_cache
        def cached(x):
            return x
        """,
    )
    # The user's lru_cache wrapper is reachable by its name, but it is the
    # user's code: never keyed on a name alone.
    try:
        data = Encoder().encode(module.cached)
    except Unhashable:
        return
    assert not data.startswith(b"G")


# -- subprocess determinism -------------------------------------------------------------


SCRIPT = """
import functools, json, re
import numpy as np
from functionfuse import tokenize

def f(a, b=0, *, c=None):
    return a

print(json.dumps({
    "partial": tokenize(functools.partial(f, {"x", "y", "z"}, c=frozenset("abc"), b=2)),
    "mean": tokenize(np.mean),
    "norm": tokenize(functools.partial(np.linalg.norm, ord=2)),
    "pattern": tokenize(re.compile(r"(?P<k>\\w+)=(\\d+)", re.M)),
    "lower": tokenize(str.lower),
}))
"""


def test_tokens_do_not_depend_on_the_hash_seed(tmp_path):
    (tmp_path / "det.py").write_text(SCRIPT)
    outs = []
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        done = subprocess.run([sys.executable, "det.py"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        outs.append(json.loads(done.stdout))
    assert outs[0] == outs[1]
    assert len(set(outs[0].values())) == len(outs[0])


# -- 6. hot paths -----------------------------------------------------------------------


def test_hot_paths_do_not_reach_the_slow_paths(monkeypatch):
    def boom(self, obj, cls, out):
        raise AssertionError(f"slow path for {cls}")

    monkeypatch.setattr(Encoder, "_feed_other", boom)
    value = (1, "a", (2, "b"), [3, 4.5], {"k": None, "t": True}, {1, 2}, b"x", 10**30)
    assert Encoder().encode(value)
