"""Generate the sync twins of the async I/O modules: the async code is the one source, the sync code is derived.

A hand-kept sync/async pair is a place where a fix lands on one side only. So the I/O of the slow cache tiers, the
write-behind worker and the shared rate limiter is written once, async, in ``plugins/_*_async.py``, and its sync
twin ``plugins/_*_sync.py`` is generated from it by the ``unasync`` library (the tool httpcore and hishel use):
``async``/``await`` are dropped, and names are renamed token by token (``_adb_of_loop`` -> ``_conn``...; never
inside comments). Each generated file starts with a header saying where it comes from; do not edit it, edit the
source and regenerate::

    python -m aurelis_core._unasync            # rewrite every twin
    python -m aurelis_core._unasync --check    # exit 1 (naming the stale twins) if any differs from its source

``tests/test_unasync.py`` runs the check inside the test command. What deliberately differs between the modes
(how clients are made and closed, threads against tasks) stays hand-written in the tiers, with a comment saying
so. This module is a developer tool: it needs the ``unasync`` package (the ``test`` extra) and a source checkout,
and nothing in the library imports it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

__all__ = ["TWINS", "Twin", "check", "generate", "main", "write"]

#: The checkout this module lives in (``aurelis_core/..``): where the twins' paths are relative to.
ROOT = Path(__file__).resolve().parent.parent


class Twin(NamedTuple):
    """An async source module, its generated sync twin (paths relative to the checkout), and the names renamed
    on top of ``unasync``'s own (``__aenter__`` -> ``__enter__``, ``AsyncX`` -> ``SyncX``...)."""

    source: str
    target: str
    renames: Mapping[str, str]


#: ``ASYNC``/``SYNC`` (``aurelis_plugins._writebehind``) are the ``is_async`` flag's two values, so a twin passes
#: the flag of its own mode.
_MODE = {"ASYNC": "SYNC"}

TWINS: tuple[Twin, ...] = (
    Twin(
        "plugins/_redis_async.py",
        "plugins/_redis_sync.py",
        {
            **_MODE, "async_client": "sync_client", "_aflight_script": "_flight_script", "_alistener": "_listener",
            "asyncio": "time",
        },
    ),
    Twin(
        "plugins/_sqlite_async.py",
        "plugins/_sqlite_sync.py",
        {**_MODE, "_adb_of_loop": "_conn", "_adatabase_error": "_database_error"},
    ),
    Twin("plugins/_tier_async.py", "plugins/_tier_sync.py", {"atop": "top"}),
    Twin("plugins/_writebehind_async.py", "plugins/_writebehind_sync.py", {"asyncio": "queue", "_awrite": "_write"}),
    Twin(
        "plugins/_gcra_async.py",
        "plugins/_gcra_sync.py",
        {"_async_script": "_sync_script"},
    ),
)

COMMAND = "python -m aurelis_core._unasync"


def header(twin: Twin) -> str:
    return (
        f"# Generated from {twin.source} by aurelis_core._unasync (unasync); do not edit.\n"
        f"# Edit the source, then run: {COMMAND}\n"
    )


def generate(twin: Twin, root: Path = ROOT) -> str:
    """The text of ``twin``'s sync module, generated from its source under ``root``."""
    try:
        import unasync  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - depends on the installed extras
        raise ImportError("generating the sync twins needs: pip install unasync (in the 'test' extra)") from None
    source = root / twin.source
    with tempfile.TemporaryDirectory(prefix="aurelis-unasync-") as scratch:
        # unasync writes next to its input, so it runs on a copy: generating never touches the checkout.
        copy = Path(scratch, twin.source)
        copy.parent.mkdir(parents=True)
        shutil.copyfile(source, copy)
        unasync.unasync_files([str(copy)], [unasync.Rule(twin.source, twin.target, dict(twin.renames))])
        body = Path(scratch, twin.target).read_text(encoding="utf-8")
    return header(twin) + body


def write(twins: Sequence[Twin] = TWINS, root: Path = ROOT) -> list[str]:
    """Regenerate every twin under ``root``; returns the targets whose text changed."""
    changed = []
    for twin in twins:
        text = generate(twin, root)
        target = root / twin.target
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            target.write_text(text, encoding="utf-8")
            changed.append(twin.target)
    return changed


def check(twins: Sequence[Twin] = TWINS, root: Path = ROOT) -> list[str]:
    """The targets under ``root`` that are missing or differ from what their source generates."""
    stale = []
    for twin in twins:
        target = root / twin.target
        if not target.exists() or target.read_text(encoding="utf-8") != generate(twin, root):
            stale.append(twin.target)
    return stale


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description="Generate the sync twins of the async I/O modules.")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a twin is out of date")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.check:
        stale = check(root=args.root)
        for target in stale:
            print(f"{target} is out of date with its async source; run: {COMMAND}", file=sys.stderr)
        return 1 if stale else 0
    for target in write(root=args.root):
        print(f"wrote {target}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
