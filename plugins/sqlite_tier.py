"""``sqlite``: the L3 cache tier, one file on local disk, shared by every process on the machine.

One table, one row per entry: the entry in the compact format of :mod:`aurelis_plugins._serialize`
(lz4-compressed by default, optionally sealed with AES-GCM), its expiry time, its size, and its hit count and
last hit (what eviction and warming rank by).

Performance choices:

- **WAL** journal, ``synchronous=NORMAL``: readers never wait for the writer, and a commit is not an fsync
  (a cache may lose its last writes in a power cut, never its consistency). ``busy_timeout`` makes a second
  process wait briefly for the write lock instead of failing.
- **reads** on the request path are one indexed ``SELECT``: sync clients run it on their own thread's
  connection (one ``sqlite3`` connection per thread; the ``sqlite3`` module caches the prepared statement),
  async clients through ``aiosqlite`` (one connection per event loop, its calls run on aiosqlite's thread, so
  the loop never blocks on the disk).
- **writes** (stores and hit counts) are written behind (:mod:`aurelis_plugins._writebehind`): many per
  transaction, never on the response's path. The async worker runs the same batch function in a worker
  thread (``asyncio.to_thread``): one thread hop and one transaction per batch, where ``aiosqlite`` would
  need a round trip per statement.
- **size cap**: when the stored bytes exceed ``max_bytes``, expired rows go first, then the least hit (oldest
  last hit among equals) until 90% of the cap is left, so the next writes do not evict again at once.

Encryption at rest: with ``encryption_key`` (or ``AURELIS_CACHE_KEY`` in the environment), each value is
sealed with AES-256-GCM, a random 96-bit nonce and the row's key as associated data (a value moved to another
row does not open). A value that does not open with the key (another key, tampering, a plaintext row) is a
miss, warned about once, never served. A file that is not a readable database is moved aside as
``<name>.corrupt-<timestamp>`` and a fresh one is made: a broken cache file is never fatal.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import attrs
from aurelis_plugins._validators import (
    PROBE,
    Invalid,
    at_rest_codec,
    file_path,
    positive,
    positive_int,
    writable_file_probe,
)

from aurelis_core import CacheEntry, ConfigError, RequestContext, hookimpl

from ._serialize import SerializeError, codec_named, dumps, loads
from ._tier import WarmConfig, WriteBehindTier
from ._writebehind import HitCounts, WriteBehind

try:
    import aiosqlite
except ImportError:  # pragma: no cover - depends on the installed extras
    raise ImportError("the sqlite plugin needs: pip install 'aurelis[sqlite]'") from None

__all__ = ["SQLiteConfig", "SQLiteTier", "WarmConfig"]

logger = logging.getLogger("aurelis")

KEY_ENV = "AURELIS_CACHE_KEY"
#: First byte of a sealed value; a plain value starts with the serialize format version (1), never this.
SEALED = 0xE1
_NONCE = 12

SCHEMA = """
CREATE TABLE IF NOT EXISTS aurelis_entries (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    expires REAL,
    size INTEGER NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0,
    last_hit REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS aurelis_entries_rank ON aurelis_entries (hits, last_hit);
CREATE INDEX IF NOT EXISTS aurelis_entries_expires ON aurelis_entries (expires);
"""
GET = "SELECT value FROM aurelis_entries WHERE key = ? AND (expires IS NULL OR expires > ?)"
UPSERT = (
    "INSERT INTO aurelis_entries (key, value, expires, size, hits, last_hit) VALUES (?, ?, ?, ?, 0, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires, size = excluded.size"
)
HIT = "UPDATE aurelis_entries SET hits = hits + ?, last_hit = ? WHERE key = ?"
TOP = (
    "SELECT key, value FROM aurelis_entries WHERE expires IS NULL OR expires > ? "
    "ORDER BY hits DESC, last_hit DESC LIMIT ?"
)
#: How often (seconds) a write batch also deletes expired rows.
PURGE_EVERY = 60.0



def _encryption_key(instance: Any, attribute: Any, value: str | None) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise Invalid(attribute.name, "a string", value, secret=True)
    try:
        parse_key(value, attribute.name)
    except ConfigError:
        raise Invalid(attribute.name, "32 bytes, written as 64 hex digits or as base64", value, secret=True) from None


@attrs.frozen
class SQLiteConfig:
    #: The cache file (its directory is made on first use). Not a directory.
    path: str = attrs.field(
        default=".aurelis/cache.sqlite3", validator=file_path, metadata={PROBE: writable_file_probe}
    )
    ttl: float | None = attrs.field(default=86400.0, validator=positive)
    max_bytes: int = attrs.field(default=512 * 1024 * 1024, validator=positive_int)
    codec: str = attrs.field(default="lz4", validator=at_rest_codec)
    #: 32 bytes as 64 hex digits or base64; default: ``AURELIS_CACHE_KEY``. Set: values are sealed (AES-GCM).
    encryption_key: str | None = attrs.field(default=None, repr=False, validator=_encryption_key)
    busy_timeout: float = attrs.field(default=1.0, validator=positive)
    queue_size: int = attrs.field(default=10_000, validator=positive_int)
    warm: WarmConfig = attrs.field(factory=WarmConfig)


def parse_key(text: str, where: str) -> bytes:
    """A 32-byte key from 64 hex digits or base64 (standard or URL-safe); :class:`ConfigError` otherwise."""
    text = text.strip()
    key: bytes | None = None
    if len(text) == 64:
        try:
            key = bytes.fromhex(text)
        except ValueError:
            key = None
    if key is None:
        try:
            key = base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError):
            key = None
    if key is None or len(key) != 32:
        raise ConfigError(
            f"{where}: the encryption key must be 32 bytes, written as 64 hex digits or as base64 "
            "(e.g. the output of: python -c \"import os, base64; print(base64.b64encode(os.urandom(32)).decode())\")"
        )
    return key


class _Sealer:
    """AES-256-GCM around each value, the row's key as associated data."""

    def __init__(self, key: bytes) -> None:
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError:
            raise ImportError("the sqlite plugin's encryption needs: pip install 'aurelis[encryption]'") from None
        self._aead = AESGCM(key)

    def seal(self, key: str, value: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return bytes((SEALED,)) + nonce + self._aead.encrypt(nonce, value, key.encode())

    def open(self, key: str, sealed: bytes) -> bytes | None:
        """The value, or ``None`` if it does not open with this key (or was never sealed)."""
        from cryptography.exceptions import InvalidTag

        if len(sealed) < 1 + _NONCE + 16 or sealed[0] != SEALED:
            return None
        try:
            return self._aead.decrypt(sealed[1 : 1 + _NONCE], sealed[1 + _NONCE :], key.encode())
        except InvalidTag:
            return None


#: A queued write: ("set", key, entry, expires or None) or ("hits", {key: count}, time).
Op = tuple[Any, ...]


class SQLiteTier(WriteBehindTier):
    """The ``sqlite`` plugin."""

    name = "sqlite"
    Config = SQLiteConfig

    def __init__(self, config: SQLiteConfig, pipeline: Any) -> None:
        self.config = config
        self.pipeline = pipeline
        self.path = Path(config.path)
        self._codec = codec_named(config.codec, "[sqlite]")
        key_text = config.encryption_key if config.encryption_key is not None else os.environ.get(KEY_ENV)
        self._sealer = None if key_text is None else _Sealer(
            parse_key(key_text, "[sqlite] encryption_key" if config.encryption_key is not None else KEY_ENV)
        )
        self._prepared = False
        self._prepare_lock = threading.Lock()
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._adb: Any = None
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._aconnecting: asyncio.Task[Any] | None = None
        self._warned_unopenable = False
        self._stored_bytes = 0
        self._last_purge = time.monotonic()
        self.queue: WriteBehind[Op] = WriteBehind(
            self.name, self._write, self._awrite,
            on_error=self._write_failed, on_drop=self._dropped, maxsize=config.queue_size,
        )
        self.hits = HitCounts(self.queue)

    # --- the file and its connections ---------------------------------------------------------------------------

    def _prepare(self) -> None:
        """Make the file usable once per process: directory, schema, WAL; move a corrupt file aside."""
        with self._prepare_lock:
            if self._prepared:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._init_file()
            except sqlite3.DatabaseError as exc:
                aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
                os.replace(self.path, aside)
                for suffix in ("-wal", "-shm"):
                    Path(f"{self.path}{suffix}").unlink(missing_ok=True)
                logger.warning(
                    "aurelis: cache file %s is unreadable (%s); moved it to %s and started a new one",
                    self.path, exc, aside,
                )
                self._init_file()
            self._prepared = True

    def _init_file(self) -> None:
        conn = sqlite3.connect(self.path, timeout=self.config.busy_timeout)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(SCHEMA)
            (self._stored_bytes,) = conn.execute("SELECT COALESCE(SUM(size), 0) FROM aurelis_entries").fetchone()
        finally:
            conn.close()

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection (sqlite3 connections are cheap to keep, costly to share across threads)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            self._prepare()
            conn = sqlite3.connect(self.path, timeout=self.config.busy_timeout, check_same_thread=False)
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
            self._connections.append(conn)
        return conn

    async def _adb_of_loop(self) -> Any:
        """The aiosqlite connection of the running loop, opened once (concurrent first callers share it)."""
        loop = asyncio.get_running_loop()
        if self._aloop is not loop:
            self._aloop = loop
            self._aconnecting = loop.create_task(self._aconnect())
        try:
            return await self._aconnecting  # type: ignore[misc]
        except BaseException:
            self._aloop = None  # try again on the next call
            raise

    async def _aconnect(self) -> Any:
        if not self._prepared:
            await asyncio.to_thread(self._prepare)
        pending = aiosqlite.connect(self.path, timeout=self.config.busy_timeout)
        # aiosqlite's worker thread is not a daemon: a pipeline its user never closed would keep the whole
        # process from exiting. The thread holds no unflushed state of ours (writes commit per batch), so it
        # may die with the process.
        pending._thread.daemon = True
        db = await pending
        self._adb = db
        return db

    # --- hooks -------------------------------------------------------------------------------------------------

    @hookimpl
    def aurelis_cache_get(self, ctx: RequestContext) -> Any:
        key: str = ctx.key  # type: ignore[assignment]
        if ctx.is_async:
            return self._aget(key)
        row = self._conn().execute(GET, (key, time.time())).fetchone()
        return None if row is None else self._found(key, row[0], False)

    async def _aget(self, key: str) -> CacheEntry | None:
        db = await self._adb_of_loop()
        rows = await db.execute_fetchall(GET, (key, time.time()))
        return self._found(key, rows[0][0], True) if rows else None

    def _found(self, key: str, value: bytes, is_async: bool) -> CacheEntry | None:
        entry = self._decode(key, value)
        if entry is not None:
            self.hits.add(key, is_async)
        return entry

    def _decode(self, key: str, value: bytes) -> CacheEntry | None:
        if self._sealer is not None:
            opened = self._sealer.open(key, value)
            if opened is None:
                if not self._warned_unopenable:
                    self._warned_unopenable = True
                    logger.warning(
                        "aurelis: cache file %s holds entries that do not decrypt with the configured key "
                        "(another key, or written unencrypted); they are treated as misses", self.path,
                    )
                return None
            value = opened
        try:
            return loads(value)
        except SerializeError:
            return None

    @hookimpl
    def aurelis_cache_set(self, ctx: RequestContext, entry: CacheEntry, promote: bool) -> None:
        ttl = entry.ttl if entry.ttl is not None else self.config.ttl
        expires = None if ttl is None else entry.created + ttl
        if expires is not None and expires <= time.time():
            return
        self.queue.put(("set", ctx.key, entry, expires), ctx.is_async)

    async def _aclose_async(self) -> None:
        db, self._adb, self._aloop = self._adb, None, None
        if db is not None:
            await db.close()

    def _close_sync(self) -> None:
        connections, self._connections = self._connections, []
        self._local = threading.local()
        for conn in connections:
            conn.close()
        db, self._adb, self._aloop = self._adb, None, None
        if db is not None:
            # Opened by an async client, closed from sync code: its loop may be gone, so ask the worker
            # thread to close the connection and stop rather than await it.
            db.stop()

    # --- writing -----------------------------------------------------------------------------------------------

    def _write(self, batch: list[Op]) -> None:
        """Write a batch in one transaction, then keep the file under ``max_bytes``."""
        now = time.time()
        rows: list[tuple[Any, ...]] = []
        hits: list[tuple[Any, ...]] = []
        for op in batch:
            if op[0] == "set":
                key, entry, expires = op[1], op[2], op[3]
                value = dumps(entry, self._codec)
                if self._sealer is not None:
                    value = self._sealer.seal(key, value)
                rows.append((key, value, expires, len(value), now))
                self._stored_bytes += len(value)
            else:
                hits.extend((count, op[2], key) for key, count in op[1].items())
        conn = self._conn()
        with conn:
            if rows:
                conn.executemany(UPSERT, rows)
            if hits:
                conn.executemany(HIT, hits)
            if self._stored_bytes > self.config.max_bytes or time.monotonic() - self._last_purge > PURGE_EVERY:
                self._evict(conn, now)

    async def _awrite(self, batch: list[Op]) -> None:
        await asyncio.to_thread(self._write, batch)

    def _evict(self, conn: sqlite3.Connection, now: float) -> None:
        # The running byte count only grows between checks (replaced rows are counted twice, and other
        # processes write too): recount before evicting anything.
        self._last_purge = time.monotonic()
        conn.execute("DELETE FROM aurelis_entries WHERE expires <= ?", (now,))
        (stored,) = conn.execute("SELECT COALESCE(SUM(size), 0) FROM aurelis_entries").fetchone()
        if stored > self.config.max_bytes:
            target = stored - int(self.config.max_bytes * 0.9)
            victims = []
            freed = 0
            for key, size in conn.execute("SELECT key, size FROM aurelis_entries ORDER BY hits, last_hit"):
                victims.append((key,))
                freed += size
                if freed >= target:
                    break
            conn.executemany("DELETE FROM aurelis_entries WHERE key = ?", victims)
            stored -= freed
        self._stored_bytes = stored

    # --- warming, stats, clearing (also used by ``aurelis cache``) ----------------------------------------------

    def top(self, count: int) -> list[tuple[str, CacheEntry]]:
        """The ``count`` most hit live entries, most hit first, as (cache key, entry)."""
        rows = self._conn().execute(TOP, (time.time(), count)).fetchall()
        return self._decode_rows(rows)

    async def atop(self, count: int) -> list[tuple[str, CacheEntry]]:
        db = await self._adb_of_loop()
        return self._decode_rows(await db.execute_fetchall(TOP, (time.time(), count)))

    def _decode_rows(self, rows: Any) -> list[tuple[str, CacheEntry]]:
        found = []
        for key, value in rows:
            entry = self._decode(key, value)
            if entry is not None:
                found.append((key, entry))
        return found

    def put(self, key: str, entry: CacheEntry) -> bool:
        """Store ``entry`` under cache key ``key`` now (not written behind); ``False`` if it has expired."""
        ttl = entry.ttl if entry.ttl is not None else self.config.ttl
        expires = None if ttl is None else entry.created + ttl
        if expires is not None and expires <= time.time():
            return False
        self._write([("set", key, entry, expires)])
        return True

    def stats(self) -> dict[str, Any]:
        """What the file holds: live and expired entries, stored bytes, hits, the file's size on disk."""
        conn = self._conn()
        now = time.time()
        entries, stored, hits = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0), COALESCE(SUM(hits), 0) FROM aurelis_entries "
            "WHERE expires IS NULL OR expires > ?", (now,),
        ).fetchone()
        (expired,) = conn.execute("SELECT COUNT(*) FROM aurelis_entries WHERE expires <= ?", (now,)).fetchone()
        file_bytes = sum(
            p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists()
        )
        return {"entries": entries, "bytes": stored, "hits": hits, "expired": expired, "file_bytes": file_bytes}

    def clear(self) -> int:
        """Delete every entry and give the space back to the file system; returns how many were deleted."""
        conn = self._conn()
        with conn:
            deleted = conn.execute("DELETE FROM aurelis_entries").rowcount
        conn.execute("VACUUM")
        self._stored_bytes = 0
        return int(deleted)
