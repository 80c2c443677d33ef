"""``redis``: the L2 cache tier, shared by every process that points at the same Redis.

One Redis string per entry, ``<prefix><cache key>``, holding the entry in the compact format of
:mod:`aurelis_plugins._serialize` (lz4-compressed by default), with the tier's TTL as Redis's own expiry
(``SET ... PX``), so Redis evicts stale answers itself. Hits are counted in one sorted set,
``<prefix>meta:hits`` (gathered in memory, ``ZINCRBY`` once a second, written behind and trimmed to
``track_hits`` members), which is what
warming reads to find the most wanted entries.

Topologies: a single node (``url``), Sentinel (``sentinels`` + ``service_name``) or Cluster
(``cluster_nodes``), with redis-py's asyncio client for async callers and its sync client for sync ones. A table
that names none of them uses the config's ``[redis_connection]`` (the Redis every plugin shares), else
``redis://127.0.0.1:6379/0``.

A cache must never cost the caller its request, nor time: timeouts are tight (100 ms to read, 50 ms to
connect, no retries), every error is a miss, and after ``breaker_failures`` consecutive failures the tier is
not even tried until a probe is due: ``breaker_first_probe`` seconds later, then after half as long as it has
been failing, at most every ``breaker_reset`` seconds (:class:`Breaker`); a probe's success closes the breaker.
So a dead or hung Redis costs a handful of requests one timeout each, then one per ``breaker_reset``; and after a
Sentinel failover the cache is used again soon after the new master is up, not a whole reset later. On Cluster
there is a breaker per master (found from the key's slot): a dead master costs only the keys of its own slots,
the live ones keep serving, and write-behind batches are split by master, so a dead one's writes fail alone.

Connections: each client (the sync one, the asyncio one of each event loop) keeps at most ``pool_size``
connections (per node on Cluster). On a single node a lookup that finds them all busy waits up to
``pool_timeout`` for one to come free (redis-py's ``BlockingConnectionPool``); one that still finds none -- or,
on Sentinel and Cluster, whose pools do not wait, one beyond ``pool_size`` -- is a miss counted as
``redis.busy``: a busy pool is load, not a failing Redis, so it never opens the breaker. At start-up
(``aurelis_start``) the tier opens ``open_at_start`` connections (default: all ``pool_size``), so a fresh
replica's first burst finds them open instead of connecting while its event loop is busiest.

Every value carries a tag (:mod:`aurelis_plugins._serialize`): a MAC under the deployment's secret
(``[tenant] secret``) and the entry's cache key. A value whose tag does not verify -- planted by someone with
write access to Redis, copied to another key, truncated -- is a miss, counted as ``redis.unauthenticated`` and
warned about once; a value of another format version (an older release) is a plain miss.

Entries larger than ``max_entry_bytes`` (default 4 MiB) are not stored: Redis serves one command at a time, and
a value that size already takes ~30 ms on a 1 Gbit/s link, a third of the 100 ms read timeout. Counted in
``stats.counters["redis.too_large"]``.

Lifetimes: Redis expires each key itself (``PX``: what is left of the entry's TTL when it is written, never
more than the TTL). A value read back is also checked against ``wall_clock`` (default ``time.time``): one whose
``created`` stamp lies in the future beyond ``CLOCK_SKEW`` or is unknown is expired, whatever Redis says.
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import attrs

from aurelis_core.plugin import (
    PROBE,
    CacheEntry,
    RedisConnection,
    RequestContext,
    StateKey,
    each,
    hookimpl,
    host_port,
    label,
    log_fault,
    non_empty,
    non_negative_int,
    positive,
    positive_int,
    probe_redis,
    probe_tcp,
    redis_url,
)

from ._fleet_flight import (
    GAVE_UP_MS,
    LUA_LOOK,
    LUA_RELEASE,
    LUA_RENEW,
    FleetFlightConfig,
    Leases,
    LoopListener,
    ThreadListener,
)
from ._per_loop import PerLoop
from ._redis_client import REDIS_ERRORS, make_client
from ._serialize import SerializeError, Unauthenticated, codec_named, dumps, loads
from ._tier import WarmConfig, WriteBehindTier
from ._validators import at_rest_codec
from ._writebehind import HitCounts, WriteBehind

try:
    import redis
    import redis.asyncio
    import redis.asyncio.sentinel
except ImportError:  # pragma: no cover - depends on the installed extras
    raise ImportError("the redis plugin needs: pip install 'aurelis[redis]'") from None

__all__ = ["MAX_ENTRY_BYTES", "Breaker", "FleetFlightTier", "PoolBusy", "RedisConfig", "RedisTier", "WarmConfig"]

logger = logging.getLogger("aurelis.cache.redis")

#: Seconds each connection opened at start-up may take to connect (they connect together, maybe on a busy loop).
START_CONNECT_TIMEOUT = 1.0
#: Errors that mean "Redis is not answering properly".
TIER_ERRORS = REDIS_ERRORS
#: Default ``max_entry_bytes`` (see the module docstring).
MAX_ENTRY_BYTES = 4 * 1024 * 1024


class PoolBusy(redis.ConnectionError):
    """Every connection of the tier's pool was busy for ``pool_timeout`` (or, where pools do not wait, the pool
    was at ``pool_size``): the caller's lookup is a miss, but Redis did not fail, so the breaker is not told."""


def _is_pool_wait(exc: BaseException) -> bool:
    # redis-py raises a plain ConnectionError("No connection available.") when a BlockingConnectionPool's wait
    # runs out, from queue.Empty (sync) or a TimeoutError (asyncio); connecting errors have other causes or types.
    cause = exc.__cause__ or exc.__context__
    return type(exc) is redis.ConnectionError and isinstance(cause, (queue.Empty, TimeoutError))


class _SyncPool(redis.BlockingConnectionPool):
    """redis-py's blocking pool, raising :class:`PoolBusy` when its wait runs out."""

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        except redis.ConnectionError as exc:
            if _is_pool_wait(exc):
                raise PoolBusy(f"all {self.max_connections} connections busy") from exc
            raise


class _ConfiguredConnectTimeout:
    """An asyncio pool that gives every connection back with the configured connect timeout (the start hook
    opens them with a longer one). Mixed into each kind of pool the async client may have."""

    connection_kwargs: dict[str, Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: The connect timeout of a connection (re)made on a request's path.
        self.connect_timeout = self.connection_kwargs.get("socket_connect_timeout")

    async def release(self, connection: Any) -> None:
        # Also the connections that failed to open at start-up (redis-py gives them back itself): they reconnect
        # on a request's path, where a connect may take the configured timeout, not the start hook's.
        connection.socket_connect_timeout = self.connect_timeout
        await super().release(connection)  # type: ignore[misc]  # the pool class it is mixed into has it


class _AsyncSentinelPool(_ConfiguredConnectTimeout, redis.asyncio.sentinel.SentinelConnectionPool):
    """redis-py's asyncio Sentinel pool, giving connections back with the configured connect timeout."""


class _AsyncPool(_ConfiguredConnectTimeout, redis.asyncio.BlockingConnectionPool):
    """redis-py's asyncio blocking pool, raising :class:`PoolBusy` when its wait runs out, and giving every
    connection back with the configured connect timeout."""

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        except redis.ConnectionError as exc:
            if _is_pool_wait(exc):
                raise PoolBusy(f"all {self.max_connections} connections busy") from exc
            raise


def _busy(exc: BaseException) -> bool:
    """Whether ``exc`` says the client's pool is full (load), not that Redis failed."""
    return isinstance(exc, (PoolBusy, redis.exceptions.MaxConnectionsError))


#: Where the tier connects when neither its table nor ``[redis_connection]`` names a Redis: what
#: ``aurelis config check`` probes then (``RedisTier.problems``).
_DEFAULT_URL = "redis://127.0.0.1:6379/0"


def _probe_url(instance: RedisConfig, attribute: Any, value: str | None) -> str | None:
    # No url: the tier uses [redis_connection] (probed as that table) or the default (probed by
    # RedisTier.problems, which knows which of the two it is).
    return None if value is None else probe_redis(value, timeout=max(instance.connect_timeout, 1.0))


def _probe_nodes(instance: RedisConfig, attribute: Any, value: tuple[str, ...] | None) -> str | None:
    problems = [p for p in (probe_tcp(node, max(instance.connect_timeout, 1.0)) for node in value or ()) if p]
    return "; ".join(problems) or None


#: The sentinels or cluster nodes: a non-empty list of "host:port".
_nodes: list[Callable[[Any, Any, Any], None]] = [non_empty, each(host_port)]


@attrs.frozen
class RedisConfig:
    #: A single node: ``redis://[[user]:password@]host[:port][/db]`` (or ``rediss://``, ``unix://``).
    url: str | None = attrs.field(default=None, validator=redis_url, metadata={PROBE: _probe_url})
    #: Sentinel: the sentinels to ask for the master, as ``"host:port"``.
    sentinels: tuple[str, ...] | None = attrs.field(default=None, validator=_nodes, metadata={PROBE: _probe_nodes})
    #: Sentinel: the monitored master's name.
    service_name: str = attrs.field(default="mymaster", validator=label)
    #: Cluster: some of its nodes' ``"host:port"``.
    cluster_nodes: tuple[str, ...] | None = attrs.field(
        default=None, validator=_nodes, metadata={PROBE: _probe_nodes}
    )
    #: For Sentinel and Cluster (a single node takes it in ``url``). Never logged, never stored.
    password: str | None = attrs.field(default=None, repr=False, validator=label)
    #: Prefix of the tier's keys.
    prefix: str = "aurelis:"
    #: Seconds an entry lives (a request's own ``ttl`` control overrides it); ``None``: until evicted.
    ttl: float | None = attrs.field(default=3600.0, validator=positive)
    #: Compression at rest: ``"lz4"``, ``"gzip"``, ``"brotli"`` or ``"none"`` (values that do not shrink are kept
    #: as they are).
    codec: str = attrs.field(default="lz4", validator=at_rest_codec)
    #: Seconds a command may take.
    socket_timeout: float = attrs.field(default=0.1, validator=positive)
    #: Seconds a connection may take to open.
    connect_timeout: float = attrs.field(default=0.05, validator=positive)
    #: Consecutive failures that open the tier's breaker (the tier is skipped meanwhile).
    breaker_failures: int = attrs.field(default=3, validator=positive_int)
    #: The longest the tier is skipped before one probe request tries it again, seconds.
    breaker_reset: float = attrs.field(default=5.0, validator=positive)
    #: Seconds from the breaker opening to its first probe; later probes wait half as long as the tier has been
    #: failing, at most ``breaker_reset``.
    breaker_first_probe: float = attrs.field(default=0.25, validator=positive)
    #: Bound of the write-behind queue (writes beyond it are dropped and counted).
    queue_size: int = attrs.field(default=10_000, validator=positive_int)
    #: Keys kept in the hit-count set (``<prefix>meta:hits``, which warming reads to find the most wanted).
    track_hits: int = attrs.field(default=100_000, validator=positive_int)
    #: At start-up, copy the most hit live entries into the first tier that can take them (``memory``).
    warm: WarmConfig = attrs.field(factory=WarmConfig)
    #: Largest entry (body and headers, in bytes) stored; larger answers are passed through.
    max_entry_bytes: int = attrs.field(default=MAX_ENTRY_BYTES, validator=positive_int)
    #: Connections per client (per node on Cluster); a lookup finding all busy waits ``pool_timeout`` for one.
    pool_size: int = attrs.field(default=32, validator=positive_int)
    #: Seconds a lookup waits for a free connection when all are busy.
    pool_timeout: float = attrs.field(default=0.1, validator=positive)
    #: Connections opened at start-up (None: ``pool_size``; 0: none), so a new replica's first burst finds them.
    open_at_start: int | None = attrs.field(default=None, validator=non_negative_int)
    #: Fleet-wide single-flight (opt-in): one replica calls the upstream for a prompt new to the fleet, the
    #: others wait for its stored answer (see :mod:`aurelis_plugins._fleet_flight`).
    fleet_flight: FleetFlightConfig = attrs.field(factory=FleetFlightConfig)

    def __attrs_post_init__(self) -> None:
        if self.open_at_start is not None and self.open_at_start > self.pool_size:
            raise ValueError(f"'open_at_start': {self.open_at_start} is more than pool_size ({self.pool_size})")
        given = [n for n in ("url", "sentinels", "cluster_nodes") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of url, sentinels, cluster_nodes, not {' and '.join(given)}")
        # Options the chosen topology would silently ignore.
        if self.password is not None and self.sentinels is None and self.cluster_nodes is None:
            raise ValueError(
                "'password': is for sentinels and cluster_nodes; a single node takes it in its url "
                "(redis://:password@host:6379/0)"
            )
        if self.service_name != "mymaster" and self.sentinels is None:
            raise ValueError("'service_name': is the Sentinel master's name, used only with sentinels")


class Breaker:
    """Stop calling a backend that keeps failing: closed -> open (skip) -> one probe -> closed or open again.

    The probes come soon, then less often: the first ``first_probe`` seconds after it opened, each next one after
    half as long as the backend has been failing, at most ``reset`` seconds apart (0.25 s, 0.5, 0.75, 1.1, 1.7,
    2.5...). A short outage -- a Sentinel failover, a restarted node -- costs the cache about half its length
    again, not a whole ``reset``; a long one costs a probe (one request, one timeout) per ``reset``. The schedule
    follows the time since opening, not the failures counted, so a burst of lookups failing at once does not
    push the next probe back.

    Not locked: under the GIL each step is a couple of attribute stores, and a race at worst lets one extra
    probe through.
    """

    def __init__(
        self, name: str, failures: int, reset: float, clock: Callable[[], float] = time.monotonic,
        first_probe: float | None = None,
    ) -> None:
        self.name = name
        self.failures = failures
        self.reset = reset
        #: Seconds from opening to the first probe (``reset`` if not given; never more than it).
        self.first_probe = reset if first_probe is None else min(first_probe, reset)
        #: What the breaker reads the time from (a test may swap it for a fake clock).
        self.clock = clock
        self.consecutive = 0
        #: ``clock()`` until which calls are skipped; 0 while closed.
        self.open_until = 0.0
        #: ``clock()`` when it opened (meaningful while open).
        self.opened_at = 0.0

    def allow(self) -> bool:
        """May a call be made now? In the open state, the first call after the wait is the probe."""
        if not self.open_until:
            return True
        now = self.clock()
        if now < self.open_until:
            return False
        self.open_until = now + self.reset  # further calls wait for the probe's outcome
        return True

    @property
    def is_open(self) -> bool:
        return bool(self.open_until) and self.clock() < self.open_until

    def success(self) -> None:
        if self.open_until:
            logger.warning("cache tier %r is answering again after %.3g s", self.name, self.clock() - self.opened_at)
        self.consecutive = 0
        self.open_until = 0.0

    def failure(self) -> None:
        self.consecutive += 1
        if self.consecutive >= self.failures:
            now = self.clock()
            if not self.open_until:
                self.opened_at = now
                logger.warning(
                    "cache tier %r failed %d times in a row; skipping it, probing it again after %g s, then less "
                    "often (up to every %g s) until it answers", self.name, self.consecutive, self.first_probe,
                    self.reset,
                )
            self.open_until = now + min(self.reset, max(self.first_probe, (now - self.opened_at) / 2))


#: A queued write: ("set", redis key, entry, milliseconds to live or None, cache key),
#: ("hits", {redis key: count}, time) or, with ``fleet_flight``, ("release", lease key, token, given-up mark ms).
Op = tuple[Any, ...]

#: The lease (lease key, token) a request of this process took as the fleet's leader for its key.
LEASE: StateKey[tuple[str, str]] = StateKey("redis.fleet_flight.lease")


class RedisTier(WriteBehindTier):
    """The ``redis`` plugin. ``wall_clock`` (default ``time.time``) is what entries' ages are read against."""

    name = "redis"
    Config = RedisConfig

    def __new__(cls, config: RedisConfig, pipeline: Any) -> RedisTier:
        # With ``fleet_flight`` on, the tier is a :class:`FleetFlightTier`, whose hooks take part in the fleet's
        # flights. Chosen here, not tested on every request, so a tier without the option pays nothing for it.
        if config.fleet_flight.enabled and cls is RedisTier:
            cls = FleetFlightTier
        return super().__new__(cls)

    def __init__(self, config: RedisConfig, pipeline: Any) -> None:
        self.config = config
        self.pipeline = pipeline
        #: The Redis this tier uses: its own table's, else the config's ``[redis_connection]``, else the default.
        self.connection = _connection(config, pipeline.config.redis_connection)
        self.wall_clock: Callable[[], float] = time.time
        #: Largest entry stored (bytes); the pipeline does not buffer an answer no tier would take.
        self.max_entry_bytes = config.max_entry_bytes
        #: ``Tenant.entry_mac``: the tag of every value (see the module docstring).
        self._mac = pipeline.tenant.entry_mac
        self._codec = codec_named(config.codec, "[redis]")
        self._prefix = config.prefix
        self._hits_key = config.prefix + "meta:hits"
        self._breaker = self._new_breaker(self.name)
        #: On Cluster, a breaker per master ("host:port"), made on first use: one master's failures are its own.
        self._per_node = self.connection.is_cluster
        self._node_breakers: dict[str, Breaker] = {}
        self._client: Any = None
        self._client_lock = threading.Lock()
        #: Each live event loop's asyncio client (asyncio connections belong to the loop that made them).
        self._aclients: PerLoop[Any] = PerLoop()
        #: The start hook opening the asyncio pool's connections, while it does.
        self._opening: asyncio.Future[None] | None = None
        self._unreadable_logged = False
        self._unauthenticated_logged = False
        self.queue: WriteBehind[Op] = WriteBehind(
            self.name, self._write, self._awrite,
            on_error=self._write_failed, on_drop=self._dropped, maxsize=config.queue_size,
        )
        self.hits = HitCounts(self.queue)

    @property
    def location(self) -> str:
        """Where this tier connects, for log lines: ``host:port``, a socket path, or the Sentinel or Cluster
        nodes (the table's own, else ``[redis_connection]``'s). Never the URL itself, which may hold a password."""
        connection = self.connection
        if connection.sentinels is not None:
            return f"sentinels {','.join(connection.sentinels)} ({connection.service_name})"
        if connection.cluster_nodes is not None:
            return f"cluster {','.join(connection.cluster_nodes)}"
        parts = urlsplit(connection.url or _DEFAULT_URL)
        if parts.scheme == "unix":
            return parts.path
        return f"{parts.hostname}:{parts.port or 6379}"

    # --- clients -----------------------------------------------------------------------------------------------
    # Made and closed differently on purpose (one sync client behind a lock; an asyncio client per event loop),
    # so hand-written here. The reads and writes that use them are written once, async, in ``_redis_async``; the
    # sync ones in ``_redis_sync`` are generated from it (see ``aurelis_core._unasync``).

    def sync_client(self) -> Any:
        """The sync client (made on first use: building a Cluster client already talks to the cluster)."""
        client = self._client
        if client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = self._make_client(is_async=False)
                client = self._client
        return client

    def async_client(self) -> Any:
        """The asyncio client of the running loop (asyncio connections belong to the loop that made them)."""
        client = self._aclients.get()
        if client is None:
            client = self._make_client(is_async=True)
            self._aclients.put(client)
        return client

    def problems(self) -> list[str]:
        """What ``aurelis config check`` warns about beyond the table's own probes: the default Redis not
        answering, when neither the table nor ``[redis_connection]`` names one."""
        if self.connection.url != _DEFAULT_URL or self.config.url is not None:
            return []
        problem = probe_redis(_DEFAULT_URL, timeout=max(self.config.connect_timeout, 1.0))
        return [] if problem is None else [f"url: {problem}"]

    def _make_client(self, is_async: bool) -> Any:
        config = self.config
        return make_client(
            self.connection, is_async, socket_timeout=config.socket_timeout, connect_timeout=config.connect_timeout,
            max_connections=config.pool_size, blocking_pool=_AsyncPool if is_async else _SyncPool,
            sentinel_pool=_AsyncSentinelPool if is_async else None, pool_timeout=config.pool_timeout,
        )

    # Opening the pool differs by mode on purpose (threads can connect one after another; an event loop opens
    # all at once, and its lookups wait for that), so it is hand-written, not generated.

    @hookimpl
    def aurelis_start(self, pipeline: Any) -> Any:
        count = self.config.pool_size if self.config.open_at_start is None else self.config.open_at_start
        if pipeline.is_async:
            return self._astart(pipeline, count)
        try:
            # Cluster: a pool per node, opened on use. Building its client already talks to the cluster.
            pool = getattr(self.sync_client(), "connection_pool", None)
        except TIER_ERRORS as exc:
            self._open_failed(exc)
            pool = None
        if count and pool is not None:
            opened = []
            try:
                for _ in range(count):
                    opened.append(pool.get_connection())
            except TIER_ERRORS as exc:
                self._open_failed(exc)
            finally:
                for connection in opened:
                    pool.release(connection)
        return super().aurelis_start(pipeline)

    async def _astart(self, pipeline: Any, count: int) -> None:
        pool = getattr(self.async_client(), "connection_pool", None)
        if count and pool is not None:
            # Lookups made meanwhile (the first request's burst started us) wait for these connections rather
            # than each opening one of its own with the loop at its busiest.
            opening = self._opening = asyncio.ensure_future(self._aopen(pool, count))
            try:
                await opening
            finally:
                self._opening = None
        warming = super().aurelis_start(pipeline)
        if warming is not None:
            await warming

    async def _aopen(self, pool: Any, count: int) -> None:
        kwargs = pool.connection_kwargs
        configured = kwargs.get("socket_connect_timeout")
        # Connecting ``count`` sockets at once on a loop that may already be busy with a burst: each gets
        # START_CONNECT_TIMEOUT, not the 50 ms meant for one connection made on a request's path.
        kwargs["socket_connect_timeout"] = max(configured or 0.0, START_CONNECT_TIMEOUT)
        try:
            results = await asyncio.gather(*(pool.get_connection() for _ in range(count)), return_exceptions=True)
        finally:
            kwargs["socket_connect_timeout"] = configured
        failed = None
        for result in results:
            if isinstance(result, BaseException):
                failed = result
                continue
            result.socket_connect_timeout = configured  # for when it reconnects, on a request's path
            await pool.release(result)
        if failed is not None:
            self._open_failed(failed)

    def _open_failed(self, exc: BaseException) -> None:
        # Not a failed request: the first lookups will find out (and count) whether Redis is there.
        where = self.location
        log_fault(logger, logging.WARNING, "cache tier 'redis'%s could not open its connections at start-up",
                  f" at {where}" if where else "", error=exc)

    async def _after_opening(
        self, opening: asyncio.Future[None], lookup: Callable[[], Awaitable[CacheEntry | None]]
    ) -> CacheEntry | None:
        await asyncio.wait([opening])  # its errors are the start hook's to log
        return await lookup()

    def _new_breaker(self, name: str) -> Breaker:
        config = self.config
        return Breaker(name, config.breaker_failures, config.breaker_reset, first_probe=config.breaker_first_probe)

    def _breaker_for(self, client: Any, key: str) -> Breaker:
        """The breaker that answers for ``key``: the tier's, or on Cluster that of the master of its slot."""
        if not self._per_node:
            return self._breaker
        try:
            node = client.get_node_from_key(key).name
        except Exception:  # the slot map is not loaded yet (a new asyncio client), or does not cover the slot
            node = "unmapped slots"
        breaker = self._node_breakers.get(node)
        if breaker is None:
            breaker = self._node_breakers.setdefault(node, self._new_breaker(f"{self.name} {node}"))
        return breaker

    def _by_breaker(self, client: Any, batch: list[Op]) -> list[tuple[Breaker, list[Op]]]:
        """``batch`` split by the breaker of each write's key (one group but on Cluster)."""
        if not self._per_node:
            return [(self._breaker, batch)]
        groups: dict[str, tuple[Breaker, list[Op]]] = {}
        for op in batch:
            breaker = self._breaker_for(client, self._hits_key if op[0] == "hits" else op[1])
            groups.setdefault(breaker.name, (breaker, []))[1].append(op)
        return list(groups.values())

    @hookimpl
    def aurelis_cache_get(self, ctx: RequestContext) -> Any:
        # On Cluster the breaker is the key's master's, asked in ``get`` (it needs the client's slot map).
        if not self._per_node and not self._breaker.allow():
            self.pipeline.stats.tier_error(self.name, "skipped")
            return None
        if ctx.key is None:  # the core asks the tiers only about a request with a key
            return None
        key = self._prefix + ctx.key
        if ctx.is_async:
            opening = self._opening
            if opening is not None and not opening.done():
                return self._after_opening(opening, lambda: _redis_async.get(self, key))
            return _redis_async.get(self, key)
        return _redis_sync.get(self, key)

    def _found(self, key: str, data: bytes | None, is_async: bool) -> CacheEntry | None:
        if data is None:
            return None
        entry = self._decode(key, data)
        if entry is None or not entry.remaining(self.wall_clock(), self.config.ttl) > 0:
            return None
        self.hits.add(key, is_async)
        return entry

    def _decode(self, key: str, data: bytes) -> CacheEntry | None:
        """The entry stored under Redis key ``key``, or ``None`` (counted, said once) if it does not verify or
        cannot be read."""
        try:
            return loads(data, key[len(self._prefix):], self._mac)
        except Unauthenticated:
            count = self.pipeline.stats.tier_error(self.name, "unauthenticated")
            if not self._unauthenticated_logged:
                self._unauthenticated_logged = True
                logger.warning(
                    "cache tier 'redis' holds a value at %s whose tag does not verify (written under "
                    "another secret, altered, moved from another key, or planted); it is a miss (%d so far, "
                    "counted as redis.unauthenticated)", key, count,
                )
        except SerializeError as exc:
            # Written by another version (or not by us): a miss, said once.
            if not self._unreadable_logged:
                self._unreadable_logged = True
                logger.warning("cache tier 'redis' holds an unreadable value at %s: %s", key, exc)
        return None

    @hookimpl
    def aurelis_cache_set(self, ctx: RequestContext, entry: CacheEntry, promote: bool) -> None:
        self._store(ctx, entry)

    def _store(self, ctx: RequestContext, entry: CacheEntry) -> bool:
        """Queue ``entry``'s write; whether it was queued (not skipped: breaker open, too large, expired)."""
        if not self._per_node and self._breaker.is_open:
            self.pipeline.stats.tier_error(self.name, "skipped")
            return False
        if entry.size > self.max_entry_bytes:
            self.pipeline.stats.counters["redis.too_large"] += 1
            return False
        px = self._milliseconds_left(entry)
        if px is not None and px <= 0:
            return False
        # Serialising (and compressing) happens in the writer, off the response's path.
        if ctx.key is None:  # the core stores only answers to a request with a key
            return False
        self.queue.put(("set", self._prefix + ctx.key, entry, px, ctx.key), ctx.is_async)
        return True

    # Closing differs by mode on purpose (a live loop's asyncio client is closed on that loop), so not generated.
    async def _aclose_async(self) -> None:
        await self._aclients.aclose(_aclose_client)

    def _close_sync(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()
        self._aclients.close(_aclose_client)

    # --- writing -----------------------------------------------------------------------------------------------

    def _milliseconds_left(self, entry: CacheEntry) -> int | None:
        """What is left of the entry's lifetime, in milliseconds (``None``: no TTL; 0 or less: expired, or of
        unknown age). Never more than the TTL: an entry stamped in the future does not live longer."""
        left = entry.remaining(self.wall_clock(), self.config.ttl)
        if left == math.inf:
            return None
        return int(left * 1000) if left > 0 else 0

    def _fill(self, pipe: Any, batch: list[Op]) -> None:
        codec = self._codec
        counted = False
        for op in batch:
            if op[0] == "set":
                pipe.set(op[1], dumps(op[2], codec, op[4], self._mac), px=op[3])
            elif op[0] == "release":  # after the entry's own "set", queued before it
                pipe.eval(LUA_RELEASE, 1, op[1], op[2], op[3])
            else:
                for key, count in op[1].items():
                    pipe.zincrby(self._hits_key, count, key)
                counted = True
        if counted:
            # Keep the hit counts bounded: only the most hit keys matter for warming.
            pipe.zremrangebyrank(self._hits_key, 0, -(self.config.track_hits + 1))

    def _write(self, batch: list[Op]) -> None:
        _redis_sync.write(self, batch)

    async def _awrite(self, batch: list[Op]) -> None:
        await _redis_async.write(self, batch)

    def _skip_batch(self, batch: list[Op]) -> None:
        self.pipeline.stats.tier_error(self.name, "skipped")

    def _write_failed(self, exc: BaseException, breaker: Breaker | None = None) -> None:
        if _busy(exc):  # the pool was full: load, not a failing Redis
            self.pipeline.stats.tier_error(self.name, "busy")
            return
        (breaker or self._breaker).failure()
        super()._write_failed(exc)

    # --- warming, stats, clearing (also used by ``aurelis cache``) ----------------------------------------------

    def top(self, count: int) -> list[tuple[str, CacheEntry]]:
        """The ``count`` most hit live entries, most hit first, as (cache key, entry)."""
        return _redis_sync.top(self, count)

    async def atop(self, count: int) -> list[tuple[str, CacheEntry]]:
        return await _redis_async.top(self, count)

    def _decode_top(self, keys: list[bytes], values: list[bytes | None]) -> list[tuple[str, CacheEntry]]:
        found = []
        skip = len(self._prefix)
        now = self.wall_clock()
        for key, value in zip(keys, values, strict=True):
            if value is None:
                continue  # expired since it was counted
            name = key.decode()
            entry = self._decode(name, value)
            if entry is not None and entry.remaining(now, self.config.ttl) > 0:
                found.append((name[skip:], entry))
        return found

    def put(self, key: str, entry: CacheEntry) -> bool:
        """Store ``entry`` under cache key ``key`` now (not written behind); ``False`` if it has expired or is
        larger than ``max_entry_bytes``."""
        px = self._milliseconds_left(entry)
        if (px is not None and px <= 0) or entry.size > self.max_entry_bytes:
            return False
        self.sync_client().set(self._prefix + key, dumps(entry, self._codec, key, self._mac), px=px)
        return True

    def stats(self) -> dict[str, Any]:
        """What the tier holds: its entries and their bytes, hit counts, and how many other keys live under the
        prefix (another plugin's, another version's or another deployment's). Scans and reads every key under
        the prefix: for the CLI, not hot."""
        client = self.sync_client()
        entries = stored = others = 0
        for keys, values in self._scan(client):
            for key, value in zip(keys, values, strict=True):
                if self._is_entry(key, value):
                    entries += 1
                    stored += len(value)
                else:
                    others += 1
        scores = client.zrange(self._hits_key, 0, -1, withscores=True)
        return {
            "entries": entries,
            "bytes": stored,
            "hits": int(sum(score for _, score in scores)),
            "tracked_keys": len(scores),
            "other_keys": others,
        }

    def clear(self) -> int:
        """Delete the tier's entries and hit counts; returns how many entries were deleted.

        Only values this tier wrote (they verify under the deployment's secret) are deleted: other keys under the
        prefix, such as the ``ratelimit`` plugin's shared state (``aurelis:ratelimit:*`` by default), are left as
        they are, and counted in a warning.
        """
        client = self.sync_client()
        deleted = others = 0
        for keys, values in self._scan(client):
            ours = [key for key, value in zip(keys, values, strict=True) if self._is_entry(key, value)]
            others += len(keys) - len(ours)
            deleted += self._unlink(client, ours)
        self._unlink(client, [self._hits_key.encode()])
        if others:
            logger.warning(
                "cache tier 'redis' left %d keys under the prefix %r that are not entries it wrote "
                "(another plugin's, an older version's, or written under another secret)", others, self._prefix,
            )
        return deleted

    def _scan(self, client: Any) -> Any:
        """Batches of (keys, values) under the prefix, the hit-count set left out."""
        hits_key = self._hits_key.encode()
        batch: list[bytes] = []
        for key in client.scan_iter(match=self._prefix + "*", count=1000):
            if key == hits_key:
                continue
            batch.append(key)
            if len(batch) >= 500:
                yield batch, self._get_all(client, batch)
                batch = []
        if batch:
            yield batch, self._get_all(client, batch)

    def _get_all(self, client: Any, keys: list[bytes]) -> list[Any]:
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
        # A key of another type answers WRONGTYPE: an error object in its place, not an exception.
        result: list[Any] = pipe.execute(raise_on_error=False)  # redis-py types it as Any
        return result

    def _is_entry(self, key: bytes, value: Any) -> bool:
        """Whether ``value``, read at ``key``, is an entry this tier wrote: it verifies under the secret."""
        if not isinstance(value, bytes):
            return False  # gone since the scan, or not a string
        try:
            loads(value, key.decode()[len(self._prefix):], self._mac)
        except (SerializeError, UnicodeDecodeError):
            return False
        return True

    def _unlink(self, client: Any, keys: list[bytes]) -> int:
        # One UNLINK per key in a pipeline: in a cluster the keys live in different slots.
        if not keys:
            return 0
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.unlink(key)
        pipe.execute()
        return len(keys)


class FleetFlightTier(RedisTier):
    """The ``redis`` tier with ``fleet_flight`` on (see :mod:`aurelis_plugins._fleet_flight`).

    A coalescable request's lookup is a *look* (one script: the entry, or the key's lease, or who holds it),
    and a follower keeps looking until it has the answer or goes upstream. The leader's store queues the
    lease's release behind the entry's write; a leader that ends without storing gives its lease up when the
    request is observed.
    """

    def __init__(self, config: RedisConfig, pipeline: Any) -> None:
        super().__init__(config, pipeline)
        #: The leases this process holds, renewed while their upstream calls run.
        self.leases = Leases(config.fleet_flight, self._renew)
        # Per client: (client, look script, pub/sub listener or None); the asyncio clients' per event loop.
        self._sync_flight: tuple[Any, Any, ThreadListener | None] = (None, None, None)
        self._async_flights: PerLoop[tuple[Any, Any, LoopListener | None]] = PerLoop()

    # Each client's look script (redis-py sends its SHA, and the text again only if the server lost it) and
    # pub/sub listener (none on Cluster, where followers only look: a channel's messages would go to every node).
    # Per mode by hand, like the clients; the looks themselves are written once in ``_redis_async``.

    def _flight_script(self) -> Any:
        return self._sync_flight_of(self.sync_client())[1]

    def _listener(self) -> ThreadListener | None:
        return self._sync_flight_of(self.sync_client())[2]

    def _sync_flight_of(self, client: Any) -> tuple[Any, Any, ThreadListener | None]:
        if self._sync_flight[0] is not client:
            listener = None if self._per_node else ThreadListener(client)
            self._sync_flight = (client, client.register_script(LUA_LOOK), listener)
        return self._sync_flight

    def _aflight_script(self) -> Any:
        return self._async_flight_of(self.async_client())[1]

    def _alistener(self) -> LoopListener | None:
        return self._async_flight_of(self.async_client())[2]

    def _async_flight_of(self, client: Any) -> tuple[Any, Any, LoopListener | None]:
        made = self._async_flights.get()
        if made is None or made[0] is not client:
            listener = None if self._per_node else LoopListener(client)
            made = (client, client.register_script(LUA_LOOK), listener)
            self._async_flights.put(made)
        return made

    @hookimpl
    def aurelis_cache_get(self, ctx: RequestContext) -> Any:
        controls = ctx.controls
        # Only a request that may share its answer (coalescable, stored) leads or follows a fleet flight.
        if ctx.key is None or not controls.coalesce or controls.no_store:
            return super().aurelis_cache_get(ctx)
        if not self._per_node and not self._breaker.allow():
            self.pipeline.stats.tier_error(self.name, "skipped")
            return None
        key = self._prefix + ctx.key
        if ctx.is_async:
            opening = self._opening
            if opening is not None and not opening.done():
                return self._after_opening(opening, lambda: _redis_async.look(self, ctx, key))
            return _redis_async.look(self, ctx, key)
        return _redis_sync.look(self, ctx, key)

    def _lead(self, ctx: RequestContext, lease: str, token: str) -> None:
        """This request took ``lease``: it goes upstream for the fleet."""
        self.leases.took(lease, token)
        LEASE.set(ctx, (lease, token))
        self.pipeline.stats.counters["redis.fleet_flight.led"] += 1

    @hookimpl
    def aurelis_cache_set(self, ctx: RequestContext, entry: CacheEntry, promote: bool) -> None:
        stored = self._store(ctx, entry)
        lease = LEASE.pop(ctx)
        if lease is not None:
            # Queued after the entry's write: followers find the entry before the lease is gone.
            self._release(ctx, lease, stored)

    @hookimpl
    def aurelis_observe(self, ctx: RequestContext) -> None:
        lease = LEASE.pop(ctx)
        if lease is not None:  # the leader's request ended without storing an answer
            self._release(ctx, lease, stored=False)

    def _release(self, ctx: RequestContext, lease: tuple[str, str], stored: bool) -> None:
        key, token = lease
        self.leases.drop(key)
        if not stored:
            self.pipeline.stats.counters["redis.fleet_flight.gave_up"] += 1
        self.queue.put(("release", key, token, 0 if stored else GAVE_UP_MS), ctx.is_async)

    def _renew(self, held: dict[str, str]) -> None:
        pipe = self.sync_client().pipeline(transaction=False)
        lease_ms = self.config.fleet_flight.lease_ms
        for key, token in held.items():
            pipe.eval(LUA_RENEW, 1, key, token, lease_ms)
        pipe.execute()

    @hookimpl
    def aurelis_close(self, pipeline: Any) -> Any:
        self.leases.close()
        return super().aurelis_close(pipeline)


async def _aclose_client(client: Any) -> None:
    await client.aclose()


def _connection(config: RedisConfig, shared: RedisConnection | None) -> RedisConnection:
    if config.url is not None or config.sentinels is not None or config.cluster_nodes is not None:
        return RedisConnection(
            url=config.url, sentinels=config.sentinels, service_name=config.service_name,
            cluster_nodes=config.cluster_nodes, password=config.password,
        )
    return shared if shared is not None else RedisConnection(url=_DEFAULT_URL)


# The reads and writes, written once (async) and generated (sync): imported last, as they use this module's
# names (``TIER_ERRORS``) at import time.
from . import _redis_async, _redis_sync  # noqa: E402
