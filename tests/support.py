"""Tools for tests that must not depend on how fast a loaded machine runs them.

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
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
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

    ``status``, ``headers`` and ``body`` are what a request is answered with, read when its answer is sent.
    Requests that arrive while :meth:`hold` is in force wait until :meth:`release`; :meth:`stop_holding` lets
    later ones through at once while those held keep waiting. Every request is counted on arrival.
    """

    def __init__(self) -> None:
        self.status = 200
        self.headers: dict[str, str] = {}
        self.body: bytes = json.dumps(
            {"id": "chatcmpl-gated", "object": "chat.completion", "choices": [], "usage": {"total_tokens": 3}}
        ).encode()
        self.url = ""
        self._holding = False
        self._held: list[threading.Event] = []
        self._arrived = 0
        self._cond = threading.Condition()

    @property
    def arrived(self) -> int:
        return self._arrived

    def hold(self) -> None:
        with self._cond:
            self._holding = True

    def stop_holding(self) -> None:
        with self._cond:
            self._holding = False

    def release(self) -> None:
        with self._cond:
            self._holding = False
            held, self._held = self._held, []
        for gate in held:
            gate.set()

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
        gate = threading.Event()
        with self._cond:
            self._arrived += 1
            if self._holding:
                self._held.append(gate)
            else:
                gate.set()
            self._cond.notify_all()
        # The server's own loop polls the gate: the test thread cannot await on this loop.
        while not gate.is_set():
            await asyncio.sleep(0.001)
        headers = [(b"content-type", b"application/json")]
        headers += [(k.encode(), v.encode()) for k, v in self.headers.items()]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


def joined(pipeline: Any, count: int) -> None:
    """Wait until the pipeline's flights in progress count ``count`` callers in (single-flight: a leader and
    its followers). Sync callers are threads: one that has missed the cache may not have joined yet, and no
    public signal says when it has, so this reads the flights' counts. Only to know threads are waiting; tests
    never assert on it."""
    deadline = time.monotonic() + PATIENCE
    while sum(f.consumers for f in list(pipeline._flights._flights.values())) < count:
        assert time.monotonic() < deadline, "the callers never joined"
        time.sleep(0.001)


@contextlib.contextmanager
def gated_upstream() -> Iterator[GatedUpstream]:
    app = GatedUpstream()
    with serve(app) as server:  # type: ignore[arg-type]
        app.url = server.url
        try:
            yield app
        finally:
            app.release()  # nothing may stay parked when the server stops


def sse(*events: bytes | str) -> list[bytes]:
    """Event-stream chunks, one per event: ``b"data: ..."`` and ``"[DONE]"`` become ``data: [DONE]``."""
    out = []
    for event in events:
        text = event.encode() if isinstance(event, str) else event
        out.append(text if text.startswith((b"data:", b":")) else b"data: " + text + b"\n\n")
    return [c if c.endswith(b"\n\n") else c + b"\n\n" for c in out]


class GatedStream:
    """An event-stream upstream on 127.0.0.1 that sends each chunk of ``chunks`` only when the test allows it.

    Every request gets the same chunks. :meth:`allow` lets each request send ``n`` more of them (all of them
    without ``n``); ``cut_after`` drops the connection after that many chunks instead of ending the body.
    The counts of requests, chunks sent and client disconnects can be waited for.
    """

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.cut_after: int | None = None
        #: While set, a request's status and headers wait too (not only its chunks).
        self.hold_head = False
        #: The (host, port) each request came from: the same port twice is a reused connection.
        self.clients: list[tuple[Any, ...]] = []
        self.url = ""
        self._allowed = 0
        self._requests = 0
        self._sent = 0
        self._disconnects = 0
        self._cond = threading.Condition()

    @property
    def requests(self) -> int:
        return self._requests

    @property
    def sent(self) -> int:
        """Chunks sent to the latest request."""
        return self._sent

    def allow(self, count: int | None = None) -> None:
        with self._cond:
            self._allowed = len(self.chunks) if count is None else self._allowed + count
            self._cond.notify_all()

    def _wait(self, what: str, done: Any) -> None:
        with self._cond:
            if not self._cond.wait_for(done, PATIENCE):
                raise AssertionError(f"waited in vain for {what}")

    def wait_sent(self, count: int) -> None:
        self._wait(f"{count} chunks sent", lambda: self._sent >= count)

    def wait_requests(self, count: int) -> None:
        self._wait(f"{count} requests", lambda: self._requests >= count)

    def wait_disconnects(self, count: int) -> None:
        self._wait(f"{count} disconnects", lambda: self._disconnects >= count)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if not message.get("more_body"):
                break
        with self._cond:
            self._requests += 1
            self._sent = 0
            self.clients.append(tuple(scope.get("client") or ()))
            self._cond.notify_all()

        async def watch() -> None:  # the client going away shows as http.disconnect
            if (await receive())["type"] == "http.disconnect":
                with self._cond:
                    self._disconnects += 1
                    self._cond.notify_all()

        watcher = asyncio.ensure_future(watch())
        while self.hold_head:
            await asyncio.sleep(0.001)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        for index, chunk in enumerate(self.chunks):
            while self._allowed <= index:
                await asyncio.sleep(0.001)
            if self.cut_after is not None and index == self.cut_after:
                raise ConnectionAbortedError("stream cut off (on purpose)")
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            with self._cond:
                self._sent = index + 1
                self._cond.notify_all()
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        watcher.cancel()


@contextlib.contextmanager
def gated_stream(chunks: list[bytes]) -> Iterator[GatedStream]:
    app = GatedStream(chunks)
    with serve(app) as server:  # type: ignore[arg-type]
        app.url = server.url
        try:
            yield app
        finally:
            app.allow()


def open_files_at(prefix: Path | str) -> list[str]:
    """The files this process holds open whose path starts with ``prefix`` (from Linux's /proc)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(prefix)):
            found.append(target)
    return found


@contextlib.contextmanager
def live_loops(count: int) -> Iterator[list[asyncio.AbstractEventLoop]]:
    """``count`` event loops, each running on a thread of its own until the block ends (what an application
    with a loop per worker thread has); hand them work with ``asyncio.run_coroutine_threadsafe``. At the end each
    loop first finishes what was handed to it (a close scheduled on it, say), then stops."""
    loops = [asyncio.new_event_loop() for _ in range(count)]
    runners = [threading.Thread(target=loop.run_forever, daemon=True) for loop in loops]
    for runner in runners:
        runner.start()
    try:
        yield loops
    finally:
        for loop, runner in zip(loops, runners, strict=True):
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(_settle(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            runner.join(5)
            loop.close()


async def _settle() -> None:
    """Wait for the running loop's other tasks."""
    others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    await asyncio.gather(*others, return_exceptions=True)
