"""MkDocs hook: the Sphinx cross-reference roles of the docstrings read as code, not as ``:class:`` text.

The docstrings are written for ``help()`` and for Sphinx-aware readers (``:class:`~aurelis_core.report.Targets```);
mkdocstrings renders the role's name as text in front of the code span. This drops the role's name and, as
Sphinx does, shows a ``~``-prefixed target by its last component only (``Targets``).
"""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj|const|ref):<code>(~?)([^<]*)</code>")


def _reference(match: re.Match[str]) -> str:
    short, target = match.groups()
    return f"<code>{target.rsplit('.', 1)[-1] if short else target}</code>"


def strip_roles(html: str) -> str:
    """``html`` with every ``:role:<code>target</code>`` written ``<code>target</code>``."""
    return _ROLE.sub(_reference, html)


def on_page_content(html: str, page: Any, **_: Any) -> str:
    return strip_roles(html)
