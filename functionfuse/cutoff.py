"""Early cutoff: a node recomputed to the same result does not invalidate its consumers.

Keys are Merkle hashes over upstream *keys* (:mod:`functionfuse.caching`), so a change
anywhere upstream gives every downstream node a new key, even when the changed node
recomputes to exactly the bytes it had (a refactor, a logging line, a bumped
``version`` that changed nothing).  Build systems answer this with *early cutoff*
(Shake, Bazel, Nix content-addressed derivations): before running an action, compare
the *content* of its inputs with the content its stored output was built from.  This
module does that on top of store v2's content-addressed objects.  Keys and planning
do not change: the cutoff is decided at run time, and only for nodes about to run.

What a result records
---------------------
* **Content digest** ``D`` of a stored result: BLAKE3 (32 hex digits) of the canonical
  JSON of ``{"parts": [[format, object, codec, info], ...], "result": tree}`` taken from
  its manifest.  Objects are content-addressed (``object`` is the BLAKE3 of the stored
  bytes) and the tree and the parts are all a load uses.  Derived from a manifest,
  never stored.  A result has none when its bytes do not determine its value: a
  ``pickle`` part names classes and functions whose code may change (the same bytes
  would then load as another behaviour), and side data of a persistent serializer
  (HDF5 files ...) lies outside the objects.  Such results take no part in cutoffs.
* Every result of a function node the caching core stores records what it was computed
  from: ``"recipe": {"inputs": [key of input 0, ...], "contents": [D of input 0 or
  null, ...]}``, in the order of the node's inputs (:func:`recipe_member`).  The
  digests are taken when the result is stored: a key whose result is stored again
  later (``force=`` on a node that reads a file, a damaged entry replaced by another
  value) cannot make an old record lie.

The rule
--------
A function node that must run only because an input's key changed (reason
``input changed``) is *cut off* when the stored version the workflow's latest run
recorded for it (``Task.previous``):

1. has the key this node gets when its inputs are given the keys that version recorded
   (so its code, literal arguments, captured values and the backend's extra inputs are
   the same: keys are collision-resistant), and
2. every input, its key changed or not, now has the content digest that version
   recorded for it (position by position, so swapped inputs differ; a key may hold
   another result than then, after ``force=`` on a node that reads a file), and is
   stored (an input kept out of storage is computed anew: no stored content says what
   it gives).

Then the node is not run: its stored result is published under its new key (a
manifest naming the same objects, with ``"same_as": <old key>``; no data is copied)
and reported ``skipped``, or ``read`` when a running node or the caller needs its
value, with reason ``upstream unchanged``.  Its content is the old one, so its own
consumers are checked the same way: the cutoff propagates as far as results stay
identical.  Never cut off: nodes that are forced or downstream of a forced node,
nodes whose own code, arguments or captured values changed, class nodes (their state
is a chain of calls), unhashable ones, and nodes whose stored version records no
inputs (stored before this module).  An input without a digest (pickled, side data,
kept out of storage) or with another one each run (nondeterministic) recomputes its
consumers as before.  A node's own result needs no digest to be reused: a node whose
result pickle holds is cut off like any other (its consumers then run).  A result with
side data (a persistent serializer's HDF5 file or zarr array) is never reused: two keys
would share the files, and removing one key's result deletes them.

Where it runs
-------------
* Local executor, sequential or pooled: the driver checks a candidate just before it
  would run it, once its inputs have run; a cut-off node is loaded only if needed.
* Dask and Ray: the worker that would compute the node checks it (the driver does not
  know the content of results computed on other workers).  A cut-off node hands on the
  reused result's key, not its value (``remote.Reused``): a consumer that computes
  loads it on its worker and tells the driver (the node is reported ``read``), a
  consumer cut off hands on its own key, the driver loads a result it returns.  A
  damaged reused result is found by whoever loads it; the run then goes again without
  that entry, which is computed.
* ``run(early_cutoff=False)`` turns the check off: keys alone decide, as in the
  original package.  Results still record their inputs, so a later run can cut off.

Costs: planning keys nothing more (candidates are found from the manifests planning
reads anyway, to give the reason ``input changed``, plus one key computation each).
Storing a result records its inputs' digests: those computed or loaded in the same
process are taken then (an input kept out of storage or replayed records none), others
are read from their manifests (once per plan: per run on the driver, per node on a Dask
or Ray worker).  This holds because a node's consumers always get what the store holds
under its key: when another writer stored the key first (a node whose result varies,
computed twice at once), the caching core hands them that stored result, not its own
(:func:`functionfuse.caching.store_node`).  A check needs the digest of every input
(usually known already) and writes one manifest.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import blake3
import orjson

from .graph import FunctionNode as _FunctionNode

if TYPE_CHECKING:
    from .caching import Plan, Task

__all__ = [
    "UPSTREAM_UNCHANGED",
    "content_digest",
    "recipe_member",
    "is_candidate",
    "possible_cutoffs",
    "want_contents",
    "mark_candidates",
    "try_cutoff",
]

logger = logging.getLogger(__name__)

#: The reason of a node cut off: run records and reports use it.
UPSTREAM_UNCHANGED = "upstream unchanged"

# Reasons of functionfuse.caching, which imports this module (the same values as there;
# a test checks they agree).
_INPUT_CHANGED = "input changed"
_UNHASHABLE = "unhashable input"
_REPLAY = "replay"

#: Part formats whose bytes do not determine the value: side data of a persistent
#: serializer lies outside the objects, and a pickle refers to classes and functions by
#: name, whose code may have changed (the same bytes then load as another behaviour).
_UNCOMPARABLE = frozenset(("serializer", "pickle"))


def content_digest(manifest: dict[str, Any]) -> str | None:
    """The content digest of the result a manifest describes (see the module docstring),
    or None for a result whose bytes do not determine its value (a pickle part, side
    data of a persistent serializer)."""
    entries = []
    for part in manifest.get("parts") or ():
        info = part.get("info") or {}
        if part.get("format") in _UNCOMPARABLE or not isinstance(info, dict) or info.get("persistent"):
            return None
        entries.append([part.get("format"), part.get("object"), part.get("codec"), info])
    doc = {"parts": entries, "result": manifest.get("result")}
    try:
        body = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # what only json writes (integers beyond 64 bits in an info)
        from .storage.manifests import canonical_json

        body = canonical_json(doc)
    return blake3.blake3(body).hexdigest()[:32]


def _side_data(manifest: dict[str, Any]) -> bool:
    """Whether a result's parts name side data (a persistent serializer's files)."""
    for part in manifest.get("parts") or ():
        info = part.get("info") or {}
        if part.get("format") == "serializer" or not isinstance(info, dict) or info.get("persistent"):
            return True
    return False


def records_inputs(task: Task) -> bool:
    """Whether the manifest of ``task``'s result records what it was computed from: stored
    function nodes with hashable arguments (decided on the driver; a worker's copy of
    the task carries the answer as ``task.recipe``)."""
    recipe = task.recipe
    if recipe is None:
        recipe = task.recipe = type(task.node) is _FunctionNode and task.reason != _UNHASHABLE
    return recipe


def recipe_member(plan: Plan, task: Task, contents: list[str | None] | None = None) -> dict[str, Any]:
    """The ``recipe`` member of the manifest of ``task``'s result: its inputs' keys and the
    content digests they had, in input order."""
    keys = [dep.key for dep in task.deps]
    if contents is None:
        known = plan.contents
        unstored = task.unstored_inputs
        contents = [
            None if i in unstored else known[key] if key in known else content_of(plan, key)
            for i, key in enumerate(keys)
        ]
    return {"inputs": keys, "contents": contents}


def note_previous(task: Task, meta: dict[str, Any]) -> None:
    """Keep what a cutoff of ``task`` needs from the manifest of its stored version
    (read at planning to give the reason ``input changed``)."""
    recipe = meta.get("recipe")
    n = len(task.deps)
    if not (
        isinstance(recipe, dict)
        and isinstance(recipe.get("inputs"), list) and len(recipe["inputs"]) == n
        and isinstance(recipe.get("contents"), list) and len(recipe["contents"]) == n
    ):
        return
    try:
        content = content_digest(meta)
    except Exception as exc:  # noqa: BLE001 - an odd manifest: no cutoff, never a failed plan
        logger.debug("node %r: no content digest for %s (%s)", task.name, task.previous, exc)
        return
    if content is None and _side_data(meta):
        # Two keys must not share side data (HDF5 files, zarr arrays): removing either
        # key's result deletes the files its parts name.
        return
    # A result without a digest (a pickle part) is reused all the same: what decides is
    # its inputs' digests; only its consumers cannot be cut off, having none to compare.
    task.previous_recipe = recipe
    task.previous_content = content
    task.previous_manifest = meta  # a cutoff publishes it again under the new key


def is_candidate(task: Task) -> bool:
    """Whether ``task`` may be cut off as far as its reason tells: it must run because an
    input's key changed, and its stored version records its inputs (:func:`note_previous`)."""
    return (
        task.previous_recipe is not None
        and task.run
        and task.store
        and task.previous is not None
        and task.reason.startswith(_INPUT_CHANGED)
    )


class _OldInputs(dict):
    """``id(node) -> key`` for :func:`~functionfuse.caching.compute_key`: the node's inputs
    at the keys its stored version was computed from, any other node at its key."""

    def __init__(self, task: Task, by_node: dict[int, Task]) -> None:
        super().__init__((id(dep.node), old) for dep, old in zip(task.deps, task.previous_recipe["inputs"]))
        self._by_node = by_node

    def get(self, node_id: int, default: Any = None) -> Any:  # type: ignore[override]
        key = dict.get(self, node_id)
        if key is None:
            other = self._by_node.get(node_id)
            return other.key if other is not None else default
        return key


def _same_recipe(plan: Plan, task: Task) -> bool:
    """Whether ``task`` fed with the inputs its stored version was computed from gets that
    version's key: then its code, arguments and captured values are the same."""
    from .caching import Task, compute_key

    if not all(isinstance(k, str) for k in task.previous_recipe["inputs"]):
        return False
    shadow = Task(task.node, task.name, task.func)
    shadow.deps = task.deps
    extra = plan.extra.get(id(task.node), b"") if plan.extra else b""
    compute_key(shadow, _OldInputs(task, plan.by_node), False, plan.fp_cache, extra)
    return shadow.reason != _UNHASHABLE and shadow.key == task.previous


def possible_cutoffs(plan: Plan) -> dict[int, list[str]]:
    """``id(task) -> names`` for the tasks of ``plan`` a run may cut off: the names are
    the nodes that surely run whose results decide it (through candidates above it)."""
    found: dict[int, list[str]] = {}
    for task in plan.tasks:
        if task.previous_recipe is None or not is_candidate(task) or not records_inputs(task):
            continue
        recipe = task.previous_recipe
        sources: list[str] = []
        for dep, old, content in zip(task.deps, recipe["inputs"], recipe["contents"]):
            # Every input is compared, its key changed or not: a key may hold another
            # result than when the stored version was computed (force= on a node that
            # reads a file, a damaged entry replaced).
            if not isinstance(content, str) or not dep.store or dep.reason == _REPLAY:
                break  # nothing to compare with: no digest, or a value computed anew
            if dep.key == old:
                continue
            if id(dep) in found:
                sources += found[id(dep)]
            elif dep.run:
                sources.append(dep.name)
        else:
            if _same_recipe(plan, task):
                found[id(task)] = list(dict.fromkeys(sources))
    return found


def want_contents(plan: Plan) -> None:
    """Ask the run to keep the content digest of every result a stored function node that
    runs takes as input (its manifest records them, see :func:`recipe_member`)."""
    wanted = plan.wanted
    for task in plan.tasks:
        if task.run and task.store and task.deps:
            wanted.update(id(dep) for dep in task.deps)
            # Inputs computed here and not stored, or replayed (a class instance's call run
            # again): what a manifest holds under their key is not the value this node gets.
            unstored = tuple(i for i, dep in enumerate(task.deps) if not dep.store or dep.reason == _REPLAY)
            if unstored:
                task.unstored_inputs = unstored


def mark_candidates(plan: Plan) -> int:
    """Flag the tasks of ``plan`` that may be cut off (``task.cutoff``); returns how many.
    Called by executors when a run starts with early cutoff on."""
    found = possible_cutoffs(plan)
    for task in plan.tasks:
        if id(task) in found:
            task.cutoff = True
    return len(found)


def cutoff_note(sources: list[str]) -> str:
    """What ``explain()`` adds to the reason of a node a run may cut off."""
    if not sources:
        return "may be cut off: its inputs' content decides"
    verb = "changes" if len(sources) == 1 else "change"
    return f"may be cut off: depends on whether {', '.join(sources)} {verb}"


def content_of(plan: Plan, key: str) -> str | None:
    """The content digest of the result stored for ``key`` (None when there is none, or
    it cannot be read): known to the plan, else from its manifest (once per plan)."""
    contents = plan.contents
    if key in contents:
        return contents[key]
    try:
        content = content_digest(plan.storage.read_meta(plan.workflow, key))
    except Exception as exc:  # noqa: BLE001 - missing, damaged, unreachable: nothing to compare
        logger.debug("no content digest for %s: %s", key, exc)
        content = None
    contents[key] = content
    return content


def try_cutoff(plan: Plan, task: Task) -> bool:
    """Cut ``task`` off if every input has the content its stored version recorded:
    publish that result under ``task.key`` and return True (the caller reports it).
    False leaves the task to run."""
    recipe = task.previous_recipe
    contents = []
    for dep, recorded in zip(task.deps, recipe["contents"]):
        if getattr(dep, "action", None) == "replayed":  # re-executed here: not the stored value
            return False
        content = content_of(plan, dep.key) if dep.key is not None else None
        if content is None or content != recorded:
            return False
        contents.append(content)
    meta = {
        "inputs": {dep.name: dep.key for dep in task.deps},
        "recipe": recipe_member(plan, task, contents),
    }
    try:
        manifest = plan.storage.alias(plan.workflow, task.name, task.key, task.previous, meta,
                                      manifest=task.previous_manifest)
        content = content_digest(manifest)  # another writer may have published the key first
    except Exception as exc:  # noqa: BLE001 - the old result is unusable: compute instead
        logger.info("node %r: not cut off, its stored version %s cannot be reused (%s)", task.name,
                    task.previous, exc)
        return False
    plan.contents[task.key] = content
    task.entry = task.key
    task.reason = UPSTREAM_UNCHANGED
    task.cutoff = False
    logger.debug("node %r: upstream unchanged, result of %s reused as %s", task.name, task.previous, task.key)
    return True
