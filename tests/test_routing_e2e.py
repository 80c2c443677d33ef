"""Routers end to end: real simulated upstreams on 127.0.0.1, a real instrumented httpx client.

Traffic must shift away from a slow endpoint, and in-flight counts must return to zero after cancelled
requests and streams closed early.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest

import aurelis_core
from aurelis_core.testing import SimulatedServer

pytestmark = pytest.mark.anyio

BODY = {"model": "sim-chat", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 8}

#: Options that let the learning routers react within the few seconds of a test (production defaults are
#: tuned for minutes of traffic).
FAST = {
    "least_connections": {"seed": 1},
    "weighted_response_time": {"seed": 1, "decay": 2.0, "update_period": 0.05, "blackout": 0.0},
    "ai_optimized": {"seed": 1, "decay": 2.0},
}


def _client(router: str, upstreams: list[SimulatedServer], options: dict[str, Any]) -> httpx.AsyncClient:
    config = {
        "plugins": [router],
        "endpoints": [{"url": up.base_url, "name": f"up{i}"} for i, up in enumerate(upstreams)],
        router: options,
    }
    # The client's own base URL is the first endpoint; the router moves each request where it chooses.
    return aurelis_core.instrument(httpx.AsyncClient(base_url=upstreams[0].base_url, timeout=10), config)


@pytest.mark.parametrize("router", list(FAST))
async def test_traffic_shifts_away_from_a_slow_endpoint(
    router: str, upstream_factory: Callable[..., SimulatedServer]
) -> None:
    fast = [upstream_factory(latency=0.01), upstream_factory(latency=0.01)]
    slow = upstream_factory(latency=0.4)
    upstreams = [slow, *fast]
    async with _client(router, upstreams, FAST[router]) as client:

        async def worker(n: int) -> None:
            for _ in range(n):
                response = await client.post("/chat/completions", json=BODY)
                assert response.status_code == 200

        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(worker, 25)
        plugin = aurelis_core.pipeline_of(client).plugin(router)
        assert plugin.inflight == [0, 0, 0]
    total = sum(up.count("/chat/completions") for up in upstreams)
    assert total == 150
    # Round robin would send a third (50); a router that learns sends far fewer.
    assert slow.count("/chat/completions") < 25, [up.count("/chat/completions") for up in upstreams]


@pytest.mark.parametrize("router", ["round_robin", "least_connections", "weighted_response_time", "load_based",
                                    "ai_optimized"])
async def test_in_flight_returns_to_zero_after_cancellations_and_abandoned_streams(
    router: str, upstream_factory: Callable[..., SimulatedServer]
) -> None:
    upstreams = [upstream_factory(latency=0.5), upstream_factory(latency=0.5, chunk_delay=0.05)]
    async with _client(router, upstreams, {"seed": 2}) as client:
        plugin = aurelis_core.pipeline_of(client).plugin(router)

        async def post() -> None:
            await client.post("/chat/completions", json=BODY)

        # Tasks cancelled while waiting for the response headers.
        with anyio.move_on_after(0.2):
            async with anyio.create_task_group() as tg:
                for _ in range(6):
                    tg.start_soon(post)
        assert plugin.inflight == [0, 0]

        # Streams closed after the first chunk, and a stream abandoned by a cancelled task mid-body.
        for _ in range(4):
            async with client.stream("POST", "/chat/completions", json={**BODY, "stream": True}) as response:
                assert sum(plugin.inflight) == 1
                async for _chunk in response.aiter_raw():
                    break
        assert plugin.inflight == [0, 0]

        async def read_slowly() -> None:
            async with client.stream("POST", "/chat/completions", json={**BODY, "stream": True}) as response:
                async for _chunk in response.aiter_raw():
                    await anyio.sleep(0.05)

        with anyio.move_on_after(0.7):
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(read_slowly)
        assert plugin.inflight == [0, 0]


def test_sync_client_counts_and_routes_to_every_endpoint(upstream_factory: Callable[..., SimulatedServer]) -> None:
    upstreams = [upstream_factory(), upstream_factory()]
    config = {
        "plugins": ["round_robin"],
        "endpoints": [{"url": up.base_url, "name": f"up{i}"} for i, up in enumerate(upstreams)],
    }
    with aurelis_core.instrument(httpx.Client(base_url=upstreams[0].base_url), config) as client:
        for _ in range(10):
            assert client.post("/chat/completions", json=BODY).status_code == 200
        assert aurelis_core.pipeline_of(client).plugin("round_robin").inflight == [0, 0]
    assert [up.count("/chat/completions") for up in upstreams] == [5, 5]


@pytest.mark.parametrize("client_base", ["endpoint", "placeholder"])
def test_rewrite_replaces_the_callers_base_path_with_each_endpoints(
    client_base: str, upstream_factory: Callable[..., SimulatedServer]
) -> None:
    # Two deployments with different base paths, like https://models.github.ai/inference and a local /v1.
    first, second = upstream_factory(), upstream_factory()
    config = {
        "plugins": ["round_robin"],
        "endpoints": [{"url": first.url + "/inference", "name": "a"}, {"url": second.url + "/v1", "name": "b"}],
    }
    base_url = first.url + "/inference" if client_base == "endpoint" else "http://aurelis.invalid"
    with aurelis_core.instrument(httpx.Client(base_url=base_url), config) as client:
        for _ in range(4):
            assert client.post("/chat/completions?x=1", json=BODY).status_code == 200
    assert {r.path for r in first.requests} == {"/inference/chat/completions"}
    assert {r.path for r in second.requests} == {"/v1/chat/completions"}
    assert {r.query_string for r in first.requests + second.requests} == {b"x=1"}
