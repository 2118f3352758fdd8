"""The "ray" storage kind: a file storage whose every operation is a Ray task.

Uses the session's local Ray (``ray_cluster``: 2 CPUs, resource ``disk: 1``).
"""

import logging
import os
import pickle
import sys
import textwrap
import threading
import time

import cloudpickle
import pytest
from helpers import damage_manifest, run_script, stored_keys

from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.errors import (
    CorruptEntryError,
    EntryNotFoundError,
    SerializationError,
    StorageConfigError,
    StorageError,
)
from functionfuse.serializers import FILE_PROTOCOL
from functionfuse.serializers.base import generate_name
from functionfuse.storage import RayStorage, storage_factory
from functionfuse.testing.stores import StorageContract, _save

# Classes and functions of this module travel to Ray workers by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

DISK = {"resources": {"disk": 0.01}}


@pytest.fixture
def ray_storage(ray_cluster, tmp_path):
    return RayStorage(tmp_path / "store", DISK)


class TestRayStorage(StorageContract):
    @pytest.fixture
    def storage(self, ray_storage):
        return ray_storage


# -- a serializer that records which process wrote and read ----------------------


class PidBox:
    """A value handled by PidSerializer; ``fail`` makes the serializer raise."""

    def __init__(self, label="box", fail=False):
        self.label = label
        self.fail = fail
        self.writer = self.reader = None


class PidSerializer:
    name = "PidSerializer"
    serializer_class = PidBox

    @staticmethod
    def pickle(obj, protocols):
        if obj.fail:
            raise ValueError("this box refuses to be stored")
        handle = protocols[FILE_PROTOCOL]
        filename = f"{obj.label}-{generate_name()}.side"
        with handle.open(filename, "wb") as f:
            f.write(obj.label.encode())
        return {"label": obj.label, "file": filename, "writer": os.getpid()}

    @staticmethod
    def unpickle(pid, protocols):
        box = PidBox(pid["label"])
        with protocols[FILE_PROTOCOL].open(pid["file"], "rb") as f:
            assert f.read() == pid["label"].encode()
        box.writer, box.reader = pid["writer"], os.getpid()
        return box

    @staticmethod
    def remove(pid, protocols):
        protocols[FILE_PROTOCOL].remove(pid["file"])


def _side_files(root):
    return sorted(f for _, _, files in os.walk(root) for f in files if f.endswith(".side"))


# -- factory ------------------------------------------------------------------------


def test_factory_ray_kind_touches_nothing_until_used(ray_cluster, tmp_path):
    path = tmp_path / "store"
    s = storage_factory({"kind": "ray", "options": {"remoteArgs": DISK, "path": str(path)}})
    assert isinstance(s, RayStorage)
    assert (s.path, s.remote_args, s.ray_init_args) == (str(path), DISK, {})
    assert not path.exists()  # the folder is made by the first task, on the disk's node
    assert s.list_tasks("wf") == []
    assert path.is_dir()


def test_factory_ray_options_are_validated(tmp_path):
    base = {"remoteArgs": DISK, "path": str(tmp_path)}
    cases = [
        ({"remoteArgs": None}, "option 'remoteArgs'.*must be a dict.*None"),
        ({"remoteArgs": "disk"}, "option 'remoteArgs'.*must be a dict"),
        ({"remoteArgs": {"num_cpu": 1}}, "option 'remoteArgs'.*invalid.*num_cpu"),
        ({"remoteArgs": {"resources": 3}}, "option 'remoteArgs'.*invalid"),
        ({"remoteArgs": {"num_returns": 2}}, "option 'remoteArgs'.*num_returns"),
        ({"path": None}, "option 'path'.*None"),
        ({"path": ""}, "option 'path'"),
        ({"rayInitArgs": "local"}, "option 'rayInitArgs'.*must be a dict"),
        ({"timeout": -1}, "option 'timeout'"),
    ]
    for change, message in cases:
        with pytest.raises(StorageConfigError, match=message):
            storage_factory({"kind": "ray", "options": {**base, **change}})
    with pytest.raises(StorageConfigError, match="missing option.*'remoteArgs'"):
        storage_factory({"kind": "ray", "options": {"path": str(tmp_path)}})
    with pytest.raises(StorageConfigError, match="unknown option.*'remote_args'.*rayInitArgs \\(optional\\)"):
        storage_factory({"kind": "ray", "options": {**base, "remote_args": {}}})


def test_storage_path_that_is_a_file_fails_at_first_use(ray_storage, tmp_path):
    f = tmp_path / "afile"
    f.write_text("keep me")
    s = RayStorage(f, DISK)
    with pytest.raises(StorageConfigError, match="afile.*not a folder"):
        s.list_tasks("wf")
    assert f.read_text() == "keep me"


# -- the I/O really runs in Ray tasks ---------------------------------------------


def test_io_runs_in_a_ray_worker_with_the_registered_serializers(ray_storage):
    ray_storage.register_persistent_serializers(PidSerializer)
    _save(ray_storage, "wf", "n", {"nested": PidBox("one")}, "0" * 32)
    box = ray_storage.read_task("wf", "n")["nested"]
    assert isinstance(box, PidBox)
    assert box.writer != os.getpid() and box.reader != os.getpid()
    assert isinstance(box.writer, int) and isinstance(box.reader, int)
    assert ray_storage.read_task_meta("wf", "n")["persistent"] == ["PidSerializer"]
    assert [f.split("-")[0] for f in _side_files(ray_storage.path)] == ["one"]
    # side data is removed in the task too
    assert ray_storage.remove_task("wf", "n") == ["n"]
    assert _side_files(ray_storage.path) == []


def test_every_operation_is_one_task(ray_storage, monkeypatch):
    calls = []
    real = RayStorage._submit

    def spy(self, method, request):
        calls.append(method)
        return real(self, method, request)

    monkeypatch.setattr(RayStorage, "_submit", spy)
    _save(ray_storage, "wf", "a", 1, "1" * 32)
    ray_storage.load("wf", "1" * 32)
    ray_storage.read_task("wf", "a")
    ray_storage.list_tasks("wf")
    ray_storage.remove_task("wf", pattern="*")
    ray_storage.remove_workflow("wf")
    assert calls == [
        "save", "scan", "record_run", "load", "read_task", "list_tasks", "remove_task", "remove_workflow"
    ]


def test_values_come_back_as_file_storage_gives_them(ray_storage):
    np = pytest.importorskip("numpy")
    for size in (10, 1_000_000):  # inlined by Ray / in its object store
        _save(ray_storage, "wf", f"a{size}", np.arange(size), f"{len(str(size))}" * 32)
        arr = ray_storage.read_task("wf", f"a{size}")
        assert arr.flags.writeable  # not a read-only view of Ray's object store
        arr += 1
        assert arr[-1] == size


def test_save_updates_meta_like_every_storage(ray_storage):
    meta = {"fingerprint": "f"}
    name = ray_storage.save("wf", "n", "ab" * 16, 1, meta)
    assert meta["node"] == "n" and meta["key"] == "ab" * 16 and "created" in meta
    assert ray_storage.read_meta("wf", name)["created"] == meta["created"]


# -- compatible methods ------------------------------------------------------------


def test_list_read_remove_by_name_pattern_and_workflow(ray_cluster, tmp_path):
    s = storage_factory({"kind": "ray", "options": {"remoteArgs": DISK, "path": str(tmp_path)}})
    for i, name in enumerate(("fit_0000", "fit_0001", "score_0000")):
        _save(s, "wf", name, {"name": name}, f"{i}" * 32)
    _save(s, "other", "fit_0000", "kept", "9" * 32)
    assert s.list_tasks("wf", "*") == ["fit_0000", "fit_0001", "score_0000"]
    assert s.list_tasks("wf", "fit_*") == ["fit_0000", "fit_0001"]
    assert s.read_task("wf", "fit_0001") == {"name": "fit_0001"}
    assert s.remove_task("wf", pattern="fit_*") == ["fit_0000", "fit_0001"]
    assert s.list_tasks("wf") == ["score_0000"]
    assert stored_keys(tmp_path) == {"2" * 32, "9" * 32}  # score_0000 and other's fit_0000
    assert s.remove_task("wf", pattern="nothing*") == []
    with pytest.raises(FileNotFoundError):
        s.read_task("wf", "fit_0000")
    s.remove_workflow("wf")
    assert not (tmp_path / "runs" / "wf").exists()
    assert s.list_tasks("wf") == []
    assert s.read_task("other", "fit_0000") == "kept"
    s.remove_workflow("never-existed")


def test_errors_keep_their_types(ray_cluster, ray_storage):
    from ray.exceptions import RayError

    with pytest.raises(FileNotFoundError, match="'missing'") as info:
        ray_storage.read_task("wf", "missing")
    assert type(info.value) is EntryNotFoundError  # not Ray's RayTaskError(EntryNotFoundError)
    assert not isinstance(info.value, RayError)
    if sys.version_info >= (3, 11):
        assert any("Ray task running read_task" in n for n in info.value.__notes__)

    with pytest.raises(EntryNotFoundError):
        ray_storage.remove_task("wf", "missing")
    with pytest.raises(StorageError, match="task_name=... or pattern"):
        ray_storage.remove_task("wf")

    # raised in the task by the serializer: SerializationError naming the node
    ray_storage.register_persistent_serializers(PidSerializer)
    with pytest.raises(SerializationError, match="'bad node'.*refuses") as info:
        ray_storage.save("wf", "bad node", "0" * 32, PidBox(fail=True), {})
    assert type(info.value) is SerializationError
    assert ray_storage.list_tasks("wf") == []

    # cannot even travel to the task: SerializationError naming the node, nothing sent
    with pytest.raises(SerializationError, match="'locked'.*lock"):
        ray_storage.save("wf", "locked", "0" * 32, {"x": threading.Lock()}, {})

    # corrupt entry detected in the task
    _save(ray_storage, "wf", "n", b"x" * 1000, "0" * 32)
    damage_manifest(ray_storage.path, "0" * 32, lambda raw: raw[:-1] + b"\0")
    with pytest.raises(CorruptEntryError, match="checksum") as info:
        ray_storage.read_task("wf", "n")
    assert type(info.value) is CorruptEntryError


def test_storage_unpickled_inside_a_ray_task(ray_cluster, ray_storage):
    ray = ray_cluster
    # Ray pickles task arguments with its own copy of cloudpickle
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray_storage.register_persistent_serializers(PidSerializer)
    ray_storage.always_read = True
    _save(ray_storage, "wf", "n", PidBox("two"), "0" * 32)

    @ray.remote(num_cpus=0)
    def use(storage):
        from functionfuse.storage import raystore
        from functionfuse.testing.stores import _save

        box = storage.read_task("wf", "n")
        _save(storage, "wf", "m", box.label + "!", "1" * 32)
        return storage.always_read, os.getpid(), raystore._in_ray_worker(ray)

    # rayInitArgs are for a driver; in a worker Ray runs already and they are not reported
    remote = RayStorage(ray_storage.path, DISK, {"num_cpus": 1})
    remote.register_persistent_serializers(PidSerializer)
    remote.always_read = True
    always_read, pid, in_worker = ray.get(use.remote(remote), timeout=120)
    assert always_read is True and pid != os.getpid() and in_worker
    assert ray_storage.read_task("wf", "m") == "two!"


def test_pickles_with_its_options_serializers_and_flag(ray_storage):
    ray_storage.register_persistent_serializers(PidSerializer)
    ray_storage.always_read = True
    clone = pickle.loads(pickle.dumps(ray_storage))
    assert clone == ray_storage
    assert clone.remote_args == DISK and clone.always_read is True
    assert list(clone.registry.serializers) == list(ray_storage.registry.serializers)
    assert clone != RayStorage(ray_storage.path, {})  # other remote args: another storage


# -- Ray start-up and scheduling ---------------------------------------------------


def test_running_ray_is_used_and_ignored_init_args_are_logged(ray_cluster, tmp_path, monkeypatch, caplog):
    ray = ray_cluster

    def no_init(*args, **kwargs):
        raise AssertionError("ray.init must not be called when Ray runs")

    monkeypatch.setattr(ray, "init", no_init)
    with caplog.at_level(logging.WARNING, logger="functionfuse.storage.raystore"):
        quiet = RayStorage(tmp_path, DISK)
        assert quiet.list_tasks("wf") == []
        assert not caplog.records
        s = RayStorage(tmp_path, DISK, {"num_cpus": 7, "namespace": "ignored-here"})
        assert s.list_tasks("wf") == []
        s.list_tasks("wf")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # once, not per operation
    message = warnings[0].getMessage()
    assert "already initialized" in message and "'num_cpus': 7" in message and "ignored-here" in message


def test_starts_ray_with_ray_init_args_when_not_running(tmp_path):
    """In a fresh process (no Ray yet) the first operation calls ray.init(**rayInitArgs)."""
    script = tmp_path / "fresh.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import ray
            from functionfuse.storage import storage_factory

            s = storage_factory({{"kind": "ray", "options": {{
                "path": {str(tmp_path / "store")!r},
                "remoteArgs": {{"resources": {{"own_disk": 0.5}}}},
                "rayInitArgs": {{"address": "local", "num_cpus": 1, "resources": {{"own_disk": 1}},
                                 "include_dashboard": False, "log_to_driver": False}},
            }}}})
            assert not ray.is_initialized()
            s.save("wf", "n", "0" * 32, [1, 2], {{}})
            print(ray.is_initialized(), ray.cluster_resources()["own_disk"], s.load("wf", "0" * 32))
            """
        )
    )
    out = run_script(script, timeout=180)
    assert out.strip().splitlines()[-1] == "True 1.0 [1, 2]"


def test_impossible_resources_fail_fast_instead_of_hanging(ray_cluster, tmp_path):
    for remote_args, named in (
        ({"resources": {"no_such_disk": 1}}, "no_such_disk"),
        ({"resources": {"disk": 2}}, "'disk': 2.0"),
        ({"num_cpus": 64}, "'CPU': 64.0"),
    ):
        s = RayStorage(tmp_path, remote_args, timeout=60)  # a failure, not a hang, if unchecked
        start = time.monotonic()
        with pytest.raises(StorageConfigError, match=f"remoteArgs.*{named}.*no node.*wait forever"):
            s.list_tasks("wf")
        assert time.monotonic() - start < 30


def test_timeout_bounds_an_operation_that_cannot_be_scheduled_now(ray_cluster, tmp_path):
    ray = ray_cluster

    @ray.remote(num_cpus=0, resources={"disk": 1})
    class DiskHolder:
        def ping(self):
            return True

    holder = DiskHolder.remote()
    try:
        assert ray.get(holder.ping.remote(), timeout=60)
        s = RayStorage(tmp_path, {"num_cpus": 0, "resources": {"disk": 0.5}}, timeout=1)
        start = time.monotonic()
        with pytest.raises(StorageError, match="did not finish within 1.0 s"):
            s.list_tasks("wf")
        assert time.monotonic() - start < 30
    finally:
        ray.kill(holder)
        deadline = time.monotonic() + 60
        while ray.available_resources().get("disk", 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
    assert RayStorage(tmp_path, DISK, timeout=60).list_tasks("wf") == []


# -- a workflow on the ray storage ------------------------------------------------------


@workflow
def load(n):
    return list(range(n))


@workflow
def total(xs):
    return sum(xs)


@workflow
def boxed(label):
    return PidBox(label)


@workflow
def reader_pid(box):
    return box.reader


def _pipeline():
    data = load(10).set_name("data")
    return total(data).set_name("sum")


def test_local_workflow_runs_and_resumes(ray_cluster, tmp_path):
    storage = storage_factory({"kind": "ray", "options": {"remoteArgs": DISK, "path": str(tmp_path)}})
    wf = LocalWorkflow(_pipeline(), workflow_name="ray wf")
    wf.set_storage(storage)
    assert wf.run() == 45
    assert wf.last_report.computed == ["data", "sum"]
    assert storage.list_tasks("ray wf") == ["data", "sum"]

    wf = LocalWorkflow(_pipeline(), workflow_name="ray wf")  # a new graph: resumed from storage
    wf.set_storage(pickle.loads(pickle.dumps(storage)))
    assert wf.run() == 45
    assert wf.last_report.computed == []
    assert {e.action for e in wf.last_report.events} <= {"read", "skipped"}

    storage.remove_task("ray wf", pattern="s*")
    assert wf.run() == 45
    assert wf.last_report.computed == ["sum"]
    assert wf.last_report.by_node()["data"].action == "read"

    storage.remove_workflow("ray wf")
    assert wf.run() == 45
    assert wf.last_report.computed == ["data", "sum"]


def test_always_read_hands_children_the_stored_form(ray_cluster, tmp_path):
    storage = RayStorage(tmp_path, DISK)
    storage.register_persistent_serializers(PidSerializer)
    box = boxed("three").set_name("box")
    wf = LocalWorkflow(reader_pid(box).set_name("reader"), workflow_name="w")
    wf.set_storage(storage)
    assert wf.run() is None  # the child got the in-memory box
    storage.always_read = True
    pid = wf.run(force="box")
    assert isinstance(pid, int) and pid != os.getpid()  # restored by the serializer in a Ray task
    assert wf.run() == pid
