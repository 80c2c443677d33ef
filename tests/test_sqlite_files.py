"""The ``sqlite`` tier and what is at its path: it uses only its own file, recreates it when it turns corrupt,
and never mixes sealed and plaintext entries. Real files, real pipelines, a real loopback upstream."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from support import open_files_at

from aurelis_core import Pipeline
from aurelis_core.testing import SimulatedServer
from aurelis_core.tools.cli import main as cli_main

API_KEY = "sk-test-files"
KEY_A = base64.b64encode(b"A" * 32).decode()
KEY_B = base64.b64encode(b"B" * 32).decode()


def chat(n: int | str = 0) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": f"files question {n}"}]}


def config(path: Path, **options: Any) -> dict[str, Any]:
    return {"plugins": ["normalize", "sqlite"], "sqlite": {"path": str(path), **options}}


def ask(pipeline: Pipeline, upstream: SimulatedServer, bodies: list[dict[str, Any]], mode: str = "sync") -> list[str]:
    """Send ``bodies`` through ``pipeline`` (sync or async client), its writes flushed after each; the cache
    statuses."""
    url = upstream.base_url + "/chat/completions"
    auth = {"authorization": f"Bearer {API_KEY}"}
    tier = pipeline.plugin("sqlite")
    if mode == "sync":
        with httpx.Client() as client:
            pipeline.instrument(client)
            statuses = []
            for body in bodies:
                response = client.post(url, json=body, headers=auth)
                assert response.status_code == 200
                statuses.append(response.headers["x-aurelis-cache"])
                tier.flush()
        return statuses

    async def main() -> list[str]:
        async with httpx.AsyncClient() as client:
            pipeline.instrument(client)
            out = []
            for body in bodies:
                response = await client.post(url, json=body, headers=auth)
                assert response.status_code == 200
                out.append(response.headers["x-aurelis-cache"])
                await tier.aflush()
            return out

    return anyio.run(main)


def run(cfg: dict[str, Any], upstream: SimulatedServer, bodies: list[dict[str, Any]], mode: str = "sync") -> list[str]:
    pipeline = Pipeline(cfg)
    try:
        return ask(pipeline, upstream, bodies, mode)
    finally:
        pipeline.close()


def digest_of(path: Path) -> str:
    """A fingerprint of everything at ``path`` (a file's bytes, or a directory's names and files' bytes)."""
    h = hashlib.sha256()
    if path.is_dir():
        for item in sorted(path.rglob("*")):
            h.update(str(item.relative_to(path)).encode())
            if item.is_file():
                h.update(item.read_bytes())
    else:
        h.update(path.read_bytes())
    return h.hexdigest()


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and "does not use" in r.getMessage()]


def foreign_database(path: Path, application_id: int = 0, extra_table: bool = True) -> None:
    conn = sqlite3.connect(path)
    if application_id:
        conn.execute(f"PRAGMA application_id = {application_id}")
    conn.execute("CREATE TABLE aurelis_entries (key TEXT PRIMARY KEY, value BLOB)")  # a name clash, even
    if extra_table:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        conn.execute("INSERT INTO invoices (total) VALUES (12.5)")
    conn.commit()
    conn.close()


# --- 1. never move or delete what the tier did not create -------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_directory_at_the_path_is_refused_never_moved(
    upstream: SimulatedServer, tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    path = tmp_path / "cache.sqlite3"
    pipeline = Pipeline(config(path))
    # The directory appears after the pipeline was built (a build-time check could not have caught it).
    path.mkdir()
    (path / "notes.txt").write_text("precious")
    before = digest_of(path)
    with caplog.at_level(logging.WARNING, logger="aurelis"):
        assert ask(pipeline, upstream, [chat(), chat()], mode) == ["miss", "miss"]
    pipeline.close()
    assert path.is_dir() and digest_of(path) == before
    assert not list(tmp_path.glob("*corrupt*"))
    (message,) = refusals(caplog)  # one ERROR, naming the path and why
    assert str(path) in message and "is a directory" in message
    errors = pipeline.stats.tier_errors
    assert errors["sqlite.refused"] == 4  # two lookups bypassed, two writes dropped
    assert "sqlite.get" not in errors  # bypassed, not failed
    assert upstream.count("/chat/completions") == 2


@pytest.mark.parametrize(
    "make, why",
    [
        (lambda p: p.write_text("my notes\n" * 100), "not a SQLite database"),
        (lambda p: foreign_database(p), "without the cache tier's mark (another tool's?): delete it to let the tier "
                                        "start a new file there"),
        (lambda p: foreign_database(p, application_id=0x4D505347), "another application's SQLite database"),
        # SQLite's header, no application id, the rest unreadable.
        (lambda p: p.write_bytes(b"SQLite format 3\x00" + b"\xa5" * 52 + bytes(4) + b"\xa5" * 8192),
         "without the cache tier's mark"),
    ],
    ids=["text-file", "unmarked-database", "other-application", "unreadable-database"],
)
def test_a_file_the_tier_did_not_create_is_refused_untouched(
    upstream: SimulatedServer, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    make: Callable[[Path], None], why: str,
) -> None:
    path = tmp_path / "cache.sqlite3"
    make(path)
    before = digest_of(path)
    with caplog.at_level(logging.WARNING, logger="aurelis"):
        assert run(config(path), upstream, [chat(), chat()]) == ["miss", "miss"]
    assert digest_of(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.sqlite3"]  # nothing moved, nothing beside it
    (message,) = refusals(caplog)
    assert why in message


def test_a_damaged_file_carrying_the_mark_is_moved_aside_and_recreated(
    upstream: SimulatedServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cache.sqlite3"
    from aurelis_plugins.sqlite_tier import APPLICATION_ID

    assert run(config(path), upstream, [chat()]) == ["miss"]
    header = path.read_bytes()[:100]
    assert header[68:72] == APPLICATION_ID.to_bytes(4, "big")  # the mark, in the raw header
    with path.open("r+b") as file:
        file.write(b"\0" * 16)  # SQLite's own header string gone: "file is not a database"
    damaged = path.read_bytes()
    with caplog.at_level(logging.WARNING, logger="aurelis"):
        assert run(config(path), upstream, [chat(), chat()]) == ["miss", "hit"]
    (aside,) = moved_aside(tmp_path)
    assert aside.read_bytes() == damaged  # moved, not altered
    assert "moved it to" in caplog.text


def test_a_file_written_before_the_mark_is_adopted(upstream: SimulatedServer, tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite3"
    conn = sqlite3.connect(path)  # the schema earlier versions wrote, without a mark
    conn.execute(
        "CREATE TABLE aurelis_entries (key TEXT PRIMARY KEY, value BLOB NOT NULL, expires REAL, "
        "size INTEGER NOT NULL, hits INTEGER NOT NULL DEFAULT 0, last_hit REAL NOT NULL)"
    )
    conn.commit()
    conn.close()
    assert run(config(path), upstream, [chat(), chat()]) == ["miss", "hit"]
    from aurelis_plugins.sqlite_tier import APPLICATION_ID

    assert path.read_bytes()[68:72] == APPLICATION_ID.to_bytes(4, "big")


def test_config_check_reports_a_path_the_tier_would_refuse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cache.sqlite3"
    foreign_database(path)
    before = digest_of(path)
    toml = tmp_path / "aurelis.toml"
    toml.write_text(f'plugins = ["normalize", "sqlite"]\n[tenant]\nsecret = "s"\n[sqlite]\npath = "{path}"\n')
    assert cli_main(["config", "check", str(toml)]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and str(path) in err and "refuse" in err
    assert digest_of(path) == before
    path.unlink()
    assert cli_main(["config", "check", str(toml)]) == 0
    assert "warning" not in capsys.readouterr().err
    assert not path.exists()  # checking creates nothing


def test_cache_clear_does_not_touch_a_refused_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cache.sqlite3"
    foreign_database(path)
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO aurelis_entries VALUES ('theirs', x'00')")
    conn.commit()
    conn.close()
    before = digest_of(path)
    toml = tmp_path / "aurelis.toml"
    toml.write_text(f'plugins = ["normalize", "sqlite"]\n[tenant]\nsecret = "s"\n[sqlite]\npath = "{path}"\n')
    assert cli_main(["cache", "clear", "--config", str(toml)]) == 1
    assert "refused" in capsys.readouterr().err
    assert digest_of(path) == before


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_path_that_cannot_be_created_yet_is_retried_not_refused(
    upstream: SimulatedServer, tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache directory should be")
    pipeline = Pipeline(config(blocker / "cache.sqlite3"))
    with caplog.at_level(logging.WARNING, logger="aurelis"):
        # nothing is there to judge: an error, not a refusal
        assert ask(pipeline, upstream, [chat(0)], mode) == ["miss"]
        assert pipeline.stats.tier_errors["sqlite.get"] == 1 and not refusals(caplog)
        blocker.unlink()  # the directory can be made now: the next request uses the tier
        assert ask(pipeline, upstream, [chat(0), chat(0)], mode) == ["miss", "hit"]
    pipeline.close()


def test_a_refused_file_has_no_stats_and_warms_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "cache.sqlite3"
    cfg = {"plugins": ["normalize", "memory", "sqlite"],
           "sqlite": {"path": str(path), "warm": {"on_start": True}}}
    pipeline = Pipeline(cfg)
    path.mkdir()  # after the build, whose config check refuses a directory at once
    with caplog.at_level(logging.WARNING, logger="aurelis"):
        pipeline.start()  # warming from a refused file: nothing, and no failure to report besides the refusal
        assert pipeline.plugin("sqlite").stats() == {"refused": "is a directory"}
    pipeline.close()
    assert len(pipeline.plugin("memory")) == 0
    assert len(refusals(caplog)) == 1
    assert not any("warming" in r.getMessage() and "failed" in r.getMessage() for r in caplog.records)


# --- 2. a file that turns corrupt while the process runs ----------------------------------------------------------


def moved_aside(directory: Path) -> list[Path]:
    """The damaged files moved aside in ``directory`` (without their ``-wal``/``-shm``)."""
    return [p for p in directory.glob("cache.sqlite3.corrupt-*") if not p.name.endswith(("-wal", "-shm"))]


def damage_pages(path: Path) -> None:
    """Checkpoint the WAL into the file, then overwrite every page after the first (the header page, which
    carries the mark, survives): what a failing disk or a stray writer does. SQLite then reports "database disk
    image is malformed" to every connection, the pipeline's own included (the checkpoint resets the WAL, so they
    drop their cached pages)."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    size = path.stat().st_size
    assert size > 8192
    with path.open("r+b") as file:
        file.seek(4096)
        file.write(b"\xa5" * (size - 4096))


def damage_header(path: Path) -> None:
    """Checkpoint, then overwrite SQLite's header string (the mark stays): "file is not a database"."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    assert path.stat().st_size > 8192
    with path.open("r+b") as file:
        file.write(b"\0" * 16)


@pytest.mark.parametrize("damage", [damage_pages, damage_header], ids=["malformed", "not-a-database"])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_file_damaged_while_running_is_recreated(
    upstream: SimulatedServer, tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: str,
    damage: Callable[[Path], None],
) -> None:
    path = tmp_path / "cache.sqlite3"
    pipeline = Pipeline(config(path, codec="none"))
    assert ask(pipeline, upstream, [chat(i) for i in range(6)], mode) == ["miss"] * 6
    damage(path)
    with caplog.at_level(logging.WARNING, logger="aurelis"):
        # The first lookup meets the damage: a miss (the request itself succeeds), the file is moved aside and a
        # new one started, and the fresh answer is stored there.
        assert ask(pipeline, upstream, [chat(1)], mode) == ["miss"]
        assert ask(pipeline, upstream, [chat(1), chat(2)], mode) == ["hit", "miss"]
    if mode == "sync":  # no connection to the damaged file is kept open (both threads reopened theirs)
        assert not open_files_at(tmp_path / "cache.sqlite3.corrupt-")
    pipeline.close()
    assert pipeline.stats.tier_errors["sqlite.corrupt"] == 1
    assert "sqlite.get" not in pipeline.stats.tier_errors  # a miss, not a failed lookup
    assert "(1 so far, counted as sqlite.corrupt)" in caplog.text
    (aside,) = moved_aside(tmp_path)
    assert aside.stat().st_size > 8192
    assert run(config(path), upstream, [chat(1), chat(2)], mode) == ["hit", "hit"]


def test_a_file_damaged_while_closed_is_recreated_when_opened(upstream: SimulatedServer, tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite3"
    assert run(config(path, codec="none"), upstream, [chat(i) for i in range(6)]) == ["miss"] * 6
    damage_pages(path)  # the header and its mark intact, the pages behind it not
    assert run(config(path), upstream, [chat(1), chat(1)]) == ["miss", "hit"]
    (aside,) = moved_aside(tmp_path)
    assert aside.stat().st_size > 8192


def test_recovery_happens_at_most_once_per_interval(upstream: SimulatedServer, tmp_path: Path) -> None:
    from aurelis_plugins.sqlite_tier import RECOVER_EVERY

    path = tmp_path / "cache.sqlite3"
    pipeline = Pipeline(config(path, codec="none"))
    tier = pipeline.plugin("sqlite")
    now = [1000.0]
    tier.clock = lambda: now[0]
    assert ask(pipeline, upstream, [chat(i) for i in range(6)]) == ["miss"] * 6
    damage_pages(path)
    assert ask(pipeline, upstream, [chat(i) for i in range(6)]) == ["miss"] * 6  # the first met the damage
    assert len(moved_aside(tmp_path)) == 1
    damage_pages(path)  # the new file turns corrupt at once
    assert ask(pipeline, upstream, [chat(0), chat(1)]) == ["miss", "miss"]
    assert len(moved_aside(tmp_path)) == 1  # not again within the interval: misses, counted
    corrupt = pipeline.stats.tier_errors["sqlite.corrupt"]
    assert corrupt >= 3
    assert RECOVER_EVERY == 60.0  # as documented
    now[0] += 59.5
    assert ask(pipeline, upstream, [chat(0)]) == ["miss"]
    assert len(moved_aside(tmp_path)) == 1
    now[0] += 0.5
    assert ask(pipeline, upstream, [chat(0), chat(0)]) == ["miss", "hit"]
    assert len(moved_aside(tmp_path)) == 2
    pipeline.close()


def test_moving_aside_never_overwrites_an_earlier_file(upstream: SimulatedServer, tmp_path: Path) -> None:
    import time

    path = tmp_path / "cache.sqlite3"
    pipeline = Pipeline(config(path, codec="none"))
    assert ask(pipeline, upstream, [chat(i) for i in range(6)]) == ["miss"] * 6
    # Files moved aside earlier under the name this recovery would pick (for the seconds around it).
    decoys = []
    for second in range(-2, 30):
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(time.time() + second))
        base = tmp_path / f"cache.sqlite3.corrupt-{stamp}-{os.getpid()}"
        base.write_text("earlier")
        decoys.append(base)
    damage_pages(path)
    assert ask(pipeline, upstream, [chat(1), chat(1)]) == ["miss", "hit"]
    pipeline.close()
    assert all(decoy.read_text() == "earlier" for decoy in decoys)
    (aside,) = [p for p in moved_aside(tmp_path) if p not in decoys]
    assert aside.name.endswith(f"-{os.getpid()}-1") and aside.stat().st_size > 8192
    assert Path(f"{aside}-wal").exists() and Path(f"{aside}-shm").exists()  # its journal files went with it


def test_a_write_that_meets_a_damaged_file_goes_into_the_new_one(upstream: SimulatedServer, tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite3"
    pipeline = Pipeline(config(path, codec="none"))
    assert ask(pipeline, upstream, [chat(i) for i in range(6)]) == ["miss"] * 6
    tier = pipeline.plugin("sqlite")
    now = [1000.0]
    tier.clock = lambda: now[0]
    entry = tier.top(1)[0][1]
    damage_pages(path)
    assert tier.put("written-after", entry)  # the write met the damage: recovered, and written once more
    assert len(moved_aside(tmp_path)) == 1
    assert keys_of(path) == {"written-after"}
    assert pipeline.stats.tier_errors["sqlite.corrupt"] == 1
    # Damaged again within the recovery interval: the batch is dropped after one try, counted once.
    for n in range(3):
        tier.put(f"filler-{n}", entry)
    damage_pages(path)
    tier.put("dropped", entry)
    errors = pipeline.stats.tier_errors
    assert (errors["sqlite.corrupt"], errors["sqlite.dropped"]) == (2, 1)
    assert len(moved_aside(tmp_path)) == 1
    pipeline.close()


def keys_of(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {key for (key,) in conn.execute("SELECT key FROM aurelis_entries")}


def test_a_path_that_holds_another_file_when_reopened_is_refused(
    upstream: SimulatedServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cache.sqlite3"
    pipeline = Pipeline(config(path, codec="none"))
    assert ask(pipeline, upstream, [chat(i) for i in range(6)]) == ["miss"] * 6
    # Our file is damaged, but meanwhile someone moved it away and put their own file at the path.
    damage_pages(path)
    away = tmp_path / "moved-by-someone.sqlite3"
    os.rename(path, away)
    path.write_text("someone else's file")
    with caplog.at_level(logging.WARNING, logger="aurelis"):
        assert ask(pipeline, upstream, [chat(1), chat(1)]) == ["miss", "miss"]
    pipeline.close()
    assert path.read_text() == "someone else's file"
    assert away.exists() and not list(tmp_path.glob("*corrupt*"))
    (message,) = refusals(caplog)
    assert "not a SQLite database" in message


# --- 3. no mixed files ----------------------------------------------------------------------------------------------


def plaintext_on_disk(directory: Path) -> bool:
    """Whether an answer of the simulated upstream is readable in the files of ``directory``."""
    return b"chat.completion" in b"".join(p.read_bytes() for p in directory.iterdir() if p.is_file())


def test_a_process_without_the_key_neither_reads_nor_writes_a_sealed_file(
    upstream: SimulatedServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cache.sqlite3"
    assert run(config(path, encryption_key=KEY_A, codec="none"), upstream, [chat(0)]) == ["miss"]
    assert not plaintext_on_disk(tmp_path)
    with caplog.at_level(logging.WARNING, logger="aurelis"):
        assert run(config(path, codec="none"), upstream, [chat(0), chat(1), chat(1)]) == ["miss"] * 3
    assert not plaintext_on_disk(tmp_path)  # nothing written in the clear
    (message,) = refusals(caplog)
    assert "sealed with an encryption key, and this process has none" in message
    # The keyed processes still find their entry, and only theirs.
    assert run(config(path, encryption_key=KEY_A), upstream, [chat(0), chat(1)]) == ["hit", "miss"]


def test_a_wrong_key_is_refused(upstream: SimulatedServer, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "cache.sqlite3"
    assert run(config(path, encryption_key=KEY_A), upstream, [chat(0)]) == ["miss"]
    with caplog.at_level(logging.WARNING, logger="aurelis"):
        assert run(config(path, encryption_key=KEY_B), upstream, [chat(0), chat(0)]) == ["miss", "miss"]
    (message,) = refusals(caplog)
    assert "another encryption key" in message
    # Nothing was sealed under the wrong key over the right one's entry.
    assert run(config(path, encryption_key=KEY_A), upstream, [chat(0)]) == ["hit"]


def test_a_key_does_not_seal_into_a_file_of_plaintext_entries(
    upstream: SimulatedServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cache.sqlite3"
    assert run(config(path), upstream, [chat(0)]) == ["miss"]
    with caplog.at_level(logging.WARNING, logger="aurelis"):
        assert run(config(path, encryption_key=KEY_A), upstream, [chat(0), chat(0)]) == ["miss", "miss"]
    (message,) = refusals(caplog)
    assert "holds unencrypted entries" in message
    assert run(config(path), upstream, [chat(0)]) == ["hit"]  # the plaintext entry is intact


def test_a_key_takes_over_an_empty_plaintext_file_and_running_plain_writers_stop(
    upstream: SimulatedServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cache.sqlite3"
    plain = Pipeline(config(path, codec="none"))
    assert plain.plugin("sqlite").stats()["entries"] == 0  # opened: the file says "plaintext"
    keyed = Pipeline(config(path, encryption_key=KEY_A, codec="none"))
    assert ask(keyed, upstream, [chat(0), chat(0)]) == ["miss", "hit"]  # empty: sealed from now on
    with caplog.at_level(logging.WARNING, logger="aurelis"):
        # The plaintext process opened the file before: its next write batch sees the change and stops.
        assert ask(plain, upstream, [chat(1), chat(1)]) == ["miss", "miss"]
    plain.close()
    keyed.close()
    assert not plaintext_on_disk(tmp_path)
    (message,) = refusals(caplog)
    assert "sealed with an encryption key" in message
