"""The drivers of a flow: run it to its return value in this thread, or with ``await``.

A flow (:meth:`aurelis_core.Pipeline.flow`, a life-cycle flow, the cache store at the end of a shared stream) is a
generator that yields only when something returned an awaitable. This module knows nothing of pipelines or
requests: the drivers are handed the flow and, for sync callers, the :class:`LoopBridge` that runs ``async def``
plugins, so the pipeline and the transports import it and it imports neither.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Generator
from typing import Any

__all__ = ["Flow", "LoopBridge", "drive_async", "drive_sync"]

#: What :meth:`Pipeline.flow` is: yields awaitables, is sent their results, returns the response.
Flow = Generator[Awaitable[Any], Any, Any]


def drive_sync(flow: Flow, bridge: LoopBridge) -> Any:
    """Run a flow to its return value, in this thread.

    A flow only yields when something returned an awaitable; under a sync client that is an ``async def``
    plugin (or a deliberate no-op awaitable), which runs on ``bridge``'s loop thread (the pipeline's own).
    """
    send = flow.send
    try:
        awaitable = send(None)
        while True:
            try:
                result = bridge.run(awaitable)
            except BaseException as exc:
                awaitable = flow.throw(exc)
            else:
                awaitable = send(result)
    except StopIteration as stop:
        return stop.value


async def drive_async(flow: Flow) -> Any:
    """Run a flow to its return value, awaiting each awaitable it yields.

    Cancellation is thrown into the flow at the ``await`` it interrupted, so the flow's ``finally`` and
    ``except`` blocks (ending the attempt, releasing in-flight counts) run before the task unwinds.
    """
    send = flow.send
    try:
        awaitable = send(None)
        while True:
            try:
                result = await awaitable
            except BaseException as exc:
                awaitable = flow.throw(exc)
            else:
                awaitable = send(result)
    except StopIteration as stop:
        return stop.value


class _LoopThread:
    """A daemon thread running an event loop, for ``async def`` plugins called from sync clients."""

    def __init__(self) -> None:
        # Imported here: only a sync client with an ``async def`` plugin needs asyncio (~20 ms to import).
        import asyncio

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="aurelis-bridge", daemon=True)
        self.thread.start()

    def run(self, awaitable: Awaitable[Any]) -> Any:
        import asyncio

        return asyncio.run_coroutine_threadsafe(_as_coroutine(awaitable), self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


async def _as_coroutine(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


class LoopBridge:
    """One pipeline's loop thread, for ``async def`` plugins under sync clients: started on first use (most
    pipelines never need one), stopped by :meth:`stop`, started again if a flow needs it after that."""

    def __init__(self) -> None:
        self._thread: _LoopThread | None = None
        self._lock = threading.Lock()

    def run(self, awaitable: Awaitable[Any]) -> Any:
        thread = self._thread
        if thread is None:
            with self._lock:
                thread = self._thread
                if thread is None:
                    thread = self._thread = _LoopThread()
        return thread.run(awaitable)

    def stop(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.stop()
