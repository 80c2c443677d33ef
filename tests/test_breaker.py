"""The ``breaker`` plugin against real loopback upstreams: trips, fails fast, probes, closes, ignores 429."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import httpx
import pytest
from support import FakeClock, gated_upstream

import aurelis_core
from aurelis_core import ConfigError, Pipeline
from aurelis_plugins.breaker import Breaker, CircuitOpenError

BODY = {"model": "sim-chat", "messages": [{"role": "user", "content": "hello there"}]}


def dead_url() -> str:
    """A loopback URL nobody listens on: connecting to it is refused, for real."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def client_for(config: dict[str, Any], clock: FakeClock | None = None) -> tuple[httpx.Client, Pipeline]:
    pipeline = Pipeline(config)
    if clock is not None:
        pipeline.health.clock = clock  # the breaker's clock: its open time passes when the test says so
    return pipeline.instrument(httpx.Client(timeout=5)), pipeline


def post(client: httpx.Client, base: str) -> httpx.Response:
    return client.post(base + "/v1/chat/completions", json=BODY)


def test_opens_fails_fast_probes_and_closes(upstream: Any) -> None:
    clock = FakeClock()
    client, pipeline = client_for({
        "plugins": ["breaker"],
        "breaker": {"consecutive_failures": 3, "min_calls": 100, "open_for": 0.3, "close_after": 2},
    }, clock)
    breaker: Breaker = pipeline.plugin("breaker")
    origin = upstream.url
    upstream.behavior.status_override = 503
    for _ in range(3):
        assert post(client, upstream.url).status_code == 503
    assert breaker.state(origin) == "open"
    assert pipeline.stats.counters["breaker_open"] == 1
    assert pipeline.health.status[origin].reason == "open"

    with pytest.raises(CircuitOpenError) as refused:
        post(client, upstream.url)
    assert refused.value.endpoint == origin and refused.value.retry_after is not None
    assert upstream.count() == 3  # failing fast: the upstream never saw it

    upstream.behavior.status_override = None
    clock.advance(0.35)
    assert post(client, upstream.url).status_code == 200
    assert breaker.state(origin) == "half_open"
    assert post(client, upstream.url).status_code == 200
    assert breaker.state(origin) == "closed"
    assert [(t.old, t.new) for t in breaker.transitions] == [
        ("closed", "open"), ("open", "half_open"), ("half_open", "closed"),
    ]
    assert pipeline.health.status[origin].circuit == "closed"
    client.close()


def test_failed_probe_reopens_for_longer(upstream: Any) -> None:
    clock = FakeClock()
    client, pipeline = client_for({
        "plugins": ["breaker"],
        "breaker": {"consecutive_failures": 1, "open_for": 0.25, "backoff": 3.0, "max_open_for": 10.0},
    }, clock)
    breaker: Breaker = pipeline.plugin("breaker")
    upstream.behavior.status_override = 500
    post(client, upstream.url)
    with pytest.raises(CircuitOpenError) as first:
        post(client, upstream.url)
    assert first.value.retry_after == 0.25
    clock.advance(0.25)
    assert post(client, upstream.url).status_code == 500  # the probe, failing
    with pytest.raises(CircuitOpenError) as second:
        post(client, upstream.url)
    # The second trip opens for open_for * backoff = 0.75 s.
    assert second.value.retry_after == 0.75
    assert [t.new for t in breaker.transitions] == ["open", "half_open", "open"]
    assert upstream.count() == 2
    client.close()


def test_half_open_admits_a_bounded_number_of_probes() -> None:
    # Probes are bounded while in flight: with one probe slot, a second concurrent attempt fails fast.
    clock = FakeClock()
    with gated_upstream() as up:
        client, pipeline = client_for({
            "plugins": ["breaker"],
            "breaker": {"consecutive_failures": 1, "open_for": 0.1, "half_open_probes": 1, "close_after": 1},
        }, clock)
        up.status = 503
        post(client, up.url)
        up.status = 200
        up.hold()  # the probe's answer waits until the test has tried a second attempt
        clock.advance(0.1)
        results: list[Any] = []
        probe = threading.Thread(target=lambda: results.append(post(client, up.url).status_code))
        probe.start()
        up.wait_arrivals(2)  # the probe is in flight
        assert pipeline.health.status[up.url].probes_left == 0
        with pytest.raises(CircuitOpenError):
            client.post(up.url + "/v1/chat/completions", json=BODY, timeout=5)  # (fails, not hangs, if sent)
        up.release()
        probe.join()
        assert results == [200]
        assert pipeline.plugin("breaker").state(up.url) == "closed"
        client.close()


def test_failure_rate_over_the_window_needs_min_calls(upstream: Any) -> None:
    client, pipeline = client_for({
        "plugins": ["breaker"],
        "breaker": {"consecutive_failures": 0, "min_calls": 10, "failure_rate": 0.5, "window": 30.0},
    })
    breaker: Breaker = pipeline.plugin("breaker")
    for _ in range(5):
        assert post(client, upstream.url).status_code == 200
    upstream.behavior.status_override = 502
    for _ in range(4):
        post(client, upstream.url)
    assert breaker.state(upstream.url) == "closed"  # 4/9 failed, and fewer than min_calls
    post(client, upstream.url)
    assert breaker.state(upstream.url) == "open"  # 5/10 = 50%
    assert "5/10 calls failed" in breaker.transitions[-1].reason
    client.close()


def test_other_4xx_are_successes_and_reset_consecutive(upstream: Any) -> None:
    client, pipeline = client_for({"plugins": ["breaker"], "breaker": {"consecutive_failures": 2}})
    upstream.behavior.update(fail_next=1, failure_status=500)
    post(client, upstream.url)
    upstream.behavior.update(fail_next=1, failure_status=400)
    assert post(client, upstream.url).status_code == 400
    upstream.behavior.update(fail_next=1, failure_status=500)
    post(client, upstream.url)
    assert pipeline.plugin("breaker").state(upstream.url) == "closed"
    client.close()


def test_429_marks_rate_limited_and_is_not_a_failure(upstream: Any) -> None:
    client, pipeline = client_for({"plugins": ["breaker"], "breaker": {"consecutive_failures": 2}})
    upstream.behavior.rpm = 1
    assert post(client, upstream.url).status_code == 200
    before = time.monotonic()
    for _ in range(3):
        response = post(client, upstream.url)
        assert response.status_code == 429
    status = pipeline.health.status[upstream.url]
    assert pipeline.plugin("breaker").state(upstream.url) == "closed"
    assert status.reason == "rate_limited"
    # Blocked until now + Retry-After, as the upstream said.
    assert status.blocked_until >= before + int(response.headers["retry-after"]) - 1
    assert pipeline.stats.counters["breaker_rate_limited"] == 3
    assert pipeline.stats.counters["breaker_open"] == 0
    client.close()


@pytest.mark.anyio
async def test_connect_errors_trip_async_client() -> None:
    url = dead_url()
    pipeline = Pipeline({"plugins": ["breaker"], "breaker": {"consecutive_failures": 2, "open_for": 30}})
    async with aurelis_core.instrument(httpx.AsyncClient(), pipeline=pipeline) as client:
        for _ in range(2):
            with pytest.raises(httpx.ConnectError):
                await client.post(url + "/v1/chat/completions", json=BODY)
        with pytest.raises(CircuitOpenError):
            await client.post(url + "/v1/chat/completions", json=BODY)
    assert pipeline.plugin("breaker").state(url) == "open"


def test_failover_routes_around_an_open_circuit(upstream: Any) -> None:
    dead = dead_url()
    client, pipeline = client_for({
        "plugins": ["round_robin", "breaker", "retry"],
        "endpoints": [{"url": dead, "name": "dead"}, {"url": upstream.url, "name": "live"}],
        "breaker": {"consecutive_failures": 2, "open_for": 60},
        "retry": {"base": 0.0},
    })
    for _ in range(12):
        assert client.post("http://placeholder.invalid/v1/chat/completions", json=BODY).status_code == 200
    breaker: Breaker = pipeline.plugin("breaker")
    assert breaker.state("dead") == "open"
    assert upstream.count() == 12
    # Only the attempts before the trip reached the dead endpoint; every one of them was retried on "live".
    assert pipeline.stats.counters["retries"] == 2
    client.close()


def test_bad_config_names_the_problem() -> None:
    with pytest.raises(ConfigError, match="failure_rate"):
        Pipeline({"plugins": ["breaker"], "breaker": {"failure_rate": 1.5}})
    with pytest.raises(ConfigError, match="failure_rate"):  # a rate of 0 would open on no failure at all
        Pipeline({"plugins": ["breaker"], "breaker": {"failure_rate": 0}})
    Pipeline({"plugins": ["breaker"], "breaker": {"failure_rate": 1}})
    with pytest.raises(ConfigError, match="valid: "):
        Pipeline({"plugins": ["breaker"], "breaker": {"open_time": 3}})
