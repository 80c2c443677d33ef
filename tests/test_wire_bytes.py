"""Nothing the wrapper does changes the bytes a request sends.

A raw socket server on 127.0.0.1 records every request exactly as it came off the wire (request line, header
names and values in their order and case, body with its framing). Each scenario sends the same request
through a raw client and through an instrumented one built the same way, and the recorded bytes must be
equal: with no plugins, and with ``normalize`` + ``memory`` on a miss, where the only allowed difference is
that the ``x-aurelis-*`` control headers are taken out.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import httpx2
import pytest

import aurelis_core

FLAVOURS = [pytest.param(httpx, id="httpx"), pytest.param(httpx2, id="httpx2")]
CONFIGS = [
    pytest.param({}, id="no-plugins"),
    pytest.param({"plugins": ["normalize", "memory"]}, id="normalize-memory"),
]
ANSWER = b'{"id": "x", "choices": [{"message": {"role": "assistant", "content": "hi"}}]}'

#: Headers in a deliberate order and case, one name twice, a control header in the middle.
HEADERS = [
    ("X-Trace-Id", "trace-1"),
    ("authorization", "Bearer sk-test"),
    ("X-Aurelis-Namespace", "team-a"),
    ("x-Custom", "one"),
    ("X-CUSTOM", "two"),
]
CHAT = b'{"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": "hello"}], "temperature": 0}'


class WireRecorder:
    """An HTTP/1.1 server that keeps the raw bytes of every request and answers each with ``ANSWER``."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.requests: list[bytes] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buffer = b""

        def fill(needed: Callable[[bytes], bool]) -> bool:
            nonlocal buffer
            while not needed(buffer):
                chunk = conn.recv(65536)
                if not chunk:
                    return False
                buffer += chunk
            return True

        with conn:
            while True:
                if not fill(lambda b: b"\r\n\r\n" in b):
                    return
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                fields = dict(
                    (name.strip().lower(), value.strip())
                    for name, _, value in (line.partition(b":") for line in head.split(b"\r\n")[1:])
                )
                if b"content-length" in fields:
                    size = int(fields[b"content-length"])
                    if not fill(lambda b, n=size: len(b) >= n):
                        return
                    body, buffer = buffer[:size], buffer[size:]
                elif fields.get(b"transfer-encoding", b"").lower() == b"chunked":
                    body = b""
                    while True:  # chunks kept with their framing: size line, data, CRLF
                        if not fill(lambda b: b"\r\n" in b):
                            return
                        line = buffer.partition(b"\r\n")[0]
                        size = int(line.split(b";")[0], 16)
                        end = len(line) + 2 + size + 2
                        if not fill(lambda b, n=end: len(b) >= n):
                            return
                        body, buffer = body + buffer[:end], buffer[end:]
                        if size == 0:
                            break
                else:
                    body = b""
                with self._lock:
                    self.requests.append(head + b"\r\n\r\n" + body)
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    + b"content-length: %d\r\n\r\n" % len(ANSWER) + ANSWER
                )

    def take(self) -> list[bytes]:
        with self._lock:
            taken, self.requests = self.requests, []
        return taken

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def wire() -> Iterator[WireRecorder]:
    recorder = WireRecorder()
    yield recorder
    recorder.close()


def without_control_headers(raw: bytes) -> bytes:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"x-aurelis-")]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def chunks() -> Iterator[bytes]:
    yield b"part one, "
    yield b"part two"


async def achunks() -> AsyncIterator[bytes]:
    yield b"part one, "
    yield b"part two"


def requests_for(url: str, config: dict[str, Any], is_async: bool) -> list[dict[str, Any]]:
    """The requests of a scenario, as keyword arguments of ``client.request``."""
    chat = {"method": "POST", "url": url + "/v1/chat/completions", "content": CHAT,
            "headers": [*HEADERS, ("Content-Type", "application/json")]}
    sent = [
        chat,
        {"method": "GET", "url": url + "/v1/models?limit=2&order=desc", "headers": HEADERS},
        {"method": "POST", "url": url + "/v1/embeddings", "headers": HEADERS, "json": {"input": "a b", "model": "e"}},
    ]
    if not config:
        # A streamed upload (chunked framing) passes through a cacheless pipeline untouched too.
        sent.append({"method": "PUT", "url": url + "/upload", "headers": HEADERS,
                     "content": achunks() if is_async else chunks()})
    return sent


def expected(raw: list[bytes], config: dict[str, Any]) -> list[bytes]:
    # A caching pipeline reads and removes the x-aurelis-* control headers: that is all it may change.
    return [without_control_headers(r) for r in raw] if config else raw


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("http", FLAVOURS)
def test_sync_client_sends_the_same_bytes(wire: WireRecorder, http: Any, config: dict[str, Any]) -> None:
    def send(client: Any, instrumented: bool) -> list[bytes]:
        with client:
            for kwargs in requests_for(wire.url, config, is_async=False):
                response = client.request(**kwargs)
                assert response.content == ANSWER
                if instrumented and config and kwargs["method"] == "POST":
                    assert response.headers["x-aurelis-cache"] == "miss"
        return wire.take()

    wire.take()
    raw = send(http.Client(), False)
    instrumented = send(aurelis_core.instrument(http.Client(), config), True)
    assert len(raw) == len(requests_for(wire.url, config, is_async=False))
    assert instrumented == expected(raw, config)


@pytest.mark.anyio
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("http", FLAVOURS)
async def test_async_client_sends_the_same_bytes(wire: WireRecorder, http: Any, config: dict[str, Any]) -> None:
    async def send(client: Any, instrumented: bool) -> list[bytes]:
        async with client:
            for kwargs in requests_for(wire.url, config, is_async=True):
                response = await client.request(**kwargs)
                assert response.content == ANSWER
                if instrumented and config and kwargs["method"] == "POST":
                    assert response.headers["x-aurelis-cache"] == "miss"
        return wire.take()

    wire.take()
    raw = await send(http.AsyncClient(), False)
    instrumented = await send(aurelis_core.instrument(http.AsyncClient(), config), True)
    assert len(raw) == len(requests_for(wire.url, config, is_async=True))
    assert instrumented == expected(raw, config)


def test_the_recorder_sees_a_changed_header_order(wire: WireRecorder) -> None:
    """The comparison above can fail: two clients sending the same headers in another order differ."""
    wire.take()
    with httpx.Client() as client:
        client.post(wire.url + "/v1/chat/completions", headers=HEADERS, content=CHAT)
        client.post(wire.url + "/v1/chat/completions", headers=HEADERS[::-1], content=CHAT)
    first, second = wire.take()
    assert first != second and sorted(first.split(b"\r\n")) == sorted(second.split(b"\r\n"))
