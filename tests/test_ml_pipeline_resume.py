"""A scikit-learn model sweep resumes with nothing computed (issue 8 item 3).

The shape of the original package's ``advanced_ML_pipeline`` example: three
datasets, each split, and ten classifiers per split passed as *classes* (most
of them with metaclass ``ABCMeta``) with parameter dicts, one of which holds a
Gaussian-process kernel ``1.0 * RBF(1.0)``: 36 nodes.  (The original example
itself was run twice by hand against this code: 36 computed, then 3 read and
33 skipped.)
"""

import json

from helpers import run_script

SWEEP = r'''
import json, sys
from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.storage import storage_factory
from sklearn.discriminant_analysis import QuadraticDiscriminantAnalysis
from sklearn.ensemble import AdaBoostClassifier, RandomForestClassifier
from sklearn.gaussian_process import GaussianProcessClassifier
from sklearn.gaussian_process.kernels import RBF
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.svm import SVC
from sklearn.tree import DecisionTreeClassifier

MODELS = [
    ("knn", KNeighborsClassifier, {"n_neighbors": 3}),
    ("svm-linear", SVC, {"kernel": "linear", "C": 0.025}),
    ("svm-rbf", SVC, {"gamma": 2, "C": 1}),
    ("gp", GaussianProcessClassifier, {"kernel": 1.0 * RBF(1.0)}),
    ("tree", DecisionTreeClassifier, {"max_depth": 5}),
    ("forest", RandomForestClassifier, {"max_depth": 5, "n_estimators": 10, "max_features": 1}),
    ("mlp", MLPClassifier, {"alpha": 1, "max_iter": 300}),
    ("ada", AdaBoostClassifier, {"n_estimators": 5}),
    ("nb", GaussianNB, {}),
    ("qda", QuadraticDiscriminantAnalysis, {}),
]


@workflow
def moons(seed):
    from sklearn.datasets import make_moons
    return make_moons(n_samples=60, noise=0.3, random_state=seed)


@workflow
def circles(seed):
    from sklearn.datasets import make_circles
    return make_circles(n_samples=60, noise=0.2, factor=0.5, random_state=seed)


@workflow
def blobs(seed):
    from sklearn.datasets import make_classification
    return make_classification(n_samples=60, n_features=2, n_redundant=0, random_state=seed)


@workflow
def split(X, y):
    from sklearn.model_selection import train_test_split
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.4, random_state=42)
    return {"X_train": X_train, "y_train": y_train}


@workflow
def train(name, estimator_class, params, X, y):
    import warnings
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    model = make_pipeline(StandardScaler(), estimator_class(**params))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(X, y)
    return model


datasets = [moons(0).set_name("moons"), circles(1).set_name("circles"), blobs(2).set_name("blobs")]
for ds in datasets:
    parts = split(ds[0], ds[1]).set_name(f"{ds.get_name()}-split")
    for name, cls, params in MODELS:
        train(name, cls, params, parts["X_train"], parts["y_train"]).set_name(f"{ds.get_name()}, {name}")

wf = LocalWorkflow(*datasets, workflow_name="sweep")
wf.set_storage(storage_factory({"kind": "file", "options": {"path": sys.argv[1]}}))
wf.run()
print(json.dumps({e.node: e.action for e in wf.last_report.events}))
'''


def test_model_sweep_with_classes_and_kernels_resumes_with_nothing_computed(tmp_path):
    script = tmp_path / "sweep.py"
    script.write_text(SWEEP)
    store = tmp_path / "store"
    first = json.loads(run_script(script, store, timeout=300).splitlines()[-1])
    assert len(first) == 36 and set(first.values()) == {"computed"}

    second = json.loads(run_script(script, store, timeout=300).splitlines()[-1])
    assert [n for n, a in second.items() if a == "computed"] == []
    assert sorted(n for n, a in second.items() if a == "read") == ["blobs", "circles", "moons"]

    # One hyperparameter changed: that model alone is recomputed, on each dataset.
    script.write_text(SWEEP.replace('{"kernel": 1.0 * RBF(1.0)}', '{"kernel": 1.0 * RBF(2.0)}'))
    third = json.loads(run_script(script, store, timeout=300).splitlines()[-1])
    assert sorted(n for n, a in third.items() if a == "computed") == ["blobs, gp", "circles, gp", "moons, gp"]
