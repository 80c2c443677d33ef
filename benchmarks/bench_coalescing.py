"""Single-flight: upstream calls per burst of identical requests, and what the check costs a cache miss.

Run: ``.venv/bin/python -m pytest benchmarks/bench_coalescing.py -s``

- **calls per burst**: 100 identical requests sent at once (async tasks; sync threads) to the simulated
  upstream on 127.0.0.1, with and without coalescing. Target: 1 call.
- **miss-path cost**: a cache miss through the whole pipeline with coalescing on (join a flight, publish,
  leave) against the same pipeline with it off per request, answered by an instant in-process transport so
  that the pipeline's own work is what is measured. Batches of both are interleaved, so noise hits both alike.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
import timeit
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

import aurelis_core
from aurelis_core import RequestControls
from aurelis_core.testing import simulated_upstream

CONFIG = {"plugins": ["normalize", "memory"]}
BODY = {"model": "sim-chat", "messages": [{"role": "user", "content": "Name three rivers"}], "temperature": 0}
ANSWER = b'{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant",' \
    b'"content":"Nile, Amazon, Danube."},"finish_reason":"stop"}]}'
ON = {"aurelis": RequestControls(coalesce=True)}
OFF = {"aurelis": RequestControls(coalesce=False)}


def _burst_async(url: str, extensions: dict[str, Any]) -> None:
    async def main() -> None:
        async with aurelis_core.instrument(httpx.AsyncClient(timeout=30), CONFIG) as client:
            await asyncio.gather(*(client.post(url, json=BODY, extensions=extensions) for _ in range(100)))

    asyncio.run(main())


def _burst_sync(url: str, extensions: dict[str, Any]) -> None:
    with aurelis_core.instrument(httpx.Client(timeout=30), CONFIG) as client, ThreadPoolExecutor(20) as pool:
        list(pool.map(lambda _: client.post(url, json=BODY, extensions=extensions), range(100)))


@pytest.mark.parametrize("burst", [_burst_async, _burst_sync], ids=["async-100-tasks", "sync-20-threads"])
def test_upstream_calls_per_100_identical_requests(burst: Callable[[str, dict[str, Any]], None]) -> None:
    with simulated_upstream(latency=0.2) as upstream:
        url = upstream.base_url + "/chat/completions"
        calls = {}
        for name, extensions in (("coalesced", ON), ("not coalesced", OFF)):
            upstream.reset()
            burst(url, extensions)
            calls[name] = upstream.count("/chat/completions")
    print(f"\n{burst.__name__}: upstream calls per 100 identical concurrent requests: {calls}")
    assert calls["coalesced"] == 1
    assert calls["not coalesced"] > 1  # the comparison means something: without it, the burst fans out


class Instant(httpx.BaseTransport):
    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers=[(b"content-type", b"application/json")], stream=httpx.ByteStream(ANSWER))


def test_miss_path_cost_of_the_coalescing_check() -> None:
    client = aurelis_core.instrument(httpx.Client(transport=Instant()), CONFIG)
    url = "https://api.example/v1/chat/completions"
    counter = itertools.count()
    # Every request a distinct prompt, so every one misses, goes "upstream" and is stored.
    bodies = [{**BODY, "seed": next(counter)} for _ in range(40_000)]
    feed = iter(bodies)

    def miss(extensions: dict[str, Any]) -> None:
        response = client.post(url, json=next(feed), extensions=extensions)
        assert response.headers["x-aurelis-cache"] == "miss"

    for _ in range(300):  # warm up both paths
        miss(ON)
        miss(OFF)
    on: list[float] = []
    off: list[float] = []
    for _ in range(60):
        for extensions, out in ((ON, on), (OFF, off)):
            start = time.perf_counter()
            for _ in range(250):
                miss(extensions)
            out.append((time.perf_counter() - start) / 250)
    on_us, off_us = statistics.median(on) * 1e6, statistics.median(off) * 1e6
    print(
        f"\nmiss path, httpx sync, instant transport: coalescing on {on_us:.1f} us, off {off_us:.1f} us, "
        f"check costs {on_us - off_us:+.2f} us per miss (ratio {on_us / off_us:.3f})"
    )
    # The check alone, without the rest of the miss around it: join a flight, publish the answer, leave.
    flights = aurelis_core.pipeline_of(client)._flights  # type: ignore[union-attr]

    def cycle() -> None:
        flight, _ = flights.join("key", False)
        flight.publish(200, [], {}, ANSWER)
        flights.remove(flight)

    rounds = [timeit.timeit(cycle, number=20_000) / 20_000 for _ in range(5)]
    print(f"single-flight bookkeeping alone (join, publish, remove): {min(rounds) * 1e6:.2f} us per miss")
    client.close()
    assert on_us / off_us < 1.10
