"""Warming: copy a lower tier's most hit entries into the first tier of the pipeline when it starts.

A tier with ``warm = {on_start = true, top = N}`` in its table reads its N most hit live entries in its
``aurelis_start`` and hands them here. They go into the first cache tier of the pipeline that can store an
entry by key (a :class:`~aurelis_core.plugin.WarmTarget`: ``memory`` in the usual layout, or any tier that
implements ``put``), when that tier is asked before the one warming it. Keys are the cache keys as stored,
already tenant-scoped digests, so copying by key keeps every tenant's entries in that tenant's scope.
"""

from __future__ import annotations

from aurelis_core.plugin import CacheEntry, Pipeline, WarmTarget, component_logger

__all__ = ["copy_into_first_tier"]


def copy_into_first_tier(pipeline: Pipeline, tier: str, entries: list[tuple[str, CacheEntry]]) -> int:
    """Put ``entries`` (most hit first) into the pipeline's first tier that can take them, if it is asked before
    ``tier`` (the tier they come from); returns how many it took."""
    for name, target in zip(pipeline.tiers, pipeline.cache_tiers(), strict=True):
        if name == tier:
            break  # nothing before it can store by key: there is nowhere faster to warm
        if isinstance(target, WarmTarget):
            # Least hit first, so with an LRU the most hit end up most recently used.
            copied = sum(1 for key, entry in reversed(entries) if target.put(key, entry))
            component_logger(f"cache.{name}").info("warmed %r with %d entries from %r", name, copied, tier)
            return copied
    component_logger(f"cache.{tier}").warning(
        "[%s] warm.on_start is set but no tier listed before it can take entries (such as 'memory')", tier
    )
    return 0
