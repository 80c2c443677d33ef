"""Dialects: detection, cacheability, stream completion, usage, failure kinds and rate-limit headers of each wire
format, and how a plugin adds one or an endpoint pins one."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from aurelis_core import ConfigError, Pipeline
from aurelis_core._dialects import BUILTIN, Dialects
from aurelis_core.plugin import (
    Anthropic,
    AzureOpenAI,
    Dialect,
    FailureKind,
    Gemini,
    OpenAI,
    Usage,
    event_stream_events,
)
from aurelis_core.testing import SimulatedServer

OPENAI, AZURE, ANTHROPIC, GEMINI = OpenAI(), AzureOpenAI(), Anthropic(), Gemini()


def sse(*events: tuple[str | None, dict[str, Any] | str]) -> bytes:
    out = b""
    for name, data in events:
        if name is not None:
            out += f"event: {name}\n".encode()
        out += b"data: " + (data if isinstance(data, str) else json.dumps(data)).encode() + b"\n\n"
    return out


# --- detection ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "name"), [
    ("/v1/chat/completions", "openai"),
    ("/v1/responses", "openai"),
    ("/v1/embeddings", "openai"),
    ("/api/v1/chat/completions", "openai"),  # Ollama, vLLM behind a prefix
    ("/inference/chat/completions", "openai"),  # GitHub Models
    ("/openai/deployments/gpt4o/chat/completions", "azure_openai"),
    ("/openai/v1/responses", "azure_openai"),
    ("/v1/messages", "anthropic"),
    ("/v1beta/models/gemini-2.5-flash:generateContent", "gemini"),
    ("/v1/models/gemini-2.5-flash:streamGenerateContent", "gemini"),
    ("/v1beta/models/text-embedding-004:batchEmbedContents", "gemini"),
    ("/v1beta/tunedModels/my-tuned-1:generateContent", "gemini"),
    ("/v1beta/openai/chat/completions", "openai"),  # Gemini's OpenAI-compatible endpoint
    ("/v1/threads/t1/messages", "openai"),  # not Anthropic's
])
def test_detection_by_path(path: str, name: str) -> None:
    assert BUILTIN.for_path(path).name == name


def test_detection_is_memoised_per_path() -> None:
    dialects = Dialects()
    first = dialects.for_path("/v1/messages")
    assert dialects._memo == {"/v1/messages": first}
    assert dialects.for_path("/v1/messages") is first


def test_an_endpoint_pins_a_dialect_under_its_url() -> None:
    dialects = Dialects(pinned=[("http://proxy.local/llm", "anthropic")])
    assert dialects.for_url(httpx.URL("http://proxy.local/llm/generate"), "/llm/generate").name == "anthropic"
    assert dialects.for_url(httpx.URL("http://proxy.local/llmx/v1/chat/completions"),
                            "/llmx/v1/chat/completions").name == "openai"


def test_an_endpoint_naming_an_unknown_dialect_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"unknown dialect 'antropic'; did you mean 'anthropic'\?"):
        Pipeline({"plugins": ["memory"], "endpoints": [{"url": "http://a.invalid", "dialect": "antropic"}]})


# --- what is cacheable -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "cacheable"), [
    ({"model": "m", "input": "hi"}, True),
    ({"model": "m", "input": "hi", "store": False}, True),
    ({"model": "m", "input": "and then?", "previous_response_id": "resp_1"}, True),
    ({"model": "m", "input": "hi", "background": True}, False),
    ({"model": "m", "input": "hi", "conversation": "conv_1"}, False),
    ({"model": "m", "input": "hi", "tools": [{"type": "mcp", "server_url": "https://x"}]}, False),
])
def test_responses_api_cacheability(body: dict[str, Any], cacheable: bool) -> None:
    assert OPENAI.cacheable_path("/v1/responses")
    assert OPENAI.cacheable("/v1/responses", body) is cacheable


def test_anthropic_and_gemini_cacheable_paths_and_models() -> None:
    assert ANTHROPIC.cacheable_path("/v1/messages") and not ANTHROPIC.cacheable_path("/v1/messages/batches")
    assert not ANTHROPIC.cacheable("/v1/messages", {"mcp_servers": [{"url": "https://x"}]})
    path = "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    assert GEMINI.cacheable_path(path) and GEMINI.streams(path, {}) and not GEMINI.streams(path[:-22] + "Content", {})
    assert GEMINI.model(path, {}) == "gemini-2.5-flash"
    assert GEMINI.model("/v1beta/tunedModels/my-tuned-1:generateContent", {}) == "my-tuned-1"
    assert AZURE.model("/openai/deployments/prod-4o/chat/completions", {"model": "x"}) == "prod-4o"
    assert AZURE.model("/openai/v1/chat/completions", {"model": "gpt-4o"}) == "gpt-4o"


# --- stream completion -----------------------------------------------------------------------------------------


def test_openai_stream_completion() -> None:
    chunk = {"choices": [{"delta": {"content": "hi"}, "finish_reason": None}]}
    done = {"choices": [{"delta": {}, "finish_reason": "stop"}]}
    assert OPENAI.stream_complete(sse((None, chunk), (None, done), (None, "[DONE]")))
    assert OPENAI.stream_complete(sse((None, chunk), (None, done), (None, {"choices": [], "usage": {}})))
    assert not OPENAI.stream_complete(sse((None, chunk)))


def test_responses_stream_completion() -> None:
    start = ("response.created", {"type": "response.created", "response": {}})
    delta = ("response.output_text.delta", {"type": "response.output_text.delta", "delta": "hi"})
    assert OPENAI.stream_complete(sse(start, delta, ("response.completed", {"type": "response.completed"})))
    for end in ("response.failed", "response.incomplete", "error"):
        assert not OPENAI.stream_complete(sse(start, delta, (end, {"type": end}))), end
    assert not OPENAI.stream_complete(sse(start, delta))
    # Without event names, the data's leading "type" tells.
    assert OPENAI.stream_complete(sse((None, {"type": "response.completed", "response": {"usage": {}}})))


def test_anthropic_stream_completion() -> None:
    start = ("message_start", {"type": "message_start", "message": {"usage": {"input_tokens": 5}}})
    delta = ("content_block_delta", {"type": "content_block_delta", "delta": {"text": "hi"}})
    stop = ("message_stop", {"type": "message_stop"})
    assert ANTHROPIC.stream_complete(sse(start, delta, stop))
    assert ANTHROPIC.stream_complete(sse(start, delta, stop, ("ping", {"type": "ping"})))
    assert not ANTHROPIC.stream_complete(sse(start, delta))
    assert not ANTHROPIC.stream_complete(sse(start, delta, ("error", {"type": "error", "error": {}})))


def test_gemini_stream_completion() -> None:
    part = {"candidates": [{"content": {"parts": [{"text": "hi"}]}}]}
    last = {"candidates": [{"content": {"parts": [{"text": "!"}]}, "finishReason": "STOP"}]}
    assert GEMINI.stream_complete(sse((None, part), (None, last)))
    assert not GEMINI.stream_complete(sse((None, part), (None, part)))
    assert not GEMINI.stream_complete(b"")


def test_event_stream_events() -> None:
    assert event_stream_events(b": keep-alive\r\n\r\nevent: a\r\ndata: 1\r\ndata: 2\r\n\r\ndata: x\n\n") == [
        (b"a", b"1\n2"), (b"", b"x")]


# --- usage -----------------------------------------------------------------------------------------------------


def test_usage_of_each_dialect() -> None:
    responses = json.dumps({"output": [], "usage": {"input_tokens": 12, "input_tokens_details": {"cached_tokens": 4},
                                                    "output_tokens": 7, "total_tokens": 19}}).encode()
    assert OPENAI.usage(None, responses) == Usage(12, 7, 19, 4)
    start = {"type": "message_start", "message": {"usage": {"input_tokens": 20, "cache_read_input_tokens": 10,
                                                            "output_tokens": 1}}}
    stream = sse(("message_start", start), ("message_delta", {"type": "message_delta", "usage": {"output_tokens": 9}}),
                 ("message_stop", {"type": "message_stop"}))
    assert ANTHROPIC.usage(stream[:200], stream[-120:]) == Usage(30, 9, None, 10)
    gemini = json.dumps({"candidates": [], "usageMetadata": {
        "promptTokenCount": 8, "candidatesTokenCount": 5, "thoughtsTokenCount": 2, "totalTokenCount": 15,
        "cachedContentTokenCount": 3}}).encode()
    assert GEMINI.usage(None, gemini) == Usage(8, 7, 15, 3)
    assert GEMINI.usage(None, b'{"candidates": []}') is None


# --- failures and rate limits ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("dialect", "status", "body", "kind"), [
    (OPENAI, 200, b"{}", None),
    (OPENAI, 429, b'{"error": {"type": "requests", "code": "rate_limit_exceeded"}}', FailureKind.RATE_LIMIT),
    (OPENAI, 429, b'{"error": {"type": "insufficient_quota", "code": "insufficient_quota"}}', FailureKind.AUTH),
    (OPENAI, 400, b'{"error": {"code": "context_length_exceeded", "message": "too long"}}',
     FailureKind.CONTEXT_LENGTH),
    (OPENAI, 400, b'{"error": {"code": "invalid_value"}}', FailureKind.BAD_REQUEST),
    (OPENAI, 401, b"", FailureKind.AUTH),
    (OPENAI, 500, b"", FailureKind.SERVER),
    (OPENAI, 503, b"", FailureKind.OVERLOAD),
    (ANTHROPIC, 529, b'{"type": "error", "error": {"type": "overloaded_error"}}', FailureKind.OVERLOAD),
    (ANTHROPIC, 503, b"<html>bad gateway</html>", FailureKind.SERVER),
    (ANTHROPIC, 400, b'{"type": "error", "error": {"type": "invalid_request_error", '
                     b'"message": "prompt is too long: 210000 tokens > 200000 maximum"}}', FailureKind.CONTEXT_LENGTH),
    (GEMINI, 400, b'{"error": {"code": 400, "message": "API key not valid.", "status": "INVALID_ARGUMENT"}}',
     FailureKind.AUTH),
    (GEMINI, 400, b'{"error": {"code": 400, "message": "The input token count (1200000) exceeds the maximum number '
                  b'of tokens allowed (1048576).", "status": "INVALID_ARGUMENT"}}', FailureKind.CONTEXT_LENGTH),
    (GEMINI, 429, b'{"error": {"status": "RESOURCE_EXHAUSTED"}}', FailureKind.RATE_LIMIT),
])
def test_classify(dialect: Dialect, status: int, body: bytes, kind: FailureKind | None) -> None:
    assert dialect.classify(status, httpx.Headers(), body) is kind


def test_rate_limit_headers() -> None:
    openai = OPENAI.rate_limits(httpx.Headers({
        "x-ratelimit-limit-tokens": "1000", "x-ratelimit-remaining-tokens": "250", "x-ratelimit-reset-tokens": "1m30s",
        "x-ratelimit-remaining-requests": "9"}))
    assert openai is not None
    assert (openai.limit_tokens, openai.remaining_tokens, openai.reset_tokens) == (1000, 250, 90)
    assert openai.remaining_requests == 9 and openai.reset_requests is None
    assert OPENAI.rate_limits(httpx.Headers({"content-type": "application/json"})) is None
    anthropic = ANTHROPIC.rate_limits(httpx.Headers({
        "anthropic-ratelimit-tokens-limit": "80000", "anthropic-ratelimit-tokens-remaining": "0",
        "anthropic-ratelimit-tokens-reset": "2999-01-01T00:00:00Z"}))
    assert anthropic is not None and anthropic.remaining_tokens == 0 and anthropic.reset_tokens > 1e9
    assert OPENAI.rate_limits(httpx.Headers({"anthropic-ratelimit-tokens-remaining": "5"})) is None


def test_output_budget() -> None:
    assert OPENAI.output_budget("/v1/responses", {"max_output_tokens": 64}) == 64
    assert OPENAI.output_budget("/v1/embeddings", {}) == 0
    assert OPENAI.output_budget("/v1/chat/completions", {}) is None
    assert ANTHROPIC.output_budget("/v1/messages", {"max_tokens": 100}) == 100
    assert GEMINI.output_budget("/v1/models/g:generateContent", {"generationConfig": {"maxOutputTokens": 30}}) == 30


# --- a dialect of a third party --------------------------------------------------------------------------------


class Echo(Dialect):
    """A made-up wire format: POST /echo/run, complete when its stream says "END"."""

    name = "echo"
    paths = ("/echo/run",)

    def detects(self, path: str) -> bool:
        return "/echo/" in path

    def stream_complete(self, tail: bytes) -> bool:
        return tail.rstrip().endswith(b"END")


class EchoPlugin:
    name = "echo_dialect"
    dialects = (Echo(),)


def test_a_plugin_adds_a_dialect_that_normalize_and_the_stages_use(upstream: SimulatedServer) -> None:
    pipeline = Pipeline({"plugins": ["normalize", "memory"]}, plugins=[EchoPlugin()])
    assert "echo" in pipeline._stages.dialects.names
    with pipeline.instrument(httpx.Client(base_url=upstream.base_url)) as client:
        # The simulator answers any POST it does not know with 404; a 404 is not stored, but the key is made.
        first = client.post("/echo/run", json={"q": 1})
        assert first.extensions["aurelis"].status == "miss"
        elsewhere = client.post("/echo/other", json={"q": 1})
        assert elsewhere.extensions["aurelis"].status == "bypass"


def test_a_plugin_offering_something_else_than_a_dialect_is_refused() -> None:
    class Broken:
        name = "broken"
        dialects = ("openai",)

    with pytest.raises(ConfigError, match="not a named Dialect"):
        Pipeline({"plugins": ["memory"]}, plugins=[Broken()])


# --- normalize's paths option ------------------------------------------------------------------------------------


def test_the_paths_option_replaces_the_dialects_paths(upstream: SimulatedServer) -> None:
    config = {"plugins": ["normalize", "memory"], "normalize": {"paths": ["/chat/completions"]}}
    with Pipeline(config).instrument(httpx.Client(base_url=upstream.base_url)) as client:
        chat = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
        assert client.post("/chat/completions", json=chat).extensions["aurelis"].status == "miss"
        assert client.post("/embeddings", json={"model": "e", "input": "x"}).extensions["aurelis"].status == "bypass"


def test_a_bad_paths_value_names_what_is_valid() -> None:
    with pytest.raises(ConfigError, match=r"paths\[0\]: expected a path ending such as '/chat/completions' or "
                                          r"':generateContent', got 'chat'"):
        Pipeline({"plugins": ["normalize", "memory"], "normalize": {"paths": ["chat"]}})


# --- the tenant and scope of each dialect's requests -----------------------------------------------------------


def key_of(pipeline: Pipeline, url: str, headers: dict[str, str], body: dict[str, Any]) -> str | None:
    from aurelis_core._models import DEFAULT_CONTROLS, RequestContext

    ctx = RequestContext(httpx.Request("POST", url, json=body, headers=headers), None, httpx, False, DEFAULT_CONTROLS)
    ctx._stages = pipeline._stages
    normalize = pipeline.pm.get_plugin("normalize")
    key: str | None = normalize.aurelis_normalize(ctx)
    return key


@pytest.mark.parametrize(("url", "credential", "scope"), [
    ("http://h/openai/deployments/d/chat/completions?api-version=2024-10-21", "api-key", None),
    ("http://h/v1/messages", "x-api-key", "anthropic-version"),
    ("http://h/v1/messages", "authorization", "anthropic-beta"),
    ("http://h/v1beta/models/g:generateContent", "x-goog-api-key", "x-goog-user-project"),
])
def test_credentials_and_scope_headers_of_each_dialect(url: str, credential: str, scope: str | None) -> None:
    pipeline = Pipeline({"plugins": ["normalize", "memory"]})
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    base = {credential: "secret-1", "x-stainless-retry-count": "0", "x-stainless-read-timeout": "600"}
    key = key_of(pipeline, url, base, body)
    assert key is not None
    # Volatile SDK headers stay out of the key; the credential and the scope are in it.
    assert key_of(pipeline, url, {**base, "x-stainless-retry-count": "1", "x-stainless-timeout": "9"}, body) == key
    assert key_of(pipeline, url, {**base, credential: "secret-2"}, body) != key
    if scope is not None:
        assert key_of(pipeline, url, {**base, scope: "2023-06-01"}, body) != key


def test_geminis_key_parameter_is_a_credential_not_part_of_the_path() -> None:
    pipeline = Pipeline({"plugins": ["normalize", "memory"]})
    url = "http://h/v1beta/models/g:streamGenerateContent?alt=sse&key="
    body = {"contents": [{"parts": [{"text": "hi"}]}]}
    one, again, other = (key_of(pipeline, url + k, {}, body) for k in ("k1", "k1", "k2"))
    assert one is not None and one == again and one != other
    assert key_of(pipeline, "http://h/v1beta/models/g:streamGenerateContent?key=k1", {}, body) != one  # alt=sse


def test_fallback_follows_the_dialects_verdict() -> None:
    from aurelis_core._fallback import warrants_fallback
    from aurelis_core.plugin import Attempt

    def failed(status: int, dialect: Dialect) -> Attempt:
        attempt = Attempt(1, None, dialect)
        attempt.status_code, attempt.headers = status, httpx.Headers()
        return attempt

    quota = b'{"error": {"type": "insufficient_quota", "code": "insufficient_quota"}}'
    assert not warrants_fallback(failed(429, OPENAI), quota, httpx)  # every model of the account is out of quota
    assert warrants_fallback(failed(429, OPENAI), b'{"error": {"code": "rate_limit_exceeded"}}', httpx)
    assert warrants_fallback(failed(529, ANTHROPIC), b'{"type": "error", "error": {"type": "overloaded_error"}}',
                             httpx)
    gemini_too_long = b'{"error": {"code": 400, "message": "The input token count (1200000) exceeds the maximum ' \
                      b'number of tokens allowed (1048576).", "status": "INVALID_ARGUMENT"}}'
    assert warrants_fallback(failed(400, GEMINI), gemini_too_long, httpx)
