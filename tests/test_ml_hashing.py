"""Everything ML users pass hashes (issue 8 item 3): classes of any metaclass,
enum members, dataclasses, named tuples, scikit-learn estimators and kernels,
objects whose pickled state is plain data; and the same token whether the
user's module runs as a script or is imported."""

import abc
import argparse
import array
import collections
import copy
import dataclasses
import enum
import json
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import types
import typing
import warnings

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.svm import SVC

import functionfuse
from functionfuse import HashingError, tokenize
from functionfuse.fingerprint import code_token
from functionfuse.hashing import Dispatch, Encoder, user_stacklevel

X, Y = load_iris(return_X_y=True)


def same_everywhere(value):
    """The token is stable: twice, and after a pickle round trip."""
    t = tokenize(value)
    assert tokenize(value) == t
    assert tokenize(pickle.loads(pickle.dumps(value))) == t
    return t


# -- classes of any metaclass -----------------------------------------------------


class Base(abc.ABC):
    @abc.abstractmethod
    def run(self): ...


class Impl(Base):
    def run(self):
        return 1


class Other(Base):
    def run(self):
        return 2


class Meta(type):
    pass


class WithMeta(metaclass=Meta):
    pass


class Color(enum.Enum):
    RED = 1
    BLUE = 2


class Shade(enum.Enum):
    RED = 1
    BLUE = 2


def test_classes_of_any_metaclass_hash_by_name():
    for cls in (Base, Impl, WithMeta, Color, SVC, LogisticRegression, RBF, abc.ABC, enum.IntEnum):
        same_everywhere(cls)
    tokens = [tokenize(c) for c in (Base, Impl, Other, WithMeta, Color, Shade, SVC, LogisticRegression)]
    assert len(set(tokens)) == len(tokens)
    assert tokenize(Color) != tokenize(Color.RED)
    assert tokenize(SVC) != tokenize(SVC())


def test_installed_classes_are_named_by_module_and_qualname():
    assert Encoder().encode(SVC) == b"C24:sklearn.svm._classes.SVC"
    assert Encoder().encode(abc.ABC) == b"C7:abc.ABC"
    assert Encoder().encode(enum.IntEnum) == b"C12:enum.IntEnum"
    assert Encoder().encode(int) == b"C12:builtins.int"  # unchanged for metaclass ``type``


@pytest.mark.parametrize("cls", [Impl, Color, WithMeta, Other])
def test_user_classes_carry_their_code_fingerprint(cls):
    name = cls.__qualname__.encode()
    fingerprint = code_token(cls).encode()  # its code and what its methods use
    expected = b"A%d:%s%d:%s" % (len(name), name, len(fingerprint), fingerprint)
    assert Encoder().encode(cls) == expected


def test_editing_a_user_class_changes_its_token(tmp_path):
    def token_of(source, folder):
        folder.mkdir()
        (folder / "usermod.py").write_text(textwrap.dedent(source))
        return _run([sys.executable, "-c", "import usermod; print(usermod.token())"], folder)

    before = token_of(
        """
        import abc
        from functionfuse import tokenize

        class Model(abc.ABC):
            def predict(self, x):
                return x + 1

        def token():
            return tokenize(Model)
        """,
        tmp_path / "a",
    )
    after = token_of(
        """
        import abc
        from functionfuse import tokenize

        class Model(abc.ABC):
            def predict(self, x):
                return x + 2

        def token():
            return tokenize(Model)
        """,
        tmp_path / "b",
    )
    assert before != after


# -- enum members -----------------------------------------------------------------


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Perm(enum.Flag):
    R = 1
    W = 2
    X = 4


class Bits(enum.IntFlag):
    A = 1
    B = 2


class ABCEnumMeta(abc.ABCMeta, enum.EnumMeta):
    pass


class Abstract(enum.Enum, metaclass=ABCEnumMeta):
    ONE = 1
    TWO = 2


def test_enum_members():
    members = [Color.RED, Color.BLUE, Shade.RED, Level.LOW, Level.HIGH, Perm.R, Perm.W,
               Perm.R | Perm.W, Perm(0), Bits.A, Bits.A | Bits.B, Abstract.ONE, Abstract.TWO]
    tokens = [same_everywhere(m) for m in members]
    assert len(set(tokens)) == len(tokens)
    assert tokenize(Perm.R | Perm.W) == tokenize(Perm.W | Perm.R)
    assert tokenize(Level.LOW) != tokenize(1)
    assert tokenize(Bits.A) != tokenize(1)
    assert tokenize({Color.RED: [Level.HIGH]}) == tokenize({Color.RED: [Level.HIGH]})
    name = b"Abstract@" + code_token(Abstract).encode()
    assert Encoder().encode(Abstract.ONE) == b"K%d:%sE12:Abstract.ONEv3:i1e" % (len(name), name)
    assert type(Abstract) is ABCEnumMeta
    same_everywhere(Abstract)


def test_flag_values_no_member_names_hash_by_value():
    class Keep(enum.Flag, boundary=enum.KEEP):
        A = 1

    assert Keep(2).name is None and Keep(4).name is None
    assert tokenize(Keep(2)) != tokenize(Keep(4))
    assert tokenize(Keep(2)) == tokenize(Keep(2))
    assert tokenize(Perm(0)) != tokenize(Perm.R)


@pytest.mark.skipif(not hasattr(enum, "StrEnum"), reason="StrEnum is Python 3.11+")
def test_str_enum():
    class Mode(enum.StrEnum):
        FAST = "fast"
        SLOW = "slow"

    assert tokenize(Mode.FAST) != tokenize(Mode.SLOW)
    assert tokenize(Mode.FAST) != tokenize("fast")
    assert tokenize(Mode.FAST) == tokenize(Mode("fast"))


# -- dataclasses and named tuples ----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Optim:
    lr: float = 0.1
    betas: tuple = (0.9, 0.99)


@dataclasses.dataclass
class Train:
    optim: Optim
    epochs: int = 3
    tags: list = dataclasses.field(default_factory=list)
    color: Color = Color.RED


@dataclasses.dataclass
class TrainTwin:
    optim: Optim
    epochs: int = 3
    tags: list = dataclasses.field(default_factory=list)
    color: Color = Color.RED


@dataclasses.dataclass
class Lazy:
    a: int
    b: int = dataclasses.field(init=False)


class Pair(typing.NamedTuple):
    x: int
    y: float = 0.0


class Couple(typing.NamedTuple):
    x: int
    y: float = 0.0


def test_dataclasses():
    base = Train(Optim())
    same_everywhere(base)
    assert tokenize(base) == tokenize(Train(Optim(lr=0.1)))
    variants = [
        Train(Optim(lr=0.2)),
        Train(Optim(betas=(0.9, 0.999))),
        Train(Optim(), epochs=4),
        Train(Optim(), tags=["a"]),
        Train(Optim(), color=Color.BLUE),
        TrainTwin(Optim()),  # same fields, another class
    ]
    tokens = {tokenize(v) for v in variants}
    assert len(tokens) == len(variants) and tokenize(base) not in tokens
    assert tokenize(Optim()) != tokenize((0.1, (0.9, 0.99)))


def test_dataclass_with_an_unset_field_is_unhashable_not_a_crash():
    with pytest.raises(HashingError, match="Lazy.*field is not set"):
        tokenize(Lazy(1))
    done = Lazy(1)
    done.b = 2
    assert tokenize(done) == tokenize(copy.copy(done))


def test_named_tuples():
    same_everywhere(Pair(1, 2.0))
    tokens = {tokenize(v) for v in (Pair(1, 2.0), Pair(2, 1.0), Couple(1, 2.0), (1, 2.0), Pair(1))}
    assert len(tokens) == 5


# -- scikit-learn ---------------------------------------------------------------------


def test_estimators_hash_by_class_and_parameters():
    assert tokenize(LogisticRegression(C=1.0)) == tokenize(LogisticRegression(C=1.0))
    assert tokenize(LogisticRegression(C=1.0)) != tokenize(LogisticRegression(C=2.0))
    assert tokenize(LogisticRegression()) != tokenize(SVC())
    assert tokenize(SVC(kernel="rbf")) != tokenize(SVC(kernel="linear"))
    same_everywhere(SVC(C=3.0))
    assert Encoder().encode(SVC()).startswith(b"R24:sklearn.svm._classes.SVC")


def test_kernels():
    k = 1.0 * RBF(1.0)
    assert tokenize(k) == tokenize(1.0 * RBF(1.0))
    assert tokenize(k) != tokenize(1.0 * RBF(2.0))
    assert tokenize(k) != tokenize(2.0 * RBF(1.0))
    assert tokenize(k) != tokenize(1.0 * RBF(1.0) + WhiteKernel())
    assert tokenize(RBF(1.0)) != tokenize(RBF(1.0, length_scale_bounds="fixed"))
    assert tokenize(RBF([1.0, 2.0])) != tokenize(RBF([1.0, 3.0]))
    same_everywhere(ConstantKernel(2.0) * RBF(1.5) + WhiteKernel(0.1))
    # nested in an estimator's parameters
    gpr = GaussianProcessRegressor
    assert tokenize(gpr(kernel=k)) == tokenize(gpr(kernel=1.0 * RBF(1.0)))
    assert tokenize(gpr(kernel=k)) != tokenize(gpr(kernel=1.0 * RBF(2.0)))


def test_fitted_state_counts():
    unfitted = SVC()
    fitted = SVC().fit(X, Y)
    assert tokenize(fitted) != tokenize(unfitted)
    assert tokenize(fitted) == tokenize(SVC().fit(X, Y))  # same data, same model
    assert tokenize(fitted) != tokenize(SVC().fit(X[:100], Y[:100]))
    same_everywhere(fitted)

    def gp():
        return GaussianProcessRegressor(kernel=1.0 * RBF(1.0), optimizer=None)

    fitted_gp = gp().fit(X[:30], X[:30, 0])
    assert tokenize(fitted_gp) == tokenize(gp().fit(X[:30], X[:30, 0]))
    assert tokenize(fitted_gp) != tokenize(gp().fit(X[:30], X[:30, 1]))
    assert tokenize(fitted_gp) != tokenize(gp())


def test_forest_with_cython_trees():
    def forest(seed):
        return RandomForestClassifier(n_estimators=3, random_state=seed).fit(X, Y)

    assert tokenize(forest(0)) == tokenize(forest(0))
    assert tokenize(forest(0)) != tokenize(forest(1))


def test_pipelines():
    pipe = make_pipeline(StandardScaler(), SVC())
    assert tokenize(pipe) == tokenize(make_pipeline(StandardScaler(), SVC()))
    assert tokenize(pipe) != tokenize(make_pipeline(StandardScaler(), SVC(C=2.0)))
    assert tokenize(pipe) != tokenize(make_pipeline(StandardScaler(with_mean=False), SVC()))
    fitted = make_pipeline(StandardScaler(), SVC()).fit(X, Y)
    assert tokenize(fitted) != tokenize(pipe)
    assert tokenize(fitted) == tokenize(make_pipeline(StandardScaler(), SVC()).fit(X, Y))
    same_everywhere(fitted)


def test_estimator_settings_count():
    # set_output changes what transform returns: not the same value
    assert tokenize(StandardScaler()) != tokenize(StandardScaler().set_output(transform="pandas"))


def test_estimator_with_a_numpy_function():
    assert tokenize(FunctionTransformer(np.log1p)) == tokenize(FunctionTransformer(np.log1p))
    assert tokenize(FunctionTransformer(np.log1p)) != tokenize(FunctionTransformer(np.expm1))
    assert tokenize(np.add) != tokenize(np.subtract)
    with pytest.raises(HashingError, match="not numpy's own"):
        tokenize(np.frompyfunc(lambda v: v, 1, 1))


class MyEstimator(ClassifierMixin, BaseEstimator):
    def __init__(self, alpha=1.0, inner=None):
        self.alpha = alpha
        self.inner = inner

    def fit(self, X, y):
        self.mean_ = np.asarray(X).mean(axis=0)
        self._private_cache = object()  # private, not part of the value
        return self


def test_user_estimators():
    assert Encoder().encode(MyEstimator()).startswith(b"R44:MyEstimator@")  # + its 32-char code token
    assert tokenize(MyEstimator(1.0)) != tokenize(MyEstimator(2.0))
    assert tokenize(MyEstimator(inner=SVC())) != tokenize(MyEstimator(inner=SVC(C=2)))
    assert tokenize(MyEstimator().fit(X, Y)) == tokenize(MyEstimator().fit(X, Y))
    assert tokenize(MyEstimator().fit(X, Y)) != tokenize(MyEstimator().fit(X[:50], Y[:50]))


def test_lazy_registration_is_found_through_the_bases():
    """A user's subclass triggers the lazy registration of its base's library,
    even when no value of that library was tokenized before."""
    registry = Dispatch()
    LibBase = type("LibBase", (), {"__module__": "fakelib.core"})
    UserCls = type("UserCls", (LibBase,), {"__module__": "__main__"})
    registry.register_lazy("fakelib", lambda: registry.register(LibBase, lambda o: "lib"))
    assert registry.dispatch(UserCls) is not None
    assert registry(UserCls()) == "lib"


def test_lazy_sklearn_registration_in_a_fresh_process(tmp_path):
    script = textwrap.dedent(
        """
        from sklearn.base import BaseEstimator
        from functionfuse.hashing import Encoder

        class Est(BaseEstimator):
            def __init__(self, a=1):
                self.a = a

        print(Encoder().encode(Est())[:8].decode())
        """
    )
    (tmp_path / "fresh.py").write_text(script)
    # the registered normalizer ("R"), not the generic fallback ("O")
    assert _run([sys.executable, "fresh.py"], tmp_path) == "R36:Est@"


def test_other_sklearn_objects_through_their_pickled_state():
    assert tokenize(KFold(3)) == tokenize(KFold(3))
    assert tokenize(KFold(3)) != tokenize(KFold(4))
    shuffled = [KFold(3, shuffle=True, random_state=seed) for seed in (0, 1)]
    assert tokenize(shuffled[0]) != tokenize(shuffled[1])


# -- generic fallback: objects whose pickled state is plain data ---------------------


class Plain:
    def __init__(self, a, b):
        self.a = a
        self.b = b


class PlainTwin:
    def __init__(self, a, b):
        self.a = a
        self.b = b


class Slotted:
    __slots__ = ("x", "__y")

    def __init__(self, x, y):
        self.x = x
        self.__y = y


class NewArgsEx:
    def __new__(cls, *, size):
        obj = super().__new__(cls)
        obj.size = size
        return obj

    def __getnewargs_ex__(self):
        return (), {"size": self.size}


class DropsState:
    def __init__(self, v):
        self.v = v

    def __reduce__(self):
        return (DropsState, (0,))


class BlobState:
    def __init__(self, v):
        self.v = v

    def __getstate__(self):
        return ("v", self.v)

    def __setstate__(self, state):
        self.v = state[1]


class CustomState:
    def __init__(self, items):
        self.items = items

    def __getstate__(self):
        return dict(self.items)  # insertion order is this class's business


class SlotsDroppedByReduce:
    __slots__ = ("v",)

    def __init__(self, v):
        self.v = v

    def __reduce__(self):
        return (SlotsDroppedByReduce, (0,))


def test_plain_objects_hash_by_class_and_state():
    same_everywhere(Plain(1, [2, 3]))
    assert tokenize(Plain(1, [2, 3])) == tokenize(Plain(1, [2, 3]))
    assert tokenize(Plain(1, [2, 3])) != tokenize(Plain(1, [2, 4]))
    assert tokenize(Plain(1, 2)) != tokenize(PlainTwin(1, 2))
    assert tokenize(Plain(1, 2)) != tokenize({"a": 1, "b": 2})
    assert tokenize(Plain(Plain(1, 2), None)) != tokenize(Plain(Plain(1, 3), None))
    late = Plain(1, 2)
    late.c = 3
    assert tokenize(late) != tokenize(Plain(1, 2))


def test_attribute_order_does_not_count():
    first = Plain(1, 2)
    second = Plain.__new__(Plain)
    second.b = 2
    second.a = 1
    assert list(vars(first)) != list(vars(second))
    assert tokenize(first) == tokenize(second)


def test_slots_newargs_and_items():
    same_everywhere(Slotted(1, 2))
    assert tokenize(Slotted(1, 2)) != tokenize(Slotted(1, 3))
    assert tokenize(Slotted(1, 2)) != tokenize(Slotted(2, 2))
    same_everywhere(NewArgsEx(size=3))
    assert tokenize(NewArgsEx(size=3)) != tokenize(NewArgsEx(size=4))
    same_everywhere(collections.deque([1, 2]))
    assert tokenize(collections.deque([1, 2])) != tokenize(collections.deque([1, 3]))
    assert tokenize(collections.deque([1, 2])) != tokenize(collections.deque([1, 2], maxlen=5))
    assert tokenize(collections.deque([1, 2])) != tokenize([1, 2])
    same_everywhere(types.SimpleNamespace(a=1))
    assert tokenize(argparse.Namespace(a=1, b=2)) == tokenize(argparse.Namespace(b=2, a=1))
    assert tokenize(argparse.Namespace(a=1, b=2)) != tokenize(argparse.Namespace(a=1, b=3))


def test_custom_getstate_dict_keeps_its_order():
    assert tokenize(CustomState([("a", 1), ("b", 2)])) != tokenize(CustomState([("b", 2), ("a", 1)]))
    assert tokenize(CustomState([("a", 1)])) == tokenize(CustomState([("a", 1)]))


def _unhashable(value, match):
    with pytest.raises(HashingError, match=match):
        tokenize(value)


def test_what_pickles_opaquely_stays_unhashable():
    _unhashable(threading.Lock(), "lock.*cannot be pickled")
    _unhashable((i for i in range(3)), "generator.*cannot be pickled")
    _unhashable(array.array("i", [1]), "array.*pickles through _array_reconstructor")
    with open(os.devnull) as handle:
        _unhashable(handle, "TextIOWrapper.*cannot be pickled")


def test_reduce_that_may_lose_state_is_unhashable():
    # Both would hash alike were the reduce trusted: DropsState(1) vs DropsState(2).
    _unhashable(DropsState(1), "DropsState.*leaves out its attributes")
    _unhashable(SlotsDroppedByReduce(1), "SlotsDroppedByReduce.*leaves out its attributes")
    _unhashable(BlobState(1), "BlobState.*state is a tuple")


def test_an_unhashable_attribute_names_the_object_and_the_attribute():
    with pytest.raises(HashingError, match=r"test_ml_hashing\.Plain: its attribute 'b' .*_thread\.lock"):
        tokenize(Plain(1, threading.Lock()))
    with pytest.raises(HashingError, match=r"Plain: its attribute 'a' .*Plain: its attribute 'b'"):
        tokenize(Plain(Plain(1, threading.Lock()), 2))


def test_cycles_through_objects_are_unhashable():
    loop = Plain(1, None)
    loop.b = loop
    _unhashable(loop, "cycle")
    loop2 = Plain(1, [])
    loop2.b.append(loop2)
    _unhashable(loop2, "cycle")


def test_an_unhashable_value_inside_an_object_does_not_leave_the_encoder_dirty():
    # the same object encoded twice in a container is not a cycle
    shared = Plain(1, 2)
    assert tokenize([shared, shared]) == tokenize([Plain(1, 2), Plain(1, 2)])


# -- the same token when the user's module runs as a script or is imported ----------


SCRIPT = '''
import abc
import dataclasses
import enum
import json
import typing

from functionfuse import tokenize


class Color(enum.Enum):
    RED = 1
    BLUE = 2


@dataclasses.dataclass(frozen=True)
class Config:
    lr: float
    color: Color = Color.RED
    tags: tuple = ()


class Point(typing.NamedTuple):
    x: int
    y: int


class Model(abc.ABC):
    def predict(self, x):
        return x


class Holder:
    def __init__(self):
        self.config = Config(0.5)
        self.point = Point(1, 2)


def tokens():
    return {
        "member": tokenize(Color.BLUE),
        "enum_class": tokenize(Color),
        "dataclass": tokenize(Config(0.1, Color.BLUE, ("a",))),
        "namedtuple": tokenize(Point(3, 4)),
        "abc_class": tokenize(Model),
        "object": tokenize(Holder()),
    }


if __name__ == "__main__":
    print(json.dumps(tokens()))
'''


def _run(cmd, cwd, seed="0"):
    env = dict(os.environ, PYTHONHASHSEED=seed)
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_script_and_import_give_the_same_tokens(tmp_path):
    (tmp_path / "pipeline.py").write_text(SCRIPT)
    as_script = json.loads(_run([sys.executable, "pipeline.py"], tmp_path, seed="1"))
    imported = json.loads(
        _run([sys.executable, "-c", "import json, pipeline; print(json.dumps(pipeline.tokens()))"],
             tmp_path, seed="2")
    )
    assert set(as_script) == {"member", "enum_class", "dataclass", "namedtuple", "abc_class", "object"}
    for name in as_script:
        assert as_script[name] == imported[name], name


# -- warnings point at the user's line ----------------------------------------------


PACKAGE_DIR = os.path.dirname(os.path.abspath(functionfuse.__file__))


def _fake_module(filename, source):
    """Functions compiled as if they lived in ``filename`` (nothing is written)."""
    namespace = {"user_stacklevel": user_stacklevel, "warnings": warnings}
    exec(compile(textwrap.dedent(source), filename, "exec"), namespace)
    return namespace


LIBRARY = _fake_module(
    os.path.join(PACKAGE_DIR, "_simulated_library.py"),
    """
    def warn_here():
        level = user_stacklevel()
        warnings.warn("pointing at the user", UserWarning, stacklevel=level)
        return level

    def outer(call):
        return call()

    def entry():
        return outer(warn_here)

    def through(callback):
        return outer(callback)
    """,
)
IMPORT_MACHINERY = _fake_module(
    "<frozen importlib._bootstrap>",
    """
    def call_with_frame(f):
        return f()
    """,
)
RUNPY = _fake_module(
    "<frozen runpy>",
    """
    def run(f):
        return f()
    """,
)


def _caught(action):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = action()
    assert len(caught) == 1
    return result, caught[0]


def test_user_stacklevel_skips_the_library():
    line = sys._getframe().f_lineno + 1
    level, warning = _caught(lambda: LIBRARY["entry"]())
    assert level == 4  # warn_here, outer, entry, then this lambda
    assert warning.filename == __file__
    assert warning.lineno == line


def test_user_stacklevel_from_user_code_is_the_caller():
    assert user_stacklevel() == 1


def test_user_stacklevel_counts_like_warnings_with_import_frames():
    # An import-system frame between library frames is not counted by
    # warnings.warn; the level must agree.
    line = sys._getframe().f_lineno + 2
    level, warning = _caught(
        lambda: LIBRARY["through"](lambda: IMPORT_MACHINERY["call_with_frame"](LIBRARY["entry"]))
    )
    assert warning.filename == __file__
    assert warning.lineno == line
    # warn_here, outer, entry, <import frame not counted>, the inner lambda
    assert level == 4


def test_user_stacklevel_skips_runpy():
    line = sys._getframe().f_lineno + 1
    _, warning = _caught(lambda: RUNPY["run"](LIBRARY["entry"]))
    assert warning.filename == __file__
    assert warning.lineno == line
