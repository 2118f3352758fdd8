"""Every Python example in README.md and docs/*.md runs, and prints what the page says.

The Python blocks of a page run top to bottom as one script in a scratch
folder; a ```text block right after a Python block is that block's expected
output (a line "..." matches any lines; "..." inside a line matches any text).
The pages whose examples also drive the command line (the tutorial and getting
started) are run by tests/test_docs_site.py, which checks both, once.
"""

import glob
import os

import pytest
from helpers import ROOT, run_page_python

#: Run (Python blocks and console blocks) by tests/test_docs_site.py.
WITH_CONSOLE = {"tutorial-sweep.md", "getting-started.md"}
PAGES = [
    os.path.join(ROOT, "README.md"),
    *sorted(
        p for p in glob.glob(os.path.join(ROOT, "docs", "*.md")) if os.path.basename(p) not in WITH_CONSOLE
    ),
]


@pytest.mark.parametrize("page", PAGES, ids=os.path.basename)
def test_page_examples_run(page, tmp_path):
    run_page_python(page, tmp_path)
