"""``gather`` against the hand-written baseline: ``asyncio.gather`` over a semaphore, same client, same upstream.

Run: ``.venv/bin/python -m pytest benchmarks/bench_gather.py -s``

Both send the same 400 requests to the simulated upstream (no latency) at concurrency 16 through one plain
``httpx.AsyncClient``, in alternating rounds so the machine's noise hits both alike. The figure is the ratio of
median round times: what bounded workers, model grouping and ordered result slots cost over the simplest
correct alternative.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import aurelis_core
from aurelis_core.testing import SimulatedServer, simulated_upstream

N = 400
CONCURRENCY = 16
REQUESTS = [
    {"method": "POST", "url": "/embeddings", "json": {"model": f"e{i % 4}", "input": f"text {i}"}}
    for i in range(N)
]


@pytest.fixture(scope="module")
def upstream() -> Iterator[SimulatedServer]:
    with simulated_upstream() as up:
        yield up


async def baseline(client: httpx.AsyncClient) -> list[Any]:
    semaphore = asyncio.Semaphore(CONCURRENCY)

    async def one(item: dict[str, Any]) -> Any:
        async with semaphore:
            try:
                return await client.request(**item)
            except Exception as exc:
                return exc

    return await asyncio.gather(*(one(item) for item in REQUESTS))


async def subject(client: httpx.AsyncClient) -> list[Any]:
    results: list[Any] = await aurelis_core.gather(client, REQUESTS, concurrency=CONCURRENCY)
    return results


def test_gather_vs_asyncio_gather(upstream: SimulatedServer, benchmark: Any) -> None:
    async def rounds() -> tuple[list[float], list[float]]:
        times: dict[str, list[float]] = {"subject": [], "baseline": []}
        async with httpx.AsyncClient(base_url=upstream.base_url) as client:
            for fn in (subject, baseline):  # warm the pool and both code paths
                await fn(client)
            for _ in range(8):
                for name, fn in (("subject", subject), ("baseline", baseline)):
                    start = time.perf_counter()
                    results = await fn(client)
                    times[name].append(time.perf_counter() - start)
                    assert len(results) == N and all(r.status_code == 200 for r in results)
        return times["subject"], times["baseline"]

    subject_times, baseline_times = asyncio.run(rounds())
    ratio = statistics.median(subject_times) / statistics.median(baseline_times)
    print(
        f"\ngather {N} requests: {statistics.median(subject_times) * 1e3:.1f} ms, asyncio.gather+semaphore "
        f"{statistics.median(baseline_times) * 1e3:.1f} ms, ratio {ratio:.3f} (target <= 1.10)"
    )
    benchmark.extra_info["ratio_vs_asyncio_gather"] = ratio
    benchmark.pedantic(lambda: None, rounds=1)
    assert ratio <= 1.10
