"""The ``retry`` plugin: against real loopback upstreams (what is retried, when, how often, and where), then its
rules one by one through its hooks, on fake clocks."""

from __future__ import annotations

import email.utils
import json
import random
import re
import socket
import time
from typing import Any

import httpx
import httpx2
import openai
import pytest

import aurelis_core
from aurelis_core import Attempt, ConfigError, Endpoint, Pipeline, RequestContext, RequestControls, hookimpl
from aurelis_core.health import EndpointUnavailable, retry_after
from aurelis_plugins import retry as retry_module
from aurelis_plugins.retry import Retry, RetryConfig, RetryState

BODY = {"model": "sim-chat", "messages": [{"role": "user", "content": "hello there"}]}


def dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class Capture:
    """Keeps each finished request's ``ctx.state["retry"]``, as a router or exporter would read it."""

    name = "capture"

    def __init__(self) -> None:
        self.states: list[RetryState | None] = []

    @hookimpl
    def aurelis_observe(self, ctx: RequestContext) -> None:
        self.states.append(ctx.state.get("retry"))


def client_for(config: dict[str, Any], *extra: object) -> tuple[httpx.Client, Pipeline]:
    pipeline = Pipeline(config, plugins=list(extra))
    return pipeline.instrument(httpx.Client(timeout=5)), pipeline


def post(client: httpx.Client, base: str) -> httpx.Response:
    return client.post(base + "/v1/chat/completions", json=BODY)


@pytest.mark.parametrize("header", [("retry-after-ms", "400"), ("retry-after", "1"), ("x-ms-retry-after-ms", "300")])
def test_waits_what_the_latest_failure_asked(upstream: Any, header: tuple[str, str]) -> None:
    client, _ = client_for({"plugins": ["retry"], "retry": {"base": 0.0, "cap": 0.0}})  # no backoff of its own
    upstream.behavior.update(fail_next=1, failure_status=503, headers=dict([header]))
    assert post(client, upstream.url).status_code == 200
    first, second = upstream.requests
    asked = float(header[1]) / (1 if header[0] == "retry-after" else 1000)
    assert second.time - first.time >= asked
    client.close()


def test_retry_after_parsing() -> None:
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert retry_after({"retry-after": date}, now=now) == pytest.approx(30, abs=1)
    assert retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after({"retry-after": "soon"}) is None
    assert retry_after({"retry-after": "-3"}) is None


def test_gives_up_after_max_attempts_and_returns_the_last_answer(upstream: Any) -> None:
    client, pipeline = client_for({"plugins": ["retry"], "retry": {"max_attempts": 3, "base": 0.01}})
    upstream.behavior.status_override = 503
    assert post(client, upstream.url).status_code == 503
    assert upstream.count() == 3
    assert pipeline.stats.counters["retries"] == 2
    client.close()


def test_does_not_retry_client_errors_or_when_told_not_to(upstream: Any) -> None:
    client, _ = client_for({"plugins": ["retry"], "retry": {"base": 0.0}})
    upstream.behavior.update(fail_next=1, failure_status=400)
    assert post(client, upstream.url).status_code == 400
    upstream.behavior.update(fail_next=1, failure_status=500, headers={"x-should-retry": "false"})
    assert post(client, upstream.url).status_code == 500
    assert upstream.count() == 2
    client.close()


def test_budget_bounds_extra_load(upstream: Any) -> None:
    client, pipeline = client_for({
        "plugins": ["retry"],
        "retry": {"max_attempts": 5, "base": 0.0, "budget_ratio": 0.2, "budget_burst": 2.0},
    })
    upstream.behavior.status_override = 500
    requests = 20
    for _ in range(requests):
        post(client, upstream.url)
    retries = upstream.count() - requests
    # Without a budget this would be 4 retries per request (80); with it, the burst plus 20% of the traffic.
    assert 0 < retries <= 2 + 0.2 * requests
    assert pipeline.stats.counters["retry_budget_exhausted"] > 0
    assert pipeline.plugin("retry").budget >= 0
    client.close()


def test_deadline_bounds_the_waits(upstream: Any) -> None:
    client, pipeline = client_for({"plugins": ["retry"], "retry": {"max_attempts": 50, "deadline": 1.0}})
    upstream.behavior.update(status_override=503, headers={"retry-after-ms": "300"})
    post(client, upstream.url)
    times = [r.time for r in upstream.requests]
    assert len(times) >= 3
    assert times[-1] - times[0] < 1.0  # no attempt started past the deadline
    assert pipeline.stats.counters["retry_deadline"] == 1
    client.close()


def test_connect_errors_are_retried_then_raised() -> None:
    client, pipeline = client_for({"plugins": ["retry"], "retry": {"max_attempts": 3, "base": 0.01}})
    with pytest.raises(httpx.ConnectError):
        post(client, dead_url())
    assert pipeline.stats.counters["retries"] == 2
    client.close()


def test_stream_is_never_retried_after_its_first_byte(upstream: Any) -> None:
    client, _ = client_for({"plugins": ["retry"], "retry": {"base": 0.0}})
    upstream.behavior.truncate_stream_after = 2
    with pytest.raises(httpx.RemoteProtocolError):
        with client.stream("POST", upstream.url + "/v1/chat/completions", json={**BODY, "stream": True}) as r:
            assert r.status_code == 200
            for _ in r.iter_bytes():
                pass
    assert upstream.count() == 1
    client.close()


def test_fails_over_at_once_to_a_healthy_endpoint(upstream_factory: Any) -> None:
    busy = upstream_factory(rpm=1)  # its 429 asks for ~60 s
    spare = upstream_factory()
    capture = Capture()
    client, _ = client_for({
        "plugins": ["round_robin", "retry"],
        "endpoints": [{"url": busy.url, "name": "busy"}, {"url": spare.url, "name": "spare"}],
    }, capture)
    statuses = [post(client, "http://placeholder.invalid").status_code for _ in range(4)]
    assert statuses == [200] * 4
    retried = [s for s in capture.states if s is not None]
    assert retried, "the busy endpoint's 429 should have been retried"
    for state in retried:
        assert state.failed == {"busy"}
        assert state.waits == [0.0]  # not the 60 s the busy endpoint asked for: another endpoint was free
    client.close()


@pytest.mark.anyio
async def test_openai_sdk_through_retry(upstream: Any) -> None:
    pipeline = Pipeline({"plugins": ["retry"], "retry": {"base": 0.01}})
    import httpx2

    http_client = aurelis_core.instrument(httpx2.AsyncClient(), pipeline=pipeline)
    llm = openai.AsyncOpenAI(base_url=upstream.base_url, api_key="k", http_client=http_client, max_retries=0)
    upstream.behavior.update(fail_next=2, failure_status=502)
    answer = await llm.chat.completions.create(model="sim-chat", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "echo: hi"
    assert upstream.count() == 3
    assert isinstance(pipeline.plugin("retry"), Retry)
    await http_client.aclose()


# --- the rules, through the plugin's hooks, on fake clocks --------------------------------------------------------
#
# Each test below builds the request context and the failed attempt the pipeline would hand the plugin, and calls
# its public hooks (aurelis_retry, aurelis_attempt_end) directly: every branch and boundary of the rules is
# reached without a network or a real clock.


def plugin(options: dict[str, Any] | None = None, endpoints: list[dict[str, str]] | None = None) -> Retry:
    config: dict[str, Any] = {"plugins": ["retry"], "retry": {"base": 0.0, **(options or {})}}
    if endpoints:
        config["plugins"] = ["round_robin", "retry"]
        config["endpoints"] = endpoints
    retry: Retry = Pipeline(config).plugin("retry")
    return retry


def context(
    method: str = "POST", path: str = "/v1/chat/completions", *, http: Any = httpx,
    headers: dict[str, str] | None = None, **body: Any,
) -> RequestContext:
    if method == "POST" and not body:
        body = {"json": BODY}
    request = http.Request(method, "http://api.test" + path, headers=headers, **body)
    return RequestContext(request, None, http, False, RequestControls())


def failed(
    number: int = 1, status: int | None = 503, *, headers: dict[str, str] | None = None,
    error: BaseException | None = None, endpoint: Endpoint | None = None,
) -> Attempt:
    attempt = Attempt(number, endpoint)
    if error is None:
        attempt.status_code = status
        attempt.headers = httpx.Headers(headers or {})
    attempt.error = error
    return attempt


def test_defaults_are_the_documented_ones() -> None:
    config = RetryConfig()
    assert (config.max_attempts, config.base, config.cap, config.deadline) == (3, 0.5, 8.0, 60.0)
    assert (config.budget_ratio, config.budget_burst, config.seed) == (0.2, 10.0, None)
    assert config.statuses == (408, 409, 429)
    assert config.methods == ("GET", "HEAD", "OPTIONS", "PUT", "DELETE")
    assert config.paths == (
        "/chat/completions", "/completions", "/embeddings", "/responses", "/v1/messages",
        ":generateContent", ":streamGenerateContent", ":embedContent", ":batchEmbedContents",
    )
    assert config.exclude == ("/files", "/uploads", "/batches", "/fine_tuning", "/assistants", "/threads", "/mcp")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"methods": "GET"}, "[retry] methods: expected a list of strings, got 'GET'"),
        ({"methods": {"GET"}}, "[retry] methods: expected a list of strings"),
        ({"methods": [1]}, "[retry] methods[0]: expected a string, got 1"),
        ({"paths": "/chat/completions"}, "[retry] paths: expected a list of strings, got '/chat/completions'"),
        ({"paths": ["chat/completions"]}, "[retry] paths[0]: expected a path ending"),
        ({"paths": ["/"]}, "[retry] paths[0]: expected a path ending"),
        ({"paths": [":"]}, "[retry] paths[0]: expected a path ending"),
        ({"paths": ["/a?b=1"]}, "[retry] paths[0]: expected a path ending"),
        ({"exclude": "/files"}, "[retry] exclude: expected a list of strings, got '/files'"),
        ({"exclude": [":upload"]}, "[retry] exclude[0]: expected a path segment such as '/files', got ':upload'"),
        ({"exclude": ["/"]}, "[retry] exclude[0]: expected a path segment"),
        ({"exclude": ["/files?x"]}, "[retry] exclude[0]: expected a path segment"),
        ({"statuses": [399]}, "[retry] statuses[0]: expected an integer in 400..599, got 399"),
        ({"statuses": [600]}, "got 600"),
        ({"statuses": ["500"]}, "got '500'"),
        ({"max_attempts": 0}, "[retry] max_attempts: expected an integer >= 1, got 0"),
        ({"max_attempts": 2.0}, "[retry] max_attempts: expected an integer, got 2.0"),
        ({"base": -1}, "[retry] base: expected a number >= 0, got -1"),
        ({"cap": -0.5}, "[retry] cap: expected a number >= 0, got -0.5"),
        ({"deadline": -1}, "[retry] deadline: expected a number >= 0, got -1"),
        ({"budget_ratio": -0.1}, "[retry] budget_ratio: expected a number >= 0, got -0.1"),
        ({"budget_burst": "10"}, "[retry] budget_burst: expected a number, got '10'"),
    ],
)
def test_options_are_checked(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        Pipeline({"plugins": ["retry"], "retry": options})


def test_an_unknown_method_is_named_with_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as raised:
        Pipeline({"plugins": ["retry"], "retry": {"methods": ["GET", "GTE"]}})
    assert str(raised.value) == (
        "<dict>: [retry] methods[1]: expected an HTTP method, got 'GTE' (a string); did you mean 'GET'? "
        "valid: DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT, QUERY, TRACE"
    )


def test_the_plugin_surface() -> None:
    assert (Retry.name, Retry.Config) == ("retry", RetryConfig)
    assert sorted(retry_module.__all__) == ["Retry", "RetryConfig", "RetryState"]
    state = RetryState()
    assert (state.failed, state.waits) == (set(), [])
    with pytest.raises(AttributeError):  # slotted: one is made per retried request
        state.other = 1  # type: ignore[attr-defined]


def test_option_boundaries_are_accepted() -> None:
    config = plugin({
        "methods": ("get", "Post"), "paths": ["/a", ":b"], "exclude": ("/c",), "statuses": [400, 599],
        "max_attempts": 1,
    }).config
    assert config.methods == ("GET", "POST")
    assert (config.paths, config.exclude, config.statuses) == (("/a", ":b"), ("/c",), (400, 599))


# Which failures: statuses, x-should-retry, transport errors of the request's own flavour.


@pytest.mark.parametrize(
    ("status", "retried"),
    [(400, False), (404, False), (408, True), (409, True), (410, False), (429, True), (499, False), (500, True),
     (503, True), (599, True)],
)
def test_statuses_retried(status: int, retried: bool) -> None:
    assert (plugin().aurelis_retry(context(), failed(status=status)) is not None) is retried


def test_statuses_option_replaces_the_4xx_list() -> None:
    retry = plugin({"statuses": [425]})
    assert retry.aurelis_retry(context(), failed(status=425)) == 0.0
    assert retry.aurelis_retry(context(), failed(status=429)) is None
    assert retry.aurelis_retry(context(), failed(status=500)) == 0.0


def test_an_attempt_with_neither_status_nor_error_is_not_retried() -> None:
    assert plugin().aurelis_retry(context(), failed(status=None)) is None


@pytest.mark.parametrize(
    ("status", "header", "retried"),
    [(400, "true", True), (503, "false", False), (503, "maybe", True), (400, "maybe", False), (404, "TRUE", False)],
)
def test_x_should_retry_overrides_the_status(status: int, header: str, retried: bool) -> None:
    attempt = failed(status=status, headers={"x-should-retry": header})
    assert (plugin().aurelis_retry(context(), attempt) is not None) is retried


def test_x_should_retry_does_not_override_the_idempotency_rules() -> None:
    attempt = failed(status=500, headers={"x-should-retry": "true"})
    assert plugin().aurelis_retry(context(path="/v1/files"), attempt) is None


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (httpx.ConnectError("x"), True),
        (httpx.ConnectTimeout("x"), True),
        (httpx.ReadTimeout("x"), True),
        (httpx.WriteTimeout("x"), True),
        (httpx.PoolTimeout("x"), True),
        (httpx.ReadError("x"), True),
        (httpx.WriteError("x"), True),
        (httpx.RemoteProtocolError("x"), True),
        (httpx.LocalProtocolError("x"), False),
        (httpx.UnsupportedProtocol("x"), False),
        (httpx.DecodingError("x"), False),
        (ValueError("x"), False),
        (httpx2.ReadTimeout("x"), False),  # another flavour's error is not this request's transport failing
    ],
    ids=lambda value: type(value).__module__.partition(".")[0] + "." + type(value).__name__
    if isinstance(value, BaseException) else str(value),
)
def test_transport_errors_retried(error: BaseException, retried: bool) -> None:
    assert (plugin().aurelis_retry(context(), failed(error=error)) is not None) is retried


def test_errors_are_checked_against_the_request_flavour() -> None:
    assert plugin().aurelis_retry(context(http=httpx2), failed(error=httpx2.ReadTimeout("x"))) == 0.0
    assert plugin().aurelis_retry(context(http=httpx2), failed(error=httpx.ReadTimeout("x"))) is None


def test_max_attempts_boundary() -> None:
    retry = plugin({"max_attempts": 3})
    assert retry.aurelis_retry(context(), failed(2)) == 0.0
    assert retry.aurelis_retry(context(), failed(3)) is None
    assert plugin({"max_attempts": 1}).aurelis_retry(context(), failed(1)) is None


# Which requests: methods, paths, exclusions, Idempotency-Key, MCP, the body of generation calls.


@pytest.mark.parametrize(
    "path",
    [
        "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/messages",
        "/openai/deployments/gpt/chat/completions", "/v1beta/models/gemini-2.0-flash:generateContent",
        "/v1beta/models/gemini-2.0-flash:streamGenerateContent", "/v1beta/models/text-embedding-004:embedContent",
        "/v1beta/models/text-embedding-004:batchEmbedContents",
    ],
)
def test_generation_and_embedding_posts_are_retried(path: str) -> None:
    retry = plugin()
    assert retry.aurelis_retry(context(path=path), failed()) == 0.0
    assert retry.stats.counters["retry_not_idempotent"] == 0


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/files"), ("POST", "/v1/uploads/upl_1/parts"), ("POST", "/v1/uploads"),
        ("POST", "/v1/batches"), ("POST", "/v1/fine_tuning/jobs"), ("POST", "/v1/assistants"),
        ("POST", "/v1/threads/thread_1/runs"), ("POST", "/v1/threads/thread_1/messages"), ("POST", "/mcp"),
        ("POST", "/v1/messages/batches"), ("DELETE", "/v1/files/file-1"), ("PUT", "/v1/uploads/upl_1"),
        ("DELETE", "/v1/files"), ("DELETE", "/v1/files:cancel"),
        # generation-looking endings that are other operations
        ("POST", "/messages"), ("POST", "/v1/chat/completions/chatcmpl-1"), ("POST", "/v1/responses/resp_1/cancel"),
        ("POST", "/v1/images/generations"), ("PATCH", "/v1/things/1"), ("POST", "/v1/things"),
    ],
)
def test_other_operations_are_not_retried(method: str, path: str) -> None:
    retry = plugin()
    ctx = context(method, path)
    assert retry.aurelis_retry(ctx, failed()) is None
    assert retry.stats.counters["retry_not_idempotent"] == 1
    assert retry.stats.counters["retries"] == 0
    assert "retry" not in ctx.state  # a refused request is not recorded as failed over


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/files/file-1/content"), ("HEAD", "/v1/batches/batch_1"), ("OPTIONS", "/mcp"),
        ("GET", "/v1/models"), ("PUT", "/v1/things/1"), ("DELETE", "/v1/responses/resp_1"),
        ("DELETE", "/v1/filesystem/1"),  # not under /files: a segment must match whole
    ],
)
def test_idempotent_methods_are_retried(method: str, path: str) -> None:
    assert plugin().aurelis_retry(context(method, path, content=b""), failed()) == 0.0


def test_methods_option() -> None:
    none = plugin({"methods": []})
    assert none.aurelis_retry(context("GET", "/v1/models"), failed()) is None
    assert none.aurelis_retry(context("PUT", "/v1/things/1"), failed()) is None
    assert none.aurelis_retry(context(), failed()) == 0.0  # paths still apply
    posts = plugin({"methods": ["POST"]})
    assert posts.aurelis_retry(context("POST", "/v1/things", content=b"x"), failed()) == 0.0
    assert posts.aurelis_retry(context("POST", "/v1/files", content=b"x"), failed()) is None  # still excluded


def test_paths_option_also_covers_safe_methods_not_listed() -> None:
    retry = plugin({"methods": [], "paths": ["/v1/models"]})
    assert retry.aurelis_retry(context("GET", "/v1/models"), failed()) == 0.0
    assert retry.aurelis_retry(context(), failed()) is None  # /chat/completions is no longer listed
    assert retry.aurelis_retry(context("POST", "/v1/models", content=b"{}"), failed()) == 0.0
    # A safe method changes nothing whatever its body says; a POST's body is checked.
    assert retry.aurelis_retry(context("GET", "/v1/models", content=b"not json"), failed()) == 0.0
    assert retry.aurelis_retry(context("POST", "/v1/models", content=b"not json"), failed()) is None


def test_exclude_option() -> None:
    nothing_excluded = plugin({"exclude": []})
    assert nothing_excluded.aurelis_retry(context("DELETE", "/v1/files/file-1"), failed()) == 0.0
    assert nothing_excluded.aurelis_retry(context("POST", "/v1/files", content=b"x"), failed()) is None
    own = plugin({"exclude": ["/v1/chat"]})
    assert own.aurelis_retry(context(), failed()) is None
    assert own.aurelis_retry(context("DELETE", "/v1/files/file-1"), failed()) == 0.0


@pytest.mark.parametrize(
    ("method", "path", "key", "retried"),
    [
        ("POST", "/v1/files", "upload-1", True),
        ("POST", "/v1/things", "k", True),
        ("PATCH", "/v1/threads/thread_1", "k", True),
        ("POST", "/v1/files", "  ", False),
        ("POST", "/v1/files", "", False),
    ],
)
def test_an_idempotency_key_makes_any_request_retryable(method: str, path: str, key: str, retried: bool) -> None:
    ctx = context(method, path, headers={"Idempotency-Key": key}, content=b"x")
    assert (plugin().aurelis_retry(ctx, failed()) is not None) is retried


@pytest.mark.parametrize("header", ["Mcp-Session-Id", "MCP-Protocol-Version"])
def test_an_mcp_call_is_not_retried(header: str) -> None:
    retry = plugin()
    assert retry.aurelis_retry(context(headers={header: "1"}), failed()) is None
    assert retry.aurelis_retry(context("DELETE", "/v1/things/1", headers={header: "1"}), failed()) is None
    assert retry.aurelis_retry(context("GET", "/sse", headers={header: "1"}), failed()) == 0.0
    keyed = context(headers={header: "1", "Idempotency-Key": "k"})
    assert retry.aurelis_retry(keyed, failed()) == 0.0


@pytest.mark.parametrize(
    ("body", "retried"),
    [
        ({"model": "m", "input": "hi"}, True),
        ({"model": "m", "input": "hi", "store": True, "background": False}, True),
        ({"model": "m", "input": "hi", "background": True}, False),
        ({"model": "m", "input": "hi", "conversation": "conv_1"}, False),
        ({"model": "m", "input": "hi", "conversation": {"id": "conv_1"}}, False),
        ({"model": "m", "input": "hi", "conversation": None}, True),
        ({"model": "m", "input": "hi", "tools": [{"type": "function", "name": "f"}, {"type": "mcp"}]}, False),
        ({"model": "m", "input": "hi", "tools": [{"type": "function", "name": "f"}, "mcp"]}, True),
        ({"model": "m", "input": "hi", "tools": {"type": "mcp"}}, True),
        ({"model": "m", "messages": [], "mcp_servers": [{"type": "url", "url": "https://mcp.test"}]}, False),
        ({"model": "m", "messages": [], "mcp_servers": []}, True),
        ({"model": "m", "input": [{"type": "message", "role": "user", "content": "hi"}]}, True),
        ({"model": "m", "input": [{"type": "message"}, {"type": "function_call_output", "output": "1"}]}, False),
        ({"model": "m", "input": [{"type": "computer_call_output"}]}, False),
        ({"model": "m", "input": [{"type": "mcp_approval_response", "approve": True}]}, False),
        ({"model": "m", "input": [{"type": "mcp_approval_request"}]}, True),
        ({"model": "m", "input": [{"type": 3}, "text", 7]}, True),
        ({"model": "m", "input": ["a", "b"]}, True),
        (["not", "an", "object"], False),
    ],
)
def test_the_body_of_a_generation_call(body: Any, retried: bool) -> None:
    retry = plugin()
    assert (retry.aurelis_retry(context(path="/v1/responses", json=body), failed()) is not None) is retried
    assert retry.stats.counters["retry_not_idempotent"] == (0 if retried else 1)


@pytest.mark.parametrize(
    ("content", "retried"),
    [(b"", True), (b"not json", False), (b"\xff\xfe", False), (b'{"model": "m"}', True)],
)
def test_a_generation_body_that_cannot_be_read(content: bytes, retried: bool) -> None:
    assert (plugin().aurelis_retry(context(content=content), failed()) is not None) is retried


def test_a_generation_body_held_in_a_byte_stream_is_read() -> None:
    """A request built with ``stream=ByteStream(...)`` holds its body without ``_content``; it is still checked."""
    for body, retried in ((b'{"input": "hi"}', True), (b'{"input": "hi", "background": true}', False)):
        ctx = context(path="/v1/responses", stream=httpx.ByteStream(body))
        assert ctx.json == json.loads(body)  # parsed like a content= body: its bytes are in memory too
        assert (plugin().aurelis_retry(ctx, failed()) is not None) is retried


def test_a_multipart_body_to_a_generation_path_cannot_be_checked() -> None:
    ctx = context(path="/v1/chat/completions", files={"file": ("a.bin", b"123")})
    assert plugin().aurelis_retry(ctx, failed()) is None


def test_the_parsed_body_of_the_context_is_used() -> None:
    ctx = context(path="/v1/responses", json={"input": "hi"})
    ctx.json = {"input": "hi", "background": True}  # what a stage parsed before
    assert plugin().aurelis_retry(ctx, failed()) is None


@pytest.mark.parametrize(
    "error",
    [httpx.ConnectError("x"), httpx.ConnectTimeout("x"), httpx.PoolTimeout("x"),
     EndpointUnavailable("open circuit", "a")],
    ids=["connect-error", "connect-timeout", "pool-timeout", "endpoint-unavailable"],
)
def test_a_request_the_server_never_saw_may_be_retried_whatever_it_is(error: BaseException) -> None:
    retry = plugin(endpoints=[{"url": "http://a.test", "name": "a"}, {"url": "http://b.test", "name": "b"}])
    ctx = context("POST", "/v1/files", content=b"x")
    assert retry.aurelis_retry(ctx, failed(error=error, endpoint=retry.endpoints[0])) == 0.0


def test_a_request_the_server_may_have_seen_follows_the_rules() -> None:
    retry = plugin()
    assert retry.aurelis_retry(context("POST", "/v1/files", content=b"x"), failed(error=httpx.ReadTimeout("x"))) is None
    assert retry.stats.counters["retry_not_idempotent"] == 1


# When: backoff, Retry-After, failover, deadline, budget.


def test_backoff_is_full_jitter_within_the_exponential_bound() -> None:
    retry = plugin({"base": 1.0, "cap": 8.0, "seed": 7, "max_attempts": 10, "deadline": None})
    reference = random.Random(7)
    for number, bound in zip(range(1, 8), (1, 2, 4, 8, 8, 8, 8), strict=True):
        wait = retry.aurelis_retry(context(), failed(number))
        assert wait is not None and 0.0 <= wait <= bound
        assert wait == reference.uniform(0.0, bound)


def test_backoff_scales_with_base_and_stops_at_cap() -> None:
    retry = plugin({"base": 0.25, "cap": 1.0, "seed": 3, "max_attempts": 10, "deadline": None})
    reference = random.Random(3)
    for number, bound in ((1, 0.25), (2, 0.5), (3, 1.0), (4, 1.0)):
        assert retry.aurelis_retry(context(), failed(number)) == reference.uniform(0.0, bound)


def test_the_waits_are_recorded_for_routers() -> None:
    retry = plugin({"base": 1.0, "seed": 1})
    ctx = context()
    first = retry.aurelis_retry(ctx, failed(1))
    second = retry.aurelis_retry(ctx, failed(2, headers={"retry-after": "2"}))
    state = ctx.state["retry"]
    assert isinstance(state, RetryState)
    assert state.waits == [first, second] and second == 2.0
    assert state.failed == {"http://api.test"}
    assert retry.stats.counters["retries"] == 2


def test_retry_after_of_the_latest_failure_wins() -> None:
    retry = plugin({"base": 100.0, "cap": 100.0, "max_attempts": 5, "deadline": None})
    ctx = context()
    assert retry.aurelis_retry(ctx, failed(1, 429, headers={"retry-after": "3"})) == 3.0
    assert retry.aurelis_retry(ctx, failed(2, 429, headers={"retry-after-ms": "1500"})) == 1.5
    assert retry.aurelis_retry(ctx, failed(3, 503, headers={"x-ms-retry-after-ms": "250"})) == 0.25
    no_hint = retry.aurelis_retry(ctx, failed(4, 503))
    assert no_hint is not None and no_hint != 0.25  # its own backoff, not an earlier failure's hint
    assert ctx.state["retry"].waits[:3] == [3.0, 1.5, 0.25]


def test_failover_goes_at_once_to_an_endpoint_available_on_the_registry_clock() -> None:
    retry = plugin(
        {"base": 100.0, "cap": 100.0, "seed": 5},
        endpoints=[{"url": "http://a.test", "name": "a"}, {"url": "http://b.test", "name": "b"}],
    )
    a, b = retry.endpoints
    now = [100.0]
    retry.health.clock = lambda: now[0]
    retry.health.block(b, until=150.0, reason="rate_limited")
    now[0] = 149.0
    ctx = context()
    waited = retry.aurelis_retry(ctx, failed(1, 429, headers={"retry-after": "30"}, endpoint=a))
    assert waited == 30.0  # b is blocked: wait for a as it asked
    now[0] = 150.0  # b's block ends now
    ctx = context()
    assert retry.aurelis_retry(ctx, failed(1, 429, headers={"retry-after": "30"}, endpoint=a)) == 0.0
    assert ctx.state["retry"].failed == {"a"}
    # Both failed in this request: back to waiting.
    assert retry.aurelis_retry(ctx, failed(2, 429, headers={"retry-after": "30"}, endpoint=b)) == 30.0
    assert ctx.state["retry"].failed == {"a", "b"}


def test_endpoint_unavailable_without_another_endpoint_is_not_retried() -> None:
    retry = plugin()
    assert retry.aurelis_retry(context(), failed(error=EndpointUnavailable("open", "x", retry_after=1.0))) is None
    assert retry.stats.counters["retries"] == 0


def test_the_deadline_counts_the_wait_on_the_plugin_clock() -> None:
    retry = plugin({"deadline": 10.0})
    now = [105.0]
    retry.clock = lambda: now[0]
    ctx = context()
    ctx.started = 100.0
    assert retry.aurelis_retry(ctx, failed(1, headers={"retry-after": "4.5"})) == 4.5  # ends at 9.5 s
    assert retry.aurelis_retry(ctx, failed(1, headers={"retry-after": "5"})) is None  # would end at 10 s: refused
    assert retry.stats.counters["retry_deadline"] == 1
    now[0] = 110.0
    assert retry.aurelis_retry(ctx, failed(1, headers={"retry-after": "0"})) is None  # no attempt may start at 10 s
    now[0] = 109.0
    assert retry.aurelis_retry(ctx, failed(1)) == 0.0  # base 0: an attempt at 9 s
    assert retry.stats.counters["retry_deadline"] == 2
    assert retry.stats.counters["retries"] == 2


def test_no_deadline() -> None:
    retry = plugin({"deadline": None})
    retry.clock = lambda: 1e9
    ctx = context()
    ctx.started = 0.0
    assert retry.aurelis_retry(ctx, failed(1, headers={"retry-after": "1000"})) == 1000.0


def test_the_budget_refills_by_ratio_up_to_burst_and_is_spent_by_retries() -> None:
    retry = plugin({"budget_ratio": 0.25, "budget_burst": 2.0, "max_attempts": 10})
    assert retry.budget == 2.0  # starts full
    retry.aurelis_attempt_end(context(), failed(1))
    assert retry.budget == 2.0  # never above burst
    assert retry.aurelis_retry(context(), failed(1)) == 0.0
    assert retry.aurelis_retry(context(), failed(1)) == 0.0
    assert retry.budget == 0.0
    assert retry.aurelis_retry(context(), failed(1)) is None
    assert retry.stats.counters["retry_budget_exhausted"] == 1
    retry.aurelis_attempt_end(context(), failed(2))  # only a request's first attempt deposits
    assert retry.budget == 0.0
    for expected in (0.25, 0.5, 0.75):
        retry.aurelis_attempt_end(context(), failed(1))
        assert retry.budget == expected
    assert retry.aurelis_retry(context(), failed(1)) is None  # 0.75 < 1
    retry.aurelis_attempt_end(context(), failed(1))
    assert retry.budget == 1.0
    assert retry.aurelis_retry(context(), failed(1)) == 0.0  # exactly one token is enough
    assert retry.budget == 0.0
    assert retry.stats.counters["retry_budget_exhausted"] == 2
    assert retry.stats.counters["retries"] == 3


def test_a_refused_retry_spends_no_budget() -> None:
    retry = plugin({"budget_burst": 1.0, "budget_ratio": 0.0})
    assert retry.aurelis_retry(context(path="/v1/files"), failed()) is None
    assert retry.aurelis_retry(context(), failed(status=400)) is None
    assert retry.budget == 1.0
    assert retry.aurelis_retry(context(), failed()) == 0.0
    assert retry.budget == 0.0


def test_a_failure_the_dialect_calls_incurable_is_not_retried() -> None:
    from aurelis_core.plugin import Anthropic

    quota = failed(status=429)
    quota.body = b'{"error": {"type": "insufficient_quota", "code": "insufficient_quota"}}'
    assert plugin().aurelis_retry(context(), quota) is None
    overloaded = failed(status=529)
    overloaded.dialect = Anthropic()
    overloaded.body = b'{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}'
    assert plugin().aurelis_retry(context(), overloaded) == 0.0
