"""Compatibility path of the original package: ``functionfuse.backends.builtin.localback``."""

from ..local import LocalWorkflow

__all__ = ["LocalWorkflow"]
