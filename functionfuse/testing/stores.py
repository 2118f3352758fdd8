"""Conformance suite for storages.

Usage in a test module::

    from functionfuse.testing.stores import StorageContract

    class TestMyStorage(StorageContract):
        @pytest.fixture
        def storage(self, tmp_path):
            return MyStorage(...)

Every method of the compatible storage API is exercised, plus the
guarantees of SPEC section 3 that do not depend on the backend: names stored
safely and listed back exactly, metadata without loading, corrupt entries
detected, create-if-absent publishing, pickling by constructor arguments.
"""

from __future__ import annotations

import pickle

import pytest

from ..errors import CorruptEntryError, EntryNotFoundError, StorageError
from ..storage.base import Storage

__all__ = ["StorageContract", "ODD_NAMES"]

ODD_NAMES = [
    "plain",
    "a/b",
    "../escape",
    "..",
    ".",
    ".hidden",
    "with space",
    "comma,separated",
    "star*",
    "question?",
    "[brackets]",
    "percent%41",
    "tilde~x",
    "ünïcødé",
    "x" * 300,
    "-leading-dash",
]


def _save(storage: Storage, wf: str, name: str, value: object, key: str = "0" * 32) -> str:
    return storage.save(wf, name, key, value, {"fingerprint": "f", "inputs": {}})


class StorageContract:
    """Tests every storage passes; subclasses provide a ``storage`` fixture."""

    def test_empty_workflow_lists_nothing(self, storage: Storage) -> None:
        assert storage.list_tasks("nothing-here", "*") == []

    def test_save_read_list(self, storage: Storage) -> None:
        _save(storage, "wf", "a", {"x": [1, 2]})
        _save(storage, "wf", "b", 3)
        assert storage.list_tasks("wf", "*") == ["a", "b"]
        assert storage.list_tasks("wf", "a*") == ["a"]
        assert storage.read_task("wf", "a") == {"x": [1, 2]}

    def test_read_missing_raises_file_not_found(self, storage: Storage) -> None:
        _save(storage, "wf", "a", 1)
        with pytest.raises(FileNotFoundError, match="'missing'"):
            storage.read_task("wf", "missing")
        with pytest.raises(EntryNotFoundError):
            storage.read_task("other-wf", "a")

    @pytest.mark.parametrize("name", ODD_NAMES)
    def test_odd_names_round_trip(self, storage: Storage, name: str) -> None:
        _save(storage, "wf/../odd name*", name, name)
        assert storage.list_tasks("wf/../odd name*", "*") == [name]
        assert storage.read_task("wf/../odd name*", name) == name
        # nothing escaped the workflow's folder
        assert storage.list_tasks("wf", "*") == []
        storage.remove_task("wf/../odd name*", name)
        assert storage.list_tasks("wf/../odd name*", "*") == []

    def test_glob_characters_are_literal_in_names(self, storage: Storage) -> None:
        for name in ("a*", "ab", "a?", "[a]"):
            _save(storage, "wf", name, name)
        assert storage.list_tasks("wf", "a*") == ["a*", "a?", "ab"]
        assert storage.list_tasks("wf", "[[]a]") == ["[a]"]
        assert storage.read_task("wf", "a*") == "a*"

    def test_remove_task_by_name_and_pattern(self, storage: Storage) -> None:
        for name in ("fit_0000", "fit_0001", "score_0000"):
            _save(storage, "wf", name, name)
        storage.remove_task("wf", "score_0000")
        assert storage.list_tasks("wf") == ["fit_0000", "fit_0001"]
        storage.remove_task("wf", pattern="fit_*")
        assert storage.list_tasks("wf") == []

    def test_remove_missing_task_is_an_error(self, storage: Storage) -> None:
        with pytest.raises(FileNotFoundError, match="nope"):
            storage.remove_task("wf", "nope")
        with pytest.raises(StorageError):
            storage.remove_task("wf")

    def test_remove_workflow_is_recursive_and_isolated(self, storage: Storage) -> None:
        _save(storage, "wf1", "a", 1)
        _save(storage, "wf2", "a", 2)
        storage.remove_workflow("wf1")
        assert storage.list_tasks("wf1") == []
        assert storage.read_task("wf2", "a") == 2
        storage.remove_workflow("never-existed")  # no error

    def test_metadata_without_loading(self, storage: Storage) -> None:
        name = _save(storage, "wf", "node", list(range(1000)), key="ab" * 16)
        meta = storage.read_meta("wf", name)
        assert meta["node"] == "node"
        assert meta["key"] == "ab" * 16
        assert meta["workflow"] == "wf"
        assert meta["serializer"] == "cloudpickle"
        assert meta["payload_size"] > 1000
        assert len(meta["payload_crc32"]) == 8
        assert {"python", "functionfuse", "cloudpickle"} <= set(meta["versions"])
        assert "created" in meta and "inputs" in meta
        assert storage.read_task_meta("wf", "node") == meta

    def test_create_if_absent(self, storage: Storage) -> None:
        _save(storage, "wf", "n", "first")
        _save(storage, "wf", "n", "second")  # same key: the first entry stays
        assert storage.read_task("wf", "n") == "first"
        storage.save("wf", "n", "0" * 32, "third", {}, overwrite=True)
        assert storage.read_task("wf", "n") == "third"

    def test_corrupt_entry_detected(self, storage: Storage) -> None:
        name = _save(storage, "wf", "n", b"x" * 10_000)
        path = storage._join(storage._wf_dir("wf").rsplit("/", 1)[-1], name)
        data = bytearray(storage._read(path))
        data[-100] ^= 0xFF
        storage._delete(path)
        storage._publish(storage._wf_dir("wf"), name, bytes(data))
        with pytest.raises(CorruptEntryError, match="checksum"):
            storage.read_task("wf", "n")
        storage._delete(path)
        storage._publish(storage._wf_dir("wf"), name, bytes(data[:-10]))
        with pytest.raises(CorruptEntryError, match="truncated"):
            storage.read_task("wf", "n")

    def test_always_read_property(self, storage: Storage) -> None:
        assert storage.always_read is False
        storage.always_read = True
        assert storage.always_read is True

    def test_pickles_as_constructor_arguments(self, storage: Storage) -> None:
        _save(storage, "wf", "n", 42)
        clone = pickle.loads(pickle.dumps(storage))
        assert clone == storage
        assert clone.read_task("wf", "n") == 42
        assert clone.always_read == storage.always_read
