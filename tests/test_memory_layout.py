"""The memory tier's compact layout: interned headers and its own byte accounting.

Unit tests of the tier alone (no pipeline, no server): what it shares between entries, what it keeps per
entry, and that the bytes it charges always add up to what it holds.
"""

from __future__ import annotations

import httpx

from aurelis_core import CacheEntry, RequestContext, RequestControls
from aurelis_plugins.memory import _PROBE, ENTRY_OVERHEAD, MemoryCache, MemoryConfig


def answer(i: int, length: int = 100) -> CacheEntry:
    """An answer with fresh header objects, as a parsed response has: shared, repeating and unique values."""
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % length),
        (b"x-request-id", b"req_%08d" % i),
    ]
    return CacheEntry(200, [(bytes(bytearray(k)), bytes(bytearray(v))) for k, v in headers], b"x" * length)


def test_equal_headers_are_shared_and_unique_ones_stop_being_interned() -> None:
    tier = MemoryCache(MemoryConfig(), None)
    entries = [answer(i, length=100 + i % 3) for i in range(_PROBE + 10)]
    originals = [list(entry.headers) for entry in entries]
    for i, entry in enumerate(entries):
        assert tier.put(f"k{i}", entry)
    for entry, original in zip(entries, originals, strict=True):
        assert isinstance(entry.headers, tuple) and list(entry.headers) == original  # same pairs, same order
    first, last = entries[0].headers, entries[-1].headers
    assert first[0] is last[0]  # content-type: one tuple for all
    assert entries[0].headers[1] is entries[3].headers[1]  # content-length 100 repeats: shared
    assert first[2][0] is last[2][0]  # x-request-id: the name is shared...
    table = tier._headers
    # ...its values, all different, are no longer put in the table once the name is known to vary.
    assert (b"x-request-id", b"req_%08d" % (_PROBE + 5)) not in table.pairs
    assert (b"x-request-id", b"req_%08d" % 0) in table.pairs  # seen while it was still being watched


def test_interned_table_is_bounded() -> None:
    tier = MemoryCache(MemoryConfig(max_bytes=1 << 20), None)
    table = tier._headers
    for i in range(table.max_pairs * 3):
        # A repeating name (so it stays interned) with ever new values: the table starts over when full.
        tier.put(f"k{i}", CacheEntry(200, [(b"x-n", b"%d" % (i // 2))], b"{}"))
    assert 0 < len(table.pairs) <= table.max_pairs


def test_charged_bytes_add_up_through_replace_expiry_eviction_and_shrink() -> None:
    now = [1000.0]
    tier = MemoryCache(MemoryConfig(max_bytes=10 * (200 + ENTRY_OVERHEAD), ttl=60), None, clock=lambda: now[0])

    def held() -> int:
        return sum(entry.size + ENTRY_OVERHEAD for entry in tier._cache.values())

    for i in range(25):  # more than fit: evicted by bytes
        tier.put(f"k{i % 15}", answer(i))  # and some keys replaced
        assert tier.currsize == held() <= tier.budget
    stale = answer(99)
    stale.ttl = 10
    tier.put("stale", stale)
    now[0] += 11
    tier.put("k0", answer(100, length=300))  # a larger replacement
    assert tier.currsize == held()
    ctx = RequestContext(None, None, httpx, False, RequestControls())
    ctx.key = "stale"
    assert tier.aurelis_cache_get(ctx) is None
    assert tier.currsize == held()
    freed = tier.shrink(0.5)
    assert freed > 0 and tier.currsize == held() <= tier.budget
    tier.clear()
    assert tier.currsize == 0 and len(tier) == 0
