"""Fleet-wide single-flight: upstream calls per distinct prompt when N replicas get it at once, and what leading
and following cost in latency.

Run: ``.venv/bin/python -m pytest benchmarks/bench_fleet_flight.py -s``

N worker processes (4, then 16), each with its own pipeline (``normalize`` + ``redis``, the tier's defaults) and a
sync client, share one ``redis-server`` on 127.0.0.1 and one simulated upstream (fixed latency ``LATENCY``).
Once every worker has started (connections open), the bench tells them all the same moments; at each, every
worker sends the same new prompt (``PROMPTS`` distinct prompts, one per moment). Each run is made with
``fleet_flight`` on and off:

- **upstream calls per distinct prompt**: the upstream's count over ``PROMPTS``. Off, each replica coalesces only
  its own requests: N. Target on: 1.
- **latency**: each request's own send-to-answer time, by role, against the same prompts sent by one process
  alone with the option off (single-process coalescing: its request is the leader of its own flight). On, the
  fleet's leader goes upstream and the followers read its stored answer from Redis, woken by the leader's
  release (pub/sub) or their next look. The added latency is the median of a role less the single process's.
  (Off with N processes is shown too: N calls at once load the upstream and this 2-core machine.)
- **the leader's miss path**, in one process: misses (each a distinct prompt) through a pipeline with the option
  on and one with it off, against an instant in-process transport and the same Redis, batches interleaved: the
  look script (``GET``, ``SET NX``) in place of the ``GET``, the release queued behind the store.
"""

from __future__ import annotations

import itertools
import json
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from bench_tiers import redis_server

from aurelis_core import Pipeline
from aurelis_core.testing import simulated_upstream

__all__ = ["redis_server"]  # the fixture, shared with bench_tiers

LATENCY = 0.2
PROMPTS = 8
#: Seconds between two prompts' moments: the answer, its store, and the followers' last look fit in it.
GAP = 1.0

#: One replica: build, start (open the tier's connections), say "ready", read the moments, send a prompt at
#: each, print (latency, served by) per request and its counters, then live on until its input ends.
WORKER = textwrap.dedent("""
    import json, sys, time
    import httpx
    from aurelis_core import Pipeline
    config, url, prompts = json.loads(sys.argv[1])
    pipeline = Pipeline(config)
    results = []
    with pipeline.instrument(httpx.Client(timeout=60)) as client:
        pipeline.start()
        print("ready", flush=True)
        moments = json.loads(sys.stdin.readline())
        for moment, prompt in zip(moments, prompts):
            time.sleep(max(0.0, moment - time.time()))
            sent = time.perf_counter()
            response = client.post(url, json=prompt)
            took = time.perf_counter() - sent
            assert response.status_code == 200, response.status_code
            results.append([took, response.headers.get("x-aurelis-cache-tier")])
        counters = {k: v for k, v in pipeline.stats.counters.items() if k.startswith("redis.")}
        print(json.dumps([results, dict(pipeline.stats.tier_errors), counters]), flush=True)
        sys.stdin.read()  # live on until every worker is done, as replicas do (their writes are written behind)
""")


def run_fleet(processes: int, fleet_flight: bool, redis_url: str, run: str) -> dict[str, Any]:
    """One run: ``processes`` workers, ``PROMPTS`` prompts new to all of them (``run`` makes them new)."""
    prompts = [{"model": "sim-chat", "max_tokens": 20,
                "messages": [{"role": "user", "content": f"{run}: popular prompt {i}"}]} for i in range(PROMPTS)]
    config = {"plugins": ["normalize", "redis"],
              "redis": {"url": redis_url, "fleet_flight": {"enabled": fleet_flight}}}
    with simulated_upstream(latency=LATENCY) as upstream:
        url = upstream.base_url + "/chat/completions"
        workers = [
            subprocess.Popen([sys.executable, "-c", WORKER, json.dumps([config, url, prompts])],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            for _ in range(processes)
        ]
        try:
            for worker in workers:
                assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
            first = time.time() + 0.5
            moments = json.dumps([first + i * GAP for i in range(PROMPTS)]) + "\n"
            for worker in workers:
                assert worker.stdin is not None
                worker.stdin.write(moments)
                worker.stdin.flush()
            outputs = [json.loads(worker.stdout.readline()) for worker in workers]
            for worker in workers:
                worker.communicate(timeout=60)
        finally:
            for worker in workers:
                worker.kill()
                worker.wait()
        calls = upstream.count("/chat/completions")
    requests = [request for results, _, _ in outputs for request in results]
    # A look that failed (a timeout on a loaded machine) sends its request upstream, as without the option.
    errors = sum(sum(tier_errors.values()) for _, tier_errors, _ in outputs)
    counters: dict[str, int] = {}
    for _, _, counted in outputs:
        for name, count in counted.items():
            counters[name] = counters.get(name, 0) + count
    upstream_ms = [took * 1000 for took, tier in requests if tier is None]
    redis_ms = [took * 1000 for took, tier in requests if tier == "redis"]
    return {"calls_per_prompt": calls / PROMPTS, "upstream_ms": upstream_ms, "follower_ms": redis_ms,
            "redis_errors": errors, "counters": counters}


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


@pytest.fixture(scope="module")
def runs(redis_server: str) -> Iterator[dict[tuple[int, bool], dict[str, Any]]]:
    yield {(n, on): run_fleet(n, on, redis_server, f"n{n}-{'on' if on else 'off'}")
           for n, on in ((1, False), (4, False), (4, True), (16, False), (16, True))}


@pytest.mark.parametrize("processes", [4, 16])
def test_upstream_calls_per_distinct_prompt_and_added_latency(
    runs: dict[tuple[int, bool], dict[str, Any]], processes: int
) -> None:
    alone, off, on = runs[(1, False)], runs[(processes, False)], runs[(processes, True)]
    baseline = median(alone["upstream_ms"])
    leader, follower = median(on["upstream_ms"]), median(on["follower_ms"])
    print(
        f"\nN={processes} processes, {PROMPTS} prompts, upstream latency {LATENCY * 1000:.0f} ms:"
        f"\n  upstream calls per distinct prompt: off {off['calls_per_prompt']:.2f}, on {on['calls_per_prompt']:.2f}"
        f" (Redis errors on: {on['redis_errors']}; {on['counters']})"
        f"\n  one process alone (single-process coalescing): median {baseline:.1f} ms"
        f"\n  off, N processes: median {median(off['upstream_ms']):.1f} ms"
        f"\n  on, leader:    median {leader:.1f} ms ({leader - baseline:+.1f} ms), {len(on['upstream_ms'])} requests"
        f"\n  on, followers: median {follower:.1f} ms ({follower - baseline:+.1f} ms), "
        f"p90 {statistics.quantiles(on['follower_ms'], n=10)[-1]:.1f} ms, max {max(on['follower_ms']):.0f} ms, "
        f"{len(on['follower_ms'])} requests"
    )
    assert off["calls_per_prompt"] == processes  # the comparison means something: off, the fleet fans out
    # Target 1. Counted exceptions: a failed look (a timeout) goes upstream on its own, and a leader starved of
    # CPU past its lease (this machine is shared) is taken over.
    counted = on["counters"]
    extra = on["redis_errors"] + counted.get("redis.fleet_flight.took_over", 0)
    assert on["calls_per_prompt"] * PROMPTS <= PROMPTS + extra


ANSWER = b'{"id":"c1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant",' \
    b'"content":"Nile."},"finish_reason":"stop"}]}'


def test_leader_miss_path_cost(redis_server: str) -> None:
    def instant(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers=[(b"content-type", b"application/json")], content=ANSWER)

    clients = {}
    for name, enabled in (("on", True), ("off", False)):
        pipeline = Pipeline({"plugins": ["normalize", "redis"],
                             "redis": {"url": redis_server, "prefix": f"lead-{name}:",
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
