"""``ratelimit``: stay under the upstreams' request and token limits instead of collecting their 429s.

Limits, each "so many per ``period`` seconds" (a minute by default):

- per upstream: ``rpm`` / ``tpm`` of each ``[[endpoints]]`` entry, else this table's ``rpm`` / ``tpm`` (which
  also apply per host when no endpoints are configured);
- per credential (optional): ``credential_rpm`` / ``credential_tpm``, keyed by the HMAC fingerprint of the
  credentials the attempt sends (every credential header and query parameter of the pipeline's tenant
  definition, ``[tenant]``; never the credential itself, not even in Redis). Replicas that share limits
  through Redis must share the ``[tenant] secret`` too, or each counts its own.

Before each attempt (``aurelis_admit``) the plugin reserves one request and an estimate of the tokens: the
prompt (request body bytes / ``chars_per_token``) plus the completion budget (``max_tokens`` or
``max_completion_tokens`` of the body, or its dialect's spelling: ``max_output_tokens``, ``maxOutputTokens``;
else ``default_max_tokens`` for a generation call, 0 for embeddings),
as the OpenAI cookbook advises. It answers how long the attempt must wait for that capacity; reservations queue
in order (see :mod:`aurelis_plugins._gcra`). A wait longer than ``max_wait`` reserves nothing and raises
:class:`RateLimitTimeout` (an :class:`~aurelis_core.health.EndpointUnavailable`: the retry plugin may send the
attempt to another endpoint; otherwise the caller gets it).

After the attempt (``aurelis_attempt_end``) the reservation is settled with what is known, nothing more:

- an attempt that never reached the upstream (refused by another plugin, a connect error) is refunded;
- the token reservation becomes the answer's total tokens, as its dialect reads its usage, when the pipeline read
  the body whole (a cacheable answer, ``attempt.body``); for a streamed answer the estimate stays charged;
- the upstream's rate-limit headers, as its dialect reads them (``x-ratelimit-remaining-requests|tokens``
  and ``x-ratelimit-reset-requests|tokens``, Anthropic's ``anthropic-ratelimit-*``), are authoritative: when
  they show less capacity than the local state, the local state moves to match (never the other way:
  requests sent since are not in the server's count yet); a 429's ``Retry-After`` holds the upstream's next
  request back until then.

Cache hits never get here: the pipeline calls ``aurelis_admit`` only for attempts it is about to send.

Local or shared: by default the limits live in this process (a GCRA in a dict). With a Redis -- ``redis_url``
(a single node), ``redis = {...}`` (any :class:`~aurelis_core.plugin.RedisConnection`: a node, Sentinel,
Cluster), else the config's ``[redis_connection]`` unless ``share = false`` -- they live in Redis (one Lua script
per reservation, atomic, on Redis's clock), so any number of processes share one limit. If Redis fails, the
plugin falls back to its local state (counted in ``stats.counters["ratelimit_redis_errors"]`` and logged) rather
than failing requests: each call gives up after ``redis_timeout`` (connect and read, no retries), and after a
failure Redis is not asked for ``redis_cooloff`` seconds (those reservations are local, counted in
``ratelimit_redis_skipped``); then one reservation probes it, and its answer makes the shared limits the ones
used again. So a frozen or dead Redis costs one request ``redis_timeout`` per
cool-off, not every request its freeze. An attempt is settled (refunded, corrected) where it was reserved.

Counters in ``pipeline.stats.counters``: ``ratelimit_waited`` (attempts that had to wait),
``ratelimit_rejected`` (``RateLimitTimeout`` raised).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Awaitable, Sequence
from typing import Any, NamedTuple

import attrs

from aurelis_core.plugin import (
    PROBE,
    Attempt,
    Dialect,
    Endpoint,
    EndpointUnavailable,
    OpenAI,
    RateLimits,
    RedisConnection,
    RequestContext,
    buffered_body,
    header_items,
    hookimpl,
    in_range,
    log_fault,
    non_negative,
    non_negative_int,
    positive,
    positive_int,
    probe_redis,
    redis_url,
    retry_after,
    url_parts,
    worth_logging,
)

from ._gcra import LocalGCRA, RedisGCRA, Reservation, Spec
from .codecs import codec_for_token

__all__ = ["RateLimit", "RateLimitConfig", "RateLimitTimeout"]

logger = logging.getLogger("aurelis.ratelimit")

#: The output budget of a body in every built-in dialect's spelling (OpenAI's chat and Anthropic's ``max_tokens``,
#: ``max_completion_tokens``, the Responses API's ``max_output_tokens``, Gemini's ``maxOutputTokens``), found
#: without parsing the body.
_MAX_TOKENS = re.compile(rb'"max(?:_completion_tokens|_tokens|_output_tokens|OutputTokens)"\s*:\s*(\d+)')
_REQUESTS, _TOKENS = "requests", "tokens"
#: How an attempt made outside a pipeline (without a dialect) is read.
OPENAI = OpenAI()
#: Bytes at the start of a whole answer where a stream's usage may begin (Anthropic's ``message_start``).
USAGE_HEAD = 1024


def _probe_redis_url(instance: Any, attribute: Any, value: str | None) -> str | None:
    return None if value is None else probe_redis(value)


@attrs.frozen
class RateLimitConfig:
    #: Requests per period for each upstream without its own ``rpm`` (None: unlimited).
    rpm: int | None = attrs.field(default=None, validator=positive_int)
    #: Tokens per period for each upstream without its own ``tpm`` (None: unlimited).
    tpm: int | None = attrs.field(default=None, validator=positive_int)
    #: Requests per period for each credential, across upstreams (None: unlimited).
    credential_rpm: int | None = attrs.field(default=None, validator=positive_int)
    #: Tokens per period for each credential, across upstreams (None: unlimited).
    credential_tpm: int | None = attrs.field(default=None, validator=positive_int)
    #: Seconds the limits are counted over (the "minute" of rpm/tpm).
    period: float = attrs.field(default=60.0, validator=positive)
    #: Share of a period's budget that may go at once (1.0: a full period's, as providers' buckets allow).
    burst: float = attrs.field(default=1.0, validator=in_range(0, 1, lo_open=True))
    #: Longest an attempt may wait for capacity; past it, RateLimitTimeout.
    max_wait: float = attrs.field(default=30.0, validator=non_negative)
    #: Share the limits across processes through this Redis (``redis://host:port/db``).
    redis_url: str | None = attrs.field(default=None, validator=redis_url, metadata={PROBE: _probe_redis_url})
    #: ... or through this one (a table: ``url``, or ``sentinels`` + ``service_name``, or ``cluster_nodes``).
    redis: RedisConnection | None = None
    #: Share through the config's ``[redis_connection]`` when neither of the above is given (false: local only).
    share: bool = True
    #: Prefix of the Redis keys.
    key_prefix: str = "aurelis:ratelimit:"
    #: Seconds a reservation waits for Redis to connect, and for its answer, before using the local limits.
    redis_timeout: float = attrs.field(default=0.15, validator=positive)
    #: Seconds Redis is left alone after it failed (reservations are local meanwhile); then one probes it.
    redis_cooloff: float = attrs.field(default=2.0, validator=positive)
    #: Completion tokens reserved for a chat/completions request that names no max_tokens.
    default_max_tokens: int = attrs.field(default=1024, validator=non_negative_int)
    #: Request-body bytes per prompt token in the estimate (4 is typical of English JSON for GPT tokenizers).
    chars_per_token: float = attrs.field(default=4.0, validator=positive)

    def __attrs_post_init__(self) -> None:
        if self.redis_url is not None and self.redis is not None:
            raise ValueError("'redis': give redis_url or redis, not both (redis_url is the short form of redis.url)")


def _connection(config: RateLimitConfig, shared: RedisConnection | None) -> RedisConnection | None:
    """The Redis the limits live in: the table's own, else the config's shared one (unless ``share = false``)."""
    if config.redis_url is not None:
        return RedisConnection(url=config.redis_url)
    if config.redis is not None:
        return config.redis
    return shared if config.share else None


class RateLimitTimeout(EndpointUnavailable):
    """Capacity for the attempt would come later than ``max_wait``; nothing was reserved or sent.

    ``retry_after`` is how long it would have had to wait, in seconds.
    """


class _Limit(NamedTuple):
    key: str
    kind: str  # _REQUESTS or _TOKENS
    interval: float
    tolerance: float
    upstream: bool  # the upstream's own limit (its x-ratelimit-* headers describe it), not a credential's


class _Held(NamedTuple):
    """What an attempt reserved, kept in ``ctx.state["ratelimit"]`` until the attempt ends."""

    attempt: Attempt
    limits: tuple[_Limit, ...]
    specs: list[Spec]
    #: Where the units were taken (Redis, or this process's state when Redis failed or cooled off): the
    #: attempt is settled there.
    limiter: LocalGCRA | RedisGCRA


class RateLimit:
    """The ``ratelimit`` plugin."""

    name = "ratelimit"
    Config = RateLimitConfig

    def __init__(self, config: RateLimitConfig, pipeline: Any) -> None:
        self.config = config
        self.health = pipeline.health
        self.stats = pipeline.stats
        self.local = LocalGCRA()
        connection = _connection(config, pipeline.config.redis_connection)
        self.shared = None if connection is None else RedisGCRA(
            connection, config.key_prefix, config.redis_timeout, config.redis_cooloff
        )
        self._upstream_limits: dict[str, tuple[_Limit, ...]] = {}
        self._credential_limits: dict[tuple[tuple[bytes, bytes], ...], tuple[_Limit, ...]] = {}
        self._tenant = pipeline.tenant

    # --- limits ------------------------------------------------------------------------------------------------

    def _limit(self, key: str, kind: str, per_period: int, upstream: bool) -> _Limit:
        interval = self.config.period / per_period
        capacity = max(1.0, self.config.burst * per_period)
        return _Limit(key, kind, interval, capacity * interval, upstream)

    def _limits_of(self, endpoint: Endpoint) -> tuple[_Limit, ...]:
        limits = self._upstream_limits.get(endpoint.name)
        if limits is None:
            config = self.config
            rpm = endpoint.rpm if endpoint.rpm is not None else config.rpm
            tpm = endpoint.tpm if endpoint.tpm is not None else config.tpm
            built = []
            if rpm is not None:
                built.append(self._limit(f"up:{endpoint.name}:{_REQUESTS}", _REQUESTS, rpm, True))
            if tpm is not None:
                built.append(self._limit(f"up:{endpoint.name}:{_TOKENS}", _TOKENS, tpm, True))
            limits = self._upstream_limits[endpoint.name] = tuple(built)
        return limits

    def _credential_limits_of(self, request: Any) -> tuple[_Limit, ...]:
        tenant = self._tenant
        credentials, _ = tenant.scan(header_items(request.headers))
        credential = (*credentials, *tenant.split_query(url_parts(request.url)[4])[1])
        limits = self._credential_limits.get(credential)
        if limits is None:
            # A fingerprint, not the credential: keys are visible to anyone who can read the Redis.
            fingerprint = tenant.fingerprint(credential).partition(":")[2] or "anonymous"
            config = self.config
            built = []
            if config.credential_rpm is not None:
                built.append(self._limit(f"cred:{fingerprint}:{_REQUESTS}", _REQUESTS, config.credential_rpm, False))
            if config.credential_tpm is not None:
                built.append(self._limit(f"cred:{fingerprint}:{_TOKENS}", _TOKENS, config.credential_tpm, False))
            limits = tuple(built)
            if len(self._credential_limits) < 10_000:  # bounded: credentials may come from end users
                self._credential_limits[credential] = limits
        return limits

    def estimate_tokens(self, ctx: RequestContext) -> int:
        """Tokens reserved for the attempt: prompt estimate plus completion budget (see the module docstring)."""
        request = ctx.request
        body = buffered_body(request) or b""
        match = _MAX_TOKENS.search(body)
        if match is not None:
            completion = int(match.group(1))
        else:
            # Embeddings spend no output; another generation call may spend up to the default.
            dialect = ctx.dialect
            path = url_parts(ctx.original.url)[3]
            generates = dialect.cacheable_path(path) and not dialect.embeds(path)
            completion = self.config.default_max_tokens if generates else 0
        return int(len(body) / self.config.chars_per_token) + completion

    def remaining(self, endpoint: Endpoint | str, kind: str = _REQUESTS) -> float | None:
        """Requests (or ``"tokens"``) this process could take from an upstream's limit right now, without
        waiting (local state only; ``None`` if that upstream has no such limit)."""
        name = endpoint if isinstance(endpoint, str) else endpoint.name
        for limit in self._upstream_limits.get(name, ()):
            if limit.kind == kind:
                return self.local.available(limit.key, limit.interval, limit.tolerance)
        return None

    # --- hooks -------------------------------------------------------------------------------------------------

    @hookimpl
    def aurelis_admit(self, ctx: RequestContext, attempt: Attempt) -> float | Awaitable[float | None] | None:
        limits = self._limits_of(self.health.upstream(ctx, attempt))
        if self.config.credential_rpm is not None or self.config.credential_tpm is not None:
            limits += self._credential_limits_of(ctx.request)
        if not limits:
            return None
        tokens = float(self.estimate_tokens(ctx)) if any(lim.kind == _TOKENS for lim in limits) else 0.0
        specs = [Spec(lim.key, lim.interval, lim.tolerance, 1.0 if lim.kind == _REQUESTS else tokens) for lim in limits]
        shared = self.shared
        if shared is not None and not shared.cooloff.may_ask():
            self.stats.counters["ratelimit_redis_skipped"] += 1
            shared = None  # cooling off after a failure: no network call
        if shared is None:
            held = _Held(attempt, limits, specs, self.local)
            return self._granted(ctx, held, self.local.reserve(specs, self.config.max_wait))
        held = _Held(attempt, limits, specs, shared)
        if ctx.is_async:
            return self._areserve(ctx, held, shared)
        try:
            reservation = shared.reserve(specs, self.config.max_wait)
        except shared.errors:
            held, reservation = self._redis_failed(held)
        return self._granted(ctx, held, reservation)

    async def _areserve(self, ctx: RequestContext, held: _Held, shared: RedisGCRA) -> float | None:
        try:
            reservation = await shared.areserve(held.specs, self.config.max_wait)
        except shared.errors:
            held, reservation = self._redis_failed(held)
        return self._granted(ctx, held, reservation)

    def _redis_failed(self, held: _Held) -> tuple[_Held, Reservation]:
        count = self.stats.counters["ratelimit_redis_errors"] = self.stats.counters["ratelimit_redis_errors"] + 1
        if worth_logging(count):
            log_fault(logger, logging.WARNING, "Redis failed (%d so far); using this process's own limits", count,
                      error=sys.exc_info()[1] or RuntimeError("no exception"))
        return held._replace(limiter=self.local), self.local.reserve(held.specs, self.config.max_wait)

    def _granted(self, ctx: RequestContext, held: _Held, reservation: Reservation) -> float | None:
        if not reservation.granted:
            self.stats.counters["ratelimit_rejected"] += 1
            name = self.health.upstream(ctx, held.attempt).name
            raise RateLimitTimeout(
                f"rate limit for {name}: capacity in {reservation.wait:.2f}s, more than max_wait "
                f"{self.config.max_wait:g}s",
                name,
                reservation.wait,
            )
        ctx.state["ratelimit"] = held
        if reservation.wait > 0:
            self.stats.counters["ratelimit_waited"] += 1
            return reservation.wait
        return None

    @hookimpl
    def aurelis_attempt_end(self, ctx: RequestContext, attempt: Attempt) -> None:
        held: _Held | None = ctx.state.get("ratelimit")
        if held is None or held.attempt is not attempt:
            return
        del ctx.state["ratelimit"]
        limiter = held.limiter
        http = ctx.http
        if attempt.status_code is None and isinstance(
            attempt.error, (EndpointUnavailable, http.ConnectError, http.ConnectTimeout, http.PoolTimeout)
        ):
            for spec in held.specs:  # it never reached the upstream
                limiter.correct(spec.key, delta=-spec.cost * spec.interval)
            return
        dialect = attempt.dialect or OPENAI
        used = self._usage(attempt, dialect)
        if used is not None:
            for spec, limit in zip(held.specs, held.limits, strict=True):
                if limit.kind == _TOKENS:
                    limiter.correct(spec.key, delta=(used - spec.cost) * spec.interval)
        headers = attempt.headers
        if headers is not None:
            # As the attempt's dialect reads them: x-ratelimit-*, anthropic-ratelimit-*...
            reported = dialect.rate_limits(headers)
            if reported is not None or attempt.status_code == 429:
                self._follow_headers(limiter, held.limits, reported, headers, attempt.status_code)

    # --- settling ----------------------------------------------------------------------------------------------

    @staticmethod
    def _usage(attempt: Attempt, dialect: Dialect) -> int | None:
        body = attempt.body
        if body is None or attempt.status_code is None or attempt.status_code >= 400:
            return None
        encoding = attempt.headers.get("content-encoding") if attempt.headers is not None else None
        if encoding:
            codec = codec_for_token(encoding)
            if codec is None:
                return None
            try:
                body = codec.decompress(body)
            except Exception:  # a body that does not decode settles nothing
                return None
        usage = dialect.usage(body[:USAGE_HEAD], body)
        return None if usage is None else usage.total

    @staticmethod
    def _follow_headers(
        limiter: LocalGCRA | RedisGCRA,
        limits: Sequence[_Limit],
        reported: RateLimits | None,
        headers: Any,
        status: int | None,
    ) -> None:
        wait = retry_after(headers) if status == 429 else None
        for limit in limits:
            if not limit.upstream:
                continue
            floor = None
            if wait is not None:
                floor = wait + limit.tolerance - limit.interval  # its next unit goes after Retry-After
            left = None if reported is None else getattr(reported, "remaining_" + limit.kind)
            if left is not None:
                floor = max(floor or 0.0, limit.tolerance - left * limit.interval)
                reset = getattr(reported, "reset_" + limit.kind)
                if left == 0 and reset is not None:  # none left: the next unit comes at the reset
                    floor = max(floor, reset + limit.tolerance - limit.interval)
            if floor is not None and floor > 0:
                limiter.correct(limit.key, floor=floor)

    @hookimpl
    def aurelis_close(self, pipeline: Any) -> Awaitable[None] | None:
        shared = self.shared
        if shared is None:
            return None
        if pipeline.is_async:
            return shared.aclose()
        shared.close()
        return None
