"""The simulated upstream must look like OpenAI to real clients, and its knobs must work."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable

import httpx
import httpx2
import openai
import pytest

from aurelis_core.testing import SimulatedServer

CHAT = {"model": "sim-chat", "messages": [{"role": "user", "content": "hello there"}]}


def test_chat_shape_and_serial(upstream: SimulatedServer) -> None:
    with httpx.Client(base_url=upstream.base_url) as client:
        first = client.post("/chat/completions", json=CHAT)
        second = client.post("/chat/completions", json=CHAT)
    assert first.status_code == 200
    body = first.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "sim-chat"
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "echo: hello there", "refusal": None}
    assert choice["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["completion_tokens"] == 3
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # Same content, fresh serial: how tests tell an upstream answer from a cached one.
    assert second.json()["choices"] == body["choices"]
    assert [body["id"], second.json()["id"]] == ["chatcmpl-sim-1", "chatcmpl-sim-2"]
    assert upstream.count("/chat/completions") == 2
    assert upstream.requests[0].json() == CHAT


def test_stream_with_openai_sdk(upstream: SimulatedServer) -> None:
    upstream.behavior.chunk_delay = 0.001
    with httpx2.Client() as http:
        client = openai.OpenAI(base_url=upstream.base_url, api_key="k", http_client=http)
        stream = client.chat.completions.create(
            model="sim-chat",
            messages=[{"role": "user", "content": "one two three four"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        embedding = client.embeddings.create(model="sim-embed", input=["a", "b"])
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) == 5  # one per word: "echo:" + four words
    assert "".join(c.choices[0].delta.content or "" for c in content_chunks) == "echo: one two three four"
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    # The SDK asks for base64 embeddings and decodes them; vectors are unit length.
    vectors = [d.embedding for d in embedding.data]
    assert len(vectors) == 2 and len(vectors[0]) == upstream.behavior.embedding_dim
    assert abs(sum(v * v for v in vectors[0]) - 1.0) < 1e-4
    assert vectors[0] != vectors[1]


def test_rate_limit_headers_and_429(upstream: SimulatedServer) -> None:
    upstream.behavior.update(rpm=2, tpm=1000)
    with httpx.Client(base_url=upstream.base_url) as client:
        responses = [client.post("/chat/completions", json=CHAT) for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 429]
    ok, limited = responses[1], responses[2]
    assert ok.headers["x-ratelimit-limit-requests"] == "2"
    assert ok.headers["x-ratelimit-remaining-requests"] == "0"
    assert ok.headers["x-ratelimit-limit-tokens"] == "1000"
    assert int(ok.headers["x-ratelimit-remaining-tokens"]) < 1000
    assert ok.headers["x-ratelimit-reset-requests"].endswith("s")
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert int(limited.headers["retry-after-ms"]) > 0
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"


def test_truncated_stream_breaks_the_client(upstream: SimulatedServer) -> None:
    upstream.behavior.truncate_stream_after = 2
    lines: list[str] = []
    with (
        httpx.Client(base_url=upstream.base_url) as client,
        pytest.raises(httpx.RemoteProtocolError),
        client.stream("POST", "/chat/completions", json={**CHAT, "stream": True}) as response,
    ):
        lines.extend(line for line in response.iter_lines() if line)
    assert len(lines) == 2
    assert "data: [DONE]" not in lines


def test_gzip_body_recorded_raw_and_decoded(upstream: SimulatedServer) -> None:
    raw = gzip.compress(json.dumps(CHAT).encode())
    with httpx.Client(base_url=upstream.base_url) as client:
        response = client.post(
            "/chat/completions",
            content=raw,
            headers={"content-type": "application/json", "content-encoding": "gzip"},
        )
        bad = client.post("/chat/completions", content=b"{not json")
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "echo: hello there"
    record = upstream.requests[0]
    assert record.body == raw  # the compressed bytes really went over the wire
    assert record.header("Content-Encoding") == "gzip"
    assert record.json() == CHAT
    assert bad.status_code == 400
    assert bad.json()["error"]["type"] == "invalid_request_error"


def test_failures_and_control_endpoints(upstream: SimulatedServer) -> None:
    with httpx.Client(base_url=upstream.url) as client:
        set_resp = client.post("/_sim/behavior", json={"fail_next": 1, "failure_status": 503})
        assert set_resp.status_code == 200
        assert client.post("/_sim/behavior", json={"nope": 1}).status_code == 400
        statuses = [client.post("/v1/chat/completions", json=CHAT).status_code for _ in range(2)]
        assert client.get("/models").json()["data"][0]["object"] == "model"
        stats = client.get("/_sim/stats").json()
        assert client.post("/_sim/reset").status_code == 200
    assert statuses == [503, 200]
    assert stats["total"] == 3 and stats["serial"] == 1
    assert stats["by_path"] == {"/v1/chat/completions": 2, "/models": 1}
    assert upstream.count() == 0 and upstream.behavior.failure_status == 500


@pytest.mark.anyio
async def test_independent_upstreams(
    upstream: SimulatedServer, upstream_factory: Callable[..., SimulatedServer]
) -> None:
    other = upstream_factory(status_override=502)
    assert other.url != upstream.url
    async with httpx.AsyncClient() as client:
        good = await client.post(upstream.base_url + "/chat/completions", json=CHAT)
        bad = await client.post(other.base_url + "/chat/completions", json=CHAT)
    assert (good.status_code, bad.status_code) == (200, 502)
    assert (upstream.count(), other.count()) == (1, 1)


@pytest.mark.redis
def test_redis_fixture(redis_flush: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_flush)
    try:
        assert client.dbsize() == 0
        client.set("k", "v")
        assert client.get("k") == b"v"
    finally:
        client.close()
