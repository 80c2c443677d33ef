"""Warming: copy a lower tier's most hit entries into the ``memory`` tier when a pipeline starts.

A tier with ``warm = {on_start = true, top = N}`` in its table reads its N most hit live entries in its
``aurelis_start`` and hands them here. Keys are the cache keys as stored, already tenant-scoped digests, so
copying by key keeps every tenant's entries in that tenant's scope.
"""

from __future__ import annotations

import logging
from typing import Any

from aurelis_core import CacheEntry

__all__ = ["copy_into_memory"]

logger = logging.getLogger("aurelis")


def copy_into_memory(pipeline: Any, tier: str, entries: list[tuple[str, CacheEntry]]) -> int:
    """Put ``entries`` (most hit first) into the pipeline's ``memory`` tier; returns how many it took."""
    try:
        memory = pipeline.plugin("memory")
    except KeyError:
        logger.warning("aurelis: [%s] warm.on_start is set but the 'memory' tier is not enabled", tier)
        return 0
    # Least hit first, so with an LRU the most hit end up most recently used.
    copied = sum(1 for key, entry in reversed(entries) if memory.put(key, entry))
    logger.info("aurelis: warmed 'memory' with %d entries from %r", copied, tier)
    return copied
