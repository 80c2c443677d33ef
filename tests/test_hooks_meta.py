"""Meta-tests: ``hookspecs.STAGES`` is the one table of the hooks, and everything else agrees with it.

Every hookspec has a row and every row a hookspec; each docstring states the rule, the I/O and the style its row
says; pluggy's ``firstresult`` markers and the pipeline's stage snapshot follow it; the documentation's hook table
(docs/concepts/pipeline.md) is the table generated from it (the test prints the expected table when they differ),
and its contract table lists every hook; every hook is exercised by a test.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import attrs
import pluggy
import pytest

from aurelis_core import ConfigError, Pipeline, hookimpl, hookspecs
from aurelis_core._plugins import Stages
from aurelis_core.hookspecs import ASYNC_OR_SYNC, EXACTLY_ONE, STAGES, SYNC_ONLY, Stage

ROOT = Path(__file__).resolve().parent.parent
HOOKS = [name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("aurelis_")]
#: The documentation: README.md and every page of docs/, where the hook tables may live (each exactly once).
DOCS = "\n".join(path.read_text() for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))])


def signature(row: Stage) -> str:
    """``aurelis_admit(ctx, attempt)``: the hook as the docs name it, with the hookspec's own parameters."""
    return f"{row.hook}({', '.join(inspect.signature(getattr(hookspecs, row.hook)).parameters)})"


def hook_table() -> str:
    """The docs' hook table, as STAGES says it."""
    lines = ["| hook | what for | who runs | when | written as | I/O |", "|---|---|---|---|---|---|"]
    for row in STAGES:
        io = "may" if row.io else "no"
        lines.append(f"| `{signature(row)}` | {row.purpose} | {row.runs.text} | {row.when} | {row.style.text} | {io} |")
    return "\n".join(lines)


def docs_table(header: str) -> list[str]:
    """The lines of the docs' table that starts with ``header`` (README.md and docs/ hold it once)."""
    assert DOCS.count(header) == 1, f"README.md and docs/ should hold one table starting {header!r}"
    lines = DOCS[DOCS.index(header):].splitlines()
    return lines[: next((i for i, line in enumerate(lines) if not line.startswith("|")), len(lines))]


def test_there_are_hooks() -> None:
    assert {"aurelis_normalize", "aurelis_cache_get", "aurelis_cache_set", "aurelis_route", "aurelis_compress",
            "aurelis_send", "aurelis_observe"} <= set(HOOKS)


def test_every_hookspec_has_a_row_and_every_row_a_hookspec_in_the_same_order() -> None:
    rows = [row.hook for row in STAGES]
    assert len(set(rows)) == len(rows), "a hook has two rows"
    defined = sorted(HOOKS, key=lambda name: inspect.getsourcelines(getattr(hookspecs, name))[1])
    assert rows == defined, "STAGES and the hookspecs below it should list the same hooks, in the same order"
    assert all(hookspecs.stage(row.hook) is row for row in STAGES)


@pytest.mark.parametrize("row", STAGES, ids=lambda row: row.name)
def test_every_docstring_states_its_rows_convention(row: Stage) -> None:
    doc = " ".join((inspect.getdoc(getattr(hookspecs, row.hook)) or "").split())
    assert doc, f"{row.hook} has no docstring"
    assert row.runs.says in doc, f"{row.hook}: STAGES says {row.runs.text!r}; say {row.runs.says!r}"
    assert ("May do I/O" if row.io else "No I/O") in doc, f"{row.hook}: may it do I/O?"
    assert row.style.says in doc, f"{row.hook}: the docstring should say {row.style.says!r}"


@pytest.mark.parametrize("row", STAGES, ids=lambda row: row.name)
def test_a_hook_that_may_do_io_may_be_async_and_only_those(row: Stage) -> None:
    # A no-I/O hook runs on the event loop of async clients: it must be a plain, quick ``def``.
    assert row.style is (ASYNC_OR_SYNC if row.io else SYNC_ONLY)


def test_pluggy_markers_agree_with_the_table() -> None:
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for row in STAGES:
        spec = getattr(pm.hook, row.hook).spec
        assert spec is not None and spec.opts["firstresult"] is row.runs.firstresult, row.hook


def test_the_stage_snapshot_has_a_field_for_every_row() -> None:
    fields = attrs.fields_dict(Stages)
    missing = [row.name for row in STAGES if row.name not in fields]
    assert not missing, f"Stages (aurelis_core/_plugins.py) has no field for: {missing}"
    stages = Pipeline({})._stages
    for row in STAGES:
        value = getattr(stages, row.name)
        assert callable(value) or value is None if row.runs is EXACTLY_ONE else isinstance(value, tuple), row.name


@pytest.mark.parametrize("row", [row for row in STAGES if row.runs is EXACTLY_ONE], ids=lambda row: row.name)
def test_a_stage_the_table_says_exactly_one_refuses_a_second_plugin(row: Stage) -> None:
    def plugin(name: str) -> object:
        implementation = hookimpl(specname=row.hook)(lambda self, *args: None)
        return type(name, (), {"name": name, "impl": implementation})()

    with pytest.raises(ConfigError, match=f"only one {row.role} may be enabled, got: one, two"):
        Pipeline({}, plugins=[plugin("one"), plugin("two")])
    pipeline = Pipeline({}, plugins=[plugin("one")])
    before = pipeline._stages
    with pytest.raises(ConfigError, match=f"only one {row.role}"):
        pipeline.register(plugin("two"), "two")
    # Refused whole: not left registered, and the stages the requests run are the ones before.
    assert pipeline.pm.get_plugin("two") is None and "two" not in pipeline.plugin_origins
    assert pipeline._stages is before


def test_docs_hook_table_is_the_one_stages_generates() -> None:
    expected = hook_table()
    found = "\n".join(docs_table("| hook | what for |"))
    assert found == expected, f"the docs' hook table differs from STAGES; it should read:\n\n{expected}\n"


def test_docs_contract_table_lists_every_hook_in_table_order() -> None:
    rows = docs_table("| hook | an implementation must |")[2:]
    assert [row.split("|")[1].strip() for row in rows] == [f"`{signature(row)}`" for row in STAGES]


def test_every_hook_is_exercised_by_a_test() -> None:
    sources = "".join(
        p.read_text() for p in (ROOT / "tests").glob("test_*.py") if p.name != Path(__file__).name
    )
    missing = [name for name in HOOKS if f"def {name}(" not in sources]
    assert not missing, f"hooks no test implements: {missing}"


@pytest.mark.parametrize("attribute", sorted(hookspecs.PLUGIN_ATTRIBUTES))
def test_every_plugin_attribute_is_documented_and_exercised_by_a_test(attribute: str) -> None:
    doc = inspect.getdoc(hookspecs) or ""
    assert f"- ``{attribute}``:" in doc, f"hookspecs' docstring should say what ``{attribute}`` holds and when"
    sources = "".join(
        p.read_text() for p in (ROOT / "tests").glob("test_*.py") if p.name != Path(__file__).name
    )
    assert f"    {attribute} = " in sources, f"no test plugin contributes ``{attribute}``"
