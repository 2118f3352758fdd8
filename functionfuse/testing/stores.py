"""Conformance suite for storages.

Usage in a test module::

    from functionfuse.testing.stores import StorageContract

    class TestMyStorage(StorageContract):
        @pytest.fixture
        def storage(self, tmp_path):
            return MyStorage(...)

Every method of the compatible storage API is exercised, plus the
guarantees of SPEC section 3 that do not depend on the backend: names stored
safely and listed back exactly, metadata without loading, damaged results
detected, create-if-absent publishing, versions kept by key, the value of a
node being the one its workflow's latest run recorded, pickling by
constructor arguments.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from typing import Any

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


def _key(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]


def _record(storage: Storage, wf: str, nodes: dict[str, str]) -> None:
    """Record a run of ``wf`` that stored ``nodes`` (name -> key), as a backend does."""
    from ..storage.base import utc_now_iso
    from ..storage.runs import new_run_id

    now = utc_now_iso()
    entries = {n: {"key": k, "action": "computed", "reason": "new"} for n, k in nodes.items()}
    storage.record_run(wf, new_run_id(), entries, listing=storage.scan(wf), started=now, finished=now,
                       outcome="ok", executor="test")


def _save(storage: Storage, wf: str, name: str, value: Any, key: str | None = None, *, record: bool = True) -> str:
    """Store ``value`` as node ``name`` of ``wf`` and record a run naming it."""
    key = key or _key(wf, name, value)
    storage.save(wf, name, key, value, {"fingerprint": "f", "inputs": {}})
    if record:
        _record(storage, wf, {name: key})
    return key


def _damage(storage: Storage, relative: str, change: Any) -> None:
    """Rewrite the stored file ``relative`` (to the root) with ``change(bytes)``."""
    folder = getattr(storage, "path", None)
    if isinstance(folder, str) and os.path.isdir(folder):  # a local folder (file and ray kinds)
        path = os.path.join(folder, *relative.split("/"))
        with open(path, "rb") as fh:
            data = fh.read()
        os.unlink(path)  # objects are hard links of one another's temporaries: never write in place
        with open(path, "wb") as fh:
            fh.write(change(bytearray(data)))
        return
    fs, path = storage.fs, storage._join(*relative.split("/"))
    data = fs.cat_file(path)
    fs.rm_file(path)
    fs.pipe_file(path, change(bytearray(data)))


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
        assert storage.read_task("wf", "b") == 3

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
        keys = {name: _save(storage, "wf", name, name) for name in ("fit_0000", "fit_0001", "score_0000")}
        storage.remove_task("wf", "score_0000")
        assert storage.list_tasks("wf") == ["fit_0000", "fit_0001"]
        assert storage.present(keys.values()) == {keys["fit_0000"], keys["fit_0001"]}
        assert storage.remove_task("wf", pattern="fit_*") == ["fit_0000", "fit_0001"]
        assert storage.list_tasks("wf") == []
        assert storage.present(keys.values()) == set()

    def test_remove_keeps_what_another_workflow_uses(self, storage: Storage) -> None:
        key = _save(storage, "wf1", "a", [1, 2, 3])
        _save(storage, "wf2", "b", [1, 2, 3], key=key)  # the same computation
        storage.remove_task("wf1", "a")
        assert storage.list_tasks("wf1") == []
        assert storage.read_task("wf2", "b") == [1, 2, 3]

    def test_remove_missing_task_is_an_error(self, storage: Storage) -> None:
        with pytest.raises(FileNotFoundError, match="nope"):
            storage.remove_task("wf", "nope")
        with pytest.raises(StorageError):
            storage.remove_task("wf")

    def test_remove_workflow_is_isolated(self, storage: Storage) -> None:
        _save(storage, "wf1", "a", 1)
        _save(storage, "wf2", "a", 2)
        storage.remove_workflow("wf1")
        assert storage.list_tasks("wf1") == []
        assert storage.read_task("wf2", "a") == 2
        storage.remove_workflow("never-existed")  # no error

    def test_metadata_without_loading(self, storage: Storage) -> None:
        key = _save(storage, "wf", "node", list(range(100_000)), key="ab" * 16)
        meta = storage.read_meta("wf", key)
        assert meta["node"] == "node"
        assert meta["key"] == "ab" * 16
        assert meta["workflow"] == "wf"
        assert meta["format"] == "functionfuse-manifest" and meta["version"] == 2
        assert [p["format"] for p in meta["parts"]] == ["json"]  # a large list: a json part
        assert meta["parts"][0]["size"] > 100_000
        assert {"python", "functionfuse", "cloudpickle"} <= set(meta["versions"])
        assert "created" in meta and "inputs" in meta and "host" in meta
        assert storage.read_task_meta("wf", "node") == meta

    def test_create_if_absent(self, storage: Storage) -> None:
        _save(storage, "wf", "n", "first", key="0" * 32)
        _save(storage, "wf", "n", "second", key="0" * 32)  # same key: the first result stays
        assert storage.read_task("wf", "n") == "first"
        storage.save("wf", "n", "0" * 32, "third", {}, overwrite=True)
        assert storage.read_task("wf", "n") == "third"

    def test_every_version_is_kept(self, storage: Storage) -> None:
        a = _save(storage, "wf", "n", "A")
        b = _save(storage, "wf", "n", "B")
        assert storage.read_task("wf", "n") == "B"
        assert storage.present([a, b]) == {a, b}
        assert storage.load("wf", a) == "A"
        _record(storage, "wf", {"n": a})  # A -> B -> A: the first version is current again
        assert storage.read_task("wf", "n") == "A"

    def test_the_latest_run_decides_not_the_latest_write(self, storage: Storage) -> None:
        _save(storage, "wf", "n", "recorded")
        _save(storage, "wf", "n", "late", record=False)  # e.g. a task of an earlier run, re-executed
        assert storage.read_task("wf", "n") == "recorded"

    def test_a_key_is_shared_by_every_workflow(self, storage: Storage) -> None:
        key = _save(storage, "wf1", "n", {"v": 1})
        assert storage.present([key, "f" * 32]) == {key}
        assert storage.load("wf2", key) == {"v": 1}

    def test_damaged_results_are_detected(self, storage: Storage) -> None:
        key = _save(storage, "wf", "n", b"x" * 100_000)
        manifest = f"manifests/{key[:2]}/{key}.json"

        def flip(data: bytearray) -> bytes:
            data[-20] ^= 0xFF
            return bytes(data)

        _damage(storage, manifest, flip)
        with pytest.raises(CorruptEntryError, match="checksum"):
            storage.read_task("wf", "n")
        storage.save("wf", "n", key, b"x" * 100_000, {}, overwrite=True)
        assert storage.read_task("wf", "n") == b"x" * 100_000
        obj = storage.read_meta("wf", key)["parts"][0]["object"]
        _damage(storage, f"objects/{obj[:2]}/{obj[2:4]}/{obj}", lambda d: bytes(d[:-10]))
        with pytest.raises(CorruptEntryError, match="truncated"):
            storage.read_task("wf", "n")
        storage.save("wf", "n", key, b"x" * 100_000, {}, overwrite=True)  # a fresh copy replaces it
        assert storage.read_task("wf", "n") == b"x" * 100_000

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
