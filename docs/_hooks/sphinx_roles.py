"""mkdocs hook: render the Sphinx roles of docstrings as (cross-referenced) code.

The docstrings of functionfuse are numpydoc, and some of them name objects with
Sphinx roles (``:class:`~functionfuse.graph.FunctionNode```).  mkdocstrings
renders Markdown, where such a role comes out as the role's text followed by a
code span.  This hook turns each into a code span (the last component when the
target starts with ``~``, as Sphinx shows it) wrapped in an *optional* autorefs
reference: mkdocs-autorefs links it when the API reference documents that
object, and leaves plain code, without a warning, when it does not.
"""

from __future__ import annotations

import html
import re

_ROLE = re.compile(
    r":(?:py:)?(?:class|func|meth|mod|attr|exc|data|obj|const|ref):<code>(?P<tilde>~?)(?P<target>[^<]+)</code>"
)


def _replace(match: re.Match) -> str:
    target = html.unescape(match["target"]).strip()
    identifier = target.rstrip("()").lstrip(".")
    shown = identifier.rsplit(".", 1)[-1] if match["tilde"] else identifier
    if target.endswith("()"):
        shown += "()"
    return (
        f'<autoref identifier="{html.escape(identifier, quote=True)}" optional>'
        f"<code>{html.escape(shown)}</code></autoref>"
    )


def on_page_content(html_text: str, **kwargs) -> str:
    """Replace every role in the page's HTML (mkdocs calls this for every page)."""
    return _ROLE.sub(_replace, html_text)
