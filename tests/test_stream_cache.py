"""The event-stream cache: only clean, complete streams are stored, and replayed chunk for chunk; streams are
coalesced too. Real clients (httpx, httpx2, the openai SDK) against the simulated upstream on 127.0.0.1.

An abandoned stream, and a follower that joins a stream half-way, are tested chunk by chunk on an upstream
that sends each chunk when the test says (test_coalescing_behaviour.py): here the upstream's own pace decides
how chunks fall, so only what holds for any pace is asserted."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import httpx2
import openai
import pytest
from support import gated_stream, sse

import aurelis_core
from aurelis_core._sse import stream_complete
from aurelis_core.testing import SimulatedServer

CONFIG = {"plugins": ["normalize", "memory"]}
MESSAGES = [{"role": "user", "content": "tell me about the sea today"}]
STREAM = {"model": "sim-chat", "messages": MESSAGES, "temperature": 0, "stream": True}
CLIENT_KINDS = [
    pytest.param(httpx, False, id="httpx-sync"),
    pytest.param(httpx, True, id="httpx-async"),
    pytest.param(httpx2, False, id="httpx2-sync"),
    pytest.param(httpx2, True, id="httpx2-async"),
]


class Streamer:
    """Reads one streamed POST to the end through an instrumented client of the given kind."""

    def __init__(self, http: Any, is_async: bool) -> None:
        self.client = aurelis_core.instrument((http.AsyncClient if is_async else http.Client)(timeout=10), CONFIG)
        self.is_async = is_async

    async def chunks(self, url: str, body: Any = STREAM) -> tuple[list[bytes], str]:
        if self.is_async:
            async with self.client.stream("POST", url, json=body) as response:
                return [c async for c in response.aiter_raw()], response.headers["x-aurelis-cache"]
        with self.client.stream("POST", url, json=body) as response:
            return list(response.iter_raw()), response.headers["x-aurelis-cache"]

    async def aclose(self) -> None:
        if self.is_async:
            await self.client.aclose()
        else:
            self.client.close()


@pytest.mark.anyio
@pytest.mark.parametrize(("http", "is_async"), CLIENT_KINDS)
async def test_clean_stream_is_replayed_byte_identical(http: Any, is_async: bool) -> None:
    events = sse(*(f'{{"choices":[{{"index":0,"delta":{{"content":"w{i}"}},"finish_reason":null}}]}}'
                   for i in range(3)), '{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}', "[DONE]")
    streamer = Streamer(http, is_async)
    with gated_stream(events) as up:
        url = up.url + "/v1/chat/completions"
        # The upstream sends one chunk per read: the first call sees exactly its chunks, one by one.
        if is_async:
            async with streamer.client.stream("POST", url, json=STREAM) as response:
                chunks = response.aiter_raw()
                first = []
                for _ in events:
                    up.allow(1)
                    first.append(await chunks.__anext__())
                assert [c async for c in chunks] == []
                status1 = response.headers["x-aurelis-cache"]
        else:
            with streamer.client.stream("POST", url, json=STREAM) as response:
                sync_chunks = response.iter_raw()
                first = []
                for _ in events:
                    up.allow(1)
                    first.append(next(sync_chunks))
                assert list(sync_chunks) == []
                status1 = response.headers["x-aurelis-cache"]
        second, status2 = await streamer.chunks(url)
        assert (status1, status2) == ("miss", "hit")
        assert up.requests == 1
        assert first == events
        assert second == first  # same bytes, same chunk boundaries
    await streamer.aclose()


def test_openai_sdk_stream_replay_sync(upstream: SimulatedServer) -> None:
    upstream.behavior.update(chunk_delay=0.005)
    llm = openai.OpenAI(
        base_url=upstream.base_url, api_key="sk", http_client=aurelis_core.instrument(httpx2.Client(), CONFIG)
    )

    def call() -> list[dict[str, Any]]:
        stream = llm.chat.completions.create(model="sim-chat", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
        return [chunk.model_dump() for chunk in stream]

    first, second = call(), call()
    assert first == second and len(first) > 3
    assert first[-1]["choices"][0]["finish_reason"] == "stop"
    assert upstream.count("/chat/completions") == 1
    llm.close()


@pytest.mark.anyio
async def test_openai_sdk_stream_replay_async(upstream: SimulatedServer) -> None:
    http_client = aurelis_core.instrument(httpx2.AsyncClient(), CONFIG)
    llm = openai.AsyncOpenAI(base_url=upstream.base_url, api_key="sk", http_client=http_client)

    async def call(**extra: Any) -> list[dict[str, Any]]:
        stream = await llm.chat.completions.create(
            model="sim-chat", messages=MESSAGES, stream=True, **extra  # type: ignore[arg-type]
        )
        return [chunk.model_dump() async for chunk in stream]

    first = await call(stream_options={"include_usage": True})
    second = await call(stream_options={"include_usage": True})
    assert first == second and first[-1]["usage"]["total_tokens"] > 0
    whole = await llm.chat.completions.create(model="sim-chat", messages=MESSAGES)  # type: ignore[arg-type]
    assert whole.object == "chat.completion"  # not served from the stream's entry: a separate key
    assert upstream.count("/chat/completions") == 2
    await llm.close()


@pytest.mark.anyio
@pytest.mark.parametrize(("http", "is_async"), CLIENT_KINDS)
async def test_truncated_stream_is_not_stored(upstream: SimulatedServer, http: Any, is_async: bool) -> None:
    upstream.behavior.update(truncate_stream_after=3)
    streamer = Streamer(http, is_async)
    url = upstream.base_url + "/chat/completions"
    with pytest.raises(http.TransportError):
        await streamer.chunks(url)
    upstream.behavior.update(truncate_stream_after=None)
    chunks, status = await streamer.chunks(url)
    assert status == "miss" and chunks[-1].endswith(b"data: [DONE]\n\n")
    assert upstream.count("/chat/completions") == 2
    await streamer.aclose()


@pytest.mark.anyio
async def test_truncated_stream_fails_the_openai_sdk_and_is_not_stored(upstream: SimulatedServer) -> None:
    upstream.behavior.update(truncate_stream_after=4)
    http_client = aurelis_core.instrument(httpx2.AsyncClient(), CONFIG)
    llm = openai.AsyncOpenAI(base_url=upstream.base_url, api_key="sk", http_client=http_client, max_retries=0)
    for _ in range(2):
        with pytest.raises((httpx2.TransportError, openai.APIError)):
            stream = await llm.chat.completions.create(
                model="sim-chat", messages=MESSAGES, stream=True  # type: ignore[arg-type]
            )
            [chunk async for chunk in stream]
    assert upstream.count("/chat/completions") == 2  # never replayed as if it were a short answer
    await llm.close()


def test_error_status_on_a_stream_request_is_not_stored(upstream: SimulatedServer) -> None:
    upstream.behavior.update(fail_next=1, failure_status=429)
    client = aurelis_core.instrument(httpx.Client(timeout=10), CONFIG)
    url = upstream.base_url + "/chat/completions"
    with client.stream("POST", url, json=STREAM) as response:
        assert response.status_code == 429
        response.read()
    with client.stream("POST", url, json=STREAM) as response:
        assert response.status_code == 200 and response.headers["x-aurelis-cache"] == "miss"
        response.read()
    assert upstream.count("/chat/completions") == 2
    client.close()


@pytest.mark.anyio
async def test_followers_get_the_whole_stream_when_the_leader_abandons(upstream: SimulatedServer) -> None:
    upstream.behavior.update(chunk_delay=0.02)
    client = aurelis_core.instrument(httpx.AsyncClient(timeout=10), CONFIG)
    url = upstream.base_url + "/chat/completions"
    joined = asyncio.Event()

    async def leader() -> None:
        async with client.stream("POST", url, json=STREAM) as response:
            async for _ in response.aiter_raw():
                await joined.wait()
                break  # closes its response after one chunk

    async def follower() -> list[bytes]:
        await asyncio.sleep(0.01)
        async with client.stream("POST", url, json=STREAM) as response:
            joined.set()
            return [c async for c in response.aiter_raw()]

    _, chunks = await asyncio.gather(leader(), follower())
    assert chunks[-1].endswith(b"data: [DONE]\n\n") and upstream.count("/chat/completions") == 1
    # Read to a clean end by the follower: stored, so the next call is a hit with the same chunks.
    async with client.stream("POST", url, json=STREAM) as response:
        assert response.headers["x-aurelis-cache"] == "hit"
        assert [c async for c in response.aiter_raw()] == chunks
    await client.aclose()


def test_sync_stream_followers_share_one_call(upstream: SimulatedServer) -> None:
    upstream.behavior.update(latency=0.2, chunk_delay=0.01)
    client = aurelis_core.instrument(httpx.Client(timeout=10), CONFIG)
    url = upstream.base_url + "/chat/completions"
    barrier = threading.Barrier(10)

    def read(_: int) -> bytes:
        barrier.wait()
        with client.stream("POST", url, json=STREAM) as response:
            return b"".join(response.iter_raw())

    with ThreadPoolExecutor(10) as pool:
        bodies = list(pool.map(read, range(10)))
    assert len(set(bodies)) == 1 and bodies[0].endswith(b"data: [DONE]\n\n")
    assert upstream.count("/chat/completions") == 1
    client.close()


def test_stream_complete_needs_an_end_marker() -> None:
    head = b'data: {"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}\n\n'
    finish = b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    usage = b'data: {"choices":[],"usage":{"total_tokens":3}}\n\n'
    assert stream_complete(head + finish + b"data: [DONE]\n\n")
    assert stream_complete((head + finish + b"data: [DONE]\n\n").replace(b"\n", b"\r\n"))
    assert stream_complete(head + finish + usage)  # providers that send no [DONE]
    assert stream_complete(head + finish + b": keep-alive\n\n")
    assert not stream_complete(head)
    assert not stream_complete(head + head)
    assert not stream_complete(b"")
    assert not stream_complete(head + b"data: {not json\n\n")


def test_the_tail_of_a_stream_is_its_last_chunks_holding_at_least_the_bytes_asked() -> None:
    # What the completeness check reads of a long stream: whole chunks from the end, no more than needed.
    from aurelis_core._coalesce import tail

    chunks = [b"%d" % i * 10 for i in range(10)]  # ten chunks of ten bytes
    assert tail(chunks, 30) == b"".join(chunks[7:])  # exactly enough: three chunks, not a fourth
    assert tail(chunks, 31) == b"".join(chunks[6:])  # one byte more takes the whole chunk before
    assert tail(chunks, 1) == chunks[9]
    assert tail(chunks, 1000) == b"".join(chunks)  # fewer bytes than asked: all of them
    assert tail((), 10) == b""
