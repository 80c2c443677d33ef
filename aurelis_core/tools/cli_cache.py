"""``aurelis cache stats|warm|clear``: look at and manage the cache tiers a config enables.

The commands build the config's pipeline (so they see exactly the tiers, files, prefixes and keys the
application uses) and talk to each tier that can be managed from outside the application's process, a
:class:`~aurelis_core.plugin.CacheTier` (``stats()``, ``top(n)``, ``put(key, entry)``, ``clear()``), whatever its
plugin is called: ``redis`` and ``sqlite`` are, a third-party tier may be. The ``memory`` tier lives inside each
application process, so there is nothing of it to show or clear from here (and it is no ``CacheTier``).

- ``stats``: entries, bytes and hit counts per tier (``--json`` for a machine-readable form).
- ``warm``: copy each tier's ``--top`` most hit live entries into the persistent tiers above it (e.g. SQLite
  into Redis), so a fresh Redis starts with what this machine's users asked most. Keys are copied as they are
  (tenant-scoped digests), so every entry stays in its tenant's scope.
- ``clear``: delete every entry from the tiers (``--tier`` to pick some).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from aurelis_core.config import ConfigError
from aurelis_core.plugin import CacheTier

__all__ = ["add_cache_commands", "find_config"]

Subparsers = Any  # argparse._SubParsersAction is private; its add_parser is all we use


def find_config(given: str | None) -> str | Path:
    """The config a command uses: ``--config``, else ``$AURELIS_CONFIG``, else the shipped
    ``aurelis_core/examples/aurelis.toml`` (what ``aurelis replay`` runs with). One rule for every command, so
    ``aurelis cache clear`` after ``aurelis replay --simulate`` clears the file that run filled."""
    if given:
        return given
    from_env = os.environ.get("AURELIS_CONFIG")
    if from_env:
        return from_env
    from .replay import example_path

    return example_path("aurelis.toml")


def _persistent_tiers(pipeline: Any) -> list[tuple[str, CacheTier]]:
    """``(name, tier)`` of the pipeline's tiers that are a :class:`CacheTier`, in the order lookups ask them."""
    return [
        (name, tier)
        for name, tier in zip(pipeline.tiers, pipeline.cache_tiers(), strict=True)
        if isinstance(tier, CacheTier)
    ]


def _open(args: argparse.Namespace) -> Any:
    from aurelis_core import Pipeline

    pipeline = Pipeline(find_config(args.config))
    tiers = _persistent_tiers(pipeline)
    if not tiers:
        pipeline.close()
        raise ConfigError(f"{pipeline.config.source}: no persistent cache tier (redis, sqlite) is enabled")
    chosen = getattr(args, "tier", None)
    if chosen:
        names = [name for name, _ in tiers]
        unknown = sorted(set(chosen) - set(names))
        if unknown:
            pipeline.close()
            raise ConfigError(f"--tier {', '.join(unknown)}: not an enabled tier; valid: {', '.join(names)}")
    return pipeline


def cmd_cache(args: argparse.Namespace) -> int:
    try:
        pipeline = _open(args)
    except (ConfigError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    status = 0
    try:
        tiers = _persistent_tiers(pipeline)
        if args.cache_command == "stats":
            report = {name: tier.stats() for name, tier in tiers}
            if args.json:
                print(json.dumps(report, indent=2))
            else:
                for name, figures in report.items():
                    print(f"{name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))
        elif args.cache_command == "warm":
            for index, (name, tier) in enumerate(tiers):
                above = tiers[:index]
                if not above:
                    continue
                entries = tier.top(args.top)
                for upper_name, upper in above:
                    copied = sum(1 for key, entry in entries if upper.put(key, entry))
                    print(f"{name} -> {upper_name}: copied {copied} of the {len(entries)} most hit entries")
            if len(tiers) == 1:
                print(f"only one persistent tier ({tiers[0][0]}): nothing to warm from the command line; "
                      "set warm = {on_start = true} in its table to warm 'memory' when the application starts")
        else:
            chosen = set(args.tier or [name for name, _ in tiers])
            for name, tier in tiers:
                if name in chosen:
                    try:
                        print(f"{name}: deleted {tier.clear()} entries")
                    except RuntimeError as exc:  # the tier refuses its store (a file it did not create...)
                        print(f"error: {name}: {exc}", file=sys.stderr)
                        status = 1
    finally:
        pipeline.close()
    return status


def add_cache_commands(subparsers: Subparsers) -> None:
    """Register ``aurelis cache stats|warm|clear`` on the main CLI's subparsers."""
    cache = subparsers.add_parser("cache", help="inspect and manage the configured cache tiers")
    commands = cache.add_subparsers(dest="cache_command", required=True, metavar="{stats,warm,clear}")
    helps = {
        "stats": "entries, bytes and hits per tier",
        "warm": "copy each tier's most hit entries into the persistent tiers above it",
        "clear": "delete every entry from the tiers",
    }
    for name, text in helps.items():
        parser = commands.add_parser(name, help=text)
        parser.add_argument(
            "--config", default=None, help="aurelis.toml or pyproject.toml (default: $AURELIS_CONFIG, else the "
            "shipped aurelis.toml that aurelis replay uses)"
        )
        parser.set_defaults(func=cmd_cache)
        if name == "stats":
            parser.add_argument("--json", action="store_true", help="print JSON")
        elif name == "warm":
            parser.add_argument("--top", type=int, default=1000, help="entries per tier (default 1000)")
        else:
            parser.add_argument("--tier", action="append", help="only this tier (repeatable; default all)")
