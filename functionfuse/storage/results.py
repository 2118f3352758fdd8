"""Results by cache key on store v2: the layer every storage delegates to (docs/format.md).

:class:`ResultStore` puts the building blocks together on one root (a local
folder or ``s3://bucket/prefix``):

* :meth:`~ResultStore.save` splits a value into a tree and parts
  (:mod:`functionfuse.serializers.parts`), writes each part as a
  content-addressed object (:mod:`.objects`), and publishes the key's sealed
  manifest (:mod:`.manifests`) create-if-absent: the manifest is the commit
  marker, written after every object it names;
* :meth:`~ResultStore.load` reads and checks the manifest, checks every part
  it reads (size and XXH3; ``npy`` parts of 64 MiB or more on local files are
  memory-mapped copy-on-write instead, see the design), and joins the value;
* :meth:`~ResultStore.present` answers "which of these keys are stored" for a
  whole plan at once;
* :meth:`~ResultStore.record_run` / :meth:`~ResultStore.latest_run` write and
  read the run records that say which key each node had in a workflow's runs.

:class:`~functionfuse.storage.base.Storage` adds the policy on top (node
names, workflows, run records' current state, side data of persistent
serializers).  With ``safe=True`` nothing is ever unpickled and nothing
needing pickle is stored; ``compression`` (see :mod:`.codecs`) applies to the
parts written, never to keys.
"""

from __future__ import annotations

import logging
import os
import posixpath
import time
import uuid
from contextlib import suppress
from typing import Any, Iterable, Iterator

from ..errors import CorruptEntryError, EntryNotFoundError, FunctionFuseError, StorageError
from ..serializers import persistent
from ..serializers.formats import MMAP_THRESHOLD
from ..serializers.parts import join, plain_tree, split
from .manifests import (
    FORMAT,
    VERSION,
    decode_manifest,
    encode_manifest,
    fast_canonical_json,
    manifest_doc,
    manifest_path,
    seal,
)
from .objects import ObjectRef, ObjectStore
from .packs import BUSY, HEADER, PACKS, PackIndex, PackWriter, is_busy, rewrite, scan
from .runs import decode_record, encode_lease, encode_record, latest_run_id, lease_path, run_folder, run_path

__all__ = ["ResultStore"]

logger = logging.getLogger(__name__)

#: On S3, more unknown keys than this are looked up by listing ``manifests/`` (one
#: request per 1,000 manifests, at most LIST_PAGES of them) instead of a HEAD each.
LIST_OVER = 64
LIST_PAGES = 16
#: Local parquet parts from this size on are checked in place and read from their file.
NATIVE_READ = 4 << 20
#: Looks again at packs another process holds before leaving their lines to a later gc
#: (about a second in all).
BUSY_WAITS = 8
#: Run records tried, newest first, when the latest is damaged.
RECORD_FALLBACK = 3
_O_TMPFILE = getattr(os, "O_TMPFILE", 0) if os.path.isdir("/proc/self/fd") else 0
#: The file that marks a store's root, and its content.
#: Notes of manifests written over (docs/format.md, "Overwrites"): ``overwrites/<key>.json``.
OVERWRITES = "overwrites"
MARKER = "FFSTORE.json"
MARKER_BYTES = b'{"format":"functionfuse-store","version":2}\n'


class ResultStore:
    """Results by cache key, objects by content and run records, under one root."""

    def __init__(self, objects: ObjectStore, *, safe: bool = False, compression: Any = None) -> None:
        from .codecs import normalize

        self.objects = objects
        self.safe = safe
        self.compression = normalize(compression)
        self._marked = False
        self._pack_writer: PackWriter | None = None
        #: Small manifests go to a pack (a run of the local executor is under way here).
        self.packing = False
        self._pack_index: PackIndex | None = None

    @classmethod
    def from_url(cls, url: str, storage_options: dict | None = None, *, safe: bool = False,
                 compression: Any = None, **kwargs: Any) -> ResultStore:
        """The store at ``url`` (a folder, ``file://...``, ``s3://bucket/prefix``)."""
        return cls(ObjectStore.from_url(url, storage_options, **kwargs), safe=safe, compression=compression)

    def __repr__(self) -> str:
        return f"ResultStore({self.objects.url!r})"

    @property
    def _local(self) -> bool:
        return self.objects._local

    def _path(self, relative: str) -> str:
        return posixpath.join(self.objects.root, relative)

    # -- writing ----------------------------------------------------------------
    def save(
        self, key: str, value: Any, meta: dict[str, Any] | None = None, *, replace: bool = False,
        persistence: Any = None,
    ) -> dict[str, Any]:
        """Store ``value`` as the result of ``key``; returns its manifest.

        ``meta`` holds the informative members (node, workflow, arguments,
        inputs ...).  Storing a key that is already stored keeps the first
        manifest (same key, same computation); ``replace`` writes every
        object and the manifest again (over a damaged copy).  ``persistence``
        (:class:`~functionfuse.serializers.persistent.Persistence`) hands
        objects of persistent serializers to them.
        """
        tree = plain_tree(value)
        if tree is not None:  # the usual small result: no parts, no serializers to involve
            return self.save_plain(key, tree, meta, replace=replace)
        from .codecs import compressing_writer, object_codec

        self._mark()

        try:
            with persistent.active(persistence):
                tree, parts = split(value, safe=self.safe, persistence=persistence)
                entries = []
                compression = self.compression
                for part in parts:
                    codec = object_codec(compression, part.format)
                    with self.objects.writer(replace=replace) as sink:
                        if codec is None:
                            part.write(sink, compression)
                        else:
                            with compressing_writer(sink, compression) as out:
                                part.write(out, compression)
                    entries.append({**part.entry(), **sink.ref.to_json(), "codec": codec})
            fields = {**(meta or {}), "key": key, "result": tree, "parts": entries}
            data = encode_manifest(fields)
            published = self._commit(key, data, replace=replace, packed=not entries)
        except BaseException:
            if persistence is not None:
                persistence.undo()  # nothing names the side data written so far
            raise
        if not published:
            # Another writer published this key first (the same computation):
            # its manifest names its own side data, not ours.
            if persistence is not None:
                persistence.undo()
            return self.read_manifest(key)
        return manifest_doc(fields)

    def save_plain(self, key: str, tree: dict, meta: dict[str, Any] | None = None, *, replace: bool = False
                   ) -> dict[str, Any]:
        """:meth:`save` of a small plain result given as its tree (from
        :func:`~functionfuse.serializers.parts.plain_tree`): the manifest alone,
        appended to the run's pack on a local folder during a run (docs/format.md, "Packs";
        a replacement is a loose file, which readers take first)."""
        if not self._marked:
            self._mark()
        doc = dict(meta) if meta else {}
        doc.pop("checksum", None)
        doc["key"], doc["result"], doc["parts"], doc["format"], doc["version"] = key, tree, [], FORMAT, VERSION
        if not self._commit(key, seal(fast_canonical_json(doc)), replace=replace, packed=True):
            return self.read_manifest(key)  # another writer published this key first
        return doc

    def alias(self, key: str, stored: str, meta: dict[str, Any], *, manifest: dict[str, Any] | None = None
              ) -> dict[str, Any]:
        """Publish the result of ``stored`` as the result of ``key`` too: a manifest naming
        the same objects (nothing is copied), with ``meta`` over the stored manifest's
        informative members and ``"same_as": stored`` (early cutoff, see
        :mod:`functionfuse.cutoff`).  Returns the manifest of ``key``; when ``key`` is
        stored already, that one.  Raises EntryNotFoundError / CorruptEntryError when
        ``stored`` cannot be read, and the missing object's error when one of its objects
        is gone.  ``manifest`` is ``stored``'s manifest when the caller just read it."""
        doc = self.read_manifest(stored) if manifest is None else manifest
        doc = {k: v for k, v in doc.items() if k not in ("persistent", "persistent_versions")}  # read_meta's
        refs = [ObjectRef.from_json(part) for part in doc["parts"]]
        missing = {ref.hash for ref in refs} - self.objects.exists(refs)
        if missing:  # a manifest never names an object that is not there (with its size)
            raise EntryNotFoundError(f"objects {sorted(missing)} of {stored} are missing from {self.objects.url}")
        if not self._marked:
            self._mark()
        fields = {**doc, **meta, "key": key, "same_as": stored}
        fields.pop("checksum", None)
        if not self._commit(key, encode_manifest(fields), replace=False, packed=not doc["parts"]):
            return self.read_manifest(key)
        return manifest_doc(fields)

    def _commit(self, key: str, data: bytes, *, replace: bool, packed: bool) -> bool:
        """Publish the manifest bytes of ``key`` (the commit of a save): a loose file
        create-if-absent, or, for a manifest without parts (``packed``) on a local
        folder during a run (:attr:`packing`), a line appended to the run's pack
        (docs/format.md, "Packs").  A replacement is always a loose file: readers take
        it first.  Returns False when another writer had published the key first."""
        if replace:
            # The note first: a writer killed (or failing) after it leaves a note whose
            # manifest may be the old one, which costs readers a manifest read; the other
            # order could leave a new manifest unnoted, and records serving the old copy.
            self._note_overwrite(key)
            return self._publish(manifest_path(key), data, replace=True)
        if not (packed and self.packing and self._local):
            return self._publish(manifest_path(key), data, replace=False)
        index, writer = self._pack_index, self._pack_writer
        if writer is None:
            writer = self._pack_writer = PackWriter(self._path(PACKS), durable=self.objects.durable)
        if key in writer.appended or (index is not None and key in index):  # packed first, as far as we know
            with suppress(CorruptEntryError, EntryNotFoundError):
                self.read_manifest(key)
                return False
        try:
            writer.append(key, data)
        except FunctionFuseError:
            raise
        except Exception as exc:  # the disk is full ...: named like any write failure
            raise self.objects._error(exc, "appending to a pack", PACKS, writer.folder) from exc
        return True

    def _note_overwrite(self, key: str) -> None:
        """Note that the manifest of ``key`` is written over (before writing it): the run
        records that carry its earlier small result stop serving it (see :meth:`overwritten`)."""
        from .base import utc_now_iso

        doc = b'{"format":"functionfuse-overwrite","key":"%s","time":"%s"}\n' % (key.encode(), utc_now_iso().encode())
        self._publish(f"{OVERWRITES}/{key}.json", doc, replace=True)

    def overwritten(self) -> set[str]:
        """The keys whose manifest was written over at some time (forced, or replacing a
        damaged one): one listing of ``overwrites/``.

        A run record carries the small results of its run (its ``values``), so a cached
        rerun does not open their manifests.  When any writer, of this workflow or
        another one, stores a key again, the copy a record carries may be another
        result than the store's: readers leave those keys to their manifests.
        """
        folder = self._path(OVERWRITES)
        with self.objects._io("listing", OVERWRITES, folder):
            if self._local or not self.objects._s3:  # a folder, or another fsspec file system
                try:
                    names = os.listdir(folder) if self._local else self.objects.fs.ls(folder, detail=False)
                except FileNotFoundError:
                    return set()
            else:  # one LIST per 1,000 notes (s3fs's ls lists the parent too when none is there)
                names = self._s3_keys(folder)
        return {posixpath.basename(n)[:-5] for n in names if n.endswith(".json")}  # type: ignore[union-attr]

    def forget_overwrites(self, keys: Iterable[str]) -> None:
        """Delete the overwrite notes of ``keys`` (their results are removed)."""
        noted = self.overwritten() & set(keys)
        fs = self.objects.fs
        for key in sorted(noted):
            relative = f"{OVERWRITES}/{key}.json"
            with self.objects._io("deleting", relative, self._path(relative)):
                with suppress(FileNotFoundError):
                    fs.rm_file(self._path(relative))

    def start_pack(self) -> None:
        """Pack the small manifests saved from now on (a run starts in this process)."""
        self.packing = self._local

    def close_pack(self) -> None:
        """Stop packing; write the index file of the run's pack and let go of it (the
        run ended)."""
        self.packing = False
        if self._pack_writer is not None:
            self._pack_writer.close()

    @property
    def packs(self) -> PackIndex:
        """The index of this store's packs (local folders; empty elsewhere)."""
        if self._pack_index is None:
            self._pack_index = PackIndex(self._path(PACKS))
        return self._pack_index

    def _mark(self) -> None:
        """Once per process and store, before its first write: write ``FFSTORE.json``
        (format and version) create-if-absent, and remove temporaries (and, on S3,
        multipart uploads) that crashed writers left more than an hour ago."""
        if not self._marked:
            self._marked = True
            if not (self._local and os.path.exists(self._path(MARKER))):
                self._publish(MARKER, MARKER_BYTES, replace=False)
            try:
                removed = self.objects.remove_stale_temporaries()
            except StorageError as exc:  # never fails a run: the next one tries again
                logger.warning("temporaries of crashed writers left in place: %s", exc)
            else:
                if removed:
                    logger.info("removed %d temporaries left by crashed writers in %s", removed, self.objects.url)

    def _publish(self, relative: str, data: bytes, *, replace: bool) -> bool:
        """Write a small document create-if-absent (``replace``: over a damaged one).

        Returns False when another writer had published it first.
        """
        final = self._path(relative)
        with self.objects._io("publishing", relative, final):
            if self._local:
                return self._publish_local(final, data, replace)
            if self.objects._s3:
                return self._publish_s3(final, data, replace)
            if replace or not self.objects.fs.exists(final):
                self.objects.fs.pipe_file(final, data)
                return True
            return False

    def _publish_local(self, final: str, data: bytes, replace: bool) -> bool:
        if _O_TMPFILE and not replace and not self.objects.durable:
            # An anonymous file in the target folder, linked to its name: no temporary
            # name to create and remove, and link() fails when the name exists.
            folder = os.path.dirname(final)
            try:
                fd = os.open(folder, _O_TMPFILE | os.O_WRONLY, 0o644)
            except FileNotFoundError:
                os.makedirs(folder, exist_ok=True)
                fd = os.open(folder, _O_TMPFILE | os.O_WRONLY, 0o644)
            except OSError:
                fd = -1  # the filesystem has no O_TMPFILE: the temporary-name path below
            if fd >= 0:
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    try:
                        os.link(f"/proc/self/fd/{fd}", final, src_dir_fd=fd, follow_symlinks=True)
                    except FileExistsError:
                        return False  # another writer published this key first: same computation
                    return True
                finally:
                    os.close(fd)
        tmp = self._path(f"tmp/{uuid.uuid4().hex}-{os.getpid()}")
        os.makedirs(os.path.dirname(tmp), exist_ok=True)
        with open(tmp, "xb") as fh:
            fh.write(data)
            if self.objects.durable:
                os.fsync(fh.fileno())
        os.makedirs(os.path.dirname(final), exist_ok=True)
        try:
            if replace:
                os.replace(tmp, final)
                return True
            try:
                os.link(tmp, final)
            except FileExistsError:
                return False  # another writer published this key first: same computation
            return True
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def _publish_s3(self, final: str, data: bytes, replace: bool) -> bool:
        from .s3store import _error_code

        fs = self.objects.fs
        bucket, key, _ = fs.split_path(final)
        if not replace and not self.objects._conditional and fs.exists(final):
            return False  # an endpoint without conditional writes: look, then write
        condition = {} if replace or not self.objects._conditional else {"IfNoneMatch": "*"}
        for attempt in range(4):
            try:
                fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, **condition)
                return True
            except Exception as exc:  # noqa: BLE001 - told apart below
                code = _error_code(exc)
                if isinstance(exc, FileExistsError) or code in ("PreconditionFailed", "412"):
                    return False  # published by another writer first
                if code == "ConditionalRequestConflict" and attempt < 3:
                    time.sleep(0.05 * (attempt + 1))
                    continue
                if condition and code in ("NotImplemented", "501"):
                    logger.warning("storage %s: no conditional writes, publishing with HEAD then PUT", self.objects.url)
                    self.objects._conditional = False
                    return self._publish_s3(final, data, replace)
                raise
        return False  # pragma: no cover - the loop returns or raises

    def record_run(self, workflow: str, run_id: str, nodes: dict[str, dict[str, Any]], **fields: Any) -> str:
        """Write the record of one run (see :func:`~.runs.encode_record`); returns its path."""
        relative = run_path(workflow, run_id)
        self._mark()
        self._publish(relative, encode_record(workflow, run_id, nodes, **fields), replace=False)
        return relative

    def begin_run(self, workflow: str, run_id: str, *, base: str | None, keys: Iterable[str]) -> str:
        """Write the lease of a run that starts (see :func:`~.runs.encode_lease`); returns its path."""
        from .base import utc_now_iso

        relative = lease_path(workflow, run_id)
        self._mark()
        # Run ids are unique: create-if-absent (no temporary name to rename).
        self._publish(relative, encode_lease(workflow, run_id, base=base, keys=keys, started=utc_now_iso()),
                      replace=False)
        return relative

    def end_run(self, workflow: str, run_id: str) -> None:
        """Remove a run's lease (absent is fine)."""
        relative = lease_path(workflow, run_id)
        path = self._path(relative)
        with self.objects._io("deleting", relative, path):
            if self._local:
                with suppress(FileNotFoundError):
                    os.unlink(path)
            else:
                with suppress(FileNotFoundError):
                    self.objects.fs.rm_file(path)

    def remove_runs(self, workflow: str) -> None:
        """Delete every run record of ``workflow``."""
        folder = self._path(run_folder(workflow))
        fs = self.objects.fs
        with self.objects._io("deleting", run_folder(workflow), folder):
            try:
                names = fs.ls(folder, detail=False)
            except FileNotFoundError:
                return
            for name in names:
                with suppress(FileNotFoundError):
                    fs.rm_file(name)
            if self._local:
                with suppress(OSError):
                    os.rmdir(folder)

    def keys_in_use(self, exclude: str | None = None) -> set[str]:
        """Keys of the current state of every workflow (but ``exclude``): one record read each."""
        from .base import current_view
        from .names import encode_name

        top = self._path("runs")
        fs = self.objects.fs
        skip = encode_name(exclude) if exclude is not None else None
        with self.objects._io("listing", "runs", top):
            try:
                folders = fs.ls(top, detail=False)
            except FileNotFoundError:
                return set()
        used: set[str] = set()
        for folder in folders:
            name = posixpath.basename(folder.rstrip("/"))
            if name == skip:
                continue
            with self.objects._io("listing", f"runs/{name}", folder):
                run_id = latest_run_id(fs.ls(folder, detail=False))
            if run_id is None:
                continue
            relative = f"runs/{name}/{run_id}.json"
            try:
                with self.objects._io("reading", relative, self._path(relative)):
                    record = decode_record(self._get(self._path(relative)), relative)
            except (CorruptEntryError, EntryNotFoundError):
                continue
            used.update(current_view(record).values())
        return used

    def remove_keys(self, keys: Iterable[str], *, persistence: Any = None) -> None:
        """Delete the manifests of ``keys``, their side data, and the objects no other manifest names.

        A manifest is deleted before its objects, so a reader never finds a
        manifest whose objects are gone.  A writer that publishes a manifest
        naming one of these objects while they are deleted loses it; its next
        load detects the missing object and recomputes the node.
        """
        from ..serializers import persistent

        keys = set(keys)
        if not keys:
            return
        candidates: set[str] = set()
        for key in keys:
            try:
                doc = self.read_manifest(key)
            except (CorruptEntryError, EntryNotFoundError):
                doc = {"parts": []}
            for part in doc["parts"]:
                candidates.add(part.get("object"))
                if persistence is not None:
                    self._remove_side_data(part, persistence, persistent)
        self.delete_manifests(keys)
        candidates.discard(None)
        if candidates:
            for doc in self.iter_manifests():
                candidates.difference_update(p.get("object") for p in doc["parts"])
                if not candidates:
                    break
        for hash in candidates:
            self.objects.delete(hash)

    def _remove_side_data(self, part: dict, persistence: Any, persistent: Any) -> None:
        info = part.get("info") or {}
        try:
            if part.get("format") == persistent.SERIALIZER:
                name, pid = persistent.read_pid(self.objects.get_bytes(ObjectRef.from_json(part)), safe=True)
                persistence.remove(name, pid, info.get("side"))
            for entry in info.get("persistent") or ():
                if isinstance(entry, list) and len(entry) == 2 and entry[1] is not None:
                    persistence.remove(entry[0], entry[1], info.get("side"))
        except Exception as exc:  # noqa: BLE001 - removal goes on; the leftovers are only space
            logger.warning("side data of a removed result left in place (%s)", exc)

    def delete_manifests(self, keys: Iterable[str]) -> None:
        """Delete the manifests of ``keys``: loose files, and their lines in packs (by
        rewriting those packs, see :func:`.packs.rewrite`).  Objects are left alone."""
        keys = set(keys)
        fs = self.objects.fs
        for key in sorted(keys):
            relative = manifest_path(key)
            with self.objects._io("deleting", relative, self._path(relative)):
                with suppress(FileNotFoundError):
                    fs.rm_file(self._path(relative))
        if self._local and keys:
            self.rewrite_packs(lambda key, _: key not in keys, only=keys)
        if keys:
            self.forget_overwrites(keys)

    def rewrite_packs(self, keep: Any, *, only: set[str]) -> list[str]:
        """Rewrite the packs holding a line of ``only`` with the lines ``keep(key,
        manifest bytes)`` accepts, until no pack but those still being written holds
        one (a pack rewritten meanwhile by another is looked at again).  Returns the
        names of the packs left as they are because their run still writes them: their
        lines go at a later ``gc``."""
        index = self.packs
        busy: set[str] = set()
        waits = 0
        for _ in range(64):  # bounded: each round rewrites, or waits for a holder
            with self.objects._io("listing", PACKS, index.folder):
                index.refresh()
            names = sorted(index.packs_of(only))
            if not names:
                break  # no pack holds a line of these keys any more
            busy = set()
            for name in names:
                path = posixpath.join(index.folder, name)
                with self.objects._io("rewriting", f"{PACKS}/{name}", path):
                    if rewrite(index.folder, name, keep, durable=self.objects.durable) == BUSY:
                        busy.add(name)
            # A pack gone when opened was rewritten by another: its successor, listed at
            # the next round, may still hold our keys.  Busy: a run writing it (for its
            # whole length), or another rewriter (for milliseconds): look again a few
            # times before leaving it to a later gc.
            if busy == set(names):
                if waits >= BUSY_WAITS:
                    break
                waits += 1
                time.sleep(0.02 * waits)
        if busy:
            logger.info("storage %s: %d pack(s) still written by a running run keep lines of removed results "
                        "until a later gc: %s", self.objects.url, len(busy), ", ".join(sorted(busy)))
        return sorted(busy)

    def clean_packs(self, grace_s: float, *, dry_run: bool = False) -> list[str]:
        """Rewrite the packs no run is writing (see :func:`.packs.is_busy`) that hold a
        cut last line, a damaged line or no line at all, or lack a good index file,
        keeping their good lines; remove index files whose pack is gone.  Returns the
        names of the packs rewritten (``gc``: what killed writers leave)."""
        if not self._local:
            return []
        index = self.packs
        cleaned = []
        with self.objects._io("cleaning", PACKS, index.folder):
            index.refresh()
            with suppress(FileNotFoundError):
                for orphan in sorted(n for n in os.listdir(index.folder) if n.endswith(".idx")):
                    pack = posixpath.join(index.folder, orphan[:-4] + ".pack")
                    if not os.path.exists(pack) and not dry_run:  # looked at just before: not one being closed
                        with suppress(FileNotFoundError):
                            os.unlink(posixpath.join(index.folder, orphan))
        for name in index.names():
            path = posixpath.join(index.folder, name)
            if is_busy(index.folder, name):
                continue
            try:
                with open(path, "rb") as fh:
                    data = fh.read()
            except FileNotFoundError:
                continue
            lines, consumed = scan(data)
            whole = data.startswith(HEADER) and lines and consumed == len(data)
            indexed = whole and index.has_index(name, len(data))
            if indexed and all(self._good_line(k, data[o:o + n]) for k, o, n in lines):
                continue
            if not dry_run:
                with self.objects._io("rewriting", f"{PACKS}/{name}", path):
                    if rewrite(index.folder, name, self._good_line, durable=self.objects.durable) == BUSY:
                        continue
            cleaned.append(name)
        return cleaned

    def _good_line(self, key: str, data: bytes) -> bool:
        try:
            decode_manifest(data, key, "a pack line")
        except CorruptEntryError:
            return False
        return True

    def manifest_keys(self) -> list[str]:
        """Every key with a manifest: loose files (one listing of ``manifests/``) and
        lines of packs (sorted)."""
        top = self._path("manifests")
        with self.objects._io("listing", "manifests", top):
            try:
                if self._local:
                    paths = [e.path for d in os.scandir(top) if d.is_dir() for e in os.scandir(d.path)]
                else:
                    paths = self.objects.fs.find(top)
            except FileNotFoundError:
                paths = []
        keys = {posixpath.basename(p)[:-5] for p in paths if p.endswith(".json")}
        if self._local:
            with self.objects._io("listing", PACKS, self._path(PACKS)):
                self.packs.refresh()
            keys |= self.packs.keys()
        return sorted(keys)

    def iter_manifests(self) -> Iterator[dict[str, Any]]:
        """Every readable manifest of the store (damaged ones are skipped)."""
        for key in self.manifest_keys():
            try:
                yield self.read_manifest(key)
            except (CorruptEntryError, EntryNotFoundError):
                continue

    # -- reading ----------------------------------------------------------------
    def read_manifest(self, key: str) -> dict[str, Any]:
        """The checked manifest of ``key`` (EntryNotFoundError / CorruptEntryError)."""
        return self.manifest_entry(key)[0]

    def manifest_entry(self, key: str) -> tuple[dict[str, Any], bytes]:
        """``(checked manifest, its stored bytes)`` of ``key``: the loose file, or on a
        local folder the first good line of the packs (docs/format.md, "Packs")."""
        relative = manifest_path(key)
        final = self._path(relative)
        if self._local:  # the cache-hit hot path: one open and one read, no fsspec
            try:
                data = _read_local(final)
            except FileNotFoundError:
                return self._packed_entry(key)
            except OSError as exc:
                raise StorageError(f"reading {final} of storage {self.objects.url} failed: {exc}") from exc
            return decode_manifest(data, key, lambda: f"{relative} of storage {self.objects.url}"), data
        try:
            with self.objects._io("reading", relative, final):
                data = self._get(final)
        except StorageError as exc:
            if isinstance(exc.__cause__, FileNotFoundError):
                raise EntryNotFoundError(f"no result stored for key {key} in {self.objects.url}") from None
            raise
        return decode_manifest(data, key, f"{relative} of storage {self.objects.url}"), data

    def _packed_entry(self, key: str) -> tuple[dict[str, Any], bytes]:
        """The first good pack line of ``key`` (docs/format.md, "Packs")."""
        damage: CorruptEntryError | None = None
        with self.objects._io("reading", PACKS, self._path(PACKS)):
            lines = self.packs.lines(key)
        for name, offset, data in lines:
            try:
                return decode_manifest(data, key, f"{PACKS}/{name} (byte {offset}) of storage {self.objects.url}"), data
            except CorruptEntryError as exc:
                damage = damage or exc
        if damage is not None:
            raise damage
        raise EntryNotFoundError(f"no result stored for key {key} in {self.objects.url}")

    def load(
        self, key: str, manifest: dict[str, Any] | None = None, *, persistence: Any = None,
        fresh: bool | None = None,
    ) -> Any:
        """The value stored for ``key``, every part checked before it is decoded.

        ``fresh`` says the manifest was parsed for this load only, so its JSON
        lists may become part of the value (default: when it is read here).
        """
        if fresh is None:
            fresh = manifest is None
        doc = manifest if manifest is not None else self.read_manifest(key)
        parts = doc["parts"]
        if not parts:  # a small result: the tree holds it all
            try:
                return join(doc["result"], parts, (), safe=self.safe, copy=not fresh)
            except (FunctionFuseError, MemoryError):
                raise
            except Exception as exc:  # noqa: BLE001 - a checked manifest whose tree lies
                raise CorruptEntryError(f"result of key {key} cannot be decoded ({type(exc).__name__}: {exc})") from exc

        def reader(i: int) -> Any:
            part = parts[i]
            try:
                ref = ObjectRef.from_json(part)
            except (ValueError, TypeError, KeyError) as exc:
                raise CorruptEntryError(f"manifest of key {key}: part {i} names no valid object ({exc})") from None
            codec = part.get("codec")
            local = self.objects.local_path(ref)
            if local is not None and codec is None and part["format"] == "npy" and ref.size >= MMAP_THRESHOLD:
                if os.path.getsize(local) != ref.size:
                    raise CorruptEntryError(f"object {ref.hash} of key {key}: size differs from its manifest")
                from . import latecheck

                latecheck.submit(local, ref.size, ref.xxh3, persistent.origin())
                return local  # memory-mapped; its XXH3 is checked after the load (latecheck)
            if local is not None and codec is None and part["format"] == "parquet" and ref.size >= NATIVE_READ:
                return self.objects.checked_path(ref)  # checked in place, then read by pyarrow natively
            data = self.objects.get_bytes(ref)
            if codec is not None:
                from .codecs import decompress

                return decompress(data, codec, name=ref.hash)
            return data

        readers = _Readers(reader, len(parts))
        try:
            with persistent.active(persistence), persistent.loading(self._origin(key, doc)):
                return join(doc["result"], parts, readers, safe=self.safe, copy=not fresh)
        except (FunctionFuseError, MemoryError):
            raise
        except Exception as exc:  # a decoder failing on checked bytes: the manifest lies
            raise CorruptEntryError(f"result of key {key} cannot be decoded ({type(exc).__name__}: {exc})") from exc

    def _origin(self, key: str, doc: dict[str, Any]) -> Any:
        """Where a load reads from, for serializers reading side data lazily."""
        node, workflow = doc.get("node"), doc.get("workflow")
        options = None if self._local else dict(getattr(self.objects.fs, "storage_options", {}) or {})
        return persistent.EntryOrigin(
            node if isinstance(node, str) else None, workflow if isinstance(workflow, str) else None,
            key, self.objects.url, options, _identity(doc),
        )

    def withdraw(self, key: str, identity: str, damage: str) -> bool:
        """Delete the manifest of ``key``, whose side data was found damaged after
        it was loaded, when it is still the manifest of that load (the objects it
        names, ``identity``); True when deleted.  ``damage`` says what is damaged (logged).

        Lazily read side data (a dask array over HDF5 or zarr) is checked chunk
        by chunk when computed, long after the entry was loaded: deleting the
        manifest makes the next run recompute the node (a run taking the key
        from its record finds no manifest and recomputes, see
        ``docs/format.md``).  The damaged side data is left to ``gc``.  A
        manifest replaced meanwhile (the node recomputed elsewhere) is kept.
        """
        try:
            doc = self.read_manifest(key)
        except EntryNotFoundError:
            return False
        except CorruptEntryError:
            doc = None  # damaged itself: withdrawn all the same
        if doc is not None and _identity(doc) != identity:
            return False
        self.delete_manifests([key])
        logger.warning("storage %s: the entry of key %s was withdrawn (%s); the next run recomputes it",
                       self.objects.url, key, damage)
        return True

    def manifest_digest(self, key: str) -> str | None:
        """XXH3-128 of the stored bytes of ``key``'s manifest, damaged or not; None when
        there is none (tells a manifest written again from the one read before)."""
        import xxhash

        relative = manifest_path(key)
        final = self._path(relative)
        try:
            with self.objects._io("reading", relative, final):
                data = _read_local(final) if self._local else self._get(final)
        except FileNotFoundError:
            data = None
        except StorageError as exc:
            if not isinstance(exc.__cause__, FileNotFoundError):
                raise
            data = None
        if data is None and self._local:  # the first line of the packs, damaged or not
            with self.objects._io("reading", PACKS, self._path(PACKS)):
                lines = self.packs.lines(key)
            data = lines[0][2] if lines else None
        return None if data is None else xxhash.xxh3_128(data).hexdigest()

    def present(self, keys: Iterable[str]) -> set[str]:
        """The keys among ``keys`` whose manifest exists (one stat each locally; on S3,
        concurrent HEADs, or for many keys a listing of ``manifests/`` while it is short)."""
        keys = list(dict.fromkeys(keys))
        paths = [self._path(manifest_path(k)) for k in keys]
        fs = self.objects.fs
        if self._local:
            # A missing folder answers for every key under it (a fresh store: 256 stats
            # at most, however many keys).
            folders: dict[str, bool] = {}
            found = set()
            for k, p in zip(keys, paths):
                folder = p[: p.rfind("/")]
                there = folders.get(folder)
                if there is None:
                    there = folders[folder] = os.path.isdir(folder)
                if there and os.path.exists(p):
                    found.add(k)
            if len(found) < len(keys):  # the others may be lines of packs
                index = self.packs
                with self.objects._io("listing", PACKS, self._path(PACKS)):
                    index.refresh()
                found.update(k for k in keys if k in index)
            return found
        if not self.objects._s3:
            return {k for k, p in zip(keys, paths) if fs.exists(p)}
        if len(keys) > LIST_OVER:
            listed = self._listed_manifests()
            if listed is not None:
                return {k for k in keys if k in listed}
        from fsspec.asyn import sync

        # Concurrent HEADs (no LIST after a miss, as fs.exists would add).
        found = sync(fs.loop, self.objects._heads, paths) if paths else []
        for path, got in zip(paths, found):
            if isinstance(got, BaseException):
                raise self.objects._error(got, "checking", path.rsplit("/", 1)[-1], path) from got
        return {k for k, got in zip(keys, found) if got is not None}

    def _listed_manifests(self) -> set[str] | None:
        """The keys of every manifest on S3 from one paginated listing of ``manifests/``,
        or None when it holds more than :data:`LIST_PAGES` pages (then HEADs are cheaper)."""
        with self.objects._io("listing", "manifests", self._path("manifests")):
            keys = self._s3_keys(self._path("manifests"), LIST_PAGES)
        if keys is None:
            return None
        return {name[:-5] for name in (k.rsplit("/", 1)[-1] for k in keys) if name.endswith(".json")}

    def _s3_keys(self, folder: str, pages: int | None = None) -> list[str] | None:
        """Every object key under ``folder`` on S3 (``list_objects_v2``, 1,000 a page), or
        None when there are more than ``pages`` pages."""
        fs = self.objects.fs
        bucket, prefix, _ = fs.split_path(folder)
        request: dict = {"Bucket": bucket, "Prefix": prefix + "/", "MaxKeys": 1000}
        keys: list[str] = []
        done = 0
        while pages is None or done < pages:
            page = fs.call_s3("list_objects_v2", **request)
            done += 1
            keys.extend(item["Key"] for item in page.get("Contents", ()))
            if not page.get("IsTruncated"):
                return keys
            request["ContinuationToken"] = page["NextContinuationToken"]
        return None

    def latest_run(self, workflow: str) -> dict[str, Any] | None:
        """The latest readable run record of ``workflow`` (None before its first run).

        A damaged latest record is reported and the one before it is used (up
        to :data:`RECORD_FALLBACK` records back).
        """
        folder = self._path(run_folder(workflow))
        with self.objects._io("listing", run_folder(workflow), folder):
            try:
                names = os.listdir(folder) if self._local else self.objects.fs.ls(folder, detail=False)
            except FileNotFoundError:
                return None
        damaged: CorruptEntryError | None = None
        for _ in range(RECORD_FALLBACK):
            run_id = latest_run_id(names)
            if run_id is None:
                break
            names = [n for n in names if run_id not in n]
            relative = run_path(workflow, run_id)
            with self.objects._io("reading", relative, self._path(relative)):
                data = self._get(self._path(relative))
            try:
                record = decode_record(data, f"{relative} of storage {self.objects.url}")
            except CorruptEntryError as exc:
                logger.warning("workflow %r: %s; using the run record before it", workflow, exc)
                damaged = damaged or exc
                continue
            if record.get("workflow") != workflow:  # a long name shortened like another's
                return None
            return record
        if damaged is not None:
            raise damaged
        return None

    def _get(self, path: str) -> bytes:
        """A small file's bytes: one read locally, one GET on S3 (no HEAD first)."""
        if self._local:
            return _read_local(path)
        if self.objects._s3:
            return self.objects.fs.cat_file(path, max_concurrency=1)
        return self.objects.fs.cat_file(path)


def _read_local(path: str) -> bytes:
    """A small file's bytes: one read of up to 64 KiB, more only when it is larger."""
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.read(fd, 1 << 16)
        if len(data) < 1 << 16:
            return data
        chunks = [data]
        while True:
            more = os.read(fd, 1 << 20)
            if not more:
                return b"".join(chunks)
            chunks.append(more)
    finally:
        os.close(fd)


def _identity(doc: dict[str, Any]) -> str:
    """The objects a manifest names, in order: a manifest written again (another
    computation) names other side data, hence other objects."""
    return ",".join(str(p.get("object")) for p in doc.get("parts", ()) if isinstance(p, dict))


class _Readers:
    """``readers[i]`` for :func:`~functionfuse.serializers.parts.join`, fetched on demand."""

    def __init__(self, read: Any, count: int) -> None:
        self._read, self._count = read, count

    def __getitem__(self, i: int) -> Any:
        if not 0 <= i < self._count:
            raise CorruptEntryError(f"the result tree names part {i}; the manifest has {self._count}")
        return self._read(i)  # checked bytes, or the path of a part to memory-map
