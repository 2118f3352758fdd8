import multiprocessing
import os
import pickle

import pytest

from functionfuse.errors import StorageConfigError
from functionfuse.storage import FileStorage, FsspecStorage, S3Storage, storage_factory
from functionfuse.testing.stores import StorageContract


class TestFileStorage(StorageContract):
    @pytest.fixture
    def storage(self, tmp_path):
        return FileStorage(tmp_path / "store")


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


def test_concurrent_writers_leave_one_valid_result(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), v, barrier)) for v in ("A" * 5000, "B" * 5000)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    s = FileStorage(tmp_path)
    got = s.load("wf", "1" * 32)
    assert got in ("A" * 5000, "B" * 5000)
    assert FileStorage(tmp_path).load("wf", "1" * 32) == got  # every reader takes the same one
    assert os.listdir(tmp_path / "manifests" / "11") == ["1" * 32 + ".json"]  # saved outside a run: loose
    assert not (tmp_path / "tmp").exists() or os.listdir(tmp_path / "tmp") == []  # no temporaries left


def test_bad_path_type_names_the_option():
    with pytest.raises(StorageConfigError, match="option 'path'.*None"):
        storage_factory({"kind": "file", "options": {"path": None}})


def test_folders_removed_by_another_storage_object(tmp_path):
    import shutil

    a = FileStorage(tmp_path / "s")
    a.save("wf", "n", "0" * 32, b"x" * 100_000, {})
    for folder in ("objects", "manifests", "tmp"):
        shutil.rmtree(tmp_path / "s" / folder)
    a.save("wf", "m", "1" * 32, b"y" * 100_000, {})  # recreates the folders
    assert a.load("wf", "1" * 32) == b"y" * 100_000


def test_safe_option_reaches_the_storage(tmp_path):
    s = storage_factory({"kind": "file", "options": {"path": str(tmp_path), "safe": True}})
    assert s.safe and pickle.loads(pickle.dumps(s)).safe
    with pytest.raises(StorageConfigError, match="'safe'.*bool"):
        storage_factory({"kind": "file", "options": {"path": str(tmp_path), "safe": "yes"}})
