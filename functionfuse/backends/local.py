"""The local backend: runs a workflow in this process, in dependency order.

Invariants
----------
* Nodes run in creation order, which is a dependency order (see
  :mod:`functionfuse.graph`); only the nodes the plan marks as ``run`` execute.
* Values are pulled: a cached node is loaded the first time a running node or
  the caller needs it, and never otherwise (lazy resume).
* A value is dropped as soon as the last running node that needs it has run,
  unless it is a result to return, so long pipelines do not keep every
  intermediate result in memory.
* A corrupt entry found while loading is recomputed on the spot (its inputs
  are pulled the same way), and the run goes on.

All caching decisions live in :mod:`functionfuse.caching`; this module only
schedules.  What people see of a run (a progress bar, a log line per computed
node) is :mod:`functionfuse.progress`'s: the loops tell it when a node starts
and ends, behind one ``if`` on a flag when nothing is shown.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from ..caching import (
    FEW_LOADS,
    INTERRUPTED,
    LOAD_ERRORS,
    NO_STORAGE,
    CacheEvent,
    Plan,
    RunReport,
    Task,
    begin_run,
    end_run,
    entry_failed,
    execute,
    finish_report,
    format_seconds,
    load_node,
    node_error,
    packing,
    record_run,
    run_node,
)
from ..cutoff import mark_candidates, try_cutoff, want_contents
from ..errors import GraphError, SerializerNotRegisteredError
from ..fingerprint import planning
from ..graph import _FIRST_SLOT, BaseNode, ClassCallNode, FunctionNode, NodeItem, is_stateful
from ..progress import NO_PROGRESS, NoProgress, progress_for
from ..storage import latecheck
from .base import BaseWorkflow

__all__ = ["LocalWorkflow"]

_MISSING = object()

logger = logging.getLogger(__name__)


class LocalWorkflow(BaseWorkflow):
    """Run a workflow in the current process.

    Parameters
    ----------
    *nodes : node or node[i]
        Nodes whose results :meth:`run` returns.  Every node downstream of the
        roots above them runs.
    workflow_name : str
        The name results are stored under.

    Examples
    --------
    >>> from functionfuse import workflow
    >>> @workflow
    ... def inc(x):
    ...     return x + 1
    >>> LocalWorkflow(inc(inc(1)), workflow_name="demo").run()
    3
    """

    def run(
        self,
        *,
        force: str | Iterable[str] | None = None,
        strict_hashing: bool = False,
        progress: bool | None = None,
        max_workers: int | None = None,
        processes: bool = False,
        early_cutoff: bool = True,
    ) -> Any:
        """Run the workflow and return the results of the given nodes.

        Parameters
        ----------
        force : str or list of str, optional
            Regular expressions (full match on node names): matching nodes and
            everything downstream of them are recomputed even if stored.
        strict_hashing : bool
            Raise :class:`~functionfuse.errors.HashingError` for an argument
            that cannot be hashed, instead of warning and recomputing it.
        progress : bool, optional
            Show a progress bar on stderr (a widget in Jupyter): nodes done and
            to do, the running node, elapsed time, cached and computed counts.
            By default it is shown when stderr is a terminal or in a notebook;
            the environment variable ``FUNCTIONFUSE_PROGRESS=1`` or ``0``
            decides instead (see :mod:`functionfuse.progress`).  With INFO
            logging on, each computed node is logged with its duration.
        max_workers : int, optional
            Run independent nodes concurrently on this many threads (or
            processes); None runs them one by one.  Keys, storage and the
            report are the same; stateful class nodes run in this process, in
            call order (see :mod:`functionfuse.backends.pool`).
        processes : bool
            With ``max_workers``: worker processes instead of threads, for
            CPU-bound Python functions (functions and arguments travel with
            cloudpickle; values come back and are stored here).
        early_cutoff : bool
            A node that must run only because an input changed is not run when its
            inputs have the content its stored version was computed from: that result
            is reused under the new key (reason ``upstream unchanged``; see
            :mod:`functionfuse.cutoff`).  False: keys alone decide.

        Returns
        -------
        The single node's result, or a list in the order the nodes were given.
        ``self.last_report`` holds the per-node :class:`~functionfuse.caching.RunReport`.

        Raises
        ------
        NodeExecutionError
            A node's function raised; it names the node.  Results stored before
            the failure stay stored.
        """
        if not isinstance(early_cutoff, bool):
            raise GraphError(f"early_cutoff must be True or False, got {early_cutoff!r}")
        if max_workers is not None or processes is not False:
            from .pool import check_pool_options

            check_pool_options(max_workers, processes)
        reporter = progress_for(self.workflow_name, progress)
        if self.object_storage is None and max_workers is None and not is_stateful(self._leaf_nodes()):
            return self._run_unstored(reporter)
        plan = self._make_plan(force, strict_hashing)  # nothing is shown before the plan
        if plan.storage is not None:
            want_contents(plan)  # results record the content of their inputs
            if early_cutoff:
                mark_candidates(plan)
        begin_run(plan)
        packing(plan, True)
        runner = _LocalRun(plan, self.leaves, reporter)
        start = time.perf_counter()
        error: BaseException | None = None
        try:
            with planning():  # argument summaries reuse what keying followed
                if max_workers is None:
                    results = runner.execute()
                else:
                    from .pool import execute_pooled

                    results = execute_pooled(runner, max_workers, processes)
        except BaseException as exc:
            error = exc
            raise
        finally:
            finish_report(plan, error)
            record_run(plan, error, "local")
            packing(plan, False)
            end_run(plan)
            self.last_report = plan.report(time.perf_counter() - start)
            _finish(self.last_report, reporter)
        if latecheck.pending_failures():  # a memory-mapped part this run read may be damaged
            latecheck.raise_failures(t.key for t in plan.tasks if t.action == "read")
        return results[0] if len(self.leaves) == 1 else results

    @property
    def report(self) -> RunReport | None:
        """The :class:`RunReport` of the last run."""
        return self.last_report

    def _leaf_nodes(self) -> list[BaseNode]:
        return [leaf.node if type(leaf) is NodeItem else leaf for leaf in self.leaves]

    def _run_unstored(self, reporter: NoProgress) -> Any:
        """Run every node, no storage and no class nodes: the plain-function hot path.

        What :class:`_LocalRun` does for such a run (every node computed in
        creation order, values dropped after their last consumer, a report),
        without building a plan: no Task per node, and names are computed only
        if the report is read, a node fails or progress is reported.
        """
        nodes = self.nodes
        show = reporter.active
        if show:
            names = {id(node): name for name, node in self._named()}
            reporter.start(len(nodes), 0)
        funcs = self._funcs
        keep = {id(node) for node in self._leaf_nodes()}
        values: dict[int, Any] = {}
        # One clock reading per node, when it ends: a node's seconds are the time
        # since the one before ended (its argument passing included, under a
        # microsecond), which halves the clock's cost on trivial nodes.
        seconds: list[float] = []
        done = seconds.append
        perf = time.perf_counter
        last_seq = nodes[-1].seq
        value_of = _plain_value_of(values)
        failed: BaseException | None = None
        run_start = previous = perf()
        try:
            for node in nodes:
                func = funcs.get(id(node), node.func) if funcs else node.func
                top = node.ref_slots
                if node.nested:
                    args, kwargs = node.resolve_args(value_of)
                elif top is _FIRST_SLOT:  # f(node), the commonest
                    args = (values[id(node.args[0])],)
                    kwargs = node.kwargs
                elif top:
                    args, kwargs = [*node.args], node.kwargs
                    for where in top:
                        if where.__class__ is int:
                            ref = args[where]
                            args[where] = values[id(ref)] if type(ref) is not NodeItem else ref.extract(
                                values[id(ref.node)])
                        else:
                            if kwargs is node.kwargs:
                                kwargs = dict(kwargs)
                            ref = kwargs[where]
                            kwargs[where] = values[id(ref)] if type(ref) is not NodeItem else ref.extract(
                                values[id(ref.node)])
                else:
                    args, kwargs = node.args, node.kwargs
                if show:
                    reporter.node_started(names[id(node)])
                    previous = perf()  # the display's time is not the node's
                try:
                    values[id(node)] = func(*args, **kwargs) if kwargs else func(*args)
                except BaseException as exc:
                    done(perf() - previous)
                    failed = exc
                    if isinstance(exc, Exception):
                        raise node_error(self._task_of(node, func), exc) from exc
                    raise
                now = perf()
                done(now - previous)
                previous = now
                if show:
                    reporter.node_done(names[id(node)], "computed", seconds[-1])
                # Drop a parent's value once its last consumer in the run has
                # run (children made after this workflow are not in the run).
                for dep in node.deps:
                    last = dep.children[-1]
                    if last.seq > last_seq:
                        last = _last_child_in_run(dep, last_seq)
                    if last is node and id(dep) not in keep:
                        del values[id(dep)]
        finally:
            self.last_report = _UnstoredReport(self, seconds, failed, perf() - run_start)
            _finish(self.last_report, reporter)
        out = [leaf.extract(values[id(leaf.node)]) if type(leaf) is NodeItem else values[id(leaf)] for leaf in self.leaves]
        return out[0] if len(out) == 1 else out

    def _task_of(self, node: BaseNode, func: Any) -> Task:
        """A task for ``node`` (to name it in an error)."""
        name = next(name for name, n in self._named() if n is node)
        return Task(node, name, func)


def _finish(report: RunReport, reporter: NoProgress) -> None:
    """Close the run's progress display and log the run's summary."""
    if reporter.active:
        reporter.close(report.counts())
    if logger.isEnabledFor(logging.INFO):
        logger.info("%s in %s", report.summary(), format_seconds(report.seconds or 0.0))


def _plain_value_of(values: dict[int, Any]) -> Any:
    def value_of(ref: BaseNode | NodeItem) -> Any:
        if type(ref) is NodeItem:
            return ref.extract(values[id(ref.node)])
        return values[id(ref)]

    return value_of


def _last_child_in_run(node: BaseNode, last_seq: int) -> BaseNode:
    """The last child of ``node`` created no later than node #``last_seq``."""
    for child in reversed(node.children):
        if child.seq <= last_seq:
            return child
    raise AssertionError("a node of the run without a child in the run")  # pragma: no cover


class _UnstoredReport(RunReport):
    """The report of a run without storage, its events built on first access."""

    def __init__(
        self, wf: LocalWorkflow, seconds: list[float], error: BaseException | None, wall: float
    ) -> None:
        super().__init__(wf.workflow_name, seconds=wall)
        self._wf: LocalWorkflow | None = wf
        self._seconds = seconds
        self._error = error

    @property
    def events(self) -> list[CacheEvent]:
        if self._events is None:
            seconds, ran = self._seconds, len(self._seconds)
            error = self._error
            # Every node of such a run runs: one that did not was never reached.
            last = "failed" if isinstance(error, Exception) else "not run"
            last_reason = NO_STORAGE if isinstance(error, Exception) else INTERRUPTED
            events = []
            for i, (name, _node) in enumerate(self._wf._named()):  # type: ignore[union-attr]
                if i < ran - (error is not None):
                    events.append(CacheEvent(name, None, "computed", NO_STORAGE, seconds[i]))
                elif i == ran - 1 and error is not None:
                    events.append(CacheEvent(name, None, last, last_reason, seconds[i]))
                else:
                    events.append(CacheEvent(name, None, "not run", NO_STORAGE))
            self._events = events
            self._wf = None
        return self._events


class _LocalRun:
    """State of one local run: values in memory and live class instances."""

    def __init__(self, plan: Plan, leaves: list[BaseNode | NodeItem], reporter: NoProgress = NO_PROGRESS) -> None:
        self.plan = plan
        self.leaves = leaves
        self.reporter = reporter
        if reporter.active:
            plan.waiting = reporter.node_waiting  # a node waiting for another run's lease
        self.values: dict[int, Any] = {}
        by_node = plan.by_node
        for leaf in leaves:
            node = leaf.node if isinstance(leaf, NodeItem) else leaf
            by_node[id(node)].uses = 1 << 40  # returned: never dropped
        for task in plan.tasks:
            if task.run:
                for dep in task.deps:
                    dep.uses += 1

    def execute(self) -> list[Any]:
        by_node = self.plan.by_node
        values = self.values
        fast = self.plan.storage is None
        value_of = self._value_of
        perf = time.perf_counter
        reporter = self.reporter
        show = reporter.active
        if show:
            reporter.start(len(self.plan.tasks), sum(not task.run for task in self.plan.tasks))
        for task in self.plan.tasks:
            if task.run:
                node = task.node
                if show:
                    reporter.node_started(task.name)
                if task.cutoff and try_cutoff(self.plan, task):  # upstream unchanged: not run
                    task.run, task.action = False, "skipped"
                elif fast and type(node) is FunctionNode:
                    # The no-storage hot path of run_node, inlined.
                    args, kwargs = node.resolve_args(value_of)
                    task.action = "running"
                    start = perf()
                    try:
                        values[id(node)] = task.func(*args, **kwargs)
                    except Exception as exc:
                        raise node_error(task, exc) from exc
                    task.seconds = perf() - start
                    task.action = "computed"
                else:
                    self._run(task)
                if show:
                    reporter.node_done(task.name, task.action, task.seconds)
                for dep in task.deps:
                    dep.uses -= 1
                    if dep.uses == 0:
                        values.pop(id(dep.node), None)
        return self.leaf_values()

    def leaf_values(self) -> list[Any]:
        """The values of the nodes the run returns (cached ones are loaded now)."""
        by_node = self.plan.by_node
        listing = self.plan.listing
        if listing is not None and len(self.leaves) > FEW_LOADS:  # many cached leaves: one values object
            tasks = [by_node[id(leaf.node if isinstance(leaf, NodeItem) else leaf)] for leaf in self.leaves]
            listing.loads_ahead = sum(t.entry is not None and id(t.node) not in self.values for t in tasks)
        out = []
        for leaf in self.leaves:
            if isinstance(leaf, NodeItem):
                out.append(leaf.extract(self._value(by_node[id(leaf.node)])))
            else:
                out.append(self._value(by_node[id(leaf)]))
        return out

    def _value_of(self, ref: BaseNode | NodeItem) -> Any:
        if type(ref) is NodeItem:
            node = ref.node
            value = self.values.get(id(node), _MISSING)
            if value is _MISSING:
                value = self._value(self.plan.by_node[id(node)])
            return ref.extract(value)
        value = self.values.get(id(ref), _MISSING)
        if value is _MISSING:
            value = self._value(self.plan.by_node[id(ref)])
        return value

    def _value(self, task: Task) -> Any:
        value = self.values.get(id(task.node), _MISSING)  # usually missing: no try/except
        if value is not _MISSING:
            return value
        if task.entry is not None:
            try:
                value = load_node(self.plan, task)
            except SerializerNotRegisteredError:
                raise  # a configuration error: keep the entry, stop the run
            except LOAD_ERRORS as exc:
                entry_failed(task, exc)
            else:
                self.values[id(task.node)] = value
                self.reporter.node_done(task.name, "read", task.seconds)
                return value
        value = self._recompute(task)
        self.reporter.node_done(task.name, task.action, task.seconds, recomputed=True)
        return value

    def _run(self, task: Task) -> Any:
        node = task.node
        args, kwargs = node.resolve_args(self._value_of)
        instance = self.values[id(node.init)] if isinstance(node, ClassCallNode) else None
        value = run_node(self.plan, task, args, kwargs, instance)
        self.values[id(node)] = value
        return value

    def _recompute(self, task: Task) -> Any:
        """Compute a node outside the main pass (its entry was missing or corrupt)."""
        node = task.node
        if not isinstance(node, ClassCallNode):
            return self._run(task)
        # A fresh instance replayed up to this call: the main instance may
        # already be further along its chain.
        init_task = self.plan.by_node[id(node.init)]
        args, kwargs = node.init.resolve_args(self._value_of)
        instance = execute(init_task, args, kwargs)
        for call in node.init.calls[: node.index]:
            call_task = self.plan.by_node[id(call)]
            args, kwargs = call.resolve_args(self._value_of)
            execute(call_task, args, kwargs, instance)
            if call_task.action == "skipped":
                call_task.action = "replayed"
        args, kwargs = node.resolve_args(self._value_of)
        value = run_node(self.plan, task, args, kwargs, instance)
        self.values[id(node)] = value
        return value


