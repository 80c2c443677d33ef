"""``gather``: send many requests through a client with bounded concurrency, results in the caller's order.

>>> responses = await aurelis_core.gather(client, [
...     {"method": "POST", "url": "/chat/completions", "json": {"model": "gpt-4.1-mini", "messages": [...]}},
...     client.build_request("POST", "/embeddings", json={"model": "text-embedding-3-small", "input": "hi"}),
... ], concurrency=16)

Requests of one model are dispatched together (a stable sort by model, in order of first appearance): the
routers' per-model latency figures warm up on a run of calls, a model's answers fill the cache while its
duplicates are still queued, and per-model rate limits see one burst rather than interleaved traffic. Results
still come back in the order of ``requests``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from ._compat import is_async_client

__all__ = ["gather"]

#: A request: a built ``httpx``/``httpx2`` request, or the keyword arguments of ``client.request(...)``.
RequestLike = Any
#: What lands in each slot: the response (body read), or the exception that request raised.
Result = Any


def gather(
    client: Any,
    requests: Iterable[RequestLike],
    *,
    concurrency: int = 16,
    rate: float | None = None,
    schedule: Sequence[float] | None = None,
    group_by_model: bool = True,
    raise_for_status: bool = False,
    on_result: Callable[[int, Result], None] | None = None,
) -> Any:
    """Send ``requests`` through ``client``; return one result per request, in the same order.

    - ``client``: an ``httpx``/``httpx2`` ``AsyncClient`` (then ``gather`` returns an awaitable: ``await`` it)
      or ``Client`` (then it returns the list, sending from ``concurrency`` threads).
    - each request: a built request (``client.build_request(...)``) or a dict of ``client.request`` keyword
      arguments (``method``, ``url``, ``json``/``content``, ``headers``...).
    - ``concurrency``: at most this many requests in flight.
    - ``rate``: at most this many requests started per second (evenly spaced), ``None`` for no limit.
    - ``schedule``: instead of ``rate``, the second (from the start) at which each request is sent; requests
      are then sent in schedule order, not grouped by model.
    - ``group_by_model``: dispatch requests of one model together (see the module docstring).
    - ``raise_for_status``: put an ``HTTPStatusError`` in the slot of a response with status >= 400
      (otherwise such a response is a result like any other).
    - ``on_result(index, result)``: called as each request finishes (for progress reporting).

    Each slot holds the response, its body already read, or the exception that request raised: one failure
    never loses the others' results. Cancelling the whole ``gather`` cancels the requests in flight.
    """
    items = list(requests)
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if rate is not None and not rate > 0:
        raise ValueError(f"rate must be > 0 requests per second, got {rate}")
    if schedule is not None:
        if rate is not None:
            raise ValueError("pass either rate or schedule, not both")
        if len(schedule) != len(items):
            raise ValueError(f"schedule has {len(schedule)} start times for {len(items)} requests")
        order = sorted(range(len(items)), key=lambda i: schedule[i])
        starts: Sequence[float] | None = [schedule[i] for i in order]
    else:
        order = _by_model(items) if group_by_model else list(range(len(items)))
        starts = [n / rate for n in range(len(items))] if rate is not None else None
    job = _Job(client, items, order, starts, raise_for_status, on_result)
    workers = min(concurrency, len(items))
    if is_async_client(client):
        return job.run_async(workers)
    return job.run_sync(workers)


def _model_of(item: RequestLike) -> str | None:
    if isinstance(item, Mapping):
        body = item.get("json")
    else:
        try:
            body = json.loads(item.content)
        except Exception:  # a streamed, unread, empty or non-JSON body: no model to group by
            return None
    model = body.get("model") if isinstance(body, Mapping) else None
    return model if isinstance(model, str) else None


def _by_model(items: Sequence[RequestLike]) -> list[int]:
    first_seen: dict[str | None, int] = {}
    models = [_model_of(item) for item in items]
    for model in models:
        first_seen.setdefault(model, len(first_seen))
    return sorted(range(len(items)), key=lambda i: first_seen[models[i]])


class _Job:
    """One ``gather`` call: the items, the dispatch order and pacing, and the result slots."""

    def __init__(
        self,
        client: Any,
        items: list[RequestLike],
        order: list[int],
        starts: Sequence[float] | None,
        raise_for_status: bool,
        on_result: Callable[[int, Result], None] | None,
    ) -> None:
        self.client = client
        self.items = items
        self.starts = starts
        self.raise_for_status = raise_for_status
        self.on_result = on_result
        self.results: list[Result] = [None] * len(items)
        # Workers share one iterator: each takes the next request in dispatch order, so pacing (which is by
        # dispatch position) and grouping hold whatever the number of workers.
        self._next: Iterator[tuple[int, int]] = iter(enumerate(order))

    def _finish(self, index: int, result: Result) -> None:
        if self.raise_for_status and not isinstance(result, BaseException) and result.status_code >= 400:
            try:
                result.raise_for_status()
            except Exception as exc:
                result = exc
        self.results[index] = result
        if self.on_result is not None:
            self.on_result(index, result)

    # --- async -----------------------------------------------------------------------------------------------

    async def run_async(self, workers: int) -> list[Result]:
        # Imported here, not at the top: ``import aurelis_core`` stays free of async machinery for sync users.
        # anyio is what httpx's async clients already run on, so this works under asyncio and trio alike.
        import anyio

        started = time.monotonic()
        async with anyio.create_task_group() as group:
            for _ in range(workers):
                group.start_soon(self._async_worker, started)
        return self.results

    async def _async_worker(self, started: float) -> None:
        import anyio

        client = self.client
        # Iterating a shared iterator is safe here: no await between taking an item and starting on it.
        for position, index in self._next:
            if self.starts is not None:
                delay = started + self.starts[position] - time.monotonic()
                if delay > 0:
                    await anyio.sleep(delay)
            item = self.items[index]
            try:
                sending: Awaitable[Any] = (
                    client.request(**item) if isinstance(item, Mapping) else client.send(item)
                )
                result: Result = await sending
            except Exception as exc:
                result = exc
            self._finish(index, result)

    # --- sync ------------------------------------------------------------------------------------------------

    def run_sync(self, workers: int) -> list[Result]:
        from concurrent.futures import ThreadPoolExecutor  # only sync gather needs it (~8 ms to import)

        started = time.monotonic()
        lock = threading.Lock()
        with ThreadPoolExecutor(max_workers=max(workers, 1), thread_name_prefix="aurelis-gather") as pool:
            futures = [pool.submit(self._sync_worker, started, lock) for _ in range(workers)]
        for future in futures:
            future.result()  # a worker only raises on a bug of its own; don't hide it
        return self.results

    def _sync_worker(self, started: float, lock: threading.Lock) -> None:
        client = self.client
        while True:
            with lock:
                taken = next(self._next, None)
            if taken is None:
                return
            position, index = taken
            if self.starts is not None:
                delay = started + self.starts[position] - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            item = self.items[index]
            try:
                result: Result = client.request(**item) if isinstance(item, Mapping) else client.send(item)
            except Exception as exc:
                result = exc
            with lock:
                self._finish(index, result)
