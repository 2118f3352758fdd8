"""The Ray backend: each node a Ray task, each stateful class instance an actor.

Compatible with the original package's ``RayWorkflow`` and fixed:

* dependencies are real Ray dependencies: ObjectRefs are passed as top-level
  arguments, so Ray's scheduler sees them and no worker calls ``ray.get``;
* workers load their cached inputs and store their results themselves;
* ``max_pending_tasks`` throttles every kind of task, actor calls included;
* every task (and so every save) is awaited before ``run`` returns, and the
  first failure is raised with the node's name whatever ``return_results`` is;
* ``ray_init_args`` that a Ray already running in this process would not honour
  are reported, instead of being silently ignored (the original shut down the
  user's Ray and started another);
* tasks are named after the node's function (``inc``, ``load-inc``,
  ``init-Counter``, ``Counter.add``) in Ray's dashboard, ``ray list tasks`` and
  logs, rather than all being ``run_task``;
* when the run's progress is shown or logged (:mod:`functionfuse.progress`),
  the driver reads each node's small status object (what it did, how long it
  took) as soon as it is ready, instead of all of them at the end.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from ..caching import Task
from ..errors import ExecutorError, GraphError
from ..graph import BaseNode, ClassCallNode, ClassInitNode
from . import remote
from .distributed import DistributedWorkflow, Engine

__all__ = ["RayWorkflow"]

logger = logging.getLogger(__name__)

#: Options of a Ray task a node may be given (ray.remote / .options()).
TASK_OPTIONS = frozenset(
    {
        "num_cpus",
        "num_gpus",
        "resources",
        "accelerator_type",
        "memory",
        "max_retries",
        "retry_exceptions",
        "scheduling_strategy",
        "runtime_env",
        "label_selector",
        "name",
    }
)
#: Options of an actor (given to a class instance node).  ``max_restarts`` is
#: not one: a restarted actor would have lost the instance's state.
ACTOR_OPTIONS = frozenset(
    {
        "num_cpus",
        "num_gpus",
        "resources",
        "accelerator_type",
        "memory",
        "scheduling_strategy",
        "runtime_env",
        "label_selector",
    }
)
#: What init arguments can be compared with a running Ray.
_COMPARABLE = {"num_cpus": "CPU", "num_gpus": "GPU"}


def _ray() -> Any:
    import ray

    return ray


_REMOTES: dict[str, Any] = {}


def _remote(name: str) -> Any:
    """Ray wrappers of the worker functions, made once per process."""
    fn = _REMOTES.get(name)
    if fn is None:
        ray = _ray()
        if name == "run":
            fn = ray.remote(num_returns=2)(remote.run_task_packed)
        elif name == "load":
            fn = ray.remote(num_returns=2)(remote.load_task_packed)
        else:
            fn = ray.remote(remote.InstanceHost)
        _REMOTES[name] = fn
    return fn


_STARTED_WITH: list[dict] = []  # the arguments this process last started Ray with


def ensure_ray(ray_init_args: dict | None) -> None:
    """Start Ray with ``ray_init_args``, or check a running Ray honours them."""
    ray = _ray()
    args = dict(ray_init_args or {})
    if not ray.is_initialized():
        start = {"logging_level": logging.WARNING, **args}
        ray.init(**start)
        _STARTED_WITH[:] = [args]
        return
    if not args or (_STARTED_WITH and _STARTED_WITH[0] == args):
        return  # nothing asked, or what started it (a notebook cell run again)
    total = ray.cluster_resources()
    problems = []
    for key, value in args.items():
        if key in _COMPARABLE:
            have = total.get(_COMPARABLE[key], 0)
            if float(value) != float(have):
                problems.append(f"{key}={value!r} (the running Ray has {have:g})")
        elif key == "resources" and isinstance(value, dict):
            for res, amount in value.items():
                if float(total.get(res, 0)) != float(amount):
                    problems.append(f"resources[{res!r}]={amount!r} (the running Ray has {total.get(res, 0):g})")
        elif key in ("ignore_reinit_error", "logging_level", "log_to_driver", "include_dashboard"):
            continue
        else:
            problems.append(f"{key}={value!r} (cannot be checked against the running Ray)")
    if problems:
        raise ExecutorError(
            "Ray is already running in this process and does not match ray_init_args: "
            + "; ".join(problems)
            + ". Call ray.shutdown() before creating the workflow, or pass ray_init_args={} to "
            "use the running Ray as it is."
        )


class _RayEngine(Engine):
    has_status = True

    def __init__(self) -> None:
        self.ray = _ray()
        self.submitted: list[tuple[Task, Any]] = []  # (task, status ref)
        self.pending: list[Any] = []
        self.hosts: list[Any] = []
        self.named: dict[tuple[str, str], Any] = {}  # (kind, task name) -> remote function
        self.last_call: dict[int, Any] = {}  # id(actor) -> status ref of its last submitted call
        self.unreported: dict[Any, Task] | None = None  # status ref -> task, while progress is watched

    def watch(self, progress: Any, statuses: bool = False) -> None:
        super().watch(progress, statuses)
        if progress.active:
            self.unreported = {}

    def _fn(self, kind: str, name: str, options: dict) -> Any:
        """The remote function ``kind`` whose tasks are called ``name``.

        Ray shows a task's ``name`` in its dashboard, ``ray list tasks`` and
        logs (by default every node would be ``run_task``).  ``.options()``
        costs ~10 us, so without node options the named function is made once
        per function per run.  A ``name`` among the node's options wins.
        """
        if options:
            return _remote(kind).options(**{"name": name, **options})
        fn = self.named.get((kind, name))
        if fn is None:
            fn = self.named[(kind, name)] = _remote(kind).options(name=name)
        return fn

    def submit(self, task: Task, blob: bytes, deps: list[Any], options: dict) -> Any:
        value, status = self._fn("run", task.node.qualname, options).remote(blob, *deps)
        self._track(task, status)
        return value

    def submit_load(self, task: Task, blob: bytes, options: dict) -> Any:
        value, status = self._fn("load", "load-" + task.node.qualname, options).remote(blob)
        self._track(task, status)
        return value

    def new_instance(self, task: Task, blob: bytes, deps: list[Any], options: dict) -> tuple[Any, Any]:
        # The actor itself keeps Ray's class name (InstanceHost): an actor's
        # ``name`` makes it a named actor, unique in its namespace.
        cls = _remote("host")
        host = (cls.options(**options) if options else cls).remote()
        self.hosts.append(host)
        init = host.init.options(num_returns=2, name="init-" + task.node.qualname)
        value, status = init.remote(blob, *deps)
        self._track(task, status)
        self.last_call[id(host)] = status
        return host, value

    def call(self, host: Any, task: Task, blob: bytes, deps: list[Any], options: dict) -> Any:
        # Each call depends on the one before (its status): when that one did not run (its
        # input failed upstream, so the actor never saw it), Ray does not run this one
        # either, rather than running it on an instance without the missing call's effect.
        method = host.call_after.options(num_returns=2, name=task.node.qualname)
        value, status = method.remote(blob, self.last_call[id(host)], *deps)
        self.last_call[id(host)] = status
        self._track(task, status)
        return value

    def _track(self, task: Task, status: Any) -> None:
        self.submitted.append((task, status))
        self.pending.append(status)
        if self.unreported is not None:
            self.unreported[status] = task

    def _report(self, ready: list[Any]) -> None:
        """Tell the progress about the nodes whose status refs are ``ready``."""
        ray = self.ray
        try:
            statuses = ray.get(ready)
        except Exception:  # noqa: BLE001 - one failed: settle() sorts failures out
            statuses = []
            for ref in ready:
                try:
                    statuses.append(ray.get(ref))
                except Exception:  # noqa: BLE001
                    statuses.append(None)
        unreported = self.unreported or {}
        for ref, status in zip(ready, statuses):
            task = unreported.pop(ref, None)
            if task is not None and status is not None:
                status = remote.unpack_status(status)
                self.progress.node_done(task.name, status[0], status[1])

    def _follow(self) -> None:
        """Wait for every pending task, reporting each as it finishes."""
        ray = self.ray
        pending = self.pending
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            if pending:  # and whatever else finished meanwhile
                more, pending = ray.wait(pending, num_returns=len(pending), timeout=0)
                ready += more
            self._report(ready)
        self.pending = []

    def drop_instance(self, host: Any) -> None:
        # The actor exits once its submitted calls are done, giving back the
        # resources it holds to the nodes still to run.
        try:
            self.hosts.remove(host)
        except ValueError:
            pass
        self.last_call.pop(id(host), None)

    def cancel(self) -> None:
        for _, ref in self.submitted:
            try:
                self.ray.cancel(ref, force=False)
            except Exception:  # noqa: BLE001 - finished already, or an actor task Ray won't cancel
                pass

    def throttle(self, limit: int) -> None:
        while len(self.pending) >= limit:
            ready, self.pending = self.ray.wait(self.pending, num_returns=1, fetch_local=False)
            if self.unreported is not None:
                self._report(ready)

    def settle(self) -> list[tuple[Task, BaseException | None, Any]]:
        ray = self.ray
        if self.unreported is not None:
            self._follow()
        refs = [s for _, s in self.submitted]
        if refs:
            ray.wait(refs, num_returns=len(refs), fetch_local=False)
        try:  # all at once when nothing failed (the common case)
            statuses = ray.get(refs)
        except Exception:  # noqa: BLE001 - find out which, one by one
            statuses = None
        else:
            unpack = remote.unpack_status
            return [(task, None, unpack(status)) for (task, _), status in zip(self.submitted, statuses)]
        out = []
        for task, ref in self.submitted:
            try:
                status = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - sorted out by the caller
                error = _unwrap(exc)
                if isinstance(error, ray.exceptions.RayActorError):
                    error = _actor_died(task, error)
                out.append((task, error, None))
            else:
                out.append((task, None, remote.unpack_status(status)))
        return out

    def fetch(self, handle: Any) -> Any:
        try:
            return self.ray.get(handle)
        except Exception as exc:
            raise _unwrap(exc) from None

    def close(self) -> None:
        self.hosts.clear()  # actors exit when their last handle goes
        self.last_call.clear()


def _actor_died(task: Task, error: BaseException) -> ExecutorError:
    """An actor's death, told as the node's: the calls it had not reported are lost."""
    node = task.node
    instance = node.init if isinstance(node, ClassCallNode) else node
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    err = ExecutorError(
        f"node {task.name!r} failed on the cluster: the Ray actor holding instance "
        f"{instance.get_name()!r} died ({type(error).__name__}: {first_line}); its state is lost. "
        "Calls already stored are kept: a rerun rebuilds the instance by replaying them."
    )
    err.node = task.name  # type: ignore[attr-defined]
    err.__cause__ = error
    return err


def _unwrap(exc: BaseException) -> BaseException:
    """The user's or our exception behind Ray's RayTaskError wrapper."""
    ray = _ray()
    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BaseException):
            return cause
    return exc


class RayWorkflow(DistributedWorkflow):
    """Run a workflow on Ray.

    Parameters
    ----------
    *nodes : node or node[i]
        Nodes whose results :meth:`run` returns (every node downstream of the
        roots above them runs).
    workflow_name : str
        The name results are stored under.
    ray_init_args : dict
        Arguments of ``ray.init`` when Ray is not running yet.  If Ray already
        runs in this process, arguments it does not honour are an error.
    """

    executor_name = "ray"

    def __init__(self, *nodes: Any, workflow_name: str, ray_init_args: dict | None = None) -> None:
        super().__init__(*nodes, workflow_name=workflow_name)
        if ray_init_args is not None and not isinstance(ray_init_args, dict):
            raise GraphError(f"ray_init_args must be a dict of ray.init arguments, got {ray_init_args!r}")
        self.ray_init_args = dict(ray_init_args or {})
        ensure_ray(self.ray_init_args)

    def run(
        self,
        return_results: bool = False,
        max_pending_tasks: int = 0,
        *,
        force: str | Iterable[str] | None = None,
        strict_hashing: bool = False,
        progress: bool | None = None,
        early_cutoff: bool = True,
    ) -> Any:
        """Run the workflow on Ray.

        Parameters
        ----------
        return_results : bool
            Return the given nodes' results (a single value or a list), as
            :meth:`LocalWorkflow.run` does; otherwise return ``None``.
        max_pending_tasks : int
            At most this many tasks submitted and unfinished at once (0: no limit).
        force, strict_hashing, early_cutoff
            As for :meth:`LocalWorkflow.run` (a node cut off is checked and read on the
            worker that would compute it).
        progress : bool, optional
            Show a progress bar (nodes done and to do, how many are running,
            elapsed time, cached and computed counts); by default when stderr
            is a terminal or in a notebook, see :mod:`functionfuse.progress`.

        Raises
        ------
        NodeExecutionError
            A node raised; it names the node, with the worker's traceback.
        ExecutorError
            A worker died (after the node's ``max_retries``), an actor died ...;
            it names the node.
        """
        if not _ray().is_initialized():  # shut down since: start it as configured
            ensure_ray(self.ray_init_args)
        return self._run(
            _RayEngine,
            return_results=return_results,
            max_pending_tasks=max_pending_tasks,
            force=force,
            strict_hashing=strict_hashing,
            progress=progress,
            early_cutoff=early_cutoff,
        )

    def _check_remote_args(self, args: dict, nodes: list[BaseNode]) -> None:
        for node in nodes:
            if isinstance(node, ClassCallNode):
                continue  # runs on its instance's actor: options go to the instance node
            if isinstance(node, ClassInitNode):
                restart = sorted({"max_restarts", "max_task_retries"} & set(args))
                if restart:
                    raise GraphError(
                        f"class instance node {node.get_name()!r}: {', '.join(restart)} cannot be used: a "
                        "restarted actor has lost the instance's state. A rerun rebuilds it from the stored calls."
                    )
                allowed, where = ACTOR_OPTIONS, f"class instance node {node.get_name()!r} (a Ray actor)"
            else:
                allowed, where = TASK_OPTIONS, f"node {node.get_name()!r}"
            unknown = sorted(set(args) - allowed)
            if unknown:
                raise GraphError(
                    f"{where}: unknown Ray option(s) {', '.join(map(repr, unknown))}; "
                    f"valid options: {', '.join(sorted(allowed))}"
                )

    def _options(self, task: Task, load: bool = False) -> dict:
        if load or isinstance(task.node, ClassCallNode):
            return {}
        return self._remote_args.get(id(task.node), {})

    def _check_feasible(self, task: Task, options: dict) -> None:
        """A node no Ray node can ever run is an error, not an endless wait."""
        from ..storage.raystore import resource_demand

        demand = resource_demand(options)
        if not demand or set(demand) <= {"CPU"} and demand["CPU"] <= 1:
            return
        offers = [n.get("Resources", {}) for n in _ray().nodes() if n.get("Alive")]
        if not any(all(res.get(k, 0) >= v for k, v in demand.items()) for res in offers):
            raise ExecutorError(
                f"node {task.name!r} asks for {demand}, which no node of the Ray cluster offers; it "
                "would wait forever. Change its query(...).set_remote_args options or add such a node."
            )
