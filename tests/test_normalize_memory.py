"""Unit tests of one stage each: the cache key (normalize), the L1 tier (memory), per-request controls.

httpx.MockTransport is fine here: each test is about one stage's logic, not about talking to a server.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from aurelis_core import CacheEntry, Pipeline, RequestContext, RequestControls
from aurelis_plugins.memory import ENTRY_OVERHEAD, MemoryCache, MemoryConfig
from aurelis_plugins.normalize import Normalize, NormalizeConfig

URL = "https://api.example/v1/chat/completions"


def key_of(body: Any, *, url: str = URL, headers: dict[str, str] | None = None, method: str = "POST",
           config: NormalizeConfig | None = None, controls: RequestControls | None = None,
           raw: bytes | None = None) -> str | None:
    content = raw if raw is not None else json.dumps(body).encode()
    all_headers = {"content-type": "application/json", **(headers or {})}
    request = httpx.Request(method, url, content=content, headers=all_headers)
    ctx = RequestContext(request, None, httpx, False, controls or RequestControls())
    return Normalize(config or NormalizeConfig(), None).aurelis_normalize(ctx)


BASE = {"model": "m", "messages": [{"role": "user", "content": "Hello  there"}], "temperature": 0.5}


def test_key_ignores_key_order_and_number_spelling() -> None:
    raw_a = b'{"model":"m","temperature":1,"top_p":0.5,"messages":[]}'
    raw_b = b'{"messages":[],"top_p":5e-1,"temperature":1.0,"model":"m"}'
    assert key_of(None, raw=raw_a) == key_of(None, raw=raw_b) is not None


def test_key_covers_every_field_method_path_and_upstream() -> None:
    base = key_of(BASE)
    variants = [
        key_of({**BASE, "temperature": 0.6}),
        key_of({**BASE, "seed": 1}),
        key_of({**BASE, "response_format": {"type": "json_object"}}),
        key_of({**BASE, "tools": []}),
        key_of(BASE, url="https://other.example/v1/chat/completions"),
        key_of(BASE, url="https://api.example/v2/chat/completions"),
        key_of(BASE, url=URL + "?api-version=2024"),
        key_of(BASE, headers={"authorization": "Bearer x"}),
    ]
    assert base is not None
    assert len({base, *variants}) == len(variants) + 1


def test_key_has_no_ambiguity_between_fields() -> None:
    # Concatenation-based keys confuse these two; a structured encoding cannot.
    a = key_of({"model": "ab", "user": "c"})
    b = key_of({"model": "a", "user": "bc"})
    c = key_of({"model": 1})
    d = key_of({"model": "1"})
    e = key_of({"model": True})
    assert len({a, b, c, d, e}) == 5


def test_tenant_scope() -> None:
    a1 = key_of(BASE, headers={"authorization": "Bearer a"})
    a2 = key_of(BASE, headers={"authorization": "Bearer a"})
    b = key_of(BASE, headers={"authorization": "Bearer b"})
    api_key = key_of(BASE, headers={"api-key": "a"})
    x_api_key = key_of(BASE, headers={"x-api-key": "a"})
    anonymous = key_of(BASE)
    assert a1 == a2
    assert len({a1, b, api_key, x_api_key, anonymous}) == 5
    # An explicit namespace shares entries across credentials, and separates namespaces.
    shared = NormalizeConfig(namespace="team")
    assert key_of(BASE, headers={"authorization": "Bearer a"}, config=shared) == key_of(
        BASE, headers={"authorization": "Bearer b"}, config=shared
    )
    other = key_of(BASE, config=shared, controls=RequestControls(namespace="other"))
    assert other != key_of(BASE, config=shared)


def test_namespace_cannot_run_into_the_body() -> None:
    import attrs

    # The tenant is followed by the canonical body, which never holds a raw newline: a namespace that does
    # cannot make two requests' digested fields equal. (Namespaces with control characters are refused by the
    # controls' own checks; the key must not depend on that, hence built here without them.)
    with attrs.validators.disabled():
        moved = key_of({"model": "m"}, controls=RequestControls(namespace='x\n{"a":1}'))
        newline = key_of({"model": "m"}, controls=RequestControls(namespace="x\n"))
    plain = key_of({"a": 1}, controls=RequestControls(namespace="x"))
    assert moved != plain
    assert newline != key_of({"model": "m"}, controls=RequestControls(namespace="x"))


def test_memo_gives_the_fresh_key_and_stays_bounded() -> None:
    import aurelis_plugins.normalize as normalize

    small = {**BASE, "messages": [{"role": "user", "content": "hi"}]}
    large = {**BASE, "messages": [{"role": "user", "content": "x" * (normalize.MEMO_INLINE_BYTES + 1)}]}
    plugin = Normalize(NormalizeConfig(), None)

    def key(body: Any, on: Normalize) -> str | None:
        request = httpx.Request("POST", URL, json=body)
        return on.aurelis_normalize(RequestContext(request, None, httpx, False, RequestControls()))

    for body in (small, large):
        first = key(body, plugin)
        assert first is not None
        assert key(body, plugin) == first == key(body, Normalize(NormalizeConfig(), None))  # memo hit, fresh
    # A large body's slot holds its digest, a small body's the body itself; the bodies held stay bounded.
    held = [request_id[0] for request_id in plugin._memo]
    assert any(isinstance(body_id, tuple) for body_id in held)
    assert any(isinstance(body_id, bytes) for body_id in held)
    big = "y" * 4000
    for i in range(2 * normalize.MEMO_BYTES // 4000):
        key({**BASE, "messages": [{"role": "user", "content": f"{i}{big}"}]}, plugin)
        assert plugin._memo_bytes <= normalize.MEMO_BYTES
    assert len(plugin._memo) < normalize.MEMO_BYTES // 4000


def test_fingerprint_depends_on_secret() -> None:
    headers = {"authorization": "Bearer a"}
    assert key_of(BASE, headers=headers, config=NormalizeConfig(secret="s1")) != key_of(
        BASE, headers=headers, config=NormalizeConfig(secret="s2")
    )


def test_uncacheable_requests_get_no_key() -> None:
    assert key_of(BASE, method="PUT") is None
    assert key_of(BASE, url="https://api.example/v1/files") is None
    assert key_of(None, raw=b"{not json") is None
    assert key_of(None, raw=b"[1, 2]") is None
    assert key_of(None, raw=b"\xff\xfe") is None
    # Event streams are keyed (and stored when complete), apart from the same request asked for whole.
    assert key_of({**BASE, "stream": True}) not in (None, key_of(BASE))
    request = httpx.Request("POST", URL, content=b"{}", headers={"content-type": "text/plain"})
    ctx = RequestContext(request, None, httpx, False, RequestControls())
    assert Normalize(NormalizeConfig(), None).aurelis_normalize(ctx) is None


def test_streaming_upload_is_not_read() -> None:
    def body() -> Any:
        yield b'{"model": "m"}'

    request = httpx.Request("POST", URL, content=body(), headers={"content-type": "application/json"})
    ctx = RequestContext(request, None, httpx, False, RequestControls())
    assert Normalize(NormalizeConfig(), None).aurelis_normalize(ctx) is None


def test_whitespace_folding_is_opt_in() -> None:
    spaced = {**BASE, "messages": [{"role": "user", "content": "Hello   there\n"}]}
    assert key_of(spaced) != key_of(BASE)
    fold = NormalizeConfig(fold_whitespace=True)
    assert key_of(spaced, config=fold) == key_of(BASE, config=fold)


def test_ignore_fields() -> None:
    ignore = NormalizeConfig(ignore_fields=["user"])
    assert key_of({**BASE, "user": "u1"}, config=ignore) == key_of({**BASE, "user": "u2"}, config=ignore)
    assert key_of({**BASE, "user": "u1"}) != key_of({**BASE, "user": "u2"})


# --- memory tier ---------------------------------------------------------------------------------------------


def entry(size: int, created: float | None = None) -> CacheEntry:
    return CacheEntry(200, [(b"content-type", b"application/json")], b"x" * size, created=created)


def ctx_for(key: str) -> RequestContext:
    ctx = RequestContext(httpx.Request("GET", URL), None, httpx, False, RequestControls())
    ctx.key = key
    return ctx


@pytest.mark.parametrize("policy", ["lru", "lfu"])
def test_memory_is_bounded_by_bytes(policy: str) -> None:
    one = entry(1000).size + ENTRY_OVERHEAD
    tier = MemoryCache(MemoryConfig(policy=policy, max_bytes=one * 3), None)
    for i in range(10):
        tier.aurelis_cache_set(ctx_for(f"k{i}"), entry(1000), False)
    assert len(tier) == 3 and tier.currsize <= one * 3
    # Too big for the whole tier: not stored, nothing evicted.
    tier.aurelis_cache_set(ctx_for("huge"), entry(one * 4), False)
    assert tier.aurelis_cache_get(ctx_for("huge")) is None and len(tier) == 3


def test_lru_and_lfu_evict_differently() -> None:
    one = entry(100).size + ENTRY_OVERHEAD
    lru = MemoryCache(MemoryConfig(policy="lru", max_bytes=one * 2), None)
    lfu = MemoryCache(MemoryConfig(policy="lfu", max_bytes=one * 2), None)
    for tier in (lru, lfu):
        tier.aurelis_cache_set(ctx_for("hot"), entry(100), False)
        for _ in range(5):
            tier.aurelis_cache_get(ctx_for("hot"))
        tier.aurelis_cache_set(ctx_for("a"), entry(100), False)
        tier.aurelis_cache_get(ctx_for("a"))
        tier.aurelis_cache_set(ctx_for("b"), entry(100), False)
    # LRU evicted the least recently used ("hot"); LFU kept the frequently used one and evicted "a".
    assert lru.aurelis_cache_get(ctx_for("hot")) is None
    assert lfu.aurelis_cache_get(ctx_for("hot")) is not None
    assert lfu.aurelis_cache_get(ctx_for("a")) is None


def test_memory_ttl_and_per_entry_ttl() -> None:
    tier = MemoryCache(MemoryConfig(ttl=10), None)
    tier.aurelis_cache_set(ctx_for("old"), entry(10, created=time.time() - 11), False)
    tier.aurelis_cache_set(ctx_for("new"), entry(10), False)
    short = entry(10, created=time.time() - 2)
    short.ttl = 1
    tier.aurelis_cache_set(ctx_for("short"), short, False)
    assert tier.aurelis_cache_get(ctx_for("old")) is None
    assert tier.aurelis_cache_get(ctx_for("new")) is not None
    assert tier.aurelis_cache_get(ctx_for("short")) is None
    assert len(tier) == 1  # expired entries are dropped when met


# --- per-request controls through the whole pipeline ---------------------------------------------------------


class Upstream:
    def __init__(self) -> None:
        self.calls = 0
        self.seen_headers: list[dict[str, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        self.seen_headers.append(dict(request.headers))
        return httpx.Response(200, json={"n": self.calls})


@pytest.fixture
def wired() -> tuple[httpx.Client, Upstream]:
    upstream = Upstream()
    pipeline = Pipeline({"plugins": ["normalize", "memory"]})
    return pipeline.instrument(httpx.Client(transport=httpx.MockTransport(upstream))), upstream


def post(client: httpx.Client, **kwargs: Any) -> httpx.Response:
    return client.post(URL, json=BASE, **kwargs)


def test_skip_refresh_no_store_controls(wired: tuple[httpx.Client, Upstream]) -> None:
    client, upstream = wired
    assert post(client, extensions={"aurelis": {"no_store": True}}).headers["x-aurelis-cache"] == "miss"
    assert post(client).headers["x-aurelis-cache"] == "miss"  # the no_store answer was not kept
    assert post(client).json() == {"n": 2}
    assert post(client, extensions={"aurelis": {"skip": True}}).headers["x-aurelis-cache"] == "bypass"
    refreshed = post(client, extensions={"aurelis": {"refresh": True}})
    assert refreshed.headers["x-aurelis-cache"] == "miss" and refreshed.json() == {"n": 4}
    assert post(client).json() == {"n": 4}  # the refreshed answer replaced the old one
    assert upstream.calls == 4


def test_cache_control_headers(wired: tuple[httpx.Client, Upstream]) -> None:
    client, upstream = wired
    post(client)
    assert post(client, headers={"cache-control": "no-cache"}).headers["x-aurelis-cache"] == "miss"
    assert post(client, headers={"cache-control": "no-store"}).headers["x-aurelis-cache"] == "hit"
    assert upstream.calls == 2


def test_an_answer_marked_no_store_is_not_kept() -> None:
    calls = 0

    def upstream(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(200, json={"n": calls}, headers={"Cache-Control": "private, No-Store"})

    client = Pipeline({"plugins": ["normalize", "memory"]}).instrument(
        httpx.Client(transport=httpx.MockTransport(upstream))
    )
    assert post(client).json() == {"n": 1}
    second = post(client)
    assert second.headers["x-aurelis-cache"] == "miss" and second.json() == {"n": 2}


def test_a_stored_answer_keeps_its_own_headers_not_per_call_ones() -> None:
    per_call = {
        "set-cookie": "session=abc", "date": "Fri, 27 Nov 2026 09:00:00 GMT", "age": "3",
        "x-ratelimit-remaining-requests": "41", "connection": "keep-alive",
    }
    own = {"content-type": "application/json", "x-request-id": "req-1", "openai-processing-ms": "12"}
    client = Pipeline({"plugins": ["normalize", "memory"]}).instrument(httpx.Client(
        transport=httpx.MockTransport(lambda request: httpx.Response(200, content=b"{}", headers={**own, **per_call}))
    ))
    first = post(client)
    assert all(first.headers[name] == value for name, value in per_call.items())  # the caller's own answer
    replay = post(client)
    assert replay.headers["x-aurelis-cache"] == "hit"
    assert all(replay.headers[name] == value for name, value in own.items())
    assert not [name for name in per_call if name != "age" and name in replay.headers]
    assert replay.headers["age"] != "3"  # the replay's own age, not the stored one


def test_control_headers_are_read_and_stripped(wired: tuple[httpx.Client, Upstream]) -> None:
    client, upstream = wired
    post(client, headers={"x-aurelis-namespace": "team-a"})
    assert post(client, headers={"x-aurelis-namespace": "team-a"}).headers["x-aurelis-cache"] == "hit"
    assert post(client, headers={"x-aurelis-namespace": "team-b"}).headers["x-aurelis-cache"] == "miss"
    assert post(client, headers={"x-aurelis-cache": "skip"}).headers["x-aurelis-cache"] == "bypass"
    assert all(not k.startswith("x-aurelis") for h in upstream.seen_headers for k in h)
    with pytest.raises(ValueError, match="valid: x-aurelis-cache, x-aurelis-namespace, x-aurelis-ttl"):
        post(client, headers={"x-aurelis-ttll": "1"})
    with pytest.raises(ValueError, match="not one of skip, refresh, no-store"):
        post(client, headers={"x-aurelis-cache": "sometimes"})


def test_ttl_control() -> None:
    upstream = Upstream()
    pipeline = Pipeline({"plugins": ["normalize", "memory"]})
    client = pipeline.instrument(httpx.Client(transport=httpx.MockTransport(upstream)))
    memory = pipeline.plugin("memory")
    now = [1000.0]
    memory.clock = lambda: now[0]  # the tier's monotonic clock, moved by hand
    post(client, extensions={"aurelis": {"ttl": 5}})
    now[0] += 4.9
    assert post(client).headers["x-aurelis-cache"] == "hit"
    now[0] += 0.2
    assert post(client).headers["x-aurelis-cache"] == "miss"
    assert upstream.calls == 2
    with pytest.raises(ValueError, match="unknown key 'tll'"):
        post(client, extensions={"aurelis": {"tll": 1}})


def test_hit_carries_age_and_no_stale_hop_headers(wired: tuple[httpx.Client, Upstream]) -> None:
    client, _ = wired
    post(client)
    hit = post(client)
    assert hit.headers["age"] == "0"
    assert "date" not in hit.headers
