"""Single-flight: identical requests in flight at once make one upstream call. Real clients (httpx, httpx2,
the openai SDK) against the simulated upstream on 127.0.0.1, sync (threads) and async (tasks).

Async callers gathered at once all join before the first answer can be read (the event loop runs every ready
task before it polls the network), so those tests need no timing. Cancellations, exceptions and stream hand-overs
are tested step by step, on upstreams that hold their answers, in test_coalescing_behaviour.py."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import httpx2
import openai
import pytest
from support import gated_upstream, joined

import aurelis_core
from aurelis_core.testing import SimulatedServer

CONFIG = {"plugins": ["normalize", "memory"]}
MESSAGES = [{"role": "user", "content": "Name three rivers"}]
BODY = {"model": "sim-chat", "messages": MESSAGES, "temperature": 0}
FLAVOURS = [pytest.param(httpx, id="httpx"), pytest.param(httpx2, id="httpx2")]


def _stats(client: Any) -> Any:
    pipeline = aurelis_core.pipeline_of(client)
    assert pipeline is not None
    return pipeline.stats


@pytest.mark.anyio
@pytest.mark.parametrize("http", FLAVOURS)
async def test_100_concurrent_async_requests_make_one_call(upstream: SimulatedServer, http: Any) -> None:
    upstream.behavior.update(latency=0.3)
    client = aurelis_core.instrument(http.AsyncClient(timeout=10), CONFIG)
    url = upstream.base_url + "/chat/completions"
    responses = await asyncio.gather(*(client.post(url, json=BODY) for _ in range(100)))
    assert upstream.count("/chat/completions") == 1
    assert {r.status_code for r in responses} == {200}
    assert len({r.json()["id"] for r in responses}) == 1  # the simulator numbers every real completion
    caches = sorted((r.headers["x-aurelis-cache"], r.headers.get("x-aurelis-cache-tier")) for r in responses)
    assert caches == [("hit", "coalesced")] * 99 + [("miss", None)]
    assert aurelis_core.cache_info(responses[-1]) is not None
    assert _stats(client).counters["coalesced"] == 99
    # And the answer was stored: the next one is an ordinary hit.
    assert (await client.post(url, json=BODY)).headers["x-aurelis-cache-tier"] == "memory"
    await client.aclose()


@pytest.mark.parametrize("http", FLAVOURS)
def test_100_concurrent_sync_requests_make_one_call(http: Any) -> None:
    with gated_upstream() as up:
        client = aurelis_core.instrument(http.Client(timeout=30), CONFIG)
        pipeline = aurelis_core.pipeline_of(client)
        assert pipeline is not None
        url = up.url + "/v1/chat/completions"
        up.hold()  # the answer waits until the first 20 callers (one per thread) are in
        with ThreadPoolExecutor(20) as pool:
            calls = [pool.submit(client.post, url, json=BODY) for _ in range(100)]
            joined(pipeline, 20)
            up.release()
            responses = [c.result() for c in calls]
        # The first 20 share one call; the other 80 find its stored answer.
        assert up.arrived == 1
        assert len({r.content for r in responses}) == 1
        assert _stats(client).counters["coalesced"] == 19
        client.close()


@pytest.mark.anyio
async def test_openai_sdk_callers_share_one_call(upstream: SimulatedServer) -> None:
    upstream.behavior.update(latency=0.2)
    http_client = aurelis_core.instrument(httpx2.AsyncClient(), CONFIG)
    llm = openai.AsyncOpenAI(base_url=upstream.base_url, api_key="sk-a", http_client=http_client, max_retries=0)
    answers = await asyncio.gather(
        *(llm.chat.completions.create(model="sim-chat", messages=MESSAGES) for _ in range(10))  # type: ignore[arg-type]
    )
    assert upstream.count("/chat/completions") == 1
    assert len({a.id for a in answers}) == 1
    await llm.close()


@pytest.mark.anyio
async def test_error_response_reaches_every_follower_and_is_not_stored(upstream: SimulatedServer) -> None:
    upstream.behavior.update(latency=0.2, fail_next=1, failure_status=503)
    client = aurelis_core.instrument(httpx.AsyncClient(timeout=10), CONFIG)
    url = upstream.base_url + "/chat/completions"
    responses = await asyncio.gather(*(client.post(url, json=BODY) for _ in range(20)))
    assert upstream.count("/chat/completions") == 1
    assert {r.status_code for r in responses} == {503}
    assert len({r.content for r in responses}) == 1 and b"Simulated upstream failure" in responses[0].content
    assert len({r.headers["x-request-id"] for r in responses}) == 1  # the same answer, headers included
    ok = await client.post(url, json=BODY)  # not cached: goes upstream again
    assert ok.status_code == 200 and ok.headers["x-aurelis-cache"] == "miss"
    assert upstream.count("/chat/completions") == 2
    await client.aclose()


@pytest.mark.anyio
async def test_opt_out_sends_on_its_own(upstream: SimulatedServer) -> None:
    upstream.behavior.update(latency=0.2)
    client = aurelis_core.instrument(httpx.AsyncClient(timeout=10), CONFIG)
    url = upstream.base_url + "/chat/completions"
    await asyncio.gather(
        client.post(url, json=BODY),
        client.post(url, json=BODY, headers={"x-aurelis-cache": "no-coalesce"}),
        client.post(url, json=BODY, extensions={"aurelis": {"coalesce": False}}),
    )
    assert upstream.count("/chat/completions") == 3
    with pytest.raises(ValueError, match="no-coalesce"):
        await client.post(url, json=BODY, headers={"x-aurelis-cache": "no-coalesce, sometimes"})
    await client.aclose()


@pytest.mark.anyio
async def test_different_tenants_never_share_a_flight(upstream: SimulatedServer) -> None:
    upstream.behavior.update(latency=0.2)
    client = aurelis_core.instrument(httpx.AsyncClient(timeout=10), CONFIG)
    url = upstream.base_url + "/chat/completions"
    a, b = await asyncio.gather(
        client.post(url, json=BODY, headers={"authorization": "Bearer sk-a"}),
        client.post(url, json=BODY, headers={"authorization": "Bearer sk-b"}),
    )
    assert a.json()["id"] != b.json()["id"] and upstream.count("/chat/completions") == 2
    await client.aclose()


def test_no_flight_outlives_its_request(upstream: SimulatedServer) -> None:
    client = aurelis_core.instrument(httpx.Client(timeout=10), CONFIG)
    url = upstream.base_url + "/chat/completions"
    client.post(url, json=BODY)
    upstream.behavior.update(fail_next=1)
    client.post(url, json={**BODY, "temperature": 1})
    with client.stream("POST", url, json={**BODY, "stream": True}) as response:
        next(response.iter_raw())
    pipeline = aurelis_core.pipeline_of(client)
    assert pipeline is not None and len(pipeline._flights) == 0
    client.close()
