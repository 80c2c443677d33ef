"""The ``redis`` tier against real Redis servers: single node, a 3-master Cluster, Sentinel; sync and async."""

from __future__ import annotations

import itertools
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import openai
import pytest
import redis

from aurelis_core import CacheEntry, ConfigError, Pipeline
from aurelis_core.testing import SimulatedServer
from aurelis_plugins._serialize import loads

pytestmark = pytest.mark.redis

API_KEY = "sk-test-secret-1234567890"


def chat(n: int | str = 0) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": f"question {n}"}]}


def config(**redis_options: Any) -> dict[str, Any]:
    return {"plugins": ["normalize", "redis"], "redis": redis_options}


def post(client: httpx.Client, upstream: SimulatedServer, body: dict[str, Any]) -> httpx.Response:
    response = client.post(
        upstream.base_url + "/chat/completions", json=body, headers={"authorization": f"Bearer {API_KEY}"}
    )
    assert response.status_code == 200
    return response


# --- servers started by the tests ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_redis(workdir: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir), *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_ping(port)
    return proc, port


def wait_ping(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if redis.Redis(port=port, socket_connect_timeout=0.2).ping():
                return
        except redis.RedisError:
            time.sleep(0.05)
    raise RuntimeError(f"redis on port {port} did not start")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A private server this test may kill."""
    proc, port = start_redis(tmp_path)
    try:
        yield proc, f"redis://127.0.0.1:{port}/0"
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """A real 3-master Redis Cluster on loopback ports."""
    procs = []
    nodes = []
    try:
        for i in range(3):
            workdir = tmp_path_factory.mktemp(f"cluster{i}")
            proc, port = start_redis(
                workdir, "--cluster-enabled", "yes", "--cluster-config-file", str(workdir / "nodes.conf"),
                "--cluster-node-timeout", "2000",
                # The bus port defaults to port + 10000, past 65535 for most ephemeral ports: pick one.
                "--cluster-port", str(free_port()),
            )
            procs.append(proc)
            nodes.append(f"127.0.0.1:{port}")
        subprocess.run(
            [shutil.which("redis-cli") or "redis-cli", "--cluster", "create", *nodes,
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=30,
        )
        deadline = time.monotonic() + 15
        for node in nodes:
            client = redis.Redis(port=int(node.rpartition(":")[2]))
            while client.execute_command("CLUSTER INFO").get("cluster_state") != "ok":
                assert time.monotonic() < deadline, "cluster did not converge"
                time.sleep(0.1)
        yield nodes
    finally:
        for proc in procs:
            stop(proc)


# --- single node -----------------------------------------------------------------------------------------------


def test_sync_miss_then_hit_shared_across_pipelines(upstream: SimulatedServer, redis_flush: str) -> None:
    with httpx.Client() as client:
        pipeline = Pipeline(config(url=redis_flush))
        pipeline.instrument(client)
        assert post(client, upstream, chat()).headers["x-aurelis-cache"] == "miss"
        pipeline.close()  # flushes the write-behind queue
    # A second pipeline (no shared memory) finds it in Redis.
    with httpx.Client() as client:
        pipeline = Pipeline(config(url=redis_flush))
        pipeline.instrument(client)
        response = post(client, upstream, chat())
        assert response.headers["x-aurelis-cache"] == "hit"
        assert response.headers["x-aurelis-cache-tier"] == "redis"
        pipeline.close()
    assert upstream.count("/chat/completions") == 1


@pytest.mark.anyio
async def test_async_openai_sdk_hit_and_nothing_secret_stored(upstream: SimulatedServer, redis_flush: str) -> None:
    for expected in ("miss", "hit"):
        pipeline = Pipeline(config(url=redis_flush))
        async with httpx2.AsyncClient() as http:
            pipeline.instrument(http)
            llm = openai.AsyncOpenAI(base_url=upstream.base_url, api_key=API_KEY, http_client=http)
            raw = await llm.chat.completions.with_raw_response.create(**chat("sdk"))
            assert raw.headers["x-aurelis-cache"] == expected
            await pipeline.aclose()
    assert upstream.count("/chat/completions") == 1
    client = redis.Redis.from_url(redis_flush)
    keys = [k for k in client.keys("aurelis:*") if k != b"aurelis:meta:hits"]
    assert len(keys) == 1
    stored = client.get(keys[0])
    assert stored is not None and API_KEY.encode() not in stored
    entry = loads(stored, keys[0].decode()[len("aurelis:"):], None)
    assert API_KEY.encode() not in b"".join(k + v for k, v in entry.headers) + entry.body
    assert client.zscore("aurelis:meta:hits", keys[0]) == 1  # the hit was counted (written behind)


def test_ttl_default_and_per_request_override(upstream: SimulatedServer, redis_flush: str) -> None:
    with httpx.Client() as client:
        pipeline = Pipeline(config(url=redis_flush, ttl=60))
        tier = pipeline.plugin("redis")
        offset = [0.0]
        tier.wall_clock = lambda: time.time() + offset[0]  # the tier's own clock: stepped, never slept on
        pipeline.instrument(client)
        post(client, upstream, chat("a"))
        client.post(
            upstream.base_url + "/chat/completions", json=chat("b"),
            headers={"authorization": f"Bearer {API_KEY}", "x-aurelis-ttl": "600"},
        )
        tier.flush()
        raw = redis.Redis.from_url(redis_flush)
        ttls = sorted(raw.pttl(k) for k in raw.keys("aurelis:*") if k != b"aurelis:meta:hits")
        assert 0 < ttls[0] <= 60_000 and 60_000 < ttls[1] <= 600_000  # Redis expires them itself...
        offset[0] = 61  # ...and the tier checks each value's age when it reads it
        assert post(client, upstream, chat("a")).headers["x-aurelis-cache"] == "miss"
        assert post(client, upstream, chat("b")).headers["x-aurelis-cache"] == "hit"
        pipeline.close()


def test_unreadable_value_is_a_miss(upstream: SimulatedServer, redis_flush: str) -> None:
    with httpx.Client() as client:
        pipeline = Pipeline(config(url=redis_flush))
        pipeline.instrument(client)
        post(client, upstream, chat())
        pipeline.plugin("redis").flush()
        raw = redis.Redis.from_url(redis_flush)
        (key,) = [k for k in raw.keys("aurelis:*") if k != b"aurelis:meta:hits"]
        raw.set(key, b"\x07not an entry")
        assert post(client, upstream, chat()).headers["x-aurelis-cache"] == "miss"
        pipeline.close()


def test_config_errors_name_the_choices(redis_url: str) -> None:
    with pytest.raises(ConfigError, match="one of url, sentinels, cluster_nodes"):
        Pipeline(config(url=redis_url, cluster_nodes=["127.0.0.1:1"]))
    with pytest.raises(ConfigError, match="valid: brotli, gzip, lz4, none"):
        Pipeline(config(url=redis_url, codec="zstd"))
    with pytest.raises(ConfigError, match="host:port"):
        Pipeline(config(sentinels=["nohost"]))


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_redis_killed_mid_run_every_request_succeeds(
    upstream: SimulatedServer, own_redis: tuple[subprocess.Popen[bytes], str], mode: str
) -> None:
    proc, url = own_redis
    # A long reset so no probe happens during the test: the counts below are exact.
    cfg = config(url=url, breaker_failures=3, breaker_reset=60, breaker_first_probe=60)
    pipeline = Pipeline(cfg)

    def run(bodies: list[dict[str, Any]]) -> list[str]:
        if mode == "sync":
            with httpx.Client() as client:
                pipeline.instrument(client)
                statuses = [post(client, upstream, b).headers["x-aurelis-cache"] for b in bodies]
                pipeline.plugin("redis").flush()
                return statuses

        async def main() -> list[str]:
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
                await pipeline.plugin("redis").aflush()
                return out

        import anyio

        return anyio.run(main)

    assert run([chat(1)]) == ["miss"]
    assert run([chat(1)]) == ["hit"]
    stop(proc)
    statuses = run([chat(i) for i in range(20)])
    assert statuses == ["miss"] * 20  # every request succeeded, from the upstream
    errors = pipeline.stats.tier_errors
    # Only the first failures (reads and the written-behind stores, which count too) reached Redis; after
    # that the breaker skipped the tier without trying.
    assert 1 <= errors["redis.get"] <= 3
    assert errors["redis.write"] <= 3
    assert errors["redis.skipped"] >= 17
    pipeline.close()


# --- cross-process ---------------------------------------------------------------------------------------------


def test_entry_written_by_another_process_is_a_hit(upstream: SimulatedServer, redis_flush: str) -> None:
    script = textwrap.dedent(f"""
        import httpx
        from aurelis_core import Pipeline
        pipeline = Pipeline({config(url=redis_flush)!r})
        with httpx.Client() as client:
            pipeline.instrument(client)
            r = client.post({upstream.base_url + "/chat/completions"!r}, json={chat("xp")!r},
                            headers={{"authorization": "Bearer {API_KEY}"}})
            assert r.headers["x-aurelis-cache"] == "miss", r.headers
        pipeline.close()
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    with httpx.Client() as client:
        pipeline = Pipeline(config(url=redis_flush))
        pipeline.instrument(client)
        assert post(client, upstream, chat("xp")).headers["x-aurelis-cache"] == "hit"
        pipeline.close()
    assert upstream.count("/chat/completions") == 1


# --- cluster and sentinel --------------------------------------------------------------------------------------


def test_cluster_sync_and_async(upstream: SimulatedServer, redis_cluster: list[str]) -> None:
    cfg = config(cluster_nodes=redis_cluster, prefix="aurelis-cluster:")
    bodies = [chat(f"c{i}") for i in range(8)]  # spread over the three masters' slots
    with httpx.Client() as client:
        pipeline = Pipeline(cfg)
        pipeline.instrument(client)
        assert {post(client, upstream, b).headers["x-aurelis-cache"] for b in bodies} == {"miss"}
        pipeline.close()

    async def main() -> list[str]:
        async with httpx.AsyncClient() as client:
            pipeline = Pipeline(cfg)
            pipeline.instrument(client)
            out = []
            for body in bodies:
                response = await client.post(
                    upstream.base_url + "/chat/completions", json=body,
                    headers={"authorization": f"Bearer {API_KEY}"},
                )
                out.append(response.headers.get("x-aurelis-cache-tier", "none"))
            await pipeline.aclose()
            return out

    import anyio

    assert anyio.run(main) == ["redis"] * 8
    assert upstream.count("/chat/completions") == 8
    pipeline = Pipeline(cfg)
    tier = pipeline.plugin("redis")
    assert tier.stats()["entries"] == 8
    assert {e.status_code for _, e in tier.top(10)} == {200}
    assert tier.clear() == 8
    pipeline.close()


def test_sentinel(upstream: SimulatedServer, own_redis: tuple[subprocess.Popen[bytes], str], tmp_path: Path) -> None:
    _, url = own_redis
    master_port = url.rsplit(":", 1)[1].split("/")[0]
    conf = tmp_path / "sentinel.conf"
    sentinel_port = free_port()
    conf.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\nsentinel monitor cachemaster 127.0.0.1 {master_port} 1\n"
    )
    proc = subprocess.Popen(
        ["redis-server", str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_ping(sentinel_port)
        cfg = config(sentinels=[f"127.0.0.1:{sentinel_port}"], service_name="cachemaster")
        for expected in ("miss", "hit"):
            with httpx.Client() as client:
                pipeline = Pipeline(cfg)
                pipeline.instrument(client)
                assert post(client, upstream, chat("s")).headers["x-aurelis-cache"] == expected
                pipeline.close()
        assert redis.Redis.from_url(url).dbsize() >= 1  # the entry really is on the monitored master
    finally:
        stop(proc)


def test_entry_round_trip_keeps_chunks_and_ttl() -> None:
    from aurelis_core._tenant import Tenant
    from aurelis_plugins._serialize import codec_named, dumps

    mac = Tenant().entry_mac
    entry = CacheEntry(200, [(b"content-type", b"text/event-stream")], b"data: x\n\n" * 50,
                       chunks=(b"data: x\n\n",) * 50, ttl=12.5)
    for codec in ("none", "lz4", "gzip"):
        back = loads(dumps(entry, codec_named(codec, "test"), "key", mac), "key", mac)
        assert (back.status_code, back.headers, back.body, back.chunks, back.ttl, back.created) == (
            entry.status_code, entry.headers, entry.body, entry.chunks, entry.ttl, entry.created
        )


def test_clear_and_stats_touch_only_the_tiers_own_entries(upstream: SimulatedServer, redis_flush: str) -> None:
    # The ratelimit plugin keeps its shared state under the tier's default prefix (aurelis:ratelimit:*), and
    # anything else may live there too: the tier counts and deletes only the values it wrote.
    cfg = {
        "plugins": ["normalize", "redis", "ratelimit"],
        "redis": {"url": redis_flush},
        "ratelimit": {"rpm": 1000, "redis_url": redis_flush},
    }
    raw = redis.Redis.from_url(redis_flush)
    raw.hset("aurelis:someone-else", "field", "value")
    with httpx.Client() as client:
        pipeline = Pipeline(cfg)
        pipeline.instrument(client)
        post(client, upstream, chat(1))
        post(client, upstream, chat(2))
        tier = pipeline.plugin("redis")
        tier.flush()
        others = sorted(k for k in raw.keys("aurelis:*") if k.startswith((b"aurelis:ratelimit:", b"aurelis:some")))
        assert len(others) >= 2  # the rate limiter's state, and the hash
        assert tier.clear() == 2
        assert sorted(raw.keys("aurelis:*")) == others  # left as they were
        stats = tier.stats()
        assert (stats["entries"], stats["other_keys"]) == (0, len(others))
        pipeline.close()
    assert raw.hget("aurelis:someone-else", "field") == b"value"


def test_the_tier_breaker_probes_soon_then_less_often_up_to_its_reset() -> None:
    from aurelis_plugins.redis_tier import Breaker

    now = [100.0]
    breaker = Breaker("redis", failures=1, reset=5.0, clock=lambda: now[0], first_probe=0.25)
    for _ in range(50):  # a burst of lookups failing together does not push the first probe back
        breaker.failure()
    probes = []
    while now[0] < 130:
        now[0] = round(now[0] + 0.01, 2)
        if breaker.allow():
            probes.append(round(now[0] - 100, 2))
            breaker.failure()
    # Each probe waits half as long as the tier has been failing (at least 0.25 s, at most the reset).
    assert probes[:10] == [0.25, 0.5, 0.75, 1.13, 1.7, 2.56, 3.84, 5.76, 8.65, 12.98], probes
    assert [round(b - a, 2) for a, b in itertools.pairwise(probes[9:])] == [5.0] * (len(probes) - 10)
    breaker.success()
    breaker.failure()  # a new outage: probed soon again
    now[0] += 0.24
    assert not breaker.allow()
    now[0] += 0.01
    assert breaker.allow()


def test_the_tier_breaker_opens_after_its_failures_probes_once_and_closes_on_an_answer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from aurelis_plugins.redis_tier import Breaker

    now = [100.0]
    breaker = Breaker("redis", failures=3, reset=5.0, clock=lambda: now[0])
    breaker.failure()
    breaker.failure()
    assert breaker.allow() and not breaker.is_open  # two failures: still closed
    breaker.success()  # an answer in between starts the count again
    breaker.failure()
    breaker.failure()
    assert breaker.allow()
    with caplog.at_level("WARNING", logger="aurelis.cache.redis"):
        breaker.failure()  # the third in a row: open for 5 s
        breaker.failure()  # failing again while open: said once
    assert [r.getMessage() for r in caplog.records] == [
        "cache tier 'redis' failed 3 times in a row; skipping it, probing it again after 5 s, then less often "
        "(up to every 5 s) until it answers"
    ]
    assert breaker.is_open and not breaker.allow()
    now[0] = 104.999
    assert not breaker.allow()
    now[0] = 105.0
    assert breaker.allow()  # the probe
    assert not breaker.allow() and breaker.is_open  # others wait for the probe's outcome
    now[0] = 106.0
    breaker.failure()  # the probe failed: open again for a whole reset from now
    now[0] = 110.999
    assert not breaker.allow()
    now[0] = 111.0
    assert breaker.allow()
    caplog.clear()
    with caplog.at_level("WARNING", logger="aurelis.cache.redis"):
        breaker.success()
    assert [r.getMessage() for r in caplog.records] == ["cache tier 'redis' is answering again after 11 s"]
    assert not breaker.is_open and breaker.allow() and breaker.consecutive == 0
    breaker.failure()
    breaker.failure()
    assert breaker.allow()  # closed again: it takes three new failures to open
