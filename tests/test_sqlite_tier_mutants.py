"""The ``sqlite`` tier where its file changes under it: moved away while written in rollback-journal mode, its
mark cleared by another connection, a path that cannot be inspected, values of another format version, writes
dropped by a refusal. Real files; the tier's public methods and its lookup hook, as the pipeline calls it; a fake
wall clock for every lifetime."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import threading
from contextlib import closing
from pathlib import Path

import anyio
import httpx
import pytest
from support import live_loops, open_files_at
from test_sqlite_behaviour import KEY_BYTES, answer, lookup, open_tier, settle
from test_sqlite_files import damage_pages

from aurelis_core import CacheEntry, RequestContext, RequestControls
from aurelis_plugins.sqlite_tier import inspect_file


def rollback_journal(path: Path) -> None:
    """Switch the closed file from WAL to a rollback journal (what another tool may do while no process has it
    open): SQLite then notices, on the next write, that the file was moved or deleted under a connection."""
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA journal_mode=DELETE").fetchone() == ("delete",)


def keys_at(path: Path) -> set[str]:
    with closing(sqlite3.connect(path)) as conn:
        return {key for (key,) in conn.execute("SELECT key FROM aurelis_entries")}


def write_only_file() -> Path:
    """A non-empty regular file that even root may not open for reading (a write-only sysfs attribute)."""
    for candidate in sorted(Path("/sys/bus").glob("*/drivers_probe")):
        try:
            info = candidate.stat()
            if stat.S_ISREG(info.st_mode) and info.st_size > 0:
                candidate.open("rb").close()
        except PermissionError:
            return candidate
        except OSError:
            continue
    pytest.skip("no write-only sysfs attribute on this machine")


# --- what is at the path -------------------------------------------------------------------------------------------


def test_a_file_that_cannot_be_read_is_unreadable_not_judged(tmp_path: Path) -> None:
    path = write_only_file()
    assert inspect_file(path) == ("unreadable", "cannot be read (Permission denied)")


def test_a_path_that_cannot_be_inspected_fails_each_use_without_a_refusal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / ("x" * 5000)  # a name too long to look up: nothing there to judge, so nothing refused
    pipeline, tier, clock = open_tier(path)
    with caplog.at_level(logging.ERROR, logger="aurelis"):
        for _ in range(2):  # each use looks again
            with pytest.raises(OSError, match="cannot be inspected"):
                tier.put("k", answer(clock))
        with pytest.raises(OSError, match="cannot be inspected"):
            tier.stats()
    assert not [r for r in caplog.records if "does not use" in r.getMessage()]
    assert "sqlite.refused" not in pipeline.stats.tier_errors
    pipeline.close()


def test_a_file_whose_mark_was_cleared_in_its_journal_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Another connection clears the mark and keeps its write in the WAL: the header bytes still carry the mark,
    the database (what the tier reads inside its transaction) does not. The tier refuses it, unchanged."""
    path = tmp_path / "c.sqlite3"
    pipeline, tier, clock = open_tier(path)
    assert tier.put("k", answer(clock))
    pipeline.close()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("PRAGMA application_id = 0")
        assert inspect_file(path) == ("ours", "")  # not checkpointed: the file's own header is unchanged
        again, tier, clock = open_tier(path)
        with caplog.at_level(logging.ERROR, logger="aurelis"):
            assert not tier.put("k2", answer(clock))
            assert not tier.put("k3", answer(clock))
        assert again.stats.tier_errors["sqlite.refused"] == 1  # the store that met it, dropped once
        (message,) = [r.getMessage() for r in caplog.records if "does not use" in r.getMessage()]  # said once
        assert f"does not use {path}: it lost the cache tier's mark while being opened." in message
        assert tier.stats() == {"refused": "lost the cache tier's mark while being opened"}
        assert lookup(tier, "k") is None
        again.close()
        assert other.execute("PRAGMA application_id").fetchone() == (0,)
        assert {key for (key,) in other.execute("SELECT key FROM aurelis_entries")} == {"k"}
    finally:
        other.close()


# --- a file moved away under the tier ------------------------------------------------------------------------------


def test_a_file_moved_away_under_a_rollback_journal_writer_is_started_anew(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    pipeline, tier, clock = open_tier(path)
    assert tier.put("k", answer(clock))
    tier.aurelis_close(pipeline)  # what closing the pipeline does to the tier: no connection left open
    rollback_journal(path)
    assert tier.put("a", answer(clock))  # the tier opens the file again when asked
    away = tmp_path / "away.sqlite3"
    os.replace(path, away)
    assert tier.put("b", answer(clock))  # the write meets the move: a new file at the path, the batch in it
    assert keys_at(path) == {"b"} and keys_at(away) == {"k", "a"}
    assert inspect_file(path) == ("ours", "")
    assert not pipeline.stats.tier_errors
    assert lookup(tier, "b") is not None and lookup(tier, "a") is None
    assert not open_files_at(away)  # the connections to the moved file were let go
    pipeline.close()


def delete_file(path: Path) -> None:
    """Delete the cache file and its WAL files, as an operator clearing the cache by hand does."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def test_a_file_deleted_under_a_wal_writer_is_started_anew(tmp_path: Path) -> None:
    # In WAL mode (the default) the open connections notice nothing: they would go on writing into the unlinked
    # file, whose entries vanish at exit, while every new connection found an empty file without the table.
    path = tmp_path / "c.sqlite3"
    pipeline, tier, clock = open_tier(path)
    assert tier.put("k", answer(clock))
    delete_file(path)
    assert tier.put("b", answer(clock))
    assert keys_at(path) == {"b"} and inspect_file(path) == ("ours", "")
    found: list[bool] = []
    reader = threading.Thread(target=lambda: found.append(lookup(tier, "b") is not None))  # a new connection
    reader.start()
    reader.join()
    assert found == [True] and lookup(tier, "b") is not None and lookup(tier, "k") is None
    assert not pipeline.stats.tier_errors
    pipeline.close()


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_file_deleted_before_a_new_connection_reads_it_is_a_miss_then_started_anew(
    tmp_path: Path, is_async: bool
) -> None:
    path = tmp_path / "c.sqlite3"
    pipeline, tier, clock = open_tier(path)
    assert tier.put("k", answer(clock))
    tier.aurelis_close(pipeline)  # no connection left open: the next read opens one, to whatever is at the path
    delete_file(path)
    assert lookup(tier, "k", is_async) is None  # a miss, not an error: the file is gone
    assert inspect_file(path) == ("ours", "")  # and a new one was started for the next uses
    assert tier.put("b", answer(clock))
    assert lookup(tier, "b", is_async) is not None and keys_at(path) == {"b"}
    assert not pipeline.stats.tier_errors
    pipeline.close()


def workers() -> set[threading.Thread]:
    """The live worker threads of aiosqlite connections (one per connection)."""
    return {t for t in threading.enumerate() if "_connection_worker_thread" in t.name}


def test_an_async_connection_to_a_file_moved_away_is_closed_and_replaced(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    pipeline, tier, clock = open_tier(path)
    assert tier.put("k", answer(clock))
    tier.aurelis_close(pipeline)  # what closing the pipeline does to the tier: no connection left open
    rollback_journal(path)
    away = tmp_path / "away.sqlite3"
    ctx = RequestContext(None, None, httpx, True, RequestControls())
    earlier = workers()

    async def main() -> tuple[list[bool], list[str], list[set[threading.Thread]]]:
        found = []
        ctx.key = "k"
        found.append(await tier.aurelis_cache_get(ctx) is not None)  # this loop's connection, to the file
        assert tier.put("a", answer(clock))  # and this thread's
        os.replace(path, away)
        assert tier.put("b", answer(clock))  # a write meets the move: a new file
        ctx.key = "b"
        threads = []
        for _ in range(3):
            found.append(await tier.aurelis_cache_get(ctx) is not None)  # the loop's connection is replaced, once
            threads.append(workers() - earlier)
        return found, open_files_at(away), threads

    found, still_open, threads = anyio.run(main)
    assert found == [True, True, True, True]
    assert still_open == []  # the connection to the moved file was closed, not left running
    assert threads[0] and threads[1] <= threads[0] and threads[2] <= threads[0]  # the loop's new connection kept
    assert all(worker.daemon for worker in threads[0])  # a pipeline never closed does not keep the process alive
    pipeline.close()


def test_live_loops_in_turn_each_keep_one_connection_and_closing_stops_them_all(tmp_path: Path) -> None:
    # Threads each running their own event loop (an asyncio connection belongs to its loop), asking in turn: each
    # loop keeps its connection (a switch replaced the other loop's, never closing it: a worker thread leaked per
    # switch), and closing the pipeline stops every one.
    import asyncio

    path = tmp_path / "c.sqlite3"
    pipeline, tier, clock = open_tier(path)
    assert tier.put("k", answer(clock))
    earlier = workers()

    async def ask() -> bool:
        ctx = RequestContext(None, None, httpx, True, RequestControls())
        ctx.key = "k"
        return await tier.aurelis_cache_get(ctx) is not None

    with live_loops(2) as loops:
        found = [asyncio.run_coroutine_threadsafe(ask(), loops[turn % 2]).result(10) for turn in range(8)]
        assert found == [True] * 8
        assert len(workers() - earlier) == 2  # one per loop, however often they took turns
        pipeline.close()
        for worker in workers() - earlier:
            worker.join(timeout=5)
        assert not workers() - earlier


def test_a_file_moved_away_when_its_directory_cannot_be_made_again_fails_that_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "cache"
    path = folder / "c.sqlite3"
    pipeline, tier, clock = open_tier(path)
    assert tier.put("k", answer(clock))
    tier.aurelis_close(pipeline)  # what closing the pipeline does to the tier: no connection left open
    rollback_journal(path)
    assert tier.put("a", answer(clock))
    folder.rename(tmp_path / "moved")
    folder.write_text("a file where the cache directory was")
    with caplog.at_level(logging.WARNING, logger="aurelis"):
        with pytest.raises(OSError):
            tier.put("b", answer(clock))
    assert f"cache file {path} could not be reopened" in caplog.text
    assert not [r for r in caplog.records if "does not use" in r.getMessage()]  # not refused: tried again
    folder.unlink()
    assert tier.put("c", answer(clock))
    assert keys_at(path) == {"c"} and keys_at(tmp_path / "moved" / "c.sqlite3") == {"k", "a"}
    pipeline.close()


def test_a_file_moved_away_and_replaced_by_a_directory_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "c.sqlite3"
    pipeline, tier, clock = open_tier(path)
    assert tier.put("k", answer(clock))
    tier.aurelis_close(pipeline)  # what closing the pipeline does to the tier: no connection left open
    rollback_journal(path)
    assert tier.put("a", answer(clock))
    os.replace(path, tmp_path / "away.sqlite3")
    path.mkdir()
    with caplog.at_level(logging.ERROR, logger="aurelis"):
        assert not tier.put("b", answer(clock))  # dropped, counted once as refused
    assert dict(pipeline.stats.tier_errors) == {"sqlite.refused": 1}
    assert len([r for r in caplog.records if "does not use" in r.getMessage()]) == 1
    assert tier.stats() == {"refused": "is a directory"}
    assert path.is_dir() and not list(path.iterdir())
    pipeline.close()


# --- what is read back ---------------------------------------------------------------------------------------------


def test_a_value_of_another_format_version_is_a_quiet_miss(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "c.sqlite3"
    pipeline, tier, clock = open_tier(path)
    assert tier.put("k", answer(clock))
    with closing(sqlite3.connect(path)) as conn, conn:
        (value,) = conn.execute("SELECT value FROM aurelis_entries WHERE key = 'k'").fetchone()
        conn.execute("UPDATE aurelis_entries SET value = ? WHERE key = 'k'", (bytes((value[0] + 1,)) + value[1:],))
    with caplog.at_level(logging.WARNING, logger="aurelis"):
        assert lookup(tier, "k") is None
        assert tier.top(10) == []
    assert not pipeline.stats.tier_errors  # written by another version: not an altered value
    assert "do not verify" not in caplog.text
    pipeline.close()


# --- writes dropped by a refusal -------------------------------------------------------------------------------------


def test_a_refused_batch_counts_its_stores_not_its_hit_counts(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    pipeline, tier, clock = open_tier(path)
    assert tier.put("k", answer(clock))
    assert lookup(tier, "k") is not None  # a hit count, handed to the queue below
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("DELETE FROM aurelis_meta")  # the file no longer says whether its entries are sealed
    settle(tier)  # the hit count's batch is refused: nothing stored is dropped, nothing counted
    assert "sqlite.refused" not in pipeline.stats.tier_errors
    ctx = RequestContext(None, None, httpx, False, RequestControls())
    ctx.key = "k2"
    tier.aurelis_cache_set(ctx, answer(clock), False)  # refused: bypassed at once, counted
    assert pipeline.stats.tier_errors["sqlite.refused"] == 1
    with closing(sqlite3.connect(path)) as conn, conn:
        assert conn.execute("SELECT hits FROM aurelis_entries WHERE key = 'k'").fetchone() == (0,)
    pipeline.close()


@pytest.mark.parametrize("plain", [b"", b"\x03 a value of a later format"], ids=["empty", "later-format"])
def test_a_sealed_value_that_opens_but_holds_no_entry_is_a_quiet_miss(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, plain: bytes
) -> None:
    """Sealed under the file's key for this very row, so not tampered with: a value this version cannot read."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    path = tmp_path / "c.sqlite3"
    pipeline, tier, clock = open_tier(path, encryption_key=KEY_BYTES.hex())
    assert tier.put("k", answer(clock))
    nonce = os.urandom(12)
    sealed = b"\xe1" + nonce + AESGCM(KEY_BYTES).encrypt(nonce, plain, b"k")
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE aurelis_entries SET value = ? WHERE key = 'k'", (sealed,))
    with caplog.at_level(logging.WARNING, logger="aurelis"):
        assert lookup(tier, "k") is None
    assert not pipeline.stats.tier_errors
    assert "do not decrypt" not in caplog.text
    pipeline.close()


# --- clearing ------------------------------------------------------------------------------------------------------


def test_clearing_gives_the_space_back_to_the_file_system(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    pipeline, tier, clock = open_tier(path)
    for i in range(20):
        assert tier.put(f"k{i}", answer(clock, os.urandom(20_000)))  # incompressible: 400 kB stored
    assert tier.clear() == 20
    pipeline.close()
    assert path.stat().st_size < 100_000  # not kept as free pages inside the file


# --- async connections -----------------------------------------------------------------------------------------------


def test_an_async_lookup_that_failed_to_open_the_file_tries_again_in_the_same_loop(tmp_path: Path) -> None:
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache directory should be")
    path = blocker / "c.sqlite3"
    pipeline, tier, clock = open_tier(path)
    ctx = RequestContext(None, None, httpx, True, RequestControls())
    ctx.key = "k"

    async def main() -> bool:
        with pytest.raises(OSError):
            await tier.aurelis_cache_get(ctx)  # the directory cannot be made: this use fails (a counted miss)
        blocker.unlink()
        assert await tier.aurelis_cache_get(ctx) is None  # the next use of this loop opens the file
        assert tier.put("k", answer(clock))
        return await tier.aurelis_cache_get(ctx) is not None

    assert anyio.run(main)
    pipeline.close()


def test_a_damaged_file_someone_moved_away_is_left_where_it_is(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The damage is met after the file was moved away: nothing at the path to move aside, a new file there."""
    path = tmp_path / "c.sqlite3"
    pipeline, tier, clock = open_tier(path)
    for i in range(6):
        assert tier.put(f"k{i}", answer(clock, os.urandom(2000)))
    damage_pages(path)
    away = tmp_path / "away.sqlite3"
    os.replace(path, away)
    moved = away.read_bytes()
    with caplog.at_level(logging.WARNING, logger="aurelis"):
        assert lookup(tier, "k1") is None  # met the damage: a miss, and a new file at the path
        assert inspect_file(path) == ("ours", "")
        assert tier.put("k1", answer(clock))
        assert lookup(tier, "k1") is not None
    assert pipeline.stats.tier_errors["sqlite.corrupt"] == 1
    assert "could not be reopened" not in caplog.text  # started anew at once, nothing failed
    assert away.read_bytes() == moved and not list(tmp_path.glob("*corrupt*"))
    pipeline.close()


def test_a_new_thread_reads_while_another_process_holds_the_write_lock(tmp_path: Path) -> None:
    """The file is made ready once: a thread's first lookup opens a connection and reads (WAL: readers never wait
    for the writer), it does not take the write lock again."""
    path = tmp_path / "c.sqlite3"
    pipeline, tier, clock = open_tier(path, busy_timeout=0.05)
    assert tier.put("k", answer(clock))
    found: list[object] = []
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process writes for longer than the busy timeout
    try:
        for _ in range(2):
            reader = threading.Thread(target=lambda: found.append(lookup(tier, "k")))
            reader.start()
            reader.join()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert len(found) == 2 and all(entry is not None for entry in found)
    pipeline.close()


def test_the_stats_of_a_file_damaged_while_closed_are_those_of_its_new_file(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    pipeline, tier, clock = open_tier(path)
    for i in range(6):
        assert tier.put(f"k{i}", answer(clock, os.urandom(2000)))
    pipeline.close()
    damage_pages(path)
    again, tier, clock = open_tier(path)
    assert tier.stats() == {**tier.stats(), "entries": 0, "bytes": 0}  # moved aside when opened, a new file
    assert len(list(tmp_path.glob("c.sqlite3.corrupt-*"))) >= 1
    assert not again.stats.tier_errors
    again.close()


def damage_key_index(path: Path) -> None:
    """Checkpoint, then overwrite the root page of the index of the table's keys (what a lookup reads; opening
    the file reads only the table itself): the file is damaged where only a lookup or a store finds it."""
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        ((root,),) = conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE type = 'index' AND tbl_name = 'aurelis_entries' "
            "AND name LIKE 'sqlite_autoindex_%'"
        ).fetchall()
        (page_size,) = conn.execute("PRAGMA page_size").fetchone()
    with path.open("r+b") as file:
        file.seek((root - 1) * page_size)
        file.write(b"\xa5" * page_size)


def test_a_file_damaged_where_only_lookups_read_is_moved_aside_by_the_recovery(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    pipeline, tier, clock = open_tier(path)
    for i in range(3):
        assert tier.put(f"k{i}", answer(clock))
    damage_key_index(path)
    assert lookup(tier, "k1") is None  # met the damage: the file the tier opened is moved aside, a new one made
    assert len(list(tmp_path.glob("c.sqlite3.corrupt-*[0-9]"))) == 1
    assert pipeline.stats.tier_errors["sqlite.corrupt"] == 1
    assert tier.put("k1", answer(clock))
    assert lookup(tier, "k1") is not None
    assert tier.stats()["entries"] == 1 and pipeline.stats.tier_errors["sqlite.corrupt"] == 1
    pipeline.close()


# --- what is stored ------------------------------------------------------------------------------------------------


def test_expiry_times_on_disk_are_null_without_a_lifetime_and_exact_with_one(tmp_path: Path) -> None:
    """Shared with every process and version using the file: ``expires`` is NULL for an entry that never expires,
    else its creation plus its lifetime on the wall clock. A wall clock at the epoch's first second shows that
    only 0 means "expired" (an entry that expires at t = 1 is stored, by put and by the hook alike)."""
    path = tmp_path / "c.sqlite3"
    pipeline, tier, clock = open_tier(path, ttl=None)
    clock.now = 0.0
    assert tier.put("forever", answer(clock))
    assert tier.put("one-second", answer(clock, ttl=1))
    ctx = RequestContext(None, None, httpx, False, RequestControls())
    ctx.key = "hook-one-second"
    tier.aurelis_cache_set(ctx, answer(clock, ttl=1), False)
    tier.flush()
    with closing(sqlite3.connect(path)) as conn:
        rows = dict(conn.execute("SELECT key, expires FROM aurelis_entries").fetchall())
    assert rows == {"forever": None, "one-second": 1.0, "hook-one-second": 1.0}
    assert lookup(tier, "one-second") is not None
    clock.now = 1.0
    assert lookup(tier, "one-second") is None and lookup(tier, "forever") is not None
    pipeline.close()


def test_a_refused_tier_drops_a_store_at_once_without_queueing_it(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    pipeline, tier, clock = open_tier(path)
    path.mkdir()
    assert tier.stats() == {"refused": "is a directory"}
    ctx = RequestContext(None, None, httpx, True, RequestControls())
    ctx.key = "k"

    async def main() -> list[int]:
        counts = []
        tier.aurelis_cache_set(ctx, answer(clock), False)
        counts.append(pipeline.stats.tier_errors["sqlite.refused"])  # before this loop's writer could run
        await tier.aflush()
        counts.append(pipeline.stats.tier_errors["sqlite.refused"])
        return counts

    assert anyio.run(main) == [1, 1]
    pipeline.close()


def test_a_keyed_writer_stops_when_the_file_says_it_holds_plaintext(tmp_path: Path) -> None:
    """Each batch checks the file's record: one that now says plaintext is never sealed into, whether or not it
    looks empty (another process may be writing its plaintext entries)."""
    path = tmp_path / "c.sqlite3"
    pipeline, tier, clock = open_tier(path, encryption_key=KEY_BYTES.hex())
    assert tier.put("k", answer(clock))
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("DELETE FROM aurelis_entries")
        conn.execute("UPDATE aurelis_meta SET value = 'none' WHERE name = 'seal'")
    assert not tier.put("k2", answer(clock))
    refused = tier.stats()["refused"]
    assert refused.startswith("holds unencrypted entries, and this process has an encryption key")
    pipeline.close()


def test_a_file_refused_while_running_has_no_stats_or_top_entries_and_is_not_cleared(tmp_path: Path) -> None:
    """Refused after this process opened it (its record of sealing gone): the tier's connections stay open, but
    nothing is read from or deleted in the file any more, as for a file refused when first opened."""
    path = tmp_path / "c.sqlite3"
    pipeline, tier, clock = open_tier(path)
    assert tier.put("k1", answer(clock))
    assert lookup(tier, "k1") is not None
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("DELETE FROM aurelis_meta")
    assert not tier.put("k2", answer(clock))  # the batch finds the record gone: refused
    why = "lost its record of whether its entries are sealed"
    assert tier.stats() == {"refused": why}
    assert tier.top(10) == []

    async def atop() -> list[object]:
        return list(await tier.atop(10))

    assert anyio.run(atop) == []
    with pytest.raises(RuntimeError, match=f"refused {path}: it {why}"):
        tier.clear()
    assert keys_at(path) == {"k1"}  # nothing deleted
    pipeline.close()


# --- the size cap and warming's ranking ------------------------------------------------------------------------------


def test_after_evicting_the_tier_knows_the_file_is_under_its_cap(tmp_path: Path) -> None:
    """Eviction leaves the file at 90% of the cap, and the tier counts it so: a later batch with nothing to store
    starts no eviction pass (which would also remove the entry that has expired since)."""
    probe, probing, clock = open_tier(tmp_path / "probe.sqlite3")
    assert probing.put("k", answer(clock))
    size = int(probing.stats()["bytes"])
    probe.close()
    path = tmp_path / "c.sqlite3"
    pipeline, tier, clock = open_tier(path, max_bytes=10 * size, ttl=100)
    tier.clock = lambda: 0.0  # no purge falls due: only the cap starts a pass
    for i in range(10):
        assert tier.put(f"k{i}", answer(clock, ttl=1 if i == 9 else None))
        clock.now += 0.1
    assert tier.put("k10", answer(clock))  # over the cap: down to 9 entries
    assert tier.stats()["entries"] == 9
    clock.now += 1  # k9 has expired
    assert lookup(tier, "k5") is not None
    settle(tier)  # hit counts only: the file is under its cap
    assert tier.stats() == {**tier.stats(), "entries": 8, "expired": 1}
    pipeline.close()


def test_top_includes_an_entry_with_less_than_a_second_left(tmp_path: Path) -> None:
    pipeline, tier, clock = open_tier(tmp_path / "c.sqlite3", ttl=100)
    assert tier.put("k", answer(clock, ttl=10))
    clock.now += 9.5
    assert [key for key, _ in tier.top(10)] == ["k"]
    assert tier.put("expired", answer(clock, ttl=1)) is True
    clock.now += 1
    assert tier.put("aged", CacheEntry(200, [], b"{}", created=clock.now - 100)) is False  # a bool, as documented
    pipeline.close()
