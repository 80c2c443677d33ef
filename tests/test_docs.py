"""Every code example in README.md and docs/ runs, so the documentation cannot drift from the code.

Sybil lexes the pages; the conventions (written up for authors in docs/contributing-docs.md):

- ```python fences run in page order, sharing one namespace per page, in a fresh working directory, with
  ``upstream`` bound to the simulated OpenAI-compatible upstream of ``aurelis_core.testing`` (reset before each
  page). Top-level ``await`` works: the page's blocks share one event loop.
- ``<!-- skip: next -->`` before a fence that needs a real key or server: it is not run, but it still compiles
  and its import statements still import (``test_every_python_example_compiles_and_imports``).
- ```toml fences are Aurelis configs: each is checked as ``aurelis config check`` checks a file (every table,
  every value; a pipeline is built from it, which contacts nothing). ``<!-- fragment -->`` before a fence
  that is not a whole config (a ``pyproject.toml`` excerpt, part of a table) leaves it to parse as TOML only.
- ```sh, ```console and other fences are not run.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sybil import Document, Example, Sybil
from sybil.evaluators.python import pad
from sybil.parsers.markdown import CodeBlockParser, SkipParser

from aurelis_core import ConfigError, Pipeline
from aurelis_core.config import parse_config
from aurelis_core.testing import SimulatedServer

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FRAGMENT = "<!-- fragment -->"
#: The key under which a page's event loop waits in its namespace until the page's first ``await``.
RUNNER = "__aurelis_docs_runner__"


def page_id(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def run_python(example: Example) -> None:
    """Run a ```python fence in its page's namespace; a fence with top-level ``await`` on the page's loop."""
    __tracebackhide__ = True
    source = pad(example.parsed, example.line + example.parsed.line_offset)
    code = compile(source, example.path, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
    result = eval(code, example.namespace)
    if inspect.iscoroutine(result):
        runner = example.namespace.get(RUNNER)
        if runner is None:
            runner = example.namespace[RUNNER] = asyncio.Runner()
        runner.run(result)
    example.namespace.pop("__builtins__", None)


def is_fragment(example: Example) -> bool:
    before = example.document.text[: example.region.start].rstrip()
    return before.endswith(FRAGMENT)


def check_toml(example: Example) -> None:
    """A ```toml fence: valid TOML, and unless marked a fragment, a config ``aurelis config check`` accepts."""
    data = tomllib.loads(example.parsed)
    if is_fragment(example):
        return
    source = f"{page_id(Path(example.path))}:{example.line}"
    config, errors = parse_config(data, source)
    if not errors:
        try:
            Pipeline(config).close()
        except ConfigError as exc:
            errors.extend(exc.errors)
    assert not errors, "the config is invalid:\n" + "\n".join(errors)


SYBIL = Sybil(
    parsers=[SkipParser(), CodeBlockParser("python", run_python), CodeBlockParser("toml", check_toml)],
    path=str(ROOT),
    patterns=["README.md", "docs/**/*.md"],
)


def python_sources(document: Document) -> Iterator[tuple[int, str]]:
    """Every ```python fence of a page, skipped or not, with its line."""
    for example in document.examples():
        if example.region.evaluator is run_python:
            yield example.line, str(example.parsed)


def test_the_pages_are_found() -> None:
    assert ROOT / "README.md" in PAGES and ROOT / "docs" / "index.md" in PAGES
    # Each of these has runnable examples: a parser that found none would make every page pass.
    for name in ("README.md", "docs/getting-started.md", "docs/writing-plugins.md"):
        assert list(python_sources(SYBIL.parse(ROOT / name))), f"{name}: no python example found"


@pytest.mark.parametrize("path", PAGES, ids=page_id)
def test_examples_run(
    path: Path, aurelis_upstream: SimulatedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A page's examples write their files (aurelis.toml, cache files) where nothing else lives, and read no
    # config but their own.
    monkeypatch.chdir(tmp_path)
    for name in ("AURELIS_CONFIG", "AURELIS_DISABLE_PLUGINS", "AURELIS_RECORD"):
        monkeypatch.delenv(name, raising=False)
    document = SYBIL.parse(path)
    document.namespace["upstream"] = aurelis_upstream
    try:
        for example in document.examples():
            example.evaluate()
    finally:
        close_what_is_left(document.namespace)


def close_what_is_left(namespace: dict[str, Any]) -> None:
    """Close the clients and pipelines a page's examples left open, then the page's event loop: nothing of one
    page outlives it (an unclosed socket would be reported, at random, under a later test)."""
    import httpx
    import httpx2
    import openai

    runner: asyncio.Runner | None = namespace.get(RUNNER)
    values = list(namespace.values())
    for value in values:
        if isinstance(value, openai.AsyncOpenAI):
            if runner is not None and not value.is_closed():
                runner.run(value.close())
        elif isinstance(value, httpx.AsyncClient | httpx2.AsyncClient):
            if runner is not None and not value.is_closed:
                runner.run(value.aclose())
        elif isinstance(value, httpx.Client | httpx2.Client | openai.OpenAI):
            value.close()
    for value in values:
        if isinstance(value, Pipeline):
            value.close()
    if runner is not None:
        runner.close()


@pytest.mark.parametrize("path", PAGES, ids=page_id)
def test_every_python_example_compiles_and_imports(path: Path) -> None:
    """Skipped fences too: each compiles, and what it imports exists (the names of ``from x import y`` too)."""
    for line, source in python_sources(SYBIL.parse(path)):
        where = f"{page_id(path)}:{line}"
        tree = compile(source, where, "exec", flags=ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        imports = [node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)]
        module = ast.Module(body=imports, type_ignores=[])  # type: ignore[arg-type]
        try:
            exec(compile(module, where, "exec"), {})
        except ImportError as exc:
            pytest.fail(f"{where}: {exc}")


def test_the_readme_stays_a_landing_page() -> None:
    """The reference lives in docs/; the README says what Aurelis is, the two commands, a quickstart, links."""
    size = len((ROOT / "README.md").read_bytes())
    assert size <= 12 * 1024, f"README.md is {size} bytes: move reference material into docs/"


def test_every_first_party_plugin_has_a_page_with_its_option_table() -> None:
    from aurelis_core.plugin import discover_plugins

    pages = "\n".join(path.read_text() for path in sorted((ROOT / "docs" / "plugins").glob("*.md")))
    stages = {name for name, spec in discover_plugins().items()
              if spec.origin == "builtin" and any(attr.startswith("aurelis_") for attr in dir(spec.load()))}
    assert "memory" in stages and "lz4" not in stages  # lz4 is a codec at rest: no stage, nothing to enable
    missing = sorted(name for name in stages if f"<!-- options: {name} -->" not in pages)
    assert not missing, f"docs/plugins/ has no '<!-- options: NAME -->' table for: {missing}"


def test_every_command_and_option_of_the_cli_is_in_its_reference() -> None:
    import argparse

    from aurelis_core.tools.cli import build_parser

    def walk(parser: argparse.ArgumentParser, command: str) -> Iterator[str]:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield f"{command} {name}"
                    yield from walk(sub, f"{command} {name}")
            else:
                yield from (option for option in action.option_strings if option.startswith("--"))

    reference = (ROOT / "docs" / "cli.md").read_text()
    said = set(walk(build_parser(), "aurelis")) - {"--help"}
    assert {"aurelis cache warm", "--sim-rpm", "--version"} <= said
    # Whole names: "--target-p9" in "--target-p95" does not count.
    missing = sorted(name for name in said if not re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", reference))
    assert not missing, f"docs/cli.md does not mention: {missing}"


def test_a_broken_example_fails(tmp_path: Path) -> None:
    """The checks can fail: a wrong option in a config fence, an exception in a python fence."""
    page = tmp_path / "page.md"
    page.write_text("```toml\nplugins = [\"memory\"]\n\n[memory]\npolicy = \"lfuu\"\n```\n")
    with pytest.raises(AssertionError, match="did you mean 'lfu'"):
        for example in Sybil(parsers=[CodeBlockParser("toml", check_toml)], path=str(tmp_path)).parse(page):
            example.evaluate()
    page.write_text('<!-- fragment -->\n```toml\n[project.entry-points.aurelis]\nx = "m:X"\n```\n')
    for example in Sybil(parsers=[CodeBlockParser("toml", check_toml)], path=str(tmp_path)).parse(page):
        example.evaluate()
    page.write_text("```python\nx = 1\n```\n\n<!-- skip: next -->\n```python\nraise SystemError\n```\n\n"
                    "```python\nassert x == 2\n```\n")
    examples = list(Sybil(parsers=[SkipParser(), CodeBlockParser("python", run_python)], path=str(tmp_path))
                    .parse(page))
    examples[0].evaluate()
    examples[1].evaluate()
    examples[2].evaluate()  # skipped: never raises
    with pytest.raises(AssertionError):
        examples[3].evaluate()


def test_the_api_reference_shows_sphinx_roles_as_code() -> None:
    """docs/hooks/sphinx_roles.py: mkdocstrings renders ``:class:`~a.B``` as ``:class:<code>~a.B</code>``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("sphinx_roles", Path(__file__).parent.parent / "docs" / "hooks"
                                                  / "sphinx_roles.py")
    assert spec is not None and spec.loader is not None
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    html = ("<p>See :class:<code>~aurelis_core.report.Targets</code> and :func:<code>aurelis_core.gather</code>, "
            "not :unknown:<code>x</code>.</p>")
    assert hook.strip_roles(html) == ("<p>See <code>Targets</code> and <code>aurelis_core.gather</code>, "
                                      "not :unknown:<code>x</code>.</p>")
