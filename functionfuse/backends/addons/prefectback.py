"""Not provided: the original's ``PrefectWorkflow`` on Prefect 2 (see :mod:`functionfuse.backends.addons`)."""

from . import not_provided

raise not_provided(
    __name__,
    "PrefectWorkflow",
    "it was written against the Prefect 2 API (prefect.task_runners and PrefectFuture as they were in "
    "Prefect 2), which Prefect 3 replaced, so it does not run on a current Prefect.",
    "To run a functionfuse graph inside a Prefect flow, call a built-in backend from a flow function, "
    "e.g. LocalWorkflow(*nodes, workflow_name=...).run() or DaskWorkflow on Prefect's Dask cluster.",
)
