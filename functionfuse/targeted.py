"""Targeted compute: run exactly what the given nodes need.

``LocalWorkflow(node)`` keeps the original package's semantics: it runs every
node downstream of the roots above ``node`` (pass a pipeline's root, the whole
pipeline runs).  :func:`compute` is the targeted alternative: only the given
nodes and their ancestors are in the run set — siblings and other branches are
not even keyed — and, as in every run, ancestors already stored are loaded
only if a node that must run needs them.

>>> from functionfuse import workflow, compute
>>> @workflow
... def inc(x):
...     return x + 1
>>> a = inc(1)
>>> b, c = inc(a), inc(inc(a))
>>> compute(b)
3
>>> compute(b, c)
[3, 4]
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .errors import GraphError

__all__ = ["compute", "explain"]


def _workflow(nodes: tuple, storage: Any, workflow_name: str | None, executor: Any) -> tuple[Any, str]:
    if not nodes:
        raise GraphError("compute() and explain() need at least one node")
    if workflow_name is None:
        if storage is not None:
            raise GraphError(
                "compute() with a storage needs workflow_name=...: results are stored under it, and "
                "a run of another pipeline under the same name would replace entries of same-named nodes"
            )
        workflow_name = "compute"
    from .backends.base import ancestors_only

    with ancestors_only():  # the run set is what the nodes need, not their siblings
        if executor is None or executor == "local":
            from .backends.local import LocalWorkflow

            wf, kind = LocalWorkflow(*nodes, workflow_name=workflow_name), "local"
        elif executor == "ray":
            from .backends.raybackend import RayWorkflow

            wf, kind = RayWorkflow(*nodes, workflow_name=workflow_name), "ray"
        elif hasattr(executor, "submit") and hasattr(executor, "scheduler_info"):
            from .backends.daskbackend import DaskWorkflow

            wf, kind = DaskWorkflow(*nodes, workflow_name=workflow_name, client=executor), "dask"
        else:
            raise GraphError(
                f"executor must be None (run here), a distributed.Client (run on its Dask cluster) or "
                f"'ray' (run on Ray), got {executor!r}"
            )
    if storage is not None:
        wf.set_storage(storage)
    return wf, kind


def compute(
    *nodes: Any,
    storage: Any = None,
    workflow_name: str | None = None,
    executor: Any = None,
    force: str | Iterable[str] | None = None,
    strict_hashing: bool = False,
    early_cutoff: bool = True,
) -> Any:
    """Compute the given nodes and exactly what they need.

    Parameters
    ----------
    *nodes : node or node[i]
        What to compute.
    storage : optional
        A storage from :func:`functionfuse.storage.storage_factory`; stored
        results are reused and new ones stored.
    workflow_name : str
        The name results are stored under (required with a storage).
    executor : None, distributed.Client or "ray"
        Where nodes run: here (None), on the client's Dask cluster, or on Ray.
    force : str or list of str, optional
        Regular expressions of node names to recompute (and their consumers).
    strict_hashing : bool
        Raise for arguments that cannot be hashed instead of warning.
    early_cutoff : bool
        Reuse the stored result of a node whose inputs changed keys but not content
        (see :mod:`functionfuse.cutoff`); False lets keys alone decide.

    Returns
    -------
    The value of the one node given, or a list of values in the order given.
    ``compute.last_report`` holds the run's :class:`~functionfuse.RunReport`.
    """
    wf, kind = _workflow(nodes, storage, workflow_name, executor)
    try:
        options = {"force": force, "strict_hashing": strict_hashing, "early_cutoff": early_cutoff}
        if kind == "local":
            return wf.run(**options)
        return wf.run(return_results=True, **options)
    finally:
        compute.last_report = wf.last_report  # type: ignore[attr-defined]


compute.last_report = None  # type: ignore[attr-defined]


def explain(
    *nodes: Any,
    storage: Any = None,
    workflow_name: str | None = None,
    executor: Any = None,
    force: str | Iterable[str] | None = None,
) -> Any:
    """What :func:`compute` with the same arguments would do, without doing it.

    Nothing is computed, loaded or written.  Returns an
    :class:`~functionfuse.explanation.Explanation` whose ``str()`` lists every
    node with its action (compute / replay / read / skip) and why.
    """
    wf, _ = _workflow(nodes, storage, workflow_name, executor)
    return wf.explain(force=force)
