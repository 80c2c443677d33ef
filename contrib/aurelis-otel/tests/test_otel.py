"""Spans for hits, misses, retries and failures, read back from the SDK's in-memory exporter."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import httpx
import pytest
from aurelis_otel import OtelConfig, OtelTracing, genai
from aurelis_otel.tracing import DURATION_BUCKETS
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind, StatusCode

from aurelis_core import Attempt, Pipeline, RequestContext, hookimpl
from aurelis_core.testing import SimulatedServer, simulated_upstream

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


def requests_of(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    """The request spans (the GenAI operation spans), in the order they ended."""
    return [s for s in exporter.get_finished_spans() if "aurelis.cache.status" in (s.attributes or {})]


def attempts_of(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    """The attempt spans (HTTP client spans), in the order they started."""
    spans = [s for s in exporter.get_finished_spans() if "aurelis.attempt.number" in (s.attributes or {})]
    return sorted(spans, key=lambda s: s.start_time or 0)


def post(client: httpx.Client, url: str) -> httpx.Response:
    return client.post(
        url + "/chat/completions",
        json={"model": "gpt-test", "messages": [{"role": "user", "content": PROMPT}]},
        headers={"authorization": "Bearer sk-do-not-leak"},
    )


def test_miss_then_hit(client: httpx.Client, exporter: InMemorySpanExporter, upstream: SimulatedServer) -> None:
    post(client, upstream.base_url)
    post(client, upstream.base_url)
    requests, attempts = requests_of(exporter), attempts_of(exporter)
    assert len(requests) == 2 and len(attempts) == 1  # a hit makes no attempt
    miss, hit = requests
    assert miss.name == hit.name == "chat gpt-test"
    assert miss.kind is SpanKind.CLIENT
    assert miss.attributes is not None and hit.attributes is not None
    assert miss.attributes["aurelis.cache.status"] == "miss"
    assert miss.attributes["http.response.status_code"] == 200
    assert miss.attributes["gen_ai.operation.name"] == "chat"
    assert miss.attributes["gen_ai.provider.name"] == "openai"
    assert miss.attributes["openai.api.type"] == "chat_completions"
    assert miss.attributes["gen_ai.request.model"] == "gpt-test"
    assert miss.attributes["server.address"] == "127.0.0.1"
    assert miss.attributes["server.port"] == int(upstream.base_url.rsplit(":", 1)[1].split("/")[0])
    assert miss.attributes["aurelis.retry_count"] == 0
    assert miss.attributes["url.path"] == "/v1/chat/completions"
    assert hit.attributes["aurelis.cache.status"] == "hit"
    assert hit.attributes["aurelis.cache.tier"] == "memory"
    (attempt,) = attempts
    assert attempt.name == "POST"
    assert attempt.parent is not None and attempt.parent.span_id == miss.context.span_id
    assert attempt.context.trace_id == miss.context.trace_id
    assert miss.start_time <= attempt.start_time <= attempt.end_time <= miss.end_time
    assert [e.name for e in attempt.events] == ["first_byte"]
    assert miss.status.status_code is StatusCode.UNSET


def test_the_answer_s_id_model_finish_reasons_and_usage(
    client: httpx.Client, exporter: InMemorySpanExporter, upstream: SimulatedServer
) -> None:
    answer = post(client, upstream.base_url).json()
    post(client, upstream.base_url)
    miss, hit = requests_of(exporter)
    assert miss.attributes is not None and hit.attributes is not None
    usage = answer["usage"]
    assert miss.attributes["gen_ai.response.id"] == answer["id"]
    assert miss.attributes["gen_ai.response.model"] == answer["model"]
    assert miss.attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert miss.attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert miss.attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    # A hit spent no tokens; its answer is described on the span of the request that fetched it.
    assert not [key for key in hit.attributes if key.startswith(("gen_ai.usage.", "gen_ai.response."))]


def test_the_request_s_settings(
    client: httpx.Client, exporter: InMemorySpanExporter, upstream: SimulatedServer
) -> None:
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": PROMPT}], "temperature": 0.2,
            "top_p": 0.9, "max_tokens": 3, "seed": 7, "n": 2, "stop": ["END"], "frequency_penalty": 0.5,
            "response_format": {"type": "json_object"}}
    client.post(upstream.base_url + "/chat/completions", json=body)
    (request,) = requests_of(exporter)
    assert request.attributes is not None
    assert {k: v for k, v in request.attributes.items() if k.startswith(("gen_ai.request.", "gen_ai.output."))} == {
        "gen_ai.request.model": "gpt-test", "gen_ai.request.temperature": 0.2, "gen_ai.request.top_p": 0.9,
        "gen_ai.request.max_tokens": 3, "gen_ai.request.seed": 7, "gen_ai.request.choice.count": 2,
        "gen_ai.request.stop_sequences": ("END",), "gen_ai.request.frequency_penalty": 0.5,
        "gen_ai.output.type": "json",
    }
    # The simulator cut the answer at max_tokens.
    assert request.attributes["gen_ai.response.finish_reasons"] == ("length",)


def test_embeddings(client: httpx.Client, exporter: InMemorySpanExporter, upstream: SimulatedServer) -> None:
    answer = client.post(upstream.base_url + "/embeddings",
                         json={"model": "text-embedding-3-small", "input": PROMPT, "dimensions": 8}).json()
    (request,) = requests_of(exporter)
    assert request.name == "embeddings text-embedding-3-small"
    assert request.attributes is not None
    assert request.attributes["gen_ai.operation.name"] == "embeddings"
    assert request.attributes["gen_ai.embeddings.dimension.count"] == 8
    assert request.attributes["gen_ai.usage.input_tokens"] == answer["usage"]["prompt_tokens"]


def test_a_stream_is_marked_and_its_usage_read_from_its_last_events(
    client: httpx.Client, exporter: InMemorySpanExporter, upstream: SimulatedServer
) -> None:
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": PROMPT}], "stream": True,
            "stream_options": {"include_usage": True}}
    with client.stream("POST", upstream.base_url + "/chat/completions", json=body) as response:
        events = [json.loads(line[6:]) for line in response.read().decode().splitlines()
                  if line.startswith("data: {")]
    usage = events[-1]["usage"]
    (request,) = requests_of(exporter)
    assert request.attributes is not None and request.attributes["gen_ai.request.stream"] is True
    assert request.attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert request.attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert not [key for key in request.attributes if key.startswith("gen_ai.response.")]  # the body is not parsed


def test_a_gemini_answer_s_usage_metadata(
    client: httpx.Client, exporter: InMemorySpanExporter, upstream: SimulatedServer
) -> None:
    answer = client.post(upstream.url + "/v1beta/models/gemini-2.5-flash:generateContent",
                         json={"contents": [{"role": "user", "parts": [{"text": PROMPT}]}]}).json()
    (request,) = requests_of(exporter)
    assert request.attributes is not None and request.attributes["gen_ai.operation.name"] == "generate_content"
    metadata = answer["usageMetadata"]
    assert request.attributes["gen_ai.usage.input_tokens"] == metadata["promptTokenCount"]
    assert request.attributes["gen_ai.usage.output_tokens"] == metadata["candidatesTokenCount"]


def test_retries_are_child_spans(
    client: httpx.Client, exporter: InMemorySpanExporter, upstream: SimulatedServer
) -> None:
    upstream.behavior.update(fail_next=2)
    assert post(client, upstream.base_url).status_code == 200
    (request,) = requests_of(exporter)
    attempts = attempts_of(exporter)
    assert request.attributes is not None
    assert request.attributes["aurelis.retry_count"] == 2
    # The request span covers the whole operation, its retries included.
    assert request.start_time <= attempts[0].start_time and attempts[-1].end_time <= request.end_time
    assert request.status.status_code is StatusCode.UNSET and "error.type" not in request.attributes
    assert [a.attributes["http.response.status_code"] for a in attempts if a.attributes] == [500, 500, 200]
    assert [a.attributes["aurelis.attempt.number"] for a in attempts if a.attributes] == [1, 2, 3]
    assert [(a.attributes or {}).get("http.request.resend_count") for a in attempts] == [None, 1, 2]
    assert [a.status.status_code for a in attempts] == [StatusCode.ERROR, StatusCode.ERROR, StatusCode.UNSET]
    assert attempts[0].attributes is not None and attempts[0].attributes["error.type"] == "500"
    assert {a.parent.span_id for a in attempts if a.parent} == {request.context.span_id}


def test_a_failover_names_each_attempt_s_server(exporter: InMemorySpanExporter) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = OtelTracing(OtelConfig(provider="azure.ai.openai"), None, tracer_provider=provider)
    with simulated_upstream(failure_rate=1.0) as bad, simulated_upstream() as good:
        config = {"plugins": ["round_robin", "retry"], "retry": {"base": 0.01},
                  "endpoints": [{"url": bad.base_url, "name": "bad"}, {"url": good.base_url, "name": "good"}]}
        with Pipeline(config, plugins=[tracing]).instrument(httpx.Client(base_url=bad.base_url)) as client:
            for _ in range(2):  # round robin: at least one of the two goes to "bad" first, and fails over
                assert post(client, "").status_code == 200
    request = next(r for r in requests_of(exporter) if (r.attributes or {}).get("aurelis.retry_count") == 1)
    attempts = [a for a in attempts_of(exporter) if a.parent and a.parent.span_id == request.context.span_id]
    assert request.attributes is not None
    assert request.attributes["gen_ai.provider.name"] == "azure.ai.openai"
    assert "openai.api.type" not in request.attributes  # an OpenAI attribute, for provider openai only
    assert request.attributes["aurelis.endpoint"] == "good"
    assert request.attributes["server.port"] == _port(good)
    assert [(a.attributes or {}).get("aurelis.endpoint") for a in attempts] == ["bad", "good"]
    assert [(a.attributes or {}).get("server.port") for a in attempts] == [_port(bad), _port(good)]


def _port(server: SimulatedServer) -> int:
    return int(server.base_url.rsplit(":", 1)[1].split("/")[0])


def test_connection_error(client: httpx.Client, exporter: InMemorySpanExporter) -> None:
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(httpx.ConnectError):
        post(client, f"http://127.0.0.1:{port}/v1")
    (request,) = requests_of(exporter)
    assert request.attributes is not None
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
    (request,) = requests_of(exporter)
    assert request.parent is not None and request.parent.span_id == handler.get_span_context().span_id


def test_attempt_spans_can_be_turned_off(exporter: InMemorySpanExporter, upstream: SimulatedServer) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = OtelTracing(OtelConfig(attempt_spans=False), None, tracer_provider=provider)
    with Pipeline({}, plugins=[tracing]).instrument(httpx.Client()) as client:
        post(client, upstream.base_url)
    assert [s.name for s in exporter.get_finished_spans()] == ["chat gpt-test"]


def test_genai_client_metrics(exporter: InMemorySpanExporter, upstream: SimulatedServer) -> None:
    reader = InMemoryMetricReader()
    tracing = OtelTracing(OtelConfig(), None, tracer_provider=TracerProvider(),
                          meter_provider=MeterProvider(metric_readers=[reader]))
    with Pipeline({"plugins": ["normalize", "memory"]}, plugins=[tracing]).instrument(httpx.Client()) as client:
        usage = post(client, upstream.base_url).json()["usage"]
        post(client, upstream.base_url)  # a hit: timed, and no tokens spent
    data = reader.get_metrics_data()
    assert data is not None
    found = {m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    duration, tokens = found["gen_ai.client.operation.duration"], found["gen_ai.client.token.usage"]
    assert duration.unit == "s" and tokens.unit == "{token}"
    points = {p.attributes["aurelis.cache.status"]: p for p in duration.data.data_points if p.attributes}
    assert {status: p.count for status, p in points.items()} == {"miss": 1, "hit": 1}
    assert points["hit"].sum < points["miss"].sum
    assert tuple(points["miss"].explicit_bounds) == DURATION_BUCKETS
    miss = dict(points["miss"].attributes or {})
    assert miss == {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                    "gen_ai.request.model": "gpt-test", "gen_ai.response.model": "gpt-test",
                    "server.address": "127.0.0.1", "server.port": _port(upstream), "aurelis.cache.status": "miss"}
    spent = {p.attributes["gen_ai.token.type"]: (p.count, p.sum) for p in tokens.data.data_points if p.attributes}
    assert spent == {"input": (1, usage["prompt_tokens"]), "output": (1, usage["completion_tokens"])}


def test_metrics_can_be_turned_off(upstream: SimulatedServer) -> None:
    reader = InMemoryMetricReader()
    tracing = OtelTracing(OtelConfig(metrics=False), None, tracer_provider=TracerProvider(),
                          meter_provider=MeterProvider(metric_readers=[reader]))
    with Pipeline({}, plugins=[tracing]).instrument(httpx.Client()) as client:
        post(client, upstream.base_url)
    data = reader.get_metrics_data()
    assert data is None or not [m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics]


def test_a_request_that_is_no_genai_operation(exporter: InMemorySpanExporter, upstream: SimulatedServer) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = OtelTracing(OtelConfig(), None, tracer_provider=provider)
    with Pipeline({}, plugins=[tracing]).instrument(httpx.Client()) as client:
        client.get(upstream.base_url + "/models")
    (request,) = requests_of(exporter)
    assert request.name == "aurelis.request"
    assert request.attributes is not None and "gen_ai.operation.name" not in request.attributes


def test_a_span_that_is_not_recorded_costs_no_parsing(upstream: SimulatedServer) -> None:
    tracing = OtelTracing(OtelConfig(), None, tracer_provider=TracerProvider(sampler=ALWAYS_OFF))
    with Pipeline({"plugins": ["normalize", "memory"]}, plugins=[tracing]).instrument(httpx.Client()) as client:
        for _ in range(2):
            assert post(client, upstream.base_url).status_code == 200


@pytest.mark.parametrize(
    ("host", "provider"),
    [("api.openai.com", "openai"), ("myres.openai.azure.com", "azure.ai.openai"), ("api.anthropic.com", "anthropic"),
     ("generativelanguage.googleapis.com", "gcp.gemini"), ("bedrock-runtime.us-east-1.amazonaws.com", "aws.bedrock"),
     ("api.mistral.ai", "mistral_ai"), ("127.0.0.1", "openai"), ("notapi.openai.com.evil.example", "openai")],
)
def test_the_provider_of_a_host(host: str, provider: str) -> None:
    assert genai.provider(host) == provider


def test_usage_in_anthropic_s_shape_counts_cached_input() -> None:
    body = b'{"id": "msg_1", "model": "claude", "stop_reason": "end_turn", "usage": {"input_tokens": 10, ' \
           b'"cache_read_input_tokens": 30, "cache_creation_input_tokens": 5, "output_tokens": 7}}'
    assert genai.response_attributes(body) == {
        "gen_ai.response.id": "msg_1", "gen_ai.response.model": "claude",
        "gen_ai.response.finish_reasons": ["end_turn"], "gen_ai.usage.input_tokens": 45,
        "gen_ai.usage.output_tokens": 7, "gen_ai.usage.cache_read.input_tokens": 30,
        "gen_ai.usage.cache_write.input_tokens": 5,
    }
