"""A fleet of replicas on one Redis: N worker processes, each with its own pipeline and instrumented client.

Run: ``.venv/bin/python -m pytest benchmarks/bench_fleet.py -s -p no:cacheprovider`` (``-s`` shows the tables;
``AURELIS_FLEET_WORKERS=4,16`` sets the fleet sizes, 4 and 16 by default).

Each section starts a private ``redis-server`` and a loopback simulated upstream (``aurelis_core.testing``) in
this process, spawns N worker processes (:func:`run_fleet`), lets them all go at once (a barrier), and adds up
what they counted and what the upstream received:

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

Fleet-wide single-flight (upstream calls per distinct prompt under simultaneous arrival) is measured in
``bench_fleet_flight.py``. A further section needs only a job (a function of a :class:`Replica` returning what
it counted) and :func:`run_fleet`, with the ``fleet_redis`` and ``upstream`` fixtures.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
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


# --- the scaffolding -------------------------------------------------------------------------------------------


class Replica:
    """What a worker's job gets: its index in the fleet, the fleet's size, its pipeline and instrumented client,
    the upstream's URL and the section's arguments."""

    def __init__(self, index: int, size: int, pipeline: Pipeline, client: httpx.Client, upstream_url: str,
                 args: dict[str, Any]) -> None:
        self.index, self.size, self.pipeline, self.client = index, size, pipeline, client
        self.upstream_url, self.args = upstream_url, args

    def chat(self, content: str, **extra: Any) -> httpx.Response:
        body = {"model": "sim-chat", "messages": [{"role": "user", "content": content}], **extra}
        return self.client.post(self.upstream_url + CHAT, json=body)


#: A worker's job: runs in the worker process once the fleet starts, returns what it counted (picklable).
Job = Callable[[Replica], dict[str, Any]]


def _worker(job: Job, config: dict[str, Any], index: int, size: int, upstream_url: str, args: dict[str, Any],
            barrier: Any, results: Any) -> None:
    pipeline = Pipeline(config)
    pipeline.start()  # connections opened, shared state read: a replica ready before the fleet goes
    with pipeline.instrument(httpx.Client(timeout=30)) as client:
        barrier.wait()
        counted = job(Replica(index, size, pipeline, client, upstream_url, args))
    counted["counters"] = dict(pipeline.stats.counters)
    results.put((index, counted))


def run_fleet(size: int, job: Job, config: dict[str, Any], upstream_url: str,
              args: dict[str, Any] | None = None, timeout: float = 300.0) -> tuple[list[dict[str, Any]], float]:
    """Spawn ``size`` worker processes, each building ``Pipeline(config)`` and an instrumented ``httpx.Client``;
    start ``job`` in all of them at once; return what each counted (by index) and the seconds from the start to
    the last one's end."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(size + 1), context.Queue()
    processes = [
        context.Process(target=_worker, args=(job, config, index, size, upstream_url, args or {}, barrier, results))
        for index in range(size)
    ]
    for process in processes:
        process.start()
    try:
        barrier.wait(timeout)
        started = time.monotonic()
        counted = dict(results.get(timeout=timeout) for _ in processes)
        lasted = time.monotonic() - started
    finally:
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
