"""A bounded write-behind queue, so a slow cache tier's writes never hold up a response.

A tier hands each write (a store, a hit count) to :meth:`WriteBehind.put` and returns at once; a background
worker takes what has queued up and writes it in one batch (one Redis pipeline, one SQLite transaction), which
is also far cheaper per item than writing each on its own. Two workers, chosen by the request's mode:

- async clients: an asyncio task on the caller's event loop, so the tier's asyncio client (bound to that loop)
  does the writing and nothing blocks the loop;
- sync clients: a daemon thread with the tier's sync client.

The queue is bounded (``maxsize`` items per worker): when it is full the write is dropped and counted, never
waited for. A cache that lags is harmless; a request that blocks on one is not. ``close``/``aclose`` (called
from the tier's ``aurelis_close``) write out what is queued before returning.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, Generic, TypeVar

from aurelis_core.plugin import component_logger

__all__ = ["ASYNC", "SYNC", "HitCounts", "WriteBehind"]

#: The two values of ``is_async`` (:meth:`WriteBehind.put`), by name: the generated sync twins of the async I/O
#: modules (``aurelis_core._unasync``) pass ``SYNC`` where their async source passes ``ASYNC``.
ASYNC: Final = True
SYNC: Final = False

T = TypeVar("T")

_STOP = object()


class _LoopWorker(Generic[T]):
    """The async worker of one event loop: its queue (bounded: a full queue drops, never waits) and the task
    draining it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, maxsize: int) -> None:
        self.loop = loop
        self.items: asyncio.Queue[Any] = asyncio.Queue(maxsize)
        self.closing = False
        self.task: asyncio.Task[None] | None = None


class WriteBehind(Generic[T]):
    """Queue items for ``write`` (sync, a list of items) or ``awrite`` (async, a list of items).

    ``on_error(exc)`` is told about a batch that failed (the batch is dropped: a cache write is never worth a
    retry storm); ``on_drop()`` about each item dropped because the queue was full.
    """

    def __init__(
        self,
        name: str,
        write: Callable[[list[T]], None],
        awrite: Callable[[list[T]], Awaitable[None]],
        *,
        on_error: Callable[[BaseException], None],
        on_drop: Callable[[], None],
        maxsize: int = 10_000,
        batch: int = 512,
    ) -> None:
        self.name = name
        self.maxsize = maxsize
        self.batch = batch
        #: Items dropped because the queue was full (or could not be written out on close).
        self.dropped = 0
        self._write = write
        self._awrite = awrite
        self._on_error = on_error
        self._on_drop = on_drop
        self._queue: queue.Queue[Any] = queue.Queue(maxsize)
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()
        self._worker: _LoopWorker[T] | None = None

    def put(self, item: T, is_async: bool) -> None:
        """Queue ``item``; never blocks. ``is_async``: the caller runs on an event loop (``ctx.is_async``)."""
        if is_async:
            worker = self._worker
            if worker is None or worker.loop is not asyncio.get_running_loop() or worker.closing:
                worker = self._start_task()
            try:
                worker.items.put_nowait(item)
            except asyncio.QueueFull:
                self._drop()
            return
        if self._thread is None:
            self._start_thread()
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self._drop()

    def _drop(self, count: int = 1) -> None:
        self.dropped += count
        for _ in range(count):
            self._on_drop()

    # The workers' loop is written once, async (``_writebehind_async.drain``), its thread twin generated
    # (``_writebehind_sync.drain``); starting and stopping them differs by mode on purpose and is written here.

    # --- sync worker -------------------------------------------------------------------------------------------

    def _start_thread(self) -> None:
        with self._thread_lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=_writebehind_sync.drain, args=(self, self._queue),
                    name=f"aurelis-{self.name}-writer", daemon=True,
                )
                self._thread.start()

    def flush(self) -> None:
        """Wait until everything queued by sync callers is written."""
        if self._thread is not None:
            self._queue.join()

    # --- async worker ------------------------------------------------------------------------------------------

    def _start_task(self) -> _LoopWorker[T]:
        old = self._worker
        if old is not None and old.loop.is_closed() and old.items.qsize():
            # Its loop is gone (``asyncio.run`` per call, say): those writes cannot happen any more.
            self._drop(old.items.qsize())
        worker: _LoopWorker[T] = _LoopWorker(asyncio.get_running_loop(), self.maxsize)
        worker.task = worker.loop.create_task(
            _writebehind_async.drain(self, worker.items), name=f"aurelis-{self.name}-writer"
        )
        self._worker = worker
        return worker

    async def aflush(self) -> None:
        """Wait until everything queued by async callers on this loop is written."""
        worker = self._worker
        if worker is None or worker.task is None or worker.loop is not asyncio.get_running_loop():
            return
        if not worker.task.done():
            await worker.items.join()

    # --- closing -----------------------------------------------------------------------------------------------

    async def _stop_worker(self, worker: _LoopWorker[T]) -> None:
        worker.closing = True
        if worker.task is None or worker.task.done():  # cancelled with its loop: nothing will write the rest
            self._drop(worker.items.qsize())
            return
        await worker.items.put(_STOP)  # waits for room, if it must, while the worker writes out the queue
        await worker.task

    def close(self, timeout: float = 5.0) -> None:
        """Write out what is queued and stop the workers (sync side; an async worker is stopped on its loop
        if that loop is still running elsewhere, else its items are counted as dropped)."""
        worker, self._worker = self._worker, None
        if worker is not None and not worker.loop.is_closed():
            if worker.loop.is_running():
                try:
                    future = asyncio.run_coroutine_threadsafe(self._stop_worker(worker), worker.loop)
                    future.result(timeout)
                except Exception:
                    component_logger(f"cache.{self.name}").warning(
                        "%s: write-behind queue not flushed on close", self.name
                    )
            else:
                self._drop(worker.items.qsize())
        elif worker is not None:
            self._drop(worker.items.qsize())
        self._close_thread(timeout)

    async def aclose(self, timeout: float = 5.0) -> None:
        """Write out what is queued and stop the workers (from a running event loop)."""
        worker, self._worker = self._worker, None
        if worker is not None:
            if worker.loop is asyncio.get_running_loop():
                await asyncio.wait_for(self._stop_worker(worker), timeout)
            elif not worker.loop.is_closed() and worker.loop.is_running():
                future = asyncio.run_coroutine_threadsafe(self._stop_worker(worker), worker.loop)
                await asyncio.wrap_future(future)
            else:
                self._drop(worker.items.qsize())
        if self._thread is not None:
            await asyncio.to_thread(self._close_thread, timeout)

    def _close_thread(self, timeout: float) -> None:
        thread = self._thread
        if thread is None:
            return
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            component_logger(f"cache.{self.name}").warning(
                "%s: write-behind thread is stuck; queued writes are lost", self.name
            )
            return
        thread.join(timeout)
        self._thread = None


class HitCounts:
    """Hit counts gathered in a dict and handed to a write-behind queue as one item per ``interval``.

    Counting a hit is then a dict increment (~0.1 us) instead of a queued item per hit, which would wake the
    writer (a thread switch, or a task and a thread hop) on every cache hit. The item handed over is
    ``("hits", {key: count}, time.time())``. Counts are approximate by design: up to ``interval`` seconds of
    them are in memory, and a crash loses them; they only rank entries for eviction and warming.
    """

    def __init__(self, queue: WriteBehind[Any], interval: float = 1.0, max_keys: int = 1000) -> None:
        self.queue = queue
        self.interval = interval
        self.max_keys = max_keys
        self.counts: dict[str, int] = {}
        self.last = time.monotonic()

    def add(self, key: str, is_async: bool) -> None:
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1
        if len(counts) >= self.max_keys or time.monotonic() - self.last >= self.interval:
            self.hand_off(is_async)

    def hand_off(self, is_async: bool) -> None:
        """Queue the counts gathered so far (also called on close)."""
        counts, self.counts = self.counts, {}
        self.last = time.monotonic()
        if counts:
            self.queue.put(("hits", counts, time.time()), is_async)


# The workers' loop, written once (async) and generated (sync): imported last, as it uses this module's names
# (``_STOP``) at import time.
from . import _writebehind_async, _writebehind_sync  # noqa: E402
