"""Local thread and process pools: ``LocalWorkflow.run(max_workers=N, processes=...)``.

Design
------
The plan, the keys, the storage and the report are the local backend's; only
*where* a function node's function runs changes.

* **Scheduling.** A running node is ready when every running node it depends
  on has finished; ready nodes start in creation order (so a run is as
  deterministic as concurrency allows).  Inputs that are cached are loaded
  in the driver, lazily, when a ready node needs them, exactly as in a
  sequential run.
* **Stateful class nodes** (a class instance and its method calls) run in the
  driver, one after the other in call order; they are ready like any node, so
  function nodes keep running in the pool meanwhile.
* **Threads** (``processes=False``): the worker thread computes *and stores*
  the result (:func:`~functionfuse.caching.run_node`), so serialization and
  writes overlap too.  Good for functions that release the GIL (numpy, I/O).
* **Processes** (``processes=True``): the function, its arguments and
  nothing else are sent to a worker process with cloudpickle (functions
  defined in a script or notebook travel by value); the value comes back and
  the driver stores it (:func:`~functionfuse.caching.store_node`).  Workers
  are forked from a clean ``forkserver`` process, never from the driver,
  which may run threads (storage hashing, Dask or Ray clients).
* **Failure.** The first node that fails stops new submissions; nodes already
  running finish and their results are stored; the error names the failed
  node.  An interruption cancels what has not started.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import (
    FIRST_COMPLETED,
    Executor,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import Any

from ..caching import Task, _leasing, argument_summary, lease_or_value, node_error, run_node, store_node
from ..cutoff import try_cutoff
from ..errors import ExecutorError, NodeExecutionError
from ..graph import ClassCallNode, ClassInitNode, FunctionNode

logger = logging.getLogger(__name__)

__all__ = ["check_pool_options", "execute_pooled", "shutdown_pools"]


def check_pool_options(max_workers: Any, processes: Any) -> None:
    """Clear errors for bad ``max_workers`` / ``processes`` arguments of ``run``."""
    if max_workers is not None and (isinstance(max_workers, bool) or not isinstance(max_workers, int)
                                    or max_workers < 1):
        raise ValueError(f"max_workers must be a positive integer (or None: run nodes one by one), got {max_workers!r}")
    if not isinstance(processes, bool):
        raise TypeError(f"processes must be True or False, got {processes!r}")
    if processes and max_workers is None:
        raise ValueError("processes=True needs max_workers=N (how many worker processes to start)")


@contextmanager
def _main_hidden() -> Iterator[None]:
    """Start worker processes without them re-running the user's script.

    A forkserver child imports the parent's ``__main__`` file before it works
    (a script without an ``if __name__ == "__main__":`` guard would run again,
    and start its own pool).  Nothing there is needed: functions travel by value
    with cloudpickle.  So the main module's file is hidden while processes start.
    """
    main = sys.modules.get("__main__")
    hide = main is not None and getattr(main, "__spec__", None) is None and hasattr(main, "__file__")
    if not hide:
        yield
        return
    path = main.__file__  # type: ignore[union-attr]
    del main.__file__  # type: ignore[union-attr]
    try:
        yield
    finally:
        main.__file__ = path  # type: ignore[union-attr]


def _call_in_worker(payload: bytes) -> tuple[Any, float]:
    """In a worker process: unpickle ``(func, args, kwargs)``, call it, return (value, seconds)."""
    import cloudpickle

    func, args, kwargs = cloudpickle.loads(payload)
    start = time.perf_counter()
    value = func(*args, **kwargs)
    return value, time.perf_counter() - start


#: Worker processes kept between runs, by size (started once per process, like joblib's
#: reusable executor): a run pays for starting workers only the first time.
_PROCESS_POOLS: dict[int, ProcessPoolExecutor] = {}


def _executor(max_workers: int, processes: bool) -> tuple[Executor, bool]:
    """(executor, whether the run owns it and shuts it down)."""
    if not processes:
        return ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="functionfuse-node"), True
    pool = _PROCESS_POOLS.get(max_workers)
    if pool is None or getattr(pool, "_broken", False) or getattr(pool, "_shutdown_thread", False):
        shutdown_pools()  # one pool kept at a time: a run of another size replaces it
        if "forkserver" in multiprocessing.get_all_start_methods():
            context = multiprocessing.get_context("forkserver")
            # Workers fork from a server that has imported these once.
            context.set_forkserver_preload(["cloudpickle", "functionfuse.backends.pool"])
        else:  # Windows: no forkserver
            context = multiprocessing.get_context("spawn")
        pool = _PROCESS_POOLS[max_workers] = ProcessPoolExecutor(max_workers=max_workers, mp_context=context)
        global _AT_EXIT
        if not _AT_EXIT:
            _AT_EXIT = atexit.register(shutdown_pools) is not None
    return pool, False


_AT_EXIT = False


def _stop(pool: ProcessPoolExecutor) -> None:
    """Stop a pool now: its workers may be running nodes of an interrupted run."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()


def shutdown_pools() -> None:
    """Stop the worker processes kept between runs (at exit, or to free them now)."""
    while _PROCESS_POOLS:
        _, pool = _PROCESS_POOLS.popitem()
        pool.shutdown(wait=True, cancel_futures=True)


def execute_pooled(runner: Any, max_workers: int, processes: bool) -> list[Any]:
    """Run ``runner``'s plan (a local run, see :class:`~.local._LocalRun`) on a pool.

    Returns the leaves' values, like the sequential ``runner.execute()``.
    """
    plan = runner.plan
    by_node = plan.by_node
    reporter = runner.reporter
    running = [t for t in plan.tasks if t.run]
    order = {id(t): i for i, t in enumerate(running)}
    waiting_on: dict[int, int] = {}
    dependents: dict[int, list[Task]] = {id(t): [] for t in running}
    for task in running:
        before = [d for d in task.deps if d.run]
        node = task.node
        if isinstance(node, ClassCallNode):  # after the instance and the call before it
            chain = [by_node[id(node.init)]] + [by_node[id(c)] for c in node.init.calls[: node.index]]
            before += [t for t in chain[-1:] if t.run]
        waiting_on[id(task)] = len({id(d) for d in before})
        for dep in {id(d): d for d in before}.values():
            dependents[id(dep)].append(task)
    ready = sorted((t for t in running if waiting_on[id(t)] == 0), key=lambda t: order[id(t)])
    if reporter.active:
        reporter.start(len(plan.tasks), sum(not t.run for t in plan.tasks))

    futures: dict[Future, Task] = {}
    failure: BaseException | None = None
    plan.stop_waiting = threading.Event()  # set when the run fails: node lease waits end
    pool, owned = _executor(max_workers, processes)
    try:
        while ready or futures:
            while ready and failure is None:
                task = ready.pop(0)
                if task.cutoff and try_cutoff(plan, task):  # upstream unchanged: not run
                    task.run, task.action = False, "skipped"
                    _finished(runner, task, dependents, waiting_on, ready, order)
                    continue
                if isinstance(task.node, (ClassInitNode, ClassCallNode)) or type(task.node) is not FunctionNode:
                    _in_driver(runner, task)  # stateful: here, in call order
                    _finished(runner, task, dependents, waiting_on, ready, order)
                    continue
                futures[_submit(pool, runner, task, processes)] = task
                if reporter.active:
                    reporter.node_started(task.name)
            if not futures:
                break
            done, _ = wait(futures, return_when=FIRST_COMPLETED)
            for future in sorted(done, key=lambda f: order[id(futures[f])]):
                task = futures.pop(future)
                try:
                    if processes and "payload" in task.__dict__:  # a lease thread is done
                        if failure is not None:
                            _drop_lease_step(task, future)
                            continue
                        submitted = _leased_step(pool, task, future)
                        if submitted is not None:
                            futures[submitted] = task
                            continue
                    _collect(runner, task, future, processes)
                except BaseException as exc:  # noqa: BLE001 - the first failure is raised below
                    if failure is None:
                        failure = exc
                    continue
                _finished(runner, task, dependents, waiting_on, ready, order)
            if failure is not None:
                ready.clear()
                plan.stop_waiting.set()
        if failure is not None:
            raise failure
    except BaseException as exc:
        interrupted = isinstance(exc, (KeyboardInterrupt, SystemExit))
        plan.stop_waiting.set()  # threads waiting for node leases stop waiting
        for future in futures:
            future.cancel()
        leasing = [f for f, t in futures.items() if "payload" in t.__dict__]
        if leasing:
            wait(leasing)  # quick once stopped: a lease one of them took is released below
        if futures and not interrupted:
            wait(futures)  # what is running finishes, and is stored below
        for future, task in futures.items():
            if "payload" in task.__dict__:  # a lease thread: nothing to store
                if future.done() and not future.cancelled():
                    _drop_lease_step(task, future)
                continue
            if future.done() and not future.cancelled():
                try:
                    _collect(runner, task, future, processes)
                except BaseException as late:  # noqa: BLE001 - the first failure is the one raised
                    logger.debug("node %r also failed: %s", task.name, late)
                else:
                    _finished(runner, task, dependents, waiting_on, [], order)
        for task in running:  # leases of nodes that were not stored: free for other runs
            lease = task.__dict__.pop("lease", None)
            if lease is not None:
                lease.release()
        if owned:
            pool.shutdown(wait=not interrupted, cancel_futures=True)
        elif interrupted or getattr(pool, "_broken", False):
            _PROCESS_POOLS.pop(max_workers, None)  # an interrupted or broken pool is not reused
            _stop(pool)
        if isinstance(exc, NodeExecutionError) and isinstance(exc.__cause__, BrokenProcessPool):
            lost = sorted(t.name for t in running if t.action in ("running", "failed"))
            for task in running:
                if task.action in ("running", "failed"):
                    task.action = "not run"
            raise ExecutorError(
                f"a worker process died (killed, out of memory, or a crash in native code) while it ran "
                f"one of: {', '.join(lost)}; nothing of those was stored. Run again to resume, or without "
                "processes=True to see the failure in this process"
            ) from exc.__cause__
        raise
    if owned:
        pool.shutdown(wait=True)
    return runner.leaf_values()


def _in_driver(runner: Any, task: Task) -> None:
    if runner.reporter.active:
        runner.reporter.node_started(task.name)
    runner._run(task)


def _submit(pool: Executor, runner: Any, task: Task, processes: bool) -> Future:
    node = task.node
    args, kwargs = node.resolve_args(runner._value_of)  # cached inputs are loaded here, lazily
    if not processes:
        if runner.plan.storage is not None and task.store:
            argument_summary(runner.plan, task)  # here, not in a thread: it follows code references
        return pool.submit(run_node, runner.plan, task, args, kwargs)
    import cloudpickle

    task.action = "running"
    try:
        payload = cloudpickle.dumps((task.func, args, kwargs))
    except Exception as exc:
        raise node_error(task, TypeError(
            f"cannot send node {task.name!r} to a worker process ({type(exc).__name__}: {exc}); "
            "run with processes=False (threads) or make its function and arguments picklable"
        )) from exc
    if _leasing(runner.plan, task):
        # The node lease is taken (or waited for) in a thread: the driver keeps
        # collecting and storing other nodes, so the leases it holds are released
        # (a driver blocked on a lease while holding another could deadlock with
        # a second run doing the same).  The node is submitted once it is ours.
        task.__dict__["payload"] = payload
        return _lease_threads().submit(_take_lease, runner.plan, task)
    with _main_hidden():  # a submit may start a worker process
        return pool.submit(_call_in_worker, payload)


class _Leased:
    """What a lease thread returns: the node's lease is held, or (``lease`` None) its
    result was stored by another run and read."""

    def __init__(self, lease: Any, value: Any = None) -> None:
        self.lease, self.value = lease, value


_LEASE_THREADS: list[ThreadPoolExecutor] = []


def _lease_threads() -> ThreadPoolExecutor:
    if not _LEASE_THREADS:
        _LEASE_THREADS.append(ThreadPoolExecutor(max_workers=32, thread_name_prefix="functionfuse-lease"))
    return _LEASE_THREADS[0]


def _take_lease(plan: Any, task: Task) -> _Leased:
    return _Leased(*lease_or_value(plan, task))  # stops waiting when plan.stop_waiting is set


def _drop_lease_step(task: Task, future: Future) -> None:
    """A lease thread's outcome when the run is failing: nothing is submitted, and
    a lease it took is released."""
    task.__dict__.pop("payload", None)
    try:
        outcome = future.result()
    except BaseException:  # noqa: BLE001 - the wait was stopped, or failed: nothing held
        return
    if outcome.lease is not None:
        outcome.lease.release()


def _leased_step(pool: Executor, task: Task, future: Future) -> Future | None:
    """After a lease thread finished: the future of the node submitted to the pool
    (its lease taken), or None when its value was read (kept on the task)."""
    outcome = future.result()
    if outcome.lease is None:
        task.__dict__.pop("payload", None)
        task.__dict__["read_value"] = outcome.value
        return None
    task.__dict__["lease"] = outcome.lease
    with _main_hidden():
        return pool.submit(_call_in_worker, task.__dict__.pop("payload"))


def _collect(runner: Any, task: Task, future: Future, processes: bool) -> None:
    """Take a finished node's value (storing it when it was computed in a process)."""
    if not processes:
        value = future.result()  # run_node raised NodeExecutionError naming the node, or stored it
    elif "read_value" in task.__dict__:  # another run computed it while this one waited
        value = task.__dict__.pop("read_value")
    else:
        lease = task.__dict__.pop("lease", None)
        try:
            try:
                value, seconds = future.result()
            except NodeExecutionError:
                raise
            except Exception as exc:
                task.seconds = 0.0
                raise node_error(task, exc) from exc
            value = store_node(runner.plan, task, value, seconds)
        finally:
            if lease is not None:
                lease.release()
    runner.values[id(task.node)] = value


def _finished(runner: Any, task: Task, dependents: dict[int, list[Task]], waiting_on: dict[int, int],
              ready: list[Task], order: dict[int, int]) -> None:
    reporter = runner.reporter
    if reporter.active:
        reporter.node_done(task.name, task.action, task.seconds)
    for dep in task.deps:
        dep.uses -= 1
        if dep.uses == 0:
            runner.values.pop(id(dep.node), None)
    newly = []
    for child in dependents[id(task)]:
        waiting_on[id(child)] -= 1
        if waiting_on[id(child)] == 0:
            newly.append(child)
    if newly:
        ready.extend(newly)
        ready.sort(key=lambda t: order[id(t)])
