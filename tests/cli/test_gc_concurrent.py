"""``functionfuse gc`` beside running workflows (docs/cli.md, "gc"), on file storage.

A workflow runs in another process, again and again with an argument changed,
while this process runs ``gc --keep-runs 1`` in a loop.  Every run must end
well, every value read back must be right, the next resume must find its
results, and ``verify`` must find no damage.  A run killed before it writes its
record must keep its results through a gc with the default grace period.

``--grace`` in the loop is a few seconds, longer than one run of the writer and
much shorter than the test: gc never deletes what is younger (docs/cli.md), and
a run's fresh results are named by no record until the run ends, so a grace
shorter than a run would let gc delete them, and its temporaries, as designed.
"""

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
from helpers import stored_keys

from functionfuse.cli import main
from functionfuse.storage import FileStorage

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GRACE = "4s"  # > one run of the writer (about 0.5 s here), << the writer's whole loop

# 16 constant arrays (4 distinct contents: deduplicated), 16 dicts built on them
# (constant), 20 dicts that depend on `factor` (8 distinct contents per factor) and
# their total: 53 nodes, each sleeping 20 ms.  Every node is an output of the
# workflow, so every node is loaded (or recomputed) by every run.
WRITER = textwrap.dedent(
    '''
    import json, sys, time
    import numpy as np
    from functionfuse import workflow
    from functionfuse.backends.builtin.localback import LocalWorkflow
    from functionfuse.errors import EntryNotFoundError
    from functionfuse.storage import FileStorage

    STORE, OUT = sys.argv[1], sys.argv[2]
    FACTORS = [int(f) for f in sys.argv[3].split(",")]
    NB, NC, NS = 16, 16, 20

    @workflow
    def base(i):
        time.sleep(0.02)
        return np.full(2000, float(i % 4))

    @workflow
    def const(a, i):
        time.sleep(0.02)
        return {"v": a * 2.0, "k": i % 3}

    @workflow
    def scaled(a, i, factor):
        time.sleep(0.02)
        return {"values": a * factor + (i % 2), "factor": factor}

    @workflow
    def total(*ss):
        time.sleep(0.02)
        return float(sum(float(s["values"].sum()) for s in ss))

    def expected(factor):
        b = {f"base{i}": np.full(2000, float(i % 4)) for i in range(NB)}
        c = {f"const{i}": {"v": b[f"base{i}"] * 2.0, "k": i % 3} for i in range(NC)}
        s = {f"scaled{i}": {"values": b[f"base{i % NB}"] * factor + (i % 2), "factor": factor}
             for i in range(NS)}
        t = {"total": float(sum(float(v["values"].sum()) for v in s.values()))}
        return {**b, **c, **s, **t}

    def build(factor):
        b = [base(i).set_name(f"base{i}") for i in range(NB)]
        c = [const(b[i], i).set_name(f"const{i}") for i in range(NC)]
        s = [scaled(b[i % NB], i, factor).set_name(f"scaled{i}") for i in range(NS)]
        return b + c + s + [total(*s).set_name("total")]

    def same(a, b):
        if isinstance(a, dict):
            return isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
        if isinstance(a, np.ndarray):
            return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
        return type(a) is type(b) and a == b

    storage = FileStorage(STORE)
    with open(OUT, "a") as out:
        for iteration, factor in enumerate(FACTORS):
            wf = LocalWorkflow(*build(factor), workflow_name="live")
            wf.set_storage(storage)
            results = wf.run()
            want = expected(factor)
            for name, got in zip(want, results):
                assert same(want[name], got), f"run {iteration} (factor {factor}): {name} is wrong"
            missing = []
            for name in want:
                try:
                    got = storage.read_task("live", name)
                except EntryNotFoundError:
                    missing.append(name)
                    continue
                assert same(want[name], got), f"after run {iteration} (factor {factor}): read_task({name!r}) is wrong"
            actions = {e.node: [e.action, e.reason] for e in wf.last_report.events}
            out.write(json.dumps({"iteration": iteration, "factor": factor, "missing": missing,
                                  "actions": actions}) + "\\n")
            out.flush()
    '''
)

# A run whose last node kills the process before the run record is written.
KILLED = textwrap.dedent(
    '''
    import json, os, sys
    import numpy as np
    from functionfuse import workflow
    from functionfuse.backends.builtin.localback import LocalWorkflow
    from functionfuse.storage import FileStorage

    STORE, FACTOR, KILL = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "kill"

    @workflow
    def base(i):
        return np.full(500, float(i % 2))

    @workflow
    def scaled(a, factor):
        return a * factor + 1.0

    @workflow
    def last(*xs):
        if KILL:
            os._exit(1)  # no record, no cleanup: like kill -9
        return float(sum(x.sum() for x in xs))

    b = [base(i).set_name(f"base{i}") for i in range(4)]
    s = [scaled(b[i], FACTOR * (i + 1)).set_name(f"scaled{i}") for i in range(4)]
    wf = LocalWorkflow(last(*s).set_name("last"), *s, workflow_name="killed")
    wf.set_storage(FileStorage(STORE))
    wf.run()
    print(json.dumps({e.node: e.action for e in wf.last_report.events}))
    '''
)


def killed_expected(factor):
    b = [np.full(500, float(i % 2)) for i in range(4)]
    s = {f"scaled{i}": b[i] * (factor * (i + 1)) + 1.0 for i in range(4)}
    return {"last": float(sum(x.sum() for x in s.values())), **s}


def script(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def env():
    out = dict(os.environ)
    out["PYTHONPATH"] = ROOT + os.pathsep + out.get("PYTHONPATH", "")
    out.pop("FUNCTIONFUSE_STORE", None)
    return out


def run(path, *args, status=0):
    proc = subprocess.run([sys.executable, str(path), *map(str, args)], check=False, capture_output=True, text=True,
                          env=env(), timeout=120)
    assert proc.returncode == status, f"{path.name} {args}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def cli(*argv):
    """``functionfuse --json ...`` in this process: (exit status, JSON document)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(["--json", *map(str, argv)])
    lines = out.getvalue().splitlines()
    assert len(lines) == 1, out.getvalue()
    return status, json.loads(lines[0])


def cli_process(*argv):
    """The real command line, ``python -m functionfuse --json ...``: (exit status, JSON document)."""
    proc = subprocess.run([sys.executable, "-m", "functionfuse", "--json", *map(str, argv)],
                          check=False, capture_output=True, text=True, env=env(), timeout=120)
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout + proc.stderr
    return proc.returncode, json.loads(lines[0])


def manifest_keys(store):
    return stored_keys(store)


def object_hashes(store):
    out = set()
    for dirpath, _, files in os.walk(os.path.join(store, "objects")):
        out.update(files)
    return out


def records(store, workflow):
    folder = os.path.join(store, "runs", workflow)
    out = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".json"):
            with open(os.path.join(folder, name), "rb") as f:
                out.append(json.loads(f.read()))
    return out


def view(record):
    out = dict(record.get("others", {}))
    out.update({n: e["key"] for n, e in record["nodes"].items() if e["action"] in ("computed", "read", "skipped")})
    return out


def objects_named_by(store, keys):
    storage = FileStorage(store)
    return {p["object"] for k in keys for p in storage.results.read_manifest(k)["parts"]}


FACTORS = [1, 2, 3, 4, 5, 6, 1, 7, 8, 9, 2, 10, 11, 1, 12, 13, 3, 14, 15, 16]


def test_gc_in_a_loop_beside_a_running_workflow(tmp_path):
    store = str(tmp_path / "store")
    os.makedirs(store)
    writer = script(tmp_path, "writer.py", WRITER)
    log = tmp_path / "writer.jsonl"
    passes, removed_manifests, removed_objects, deadline = 0, 0, 0, time.monotonic() + 120
    with open(tmp_path / "writer.err", "w") as stderr:
        proc = subprocess.Popen([sys.executable, str(writer), store, str(log), ",".join(map(str, FACTORS))],
                                stdout=stderr, stderr=stderr, env=env())
    try:
        while proc.poll() is None:
            assert time.monotonic() < deadline, "the writer did not finish in 120 s"
            if not os.path.exists(os.path.join(store, "FFSTORE.json")):
                time.sleep(0.01)  # not a store until the writer's first save
                continue
            status, doc = cli("--store", store, "gc", "--keep-runs", 1, "--grace", GRACE)
            assert status == 0 and doc["ok"], doc
            passes += 1
            removed_manifests += len(doc["manifests"])
            removed_objects += len(doc["objects"])
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == 0, (tmp_path / "writer.err").read_text()

    # Every run ended well and read back every value right (the writer asserts it); none
    # found a result it had stored missing: its results were younger than the grace.
    runs = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["factor"] for r in runs] == FACTORS
    assert [r["missing"] for r in runs] == [[]] * len(FACTORS)
    assert all(action != "failed" for r in runs for action, _ in r["actions"].values())
    # gc did remove old versions while the writer ran: factor 3 came back 14 runs (at
    # least 14 x 21 x 20 ms of sleep, > GRACE) after its first run, its version gone.
    assert passes >= len(FACTORS) and removed_manifests > 0 and removed_objects > 0, (passes, removed_manifests)
    again = runs[FACTORS.index(3, 3)]["actions"]
    assert {again[f"scaled{i}"][0] for i in range(20)} == {"computed"}, again

    # Nothing runs now: gc down to the latest run, which keeps exactly its state.
    status, doc = cli("--store", store, "gc", "--keep-runs", 1, "--grace", "0s")
    assert status == 0, doc
    latest = records(store, "live")
    assert len(latest) == 1
    current = view(latest[0])
    assert len(current) == 53 and manifest_keys(store) == set(current.values())
    named = objects_named_by(store, current.values())
    values = {latest[0]["values"]["object"]} if "values" in latest[0] else set()
    assert named <= object_hashes(store) <= named | values

    # A resume of the last configuration reads everything and computes nothing.
    run(writer, store, tmp_path / "resume.jsonl", FACTORS[-1])
    resume = json.loads((tmp_path / "resume.jsonl").read_text())
    assert resume["missing"] == []
    assert {a for a, _ in resume["actions"].values()} == {"read"}, resume["actions"]
    for args in (("verify",), ("verify", "live")):
        status, doc = cli_process("--store", store, *args)
        assert (status, doc["ok"], doc["damaged"]) == (0, True, []), doc
        assert doc["checked"]["manifests"] == 53


def test_grace_keeps_the_results_of_a_run_killed_before_its_record(tmp_path):
    store = str(tmp_path / "store")
    killed = script(tmp_path, "killed.py", KILLED)
    run(killed, store, 1, "finish")
    before = manifest_keys(store)
    run(killed, store, 2, "kill", status=1)
    (record,) = records(store, "killed")  # the killed run wrote none
    assert set(view(record).values()) == before
    fresh = manifest_keys(store) - before
    assert len(fresh) == 4  # scaled0..3 with factor 2; base0..3 were stored already
    fresh_objects = objects_named_by(store, fresh) - objects_named_by(store, before)
    assert fresh_objects

    # Default grace (1 h): results written seconds ago stay, though no record names them.
    status, doc = cli_process("--store", store, "gc", "--keep-runs", 1)
    assert status == 0, doc
    assert (doc["records"], doc["manifests"], doc["objects"]) == ([], [], [])
    assert doc["kept_young"] >= len(fresh) + len(fresh_objects)
    assert fresh <= manifest_keys(store) and fresh_objects <= object_hashes(store)

    # ... and they are hits for the next run (on a copy of the store).
    copy = str(tmp_path / "copy")
    shutil.copytree(store, copy)
    actions = json.loads(run(killed, copy, 2, "finish").stdout)
    assert actions == {"last": "computed", **{f"scaled{i}": "read" for i in range(4)},
                       **{f"base{i}": "skipped" for i in range(4)}}

    # Without a grace period, what no record reaches goes: exactly the killed run's results.
    status, dry = cli_process("--store", store, "gc", "--keep-runs", 1, "--grace", "0s", "--dry-run")
    assert status == 0 and sorted(dry["manifests"]) == sorted(fresh) and manifest_keys(store) == before | fresh
    status, doc = cli_process("--store", store, "gc", "--keep-runs", 1, "--grace", "0s")
    assert status == 0 and sorted(doc["manifests"]) == sorted(fresh), doc
    assert manifest_keys(store) == before
    assert not fresh_objects & object_hashes(store)
    assert objects_named_by(store, before) <= object_hashes(store)
    storage = FileStorage(store)
    for name, value in killed_expected(1).items():
        got = storage.read_task("killed", name)
        assert got == value if isinstance(value, float) else np.array_equal(got, value), name
    status, doc = cli_process("--store", store, "verify")
    assert (status, doc["damaged"]) == (0, []), doc


def test_gc_with_default_policy_keeps_what_kept_records_name(tmp_path):
    """A run record names an object of its own, ``values`` (the small results,
    docs/format.md "Run record").  A store a few hours old, gc with the default
    policy (10 runs kept, 1 h grace): both records are kept, so nothing they name
    may go.  A cached rerun names the latest record's ``values`` object again
    without writing it, so a removed one stays missing for good."""
    store = str(tmp_path / "store")
    killed = script(tmp_path, "killed.py", KILLED)
    run(killed, store, 1, "finish")
    run(killed, store, 2, "finish")
    two_hours_ago = time.time() - 7200
    for dirpath, _, files in os.walk(os.path.join(store, "objects")):
        for name in files:
            os.utime(os.path.join(dirpath, name), (two_hours_ago, two_hours_ago))
    named = {r["run"]: r["values"]["object"] for r in records(store, "killed")}
    assert len(named) == 2  # `last` returns a float: a small result, held in `values`

    status, doc = cli_process("--store", store, "gc")
    assert status == 0 and doc["records"] == [] and doc["manifests"] == [], doc
    missing = {run_id: h for run_id, h in named.items() if h not in object_hashes(store)}
    assert not missing and doc["objects"] == [], f"gc removed the values objects of kept records: {missing}"


DELETER = textwrap.dedent(
    """
    import sys
    from functionfuse.storage import FileStorage

    objects = FileStorage(sys.argv[1]).results.objects
    while True:
        objects.delete(sys.argv[2])  # what gc does to an object no manifest names
    """
)


def test_a_save_survives_gc_deleting_the_same_bytes(tmp_path):
    """gc deletes an old object no manifest names while a writer stores the same
    bytes (a result computed again: A -> B -> A).  The writer finds the object there
    (``link`` fails: it exists), and then gone: it must store it again, not fail."""
    store = str(tmp_path / "store")
    objects = FileStorage(store).results.objects
    data = np.arange(100.0).tobytes()
    ref = objects.put_bytes(data)
    deleter = subprocess.Popen([sys.executable, str(script(tmp_path, "deleter.py", DELETER)), store, ref.hash],
                               env=env())
    errors, attempts, end = [], 0, time.monotonic() + 3
    try:
        while time.monotonic() < end and not errors:
            attempts += 1
            try:
                with objects.writer() as w:  # how a part is saved
                    w.write(data)
                assert w.ref == ref
            except Exception as exc:  # noqa: BLE001 - any failure is the bug
                errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        deleter.kill()
        deleter.wait()
    assert not errors, f"save failed after {attempts} attempts: {errors[0]}"
    assert attempts > 100
