"""``memory``: the L1 cache tier, in process, bounded by bytes and by age.

``policy = "lru"`` evicts the least recently used entry when the byte budget is full; ``"lfu"`` the least
frequently used, which keeps a hot set through a burst of one-off prompts. ``cachetools`` keeps the order the
policy evicts in; the tier counts the bytes itself, charging each entry its body and headers plus a fixed
per-entry overhead, so ``max_bytes`` is a real bound, unlike an item count that a few large answers can blow
through. Expired entries are misses and are dropped when met.

Memory per entry, and why it is laid out this way (the target: at most 1.2x the bytes stored, for typical
chat completion answers): an entry of ~1.4 KB body and ~15 headers used to cost ~2.4 KB more than its payload,
mostly in its headers, a list of 2-tuples of two bytes objects each (~100 B of objects per header). Most of
those headers are the same on every answer (``content-type``, ``server``, ``openai-version``...), and
``content-length`` or a timing repeat often, so the tier interns them (:class:`_HeaderTable`): entries share
one tuple per distinct (name, value) pair and one bytes object per name, and hold their headers in a tuple
rather than a list (no over-allocation). Only the values that differ per answer (``x-request-id``, ``cf-ray``)
stay per entry. The tier also sizes entries itself instead of through cachetools' ``getsizeof``, which would
keep a second dict of sizes and an int object per entry (~70 B).

Expiry runs on a monotonic clock (``clock``, default ``time.monotonic``): when an entry is stored, its deadline
is the clock's now plus what is left of its lifetime (its TTL less its age, from ``CacheEntry.created`` on the
wall clock, so an entry promoted from a lower tier keeps only the lifetime it had left there), and from then on
only the monotonic clock decides. A wall clock stepped by NTP or a resumed VM neither expires the whole tier at
once nor keeps stale answers alive.

Entries larger than ``max_entry_bytes`` (default 4 MiB, 1/16 of the default budget) are not stored: one answer
must not evict a sixteenth of the hot set, and an answer too large for every tier is not even buffered by the
pipeline (see ``Pipeline``). Counted in ``stats.counters["memory.too_large"]``.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Literal

import attrs
import cachetools

from aurelis_core.plugin import CacheEntry, RequestContext, hookimpl, positive, positive_int

__all__ = ["MemoryCache", "MemoryConfig"]

#: Bytes charged per entry on top of its payload (body + header names and values). What an entry really costs
#: beyond that: the entry object and its ``created`` float, the body's and the key's object headers, the header
#: tuple, the cache's dict and order slots, and ~90 B for each header value that is not shared, less the shared
#: headers' bytes (charged at their length, held once). Measured with tracemalloc (benchmarks/bench_tiers.py):
#: ~480 B for small answers with three headers, one of them unique per answer; ~300 B for OpenAI answers, whose
#: ten shared headers offset more. Rounded up from the larger, so ``max_bytes`` bounds what the tier holds.
ENTRY_OVERHEAD = 512
#: Bytes charged per chunk of a stored event stream: the chunk's bytes object header (33 B, rounded up by the
#: allocator) and its slot in the tuple.
CHUNK_OVERHEAD = 56
#: Default ``max_entry_bytes``: 1/16 of the default ``max_bytes``, far above any chat answer (~1-10 KB).
MAX_ENTRY_BYTES = 4 * 1024 * 1024

#: The interned header table holds one pair per this many bytes of ``max_bytes`` (at least ``_MIN_PAIRS``, at
#: most ``_MAX_PAIRS``): ~150 B each for typical values, ~400 B for the longest interned, so it costs ~4% (at
#: most ~10%) on top of the budget, and at most ~2.5 MB typically.
_BYTES_PER_PAIR = 4096
_MIN_PAIRS = 256
_MAX_PAIRS = 16384
#: Names are interned for at most this many distinct header names; later ones are stored as they come.
_MAX_NAMES = 256
#: Values longer than this are never interned: a table of them would cost more than sharing saves.
_MAX_VALUE = 256
#: A header name whose first this many values all differed is taken to vary per answer (``x-request-id``) and
#: its values are no longer interned. Large enough that a header that merely varies a lot (``content-length``,
#: one of ~1000 values) shows a repeat first.
_PROBE = 256
_REPEATS = -1
_VARIES = -2


@attrs.frozen
class MemoryConfig:
    #: Which entry goes when the byte budget is full: least recently (``"lru"``) or least often (``"lfu"``) used.
    policy: Literal["lru", "lfu"] = "lru"
    #: The byte budget (payload plus ``ENTRY_OVERHEAD`` per entry).
    max_bytes: int = attrs.field(default=64 * 1024 * 1024, validator=positive_int)
    #: Seconds an entry is served (a request's own ``ttl`` control overrides it); ``None``: until evicted.
    ttl: float | None = attrs.field(default=300.0, validator=positive)
    #: Largest entry (body and headers, in bytes) the tier stores; ``None``: 4 MiB, or ``max_bytes`` if smaller.
    max_entry_bytes: int | None = attrs.field(default=None, validator=positive_int)

    def __attrs_post_init__(self) -> None:
        if self.max_entry_bytes is not None and self.max_entry_bytes > self.max_bytes:
            raise ValueError(
                f"'max_entry_bytes' ({self.max_entry_bytes}) must be <= 'max_bytes' ({self.max_bytes}): "
                "an entry larger than the tier is never stored"
            )


class _HeaderTable:
    """Interned header pairs, so entries that carry the same (name, value) share one tuple of two bytes.

    Bounded: at most ``max_pairs`` pairs (the table starts over when full; entries keep the tuples they have)
    and ``_MAX_NAMES`` names. Each name is watched until one of its values repeats (it is interned from then on)
    or its first ``_PROBE`` values all differ (only the name is interned from then on).
    """

    __slots__ = ("max_pairs", "names", "pairs")

    def __init__(self, max_pairs: int) -> None:
        self.max_pairs = max_pairs
        #: name -> [the interned name, its state: values seen so far while all differed, _REPEATS or _VARIES]
        self.names: dict[bytes, list[Any]] = {}
        self.pairs: dict[tuple[bytes, bytes], tuple[bytes, bytes]] = {}

    def intern(self, headers: Iterable[tuple[bytes, bytes]]) -> tuple[tuple[bytes, bytes], ...]:
        """``headers`` as a tuple of equal pairs, in the same order, sharing the table's where it has them."""
        names = self.names
        pairs = self.pairs
        out: list[tuple[bytes, bytes]] = []
        for name, value in headers:
            known = names.get(name)
            if known is None:
                if len(names) >= _MAX_NAMES:
                    out.append((name, value))
                    continue
                known = names[name] = [name, 0]
            name, state = known
            pair = (name, value)
            if state == _VARIES or len(value) > _MAX_VALUE:
                out.append(pair)
                continue
            shared = pairs.get(pair)
            if shared is not None:
                if state != _REPEATS:
                    known[1] = _REPEATS
                out.append(shared)
                continue
            if state != _REPEATS:
                known[1] = state = state + 1
                if state >= _PROBE:
                    known[1] = _VARIES
                    out.append(pair)
                    continue
            if len(pairs) >= self.max_pairs:
                pairs.clear()
            pairs[pair] = pair
            out.append(pair)
        return tuple(out)


class MemoryCache:
    """The ``memory`` plugin. ``clock`` (default ``time.monotonic``) times expiry; ``wall_clock`` (default
    ``time.time``) is what an entry's age (``CacheEntry.created``) is read against when it is stored. Both are
    attributes, so a test may swap them for a fake clock."""

    name = "memory"
    Config = MemoryConfig

    def __init__(
        self,
        config: MemoryConfig,
        pipeline: Any,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.pipeline = pipeline
        self.clock = clock
        self.wall_clock = wall_clock
        #: Largest entry stored (bytes); the pipeline does not buffer an answer no tier would take.
        self.max_entry_bytes = min(
            MAX_ENTRY_BYTES if config.max_entry_bytes is None else config.max_entry_bytes, config.max_bytes
        )
        cache_cls = cachetools.LRUCache if config.policy == "lru" else cachetools.LFUCache
        # Unbounded in items: the tier evicts by bytes itself (see the module docstring).
        self._cache: cachetools.Cache[str, CacheEntry] = cache_cls(maxsize=sys.maxsize)
        self._bytes = 0
        self._headers = _HeaderTable(max(_MIN_PAIRS, min(_MAX_PAIRS, config.max_bytes // _BYTES_PER_PAIR)))
        # cachetools caches are not thread-safe, and sync clients may be shared across threads. An uncontended
        # lock costs ~50 ns.
        self._lock = threading.Lock()
        #: Bytes the tier may hold now: ``max_bytes`` until :meth:`shrink` lowers it (memory pressure).
        self.budget = config.max_bytes

    @property
    def currsize(self) -> int:
        """Bytes charged for the entries held now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._cache)

    @hookimpl
    def aurelis_cache_get(self, ctx: RequestContext) -> CacheEntry | None:
        key = ctx.key
        if key is None:  # the core asks the tiers only about a request with a key
            return None
        with self._lock:
            entry = self._cache.get(key)
            if entry is None:
                return None
            expires_at = entry.expires_at  # every entry held here has one (put() sets it)
            if expires_at is not None and expires_at <= self.clock():
                del self._cache[key]
                self._bytes -= _charge(entry)
                return None
        return entry

    @hookimpl
    def aurelis_cache_set(self, ctx: RequestContext, entry: CacheEntry, promote: bool) -> None:
        if ctx.key is not None:  # the core stores only answers to a request with a key
            self.put(ctx.key, entry)

    def put(self, key: str, entry: CacheEntry) -> bool:
        """Store ``entry`` under cache key ``key``; ``False`` if it has already expired here, or is larger than
        ``max_entry_bytes`` or the tier. ``aurelis_cache_set`` and warming from a lower tier both store through it.

        What is left of the entry's lifetime (its ``ttl``, else the tier's, less its age) becomes a deadline on
        the monotonic ``clock`` (see the module docstring). The entry's headers are replaced by their interned
        equivalent (equal pairs, in the same order): the entry may be shared with other tiers and the response,
        which read the same headers either way. An entry that a memory tier holds already (it has a deadline)
        is stored as a copy, so each tier keeps its own deadline.
        """
        left = entry.remaining(self.wall_clock(), self.config.ttl)
        if not left > 0:
            return False
        size = entry.size
        if size > self.max_entry_bytes:
            if self.pipeline is not None:
                self.pipeline.stats.counters["memory.too_large"] += 1
            return False
        chunks = entry.chunks
        charge = size + ENTRY_OVERHEAD  # _charge(entry), without the call: every put pays this
        if chunks is not None:
            charge += CHUNK_OVERHEAD * len(chunks)
        if charge > self.budget:
            return False  # larger than the whole tier: storing it would evict everything else for nothing
        if entry.expires_at is not None:
            entry = entry.copy()
        entry.expires_at = self.clock() + left
        with self._lock:
            entry.headers = self._headers.intern(entry.headers)
            cache = self._cache
            # cachetools' methods are Python code: each call here costs ~0.2 us, so a new key (the usual put)
            # makes one membership test and one store.
            if key in cache:
                self._bytes -= _charge(cache.pop(key))
            # Room is made before the entry goes in, so it is never its own victim (with LFU, a new entry has
            # the lowest count of all).
            if self._bytes + charge > self.budget:
                self._evict(self.budget - charge)
            cache[key] = entry
            self._bytes += charge
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
            before = self._bytes
            self.budget = int(min(self.budget, before) * (1 - fraction))
            self._evict(self.budget)
            return before - self._bytes

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()
            self._bytes = 0

    def _evict(self, budget: int) -> None:
        """Evict in policy order until the charged bytes fit ``budget`` (the caller holds the lock)."""
        cache = self._cache
        while self._bytes > budget:
            self._bytes -= _charge(cache.popitem()[1])


def _charge(entry: CacheEntry) -> int:
    # Recomputed when an entry leaves rather than kept per entry: an entry's body and headers never change
    # once stored (interning keeps every length), so it is the same number.
    chunks = entry.chunks
    return entry.size + ENTRY_OVERHEAD + (0 if chunks is None else CHUNK_OVERHEAD * len(chunks))
