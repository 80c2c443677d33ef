"""The endpoint health registry (what routers may pick, on the registry's clock) and ``retry_after``."""

from __future__ import annotations

import email.utils

import httpx
import pytest
from support import FakeClock

from aurelis_core import Attempt, Endpoint, RequestContext, RequestControls
from aurelis_core.health import EndpointHealth, EndpointStatus, EndpointUnavailable, retry_after

A, B, C = Endpoint(url="http://a.example", name="a"), Endpoint(url="http://b.example", name="b"), Endpoint(
    url="http://c.example", name="c")


def registry(slow_start: float = 30.0) -> tuple[EndpointHealth, FakeClock]:
    clock = FakeClock()
    return EndpointHealth([A, B, C], slow_start=slow_start, clock=clock), clock


# --- blocks and candidates -----------------------------------------------------------------------------------


def test_the_defaults() -> None:
    import time

    health = EndpointHealth([A])
    assert (health.slow_start, health.clock) == (30.0, time.monotonic)
    assert list(health.status) == ["a"]


def test_nothing_blocked_hands_back_the_endpoints_themselves() -> None:
    health, _ = registry()
    endpoints = [A, B, C]
    assert health.candidates(endpoints) is endpoints
    assert health.status["a"] == EndpointStatus()
    assert (EndpointStatus().circuit, EndpointStatus().blocked_until, EndpointStatus().probes_left) == (
        "closed", 0.0, 0)


def test_a_block_lasts_until_its_end_exactly() -> None:
    health, clock = registry()
    health.block(B, clock.now + 5.0, "rate_limited")
    assert health.status["b"].reason == "rate_limited"
    assert health.candidates([A, B, C]) == [A, C]
    assert not health.available(B)
    clock.advance(4.999)
    assert health.candidates([A, B, C]) == [A, C]
    clock.advance(0.001)
    assert health.available(B) and health.candidates([A, B, C]) == [A, B, C]
    assert health.available(B, now=clock.now - 1.0) is False  # an explicit time wins over the clock


def test_a_block_only_ever_extends() -> None:
    health, clock = registry()
    health.block(A, clock.now + 10.0, "open")
    health.block(A, clock.now + 3.0, "rate_limited")  # shorter: ignored, reason kept
    assert (health.status["a"].blocked_until, health.status["a"].reason) == (clock.now + 10.0, "open")
    health.block(A, clock.now + 20.0, "rate_limited")
    assert (health.status["a"].blocked_until, health.status["a"].reason) == (clock.now + 20.0, "rate_limited")


def test_when_everything_is_blocked_every_endpoint_is_a_candidate() -> None:
    health, clock = registry()
    for endpoint in (A, B, C):
        health.block(endpoint, clock.now + 1.0, "open")
    assert health.candidates([A, B, C]) == [A, B, C]  # panic mode: better than refusing everything
    assert health.candidates([A, B]) == [A, B]


def test_the_fast_path_comes_back_once_nothing_is_blocked() -> None:
    health, clock = registry()
    health.block(A, clock.now + 1.0, "open")
    endpoints = [A, B, C]
    assert health.candidates(endpoints) == [B, C]
    clock.advance(1.0)
    assert health.candidates(endpoints) == endpoints  # all usable again: the registry notices...
    assert health.candidates(endpoints) is endpoints  # ...and goes back to handing the list back as it is


def test_an_unknown_endpoint_is_available() -> None:
    health, clock = registry()
    stranger = Endpoint(url="http://d.example", name="d")
    health.block(A, clock.now + 1.0, "open")
    assert health.available(stranger) and health.candidates([A, stranger]) == [stranger]


def test_half_open_is_available_while_probes_are_left_whatever_the_block() -> None:
    health, clock = registry()
    health.block(A, clock.now + 100.0, "open")
    health.set_circuit(A, "half_open", 2)
    assert health.available(A) and health.status["a"].probes_left == 2
    health.set_circuit(A, "half_open", 0)
    assert not health.available(A) and health.candidates([A, B]) == [B]
    health.set_circuit(A, "half_open", 1)
    assert health.candidates([A, B]) == [A, B]
    health.set_circuit(A, "open")
    assert health.status["a"].probes_left == 0 and not health.available(A)


def test_an_open_circuit_keeps_the_slow_path_even_with_no_time_block() -> None:
    health, clock = registry()
    health.set_circuit(A, "open")  # no block: available by time, but the registry stays watchful
    endpoints = [A, B]
    assert health.candidates(endpoints) == endpoints
    health.block(B, clock.now + 1.0, "open")
    assert health.candidates(endpoints) == [A]


def test_candidates_are_built_once_while_nothing_changes() -> None:
    # A router asks on every pick: while the blocks stay as they are, the registry hands back the list it
    # built before (the same object, no scan of the endpoints), and builds a new one when a block ends or any
    # status changes.
    health, clock = registry()
    endpoints = [A, B, C]
    health.block(A, clock.now + 10.0, "open")
    health.block(B, clock.now + 20.0, "ejected")
    first = health.candidates(endpoints)
    assert first == [C]
    clock.advance(9.999)
    assert health.candidates(endpoints) is first
    assert health.candidates([A, B, C]) == [C] and health.candidates([A, B, C]) is not first  # another list
    clock.advance(0.001)  # A's block ended
    second = health.candidates(endpoints)
    assert second == [A, C]
    assert health.candidates(endpoints) is second
    health.block(C, clock.now + 5.0, "rate_limited")  # a new block: built again at once
    assert health.candidates(endpoints) == [A]
    health.set_circuit(C, "half_open", 1)  # a probe may go: built again
    assert health.candidates(endpoints) == [A, C]
    health.set_circuit(C, "half_open", 0)  # the probe was spent
    assert health.candidates(endpoints) == [A]
    # An earlier time is never served from the cache: A was still blocked then, so nothing was usable (panic).
    assert health.candidates(endpoints, now=clock.now - 1.0) == [A, B, C]


# --- slow start ----------------------------------------------------------------------------------------------


def test_a_recovered_endpoint_ramps_from_a_tenth_to_full_over_slow_start() -> None:
    health, clock = registry(slow_start=30.0)
    assert health.slow_start_factor(A) == 1.0  # never down
    health.set_circuit(A, "open")
    health.set_circuit(A, "closed")
    assert health.status["a"].recovered_at == clock.now
    assert health.slow_start_factor(A) == 0.1  # a floor, not zero
    clock.advance(15.0)
    assert health.slow_start_factor(A) == 0.5
    assert health.slow_start_factor(A, now=clock.now - 12.0) == 0.1
    clock.advance(14.999)
    assert health.slow_start_factor(A) == pytest.approx(29.999 / 30)
    clock.advance(0.001)
    assert health.slow_start_factor(A) == 1.0
    assert health.status["a"].recovered_at is None  # the ramp is over


def test_closing_a_closed_circuit_starts_no_ramp() -> None:
    health, _ = registry()
    health.set_circuit(A, "closed")
    assert health.status["a"].recovered_at is None and health.slow_start_factor(A) == 1.0


def test_no_slow_start_means_full_weight_at_once() -> None:
    health, _ = registry(slow_start=0.0)
    health.set_circuit(A, "open")
    health.set_circuit(A, "closed")
    assert health.slow_start_factor(A) == 1.0


# --- upstream ------------------------------------------------------------------------------------------------


def upstream_of(health: EndpointHealth, url: str, endpoint: Endpoint | None = None) -> Endpoint:
    ctx = RequestContext(httpx.Request("POST", url), None, httpx, False, RequestControls())
    return health.upstream(ctx, Attempt(1, endpoint))


def test_an_attempt_without_an_endpoint_goes_to_its_origin_one_per_scheme_host_and_port() -> None:
    health, _ = registry()
    first = upstream_of(health, "http://127.0.0.1:8001/v1/chat/completions")
    assert first.name == first.url == "http://127.0.0.1:8001"
    assert upstream_of(health, "http://127.0.0.1:8001/v1/embeddings") is first  # the same origin, one object
    assert upstream_of(health, "http://127.0.0.1:8002/v1/chat/completions").name == "http://127.0.0.1:8002"
    assert upstream_of(health, "https://127.0.0.1:8001/v1/x").name == "https://127.0.0.1:8001"
    assert upstream_of(health, "http://api.example/v1/x").name == "http://api.example"  # default port: none shown
    assert upstream_of(health, "http://127.0.0.1:8001/v1/x", endpoint=B) is B  # a routed attempt: its endpoint


# --- retry_after and EndpointUnavailable ---------------------------------------------------------------------


@pytest.mark.parametrize(("headers", "seconds"), [
    ({"retry-after-ms": "1500"}, 1.5),
    ({"x-ms-retry-after-ms": "250"}, 0.25),
    ({"retry-after": "7"}, 7.0),
    ({"retry-after": "0"}, 0.0),
    ({"retry-after-ms": "100", "retry-after": "9"}, 0.1),  # milliseconds first
    ({"retry-after-ms": "-5", "retry-after": "9"}, 9.0),  # negative: ignored, the next one counts
    ({"retry-after-ms": "nan", "retry-after": "3"}, 3.0),
    ({"retry-after-ms": "soon", "retry-after": "2"}, 2.0),  # unparsable milliseconds: not a date either
    ({}, None),
    ({"retry-after": "whenever"}, None),
])
def test_retry_after_reads_what_providers_send(headers: dict[str, str], seconds: float | None) -> None:
    assert retry_after(httpx.Headers(headers)) == seconds


def test_retry_after_as_an_http_date_counts_from_now() -> None:
    now = 1_800_000_000.0
    later = email.utils.formatdate(now + 30, usegmt=True)
    assert retry_after(httpx.Headers({"retry-after": later}), now=now) == 30.0
    earlier = email.utils.formatdate(now - 30, usegmt=True)
    assert retry_after(httpx.Headers({"retry-after": earlier}), now=now) == 0.0  # in the past: now


def test_retry_after_of_no_headers() -> None:
    assert retry_after(None) is None


def test_endpoint_unavailable_carries_the_endpoint_and_when_to_retry() -> None:
    error = EndpointUnavailable("circuit open", "a", 2.5)
    assert (str(error), error.endpoint, error.retry_after) == ("circuit open", "a", 2.5)
    assert EndpointUnavailable("x", "b").retry_after is None
    assert not isinstance(error, httpx.TransportError)


def test_a_date_where_milliseconds_belong_is_ignored() -> None:
    now = 1_800_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert retry_after(httpx.Headers({"retry-after-ms": date}), now=now) is None
    assert retry_after(httpx.Headers({"x-ms-retry-after-ms": date, "retry-after": "4"}), now=now) == 4.0
