"""What a run would do, and why, without running anything.

:func:`functionfuse.explain` and ``workflow.explain()`` key the graph and read
the storage's listing (and, for nodes whose entry is missing, the metadata of
their previous entry, to tell *what* changed), exactly as a run's plan does;
then they stop.  Nothing is computed, loaded or written.

Each node gets one of the actions a run would take:

* ``compute`` — no usable entry for its key, with the reason: ``new``,
  ``code changed: <what>`` (the function, a global, a helper), ``input
  changed: <which>`` (an input node or a literal argument; followed by
  ``may be cut off: depends on whether X changes`` when early cutoff may
  reuse its stored result, see :mod:`functionfuse.cutoff`), ``forced``,
  ``upstream forced``, ``unhashable input``, ``not stored`` (a log node),
  ``no storage``;
* ``replay`` — a cached call of a stateful instance re-executed to rebuild the
  instance's state for a later call that must run;
* ``read`` — cached, and loaded because a computed node needs it or it is a
  result the caller asked for;
* ``skip`` — cached and not needed: not even loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .caching import CACHED, REPLAY, Plan
from .cutoff import cutoff_note, possible_cutoffs

__all__ = ["Explanation", "PlannedNode", "explain_plan"]


@dataclass(frozen=True, slots=True)
class PlannedNode:
    """What a run would do to one node: ``action`` is compute / replay / read / skip."""

    node: str
    key: str | None
    action: str
    reason: str


class Explanation:
    """The plan of a run that was not run (see the module docstring).

    ``str()`` lists every node with its action and reason; :meth:`by_node`
    and :meth:`nodes` give them to programs.
    """

    def __init__(self, workflow: str, nodes: list[PlannedNode]) -> None:
        self.workflow = workflow
        self.entries = nodes

    def by_node(self) -> dict[str, PlannedNode]:
        return {p.node: p for p in self.entries}

    def nodes(self, action: str) -> list[str]:
        """Names of the nodes a run would ``action`` (compute / replay / read / skip)."""
        return [p.node for p in self.entries if p.action == action]

    @property
    def to_compute(self) -> list[str]:
        return self.nodes("compute")

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for p in self.entries:
            counts[p.action] = counts.get(p.action, 0) + 1
        order = ("compute", "replay", "read", "skip")
        parts = ", ".join(f"{counts[a]} to {a}" for a in order if a in counts)
        return f"workflow {self.workflow!r} would: {parts or 'do nothing'}"

    def __str__(self) -> str:
        lines = [self.summary()]
        lines += [f"  {p.node}: {p.action} ({p.reason})" for p in self.entries]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<Explanation {self.summary()}>"

    def _repr_html_(self) -> str:
        """The plan as an HTML table (node, action, reason), shown by Jupyter."""
        from .drawing import html_table

        rows = ((p.node, p.action, p.reason) for p in self.entries)
        return html_table(self.summary(), ("node", "action", "reason"), rows)


def explain_plan(plan: Plan, leaves: list[Any]) -> Explanation:
    """The :class:`Explanation` of ``plan`` for a run returning ``leaves``."""
    from .graph import NodeItem

    needed: set[int] = set()
    for leaf in leaves:
        node = leaf.node if isinstance(leaf, NodeItem) else leaf
        needed.add(id(plan.task(node)))
    for task in plan.tasks:
        if task.run:
            needed.update(id(dep) for dep in task.deps)
    maybe = possible_cutoffs(plan) if plan.storage is not None else {}
    out = []
    for task in plan.tasks:
        if task.run:
            action = "replay" if task.reason == REPLAY else "compute"
        elif id(task) in needed and plan.storage is not None and task.entry is not None:
            action = "read"
        else:
            action = "skip"
        reason = task.reason if task.run or plan.storage is None else CACHED
        if id(task) in maybe:
            reason = f"{reason}; {cutoff_note(maybe[id(task)])}"
        out.append(PlannedNode(task.name, task.key, action, reason))
    return Explanation(plan.workflow, out)
