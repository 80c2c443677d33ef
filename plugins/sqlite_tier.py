"""``sqlite``: the L3 cache tier, one file on local disk, shared by every process on the machine.

One table, one row per entry: the entry in the compact format of :mod:`aurelis_plugins._serialize`
(lz4-compressed by default, tagged with a MAC, or sealed with AES-GCM), its expiry time, its size, and its hit
count and last hit (what eviction and warming rank by).

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
  need a round trip per statement. A value over 1 MiB is written piece by piece through incremental blob I/O
  (the body or the stream's chunks as they are held), so storing a large answer never copies it whole.
- **size cap**: when the stored bytes exceed ``max_bytes``, expired rows go first, then the least hit (oldest
  last hit among equals) until 90% of the cap is left, so the next writes do not evict again at once. Entries
  larger than ``max_entry_bytes`` (default 32 MiB, 1/16 of the default cap; a write that size holds the file's
  write lock for tens of milliseconds) are not stored: ``stats.counters["sqlite.too_large"]``.

Encryption at rest: with ``encryption_key`` (or ``AURELIS_CACHE_KEY`` in the environment), each value is
sealed with AES-256-GCM, a random 96-bit nonce and the row's key as associated data (a value moved to another
row does not open). A value that does not open with the key (another key, tampering, a plaintext row) is a
miss, counted as ``sqlite.unauthenticated`` and warned about once, never served. Plain values carry a MAC under
the deployment's secret instead (:mod:`aurelis_plugins._serialize`). A sealed value needs no second MAC: AES-GCM
is authenticated encryption, so a value that opens under the key, with the row's cache key as associated data,
was sealed by a holder of the key for that very key, unaltered and whole; the encryption key is a deployment
secret like the MAC's, so a second tag would guard against nobody new. A file that is not a readable database
is moved aside as ``<name>.corrupt-<timestamp>`` and a fresh one is made: a broken cache file is never fatal.

Lifetimes are wall-clock (``expires`` is ``created`` + TTL, compared with ``wall_clock``, default
``time.time``); an entry whose ``created`` lies in the future beyond ``CLOCK_SKEW``, or is unknown, is expired.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import attrs
from aurelis_plugins._validators import positive

from aurelis_core import CacheEntry, ConfigError, RequestContext, hookimpl

from ._serialize import LARGE, Piece, SerializeError, Unauthenticated, codec_named, dumps_parts, loads
from ._tier import WarmConfig, WriteBehindTier
from ._writebehind import HitCounts, WriteBehind

try:
    import aiosqlite
except ImportError:  # pragma: no cover - depends on the installed extras
    raise ImportError("the sqlite plugin needs: pip install 'aurelis[sqlite]'") from None

__all__ = ["MAX_ENTRY_BYTES", "SQLiteConfig", "SQLiteTier", "WarmConfig"]

logger = logging.getLogger("aurelis")

KEY_ENV = "AURELIS_CACHE_KEY"
#: First byte of a sealed value; a plain value starts with the serialize format version, never this.
SEALED = 0xE1
_NONCE = 12
_GCM_TAG = 16

#: Default ``max_entry_bytes`` (see the module docstring).
MAX_ENTRY_BYTES = 32 * 1024 * 1024

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
#: A large value: room made with zeroblob(), then written piece by piece through the blob handle.
UPSERT_BLOB = (
    "INSERT INTO aurelis_entries (key, value, expires, size, hits, last_hit) VALUES (?, zeroblob(?), ?, ?, 0, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires, size = excluded.size "
    "RETURNING rowid"
)
HIT = "UPDATE aurelis_entries SET hits = hits + ?, last_hit = ? WHERE key = ?"
TOP = (
    "SELECT key, value FROM aurelis_entries WHERE expires IS NULL OR expires > ? "
    "ORDER BY hits DESC, last_hit DESC LIMIT ?"
)
#: How often (seconds) a write batch also deletes expired rows.
PURGE_EVERY = 60.0



@attrs.frozen
class SQLiteConfig:
    path: str = ".aurelis/cache.sqlite3"
    ttl: float | None = attrs.field(default=86400.0, validator=positive)
    max_bytes: int = attrs.field(
        default=512 * 1024 * 1024, validator=[attrs.validators.instance_of(int), positive]
    )
    codec: str = "lz4"
    #: 32 bytes as 64 hex digits or base64; default: ``AURELIS_CACHE_KEY``. Set: values are sealed (AES-GCM).
    encryption_key: str | None = attrs.field(default=None, repr=False)
    busy_timeout: float = attrs.field(default=1.0, validator=positive)
    queue_size: int = attrs.field(default=10_000, validator=[attrs.validators.instance_of(int), positive])
    warm: WarmConfig = attrs.field(factory=WarmConfig)
    #: Largest entry (body and headers, in bytes) stored; larger answers are passed through.
    max_entry_bytes: int = attrs.field(
        default=MAX_ENTRY_BYTES, validator=[attrs.validators.instance_of(int), positive]
    )


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
        self._key = key
        self._aead = AESGCM(key)

    def seal(self, key: str, value: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return bytes((SEALED,)) + nonce + self._aead.encrypt(nonce, value, key.encode())

    def seal_parts(self, key: str, parts: list[Piece], length: int) -> tuple[Iterable[Piece], int]:
        """The sealed value of ``parts`` as pieces: in one call for a small value, encrypted piece by piece as it
        is written for a large one (the same format: nonce, ciphertext, then the 16-byte GCM tag)."""
        if length <= LARGE:
            return [self.seal(key, b"".join(parts))], 1 + _NONCE + length + _GCM_TAG
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        nonce = os.urandom(_NONCE)
        encryptor = Cipher(algorithms.AES(self._key), modes.GCM(nonce)).encryptor()
        encryptor.authenticate_additional_data(key.encode())

        def pieces() -> Iterator[Piece]:
            yield bytes((SEALED,)) + nonce
            for part in parts:
                yield encryptor.update(part)
            yield encryptor.finalize() + encryptor.tag

        return pieces(), 1 + _NONCE + length + _GCM_TAG

    def open(self, key: str, sealed: bytes) -> bytes | None:
        """The value, or ``None`` if it does not open with this key (or was never sealed)."""
        from cryptography.exceptions import InvalidTag

        if len(sealed) < 1 + _NONCE + _GCM_TAG or sealed[0] != SEALED:
            return None
        try:
            return self._aead.decrypt(sealed[1 : 1 + _NONCE], sealed[1 + _NONCE :], key.encode())
        except InvalidTag:
            return None


#: A queued write: ("set", key, entry, expires or None) or ("hits", {key: count}, time).
Op = tuple[Any, ...]


class SQLiteTier(WriteBehindTier):
    """The ``sqlite`` plugin. ``wall_clock`` (default ``time.time``) is what lifetimes are counted on (an
    attribute, for tests to swap)."""

    name = "sqlite"
    Config = SQLiteConfig

    def __init__(self, config: SQLiteConfig, pipeline: Any) -> None:
        self.config = config
        self.pipeline = pipeline
        self.path = Path(config.path)
        self.wall_clock: Callable[[], float] = time.time
        #: Largest entry stored (bytes); the pipeline does not buffer an answer no tier would take.
        self.max_entry_bytes = config.max_entry_bytes
        self._mac = pipeline.tenant.entry_mac
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
        row = self._conn().execute(GET, (key, self.wall_clock())).fetchone()
        return None if row is None else self._found(key, row[0], False)

    async def _aget(self, key: str) -> CacheEntry | None:
        db = await self._adb_of_loop()
        rows = await db.execute_fetchall(GET, (key, self.wall_clock()))
        return self._found(key, rows[0][0], True) if rows else None

    def _found(self, key: str, value: bytes, is_async: bool) -> CacheEntry | None:
        entry = self._decode(key, value)
        if entry is None or not entry.remaining(self.wall_clock(), self.config.ttl) > 0:
            return None
        self.hits.add(key, is_async)
        return entry

    def _decode(self, key: str, value: bytes) -> CacheEntry | None:
        try:
            if self._sealer is None:
                return loads(value, key, self._mac)
            opened = self._sealer.open(key, value)
            if opened is not None:
                return loads(opened, key, None)  # the seal authenticated it (see the module docstring)
        except Unauthenticated:
            pass
        except SerializeError:
            return None  # another format version: a miss
        count = self.pipeline.stats.tier_error(self.name, "unauthenticated")
        if not self._warned_unopenable:
            self._warned_unopenable = True
            logger.warning(
                "aurelis: cache file %s holds entries that do not %s (another key or secret, altered, moved from "
                "another key, or planted); they are misses (%d so far, counted as sqlite.unauthenticated)",
                self.path, "decrypt with the configured key" if self._sealer else "verify", count,
            )
        return None

    @hookimpl
    def aurelis_cache_set(self, ctx: RequestContext, entry: CacheEntry, promote: bool) -> None:
        if entry.size > self.max_entry_bytes:
            self.pipeline.stats.counters["sqlite.too_large"] += 1
            return
        expires = self._expires(entry)
        if expires is not None and expires <= 0:
            return
        self.queue.put(("set", ctx.key, entry, expires), ctx.is_async)

    def _expires(self, entry: CacheEntry) -> float | None:
        """The entry's expiry on the wall clock (``None``: no TTL; 0: expired, or of unknown age)."""
        now = self.wall_clock()
        left = entry.remaining(now, self.config.ttl)
        if left == math.inf:
            return None
        return now + left if left > 0 else 0.0

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
        now = self.wall_clock()
        rows: list[tuple[Any, ...]] = []
        large: list[tuple[Any, ...]] = []
        hits: list[tuple[Any, ...]] = []
        for op in batch:
            if op[0] == "set":
                key, entry, expires = op[1], op[2], op[3]
                pieces, length = self._encode(key, entry)
                if length <= LARGE:
                    rows.append((key, b"".join(pieces), expires, length, now))
                else:
                    large.append((key, pieces, expires, length, now))
                self._stored_bytes += length
            else:
                hits.extend((count, op[2], key) for key, count in op[1].items())
        conn = self._conn()
        with conn:
            if rows:
                conn.executemany(UPSERT, rows)
            for key, pieces, expires, length, stamp in large:
                (rowid,) = conn.execute(UPSERT_BLOB, (key, length, expires, length, stamp)).fetchone()
                with conn.blobopen("aurelis_entries", "value", rowid) as blob:
                    for piece in pieces:
                        blob.write(piece)
            if hits:
                conn.executemany(HIT, hits)
            if self._stored_bytes > self.config.max_bytes or time.monotonic() - self._last_purge > PURGE_EVERY:
                self._evict(conn, now)

    def _encode(self, key: str, entry: CacheEntry) -> tuple[Iterable[Piece], int]:
        """The stored value of ``entry`` as pieces and its length: tagged with the MAC, or sealed."""
        if self._sealer is None:
            return dumps_parts(entry, self._codec, key, self._mac)
        parts, length = dumps_parts(entry, self._codec, key, None)
        return self._sealer.seal_parts(key, parts, length)

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
        rows = self._conn().execute(TOP, (self.wall_clock(), count)).fetchall()
        return self._decode_rows(rows)

    async def atop(self, count: int) -> list[tuple[str, CacheEntry]]:
        db = await self._adb_of_loop()
        return self._decode_rows(await db.execute_fetchall(TOP, (self.wall_clock(), count)))

    def _decode_rows(self, rows: Any) -> list[tuple[str, CacheEntry]]:
        found = []
        now = self.wall_clock()
        for key, value in rows:
            entry = self._decode(key, value)
            if entry is not None and entry.remaining(now, self.config.ttl) > 0:
                found.append((key, entry))
        return found

    def put(self, key: str, entry: CacheEntry) -> bool:
        """Store ``entry`` under cache key ``key`` now (not written behind); ``False`` if it has expired or is
        larger than ``max_entry_bytes``."""
        expires = self._expires(entry)
        if (expires is not None and expires <= 0) or entry.size > self.max_entry_bytes:
            return False
        self._write([("set", key, entry, expires)])
        return True

    def stats(self) -> dict[str, Any]:
        """What the file holds: live and expired entries, stored bytes, hits, the file's size on disk."""
        conn = self._conn()
        now = self.wall_clock()
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
