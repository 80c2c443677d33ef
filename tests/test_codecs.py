"""Codecs (the shared registry) and the gzip/brotli request-compression plugins, against a real upstream."""

from __future__ import annotations

import json
from typing import Any

import httpx
import httpx2
import pytest

import aurelis_core
from aurelis_core import ConfigError, Pipeline
from aurelis_plugins.codecs import CODEC_NAMES, Codec, codec_for_token, get_codec, wire_codecs

CHAT = "/v1/chat/completions"


def chat_body(words: int) -> dict[str, Any]:
    text = " ".join(f"token{i % 97} is part of a long prompt" for i in range(words))
    return {"model": "sim-chat", "messages": [{"role": "user", "content": text}]}


# --- the registry --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CODEC_NAMES)
@pytest.mark.parametrize("size", [0, 1, 1000, 70_000])
def test_codecs_round_trip(name: str, size: int) -> None:
    data = json.dumps(chat_body(size // 30 + 1)).encode()[:size]
    codec = get_codec(name)
    packed = codec.compress(data)
    assert codec.decompress(packed) == data
    if name != "none" and size >= 1000:
        assert len(packed) < len(data) / 2


def test_codec_tokens_and_formats() -> None:
    import gzip

    import brotli
    import lz4.frame

    assert get_codec("gzip").http_token == "gzip"
    assert get_codec("brotli").http_token == "br"
    assert get_codec("lz4").http_token is None  # never on the wire
    assert get_codec("none").http_token is None
    data = b"abc" * 1000
    # The stored formats are the standard ones, readable by the libraries' own decoders.
    assert gzip.decompress(get_codec("gzip").compress(data)) == data
    assert brotli.decompress(get_codec("brotli").compress(data)) == data
    assert lz4.frame.decompress(get_codec("lz4").compress(data)) == data
    assert codec_for_token("BR") is get_codec("brotli")
    assert codec_for_token("x-gzip") is get_codec("gzip")
    assert codec_for_token("lz4") is None
    assert wire_codecs() == ("brotli", "gzip")


def test_get_codec_shares_instances_and_levels() -> None:
    assert get_codec("gzip") is get_codec("gzip")
    fast = get_codec("gzip", level=1)
    assert fast.level == 1 and fast is not get_codec("gzip")
    data = json.dumps(chat_body(400)).encode()
    assert len(get_codec("gzip", 9).compress(data)) <= len(fast.compress(data))


def test_unknown_codec_names_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"did you mean 'lz4'\? valid: brotli, gzip, lz4, none"):
        get_codec("lz5")


def test_missing_library_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from aurelis_plugins import codecs

    monkeypatch.setitem(sys.modules, "brotli", None)  # makes `import brotli` fail
    monkeypatch.setattr(codecs, "_shared", {})
    with pytest.raises(ImportError, match=r"pip install 'aurelis\[compression\]'"):
        get_codec("brotli")
    with pytest.raises(ConfigError, match=r"plugin 'brotli'.*aurelis\[compression\]"):
        Pipeline({"plugins": ["brotli"]})


# --- the plugins, on the wire --------------------------------------------------------------------------------


@pytest.mark.parametrize(("plugin", "token"), [("gzip", "gzip"), ("brotli", "br")])
def test_large_body_is_compressed_on_the_wire(upstream: Any, plugin: str, token: str) -> None:
    body = chat_body(400)
    with aurelis_core.instrument(httpx.Client(), {"plugins": [plugin]}) as client:
        response = client.post(upstream.url + CHAT, json=body)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"].startswith("echo: token0")
    (seen,) = upstream.requests
    assert seen.header("content-encoding") == token
    assert int(seen.header("content-length")) == len(seen.body)
    raw = json.dumps(body).encode()
    assert len(seen.body) < len(raw) / 4
    assert seen.json() == body  # decoded on the server side, equal to what the caller sent


@pytest.mark.anyio
async def test_async_httpx2_client_compresses(upstream: Any) -> None:
    body = chat_body(400)
    async with aurelis_core.instrument(httpx2.AsyncClient(), {"plugins": ["gzip"]}) as client:
        response = await client.post(upstream.url + CHAT, json=body)
    assert response.status_code == 200
    assert upstream.requests[0].header("content-encoding") == "gzip"
    assert upstream.requests[0].json() == body


def test_small_and_incompressible_bodies_go_plain(upstream: Any) -> None:
    import os

    with aurelis_core.instrument(httpx.Client(), {"plugins": ["gzip"]}) as client:
        client.post(upstream.url + CHAT, json=chat_body(3))  # well under 1 KiB
        noise = os.urandom(3000).hex()  # hex of random bytes: gzip saves only ~45%...
        client.post(upstream.url + CHAT, json={"model": "m", "messages": [{"role": "user", "content": noise}]})
    small, hexed = upstream.requests
    assert small.header("content-encoding") is None
    assert hexed.header("content-encoding") == "gzip"  # ...which is over the 10% bar

    pipeline = Pipeline({"plugins": ["gzip"], "gzip": {"min_saving": 0.6}})
    with pipeline.instrument(httpx.Client()) as client:
        client.post(upstream.url + CHAT, json={"model": "m", "messages": [{"role": "user", "content": noise}]})
    assert upstream.requests[-1].header("content-encoding") is None  # saving under 60%: sent plain
    assert upstream.requests[-1].json()["messages"][0]["content"] == noise


def counting(codec: Codec) -> tuple[Codec, list[int]]:
    calls: list[int] = []

    def compress(data: bytes) -> bytes:
        calls.append(len(data))
        return codec.compress(data)

    return Codec(codec.name, codec.http_token, codec.level, compress, codec.decompress), calls


def test_decision_is_sampled_then_remembered_per_target_and_type(upstream: Any) -> None:
    import os

    pipeline = Pipeline({"plugins": ["gzip"], "gzip": {"samples": 2, "min_saving": 0.6}})
    plugin = pipeline.plugin("gzip")
    plugin.codec, calls = counting(plugin.codec)
    noise = {"model": "m", "messages": [{"role": "user", "content": os.urandom(2000).hex()}]}
    with pipeline.instrument(httpx.Client()) as client:
        for _ in range(5):
            client.post(upstream.url + CHAT, json=noise)
        assert len(calls) == 2  # two samples said "does not pay"; the next three were not even tried
        assert all(r.header("content-encoding") is None for r in upstream.requests)
        # Another content type to the same host is decided on its own.
        client.post(upstream.url + CHAT, content=json.dumps(chat_body(400)), headers={"content-type": "text/json"})
        assert len(calls) == 3
        assert upstream.requests[-1].header("content-encoding") == "gzip"


def test_accept_encoding_added_only_when_missing(upstream: Any) -> None:
    with aurelis_core.instrument(httpx.Client(), {"plugins": ["brotli"]}) as client:
        del client.headers["accept-encoding"]
        response = client.post(upstream.url + CHAT, json=chat_body(2))
        client.post(upstream.url + CHAT, json=chat_body(2), headers={"accept-encoding": "identity"})
    assert response.status_code == 200
    first, second = upstream.requests
    assert first.header("accept-encoding") == "gzip, br"
    assert second.header("accept-encoding") == "identity"


def test_endpoints_option_limits_compression(upstream: Any, upstream_factory: Any) -> None:
    other = upstream_factory()
    config = {"plugins": ["gzip"], "gzip": {"endpoints": [f"127.0.0.1:{other.port}"]}}
    with aurelis_core.instrument(httpx.Client(), config) as client:
        client.post(upstream.url + CHAT, json=chat_body(400))
        client.post(other.url + CHAT, json=chat_body(400))
    assert upstream.requests[0].header("content-encoding") is None
    assert other.requests[0].header("content-encoding") == "gzip"


def test_415_is_retried_plain_once_and_remembered(upstream: Any) -> None:
    upstream.behavior.reject_encodings = ("br",)
    pipeline = Pipeline({"plugins": ["brotli"]})
    with pipeline.instrument(httpx.Client()) as client:
        first = client.post(upstream.url + CHAT, json=chat_body(400))
        assert first.status_code == 200
        assert [r.header("content-encoding") for r in upstream.requests] == ["br", None]
        second = client.post(upstream.url + CHAT, json=chat_body(400))
    assert second.status_code == 200
    assert len(upstream.requests) == 3 and upstream.requests[2].header("content-encoding") is None
    assert upstream.requests[2].json() == chat_body(400)
    assert pipeline.plugin("brotli").rejected == {f"127.0.0.1:{upstream.port}"}


@pytest.mark.anyio
async def test_415_fallback_comes_before_a_general_retry_policy_listed_first(upstream: Any) -> None:
    from aurelis_core import hookimpl
    from aurelis_plugins.compress import CompressConfig, GzipCompression

    asked: list[int | None] = []

    class Eager:
        """A policy that would retry anything after 30 s: it must not be the one answering the 415."""

        @hookimpl
        def aurelis_retry(self, ctx: Any, attempt: Any) -> float | None:
            asked.append(attempt.status_code)
            return 30.0

    upstream.behavior.reject_encodings = ("gzip",)
    pipeline = Pipeline({"plugins": []}, plugins=[Eager()])
    pipeline.register(GzipCompression(CompressConfig(), pipeline), "gzip")
    async with pipeline.instrument(httpx.AsyncClient()) as client:
        response = await client.post(upstream.url + CHAT, json=chat_body(400))
    assert response.status_code == 200
    assert [r.header("content-encoding") for r in upstream.requests] == ["gzip", None]
    assert asked == []


def test_a_415_to_a_plain_request_is_not_retried(upstream: Any) -> None:
    upstream.behavior.status_override = 415
    with aurelis_core.instrument(httpx.Client(), {"plugins": ["gzip"]}) as client:
        response = client.post(upstream.url + CHAT, json=chat_body(400))
    assert response.status_code == 415
    assert [r.header("content-encoding") for r in upstream.requests] == ["gzip", None]  # one plain retry only


def _picky_app(accepts_gzip: bool) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    """A unit-test upstream that answers 400 to bodies it cannot read, or to prompts saying 'bad'."""
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        encoded = request.headers.get("content-encoding")
        if encoded and not accepts_gzip:
            return httpx.Response(400, json={"error": {"message": "could not parse body (content encoding?)"}})
        body = request.content if not encoded else get_codec("gzip").decompress(request.content)
        if b"bad" in body:
            return httpx.Response(400, json={"error": {"message": "bad prompt"}})
        return httpx.Response(200, json={"ok": True})

    return httpx.MockTransport(handle), seen


def test_400_that_disappears_when_plain_is_remembered() -> None:
    transport, seen = _picky_app(accepts_gzip=False)
    pipeline = Pipeline({"plugins": ["gzip"]})
    with httpx.Client(transport=pipeline.transport(transport)) as client:
        assert client.post("http://picky/v1/chat/completions", json=chat_body(400)).status_code == 200
        assert [r.headers.get("content-encoding") for r in seen] == ["gzip", None]
        assert pipeline.plugin("gzip").rejected == {"picky"}
        assert client.post("http://picky/v1/chat/completions", json=chat_body(400)).status_code == 200
    assert len(seen) == 3 and "content-encoding" not in seen[2].headers


def test_400_about_the_prompt_is_not_taken_for_an_encoding_problem() -> None:
    transport, seen = _picky_app(accepts_gzip=True)
    pipeline = Pipeline({"plugins": ["gzip"]})
    bad = chat_body(400)
    bad["messages"][0]["content"] += " bad"
    with httpx.Client(transport=pipeline.transport(transport)) as client:
        # Before the target accepted any compressed body, a 400 is checked once by sending plain...
        assert client.post("http://picky/chat/completions", json=bad).status_code == 400
        assert [r.headers.get("content-encoding") for r in seen] == ["gzip", None]
        assert pipeline.plugin("gzip").rejected == set()  # ...which failed too: not the encoding
        assert client.post("http://picky/chat/completions", json=chat_body(400)).status_code == 200
        # Now that it accepted one, its 400s are the caller's and go straight back.
        assert client.post("http://picky/chat/completions", json=bad).status_code == 400
    assert [r.headers.get("content-encoding") for r in seen] == ["gzip", None, "gzip", "gzip"]


def test_streamed_request_bodies_pass_through_untouched(upstream: Any) -> None:
    payload = json.dumps(chat_body(400)).encode()

    def chunks() -> Any:
        yield payload[:1000]
        yield payload[1000:]

    with aurelis_core.instrument(httpx.Client(), {"plugins": ["gzip"]}) as client:
        response = client.post(upstream.url + CHAT, content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 200
    assert upstream.requests[0].header("content-encoding") is None
    assert upstream.requests[0].body == payload


def test_lz4_plugin_explains_it_is_at_rest_only() -> None:
    with pytest.raises(ConfigError, match="lz4 is a codec for cached values at rest"):
        Pipeline({"plugins": ["lz4"]})


def test_bad_options_name_valid_ones() -> None:
    with pytest.raises(ConfigError, match="unknown key 'min_sise'; did you mean 'min_size'"):
        Pipeline({"plugins": ["gzip"], "gzip": {"min_sise": 10}})
    with pytest.raises(ConfigError, match="min_saving"):
        Pipeline({"plugins": ["gzip"], "gzip": {"min_saving": 1.5}})
