"""Each hook's calling convention, as hookspecs.py states it, checked with tiny plugins.

These are unit tests of the core's stage runner, so an in-process MockTransport upstream is enough.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from aurelis_core import Attempt, CacheEntry, ConfigError, Endpoint, Pipeline, RequestContext, hookimpl

URL = "https://api.example/v1/chat/completions"
BODY = {"model": "m", "messages": []}


class Upstream:
    def __init__(self, statuses: list[int] | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.statuses = statuses or []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        status = self.statuses.pop(0) if self.statuses else 200
        return httpx.Response(status, json={"n": len(self.requests)})


def client_for(config: dict[str, Any], *plugins: object, upstream: Upstream | None = None) -> Any:
    pipeline = Pipeline(config, plugins=list(plugins))
    return pipeline.instrument(httpx.Client(transport=httpx.MockTransport(upstream or Upstream())))


class FixedKey:
    def __init__(self, name: str, key: str | None) -> None:
        self.name, self.key, self.calls = name, key, 0

    @hookimpl
    def aurelis_normalize(self, ctx: RequestContext) -> str | None:
        self.calls += 1
        return self.key


class DictTier:
    def __init__(self, name: str) -> None:
        self.name = name
        self.data: dict[str, CacheEntry] = {}
        self.sets: list[bool] = []

    @hookimpl
    def aurelis_cache_get(self, ctx: RequestContext) -> CacheEntry | None:
        return self.data.get(ctx.key or "")

    @hookimpl
    def aurelis_cache_set(self, ctx: RequestContext, entry: CacheEntry, promote: bool) -> None:
        self.sets.append(promote)
        self.data[ctx.key or ""] = entry


def test_normalize_first_answer_wins() -> None:
    none, first, second = FixedKey("none", None), FixedKey("first", "k1"), FixedKey("second", "k2")
    tier = DictTier("t")
    client = client_for({}, none, first, second, tier)
    client.post(URL, json=BODY)
    assert (none.calls, first.calls, second.calls) == (1, 1, 0)
    assert list(tier.data) == ["k1"]


def test_cache_get_stops_at_first_hit_and_promotes_upward() -> None:
    l1, l2, l3 = DictTier("l1"), DictTier("l2"), DictTier("l3")
    upstream = Upstream()
    client = client_for({}, FixedKey("key", "k"), l1, l2, l3, upstream=upstream)
    l3.data["k"] = CacheEntry(200, [(b"content-type", b"application/json")], b'{"from": "l3"}')
    response = client.post(URL, json=BODY)
    assert response.json() == {"from": "l3"} and response.headers["x-aurelis-cache-tier"] == "l3"
    assert (l1.sets, l2.sets, l3.sets) == ([True], [True], [])
    assert client.post(URL, json=BODY).headers["x-aurelis-cache-tier"] == "l1"
    assert upstream.requests == []


def test_cache_set_writes_every_tier_on_a_miss() -> None:
    l1, l2 = DictTier("l1"), DictTier("l2")
    client = client_for({}, FixedKey("key", "k"), l1, l2)
    client.post(URL, json=BODY)
    assert (l1.sets, l2.sets) == ([False], [False])


class Router:
    name = "router"

    def __init__(self) -> None:
        self.picks: list[int] = []
        self.endpoints: tuple[Endpoint, ...] = ()

    @hookimpl
    def aurelis_route(self, ctx: RequestContext) -> Endpoint:
        self.picks.append(len(ctx.attempts))
        return self.endpoints[len(ctx.attempts) % len(self.endpoints)]


def test_route_once_per_attempt_and_url_rewrite() -> None:
    router = Router()
    upstream = Upstream(statuses=[503, 200])
    config = {
        "endpoints": [
            {"url": "http://a.internal:8001/v1", "name": "a", "api_key": "key-a"},
            {"url": "http://b.internal:8002", "name": "b", "headers": {"x-region": "eu"}},
        ]
    }
    retry = RetryOnce()
    client = client_for(config, router, retry, upstream=upstream)
    router.endpoints = client._transport.aurelis_pipeline.endpoints
    response = client.post(
        "http://placeholder/v1/chat/completions", json=BODY, headers={"authorization": "Bearer caller"}
    )
    assert response.status_code == 200
    assert router.picks == [0, 1]
    first, second = upstream.requests
    assert str(first.url) == "http://a.internal:8001/v1/chat/completions"
    assert first.headers["authorization"] == "Bearer key-a" and first.headers["host"] == "a.internal:8001"
    assert str(second.url) == "http://b.internal:8002/v1/chat/completions"
    assert second.headers["authorization"] == "Bearer caller" and second.headers["x-region"] == "eu"


class RetryOnce:
    name = "retry_once"

    def __init__(self) -> None:
        self.seen: list[int | None] = []

    @hookimpl
    def aurelis_retry(self, ctx: RequestContext, attempt: Attempt) -> float | None:
        self.seen.append(attempt.status_code)
        return 0.0 if attempt.number == 1 else None


class RetryNever:
    name = "retry_never"

    @hookimpl
    def aurelis_retry(self, ctx: RequestContext, attempt: Attempt) -> float | None:
        return None


def test_retry_first_answer_wins_and_failed_attempt_is_ended() -> None:
    upstream = Upstream(statuses=[500, 500, 500])
    retry = RetryOnce()
    ends = AttemptLog()
    client = client_for({}, RetryNever(), retry, ends, upstream=upstream)
    response = client.post(URL, json=BODY)
    assert response.status_code == 500 and len(upstream.requests) == 2
    assert retry.seen == [500, 500]
    assert ends.ended == [(1, 500), (2, 500)]


class AttemptLog:
    name = "attempt_log"

    def __init__(self) -> None:
        self.ended: list[tuple[int, int | None]] = []

    @hookimpl
    def aurelis_attempt_end(self, ctx: RequestContext, attempt: Attempt) -> None:
        self.ended.append((attempt.number, attempt.status_code))


class Admit:
    def __init__(self, name: str, wait: float | None) -> None:
        self.name, self.wait = name, wait

    @hookimpl
    def aurelis_admit(self, ctx: RequestContext, attempt: Attempt) -> float | None:
        return self.wait


def test_admit_waits_for_the_largest_answer() -> None:
    client = client_for({}, Admit("a", 0.01), Admit("b", None), Admit("c", 0.12))
    started = time.perf_counter()
    client.post(URL, json=BODY)
    assert time.perf_counter() - started >= 0.12


class Compress:
    def __init__(self, name: str) -> None:
        self.name = name

    @hookimpl
    def aurelis_compress(self, ctx: RequestContext, attempt: Attempt) -> None:
        ctx.request.headers["x-compressed-by"] = ctx.request.headers.get("x-compressed-by", "") + self.name


def test_compress_runs_every_implementation_in_order() -> None:
    upstream = Upstream()
    client = client_for({}, Compress("a"), Compress("b"), upstream=upstream)
    client.post(URL, json=BODY)
    assert upstream.requests[0].headers["x-compressed-by"] == "ab"


class Sender:
    name = "sender"

    @hookimpl
    def aurelis_send(self, ctx: RequestContext, attempt: Attempt) -> Any:
        return ctx.http.Response(299, content=b"from engine")


def test_send_engine_replaces_the_inner_transport() -> None:
    upstream = Upstream()
    client = client_for({}, Sender(), upstream=upstream)
    response = client.post(URL, json=BODY)
    assert (response.status_code, response.content, upstream.requests) == (299, b"from engine", [])
    with pytest.raises(ConfigError, match="only one send engine"):
        client_for({}, Sender(), type("Other", (Sender,), {"name": "other"})())


class Observer:
    name = "observer"

    def __init__(self) -> None:
        self.seen: list[tuple[str, int | None]] = []

    @hookimpl
    def aurelis_observe(self, ctx: RequestContext) -> None:
        self.seen.append((ctx.cache_status, ctx.response_status))


def test_observe_sees_every_request_and_a_failing_observer_is_contained() -> None:
    class Broken:
        name = "broken"

        @hookimpl
        def aurelis_observe(self, ctx: RequestContext) -> None:
            raise RuntimeError("observer bug")

    observer = Observer()
    client = client_for({"plugins": ["normalize", "memory"]}, Broken(), observer)
    client.post(URL, json=BODY)
    client.post(URL, json=BODY)
    client.get("https://api.example/v1/models")
    assert observer.seen == [("miss", 200), ("hit", 200), ("bypass", 200)]


class Lifecycle:
    name = "lifecycle"

    def __init__(self) -> None:
        self.events: list[str] = []

    @hookimpl
    def aurelis_start(self, pipeline: Pipeline) -> None:
        self.events.append("start")

    @hookimpl
    async def aurelis_close(self, pipeline: Pipeline) -> None:
        self.events.append("close")


def test_start_runs_once_and_close_runs_async_impls_for_sync_pipelines() -> None:
    life = Lifecycle()
    pipeline = Pipeline({}, plugins=[life])
    pipeline.start()
    client = pipeline.instrument(httpx.Client(transport=httpx.MockTransport(Upstream())))
    client.post(URL, json=BODY)
    pipeline.close()
    pipeline.close()
    assert life.events == ["start", "close"]


@pytest.mark.parametrize("path", ["/v1", "/v1/", "/v1/chat/completions", "/chat/completions", "/v10/x", "/"])
def test_routing_and_workload_files_place_a_path_on_a_base_url_alike(path: str) -> None:
    """One rule for both: a path already under the endpoint's base path stays as it is (the base path itself
    included), any other goes under it. ``join_url`` is what ``aurelis replay`` sends a workload line to."""
    from aurelis_core.plugin import join_url

    router = Router()
    upstream = Upstream(statuses=[200])
    client = client_for({"endpoints": [{"url": "http://a.internal:8001/v1", "name": "a"}]}, router,
                        upstream=upstream)
    router.endpoints = client._transport.aurelis_pipeline.endpoints
    client.post("http://placeholder" + path, json=BODY)
    (sent,) = upstream.requests
    assert str(sent.url) == join_url("http://a.internal:8001/v1", path)
    assert sent.url.path != "/v1/v1"
