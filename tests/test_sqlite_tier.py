"""The ``sqlite`` tier on real files: sync and async hits, TTL, size cap, corruption, encryption, processes."""

from __future__ import annotations

import base64
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from aurelis_core import ConfigError, Pipeline
from aurelis_core.testing import SimulatedServer

API_KEY = "sk-test-secret-abcdef"
KEY_A = base64.b64encode(b"A" * 32).decode()
KEY_B = "42" * 32  # hex


def chat(n: int | str = 0) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": f"sqlite question {n}"}]}


def config(path: Path, **options: Any) -> dict[str, Any]:
    return {"plugins": ["normalize", "sqlite"], "sqlite": {"path": str(path), **options}}


def run_sync(cfg: dict[str, Any], upstream: SimulatedServer, bodies: list[dict[str, Any]]) -> list[str]:
    """Send ``bodies`` through a fresh pipeline (closed after: its writes are flushed); the cache statuses."""
    pipeline = Pipeline(cfg)
    with httpx.Client() as client:
        pipeline.instrument(client)
        out = []
        for body in bodies:
            response = client.post(
                upstream.base_url + "/chat/completions", json=body, headers={"authorization": f"Bearer {API_KEY}"}
            )
            assert response.status_code == 200
            out.append(response.headers["x-aurelis-cache"])
    pipeline.close()
    return out


def run_async(cfg: dict[str, Any], upstream: SimulatedServer, bodies: list[dict[str, Any]]) -> list[str]:
    async def main() -> list[str]:
        pipeline = Pipeline(cfg)
        async with httpx.AsyncClient() as client:
            pipeline.instrument(client)
            out = []
            for body in bodies:
                response = await client.post(
                    upstream.base_url + "/chat/completions", json=body,
                    headers={"authorization": f"Bearer {API_KEY}"},
                )
                assert response.status_code == 200
                out.append(response.headers["x-aurelis-cache"])
        await pipeline.aclose()
        return out

    return anyio.run(main)


@pytest.mark.parametrize("runner", [run_sync, run_async], ids=["sync", "async"])
def test_miss_then_hit_across_pipelines(upstream: SimulatedServer, tmp_path: Path, runner: Any) -> None:
    cfg = config(tmp_path / "c.sqlite3")
    assert runner(cfg, upstream, [chat(1), chat(2)]) == ["miss", "miss"]
    assert runner(cfg, upstream, [chat(1), chat(2), chat(1)]) == ["hit", "hit", "hit"]
    assert upstream.count("/chat/completions") == 2
    pipeline = Pipeline(cfg)
    stats = pipeline.plugin("sqlite").stats()
    pipeline.close()
    assert (stats["entries"], stats["hits"]) == (2, 3)


def test_default_path_and_wal(upstream: SimulatedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    run_sync({"plugins": ["normalize", "sqlite"]}, upstream, [chat()])
    path = tmp_path / ".aurelis" / "cache.sqlite3"
    import sqlite3

    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT COUNT(*) FROM aurelis_entries").fetchone()[0] == 1


def test_ttl_and_per_request_override(upstream: SimulatedServer, tmp_path: Path) -> None:
    cfg = config(tmp_path / "c.sqlite3", ttl=60)
    pipeline = Pipeline(cfg)
    tier = pipeline.plugin("sqlite")
    offset = [0.0]
    tier.wall_clock = lambda: time.time() + offset[0]  # lifetimes run on the tier's wall clock: step it
    with httpx.Client() as client:
        pipeline.instrument(client)
        url = upstream.base_url + "/chat/completions"
        auth = {"authorization": f"Bearer {API_KEY}"}
        client.post(url, json=chat("short"), headers=auth)
        client.post(url, json=chat("long"), headers={**auth, "x-aurelis-ttl": "600"})
        tier.flush()
        offset[0] = 59
        assert client.post(url, json=chat("short"), headers=auth).headers["x-aurelis-cache"] == "hit"
        offset[0] = 61
        assert client.post(url, json=chat("short"), headers=auth).headers["x-aurelis-cache"] == "miss"
        assert client.post(url, json=chat("long"), headers=auth).headers["x-aurelis-cache"] == "hit"
    pipeline.close()


def test_size_cap_evicts_least_hit(upstream: SimulatedServer, tmp_path: Path) -> None:
    cfg = config(tmp_path / "c.sqlite3", max_bytes=3000, codec="none")
    # Entry 0 is hit twice, so it outranks the rest when the cap forces eviction.
    run_sync(cfg, upstream, [chat(0)])
    run_sync(cfg, upstream, [chat(0), chat(0)])
    run_sync(cfg, upstream, [chat(i) for i in range(1, 20)])
    pipeline = Pipeline(cfg)
    tier = pipeline.plugin("sqlite")
    stats = tier.stats()
    assert 0 < stats["bytes"] <= 3000
    assert stats["entries"] < 20
    pipeline.close()
    assert run_sync(cfg, upstream, [chat(0)]) == ["hit"]


def test_a_file_the_tier_did_not_create_is_refused_not_moved(
    upstream: SimulatedServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Only a damaged file carrying the tier's mark is ever moved aside (tests/test_sqlite_files.py); this one is
    # somebody's text file: refused, left as it is, and the requests go on without the tier.
    path = tmp_path / "c.sqlite3"
    path.write_bytes(b"this is not a database" * 200)
    cfg = config(path)
    with caplog.at_level(logging.WARNING, logger="aurelis"):
        assert run_sync(cfg, upstream, [chat()]) == ["miss"]
    assert "does not use" in caplog.text and "moved it to" not in caplog.text
    assert not list(tmp_path.glob("c.sqlite3.corrupt-*"))
    assert path.read_bytes() == b"this is not a database" * 200
    assert run_sync(cfg, upstream, [chat()]) == ["miss"]


def test_encryption_at_rest_and_wrong_key(
    upstream: SimulatedServer, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.sqlite3"
    assert run_sync(config(path, encryption_key=KEY_A, codec="none"), upstream, [chat("enc")]) == ["miss"]
    answer = upstream.requests[-1]  # what was asked; the answer's text is derived from it
    on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"sqlite question enc" not in on_disk and b"chatcmpl-sim" not in on_disk
    assert answer.body  # sanity: there was a request body to look for
    # Without encryption the same answer is readable on disk (so the check above can fail).
    plain = tmp_path / "plain"
    plain.mkdir()
    run_sync(config(plain / "c.sqlite3", codec="none"), upstream, [chat("enc")])
    assert b"chatcmpl-sim" in b"".join(p.read_bytes() for p in plain.iterdir())

    # The right key (here from the environment, as hex of the same bytes) reads it back.
    monkeypatch.setenv("AURELIS_CACHE_KEY", (b"A" * 32).hex())
    assert run_sync(config(path), upstream, [chat("enc")]) == ["hit"]
    # A wrong key: the file records its key's check value, so the tier refuses the file (one clear ERROR),
    # never reads garbage nor seals entries under a second key into it.
    with caplog.at_level(logging.WARNING, logger="aurelis"):
        assert run_sync(config(path, encryption_key=KEY_B), upstream, [chat("enc")]) == ["miss"]
        assert run_sync(config(path, encryption_key=KEY_B), upstream, [chat("enc")]) == ["miss"]
    errors = [r for r in caplog.records if "another encryption key" in r.getMessage()]
    assert len(errors) == 2 and all(r.levelno == logging.ERROR for r in errors)  # once per pipeline
    assert run_sync(config(path), upstream, [chat("enc")]) == ["hit"]  # the right key (still in the env)


def test_bad_key_format_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="32 bytes"):
        Pipeline(config(tmp_path / "c.sqlite3", encryption_key="too-short"))
    monkeypatch.setenv("AURELIS_CACHE_KEY", base64.b64encode(b"x" * 16).decode())
    with pytest.raises(ConfigError, match="AURELIS_CACHE_KEY"):
        Pipeline(config(tmp_path / "c.sqlite3"))


def test_entry_written_by_another_process_is_a_hit(upstream: SimulatedServer, tmp_path: Path) -> None:
    cfg = config(tmp_path / "shared.sqlite3")
    script = textwrap.dedent(f"""
        import asyncio, httpx
        from aurelis_core import Pipeline

        async def main():
            pipeline = Pipeline({cfg!r})
            async with httpx.AsyncClient() as client:
                pipeline.instrument(client)
                r = await client.post({upstream.base_url + "/chat/completions"!r}, json={chat("xp")!r},
                                      headers={{"authorization": "Bearer {API_KEY}"}})
                assert r.headers["x-aurelis-cache"] == "miss", r.headers
            await pipeline.aclose()

        asyncio.run(main())
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60, env={**os.environ})
    assert run_sync(cfg, upstream, [chat("xp")]) == ["hit"]
    assert upstream.count("/chat/completions") == 1


def test_unclosed_async_pipeline_does_not_keep_the_process_alive(upstream: SimulatedServer, tmp_path: Path) -> None:
    """A user who forgets to close the client must still be able to exit: the tier's worker thread is a daemon,
    so interpreter shutdown does not wait on it."""
    script = textwrap.dedent(
        f"""
        import asyncio, httpx, aurelis_core
        async def main():
            client = aurelis_core.instrument(
                httpx.AsyncClient(),
                {{"plugins": ["normalize", "sqlite"], "sqlite": {{"path": {str(tmp_path / "c.sqlite3")!r}}}}},
            )
            body = {{"model": "m", "messages": [{{"role": "user", "content": "hi"}}]}}
            for _ in range(2):
                await client.post({upstream.base_url + "/chat/completions"!r}, json=body)
        asyncio.run(main())
        print("done")
        """
    )
    started = time.monotonic()
    # A process held open by a worker thread never exits: the timeout turns that into a failure.
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "done"
    assert time.monotonic() - started < 20


def test_sync_close_of_an_async_pipeline_stops_the_worker(upstream: SimulatedServer, tmp_path: Path) -> None:
    import threading

    pipeline = Pipeline({"plugins": ["normalize", "sqlite"], "sqlite": {"path": str(tmp_path / "c.sqlite3")}})
    client = pipeline.instrument(httpx.AsyncClient())

    async def use() -> None:
        await client.post(upstream.base_url + "/chat/completions", json={"model": "m", "messages": []})

    anyio.run(use)
    workers = [t for t in threading.enumerate() if "_connection_worker_thread" in t.name]
    assert workers
    pipeline.close()
    for worker in workers:
        worker.join(timeout=5)
        assert not worker.is_alive()
