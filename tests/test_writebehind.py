"""The write-behind queue's two workers (a thread for sync callers, a task per event loop for async ones) run one
loop, generated for the thread from the task's source: they batch, bound and flush alike."""

from __future__ import annotations

import asyncio
import threading

import pytest

from aurelis_plugins._writebehind import WriteBehind


def make(write_batches: list[list[int]], *, maxsize: int = 1000, batch: int = 512,
         gate: asyncio.Event | threading.Event | None = None) -> tuple[WriteBehind[int], list[int]]:
    dropped: list[int] = []

    def write(items: list[int]) -> None:
        if isinstance(gate, threading.Event):
            gate.wait(5)
        write_batches.append(items)

    async def awrite(items: list[int]) -> None:
        if isinstance(gate, asyncio.Event):
            await gate.wait()
        await asyncio.sleep(0)
        write_batches.append(items)

    queue: WriteBehind[int] = WriteBehind(
        "test", write, awrite, on_error=lambda exc: None, on_drop=lambda: dropped.append(1), maxsize=maxsize,
        batch=batch,
    )
    return queue, dropped


def test_both_workers_write_in_batches_of_at_most_batch_items_in_order() -> None:
    sync_batches: list[list[int]] = []
    gate = threading.Event()
    queue, _ = make(sync_batches, batch=3, gate=gate)
    for i in range(10):
        queue.put(i, False)
    gate.set()
    queue.close()

    async_batches: list[list[int]] = []

    async def main() -> None:
        aqueue, _ = make(async_batches, batch=3)
        for i in range(10):
            aqueue.put(i, True)
        await aqueue.aclose()

    asyncio.run(main())
    for batches in (sync_batches, async_batches):
        assert [i for b in batches for i in b] == list(range(10))
        assert max(len(b) for b in batches) == 3
    assert async_batches == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]  # all queued before the task first ran


def test_a_full_async_queue_drops_and_counts_never_waits_and_aclose_writes_the_rest() -> None:
    batches: list[list[int]] = []

    async def main() -> tuple[WriteBehind[int], list[int]]:
        gate = asyncio.Event()
        queue, dropped = make(batches, maxsize=4, gate=gate)
        queue.put(0, True)
        await asyncio.sleep(0.01)  # the worker took item 0 and waits at the gate
        for i in range(1, 20):
            queue.put(i, True)
        assert queue.dropped == len(dropped) == 15  # room for 4 behind the one being written
        gate.set()
        await queue.aclose()
        return queue, dropped

    queue, dropped = asyncio.run(main())
    assert [i for b in batches for i in b] == [0, 1, 2, 3, 4]
    assert queue.dropped == len(dropped) == 15


def test_aflush_returns_once_everything_queued_on_the_loop_is_written() -> None:
    batches: list[list[int]] = []

    async def main() -> list[int]:
        queue, _ = make(batches, batch=2)
        for i in range(7):
            queue.put(i, True)
        await queue.aflush()
        written = [i for b in batches for i in b]
        await queue.aclose()
        return written

    assert asyncio.run(main()) == list(range(7))


def test_items_queued_on_a_loop_that_closed_without_aclose_are_counted_as_dropped() -> None:
    batches: list[list[int]] = []
    gate = asyncio.Event()  # never set: the first batch never finishes on the first loop
    queue, dropped = make(batches, gate=gate)

    async def fill() -> None:
        queue.put(0, True)
        await asyncio.sleep(0.01)
        for i in range(1, 4):
            queue.put(i, True)

    asyncio.run(fill())  # asyncio.run cancels the stuck worker and closes its loop

    async def later() -> None:
        queue.put(99, True)  # a new loop: a new worker; the old one's 3 waiting items are lost, and counted
        await queue.aclose()

    gate.set()
    asyncio.run(later())
    assert queue.dropped == len(dropped) == 3
    assert batches == [[99]]


@pytest.mark.parametrize("is_async", [False, True])
def test_a_failed_batch_is_reported_and_dropped_and_the_worker_goes_on(is_async: bool) -> None:
    errors: list[BaseException] = []
    written: list[list[int]] = []

    def write(items: list[int]) -> None:
        if 0 in items:
            raise OSError("down")
        written.append(items)

    async def awrite(items: list[int]) -> None:
        write(items)

    queue: WriteBehind[int] = WriteBehind(
        "test", write, awrite, on_error=errors.append, on_drop=lambda: None, batch=1
    )

    async def run_async() -> None:
        for i in range(3):
            queue.put(i, True)
        await queue.aclose()

    if is_async:
        asyncio.run(run_async())
    else:
        for i in range(3):
            queue.put(i, False)
        queue.close()
    assert [str(e) for e in errors] == ["down"]
    assert written == [[1], [2]]
