"""What a retry may send again, through the real openai SDK and real loopback servers.

A retry re-sends the caller's request byte for byte. These tests check, on the wire, that only a request that may
safely reach the server twice is re-sent: never a one-shot body (the upstream must see it once, whole), never a
request signed for one attempt, never a file upload, an upload part or a stateful Responses call -- unless an
``Idempotency-Key`` says the server de-duplicates -- and that what is re-sent is exactly what was sent first.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import httpx2
import openai
import pytest
from openai.types.chat import ChatCompletion

import aurelis_core
from aurelis_core import ConfigError, Pipeline
from aurelis_core._compat import buffered_body, replayable_body
from aurelis_core._resend import resend_refusal, signature_scheme
from aurelis_core.testing import serve

CHAT = {"model": "sim-chat", "messages": [{"role": "user", "content": "hello there"}]}
CHAT_BYTES = json.dumps(CHAT).encode()


class Recorded:
    """One request as the upstream received it: method, path, query, raw headers in wire order, whole body."""

    def __init__(self, method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]], body: bytes):
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.decode("latin-1").lower() == name:
                return value.decode("latin-1")
        return None


def _answer(path: str) -> dict[str, Any]:
    """The smallest answer the openai SDK accepts for the operation at ``path``."""
    if path.endswith("/chat/completions"):
        return {
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "sim-chat",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "hi"}}],
        }
    if path.endswith("/parts"):
        return {"id": "part_1", "object": "upload.part", "created_at": 0, "upload_id": "upl_1"}
    if path.endswith("/files"):
        return {
            "id": "file-1", "object": "file", "bytes": 3, "created_at": 0, "filename": "batch.jsonl",
            "purpose": "batch", "status": "processed",
        }
    return {"id": "resp_1", "object": "response", "created_at": 0, "status": "completed", "output": []}


class Upstream:
    """An ASGI app that records every request it receives and answers the statuses in ``script`` in turn
    (then 200). Error answers carry the openai error shape, so the SDK raises its own error classes."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.script: list[int] = []
        self.headers: list[tuple[bytes, bytes]] = []
        self._lock = threading.Lock()

    def fail(self, *statuses: int, headers: dict[str, str] | None = None) -> None:
        self.script = list(statuses)
        self.headers = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"]
        with self._lock:
            self.requests.append(Recorded(scope["method"], path, scope["query_string"], scope["headers"], body))
            status = self.script.pop(0) if self.script else 200
        if status == 200:
            payload = _answer(path)
            headers = [(b"content-type", b"application/json")]
        else:
            payload = {"error": {"message": f"status {status}", "type": "server_error", "code": None}}
            headers = [(b"content-type", b"application/json"), *self.headers]
        data = json.dumps(payload).encode()
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})


@pytest.fixture
def recorder() -> Iterator[tuple[Upstream, str]]:
    app = Upstream()
    with serve(app) as server:
        yield app, server.url


def retrying(config: dict[str, Any] | None = None) -> Pipeline:
    return Pipeline({"plugins": ["retry"], "retry": {"base": 0.0, **(config or {})}})


def sdk(base: str, pipeline: Pipeline) -> openai.OpenAI:
    # max_retries=0: the retries under test are the wrapper's, as the docs recommend (concepts/resilience.md).
    http = aurelis_core.instrument(httpx2.Client(timeout=10), pipeline=pipeline)
    return openai.OpenAI(base_url=base + "/v1", api_key="sk-test", http_client=http, max_retries=0)


def async_sdk(base: str, pipeline: Pipeline) -> openai.AsyncOpenAI:
    http = aurelis_core.instrument(httpx2.AsyncClient(timeout=10), pipeline=pipeline)
    return openai.AsyncOpenAI(base_url=base + "/v1", api_key="sk-test", http_client=http, max_retries=0)


def chunks() -> list[bytes]:
    return [CHAT_BYTES[:10], CHAT_BYTES[10:25], CHAT_BYTES[25:]]


# --- one-shot bodies ---------------------------------------------------------------------------------------------


def _generator() -> Iterator[bytes]:
    yield from chunks()


@pytest.mark.parametrize(
    "body",
    [_generator, lambda: iter(chunks()), lambda: io.BytesIO(CHAT_BYTES)],
    ids=["generator", "iterator", "file"],
)
def test_a_one_shot_body_is_sent_once_and_whole(recorder: tuple[Upstream, str], body: Any) -> None:
    app, base = recorder
    pipeline = retrying()
    llm = sdk(base, pipeline)
    app.fail(500)
    with pytest.raises(openai.InternalServerError):  # the upstream's own error, as the caller would see it
        llm.post("/chat/completions", cast_to=ChatCompletion, content=body())
    assert [r.body for r in app.requests] == [CHAT_BYTES]
    assert pipeline.stats.counters["retry_refused_stream"] == 1
    assert pipeline.stats.counters["retries"] == 0
    llm.close()


@pytest.mark.anyio
async def test_an_async_one_shot_body_is_sent_once_and_whole(recorder: tuple[Upstream, str]) -> None:
    app, base = recorder
    pipeline = retrying()
    llm = async_sdk(base, pipeline)

    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks():
            yield chunk

    app.fail(429)
    with pytest.raises(openai.RateLimitError):
        await llm.post("/chat/completions", cast_to=ChatCompletion, content=body())
    assert [r.body for r in app.requests] == [CHAT_BYTES]
    assert pipeline.stats.counters["retry_refused_stream"] == 1
    await llm.close()


# --- what is re-sent is what was sent ----------------------------------------------------------------------------


def test_a_chat_completion_is_retried_with_the_same_bytes(recorder: tuple[Upstream, str]) -> None:
    app, base = recorder
    pipeline = retrying()
    llm = sdk(base, pipeline)
    app.fail(500)
    answer = llm.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    assert answer.choices[0].message.content == "hi"
    first, second = app.requests
    assert (second.method, second.path, second.query) == (first.method, first.path, first.query)
    assert second.headers == first.headers  # x-stainless-retry-count included: "0" both times
    assert first.header("x-stainless-retry-count") == "0"
    assert second.body == first.body
    assert json.loads(first.body) == CHAT
    llm.close()


@pytest.mark.anyio
async def test_an_async_chat_completion_is_retried_with_the_same_bytes(recorder: tuple[Upstream, str]) -> None:
    app, base = recorder
    pipeline = retrying()
    llm = async_sdk(base, pipeline)
    app.fail(503, 429)
    answer = await llm.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    assert answer.choices[0].message.content == "hi"
    first, second, third = app.requests
    assert first.headers == second.headers == third.headers
    assert first.body == second.body == third.body
    await llm.close()


# --- operations that are not idempotent --------------------------------------------------------------------------


def test_a_file_upload_is_not_retried(recorder: tuple[Upstream, str]) -> None:
    app, base = recorder
    pipeline = retrying()
    llm = sdk(base, pipeline)
    app.fail(500)
    with pytest.raises(openai.InternalServerError):
        llm.files.create(file=("batch.jsonl", b"{}\n", "application/jsonl"), purpose="batch")
    assert len(app.requests) == 1
    assert pipeline.stats.counters["retry_not_idempotent"] == 1
    llm.close()


@pytest.mark.anyio
async def test_an_upload_part_is_not_retried(recorder: tuple[Upstream, str]) -> None:
    app, base = recorder
    pipeline = retrying()
    llm = async_sdk(base, pipeline)
    app.fail(502)
    with pytest.raises(openai.InternalServerError):
        await llm.uploads.parts.create(upload_id="upl_1", data=b"part of a file")
    assert [(r.method, r.path) for r in app.requests] == [("POST", "/v1/uploads/upl_1/parts")]
    await llm.close()


def test_an_idempotency_key_makes_a_file_upload_retryable(recorder: tuple[Upstream, str]) -> None:
    app, base = recorder
    llm = sdk(base, retrying())
    app.fail(500)
    created = llm.files.create(
        file=("batch.jsonl", b"{}\n", "application/jsonl"), purpose="batch",
        extra_headers={"Idempotency-Key": "upload-7"},
    )
    assert created.id == "file-1"
    first, second = app.requests
    assert second.headers == first.headers
    assert second.body == first.body  # the same multipart form, boundary included
    assert b'filename="batch.jsonl"' in first.body
    llm.close()


@pytest.mark.parametrize(
    "options",
    [
        {"background": True},
        {"conversation": "conv_1"},
        {"tools": [{"type": "mcp", "server_label": "deploys", "server_url": "https://mcp.example/sse"}]},
        {"input": [{"type": "function_call_output", "call_id": "call_1", "output": "42"}]},
        {"input": [{"type": "mcp_approval_response", "approval_request_id": "mcpr_1", "approve": True}]},
    ],
    ids=["background", "conversation", "mcp-tool", "tool-output", "mcp-approval"],
)
def test_a_stateful_response_is_not_retried(recorder: tuple[Upstream, str], options: dict[str, Any]) -> None:
    app, base = recorder
    llm = sdk(base, retrying())
    app.fail(500)
    with pytest.raises(openai.InternalServerError):
        llm.responses.create(**{"model": "sim-chat", "input": "hi", **options})
    assert len(app.requests) == 1
    llm.close()


def test_a_plain_response_is_retried(recorder: tuple[Upstream, str]) -> None:
    app, base = recorder
    llm = sdk(base, retrying())
    app.fail(500)
    assert llm.responses.create(model="sim-chat", input="hi", store=True).id == "resp_1"
    assert len(app.requests) == 2
    llm.close()


# --- per-attempt signatures --------------------------------------------------------------------------------------


def test_a_sigv4_signed_request_is_not_retried(recorder: tuple[Upstream, str]) -> None:
    """The openai SDK's Bedrock client signs every attempt with SigV4 (botocore); the wrapper must not re-send a
    signature, and the caller gets the upstream's error (its SDK may retry, signing afresh)."""
    app, base = recorder
    pipeline = retrying()
    http = aurelis_core.instrument(httpx2.Client(timeout=10), pipeline=pipeline)
    llm = openai.BedrockOpenAI(
        aws_region="us-east-1", aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="not-a-secret",
        base_url=base + "/v1", http_client=http, max_retries=0,
    )
    app.fail(500)
    with pytest.raises(openai.InternalServerError):
        llm.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    (sent,) = app.requests
    assert (sent.header("authorization") or "").startswith("AWS4-HMAC-SHA256 ")
    assert pipeline.stats.counters["retry_refused_signed"] == 1
    llm.close()


@pytest.mark.anyio
async def test_an_async_sigv4_signed_request_is_not_retried(recorder: tuple[Upstream, str]) -> None:
    app, base = recorder
    pipeline = retrying()
    http = aurelis_core.instrument(httpx2.AsyncClient(timeout=10), pipeline=pipeline)
    llm = openai.AsyncBedrockOpenAI(
        aws_region="us-east-1", aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="not-a-secret",
        aws_session_token="temporary-token", base_url=base + "/v1", http_client=http, max_retries=0,
    )
    app.fail(429)
    with pytest.raises(openai.RateLimitError):
        await llm.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    assert len(app.requests) == 1
    assert app.requests[0].header("x-amz-security-token") == "temporary-token"
    await llm.close()


def test_the_sdk_signs_each_of_its_own_retries_afresh(recorder: tuple[Upstream, str]) -> None:
    """The layer that can re-sign: with the SDK's retries on, each attempt carries its own signature headers
    (the date may repeat within a second; what matters is that the SDK signed and counted each attempt)."""
    app, base = recorder
    http = aurelis_core.instrument(httpx2.Client(timeout=10), pipeline=retrying())
    llm = openai.BedrockOpenAI(
        aws_region="us-east-1", aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="not-a-secret",
        base_url=base + "/v1", http_client=http, max_retries=1,
    )
    app.fail(500)
    llm.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    first, second = app.requests
    assert [first.header("x-stainless-retry-count"), second.header("x-stainless-retry-count")] == ["0", "1"]
    assert first.header("authorization") != second.header("authorization")  # signed with its own headers
    llm.close()


@pytest.mark.parametrize(
    ("headers", "query"),
    [
        ({"Authorization": "AWS4-HMAC-SHA256 Credential=AKID/20250101/us-east-1/s3/aws4_request, "
          "SignedHeaders=host;x-amz-date, Signature=abc", "x-amz-date": "20250101T000000Z"}, ""),
        ({"x-amz-date": "20250101T000000Z"}, ""),
        ({"Authorization": "SharedKey account:c2lnbmF0dXJl", "x-ms-date": "Wed, 01 Jan 2025 00:00:00 GMT"}, ""),
        ({"Authorization": "GOOG4-HMAC-SHA256 Credential=GOOG1/20250101/auto/storage/goog4_request, "
          "SignedHeaders=host;x-goog-date, Signature=abc"}, ""),
        ({"x-goog-date": "20250101T000000Z"}, ""),
        ({"Signature-Input": 'sig1=("@method" "@path");created=1735689600', "Signature": "sig1=:YWJj:"}, ""),
        ({"Authorization": 'Digest username="u", nonce="n", nc=00000001, response="r"'}, ""),
        ({}, "?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=abc"),
        ({}, "?x-goog-signature=abc&X-Goog-Date=20250101T000000Z"),
    ],
    ids=["sigv4", "x-amz-date", "sharedkey", "goog4", "x-goog-date", "rfc9421", "digest", "presigned-s3",
         "signed-url-gcs"],
)
def test_signed_requests_are_never_re_sent(
    recorder: tuple[Upstream, str], headers: dict[str, str], query: str
) -> None:
    app, base = recorder
    pipeline = retrying()
    client = pipeline.instrument(httpx.Client(timeout=10))
    app.fail(503)
    response = client.post(base + "/v1/chat/completions" + query, json=CHAT, headers=headers)
    assert response.status_code == 503
    assert len(app.requests) == 1
    assert pipeline.stats.counters["retry_refused_signed"] == 1
    client.close()


def test_a_bearer_token_is_re_sent_as_it_was(recorder: tuple[Upstream, str]) -> None:
    app, base = recorder
    client = retrying().instrument(httpx.Client(timeout=10))
    app.fail(503)
    headers = {"Authorization": "Bearer token-from-a-provider", "x-ms-date": "Wed, 01 Jan 2025 00:00:00 GMT"}
    assert client.post(base + "/v1/chat/completions", json=CHAT, headers=headers).status_code == 200
    assert [r.header("authorization") for r in app.requests] == ["Bearer token-from-a-provider"] * 2
    client.close()


# --- the other paths that re-send --------------------------------------------------------------------------------


def _gzip_pipeline() -> Pipeline:
    return Pipeline({"plugins": ["gzip"], "gzip": {"min_size": 0, "min_saving": 0.0}})


def test_the_gzip_fallback_re_sends_a_plain_copy(recorder: tuple[Upstream, str]) -> None:
    """The baseline for the next two: a server that refuses compressed bodies gets the same request plain."""
    app, base = recorder
    client = _gzip_pipeline().instrument(httpx.Client(timeout=10))
    app.fail(415)
    body = json.dumps({**CHAT, "padding": "x" * 2000}).encode()
    assert client.post(base + "/v1/chat/completions", content=body).status_code == 200
    first, second = app.requests
    assert first.header("content-encoding") == "gzip"
    assert second.header("content-encoding") is None and second.body == body
    client.close()


def test_the_gzip_fallback_never_re_sends_a_signed_request(recorder: tuple[Upstream, str]) -> None:
    app, base = recorder
    pipeline = _gzip_pipeline()
    client = pipeline.instrument(httpx.Client(timeout=10))
    app.fail(415)
    body = json.dumps({**CHAT, "padding": "x" * 2000}).encode()
    signed = {"Authorization": "AWS4-HMAC-SHA256 Credential=AKID/20250101/us-east-1/bedrock/aws4_request, "
              "SignedHeaders=host;x-amz-date, Signature=abc", "x-amz-date": "20250101T000000Z"}
    assert client.post(base + "/v1/chat/completions", content=body, headers=signed).status_code == 415
    assert len(app.requests) == 1
    assert pipeline.stats.counters["retry_refused_signed"] == 1
    client.close()


def test_a_signed_request_is_never_compressed(recorder: tuple[Upstream, str]) -> None:
    # Its signature covers the body's bytes: compressing it would make the upstream refuse it.
    app, base = recorder
    client = _gzip_pipeline().instrument(httpx.Client(timeout=10))
    body = json.dumps({**CHAT, "padding": "x" * 2000}).encode()
    signed = {"Authorization": "AWS4-HMAC-SHA256 Credential=AKID/20250101/us-east-1/bedrock/aws4_request, "
              "SignedHeaders=host;x-amz-date, Signature=abc", "x-amz-date": "20250101T000000Z"}
    assert client.post(base + "/v1/chat/completions", content=body, headers=signed).status_code == 200
    (sent,) = app.requests
    assert sent.header("content-encoding") is None and sent.body == body
    client.close()


def test_the_gzip_fallback_never_re_sends_a_one_shot_body(recorder: tuple[Upstream, str]) -> None:
    app, base = recorder
    client = _gzip_pipeline().instrument(httpx.Client(timeout=10))
    app.fail(415)
    body = json.dumps({**CHAT, "padding": "x" * 2000}).encode()
    response = client.post(base + "/v1/chat/completions", content=iter([body[:100], body[100:]]))
    assert response.status_code == 415
    assert [r.body for r in app.requests] == [body]  # sent as it was, once, whole
    client.close()


class _FailFirstConnect:
    """A network backend whose first connection fails to open, as a refused or unreachable port would."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.failed = 0

    def connect_tcp(self, *args: Any, **kwargs: Any) -> Any:
        if not self.failed:
            self.failed += 1
            import httpcore

            raise httpcore.ConnectError("connection refused")
        return self.backend.connect_tcp(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)


def test_the_httpx_engine_connect_retry_sends_a_one_shot_body_whole(recorder: tuple[Upstream, str]) -> None:
    """``connect_retries`` retries a connection that failed to open, before any byte of the request was read:
    a generator body still goes out whole, once."""
    from aurelis_plugins.send_httpx import HttpxOptions, _build

    app, base = recorder
    pipeline = Pipeline({"plugins": ["httpx"], "httpx": {"connect_retries": 1}})
    transport = _build(httpx, False, HttpxOptions(connect_retries=1))
    backend = transport._pool._network_backend = _FailFirstConnect(transport._pool._network_backend)
    pipeline.plugin("httpx")._transports[(httpx, False, None)] = transport
    client = pipeline.instrument(httpx.Client(timeout=10))
    response = client.post(base + "/v1/chat/completions", content=_generator())
    assert response.status_code == 200
    assert backend.failed == 1
    assert [r.body for r in app.requests] == [CHAT_BYTES]
    client.close()
    pipeline.close()


# --- the re-send rules, one by one, in both flavours -------------------------------------------------------------


async def _async_chunks() -> AsyncIterator[bytes]:
    yield b"a"


@pytest.mark.parametrize("http", [httpx, httpx2], ids=["httpx", "httpx2"])
def test_which_bodies_are_held_in_memory(http: Any) -> None:
    url = "http://api.test/v1/x"
    held = {
        "content": (http.Request("POST", url, content=b"abc"), b"abc"),
        "text": (http.Request("POST", url, content="abc"), b"abc"),
        "json": (http.Request("POST", url, json={"a": 1}), b'{"a":1}'),
        "data": (http.Request("POST", url, data={"a": "1"}), b"a=1"),
        "none": (http.Request("GET", url), b""),
        "stream=ByteStream": (http.Request("POST", url, stream=http.ByteStream(b"zz")), b"zz"),
    }
    for name, (request, body) in held.items():
        assert buffered_body(request) == body, name
        assert replayable_body(request), name
    read = http.Request("POST", url, content=iter([b"a", b"b"]))
    assert buffered_body(read) is None and not replayable_body(read)
    read.read()  # read whole: held from now on
    assert buffered_body(read) == b"ab" and replayable_body(read)

    forms = {
        "bytes parts": (http.Request("POST", url, files={"f": ("a.txt", b"hi")}, data={"k": "v"}), True),
        "str part": (http.Request("POST", url, files={"f": ("a.txt", "hi")}), True),
        "file object": (http.Request("POST", url, files={"f": ("a.txt", io.BytesIO(b"hi"))}), False),
        "mixed": (http.Request("POST", url, files=[("f", ("a", b"1")), ("g", ("b", io.BytesIO(b"2")))]), False),
    }
    for name, (request, replayable) in forms.items():
        assert buffered_body(request) is None, name
        assert replayable_body(request) is replayable, name
    one_shot = {
        "generator": http.Request("POST", url, content=_generator()),
        "iterator": http.Request("POST", url, content=iter([b"a"])),
        "file": http.Request("POST", url, content=io.BytesIO(b"abc")),
        "async generator": http.Request("POST", url, content=_async_chunks()),
    }
    for name, request in one_shot.items():
        assert buffered_body(request) is None, name
        assert not replayable_body(request), name
        assert resend_refusal(request) == "retry_refused_stream", name


def test_a_byte_stream_subclass_proves_nothing() -> None:
    class Once(httpx.ByteStream):
        pass

    request = httpx.Request("POST", "http://api.test/", stream=Once(b"x"))
    assert buffered_body(request) is None and not replayable_body(request)


@pytest.mark.parametrize(
    ("headers", "url", "scheme"),
    [
        ({"Authorization": "AWS4-HMAC-SHA256 Credential=a, SignedHeaders=host, Signature=b"}, "", "AWS4-HMAC-SHA256"),
        ({"Authorization": "AWS4-ECDSA-P256-SHA256 Credential=a"}, "", "AWS4-ECDSA-P256-SHA256"),
        ({"Authorization": "AWS AKIDEXAMPLE:c2ln"}, "", "AWS"),
        ({"Authorization": "GOOG4-HMAC-SHA256 Credential=a"}, "", "GOOG4-HMAC-SHA256"),
        ({"Authorization": "GOOG4-RSA-SHA256 Credential=a"}, "", "GOOG4-RSA-SHA256"),
        ({"Authorization": "SharedKey account:sig"}, "", "SharedKey"),
        ({"Authorization": "SharedKeyLite account:sig"}, "", "SharedKeyLite"),
        ({"Authorization": 'Signature version="1",keyId="k",signature="s"'}, "", "Signature"),
        ({"Authorization": "TC3-HMAC-SHA256 Credential=a"}, "", "TC3-HMAC-SHA256"),
        ({"Authorization": 'Digest username="u"'}, "", "Digest"),
        ({"Authorization": 'Hawk id="i", ts="1", nonce="n", mac="m"'}, "", "Hawk"),
        ({"Authorization": 'OAuth oauth_nonce="n", oauth_signature="s"'}, "", "OAuth"),
        ({"authorization": "  aws4-hmac-sha256 Credential=a"}, "", "aws4-hmac-sha256"),
        ({"X-Amz-Date": "20250101T000000Z"}, "", "X-Amz-Date"),
        ({"x-goog-date": "20250101T000000Z"}, "", "x-goog-date"),
        ({"Signature-Input": "sig1=()"}, "", "Signature-Input"),
        ({}, "?a=1&X-Amz-Signature=abc", "X-Amz-Signature"),
        ({}, "?X-Goog-Signature=abc", "X-Goog-Signature"),
        ({}, "?x-amz-signature", "x-amz-signature"),
        # not signatures: a bearer token, basic credentials, a date alone, names that only look alike
        ({"Authorization": "Bearer sk-abc"}, "", None),
        ({"Authorization": "Basic dTpw"}, "", None),
        ({"Authorization": "AWS4-HMAC-SHA256x Credential=a"}, "", None),
        ({"Authorization": "Signatures x"}, "", None),
        ({"x-ms-date": "Wed, 01 Jan 2025 00:00:00 GMT", "x-amz-meta": "1"}, "", None),
        ({"Signature": "sig1=:YWJj:"}, "", None),
        ({}, "?signature=abc&x-amz-signaturex=1&b=X-Amz-Signature", None),
        ({}, "", None),
    ],
)
def test_what_signs_a_request(headers: dict[str, str], url: str, scheme: str | None) -> None:
    request = httpx2.Request("POST", "http://api.test/v1/chat/completions" + url, headers=headers, json=CHAT)
    assert signature_scheme(request) == scheme
    assert resend_refusal(request) == (None if scheme is None else "retry_refused_signed")


def test_a_one_shot_body_is_refused_before_its_signature_is_looked_at() -> None:
    request = httpx.Request("POST", "http://api.test/", content=_generator(), headers={"x-amz-date": "1"})
    assert resend_refusal(request) == "retry_refused_stream"


def test_no_retry_policy_no_refusal_counted(recorder: tuple[Upstream, str]) -> None:
    app, base = recorder
    pipeline = Pipeline({"plugins": []})
    client = pipeline.instrument(httpx.Client(timeout=10))
    app.fail(500)
    assert client.post(base + "/v1/chat/completions", content=_generator()).status_code == 500
    assert "retry_refused_stream" not in pipeline.stats.counters
    client.close()


@pytest.mark.parametrize("methods", ["POST", "post", b"POST"])
def test_methods_given_as_one_string_are_refused_not_split_into_letters(methods: Any) -> None:
    with pytest.raises(ConfigError, match=r"\[retry\].*methods"):
        Pipeline({"plugins": ["retry"], "retry": {"methods": methods}})
    assert Pipeline({"plugins": ["retry"], "retry": {"methods": ["post"]}}).plugin("retry").config.methods == ("POST",)
