"""L2/L3 hit cost against the raw client reads they wrap, and L1 memory per stored byte.

Run: ``.venv/bin/python -m pytest benchmarks/bench_tiers.py -s``

- **Redis L2 hit** (sync and async): the tier's get path (``aurelis_cache_get``: key, breaker, GET, decode,
  queue the hit count) against a raw redis-py ``GET`` of the same value on the same server; and a whole
  pipeline hit (instrumented ``httpx.Client``, only this tier enabled) for reference. Target: tier get
  <= raw + 50 us at p50.
- **SQLite L3 hit**: the same, against a raw ``sqlite3`` read (sync) and a raw ``aiosqlite``
  ``execute_fetchall`` (async) of the same row.
- **Authentication per hit**: what checking a value's tag (``_serialize.loads`` with the MAC, against the same
  call without it) costs, in-process (no network noise), for this chat answer (target <= 50 us) and, for
  information, a 64 KiB one (one SHA-256 pass over its bytes). It is part of the tier figures above; shown
  alone because on a loaded machine their noise is larger than it.
- **Redis memory** (information, for the deployment guide): `used_memory` over 20k entries stored by the
  `redis` tier, small and typical answers, lz4 and uncompressed, as MiB per million entries.
- **L1 memory**: tracemalloc over 100k OpenAI chat completion answers (pretty-printed bodies of 0.9-2.1 KB and
  the 15 headers the API sends, as fresh objects per answer) stored in the ``memory`` tier, as a ratio of the
  payload bytes (``CacheEntry.size``: body + header names and values). Target: <= 1.2x payload; and no more
  than the bytes the tier charges for (its ``currsize``), so ``max_bytes`` is an honest bound. Small compact
  answers (~0.5 KB) are printed for information.

Batches of the tier and the raw read are interleaved so machine noise hits both alike; medians of batch
means are reported.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import random
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

from aurelis_core import CacheEntry, Pipeline, RequestContext
from aurelis_core._models import DEFAULT_CONTROLS
from aurelis_plugins.sqlite_tier import GET

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


# --- authentication ----------------------------------------------------------------------------------------------


def test_tag_check_cost_per_hit() -> None:
    """The tag check alone: loads() verifying the MAC against loads() skipping it (all else is the same)."""
    from aurelis_core._tenant import Tenant, TenantConfig
    from aurelis_plugins._serialize import codec_named, dumps, loads

    mac = Tenant(TenantConfig(secret="bench")).entry_mac
    for name, body, codec in (("chat answer", BODY, "lz4"), ("64 KiB answer", BODY * (65536 // len(BODY)), "none")):
        value = dumps(CacheEntry(200, HEADERS, body), codec_named(codec, "bench"), KEY, mac)
        assert loads(value, KEY, mac).body == body
        checked, unchecked = interleaved(lambda v=value: loads(v, KEY, mac), lambda v=value: loads(v, KEY, None))
        print(f"\ntag check, {name} ({len(value)} B stored): {checked - unchecked:+.2f} us per hit "
              f"({checked:.2f} us with it, {unchecked:.2f} us without)")
        if body is BODY:  # the budget is for a chat answer; a larger one costs one hash pass over its bytes
            assert checked - unchecked <= BUDGET_US


# --- L1 memory -------------------------------------------------------------------------------------------------

#: The body of an OpenAI chat completion as the API sends it (pretty-printed, with the usage details).
OPENAI_BODY = """{
  "id": "chatcmpl-%s",
  "object": "chat.completion",
  "created": %d,
  "model": "gpt-4.1-mini-2025-04-14",
  "choices": [
    {
      "index": 0,
      "message": {
        "role": "assistant",
        "content": %s,
        "refusal": null,
        "annotations": []
      },
      "logprobs": null,
      "finish_reason": "stop"
    }
  ],
  "usage": {
    "prompt_tokens": %d,
    "completion_tokens": %d,
    "total_tokens": %d,
    "prompt_tokens_details": {
      "cached_tokens": 0,
      "audio_tokens": 0
    },
    "completion_tokens_details": {
      "reasoning_tokens": 0,
      "audio_tokens": 0,
      "accepted_prediction_tokens": 0,
      "rejected_prediction_tokens": 0
    }
  },
  "service_tier": "default",
  "system_fingerprint": "fp_6f2eabb9a5"
}"""
#: A compact answer, as smaller OpenAI-compatible servers send it.
COMPACT_BODY = (
    '{"id":"chatcmpl-%s","object":"chat.completion","created":%d,"model":"gpt-4.1-mini","choices":[{"index":0,'
    '"message":{"role":"assistant","content":%s},"finish_reason":"stop"}],"usage":{"prompt_tokens":%d,'
    '"completion_tokens":%d,"total_tokens":%d}}'
)
#: What an OpenAI answer carries once the core has dropped the per-connection headers (date, set-cookie,
#: transfer-encoding, connection, x-ratelimit-*): ten the same on every answer of one account...
OPENAI_CONSTANT_HEADERS = (
    (b"content-type", b"application/json"),
    (b"access-control-expose-headers", b"X-Request-ID"),
    (b"openai-organization", b"user-4kq9vx2mzl7tr3ahbw8nfc1p"),
    (b"openai-project", b"proj_Xw3LmQ9tKd7RzVa2NpYc8HbE"),
    (b"openai-version", b"2020-10-01"),
    (b"strict-transport-security", b"max-age=31536000; includeSubDomains; preload"),
    (b"cf-cache-status", b"DYNAMIC"),
    (b"x-content-type-options", b"nosniff"),
    (b"server", b"cloudflare"),
    (b"alt-svc", b'h3=":443"; ma=86400'),
)
#: ... and five that vary per answer: content-length and the two timings repeat now and then, the ids never.
OPENAI_VARYING_HEADERS = (
    b"content-length", b"openai-processing-ms", b"x-envoy-upstream-service-time", b"x-request-id", b"cf-ray"
)
WORDS = (
    "the a of to and in is it that for on with as this be by are an at can from which model cache answer "
    "request latency token prompt result function value between because however example returns through"
).split()


def chat_answer(rng: random.Random, i: int, words: tuple[int, int], openai: bool) -> tuple[list[Any], bytes]:
    """Headers and body of the ``i``-th chat completion answer, every name and value its own object as when
    h11 parses a response: OpenAI's (``openai``) or a minimal server's (compact body, three headers).

    The answer has ``words`` (low, high) words; the service's timings follow its length, as the real ones do.
    """
    content = json.dumps(" ".join(rng.choices(WORDS, k=rng.randint(*words))).capitalize() + ".")
    completion = len(content) // 4
    prompt = rng.randint(20, 400)
    template = OPENAI_BODY if openai else COMPACT_BODY
    body = (template % (
        f"{rng.getrandbits(128):032x}"[:29], 1_764_200_000 + i, content, prompt, completion, prompt + completion
    )).encode()
    if openai:
        processing = 180 + 9 * completion + rng.randint(0, 400)
        values = (
            b"%d" % len(body), b"%d" % processing, b"%d" % (processing + rng.randint(2, 30)),
            b"req_%032x" % rng.getrandbits(128), b"%016x-SJC" % rng.getrandbits(64),
        )
        head = OPENAI_CONSTANT_HEADERS[:1] + tuple(zip(OPENAI_VARYING_HEADERS, values, strict=True))
        head += OPENAI_CONSTANT_HEADERS[1:]
    else:
        head = ((b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
                (b"x-request-id", b"req_%032x" % rng.getrandbits(128)))
    raw = b"\r\n".join(k + b": " + v for k, v in head)
    return [tuple(line.split(b": ", 1)) for line in raw.split(b"\r\n")], body


def l1_footprint(count: int, words: tuple[int, int], openai: bool) -> tuple[int, int, int]:
    """(tracemalloc bytes, payload bytes, charged bytes) of ``count`` answers stored in a fresh memory tier."""
    pipeline = Pipeline({"plugins": ["normalize", "memory"], "memory": {"max_bytes": 1 << 34}})
    memory = pipeline.plugin("memory")
    rng = random.Random(20251127)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    payload = 0
    for i in range(count):
        headers, body = chat_answer(rng, i, words, openai)
        entry = CacheEntry(200, headers, body)
        payload += entry.size
        # The key as normalize makes it: a fresh 40-character hex digest per request.
        memory.put(hashlib.blake2b(b"%d" % i, digest_size=20).hexdigest(), entry)
        del headers, body, entry
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    charged = memory.currsize
    assert len(memory) == count
    pipeline.close()
    return used, payload, charged


def test_memory_tier_bytes_per_stored_byte() -> None:
    """Target: the L1 tier uses <= 1.2x the bytes it stores (CacheEntry.size: body + header names and values),
    at 100k typical chat completion answers.

    Typical: OpenAI answers of 8-200 words (~50-1200 characters, ~150 tokens on average, around the median
    of chat answers) in the API's pretty-printed JSON make bodies of 0.9-2.1 KB (mean ~1.4 KB), with the
    ~0.45 KB of headers the API sends. For information, small entries: a minimal server's compact answers of
    2-40 words with three headers (~0.4 KB payload), where the fixed cost per entry weighs far more.
    """
    count = 100_000
    used, payload, charged = l1_footprint(count, (8, 200), openai=True)
    print(f"\nL1 memory at {count} OpenAI answers, {payload / count:.0f} B payload each: {used / 1e6:.1f} MB "
          f"traced, {(used - payload) / count:.0f} B each over the payload: {used / payload:.3f}x payload "
          f"(target <= 1.2), {used / charged:.3f}x charged")
    small_used, small_payload, small_charged = l1_footprint(count // 4, (2, 40), openai=False)
    print(f"L1 memory, small answers ({small_payload * 4 / count:.0f} B payload each, for information): "
          f"{(small_used - small_payload) * 4 / count:.0f} B each over the payload: "
          f"{small_used / small_payload:.3f}x payload, {small_used / small_charged:.3f}x charged")
    assert used <= 1.2 * payload
    # The byte budget is an honest bound on what the tier really holds.
    assert used <= charged
    assert small_used <= small_charged


def redis_footprint(url: str, count: int, words: tuple[int, int], openai: bool, codec: str) -> tuple[int, int]:
    """(Redis ``used_memory`` bytes, payload bytes) of ``count`` answers stored by the ``redis`` tier, through
    its own write (``put``: the value it writes behind, with its TTL), into an emptied database."""
    raw = redis.Redis.from_url(url)
    raw.flushdb()
    before = int(raw.info("memory")["used_memory"])
    pipeline = Pipeline({"plugins": ["normalize", "redis"], "redis": {"url": url, "codec": codec}})
    tier = pipeline.plugin("redis")
    rng = random.Random(20251127)
    payload = 0
    for i in range(count):
        headers, body = chat_answer(rng, i, words, openai)
        entry = CacheEntry(200, headers, body)
        payload += entry.size
        assert tier.put(hashlib.blake2b(b"%d" % i, digest_size=20).hexdigest(), entry)  # type: ignore[union-attr]
    pipeline.close()
    assert raw.dbsize() == count
    used = int(raw.info("memory")["used_memory"]) - before
    raw.flushdb()
    raw.close()
    return used, payload


def test_redis_memory_per_million_entries(redis_server: str) -> None:
    """For the deployment guide: Redis memory per million entries, as the tier stores them (one string per
    entry, ``<prefix><40-hex key>``, with a TTL), for small compact answers (~480 B payload: a minimal server's
    body and three headers) and for typical OpenAI answers (~1.9 KB payload), at the default codec (lz4) and
    uncompressed. Information, not a target: sized from ``used_memory`` over 20k entries."""
    count = 20_000
    for label, words, openai in (("small answers", (2, 40), False), ("OpenAI answers", (8, 200), True)):
        for codec in ("lz4", "none"):
            used, payload = redis_footprint(redis_server, count, words, openai, codec)
            print(f"\nRedis memory, {label} ({payload / count:.0f} B payload each), codec {codec}: "
                  f"{used / count:.0f} B per entry, {used / count * 1e6 / 2**20:.0f} MiB per million entries, "
                  f"{used / payload:.2f}x payload")
            assert used > 0
