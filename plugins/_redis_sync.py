# Generated from plugins/_redis_async.py by aurelis_core._unasync (unasync); do not edit.
# Edit the source, then run: python -m aurelis_core._unasync
"""The ``redis`` tier's reads and writes on the request and write-behind paths, written once.

``_redis_async`` (for async clients) is the source; ``_redis_sync`` (for sync clients) is generated from it by
``python -m aurelis_core._unasync``. What differs between the modes on purpose stays in
:class:`~aurelis_plugins.redis_tier.RedisTier`: how clients are made (one sync client, one asyncio client per
event loop) and closed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._writebehind import SYNC
from .redis_tier import TIER_ERRORS, _busy

if TYPE_CHECKING:
    from aurelis_core.plugin import CacheEntry

    from .redis_tier import Op, RedisTier


def get(tier: RedisTier, key: str) -> CacheEntry | None:
    """The live entry at Redis key ``key``, or ``None``; an error counts against the breaker and is raised (the
    pipeline counts it as a miss)."""
    try:
        data = tier.sync_client().get(key)
    except TIER_ERRORS as exc:
        if _busy(exc):  # every connection busy: a miss, but Redis did not fail
            tier.pipeline.stats.tier_error(tier.name, "busy")
            return None
        tier._breaker.failure()
        raise
    tier._breaker.success()
    return tier._found(key, data, SYNC)


def write(tier: RedisTier, batch: list[Op]) -> None:
    """Write a batch of queued operations in one pipeline (not a transaction: each write stands alone)."""
    if tier._breaker.is_open:
        tier._skip_batch(batch)
        return
    pipe = tier.sync_client().pipeline(transaction=False)
    tier._fill(pipe, batch)
    pipe.execute()
    tier._breaker.success()


def top(tier: RedisTier, count: int) -> list[tuple[str, CacheEntry]]:
    """The ``count`` most hit live entries, most hit first, as (cache key, entry)."""
    client = tier.sync_client()
    keys = client.zrevrange(tier._hits_key, 0, count - 1)
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.get(key)
    return tier._decode_top(keys, pipe.execute())
