import multiprocessing
import os

import pytest

from functionfuse.errors import StorageConfigError
from functionfuse.storage import FileStorage, FsspecStorage, S3Storage, storage_factory
from functionfuse.testing.stores import StorageContract


class TestFileStorage(StorageContract):
    @pytest.fixture
    def storage(self, tmp_path):
        return FileStorage(tmp_path / "store")


class TestFileStorageWithoutTmpfile(StorageContract):
    """The fallback publish path (temporary name + rename)."""

    @pytest.fixture
    def storage(self, tmp_path):
        s = FileStorage(tmp_path / "store")
        s._tmpfile_ok = False
        return s


class TestMemoryStorage(StorageContract):
    @pytest.fixture
    def storage(self):
        return FsspecStorage("memory://cache")


def test_factory_file_kind(tmp_path):
    s = storage_factory({"kind": "file", "options": {"path": str(tmp_path / "s")}})
    assert isinstance(s, FileStorage)
    assert os.path.isdir(tmp_path / "s")


def test_factory_unknown_kind_lists_all_three():
    with pytest.raises(StorageConfigError) as info:
        storage_factory({"kind": "disk", "options": {"path": "x"}})
    msg = str(info.value)
    assert "'disk'" in msg and "'file'" in msg and "'S3'" in msg and "'ray'" in msg


def test_factory_missing_and_unknown_options(tmp_path):
    with pytest.raises(StorageConfigError, match="missing option.*'path'"):
        storage_factory({"kind": "file", "options": {}})
    with pytest.raises(StorageConfigError, match="options"):
        storage_factory({"kind": "file"})
    with pytest.raises(StorageConfigError, match="unknown option.*'pth'"):
        storage_factory({"kind": "file", "options": {"path": str(tmp_path), "pth": 1}})
    with pytest.raises(StorageConfigError, match="dict"):
        storage_factory("file")


def test_factory_s3_kind_contacts_nothing_until_used():
    s = storage_factory({"kind": "S3", "options": {"path": "/bucket/prefix", "s3fs": {"anon": True}}})
    assert isinstance(s, S3Storage)
    assert s.url == "s3://bucket/prefix" and s._fs is None


def test_storage_path_that_is_a_file(tmp_path):
    f = tmp_path / "afile"
    f.write_text("keep me")
    with pytest.raises(StorageConfigError, match="afile.*not a folder"):
        storage_factory({"kind": "file", "options": {"path": str(f)}})
    assert f.read_text() == "keep me"


def _writer(path, value, barrier):
    s = FileStorage(path)
    barrier.wait()
    for _ in range(50):
        s.save("wf", "n", "1" * 32, value, {})


def test_concurrent_writers_leave_one_valid_entry(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), v, barrier)) for v in ("A" * 5000, "B" * 5000)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    s = FileStorage(tmp_path)
    assert s.read_task("wf", "n") in ("A" * 5000, "B" * 5000)
    assert len(os.listdir(tmp_path / "wf")) == 1  # no temp files left behind


def test_bad_path_type_names_the_option():
    with pytest.raises(StorageConfigError, match="option 'path'.*None"):
        storage_factory({"kind": "file", "options": {"path": None}})


def test_folder_removed_by_another_storage_object(tmp_path):
    a = FileStorage(tmp_path / "s")
    a.save("wf", "n", "0" * 32, 1, {})
    FileStorage(tmp_path / "s").remove_workflow("wf")
    a.save("wf", "m", "1" * 32, 2, {})  # recreates the folder
    assert a.read_task("wf", "m") == 2
    assert a._tmpfile_ok  # the fast path stays on


def test_partial_writes_are_completed(tmp_path, monkeypatch):
    import functionfuse.storage.local as local

    real_write = os.write
    monkeypatch.setattr(local.os, "write", lambda fd, data: real_write(fd, bytes(data[:1000])))
    for tmpfile_ok in (True, False):
        s = FileStorage(tmp_path / f"store-{tmpfile_ok}")
        s._tmpfile_ok = tmpfile_ok and s._tmpfile_ok
        value = bytes(range(256)) * 40
        name = s.save("wf", "big", "0" * 32, value, {})
        monkeypatch.setattr(local.os, "write", real_write)
        assert s.load("wf", name) == value
        monkeypatch.setattr(local.os, "write", lambda fd, data: real_write(fd, bytes(data[:1000])))
