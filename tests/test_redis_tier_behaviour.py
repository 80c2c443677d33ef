"""The ``redis`` tier's behaviour at its edges, through its public API against a real Redis: the options it
refuses, where its log lines say it connects, the connections it opens at start-up, a busy pool, what it stores
and for how long, values it does not trust, its hit counts, and ``stats``/``top``/``put``/``clear``.

Times are fake clocks (the tier's ``wall_clock``, a :class:`Breaker`'s ``clock``): nothing here sleeps to order
events."""

from __future__ import annotations

import logging
import math
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import redis
from redis_servers import redis_sentinel, redis_server
from support import live_loops

from aurelis_core import CacheEntry, ConfigError, Pipeline, RequestContext, RequestControls
from aurelis_core.testing import SimulatedServer
from aurelis_plugins.redis_tier import Breaker, FleetFlightTier, RedisTier

pytestmark = pytest.mark.redis

API_KEY = "sk-test-secret-1234567890"
LOGGER = "aurelis.cache.redis"


def chat(n: int | str = 0) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": f"behaviour question {n}"}]}


def config(**redis_options: Any) -> dict[str, Any]:
    return {"plugins": ["normalize", "redis"], "redis": redis_options}


def post(client: httpx.Client, upstream: SimulatedServer, n: int | str = 0) -> httpx.Response:
    response = client.post(
        upstream.base_url + "/chat/completions", json=chat(n), headers={"authorization": f"Bearer {API_KEY}"}
    )
    assert response.status_code == 200
    return response


def cache_of(response: httpx.Response) -> tuple[str, str]:
    return response.headers["x-aurelis-cache"], response.headers.get("x-aurelis-cache-tier", "-")


def entry(body: bytes = b'{"ok":true}', created: float | None = None, ttl: float | None = None) -> CacheEntry:
    return CacheEntry(200, [(b"content-type", b"application/json")], body, created=created, ttl=ttl)


def context(key: str | None, is_async: bool = False, **controls: Any) -> RequestContext:
    ctx = RequestContext(None, None, httpx, is_async, RequestControls(**controls))
    ctx.key = key
    return ctx


def lookup(tier: RedisTier, key: str) -> CacheEntry | None:
    found: CacheEntry | None = tier.aurelis_cache_get(context(key))
    return found


def raw(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class WallClock:
    """The tier's wall clock, moved by hand."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def tier_at(redis_flush: str) -> Iterator[Any]:
    """``tier_at(**options)``: the ``redis`` tier of a pipeline on the test Redis (closed after the test)."""
    pipelines: list[Pipeline] = []

    def make(**options: Any) -> RedisTier:
        pipeline = Pipeline(config(url=redis_flush, **options))
        pipelines.append(pipeline)
        tier: RedisTier = pipeline.plugin("redis")
        return tier

    yield make
    for pipeline in pipelines:
        pipeline.close()


# --- the options it refuses --------------------------------------------------------------------------------------


def test_open_at_start_may_be_the_whole_pool_not_more() -> None:
    Pipeline(config(url="redis://127.0.0.1:1/0", pool_size=4, open_at_start=4)).close()
    with pytest.raises(ConfigError, match=r"open_at_start: 5 is more than pool_size \(4\)"):
        Pipeline(config(url="redis://127.0.0.1:1/0", pool_size=4, open_at_start=5))


def test_one_topology_at_most_and_its_own_options_only() -> None:
    with pytest.raises(ConfigError, match="give one of url, sentinels, cluster_nodes, not url and sentinels"):
        Pipeline(config(url="redis://127.0.0.1:1/0", sentinels=["127.0.0.1:2"]))
    with pytest.raises(ConfigError, match="not sentinels and cluster_nodes"):
        Pipeline(config(sentinels=["127.0.0.1:2"], cluster_nodes=["127.0.0.1:3"]))
    with pytest.raises(ConfigError, match="password: is for sentinels and cluster_nodes"):
        Pipeline(config(url="redis://127.0.0.1:1/0", password="pw"))
    with pytest.raises(ConfigError, match="password: is for sentinels and cluster_nodes"):
        Pipeline(config(password="pw"))
    with pytest.raises(ConfigError, match="service_name: is the Sentinel master's name"):
        Pipeline(config(url="redis://127.0.0.1:1/0", service_name="other"))
    # Each alone, or with the options of its own topology, is fine (no connection is made to build a pipeline).
    for table in (
        {"url": "redis://127.0.0.1:1/0"},
        {"sentinels": ["127.0.0.1:2"], "password": "pw", "service_name": "other"},
        {"cluster_nodes": ["127.0.0.1:3"], "password": "pw"},
        {},
    ):
        Pipeline(config(**table)).close()


# --- where it says it connects -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "shared", "where"),
    [
        ({"url": "redis://:secret@10.1.2.3:6380/2"}, None, "10.1.2.3:6380"),
        ({"url": "redis://cache.internal/0"}, None, "cache.internal:6379"),
        ({"url": "unix:///run/redis/redis.sock?db=1"}, None, "/run/redis/redis.sock"),
        ({"sentinels": ["10.0.0.1:26379", "10.0.0.2:26379"], "service_name": "cache"}, None,
         "sentinels 10.0.0.1:26379,10.0.0.2:26379 (cache)"),
        ({"cluster_nodes": ["10.0.1.1:7000", "10.0.1.2:7000"]}, None, "cluster 10.0.1.1:7000,10.0.1.2:7000"),
        ({}, None, "127.0.0.1:6379"),
        # Naming none, the tier uses [redis_connection]: its log lines say so.
        ({}, {"url": "redis://:secret@10.9.8.7:6390/0"}, "10.9.8.7:6390"),
        ({}, {"sentinels": ["10.0.0.9:26379"], "service_name": "shared"}, "sentinels 10.0.0.9:26379 (shared)"),
        ({}, {"cluster_nodes": ["10.0.1.9:7000"]}, "cluster 10.0.1.9:7000"),
        ({"url": "redis://10.1.1.1:6381/0"}, {"url": "redis://10.9.8.7:6390/0"}, "10.1.1.1:6381"),
    ],
)
def test_its_location_names_the_redis_it_uses_never_a_password(
    table: dict[str, Any], shared: dict[str, Any] | None, where: str
) -> None:
    cfg = config(**table)
    if shared is not None:
        cfg["redis_connection"] = shared
    pipeline = Pipeline(cfg)
    assert pipeline.plugin("redis").location == where
    pipeline.close()


def test_a_failed_get_on_the_shared_connection_is_logged_with_its_address(
    upstream: SimulatedServer, caplog: pytest.LogCaptureFixture
) -> None:
    port = closed_port()
    cfg = config(breaker_reset=60, breaker_first_probe=60)
    cfg["redis_connection"] = {"url": f"redis://127.0.0.1:{port}/0"}
    pipeline = Pipeline(cfg)
    with caplog.at_level(logging.WARNING, logger="aurelis"), httpx.Client() as client:
        pipeline.instrument(client)
        assert cache_of(post(client, upstream)) == ("miss", "-")
    pipeline.close()
    messages = [r.getMessage() for r in caplog.records if "failed on get" in r.getMessage()]
    assert messages and f"cache tier 'redis' at 127.0.0.1:{port} failed on get" in messages[0]


# --- connections opened at start-up ------------------------------------------------------------------------------


def connections(url: str, name: str) -> int:
    """How many connections the Redis at ``url`` holds under the client name ``name``."""
    client = raw(url)
    try:
        return sum(1 for c in client.client_list() if c.get("name") == name)
    finally:
        client.close()


def named(url: str, name: str) -> str:
    return f"{url}?client_name={name}"


def test_a_sync_start_opens_open_at_start_connections_and_gives_them_back(
    upstream: SimulatedServer, redis_flush: str
) -> None:
    none = Pipeline(config(url=named(redis_flush, "open-none"), pool_size=3, open_at_start=0))
    none.start()
    assert connections(redis_flush, "open-none") == 0
    none.close()
    # The whole pool by default; each connection goes back to the pool for the requests to use.
    pipeline = Pipeline(config(url=named(redis_flush, "open-all"), pool_size=2, pool_timeout=0.05))
    pipeline.start()
    assert connections(redis_flush, "open-all") == 2
    with httpx.Client() as client:
        pipeline.instrument(client)
        assert cache_of(post(client, upstream, "start")) == ("miss", "-")
        pipeline.plugin("redis").flush()
        assert cache_of(post(client, upstream, "start")) == ("hit", "redis")
    assert not pipeline.stats.tier_errors
    assert connections(redis_flush, "open-all") == 2  # no new connection was needed
    pipeline.close()


@pytest.mark.anyio
async def test_an_async_start_opens_open_at_start_connections_with_their_own_connect_timeout(
    upstream: SimulatedServer, redis_flush: str, caplog: pytest.LogCaptureFixture
) -> None:
    none = Pipeline(config(url=named(redis_flush, "aopen-none"), pool_size=3, open_at_start=0))
    await none.astart()
    assert connections(redis_flush, "aopen-none") == 0
    await none.aclose()
    pipeline = Pipeline(config(url=named(redis_flush, "aopen-some"), pool_size=4, open_at_start=2,
                               connect_timeout=0.07, pool_timeout=0.05))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        await pipeline.astart()
    assert not caplog.records  # all opened
    assert connections(redis_flush, "aopen-some") == 2
    tier = pipeline.plugin("redis")
    pool = tier.async_client().connection_pool
    # Opened with a longer timeout (many at once, maybe on a busy loop); a connection made or remade later on a
    # request's path has the configured one again.
    assert pool.connection_kwargs["socket_connect_timeout"] == 0.07
    held = [await pool.get_connection() for _ in range(2)]
    try:
        assert [c.socket_connect_timeout for c in held] == [0.07, 0.07]
        assert connections(redis_flush, "aopen-some") == 2  # the two opened at start, given back to the pool
    finally:
        for connection in held:
            await pool.release(connection)
    async with httpx.AsyncClient() as client:
        pipeline.instrument(client)
        for expected in ("miss", "hit"):
            response = await client.post(upstream.base_url + "/chat/completions", json=chat("astart"),
                                         headers={"authorization": f"Bearer {API_KEY}"})
            assert response.headers["x-aurelis-cache"] == expected
            await tier.aflush()
    assert not pipeline.stats.tier_errors
    await pipeline.aclose()


@pytest.mark.parametrize("topology", ["single", "sentinel"])
def test_every_async_pool_gives_connections_back_with_the_configured_connect_timeout(
    topology: str, redis_flush: str, tmp_path: Path
) -> None:
    # What redis-py does with a connection that failed to open at start-up (with the start hook's longer
    # timeout): it gives it back to the pool, whatever the topology; it must reconnect later, on a request's
    # path, within the configured timeout.
    from redis_servers import redis_sentinel

    async def give_back(connection_table: dict[str, Any]) -> float:
        pipeline = Pipeline({"plugins": ["redis"], "redis_connection": connection_table,
                             "redis": {"connect_timeout": 0.07, "open_at_start": 0}})
        pool = pipeline.plugin("redis").async_client().connection_pool
        connection = await pool.get_connection()
        connection.socket_connect_timeout = 1.0
        await pool.release(connection)
        await pipeline.aclose()
        return float(connection.socket_connect_timeout)

    if topology == "single":
        assert anyio.run(give_back, {"url": redis_flush}) == 0.07
        return
    with redis_server(tmp_path) as master, redis_sentinel(tmp_path, master) as sentinel:
        assert anyio.run(give_back, {"sentinels": [sentinel.address], "service_name": "fleetmaster"}) == 0.07


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_redis_down_at_start_is_one_warning_naming_it_and_costs_no_request(
    upstream: SimulatedServer, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    port = closed_port()
    pipeline = Pipeline(config(url=f"redis://127.0.0.1:{port}/0", pool_size=3))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        if mode == "sync":
            pipeline.start()
            pipeline.close()
        else:

            async def main() -> None:
                await pipeline.astart()
                await pipeline.aclose()

            anyio.run(main)
    starts = [r.getMessage() for r in caplog.records if "start-up" in r.getMessage()]
    assert len(starts) == 1, starts
    assert starts[0].startswith(f"cache tier 'redis' at 127.0.0.1:{port} could not open its connections at start-up")
    assert not pipeline.stats.tier_errors  # not a failed request: the first lookups find out


# --- a busy pool ---------------------------------------------------------------------------------------------------


def test_a_full_sync_pool_is_a_miss_and_a_lost_write_never_a_failure(
    upstream: SimulatedServer, redis_flush: str
) -> None:
    pipeline = Pipeline(config(url=redis_flush, pool_size=1, pool_timeout=0.02, breaker_failures=1))
    tier = pipeline.plugin("redis")
    errors = pipeline.stats.tier_errors
    with httpx.Client() as client:
        pipeline.instrument(client)
        assert cache_of(post(client, upstream, "busy")) == ("miss", "-")
        tier.flush()
        pool = tier.sync_client().connection_pool
        held = pool.get_connection()  # someone else holds the only connection
        try:
            assert cache_of(post(client, upstream, "busy")) == ("miss", "-")  # waited, then went upstream
            tier.flush()  # its answer's write finds the pool busy too
            assert cache_of(post(client, upstream, "busy 2")) == ("miss", "-")
            tier.flush()
        finally:
            pool.release(held)
        assert errors["redis.busy"] == 4  # two lookups, two writes
        assert "redis.get" not in errors and "redis.write" not in errors
        # One failure would have opened the breaker: it is closed, the tier is used at once.
        assert cache_of(post(client, upstream, "busy")) == ("hit", "redis")
        assert cache_of(post(client, upstream, "busy 2")) == ("miss", "-")
        tier.flush()
        assert cache_of(post(client, upstream, "busy 2")) == ("hit", "redis")
    assert "redis.skipped" not in errors
    pipeline.close()


def test_a_refused_connection_is_a_failure_not_a_busy_pool(upstream: SimulatedServer) -> None:
    pipeline = Pipeline(config(url=f"redis://127.0.0.1:{closed_port()}/0", pool_size=1, breaker_failures=2,
                               breaker_reset=60, breaker_first_probe=60))
    with httpx.Client() as client:
        pipeline.instrument(client)
        for n in range(4):
            assert cache_of(post(client, upstream, n)) == ("miss", "-")
            pipeline.plugin("redis").flush()
    errors = pipeline.stats.tier_errors
    assert "redis.busy" not in errors
    # The first lookup and its write failed, which opened the breaker: the others' lookups and stores are skipped.
    assert (errors["redis.get"], errors["redis.write"], errors["redis.skipped"]) == (1, 1, 6)
    pipeline.close()


# --- what it stores, and for how long ------------------------------------------------------------------------------


def stored_keys(url: str, prefix: str = "aurelis:") -> list[bytes]:
    client = raw(url)
    try:
        return sorted(k for k in client.scan_iter(match=prefix + "*") if k != f"{prefix}meta:hits".encode())
    finally:
        client.close()


def pttl(url: str, key: str) -> int:
    client = raw(url)
    try:
        return int(client.pttl(key))
    finally:
        client.close()


def test_put_writes_what_is_left_of_a_lifetime_as_the_keys_expiry(tier_at: Any, redis_flush: str) -> None:
    tier = tier_at(ttl=60)
    clock = tier.wall_clock = WallClock()
    now = clock.now
    assert tier.put("half", entry(created=now - 30))
    assert 29_000 < pttl(redis_flush, "aurelis:half") <= 30_000
    assert tier.put("own-ttl", entry(created=now - 1, ttl=10))  # an entry's own ttl overrides the tier's
    assert 8_000 < pttl(redis_flush, "aurelis:own-ttl") <= 9_000
    # Stamped a little in the future (within the clock skew allowed): never longer than the TTL.
    assert tier.put("ahead", entry(created=now + 3))
    assert 59_000 < pttl(redis_flush, "aurelis:ahead") <= 60_000
    # Expired, or with less than a millisecond left: not stored.
    assert tier.put("gone", entry(created=now - 60)) is False
    assert tier.put("all-but-gone", entry(created=now - 59.9995)) is False
    assert tier.put("unknown-age", entry(created=math.nan)) is False
    assert stored_keys(redis_flush) == [b"aurelis:ahead", b"aurelis:half", b"aurelis:own-ttl"]
    assert tier.put("one-ms", entry(created=now - 59.9985))  # stored, for the millisecond it has left
    found = lookup(tier, "half")
    assert found is not None and found.body == b'{"ok":true}'
    clock.now += 29.5  # half a second left
    assert lookup(tier, "half") is not None
    clock.now += 0.5  # its lifetime is over on the tier's clock, whatever Redis still holds
    assert lookup(tier, "half") is None
    assert lookup(tier, "ahead") is not None


def test_without_a_ttl_an_entry_lives_until_evicted(tier_at: Any, redis_flush: str) -> None:
    tier = tier_at(ttl=None)
    assert tier.put("forever", entry(created=tier.wall_clock() - 10 * 86400))
    assert pttl(redis_flush, "aurelis:forever") == -1  # no expiry
    assert lookup(tier, "forever") is not None


def test_the_largest_entry_stored_is_max_entry_bytes(tier_at: Any, redis_flush: str) -> None:
    fits = entry(b"x" * 1000)
    tier = tier_at(max_entry_bytes=fits.size)
    assert tier.put("fits", fits)
    assert tier.put("too-large", entry(b"x" * 1001)) is False
    # Through the store hook (written behind): the larger one is counted, never queued.
    tier.aurelis_cache_set(context("fits-too"), fits, False)
    tier.aurelis_cache_set(context("larger"), entry(b"x" * 1001), False)
    tier.flush()
    assert tier.pipeline.stats.counters["redis.too_large"] == 1
    assert stored_keys(redis_flush) == [b"aurelis:fits", b"aurelis:fits-too"]


def test_the_store_hook_skips_an_expired_entry_and_a_request_without_a_key(tier_at: Any, redis_flush: str) -> None:
    tier = tier_at(ttl=60)
    clock = tier.wall_clock = WallClock()
    tier.aurelis_cache_set(context("expired"), entry(created=clock.now - 61), False)
    tier.aurelis_cache_set(context("all-but-gone"), entry(created=clock.now - 59.9995), False)
    tier.aurelis_cache_set(context(None), entry(created=clock.now), False)
    tier.aurelis_cache_set(context("live"), entry(created=clock.now - 20), False)
    tier.flush()
    assert stored_keys(redis_flush) == [b"aurelis:live"]
    assert 39_000 < pttl(redis_flush, "aurelis:live") <= 40_000
    assert not tier.pipeline.stats.tier_errors
    assert lookup(tier, "live") is not None
    assert tier.aurelis_cache_get(context(None)) is None  # no key: nothing to look up


@pytest.mark.anyio
async def test_async_lookups_and_stores_use_the_loops_own_client(tier_at: Any, redis_flush: str) -> None:
    tier = tier_at()
    tier.aurelis_cache_set(context("async", is_async=True), entry(), False)
    await tier.aflush()
    assert stored_keys(redis_flush) == [b"aurelis:async"]
    found = await tier.aurelis_cache_get(context("async", is_async=True))
    assert found is not None and found.body == b'{"ok":true}'
    assert await tier.aurelis_cache_get(context("absent", is_async=True)) is None


def test_each_event_loop_gets_a_client_of_its_own(upstream: SimulatedServer, redis_flush: str) -> None:
    pipeline = Pipeline(config(url=redis_flush))

    async def ask() -> str:
        async with httpx.AsyncClient() as client:
            pipeline.instrument(client)
            response = await client.post(upstream.base_url + "/chat/completions", json=chat("loops"),
                                         headers={"authorization": f"Bearer {API_KEY}"})
            await pipeline.plugin("redis").aflush()
            return str(response.headers["x-aurelis-cache"])

    # Each run has its own event loop: a client (and its connections) of a closed loop cannot serve the next.
    assert [anyio.run(ask) for _ in range(3)] == ["miss", "hit", "hit"]
    assert not pipeline.stats.tier_errors
    pipeline.close()


def test_live_loops_in_turn_each_keep_one_client_and_closing_closes_them(tier_at: Any, redis_flush: str) -> None:
    # Threads each running their own event loop, asking in turn: each loop keeps its client (a switch used to make
    # a new one, leaving the other loop's pool and its connection open on the server), and closing the pipeline
    # closes the live loops' clients on their own loops.
    import asyncio
    import gc
    import time

    tier = tier_at()
    tier.put("k", entry())
    server = raw(redis_flush)
    gc.collect()  # the clients of earlier tests' closed loops, and their connections, go now rather than later

    def connected() -> int:
        return int(server.info("clients")["connected_clients"])

    before = connected()

    async def ask() -> bool:
        return await tier.aurelis_cache_get(context("k", is_async=True)) is not None

    try:
        with live_loops(2) as loops:
            found = [asyncio.run_coroutine_threadsafe(ask(), loops[turn % 2]).result(10) for turn in range(8)]
            assert found == [True] * 8
            # One connection per loop, however often they took turns (at most: a connection an earlier test left
            # to the garbage collector may close meanwhile).
            assert connected() - before <= 2
            tier.pipeline.close()
            deadline = time.monotonic() + 10  # the closes run on the loops' own threads
            while connected() > before and time.monotonic() < deadline:
                time.sleep(0.02)
            assert connected() <= before
    finally:
        server.close()


# --- values it does not trust --------------------------------------------------------------------------------------


def test_values_that_do_not_verify_are_misses_counted_and_warned_about_once(
    tier_at: Any, redis_flush: str, caplog: pytest.LogCaptureFixture
) -> None:
    tier = tier_at()
    assert tier.put("a", entry(b"answer a"))
    assert tier.put("b", entry(b"answer b"))
    client = raw(redis_flush)
    value = client.get("aurelis:a")
    client.set("aurelis:moved-1", value)  # copied to other keys: their tags do not verify there
    client.set("aurelis:moved-2", value)
    client.close()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert lookup(tier, "moved-1") is None
        assert lookup(tier, "moved-2") is None
    assert tier.pipeline.stats.tier_errors["redis.unauthenticated"] == 2
    assert [r.getMessage() for r in caplog.records] == [
        "cache tier 'redis' holds a value at aurelis:moved-1 whose tag does not verify (written under another "
        "secret, altered, moved from another key, or planted); it is a miss (1 so far, counted as "
        "redis.unauthenticated)"
    ]
    found = lookup(tier, "a")
    assert found is not None and found.body == b"answer a"


def test_unreadable_values_are_plain_misses_warned_about_once(
    tier_at: Any, redis_flush: str, caplog: pytest.LogCaptureFixture
) -> None:
    tier = tier_at()
    client = raw(redis_flush)
    client.set("aurelis:junk-1", b"\x07not an entry")
    client.set("aurelis:junk-2", b"\x09nor this")
    client.close()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert lookup(tier, "junk-1") is None
        assert lookup(tier, "junk-2") is None
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1
    assert messages[0].startswith("cache tier 'redis' holds an unreadable value at aurelis:junk-1: ")
    assert not tier.pipeline.stats.tier_errors  # another version's value is no fault


# --- hit counts, top, stats, clear ---------------------------------------------------------------------------------


def hit(tier: RedisTier, key: str, times: int) -> None:
    for _ in range(times):
        assert lookup(tier, key) is not None


def test_hits_are_counted_and_only_the_most_hit_keys_are_tracked(redis_flush: str) -> None:
    pipeline = Pipeline(config(url=redis_flush, track_hits=2))
    tier = pipeline.plugin("redis")
    for key in ("one", "two", "three", "never"):
        assert tier.put(key, entry(key.encode()))
    hit(tier, "three", 3)
    hit(tier, "one", 1)
    hit(tier, "two", 2)
    assert lookup(tier, "absent") is None  # a miss is no hit
    pipeline.close()  # hands the counts gathered in memory to the writer, and writes them
    reader = Pipeline(config(url=redis_flush))
    tier = reader.plugin("redis")
    assert [(key, e.body) for key, e in tier.top(10)] == [("three", b"three"), ("two", b"two")]
    stats = tier.stats()
    assert (stats["entries"], stats["hits"], stats["tracked_keys"]) == (4, 5, 2)
    reader.close()


def test_top_is_the_most_hit_live_entries_most_hit_first(tier_at: Any, redis_flush: str) -> None:
    writer = tier_at()
    clock = writer.wall_clock = WallClock()
    for n in range(5):
        assert writer.put(f"k{n}", entry(f"body {n}".encode(), created=clock.now - 10 * n, ttl=100))
    for n, times in enumerate([5, 4, 3, 2, 1]):
        hit(writer, f"k{n}", times)
    writer.hits.hand_off(False)
    writer.flush()
    client = raw(redis_flush)
    client.delete("aurelis:k1")  # evicted since it was counted
    client.close()
    tier = tier_at()
    tier.wall_clock = clock
    assert [key for key, _ in tier.top(2)] == ["k0"]  # k1 is gone
    assert [key for key, _ in tier.top(3)] == ["k0", "k2"]
    assert [(key, e.body) for key, e in tier.top(10)] == [
        ("k0", b"body 0"), ("k2", b"body 2"), ("k3", b"body 3"), ("k4", b"body 4")
    ]
    clock.now += 70  # k3 is now 100 s old: its lifetime is just over; k4 is past it
    assert [key for key, _ in tier.top(10)] == ["k0", "k2"]
    clock.now += 9.5  # k2 has half a second left
    assert [key for key, _ in tier.top(10)] == ["k0", "k2"]

    async def atop() -> list[str]:
        return [key for key, _ in await tier.atop(10)]

    assert anyio.run(atop) == ["k0", "k2"]


def test_stats_count_entries_bytes_hits_and_other_keys(tier_at: Any, redis_flush: str) -> None:
    tier = tier_at()
    assert tier.stats() == {"entries": 0, "bytes": 0, "hits": 0, "tracked_keys": 0, "other_keys": 0}
    assert tier.put("a", entry(b"a" * 300))
    assert tier.put("b", entry(b"b"))
    hit(tier, "a", 3)
    hit(tier, "b", 1)
    tier.hits.hand_off(False)
    tier.flush()
    client = raw(redis_flush)
    client.hset("aurelis:a-hash", "field", "value")  # WRONGTYPE for GET: another plugin's, not an entry
    client.set("aurelis:plain", b"not ours")
    client.set(b"aurelis:\xff\xfe", b"a key that is not UTF-8")
    client.set("elsewhere", b"outside the prefix")
    size = client.strlen("aurelis:a") + client.strlen("aurelis:b")
    client.close()
    assert tier.stats() == {"entries": 2, "bytes": size, "hits": 4, "tracked_keys": 2, "other_keys": 3}


def test_clear_deletes_the_entries_and_hit_counts_and_warns_about_other_keys(
    tier_at: Any, redis_flush: str, caplog: pytest.LogCaptureFixture
) -> None:
    tier = tier_at()
    assert tier.clear() == 0
    for key in ("a", "b", "c"):
        assert tier.put(key, entry())
    hit(tier, "a", 2)
    tier.hits.hand_off(False)
    tier.flush()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert tier.clear() == 3
    assert not caplog.records  # nothing else under the prefix
    assert tier.stats() == {"entries": 0, "bytes": 0, "hits": 0, "tracked_keys": 0, "other_keys": 0}
    client = raw(redis_flush)
    assert client.keys("*") == []
    client.set("aurelis:theirs", b"x")
    client.set(b"aurelis:\xff", b"y")
    client.close()
    assert tier.put("d", entry())
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert tier.clear() == 1
    assert [r.getMessage() for r in caplog.records] == [
        "cache tier 'redis' left 2 keys under the prefix 'aurelis:' that are not entries it wrote (another "
        "plugin's, an older version's, or written under another secret)"
    ]
    assert sorted(raw(redis_flush).keys("*")) == [b"aurelis:theirs", b"aurelis:\xff"]
    assert tier.clear() == 0  # none of them is the tier's
    assert sorted(raw(redis_flush).keys("*")) == [b"aurelis:theirs", b"aurelis:\xff"]


def test_stats_and_clear_go_through_many_keys_in_batches(tier_at: Any, redis_flush: str) -> None:
    tier = tier_at(prefix="many:")
    client = raw(redis_flush)
    pipe = client.pipeline(transaction=False)
    for n in range(1001):
        pipe.set(f"many:other-{n}", b"x")
    pipe.execute()
    client.close()
    for n in range(1001):
        assert tier.put(f"k{n}", entry(b"e"))
    stats = tier.stats()
    assert (stats["entries"], stats["other_keys"]) == (1001, 1001)
    assert tier.clear() == 1001
    assert tier.stats()["entries"] == 0


# --- which Redis ---------------------------------------------------------------------------------------------------


def test_the_tier_uses_its_own_redis_else_the_shared_connection(upstream: SimulatedServer, redis_flush: str) -> None:
    dead = f"redis://127.0.0.1:{closed_port()}/0"
    for table, shared in (({}, {"url": redis_flush}), ({"url": redis_flush}, {"url": dead})):
        cfg = config(**table)
        cfg["redis_connection"] = shared
        pipeline = Pipeline(cfg)
        with httpx.Client() as client:
            pipeline.instrument(client)
            assert cache_of(post(client, upstream, "which")) == ("miss", "-")
            pipeline.plugin("redis").flush()
            assert cache_of(post(client, upstream, "which")) == ("hit", "redis")
        assert not pipeline.stats.tier_errors
        pipeline.close()
        assert len(stored_keys(redis_flush)) == 1
        raw(redis_flush).flushdb()


# --- the breaker ---------------------------------------------------------------------------------------------------


def test_a_breaker_without_a_first_probe_waits_its_reset_and_never_more() -> None:
    now = [0.0]
    plain = Breaker("redis", failures=1, reset=2.0, clock=lambda: now[0])
    capped = Breaker("redis", failures=1, reset=2.0, clock=lambda: now[0], first_probe=10.0)
    for breaker in (plain, capped):
        assert not breaker.is_open
        breaker.failure()
        assert breaker.is_open
    now[0] = 1.999
    assert plain.allow() is False and capped.allow() is False
    now[0] = 2.0
    assert not plain.is_open and not capped.is_open  # the probe is due
    assert plain.allow() and capped.allow()


def test_an_answer_while_closed_says_nothing(caplog: pytest.LogCaptureFixture) -> None:
    breaker = Breaker("redis", failures=2, reset=1.0, clock=lambda: 0.0)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        breaker.failure()
        breaker.success()
    assert not caplog.records and breaker.consecutive == 0


# --- the defaults --------------------------------------------------------------------------------------------------


def test_by_default_entries_live_an_hour_and_up_to_4_mib_are_stored(tier_at: Any, redis_flush: str) -> None:
    tier = tier_at()
    assert tier.put("fresh", entry())
    assert 3_599_000 < pttl(redis_flush, "aurelis:fresh") <= 3_600_000
    headers = [(b"content-type", b"application/json")]
    overhead = sum(len(name) + len(value) for name, value in headers)
    largest = CacheEntry(200, headers, b"x" * (4 * 1024 * 1024 - overhead))
    assert largest.size == 4 * 1024 * 1024
    assert tier.put("largest", largest)
    assert not tier.put("larger", CacheEntry(200, headers, b"x" * (4 * 1024 * 1024 - overhead + 1)))


def test_by_default_timeouts_are_tight_and_the_pool_holds_32(redis_flush: str) -> None:
    pipeline = Pipeline(config(url=named(redis_flush, "defaults")))
    tier = pipeline.plugin("redis")
    for pool in (tier.sync_client().connection_pool, anyio.run(_async_pool, tier)):
        assert pool.connection_kwargs["socket_timeout"] == 0.1
        assert pool.connection_kwargs["socket_connect_timeout"] == 0.05
        assert (pool.max_connections, pool.timeout) == (32, 0.1)
    pipeline.start()  # opens the whole pool
    assert connections(redis_flush, "defaults") == 32
    pipeline.close()
    assert "hunter2" not in repr(Pipeline(config(sentinels=["127.0.0.1:1"], password="hunter2")).plugin("redis").config)


async def _async_pool(tier: RedisTier) -> Any:
    pool = tier.async_client().connection_pool
    await tier.async_client().aclose()
    return pool


def test_by_default_three_failures_open_the_breaker_probed_after_a_quarter_second(
    upstream: SimulatedServer, caplog: pytest.LogCaptureFixture
) -> None:
    port = closed_port()
    pipeline = Pipeline(config(url=f"redis://127.0.0.1:{port}/0"))
    with caplog.at_level(logging.WARNING, logger=LOGGER), httpx.Client() as client:
        pipeline.instrument(client)
        for n in range(2):
            assert cache_of(post(client, upstream, n)) == ("miss", "-")
            pipeline.plugin("redis").flush()
    errors = pipeline.stats.tier_errors
    # The first lookup and its write, then the second lookup: three in a row; the second answer is not written.
    assert (errors["redis.get"], errors["redis.write"], errors["redis.skipped"]) == (2, 1, 1)
    assert (
        "cache tier 'redis' failed 3 times in a row; skipping it, probing it again after 0.25 s, then less often "
        "(up to every 5 s) until it answers"
    ) in [r.getMessage() for r in caplog.records]
    pipeline.close()


def test_the_hit_counts_keep_the_100000_most_hit_keys_by_default(tier_at: Any, redis_flush: str) -> None:
    tier = tier_at()
    client = raw(redis_flush)
    pipe = client.pipeline(transaction=False)
    for start in range(0, 100_000, 10_000):
        pipe.zadd("aurelis:meta:hits", {f"aurelis:old-{n}": 5 for n in range(start, start + 10_000)})
    pipe.execute()
    client.close()
    assert tier.put("new", entry())
    hit(tier, "new", 1)
    tier.hits.hand_off(False)
    tier.flush()
    client = raw(redis_flush)
    assert client.zcard("aurelis:meta:hits") == 100_000  # the least hit, the new key, made way
    assert client.zscore("aurelis:meta:hits", "aurelis:new") is None
    client.close()


# --- fleet_flight, one lookup at a time ----------------------------------------------------------------------------


def fleet(redis_url: str, **options: Any) -> Pipeline:
    return Pipeline(config(url=redis_url, fleet_flight={"enabled": True, **options}))


def lease(redis_url: str, key: str) -> bytes | None:
    client = raw(redis_url)
    try:
        value: bytes | None = client.get("{aurelis:" + key + "}:lease")
        return value
    finally:
        client.close()


def test_only_a_tier_with_fleet_flight_on_takes_part_in_flights(redis_flush: str) -> None:
    plain = Pipeline(config(url=redis_flush))
    flying = fleet(redis_flush)
    assert type(plain.plugin("redis")) is RedisTier
    assert type(flying.plugin("redis")) is FleetFlightTier
    assert lookup(plain.plugin("redis"), "plain") is None
    assert lease(redis_flush, "plain") is None  # a plain lookup takes no lease
    plain.close()
    flying.close()


def test_a_leader_stores_its_answer_then_releases_its_lease(redis_flush: str) -> None:
    leader = fleet(redis_flush, wait=0.02)
    follower = fleet(named(redis_flush, "follower"), wait=0.02)
    one, two = leader.plugin("redis"), follower.plugin("redis")
    ctx = context("q")
    assert one.aurelis_cache_get(ctx) is None  # new to the fleet: this replica leads
    assert leader.stats.counters["redis.fleet_flight.led"] == 1
    assert lease(redis_flush, "q") is not None
    # Another replica follows; it waits (20 ms here) for the answer, then goes upstream on its own.
    assert lookup(two, "q") is None
    assert lookup(two, "q") is None
    assert follower.stats.counters["redis.fleet_flight.waited_out"] == 2
    assert follower.stats.counters["redis.fleet_flight.led"] == 0
    # Its looks share one connection, and its waits one pub/sub connection.
    assert connections(redis_flush, "follower") == 2
    told = raw(redis_flush).pubsub()
    told.subscribe("{aurelis:q}:lease")  # where followers are told
    assert told.get_message(timeout=5)["type"] == "subscribe"
    one.aurelis_cache_set(ctx, entry(b"led"), False)
    one.flush()
    assert lease(redis_flush, "q") is None  # written with the entry, then released
    message = told.get_message(timeout=5)
    assert message is not None and message["data"] == b"0"  # released, not given up
    told.close()
    found = lookup(two, "q")
    assert found is not None and found.body == b"led"
    assert "redis.fleet_flight.gave_up" not in leader.stats.counters
    # A request of the leader's own that it no longer leads (the answer is stored): a plain hit.
    found = lookup(one, "q")
    assert found is not None and found.body == b"led"
    leader.close()
    follower.close()


def test_a_leader_that_stores_nothing_gives_up_and_its_followers_go_upstream_at_once(redis_flush: str) -> None:
    leader, follower = fleet(redis_flush, wait=30), fleet(redis_flush, wait=30)
    one, two = leader.plugin("redis"), follower.plugin("redis")
    ctx = context("q")
    assert one.aurelis_cache_get(ctx) is None
    told = raw(redis_flush).pubsub()
    told.subscribe("{aurelis:q}:lease")
    assert told.get_message(timeout=5)["type"] == "subscribe"
    one.aurelis_observe(ctx)  # the request ended without an answer to store
    one.flush()
    message = told.get_message(timeout=5)
    assert message is not None and message["data"] == b"1000"  # given up: marked for a second
    told.close()
    assert leader.stats.counters["redis.fleet_flight.gave_up"] == 1
    assert lease(redis_flush, "q") == b"!"  # marked given up for a second
    assert lookup(two, "q") is None  # at once, not after 30 s: the mark says so
    assert follower.stats.counters["redis.fleet_flight.led"] == 0
    one.aurelis_observe(ctx)  # observed again: nothing more to release
    assert leader.stats.counters["redis.fleet_flight.gave_up"] == 1
    leader.close()
    follower.close()


def test_a_request_that_will_not_share_its_answer_neither_leads_nor_follows(redis_flush: str) -> None:
    pipeline = fleet(redis_flush)
    tier = pipeline.plugin("redis")
    assert tier.aurelis_cache_get(context("alone", coalesce=False)) is None
    assert tier.aurelis_cache_get(context("unstored", no_store=True)) is None
    assert tier.aurelis_cache_get(context(None)) is None
    assert lease(redis_flush, "alone") is None and lease(redis_flush, "unstored") is None
    assert "redis.fleet_flight.led" not in pipeline.stats.counters
    assert tier.put("unstored", entry(b"stored"))
    found = tier.aurelis_cache_get(context("unstored", no_store=True))
    assert found is not None and found.body == b"stored"
    pipeline.close()


# --- an open breaker -----------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_while_the_breaker_is_open_nothing_is_sent_and_writes_queued_before_are_skipped() -> None:
    pipeline = Pipeline(config(url=f"redis://127.0.0.1:{closed_port()}/0", breaker_failures=1, breaker_reset=60,
                               breaker_first_probe=60))
    tier = pipeline.plugin("redis")
    errors = pipeline.stats.tier_errors
    # Queued on this loop: its writer runs only when the test awaits.
    tier.aurelis_cache_set(context("before", is_async=True), entry(), False)
    with pytest.raises(redis.ConnectionError):
        tier.aurelis_cache_get(context("probe"))  # a sync lookup fails: one failure opens the breaker
    assert (errors["redis.get"], errors["redis.skipped"]) == (0, 0)  # the pipeline counts the lookup's error
    tier.aurelis_cache_set(context("after", is_async=True), entry(), False)  # not even queued
    assert errors["redis.skipped"] == 1
    assert tier.aurelis_cache_get(context("skipped")) is None
    assert errors["redis.skipped"] == 2
    await tier.aflush()  # the write queued before the breaker opened is skipped, not tried
    assert errors["redis.skipped"] == 3
    assert "redis.write" not in errors
    await pipeline.aclose()


@pytest.mark.anyio
async def test_the_write_behind_queue_holds_10000_writes_by_default(tier_at: Any, redis_flush: str) -> None:
    tier = tier_at()
    one = entry()
    for n in range(10_001):  # queued on this loop without awaiting: its writer has not run yet
        tier.aurelis_cache_set(context(f"q{n}", is_async=True), one, False)
    assert tier.pipeline.stats.tier_errors["redis.dropped"] == 1
    await tier.aflush()
    assert tier.stats()["entries"] == 10_000


def test_a_pipeline_used_from_sync_code_may_be_closed_from_async_code(redis_flush: str) -> None:
    pipeline = Pipeline(config(url=named(redis_flush, "closed-async")))
    tier = pipeline.plugin("redis")
    assert tier.put("sync", entry())
    assert connections(redis_flush, "closed-async") == 1
    anyio.run(pipeline.aclose)  # no asyncio client was ever made: the sync one is closed all the same
    assert connections(redis_flush, "closed-async") == 0


@pytest.mark.anyio
async def test_connections_that_failed_to_open_at_start_reconnect_with_the_configured_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with redis_server(tmp_path) as server:
        pipeline = Pipeline(config(url=server.url, pool_size=2, connect_timeout=0.07))
        server.freeze()  # connections open, nothing answers their handshake
        try:
            with caplog.at_level(logging.WARNING, logger=LOGGER):
                await pipeline.astart()
        finally:
            server.thaw()
        assert any("could not open its connections at start-up" in r.getMessage() for r in caplog.records)
        pool = pipeline.plugin("redis").async_client().connection_pool
        # The connections the start hook made are reused on requests' paths: with the 70 ms configured, not the
        # start hook's longer timeout.
        held = [await pool.get_connection() for _ in range(2)]
        try:
            assert [c.socket_connect_timeout for c in held] == [0.07, 0.07]
        finally:
            for connection in held:
                await pool.release(connection)
        await pipeline.aclose()


@pytest.mark.anyio
async def test_an_async_start_warms_memory_from_the_most_hit_entries(
    upstream: SimulatedServer, redis_flush: str
) -> None:
    writer = Pipeline(config(url=redis_flush))
    with httpx.Client() as client:
        writer.instrument(client)
        assert cache_of(post(client, upstream, "warm")) == ("miss", "-")
        writer.plugin("redis").flush()
        assert cache_of(post(client, upstream, "warm")) == ("hit", "redis")  # counted: the most hit
    writer.close()
    warm = {"plugins": ["normalize", "memory", "redis"], "redis": {"url": redis_flush, "warm": {"on_start": True}}}
    pipeline = Pipeline(warm)
    await pipeline.astart()
    async with httpx.AsyncClient() as client:
        pipeline.instrument(client)
        response = await client.post(upstream.base_url + "/chat/completions", json=chat("warm"),
                                     headers={"authorization": f"Bearer {API_KEY}"})
        assert cache_of(response) == ("hit", "memory")  # copied into memory at start-up
    await pipeline.aclose()


def test_a_cluster_unreachable_at_start_is_one_warning_naming_its_nodes(
    upstream: SimulatedServer, caplog: pytest.LogCaptureFixture
) -> None:
    port = closed_port()
    pipeline = Pipeline(config(cluster_nodes=[f"127.0.0.1:{port}"]))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        pipeline.start()  # building the client already talks to the cluster
    starts = [r.getMessage() for r in caplog.records if "start-up" in r.getMessage()]
    assert len(starts) == 1, starts
    assert starts[0].startswith(f"cache tier 'redis' at cluster 127.0.0.1:{port} could not open its connections")
    with httpx.Client() as client:
        pipeline.instrument(client)
        assert cache_of(post(client, upstream, "cluster down")) == ("miss", "-")
    pipeline.close()


@pytest.mark.anyio
async def test_through_sentinel_an_async_start_opens_the_pool_with_the_configured_timeout_after(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with redis_server(tmp_path) as master, redis_sentinel(tmp_path, master, "behaviour") as sentinel:
        pipeline = Pipeline(config(sentinels=[sentinel.address], service_name="behaviour", pool_size=2,
                                   connect_timeout=0.07))
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            await pipeline.astart()
        assert not caplog.records
        pool = pipeline.plugin("redis").async_client().connection_pool
        assert pool.connection_kwargs["socket_connect_timeout"] == 0.07
        held = [await pool.get_connection() for _ in range(2)]
        try:
            assert [c.socket_connect_timeout for c in held] == [0.07, 0.07]
        finally:
            for connection in held:
                await pool.release(connection)
        await pipeline.aclose()


@pytest.mark.parametrize("answer", ["too large", "expired", "one millisecond left"])
def test_a_leader_whose_answer_is_not_stored_gives_up_its_lease(redis_flush: str, answer: str) -> None:
    pipeline = Pipeline(config(url=redis_flush, ttl=60, max_entry_bytes=100, fleet_flight={"enabled": True}))
    tier = pipeline.plugin("redis")
    clock = tier.wall_clock = WallClock()
    ctx = context("q")
    assert tier.aurelis_cache_get(ctx) is None
    assert pipeline.stats.counters["redis.fleet_flight.led"] == 1
    if answer == "too large":
        tier.aurelis_cache_set(ctx, entry(b"x" * 100), False)
    elif answer == "expired":
        tier.aurelis_cache_set(ctx, entry(created=clock.now - 59.9995), False)
    else:
        tier.aurelis_cache_set(ctx, entry(created=clock.now - 59.9985), False)  # stored, for 1 ms
    tier.flush()
    if answer == "one millisecond left":
        assert "redis.fleet_flight.gave_up" not in pipeline.stats.counters
        assert lease(redis_flush, "q") is None
    else:
        assert pipeline.stats.counters["redis.fleet_flight.gave_up"] == 1
        assert lease(redis_flush, "q") == b"!"
    pipeline.close()


def test_a_leader_gives_up_when_the_breaker_opened_during_its_call(tmp_path: Path) -> None:
    with redis_server(tmp_path) as server:
        pipeline = Pipeline(config(url=server.url, breaker_failures=1, breaker_reset=60, breaker_first_probe=60,
                                   fleet_flight={"enabled": True}))
        tier = pipeline.plugin("redis")
        ctx = context("q")
        assert tier.aurelis_cache_get(ctx) is None
        assert pipeline.stats.counters["redis.fleet_flight.led"] == 1
        server.kill()
        with pytest.raises(redis.ConnectionError):
            tier.aurelis_cache_get(context("other", coalesce=False))  # one failure opens the breaker
        assert tier.aurelis_cache_get(context("next")) is None  # skipped: neither leads nor follows
        assert pipeline.stats.tier_errors["redis.skipped"] == 1
        tier.aurelis_cache_set(ctx, entry(), False)  # not written: the lease is given up
        tier.flush()
        assert pipeline.stats.counters["redis.fleet_flight.gave_up"] == 1
        # The entry's write was skipped, never queued; the lease's release was queued, and skipped by the writer.
        assert pipeline.stats.tier_errors["redis.skipped"] == 3
        assert "redis.write" not in pipeline.stats.tier_errors
        pipeline.close()


@pytest.mark.anyio
async def test_closing_a_fleet_flight_tier_writes_out_what_is_queued(redis_flush: str) -> None:
    pipeline = fleet(redis_flush)
    tier = pipeline.plugin("redis")
    tier.aurelis_cache_set(context("queued", is_async=True), entry(), False)  # its writer has not run yet
    await pipeline.aclose()
    assert stored_keys(redis_flush) == [b"aurelis:queued"]


# --- what `aurelis config check` asks of it ------------------------------------------------------------------------


def test_it_probes_the_default_redis_only_when_nothing_names_one(redis_flush: str) -> None:
    default = "redis://127.0.0.1:6379/0"
    client = redis.Redis.from_url(default, socket_connect_timeout=1.0, socket_timeout=1.0)
    try:
        answering = bool(client.ping())
    except redis.RedisError:
        answering = False
    finally:
        client.close()
    pipeline = Pipeline(config())  # names no Redis: the tier connects to the default, which is probed
    problems = pipeline.plugin("redis").problems()
    if answering:
        assert problems == []
    else:
        assert len(problems) == 1 and problems[0].startswith(f"url: no Redis answers at '{default}'"), problems
    pipeline.close()
    # A Redis named, by the table (even the default's own URL) or by [redis_connection], is probed as that option.
    shared = config()
    shared["redis_connection"] = {"url": f"redis://127.0.0.1:{closed_port()}/0"}
    for cfg in (config(url=f"redis://127.0.0.1:{closed_port()}/0"), config(url=default), shared):
        pipeline = Pipeline(cfg)
        assert pipeline.plugin("redis").problems() == []
        pipeline.close()


def test_only_a_batch_with_hit_counts_trims_the_hit_counts(tier_at: Any, redis_flush: str) -> None:
    tier = tier_at(track_hits=2)
    client = raw(redis_flush)
    client.zadd("aurelis:meta:hits", {"aurelis:a": 3, "aurelis:b": 2, "aurelis:c": 1})  # another replica's
    tier.aurelis_cache_set(context("d"), entry(), False)
    tier.flush()  # a batch of one write, no counts: the set is left as it is
    assert client.zcard("aurelis:meta:hits") == 3
    assert tier.put("d", entry())
    hit(tier, "d", 1)
    tier.hits.hand_off(False)
    tier.flush()  # counts written: the set is trimmed to the 2 most hit
    assert client.zrange("aurelis:meta:hits", 0, -1) == [b"aurelis:b", b"aurelis:a"]
    client.close()
