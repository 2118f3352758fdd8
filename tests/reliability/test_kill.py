"""``kill -9`` at random instants (issue 11, item 3): every resume is right, and
after it plus ``functionfuse gc`` no temporary and nothing unreferenced is left.

A pipeline of every kind of result (small plain data, npy arrays, parquet tables,
a dask array stored as HDF5 on files and zarr on S3) runs in a child process,
which is killed with SIGKILL at a random instant of its run.  Three kinds of run
are killed in turn: a first run into an empty store, a forced run over a complete
store (every entry written again), and a run over a complete store with one file
damaged (the damaged entry replaced).  Then, in this process, the workflow runs
again (the resume: its values must be right), ``functionfuse gc --grace 0s``
runs, and the store is checked by walking it: no temporaries, no run lease, no
object no manifest or record names, no side data no manifest names, and
``functionfuse verify`` finds no damage.  On S3 no multipart upload is left
open.

``FUNCTIONFUSE_RELIABILITY_KILLS`` sets the number of kills on files (default
14; S3 gets 6, or a third of it); the long mode uses 60 (so 60 + 20).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from functionfuse.cli import main
from functionfuse.errors import CorruptEntryError
from functionfuse.serializers import persistent
from functionfuse.storage.objects import ObjectRef
from functionfuse.storage.results import ResultStore

pytestmark = [
    pytest.mark.reliability,
    pytest.mark.filterwarnings("ignore::functionfuse.caching.CacheWarning"),
]

KILLS = int(os.environ.get("FUNCTIONFUSE_RELIABILITY_KILLS", "14"))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PIPELINE = '''
import json, sys, time

import numpy as np
import pandas as pd

from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.storage import storage_factory


@workflow
def plain(i):
    return {"i": i, "items": list(range(40 * (i + 1)))}


@workflow
def vec(i):
    return np.random.default_rng(i).random(800_000)  # 6.4 MB: a multipart upload on S3


@workflow
def table(i):
    rng = np.random.default_rng(100 + i)
    return pd.DataFrame({"x": rng.random(60_000), "label": [f"r{j % 97}" for j in range(60_000)]})


@workflow
def lazy(i):
    import dask.array as da

    return da.arange(1_500_000, chunks=250_000, dtype=np.float64) * (i + 1)


@workflow
def total(*values):
    out = 0.0
    for v in values:
        if isinstance(v, dict):
            out += sum(v["items"])
        elif hasattr(v, "compute"):
            out += float(v.sum().compute())
        elif hasattr(v, "columns"):
            out += float(v["x"].sum()) + len(v)
        else:
            out += float(v.sum())
    return out


def build():
    nodes = [plain(i).set_name(f"plain{i}") for i in range(3)]
    nodes += [vec(i).set_name(f"vec{i}") for i in range(3)]
    nodes += [table(i).set_name(f"table{i}") for i in range(2)]
    nodes += [lazy(0).set_name("lazy")]
    return [total(*nodes).set_name("total"), *nodes]


def digest(values):
    out = {}
    for name, v in zip(["total"] + [f"plain{i}" for i in range(3)] + [f"vec{i}" for i in range(3)]
                       + [f"table{i}" for i in range(2)] + ["lazy"], values):
        if isinstance(v, dict):
            out[name] = [v["i"], v["items"][-1], len(v["items"])]
        elif hasattr(v, "compute"):
            out[name] = [float(v.sum().compute()), v.shape[0]]
        elif hasattr(v, "columns"):
            out[name] = [float(v["x"].sum()), len(v), str(v["label"].iloc[-1])]
        elif isinstance(v, float):
            out[name] = v
        else:
            out[name] = [float(v.sum()), v.shape[0], str(v.dtype)]
    return out


def workflow_on(location, options):
    kind = "S3" if location.startswith("s3://") else "file"
    opts = {"path": location, **({"s3fs": options} if options else {})}
    wf = LocalWorkflow(*build(), workflow_name="kill")
    wf.set_storage(storage_factory({"kind": kind, "options": opts}))
    return wf


if __name__ == "__main__":
    location, mode, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    wf = workflow_on(location, options)
    print("READY", flush=True)
    started = time.perf_counter()
    wf.run(force="*" if mode == "force" else None)
    print("DONE", time.perf_counter() - started, flush=True)
'''


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kill")
    path = folder / "ff_kill_pipeline.py"
    path.write_text(PIPELINE)
    spec = importlib.util.spec_from_file_location("ff_kill_pipeline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return path, module


def child(script, location, mode, options):
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("FUNCTIONFUSE_STORE", None)
    return subprocess.Popen([sys.executable, str(script), location, mode, json.dumps(options or {})],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def run_to_end(script, location, options=None):
    """A whole run in a child: the run's duration in seconds."""
    proc = child(script, location, "first", options)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return float(out.split("DONE", 1)[1])


def killed(script, location, mode, delay, options=None):
    """Start a run in a child and SIGKILL it ``delay`` seconds into its run."""
    proc = child(script, location, mode, options)
    line = proc.stdout.readline()
    assert line.strip() == "READY", line + proc.stderr.read()
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    return proc.returncode == -signal.SIGKILL  # False: the run ended before the kill


def gc_and_verify(location, options=None):
    argv = ["--store", location]
    def flat(prefix, value):
        if isinstance(value, dict):
            return [item for k, v in value.items() for item in flat(f"{prefix}{k}.", v)]
        return ["--storage-option", f"{prefix[:-1]}={value}"]

    argv += flat("", options or {})
    for command in (["gc", "--grace", "0s", "--keep-runs", "1"], ["verify"]):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            status = main(["--json", *argv, *command])
        doc = json.loads(out.getvalue())
        assert status == 0 and doc["ok"], doc
    assert doc["damaged"] == [], doc


def referenced(results):
    """Objects and side data entries the store's manifests and records name."""
    objects, side = set(), set()
    fs = results.objects.fs
    for key in _keys(results):
        doc = results.read_manifest(key)
        for part in doc["parts"]:
            objects.add(part["object"])
            info = part.get("info") or {}
            pids = [e[1] for e in info.get("persistent") or ()]
            if part["format"] == persistent.SERIALIZER:
                pids.append(persistent.read_pid(results.objects.get_bytes(ObjectRef.from_json(part)), safe=True)[1])
            side.update(p["file"] for p in pids if isinstance(p, dict) and "file" in p)
    runs = results._path("runs")
    for path in fs.find(runs):
        if path.endswith(".json"):
            record = json.loads(fs.cat_file(path))
            if isinstance(record.get("values"), dict):
                objects.add(record["values"]["object"])
    return objects, side


def _keys(results):
    return results.manifest_keys()


def leftovers(results):
    """What should not be in the store after a resume and gc: a list of paths."""
    fs = results.objects.fs
    root = results.objects.root
    objects, side = referenced(results)
    stored = set(_keys(results))
    found = []
    for path in fs.find(root):
        rel = path[len(root):].lstrip("/")
        top = rel.split("/", 1)[0]
        if top == "tmp" or rel.endswith(".running") or ".tmp" in rel:
            found.append(f"{rel} (a temporary or a lease)")
        elif top == "objects" and rel.rsplit("/", 1)[-1] not in objects:
            found.append(f"{rel} (an object nothing names)")
        elif top == "side" and rel.split("/")[2] not in side:
            found.append(f"{rel} (side data nothing names)")
        elif top == "packs" and rel.endswith(".pack") and not fs.cat_file(path).endswith(b"\n"):
            found.append(f"{rel} (a pack with a cut last line)")
        elif top == "overwrites" and rel.split("/")[-1][: -len(".json")] not in stored:
            found.append(f"{rel} (the overwrite note of a result not stored)")
        elif top not in ("objects", "side", "manifests", "packs", "runs", "FFSTORE.json", "tmp", "overwrites"):
            found.append(f"{rel} (unexpected)")
    return found


def damage_one(results, rng):
    """Flip a bit in, or truncate, one file of objects/ or side/ (what a replacement rewrites)."""
    fs = results.objects.fs
    root = results.objects.root
    files = sorted(p for p in fs.find(root) if p[len(root):].lstrip("/").split("/", 1)[0] in ("objects", "side"))
    target = files[rng.randrange(len(files))]
    data = bytearray(fs.cat_file(target))
    if data and rng.random() < 0.5:
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    else:
        data = data[: len(data) // 2]
    fs.pipe_file(target, bytes(data))


def torture(pipeline, fresh, copy_of, remove, kills, seed, options=None):
    """``kills`` trials: (mode, killed mid-run?, resume right?, leftovers) each."""
    script, module = pipeline
    pristine = fresh("pristine")
    duration = run_to_end(script, pristine, options)
    expected = module.digest(module.workflow_on(pristine, options).run())
    rng = random.Random(seed)
    outcomes = {"kills": 0, "ended before the kill": 0, "resumes right": 0, "damage found late": 0, "leftovers": 0}
    for trial in range(kills):
        mode = ("first", "force", "damaged")[trial % 3]
        location = fresh(f"t{trial}") if mode == "first" else copy_of(pristine, f"t{trial}")
        if mode == "damaged":
            damage_one(ResultStore.from_url(location, options), rng)
        where = f"trial {trial} ({mode} run)"
        if killed(script, location, mode, rng.uniform(0, duration * 0.9), options):
            outcomes["kills"] += 1
        else:
            outcomes["ended before the kill"] += 1
        try:
            got = module.digest(module.workflow_on(location, options).run())
        except CorruptEntryError as exc:
            # Damaged side data is found when the lazy array is computed, after the
            # run (issue 11 item 2): named, withdrawn, and recomputed by the next run.
            assert "node 'lazy'" in str(exc) and "withdrawn" in str(exc), f"{where}: {exc}"
            outcomes["damage found late"] += 1
            got = module.digest(module.workflow_on(location, options).run())
        assert got == expected, f"{where}: the resume gave wrong values"
        outcomes["resumes right"] += 1
        gc_and_verify(location, options)
        left = leftovers(ResultStore.from_url(location, options))
        outcomes["leftovers"] += len(left)
        assert not left, f"{where}: left after the resume and gc: {left}"
        remove(location)
    print(f"{kills} trials, a run takes {duration:.2f} s: {outcomes}")
    assert outcomes["kills"] >= kills // 2, outcomes  # most kills land inside the run
    return outcomes


def test_kill_9_at_random_instants_on_files(pipeline, tmp_path):
    def fresh(name):
        return str(tmp_path / name)

    def copy_of(source, name):
        shutil.copytree(source, tmp_path / name)
        return str(tmp_path / name)

    torture(pipeline, fresh, copy_of, shutil.rmtree, KILLS, seed=911)


def test_kill_9_at_random_instants_on_s3(pipeline, s3_endpoint, s3_url):
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3_endpoint.options)
    options = s3_endpoint.options

    def fresh(name):
        return f"{s3_url}-{name}"

    def copy_of(source, name):
        fs.copy(source.removeprefix("s3://"), f"{s3_url.removeprefix('s3://')}-{name}", recursive=True)
        return f"{s3_url}-{name}"

    def remove(location):
        fs.rm(location.removeprefix("s3://"), recursive=True)

    torture(pipeline, fresh, copy_of, remove, max(6, KILLS // 3), seed=912, options=options)
    bucket = s3_endpoint.bucket
    uploads = fs.call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads", [])
    assert not [u for u in uploads if u["Key"].startswith(s3_url.split("/", 3)[3])], uploads
