"""The ``httpx`` and ``aiohttp`` send engines against real servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import httpx2
import openai
import pytest
from support import gated_stream, gated_upstream, sse

import aurelis_core
from aurelis_core import ConfigError, Pipeline

CHAT = "/v1/chat/completions"
HELLO = {"model": "sim-chat", "messages": [{"role": "user", "content": "hello there"}]}
FLAVOURS = [httpx, httpx2]


@pytest.mark.anyio
@pytest.mark.parametrize("http", FLAVOURS, ids=["httpx", "httpx2"])
@pytest.mark.parametrize("engine", ["httpx", "aiohttp"])
async def test_engines_answer_like_the_raw_client(upstream: Any, http: Any, engine: str) -> None:
    async with aurelis_core.instrument(http.AsyncClient(), {"plugins": [engine]}) as client:
        response = await client.post(upstream.url + CHAT, json=HELLO, headers={"x-test": "1"})
        models = await client.get(upstream.base_url + "/models?limit=2")
    assert isinstance(response, http.Response)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "echo: hello there"
    assert response.headers["x-request-id"] == "req-sim-1"
    assert models.json()["data"][0]["id"] == "sim-chat"
    chat, listing = upstream.requests
    assert chat.header("x-test") == "1"
    assert chat.header("content-type") == "application/json"
    assert chat.header("user-agent") == client.headers["user-agent"]  # the caller's headers, not aiohttp's
    assert listing.query_string == b"limit=2"


@pytest.mark.anyio
async def test_aiohttp_streams_chunk_by_chunk() -> None:
    body = {**HELLO, "stream": True}
    events = sse(*(f'{{"choices":[{{"index":0,"delta":{{"content":"w{i}"}}}}]}}' for i in range(3)), "[DONE]")
    with gated_stream(events) as up:
        async with aurelis_core.instrument(httpx.AsyncClient(timeout=10), {"plugins": ["aiohttp"]}) as client:
            async with client.stream("POST", up.url + CHAT, json=body) as response:
                chunks = response.aiter_raw()
                # Each chunk is read while the upstream still holds back the next: it was not buffered.
                for event in events:
                    up.allow(1)
                    assert await chunks.__anext__() == event
                assert [c async for c in chunks] == []


@pytest.mark.anyio
async def test_aiohttp_keeps_content_encoding_raw(upstream: Any) -> None:
    import gzip

    upstream.behavior.headers = {"x-extra": "1"}
    async with aurelis_core.instrument(httpx.AsyncClient(), {"plugins": ["aiohttp"]}) as client:
        # A compressed request body goes out as it is; the answer is decoded by httpx itself.
        big = {**HELLO, "messages": [{"role": "user", "content": "word " * 2000}]}
        content = gzip.compress(httpx.Request("POST", "/", json=big).content)
        response = await client.post(
            upstream.url + CHAT, content=content,
            headers={"content-encoding": "gzip", "content-type": "application/json"},
        )
    assert response.status_code == 200
    assert upstream.requests[0].body == content
    assert upstream.requests[0].json() == big


@pytest.mark.anyio
@pytest.mark.parametrize("http", FLAVOURS, ids=["httpx", "httpx2"])
@pytest.mark.parametrize("engine", ["httpx", "aiohttp"])
async def test_read_timeout_raises_the_clients_own_type(http: Any, engine: str) -> None:
    with gated_upstream() as up:
        up.hold()  # no answer at all until the test is over
        async with aurelis_core.instrument(http.AsyncClient(timeout=0.2), {"plugins": [engine]}) as client:
            with pytest.raises(http.ReadTimeout):
                await client.post(up.url + CHAT, json=HELLO)


@pytest.mark.anyio
async def test_read_timeout_mid_stream() -> None:
    body = {**HELLO, "stream": True}
    with gated_stream(sse("{}", "[DONE]")) as up:
        up.allow(1)  # one chunk, then nothing until the test is over
        async with aurelis_core.instrument(httpx2.AsyncClient(timeout=0.3), {"plugins": ["aiohttp"]}) as client:
            async with client.stream("POST", up.url + CHAT, json=body) as response:
                with pytest.raises(httpx2.ReadTimeout):
                    async for _ in response.aiter_raw():
                        pass


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.anyio
@pytest.mark.parametrize("http", FLAVOURS, ids=["httpx", "httpx2"])
async def test_connection_refused_is_a_connect_error(http: Any) -> None:
    async with aurelis_core.instrument(http.AsyncClient(), {"plugins": ["aiohttp"]}) as client:
        with pytest.raises(http.ConnectError):
            await client.post(f"http://127.0.0.1:{_closed_port()}/v1/chat/completions", json=HELLO)


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A listening socket that never accepts: connections queue in the backlog, then time out."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(0)
        # Fill the backlog so that further connects hang instead of completing.
        fillers = []
        for _ in range(8):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(sock.getsockname())
            fillers.append(filler)
        try:
            yield int(sock.getsockname()[1])
        finally:
            for filler in fillers:
                filler.close()


@pytest.mark.anyio
async def test_connect_timeout(silent_server: int) -> None:
    timeout = httpx.Timeout(5.0, connect=0.2)
    async with aurelis_core.instrument(httpx.AsyncClient(timeout=timeout), {"plugins": ["aiohttp"]}) as client:
        with pytest.raises(httpx.TimeoutException) as caught:
            await client.get(f"http://127.0.0.1:{silent_server}/v1/models")
    assert isinstance(caught.value, (httpx.ConnectTimeout, httpx.PoolTimeout))


@pytest.mark.anyio
async def test_openai_sdk_over_aiohttp(upstream: Any) -> None:
    upstream.behavior.fail_next = 1  # the SDK's own retry must see an ordinary httpx2 response
    client = aurelis_core.instrument(httpx2.AsyncClient(), {"plugins": ["aiohttp"]})
    llm = openai.AsyncOpenAI(base_url=upstream.base_url, api_key="k", http_client=client, max_retries=2)
    try:
        answer = await llm.chat.completions.create(model="sim-chat", messages=HELLO["messages"])
        assert answer.choices[0].message.content == "echo: hello there"
        stream = await llm.chat.completions.create(
            model="sim-chat", messages=[{"role": "user", "content": "a b c"}], stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == "echo: a b c"
        embedded = await llm.embeddings.create(model="sim-embed", input=["x", "y"])
        assert len(embedded.data) == 2 and len(embedded.data[0].embedding) == 16
        with gated_upstream() as silent:
            silent.hold()  # never answers while the call waits
            with pytest.raises(openai.APITimeoutError):
                await llm.with_options(base_url=silent.url + "/v1", timeout=0.2, max_retries=0).chat.completions.create(
                    model="sim-chat", messages=HELLO["messages"]
                )
            assert silent.arrived == 1
    finally:
        await llm.close()
    assert upstream.count(CHAT) == 3  # the failed try, its retry, the stream


def test_sync_clients_keep_their_own_transport_under_aiohttp(upstream: Any) -> None:
    with aurelis_core.instrument(httpx.Client(), {"plugins": ["aiohttp"]}) as client:
        assert client.post(upstream.url + CHAT, json=HELLO).status_code == 200


@pytest.mark.anyio
async def test_aiohttp_pools_connections(upstream: Any) -> None:
    async with aurelis_core.instrument(httpx.AsyncClient(), {"plugins": ["aiohttp"]}) as client:
        for _ in range(5):
            assert (await client.post(upstream.url + CHAT, json=HELLO)).status_code == 200
        engine = aurelis_core.pipeline_of(client).plugin("aiohttp")  # type: ignore[union-attr]
        (session,) = engine._sessions.values()
        assert len(session.connector._conns) == 1  # one idle keep-alive connection, reused five times


def test_aiohttp_closes_the_sessions_of_every_live_loop(upstream: Any) -> None:
    # A session belongs to its event loop; threads each running one each get their own, and closing the pipeline
    # (here from sync code, on no loop) has each live loop close its own (they were left open with their sockets).
    from support import live_loops

    pipeline = Pipeline({"plugins": ["aiohttp"]})
    engine = pipeline.plugin("aiohttp")

    async def send() -> int:
        client = pipeline.instrument(httpx.AsyncClient())
        return (await client.post(upstream.url + CHAT, json=HELLO)).status_code

    with live_loops(2) as loops:
        assert [asyncio.run_coroutine_threadsafe(send(), loop).result(10) for loop in loops] == [200, 200]
        sessions = list(engine._sessions.values())
        assert len(sessions) == 2
        pipeline.close()
        deadline = time.monotonic() + 10  # each loop closes its own, on its thread
        while not all(session.closed for session in sessions) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert all(session.closed for session in sessions)


# --- dead pooled connections ---------------------------------------------------------------------------------


class ClosingServer:
    """An HTTP/1.1 server that answers with keep-alive, then closes the connection right after.

    The client's pool keeps a connection the server has already closed: the next request must not fail.
    ``wait_closed(n)`` waits until the server has closed ``n`` connections.
    """

    def __init__(self) -> None:
        self.connections = 0
        self.closed = 0
        self._cond = threading.Condition()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")),
            0,
        )
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: keep-alive\r\n\r\nok")
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        with self._cond:
            self.closed += 1
            self._cond.notify_all()

    def wait_closed(self, count: int) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: self.closed >= count, 30), "the server never closed"

    def __enter__(self) -> ClosingServer:
        async def start() -> None:
            self.server = await asyncio.start_server(self._handle, sock=self.sock)

        self.thread.start()
        asyncio.run_coroutine_threadsafe(start(), self.loop).result(5)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.mark.anyio
@pytest.mark.parametrize("engine", ["httpx", "aiohttp"])
async def test_dead_pooled_connection_is_replaced(engine: str) -> None:
    config = {"plugins": [engine]}
    if engine == "httpx":
        config["httpx"] = {"max_keepalive_connections": 4}  # its own pool, built by the engine
    with ClosingServer() as server:
        async with aurelis_core.instrument(httpx.AsyncClient(), config) as client:
            for count in range(1, 4):
                response = await client.post(f"http://127.0.0.1:{server.port}/v1/x", content=b"{}")
                assert response.text == "ok"
                await anyio.to_thread.run_sync(server.wait_closed, count)  # the pooled connection is dead now
    assert server.connections == 3


# --- the httpx engine's options ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_httpx_engine_per_endpoint_pool(upstream: Any, upstream_factory: Any) -> None:
    other = upstream_factory(latency=0.1)
    config = {
        "plugins": ["httpx"],
        "endpoints": [{"url": other.url, "name": "slow"}],
        "httpx": {"endpoints": {"slow": {"max_connections": 1}}},
    }
    pipeline = Pipeline(config)
    async with pipeline.instrument(httpx.AsyncClient()) as client:
        started = time.monotonic()
        answers = await asyncio.gather(*[client.post(upstream.url + CHAT, json=HELLO) for _ in range(4)])
        elapsed = time.monotonic() - started
    assert all(a.status_code == 200 for a in answers)
    assert other.count(CHAT) == 4  # routed to the one endpoint
    # One connection to an upstream that takes 0.1 s per answer: the four requests went one after another.
    assert elapsed >= 0.4
    engine = pipeline.plugin("httpx")
    assert engine._per_endpoint["slow"].max_connections == 1


def test_httpx_engine_without_options_uses_the_clients_transport(upstream: Any) -> None:
    pipeline = Pipeline({"plugins": ["httpx"]})
    with pipeline.instrument(httpx.Client()) as client:
        assert client.post(upstream.url + CHAT, json=HELLO).status_code == 200
    assert pipeline.plugin("httpx")._transports == {}


def test_httpx_engine_config_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    with pytest.raises(ConfigError, match="no endpoint named 'nope'"):
        Pipeline({"plugins": ["httpx"], "httpx": {"endpoints": {"nope": {"http2": True}}}})
    with pytest.raises(ConfigError, match="unknown key 'max_conections'"):
        Pipeline({
            "plugins": ["httpx"], "endpoints": [{"url": "http://127.0.0.1:1", "name": "a"}],
            "httpx": {"endpoints": {"a": {"max_conections": 1}}},
        })
    monkeypatch.setitem(sys.modules, "h2", None)
    with pytest.raises(ConfigError, match=r"pip install 'aurelis\[http2\]'"):
        Pipeline({"plugins": ["httpx"], "httpx": {"http2": True}})


def test_only_one_engine() -> None:
    with pytest.raises(ConfigError, match="only one send engine"):
        Pipeline({"plugins": ["httpx", "aiohttp"]})
