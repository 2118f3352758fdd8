"""Damage anywhere in a store (issue 11, item 1), layout-agnostic.

A store is filled once with results of every format (plain data, npy, parquet,
skops, HDF5 dask arrays); then, trial after trial, one file of a copy of it is
damaged — a bit flip at a random offset (half of them in the first 4 KiB) or a
truncation — and the workflow runs again.  Every time the run must give the
right values (damage detected, the node recomputed) or raise a FunctionFuseError
naming a node; never a wrong value, never another exception; and the run after
it is healthy.  The files to damage are found by walking the store, not by
knowing its layout.  ``FUNCTIONFUSE_RELIABILITY_TRIALS`` sets the number of
trials (the long mode uses 200).
"""

from __future__ import annotations

import os
import random
import shutil

import numpy as np
import pandas as pd
import pytest

from functionfuse import storage_factory, workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.errors import FunctionFuseError

pytestmark = [
    pytest.mark.reliability,
    pytest.mark.filterwarnings("ignore::functionfuse.caching.CacheWarning"),
]

TRIALS = int(os.environ.get("FUNCTIONFUSE_RELIABILITY_TRIALS", "40"))


@workflow
def plain(n):
    return {"n": n, "items": list(range(n)), "name": "plain"}


@workflow
def array(n):
    return np.arange(n, dtype=np.float64) * 1.5


@workflow
def frame(n):
    return pd.DataFrame({"x": np.arange(n), "label": [f"r{i}" for i in range(n)]})


@workflow
def model(n):
    from sklearn.linear_model import LinearRegression

    x = np.arange(n, dtype=float).reshape(-1, 1)
    return LinearRegression().fit(x, 2 * x[:, 0] + 1)


@workflow
def lazy(n):
    import dask.array as da

    return da.arange(n, chunks=n // 4, dtype=np.float64) * 2.0


@workflow
def summary(p, a, f, m, z):
    # Consumes everything, so every stored result is loaded when the leaves are.
    return {
        "plain": p["items"][-1],
        "array": float(a.sum()),
        "frame": int(f["x"].sum()),
        "model": round(float(m.coef_[0]), 6),
        "lazy": float(z.sum().compute()),
    }


def graph():
    p, a, f = plain(50).set_name("plain"), array(5000).set_name("array"), frame(300).set_name("frame")
    m, z = model(20).set_name("model"), lazy(4000).set_name("lazy")
    return [p, a, f, m, z, summary(p, a, f, m, z).set_name("summary")]


def outputs(values):
    p, a, f, m, z, s = values
    return {
        "plain": p,
        "array": a.tolist(),
        "frame": f.to_dict("list"),
        "model": float(m.coef_[0]),
        "lazy": np.asarray(z).tolist(),
        "summary": s,
    }


def run(store):
    wf = LocalWorkflow(*graph(), workflow_name="damage")
    wf.set_storage(storage_factory({"kind": "file", "options": {"path": str(store)}}))
    return outputs(wf.run()), wf.last_report


def damage(path, rng):
    data = bytearray(path.read_bytes())
    if not data:
        return "empty file left alone"
    if rng.random() < 0.25:
        cut = rng.randrange(len(data))
        path.write_bytes(bytes(data[:cut]))
        return f"truncated to {cut} of {len(data)} bytes"
    limit = min(len(data), 4096) if rng.random() < 0.5 else len(data)
    offset = rng.randrange(limit)
    data[offset] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))
    return f"bit flipped at {offset} of {len(data)}"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    store = tmp_path_factory.mktemp("damage") / "pristine"
    expected, report = run(store)
    assert len(report.computed) == 6
    return store, expected


def test_damage_anywhere_gives_the_right_value_or_an_error_naming_the_node(pristine, tmp_path):
    store, expected = pristine
    every = sorted(p.relative_to(store) for p in store.rglob("*") if p.is_file())
    assert any(str(f).endswith(".h5") for f in every)  # the dask array's side data
    # Side data is left to test_a_damaged_hdf5_chunk (a known defect, below).
    files = [f for f in every if f.parts[0] != "side"]
    rng = random.Random(20261127)
    outcomes = {"right value": 0, "error naming a node": 0}
    for trial in range(TRIALS):
        copy = tmp_path / f"t{trial}"
        shutil.copytree(store, copy)
        target = copy / files[rng.randrange(len(files))]
        how = damage(target, rng)
        where = f"trial {trial}: {target.relative_to(copy)} {how}"
        try:
            got, _ = run(copy)
        except FunctionFuseError as exc:
            assert getattr(exc, "node", None) or "node '" in str(exc), f"{where}: {exc!r} names no node"
            outcomes["error naming a node"] += 1
        except Exception as exc:  # noqa: BLE001 - the point of the test
            pytest.fail(f"{where}: {type(exc).__name__}: {exc}")
        else:
            assert got == expected, f"{where}: a wrong value"
            outcomes["right value"] += 1
        healthy, _ = run(copy)  # the next run is healthy
        assert healthy == expected, f"{where}: the run after it is wrong"
        shutil.rmtree(copy)
    print(f"{TRIALS} trials: {outcomes}")
    assert sum(outcomes.values()) == TRIALS


def test_damage_anywhere_on_s3(s3_endpoint, s3_url):
    """The same on S3 (the moto server): dask arrays go to zarr side data there."""
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3_endpoint.options)

    def run_s3(url):
        wf = LocalWorkflow(*graph(), workflow_name="damage")
        wf.set_storage(storage_factory({"kind": "S3", "options": {"path": url, "s3fs": s3_endpoint.options}}))
        return outputs(wf.run())

    expected = run_s3(s3_url)
    root = s3_url.removeprefix("s3://")
    every = sorted(p[len(root) + 1 :] for p in fs.find(root))
    assert any(f.startswith("side/") for f in every)  # the zarr side data
    # Zarr side data is left to test_a_damaged_zarr_chunk_on_s3 (a known defect, below).
    files = [f for f in every if not f.startswith("side/")]
    rng = random.Random(7)
    trials = max(8, TRIALS // 4)
    for trial in range(trials):
        copy = f"{root}-t{trial}"
        fs.copy(root, copy, recursive=True)
        target = files[rng.randrange(len(files))]
        data = bytearray(fs.cat_file(f"{copy}/{target}"))
        if not data:
            continue
        if rng.random() < 0.25:
            data = data[: rng.randrange(len(data))]
        else:
            offset = rng.randrange(min(len(data), 4096) if rng.random() < 0.5 else len(data))
            data[offset] ^= 1 << rng.randrange(8)
        fs.pipe_file(f"{copy}/{target}", bytes(data))
        where = f"trial {trial}: {target}"
        try:
            got = run_s3(f"s3://{copy}")
        except FunctionFuseError as exc:
            assert getattr(exc, "node", None) or "node '" in str(exc), f"{where}: {exc!r} names no node"
        except Exception as exc:  # noqa: BLE001 - the point of the test
            pytest.fail(f"{where}: {type(exc).__name__}: {exc}")
        else:
            assert got == expected, f"{where}: a wrong value"
        assert run_s3(f"s3://{copy}") == expected, f"{where}: the run after it is wrong"


@pytest.mark.xfail(
    strict=True,
    reason=(
        "issue 11 item 2, not built yet: a damaged HDF5 chunk of a dask array (fletcher32 catches it) "
        "surfaces later, when a consumer computes it, as a bare OSError naming neither node nor file, "
        "and the next run does not recompute the array (its manifest is intact)"
    ),
)
def test_a_damaged_hdf5_chunk(tmp_path):
    store = tmp_path / "s"
    expected, _ = run(store)
    [h5] = list((store / "side").rglob("*.h5"))
    data = bytearray(h5.read_bytes())
    data[len(data) // 2] ^= 0x10  # inside the chunks' data
    h5.write_bytes(bytes(data))
    try:
        got, _ = run(store)
    except FunctionFuseError as exc:
        assert "node 'lazy'" in str(exc) and h5.name in str(exc)
    else:
        assert got == expected
    assert run(store)[0] == expected  # the next run recomputes the damaged array


@pytest.mark.xfail(
    strict=True,
    reason=(
        "issue 11 item 2, not built yet: a damaged zarr chunk of a dask array on S3 surfaces later, when "
        "a consumer computes it, as a CorruptEntryError naming the file but not the node, and the next "
        "run does not recompute the array (its manifest is intact); HDF5 on files is caught on load"
    ),
)
def test_a_damaged_zarr_chunk_on_s3(s3_endpoint, s3_url):
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3_endpoint.options)

    def run_s3():
        wf = LocalWorkflow(*graph(), workflow_name="damage")
        wf.set_storage(
            storage_factory({"kind": "S3", "options": {"path": s3_url, "s3fs": s3_endpoint.options}})
        )
        return outputs(wf.run())

    expected = run_s3()
    root = s3_url.removeprefix("s3://")
    [chunk] = [p for p in fs.find(f"{root}/side") if p.endswith("/c/0")]
    data = bytearray(fs.cat_file(chunk))
    data[len(data) // 2] ^= 0x10
    fs.pipe_file(chunk, bytes(data))
    try:
        got = run_s3()
    except FunctionFuseError as exc:
        assert "node 'lazy'" in str(exc) and "c/0" in str(exc)
    else:
        assert got == expected
    assert run_s3() == expected  # the next run recomputes the damaged array
