"""Where the Redis is: one connection setting every Redis-using plugin shares, each able to override it.

A fleet of replicas keeps its shared state in one Redis: the ``redis`` cache tier's entries, the ``ratelimit``
plugin's limits. Which Redis -- a single node, a Sentinel-watched master, a Cluster -- is said once, in the
``[redis_connection]`` table of the config::

    [redis_connection]
    sentinels = ["10.0.0.1:26379", "10.0.0.2:26379", "10.0.0.3:26379"]
    service_name = "aurelis"
    password = "..."

    # or: url = "redis://cache:6379/0"
    # or: cluster_nodes = ["10.0.1.1:6379", "10.0.1.2:6379"]

A plugin that names a Redis of its own (``[redis] url``, ``[ratelimit] redis_url`` or ``redis = {...}``) uses
that one instead. Timeouts, pool sizes and key prefixes stay each plugin's own: a cache lookup and a rate-limit
reservation do not afford the same wait. This module only describes the connection (the core does not import
redis-py); the plugins build their clients from it.
"""

from __future__ import annotations

from typing import Any

import attrs

from .validators import PROBE, _masked, each, host_port, label, non_empty, probe_redis, probe_tcp, redis_url

__all__ = ["DEFAULT_URL", "RedisConnection"]

#: The single node a connection that names none reaches (redis-py's own default).
DEFAULT_URL = "redis://127.0.0.1:6379/0"


def _probe_url(instance: RedisConnection, attribute: Any, value: str | None) -> str | None:
    return None if value is None else probe_redis(value)


def _probe_nodes(instance: RedisConnection, attribute: Any, value: tuple[str, ...] | None) -> str | None:
    problems = [p for p in (probe_tcp(node) for node in value or ()) if p]
    return "; ".join(problems) or None


#: The sentinels or cluster nodes: a non-empty list of "host:port".
_nodes: list[Any] = [non_empty, each(host_port)]


def _url_repr(url: str | None) -> str:
    # A password in the URL (often from the environment: ${REDIS_URL}) is never shown.
    return _masked(url) if url is not None else "None"


@attrs.frozen
class RedisConnection:
    """One Redis: ``url`` (a single node), ``sentinels`` + ``service_name`` (Sentinel), or ``cluster_nodes``
    (Cluster); ``password`` for the nodes of the last two (a single node takes it in its URL). None of them:
    the single node at ``redis://127.0.0.1:6379/0``."""

    #: A single node: ``redis://[[user]:password@]host[:port][/db]`` (or ``rediss://``, ``unix://``).
    url: str | None = attrs.field(default=None, validator=redis_url, metadata={PROBE: _probe_url}, repr=_url_repr)
    #: Sentinel: the sentinels to ask for the master, as ``"host:port"``.
    sentinels: tuple[str, ...] | None = attrs.field(default=None, validator=_nodes, metadata={PROBE: _probe_nodes})
    #: Sentinel: the monitored master's name.
    service_name: str = attrs.field(default="mymaster", validator=label)
    #: Cluster: some of its nodes, as ``"host:port"`` (``url``, ``sentinels``, ``cluster_nodes``: one at most).
    cluster_nodes: tuple[str, ...] | None = attrs.field(
        default=None, validator=_nodes, metadata={PROBE: _probe_nodes}
    )
    #: The password of the Sentinel or Cluster nodes (a single node takes it in ``url``). Never logged, never
    #: stored.
    password: str | None = attrs.field(default=None, repr=False, validator=label)

    def __attrs_post_init__(self) -> None:
        given = [n for n in ("url", "sentinels", "cluster_nodes") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of url, sentinels, cluster_nodes, not {' and '.join(given)}")
        # Options the chosen topology would silently ignore.
        if self.password is not None and self.url is not None:
            raise ValueError(
                "'password': is for sentinels and cluster_nodes; a single node takes it in its url "
                "(redis://:password@host:6379/0)"
            )
        if self.service_name != "mymaster" and self.sentinels is None:
            raise ValueError("'service_name': is the Sentinel master's name, used only with sentinels")

    @property
    def node_url(self) -> str:
        """The single node's URL: ``url``, or the default when the connection names nothing (not for Sentinel or
        Cluster)."""
        return self.url or DEFAULT_URL

    @property
    def is_cluster(self) -> bool:
        return self.cluster_nodes is not None

    def where(self) -> str:
        """Where it is, for messages (no password)."""
        if self.cluster_nodes is not None:
            return f"cluster {', '.join(self.cluster_nodes)}"
        if self.sentinels is not None:
            return f"sentinel master {self.service_name!r} ({', '.join(self.sentinels)})"
        url = self.url or DEFAULT_URL
        return url.rpartition("@")[2] if "@" in url else url
