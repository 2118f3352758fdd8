"""The documentation site builds, and its tutorial and command-line examples still run.

* ``mkdocs build --strict`` (the configuration in ``mkdocs.yml``) succeeds: a broken
  link or anchor, a page missing from the nav, an image that does not exist or an
  API object mkdocstrings cannot find fails this test.  The key pages and the API
  reference (rendered from the docstrings) are in the output.
* The tutorial's Python blocks run top to bottom as one script in a scratch folder,
  and print what the page says (a ```text block after a Python block is its
  output, with the "..." wildcards of tests/test_docs.py).  Then the page's
  ```console blocks run against the store the script left: each ``$ command``
  must succeed and print what follows it, once the values that change from run to
  run (sizes, ages, durations, keys, run ids, times, the host name) are masked.
* The same for the getting-started page, whose console blocks show the
  ``functionfuse`` command on the store its example writes.
"""

from __future__ import annotations

import html
import inspect
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, lines_match, page_blocks, run_page_python

DOCS = Path(ROOT) / "docs"

# Pages every build must produce (source file -> nav entry that must exist).
KEY_PAGES = [
    "index.md",
    "getting-started.md",
    "concepts.md",
    "tutorial-sweep.md",
    "dask.md",
    "ray.md",
    "s3.md",
    "cli.md",
    "format.md",
    "serializers.md",
    "migrating.md",
    "frontend.md",
    "backends.md",
    "caching.md",
    "storage.md",
    "api/index.md",
    "api/workflow.md",
    "api/backends.md",
    "api/caching.md",
    "api/storage.md",
    "api/serializers.md",
    "api/errors.md",
    "api/drawing.md",
    "api/cli.md",
]


def _html_path(site: Path, page: str) -> Path:
    """Where mkdocs (``use_directory_urls``) writes the HTML of a Markdown page."""
    stem = page[: -len(".md")]
    if stem == "index" or stem.endswith("/index"):
        return site / stem[: -len("index")] / "index.html"
    return site / stem / "index.html"


def _text_of(path: Path) -> str:
    """The visible text of an HTML page, whitespace collapsed (for docstring checks)."""
    text = re.sub(r"<[^>]+>", " ", path.read_text(encoding="utf-8"))
    return " ".join(html.unescape(text).split())


def _first_paragraph(obj) -> str:
    doc = inspect.getdoc(obj) or ""
    return " ".join(doc.split("\n\n")[0].split())


# -- the build ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Build the site once for this module, with --strict, into a scratch folder.

    mkdocs writes every page before it aborts on warnings, so the checks of the
    output below run whatever the outcome; only the first test fails on a warning.
    """
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")  # mkdocs-material's banner is not a warning
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "-f",
            os.path.join(ROOT, "mkdocs.yml"),
            "-d",
            str(out),
        ],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    return proc, out


def test_strict_build_succeeds(site):
    proc, _ = site
    problems = [line for line in proc.stderr.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert proc.returncode == 0, "mkdocs build --strict failed:\n" + (
        "\n".join(problems) or proc.stderr[-5000:]
    )
    assert not problems, "\n".join(problems)


def test_key_pages_are_built(site):
    _, out = site
    missing_sources = [page for page in KEY_PAGES if not (DOCS / page).is_file()]
    assert not missing_sources, f"missing pages under docs/: {missing_sources}"
    nav = (Path(ROOT) / "mkdocs.yml").read_text(encoding="utf-8")
    not_in_nav = [page for page in KEY_PAGES if page not in nav]
    assert not not_in_nav, f"pages missing from the nav of mkdocs.yml: {not_in_nav}"
    not_built = [page for page in KEY_PAGES if not _html_path(out, page).is_file()]
    assert not not_built, f"pages not built: {not_built}"


def test_api_reference_renders_docstrings(site):
    from functionfuse import compute, errors, storage_factory, workflow
    from functionfuse.backends.builtin.localback import LocalWorkflow
    from functionfuse.cli import main

    _, out = site
    expected = {
        "api/workflow.md": [workflow],
        "api/backends.md": [LocalWorkflow, LocalWorkflow.run],
        "api/storage.md": [storage_factory],
        "api/caching.md": [compute],
        "api/errors.md": [errors.NodeExecutionError, errors.StorageError],
        "api/cli.md": [main],
    }
    for page, objects in expected.items():
        built = _html_path(out, page)
        assert built.is_file(), f"{page} was not built"
        text = _text_of(built)
        for obj in objects:
            summary = _first_paragraph(obj)
            assert summary and summary.split("``")[0] in text, f"{page} lacks the docstring of {obj!r}"
    for page in KEY_PAGES:
        if page.startswith("api/"):
            raw = _html_path(out, page).read_text(encoding="utf-8")
            assert "::: functionfuse" not in raw, f"{page}: an API directive was not rendered"
            assert not re.search(r":(class|func|meth|mod|attr|exc):<code>", raw), (
                f"{page}: a Sphinx role leaked"
            )


def test_drawings_are_shipped(site):
    _, out = site
    drawings = sorted(p.name for p in (DOCS / "img").glob("*.svg"))
    assert drawings, "docs/img has no drawings"
    used = "".join(p.read_text(encoding="utf-8") for p in DOCS.rglob("*.md"))
    for name in drawings:
        assert f"img/{name}" in used, f"docs/img/{name} is not shown on any page"
        assert (out / "img" / name).is_file()


# -- the examples of the tutorial and of getting started -------------------------------


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.strip("\n").splitlines()]


def _hosts() -> list[str]:
    raw = socket.gethostname() or "host"
    return sorted({raw, re.sub(r"[^A-Za-z0-9.-]", "-", raw)[:40]}, key=len, reverse=True)


# What changes from one run of a command to the next, masked before comparing.
_VARIABLE = [
    (re.compile(r"\d{8}T\d{6}\.\d{6}Z-\S+?-\d+-[0-9a-f]{4,}"), "<run>"),
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(\+00:00|Z)?"), "<time>"),
    (re.compile(r"\b[0-9a-f]{12,64}\b"), "<hex>"),
    (re.compile(r"\b\d+(\.\d+)? (B|KiB|MiB|GiB|TiB)\b"), "<size>"),
    (re.compile(r"\b\d+ (s|min|h|d) ago\b"), "<age>"),
    (re.compile(r"\b\d+(\.\d+)? (µs|ms|s|min)\b"), "<duration>"),
]


def _mask(text: str, hosts: list[str]) -> list[str]:
    out = []
    for line in _lines(text):
        for host in hosts:
            line = re.sub(rf"(?<![\w.-]){re.escape(host)}(?![\w.])", "<host>", line)
        for pattern, placeholder in _VARIABLE:
            line = pattern.sub(placeholder, line)
        out.append(" ".join(line.split()))
    return out


def _run_console_blocks(page: Path, cwd: Path) -> int:
    """Run every ``$ functionfuse ...`` line of the page's console blocks in ``cwd``."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("FUNCTIONFUSE_STORE", None)
    ran = 0
    for lang, body in page_blocks(page):
        if lang != "console":
            continue
        commands = re.split(r"^\$ ", body, flags=re.MULTILINE)[1:]
        for chunk in commands:
            command, _, shown = chunk.partition("\n")
            argv = shlex.split(command)
            assert argv[0] == "functionfuse", f"{page.name}: only functionfuse commands run here: {command}"
            proc = subprocess.run(
                [sys.executable, "-m", "functionfuse", *argv[1:]],
                check=False,
                cwd=cwd,
                capture_output=True,
                text=True,
                env=env,
                timeout=120,
            )
            assert proc.returncode == 0, f"{page.name}: `{command}` failed:\n{proc.stdout}{proc.stderr}"
            # The page uses "laptop" as the host name; this machine has its own.
            want, got = _mask(shown, ["laptop"]), _mask(proc.stdout, _hosts())
            assert lines_match(want, got), (
                f"{page.name}: `{command}`\n--- expected (masked)\n"
                + "\n".join(want)
                + "\n--- got (masked)\n"
                + "\n".join(got)
            )
            ran += 1
    return ran


def test_tutorial_runs(tmp_path):
    page = DOCS / "tutorial-sweep.md"
    assert run_page_python(page, tmp_path)
    _run_console_blocks(page, tmp_path)


def test_getting_started_runs(tmp_path):
    page = DOCS / "getting-started.md"
    assert run_page_python(page, tmp_path)
    assert _run_console_blocks(page, tmp_path) >= 3
