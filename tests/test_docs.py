"""Every Python example in README.md and docs/*.md runs, and prints what the page says.

The Python blocks of a page run top to bottom as one script in a scratch
folder; a ```text block right after a Python block is that block's expected
output (a line "..." matches any lines; "..." inside a line matches any text).
"""

import glob
import os
import re

import pytest
from helpers import ROOT, lines_match, run_script

FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```\s*$", re.S | re.M)
MARK = "@@BLOCK@@"
PAGES = [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]


def _matches(expected: str, actual: str) -> bool:
    return lines_match([line.rstrip() for line in expected.strip("\n").splitlines()],
                       [line.rstrip() for line in actual.strip("\n").splitlines()])


@pytest.mark.parametrize("page", PAGES, ids=os.path.basename)
def test_page_examples_run(page, tmp_path):
    with open(page) as fh:
        blocks = [(m.group(1), m.group(2)) for m in FENCE.finditer(fh.read())]
    code, expected = [], {}
    for i, (lang, body) in enumerate(blocks):
        if lang == "python":
            code.append(body)
        elif lang == "text" and i and blocks[i - 1][0] == "python":
            expected[len(code) - 1] = body
    if not code:
        return
    script = tmp_path / "page.py"
    script.write_text("".join(f"print({MARK!r}, flush=True)\n{body}\n" for body in code))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        proc = run_script(script, check=False)
    finally:
        os.chdir(cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outputs = proc.stdout.split(MARK + "\n")[1:]
    for i, want in expected.items():
        got = outputs[i] if i < len(outputs) else "<missing>"
        assert _matches(want, got), f"block {i} of {page}:\n--- expected\n{want}--- got\n{got}"
