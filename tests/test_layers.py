"""The floor plan of ``aurelis_core``, read from its sources: no import circle among its modules, an application
wing (``aurelis_core.tools``) that uses the public API only and that nothing in the core imports, and the old
module paths of that wing kept as deprecated aliases."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

import pytest

import aurelis_core

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "aurelis_core"

#: The old homes of the application wing's modules: aliases of the new ones, importing them by design.
DEPRECATED_SHIMS = ("cli", "cli_cache", "replay")

#: What the application wing may import of ``aurelis_core`` (the public API, the report that ``pipeline.report()``
#: and replays share, and the testing helpers that ``aurelis replay --simulate`` runs), besides its own modules.
TOOLS_MAY_IMPORT = {
    "aurelis_core", "aurelis_core.plugin", "aurelis_core.config", "aurelis_core.report", "aurelis_core.testing"
}


# --- reading imports ---------------------------------------------------------------------------------------------


def module_files(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of ``package`` (a package is named by its ``__init__``)."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imports_of(module: str, path: Path, known: set[str]) -> Iterator[tuple[str, bool, int]]:
    """``(imported module, type-only, line)`` for every import in ``path`` of a module in ``known``.

    Every import counts, at the top or inside a function (a lazy import runs too, only later), except that those
    under ``if TYPE_CHECKING:`` are marked type-only: they never run. ``from package import name`` imports the
    submodule when there is one of that name, else the package itself. The parent packages Python imports first
    (``aurelis_core`` before ``aurelis_core.pipeline``) are not counted: every module would depend on them.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    type_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_only.update(id(inner) for statement in node.body for inner in ast.walk(statement))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target not in known and "." in target:  # ``import aurelis_core.x.y`` of a name inside x
                target = target.rpartition(".")[0]
            if target in known and target != module:
                yield target, id(node) in type_only, node.lineno


def import_graph(package: Path, with_type_only: bool) -> dict[str, set[str]]:
    modules = module_files(package)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for target, type_only, _ in imports_of(name, path, set(modules)):
            if with_type_only or not type_only:
                graph[name].add(target)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other in a loop (strongly connected, more than one module)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


# --- no circles --------------------------------------------------------------------------------------------------


def test_no_import_circle_among_core_modules() -> None:
    """No two modules of ``aurelis_core`` import each other, directly or around a loop: the modules stand on
    floors, each above all it imports, so any one can be read knowing only those below it.

    Imports that run are checked, lazy ones inside functions included (moving an import into a function hides a
    circle from Python, not from a reader). Imports under ``if TYPE_CHECKING:`` never run, so they cannot break
    an import; they are held to the same rule all the same, in a second graph: an annotation that names a
    module above is a circle a reader still has to walk (type against a Protocol below instead)."""
    graph = import_graph(CORE, with_type_only=False)
    assert len(graph) > 25 and "aurelis_core.pipeline" in graph["aurelis_core"]  # the walk read the package
    assert circles(graph) == []
    assert circles(import_graph(CORE, with_type_only=True)) == []


def test_the_circle_check_sees_lazy_and_type_only_imports(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from . import b\nfrom .sub.c import thing\n")
    (package / "b.py").write_text("import json\ndef later():\n    from pkg.a import x\n")  # a -> b -> a, lazily
    (package / "sub" / "c.py").write_text(textwrap.dedent("""\
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            from ..a import x
    """))
    assert circles(import_graph(package, with_type_only=False)) == [["pkg.a", "pkg.b"]]
    assert circles(import_graph(package, with_type_only=True)) == [["pkg.a", "pkg.b", "pkg.sub.c"]]


# --- the application wing ----------------------------------------------------------------------------------------


def tools_violations(source: str, filename: str) -> list[str]:
    """Every import in ``source`` (a module of ``aurelis_core.tools``) of something that is not public API."""
    found = []
    for node in ast.walk(ast.parse(source)):
        where = f"{filename}:{node.lineno}" if isinstance(node, ast.stmt) else ""
        if isinstance(node, ast.Import):
            found += [
                f"{where}: import {a.name}" for a in node.names
                if a.name.split(".")[0] == "aurelis_core" and a.name not in TOOLS_MAY_IMPORT
                and not a.name.startswith("aurelis_core.tools.")
            ]
        elif isinstance(node, ast.ImportFrom):
            if node.level > 1:
                found.append(f"{where}: from {'.' * node.level}{node.module or ''} import ...")
            elif node.level == 1 or node.module is None or node.module.split(".")[0] != "aurelis_core":
                continue  # a module of the wing itself, or not aurelis_core
            elif node.module not in TOOLS_MAY_IMPORT and not node.module.startswith("aurelis_core.tools."):
                found.append(f"{where}: from {node.module} import ...")
            else:
                for alias in node.names:
                    private = alias.name.startswith("_") and alias.name != "__version__"
                    unlisted = node.module == "aurelis_core" and alias.name not in aurelis_core.__all__
                    if private or unlisted:
                        found.append(f"{where}: from {node.module} import {alias.name}")
    return sorted(found, key=lambda line: int(line.split(":")[1]))


def test_the_tools_use_only_the_public_api() -> None:
    """``aurelis``, replay, the report and ``aurelis cache`` are built like any application of Aurelis: on
    ``aurelis_core``, ``aurelis_core.plugin``, ``aurelis_core.config`` (and the testing helpers), by their public
    names; nothing ``_private``."""
    files = sorted((CORE / "tools").glob("*.py"))
    assert {f.stem for f in files} >= {"cli", "cli_cache", "replay"}
    violations = [
        v for path in files for v in tools_violations(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    ]
    assert violations == [], "the tools reach past the public API:\n" + "\n".join(violations)


def test_the_tools_check_sees_every_kind_of_private_import() -> None:
    source = textwrap.dedent("""\
        from aurelis_core import Pipeline, __version__
        from aurelis_core import pipeline_of, hookspecs
        from aurelis_core.config import load_config, _BOOL
        from .report import Report
        def lazy():
            from .._plugins import discover_plugins
            from aurelis_core.stats import percentile
            import aurelis_core._compat
            import aurelis_core.plugin
    """)
    assert tools_violations(source, "t.py") == [
        "t.py:2: from aurelis_core import hookspecs",
        "t.py:3: from aurelis_core.config import _BOOL",
        "t.py:6: from .._plugins import ...",
        "t.py:7: from aurelis_core.stats import ...",
        "t.py:8: import aurelis_core._compat",
    ]


def test_the_core_never_imports_the_tools() -> None:
    """The wing stands on the core, never under it: no module of the core imports ``aurelis_core.tools``, lazily
    or for types, but the deprecated aliases at the wing's old paths."""
    modules = module_files(CORE)
    known = set(modules)
    shims = {f"aurelis_core.{name}" for name in DEPRECATED_SHIMS}
    found = [
        f"{name} -> {target} (line {line})"
        for name, path in modules.items()
        if not name.startswith("aurelis_core.tools") and name not in shims
        for target, _, line in imports_of(name, path, known)
        if target.startswith("aurelis_core.tools")
    ]
    assert found == []


@pytest.mark.parametrize("name", DEPRECATED_SHIMS)
def test_the_old_paths_are_deprecated_aliases(name: str) -> None:
    """``aurelis_core.cli`` and the others still import, as the very module at their new path, with a
    ``DeprecationWarning`` that names it; importing the core or the new paths warns about nothing."""
    code = (
        "import warnings, importlib, sys\n"
        "warnings.simplefilter('error')\n"
        f"import aurelis_core, aurelis_core.plugin, aurelis_core.tools.{name}\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        f"    old = importlib.import_module('aurelis_core.{name}')\n"
        f"assert old is sys.modules['aurelis_core.tools.{name}'], old\n"
        "print([(w.category.__name__, str(w.message)) for w in caught])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str([
        ("DeprecationWarning", f"aurelis_core.{name} moved to aurelis_core.tools.{name}; import it from there")
    ])


def test_the_command_runs_from_its_new_and_old_module_paths() -> None:
    """The console script points at the new place; ``python -m`` runs the command by either name (the old one
    warning on stderr)."""
    (script,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "aurelis"]
    assert script.value == "aurelis_core.tools.cli:main"
    new = subprocess.run([sys.executable, "-m", "aurelis_core.tools.cli", "--version"], capture_output=True,
                         text=True)
    assert (new.returncode, new.stdout.strip(), new.stderr) == (0, f"aurelis {aurelis_core.__version__}", "")
    old = subprocess.run([sys.executable, "-W", "default", "-m", "aurelis_core.cli", "--version"],
                         capture_output=True, text=True)
    assert (old.returncode, old.stdout.strip()) == (0, f"aurelis {aurelis_core.__version__}")
    assert "DeprecationWarning: python -m aurelis_core.cli is deprecated" in old.stderr
