"""Single-flight, step by step: upstreams that hold their answers (and each stream chunk) until the test lets
them go, so "a follower joined while the leader waited" is a fact the test waits for, never a sleep.

Async callers share one thread: a request that has looked the cache up has joined its flight by the time the
test's task runs again (the join follows the lookup with no await between). A ``Lookups`` tier counts them.
Threads (sync callers) can be between the two, so sync tests wait until the flight counts them in (``joined``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from support import PATIENCE, GatedStream, GatedUpstream, gated_stream, gated_upstream, joined, sse

from aurelis_core import Pipeline, RequestContext, hookimpl

BODY = {"model": "sim-chat", "messages": [{"role": "user", "content": "Name three rivers"}]}
STREAM_BODY = {**BODY, "stream": True}
CHAT = "/v1/chat/completions"

EVENTS = sse(*(f'{{"choices":[{{"index":0,"delta":{{"content":"w{i}"}},"finish_reason":null}}]}}' for i in range(4)),
             '{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}', "[DONE]")


class Lookups:
    """A cache tier that never holds anything and counts the lookups made."""

    name = "lookups"

    def __init__(self) -> None:
        self.count = 0

    @hookimpl
    def aurelis_cache_get(self, ctx: RequestContext) -> None:
        self.count += 1


def pipeline_with_lookups() -> tuple[Pipeline, Lookups]:
    lookups = Lookups()
    return Pipeline({"plugins": ["normalize", "memory"]}, plugins=[lookups]), lookups


async def looked_up(lookups: Lookups, count: int) -> None:
    """Let the event loop run until ``count`` lookups were made (so that many requests joined their flight)."""
    for _ in range(100_000):
        if lookups.count >= count:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"only {lookups.count} of {count} lookups")


def in_thread(up: GatedUpstream | GatedStream, count: int) -> Callable[[], Awaitable[None]]:
    wait = up.wait_arrivals if isinstance(up, GatedUpstream) else up.wait_requests
    return lambda: anyio.to_thread.run_sync(wait, count)


# --- whole answers -------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_async_followers_get_the_leaders_answer() -> None:
    with gated_upstream() as up:
        pipeline, lookups = pipeline_with_lookups()
        async with pipeline.instrument(httpx.AsyncClient(timeout=30)) as client:
            up.hold()
            leader = asyncio.create_task(client.post(up.url + CHAT, json=BODY))
            await in_thread(up, 1)()
            followers = [asyncio.create_task(client.post(up.url + CHAT, json=BODY)) for _ in range(5)]
            await looked_up(lookups, 6)
            up.release()
            first = await leader
            rest = await asyncio.gather(*followers)
            assert up.arrived == 1
            assert first.headers["x-aurelis-cache"] == "miss"
            assert {(r.headers["x-aurelis-cache"], r.headers["x-aurelis-cache-tier"]) for r in rest} == {
                ("hit", "coalesced")}
            assert {r.content for r in rest} == {first.content}
            assert all(r.headers["content-type"] == "application/json" for r in rest)
            assert pipeline.stats.counters["coalesced"] == 5
            assert len(pipeline._flights) == 0
            again = await client.post(up.url + CHAT, json=BODY)
            assert again.headers["x-aurelis-cache-tier"] == "memory" and up.arrived == 1


def test_sync_followers_get_the_leaders_answer() -> None:
    with gated_upstream() as up:
        pipeline, _ = pipeline_with_lookups()
        client = pipeline.instrument(httpx.Client(timeout=30))
        up.hold()
        with ThreadPoolExecutor(6) as pool:
            leader = pool.submit(client.post, up.url + CHAT, json=BODY)
            up.wait_arrivals(1)
            followers = [pool.submit(client.post, up.url + CHAT, json=BODY) for _ in range(5)]
            joined(pipeline, 6)
            up.release()
            first = leader.result()
            rest = [f.result() for f in followers]
        assert up.arrived == 1 and {r.content for r in rest} == {first.content}
        assert {r.headers["x-aurelis-cache-tier"] for r in rest} == {"coalesced"}
        assert pipeline.stats.counters["coalesced"] == 5
        client.close()


@pytest.mark.anyio
async def test_an_error_answer_is_shared_and_not_stored() -> None:
    with gated_upstream() as up:
        pipeline, lookups = pipeline_with_lookups()
        async with pipeline.instrument(httpx.AsyncClient(timeout=30)) as client:
            up.status = 503
            up.hold()
            leader = asyncio.create_task(client.post(up.url + CHAT, json=BODY))
            await in_thread(up, 1)()
            follower = asyncio.create_task(client.post(up.url + CHAT, json=BODY))
            await looked_up(lookups, 2)
            up.release()
            assert [(await leader).status_code, (await follower).status_code] == [503, 503]
            assert (await follower).headers["x-aurelis-cache-tier"] == "coalesced"
            up.status = 200
            assert (await client.post(up.url + CHAT, json=BODY)).headers["x-aurelis-cache"] == "miss"
            assert up.arrived == 2


class Failing:
    """Answers every request with headers and then drops the connection mid-body, after the test lets it."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.arrived = threading.Semaphore(0)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        self.arrived.release()
        while not self.gate.is_set():
            await asyncio.sleep(0.001)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"100")]})
        await send({"type": "http.response.body", "body": b'{"partial":', "more_body": True})
        raise ConnectionAbortedError("dropped on purpose")


@pytest.mark.anyio
async def test_the_leaders_exception_reaches_every_async_follower() -> None:
    from aurelis_core.testing import serve

    app = Failing()
    with serve(app) as server:  # type: ignore[arg-type]
        pipeline, lookups = pipeline_with_lookups()
        async with pipeline.instrument(httpx.AsyncClient(timeout=30)) as client:
            calls = [asyncio.create_task(client.post(server.url + CHAT, json=BODY)) for _ in range(4)]
            await looked_up(lookups, 4)
            await anyio.to_thread.run_sync(app.arrived.acquire)
            app.gate.set()
            errors = await asyncio.gather(*calls, return_exceptions=True)
            assert all(isinstance(e, httpx.RemoteProtocolError) for e in errors), errors
            assert errors[1] is errors[2] is errors[3]  # the leader's own exception, shared
            assert not app.arrived.acquire(blocking=False)  # one call only
            assert len(pipeline._flights) == 0


def test_the_leaders_exception_reaches_every_sync_follower() -> None:
    from aurelis_core.testing import serve

    app = Failing()
    with serve(app) as server:  # type: ignore[arg-type]
        pipeline, _ = pipeline_with_lookups()
        client = pipeline.instrument(httpx.Client(timeout=30))
        with ThreadPoolExecutor(4) as pool:
            calls = [pool.submit(client.post, server.url + CHAT, json=BODY) for _ in range(4)]
            joined(pipeline, 4)
            app.gate.set()
            errors = [c.exception() for c in calls]
        assert all(isinstance(e, httpx.RemoteProtocolError) for e in errors), errors
        assert app.arrived.acquire(blocking=False) and not app.arrived.acquire(blocking=False)
        client.close()


@pytest.mark.anyio
async def test_a_cancelled_leader_hands_over_to_a_follower() -> None:
    with gated_upstream() as up:
        pipeline, lookups = pipeline_with_lookups()
        async with pipeline.instrument(httpx.AsyncClient(timeout=30)) as client:
            up.hold()
            leader = asyncio.create_task(client.post(up.url + CHAT, json=BODY))
            await in_thread(up, 1)()
            followers = [asyncio.create_task(client.post(up.url + CHAT, json=BODY)) for _ in range(3)]
            await looked_up(lookups, 4)
            leader.cancel()
            with pytest.raises(asyncio.CancelledError):
                await leader
            await in_thread(up, 2)()  # one follower became the leader and sent its own request
            up.release()
            answers = await asyncio.gather(*followers)
            assert up.arrived == 2 and len({r.content for r in answers}) == 1
            assert sorted(r.headers["x-aurelis-cache"] for r in answers) == ["hit", "hit", "miss"]


@pytest.mark.anyio
async def test_a_cancelled_follower_leaves_the_others_alone() -> None:
    with gated_upstream() as up:
        pipeline, lookups = pipeline_with_lookups()
        async with pipeline.instrument(httpx.AsyncClient(timeout=30)) as client:
            up.hold()
            leader = asyncio.create_task(client.post(up.url + CHAT, json=BODY))
            await in_thread(up, 1)()
            quitter = asyncio.create_task(client.post(up.url + CHAT, json=BODY))
            stayer = asyncio.create_task(client.post(up.url + CHAT, json=BODY))
            await looked_up(lookups, 3)
            quitter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await quitter
            up.release()
            assert (await leader).content == (await stayer).content
            assert up.arrived == 1 and pipeline.stats.counters["coalesced"] == 1


@pytest.mark.anyio
async def test_sync_and_async_callers_and_two_event_loops_never_share_a_flight() -> None:
    with gated_upstream() as up:
        pipeline, _ = pipeline_with_lookups()
        async_client = pipeline.instrument(httpx.AsyncClient(timeout=30))
        sync_client = pipeline.instrument(httpx.Client(timeout=30))
        up.hold()
        leader = asyncio.create_task(async_client.post(up.url + CHAT, json=BODY))
        await in_thread(up, 1)()
        with ThreadPoolExecutor(2) as pool:
            sync_call = pool.submit(sync_client.post, up.url + CHAT, json=BODY)
            await in_thread(up, 2)()  # its own call: it could not wait on another domain's flight

            def other_loop() -> int:
                async def call() -> int:
                    other = pipeline.instrument(httpx.AsyncClient(timeout=30))
                    try:
                        return (await other.post(up.url + CHAT, json=BODY)).status_code
                    finally:
                        await other.aclose()

                return asyncio.run(call())

            loop_call = pool.submit(other_loop)
            await in_thread(up, 3)()
            up.release()
            assert sync_call.result().status_code == loop_call.result() == (await leader).status_code == 200
        assert up.arrived == 3
        await async_client.aclose()
        sync_client.close()


# --- streams -------------------------------------------------------------------------------------------------


async def read_all(response: Any) -> list[bytes]:
    return [c async for c in response.aiter_raw()]


async def next_chunk(up: GatedStream, chunks: Any) -> bytes:
    """Let the upstream send one more chunk and read it: one chunk on the wire, one chunk read."""
    up.allow(1)
    chunk: bytes = await chunks.__anext__()
    return chunk


def joined_bytes(chunks: list[bytes]) -> bytes:
    return b"".join(chunks)


@pytest.mark.anyio
async def test_a_stream_follower_gets_the_chunks_so_far_at_once_then_the_rest_live() -> None:
    with gated_stream(EVENTS) as up:
        pipeline, _ = pipeline_with_lookups()
        async with pipeline.instrument(httpx.AsyncClient(timeout=30)) as client:
            async with client.stream("POST", up.url + CHAT, json=STREAM_BODY) as leading:
                chunks = leading.aiter_raw()
                seen = [await next_chunk(up, chunks) for _ in range(3)]
                assert seen == EVENTS[:3]
                async with client.stream("POST", up.url + CHAT, json=STREAM_BODY) as following:
                    assert following.headers["x-aurelis-cache-tier"] == "coalesced"
                    theirs = following.aiter_raw()
                    # Three chunks were sent and no more: these come from the flight, not the wire.
                    assert [await theirs.__anext__() for _ in range(3)] == seen
                    # Counted once the server's send returned, which may be after the client read it.
                    await anyio.to_thread.run_sync(up.wait_sent, 3)
                    assert up.sent == 3
                    fourth = await next_chunk(up, theirs)  # live: the follower pulls it for both
                    assert fourth == EVENTS[3] and await chunks.__anext__() == fourth
                    up.allow()
                    rest = [c async for c in theirs]
                seen += [fourth, *[c async for c in chunks]]
            assert joined_bytes(seen) == joined_bytes(EVENTS) and seen[4:] == rest and up.requests == 1
            async with client.stream("POST", up.url + CHAT, json=STREAM_BODY) as replay:
                assert replay.headers["x-aurelis-cache"] == "hit" and await read_all(replay) == seen


def test_a_sync_stream_follower_gets_the_chunks_so_far_then_the_rest() -> None:
    with gated_stream(EVENTS) as up:
        pipeline, _ = pipeline_with_lookups()
        client = pipeline.instrument(httpx.Client(timeout=30))
        with client.stream("POST", up.url + CHAT, json=STREAM_BODY) as leading:
            mine = leading.iter_raw()
            seen = []
            for _ in range(2):
                up.allow(1)
                seen.append(next(mine))

            def follow() -> list[bytes]:
                with client.stream("POST", up.url + CHAT, json=STREAM_BODY) as following:
                    return list(following.iter_raw())

            with ThreadPoolExecutor(1) as pool:
                theirs = pool.submit(follow)
                joined(pipeline, 2)
                up.allow()
                seen += list(mine)
                assert theirs.result() == seen
        assert seen[:2] == EVENTS[:2] and joined_bytes(seen) == joined_bytes(EVENTS) and up.requests == 1
        with client.stream("POST", up.url + CHAT, json=STREAM_BODY) as replay:
            assert replay.headers["x-aurelis-cache"] == "hit" and list(replay.iter_raw()) == seen
        client.close()


@pytest.mark.anyio
async def test_followers_read_to_the_end_after_the_leader_stops_reading() -> None:
    with gated_stream(EVENTS) as up:
        pipeline, _ = pipeline_with_lookups()
        async with pipeline.instrument(httpx.AsyncClient(timeout=30)) as client:
            up.allow(1)
            async with client.stream("POST", up.url + CHAT, json=STREAM_BODY) as leading:
                await leading.aiter_raw().__anext__()
                following = await client.send(client.build_request("POST", up.url + CHAT, json=STREAM_BODY),
                                              stream=True)
            # The leader's caller closed its response: the flight reads on for the follower.
            up.allow()
            assert joined_bytes(await read_all(following)) == joined_bytes(EVENTS)
            await following.aclose()
            assert up.requests == 1
            async with client.stream("POST", up.url + CHAT, json=STREAM_BODY) as replay:
                assert replay.headers["x-aurelis-cache"] == "hit"


@pytest.mark.anyio
@pytest.mark.parametrize("http", [httpx, httpx2])
@pytest.mark.parametrize("is_async", [True, False])
async def test_when_every_reader_leaves_early_the_upstream_is_closed_and_nothing_stored(
    http: Any, is_async: bool
) -> None:
    with gated_stream(EVENTS) as up:
        pipeline, _ = pipeline_with_lookups()
        up.allow(1)
        if is_async:
            async with pipeline.instrument(http.AsyncClient(timeout=30)) as client:
                async with client.stream("POST", up.url + CHAT, json=STREAM_BODY) as response:
                    assert await response.aiter_raw().__anext__() == EVENTS[0]
                await anyio.to_thread.run_sync(up.wait_disconnects, 1)
                up.allow()
                async with client.stream("POST", up.url + CHAT, json=STREAM_BODY) as again:
                    assert again.headers["x-aurelis-cache"] == "miss"
                    assert joined_bytes(await read_all(again)) == joined_bytes(EVENTS)
        else:
            client = pipeline.instrument(http.Client(timeout=30))
            with client.stream("POST", up.url + CHAT, json=STREAM_BODY) as response:
                assert next(response.iter_raw()) == EVENTS[0]
            up.wait_disconnects(1)
            up.allow()
            with client.stream("POST", up.url + CHAT, json=STREAM_BODY) as again:
                assert again.headers["x-aurelis-cache"] == "miss"
                assert joined_bytes(list(again.iter_raw())) == joined_bytes(EVENTS)
            client.close()
        assert up.requests == 2 and len(pipeline._flights) == 0


def trailing(size: int) -> bytes:
    """An SSE comment of exactly ``size`` bytes: what a server may send after ``[DONE]``."""
    return b":" + b" " * (size - 3) + b"\n\n"


@pytest.mark.anyio
@pytest.mark.parametrize("is_async", [True, False])
@pytest.mark.parametrize(("size", "stored"), [(100, True), (4096, True), (4097, False)])
async def test_a_reader_that_stops_at_done_gets_the_stream_stored_if_only_a_little_is_left(
    is_async: bool, size: int, stored: bool
) -> None:
    with gated_stream([*EVENTS, trailing(size)]) as up:
        pipeline, _ = pipeline_with_lookups()
        up.allow(len(EVENTS))
        if is_async:
            client: Any = pipeline.instrument(httpx.AsyncClient(timeout=30))
            async with client.stream("POST", up.url + CHAT, json=STREAM_BODY) as response:
                got = []
                async for chunk in response.aiter_raw():
                    got.append(chunk)
                    if chunk.endswith(b"data: [DONE]\n\n"):
                        up.allow()  # the rest is on its way, but this reader stops here (as the openai SDK does)
                        await anyio.to_thread.run_sync(up.wait_sent, len(EVENTS) + 1)
                        break
        else:
            client = pipeline.instrument(httpx.Client(timeout=30))
            with client.stream("POST", up.url + CHAT, json=STREAM_BODY) as response:
                for chunk in response.iter_raw():
                    if chunk.endswith(b"data: [DONE]\n\n"):
                        up.allow()
                        up.wait_sent(len(EVENTS) + 1)
                        break
        request = client.build_request("POST", up.url + CHAT, json=STREAM_BODY)
        replay = await client.send(request, stream=True) if is_async else client.send(request, stream=True)
        assert replay.headers["x-aurelis-cache"] == ("hit" if stored else "miss")
        if is_async:
            await replay.aclose()
            await client.aclose()
        else:
            replay.close()
            client.close()


@pytest.mark.anyio
async def test_a_stream_cut_off_fails_every_reader_and_is_not_stored() -> None:
    with gated_stream(EVENTS) as up:
        up.cut_after = 2
        pipeline, _ = pipeline_with_lookups()
        async with pipeline.instrument(httpx.AsyncClient(timeout=30)) as client:
            up.allow(1)
            async with client.stream("POST", up.url + CHAT, json=STREAM_BODY) as leading:
                async with client.stream("POST", up.url + CHAT, json=STREAM_BODY) as following:
                    up.allow()
                    results = await asyncio.gather(read_all(leading), read_all(following), return_exceptions=True)
            assert all(isinstance(r, httpx.RemoteProtocolError) for r in results), results
            assert results[0] is results[1]
            assert len(pipeline._flights) == 0
            up.cut_after = None
            async with client.stream("POST", up.url + CHAT, json=STREAM_BODY) as again:
                assert again.headers["x-aurelis-cache"] == "miss"
                assert joined_bytes(await read_all(again)) == joined_bytes(EVENTS)
            assert up.requests == 2


def test_a_sync_stream_cut_off_fails_every_reader() -> None:
    with gated_stream(EVENTS) as up:
        up.cut_after = 2
        pipeline, _ = pipeline_with_lookups()
        client = pipeline.instrument(httpx.Client(timeout=30))
        up.allow()
        with client.stream("POST", up.url + CHAT, json=STREAM_BODY) as leading:
            with client.stream("POST", up.url + CHAT, json=STREAM_BODY) as following:
                with pytest.raises(httpx.RemoteProtocolError) as mine:
                    list(leading.iter_raw())
                with pytest.raises(httpx.RemoteProtocolError) as theirs:
                    list(following.iter_raw())
        assert mine.value is theirs.value and up.requests == 1
        client.close()


async def cancel_while_pulling(native: bool) -> None:
    """A leader reads three chunks, a follower joins, the leader asks for the 4th (pulling it for both) and is
    cancelled meanwhile, natively (``task.cancel()``) or by an anyio cancel scope. The follower must get the
    whole stream, stored at its end."""
    with gated_stream(EVENTS) as up:
        pipeline, _ = pipeline_with_lookups()
        async with pipeline.instrument(httpx.AsyncClient(timeout=30)) as client:
            up.allow(3)
            three, go = asyncio.Event(), asyncio.Event()
            first_three = len(joined_bytes(EVENTS[:3]))
            scope = anyio.CancelScope()

            async def lead() -> None:
                with scope:
                    async with client.stream("POST", up.url + CHAT, json=STREAM_BODY) as response:
                        read = 0
                        async for chunk in response.aiter_raw():
                            read += len(chunk)
                            if read == first_three:
                                three.set()
                                await go.wait()  # then it asks for the 4th chunk, pulling it for both

            leader = asyncio.create_task(lead())
            await three.wait()
            following = await client.send(client.build_request("POST", up.url + CHAT, json=STREAM_BODY),
                                          stream=True)
            go.set()
            for _ in range(50):  # a bounded number of loop turns (no time): the leader reaches its socket read
                await asyncio.sleep(0)
            if native:
                leader.cancel()
            else:
                scope.cancel()
            up.allow()
            if native:
                with pytest.raises(asyncio.CancelledError):
                    await leader
            else:
                await leader  # shielded reads for the others: it may even read on to the end
            assert joined_bytes(await read_all(following)) == joined_bytes(EVENTS)
            await following.aclose()
            async with client.stream("POST", up.url + CHAT, json=STREAM_BODY) as replay:
                assert replay.headers["x-aurelis-cache"] == "hit" and up.requests == 1


@pytest.mark.anyio
async def test_a_reader_cancelled_while_pulling_for_others_does_not_cut_their_stream() -> None:
    await cancel_while_pulling(native=False)


@pytest.mark.anyio
async def test_a_reader_cancelled_natively_while_pulling_for_others_does_not_cut_their_stream() -> None:
    await cancel_while_pulling(native=True)


@pytest.mark.anyio
async def test_a_lone_reader_cancelled_while_waiting_for_a_chunk_stops_at_once() -> None:
    with gated_stream(EVENTS) as up:
        pipeline, _ = pipeline_with_lookups()
        async with pipeline.instrument(httpx.AsyncClient(timeout=30)) as client:
            up.allow(1)
            first = asyncio.Event()

            async def read() -> None:
                async with client.stream("POST", up.url + CHAT, json=STREAM_BODY) as response:
                    async for _ in response.aiter_raw():
                        first.set()  # then waits for a chunk the upstream holds back

            scope = anyio.CancelScope()

            async def cancellable() -> None:
                with scope:
                    await read()

            reader = asyncio.create_task(cancellable())
            await first.wait()
            for _ in range(50):  # a bounded number of loop turns: the reader reaches its socket read
                await asyncio.sleep(0)
            scope.cancel()  # nobody else reads this stream: nothing to shield, it stops without the next chunk
            with anyio.fail_after(PATIENCE):  # only a reader held up by a shield would take this long
                await reader
            assert scope.cancelled_caught
            await anyio.to_thread.run_sync(up.wait_disconnects, 1)
            up.allow()
            async with client.stream("POST", up.url + CHAT, json=STREAM_BODY) as again:
                assert again.headers["x-aurelis-cache"] == "miss"


@pytest.mark.anyio
async def test_opting_out_of_coalescing_still_streams_and_stores() -> None:
    with gated_stream(EVENTS) as up:
        pipeline, _ = pipeline_with_lookups()
        async with pipeline.instrument(httpx.AsyncClient(timeout=30)) as client:
            up.allow()
            headers = {"x-aurelis-cache": "no-coalesce"}
            async with client.stream("POST", up.url + CHAT, json=STREAM_BODY, headers=headers) as response:
                assert await read_all(response) == EVENTS
            assert len(pipeline._flights) == 0
            async with client.stream("POST", up.url + CHAT, json=STREAM_BODY) as replay:
                assert replay.headers["x-aurelis-cache"] == "hit"


def test_flights_are_counted_while_in_progress() -> None:
    with gated_upstream() as up:
        pipeline, _ = pipeline_with_lookups()
        client = pipeline.instrument(httpx.Client(timeout=30))
        up.hold()
        with ThreadPoolExecutor(1) as pool:
            call = pool.submit(client.post, up.url + CHAT, json=BODY)
            up.wait_arrivals(1)
            assert len(pipeline._flights) == 1
            up.release()
            call.result()
        assert len(pipeline._flights) == 0
        client.close()


@pytest.mark.anyio
async def test_a_followers_whole_answer_is_recorded_when_handed_over() -> None:
    with gated_upstream() as up:
        pipeline, lookups = pipeline_with_lookups()
        async with pipeline.instrument(httpx.AsyncClient(timeout=30)) as client:
            up.hold()
            leader = asyncio.create_task(client.post(up.url + CHAT, json=BODY))
            await in_thread(up, 1)()
            request = client.build_request("POST", up.url + CHAT, json=BODY)
            follower = asyncio.create_task(client.send(request, stream=True))
            await looked_up(lookups, 2)
            up.release()
            await leader
            response = await follower
            # A whole answer: the request is over when it is handed over, body read or not (as for a hit).
            assert [s.cache for s in pipeline.stats.samples] == ["miss", "hit"]
            assert await response.aread() == (await leader).content
            await response.aclose()


@pytest.mark.anyio
async def test_a_stream_follower_gets_the_upstreams_headers() -> None:
    with gated_stream(EVENTS) as up:
        pipeline, _ = pipeline_with_lookups()
        async with pipeline.instrument(httpx.AsyncClient(timeout=30)) as client:
            up.allow(1)
            async with client.stream("POST", up.url + CHAT, json=STREAM_BODY) as leading:
                await leading.aiter_raw().__anext__()
                async with client.stream("POST", up.url + CHAT, json=STREAM_BODY) as following:
                    assert following.headers["x-aurelis-cache-tier"] == "coalesced"
                    assert following.headers["content-type"] == leading.headers["content-type"] == "text/event-stream"
                    up.allow()
                    assert joined_bytes(await read_all(following)) == joined_bytes(EVENTS)  # from the first chunk


@pytest.mark.anyio
async def test_stream_followers_get_the_head_as_soon_as_it_arrives() -> None:
    with gated_stream(EVENTS) as up:
        up.hold_head = True
        pipeline, lookups = pipeline_with_lookups()
        async with pipeline.instrument(httpx.AsyncClient(timeout=30)) as client:
            request = client.build_request("POST", up.url + CHAT, json=STREAM_BODY)
            leader = asyncio.create_task(client.send(request, stream=True))
            await in_thread(up, 1)()
            follower = asyncio.create_task(client.send(request, stream=True))
            await looked_up(lookups, 2)
            up.hold_head = False  # the head comes; no chunk is allowed yet, and nobody reads one
            with anyio.fail_after(PATIENCE):  # only a follower never told of the head would wait this long
                leading, following = await leader, await follower
            assert following.headers["x-aurelis-cache-tier"] == "coalesced" and up.sent == 0
            up.allow()
            assert await leading.aread() == await following.aread() == joined_bytes(EVENTS)
            await leading.aclose()
            await following.aclose()


@pytest.mark.anyio
async def test_an_async_stream_reader_waiting_on_another_s_pull_gets_each_chunk_as_it_comes() -> None:
    with gated_stream(EVENTS) as up:
        pipeline, _ = pipeline_with_lookups()
        async with pipeline.instrument(httpx.AsyncClient(timeout=30)) as client:
            request = client.build_request("POST", up.url + CHAT, json=STREAM_BODY)
            up.allow(1)
            leading = await client.send(request, stream=True)
            following = await client.send(request, stream=True)
            mine, theirs = leading.aiter_raw(), following.aiter_raw()
            assert await mine.__anext__() == await theirs.__anext__() == EVENTS[0]
            pulling = asyncio.create_task(mine.__anext__())  # the leader pulls the 2nd chunk...
            for _ in range(50):  # (a bounded number of loop turns: it reaches its socket read)
                await asyncio.sleep(0)
            waiting = asyncio.create_task(theirs.__anext__())  # ...the follower waits for that pull
            for _ in range(50):
                await asyncio.sleep(0)
            up.allow(1)
            with anyio.fail_after(PATIENCE):  # only a follower never told of the new chunk would wait this long
                assert await pulling == await waiting == EVENTS[1]
            up.wait_sent(2)  # counted once the server's send returned, which may be after the client read it
            assert up.sent == 2  # the rest is still held back: the follower got it live, not at the end
            up.allow()
            await leading.aclose()
            await following.aclose()


def test_a_sync_stream_reader_waiting_on_another_s_pull_gets_each_chunk_as_it_comes() -> None:
    with gated_stream(EVENTS) as up:
        pipeline, _ = pipeline_with_lookups()
        client = pipeline.instrument(httpx.Client(timeout=30))
        request = client.build_request("POST", up.url + CHAT, json=STREAM_BODY)
        up.allow(1)
        leading = client.send(request, stream=True)
        following = client.send(request, stream=True)
        mine, theirs = leading.iter_raw(), following.iter_raw()
        assert next(mine) == next(theirs) == EVENTS[0]
        with ThreadPoolExecutor(2) as pool:
            pulling = pool.submit(next, mine)  # the leader's thread pulls the 2nd chunk...
            up.wait_sent(1)
            waiting = pool.submit(next, theirs)  # ...while the follower's thread waits for it
            up.allow(1)
            assert pulling.result(PATIENCE) == waiting.result(PATIENCE) == EVENTS[1]
            up.wait_sent(2)  # counted once the server's send returned, which may be after the client read it
            assert up.sent == 2  # the rest is still held back: the follower got it live, not at the end
            up.allow()
        leading.close()
        following.close()
        client.close()


@pytest.mark.anyio
@pytest.mark.parametrize("is_async", [True, False])
async def test_a_stream_read_to_its_end_gives_its_connection_back(is_async: bool) -> None:
    with gated_stream(EVENTS) as up:
        pipeline, _ = pipeline_with_lookups()
        up.allow()
        bodies = [{**STREAM_BODY, "seed": n} for n in range(2)]  # two keys: both go upstream
        if is_async:
            async with pipeline.instrument(httpx.AsyncClient(timeout=30)) as client:
                for body in bodies:
                    async with client.stream("POST", up.url + CHAT, json=body) as response:
                        assert await read_all(response)
        else:
            with pipeline.instrument(httpx.Client(timeout=30)) as sync_client:
                for body in bodies:
                    with sync_client.stream("POST", up.url + CHAT, json=body) as sync_response:
                        assert list(sync_response.iter_raw())
        assert up.requests == 2
        assert up.clients[0] == up.clients[1]  # the second request reused the first one's connection


@pytest.mark.anyio
@pytest.mark.parametrize("is_async", [True, False])
async def test_what_is_drained_after_done_is_stored_with_the_rest(is_async: bool) -> None:
    chunks = [*EVENTS, trailing(100)]
    with gated_stream(chunks) as up:
        pipeline, _ = pipeline_with_lookups()
        up.allow(len(EVENTS))
        if is_async:
            async with pipeline.instrument(httpx.AsyncClient(timeout=30)) as client:
                async with client.stream("POST", up.url + CHAT, json=STREAM_BODY) as response:
                    async for chunk in response.aiter_raw():
                        if chunk.endswith(b"data: [DONE]\n\n"):
                            up.allow()
                            await anyio.to_thread.run_sync(up.wait_sent, len(chunks))
                            break
                async with client.stream("POST", up.url + CHAT, json=STREAM_BODY) as replay:
                    assert replay.headers["x-aurelis-cache"] == "hit"
                    assert joined_bytes(await read_all(replay)) == joined_bytes(chunks)
        else:
            with pipeline.instrument(httpx.Client(timeout=30)) as sync_client:
                with sync_client.stream("POST", up.url + CHAT, json=STREAM_BODY) as sync_response:
                    for chunk in sync_response.iter_raw():
                        if chunk.endswith(b"data: [DONE]\n\n"):
                            up.allow()
                            up.wait_sent(len(chunks))
                            break
                with sync_client.stream("POST", up.url + CHAT, json=STREAM_BODY) as sync_replay:
                    assert sync_replay.headers["x-aurelis-cache"] == "hit"
                    assert joined_bytes(list(sync_replay.iter_raw())) == joined_bytes(chunks)


class AttemptEnds:
    """Records how each attempt ended: its status and the type of its error."""

    name = "attempt_ends"

    def __init__(self) -> None:
        self.ends: list[tuple[int | None, str]] = []

    @hookimpl
    def aurelis_attempt_end(self, ctx: RequestContext, attempt: Any) -> None:
        self.ends.append((attempt.status_code, type(attempt.error).__name__))


@pytest.mark.anyio
@pytest.mark.parametrize("is_async", [True, False])
@pytest.mark.parametrize("complete", [True, False])
async def test_leaving_a_stream_early_ends_its_attempt_once(is_async: bool, complete: bool) -> None:
    # complete: the reader stops at [DONE] and the connection is cut while the rest is drained (an error,
    # nothing stored); else it stops half-way (no error, nothing stored). Either way the attempt ends, once.
    with gated_stream([*EVENTS, trailing(100)]) as up:
        ends = AttemptEnds()
        pipeline = Pipeline({"plugins": ["normalize", "memory"]}, plugins=[ends])
        stop_after = len(EVENTS) if complete else 2
        up.cut_after = len(EVENTS) if complete else None
        up.allow(stop_after)

        def stop_here(read: list[bytes]) -> bool:
            return joined_bytes(read) == joined_bytes(EVENTS[:stop_after])

        if is_async:
            async with pipeline.instrument(httpx.AsyncClient(timeout=30)) as client:
                async with client.stream("POST", up.url + CHAT, json=STREAM_BODY) as response:
                    read: list[bytes] = []
                    async for chunk in response.aiter_raw():
                        read.append(chunk)
                        if stop_here(read):
                            up.allow()
                            break
                async with client.stream("POST", up.url + CHAT, json=STREAM_BODY) as again:
                    assert again.headers["x-aurelis-cache"] == "miss"
        else:
            with pipeline.instrument(httpx.Client(timeout=30)) as sync_client:
                with sync_client.stream("POST", up.url + CHAT, json=STREAM_BODY) as sync_response:
                    read = []
                    for chunk in sync_response.iter_raw():
                        read.append(chunk)
                        if stop_here(read):
                            up.allow()
                            break
                up.cut_after = None
                with sync_client.stream("POST", up.url + CHAT, json=STREAM_BODY) as sync_again:
                    assert sync_again.headers["x-aurelis-cache"] == "miss"
        error = "RemoteProtocolError" if complete else "NoneType"
        assert ends.ends[0] == (200, error)
        assert len(ends.ends) == 2  # and the second request's


class Observed:
    """Records each finished request as the pipeline observes it: its cache status and its error's type."""

    name = "observed"

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []

    @hookimpl
    def aurelis_observe(self, ctx: RequestContext) -> None:
        self.requests.append((ctx.cache_status, type(ctx.error).__name__))


def observed_pipeline() -> tuple[Pipeline, Observed]:
    seen = Observed()
    return Pipeline({"plugins": ["normalize", "memory"]}, plugins=[seen]), seen


@pytest.mark.anyio
@pytest.mark.parametrize("is_async", [True, False])
async def test_each_stream_reader_is_observed_once_when_its_reading_is_over(is_async: bool) -> None:
    with gated_stream(EVENTS) as up:
        pipeline, seen = observed_pipeline()
        up.allow()
        if is_async:
            async with pipeline.instrument(httpx.AsyncClient(timeout=30)) as client:
                request = client.build_request("POST", up.url + CHAT, json=STREAM_BODY)
                leading = await client.send(request, stream=True)
                following = await client.send(request, stream=True)
                assert seen.requests == []  # streams are over when their bodies are
                await read_all(leading)
                assert seen.requests == [("miss", "NoneType")]
                await read_all(following)
                await leading.aclose()
                await following.aclose()  # closing after the end observes nothing more
        else:
            with pipeline.instrument(httpx.Client(timeout=30)) as sync_client:
                request = sync_client.build_request("POST", up.url + CHAT, json=STREAM_BODY)
                sync_leading = sync_client.send(request, stream=True)
                sync_following = sync_client.send(request, stream=True)
                assert seen.requests == []
                list(sync_leading.iter_raw())
                assert seen.requests == [("miss", "NoneType")]
                list(sync_following.iter_raw())
                sync_leading.close()
                sync_following.close()
        assert seen.requests == [("miss", "NoneType"), ("hit", "NoneType")]


@pytest.mark.anyio
@pytest.mark.parametrize("is_async", [True, False])
async def test_stream_readers_that_fail_or_stop_are_observed_once(is_async: bool) -> None:
    with gated_stream(EVENTS) as up:
        pipeline, seen = observed_pipeline()
        up.cut_after = 2
        up.allow()
        if is_async:
            async with pipeline.instrument(httpx.AsyncClient(timeout=30)) as client:
                request = client.build_request("POST", up.url + CHAT, json=STREAM_BODY)
                leading = await client.send(request, stream=True)
                following = await client.send(request, stream=True)
                for response in (leading, following):
                    with pytest.raises(httpx.RemoteProtocolError):
                        await response.aread()
                    await response.aclose()
                up.cut_after = None
                async with client.stream("POST", up.url + CHAT, json={**STREAM_BODY, "seed": 1}) as stopped:
                    await stopped.aiter_raw().__anext__()  # then closed early
        else:
            with pipeline.instrument(httpx.Client(timeout=30)) as sync_client:
                request = sync_client.build_request("POST", up.url + CHAT, json=STREAM_BODY)
                sync_leading = sync_client.send(request, stream=True)
                sync_following = sync_client.send(request, stream=True)
                for sync_response in (sync_leading, sync_following):
                    with pytest.raises(httpx.RemoteProtocolError):
                        sync_response.read()
                    sync_response.close()
                up.cut_after = None
                with sync_client.stream("POST", up.url + CHAT, json={**STREAM_BODY, "seed": 1}) as sync_stopped:
                    next(sync_stopped.iter_raw())
        assert seen.requests == [
            ("miss", "RemoteProtocolError"), ("hit", "RemoteProtocolError"), ("miss", "NoneType"),
        ]


@pytest.mark.anyio
async def test_a_cancelled_stream_reader_is_observed_once_and_its_upstream_closed() -> None:
    with gated_stream(EVENTS) as up:
        pipeline, seen = observed_pipeline()
        async with pipeline.instrument(httpx.AsyncClient(timeout=30)) as client:
            up.allow(1)
            first = asyncio.Event()

            async def read() -> None:
                async with client.stream("POST", up.url + CHAT, json=STREAM_BODY) as response:
                    async for _ in response.aiter_raw():
                        first.set()

            reader = asyncio.create_task(read())
            await first.wait()
            for _ in range(50):  # a bounded number of loop turns: the reader waits for the next chunk
                await asyncio.sleep(0)
            reader.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reader
            await anyio.to_thread.run_sync(up.wait_disconnects, 1)
            assert seen.requests == [("miss", "CancelledError")]


@pytest.mark.anyio
async def test_a_reader_cancelled_while_waiting_stops_counting_so_the_last_one_closes_the_upstream() -> None:
    with gated_stream(EVENTS) as up:
        pipeline, seen = observed_pipeline()
        async with pipeline.instrument(httpx.AsyncClient(timeout=30)) as client:
            request = client.build_request("POST", up.url + CHAT, json=STREAM_BODY)
            up.allow(1)
            leading = await client.send(request, stream=True)
            following = await client.send(request, stream=True)
            mine, theirs = leading.aiter_raw(), following.aiter_raw()
            assert await mine.__anext__() == await theirs.__anext__() == EVENTS[0]
            pulling = asyncio.create_task(mine.__anext__())  # the leader pulls the 2nd chunk (held back)...
            for _ in range(50):  # (a bounded number of loop turns: it reaches its socket read)
                await asyncio.sleep(0)
            scope = anyio.CancelScope()

            async def wait_for_it() -> None:
                with scope:
                    await theirs.__anext__()  # ...which the follower waits for

            waiting = asyncio.create_task(wait_for_it())
            for _ in range(50):
                await asyncio.sleep(0)
            scope.cancel()
            await waiting
            assert seen.requests == [("hit", "CancelledError")]
            up.allow(1)
            assert await pulling == EVENTS[1]
            await leading.aclose()  # now the only reader left: leaving early closes the upstream
            await anyio.to_thread.run_sync(up.wait_disconnects, 1)
            assert seen.requests == [("hit", "CancelledError"), ("miss", "NoneType")]
            up.allow()
            await following.aclose()


class EveryExit(httpx.AsyncBaseTransport):
    """An in-process upstream for each way a request leaves the pipeline: ``/models`` answers built with their
    body in hand (``Response(content=...)``), ``/feed`` an event stream not to be cached, ``/broken`` an error,
    and the chat path an answer to cache (JSON, or an event stream for ``"stream": true``). While ``gate`` is
    set, answers wait for it, so a second identical request follows the first."""

    def __init__(self) -> None:
        self.gate: asyncio.Event | None = None
        self.arrived = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.arrived += 1
        if self.gate is not None:
            await self.gate.wait()
        path = request.url.path
        if path == "/models":
            return httpx.Response(200, json={"data": []})
        if path == "/broken":
            raise httpx.ConnectError("refused", request=request)
        if path == "/feed" or b'"stream":true' in request.content.replace(b" ", b""):
            return httpx.Response(200, headers={"content-type": "text/event-stream"},
                                  stream=httpx.ByteStream(b"".join(EVENTS)))
        body = b'{"choices":[{"message":{"role":"assistant","content":"Nile"}}]}'
        return httpx.Response(200, headers={"content-type": "application/json"}, stream=httpx.ByteStream(body))


class EachEnd:
    """Every request the pipeline observes, as its context (held, so two are never confused)."""

    name = "each_end"

    def __init__(self) -> None:
        self.ended: list[RequestContext] = []

    @hookimpl
    def aurelis_observe(self, ctx: RequestContext) -> None:
        self.ended.append(ctx)


@pytest.mark.anyio
async def test_every_way_out_is_observed_once_and_labelled() -> None:
    # A hit, a fetched and stored answer and its follower, a tee'd stream and its follower, an answer passed
    # through read and one passed through streamed, and an error: each request ends exactly once (observed
    # once, when its body is over) and each response says where it came from, in its header and extension.
    up, lookups, ends = EveryExit(), Lookups(), EachEnd()
    pipeline = Pipeline({"plugins": ["normalize", "memory"]}, plugins=[lookups, ends])
    async with pipeline.instrument(httpx.AsyncClient(transport=up, base_url="http://up.test")) as client:
        responses: dict[str, httpx.Response] = {}
        for name, body in (("fetched", BODY), ("teed", STREAM_BODY)):
            up.gate = asyncio.Event()
            leader = asyncio.create_task(client.post(CHAT, json=body))
            await looked_up(lookups, lookups.count + 1)
            follower = asyncio.create_task(client.post(CHAT, json=body))
            await looked_up(lookups, lookups.count + 1)
            up.gate.set()
            responses[name], responses[f"{name} follower"] = await leader, await follower
        up.gate = None
        responses["hit"] = await client.post(CHAT, json=BODY)
        responses["read"] = await client.get("/models")
        streamed = await client.send(client.build_request("GET", "/feed"), stream=True)
        assert len(ends.ended) == 6  # not before its body is over
        await streamed.aread()
        responses["streamed"] = streamed
        with pytest.raises(httpx.ConnectError):
            await client.get("/broken")
        assert up.arrived == 5
        labels = {name: (r.headers["x-aurelis-cache"], r.headers.get("x-aurelis-cache-tier"))
                  for name, r in responses.items()}
        assert labels == {
            "fetched": ("miss", None), "fetched follower": ("hit", "coalesced"),
            "teed": ("miss", None), "teed follower": ("hit", "coalesced"),
            "hit": ("hit", "memory"), "read": ("bypass", None), "streamed": ("bypass", None),
        }
        for name, response in responses.items():
            info = response.extensions["aurelis"]
            assert (info.status, info.tier) == labels[name], name
        assert len(ends.ended) == 8 and len({id(ctx) for ctx in ends.ended}) == 8
        assert [type(ctx.error).__name__ for ctx in ends.ended].count("ConnectError") == 1
