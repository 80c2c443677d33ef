"""``otel``: one span per request, one child span per attempt, written when the request is over.

The spans are built in the ``observe`` hook from what the pipeline recorded (the request's start, each
attempt's start, first byte and end), with explicit timestamps, so tracing adds no hook to the hot path and
costs nothing until the request is done. The request span's parent is the span current when the request
ends (for a buffered request: the caller's own span; for a stream: wherever the stream was finished).

Attributes (never any prompt or answer text, never a credential):

request span ``aurelis.request`` (kind CLIENT)
    ``aurelis.cache.status`` (hit/miss/bypass), ``aurelis.cache.tier``, ``aurelis.attempts``,
    ``aurelis.retry_count``, ``aurelis.endpoint``, ``http.request.method``, ``url.path``, ``server.address``,
    ``http.response.status_code``, ``gen_ai.request.model``, ``error.type``
attempt span ``aurelis.attempt`` (one per try; none for a cache hit)
    ``aurelis.attempt.number``, ``aurelis.endpoint``, ``http.response.status_code``, ``error.type``, and an
    event ``first_byte`` when the response headers arrived.

A status >= 400 or an exception sets the span's status to ERROR. Spans go to the global tracer provider
(``opentelemetry.trace.set_tracer_provider``) unless one is passed to the constructor; export with a
``BatchSpanProcessor``: ``observe`` must not do I/O, and the batch processor queues.
"""

from __future__ import annotations

import time
from typing import Any

import attrs
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from aurelis_core.plugin import Attempt, Pipeline, RequestContext, hookimpl

__all__ = ["OtelConfig", "OtelTracing"]

__version__ = "0.1.0"


@attrs.frozen
class OtelConfig:
    #: Add a child span per attempt (off: one span per request, fewer spans to store).
    attempt_spans: bool = True


class OtelTracing:
    """The ``otel`` plugin."""

    name = "otel"
    Config = OtelConfig

    def __init__(
        self, config: OtelConfig | None, pipeline: Pipeline | None, *, tracer_provider: Any = None
    ) -> None:
        self.config = config or OtelConfig()
        # Without a provider this is the API's proxy tracer: it follows a global provider set later on.
        self.tracer = trace.get_tracer("aurelis-otel", __version__, tracer_provider=tracer_provider)

    @hookimpl
    def aurelis_observe(self, ctx: RequestContext) -> None:
        # The pipeline's clocks are perf_counter (monotonic); spans want wall-clock nanoseconds.
        now_perf = time.perf_counter()
        offset = time.time_ns() - int(now_perf * 1e9)

        def wall(perf: float) -> int:
            return int(perf * 1e9) + offset

        request = ctx.original
        attributes: dict[str, Any] = {
            "aurelis.cache.status": ctx.cache_status,
            "aurelis.attempts": len(ctx.attempts),
            "aurelis.retry_count": max(0, len(ctx.attempts) - 1),
            "http.request.method": request.method,
            "url.path": request.url.path,
            "server.address": request.url.host,
        }
        if ctx.cache_tier is not None:
            attributes["aurelis.cache.tier"] = ctx.cache_tier
        if ctx.endpoint is not None:
            attributes["aurelis.endpoint"] = ctx.endpoint.name
        if ctx.response_status is not None:
            attributes["http.response.status_code"] = ctx.response_status
        if (model := ctx.model) is not None:
            attributes["gen_ai.request.model"] = model
        span = self.tracer.start_span(
            "aurelis.request", kind=SpanKind.CLIENT, start_time=wall(ctx.started), attributes=attributes
        )
        _set_outcome(span, ctx.error, ctx.response_status)
        if self.config.attempt_spans:
            parent = trace.set_span_in_context(span)
            for attempt in ctx.attempts:
                self._attempt_span(attempt, parent, wall, now_perf)
        span.end(end_time=wall(now_perf))

    def _attempt_span(self, attempt: Attempt, parent: Any, wall: Any, now_perf: float) -> None:
        attributes: dict[str, Any] = {"aurelis.attempt.number": attempt.number}
        if attempt.endpoint is not None:
            attributes["aurelis.endpoint"] = attempt.endpoint.name
        if attempt.status_code is not None:
            attributes["http.response.status_code"] = attempt.status_code
        span = self.tracer.start_span(
            "aurelis.attempt", context=parent, kind=SpanKind.CLIENT, start_time=wall(attempt.started),
            attributes=attributes,
        )
        if attempt.first_byte is not None:
            span.add_event("first_byte", timestamp=wall(attempt.first_byte))
        _set_outcome(span, attempt.error, attempt.status_code)
        span.end(end_time=wall(attempt.finished if attempt.finished is not None else now_perf))


def _set_outcome(span: Any, error: BaseException | None, status: int | None) -> None:
    if error is not None:
        span.set_attribute("error.type", type(error).__qualname__)
        span.set_status(Status(StatusCode.ERROR, type(error).__qualname__))
    elif status is not None and status >= 400:
        span.set_attribute("error.type", str(status))
        span.set_status(Status(StatusCode.ERROR))
