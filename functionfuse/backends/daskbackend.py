"""The Dask backend: each node a ``distributed`` task.

``DaskWorkflow`` runs on the ``Client`` it is given, or starts a
``LocalCluster`` (worker processes) for the run and closes it afterwards.

* Nodes are submitted in batches, not one ``Client.submit`` each: the engine
  buffers them (up to :data:`BATCH`) and submits each run of consecutive nodes
  with the same options as one graph with ``Client.get`` (``dask._task_spec``
  tasks; a dependency is a reference to its key, in the same graph or held by
  a future from an earlier batch).  One graph is one update of the scheduler
  instead of one per node.  The buffer is flushed when it is full, before a
  pinned instance task (submitted one by one, on its worker), when the run
  waits (``settle``, ``throttle``) and when a value is fetched.  A released
  node's future is dropped only after its buffered consumers are submitted.
* The scheduler orders the tasks and moves values between workers; workers
  load cached inputs and store results themselves.
* ``query(pattern).set_remote_args({...})`` gives nodes Dask's per-task
  options: ``resources``, ``retries``, ``priority``, ``workers``,
  ``allow_other_workers``.
* A stateful class instance lives on one worker, chosen when it is created
  (among the workers offering the instance node's ``resources``, or its
  ``workers``), and its calls are pinned there, each depending on the previous
  one, so they run in call order.  If that worker dies the run fails naming
  the node, instead of waiting forever for a worker that is gone.
* Task keys start with the node's function (``inc-<n>-<run>``,
  ``load-inc-...``, ``init-Counter-...``, ``Counter.add-...``): the dashboard
  and the logs group and name tasks by that prefix.
* When the run's progress is shown or logged (:mod:`functionfuse.progress`),
  each worker logs a Dask event (``Worker.log_event``) when it finishes a
  node, with what it did and how long it took; the driver subscribes to them
  for the run.  The scheduler forwards an event before it reports the task
  finished, so the run's report has every node's duration.  Otherwise tasks
  run exactly as without progress: no event, no cost.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from ..caching import Task
from ..errors import ExecutorError, GraphError
from ..graph import BaseNode, ClassCallNode
from ..progress import NoProgress
from . import remote
from .distributed import DistributedWorkflow, Engine, new_run_id

__all__ = ["DaskWorkflow"]

logger = logging.getLogger(__name__)

#: Dask's per-task options a node may be given (``Client.submit`` arguments).
TASK_OPTIONS = frozenset({"resources", "retries", "priority", "workers", "allow_other_workers"})

# -- worker side: instances pinned to a worker -------------------------------------------

_HOSTS: dict[str, remote.InstanceHost] = {}
_HOSTS_LOCK = threading.Lock()


def _init_instance(host_key: str, report: tuple | None, blob: bytes, *deps: Any) -> None:
    host = remote.InstanceHost()
    _, status = host.init(blob, *deps)
    with _HOSTS_LOCK:
        _HOSTS[host_key] = host
    if report is not None:
        _publish(report, status)


def _call_instance(host_key: str, previous: Any, report: tuple | None, blob: bytes, *deps: Any) -> Any:
    with _HOSTS_LOCK:
        host = _HOSTS.get(host_key)
    if host is None:
        raise ExecutorError(
            f"the instance {host_key!r} is not on this worker (was its worker restarted?)"
        )
    value, status = host.call(blob, *deps)
    if report is not None:
        _publish(report, status)
    return value


def _drop_instances(run_id: str) -> int:
    with _HOSTS_LOCK:
        keys = [k for k in _HOSTS if k.startswith(run_id + "/")]
        for k in keys:
            del _HOSTS[k]
    return len(keys)


# -- progress: an event per finished node --------------------------------------------------

#: The topic this driver process's runs listen to (events carry the run's id).
_TOPIC = "functionfuse-progress-" + uuid.uuid4().hex[:12]


def _run_reported(report: tuple, blob: bytes, *deps: Any) -> Any:
    """:func:`remote.run_value`, logging what the node did (``report`` is ``(topic, run id)``)."""
    value, status = remote.run_task(blob, *deps)
    _publish(report, status)
    return value


def _load_reported(report: tuple, blob: bytes) -> Any:
    """:func:`remote.load_value`, logging the load."""
    value, status = remote.load_task(blob)
    _publish(report, status)
    return value


def _publish(report: tuple, status: tuple) -> None:
    """Tell the driver (through the scheduler) that this task finished: ``[run, key, action,
    seconds, reason, names of the reused results it loaded]``."""
    topic, run_id = report
    try:
        import distributed

        worker = distributed.get_worker()
        worker.log_event(topic, [run_id, worker.get_current_task(), status[0], status[1], status[3],
                                 list(status[4]) if len(status) > 4 else None])
    except Exception as exc:  # noqa: BLE001 - progress is never worth failing a node for
        logger.debug("could not report progress: %s", exc)


_LISTENERS: dict[str, Callable[[list], None]] = {}  # run id -> the engine's handler
_SUBSCRIBED: dict[str, int] = {}  # client id -> runs listening through it
_LISTEN_LOCK = threading.Lock()


def _on_event(event: tuple) -> None:
    """A client's handler of :data:`_TOPIC` (runs in the client's event loop)."""
    msg = event[1]
    listener = _LISTENERS.get(msg[0]) if isinstance(msg, (list, tuple)) and msg else None
    if listener is not None:
        listener(msg)


def _listen(client: Any, run_id: str, listener: Callable[[list], None]) -> None:
    # One subscription per client, shared by the runs on it (a handler per
    # topic and client: a second subscribe would replace the first).
    with _LISTEN_LOCK:
        _LISTENERS[run_id] = listener
        count = _SUBSCRIBED.get(client.id, 0)
        if count == 0:
            client.subscribe_topic(_TOPIC, _on_event)
        _SUBSCRIBED[client.id] = count + 1


def _unlisten(client: Any, run_id: str) -> None:
    with _LISTEN_LOCK:
        if _LISTENERS.pop(run_id, None) is None:
            return
        count = _SUBSCRIBED.pop(client.id, 1) - 1
        if count:
            _SUBSCRIBED[client.id] = count
            return
    try:
        client.unsubscribe_topic(_TOPIC)
    except Exception as exc:  # noqa: BLE001 - a closed client has no subscription left anyway
        logger.debug("could not unsubscribe from %s: %s", _TOPIC, exc)


# -- driver side ------------------------------------------------------------------------


#: Nodes buffered before they are submitted as one graph (see :meth:`_DaskEngine._flush`).
BATCH = 1000


class _Pending:
    """A node submitted to the engine: its key, and its Dask future once the batch
    holding it has reached the scheduler."""

    __slots__ = ("key", "future")

    def __init__(self, key: str) -> None:
        self.key = key
        self.future: Any = None


class _Host:
    __slots__ = ("key", "worker", "last", "name")

    def __init__(self, key: str, worker: str, name: str) -> None:
        self.key, self.worker, self.name, self.last = key, worker, name, None


class _DaskEngine(Engine):
    def __init__(self, client: Any, run_id: str) -> None:
        import distributed

        self.distributed = distributed
        self.client = client
        self.run_id = run_id
        self.submitted: dict[str, tuple[Task, Any]] = {}  # future key -> (task, future)
        self.released: list[Task] = []  # tasks whose futures the driver dropped
        self.order: list[str] = []
        self.pending: list[Any] = []
        self.pinned: list[tuple[Task, Any, _Host]] = []
        self.hosts = 0
        self._seq = 0
        self._cycle: Any = None
        self.report: tuple | None = None  # (topic, run id) when workers report finished nodes
        self.reported: dict[str, Task] = {}  # future key -> task, while reporting
        self.statuses: dict[int, tuple] = {}  # id(task) -> (action, seconds) the worker reported
        self._batch: list[tuple] = []  # (task, handle, func, args, options) not submitted yet
        self._drop: list[Any] = []  # handles released while their consumers were buffered

    def watch(self, progress: NoProgress, statuses: bool = False) -> None:
        super().watch(progress, statuses)
        if (progress.active or statuses) and self.report is None:
            _listen(self.client, self.run_id, self._on_status)
            self.report = (_TOPIC, self.run_id)

    def _on_status(self, msg: list) -> None:
        _, key, action, seconds, reason, loaded = msg
        task = self.reported.get(key)
        if task is None:
            return
        self.statuses[id(task)] = (action, seconds, None, reason) + ((tuple(loaded),) if loaded else ())
        self.progress.node_done(task.name, action, seconds)

    def _key(self, prefix: str, task: Task) -> str:
        # Dask groups tasks by the key's prefix up to "-<number>": keyed by
        # function, a fan-out of one function is one group that the scheduler
        # queues and spreads over the workers (keyed by node name, each node
        # would be a group of one, placed next to its input).  Node names
        # travel with the task (errors name the node, not the key).
        self._seq += 1
        return f"{prefix}{task.node.qualname}-{self._seq}-{self.run_id}"

    def submit(self, task: Task, blob: bytes, deps: list[Any], options: dict) -> Any:
        key = self._key("", task)
        if self.report is None:
            return self._buffer(task, key, remote.run_value, (blob, *deps), options)
        return self._buffer(task, key, _run_reported, (self.report, blob, *deps), options)

    def submit_load(self, task: Task, blob: bytes, options: dict) -> Any:
        key = self._key("load-", task)
        if self.report is None:
            return self._buffer(task, key, remote.load_value, (blob,), {})
        return self._buffer(task, key, _load_reported, (self.report, blob), {})

    # -- batches: one graph per run of nodes with the same options -----------------------
    def _buffer(self, task: Task, key: str, func: Any, args: tuple, options: dict) -> _Pending:
        handle = _Pending(key)
        self._batch.append((task, handle, func, args, options))
        if len(self._batch) >= BATCH:
            self._flush()
        return handle

    def _flush(self) -> None:
        """Submit the buffered nodes: one ``Client.get`` of a graph per run of consecutive
        nodes with the same options (Dask applies options per submission), dependencies
        as references to keys.  Then drop the futures released meanwhile: their
        consumers are on the scheduler now, which keeps the values as long as needed."""
        if not self._batch:
            return
        from dask._task_spec import Task as DaskTask
        from dask._task_spec import TaskRef

        batch, self._batch = self._batch, []
        start = 0
        while start < len(batch):
            options = batch[start][4]
            end = start + 1
            while end < len(batch) and batch[end][4] == options:
                end += 1
            group = batch[start:end]
            graph = {}
            for task, handle, func, args, _ in group:
                refs = [TaskRef(a.key) if isinstance(a, _Pending) else a for a in args]
                graph[handle.key] = DaskTask(handle.key, func, *refs)
            futures = self.client.get(graph, list(graph), sync=False, **options)
            for (task, handle, *_), fut in zip(group, futures):
                handle.future = fut
                self._track(task, fut)
            start = end
        for handle in self._drop:
            self._release_now(handle)
        self._drop = []

    def _future(self, handle: Any) -> Any:
        """The Dask future of a handle (submitting what is buffered first)."""
        if isinstance(handle, _Pending):
            if handle.future is None:
                self._flush()
            return handle.future
        return handle

    def _pick_worker(self, task: Task, options: dict) -> str:
        given = options.get("workers")
        if given:
            return given if isinstance(given, str) else list(given)[0]
        workers = self.client.scheduler_info(n_workers=-1)["workers"]
        wanted = options.get("resources") or {}
        fit = sorted(
            addr
            for addr, info in workers.items()
            if all(info.get("resources", {}).get(r, 0) >= amount for r, amount in wanted.items())
        )
        if not fit:
            raise ExecutorError(
                f"node {task.name!r}: no worker of the Dask cluster offers the resources {wanted!r} "
                "its instance needs; start workers with them (e.g. LocalCluster(resources=...))"
            )
        if self._cycle is None:
            self._cycle = itertools.count()
        return fit[next(self._cycle) % len(fit)]

    def new_instance(self, task: Task, blob: bytes, deps: list[Any], options: dict) -> tuple[Any, Any]:
        self._flush()  # pinned tasks are submitted one by one, after what they depend on
        deps = [self._future(d) for d in deps]
        worker = self._pick_worker(task, options)
        host = _Host(f"{self.run_id}/{task.name}", worker, task.name)
        extra = {k: v for k, v in options.items() if k == "priority"}
        fut = self.client.submit(
            _init_instance,
            host.key,
            self.report,
            blob,
            *deps,
            key=self._key("init-", task),
            pure=False,
            workers=[worker],
            allow_other_workers=False,
            **extra,
        )
        host.last = fut
        self.hosts += 1
        self._track(task, fut)
        self.pinned.append((task, fut, host))
        return host, fut

    def call(self, host: Any, task: Task, blob: bytes, deps: list[Any], options: dict) -> Any:
        self._flush()
        deps = [self._future(d) for d in deps]
        fut = self.client.submit(
            _call_instance,
            host.key,
            host.last,
            self.report,
            blob,
            *deps,
            key=self._key("", task),
            pure=False,
            workers=[host.worker],
            allow_other_workers=False,
        )
        host.last = fut
        self._track(task, fut)
        self.pinned.append((task, fut, host))
        return fut

    def _track(self, task: Task, fut: Any) -> None:
        if self.report is not None:
            self.reported[fut.key] = task
        self.submitted[fut.key] = (task, fut)
        self.order.append(fut.key)
        self.pending.append(fut)

    def release(self, handle: Any) -> None:
        # Dropping the future lets Dask free the value once its consumers ran.
        # A failure still surfaces: it is passed on to those consumers.  Consumers
        # still buffered must reach the scheduler first: dropped at the next flush.
        if self._batch:
            self._drop.append(handle)
        else:
            self._release_now(handle)

    def _release_now(self, handle: Any) -> None:
        entry = self.submitted.pop(handle.key, None)
        if entry is not None:
            self.released.append(entry[0])
        if isinstance(handle, _Pending):
            handle.future = None

    def throttle(self, limit: int) -> None:
        if len(self.pending) + len(self._batch) >= limit:
            self._flush()
        while len(self.pending) >= limit:
            with self.client.as_current():  # ``wait`` looks for a default client
                done = self.distributed.wait(self.pending, return_when="FIRST_COMPLETED")
            self.pending = list(done.not_done)

    def settle(self) -> list[tuple[Task, BaseException | None, Any]]:
        self._flush()
        self.pending = []
        futures = [f for _, f in self.submitted.values()]
        lost: dict[str, BaseException] = {}
        while futures:
            try:
                with self.client.as_current():
                    self.distributed.wait(futures, timeout=1.0)
                break
            except self.distributed.TimeoutError:
                lost = self._lost_instances()
                if lost:
                    break
            except TimeoutError:
                lost = self._lost_instances()
                if lost:
                    break
        self._await_statuses(futures)
        out: list[tuple[Task, BaseException | None, Any]] = []
        leftover = []
        # Statuses first, cancellations after: cancelling a future cancels its dependents.
        released = {id(t) for t in self.released}
        for key in self.order:
            entry = self.submitted.get(key)
            if entry is None:
                continue
            task, fut = entry
            if fut.key in lost:
                leftover.append(fut)
                out.append((task, lost[fut.key], None))
            elif fut.status == "error":
                out.append((task, fut.exception(), None))
            elif fut.status == "cancelled":
                out.append((task, ExecutorError(f"node {task.name!r}: its Dask task was cancelled"), None))
            elif fut.status == "finished":
                out.append((task, None, self.statuses.get(id(task))))
            else:  # its data went with a dead worker: a consequence, not the cause
                leftover.append(fut)
                err = ExecutorError(f"node {task.name!r}: its result was lost with a dead worker")
                err.secondary = True  # type: ignore[attr-defined]
                out.append((task, err, None))
        for fut in leftover:
            fut.cancel()
        out.extend((task, None, self.statuses.get(id(task))) for task in self.released if id(task) in released)
        return out

    def _await_statuses(self, futures: list[Any], limit: float = 2.0) -> None:
        """Give the status events of finished tasks up to ``limit`` seconds to arrive: a
        worker sends its event before its task returns, but the scheduler forwards events
        and results to this client separately."""
        if self.report is None:
            return
        done = {f.key for f in futures if f.status == "finished"}
        expected = [t for key, (t, f) in self.submitted.items() if f.key in done]
        deadline = time.monotonic() + limit
        while any(id(t) not in self.statuses for t in expected) and time.monotonic() < deadline:
            time.sleep(0.01)

    def _lost_instances(self) -> dict[str, BaseException]:
        """Pinned tasks whose worker has left the cluster (they would wait forever)."""
        if not self.pinned:
            return {}
        alive = set(self.client.scheduler_info(n_workers=-1)["workers"])
        lost = {}
        for task, fut, host in self.pinned:
            if not fut.done() and host.worker not in alive:
                lost[fut.key] = ExecutorError(
                    f"node {task.name!r}: the Dask worker {host.worker} holding the instance "
                    f"{host.name!r} died; the instance's state is lost (rerun to rebuild it from "
                    "the stored calls)"
                )
        return lost

    def fetch(self, handle: Any) -> Any:
        return self._future(handle).result()

    def cancel(self) -> None:
        self._batch = []  # never submitted: nothing to cancel
        futures = [f for _, f in self.submitted.values()]
        if futures:
            try:
                self.client.cancel(futures)
            except Exception as exc:  # noqa: BLE001 - best effort on the way out
                logger.debug("could not cancel run %s: %s", self.run_id, exc)

    def close(self) -> None:
        if self.report is not None:
            _unlisten(self.client, self.run_id)
            self.report = None
        if self.hosts:
            try:
                self.client.run(_drop_instances, self.run_id)
            except Exception as exc:  # noqa: BLE001 - cleanup only
                logger.debug("could not drop instances of run %s: %s", self.run_id, exc)


class DaskWorkflow(DistributedWorkflow):
    """Run a workflow on Dask ``distributed``.

    Parameters
    ----------
    *nodes : node or node[i]
        Nodes whose results :meth:`run` returns.
    workflow_name : str
        The name results are stored under.
    client : distributed.Client, optional
        The cluster to run on.  Without one, each :meth:`run` starts a
        ``LocalCluster`` with worker processes and closes it afterwards
        (``cluster_kwargs`` are passed to it).
    """

    executor_name = "dask"

    def __init__(
        self, *nodes: Any, workflow_name: str, client: Any = None, cluster_kwargs: dict | None = None
    ) -> None:
        super().__init__(*nodes, workflow_name=workflow_name)
        if client is not None and not hasattr(client, "submit"):
            raise GraphError(f"client must be a distributed.Client, got {client!r}")
        self.client = client
        self.cluster_kwargs = dict(cluster_kwargs or {})

    def run(
        self,
        return_results: bool = True,
        max_pending_tasks: int = 0,
        *,
        force: str | Iterable[str] | None = None,
        strict_hashing: bool = False,
        progress: bool | None = None,
        early_cutoff: bool = True,
    ) -> Any:
        """Run the workflow on Dask and return the given nodes' results.

        Returns the single node's result, or a list in the order the nodes
        were given (``None`` with ``return_results=False``).  ``force``,
        ``strict_hashing``, ``early_cutoff`` and ``max_pending_tasks`` are as for the other
        backends (a node cut off is checked and read on the worker that would compute it).
        ``progress`` shows a progress bar (nodes done and to do,
        how many are running, elapsed time, cached and computed counts); by
        default when stderr is a terminal or in a notebook, see
        :mod:`functionfuse.progress`.  Node errors are raised naming the node.
        """
        options = (return_results, max_pending_tasks, force, strict_hashing, progress, early_cutoff)
        if self.client is not None:
            return self._run_on(self.client, *options)
        import distributed

        kwargs = {"processes": True, "dashboard_address": ":0", **self.cluster_kwargs}
        with distributed.LocalCluster(**kwargs) as cluster, distributed.Client(cluster) as client:
            return self._run_on(client, *options)

    def _run_on(
        self, client: Any, return_results: bool, max_pending: int, force: Any, strict: bool, progress: bool | None,
        early_cutoff: bool = True,
    ) -> Any:
        self._active_client = client
        return self._run(
            lambda: _DaskEngine(client, new_run_id()),
            return_results=return_results,
            max_pending_tasks=max_pending,
            force=force,
            strict_hashing=strict,
            progress=progress,
            early_cutoff=early_cutoff,
        )

    def _check_remote_args(self, args: dict, nodes: list[BaseNode]) -> None:
        unknown = sorted(set(args) - TASK_OPTIONS)
        if unknown:
            names = ", ".join(repr(n.get_name()) for n in nodes[:3]) + (" ..." if len(nodes) > 3 else "")
            raise GraphError(
                f"unknown Dask option(s) {', '.join(map(repr, unknown))} for node(s) {names}; valid "
                f"options: {', '.join(sorted(TASK_OPTIONS))} (the arguments of Client.submit)"
            )

    def _check_feasible(self, task: Task, options: dict) -> None:
        """A node needing resources no worker offers is an error, not an endless wait."""
        wanted = options.get("resources")
        if not wanted or options.get("allow_other_workers"):
            return
        workers = self._active_client.scheduler_info(n_workers=-1)["workers"]
        if not any(
            all(info.get("resources", {}).get(r, 0) >= amount for r, amount in wanted.items())
            for info in workers.values()
        ):
            raise ExecutorError(
                f"node {task.name!r} needs the resources {wanted!r}, which no worker of the Dask "
                "cluster offers; it would wait forever. Start workers with them (e.g. "
                "LocalCluster(resources=...)) or change its query(...).set_remote_args options."
            )

    def _options(self, task: Task, load: bool = False) -> dict:
        if load or isinstance(task.node, ClassCallNode):
            return {}
        # For an instance node, ``workers`` and ``resources`` choose its worker.
        return self._remote_args.get(id(task.node), {})
