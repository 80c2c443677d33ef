"""What the simulated upstream's handlers share: its token count, its answers' headers and senders, and the
exceptions that make it refuse a request or drop a connection."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

__all__ = [
    "JSON_HEADERS", "SSE_HEADERS", "BadRequest", "SimulatedConnectionDrop", "estimate_tokens", "send_json",
    "send_raw",
]

Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

JSON_HEADERS: Final = [(b"content-type", b"application/json")]
SSE_HEADERS: Final = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]


def estimate_tokens(text: str) -> int:
    """Return the simulator's token count for ``text``: its whitespace-separated words.

    Real tokenizers are irrelevant here; what matters is that the number is cheap and
    *consistent*: the streamed chunks are exactly these words, so the ``usage`` block,
    the number of content chunks and ``tpm`` accounting always agree with each other.
    """
    return len(text.split())


class SimulatedConnectionDrop(Exception):
    """Raised inside the app to make the ASGI server abort the connection mid-response."""


class BadRequest(Exception):
    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


async def send_raw(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]]) -> None:
    headers = [*JSON_HEADERS, (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_json(send: Send, status: int, payload: Any, extra: list[tuple[bytes, bytes]]) -> None:
    await send_raw(send, status, json.dumps(payload).encode(), extra)
