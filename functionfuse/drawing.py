"""Pictures of a workflow: Graphviz DOT text, rendered files, networkx graphs.

A drawing shows every node of a workflow (labelled with its name) and an edge
from each parent to each child.  When the workflow has a storage, each node is
coloured by what a run would do, from the same plan ``workflow.explain()``
makes (nothing is computed, loaded or written):

* **cached** (green) — a stored result matches the node's key;
* **will compute** (orange) — no usable result; the reason (``new``, ``code
  changed: global RATE``, ``input changed: scale`` ...) is written under the
  node's name;
* **replay** (yellow) — a cached call of a stateful instance that runs again
  to rebuild the instance for a later call;
* **not stored** (grey) — a node kept out of storage (``log_nodes``).

Design notes
------------
* DOT is written by hand, not through the ``graphviz`` package: the text is a
  few lines per node, and writing it ourselves keeps it deterministic (same
  graph, same bytes) and free of dependencies.  Every string is quoted, and
  whatever Graphviz could misread in a name (quotes, backslashes, ``&``,
  newlines, control characters) is escaped (see :func:`_escape`), so any node
  name gives valid DOT that shows the name as written.
* The legend is the graph's HTML-like label, not a cluster of nodes: node IDs
  are user names, and any name a legend node used could clash with one.
* Rendering runs the ``dot`` program with a timeout and reads its output from
  a pipe; nothing ever opens a viewer, and a failed render leaves no file.
* ``networkx`` is imported only by :func:`to_networkx` (the ``graph`` extra).
"""

from __future__ import annotations

import html
import logging
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .caching import NOT_STORED
from .errors import FunctionFuseError
from .graph import BaseNode, ClassCallNode, ClassInitNode

if TYPE_CHECKING:  # pragma: no cover
    from .backends.base import BaseWorkflow

__all__ = [
    "RENDERED_FORMATS",
    "STATUS_COLOURS",
    "TEXT_FORMATS",
    "DrawingError",
    "GraphvizNotFoundError",
    "draw",
    "find_dot",
    "html_table",
    "render",
    "save_dot",
    "to_dot",
    "to_networkx",
]

logger = logging.getLogger(__name__)

#: ``status -> (fill colour, border colour)`` of planned nodes, in legend order.
STATUS_COLOURS: dict[str, tuple[str, str]] = {
    "cached": ("#c7e9c0", "#31a354"),
    "will compute": ("#fdd0a2", "#e6550d"),
    "replay": ("#fff2ae", "#b8860b"),
    "not stored": ("#e0e0e0", "#808080"),
}
_LEGEND_TEXT = {
    "cached": "cached (read or skipped)",
    "will compute": "will compute (reason under the name)",
    "replay": "replay (rebuilds a stateful instance)",
    "not stored": "not stored (log node, always runs)",
}
#: File suffixes written as DOT text.
TEXT_FORMATS = frozenset({".gv", ".dot"})
#: File suffixes rendered by the ``dot`` program, and its ``-T`` format for each.
RENDERED_FORMATS: dict[str, str] = {".svg": "svg", ".png": "png", ".pdf": "pdf"}

INSTALL_HINT = (
    "install Graphviz: apt install graphviz / brew install graphviz / conda install graphviz; "
    "or write a .gv file"
)
_NETWORKX_HINT = 'to_networkx() needs networkx: pip install "functionfuse[graph]" (or pip install networkx)'


class DrawingError(FunctionFuseError, RuntimeError):
    """A drawing could not be made (the ``dot`` program failed or timed out)."""


class GraphvizNotFoundError(DrawingError):
    """The Graphviz ``dot`` program, needed for SVG/PNG/PDF, is not on ``PATH``."""


class DrawingFormatError(DrawingError, ValueError):
    """The file suffix names no format a drawing can be written in."""


# -- the graph as data -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _NodeView:
    name: str
    function: str
    kind: str  # function / class / method
    action: str | None = None  # compute / replay / read / skip (None: no plan)
    reason: str | None = None
    key: str | None = None

    @property
    def status(self) -> str | None:
        """``cached`` / ``will compute`` / ``replay`` / ``not stored`` (None: no plan)."""
        if self.action is None:
            return None
        if self.action in ("read", "skip"):
            return "cached"
        if self.action == "replay":
            return "replay"
        return "not stored" if self.reason == NOT_STORED else "will compute"


@dataclass(slots=True)
class _GraphView:
    workflow: str
    nodes: list[_NodeView] = field(default_factory=list)
    edges: list[tuple[str, str, str]] = field(default_factory=list)  # (parent, child, data/order)
    planned: bool = False


def _kind_and_function(node: BaseNode, func: Any) -> tuple[str, str]:
    if isinstance(node, ClassInitNode):
        return "class", node.qualname
    if isinstance(node, ClassCallNode):
        return "method", node.qualname
    # ``func`` is the replacement set by ``workflow.replace_func``, if any: what would run
    return "function", getattr(func, "__qualname__", node.qualname) if func is not None else node.qualname


def _view(workflow: BaseWorkflow, plan: bool) -> _GraphView:
    """Nodes (with their planned action when asked and possible) and edges of ``workflow``."""
    named = list(workflow.graph_traversal())
    name_of = {id(node): name for name, node in named}
    planned: dict[str, Any] = {}
    if plan and workflow.object_storage is not None:
        planned = workflow.explain().by_node()
    view = _GraphView(workflow.workflow_name, planned=bool(planned))
    funcs = getattr(workflow, "_funcs", {})
    for name, node in named:
        kind, function = _kind_and_function(node, funcs.get(id(node)))
        p = planned.get(name)
        if p is None:
            view.nodes.append(_NodeView(name, function, kind))
        else:
            view.nodes.append(_NodeView(name, function, kind, p.action, p.reason, p.key))
        for dep in node.deps:
            view.edges.append((name_of[id(dep)], name, "data"))
        if node.after is not None and node.after not in node.deps:
            view.edges.append((name_of[id(node.after)], name, "order"))
    return view


# -- DOT ---------------------------------------------------------------------------------


def _escape(text: str, *, label: bool = False) -> str:
    r"""``text`` as the inside of a DOT double-quoted string.

    Only ``\"`` is written as a backslash escape; everything else Graphviz
    could misread becomes an HTML character reference, which it decodes in
    labels and keeps in SVG text: ``&`` is ``&amp;``, a backslash ``&#92;``
    (doubled in labels, where Graphviz then reads ``\\`` as one backslash),
    and control characters ``&#N;`` (a newline is ``\n`` in labels, ``&#10;``
    elsewhere: a line break in tooltips too).  Other characters stay as they are (DOT is
    UTF-8); NUL and lone surrogates, which no file can hold, become U+FFFD.
    No backslash of the text is ever written as one, so no Graphviz version
    misreads ``\\"`` at the end of a string.

    >>> print(_escape('say "hi" \\ café & co'))
    say \"hi\" &#92; café &amp; co
    >>> print(_escape('a\\b\nc', label=True))
    a&#92;&#92;b\nc
    """
    out = []
    for ch in text:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("&#92;&#92;" if label else "&#92;")
        elif ch == "&":
            out.append("&amp;")
        elif ch == "\n" and label:
            out.append("\\n")  # DOT's centred line break
        elif code == 0 or 0xD800 <= code <= 0xDFFF:
            out.append("\ufffd")
        elif code < 0x20 or code == 0x7F:
            out.append(f"&#{code};")
        else:
            out.append(ch)
    return "".join(out)


def _quote(text: str, *, label: bool = False) -> str:
    return f'"{_escape(text, label=label)}"'


def _attrs(pairs: Iterable[tuple[str, str]]) -> str:
    return ", ".join(f"{k}={_quote(v, label=k == 'label')}" for k, v in pairs)


def _legend(statuses: Sequence[str]) -> str:
    """An HTML-like label: one coloured row per status (fixed text only, no user input)."""
    rows = ['<tr><td colspan="2"><b>legend</b></td></tr>']
    for status in statuses:
        fill, border = STATUS_COLOURS[status]
        rows.append(
            f'<tr><td bgcolor="{fill}" color="{border}" width="20"></td>'
            f'<td align="left">{html.escape(_LEGEND_TEXT[status])}</td></tr>'
        )
    return '<<table border="0" cellborder="1" cellspacing="0" cellpadding="4">' + "".join(rows) + "</table>>"


def _node_line(node: _NodeView) -> str:
    pairs = [("label", node.name)]
    status = node.status
    if status is not None:
        fill, border = STATUS_COLOURS[status]
        if status == "will compute":
            pairs[0] = ("label", f"{node.name}\n{node.reason}")
        pairs += [("fillcolor", fill), ("color", border)]
        tooltip = f"{node.name}: {node.action} ({node.reason})\n{node.kind} {node.function}"
    else:
        tooltip = f"{node.name}\n{node.kind} {node.function}"
    pairs.append(("tooltip", tooltip))
    return f"    {_quote(node.name)} [{_attrs(pairs)}];"


def _dot_text(view: _GraphView) -> str:
    lines = [
        f"// functionfuse workflow {_quote(view.workflow)}",
        f"digraph {_quote(view.workflow)} {{",
        '    graph [charset="UTF-8", rankdir="TB", fontname="Helvetica", fontsize="10"];',
        (
            '    node [shape="box", style="rounded,filled", fillcolor="white", color="#555555", '
            'fontname="Helvetica", fontsize="11"];'
        ),
        '    edge [color="#555555", arrowsize="0.7"];',
    ]
    lines += [_node_line(node) for node in view.nodes]
    for parent, child, kind in view.edges:
        extra = ' [style="dashed", tooltip="same instance, in call order"]' if kind == "order" else ""
        lines.append(f"    {_quote(parent)} -> {_quote(child)}{extra};")
    if view.planned:
        present = {node.status for node in view.nodes}
        statuses = [s for s in STATUS_COLOURS if s in present]
        lines.append(f'    graph [labelloc="b", labeljust="l", label={_legend(statuses)}];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_dot(workflow: BaseWorkflow, *, plan: bool = True) -> str:
    """The workflow's graph as Graphviz DOT text.

    Parameters
    ----------
    workflow : BaseWorkflow
        Any workflow (local, Dask, Ray, graph).
    plan : bool, default True
        When the workflow has a storage, colour nodes by what a run would do
        (see the module docstring) and add a legend.  Planning reads the
        storage's listing, as ``workflow.explain()`` does; pass False to draw
        the bare graph without touching the storage.

    Returns
    -------
    str
        DOT text, the same for the same graph and plan.  Node IDs and labels
        are the node names; edges go from parent to child (dashed: the order
        of calls on a stateful instance).

    Raises
    ------
    StorageError
        When ``plan`` is True and the storage cannot be read.

    Examples
    --------
    >>> from functionfuse import workflow
    >>> from functionfuse.backends.builtin.localback import LocalWorkflow
    >>> @workflow
    ... def inc(x):
    ...     return x + 1
    >>> text = to_dot(LocalWorkflow(inc(inc(1)), workflow_name="demo"))
    >>> print(text.splitlines()[-2])
        "inc_0000" -> "inc_0001";
    """
    return _dot_text(_view(workflow, plan))


# -- files -------------------------------------------------------------------------------


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file (no half-written drawing)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def find_dot() -> str:
    """The path of the Graphviz ``dot`` program (looked up on ``PATH``).

    Raises
    ------
    GraphvizNotFoundError
        When ``dot`` is not on ``PATH``; the message says how to install it.
    """
    program = shutil.which("dot")
    if program is None:
        raise GraphvizNotFoundError(f"the Graphviz program 'dot' is not on PATH; {INSTALL_HINT}")
    return program


def render(dot_text: str, fmt: str, *, timeout: float = 60.0) -> bytes:
    """``dot_text`` rendered by ``dot -T<fmt>`` (never opens a viewer).

    Raises
    ------
    GraphvizNotFoundError
        ``dot`` is not on ``PATH``.
    DrawingError
        ``dot`` failed or did not finish within ``timeout`` seconds.
    """
    program = find_dot()
    try:
        proc = subprocess.run(
            [program, f"-T{fmt}"], input=dot_text.encode("utf-8"), capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise DrawingError(
            f"{program} -T{fmt} did not finish within {timeout:g} s; draw to a .gv file instead, "
            "or pass a larger timeout"
        ) from None
    except OSError as exc:
        raise DrawingError(f"cannot run {program}: {exc}; {INSTALL_HINT}") from exc
    if proc.returncode != 0:
        message = proc.stderr.decode("utf-8", "replace").strip() or "no message"
        raise DrawingError(f"{program} -T{fmt} failed with exit status {proc.returncode}: {message}")
    return proc.stdout


def _check_suffix(target: Path) -> str:
    suffix = target.suffix.lower()
    if suffix not in TEXT_FORMATS and suffix not in RENDERED_FORMATS:
        valid = ", ".join(sorted(TEXT_FORMATS | RENDERED_FORMATS.keys()))
        raise DrawingFormatError(f"cannot draw to {str(target)!r}: the suffix must be one of {valid}")
    return suffix


def save_dot(dot_text: str, path: str | os.PathLike[str], *, timeout: float = 60.0) -> Path:
    """Write DOT text to ``path``, as text or rendered, by its suffix (see :func:`draw`)."""
    target = Path(path)
    suffix = _check_suffix(target)
    if suffix in TEXT_FORMATS:
        data = dot_text.encode("utf-8")
    else:
        data = render(dot_text, RENDERED_FORMATS[suffix], timeout=timeout)
    _write_atomically(target, data)
    return target


def draw(
    workflow: BaseWorkflow, path: str | os.PathLike[str], *, plan: bool = True, timeout: float = 60.0
) -> Path:
    """Write a drawing of the workflow to ``path``, in the format its suffix names.

    Parameters
    ----------
    workflow : BaseWorkflow
        The workflow to draw.
    path : str or path-like
        ``.gv`` / ``.dot`` write DOT text (no program needed); ``.svg``,
        ``.png`` and ``.pdf`` are rendered by the Graphviz ``dot`` program.
        Its folder must exist.
    plan : bool, default True
        Colour nodes by what a run would do (see :func:`to_dot`).
    timeout : float, default 60
        Seconds ``dot`` may take.

    Returns
    -------
    pathlib.Path
        The file written.

    Raises
    ------
    DrawingFormatError
        The suffix is none of the above.
    GraphvizNotFoundError
        A rendered format was asked for and ``dot`` is not on ``PATH``.
    DrawingError
        ``dot`` failed or timed out (no file is left behind).
    """
    target = Path(path)
    if _check_suffix(target) in RENDERED_FORMATS:
        find_dot()  # before planning: say at once what is missing
    save_dot(to_dot(workflow, plan=plan), target, timeout=timeout)
    logger.info("workflow %r drawn to %s", workflow.workflow_name, target)
    return target


# -- networkx ----------------------------------------------------------------------------


def to_networkx(workflow: BaseWorkflow, *, plan: bool = True) -> Any:
    """The workflow's graph as a :class:`networkx.DiGraph`.

    Nodes are keyed by node name, with the attributes ``name``, ``function``
    (the qualified name of the function, class or method) and ``kind``
    (``function`` / ``class`` / ``method``); when the workflow has a storage
    and ``plan`` is True, also ``action``, ``reason``, ``key`` and
    ``status`` (``cached`` / ``will compute`` / ``replay`` / ``not stored``),
    from the plan ``workflow.explain()`` makes.  Edges go from parent to child
    with ``kind`` ``data`` (a value flows) or ``order`` (the next call on the
    same stateful instance).  The graph's ``name`` is the workflow's name.

    Raises
    ------
    ImportError
        networkx is not installed (``pip install "functionfuse[graph]"``).
    """
    try:
        import networkx as nx
    except ImportError as exc:
        raise ImportError(_NETWORKX_HINT, name="networkx") from exc
    view = _view(workflow, plan)
    graph = nx.DiGraph(name=view.workflow)
    for node in view.nodes:
        attrs: dict[str, Any] = {"name": node.name, "function": node.function, "kind": node.kind}
        if node.action is not None:
            attrs.update(action=node.action, reason=node.reason, key=node.key, status=node.status)
        graph.add_node(node.name, **attrs)
    for parent, child, kind in view.edges:
        graph.add_edge(parent, child, kind=kind)
    return graph


# -- HTML tables (reports and plans in notebooks) -------------------------------------------


def html_table(
    caption: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    footer: str | None = None,
    max_rows: int = 1000,
) -> str:
    """An HTML table, every cell escaped; past ``max_rows`` rows, one row says how many more.

    >>> table = html_table("plan", ["node", "action"], [["<a>", "compute"]])
    >>> '<td style="text-align:left">&lt;a&gt;</td>' in table
    True
    """
    left = ' style="text-align:left"'
    head = "".join(f"<th{left}>{html.escape(str(c))}</th>" for c in columns)
    body = []
    hidden = 0
    for i, row in enumerate(rows):
        if i >= max_rows:
            hidden += 1
            continue
        body.append("<tr>" + "".join(f"<td{left}>{html.escape(str(v))}</td>" for v in row) + "</tr>")
    if hidden:
        body.append(f'<tr><td colspan="{len(columns)}"{left}>… and {hidden} more (str() lists them all)</td></tr>')
    foot = f'<tfoot><tr><td colspan="{len(columns)}"{left}>{html.escape(footer)}</td></tr></tfoot>' if footer else ""
    return (
        f"<table><caption{left}>{html.escape(caption)}</caption><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody>{foot}</table>"
    )
