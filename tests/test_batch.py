"""gather(): every request gets its slot, in the caller's order, failures included; grouping and schedules."""

from __future__ import annotations

import socket

import httpx
import pytest

import aurelis_core
from aurelis_core.testing import SimulatedServer


def chat(i: int, model: str = "sim-chat") -> dict[str, object]:
    return {
        "method": "POST",
        "url": "/chat/completions",
        "json": {"model": model, "messages": [{"role": "user", "content": f"prompt {i}"}]},
    }


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens there once the socket is closed


@pytest.mark.anyio
async def test_thousand_requests_with_failures_keep_their_slots(upstream: SimulatedServer) -> None:
    upstream.behavior.failure_rate = 0.1
    dead = f"http://127.0.0.1:{closed_port()}/v1/chat/completions"
    requests: list[object] = []
    for i in range(1000):
        item = chat(i, model=f"sim-chat-{i % 3}")
        if i % 97 == 0:
            item = {**item, "url": dead}  # connection refused: an exception, not a response
        requests.append(item)
    pipeline = aurelis_core.Pipeline({"plugins": ["normalize", "memory"]})
    async with pipeline.instrument(httpx.AsyncClient(base_url=upstream.base_url)) as client:
        results = await aurelis_core.gather(client, requests, concurrency=32)
    assert len(results) == 1000
    refused = [i for i, r in enumerate(results) if isinstance(r, Exception)]
    assert refused == [i for i in range(1000) if i % 97 == 0]
    assert all(isinstance(results[i], httpx.ConnectError) for i in refused)
    statuses = [r.status_code for r in results if not isinstance(r, Exception)]
    failed = statuses.count(500)
    assert 0 < failed < len(statuses)
    assert failed + statuses.count(200) == len(statuses)
    for i, result in enumerate(results):
        if not isinstance(result, Exception) and result.status_code == 200:
            assert result.json()["choices"][0]["message"]["content"] == f"echo: prompt {i}"
    assert upstream.count("/chat/completions") == 1000 - len(refused)


@pytest.mark.anyio
async def test_requests_of_one_model_are_dispatched_together(upstream: SimulatedServer) -> None:
    requests = [chat(i, model=["m-a", "m-b", "m-c"][i % 3]) for i in range(12)]
    async with httpx.AsyncClient(base_url=upstream.base_url) as client:
        results = await aurelis_core.gather(client, requests, concurrency=1)
    arrived = [r.json()["model"] for r in upstream.requests]
    assert arrived == ["m-a"] * 4 + ["m-b"] * 4 + ["m-c"] * 4
    assert [r.json()["model"] for r in results] == [["m-a", "m-b", "m-c"][i % 3] for i in range(12)]


@pytest.mark.anyio
async def test_built_requests_schedule_and_raise_for_status(upstream: SimulatedServer) -> None:
    async with httpx.AsyncClient(base_url=upstream.base_url) as client:
        built = [client.build_request(**chat(i)) for i in range(4)]
        # A schedule sends in schedule order (here: reversed), whatever the list order.
        results = await aurelis_core.gather(client, built, concurrency=1, schedule=[0.03, 0.02, 0.01, 0.0])
        assert [r.json()["messages"][0]["content"] for r in upstream.requests] == [
            f"prompt {i}" for i in (3, 2, 1, 0)
        ]
        assert [r.status_code for r in results] == [200] * 4
        upstream.behavior.fail_next = 1
        results = await aurelis_core.gather(client, built[:2], concurrency=1, raise_for_status=True)
    assert isinstance(results[0], httpx.HTTPStatusError) and results[0].response.status_code == 500
    assert results[1].status_code == 200


def test_sync_client_uses_threads(upstream: SimulatedServer) -> None:
    upstream.behavior.fail_next = 3
    seen: list[int] = []
    with aurelis_core.instrument(httpx.Client(base_url=upstream.base_url), {"plugins": ["normalize", "memory"]}) as c:
        results = aurelis_core.gather(c, [chat(i) for i in range(40)], concurrency=4, rate=2000,
                                      on_result=lambda index, _: seen.append(index))
    assert sorted(seen) == list(range(40))
    assert len(results) == 40
    assert sum(1 for r in results if r.status_code == 500) == 3
    for i, r in enumerate(results):
        if r.status_code == 200:
            assert r.json()["choices"][0]["message"]["content"] == f"echo: prompt {i}"


def test_bad_arguments() -> None:
    client = httpx.Client()
    with pytest.raises(ValueError, match="concurrency"):
        aurelis_core.gather(client, [], concurrency=0)
    with pytest.raises(ValueError, match="rate or schedule"):
        aurelis_core.gather(client, [chat(0)], rate=1, schedule=[0])
    with pytest.raises(ValueError, match="1 requests"):
        aurelis_core.gather(client, [chat(0)], schedule=[0, 1])
    assert aurelis_core.gather(client, []) == []
