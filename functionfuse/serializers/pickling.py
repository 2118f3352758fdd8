"""Pickling with persistent serializers; cloudpickle is the fallback for all else.

Without registered serializers a result is ``cloudpickle.dumps``-ed (by value
for functions and classes defined in ``__main__``, so any worker can load it)
and loaded with ``pickle.loads``.  Plain data (builtin scalars in exact dicts,
lists, tuples and sets) goes through a reused standard pickler instead, which
writes the very bytes cloudpickle would, faster.  With serializers, a cloudpickle Pickler
subclass asks the registry for every object it meets, and an object a
serializer takes is replaced by its persistent id.  The ids are also returned
separately, so the storage can record them outside the payload and delete
their side data without unpickling the result.
"""

from __future__ import annotations

import io
import logging
import pickle
import threading
from typing import Any, Callable

import cloudpickle

from ..errors import SerializationError
from .registry import SerializerRegistry

__all__ = ["dumps", "loads", "remove_pids", "PICKLE_PROTOCOL"]

PICKLE_PROTOCOL = 5

logger = logging.getLogger(__name__)


class _PersistentPickler(cloudpickle.Pickler):
    def __init__(self, file: Any, registry: SerializerRegistry, protocols: Callable[[], dict]):
        super().__init__(file, protocol=PICKLE_PROTOCOL)
        self._registry = registry
        self._protocols_factory = protocols
        self._protocols: dict | None = None
        self.pids: list[tuple[str, Any]] = []
        # persistent_id runs before pickle's memo: remember objects already
        # stored so one object shared inside a result is stored once.
        self._done: dict[int, tuple[Any, Any]] = {}

    def persistent_id(self, obj: Any) -> Any:  # noqa: D401 - pickle hook
        serializer = self._registry.match(type(obj))
        if serializer is None:
            return None
        done = self._done.get(id(obj))
        if done is not None:
            return done[1]
        if self._protocols is None:
            self._protocols = self._protocols_factory()
        pid = serializer.pickle(obj, self._protocols)
        if not (isinstance(pid, tuple) and len(pid) == 2 and pid[0] == serializer.name):
            pid = (serializer.name, pid)
        self.pids.append(pid)
        self._done[id(obj)] = (obj, pid)
        return pid


class _NotPlain(Exception):
    pass


class _PlainPickler(pickle.Pickler):
    """A standard pickler that refuses anything but plain data.

    The C pickler writes None, bools, ints, floats, str, bytes, bytearrays and
    exact dicts, lists, tuples, sets and frozensets itself; for every other
    object (instances, functions, classes, subclasses of those types) it asks
    ``reducer_override`` first, which raises here.  cloudpickle's pickler is
    the same C pickler (same protocol, no buffer callback) and only differs
    in its ``reducer_override`` and dispatch table, which are never consulted
    for plain data either: whenever this pickler succeeds, its bytes are
    exactly ``cloudpickle.dumps``'s, so entries still say "cloudpickle".
    """

    def reducer_override(self, obj: Any) -> Any:
        raise _NotPlain


_PLAIN_LIMIT = 1 << 20


class _Sink:
    """Collects the plain pickler's output, up to ``_PLAIN_LIMIT`` bytes.

    A larger result goes to cloudpickle from the start: a large plain part
    followed by something else would otherwise be pickled twice.  (The C
    pickler writes here at the end of a small dump, every 64 KiB frame of a
    larger one, and a large bytes object at once.)
    """

    __slots__ = ("parts", "size")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def write(self, data: Any) -> int:
        size = self.size + len(data)
        if size > _PLAIN_LIMIT:
            raise _NotPlain
        self.size = size
        self.parts.append(data if type(data) is bytes else bytes(data))
        return len(data)


class _PlainState(threading.local):
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sink = _Sink()
        self.pickler = _PlainPickler(self.sink, protocol=PICKLE_PROTOCOL)


_plain = _PlainState()


def _plain_dumps(obj: Any) -> bytes | None:
    """``cloudpickle.dumps(obj)`` when ``obj`` is plain data (see _PlainPickler)
    of at most ``_PLAIN_LIMIT`` bytes, else None.

    One pickler per thread is reused: creating one costs more than pickling a
    small result.
    """
    state = _plain
    try:
        state.pickler.dump(obj)
    except Exception:
        # Not plain, too large (or recursion, a dict changed size ...):
        # cloudpickle has the last word, and the next dump starts afresh.
        state.reset()
        return None
    except BaseException:
        state.reset()
        raise
    sink = state.sink
    parts = sink.parts
    data = parts[0] if len(parts) == 1 else b"".join(parts)
    sink.parts = []
    sink.size = 0
    state.pickler.clear_memo()
    return data


class _PersistentUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, registry: SerializerRegistry, protocols: dict):
        super().__init__(file)
        self._registry = registry
        self._protocols = protocols
        self._loaded: dict[bytes, Any] = {}

    def persistent_load(self, pid: Any) -> Any:
        # The same id twice means one shared object: load it once.
        ident = pickle.dumps(pid, protocol=PICKLE_PROTOCOL)
        if ident in self._loaded:
            return self._loaded[ident]
        name, payload = pid
        obj = self._registry.by_name(name).unpickle(payload, self._protocols)
        self._loaded[ident] = obj
        return obj


def dumps(
    obj: Any, registry: SerializerRegistry | None = None, protocols: Callable[[], dict] | None = None
) -> tuple[bytes, list[tuple[str, Any]]]:
    """Serialize ``obj``; returns the payload and the persistent ids written.

    ``protocols`` is called at most once, when a serializer first needs it.
    Pickling errors propagate unchanged; the caller names the node.
    """
    if not registry:
        data = _plain_dumps(obj)
        if data is None:
            data = cloudpickle.dumps(obj, protocol=PICKLE_PROTOCOL)
        return data, []
    buffer = io.BytesIO()
    pickler = _PersistentPickler(buffer, registry, protocols or dict)
    try:
        pickler.dump(obj)
    except BaseException:
        # Side data already written for this result is referenced by nothing.
        if pickler.pids:
            try:
                remove_pids(pickler.pids, registry, pickler._protocols or {})
            except Exception:  # noqa: BLE001 - cleanup must not hide the real error
                logger.warning("could not remove side data of a failed save: %s", pickler.pids)
        raise
    return buffer.getvalue(), pickler.pids


def loads(
    payload: bytes | memoryview, registry: SerializerRegistry | None = None, protocols: dict | None = None,
    *, persistent: bool = False,
) -> Any:
    """Inverse of :func:`dumps`; ``persistent`` says whether ids are present."""
    if not persistent:
        return pickle.loads(payload)
    if registry is None:
        raise SerializationError("the entry uses persistent serializers, but none are registered")
    return _PersistentUnpickler(io.BytesIO(payload), registry, protocols or {}).load()


def remove_pids(pids: list[tuple[str, Any]], registry: SerializerRegistry, protocols: dict) -> None:
    """Delete the side data behind persistent ids."""
    for name, payload in pids:
        registry.by_name(name).remove(payload, protocols)
