"""A fleet of replicas on one Redis, at its edges: a Redis that freezes under the shared rate limiter, a cache
tier whose connection pool is full, one master of a Cluster dying. Each against real ``redis-server`` processes
of the test's own (``redis_servers``), frozen with ``SIGSTOP`` or killed mid-test."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
import redis
from redis_servers import Server, redis_server

from aurelis_core import Pipeline
from aurelis_core.testing import SimulatedServer

CHAT = "/v1/chat/completions"
BODY = {"model": "sim-chat", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 50}
PREFIX = "fleet:rl:"
COOLOFF = 0.5


def limited(server: Server) -> Pipeline:
    return Pipeline({"plugins": ["ratelimit"], "ratelimit": {
        "rpm": 100_000, "redis_url": server.url, "key_prefix": PREFIX, "redis_timeout": 0.15,
        "redis_cooloff": COOLOFF}})


def shared_state(server: Server) -> dict[bytes, bytes]:
    """The limiter's keys in Redis and their values (each a theoretical arrival time)."""
    client = redis.Redis.from_url(server.url)
    try:
        return {key: client.get(key) for key in client.scan_iter(match=PREFIX + "*")}
    finally:
        client.close()


# --- the rate limiter and a frozen Redis ---------------------------------------------------------------------


@pytest.mark.redis
def test_a_frozen_redis_costs_a_request_its_timeout_at_most_and_the_limits_are_shared_again_after(
    upstream: SimulatedServer, tmp_path: Path
) -> None:
    with redis_server(tmp_path) as server:
        pipeline = limited(server)
        counters = pipeline.stats.counters
        with pipeline.instrument(httpx.Client(timeout=10)) as client:
            assert client.post(upstream.url + CHAT, json=BODY).status_code == 200
            assert len(shared_state(server)) == 1  # the limit lives in Redis
            server.freeze()
            try:
                frozen_at = time.monotonic()
                took = []
                while time.monotonic() - frozen_at < 4 * COOLOFF:
                    start = time.monotonic()
                    assert client.post(upstream.url + CHAT, json=BODY).status_code == 200
                    took.append(time.monotonic() - start)
                    time.sleep(0.02)
                frozen_for = time.monotonic() - frozen_at
            finally:
                server.thaw()
            # Each request took at most about one Redis timeout (0.15 s), far less than the freeze (2 s).
            assert max(took) < 0.6 < frozen_for / 3, (max(took), frozen_for)
            # Only the first call and one probe per cool-off asked the frozen Redis; the rest did not try.
            errors = counters["ratelimit_redis_errors"]
            assert 2 <= errors <= frozen_for / COOLOFF + 1, errors
            assert counters["ratelimit_redis_skipped"] == len(took) - errors
            # Thawed: once the cool-off is over, the next request probes Redis and the shared limit is used.
            time.sleep(COOLOFF + 0.05)
            before = shared_state(server)
            for _ in range(3):
                assert client.post(upstream.url + CHAT, json=BODY).status_code == 200
            after = shared_state(server)
            assert after.keys() == before.keys() and all(after[k] != before[k] for k in after)
            assert counters["ratelimit_redis_errors"] == errors
        pipeline.close()


@pytest.mark.redis
@pytest.mark.anyio
async def test_concurrent_async_requests_go_on_while_redis_is_frozen(upstream: SimulatedServer, tmp_path: Path) -> None:
    with redis_server(tmp_path) as server:
        pipeline = limited(server)
        counters = pipeline.stats.counters
        async with pipeline.instrument(httpx.AsyncClient(timeout=10)) as client:

            async def timed() -> float:
                start = time.monotonic()
                assert (await client.post(upstream.url + CHAT, json=BODY)).status_code == 200
                return time.monotonic() - start

            await timed()
            server.freeze()
            try:
                frozen_at = time.monotonic()
                took: list[float] = []
                while time.monotonic() - frozen_at < 3 * COOLOFF:
                    took += await asyncio.gather(*(timed() for _ in range(10)))
                    await asyncio.sleep(0.05)
                frozen_for = time.monotonic() - frozen_at
            finally:
                server.thaw()
            assert max(took) < 0.6 < frozen_for / 2, (max(took), frozen_for)
            assert counters["ratelimit_redis_skipped"] > len(took) / 2
            await asyncio.sleep(COOLOFF + 0.05)
            before = shared_state(server)
            await timed()
            await timed()
            after = shared_state(server)
            assert all(after[k] != before[k] for k in after)
