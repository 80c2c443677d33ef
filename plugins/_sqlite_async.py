"""The ``sqlite`` tier's reads, written once.

``_sqlite_async`` (for async clients) is the source; ``_sqlite_sync`` (for sync clients) is generated from it by
``python -m aurelis_core._unasync``. The connection differs by mode, its calls do not: a sync client reads on its
thread's ``sqlite3`` connection (``SQLiteTier._conn``), an async one on its event loop's ``aiosqlite`` connection
(``SQLiteTier._adb_of_loop``), and both have ``execute_fetchall``. What differs on purpose stays in
:class:`~aurelis_plugins.sqlite_tier.SQLiteTier`: opening and closing connections, and writes (a batch is one
transaction on a worker thread, for async clients too).
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

from ._writebehind import ASYNC
from .sqlite_tier import GET, TOP, _Refused

if TYPE_CHECKING:
    from aurelis_core.plugin import CacheEntry

    from .sqlite_tier import SQLiteTier


async def get(tier: SQLiteTier, key: str) -> CacheEntry | None:
    """The live entry stored under cache key ``key``, or ``None`` (also when the file is refused, or damaged and
    being recovered); any other database error is raised (the pipeline counts it as a miss)."""
    generation = tier._generation
    try:
        db = await tier._adb_of_loop()
        rows = await db.execute_fetchall(GET, (key, tier.wall_clock()))
    except _Refused:
        tier._bypassed()
        return None
    except sqlite3.DatabaseError as exc:
        if await tier._adatabase_error(exc, generation):
            return None
        raise
    return tier._found(key, rows[0][0], ASYNC) if rows else None


async def top(tier: SQLiteTier, count: int) -> list[tuple[str, CacheEntry]]:
    """The ``count`` most hit live entries, most hit first, as (cache key, entry); none from a refused file."""
    try:
        db = await tier._adb_of_loop()
    except _Refused:
        return []
    return tier._decode_rows(await db.execute_fetchall(TOP, (tier.wall_clock(), count)))
