"""Compatibility path of the original package: ``functionfuse.backends.builtin.graphback``.

:class:`GraphWorkflow` "runs" a workflow by drawing it: ``run()`` writes the
graph as Graphviz DOT to ``<doc_path>/<workflow_name>.gv`` and, where the
``dot`` program exists, renders ``<doc_path>/<workflow_name>.gv.svg`` beside
it (the names the original package used).  Unlike the original it never
opens a viewer, and it needs neither the ``graphviz`` Python package nor the
``dot`` program for the ``.gv`` file.  Nothing in the graph changes, so the
same nodes can be run by a :class:`~functionfuse.backends.local.LocalWorkflow`
afterwards.  Every workflow can also draw itself (``workflow.draw(path)``).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from ...drawing import INSTALL_HINT, save_dot
from ...errors import GraphError
from ..base import BaseWorkflow

__all__ = ["GraphWorkflow"]

logger = logging.getLogger(__name__)

_RESERVED = ("/", "\\", "\0")


class GraphWorkflow(BaseWorkflow):
    """A workflow whose :meth:`run` writes a drawing of the graph instead of computing it.

    Parameters
    ----------
    *nodes : node or node[i]
        The nodes to draw, with everything downstream of the roots above them
        (the nodes a :class:`LocalWorkflow` of the same nodes would run).
    workflow_name : str
        The drawing's name and file name: ``<workflow_name>.gv``.  It must be
        usable as a file name (no ``/``, ``\\`` or NUL, not ``.`` or ``..``).
    doc_path : str or path-like
        The folder the drawing is written to (created when missing).

    Examples
    --------
    >>> import tempfile
    >>> from functionfuse import workflow
    >>> @workflow
    ... def inc(x):
    ...     return x + 1
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     GraphWorkflow(inc(inc(1)), workflow_name="demo", doc_path=folder).run()
    ...     print(os.path.exists(os.path.join(folder, "demo.gv")))
    True
    """

    def __init__(self, *nodes: Any, workflow_name: str, doc_path: str | os.PathLike[str]) -> None:
        super().__init__(*nodes, workflow_name=workflow_name)
        if any(c in workflow_name for c in _RESERVED) or workflow_name in (".", ".."):
            raise GraphError(
                f"GraphWorkflow writes <doc_path>/<workflow_name>.gv, so workflow_name must be a file "
                f"name; {workflow_name!r} is not (no '/', '\\\\' or NUL, not '.' or '..')"
            )
        if not isinstance(doc_path, (str, os.PathLike)):
            raise GraphError(f"doc_path must be a folder path (str or path-like), got {doc_path!r}")
        self.doc_path = doc_path

    @property
    def gv_path(self) -> Path:
        """Where :meth:`run` writes the DOT text: ``<doc_path>/<workflow_name>.gv``."""
        return Path(self.doc_path) / f"{self.workflow_name}.gv"

    @property
    def svg_path(self) -> Path:
        """Where :meth:`run` renders the SVG, when ``dot`` exists: ``<doc_path>/<workflow_name>.gv.svg``."""
        return Path(self.doc_path) / f"{self.workflow_name}.gv.svg"

    def run(self) -> None:
        """Write the drawing (``.gv``, and ``.gv.svg`` when Graphviz's ``dot`` is on PATH).

        Returns None, as the original did.  Without ``dot`` only the ``.gv`` file
        is written and an INFO log says why there is no SVG.  Nodes are coloured
        by what a run would do when a storage was set with :meth:`set_storage`.

        Raises
        ------
        DrawingError
            ``dot`` exists but failed or timed out.
        """
        os.makedirs(self.doc_path, exist_ok=True)
        text = self.to_dot()  # planned once, for both files
        save_dot(text, self.gv_path)
        if shutil.which("dot") is None:
            logger.warning(
                "workflow %r: wrote %s but no SVG: the Graphviz program 'dot' is not on PATH (%s)",
                self.workflow_name, self.gv_path, INSTALL_HINT,
            )
            return
        save_dot(text, self.svg_path)
        logger.info("workflow %r drawn to %s and %s", self.workflow_name, self.gv_path, self.svg_path)
