"""Early cutoff: a node recomputed to the same result does not invalidate its consumers.

Keys are Merkle hashes over upstream *keys* (:mod:`functionfuse.caching`), so a change
anywhere upstream gives every downstream node a new key, even when the changed node
recomputes to exactly the bytes it had (a refactor, a logging line, a bumped
``version`` that changed nothing).  Build systems answer this with *early cutoff*
(Shake, Bazel, Nix content-addressed derivations): before running an action, compare
the *content* of its inputs with the content its stored output was built from.  This
module does that on top of store v2's content-addressed objects.  Keys and planning
do not change: the cutoff is decided at run time, and only for nodes about to run.

Digests
-------
* **Content digest** ``D`` of a stored result: BLAKE3 (32 hex digits) of the canonical
  JSON of ``{"parts": [[format, object, codec, info], ...], "result": tree}`` taken from
  its manifest.  Objects are content-addressed (``object`` is the BLAKE3 of the stored
  bytes) and the tree and the parts are all a load uses, so two results with one
  digest load as equal values.  Derived from any manifest, old ones included; a
  result whose parts hold side data of a persistent serializer (HDF5 files ...) has
  no digest: what it names lives outside the objects, so it takes no part in cutoffs.
* **Recipe** ``R`` of a function node: the node's key computed with each input's key
  replaced by the input's *position* (``dep0``, ``dep1`` ...): code fingerprint,
  captured values, literal arguments, the backend's extra inputs, and where each
  input goes, but not which result it was.  Every result the caching core stores
  carries ``"recipe": {"digest": R, "inputs": [key of input 0, key of input 1, ...]}``
  in its manifest.

The rule
--------
A function node that must run only because an input's key changed (reason
``input changed``) is *cut off* when the stored version the workflow's latest run
recorded for it (``Task.previous``):

1. has a recipe with the same digest ``R`` (same code, arguments, captured values,
   inputs in the same places), and
2. for every input position ``i``, the input it was computed from and the input now
   have the same key, or two content digests that are equal.

Then the node is not run: its stored result is published under its new key (a
manifest naming the same objects, with ``"same_as": <old key>``; no data is copied)
and reported ``skipped``, or ``read`` when a running node or the caller needs its
value, with reason ``upstream unchanged``.  Its content is the old one, so its own
consumers are checked the same way: the cutoff propagates as far as results stay
identical.  Never cut off: nodes that are forced or downstream of a forced node,
nodes whose own code, arguments or captured values changed (their recipe differs),
class nodes (their state is a chain of calls), unhashable ones, and nodes whose
stored version has no recipe (stored before this module, or by a node that could
not be checked).  A nondeterministic input (another content digest each run)
recomputes its consumers as before.

Where it runs
-------------
* Local executor, sequential or pooled: the driver checks a candidate just before it
  would run it, once its inputs have run; a cut-off node is loaded only if needed.
* Dask and Ray: the worker that would compute the node checks it (the driver does not
  know the content of results computed on other workers); a cut-off node is loaded
  there, since its consumers receive its value (reported ``read``).
* ``run(early_cutoff=False)`` turns the check off: keys alone decide, as in the
  original package.  Manifests still get their recipe, so a later run can cut off.

Costs: nothing for nodes that do not run.  For a candidate, one manifest read of its
stored version (already read at planning, to give the reason) and, per input whose
key changed, the content digests of the old and the new input: known when the input
ran in this process, otherwise one manifest read each.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import blake3
import orjson

if TYPE_CHECKING:
    from .caching import Plan, Task

__all__ = [
    "UPSTREAM_UNCHANGED",
    "content_digest",
    "recipe_of",
    "is_candidate",
    "possible_cutoffs",
    "mark_candidates",
    "try_cutoff",
]

logger = logging.getLogger(__name__)

#: The reason of a node cut off: run records and reports use it.
UPSTREAM_UNCHANGED = "upstream unchanged"

_SERIALIZER = "serializer"  # the part format of persistent serializers (side data)


def content_digest(manifest: dict[str, Any]) -> str | None:
    """The content digest of the result a manifest describes (see the module docstring),
    or None for a result with side data of a persistent serializer."""
    entries = []
    for part in manifest.get("parts") or ():
        info = part.get("info") or {}
        if part.get("format") == _SERIALIZER or info.get("persistent"):
            return None
        entries.append([part.get("format"), part.get("object"), part.get("codec"), info])
    doc = {"parts": entries, "result": manifest.get("result")}
    try:
        body = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # what only json writes (integers beyond 64 bits in an info)
        from .storage.manifests import canonical_json

        body = canonical_json(doc)
    return blake3.blake3(body).hexdigest()[:32]


class _Positions(dict):
    """``id(node) -> key`` for :func:`~functionfuse.caching.compute_key`, with the
    node's inputs as ``dep<i>`` (their position) and any other node as its key."""

    def __init__(self, task: Task, by_node: dict[int, Task]) -> None:
        super().__init__((id(dep.node), f"dep{i}") for i, dep in enumerate(task.deps))
        self._by_node = by_node

    def get(self, node_id: int, default: Any = None) -> Any:  # type: ignore[override]
        key = dict.get(self, node_id)
        if key is None:
            other = self._by_node.get(node_id)
            return other.key if other is not None else default
        return key


def recipe_of(plan: Plan, task: Task) -> str | None:
    """The recipe digest of a function node (computed once, on the driver), or None for
    nodes early cutoff leaves alone (class nodes, unhashable arguments)."""
    recipe = task.__dict__.get("recipe")
    if recipe is not None or "recipe" in task.__dict__:
        return recipe
    from .caching import UNHASHABLE, Task, compute_key
    from .graph import FunctionNode

    node = task.node
    recipe = None
    if type(node) is FunctionNode and task.reason != UNHASHABLE and task.key is not None:
        shadow = Task(node, task.name, task.func)
        shadow.deps = task.deps
        extra = plan.extra.get(id(node), b"") if plan.extra else b""
        compute_key(shadow, _Positions(task, plan.by_node), False, plan.fp_cache, extra)
        if shadow.reason != UNHASHABLE:
            recipe = shadow.key
    task.recipe = recipe
    return recipe


def recipe_member(task: Task) -> dict[str, Any] | None:
    """The ``recipe`` member of the manifest of ``task``'s result (None without a recipe)."""
    recipe = task.__dict__.get("recipe")
    if recipe is None:
        return None
    return {"digest": recipe, "inputs": [dep.key for dep in task.deps]}


def note_previous(task: Task, meta: dict[str, Any]) -> None:
    """Keep what a cutoff of ``task`` needs from the manifest of its stored version
    (read at planning to give the reason ``input changed``)."""
    recipe = meta.get("recipe")
    if (
        isinstance(recipe, dict)
        and isinstance(recipe.get("digest"), str)
        and isinstance(recipe.get("inputs"), list)
        and len(recipe["inputs"]) == len(task.deps)
    ):
        content = content_digest(meta)
        if content is not None:
            task.previous_recipe = recipe
            task.previous_content = content
            task.previous_manifest = meta  # a cutoff publishes it again under the new key


def is_candidate(task: Task) -> bool:
    """Whether ``task`` may be cut off: it must run because an input's key changed, and
    its stored version has a recipe (see :func:`note_previous`)."""
    from .caching import INPUT_CHANGED

    return (
        task.run
        and task.store
        and task.previous is not None
        and task.reason.startswith(INPUT_CHANGED)
        and task.__dict__.get("previous_recipe") is not None
    )


def possible_cutoffs(plan: Plan) -> dict[int, list[str]]:
    """``id(task) -> names`` for the tasks of ``plan`` a run may cut off: the names are
    the nodes that surely run whose results decide it (through candidates above it)."""
    found: dict[int, list[str]] = {}
    for task in plan.tasks:
        if is_candidate(task) and recipe_of(plan, task) == task.previous_recipe["digest"]:
            sources: list[str] = []
            for dep in task.deps:
                if id(dep) in found:
                    sources += found[id(dep)]
                elif dep.run:
                    sources.append(dep.name)
            found[id(task)] = list(dict.fromkeys(sources))
    return found


def mark_candidates(plan: Plan) -> int:
    """Flag the tasks of ``plan`` that may be cut off (``task.cutoff``) and compute their
    recipes; returns how many.  Called by executors when a run starts with early cutoff on."""
    found = possible_cutoffs(plan)
    for task in plan.tasks:
        if id(task) in found:
            task.cutoff = True
            plan.wanted.update(id(dep) for dep in task.deps)
    return len(found)


def cutoff_note(sources: list[str]) -> str:
    """What ``explain()`` adds to the reason of a node a run may cut off."""
    if not sources:
        return "may be cut off: its inputs' content decides"
    verb = "changes" if len(sources) == 1 else "change"
    return f"may be cut off: depends on whether {', '.join(sources)} {verb}"


def content_of(plan: Plan, key: str) -> str | None:
    """The content digest of the result stored for ``key`` (None when there is none, or
    it cannot be read): remembered for the run, else from its manifest."""
    contents = plan.contents
    if key in contents:
        return contents[key]
    try:
        content = content_digest(plan.storage.read_meta(plan.workflow, key))
    except Exception as exc:  # noqa: BLE001 - missing, damaged, unreachable: no cutoff
        logger.debug("no content digest for %s: %s", key, exc)
        content = None
    contents[key] = content
    return content


def try_cutoff(plan: Plan, task: Task) -> bool:
    """Cut ``task`` off if its inputs have the content its stored version was computed
    from: publish that result under ``task.key`` and return True (the caller reports it).
    False leaves the task to run."""
    previous = task.previous_recipe
    for dep, old in zip(task.deps, previous["inputs"]):
        new = dep.key
        if new == old:
            continue
        content = content_of(plan, new) if new is not None else None
        if content is None or content != content_of(plan, old):
            return False
    meta = {
        "node": task.name,
        "workflow": plan.workflow,
        "inputs": {dep.name: dep.key for dep in task.deps},
        "recipe": recipe_member(task),
    }
    try:
        plan.storage.alias(plan.workflow, task.name, task.key, task.previous, meta,
                           manifest=task.__dict__.get("previous_manifest"))
    except Exception as exc:  # noqa: BLE001 - the old result is unusable: compute instead
        logger.info("node %r: not cut off, its stored version %s cannot be reused (%s)", task.name,
                    task.previous, exc)
        return False
    plan.contents[task.key] = plan.contents[task.previous] = task.previous_content
    task.entry = task.key
    task.reason = UPSTREAM_UNCHANGED
    task.cutoff = False
    logger.debug("node %r: upstream unchanged, result of %s reused as %s", task.name, task.previous, task.key)
    return True
