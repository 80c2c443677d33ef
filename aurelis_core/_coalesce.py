"""Single-flight: identical requests in flight at the same time share one upstream call.

When a cacheable request misses every cache tier, it *joins* the in-flight call for its cache key. The first
one in becomes the **leader** and sends; the others are **followers**: they wait for the leader's answer and
get the same status, headers and body (or the same exception), without a call of their own. A burst of 100
identical prompts (a dashboard refresh, a retry storm, fan-out workers) costs one upstream call, not 100.

A :class:`Flight` is that shared call. Its body is a list of chunks that grows as the upstream sends them;
each caller reads it through its own cursor (:class:`FlightStream`). There is no reader task: whichever
caller needs the next chunk first *pulls* it from the upstream and appends it for the others. So

- a follower of a stream gets the chunks so far at once, then the rest live, as they arrive;
- the leader's caller may stop reading (close its response) and the followers still get the whole stream:
  one of them pulls the rest. The upstream is closed only when every caller has left;
- a cancelled caller never cancels the others: an async pull is shielded from its caller's cancellation
  while other callers share the flight (the cancellation lands as soon as the chunk in hand arrives);
- if the leader is cancelled before the answer arrived, the followers are woken up and one of them sends.

Flights are kept per *domain*: sync callers (threads) share flights with each other, async callers share
them within one event loop. An async stream belongs to the loop that opened it, so callers on two loops (or a
sync and an async client on one pipeline) do not wait on each other; each domain makes its own call.

Memory: a flight keeps the chunks it has pulled, for late joiners and for the cache store at the end, up to its
``limit`` (the largest entry any cache tier takes). Past it, nothing of it will be stored: the flight stops taking
joiners and, once a single caller reads it, drops each chunk as soon as it was handed over, so an answer too
large to cache costs no more memory than the caller's own reading of it.

Waiting is the only I/O here, and it is kept at the edges: the pipeline's sans-I/O flow calls
:meth:`Flight.wait_head`, which blocks a sync caller on a condition variable, or returns an awaitable for the
async driver to await. The end of a stream (end the attempt, store the answer) is the pipeline's callback, done
the same way: in place for sync callers, an awaitable for async ones, awaited here. This module runs no flow.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any

from ._compat import header_items
from ._models import USAGE_TAIL
from ._sse import stream_complete

if TYPE_CHECKING:
    import anyio

# anyio (and asyncio) are imported where an async caller first needs them, not here: a sync-only process
# would pay ~20-30 ms of `import aurelis_core` for them. An async caller has them imported already.

__all__ = ["COALESCED", "Flight", "FlightStream", "Flights", "flight_stream", "tail"]

#: ``ctx.cache_tier`` (and ``x-aurelis-cache-tier``) of a follower's response.
COALESCED = "coalesced"

#: After its end marker a stream has only its terminating bytes left; a chunk larger than this there means
#: it was not over after all, and the caller who stopped reading did not have the whole answer.
DRAIN_LIMIT = 4096

#: Bytes at the end of a stream that tell whether it is complete (its last events): see :func:`tail`.
TAIL = 64 * 1024

#: Called once when a stream flight's upstream body is over: ``(error, complete)``; ``complete`` is true when
#: the body was read to its end without error. What it does (the cache store) it does in place for a sync
#: flight; for an async one it may return an awaitable, awaited where the stream ended.
EndCallback = Callable[[BaseException | None, bool], Awaitable[Any] | None]


def tail(chunks: list[bytes] | tuple[bytes, ...], count: int = TAIL) -> bytes:
    """The last chunks joined, at least ``count`` bytes of them (all, if fewer): enough to find a stream's end
    marker (a dialect's ``stream_complete`` scans from the end) without joining a large stream whole."""
    start = len(chunks)
    held = 0
    while start and held < count:
        start -= 1
        held += len(chunks[start])
    return b"".join(chunks[start:])


def _domain() -> object:
    """The event loop of the running task, as a hashable token (asyncio's loop, or anyio's for others).

    asyncio is looked up, not imported: where it was never imported, no asyncio loop can be running.
    """
    asyncio = sys.modules.get("asyncio")
    if asyncio is not None:
        try:
            return asyncio.get_running_loop()  # ~50 ns: the common case
        except RuntimeError:
            pass
    import anyio.lowlevel

    return anyio.lowlevel.current_token()


class Flights:
    """The in-flight calls of one pipeline, by (domain, cache key)."""

    def __init__(self) -> None:
        # One lock for joining and leaving, so that "the last caller left, close the upstream" and "a new
        # caller joins" cannot interleave. Held for a dict operation and a counter, never across I/O.
        self._lock = threading.Lock()
        self._flights: dict[tuple[object, str], Flight] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def join(self, key: str, is_async: bool) -> tuple[Flight, bool]:
        """The flight for ``key`` and whether the caller leads it (it was not in flight: the caller sends)."""
        token = (_domain() if is_async else None, key)
        with self._lock:
            flight = self._flights.get(token)
            if flight is not None:
                flight.consumers += 1
                if not is_async and flight._cond is None:
                    flight._cond = threading.Condition(threading.Lock())
                return flight, False
            flight = self._flights[token] = Flight(self, token, is_async)
            return flight, True

    def solo(self, is_async: bool) -> Flight:
        """A flight nobody can join: the stream tee of a request that opted out of coalescing."""
        return Flight(self, None, is_async)

    def condition(self, flight: Flight) -> threading.Condition:
        """``flight``'s condition variable, made on first need (under the lock: there must be only one)."""
        with self._lock:
            if flight._cond is None:
                flight._cond = threading.Condition(threading.Lock())
            return flight._cond

    def remove(self, flight: Flight) -> None:
        """Stop new callers from joining ``flight`` (callers already in keep reading it)."""
        with self._lock:
            self._remove(flight)

    def _remove(self, flight: Flight) -> None:
        if flight.token is not None and self._flights.get(flight.token) is flight:
            del self._flights[flight.token]

    def release_alone(self, flight: Flight) -> bool:
        """If nobody joined ``flight`` yet, take it out so nobody will, and return True: its leader hands its
        answer over on its own (an answer too large to share or store is passed through untouched)."""
        with self._lock:
            if flight.consumers != 1:
                return False
            self._remove(flight)
            return True

    def leave(self, flight: Flight) -> bool:
        """A caller stopped reading ``flight`` early; true when it was the last one (the flight is dead)."""
        with self._lock:
            flight.consumers -= 1
            if flight.consumers > 0 or flight.finished:
                return False
            self._remove(flight)
            return True


class Flight:
    """One upstream call and its answer as far as it has arrived. See the module docstring.

    State moves one way: no head -> head (``status``, ``headers``) -> finished (``error`` set, or the body
    complete in ``chunks``). ``retry`` instead of a head means the leader gave up before an answer (it was
    cancelled): followers start over and one of them leads.

    ``chunks[i]`` is chunk ``base + i`` of the body: ``base`` moves on when a flight that no longer keeps its
    chunks (``kept`` false, see the module docstring) drops the ones its only reader has had.
    """

    __slots__ = (
        "_cond", "_event", "_iter", "_on_end", "_upstream", "base", "chunks", "complete", "consumers", "error",
        "extensions", "finished", "first_chunk", "flights", "head", "headers", "is_async", "kept", "limit",
        "pulling", "retry", "size", "status", "streaming", "token",
    )

    def __init__(self, flights: Flights, token: tuple[object, str] | None, is_async: bool) -> None:
        self.flights = flights
        self.token = token
        self.is_async = is_async
        self.consumers = 1
        self.status: int | None = None
        #: The answer's headers as ``(raw name, lower-cased name, value)`` (see ``_compat.header_items``).
        self.headers: list[tuple[bytes, bytes, bytes]] = []
        self.extensions: dict[str, Any] = {}
        self.streaming = False
        self.chunks: list[bytes] = []
        #: When the first chunk of the body arrived (``time.perf_counter()``), ``None`` before.
        self.first_chunk: float | None = None
        #: The first chunk's first bytes (where an Anthropic stream has its input tokens), ``None`` before.
        self.head: bytes | None = None
        #: Whether a stream's last bytes show it complete: its dialect's ``stream_complete``.
        self.complete: Callable[[bytes], bool] = stream_complete
        self.base = 0
        #: Bytes pulled so far, and how many the flight keeps (``None``: all); ``kept``: it has kept them all.
        self.size = 0
        self.limit: int | None = None
        self.kept = True
        self.finished = False
        self.retry = False
        self.error: BaseException | None = None
        self.pulling = False
        self._upstream: Any = None
        self._iter: Any = None
        self._on_end: EndCallback | None = None
        # Sync callers wait on a condition, async ones (all on one thread) on an anyio Event. Both are made
        # only when somebody may wait (a follower joins, a body is read through the flight): a flight nobody
        # joins, the usual miss, then costs no synchronisation object (a Condition costs ~3.5 us to make).
        self._cond: threading.Condition | None = None
        self._event: anyio.Event | None = None

    # --- signalling ------------------------------------------------------------------------------------------

    def _notify(self) -> None:
        """Wake every waiter: the state just changed.

        Changes are made before this, outside the condition's lock: waiters check the state holding it and
        wait atomically, and waking them takes the lock, so no wake-up is lost. A condition made after the
        change belongs to a follower that will see the change when it first checks.
        """
        if self.is_async:
            event, self._event = self._event, None
            if event is not None:
                event.set()
        else:
            cond = self._cond
            if cond is not None:
                with cond:
                    cond.notify_all()

    async def _await_change(self) -> None:
        import anyio

        event = self._event
        if event is None:
            event = self._event = anyio.Event()
        await event.wait()

    # --- the leader's side -----------------------------------------------------------------------------------

    def fail(self, error: BaseException) -> None:
        """The leader got no answer. An ``Exception`` is the followers' answer too; anything else (the
        leader's caller was cancelled or interrupted) is not theirs: they start over."""
        self.flights.remove(self)
        if isinstance(error, Exception):
            self.error = error
        else:
            self.retry = True
        self.finished = True
        self._notify()

    def publish(self, status: int, headers: list[tuple[bytes, bytes, bytes]], extensions: dict[str, Any],
                body: bytes) -> None:
        """The leader's whole answer: followers may build their responses (``extensions`` are the leader's
        response's own: followers keep only what describes the answer)."""
        self.headers, self.extensions = headers, extensions
        self.chunks.append(body)
        self.status = status  # before ``finished``: a finished flight without a status is a failed one
        self.finished = True
        self._notify()

    def start_stream(
        self, upstream: Any, extensions: dict[str, Any], on_end: EndCallback, limit: int | None = None
    ) -> None:
        """The leader's answer has arrived, its body still to be read: followers may start reading it.

        ``limit``: bytes of it worth keeping (``None``: all; 0: none, so nobody joins from now on).
        """
        self.limit = limit
        if limit == 0:
            self._stop_keeping()
        self._upstream = upstream
        self._iter = upstream.stream.__aiter__() if self.is_async else iter(upstream.stream)
        self._on_end = on_end
        self.headers, self.extensions = header_items(upstream.headers), extensions
        self.streaming = True
        self.status = upstream.status_code  # last: followers read the rest once they see a status
        self._notify()

    def _pulled(self, chunk: bytes) -> None:
        """A chunk arrived from the upstream: keep it for everyone (and count it against ``limit``)."""
        if self.first_chunk is None and chunk:
            self.first_chunk = time.perf_counter()
            self.head = chunk[:USAGE_TAIL]
        self.chunks.append(chunk)
        self.size += len(chunk)
        if self.kept and self.limit is not None and self.size > self.limit:
            self._stop_keeping()

    def _stop_keeping(self) -> None:
        # From now on nothing of this answer is stored, and a late joiner could not be given its start.
        self.kept = False
        self.flights.remove(self)

    def _chunk(self, index: int) -> bytes | None:
        """Chunk ``index`` if it has arrived (``None`` if not yet). A flight that no longer keeps its chunks
        drops the ones before it when its reader is alone (``index`` only grows for each reader)."""
        at = index - self.base
        chunks = self.chunks
        if at >= len(chunks):
            return None
        if at < 0:
            raise RuntimeError(f"chunk {index} of the shared stream was already released")
        if at and not self.kept and self.consumers == 1:
            del chunks[:at]
            self.base = index
            at = 0
        return chunks[at]

    # --- the followers' side ---------------------------------------------------------------------------------

    def wait_head(self) -> Awaitable[None] | None:
        """Wait until the leader answered, failed or gave up: in place for sync callers, else an awaitable."""
        if self.is_async:
            return None if self.status is not None or self.finished else self._await_head()
        cond = self._cond or self.flights.condition(self)
        with cond:
            while self.status is None and not self.finished:
                cond.wait()
        return None

    async def _await_head(self) -> None:
        while self.status is None and not self.finished:
            await self._await_change()

    # --- reading the shared body -----------------------------------------------------------------------------

    def next_chunk(self, index: int) -> bytes | None:
        """Chunk ``index`` of the body (``None`` past the end), pulling it from the upstream if nobody is."""
        cond = self._cond or self.flights.condition(self)
        while True:
            with cond:
                while True:
                    have = self._chunk(index)
                    if have is not None:
                        return have
                    if self.finished:
                        if self.error is not None:
                            raise self.error
                        return None
                    if not self.pulling:
                        self.pulling = True
                        break
                    cond.wait()
            # Pull outside the lock: the other callers keep reading what has arrived meanwhile.
            try:
                chunk = next(self._iter)
            except StopIteration:
                self._end_sync(None)
            except BaseException as exc:
                self._end_sync(exc)
                raise
            else:
                self._pulled(chunk)
                self.pulling = False
                self._notify()

    async def anext_chunk(self, index: int) -> bytes | None:
        """Async twin of :meth:`next_chunk` (all callers of an async flight run on one event loop)."""
        while True:
            have = self._chunk(index)
            if have is not None:
                return have
            if self.finished:
                if self.error is not None:
                    raise self.error
                return None
            if self.pulling:
                await self._await_change()
                continue
            self.pulling = True
            if self.consumers > 1:
                await _shielded(self._apull())
            else:
                await self._apull()

    async def _apull(self) -> None:
        """Pull the next chunk for every reader; the end of the stream or its failure ends the flight."""
        try:
            chunk = await self._iter.__anext__()
        except StopAsyncIteration:
            await self._end_async(None)
        except BaseException as exc:
            await self._end_async(exc)
            raise
        else:
            self._pulled(chunk)
            self.pulling = False
            self._notify()

    def _finish(self, error: BaseException | None) -> None:
        if error is not None:
            self.flights.remove(self)  # first: nobody may join a failed stream

        self.error = error if error is None or isinstance(error, Exception) else _interrupted(error)
        self.pulling = False
        self.finished = True
        self._notify()

    def _end_sync(self, error: BaseException | None) -> None:
        try:
            self._upstream.close()
        finally:
            self._finish(error)
            self._end(error, error is None)
            self.flights.remove(self)  # last: until the answer is stored, newcomers read it from here

    async def _end_async(self, error: BaseException | None) -> None:
        import anyio

        # Shielded: closing the connection and storing the answer must finish even when the caller that
        # happened to read the last chunk is being cancelled.
        with anyio.CancelScope(shield=True):
            try:
                await self._upstream.aclose()
            finally:
                self._finish(error)
                ending = self._end(error, error is None)
                if ending is not None:
                    await ending
                self.flights.remove(self)

    def _end(self, error: BaseException | None, complete: bool) -> Awaitable[Any] | None:
        """Run the leader's end callback once; what it returns for an async flight to await, if anything."""
        on_end, self._on_end = self._on_end, None
        return None if on_end is None else on_end(error, complete)

    def leave(self) -> Awaitable[None] | None:
        """A caller stops reading before the end. When it is the last one, the upstream is closed and nothing
        is stored, unless the caller stopped right after the stream's end marker (the openai SDK stops reading
        at ``data: [DONE]``): then it had the whole answer, and the last bytes are read so it can be stored."""
        if not self.flights.leave(self) or self._upstream is None:
            return None
        # Only the end of the stream tells (no whole join); a flight that dropped chunks stores nothing anyway.
        complete = self.kept and self.complete(tail(self.chunks))
        if self.is_async:
            return self._aleave(complete)
        if complete:
            try:
                for chunk in self._iter:
                    self._pulled(chunk)
                    if len(chunk) > DRAIN_LIMIT:
                        break
                else:
                    self._end_sync(None)
                    return None
            except Exception as exc:
                self._end_sync(exc)
                return None
        self._finish(None)
        try:
            self._upstream.close()
        finally:
            self._end(None, False)
        return None

    async def _aleave(self, complete: bool) -> None:
        import anyio

        with anyio.CancelScope(shield=True):
            if complete:
                try:
                    async for chunk in self._iter:
                        self._pulled(chunk)
                        if len(chunk) > DRAIN_LIMIT:
                            break
                    else:
                        await self._end_async(None)
                        return
                except Exception as exc:
                    await self._end_async(exc)
                    return
            self._finish(None)
            try:
                await self._upstream.aclose()
            finally:
                self._end(None, False)


async def _shielded(pull: Coroutine[Any, Any, None]) -> None:
    """Run a pull that others share to its end, whatever happens to the caller that started it.

    An anyio shielded scope holds off anyio's and trio's cancellation, but not asyncio's own ``task.cancel()``
    (which the openai SDK's and most applications' timeouts use): under asyncio the pull runs in a task of its
    own and the caller awaits it through ``asyncio.shield``, so a cancelled caller stops waiting while the pull
    goes on and wakes the other readers. Only reads shared by several readers pay for the task (~20 us).
    """
    import asyncio

    import anyio

    try:
        asyncio.get_running_loop()
    except RuntimeError:  # trio: its cancellation is all scopes, which a shielded scope holds off
        with anyio.CancelScope(shield=True):
            await pull
        return
    task = asyncio.ensure_future(pull)
    # A cancelled caller never reads the task's outcome: the other readers get it from the flight.
    task.add_done_callback(_consume_outcome)
    with anyio.CancelScope(shield=True):  # an anyio scope's cancellation waits for the pull, as before
        await asyncio.shield(task)


def _consume_outcome(task: Any) -> None:
    if not task.cancelled():
        task.exception()


def _interrupted(error: BaseException) -> Exception:
    # The caller that was reading for everyone was interrupted (not by the upstream): the others get an
    # ordinary error, never the caller's own cancellation, which would cancel *them*.
    return RuntimeError(f"the shared upstream stream was interrupted ({type(error).__name__})")


class FlightStream:
    """One caller's view of a flight's body: its own cursor over the shared chunks, sync or async.

    ``on_done(error)`` runs once, when this caller's reading is over (read to the end, failed, or closed).
    """

    __slots__ = ("_done", "_flight", "_on_done")

    def __init__(self, flight: Flight, on_done: Callable[[BaseException | None], None]) -> None:
        self._flight = flight
        self._on_done = on_done
        self._done = False

    def _claim(self) -> bool:
        """Mark this reader done; true the first time (so ``on_done`` runs once)."""
        if self._done:
            return False
        self._done = True
        return True

    def __iter__(self) -> Iterator[bytes]:
        flight = self._flight
        index = 0
        try:
            while (chunk := flight.next_chunk(index)) is not None:
                index += 1
                yield chunk
        except GeneratorExit:
            self.close()
            raise
        except BaseException as exc:
            if self._claim():
                self._on_done(exc)
            raise
        if self._claim():
            self._on_done(None)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        flight = self._flight
        index = 0
        try:
            while (chunk := await flight.anext_chunk(index)) is not None:
                index += 1
                yield chunk
        except GeneratorExit:
            raise  # the caller dropped the iterator: its aclose() follows and leaves the flight
        except BaseException as exc:
            if self._claim():
                try:
                    if not isinstance(exc, Exception):  # cancelled mid-read: stop counting on this reader
                        leaving = flight.leave()
                        if leaving is not None:
                            await leaving
                finally:
                    self._on_done(exc)
            raise
        if self._claim():
            self._on_done(None)

    # Leaving comes before on_done, so a request's attempt ends (the upstream closed) before it is observed.

    def close(self) -> None:
        if self._claim():
            try:
                self._flight.leave()
            finally:
                self._on_done(None)

    async def aclose(self) -> None:
        if self._claim():
            try:
                leaving = self._flight.leave()
                if leaving is not None:
                    await leaving
            finally:
                self._on_done(None)


_stream_classes: dict[Any, type] = {}


def flight_stream(http: Any, flight: Flight, on_done: Callable[[BaseException | None], None]) -> FlightStream:
    """A :class:`FlightStream` that is also the flavour's Sync/AsyncByteStream, as httpx's clients assert."""
    cls = _stream_classes.get(http)
    if cls is None:
        cls = _stream_classes[http] = type(
            "FlightStream", (FlightStream, http.SyncByteStream, http.AsyncByteStream), {"__slots__": ()}
        )
    return cls(flight, on_done)  # type: ignore[no-any-return]
