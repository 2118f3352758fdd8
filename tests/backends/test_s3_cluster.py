"""A cluster shares one cache in S3 (a real HTTP endpoint: moto's server).

Workers of a Dask LocalCluster (processes) and of a local Ray write results to
S3 themselves; a fresh process resumes from the bucket without recomputing;
two runs of the same workflow at once on the same prefix both finish right
and leave one valid entry per node.
"""

import importlib
import json
import os
import sys
import threading
import uuid

import cloudpickle
import pytest

from functionfuse.backends.builtin.daskback import DaskWorkflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.backends.builtin.rayback import RayWorkflow
from functionfuse.serializers.daskarray import DaskArraySerializer
from functionfuse.storage import storage_factory
from helpers import run_script

# The pipeline lives in a module both this process and a fresh one import, so
# its functions (and so the keys) are the same in both.
PIPELINE = '''
import os
import time

import dask.array as da

from functionfuse import workflow


@workflow
def make(n):
    time.sleep(0.05)
    return {"x": da.arange(n, chunks=10), "pid": os.getpid()}


@workflow
def scale(d, k):
    time.sleep(0.05)
    return (d["x"].sum().compute() * k).item(), os.getpid()


@workflow
def total(parts):
    return sum(p[0] for p in parts)


def build():
    data = make(50).set_name("make")
    parts = [scale(data, k).set_name(f"scale{k}") for k in range(4)]
    return [total(parts).set_name("total"), data["pid"], parts[0][1]]
'''

EXPECTED_TOTAL = sum(range(50)) * (0 + 1 + 2 + 3)
RESUME = '''
import json, sys
sys.path.insert(0, sys.argv[2])
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.serializers.daskarray import DaskArraySerializer
from functionfuse.storage import storage_factory
import {module} as pipeline

storage = storage_factory(json.loads(sys.argv[1]))
storage.register_persistent_serializers(DaskArraySerializer)
wf = LocalWorkflow(*pipeline.build(), workflow_name="shared")
wf.set_storage(storage)
print(wf.run()[0])
print(json.dumps(wf.last_report.computed))
'''


@pytest.fixture
def pipeline(tmp_path):
    name = f"ffpipe_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(PIPELINE)
    sys.path.insert(0, str(tmp_path))
    try:
        module = importlib.import_module(name)
        cloudpickle.register_pickle_by_value(module)  # workers cannot import it
        yield module
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(name, None)


def s3_config(s3_endpoint, s3_url):
    return {"kind": "S3", "options": {"path": s3_url, "s3fs": s3_endpoint.options}}


def make_storage(config):
    storage = storage_factory(config)
    storage.register_persistent_serializers(DaskArraySerializer)
    return storage


@pytest.mark.parametrize("engine", ["dask", "ray"])
def test_workers_write_to_s3_and_a_fresh_process_resumes(
    engine, pipeline, s3_endpoint, s3_url, tmp_path, request
):
    config = s3_config(s3_endpoint, s3_url)
    storage = make_storage(config)
    if engine == "dask":
        wf = DaskWorkflow(*pipeline.build(), workflow_name="shared", client=request.getfixturevalue("dask_client"))
        run = wf.run
    else:
        request.getfixturevalue("ray_cluster")
        wf = RayWorkflow(*pipeline.build(), workflow_name="shared")
        run = lambda: wf.run(return_results=True)  # noqa: E731
    wf.set_storage(storage)
    total, make_pid, scale_pid = run()
    assert total == EXPECTED_TOTAL
    assert os.getpid() not in (make_pid, scale_pid)  # workers computed and stored
    assert sorted(wf.last_report.computed) == ["make", "scale0", "scale1", "scale2", "scale3", "total"]
    assert storage.list_tasks("shared", "*") == ["make", "scale0", "scale1", "scale2", "scale3", "total"]
    meta = storage.read_task_meta("shared", "make")
    assert meta["persistent"] == ["DaskArraySerializer"]  # the dask array went to zarr

    script = tmp_path / "resume.py"
    script.write_text(RESUME.format(module=pipeline.__name__))
    out = run_script(script, json.dumps(config), tmp_path).splitlines()
    assert out == [str(EXPECTED_TOTAL), "[]"]  # nothing recomputed


def test_two_runs_at_once_on_one_prefix(pipeline, s3_endpoint, s3_url, dask_client, ray_cluster):
    config = s3_config(s3_endpoint, s3_url)
    results: dict[str, object] = {}

    def on_ray():
        wf = RayWorkflow(*pipeline.build(), workflow_name="shared")
        wf.set_storage(make_storage(config))
        try:
            results["ray"] = wf.run(return_results=True)[0]
        except Exception as exc:  # noqa: BLE001 - reported below
            results["ray"] = exc

    thread = threading.Thread(target=on_ray)
    thread.start()
    wf = DaskWorkflow(*pipeline.build(), workflow_name="shared", client=dask_client)
    wf.set_storage(make_storage(config))
    results["dask"] = wf.run()[0]
    thread.join(120)
    assert results == {"dask": EXPECTED_TOTAL, "ray": EXPECTED_TOTAL}

    storage = make_storage(config)
    names = ["make", "scale0", "scale1", "scale2", "scale3", "total"]
    assert storage.list_tasks("shared", "*") == names  # one entry per node
    for name in names:
        storage.read_task("shared", name)  # every entry is whole and verifies
    local = LocalWorkflow(*pipeline.build(), workflow_name="shared")
    local.set_storage(storage)
    assert local.run()[0] == EXPECTED_TOTAL
    assert local.last_report.computed == []
