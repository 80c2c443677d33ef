"""``memory``: the L1 cache tier, in process, bounded by bytes and by age.

``policy = "lru"`` evicts the least recently used entry when the byte budget is full; ``"lfu"`` the least
frequently used, which keeps a hot set through a burst of one-off prompts. Both are ``cachetools`` caches
sized by each entry's bytes (body + headers + a fixed per-entry overhead), so ``max_bytes`` is a real bound,
unlike an item count that a few large answers can blow through. Expired entries are misses and are dropped
when met.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import attrs
import cachetools

from aurelis_core import CacheEntry, RequestContext, hookimpl

__all__ = ["MemoryCache", "MemoryConfig"]

#: Bytes charged per entry on top of its payload: the key string, the entry object, its header list and
#: tuples, the bytes objects' headers, and the cache's own bookkeeping. Measured with tracemalloc over 100k
#: chat-completion entries with two stored headers (benchmarks/bench_tiers.py: ~575 B each), rounded up.
ENTRY_OVERHEAD = 600


def _positive(instance: Any, attribute: Any, value: Any) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{attribute.name!r} must be > 0, got {value!r}")


@attrs.frozen
class MemoryConfig:
    policy: str = attrs.field(default="lru", validator=attrs.validators.in_(("lru", "lfu")))
    max_bytes: int = attrs.field(
        default=64 * 1024 * 1024, validator=[attrs.validators.instance_of(int), _positive]
    )
    #: Seconds an entry is served (a request's own ``ttl`` control overrides it); ``None``: until evicted.
    ttl: float | None = attrs.field(default=300.0, validator=_positive)


class MemoryCache:
    """The ``memory`` plugin."""

    name = "memory"
    Config = MemoryConfig

    def __init__(self, config: MemoryConfig, pipeline: Any) -> None:
        self.config = config
        cache_cls = cachetools.LRUCache if config.policy == "lru" else cachetools.LFUCache
        self._cache: cachetools.Cache[str, CacheEntry] = cache_cls(maxsize=config.max_bytes, getsizeof=_charge)
        # cachetools caches are not thread-safe, and sync clients may be shared across threads. An uncontended
        # lock costs ~50 ns.
        self._lock = threading.Lock()
        #: Bytes the tier may hold now: ``max_bytes`` until :meth:`shrink` lowers it (memory pressure).
        self.budget = config.max_bytes

    @property
    def currsize(self) -> int:
        """Bytes charged for the entries held now."""
        return int(self._cache.currsize)

    def __len__(self) -> int:
        return len(self._cache)

    @hookimpl
    def aurelis_cache_get(self, ctx: RequestContext) -> CacheEntry | None:
        key = ctx.key
        with self._lock:
            entry = self._cache.get(key)  # type: ignore[arg-type]
            if entry is None:
                return None
            if entry.expired(time.time(), self.config.ttl):
                del self._cache[key]  # type: ignore[arg-type]
                return None
        return entry

    @hookimpl
    def aurelis_cache_set(self, ctx: RequestContext, entry: CacheEntry, promote: bool) -> None:
        self.put(ctx.key, entry)  # type: ignore[arg-type]

    def put(self, key: str, entry: CacheEntry) -> bool:
        """Store ``entry`` under cache key ``key``; ``False`` if it has already expired here or is larger than
        the tier. ``aurelis_cache_set`` and warming from a lower tier both store through it."""
        if entry.expired(time.time(), self.config.ttl):
            return False
        budget = self.budget
        if _charge(entry) > budget:
            return False  # larger than the whole tier: storing it would evict everything else for nothing
        with self._lock:
            cache = self._cache
            cache[key] = entry
            while cache.currsize > budget:  # only after shrink(): cachetools enforces max_bytes itself
                cache.popitem()
        return True

    def shrink(self, fraction: float) -> int:
        """Give memory back: evict the entries the policy values least until the tier holds ``1 - fraction`` of
        what it holds now, and keep that as its budget from now on. Returns the bytes freed.

        Called under memory pressure (the ``tuner`` plugin's ``max_rss_bytes``): the L1 tier is the cheapest
        memory to give up, since the lower tiers still hold the answers.
        """
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
        with self._lock:
            cache = self._cache
            before = int(cache.currsize)
            target = int(min(self.budget, before) * (1 - fraction))
            while cache.currsize > target:
                cache.popitem()
            self.budget = target
            return before - int(cache.currsize)

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()


def _charge(entry: CacheEntry) -> int:
    return entry.size + ENTRY_OVERHEAD
