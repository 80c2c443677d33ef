"""Requests per second at concurrency 32: raw ``httpx.AsyncClient`` vs the ``httpx`` and ``aiohttp`` engines.

The upstream is nginx on a free 127.0.0.1 port answering a fixed chat completion (see ``_upstreams``): an
upstream fast enough that the client side is what is measured. Without nginx the simulated upstream (uvicorn)
is used instead, and the report says so (it is slower, so the ratios shrink toward 1).

    apt-get install -y nginx-light
    .venv/bin/python -m pytest benchmarks/bench_network.py -s

Each variant runs for ``ROUND_SECONDS`` per round, rounds interleaved so that noise from the (shared) machine
hits all variants alike; the best round of each counts. Targets: httpx engine >= 0.95x raw httpx, aiohttp
engine >= 3x raw httpx.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx

import aurelis_core

sys.path.insert(0, str(Path(__file__).parent))

from _upstreams import REQUEST, upstream

CONCURRENCY = 32
ROUND_SECONDS = float(os.environ.get("AURELIS_BENCH_SECONDS", "2.0"))
ROUNDS = int(os.environ.get("AURELIS_BENCH_ROUNDS", "3"))


async def _rate(client: httpx.AsyncClient, url: str, seconds: float) -> float:
    """Requests per second completed by ``CONCURRENCY`` workers looping for ``seconds``."""
    done = 0
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            response = await client.post(url, json=REQUEST)
            if response.status_code != 200:
                raise AssertionError(response.status_code)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(CONCURRENCY)])
    return done / (time.perf_counter() - started)


VARIANTS: dict[str, Any] = {
    "raw httpx": None,
    "httpx engine": {"plugins": ["httpx"]},
    "aiohttp engine": {"plugins": ["aiohttp"]},
}


async def measure(base: str) -> dict[str, float]:
    url = base + "/v1/chat/completions"
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    clients = {}
    for name, config in VARIANTS.items():
        client = httpx.AsyncClient(limits=limits)
        clients[name] = client if config is None else aurelis_core.instrument(client, config)
    best = dict.fromkeys(VARIANTS, 0.0)
    try:
        for client in clients.values():
            await _rate(client, url, 0.3)  # warm-up: open the connections, fill caches
        for _ in range(ROUNDS):
            for name, client in clients.items():
                best[name] = max(best[name], await _rate(client, url, ROUND_SECONDS))
    finally:
        for client in clients.values():
            await client.aclose()
    return best


def test_network_throughput(benchmark: Any) -> None:
    with upstream() as (url, kind):
        results = benchmark.pedantic(lambda: asyncio.run(measure(url)), rounds=1, iterations=1)
    raw = results["raw httpx"]
    print(f"\nupstream: {kind}; concurrency {CONCURRENCY}; best of {ROUNDS} x {ROUND_SECONDS:.1f} s")
    for name, rate in results.items():
        print(f"  {name:15s} {rate:8.0f} req/s  {rate / raw:5.2f}x raw httpx")
    benchmark.extra_info.update({name: round(rate) for name, rate in results.items()})
    benchmark.extra_info["upstream"] = kind
    assert results["httpx engine"] >= 0.95 * raw
    assert results["aiohttp engine"] >= 3.0 * raw
