"""Requests per second at concurrency 32: raw ``httpx.AsyncClient`` vs the ``httpx`` and ``aiohttp`` engines.

The upstream is nginx on a free 127.0.0.1 port answering a fixed chat completion (see ``_upstreams``): an
upstream fast enough that the client side is what is measured. Without nginx the simulated upstream (uvicorn)
is used instead, and the report says so (it is slower, so the ratios shrink toward 1).

    apt-get install -y nginx-light
    .venv/bin/python -m pytest benchmarks/bench_network.py -s

Each variant runs for ``ROUND_SECONDS`` per round, all variants in every round (in a rotating order); a
variant's figure is the median over rounds of its rate over raw httpx's rate in the same round, so the (shared)
machine's drift cancels out. Targets: httpx engine >= 0.95x raw httpx, aiohttp engine >= 3x raw httpx.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

import aurelis_core

sys.path.insert(0, str(Path(__file__).parent))

from _upstreams import REQUEST, upstream

CONCURRENCY = 32
ROUND_SECONDS = float(os.environ.get("AURELIS_BENCH_SECONDS", "1.0"))
ROUNDS = int(os.environ.get("AURELIS_BENCH_ROUNDS", "9"))


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


async def measure(base: str) -> dict[str, list[float]]:
    """Requests/s of each variant, round by round: ``ROUNDS`` rounds of ``ROUND_SECONDS`` each, every round
    running all variants one after the other, in an order that rotates from round to round."""
    url = base + "/v1/chat/completions"
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    clients = {}
    for name, config in VARIANTS.items():
        client = httpx.AsyncClient(limits=limits)
        clients[name] = client if config is None else aurelis_core.instrument(client, config)
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    order = list(clients)
    try:
        for client in clients.values():
            await _rate(client, url, ROUND_SECONDS)  # warm-up: open the connections, fill caches
        for round_ in range(ROUNDS):
            shift = round_ % len(order)
            for name in order[shift:] + order[:shift]:
                rates[name].append(await _rate(clients[name], url, ROUND_SECONDS))
    finally:
        for client in clients.values():
            await client.aclose()
    return rates


def paired_ratios(rates: dict[str, list[float]]) -> dict[str, float]:
    """Each variant's median over rounds of its rate over raw httpx's rate in the same round.

    Paired by round, so the machine's drift (a neighbour's load comes and goes over seconds) cancels out,
    where a ratio of best or mean rates would compare rounds run under different loads."""
    raw = rates["raw httpx"]
    return {name: statistics.median(r / b for r, b in zip(values, raw, strict=True)) for name, values in rates.items()}


def test_network_throughput(benchmark: Any) -> None:
    with upstream() as (url, kind):
        rates = benchmark.pedantic(lambda: asyncio.run(measure(url)), rounds=1, iterations=1)
    ratios = paired_ratios(rates)
    print(f"\nupstream: {kind}; concurrency {CONCURRENCY}; {ROUNDS} rounds x {ROUND_SECONDS:.1f} s, medians")
    for name, values in rates.items():
        print(f"  {name:15s} {statistics.median(values):8.0f} req/s  {ratios[name]:5.2f}x raw httpx (paired)")
    benchmark.extra_info.update({name: round(statistics.median(values)) for name, values in rates.items()})
    benchmark.extra_info.update({f"{name} ratio": round(ratios[name], 3) for name in rates})
    benchmark.extra_info["upstream"] = kind
    assert ratios["httpx engine"] >= 0.95
    assert ratios["aiohttp engine"] >= 3.0
