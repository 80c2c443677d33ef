# Generated from plugins/_writebehind_async.py by aurelis_core._unasync (unasync); do not edit.
# Edit the source, then run: python -m aurelis_core._unasync
"""The write-behind worker's loop, written once.

``_writebehind_async`` (an asyncio task per event loop, for async callers) is the source; ``_writebehind_sync`` (a
daemon thread, for sync callers) is generated from it by ``python -m aurelis_core._unasync``. Both drain a queue
with the same API (``asyncio.Queue``, ``queue.Queue``). How workers start and stop differs between the modes on
purpose (a thread once; a task per loop, stopped from that loop or from another thread) and stays hand-written in
:class:`~aurelis_plugins._writebehind.WriteBehind`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._writebehind import _STOP

if TYPE_CHECKING:
    from queue import Queue

    from ._writebehind import WriteBehind


def drain(writer: WriteBehind[Any], items: Queue[Any]) -> None:
    """Write what is queued in ``items``, up to ``writer.batch`` items at a time, until the stop marker.

    A batch that fails is dropped and reported to ``on_error``: a cache write is never worth a retry storm.
    """
    while True:
        item = items.get()
        stop = item is _STOP
        batch: list[Any] = [] if stop else [item]
        # This worker is the queue's only consumer: a queue that is not empty has an item for get_nowait().
        while not stop and len(batch) < writer.batch and not items.empty():
            item = items.get_nowait()
            if item is _STOP:
                stop = True
            else:
                batch.append(item)
        if batch:
            try:
                writer._write(batch)
            except Exception as exc:
                writer._on_error(exc)
        for _ in range(len(batch) + stop):
            items.task_done()
        if stop:
            return
