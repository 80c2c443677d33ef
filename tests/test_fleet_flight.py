"""Fleet-wide single-flight (``[redis] fleet_flight``): replicas that share only a Redis make one upstream call for
a prompt new to all of them. Replicas here are separate pipelines (each its own local flights) or separate
processes, against the real Redis of the fixtures and the loopback simulated upstream, which counts the calls."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from redis_servers import free_port, redis_cluster

from aurelis_core import Pipeline
from aurelis_core.testing import SimulatedServer

pytestmark = pytest.mark.redis

CHAT = "/v1/chat/completions"
PREFIX = "ff:"


def body(text: str, stream: bool = False) -> dict[str, Any]:
    return {"model": "sim-chat", "messages": [{"role": "user", "content": text}], "max_tokens": 20,
            "stream": stream}


#: A shared machine's loaded loop may take longer than the tier's default 50 ms to connect: a look that fails is a
#: replica going upstream on its own, which these tests would count.
PATIENT = {"socket_timeout": 1.0, "connect_timeout": 1.0}


def config(redis_url: str, **fleet: Any) -> dict[str, Any]:
    return {"plugins": ["normalize", "redis"], "redis": {
        "url": redis_url, "prefix": PREFIX, **PATIENT, "fleet_flight": {"enabled": True, **fleet}}}


def replicas(count: int, redis_url: str, **fleet: Any) -> list[Pipeline]:
    return [Pipeline(config(redis_url, **fleet)) for _ in range(count)]


def counter(pipelines: list[Pipeline], name: str) -> int:
    return sum(p.stats.counters[f"redis.fleet_flight.{name}"] for p in pipelines)


async def ask_all(pipelines: list[Pipeline], url: str, payload: dict[str, Any]) -> list[httpx.Response]:
    clients = [p.instrument(httpx.AsyncClient(timeout=20)) for p in pipelines]
    try:
        responses = await asyncio.gather(*(c.post(url + CHAT, json=payload) for c in clients))
        for response in responses:
            await response.aread()
        return list(responses)
    finally:
        for client in clients:
            await client.aclose()


def lease_keys(redis_url: str) -> list[bytes]:
    client = redis.Redis.from_url(redis_url)
    try:
        return list(client.scan_iter(match="{" + PREFIX + "*}:lease"))
    finally:
        client.close()


# --- several pipelines sharing only Redis ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_four_replicas_arriving_at_once_make_one_upstream_call(
    upstream_factory: Any, redis_flush: str
) -> None:
    upstream: SimulatedServer = upstream_factory(latency=0.3)
    fleet = replicas(4, redis_flush)
    responses = await ask_all(fleet, upstream.url, body("a new popular prompt"))
    assert [r.status_code for r in responses] == [200] * 4
    assert len({r.content for r in responses}) == 1
    assert upstream.count(CHAT) == 1
    assert counter(fleet, "led") == 1
    assert counter(fleet, "followed") == 3
    assert lease_keys(redis_flush) == []  # the leader's store dropped its lease


@pytest.mark.anyio
async def test_without_the_option_each_replica_calls_the_upstream(upstream_factory: Any, redis_flush: str) -> None:
    # The baseline the option is for: the same arrival, each replica coalescing only its own requests.
    upstream: SimulatedServer = upstream_factory(latency=0.3)
    fleet = [Pipeline({"plugins": ["normalize", "redis"], "redis": {"url": redis_flush, "prefix": PREFIX, **PATIENT}})
             for _ in range(4)]
    await ask_all(fleet, upstream.url, body("a new popular prompt"))
    assert upstream.count(CHAT) == 4


def test_sync_replicas_make_one_upstream_call(upstream_factory: Any, redis_flush: str) -> None:
    upstream: SimulatedServer = upstream_factory(latency=0.3)
    fleet = replicas(4, redis_flush)
    clients = [p.instrument(httpx.Client(timeout=20)) for p in fleet]
    statuses: list[int] = []
    start = threading.Barrier(len(clients))

    def ask(client: httpx.Client) -> None:
        start.wait()
        statuses.append(client.post(upstream.url + CHAT, json=body("a sync prompt")).status_code)

    threads = [threading.Thread(target=ask, args=(c,)) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for client in clients:
        client.close()
    assert statuses == [200] * 4
    assert upstream.count(CHAT) == 1
    assert counter(fleet, "followed") == 3


#: With ``poll`` this long, a follower's looks are at 2 ms, 6 ms, ... 2.05 s, then 4.09 s: the answer, stored at
#: about the upstream's latency (2.2 s), falls in the long pause, which the leader's message ends. Each follower
#: counts ``told`` once when a message ended its pause; a follower that found the answer by looking (or was told
#: before the answer could be read, then looked again) counts otherwise.
TOLD_LATENCY = 2.2


@pytest.mark.anyio
async def test_async_followers_are_told_when_the_answer_is_stored(upstream_factory: Any, redis_flush: str) -> None:
    upstream: SimulatedServer = upstream_factory(latency=TOLD_LATENCY)
    fleet = replicas(3, redis_flush, poll=10.0)
    responses = await ask_all(fleet, upstream.url, body("tell me when"))
    assert [r.status_code for r in responses] == [200] * 3
    assert upstream.count(CHAT) == 1
    assert counter(fleet, "followed") == 2 and counter(fleet, "told") == 2  # one message, then the answer


def test_sync_followers_are_told_when_the_answer_is_stored(upstream_factory: Any, redis_flush: str) -> None:
    upstream: SimulatedServer = upstream_factory(latency=TOLD_LATENCY)
    fleet = replicas(3, redis_flush, poll=10.0)
    clients = [p.instrument(httpx.Client(timeout=20)) for p in fleet]
    answered: list[int] = []
    start = threading.Barrier(len(clients))

    def ask(client: httpx.Client) -> None:
        start.wait()
        answered.append(client.post(upstream.url + CHAT, json=body("tell me too")).status_code)

    threads = [threading.Thread(target=ask, args=(c,)) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for client in clients:
        client.close()
    assert answered == [200] * 3
    assert upstream.count(CHAT) == 1
    assert counter(fleet, "followed") == 2 and counter(fleet, "told") == 2  # one message, then the answer


@pytest.mark.anyio
async def test_local_requests_of_the_leading_replica_join_its_local_flight(
    upstream_factory: Any, redis_flush: str
) -> None:
    upstream: SimulatedServer = upstream_factory(latency=0.3)
    fleet = replicas(2, redis_flush)
    # Three requests on each replica: one leads the fleet, its two siblings coalesce locally, the other
    # replica's three follow through Redis.
    responses = await ask_all([p for p in fleet for _ in range(3)], upstream.url, body("shared by six"))
    assert [r.status_code for r in responses] == [200] * 6
    assert upstream.count(CHAT) == 1
    assert counter(fleet, "led") == 1


@pytest.mark.anyio
async def test_followers_go_upstream_at_once_when_the_leader_gets_an_error(
    upstream_factory: Any, redis_flush: str
) -> None:
    upstream: SimulatedServer = upstream_factory(latency=0.3, fail_next=1)
    fleet = replicas(4, redis_flush, wait=20.0)
    started = time.monotonic()
    responses = await ask_all(fleet, upstream.url, body("the leader fails"))
    took = time.monotonic() - started
    # The leader's 500 is its own: never shared, never stored; each follower made its own call.
    assert sorted(r.status_code for r in responses) == [200, 200, 200, 500]
    assert upstream.count(CHAT) == 4
    assert counter(fleet, "gave_up") == 1
    assert took < 5  # not the 20 s wait: followers saw the leader give up


@pytest.mark.anyio
async def test_a_follower_goes_upstream_when_the_wait_runs_out(upstream_factory: Any, redis_flush: str) -> None:
    upstream: SimulatedServer = upstream_factory(latency=1.0)
    fleet = replicas(2, redis_flush, wait=0.2)
    responses = await ask_all(fleet, upstream.url, body("a slow answer"))
    assert [r.status_code for r in responses] == [200, 200]
    assert upstream.count(CHAT) == 2
    assert counter(fleet, "waited_out") == 1


@pytest.mark.anyio
async def test_followers_replay_the_stored_stream(upstream_factory: Any, redis_flush: str) -> None:
    upstream: SimulatedServer = upstream_factory(latency=0.2, chunk_delay=0.02)
    fleet = replicas(4, redis_flush)
    responses = await ask_all(fleet, upstream.url, body("stream it to everyone", stream=True))
    assert [r.status_code for r in responses] == [200] * 4
    assert all(r.content.rstrip().endswith(b"data: [DONE]") for r in responses)
    assert len({r.content for r in responses}) == 1
    assert upstream.count(CHAT) == 1
    assert counter(fleet, "followed") == 3


@pytest.mark.anyio
async def test_requests_succeed_when_redis_is_down(upstream_factory: Any) -> None:
    upstream: SimulatedServer = upstream_factory(latency=0.05)
    fleet = replicas(4, f"redis://127.0.0.1:{free_port()}/0")
    for _ in range(2):
        responses = await ask_all(fleet, upstream.url, body("no redis"))
        assert [r.status_code for r in responses] == [200] * 4
    assert upstream.count(CHAT) == 8  # as without the option: each replica on its own


def test_a_cluster_keeps_each_lease_in_its_entrys_slot(upstream_factory: Any, tmp_path: Path) -> None:
    upstream: SimulatedServer = upstream_factory(latency=0.3)
    with redis_cluster(tmp_path) as masters:
        nodes = [m.address for m in masters]
        fleet = [Pipeline({"plugins": ["normalize", "redis"], "redis": {
            "cluster_nodes": nodes, "prefix": PREFIX, **PATIENT, "fleet_flight": {"enabled": True}}})
            for _ in range(3)]

        async def main() -> list[httpx.Response]:
            responses: list[httpx.Response] = []
            for text in ("one", "two", "three", "four"):  # keys in different slots
                responses += await ask_all(fleet, upstream.url, body(f"cluster prompt {text}"))
            return responses

        responses = asyncio.run(main())
        assert [r.status_code for r in responses] == [200] * 12
        assert upstream.count(CHAT) == 4
        assert counter(fleet, "led") == 4


@pytest.mark.cluster
def test_replicas_on_sentinel_make_one_upstream_call_and_are_told_by_pub_sub(
    upstream_factory: Any, tmp_path: Path
) -> None:
    """Through a Sentinel group (a master and a sentinel watching it), as ``[redis_connection]`` gives it to every
    plugin: one leader, the others follow and are woken by the lease's channel, not by waiting it out."""
    from redis_servers import redis_sentinel, redis_server

    upstream: SimulatedServer = upstream_factory(latency=TOLD_LATENCY)
    with redis_server(tmp_path) as master, redis_sentinel(tmp_path, master) as sentinel:
        fleet = [Pipeline({
            "plugins": ["normalize", "redis"],
            "redis_connection": {"sentinels": [sentinel.address], "service_name": "fleetmaster"},
            "redis": {"prefix": PREFIX, **PATIENT, "fleet_flight": {"enabled": True, "poll": 10.0}},
        }) for _ in range(4)]
        responses = asyncio.run(ask_all(fleet, upstream.url, body("a prompt new to a sentinel fleet")))
        for pipeline in fleet:
            pipeline.close()
    assert [r.status_code for r in responses] == [200] * 4
    assert len({r.content for r in responses}) == 1
    assert upstream.count(CHAT) == 1
    assert counter(fleet, "led") == 1 and counter(fleet, "followed") == 3
    assert counter(fleet, "told") == 3  # woken by the leader's message (see TOLD_LATENCY), not at their next look


# --- separate processes ------------------------------------------------------------------------------------------

#: One replica: a process with its own pipeline and a sync client. It says "ready" once built and started (its
#: connections open), reads the moment (epoch seconds) to send its one request at, prints its status, what
#: served it, and its counters, and lives on (as a replica does: its writes are written behind) until its input
#: ends.
REPLICA = textwrap.dedent("""
    import json, sys, time
    import httpx
    from aurelis_core import Pipeline
    config, url, payload = json.loads(sys.argv[1])
    pipeline = Pipeline(config)
    with pipeline.instrument(httpx.Client(timeout=30)) as client:
        pipeline.start()
        print("ready", flush=True)
        time.sleep(max(0.0, float(sys.stdin.readline()) - time.time()))
        response = client.post(url, json=payload)
        stats = pipeline.stats
        print(json.dumps([response.status_code, response.headers.get("x-aurelis-cache-tier"),
                          dict(stats.counters), dict(stats.tier_errors)]), flush=True)
        sys.stdin.read()
""")


def spawn(config: dict[str, Any], url: str, payload: dict[str, Any]) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", REPLICA, json.dumps([config, url + CHAT, payload])],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    return process


def go(processes: list[subprocess.Popen[str]], delay: float = 0.3) -> None:
    """Tell every process the same moment, ``delay`` seconds from now."""
    moment = f"{time.time() + delay}\n"
    for process in processes:
        assert process.stdin is not None
        process.stdin.write(moment)
        process.stdin.flush()


def outcome(process: subprocess.Popen[str]) -> list[Any]:
    """What the process printed about its request (it lives on until :func:`end`)."""
    assert process.stdout is not None
    result: list[Any] = json.loads(process.stdout.readline())
    return result


def end(processes: list[subprocess.Popen[str]]) -> None:
    for process in processes:
        process.communicate(timeout=60)
        assert process.returncode == 0


def test_four_processes_arriving_at_once_make_one_upstream_call(upstream_factory: Any, redis_flush: str) -> None:
    upstream: SimulatedServer = upstream_factory(latency=0.5)
    # A long lease: on a loaded machine a process may be starved of CPU for seconds, and an expired lease is
    # taken over (another upstream call, as designed; tested below).
    processes = [spawn(config(redis_flush, lease=30.0), upstream.url, body("four processes")) for _ in range(4)]
    go(processes)
    results = [outcome(p) for p in processes]
    end(processes)
    assert [result[0] for result in results] == [200] * 4
    assert upstream.count(CHAT) == 1, results
    assert [result[1] for result in results].count("redis") == 3  # the followers' answers came from Redis


def test_a_follower_takes_over_when_the_leading_process_is_killed(upstream_factory: Any, redis_flush: str) -> None:
    upstream: SimulatedServer = upstream_factory(latency=3.0)
    # Renewed every third of it: long enough that a leader starved of CPU on a loaded machine keeps it.
    lease = 1.5
    payload = body("the leader dies")
    leader = spawn(config(redis_flush, lease=lease), upstream.url, payload)
    go([leader], 0.0)
    try:
        deadline = time.monotonic() + 15
        while upstream.count(CHAT) == 0:  # the leader holds the lease and its call is on the way
            assert time.monotonic() < deadline and leader.poll() is None
            time.sleep(0.01)
        assert len(lease_keys(redis_flush)) == 1
        followers = replicas(3, redis_flush, lease=lease)

        async def follow_then_kill() -> list[httpx.Response]:
            asking = asyncio.ensure_future(ask_all(followers, upstream.url, payload))
            await asyncio.sleep(0.3)
            assert not asking.done()  # following: waiting for the leader
            leader.send_signal(signal.SIGKILL)
            return await asking

        responses = asyncio.run(follow_then_kill())
    finally:
        leader.kill()
        leader.wait()
    assert [r.status_code for r in responses] == [200] * 3
    # The dead leader's call and the one of the follower that took the lease over: not one per follower.
    assert upstream.count(CHAT) == 2
    assert counter(followers, "led") == 1
    assert counter(followers, "took_over") == 1


@pytest.mark.redis
def test_each_live_loop_keeps_its_own_listener(redis_flush: str) -> None:
    # A follower's pub/sub listener belongs to its loop's client: threads each running a loop, in turn, each keep
    # theirs (a switch of loop made a new one, with a new pub/sub connection, every time).
    from support import live_loops

    pipeline = Pipeline(config(redis_flush))
    tier = pipeline.plugin("redis")

    async def listener() -> int:
        return id(tier._alistener())

    with live_loops(2) as loops:
        seen = [asyncio.run_coroutine_threadsafe(listener(), loops[turn % 2]).result(10) for turn in range(6)]
        assert len(set(seen)) == 2 and seen[0::2] == [seen[0]] * 3 and seen[1::2] == [seen[1]] * 3
        pipeline.close()
