"""A small ridge-regression pipeline run with functionfuse, cached on disk.

    generate data -> train/test split -> fit one model per alpha -> score each -> summary

Run it twice: the first run computes every node and stores its result under
``examples/storage``; the second run finds every result stored, reads only the
summary it returns and skips (never loads) the rest.  Edit a function or an
argument below and run again: only that node and what depends on it recompute.

    python examples/pipeline.py            # compute, or reuse what is stored
    python examples/pipeline.py --fresh    # forget the stored results first
"""

import argparse
import os

import numpy as np

from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.storage import storage_factory

HERE = os.path.dirname(os.path.abspath(__file__))
STORAGE_PATH = os.path.join(HERE, "storage")  # independent of the current directory
WORKFLOW_NAME = "ridge"
ALPHAS = (0.01, 1.0, 100.0)


# Calling a @workflow function does not run it: it returns a node of the graph.
@workflow
def make_data(n_samples, n_features, noise, seed):
    """A linear problem y = X w + noise, reproducible from its seed."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_samples, n_features))
    true_w = rng.normal(size=n_features)
    y = X @ true_w + noise * rng.normal(size=n_samples)
    return {"X": X, "y": y}


@workflow
def split(data, test_fraction, seed):
    """Shuffle the rows and return ((X_train, y_train), (X_test, y_test))."""
    X, y = data["X"], data["y"]
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(test_fraction * len(y)))
    test, train = order[:n_test], order[n_test:]
    return (X[train], y[train]), (X[test], y[test])


@workflow
def fit_ridge(train, alpha):
    """Ridge weights as the least-squares solution of [X; sqrt(alpha) I] w = [y; 0]."""
    X, y = train
    n_features = X.shape[1]
    A = np.vstack([X, np.sqrt(alpha) * np.eye(n_features)])
    b = np.concatenate([y, np.zeros(n_features)])
    w, *_ = np.linalg.lstsq(A, b, rcond=None)
    return w


@workflow
def score(w, test):
    """Mean squared error and R^2 of the weights on the test set."""
    X, y = test
    residual = y - X @ w
    mse = float(np.mean(residual**2))
    r2 = 1.0 - float(np.sum(residual**2) / np.sum((y - y.mean()) ** 2))
    return {"mse": mse, "r2": r2}


@workflow
def summarize(scores):
    """Pick the alpha with the best test R^2 (``scores`` maps alpha -> score dict)."""
    best = max(scores, key=lambda alpha: scores[alpha]["r2"])
    return {"scores": scores, "best_alpha": best}


def build_graph():
    """Wire the nodes together.  Nothing runs here."""
    data = make_data(n_samples=2000, n_features=20, noise=0.5, seed=0).set_name("data")
    parts = split(data, test_fraction=0.25, seed=1).set_name("split")
    train, test = parts[0], parts[1]  # node[i]: a lazy item of a node's result
    scores = {}
    for alpha in ALPHAS:
        w = fit_ridge(train, alpha).set_name(f"fit_alpha_{alpha:g}")
        scores[alpha] = score(w, test).set_name(f"score_alpha_{alpha:g}")
    # Nodes nested in a dict argument are dependencies too.
    return summarize(scores).set_name("summary")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fresh", action="store_true", help="remove stored results first")
    args = parser.parse_args()

    storage = storage_factory({"kind": "file", "options": {"path": STORAGE_PATH}})
    if args.fresh:
        storage.remove_workflow(WORKFLOW_NAME)

    print(f"=== workflow {WORKFLOW_NAME!r}, storage {STORAGE_PATH}")
    wf = LocalWorkflow(build_graph(), workflow_name=WORKFLOW_NAME)
    wf.set_storage(storage)
    summary = wf.run()  # the result of the single node we passed

    for alpha, s in summary["scores"].items():
        print(f"alpha={alpha:<8g} test MSE={s['mse']:.4f}  R^2={s['r2']:.4f}")
    print(f"best alpha: {summary['best_alpha']:g}")
    print()
    # Per node: computed (and why), read from storage, or skipped (cached and not needed).
    print(wf.last_report)
    print(f"stored nodes: {storage.list_tasks(WORKFLOW_NAME)}\n")


if __name__ == "__main__":
    main()
