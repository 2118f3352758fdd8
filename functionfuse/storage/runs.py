"""Run records of store v2: which key each node had in each run (docs/format.md).

One immutable JSON document per run of a workflow, written once when the run
ends, at ``runs/<workflow>/<run-id>.json``.  Run ids sort by time
(``20261127T150406.123456Z-gpu3-4211-9f2c``), so the latest run is the
largest name of one listing.  The workflow folder is the workflow name made a
safe path component (:func:`functionfuse.storage.names.encode_name`); the
record repeats the exact name, so two workflows whose long names shorten alike
are still told apart.

This module builds, encodes, decodes and orders records; it does no I/O.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import time
from typing import Any, Iterable

from ..errors import CorruptEntryError
from .manifests import check, fast_canonical_json, parse_json, seal
from .names import encode_name

__all__ = [
    "FORMAT",
    "VERSION",
    "new_run_id",
    "run_folder",
    "run_path",
    "encode_record",
    "decode_record",
    "latest_run_id",
    "lease_path",
    "encode_lease",
    "decode_lease",
]

FORMAT = "functionfuse-run"
VERSION = 2
SUFFIX = ".json"
_ID = re.compile(r"\d{8}T\d{6}\.\d{6}Z-[A-Za-z0-9.-]{1,40}-\d+-[0-9a-f]{4,}")
OUTCOMES = ("ok", "failed", "interrupted", "removed")


def _host() -> str:
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname() or "host")[:40]
    return host or "host"


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host exists (one that is not ours counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def new_run_id(now: float | None = None, host: str | None = None, pid: int | None = None) -> str:
    """A run id that sorts by start time, then host, pid and a random tail.

    >>> new_run_id(0.0, "gpu3", 42)[:27]
    '19700101T000000.000000Z-gpu'
    """
    now = time.time() if now is None else now
    seconds = int(now)
    micros = int(round((now - seconds) * 1e6))
    if micros == 1_000_000:
        seconds, micros = seconds + 1, 0
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(seconds))
    host = re.sub(r"[^A-Za-z0-9.-]", "-", host)[:40] if host else _host()
    pid = os.getpid() if pid is None else pid
    return f"{stamp}.{micros:06d}Z-{host}-{pid}-{secrets.token_hex(2)}"


def run_folder(workflow: str) -> str:
    """Folder of a workflow's records, relative to the store root.

    >>> run_folder("ridge/v2")
    'runs/ridge%2Fv2'
    """
    return f"runs/{encode_name(workflow)}"


def run_path(workflow: str, run_id: str) -> str:
    """Path of one run record, relative to the store root."""
    if not _ID.fullmatch(run_id):
        raise ValueError(f"not a run id: {run_id!r}")
    return f"{run_folder(workflow)}/{run_id}{SUFFIX}"


LEASE_FORMAT = "functionfuse-lease"
LEASE_SUFFIX = ".running"


def lease_path(workflow: str, run_id: str) -> str:
    """Path of a running run's lease, relative to the store root (beside its record-to-be)."""
    if not _ID.fullmatch(run_id):
        raise ValueError(f"not a run id: {run_id!r}")
    return f"{run_folder(workflow)}/{run_id}{LEASE_SUFFIX}"


def encode_lease(workflow: str, run_id: str, *, base: str | None, keys: Iterable[str], started: str) -> bytes:
    """The stored bytes of a run lease (see docs/format.md, "Run leases")."""
    doc = {
        "format": LEASE_FORMAT, "version": VERSION, "workflow": workflow, "run": run_id, "host": _host(),
        "pid": os.getpid(), "started": started, "base": base, "keys": sorted(keys),
    }
    return seal(fast_canonical_json(doc))


def decode_lease(data: bytes | memoryview, where: str) -> dict[str, Any]:
    """Parse and verify a run lease read from ``where``."""
    check(data, f"run lease {where}")
    doc = parse_json(data, f"run lease {where}")
    if not isinstance(doc, dict) or doc.get("format") != LEASE_FORMAT or not isinstance(doc.get("keys"), list):
        raise CorruptEntryError(f"run lease {where} is not a {LEASE_FORMAT!r} document")
    return doc


def encode_record(
    workflow: str,
    run_id: str,
    nodes: dict[str, dict[str, Any]],
    *,
    started: str,
    finished: str,
    outcome: str,
    executor: str,
    extra: dict[str, Any] | None = None,
) -> bytes:
    """The stored bytes of a run record (see docs/format.md, "Run record")."""
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {OUTCOMES}, got {outcome!r}")
    doc: dict[str, Any] = dict(extra or {})
    doc.update(
        format=FORMAT,
        version=VERSION,
        workflow=workflow,
        run=run_id,
        started=started,
        finished=finished,
        host=_host(),
        executor=executor,
        outcome=outcome,
        nodes=nodes,
    )
    return seal(fast_canonical_json(doc))


def decode_record(data: bytes | memoryview, where: str) -> dict[str, Any]:
    """Parse and verify a run record read from ``where``."""
    check(data, f"run record {where}")
    doc = parse_json(data, f"run record {where}")
    if isinstance(doc, dict):
        doc.pop("checksum", None)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise CorruptEntryError(f"run record {where} is not a {FORMAT!r} version {VERSION} document")
    if not isinstance(doc.get("nodes"), dict):
        raise CorruptEntryError(f"run record {where} lacks 'nodes'")
    return doc


def latest_run_id(names: Iterable[str]) -> str | None:
    """The latest run id among file names of a run folder (others are ignored).

    >>> latest_run_id(["20261127T150406.000001Z-a-1-00ff.json", "20261127T150406.000002Z-a-1-0000.json",
    ...                "notes.txt", "20261128T000000.000000Z-a-1-0000.running"])
    '20261127T150406.000002Z-a-1-0000'
    """
    # Ids sort by time: the largest name that is a run id (a folder keeps every run's
    # record, so the names are many and most are never matched against the pattern).
    cut = -len(SUFFIX)
    pool = [name[name.rfind("/") + 1 : cut] for name in names if name.endswith(SUFFIX)]
    while pool:
        best = max(pool)
        if _ID.fullmatch(best):
            return best
        pool = [run_id for run_id in pool if run_id != best]
    return None
