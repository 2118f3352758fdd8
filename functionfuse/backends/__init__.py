"""Backends (executors): they schedule; :mod:`functionfuse.caching` decides.

Backends are imported lazily: ``import functionfuse`` imports no dask or ray.
"""

__all__ = ["LocalWorkflow", "DaskWorkflow", "RayWorkflow"]

_WHERE = {
    "LocalWorkflow": ".local",
    "DaskWorkflow": ".daskbackend",
    "RayWorkflow": ".raybackend",
}


def __getattr__(name: str):
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(name)
    import importlib

    return getattr(importlib.import_module(where, __name__), name)
