"""MkDocs hook: a line ``<!-- options: NAME -->`` in a page becomes the option reference of ``NAME``.

``NAME`` is a plugin (``memory``, ``redis``...) or a core table (``top-level``, ``endpoints``, ``tenant``,
``redis_connection``, ``pricing``, ``report``); the table is read from the option classes themselves by
:mod:`aurelis_core.tools.options_reference` (``aurelis config options NAME`` prints the same). A name that is
neither fails the build, naming the valid ones.
"""

from __future__ import annotations

from typing import Any

from mkdocs.exceptions import PluginError

from aurelis_core import ConfigError
from aurelis_core.tools.options_reference import UnknownOptions, expand_markers


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    try:
        return expand_markers(markdown)
    except (UnknownOptions, ConfigError) as exc:  # ConfigError: a plugin whose extra is not installed
        raise PluginError(f"{page.file.src_path}: {exc}") from exc
