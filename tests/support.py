"""Helpers for tests that must not depend on how fast a loaded machine runs them.

``FakeClock``
    A clock a test moves by hand: pass it wherever a plugin takes a clock (``pipeline.health.clock``, a rate
    limiter's ``clock``, a router's ``clock=``), then ``advance()`` instead of sleeping.
``GatedUpstream``
    A real loopback HTTP server whose answers wait until the test releases them, counting each request as it
    arrives: "a request is in flight now" becomes a condition to wait for, not a sleep that is long enough on
    an idle machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from typing import Any

from aurelis_core.testing import serve

#: How long a test waits for a condition that holds within milliseconds on an idle machine. Only a broken
#: test ever waits this long; a slow machine merely waits longer for what will come.
PATIENCE = 30.0


class FakeClock:
    """A monotonic clock that moves only when told. Starts far from zero, like ``time.monotonic`` does."""

    def __init__(self, now: float = 10_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


class GatedUpstream:
    """An OpenAI-ish upstream on 127.0.0.1 whose answers the test holds back and lets go.

    ``status``, ``headers`` and ``body`` are what every request is answered with. While :meth:`hold` is in
    force, each request is counted on arrival and then waits until :meth:`release`.
    """

    def __init__(self) -> None:
        self.status = 200
        self.headers: dict[str, str] = {}
        self.body: bytes = json.dumps(
            {"id": "chatcmpl-gated", "object": "chat.completion", "choices": [], "usage": {"total_tokens": 3}}
        ).encode()
        self.url = ""
        self._open = threading.Event()
        self._open.set()
        self._arrived = 0
        self._cond = threading.Condition()

    @property
    def arrived(self) -> int:
        return self._arrived

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def wait_arrivals(self, count: int) -> None:
        """Block until ``count`` requests have arrived in all (call it from a thread in async tests)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._arrived >= count, PATIENCE):
                raise AssertionError(f"only {self._arrived} of {count} requests arrived")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        while True:  # read the whole request body
            message = await receive()
            if not message.get("more_body"):
                break
        with self._cond:
            self._arrived += 1
            self._cond.notify_all()
        # The server's own loop polls the gate: the test thread cannot await on this loop.
        while not self._open.is_set():
            await asyncio.sleep(0.001)
        headers = [(b"content-type", b"application/json")]
        headers += [(k.encode(), v.encode()) for k, v in self.headers.items()]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


@contextlib.contextmanager
def gated_upstream() -> Iterator[GatedUpstream]:
    app = GatedUpstream()
    with serve(app) as server:  # type: ignore[arg-type]
        app.url = server.url
        try:
            yield app
        finally:
            app.release()  # nothing may stay parked when the server stops
