"""instrument(), transports, plugin calling conventions (async impls under sync clients, failing tiers),
life cycle hooks, and the guarantees the core gives every plugin (attempt_end and observe exactly once)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from support import gated_upstream

import aurelis_core
from aurelis_core import CacheEntry, Pipeline, RequestContext, hookimpl
from aurelis_core.testing import SimulatedServer

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("http", [httpx, httpx2])
def test_instrument_is_idempotent_and_wraps_mounts(http: Any) -> None:
    client = http.Client(mounts={"http://special.example": http.HTTPTransport()}, proxy="http://127.0.0.1:9")
    inner = client._transport
    assert aurelis_core.instrument(client, {"plugins": ["normalize"]}) is client
    pipeline = aurelis_core.pipeline_of(client)
    wrapped = client._transport
    assert wrapped.inner is inner and isinstance(wrapped, http.BaseTransport)
    assert all(t is None or t.aurelis_pipeline is pipeline for t in client._mounts.values())
    assert len([t for t in client._mounts.values() if t is not None]) >= 2
    assert aurelis_core.instrument(client) is client
    assert client._transport is wrapped
    with pytest.raises(ValueError, match="another pipeline"):
        aurelis_core.instrument(client, pipeline=Pipeline())
    client.close()


def test_instrument_rejects_non_clients() -> None:
    with pytest.raises(TypeError, match="httpx or httpx2"):
        aurelis_core.instrument(object())


def test_transport_for_own_clients(upstream: SimulatedServer) -> None:
    pipeline = Pipeline({"plugins": ["normalize", "memory"]})
    client = httpx.Client(transport=pipeline.transport(httpx.HTTPTransport()))
    url = upstream.base_url + "/chat/completions"
    assert client.post(url, json=BODY).headers["x-aurelis-cache"] == "miss"
    assert client.post(url, json=BODY).headers["x-aurelis-cache"] == "hit"
    client.close()


@pytest.mark.anyio
async def test_async_transport_for_own_clients(upstream: SimulatedServer) -> None:
    pipeline = Pipeline({"plugins": ["normalize", "memory"]})
    client = httpx2.AsyncClient(transport=pipeline.async_transport(httpx2.AsyncHTTPTransport()))
    url = upstream.base_url + "/chat/completions"
    assert (await client.post(url, json=BODY)).headers["x-aurelis-cache"] == "miss"
    assert (await client.post(url, json=BODY)).headers["x-aurelis-cache"] == "hit"
    await client.aclose()
    await pipeline.aclose()


def test_shared_pipeline_serves_several_clients(upstream: SimulatedServer) -> None:
    pipeline = Pipeline({"plugins": ["normalize", "memory"]})
    # The same accepted encodings (the answer's Content-Encoding is stored with it, so clients whose decoders
    # differ do not share entries: httpx with zstandard installed accepts zstd, httpx2 does not).
    accept = {"accept-encoding": "gzip, deflate"}
    a = aurelis_core.instrument(httpx.Client(headers=accept), pipeline=pipeline)
    b = aurelis_core.instrument(httpx2.Client(headers={"Accept-Encoding": "deflate,gzip"}), pipeline=pipeline)
    url = upstream.base_url + "/chat/completions"
    a.post(url, json=BODY)
    hit = b.post(url, json=BODY)
    assert hit.headers["x-aurelis-cache"] == "hit" and isinstance(hit, httpx2.Response)
    other = aurelis_core.instrument(httpx.Client(headers={"accept-encoding": "gzip, zstd"}), pipeline=pipeline)
    assert other.post(url, json=BODY).headers["x-aurelis-cache"] == "miss"
    other.close()
    a.close()
    b.close()
    assert not pipeline._closed  # a pipeline passed in is the caller's to close


class AsyncTier:
    """A tier written only with ``async def``: a sync client still gets it to work (via the bridge loop)."""

    name = "async_tier"

    def __init__(self) -> None:
        self.store: dict[str, CacheEntry] = {}
        self.threads: set[str] = set()

    @hookimpl
    async def aurelis_cache_get(self, ctx: RequestContext) -> CacheEntry | None:
        await asyncio.sleep(0)
        self.threads.add(threading.current_thread().name)
        return self.store.get(ctx.key or "")

    @hookimpl
    async def aurelis_cache_set(self, ctx: RequestContext, entry: CacheEntry, promote: bool) -> None:
        self.store[ctx.key or ""] = entry


@pytest.mark.anyio
async def test_async_def_plugins_work_for_sync_and_async_clients(upstream: SimulatedServer) -> None:
    url = upstream.base_url + "/chat/completions"
    tier = AsyncTier()
    pipeline = Pipeline({"plugins": ["normalize"]}, plugins=[tier])
    sync_client = aurelis_core.instrument(httpx.Client(), pipeline=pipeline)
    assert sync_client.post(url, json=BODY).headers["x-aurelis-cache"] == "miss"
    assert sync_client.post(url, json=BODY).headers["x-aurelis-cache-tier"] == "async_tier"
    assert tier.threads == {"aurelis-bridge"}
    async_client = aurelis_core.instrument(httpx.AsyncClient(), pipeline=pipeline)
    assert (await async_client.post(url, json=BODY)).headers["x-aurelis-cache"] == "hit"
    assert upstream.count() == 1
    sync_client.close()
    await async_client.aclose()
    bridges = sum(thread.name == "aurelis-bridge" for thread in threading.enumerate())
    pipeline.close()
    # Closing the pipeline stops its loop thread (a daemon, but one per pipeline would pile up).
    assert sum(thread.name == "aurelis-bridge" for thread in threading.enumerate()) == bridges - 1


def test_a_sync_request_after_close_still_runs_async_plugins(upstream: SimulatedServer) -> None:
    """A flow that needs the loop bridge after ``close()`` stopped it starts it again (it used to wait forever
    on the stopped loop)."""
    url = upstream.base_url + "/chat/completions"
    tier = AsyncTier()
    pipeline = Pipeline({"plugins": ["normalize"]}, plugins=[tier])
    client = aurelis_core.instrument(httpx.Client(), pipeline=pipeline)
    assert client.post(url, json=BODY).headers["x-aurelis-cache"] == "miss"
    pipeline.close()
    answers: list[str] = []
    sender = threading.Thread(
        target=lambda: answers.append(client.post(url, json=BODY).headers["x-aurelis-cache"]), daemon=True
    )
    sender.start()
    sender.join(timeout=10)
    assert answers == ["hit"]
    client.close()
    pipeline.bridge.stop()  # close() ran already: the thread started again is stopped by hand


def test_a_pipeline_starts_no_loop_thread_until_an_async_plugin_runs_for_a_sync_client(
    upstream: SimulatedServer,
) -> None:
    before = sum(thread.name == "aurelis-bridge" for thread in threading.enumerate())
    pipeline = Pipeline({"plugins": ["normalize", "memory"]})
    with aurelis_core.instrument(httpx.Client(), pipeline=pipeline) as client:
        client.post(upstream.base_url + "/chat/completions", json=BODY)
    assert sum(thread.name == "aurelis-bridge" for thread in threading.enumerate()) == before
    pipeline.close()


class BrokenTier:
    name = "broken"

    @hookimpl
    def aurelis_cache_get(self, ctx: RequestContext) -> CacheEntry | None:
        raise ConnectionError("tier down")

    @hookimpl
    def aurelis_cache_set(self, ctx: RequestContext, entry: CacheEntry, promote: bool) -> None:
        raise ConnectionError("tier down")


def test_failing_tier_never_fails_the_request(upstream: SimulatedServer, caplog: pytest.LogCaptureFixture) -> None:
    pipeline = Pipeline({"plugins": ["normalize"]}, plugins=[BrokenTier()])
    client = aurelis_core.instrument(httpx.Client(), pipeline=pipeline)
    url = upstream.base_url + "/chat/completions"
    responses = [client.post(url, json=BODY) for _ in range(5)]
    assert [r.status_code for r in responses] == [200] * 5
    assert pipeline.stats.tier_errors["broken.get"] == 5
    # Logged once per failing operation (get, set) for the burst, not once per request.
    messages = [r.getMessage() for r in caplog.records if "broken" in r.getMessage()]
    assert len(messages) == 2 and "on get" in messages[0] and "on set" in messages[1]
    client.close()


class Recorder:
    """Counts the hooks the core promises to call exactly once."""

    name = "recorder"

    def __init__(self) -> None:
        self.events: list[str] = []

    @hookimpl
    def aurelis_start(self, pipeline: Pipeline) -> None:
        self.events.append("start")

    @hookimpl
    def aurelis_close(self, pipeline: Pipeline) -> None:
        self.events.append("close")

    @hookimpl
    def aurelis_attempt_end(self, ctx: RequestContext, attempt: Any) -> None:
        self.events.append(f"end:{attempt.status_code}:{type(attempt.error).__name__}")

    @hookimpl
    def aurelis_observe(self, ctx: RequestContext) -> None:
        self.events.append(f"observe:{ctx.cache_status}")


@pytest.mark.anyio
async def test_attempt_end_and_observe_once_per_request(upstream: SimulatedServer) -> None:
    recorder = Recorder()
    client = aurelis_core.instrument(
        httpx.AsyncClient(), pipeline=Pipeline({"plugins": ["normalize", "memory"]}, plugins=[recorder])
    )
    url = upstream.base_url + "/chat/completions"
    await client.post(url, json=BODY)  # miss: body buffered
    await client.post(url, json=BODY)  # hit: no attempt at all
    async with client.stream("POST", url, json={**BODY, "stream": True}) as response:
        assert recorder.events[-1] == "observe:hit"  # nothing more until the stream ends
        async for _ in response.aiter_raw():
            break
    # Abandoned after the first chunk: the attempt and the request still end, once each.
    await client.aclose()
    pipeline = aurelis_core.pipeline_of(client)
    assert pipeline is not None
    await pipeline.aclose()
    assert recorder.events == [
        "start",
        "end:200:NoneType",
        "observe:miss",
        "observe:hit",
        "end:200:NoneType",
        "observe:miss",  # streams are keyed too (stored only when read to a clean end)
        "close",
    ]


@pytest.mark.anyio
async def test_cancelled_request_ends_its_attempt() -> None:
    recorder = Recorder()
    with gated_upstream() as up:
        up.hold()  # no answer until the request was cancelled
        client = aurelis_core.instrument(httpx.AsyncClient(), pipeline=Pipeline({}, plugins=[recorder]))
        task = asyncio.create_task(client.post(up.url + "/chat/completions", json=BODY))
        await anyio.to_thread.run_sync(up.wait_arrivals, 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert recorder.events == ["start", "end:None:CancelledError", "observe:bypass"]
        await client.aclose()


def test_connect_error_ends_attempt_and_reaches_caller() -> None:
    recorder = Recorder()
    client = aurelis_core.instrument(httpx.Client(), pipeline=Pipeline({}, plugins=[recorder]))
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(httpx.ConnectError):
        client.get(f"http://127.0.0.1:{port}/")
    assert recorder.events == ["start", "end:None:ConnectError", "observe:bypass"]
    client.close()


def test_closing_the_client_closes_the_pipeline_it_made(upstream: SimulatedServer) -> None:
    recorder = Recorder()
    client = aurelis_core.instrument(httpx.Client(mounts={"http://special.example": httpx.HTTPTransport()}),
                                     {"plugins": ["normalize", "memory"]})
    pipeline = aurelis_core.pipeline_of(client)
    assert pipeline is not None
    pipeline.register(recorder)  # to see the pipeline's close hooks run
    client.get(upstream.url + "/v1/models")
    client.close()  # closes every wrapped transport; the pipeline closes once
    client.close()
    assert recorder.events.count("close") == 1


@pytest.mark.anyio
async def test_closing_an_async_client_closes_the_pipeline_it_made(upstream: SimulatedServer) -> None:
    recorder = Recorder()
    async with aurelis_core.instrument(httpx2.AsyncClient(), {"plugins": ["normalize", "memory"]}) as client:
        pipeline = aurelis_core.pipeline_of(client)
        assert pipeline is not None
        pipeline.register(recorder)
        await client.get(upstream.url + "/v1/models")
        assert "close" not in recorder.events
    assert recorder.events.count("close") == 1


def test_closing_the_client_leaves_a_pipeline_passed_in_open(upstream: SimulatedServer) -> None:
    recorder = Recorder()
    pipeline = Pipeline({}, plugins=[recorder])
    client = aurelis_core.instrument(httpx.Client(), pipeline=pipeline)
    client.get(upstream.url + "/v1/models")
    client.close()
    assert "close" not in recorder.events  # the caller's to close
    pipeline.close()
    assert recorder.events.count("close") == 1
