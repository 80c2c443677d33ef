"""Lifetimes when the wall clock steps (NTP, a resumed VM): the memory tier times expiry on a monotonic clock and
carries a promoted entry's remaining lifetime over; the shared tiers treat an entry of unknown age (``created``
NaN, or in the future beyond the skew allowance) as expired. Fake clocks, no sleeps."""

from __future__ import annotations

import math
import time

import httpx
from aurelis_plugins.memory import MemoryCache, MemoryConfig

from aurelis_core import CacheEntry, RequestContext, RequestControls


class Clocks:
    """A monotonic clock and a wall clock that tests move by hand. The wall clock runs from the real time (the
    entries the pipeline makes are stamped with it), offset by what the test stepped it by; margins are many
    seconds, so the real time that passes during a test never matters."""

    def __init__(self) -> None:
        self.mono = 1000.0
        self.offset = 0.0

    def monotonic(self) -> float:
        return self.mono

    def time(self) -> float:
        return time.time() + self.offset


def entry(created: float | None = None, ttl: float | None = None) -> CacheEntry:
    return CacheEntry(200, [(b"content-type", b"application/json")], b'{"ok":true}', created=created, ttl=ttl)


def lookup(tier: MemoryCache, key: str) -> CacheEntry | None:
    ctx = RequestContext(None, None, httpx, False, RequestControls())
    ctx.key = key
    return tier.aurelis_cache_get(ctx)


# --- memory: monotonic expiry ------------------------------------------------------------------------------------


def test_memory_expiry_holds_when_the_wall_clock_steps() -> None:
    clocks = Clocks()
    tier = MemoryCache(MemoryConfig(ttl=300), None, clock=clocks.monotonic, wall_clock=clocks.time)
    assert tier.put("k", entry())
    clocks.offset = 86400.0  # the wall clock jumps a day ahead: nothing expires with it
    assert lookup(tier, "k") is not None
    clocks.offset = -86400.0  # and a day back: nothing lives longer with it
    clocks.mono += 299
    assert lookup(tier, "k") is not None
    clocks.mono += 1
    assert lookup(tier, "k") is None


def test_memory_carries_over_what_is_left_of_a_lifetime() -> None:
    from aurelis_core._models import CLOCK_SKEW

    clocks = Clocks()
    tier = MemoryCache(MemoryConfig(ttl=300), None, clock=clocks.monotonic, wall_clock=clocks.time)
    now = clocks.time()
    assert tier.put("aged", entry(created=now - 200))  # 100 s left of the tier's 300
    assert tier.put("own-ttl", entry(created=now - 20, ttl=30))  # 10 s left of its own 30
    assert not tier.put("gone", entry(created=now - 301))
    assert not tier.put("unknown", entry(created=math.nan))
    assert not tier.put("future", entry(created=now + CLOCK_SKEW + 60))
    assert tier.put("skewed", entry(created=now + CLOCK_SKEW / 2))  # within the allowance: a fresh entry
    clocks.mono += 9
    assert lookup(tier, "own-ttl") is not None
    clocks.mono += 2
    assert lookup(tier, "own-ttl") is None
    clocks.mono += 88  # 99 s
    assert lookup(tier, "aged") is not None
    clocks.mono += 2
    assert lookup(tier, "aged") is None
    assert lookup(tier, "skewed") is not None


def test_an_entry_two_memory_tiers_hold_keeps_a_deadline_in_each() -> None:
    clocks = Clocks()
    short = MemoryCache(MemoryConfig(ttl=10), None, clock=clocks.monotonic, wall_clock=clocks.time)
    long = MemoryCache(MemoryConfig(ttl=100), None, clock=clocks.monotonic, wall_clock=clocks.time)
    shared = entry()
    assert short.put("k", shared) and long.put("k", shared)
    clocks.mono += 50
    assert lookup(short, "k") is None
    assert lookup(long, "k") is not None
