"""A fleet of replicas on one Redis: N worker processes, each with its own pipeline and instrumented client.

Run: ``.venv/bin/python -m pytest benchmarks/bench_fleet.py -s -p no:cacheprovider`` (``-s`` shows the tables;
``AURELIS_FLEET_WORKERS=4,16`` sets the fleet sizes, 4 and 16 by default).

The sections share a private ``redis-server`` (each its own key prefix). Each but the last starts a loopback
simulated upstream (``aurelis_core.testing``) in this process, spawns N worker processes (:func:`run_fleet`),
lets them all go at once when all are ready (a barrier), keeps them alive until the last one is done (as
replicas live on), and adds up what they counted and what the upstream received:

- ``test_cross_process_hit_rate``: every replica asks the same ``PROMPTS`` questions, each in its own order,
  through the ``redis`` tier alone. Reported: the share of answers served from Redis, against the ideal
  (N-1)/N (one upstream call per question for the whole fleet), and upstream calls per distinct question.
- ``test_shared_limits``: every replica sends as fast as the shared ``ratelimit`` lets it (``max_wait = 0``: a
  refusal is counted, not waited for) for ``LIMIT_SECONDS``; the upstream counts what arrived. Reported: requests
  (RPM) or tokens (TPM) at the upstream against what the limit allows over the run (a full bucket, then the
  rate); target: within 5%.
- ``test_breaker``: every replica sends to an endpoint that fails every request (503), with breakers shared
  through Redis and without. Reported: requests that reached it after the fleet's first open, how many of them
  were half-open probes (the rest: replicas' failures in flight before they learnt of the open), and how many
  open periods passed; target (shared): at most one probe per open period fleet-wide.

- ``test_fleet_flight``: fleet-wide single-flight. Every replica (``normalize`` + ``redis``, the tier's defaults
  but its ``fleet_flight``) sends the same new prompt at the same moment (:meth:`Replica.sleep_until`),
  ``FLIGHT_PROMPTS`` distinct prompts ``FLIGHT_GAP`` apart, to an upstream answering in ``FLIGHT_LATENCY``;
  once with ``fleet_flight`` off, once on. Reported: upstream calls per distinct prompt (off, each replica
  coalesces only its own requests: N; target on: 1), and each request's own send-to-answer time by role against
  the same prompts sent by one process alone with the option off (its request leads its own flight): the
  leaders go upstream, the followers read the leader's stored answer from Redis, woken by its release (pub/sub)
  or their next look; the added latency is a role's median less the single process's. (Off with N processes
  is shown too: N calls at once load the upstream and the machine.)
- ``test_fleet_flight_leader_miss_path``: the leader's miss path, in this process: misses (each a distinct
  prompt) through a pipeline with ``fleet_flight`` on and one with it off, against an instant in-process
  transport and the same Redis, batches interleaved: the look script (``GET``, ``SET NX``) in place of the
  ``GET``, the release queued behind the store.

``-k flight`` runs the single-flight sections alone. A further section needs only a job (a function of a
:class:`Replica` returning what it counted) and :func:`run_fleet`, with the ``fleet_redis`` and ``upstream``
fixtures.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aurelis_core import Pipeline
from aurelis_core.testing import SimulatedServer, simulated_upstream

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))

from redis_servers import redis_server

FLEET_SIZES = [int(n) for n in os.environ.get("AURELIS_FLEET_WORKERS", "4,16").split(",")]
CHAT = "/v1/chat/completions"
PROMPTS = 200
LIMIT_SECONDS = 10.0
BREAKER_SECONDS = 4.0
OPEN_FOR = 0.5
#: How long the fleet waits for its workers (to be ready, to end their jobs).
RESULTS_TIMEOUT = 300.0
FLIGHT_PROMPTS = 8
FLIGHT_LATENCY = 0.2
#: Seconds from the fleet's release to its first prompt (every replica awake), then between two prompts' moments
#: (the answer, its store and the followers' last look fit in it).
FLIGHT_LEAD, FLIGHT_GAP = 0.5, 1.0


# --- the scaffolding -------------------------------------------------------------------------------------------


class Replica:
    """What a worker's job gets: its index in the fleet, the fleet's size, its pipeline and instrumented client,
    the upstream's URL, the section's arguments and ``started``, the wall-clock time (``time.time()``) at which
    the fleet was let go, the same in every replica."""

    def __init__(self, index: int, size: int, pipeline: Pipeline, client: httpx.Client, upstream_url: str,
                 args: dict[str, Any], started: float) -> None:
        self.index, self.size, self.pipeline, self.client = index, size, pipeline, client
        self.upstream_url, self.args, self.started = upstream_url, args, started

    def chat(self, content: str, **extra: Any) -> httpx.Response:
        body = {"model": "sim-chat", "messages": [{"role": "user", "content": content}], **extra}
        return self.client.post(self.upstream_url + CHAT, json=body)

    def sleep_until(self, offset: float) -> None:
        """Sleep until ``offset`` seconds after the fleet was let go: replicas that do so arrive together (the
        barrier's release alone reaches 16 processes on 2 cores over tens of milliseconds)."""
        time.sleep(max(0.0, self.started + offset - time.time()))


#: A worker's job: runs in the worker process once the fleet starts, returns what it counted (picklable).
Job = Callable[[Replica], dict[str, Any]]


def _worker(job: Job, config: dict[str, Any], index: int, size: int, upstream_url: str, args: dict[str, Any],
            barrier: Any, started: Any, results: Any, finished: Any) -> None:
    pipeline = Pipeline(config)
    pipeline.start()  # connections opened, shared state read: a replica ready before the fleet goes
    with pipeline.instrument(httpx.Client(timeout=30)) as client:
        barrier.wait()  # ready
        barrier.wait()  # let go, ``started`` set
        counted = job(Replica(index, size, pipeline, client, upstream_url, args, started.value))
        counted["counters"] = dict(pipeline.stats.counters)
        results.put((index, counted))
        # Live on until the whole fleet is done, as replicas do: what this one writes behind is written, and a
        # lease it holds is released, while the others still wait for it.
        finished.wait(RESULTS_TIMEOUT)


def run_fleet(size: int, job: Job, config: dict[str, Any], upstream_url: str,
              args: dict[str, Any] | None = None,
              timeout: float = RESULTS_TIMEOUT) -> tuple[list[dict[str, Any]], float]:
    """Spawn ``size`` worker processes, each building ``Pipeline(config)`` and an instrumented ``httpx.Client``;
    once all are ready, start ``job`` in all of them at once; return what each counted (by index) and the seconds
    from the start to the last one's end. The workers exit together once every one has ended its job."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(size + 1), context.Queue()
    started, finished = context.Value("d"), context.Event()
    processes = [
        context.Process(target=_worker, args=(job, config, index, size, upstream_url, args or {}, barrier, started,
                                              results, finished))
        for index in range(size)
    ]
    for process in processes:
        process.start()
    try:
        barrier.wait(timeout)
        started.value = time.time()
        barrier.wait(timeout)
        went = time.monotonic()
        counted = dict(results.get(timeout=timeout) for _ in processes)
        lasted = time.monotonic() - went
    finally:
        finished.set()
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
    return [counted[index] for index in range(size)], lasted


def total(counted: list[dict[str, Any]], name: str) -> int:
    return sum(int(c.get(name, 0)) for c in counted)


@pytest.fixture(scope="module")
def fleet_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private ``redis-server`` for the module (each section uses its own key prefix)."""
    with redis_server(tmp_path_factory.mktemp("fleet-redis")) as server:
        yield server.url


@pytest.fixture
def upstream() -> Iterator[SimulatedServer]:
    with simulated_upstream() as up:
        yield up


def report(title: str, rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print(f"\n{title}")
    for row in rows:
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


# --- cross-process hit rate ------------------------------------------------------------------------------------


def ask_every_prompt(replica: Replica) -> dict[str, Any]:
    prompts = list(range(PROMPTS))
    random.Random(replica.index).shuffle(prompts)
    hits = 0
    for n in prompts:
        response = replica.chat(f"question {n}")
        hits += response.headers.get("x-aurelis-cache-tier") == "redis"
    return {"asked": len(prompts), "hits": hits}


@pytest.mark.parametrize("size", FLEET_SIZES)
def test_cross_process_hit_rate(size: int, fleet_redis: str, upstream: SimulatedServer) -> None:
    config = {"plugins": ["normalize", "redis"], "tenant": {"secret": "fleet-secret"},
              "redis": {"url": fleet_redis, "prefix": f"hits{size}:"}}
    counted, lasted = run_fleet(size, ask_every_prompt, config, upstream.url)
    asked, hits, calls = total(counted, "asked"), total(counted, "hits"), upstream.count(CHAT)
    ideal = (size - 1) / size
    report(f"cross-process hit rate, {size} workers x {PROMPTS} prompts ({lasted:.1f} s)", [
        ("asked", "from Redis", "hit rate", "ideal", "upstream calls", "calls per prompt"),
        (str(asked), str(hits), f"{hits / asked:.1%}", f"{ideal:.1%}", str(calls), f"{calls / PROMPTS:.2f}"),
    ])
    assert asked == size * PROMPTS and hits + calls == asked


# --- shared rate limits ----------------------------------------------------------------------------------------


def send_until_refused(replica: Replica) -> dict[str, Any]:
    from aurelis_plugins.ratelimit import RateLimitTimeout

    sent = refused = tokens = 0
    end = time.monotonic() + replica.args["seconds"]
    while time.monotonic() < end:
        try:
            response = replica.chat(f"w{replica.index} {sent}", max_tokens=replica.args["max_tokens"])
        except RateLimitTimeout:
            refused += 1
            time.sleep(0.005)
            continue
        sent += 1
        tokens += json.loads(response.content)["usage"]["total_tokens"]
    return {"sent": sent, "refused": refused, "tokens": tokens}


@pytest.mark.parametrize("kind", ["rpm", "tpm"])
@pytest.mark.parametrize("size", FLEET_SIZES)
def test_shared_limits(size: int, kind: str, fleet_redis: str, upstream: SimulatedServer) -> None:
    period = 5.0  # the limits' "minute": short, so the run covers two periods after the first bucket
    limit = 300 if kind == "rpm" else 30_000
    # Answers as long as asked (200 tokens): the estimate reserved before sending is close to the usage settled
    # after, as with a real model asked for a fixed length.
    upstream.behavior.pad_to_max_tokens = True
    # With a cache tier (every question new: no hits) the pipeline reads each answer whole, and the limiter
    # settles its estimate with the answer's usage; without one the estimate stays charged (under the limit).
    config = {"plugins": ["normalize", "memory", "ratelimit"],
              "ratelimit": {kind: limit, "period": period, "max_wait": 0, "redis_url": fleet_redis,
                            "key_prefix": f"limits{size}{kind}:"}}
    counted, _ = run_fleet(size, send_until_refused, config, upstream.url,
                           {"seconds": LIMIT_SECONDS, "max_tokens": 200})
    arrived = upstream.count(CHAT) if kind == "rpm" else total(counted, "tokens")
    allowed = limit + limit * LIMIT_SECONDS / period  # a full bucket at the start, then the rate
    errors = total([c["counters"] for c in counted], "ratelimit_redis_errors")
    report(f"shared {kind.upper()} limit, {size} workers, {limit} per {period:g} s for {LIMIT_SECONDS:g} s", [
        ("at the upstream", "allowed", "accuracy", "refused", "redis errors"),
        (str(arrived), f"{allowed:.0f}", f"{arrived / allowed:.1%}", str(total(counted, "refused")), str(errors)),
    ])
    assert abs(arrived / allowed - 1) <= 0.05


# --- breakers --------------------------------------------------------------------------------------------------


def send_to_a_dead_endpoint(replica: Replica) -> dict[str, Any]:
    from aurelis_plugins.breaker import CircuitOpenError

    outcomes = {"failed": 0, "skipped": 0}
    end = time.monotonic() + replica.args["seconds"]
    while time.monotonic() < end:
        try:
            replica.chat("hello")
            outcomes["failed"] += 1
        except CircuitOpenError:
            outcomes["skipped"] += 1
        time.sleep(0.002)
    breaker = replica.pipeline.plugin("breaker")
    opened = [t.at for t in breaker.transitions if t.new == "open"]
    return {**outcomes, "first_open": min(opened, default=0.0)}


@pytest.mark.parametrize("share", [True, False], ids=["shared", "per-process"])
@pytest.mark.parametrize("size", FLEET_SIZES)
def test_breaker(size: int, share: bool, fleet_redis: str, upstream: SimulatedServer) -> None:
    upstream.behavior.status_override = 503
    config = {"plugins": ["breaker"], "redis_connection": {"url": fleet_redis},
              "breaker": {"share": share, "key_prefix": f"breaker{size}{share}:", "consecutive_failures": 5,
                          "open_for": OPEN_FOR, "backoff": 1.0}}
    counted, _ = run_fleet(size, send_to_a_dead_endpoint, config, upstream.url, {"seconds": BREAKER_SECONDS})
    first_open = min(c["first_open"] for c in counted if c["first_open"])
    arrivals = [r.time for r in upstream.requests]
    after = sum(1 for at in arrivals if at > first_open)
    periods = (max(arrivals) - first_open) / OPEN_FOR
    probes = total([c["counters"] for c in counted], "breaker_half_open")
    report(f"breaker, {'shared' if share else 'per-process'}, {size} workers, {BREAKER_SECONDS:g} s on a dead "
           f"endpoint (open_for {OPEN_FOR:g} s)", [
        ("sent", "before the first open", "after it", "of which probes", "open periods after it",
         "probes per period"),
        (str(len(arrivals)), str(len(arrivals) - after), str(after), str(probes), f"{periods:.1f}",
         f"{probes / periods:.2f}"),
    ])
    assert total(counted, "failed") == len(arrivals)


# --- fleet-wide single-flight ----------------------------------------------------------------------------------


def send_each_prompt_at_its_moment(replica: Replica) -> dict[str, Any]:
    requests = []
    for moment, content in enumerate(replica.args["prompts"]):
        replica.sleep_until(FLIGHT_LEAD + moment * FLIGHT_GAP)
        sent = time.perf_counter()
        response = replica.chat(content, max_tokens=20)
        took = time.perf_counter() - sent
        assert response.status_code == 200, response.status_code
        requests.append((took, response.headers.get("x-aurelis-cache-tier")))
    return {"requests": requests, "tier_errors": sum(replica.pipeline.stats.tier_errors.values())}


def fly(size: int, fleet_flight: bool, fleet_redis: str, upstream: SimulatedServer) -> dict[str, Any]:
    """One run: ``size`` replicas, ``FLIGHT_PROMPTS`` prompts new to all of them, each sent by every replica at
    the same moment."""
    run = f"flight{size}{'on' if fleet_flight else 'off'}"
    config = {"plugins": ["normalize", "redis"],
              "redis": {"url": fleet_redis, "prefix": f"{run}:", "fleet_flight": {"enabled": fleet_flight}}}
    before = upstream.count(CHAT)
    prompts = [f"{run}: popular prompt {i}" for i in range(FLIGHT_PROMPTS)]
    counted, _ = run_fleet(size, send_each_prompt_at_its_moment, config, upstream.url, {"prompts": prompts})
    requests = [request for c in counted for request in c["requests"]]
    counters: dict[str, int] = {}
    for c in counted:
        for name, count in c["counters"].items():
            if name.startswith("redis."):
                counters[name] = counters.get(name, 0) + count
    return {"calls_per_prompt": (upstream.count(CHAT) - before) / FLIGHT_PROMPTS,
            # The leaders' and the fleet's own upstream calls, then the followers' answers from Redis.
            "upstream_ms": [took * 1000 for took, tier in requests if tier is None],
            "follower_ms": [took * 1000 for took, tier in requests if tier == "redis"],
            # A look that failed (a timeout on a loaded machine) sends its request upstream, as without the option.
            "redis_errors": total(counted, "tier_errors"), "counters": counters}


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


@pytest.mark.parametrize("size", FLEET_SIZES)
def test_fleet_flight(size: int, fleet_redis: str, upstream: SimulatedServer) -> None:
    upstream.behavior.latency = FLIGHT_LATENCY
    alone = fly(1, False, fleet_redis, upstream)  # single-process coalescing: its request leads its own flight
    off, on = fly(size, False, fleet_redis, upstream), fly(size, True, fleet_redis, upstream)
    baseline = median(alone["upstream_ms"])
    leader, follower = median(on["upstream_ms"]), median(on["follower_ms"])
    print(
        f"\nfleet-wide single-flight, N={size} processes, {FLIGHT_PROMPTS} prompts, upstream latency "
        f"{FLIGHT_LATENCY * 1000:.0f} ms:"
        f"\n  upstream calls per distinct prompt: off {off['calls_per_prompt']:.2f}, on {on['calls_per_prompt']:.2f}"
        f" (Redis errors on: {on['redis_errors']}; {on['counters']})"
        f"\n  one process alone (single-process coalescing): median {baseline:.1f} ms"
        f"\n  off, N processes: median {median(off['upstream_ms']):.1f} ms"
        f"\n  on, leader:    median {leader:.1f} ms ({leader - baseline:+.1f} ms), {len(on['upstream_ms'])} requests"
        f"\n  on, followers: median {follower:.1f} ms ({follower - baseline:+.1f} ms), "
        f"p90 {statistics.quantiles(on['follower_ms'], n=10)[-1]:.1f} ms, max {max(on['follower_ms']):.0f} ms, "
        f"{len(on['follower_ms'])} requests"
    )
    assert off["calls_per_prompt"] == size  # the comparison means something: off, the fleet fans out
    # Target 1. Counted exceptions: a failed look (a timeout) goes upstream on its own, and a leader starved of
    # CPU past its lease (this machine is shared) is taken over.
    extra = on["redis_errors"] + on["counters"].get("redis.fleet_flight.took_over", 0)
    assert on["calls_per_prompt"] * FLIGHT_PROMPTS <= FLIGHT_PROMPTS + extra


ANSWER = b'{"id":"c1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant",' \
    b'"content":"Nile."},"finish_reason":"stop"}]}'


def test_fleet_flight_leader_miss_path(fleet_redis: str) -> None:
    def instant(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers=[(b"content-type", b"application/json")], content=ANSWER)

    clients = {}
    for name, enabled in (("on", True), ("off", False)):
        pipeline = Pipeline({"plugins": ["normalize", "redis"],
                             "redis": {"url": fleet_redis, "prefix": f"lead-{name}:",
                                       "fleet_flight": {"enabled": enabled}}})
        clients[name] = pipeline.instrument(httpx.Client(transport=httpx.MockTransport(instant)))
    seeds = itertools.count()
    url = "https://api.example/v1/chat/completions"

    def miss(client: httpx.Client) -> None:
        prompt = {"model": "m", "messages": [{"role": "user", "content": "q"}], "seed": next(seeds)}
        assert client.post(url, json=prompt).headers["x-aurelis-cache"] == "miss"

    for _ in range(200):  # warm up both
        miss(clients["on"])
        miss(clients["off"])
    times: dict[str, list[float]] = {"on": [], "off": []}
    for _ in range(30):
        for name, client in clients.items():
            start = time.perf_counter()
            for _ in range(100):
                miss(client)
            times[name].append((time.perf_counter() - start) / 100 * 1e6)
    on_us, off_us = median(times["on"]), median(times["off"])
    print(f"\nleader's miss path, httpx sync, instant transport, real Redis: fleet_flight on {on_us:.1f} us, "
          f"off {off_us:.1f} us, {on_us - off_us:+.1f} us per miss ({on_us / off_us:.2f}x)")
    for client in clients.values():
        client.close()
