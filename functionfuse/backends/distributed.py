"""What the Dask and Ray workflows share: queries, plugins, and the run loop.

The driver keys the graph and decides what runs with
:func:`functionfuse.caching.make_plan` (exactly as the local backend does, so
keys are the same on every backend and a run resumes on any of them), then
submits one engine task per node that must run, in traversal order:

* a node's dependencies are passed as engine handles (Ray ObjectRefs, Dask
  futures), so the engine schedules them and moves values worker to worker;
* a cached node is loaded, by a worker, only when a node that runs needs it
  (lazy resume); a cached result the caller asked for is loaded at the end;
* a stateful class instance lives on one worker (a Ray actor, a pinned Dask
  worker), its calls run there in call order;
* every task is awaited before ``run`` returns, so every save has finished;
  the first failure in traversal order is raised, naming its node.

A corrupt entry found by a worker is reported with a warning and the run is
retried once with that node marked for recomputation (everything stored
meanwhile is reused).
"""

from __future__ import annotations

import copy
import logging
import time
import uuid
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any

import cloudpickle

from ..caching import (
    LOAD_ERRORS,
    SCHEMA_CHANGED,
    CacheWarning,
    Plan,
    RunReport,
    Task,
    begin_run,
    end_run,
    finish_report,
    format_seconds,
    load_node,
    make_plan,
    record_run,
    unusable_reason,
)
from ..cutoff import UPSTREAM_UNCHANGED, mark_candidates, want_contents
from ..errors import (
    ExecutorError,
    FunctionFuseError,
    GraphError,
    SerializerNotRegisteredError,
    StorageError,
)
from ..fingerprint import planning
from ..graph import BaseNode, ClassCallNode, ClassInitNode, NodeItem
from ..hashing import Encoder, Unhashable
from ..progress import NO_PROGRESS, NoProgress, progress_for
from .base import BaseWorkflow
from .remote import EntryUnusable, Reused, build_spec, deferrable, localize_error

__all__ = ["Query", "DistributedWorkflow", "Engine"]

logger = logging.getLogger(__name__)

#: How many times a run is retried after workers found corrupt entries.
MAX_ATTEMPTS = 3


class Query:
    """Nodes matching a pattern, to give them engine options or a plugin.

    ``query.nodes`` lists them; :meth:`set_remote_args` and :meth:`set_plugin`
    return the query, so calls chain.
    """

    def __init__(self, nodes: list[BaseNode], workflow: DistributedWorkflow) -> None:
        self.nodes = nodes
        self.workflow = workflow

    def set_remote_args(self, args: dict[str, Any]) -> Query:
        """Engine options for these nodes (Ray: ``num_cpus``, ``num_gpus``,
        ``resources``, ``max_retries`` ...; Dask: ``resources``, ``retries``,
        ``priority``, ``workers`` ...).  Checked before anything is submitted."""
        if not isinstance(args, dict):
            raise GraphError(f"set_remote_args takes a dict of options, got {args!r}")
        self.workflow._check_remote_args(args, self.nodes)
        for node in self.nodes:
            self.workflow._remote_args[id(node)] = dict(args)
        return self

    def set_plugin(self, plugin: Any) -> Query:
        """Attach ``plugin`` (see :mod:`functionfuse.backends.plugins`) to these nodes."""
        self.workflow._attach_plugin(self.nodes, plugin)
        return self

    def __repr__(self) -> str:
        return f"<Query of {len(self.nodes)} node(s) of {self.workflow.workflow_name!r}>"


class Engine(ABC):
    """One run's connection to Ray or Dask (what :class:`DistributedWorkflow` drives)."""

    #: Whether tasks return ``(value, status)`` (Ray) or the value only (Dask).
    has_status = False
    #: Told about each node the driver learns has finished (see :meth:`watch`).
    progress: NoProgress = NO_PROGRESS

    def watch(self, progress: NoProgress, statuses: bool = False) -> None:
        """Report finished nodes to ``progress`` (``progress.node_done``), from now on;
        ``statuses``: learn what each node did even without progress (a node a worker
        meant to compute may be read: another run computed it, see storage leases).

        Called before anything is submitted.  Engines learn of finished
        nodes in their own way; with :data:`~functionfuse.progress.NO_PROGRESS`
        they must not spend anything on it.
        """
        self.progress = progress

    @abstractmethod
    def submit(self, task: Task, blob: bytes, deps: list[Any], options: dict) -> Any:
        """Run a node; returns a handle to its value."""

    @abstractmethod
    def submit_load(self, task: Task, blob: bytes, options: dict) -> Any:
        """Load a cached node on a worker; returns a handle to its value."""

    @abstractmethod
    def new_instance(self, task: Task, blob: bytes, deps: list[Any], options: dict) -> tuple[Any, Any]:
        """Construct a stateful instance on one worker; returns ``(host, handle)``."""

    @abstractmethod
    def call(self, host: Any, task: Task, blob: bytes, deps: list[Any], options: dict) -> Any:
        """Run a method call on ``host``, after the previous one."""

    @abstractmethod
    def throttle(self, limit: int) -> None:
        """Block until fewer than ``limit`` submitted tasks are unfinished."""

    @abstractmethod
    def settle(self) -> list[tuple[Task, BaseException | None, Any]]:
        """Wait for every submitted task; ``(task, error or None, status)`` in submission order."""

    @abstractmethod
    def fetch(self, handle: Any) -> Any:
        """The value behind a handle, on the driver."""

    def release(self, handle: Any) -> None:  # noqa: B027 - optional
        """The driver no longer needs ``handle`` (its consumers are submitted)."""

    def drop_instance(self, host: Any) -> None:  # noqa: B027 - optional
        """Every call of the instance on ``host`` is submitted."""

    def cancel(self) -> None:  # noqa: B027 - optional
        """Cancel what was submitted (the run is interrupted or failed)."""

    def close(self) -> None:  # noqa: B027 - optional
        """Release the run's resources (instance hosts ...)."""


class _Retry(Exception):
    def __init__(self, entries: dict[str, str]) -> None:
        self.entries = entries  # key -> why it is unusable


class DistributedWorkflow(BaseWorkflow):
    executor_name = "distributed"  # recorded in run records

    """Base of :class:`~functionfuse.backends.builtin.rayback.RayWorkflow` and
    :class:`~functionfuse.backends.builtin.daskback.DaskWorkflow`."""

    def __init__(self, *nodes: Any, workflow_name: str) -> None:
        super().__init__(*nodes, workflow_name=workflow_name)
        self._remote_args: dict[int, dict] = {}
        self._plugins: dict[int, Any] = {}

    # -- compatible API -------------------------------------------------------------
    def query(self, pattern: str | None = None) -> Query:
        """The nodes whose names fully match ``pattern`` (all nodes for ``None``)."""
        return Query(self.find_nodes(pattern), self)

    def set_plugin(self, pattern: str | None, plugin: Any) -> None:
        """Attach ``plugin`` to the nodes whose names fully match ``pattern``."""
        self._attach_plugin(self.find_nodes(pattern), plugin)

    # -- engine specifics -------------------------------------------------------------
    def _check_remote_args(self, args: dict, nodes: list[BaseNode]) -> None:
        """Reject options the engine does not know, naming them (overridden)."""

    def _check_feasible(self, task: Task, options: dict) -> None:
        """Reject a node the cluster can never run (overridden)."""

    def _attach_plugin(self, nodes: list[BaseNode], plugin: Any) -> None:
        if not callable(getattr(plugin, "local_initialize", None)) or not callable(
            getattr(plugin, "remote_initialize", None)
        ):
            raise GraphError(
                f"{plugin!r} is not a plugin: it needs local_initialize() and remote_initialize() "
                "(see functionfuse.backends.plugins)"
            )
        for node in nodes:
            self._plugins[id(node)] = plugin

    # -- the run ----------------------------------------------------------------------
    def _plugin_calls(self, named: list[tuple[str, BaseNode]]) -> tuple[dict[int, bytes], dict[int, Any]]:
        """Per node: the plugin's key contribution and the function for the worker.

        Plugins are copied for each run, so every run starts from the
        configured state (the same seeds, the same keys).
        """
        extra: dict[int, bytes] = {}
        funcs: dict[int, Any] = {}
        if not self._plugins:
            return extra, funcs
        copies: dict[int, Any] = {}
        for name, node in named:
            plugin = self._plugins.get(id(node))
            if plugin is None:
                continue
            live = copies.get(id(plugin))
            if live is None:
                live = copies[id(plugin)] = fresh_copy(plugin)
            live.local_initialize()
            funcs[id(node)] = live.remote_initialize()
            token_of = getattr(live, "token", None)
            token = token_of() if token_of is not None else None
            if token is not None:
                try:
                    extra[id(node)] = Encoder().encode(token)
                except Unhashable as exc:
                    raise GraphError(
                        f"node {name!r}: the token of plugin {type(live).__qualname__} cannot be hashed "
                        f"({exc.reason}); return plain data from its token() method"
                    ) from None
        return extra, funcs

    def _run(
        self,
        engine_factory: Any,
        *,
        return_results: bool,
        max_pending_tasks: int = 0,
        force: str | Iterable[str] | None = None,
        strict_hashing: bool = False,
        progress: bool | None = None,
        early_cutoff: bool = True,
    ) -> Any:
        if not isinstance(max_pending_tasks, int) or max_pending_tasks < 0:
            raise GraphError(f"max_pending_tasks must be an int >= 0, got {max_pending_tasks!r}")
        if not isinstance(early_cutoff, bool):
            raise GraphError(f"early_cutoff must be True or False, got {early_cutoff!r}")
        reporter = progress_for(self.workflow_name, progress, concurrent=True)
        before = self.last_report
        try:
            results = self._attempts(
                engine_factory, reporter, return_results, max_pending_tasks, force, strict_hashing, early_cutoff
            )
        finally:
            report = self.last_report if self.last_report is not before else None
            reporter.close(report.counts() if reporter.active and report is not None else None)
        if logger.isEnabledFor(logging.INFO):
            report = self.last_report
            logger.info("%s in %s", report.summary(), format_seconds(report.seconds or 0.0))
        return results

    def _attempts(
        self, engine_factory: Any, reporter: NoProgress, return_results: bool, max_pending_tasks: int,
        force: Any, strict_hashing: bool, early_cutoff: bool = True,
    ) -> Any:
        """Run, again without the entries workers found unusable (at most :data:`MAX_ATTEMPTS` passes)."""
        unusable: dict[str, str] = {}
        start = time.perf_counter()
        for attempt in range(MAX_ATTEMPTS):
            engine = engine_factory()
            plan = None
            error: BaseException | None = None
            retrying = False
            try:
                plan, plugin_funcs = self._plan(force, strict_hashing, unusable)
                if plan.storage is not None:
                    if early_cutoff:
                        mark_candidates(plan)
                    want_contents(plan)  # the driver's part: the workers read the rest
                # Workers tell what each node did and how long it took (the report's
                # durations), and when it differs from the plan: read instead of computed
                # (another run's lease), or cut off (early cutoff).  On Dask an event per
                # node, about 1% on trivial nodes.
                engine.watch(reporter, statuses=True)
                begin_run(plan)
                with planning():  # argument summaries of the specs reuse what keying followed
                    results = self._one_pass(engine, plan, plugin_funcs, return_results, max_pending_tasks)
            except (KeyboardInterrupt, SystemExit) as exc:
                error = exc
                engine.cancel()  # an interrupted run leaves nothing running
                raise
            except _Retry as retry:
                retrying = True
                unusable.update(retry.entries)
                logger.info("retrying %r without unusable entries %s", self.workflow_name, sorted(retry.entries))
                continue
            except BaseException as exc:
                error = exc
                raise
            finally:
                engine.close()
                if plan is not None:
                    finish_report(plan, error)
                    if not retrying:
                        record_run(plan, error, self.executor_name)
                    end_run(plan)
                    self.last_report = RunReport(
                        self.workflow_name, tasks=plan.tasks, seconds=time.perf_counter() - start
                    )
            return results
        raise ExecutorError(
            f"workflow {self.workflow_name!r}: entries kept being found unusable after {MAX_ATTEMPTS} "
            f"attempts ({', '.join(sorted(unusable))}); is another process corrupting the storage?"
        )

    def _explain_plan(self, force: Any) -> Plan:
        return self._plan(force, False, {})[0]  # plugins' seeds count in keys

    def _plan(self, force: Any, strict: bool, unusable: dict[str, str]) -> tuple[Plan, dict[int, Any]]:
        named = self._named()
        extra, plugin_funcs = self._plugin_calls(named)
        plan = make_plan(
            self.workflow_name,
            named,
            self._funcs,
            self.object_storage,
            unstored=self._unstored,
            force=force,
            strict=strict,
            extra=extra,
            unusable=unusable,
        )
        return plan, plugin_funcs

    def _one_pass(
        self, engine: Engine, plan: Plan, plugin_funcs: dict[int, Any], return_results: bool, max_pending: int
    ) -> Any:
        progress = engine.progress
        if progress.active:
            progress.start(len(plan.tasks), sum(not task.run for task in plan.tasks))
        storage_blob = None
        if plan.storage is not None:
            try:
                storage_blob = cloudpickle.dumps(plan.storage)
            except Exception as exc:  # noqa: BLE001
                raise StorageError(f"the storage {plan.storage!r} cannot be sent to workers: {exc}") from exc

        # Everything to run is pickled before anything is submitted, so a node that
        # cannot be sent fails the run before anything runs.  A plain spec (builtin
        # arguments, no plugin) cannot fail once its function is pickled: it is built
        # when submitted, and the workers start sooner (see remote.deferrable).
        blobs: dict[int, bytes] = {}
        functions: dict[int, Any] = {}  # each function pickled once per run
        checked: set[str] = set()  # each distinct set of options asks the cluster once
        for task in plan.tasks:
            if task.run:
                plugin = plugin_funcs.get(id(task.node))
                if not deferrable(task, plugin, functions):
                    blobs[id(task)] = build_spec(plan, task, plugin, storage_blob, functions=functions)
                options = self._options(task)
                if options:
                    seen = repr(sorted(options.items()))
                    if seen not in checked:
                        self._check_feasible(task, options)  # fail now, not half-way
                        checked.add(seen)

        leaf_nodes = {id(leaf.node if isinstance(leaf, NodeItem) else leaf) for leaf in self.leaves}
        for task in plan.tasks:
            if task.run:
                for dep in task.deps:
                    dep.uses += 1

        handles: dict[int, Any] = {}
        hosts: dict[int, Any] = {}
        calls_left: dict[int, int] = {}  # per instance: running calls not submitted yet
        for task in plan.tasks:
            if task.run and type(task.node) is ClassCallNode:
                calls_left[id(task.node.init)] = calls_left.get(id(task.node.init), 0) + 1

        def handle_of(dep: Task) -> Any:
            handle = handles.get(id(dep))
            if handle is None:  # a cached dependency: load it on a worker
                blob = build_spec(plan, dep, None, storage_blob, load=True)
                handle = handles[id(dep)] = engine.submit_load(dep, blob, self._options(dep, load=True))
            return handle

        for task in plan.tasks:
            if not task.run:
                continue
            if max_pending:
                engine.throttle(max_pending)
            deps = [handle_of(d) for d in task.deps]
            blob = blobs.pop(id(task), None)
            if blob is None:
                blob = build_spec(plan, task, None, storage_blob, functions=functions)
            options = self._options(task)
            node = task.node
            if progress.active:  # before submitting: the engine may report it done at once
                progress.node_started(task.name)
            if type(node) is ClassInitNode:
                hosts[id(node)], handle = engine.new_instance(task, blob, deps, options)
                if not calls_left.get(id(node)):
                    engine.drop_instance(hosts.pop(id(node)))
            elif type(node) is ClassCallNode:
                handle = engine.call(hosts[id(node.init)], task, blob, deps, options)
                calls_left[id(node.init)] -= 1
                if calls_left[id(node.init)] == 0:  # the last call: let the instance go when done
                    engine.drop_instance(hosts.pop(id(node.init)))
            else:
                handle = engine.submit(task, blob, deps, options)
            handles[id(task)] = handle
            for dep in task.deps:  # let the engine free values nobody needs any more
                dep.uses -= 1
                if dep.uses == 0 and id(dep.node) not in leaf_nodes:
                    released = handles.pop(id(dep), None)
                    if released is not None:
                        engine.release(released)

        self._settle(engine, plan)
        if not return_results:
            return None
        values = [self._result(engine, plan, handles, leaf) for leaf in self.leaves]
        return values[0] if len(values) == 1 else values

    def _settle(self, engine: Engine, plan: Plan) -> None:
        first: tuple[Task, BaseException] | None = None
        fallback: tuple[Task, BaseException] | None = None  # consequences of another failure
        unusable: dict[str, str] = {}
        by_name = {t.name: t for t in plan.tasks}
        loaded: set[str] = set()  # nodes cut off on a worker whose result a consumer loaded
        for task, error, status in engine.settle():
            if error is None:
                if task.action == "failed":
                    continue  # released early; its consumer's error named it
                if status is not None:
                    task.action, task.seconds = status[0], status[1]
                    if len(status) > 3 and status[3] is not None:  # the worker cut it off (done: not run)
                        task.reason, task.entry, task.run = status[3], task.key, False
                    if len(status) > 4:  # it loaded results its inputs reused
                        loaded.update(status[4])
                elif task.run:
                    task.action = "replayed" if task.reason == "replay" else "computed"
                else:
                    task.action = "read"
                continue
            if isinstance(error, EntryUnusable):
                if error.entry in unusable:
                    continue  # the same failure, passed on to a consumer
                unusable[error.entry] = error.reason
                by_name.get(error.node, task).entry = None
                if error.reason == SCHEMA_CHANGED:  # expected after editing a class: no warning
                    logger.info("%s; recomputing it", error)
                else:
                    warnings.warn(f"{error}; recomputing it", CacheWarning, stacklevel=5)
                continue
            # The node that failed is the one the error names; a consumer that
            # received its upstream's error never ran (finish_report says so).
            failed_name = getattr(error, "node", None) or task.name
            culprit = task if failed_name == task.name else by_name.get(failed_name)
            if culprit is not None:
                culprit.action = "failed"
                culprit.seconds = getattr(error, "seconds", 0.0) or culprit.seconds
            if getattr(error, "secondary", False):
                if fallback is None:
                    fallback = (task, error)
            elif first is None:
                first = (task, error)
        for name in loaded:  # statuses come in any order (Dask: released tasks last)
            reused = by_name.get(name)
            if reused is not None and reused.action == "skipped":
                reused.action = "read"
        if unusable:
            raise _Retry(unusable)
        first = first or fallback
        if first is not None:
            task, error = first
            localize_error(error, plan, self._plugins)  # the user's files and source lines
            raise _named_error(task, error)

    def _result(self, engine: Engine, plan: Plan, handles: dict[int, Any], leaf: Any) -> Any:
        node = leaf.node if isinstance(leaf, NodeItem) else leaf
        task = plan.task(node)
        handle = handles.get(id(task))
        if handle is not None:
            try:
                value = engine.fetch(handle)
            except FunctionFuseError:
                raise
            except Exception as exc:  # the value did not survive the trip to the driver
                err = ExecutorError(
                    f"node {task.name!r}: its result cannot be brought back to this process "
                    f"({type(exc).__name__}: {exc}); return something this process can unpickle "
                    "(the worker computed and stored it)"
                )
                err.node = task.name  # type: ignore[attr-defined]
                raise err from exc
        if handle is None or type(value) is Reused:
            # Cached and not needed by anything that ran, or cut off on a worker (which
            # handed on the reused result's key): load it here.
            if handle is not None:  # its status may not have come (a Dask event missed)
                task.entry, task.reason, task.run = value.key, UPSTREAM_UNCHANGED, False
            try:
                value = load_node(plan, task)
            except SerializerNotRegisteredError:
                raise
            except LOAD_ERRORS as exc:
                if unusable_reason(exc) == SCHEMA_CHANGED:
                    logger.info("node %r: %s; recomputing it", task.name, exc)
                else:
                    warnings.warn(
                        f"node {task.name!r}: stored entry {task.entry} is unusable ({exc}); recomputing it",
                        CacheWarning,
                        stacklevel=5,
                    )
                raise _Retry({task.entry or "": unusable_reason(exc)}) from None
        return leaf.extract(value) if isinstance(leaf, NodeItem) else value

    def _options(self, task: Task, load: bool = False) -> dict:
        """Engine options of a task (overridden: Ray and Dask name them differently)."""
        return self._remote_args.get(id(task.node), {})


def fresh_copy(plugin: Any) -> Any:
    """A deep copy of a plugin's state that keeps the callables it holds.

    ``random.seed`` is a method of the module's Random instance: a deep copy
    would bind it to a copy, and seeding would not reach the module.
    """
    memo: dict[int, Any] = {}
    seen: set[int] = set()

    def keep(obj: Any) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if callable(obj) and not hasattr(obj, "local_initialize"):
            memo[id(obj)] = obj
            return
        if isinstance(obj, (list, tuple, set, frozenset)):
            for item in obj:
                keep(item)
        elif isinstance(obj, dict):
            for item in obj.values():
                keep(item)
        elif hasattr(obj, "__dict__"):
            for item in vars(obj).values():
                keep(item)

    keep(plugin)
    return copy.deepcopy(plugin, memo)


def _named_error(task: Task, error: BaseException) -> BaseException:
    """The error to raise from ``run`` for a failure seen on ``task``."""
    if isinstance(error, FunctionFuseError):
        return error  # raised by our code on the worker: already names its node
    err = ExecutorError(
        f"node {task.name!r} failed on the cluster: {type(error).__name__}: {error}"
    )
    err.node = task.name  # type: ignore[attr-defined]
    err.__cause__ = error
    return err


def new_run_id() -> str:
    """A short unique id for one run (engine task keys, instance registries)."""
    return uuid.uuid4().hex[:12]
