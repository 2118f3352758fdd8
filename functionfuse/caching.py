"""The caching core: node keys, the run plan, and ``run_node``.

Every backend goes through this module; backends only schedule.

Keys
----
A node's key is a Merkle hash::

    key = H("node", fingerprint, previous-call key, arguments, captured inputs)

* ``fingerprint`` is the normalised source of the function (or the explicit
  ``version``), see :mod:`functionfuse.fingerprint`;
* an argument that is a node contributes that node's *key* (and the subscript
  path for ``node[i]``), never its result, so validating a downstream entry
  never loads or hashes an upstream result;
* literal arguments are tokenized by :mod:`functionfuse.hashing`;
* closure values and default values of the function are inputs too;
* a method call on a stateful class node includes the key of the previous
  call on the same instance, so a chain is keyed by its whole history.

Plan
----
At the start of a run the driver reads the workflow's latest run record
(``storage.scan``: its keys are taken as stored), keys every node, looks up
the keys the record does not name in one batch (``storage.present``), and
decides what must run:

* a node whose key has no stored result runs (reason ``new``, ``code
  changed`` or ``input changed``, told apart from the manifest of the node's
  version in the latest run);
* a forced node runs (``forced``) and so does everything downstream of it
  (``upstream forced``);
* nodes kept out of storage (``log_nodes``) always run;
* when one call of a stateful chain must run, the instance is rebuilt and
  every earlier call is replayed so its state is right (``replay``).

Everything else is *lazy*: a cached node is loaded only when a node that runs
needs its value, or when its result is returned; small results come from the
run record itself (its ``values``).  A damaged result found while loading is
reported with a warning and recomputed; a result whose class changed its
schema is recomputed quietly.  At the end of every run, :func:`record_run`
writes its record (one small write).

``run_node`` (compute, store, optionally re-read) and ``load_node`` are the
only two operations a backend performs on a node.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import re
import time
import uuid
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .arguments import _params, summarize_arguments
from .cutoff import content_digest, note_previous, recipe_member, records_inputs
from .errors import (
    CorruptEntryError,
    EntryNotFoundError,
    GraphError,
    HashingError,
    NodeExecutionError,
    SchemaChangedError,
    SerializationError,
    SerializerNotRegisteredError,
    StorageError,
)
from .fingerprint import describe_change, function_inputs, node_fingerprint, planning
from .graph import _FIRST_SLOT, BaseNode, ClassCallNode, ClassInitNode, FunctionNode, NodeItem, describe
from .hashing import Encoder, Unhashable, _type_name, user_stacklevel
from .storage import latecheck

__all__ = [
    "Task",
    "Plan",
    "CacheEvent",
    "RunReport",
    "make_plan",
    "run_node",
    "store_node",
    "begin_run",
    "end_run",
    "load_node",
    "CacheWarning",
]

_sha256 = hashlib.sha256
logger = logging.getLogger(__name__)

# Reasons a node runs or not.
NEW = "new"
CODE_CHANGED = "code changed"
INPUT_CHANGED = "input changed"
FORCED = "forced"
UPSTREAM_FORCED = "upstream forced"
CORRUPT = "corrupt entry"
UNREADABLE = "unreadable entry"
SCHEMA_CHANGED = "result schema changed"
NO_STORAGE = "no storage"
NOT_STORED = "not stored"
REPLAY = "replay"
CACHED = "cached"
UNHASHABLE = "unhashable input"


class CacheWarning(UserWarning):
    """A cache problem that does not stop the run (corrupt entry, unhashable input)."""


@dataclass(slots=True)
class CacheEvent:
    """What happened to one node in one run.

    ``action`` is ``"computed"``, ``"read"`` (loaded from storage),
    ``"skipped"`` (cached and not needed: not loaded at all), ``"replayed"``
    (executed to rebuild a stateful object's state), ``"failed"`` (its
    function raised, or its result could not be stored) or ``"not run"``
    (it had to run but the run stopped first: an earlier failure or an
    interruption).  ``seconds`` is the time the node's function (or the load)
    took; 0 for skipped and not run nodes.
    """

    node: str
    key: str | None
    action: str
    reason: str
    seconds: float = 0.0


#: Actions in the order a report lists their counts.
ACTIONS = ("computed", "read", "replayed", "skipped", "failed", "not run")


def format_seconds(seconds: float) -> str:
    """A duration for people: ``'850 µs'``, ``'12.3 ms'``, ``'4.20 s'``, ``'3 min 05 s'``.

    >>> format_seconds(0.0123), format_seconds(4.2), format_seconds(185)
    ('12.3 ms', '4.20 s', '3 min 05 s')
    """
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest:02d} s"


class RunReport:
    """Per-node events of one run, in traversal order (built on first access).

    ``str(report)`` lists every node with what happened, why and how long it
    took, then the totals; :meth:`summary` is the first line alone.
    ``seconds`` is the run's wall time (None when unknown).
    """

    def __init__(
        self,
        workflow: str,
        events: list[CacheEvent] | None = None,
        tasks: list | None = None,
        seconds: float | None = None,
    ):
        self.workflow = workflow
        self._events = events
        self._tasks = tasks
        self.seconds = seconds

    @property
    def events(self) -> list[CacheEvent]:
        if self._events is None:
            self._events = [CacheEvent(t.name, t.key, t.action, t.reason, t.seconds) for t in self._tasks or ()]
            self._tasks = None
        return self._events

    def by_node(self) -> dict[str, CacheEvent]:
        return {e.node: e for e in self.events}

    def nodes(self, action: str) -> list[str]:
        """Names of the nodes with ``action`` (computed / read / skipped / replayed / failed / not run)."""
        return [e.node for e in self.events if e.action == action]

    @property
    def computed(self) -> list[str]:
        return self.nodes("computed")

    @property
    def read(self) -> list[str]:
        return self.nodes("read")

    @property
    def skipped(self) -> list[str]:
        return self.nodes("skipped")

    @property
    def failed(self) -> list[str]:
        return self.nodes("failed")

    @property
    def not_run(self) -> list[str]:
        return self.nodes("not run")

    def counts(self) -> dict[str, int]:
        """Number of nodes per action, in :data:`ACTIONS` order."""
        counts: dict[str, int] = {}
        for e in self.events:
            counts[e.action] = counts.get(e.action, 0) + 1
        return {a: counts[a] for a in sorted(counts, key=lambda a: (ACTIONS + (a,)).index(a))}

    def summary(self) -> str:
        counts = self.counts()
        parts = ", ".join(f"{n} {a}" for a, n in sorted(counts.items()))
        return f"workflow {self.workflow!r}: {parts or 'nothing to do'}"

    def totals(self) -> str:
        """Time spent per action, and the run's wall time."""
        spent: dict[str, float] = {}
        for e in self.events:
            if e.seconds:
                spent[e.action] = spent.get(e.action, 0.0) + e.seconds
        parts = [f"{action} {format_seconds(spent[action])}" for action in ACTIONS if action in spent]
        text = "time in nodes: " + (", ".join(parts) if parts else "none")
        if self.seconds is not None:
            text += f"; run {format_seconds(self.seconds)}"
        return text

    def __str__(self) -> str:
        lines = [self.summary()]
        for e in self.events:
            took = f" in {format_seconds(e.seconds)}" if e.seconds else ""
            lines.append(f"  {e.node}: {e.action} ({e.reason}){took}")
        lines.append("  " + self.totals())
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        """The report as an HTML table (node, action, reason, time), shown by Jupyter."""
        from .drawing import html_table

        rows = (
            (e.node, e.action, e.reason, format_seconds(e.seconds) if e.seconds else "") for e in self.events
        )
        return html_table(self.summary(), ("node", "action", "reason", "time"), rows, footer=self.totals())


class Task:
    """One node's part in one run (what backends schedule).

    The fields every stored node sets (``key``, ``fingerprint``, ``code``,
    ``entry``, ``store``, ``tree``) are slots; the others are class-level defaults, set on
    the instance only when needed (``__dict__`` in the slots makes that possible).
    """

    __slots__ = ("node", "name", "func", "deps", "uses", "run", "reason", "action", "seconds",
                 "key", "fingerprint", "code", "entry", "store", "tree", "__dict__")

    # key: str | None                the node's cache key (None without storage)
    # fingerprint: str | None        its code's fingerprint
    # code: dict | None              parts of the fingerprint (function, refs), for reports
    # entry: str | None              the key of a stored result to load (a cache hit)
    # store: bool                    whether its result is stored
    # tree: Any                      the result's tree when small enough for the run record
    arguments: dict | None = None  # JSON summary of the literal arguments (metadata)
    overwrite = False
    previous: str | None = None  # the key of the node's current stored version, when it differs
    method: str | None = None  # for a call on a stateful instance
    # Early cutoff (functionfuse.cutoff): whether the result records its inputs, the
    # stored version's record, content digest and manifest, and whether the run checks it.
    recipe: bool | None = None  # whether its manifest records its inputs (None: not decided yet)
    previous_recipe: dict | None = None
    previous_content: str | None = None
    previous_manifest: dict | None = None
    unstored_inputs: tuple = ()  # positions of inputs kept out of storage (no digest to record)
    cutoff = False

    def __init__(self, node: BaseNode, name: str, func: Any, deps: list[Task] | None = None) -> None:
        self.node = node
        self.name = name
        self.func = func
        self.deps: list[Task] = [] if deps is None else deps
        self.uses = 0  # running consumers left (the local backend frees values at 0)
        self.run = True
        self.reason = NO_STORAGE
        self.action = "skipped"
        self.seconds = 0.0
        self.key: str | None = None
        self.fingerprint: str | None = None
        self.code: dict | None = None
        self.entry: str | None = None
        self.store = False
        self.tree: Any = None

    def fields(self, names: Iterable[str]) -> dict[str, Any]:
        """The cache fields among ``names`` this task sets (those left at their
        default are left out), for a worker's copy (see :meth:`set_fields`)."""
        out = {}
        for name in names:
            if name in _SLOT_DEFAULTS:
                value = getattr(self, name)
                if value is not _SLOT_DEFAULTS[name]:
                    out[name] = value
            elif name in self.__dict__:
                out[name] = self.__dict__[name]
        return out

    def set_fields(self, fields: dict[str, Any]) -> None:
        """Set the fields :meth:`fields` returned (on a copy of the task)."""
        for name, value in fields.items():
            setattr(self, name, value)

    def __repr__(self) -> str:
        return f"<Task {self.name} run={self.run} reason={self.reason!r}>"


#: The defaults of the cache fields that are slots of Task (set by its __init__).
_SLOT_DEFAULTS: dict[str, Any] = {"key": None, "fingerprint": None, "code": None, "entry": None, "store": False,
                                  "tree": None}


@dataclass
class Plan:
    """Keys and decisions for one run of one workflow."""

    workflow: str
    tasks: list[Task]
    by_node: dict[int, Task]
    storage: Any = None
    listing: Any = None  # the storage's Listing the plan was made from
    started: float = 0.0  # time.time() when the plan was made
    run_id: str | None = None  # set by begin_run: the id of the run's record (and lease)
    leased: bool = False  # whether begin_run wrote a lease
    #: Called as ``waiting(node name, holder's lease)`` when a node waits for another
    #: run that computes it (storage option ``lease``); the progress display's.
    waiting: Any = None
    #: Set (a ``threading.Event``) when a failing run stops waiting for node leases.
    stop_waiting: Any = None
    #: Seconds spent on each part of planning: ``listing`` (reading the latest run record),
    #: ``tasks and keys`` (one task and key per node, hits on the record decided),
    #: ``decisions`` (the rest, after one batched lookup) (logged at DEBUG).
    phases: dict[str, float] = field(default_factory=dict)
    #: The fingerprint cache and the backend's extra key inputs keying used (early
    #: cutoff computes recipes with them, see :mod:`functionfuse.cutoff`).
    fp_cache: dict | None = None
    extra: dict[int, bytes] | None = None
    #: Content digests of stored results learnt during the run (key -> digest or None),
    #: and ``id(task)`` of the tasks whose digest a possible cutoff will ask for.
    contents: dict[str, str | None] = field(default_factory=dict)
    wanted: set[int] = field(default_factory=set)

    def task(self, node: BaseNode) -> Task:
        return self.by_node[id(node)]

    def report(self, seconds: float | None = None) -> RunReport:
        return RunReport(self.workflow, tasks=self.tasks, seconds=seconds)


# -- keys -----------------------------------------------------------------------


def _fingerprint(node: BaseNode, func: Any) -> tuple[str, dict]:
    """``(fingerprint, parts)`` of a node's code (see :func:`~functionfuse.fingerprint.node_fingerprint`)."""
    if isinstance(node, FunctionNode):
        return node_fingerprint(func, node.version)
    if isinstance(node, ClassInitNode):
        return node_fingerprint(node.cls, node.version)
    if isinstance(node, ClassCallNode):
        base, parts = node_fingerprint(node.init.cls, node.init.version)
        return hashlib.sha256(f"call|{base}|{node.method}".encode()).hexdigest(), parts
    raise TypeError(node)  # pragma: no cover


def _unhashable(task: Task, exc: Unhashable, strict: bool, where: str) -> bytes:
    cls = _type_name(type(exc.obj))
    fix = (
        "Give the class a __functionfuse_token__() method returning plain data, or register a "
        "normalizer with functionfuse.hashing.normalize_token.register(cls)."
    )
    if strict:
        raise HashingError(
            f"node {task.name!r}: {where} of type {cls} cannot be hashed ({exc.reason}). {fix}"
        ) from None
    warnings.warn(
        f"node {task.name!r}: {where} of type {cls} cannot be hashed ({exc.reason}); the node "
        f"will be recomputed on every run. {fix}",
        CacheWarning,
        stacklevel=user_stacklevel(),  # the user's call (run(), compute() ...), not the library
    )
    task.reason = UNHASHABLE
    return uuid.uuid4().bytes


def _culprit(node: BaseNode, func: Any = None) -> str:
    def hook(obj: Any) -> bytes | None:
        return b"@" if isinstance(obj, (BaseNode, NodeItem)) else None

    params = _params(func) if func is not None else None
    positional = params[0] if params else ()
    for i, a in enumerate(node.args):
        try:
            Encoder(hook).encode(a)
        except Unhashable:
            return f"argument {i} ({positional[i]!r})" if i < len(positional) else f"argument {i}"
    for k, a in node.kwargs.items():
        try:
            Encoder(hook).encode(a)
        except Unhashable:
            return f"argument {k!r}"
    return "a captured value (closure, default, bound argument or callable state)"


def _fast_value(value: Any, key_of: dict[int, str]) -> bytes | None:
    """The encoder's bytes for the common argument types, without an Encoder.

    Must agree byte for byte with :class:`~functionfuse.hashing.Encoder`
    (a test checks it); anything else returns None and takes the full path.
    """
    cls = type(value)
    if cls is int:
        return b"i%de" % value
    if cls is str:
        data = value.encode("utf-8", "surrogatepass")
        return b"s%d:%s" % (len(data), data)
    if cls is FunctionNode or cls is ClassCallNode:
        key = key_of.get(id(value))
        return None if key is None else b"@" + key.encode()
    if cls is float:
        return b"f" + value.hex().encode() + b"e"
    if value is None:
        return b"N"
    if cls is bool:
        return b"T" if value else b"F"
    return None


def _sorted_kwargs(kwargs: dict) -> dict:
    """Keyword arguments in name order: ``f(a=1, b=2)`` is the call ``f(b=2, a=1)``."""
    return kwargs if len(kwargs) < 2 else dict(sorted(kwargs.items()))


def _fast_args(node: BaseNode, key_of: dict[int, str]) -> bytes | None:
    """Encoding of ``(args, kwargs)`` when every value is simple (else None)."""
    if node.nested:
        return None
    args = node.args
    if len(args) == 1 and not node.kwargs and type(args[0]) is FunctionNode:  # f(node), the commonest
        key = key_of.get(id(args[0]))
        return None if key is None else b"tt@" + key.encode() + b"edee"
    parts = [b"tt"]
    for a in node.args:
        cls = type(a)
        if cls is FunctionNode:  # the two commonest cases of _fast_value, inlined
            key = key_of.get(id(a))
            if key is None:
                return None
            parts.append(b"@" + key.encode())
        elif cls is int:
            parts.append(b"i%de" % a)
        else:
            enc = _fast_value(a, key_of)
            if enc is None:
                return None
            parts.append(enc)
    parts.append(b"ed")
    if node.kwargs:
        for k, v in _sorted_kwargs(node.kwargs).items():
            enc = _fast_value(v, key_of)
            if enc is None:
                return None
            data = k.encode("utf-8", "surrogatepass")
            parts.append(b"s%d:%s" % (len(data), data))
            parts.append(enc)
    parts.append(b"ee")
    return b"".join(parts)


def compute_key(
    task: Task, key_of: dict[int, str], strict: bool, fp_cache: dict | None = None, extra: bytes = b""
) -> None:
    """Set ``task.key`` and ``task.fingerprint`` (see the module docstring).

    ``fp_cache`` (one dict per plan) memoises, per function, its fingerprint
    and the encoding of its closure and default values.  ``extra`` is what a
    backend adds to the node's inputs (a plugin's seed, for example); empty
    adds nothing, so keys are the same on every backend.
    """
    node = task.node
    func = task.func
    kind = type(node)
    cached = None
    cache_key: Any = None
    if fp_cache is not None:
        if kind is FunctionNode:
            cache_key = id(func) if node.version is None else (id(func), node.version)
        elif kind is ClassCallNode:  # every call of a class shares its class's walk
            cache_key = ("call", id(node.init.cls), node.init.version, node.method)
        if cache_key is not None:
            cached = fp_cache.get(cache_key)
    if cached is None:
        fp, parts = _fingerprint(node, func)
        if kind is FunctionNode:
            captured = _captured(task, func, key_of, strict)
        elif kind is ClassInitNode:  # the calls chain to this key
            captured = _captured(task, node.cls, key_of, strict)
        else:
            captured = b""
        head = b"node|" + fp.encode()
        if cache_key is not None and task.reason != UNHASHABLE:
            fp_cache[cache_key] = (fp, captured, parts, head)
    else:
        fp, captured, parts, head = cached
    argbytes = _fast_args(node, key_of)
    if argbytes is None:
        try:
            argbytes = Encoder(_ref_hook(task, key_of)).encode((node.args, _sorted_kwargs(node.kwargs)))
        except Unhashable as exc:
            argbytes = _unhashable(task, exc, strict, _culprit(node, func))
    previous = key_of[id(node.after)].encode() if node.after is not None else b""
    data = b"|".join((head, previous, argbytes, captured))
    if extra:
        data += b"|extra|" + extra
    task.key = _sha256(data).hexdigest()[:32]
    task.fingerprint = fp
    task.code = parts


def _ref_hook(task: Task, key_of: dict[int, str]) -> Any:
    def ref_hook(obj: Any) -> bytes | None:
        if isinstance(obj, (BaseNode, NodeItem)):
            target = obj if isinstance(obj, BaseNode) else obj.node
            key = key_of.get(id(target))
            if key is None:
                raise GraphError(
                    f"node {task.name!r} has {describe(target)} hidden inside an argument; only "
                    "lists, tuples, dicts and sets are searched for nodes, so pass it directly "
                    "or inside one of those"
                )
            if isinstance(obj, BaseNode):
                return b"@" + key.encode()
            return b"@" + key.encode() + Encoder().encode(obj.path)
        return None

    return ref_hook


def _captured(task: Task, func: Any, key_of: dict[int, str], strict: bool) -> bytes:
    inputs = function_inputs(func)
    if not any(inputs):
        return b""
    try:
        return Encoder(_ref_hook(task, key_of)).encode(inputs)
    except Unhashable as exc:
        return _unhashable(task, exc, strict, "a captured value (closure, default, bound argument or callable state)")


# -- plan -------------------------------------------------------------------------


def _compile(patterns: str | Iterable[str] | None) -> list[re.Pattern]:
    if patterns is None:
        return []
    if isinstance(patterns, str):
        patterns = [patterns]
    return [re.compile(p) for p in patterns]


def make_plan(
    workflow: str,
    named: list[tuple[str, BaseNode]],
    funcs: dict[int, Any],
    storage: Any = None,
    *,
    unstored: set[int] | frozenset = frozenset(),
    force: str | Iterable[str] | None = None,
    strict: bool = False,
    extra: dict[int, bytes] | None = None,
    unusable: Mapping[str, str] | set[str] | frozenset = frozenset(),
) -> Plan:
    """Key every node and decide what runs (see the module docstring).

    ``extra`` maps ``id(node)`` to bytes added to that node's key (see
    :func:`compute_key`).  ``unusable`` holds keys (with their reason, in a mapping) found corrupt or
    unreadable by an earlier attempt of the same run: those nodes are
    recomputed and their entries replaced.
    """
    clock = time.perf_counter
    began = clock()
    tasks: list[Task] = []
    by_node: dict[int, Task] = {}
    plan = Plan(workflow, tasks, by_node, storage, started=time.time())
    if storage is None:
        for name, node in named:
            _add_task(tasks, by_node, name, node, funcs)
        return plan

    with planning():  # module-level values are read once per plan
        listing = storage.scan(workflow)
        plan.listing = listing
        listed = clock()
        key_of: dict[int, str] = {}
        fp_cache: dict = {}
        plan.fp_cache, plan.extra = fp_cache, extra
        forced = _compile(force)
        forced_ids: set[int] = set()  # forced nodes and everything downstream of them
        forcing: dict[int, str] = {}  # id(task) -> FORCED or UPSTREAM_FORCED
        known, view = listing.known, listing.view
        # Stored tasks a plain hit does not decide (the record does not name their
        # key, or they are forced, unhashable or found unusable): decided below,
        # after one batched lookup of the keys the record does not name.
        undecided: list[Task] = []
        sha = _sha256
        for name, node in named:
            task = _add_task(tasks, by_node, name, node, funcs)
            # The commonest node, f(previous) of a function already keyed in this plan:
            # compute_key's bytes for it, inline (a test checks they agree).
            cached = parent_key = None
            if type(node) is FunctionNode and node.ref_slots is _FIRST_SLOT and not extra:
                cached = fp_cache.get(id(task.func) if node.version is None else (id(task.func), node.version))
                parent_key = key_of.get(id(node.args[0]))
            if cached is not None and parent_key is not None:
                fp, captured, task.code, head = cached
                key = sha(b"".join((head, b"||tt@", parent_key.encode(), b"edee|", captured))).hexdigest()[:32]
                task.key, task.fingerprint = key, fp
            else:
                compute_key(task, key_of, strict, fp_cache, extra.get(id(node), b"") if extra else b"")
                key = task.key  # type: ignore[assignment]
            key_of[id(node)] = key
            is_forced = False
            if forced:
                is_forced = any(p.fullmatch(name) for p in forced)
                if is_forced or (forced_ids and _upstream_forced(node, forced_ids)):
                    forced_ids.add(id(node))
                    forcing[id(task)] = FORCED if is_forced else UPSTREAM_FORCED
            if type(node) is ClassInitNode:
                if is_forced:
                    task.run, task.reason = True, FORCED
                else:
                    task.run, task.reason = False, CACHED  # decided by its calls below
                continue
            if unstored and id(node) in unstored:
                task.run, task.reason = True, NOT_STORED
                continue
            task.store = True
            previous = view.get(name)
            if previous is not None and previous != key:
                task.previous = previous
            if key in known and not (forcing and id(task) in forcing) and task.reason != UNHASHABLE and not (
                    unusable and key in unusable):
                task.run, task.reason, task.entry = False, CACHED, key
            else:
                undecided.append(task)
        keyed = clock()
        # The keys the latest run record does not name are looked up in one batch
        # (a stat each on files, concurrent HEADs on S3).
        unknown = [t.key for t in undecided if t.key not in known]
        present = known | storage.present(unknown) if unknown else known
        for task in undecided:
            key = task.key
            hit = key in present
            why = forcing.get(id(task)) if forcing else None
            if why is not None:
                task.run, task.reason, task.overwrite = True, why, hit
            elif task.reason == UNHASHABLE:
                task.run = True
            elif hit and unusable and key in unusable:
                why = unusable.get(key, CORRUPT) if isinstance(unusable, Mapping) else CORRUPT
                task.run, task.reason, task.overwrite = True, why, True
            elif hit:
                task.run, task.reason, task.entry = False, CACHED, key
            else:
                task.run, task.reason = True, _miss_reason(storage, workflow, task, plan)
    _expand_chains(tasks, by_node)
    decided = clock()
    plan.phases = {"listing": listed - began, "tasks and keys": keyed - listed, "decisions": decided - keyed}
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("workflow %r: %d nodes planned in %s (%s)", workflow, len(tasks), format_seconds(decided - began),
                     ", ".join(f"{k} {format_seconds(v)}" for k, v in plan.phases.items()))
    return plan


def _add_task(tasks: list[Task], by_node: dict[int, Task], name: str, node: BaseNode, funcs: dict[int, Any]) -> Task:
    """Append the task of ``node`` (its function: ``funcs``' if given, else the node's)."""
    func = funcs.get(id(node)) if funcs else None
    kind = type(node)
    if func is None:
        if kind is FunctionNode:
            func = node.func
        elif kind is ClassInitNode:
            func = node.cls
    deps = node.deps
    task = Task(node, name, func, ([by_node[id(deps[0])]] if len(deps) == 1 else [by_node[id(d)] for d in deps])
                if deps else [])
    if kind is ClassCallNode:
        task.method = node.method
    tasks.append(task)
    by_node[id(node)] = task
    return task


def _upstream_forced(node: BaseNode, forced_ids: set[int]) -> bool:
    if node.after is not None and id(node.after) in forced_ids:
        return True
    return any(id(d) in forced_ids for d in node.deps)


def _miss_reason(storage: Any, workflow: str, task: Task, plan: Plan | None = None) -> str:
    if task.previous is None:
        return NEW
    try:
        meta = storage.read_meta(workflow, task.previous)
    except (StorageError, OSError, ValueError):
        return NEW
    if meta.get("fingerprint") != task.fingerprint:
        before = meta.get("code") or {"function": meta.get("fingerprint"), "refs": {}}
        now = task.code if task.code and task.code["refs"] else {"function": task.fingerprint, "refs": {}}
        what = describe_change(before, now)
        return f"{CODE_CHANGED}: {what}" if what else CODE_CHANGED
    changed = []
    inputs = meta.get("inputs")
    if isinstance(inputs, dict):
        changed += [dep.name for dep in task.deps if dep.name in inputs and inputs[dep.name] != dep.key]
    before = meta.get("arguments")
    if isinstance(before, dict) and plan is not None:
        now = argument_summary(plan, task)
        changed += [
            f"argument {name}" for name in now if name in before and before[name] != now[name]
            and not (isinstance(now[name], dict) and "node" in now[name])
        ]
    if type(task.node) is FunctionNode:
        note_previous(task, meta)  # what an early cutoff of the node needs
        if plan is not None and task.previous_content is not None:
            plan.contents[task.previous] = task.previous_content
    return f"{INPUT_CHANGED}: {', '.join(changed)}" if changed else INPUT_CHANGED


def argument_summary(plan: Plan, task: Task) -> dict:
    """The JSON summary of a node's literal arguments (see :mod:`functionfuse.arguments`),
    computed once per task (on the driver: a worker's copy carries it)."""
    summary = task.__dict__.get("arguments")
    if summary is not None:
        return summary
    node = task.node
    kind = type(node)
    if kind is FunctionNode:
        func, args = task.func, node.args
    elif kind is ClassCallNode:
        func = getattr(node.init.cls, node.method, None)
        args = (None, *node.args)  # bind ``self``
    elif kind is ClassInitNode:
        func, args = node.cls, node.args
    else:  # a worker's copy: the driver summarised it
        return {}
    by_node = plan.by_node

    def name_of(ref: BaseNode) -> str:
        dep = by_node.get(id(ref))
        return dep.name if dep is not None else ref.get_name()

    summary = summarize_arguments(func, args, node.kwargs, name_of)
    if kind is ClassCallNode:
        summary.pop("self", None)
    task.arguments = summary
    return summary


def _expand_chains(tasks: list[Task], by_node: dict[int, Task]) -> None:
    """Replay stateful chains up to their last call that must run."""
    for task in tasks:
        node = task.node
        if not isinstance(node, ClassInitNode):
            continue
        calls = [by_node[id(c)] for c in node.calls if id(c) in by_node]
        last = max((i for i, t in enumerate(calls) if t.run), default=-1)
        if last < 0:
            continue
        if task.reason == CACHED:
            # The instance is rebuilt for the calls that must run: a replay,
            # unless the very first call runs anyway (then it is plain work).
            task.reason = REPLAY if not calls[0].run else calls[0].reason
        task.run = True
        for t in calls[:last]:
            if not t.run:
                t.run, t.reason = True, REPLAY


# -- the two node operations -------------------------------------------------------


def execute(task: Task, args: tuple, kwargs: dict, instance: Any = None) -> Any:
    """Call the node's function; user errors become NodeExecutionError."""
    task.action = "running"
    try:
        if task.method is not None:
            return getattr(instance, task.method)(*args, **kwargs)
        return task.func(*args, **kwargs)
    except Exception as exc:
        raise node_error(task, exc) from exc


def node_error(task: Task, exc: Exception) -> NodeExecutionError:
    """The error raised for a node whose function raised ``exc`` (the node is marked failed)."""
    task.action = "failed"
    return NodeExecutionError(
        f"node {task.name!r} failed: {type(exc).__name__}: {exc}", node=task.name, key=task.key
    )


def _failed_after(task: Task, exc: NodeExecutionError, seconds: float) -> NodeExecutionError:
    exc.seconds = task.seconds = seconds
    return exc


def run_node(plan: Plan, task: Task, args: tuple, kwargs: dict, instance: Any = None) -> Any:
    """Compute one node and store its result (the path every backend uses).

    Returns the value children should see: the computed value, or, with
    ``storage.always_read``, the value read back from storage.
    """
    lease = None
    if instance is None and _leasing(plan, task):
        lease, value = lease_or_value(plan, task)
        if lease is None:  # stored by another run meanwhile: read, not computed
            return value
    try:
        start = time.perf_counter()
        try:
            value = execute(task, args, kwargs, instance)
        except NodeExecutionError as exc:
            raise _failed_after(task, exc, time.perf_counter() - start) from exc.__cause__
        finally:
            task.seconds = elapsed = time.perf_counter() - start
        return store_node(plan, task, value, elapsed, instance)
    finally:
        if lease is not None:
            lease.release()


#: Reason of a node a run meant to compute but read: another run computed it meanwhile.
BY_ANOTHER_RUN = "computed by another run"


def _leasing(plan: Plan, task: Task) -> bool:
    """Whether ``task`` takes a node lease before it is computed: stored nodes of a
    storage with the ``lease`` option, but not the calls and constructors of stateful
    classes (reading one instead of running it would leave the live object without
    its effect; their chains are replayed, not shared)."""
    storage = plan.storage
    return (storage is not None and task.store and task.reason != REPLAY
            and getattr(storage, "lease_ttl", None) is not None and not isinstance(task.func, type))


def take_lease(plan: Plan, task: Task, stop: Any = None) -> Any:
    """The node lease of ``task`` (see :mod:`functionfuse.storage.leases`), or None when
    another run stored its result meanwhile (waiting for it while that run computes it)."""
    from .storage.leases import acquire

    storage = plan.storage
    forced = task.reason in (FORCED, UPSTREAM_FORCED)  # computed whatever is stored
    # An unusable entry is replaced by this run, unless another run replaces it
    # meanwhile (its manifest changes): then that one is read (see run_node).
    unusable = task.overwrite and not forced
    before = storage.results.manifest_digest(task.key) if unusable else None

    def stored() -> bool:
        if forced:
            return False
        if unusable:
            now = storage.results.manifest_digest(task.key)
            return now is not None and now != before
        return bool(storage.present([task.key]))

    def on_wait(holder: dict) -> None:
        if plan.waiting is not None:
            plan.waiting(task.name, holder)

    try:
        return acquire(storage.results, task.key, ttl=storage.lease_ttl, workflow=plan.workflow, node=task.name,
                       run_id=plan.run_id, stored=stored, on_wait=on_wait,
                       stop=stop if stop is not None else plan.stop_waiting)
    except StorageError as exc:
        raise type(exc)(f"node {task.name!r}: taking its lease failed: {exc}") from exc


def lease_or_value(plan: Plan, task: Task) -> tuple[Any, Any]:
    """``(lease, None)`` when this run computes ``task``, or ``(None, value)`` when another
    run stored it meanwhile and it was read.  An unusable entry of another run is
    waited out in turn (it may be replaced), or computed here."""
    lease = take_lease(plan, task)
    while lease is None:
        try:
            return None, read_instead(plan, task)
        except LOAD_ERRORS as exc:
            entry_failed(task, exc)
            lease = take_lease(plan, task)
    return lease, None


def read_instead(plan: Plan, task: Task) -> Any:
    """Load the result another run stored for ``task`` while this one waited."""
    value, task.tree = plan.storage.load(plan.workflow, task.key, with_tree=True)
    task.entry = task.key
    task.action, task.reason, task.seconds = "read", BY_ANOTHER_RUN, 0.0
    return value


def store_node(plan: Plan, task: Task, value: Any, elapsed: float, instance: Any = None) -> Any:
    """Store the value a node computed in ``elapsed`` seconds (here or in a pool worker)
    and return the value children should see (see :func:`run_node`)."""
    task.seconds = elapsed
    if task.reason == REPLAY:
        task.action = "replayed"
        return _snapshot(value, instance)
    task.action = "computed"
    storage = plan.storage
    if storage is None or not task.store:
        return _snapshot(value, instance)
    meta = {
        "fingerprint": task.fingerprint,
        "arguments": argument_summary(plan, task),
        "inputs": {dep.name: dep.key for dep in task.deps},
        "function": getattr(task.func, "__qualname__", task.node.qualname),
        "duration_s": round(elapsed, 6),
    }
    code = task.code
    if code is not None and code["refs"]:  # without references the fingerprint says it all
        meta["code"] = code
    if records_inputs(task):  # what a later run's early cutoff compares
        meta["recipe"] = recipe_member(plan, task)
    try:
        if latecheck.checking():  # never stored from a damaged memory map, however it was reached
            latecheck.ensure_clean(_ancestor_keys(plan, task))
        digest = id(task) in plan.wanted  # a consumer records it (see functionfuse.cutoff)
        filename = storage.save(plan.workflow, task.name, task.key, value, meta, overwrite=task.overwrite,
                                **({"digest": True} if digest else {}))
    except BaseException:
        task.action = "failed"
        raise
    if digest:
        plan.contents[task.key] = meta.get("content")
    else:
        plan.contents.pop(task.key, None)  # stored again (a damaged entry replaced): read it anew
    task.entry = filename
    task.tree = meta.get("inline")
    latecheck.forget(task.key)
    if meta.get("published") is False and instance is None:
        # Another run stored this key first (a node whose result varies): consumers get the
        # stored result, the one every later run reads and early cutoff compares.
        logger.info("node %r: key %s was stored first by another writer; its consumers get that result",
                    task.name, task.key)
        task.tree = None
        return storage.load(plan.workflow, filename)
    if storage.always_read or (instance is not None and value is instance):
        # A method returning ``self`` hands children the object as it was
        # then, as a later run reading the entry would; later calls on the
        # live instance must not change it.
        value = storage.load(plan.workflow, filename)
    return value


def _ancestor_keys(plan: Plan, task: Task) -> set[str]:
    """Keys of every node ``task`` depends on, through nodes kept out of storage and
    the constructors and earlier calls of class instances (on a Dask or Ray worker,
    where the plan holds no graph: its direct inputs)."""
    keys: set[str] = set()
    seen: set[int] = set()
    todo = [task]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if current is not task and current.key is not None:
            keys.add(current.key)
        todo.extend(getattr(current, "deps", ()) or ())
        node = current.node
        if isinstance(node, ClassCallNode) and plan.by_node:
            chain = [node.init, *node.init.calls[: node.index]]
            todo.extend(plan.by_node[id(n)] for n in chain if id(n) in plan.by_node)
    return keys


def _snapshot(value: Any, instance: Any) -> Any:
    """A copy of ``value`` when it is the live stateful instance itself."""
    if instance is None or value is not instance:
        return value
    try:
        return copy.deepcopy(value)
    except Exception as exc:  # noqa: BLE001 - an uncopyable object: hand over the live one
        logger.debug("cannot snapshot %r (%s); children get the live instance", type(value), exc)
        return value


def load_node(plan: Plan, task: Task) -> Any:
    """Load a cached node's result.

    Raises CorruptEntryError / SerializationError / EntryNotFoundError when the
    entry cannot be used; the caller warns and recomputes.  A serializer that
    is not registered is a configuration error: it is raised, naming the node,
    and the entry is kept.
    """
    start = time.perf_counter()
    listing = plan.listing
    try:
        if listing is None:  # on a worker: the driver records the run
            value = plan.storage.load(plan.workflow, task.entry)
        else:
            # The record's small results are one object: worth reading once several
            # nodes are loaded (or known to be coming); the first few read their own manifests.
            listing.loads += 1
            many = listing.loads > FEW_LOADS or listing.loads_ahead > FEW_LOADS
            tree = listing.values.get(task.entry) if many else None
            value = _inline_value(tree) if tree is not None else _NOTHING
            if value is _NOTHING:
                value, task.tree = plan.storage.load(plan.workflow, task.entry, with_tree=True)
            else:
                task.tree = tree
    except SerializerNotRegisteredError as exc:
        raise SerializerNotRegisteredError(f"node {task.name!r}: {exc}") from None
    task.seconds = time.perf_counter() - start
    task.action = "read"
    if plan.wanted and task.tree is not None and id(task) in plan.wanted:
        # A small result's digest comes from its tree (no parts): no manifest to read.
        plan.contents[task.entry] = content_digest({"parts": [], "result": task.tree})
    return value


_NOTHING = object()
#: Loads of a run that read their manifests before the record's small results are read.
FEW_LOADS = 8


_PARTS: list = []  # functionfuse.serializers.parts, imported on the first load


def _inline_value(tree: Any) -> Any:
    """A small result from the run record's copy of its tree (``_NOTHING`` if unusable)."""
    if not _PARTS:
        from .serializers import parts

        _PARTS.append(parts)
    parts = _PARTS[0]
    value = parts.plain_value(tree)  # the common trees, without a joiner
    if value is not parts.NOT_PLAIN:
        return value
    try:
        return parts.join(tree, (), ())
    except Exception:  # noqa: BLE001 - a sealed record with a bad tree: read the manifest instead
        return _NOTHING


INTERRUPTED = "interrupted"


def finish_report(plan: Plan, error: BaseException | None) -> None:
    """Mark what a failed or interrupted run never did.

    Nodes that had to run but did not are ``not run`` (their reason is kept:
    what *would* have run them); a node interrupted while running is
    ``not run`` with reason ``interrupted``.  A node whose function raised is
    already ``failed`` (see :func:`node_error`).
    """
    if error is None:
        return
    interrupted = not isinstance(error, Exception)
    for task in plan.tasks:
        if task.action == "running":
            task.action = "not run"
            task.reason = INTERRUPTED if interrupted else task.reason
        elif task.action == "skipped" and task.run:
            task.action = "not run"


def begin_run(plan: Plan) -> None:
    """Write the run's lease (docs/format.md, "Run leases"): the keys this run may use
    that the workflow's latest record does not name, so ``gc`` keeps them while it runs.

    A failure is logged, never raised: only gc's protection of this run is lost.
    """
    storage = plan.storage
    if storage is None or plan.listing is None:
        return
    from .storage.runs import new_run_id

    plan.run_id = new_run_id(plan.started)
    known = plan.listing.known
    keys = sorted({task.key for task in plan.tasks if task.store and task.key and task.key not in known})
    if not keys:
        # Every key is one the latest record names, and gc always keeps that record: a
        # resume of what is stored writes no lease (no file to create on the fast path).
        return
    base = (plan.listing.record or {}).get("run")
    try:
        storage.begin_run(plan.workflow, plan.run_id, base=base, keys=keys)
        plan.leased = True
    except Exception as exc:  # noqa: BLE001
        logger.warning("workflow %r: the run lease was not written (%s: %s)", plan.workflow, type(exc).__name__, exc)


def end_run(plan: Plan | None) -> None:
    """Remove the run's lease (its record, if any, has been written)."""
    if plan is None or not plan.leased:
        return
    try:
        plan.storage.end_run(plan.workflow, plan.run_id)
    except Exception as exc:  # noqa: BLE001 - a stale lease expires; gc removes it
        logger.warning("workflow %r: the run lease was not removed (%s: %s)", plan.workflow, type(exc).__name__, exc)


def packing(plan: Plan, on: bool) -> None:
    """Start (``on``) or end packing the small results this process stores for the run
    (local folders; docs/format.md, "Packs").  Executors whose workers store results
    do not pack: a worker process outlives runs, and a pack being written cannot have
    lines removed."""
    if plan.storage is None or not getattr(plan.storage, "packs_small_results", False):
        return
    try:
        results = plan.storage.results
        results.start_pack() if on else results.close_pack()
    except Exception as exc:  # noqa: BLE001 - a pack not closed is searched, never wrong
        logger.warning("workflow %r: the run's pack was not closed cleanly (%s: %s)", plan.workflow,
                       type(exc).__name__, exc)


def record_run(plan: Plan, error: BaseException | None, executor: str) -> None:
    """Write the run record of a finished, failed or interrupted run (one small write).

    It names every stored node's key and what the run did with it; the
    storage carries over the nodes this run did not store (see
    :meth:`~functionfuse.storage.base.Storage.record_run`).  A failure to
    write it is logged, never raised: the results are stored already.
    """
    storage = plan.storage
    if storage is None or plan.listing is None:
        return
    from .storage.base import INLINE_COUNT, STORED_ACTIONS, utc_now_iso
    from .storage.runs import new_run_id

    listing = plan.listing
    view = listing.view
    nodes: dict[str, dict] = {}
    same_view = True  # does this run leave every node at the key the last record had?
    covered = 0  # the nodes of the last record's view this run stored or found stored
    computed_tree = False
    rewritten: set[str] = set()  # keys this run stored again (forced, damaged): no tree to carry
    for task in plan.tasks:
        if not task.store:
            continue
        action, key = task.action, task.key
        nodes[task.name] = ({"key": key, "action": action, "reason": task.reason, "seconds": task.seconds}
                            if task.seconds else {"key": key, "action": action, "reason": task.reason})
        if action in STORED_ACTIONS:
            before = view.get(task.name)
            if before is not None:
                covered += 1
            if before != key:
                same_view = False
            if action == "computed":
                computed_tree = computed_tree or task.tree is not None
                if task.overwrite:
                    rewritten.add(key)
        else:
            same_view = False
    # Every node of the last record's view stored here (names are unique): none carried over.
    carried_over = None if covered < len(view) else {}
    same_view = same_view and carried_over is not None
    values: Any = None
    values_ref = None
    reuse = (same_view and not computed_tree and not rewritten and listing.values_ref is not None
             and not listing.values_damaged)
    if reuse and listing.values_unread and not _values_intact(storage, listing.values_ref):
        # Named again unread, a damaged object would stay named by every record.
        listing.values_damaged, reuse = True, False
    if reuse:
        # The same keys as the last record's, nothing computed: the same small results,
        # so the same object is named again (not rebuilt, not read if it was not).
        values_ref = listing.values_ref
    else:
        # Small results travel with the record, so a cached rerun reads them from it:
        # those this run computed or read, and those the previous record held.
        carried = listing.values
        values = {}
        for task in plan.tasks:
            if not task.store or task.action not in STORED_ACTIONS:
                continue
            # A key stored again without its tree at hand (on a Dask or Ray worker) must
            # not keep the previous record's tree: it may hold another result now.
            tree = task.tree if task.tree is not None or task.key in rewritten else carried.get(task.key)
            if tree is not None:
                values[task.key] = tree
        for name, key in listing.view.items():
            if key not in values and key in carried and name not in nodes:
                values[key] = carried[key]
        if len(values) > INLINE_COUNT:  # a bounded record: the rest is read from manifests
            values = dict(list(values.items())[:INLINE_COUNT])
    if error is None:
        outcome = "ok"
    else:
        outcome = "failed" if isinstance(error, Exception) else "interrupted"
    started = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(plan.started))
    try:
        storage.record_run(
            plan.workflow, plan.run_id or new_run_id(plan.started), nodes, listing=plan.listing,
            others=carried_over, started=started, finished=utc_now_iso(), outcome=outcome, executor=executor,
            values=values, values_ref=values_ref, **({"values_replace": True} if listing.values_damaged else {}),
        )
    except Exception as exc:  # noqa: BLE001 - the results are stored; only the record is lost
        logger.warning("workflow %r: the run record was not written (%s: %s)", plan.workflow, type(exc).__name__, exc)


def _values_intact(storage: Any, ref: dict) -> bool:
    """Whether the small-results object a record names passes its size and XXH3 check
    (one read of at most 1 MiB, no parsing).  True when it cannot be told here."""
    from .storage.objects import ObjectRef

    try:
        storage.results.objects.get_bytes(ObjectRef.from_json(ref))
    except (CorruptEntryError, EntryNotFoundError, ValueError):
        logger.warning("the small-results object %s of the latest run record is damaged; this run writes its own",
                       ref.get("object") if isinstance(ref, dict) else ref)
        return False
    except Exception as exc:  # noqa: BLE001 - e.g. a storage whose I/O runs elsewhere
        logger.debug("small-results object not checked: %s", exc)
    return True


def unusable_reason(exc: BaseException) -> str:
    """The reason a node whose stored result raised ``exc`` on load is recomputed."""
    if isinstance(exc, SchemaChangedError):
        return SCHEMA_CHANGED
    return CORRUPT if isinstance(exc, CorruptEntryError) else UNREADABLE


def entry_failed(task: Task, exc: Exception) -> None:
    """Record that a cached entry could not be used; it will be recomputed."""
    reason = unusable_reason(exc)
    if reason == SCHEMA_CHANGED:  # expected after editing a class: no warning
        logger.info("node %r: %s; recomputing it", task.name, exc)
        task.run, task.reason, task.overwrite = True, reason, True
        task.entry = None
        return
    warnings.warn(
        f"node {task.name!r}: stored entry {task.entry} is unusable ({exc}); recomputing it",
        CacheWarning,
        stacklevel=3,
    )
    logger.debug("node %r: entry %s unusable (%s); recomputing", task.name, task.entry, exc)
    task.run, task.reason, task.overwrite = True, reason, True
    task.entry = None


LOAD_ERRORS = (CorruptEntryError, SerializationError, StorageError, FileNotFoundError)
