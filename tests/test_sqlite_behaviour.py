"""The ``sqlite`` tier's decisions at their edges: the size cap, lifetimes on a fake wall clock, the maximum entry
size, the on-disk format other processes and versions share, warming's ranking and what the CLI reports. Real
files; lookups through the tier's hook, as the pipeline makes them; a fake wall clock for every time window."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from support import open_files_at

from aurelis_core import CacheEntry, ConfigError, Pipeline, RequestContext, RequestControls
from aurelis_core.testing import SimulatedServer
from aurelis_plugins.sqlite_tier import inspect_file

KEY_BYTES = bytes(range(32))


class MonotonicClock:
    """What spaces purges: starts at the real monotonic time (the tier's last purge is stamped with it when the
    tier is made), then moves only when the test moves it."""

    def __init__(self) -> None:
        self.now = time.monotonic()

    def __call__(self) -> float:
        return self.now


class WallClock:
    """A wall clock that only moves when the test moves it (entries are stamped with it, so ages are exact)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def open_tier(path: Path, **options: Any) -> tuple[Pipeline, Any, WallClock]:
    pipeline = Pipeline({"plugins": ["sqlite"], "sqlite": {"path": str(path), "codec": "none", **options}})
    tier = pipeline.plugin("sqlite")
    clock = WallClock()
    tier.wall_clock = clock
    return pipeline, tier, clock


def answer(clock: WallClock, body: bytes = b'{"answer":"x"}', ttl: float | None = None) -> CacheEntry:
    return CacheEntry(200, [(b"content-type", b"application/json")], body, created=clock.now, ttl=ttl)


def lookup(tier: Any, key: str, is_async: bool = False) -> CacheEntry | None:
    ctx = RequestContext(None, None, httpx, is_async, RequestControls())
    ctx.key = key
    if not is_async:
        return tier.aurelis_cache_get(ctx)  # type: ignore[no-any-return]

    async def main() -> CacheEntry | None:
        return await tier.aurelis_cache_get(ctx)  # type: ignore[no-any-return]

    return anyio.run(main)


def settle(tier: Any) -> None:
    """Hand the hit counts gathered so far to the write-behind queue and write it out (what closing does)."""
    tier.hits.hand_off(False)
    tier.flush()


def keys_in(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {key for (key,) in conn.execute("SELECT key FROM aurelis_entries")}


# --- the size cap -----------------------------------------------------------------------------------------------


def entry_size(tmp_path: Path) -> int:
    """Bytes one of the equal-sized entries below takes in the file (what the cap counts)."""
    pipeline, tier, clock = open_tier(tmp_path / "probe.sqlite3")
    assert tier.put("k00", answer(clock))
    size = int(tier.stats()["bytes"])
    pipeline.close()
    return size


def test_the_cap_keeps_the_file_at_the_cap_and_evicts_down_to_90_percent(tmp_path: Path) -> None:
    size = entry_size(tmp_path)
    path = tmp_path / "c.sqlite3"
    pipeline, tier, clock = open_tier(path, max_bytes=10 * size)
    for i in range(10):
        assert tier.put(f"k{i:02d}", answer(clock))
        clock.now += 1  # each entry's last use one second after the one before
    assert tier.stats() == {**tier.stats(), "entries": 10, "bytes": 10 * size}  # exactly at the cap: all kept
    for key in ("k00", "k00", "k05"):
        assert lookup(tier, key) is not None  # hit: ranks above the never-hit entries
        clock.now += 1
    settle(tier)
    assert tier.put("k10", answer(clock))  # 11 entries: over the cap, down to 90% of it (9 entries)
    assert keys_in(path) == {"k00", "k03", "k04", "k05", "k06", "k07", "k08", "k09", "k10"}  # least hit, oldest out
    assert tier.stats()["bytes"] == 9 * size
    tier.clock = MonotonicClock()  # no purge falls due meanwhile
    assert tier.put("short", answer(clock, ttl=1))  # back at the cap: nothing goes
    clock.now += 2
    assert lookup(tier, "k00") is not None
    settle(tier)  # a batch with nothing to store: the tier knows it is at the cap, no eviction pass
    assert tier.stats()["expired"] == 1
    assert tier.put("k11", answer(clock))  # over the cap: the expired entry makes the room
    assert len(keys_in(path)) == 10 and "short" not in keys_in(path)
    pipeline.close()
    # Another process opens the full file: it counts what the file holds, so its first write evicts too.
    again, tier, _ = open_tier(path, max_bytes=10 * size)
    tier.wall_clock = clock
    assert tier.put("k12", answer(clock))
    assert len(keys_in(path)) == 9 and "k12" in keys_in(path)
    again.close()


def test_the_cap_removes_expired_entries_first(tmp_path: Path) -> None:
    size = entry_size(tmp_path)
    path = tmp_path / "c.sqlite3"
    pipeline, tier, clock = open_tier(path, max_bytes=3 * size, ttl=100)
    assert tier.put("k00", answer(clock, ttl=10))  # expires at +10
    assert tier.put("k01", answer(clock))
    assert tier.put("k02", answer(clock))
    assert lookup(tier, "k00") is not None
    settle(tier)  # the short-lived entry is the most hit one
    clock.now += 10  # it expires now, exactly
    assert lookup(tier, "k00") is None
    assert tier.stats()["expired"] == 1
    assert tier.put("k03", answer(clock))  # over the cap: the expired row makes the room, no live one goes
    assert keys_in(path) == {"k01", "k02", "k03"}
    assert tier.stats() == {**tier.stats(), "entries": 3, "expired": 0, "bytes": 3 * size}
    pipeline.close()


def test_the_byte_count_follows_clearing(tmp_path: Path) -> None:
    size = entry_size(tmp_path)
    path = tmp_path / "c.sqlite3"
    pipeline, tier, clock = open_tier(path, max_bytes=3 * size, ttl=100)
    for i in range(3):
        assert tier.put(f"k{i:02d}", answer(clock, ttl=10 if i == 0 else None))
    assert tier.clear() == 3
    assert tier.stats() == {**tier.stats(), "entries": 0, "bytes": 0}
    # After a clear the tier knows the file is empty: three new entries fit without any eviction pass, so an
    # expired one stays (counted) until a pass is due.
    assert tier.put("k10", answer(clock, ttl=10))
    clock.now += 20
    assert tier.put("k11", answer(clock))
    assert tier.put("k12", answer(clock))
    assert tier.stats()["expired"] == 1
    pipeline.close()


# --- lifetimes on the wall clock --------------------------------------------------------------------------------


def test_lifetimes_end_exactly_at_the_ttl(tmp_path: Path) -> None:
    pipeline, tier, clock = open_tier(tmp_path / "c.sqlite3", ttl=60)
    assert tier.put("k", answer(clock))
    assert tier.put("own", answer(clock, ttl=600))
    clock.now += 59.5
    assert lookup(tier, "k") is not None and lookup(tier, "k", is_async=True) is not None
    clock.now += 0.5
    assert lookup(tier, "k") is None and lookup(tier, "k", is_async=True) is None
    assert lookup(tier, "own") is not None
    # An answer as old as the TTL is not stored at all; one a second younger is.
    clock.now += 1000
    assert not tier.put("aged", CacheEntry(200, [], b"{}", created=clock.now - 60))
    assert tier.put("young", CacheEntry(200, [], b"{}", created=clock.now - 59))
    assert lookup(tier, "young") is not None
    pipeline.close()


def test_without_a_ttl_entries_never_expire(tmp_path: Path) -> None:
    pipeline, tier, clock = open_tier(tmp_path / "c.sqlite3", ttl=None)
    assert tier.put("k", answer(clock))
    clock.now += 10 * 365 * 86400
    assert lookup(tier, "k") is not None
    assert [key for key, _ in tier.top(10)] == ["k"]
    assert tier.stats()["expired"] == 0
    pipeline.close()


def test_a_reader_with_a_shorter_ttl_serves_only_what_its_own_ttl_allows(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    writer, writing, clock = open_tier(path, ttl=600)
    assert writing.put("k", answer(clock))
    reader, reading, _ = open_tier(path, ttl=60)
    reading.wall_clock = clock
    clock.now += 59
    assert lookup(reading, "k") is not None
    clock.now += 1  # stored for 600 s, but this process keeps answers 60 s
    assert lookup(reading, "k") is None
    assert reading.top(10) == []
    assert lookup(writing, "k") is not None
    writer.close()
    reader.close()


# --- the largest entry stored -----------------------------------------------------------------------------------


def test_entries_up_to_max_entry_bytes_are_stored(tmp_path: Path) -> None:
    pipeline, tier, clock = open_tier(tmp_path / "c.sqlite3", max_entry_bytes=1000)
    headers = [(b"content-type", b"application/json")]  # 28 bytes of the entry's size
    at_limit = CacheEntry(200, headers, b"x" * 972, created=clock.now)
    over = CacheEntry(200, headers, b"x" * 973, created=clock.now)
    assert at_limit.size == 1000
    assert tier.put("at", at_limit)
    assert not tier.put("over", over)
    ctx = RequestContext(None, None, httpx, False, RequestControls())
    for key, entry in (("hook-at", at_limit), ("hook-over", over)):
        ctx.key = key
        tier.aurelis_cache_set(ctx, entry, False)
    tier.flush()
    assert keys_in(tmp_path / "c.sqlite3") == {"at", "hook-at"}
    assert pipeline.stats.counters["sqlite.too_large"] == 1
    pipeline.close()


def test_the_default_max_entry_bytes_is_32_mib(tmp_path: Path) -> None:
    pipeline, tier, _ = open_tier(tmp_path / "c.sqlite3")
    assert tier.max_entry_bytes == 32 * 1024 * 1024  # as documented in docs/plugins/sqlite.md
    pipeline.close()


def test_an_expired_entry_is_not_queued(tmp_path: Path) -> None:
    pipeline, tier, clock = open_tier(tmp_path / "c.sqlite3", ttl=60)
    ctx = RequestContext(None, None, httpx, False, RequestControls())
    ctx.key = "old"
    tier.aurelis_cache_set(ctx, CacheEntry(200, [], b"{}", created=clock.now - 60), False)
    ctx.key = "new"
    tier.aurelis_cache_set(ctx, CacheEntry(200, [], b"{}", created=clock.now - 59), False)
    tier.flush()
    assert keys_in(tmp_path / "c.sqlite3") == {"new"}
    pipeline.close()


# --- the format on disk ------------------------------------------------------------------------------------------


def test_the_file_carries_the_documented_mark(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    pipeline, tier, clock = open_tier(path)
    assert tier.put("k", answer(clock))
    wal = Path(f"{path}-wal")
    assert wal.stat().st_size > 0 and tier.stats()["file_bytes"] == path.stat().st_size + wal.stat().st_size
    pipeline.close()
    assert path.read_bytes()[68:72] == b"\x1a\x5e\xc0\xde"  # files of every version carry these bytes
    assert inspect_file(path) == ("ours", "")


def test_sealed_values_are_aes_gcm_with_the_row_key_as_associated_data(tmp_path: Path) -> None:
    """The sealed format is shared by every process and version using the file: 0xE1, a 96-bit nonce, then
    AES-256-GCM's ciphertext and tag over the plain value, the row's key as associated data."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    path = tmp_path / "c.sqlite3"
    pipeline, tier, clock = open_tier(path, encryption_key=KEY_BYTES.hex())
    assert tier.put("k", answer(clock, b'{"answer":"sealed"}'))
    with sqlite3.connect(path) as conn:
        value, size = conn.execute("SELECT value, size FROM aurelis_entries WHERE key = 'k'").fetchone()
    assert value[0] == 0xE1 and size == len(value)
    # The file records the key's check value (a truncated HMAC-SHA256 of a constant), never the key.
    with sqlite3.connect(path) as conn:
        (mode,) = conn.execute("SELECT value FROM aurelis_meta WHERE name = 'seal'").fetchone()
    check = hmac.new(KEY_BYTES, b"aurelis sqlite key check v1", hashlib.sha256).hexdigest()[:32]
    assert mode == f"aes-256-gcm:{check}"
    plain = AESGCM(KEY_BYTES).decrypt(value[1:13], value[13:], b"k")
    # Sealed again by an independent implementation, under a fresh nonce: the tier opens it.
    nonce = os.urandom(12)
    with sqlite3.connect(path) as conn:
        conn.execute(
            "UPDATE aurelis_entries SET value = ? WHERE key = 'k'",
            (b"\xe1" + nonce + AESGCM(KEY_BYTES).encrypt(nonce, plain, b"k"),),
        )
    found = lookup(tier, "k")
    assert found is not None and found.body == b'{"answer":"sealed"}'
    assert tier.stats()["bytes"] == len(value)
    pipeline.close()


def test_a_large_sealed_answer_reads_back_whole(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    pipeline, tier, clock = open_tier(path, encryption_key=base64.urlsafe_b64encode(KEY_BYTES).decode())
    body = os.urandom(3 * 1024 * 1024 // 2)  # over 1 MiB: sealed and written piece by piece
    assert tier.put("big", answer(clock, body))
    found = lookup(tier, "big")
    assert found is not None and found.body == body
    with sqlite3.connect(path) as conn:
        (size, length) = conn.execute("SELECT size, length(value) FROM aurelis_entries").fetchone()
    assert size == length
    pipeline.close()
    # The same key written as standard base64 and as hex opens the same file.
    for text in (base64.b64encode(KEY_BYTES).decode(), f"  {KEY_BYTES.hex()}\n"):
        again, tier, clock = open_tier(path, encryption_key=text)
        found = lookup(tier, "big")
        assert found is not None and found.body == body
        again.close()


# --- warming's ranking ------------------------------------------------------------------------------------------


def test_top_ranks_by_hits_then_last_hit_and_skips_expired(tmp_path: Path) -> None:
    pipeline, tier, clock = open_tier(tmp_path / "c.sqlite3", ttl=100)
    for key in ("a", "b", "c", "d", "e"):
        assert tier.put(key, answer(clock, ttl=10 if key == "d" else None))
        clock.now += 1  # "e" last used after "c": ranked before it
    for key in ("b", "b", "a", "d", "d", "d"):
        assert lookup(tier, key) is not None
    settle(tier)
    assert [key for key, _ in tier.top(10)] == ["d", "b", "a", "e", "c"]
    clock.now += 8  # "d" has lived its 10 s, exactly
    assert [key for key, _ in tier.top(10)] == ["b", "a", "e", "c"]
    assert [key for key, _ in tier.top(2)] == ["b", "a"]

    async def atop() -> list[str]:
        return [key for key, _ in await tier.atop(2)]

    assert anyio.run(atop) == ["b", "a"]
    assert tier.stats() == {**tier.stats(), "entries": 4, "expired": 1, "hits": 3}
    pipeline.close()


# --- reading and writing from both kinds of client ---------------------------------------------------------------


def test_async_pipelines_in_new_event_loops_keep_reading(upstream: SimulatedServer, tmp_path: Path) -> None:
    """``asyncio.run`` per call: each loop gets its own connection, the one of a finished loop is let go."""
    pipeline = Pipeline({"plugins": ["normalize", "sqlite"], "sqlite": {"path": str(tmp_path / "c.sqlite3")}})
    body = {"model": "m", "messages": [{"role": "user", "content": "loops"}]}
    client = pipeline.instrument(httpx.AsyncClient())

    async def send() -> str:
        response = await client.post(upstream.base_url + "/chat/completions", json=body)
        await pipeline.plugin("sqlite").aflush()
        return response.headers["x-aurelis-cache"]

    assert [anyio.run(send) for _ in range(3)] == ["miss", "hit", "hit"]
    # The connections of the loops that are gone have been stopped: one worker thread is left, the last loop's.
    workers = [t for t in threading.enumerate() if "_connection_worker_thread" in t.name]
    for worker in workers:
        worker.join(timeout=0 if worker is workers[-1] else 10)
    assert sum(worker.is_alive() for worker in workers) == 1
    assert not pipeline.stats.tier_errors  # the first use from an async client made the file before reading it
    pipeline.close()


def test_closing_an_async_pipeline_stops_its_connection(upstream: SimulatedServer, tmp_path: Path) -> None:
    pipeline = Pipeline({"plugins": ["normalize", "sqlite"], "sqlite": {"path": str(tmp_path / "c.sqlite3")}})
    body = {"model": "m", "messages": [{"role": "user", "content": "aclose"}]}

    async def main() -> list[threading.Thread]:
        async with httpx.AsyncClient() as client:
            pipeline.instrument(client)
            await client.post(upstream.base_url + "/chat/completions", json=body)
            workers = [t for t in threading.enumerate() if "_connection_worker_thread" in t.name]
            await pipeline.aclose()
        return workers

    workers = anyio.run(main)
    assert workers
    for worker in workers:
        worker.join(timeout=10)
        assert not worker.is_alive()


# --- what is at the path ------------------------------------------------------------------------------------------


def test_inspect_file_tells_each_kind(tmp_path: Path) -> None:
    magic = b"SQLite format 3\x00"
    assert inspect_file(tmp_path / "none") == ("absent", "")
    (tmp_path / "empty").write_bytes(b"")
    assert inspect_file(tmp_path / "empty") == ("empty", "")
    # Just long enough to hold the mark (bytes 68..71).
    (tmp_path / "short").write_bytes(magic + b"\0" * 52 + b"\x1a\x5e\xc0\xde")
    assert inspect_file(tmp_path / "short") == ("ours", "")
    (tmp_path / "damaged").write_bytes(b"\0" * 68 + b"\x1a\x5e\xc0\xde" + b"\0" * 28)
    assert inspect_file(tmp_path / "damaged") == ("damaged", "its header is damaged")
    other = "is another application's SQLite database (application_id 0x4d505347)"
    (tmp_path / "other").write_bytes(magic + b"\0" * 52 + b"\x4d\x50\x53\x47")
    assert inspect_file(tmp_path / "other") == ("foreign", other)
    (tmp_path / "other-long").write_bytes(magic + b"\0" * 52 + b"\x4d\x50\x53\x47" + b"\x77" * 4000)
    assert inspect_file(tmp_path / "other-long") == ("foreign", other)
    (tmp_path / "tiny").write_bytes(magic)
    assert inspect_file(tmp_path / "tiny")[0] == "unmarked"
    assert inspect_file(tmp_path) == ("foreign", "is a directory")
    os.mkfifo(tmp_path / "fifo")
    assert inspect_file(tmp_path / "fifo") == ("foreign", "is not a regular file")
    # A name too long to look up: nothing to judge yet, and why.
    assert inspect_file(tmp_path / ("x" * 5000)) == ("unreadable", "cannot be inspected (File name too long)")


def test_problems_says_what_the_tier_would_do_with_the_path(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    pipeline, tier, clock = open_tier(path)
    assert tier.problems() == []  # nothing there yet: the tier creates its file
    assert tier.put("k", answer(clock))
    assert tier.problems() == []  # its own file
    pipeline.close()
    sealed, sealing, _ = open_tier(path, encryption_key=KEY_BYTES.hex())
    (problem,) = sealing.problems()  # a key, and the file holds plaintext entries
    assert problem.startswith(f"path {str(path)!r} holds unencrypted entries") and "would refuse" in problem
    sealed.close()

    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM aurelis_meta")  # no record of the seal: nothing to judge by
    assert tier.problems() == []
    data = bytearray(path.read_bytes())
    data[16:18] = b"\x00\x03"  # an impossible page size: the mark is there, SQLite cannot read it
    path.write_bytes(bytes(data))
    (problem,) = tier.problems()
    assert "cannot be read" in problem and "move it aside if damaged" in problem
    data[:16] = b"\0" * 16
    path.write_bytes(bytes(data))
    assert tier.problems() == [
        f"path {str(path)!r}: its header is damaged; the tier would move it aside and start a new file"
    ]

    path.unlink()
    conn = sqlite3.connect(path)  # the schema an earlier version wrote, without the mark: adopted
    conn.execute("CREATE TABLE aurelis_entries (key TEXT PRIMARY KEY)")
    conn.commit()
    assert tier.problems() == []
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")  # another tool's database
    conn.commit()
    conn.close()
    (problem,) = tier.problems()
    assert "without the cache tier's mark" in problem and "would refuse" in problem
    too_long = tmp_path / ("x" * 5000)
    unusable, tier_at_it, _ = open_tier(too_long)
    assert tier_at_it.problems() == [
        f"path {str(too_long)!r} cannot be inspected (File name too long): the tier cannot use it until it can"
    ]
    unusable.close()
    path.unlink()
    path.mkdir()
    assert tier.problems() == [
        f"path {str(path)!r} is a directory: the tier would refuse it and be bypassed (every lookup a miss)"
    ]


def test_expired_rows_are_purged_once_a_minute(tmp_path: Path) -> None:
    pipeline, tier, clock = open_tier(tmp_path / "c.sqlite3")
    mono = MonotonicClock()  # read just after the tier was made: a few microseconds after its last purge
    tier.clock = mono
    assert tier.put("short", answer(clock, ttl=1))
    clock.now += 2
    mono.now += 59.9
    assert tier.put("k1", answer(clock))
    assert tier.stats()["expired"] == 1  # less than a minute since the last purge: none yet
    mono.now += 0.2
    assert tier.put("k2", answer(clock))  # the write that finds the minute passed purges
    assert tier.stats()["expired"] == 0 and keys_in(tmp_path / "c.sqlite3") == {"k1", "k2"}
    assert tier.put("short", answer(clock, ttl=1))
    clock.now += 2
    mono.now += 60  # a minute since that purge, not more
    assert tier.put("k3", answer(clock))
    assert tier.stats()["expired"] == 1
    mono.now += 0.5
    assert tier.put("k4", answer(clock))
    assert tier.stats()["expired"] == 0
    pipeline.close()


def test_a_file_that_loses_its_seal_record_is_refused(tmp_path: Path, caplog: Any) -> None:
    import logging

    path = tmp_path / "c.sqlite3"
    pipeline, tier, clock = open_tier(path)
    assert tier.put("k1", answer(clock))
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM aurelis_meta")  # someone else's doing: whether entries are sealed is unknown
    with caplog.at_level(logging.ERROR, logger="aurelis"):
        assert not tier.put("k2", answer(clock))
        assert not tier.put("k3", answer(clock))  # refused from then on, said once
    assert keys_in(path) == {"k1"}
    assert [r.getMessage() for r in caplog.records if "does not use" in r.getMessage()] == [
        f"cache tier 'sqlite' does not use {path}: it lost its record of whether its entries are sealed. The tier "
        "is bypassed until the pipeline is rebuilt: every lookup is a miss and every write is dropped (counted as "
        "sqlite.refused); nothing at that path is moved or changed."
    ]
    assert lookup(tier, "k1") is None
    assert pipeline.stats.tier_errors["sqlite.refused"] >= 2
    pipeline.close()


def test_a_refused_path_takes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    pipeline, tier, clock = open_tier(path)
    path.mkdir()  # after the build
    assert not tier.put("k", answer(clock))
    assert not tier.put("k", answer(clock))  # known refused: not tried again
    assert tier.stats() == {"refused": "is a directory"}
    assert tier.top(10) == []

    async def atop() -> list[tuple[str, CacheEntry]]:
        return await tier.atop(10)  # type: ignore[no-any-return]

    assert anyio.run(atop) == []
    # Refused until the pipeline is rebuilt, even when the path is cleared meanwhile.
    path.rmdir()
    assert not tier.put("k", answer(clock))
    assert lookup(tier, "k") is None
    assert tier.stats() == {"refused": "is a directory"} and tier.top(10) == []
    assert not path.exists()
    pipeline.close()


NOT_A_KEY = "expected 32 bytes, written as 64 hex digits or as base64, got a string"


@pytest.mark.parametrize(
    "key, expected",
    [
        (5, "expected a string, got an integer"),
        ("too-short-to-be-a-key", NOT_A_KEY),
        (base64.b64encode(b"k" * 31).decode(), NOT_A_KEY),
        ("zz" * 32, NOT_A_KEY),  # 64 characters, not hex: read as base64, 48 bytes
        ("*" + base64.b64encode(KEY_BYTES).decode(), NOT_A_KEY),  # a stray character is not skipped
    ],
)
def test_a_bad_encryption_key_names_the_option_and_never_shows_the_key(
    tmp_path: Path, key: object, expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Pipeline({"plugins": ["sqlite"], "sqlite": {"path": str(tmp_path / "c.sqlite3"), "encryption_key": key}})
    message = str(caught.value)
    assert f"[sqlite] encryption_key: {expected}" in message
    assert str(key) not in message  # a key is a secret, even a malformed one


def test_the_documented_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AURELIS_CACHE_KEY", raising=False)
    pipeline = Pipeline({"plugins": ["sqlite"]})
    tier = pipeline.plugin("sqlite")
    config = tier.config
    # docs/plugins/sqlite.md, for [sqlite].
    assert (config.path, config.ttl, config.max_bytes, config.codec, config.encryption_key) == (
        ".aurelis/cache.sqlite3", 86400, 512 * 1024 * 1024, "lz4", None
    )
    assert (config.busy_timeout, config.queue_size, config.warm.on_start, config.warm.top) == (1, 10000, False, 1000)
    clock = WallClock()
    tier.wall_clock = clock
    body = b'{"answer":"' + b"the same words again " * 500 + b'"}'
    assert tier.put("k", answer(clock, body))
    assert tier.stats()["bytes"] < len(body) // 4  # lz4 at rest
    clock.now += 86399
    assert lookup(tier, "k") is not None
    clock.now += 1
    assert lookup(tier, "k") is None
    pipeline.close()
    assert (tmp_path / ".aurelis" / "cache.sqlite3").exists()


def test_encryption_without_its_extra_says_which_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.ciphers.aead", None)  # not installed
    with pytest.raises(ImportError, match=r"pip install 'aurelis\[encryption\]'"):
        Pipeline({"plugins": ["sqlite"], "sqlite": {"path": str(tmp_path / "c.sqlite3"), "encryption_key": "42" * 32}})


def test_a_sealed_value_that_does_not_open_is_a_miss(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    path = tmp_path / "c.sqlite3"
    pipeline, tier, clock = open_tier(path, encryption_key=KEY_BYTES.hex())
    assert tier.put("k", answer(clock, b'{"answer":"sealed"}'))
    with sqlite3.connect(path) as conn:
        (value,) = conn.execute("SELECT value FROM aurelis_entries WHERE key = 'k'").fetchone()
    flipped = value[:20] + bytes((value[20] ^ 1,)) + value[21:]
    tampered = [
        flipped,  # one bit of the ciphertext
        b"\x01" + value[1:],  # the marker: it is not authenticated by the seal, so it is checked on its own
        value[:28],  # shorter than a nonce and a tag
        b"\xe1" + value[1:7],  # not even a whole nonce (AES-GCM takes none shorter than 8 bytes)
    ]
    with caplog.at_level(logging.WARNING, logger="aurelis"):
        for n, bad in enumerate(tampered, 1):
            with sqlite3.connect(path) as conn:
                conn.execute("UPDATE aurelis_entries SET value = ? WHERE key = 'k'", (bad,))
            assert lookup(tier, "k") is None
            assert pipeline.stats.tier_errors["sqlite.unauthenticated"] == n
    assert "sqlite.get" not in pipeline.stats.tier_errors
    warnings = [r.getMessage() for r in caplog.records if "do not decrypt with the configured key" in r.getMessage()]
    assert len(warnings) == 1 and "(1 so far, counted as sqlite.unauthenticated)" in warnings[0]
    pipeline.close()


def test_a_file_of_an_earlier_version_with_its_seal_record_is_adopted(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    with sqlite3.connect(path) as conn:  # both of the tier's tables, no mark
        conn.execute(
            "CREATE TABLE aurelis_entries (key TEXT PRIMARY KEY, value BLOB NOT NULL, expires REAL, "
            "size INTEGER NOT NULL, hits INTEGER NOT NULL DEFAULT 0, last_hit REAL NOT NULL)"
        )
        conn.execute("CREATE TABLE aurelis_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute("INSERT INTO aurelis_meta VALUES ('seal', 'none')")
    pipeline, tier, clock = open_tier(path)
    assert tier.put("k", answer(clock))
    assert lookup(tier, "k") is not None
    pipeline.close()
    assert inspect_file(path) == ("ours", "")


def test_a_failed_write_is_counted_and_logged_with_the_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    path = tmp_path / "c.sqlite3"
    pipeline, tier, clock = open_tier(path, busy_timeout=0.05)
    assert tier.put("k0", answer(clock))
    ctx = RequestContext(None, None, httpx, False, RequestControls())
    ctx.key = "k1"
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock past the busy timeout
    try:
        with caplog.at_level(logging.WARNING, logger="aurelis"):
            tier.aurelis_cache_set(ctx, answer(clock), False)
            tier.flush()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert pipeline.stats.tier_errors["sqlite.write"] == 1
    assert f"cache tier 'sqlite' at {path} failed to write (1 so far)" in caplog.text
    assert keys_in(path) == {"k0"}
    pipeline.close()


def test_the_file_and_its_directories_are_made_on_first_use(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "c.sqlite3"
    pipeline, tier, clock = open_tier(path)
    umask = os.umask(0o002)  # made with 0o666 less the umask, like any file a program creates
    try:
        assert tier.put("k", answer(clock))
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o664
    assert lookup(tier, "k") is not None  # this thread's connection, besides the writer's
    pipeline.close()
    assert not open_files_at(path)  # closing released every connection
    # A closed pipeline's tier opens the file again when asked (the CLI reads stats after a run).
    assert tier.stats()["entries"] == 1


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_lookup_that_fails_is_a_counted_miss_naming_its_error(
    upstream: SimulatedServer, tmp_path: Path, caplog: pytest.LogCaptureFixture, is_async: bool
) -> None:
    import logging

    path = tmp_path / "c.sqlite3"
    pipeline = Pipeline({"plugins": ["normalize", "sqlite"], "sqlite": {"path": str(path)}})
    assert pipeline.plugin("sqlite").stats()["entries"] == 0  # the file is made
    with sqlite3.connect(path) as conn:
        # Not damage, nor a file gone (a missing table is one: the tier starts the file again): an error the
        # tier cannot deal with.
        conn.execute("ALTER TABLE aurelis_entries RENAME COLUMN value TO renamed")
    body = {"model": "m", "messages": [{"role": "user", "content": "fails"}]}
    url = upstream.base_url + "/chat/completions"
    with caplog.at_level(logging.WARNING, logger="aurelis"):
        if is_async:

            async def main() -> str:
                async with httpx.AsyncClient() as client:
                    pipeline.instrument(client)
                    return (await client.post(url, json=body)).headers["x-aurelis-cache"]

            assert anyio.run(main) == "miss"
        else:
            with httpx.Client() as client:
                pipeline.instrument(client)
                assert client.post(url, json=body).headers["x-aurelis-cache"] == "miss"
    assert pipeline.stats.tier_errors["sqlite.get"] == 1
    assert "no such column: value" in caplog.text
    pipeline.close()


def test_a_file_locked_while_the_tier_opens_it_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    writer, writing, clock = open_tier(path)
    assert writing.put("k", answer(clock))
    writer.close()
    pipeline, tier, _ = open_tier(path, busy_timeout=0.05)
    tier.wall_clock = clock
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process writes for longer than the busy timeout
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            lookup(tier, "k")  # this use fails (the pipeline counts a miss); the file is not judged damaged
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert sorted(p.name for p in tmp_path.iterdir() if "corrupt" in p.name) == []
    assert lookup(tier, "k") is not None  # the next use opens it
    pipeline.close()


def test_a_no_store_request_reads_l3_but_promotes_nothing(upstream: SimulatedServer, tmp_path: Path) -> None:
    """no-store: the request may be answered from the cache, but nothing is written for it, not even a copy of a
    lower tier's hit into the tiers above (a plain request right after is still an L3 hit, then an L1 one)."""
    config = {"plugins": ["normalize", "memory", "sqlite"], "sqlite": {"path": str(tmp_path / "c.sqlite3")}}
    body = {"model": "m", "messages": [{"role": "user", "content": "no-store promotion"}]}
    with Pipeline(config).instrument(httpx.Client(base_url=upstream.base_url)) as client:
        assert client.post("/chat/completions", json=body).headers["x-aurelis-cache"] == "miss"
    with Pipeline(config).instrument(httpx.Client(base_url=upstream.base_url)) as client:  # memory is empty
        tiers = []
        for headers in ({"cache-control": "no-store"}, {}, {}):
            response = client.post("/chat/completions", json=body, headers=headers)
            tiers.append((response.headers["x-aurelis-cache"], response.headers["x-aurelis-cache-tier"]))
    assert tiers == [("hit", "sqlite"), ("hit", "sqlite"), ("hit", "memory")]
