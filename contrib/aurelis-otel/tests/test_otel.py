"""Spans for hits, misses, retries and failures, read back from the SDK's in-memory exporter."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest
from aurelis_otel import OtelConfig, OtelTracing
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from aurelis_core import Attempt, Pipeline, RequestContext, hookimpl
from aurelis_core.testing import SimulatedServer

PROMPT = "a secret prompt about the quarterly numbers"


class RetryServerErrors:
    """Retries a 5xx up to twice, at once (a test stand-in for a retry plugin)."""

    name = "test_retry"

    @hookimpl
    def aurelis_retry(self, ctx: RequestContext, attempt: Attempt) -> float | None:
        return 0.0 if (attempt.status_code or 0) >= 500 and attempt.number < 3 else None


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def client(exporter: InMemorySpanExporter) -> Iterator[httpx.Client]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = OtelTracing(OtelConfig(), None, tracer_provider=provider)
    pipeline = Pipeline({"plugins": ["normalize", "memory"]}, plugins=[tracing, RetryServerErrors()])
    with pipeline.instrument(httpx.Client()) as client:
        yield client
    pipeline.close()


def post(client: httpx.Client, url: str) -> httpx.Response:
    return client.post(
        url + "/chat/completions",
        json={"model": "gpt-test", "messages": [{"role": "user", "content": PROMPT}]},
        headers={"authorization": "Bearer sk-do-not-leak"},
    )


def test_miss_then_hit(client: httpx.Client, exporter: InMemorySpanExporter, upstream: SimulatedServer) -> None:
    post(client, upstream.base_url)
    post(client, upstream.base_url)
    spans = exporter.get_finished_spans()
    requests = [s for s in spans if s.name == "aurelis.request"]
    attempts = [s for s in spans if s.name == "aurelis.attempt"]
    assert len(requests) == 2 and len(attempts) == 1  # a hit makes no attempt
    miss, hit = requests
    assert miss.kind is SpanKind.CLIENT
    assert miss.attributes["aurelis.cache.status"] == "miss"
    assert miss.attributes["http.response.status_code"] == 200
    assert miss.attributes["gen_ai.request.model"] == "gpt-test"
    assert miss.attributes["aurelis.retry_count"] == 0
    assert miss.attributes["url.path"] == "/v1/chat/completions"
    assert hit.attributes["aurelis.cache.status"] == "hit"
    assert hit.attributes["aurelis.cache.tier"] == "memory"
    assert attempts[0].parent is not None and attempts[0].parent.span_id == miss.context.span_id
    assert attempts[0].context.trace_id == miss.context.trace_id
    assert miss.start_time <= attempts[0].start_time <= attempts[0].end_time <= miss.end_time
    assert [e.name for e in attempts[0].events] == ["first_byte"]
    assert miss.status.status_code is StatusCode.UNSET


def test_retries_are_child_spans(
    client: httpx.Client, exporter: InMemorySpanExporter, upstream: SimulatedServer
) -> None:
    upstream.behavior.update(fail_next=2)
    assert post(client, upstream.base_url).status_code == 200
    spans = exporter.get_finished_spans()
    (request,) = [s for s in spans if s.name == "aurelis.request"]
    attempts = sorted((s for s in spans if s.name == "aurelis.attempt"), key=lambda s: s.start_time)
    assert request.attributes["aurelis.retry_count"] == 2
    assert [a.attributes["http.response.status_code"] for a in attempts] == [500, 500, 200]
    assert [a.attributes["aurelis.attempt.number"] for a in attempts] == [1, 2, 3]
    assert [a.status.status_code for a in attempts] == [StatusCode.ERROR, StatusCode.ERROR, StatusCode.UNSET]
    assert attempts[0].attributes["error.type"] == "500"


def test_connection_error(client: httpx.Client, exporter: InMemorySpanExporter) -> None:
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(httpx.ConnectError):
        post(client, f"http://127.0.0.1:{port}/v1")
    (request,) = [s for s in exporter.get_finished_spans() if s.name == "aurelis.request"]
    assert request.status.status_code is StatusCode.ERROR
    assert request.attributes["error.type"] == "ConnectError"
    assert "http.response.status_code" not in request.attributes


def test_no_prompt_or_credential_in_any_span(
    client: httpx.Client, exporter: InMemorySpanExporter, upstream: SimulatedServer
) -> None:
    upstream.behavior.update(fail_next=1)
    post(client, upstream.base_url)
    post(client, upstream.base_url)
    spans = exporter.get_finished_spans()
    assert spans
    for span in spans:
        values = [str(v) for v in (span.attributes or {}).values()] + [span.name, str(span.status.description)]
        values += [str(v) for e in span.events for v in (e.attributes or {}).values()]
        assert not any("secret prompt" in v or "sk-do-not-leak" in v for v in values), span.name


def test_parent_is_the_callers_span(
    client: httpx.Client, exporter: InMemorySpanExporter, upstream: SimulatedServer
) -> None:
    tracer = TracerProvider().get_tracer("app")
    with tracer.start_as_current_span("handler") as handler:
        post(client, upstream.base_url)
    (request,) = [s for s in exporter.get_finished_spans() if s.name == "aurelis.request"]
    assert request.parent is not None and request.parent.span_id == handler.get_span_context().span_id


def test_attempt_spans_can_be_turned_off(exporter: InMemorySpanExporter, upstream: SimulatedServer) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = OtelTracing(OtelConfig(attempt_spans=False), None, tracer_provider=provider)
    with Pipeline({}, plugins=[tracing]).instrument(httpx.Client()) as client:
        post(client, upstream.base_url)
    assert [s.name for s in exporter.get_finished_spans()] == ["aurelis.request"]
