"""Storage: primitives in subclasses, entry policy written once here.

Layout under a storage's root::

    <root>/<workflow>/<node>-<key>.ffr     one entry per (node name, key)
    <root>/<workflow>/.data/...            serializers' side data

``<workflow>`` and ``<node>`` are encoded with :mod:`.names`.  Entries are
immutable: a result with a new key is a new object under a new name, and the
entry with the old key of the same node is removed once the new one is
published, so a reader sees the old entry, the new one, or both, never a
partial one.  Publishing is create-if-absent: two writers of the same entry
leave one valid entry.

Subclasses implement the primitives (``_listdir``, ``_read``, ``_read_head``,
``_publish``, ``_delete``, ``_delete_tree``, ``_ensure_dir``, ``fs``); everything
else is policy shared by every storage.  A storage pickles as its constructor
arguments plus its registered serializers, so any worker process can reopen
it.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import platform
import sys
import time
from abc import ABC, abstractmethod
from pickle import loads as _pickle_loads
from typing import Any

from ..errors import CorruptEntryError, EntryNotFoundError, SerializationError, StorageError
from ..serializers import pickling
from ..serializers.base import FILE_PROTOCOL, FileProtocol
from ..serializers.registry import SerializerRegistry
from . import entry as entry_format
from .names import decode_name, encode_name, is_shortened

__all__ = ["Storage", "Listing", "library_versions"]

logger = logging.getLogger(__name__)

SIDE_DATA = ".data"
KEY_HEX = 32
_SUFFIX = entry_format.SUFFIX
_TAIL = 1 + KEY_HEX + len(_SUFFIX)  # "-" + key + ".ffr"

_TRACKED = ("numpy", "pandas", "dask", "h5py", "zarr", "sklearn", "torch")
_VERSIONS: dict[tuple[str, ...], dict[str, str]] = {}


def library_versions() -> dict[str, str]:
    """Versions recorded in every entry: Python, functionfuse, cloudpickle and
    the scientific libraries imported at the time of the save."""
    present = tuple(filter(sys.modules.__contains__, _TRACKED))
    versions = _VERSIONS.get(present)
    if versions is None:
        import cloudpickle

        from .. import __version__

        versions = {
            "python": platform.python_version(),
            "functionfuse": __version__,
            "cloudpickle": cloudpickle.__version__,
        }
        for mod in present:
            versions[mod] = str(getattr(sys.modules[mod], "__version__", "?"))
        _VERSIONS[present] = versions
    return versions


_last_second: list = [None, ""]


def utc_now_iso() -> str:
    """``datetime.now(timezone.utc).isoformat()``, in a third of the time.

    The same format (microseconds left out when zero); the date and time up to
    the second are formatted once a second.
    """
    seconds, ns = divmod(time.time_ns(), 1_000_000_000)
    cached = _last_second
    if cached[0] != seconds:
        cached[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        cached[0] = seconds
    micro = ns // 1000
    return f"{cached[1]}.{micro:06d}+00:00" if micro else cached[1] + "+00:00"


def _naming_node(exc: StorageError, workflow_name: str, node_name: str) -> StorageError:
    """``exc`` with the node and workflow in front of its message (same type)."""
    prefix = f"node {node_name!r} of workflow {workflow_name!r}"
    if str(exc).startswith(prefix):
        return exc
    try:
        return type(exc)(f"{prefix}: result not stored: {exc}")
    except TypeError:  # pragma: no cover - a subclass with another signature
        return exc


def split_entry_name(filename: str) -> tuple[str, str] | None:
    """``(encoded node name, key)`` of an entry file name, or None."""
    if len(filename) <= _TAIL or not filename.endswith(_SUFFIX) or filename[-_TAIL] != "-":
        return None
    if filename.startswith("."):
        return None
    return filename[:-_TAIL], filename[-_TAIL + 1 : -len(_SUFFIX)]


class Listing:
    """A snapshot of a workflow's entry names taken at the start of a run.

    ``files`` answers "is this entry stored?"; ``by_name`` (encoded node name
    -> entry file names) is built on first use, which a fully cached run never
    needs.
    """

    def __init__(self, names: list[str] | None = None) -> None:
        self.files: set[str] = set(names or ())
        self._by_name: dict[str, list[str]] | None = None

    @property
    def by_name(self) -> dict[str, list[str]]:
        if self._by_name is None:
            by_name: dict[str, list[str]] = {}
            for filename in self.files:
                parts = split_entry_name(filename)
                if parts is not None:
                    by_name.setdefault(parts[0], []).append(filename)
            self._by_name = by_name
        return self._by_name


class Storage(ABC):
    """Base of every storage.  See the module docstring for the layout."""

    protocol_name = FILE_PROTOCOL
    _sep = "/"

    def __init__(self) -> None:
        self.registry = SerializerRegistry()
        self._always_read = False
        self._made_dirs: set[str] = set()
        self._wf_dirs: dict[str, str] = {}
        self._const_meta: dict[tuple[str, int], bytes] = {}

    # -- primitives -----------------------------------------------------------
    @property
    @abstractmethod
    def fs(self) -> Any:
        """The fsspec filesystem (for serializers' protocol handles)."""

    @abstractmethod
    def _join(self, *parts: str) -> str:
        """Join path components below the root."""

    @abstractmethod
    def _listdir(self, path: str) -> list[str]:
        """Base names in folder ``path``; an empty list when it does not exist."""

    @abstractmethod
    def _read(self, path: str) -> bytes:
        """Whole content of ``path``; raises FileNotFoundError when missing."""

    @abstractmethod
    def _read_head(self, path: str, size: int) -> bytes:
        """The first ``size`` bytes (fewer if shorter); FileNotFoundError when missing."""

    @abstractmethod
    def _ensure_dir(self, path: str) -> None:
        """Create folder ``path`` (and parents) if needed."""

    @abstractmethod
    def _publish(self, folder: str, name: str, data: bytes, overwrite: bool = False) -> bool:
        """Atomically create ``folder/name`` with ``data``.

        Readers must never see a partial object.  Unless ``overwrite``, an
        existing object is kept: returns False and writes nothing.  With
        ``overwrite`` the object is atomically replaced.
        """

    @abstractmethod
    def _delete(self, path: str) -> None:
        """Delete one object; a missing one is not an error."""

    @abstractmethod
    def _delete_tree(self, path: str) -> None:
        """Delete a folder recursively; a missing one is not an error."""

    @abstractmethod
    def _constructor_args(self) -> tuple[tuple, dict]:
        """Arguments that rebuild this storage in another process."""

    def _failure(self, exc: BaseException, action: str, path: str) -> StorageError | None:
        """The error to raise for ``exc``, an error of the storage's backend.

        Called with errors raised while ``action`` (``"reading"``,
        ``"writing"`` ...) ``path``, including errors a serializer meets while
        writing or reading side data.  Returns a :class:`StorageError` that says
        what went wrong and how to fix it (an unreachable endpoint, rejected
        credentials, a missing bucket), or None to let ``exc`` propagate as it
        is (for example a FileNotFoundError that only means "no such entry").
        """
        return exc if isinstance(exc, StorageError) else None

    # -- pickling: constructor arguments, no live handles ----------------------
    def __getstate__(self) -> dict:
        args, kwargs = self._constructor_args()
        return {
            "args": args,
            "kwargs": kwargs,
            "serializers": list(self.registry.serializers.values()),
            "always_read": self._always_read,
        }

    def __setstate__(self, state: dict) -> None:
        self.__init__(*state["args"], **state["kwargs"])  # type: ignore[misc]
        self.registry.register(*state["serializers"])
        self._always_read = state["always_read"]

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._constructor_args() == other._constructor_args()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), repr(self._constructor_args())))

    # -- compatible API -------------------------------------------------------
    @property
    def always_read(self) -> bool:
        """Re-read each result right after saving it, so children get the
        stored form (for example a lazy dask array backed by HDF5)."""
        return self._always_read

    @always_read.setter
    def always_read(self, value: bool) -> None:
        self._always_read = bool(value)

    def register_persistent_serializers(self, *serializers: Any) -> None:
        """Register serializers for types found anywhere inside results."""
        self.registry.register(*serializers)

    def new_workflow(self, workflow_name: str) -> None:
        """Make sure the workflow's folder exists (the original package's hook)."""
        self._ensure_dir(self._wf_dir(workflow_name))

    def list_tasks(self, workflow_name: str, pattern: str = "*") -> list[str]:
        """Names of the stored nodes of a workflow matching a glob ``pattern``, sorted."""
        names = set(self._names(workflow_name))
        return sorted(n for n in names if fnmatch.fnmatchcase(n, pattern))

    def read_task(self, workflow_name: str, task_name: str) -> Any:
        """The stored result of node ``task_name``.

        Raises
        ------
        EntryNotFoundError
            (a FileNotFoundError) when nothing is stored under that name.
        CorruptEntryError
            When the entry fails its integrity check.
        """
        filename = self._latest(workflow_name, task_name)
        return self.load(workflow_name, filename)

    def read_task_meta(self, workflow_name: str, task_name: str) -> dict:
        """Metadata of node ``task_name``'s entry, without loading the result."""
        return self.read_meta(workflow_name, self._latest(workflow_name, task_name))

    def remove_task(self, workflow_name: str, task_name: str | None = None, pattern: str | None = None) -> list[str]:
        """Remove stored results (and their side data) by name or glob pattern.

        Returns the names removed.  A ``task_name`` with no entry raises
        :class:`EntryNotFoundError`; a pattern matching nothing removes nothing.
        """
        if pattern is None and task_name is None:
            raise StorageError("remove_task needs task_name=... or pattern=...")
        if pattern is not None:
            wanted = set(self.list_tasks(workflow_name, pattern))
        else:
            wanted = {task_name}  # type: ignore[arg-type]
        files = [f for name, f in self._named_files(workflow_name) if name in wanted]
        if task_name is not None and pattern is None and not files:
            raise EntryNotFoundError(f"workflow {workflow_name!r} has no stored node {task_name!r}")
        self.discard(workflow_name, files)
        return sorted(wanted)

    def remove_workflow(self, workflow_name: str) -> None:
        """Remove everything stored for a workflow (a missing one is not an error)."""
        self._delete_tree(self._wf_dir(workflow_name))
        self._made_dirs.clear()

    # -- entries: what the caching core uses ---------------------------------
    def _wf_dir(self, workflow_name: str) -> str:
        try:
            return self._wf_dirs[workflow_name]
        except (KeyError, TypeError):
            pass
        if not isinstance(workflow_name, str) or not workflow_name:
            raise StorageError(f"workflow names must be non-empty strings, got {workflow_name!r}")
        folder = self._wf_dirs[workflow_name] = self._join(encode_name(workflow_name))
        return folder

    def _entry_path(self, workflow_name: str, filename: str) -> str:
        return self._wf_dir(workflow_name) + self._sep + filename

    @staticmethod
    def entry_name(node_name: str, key: str) -> str:
        """File name of the entry of ``node_name`` with cache ``key``."""
        return f"{encode_name(node_name)}-{key[:KEY_HEX]}{_SUFFIX}"

    @staticmethod
    def encoded(node_name: str) -> str:
        return encode_name(node_name)

    def scan(self, workflow_name: str) -> Listing:
        """One listing of a workflow's entries (cheaper than a lookup per node)."""
        # Names that are not entries (".data", temporary files) never match an
        # entry name, so they can stay in ``files``.
        return Listing(self._listdir(self._wf_dir(workflow_name)))

    def protocols(self, workflow_name: str) -> dict:
        """The protocol handles serializers get for this workflow."""
        return {FILE_PROTOCOL: FileProtocol(self.fs, self._join(encode_name(workflow_name), SIDE_DATA))}

    def save(
        self, workflow_name: str, node_name: str, key: str, value: Any, meta: dict, *, overwrite: bool = False
    ) -> str:
        """Serialize and publish ``value``; returns the entry's file name.

        ``overwrite`` atomically replaces an existing entry with the same key
        (forced or corrupt entries); its side data is removed afterwards.
        Raises SerializationError (naming the node) when ``value`` cannot be
        serialized; nothing is written then and nothing stored is touched.
        Raises StorageError (naming the node, and what :meth:`_failure` says
        about the storage) when the storage itself fails; no entry is
        published then.
        """
        try:
            payload, pids = pickling.dumps(value, self.registry, lambda: self.protocols(workflow_name))
        except Exception as exc:  # any failure of user __reduce__ / serializers: name the node
            failure = self._failure(exc, "writing side data of", self._wf_dir(workflow_name))
            if failure is not None:  # the storage failed, not the value
                named = _naming_node(failure, workflow_name, node_name)
                if named is exc:
                    raise
                raise named from exc
            raise SerializationError(
                f"the result of node {node_name!r} (a {type(value).__module__}.{type(value).__qualname__}) "
                f"cannot be serialized: {type(exc).__name__}: {exc}. Register a persistent serializer "
                "for its type with storage.register_persistent_serializers(...), or keep the node out "
                "of storage with workflow.log_nodes(pattern)."
            ) from exc
        meta["node"] = node_name
        meta["key"] = key
        meta["created"] = utc_now_iso()
        if pids:
            meta["persistent"] = sorted({p[0] for p in pids})
            meta["persistent_versions"] = {
                p[0]: str(getattr(self.registry.by_name(p[0]), "version", "")) for p in pids
            }
        data = entry_format.pack(meta, pids, payload, self._constant_meta(workflow_name))
        folder = self._wf_dir(workflow_name)
        name = self.entry_name(node_name, key)
        # Side data (written above, by the serializers) is complete before the
        # entry is published: the entry is the commit marker.
        try:
            if folder not in self._made_dirs:
                self._ensure_dir(folder)
                self._made_dirs.add(folder)
            old_pids: list = []
            if overwrite:
                try:
                    old_pids = self._head(self._entry_path(workflow_name, name))[1]
                except (EntryNotFoundError, CorruptEntryError):
                    old_pids = []
            published = self._publish(folder, name, data, overwrite)
        except StorageError as exc:
            if pids:
                # Not removed: a publish that failed on our side may still have
                # succeeded on the server, and then the entry needs them.
                # Unreferenced side data is only wasted space.
                logger.warning(
                    "node %r: side data %s written but its entry was not published", node_name, pids
                )
            named = _naming_node(exc, workflow_name, node_name)
            if named is exc:
                raise
            raise named from exc
        if published:
            self._remove_side_data(workflow_name, old_pids, name)
        else:
            logger.debug("entry %s already present (another writer); keeping it", name)
            # Our side data is not referenced by the entry that won.
            self._remove_side_data(workflow_name, pids, name)
        return name

    def _constant_meta(self, workflow_name: str) -> bytes:
        """JSON members every entry of a workflow shares, encoded once."""
        versions = library_versions()
        cache_key = (workflow_name, id(versions))
        cached = self._const_meta.get(cache_key)
        if cached is None:
            members = {"workflow": workflow_name, "serializer": "cloudpickle", "versions": versions}
            cached = json.dumps(members, separators=(",", ":"))[1:-1].encode()
            self._const_meta[cache_key] = cached
        return cached

    def _remove_side_data(self, workflow_name: str, pids: list, where: str) -> None:
        """Delete side data no entry references any more; never fails a run."""
        if not pids:
            return
        try:
            pickling.remove_pids(pids, self.registry, self.protocols(workflow_name))
        except Exception as exc:  # noqa: BLE001 - cleanup never fails a run
            logger.warning("side data of %s left in place (remove it with storage.remove_task): %s", where, exc)

    def load(self, workflow_name: str, filename: str) -> Any:
        """Load and verify one entry.

        Raises EntryNotFoundError, CorruptEntryError or SerializationError.
        """
        path = self._entry_path(workflow_name, filename)
        try:
            data = self._read(path)
        except FileNotFoundError:
            raise EntryNotFoundError(f"no entry {path}") from None
        ent = entry_format.unpack(data, path)
        persistent = bool(ent.pids)
        try:
            if not persistent:
                return _pickle_loads(ent.payload)  # pickling.loads without a frame
            return pickling.loads(
                ent.payload,
                self.registry,
                self.protocols(workflow_name) if persistent else None,
                persistent=persistent,
            )
        except (SerializationError, StorageError):
            raise
        except (pickling.pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError, ValueError) as exc:
            raise SerializationError(f"{path}: cannot load the result: {exc!r}") from exc
        except Exception as exc:
            failure = self._failure(exc, "reading side data of", path)
            if failure is None:
                raise
            raise failure from exc

    def read_meta(self, workflow_name: str, filename: str) -> dict:
        """Metadata of one entry, read from its first bytes only."""
        return self._head(self._entry_path(workflow_name, filename))[0]

    def _head(self, path: str) -> tuple[dict, list]:
        try:
            head = self._read_head(path, 4096)
            meta, pids, need = entry_format.read_meta_and_pids(head, path)
            if need:
                meta, pids, _ = entry_format.read_meta_and_pids(self._read_head(path, need), path)
        except FileNotFoundError:
            raise EntryNotFoundError(f"no entry {path}") from None
        return meta, pids

    def discard(self, workflow_name: str, filenames: list[str]) -> None:
        """Delete entries and their side data (entry first: never a dangling entry)."""
        for filename in filenames:
            path = self._entry_path(workflow_name, filename)
            try:
                _meta, pids = self._head(path)
            except (EntryNotFoundError, CorruptEntryError):
                pids = []
            self._delete(path)
            self._remove_side_data(workflow_name, pids, path)

    # -- helpers ---------------------------------------------------------------
    def _named_files(self, workflow_name: str) -> list[tuple[str, str]]:
        out = []
        for enc, files in self.scan(workflow_name).by_name.items():
            if is_shortened(enc):
                for f in files:
                    try:
                        out.append((self.read_meta(workflow_name, f)["node"], f))
                    except (EntryNotFoundError, CorruptEntryError, KeyError):
                        continue
            else:
                name = decode_name(enc)
                out.extend((name, f) for f in files)
        return out

    def _names(self, workflow_name: str) -> list[str]:
        return [name for name, _ in self._named_files(workflow_name)]

    def _latest(self, workflow_name: str, task_name: str) -> str:
        if not isinstance(task_name, str):
            raise EntryNotFoundError(f"task names are strings, got {task_name!r}")
        enc = encode_name(task_name)
        files = self.scan(workflow_name).by_name.get(enc, [])
        if is_shortened(enc):
            files = [f for f in files if self._meta_or_none(workflow_name, f).get("node") == task_name]
        if not files:
            raise EntryNotFoundError(
                f"workflow {workflow_name!r} has no stored node {task_name!r} in {self!r}"
            )
        if len(files) == 1:
            return files[0]
        return max(files, key=lambda f: self._meta_or_none(workflow_name, f).get("created", ""))

    def _meta_or_none(self, workflow_name: str, filename: str) -> dict:
        try:
            return self.read_meta(workflow_name, filename)
        except (EntryNotFoundError, CorruptEntryError):
            return {}
