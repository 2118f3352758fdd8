"""Garbage collection of a store: what no kept run reaches, and crash debris.

The rules, and why they are safe beside a running workflow, are in docs/cli.md
("gc").  In short: the latest record of every workflow is always kept, older
records by policy; manifests no kept record names go (with their side data),
then objects no remaining manifest names; nothing younger than the grace
period is deleted; candidates are listed before the records are read, and
objects are checked again against a second listing of manifests just before
they are deleted.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import CorruptEntryError, EntryNotFoundError, FunctionFuseError, StorageError
from .base import current_view, iso_seconds
from .inventory import Inventory, RunInfo

logger = logging.getLogger(__name__)

__all__ = ["GcPolicy", "GcReport", "collect"]


@dataclass(frozen=True)
class GcPolicy:
    """What ``gc`` keeps: see docs/cli.md.  Sizes in bytes, ages in seconds."""

    keep_runs: int = 10
    older_than_s: float | None = None
    max_size: int | None = None
    grace_s: float = 3600.0
    lease_s: float = 86400.0  # a run lease older than this is a crashed run's (docs/cli.md)

    def __post_init__(self) -> None:
        if not isinstance(self.keep_runs, int) or self.keep_runs < 1:
            raise ValueError(f"keep_runs must be an integer >= 1 (the latest run is always kept), got {self.keep_runs!r}")
        for name in ("older_than_s", "grace_s", "lease_s"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, float)) or value < 0):
                raise ValueError(f"{name} must be a non-negative number of seconds, got {value!r}")
        if self.max_size is not None and (not isinstance(self.max_size, int) or self.max_size < 0):
            raise ValueError(f"max_size must be a non-negative number of bytes, got {self.max_size!r}")


@dataclass
class GcReport:
    """What ``gc`` removed (or, dry, would remove)."""

    dry_run: bool
    records: list[str] = field(default_factory=list)
    manifests: list[str] = field(default_factory=list)
    objects: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    temporaries: int = 0
    kept_young: int = 0  # unreachable but younger than the grace period
    size_before: int = 0
    size_after: int = 0
    over_max_size: bool = False
    leases: int = 0  # runs in progress whose results were kept
    stale_leases: list[str] = field(default_factory=list)  # leases of crashed runs, removed
    side_data: list[str] = field(default_factory=list)  # side data no manifest names (crashed writers)
    node_leases: list[str] = field(default_factory=list)  # node leases of killed runs (storage.leases)
    packs: list[str] = field(default_factory=list)  # packs of gone writers with cut or damaged lines, rewritten
    overwrite_notes: list[str] = field(default_factory=list)  # notes of results no longer stored, removed

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def collect(inventory: Inventory, policy: GcPolicy | None = None, *, dry_run: bool = False,
            persistence: Any = None, now: float | None = None) -> GcReport:
    """Remove what ``policy`` does not keep from the inventory's store (see module doc).

    ``persistence`` (a storage's :class:`~functionfuse.serializers.persistent.Persistence`)
    removes the side data of persistent serializers with the manifests naming it;
    without it that side data stays (and is reported in the log).
    """
    policy = policy or GcPolicy()
    now = time.time() if now is None else now
    results = inventory.results
    objects = results.objects
    report = GcReport(dry_run=dry_run)

    # 1. List first: whatever is published after these listings is no candidate.
    all_keys = inventory.all_keys()
    listed = objects.listing()
    manifest_times = _manifest_times(inventory, all_keys)
    report.size_before = sum(size for size, _ in listed.values()) + sum(inventory.manifest_bytes(k) for k in all_keys)

    # 2. Then the records, and which to keep; and what runs in progress use (their leases).
    kept: dict[str, list[RunInfo]] = {}
    dropped: list[RunInfo] = []
    for wf in inventory.workflows():
        every = inventory.runs(wf)
        if every and not every[-1].ok:
            raise FunctionFuseError(
                f"gc stopped, nothing removed: the latest run record of workflow {wf!r} ({every[-1].path} in "
                f"{inventory.url}) is damaged ({every[-1].problem}), so gc cannot tell what that workflow needs. "
                "Run the workflow again (its new record supersedes the damaged one) or delete that file, then "
                "run gc again; `functionfuse verify` lists all damage."
            )
        runs = [r for r in every if r.ok]
        keep, drop = _by_policy(runs, policy, now)
        kept[wf] = keep
        dropped.extend(drop)
    leased, stale = _leases(inventory, policy, now)
    for run in list(dropped):  # a running run's base record stays
        if run.run_id in leased["bases"]:
            dropped.remove(run)
            kept[run.workflow].insert(0, run)

    def reachable() -> set[str]:
        keys: set[str] = set(leased["keys"])
        for runs in kept.values():
            for run in runs:
                keys.update(current_view(run.record).values())
                keys.update(e["key"] for e in run.record.get("nodes", {}).values()
                            if isinstance(e, dict) and isinstance(e.get("key"), str))
        return keys

    def named_objects() -> set[str]:
        """Objects the kept records name themselves (their small-results ``values``)."""
        return {h for runs in kept.values() for run in runs if (h := _values_object(run.record)) is not None}

    doomed_keys, doomed_objects = _unreached(inventory, all_keys, listed, manifest_times, reachable(), policy, now, report)
    doomed_objects -= named_objects()
    if policy.max_size is not None:
        # Drop the oldest kept records but the latest ones until the store would fit.
        size_after = report.size_before - _freed(inventory, doomed_keys, doomed_objects, listed)
        older = sorted((r for runs in kept.values() for r in runs[:-1]), key=lambda r: r.run_id)
        while size_after > policy.max_size and older:
            victim = older.pop(0)
            kept[victim.workflow].remove(victim)
            dropped.append(victim)
            report.kept_young = 0
            doomed_keys, doomed_objects = _unreached(
                inventory, all_keys, listed, manifest_times, reachable(), policy, now, report
            )
            doomed_objects -= named_objects()
            size_after = report.size_before - _freed(inventory, doomed_keys, doomed_objects, listed)
        report.over_max_size = size_after > policy.max_size
    report.records = sorted(r.path for r in dropped)
    report.manifests = sorted(doomed_keys)
    report.bytes_freed = _freed(inventory, doomed_keys, doomed_objects, listed)

    report.leases = len(leased["paths"])
    report.stale_leases = sorted(stale)
    if not dry_run:
        for path in stale:
            _delete(results, path)
        # Runs that started since the records were read: their leases name what they use.
        late, _ = _leases(Inventory(results), policy, now)
        for key in doomed_keys & late["keys"]:
            doomed_keys.discard(key)
            doomed_objects.difference_update(inventory.objects_of(key))
        for run in dropped:
            if run.run_id in late["bases"]:
                continue
            _delete(results, run.path)
        for key in sorted(doomed_keys):  # manifests before objects: no reader finds a dangling manifest
            doc = inventory.manifest(key)
            if doc is not None and persistence is not None:
                for part in doc.get("parts", ()):
                    results._remove_side_data(part, persistence, _persistent())
        results.delete_manifests(doomed_keys)
        # A second look at the manifests just before deleting objects: one published
        # since the first listing may name an object that existed already (dedup).
        fresh = Inventory(results)
        for key in set(fresh.all_keys()) - set(all_keys):
            try:
                doc = results.read_manifest(key)
            except (CorruptEntryError, EntryNotFoundError):
                continue
            doomed_objects.difference_update(p.get("object") for p in doc.get("parts", ()))
        for wf in fresh.workflows():  # records written meanwhile name their values object
            for run in fresh.runs(wf):
                if run.ok:
                    doomed_objects.discard(_values_object(run.record))
        # A writer that reused an object since the listing refreshed its time (local
        # storage): look again just before deleting.
        spared = set()
        for hash in sorted(doomed_objects):
            if results._local:  # its time now: a writer that reused it since refreshed it
                path = objects.path(hash)
                try:
                    fresh_time = os.stat(path).st_mtime
                except FileNotFoundError:
                    continue
                if time.time() - fresh_time < policy.grace_s:
                    spared.add(hash)
                    continue
            objects.delete(hash)
        doomed_objects -= spared
        report.kept_young += len(spared)
        report.bytes_freed = _freed(inventory, doomed_keys, doomed_objects, listed)
        try:
            report.temporaries = objects.remove_stale_temporaries(policy.grace_s)
        except StorageError as exc:
            logger.warning("temporaries left in place: %s", exc)
    if leased["paths"]:
        # A run in progress may be writing side data whose manifest is not published
        # yet, however long ago it started: orphans wait for a gc with no run going on.
        logger.info("gc: orphaned side data left for later: %d run(s) in progress", len(leased["paths"]))
    else:
        report.side_data = _orphaned_side_data(results, policy, dry_run=dry_run)
    report.node_leases = _stale_node_leases(results, dry_run=dry_run)
    report.overwrite_notes = _orphaned_notes(results, set(report.manifests) if dry_run else set(), dry_run=dry_run)
    report.packs = results.clean_packs(policy.grace_s, dry_run=dry_run)
    report.manifests = sorted(doomed_keys)
    report.objects = sorted(doomed_objects)
    report.size_after = report.size_before - report.bytes_freed
    return report


#: Side data that ``DaskArraySerializer`` names (``generate_name()`` + its extension):
#: the only side data gc removes when no manifest names it.  Other serializers' files
#: are theirs to name; gc removes them only with the manifest naming them.
_OWN_SIDE = re.compile(r"^[0-9a-f]{32}\.(h5|zarr)$")


def _orphaned_side_data(results: Any, policy: GcPolicy, *, dry_run: bool) -> list[str]:
    """Remove side data of ``DaskArraySerializer`` that no manifest names and that is
    older than the grace period: what a writer killed between writing the array and
    publishing its manifest left (docs/cli.md, "gc").  Returns the paths (relative to
    the store).

    The side folders are listed first, then every manifest is read: side data whose
    manifest is published after the listing was written before it, so it is younger
    than the grace period unless its writer stopped for that long between the two.
    An entry's age is its newest file's (a zarr array is a folder of chunks).
    """
    from ..serializers import persistent
    from .base import SIDE

    fs = results.objects.fs
    top = results._path(SIDE)
    cutoff = time.time() - policy.grace_s
    with results.objects._io("listing", SIDE, top):
        try:
            found = fs.find(top, detail=True, withdirs=False)
        except FileNotFoundError:
            return []
    newest: dict[str, float] = {}  # "<workflow folder>/<entry>" -> newest file time
    for path, info in found.items():
        rel = path[len(top):].strip("/") if path.startswith(top) else path.split(f"/{SIDE}/", 1)[-1]
        folder, _, rest = rel.partition("/")
        entry = rest.split("/", 1)[0]
        if not folder or not _OWN_SIDE.match(entry):
            continue
        name = f"{folder}/{entry}"
        newest[name] = max(newest.get(name, 0.0), _info_time(info))
    newest = {name: when for name, when in newest.items() if when < cutoff}
    if not newest:
        return []  # nothing old enough: no manifest needs reading
    named: set[str] = set()
    for key in Inventory(results).all_keys():
        try:
            doc = results.read_manifest(key)
        except EntryNotFoundError:
            continue
        except CorruptEntryError:
            logger.info("gc: orphaned side data kept: manifest %s is damaged, so what it names is unknown", key)
            return []
        for part in doc.get("parts", ()):
            info = part.get("info") or {}
            pids = [e[1] for e in info.get("persistent") or () if isinstance(e, list) and len(e) == 2]
            if part.get("format") == persistent.SERIALIZER:
                from .objects import ObjectRef

                try:
                    pids.append(persistent.read_pid(results.objects.get_bytes(ObjectRef.from_json(part)), safe=True)[1])
                except (FunctionFuseError, ValueError, TypeError, KeyError) as exc:
                    logger.info("gc: orphaned side data kept: the side data of key %s is unknown (%s)", key, exc)
                    return []
            for pid in pids:
                named.update(_strings(pid))
    removed = []
    for name, when in sorted(newest.items()):
        if name.rsplit("/", 1)[-1] in named:
            continue
        removed.append(f"{SIDE}/{name}")
        if not dry_run:
            with results.objects._io("removing", f"{SIDE}/{name}", f"{top}/{name}"):
                try:
                    fs.rm(f"{top}/{name}", recursive=True)
                except FileNotFoundError:
                    pass
    if removed:
        logger.info("gc: %s %d side data entries no manifest names", "would remove" if dry_run else "removed",
                    len(removed))
    return removed


def _stale_node_leases(results: Any, *, dry_run: bool) -> list[str]:
    """Remove node leases whose holder is gone (see :func:`.leases.stale`); the paths."""
    from .leases import LEASES, _delete_if, _read, stale

    fs = results.objects.fs
    top = results._path(LEASES)
    with results.objects._io("listing", LEASES, top):
        try:
            found = [p for p in fs.find(top) if p.endswith(".json")]
        except FileNotFoundError:
            return []
    removed = []
    now = time.time()
    for path in found:
        key = path.rsplit("/", 1)[-1][: -len(".json")]
        held = _read(results, key, repair=False)
        if held is None or stale(held, now) is None:
            continue
        removed.append(f"{LEASES}/{key}.json")
        if not dry_run:
            _delete_if(results, key, held.get("token"))  # not a lease a waiting run took over since
    return removed


def _orphaned_notes(results: Any, doomed: set[str], *, dry_run: bool) -> list[str]:
    """Remove the overwrite notes of keys whose manifest is gone (``doomed``: going, in a
    dry run); the paths.  Removing a manifest removes its note, unless the remover was
    killed in between (see docs/format.md, "Overwrite notes")."""
    from .results import OVERWRITES

    noted = results.overwritten()
    if not noted:
        return []
    gone = sorted((noted - results.present(noted)) | (noted & doomed))
    if not dry_run:
        results.forget_overwrites(gone)
    return [f"{OVERWRITES}/{key}.json" for key in gone]


def _strings(value: Any) -> set[str]:
    """Every string in a plain JSON value."""
    if isinstance(value, str):
        return {value}
    if isinstance(value, dict):
        return set().union(*(_strings(v) for v in value.values()), set(map(str, value)))
    if isinstance(value, (list, tuple)):
        return set().union(*(_strings(v) for v in value)) if value else set()
    return set()


def _info_time(info: dict) -> float:
    """Modification time of an fsspec listing entry (local ``mtime``, S3 ``LastModified``)."""
    for name in ("mtime", "LastModified", "last_modified", "created"):
        value = info.get(name)
        if isinstance(value, (int, float)):
            return float(value)
        if hasattr(value, "timestamp"):
            return float(value.timestamp())
    return time.time()  # unknown: as young as can be, so kept


def _leases(inventory: Inventory, policy: GcPolicy, now: float) -> tuple[dict[str, set[str]], list[str]]:
    """What live run leases protect (``keys``, ``bases``: record ids, ``paths``), and stale leases.

    A lease is live while younger than ``policy.lease_s`` and its process, when on
    this host, is alive.  A damaged lease stops gc (what its run uses is unknown).
    """
    from .runs import _host, process_alive

    live: dict[str, set[str]] = {"keys": set(), "bases": set(), "paths": set()}
    stale: list[str] = []
    host = _host()
    for path, lease, problem in inventory.leases():
        if lease is None:
            raise FunctionFuseError(
                f"gc stopped, nothing removed: run lease {path} in {inventory.url} is damaged ({problem}); "
                "if no run of that workflow is going on, delete the file and run gc again"
            )
        started = iso_seconds(lease.get("started"))
        dead = lease.get("host") == host and isinstance(lease.get("pid"), int) and not process_alive(lease["pid"])
        if dead or (started is not None and now - started > policy.lease_s):
            stale.append(path)
            continue
        live["keys"].update(k for k in lease.get("keys", ()) if isinstance(k, str))
        if isinstance(lease.get("base"), str):
            live["bases"].add(lease["base"])
        live["paths"].add(path)
    return live, stale


def _values_object(record: dict | None) -> str | None:
    """The hash of the small-results object a run record names, if any."""
    ref = (record or {}).get("values")
    return ref.get("object") if isinstance(ref, dict) and isinstance(ref.get("object"), str) else None


def _by_policy(runs: list[RunInfo], policy: GcPolicy, now: float) -> tuple[list[RunInfo], list[RunInfo]]:
    """(kept, dropped) records of one workflow, oldest first; the latest is always kept."""
    if not runs:
        return [], []
    keep: list[RunInfo] = []
    drop: list[RunInfo] = []
    recent = runs[-policy.keep_runs:]
    for run in runs[:-1]:
        young = policy.older_than_s is None or _age(run, now) < policy.older_than_s
        (keep if run in recent and young else drop).append(run)
    keep.append(runs[-1])
    return keep, drop


def _age(run: RunInfo, now: float) -> float:
    when = iso_seconds(run.record.get("finished") or run.record.get("started"))
    return 0.0 if when is None else now - when  # unknown: young (kept)


def _manifest_times(inventory: Inventory, keys: list[str]) -> dict[str, float]:
    """Key -> the time its manifest was written (its ``created`` member); a missing
    manifest counts as new, an unreadable time as old."""
    out = {}
    for key in keys:
        doc = inventory.manifest(key)
        when = iso_seconds((doc or {}).get("created"))
        if when is None:
            when = float("inf") if doc is None and inventory.problem(key) == "missing" else 0.0
        out[key] = when
    return out


def _unreached(inventory: Inventory, all_keys: list[str], listed: dict[str, tuple[int, float]],
               manifest_times: dict[str, float], reached: set[str], policy: GcPolicy, now: float,
               report: GcReport) -> tuple[set[str], set[str]]:
    """(manifests, objects) to delete: unreached, and older than the grace period."""
    young = 0
    doomed_keys = set()
    for key in all_keys:
        if key in reached:
            continue
        if now - manifest_times.get(key, now) < policy.grace_s:
            young += 1
            continue
        doomed_keys.add(key)
    used: set[str] = set()
    for key in all_keys:
        if key not in doomed_keys:
            used.update(inventory.objects_of(key))
    doomed_objects = set()
    for hash, (_, mtime) in listed.items():
        if hash in used:
            continue
        if now - mtime < policy.grace_s:
            young += 1
            continue
        doomed_objects.add(hash)
    report.kept_young = young
    return doomed_keys, doomed_objects


def _freed(inventory: Inventory, keys: set[str], objects: set[str], listed: dict[str, tuple[int, float]]) -> int:
    return sum(inventory.manifest_bytes(k) for k in keys) + sum(listed[h][0] for h in objects if h in listed)


def _delete(results: Any, relative: str) -> None:
    from contextlib import suppress

    path = results._path(relative)
    with results.objects._io("deleting", relative, path), suppress(FileNotFoundError):
        results.objects.fs.rm_file(path)


def _persistent() -> Any:
    from ..serializers import persistent

    return persistent
