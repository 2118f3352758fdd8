"""Compatibility path of the original package: ``functionfuse.backends.builtin.rayback``."""

from ..raybackend import RayWorkflow

__all__ = ["RayWorkflow"]
