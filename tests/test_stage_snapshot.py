"""Plugins (un)registered while requests run: every request runs all its stages with one set of plugins.

The pipeline keeps its stage lists as one immutable snapshot, replaced whole on (un)registration and read once
per request. Two recorder plugins are swapped in and out by another thread while clients send real requests to
the simulated upstream on loopback. Each recorder notes, per request, which of its hooks ran; a request that ran
its stages with a mixture of old and new lists (a ``cache_get`` from one set and a ``cache_set`` or an
``observe`` from another) shows up as a recorder with some of its hooks but not all.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any

import anyio
import httpx
import pytest

from aurelis_core import Attempt, CacheEntry, ConfigError, Pipeline, RequestContext, hookimpl

#: The hooks a recorder implements; on a cache miss that reaches the upstream once, each runs exactly once.
HOOKS = ("cache_get", "admit", "compress", "attempt_end", "cache_set", "observe")
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def request_id(ctx: RequestContext) -> str:
    return str(ctx.original.headers["x-request-id"])


class Keyer:
    """Always registered: the request's own id is its key, so no two requests share a flight or an entry."""

    name = "keyer"

    @hookimpl
    def aurelis_normalize(self, ctx: RequestContext) -> str | None:
        return request_id(ctx)


class Recorder:
    """A cache tier that never hits, and a limiter, a coder and an observer: each hook notes the request."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seen: dict[str, list[str]] = collections.defaultdict(list)
        self._lock = threading.Lock()

    def _note(self, ctx: RequestContext, hook: str) -> None:
        with self._lock:
            self.seen[request_id(ctx)].append(hook)

    @hookimpl
    def aurelis_cache_get(self, ctx: RequestContext) -> CacheEntry | None:
        self._note(ctx, "cache_get")
        return None

    @hookimpl
    def aurelis_admit(self, ctx: RequestContext, attempt: Attempt) -> float | None:
        self._note(ctx, "admit")
        return None

    @hookimpl
    def aurelis_compress(self, ctx: RequestContext, attempt: Attempt) -> None:
        self._note(ctx, "compress")

    @hookimpl
    def aurelis_attempt_end(self, ctx: RequestContext, attempt: Attempt) -> None:
        self._note(ctx, "attempt_end")

    @hookimpl
    def aurelis_cache_set(self, ctx: RequestContext, entry: CacheEntry, promote: bool) -> None:
        self._note(ctx, "cache_set")

    @hookimpl
    def aurelis_observe(self, ctx: RequestContext) -> None:
        self._note(ctx, "observe")


class Swapper(threading.Thread):
    """Swaps the recorders in and out until stopped: the plugin sets go {a}, {a, b}, {b}, {b, a}, {a}, ..."""

    def __init__(self, pipeline: Pipeline, a: Recorder, b: Recorder) -> None:
        super().__init__(daemon=True)
        self.pipeline, self.a, self.b = pipeline, a, b
        self.stop = threading.Event()
        self.swaps = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        pipeline = self.pipeline
        try:
            while not self.stop.is_set():
                for step in (
                    lambda: pipeline.register(self.b, "b"),
                    lambda: pipeline.unregister("a"),
                    lambda: pipeline.register(self.a, "a"),
                    lambda: pipeline.unregister("b"),
                ):
                    step()
                    self.swaps += 1
                    time.sleep(0.0002)  # let requests run between swaps, on a machine of few cores
        except BaseException as exc:  # reported by the test, not lost in a thread
            self.error = exc


def check_each_request_saw_one_set(ids: list[str], a: Recorder, b: Recorder) -> None:
    whole = sorted(HOOKS)
    served = collections.Counter[str]()
    for rid in ids:
        for recorder in (a, b):
            hooks = recorder.seen.get(rid, [])
            assert sorted(hooks) in ([], whole), f"request {rid} ran {hooks} of {recorder.name}: a mixture"
            if hooks:
                served[recorder.name] += 1
        # The swaps never leave the pipeline without a recorder, so every request saw at least one.
        assert rid in a.seen or rid in b.seen, f"request {rid} ran no recorder's hooks"
    # Both sets really served requests while they were being swapped (else the test proved nothing).
    assert served["a"] and served["b"], served


def test_threads_see_old_or_new_stages_never_a_mixture(upstream: Any) -> None:
    a, b = Recorder("a"), Recorder("b")
    pipeline = Pipeline({}, plugins=[Keyer()])
    pipeline.register(a, "a")
    client = pipeline.instrument(httpx.Client())
    url = upstream.base_url + "/chat/completions"
    threads, per_thread = 4, 60
    failures: list[BaseException] = []
    statuses: list[int] = []

    def send(thread: int) -> None:
        for n in range(per_thread):
            try:
                response = client.post(url, json=BODY, headers={"x-request-id": f"{thread}-{n}"})
                statuses.append(response.status_code)
            except BaseException as exc:
                failures.append(exc)

    swapper = Swapper(pipeline, a, b)
    swapper.start()
    senders = [threading.Thread(target=send, args=(t,)) for t in range(threads)]
    for thread in senders:
        thread.start()
    for thread in senders:
        thread.join(timeout=120)
    swapper.stop.set()
    swapper.join(timeout=10)
    client.close()

    assert swapper.error is None and not failures, (swapper.error, failures[:3])
    assert statuses == [200] * (threads * per_thread)
    assert swapper.swaps > 20
    check_each_request_saw_one_set([f"{t}-{n}" for t in range(threads) for n in range(per_thread)], a, b)


@pytest.mark.anyio
async def test_async_requests_see_old_or_new_stages_never_a_mixture(upstream: Any) -> None:
    a, b = Recorder("a"), Recorder("b")
    pipeline = Pipeline({}, plugins=[Keyer()])
    pipeline.register(a, "a")
    url = upstream.base_url + "/chat/completions"
    count = 200
    statuses: list[int] = []
    swapper = Swapper(pipeline, a, b)
    swapper.start()
    try:
        async with pipeline.instrument(httpx.AsyncClient()) as client:
            limiter = anyio.CapacityLimiter(20)

            async def send(n: int) -> None:
                async with limiter:
                    response = await client.post(url, json=BODY, headers={"x-request-id": f"async-{n}"})
                    statuses.append(response.status_code)

            # A failed request fails the task group, and so the test.
            async with anyio.create_task_group() as group:
                for n in range(count):
                    group.start_soon(send, n)
    finally:
        swapper.stop.set()
        swapper.join(timeout=10)

    assert swapper.error is None, swapper.error
    assert statuses == [200] * count
    check_each_request_saw_one_set([f"async-{n}" for n in range(count)], a, b)


def test_a_refused_unregistration_leaves_plugins_and_stages_as_they_were() -> None:
    pipeline = Pipeline({"plugins": ["round_robin"], "endpoints": ["http://127.0.0.1:1", "http://127.0.0.1:2"]})
    router, before = pipeline.plugin("round_robin"), pipeline._stages
    with pytest.raises(ConfigError, match="2 endpoints need a router plugin"):
        pipeline.unregister("round_robin")
    assert pipeline.plugin("round_robin") is router and pipeline._stages is before


def test_tiers_follow_the_snapshot() -> None:
    a = Recorder("a")
    pipeline = Pipeline({}, plugins=[Keyer()])
    assert (pipeline.tiers, pipeline.cache_tiers()) == ((), ())
    pipeline.register(a, "a")
    assert (pipeline.tiers, pipeline.cache_tiers()) == (("a",), (a,))
    pipeline.unregister("a")
    assert (pipeline.tiers, pipeline.cache_tiers()) == ((), ())


def test_single_stages_is_deprecated_and_read_from_the_table() -> None:
    import aurelis_core.pipeline

    with pytest.warns(DeprecationWarning, match="hookspecs.STAGES"):
        single = aurelis_core.pipeline.SINGLE_STAGES
    assert single == {"aurelis_route": "router", "aurelis_send": "send engine"}
