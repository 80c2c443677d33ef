"""The ``breaker`` plugin's decisions at their boundaries, on a fake clock, through real loopback requests.

Every test sets ``pipeline.health.clock`` to a :class:`FakeClock` (the breaker reads the registry's clock), so
the sliding window, the open time and its growth are exact numbers, whatever the machine's load.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import anyio
import httpx
import pytest
from support import FakeClock, gated_upstream

from aurelis_core import Attempt, ConfigError, Endpoint, Pipeline, RequestContext, hookimpl
from aurelis_core.testing import SimulatedServer
from aurelis_plugins.breaker import Breaker, BreakerConfig, CircuitOpenError

BODY = {"model": "sim-chat", "messages": [{"role": "user", "content": "hello there"}]}


def breaker_client(upstream_config: dict[str, Any], *plugins: object) -> tuple[httpx.Client, Breaker, FakeClock]:
    pipeline = Pipeline({"plugins": ["breaker"], "breaker": upstream_config}, plugins=plugins)
    clock = FakeClock()
    pipeline.health.clock = clock
    return pipeline.instrument(httpx.Client(timeout=10)), pipeline.plugin("breaker"), clock


def ok(client: httpx.Client, upstream: SimulatedServer) -> None:
    upstream.behavior.status_override = None
    assert client.post(upstream.url + "/v1/chat/completions", json=BODY).status_code == 200


def fail(client: httpx.Client, upstream: SimulatedServer, status: int = 503) -> None:
    upstream.behavior.status_override = status
    assert client.post(upstream.url + "/v1/chat/completions", json=BODY).status_code == status


def refused(client: httpx.Client, upstream: SimulatedServer) -> CircuitOpenError:
    with pytest.raises(CircuitOpenError) as error:
        client.post(upstream.url + "/v1/chat/completions", json=BODY)
    return error.value


# --- the failure rate --------------------------------------------------------------------------------------------


def test_the_failure_rate_opens_at_exactly_the_rate_not_below(upstream: SimulatedServer) -> None:
    client, breaker, _ = breaker_client({"consecutive_failures": 0, "min_calls": 10, "failure_rate": 0.5})
    for _ in range(6):
        ok(client, upstream)
    for _ in range(5):
        fail(client, upstream)
    assert breaker.state(upstream.url) == "closed"  # 4/10, then 5/11: below half
    fail(client, upstream)
    assert breaker.state(upstream.url) == "open"  # 6/12: exactly half
    assert breaker.transitions[-1].reason.startswith("6/12 calls failed in the last 30s")
    client.close()


def test_one_failure_in_many_calls_does_not_open(upstream: SimulatedServer) -> None:
    client, breaker, _ = breaker_client({"consecutive_failures": 0, "min_calls": 5, "failure_rate": 0.25})
    for _ in range(9):
        ok(client, upstream)
    fail(client, upstream)
    fail(client, upstream)
    assert breaker.state(upstream.url) == "closed"  # 2/11 < 25%
    fail(client, upstream)
    assert breaker.state(upstream.url) == "open"  # 3/12 = 25%
    client.close()


def test_min_calls_holds_the_rate_back_until_the_window_has_that_many(upstream: SimulatedServer) -> None:
    client, breaker, _ = breaker_client({"consecutive_failures": 0, "min_calls": 4, "failure_rate": 0.5})
    for _ in range(3):
        fail(client, upstream)
    assert breaker.state(upstream.url) == "closed"  # 100% failed, but only 3 calls
    fail(client, upstream)
    assert breaker.state(upstream.url) == "open"  # 4 calls: exactly min_calls
    client.close()


def test_consecutive_failures_open_at_exactly_that_many_and_a_success_resets_them(upstream: SimulatedServer) -> None:
    client, breaker, _ = breaker_client({"consecutive_failures": 3, "min_calls": 100})
    fail(client, upstream)
    fail(client, upstream)
    ok(client, upstream)
    fail(client, upstream)
    fail(client, upstream)
    assert breaker.state(upstream.url) == "closed"
    fail(client, upstream, 500)  # a 500 is a failure as much as a 503
    assert breaker.state(upstream.url) == "open"
    assert breaker.transitions[-1].reason == "3 consecutive failures; open for 5s"
    client.close()


def test_zero_consecutive_failures_turns_that_rule_off(upstream: SimulatedServer) -> None:
    client, breaker, _ = breaker_client({"consecutive_failures": 0, "min_calls": 100})
    for _ in range(20):
        fail(client, upstream)
    assert breaker.state(upstream.url) == "closed"
    client.close()


def test_other_4xx_answers_are_successes(upstream: SimulatedServer) -> None:
    client, breaker, _ = breaker_client({"consecutive_failures": 0, "min_calls": 4, "failure_rate": 0.5})
    for _ in range(10):
        fail(client, upstream, 499)
    fail(client, upstream)
    fail(client, upstream)
    fail(client, upstream)
    fail(client, upstream)
    assert breaker.state(upstream.url) == "closed"  # 4/14
    client.close()


# --- the sliding window ------------------------------------------------------------------------------------------


def test_the_window_forgets_failures_a_window_old(upstream: SimulatedServer) -> None:
    # window 20 s in ten 2 s buckets: a call is remembered for at least 18 s and at most 20 s.
    config = {"consecutive_failures": 0, "min_calls": 4, "failure_rate": 0.5, "window": 20.0}
    client, breaker, clock = breaker_client(config)
    clock.now = 10_001.9  # late in its bucket [10000, 10002)
    for _ in range(3):
        fail(client, upstream)
    clock.now = 10_020.0  # 18.1 s later: that bucket is now a whole window old
    fail(client, upstream)
    assert breaker.state(upstream.url) == "closed"  # 1/1 in the window: the first three were forgotten
    client.close()

    client, breaker, clock = breaker_client(config)
    clock.now = 10_001.9
    for _ in range(3):
        fail(client, upstream)
    clock.now = 10_019.8  # 17.9 s later: still inside the window
    fail(client, upstream)
    assert breaker.state(upstream.url) == "open"  # 4/4
    client.close()


def test_successes_decay_out_of_the_window_too(upstream: SimulatedServer) -> None:
    config = {"consecutive_failures": 0, "min_calls": 4, "failure_rate": 0.5, "window": 10.0}
    client, breaker, clock = breaker_client(config)
    for _ in range(8):
        ok(client, upstream)
    clock.advance(5)
    for _ in range(4):
        fail(client, upstream)
    assert breaker.state(upstream.url) == "closed"  # 4/12
    clock.advance(5.5)  # the successes are a window old, the failures are not
    fail(client, upstream)
    assert breaker.state(upstream.url) == "open"  # 5/5
    client.close()


def test_calls_spread_over_the_window_all_count(upstream: SimulatedServer) -> None:
    config = {"consecutive_failures": 0, "min_calls": 10, "failure_rate": 0.5, "window": 10.0}
    client, breaker, clock = breaker_client(config)
    for _ in range(9):  # one per bucket
        fail(client, upstream)
        clock.advance(1.0)
    assert breaker.state(upstream.url) == "closed"
    fail(client, upstream)
    assert breaker.state(upstream.url) == "open"  # 10 calls in ten buckets
    client.close()


# --- open, half-open, closed -------------------------------------------------------------------------------------


def test_open_time_grows_by_backoff_up_to_its_cap(upstream: SimulatedServer) -> None:
    client, breaker, clock = breaker_client(
        {"consecutive_failures": 1, "open_for": 5.0, "backoff": 2.0, "max_open_for": 30.0, "close_after": 1}
    )
    health = client_pipeline(client).health
    fail(client, upstream)
    for open_for in (5.0, 10.0, 20.0, 30.0, 30.0):
        assert breaker.state(upstream.url) == "open"
        assert refused(client, upstream).retry_after == open_for
        assert health.status[upstream.url].blocked_until == clock.now + open_for
        assert health.status[upstream.url].reason == "open"
        end = clock.now + open_for
        clock.now = end - 0.001
        assert refused(client, upstream).retry_after == pytest.approx(0.001)
        clock.now = end
        fail(client, upstream)  # exactly at the end of the open time a probe goes through, and fails
    assert [t.reason.split("; ")[-1] for t in breaker.transitions if t.new == "open"] == [
        "open for 5s", "open for 10s", "open for 20s", "open for 30s", "open for 30s", "open for 30s",
    ]
    clock.advance(30.0)
    ok(client, upstream)
    assert breaker.state(upstream.url) == "closed"
    client.close()


def test_a_new_incident_after_a_quiet_window_starts_from_open_for_again(upstream: SimulatedServer) -> None:
    client, breaker, clock = breaker_client(
        {"consecutive_failures": 1, "open_for": 5.0, "backoff": 2.0, "window": 30.0, "close_after": 1}
    )
    fail(client, upstream)
    clock.advance(5.0)
    ok(client, upstream)
    assert breaker.state(upstream.url) == "closed"
    clock.advance(30.0)  # exactly a window after closing: still the same incident
    fail(client, upstream)
    assert refused(client, upstream).retry_after == 10.0
    clock.advance(10.0)
    ok(client, upstream)
    clock.advance(30.5)  # more than a window: a new incident
    fail(client, upstream)
    assert refused(client, upstream).retry_after == 5.0
    client.close()


def test_a_failed_probe_reopens_without_waiting_for_the_window(upstream: SimulatedServer) -> None:
    client, breaker, clock = breaker_client(
        {"consecutive_failures": 1, "open_for": 5.0, "backoff": 3.0, "window": 1.0, "close_after": 2}
    )
    fail(client, upstream)
    clock.advance(100.0)  # far more than a window since anything
    fail(client, upstream)  # the probe fails: the same incident, so longer
    assert refused(client, upstream).retry_after == 15.0
    assert [(t.old, t.new) for t in breaker.transitions] == [
        ("closed", "open"), ("open", "half_open"), ("half_open", "open"),
    ]
    assert breaker.transitions[-1].reason == "a half-open probe failed; open for 15s"
    client.close()


def test_probes_must_all_succeed_in_one_half_open_spell(upstream: SimulatedServer) -> None:
    client, breaker, clock = breaker_client({"consecutive_failures": 1, "open_for": 5.0, "close_after": 2})
    fail(client, upstream)
    clock.advance(5.0)
    ok(client, upstream)
    assert breaker.state(upstream.url) == "half_open"  # 1 of 2
    assert client_pipeline(client).health.status[upstream.url].probes_left == 1  # routers may send the next
    fail(client, upstream)
    assert breaker.state(upstream.url) == "open"
    clock.advance(10.0)
    ok(client, upstream)
    assert breaker.state(upstream.url) == "half_open"  # the count started over: 1 of 2 again
    ok(client, upstream)
    assert breaker.state(upstream.url) == "closed"
    client.close()


def test_closing_resets_the_consecutive_count(upstream: SimulatedServer) -> None:
    client, breaker, clock = breaker_client({"consecutive_failures": 3, "min_calls": 100, "close_after": 1})
    for _ in range(3):
        fail(client, upstream)
    clock.advance(5.0)
    ok(client, upstream)
    assert breaker.state(upstream.url) == "closed"
    fail(client, upstream)
    fail(client, upstream)
    assert breaker.state(upstream.url) == "closed"  # 2 since closing, not 5
    fail(client, upstream)
    assert breaker.state(upstream.url) == "open"
    client.close()


def test_closing_empties_the_window(upstream: SimulatedServer) -> None:
    client, breaker, clock = breaker_client(
        {"consecutive_failures": 0, "min_calls": 4, "failure_rate": 0.5, "window": 30.0, "close_after": 1}
    )
    for _ in range(4):
        fail(client, upstream)
    assert breaker.state(upstream.url) == "open"
    clock.advance(5.0)  # the failures are still inside the window
    ok(client, upstream)
    assert breaker.state(upstream.url) == "closed"
    for _ in range(3):
        fail(client, upstream)
    assert breaker.state(upstream.url) == "closed"  # 3 calls since closing: fewer than min_calls
    fail(client, upstream)
    assert breaker.state(upstream.url) == "open"
    client.close()


def test_a_closed_circuit_ignores_probe_bookkeeping_and_state_names_endpoints(upstream: SimulatedServer) -> None:
    client, breaker, _clock = breaker_client({"consecutive_failures": 2})
    assert breaker.state(upstream.url) == "closed"  # never seen
    assert breaker.state(Endpoint(url=upstream.url)) == "closed"
    fail(client, upstream)
    assert breaker.state(Endpoint(url=upstream.url)) == "closed"
    fail(client, upstream)
    assert breaker.state(Endpoint(url=upstream.url)) == "open"
    assert client_pipeline(client).stats.counters["breaker_open"] == 1
    client.close()


def test_state_changes_are_logged_warning_when_opening(upstream: SimulatedServer, caplog: Any) -> None:
    client, _, clock = breaker_client({"consecutive_failures": 1, "close_after": 1})
    with caplog.at_level(logging.INFO, logger="aurelis"):
        fail(client, upstream)
        clock.advance(5.0)
        ok(client, upstream)
    changes = [(r.name, r.levelno, r.getMessage().split(" for ")[0]) for r in caplog.records
               if "breaker" in r.getMessage()]
    assert changes == [
        ("aurelis.breaker", logging.WARNING, "breaker closed -> open"),
        ("aurelis.breaker", logging.INFO, "breaker open -> half_open"),
        ("aurelis.breaker", logging.INFO, "breaker half_open -> closed"),
    ]
    counters = client_pipeline(client).stats.counters
    assert (counters["breaker_open"], counters["breaker_half_open"], counters["breaker_closed"]) == (1, 1, 1)
    client.close()


# --- half-open probes --------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_half_open_admits_at_most_half_open_probes_at_once() -> None:
    with gated_upstream() as up:
        pipeline = Pipeline({"plugins": ["breaker"], "breaker": {
            "consecutive_failures": 1, "open_for": 5.0, "half_open_probes": 2, "close_after": 2,
        }})
        clock = pipeline.health.clock = FakeClock()
        breaker: Breaker = pipeline.plugin("breaker")
        async with pipeline.instrument(httpx.AsyncClient(timeout=30)) as client:
            url = up.url + "/v1/chat/completions"
            up.status = 502
            assert (await client.post(url, json=BODY)).status_code == 502
            clock.advance(5.0)
            up.status = 200
            up.hold()
            status = pipeline.health.status[up.url]
            first = asyncio.create_task(client.post(url, json=BODY))
            await anyio.to_thread.run_sync(up.wait_arrivals, 2)
            assert breaker.state(up.url) == "half_open" and status.probes_left == 1
            second = asyncio.create_task(client.post(url, json=BODY))
            await anyio.to_thread.run_sync(up.wait_arrivals, 3)
            assert status.probes_left == 0 and not pipeline.health.available(Endpoint(url=up.url))
            with pytest.raises(CircuitOpenError) as third:
                # (A timeout, so that a breaker that wrongly sends this one fails the test instead of hanging it.)
                await client.post(url, json=BODY, timeout=5)
            assert third.value.retry_after is None and "all 2 probe(s) are in flight" in str(third.value)
            up.release()
            assert [r.status_code for r in await asyncio.gather(first, second)] == [200, 200]
            assert breaker.state(up.url) == "closed" and status.circuit == "closed"
            assert up.arrived == 3


@pytest.mark.anyio
async def test_a_cancelled_probe_gives_its_slot_back() -> None:
    with gated_upstream() as up:
        pipeline = Pipeline({"plugins": ["breaker"], "breaker": {"consecutive_failures": 1, "close_after": 1}})
        clock = pipeline.health.clock = FakeClock()
        breaker: Breaker = pipeline.plugin("breaker")
        async with pipeline.instrument(httpx.AsyncClient(timeout=30)) as client:
            url = up.url + "/v1/chat/completions"
            up.status = 500
            await client.post(url, json=BODY)
            clock.advance(5.0)
            up.status = 200
            up.hold()
            probe = asyncio.create_task(client.post(url, json=BODY))
            await anyio.to_thread.run_sync(up.wait_arrivals, 2)
            assert pipeline.health.status[up.url].probes_left == 0
            probe.cancel()
            with pytest.raises(asyncio.CancelledError):
                await probe
            # No verdict: still half-open, and the slot is free again (routers see it too).
            assert breaker.state(up.url) == "half_open"
            assert pipeline.health.status[up.url].probes_left == 1
            up.release()
            assert (await client.post(url, json=BODY)).status_code == 200
            assert breaker.state(up.url) == "closed"


@pytest.mark.anyio
async def test_an_attempt_that_ends_after_the_circuit_opened_is_not_counted() -> None:
    with gated_upstream() as up:
        pipeline = Pipeline({"plugins": ["breaker"], "breaker": {"consecutive_failures": 1, "open_for": 5.0}})
        pipeline.health.clock = FakeClock()
        breaker: Breaker = pipeline.plugin("breaker")
        async with pipeline.instrument(httpx.AsyncClient(timeout=30)) as client:
            url = up.url + "/v1/chat/completions"
            up.hold()
            early = asyncio.create_task(client.post(url, json=BODY))  # sent while the circuit was closed
            await anyio.to_thread.run_sync(up.wait_arrivals, 1)
            up.stop_holding()
            up.status = 500
            assert (await client.post(url, json=BODY)).status_code == 500  # opens the circuit
            up.release()
            assert (await early).status_code == 500  # ends while open: no verdict on the open circuit
            assert [t.new for t in breaker.transitions] == ["open"]
            with pytest.raises(CircuitOpenError) as refused_now:
                await client.post(url, json=BODY, timeout=5)
            assert refused_now.value.retry_after == 5.0  # not reopened for longer


class RefuseOnce:
    """Refuses one attempt in ``aurelis_admit`` (after the breaker admitted it) with its own error."""

    name = "refuse_once"

    def __init__(self) -> None:
        self.armed = False

    @hookimpl
    def aurelis_admit(self, ctx: RequestContext, attempt: Attempt) -> None:
        if self.armed:
            self.armed = False
            raise RuntimeError("refused by a plugin")


def test_a_probe_refused_by_another_plugin_gives_its_slot_back(upstream: SimulatedServer) -> None:
    refuser = RefuseOnce()
    client, breaker, clock = breaker_client({"consecutive_failures": 1, "close_after": 1}, refuser)
    fail(client, upstream)
    clock.advance(5.0)
    refuser.armed = True
    with pytest.raises(RuntimeError, match="refused by a plugin"):
        client.post(upstream.url + "/v1/chat/completions", json=BODY)
    assert breaker.state(upstream.url) == "half_open"  # a plugin's own error is no verdict on the upstream
    ok(client, upstream)  # the slot was given back: this one is admitted as the probe
    assert breaker.state(upstream.url) == "closed"
    client.close()


def test_a_plugin_error_is_not_a_failure(upstream: SimulatedServer) -> None:
    refuser = RefuseOnce()
    client, breaker, _ = breaker_client({"consecutive_failures": 2, "min_calls": 100}, refuser)
    fail(client, upstream)
    refuser.armed = True
    with pytest.raises(RuntimeError):
        client.post(upstream.url + "/v1/chat/completions", json=BODY)
    ok(client, upstream)
    fail(client, upstream)
    assert breaker.state(upstream.url) == "closed"  # fail, (nothing), ok, fail: never two in a row
    client.close()


def test_connect_errors_are_failures() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    client, breaker, _ = breaker_client({"consecutive_failures": 2})
    for _ in range(2):
        with pytest.raises(httpx.ConnectError):
            client.post(url + "/v1/chat/completions", json=BODY)
    assert breaker.state(url) == "open"
    client.close()


# --- 429 ---------------------------------------------------------------------------------------------------------


def test_a_429_blocks_for_retry_after_or_rate_limited_for(upstream: SimulatedServer) -> None:
    client, breaker, clock = breaker_client({"consecutive_failures": 1, "rate_limited_for": 7.0})
    status = client_pipeline(client).health.status
    fail(client, upstream, 429)  # no Retry-After: rate_limited_for
    assert status[upstream.url].blocked_until == clock.now + 7.0
    assert status[upstream.url].reason == "rate_limited"
    clock.advance(10.0)
    upstream.behavior.headers = {"retry-after": "3"}
    fail(client, upstream, 429)
    assert status[upstream.url].blocked_until == clock.now + 3.0
    assert breaker.state(upstream.url) == "closed"  # busy is not broken
    assert client_pipeline(client).stats.counters["breaker_rate_limited"] == 2
    client.close()


def test_a_429_probe_gives_its_slot_back_and_marks_the_endpoint_busy(upstream: SimulatedServer) -> None:
    client, breaker, clock = breaker_client({"consecutive_failures": 1, "close_after": 1})
    fail(client, upstream)
    clock.advance(5.0)
    fail(client, upstream, 429)
    assert breaker.state(upstream.url) == "half_open"
    assert client_pipeline(client).health.status[upstream.url].blocked_until == clock.now + 1.0
    ok(client, upstream)
    assert breaker.state(upstream.url) == "closed"
    client.close()


# --- configuration -----------------------------------------------------------------------------------------------


def test_the_defaults_are_the_documented_ones() -> None:
    config = BreakerConfig()
    assert (config.failure_rate, config.window, config.min_calls, config.consecutive_failures) == (0.5, 30.0, 10, 5)
    assert (config.open_for, config.backoff, config.max_open_for) == (5.0, 2.0, 120.0)
    assert (config.half_open_probes, config.close_after, config.rate_limited_for) == (1, 2, 1.0)


def test_config_boundaries() -> None:
    BreakerConfig(failure_rate=1.0, backoff=1.0, open_for=3.0, max_open_for=3.0)  # all at their limits
    for bad, match in (
        ({"failure_rate": 1.01}, "failure_rate"),
        ({"backoff": 0.99}, "backoff"),
        ({"open_for": 3.0, "max_open_for": 2.99}, "max_open_for"),
    ):
        with pytest.raises(ConfigError, match=match):
            Pipeline({"plugins": ["breaker"], "breaker": bad})


def client_pipeline(client: httpx.Client) -> Pipeline:
    import aurelis_core

    pipeline = aurelis_core.pipeline_of(client)
    assert pipeline is not None
    return pipeline


def test_the_latest_1000_transitions_are_kept(upstream: SimulatedServer) -> None:
    client, breaker, clock = breaker_client({"consecutive_failures": 1, "close_after": 1, "open_for": 1.0,
                                             "max_open_for": 1.0})
    for _ in range(334):  # open, half-open, closed: three transitions each
        fail(client, upstream)
        clock.advance(1.0)
        ok(client, upstream)
    assert len(breaker.transitions) == 1000
    # 1002 changes: the first two (closed -> open -> half_open) went.
    assert (breaker.transitions[0].old, breaker.transitions[0].new) == ("half_open", "closed")
    client.close()


class HeadThenHold:
    """Sends its status and headers at once, and the body only when ``hold_body`` is off."""

    def __init__(self) -> None:
        self.status = 200
        self.hold_body = False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": self.status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"2")]})
        while self.hold_body:
            await asyncio.sleep(0.001)
        await send({"type": "http.response.body", "body": b"{}"})


@pytest.mark.anyio
async def test_a_probe_cancelled_while_reading_its_answer_gives_no_verdict() -> None:
    from aurelis_core.testing import serve

    app = HeadThenHold()
    with serve(app) as server:  # type: ignore[arg-type]
        pipeline = Pipeline({"plugins": ["breaker"], "breaker": {"consecutive_failures": 1, "close_after": 1}})
        clock = pipeline.health.clock = FakeClock()
        breaker: Breaker = pipeline.plugin("breaker")
        try:
            async with pipeline.instrument(httpx.AsyncClient(timeout=30)) as client:
                url = server.url + "/v1/chat/completions"
                app.status = 500
                assert (await client.post(url, json=BODY)).status_code == 500
                clock.advance(5.0)
                app.status, app.hold_body = 200, True
                async with client.stream("POST", url, json=BODY) as response:
                    assert response.status_code == 200  # the probe's answer has begun...
                    reader = asyncio.create_task(response.aread())
                    for _ in range(50):  # a bounded number of loop turns: the reader waits for the body
                        await asyncio.sleep(0)
                    reader.cancel()  # ...and its reader is cancelled before the body came
                    with pytest.raises(asyncio.CancelledError):
                        await reader
                assert breaker.state(server.url) == "half_open"  # a 200 head is no verdict without its body
                assert pipeline.health.status[server.url].probes_left == 1
        finally:
            app.hold_body = False


def test_a_failure_that_meets_both_rules_trips_once(upstream: SimulatedServer) -> None:
    client, breaker, _ = breaker_client({"consecutive_failures": 3, "min_calls": 3, "failure_rate": 0.5})
    for _ in range(3):
        fail(client, upstream)  # the 3rd is both the 3rd in a row and 3/3 calls failed
    assert [(t.old, t.new) for t in breaker.transitions] == [("closed", "open")]
    assert breaker.transitions[-1].reason == "3 consecutive failures; open for 5s"
    assert refused(client, upstream).retry_after == 5.0
    client.close()
