"""The ``functionfuse`` command line: list, inspect, measure, verify, export, draw
and prune what runs left in a store (docs/cli.md).

``main(argv)`` returns the exit status: 0 success, 1 an error or damage found,
2 bad usage.  With ``--json`` exactly one JSON document is printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from ..errors import FunctionFuseError

__all__ = ["build_parser", "main"]

logger = logging.getLogger(__name__)

STORE_ENV = "FUNCTIONFUSE_STORE"


class UsageError(Exception):
    """Bad command-line usage (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse prints and exits; we report it our way
        raise UsageError(f"{self.prog}: {message}")


#: Storage options whose values are always strings (credentials, names, addresses).
_STRING_OPTIONS = frozenset({
    "key", "secret", "token", "profile", "endpoint_url", "region_name", "username", "password",
    "aws_access_key_id", "aws_secret_access_key", "aws_session_token", "bucket", "version_id",
})


def _option_value(name: str, text: str) -> Any:
    """``true``/``false`` and numbers written plainly become bool/int/float, except for
    options that are strings (a key ``0123`` keeps its zero)."""
    if name in _STRING_OPTIONS:
        return text
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            value = kind(text)
        except ValueError:
            continue
        return value if str(value) == text else text  # "007" or "1e3" stay as written
    return text


def storage_options(pairs: Sequence[str]) -> dict:
    """``KEY=VALUE`` pairs as s3fs keyword arguments; dots nest (``config_kwargs.retries.max_attempts=3``)."""
    out: dict = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        path = key.split(".")
        if not sep or not all(path):
            raise UsageError(f"--storage-option takes KEY=VALUE (KEY may be dotted: a.b.c), got {pair!r}")
        node = out
        for part in path[:-1]:
            nested = node.setdefault(part, {})
            if not isinstance(nested, dict):
                raise UsageError(f"--storage-option {pair!r}: {part!r} was given a value, it cannot also hold options")
            node = nested
        node[path[-1]] = _option_value(path[-1], value)
    return out


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the command line (its help is the reference)."""
    def common_options(p: argparse.ArgumentParser, top: bool) -> None:
        # Accepted before and after the command; below it they default to SUPPRESS
        # so a subcommand does not reset what was given before it.
        keep = {} if top else {"default": argparse.SUPPRESS}
        p.add_argument("--store", help=f"the store: a folder, file://... or s3://bucket/prefix (default: ${STORE_ENV})",
                       **keep)
        p.add_argument("--storage-option", action="append", metavar="KEY=VALUE",
                       help="an s3fs option, repeatable (endpoint_url=..., key=..., client_kwargs.region_name=...)",
                       **({"default": []} if top else keep))
        p.add_argument("--json", action="store_true", help="print exactly one JSON document", **keep)

    common = _Parser(add_help=False)
    common_options(common, top=False)
    parser = _Parser(prog="functionfuse", description="Inspect and operate a functionfuse result store (see docs/cli.md).")
    common_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def add(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, parents=[common])

    p = add("ls", "list workflows, or the nodes of one workflow")
    p.add_argument("workflow", nargs="?")
    p = add("show", "one stored result: metadata, formats, lineage, versions")
    p.add_argument("workflow")
    p.add_argument("node")
    p.add_argument("--key", help="a version other than the current one")
    p = add("runs", "the run history of a workflow")
    p.add_argument("workflow")
    p = add("du", "bytes by workflow (by node for one workflow), shared vs unique")
    p.add_argument("workflow", nargs="?")
    p = add("rm", "remove a workflow, a node, or the nodes matching a pattern")
    p.add_argument("workflow")
    p.add_argument("node", nargs="?")
    p.add_argument("--pattern", help="a glob over node names, e.g. 'train_*'")
    p = add("gc", "remove what no kept run reaches, and crash debris")
    p.add_argument("--keep-runs", type=int, default=10, help="records kept per workflow (default 10; the latest always)")
    p.add_argument("--older-than", help="drop records older than this (30d, 12h, ...), except each latest")
    p.add_argument("--max-size", help="drop oldest records until the store fits (10GB, 500MiB ...)")
    p.add_argument("--grace", default="1h", help="never delete what is younger than this (default 1h)")
    p.add_argument("--lease-timeout", default="24h",
                   help="a run lease older than this is a crashed run's, not a running one (default 24h)")
    p.add_argument("--dry-run", action="store_true", help="print what would go; delete nothing")
    p = add("verify", "check every checksum; exit status 1 when anything is damaged")
    p.add_argument("workflow", nargs="?")
    p = add("export", "write a result as plain files of its formats")
    p.add_argument("workflow")
    p.add_argument("node")
    p.add_argument("dest")
    p = add("draw", "the stored lineage as Graphviz DOT (stdout) or rendered with -o")
    p.add_argument("workflow")
    p.add_argument("-o", "--output", help="write FILE (.gv/.dot as text; .svg/.png/.pdf need Graphviz's dot)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in argv
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        return _fail(str(exc), as_json, status=2)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    logging.basicConfig(level=logging.WARNING, format="functionfuse: %(message)s")
    from .commands import COMMANDS

    try:
        doc, text = COMMANDS[args.command](args)
    except UsageError as exc:
        return _fail(str(exc), args.json, status=2)
    except (FunctionFuseError, ValueError, OSError) as exc:
        return _fail(_message(exc), args.json)
    except Exception as exc:  # a bug: still one JSON document, with the traceback on stderr
        if not args.json:
            raise
        logger.exception("functionfuse %s failed", args.command)
        return _fail(f"internal error: {type(exc).__name__}: {exc}", True)
    ok = doc.pop("_ok", True)
    try:
        if args.json:
            print(json.dumps({"ok": ok, "command": args.command, **doc}, default=str))
        elif text:
            print(text)
        sys.stdout.flush()
    except BrokenPipeError:  # `functionfuse ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0 if ok else 1


def _message(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError) and not isinstance(exc, FunctionFuseError) and exc.filename:
        return f"{exc.strerror}: {exc.filename}"
    return str(exc) or type(exc).__name__


def _fail(message: str, as_json: bool, status: int = 1) -> int:
    if as_json:
        print(json.dumps({"ok": False, "error": message}))
    else:
        print(f"functionfuse: error: {message}", file=sys.stderr)
    return status
