"""The ``ratelimit`` plugin: local and Redis-shared GCRA limits against real loopback upstreams."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import httpx
import pytest
from support import FakeClock

import aurelis_core
from aurelis_core import Attempt, ConfigError, Pipeline, RequestContext, hookimpl
from aurelis_plugins.ratelimit import RateLimit, RateLimitTimeout

BODY = {"model": "sim-chat", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 50}


def dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def client_for(config: dict[str, Any], clock: FakeClock | None = None) -> tuple[httpx.Client, Pipeline]:
    pipeline = Pipeline(config)
    if clock is not None:
        pipeline.plugin("ratelimit").local.clock = clock  # the limiter's time passes only when the test says
    return pipeline.instrument(httpx.Client(timeout=10)), pipeline


def post(client: httpx.Client, base: str, body: dict[str, Any] = BODY) -> httpx.Response:
    return client.post(base + "/v1/chat/completions", json=body)


class SendTimes:
    """Records the limiter's clock as each attempt is about to be sent (after any wait for capacity)."""

    name = "send_times"

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.times: list[float] = []

    @hookimpl
    def aurelis_compress(self, ctx: RequestContext, attempt: Attempt) -> None:
        self.times.append(self.clock())


def test_requests_are_spaced_to_the_limit(upstream: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    client, pipeline = client_for({"plugins": ["ratelimit"], "ratelimit": {"rpm": 4, "period": 1.0}}, clock)
    sent = SendTimes(clock)
    pipeline.register(sent)
    # The pipeline waits for capacity with time.sleep: here a wait moves the fake clock instead, so the waits
    # are exact whatever the machine's load (other threads, the loopback server's, still really sleep).
    caller, real_sleep = threading.get_ident(), time.sleep
    monkeypatch.setattr(time, "sleep", lambda s: clock.advance(s) if threading.get_ident() == caller else real_sleep(s))
    for _ in range(9):
        assert post(client, upstream.url).status_code == 200
    start = sent.times[0]
    # A burst of 4, then one per 0.25 s.
    assert [t - start for t in sent.times] == [0.0] * 4 + [0.25, 0.5, 0.75, 1.0, 1.25]
    assert pipeline.stats.counters["ratelimit_waited"] == 5
    assert upstream.count() == 9
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
    }, FakeClock())
    limiter: RateLimit = pipeline.plugin("ratelimit")
    post(client, upstream.url)
    left = limiter.remaining(upstream.url)
    assert left is not None and left < 2
    for _ in range(5):
        assert post(client, upstream.url).headers["x-aurelis-cache"] == "hit"
    assert limiter.remaining(upstream.url) == left
    post(client, upstream.url, {**BODY, "messages": [{"role": "user", "content": "another"}]})
    with pytest.raises(RateLimitTimeout):  # the limit was live all along
        post(client, upstream.url, {**BODY, "messages": [{"role": "user", "content": "a third"}]})
    assert upstream.count() == 2
    client.close()


def test_tokens_settle_with_usage_when_the_body_was_read(upstream: Any) -> None:
    # A cacheable answer is read whole by the pipeline: its usage replaces the estimate.
    client, pipeline = client_for({
        "plugins": ["normalize", "memory", "ratelimit"], "ratelimit": {"tpm": 10_000, "period": 3600},
    }, FakeClock())
    limiter: RateLimit = pipeline.plugin("ratelimit")
    usage = post(client, upstream.url).json()["usage"]["total_tokens"]
    assert limiter.remaining(upstream.url, "tokens") == pytest.approx(10_000 - usage)
    client.close()


def test_streamed_answer_keeps_its_estimate(upstream: Any) -> None:
    client, pipeline = client_for(
        {"plugins": ["ratelimit"], "ratelimit": {"tpm": 10_000, "period": 3600}}, FakeClock()
    )
    limiter: RateLimit = pipeline.plugin("ratelimit")
    request = client.build_request("POST", upstream.url + "/v1/chat/completions", json={**BODY, "stream": True})
    estimate = int(len(request.content) / 4) + 50
    client.send(request).read()
    assert limiter.remaining(upstream.url, "tokens") == pytest.approx(10_000 - estimate)
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
    # The first reservation found Redis down; the second did not ask it again (cooling off).
    assert pipeline.stats.counters["ratelimit_redis_errors"] == 1
    assert pipeline.stats.counters["ratelimit_redis_skipped"] == 1
    client.close()


WORKER = textwrap.dedent(
    """
    import sys, threading, httpx, aurelis_core
    url, redis_url, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    config = {"plugins": ["ratelimit"], "ratelimit": {
        "rpm": 60, "period": 2.0, "burst": 0.1, "max_wait": 60, "redis_url": redis_url}}
    client = aurelis_core.instrument(httpx.Client(timeout=30), config)
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    left = [count]
    lock = threading.Lock()
    def work():
        while True:
            with lock:
                if not left[0]:
                    return
                left[0] -= 1
            client.post(url + "/v1/chat/completions", json=body)
    print("ready", flush=True)
    sys.stdin.readline()  # start together, whatever each took to start up
    threads = [threading.Thread(target=work) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    """
)


@pytest.mark.redis
def test_two_processes_share_one_limit(upstream: Any, redis_flush: str) -> None:
    # 60 per 2 s = one request per 1/30 s, a burst of 6, shared through Redis. Two processes of 4 threads send
    # 40 requests each as fast as the limit lets them. The 80th request cannot be granted sooner than
    # (80 - 6) / 30 s after the start, whatever the load; two separate limits would have let all 80 through
    # in about half that.
    per_process = 40
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, upstream.url, redis_flush, str(per_process)],
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        for _ in range(2)
    ]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    started = time.time()  # before any request was reserved (Redis runs on this machine's clock)
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    for proc in procs:
        assert proc.wait(timeout=120) == 0
    times = sorted(r.time for r in upstream.requests)
    assert len(times) == 2 * per_process
    assert times[-1] - started >= (2 * per_process - 6) / 30.0 - 0.01  # 0.01: the script's microsecond rounding


def test_bad_config_names_the_problem() -> None:
    with pytest.raises(ConfigError, match="burst"):
        Pipeline({"plugins": ["ratelimit"], "ratelimit": {"burst": 2}})
    with pytest.raises(ConfigError, match="rpm"):
        Pipeline({"plugins": ["ratelimit"], "ratelimit": {"rpm": 0}})


ANTHROPIC_BODY = {"model": "sim-claude", "max_tokens": 50, "messages": [{"role": "user", "content": "hello there"}]}


def test_anthropic_answers_settle_and_correct_through_their_dialect(upstream: Any) -> None:
    # The answer's usage (Anthropic's input_tokens + output_tokens) settles the estimate; the upstream allows 3
    # requests and says so in anthropic-ratelimit-requests-remaining, which the local state follows.
    client, pipeline = client_for({
        "plugins": ["normalize", "memory", "ratelimit"],
        "ratelimit": {"rpm": 100, "tpm": 10_000, "period": 3600, "max_wait": 1},
    }, FakeClock())
    limiter: RateLimit = pipeline.plugin("ratelimit")
    upstream.behavior.rpm = 3
    answer = client.post(upstream.url + "/v1/messages", json=ANTHROPIC_BODY)
    assert "anthropic-ratelimit-requests-remaining" in answer.headers
    usage = answer.json()["usage"]
    assert limiter.remaining(upstream.url, "tokens") == pytest.approx(
        10_000 - usage["input_tokens"] - usage["output_tokens"])
    for n in range(2):
        assert client.post(upstream.url + "/v1/messages", json={**ANTHROPIC_BODY, "max_tokens": 40 + n}).is_success
    with pytest.raises(RateLimitTimeout):
        client.post(upstream.url + "/v1/messages", json={**ANTHROPIC_BODY, "max_tokens": 10})
    assert upstream.count("/v1/messages") == 3
    client.close()
