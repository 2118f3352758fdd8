"""Storage: where node results live, in the store v2 layout (docs/format.md).

Every storage keeps the same layout under its root (a folder, an S3 prefix)::

    FFSTORE.json                 marks the root (format and version)
    objects/ab/cd/<blake3>       content-addressed data: one object per part of a result
    manifests/kk/<key>.json      one sealed JSON manifest per cache key
    runs/<workflow>/<run>.json   one sealed JSON record per run of a workflow
    side/<workflow>/...          side data of persistent serializers (HDF5, zarr)
    tmp/                         temporaries of writers

The policy is written once, here, on :class:`~.results.ResultStore`:

* a result is stored under its **cache key**, whatever node or workflow
  computed it: a key stored by one workflow is a hit for any other, and every
  key's result is kept (switching a parameter A → B → A hits);
* a workflow's **run records** say which key each node had.  The latest
  record also carries the keys of nodes that run did not touch (``others``),
  so one record is the workflow's whole current state: ``read_task``,
  ``read_task_meta`` and ``list_tasks`` read it, and planning takes its keys
  as present without asking the storage (they are checked when loaded);
* nothing is ever unpickled to list, plan, read metadata or remove:
  manifests and records are JSON.

Subclasses say where the root is (:meth:`Storage._object_store`) and how the
storage's errors read (:meth:`Storage._failure`).  A storage pickles as its
constructor arguments plus its registered serializers, so any worker process
can reopen it.
"""

from __future__ import annotations

import errno
import fnmatch
import logging
import platform
import socket
import sys
import time
from abc import ABC, abstractmethod
from typing import Any, Iterable

from ..errors import CorruptEntryError, EntryNotFoundError, SerializationError, StorageConfigError, StorageError
from ..serializers.base import FILE_PROTOCOL, FileProtocol
from ..serializers.parts import plain_tree
from ..serializers.registry import SerializerRegistry
from .names import encode_name

__all__ = ["Storage", "Listing", "library_versions", "STORED_ACTIONS", "INLINE_LIMIT"]

logger = logging.getLogger(__name__)

KEY_HEX = 32
SIDE = "side"

#: Run-record actions after which the node's key is stored.
STORED_ACTIONS = frozenset({"computed", "read", "skipped", "replayed"})
#: A result whose whole manifest tree (no parts) encodes to at most this many bytes is
#: also kept in the run records (``values``), so a cached rerun reads it from there.
INLINE_LIMIT = 512
#: At most this many such values per run record (at most 1 MiB of them).
INLINE_COUNT = (1 << 20) // INLINE_LIMIT

_TRACKED = ("numpy", "pandas", "pyarrow", "polars", "dask", "h5py", "zarr", "sklearn", "torch")
_VERSIONS: dict[tuple[str, ...], dict[str, str]] = {}
_HOST = socket.gethostname()


#: OS errors of a serializer writing side data that are the storage's, not the value's.
_STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EIO})


def library_versions() -> dict[str, str]:
    """Versions recorded in every manifest: Python, functionfuse, cloudpickle and
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


def iso_seconds(iso: Any) -> float | None:
    """Seconds since the epoch of a time as stored (:func:`utc_now_iso`, or with ``Z``); None if not one."""
    import datetime as dt

    try:
        return dt.datetime.fromisoformat(str(iso).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


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


def current_view(record: dict | None) -> dict[str, str]:
    """Node name -> key of the stored version a run record makes current.

    The nodes the run stored or found stored, plus the ``others`` it carried
    over from the run before (nodes it did not touch, or that failed in it).
    """
    if not record:
        return {}
    view: dict[str, str] = {}
    others = record.get("others")
    if isinstance(others, dict):
        view.update((n, k) for n, k in others.items() if isinstance(k, str))
    nodes = record.get("nodes", {})
    try:  # what a record as written holds
        view.update({name: entry["key"] for name, entry in nodes.items()
                     if entry["action"] in STORED_ACTIONS and type(entry["key"]) is str})
    except (TypeError, KeyError, AttributeError):  # an entry of another shape (hand-edited): skipped
        for name, entry in nodes.items():
            if (isinstance(entry, dict) and isinstance(entry.get("action"), str) and entry["action"] in STORED_ACTIONS
                    and isinstance(entry.get("key"), str)):
                view[name] = entry["key"]
    return view


class Listing:
    """What a run's plan needs from the storage: the workflow's current state.

    ``view`` maps node names to the key of their current stored version (see
    :func:`current_view`); ``record`` is the latest run record (None before
    the first run).  Picklable, so a storage working in another process (the
    ray kind) can return it.
    """

    def __init__(self, record: dict | None = None) -> None:
        self.record = record
        self.view = current_view(record)
        self.known = frozenset(self.view.values())
        ref = record.get("values") if record else None
        self._values_ref: dict | None = ref if isinstance(ref, dict) else None
        self._values: dict[str, Any] | None = None if self._values_ref else {}
        self._fetch: Any = None  # set by the storage that made the listing (not pickled)
        self._overwritten: Any = None  # the same: the keys written over (ResultStore.overwritten)
        self.loads = 0  # results loaded by the run planned from this listing
        self.loads_ahead = 0  # loads the executor knows are coming (the cached leaves it returns)
        #: The small-results object was read and found damaged or unreadable: the
        #: run's record must write it again rather than name it (see caching.record_run).
        self.values_damaged = False

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fetch"] = state["_overwritten"] = None
        return state

    @property
    def values_ref(self) -> dict | None:
        """The reference of the record's small-results object (None when it has none)."""
        return self._values_ref

    @property
    def values_unread(self) -> bool:
        """Whether :attr:`values` has not been read yet."""
        return self._values is None

    @property
    def values(self) -> dict[str, Any]:
        """key -> result tree of the small results the latest record names, read on first use
        (one object, checked by its size and XXH3); empty when it cannot be read."""
        if self._values is None:
            values: Any = {}
            if self._fetch is not None:
                try:
                    values = self._fetch(self._values_ref)
                except (StorageError, ValueError, TypeError, KeyError) as exc:
                    self.values_damaged = True
                    logger.warning("the small results of the latest run record are unusable (%s); "
                                   "reading their manifests instead", exc)
            values = values if isinstance(values, dict) else {}
            if values and self._overwritten is not None:
                # A key stored again since (by any workflow) may hold another result
                # than the copy the record carries: its manifest says which.
                try:
                    for key in self._overwritten():
                        values.pop(key, None)
                except StorageError as exc:
                    logger.warning("could not list the results written over (%s); reading the manifests "
                                   "of the small results instead of the run record's copies", exc)
                    values = {}
            self._values = values
        return self._values

    def previous(self, node_name: str) -> str | None:
        """The key of the node's current stored version, if any."""
        return self.view.get(node_name)


class Storage(ABC):
    """Base of every storage.  See the module docstring for the layout."""

    protocol_name = FILE_PROTOCOL

    def __init__(self) -> None:
        self.registry = SerializerRegistry()
        self._always_read = False
        self._safe = False
        self._compression: Any = None  # the option as given (see :mod:`.codecs`)
        self._lease: bool | float = False  # the "lease" option (see :mod:`.leases`)
        self._results: Any = None
        self._results_pid = 0
        self._readers: dict[str, Any] = {}  # workflow -> Persistence used to load
        self._sides: dict[str, str] = {}  # workflow -> its side-data folder

    # -- what subclasses provide ------------------------------------------------
    @property
    @abstractmethod
    def fs(self) -> Any:
        """The fsspec filesystem of the root."""

    @abstractmethod
    def _join(self, *parts: str) -> str:
        """Join path components below the root (a path on :attr:`fs`)."""

    @abstractmethod
    def _object_store(self) -> Any:
        """The :class:`~.objects.ObjectStore` at the root."""

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
        is.
        """
        return exc if isinstance(exc, StorageError) else None

    def _side_protocols(self, side: str) -> dict:
        """Protocol handles of the side-data folder ``side`` (relative to the root)."""
        return {FILE_PROTOCOL: FileProtocol(self.fs, self._join(*side.split("/")))}

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

    @property
    def results(self) -> Any:
        """The :class:`~.results.ResultStore` at the root (a new one after a fork)."""
        import os

        if self._results is None or self._results_pid != os.getpid():
            from .results import ResultStore

            self._results = ResultStore(self._object_store(), safe=self._safe, compression=self._compression)
            self._results_pid = os.getpid()
        return self._results

    # -- compatible API -------------------------------------------------------
    @property
    def always_read(self) -> bool:
        """Re-read each result right after saving it, so children get the
        stored form (for example a lazy dask array backed by HDF5)."""
        return self._always_read

    @always_read.setter
    def always_read(self, value: bool) -> None:
        self._always_read = bool(value)

    @property
    def safe(self) -> bool:
        """Safe mode: nothing is ever unpickled, nothing needing pickle is stored."""
        return self._safe

    @property
    def compression(self) -> Any:
        """The ``compression`` option (None, ``"zstd"``, ``"gzip"``, ``"lz4"`` or a preset dict)."""
        return self._compression

    @property
    def lease(self) -> bool | float:
        """The ``lease`` option: False, True or a time to live in seconds (see :attr:`lease_ttl`)."""
        return self._lease

    @property
    def lease_ttl(self) -> float | None:
        """Seconds a node lease lives without renewal, or None when runs take no leases
        (see :mod:`functionfuse.storage.leases`)."""
        if self._lease is False:
            return None
        from .leases import DEFAULT_TTL

        return DEFAULT_TTL if self._lease is True else float(self._lease)

    def _set_options(self, kind: str, safe: bool, compression: Any, lease: bool | float = False) -> None:
        """Check and keep the options every storage kind takes."""
        from .codecs import normalize
        from .factory import check_option

        check_option(kind, "safe", safe)  # only True/False: "no" is truthy
        if lease is not False:
            check_option(kind, "lease", lease)
        if not isinstance(lease, bool) and not (lease > 0 and lease != float("inf")):
            raise StorageConfigError(
                f"option 'lease' of storage kind {kind!r} must be True, False or a time to live in seconds > 0, "
                f"got {lease!r}; e.g. {{'lease': 60}}"
            )
        normalize(compression)  # a clear error now rather than at the first save
        self._safe = safe
        self._compression = compression
        self._lease = lease

    def _option_kwargs(self) -> dict:
        """``safe``, ``compression`` and ``lease`` for :meth:`_constructor_args`, when not the defaults."""
        kwargs: dict = {}
        if self._safe:
            kwargs["safe"] = True
        if self._compression is not None:
            kwargs["compression"] = self._compression
        if self._lease is not False:
            kwargs["lease"] = self._lease
        return kwargs

    def register_persistent_serializers(self, *serializers: Any) -> None:
        """Register serializers for types found anywhere inside results."""
        self.registry.register(*serializers)

    def new_workflow(self, workflow_name: str) -> None:
        """Check the workflow name (the original package's hook; nothing to create)."""
        _check_workflow(workflow_name)

    def list_tasks(self, workflow_name: str, pattern: str = "*") -> list[str]:
        """Names of the stored nodes of a workflow matching a glob ``pattern``, sorted.

        The nodes of the workflow's current state: those its latest run
        stored or found stored, and those earlier runs stored that it did not
        touch.
        """
        view = self.scan(workflow_name).view
        return sorted(n for n in view if fnmatch.fnmatchcase(n, pattern))

    def read_task(self, workflow_name: str, task_name: str) -> Any:
        """The stored result of node ``task_name``: the version of the workflow's latest run.

        Raises
        ------
        EntryNotFoundError
            (a FileNotFoundError) when nothing is stored under that name.
        CorruptEntryError
            When the result fails its integrity check.
        """
        return self.load(workflow_name, self._current_key(workflow_name, task_name))

    def read_task_meta(self, workflow_name: str, task_name: str) -> dict:
        """Metadata of node ``task_name``'s current version (its manifest), without loading it."""
        return self.read_meta(workflow_name, self._current_key(workflow_name, task_name))

    def remove_task(self, workflow_name: str, task_name: str | None = None, pattern: str | None = None) -> list[str]:
        """Remove stored results by node name or glob pattern; returns the names removed.

        The nodes leave the workflow's current state (a record of the removal
        is written), and their results are deleted unless another workflow's
        current state uses the same key.  A ``task_name`` with no stored
        result raises :class:`EntryNotFoundError`; a pattern matching nothing
        removes nothing.
        """
        if pattern is None and task_name is None:
            raise StorageError("remove_task needs task_name=... or pattern=...")
        listing = self.scan(workflow_name)
        if pattern is not None:
            wanted = sorted(n for n in listing.view if fnmatch.fnmatchcase(n, pattern))
        else:
            if task_name not in listing.view:
                raise EntryNotFoundError(f"workflow {workflow_name!r} has no stored node {task_name!r}")
            wanted = [task_name]  # type: ignore[list-item]
        if wanted:
            self._forget(workflow_name, listing, wanted)
        return wanted

    def remove_workflow(self, workflow_name: str) -> None:
        """Remove everything stored for a workflow (a missing one is not an error)."""
        listing = self.scan(workflow_name)
        if listing.view:
            self._forget(workflow_name, listing, sorted(listing.view))
        self.results.remove_runs(workflow_name)

    # -- what the caching core uses ---------------------------------------------
    @staticmethod
    def entry_name(node_name: str, key: str) -> str:
        """The identifier of the stored result of ``node_name`` with cache ``key``: the key."""
        return key

    def scan(self, workflow_name: str) -> Listing:
        """The workflow's current state, from its latest run record (one listing, one read)."""
        _check_workflow(workflow_name)
        try:
            record = self.results.latest_run(workflow_name)
        except CorruptEntryError as exc:
            logger.warning("workflow %r: latest run record unusable (%s); planning without it", workflow_name, exc)
            record = None
        listing = Listing(record)
        listing._fetch = self._fetch_values
        listing._overwritten = self.results.overwritten
        return listing

    def _fetch_values(self, ref: dict) -> Any:
        """The small results a run record names (see :class:`Listing`)."""
        from .manifests import parse_json
        from .objects import ObjectRef

        return parse_json(self.results.objects.get_bytes(ObjectRef.from_json(ref)), "the small results object")

    #: Whether a run of the local executor packs the small results it saves here
    #: (docs/format.md, "Packs"): storages whose saves run in this process.
    packs_small_results = True

    def present(self, keys: Iterable[str]) -> set[str]:
        """The keys among ``keys`` whose result is stored (one ``stat`` or ``HEAD`` each, batched)."""
        return self.results.present(keys)

    def save(
        self, workflow_name: str, node_name: str, key: str, value: Any, meta: dict, *, overwrite: bool = False,
        digest: bool = False,
    ) -> str:
        """Store ``value`` as the result of cache ``key``; returns the key.

        ``meta`` (function, arguments, inputs ...) is completed with the node,
        workflow, time, host and library versions and written into the
        manifest.  ``overwrite`` writes every object and the manifest again
        (over a damaged copy).  ``meta["published"]`` tells whether this call published
        the result (False: another writer stored the key first, and the store holds its
        result).  ``digest`` adds the stored result's content digest to ``meta`` as
        ``meta["content"]`` (see :mod:`functionfuse.cutoff`).  Raises
        SerializationError (naming the node) when ``value`` cannot be serialized
        (nothing is published then), and StorageError (naming the node) when the
        storage fails.
        """
        meta["node"] = node_name
        meta["workflow"] = workflow_name
        meta["key"] = key
        meta["created"] = utc_now_iso()
        meta["host"] = _HOST
        meta["versions"] = library_versions()
        try:
            tree = plain_tree(value)
            if tree is not None:  # the usual small result: no serializers to set up
                manifest = self.results.save_plain(key, tree, meta, replace=overwrite)
            else:
                manifest = self.results.save(
                    key, value, meta, replace=overwrite, persistence=self._persistence(workflow_name)
                )
        except SerializationError as exc:
            raise SerializationError(
                f"the result of node {node_name!r} (a {type(value).__module__}.{type(value).__qualname__}) "
                f"cannot be stored: {exc}. " + _FIX
            ) from exc
        except StorageError as exc:
            named = _naming_node(exc, workflow_name, node_name)
            if named is exc:
                raise
            raise named from exc
        except Exception as exc:  # a serializer or user __reduce__ failing
            failure = self._failure(exc, "writing", self._join("objects"))
            if failure is not None:
                raise _naming_node(failure, workflow_name, node_name) from exc
            if isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS:  # side data could not be written
                from .objects import _ADVICE

                raise StorageError(
                    f"node {node_name!r} of workflow {workflow_name!r}: result not stored: writing its side "
                    f"data in storage {self!r} failed: {exc}{_ADVICE.get(exc.errno, '')}"
                ) from exc
            raise SerializationError(
                f"the result of node {node_name!r} (a {type(value).__module__}.{type(value).__qualname__}) "
                f"cannot be serialized: {type(exc).__name__}: {exc}. " + _FIX
            ) from exc
        if manifest["parts"]:
            persistent = _serializers_of(manifest)
            if persistent:
                meta["persistent"] = list(persistent)
                meta["persistent_versions"] = persistent
        else:
            tree = small_tree(manifest)
            if tree is not None:
                meta["inline"] = tree  # for the run record (see Listing.values)
        # Another writer may have published the key first: the store holds its result.
        meta["published"] = manifest.get("created") == meta["created"] and manifest.get("host") == meta["host"]
        if digest:  # a consumer's early cutoff compares it (see functionfuse.cutoff)
            from ..cutoff import content_digest

            meta["content"] = content_digest(manifest)
        return key

    def load(self, workflow_name: str, key: str, *, with_tree: bool = False) -> Any:
        """Load and verify the result stored for ``key``.

        With ``with_tree``, returns ``(value, tree)`` where ``tree`` is the
        manifest's result tree when the result is small enough to be kept in
        run records (see :data:`INLINE_LIMIT`), else None.

        Raises EntryNotFoundError, CorruptEntryError or SerializationError.
        """
        persistence = self._readers.get(workflow_name)
        if persistence is None:
            persistence = self._readers[workflow_name] = self._persistence(workflow_name)
        try:
            if with_tree:
                manifest = self.results.read_manifest(key)
                tree = small_tree(manifest)
                if tree is not None:  # handed out copied: the tree stays intact for the record
                    return self.results.load(key, manifest, persistence=persistence), tree
                return self.results.load(key, manifest, persistence=persistence, fresh=True), None
            return self.results.load(key, persistence=persistence)
        except (StorageError, SerializationError):
            raise
        except Exception as exc:  # side data read by a serializer
            failure = self._failure(exc, "reading side data of", key)
            if failure is None:
                raise
            raise failure from exc

    def alias(
        self, workflow_name: str, node_name: str, key: str, stored: str, meta: dict, *, manifest: dict | None = None
    ) -> dict:
        """Publish the result stored for key ``stored`` as the result of ``key``, without
        copying data (early cutoff, see :mod:`functionfuse.cutoff`); ``meta`` replaces the
        informative members it names.  ``manifest``: ``stored``'s manifest, when it was
        just read (from :meth:`read_meta`).  Returns the manifest of ``key`` (another
        writer's, when it published ``key`` first).  Raises EntryNotFoundError or
        CorruptEntryError when ``stored`` is gone or damaged, StorageError (naming the node)
        when the storage fails."""
        meta = {**meta, "node": node_name, "workflow": workflow_name, "created": utc_now_iso(), "host": _HOST}
        try:
            return self.results.alias(key, stored, meta, manifest=manifest)
        except StorageError as exc:
            named = _naming_node(exc, workflow_name, node_name)
            if named is exc:
                raise
            raise named from exc

    def read_meta(self, workflow_name: str, key: str) -> dict:
        """The manifest of ``key`` (node, function, arguments, inputs, parts ...), never unpickled."""
        doc = self.results.read_manifest(key)
        persistent = _serializers_of(doc)
        if persistent:
            doc["persistent"] = list(persistent)
            doc["persistent_versions"] = persistent
        return doc

    def record_run(
        self, workflow_name: str, run_id: str, nodes: dict[str, dict], *, listing: Listing | None = None,
        others: dict[str, str] | None = None, **fields: Any,
    ) -> str:
        """Write the record of one run; ``listing`` (the plan's) supplies the nodes carried over,
        unless the caller knows them (``others``: name -> key).

        ``values`` (key -> tree of small results) is stored as one object the record
        names; ``values_ref`` names an object already stored instead (the last record's).
        """
        if others is None:
            view = listing.view if listing is not None else {}
            others = {
                name: key for name, key in view.items()
                if name not in nodes or nodes[name].get("action") not in STORED_ACTIONS
            }
        extra = dict(fields.pop("extra", None) or {})
        extra["others"] = others
        values = fields.pop("values", None)
        values_ref = fields.pop("values_ref", None)
        # The last record's object was found damaged: written again even when this
        # run's small results hash to it (content addressing would keep the damage).
        values_replace = bool(fields.pop("values_replace", False))
        if values_ref is not None:
            extra["values"] = values_ref  # the last record's object, named again as it is
        elif values:
            # One content-addressed JSON object: the same values as the last run's are
            # not written again (a hash and a stat).
            from .manifests import fast_canonical_json

            extra["values"] = self.results.objects.put_bytes(
                fast_canonical_json(values), replace=values_replace
            ).to_json()
        return self.results.record_run(workflow_name, run_id, nodes, extra=extra, **fields)

    def begin_run(self, workflow_name: str, run_id: str, *, base: str | None, keys: list[str]) -> None:
        """Write the lease of a run that starts: ``gc`` keeps the record ``base`` (the one
        the run was planned from) and ``keys`` while the lease lives (docs/cli.md)."""
        self.results.begin_run(workflow_name, run_id, base=base, keys=keys)

    def end_run(self, workflow_name: str, run_id: str) -> None:
        """Remove a run's lease once its record is written (or the run gave up)."""
        self.results.end_run(workflow_name, run_id)

    def _persistence(self, workflow_name: str) -> Any:
        from ..serializers.persistent import Persistence

        side = self._sides.get(workflow_name)
        if side is None:
            side = self._sides[workflow_name] = f"{SIDE}/{encode_name(workflow_name)}"
        persistence = Persistence(self.registry, self._side_protocols, side, self.results.compression)
        persistence.safe = self._safe
        return persistence

    # -- helpers ---------------------------------------------------------------
    def _current_key(self, workflow_name: str, task_name: str) -> str:
        if not isinstance(task_name, str):
            raise EntryNotFoundError(f"task names are strings, got {task_name!r}")
        key = self.scan(workflow_name).previous(task_name)
        if key is None:
            raise EntryNotFoundError(f"workflow {workflow_name!r} has no stored node {task_name!r} in {self!r}")
        return key

    def _forget(self, workflow_name: str, listing: Listing, names: list[str]) -> None:
        """Drop ``names`` from the workflow's current state and delete what nothing else uses."""
        from .runs import new_run_id

        keys = {listing.view[n] for n in names}
        now = utc_now_iso()
        kept = {n: k for n, k in listing.view.items() if n not in set(names)}
        self.results.record_run(
            workflow_name, new_run_id(), {}, started=now, finished=now, outcome="removed",
            executor="remove_task", extra={"others": kept, "removed": names},
        )
        in_use = self.results.keys_in_use(exclude=workflow_name) | set(kept.values())
        self.results.remove_keys(keys - in_use, persistence=self._persistence(workflow_name))


_FIX = (
    "Register a persistent serializer for its type with storage.register_persistent_serializers(...), "
    "or keep the node out of storage with workflow.log_nodes(pattern)."
)


def _serializers_of(manifest: dict) -> dict[str, str]:
    """Persistent serializers a manifest's parts use: name -> version."""
    found: dict[str, str] = {}
    for part in manifest.get("parts", ()):
        info = part.get("info") or {}
        if part.get("format") == "serializer" and isinstance(info.get("serializer"), str):
            found[info["serializer"]] = str(info.get("version", ""))
        versions = info.get("versions") if isinstance(info.get("versions"), dict) else {}
        for entry in info.get("persistent") or ():
            if isinstance(entry, list) and entry and isinstance(entry[0], str):
                found[entry[0]] = str(versions.get(entry[0], ""))
    return dict(sorted(found.items()))


def small_tree(manifest: dict) -> Any:
    """The result tree of a manifest without parts whose JSON is at most
    :data:`INLINE_LIMIT` bytes, else None."""
    if manifest.get("parts"):
        return None
    tree = manifest.get("result")
    try:
        import orjson  # not at module level: `import functionfuse` stays light

        size = len(orjson.dumps(tree))
    except TypeError:  # integers beyond 64 bits: not worth a record's space
        return None
    return tree if size <= INLINE_LIMIT else None


def _check_workflow(workflow_name: Any) -> None:
    if not isinstance(workflow_name, str) or not workflow_name:
        raise StorageError(f"workflow names must be non-empty strings, got {workflow_name!r}")
