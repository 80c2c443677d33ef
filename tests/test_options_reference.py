"""The option reference is read from the option classes: every option of every built-in plugin and core table
has a ``#:`` doc comment, and the rendered tables say each option's name, type, default and comment."""

from __future__ import annotations

import importlib.util
import re
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import attrs
import pytest

from aurelis_core import ConfigError
from aurelis_core.tools.cli import main
from aurelis_core.tools.options_reference import (
    CORE_TABLES,
    HIDDEN,
    UnknownOptions,
    class_options,
    expand_markers,
    markdown_table,
    option_classes,
    options,
    table_names,
)

ROOT = Path(__file__).resolve().parent.parent


def test_every_option_of_every_builtin_plugin_and_core_table_has_a_doc_comment() -> None:
    """A new option without a ``#:`` comment above it fails here, naming it and where to write the comment."""
    classes = option_classes(builtin_only=True)
    assert set(CORE_TABLES) | {"memory", "redis", "retry", "round_robin", "httpx"} <= set(classes)
    missing = [
        f"[{name}] {row.name} ({cls.__module__}.{cls.__qualname__})"
        for name, cls in classes.items() if cls is not None
        for row in options(name) if not row.doc
    ]
    assert sum(len(options(name)) for name in classes) > 150  # the walk reached the fields, nested ones included
    assert missing == [], "options without a #: doc comment:\n" + "\n".join(missing)


def _module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str) -> ModuleType:
    """``source`` as an importable module with a file, as inspect needs to read a class's comments."""
    path = tmp_path / "reference_probe.py"
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    spec = importlib.util.spec_from_file_location("reference_probe", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "reference_probe", module)
    spec.loader.exec_module(module)
    return module


def test_the_comments_are_read_from_above_each_field_through_inheritance_and_nesting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = _module(tmp_path, monkeypatch, '''
        import os
        import attrs

        @attrs.frozen
        class Inner:
            #: How deep.
            depth: int = 2
            shallow: bool = True

        @attrs.frozen
        class Base:
            #: Said by the base,
            #: over two lines.
            first: str = "a"
            #: Replaced below.
            second: float | None = None

        @attrs.frozen
        class Options(Base):
            # a plain comment is no doc comment
            third: tuple[str, ...] = ("x", "y")
            #: The subclass's own word.
            second: float | None = 1.5
            #: A nested table.
            inner: Inner = attrs.field(factory=Inner)
            #: A token read from the environment.
            token: str = attrs.field(factory=lambda: os.environ["PROBE_TOKEN"], repr=False)
    ''')
    monkeypatch.setenv("PROBE_TOKEN", "tok-5ecret")
    rows = {row.name: row for row in class_options(module.Options)}
    # attrs' order: the base's fields the subclass does not redefine, then the subclass's own.
    assert list(rows) == ["first", "third", "second", "inner", "inner.depth", "inner.shallow", "token"]
    assert rows["first"].doc == "Said by the base, over two lines."
    assert (rows["second"].type, rows["second"].default, rows["second"].doc) == (
        "float | None", "1.5", "The subclass's own word."
    )
    assert (rows["third"].type, rows["third"].default, rows["third"].doc) == ("tuple[str, ...]", '["x", "y"]', "")
    assert (rows["inner"].type, rows["inner"].default) == ("table", "{}")
    assert (rows["inner.depth"].doc, rows["inner.shallow"].doc, rows["inner.shallow"].default) == (
        "How deep.", "", "true"
    )
    assert rows["token"].default == HIDDEN  # the factory is never called: the secret cannot leak into the docs


def test_the_memory_table_says_each_option_its_type_default_and_comment() -> None:
    """Read against the plugin's source text: each field's row, its TOML default and the comment above it."""
    from aurelis_plugins.memory import MemoryConfig

    table = markdown_table("memory")
    rows = {}
    for line in table.splitlines()[2:]:
        # A cell ends at a pipe outside code spans (those inside are the type's: `int | None`).
        cells = [cell.strip() for cell in re.findall(r"((?:`[^`]*`|\\\||[^|`])*)\|", line)[1:]]
        rows[cells[0].strip("`")] = cells
    source = (ROOT / "plugins" / "memory.py").read_text(encoding="utf-8").splitlines()
    fields = [f.name for f in attrs.fields(MemoryConfig)]
    assert list(rows) == fields
    for name in fields:
        at = next(i for i, line in enumerate(source) if line.startswith(f"    {name}: "))
        comment = source[at - 1].strip().removeprefix("#:").strip().replace("``", "`")
        assert rows[name][3] == comment, name
    assert rows["policy"][1:3] == ['`"lru" | "lfu"`', '`"lru"`']
    assert rows["max_bytes"][1:3] == ["`int`", "`67_108_864`"]  # 64 MiB, spelled as TOML may write it
    assert rows["ttl"][1:3] == ["`float | None`", "`300.0`"]
    assert rows["max_entry_bytes"][1:3] == ["`int | None`", "`None`"]


def test_secrets_and_required_keys_and_nested_tables_in_the_builtin_tables() -> None:
    redis = {row.name: row for row in options("redis")}
    assert redis["password"].default == "None" and "Never logged" in redis["password"].doc
    assert redis["warm.top"].default == "1000" and redis["fleet_flight.enabled"].default == "false"
    endpoints = {row.name: row for row in options("endpoints")}
    assert endpoints["url"].default == "(required)" and endpoints["headers"].type == "Mapping[str, str]"
    top = [row.name for row in options("top-level")]
    assert top == ["plugins", "endpoints", "tenant", "redis_connection", "report", "pricing", "fallbacks"]
    assert options("lz4") == [] and markdown_table("lz4") == "The `lz4` plugin takes no options."


def test_markers_alone_on_their_line_become_tables_and_unknown_names_fail() -> None:
    page = "# Retry\n\n<!-- options: retry -->\n\nWrite `<!-- options: retry -->` on its own line.\n"
    out = expand_markers(page)
    assert out.count("| `max_attempts` | `int` | `3` |") == 1
    assert "Write `<!-- options: retry -->` on its own line." in out  # quoted in a sentence: left alone
    with pytest.raises(UnknownOptions) as caught:
        expand_markers("<!--  options: retyr -->")
    assert str(caught.value).startswith("no plugin or core table is called 'retyr'; did you mean 'retry'? valid: ")
    assert {"retry", "tenant", "top-level", "memory"} <= set(str(caught.value).split("valid: ")[1].split(", "))


def test_a_plugin_that_cannot_be_loaded_fails_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    import aurelis_core._plugins as registry

    monkeypatch.setitem(registry.BUILTIN_PLUGINS, "ghost", "aurelis_plugins.no_such_module:Ghost")
    assert "ghost" in table_names()
    with pytest.raises(ConfigError, match=r"plugin 'ghost'.*failed to import"):
        expand_markers("<!-- options: ghost -->")


def test_the_mkdocs_hook_expands_markers_and_fails_the_build_on_an_unknown_name() -> None:
    exceptions = pytest.importorskip("mkdocs.exceptions")
    spec = importlib.util.spec_from_file_location("options_hook", ROOT / "docs" / "hooks" / "options.py")
    assert spec is not None and spec.loader is not None
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)

    class Page:
        class file:  # the shape of mkdocs' Page.file
            src_path = "plugins/tuner.md"

    assert hook.on_page_markdown("<!-- options: tuner -->\n", page=Page, config=None, files=None) == (
        markdown_table("tuner") + "\n"
    )
    with pytest.raises(exceptions.PluginError, match=r"plugins/tuner\.md: no plugin or core table is called 'tunr'"):
        hook.on_page_markdown("<!-- options: tunr -->", page=Page, config=None, files=None)


def test_aurelis_config_options_prints_the_reference(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "options"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == table_names()
    assert main(["config", "options", "retry", "--format", "markdown"]) == 0
    assert capsys.readouterr().out == markdown_table("retry") + "\n"
    assert main(["config", "options", "retry"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("[retry]\n  max_attempts: int = 3\n      Attempts in all, the first included")
    assert main(["config", "options", "retyr"]) == 1
    assert "no plugin or core table is called 'retyr'; did you mean 'retry'?" in capsys.readouterr().err
