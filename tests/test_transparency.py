"""An instrumented client behaves exactly like the raw client.

Each scenario runs twice against the same real server on 127.0.0.1, once through a raw client and once through
an instrumented one, and the observable outcomes (status, headers, body, history, cookies, hook calls, the
exception raised) must be equal. With cache plugins enabled, the only allowed difference is the
``x-aurelis-cache`` header: a plugin changes only what it is for.
"""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import httpx2
import pytest

import aurelis_core
from aurelis_core.testing import serve

CONFIGS = [pytest.param({}, id="no-plugins"), pytest.param({"plugins": ["normalize", "memory"]}, id="cache")]
FLAVOURS = [pytest.param(httpx, id="httpx"), pytest.param(httpx2, id="httpx2")]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Redirects, digest auth, cookies, multipart echo, chunked stream, slow answer, status codes."""
    assert scope["type"] == "http"
    path = scope["path"]
    headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break

    async def respond(status: int, content: bytes = b"", extra: list[tuple[bytes, bytes]] | None = None) -> None:
        head = [(b"content-type", b"text/plain"), (b"content-length", str(len(content)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": head + (extra or [])})
        await send({"type": "http.response.body", "body": content})

    if path.startswith("/redirect/"):
        n = int(path.rsplit("/", 1)[1])
        target = f"/redirect/{n - 1}" if n > 1 else "/final"
        await respond(302, b"", [(b"location", target.encode())])
    elif path == "/final":
        await respond(200, f"final {scope['method']}".encode())
    elif path == "/digest":
        auth = headers.get("authorization", "")
        if auth.startswith("Digest ") and 'username="user"' in auth and "response=" in auth:
            await respond(200, b"authenticated")
        else:
            challenge = b'Digest realm="test", nonce="abc123", qop="auth", algorithm=MD5'
            await respond(401, b"need auth", [(b"www-authenticate", challenge)])
    elif path == "/cookies/set":
        await respond(200, b"set", [(b"set-cookie", b"flavour=oat; Path=/")])
    elif path == "/cookies":
        await respond(200, headers.get("cookie", "").encode())
    elif path == "/upload":
        # Multipart boundaries are random per request: hash the body with its boundary blanked out.
        content_type = headers.get("content-type", "")
        boundary = content_type.partition("boundary=")[2].encode()
        canonical = body.replace(boundary, b"BOUNDARY") if boundary else body
        summary = f"{content_type.split(';')[0]} {len(body)} {hashlib.sha256(canonical).hexdigest()}"
        await respond(200, summary.encode())
    elif path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for i in range(5):
            await send({"type": "http.response.body", "body": f"chunk{i};".encode(), "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/slow":
        import asyncio

        await asyncio.sleep(1.0)
        await respond(200, b"late")
    elif path.startswith("/status/"):
        await respond(int(path.rsplit("/", 1)[1]), b"status body")
    else:
        await respond(404, b"not found")


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with serve(app) as running:
        yield running.url


class Proxy:
    """A minimal forward proxy on 127.0.0.1: it answers absolute-form requests itself and records them."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.seen: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                line = data.split(b"\r\n", 1)[0].decode()
                self.seen.append(line)
                body = f"via proxy: {line}".encode()
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\n"
                    + f"content-length: {len(body)}\r\n\r\n".encode()
                    + body
                )

    def close(self) -> None:
        self.sock.close()


def outcome(response: Any) -> tuple[Any, ...]:
    headers = sorted(
        (k, v) for k, v in response.headers.items() if k not in ("date", "x-aurelis-cache", "x-aurelis-cache-tier")
    )
    return (
        response.status_code,
        headers,
        response.content,
        [(r.status_code, str(r.url)) for r in response.history],
        str(response.url),
        response.request.method,
    )


def run_sync_scenarios(client: Any, server: str, http: Any) -> list[Any]:
    results: list[Any] = []
    results.append(outcome(client.get(f"{server}/redirect/3", follow_redirects=True)))
    results.append(outcome(client.get(f"{server}/redirect/1", follow_redirects=False)))
    with pytest.raises(http.TooManyRedirects):
        client.get(f"{server}/redirect/5", follow_redirects=True)
    results.append(outcome(client.get(f"{server}/digest", auth=http.DigestAuth("user", "pass"))))
    results.append(outcome(client.get(f"{server}/cookies/set")))
    results.append(outcome(client.get(f"{server}/cookies")))
    results.append(
        outcome(client.post(f"{server}/upload", files={"f": ("a.txt", b"x" * 5000)}, data={"k": "v"}))
    )
    with client.stream("GET", f"{server}/stream") as response:
        results.append(list(response.iter_bytes()))
    results.append(outcome(client.get(f"{server}/status/503")))
    results.append(outcome(client.post(f"{server}/status/500", json={"model": "m"})))
    for exc_type, call in (
        (http.ReadTimeout, lambda: client.get(f"{server}/slow", timeout=0.2)),
        (http.ConnectError, lambda: client.get(f"http://127.0.0.1:{CLOSED_PORT}/")),
        # A header the client builds but the wire refuses: the same error as without the pipeline.
        (http.LocalProtocolError, lambda: client.post(f"{server}/v1/chat/completions", json={}, headers={"": "v"})),
    ):
        with pytest.raises(exc_type) as info:
            call()
        results.append(type(info.value).__name__)
    return results


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: A loopback port nothing listens on (one per run, so raw and wrapped clients see the same URLs).
CLOSED_PORT = _free_port()


@pytest.mark.parametrize("http", FLAVOURS)
@pytest.mark.parametrize("config", CONFIGS)
def test_sync_client_is_transparent(server: str, http: Any, config: dict[str, Any]) -> None:
    def make() -> Any:
        hooks: dict[str, list[str]] = {"request": [], "response": []}
        client = http.Client(
            max_redirects=4,
            event_hooks={
                "request": [lambda r: hooks["request"].append(str(r.url))],
                "response": [lambda r: hooks["response"].append(str(r.status_code))],
            },
        )
        return client, hooks

    raw, raw_hooks = make()
    wrapped, wrapped_hooks = make()
    aurelis_core.instrument(wrapped, config)
    expected = run_sync_scenarios(raw, server, http)
    got = run_sync_scenarios(wrapped, server, http)
    assert got == expected
    assert wrapped_hooks == raw_hooks
    assert dict(wrapped.cookies) == dict(raw.cookies) == {"flavour": "oat"}
    raw.close()
    wrapped.close()


@pytest.mark.anyio
@pytest.mark.parametrize("http", FLAVOURS)
@pytest.mark.parametrize("config", CONFIGS)
async def test_async_client_is_transparent(server: str, http: Any, config: dict[str, Any]) -> None:
    async def scenarios(client: Any) -> list[Any]:
        results: list[Any] = []
        results.append(outcome(await client.get(f"{server}/redirect/3", follow_redirects=True)))
        results.append(outcome(await client.get(f"{server}/digest", auth=http.DigestAuth("user", "pass"))))
        results.append(outcome(await client.get(f"{server}/cookies/set")))
        results.append(outcome(await client.get(f"{server}/cookies")))
        results.append(outcome(await client.post(f"{server}/upload", files={"f": ("a.txt", b"y" * 3000)})))
        async with client.stream("GET", f"{server}/stream") as response:
            results.append([chunk async for chunk in response.aiter_bytes()])
        with pytest.raises(http.ReadTimeout):
            await client.get(f"{server}/slow", timeout=0.2)
        with pytest.raises(http.ConnectError):
            await client.get(f"http://127.0.0.1:{CLOSED_PORT}/")
        return results

    raw = http.AsyncClient()
    wrapped = aurelis_core.instrument(http.AsyncClient(), config)
    assert await scenarios(wrapped) == await scenarios(raw)
    await raw.aclose()
    await wrapped.aclose()


@pytest.mark.parametrize("http", FLAVOURS)
def test_proxy_mounts_go_through_the_pipeline(http: Any) -> None:
    proxy = Proxy()
    try:
        client = aurelis_core.instrument(
            http.Client(proxy=proxy.url), {"plugins": ["normalize", "memory"]}
        )
        url = "http://upstream.invalid/v1/chat/completions"
        first = client.post(url, json={"model": "m"})
        second = client.post(url, json={"model": "m"})
        client.close()
    finally:
        proxy.close()
    assert first.text == "via proxy: POST http://upstream.invalid/v1/chat/completions HTTP/1.1"
    # The proxy mount was wrapped: the second call was answered from the cache, not the proxy.
    assert (first.headers["x-aurelis-cache"], second.headers["x-aurelis-cache"]) == ("miss", "hit")
    assert len(proxy.seen) == 1


def test_timeouts_reach_the_inner_transport(server: str) -> None:
    """The request's timeout extension is passed through untouched (not dropped by a rebuilt request)."""
    client = aurelis_core.instrument(httpx.Client(), {"plugins": ["normalize", "memory"]})
    # The server answers after 1 s, well within the client's default 5 s timeout: only the request's own 0.2 s
    # can have raised ReadTimeout (no bound on elapsed time: a loaded machine may take longer to raise it).
    with pytest.raises(httpx.ReadTimeout):
        client.post(f"{server}/slow", json={"model": "m"}, timeout=0.2, headers={"x-aurelis-ttl": "5"})
    client.close()


# --- the wrapping transport is invisible to its client --------------------------------------------------------


def recording_transport(http: Any, is_async: bool) -> Any:
    """A transport that records the context-manager and close calls it gets, as httpx's own tests do."""
    base = http.AsyncBaseTransport if is_async else http.BaseTransport

    class Recording(base):  # type: ignore[misc, valid-type]
        def __init__(self, name: str, events: list[str]) -> None:
            self.name = name
            self.events = events
            self.custom_setting = f"{name}-setting"

        def close(self) -> None:
            self.events.append(f"{self.name}.close")

        async def aclose(self) -> None:
            self.events.append(f"{self.name}.aclose")

        def __enter__(self) -> Any:
            super().__enter__()
            self.events.append(f"{self.name}.__enter__")
            return self

        def __exit__(self, *args: Any) -> None:
            super().__exit__(*args)
            self.events.append(f"{self.name}.__exit__")

        async def __aenter__(self) -> Any:
            await super().__aenter__()
            self.events.append(f"{self.name}.__aenter__")
            return self

        async def __aexit__(self, *args: Any) -> None:
            await super().__aexit__(*args)
            self.events.append(f"{self.name}.__aexit__")

    return Recording


@pytest.mark.parametrize("http", FLAVOURS)
def test_sync_context_manager_calls_reach_the_transport_and_mounts_in_order(http: Any) -> None:
    def events(instrumented: bool) -> tuple[list[str], Any]:
        log: list[str] = []
        cls = recording_transport(http, is_async=False)
        client = http.Client(transport=cls("transport", log), mounts={"http://mounted": cls("mount", log)})
        if instrumented:
            aurelis_core.instrument(client, {})
        pipeline = aurelis_core.pipeline_of(client)
        with client:
            log.append("body")
        return log, pipeline

    raw, _ = events(False)
    wrapped, pipeline = events(True)
    assert raw == [
        "transport.__enter__", "mount.__enter__", "body",
        "transport.close", "transport.__exit__", "mount.close", "mount.__exit__",
    ]
    assert wrapped == raw
    assert pipeline._closed  # the pipeline instrument() made for the client ends with it


@pytest.mark.anyio
@pytest.mark.parametrize("http", FLAVOURS)
async def test_async_context_manager_calls_reach_the_transport_and_mounts_in_order(http: Any) -> None:
    async def events(instrumented: bool) -> tuple[list[str], Any]:
        log: list[str] = []
        cls = recording_transport(http, is_async=True)
        client = http.AsyncClient(transport=cls("transport", log), mounts={"http://mounted": cls("mount", log)})
        if instrumented:
            aurelis_core.instrument(client, {})
        pipeline = aurelis_core.pipeline_of(client)
        async with client:
            log.append("body")
        return log, pipeline

    raw, _ = await events(False)
    wrapped, pipeline = await events(True)
    assert raw == [
        "transport.__aenter__", "mount.__aenter__", "body",
        "transport.aclose", "transport.__aexit__", "mount.aclose", "mount.__aexit__",
    ]
    assert wrapped == raw
    assert pipeline._closed


@pytest.mark.parametrize("http", FLAVOURS)
def test_attributes_of_the_wrapped_transport_stay_readable(http: Any) -> None:
    client = aurelis_core.instrument(http.Client(), {})
    inner = client._transport.inner
    assert client._transport._pool is inner._pool  # what httpx's and the SDK's own code reach for
    custom = aurelis_core.instrument(http.Client(transport=recording_transport(http, False)("t", [])), {})
    assert custom._transport.custom_setting == "t-setting"
    with pytest.raises(AttributeError):
        _ = custom._transport.no_such_setting
    # Protocols are the wrapper's own business: none is found on the inner transport by a getattr() probe.
    assert not hasattr(client._transport, "__aenter__")
    client.close()
    custom.close()


# --- flavour: a client's responses are of the client's flavour, whatever its transport derives from ---------


class Forwarding:
    """Mixed into a transport base class: forwards each request to another client's own transport, as the
    openai SDK's forwarding transports (x509 workload identity, legacy httpx clients) do."""

    def __init__(self, target: Any) -> None:
        self.target = target

    def handle_request(self, request: Any) -> Any:
        return self.target._transport_for_url(request.url).handle_request(request)

    async def handle_async_request(self, request: Any) -> Any:
        return await self.target._transport_for_url(request.url).handle_async_request(request)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("client_http", FLAVOURS)
def test_a_transport_derived_from_openai_transport_is_wrapped(
    server: str, client_http: Any, config: dict[str, Any]
) -> None:
    """``import openai`` renames ``httpx2.BaseTransport``'s module to ``openai``; the SDK builds httpx (legacy)
    and httpx2 clients on transports deriving from it."""
    import openai

    class SDKForwarding(Forwarding, openai.Transport):  # type: ignore[misc]
        pass

    target = client_http.Client()
    client = aurelis_core.instrument(client_http.Client(transport=SDKForwarding(target)), config)
    for _ in range(2):
        response = client.post(f"{server}/status/200", json={"model": "m"})
        assert type(response) is client_http.Response
        assert response.text == "status body"
    with client.stream("GET", f"{server}/stream") as streamed:
        assert b"".join(streamed.iter_bytes()) == b"chunk0;chunk1;chunk2;chunk3;chunk4;"
    client.close()
    target.close()


@pytest.mark.anyio
@pytest.mark.parametrize("config", CONFIGS)
async def test_an_httpx_client_over_an_httpx2_transport_gets_httpx_responses(
    server: str, config: dict[str, Any]
) -> None:
    class Httpx2Forwarding(Forwarding, httpx2.AsyncBaseTransport):
        pass

    target = httpx.AsyncClient()
    client = aurelis_core.instrument(httpx.AsyncClient(transport=Httpx2Forwarding(target)), config)
    for _ in range(2):
        response = await client.post(f"{server}/status/200", json={"model": "m"})
        assert type(response) is httpx.Response and response.text == "status body"
    async with client.stream("GET", f"{server}/stream") as streamed:
        assert b"".join([chunk async for chunk in streamed.aiter_bytes()]) == b"chunk0;chunk1;chunk2;chunk3;chunk4;"
    await client.aclose()
    await target.aclose()


def test_a_transport_of_no_flavour_is_refused_with_the_choices() -> None:
    class NotATransport:
        def handle_request(self, request: Any) -> Any:
            raise AssertionError("never called")

    with pytest.raises(TypeError, match="expected an httpx or httpx2 object"):
        aurelis_core.Pipeline({}).transport(NotATransport())


# --- the response a transport returns is the response the caller gets ------------------------------------------


class Prebuilt:
    """Mixed into a transport base class: answers with responses built with their body in hand
    (``Response(content=...)``, as ``MockTransport`` handlers and hand-written transports make them), and keeps
    each one it returned."""

    def __init__(self, http: Any) -> None:
        self.http = http
        self.returned: list[Any] = []

    def _answer(self, request: Any) -> Any:
        status = 500 if request.url.path.endswith("/fail") else 200
        response = self.http.Response(status, content=b'{"ok": true}', headers={"content-type": "application/json"})
        self.returned.append(response)
        return response

    def handle_request(self, request: Any) -> Any:
        return self._answer(request)

    async def handle_async_request(self, request: Any) -> Any:
        return self._answer(request)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("http", FLAVOURS)
def test_the_caller_gets_the_very_response_its_transport_returned(http: Any, config: dict[str, Any]) -> None:
    class Transport(Prebuilt, http.BaseTransport):  # type: ignore[misc, name-defined]
        pass

    transport = Transport(http)
    client = aurelis_core.instrument(http.Client(transport=transport), config)
    pipeline = aurelis_core.pipeline_of(client)
    ok = client.post("http://api.example/v1/chat/completions", json={"model": "m"})  # stored on a miss
    assert ok is transport.returned[0]
    assert ok.request.url == "http://api.example/v1/chat/completions" and ok.json() == {"ok": True}
    with pytest.raises(http.HTTPStatusError) as info:
        client.post("http://api.example/v1/fail", json={"model": "m"}).raise_for_status()
    assert info.value.response is transport.returned[1]
    assert info.value.response.request is info.value.request
    # Both requests were over when their (already read) responses were handed over.
    assert pipeline.stats.counters["requests"] == 2
    client.close()


@pytest.mark.anyio
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("http", FLAVOURS)
async def test_the_async_caller_gets_the_very_response_its_transport_returned(
    http: Any, config: dict[str, Any]
) -> None:
    class Transport(Prebuilt, http.AsyncBaseTransport):  # type: ignore[misc, name-defined]
        pass

    transport = Transport(http)
    client = aurelis_core.instrument(http.AsyncClient(transport=transport), config)
    pipeline = aurelis_core.pipeline_of(client)
    ok = await client.post("http://api.example/v1/chat/completions", json={"model": "m"})
    assert ok is transport.returned[0] and ok.request.url == "http://api.example/v1/chat/completions"
    failed = await client.get("http://api.example/v1/fail")
    assert failed is transport.returned[1] and failed.status_code == 500
    assert pipeline.stats.counters["requests"] == 2
    await client.aclose()


@pytest.mark.parametrize("http", FLAVOURS)
def test_a_streamed_response_is_the_transports_own_object(server: str, http: Any) -> None:
    """A response read from the network (not pre-read) is handed over too, not copied, on every path."""
    seen: list[Any] = []

    class Keeping(http.HTTPTransport):  # type: ignore[misc, name-defined]
        def handle_request(self, request: Any) -> Any:
            seen.append(super().handle_request(request))
            return seen[-1]

    for config in ({}, {"plugins": ["normalize", "memory"]}):
        client = aurelis_core.instrument(http.Client(transport=Keeping()), config)
        stored = client.post(f"{server}/status/200", json={"model": "m"})
        passed = client.get(f"{server}/status/503")
        assert stored is seen[-2] and passed is seen[-1]
        assert stored.text == passed.text == "status body"
        client.close()
