"""Lifetimes when the wall clock steps (NTP, a resumed VM): the memory tier times expiry on a monotonic clock and
carries a promoted entry's remaining lifetime over; the shared tiers treat an entry of unknown age (``created``
NaN, or in the future beyond the skew allowance) as expired. Fake clocks, no sleeps."""

from __future__ import annotations

import math
import time
from pathlib import Path

import httpx
import pytest

from aurelis_core import CacheEntry, Pipeline, RequestContext, RequestControls
from aurelis_core.testing import SimulatedServer
from aurelis_plugins.memory import MemoryCache, MemoryConfig


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


# --- through a pipeline: promotion and the shared tiers -----------------------------------------------------------


def send(client: httpx.Client, upstream: SimulatedServer, n: int = 0) -> tuple[str, str]:
    body = {"model": "m", "messages": [{"role": "user", "content": f"clock question {n}"}]}
    response = client.post(upstream.base_url + "/chat/completions", json=body, headers={"authorization": "Bearer k"})
    assert response.status_code == 200
    return response.headers["x-aurelis-cache"], response.headers.get("x-aurelis-cache-tier", "-")


def with_clocks(pipeline: Pipeline, clocks: Clocks) -> None:
    for name in pipeline.tiers:
        tier = pipeline.plugin(name)
        tier.wall_clock = clocks.time
        if name == "memory":
            tier.clock = clocks.monotonic


def flush(pipeline: Pipeline) -> None:
    for name in pipeline.tiers:
        flusher = getattr(pipeline.plugin(name), "flush", None)
        if flusher is not None:
            flusher()


def test_a_promoted_entry_lives_in_memory_only_as_long_as_it_had_left(
    upstream: SimulatedServer, tmp_path: Path
) -> None:
    cfg = {"plugins": ["normalize", "memory", "sqlite"], "memory": {"ttl": 300},
           "sqlite": {"path": str(tmp_path / "c.sqlite3")}}
    clocks = Clocks()
    pipeline = Pipeline(cfg)
    with_clocks(pipeline, clocks)
    with httpx.Client() as client:
        pipeline.instrument(client)
        assert send(client, upstream) == ("miss", "-")
        flush(pipeline)
        pipeline.plugin("memory").clear()
        clocks.offset += 200  # the answer is now 200 s old on the wall clock
        assert send(client, upstream) == ("hit", "sqlite")  # promoted with 100 s left of memory's 300
        assert send(client, upstream) == ("hit", "memory")
        clocks.mono += 99
        assert send(client, upstream) == ("hit", "memory")
        clocks.mono += 2
        assert send(client, upstream) == ("hit", "sqlite")
    pipeline.close()


@pytest.mark.parametrize("tier", ["redis", "sqlite"])
def test_shared_tiers_expire_entries_of_unknown_age(tier: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    where = request.getfixturevalue("redis_flush") if tier == "redis" else str(tmp_path / "c.sqlite3")
    table = {"url": where} if tier == "redis" else {"path": where}
    writer = Pipeline({"plugins": ["normalize", tier], tier: table})
    reader = Pipeline({"plugins": ["normalize", tier], tier: table})
    clocks = Clocks()
    plugin, seen = writer.plugin(tier), reader.plugin(tier)
    assert plugin.put("on-time", entry(created=time.time()))
    # A process whose clock runs an hour ahead writes an entry stamped by it.
    clocks.offset = 3600.0
    plugin.wall_clock = clocks.time
    assert plugin.put("from-the-future", entry(created=clocks.time()))
    # Entries of unknown age are not even stored.
    assert not plugin.put("nan", entry(created=math.nan))
    assert not plugin.put("far-future", entry(created=clocks.time() + 3600))
    ctx = RequestContext(None, None, httpx, False, RequestControls())
    found = {}
    for key in ("from-the-future", "on-time", "nan", "far-future"):
        ctx.key = key
        found[key] = seen.aurelis_cache_get(ctx) is not None
    assert found == {"from-the-future": False, "on-time": True, "nan": False, "far-future": False}
    writer.close()
    reader.close()
