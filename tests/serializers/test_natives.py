"""Native part formats (store v2): skops, safetensors, xgboost / lightgbm / catboost, polars, zarr."""

import collections
import datetime
import decimal
import io
import json
import math
import subprocess
import sys
import textwrap
import zipfile

import catboost
import lightgbm
import numpy as np
import pandas as pd
import polars as pl
import pyarrow.parquet as pq
import pytest
import sklearn
import torch
import xarray as xr
import xgboost
import zarr
from sklearn.cluster import KMeans
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from functionfuse.errors import SerializationError
from functionfuse.serializers import natives
from functionfuse.serializers.parts import split
from helpers import roundtrip

HEAVY = [
    "sklearn", "skops", "torch", "safetensors", "xgboost", "lightgbm", "catboost", "polars", "xarray", "zarr",
]


# --------------------------------------------------------------------------
# helpers




def one_part(value, fmt):
    """Round trip ``value``, which must be one part of format ``fmt``; returns (back, part)."""
    back, tree, parts = roundtrip(value)
    assert [p.format for p in parts] == [fmt], parts
    assert tree == {"part": 0}
    return back, parts[0]


def pickled(value):
    """``value`` must go to pickle; returns the reason safe mode gives."""
    _, parts = split(value)
    assert [p.format for p in parts] == ["pickle"], parts
    with pytest.raises(SerializationError) as err:
        split(value, safe=True)
    return str(err.value)


class WriteOnly:
    """A sink with nothing but ``write`` (not seekable, no tell/flush)."""

    def __init__(self):
        self.chunks = []

    def write(self, data):
        self.chunks.append(bytes(data))
        return len(data)

    def getvalue(self):
        return b"".join(self.chunks)


def streamed(part):
    """The part's bytes written to a write-only sink."""
    sink = WriteOnly()
    part.write(sink)
    return sink.getvalue()


def run_without_functionfuse(tmp_path, code, data, name):
    """Run ``code`` in a fresh interpreter with ``PATH`` naming a file holding ``data``."""
    path = tmp_path / name
    path.write_bytes(data)
    script = textwrap.dedent(code)
    script += "\nassert not any(m.startswith('functionfuse') for m in sys.modules), 'functionfuse was imported'\n"
    proc = subprocess.run(
        [sys.executable, "-c", "import sys\nPATH = sys.argv[1]\n" + script, str(path)],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def xy():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 4))
    y = (X[:, 0] + 0.3 * X[:, 1] > 0).astype(int)
    return X, y


# --------------------------------------------------------------------------
# import hygiene


def test_import_functionfuse_loads_no_model_library():
    code = (
        "import sys, functionfuse, functionfuse.storage, functionfuse.serializers, "
        "functionfuse.serializers.parts, functionfuse.serializers.natives\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_split_of_plain_values_loads_no_model_library():
    code = (
        "import sys, collections, numpy as np\n"
        "from functionfuse.serializers.parts import split\n"
        "split({'a': np.ones(3), 'b': collections.OrderedDict(x=1), 'c': collections.deque([1])})\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_tables():
    assert set(natives.ENCODERS) == set(natives.DECODERS) == natives.SAFE_FORMATS
    assert natives.SAFE_FORMATS == {"skops", "safetensors", "xgboost", "lightgbm", "catboost", "polars", "zarr"}
    assert {"sklearn", "torch", "collections", "xgboost", "lightgbm", "catboost", "polars", "xarray"} <= natives.TOPS


def test_classify_never_raises_and_ignores_other_types():
    assert natives.classify(collections.OrderedDict(a=1), "collections") is None
    assert natives.classify(collections.OrderedDict(), "collections") is None
    assert natives.classify(collections.deque([1]), "collections") is None
    assert natives.classify(torch.device("cpu"), "torch") is None
    assert natives.classify(object(), "nothing") is None

    class Broken(LogisticRegression):
        pass

    Broken.__module__ = "sklearn.fake"
    est = Broken()
    est.__dict__["boom"] = property()  # skops cannot dump a property object
    found = natives.classify(est, "sklearn")
    assert isinstance(found, str)


# --------------------------------------------------------------------------
# skops


def fitted_estimators(X, y):
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"num": rng.normal(size=len(y)), "cat": rng.choice(["a", "b", "c"], len(y))})
    column_pipe = Pipeline(
        [
            ("prep", ColumnTransformer([("n", StandardScaler(), ["num"]), ("c", OneHotEncoder(), ["cat"])])),
            ("clf", LogisticRegression()),
        ]
    ).fit(frame, y)
    return {
        "logistic": (LogisticRegression(C=0.5).fit(X, y), X),
        "pipeline": (make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y), X),
        "columns": (column_pipe, frame),
        "ridge": (Ridge(alpha=0.3).fit(X, X[:, 0]), X),
        "kmeans": (KMeans(3, n_init=2, random_state=0).fit(X), X),
        "log1p": (FunctionTransformer(np.log1p).fit(np.abs(X)), np.abs(X)),
    }


@pytest.mark.parametrize("name", ["logistic", "pipeline", "columns", "ridge", "kmeans", "log1p"])
def test_sklearn_estimators_are_skops(xy, name):
    est, data = fitted_estimators(*xy)[name]
    back, part = one_part(est, "skops")
    assert type(back) is type(est)
    assert part.info["class"] == type(est).__name__
    assert part.info["sklearn"] == sklearn.__version__
    assert part.info["skops"]
    assert repr(back.get_params(deep=True)) == repr(est.get_params(deep=True))
    if hasattr(est, "predict"):
        np.testing.assert_array_equal(back.predict(data), est.predict(data))
    else:
        np.testing.assert_array_equal(back.transform(data), est.transform(data))
    if hasattr(est, "coef_"):
        assert back.coef_.tobytes() == est.coef_.tobytes()


def test_unfitted_estimator_and_exact_params():
    est = LogisticRegression(C=0.1 + 0.2, class_weight={0: 1.0, 1: 2.5}, max_iter=7, tol=float("inf"))
    back, _ = one_part(est, "skops")
    assert back.get_params() == est.get_params()
    assert type(next(iter(back.class_weight))) is int
    assert not hasattr(back, "coef_")


def test_skops_in_a_result_tree_and_safe_mode(xy):
    est = LogisticRegression().fit(*xy)
    value = {"model": est, "score": 0.5, "coef": est.coef_}
    back, _tree, parts = roundtrip(value, safe=True)
    assert [p.format for p in parts] == ["skops", "npy"]
    np.testing.assert_array_equal(back["model"].predict(xy[0]), est.predict(xy[0]))


def test_skops_part_streams_to_a_write_only_sink(xy):
    est = make_pipeline(StandardScaler(), LogisticRegression()).fit(*xy)
    part = split(est)[1][0]
    assert streamed(part) == part.to_bytes()
    with zipfile.ZipFile(io.BytesIO(part.to_bytes())) as z:
        assert "schema.json" in z.namelist()


def test_skops_untrusted_types_are_pickled(xy):
    forest = RandomForestClassifier(n_estimators=3, random_state=0).fit(*xy)
    assert "skops' defaults" in pickled(forest)
    back, _, _ = roundtrip(forest)
    np.testing.assert_array_equal(back.predict(xy[0]), forest.predict(xy[0]))
    assert "skops' defaults" in pickled(FunctionTransformer(lambda v: v + 1))


def test_skops_lossy_estimators_are_pickled():
    est = LogisticRegression()
    est.class_weight = {1: 1.0, "1": 2.0}  # skops writes both keys as "1"
    assert "back exactly" in pickled(est)
    back, _, _ = roundtrip(est)
    assert back.class_weight == {1: 1.0, "1": 2.0}


class MyLogistic(LogisticRegression):
    pass


def test_sklearn_subclass_is_pickled(xy):
    est = MyLogistic().fit(*xy)
    _, parts = split(est)
    assert [p.format for p in parts] == ["pickle"]


def test_skops_file_opens_without_functionfuse(tmp_path, xy):
    est = make_pipeline(StandardScaler(), LogisticRegression()).fit(*xy)
    data = split(est)[1][0].to_bytes()
    np.save(tmp_path / "X.npy", xy[0])
    out = run_without_functionfuse(
        tmp_path,
        """
        import numpy as np, skops.io
        assert skops.io.get_untrusted_types(file=PATH) == []
        est = skops.io.load(PATH)
        print(type(est).__name__, int(est.predict(np.load("X.npy")).sum()))
        """,
        data,
        "model.skops",
    )
    assert out.split() == ["Pipeline", str(int(est.predict(xy[0]).sum()))]


# --------------------------------------------------------------------------
# safetensors


def same_tensor(a, b):
    assert type(a) is type(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.requires_grad == b.requires_grad
    assert a.is_contiguous() and b.is_contiguous()
    if a.numel():
        assert a.detach().reshape(-1).view(torch.uint8).tolist() == b.detach().reshape(-1).view(torch.uint8).tolist()


def nan_payload_tensor():
    bits = np.array([0x7FC00001, 0xFFC00000, 0x3F800000], dtype=np.uint32)
    return torch.from_numpy(bits.view(np.float32).copy())


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.arange(12, dtype=torch.float32).reshape(3, 4),
        lambda: torch.randn(2, 3).to(torch.bfloat16),
        lambda: torch.tensor([True, False]),
        lambda: torch.tensor(3.5, dtype=torch.float64),
        lambda: torch.zeros(0, 3, dtype=torch.int16),
        lambda: torch.arange(5, dtype=torch.uint8),
        lambda: torch.randn(4).to(torch.float8_e4m3fn),
        lambda: torch.randn(2, 2, dtype=torch.complex64),
        nan_payload_tensor,
        lambda: torch.ones(3, requires_grad=True),
        lambda: torch.nn.Parameter(torch.randn(2, 2)),
        lambda: torch.nn.Parameter(torch.randn(2), requires_grad=False),
    ],
)
def test_tensors_are_safetensors(make):
    t = make()
    back, part = one_part(t, "safetensors")
    same_tensor(t, back)
    assert part.info["dtype"] == str(t.dtype).removeprefix("torch.")
    assert part.info["shape"] == list(t.shape)
    assert part.info["requires_grad"] == t.requires_grad
    assert streamed(part) == part.to_bytes()


def test_non_leaf_tensor_comes_back_as_a_leaf_like_pickle():
    w = torch.ones(3, requires_grad=True)
    y = w * 2
    back, _ = one_part(y, "safetensors")
    assert back.requires_grad and back.is_leaf
    assert torch.equal(back.detach(), y.detach())


def test_state_dict_round_trip():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    model(torch.randn(5, 3))  # updates the running stats
    sd = model.state_dict()
    back, part = one_part(sd, "safetensors")
    assert type(back) is collections.OrderedDict
    assert list(back) == list(sd)
    assert back._metadata == sd._metadata
    assert type(back._metadata) is type(sd._metadata)
    for key in sd:
        same_tensor(sd[key], back[key])
    assert part.info["type"] == "collections.OrderedDict"
    assert part.info["tensors"] == len(sd)
    assert part.info["dtypes"] == ["float32", "int64"]
    fresh = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    fresh.load_state_dict(back)
    x = torch.randn(2, 3)
    model.eval(), fresh.eval()
    assert torch.equal(model(x), fresh(x))


class Tied(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(10, 4)
        self.head = torch.nn.Linear(4, 10, bias=False)
        self.head.weight = self.emb.weight


def test_tied_weights_stay_tied():
    sd = Tied().state_dict()
    assert sd["emb.weight"].data_ptr() == sd["head.weight"].data_ptr()
    back, part = one_part(sd, "safetensors")
    assert list(back) == ["emb.weight", "head.weight"]
    assert part.info["aliases"] == 1
    assert back["emb.weight"] is not back["head.weight"]
    assert back["emb.weight"].data_ptr() == back["head.weight"].data_ptr()
    same_tensor(sd["head.weight"], back["head.weight"])
    back["emb.weight"][0, 0] = 42.0
    assert back["head.weight"][0, 0] == 42.0


def test_same_tensor_twice_is_one_object():
    t = torch.randn(3)
    sd = collections.OrderedDict(a=t, b=t, c=torch.zeros(2))
    back, _ = one_part(sd, "safetensors")
    assert back["a"] is back["b"]
    same_tensor(t, back["a"])


def test_exact_dict_of_tensors_is_one_part_per_tensor():
    value = {"w": torch.ones(2), "b": torch.zeros(1, dtype=torch.int32)}
    back, _tree, parts = roundtrip(value)
    assert [p.format for p in parts] == ["safetensors", "safetensors"]
    assert list(back) == ["w", "b"]
    same_tensor(value["b"], back["b"])


def overlapping_views():
    base = torch.arange(4.0)
    return collections.OrderedDict(a=base, b=base[1:])


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda: torch.arange(6.0).reshape(2, 3).T, "non-contiguous"),
        (lambda: torch.ones(2, dtype=torch.complex128), "complex128"),
        (lambda: torch.ones(2).to_sparse(), "layout"),
        (lambda: torch.ones(2, dtype=torch.complex64).conj(), "conjugate"),
        (lambda: overlapping_views(), "share memory"),
        (lambda: collections.OrderedDict(a=torch.ones(1), b=1), "OrderedDict of tensors"),
        (lambda: collections.OrderedDict([(1, torch.ones(1))]), "key"),
    ],
)
def test_tensors_safetensors_cannot_hold_are_pickled(make, words):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # named tensors and sparse tensors warn that they are beta
        value = make()
        reason = pickled(value)
    assert words in reason


class MyTensor(torch.Tensor):
    pass


def test_tensor_subclass_and_attributes_are_pickled():
    pickled(torch.ones(2).as_subclass(MyTensor))  # its module is not torch's: not looked at
    assert "subclass" in natives.classify(torch.ones(2).as_subclass(MyTensor), "torch")
    assert "attributes" in pickled(torch.nn.Buffer(torch.ones(2)))  # a tensor marked by an attribute
    t = torch.ones(2)
    t.note = "x"
    assert "attributes" in pickled(t)
    back, _, _ = roundtrip(t)
    assert back.note == "x"


def test_safetensors_file_opens_without_functionfuse(tmp_path):
    sd = torch.nn.Linear(3, 2).state_dict()
    data = split(sd)[1][0].to_bytes()
    out = run_without_functionfuse(
        tmp_path,
        """
        import json, safetensors.torch, safetensors
        tensors = safetensors.torch.load_file(PATH)
        with safetensors.safe_open(PATH, "pt") as f:
            meta = f.metadata()
        print(sorted(tensors), json.loads(meta["functionfuse"])["order"], tensors["weight"].shape[0])
        """,
        data,
        "model.safetensors",
    )
    assert out.strip() == "['bias', 'weight'] ['weight', 'bias'] 2"


# --------------------------------------------------------------------------
# boosting models


def same_params(a, b):
    pa, pb = a.get_params(), b.get_params()
    assert list(pa) == list(pb)
    for k in pa:
        x, y = pa[k], pb[k]
        assert type(x) is type(y), k
        if isinstance(x, float) and math.isnan(x):
            assert math.isnan(y)
        else:
            assert x == y, (k, x, y)


def test_xgboost_booster(xy):
    X, y = xy
    booster = xgboost.train(
        {"max_depth": 2, "eta": 0.3, "objective": "binary:logistic", "nthread": 1},
        xgboost.DMatrix(X, label=y),
        num_boost_round=4,
    )
    booster.set_attr(note="kept")
    back, part = one_part(booster, "xgboost")
    assert type(back) is xgboost.Booster
    d = xgboost.DMatrix(X)
    np.testing.assert_array_equal(back.predict(d), booster.predict(d))
    assert back.save_raw("ubj") == booster.save_raw("ubj")
    assert back.save_config() == booster.save_config()
    assert back.attr("note") == "kept"
    native = xgboost.Booster()
    native.load_model(bytearray(part.to_bytes()))
    np.testing.assert_array_equal(native.predict(d), booster.predict(d))


@pytest.mark.parametrize("cls", [xgboost.XGBClassifier, xgboost.XGBRegressor, xgboost.XGBRFClassifier])
def test_xgboost_sklearn_models(xy, cls):
    X, y = xy
    model = cls(n_estimators=4, max_depth=2, learning_rate=0.3, random_state=3, n_jobs=1, missing=-999.0)
    model.fit(X[:90], y[:90], eval_set=[(X[90:], y[90:])], verbose=False)
    back, part = one_part(model, "xgboost")
    assert type(back) is cls
    same_params(model, back)
    assert back.n_features_in_ == model.n_features_in_
    assert back.evals_result() == model.evals_result()
    np.testing.assert_array_equal(back.predict(X), model.predict(X))
    if hasattr(model, "predict_proba"):
        np.testing.assert_array_equal(back.classes_, model.classes_)
        np.testing.assert_array_equal(back.predict_proba(X), model.predict_proba(X))
    assert part.info["xgboost"] == xgboost.__version__


def test_xgboost_lossy_models_are_pickled(xy):
    X, y = xy

    def metric(labels, predt):
        return float(np.mean(np.abs(labels - predt)))

    model = xgboost.XGBRegressor(n_estimators=2, eval_metric=metric).fit(X, y, eval_set=[(X, y)], verbose=False)
    assert "typed JSON" in pickled(model)
    back, _, _ = roundtrip(model)
    np.testing.assert_array_equal(back.predict(X), model.predict(X))
    assert "unfitted" in pickled(xgboost.XGBClassifier())


def test_lightgbm_booster(xy):
    X, y = xy
    train = lightgbm.Dataset(X[:90], y[:90])
    valid = lightgbm.Dataset(X[90:], y[90:], reference=train)
    booster = lightgbm.train(
        {"objective": "binary", "num_leaves": 4, "verbose": -1, "num_threads": 1},
        train,
        num_boost_round=20,
        valid_sets=[valid],
        callbacks=[lightgbm.early_stopping(3, verbose=False)],
    )
    back, part = one_part(booster, "lightgbm")
    assert type(back) is lightgbm.Booster
    np.testing.assert_array_equal(back.predict(X), booster.predict(X))
    assert back.model_to_string() == booster.model_to_string()
    assert back.best_iteration == booster.best_iteration
    assert back.best_score == booster.best_score
    assert back.params == booster.params
    native = lightgbm.Booster(model_str=part.to_bytes().decode("utf-8"))
    np.testing.assert_array_equal(native.predict(X), booster.predict(X))


@pytest.mark.parametrize("cls", [lightgbm.LGBMClassifier, lightgbm.LGBMRegressor])
def test_lightgbm_sklearn_models(xy, cls):
    X, y = xy
    target = np.array(["no", "yes"])[y] if cls is lightgbm.LGBMClassifier else X[:, 0]
    model = cls(n_estimators=5, num_leaves=4, verbose=-1, n_jobs=1).fit(X, target)
    back, _part = one_part(model, "lightgbm")
    assert type(back) is cls
    same_params(model, back)
    assert back.n_features_in_ == model.n_features_in_
    np.testing.assert_array_equal(back.predict(X), model.predict(X))
    if cls is lightgbm.LGBMClassifier:
        np.testing.assert_array_equal(back.classes_, model.classes_)
        assert back.classes_.dtype == model.classes_.dtype
        np.testing.assert_array_equal(back.predict_proba(X), model.predict_proba(X))


def test_lightgbm_custom_objective_is_pickled(xy):
    X, _y = xy

    def objective(labels, preds):
        return preds - labels, np.ones_like(preds)

    model = lightgbm.LGBMRegressor(n_estimators=2, objective=objective, verbose=-1).fit(X, X[:, 0])
    assert "typed JSON" in pickled(model)
    assert "unfitted" in pickled(lightgbm.LGBMClassifier())


@pytest.mark.parametrize("cls", [catboost.CatBoostClassifier, catboost.CatBoostRegressor])
def test_catboost_models(xy, cls):
    X, y = xy
    target = np.array(["no", "yes"])[y] if cls is catboost.CatBoostClassifier else X[:, 0]
    model = cls(iterations=5, depth=2, random_seed=1, verbose=False, allow_writing_files=False, thread_count=1)
    model.fit(X, target)
    back, part = one_part(model, "catboost")
    assert type(back) is cls
    assert back.get_params() == model.get_params()
    np.testing.assert_array_equal(back.predict(X), model.predict(X))
    if cls is catboost.CatBoostClassifier:
        np.testing.assert_array_equal(back.classes_, model.classes_)
        np.testing.assert_array_equal(back.predict_proba(X), model.predict_proba(X))
    assert back.get_feature_importance().tolist() == model.get_feature_importance().tolist()
    native = cls()
    native.load_model(blob=part.to_bytes())
    np.testing.assert_array_equal(native.predict(X), model.predict(X))
    assert "unfitted" in pickled(cls(iterations=2))


def test_boosting_parts_are_read_in_safe_mode(xy):
    X, y = xy
    value = {
        "xgb": xgboost.XGBClassifier(n_estimators=2, max_depth=2).fit(X, y),
        "lgb": lightgbm.LGBMClassifier(n_estimators=2, verbose=-1).fit(X, y),
        "cb": catboost.CatBoostClassifier(iterations=2, verbose=False, allow_writing_files=False).fit(X, y),
    }
    back, _, parts = roundtrip(value, safe=True)
    assert [p.format for p in parts] == ["xgboost", "lightgbm", "catboost"]
    for key, model in value.items():
        np.testing.assert_array_equal(back[key].predict(X), model.predict(X))


# --------------------------------------------------------------------------
# polars


def polars_frame():
    return pl.DataFrame(
        {
            "i": [1, 2, None],
            "u16": pl.Series([1, 2, 3], dtype=pl.UInt16),
            "f": [1.5, float("nan"), None],
            "s": ["x", None, "z"],
            "cat": pl.Series(["a", "b", "a"], dtype=pl.Categorical),
            "enum": pl.Series(["lo", "hi", "lo"], dtype=pl.Enum(["lo", "hi"])),
            "dec": pl.Series([decimal.Decimal("1.50"), None, decimal.Decimal("-2.25")], dtype=pl.Decimal(10, 2)),
            "ts": pl.Series([datetime.datetime(2020, 1, 1)] * 3, dtype=pl.Datetime("ns", "Europe/Paris")),
            "d": [datetime.date(2020, 1, 1), None, datetime.date(2021, 5, 6)],
            "td": [datetime.timedelta(seconds=1)] * 3,
            "lst": [[1, 2], [], None],
            "arr": pl.Series([[1, 2], [3, 4], [5, 6]], dtype=pl.Array(pl.Int32, 2)),
            "st": [{"a": 1, "b": "x"}, {"a": 2, "b": None}, None],
            "bin": [b"\x00", b"", None],
            "b": [True, None, False],
        }
    )


def test_polars_frame_round_trip():
    df = polars_frame()
    back, part = one_part(df, "polars")
    assert type(back) is pl.DataFrame
    assert back.schema == df.schema
    assert back.equals(df)
    assert part.info["type"] == "polars.DataFrame"
    assert part.info["rows"] == 3
    assert part.info["columns"] == df.columns
    table = pq.read_table(io.BytesIO(streamed(part)))  # a plain parquet file
    assert table.num_rows == 3


def test_polars_sorted_flags_and_series():
    df = pl.DataFrame({"a": [3, 1, 2], "b": ["x", "y", "z"]}).sort("a")
    assert df.flags["a"]["SORTED_ASC"]
    back, part = one_part(df, "polars")
    assert part.info["sorted"] == {"a": "asc"}
    assert back.flags == df.flags
    s = pl.Series("name", [5, 4, 1]).sort(descending=True)
    back, part = one_part(s, "polars")
    assert type(back) is pl.Series
    assert back.name == "name" and back.equals(s)
    assert back.flags == s.flags
    empty, _ = one_part(pl.DataFrame(), "polars")
    assert empty.shape == (0, 0)


def test_polars_object_column_is_not_parquet():
    df = pl.DataFrame({"o": pl.Series([object(), object()], dtype=pl.Object)})
    assert "parquet" in natives.classify(df, "polars")
    with pytest.raises(SerializationError, match="Object"):  # pickle refuses it too
        split(df)


# --------------------------------------------------------------------------
# xarray / zarr


def dataset():
    time = pd.date_range("2020-01-01", periods=3, freq="D")
    return xr.Dataset(
        {
            "temp": (("x", "time"), np.arange(6.0).reshape(2, 3), {"units": "K", "scale": 2}),
            "name": ("x", np.array(["a", "bb"])),
            "flag": ("x", [True, False]),
            "nan": ("x", np.array([np.nan, 1.0])),
            "dt": ("time", np.array([1, 2, 3], dtype="timedelta64[s]")),
            "when": ("x", np.array(["2020-01-01", "NaT"], dtype="datetime64[ms]")),
        },
        coords={"x": [10, 20], "time": time, "label": ("x", [1.5, 2.5])},
        attrs={"title": "test", "n": 3, "values": [1, 2], "nested": {"a": "b"}},
    )


def same_dataset(a, b):
    assert type(a) is type(b)
    assert a.identical(b)
    assert list(a.variables) == list(b.variables)
    for name in a.variables:
        assert a[name].dtype == b[name].dtype, name
        assert a[name].encoding == b[name].encoding, name
    assert a.encoding == b.encoding
    for name in a.indexes:
        assert type(a.indexes[name]) is type(b.indexes[name])
        assert getattr(a.indexes[name], "freq", None) == getattr(b.indexes[name], "freq", None)


def test_xarray_dataset_round_trip(tmp_path):
    ds = dataset()
    back, part = one_part(ds, "zarr")
    same_dataset(ds, back)
    assert back.indexes["time"].freq == ds.indexes["time"].freq
    assert back["when"].dtype == np.dtype("datetime64[ms]")
    assert np.isnat(back["when"].values[1])
    assert part.info["type"] == "xarray.Dataset"
    data = part.to_bytes()
    assert streamed(part) == data
    assert split(ds)[1][0].to_bytes() == data  # deterministic bytes
    path = tmp_path / "ds.zarr.zip"
    path.write_bytes(data)
    store = zarr.storage.ZipStore(path, mode="r")
    group = zarr.open_group(store, mode="r")
    np.testing.assert_array_equal(group["temp"][:], ds["temp"].values)
    assert group["temp"].attrs["units"] == "K"
    store.close()


def test_xarray_dataarray_and_encoding():
    da = dataset()["temp"]
    back, _ = one_part(da, "zarr")
    assert type(back) is xr.DataArray
    assert back.name == "temp"
    assert back.identical(da)
    unnamed = xr.DataArray(np.arange(4, dtype=np.int32), dims="k", attrs={"a": 1})
    back, _ = one_part(unnamed, "zarr")
    assert back.name is None and back.identical(unnamed) and back.dtype == np.int32
    ds = xr.Dataset({"v": ("x", np.array([0.1, 0.25, 3.0]))})
    ds["v"].encoding = {"dtype": "int16", "scale_factor": 0.1, "chunks": (3,)}
    ds.encoding = {"note": "kept"}
    back, _part = one_part(ds, "zarr")
    assert back["v"].encoding == {"dtype": "int16", "scale_factor": 0.1, "chunks": (3,)}
    assert back.encoding == {"note": "kept"}
    assert back["v"].values.tobytes() == ds["v"].values.tobytes()  # written unscaled


def test_xarray_lossy_values_are_pickled():
    ds = xr.Dataset({"v": ("x", [1, 2])}, attrs={"pair": (1, 2)})
    assert "attrs" in pickled(ds)
    ds = xr.Dataset({"v": ("x", np.array([object(), 1], dtype=object))})
    assert "object" in pickled(ds)
    chunked = xr.Dataset({"v": ("x", np.arange(4))}).chunk({"x": 2})
    assert "chunked" in pickled(chunked)
    ds = xr.Dataset({"v": ("x", [1, 2])})
    ds["v"].encoding = {"compressor": object()}
    assert "typed JSON" in pickled(ds)
    assert "str" in pickled(xr.DataArray([1, 2], dims="x", name=7))


# --------------------------------------------------------------------------
# typed JSON


def test_typed_json_state_round_trips_exactly():
    state = {
        "none": None,
        "big": 2**70,
        "nan": float("nan"),
        "neg0": -0.0,
        "tuple": (1, 2.0, "3"),
        "keys": {1: "a", "1": "b", 1.5: "c", False: "d", None: "e"},
        "odict": collections.OrderedDict(b=1, a=2),
        "ddict": collections.defaultdict(list, {"x": [1]}),
        "np": [np.float32(0.5), np.int64(3), np.str_("s"), np.datetime64("2020-01-01", "s")],
        "arrays": [np.arange(6.0).reshape(2, 3, order="F"), np.array(["a", "bc"]), np.zeros((0, 2), np.int8)],
        "dtype": np.dtype("float32"),
        "type": np.float64,
        "bytes": b"\x00\xff",
    }
    node = natives._state_node(state, "state")
    text = json.dumps(node, allow_nan=False)
    back = natives._dec(json.loads(text))
    assert natives._same(state, back)
    assert math.isnan(back["nan"]) and math.copysign(1, back["neg0"]) == -1
    assert list(back["keys"]) == [1, "1", 1.5, False, None]
    assert back["arrays"][0].flags.f_contiguous
    for bad in ({"f": len}, {"s": {1, 2}}, {"o": object()}):
        with pytest.raises(natives._Unencodable):
            natives._state_node(bad, "state")
