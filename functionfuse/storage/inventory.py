"""What a store holds, read without unpickling anything: workflows, runs, versions,
lineage, sizes and integrity (the model behind ``functionfuse ls/show/runs/du/verify``).

Everything here reads the documents of docs/format.md -- run records, manifests,
object sizes and checksums -- and never decodes a result.  Documents are read
once per :class:`Inventory` and cached: an inventory is a snapshot for one
command, not a live view.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import CorruptEntryError, EntryNotFoundError, FunctionFuseError, StorageError
from .base import current_view
from .manifests import manifest_path
from .objects import ObjectRef
from .results import MARKER, ResultStore
from .runs import LEASE_SUFFIX, SUFFIX, decode_lease, decode_record

__all__ = ["Damage", "Inventory", "RunInfo", "StoreNotFoundError", "open_store"]


class StoreNotFoundError(FunctionFuseError):
    """The location given is not a functionfuse store."""


def open_store(location: str, storage_options: dict | None = None) -> Any:
    """The storage at ``location`` (a folder, ``file://...``, ``s3://bucket/prefix``),
    checked to be a store: it exists, is a folder, and holds ``FFSTORE.json``.

    Returns a :class:`~functionfuse.storage.base.Storage` (kind ``file`` or ``S3``);
    ``storage_options`` are s3fs arguments for S3 and ignored for folders.
    """
    from .factory import storage_factory

    if not isinstance(location, str) or not location.strip():
        raise StoreNotFoundError("no store given: pass --store LOCATION or set FUNCTIONFUSE_STORE")
    if location.startswith("s3://"):
        storage = storage_factory({"kind": "S3", "options": {"path": location, "s3fs": dict(storage_options or {})}})
        marker = posixpath.join(storage.results.objects.root, MARKER)
        try:
            there = storage.results.objects.fs.exists(marker)
        except Exception as exc:
            raise StorageError(f"cannot reach store {location}: {type(exc).__name__}: {exc}") from exc
    elif "://" in location and not location.startswith("file://"):
        raise StoreNotFoundError(f"store {location!r}: give a folder, file://... or s3://bucket/prefix")
    else:
        path = location.removeprefix("file://")
        path = os.path.abspath(os.path.expanduser(path))
        if not os.path.exists(path):
            raise StoreNotFoundError(f"store {path} does not exist (give the folder a storage was created with)")
        if not os.path.isdir(path):
            raise StoreNotFoundError(f"store {path} is a file, not a store folder")
        storage = storage_factory({"kind": "file", "options": {"path": path}})
        there = os.path.exists(os.path.join(path, MARKER))
        location = path
    if not there:
        raise StoreNotFoundError(
            f"{location} is not a functionfuse store (it has no {MARKER}; "
            "a store is made by the first run that saves a result there)"
        )
    return storage


@dataclass
class RunInfo:
    """One run record as listed (``record`` None when it is damaged: ``problem`` says how)."""

    workflow: str
    run_id: str
    path: str
    record: dict | None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.record is not None


@dataclass
class Damage:
    """One damaged document or object, and the node it belongs to when known."""

    what: str  # "run record", "manifest", "object"
    path: str
    problem: str
    workflow: str | None = None
    node: str | None = None
    key: str | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


@dataclass
class _Manifest:
    doc: dict | None
    nbytes: int = 0
    problem: str | None = None
    missing: bool = False


@dataclass
class Inventory:
    """A snapshot of one store for listing, inspecting, measuring and verifying."""

    results: ResultStore
    _folders: dict[str, str] | None = field(default=None, repr=False)  # workflow -> folder name
    _runs: dict[str, list[RunInfo]] = field(default_factory=dict, repr=False)
    _manifests: dict[str, _Manifest] = field(default_factory=dict, repr=False)

    # -- workflows and runs ------------------------------------------------------
    @property
    def url(self) -> str:
        return self.results.objects.url

    def _path(self, relative: str) -> str:
        return posixpath.join(self.results.objects.root, relative)

    def _ls(self, relative: str) -> list[str]:
        folder = self._path(relative)
        fs = self.results.objects.fs
        with self.results.objects._io("listing", relative, folder):
            try:
                if self.results._local:
                    return sorted(os.listdir(folder))
                return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(folder, detail=False))
            except FileNotFoundError:
                return []

    def workflows(self) -> list[str]:
        """Every workflow with a run record, by its exact name (from its latest record)."""
        if self._folders is None:
            self._folders = {}
            for folder in self._ls("runs"):
                runs = self._runs_in(folder)
                readable = [r for r in runs if r.ok]
                name = readable[-1].record["workflow"] if readable else _decoded(folder)
                self._folders[name] = folder
                self._runs[name] = runs
        return sorted(self._folders)

    def _runs_in(self, folder: str) -> list[RunInfo]:
        out = []
        for name in self._ls(f"runs/{folder}"):
            if not name.endswith(SUFFIX):
                continue
            relative = f"runs/{folder}/{name}"
            run_id = name[: -len(SUFFIX)]
            try:
                with self.results.objects._io("reading", relative, self._path(relative)):
                    data = self.results._get(self._path(relative))
                record = decode_record(data, relative)
            except CorruptEntryError as exc:
                out.append(RunInfo(_decoded(folder), run_id, relative, None, str(exc)))
                continue
            except StorageError as exc:
                if isinstance(exc.__cause__, FileNotFoundError):
                    continue  # removed meanwhile
                raise
            out.append(RunInfo(record["workflow"], run_id, relative, record))
        return out

    def leases(self) -> list[tuple[str, dict | None, str | None]]:
        """``(path, lease or None, problem)`` of every run lease (runs in progress, or
        crashed before their record: see docs/format.md)."""
        out = []
        for folder in self._ls("runs"):
            for name in self._ls(f"runs/{folder}"):
                if not name.endswith(LEASE_SUFFIX):
                    continue
                relative = f"runs/{folder}/{name}"
                try:
                    with self.results.objects._io("reading", relative, self._path(relative)):
                        data = self.results._get(self._path(relative))
                    out.append((relative, decode_lease(data, relative), None))
                except CorruptEntryError as exc:
                    out.append((relative, None, str(exc)))
                except StorageError as exc:
                    if not isinstance(exc.__cause__, FileNotFoundError):
                        raise  # else: the run ended meanwhile
        return out

    def require(self, workflow: str) -> None:
        """Raise EntryNotFoundError naming the workflows there are when ``workflow`` is not stored."""
        names = self.workflows()
        if workflow not in names:
            known = ", ".join(repr(n) for n in names[:10]) or "none"
            raise EntryNotFoundError(f"no workflow {workflow!r} in store {self.url} (workflows: {known})")

    def runs(self, workflow: str) -> list[RunInfo]:
        """The workflow's run records, oldest first (damaged ones included, marked)."""
        self.require(workflow)
        return [r for r in self._runs[workflow] if r.record is None or r.record.get("workflow") == workflow]

    def latest(self, workflow: str) -> dict | None:
        """The latest readable run record of ``workflow``."""
        readable = [r for r in self.runs(workflow) if r.ok]
        return readable[-1].record if readable else None

    def current(self, workflow: str) -> dict[str, str]:
        """Node name -> key of the workflow's current state (its latest record's view)."""
        return current_view(self.latest(workflow))

    def versions(self, workflow: str) -> dict[str, dict[str, list[str]]]:
        """Node name -> {key: run ids that used it}, over every readable record."""
        out: dict[str, dict[str, list[str]]] = {}
        for run in self.runs(workflow):
            if run.ok:
                for name, key in current_view(run.record).items():
                    out.setdefault(name, {}).setdefault(key, []).append(run.run_id)
        return out

    # -- manifests and objects -----------------------------------------------------
    def manifest(self, key: str) -> dict | None:
        """The checked manifest of ``key``; None when it is missing or damaged (see :meth:`problem`)."""
        return self._manifest(key).doc

    def problem(self, key: str) -> str | None:
        """Why :meth:`manifest` gave None for ``key`` ("missing" or the damage)."""
        m = self._manifest(key)
        return "missing" if m.missing else m.problem

    def _manifest(self, key: str) -> _Manifest:
        got = self._manifests.get(key)
        if got is None:
            try:
                doc, data = self.results.manifest_entry(key)
                got = _Manifest(doc, len(data))
            except CorruptEntryError as exc:
                got = _Manifest(None, problem=str(exc))
            except EntryNotFoundError:
                got = _Manifest(None, missing=True)
            self._manifests[key] = got
        return got

    def manifest_bytes(self, key: str) -> int:
        return self._manifest(key).nbytes

    def objects_of(self, key: str) -> dict[str, int]:
        """Object hash -> stored size, for the parts of ``key``'s manifest."""
        doc = self.manifest(key)
        out: dict[str, int] = {}
        for part in (doc or {}).get("parts", ()):
            if isinstance(part.get("object"), str):
                out[part["object"]] = int(part.get("size") or 0)
        return out

    def stored_bytes(self, key: str) -> int:
        """Bytes of ``key``: its manifest plus its objects."""
        return self.manifest_bytes(key) + sum(self.objects_of(key).values())

    def side_bytes(self, workflow: str) -> int:
        """Bytes of the workflow's side data (``side/<workflow>/``: what persistent
        serializers such as ``DaskArraySerializer`` wrote), from one listing."""
        from .base import SIDE
        from .names import encode_name

        top = self._path(f"{SIDE}/{encode_name(workflow)}")
        if self.results._local:
            total = 0
            for folder, _, names in os.walk(top):
                for name in names:
                    try:
                        total += os.lstat(os.path.join(folder, name)).st_size
                    except FileNotFoundError:
                        continue
            return total
        with self.results.objects._io("listing", f"{SIDE}/{workflow}", top):
            try:
                found = self.results.objects.fs.find(top, detail=True)
            except FileNotFoundError:
                return 0
        return sum(int(info.get("size") or 0) for info in found.values())

    def all_keys(self) -> list[str]:
        """Every manifest's key (one listing of ``manifests/``, and the packs' lines)."""
        return self.results.manifest_keys()

    def all_objects(self) -> dict[str, int]:
        """Every object's hash -> size (one listing of ``objects/``)."""
        return {h: size for h, (size, _) in self.results.objects.listing().items()}

    def consumers(self, workflow: str, key: str) -> list[tuple[str, str]]:
        """(node, key) of the current nodes whose manifest names ``key`` as an input."""
        out = []
        for name, k in self.current(workflow).items():
            inputs = (self.manifest(k) or {}).get("inputs")
            if isinstance(inputs, dict) and key in inputs.values():
                out.append((name, k))
        return sorted(out)

    # -- integrity ---------------------------------------------------------------
    def verify(self, workflow: str | None = None) -> tuple[dict[str, int], list[Damage]]:
        """Check records, manifests and every part object; returns (counts checked, damage).

        With ``workflow``: its records and the manifests its records name; without:
        every record and every manifest of the store.  Objects are read whole and
        their XXH3-128 checked (:meth:`ObjectStore.get_bytes`).
        """
        damage: list[Damage] = []
        names = [workflow] if workflow is not None else self.workflows()
        owners: dict[str, tuple[str, str]] = {}  # key -> (workflow, node), for naming damage
        values_refs: list[tuple[str, str, dict]] = []  # (workflow, record, ref) of small-results objects
        records = 0
        for wf in names:
            for run in self.runs(wf):
                records += 1
                if not run.ok:
                    damage.append(Damage("run record", run.path, run.problem or "unreadable", wf))
                    continue
                for node, key in current_view(run.record).items():
                    owners.setdefault(key, (wf, node))
                ref = run.record.get("values")
                if isinstance(ref, dict):
                    values_refs.append((wf, run.path, ref))
                for node, entry in run.record.get("nodes", {}).items():
                    if isinstance(entry, dict) and isinstance(entry.get("key"), str):
                        owners.setdefault(entry["key"], (wf, node))
        keys = sorted(owners) if workflow is not None else sorted(set(self.all_keys()) | set(owners))
        checked_objects: dict[str, str | None] = {}
        manifests = 0
        for key in keys:
            wf, node = owners.get(key, (None, None))
            m = self._manifest(key)
            if m.missing:
                if wf is not None and key in self.current(wf).values():
                    damage.append(Damage("manifest", manifest_path(key), "missing", wf, node, key))
                continue
            manifests += 1
            if m.doc is None:
                damage.append(Damage("manifest", manifest_path(key), m.problem or "unreadable", wf, node, key))
                continue
            wf = wf or m.doc.get("workflow")
            node = node or m.doc.get("node")
            for i, part in enumerate(m.doc.get("parts", ())):
                problem = self._check_part(part, checked_objects)
                if problem is not None:
                    where = self.results.objects.path(part["object"]) if isinstance(part.get("object"), str) else key
                    damage.append(Damage("object", where, f"part {i} ({part.get('format')}): {problem}", wf, node, key))
        for wf, path, ref in values_refs:
            problem = self._check_part(ref, checked_objects)
            if problem is not None:
                where = self.results.objects.path(ref["object"]) if isinstance(ref.get("object"), str) else path
                damage.append(Damage("object", where, f"small results named by {path}: {problem}", wf))
        counts = {"records": records, "manifests": manifests, "objects": len(checked_objects)}
        return counts, damage

    def _check_part(self, part: dict, seen: dict[str, str | None]) -> str | None:
        try:
            ref = ObjectRef.from_json(part)
        except (ValueError, TypeError, KeyError) as exc:
            return f"names no valid object ({exc})"
        if ref.hash in seen:
            return seen[ref.hash]
        try:
            if self.results._local:
                self.results.objects.checked_path(ref)  # hashed over a memory map: no copy in memory
            else:
                self.results.objects.get_bytes(ref)
            problem = None
        except CorruptEntryError as exc:
            problem = str(exc)
        except EntryNotFoundError:
            problem = "object missing"
        except StorageError as exc:
            if isinstance(exc.__cause__, FileNotFoundError):
                problem = "object missing"
            else:
                raise
        seen[ref.hash] = problem
        return problem

    def iter_current(self, workflow: str) -> Iterator[tuple[str, str, dict | None]]:
        """(node, key, manifest or None) of the workflow's current state, by node name."""
        for name, key in sorted(self.current(workflow).items()):
            yield name, key, self.manifest(key)


def _decoded(folder: str) -> str:
    from .names import decode_name

    try:
        return decode_name(folder)
    except Exception:  # noqa: BLE001 - a foreign folder: shown as it is
        return folder
