"""Mutation testing: would the test suite notice a small bug in a module?

Run from the repository root (the script is not part of the test run and no CI job runs it)::

    .venv/bin/python benchmarks/mutation.py plugins/breaker.py aurelis_core/_sse.py -- tests/test_breaker.py
    .venv/bin/python benchmarks/mutation.py plugins/memory.py --jobs 2 --lines 150-200 -- tests

Everything after ``--`` is handed to pytest for the coverage run (default: ``tests``). For each module named,
the script

1. runs those tests once under coverage.py, switching coverage's dynamic context to each test's node id as it
   starts (``Coverage.switch_context``, what pytest-cov's ``--cov-context=test`` does). That records which test
   ran which line, including lines run by threads the test started (a sync client's workers, a server thread)
   and by its fixtures, which coverage's own ``dynamic_context = test_function`` would miss. Lines run only at
   import time (module constants, class bodies, defaults) are mapped to every test that ran any line of the
   module. Tests that failed in this run are never used to judge a mutant;
2. makes mutants, one small change each, from the module's syntax tree: comparison operators moved across
   their boundary or negated (``<`` <-> ``<=``, ``>`` <-> ``>=``, ``==`` <-> ``!=``, ``is`` <-> ``is not``, ``in``
   <-> ``not in``), ``and`` <-> ``or``, arithmetic (``+`` <-> ``-``, ``*`` <-> ``/``, ``//`` -> ``/``, in
   augmented assignments too), ``not x`` -> ``x``, numbers (0 <-> 1, n -> n + 1), ``True`` <-> ``False``,
   ``return x`` -> ``return None``, and a statement of a function body replaced by ``pass`` (but not a trailing
   ``return None``: without it the function returns None all the same);
3. runs, for each mutant, only the tests that ran its line (fastest first, stopping at the first failure), in
   a fresh interpreter whose import system loads the mutated module compiled from the changed tree. The
   source files are never written: the work tree stays as it was, and two runs may go on side by side.

A mutant is *killed* when a test fails or pytest cannot start or collect with it, *timed out* when a test ran
longer than ``--timeout-factor`` times its unmutated duration plus 10 s (a SIGALRM fails it: a mutant that makes
a loop spin or a wait never end), or the whole run past its deadline, and *survived* when every test passed or
no test runs its line. The score is (killed + timed out) / (mutants - equivalent). Equivalent mutants (changes
that cannot alter behaviour) are listed, each with its reason, in ``benchmarks/mutation_equivalents.txt``; they
are reported, not run (``--list`` shows each
mutant's function, to name one where the same code is equivalent in one place and not in another).

Cost: one coverage run, then per mutant an interpreter start and a pytest start (~1.5 s) plus its tests. A
module of ~300 lines makes ~150-250 mutants: a few minutes with ``--jobs 2``.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENTS = Path(__file__).resolve().parent / "mutation_equivalents.txt"

#: Where each top folder's modules are imported from (setuptools' package-dir in pyproject.toml).
PACKAGES = {"aurelis_core": "aurelis_core", "plugins": "aurelis_plugins"}

#: Seconds every mutant's run is allowed on top of its tests' own time: an interpreter and pytest start, the
#: test run's shared fixtures (a loopback server), on a loaded machine.
START_ALLOWANCE = 20.0
#: Seconds any one test may run on top of ``--timeout-factor`` times its unmutated duration.
TEST_ALLOWANCE = 10.0


# --- mutants --------------------------------------------------------------------------------------------------

_CMP_SWAPS: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In,
}
_BIN_SWAPS: dict[type[ast.operator], type[ast.operator]] = {
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Div,
}
_SYMBOLS: dict[type[ast.AST], str] = {
    ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=", ast.Is: "is",
    ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in", ast.Add: "+", ast.Sub: "-", ast.Mult: "*",
    ast.Div: "/", ast.FloorDiv: "//", ast.And: "and", ast.Or: "or",
}
#: Statements never dropped: dropping them says nothing about the tests (imports fail loudly at once, the
#: others do nothing already or only declare).
_KEPT_STATEMENTS = (ast.Pass, ast.Import, ast.ImportFrom, ast.Global, ast.Nonlocal)


@dataclass(frozen=True)
class Mutant:
    """One change to a module. ``node`` is the changed node's index in ``ast.walk`` order of the parsed
    source (the same source always walks the same way, so a child process can make the same change)."""

    node: int
    kind: str  # "cmp", "bool", "bin", "aug", "const", "not", "return", "drop"
    detail: Any  # the operator index and new operator name, or the new constant
    line: int
    end_line: int
    description: str
    #: The qualified name of the function (or class) the change is in; "" at module level.
    scope: str = ""
    #: 1 for the first mutant in ``scope`` with this line code and description (in line order), 2 for the next...
    occurrence: int = 1

    def key(self, path: str, lines: Sequence[str]) -> tuple[str, str, str]:
        """What ``mutation_equivalents.txt`` names a mutant by: file, its line's code, the change."""
        return path, lines[self.line - 1].strip(), self.description


def _parents(tree: ast.AST) -> dict[int, tuple[ast.AST, str, int | None]]:
    """id(node) -> (parent, field name, index in that field's list or None)."""
    parents: dict[int, tuple[ast.AST, str, int | None]] = {}
    for parent in ast.walk(tree):
        for name, value in ast.iter_fields(parent):
            if isinstance(value, list):
                for index, child in enumerate(value):
                    if isinstance(child, ast.AST):
                        parents[id(child)] = (parent, name, index)
            elif isinstance(value, ast.AST):
                parents[id(value)] = (parent, name, None)
    return parents


def _skipped_nodes(tree: ast.AST) -> set[int]:
    """Nodes never mutated: docstrings, annotations, and ``if TYPE_CHECKING:`` blocks (not run)."""
    skipped: set[int] = set()

    def skip(node: ast.AST | None) -> None:
        if node is not None:
            skipped.update(id(n) for n in ast.walk(node))

    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(
                first.value.value, str
            ):
                skip(first)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            skip(node.returns)
            for arg in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs, node.args.vararg,
                        node.args.kwarg]:
                if arg is not None:
                    skip(arg.annotation)
        elif isinstance(node, ast.AnnAssign):
            skip(node.annotation)
        elif isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            skip(node)
    return skipped


def _in_function(node: ast.AST, parents: dict[int, tuple[ast.AST, str, int | None]]) -> bool:
    while id(node) in parents:
        node = parents[id(node)][0]
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            return True
    return False


def _scope(node: ast.AST, parents: dict[int, tuple[ast.AST, str, int | None]]) -> str:
    names = []
    while id(node) in parents:
        node = parents[id(node)][0]
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.append(node.name)
    return ".".join(reversed(names))


def _trailing_return_none(node: ast.AST, parents: dict[int, tuple[ast.AST, str, int | None]]) -> bool:
    """A bare ``return`` or ``return None`` ending a function's body: dropping it changes nothing."""
    if not isinstance(node, ast.Return) or not (node.value is None or (
            isinstance(node.value, ast.Constant) and node.value.value is None)):
        return False
    parent, name, position = parents[id(node)]
    return (isinstance(parent, ast.FunctionDef | ast.AsyncFunctionDef) and name == "body"
            and position == len(parent.body) - 1)


def _short(node: ast.AST) -> str:
    text = " ".join(ast.unparse(node).split())
    return text if len(text) <= 60 else text[:57] + "..."


def mutants_of(source: str) -> list[Mutant]:
    """Every mutant of ``source``, in a stable order (see the module docstring for the operators)."""
    tree = ast.parse(source)
    parents = _parents(tree)
    skipped = _skipped_nodes(tree)
    found: list[Mutant] = []
    for index, node in enumerate(ast.walk(tree)):
        if id(node) in skipped or not hasattr(node, "lineno"):
            continue
        line, end = node.lineno, node.end_lineno or node.lineno

        def add(
            kind: str, detail: Any, description: str, node_index: int = index, first: int = line, last: int = end,
            node: ast.AST = node,
        ) -> None:
            found.append(Mutant(node_index, kind, detail, first, last, description, _scope(node, parents)))

        if isinstance(node, ast.Compare):
            for position, op in enumerate(node.ops):
                new = _CMP_SWAPS.get(type(op))
                if new is not None:
                    add("cmp", [position, new.__name__], f"`{_SYMBOLS[type(op)]}` -> `{_SYMBOLS[new]}`")
        elif isinstance(node, ast.BoolOp):
            new_bool = ast.Or if isinstance(node.op, ast.And) else ast.And
            add("bool", new_bool.__name__, f"`{_SYMBOLS[type(node.op)]}` -> `{_SYMBOLS[new_bool]}`")
        elif isinstance(node, ast.BinOp | ast.AugAssign):
            new_bin = _BIN_SWAPS.get(type(node.op))
            if new_bin is not None:
                eq = "=" if isinstance(node, ast.AugAssign) else ""
                add("bin", new_bin.__name__, f"`{_SYMBOLS[type(node.op)]}{eq}` -> `{_SYMBOLS[new_bin]}{eq}`")
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            add("not", None, f"`not {_short(node.operand)}` -> `{_short(node.operand)}`")
        elif isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, bool):
                add("const", not value, f"{value} -> {not value}")
            elif isinstance(value, int | float) and not isinstance(value, complex):
                new_value = 1 if value == 0 else 0 if value == 1 else value + 1
                new_value = type(value)(new_value)
                add("const", new_value, f"{value!r} -> {new_value!r}")
        if isinstance(node, ast.Return) and node.value is not None and not (
            isinstance(node.value, ast.Constant) and node.value.value is None
        ):
            add("return", None, f"`return {_short(node.value)}` -> `return None`", last=line)
        if (isinstance(node, ast.stmt) and not isinstance(node, _KEPT_STATEMENTS) and _in_function(node, parents)
                and not _trailing_return_none(node, parents)):
            # Compound statements (if/for/while/with/try) are dropped whole too, but only their first line
            # decides which tests run: their body's own statements have mutants of their own.
            compound = isinstance(node, ast.If | ast.For | ast.AsyncFor | ast.While | ast.With | ast.AsyncWith
                                  | ast.Try | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            first = ast.unparse(node).splitlines()[0] if compound else _short(node)
            if not compound or len(first) <= 60:
                add("drop", None, f"drop `{' '.join(first.split())}`", last=line if compound else end)
    seen: dict[tuple[str, str, str], int] = defaultdict(int)
    lines = source.splitlines()
    numbered = []
    for mutant in sorted(found, key=lambda m: (m.line, m.node)):
        group = (mutant.scope, lines[mutant.line - 1].strip(), mutant.description)
        seen[group] += 1
        numbered.append(dataclasses.replace(mutant, occurrence=seen[group]))
    order = {(m.node, m.description): i for i, m in enumerate(found)}
    return sorted(numbered, key=lambda m: order[(m.node, m.description)])


def mutate(source: str, mutant: Mutant) -> ast.Module:
    """The tree of ``source`` with ``mutant``'s change made."""
    tree = ast.parse(source)
    nodes = list(ast.walk(tree))
    node: Any = nodes[mutant.node]
    kind, detail = mutant.kind, mutant.detail
    if kind == "cmp":
        node.ops[detail[0]] = getattr(ast, detail[1])()
    elif kind in ("bool", "bin"):
        node.op = getattr(ast, detail)()
    elif kind == "const":
        node.value = detail
    elif kind == "return":
        node.value = ast.Constant(None)
    else:  # "not" and "drop" replace the node in its parent
        parent, name, position = _parents(tree)[id(node)]
        new: ast.AST = node.operand if kind == "not" else ast.Pass()
        if position is None:
            setattr(parent, name, new)
        else:
            getattr(parent, name)[position] = new
    return ast.fix_missing_locations(tree)


# --- running a mutant (in a forked child) ---------------------------------------------------------------------


def _module_name(path: str) -> str:
    parts = Path(path).with_suffix("").parts
    package = PACKAGES.get(parts[0], parts[0])
    names = [package, *parts[1:]]
    if names[-1] == "__init__":
        names.pop()
    return ".".join(names)


#: Third-party modules the tests import, imported once by the parent so that each forked child starts warm
#: (``import openai`` alone takes ~2 s where bytecode is not cached).
WARM_MODULES = ("pytest", "httpx", "httpx2", "openai", "anyio", "uvicorn", "redis", "redis.asyncio", "aiosqlite",
                "h2", "aiohttp", "hypothesis", "attrs", "pluggy", "cachetools", "msgspec")


def _warm_up() -> None:
    """Import the tests' heavy dependencies, and the project's own packages for theirs, then forget the
    project's modules: each child imports them afresh, the mutated one through its import hook."""
    import importlib
    import pkgutil

    for name in WARM_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    for package in PACKAGES.values():
        try:
            module = importlib.import_module(package)
        except ImportError:
            continue
        for info in pkgutil.walk_packages(getattr(module, "__path__", []), package + "."):
            try:
                importlib.import_module(info.name)
            except Exception:  # an optional extra missing: that plugin's tests will say so themselves
                pass
    for name in list(sys.modules):
        if name.split(".")[0] in PACKAGES.values():
            del sys.modules[name]


#: What a test that ran over its own time limit fails with (the verdict then is "timeout"); if it cannot even
#: finish failing, the child exits with HUNG_EXIT.
HUNG = "mutation.py: the test ran over its time limit"
HUNG_EXIT = 86


class _TestTimeLimit:
    """A pytest plugin failing a test that runs far longer than it did unmutated (a mutant that makes it hang):
    a SIGALRM in the main thread, where the test and an async test's event loop run. Without it a hanging test
    would hold its mutant until the whole run's deadline."""

    def __init__(self, limits: dict[str, float]) -> None:
        self.limits = limits
        self.fired = False

    def _alarm(self, signum: int, frame: Any) -> None:
        if self.fired:  # the failed test did not even finish (its teardown waits on a hung thread): give up
            sys.stdout.write(f"\n{HUNG}\n")
            sys.stdout.flush()
            os._exit(HUNG_EXIT)
        self.fired = True
        signal.setitimer(signal.ITIMER_REAL, TEST_ALLOWANCE)
        raise TimeoutError(HUNG)

    def pytest_runtest_protocol(self, item: Any, nextitem: Any) -> None:
        self.fired = False
        signal.signal(signal.SIGALRM, self._alarm)
        signal.setitimer(signal.ITIMER_REAL, self.limits.get(item.nodeid, TEST_ALLOWANCE))

    def pytest_runtest_logfinish(self, nodeid: str, location: Any) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _run_in_child(path: str, mutant: Mutant, pytest_args: list[str], limits: dict[str, float]) -> int:
    """Install an import hook serving the mutated module, then run pytest in this (forked) process."""
    import importlib.abc
    import importlib.util

    source = (ROOT / path).read_text()
    code = compile(mutate(source, mutant), str(ROOT / path), "exec", dont_inherit=True)
    name = _module_name(path)

    class Loader(importlib.abc.Loader):
        def create_module(self, spec: Any) -> None:
            return None

        def exec_module(self, module: Any) -> None:
            exec(code, module.__dict__)

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname: str, target_path: Any = None, target: Any = None) -> Any:
            if fullname != name:
                return None
            is_package = path.endswith("__init__.py")
            return importlib.util.spec_from_file_location(
                fullname, str(ROOT / path), loader=Loader(),
                submodule_search_locations=[str((ROOT / path).parent)] if is_package else None,
            )

    sys.meta_path.insert(0, Finder())
    # Imported now, before pytest puts its assertion-rewriting import hook in front of ours: that hook would
    # load the module from its file whenever the file is on sys.path (an installed or PYTHONPATH tree).
    import importlib

    import pytest

    module = importlib.import_module(name)
    code = int(pytest.main(pytest_args, plugins=[_TestTimeLimit(limits)]))
    if sys.modules.get(name) is not module or not isinstance(module.__spec__.loader, Loader):
        print(f"mutation.py: {name} was not the mutated module during the run", flush=True)
        return 4
    return code


def _fork_mutant(path: str, mutant: Mutant, pytest_args: list[str], limits: dict[str, float], output: Path) -> int:
    """Start a child running ``mutant``'s tests, its output to ``output``; returns its pid."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 3
    try:
        os.setsid()  # a process group of its own: a timeout ends it with whatever it started
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        code = _run_in_child(path, mutant, pytest_args, limits)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


# --- the coverage run (in a child process) --------------------------------------------------------------------


def _collect_child(data_file: str, sources: list[str], pytest_args: list[str]) -> int:
    import coverage
    import pytest

    cov = coverage.Coverage(data_file=data_file, include=sources, branch=False)
    outcomes: dict[str, dict[str, Any]] = {}

    class Contexts:
        @pytest.hookimpl(tryfirst=True)
        def pytest_runtest_setup(self, item: Any) -> None:
            cov.switch_context(item.nodeid)

        def pytest_runtest_logreport(self, report: Any) -> None:
            seen = outcomes.setdefault(report.nodeid, {"passed": True, "duration": 0.0})
            seen["duration"] += report.duration
            if report.failed or (report.when == "call" and not report.passed):
                seen["passed"] = False

    cov.start()
    try:
        # The measured modules are imported here, outside every test's context: their import-time lines (module
        # constants, class bodies) are then mapped to every test, not only to the first test that imported them.
        for source in sources:
            importlib.import_module(_module_name(str(Path(source).relative_to(ROOT))))
        code = int(pytest.main(pytest_args, plugins=[Contexts()]))
    finally:
        cov.stop()
        cov.save()
    Path(data_file + ".tests.json").write_text(json.dumps(outcomes))
    return code


# --- the parent: plan, run, report ----------------------------------------------------------------------------


@dataclass
class Result:
    mutant: Mutant
    status: str  # "killed", "survived", "uncovered", "timeout", "error", "equivalent"
    tests: int = 0
    seconds: float = 0.0
    note: str = ""


@dataclass
class Coverage:
    """Which passing tests ran each line of each module, and how long each test takes."""

    lines: dict[str, dict[int, set[str]]] = field(default_factory=dict)
    durations: dict[str, float] = field(default_factory=dict)

    def tests_for(self, path: str, first: int, last: int) -> list[str]:
        by_line = self.lines.get(path, {})
        tests: set[str] = set()
        for line in range(first, last + 1):
            tests |= by_line.get(line, set())
        return sorted(tests, key=lambda t: (self.durations.get(t, 0.0), t))


def collect_coverage(paths: list[str], pytest_args: list[str], workdir: Path) -> Coverage:
    import coverage

    data_file = str(workdir / "coverage.db")
    sources = [str(ROOT / p) for p in paths]
    command = [sys.executable, __file__, "_collect", data_file, json.dumps(sources), "--", *pytest_args]
    print(f"coverage run: pytest {' '.join(pytest_args)}", flush=True)
    started = time.monotonic()
    finished = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail = finished.stdout.strip().splitlines()[-1:] or [""]
    print(f"  {tail[0]} ({time.monotonic() - started:.0f} s)", flush=True)
    outcomes = json.loads(Path(data_file + ".tests.json").read_text())
    failed = sorted(t for t, o in outcomes.items() if not o["passed"])
    if failed:
        print(f"  {len(failed)} test(s) failed unmutated and judge no mutant: {', '.join(failed[:10])}", flush=True)
    passing = {t for t, o in outcomes.items() if o["passed"]}
    data = coverage.CoverageData(basename=data_file)
    data.read()
    result = Coverage(durations={t: o["duration"] for t, o in outcomes.items()})
    for path in paths:
        by_line: dict[int, set[str]] = defaultdict(set)
        import_time: set[int] = set()
        for line, contexts in data.contexts_by_lineno(str(ROOT / path)).items():
            tests = {c for c in contexts if c in passing}
            by_line[line] |= tests
            if "" in contexts:
                import_time.add(line)
        every = set().union(*by_line.values()) if by_line else set()
        for line in import_time:  # run at import: any test that uses the module may see the change
            by_line[line] = set(every)
        result.lines[path] = dict(by_line)
    return result


def load_equivalents() -> dict[tuple[str, str, str], list[tuple[str, str]]]:
    """``file || code of the line || mutation || reason`` per line (``||``: code has ``|``, never ``||``);
    ``#`` starts a comment line. The code may be prefixed with ``Qualified.name :: `` to match only mutants in
    that function, and ``Qualified.name#2 :: `` only the second such mutant there (in line order), when the same
    code is equivalent in one place and not in another."""
    found: dict[tuple[str, str, str], list[tuple[str, str]]] = defaultdict(list)
    if not EQUIVALENTS.exists():
        return found
    for number, raw in enumerate(EQUIVALENTS.read_text().splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        parts = [p.strip() for p in raw.split(" || ", 3)]
        if len(parts) != 4 or not parts[3]:
            raise SystemExit(f"{EQUIVALENTS.name}:{number}: expected 'file || code || mutation || reason'")
        scope, _, code = parts[1].rpartition(" :: ")
        found[(parts[0], code, parts[2])].append((scope, parts[3]))
    return found


def equivalent(mutant: Mutant, key: tuple[str, str, str],
               equivalents: dict[tuple[str, str, str], list[tuple[str, str]]]) -> str | None:
    """The reason ``mutant`` is listed as equivalent, or ``None``."""
    for scope, reason in equivalents.get(key, ()):
        name, _, occurrence = scope.partition("#")
        if (not name or name == mutant.scope) and (not occurrence or int(occurrence) == mutant.occurrence):
            return reason
    return None


@dataclass
class Running:
    pid: int
    path: str
    mutant: Mutant
    tests: list[str]
    output: Path
    started: float
    deadline: float


def _start(path: str, mutant: Mutant, tests: list[str], cov: Coverage, factor: float, workdir: Path) -> Running:
    args = ["-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", "--no-header", *tests]
    output = workdir / f"mutant-{mutant.node}-{mutant.kind}-{time.monotonic_ns()}.log"
    started = time.monotonic()
    durations = {t: cov.durations.get(t, 0.0) for t in tests}
    limits = {t: TEST_ALLOWANCE + factor * d for t, d in durations.items()}
    pid = _fork_mutant(path, mutant, args, limits, output)
    # Room for one test to hang through both of its alarms (-x: the run stops at its failure).
    deadline = started + START_ALLOWANCE + 2 * TEST_ALLOWANCE + factor * sum(durations.values())
    return Running(pid, path, mutant, tests, output, started, deadline)


def _verdict(running: Running, exit_code: int | None) -> Result:
    """``exit_code`` is pytest's (None: the child was killed at its deadline)."""
    seconds = time.monotonic() - running.started
    count = len(running.tests)
    output = running.output.read_text(errors="replace") if running.output.exists() else ""
    running.output.unlink(missing_ok=True)
    if exit_code is None:
        return Result(running.mutant, "timeout", count, seconds, f"over {running.deadline - running.started:.0f} s")
    if exit_code == HUNG_EXIT:
        return Result(running.mutant, "timeout", count, seconds, "a test hung, and then its teardown")
    if exit_code == 0:
        return Result(running.mutant, "survived", count, seconds)
    if exit_code == 1:  # a test failed: the output names it
        failed = next((ln.split()[1] for ln in output.splitlines() if ln.startswith("FAILED ")), "")
        if HUNG in output:
            return Result(running.mutant, "timeout", count, seconds, f"{failed} ran over its time limit")
        return Result(running.mutant, "killed", count, seconds, failed)
    # 2: interrupted, e.g. a collection error (the mutated module failed to import); 3: an internal error, 4: a
    # usage error (pytest could not start: its aurelis plugin imports the core, so a core module that fails to
    # import stops pytest before any test). The unmutated run passed, so the mutant made the test command fail:
    # killed, as a user's test run would catch it. 5 (no test ran) or a signal says nothing about the mutant.
    last = output.strip().splitlines()[-1:] or [""]
    status = "killed" if exit_code in (2, 3, 4) else "error"
    return Result(running.mutant, status, count, seconds, f"pytest exit {exit_code}: {last[0][:80]}")


@contextlib.contextmanager
def _reaping(running: dict[int, Running]) -> Iterator[None]:
    """On the way out (an interrupt, a termination signal), end the children still running, with their groups."""
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        for pid in running:
            try:
                os.killpg(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass


def run_all(
    plans: list[tuple[str, Mutant, list[str]]], cov: Coverage, jobs: int, factor: float
) -> Iterator[tuple[str, Result]]:
    """Run the mutants, ``jobs`` children at a time; yields each result as it comes."""
    pending = list(reversed(plans))
    running: dict[int, Running] = {}
    with tempfile.TemporaryDirectory(prefix="aurelis-mutants-") as tmp, _reaping(running):
        workdir = Path(tmp)
        while pending or running:
            while pending and len(running) < jobs:
                path, mutant, tests = pending.pop()
                if not tests:
                    yield path, Result(mutant, "uncovered", note="no test runs this line")
                    continue
                child = _start(path, mutant, tests, cov, factor, workdir)
                running[child.pid] = child
            if not running:
                continue
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid:
                child = running.pop(pid)
                code = os.waitstatus_to_exitcode(status)
                yield child.path, _verdict(child, code if code >= 0 else 3)
                continue
            now = time.monotonic()
            for pid, child in list(running.items()):
                if now > child.deadline:
                    os.killpg(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    del running[pid]
                    yield child.path, _verdict(child, None)
            time.sleep(0.02)


def _line_filter(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    first, _, last = text.partition("-")
    return int(first), int(last or first)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    pytest_args = ["tests"]
    if "--" in argv:
        split = argv.index("--")
        argv, pytest_args = argv[:split], argv[split + 1:] or pytest_args
    if argv[:1] == ["_collect"]:
        return _collect_child(argv[1], json.loads(argv[2]), pytest_args)

    parser = argparse.ArgumentParser(
        prog="benchmarks/mutation.py", description="Mutation testing of the named modules (see the module docstring)."
    )
    parser.add_argument("modules", nargs="+", help="source files, e.g. plugins/breaker.py aurelis_core/_sse.py")
    parser.add_argument("--jobs", type=int, default=1, help="mutants run at once (default 1)")
    parser.add_argument("--timeout-factor", type=float, default=3.0,
                        help="a mutant's tests may take this many times their normal duration (default 3)")
    parser.add_argument("--lines", help="only mutants starting in this line range of each module, e.g. 120-160")
    parser.add_argument("--list", action="store_true", help="list the mutants and the tests each would run; run none")
    parser.add_argument("--json", help="also write every mutant's result to this file")
    options = parser.parse_args(argv)

    paths = []
    for module in options.modules:
        path = Path(module).resolve()
        if not path.is_file() or not path.is_relative_to(ROOT):
            parser.error(f"{module}: not a source file of this repository")
        paths.append(path.relative_to(ROOT).as_posix())
    equivalents = load_equivalents()
    lines_wanted = _line_filter(options.lines)

    with tempfile.TemporaryDirectory(prefix="aurelis-mutation-") as workdir:
        cov = collect_coverage(paths, pytest_args, Path(workdir))
    plans: list[tuple[str, Mutant, list[str]]] = []
    results: dict[str, list[Result]] = {p: [] for p in paths}
    used_equivalents: set[tuple[str, str, str]] = set()
    for path in paths:
        source = (ROOT / path).read_text()
        lines = source.splitlines()
        for mutant in mutants_of(source):
            if lines_wanted and not lines_wanted[0] <= mutant.line <= lines_wanted[1]:
                continue
            key = mutant.key(path, lines)
            reason = equivalent(mutant, key, equivalents)
            if reason is not None:
                used_equivalents.add(key)
                results[path].append(Result(mutant, "equivalent", note=reason))
                continue
            plans.append((path, mutant, cov.tests_for(path, mutant.line, mutant.end_line)))
    for key in sorted(set(equivalents) - used_equivalents):
        if key[0] in paths and not lines_wanted:
            print(f"note: no mutant matches the equivalent entry {' | '.join(key)}", flush=True)

    plans.sort(key=lambda plan: (paths.index(plan[0]), plan[1].line, plan[1].node))
    if options.list:
        for path, mutant, tests in plans:
            where = f"{mutant.scope or '-'}" + (f"#{mutant.occurrence}" if mutant.occurrence > 1 else "")
            print(f"{path}:{mutant.line}: {where} :: {mutant.description}  [{len(tests)} test(s)]")
        return 0

    print(f"{len(plans)} mutants to run, {options.jobs} at a time", flush=True)
    os.chdir(ROOT)
    _warm_up()
    started = time.monotonic()
    partial = Path(options.json + ".partial") if options.json else None
    for done, (path, result) in enumerate(run_all(plans, cov, max(1, options.jobs), options.timeout_factor), 1):
        results[path].append(result)
        if partial is not None:  # as they come: an interrupted run keeps what it found
            with partial.open("a") as out:
                out.write(json.dumps({"path": path, **_row(result)}) + "\n")
        if result.status not in ("killed", "timeout") or done % 25 == 0:
            print(f"  [{done}/{len(plans)} {time.monotonic() - started:.0f} s] {path}:{result.mutant.line} "
                  f"{result.mutant.description}: {result.status}", flush=True)
    report(results)
    if options.json:
        Path(options.json).write_text(json.dumps({p: [_row(r) for r in rs] for p, rs in results.items()}, indent=1))
    return 0


def _row(result: Result) -> dict[str, Any]:
    return {**result.mutant.__dict__, "status": result.status, "tests": result.tests,
            "seconds": round(result.seconds, 2), "note": result.note}


def _counts(results: list[Result]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for result in results:
        counts[result.status] += 1
    return counts


def score_of(results: list[Result]) -> float | None:
    counts = _counts(results)
    judged = len(results) - counts["equivalent"]
    return None if judged == 0 else (counts["killed"] + counts["timeout"]) / judged


def report(results: dict[str, list[Result]]) -> None:
    print()
    for path, module_results in results.items():
        counts = _counts(module_results)
        score = score_of(module_results)
        print(f"{path}: {len(module_results)} mutants, {counts['killed']} killed, "
              f"{counts['survived'] + counts['uncovered']} survived ({counts['uncovered']} on lines no test runs), "
              f"{counts['timeout']} timeouts, {counts['error']} errors, {counts['equivalent']} equivalent: "
              f"score {'n/a' if score is None else f'{score:.1%}'}")
        for result in sorted(module_results, key=lambda r: (r.mutant.line, r.mutant.node)):
            if result.status in ("survived", "uncovered", "error"):
                note = f"  ({result.note})" if result.note else ""
                print(f"    {result.status:9} {path}:{result.mutant.line}  {result.mutant.description}{note}")
    print()
    print(f"{'module':40} {'mutants':>8} {'killed':>7} {'survived':>9} {'timeout':>8} {'equiv':>6} {'score':>7}")
    for path, module_results in results.items():
        counts = _counts(module_results)
        score = score_of(module_results)
        print(f"{path:40} {len(module_results):>8} {counts['killed']:>7} "
              f"{counts['survived'] + counts['uncovered'] + counts['error']:>9} {counts['timeout']:>8} "
              f"{counts['equivalent']:>6} {'n/a' if score is None else f'{score:.1%}':>7}")


if __name__ == "__main__":
    sys.exit(main())
