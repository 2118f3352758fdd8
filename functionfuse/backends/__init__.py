"""Backends (executors): they schedule; :mod:`functionfuse.caching` decides.

Backends are imported lazily: ``import functionfuse`` imports no dask or ray.
"""

__all__ = ["LocalWorkflow"]


def __getattr__(name: str):
    if name == "LocalWorkflow":
        from .local import LocalWorkflow

        return LocalWorkflow
    raise AttributeError(name)
