"""The S3 storage against a real HTTP S3 endpoint (moto's server, see conftest.s3_endpoint)."""

import collections
import contextlib
import json
import logging
import multiprocessing
import pickle
import re
import threading

import pytest
import s3fs

from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.errors import EntryNotFoundError, StorageConfigError, StorageError
from functionfuse.storage import S3Storage, storage_factory
from functionfuse.testing.stores import ODD_NAMES, StorageContract, _save


def _fs(s3_endpoint):
    """A plain s3fs filesystem on the endpoint (what a user would inspect the bucket with)."""
    return s3fs.S3FileSystem(use_listings_cache=False, **s3_endpoint.options)


def _objects(s3_endpoint, url):
    """Every object under ``url`` (keys relative to it), but the store's marker ``FFSTORE.json``."""
    root = url[len("s3://") :]
    return sorted(k[len(root) + 1 :] for k in _fs(s3_endpoint).find(root) if not k.endswith("/FFSTORE.json"))


def test_the_store_root_is_marked(s3_endpoint, s3_url):
    storage = S3Storage(s3_url, s3_endpoint.options)
    _save(storage, "wf", "n", 1)
    marker = json.loads(_fs(s3_endpoint).cat_file(s3_url[len("s3://") :] + "/FFSTORE.json"))
    assert marker == {"format": "functionfuse-store", "version": 2}


class TestS3Storage(StorageContract):
    @pytest.fixture
    def storage(self, s3_endpoint, s3_url):
        return S3Storage(s3_url, s3_endpoint.options)


# -- configuration -------------------------------------------------------------------


def test_factory_accepts_both_path_forms(s3_endpoint, s3_url):
    bucket_path = s3_url[len("s3:/") :]  # "/bucket/prefix", the original package's form
    a = storage_factory({"kind": "S3", "options": {"path": bucket_path, "s3fs": s3_endpoint.options}})
    b = storage_factory({"kind": "S3", "options": {"path": s3_url + "/", "s3fs": s3_endpoint.options}})
    assert isinstance(a, S3Storage) and a == b
    _save(a, "wf", "n", {"v": 1})
    assert b.read_task("wf", "n") == {"v": 1}
    assert repr(a) == f"S3Storage({s3_url!r})"
    assert "secret" not in repr(a)


@pytest.mark.parametrize(
    "path, s3fs_options, match",
    [
        (None, {}, "option 'path'.*string"),
        ("", {}, "must name a bucket"),
        ("s3://", {}, "must name a bucket"),
        ("http://host:9000/bucket", {}, "endpoint goes into the s3fs options"),
        ("/bucket/prefix", "key=1", "option 's3fs'.*dict"),
    ],
)
def test_bad_configuration_is_a_config_error(path, s3fs_options, match):
    with pytest.raises(StorageConfigError, match=match):
        storage_factory({"kind": "S3", "options": {"path": path, "s3fs": s3fs_options}})


def test_missing_bucket_is_a_clear_error_at_first_use(s3_endpoint):
    storage = S3Storage("/no-such-bucket-here/cache", s3_endpoint.options)  # nothing contacted yet

    @workflow
    def one():
        return 1

    wf = LocalWorkflow(one(), workflow_name="wf")
    wf.set_storage(storage)
    with pytest.raises(StorageConfigError) as info:
        wf.run()
    msg = str(info.value)
    assert "bucket 'no-such-bucket-here' does not exist" in msg
    assert s3_endpoint.endpoint_url in msg and "create it" in msg
    assert not _fs(s3_endpoint).exists("no-such-bucket-here")  # never created behind the user's back


def test_wrong_credentials_are_a_clear_error(s3_endpoint, s3_url):
    import urllib.request

    def set_auth(count):  # moto's own HTTP API: authenticate every request from now on
        request = urllib.request.Request(
            s3_endpoint.endpoint_url + "/moto-api/reset-auth",
            data=str(count).encode(),
            headers={"Content-Type": "text/plain"},
            method="POST",
        )
        urllib.request.urlopen(request, timeout=10).read()

    options = {**s3_endpoint.options, "key": "AKIAWRONGWRONGWRONG0", "secret": "wrong"}
    set_auth(0)
    try:
        with pytest.raises(StorageConfigError) as info:
            S3Storage(s3_url, options).list_tasks("wf")
    finally:
        set_auth("inf")
    msg = str(info.value)
    assert "rejected the credentials (InvalidAccessKeyId)" in msg
    assert s3_endpoint.endpoint_url in msg and "'key' and 'secret'" in msg
    assert "Traceback" not in msg


def test_unreachable_endpoint_at_first_use(s3_url):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    options = {
        "key": "k",
        "secret": "s",
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-west-2"},
        "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1},
    }
    with pytest.raises(StorageError, match=f"S3 endpoint {endpoint} is unreachable.*retries"):
        S3Storage(s3_url, options).list_tasks("wf")


# -- layout and the storage methods ------------------------------------------------------


def test_small_results_are_one_manifest_each_and_names_never_become_keys(s3_endpoint, s3_url):
    storage = S3Storage(s3_url, s3_endpoint.options)
    names = ("a/b", "../up", "star*", "x" * 300)
    for name in names:
        _save(storage, "wf/../x", name, name)
    keys = _objects(s3_endpoint, s3_url)
    manifests = [k for k in keys if k.startswith("manifests/")]
    runs = [k for k in keys if k.startswith("runs/")]
    assert len(manifests) == 4 and len(runs) == 4 and len(keys) == 8  # no object: small results are inline
    assert all(k.count("/") == 2 and k.endswith(".json") for k in manifests)
    assert all(k.startswith("runs/wf%2F..%2Fx/") and k.count("/") == 2 for k in runs)
    assert storage.list_tasks("wf/../x") == sorted(names)
    assert _objects(s3_endpoint, s3_url.rsplit("/", 1)[0] + "/wf") == []  # nothing escaped


def test_remove_workflow_leaves_siblings_sharing_a_prefix(s3_endpoint, s3_url):
    storage = S3Storage(s3_url, s3_endpoint.options)
    _save(storage, "wf1", "a", 1)
    _save(storage, "wf10", "a", 10)
    storage.remove_workflow("wf1")
    assert storage.list_tasks("wf1") == []
    assert storage.read_task("wf10", "a") == 10


def test_bucket_root_as_storage(s3_endpoint):
    fs = _fs(s3_endpoint)
    fs.mkdir("functionfuse-root-test")
    storage = S3Storage("s3://functionfuse-root-test", s3_endpoint.options)
    _save(storage, "wf", "a", 1)
    assert storage.list_tasks("wf") == ["a"]
    storage.remove_workflow("wf")
    assert fs.exists("functionfuse-root-test")  # the bucket stays
    assert fs.find("functionfuse-root-test") == ["functionfuse-root-test/FFSTORE.json"]  # the store stays


def test_another_process_sees_entries_at_once(s3_endpoint, s3_url):
    """No listing cache: a second storage object (another process) lists new entries immediately."""
    a = S3Storage(s3_url, s3_endpoint.options)
    b = pickle.loads(pickle.dumps(a))
    assert b.list_tasks("wf") == []
    _save(a, "wf", "n", 1)
    assert b.list_tasks("wf") == ["n"]
    a.remove_task("wf", "n")
    assert b.list_tasks("wf") == []
    with pytest.raises(EntryNotFoundError):
        b.read_task("wf", "n")


# -- workflows ----------------------------------------------------------------------------

# Call counters are test state, not inputs of the nodes that update them.
__functionfuse_ignore__ = {"CALLS"}
CALLS = []


@workflow
def load(n):
    CALLS.append("load")
    return list(range(n))


@workflow
def total(xs):
    CALLS.append("total")
    return sum(xs)


@workflow
def scale(x, factor):
    CALLS.append("scale")
    return x * factor


def _pipeline(factor):
    return scale(total(load(10).set_name("load")).set_name("total"), factor).set_name("scale")


def test_local_workflow_runs_and_resumes_on_s3(s3_endpoint, s3_url):
    storage = storage_factory({"kind": "S3", "options": {"path": s3_url, "s3fs": s3_endpoint.options}})
    CALLS.clear()
    wf = LocalWorkflow(_pipeline(2), workflow_name="pipe")
    wf.set_storage(storage)
    assert wf.run() == 90
    assert CALLS == ["load", "total", "scale"]
    assert storage.list_tasks("pipe") == ["load", "scale", "total"]

    CALLS.clear()
    wf = LocalWorkflow(_pipeline(2), workflow_name="pipe")
    wf.set_storage(pickle.loads(pickle.dumps(storage)))
    assert wf.run() == 90
    assert CALLS == []
    assert wf.last_report.read == ["scale"]  # lazy resume: only the result asked for is loaded

    CALLS.clear()
    wf = LocalWorkflow(_pipeline(3), workflow_name="pipe")
    wf.set_storage(storage)
    assert wf.run() == 135
    assert CALLS == ["scale"]
    assert wf.last_report.by_node()["scale"].reason.startswith("input changed")
    # both versions of 'scale' are kept: going back to 2 reads the first one
    assert len([k for k in _objects(s3_endpoint, s3_url) if k.startswith("manifests/")]) == 4
    CALLS.clear()
    wf = LocalWorkflow(_pipeline(2), workflow_name="pipe")
    wf.set_storage(storage)
    assert wf.run() == 90 and CALLS == []


class _ServerLog(logging.Handler):
    """The requests moto's server logs (werkzeug's request log), by kind: HEAD, GET,
    LIST (a GET with a prefix or list-type), PUT ..."""

    def __init__(self) -> None:
        super().__init__()
        self.kinds: collections.Counter = collections.Counter()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = str(record.args[0])  # type: ignore[index]  # "GET /bucket/key?... HTTP/1.1"
        except (TypeError, IndexError):
            return
        method, _, path = re.sub(r"\x1b\[[0-9;]*m", "", line).partition(" ")  # werkzeug colours some
        self.kinds["LIST" if method == "GET" and ("list-type=" in path or "prefix=" in path) else method] += 1


@contextlib.contextmanager
def _requests_served():
    """Counts what the S3 endpoint itself receives meanwhile (every path a client may take)."""
    log = logging.getLogger("werkzeug")
    handler, level = _ServerLog(), log.level
    log.addHandler(handler)  # a handler of its own also keeps werkzeug from adding a console one
    log.setLevel(logging.INFO)
    try:
        yield handler.kinds
    finally:
        log.setLevel(level)
        log.removeHandler(handler)


@workflow
def part(base, i):
    return {"i": base + i}


@workflow
def gather(parts):
    return sum(p["i"] for p in parts)


def _parts():
    root = part(0, 0).set_name("root")
    return gather([part(root["i"], i) for i in range(100)]).set_name("gather")


def test_planning_a_run_on_s3_costs_a_few_requests_not_one_per_node(s3_endpoint, s3_url):
    """Issue 12: a run's hit checks cost O(1) round trips (the latest run record, or one
    listing), counted by the S3 endpoint itself."""
    options = {"kind": "S3", "options": {"path": s3_url, "s3fs": s3_endpoint.options}}
    first = LocalWorkflow(_parts(), workflow_name="parts")
    first.set_storage(storage_factory(options))
    assert first.run() == sum(range(100))
    assert len(first.last_report.computed) == 102

    # The same workflow again, as a new process would run it: its latest run record names every key.
    again = LocalWorkflow(_parts(), workflow_name="parts")
    again.set_storage(storage_factory(options))
    with _requests_served() as requests:
        assert again.run() == sum(range(100))
    assert again.last_report.read == ["gather"] and len(again.last_report.skipped) == 101
    assert requests["HEAD"] <= 5 and sum(requests.values()) <= 20, requests

    # Another workflow on the same store: no record of its own, so all 102 keys are looked
    # up; they are found (content addressing) with one listing, not a HEAD each.
    other = LocalWorkflow(_parts(), workflow_name="parts-elsewhere")
    other.set_storage(storage_factory(options))
    with _requests_served() as requests:
        assert other.run() == sum(range(100))
    assert other.last_report.read == ["gather"] and len(other.last_report.skipped) == 101
    assert requests["HEAD"] <= 5 and requests["LIST"] <= 5 and sum(requests.values()) <= 25, requests


def test_forced_node_replaces_its_entry(s3_endpoint, s3_url):
    storage = S3Storage(s3_url, s3_endpoint.options)
    wf = LocalWorkflow(_pipeline(2), workflow_name="pipe")
    wf.set_storage(storage)
    wf.run()
    before = _objects(s3_endpoint, s3_url)
    CALLS.clear()
    assert wf.run(force="total") == 90
    assert CALLS == ["total", "scale"]
    after = _objects(s3_endpoint, s3_url)
    same = ("runs/", "overwrites/")
    assert [k for k in after if not k.startswith(same)] == [k for k in before if not k.startswith(same)]
    # Same results replaced in place, one more run record, and a note per key written over
    # (records carrying the earlier results stop serving them: docs/format.md, "Overwrite notes").
    keys = {e.node: e.key for e in wf.last_report.events}
    assert sorted(k for k in after if k.startswith("overwrites/")) == sorted(
        f"overwrites/{keys[n]}.json" for n in ("total", "scale"))
    assert len(after) == len(before) + 3


def test_fresh_process_resumes_from_s3(s3_endpoint, s3_url, tmp_path):
    from helpers import run_script

    script = tmp_path / "resume.py"
    script.write_text(
        """
import json, sys

import dask.array as da

from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.serializers.daskarray import DaskArraySerializer
from functionfuse.storage import storage_factory


@workflow
def make(n):
    return {"x": da.arange(n, chunks=5), "n": n}


@workflow
def total(d):
    return int(d["x"].sum().compute())


storage = storage_factory(json.loads(sys.argv[1]))
storage.register_persistent_serializers(DaskArraySerializer)
wf = LocalWorkflow(total(make(20).set_name("make")).set_name("total"), workflow_name="fresh")
wf.set_storage(storage)
print(wf.run())
print(wf.last_report.computed, wf.last_report.read)
stored = storage.read_task("fresh", "make")
print(stored["x"].name.split("-")[0], int(stored["x"].sum().compute()))
"""
    )
    config = json.dumps({"kind": "S3", "options": {"path": s3_url, "s3fs": s3_endpoint.options}})
    first = run_script(script, config).splitlines()
    assert first == ["190", "['make', 'total'] []", "functionfuse 190"]
    second = run_script(script, config).splitlines()
    assert second == ["190", "[] ['total']", "functionfuse 190"]


# -- concurrent writers -----------------------------------------------------------------


def test_concurrent_writers_threads_leave_one_valid_entry(s3_endpoint, s3_url):
    values = {i: f"value-{i}" * 1000 for i in range(6)}
    for round_ in range(3):
        key = f"{round_}" * 32
        barrier = threading.Barrier(len(values))
        names, errors = [], []

        def write(i, key=key, barrier=barrier):
            try:
                storage = S3Storage(s3_url, s3_endpoint.options)
                barrier.wait()
                names.append(storage.save("wf", "n", key, values[i], {}))
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(i,)) for i in values]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        assert len(set(names)) == 1
        storage = S3Storage(s3_url, s3_endpoint.options)
        assert storage.load("wf", names[0]) in values.values()
    # one entry per key (three keys), nothing else: no temporary objects
    assert len(_objects(s3_endpoint, s3_url)) == 3


def _process_writer(url, options, value, barrier):
    storage = S3Storage(url, options)
    barrier.wait()
    for _ in range(10):
        storage.save("wf", "n", "1" * 32, value, {})


def test_concurrent_writer_processes_leave_one_valid_entry(s3_endpoint, s3_url):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [
        ctx.Process(target=_process_writer, args=(s3_url, s3_endpoint.options, v, barrier))
        for v in ("A" * 5000, "B" * 5000)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    storage = S3Storage(s3_url, s3_endpoint.options)
    assert storage.load("wf", "1" * 32) in ("A" * 5000, "B" * 5000)
    assert _objects(s3_endpoint, s3_url) == ["manifests/11/" + "1" * 32 + ".json"]


def test_second_publish_of_a_manifest_is_a_no_op(s3_endpoint, s3_url):
    storage = S3Storage(s3_url, s3_endpoint.options)
    storage.save("wf", "x", "0" * 32, "first", {})
    storage.save("wf", "x", "0" * 32, "second", {})  # 412 from the server: the first stays
    assert storage.load("wf", "0" * 32) == "first"
    storage.save("wf", "x", "0" * 32, "third", {}, overwrite=True)
    assert storage.load("wf", "0" * 32) == "third"


@pytest.mark.parametrize("name", ODD_NAMES[:4])
def test_odd_workflow_names(s3_endpoint, s3_url, name):
    storage = S3Storage(s3_url, s3_endpoint.options)
    _save(storage, name, "n", name)
    assert storage.read_task(name, "n") == name
    storage.remove_workflow(name)
    assert _objects(s3_endpoint, s3_url) == []


def test_unknown_s3fs_option_is_a_config_error(s3_endpoint, s3_url):
    options = {**s3_endpoint.options, "retries": 2}  # not an s3fs argument
    with pytest.raises(StorageConfigError, match="rejected .*'retries'.*config_kwargs"):
        S3Storage(s3_url, options).list_tasks("wf")
