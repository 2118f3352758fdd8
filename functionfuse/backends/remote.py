"""What a worker process runs: one node, described by a small picklable spec.

The driver keys the graph and decides what runs (:func:`functionfuse.caching.make_plan`);
for each node to run or load it builds a :class:`NodeSpec` and pickles it
*before anything is submitted*, so a node that cannot be sent to a worker is
reported by name up front.  On the worker the spec is turned back into a
:class:`~functionfuse.caching.Task` and goes through the same
:func:`~functionfuse.caching.run_node` / :func:`~functionfuse.caching.load_node`
as on the local backend: the worker loads its inputs' entries and writes its
result to the storage itself, so results never travel through the driver.

Dependencies are passed to the engine as *top-level* arguments (Ray
ObjectRefs, Dask futures), so the engine's scheduler sees them and hands the
worker their values; :class:`_Slot` placeholders in the spec say where each
value goes in the node's arguments.

Nothing here imports Ray or Dask.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import time
import traceback
from dataclasses import dataclass
from typing import Any

from ..caching import (
    LOAD_ERRORS,
    Plan,
    Task,
    argument_summary,
    load_node,
    run_node,
    unusable_reason,
)
from ..cutoff import UPSTREAM_UNCHANGED, records_inputs, try_cutoff
from ..errors import (
    ExecutorError,
    FunctionFuseError,
    NodeExecutionError,
    SerializerNotRegisteredError,
    StorageError,
)
from ..graph import NodeItem, _substitute
from .tracebacks import dumps, localize

__all__ = [
    "NodeSpec",
    "EntryUnusable",
    "build_spec",
    "localize_error",
    "run_task",
    "load_task",
    "InstanceHost",
    "Reused",
]

logger = logging.getLogger(__name__)


class EntryUnusable(FunctionFuseError):
    """A worker found a cached result unusable (the driver recomputes it, with ``reason``)."""

    def __init__(self, message: str, node: str, entry: str, reason: str) -> None:
        super().__init__(message)
        self.node = node
        self.entry = entry
        self.reason = reason

    def __reduce__(self):
        return (type(self), (self.args[0], self.node, self.entry, self.reason))

    @classmethod
    def of(cls, node: str, entry: str, exc: BaseException) -> EntryUnusable:
        """The error for node ``node``'s stored entry ``entry`` found unusable by ``exc``."""
        return cls(f"node {node!r}: stored entry {entry} is unusable ({exc})", node, entry, unusable_reason(exc))


class _Slot:
    """Where the value of dependency ``index`` (optionally ``[path]``) goes."""

    __slots__ = ("index", "path")

    def __init__(self, index: int, path: tuple | None) -> None:
        self.index = index
        self.path = path

    def __reduce__(self):
        return (_Slot, (self.index, self.path))

    def value(self, deps: tuple) -> Any:
        out = deps[self.index]
        if self.path is not None:
            for item in self.path:
                out = out[item]
        return out


class _Stub:
    """Name and key of a node (what a worker copy of a task needs of its deps)."""

    __slots__ = ("name", "key", "qualname")

    def __init__(self, name: str, key: str | None, qualname: str = "") -> None:
        self.name, self.key, self.qualname = name, key, qualname

    def __reduce__(self):
        return (_Stub, (self.name, self.key, self.qualname))


@dataclass
class NodeSpec:
    """Everything a worker needs to run (or load) one node."""

    task: Task
    args: tuple
    kwargs: dict
    where: tuple  # positions of args/kwargs holding _Slot placeholders
    plugin: Any
    workflow: str
    storage: bytes | None  # the storage, pickled once per run
    run: str | None = None  # the run's id (a worker remembers content digests per run)

    def fill(self, deps: tuple) -> tuple[tuple, dict]:
        """The node's arguments with the dependencies' values in place."""
        if not self.where:
            return self.args, self.kwargs
        args = list(self.args)
        kwargs = dict(self.kwargs)
        for pos in self.where:
            if isinstance(pos, int):
                args[pos] = _fill(args[pos], deps)
            else:
                kwargs[pos] = _fill(kwargs[pos], deps)
        return tuple(args), kwargs

    def plan(self) -> Plan:
        return Plan(self.workflow, [self.task], {}, _storage(self.storage), run_id=self.run)


def _fill(value: Any, deps: tuple) -> Any:
    return _substitute(value, lambda slot: slot.value(deps), _Slot)


def _worker_task(task: Task) -> Task:
    """A copy of ``task`` without graph objects (nodes link the whole graph)."""
    copy = Task(_Stub(task.name, task.key, task.node.qualname), task.name, task.func,
                [_Stub(d.name, d.key) for d in task.deps])
    copy.run = task.run
    copy.reason = task.reason
    copy.set_fields(task.fields(_SENT))
    return copy


#: The cache fields of a task a worker's copy carries (when set on the task).
_SENT = ("key", "fingerprint", "code", "arguments", "entry", "store", "overwrite", "method", "recipe", "previous",
         "previous_recipe", "previous_content", "previous_manifest", "unstored_inputs", "cutoff")


class _Pickled:
    """A function pickled once per run: specs of nodes sharing it carry its bytes.

    cloudpickle of a function defined by value (``__main__``, a registered
    module) is the dearest part of a spec; the worker unpickles each distinct
    function once per process.
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce__(self):
        return (_unpickle_function, (self.data,))


def _unpickle_once(cache: dict[bytes, Any], data: bytes, limit: int) -> Any:
    """``pickle.loads(data)``, once per worker process (a bounded cache)."""
    obj = cache.get(data)
    if obj is None:
        if len(cache) >= limit:
            cache.clear()
        obj = cache[data] = pickle.loads(data)
    return obj


_FUNCTIONS: dict[bytes, Any] = {}


def _unpickle_function(data: bytes) -> Any:
    return _unpickle_once(_FUNCTIONS, data, 256)


def build_spec(
    plan: Plan,
    task: Task,
    plugin: Any,
    storage_blob: bytes | None,
    *,
    load: bool = False,
    functions: dict[int, Any] | None = None,
) -> bytes:
    """Pickle what a worker needs for ``task``; errors name the node.

    ``task.deps`` gives the order of the dependency values the worker
    receives.  With ``load=True`` the spec only loads the node's entry.
    ``functions`` (one dict per run) keeps each function's pickle, so a
    function shared by many nodes is pickled once.  Code objects travel with
    their real file name (:func:`functionfuse.backends.tracebacks.dumps`), so
    tracebacks on the worker name the user's file and line.
    """
    if load:
        spec = NodeSpec(_worker_task(task), (), {}, (), None, plan.workflow, storage_blob, plan.run_id)
    else:
        node = task.node
        index = {id(d.node): i for i, d in enumerate(task.deps)}

        def placeholder(ref: Any) -> _Slot:
            if type(ref) is NodeItem:
                return _Slot(index[id(ref.node)], ref.path)
            return _Slot(index[id(ref)], None)

        args, kwargs = node.resolve_args(placeholder)
        where = tuple(dict.fromkeys([*node.ref_slots, *node.nested]))
        if task.store:
            argument_summary(plan, task)  # the worker writes it into the entry's metadata
            records_inputs(task)  # and whether to record its inputs (the worker has no graph)
        func = task.func
        if functions is not None and func is not None:
            pickled = functions.get(id(func))
            if pickled is None:
                try:
                    pickled = functions[id(func)] = _Pickled(dumps(func))
                except Exception as exc:  # noqa: BLE001 - reported below, naming the node
                    raise _unsendable(task, "function", exc) from exc
            func = pickled
        if plugin is None and (func is None or type(func) is _Pickled) and _plain(args) and _plain(kwargs.values()):
            # Nothing in the spec needs pickling by value (the function travels as its
            # own pickle): a tuple of builtin values for the C pickler, a fifth of
            # cloudpickle's cost on a small node (see _compact).
            try:
                return pickle.dumps(_compact(task, func, args, kwargs, where, plan, storage_blob),
                                    protocol=pickle.HIGHEST_PROTOCOL)
            except Exception:  # noqa: BLE001 - the full path below reports it, naming the node
                pass
        worker_task = _worker_task(task)
        worker_task.func = func
        spec = NodeSpec(worker_task, args, kwargs, where, plugin, plan.workflow, storage_blob, plan.run_id)
    try:
        return dumps(spec)
    except Exception as exc:  # noqa: BLE001 - anything user objects raise while pickling
        what = "function, its arguments or its plugin" if not load else "storage"
        raise _unsendable(task, what, exc) from exc


_SCALARS = frozenset((int, float, str, bool, bytes, type(None)))
_PLAIN = _SCALARS | {_Slot}


def _plain(values: Any) -> bool:
    """Whether ``values`` are all builtin scalars or dependency placeholders."""
    return all(type(v) in _PLAIN for v in values)


# A plain spec (builtin scalars and dependency placeholders for arguments, no plugin)
# travels as a tuple of builtin values, which the C pickler writes and reads without
# calling back into Python, where a NodeSpec costs a __reduce__ per object in it:
#
#   (name, qualname, deps as ((name, key), ...), function pickle or None, cache fields
#    (a dict, see _SENT), run, reason, args, kwargs, where, workflow, storage, run id)
#
# A placeholder is written as the tuple (index, path): no plain argument is a tuple.


def _compact(task: Task, func: _Pickled | None, args: tuple, kwargs: dict, where: tuple, plan: Plan,
             storage_blob: bytes | None) -> tuple:
    if where:
        args = tuple((a.index, a.path) if type(a) is _Slot else a for a in args)
        kwargs = {k: (a.index, a.path) if type(a) is _Slot else a for k, a in kwargs.items()}
    return (task.name, task.node.qualname, tuple((d.name, d.key) for d in task.deps),
            None if func is None else func.data, task.fields(_SENT),
            task.run, task.reason, args, kwargs, where, plan.workflow, storage_blob, plan.run_id)


def _from_compact(c: tuple) -> NodeSpec:
    """The NodeSpec of a spec :func:`_compact` wrote (on the worker)."""
    name, qualname, deps, fdata, state, run, reason, args, kwargs, where, workflow, storage, run_id = c
    task = Task(_Stub(name, state.get("key"), qualname), name, None if fdata is None else _unpickle_function(fdata),
                [_Stub(n, k) for n, k in deps])
    task.run, task.reason = run, reason
    task.set_fields(state)
    if where:
        args = tuple(_Slot(*a) if type(a) is tuple else a for a in args)
        kwargs = {k: _Slot(*a) if type(a) is tuple else a for k, a in kwargs.items()}
    return NodeSpec(task, args, kwargs, where, None, workflow, storage, run_id)


def deferrable(task: Task, plugin: Any, functions: dict[int, Any]) -> bool:
    """Whether ``task``'s spec is plain (see :func:`_compact`), so it may be built when
    submitted rather than before the run starts: then its function is pickled now,
    a failure naming the node, and building the spec later cannot fail.  The
    driver starts submitting sooner, while the workers are idle."""
    if plugin is None and not task.node.nested:
        node = task.node
        top = set(node.ref_slots)
        if not all(type(a) in _SCALARS for i, a in enumerate(node.args) if i not in top):
            return False
        if node.kwargs and not all(type(a) in _SCALARS for k, a in node.kwargs.items() if k not in top):
            return False
        for w in top:
            path = getattr(node.args[w] if type(w) is int else node.kwargs[w], "path", None)
            if path is not None and not all(type(p) in _SCALARS for p in path):
                return False
        if task.func is not None and id(task.func) not in functions:
            try:
                functions[id(task.func)] = _Pickled(dumps(task.func))
            except Exception as exc:  # noqa: BLE001 - any error pickling user code, named
                raise _unsendable(task, "function", exc) from exc
        return True
    return False


def localize_error(error: BaseException, plan: Plan, plugins: dict[int, Any] | None = None) -> None:
    """Make the worker's traceback of ``error`` readable on the driver (in place).

    Frames still naming cloudpickle's placeholder file get the real file of
    the failing node's code, frames without source get it from the driver
    (see :func:`functionfuse.backends.tracebacks.localize`).  Only called for
    the error a run raises, so it costs nothing per node.
    """
    text = getattr(error, "remote_traceback", None)
    if not text or not isinstance(error, NodeExecutionError):
        return

    def roots() -> Any:
        task = next((t for t in plan.tasks if t.name == error.node), None)
        if task is None:
            return
        yield task.func
        init = getattr(task.node, "init", None)  # a method call: the instance's class
        yield getattr(init, "cls", None)
        if plugins:
            yield plugins.get(id(task.node))

    try:
        error.remote_traceback = localize(text, roots())
    except Exception as exc:  # noqa: BLE001 - never hide the node's error behind ours
        logger.debug("could not localize the traceback of node %r: %s", error.node, exc)


def _unsendable(task: Task, what: str, exc: Exception) -> ExecutorError:
    return ExecutorError(
        f"node {task.name!r} cannot be sent to a worker: its {what} cannot be pickled "
        f"({type(exc).__name__}: {exc}). Workers run in other processes: pass such objects "
        "(locks, open files, connections) as something picklable, or create them inside the function."
    )


# -- worker side ---------------------------------------------------------------------

_STORAGES: dict[bytes, Any] = {}


def _storage(blob: bytes | None) -> Any:
    """The storage of a run, unpickled once per worker process."""
    return None if blob is None else _unpickle_once(_STORAGES, blob, 16)


def _unpack(blob: bytes) -> NodeSpec:
    spec = pickle.loads(blob)
    return spec if type(spec) is NodeSpec else _from_compact(spec)


class Reused:
    """What a worker hands on for a node it cut off (early cutoff): the key of the
    reused result, not the result.  A consumer that computes loads it (its status
    tells the driver, which reports the node ``read``); a consumer cut off too hands
    on its own; the driver loads one it returns.  So, as on the local executor, a
    chain of reused results is published under its new keys without reading any."""

    __slots__ = ("key", "name")

    def __init__(self, key: str, name: str) -> None:
        self.key, self.name = key, name

    def __reduce__(self):
        return (Reused, (self.key, self.name))

    def __repr__(self) -> str:
        return f"<Reused result {self.key} of node {self.name!r}>"


def _resolve(plan: Plan, deps: tuple) -> tuple[tuple, tuple[str, ...]]:
    """``deps`` with every :class:`Reused` loaded, and the names of the nodes loaded."""
    out = list(deps)
    loaded = []
    for i, dep in enumerate(deps):
        if type(dep) is Reused:
            try:
                out[i] = plan.storage.load(plan.workflow, dep.key)
            except SerializerNotRegisteredError as exc:
                err = SerializerNotRegisteredError(f"node {dep.name!r}: {exc}")
                err.node = dep.name  # type: ignore[attr-defined]  (the run reports that node)
                raise err from None
            except LOAD_ERRORS as exc:  # the driver runs again without the entry: it is computed
                raise EntryUnusable.of(dep.name, dep.key, exc) from None
            loaded.append(dep.name)
    return tuple(out), tuple(loaded)


def _compute(spec: NodeSpec, deps: tuple, instance: Any = None) -> Any:
    task = spec.task
    if spec.plugin is not None:
        try:
            spec.plugin()
        except Exception as exc:
            raise NodeExecutionError(
                f"node {task.name!r}: its plugin failed: {type(exc).__name__}: {exc}",
                node=task.name,
                key=task.key,
                remote_traceback="".join(traceback.format_exception(exc)),
            ) from exc
    plan = spec.plan()
    if task.cutoff and try_cutoff(plan, task):  # upstream unchanged: its consumers get the stored value
        task.action = "skipped"  # until a consumer or the driver loads it
        return Reused(task.key, task.name)
    if any(type(dep) is Reused for dep in deps):
        deps, task.loaded = _resolve(plan, deps)
    args, kwargs = spec.fill(deps)
    try:
        return run_node(plan, task, args, kwargs, instance)
    except NodeExecutionError as exc:
        cause = exc.__cause__
        if cause is not None and exc.remote_traceback is None:
            exc.remote_traceback = "".join(traceback.format_exception(cause))
        raise
    except FunctionFuseError:
        raise  # storage and serialization errors already name the node
    except Exception as exc:  # an I/O error of the storage (disk full, endpoint down ...)
        raise StorageError(
            f"node {task.name!r}: storing its result failed: {type(exc).__name__}: {exc}"
        ) from exc


def _status(task: Task) -> tuple:
    """What the driver learns of a node: action, seconds, the worker's pid, the reason
    when the worker decided it (a cutoff), else None; and, when the node loaded results
    its inputs reused (:class:`Reused`), their node names."""
    status = (task.action, task.seconds, os.getpid(), task.reason if task.reason == UPSTREAM_UNCHANGED else None)
    loaded = task.__dict__.get("loaded")
    return status + (loaded,) if loaded else status


def run_task(blob: bytes, *deps: Any) -> tuple[Any, tuple[str, float, int]]:
    """Run one node on a worker; returns ``(value, status)``."""
    spec = _unpack(blob)
    value = _compute(spec, deps)
    return value, _status(spec.task)


def load_task(blob: bytes) -> tuple[Any, tuple[str, float, int]]:
    """Load one cached node on a worker; returns ``(value, status)``."""
    spec = _unpack(blob)
    task = spec.task
    try:
        value = load_node(spec.plan(), task)
    except SerializerNotRegisteredError:
        raise  # a configuration error: keep the entry, stop the run
    except LOAD_ERRORS as exc:
        raise EntryUnusable.of(task.name, task.entry or "", exc) from None
    return value, _status(task)


def pack_status(status: tuple) -> bytes:
    """A status (see :func:`_status`) as bytes: Ray returns and reads a ``bytes`` object
    without pickling it, 3% of the time of a trivial node against a tuple
    (benchmarks/bench_distributed.py)."""
    action, seconds, pid, reason = status[:4]
    data = b"%s\x1f%r\x1f%d\x1f%s" % (action.encode(), seconds, pid, (reason or "").encode())
    if len(status) > 4:  # names as JSON (which escapes the separator)
        data += b"\x1f" + json.dumps(list(status[4])).encode()
    return data


def unpack_status(data: bytes | tuple) -> tuple:
    """The status :func:`pack_status` packed (a tuple is returned as it is)."""
    if type(data) is tuple:
        return data
    fields = data.split(b"\x1f", 4)
    status = (fields[0].decode(), float(fields[1]), int(fields[2]), fields[3].decode() or None)
    return status + (tuple(json.loads(fields[4])),) if len(fields) > 4 else status


def run_task_packed(blob: bytes, *deps: Any) -> tuple[Any, bytes]:
    """:func:`run_task` with its status packed (Ray's tasks)."""
    value, status = run_task(blob, *deps)
    return value, pack_status(status)


def load_task_packed(blob: bytes) -> tuple[Any, bytes]:
    """:func:`load_task` with its status packed (Ray's tasks)."""
    value, status = load_task(blob)
    return value, pack_status(status)


def run_value(blob: bytes, *deps: Any) -> Any:
    """:func:`run_task` without the status (engines with one return value)."""
    return run_task(blob, *deps)[0]


def load_value(blob: bytes) -> Any:
    """:func:`load_task` without the status."""
    return load_task(blob)[0]


class InstanceHost:
    """Holds one stateful instance on a worker: the body of a Ray actor, or of
    a Dask worker-pinned registry entry.  Calls run in submission order."""

    def __init__(self) -> None:
        self.instance: Any = None
        self.failed: str | None = None  # the node whose call (or construction) failed here

    def init(self, blob: bytes, *deps: Any) -> tuple[Any, tuple[str, float, int]]:
        spec = _unpack(blob)
        self._refuse_after_failure(spec)
        start = time.perf_counter()
        try:
            self.instance = _compute(spec, deps)
        except BaseException:
            self.failed = spec.task.name
            raise
        spec.task.seconds = time.perf_counter() - start
        return None, _status(spec.task)

    def call(self, blob: bytes, *deps: Any) -> tuple[Any, tuple[str, float, int]]:
        spec = _unpack(blob)
        self._refuse_after_failure(spec)
        if self.instance is None:
            raise ExecutorError(
                f"node {spec.task.name!r}: its instance is not on this worker (the actor or worker "
                "holding it was restarted, and its state with it); rerun the workflow to rebuild it"
            )
        try:
            value = _compute(spec, deps, self.instance)
        except BaseException:
            self.failed = spec.task.name
            raise
        return value, _status(spec.task)

    def call_after(self, blob: bytes, previous: Any, *deps: Any) -> tuple[Any, tuple[str, float, int]]:
        """:meth:`call`, once the previous call on this instance ran (``previous``, its
        status, is only there to order the calls: Ray runs none whose input failed)."""
        return self.call(blob, *deps)

    def _refuse_after_failure(self, spec: NodeSpec) -> None:
        """A call after a failed one would run on an instance without that call's effect
        (and store what it returns): it is not run.  The error names the failed node, so
        the run reports that one (this one is ``not run``)."""
        if self.failed is not None:
            err = ExecutorError(f"node {spec.task.name!r} not run: node {self.failed!r}, an earlier call on "
                                "the same instance, failed")
            err.node = self.failed  # type: ignore[attr-defined]
            err.secondary = True  # type: ignore[attr-defined]
            raise err

    def pid(self) -> int:
        return os.getpid()
