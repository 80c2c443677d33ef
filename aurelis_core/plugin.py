"""The plugin API: everything a plugin may import from Aurelis, besides ``aurelis_core`` itself.

A plugin depends on the names below and on nothing else of ``aurelis_core`` (its ``_private`` modules move and
change between releases; these names do not without a deprecation). The first-party plugins and the
``contrib/`` packages are held to this by a test that reads their imports.

Writing a plugin
----------------
A plugin is a class. Its instance is made once per pipeline, so it may keep state, and carries ``@hookimpl``
methods named after the stages it takes part in (:mod:`aurelis_core.hookspecs` says, for each, who runs, in
which order, and whether it may do I/O)::

    import logging

    import attrs
    from aurelis_core.plugin import Attempt, Pipeline, RequestContext, StateKey, hookimpl, positive

    logger = logging.getLogger("aurelis.slow_log")    # log under "aurelis"; never print
    SLOW = StateKey[int]("slow_log.slow_attempts")    # this plugin's note on one request, typed

    @attrs.frozen
    class SlowLogConfig:                              # the [slow_log] table, checked when the pipeline is built
        threshold: float = attrs.field(default=2.0, validator=positive)

    class SlowLog:
        name = "slow_log"                             # what users write in plugins = [...]
        Config = SlowLogConfig

        def __init__(self, config: SlowLogConfig, pipeline: Pipeline) -> None:
            self.config, self.stats = config, pipeline.stats

        @hookimpl
        def aurelis_attempt_end(self, ctx: RequestContext, attempt: Attempt) -> None:
            if attempt.duration is not None and attempt.duration > self.config.threshold:
                SLOW.set(ctx, SLOW.get(ctx, 0) + 1)

        @hookimpl
        def aurelis_observe(self, ctx: RequestContext) -> None:   # once per request, when it is over
            slow = SLOW.get(ctx, 0)
            if slow:
                self.stats.counters["slow_log.requests"] += 1
                logger.info("%d slow attempt(s) to %s", slow, ctx.endpoint.name if ctx.endpoint else "?")

Publish it with an entry point in the group ``aurelis`` (``slow_log = "my_package:SlowLog"``); it is imported
only when a config enables it by name.

What is here
------------
- **hooks and the request**: :data:`hookimpl`, :class:`RequestContext`, :class:`Attempt`, :class:`CacheEntry`,
  :class:`Endpoint`, :class:`RequestControls`, :class:`Stats` (``pipeline.stats``; its samples are
  :class:`Sample` records, which :func:`percentile` reads), :class:`Config` (``pipeline.config``).
- **the pipeline, as a plugin sees it**: :class:`Pipeline`, a Protocol (the concrete ``aurelis_core.Pipeline``
  offers more, which plugins do not use).
- **what plugins find in each other**, by capability, never by name: :class:`CacheTier` (what ``aurelis cache``
  manages), :class:`WarmTarget` (a tier warming copies into), :class:`ShrinkableTier` (memory relief),
  :class:`Router`. Look them up with ``pipeline.cache_tiers()`` and ``isinstance``.
- **per-request state**: :class:`StateKey` (a typed key into ``ctx.state``), :data:`FAILED_ENDPOINTS`
  (the endpoints that failed during this request: retry policies write it, routers read it) and
  :data:`DEADLINE` (a :class:`Deadline`: when the request must be over; retry policies write it, fallbacks
  read it).
- **models**: :func:`request_model` (the model a request names, in its JSON body or its path),
  :data:`MODEL_ROUTE` (the :class:`ModelRoute` of a request that fell back to another model: retry policies
  count attempts per model from it), :data:`FALLBACKS` (the ``(from, to)`` hops of a request that fell back:
  metrics read it), :func:`warrants_fallback` (whether a failed attempt may fall back) and
  :class:`ModelNotServed`. Routers pick among ``pipeline.health.serving(ctx, endpoints)``: the endpoints
  serving the request's model.
- **endpoint health**: :class:`EndpointHealth` (``pipeline.health``: breakers and rate limiters write it, routers
  read it), :class:`EndpointStatus`, :data:`CircuitState`, :class:`EndpointUnavailable` (an attempt refused
  before the network) and :func:`retry_after` (how long an upstream asked to wait).
- **who is asking**: :class:`Tenant` (``pipeline.tenant``), :class:`Identity`, :class:`TenantConfig` and the
  default credential and scope header sets.
- **shared state**: :class:`RedisConnection`, the Redis every Redis-using plugin shares
  (``pipeline.config.redis_connection``, from ``[redis_connection]``) unless it names its own.
- **requests on the wire**: :func:`header_items`, :func:`url_parts` (one pass over a request's headers or
  URL), :func:`buffered_body`, :func:`replayable_body`, :func:`copy_request` (the request with other headers
  or URL, its body shared), :func:`signature_scheme`, :func:`resend_refusal`, and :func:`usage_tokens` (the
  tokens a stored JSON answer spent). Plugins read no private attribute of httpx objects: these helpers do.
  :func:`parse_json` parses a body the way ``ctx.json`` is parsed (integral numbers as ``int``, others as
  exact ``Decimal``), so a plugin that parses for itself sees the same values.
- **tokens and money**: :class:`Usage` and :func:`usage_counts` (the input, output and cached-input tokens
  in an answer's usage block; ``attempt.usage`` and ``entry.usage`` read it), :class:`Pricing`
  (``pipeline.config.pricing``, from ``[pricing]``: :meth:`Pricing.cost` of a model's usage) and
  :class:`ModelPrice`.
- **wire formats**: :class:`Dialect` (what Aurelis knows of one provider's format: cacheable requests, the
  model, stream completion, usage, failure kinds, rate-limit headers; subclass it and list instances in a
  plugin class's ``dialects`` attribute to add one), the built-in :class:`OpenAI`, :class:`AzureOpenAI`,
  :class:`Anthropic` and :class:`Gemini`, :class:`FailureKind` (what :meth:`Dialect.classify` says of a failed
  answer), :class:`RateLimits`, :func:`parse_duration` (a Go-style reset time) and :func:`event_stream_events`
  (an SSE body's events). ``ctx.dialect`` is a request's, ``attempt.dialect`` an attempt's (its endpoint's when
  that pins one).
- **failures a request goes on without**: :func:`worth_logging` (count each in ``pipeline.stats``, log once
  per burst: the 1st, 100th, 10,000th, then every 100,000th).
- **options**: :func:`config_from_table`, :class:`ConfigError`, and every validator of
  :mod:`aurelis_core.validators` (``positive``, ``in_range(lo, hi)``, ``each(...)``, ``one_of(...)``, ``label``,
  ``redis_url``..., the probes ``aurelis config check`` runs, :class:`Invalid` for the standard message).
- **workloads**: :class:`WorkloadRequest` and :func:`load_workload`, the line format ``aurelis record`` writes
  and ``aurelis replay`` reads, :func:`join_url` (where a line's path goes on a base URL) and
  :data:`WORKLOAD_CREDENTIAL_HEADERS` (headers a workload never holds).
- **logs**: :func:`component_logger` (``component_logger("cache.mine")`` is the ``aurelis.cache.mine`` logger)
  and :func:`log_fault`: an expected fault (a refused connection, a timeout, a locked file:
  :func:`expected_fault`) as one line with the error (:func:`describe_error`), its traceback at DEBUG only; a
  bug with its traceback.
- **installed plugins**: :func:`discover_plugins` (every plugin that can be enabled, by name, as a
  :class:`PluginSpec`: where it comes from, ``load()``) and :func:`blocked_plugins` (``AURELIS_DISABLE_PLUGINS``),
  what ``aurelis plugins`` and ``aurelis config check`` read.
"""

from ._compat import buffered_body, copy_request, header_items, replayable_body, url_parts
from ._dialects import (
    Anthropic,
    AzureOpenAI,
    Dialect,
    FailureKind,
    Gemini,
    OpenAI,
    RateLimits,
    event_stream_events,
    parse_duration,
)
from ._fallback import FALLBACKS, warrants_fallback
from ._json import parse_json
from ._logs import component_logger, describe_error, expected_fault, log_fault
from ._model_routes import MODEL_ROUTE, ModelNotServed, ModelRoute, request_model
from ._models import Attempt, CacheEntry, Endpoint, RequestContext, RequestControls, Usage, usage_counts, usage_tokens
from ._plugins import PluginSpec, blocked_plugins, discover_plugins
from ._protocols import CacheTier, Pipeline, Router, ShrinkableTier, WarmTarget
from ._redis_connection import RedisConnection
from ._resend import resend_refusal, signature_scheme
from ._state import DEADLINE, FAILED_ENDPOINTS, Deadline, StateKey
from ._tenant import (
    DEFAULT_CREDENTIAL_HEADERS,
    DEFAULT_CREDENTIAL_PARAMS,
    DEFAULT_SCOPE_HEADERS,
    Identity,
    Tenant,
    TenantConfig,
)
from ._workload import CREDENTIAL_HEADERS as WORKLOAD_CREDENTIAL_HEADERS
from ._workload import WorkloadRequest, join_url, load_workload
from .config import Config, ConfigError, config_from_table
from .health import CircuitState, EndpointHealth, EndpointStatus, EndpointUnavailable, retry_after
from .hookspecs import hookimpl
from .pricing import ModelPrice, Pricing
from .stats import Sample, Stats, percentile, worth_logging
from .validators import (
    ALLOW_NON_FINITE,
    PROBE,
    Invalid,
    as_tuple,
    at_least,
    choices_hint,
    describe,
    each,
    env_name,
    existing_file,
    file_path,
    fraction,
    header_name,
    header_table,
    host_port,
    http_url,
    in_range,
    label,
    non_empty,
    non_negative,
    non_negative_int,
    one_of,
    path_ending,
    positive,
    positive_int,
    printable,
    probe_bind,
    probe_redis,
    probe_tcp,
    probe_writable_file,
    redis_url,
    url_path,
    writable_file_probe,
)

__all__ = [
    "ALLOW_NON_FINITE",
    "DEADLINE",
    "DEFAULT_CREDENTIAL_HEADERS",
    "DEFAULT_CREDENTIAL_PARAMS",
    "DEFAULT_SCOPE_HEADERS",
    "FAILED_ENDPOINTS",
    "FALLBACKS",
    "MODEL_ROUTE",
    "PROBE",
    "WORKLOAD_CREDENTIAL_HEADERS",
    "Anthropic",
    "Attempt",
    "AzureOpenAI",
    "CacheEntry",
    "CacheTier",
    "CircuitState",
    "Config",
    "ConfigError",
    "Deadline",
    "Dialect",
    "Endpoint",
    "EndpointHealth",
    "EndpointStatus",
    "EndpointUnavailable",
    "FailureKind",
    "Gemini",
    "Identity",
    "Invalid",
    "ModelNotServed",
    "ModelPrice",
    "ModelRoute",
    "OpenAI",
    "Pipeline",
    "PluginSpec",
    "Pricing",
    "RateLimits",
    "RedisConnection",
    "RequestContext",
    "RequestControls",
    "Router",
    "Sample",
    "ShrinkableTier",
    "StateKey",
    "Stats",
    "Tenant",
    "TenantConfig",
    "Usage",
    "WarmTarget",
    "WorkloadRequest",
    "as_tuple",
    "at_least",
    "blocked_plugins",
    "buffered_body",
    "choices_hint",
    "component_logger",
    "config_from_table",
    "copy_request",
    "describe",
    "describe_error",
    "discover_plugins",
    "each",
    "env_name",
    "event_stream_events",
    "existing_file",
    "expected_fault",
    "file_path",
    "fraction",
    "header_items",
    "header_name",
    "header_table",
    "hookimpl",
    "host_port",
    "http_url",
    "in_range",
    "join_url",
    "label",
    "load_workload",
    "log_fault",
    "non_empty",
    "non_negative",
    "non_negative_int",
    "one_of",
    "parse_duration",
    "parse_json",
    "path_ending",
    "percentile",
    "positive",
    "positive_int",
    "printable",
    "probe_bind",
    "probe_redis",
    "probe_tcp",
    "probe_writable_file",
    "redis_url",
    "replayable_body",
    "request_model",
    "resend_refusal",
    "retry_after",
    "signature_scheme",
    "url_parts",
    "url_path",
    "usage_counts",
    "usage_tokens",
    "warrants_fallback",
    "worth_logging",
    "writable_file_probe",
]
