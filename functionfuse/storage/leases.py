"""Node leases: concurrent runs on one storage compute each node once.

With the storage option ``"lease": True`` (or a number of seconds, the lease's
time to live; ``True`` means :data:`DEFAULT_TTL`), a run about to compute a node
first takes the node's *lease*, a small JSON document at ``leases/<key>.json``
published create-if-absent (``link()`` on a disk, ``If-None-Match: *`` on S3:
exactly one writer wins, on one host or many).  The run that holds it computes
and stores the node, renewing the lease every third of its time to live while
the node runs, then deletes it.  A run that finds the lease taken waits (the
wait is logged, and shown by the progress display): as soon as the result is
stored it reads it instead of computing it; when the lease expires (its holder
was killed: not renewed for a whole time to live, or its process is gone on
this host), the waiter deletes it and takes it itself.

Why no deadlock: a run holds a lease only while it computes that node, and a
node is computed only once its inputs are there; a run never waits while
holding a lease (the local executor computes one node at a time; the pool
waits in threads that hold nothing; a Dask or Ray worker waits before it
computes).  So a wait never closes a cycle: every holder is computing, and
finishes (or dies, and its lease expires).

The document holds ``format`` ``"functionfuse-node-lease"``, ``key``, ``workflow``,
``node``, ``run`` (the run id), ``host``, ``pid``, ``token`` (random, told apart
from a lease taken again since), ``ttl`` (seconds), ``acquired`` and ``renewed``
(UTC ISO 8601).  Expiry is judged by the waiter's clock against ``renewed``:
hosts sharing an S3 store need clocks within a fraction of the time to live.
See docs/format.md ("Node leases").
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from contextlib import suppress
from typing import Any, Callable

from ..errors import CorruptEntryError, EntryNotFoundError, StorageError
from .base import iso_seconds, utc_now_iso

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_TTL", "NodeLease", "WaitStopped", "acquire", "lease_path", "stale"]

#: Time to live of a lease, in seconds, for ``"lease": True``.
DEFAULT_TTL = 60.0
FORMAT = "functionfuse-node-lease"
LEASES = "leases"
_POLL_FIRST, _POLL_MAX = 0.02, 1.0


def lease_path(key: str) -> str:
    """Where the lease of ``key`` lives, relative to the store's root."""
    return f"{LEASES}/{key}.json"


class WaitStopped(Exception):
    """A wait for a node lease ended because the run stops."""


class NodeLease:
    """A lease held by this process: renewed in a thread until :meth:`release`."""

    def __init__(self, results: Any, key: str, doc: dict[str, Any]) -> None:
        self.results = results
        self.key = key
        self.doc = doc
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name=f"functionfuse-lease-{key[:8]}", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        every = max(0.05, float(self.doc["ttl"]) / 3)
        while not self._stop.wait(every):
            self.doc["renewed"] = utc_now_iso()
            try:
                held = _read(self.results, self.key)
                if held is not None and held.get("token") != self.doc["token"]:
                    logger.warning("the lease of key %s was taken by run %s while this run held it (it was "
                                   "not renewed in time); both compute the same node", self.key, held.get("run"))
                    return
                self.results._publish(lease_path(self.key), _encode(self.doc), replace=True)
            except Exception as exc:  # noqa: BLE001 - a renewal missed is retried; the node goes on
                logger.warning("renewing the lease of key %s failed: %s", self.key, exc)

    def release(self) -> None:
        """Stop renewing and delete the lease (when it is still this one)."""
        self._stop.set()
        self._thread.join()
        try:
            _delete_if(self.results, self.key, self.doc["token"])
        except Exception as exc:  # noqa: BLE001 - it expires by itself
            logger.warning("the lease of key %s was not deleted (%s); it expires after %s s",
                           self.key, exc, self.doc["ttl"])


def acquire(
    results: Any, key: str, *, ttl: float, workflow: str, node: str, run_id: str | None,
    stored: Callable[[], bool], on_wait: Callable[[dict[str, Any]], None] | None = None,
    stop: threading.Event | None = None,
) -> NodeLease | None:
    """Take the lease of ``key`` (returns it) or wait until ``stored()`` says the
    result is stored by another run (returns None).

    ``stored`` is asked before each attempt, so a result stored since the plan
    was made is read, not computed again, and once more after the lease is
    taken: a holder stores, then releases, so a result stored between the first
    question and the taking is seen by the second.  ``on_wait(holder)`` is called once
    when the lease is found held by another run (the holder's lease document).
    Setting ``stop`` ends a wait with :class:`WaitStopped` (the run is failing).
    """
    from .runs import _host

    doc = {
        "format": FORMAT, "key": key, "workflow": workflow, "node": node, "run": run_id, "host": _host(),
        "pid": os.getpid(), "token": uuid.uuid4().hex, "ttl": float(ttl),
    }
    poll, told, since = _POLL_FIRST, False, time.monotonic()
    while True:
        if stop is not None and stop.is_set():
            raise WaitStopped(f"node {node!r}: no longer waiting for its lease (the run stops)")
        if stored():
            if told:
                logger.info("node %r: stored by another run after %.1f s of waiting; read, not computed",
                            node, time.monotonic() - since)
            return None
        doc["acquired"] = doc["renewed"] = utc_now_iso()
        if results._publish(lease_path(key), _encode(doc), replace=False):
            try:
                again = stored()
            except BaseException:  # nothing holds the lease yet: others would wait out its time to live
                with suppress(Exception):
                    _delete_if(results, key, doc["token"])
                raise
            if again:
                # Its holder stored the result and let the lease go between our
                # check above and our publishing: computing it again would waste the
                # node's time (and, for an impure node, record a second result).
                _delete_if(results, key, doc["token"])
                if told:
                    logger.info("node %r: stored by another run after %.1f s of waiting; read, not computed",
                                node, time.monotonic() - since)
                return None
            if told:
                logger.info("node %r: the lease of key %s is ours after %.1f s of waiting", node, key,
                            time.monotonic() - since)
            return NodeLease(results, key, doc)
        held = _read(results, key)
        if held is None:
            continue  # released (or damaged and removed) meanwhile: try again at once
        why = stale(held, time.time())
        if why is not None:
            logger.warning("node %r: the lease of key %s held by run %s on %s is stale (%s); taking it over",
                           node, key, held.get("run"), held.get("host"), why)
            _delete_if(results, key, held.get("token"))
            continue
        if not told:
            told = True
            logger.info("node %r: waiting for run %s on %s (pid %s), which computes it (lease %s)", node,
                        held.get("run"), held.get("host"), held.get("pid"), lease_path(key))
            if on_wait is not None:
                on_wait(held)
        if stop is not None:
            stop.wait(poll)
        else:
            time.sleep(poll)
        poll = min(_POLL_MAX, poll * 1.5)


def stale(held: dict[str, Any], now: float) -> str | None:
    """Why a lease document is stale (its holder is gone), or None while it is live."""
    from .runs import _host, process_alive

    renewed = iso_seconds(held.get("renewed"))
    ttl = held.get("ttl")
    if renewed is None or not isinstance(ttl, (int, float)) or isinstance(ttl, bool):
        return "it is not a valid lease"
    if now - renewed > ttl:
        return f"not renewed for {now - renewed:.0f} s, its time to live is {ttl:g} s"
    pid = held.get("pid")
    if held.get("host") == _host() and isinstance(pid, int) and not process_alive(pid):
        return f"its process {pid} on this host is gone"
    return None


def _encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _read(results: Any, key: str, *, repair: bool = True) -> dict[str, Any] | None:
    """The lease document of ``key``; None when there is none.  A damaged one is
    deleted (a half-written lease of a killed writer; not with ``repair=False``)
    and None returned."""
    relative = lease_path(key)
    path = results._path(relative)
    try:
        with results.objects._io("reading", relative, path):
            data = results.objects.fs.cat_file(path)
    except (FileNotFoundError, EntryNotFoundError):
        return None
    except StorageError as exc:
        if isinstance(exc.__cause__, FileNotFoundError):
            return None
        raise
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError("not a lease")
        return doc
    except ValueError:
        if repair:
            logger.warning("lease %s is damaged; deleting it", relative)
            _remove(results, relative)
        return None


def _delete_if(results: Any, key: str, token: Any) -> None:
    """Delete the lease of ``key`` when it still has ``token``.

    Reading then deleting is not atomic: two waiters taking over one stale
    lease at once may delete a lease just taken by a third; then two runs
    compute the node.  Both store the same result (create-if-absent keeps the
    first), so this costs time, never a wrong value.
    """
    try:
        held = _read(results, key)
    except CorruptEntryError:
        held = None
    if held is not None and held.get("token") == token:
        _remove(results, lease_path(key))


def _remove(results: Any, relative: str) -> None:
    path = results._path(relative)
    with results.objects._io("deleting", relative, path):
        try:
            results.objects.fs.rm_file(path)
        except FileNotFoundError:
            pass
