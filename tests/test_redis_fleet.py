"""A fleet of replicas on one Redis, at its edges: a Redis that freezes under the shared rate limiter, a cache
tier whose connection pool is full, one master of a Cluster dying. Each against real ``redis-server`` processes
of the test's own (``redis_servers``), frozen with ``SIGSTOP`` or killed mid-test."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

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
            # Redis stayed frozen until every request had its answer: none waited for Redis to come back. Each
            # ended by the limiter giving up on Redis (its timeout, 0.15 s), never by the client's own timeout
            # (10 s); the bound between the two is wide so that a loaded machine's stalls do not matter.
            assert max(took) < 5.0, (max(took), frozen_for)
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
            # As in the sync test: Redis stayed frozen until all had answers; none hit the client's timeout.
            assert max(took) < 5.0, (max(took), frozen_for)
            assert counters["ratelimit_redis_skipped"] > len(took) / 2
            await asyncio.sleep(COOLOFF + 0.05)
            before = shared_state(server)
            await timed()
            await timed()
            after = shared_state(server)
            assert all(after[k] != before[k] for k in after)


# --- the cache tier's connection pool ------------------------------------------------------------------------

API_KEY = "sk-test-secret-1234567890"


def cached(**redis_options: Any) -> Pipeline:
    return Pipeline({"plugins": ["normalize", "redis"], "redis": redis_options})


def chat(n: int) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": f"question {n}"}]}


def store_answers(config: dict[str, Any], upstream: SimulatedServer, bodies: list[dict[str, Any]]) -> None:
    """A replica of ``config`` asks each of ``bodies`` once, so their answers are stored (written out on close)."""
    writer = Pipeline(config)
    with writer.instrument(httpx.Client(timeout=10)) as client:
        for body in bodies:
            client.post(upstream.base_url + "/chat/completions", json=body,
                        headers={"authorization": f"Bearer {API_KEY}"})
    writer.close()


def connections(server: Server, name: str) -> int:
    """How many connections ``server`` holds under the client name ``name``."""
    client = redis.Redis.from_url(server.url)
    try:
        return sum(1 for c in client.client_list() if c.get("name") == name)
    finally:
        client.close()


@pytest.mark.redis
@pytest.mark.anyio
async def test_150_concurrent_lookups_through_a_pool_of_4_all_hit(upstream: SimulatedServer, tmp_path: Path) -> None:
    with redis_server(tmp_path) as server:
        bodies = [chat(n) for n in range(150)]
        writer = cached(url=server.url)
        async with writer.instrument(httpx.AsyncClient(timeout=10)) as client:
            for body in bodies:
                await client.post(upstream.base_url + "/chat/completions", json=body,
                                  headers={"authorization": f"Bearer {API_KEY}"})
        # A replica with a pool of 4 and no memory tier: every lookup waits its turn for a connection.
        reader = cached(url=server.url, pool_size=4, pool_timeout=2.0)
        await reader.astart()  # as an application does at start-up: the pool's 4 connections are opened now
        async with reader.instrument(httpx.AsyncClient(timeout=10)) as client:
            answers = await asyncio.gather(*(
                client.post(upstream.base_url + "/chat/completions", json=body,
                            headers={"authorization": f"Bearer {API_KEY}"}) for body in bodies))
        assert [a.headers.get("x-aurelis-cache-tier") for a in answers] == ["redis"] * 150
        assert upstream.count("/chat/completions") == 150  # only the writer's
        assert not reader.stats.tier_errors


@pytest.mark.redis
@pytest.mark.anyio
async def test_a_cold_replicas_first_burst_of_64_is_served_from_redis(upstream: SimulatedServer,
                                                                      tmp_path: Path) -> None:
    with redis_server(tmp_path) as server:
        bodies = [chat(n) for n in range(64)]
        writer = cached(url=server.url)
        async with writer.instrument(httpx.AsyncClient(timeout=10)) as client:
            for body in bodies:
                await client.post(upstream.base_url + "/chat/completions", json=body,
                                  headers={"authorization": f"Bearer {API_KEY}"})
        # Nothing started: the burst's first request starts the pipeline, which opens the pool while the other
        # 63 lookups wait for it instead of each connecting on a loop busy with the burst.
        fresh = cached(url=server.url)
        async with fresh.instrument(httpx.AsyncClient(timeout=10)) as client:
            answers = await asyncio.gather(*(
                client.post(upstream.base_url + "/chat/completions", json=body,
                            headers={"authorization": f"Bearer {API_KEY}"}) for body in bodies))
        assert [a.headers.get("x-aurelis-cache-tier") for a in answers] == ["redis"] * 64
        assert not fresh.stats.tier_errors


@pytest.mark.redis
@pytest.mark.anyio
async def test_a_full_pool_is_a_miss_not_a_failure(upstream: SimulatedServer, tmp_path: Path) -> None:
    with redis_server(tmp_path) as server:
        pipeline = cached(url=server.url, pool_size=1, pool_timeout=0.05, breaker_failures=1)
        tier = pipeline.plugin("redis")
        async with pipeline.instrument(httpx.AsyncClient(timeout=10)) as client:

            async def ask() -> str:
                response = await client.post(upstream.base_url + "/chat/completions", json=chat(0),
                                             headers={"authorization": f"Bearer {API_KEY}"})
                assert response.status_code == 200
                return response.headers.get("x-aurelis-cache-tier", "none")

            assert await ask() == "none"
            await tier.aflush()
            pool = tier.async_client().connection_pool
            held = await pool.get_connection()  # someone else holds the only connection
            try:
                assert await ask() == "none"  # waited 50 ms, then went upstream
            finally:
                await pool.release(held)
            assert pipeline.stats.tier_errors["redis.busy"] == 1
            assert "redis.get" not in pipeline.stats.tier_errors
            assert await ask() == "redis"  # the breaker (1 failure opens it) stayed closed
        await pipeline.aclose()


@pytest.mark.redis
def test_a_new_sync_replica_opens_its_connections_at_start(tmp_path: Path) -> None:
    with redis_server(tmp_path) as server:
        pipeline = cached(url=server.url + "?client_name=fresh-replica", pool_size=12, open_at_start=10)
        assert connections(server, "fresh-replica") == 0
        pipeline.start()
        assert connections(server, "fresh-replica") == 10
        pipeline.close()
        assert connections(server, "fresh-replica") == 0


@pytest.mark.redis
@pytest.mark.anyio
async def test_a_new_async_replica_opens_its_whole_pool_at_start(tmp_path: Path) -> None:
    with redis_server(tmp_path) as server:
        pipeline = cached(url=server.url + "?client_name=fresh-replica", pool_size=6)
        await pipeline.astart()
        assert connections(server, "fresh-replica") == 6  # open_at_start defaults to pool_size
        await pipeline.aclose()
        assert connections(server, "fresh-replica") == 0


def test_open_at_start_cannot_exceed_the_pool() -> None:
    from aurelis_core import ConfigError

    with pytest.raises(ConfigError, match="open_at_start"):
        cached(pool_size=4, open_at_start=5)


# --- one connection setting for every Redis-using plugin -----------------------------------------------------


def keys_on(server: Server) -> list[str]:
    client = redis.Redis.from_url(server.url)
    try:
        return sorted(key.decode() for key in client.scan_iter())
    finally:
        client.close()


def fleet_config(**tables: Any) -> dict[str, Any]:
    return {"plugins": ["normalize", "redis", "ratelimit"], "tenant": {"secret": "fleet-secret"},
            "ratelimit": {"rpm": 1000}, **tables}


def one_request(pipeline: Pipeline, upstream: SimulatedServer, n: int = 1) -> None:
    with pipeline.instrument(httpx.Client(timeout=10)) as client:
        response = client.post(upstream.base_url + "/chat/completions", json=chat(n),
                               headers={"authorization": f"Bearer {API_KEY}"})
        assert response.status_code == 200
    pipeline.close()


@pytest.mark.redis
def test_one_redis_connection_table_serves_the_cache_tier_and_the_rate_limiter(
    upstream: SimulatedServer, tmp_path: Path
) -> None:
    with redis_server(tmp_path) as server:
        one_request(Pipeline(fleet_config(redis_connection={"url": server.url})), upstream)
        keys = keys_on(server)
        assert any(k.startswith("aurelis:ratelimit:up:") for k in keys)  # the limit
        assert "aurelis:meta:hits" not in keys and any(not k.startswith("aurelis:ratelimit:") for k in keys)


@pytest.mark.redis
def test_each_plugin_may_name_its_own_redis_or_keep_its_limits_local(
    upstream: SimulatedServer, tmp_path: Path
) -> None:
    (tmp_path / "shared").mkdir()
    (tmp_path / "own").mkdir()
    with redis_server(tmp_path / "shared") as shared, redis_server(tmp_path / "own") as own:
        one_request(Pipeline(fleet_config(
            redis_connection={"url": shared.url}, redis={"url": own.url},
            ratelimit={"rpm": 1000, "redis": {"url": own.url}})), upstream)
        assert keys_on(shared) == []
        [limit] = [k for k in keys_on(own) if k.startswith("aurelis:ratelimit:")]
        before = redis.Redis.from_url(own.url).get(limit)
        local = Pipeline(fleet_config(redis_connection={"url": shared.url}, redis={"url": own.url},
                                      ratelimit={"rpm": 10, "share": False}))
        one_request(local, upstream, n=2)  # a new question: a miss, sent, so admitted by the limiter
        assert local.plugin("ratelimit").remaining(upstream.url) < 9.5  # taken from this process's limit
        assert keys_on(shared) == []  # the limits stayed in the process
        assert redis.Redis.from_url(own.url).get(limit) == before


@pytest.mark.redis
def test_rate_limits_are_shared_through_sentinel(upstream: SimulatedServer, tmp_path: Path) -> None:
    from redis_servers import redis_sentinel

    with redis_server(tmp_path) as master, redis_sentinel(tmp_path, master) as sentinel:
        table = {"rpm": 2, "max_wait": 0}
        config = {"plugins": ["ratelimit"], "ratelimit": table,
                  "redis_connection": {"sentinels": [sentinel.address], "service_name": "fleetmaster"}}
        first, second = Pipeline(config), Pipeline(config)
        with first.instrument(httpx.Client(timeout=10)) as a, second.instrument(httpx.Client(timeout=10)) as b:
            assert a.post(upstream.url + CHAT, json=BODY).status_code == 200
            assert b.post(upstream.url + CHAT, json=BODY).status_code == 200
            from aurelis_plugins.ratelimit import RateLimitTimeout

            with pytest.raises(RateLimitTimeout):  # the third of a 2 rpm limit, whichever replica sends it
                a.post(upstream.url + CHAT, json=BODY)
        first.close()
        second.close()
        assert any(k.startswith("aurelis:ratelimit:") for k in keys_on(master))


def test_the_connection_tables_are_checked() -> None:
    from aurelis_core import ConfigError

    with pytest.raises(ConfigError, match=r"\[redis_connection\]: give one of url, sentinels, cluster_nodes"):
        Pipeline({"redis_connection": {"url": "redis://h:1/0", "cluster_nodes": ["h:2"]}})
    with pytest.raises(ConfigError, match=r"\[redis_connection\] cluster_nodes\[0\]"):
        Pipeline({"redis_connection": {"cluster_nodes": ["no-port"]}})
    with pytest.raises(ConfigError, match="give redis_url or redis, not both"):
        Pipeline({"plugins": ["ratelimit"], "ratelimit": {
            "redis_url": "redis://h:1/0", "redis": {"url": "redis://h:1/0"}}})
    with pytest.raises(ConfigError, match=r"\[ratelimit\] redis.service_name"):
        Pipeline({"plugins": ["ratelimit"], "ratelimit": {"redis": {"url": "redis://h:1/0", "service_name": "x"}}})


# --- Cluster: one master dies ----------------------------------------------------------------------------------


def node_of(servers: list[Server], key: str) -> Server:
    """The master that holds ``key`` (each node answers for its own slots only)."""
    for server in servers:
        client = redis.Redis.from_url(server.url)
        try:
            if client.exists(key):
                return server
        finally:
            client.close()
    raise AssertionError(f"{key} is on no node")


@pytest.mark.redis
@pytest.mark.cluster
def test_a_dead_cluster_master_costs_only_its_own_keys(upstream: SimulatedServer, tmp_path: Path) -> None:
    from redis_servers import redis_cluster

    with redis_cluster(tmp_path) as servers:
        nodes = [s.address for s in servers]
        config = {"plugins": ["normalize", "redis"], "tenant": {"secret": "fleet-secret"},
                  # Timeouts far above a loaded machine's stalls: a live master's slow answer must not read as
                  # a failure here (the dead master refuses connections at once, whatever the timeouts).
                  # No probe of the dead master during the test: the counts below are exact.
                  "redis": {"cluster_nodes": nodes, "prefix": "fleet:", "socket_timeout": 5.0,
                            "connect_timeout": 5.0, "pool_timeout": 5.0, "breaker_first_probe": 60.0,
                            "breaker_reset": 60.0}}
        bodies = [chat(n) for n in range(30)]
        store_answers(config, upstream, bodies)
        home = {}
        for server in servers:
            probe = redis.Redis.from_url(server.url)
            for key in probe.scan_iter(match="fleet:*"):
                if key != b"fleet:meta:hits":
                    home[key] = server
            probe.close()
        assert len(home) == 30 and len(set(home.values())) == 3  # spread over the three masters
        dead = servers[0]
        dead.kill()
        on_dead = sum(1 for server in home.values() if server is dead)
        sent_before = upstream.count("/chat/completions")

        def ask_all(pipeline: Pipeline) -> list[str]:
            with pipeline.instrument(httpx.Client(timeout=10)) as client:
                tiers = []
                for body in bodies * 2:  # twice: after its breaker opens, the dead master is not even asked
                    response = client.post(upstream.base_url + "/chat/completions", json=body,
                                           headers={"authorization": f"Bearer {API_KEY}"})
                    assert response.status_code == 200
                    tiers.append(response.headers.get("x-aurelis-cache-tier", "none"))
            return tiers

        async def ask_all_async(pipeline: Pipeline) -> list[str]:
            async with pipeline.instrument(httpx.AsyncClient(timeout=10)) as client:
                tiers = []
                for body in bodies * 2:
                    response = await client.post(upstream.base_url + "/chat/completions", json=body,
                                                 headers={"authorization": f"Bearer {API_KEY}"})
                    assert response.status_code == 200
                    tiers.append(response.headers.get("x-aurelis-cache-tier", "none"))
            await pipeline.aclose()
            return tiers

        import anyio

        for mode in ("sync", "async"):
            reader = Pipeline(config)
            tiers = ask_all(reader) if mode == "sync" else anyio.run(ask_all_async, reader)
            # Every entry on a live master was served from Redis, both times; the dead master's went upstream.
            assert tiers.count("redis") == 2 * (30 - on_dead), (mode, tiers, on_dead)
            assert upstream.count("/chat/completions") - sent_before == 2 * on_dead
            sent_before += 2 * on_dead
            errors = reader.stats.tier_errors
            # Failures: the 3 that open the dead master's breaker (a failed write counts too), and maybe one made
            # before a new asyncio client had loaded its slot map (counted against "unmapped slots").
            assert errors["redis.get"] <= 4 and errors["redis.skipped"] >= 2 * on_dead - 4, (mode, dict(errors))
            reader.close()

        # Write-behind batches mixing keys of the dead master and of live ones: the live ones' writes land.
        lost = [key for key, server in home.items() if server is not dead][:6]
        for key in lost:
            probe = redis.Redis.from_url(home[key].url)
            probe.delete(key)
            probe.close()
        index = {key: n for n, key in enumerate(sorted(home))}  # (bodies[n] is stored under some key: find it)
        writer = Pipeline(config)
        with writer.instrument(httpx.Client(timeout=10)) as client:
            for body in bodies:  # the dead master's and the six deleted ones miss; their answers are written
                client.post(upstream.base_url + "/chat/completions", json=body,
                            headers={"authorization": f"Bearer {API_KEY}"})
        writer.close()
        for key in lost:
            probe = redis.Redis.from_url(home[key].url)
            assert probe.exists(key), (key, index[key], dict(writer.stats.tier_errors))
            probe.close()


@pytest.mark.redis
@pytest.mark.cluster
@pytest.mark.anyio
async def test_rate_limits_are_shared_through_a_cluster_in_one_hash_slot(
    upstream: SimulatedServer, tmp_path: Path
) -> None:
    from redis_servers import redis_cluster

    from aurelis_plugins.ratelimit import RateLimitTimeout

    with redis_cluster(tmp_path) as servers:
        config = {"plugins": ["ratelimit"], "ratelimit": {"rpm": 2, "tpm": 100_000, "max_wait": 0},
                  "redis_connection": {"cluster_nodes": [servers[1].address]}}
        first, second = Pipeline(config), Pipeline(config)
        async with first.instrument(httpx.AsyncClient(timeout=10)) as a, \
                second.instrument(httpx.AsyncClient(timeout=10)) as b:
            assert (await a.post(upstream.url + CHAT, json=BODY)).status_code == 200
            assert (await b.post(upstream.url + CHAT, json=BODY)).status_code == 200
            with pytest.raises(RateLimitTimeout):
                await a.post(upstream.url + CHAT, json=BODY)
        assert first.stats.counters["ratelimit_redis_errors"] == 0
        keys = []
        for server in servers:
            probe = redis.Redis.from_url(server.url)
            keys += [(server.port, k.decode()) for k in probe.scan_iter()]
            probe.close()
        # The request and token limits of the upstream: one slot, so one master, under one hash tag.
        assert len(keys) == 2 and len({port for port, _ in keys}) == 1, keys
        assert all(k.startswith("{aurelis:ratelimit:}up:") for _, k in keys)


def test_a_cluster_down_at_start_costs_no_request(upstream: SimulatedServer) -> None:
    from redis_servers import free_port

    pipeline = cached(cluster_nodes=[f"127.0.0.1:{free_port()}"])  # nobody listens there
    with pipeline.instrument(httpx.Client(timeout=10)) as client:
        for n in range(3):
            response = client.post(upstream.base_url + "/chat/completions", json=chat(n),
                                   headers={"authorization": f"Bearer {API_KEY}"})
            assert response.status_code == 200 and response.headers["x-aurelis-cache"] == "miss"
    pipeline.close()


def test_a_cluster_down_costs_the_limiter_one_attempt_per_cooloff(upstream: SimulatedServer) -> None:
    from redis_servers import free_port

    pipeline = Pipeline({"plugins": ["ratelimit"], "ratelimit": {"rpm": 100, "redis_cooloff": 60},
                         "redis_connection": {"cluster_nodes": [f"127.0.0.1:{free_port()}"]}})
    with pipeline.instrument(httpx.Client(timeout=10)) as client:
        for _ in range(3):
            assert client.post(upstream.url + CHAT, json=BODY).status_code == 200
    counters = pipeline.stats.counters
    assert (counters["ratelimit_redis_errors"], counters["ratelimit_redis_skipped"]) == (1, 2)
    pipeline.close()


# --- Sentinel: the master fails over ---------------------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.cluster
def test_after_a_sentinel_failover_the_cache_is_used_again_soon(upstream: SimulatedServer, tmp_path: Path) -> None:
    import threading

    from redis_servers import redis_replica, redis_sentinel, wait_for_replica

    (tmp_path / "master").mkdir()
    with redis_server(tmp_path / "master") as master, redis_replica(tmp_path / "replica", master) as replica, \
            redis_sentinel(tmp_path, master) as sentinel:
        wait_for_replica(sentinel, "fleetmaster", replica)
        # A 30 s reset: waiting it out (what the tier did before it probed sooner) would fail the bound below.
        config = {"plugins": ["normalize", "redis"], "tenant": {"secret": "fleet-secret"},
                  "redis": {"sentinels": [sentinel.address], "service_name": "fleetmaster", "prefix": "fo:",
                            "breaker_reset": 30.0}}
        bodies = [chat(n) for n in range(20)]
        store_answers(config, upstream, bodies)
        primary = redis.Redis.from_url(master.url)
        assert primary.wait(1, 5000) == 1  # the replica has every entry
        primary.close()

        switched: list[float] = []

        def fail_over() -> None:
            time.sleep(0.5)
            client = redis.Redis(host="127.0.0.1", port=sentinel.port, decode_responses=True)
            master.kill()  # the master dies; the sentinel is told to fail over at once (not after down-after)
            started = time.monotonic()
            assert client.execute_command("SENTINEL", "FAILOVER", "fleetmaster")
            while client.sentinel_get_master_addr_by_name("fleetmaster")[1] != replica.port:
                assert time.monotonic() - started < 30, "the failover did not happen"
                time.sleep(0.01)
            switched.extend([started, time.monotonic()])
            client.close()

        thread = threading.Thread(target=fail_over)
        reader = Pipeline(config)
        answers: list[tuple[float, int, str]] = []
        with reader.instrument(httpx.Client(timeout=10)) as client:
            thread.start()
            n = 0
            deadline = time.monotonic() + 60
            while (not switched or time.monotonic() < switched[1] + 6) and time.monotonic() < deadline:
                response = client.post(upstream.base_url + "/chat/completions", json=bodies[n % len(bodies)],
                                       headers={"authorization": f"Bearer {API_KEY}"})
                answers.append((time.monotonic(), response.status_code,
                                response.headers.get("x-aurelis-cache-tier", "none")))
                n += 1
                time.sleep(0.005)
        thread.join()
        reader.close()
        assert switched, "the failover did not happen"
        started, done = switched
        assert all(status == 200 for _, status, _ in answers)  # not one request failed
        missed = [at for at, _, tier in answers if tier != "redis"]
        assert missed, "the failover cost the cache nothing: nothing was measured"
        back = next((at for at, _, tier in answers if tier == "redis" and at > missed[-1]), None)
        assert back is not None, "the cache was not used again"
        # The tier probes soon after a failure, then at half the outage's length: it is used again within a
        # couple of seconds of the new master being up, not after its 30 s reset.
        recovery = back - done
        print(f"failover took {done - started:.2f} s; cache used again {recovery:.2f} s after it "
              f"({back - started:.2f} s after it began); {len(missed)} of {len(answers)} requests missed")
        assert recovery < 3.0, (done - started, recovery)
        assert [tier for _, _, tier in answers[-20:]] == ["redis"] * 20
