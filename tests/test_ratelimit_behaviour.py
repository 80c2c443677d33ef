"""The ``ratelimit`` plugin's reservations and settlements, exactly, on a fake clock (``limiter.local.clock``),
through real loopback requests: which limits apply, what is reserved, what is refunded or corrected."""

from __future__ import annotations

import gzip
import json
import logging
import socket
import uuid
from typing import Any

import httpx
import pytest
import redis
from support import FakeClock, gated_upstream

import aurelis_core
from aurelis_core import Attempt, Pipeline, RequestContext, hookimpl
from aurelis_core.health import EndpointUnavailable
from aurelis_core.testing import SimulatedServer
from aurelis_plugins.ratelimit import RateLimit, RateLimitConfig, RateLimitTimeout

CHAT = "/v1/chat/completions"
BODY = {"model": "sim-chat", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 50}


def limited(table: dict[str, Any], *plugins: object, endpoints: list[dict[str, Any]] | None = None,
            names: tuple[str, ...] = ("ratelimit",)) -> tuple[httpx.Client, RateLimit, FakeClock]:
    config: dict[str, Any] = {"plugins": list(names), "ratelimit": table}
    if endpoints:
        config["endpoints"] = endpoints
    pipeline = Pipeline(config, plugins=plugins)
    limiter: RateLimit = pipeline.plugin("ratelimit")
    clock = limiter.local.clock = FakeClock()
    return pipeline.instrument(httpx.Client(timeout=10)), limiter, clock


def post(client: httpx.Client, url: str, body: dict[str, Any] = BODY, **kwargs: Any) -> httpx.Response:
    return client.post(url + CHAT, json=body, **kwargs)


def refused(client: httpx.Client, url: str, body: dict[str, Any] = BODY, **kwargs: Any) -> RateLimitTimeout:
    with pytest.raises(RateLimitTimeout) as error:
        post(client, url, body, **kwargs)
    return error.value


def request_bytes(client: httpx.Client, url: str, body: dict[str, Any]) -> int:
    return len(client.build_request("POST", url + CHAT, json=body).content)


# --- which limits --------------------------------------------------------------------------------------------


def test_an_endpoints_own_limits_win_over_the_tables(upstream: SimulatedServer) -> None:
    client, limiter, _ = limited({"rpm": 10, "tpm": 100_000}, endpoints=[{"url": upstream.url, "name": "a", "rpm": 3}])
    post(client, "http://placeholder.invalid")
    assert limiter.remaining("a") == 2.0  # its own 3, not the table's 10
    assert limiter.remaining("a", "tokens") is not None  # no tpm of its own: the table's applies
    assert limiter.remaining("nobody") is None
    client.close()

    client, limiter, _ = limited({}, endpoints=[{"url": upstream.url, "name": "a", "tpm": 1000}])
    post(client, "http://placeholder.invalid")
    assert limiter.remaining("a") is None  # no request limit anywhere
    assert limiter.remaining("a", "tokens") is not None
    client.close()


def test_without_any_limit_nothing_is_reserved(upstream: SimulatedServer) -> None:
    client, limiter, _ = limited({"max_wait": 0})
    for _ in range(5):
        assert post(client, upstream.url).status_code == 200
    assert limiter.remaining(upstream.url) is None
    client.close()


@pytest.mark.parametrize(("burst", "goes"), [(1.0, 4), (0.5, 2), (0.1, 1)])
def test_burst_is_the_share_of_a_periods_budget_that_may_go_at_once_at_least_one(
    upstream: SimulatedServer, burst: float, goes: int
) -> None:
    client, _limiter, _ = limited({"rpm": 4, "period": 1.0, "burst": burst, "max_wait": 0})
    for _ in range(goes):
        assert post(client, upstream.url).status_code == 200
    error = refused(client, upstream.url)
    assert error.retry_after == 0.25  # one request per 0.25 s, whatever the burst
    assert upstream.count() == goes
    client.close()


def test_a_period_refills_one_request_per_interval(upstream: SimulatedServer) -> None:
    client, limiter, clock = limited({"rpm": 4, "period": 1.0, "max_wait": 0})
    for _ in range(4):
        post(client, upstream.url)
    assert refused(client, upstream.url).retry_after == 0.25
    clock.advance(0.125)
    assert refused(client, upstream.url).retry_after == 0.125
    clock.advance(0.125)
    assert post(client, upstream.url).status_code == 200
    assert limiter.remaining(upstream.url) == 0.0
    clock.advance(10.0)
    assert limiter.remaining(upstream.url) == 4.0  # full again, never more than the burst
    client.close()


def test_a_refusal_names_the_upstream_and_counts(upstream: SimulatedServer) -> None:
    client, _limiter, _ = limited({"rpm": 1, "max_wait": 59.5})
    post(client, upstream.url)
    error = refused(client, upstream.url)
    assert isinstance(error, EndpointUnavailable) and error.endpoint == upstream.url
    assert error.retry_after == 60.0
    assert str(error) == f"rate limit for {upstream.url}: capacity in 60.00s, more than max_wait 59.5s"
    assert aurelis_core.pipeline_of(client).stats.counters["ratelimit_rejected"] == 1  # type: ignore[union-attr]
    assert aurelis_core.pipeline_of(client).stats.counters["ratelimit_waited"] == 0  # type: ignore[union-attr]
    client.close()


# --- what is reserved ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "completion"), [
    ({**BODY, "max_tokens": 50}, 50),
    ({"model": "m", "messages": [], "max_completion_tokens": 70}, 70),
    ({"model": "m", "messages": []}, 1024),
])
def test_a_chat_request_reserves_its_bytes_per_token_plus_its_completion_budget(
    upstream: SimulatedServer, body: dict[str, Any], completion: int
) -> None:
    client, limiter, _ = limited({"tpm": 100_000, "chars_per_token": 2.0})
    post(client, upstream.url, body)  # not read by the pipeline (no cache): the estimate stays charged
    estimate = int(request_bytes(client, upstream.url, body) / 2.0) + completion
    assert limiter.remaining(upstream.url, "tokens") == pytest.approx(100_000 - estimate)
    client.close()


def test_an_embeddings_request_reserves_no_completion(upstream: SimulatedServer) -> None:
    client, limiter, _ = limited({"tpm": 100_000, "default_max_tokens": 500})
    body = {"model": "sim-embed", "input": "some text"}
    client.post(upstream.url + "/v1/embeddings", json=body)
    size = len(client.build_request("POST", upstream.url + "/v1/embeddings", json=body).content)
    assert limiter.remaining(upstream.url, "tokens") == pytest.approx(100_000 - int(size / 4.0))
    client.close()


def test_a_request_limit_costs_one_whatever_the_tokens(upstream: SimulatedServer) -> None:
    client, limiter, _ = limited({"rpm": 10, "tpm": 100_000})
    post(client, upstream.url, {**BODY, "max_tokens": 5000})
    assert limiter.remaining(upstream.url) == 9.0
    client.close()


# --- how it is settled ---------------------------------------------------------------------------------------


def test_a_read_answer_settles_with_its_usage(upstream: SimulatedServer) -> None:
    client, limiter, _ = limited({"tpm": 100_000}, names=("normalize", "memory", "ratelimit"))
    usage = post(client, upstream.url).json()["usage"]["total_tokens"]
    assert limiter.remaining(upstream.url, "tokens") == pytest.approx(100_000 - usage)
    client.close()


def test_a_compressed_answer_settles_with_its_decoded_usage() -> None:
    with gated_upstream() as up:
        up.headers = {"content-encoding": "gzip"}
        up.body = gzip.compress(json.dumps({"choices": [], "usage": {"total_tokens": 7}}).encode())
        client, limiter, _ = limited({"tpm": 100_000}, names=("normalize", "memory", "ratelimit"))
        post(client, up.url)
        assert limiter.remaining(up.url, "tokens") == pytest.approx(100_000 - 7)
        up.headers = {"content-encoding": "zstd-unknown"}
        post(client, up.url, {**BODY, "max_tokens": 51})  # a coding we cannot read: the estimate stays
        estimate = int(request_bytes(client, up.url, {**BODY, "max_tokens": 51}) / 4.0) + 51
        assert limiter.remaining(up.url, "tokens") == pytest.approx(100_000 - 7 - estimate)
        up.headers = {"content-encoding": "gzip"}
        up.body = b'{"usage": {"total_tokens": 9}}'  # labelled gzip, but not: it does not decode
        with pytest.raises(httpx.DecodingError):  # (nor for the caller)
            post(client, up.url, {**BODY, "max_tokens": 52})
        estimate2 = int(request_bytes(client, up.url, {**BODY, "max_tokens": 52}) / 4.0) + 52
        assert limiter.remaining(up.url, "tokens") == pytest.approx(100_000 - 7 - estimate - estimate2)
        client.close()


def test_an_error_answer_keeps_its_estimate_even_with_a_usage_block() -> None:
    with gated_upstream() as up:
        up.status = 400
        up.body = json.dumps({"error": {}, "usage": {"total_tokens": 7}}).encode()
        client, limiter, _ = limited({"tpm": 100_000}, names=("normalize", "memory", "ratelimit"))
        assert post(client, up.url).status_code == 400
        estimate = int(request_bytes(client, up.url, BODY) / 4.0) + 50
        assert limiter.remaining(up.url, "tokens") == pytest.approx(100_000 - estimate)
        client.close()


def dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_an_attempt_that_never_reached_the_upstream_is_refunded() -> None:
    url = dead_url()
    client, limiter, _ = limited({"rpm": 2, "tpm": 10_000, "max_wait": 0})
    for _ in range(3):
        with pytest.raises(httpx.ConnectError):
            post(client, url)
    assert limiter.remaining(url) == 2.0 and limiter.remaining(url, "tokens") == pytest.approx(10_000.0)
    client.close()


class RefuseAfter:
    """Raises ``error`` from ``aurelis_admit`` once armed (after the rate limiter reserved)."""

    name = "refuse_after"

    def __init__(self) -> None:
        self.error: BaseException | None = None

    @hookimpl
    def aurelis_admit(self, ctx: RequestContext, attempt: Attempt) -> None:
        error, self.error = self.error, None
        if error is not None:
            raise error


def test_a_refusal_before_sending_is_refunded_a_plugin_error_is_not(upstream: SimulatedServer) -> None:
    refuser = RefuseAfter()
    client, limiter, _ = limited({"rpm": 10}, refuser)
    refuser.error = EndpointUnavailable("circuit open", upstream.url)
    with pytest.raises(EndpointUnavailable):
        post(client, upstream.url)
    assert limiter.remaining(upstream.url) == 10.0
    refuser.error = RuntimeError("a plugin's own bug")
    with pytest.raises(RuntimeError):
        post(client, upstream.url)
    assert limiter.remaining(upstream.url) == 9.0  # not known to be unsent: it stays charged
    client.close()


def test_fewer_requests_left_upstream_move_the_local_state_more_never_do(upstream: SimulatedServer) -> None:
    client, limiter, _ = limited({"rpm": 10, "max_wait": 0})  # one request per 6 s of a 60 s period
    upstream.behavior.headers = {"x-ratelimit-remaining-requests": "2"}
    post(client, upstream.url)
    assert limiter.remaining(upstream.url) == 2.0  # the server's count, lower than our 9
    upstream.behavior.headers = {"x-ratelimit-remaining-requests": "8"}
    post(client, upstream.url)
    assert limiter.remaining(upstream.url) == 1.0  # ours is lower: kept
    upstream.behavior.headers = {"x-ratelimit-remaining-requests": "many"}
    post(client, upstream.url)
    assert limiter.remaining(upstream.url) == 0.0  # unreadable: ignored
    client.close()


def test_none_left_upstream_holds_the_next_request_until_the_reset(upstream: SimulatedServer) -> None:
    client, _limiter, clock = limited({"rpm": 10, "max_wait": 0})
    upstream.behavior.headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "30s"}
    post(client, upstream.url)
    assert refused(client, upstream.url).retry_after == 30.0
    clock.advance(30.0)
    upstream.behavior.headers = {}
    assert post(client, upstream.url).status_code == 200
    client.close()


def test_none_left_without_a_reset_waits_for_the_local_refill(upstream: SimulatedServer) -> None:
    client, _, _ = limited({"rpm": 10, "max_wait": 0})
    upstream.behavior.headers = {"x-ratelimit-remaining-requests": "0"}
    post(client, upstream.url)
    assert refused(client, upstream.url).retry_after == 6.0
    client.close()


def test_token_headers_correct_the_token_limit(upstream: SimulatedServer) -> None:
    client, limiter, _ = limited({"rpm": 100, "tpm": 60_000})  # tokens: 1 ms each, 60 s of burst
    upstream.behavior.headers = {"x-ratelimit-remaining-tokens": "1000", "x-ratelimit-remaining-requests": "99"}
    post(client, upstream.url)
    assert limiter.remaining(upstream.url, "tokens") == pytest.approx(1000.0)
    assert limiter.remaining(upstream.url) == pytest.approx(99.0)
    client.close()
    client, limiter, _ = limited({"rpm": 100, "tpm": 60_000})
    upstream.behavior.headers = {"x-ratelimit-remaining-tokens": "59500"}  # a small correction (0.5 s) counts too
    post(client, upstream.url)
    assert limiter.remaining(upstream.url, "tokens") == pytest.approx(59_500.0)
    client.close()


def test_a_429_holds_the_next_request_until_its_retry_after(upstream: SimulatedServer) -> None:
    client, _limiter, clock = limited({"rpm": 100, "max_wait": 0})
    upstream.behavior.update(fail_next=1, failure_status=429, headers={"retry-after": "30"})
    assert post(client, upstream.url).status_code == 429
    assert refused(client, upstream.url).retry_after == pytest.approx(30.0)
    clock.advance(30.0)
    upstream.behavior.headers = {}
    assert post(client, upstream.url).status_code == 200
    client.close()


def test_a_retry_after_on_a_success_is_not_a_hold(upstream: SimulatedServer) -> None:
    client, limiter, _ = limited({"rpm": 100, "max_wait": 0})
    upstream.behavior.headers = {"retry-after": "30", "x-ratelimit-limit-requests": "100"}
    post(client, upstream.url)
    assert limiter.remaining(upstream.url) == pytest.approx(99.0)
    client.close()


def test_upstream_headers_never_touch_a_credentials_limit(upstream: SimulatedServer) -> None:
    client, _, _ = limited({"credential_rpm": 10, "max_wait": 0})
    upstream.behavior.headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "30s"}
    client.headers["authorization"] = "Bearer sk-one"
    for _ in range(3):
        assert post(client, upstream.url).status_code == 200
    client.close()


# --- credentials ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("header", ["authorization", "api-key", "x-api-key"])
def test_a_credential_limit_follows_the_key_across_upstreams(
    upstream: SimulatedServer, upstream_factory: Any, header: str
) -> None:
    other = upstream_factory()
    client, _, _ = limited({"credential_rpm": 2, "max_wait": 0})
    client.headers[header] = "sk-shared"
    post(client, upstream.url)
    post(client, other.url)  # another upstream, the same credential: the same budget
    refused(client, upstream.url)
    client.headers[header] = "sk-another"
    assert post(client, upstream.url).status_code == 200
    client.close()


def test_every_credential_the_attempt_sends_is_the_key(upstream: SimulatedServer) -> None:
    # The tenant definition's credentials, all of them: headers and query parameters alike.
    client, _, _ = limited({"credential_rpm": 1, "max_wait": 0})
    post(client, upstream.url, headers={"authorization": "Bearer a", "api-key": "x"})
    post(client, upstream.url, headers={"authorization": "Bearer b", "api-key": "x"})  # a different credential
    post(client, upstream.url, headers={"authorization": "Bearer a", "x-api-key": "y"})  # so is this set
    refused(client, upstream.url, headers={"authorization": "Bearer a", "api-key": "x"})
    post(client, upstream.url, headers={"authorization": "Bearer a", "api-key": "x"}, params={"key": "q1"})
    client.close()


def test_credential_token_limits(upstream: SimulatedServer) -> None:
    client, _, _ = limited({"credential_tpm": 200, "max_wait": 0})
    post(client, upstream.url, {**BODY, "max_tokens": 100}, headers={"authorization": "Bearer a"})
    error = refused(client, upstream.url, {**BODY, "max_tokens": 100}, headers={"authorization": "Bearer a"})
    assert error.retry_after is not None and error.retry_after > 0
    client.close()


@pytest.mark.redis
def test_redis_keys_hold_a_fingerprint_never_the_credential(upstream: SimulatedServer, redis_flush: str) -> None:
    client, _, _ = limited({"credential_rpm": 5, "rpm": 5, "redis_url": redis_flush, "key_prefix": "rl-test:"})
    post(client, upstream.url, headers={"authorization": "Bearer sk-very-secret"})
    keys = [k.decode() for k in redis.Redis.from_url(redis_flush).keys("*")]
    assert keys and all(k.startswith("rl-test:") for k in keys)
    assert not any("sk-very-secret" in k for k in keys)
    assert any(k.startswith("rl-test:cred:") for k in keys) and any(k.startswith("rl-test:up:") for k in keys)
    client.close()


# --- shared limits -------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_an_async_client_falls_back_to_local_limits_when_redis_fails(upstream: SimulatedServer,
                                                                           caplog: Any) -> None:
    pipeline = Pipeline({"plugins": ["ratelimit"], "ratelimit": {
        "rpm": 1, "max_wait": 0, "redis_url": "redis://127.0.0.1:1/0"}})
    pipeline.plugin("ratelimit").local.clock = FakeClock()
    with caplog.at_level(logging.WARNING, logger="aurelis"):
        async with pipeline.instrument(httpx.AsyncClient(timeout=10)) as client:
            assert (await client.post(upstream.url + CHAT, json=BODY)).status_code == 200
            with pytest.raises(RateLimitTimeout):
                await client.post(upstream.url + CHAT, json=BODY)
    # The first reservation found Redis down; the second did not ask it again (cooling off).
    assert pipeline.stats.counters["ratelimit_redis_errors"] == 1
    assert pipeline.stats.counters["ratelimit_redis_skipped"] == 1
    warnings = [r for r in caplog.records if r.name == "aurelis.ratelimit" and "Redis failed" in r.getMessage()]
    assert len(warnings) == 1 and "(1 so far)" in warnings[0].getMessage()  # logged once per burst


@pytest.mark.redis
def test_shared_limits_count_across_pipelines(upstream: SimulatedServer, redis_flush: str) -> None:
    table = {"rpm": 2, "max_wait": 0, "redis_url": redis_flush}
    first, _, _ = limited(table)
    second, _, _ = limited(table)
    post(first, upstream.url)
    post(second, upstream.url)
    refused(first, upstream.url)
    refused(second, upstream.url)
    first.close()
    second.close()


@pytest.mark.redis
def test_a_shared_limit_serves_every_event_loop_and_closes_their_clients(
    upstream: SimulatedServer, redis_flush: str
) -> None:
    # An asyncio client belongs to the loop that made it: one loop after another (``asyncio.run`` per call), or
    # threads each running one, each get their own, so no reservation fails (a client of a closed loop raised
    # "Event loop is closed" into the request), and closing the pipeline closes every live loop's.
    import asyncio
    import gc
    import time

    from support import live_loops

    pipeline = Pipeline({"plugins": ["ratelimit"], "ratelimit": {"rpm": 4, "max_wait": 0, "redis_url": redis_flush}})

    async def send() -> int:
        async with httpx.AsyncClient(timeout=10) as client:
            pipeline.instrument(client)
            return (await client.post(upstream.url + CHAT, json=BODY)).status_code

    server = redis.Redis.from_url(redis_flush)
    try:
        assert [asyncio.run(send()) for _ in range(2)] == [200, 200]  # two loops, one after the other
        gc.collect()  # the closed loops' clients, dropped, and their connections go now rather than later
        before = int(server.info("clients")["connected_clients"])
        with live_loops(2) as loops:
            assert [asyncio.run_coroutine_threadsafe(send(), loop).result(10) for loop in loops] == [200, 200]
            assert int(server.info("clients")["connected_clients"]) <= before + 2  # one per loop at most
            pipeline.close()
            deadline = time.monotonic() + 10  # each loop closes its own, on its thread
            while int(server.info("clients")["connected_clients"]) > before and time.monotonic() < deadline:
                time.sleep(0.02)
            assert int(server.info("clients")["connected_clients"]) <= before
        # The four a minute were all spent through Redis: none fell back to the local limits.
        assert not pipeline.stats.counters["ratelimit_redis_errors"]
        with pytest.raises(RateLimitTimeout):
            asyncio.run(send())
    finally:
        server.close()


@pytest.mark.redis
def test_a_shared_limit_refunds_an_unsent_attempt_through_redis(redis_flush: str) -> None:
    url = dead_url()
    client, _, _ = limited({"rpm": 1, "max_wait": 0, "redis_url": redis_flush})
    for _ in range(3):  # each would be refused if the one before had kept its request
        with pytest.raises(httpx.ConnectError):
            post(client, url)
    client.close()


def named(url: str) -> str:
    """`url` with a client name of its own: other tests' pools may close while this one counts."""
    return f"{url}?client_name=aurelis-test-{uuid.uuid4().hex}"


def redis_clients(url: str) -> int:
    """How many connections the server holds under `url`'s client name."""
    name = url.rsplit("client_name=", 1)[1]
    probe = redis.Redis.from_url(url.split("?", 1)[0])
    try:
        return sum(1 for client in probe.client_list() if client.get("name") == name)
    finally:
        probe.close()


@pytest.mark.redis
def test_closing_the_pipeline_releases_its_redis_connections(upstream: SimulatedServer, redis_flush: str) -> None:
    url = named(redis_flush)
    pipeline = Pipeline({"plugins": ["ratelimit"], "ratelimit": {"rpm": 100, "redis_url": url}})
    with pipeline.instrument(httpx.Client(timeout=10)) as client:
        post(client, upstream.url)
        assert redis_clients(url) == 1
    pipeline.close()  # a pipeline passed in is closed by its owner, not by the client
    assert redis_clients(url) == 0


@pytest.mark.redis
@pytest.mark.anyio
async def test_closing_an_async_pipeline_releases_its_redis_connections(upstream: SimulatedServer,
                                                                        redis_flush: str) -> None:
    url = named(redis_flush)
    async with aurelis_core.instrument(httpx.AsyncClient(timeout=10), {"plugins": ["ratelimit"], "ratelimit": {
            "rpm": 100, "redis_url": url}}) as client:
        await client.post(upstream.url + CHAT, json=BODY)
        assert redis_clients(url) == 1
    assert redis_clients(url) == 0


def test_redis_failures_are_logged_once_per_burst(upstream: SimulatedServer, caplog: Any) -> None:
    # A cool-off this short lets every reservation ask the dead Redis again, so each one fails and is counted.
    client, _, _ = limited({"rpm": 1000, "redis_url": "redis://127.0.0.1:1/0", "redis_cooloff": 1e-9})
    with caplog.at_level(logging.WARNING, logger="aurelis"):
        for _ in range(101):
            post(client, upstream.url)
    counts = [r.getMessage().split("(")[1].split(" ")[0] for r in caplog.records if "Redis failed" in r.getMessage()]
    assert counts == ["1", "100"]
    client.close()


# --- configuration -------------------------------------------------------------------------------------------


def test_the_defaults_are_the_documented_ones() -> None:
    config = RateLimitConfig()
    assert (config.rpm, config.tpm, config.credential_rpm, config.credential_tpm) == (None, None, None, None)
    assert (config.period, config.burst, config.max_wait, config.redis_url) == (60.0, 1.0, 30.0, None)
    assert (config.key_prefix, config.default_max_tokens, config.chars_per_token) == ("aurelis:ratelimit:", 1024, 4.0)
    assert (config.redis_timeout, config.redis_cooloff) == (0.15, 2.0)


@pytest.mark.parametrize("bad", [
    {"rpm": 0}, {"tpm": -1}, {"credential_rpm": True}, {"credential_tpm": 1.5}, {"burst": 1.01}, {"burst": 0},
    {"period": 0}, {"max_wait": -1}, {"chars_per_token": 0}, {"default_max_tokens": -1},
])
def test_bad_config_is_refused(bad: dict[str, Any]) -> None:
    from aurelis_core import ConfigError

    with pytest.raises(ConfigError, match=next(iter(bad))):
        Pipeline({"plugins": ["ratelimit"], "ratelimit": bad})


def test_limits_at_their_bounds_are_accepted() -> None:
    RateLimitConfig(rpm=1, tpm=1, credential_rpm=1, credential_tpm=1, burst=1.0, max_wait=0, default_max_tokens=0)


def test_a_tiny_burst_still_holds_one_request(upstream: SimulatedServer) -> None:
    client, limiter, clock = limited({"rpm": 4, "period": 1.0, "burst": 0.1, "max_wait": 0})
    post(client, upstream.url)
    clock.advance(10.0)
    assert limiter.remaining(upstream.url) == 1.0  # 0.1 of 4 is less than one request: one, not 0.4
    client.close()


def test_upstream_token_headers_never_touch_a_credentials_token_limit(upstream: SimulatedServer) -> None:
    client, _, _ = limited({"credential_tpm": 100_000, "max_wait": 0})
    upstream.behavior.headers = {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "30s"}
    client.headers["authorization"] = "Bearer sk-one"
    for _ in range(3):
        assert post(client, upstream.url).status_code == 200
    client.close()


def test_a_redis_failure_is_one_line_and_its_traceback_is_debug(upstream: SimulatedServer, caplog: Any) -> None:
    # A Redis that refuses connections is an expected fault: one warning naming where and why, the traceback
    # (redis-py's socket internals) only for someone who turned aurelis.ratelimit up to DEBUG.
    client, _, _ = limited({"rpm": 1000, "redis_url": "redis://127.0.0.1:1/0"})
    with caplog.at_level(logging.DEBUG, logger="aurelis.ratelimit"):
        post(client, upstream.url)
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING and "Redis failed" in r.getMessage()]
    assert warning.name == "aurelis.ratelimit" and warning.exc_info is None
    assert "127.0.0.1:1" in warning.getMessage() and "ConnectionError" in warning.getMessage()
    [debug] = [r for r in caplog.records if r.levelno == logging.DEBUG and "Redis failed" in r.getMessage()]
    assert debug.exc_info is not None and issubclass(debug.exc_info[0], redis.RedisError)  # type: ignore[index]
    client.close()


def test_closing_a_pipeline_with_local_limits_only(upstream: SimulatedServer) -> None:
    client = aurelis_core.instrument(httpx.Client(timeout=10), {"plugins": ["ratelimit"], "ratelimit": {"rpm": 10}})
    assert post(client, upstream.url).status_code == 200
    client.close()  # closes the pipeline it made: nothing shared to release, and nothing fails
