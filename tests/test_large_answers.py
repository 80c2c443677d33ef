"""Large answers: each tier stores entries up to its ``max_entry_bytes``; an answer announced larger than any
tier takes is handed over unbuffered; a stored stream is held once, as the chunks the caller was handed; a stream
too large to store is not kept. Real loopback servers, real clients."""

from __future__ import annotations

import asyncio
import gc
import json
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest

from aurelis_core import ConfigError, Pipeline, RequestContext, RequestControls
from aurelis_core.testing import SimulatedServer, serve
from aurelis_plugins.memory import ENTRY_OVERHEAD

URL_PATH = "/v1/chat/completions"


class SizedUpstream:
    """Answers ``{"size": N}`` with N bytes announced by ``Content-Length``: the first KB at once, the rest only
    once ``release`` is set (so a test can tell whether the caller got the head before the body was read).
    ``{"events": N}`` gets an event stream of N 1 KB events and ``[DONE]``."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.released: list[bool] = []
        self.calls = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.calls += 1
        asked = json.loads(raw)["messages"][0]["content"]
        if "events" in asked:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream")]})
            event = b'data: {"choices":[{"index":0,"delta":{"content":"' + b"e" * 960 + b'"}}]}\n\n'
            for _ in range(asked["events"]):
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
            return
        size = asked["size"]
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream"),
                                (b"content-length", b"%d" % size)]})
        await send({"type": "http.response.body", "body": b"x" * 1000, "more_body": True})
        if asked.get("hold"):
            self.released.append(await anyio.to_thread.run_sync(self.release.wait, 10.0))
        await send({"type": "http.response.body", "body": b"x" * (size - 1000), "more_body": False})


@pytest.fixture
def sized() -> Iterator[tuple[SizedUpstream, str]]:
    app = SizedUpstream()
    with serve(app) as server:  # type: ignore[arg-type]
        yield app, server.url + URL_PATH


def ask(**content: Any) -> dict[str, Any]:
    body = {"model": "m", "messages": [{"role": "user", "content": content}]}
    if "events" in content:
        body["stream"] = True
    return body


def limits(tmp_path: Path) -> dict[str, Any]:
    return {
        "plugins": ["normalize", "memory", "sqlite"],
        "memory": {"max_entry_bytes": 50_000},
        "sqlite": {"path": str(tmp_path / "c.sqlite3"), "max_entry_bytes": 100_000},
    }


@pytest.mark.parametrize("coalesce", [True, False], ids=["coalescing", "no-coalesce"])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_answer_announced_larger_than_every_tier_is_not_buffered(
    sized: tuple[SizedUpstream, str], tmp_path: Path, mode: str, coalesce: bool
) -> None:
    app, url = sized
    # The defaults: memory takes entries up to 4 MiB, and this answer announces 5 MiB.
    pipeline = Pipeline({"plugins": ["normalize", "memory"]})
    headers = {} if coalesce else {"x-aurelis-cache": "no-coalesce"}
    size = 5 * 1024 * 1024
    body = ask(size=size, hold=True)
    if mode == "sync":
        with httpx.Client(timeout=30) as client:
            pipeline.instrument(client)
            with client.stream("POST", url, json=body, headers=headers) as response:
                app.release.set()  # reached before the body is read only if the head was handed over at once
                data = response.read()
        status = response.headers["x-aurelis-cache"]
    else:
        async def main() -> tuple[bytes, str]:
            async with httpx.AsyncClient(timeout=30) as client:
                pipeline.instrument(client)
                async with client.stream("POST", url, json=body, headers=headers) as response:
                    app.release.set()
                    return await response.aread(), response.headers["x-aurelis-cache"]

        data, status = anyio.run(main)
    assert app.released == [True]
    assert len(data) == size and status == "miss"
    pipeline.close()
    assert len(pipeline.plugin("memory")) == 0


def test_a_large_answer_is_shared_with_followers_as_it_streams(sized: tuple[SizedUpstream, str]) -> None:
    app, url = sized
    pipeline = Pipeline({"plugins": ["normalize", "memory"]})
    size = 5 * 1024 * 1024
    body = ask(size=size, hold=True)

    async def one(client: httpx.AsyncClient) -> tuple[int, str]:
        async with client.stream("POST", url, json=body) as response:
            app.release.set()  # the first head to arrive releases the rest of the body
            data = await response.aread()
            return len(data), response.headers.get("x-aurelis-cache-tier", "-")

    async def main() -> list[tuple[int, str]]:
        async with httpx.AsyncClient(timeout=30) as client:
            pipeline.instrument(client)
            # Both start in one loop step: the second joins the first's flight before any answer arrives.
            return list(await asyncio.gather(one(client), one(client)))

    results = anyio.run(main)
    pipeline.close()
    assert app.released == [True] and app.calls == 1
    assert sorted(results) == [(size, "-"), (size, "coalesced")]
    assert len(pipeline.plugin("memory")) == 0


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_large_answer_handed_over_alone_leaves_no_flight_behind(sized: tuple[SizedUpstream, str], mode: str) -> None:
    """The leader of a too-large answer nobody joined passes it through untouched and takes its flight out:
    the same request again is a new call, not a follower waiting for an answer that will never be shared."""
    app, url = sized
    pipeline = Pipeline({"plugins": ["normalize", "memory"]})
    size = 5 * 1024 * 1024
    body = ask(size=size)
    sizes: list[int] = []

    def run() -> None:
        if mode == "sync":
            with httpx.Client(timeout=30) as client:
                pipeline.instrument(client)
                sizes.extend(len(client.post(url, json=body).content) for _ in range(3))
        else:
            async def main() -> None:
                async with httpx.AsyncClient(timeout=30) as client:
                    pipeline.instrument(client)
                    for _ in range(3):
                        sizes.append(len((await client.post(url, json=body)).content))

            anyio.run(main)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(120)  # a hang detector, not a speed bound: a repeat waiting on a stale flight never returns
    assert not worker.is_alive(), "a repeated request waited on the flight of an answer handed over alone"
    pipeline.close()
    assert sizes == [size] * 3 and app.calls == 3


def test_each_tier_stores_up_to_its_own_limit(sized: tuple[SizedUpstream, str], tmp_path: Path) -> None:
    app, url = sized
    pipeline = Pipeline(limits(tmp_path))
    with httpx.Client(timeout=30) as client:
        pipeline.instrument(client)
        statuses = []
        for size in (40_000, 80_000, 40_000, 80_000):  # memory takes 50 KB, sqlite 100 KB
            response = client.post(url, json=ask(size=size))
            assert len(response.content) == size
            statuses.append((response.headers["x-aurelis-cache"], response.headers.get("x-aurelis-cache-tier")))
            pipeline.plugin("sqlite").flush()
    pipeline.close()
    assert statuses == [("miss", None), ("miss", None), ("hit", "memory"), ("hit", "sqlite")]
    counters = pipeline.stats.counters
    assert counters["memory.too_large"] == 2  # stored in sqlite only, then not promoted either
    assert counters["sqlite.too_large"] == 0
    assert app.calls == 2


@pytest.mark.parametrize(
    "table, options, key",
    [
        ("memory", {"max_entry_bytes": 0}, "max_entry_bytes"),
        ("memory", {"max_entry_bytes": "big"}, "max_entry_bytes"),
        ("memory", {"max_bytes": 1000, "max_entry_bytes": 2000}, "max_entry_bytes"),
        ("redis", {"max_entry_bytes": -1}, "max_entry_bytes"),
        ("sqlite", {"max_entry_bytes": 1.5}, "max_entry_bytes"),
    ],
)
def test_max_entry_bytes_is_validated(table: str, options: dict[str, Any], key: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=key):
        Pipeline({"plugins": ["normalize", table], table: options})
    Pipeline({"plugins": ["normalize", table], table: {"max_entry_bytes": 1000}}).close()


def test_a_stored_stream_is_held_once_as_the_chunks_the_caller_got(upstream: SimulatedServer) -> None:
    pipeline = Pipeline({"plugins": ["normalize", "memory"]})
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "once, please"}]}
    with httpx.Client() as client:
        pipeline.instrument(client)
        with client.stream("POST", upstream.base_url + "/chat/completions", json=body) as response:
            received = list(response.iter_raw())
            key = response.extensions["aurelis"].key
    pipeline.close()
    memory = pipeline.plugin("memory")
    ctx = RequestContext(None, None, httpx, False, RequestControls())
    ctx.key = key
    entry = memory.aurelis_cache_get(ctx)
    assert entry is not None and len(entry.chunks) == len(received) > 3
    assert all(a is b for a, b in zip(entry.chunks, received, strict=True))  # the very objects, not copies
    assert entry.body == b"".join(received)
    headers = sum(len(k) + len(v) for k, v in entry.headers)
    assert entry.size == len(entry.body) + headers  # the stream counted once
    from aurelis_plugins.memory import CHUNK_OVERHEAD

    assert memory.currsize == entry.size + ENTRY_OVERHEAD + CHUNK_OVERHEAD * len(received)


def test_a_stream_too_large_to_store_is_not_kept(sized: tuple[SizedUpstream, str]) -> None:
    app, url = sized
    # The tier's budget, 1 MB, bounds the entries it takes (its max_entry_bytes default is 4 MiB, or the budget).
    pipeline = Pipeline({"plugins": ["normalize", "memory"], "memory": {"max_bytes": 1_000_000}})
    with httpx.Client(timeout=30) as client:
        pipeline.instrument(client)
        gc.collect()
        tracemalloc.start()
        got = 0
        with client.stream("POST", url, json=ask(events=5000)) as response:
            for chunk in response.iter_raw():  # the caller keeps nothing of it
                got += len(chunk)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        again = client.post(url, json=ask(events=5000))
    pipeline.close()
    assert got > 5_000_000 and again.headers["x-aurelis-cache"] == "miss"
    # Kept whole, the 5 MB stream would cost 5 MB at least (10 MB once joined). It is kept while it may still be
    # stored (1 MB), then dropped as it is read.
    assert peak < 2_500_000, peak
    assert app.calls == 2
