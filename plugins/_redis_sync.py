# Generated from plugins/_redis_async.py by aurelis_core._unasync (unasync); do not edit.
# Edit the source, then run: python -m aurelis_core._unasync
"""The ``redis`` tier's reads and writes on the request and write-behind paths, written once.

``_redis_async`` (for async clients) is the source; ``_redis_sync`` (for sync clients) is generated from it by
``python -m aurelis_core._unasync``. What differs between the modes on purpose stays in
:class:`~aurelis_plugins.redis_tier.RedisTier`: how clients are made (one sync client, one asyncio client per
event loop) and closed.
"""

from __future__ import annotations

import time
from time import monotonic
from typing import TYPE_CHECKING

from ._fleet_flight import FIRST_PAUSE, FOUND, GAVE_UP, LEAD, lease_key
from ._writebehind import SYNC
from .redis_tier import TIER_ERRORS, _busy

if TYPE_CHECKING:
    from aurelis_core.plugin import CacheEntry, RequestContext

    from .redis_tier import FleetFlightTier, Op, RedisTier


def get(tier: RedisTier, key: str) -> CacheEntry | None:
    """The live entry at Redis key ``key``, or ``None``; an error counts against the breaker and is raised (the
    pipeline counts it as a miss)."""
    client = tier.sync_client()
    breaker = tier._breaker_for(client, key)
    # The hook asked the tier's breaker already; a Cluster master's is asked here.
    if tier._per_node and not breaker.allow():
        tier.pipeline.stats.tier_error(tier.name, "skipped")
        return None
    try:
        data = client.get(key)
    except TIER_ERRORS as exc:
        if _busy(exc):  # every connection busy: a miss, but Redis did not fail
            tier.pipeline.stats.tier_error(tier.name, "busy")
            return None
        breaker.failure()
        raise
    breaker.success()
    return tier._found(key, data, SYNC)


def look(tier: FleetFlightTier, ctx: RequestContext, key: str) -> CacheEntry | None:
    """The live entry at Redis key ``key``, waiting for the fleet's leader to store it if another replica
    leads; ``None`` when this request is to go upstream (it leads, its leader gave up or died and another
    took over, or ``wait`` passed). Errors are the tier's, as in :func:`get`: a follower stops waiting."""
    lease = lease_key(key)
    leases = tier.leases
    if leases.holds(lease):
        return None  # a request of this process leads: this one joins its local flight
    client = tier.sync_client()
    breaker = tier._breaker_for(client, key)
    if tier._per_node and not breaker.allow():
        tier.pipeline.stats.tier_error(tier.name, "skipped")
        return None
    config = leases.config
    token = leases.new_token()
    counters = tier.pipeline.stats.counters
    deadline = monotonic() + config.wait
    pause = FIRST_PAUSE
    listener = tier._listener()
    told = None  # set by the listener when the leader releases the lease
    try:
        while True:
            try:
                reply = tier._flight_script()(keys=[key, lease], args=[token, config.lease_ms])
            except TIER_ERRORS as exc:
                if _busy(exc):
                    tier.pipeline.stats.tier_error(tier.name, "busy")
                    return None
                breaker.failure()
                raise
            breaker.success()
            outcome = reply[0]
            if outcome == FOUND:
                if pause != FIRST_PAUSE:
                    counters["redis.fleet_flight.followed"] += 1
                return tier._found(key, reply[1], SYNC)
            if outcome == LEAD:
                if pause != FIRST_PAUSE:  # it followed a leader whose lease expired
                    counters["redis.fleet_flight.took_over"] += 1
                tier._lead(ctx, lease, token)
                return None
            if outcome == GAVE_UP:
                return None
            left = deadline - monotonic()
            if left <= 0:
                counters["redis.fleet_flight.waited_out"] += 1
                return None
            if told is None and listener is not None:
                try:
                    told = listener.watch(lease)
                except TIER_ERRORS:
                    listener = None  # looking alone tells too, only later
            if told is not None and listener is not None:
                if listener.pause(told, min(pause, left)):
                    counters["redis.fleet_flight.told"] += 1  # woken by the leader's message, not its next look
            else:
                time.sleep(min(pause, left))
            pause = min(pause * 2, config.poll)
    finally:
        if told is not None and listener is not None:
            try:
                listener.unwatch(lease, told)
            except TIER_ERRORS:
                pass  # the listener's connection is gone: its subscriptions with it


def write(tier: RedisTier, batch: list[Op]) -> None:
    """Write a batch of queued operations in one pipeline (not a transaction: each write stands alone); on
    Cluster, one pipeline per master, so a dead master's writes fail (and count against its breaker) alone."""
    client = tier.sync_client()
    for breaker, ops in tier._by_breaker(client, batch):
        if breaker.is_open:
            tier._skip_batch(ops)
            continue
        pipe = client.pipeline(transaction=False)
        tier._fill(pipe, ops)
        try:
            pipe.execute()
        except TIER_ERRORS as exc:
            tier._write_failed(exc, breaker)
            continue
        breaker.success()


def top(tier: RedisTier, count: int) -> list[tuple[str, CacheEntry]]:
    """The ``count`` most hit live entries, most hit first, as (cache key, entry)."""
    client = tier.sync_client()
    keys = client.zrevrange(tier._hits_key, 0, count - 1)
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.get(key)
    return tier._decode_top(keys, pipe.execute())
