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
