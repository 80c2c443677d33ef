"""``prometheus``: request, cache, upstream and health metrics in the Prometheus text format.

Every pipeline gets its own :class:`prometheus_client.CollectorRegistry` (never the process-wide default), so
two pipelines in one process never mix their numbers and tests can read a fresh registry. Expose it in one of
three ways:

- ``port = 9464`` in the ``[prometheus]`` table: prometheus-client's own HTTP server, in a daemon thread,
  bound to ``addr`` (``127.0.0.1`` unless you say otherwise); ``port = 0`` picks a free port
  (read it from :attr:`Prometheus.port`).
- ``pipeline.plugin("prometheus").wsgi_app()`` / ``.asgi_app()``: mount ``/metrics`` in your own web app.
- ``pipeline.plugin("prometheus").exposition()``: the text format as bytes.

Cost: labels are resolved to metric children once per label combination and kept in a dict, so a request
pays a dict lookup and a few lock-protected increments, not prometheus-client's ``labels()`` call each time.
Values that change slowly or live elsewhere (endpoint health, coalesced requests, cache size, the tuner's
limits) are read only when Prometheus scrapes, by a collector, and cost nothing per request.

Cardinality: labels never carry a prompt, a key, a user or any free-form text. ``model`` and ``endpoint``
keep the first ``max_label_values`` distinct values seen and report the rest as ``"other"``; ``task_type`` is
one of ``chat``, ``completion``, ``embedding``, ``other`` (from the request path).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Mapping, Sized
from typing import Any

import attrs

from aurelis_core.plugin import (
    PROBE,
    Attempt,
    RequestContext,
    ShrinkableTier,
    buffered_body,
    each,
    hookimpl,
    in_range,
    label,
    non_negative,
    positive_int,
    probe_bind,
)

try:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.exposition import make_asgi_app, make_wsgi_app, start_http_server
    from prometheus_client.process_collector import ProcessCollector
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("the prometheus plugin needs: pip install 'aurelis[prometheus]'") from exc

__all__ = ["Prometheus", "PrometheusConfig", "task_type"]

#: The response-time buckets (seconds): model calls take from ~100 ms to tens of seconds.
RESPONSE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Pipeline overhead buckets (seconds): a cache hit is tens of microseconds, a Redis hit about a millisecond.
OVERHEAD_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05)
#: Label value for anything past the ``max_label_values`` distinct values of a label.
OTHER = "other"
UNKNOWN = "unknown"
#: Seconds of recent samples the per-second rates in ``aurelis_resource_usage`` are computed over.
RATE_WINDOW = 60.0

_MODEL_FIELD = re.compile(rb'"model"\s*:\s*"([^"\\]{1,200})"')
_TASKS = ((b"/chat/completions", "chat"), (b"/completions", "completion"), (b"/embeddings", "embedding"))


def _probe_port(instance: PrometheusConfig, attribute: Any, value: int | None) -> str | None:
    if not value:  # not serving, or any free port
        return None
    return probe_bind(instance.addr, value)


@attrs.frozen
class PrometheusConfig:
    #: Serve ``/metrics`` on this port with prometheus-client's HTTP server (``None``: don't; 0: any free port).
    port: int | None = attrs.field(default=None, validator=in_range(0, 65535, integer=True),
                                   metadata={PROBE: _probe_port})
    #: Address the server binds to. Loopback by default: metrics are not for the whole network.
    addr: str = attrs.field(default="127.0.0.1", validator=label)
    #: Distinct values kept per ``model`` / ``endpoint`` label; later ones are reported as ``"other"``.
    max_label_values: int = attrs.field(default=20, validator=positive_int)
    #: USD per million tokens, by model: turns the tokens cache hits saved into ``aurelis_cost_saved_usd_total``.
    prices: Mapping[str, float] = attrs.field(factory=dict, validator=each(non_negative))


def task_type(request: Any) -> str:
    """``chat``, ``completion``, ``embedding`` or ``other``, from the request's path (query string ignored)."""
    path = request.url.raw_path.partition(b"?")[0]
    for suffix, name in _TASKS:
        if path.endswith(suffix):
            return name
    return "other"


class _Bounded:
    """Maps label values to themselves for the first ``limit`` distinct ones, to ``"other"`` after."""

    __slots__ = ("limit", "seen")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen: dict[str, str] = {}

    def __call__(self, value: str | None) -> str:
        if value is None:
            return UNKNOWN
        known = self.seen.get(value)
        if known is not None:
            return known
        if len(self.seen) >= self.limit:
            return OTHER
        self.seen[value] = value
        return value


class Prometheus:
    """The ``prometheus`` plugin. List it after ``tuner`` so in-flight counts requests sent, not queued."""

    name = "prometheus"
    Config = PrometheusConfig

    def __init__(self, config: PrometheusConfig, pipeline: Any) -> None:
        self.config = config
        self.pipeline = pipeline
        self.registry = CollectorRegistry(auto_describe=True)
        self._models = _Bounded(config.max_label_values)
        self._endpoints = _Bounded(config.max_label_values)
        self._server: Any = None
        #: The port the HTTP server listens on (``None`` when not serving).
        self.port: int | None = None
        r = self.registry
        self.response_time = Histogram(
            "aurelis_response_time_seconds", "Time from the request entering the pipeline to its end "
            "(for a stream: its last byte).", ["model", "task_type", "cached"], buckets=RESPONSE_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "aurelis_requests", "Requests handled; cache is hit, miss or bypass (not cacheable).",
            ["model", "task_type", "cache"], registry=r,
        )
        self.cache_hits = Counter(
            "aurelis_cache_hits", "Requests answered from a cache tier.", ["cache_level", "model"], registry=r
        )
        self.cache_misses = Counter(
            "aurelis_cache_misses", "Cacheable requests no tier could answer.", ["model"], registry=r
        )
        self.errors = Counter(
            "aurelis_errors", "Requests that failed: type is the exception's class, or http_<status> for an "
            "error response.", ["type", "model"], registry=r,
        )
        self.retries = Counter(
            "aurelis_retries", "Attempts after the first (retries and failovers).", ["model"], registry=r
        )
        self.tokens_saved = Counter(
            "aurelis_tokens_saved", "Tokens (usage.total_tokens) of the answers served from cache.", ["model"],
            registry=r,
        )
        self.cost_saved = Counter(
            "aurelis_cost_saved_usd", "USD the cache hits saved, for models with a configured price.", ["model"],
            registry=r,
        )
        self.overhead = Histogram(
            "aurelis_pipeline_overhead_seconds", "Time in the pipeline outside upstream attempts: cache "
            "lookups, admission waits, retry back-off, plugin work.", ["cached"], buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.attempts = Counter(
            "aurelis_upstream_attempts", "Attempts sent upstream, by outcome: ok, http_<status>, or the "
            "exception's class.", ["endpoint", "outcome"], registry=r,
        )
        self.in_flight = Gauge(
            "aurelis_upstream_in_flight", "Attempts admitted and not yet over.", ["endpoint"], registry=r
        )
        r.register(_ScrapeTimeCollector(pipeline, self._endpoints))
        ProcessCollector(registry=r)
        # (model, task_type, cache status, tier) -> the children one request updates; see the module docstring.
        self._children: dict[tuple[str, str, str, str | None], tuple[Any, ...]] = {}
        self._prices = config.prices

    # --- exposition ----------------------------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return bytes(generate_latest(self.registry))

    def wsgi_app(self) -> Callable[..., Any]:
        """A WSGI app serving this pipeline's metrics (mount it at ``/metrics``)."""
        return make_wsgi_app(self.registry)

    def asgi_app(self) -> Callable[..., Any]:
        """An ASGI app serving this pipeline's metrics (mount it at ``/metrics``)."""
        return make_asgi_app(self.registry)

    @hookimpl
    def aurelis_start(self, pipeline: Any) -> None:
        if self.config.port is not None and self._server is None:
            self._server, _thread = start_http_server(self.config.port, self.config.addr, self.registry)
            self.port = self._server.server_port

    @hookimpl
    def aurelis_close(self, pipeline: Any) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # --- per request ---------------------------------------------------------------------------------------

    def _model(self, ctx: RequestContext) -> str:
        model = ctx.model
        if model is None and ctx.json is None:
            # No normalize stage parsed the body: find the field in the raw bytes (a C-speed scan), rather
            # than parse a JSON body per request just for a label.
            content = buffered_body(ctx.original)
            if content:
                match = _MODEL_FIELD.search(content)
                if match is not None:
                    model = match.group(1).decode("utf-8", "replace")
        return self._models(model)

    def _children_for(self, key: tuple[str, str, str, str | None]) -> tuple[Any, ...]:
        model, task, status, tier = key
        cached = "true" if status == "hit" else "false"
        hit = status == "hit"
        price = self._prices.get(model)
        children = (
            self.response_time.labels(model, task, cached),
            self.requests.labels(model, task, status),
            self.overhead.labels(cached),
            self.cache_hits.labels(tier or UNKNOWN, model) if hit else
            self.cache_misses.labels(model) if status == "miss" else None,
            self.tokens_saved.labels(model) if hit else None,
            self.cost_saved.labels(model) if hit and price is not None else None,
            (price or 0.0) / 1e6,
        )
        self._children[key] = children
        return children

    @hookimpl
    def aurelis_observe(self, ctx: RequestContext) -> None:
        elapsed = time.perf_counter() - ctx.started
        model = self._model(ctx)
        status = ctx.cache_status
        key = (model, task_type(ctx.original), status, ctx.cache_tier)
        children = self._children.get(key) or self._children_for(key)
        children[0].observe(elapsed)
        children[1].inc()
        upstream = 0.0
        attempts = ctx.attempts
        for attempt in attempts:
            duration = attempt.duration
            if duration is not None:
                upstream += duration
        children[2].observe(max(0.0, elapsed - upstream))
        if len(attempts) > 1:
            self.retries.labels(model).inc(len(attempts) - 1)
        if children[3] is not None:  # a hit or a miss
            children[3].inc()
            entry = ctx.entry
            if entry is not None and (tokens := entry.tokens):
                children[4].inc(tokens)
                if children[5] is not None:
                    children[5].inc(tokens * children[6])
        error = ctx.error
        if error is not None:
            self.errors.labels(type(error).__name__, model).inc()
        elif ctx.response_status is not None and ctx.response_status >= 400:
            self.errors.labels(f"http_{ctx.response_status}", model).inc()

    def _endpoint(self, ctx: RequestContext, attempt: Attempt) -> str:
        endpoint = attempt.endpoint
        return self._endpoints(endpoint.name if endpoint is not None else ctx.request.url.host)

    @hookimpl
    def aurelis_admit(self, ctx: RequestContext, attempt: Attempt) -> None:
        # Remember which attempt was counted: attempt_end also runs for attempts an earlier admit refused.
        ctx.state[self.name] = attempt
        self.in_flight.labels(self._endpoint(ctx, attempt)).inc()

    @hookimpl
    def aurelis_attempt_end(self, ctx: RequestContext, attempt: Attempt) -> None:
        label = self._endpoint(ctx, attempt)
        if ctx.state.get(self.name) is attempt:
            del ctx.state[self.name]
            self.in_flight.labels(label).dec()
        else:
            return  # never admitted (an earlier admit stage refused it): it was not sent
        error = attempt.error
        if error is not None:
            outcome = type(error).__name__
        elif attempt.status_code is not None and attempt.status_code >= 400:
            outcome = f"http_{attempt.status_code}"
        else:
            outcome = "ok"
        self.attempts.labels(label, outcome).inc()


class _ScrapeTimeCollector(Collector):
    """Metrics read at scrape time from the pipeline's health, stats and plugins: free per request."""

    def __init__(self, pipeline: Any, endpoints: _Bounded) -> None:
        self.pipeline = pipeline
        self.endpoints = endpoints

    def collect(self) -> Iterator[Any]:
        pipeline = self.pipeline
        stats = pipeline.stats
        circuit = GaugeMetricFamily(
            "aurelis_endpoint_circuit_state", "1 for the endpoint's current circuit state (closed, open, "
            "half_open).", labels=["endpoint", "state"],
        )
        available = GaugeMetricFamily(
            "aurelis_endpoint_available", "1 if routers may pick the endpoint now.", labels=["endpoint"]
        )
        health = pipeline.health
        now = time.monotonic()
        for endpoint in pipeline.endpoints:
            status = health.status.get(endpoint.name)
            label = self.endpoints(endpoint.name)
            state = status.circuit if status is not None else "closed"
            for name in ("closed", "open", "half_open"):
                circuit.add_metric([label, name], 1.0 if name == state else 0.0)
            available.add_metric([label], 1.0 if health.available(endpoint, now) else 0.0)
        yield circuit
        yield available
        coalesced = CounterMetricFamily(
            "aurelis_coalesced_requests", "Requests that waited for an identical in-flight request's answer."
        )
        coalesced.add_metric([], float(stats.counters.get("coalesced", 0)))
        yield coalesced
        tier_errors = CounterMetricFamily(
            "aurelis_cache_tier_errors", "Cache tier operations that failed (treated as misses / dropped "
            "writes).", labels=["tier", "operation"],
        )
        for key, count in list(stats.tier_errors.items()):
            tier, _, operation = key.rpartition(".")
            tier_errors.add_metric([tier, operation], float(count))
        yield tier_errors
        yield self._resource_usage(pipeline, stats)
        try:
            tuner = pipeline.plugin("tuner")
        except KeyError:
            tuner = None
        if tuner is not None:
            limit = GaugeMetricFamily(
                "aurelis_concurrency_limit", "The tuner's concurrency limit.", labels=["endpoint"]
            )
            queued = GaugeMetricFamily(
                "aurelis_concurrency_queued", "Attempts waiting for a slot.", labels=["endpoint"]
            )
            for key, snapshot in tuner.snapshot().items():
                label = self.endpoints(key)
                limit.add_metric([label], float(snapshot["limit"]))
                queued.add_metric([label], float(snapshot["queued"]))
            yield limit
            yield queued

    def _resource_usage(self, pipeline: Any, stats: Any) -> GaugeMetricFamily:
        usage = GaugeMetricFamily(
            "aurelis_resource_usage", "Resource and throughput figures, by metric.", labels=["metric"]
        )
        since = time.time() - RATE_WINDOW
        recent = tokens = 0
        for sample in reversed(list(stats.samples)):
            if sample.at < since:
                break
            recent += 1
            tokens += sample.tokens or 0
        usage.add_metric(["requests_per_second"], recent / RATE_WINDOW)
        usage.add_metric(["saved_tokens_per_second"], tokens / RATE_WINDOW)
        usage.add_metric(["hit_rate"], stats.hit_rate)
        # The first tier that holds its entries in this process's memory (a ShrinkableTier: it knows its bytes
        # and budget), whatever plugin provides it; found by what it can do, not by a plugin's name.
        memory = next((tier for tier in pipeline.cache_tiers() if isinstance(tier, ShrinkableTier)), None)
        if memory is not None:
            usage.add_metric(["memory_cache_bytes"], float(memory.currsize))
            if isinstance(memory, Sized):  # not part of the protocol: a tier may not count its entries
                usage.add_metric(["memory_cache_entries"], float(len(memory)))
            usage.add_metric(["memory_cache_budget_bytes"], float(memory.budget))
        return usage
