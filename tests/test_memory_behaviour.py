"""The ``memory`` tier's bookkeeping, exactly: bytes charged through replacement, eviction, expiry and shrinking;
which entry each policy evicts; which headers are interned and shared.

Everything goes through the tier's public surface (``put``, the cache hooks, ``currsize``, ``len``, ``shrink``,
``clear``, ``budget``) with entries built with explicit ``created`` stamps and ttls, so the tests hold whatever
clock the tier keeps time with. docs/plugins/memory.md documents the charge: body and header bytes plus 512 B
per entry.
"""

from __future__ import annotations

import time

import httpx
import pytest

from aurelis_core import CacheEntry, ConfigError, Pipeline, RequestContext, RequestControls
from aurelis_plugins.memory import MemoryCache, MemoryConfig

#: The documented fixed charge per entry (docs/plugins/memory.md).
OVERHEAD = 512
HEADERS = [(b"content-type", b"application/json")]


def answer(length: int, *, created: float | None = None, ttl: float | None = None,
           headers: list[tuple[bytes, bytes]] | None = None) -> CacheEntry:
    return CacheEntry(200, list(HEADERS if headers is None else headers), b"x" * length, created=created, ttl=ttl)


def charge(length: int) -> int:
    """What an ``answer(length)`` costs the tier."""
    return length + sum(len(n) + len(v) for n, v in HEADERS) + OVERHEAD


def tier(policy: str = "lru", max_bytes: int = 1 << 20, ttl: float | None = 300.0) -> MemoryCache:
    return MemoryCache(MemoryConfig(policy=policy, max_bytes=max_bytes, ttl=ttl), None)


def get(memory: MemoryCache, key: str) -> CacheEntry | None:
    ctx = RequestContext(httpx.Request("POST", "http://127.0.0.1/v1/chat/completions"), None, httpx, False,
                         RequestControls())
    ctx.key = key
    return memory.aurelis_cache_get(ctx)


def held(memory: MemoryCache, *keys: str) -> list[str]:
    return [k for k in keys if get(memory, k) is not None]


# --- bytes ---------------------------------------------------------------------------------------------------


def test_each_entry_is_charged_its_bytes_plus_the_documented_overhead() -> None:
    memory = tier()
    assert memory.put("a", answer(100)) is True
    assert memory.currsize == charge(100) == 100 + 28 + 512
    memory.put("b", answer(1000, headers=[(b"x-one", b"1"), (b"x-two", b"22")]))
    assert memory.currsize == charge(100) + 1000 + 5 + 1 + 5 + 2 + 512
    assert len(memory) == 2


def test_replacing_an_entry_charges_only_the_new_one() -> None:
    memory = tier()
    memory.put("other", answer(50))
    memory.put("k", answer(100))
    memory.put("k", answer(300))  # a larger replacement
    assert memory.currsize == charge(50) + charge(300) and len(memory) == 2
    memory.put("k", answer(10))  # a smaller one
    assert memory.currsize == charge(50) + charge(10) and len(memory) == 2
    assert len(get(memory, "k").body) == 10  # type: ignore[union-attr]
    for _ in range(50):  # many replacements leave no drift
        memory.put("k", answer(10))
    assert memory.currsize == charge(50) + charge(10)


def test_a_replacement_that_needs_room_evicts_others_not_itself() -> None:
    memory = tier(max_bytes=charge(100) * 3)
    for key in ("a", "b", "c"):
        memory.put(key, answer(100))
    memory.put("b", answer(150))  # 50 B more than fits: the least recently used other entry goes
    assert held(memory, "a", "b", "c") == ["b", "c"]
    assert memory.currsize == charge(100) + charge(150)


def test_the_tier_fills_to_exactly_its_budget() -> None:
    memory = tier(max_bytes=charge(100) * 3)
    for key in ("a", "b", "c"):
        assert memory.put(key, answer(100))
    assert len(memory) == 3 and memory.currsize == memory.budget  # full to the byte, nothing evicted
    memory.put("d", answer(100))
    assert held(memory, "a", "b", "c", "d") == ["b", "c", "d"]  # one in, exactly one out
    assert memory.currsize == memory.budget


def test_eviction_frees_what_the_evicted_entries_were_charged() -> None:
    memory = tier(max_bytes=charge(100) * 2 + charge(50))
    memory.put("a", answer(100))
    memory.put("b", answer(100))
    memory.put("c", answer(50))
    memory.put("d", answer(250))  # needs two entries' room: a and b go
    assert held(memory, "a", "b", "c", "d") == ["c", "d"]
    assert memory.currsize == charge(50) + charge(250)


def test_an_entry_as_large_as_the_tier_fits_and_a_larger_one_is_refused() -> None:
    memory = tier(max_bytes=charge(1000))
    memory.put("small", answer(10))
    assert memory.put("huge", answer(1001)) is False
    assert held(memory, "small", "huge") == ["small"] and memory.currsize == charge(10)  # nothing evicted
    assert memory.put("whole", answer(1000)) is True
    assert held(memory, "small", "whole") == ["whole"] and memory.currsize == charge(1000)


# --- expiry --------------------------------------------------------------------------------------------------


def test_an_expired_entry_is_refused_and_an_old_live_one_is_kept() -> None:
    memory = tier(ttl=300.0)
    now = time.time()
    assert memory.put("stale", answer(10, created=now - 1000)) is False  # past the tier's ttl
    assert memory.put("own-ttl", answer(10, created=now - 1000, ttl=2000.0)) is True  # its own ttl is longer
    assert memory.put("short", answer(10, created=now - 100, ttl=50.0)) is False  # its own ttl is shorter
    assert memory.put("fresh", answer(10, created=now - 100)) is True
    assert held(memory, "stale", "own-ttl", "short", "fresh") == ["own-ttl", "fresh"]
    assert memory.currsize == 2 * charge(10)


def test_no_ttl_keeps_entries_until_evicted() -> None:
    memory = tier(ttl=None)
    assert memory.put("ancient", answer(10, created=time.time() - 10**9)) is True
    assert get(memory, "ancient") is not None


def test_an_entry_that_expires_while_held_is_dropped_and_its_bytes_freed() -> None:
    memory = tier(ttl=300.0)
    memory.put("live", answer(10))
    ttl = 0.02
    while not memory.put("brief", answer(20, ttl=ttl)):  # a stalled machine may age it before it is stored
        pass
    stored = time.monotonic()
    assert memory.currsize == charge(10) + charge(20)
    # Waiting is the only way to age an entry whatever clock the tier reads; the wait is a lower bound.
    while time.monotonic() - stored <= 2 * ttl:
        time.sleep(ttl)
    assert get(memory, "brief") is None
    assert len(memory) == 1 and memory.currsize == charge(10)
    assert get(memory, "brief") is None and memory.currsize == charge(10)  # dropped once, not twice


def test_a_hit_returns_the_stored_entry() -> None:
    memory = tier()
    entry = answer(10)
    memory.put("k", entry)
    assert get(memory, "k") is entry
    assert get(memory, "missing") is None


# --- policies ------------------------------------------------------------------------------------------------


def test_lru_evicts_the_least_recently_used() -> None:
    memory = tier("lru", max_bytes=charge(100) * 3)
    for key in ("a", "b", "c"):
        memory.put(key, answer(100))
    for _ in range(5):
        get(memory, "b")  # b is the most used, but not the most recent
    get(memory, "a")
    get(memory, "c")
    memory.put("d", answer(100))
    assert held(memory, "a", "b", "c", "d") == ["a", "c", "d"]


def test_lfu_evicts_the_least_frequently_used_never_the_newcomer() -> None:
    memory = tier("lfu", max_bytes=charge(100) * 3)
    for key, uses in (("a", 4), ("b", 1), ("c", 3)):
        memory.put(key, answer(100))
        for _ in range(uses):
            get(memory, key)
    get(memory, "b")  # the most recent use does not save it: it is still used least (2 < 3 < 4)
    memory.put("d", answer(100))
    assert held(memory, "a", "c", "d") == ["a", "c", "d"] and get(memory, "b") is None


# --- shrink and clear ----------------------------------------------------------------------------------------


def test_shrink_evicts_down_to_its_share_and_keeps_it_as_the_budget() -> None:
    memory = tier(max_bytes=charge(100) * 10)
    for i in range(4):
        memory.put(f"k{i}", answer(100))
    before = memory.currsize
    freed = memory.shrink(0.5)
    assert memory.budget == int(before * 0.5) == charge(100) * 2
    assert freed == before - memory.currsize == charge(100) * 2
    assert held(memory, "k0", "k1", "k2", "k3") == ["k2", "k3"]  # the least recently used went
    assert memory.put("big", answer(charge(100) * 2)) is False  # larger than the new budget
    memory.put("k4", answer(100))
    assert memory.currsize <= memory.budget and len(memory) == 2


def test_shrink_is_a_share_of_what_is_held_and_one_empties_the_tier() -> None:
    memory = tier(max_bytes=charge(100) * 10)
    for i in range(4):
        memory.put(f"k{i}", answer(100))
    assert memory.shrink(0.25) == charge(100)  # 75% of the 4 entries held, not of the 10 the budget allows
    assert memory.budget == charge(100) * 3 and len(memory) == 3
    assert memory.shrink(1) == charge(100) * 3
    assert memory.budget == 0 and memory.currsize == 0 and len(memory) == 0
    assert memory.put("a", answer(1)) is False


@pytest.mark.parametrize("fraction", [0, -0.5, 1.01])
def test_shrink_rejects_a_fraction_outside_0_to_1(fraction: float) -> None:
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        tier().shrink(fraction)


def test_clear_forgets_entries_and_bytes() -> None:
    memory = tier()
    memory.put("a", answer(100))
    memory.clear()
    assert memory.currsize == 0 and len(memory) == 0 and get(memory, "a") is None
    memory.put("a", answer(100))
    assert memory.currsize == charge(100)


# --- header interning ----------------------------------------------------------------------------------------


def shared(memory: MemoryCache, first: list[tuple[bytes, bytes]], second: list[tuple[bytes, bytes]],
           keys: tuple[str, str] = ("first", "second")) -> list[bool]:
    """Store two answers; per header, whether the second's pair is the very object the first's is."""
    a, b = answer(1, headers=first), answer(1, headers=second)
    memory.put(keys[0], a)
    memory.put(keys[1], b)
    assert list(a.headers) == first and list(b.headers) == second  # equal pairs, same order
    return [x is y for x, y in zip(a.headers, b.headers, strict=True)]


def test_repeated_header_pairs_are_held_once() -> None:
    memory = tier()
    headers = [(b"content-type", b"application/json"), (b"server", b"sim")]
    assert shared(memory, headers, list(headers)) == [True, True]
    assert shared(memory, [(b"server", b"sim")], [(b"server", b"other")], ("c", "d")) == [False]


def test_long_values_are_not_interned() -> None:
    memory = tier()
    at_limit, over = b"v" * 256, b"v" * 257
    assert shared(memory, [(b"x-a", at_limit)], [(b"x-a", at_limit)]) == [True]
    assert shared(memory, [(b"x-b", over)], [(b"x-b", over)], ("c", "d")) == [False]


def test_a_header_whose_first_256_values_all_differ_stops_being_interned() -> None:
    memory = tier()
    for i in range(255):
        memory.put(f"id{i}", answer(1, headers=[(b"x-request-id", b"%d" % i)]))
    # 255 different values seen: the name is still watched, and a repeat makes it interned for good.
    assert shared(memory, [(b"x-request-id", b"0")], [(b"x-request-id", b"0")]) == [True]
    for i in range(1000, 1300):
        memory.put(f"more{i}", answer(1, headers=[(b"x-request-id", b"%d" % i)]))
    assert shared(memory, [(b"x-request-id", b"7")], [(b"x-request-id", b"7")], ("c", "d")) == [True]

    memory = tier()
    for i in range(256):
        memory.put(f"id{i}", answer(1, headers=[(b"x-request-id", b"%d" % i)]))
    # 256 different values: the name varies per answer; its values are no longer interned, even repeats.
    assert shared(memory, [(b"x-request-id", b"0")], [(b"x-request-id", b"0")]) == [False]
    assert shared(memory, [(b"x-request-id", b"new")], [(b"x-request-id", b"new")], ("c", "d")) == [False]


def test_the_interned_names_are_bounded() -> None:
    memory = tier()
    for i in range(256):
        memory.put(f"n{i}", answer(1, headers=[(b"x-name-%d" % i, b"v")]))
    assert shared(memory, [(b"x-name-0", b"v")], [(b"x-name-0", b"v")]) == [True]
    # The 257th name is stored as it comes, never interned.
    assert shared(memory, [(b"x-late", b"v")], [(b"x-late", b"v")], ("c", "d")) == [False]


@pytest.mark.parametrize(("max_bytes", "pairs"), [
    (1 << 20, 256), (4096 * 300, 300), (4096 * 300 + 4095, 300), (1 << 30, 16384)])
def test_the_pair_table_holds_one_pair_per_4_kib_of_budget_within_its_bounds(max_bytes: int, pairs: int) -> None:
    memory = tier(max_bytes=max_bytes)
    first = answer(1, headers=[(b"x-n", b"first")])
    memory.put("first", first)
    for i in range(pairs - 1):  # the table is full now, with the first pair still in it
        memory.put("filler", answer(1, headers=[(b"x-n", b"%d" % i), (b"x-n", b"%d" % i)]))
    assert shared(memory, [(b"x-n", b"first")], [(b"x-n", b"first")], ("a", "b")) == [True]
    memory.put("filler", answer(1, headers=[(b"x-n", b"one more")]))  # the table starts over
    again = answer(1, headers=[(b"x-n", b"first")])
    memory.put("again", again)
    assert again.headers[0] is not first.headers[0]


# --- configuration -------------------------------------------------------------------------------------------


def test_the_defaults_are_the_documented_ones() -> None:
    config = MemoryConfig()
    assert (config.policy, config.max_bytes, config.ttl) == ("lru", 64 * 1024 * 1024, 300.0)


@pytest.mark.parametrize("bad", [{"max_bytes": 0}, {"ttl": 0}, {"ttl": -1.0}, {"policy": "fifo"}, {"max_bytes": 1.5}])
def test_bad_config_is_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=next(iter(bad))):
        Pipeline({"plugins": ["memory"], "memory": bad})


def test_ttl_none_and_small_positive_values_are_accepted() -> None:
    assert MemoryConfig(ttl=None, max_bytes=1).ttl is None
    assert MemoryConfig(ttl=0.001).ttl == 0.001


@pytest.mark.parametrize(("max_bytes", "pairs"), [(1 << 20, 256), (4096 * 300, 300), (1 << 30, 16384)])
def test_the_pair_table_keeps_its_first_pair_until_it_is_full(max_bytes: int, pairs: int) -> None:
    memory = tier(max_bytes=max_bytes)
    first = answer(1, headers=[(b"x-n", b"first")])
    memory.put("first", first)
    for i in range(pairs - 1):  # the table is full now, with the first pair still in it
        memory.put("filler", answer(1, headers=[(b"x-n", b"%d" % i), (b"x-n", b"%d" % i)]))
    probe = answer(1, headers=[(b"x-n", b"first")])
    memory.put("probe", probe)
    assert probe.headers[0] is first.headers[0]  # shared with the very first entry: the table never started over


# --- what the mutation run found untested --------------------------------------------------------------------


def test_a_streamed_entry_is_charged_per_chunk_too() -> None:
    from aurelis_plugins.memory import CHUNK_OVERHEAD

    memory = tier()
    chunks = (b"data: 1\n\n", b"data: 2\n\n", b"data: [DONE]\n\n")
    streamed = CacheEntry(200, list(HEADERS), b"", chunks=chunks)
    assert memory.put("s", streamed) is True
    expected = sum(map(len, chunks)) + 28 + OVERHEAD + CHUNK_OVERHEAD * len(chunks)
    assert memory.currsize == expected
    memory.put("s", answer(10))  # replacing it frees exactly what it was charged
    assert memory.currsize == charge(10)


def test_an_answer_over_max_entry_bytes_is_passed_by_and_counted() -> None:
    pipeline = Pipeline({"plugins": ["normalize", "memory"], "memory": {"max_entry_bytes": 1000}})
    memory = pipeline.plugin("memory")
    exact = CacheEntry(200, [], b"x" * 1000)
    assert memory.put("exact", exact) is True  # as large as allowed
    assert memory.put("over", CacheEntry(200, [], b"x" * 1001)) is False
    assert pipeline.stats.counters["memory.too_large"] == 1
    assert held(memory, "exact", "over") == ["exact"]


def test_an_entry_expires_at_its_deadline_exactly() -> None:
    now = [1000.0]
    memory = MemoryCache(MemoryConfig(ttl=10.0), None, clock=lambda: now[0], wall_clock=lambda: 5000.0)
    memory.put("k", answer(10, created=5000.0))
    now[0] = 1009.999
    assert get(memory, "k") is not None
    now[0] = 1010.0
    assert get(memory, "k") is None and memory.currsize == 0
