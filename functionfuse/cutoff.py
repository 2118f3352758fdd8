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

__all__ = ["UPSTREAM_UNCHANGED", "content_digest", "recipe_of", "is_candidate", "try_cutoff"]

logger = logging.getLogger(__name__)

#: The reason of a node cut off: run records and reports use it.
UPSTREAM_UNCHANGED = "upstream unchanged"
