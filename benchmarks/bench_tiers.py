"""L2/L3 hit cost against the raw client reads they wrap, and L1 memory per stored byte.

Run: ``.venv/bin/python -m pytest benchmarks/bench_tiers.py -s``

- **Redis L2 hit** (sync and async): the tier's get path (``aurelis_cache_get``: key, breaker, GET, decode,
  queue the hit count) against a raw redis-py ``GET`` of the same value on the same server; and a whole
  pipeline hit (instrumented ``httpx.Client``, only this tier enabled) for reference. Target: tier get
  <= raw + 50 us at p50.
- **SQLite L3 hit**: the same, against a raw ``sqlite3`` read (sync) and a raw ``aiosqlite``
  ``execute_fetchall`` (async) of the same row.
- **L1 memory**: tracemalloc over 100k entries stored in the ``memory`` tier, as a ratio of the payload bytes
  (body + headers) and of the bytes the tier charges for (its ``currsize``). Target: <= 1.2x.

Batches of the tier and the raw read are interleaved so machine noise hits both alike; medians of batch
means are reported.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import sqlite3
import statistics
import subprocess
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiosqlite
import httpx
import pytest
import redis
import redis.asyncio
from aurelis_plugins.sqlite_tier import GET

from aurelis_core import CacheEntry, Pipeline, RequestContext
from aurelis_core._models import DEFAULT_CONTROLS

BODY = (
    b'{"id":"chatcmpl-1","object":"chat.completion","created":1764200000,"model":"gpt-4.1-mini","choices":'
    b'[{"index":0,"message":{"role":"assistant","content":"Nile, Amazon, Danube: three of the longest rivers '
    b'on Earth, on three continents."},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,'
    b'"completion_tokens":21,"total_tokens":33}}'
)
HEADERS = [(b"content-type", b"application/json"), (b"x-request-id", b"req_0123456789abcdef")]
KEY = "f" * 40
BUDGET_US = 50.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path_factory.mktemp("redis"))],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.RedisError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    yield url
    proc.kill()
    proc.wait()


def ctx(is_async: bool) -> RequestContext:
    context = RequestContext(None, None, httpx, is_async, DEFAULT_CONTROLS)
    context.key = KEY
    return context


def interleaved(
    tier: Callable[[], Any], raw: Callable[[], Any], rounds: int = 40, batch: int = 200
) -> tuple[float, float]:
    """Median (over rounds) of the mean per-call time in microseconds, tier and raw alternating."""
    tier_times, raw_times = [], []
    for _ in range(rounds):
        for fn, out in ((tier, tier_times), (raw, raw_times)):
            start = time.perf_counter()
            for _ in range(batch):
                fn()
            out.append((time.perf_counter() - start) / batch * 1e6)
    return statistics.median(tier_times), statistics.median(raw_times)


async def ainterleaved(
    tier: Callable[[], Awaitable[Any]], raw: Callable[[], Awaitable[Any]], rounds: int = 30, batch: int = 100
) -> tuple[float, float]:
    tier_times, raw_times = [], []
    for _ in range(rounds):
        for fn, out in ((tier, tier_times), (raw, raw_times)):
            start = time.perf_counter()
            for _ in range(batch):
                await fn()
            out.append((time.perf_counter() - start) / batch * 1e6)
    return statistics.median(tier_times), statistics.median(raw_times)


def report(name: str, tier_us: float, raw_us: float) -> None:
    print(f"\n{name}: tier {tier_us:.1f} us, raw {raw_us:.1f} us, +{tier_us - raw_us:.1f} us "
          f"({tier_us / raw_us:.2f}x)")


def pipeline_hit_us(cfg: dict[str, Any], upstream_url: str) -> float:
    """A whole pipeline hit through an instrumented httpx.Client (reference figure)."""
    pipeline = Pipeline(cfg)
    answer = httpx.Response(200, headers=HEADERS, content=BODY)
    transport = httpx.MockTransport(lambda request: answer)
    with httpx.Client(transport=transport) as client:
        pipeline.instrument(client)
        body = {"model": "m", "messages": [{"role": "user", "content": "bench"}]}
        client.post(upstream_url, json=body, headers={"authorization": "Bearer k"})
        for name in pipeline.tiers:
            plugin = pipeline.plugin(name)
            if hasattr(plugin, "flush"):
                plugin.flush()
        assert client.post(upstream_url, json=body, headers={"authorization": "Bearer k"}).headers[
            "x-aurelis-cache"] == "hit"
        times = []
        for _ in range(20):
            start = time.perf_counter()
            for _ in range(100):
                client.post(upstream_url, json=body, headers={"authorization": "Bearer k"})
            times.append((time.perf_counter() - start) / 100 * 1e6)
    pipeline.close()
    return statistics.median(times)


# --- Redis -----------------------------------------------------------------------------------------------------


def test_redis_hit_vs_raw_get(benchmark: Any, redis_server: str) -> None:
    pipeline = Pipeline({"plugins": ["normalize", "redis"], "redis": {"url": redis_server}})
    tier = pipeline.plugin("redis")
    assert tier.put(KEY, CacheEntry(200, HEADERS, BODY))
    raw = redis.Redis.from_url(redis_server)
    stored = "aurelis:" + KEY
    sync_ctx = ctx(False)
    assert tier.aurelis_cache_get(sync_ctx).body == BODY
    tier_us, raw_us = interleaved(lambda: tier.aurelis_cache_get(sync_ctx), lambda: raw.get(stored))
    report("redis sync get", tier_us, raw_us)
    benchmark(tier.aurelis_cache_get, sync_ctx)

    async def run_async() -> tuple[float, float]:
        araw = redis.asyncio.Redis.from_url(redis_server)
        actx = ctx(True)
        assert (await tier.aurelis_cache_get(actx)).body == BODY
        result = await ainterleaved(lambda: tier.aurelis_cache_get(actx), lambda: araw.get(stored))
        await tier.aflush()
        await araw.aclose()
        return result

    atier_us, araw_us = asyncio.run(run_async())
    report("redis async get", atier_us, araw_us)
    full = pipeline_hit_us({"plugins": ["normalize", "redis"], "redis": {"url": redis_server}},
                           "http://127.0.0.1:9/v1/chat/completions")
    print(f"redis: whole pipeline hit via httpx.Client {full:.1f} us (raw GET {raw_us:.1f} us)")
    pipeline.close()
    assert tier_us - raw_us <= BUDGET_US
    assert atier_us - araw_us <= BUDGET_US


# --- SQLite ----------------------------------------------------------------------------------------------------


def test_sqlite_hit_vs_raw_read(benchmark: Any, tmp_path: Path) -> None:
    path = tmp_path / "bench.sqlite3"
    pipeline = Pipeline({"plugins": ["normalize", "sqlite"], "sqlite": {"path": str(path)}})
    tier = pipeline.plugin("sqlite")
    assert tier.put(KEY, CacheEntry(200, HEADERS, BODY))
    raw = sqlite3.connect(path)
    now = time.time()
    sync_ctx = ctx(False)
    assert tier.aurelis_cache_get(sync_ctx).body == BODY
    tier_us, raw_us = interleaved(
        lambda: tier.aurelis_cache_get(sync_ctx), lambda: raw.execute(GET, (KEY, now)).fetchone()
    )
    report("sqlite sync get (vs sqlite3)", tier_us, raw_us)
    benchmark(tier.aurelis_cache_get, sync_ctx)
    tier.flush()

    async def run_async() -> tuple[float, float]:
        db = await aiosqlite.connect(path)
        actx = ctx(True)
        assert (await tier.aurelis_cache_get(actx)).body == BODY
        result = await ainterleaved(
            lambda: tier.aurelis_cache_get(actx), lambda: db.execute_fetchall(GET, (KEY, now))
        )
        await tier.aflush()
        await db.close()
        await tier._aclose()
        return result

    atier_us, araw_us = asyncio.run(run_async())
    report("sqlite async get (vs aiosqlite)", atier_us, araw_us)
    full = pipeline_hit_us({"plugins": ["normalize", "sqlite"], "sqlite": {"path": str(tmp_path / "p.db")}},
                           "http://127.0.0.1:9/v1/chat/completions")
    print(f"sqlite: whole pipeline hit via httpx.Client {full:.1f} us (raw read {raw_us:.1f} us)")
    pipeline.close()
    raw.close()
    assert tier_us - raw_us <= BUDGET_US
    assert atier_us - araw_us <= BUDGET_US


# --- L1 memory -------------------------------------------------------------------------------------------------


def test_memory_tier_bytes_per_stored_byte() -> None:
    pipeline = Pipeline({"plugins": ["normalize", "memory"], "memory": {"max_bytes": 1 << 34}})
    memory = pipeline.plugin("memory")
    count = 100_000
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    payload = 0
    for i in range(count):
        # Fresh objects per entry, as the pipeline makes them from each response.
        body = BODY.replace(b"chatcmpl-1", f"chatcmpl-{i:08d}".encode())
        headers = [(k, v + b"") for k, v in HEADERS]
        entry = CacheEntry(200, [(bytes(k), bytes(v)) for k, v in headers], body)
        payload += entry.size
        memory.put(f"{i:040x}", entry)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    charged = memory.currsize
    print(f"\nL1 memory at {count} entries: {used / 1e6:.1f} MB traced, payload {payload / 1e6:.1f} MB "
          f"({used / payload:.2f}x payload), charged {charged / 1e6:.1f} MB ({used / charged:.2f}x charged)")
    pipeline.close()
    assert used <= 1.2 * charged  # the byte budget is an honest bound on what the tier really holds
