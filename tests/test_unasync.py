"""The sync twins of the async I/O modules are generated from them (``aurelis_core._unasync``): this is the check
that no twin was edited by hand or left behind by a change to its source, and the generator's own tests."""

from __future__ import annotations

import importlib
import inspect
import shutil
import textwrap
from pathlib import Path

import pytest

from aurelis_core import _unasync
from aurelis_core._unasync import TWINS, Twin, check, generate, main, write

ROOT = Path(__file__).resolve().parent.parent


def test_every_twin_is_generated_from_its_async_source() -> None:
    stale = check()
    assert stale == [], f"edited by hand or out of date with their async source: {stale}; run: {_unasync.COMMAND}"


def test_every_twin_says_it_is_generated_and_from_what() -> None:
    for twin in TWINS:
        text = (ROOT / twin.target).read_text(encoding="utf-8")
        assert text.startswith(f"# Generated from {twin.source} by aurelis_core._unasync")
        assert "do not edit" in text.splitlines()[0]


@pytest.mark.parametrize("twin", TWINS, ids=lambda twin: twin.target)
def test_a_twin_has_the_same_functions_as_its_source_without_async(twin: Twin) -> None:
    def module(path: str) -> object:
        return importlib.import_module("aurelis_plugins." + Path(path).stem)

    source, target = module(twin.source), module(twin.target)

    def functions(mod: object) -> dict[str, object]:
        return {
            name: value for name, value in vars(mod).items()
            if inspect.isfunction(value) and value.__module__ == mod.__name__  # type: ignore[attr-defined]
        }

    async_functions, sync_functions = functions(source), functions(target)
    assert async_functions and sorted(async_functions) == sorted(sync_functions)
    for name, function in async_functions.items():
        twin_function = sync_functions[name]
        assert inspect.iscoroutinefunction(function), name
        assert not inspect.iscoroutinefunction(twin_function), name
        assert str(inspect.signature(function)) == str(inspect.signature(twin_function)), name  # type: ignore[arg-type]
    text = (ROOT / twin.target).read_text(encoding="utf-8")
    assert "await " not in text and "async def" not in text


def _checkout_copy(tmp_path: Path, twin: Twin) -> Path:
    for path in (twin.source, twin.target):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / path, tmp_path / path)
    return tmp_path


def test_the_check_fails_on_a_twin_edited_by_hand_and_regenerating_repairs_it(tmp_path: Path) -> None:
    twin = TWINS[0]
    root = _checkout_copy(tmp_path, twin)
    target = root / twin.target
    target.write_text(target.read_text(encoding="utf-8").replace("return", "return  # patched", 1), encoding="utf-8")
    assert check([twin], root) == [twin.target]
    assert write([twin], root) == [twin.target]
    assert check([twin], root) == []
    assert target.read_text(encoding="utf-8") == (ROOT / twin.target).read_text(encoding="utf-8")
    assert write([twin], root) == []  # nothing to change: nothing rewritten


def test_the_check_fails_when_the_source_changed_and_the_twin_was_not_regenerated(tmp_path: Path) -> None:
    twin = TWINS[0]
    root = _checkout_copy(tmp_path, twin)
    source = root / twin.source
    source.write_text(source.read_text(encoding="utf-8") + "\n\nasync def added() -> None:\n    pass\n", "utf-8")
    assert check([twin], root) == [twin.target]
    (root / twin.target).unlink()
    assert check([twin], root) == [twin.target]  # a missing twin is stale too


def test_the_command_line_check_exits_1_naming_the_stale_twins(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for twin in TWINS:
        _checkout_copy(tmp_path, twin)
    assert main(["--check", "--root", str(tmp_path)]) == 0
    stale = TWINS[-1]
    (tmp_path / stale.target).write_text("", encoding="utf-8")
    assert main(["--check", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert stale.target in err and "python -m aurelis_core._unasync" in err
    assert TWINS[0].target not in err
    assert main(["--root", str(tmp_path)]) == 0
    assert f"wrote {stale.target}" in capsys.readouterr().out
    assert main(["--check", "--root", str(tmp_path)]) == 0


def test_generation_drops_async_and_await_and_renames_names_but_not_comments(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "_thing_async.py").write_text(textwrap.dedent('''\
        """Docstring."""
        from asyncio import Queue
        from ._modes import ASYNC


        class AsyncThing:
            async def __aenter__(self) -> AsyncThing:
                return self

            async def run(self, items: Queue[int]) -> None:
                # aclose() in a comment stays as written
                async with self.lock:
                    async for item in self.each(await items.get()):
                        await self.aclose(item, ASYNC)
                total = [await x for x in self.pending]
                self.aclosed = await  self.count()
        '''), encoding="utf-8")
    twin = Twin("pkg/_thing_async.py", "pkg/_thing_sync.py", {"asyncio": "queue", "aclose": "close", "ASYNC": "SYNC"})
    text = generate(twin, tmp_path)
    assert text == _unasync.header(twin) + textwrap.dedent('''\
        """Docstring."""
        from queue import Queue
        from ._modes import SYNC


        class SyncThing:
            def __enter__(self) -> SyncThing:
                return self

            def run(self, items: Queue[int]) -> None:
                # aclose() in a comment stays as written
                with self.lock:
                    for item in self.each(items.get()):
                        self.close(item, SYNC)
                total = [x for x in self.pending]
                self.aclosed = self.count()
        ''')
    assert not (tmp_path / "pkg" / "_thing_sync.py").exists()  # generate() writes nothing into the checkout
