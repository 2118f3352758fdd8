"""The original package's add-on backends, which this functionfuse does not provide.

The original shipped three backends on other engines:
``functionfuse.backends.addons.rayworkflowback.RayWorkflow`` (Ray Workflows),
``functionfuse.backends.addons.prefectback.PrefectWorkflow`` (Prefect 2) and
``functionfuse.backends.addons.kfpback.KFPWorkflow`` (Kubeflow Pipelines v1).
The APIs they were written against are gone, so each module here raises an
:class:`ImportError` that says why and names the backend to use instead.
Importing this package itself works (tools that walk packages need that).
"""

from __future__ import annotations

__all__ = ["not_provided"]

_INSTEAD = """Use one of the built-in backends, which take the same nodes and storage:
    from functionfuse.backends.builtin.localback import LocalWorkflow  # this process
    from functionfuse.backends.builtin.daskback import DaskWorkflow    # a Dask cluster
    from functionfuse.backends.builtin.rayback import RayWorkflow      # a Ray cluster"""


def not_provided(module: str, backend: str, why: str, instead: str = "") -> ImportError:
    """The ImportError raised when ``module`` (an add-on backend of the original) is imported.

    Parameters
    ----------
    module : str
        The module's dotted name.
    backend : str
        The class the original module provided.
    why : str
        Why it is not provided (the engine API it used is gone).
    instead : str
        Advice for this backend, before the list of built-in backends.
    """
    advice = f"{instead}\n{_INSTEAD}" if instead else _INSTEAD
    message = f"{module} ({backend}) is not provided by this version of functionfuse: {why}\n{advice}"
    return ImportError(message, name=module)
