"""Breakers shared by a fleet of replicas through a real Redis (``[breaker] share = true``): an endpoint opened by
one replica is skipped by the others, the fleet sends one half-open probe at a time, and a Redis that dies leaves
each replica its own breakers. A replica is a pipeline of its own (sharing nothing with the others but Redis), or
a process of its own."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from redis_servers import redis_server

from aurelis_core import Pipeline
from aurelis_core.testing import SimulatedServer
from aurelis_plugins.breaker import Breaker, CircuitOpenError

BODY = {"model": "sim-chat", "messages": [{"role": "user", "content": "hello there"}]}
CHAT = "/v1/chat/completions"
SYNC = 0.05


def replica(redis_url: str, **breaker: Any) -> Pipeline:
    return Pipeline({
        "plugins": ["breaker"], "redis_connection": {"url": redis_url},
        # A loaded machine's stalls must not read as a failing Redis (that has a test of its own).
        "breaker": {"share": True, "consecutive_failures": 3, "min_calls": 100, "open_for": 0.5,
                    "sync_interval": SYNC, "redis_timeout": 1.0, **breaker},
    })


def send(client: httpx.Client, upstream: SimulatedServer) -> str:
    """One request: ``"ok"``, ``"failed"`` (the upstream's error) or ``"skipped"`` (the circuit refused it)."""
    try:
        response = client.post(upstream.url + CHAT, json=BODY)
    except CircuitOpenError:
        return "skipped"
    return "ok" if response.status_code == 200 else "failed"


def eventually(condition: Callable[[], bool], within: float = 5.0) -> float:
    """Seconds until ``condition()`` held (polled), failing the test if it did not within ``within``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > within:
            raise AssertionError(f"not within {within}s")
        time.sleep(0.005)
    return time.monotonic() - start


@pytest.mark.redis
def test_an_endpoint_one_replica_opened_is_skipped_by_the_others(redis_flush: str, upstream: SimulatedServer) -> None:
    replicas = [replica(redis_flush) for _ in range(3)]
    clients = [p.instrument(httpx.Client(timeout=5)) for p in replicas]
    breakers: list[Breaker] = [p.plugin("breaker") for p in replicas]
    for client in clients:
        assert send(client, upstream) == "ok"  # each replica knows the endpoint, closed
    upstream.behavior.status_override = 503
    assert [send(clients[0], upstream) for _ in range(3)] == ["failed"] * 3
    assert breakers[0].state(upstream.url) == "open"
    took = eventually(lambda: all(b.state(upstream.url) == "open" for b in breakers[1:]))
    sent = upstream.count()
    # The others never sent their own failures: they learnt it from the fleet, and skip it.
    assert [send(c, upstream) for c in clients[1:] for _ in range(5)] == ["skipped"] * 10
    assert upstream.count() == sent
    assert took < 2.0, took  # a sync interval (0.05 s) and a round trip, with room for a loaded machine
    assert "opened in the fleet" in breakers[1].transitions[-1].reason
    # A replica that starts now, and has never sent there, learns it before its first request.
    fresh = replica(redis_flush)
    fresh.start()
    assert fresh.plugin("breaker").state(upstream.url) == "open"
    with fresh.instrument(httpx.Client(timeout=5)) as client:
        assert send(client, upstream) == "skipped"
    assert upstream.count() == sent
    # Healthy again: one replica probes and closes it; the others learn that too.
    upstream.behavior.status_override = None
    time.sleep(0.5)
    while breakers[0].state(upstream.url) != "closed":
        for client in clients:
            send(client, upstream)
        time.sleep(0.01)
    eventually(lambda: all(b.state(upstream.url) == "closed" for b in breakers))
    assert all(send(c, upstream) == "ok" for c in clients)
    for pipeline in [*replicas, fresh]:
        pipeline.close()


def hammer(clients: list[httpx.Client], upstream: SimulatedServer, seconds: float) -> dict[str, int]:
    """Every replica sends, in turn, for ``seconds``; what happened to the requests."""
    outcomes = {"ok": 0, "failed": 0, "skipped": 0}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for client in clients:
            outcomes[send(client, upstream)] += 1
        time.sleep(0.002)
    return outcomes


def probes_while_dead(redis_url: str, upstream: SimulatedServer, share: bool) -> tuple[int, float, int]:
    """Four replicas send to an endpoint that fails everything, all with its circuit open: the requests that
    reached it (the probes), the seconds it lasted, and the half-open spells the replicas went through."""
    replicas = [replica(redis_url, share=share, open_for=0.2, backoff=1.0) for _ in range(4)]
    clients = [p.instrument(httpx.Client(timeout=5)) for p in replicas]
    upstream.behavior.status_override = 503
    for client in clients:
        while send(client, upstream) != "skipped":
            pass
    sent = upstream.count()
    spells = sum(p.stats.counters["breaker_half_open"] for p in replicas)
    start = time.monotonic()
    hammer(clients, upstream, 2.0)
    lasted = time.monotonic() - start
    spells = sum(p.stats.counters["breaker_half_open"] for p in replicas) - spells
    for pipeline in replicas:
        pipeline.close()
    return upstream.count() - sent, lasted, spells


@pytest.mark.redis
def test_the_fleet_sends_one_probe_per_open_period(redis_flush: str, upstream: SimulatedServer) -> None:
    probes, lasted, spells = probes_while_dead(redis_flush, upstream, share=True)
    # Each open period (0.2 s, no backoff) ends with one probe of the whole fleet, which fails and opens the next.
    assert 1 <= probes <= lasted / 0.2 + 1, (probes, lasted)
    assert spells == probes  # each probe was one replica's half-open spell: no replica probed on its own
    upstream.reset()
    alone, lasted_alone, _ = probes_while_dead(redis_flush, upstream, share=False)
    # The control: four replicas with their own breakers probe four times as often.
    assert alone > 2 * probes * lasted_alone / lasted, (alone, probes)


@pytest.mark.redis
def test_a_replica_whose_request_failed_asks_the_fleet_at_once(redis_flush: str, upstream: SimulatedServer) -> None:
    # Reads every 30 s: only the failure makes the second replica ask before its next request.
    opener, late = replica(redis_flush, sync_interval=30), replica(redis_flush, sync_interval=30)
    with opener.instrument(httpx.Client(timeout=5)) as a, late.instrument(httpx.Client(timeout=5)) as b:
        assert send(b, upstream) == "ok"
        upstream.behavior.status_override = 503
        assert [send(a, upstream) for _ in range(3)] == ["failed"] * 3  # opened, and said so at once
        shared = redis.Redis.from_url(redis_flush)
        eventually(lambda: bool(shared.hexists("aurelis:breaker:circuits", upstream.url)))
        shared.close()
        assert send(b, upstream) == "failed"  # the second replica's one failure, not its three
        eventually(lambda: late.plugin("breaker").state(upstream.url) == "open")
        assert send(b, upstream) == "skipped"
    assert upstream.count() == 1 + 3 + 1


@pytest.mark.redis
def test_with_redis_killed_the_breakers_are_each_replicas_own(upstream: SimulatedServer, tmp_path: Path) -> None:
    with redis_server(tmp_path) as server:
        replicas = [replica(server.url, open_for=0.3, redis_timeout=0.1, redis_cooloff=0.3) for _ in range(2)]
        clients = [p.instrument(httpx.Client(timeout=5)) for p in replicas]
        breakers: list[Breaker] = [p.plugin("breaker") for p in replicas]
        for client in clients:
            assert send(client, upstream) == "ok"
        upstream.behavior.status_override = 503
        for _ in range(3):
            send(clients[0], upstream)
        eventually(lambda: breakers[1].state(upstream.url) == "open")
        server.kill()
        # Redis is gone: requests go on, none waits for it; each replica's breaker probes on its own.
        upstream.behavior.status_override = None
        took = []
        outcomes = {"ok": 0, "failed": 0, "skipped": 0}
        start = time.monotonic()
        while time.monotonic() - start < 1.5:
            for client in clients:
                began = time.monotonic()
                outcomes[send(client, upstream)] += 1
                took.append(time.monotonic() - began)
            time.sleep(0.01)
        assert outcomes["failed"] == 0 and outcomes["ok"] > 10, outcomes
        assert all(b.state(upstream.url) == "closed" for b in breakers)
        assert max(took) < 1.0, max(took)  # no request waited for Redis (its exchanges are on another thread)
        assert all(p.stats.counters["breaker_redis_errors"] >= 1 for p in replicas)
        # A new incident, Redis still dead: the local breaker opens as it always did.
        upstream.behavior.status_override = 503
        assert [send(clients[1], upstream) for _ in range(4)] == ["failed"] * 3 + ["skipped"]
        for pipeline in replicas:
            pipeline.close()


# --- replicas that are processes ---------------------------------------------------------------------------------


def _process_replica(redis_url: str, upstream_url: str, start: Any, seconds: float, results: Any) -> None:
    pipeline = replica(redis_url, open_for=0.3, backoff=1.0)
    pipeline.start()
    outcomes = {"ok": 0, "failed": 0, "skipped": 0}
    with pipeline.instrument(httpx.Client(timeout=5)) as client:
        start.wait()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                response = client.post(upstream_url + CHAT, json=BODY)
                outcomes["ok" if response.status_code == 200 else "failed"] += 1
            except CircuitOpenError:
                outcomes["skipped"] += 1
            time.sleep(0.002)
    results.put((outcomes, pipeline.stats.counters["breaker_half_open"]))


@pytest.mark.redis
def test_replica_processes_share_one_breaker(redis_flush: str, upstream: SimulatedServer) -> None:
    """Three processes send to an endpoint one of them... none of them has seen fail: this process opened it."""
    opener = replica(redis_flush, open_for=0.3, backoff=1.0)
    upstream.behavior.status_override = 503
    with opener.instrument(httpx.Client(timeout=5)) as client:
        for _ in range(3):
            send(client, upstream)
    assert opener.plugin("breaker").state(upstream.url) == "open"
    sent = upstream.count()
    context = multiprocessing.get_context("spawn")
    start, results = context.Event(), context.Queue()
    seconds = 1.5
    processes = [context.Process(target=_process_replica, args=(redis_flush, upstream.url, start, seconds, results))
                 for _ in range(3)]
    for process in processes:
        process.start()
    began = time.monotonic()
    start.set()
    reports = [results.get(timeout=60) for _ in processes]
    lasted = time.monotonic() - began
    for process in processes:
        process.join(timeout=10)
    probes = upstream.count() - sent
    # None of the processes sent its own three failures: they skipped from their first request, but for the
    # fleet's probes, one per open period (0.3 s) at most.
    assert sum(outcomes["failed"] for outcomes, _ in reports) == probes
    assert probes <= lasted / 0.3 + 1, (probes, lasted, reports)
    assert sum(spells for _, spells in reports) == probes
    assert all(outcomes["skipped"] > 10 for outcomes, _ in reports), reports
    opener.close()


@pytest.mark.redis
@pytest.mark.cluster
def test_circuits_are_shared_through_a_cluster_in_one_hash_slot(upstream: SimulatedServer, tmp_path: Path) -> None:
    from redis_servers import redis_cluster

    with redis_cluster(tmp_path) as servers:
        config = {"plugins": ["breaker"], "redis_connection": {"cluster_nodes": [servers[0].address]},
                  "breaker": {"share": True, "consecutive_failures": 3, "open_for": 5, "sync_interval": SYNC}}
        first, second = Pipeline(config), Pipeline(config)
        try:
            with first.instrument(httpx.Client(timeout=5)) as a, second.instrument(httpx.Client(timeout=5)) as b:
                assert send(b, upstream) == "ok"
                upstream.behavior.status_override = 503
                for _ in range(3):
                    send(a, upstream)
                eventually(lambda: second.plugin("breaker").state(upstream.url) == "open")
                assert send(b, upstream) == "skipped"
        finally:
            # Before the cluster stops: a replica left running would go on syncing with dead nodes.
            first.close()
            second.close()
        keys = []
        for server in servers:
            probe = redis.Redis.from_url(server.url)
            keys += [(server.port, k.decode()) for k in probe.scan_iter()]
            probe.close()
        assert {k for _, k in keys} == {"{aurelis:breaker:}circuits"} and first.stats.counters[
            "breaker_redis_errors"] == 0, keys


@pytest.mark.redis
@pytest.mark.anyio
async def test_async_replicas_share_their_circuits_too(redis_flush: str, upstream: SimulatedServer) -> None:
    import anyio

    opener, other = replica(redis_flush), replica(redis_flush)
    await other.astart()  # reads the fleet's circuits (on the fleet's thread) before its first request
    async with opener.instrument(httpx.AsyncClient(timeout=5)) as a, \
            other.instrument(httpx.AsyncClient(timeout=5)) as b:
        assert (await b.post(upstream.url + CHAT, json=BODY)).status_code == 200
        upstream.behavior.status_override = 503
        for _ in range(3):
            assert (await a.post(upstream.url + CHAT, json=BODY)).status_code == 503
        deadline = time.monotonic() + 5
        while other.plugin("breaker").state(upstream.url) != "open":
            assert time.monotonic() < deadline
            await anyio.sleep(0.005)
        with pytest.raises(CircuitOpenError):
            await b.post(upstream.url + CHAT, json=BODY)
    assert upstream.count() == 1 + 3


@pytest.mark.redis
@pytest.mark.cluster
def test_circuits_are_shared_through_sentinel(upstream: SimulatedServer, tmp_path: Path) -> None:
    """The same through a Sentinel group, as ``[redis_connection]`` gives it: the others learn the open."""
    from redis_servers import redis_sentinel

    with redis_server(tmp_path) as master, redis_sentinel(tmp_path, master) as sentinel:
        connection = {"sentinels": [sentinel.address], "service_name": "fleetmaster"}
        replicas = [Pipeline({
            "plugins": ["breaker"], "redis_connection": connection,
            "breaker": {"share": True, "consecutive_failures": 3, "min_calls": 100, "open_for": 30,
                        "sync_interval": SYNC, "redis_timeout": 1.0},
        }) for _ in range(2)]
        clients = [p.instrument(httpx.Client(timeout=5)) for p in replicas]
        breakers: list[Breaker] = [p.plugin("breaker") for p in replicas]
        assert [send(c, upstream) for c in clients] == ["ok", "ok"]
        upstream.behavior.status_override = 503
        assert [send(clients[0], upstream) for _ in range(3)] == ["failed"] * 3
        eventually(lambda: breakers[1].state(upstream.url) == "open")
        sent = upstream.count()
        assert [send(clients[1], upstream) for _ in range(3)] == ["skipped"] * 3
        assert upstream.count() == sent
        assert sum(p.stats.counters["breaker_redis_errors"] for p in replicas) == 0
        for pipeline in replicas:
            pipeline.close()
