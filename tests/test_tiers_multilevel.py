"""memory -> redis -> sqlite together: promotion, per-tier TTLs, warming, the write-behind queue, the CLI."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import redis

from aurelis_core import Pipeline
from aurelis_core.testing import SimulatedServer
from aurelis_core.tools.cli import main as cli_main
from aurelis_plugins._writebehind import WriteBehind

pytestmark = pytest.mark.redis


def chat(n: int | str = 0) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": f"multi {n}"}]}


def config(redis_url: str, path: Path, memory: dict[str, Any] | None = None, **tables: Any) -> dict[str, Any]:
    return {
        "plugins": ["normalize", "memory", "redis", "sqlite"],
        "memory": memory or {},
        "redis": {"url": redis_url, **tables.get("redis", {})},
        "sqlite": {"path": str(path), **tables.get("sqlite", {})},
    }


def send(client: httpx.Client, upstream: SimulatedServer, body: dict[str, Any], key: str = "sk-a") -> tuple[str, str]:
    response = client.post(
        upstream.base_url + "/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
    )
    assert response.status_code == 200
    return response.headers["x-aurelis-cache"], response.headers.get("x-aurelis-cache-tier", "-")


def flush(pipeline: Pipeline) -> None:
    pipeline.plugin("redis").flush()
    pipeline.plugin("sqlite").flush()


def test_l3_hit_is_promoted_into_l1_and_l2(upstream: SimulatedServer, redis_flush: str, tmp_path: Path) -> None:
    cfg = config(redis_flush, tmp_path / "c.sqlite3")
    pipeline = Pipeline(cfg)
    with httpx.Client() as client:
        pipeline.instrument(client)
        assert send(client, upstream, chat()) == ("miss", "-")
    pipeline.close()
    redis.Redis.from_url(redis_flush).flushdb()  # only L3 holds it now

    pipeline = Pipeline(cfg)
    with httpx.Client() as client:
        pipeline.instrument(client)
        assert send(client, upstream, chat()) == ("hit", "sqlite")
        flush(pipeline)
        assert send(client, upstream, chat()) == ("hit", "memory")  # promoted into L1
    pipeline.close()
    pipeline = Pipeline(cfg)  # a fresh L1: the next tier down answers, and that is L2 now
    with httpx.Client() as client:
        pipeline.instrument(client)
        assert send(client, upstream, chat()) == ("hit", "redis")
    pipeline.close()
    assert upstream.count("/chat/completions") == 1


def test_each_tier_keeps_its_own_ttl(upstream: SimulatedServer, redis_flush: str, tmp_path: Path) -> None:
    cfg = config(redis_flush, tmp_path / "c.sqlite3", memory={"ttl": 100}, redis={"ttl": 1000})
    pipeline = Pipeline(cfg)
    # Hand-moved clocks, no sleeps: memory's monotonic one, and every tier's wall clock (offset from the real
    # time the entries are stamped with; margins of many seconds, so real time passing never matters).
    mono, offset = [1000.0], [0.0]
    for name in ("memory", "redis", "sqlite"):
        pipeline.plugin(name).wall_clock = lambda: time.time() + offset[0]
    pipeline.plugin("memory").clock = lambda: mono[0]

    def step(seconds: float) -> None:
        mono[0] += seconds
        offset[0] += seconds

    with httpx.Client() as client:
        pipeline.instrument(client)
        assert send(client, upstream, chat()) == ("miss", "-")
        flush(pipeline)
        assert send(client, upstream, chat()) == ("hit", "memory")
        step(150)
        assert send(client, upstream, chat()) == ("hit", "redis")  # L1 expired, L2 still live
        # 150 s old: past memory's 100 s, so it was not copied back into L1.
        assert send(client, upstream, chat()) == ("hit", "redis")
        step(1000)
        assert send(client, upstream, chat()) == ("hit", "sqlite")  # L2 expired too; L3 lives a day
        flush(pipeline)
        assert send(client, upstream, chat()) == ("hit", "sqlite")  # too old for L2 and L1: not promoted
    pipeline.close()
    assert upstream.count("/chat/completions") == 1


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_warm_l1_on_start_keeps_tenants_apart(
    upstream: SimulatedServer, redis_flush: str, tmp_path: Path, mode: str
) -> None:
    base = config(redis_flush, tmp_path / "c.sqlite3")
    # Tenant A asks three questions; question 0 is then hit (in L3) three times, question 1 once.
    pipeline = Pipeline(base)
    with httpx.Client() as client:
        pipeline.instrument(client)
        for n in range(3):
            send(client, upstream, chat(n))
    pipeline.close()
    only_sqlite = {"plugins": ["normalize", "sqlite"], "sqlite": base["sqlite"]}
    for n in (0, 0, 0, 1):
        pipeline = Pipeline(only_sqlite)
        with httpx.Client() as client:
            pipeline.instrument(client)
            assert send(client, upstream, chat(n)) == ("hit", "sqlite")
        pipeline.close()

    warm_cfg = {
        "plugins": ["normalize", "memory", "sqlite"],
        "sqlite": {**base["sqlite"], "warm": {"on_start": True, "top": 2}},
    }
    pipeline = Pipeline(warm_cfg)
    if mode == "sync":
        pipeline.start()
    else:
        anyio.run(pipeline.astart)
    memory = pipeline.plugin("memory")
    assert len(memory) == 2  # the two most hit entries, before any request
    with httpx.Client() as client:
        pipeline.instrument(client)
        assert send(client, upstream, chat(0)) == ("hit", "memory")
        assert send(client, upstream, chat(1)) == ("hit", "memory")
        assert send(client, upstream, chat(2)) == ("hit", "sqlite")  # not in the top 2
        assert send(client, upstream, chat(0), key="sk-b") == ("miss", "-")  # another tenant: its own scope
    pipeline.close()


def test_redis_warm_on_start(upstream: SimulatedServer, redis_flush: str, tmp_path: Path) -> None:
    cfg = {"plugins": ["normalize", "redis"], "redis": {"url": redis_flush}}
    for _ in range(2):  # a miss, then a counted hit
        pipeline = Pipeline(cfg)
        with httpx.Client() as client:
            pipeline.instrument(client)
            send(client, upstream, chat("r"))
        pipeline.close()
    warm = {"plugins": ["normalize", "memory", "redis"], "redis": {"url": redis_flush, "warm": {"on_start": True}}}
    pipeline = Pipeline(warm)
    with httpx.Client() as client:
        pipeline.instrument(client)
        assert send(client, upstream, chat("r")) == ("hit", "memory")  # the first request started (and warmed) it
    pipeline.close()


# --- the write-behind queue ------------------------------------------------------------------------------------


def test_write_behind_drops_when_full_and_flushes_on_close() -> None:
    written: list[int] = []
    gate = threading.Event()
    dropped = []

    def write(batch: list[int]) -> None:
        gate.wait(5)
        written.extend(batch)

    async def never(batch: list[int]) -> None:
        raise AssertionError("sync callers only")

    queue: WriteBehind[int] = WriteBehind(
        "test", write, never, on_error=lambda exc: None, on_drop=lambda: dropped.append(1), maxsize=4
    )
    for i in range(20):  # the writer is stuck on its first batch: the queue fills, then drops, never blocks
        queue.put(i, False)
    assert queue.dropped == len(dropped) >= 15
    gate.set()
    queue.close()
    assert len(written) == 20 - queue.dropped
    assert written == sorted(written)


def test_async_write_behind_batches_and_flushes_on_aclose() -> None:
    batches: list[list[int]] = []

    def never(batch: list[int]) -> None:
        raise AssertionError("async callers only")

    async def awrite(batch: list[int]) -> None:
        await asyncio.sleep(0.01)
        batches.append(batch)

    async def main() -> None:
        queue: WriteBehind[int] = WriteBehind(
            "test", never, awrite, on_error=lambda exc: None, on_drop=lambda: None, maxsize=1000
        )
        for i in range(100):
            queue.put(i, True)
        await queue.aclose()

    anyio.run(main)
    assert [i for batch in batches for i in batch] == list(range(100))
    assert len(batches) < 100  # written in batches, not one by one


def test_write_errors_are_counted_not_raised(upstream: SimulatedServer, tmp_path: Path) -> None:
    # A Redis nobody listens on: every request succeeds, the failures are counted.
    cfg = {"plugins": ["normalize", "redis"],
           "redis": {"url": "redis://127.0.0.1:1/0", "breaker_reset": 60, "breaker_first_probe": 60}}
    pipeline = Pipeline(cfg)
    with httpx.Client() as client:
        pipeline.instrument(client)
        for n in range(5):
            assert send(client, upstream, chat(n)) == ("miss", "-")
    pipeline.close()
    errors = pipeline.stats.tier_errors
    assert errors["redis.get"] + errors["redis.write"] >= 3 and errors["redis.skipped"] >= 2


# --- the CLI ---------------------------------------------------------------------------------------------------


def test_cli_stats_warm_clear(
    upstream: SimulatedServer, redis_flush: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.sqlite3"
    only_sqlite = {"plugins": ["normalize", "sqlite"], "sqlite": {"path": str(path)}}
    pipeline = Pipeline(only_sqlite)
    with httpx.Client() as client:
        pipeline.instrument(client)
        for n in range(3):
            send(client, upstream, chat(n))
    pipeline.close()
    toml = tmp_path / "aurelis.toml"
    toml.write_text(
        'plugins = ["normalize", "memory", "redis", "sqlite"]\n'
        f'[redis]\nurl = "{redis_flush}"\n[sqlite]\npath = "{path}"\n'
    )
    assert cli_main(["cache", "stats", "--json", "--config", str(toml)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["sqlite"]["entries"] == 3 and stats["redis"]["entries"] == 0

    assert cli_main(["cache", "warm", "--config", str(toml)]) == 0
    assert "sqlite -> redis: copied 3" in capsys.readouterr().out
    pipeline = Pipeline(toml)
    with httpx.Client() as client:
        pipeline.instrument(client)
        assert send(client, upstream, chat(1)) == ("hit", "redis")
    pipeline.close()

    assert cli_main(["cache", "clear", "--tier", "sqlite", "--config", str(toml)]) == 0
    assert "sqlite: deleted 3 entries" in capsys.readouterr().out
    assert cli_main(["cache", "stats", "--json", "--config", str(toml)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["sqlite"]["entries"] == 0 and stats["redis"]["entries"] == 3

    assert cli_main(["cache", "clear", "--tier", "nope", "--config", str(toml)]) == 1
    assert "valid: redis, sqlite" in capsys.readouterr().err
