"""What the resilience plugins add to each attempt: ``aurelis_admit`` + ``aurelis_attempt_end``, in microseconds.

Baseline: one raw httpx request to a loopback simulated upstream (no pipeline), the cheapest real call these
hooks ride on. The hooks are called directly with real RequestContext / Attempt objects, as the pipeline does.
Target: the breaker costs < 1% of the baseline, the local rate limiter (two GCRA limits, a token estimate,
header corrections) < 2%; the Redis-shared limiter is one round trip (reported against the same baseline).

Run: ``.venv/bin/python -m pytest benchmarks/bench_resilience.py``
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from aurelis_core import Attempt, Pipeline, RequestContext
from aurelis_core._models import DEFAULT_CONTROLS
from aurelis_core.testing import simulated_upstream
from aurelis_plugins.breaker import Breaker
from aurelis_plugins.ratelimit import RateLimit

BODY = {"model": "sim-chat", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 16}
results: dict[str, float] = {}


@pytest.fixture(scope="module")
def upstream() -> Iterator[Any]:
    with simulated_upstream() as up:
        yield up


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """``REDIS_URL`` if set, else a private redis-server on a free loopback port."""
    import redis

    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed and REDIS_URL is not set")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        for _ in range(200):
            try:
                if redis.Redis.from_url(url).ping():
                    break
            except redis.ConnectionError:
                time.sleep(0.02)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=5)


def attempt_cycle(pipeline: Pipeline, plugin: Any, url: str) -> Any:
    request = httpx.Request("POST", url + "/v1/chat/completions", json=BODY)
    ctx = RequestContext(request, None, httpx, False, DEFAULT_CONTROLS)
    headers = httpx.Headers({"content-type": "application/json"})

    def cycle() -> None:
        attempt = Attempt(1, None)
        ctx.attempts = [attempt]
        plugin.aurelis_admit(ctx, attempt)
        attempt.status_code = 200
        attempt.headers = headers
        plugin.aurelis_attempt_end(ctx, attempt)

    return cycle


def test_baseline_raw_request(benchmark: Any, upstream: Any) -> None:
    with httpx.Client() as client:
        client.post(upstream.url + "/v1/chat/completions", json=BODY)
        benchmark(client.post, upstream.url + "/v1/chat/completions", json=BODY)
    results["baseline"] = benchmark.stats.stats.median


def test_breaker_closed(benchmark: Any, upstream: Any) -> None:
    pipeline = Pipeline({"plugins": ["breaker"]})
    breaker: Breaker = pipeline.plugin("breaker")
    benchmark(attempt_cycle(pipeline, breaker, upstream.url))
    results["breaker"] = benchmark.stats.stats.median


def test_ratelimit_local(benchmark: Any, upstream: Any) -> None:
    # Limits far above what the benchmark sends: every admit is granted without a wait, as in steady state.
    pipeline = Pipeline({"plugins": ["ratelimit"], "ratelimit": {"rpm": 10**9, "tpm": 10**12}})
    limiter: RateLimit = pipeline.plugin("ratelimit")
    benchmark(attempt_cycle(pipeline, limiter, upstream.url))
    results["ratelimit"] = benchmark.stats.stats.median


def test_ratelimit_redis(benchmark: Any, upstream: Any, redis_url: str) -> None:
    limits = {"rpm": 10**9, "tpm": 10**12, "redis_url": redis_url, "key_prefix": "aurelis:bench:"}
    pipeline = Pipeline({"plugins": ["ratelimit"], "ratelimit": limits})
    limiter: RateLimit = pipeline.plugin("ratelimit")
    benchmark(attempt_cycle(pipeline, limiter, upstream.url))
    results["ratelimit_redis"] = benchmark.stats.stats.median
    pipeline.close()


def test_report() -> None:
    baseline = results["baseline"]
    print(f"\nbaseline raw httpx loopback request: {baseline * 1e6:.1f} us")
    for name in ("breaker", "ratelimit", "ratelimit_redis"):
        if name in results:
            cost = results[name]
            print(f"{name}: admit + attempt_end {cost * 1e6:.2f} us = {cost / baseline:.2%} of the baseline")
    assert results["breaker"] / baseline < 0.01
    assert results["ratelimit"] / baseline < 0.02
