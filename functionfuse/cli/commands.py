"""The commands of the ``functionfuse`` command line: each takes the parsed arguments and
returns ``(JSON members, human text)`` (docs/cli.md)."""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
from collections.abc import Callable
from typing import Any

from ..errors import CorruptEntryError, EntryNotFoundError, StorageError
from . import STORE_ENV, UsageError, render, storage_options


def _open(args: argparse.Namespace) -> tuple[Any, Any]:
    from ..storage.inventory import Inventory, open_store

    location = args.store or os.environ.get(STORE_ENV)
    if not location:
        raise UsageError(f"no store: give --store LOCATION or set {STORE_ENV}")
    storage = open_store(location, storage_options(args.storage_option))
    return storage, Inventory(storage.results)


def _status(record: dict | None, node: str) -> tuple[str, str]:
    entry = (record or {}).get("nodes", {}).get(node)
    if isinstance(entry, dict):
        return str(entry.get("action", "?")), str(entry.get("reason") or "")
    return "carried", ""


def cmd_ls(args: argparse.Namespace) -> tuple[dict, str]:
    _, inv = _open(args)
    if args.workflow is None:
        rows = []
        for wf in inv.workflows():
            runs = inv.runs(wf)
            latest = inv.latest(wf)
            view = inv.current(wf)
            rows.append({
                "workflow": wf, "nodes": len(view), "runs": len(runs),
                "bytes": sum(inv.stored_bytes(k) for k in set(view.values())) + inv.side_bytes(wf),
                "last_run": (latest or {}).get("run"), "last_finished": (latest or {}).get("finished"),
                "last_outcome": (latest or {}).get("outcome"),
            })
        text = render.table(
            [(r["workflow"], r["nodes"], r["runs"], render.size(r["bytes"]), render.age(r["last_finished"]),
              r["last_outcome"] or "-") for r in rows],
            ("WORKFLOW", "NODES", "RUNS", "SIZE", "LAST RUN", "OUTCOME"), right=(1, 2, 3),
        ) if rows else f"no workflows in {inv.url}"
        return {"store": inv.url, "workflows": rows}, text
    inv.require(args.workflow)
    latest = inv.latest(args.workflow)
    versions = inv.versions(args.workflow)
    rows = []
    for name, key, doc in inv.iter_current(args.workflow):
        action, reason = _status(latest, name)
        rows.append({
            "node": name, "key": key, "versions": len(versions.get(name, {})) or 1, "status": action,
            "reason": reason, "bytes": inv.stored_bytes(key) if doc else None,
            "formats": sorted({p.get("format") for p in (doc or {}).get("parts", ())} or {"inline"}) if doc else [],
            "created": (doc or {}).get("created"), "stored": doc is not None,
        })
    text = render.table(
        [(r["node"], r["versions"], r["status"], render.size(r["bytes"]) if r["stored"] else "missing",
          ",".join(r["formats"]), render.age(r["created"]), r["key"][:12]) for r in rows],
        ("NODE", "VERSIONS", "LAST RUN", "SIZE", "FORMATS", "AGE", "KEY"), right=(1, 3),
    ) if rows else f"workflow {args.workflow!r} has no stored nodes"
    return {"workflow": args.workflow, "nodes": rows}, text


def cmd_show(args: argparse.Namespace) -> tuple[dict, str]:
    _, inv = _open(args)
    wf, node = args.workflow, args.node
    inv.require(wf)
    current = inv.current(wf)
    history = inv.versions(wf).get(node, {})
    if args.key is not None:
        matches = [k for k in history if k.startswith(args.key)] or ([args.key] if inv.manifest(args.key) else [])
        if len(matches) != 1:
            raise EntryNotFoundError(
                f"node {node!r} of workflow {wf!r} has {'no' if not matches else 'more than one'} version "
                f"with key {args.key!r}; its versions: {', '.join(k[:12] for k in history) or 'none'}"
            )
        key = matches[0]
    elif node in current:
        key = current[node]
    else:
        close = fnmatch.filter(sorted(current), f"*{node}*")[:5]
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else f"; nodes: {', '.join(sorted(current)[:10])}"
        raise EntryNotFoundError(f"workflow {wf!r} has no stored node {node!r}{hint}")
    doc = inv.manifest(key)
    if doc is None:
        raise EntryNotFoundError(f"node {node!r} of workflow {wf!r}: the manifest of key {key} is {inv.problem(key)}")
    if key not in history and key != current.get(node) and doc.get("node") != node:
        raise EntryNotFoundError(
            f"key {key} is a result of node {doc.get('node')!r} (workflow {doc.get('workflow')!r}), not a version of "
            f"node {node!r}; its versions: {', '.join(k[:12] for k in history) or 'none'}"
        )
    inputs = [{"node": n, "key": k, "current": current.get(n) == k} for n, k in sorted((doc.get("inputs") or {}).items())]
    parts = [{"format": p.get("format"), "bytes": p.get("size"), "codec": p.get("codec"), "object": p.get("object"),
              "info": p.get("info")} for p in doc.get("parts", ())]
    out = {
        "workflow": wf, "node": node, "key": key, "current": current.get(node) == key,
        "meta": {k: doc.get(k) for k in ("function", "fingerprint", "arguments", "created", "host", "duration_s",
                                          "versions", "code") if k in doc},
        "bytes": inv.stored_bytes(key), "parts": parts, "inputs": inputs,
        "consumers": [{"node": n, "key": k} for n, k in inv.consumers(wf, key)],
        "history": [{"key": k, "runs": len(r), "first_run": r[0], "last_run": r[-1],
                     "stored": inv.manifest(k) is not None, "current": current.get(node) == k}
                    for k, r in history.items()],
    }
    lines = [f"{wf} / {node}", f"  key        {key}{'  (current)' if out['current'] else ''}"]
    meta = out["meta"]
    lines += [f"  function   {meta.get('function', '-')}", (f"  created    {meta.get('created', '-')} "
              f"({render.age(meta.get('created'))}) on {meta.get('host', '-')}"),
              f"  computed   in {render.duration(meta.get('duration_s'))}",
              f"  size       {render.size(out['bytes'])}"]
    args_summary = meta.get("arguments") or {}
    if args_summary:
        lines.append("  arguments")
        lines += [f"    {k} = {json.dumps(v, default=str)}" for k, v in args_summary.items()]
    lines.append("  parts" if parts else "  parts      none (the result is held in its manifest)")
    lines += [f"    {i}: {p['format']}  {render.size(p['bytes'])}{'  ' + p['codec'] if p['codec'] else ''}"
              for i, p in enumerate(parts)]
    if inputs:
        lines.append("  inputs")
        lines += [f"    {i['node']}  {i['key'][:12]}{'' if i['current'] else '  (not its current version)'}"
                  for i in inputs]
    if out["consumers"]:
        lines.append("  consumed by")
        lines += [f"    {c['node']}" for c in out["consumers"]]
    if out["history"]:
        lines.append("  versions")
        lines += [render.table([(h["key"][:12], h["runs"], h["first_run"], h["last_run"],
                                 "yes" if h["stored"] else "no") for h in out["history"]],
                               ("KEY", "RUNS", "FIRST RUN", "LAST RUN", "STORED"), right=(1,)).replace("\n", "\n    ")]
        lines[-1] = "    " + lines[-1]
    return out, "\n".join(lines)


def cmd_runs(args: argparse.Namespace) -> tuple[dict, str]:
    _, inv = _open(args)
    rows = []
    for run in inv.runs(args.workflow):
        if not run.ok:
            rows.append({"run": run.run_id, "damaged": run.problem})
            continue
        rec = run.record
        counts: dict[str, int] = {}
        for entry in rec.get("nodes", {}).values():
            if isinstance(entry, dict):
                counts[str(entry.get("action"))] = counts.get(str(entry.get("action")), 0) + 1
        start, end = render.timestamp(rec.get("started")), render.timestamp(rec.get("finished"))
        rows.append({
            "run": run.run_id, "started": rec.get("started"), "finished": rec.get("finished"),
            "seconds": round(end - start, 3) if start is not None and end is not None else None,
            "host": rec.get("host"), "executor": rec.get("executor"), "outcome": rec.get("outcome"),
            "computed": counts.get("computed", 0), "read": counts.get("read", 0),
            "skipped": counts.get("skipped", 0), "failed": counts.get("failed", 0), "actions": counts,
        })
    text = render.table(
        [(r["run"], "damaged: " + r["damaged"][:60], "", "", "", "", "", "", "") if "damaged" in r else
         (r["run"], render.age(r["finished"]), r["host"], r["executor"], r["outcome"], r["computed"], r["read"],
          r["skipped"], r["failed"], render.duration(r["seconds"])) for r in rows],
        ("RUN", "WHEN", "HOST", "EXECUTOR", "OUTCOME", "COMPUTED", "READ", "SKIPPED", "FAILED", "DURATION"),
        right=(5, 6, 7, 8, 9),
    )
    return {"workflow": args.workflow, "runs": rows}, text


def cmd_du(args: argparse.Namespace) -> tuple[dict, str]:
    _, inv = _open(args)
    users: dict[str, set[tuple[str, str]]] = {}  # object or manifest -> {(workflow, node)}
    sizes: dict[str, int] = {}
    for wf in inv.workflows():
        for name, key in inv.current(wf).items():
            sizes["m:" + key] = inv.manifest_bytes(key)
            users.setdefault("m:" + key, set()).add((wf, name))
            for h, n in inv.objects_of(key).items():
                sizes["o:" + h] = n
                users.setdefault("o:" + h, set()).add((wf, name))
    objects = inv.all_objects()
    for item in [i for i in sizes if i.startswith("o:") and i[2:] not in objects]:
        sizes[item] = 0  # a missing object (verify reports it) takes no space
    total = sum(objects.values()) + sum(inv.manifest_bytes(k) for k in inv.all_keys())
    for wf in inv.workflows():  # the small-results objects latest records name are in use too
        ref = (inv.latest(wf) or {}).get("values")
        if isinstance(ref, dict) and ref.get("object") in objects:
            sizes.setdefault("v:" + ref["object"], objects[ref["object"]])
    used = sum(sizes.values())

    def tally(owner_of: Callable[[tuple[str, str]], str]) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for item, who in users.items():
            owners = {owner_of(w) for w in who}
            for owner in owners:
                row = out.setdefault(owner, {"bytes": 0, "unique_bytes": 0, "shared_bytes": 0})
                row["bytes"] += sizes[item]
                row["unique_bytes" if len(owners) == 1 else "shared_bytes"] += sizes[item]
        return out

    side = {wf: inv.side_bytes(wf) for wf in inv.workflows()}  # per workflow, never shared
    total += sum(side.values())
    used += sum(side.values())
    doc: dict[str, Any] = {"store": inv.url, "total_bytes": total, "current_bytes": used,
                           "unreferenced_bytes": max(0, total - used)}
    if args.workflow is None:
        per = tally(lambda w: w[0])
        doc["workflows"] = []
        for wf in inv.workflows():
            row = {"workflow": wf, **per.get(wf, {"bytes": 0, "unique_bytes": 0, "shared_bytes": 0})}
            row["side_bytes"] = side[wf]
            row["bytes"] += side[wf]
            row["unique_bytes"] += side[wf]
            doc["workflows"].append(row)
        rows = [(r["workflow"], render.size(r["bytes"]), render.size(r["unique_bytes"]), render.size(r["shared_bytes"]))
                for r in doc["workflows"]]
        head = ("WORKFLOW", "SIZE", "UNIQUE", "SHARED")
    else:
        inv.require(args.workflow)
        per = tally(lambda w: f"{w[0]}\0{w[1]}")
        doc["workflow"] = args.workflow
        doc["side_bytes"] = side[args.workflow]  # side data is counted by workflow, not by node
        doc["nodes"] = [{"node": n, **per[f"{args.workflow}\0{n}"]} for n in sorted(inv.current(args.workflow))]
        rows = [(r["node"], render.size(r["bytes"]), render.size(r["unique_bytes"]), render.size(r["shared_bytes"]))
                for r in doc["nodes"]]
        head = ("NODE", "SIZE", "UNIQUE", "SHARED")
    if args.workflow is not None and side[args.workflow]:
        rows.append(("(side data)", render.size(side[args.workflow]), render.size(side[args.workflow]), render.size(0)))
    text = render.table(rows, head, right=(1, 2, 3)) + (
        f"\n\nstore {render.size(total)} in all: {render.size(used)} used by current states, "
        f"{render.size(doc['unreferenced_bytes'])} only by older runs or nothing (see `functionfuse gc`)")
    return doc, text


def cmd_rm(args: argparse.Namespace) -> tuple[dict, str]:
    storage, inv = _open(args)
    inv.require(args.workflow)
    if args.node is not None and args.pattern is not None:
        raise UsageError("give a NODE or --pattern, not both")
    if args.node is None and args.pattern is None:
        removed = sorted(inv.current(args.workflow))
        storage.remove_workflow(args.workflow)
        return {"workflow": args.workflow, "removed": removed, "whole_workflow": True}, (
            f"removed workflow {args.workflow!r} ({len(removed)} nodes)")
    removed = storage.remove_task(args.workflow, args.node, pattern=args.pattern)
    text = f"removed {len(removed)} node(s) of {args.workflow!r}: {', '.join(removed)}" if removed else (
        f"no node of {args.workflow!r} matches {args.pattern!r}")
    return {"workflow": args.workflow, "removed": removed, "whole_workflow": False}, text


def cmd_gc(args: argparse.Namespace) -> tuple[dict, str]:
    from ..storage.gc import GcPolicy, collect

    try:
        policy = GcPolicy(
            keep_runs=args.keep_runs,
            older_than_s=render.parse_age(args.older_than) if args.older_than else None,
            max_size=render.parse_size(args.max_size) if args.max_size else None,
            grace_s=render.parse_age(args.grace),
            lease_s=render.parse_age(args.lease_timeout),
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    storage, inv = _open(args)
    report = collect(inv, policy, dry_run=args.dry_run, persistence=storage._persistence("gc"))
    doc = report.to_json()
    verb = "would remove" if args.dry_run else "removed"
    lines = [f"{verb} {len(report.records)} run record(s), {len(report.manifests)} result(s), "
             f"{len(report.objects)} object(s): {render.size(report.bytes_freed)}"
             + (f", {report.temporaries} temporaries" if not args.dry_run else ""),
             f"store {render.size(report.size_before)} -> {render.size(report.size_after)}"]
    if report.leases:
        lines.append(f"kept what {report.leases} run(s) in progress use (their leases)")
    if report.stale_leases:
        lines.append(f"{'would remove' if args.dry_run else 'removed'} {len(report.stale_leases)} lease(s) of crashed runs")
    if report.node_leases:
        lines.append(f"{'would remove' if args.dry_run else 'removed'} {len(report.node_leases)} node lease(s) "
                     "of killed runs")
    if report.overwrite_notes:
        lines.append(f"{'would remove' if args.dry_run else 'removed'} {len(report.overwrite_notes)} overwrite "
                     "note(s) of results no longer stored")
    if report.packs:
        lines.append(f"{'would rewrite' if args.dry_run else 'rewrote'} {len(report.packs)} pack(s) holding lines "
                     "cut or damaged by killed writers")
    if report.side_data:
        lines.append(f"{'would remove' if args.dry_run else 'removed'} {len(report.side_data)} side data "
                     "entr(ies) no result names (left by crashed writers)")
    if report.kept_young:
        lines.append(f"kept {report.kept_young} unreferenced item(s) younger than the grace period ({args.grace})")
    if report.over_max_size:
        lines.append("the store stays above --max-size: what the latest runs need is never removed")
    if args.dry_run:
        lines += [f"  record   {p}" for p in report.records] + [f"  result   {k}" for k in report.manifests]
    return doc, "\n".join(lines)


def cmd_verify(args: argparse.Namespace) -> tuple[dict, str]:
    _, inv = _open(args)
    if args.workflow is not None:
        inv.require(args.workflow)
    counts, damage = inv.verify(args.workflow)
    doc: dict[str, Any] = {"checked": counts, "damaged": [d.to_json() for d in damage]}
    summary = (f"checked {counts['records']} run record(s), {counts['manifests']} manifest(s), "
               f"{counts['objects']} object(s)")
    if damage:
        doc["_ok"] = False
        doc["error"] = f"{len(damage)} damaged item(s) in {inv.url}"
        rows = [(d.workflow or "-", d.node or "-", d.what, d.path, d.problem[:100]) for d in damage]
        return doc, summary + f": {len(damage)} DAMAGED\n" + render.table(
            rows, ("WORKFLOW", "NODE", "WHAT", "FILE", "PROBLEM")) + (
            "\nthe next run recomputes damaged results; `functionfuse gc` removes what no run reaches")
    return doc, summary + ": no damage"


def cmd_export(args: argparse.Namespace) -> tuple[dict, str]:
    from ..storage.export import export_result

    storage, inv = _open(args)
    inv.require(args.workflow)
    key = inv.current(args.workflow).get(args.node)
    if key is None:
        raise EntryNotFoundError(f"workflow {args.workflow!r} has no stored node {args.node!r}")
    doc = inv.manifest(key)
    if doc is None:
        raise EntryNotFoundError(f"node {args.node!r}: the manifest of key {key} is {inv.problem(key)}")
    try:
        out = export_result(storage.results, doc, args.dest, node=args.node)
    except (CorruptEntryError, StorageError) as exc:
        raise type(exc)(f"node {args.node!r} of workflow {args.workflow!r} not exported: {exc}") from exc
    text = "\n".join(f"wrote {p}" for p in out["written"])
    if out["pickled"]:
        text += "\nnote: a part is a pickle (.pkl); loading it runs code, do so only if you trust this store"
    return {"workflow": args.workflow, "node": args.node, "key": key, **out}, text


def cmd_draw(args: argparse.Namespace) -> tuple[dict, str]:
    from ..drawing import RENDERED_FORMATS, TEXT_FORMATS, save_dot

    _, inv = _open(args)
    inv.require(args.workflow)
    if args.output and os.path.splitext(args.output)[1].lower() not in (*TEXT_FORMATS, *RENDERED_FORMATS):
        raise UsageError(f"-o {args.output}: give a .gv, .dot, .svg, .png or .pdf file")
    dot = lineage_dot(inv, args.workflow)
    if args.output:
        save_dot(dot, args.output)
        return {"workflow": args.workflow, "written": args.output}, f"wrote {args.output}"
    return {"workflow": args.workflow, "dot": dot}, dot.rstrip("\n")


#: Fill colour by what the latest run did with a node.
LINEAGE_COLOURS = {"computed": "#fdd49e", "read": "#c7e9c0", "skipped": "#e5f5e0", "failed": "#fc9272",
                   "carried": "#f0f0f0"}


def lineage_dot(inv: Any, workflow: str) -> str:
    """The stored lineage of ``workflow``'s current state as Graphviz DOT.

    Nodes are coloured by what its latest run did (computed, read, skipped,
    failed, carried over) and labelled with the function and size; an input
    whose key is not the current version of its node is drawn dashed.  Names
    are escaped as :mod:`functionfuse.drawing` escapes them.
    """
    from ..drawing import _attrs, _quote

    latest = inv.latest(workflow)
    current = inv.current(workflow)
    lines = [f"digraph {_quote(workflow)} {{", "  rankdir=LR;", '  node [shape=box, style="rounded,filled"];']
    edges = []
    for name, key, doc in inv.iter_current(workflow):
        action, _ = _status(latest, name)
        stored = render.size(inv.stored_bytes(key)) if doc else "missing"
        label = f"{name}\n{(doc or {}).get('function', '?')} · {stored}"
        attrs = [("label", label), ("fillcolor", LINEAGE_COLOURS.get(action, "#ffffff")),
                 ("tooltip", f"{action} {key[:12]}")]
        lines.append(f"  {_quote(name)} [{_attrs(attrs)}];")
        for parent, pkey in sorted(((doc or {}).get("inputs") or {}).items()):
            if parent not in current:
                lines.append(f"  {_quote(parent)} [{_attrs([('fillcolor', '#ffffff'), ('style', 'rounded,dashed')])}];")
            edges.append(f"  {_quote(parent)} -> {_quote(name)}" + ("" if current.get(parent) == pkey else " [style=dashed]")
                         + ";")
    lines += edges
    lines.append("}")
    return "\n".join(lines) + "\n"


COMMANDS: dict[str, Callable[[argparse.Namespace], tuple[dict, str]]] = {
    "ls": cmd_ls, "show": cmd_show, "runs": cmd_runs, "du": cmd_du, "rm": cmd_rm, "gc": cmd_gc,
    "verify": cmd_verify, "export": cmd_export, "draw": cmd_draw,
}
