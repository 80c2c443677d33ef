"""The L1 cache end to end: the real openai SDK and raw httpx/httpx2 clients against a real upstream on
127.0.0.1, sync and async."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import httpx2
import openai
import pytest

import aurelis_core
from aurelis_core.testing import SimulatedServer

CONFIG = {"plugins": ["normalize", "memory"]}
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]

CLIENT_KINDS = [
    pytest.param(httpx, False, id="httpx-sync"),
    pytest.param(httpx, True, id="httpx-async"),
    pytest.param(httpx2, False, id="httpx2-sync"),
    pytest.param(httpx2, True, id="httpx2-async"),
]


class Caller:
    """Sends one POST through a freshly instrumented client of the given kind, sync or async alike."""

    def __init__(self, http: Any, is_async: bool, config: Any = CONFIG) -> None:
        cls = http.AsyncClient if is_async else http.Client
        self.client = aurelis_core.instrument(cls(timeout=10), config)
        self.is_async = is_async
        self.pipeline = aurelis_core.pipeline_of(self.client)

    async def post(self, url: str, **kwargs: Any) -> Any:
        if self.is_async:
            response = await self.client.post(url, **kwargs)
        else:
            response = self.client.post(url, **kwargs)
        return response

    async def aclose(self) -> None:
        if self.is_async:
            await self.client.aclose()
        else:
            self.client.close()


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": "gpt-test", "messages": MESSAGES, "temperature": 0, **extra}


@pytest.mark.anyio
@pytest.mark.parametrize(("http", "is_async"), CLIENT_KINDS)
async def test_second_identical_request_is_an_l1_hit(upstream: SimulatedServer, http: Any, is_async: bool) -> None:
    caller = Caller(http, is_async)
    url = upstream.base_url + "/chat/completions"
    auth = {"authorization": "Bearer key-a"}
    first = await caller.post(url, json=chat_body(), headers=auth)
    second = await caller.post(url, json=chat_body(), headers=auth)
    await caller.aclose()

    assert upstream.count("chat/completions") == 1
    assert first.headers["x-aurelis-cache"] == "miss"
    assert second.headers["x-aurelis-cache"] == "hit"
    assert second.headers["x-aurelis-cache-tier"] == "memory"
    assert second.json() == first.json()
    assert isinstance(second, http.Response)
    info = aurelis_core.cache_info(second)
    assert info is not None and info.status == "hit" and info.tier == "memory"
    assert caller.pipeline is not None and caller.pipeline.stats.counters["hit"] == 1


@pytest.mark.anyio
@pytest.mark.parametrize(("http", "is_async"), CLIENT_KINDS)
async def test_reordered_keys_and_equal_numbers_hit(upstream: SimulatedServer, http: Any, is_async: bool) -> None:
    caller = Caller(http, is_async)
    url = upstream.base_url + "/chat/completions"
    auth = {"authorization": "Bearer key-a", "content-type": "application/json"}
    body_a = b'{"model":"gpt-test","temperature":0,"messages":[{"role":"user","content":"hi"}]}'
    body_b = b'{"messages":[{"content":"hi","role":"user"}],"temperature":0.0,"model":"gpt-test"}'
    first = await caller.post(url, content=body_a, headers=auth)
    second = await caller.post(url, content=body_b, headers=auth)
    await caller.aclose()
    assert (first.headers["x-aurelis-cache"], second.headers["x-aurelis-cache"]) == ("miss", "hit")
    assert upstream.count("chat/completions") == 1


@pytest.mark.anyio
@pytest.mark.parametrize(("http", "is_async"), CLIENT_KINDS)
async def test_different_api_key_misses(upstream: SimulatedServer, http: Any, is_async: bool) -> None:
    caller = Caller(http, is_async)
    url = upstream.base_url + "/chat/completions"
    a = await caller.post(url, json=chat_body(), headers={"authorization": "Bearer key-a"})
    b = await caller.post(url, json=chat_body(), headers={"authorization": "Bearer key-b"})
    c = await caller.post(url, json=chat_body(), headers={"api-key": "key-a"})
    await caller.aclose()
    assert [r.headers["x-aurelis-cache"] for r in (a, b, c)] == ["miss", "miss", "miss"]
    assert upstream.count("chat/completions") == 3
    assert len({r.json()["id"] for r in (a, b, c)}) == 3


@pytest.mark.anyio
@pytest.mark.parametrize(("http", "is_async"), CLIENT_KINDS)
async def test_errors_are_never_cached(upstream: SimulatedServer, http: Any, is_async: bool) -> None:
    caller = Caller(http, is_async)
    url = upstream.base_url + "/chat/completions"
    upstream.behavior.update(fail_next=1, failure_status=500)
    failed = await caller.post(url, json=chat_body())
    ok = await caller.post(url, json=chat_body())
    again = await caller.post(url, json=chat_body())
    upstream.behavior.update(status_override=429)
    limited = [await caller.post(url, json=chat_body(n=2)) for _ in range(2)]
    await caller.aclose()
    assert failed.status_code == 500 and failed.headers["x-aurelis-cache"] == "miss"
    assert "error" in failed.json()
    assert ok.status_code == 200 and ok.headers["x-aurelis-cache"] == "miss"
    assert again.headers["x-aurelis-cache"] == "hit"
    assert [r.status_code for r in limited] == [429, 429]
    assert [r.headers["x-aurelis-cache"] for r in limited] == ["miss", "miss"]
    assert upstream.count("chat/completions") == 4


@pytest.mark.anyio
@pytest.mark.parametrize(("http", "is_async"), CLIENT_KINDS)
async def test_malformed_and_non_json_bodies_pass_through(
    upstream: SimulatedServer, http: Any, is_async: bool
) -> None:
    caller = Caller(http, is_async)
    url = upstream.base_url + "/chat/completions"
    broken = await caller.post(url, content=b'{"model": "x", ', headers={"content-type": "application/json"})
    text = await caller.post(url, content=b"hello", headers={"content-type": "text/plain"})
    array = await caller.post(url, json=[1, 2])
    # JSON is UTF-8 (RFC 8259), and NaN is not JSON: neither is keyed, and neither is refused.
    utf16 = '{"model": "x", "messages": []}'.encode("utf-16")
    wide = await caller.post(url, content=utf16, headers={"content-type": "application/json"})
    nan = b'{"model": "x", "temperature": NaN, "messages": []}'
    not_a_number = await caller.post(url, content=nan, headers={"content-type": "application/json"})
    await caller.aclose()
    # The upstream saw every body exactly as sent, and answered each one itself.
    assert [r.body for r in upstream.requests] == [b'{"model": "x", ', b"hello", b"[1,2]", utf16, nan]
    assert broken.status_code == 400
    responses = (broken, text, array, wide, not_a_number)
    assert {r.headers["x-aurelis-cache"] for r in responses} == {"bypass"}


# --- the real openai SDK ---------------------------------------------------------------------------------------


def test_openai_sync_sdk_hits_l1(upstream: SimulatedServer) -> None:
    client = aurelis_core.instrument(httpx2.Client(), CONFIG)
    llm = openai.OpenAI(base_url=upstream.base_url, api_key="sk-one", http_client=client, max_retries=0)
    first = llm.chat.completions.create(model="gpt-test", messages=MESSAGES)  # type: ignore[arg-type]
    raw = llm.chat.completions.with_raw_response.create(model="gpt-test", messages=MESSAGES)  # type: ignore[arg-type]
    second = raw.parse()
    other_key = openai.OpenAI(base_url=upstream.base_url, api_key="sk-two", http_client=client, max_retries=0)
    third = other_key.chat.completions.create(model="gpt-test", messages=MESSAGES)  # type: ignore[arg-type]
    assert raw.headers["x-aurelis-cache"] == "hit"
    assert second.id == first.id and second.choices[0].message.content == first.choices[0].message.content
    assert third.id != first.id
    assert upstream.count("chat/completions") == 2
    client.close()


@pytest.mark.anyio
async def test_openai_async_sdk_hits_l1_and_embeddings(upstream: SimulatedServer) -> None:
    client = aurelis_core.instrument(httpx2.AsyncClient(), CONFIG)
    llm = openai.AsyncOpenAI(base_url=upstream.base_url, api_key="sk-one", http_client=client, max_retries=0)
    a = await llm.chat.completions.create(model="gpt-test", messages=MESSAGES)  # type: ignore[arg-type]
    b = await llm.chat.completions.create(model="gpt-test", messages=MESSAGES)  # type: ignore[arg-type]
    e1 = await llm.embeddings.create(model="embed-test", input=["a", "b"])
    e2 = await llm.embeddings.create(model="embed-test", input=["a", "b"])
    assert a.id == b.id
    assert e1.data[0].embedding == e2.data[0].embedding
    assert upstream.count("chat/completions") == 1 and upstream.count("embeddings") == 1
    await client.aclose()


def test_openai_with_legacy_httpx_client(upstream: SimulatedServer) -> None:
    client = aurelis_core.instrument(httpx.Client(), CONFIG)
    llm = openai.OpenAI(base_url=upstream.base_url, api_key="sk-one", http_client=client, max_retries=0)
    a = llm.chat.completions.create(model="gpt-test", messages=MESSAGES)  # type: ignore[arg-type]
    b = llm.chat.completions.create(model="gpt-test", messages=MESSAGES)  # type: ignore[arg-type]
    assert a.id == b.id and upstream.count("chat/completions") == 1
    client.close()


def _sse_events(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


@pytest.mark.anyio
async def test_streaming_passes_through_intact(upstream: SimulatedServer) -> None:
    upstream.behavior.update(chunk_delay=0.01)
    plain = openai.AsyncOpenAI(base_url=upstream.base_url, api_key="sk", http_client=httpx2.AsyncClient())
    expected = [c async for c in await plain.chat.completions.create(
        model="gpt-test", messages=MESSAGES, stream=True  # type: ignore[arg-type]
    )]
    client = aurelis_core.instrument(httpx2.AsyncClient(), CONFIG)
    llm = openai.AsyncOpenAI(base_url=upstream.base_url, api_key="sk", http_client=client, max_retries=0)
    got = [c async for c in await llm.chat.completions.create(
        model="gpt-test", messages=MESSAGES, stream=True  # type: ignore[arg-type]
    )]
    assert _sse_events(got) == _sse_events(expected) != ""
    assert len(got) == len(expected) > 2
    assert got[-1].choices[0].finish_reason == "stop"
    await client.aclose()
    await plain.close()


def test_stream_arrives_unbuffered_sync() -> None:
    """Each chunk reaches the caller when the upstream sends it, not at the end of the stream: each is read
    while the upstream still holds back the rest (a buffering pipeline would wait for them, and time out)."""
    from support import gated_stream, sse

    events = sse(*(f'{{"choices":[{{"index":0,"delta":{{"content":"w{i}"}}}}]}}' for i in range(3)),
                 '{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}', "[DONE]")
    client = aurelis_core.instrument(httpx.Client(timeout=10), CONFIG)
    with gated_stream(events) as up:
        with client.stream("POST", up.url + "/v1/chat/completions", json=chat_body(stream=True)) as response:
            assert response.headers["x-aurelis-cache"] in ("bypass", "miss")
            chunks = response.iter_raw()
            for event in events[:3]:
                up.allow(1)
                assert next(chunks) == event
            up.allow()
            assert b"".join(chunks) == b"".join(events[3:])
    client.close()


@pytest.mark.anyio
@pytest.mark.parametrize(("http", "is_async"), CLIENT_KINDS)
async def test_credentials_are_never_stored(upstream: SimulatedServer, http: Any, is_async: bool) -> None:
    caller = Caller(http, is_async)
    secret = "sk-very-secret-credential"
    await caller.post(
        upstream.base_url + "/chat/completions",
        json=chat_body(),
        headers={"authorization": f"Bearer {secret}", "x-api-key": secret},
    )
    await caller.aclose()
    assert caller.pipeline is not None
    memory = caller.pipeline.plugin("memory")
    entries = list(memory._cache.items())
    assert len(entries) == 1
    key, entry = entries[0]
    stored = key.encode() + entry.body + b"".join(k + v for k, v in entry.headers)
    assert secret.encode() not in stored


def _echo(request: Any) -> Any:
    return type(request).__module__  # pragma: no cover


Factory = Callable[..., Any]


def test_body_of_hit_is_decoded_like_the_original(upstream: SimulatedServer) -> None:
    """A gzip-encoded answer is stored encoded and decoded by httpx on read, on a miss and on a hit."""
    upstream.behavior.update(headers={"x-extra": "1"})
    client = aurelis_core.instrument(httpx.Client(), CONFIG)
    url = upstream.base_url + "/chat/completions"
    first = client.post(url, json=chat_body())
    second = client.post(url, json=chat_body())
    client.close()
    assert json.loads(second.content) == json.loads(first.content)
    assert second.headers["x-extra"] == "1"
    assert "date" not in second.headers or second.headers["x-aurelis-cache"] == "miss"
