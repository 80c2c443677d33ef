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

**Only its own file.** The tier marks the database it creates (``PRAGMA application_id``, four bytes at offset 68
of the file's header, readable without opening the database) and never moves, renames or deletes a file that
does not carry the mark: a directory, a text file, another application's database, or an unmarked file that
SQLite cannot read. It *refuses* such a path: one ERROR in the log naming the path and why, and the tier is
bypassed until the pipeline is rebuilt (every lookup a miss, every write dropped, each counted as
``sqlite.refused``); ``aurelis config check`` reports it too. A database written by an earlier version (its
table and nothing else, no mark) is adopted and marked.

**A damaged file is recreated, at run time too.** When a read or a write meets ``sqlite3.DatabaseError``
("file is not a database", "database disk image is malformed": SQLite's ``SQLITE_NOTADB`` and
``SQLITE_CORRUPT``), the request is a miss (or the write dropped), counted as ``sqlite.corrupt``, and the tier
recovers, at most once per ``RECOVER_EVERY`` seconds of its monotonic ``clock``: it drops its connections,
moves the file (and its ``-wal``/``-shm``) aside as ``<name>.corrupt-<timestamp>-<pid>`` if, and only if, it
still is the file the tier opened and carries the mark, and starts a new one. A path that now holds something
else is refused as above. A file deleted or moved away under the tier (an operator clearing the cache by hand)
is noticed by the next write batch (one ``stat`` a batch: in WAL mode SQLite's open connections would go on
writing into the unlinked file) or by a connection that finds no table at the path; that use is a miss, and the
tier starts a new file there.

**Encryption at rest, never mixed.** With ``encryption_key`` (or ``AURELIS_CACHE_KEY`` in the environment), each
value is sealed with AES-256-GCM, a random 96-bit nonce and the row's key as associated data (a value moved to
another row does not open). The file records whether its values are sealed and a check value of the key (a
truncated HMAC-SHA256 of a constant under the key, which reveals nothing of it), claimed by the first process
that uses the file. A process without the key, or with another key, refuses a sealed file (it neither reads
nor writes it); a process with a key refuses a file that already holds plaintext entries, and seals an empty
one (the file then says so). Each write batch checks the record again inside its transaction. A value that
does not open with the right key (tampering) is a miss, counted as ``sqlite.unauthenticated``, never served.
Plain values carry a MAC under the deployment's secret instead (:mod:`aurelis_plugins._serialize`). A sealed
value needs no second MAC: AES-GCM is authenticated encryption, so a value that opens under the key, with the
row's cache key as associated data, was sealed by a holder of the key for that very key, unaltered and whole;
the encryption key is a deployment secret like the MAC's, so a second tag would guard against nobody new.

Lifetimes are wall-clock (``expires`` is ``created`` + TTL, compared with ``wall_clock``, default
``time.time``); an entry whose ``created`` lies in the future beyond ``CLOCK_SKEW``, or is unknown, is expired.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import math
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import attrs

from aurelis_core.plugin import (
    PROBE,
    CacheEntry,
    ConfigError,
    Invalid,
    RequestContext,
    file_path,
    hookimpl,
    log_fault,
    positive,
    positive_int,
    worth_logging,
    writable_file_probe,
)

from ._per_loop import PerLoop
from ._serialize import LARGE, Piece, SerializeError, Unauthenticated, codec_named, dumps_parts, loads
from ._tier import WarmConfig, WriteBehindTier
from ._validators import at_rest_codec
from ._writebehind import HitCounts, WriteBehind

try:
    import aiosqlite
except ImportError:  # pragma: no cover - depends on the installed extras
    raise ImportError("the sqlite plugin needs: pip install 'aurelis[sqlite]'") from None

__all__ = ["APPLICATION_ID", "MAX_ENTRY_BYTES", "SQLiteConfig", "SQLiteTier", "WarmConfig", "inspect_file"]

logger = logging.getLogger("aurelis.cache.sqlite")

KEY_ENV = "AURELIS_CACHE_KEY"
#: First byte of a sealed value; a plain value starts with the serialize format version, never this.
SEALED = 0xE1
_NONCE = 12
_GCM_TAG = 16

#: The mark of a database this tier created: its ``PRAGMA application_id``, bytes 68..71 of the file (big-endian).
#: Bytes 0x1A 0x5E 0xC0 0xDE: a control character and a byte never valid in UTF-8, so no text file carries them.
APPLICATION_ID = 0x1A5EC0DE
_MARK = APPLICATION_ID.to_bytes(4, "big")
_MAGIC = b"SQLite format 3\x00"

#: Default ``max_entry_bytes`` (see the module docstring).
MAX_ENTRY_BYTES = 32 * 1024 * 1024
#: A damaged file is moved aside and recreated at most once per this many seconds.
RECOVER_EVERY = 60.0

# SQLite result codes (the primary code is the low byte of an extended one).
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26
_SQLITE_READONLY_DBMOVED = 1032
#: The start of the error a connection to a new, empty file at the path meets (the tier's file was deleted).
_NO_TABLE = "no such table: aurelis_"

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS aurelis_entries (key TEXT PRIMARY KEY, value BLOB NOT NULL, expires REAL, "
    "size INTEGER NOT NULL, hits INTEGER NOT NULL DEFAULT 0, last_hit REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS aurelis_entries_rank ON aurelis_entries (hits, last_hit)",
    "CREATE INDEX IF NOT EXISTS aurelis_entries_expires ON aurelis_entries (expires)",
    "CREATE TABLE IF NOT EXISTS aurelis_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
)
_OUR_TABLES = frozenset({"aurelis_entries", "aurelis_meta"})
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
SEAL = "SELECT value FROM aurelis_meta WHERE name = 'seal'"
#: How often (seconds) a write batch also deletes expired rows.
PURGE_EVERY = 60.0
#: What the file records when its values are not sealed.
PLAIN = "none"


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
    #: Seconds an entry lives (a request's own ``ttl`` control overrides it); ``None``: until evicted.
    ttl: float | None = attrs.field(default=86400.0, validator=positive)
    #: Size cap of the file: beyond it, expired rows go, then the least hit (oldest last hit first) down to 90%.
    max_bytes: int = attrs.field(default=512 * 1024 * 1024, validator=positive_int)
    #: Compression at rest: ``"lz4"``, ``"gzip"``, ``"brotli"`` or ``"none"``.
    codec: str = attrs.field(default="lz4", validator=at_rest_codec)
    #: 32 bytes as 64 hex digits or base64; default: ``AURELIS_CACHE_KEY``. Set: values are sealed (AES-GCM).
    encryption_key: str | None = attrs.field(default=None, repr=False, validator=_encryption_key)
    #: Seconds a writer waits for another process's lock on the file.
    busy_timeout: float = attrs.field(default=1.0, validator=positive)
    #: Bound of the write-behind queue (writes beyond it are dropped and counted).
    queue_size: int = attrs.field(default=10_000, validator=positive_int)
    #: At start-up, copy the most hit live entries into the first tier that can take them (``memory``).
    warm: WarmConfig = attrs.field(factory=WarmConfig)
    #: Largest entry (body and headers, in bytes) stored; larger answers are passed through.
    max_entry_bytes: int = attrs.field(default=MAX_ENTRY_BYTES, validator=positive_int)


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
        #: What the file records for values sealed with this key (the check value reveals nothing of the key).
        self.mode = "aes-256-gcm:" + hmac.new(key, b"aurelis sqlite key check v1", hashlib.sha256).hexdigest()[:32]

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


class _Refused(Exception):
    """The path holds something the tier must not use (see the module docstring); ``reason`` says what."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def inspect_file(path: str | os.PathLike[str]) -> tuple[str, str]:
    """What is at ``path``, from its metadata and raw header bytes alone (nothing is opened as a database, and
    nothing is changed): ``(kind, why)``, ``kind`` one of

    - ``"absent"``: nothing (the tier creates its file), ``"empty"``: a zero-length file (SQLite's own new file);
    - ``"ours"``: a SQLite database carrying the tier's mark; ``"damaged"``: the mark, but not SQLite's header;
    - ``"unmarked"``: a SQLite database without any application's mark (another tool's, or this tier's from
      before it marked its files); ``"foreign"``: anything else (a directory, another application's database,
      a file that is not a database), ``why`` saying which;
    - ``"unreadable"``: it cannot be looked at now (no permission...): nothing to judge yet.
    """
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):  # nothing there (or a file where a directory should be)
        return "absent", ""
    except OSError as exc:
        return "unreadable", f"cannot be inspected ({exc.strerror or exc})"
    if stat.S_ISDIR(info.st_mode):
        return "foreign", "is a directory"
    if not stat.S_ISREG(info.st_mode):
        return "foreign", "is not a regular file"
    if info.st_size == 0:
        return "empty", ""
    try:
        with open(path, "rb") as file:
            header = file.read(100)
    except OSError as exc:
        return "unreadable", f"cannot be read ({exc.strerror or exc})"
    marked = len(header) >= 72 and header[68:72] == _MARK
    if header.startswith(_MAGIC):
        if marked:
            return "ours", ""
        application = int.from_bytes(header[68:72], "big") if len(header) >= 72 else 0
        if application:
            return "foreign", f"is another application's SQLite database (application_id {application:#010x})"
        return "unmarked", "is a SQLite database without the cache tier's mark (another tool's?)"
    if marked:
        return "damaged", "its header is damaged"
    return "foreign", "is not a SQLite database created by the cache tier"


def _written_by_an_earlier_version(path: Path) -> bool:
    """An unmarked database holding the tier's table and nothing else: this tier's, from before the mark.

    Opened read-only and immutable: no lock, no journal, nothing written next to a file that may be another's.
    """
    try:
        conn = sqlite3.connect(f"file:{quote(str(path.absolute()))}?mode=ro&immutable=1", uri=True)
    except sqlite3.Error:
        return False
    try:
        names = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error:
        return False
    finally:
        conn.close()
    return "aurelis_entries" in names and names <= _OUR_TABLES


def _seal_problem(theirs: str, mine: str, holds_entries: bool) -> str | None:
    """Why a process whose values are ``mine`` must not use a file whose values are ``theirs`` (``None``: it
    may; a process with a key may take over an empty plaintext file)."""
    if theirs == mine or (theirs == PLAIN and not holds_entries):
        return None
    if theirs == PLAIN:
        return ("holds unencrypted entries, and this process has an encryption key: it does not seal entries "
                "into a file of plaintext ones (delete the file, or run without the key)")
    if mine == PLAIN:
        return ("holds entries sealed with an encryption key, and this process has none: it neither reads nor "
                "writes them (set [sqlite] encryption_key or AURELIS_CACHE_KEY to the file's key)")
    return "holds entries sealed with another encryption key than this process's (a wrong key?)"


#: A queued write: ("set", key, entry, expires or None) or ("hits", {key: count}, time).
Op = tuple[Any, ...]


class _Connection(sqlite3.Connection):
    """A ``sqlite3`` connection that also has aiosqlite's ``execute_fetchall``, so that the reads, written once for
    both modes (``_sqlite_async``), call the same method on either connection."""

    def execute_fetchall(self, sql: str, parameters: Sequence[Any] = ()) -> list[Any]:
        return self.execute(sql, parameters).fetchall()


class SQLiteTier(WriteBehindTier):
    """The ``sqlite`` plugin. ``wall_clock`` (default ``time.time``) is what lifetimes are counted on,
    ``clock`` (default ``time.monotonic``) what spaces recoveries and purges; both attributes, for tests to swap."""

    name = "sqlite"
    Config = SQLiteConfig

    def __init__(self, config: SQLiteConfig, pipeline: Any) -> None:
        self.config = config
        self.pipeline = pipeline
        self.path = Path(config.path)
        #: Where this tier keeps its entries, for log lines.
        self.location = str(self.path)
        self.wall_clock: Callable[[], float] = time.time
        self.clock: Callable[[], float] = time.monotonic
        #: Largest entry stored (bytes); the pipeline does not buffer an answer no tier would take.
        self.max_entry_bytes = config.max_entry_bytes
        self._codec = codec_named(config.codec, "[sqlite]")
        key_text = config.encryption_key if config.encryption_key is not None else os.environ.get(KEY_ENV)
        self._sealer = None if key_text is None else _Sealer(
            parse_key(key_text, "[sqlite] encryption_key" if config.encryption_key is not None else KEY_ENV)
        )
        self._seal_mode = PLAIN if self._sealer is None else self._sealer.mode
        self._mac = pipeline.tenant.entry_mac
        self._prepared = False
        #: Why the tier does not use its path (``None`` while it does); see the module docstring.
        self._refused: str | None = None
        #: Bumped whenever the file is reopened: a connection of an older generation is closed and replaced.
        self._generation = 0
        self._file_id: tuple[int, int] | None = None
        self._last_recovery: float | None = None
        self._prepare_lock = threading.RLock()
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        #: Each live event loop's aiosqlite connection (an asyncio connection belongs to its loop): the generation
        #: of the file it was opened on, and the task opening it, which concurrent first callers share.
        self._aconnections: PerLoop[tuple[int, asyncio.Task[Any]]] = PerLoop()
        self._warned_unopenable = False
        self._stored_bytes = 0
        self._last_purge = self.clock()
        self.queue: WriteBehind[Op] = WriteBehind(
            self.name, self._write, self._awrite,
            on_error=self._write_failed, on_drop=self._dropped, maxsize=config.queue_size,
        )
        self.hits = HitCounts(self.queue)

    # --- the file ----------------------------------------------------------------------------------------------

    def _prepare(self) -> None:
        """Make the file usable (once, and again after a recovery): see the module docstring. Raises
        ``_Refused`` when the path holds something the tier must not use."""
        with self._prepare_lock:
            if self._refused is not None:
                raise _Refused(self._refused)
            if self._prepared:
                return
            try:
                self._open_file()
            except _Refused as exc:
                self._refuse(exc.reason)
                raise
            self._prepared = True

    def _open_file(self) -> None:
        path = self.path
        for _ in range(5):  # a file another process creates, or moves aside, meanwhile is looked at again
            kind, why = inspect_file(path)
            if kind == "absent":
                # An OSError here (a directory that cannot be written) is not a refusal: the file is not there to
                # be judged. It fails this use only, counted as the tier's error, and the next use tries again.
                path.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
                except FileExistsError:
                    continue
                kind = "empty"
            if kind == "unreadable":
                raise OSError(f"{path} {why}")  # this use fails, the next one looks again
            if kind == "damaged":
                self._move_aside(why)
                continue
            if kind == "unmarked" and _written_by_an_earlier_version(path):
                kind = "empty"  # adopted: marked like a new file
            if kind not in ("empty", "ours"):
                if kind == "unmarked":
                    why += ": delete it to let the tier start a new file there"
                raise _Refused(why)
            try:
                self._init_file(mark=kind == "empty")
            except sqlite3.DatabaseError as exc:
                if kind == "ours" and _is_corrupt(exc):
                    self._move_aside(str(exc))
                    continue
                raise
            return
        raise _Refused("keeps changing while the tier opens it")

    def _init_file(self, mark: bool) -> None:
        """Schema, mark and seal record in one transaction (a crash leaves an empty file, never an unmarked
        database), then WAL."""
        conn = sqlite3.connect(self.path, timeout=self.config.busy_timeout, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                (application,) = conn.execute("PRAGMA application_id").fetchone()
                if application != APPLICATION_ID:
                    if not mark:
                        raise _Refused("lost the cache tier's mark while being opened")
                    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                for statement in SCHEMA:
                    conn.execute(statement)
                row = conn.execute(SEAL).fetchone()
                holds = conn.execute("SELECT 1 FROM aurelis_entries LIMIT 1").fetchone() is not None
                if row is None:
                    conn.execute("INSERT INTO aurelis_meta (name, value) VALUES ('seal', ?)", (self._seal_mode,))
                elif row[0] != self._seal_mode:
                    problem = _seal_problem(row[0], self._seal_mode, holds)
                    if problem is not None:
                        raise _Refused(problem)
                    conn.execute("UPDATE aurelis_meta SET value = ? WHERE name = 'seal'", (self._seal_mode,))
                (self._stored_bytes,) = conn.execute(
                    "SELECT COALESCE(SUM(size), 0) FROM aurelis_entries"
                ).fetchone()
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            conn.execute("PRAGMA journal_mode=WAL")
            info = os.stat(self.path)
            self._file_id = (info.st_dev, info.st_ino)
        finally:
            conn.close()

    def _move_aside(self, why: str) -> None:
        """Move the damaged, marked file at the path (and its journal files) aside, under a name never taken."""
        base = f"{self.path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        aside = self.path.with_name(base)
        count = 0
        while aside.exists() or Path(f"{aside}-wal").exists():
            count += 1
            aside = self.path.with_name(f"{base}-{count}")
        os.replace(self.path, aside)
        for suffix in ("-wal", "-shm", "-journal"):
            try:
                os.replace(f"{self.path}{suffix}", f"{aside}{suffix}")
            except FileNotFoundError:
                pass
        logger.warning(
            "cache file %s is damaged (%s); moved it to %s and started a new one", self.path, why, aside
        )

    def _refuse(self, reason: str) -> None:
        with self._prepare_lock:
            if self._refused is not None:
                return
            self._refused = reason
        logger.error(
            "cache tier 'sqlite' does not use %s: it %s. The tier is bypassed until the pipeline is "
            "rebuilt: every lookup is a miss and every write is dropped (counted as sqlite.refused); nothing at "
            "that path is moved or changed.", self.path, reason,
        )

    def _bypassed(self) -> None:
        self.pipeline.stats.tier_error(self.name, "refused")

    def problems(self) -> list[str]:
        """Problems with the configured path, found without changing anything (``aurelis config check`` prints
        them as warnings)."""
        kind, why = inspect_file(self.path)
        refused = "the tier would refuse it and be bypassed (every lookup a miss)"
        if kind == "unreadable":
            return [f"path {str(self.path)!r} {why}: the tier cannot use it until it can"]
        if kind == "foreign" or (kind == "unmarked" and not _written_by_an_earlier_version(self.path)):
            return [f"path {str(self.path)!r} {why}: {refused}"]
        if kind == "damaged":
            return [f"path {str(self.path)!r}: {why}; the tier would move it aside and start a new file"]
        if kind != "ours":
            return []
        try:
            conn = sqlite3.connect(f"file:{quote(str(self.path.absolute()))}?mode=ro", uri=True)
            try:
                row = conn.execute(SEAL).fetchone()
                holds = conn.execute("SELECT 1 FROM aurelis_entries LIMIT 1").fetchone() is not None
            finally:
                conn.close()
        except sqlite3.Error as exc:
            return [f"path {str(self.path)!r} cannot be read ({exc}); the tier would move it aside if damaged"]
        problem = None if row is None else _seal_problem(row[0], self._seal_mode, holds)
        return [] if problem is None else [f"path {str(self.path)!r} {problem}: {refused}"]

    # --- connections and recovery ------------------------------------------------------------------------------

    # Opening and closing connections differs by mode on purpose (a connection per thread; one aiosqlite
    # connection per event loop, opened once by concurrent first callers), so it is hand-written here. The reads
    # that use them are written once, async, in ``_sqlite_async``; ``_sqlite_sync`` is generated from it (see
    # ``aurelis_core._unasync``).

    def _conn(self) -> _Connection:
        """This thread's connection (sqlite3 connections are cheap to keep, costly to share across threads).
        ``_Refused`` once the tier refuses its file, also when it was refused after this connection was opened."""
        if self._refused is not None:
            raise _Refused(self._refused)
        local = self._local
        conn: _Connection | None = getattr(local, "conn", None)
        if conn is None or local.generation != self._generation:
            if conn is not None:
                self._discard(conn)
            generation = self._generation
            self._prepare()
            conn = sqlite3.connect(
                self.path, timeout=self.config.busy_timeout, check_same_thread=False, factory=_Connection
            )
            conn.execute("PRAGMA synchronous=NORMAL")
            local.conn = conn
            local.generation = generation
            self._connections.append(conn)
        return conn

    def _discard(self, conn: sqlite3.Connection) -> None:
        try:
            self._connections.remove(conn)
        except ValueError:
            pass
        try:
            conn.close()
        except sqlite3.Error:
            pass

    def _database_error(self, exc: sqlite3.DatabaseError, generation: int) -> bool:
        """A read or write met ``exc`` on connections of ``generation``: True when it is about the file itself
        (damaged, or moved away under the tier) and was dealt with, so the caller counts a miss or a dropped
        write; False for any other error (a lock timeout...), which the caller raises."""
        code = getattr(exc, "sqlite_errorcode", None)
        if code == _SQLITE_READONLY_DBMOVED or str(exc).startswith(_NO_TABLE):
            # Moved away under a writer, or deleted: a connection opened since found a new, empty file at the
            # path. Either way the tier starts its file again there.
            self._reopen(generation, None)
            return True
        if not _is_corrupt(exc):
            return False
        count = self.pipeline.stats.tier_error(self.name, "corrupt")
        if worth_logging(count):
            logger.warning("cache file %s: %s (%d so far, counted as sqlite.corrupt)", self.path, exc, count)
        self._reopen(generation, exc)
        return True

    async def _adatabase_error(self, exc: sqlite3.DatabaseError, generation: int) -> bool:
        """:meth:`_database_error` for async callers: on a worker thread, as a recovery moves files and opens one."""
        return await asyncio.to_thread(self._database_error, exc, generation)

    def _is_at_path(self) -> bool:
        """Whether the path still names the file the tier opened (not deleted, not replaced)."""
        try:
            info = os.stat(self.path)
        except OSError:
            return False
        return (info.st_dev, info.st_ino) == self._file_id

    def _reopen(self, generation: int, damage: sqlite3.DatabaseError | None) -> None:
        """Drop the connections of ``generation`` and open the file at the path again; first move it aside when
        ``damage`` says it is damaged and it is still the marked file the tier opened. At most once per
        ``RECOVER_EVERY`` seconds: until then, every use of the damaged file is a miss."""
        with self._prepare_lock:
            if generation != self._generation or self._refused is not None:
                return  # another caller has reopened it already
            now = self.clock()
            if damage is not None:
                if self._last_recovery is not None and now - self._last_recovery < RECOVER_EVERY:
                    return
                self._last_recovery = now
            self._generation += 1
            self._prepared = False
            try:
                if damage is not None and self._is_at_path() and inspect_file(self.path)[0] in ("ours", "damaged"):
                    self._move_aside(str(damage))
                self._prepare()
            except _Refused:
                pass  # said once by _refuse
            except Exception as exc:  # tried again by the next use
                log_fault(logger, logging.WARNING, "cache file %s could not be reopened", self.path, error=exc)

    async def _adb_of_loop(self) -> Any:
        """The aiosqlite connection of the running loop, opened once per loop and file generation (concurrent first
        callers share it); ``_Refused`` once the tier refuses its file, as for :meth:`_conn`. Several live loops
        (threads each running one) each keep their own, rather than replace one another's on every switch."""
        if self._refused is not None:
            raise _Refused(self._refused)
        slot = self._aconnections.get()
        if slot is None or slot[0] != self._generation:
            stale = None if slot is None else slot[1]
            slot = (self._generation, asyncio.get_running_loop().create_task(self._aconnect(stale)))
            # The connections of loops that are gone (``asyncio.run`` per call) cannot be awaited any more: their
            # worker threads are stopped, or they would live on with the process.
            for _, gone in self._aconnections.put(slot):
                _stop(gone)
        try:
            return await slot[1]
        except BaseException:
            self._aconnections.discard(slot)  # try again on the next call
            raise

    async def _aconnect(self, stale: asyncio.Task[Any] | None) -> Any:
        # This loop's connection to the file of an earlier generation: closed, or stopped once it has opened.
        if stale is not None and not stale.done():
            _stop(stale)
        elif stale is not None and not stale.cancelled() and stale.exception() is None:
            try:
                await stale.result().close()
            except Exception:
                pass
        if not self._prepared:
            await asyncio.to_thread(self._prepare)
        pending = aiosqlite.connect(self.path, timeout=self.config.busy_timeout)
        # aiosqlite's worker thread is not a daemon: a pipeline its user never closed would keep the whole
        # process from exiting. The thread holds no unflushed state of ours (writes commit per batch), so it
        # may die with the process.
        pending._thread.daemon = True
        return await pending

    # --- hooks -------------------------------------------------------------------------------------------------

    @hookimpl
    def aurelis_cache_get(self, ctx: RequestContext) -> Any:
        if self._refused is not None:
            self._bypassed()
            return None
        key = ctx.key
        if key is None:  # the core asks the tiers only about a request with a key
            return None
        if ctx.is_async:
            return _sqlite_async.get(self, key)
        return _sqlite_sync.get(self, key)

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
                "cache file %s holds entries that do not %s (altered, moved from another key, or planted); "
                "they are misses (%d so far, counted as sqlite.unauthenticated)",
                self.path, "decrypt with the configured key" if self._sealer else "verify", count,
            )
        return None

    @hookimpl
    def aurelis_cache_set(self, ctx: RequestContext, entry: CacheEntry, promote: bool) -> None:
        if self._refused is not None:
            self._bypassed()
            return
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
        opening = self._aconnections.take()
        mine = opening.pop(asyncio.get_running_loop(), None)
        for _, task in opening.values():
            _stop(task)  # another loop's: it cannot be awaited from here
        if mine is None:
            return
        task = mine[1]
        if task.done() and not task.cancelled() and task.exception() is None:
            await task.result().close()
        else:
            _stop(task)

    def _close_sync(self) -> None:
        connections, self._connections = self._connections, []
        self._local = threading.local()
        for conn in connections:
            conn.close()
        for _, task in self._aconnections.take().values():
            # Opened by an async client, closed from sync code: its loop may be gone, so ask the worker
            # thread to close the connection and stop rather than await it.
            _stop(task)

    # --- writing -----------------------------------------------------------------------------------------------

    def _write(self, batch: list[Op]) -> None:
        """Write a batch in one transaction, then keep the file under ``max_bytes``. A batch that meets a damaged
        file is written once more into the new one."""
        for attempt in range(2):
            if self._refused is not None:
                self._drop_batch(batch)
                return
            generation = self._generation
            try:
                self._write_batch(batch)
                return
            except _Refused as exc:
                self._refuse(exc.reason)
                self._drop_batch(batch)
                return
            except sqlite3.DatabaseError as exc:
                if not self._database_error(exc, generation):
                    raise
                if attempt or self._generation == generation:
                    self._drop_batch(batch)
                    return

    def _drop_batch(self, batch: list[Op]) -> None:
        for op in batch:
            if op[0] != "set":
                continue
            if self._refused is not None:
                self._bypassed()
            else:
                self._dropped()

    def _write_batch(self, batch: list[Op]) -> None:
        # A file deleted under the tier is not an error to its open connections (in WAL mode they go on writing
        # into the unlinked file, lost at exit): one stat a batch, on the writer's thread, notices it.
        if self._prepared and not self._is_at_path():
            self._reopen(self._generation, None)
        # Connected first: opening the file counts the bytes it holds, and this batch's are added to that count.
        conn = self._conn()
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
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute(SEAL).fetchone()
            if row is None or row[0] != self._seal_mode:
                # Another process changed what the file holds since it was opened: never mix.
                problem = None if row is None else _seal_problem(row[0], self._seal_mode, True)
                raise _Refused(problem or "lost its record of whether its entries are sealed")
            if rows:
                conn.executemany(UPSERT, rows)
            for key, pieces, expires, length, stamp in large:
                (rowid,) = conn.execute(UPSERT_BLOB, (key, length, expires, length, stamp)).fetchone()
                with conn.blobopen("aurelis_entries", "value", rowid) as blob:
                    for piece in pieces:
                        blob.write(piece)
            if hits:
                conn.executemany(HIT, hits)
            if self._stored_bytes > self.config.max_bytes or self.clock() - self._last_purge > PURGE_EVERY:
                self._evict(conn, now)

    def _encode(self, key: str, entry: CacheEntry) -> tuple[Iterable[Piece], int]:
        """The stored value of ``entry`` as pieces and its length: tagged with the MAC, or sealed."""
        if self._sealer is None:
            return dumps_parts(entry, self._codec, key, self._mac)
        parts, length = dumps_parts(entry, self._codec, key, None)
        return self._sealer.seal_parts(key, parts, length)

    async def _awrite(self, batch: list[Op]) -> None:
        # Deliberately not an aiosqlite twin of ``_write``: aiosqlite costs a thread round trip per statement, so
        # the async worker runs the same one-transaction batch on a worker thread.
        await asyncio.to_thread(self._write, batch)

    def _evict(self, conn: sqlite3.Connection, now: float) -> None:
        # The running byte count only grows between checks (replaced rows are counted twice, and other
        # processes write too): recount before evicting anything.
        self._last_purge = self.clock()
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
        """The ``count`` most hit live entries, most hit first, as (cache key, entry); none from a refused file."""
        return _sqlite_sync.top(self, count)

    async def atop(self, count: int) -> list[tuple[str, CacheEntry]]:
        return await _sqlite_async.top(self, count)

    def _decode_rows(self, rows: Any) -> list[tuple[str, CacheEntry]]:
        found = []
        now = self.wall_clock()
        for key, value in rows:
            entry = self._decode(key, value)
            if entry is not None and entry.remaining(now, self.config.ttl) > 0:
                found.append((key, entry))
        return found

    def put(self, key: str, entry: CacheEntry) -> bool:
        """Store ``entry`` under cache key ``key`` now (not written behind); ``False`` if it has expired, is
        larger than ``max_entry_bytes``, or the tier refuses its file."""
        expires = self._expires(entry)
        if (expires is not None and expires <= 0) or entry.size > self.max_entry_bytes or self._refused:
            return False
        self._write([("set", key, entry, expires)])
        return self._refused is None

    def stats(self) -> dict[str, Any]:
        """What the file holds: live and expired entries, stored bytes, hits, the file's size on disk (or, for a
        file the tier refuses, why)."""
        try:
            conn = self._conn()
        except _Refused as exc:
            return {"refused": exc.reason}
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
        """Delete every entry and give the space back to the file system; returns how many were deleted.
        ``RuntimeError`` when the tier refuses its path (nothing there is touched)."""
        try:
            conn = self._conn()
        except _Refused as exc:
            raise RuntimeError(f"refused {self.path}: it {exc.reason}") from None
        with conn:
            deleted = conn.execute("DELETE FROM aurelis_entries").rowcount
        conn.execute("VACUUM")
        self._stored_bytes = 0
        return int(deleted)


def _stop(connecting: asyncio.Task[Any]) -> None:
    """Close the aiosqlite connection ``connecting`` opened, from any thread (its worker thread does it and ends);
    one still opening is closed when it has opened."""
    if not connecting.done():
        connecting.add_done_callback(_stop)
    elif not connecting.cancelled() and connecting.exception() is None:
        connecting.result().stop()


def _is_corrupt(exc: sqlite3.DatabaseError) -> bool:
    """``SQLITE_CORRUPT`` or ``SQLITE_NOTADB`` (extended codes included)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:  # not from SQLite itself: tell by the message
        text = str(exc)
        return "file is not a database" in text or "malformed" in text
    return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)


# The reads, written once (async) and generated (sync): imported last, as they use this module's names (``GET``,
# ``_Refused``) at import time.
from . import _sqlite_async, _sqlite_sync  # noqa: E402
