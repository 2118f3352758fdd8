"""Import path of the Dask backend: ``functionfuse.backends.builtin.daskback``."""

from ..daskbackend import DaskWorkflow

__all__ = ["DaskWorkflow"]
