"""``redis``: the L2 cache tier, shared by every process that points at the same Redis.

One Redis string per entry, ``<prefix><cache key>``, holding the entry in the compact format of
:mod:`aurelis_plugins._serialize` (lz4-compressed by default), with the tier's TTL as Redis's own expiry
(``SET ... PX``), so Redis evicts stale answers itself. Hits are counted in one sorted set,
``<prefix>meta:hits`` (gathered in memory, ``ZINCRBY`` once a second, written behind and trimmed to
``track_hits`` members), which is what
warming reads to find the most wanted entries.

Topologies: a single node (``url``), Sentinel (``sentinels`` + ``service_name``) or Cluster
(``cluster_nodes``), with redis-py's asyncio client for async callers and its sync client for sync ones.

A cache must never cost the caller its request, nor time: timeouts are tight (100 ms to read, 50 ms to
connect, no retries), every error is a miss, and after ``breaker_failures`` consecutive failures the tier is
not even tried for ``breaker_reset`` seconds; then one request probes it, and its success closes the breaker.
So a dead or hung Redis costs a handful of requests one timeout each, then nothing.

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
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import attrs
from aurelis_plugins._validators import at_rest_codec

from aurelis_core.plugin import (
    PROBE,
    CacheEntry,
    RequestContext,
    each,
    hookimpl,
    host_port,
    label,
    non_empty,
    positive,
    positive_int,
    probe_redis,
    probe_tcp,
    redis_url,
)

from ._serialize import SerializeError, Unauthenticated, codec_named, dumps, loads
from ._tier import WarmConfig, WriteBehindTier
from ._writebehind import HitCounts, WriteBehind

try:
    import redis
    import redis.asyncio
    import redis.asyncio.cluster
    import redis.asyncio.retry
    import redis.asyncio.sentinel
    import redis.cluster
    import redis.retry
    import redis.sentinel
    from redis.backoff import NoBackoff
except ImportError:  # pragma: no cover - depends on the installed extras
    raise ImportError("the redis plugin needs: pip install 'aurelis[redis]'") from None

__all__ = ["MAX_ENTRY_BYTES", "Breaker", "RedisConfig", "RedisTier", "WarmConfig"]

logger = logging.getLogger("aurelis.cache.redis")

#: Errors that mean "Redis is not answering properly" (redis-py wraps socket errors, but not all of them).
TIER_ERRORS = (redis.RedisError, OSError, asyncio.TimeoutError)
#: Default ``max_entry_bytes`` (see the module docstring).
MAX_ENTRY_BYTES = 4 * 1024 * 1024



#: Where the tier connects when neither ``url``, ``sentinels`` nor ``cluster_nodes`` is given (as
#: ``RedisTier._make_client`` does): what ``aurelis config check`` probes then.
_DEFAULT_URL = "redis://127.0.0.1:6379/0"


def _probe_url(instance: RedisConfig, attribute: Any, value: str | None) -> str | None:
    if value is None and (instance.sentinels is not None or instance.cluster_nodes is not None):
        return None
    return probe_redis(value or _DEFAULT_URL, timeout=max(instance.connect_timeout, 1.0))


def _probe_nodes(instance: RedisConfig, attribute: Any, value: tuple[str, ...] | None) -> str | None:
    problems = [p for p in (probe_tcp(node, max(instance.connect_timeout, 1.0)) for node in value or ()) if p]
    return "; ".join(problems) or None


#: The sentinels or cluster nodes: a non-empty list of "host:port".
_nodes = [non_empty, each(host_port)]


@attrs.frozen
class RedisConfig:
    #: A single node: ``redis://[[user]:password@]host[:port][/db]`` (or ``rediss://``, ``unix://``).
    url: str | None = attrs.field(default=None, validator=redis_url, metadata={PROBE: _probe_url})
    #: Sentinel: the sentinels' ``"host:port"``, and the monitored master's name.
    sentinels: tuple[str, ...] | None = attrs.field(default=None, validator=_nodes, metadata={PROBE: _probe_nodes})
    service_name: str = attrs.field(default="mymaster", validator=label)
    #: Cluster: some of its nodes' ``"host:port"``.
    cluster_nodes: tuple[str, ...] | None = attrs.field(
        default=None, validator=_nodes, metadata={PROBE: _probe_nodes}
    )
    #: For Sentinel and Cluster (a single node takes it in ``url``). Never logged, never stored.
    password: str | None = attrs.field(default=None, repr=False, validator=label)
    prefix: str = "aurelis:"
    ttl: float | None = attrs.field(default=3600.0, validator=positive)
    codec: str = attrs.field(default="lz4", validator=at_rest_codec)
    socket_timeout: float = attrs.field(default=0.1, validator=positive)
    connect_timeout: float = attrs.field(default=0.05, validator=positive)
    breaker_failures: int = attrs.field(default=3, validator=positive_int)
    breaker_reset: float = attrs.field(default=5.0, validator=positive)
    queue_size: int = attrs.field(default=10_000, validator=positive_int)
    track_hits: int = attrs.field(default=100_000, validator=positive_int)
    warm: WarmConfig = attrs.field(factory=WarmConfig)
    #: Largest entry (body and headers, in bytes) stored; larger answers are passed through.
    max_entry_bytes: int = attrs.field(default=MAX_ENTRY_BYTES, validator=positive_int)

    def __attrs_post_init__(self) -> None:
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

    Not locked: under the GIL each step is a couple of attribute stores, and a race at worst lets one extra
    probe through.
    """

    def __init__(self, name: str, failures: int, reset: float) -> None:
        self.name = name
        self.failures = failures
        self.reset = reset
        self.consecutive = 0
        #: ``time.monotonic()`` until which calls are skipped; 0 while closed.
        self.open_until = 0.0

    def allow(self) -> bool:
        """May a call be made now? In the open state, the first call after ``reset`` seconds is the probe."""
        if not self.open_until:
            return True
        now = time.monotonic()
        if now < self.open_until:
            return False
        self.open_until = now + self.reset  # further calls wait for the probe's outcome
        return True

    @property
    def is_open(self) -> bool:
        return bool(self.open_until) and time.monotonic() < self.open_until

    def success(self) -> None:
        if self.open_until:
            logger.warning("cache tier %r is answering again", self.name)
        self.consecutive = 0
        self.open_until = 0.0

    def failure(self) -> None:
        self.consecutive += 1
        if self.consecutive >= self.failures:
            if not self.open_until:
                logger.warning(
                    "cache tier %r failed %d times in a row; skipping it for %g s at a time until it "
                    "answers again", self.name, self.consecutive, self.reset,
                )
            self.open_until = time.monotonic() + self.reset


#: A queued write: ("set", redis key, entry, milliseconds to live or None, cache key) or
#: ("hits", {redis key: count}, time).
Op = tuple[Any, ...]


class RedisTier(WriteBehindTier):
    """The ``redis`` plugin. ``wall_clock`` (default ``time.time``) is what entries' ages are read against."""

    name = "redis"
    Config = RedisConfig

    def __init__(self, config: RedisConfig, pipeline: Any) -> None:
        self.config = config
        self.pipeline = pipeline
        self.wall_clock: Callable[[], float] = time.time
        #: Largest entry stored (bytes); the pipeline does not buffer an answer no tier would take.
        self.max_entry_bytes = config.max_entry_bytes
        #: ``Tenant.entry_mac``: the tag of every value (see the module docstring).
        self._mac = pipeline.tenant.entry_mac
        self._codec = codec_named(config.codec, "[redis]")
        self._prefix = config.prefix
        self._hits_key = config.prefix + "meta:hits"
        self._breaker = Breaker(self.name, config.breaker_failures, config.breaker_reset)
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._aclient: Any = None
        self._aloop: asyncio.AbstractEventLoop | None = None
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
        nodes. Never the URL itself, which may hold a password."""
        config = self.config
        if config.sentinels is not None:
            return f"sentinels {','.join(config.sentinels)} ({config.service_name})"
        if config.cluster_nodes is not None:
            return f"cluster {','.join(config.cluster_nodes)}"
        parts = urlsplit(config.url or _DEFAULT_URL)
        if parts.scheme == "unix":
            return parts.path
        return f"{parts.hostname}:{parts.port or 6379}"

    # --- clients -----------------------------------------------------------------------------------------------
    # Made and closed differently on purpose (one sync client behind a lock; an asyncio client per event loop),
    # so hand-written here. The reads and writes that use them are written once, async, in ``_redis_async``; the
    # sync ones in ``_redis_sync`` are generated from it (see ``aurelis_core._unasync``).

    def _options(self) -> dict[str, Any]:
        config = self.config
        return {
            "socket_timeout": config.socket_timeout,
            "socket_connect_timeout": config.connect_timeout,
        }

    def sync_client(self) -> Any:
        """The sync client (made on first use: building a Cluster client already talks to the cluster)."""
        client = self._client
        if client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = self._make_client(redis.Redis, redis.sentinel, redis.cluster, redis.retry)
                client = self._client
        return client

    def async_client(self) -> Any:
        """The asyncio client of the running loop (asyncio connections belong to the loop that made them)."""
        loop = asyncio.get_running_loop()
        if self._aloop is not loop:
            self._aclient = self._make_client(
                redis.asyncio.Redis, redis.asyncio.sentinel, redis.asyncio.cluster, redis.asyncio.retry
            )
            self._aloop = loop
        return self._aclient

    def _make_client(self, redis_cls: Any, sentinel: Any, cluster: Any, retry: Any) -> Any:
        config = self.config
        # No retries: a failed call is a miss now, not three timeouts later.
        options = {**self._options(), "retry": retry.Retry(NoBackoff(), 0)}
        if config.cluster_nodes is not None:
            nodes = [cluster.ClusterNode(*_split(n)) for n in config.cluster_nodes]
            return cluster.RedisCluster(startup_nodes=nodes, password=config.password, **options)
        if config.sentinels is not None:
            sentinels = [_split(n) for n in config.sentinels]
            manager = sentinel.Sentinel(sentinels, sentinel_kwargs=self._options(), **self._options())
            return manager.master_for(config.service_name, password=config.password, **options)
        return redis_cls.from_url(config.url or "redis://127.0.0.1:6379/0", **options)

    # --- hooks -------------------------------------------------------------------------------------------------

    @hookimpl
    def aurelis_cache_get(self, ctx: RequestContext) -> Any:
        if not self._breaker.allow():
            self.pipeline.stats.tier_error(self.name, "skipped")
            return None
        key = self._prefix + ctx.key  # type: ignore[operator]
        if ctx.is_async:
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
        if self._breaker.is_open:
            self.pipeline.stats.tier_error(self.name, "skipped")
            return
        if entry.size > self.max_entry_bytes:
            self.pipeline.stats.counters["redis.too_large"] += 1
            return
        px = self._milliseconds_left(entry)
        if px is not None and px <= 0:
            return
        # Serialising (and compressing) happens in the writer, off the response's path.
        self.queue.put(("set", self._prefix + ctx.key, entry, px, ctx.key), ctx.is_async)  # type: ignore[operator]

    # Closing differs by mode on purpose (an asyncio client is forgotten with its loop), so not generated.
    async def _aclose_async(self) -> None:
        client, self._aclient, self._aloop = self._aclient, None, None
        if client is not None:
            await client.aclose()

    def _close_sync(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

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

    def _write_failed(self, exc: BaseException) -> None:
        self._breaker.failure()
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
        return pipe.execute(raise_on_error=False)  # type: ignore[no-any-return]

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


def _split(host_port: str) -> tuple[str, int]:
    host, _, port = host_port.rpartition(":")
    return host, int(port)


# The reads and writes, written once (async) and generated (sync): imported last, as they use this module's
# names (``TIER_ERRORS``) at import time.
from . import _redis_async, _redis_sync  # noqa: E402
