"""Checks of memory-mapped parts, after their O(1) load.

An uncompressed ``.npy`` part of :data:`~functionfuse.serializers.formats.MMAP_THRESHOLD`
bytes or more is loaded as a copy-on-write memory map of the stored file: the
load reads nothing, so it cannot check the part's XXH3-128.  Instead the check
runs *after* the load, in one background thread per process, reading the file
in blocks (the pages the caller is about to touch anyway).  When it fails:

* the entry is withdrawn (its manifest deleted, see
  :meth:`~functionfuse.serializers.persistent.EntryOrigin.withdraw`), so the next
  run recomputes the node;
* an error naming the node, its workflow and key, the file and the storage is
  logged, and kept: a run that loaded the part raises it as a
  :class:`~functionfuse.errors.CorruptEntryError` when it ends
  (:func:`raise_failures`), if the check is over by then.

A result computed from a memory-mapped input is stored only once that input's
check has passed (:func:`ensure_clean`, called before each store): a node whose
input turns out damaged fails with that error and stores nothing, so no wrong
value enters the cache downstream.  Nothing else waits for a check: the load
stays O(1), and a resume that only reads has a time independent of result sizes.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from typing import Any

import xxhash

from ..errors import CorruptEntryError

logger = logging.getLogger(__name__)

__all__ = ["submit", "ensure_clean", "failures", "forget", "pending_failures", "raise_failures", "wait_idle"]

_BLOCK = 16 << 20
_queue: queue.Queue = queue.Queue()
_lock = threading.Lock()
_thread: threading.Thread | None = None
_thread_pid = 0
_failed: dict[str, str] = {}  # key -> message, for runs to raise
_checks: dict[str, threading.Event] = {}  # key -> set when its latest check is over
_verdicts: dict[str, str | None] = {}  # key -> message of its latest check (None: clean)


def submit(path: str, size: int, xxh3: str, origin: Any) -> None:
    """Check the file ``path`` (``size`` bytes, XXH3-128 ``xxh3``) in the background."""
    global _thread, _thread_pid
    with _lock:
        if _thread is None or _thread_pid != os.getpid() or not _thread.is_alive():
            _thread = threading.Thread(target=_work, name="functionfuse-latecheck", daemon=True)
            _thread_pid = os.getpid()
            _thread.start()
        done = threading.Event()
        if origin is not None:
            _checks[origin.key] = done
            _verdicts.pop(origin.key, None)
    _queue.put((path, size, xxh3, origin, done))


def _work() -> None:
    while True:
        path, size, xxh3, origin, done = _queue.get()
        message = None
        try:
            problem = _check(path, size, xxh3)
            if problem is not None:
                message = _report(path, problem, origin)
        except Exception as exc:  # noqa: BLE001 - a check that cannot run is no verdict
            logger.debug("late check of %s not done: %s", path, exc)
        finally:
            if origin is not None:
                with _lock:
                    _verdicts[origin.key] = message
            done.set()
            _queue.task_done()


def ensure_clean(keys: Any) -> None:
    """Wait for the checks of memory-mapped parts of ``keys`` (inputs of a result about to
    be stored); raise :class:`CorruptEntryError` when one found damage."""
    if not _checks:
        return
    for key in keys:
        done = _checks.get(key)
        if done is None:
            continue
        done.wait()
        message = _verdicts.get(key)
        if message is not None:
            with _lock:
                _failed.pop(key, None)  # raised here, not again when the run ends
            raise CorruptEntryError(f"an input of this node is damaged: {message}")


def _check(path: str, size: int, xxh3: str) -> str | None:
    hasher = xxhash.xxh3_128()
    seen = 0
    with open(path, "rb", buffering=0) as f:
        buffer = bytearray(_BLOCK)
        view = memoryview(buffer)
        while True:
            n = f.readinto(view)
            if not n:
                break
            hasher.update(view[:n])
            seen += n
    if seen != size:
        return f"{seen} bytes, {size} were stored"
    digest = hasher.hexdigest()
    if digest != xxh3:
        return f"XXH3-128 {digest}, expected {xxh3} (altered)"
    return None


def _report(path: str, problem: str, origin: Any) -> str:
    who = origin.describe() if origin is not None else "a stored result"
    withdrawn = origin is not None and origin.withdraw(f"memory-mapped part {path} is damaged")
    fix = ("its entry was withdrawn: the next run recomputes the node" if withdrawn else
           "remove its entry (storage.remove_task or `functionfuse rm`) or rerun the node with force=...")
    message = (f"memory-mapped array {path} of {who} is damaged ({problem}); values read from it may be "
               f"wrong; {fix}")
    logger.error("%s", message)
    if origin is not None:
        with _lock:
            _failed[origin.key] = message
    return message


def checking() -> bool:
    """Whether any memory-mapped part was loaded (and its check kept) in this process."""
    return bool(_checks)


def forget(key: str) -> None:
    """``key`` was stored again (recomputed): what checks of its old data found is void."""
    if _checks or _failed:
        with _lock:
            _checks.pop(key, None)
            _verdicts.pop(key, None)
            _failed.pop(key, None)


def pending_failures() -> bool:
    """Whether a failed check has not been raised yet (cheap: for the end of every run)."""
    return bool(_failed)


def failures(keys: Any) -> list[str]:
    """Messages of failed checks of parts of ``keys`` (taken: each is given once)."""
    with _lock:
        return [_failed.pop(k) for k in list(keys) if k in _failed]


def raise_failures(keys: Any) -> None:
    """Raise :class:`CorruptEntryError` for failed checks of parts of ``keys``."""
    found = failures(keys)
    if found:
        raise CorruptEntryError("; ".join(found))


def wait_idle() -> None:
    """Wait until every submitted check is done (tests, and ``verify``-like callers)."""
    _queue.join()
