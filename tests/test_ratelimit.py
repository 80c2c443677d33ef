"""The ``ratelimit`` plugin: local and Redis-shared GCRA limits against real loopback upstreams."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from typing import Any

import httpx
import pytest
from aurelis_plugins.ratelimit import RateLimit, RateLimitTimeout

import aurelis_core
from aurelis_core import ConfigError, Pipeline

BODY = {"model": "sim-chat", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 50}


def dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def client_for(config: dict[str, Any]) -> tuple[httpx.Client, Pipeline]:
    pipeline = Pipeline(config)
    return pipeline.instrument(httpx.Client(timeout=10)), pipeline


def post(client: httpx.Client, base: str, body: dict[str, Any] = BODY) -> httpx.Response:
    return client.post(base + "/v1/chat/completions", json=body)


def test_requests_are_spaced_to_the_limit(upstream: Any) -> None:
    client, pipeline = client_for({"plugins": ["ratelimit"], "ratelimit": {"rpm": 5, "period": 1.0}})
    for _ in range(10):
        assert post(client, upstream.url).status_code == 200
    times = [r.time for r in upstream.requests]
    # A burst of 5, then one per 0.2 s: the 6th to 10th go 0.2 s apart (compared among requests that all
    # waited on a warm connection, with 10 ms of slack for the clocks).
    assert times[9] - times[5] >= 0.8 - 0.01
    assert pipeline.stats.counters["ratelimit_waited"] >= 4
    client.close()


def test_waiting_past_max_wait_raises_and_reserves_nothing(upstream: Any) -> None:
    client, pipeline = client_for({"plugins": ["ratelimit"], "ratelimit": {"rpm": 1, "max_wait": 0.1}})
    post(client, upstream.url)
    with pytest.raises(RateLimitTimeout) as refused:
        post(client, upstream.url)
    assert refused.value.retry_after is not None and refused.value.retry_after > 0.1
    assert upstream.count() == 1
    assert pipeline.stats.counters["ratelimit_rejected"] == 1
    assert pipeline.plugin("ratelimit").remaining(upstream.url) >= 0
    client.close()


def test_cache_hits_consume_nothing(upstream: Any) -> None:
    client, pipeline = client_for({
        "plugins": ["normalize", "memory", "ratelimit"], "ratelimit": {"rpm": 2, "max_wait": 0},
    })
    limiter: RateLimit = pipeline.plugin("ratelimit")
    post(client, upstream.url)
    left = limiter.remaining(upstream.url)
    assert left is not None and left < 2
    for _ in range(5):
        assert post(client, upstream.url).headers["x-aurelis-cache"] == "hit"
    assert limiter.remaining(upstream.url) == pytest.approx(left, abs=0.01)
    post(client, upstream.url, {**BODY, "messages": [{"role": "user", "content": "another"}]})
    with pytest.raises(RateLimitTimeout):  # the limit was live all along
        post(client, upstream.url, {**BODY, "messages": [{"role": "user", "content": "a third"}]})
    assert upstream.count() == 2
    client.close()


def test_tokens_settle_with_usage_when_the_body_was_read(upstream: Any) -> None:
    # A cacheable answer is read whole by the pipeline: its usage replaces the estimate.
    client, pipeline = client_for({
        "plugins": ["normalize", "memory", "ratelimit"], "ratelimit": {"tpm": 10_000, "period": 3600},
    })
    limiter: RateLimit = pipeline.plugin("ratelimit")
    usage = post(client, upstream.url).json()["usage"]["total_tokens"]
    assert limiter.remaining(upstream.url, "tokens") == pytest.approx(10_000 - usage, abs=1)
    client.close()


def test_streamed_answer_keeps_its_estimate(upstream: Any) -> None:
    client, pipeline = client_for({"plugins": ["ratelimit"], "ratelimit": {"tpm": 10_000, "period": 3600}})
    limiter: RateLimit = pipeline.plugin("ratelimit")
    request = client.build_request("POST", upstream.url + "/v1/chat/completions", json={**BODY, "stream": True})
    estimate = int(len(request.content) / 4) + 50
    client.send(request).read()
    assert limiter.remaining(upstream.url, "tokens") == pytest.approx(10_000 - estimate, abs=1)
    client.close()


def test_server_headers_correct_the_local_state(upstream: Any) -> None:
    # Locally we believe in 100 rpm, the upstream allows 3 and says so in x-ratelimit-remaining-requests.
    client, _ = client_for({"plugins": ["ratelimit"], "ratelimit": {"rpm": 100, "max_wait": 1}})
    upstream.behavior.rpm = 3
    for _ in range(3):
        assert post(client, upstream.url).status_code == 200
    with pytest.raises(RateLimitTimeout):
        post(client, upstream.url)
    assert upstream.count() == 3  # the 429 the 4th request would have earned was never asked for
    client.close()


def test_a_429_holds_the_next_request_back(upstream: Any) -> None:
    client, _ = client_for({"plugins": ["ratelimit"], "ratelimit": {"rpm": 100, "max_wait": 0.5}})
    upstream.behavior.update(fail_next=1, failure_status=429, headers={"retry-after": "30"})
    assert post(client, upstream.url).status_code == 429
    with pytest.raises(RateLimitTimeout) as refused:
        post(client, upstream.url)
    assert refused.value.retry_after is not None and refused.value.retry_after > 29
    client.close()


def test_unsent_attempts_are_refunded_and_counters_stay_non_negative() -> None:
    url = dead_url()
    client, pipeline = client_for({"plugins": ["ratelimit"], "ratelimit": {"rpm": 2, "max_wait": 0}})
    limiter: RateLimit = pipeline.plugin("ratelimit")
    for _ in range(5):
        with pytest.raises(httpx.ConnectError):
            post(client, url)
        left = limiter.remaining(url)
        assert left is not None and 0 <= left
    assert limiter.remaining(url) == pytest.approx(2, abs=0.01)
    client.close()


def test_credential_limits_are_per_credential(upstream: Any) -> None:
    client, _ = client_for({"plugins": ["ratelimit"], "ratelimit": {"credential_rpm": 1, "max_wait": 0}})
    for key in ("a", "b"):
        client.headers["authorization"] = f"Bearer {key}"
        assert post(client, upstream.url).status_code == 200
    with pytest.raises(RateLimitTimeout):
        post(client, upstream.url)
    client.close()


@pytest.mark.redis
@pytest.mark.anyio
async def test_redis_limit_async(upstream: Any, redis_flush: str) -> None:
    pipeline = Pipeline({"plugins": ["ratelimit"], "ratelimit": {"rpm": 2, "max_wait": 0, "redis_url": redis_flush}})
    async with aurelis_core.instrument(httpx.AsyncClient(), pipeline=pipeline) as client:
        for _ in range(2):
            assert (await client.post(upstream.url + "/v1/chat/completions", json=BODY)).status_code == 200
        with pytest.raises(RateLimitTimeout):
            await client.post(upstream.url + "/v1/chat/completions", json=BODY)
    assert upstream.count() == 2


def test_redis_down_falls_back_to_local_limits(upstream: Any) -> None:
    client, pipeline = client_for({
        "plugins": ["ratelimit"], "ratelimit": {"rpm": 1, "max_wait": 0, "redis_url": "redis://127.0.0.1:1/0"},
    })
    assert post(client, upstream.url).status_code == 200
    with pytest.raises(RateLimitTimeout):
        post(client, upstream.url)
    assert pipeline.stats.counters["ratelimit_redis_errors"] == 2
    client.close()


WORKER = textwrap.dedent(
    """
    import sys, threading, time, httpx, aurelis_core
    url, redis_url, until = sys.argv[1], sys.argv[2], float(sys.argv[3])
    config = {"plugins": ["ratelimit"], "ratelimit": {
        "rpm": 60, "period": 2.0, "burst": 0.1, "max_wait": 30, "redis_url": redis_url}}
    client = aurelis_core.instrument(httpx.Client(timeout=10), config)
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    def work():
        while time.time() < until:
            client.post(url + "/v1/chat/completions", json=body)
    threads = [threading.Thread(target=work) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    """
)


@pytest.mark.redis
def test_two_processes_share_one_limit(upstream: Any, redis_flush: str) -> None:
    import time

    until = time.time() + 6.0  # both start well before this: process start-up takes ~1 s
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, upstream.url, redis_flush, repr(until)], env=env)
        for _ in range(2)
    ]
    for proc in procs:
        assert proc.wait(timeout=60) == 0
    times = sorted(r.time for r in upstream.requests)
    # 60 per 2 s = 30/s, a burst of 6: over the span of the requests the shared limit allows 6 + 30/s * span.
    # One process alone would make 30/s too, so two with separate limits would make ~60/s.
    allowed = 6 + 30.0 * (times[-1] - times[0])
    assert len(times) == pytest.approx(allowed, rel=0.05)


def test_bad_config_names_the_problem() -> None:
    with pytest.raises(ConfigError, match="burst"):
        Pipeline({"plugins": ["ratelimit"], "ratelimit": {"burst": 2}})
    with pytest.raises(ConfigError, match="rpm"):
        Pipeline({"plugins": ["ratelimit"], "ratelimit": {"rpm": 0}})
