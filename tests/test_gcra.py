"""GCRA arithmetic, exactly: in this process on a fake clock, and in Redis (its own clock, so with margins far
wider than any stall: an interval there is ten minutes)."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from support import FakeClock

from aurelis_plugins._gcra import LocalGCRA, RedisGCRA, Reservation, Spec, duration_seconds

#: 4 per second, a burst of all 4: one unit every 0.25 s (exact in binary, so sums stay exact).
A = Spec("a", 0.25, 1.0, 1.0)


def local() -> tuple[LocalGCRA, FakeClock]:
    clock = FakeClock()
    return LocalGCRA(clock), clock


def waits(limiter: LocalGCRA, count: int, spec: Spec = A, max_wait: float = 60.0) -> list[float]:
    out = []
    for _ in range(count):
        reservation = limiter.reserve([spec], max_wait)
        assert reservation.granted
        out.append(reservation.wait)
    return out


def test_a_full_bucket_lets_the_burst_go_then_queues_one_interval_apart() -> None:
    limiter, _ = local()
    assert waits(limiter, 7) == [0.0, 0.0, 0.0, 0.0, 0.25, 0.5, 0.75]


def test_the_bucket_refills_one_unit_per_interval_up_to_the_burst() -> None:
    limiter, clock = local()
    waits(limiter, 4)
    assert limiter.available("a", 0.25, 1.0) == 0.0
    clock.advance(0.25)
    assert limiter.available("a", 0.25, 1.0) == 1.0
    assert waits(limiter, 2) == [0.0, 0.25]
    clock.advance(100.0)  # a long quiet time refills the bucket, never beyond the burst
    assert limiter.available("a", 0.25, 1.0) == 4.0
    assert waits(limiter, 5) == [0.0, 0.0, 0.0, 0.0, 0.25]


def test_a_partial_refill_shortens_the_wait() -> None:
    limiter, clock = local()
    waits(limiter, 4)
    clock.advance(0.1)
    assert limiter.reserve([A], 60.0) == Reservation(True, pytest.approx(0.15))


def test_a_wait_of_exactly_max_wait_is_granted_a_longer_one_takes_nothing() -> None:
    limiter, _ = local()
    waits(limiter, 4)
    assert limiter.reserve([A], 0.25) == Reservation(True, 0.25)
    assert limiter.reserve([A], 0.49) == Reservation(False, 0.5)  # refused: nothing reserved...
    assert limiter.reserve([A], 0.49) == Reservation(False, 0.5)
    assert limiter.reserve([A], 0.5) == Reservation(True, 0.5)  # ...so the same slot is still there


def test_a_cost_beyond_the_burst_waits_for_a_full_bucket_and_leaves_a_debt() -> None:
    limiter, clock = local()
    big = Spec("a", 0.25, 1.0, 6.0)  # 1.5 s of units, the bucket holds 1 s
    assert limiter.reserve([big], 0.0) == Reservation(True, 0.0)  # full bucket: it goes
    assert limiter.available("a", 0.25, 1.0) == 0.0  # in debt, shown as nothing left (never negative)
    assert limiter.reserve([A], 60.0) == Reservation(True, 0.75)  # the debt is paid before the next unit
    clock.advance(10.0)
    waits(limiter, 1)  # one unit out of a full bucket
    assert limiter.reserve([big], 60.0) == Reservation(True, 0.25)  # waits until the bucket is full again


def test_several_limits_wait_for_the_slowest_and_all_take_their_units() -> None:
    limiter, _ = local()
    narrow = Spec("b", 0.1, 0.2, 1.0)  # a burst of 2
    both = [A, narrow]
    assert [limiter.reserve(both, 60.0).wait for _ in range(3)] == [0.0, 0.0, pytest.approx(0.1)]
    # a took its three units (b's wait did not push a's TAT, already later than the request's time).
    assert limiter.available("a", 0.25, 1.0) == pytest.approx(1.0)
    assert limiter.available("b", 0.1, 0.2) == 0.0
    fresh = Spec("c", 0.25, 1.0, 1.0)
    assert limiter.reserve([fresh, narrow], 60.0).wait == pytest.approx(0.2)
    # c's first unit goes at the request's time, 0.2 s from now: its TAT is that plus one interval.
    assert limiter.available("c", 0.25, 1.0) == pytest.approx((1.0 - 0.45) / 0.25)


def test_costs_are_in_units_of_the_interval() -> None:
    limiter, _ = local()
    three = Spec("a", 0.25, 1.0, 3.0)
    assert limiter.reserve([three], 60.0).wait == 0.0
    assert limiter.available("a", 0.25, 1.0) == 1.0
    assert limiter.reserve([three], 60.0).wait == 0.5


def test_a_refund_gives_units_back_and_a_floor_holds_the_next_one_back() -> None:
    limiter, clock = local()
    waits(limiter, 4)
    limiter.correct("a", delta=-0.5)  # two units were never used
    assert limiter.available("a", 0.25, 1.0) == 2.0
    limiter.correct("a", floor=2.0)  # nothing may go for 2 s minus the burst
    assert limiter.reserve([A], 60.0).wait == 1.25
    clock.advance(100.0)
    limiter.correct("a", delta=-10.0)  # a refund never makes more than a full bucket
    assert limiter.available("a", 0.25, 1.0) == 4.0
    limiter.correct("fresh", delta=0.5)
    assert limiter.available("fresh", 0.25, 1.0) == 2.0
    limiter.correct("a", floor=-1.0)  # a floor in the past changes nothing
    assert limiter.available("a", 0.25, 1.0) == 4.0


def test_available_of_an_unknown_key_is_a_full_bucket() -> None:
    limiter, _ = local()
    assert limiter.available("nobody", 0.5, 3.0) == 6.0


# --- Redis -------------------------------------------------------------------------------------------------------

#: Three per half hour: the unit is ten minutes, so milliseconds of Redis time between calls cannot matter.
SLOW = Spec("slow", 600.0, 1800.0, 1.0)


@pytest.mark.redis
def test_redis_gives_the_same_answers_and_prefixes_its_keys(redis_flush: str) -> None:
    shared = RedisGCRA(redis_flush, "test:rl:")
    try:
        assert [shared.reserve([SLOW], 3600.0).wait for _ in range(3)] == [0.0, 0.0, 0.0]
        assert shared.reserve([SLOW], 3600.0).wait == pytest.approx(600.0, abs=30)
        refused = shared.reserve([SLOW], 1000.0)
        assert not refused.granted and refused.wait == pytest.approx(1200.0, abs=30)
        assert shared.reserve([SLOW], 1200.0 + 30).granted  # nothing was reserved by the refusal
        client = redis.Redis.from_url(redis_flush)
        assert client.exists("test:rl:slow") and not client.exists("slow")
        client.close()
    finally:
        shared.close()


@pytest.mark.redis
def test_redis_corrections_are_queued_and_applied_with_the_next_reservation(redis_flush: str) -> None:
    shared = RedisGCRA(redis_flush, "test:rl:")
    try:
        for _ in range(3):
            shared.reserve([SLOW], 3600.0)
        shared.correct("slow", delta=-300.0)
        shared.correct("slow", delta=-300.0)  # corrections add up: one unit refunded in all
        assert shared.reserve([SLOW], 3600.0).wait == pytest.approx(0.0, abs=30)
        assert shared.reserve([SLOW], 3600.0).wait == pytest.approx(600.0, abs=30)
        shared.correct("slow", floor=6000.0)
        shared.correct("slow", floor=3000.0)  # the highest floor wins
        assert shared.reserve([SLOW], 9000.0).wait == pytest.approx(6000.0 + 600.0 - 1800.0, abs=30)
        shared.correct("other", floor=4200.0)  # a key not reserved this time is corrected all the same
        assert shared.reserve([Spec("other", 600.0, 1800.0, 1.0)], 9000.0).wait == pytest.approx(3000.0, abs=30)
    finally:
        shared.close()


@pytest.mark.redis
@pytest.mark.anyio
async def test_redis_async_reservations_share_the_limit_with_sync_ones(redis_flush: str) -> None:
    shared = RedisGCRA(redis_flush, "test:rl:")
    try:
        for _ in range(2):
            assert shared.reserve([SLOW], 3600.0).wait == 0.0
        assert (await shared.areserve([SLOW], 3600.0)).wait == 0.0
        assert (await shared.areserve([SLOW], 3600.0)).wait == pytest.approx(600.0, abs=30)
    finally:
        shared.close()
        await shared.aclose()
    shared.close()  # closing twice is harmless
    await shared.aclose()


@pytest.mark.redis
def test_a_closed_redis_limiter_opens_a_new_connection_when_used_again(redis_flush: str) -> None:
    shared = RedisGCRA(redis_flush, "test:rl:")
    shared.reserve([SLOW], 3600.0)
    shared.close()
    assert shared.reserve([SLOW], 3600.0).granted
    shared.close()


# --- duration_seconds ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("20ms", 0.02), ("1.5s", 1.5), ("6m0s", 360.0), ("1h2m", 3720.0), ("2h", 7200.0), ("1m30s500ms", 90.5),
    ("0.5", 0.5), ("12", 12.0), ("-3", 0.0), ("0s", 0.0),
])
def test_durations_as_providers_send_them(text: str, seconds: float) -> None:
    assert duration_seconds(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["s", "5x", "1.2.3s", "5m3", "m5s", "ms", "5 s"])
def test_what_is_not_a_duration(text: str) -> None:
    assert duration_seconds(text) is None


def test_redis_reply_parsing_never_gives_a_negative_wait() -> None:
    from aurelis_plugins._gcra import _reservation

    reply: Any = [1, "-0.5"]
    assert _reservation(reply) == Reservation(True, 0.0)
    assert _reservation([0, "2.25"]) == Reservation(False, 2.25)


@pytest.mark.redis
def test_redis_corrections_are_exact(redis_flush: str) -> None:
    shared = RedisGCRA(redis_flush, "test:rl:")
    spec = Spec("exact", 20.0, 20.0, 1.0)  # one unit per 20 s, a burst of one
    try:
        assert shared.reserve([spec], 60.0).wait == 0.0
        shared.correct("exact", delta=-10.0)  # half a unit back
        # Redis's own clock moves on between the calls: milliseconds, far inside the margin.
        assert shared.reserve([spec], 60.0).wait == pytest.approx(10.0, abs=0.5)
        shared.correct("floored", floor=30.0)  # a floor alone moves nothing else
        assert shared.reserve([Spec("floored", 20.0, 20.0, 1.0)], 60.0).wait == pytest.approx(30.0, abs=0.5)
        # The TAT is 50 s ahead now: a floor below it changes nothing at all.
        shared.correct("floored", floor=10.0)
        assert shared.reserve([Spec("floored", 20.0, 20.0, 1.0)], 120.0).wait == pytest.approx(50.0, abs=0.5)
    finally:
        shared.close()


@pytest.mark.redis
@pytest.mark.anyio
async def test_an_unused_redis_limiter_closes_cleanly(redis_flush: str) -> None:
    shared = RedisGCRA(redis_flush, "test:rl:")
    shared.close()
    await shared.aclose()
