"""Persistent serializers inside store v2 results (the ``serializer`` part format).

A *persistent serializer* (see :mod:`.base`) stores objects of one type its own
way: ``DaskArraySerializer`` writes a dask array chunk by chunk to HDF5 (file
storage) or zarr (S3).  In store v2 such an object is found part by part like
any other leaf:

* an object a serializer takes becomes a part of format ``serializer``.  The
  serializer writes its side data into the folder ``side/<workflow>/`` of the
  storage (recorded in the part's ``info["side"]``, so any workflow that finds
  the manifest reads it from there) and returns a persistent id; the part's
  object is the JSON document ``{"serializer": name, "pid": pid}``.  A pid
  that is not plain JSON is kept as ``{"serializer": name, "pickled_pid":
  "<base64 cloudpickle>"}`` (never read in safe mode);
* inside a pickled leaf (a dask array held by a user's object) the pickle
  part is written with a pickler that hands such objects to their
  serializer, and the part's ``info["persistent"]`` lists ``[name, pid]`` for
  each (``pid`` ``null`` when it is not plain JSON), so side data can be found
  and removed without unpickling anything.

``DaskArraySerializer`` is used by default for ``dask.array.Array`` (it is
matched by the type's module name: dask is not imported to look); serializers
registered on the storage come first.

The storage activates a :class:`Persistence` around a save or a load
(:func:`active`); the part codecs read it from a context variable.
"""

from __future__ import annotations

import base64
import contextvars
import io
import json
import logging
import pickle
import sys
from contextlib import contextmanager
from typing import IO, Any, Callable, Iterator

import cloudpickle

from ..errors import SerializationError

logger = logging.getLogger(__name__)

__all__ = [
    "SERIALIZER", "EntryOrigin", "Persistence", "active", "current", "decode", "default_serializer", "encode",
    "loading", "origin",
]

SERIALIZER = "serializer"
_DEFAULT_NAME = "DaskArraySerializer"
_current: contextvars.ContextVar[Persistence | None] = contextvars.ContextVar("ff_persistence", default=None)


def default_serializer(cls: type) -> Any | None:
    """The serializer used for ``cls`` when none is registered (dask arrays), or None."""
    if cls.__name__ == "Array" and cls.__module__ == "dask.array.core":
        from .daskarray import DaskArraySerializer

        return DaskArraySerializer
    return None


class Persistence:
    """Registered serializers plus the side-data folder of one storage.

    ``protocols(side)`` returns the protocol handles (see :mod:`.base`) of the
    side-data folder ``side`` (relative to the storage root); ``side`` is the
    folder new side data goes to.
    """

    def __init__(self, registry: Any, protocols: Callable[[str], dict], side: str, compression: Any = None) -> None:
        self.registry = registry
        self._protocols = protocols
        self.side = side
        #: The storage's compression (:class:`~functionfuse.storage.codecs.Compression` or None),
        #: offered to serializers as the ``compression`` attribute of every protocol handle.
        self.compression = compression
        self._made: dict[str, dict] = {}
        #: Safe mode: a persistent id that only pickle could hold is neither written nor read.
        self.safe = False
        #: ``(name, pid)`` of side data written through this object (see :meth:`undo`).
        self.written: list[tuple[str, Any]] = []

    def protocols(self, side: str | None = None) -> dict:
        side = self.side if side is None else side
        handles = self._made.get(side)
        if handles is None:
            handles = self._made[side] = self._protocols(side)
            for handle in handles.values():
                handle.compression = self.compression
        return handles

    def match(self, cls: type) -> Any | None:
        """The serializer for ``cls``: a registered one, else the default, else None."""
        found = self.registry.match(cls) if self.registry else None
        return found if found is not None else default_serializer(cls)

    def by_name(self, name: str) -> Any:
        if name == _DEFAULT_NAME and name not in self.registry.serializers:
            from .daskarray import DaskArraySerializer

            return DaskArraySerializer
        return self.registry.by_name(name)

    @property
    def matters(self) -> bool:
        """Whether a pickled leaf may hold an object a serializer takes."""
        return bool(self.registry) or "dask.array" in sys.modules

    def store(self, serializer: Any, obj: Any) -> tuple[str, Any]:
        """Let ``serializer`` store ``obj``; returns ``(name, pid)``."""
        pid = serializer.pickle(obj, self.protocols())
        if isinstance(pid, tuple) and len(pid) == 2 and pid[0] == serializer.name:
            pid = pid[1]
        self.written.append((serializer.name, pid))
        return serializer.name, pid

    def undo(self) -> None:
        """Delete the side data written through this object (a save that failed or lost
        the race to publish); failures are logged, never raised."""
        written, self.written = self.written, []
        for name, pid in written:
            try:
                self.remove(name, pid, self.side)
            except Exception as exc:  # noqa: BLE001 - leftovers are only space
                logger.warning("side data %r of serializer %r left in place: %s", pid, name, exc)

    def remove(self, name: str, pid: Any, side: str) -> None:
        self.by_name(name).remove(pid, self.protocols(side))


@contextmanager
def active(persistence: Persistence | None) -> Iterator[None]:
    """Make ``persistence`` the one the part codecs use, for a save or a load."""
    token = _current.set(persistence)
    try:
        yield
    finally:
        _current.reset(token)


def current() -> Persistence | None:
    return _current.get()


class EntryOrigin:
    """The stored entry a value is being loaded from, for side data read lazily.

    A serializer that returns a lazy object (a dask array over an HDF5 file or
    a zarr array) keeps the origin of the load (:func:`origin`), so that damage
    found only when the object is computed, often inside another node or after
    the run, is reported naming the node and the file, and the entry is
    withdrawn (:meth:`withdraw`) so that the next run recomputes it.  It is
    plain data (the storage's URL and options), so it pickles with the lazy
    object to Dask and Ray workers.
    """

    __slots__ = ("node", "workflow", "key", "url", "storage_options", "identity")

    def __init__(self, node: str | None, workflow: str | None, key: str, url: str,
                 storage_options: dict | None = None, identity: str = "") -> None:
        self.node = node
        self.workflow = workflow
        self.key = key
        self.url = url
        self.storage_options = dict(storage_options or {})
        #: The objects the loaded manifest names: a manifest replaced since is not withdrawn.
        self.identity = identity

    def __getstate__(self) -> tuple:
        return (self.node, self.workflow, self.key, self.url, self.storage_options, self.identity)

    def __setstate__(self, state: tuple) -> None:
        self.node, self.workflow, self.key, self.url, self.storage_options, self.identity = state

    def __repr__(self) -> str:
        return f"EntryOrigin({self.describe()})"

    def describe(self) -> str:
        """``node 'x' of workflow 'w' (key ...) in storage URL``."""
        who = f"node {self.node!r}" if self.node else "a node"
        if self.workflow:
            who += f" of workflow {self.workflow!r}"
        return f"{who} (key {self.key}) in storage {self.url}"

    def withdraw(self, damage: str) -> bool:
        """Delete the entry's manifest when it is still the one loaded; True when
        deleted.  ``damage`` says what is damaged (logged).  Never raises: the
        damage is reported by the caller whatever happens here."""
        try:
            from ..storage.results import ResultStore

            store = ResultStore.from_url(self.url, self.storage_options or None)
            return store.withdraw(self.key, self.identity, damage)
        except Exception as exc:  # noqa: BLE001 - reporting the damage matters more
            logger.warning("the damaged entry of %s could not be withdrawn (%s: %s); remove it with "
                           "storage.remove_task or `functionfuse rm`", self.describe(), type(exc).__name__, exc)
            return False


_origin: contextvars.ContextVar[EntryOrigin | None] = contextvars.ContextVar("ff_origin", default=None)


@contextmanager
def loading(origin: EntryOrigin | None) -> Iterator[None]:
    """Make ``origin`` the entry serializers are loading from (see :func:`origin`)."""
    token = _origin.set(origin)
    try:
        yield
    finally:
        _origin.reset(token)


def origin() -> EntryOrigin | None:
    """The entry being loaded, for serializers that read side data lazily; None outside a load."""
    return _origin.get()


def _required(what: str) -> Persistence:
    persistence = _current.get()
    if persistence is None:
        raise SerializationError(f"{what} needs the storage that wrote it (no persistent serializers active)")
    return persistence


def plain_json(value: Any) -> Any:
    """``value`` as plain JSON data (tuples become lists), or raise TypeError/ValueError."""
    return json.loads(json.dumps(value, allow_nan=False))


def encode(payload: tuple[Any, Any, Persistence], f: IO[bytes]) -> None:
    """Write a ``serializer`` part: the serializer stores the object, the part holds its id."""
    serializer, obj, persistence = payload
    name, pid = persistence.store(serializer, obj)
    try:
        doc: dict = {"serializer": name, "pid": plain_json(pid)}
    except (TypeError, ValueError):
        if persistence.safe:
            persistence.remove(name, pid, persistence.side)
            raise SerializationError(
                f"serializer {name!r} returned a persistent id that is not plain JSON ({type(pid).__name__}); "
                "safe mode stores no pickle: make the serializer return JSON data"
            ) from None
        doc = {"serializer": name, "pickled_pid": base64.b64encode(cloudpickle.dumps(pid, protocol=5)).decode()}
    f.write(json.dumps(doc, separators=(",", ":"), sort_keys=True).encode())


def read_pid(data: bytes, *, safe: bool) -> tuple[str, Any]:
    """``(serializer name, pid)`` from a ``serializer`` part's bytes."""
    doc = json.loads(bytes(data).decode("utf-8"))
    if not isinstance(doc, dict) or not isinstance(doc.get("serializer"), str):
        raise SerializationError("a serializer part names no serializer")
    if "pid" in doc:
        return doc["serializer"], doc["pid"]
    if safe:
        raise SerializationError(
            f"the persistent id of serializer {doc['serializer']!r} is pickled; safe mode does not unpickle"
        )
    import pickle

    return doc["serializer"], pickle.loads(base64.b64decode(doc["pickled_pid"]))


def decode(f: IO[bytes], info: dict) -> Any:
    """Read a ``serializer`` part: the serializer rebuilds the object from its side data."""
    persistence = _required(f"a result stored with serializer {info.get('serializer')!r}")
    name, pid = read_pid(f.read(), safe=persistence.safe)
    return persistence.by_name(name).unpickle(pid, persistence.protocols(info.get("side")))


class _Pickler(cloudpickle.Pickler):
    """cloudpickle, handing each object a serializer takes to it (its persistent id)."""

    def __init__(self, file: Any, persistence: Persistence) -> None:
        super().__init__(file, protocol=5)
        self._persistence = persistence
        self.pids: list[tuple[str, Any]] = []
        # persistent_id runs before pickle's memo: one object shared inside a
        # result is stored once.
        self._done: dict[int, tuple[Any, Any]] = {}

    def persistent_id(self, obj: Any) -> Any:  # noqa: D401 - pickle hook
        serializer = self._persistence.match(type(obj))
        if serializer is None:
            return None
        done = self._done.get(id(obj))
        if done is not None:
            return done[1]
        pid = serializer.pickle(obj, self._persistence.protocols())
        if not (isinstance(pid, tuple) and len(pid) == 2 and pid[0] == serializer.name):
            pid = (serializer.name, pid)
        self.pids.append(pid)
        self._done[id(obj)] = (obj, pid)
        return pid


class _Unpickler(pickle.Unpickler):
    """Rebuilds objects of persistent serializers from their ids (each id once)."""

    def __init__(self, file: Any, persistence: Persistence, protocols: dict) -> None:
        super().__init__(file)
        self._persistence = persistence
        self._protocols = protocols
        self._loaded: dict[bytes, Any] = {}

    def persistent_load(self, pid: Any) -> Any:
        ident = pickle.dumps(pid, protocol=5)
        if ident in self._loaded:
            return self._loaded[ident]
        name, payload = pid
        obj = self._persistence.by_name(name).unpickle(payload, self._protocols)
        self._loaded[ident] = obj
        return obj


def dumps(obj: Any, persistence: Persistence) -> tuple[bytes, list, dict]:
    """Pickle ``obj``, handing objects a serializer takes to it.

    Returns the pickle, the ``(name, pid)`` written, and the pickler's memo (id -> object).
    """
    buf = io.BytesIO()
    pickler = _Pickler(buf, persistence)
    try:
        pickler.dump(obj)
    finally:
        persistence.written.extend(pickler.pids)
    memo = {key: value[1] for key, value in pickler.memo.copy().items()}
    return buf.getvalue(), pickler.pids, memo


def loads(f: IO[bytes], info: dict) -> Any:
    """Unpickle a pickle part whose ``info`` lists persistent ids."""
    persistence = _required("a pickled result holding objects of persistent serializers")
    return _Unpickler(f, persistence, persistence.protocols(info.get("side"))).load()


def describe_pids(info: dict, pids: list, persistence: Persistence) -> None:
    """Record a pickle part's persistent ids in its ``info``: ``persistent``
    (``[[name, pid or None], ...]``), ``side`` and ``versions`` (name -> serializer version)."""
    out = []
    for name, pid in pids:
        try:
            out.append([name, plain_json(pid)])
        except (TypeError, ValueError):
            out.append([name, None])
    info["persistent"] = out
    info["side"] = persistence.side
    info["versions"] = {name: str(getattr(persistence.by_name(name), "version", "")) for name, _ in pids}
