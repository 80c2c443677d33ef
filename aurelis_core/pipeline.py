"""The pipeline: the whole request path, written once for sync and async clients.

:meth:`Pipeline.flow` is a generator that runs the stages of :mod:`aurelis_core.hookspecs` for one request and
does no I/O of its own. Wherever a stage needs I/O (a send, a body read, a sleep, an ``async def`` plugin), it
*yields* an awaitable and is resumed with its result. Two thin drivers (:mod:`aurelis_core._drivers`) run it:
the async one awaits what is yielded, the sync one gets plain values from plugins that serve sync clients (and
bridges the rare awaitable to a private loop thread). So both kinds of client share one implementation, and
the sync path pays nothing for the async one: a sync send never yields at all.

A request with an answer leaves through one method, :meth:`Pipeline._answer`, whatever the answer is made of
(a cache entry, a flight's answer, the upstream response): it builds or hands over the response, adds the cache
headers and extension, and registers the request's end (stats, observers), run once: at once when the body is
in hand, or when the caller's reading of the body ends. A request that fails before it has an answer ends in
:meth:`Pipeline.flow`'s ``except``.

Cost matters here: a cache hit is one dict lookup away, so every per-request step avoids allocations and
pluggy's call machinery (the stage lists hold the plain implementation functions).

The stage lists are one immutable snapshot (:class:`~aurelis_core._plugins.Stages`), replaced whole when a
plugin is (un)registered. A request reads it once, when it starts, into ``ctx._stages`` and locals: it runs all
its stages with the plugins of that moment, even while another thread changes them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from functools import partial
from inspect import isawaitable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import attrs

from ._coalesce import COALESCED, Flight, Flights, flight_stream, tail
from ._compat import build_response, extend_header_items, header_items, is_read
from ._controls import CONTROL_HEADER_PREFIX as CONTROL_HEADER_PREFIX
from ._controls import controls_of
from ._drivers import Flow, LoopBridge, drive_async, drive_sync
from ._fallback import CONTEXT_STATUSES, Fallbacks, error_body
from ._live_report import LiveReport
from ._logs import component_logger, log_fault
from ._model_routes import MODEL_HEADER, ModelRoutes
from ._models import (
    CACHE_HIT,
    CACHE_MISS,
    USAGE_TAIL,
    Attempt,
    CacheEntry,
    CacheInfo,
    Endpoint,
    RequestContext,
)
from ._plugins import (
    AurelisPluginManager,
    PluginSpec,
    Stages,
    blocked_plugins,
    build_stages,
    discover_plugins,
    instantiate,
    unknown_plugin,
)
from ._resend import resend_refusal
from ._rewrite import rewrite
from ._sse import chunk_stream, is_event_stream
from ._tenant import Tenant
from ._transports import instrument_client, observed_stream, wrap_transport
from .config import Config, ConfigError, choices_hint, config_from_table, load_config
from .health import EndpointHealth
from .stats import Stats, worth_logging

if TYPE_CHECKING:
    from .report import Report, Targets

__all__ = ["Flow", "Pipeline"]

logger = component_logger("pipeline")


def __getattr__(name: str) -> Any:
    # SINGLE_STAGES was a hand-kept copy of what hookspecs.STAGES now says (rule EXACTLY_ONE, and the role).
    if name == "SINGLE_STAGES":
        import warnings

        from .hookspecs import EXACTLY_ONE, STAGES

        warnings.warn(
            "aurelis_core.pipeline.SINGLE_STAGES is deprecated: read aurelis_core.hookspecs.STAGES "
            "(rows whose runs is EXACTLY_ONE; their role)",
            DeprecationWarning,
            stacklevel=2,
        )
        return {row.hook: row.role for row in STAGES if row.runs is EXACTLY_ONE}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: Response headers a cache entry does not keep: per-connection, per-client or per-call, not per-answer.
UNSTORED_HEADERS = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"transfer-encoding",
        b"set-cookie",
        b"proxy-authenticate",
        b"date",
        b"age",
        b"x-aurelis-cache",
        b"x-aurelis-cache-tier",
        b"x-aurelis-similarity",
    }
)
#: Rate-limit headers describe the upstream's budget at the time of the call; a replay spent none of it.
UNSTORED_PREFIXES = (b"x-ratelimit-",)


class Pipeline:
    """The configured stages for one or more wrapped clients.

    >>> pipeline = Pipeline({"plugins": ["normalize", "memory"]})
    >>> client = pipeline.instrument(httpx.Client())      # or aurelis_core.instrument(client, config)

    A pipeline owns its plugin instances (their caches, counters, connections) and its :class:`Stats`;
    nothing is global, so two pipelines in one process are independent. Close it (``close()``/``aclose()``,
    or close the client it was made for) to flush write-behind queues and release connections.
    """

    def __init__(
        self,
        config: Config | Mapping[str, Any] | str | Any | None = None,
        *,
        plugins: Sequence[object] = (),
    ) -> None:
        self.config: Config = _recording(load_config(config))
        self._noted_hosts: set[str] = set()
        self.endpoints: tuple[Endpoint, ...] = self.config.endpoints
        #: Its ring of samples is the live report's window by count (``[report] window_requests``).
        self.stats = Stats(max_samples=self.config.report.window_requests, spent_usage=bool(self.config.pricing))
        self._live = LiveReport(self.stats, self.config.report, self.config.plugins, self.config.pricing)
        #: Who is asking and what scopes an answer: the one definition every plugin scopes by.
        self.tenant = Tenant(self.config.tenant)
        #: Which endpoints serve which model, and the model on the wire (see ``_model_routes``).
        self._models = ModelRoutes(self.endpoints, self.config.fallbacks)
        #: Which endpoints routers may pick (breakers and rate limiters write it).
        self.health = EndpointHealth(self.endpoints, models=self._models)
        #: The ``[fallbacks]`` chains (``None`` without any: a failed attempt then costs no lookup).
        self._fallbacks = (
            Fallbacks(self.config.fallbacks, self._models, self.stats.counters) if self.config.fallbacks else None
        )
        #: name -> where the plugin came from, for every plugin this pipeline registered.
        self.plugin_origins: dict[str, str] = {}
        self.is_async: bool | None = None
        self._started = False
        self._closed = False
        #: Runs ``async def`` plugins for sync clients on a loop thread of this pipeline's own, started on
        #: first use; the sync drivers of its flows are handed it.
        self.bridge = LoopBridge()
        #: Upstream calls in flight that identical requests join (single-flight, see ``_coalesce``).
        self._flights = Flights()
        self._building = True
        #: Every stage's implementations: one immutable snapshot, replaced whole (see ``_rebuild``).
        self._stages: Stages
        self.pm = AurelisPluginManager(self._rebuild)
        self._load_plugins(list(plugins))
        self._building = False
        self._rebuild()

    # --- set-up ----------------------------------------------------------------------------------------------

    def _load_plugins(self, extra: list[object]) -> None:
        config = self.config
        where = config.source
        known = discover_plugins()
        # Every table is checked, and every error reported together (ConfigError.errors), not the first only.
        errors: list[str] = []
        for table_name in config.tables:
            if table_name not in known:
                errors.append(
                    f"{where}: unknown top-level key {table_name!r}: not a plugin or a config key"
                    f"{choices_hint(table_name, [*known, 'plugins', 'endpoints'])}"
                )
        blocked = blocked_plugins()
        for name in blocked:
            self.pm.set_blocked(name)
        for name in config.plugins:
            spec = known.get(name)
            if spec is None:
                errors.extend(unknown_plugin(name, known, f"{where}: plugins").errors)
                continue
            if name in blocked:
                logger.warning("plugin %r is disabled by AURELIS_DISABLE_PLUGINS", name)
                continue
            try:
                self._register_spec(spec, config.tables.get(name, {}), where)
            except ConfigError as exc:
                errors.extend(exc.errors)
        # Tables of known plugins that are not enabled are still checked, so a typo fails now, not the day the
        # plugin is switched on.
        for name, options in config.tables.items():
            if name not in config.plugins and name not in blocked and name in known:
                try:
                    config_cls = getattr(known[name].load(), "Config", None)
                    if config_cls is not None:
                        config_from_table(config_cls, options, f"{where}: [{name}]")
                except ConfigError as exc:
                    errors.extend(exc.errors)
        if errors:
            raise ConfigError(*errors)
        for plugin in extra:
            name = getattr(plugin, "name", None) or type(plugin).__name__
            self.plugin_origins[name] = "instance"
            self.pm.register(plugin, name)

    def _register_spec(self, spec: PluginSpec, table: Mapping[str, Any], where: str) -> None:
        cls = spec.load()
        plugin = instantiate(cls, table, self, f"{where}: [{spec.name}]")
        self.plugin_origins[spec.name] = spec.origin
        self.pm.register(plugin, spec.name)

    def _rebuild(self) -> None:
        """Build a new stage snapshot from the registered plugins (called on every (un)register).

        The snapshot is built whole, then stored with one assignment: a request that read the old one goes on
        with it, the next request gets the new one, and none sees a mixture.
        """
        if self._building:
            return
        self._stages = build_stages(
            self.pm, self.config.source, len(self.endpoints), defaults={"send": _send_with_inner},
            pinned=[(e.url, e.dialect) for e in self.endpoints if e.dialect is not None],
        )

    @property
    def tiers(self) -> tuple[str, ...]:
        """The names of the cache tier plugins, in the order a lookup asks them."""
        return self._stages.tiers

    def register(self, plugin: object, name: str | None = None) -> None:
        """Register a plugin instance at run time; it takes effect on the next request.

        A plugin the pipeline refuses (a second router) raises :class:`ConfigError` and is not registered.
        """
        key = name or type(plugin).__name__
        before = self.plugin_origins.get(key)
        self.plugin_origins[key] = "instance"
        try:
            self.pm.register(plugin, name)
        except BaseException:
            if before is None:
                del self.plugin_origins[key]
            else:
                self.plugin_origins[key] = before
            raise

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        self.plugin_origins.pop(name, None)

    def plugin(self, name: str) -> Any:
        """The registered plugin instance called ``name`` (``KeyError`` naming the registered ones if none)."""
        plugin = self.pm.get_plugin(name)
        if plugin is None:
            raise KeyError(f"no plugin {name!r} in this pipeline{choices_hint(name, self.plugin_origins)}")
        return plugin

    def cache_tiers(self) -> tuple[object, ...]:
        """The cache tier plugins (those implementing ``aurelis_cache_get``), in the order of :attr:`tiers`.

        What plugins and tools find a tier by, by capability rather than by name (the Protocols of
        :mod:`aurelis_core.plugin`): ``[t for t in pipeline.cache_tiers() if isinstance(t, ShrinkableTier)]``.
        Empty while the pipeline's plugins are still being built (a plugin's ``__init__`` may ask).
        """
        stages: Stages | None = getattr(self, "_stages", None)
        return () if stages is None else stages.tier_plugins

    # --- wrapping clients --------------------------------------------------------------------------------------

    def instrument(self, client: Any) -> Any:
        """Wrap ``client``'s transport and proxy mounts in place with this pipeline; returns the client."""
        self._note_base_url(client)
        return instrument_client(client, self)

    def _note_base_url(self, client: Any) -> None:
        """Say once per host when a client's ``base_url`` is not where its requests will go: with ``endpoints``
        configured, routing sends them (and the client's credentials) to the endpoints' hosts."""
        base = getattr(client, "base_url", None)
        netloc = urlsplit(str(base)).netloc.lower() if base is not None else ""
        if not netloc or not self.endpoints:
            return
        hosts = sorted({urlsplit(e.url).netloc.lower() for e in self.endpoints})
        if netloc in hosts or netloc in self._noted_hosts:
            return
        self._noted_hosts.add(netloc)
        logger.warning("requests the client addresses to %s go to the configured endpoints instead: %s",
                       netloc, ", ".join(hosts))

    def transport(self, inner: Any) -> Any:
        """A sync transport that runs this pipeline in front of ``inner`` (an httpx/httpx2 transport)."""
        return wrap_transport(inner, self, is_async=False)

    def async_transport(self, inner: Any) -> Any:
        """An async transport that runs this pipeline in front of ``inner``."""
        return wrap_transport(inner, self, is_async=True)

    # --- life cycle --------------------------------------------------------------------------------------------

    def _lifecycle(self, hooks: Sequence[Callable[..., Any]], is_async: bool, collect_errors: bool) -> Flow:
        self.is_async = is_async
        first_error: BaseException | None = None
        for hook in hooks:
            try:
                result = hook(self)
                if result is not None and isawaitable(result):
                    yield result
            except Exception as exc:
                if not collect_errors:
                    raise
                logger.exception("a close hook failed")
                first_error = first_error or exc
        if first_error is not None:
            raise first_error

    def start(self) -> None:
        """Run the plugins' start hooks for sync use (the first request does it if you don't)."""
        if not self._started:
            self._started = True
            self._live.start_logging(self)
            drive_sync(self._lifecycle(self._stages.start, False, False), self.bridge)

    async def astart(self) -> None:
        """Run the plugins' start hooks for async use (the first request does it if you don't)."""
        if not self._started:
            self._started = True
            self._live.start_logging(self)
            await drive_async(self._lifecycle(self._stages.start, True, False))

    def close(self) -> None:
        """Flush and release everything the plugins hold. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._live.stop_logging()
        try:
            drive_sync(self._lifecycle(self._stages.close, False, True), self.bridge)
        finally:
            self.bridge.stop()

    async def aclose(self) -> None:
        """Async twin of :meth:`close`."""
        if self._closed:
            return
        self._closed = True
        self._live.stop_logging()
        try:
            await drive_async(self._lifecycle(self._stages.close, True, True))
        finally:
            self.bridge.stop()

    # --- the live report ---------------------------------------------------------------------------------------

    def report(
        self, *, window_requests: int | None = None, window_seconds: float | None = None,
        targets: Targets | None = None,
    ) -> Report:
        """The performance report of this pipeline's recent requests: what ``aurelis replay`` reports for a
        workload (figures, per model / endpoint / tier, recommendations, score), over a sliding window.

        The window is the last ``window_requests`` requests that ended in the last ``window_seconds`` (defaults:
        the ``[report]`` table's; the requests are at most the ring ``stats.samples`` holds). ``targets`` are
        what the score measures against (default: the table's ``targets``). Write the page with
        ``report.html()``, the JSON with ``report.to_dict()``. Reads a copy of the samples: it costs the request
        path nothing.
        """
        return self._live.report(window_requests=window_requests, window_seconds=window_seconds, targets=targets)

    # --- the request path --------------------------------------------------------------------------------------

    def flow(self, ctx: RequestContext) -> Flow:
        """Run one request through every stage. See the module docstring for how it is driven."""
        # The one read of the stage snapshot for this request: every stage, down to the end of a stream, runs
        # the implementations of this moment (the helpers read ctx._stages, or are handed ``stages``).
        ctx._stages = stages = self._stages
        try:
            if not self._started:
                self._started = True
                self._live.start_logging(self)
                yield from self._lifecycle(stages.start, ctx.is_async, False)
            if stages.caching:
                ctx.controls = controls = controls_of(ctx)
                if not controls.skip:
                    try:
                        for normalize in stages.normalize:
                            key = normalize(ctx)
                            if key is not None:
                                ctx.key = key
                                break
                    except Exception:
                        # The key only optimises: a request it cannot key (a body that breaks a parser) passes
                        # through uncached rather than failing.
                        ctx.key = None
                        self._stage_failed("normalize", normalize)
            key = ctx.key
            if key is not None:
                if not ctx.controls.refresh:
                    entry = yield from self._cache_lookup(ctx, stages)
                    if entry is not None:
                        return self._answer(ctx, entry)
                ctx.cache_status = CACHE_MISS
                if ctx.controls.coalesce:
                    # Single-flight (see _coalesce): join the identical request in flight, or lead one.
                    while True:
                        flight, leads = self._flights.join(key, ctx.is_async)
                        if leads:
                            return (yield from self._fetch(ctx, flight))
                        response = yield from self._follow(ctx, flight)
                        if response is not None:
                            return response
            return (yield from self._fetch(ctx, None))
        except BaseException as exc:
            self._finish(ctx, exc)
            raise

    def _fetch(self, ctx: RequestContext, flight: Flight | None) -> Flow:
        """Get the answer from upstream; store it if it may be; share it with ``flight``'s followers."""
        key = ctx.key
        try:
            response, attempt = yield from self._attempts(ctx)
            ctx.response_status = response.status_code
            if key is not None and ctx.stream:
                return self._tee(ctx, response, attempt, flight or self._flights.solo(ctx.is_async))
            # The headers an entry keeps, None when the answer may not be stored, TOO_LARGE when it announces more
            # bytes than any tier stores: then it is not buffered, only shared with followers as it streams.
            stored = _stored_headers(ctx, response, ctx._stages.entry_limit) if key is not None else None
            if stored is TOO_LARGE:
                if flight is None or self._flights.release_alone(flight):
                    return self._answer(ctx, upstream=response, attempt=attempt)
                return self._tee(ctx, response, attempt, flight, storable=False)
            if flight is None and stored is None:
                return self._answer(ctx, upstream=response, attempt=attempt)
            # Read whole: to store it, or (not storable, e.g. an error status) to hand followers the same.
            body = yield from self._read(ctx, response, attempt)
        except BaseException as exc:
            if flight is not None:
                flight.fail(exc)
            raise
        try:
            if flight is not None:
                flight.publish(response.status_code, header_items(response.headers), response.extensions, body)
            if stored is not None:
                entry = CacheEntry(response.status_code, stored, body, ttl=ctx.controls.ttl)
                yield from self._cache_store(ctx, entry, ctx._stages.cache_set, promote=False)
        finally:
            if flight is not None:
                self._flights.remove(flight)
        return self._answer(ctx, upstream=response, body=body)

    def _follow(self, ctx: RequestContext, flight: Flight) -> Generator[Any, Any, Any]:
        """A follower's response: ``flight``'s answer, or ``None`` if its leader gave up (start over)."""
        try:
            waiting = flight.wait_head()
            if waiting is not None:
                yield waiting
        except BaseException:
            leaving = flight.leave()
            if leaving is not None:
                yield leaving
            raise
        if flight.retry:
            return None
        # A follower saved an upstream call either way, but only a good answer is a hit: a shared error (an
        # exception, a status >= 400) counted as a hit made a failing upstream look like a working cache.
        failed = flight.status is None or flight.status >= 400
        ctx.cache_status = CACHE_MISS if failed else CACHE_HIT
        ctx.cache_tier = COALESCED
        self.stats.counters[COALESCED] += 1
        if flight.status is None:
            assert flight.error is not None
            raise flight.error
        ctx.response_status = flight.status
        return self._answer(ctx, flight=flight)

    def _tee(
        self, ctx: RequestContext, upstream: Any, attempt: Attempt, flight: Flight, storable: bool = True
    ) -> Any:
        """Hand a body over chunk by chunk, shared with ``flight``'s followers. An event stream is stored at its
        end if it completed cleanly (see :mod:`._sse`) and fits a tier; it is held once, as the chunks the
        callers were handed (the entry's body is joined only if someone reads it)."""
        stages = ctx._stages
        stored = None
        streamed = is_event_stream(upstream.headers)
        if storable and streamed:
            stored = _stored_headers(ctx, upstream, stages.entry_limit)
        if stored is TOO_LARGE:
            stored, storable = None, False

        def on_end(error: BaseException | None, complete: bool) -> Awaitable[Any] | None:
            if error is not None:
                attempt.error = error
            attempt.tail = tail(flight.chunks, USAGE_TAIL)  # for the observers: the usage block
            attempt.head = flight.head
            if streamed:
                attempt.first_chunk = flight.first_chunk  # the time to first token
            self._end_attempt(ctx, attempt)
            if stored is None or not complete or not flight.kept:
                return None
            chunks = tuple(flight.chunks)
            if not flight.complete(tail(chunks)):
                return None
            entry = CacheEntry(upstream.status_code, stored, b"", chunks=chunks, ttl=ctx.controls.ttl)
            # The store is driven here, not by the flight, in the mode of its callers (a flight has one): in place
            # for sync ones; for async ones the awaitable is returned, and the flight awaits it (shielded).
            store = self._cache_store(ctx, entry, stages.cache_set, promote=False)
            if ctx.is_async:
                return drive_async(store)
            drive_sync(store, self.bridge)
            return None

        flight.complete = attempt.dialect.stream_complete
        flight.start_stream(upstream, upstream.extensions, on_end, stages.entry_limit if storable else 0)
        return self._answer(ctx, flight=flight, upstream=upstream)

    def _cache_lookup(self, ctx: RequestContext, stages: Stages) -> Generator[Any, Any, CacheEntry | None]:
        for index, (tier, get) in enumerate(stages.cache_get):
            try:
                entry = get(ctx)
                # The type check first: isawaitable's ABC check on a plain entry costs ~0.15 us.
                if entry is not None and type(entry) is not CacheEntry and isawaitable(entry):
                    entry = yield entry
            except Exception as exc:
                self._tier_failed(tier, "get", exc)
                continue
            if entry is not None:
                ctx.cache_status = CACHE_HIT
                ctx.cache_tier = tier
                ctx.entry = entry
                entry.hits += 1
                # A request that said no-store (Cache-Control: no-store, or its controls) may read the cache
                # but has nothing written for it, a promotion of what it read included.
                if index and not ctx.controls.no_store:
                    yield from self._cache_store(ctx, entry, stages.setters_above[index], promote=True)
                return entry  # type: ignore[no-any-return]
        return None

    def _cache_store(
        self,
        ctx: RequestContext,
        entry: CacheEntry,
        setters: Sequence[tuple[str, Callable[..., Any]]],
        promote: bool,
    ) -> Flow:
        if entry.similarity is not None:
            # A fuzzy answer (see CacheEntry.similarity) answered a request other than the one it was stored
            # for: written into any tier, it would become that request's exact answer, for good.
            return
        for tier, store in setters:
            try:
                result = store(ctx, entry, promote)
                if result is not None and isawaitable(result):
                    yield result
            except Exception as exc:
                self._tier_failed(tier, "set", exc)

    def _tier_failed(self, tier: str, operation: str, error: BaseException) -> None:
        # Logged once per burst (the 1st, 100th, 10000th...), counted always: a dead tier must neither fail
        # requests nor flood the log. Under the tier's own logger (aurelis.cache.<tier>), one line for an
        # expected fault (a refused connection names host:port in its message; the tier adds where it is).
        count = self.stats.tier_error(tier, operation)
        if worth_logging(count):
            where = getattr(self.pm.get_plugin(tier), "location", None)
            log_fault(
                component_logger(f"cache.{tier}"), logging.WARNING,
                "cache tier %r%s failed on %s (%d so far), treated as a miss",
                tier, f" at {where}" if where else "", operation, count, error=error,
            )

    def _stage_failed(self, stage: str, implementation: Callable[..., Any]) -> None:
        # An optimising stage (the key, compression) failed on one request: the request goes on without it.
        # Counted always; logged with its traceback the first time per stage and plugin, then at DEBUG: a
        # hostile body repeated a million times must not flood the log.
        owner = getattr(implementation, "__self__", None)
        name = f"{stage}.{getattr(owner, 'name', None) or getattr(implementation, '__qualname__', '?')}"
        count = self.stats.stage_error(name)
        logger.log(
            logging.WARNING if count == 1 else logging.DEBUG,
            "%s failed on a request (%d so far); the request goes on without it", name, count,
            exc_info=True,
        )

    def _attempts(self, ctx: RequestContext) -> Generator[Any, Any, tuple[Any, Attempt]]:
        """Route, admit, compress and send until an attempt succeeds or retry gives up."""
        endpoints = self.endpoints
        stages = ctx._stages
        route, send = stages.route, stages.send
        assert send is not None  # the default engine fills it (see _rebuild)
        models = self._models if self._models.active else None
        fallbacks = self._fallbacks
        while True:
            endpoint: Endpoint | None = None
            if endpoints:
                if route is not None:
                    endpoint = route(ctx)
                else:
                    endpoint = endpoints[0] if models is None else self.health.serving(ctx, endpoints)[0]
            attempt = Attempt(
                len(ctx.attempts) + 1, endpoint,
                ctx.dialect if endpoint is None or endpoint.dialect is None
                else stages.dialects.named(endpoint.dialect),
            )
            ctx.attempts.append(attempt)
            try:
                ctx.request = rewrite(ctx, endpoint, endpoints) if endpoint is not None else ctx.original
                if models is not None:
                    ctx.request = models.apply(ctx, endpoint, ctx.request, attempt.dialect)
                wait = 0.0
                for admit in stages.admit:
                    answer = admit(ctx, attempt)
                    if answer is not None and isawaitable(answer):
                        answer = yield answer
                    if answer:
                        wait = max(wait, answer)
                if wait > 0 and (sleeping := _sleep(ctx, wait)) is not None:
                    yield sleeping
                for compress in stages.compress:
                    before = ctx.request
                    try:
                        compress(ctx, attempt)
                    except Exception:
                        ctx.request = before  # a body it cannot encode is sent as it is
                        self._stage_failed("compress", compress)
                response = send(ctx, attempt)
                # A response is the usual answer for either driver; isawaitable's ABC check costs ~0.15 us.
                if not isinstance(response, ctx.http.Response) and isawaitable(response):
                    response = yield response
            except BaseException as exc:
                attempt.error = exc
                self._end_attempt(ctx, attempt)
                delay = self._retry_delay(ctx, attempt) if isinstance(exc, Exception) else None
                if delay is None:
                    if (fallbacks is not None and isinstance(exc, Exception) and fallbacks.possible(ctx)
                            and fallbacks.switch(ctx, attempt, None)):
                        continue
                    _note_target(ctx, exc)
                    raise
                if delay > 0 and (sleeping := _sleep(ctx, delay)) is not None:
                    yield sleeping
                continue
            attempt.first_byte = time.perf_counter()
            attempt.status_code = response.status_code
            attempt.headers = response.headers
            if response.status_code >= 400 and (stages.retry or fallbacks is not None):
                delay = self._retry_delay(ctx, attempt)
                if delay is None and fallbacks is not None and fallbacks.possible(ctx):
                    # Only now, with the model's retries spent, is the error body read (to tell a prompt too
                    # long); the caller gets it as it came if the request does not fall back after all.
                    body = None
                    if response.status_code in CONTEXT_STATUSES:
                        body = yield from self._peek(ctx, response, attempt)
                    if fallbacks.switch(ctx, attempt, body):
                        delay = 0.0
                if delay is not None:
                    try:
                        closed = _close(ctx, response)
                        if closed is not None:
                            yield closed
                    finally:
                        self._end_attempt(ctx, attempt)
                    if delay > 0 and (sleeping := _sleep(ctx, delay)) is not None:
                        yield sleeping
                    continue
            if models is not None:
                model = models.routed_model(ctx)
                if model is not None:
                    extend_header_items(response.headers, [(MODEL_HEADER, MODEL_HEADER, model.encode())])
            return response, attempt

    def _peek(self, ctx: RequestContext, response: Any, attempt: Attempt) -> Generator[Any, Any, bytes | None]:
        """An error answer's body, decoded (see ``_fallback.error_body``), read whole and put back: the caller
        reads the same bytes. ``None`` when it could not be read (the attempt then failed with that error)."""
        try:
            if ctx.is_async:
                raw: bytes = yield _aread_raw(response)
            else:
                stream = response.stream
                try:
                    raw = b"".join(stream)
                finally:
                    stream.close()
        except Exception as exc:
            attempt.error = exc
            return None
        response.stream = ctx.http.ByteStream(raw)
        return error_body(raw, response.headers)

    def _retry_delay(self, ctx: RequestContext, attempt: Attempt) -> float | None:
        hooks = ctx._stages.retry
        if not hooks:
            return None
        # Whatever a retry hook would answer, a request whose body was a one-shot stream or that is signed for
        # one attempt is never sent again (see _resend): the hooks are not asked, and the attempt's own error
        # or answer goes to the caller.
        refusal = resend_refusal(ctx.original)
        if refusal is not None:
            self.stats.counters[refusal] += 1
            return None
        for retry in hooks:
            delay = retry(ctx, attempt)
            if delay is not None:
                return float(delay)
        return None

    def _end_attempt(self, ctx: RequestContext, attempt: Attempt) -> None:
        if attempt.finished is not None:
            return
        attempt.finished = time.perf_counter()
        for end in ctx._stages.attempt_end:
            end(ctx, attempt)

    def _read(self, ctx: RequestContext, response: Any, attempt: Attempt) -> Generator[Any, Any, bytes]:
        """The raw (still content-encoded) body, read to the end; ends the attempt either way."""
        try:
            if ctx.is_async:
                body: bytes = yield _aread_raw(response)
            else:
                stream = response.stream
                try:
                    body = b"".join(stream)
                finally:
                    # The stream, not the response: the response is handed on to the caller (see _hand_over).
                    stream.close()
            attempt.body = body
        except BaseException as exc:
            attempt.error = exc
            raise
        finally:
            self._end_attempt(ctx, attempt)
        return body

    def _finish(
        self, ctx: RequestContext, error: BaseException | None = None, hit: CacheEntry | None = None
    ) -> None:
        """The request is over: record it, tell the observers. Runs exactly once per request: registered by
        :meth:`_answer` for a request that got an answer, called by :meth:`flow` for one that failed before.

        ``error`` is what ended it, if it failed (it becomes ``ctx.error``); ``hit`` is the cache entry that
        answered, so the stats can count the tokens it saved. Its signature is a stream's end callback's
        (``on_end(error)``) once ``ctx`` is bound.
        """
        if error is not None:
            ctx.error = error
        self.stats.record(ctx, time.perf_counter(), hit)
        for observe in ctx._stages.observe:
            try:
                observe(ctx)
            except Exception:
                logger.exception("an observer failed")

    # --- building responses ------------------------------------------------------------------------------------

    def _info_headers(self, ctx: RequestContext) -> list[tuple[bytes, bytes, bytes]]:
        """``x-aurelis-cache`` and ``x-aurelis-cache-tier`` as header triples (see ``_compat.header_items``).

        A few (status, tier) pairs occur, so each list is made once; callers concatenate it, never mutate it.
        """
        if not ctx._stages.caching:
            return []
        status, tier = ctx.cache_status, ctx.cache_tier
        headers = _INFO_HEADERS.get((status, tier))
        if headers is None:
            headers = [(b"x-aurelis-cache", b"x-aurelis-cache", status.encode())]
            if tier is not None:
                headers.append((b"x-aurelis-cache-tier", b"x-aurelis-cache-tier", tier.encode()))
            _INFO_HEADERS[(status, tier)] = headers
        return headers

    def _extensions(self, ctx: RequestContext, base: Mapping[str, Any]) -> dict[str, Any]:
        extensions = dict(base)
        endpoint = ctx.endpoint
        extensions["aurelis"] = CacheInfo(
            ctx.cache_status, ctx.cache_tier, ctx.key, endpoint.name if endpoint is not None else None
        )
        return extensions

    def _answer(
        self, ctx: RequestContext, entry: CacheEntry | None = None, flight: Flight | None = None,
        upstream: Any = None, body: bytes | None = None, attempt: Attempt | None = None,
    ) -> Any:
        """The request's response, and its end: the one way out of the flow for a request with an answer.

        The answer is made of one of:

        - ``entry``: a cache hit, replayed (:meth:`_replay`);
        - ``flight``: a flight's answer, whole, or read through the flight as it arrives. ``upstream`` is given
          when this request leads the flight (it sent ``upstream``): its response keeps that response's
          extensions; a follower's keeps only those describing the answer, not the leader's connection;
        - ``upstream``: the upstream response itself, handed over (:meth:`_hand_over`), with ``body`` its body
          read whole by the flow, or without it passed through as it arrives (``attempt`` ends when it ends).

        Each response carries the info headers and the ``aurelis`` extension. The request's end
        (:meth:`_finish`) is registered here, so it runs once: now when the body is in hand, else when the
        caller's reading of it ends, through the stream's ``on_end(error)`` (a flight's stream and an observed
        one take the same callback shape).

        The hit and the miss paths (a body in hand) pass a few ``is not None`` checks here and make no callback:
        only answers that stream have one.
        """
        if entry is not None:
            response = self._replay(ctx, entry)
            self._finish(ctx, None, entry)
            return response
        http = ctx.http
        if flight is not None:
            assert flight.status is not None
            extensions = self._extensions(
                ctx, upstream.extensions if upstream is not None else _head_extensions(flight.extensions)
            )
            headers = flight.headers + self._info_headers(ctx)
            if flight.streaming:
                # Over when this caller's reading is (read to the end, failed or closed), not the flight's.
                return build_response(
                    http, flight.status, headers, flight_stream(http, flight, partial(self._finish, ctx)),
                    extensions,
                )
            response = build_response(http, flight.status, headers, http.ByteStream(flight.chunks[0]), extensions)
        elif body is not None:
            # A response read when it was built keeps its body: its caller reads that, never the stream.
            response = self._hand_over(ctx, upstream, None if is_read(upstream) else http.ByteStream(body))
        else:
            assert attempt is not None
            if not is_read(upstream):
                return self._hand_over(ctx, upstream, self._observed(ctx, upstream, attempt))
            # Built with its body in hand (``Response(content=...)``: ``MockTransport``'s, a hand-written
            # transport's), it is already read and closed: its caller never reads its stream, so the attempt
            # and the request end now. The attempt ends first: its hooks see the headers as they came.
            attempt.tail = upstream.content[-USAGE_TAIL:]
            attempt.head = upstream.content[:USAGE_TAIL]
            self._end_attempt(ctx, attempt)
            response = self._hand_over(ctx, upstream, None)
        self._finish(ctx)
        return response

    def _observed(self, ctx: RequestContext, upstream: Any, attempt: Attempt) -> Any:
        """For :meth:`_answer`: ``upstream``'s body passed through unbuffered, observed as it passes, with the end
        callback that ends the attempt and then the request when the caller's reading of it ends.

        A method of its own, not a closure inside ``_answer``: the variables a closure captures become cells that
        its defining function allocates on every call, a hit's included.
        """
        streamed = is_event_stream(upstream.headers)

        def on_end(error: BaseException | None) -> None:
            if error is not None:
                attempt.error = error
                ctx.error = error  # before the attempt's end hooks, which may read it
            attempt.tail = observed.tail()  # for the observers: the usage block
            attempt.head = observed.head
            if streamed:
                attempt.first_chunk = observed.first_chunk  # the time to first token
            self._end_attempt(ctx, attempt)
            self._finish(ctx, error)

        observed = observed_stream(ctx.http, upstream.stream, on_end)
        return observed

    def _replay(self, ctx: RequestContext, entry: CacheEntry) -> Any:
        """For :meth:`_answer`: a cache entry as a new response."""
        http = ctx.http
        # Triples made here rather than kept on the entry: a hit pays ~0.1 us a header, a stored entry no bytes.
        headers = [(k, k.lower(), v) for k, v in entry.headers]
        headers += self._info_headers(ctx)
        if entry.similarity is not None:
            headers.append((b"x-aurelis-similarity", b"x-aurelis-similarity", b"%.3f" % entry.similarity))
        age = int(time.time() - entry.created)
        headers.append((b"age", b"age", b"%d" % age if age > 0 else b"0"))
        ctx.response_status = entry.status_code
        return build_response(
            http,
            entry.status_code,
            headers,
            # A stored event stream is replayed with its original chunk boundaries.
            http.ByteStream(entry.body) if entry.chunks is None else chunk_stream(http, entry.chunks),
            self._extensions(ctx, _REPLAY_EXTENSIONS),
        )

    def _hand_over(self, ctx: RequestContext, upstream: Any, stream: Any) -> Any:
        """The upstream response itself, reading ``stream``, with the cache headers and extension added.

        The very object the transport returned, never a copy: a caller (or a test) may hold it and compare
        (``exc.response is response``), and it keeps every attribute its transport and client set on it. It
        is also cheaper than a new ``Response`` (~2 us a request). Its header list is replaced, not extended,
        since a flight's followers hold the old one. ``stream`` replaces the body the pipeline consumed;
        ``None`` keeps it (the callers pass ``None`` for a response whose body was read when it was built:
        its caller reads that, never the stream; they know, so the check is made once per response).
        """
        if stream is not None:
            upstream.stream = stream
        info = self._info_headers(ctx)
        if info:
            extend_header_items(upstream.headers, info)
        attempts = ctx.attempts
        endpoint = attempts[-1].endpoint if attempts else None
        # The response's own dict (Response() copies the mapping it is given), so adding a key touches no other.
        upstream.extensions["aurelis"] = CacheInfo(
            ctx.cache_status, ctx.cache_tier, ctx.key, endpoint.name if endpoint is not None else None
        )
        return upstream


#: (cache status, tier) -> the info header triples of responses with it (see ``Pipeline._info_headers``).
_INFO_HEADERS: dict[tuple[str, str | None], list[tuple[bytes, bytes, bytes]]] = {}
#: The extensions of a replayed response, before ``aurelis`` is added.
_REPLAY_EXTENSIONS = {"http_version": b"HTTP/1.1", "reason_phrase": b""}

# --- small helpers the flow yields or calls ------------------------------------------------------------------


def _send_with_inner(ctx: RequestContext, attempt: Attempt) -> Any:
    """The default send engine: the wrapped client's own transport."""
    if ctx.is_async:
        return ctx.transport.handle_async_request(ctx.request)
    return ctx.transport.handle_request(ctx.request)


async def _aread_raw(response: Any) -> bytes:
    # The transport-level stream yields the bytes as they came off the wire (still content-encoded). Reading
    # it directly, rather than through aiter_raw(), also works for responses a transport built pre-read.
    # The stream is closed, not the response: the response is handed on to the caller (see _hand_over).
    stream = response.stream
    try:
        return b"".join([chunk async for chunk in stream])
    finally:
        await stream.aclose()


def _close(ctx: RequestContext, response: Any) -> Awaitable[None] | None:
    if ctx.is_async:
        return response.aclose()  # type: ignore[no-any-return]
    response.close()
    return None


def _sleep(ctx: RequestContext, seconds: float) -> Awaitable[None] | None:
    """An awaitable sleep for async clients; for sync ones the sleep happens right here."""
    if ctx.is_async:
        import anyio  # httpx's own async backend layer: works under asyncio and trio alike

        return anyio.sleep(seconds)
    time.sleep(seconds)
    return None


def _note_target(ctx: RequestContext, error: BaseException) -> None:
    """Name the host a transport error failed to reach, in a note on the exception (its traceback shows it;
    its message, which callers may match, stays as the transport wrote it): "Connection refused" alone does not
    say which of several endpoints refused."""
    if not isinstance(error, ctx.http.TransportError) or getattr(error, "_aurelis_noted", False):
        return
    url = ctx.request.url
    endpoint = ctx.endpoint
    where = f"{url.scheme}://{url.netloc.decode('ascii', 'replace')}"
    named = f" (endpoint {endpoint.name!r})" if endpoint is not None else ""
    attempts = len(ctx.attempts)
    error.add_note(f"aurelis: {ctx.request.method} {where}{url.path}{named} failed after {attempts} "
                   f"attempt{'s' if attempts != 1 else ''}")
    error._aurelis_noted = True  # a follower re-raising it adds no second note


#: Set by ``aurelis record``: every pipeline of the process records its requests to this file, whatever
#: config it was built with (an application that passes its own config never reads ``AURELIS_CONFIG``).
RECORD_ENV = "AURELIS_RECORD"


def _recording(config: Config) -> Config:
    """``config`` with the ``record`` plugin writing to ``$AURELIS_RECORD``, when that is set."""
    path = os.environ.get(RECORD_ENV)
    if not path:
        return config
    plugins = config.plugins if "record" in config.plugins else (*config.plugins, "record")
    tables = {**config.tables, "record": {**config.tables.get("record", {}), "path": path}}
    return attrs.evolve(config, plugins=plugins, tables=tables)


def _head_extensions(extensions: Mapping[str, Any]) -> dict[str, Any]:
    """The response extensions that describe the answer, not the connection it came on (followers must not be
    handed the leader's network stream). Filtered by the followers: the leader's own dict is shared with them
    as it is, so a flight nobody joins costs no copy."""
    return {name: extensions[name] for name in ("http_version", "reason_phrase") if name in extensions}


#: What ``_stored_headers`` returns for an answer whose ``Content-Length`` exceeds what any tier stores.
TOO_LARGE: Any = object()


def _stored_headers(ctx: RequestContext, response: Any, limit: int | None = None) -> Any:
    """The headers a cache entry of ``response`` keeps, or ``None`` when the answer may not be stored (not a
    2xx, ``no-store`` asked by the request or the response), or ``TOO_LARGE`` when its ``Content-Length`` is over
    ``limit`` (the largest entry any tier stores; ``None``: no limit).

    One pass over the lower-cased names the ``Headers`` already holds (no ``.raw`` copy, no ``lower()`` per
    header, no ``Headers.get``: ~0.7 us each) serves the decisions and the copy.
    """
    if not 200 <= response.status_code < 300 or ctx.controls.no_store:
        return None
    kept = []
    for name, lower, value in header_items(response.headers):
        if lower in UNSTORED_HEADERS or lower.startswith(UNSTORED_PREFIXES):
            continue
        if lower == b"cache-control" and b"no-store" in value.lower():
            return None
        if lower == b"content-length" and limit is not None and value.isdigit() and int(value) > limit:
            return TOO_LARGE
        kept.append((name, value))
    return kept


if TYPE_CHECKING:
    from ._protocols import Pipeline as PluginView

    def _the_pipeline_keeps_the_contract(pipeline: Pipeline) -> PluginView:
        # mypy checks, on every run over aurelis_core, that the concrete pipeline offers everything the Protocol
        # promises plugins, with compatible types. Kept here, beside the class, so the Protocol's module never
        # imports this one.
        return pipeline
