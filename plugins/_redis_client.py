"""redis-py clients for a :class:`~aurelis_core.plugin.RedisConnection`, the same way for every plugin.

One place knows how a single node, a Sentinel-watched master and a Cluster are reached, for sync callers
(``redis``) and asyncio ones (``redis.asyncio``); the plugins pass their own timeouts and pool bounds. No
retries: a plugin that talks to Redis on a request's path falls back at once (a miss, local limits), it does not
try three more times (redis-py's default since 6.0). :data:`REDIS_ERRORS` is what such a call may raise, and a
:class:`Cooloff` keeps a plugin from asking a Redis that just failed again on every request.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aurelis_core.plugin import RedisConnection

try:
    import redis
    import redis.asyncio
    import redis.asyncio.cluster
    import redis.asyncio.retry
    import redis.asyncio.sentinel
    import redis.cluster
    import redis.retry
    import redis.sentinel
    from redis._parsers import AsyncCommandsParser
    from redis.backoff import NoBackoff
except ImportError:  # pragma: no cover - depends on the installed extras
    raise ImportError("talking to Redis needs: pip install 'aurelis[redis]'") from None

__all__ = ["REDIS_ERRORS", "Cooloff", "make_client", "one_slot_prefix", "split_address"]

#: What a failed call raises: redis-py wraps most socket errors, not all of them; and its "no Cluster node
#: reachable" is not a RedisError.
REDIS_ERRORS: tuple[type[BaseException], ...] = (
    redis.RedisError, redis.exceptions.RedisClusterException, OSError, asyncio.TimeoutError
)


class Cooloff:
    """After Redis failed, leave it alone for ``seconds``: callers use their local state without a network call;
    then one call probes it, and its answer (:meth:`answered`) makes Redis the one asked again.

    Not locked: under the GIL each step is an attribute store, and a race at worst lets one extra probe through.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        #: ``time.monotonic()`` until which Redis is not asked; 0 while it answers.
        self._skip_until = 0.0

    def may_ask(self) -> bool:
        """Whether a call may go to Redis now. ``False`` for ``seconds`` after a failure; then ``True`` once (the
        probe), and ``False`` again for the others until the probe's call ends."""
        until = self._skip_until
        if not until:
            return True
        now = time.monotonic()
        if now < until:
            return False
        self._skip_until = now + self.seconds
        return True

    @property
    def cooling_off(self) -> bool:
        """Whether Redis is being left alone after a failure."""
        return bool(self._skip_until)

    def failed(self) -> None:
        self._skip_until = time.monotonic() + self.seconds

    def answered(self) -> None:
        self._skip_until = 0.0


class _AnyMasterCommandsParser(AsyncCommandsParser):
    """redis-py's asyncio Cluster client reads the command table from the first master of the slot map while it
    initializes (on its first command), and retries no other: while that master is dead, the client never
    initializes and every command fails, whichever master holds its key. This parser asks the masters in turn
    and makes the first that answers the client's default node (where keyless commands go)."""

    def __init__(self, client: Any) -> None:
        super().__init__()
        self._client = client

    async def initialize(self, node: Any = None) -> None:
        candidates = [node] if node is not None else []
        candidates += [n for n in self._client.get_primaries() if n is not node]
        error: BaseException | None = None
        for candidate in candidates:
            try:
                await super().initialize(candidate)
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                error = exc
                continue
            self._client.nodes_manager.default_node = candidate
            return
        if error is not None:
            raise error
        await super().initialize(node)


def one_slot_prefix(connection: RedisConnection, prefix: str) -> str:
    """``prefix``, made a hash tag on Cluster (``{aurelis:ratelimit:}``) unless it has one: every key under it then
    lives in one slot, so one script may touch them all."""
    if not connection.is_cluster:
        return prefix
    start = prefix.find("{")
    if start >= 0 and prefix.find("}", start + 1) > start + 1:  # a non-empty tag: Cluster hashes by it already
        return prefix
    return "{" + prefix + "}"


def split_address(host_port: str) -> tuple[str, int]:
    host, _, port = host_port.rpartition(":")
    return host, int(port)


def make_client(
    connection: RedisConnection,
    is_async: bool,
    *,
    socket_timeout: float,
    connect_timeout: float,
    max_connections: int | None = None,
    blocking_pool: Any = None,
    sentinel_pool: Any = None,
    pool_timeout: float | None = None,
) -> Any:
    """A client of ``connection``: ``redis.asyncio``'s if ``is_async``, else ``redis``'s.

    ``max_connections`` bounds each pool (per node on Cluster). ``blocking_pool`` (a subclass of redis-py's
    ``BlockingConnectionPool`` of the right mode) makes a single node's pool wait up to ``pool_timeout`` for a
    free connection instead of raising; Sentinel and Cluster pools do not wait. ``sentinel_pool`` (a subclass of
    redis-py's ``SentinelConnectionPool`` of the right mode) is the pool class of a Sentinel master's client.
    """
    sentinel, cluster, retry = (
        (redis.asyncio.sentinel, redis.asyncio.cluster, redis.asyncio.retry)
        if is_async
        else (redis.sentinel, redis.cluster, redis.retry)
    )
    timeouts = {"socket_timeout": socket_timeout, "socket_connect_timeout": connect_timeout}
    options: dict[str, Any] = {**timeouts, "retry": retry.Retry(NoBackoff(), 0)}
    bound: dict[str, Any] = {} if max_connections is None else {"max_connections": max_connections}
    if connection.cluster_nodes is not None:
        nodes = [cluster.ClusterNode(*split_address(n)) for n in connection.cluster_nodes]
        # The sync client asks one master (the first of the slot map) for the command table as it is built: with
        # no retry, a dead first master would make every client fail to build. A retry moves to another master.
        # Then none: a lookup is one attempt, and a dead master's keys are its breaker's business.
        client = cluster.RedisCluster(
            startup_nodes=nodes, password=connection.password, **bound,
            **{**options, "retry": retry.Retry(NoBackoff(), len(nodes))},
        )
        if is_async:
            client.commands_parser = _AnyMasterCommandsParser(client)
        else:
            client.set_retry(retry.Retry(NoBackoff(), 0))
        return client
    if connection.sentinels is not None:
        sentinels = [split_address(n) for n in connection.sentinels]
        manager = sentinel.Sentinel(sentinels, sentinel_kwargs=timeouts, **timeouts)
        pool_class = {} if sentinel_pool is None else {"connection_pool_class": sentinel_pool}
        return manager.master_for(
            connection.service_name, password=connection.password, **pool_class, **bound, **options
        )
    url = connection.node_url
    redis_cls = redis.asyncio.Redis if is_async else redis.Redis
    if blocking_pool is None:
        return redis_cls.from_url(url, **bound, **options)
    pool = blocking_pool.from_url(url, timeout=pool_timeout, **bound, **options)
    return redis_cls.from_pool(pool)
