"""``otel``: one span per request, following the OpenTelemetry GenAI semantic conventions, and under it one
HTTP client span per attempt (retries and failovers show as siblings), written when the request is over; and
the conventions' client metrics.

The spans are built in the ``observe`` hook from what the pipeline recorded (the request's start, each
attempt's start, first byte and end), with explicit timestamps, so tracing adds no hook to the hot path and
costs nothing until the request is done. The request span's parent is the span current when the request
ends (for a buffered request: the caller's own span; for a stream: wherever the stream was finished).

The request span covers the whole logical operation, retries included, as the conventions ask: it is named
``{gen_ai.operation.name} {gen_ai.request.model}`` (``chat gpt-4.1-mini``; ``aurelis.request`` for a request
that is no GenAI operation), kind CLIENT, with:

- ``gen_ai.operation.name`` (``chat``, ``text_completion``, ``embeddings``, ``generate_content``, from the path),
  ``gen_ai.provider.name`` (from the answering endpoint's host, ``openai`` when it is none of the well-known
  ones, or the ``provider`` option), ``openai.api.type`` (``chat_completions`` / ``responses``), and
  ``gen_ai.request.model``, ``server.address``, ``server.port`` (the endpoint that answered);
- the request's settings: ``gen_ai.request.max_tokens``, ``temperature``, ``top_p``, ``top_k``,
  ``frequency_penalty``, ``presence_penalty``, ``seed``, ``stop_sequences``, ``choice.count``, ``stream``,
  ``gen_ai.output.type``, ``gen_ai.request.encoding_formats``, ``gen_ai.embeddings.dimension.count``;
- the tokens the upstream's answer spent, as the request's dialect reads its usage block (OpenAI's, the
  Responses API's, Anthropic's, Gemini's ``usageMetadata``; a stream's from its last events, when it asked for
  usage): ``gen_ai.usage.input_tokens``, ``output_tokens``, ``cache_read.input_tokens``;
- from the upstream's answer, when the pipeline read it whole (a cacheable answer, not content-encoded):
  ``gen_ai.response.id``, ``gen_ai.response.model``, ``gen_ai.response.finish_reasons``,
  ``gen_ai.usage.cache_write.input_tokens`` and ``reasoning.output_tokens``. Neither for a cache hit (it spent
  no tokens; its answer's figures are on the span of the request that fetched it);
- ``error.type`` (the exception's class, or the status code) and status ERROR when the request failed;
- Aurelis's own: ``aurelis.cache.status``, ``aurelis.cache.tier``, ``aurelis.attempts``, ``aurelis.retry_count``,
  ``aurelis.endpoint``, and ``http.request.method``, ``url.path``, ``http.response.status_code``.

Attempt spans (none for a cache hit) follow the HTTP client conventions: named after the method (``POST``),
kind CLIENT, with ``http.request.method``, ``server.address``, ``server.port``, ``http.response.status_code``,
``http.request.resend_count`` (on a retry), ``error.type``, ``aurelis.attempt.number``, ``aurelis.endpoint``,
and an event ``first_byte`` when the response headers arrived. No URL query is recorded (it can carry keys).

Metrics (``metrics = true``, the default), for GenAI operations: ``gen_ai.client.operation.duration`` (s) and
``gen_ai.client.token.usage`` (``{token}``, ``gen_ai.token.type`` input/output; none for a cache hit), with the
conventions' bucket boundaries and attributes (operation, provider, request and response model, server,
``error.type``) plus ``aurelis.cache.status``: a hit's microseconds and an upstream call's seconds are not one
distribution. They go to the global meter provider unless one is passed to the constructor.

Never any prompt, message or answer text (the conventions' opt-in content attributes are not set), never a
credential. The bodies are read only for a span that is recorded or for the metrics (with ``metrics = false``,
a sampled-out span costs no parsing).
Spans go to the global tracer provider (``opentelemetry.trace.set_tracer_provider``) unless one is passed to
the constructor; export with a ``BatchSpanProcessor``: ``observe`` must not do I/O, and the batch processor
queues.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import attrs
from opentelemetry import metrics, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from aurelis_core.plugin import (
    Attempt,
    Pipeline,
    RequestContext,
    Usage,
    header_items,
    hookimpl,
    label,
    url_parts,
)

from . import genai

__all__ = ["OtelConfig", "OtelTracing"]

__version__ = "0.2.0"

#: The default port of each scheme (``server.port`` is required with ``server.address``).
_DEFAULT_PORTS = {"http": 80, "https": 443}
#: The bucket boundaries the conventions recommend for ``gen_ai.client.operation.duration`` (seconds) ...
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
#: ... and for ``gen_ai.client.token.usage`` (tokens).
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
#: The attributes of a request span that its metrics carry too.
_METRIC_ATTRIBUTES = ("gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model", "server.address",
                      "server.port", "aurelis.cache.status")


@attrs.frozen
class OtelConfig:
    #: Add a child span per attempt (off: one span per request, fewer spans to store).
    attempt_spans: bool = True
    #: ``gen_ai.provider.name`` of every request (default: from each endpoint's host, ``openai`` for hosts that
    #: are none of the well-known providers').
    provider: str | None = attrs.field(default=None, validator=label)
    #: Record the GenAI client metrics ``gen_ai.client.operation.duration`` and ``gen_ai.client.token.usage``.
    metrics: bool = True


class OtelTracing:
    """The ``otel`` plugin."""

    name = "otel"
    Config = OtelConfig

    def __init__(
        self, config: OtelConfig | None, pipeline: Pipeline | None, *, tracer_provider: Any = None,
        meter_provider: Any = None,
    ) -> None:
        self.config = config or OtelConfig()
        # Without a provider these are the API's proxies: they follow a global provider set later on.
        self.tracer = trace.get_tracer("aurelis-otel", __version__, tracer_provider=tracer_provider)
        meter = metrics.get_meter("aurelis-otel", __version__, meter_provider=meter_provider)
        self.duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s", description="GenAI operation duration",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.token_usage = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}", description="Number of input and output tokens used",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
        )

    @hookimpl
    def aurelis_observe(self, ctx: RequestContext) -> None:
        # The pipeline's clocks are perf_counter (monotonic); spans want wall-clock nanoseconds.
        now_perf = time.perf_counter()
        offset = time.time_ns() - int(now_perf * 1e9)

        def wall(perf: float) -> int:
            return int(perf * 1e9) + offset

        request = ctx.original
        scheme, host, port, path, _ = url_parts(request.url)
        endpoint = ctx.endpoint
        if endpoint is not None:
            host, port, scheme = _server(endpoint.url)
        attributes: dict[str, Any] = {
            "aurelis.cache.status": ctx.cache_status,
            "aurelis.attempts": len(ctx.attempts),
            "aurelis.retry_count": max(0, len(ctx.attempts) - 1),
            "http.request.method": request.method,
            "url.path": path,
            "server.address": host,
            "server.port": port if port is not None else _DEFAULT_PORTS.get(scheme, 443),
        }
        if ctx.cache_tier is not None:
            attributes["aurelis.cache.tier"] = ctx.cache_tier
        if endpoint is not None:
            attributes["aurelis.endpoint"] = endpoint.name
        if ctx.response_status is not None:
            attributes["http.response.status_code"] = ctx.response_status
        model = ctx.model
        if model is not None:
            attributes["gen_ai.request.model"] = model
        name = "aurelis.request"
        operation = genai.operation(path)
        if operation is not None:
            operation_name, api_type = operation
            provider = self.config.provider or genai.provider(host)
            attributes["gen_ai.operation.name"] = operation_name
            attributes["gen_ai.provider.name"] = provider
            if api_type is not None and provider == "openai":
                attributes["openai.api.type"] = api_type
            name = f"{operation_name} {model}" if model is not None else operation_name
        span = self.tracer.start_span(name, kind=SpanKind.CLIENT, start_time=wall(ctx.started),
                                      attributes=attributes)
        error_type = _error_type(ctx.error, ctx.response_status)
        if operation is not None:
            recording, measuring = span.is_recording(), self.config.metrics
            answered: dict[str, Any] = {}
            if recording or measuring:
                body = _answer(ctx)
                if body is not None:
                    answered = genai.response_attributes(body)
                usage = _spent(ctx)
                if usage is not None:
                    # The core's reading (the request's dialect) wins: it also reads streams and Gemini's
                    # usageMetadata; the body's own parse adds what it alone knows (reasoning, cache writes).
                    answered.update(genai.usage_attributes(usage, operation_name))
            if recording:
                # One call: the SDK takes a lock and checks each attribute per call (a few us an attribute).
                span.set_attributes({**genai.request_attributes(ctx.json), **answered})
            if measuring:
                self._measure(attributes, answered, error_type, now_perf - ctx.started)
        _set_outcome(span, ctx.error, error_type)
        if self.config.attempt_spans:
            parent = trace.set_span_in_context(span)
            for attempt in ctx.attempts:
                self._attempt_span(ctx, attempt, parent, wall, now_perf)
        span.end(end_time=wall(now_perf))

    def _measure(
        self, attributes: dict[str, Any], answered: dict[str, Any], error_type: str | None, duration: float
    ) -> None:
        """Record the request's GenAI client metrics. ``aurelis.cache.status`` is among their attributes: a
        cache hit's microseconds and an upstream call's seconds are not one distribution."""
        labels = {key: attributes[key] for key in _METRIC_ATTRIBUTES if key in attributes}
        if "gen_ai.response.model" in answered:
            labels["gen_ai.response.model"] = answered["gen_ai.response.model"]
        if error_type is not None:
            labels["error.type"] = error_type
        self.duration.record(duration, labels)
        for kind in ("input", "output"):
            tokens = answered.get(f"gen_ai.usage.{kind}_tokens")
            if tokens is not None:
                self.token_usage.record(tokens, {**labels, "gen_ai.token.type": kind})

    def _attempt_span(
        self, ctx: RequestContext, attempt: Attempt, parent: Any, wall: Callable[[float], int], now_perf: float
    ) -> None:
        method = ctx.original.method
        if attempt.endpoint is not None:
            host, port, scheme = _server(attempt.endpoint.url)
        else:
            scheme, host, port, _, _ = url_parts(ctx.original.url)
        attributes: dict[str, Any] = {
            "http.request.method": method,
            "server.address": host,
            "server.port": port if port is not None else _DEFAULT_PORTS.get(scheme, 443),
            "aurelis.attempt.number": attempt.number,
        }
        if attempt.number > 1:
            attributes["http.request.resend_count"] = attempt.number - 1
        if attempt.endpoint is not None:
            attributes["aurelis.endpoint"] = attempt.endpoint.name
        if attempt.status_code is not None:
            attributes["http.response.status_code"] = attempt.status_code
        span = self.tracer.start_span(
            method, context=parent, kind=SpanKind.CLIENT, start_time=wall(attempt.started), attributes=attributes,
        )
        if attempt.first_byte is not None:
            span.add_event("first_byte", timestamp=wall(attempt.first_byte))
        _set_outcome(span, attempt.error, _error_type(attempt.error, attempt.status_code))
        span.end(end_time=wall(attempt.finished if attempt.finished is not None else now_perf))


def _server(url: str) -> tuple[str, int | None, str]:
    """``(host, port or None for the default, scheme)`` of an endpoint's URL."""
    parts = urlsplit(url)
    return parts.hostname or "", parts.port, parts.scheme


def _answer(ctx: RequestContext) -> bytes | None:
    """The raw body of a good answer the upstream gave and the pipeline read whole (to cache it), or ``None``:
    for a cache hit (its answer's figures are on the span of the request that fetched it, and it spent no
    tokens), a stream or an answer handed over as it came, and a content-encoded body (decoding it would cost
    what the caller's own read costs)."""
    attempt = ctx.attempts[-1] if ctx.attempts else None
    if ctx.entry is not None or attempt is None or attempt.body is None or attempt.headers is None:
        return None
    if not 200 <= (attempt.status_code or 0) < 300:
        return None
    for _, name, value in header_items(attempt.headers):
        if name == b"content-encoding" and value.strip().lower() not in (b"", b"identity"):
            return None
    return attempt.body


def _spent(ctx: RequestContext) -> Usage | None:
    """The tokens the upstream's good answer spent (a stream's too, read from its last events), as the request's
    dialect reads them; ``None`` for a cache hit (it spent none), a failed answer, or one without a usage block."""
    attempt = ctx.attempts[-1] if ctx.attempts else None
    if ctx.entry is not None or attempt is None or not attempt.ok:
        return None
    return attempt.usage


def _error_type(error: BaseException | None, status: int | None) -> str | None:
    """``error.type`` of an outcome: the exception's class, or a status >= 400; ``None`` for a success."""
    if error is not None:
        return type(error).__qualname__
    return str(status) if status is not None and status >= 400 else None


def _set_outcome(span: Any, error: BaseException | None, error_type: str | None) -> None:
    if error_type is not None:
        span.set_attribute("error.type", error_type)
        span.set_status(Status(StatusCode.ERROR, error_type if error is not None else None))
