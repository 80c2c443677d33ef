"""``prometheus``: request, cache, upstream, token, cost and health metrics in the Prometheus text format.

Every pipeline gets its own :class:`prometheus_client.CollectorRegistry` (never the process-wide default), so
two pipelines in one process never mix their numbers and tests can read a fresh registry. Expose it in one of
three ways:

- ``port = 9464`` in the ``[prometheus]`` table: prometheus-client's own HTTP server, in a daemon thread,
  bound to ``addr`` (``127.0.0.1`` unless you say otherwise); ``port = 0`` picks a free port
  (read it from :attr:`Prometheus.port`).
- ``pipeline.plugin("prometheus").wsgi_app()`` / ``.asgi_app()``: mount ``/metrics`` in your own web app.
- ``pipeline.plugin("prometheus").exposition()``: the text format as bytes.

No ``_created`` series: the registry holds one collector that reads this plugin's metrics and leaves their
``_created`` samples out, so prometheus-client's process-wide switch (``disable_created_metrics()``), which
would change the application's own metrics too, is left alone.

Several worker processes (gunicorn, ``uvicorn --workers``): set ``PROMETHEUS_MULTIPROC_DIR`` to an empty
directory before the workers start (prometheus-client's multiprocess mode). Each worker then writes its
counters, histograms and gauges to files there, and whatever the plugin serves (the HTTP server, the WSGI/ASGI
apps, :meth:`Prometheus.exposition`) sums every worker's, read from that directory at scrape time;
:func:`multiprocess_exposition` does the same from a process that has no pipeline (an exporter of its own).
The figures read at scrape time (circuit state, cache tiers, tuner, resource usage) are those of the process
that answers the scrape.

Cost: labels are resolved to metric children once per label combination and kept in a dict, so a request
pays a dict lookup and a few lock-protected increments, not prometheus-client's ``labels()`` call each time.
Values that change slowly or live elsewhere (endpoint health, coalesced requests, cache sizes, the tuner's
limits) are read only when Prometheus scrapes, by a collector, and cost nothing per request.

Cardinality: labels never carry a prompt, a key, a user or any free-form text. ``model`` and ``endpoint``
keep the first ``max_label_values`` distinct values seen and report the rest as ``"other"``; ``task_type`` is
one of ``chat``, ``completion``, ``embedding``, ``other`` (from the request path).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from typing import Any

import attrs

from aurelis_core.plugin import (
    FALLBACKS,
    PROBE,
    Attempt,
    CacheTier,
    Invalid,
    RequestContext,
    ShrinkableTier,
    as_tuple,
    component_logger,
    hookimpl,
    in_range,
    label,
    log_fault,
    non_negative,
    positive_int,
    probe_bind,
    worth_logging,
)

try:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.exposition import make_asgi_app, make_wsgi_app, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector
    from prometheus_client.process_collector import ProcessCollector
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("the prometheus plugin needs: pip install 'aurelis[prometheus]'") from exc

__all__ = ["Prometheus", "PrometheusConfig", "multiprocess_exposition", "task_type"]

logger = component_logger("prometheus")

#: Response-time buckets (seconds), from a memory hit (tens of microseconds) through a Redis hit (about a
#: millisecond) and a short completion (a second) to a long generation (minutes).
RESPONSE_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 120.0, 300.0,
)
#: Time-to-first-token buckets (seconds): a local model's tens of milliseconds to a loaded provider's minute.
FIRST_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Pipeline overhead buckets (seconds): a cache hit is tens of microseconds, a Redis hit about a millisecond.
OVERHEAD_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05)
#: Label value for anything past the ``max_label_values`` distinct values of a label.
OTHER = "other"
UNKNOWN = "unknown"
#: Seconds of recent samples the per-second rates in ``aurelis_resource_usage`` are computed over.
RATE_WINDOW = 60.0

_TASKS = ((b"/chat/completions", "chat"), (b"/completions", "completion"), (b"/embeddings", "embedding"))


def _probe_port(instance: PrometheusConfig, attribute: Any, value: int | None) -> str | None:
    if not value:  # not serving, or any free port
        return None
    return probe_bind(instance.addr, value)


def _buckets(instance: Any, attribute: Any, value: Sequence[float]) -> None:
    """Histogram bucket bounds: at least one, each a positive finite number, in increasing order."""
    expected = "increasing positive numbers of seconds, e.g. [0.001, 0.1, 1, 10, 60]"
    if not isinstance(value, tuple) or not value:
        raise Invalid(attribute.name, expected, value)
    for index, bound in enumerate(value):
        if not 0 < bound < float("inf") or (index and bound <= value[index - 1]):
            raise Invalid(f"{attribute.name}[{index}]", expected, bound)


@attrs.frozen
class PrometheusConfig:
    #: Serve ``/metrics`` on this port with prometheus-client's HTTP server (``None``: don't; 0: any free port).
    port: int | None = attrs.field(default=None, validator=in_range(0, 65535, integer=True),
                                   metadata={PROBE: _probe_port})
    #: Address the server binds to. Loopback by default: metrics are not for the whole network.
    addr: str = attrs.field(default="127.0.0.1", validator=label)
    #: Distinct values kept per ``model`` / ``endpoint`` label; later ones are reported as ``"other"``.
    max_label_values: int = attrs.field(default=20, validator=positive_int)
    #: Bucket bounds (seconds) of ``aurelis_response_time_seconds`` and
    #: ``aurelis_upstream_attempt_duration_seconds``: increasing, positive.
    response_time_buckets: tuple[float, ...] = attrs.field(
        default=RESPONSE_BUCKETS, converter=as_tuple, validator=_buckets
    )
    #: Bucket bounds (seconds) of ``aurelis_time_to_first_token_seconds``: increasing, positive.
    first_token_buckets: tuple[float, ...] = attrs.field(
        default=FIRST_TOKEN_BUCKETS, converter=as_tuple, validator=_buckets
    )
    #: Seconds a shared tier's entry and byte counts are reused between scrapes (counting them scans the tier:
    #: every key of a Redis prefix, a query over a SQLite file); 0: never count them.
    tier_stats_interval: float = attrs.field(default=60.0, validator=non_negative)


def task_type(request: Any) -> str:
    """``chat``, ``completion``, ``embedding`` or ``other``, from the request's path (query string ignored)."""
    path = request.url.raw_path.partition(b"?")[0]
    for suffix, name in _TASKS:
        if path.endswith(suffix):
            return name
    return "other"


def multiprocess_exposition(path: str | os.PathLike[str] | None = None) -> bytes:
    """Every worker's metrics, summed, in the Prometheus text format, read from the multiprocess directory
    ``path`` (default: ``$PROMETHEUS_MULTIPROC_DIR``). For a process of its own that serves the workers'
    metrics without running a pipeline."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=None if path is None else os.fspath(path))  # type: ignore[no-untyped-call]
    return bytes(generate_latest(registry))


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


class _WithoutCreated(Collector):
    """This plugin's own metrics, read without their ``_created`` samples (see the module docstring)."""

    def __init__(self, metrics: Iterable[Any]) -> None:
        self.metrics = tuple(metrics)

    def describe(self) -> Iterator[Any]:
        for metric in self.metrics:
            yield from metric.describe()

    def collect(self) -> Iterator[Any]:
        for metric in self.metrics:
            for family in metric.collect():
                family.samples = [s for s in family.samples if not s.name.endswith("_created")]
                yield family


class _RequestMetrics:
    """The metric children one request of a (model, task type, cache status, tier) updates, bound once."""

    __slots__ = ("cache", "cost_saved", "overhead", "requests", "response_time", "tokens_saved")

    def __init__(self, plugin: Prometheus, model: str, task: str, status: str, tier: str | None) -> None:
        hit = status == "hit"
        cached = "true" if hit else "false"
        self.response_time = plugin.response_time.labels(model, task, cached)
        self.requests = plugin.requests.labels(model, task, status)
        self.overhead = plugin.overhead.labels(cached)
        self.cache = (
            plugin.cache_hits.labels(tier or UNKNOWN, model) if hit else
            plugin.cache_misses.labels(model) if status == "miss" else None
        )
        self.tokens_saved = plugin.tokens_saved.labels(model) if hit else None
        self.cost_saved: Any = None  # bound on the first priced hit: no cost series without [pricing]


class _AnswerMetrics:
    """The metric children of the answers of one (model, endpoint): tokens, cost, time to first token."""

    __slots__ = ("cost", "first_token", "input", "output")

    def __init__(self, plugin: Prometheus, model: str, endpoint: str) -> None:
        self.input = plugin.tokens.labels(model, endpoint, "input")
        self.output = plugin.tokens.labels(model, endpoint, "output")
        self.cost: Any = None  # bound on the first priced answer: no cost series without [pricing]
        self.first_token = plugin.first_token.labels(model, endpoint)


class _EndpointMetrics:
    """The metric children of the attempts to one endpoint."""

    __slots__ = ("duration", "failovers", "in_flight", "name", "outcomes")

    def __init__(self, plugin: Prometheus, endpoint: str) -> None:
        self.name = endpoint
        self.in_flight = plugin.in_flight.labels(endpoint)
        self.duration = plugin.attempt_duration.labels(endpoint)
        self.failovers = plugin.failovers.labels(endpoint)
        self.outcomes: dict[str, Any] = {}


class Prometheus:
    """The ``prometheus`` plugin. List it after ``tuner`` so in-flight counts requests sent, not queued."""

    name = "prometheus"
    Config = PrometheusConfig

    def __init__(self, config: PrometheusConfig, pipeline: Any) -> None:
        self.config = config
        self.pipeline = pipeline
        #: The prices of ``[pricing]``: cost spent and saved are counted for the models it prices.
        self.pricing = pipeline.config.pricing
        self._priced = bool(self.pricing)
        self._models = _Bounded(config.max_label_values)
        self._endpoints = _Bounded(config.max_label_values)
        self._server: Any = None
        #: The port the HTTP server listens on (``None`` when not serving).
        self.port: int | None = None
        self.response_time = Histogram(
            "aurelis_response_time_seconds", "Time from the request entering the pipeline to its end "
            "(for a stream: its last byte).", ["model", "task_type", "cached"],
            buckets=config.response_time_buckets, registry=None,
        )
        self.first_token = Histogram(
            "aurelis_time_to_first_token_seconds", "For a streamed answer from upstream: time from the request "
            "entering the pipeline to the first chunk of the stream.", ["model", "endpoint"],
            buckets=config.first_token_buckets, registry=None,
        )
        self.requests = Counter(
            "aurelis_requests", "Requests handled; cache is hit, miss or bypass (not cacheable).",
            ["model", "task_type", "cache"], registry=None,
        )
        self.cache_hits = Counter(
            "aurelis_cache_hits", "Requests answered from a cache tier.", ["cache_level", "model"], registry=None
        )
        self.cache_misses = Counter(
            "aurelis_cache_misses", "Cacheable requests no tier could answer.", ["model"], registry=None
        )
        self.errors = Counter(
            "aurelis_errors", "Requests that failed: type is the exception's class, or http_<status> for an "
            "error response.", ["type", "model"], registry=None,
        )
        self.retries = Counter(
            "aurelis_retries", "Attempts after the first (retries and failovers).", ["model"], registry=None
        )
        self.failovers = Counter(
            "aurelis_failovers", "Retries sent to another endpoint than the attempt before; endpoint is the one "
            "left.", ["endpoint"], registry=None,
        )
        self.fallbacks = Counter(
            "aurelis_fallbacks", "Requests moved to the next model of their [fallbacks] chain after every endpoint "
            "of a model failed; one per hop.", ["from_model", "to_model"], registry=None,
        )
        self.tokens = Counter(
            "aurelis_tokens", "Tokens the upstream answers spent (their usage block), by type: input or output.",
            ["model", "endpoint", "type"], registry=None,
        )
        self.cost = Counter(
            "aurelis_cost_usd", "USD the upstream answers cost at the [pricing] prices (priced models only).",
            ["model", "endpoint"], registry=None,
        )
        self.tokens_saved = Counter(
            "aurelis_tokens_saved", "Tokens (usage.total_tokens) of the answers served from cache.", ["model"],
            registry=None,
        )
        self.cost_saved = Counter(
            "aurelis_cost_saved_usd", "USD the cache hits saved at the [pricing] prices (priced models only).",
            ["model"], registry=None,
        )
        self.overhead = Histogram(
            "aurelis_pipeline_overhead_seconds", "Time in the pipeline outside upstream attempts: cache "
            "lookups, admission waits, retry back-off, plugin work.", ["cached"], buckets=OVERHEAD_BUCKETS,
            registry=None,
        )
        self.attempts = Counter(
            "aurelis_upstream_attempts", "Attempts sent upstream, by outcome: ok, http_<status>, or the "
            "exception's class.", ["endpoint", "outcome"], registry=None,
        )
        self.attempt_duration = Histogram(
            "aurelis_upstream_attempt_duration_seconds", "Time of each attempt sent upstream (retries and "
            "failovers included), from sending it to the end of its answer.", ["endpoint"],
            buckets=config.response_time_buckets, registry=None,
        )
        self.in_flight = Gauge(
            "aurelis_upstream_in_flight", "Attempts admitted and not yet over.", ["endpoint"], registry=None,
            multiprocess_mode="livesum",
        )
        own = (
            self.response_time, self.first_token, self.requests, self.cache_hits, self.cache_misses, self.errors,
            self.retries, self.failovers, self.fallbacks, self.tokens, self.cost, self.tokens_saved, self.cost_saved,
            self.overhead, self.attempts, self.attempt_duration, self.in_flight,
        )
        #: What the plugin serves. In multiprocess mode the values of ``own`` are in the directory's files,
        #: every worker's, and are read from there.
        self.registry = CollectorRegistry(auto_describe=True)
        #: Whether prometheus-client writes values to ``PROMETHEUS_MULTIPROC_DIR`` (it decides once, when it is
        #: imported, from the environment then): only then is there a directory of every worker's values to read.
        self.multiprocess = values.ValueClass is not values.MutexValue
        if self.multiprocess:
            MultiProcessCollector(self.registry)  # type: ignore[no-untyped-call]
        else:
            self.registry.register(_WithoutCreated(own))
            ProcessCollector(registry=self.registry)
        self.registry.register(_ScrapeTimeCollector(pipeline, self._endpoints, config.tier_stats_interval))
        # Label values -> the metric children they update; see the module docstring.
        self._children: dict[tuple[str, str, str, str | None], _RequestMetrics] = {}
        self._answers: dict[tuple[str, str], _AnswerMetrics] = {}
        self._endpoint_children: dict[str, _EndpointMetrics] = {}

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

    def _request_metrics(self, key: tuple[str, str, str, str | None]) -> _RequestMetrics:
        children = self._children[key] = _RequestMetrics(self, *key)
        return children

    def _answer_metrics(self, model: str, endpoint: str) -> _AnswerMetrics:
        key = (model, endpoint)
        children = self._answers.get(key)
        if children is None:
            children = self._answers[key] = _AnswerMetrics(self, model, endpoint)
        return children

    def _endpoint_metrics(self, ctx: RequestContext, attempt: Attempt) -> _EndpointMetrics:
        endpoint = attempt.endpoint
        name = self._endpoints(endpoint.name if endpoint is not None else ctx.request.url.host)
        children = self._endpoint_children.get(name)
        if children is None:
            children = self._endpoint_children[name] = _EndpointMetrics(self, name)
        return children

    @hookimpl
    def aurelis_observe(self, ctx: RequestContext) -> None:
        elapsed = time.perf_counter() - ctx.started
        model_name = ctx.model
        model = self._models(model_name)
        status = ctx.cache_status
        key = (model, task_type(ctx.original), status, ctx.cache_tier)
        children = self._children.get(key) or self._request_metrics(key)
        children.response_time.observe(elapsed)
        children.requests.inc()
        attempts = ctx.attempts
        upstream = 0.0
        for attempt in attempts:
            duration = attempt.duration
            if duration is not None:
                upstream += duration
        children.overhead.observe(max(0.0, elapsed - upstream))
        if attempts:
            self._observe_attempts(ctx, model, model_name, attempts)
        if children.cache is not None:  # a hit or a miss
            children.cache.inc()
            entry = ctx.entry
            saved = children.tokens_saved
            if entry is not None and saved is not None and (usage := entry.usage_in(ctx.dialect)) is not None:
                saved.inc(usage.total)
                if self._priced and (price := self.pricing.price(model_name)) is not None:
                    if children.cost_saved is None:
                        children.cost_saved = self.cost_saved.labels(model)
                    children.cost_saved.inc(price.cost(usage))
        error = ctx.error
        if error is not None:
            self.errors.labels(type(error).__name__, model).inc()
        elif ctx.response_status is not None and ctx.response_status >= 400:
            self.errors.labels(f"http_{ctx.response_status}", model).inc()

    def _observe_attempts(self, ctx: RequestContext, model: str, model_name: str | None,
                          attempts: list[Attempt]) -> None:
        """What the upstream attempts of a request spent: tokens, cost, time to first token, failovers."""
        if len(attempts) > 1:
            self.retries.labels(model).inc(len(attempts) - 1)
            hops = FALLBACKS.get(ctx)
            if hops:
                for before, after in hops:
                    self.fallbacks.labels(self._models(before), self._models(after)).inc()
        previous: Attempt | None = None
        for attempt in attempts:
            if previous is not None and attempt.endpoint is not previous.endpoint:
                self._endpoint_metrics(ctx, previous).failovers.inc()
            previous = attempt
            usage = attempt.usage
            if usage is None and attempt.first_chunk is None:
                continue
            endpoint = self._endpoint_metrics(ctx, attempt).name
            answer = self._answer_metrics(model, endpoint)
            if attempt.first_chunk is not None:
                answer.first_token.observe(attempt.first_chunk - ctx.started)
            if usage is not None:
                answer.input.inc(usage.input)
                answer.output.inc(usage.output)
                if self._priced and (price := self.pricing.price(model_name)) is not None:
                    if answer.cost is None:
                        answer.cost = self.cost.labels(model, endpoint)
                    answer.cost.inc(price.cost(usage))

    @hookimpl
    def aurelis_admit(self, ctx: RequestContext, attempt: Attempt) -> None:
        # Remember which attempt was counted: attempt_end also runs for attempts an earlier admit refused.
        ctx.state[self.name] = attempt
        self._endpoint_metrics(ctx, attempt).in_flight.inc()

    @hookimpl
    def aurelis_attempt_end(self, ctx: RequestContext, attempt: Attempt) -> None:
        if ctx.state.get(self.name) is not attempt:
            return  # never admitted (an earlier admit stage refused it): it was not sent
        del ctx.state[self.name]
        children = self._endpoint_metrics(ctx, attempt)
        children.in_flight.dec()
        duration = attempt.duration
        if duration is not None:
            children.duration.observe(duration)
        error = attempt.error
        if error is not None:
            outcome = type(error).__name__
        elif attempt.status_code is not None and attempt.status_code >= 400:
            outcome = f"http_{attempt.status_code}"
        else:
            outcome = "ok"
        counter = children.outcomes.get(outcome)
        if counter is None:
            counter = children.outcomes[outcome] = self.attempts.labels(children.name, outcome)
        counter.inc()


class _ScrapeTimeCollector(Collector):
    """Metrics read at scrape time from the pipeline's health, stats and plugins: free per request."""

    def __init__(self, pipeline: Any, endpoints: _Bounded, tier_stats_interval: float) -> None:
        self.pipeline = pipeline
        self.endpoints = endpoints
        self.tier_stats_interval = tier_stats_interval
        #: tier name -> (time.monotonic() when counted, its stats()): a shared tier is counted once an interval.
        self._tier_stats: dict[str, tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()  # two scrapes at once count a tier once

    def describe(self) -> list[Any]:
        # Nothing up front: registering must not collect (the pipeline is still being built), and a collector
        # that describes nothing is asked on every scrape, filtered ones (``?name[]=``) included.
        return []

    def collect(self) -> Iterator[Any]:
        pipeline = self.pipeline
        stats = pipeline.stats
        sizes = list(self._cache_sizes(pipeline))  # first: a tier that fails to count shows in tier_errors now
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
        yield from sizes
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

    def _cache_sizes(self, pipeline: Any) -> Iterator[GaugeMetricFamily]:
        """Entries and bytes of every cache tier that can say, found by capability (see ``_protocols``): an
        in-memory tier (a ``ShrinkableTier``) knows its bytes and budget, and its entries if it is ``Sized``; a
        shared tier (a ``CacheTier``) counts them in its ``stats()``, at most once per ``tier_stats_interval``."""
        entries = GaugeMetricFamily("aurelis_cache_entries", "Entries a cache tier holds.", labels=["tier"])
        size = GaugeMetricFamily(
            "aurelis_cache_size_bytes", "Bytes of the entries a cache tier holds.", labels=["tier"]
        )
        budget = GaugeMetricFamily(
            "aurelis_cache_budget_bytes", "Bytes an in-memory cache tier may hold now.", labels=["tier"]
        )
        for name, tier in zip(pipeline.tiers, pipeline.cache_tiers(), strict=True):
            if isinstance(tier, ShrinkableTier):
                size.add_metric([name], float(tier.currsize))
                budget.add_metric([name], float(tier.budget))
                if isinstance(tier, Sized):  # not part of the protocol: a tier may not count its entries
                    entries.add_metric([name], float(len(tier)))
            elif isinstance(tier, CacheTier) and self.tier_stats_interval > 0:
                figures = self._shared_tier_stats(name, tier)
                if isinstance(figures.get("entries"), int) and isinstance(figures.get("bytes"), int):
                    entries.add_metric([name], float(figures["entries"]))
                    size.add_metric([name], float(figures["bytes"]))
        yield entries
        yield size
        yield budget

    def _shared_tier_stats(self, name: str, tier: CacheTier) -> dict[str, Any]:
        with self._lock:
            now = time.monotonic()
            known = self._tier_stats.get(name)
            if known is not None and now - known[0] < self.tier_stats_interval:
                return known[1]
            try:
                figures = tier.stats()
            except Exception as exc:  # a tier that cannot count now (Redis down) leaves its figures out
                count = self.pipeline.stats.tier_error(name, "stats")
                if worth_logging(count):
                    log_fault(logger, logging.WARNING,
                              "cache tier %r could not count its entries for the metrics (%d so far)", name, count,
                              error=exc)
                figures = {}
            self._tier_stats[name] = (now, figures)
            return figures

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
            answer = sample.usage
            if answer is not None and sample.cache == "hit":  # a fetched answer's usage is spent, not saved
                tokens += answer.total
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
