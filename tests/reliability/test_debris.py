"""Crash debris that ``gc`` removes (issue 11, item 3): side data no manifest names.

A dask array is written to its side file (HDF5) or folder (zarr) before its
manifest is published; a writer killed in between leaves side data nothing
names.  ``gc`` removes such entries of ``DaskArraySerializer`` once they are older
than the grace period, and keeps what a manifest names, what is younger, and
files other serializers named their own way.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
from helpers import stored_keys

from functionfuse import storage_factory, workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.cli import main

pytestmark = pytest.mark.reliability
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@workflow
def lazy(n):
    import dask.array as da

    return da.arange(n, chunks=n // 4, dtype=np.float64)


def run(location, options=None):
    kind = "S3" if location.startswith("s3://") else "file"
    wf = LocalWorkflow(lazy(4000).set_name("lazy"), workflow_name="debris")
    extra = {"s3fs": options} if options else {}
    wf.set_storage(storage_factory({"kind": kind, "options": {"path": location, **extra}}))
    return float(wf.run().sum().compute())


def gc(location, *args, options=None):
    argv = ["--json", "--store", location]
    for k, v in (options or {}).items():
        if isinstance(v, dict):
            argv += [a for kk, vv in v.items() for a in ("--storage-option", f"{k}.{kk}={vv}")]
        else:
            argv += ["--storage-option", f"{k}={v}"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main([*argv, "gc", *args])
    doc = json.loads(out.getvalue())
    assert status == 0, doc
    return doc


def test_gc_removes_old_side_data_no_manifest_names_and_keeps_the_rest(tmp_path):
    store = str(tmp_path / "store")
    assert run(store) == sum(range(4000))
    side = os.path.join(store, "side", "debris")
    [named] = os.listdir(side)
    old = time.time() - 7200
    orphan = os.path.join(side, uuid.uuid4().hex + ".h5")
    young = os.path.join(side, uuid.uuid4().hex + ".h5")
    custom = os.path.join(side, "model-weights.bin")  # another serializer's own naming
    for path in (orphan, young, custom):
        with open(path, "wb") as f:
            f.write(b"partial HDF5 of a killed writer")
    os.utime(orphan, (old, old))
    os.utime(custom, (old, old))
    os.utime(os.path.join(side, named), (old, old))  # old, but named by a manifest

    dry = gc(store, "--dry-run")
    assert dry["side_data"] == [f"side/debris/{os.path.basename(orphan)}"]
    assert os.path.exists(orphan)
    doc = gc(store)
    assert doc["side_data"] == dry["side_data"]
    assert sorted(os.listdir(side)) == sorted([named, os.path.basename(young), "model-weights.bin"])
    assert run(store) == sum(range(4000))


def test_gc_removes_an_orphaned_zarr_array_on_s3(s3_endpoint, s3_url):
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3_endpoint.options)
    options = s3_endpoint.options
    assert run(s3_url, options) == sum(range(4000))
    side = f"{s3_url.removeprefix('s3://')}/side/debris"
    [named] = fs.ls(side)
    orphan = f"{side}/{uuid.uuid4().hex}.zarr"
    fs.pipe({f"{orphan}/zarr.json": b"{}", f"{orphan}/c/0": b"chunk", f"{orphan}/c/1": b"chunk"})

    assert gc(s3_url, options=options)["side_data"] == []  # younger than the default grace (1 h)
    doc = gc(s3_url, "--grace", "0s", options=options)
    assert doc["side_data"] == [f"side/debris/{orphan.rsplit('/', 1)[-1]}"]
    fs.invalidate_cache()
    assert fs.ls(side) == [named]
    assert run(s3_url, options) == sum(range(4000))


SLOW_WRITER = '''
import sys, time
import numpy as np
from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.storage import storage_factory


def slow(block):
    time.sleep(0.5)
    return block


@workflow
def lazy(n):
    import dask.array as da

    return da.arange(n, chunks=n // 8, dtype=np.float64).map_blocks(slow)


wf = LocalWorkflow(lazy(8000).set_name("lazy"), workflow_name="debris")
wf.set_storage(storage_factory({"kind": "file", "options": {"path": sys.argv[1]}}))
wf.run()
'''


def test_a_writer_killed_while_writing_an_array_leaves_side_data_gc_removes(tmp_path):
    store = tmp_path / "store"
    script = tmp_path / "slow_writer.py"
    script.write_text(SLOW_WRITER)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, str(script), str(store)], env=env)
    side = store / "side" / "debris"
    deadline = time.time() + 60
    while not (side.is_dir() and any(side.iterdir())):  # the HDF5 file is being written
        assert proc.poll() is None and time.time() < deadline, "the writer ended before writing its array"
        time.sleep(0.02)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    [partial] = list(side.iterdir())
    assert not stored_keys(store)  # killed before publishing

    assert gc(str(store))["side_data"] == []  # seconds old: kept by the grace period
    assert gc(str(store), "--grace", "0s")["side_data"] == [f"side/debris/{partial.name}"]
    assert not partial.exists()
