"""The option reference, read from the option classes themselves: name, type, default and doc comment.

Every plugin's ``Config`` and every core table (``[[endpoints]]``, ``[tenant]``, ``[redis_connection]``,
``[pricing]``, ``[report]``, the top-level keys) is an attrs class whose fields carry a ``#:`` comment on the
lines above them, the convention Sphinx's autodoc reads. This module reads them the same way, from the source
(:mod:`ast`, no Sphinx), so the reference the documentation shows cannot drift from the options a config is
checked against: a new option shows up, a renamed one is gone, and a test fails when one has no comment.

- :func:`options(name) <options>`: the rows of one table (:class:`Option`), nested tables flattened
  (``warm.on_start``);
- :func:`markdown_table` and :func:`text_table`: those rows for a page or a terminal;
- :func:`expand_markers`: every ``<!-- options: NAME -->`` of a Markdown page replaced by its table (the MkDocs
  hook ``docs/hooks/options.py`` calls it; ``aurelis config options NAME`` prints the same).

Defaults are spelled as TOML would (``true``, ``["a", "b"]``, ``{}``), ``None`` meaning the key is left out. The
default of a secret (a field with ``repr=False``: a password, a key) is never shown, not even one a factory
reads from the environment.
"""

from __future__ import annotations

import ast
import enum
import inspect
import json
import math
import os
import re
import textwrap
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

import attrs

import aurelis_core
from aurelis_core.config import RESERVED_KEYS
from aurelis_core.plugin import ModelPrice, RedisConnection, TenantConfig, choices_hint, discover_plugins

__all__ = [
    "CORE_TABLES",
    "Option",
    "UnknownOptions",
    "expand_markers",
    "markdown_table",
    "option_classes",
    "options",
    "table_names",
    "text_table",
]

#: The marker a documentation page puts where a table's reference goes: ``<!-- options: memory -->``, alone on
#: its line (one quoted inside a sentence is left as it is).
MARKER = re.compile(r"^<!--\s*options:\s*([\w.-]+)\s*-->[ \t]*$", re.MULTILINE)

#: The name that stands for the top-level keys of a config (no plugin can take it: it is not a label).
TOP_LEVEL = "top-level"

#: The core tables, by the name a marker gives them, with how a config spells them.
CORE_TABLES: dict[str, str] = {
    TOP_LEVEL: "the top-level keys of aurelis.toml",
    "endpoints": "[[endpoints]]: one table per upstream",
    "tenant": "[tenant]",
    "redis_connection": "[redis_connection]",
    "pricing": '[pricing]: one table per model name or glob, e.g. [pricing."gpt-4o*"]',
    "report": "[report]",
}

#: The default of a secret, never shown.
HIDDEN = "(hidden)"
#: The default of a key that has none: the table must give it.
REQUIRED = "(required)"


class UnknownOptions(LookupError):
    """No plugin or core table of that name; the message lists the valid names."""


@attrs.frozen
class Option:
    """One row of the reference. ``type`` and ``default`` are already spelled for a reader."""

    #: The key as a config writes it (``warm.on_start`` for a nested table's).
    name: str
    #: The annotation, readable: ``int | None``, ``tuple[str, ...]``, ``"lru" | "lfu"``, ``table``.
    type: str
    #: As TOML spells it; :data:`HIDDEN` for a secret, :data:`REQUIRED` for a key without one.
    default: str
    #: The field's ``#:`` comment, Markdown (empty when it has none).
    doc: str


# --- finding the classes ---------------------------------------------------------------------------------------


def _core_classes() -> dict[str, type]:
    return {
        TOP_LEVEL: aurelis_core.Config,
        "endpoints": aurelis_core.Endpoint,
        "tenant": TenantConfig,
        "redis_connection": RedisConnection,
        "pricing": ModelPrice,
        # The report's option class is not exported by itself: it is the type of Config.report.
        "report": typing.get_type_hints(aurelis_core.Config)["report"],
    }


def table_names() -> list[str]:
    """Every name :func:`options` takes: the core tables, then the plugins that can be enabled (sorted)."""
    return [*CORE_TABLES, *sorted(discover_plugins())]


def option_classes(builtin_only: bool = False) -> dict[str, type | None]:
    """name -> option class of every core table and plugin (``None``: a plugin that takes no options).

    Loads every plugin (imports its module); :class:`ConfigError` when one cannot be (an extra not installed).
    """
    found: dict[str, type | None] = dict(_core_classes())
    for name, spec in sorted(discover_plugins().items()):
        if not builtin_only or spec.origin == "builtin":
            found[name] = getattr(spec.load(), "Config", None)
    return found


def _option_class(name: str) -> type | None:
    core = _core_classes()
    if name in core:
        return core[name]
    known = discover_plugins()
    if name not in known:
        raise UnknownOptions(f"no plugin or core table is called {name!r}{choices_hint(name, table_names())}")
    config: type | None = getattr(known[name].load(), "Config", None)
    return config


# --- reading a class -------------------------------------------------------------------------------------------


def options(name: str) -> list[Option]:
    """The rows of the table called ``name`` (a plugin or one of :data:`CORE_TABLES`); empty for a plugin that
    takes no options. :class:`UnknownOptions` for another name."""
    cls = _option_class(name)
    if cls is None:
        return []
    if name == TOP_LEVEL:
        # Config also holds what was parsed around the keys (its source, the plugin tables); its tables have
        # references of their own.
        return [row for row in class_options(cls, nested=False) if row.name in RESERVED_KEYS]
    return class_options(cls)


def class_options(cls: type, prefix: str = "", nested: bool = True) -> list[Option]:
    """The rows of the attrs class ``cls``, with (``nested``) its nested tables' after each, their keys prefixed
    ``key.``."""
    hints = typing.get_type_hints(cls)
    docs = doc_comments(cls)
    rows: list[Option] = []
    for field in attrs.fields(cls):
        if not field.init:
            continue
        key = getattr(field, "alias", None) or field.name
        hint = hints.get(field.name, Any)
        secret = field.repr is False
        rows.append(Option(prefix + key, readable_type(hint), _default(field, secret), docs.get(field.name, "")))
        if nested and isinstance(hint, type) and attrs.has(hint):
            rows += class_options(hint, f"{prefix}{key}.")
    return rows


def doc_comments(cls: type) -> dict[str, str]:
    """field name -> its ``#:`` comment (the comment lines right above the field, joined), over ``cls`` and the
    classes it inherits fields from (a subclass's comment wins)."""
    found: dict[str, str] = {}
    for klass in cls.__mro__:
        if klass is object:
            continue
        try:
            lines, _ = inspect.getsourcelines(klass)
        except (OSError, TypeError):  # built without a source file: nothing to read
            continue
        tree = ast.parse(textwrap.dedent("".join(lines)))
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for statement in body:
            if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
                name = statement.target.id
            elif isinstance(statement, ast.Assign) and isinstance(statement.targets[0], ast.Name):
                name = statement.targets[0].id
            else:
                continue
            comment: list[str] = []
            index = statement.lineno - 2  # the line above, 0-based
            while index >= 0 and lines[index].strip().startswith("#:"):
                comment.insert(0, lines[index].strip().removeprefix("#:").strip())
                index -= 1
            if comment and name not in found:
                found[name] = _markdown(" ".join(comment))
    return found


def _markdown(text: str) -> str:
    """reStructuredText's inline markup as Markdown: ``a`` -> `a`, :class:`~x.Y` -> `Y`, :mod:`x.y` -> `x.y`."""
    text = re.sub(r":\w+:`~([^`]+)`", lambda m: f"`{m.group(1).rsplit('.', 1)[-1]}`", text)
    text = re.sub(r":\w+:`([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


# --- spelling types and defaults --------------------------------------------------------------------------------


def readable_type(hint: Any) -> str:
    """An annotation as a reader of the config wants it: ``int | None``, ``tuple[str, ...]``, ``"lru" | "lfu"``;
    an attrs class is a ``table``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is type(None) or hint is None:
        return "None"
    if hint is Any:
        return "Any"
    if origin is typing.Annotated:
        return readable_type(args[0])
    if origin is Literal:
        return " | ".join(_toml(a) for a in args)
    if origin is typing.Union or isinstance(hint, types.UnionType):
        return " | ".join(readable_type(a) for a in args)
    value_of = getattr(hint, "__value__", None)  # a `type X = ...` alias
    if value_of is not None and not isinstance(hint, type):
        return readable_type(value_of)
    supertype = getattr(hint, "__supertype__", None)  # typing.NewType
    if supertype is not None:
        return readable_type(supertype)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return f"tuple[{readable_type(args[0])}, ...]"
        return f"{name}[{', '.join(readable_type(a) for a in args)}]" if args else name
    if isinstance(hint, type):
        if attrs.has(hint):
            return "table"
        if issubclass(hint, os.PathLike):
            return "str"
        return hint.__name__
    return str(hint).replace("typing.", "")


def _default(field: Any, secret: bool) -> str:
    default = field.default
    if default is attrs.NOTHING:
        return REQUIRED
    if secret and default is not None:  # a factory might read it from the environment: never called here
        return HIDDEN
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]  # attrs.Factory is a class at run time
        if default.takes_self:
            return "(computed)"
        default = default.factory()
    return _toml(default)


def _toml(value: Any) -> str:
    """``value`` as TOML writes it (``None`` stays ``None``: the key is left out)."""
    if value is None:
        return "None"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return _toml(value.value)
    if isinstance(value, int):
        return f"{value:_}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, os.PathLike):
        return json.dumps(os.fspath(value), ensure_ascii=False)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_key(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return "[" + ", ".join(_toml(v) for v in items) + "]"
    if attrs.has(type(value)):
        # A nested table: the keys that differ from their own defaults (none: `{}`, the rows below say them).
        changed = {}
        for field in attrs.fields(type(value)):
            if field.init and field.repr is not False and field.default is not attrs.NOTHING:
                own = field.default.factory() if isinstance(field.default, attrs.Factory) else field.default  # type: ignore[arg-type]
                if getattr(value, field.name) != own:
                    changed[getattr(field, "alias", None) or field.name] = getattr(value, field.name)
        return _toml(changed)
    return repr(value)


def _key(key: Any) -> str:
    text = str(key)
    return text if re.fullmatch(r"[A-Za-z0-9_-]+", text) else json.dumps(text)


# --- rendering ----------------------------------------------------------------------------------------------------


def _cell(text: str) -> str:
    """``text`` fit for a table cell: its pipes escaped, but inside code spans, where Python-Markdown (MkDocs)
    takes them as they are and would show the backslash."""
    parts = re.split(r"(`[^`]*`)", text.replace("\n", " "))
    return "".join(part if part.startswith("`") else part.replace("|", "\\|") for part in parts)


def _code(text: str) -> str:
    return f"`{text}`"


def markdown_table(name: str) -> str:
    """The reference of ``name`` as a Markdown table (a sentence for a plugin without options)."""
    rows = options(name)
    if not rows:
        return f"The `{name}` plugin takes no options."
    lines = ["| Option | Type | Default | Description |", "| --- | --- | --- | --- |"]
    for row in rows:
        default = row.default if row.default in (HIDDEN, REQUIRED) else _code(row.default)
        lines.append(f"| {_code(row.name)} | {_cell(_code(row.type))} | {_cell(default)} | {_cell(row.doc)} |")
    return "\n".join(lines)


def text_table(name: str, width: int = 100) -> str:
    """The reference of ``name`` for a terminal: ``key: type = default``, its comment wrapped below it."""
    rows = options(name)
    title = f"[{name}]" if name not in CORE_TABLES else CORE_TABLES[name]
    if not rows:
        return f"{title}: takes no options\n"
    out = [title]
    for row in rows:
        out.append(f"  {row.name}: {row.type} = {row.default}")
        out += textwrap.wrap(row.doc.replace("`", ""), width=width, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(out) + "\n"


def expand_markers(markdown: str) -> str:
    """``markdown`` with every ``<!-- options: NAME -->`` replaced by :func:`markdown_table` of ``NAME``.

    :class:`UnknownOptions` (naming the valid names) for a marker naming no plugin or core table; a plugin that
    cannot be loaded (its extra is not installed) raises :class:`ConfigError` saying which.
    """

    def table(match: re.Match[str]) -> str:
        return markdown_table(match.group(1))

    return MARKER.sub(table, markdown)
