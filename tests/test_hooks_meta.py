"""Meta-tests: every hookspec states its calling convention, is documented in README, and is exercised by
a test (a test module implements or names it)."""

from __future__ import annotations

import inspect
from pathlib import Path

from aurelis_core import hookspecs

ROOT = Path(__file__).resolve().parent.parent
HOOKS = sorted(name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("aurelis_"))


def test_there_are_hooks() -> None:
    assert {"aurelis_normalize", "aurelis_cache_get", "aurelis_cache_set", "aurelis_route", "aurelis_compress",
            "aurelis_send", "aurelis_observe"} <= set(HOOKS)


def test_every_hook_states_its_calling_convention() -> None:
    for name in HOOKS:
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        assert doc, f"{name} has no docstring"
        assert any(word in doc for word in ("All implementations", "First answer", "Exactly one", "One implementation",
                                            "All tiers")), f"{name}: which implementations run?"
        assert "I/O" in doc, f"{name}: may it do I/O?"


def test_every_hook_is_documented_in_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [name for name in HOOKS if name not in readme]
    assert not missing, f"hooks not documented in README.md: {missing}"


def test_every_hook_is_exercised_by_a_test() -> None:
    sources = "".join(
        p.read_text() for p in (ROOT / "tests").glob("test_*.py") if p.name != Path(__file__).name
    )
    missing = [name for name in HOOKS if f"def {name}(" not in sources]
    assert not missing, f"hooks no test implements: {missing}"
