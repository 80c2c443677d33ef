"""The ``retry`` plugin against real loopback upstreams: what is retried, when, how often, and where."""

from __future__ import annotations

import email.utils
import socket
import time
from typing import Any

import httpx
import openai
import pytest
from aurelis_plugins.retry import Retry, RetryState

import aurelis_core
from aurelis_core import Pipeline, RequestContext, hookimpl
from aurelis_core.health import retry_after

BODY = {"model": "sim-chat", "messages": [{"role": "user", "content": "hello there"}]}


def dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class Capture:
    """Keeps each finished request's ``ctx.state["retry"]``, as a router or exporter would read it."""

    name = "capture"

    def __init__(self) -> None:
        self.states: list[RetryState | None] = []

    @hookimpl
    def aurelis_observe(self, ctx: RequestContext) -> None:
        self.states.append(ctx.state.get("retry"))


def client_for(config: dict[str, Any], *extra: object) -> tuple[httpx.Client, Pipeline]:
    pipeline = Pipeline(config, plugins=list(extra))
    return pipeline.instrument(httpx.Client(timeout=5)), pipeline


def post(client: httpx.Client, base: str) -> httpx.Response:
    return client.post(base + "/v1/chat/completions", json=BODY)


@pytest.mark.parametrize("header", [("retry-after-ms", "400"), ("retry-after", "1"), ("x-ms-retry-after-ms", "300")])
def test_waits_what_the_latest_failure_asked(upstream: Any, header: tuple[str, str]) -> None:
    client, _ = client_for({"plugins": ["retry"], "retry": {"base": 0.0, "cap": 0.0}})  # no backoff of its own
    upstream.behavior.update(fail_next=1, failure_status=503, headers=dict([header]))
    assert post(client, upstream.url).status_code == 200
    first, second = upstream.requests
    asked = float(header[1]) / (1 if header[0] == "retry-after" else 1000)
    assert second.time - first.time >= asked
    client.close()


def test_retry_after_parsing() -> None:
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert retry_after({"retry-after": date}, now=now) == pytest.approx(30, abs=1)
    assert retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after({"retry-after": "soon"}) is None
    assert retry_after({"retry-after": "-3"}) is None


def test_gives_up_after_max_attempts_and_returns_the_last_answer(upstream: Any) -> None:
    client, pipeline = client_for({"plugins": ["retry"], "retry": {"max_attempts": 3, "base": 0.01}})
    upstream.behavior.status_override = 503
    assert post(client, upstream.url).status_code == 503
    assert upstream.count() == 3
    assert pipeline.stats.counters["retries"] == 2
    client.close()


def test_does_not_retry_client_errors_or_when_told_not_to(upstream: Any) -> None:
    client, _ = client_for({"plugins": ["retry"], "retry": {"base": 0.0}})
    upstream.behavior.update(fail_next=1, failure_status=400)
    assert post(client, upstream.url).status_code == 400
    upstream.behavior.update(fail_next=1, failure_status=500, headers={"x-should-retry": "false"})
    assert post(client, upstream.url).status_code == 500
    assert upstream.count() == 2
    client.close()


def test_budget_bounds_extra_load(upstream: Any) -> None:
    client, pipeline = client_for({
        "plugins": ["retry"],
        "retry": {"max_attempts": 5, "base": 0.0, "budget_ratio": 0.2, "budget_burst": 2.0},
    })
    upstream.behavior.status_override = 500
    requests = 20
    for _ in range(requests):
        post(client, upstream.url)
    retries = upstream.count() - requests
    # Without a budget this would be 4 retries per request (80); with it, the burst plus 20% of the traffic.
    assert 0 < retries <= 2 + 0.2 * requests
    assert pipeline.stats.counters["retry_budget_exhausted"] > 0
    assert pipeline.plugin("retry").budget >= 0
    client.close()


def test_deadline_bounds_the_waits(upstream: Any) -> None:
    client, pipeline = client_for({"plugins": ["retry"], "retry": {"max_attempts": 50, "deadline": 1.0}})
    upstream.behavior.update(status_override=503, headers={"retry-after-ms": "300"})
    post(client, upstream.url)
    times = [r.time for r in upstream.requests]
    assert len(times) >= 3
    assert times[-1] - times[0] < 1.0  # no attempt started past the deadline
    assert pipeline.stats.counters["retry_deadline"] == 1
    client.close()


def test_connect_errors_are_retried_then_raised() -> None:
    client, pipeline = client_for({"plugins": ["retry"], "retry": {"max_attempts": 3, "base": 0.01}})
    with pytest.raises(httpx.ConnectError):
        post(client, dead_url())
    assert pipeline.stats.counters["retries"] == 2
    client.close()


def test_stream_is_never_retried_after_its_first_byte(upstream: Any) -> None:
    client, _ = client_for({"plugins": ["retry"], "retry": {"base": 0.0}})
    upstream.behavior.truncate_stream_after = 2
    with pytest.raises(httpx.RemoteProtocolError):
        with client.stream("POST", upstream.url + "/v1/chat/completions", json={**BODY, "stream": True}) as r:
            assert r.status_code == 200
            for _ in r.iter_bytes():
                pass
    assert upstream.count() == 1
    client.close()


def test_fails_over_at_once_to_a_healthy_endpoint(upstream_factory: Any) -> None:
    busy = upstream_factory(rpm=1)  # its 429 asks for ~60 s
    spare = upstream_factory()
    capture = Capture()
    client, _ = client_for({
        "plugins": ["round_robin", "retry"],
        "endpoints": [{"url": busy.url, "name": "busy"}, {"url": spare.url, "name": "spare"}],
    }, capture)
    statuses = [post(client, "http://placeholder.invalid").status_code for _ in range(4)]
    assert statuses == [200] * 4
    retried = [s for s in capture.states if s is not None]
    assert retried, "the busy endpoint's 429 should have been retried"
    for state in retried:
        assert state.failed == {"busy"}
        assert state.waits == [0.0]  # not the 60 s the busy endpoint asked for: another endpoint was free
    client.close()


@pytest.mark.anyio
async def test_openai_sdk_through_retry(upstream: Any) -> None:
    pipeline = Pipeline({"plugins": ["retry"], "retry": {"base": 0.01}})
    import httpx2

    http_client = aurelis_core.instrument(httpx2.AsyncClient(), pipeline=pipeline)
    llm = openai.AsyncOpenAI(base_url=upstream.base_url, api_key="k", http_client=http_client, max_retries=0)
    upstream.behavior.update(fail_next=2, failure_status=502)
    answer = await llm.chat.completions.create(model="sim-chat", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "echo: hi"
    assert upstream.count() == 3
    assert isinstance(pipeline.plugin("retry"), Retry)
    await http_client.aclose()
