"""The ``tuner`` plugin: the limit follows overload and latency, the queue is bounded, memory pressure shrinks
the L1 tier.

Windows pass on a fake clock (``tuner.clock``), and requests are held upstream while the test counts them in
flight, so every outcome is decided by what the tuner saw, not by how fast the machine ran the test."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import httpx
import pytest
from support import PATIENCE, FakeClock, gated_upstream

from aurelis_core import Attempt, ConfigError, Pipeline, RequestContext, RequestControls
from aurelis_core.testing import SimulatedServer
from aurelis_plugins.tuner import ConcurrencyLimitError

BODY = {"model": "sim-chat", "messages": [{"role": "user", "content": "hi"}]}
HOST = "127.0.0.1"


def pipeline_with(**tuner: Any) -> Pipeline:
    return Pipeline({"plugins": ["tuner"], "tuner": tuner})


def test_aimd_backs_off_under_429s_and_recovers() -> None:
    # rollback_latency: real latencies (requests held upstream) must not decide anything here.
    pipeline = pipeline_with(initial_limit=8, window=1.0, min_samples=4, rollback_latency=1000.0)
    tuner = pipeline.plugin("tuner")
    clock = tuner.clock = FakeClock()
    with gated_upstream() as up, pipeline.instrument(httpx.Client(timeout=30)) as client:
        url = up.url + "/v1/chat/completions"

        def window(in_flight: int) -> None:
            """``in_flight`` attempts at once (held upstream until all are there), then the window's time passes
            and one more attempt ends it."""
            arrived = up.arrived
            up.hold()
            with ThreadPoolExecutor(in_flight) as pool:
                calls = [pool.submit(client.post, url, json=BODY) for _ in range(in_flight)]
                up.wait_arrivals(arrived + in_flight)
                up.release()
                assert {c.result().status_code for c in calls} == {up.status}
            clock.advance(1.0)
            client.post(url, json=BODY)

        up.status = 429
        limits = []
        for _ in range(4):
            window(4)
            limits.append(tuner.limit(HOST))
        assert limits == [7, 6, 5, 4]  # int(limit * 0.9), at least one less each overloaded window
        decreases = [c for c in tuner.changes if c.kind == "decrease"]
        assert [(c.old, c.new) for c in decreases] == [(8, 7), (7, 6), (6, 5), (5, 4)]
        assert decreases[0].reason == "5/5 attempts overloaded (429/5xx/timeout)"
        up.status = 200
        window(3)  # a clean window that never reached the limit of 4: no reason to raise it
        assert tuner.limit(HOST) == 4
        window(4)  # a clean window that did
        assert tuner.limit(HOST) == 5
        assert tuner.changes[-1].kind == "increase"
        assert tuner.changes[-1].reason == "limit reached with no overload in 5 attempts"
    counters = pipeline.stats.counters
    for kind in ("decrease", "rollback", "increase"):
        assert counters[f"tuner.{kind}"] == sum(1 for c in tuner.changes if c.kind == kind)
    assert tuner.snapshot()[HOST] == {"limit": 5, "in_flight": 0, "queued": 0}


def drive(tuner: Any, clock: FakeClock, latency: float, *, windows: int = 1, overloaded: bool = False,
          fill: int | None = None) -> None:
    """Windows that each fill the limit (so it is binding; or only ``fill`` attempts at once), every attempt
    taking ``latency`` seconds (or answering 429), the window's time passing with its last attempt."""
    for _ in range(windows):
        held = []
        for _ in range(tuner.limit(HOST) if fill is None else fill):
            ctx = RequestContext(
                httpx.Request("POST", "http://127.0.0.1:9/v1/chat/completions"), None, httpx, False,
                RequestControls(),
            )
            attempt = Attempt(1, None)
            assert tuner.aurelis_admit(ctx, attempt) is None
            held.append((ctx, attempt))
        for i, (ctx, attempt) in enumerate(held):
            attempt.status_code = 429 if overloaded else 200
            attempt.first_byte = attempt.finished = attempt.started + latency
            if i == len(held) - 1:
                clock.advance(1.0)  # the window ends with its last attempt
            tuner.aurelis_attempt_end(ctx, attempt)


def test_gradient2_follows_latency() -> None:
    pipeline = pipeline_with(algorithm="gradient2", initial_limit=8, window=1.0, min_samples=4, rollback_hold=0)
    tuner = pipeline.plugin("tuner")
    clock = tuner.clock = FakeClock()
    drive(tuner, clock, 0.01, windows=3)
    before = tuner.limit(HOST)
    assert before > 8  # steady latency, limit reached: it grows (by about sqrt(limit) * smoothing a window)
    seen = len(tuner.changes)
    drive(tuner, clock, 0.05, windows=4)  # the upstream slows down five times
    slowed = list(tuner.changes)[seen:]
    assert min(c.new for c in slowed) < before
    assert any(c.kind == "decrease" and "gradient 0.50" in c.reason for c in slowed)
    lowest, seen = tuner.limit(HOST), len(tuner.changes)
    drive(tuner, clock, 0.01, windows=3)  # and recovers
    assert tuner.limit(HOST) > lowest
    assert all(c.kind == "increase" for c in list(tuner.changes)[seen:])


def test_gradient2_backs_off_on_overload_and_ignores_unused_headroom() -> None:
    pipeline = pipeline_with(algorithm="gradient2", initial_limit=10, window=1.0, min_samples=1)
    tuner = pipeline.plugin("tuner")
    clock = tuner.clock = FakeClock()
    drive(tuner, clock, 0.01, overloaded=True)
    assert tuner.limit(HOST) == 9 and tuner.changes[-1].kind == "decrease"
    changes = len(tuner.changes)
    drive(tuner, clock, 0.01, windows=3, fill=3)  # fast, but never more than 3 at once: no reason to grow
    assert tuner.limit(HOST) == 9 and len(tuner.changes) == changes
    drive(tuner, clock, 0.01)
    assert tuner.limit(HOST) > 9


def test_rollback_when_latency_worsens_after_an_increase() -> None:
    pipeline = pipeline_with(initial_limit=2, window=1.0, min_samples=1, rollback_latency=0.5, rollback_hold=3)
    tuner = pipeline.plugin("tuner")
    clock = tuner.clock = FakeClock()

    def window(latency: float) -> None:
        """One window that fills the limit (so it is binding), each attempt taking ``latency`` seconds."""
        held = []
        for _ in range(tuner.limit(HOST)):
            ctx = RequestContext(
                httpx.Request("POST", "http://127.0.0.1:9/v1/chat/completions"), None, httpx, False,
                RequestControls(),
            )
            attempt = Attempt(1, None)
            assert tuner.aurelis_admit(ctx, attempt) is None
            held.append((ctx, attempt))
        for i, (ctx, attempt) in enumerate(held):
            attempt.status_code = 200
            attempt.first_byte = attempt.finished = attempt.started + latency
            if i == len(held) - 1:
                clock.advance(1.0)  # the window ends with its last attempt
            tuner.aurelis_attempt_end(ctx, attempt)

    window(0.1)
    assert tuner.limit(HOST) == 3  # the limit was reached without overload: +1
    window(0.2)  # twice as slow after the increase: back to 2
    assert tuner.limit(HOST) == 2
    rollback = tuner.changes[-1]
    assert (rollback.kind, rollback.old, rollback.new) == ("rollback", 3, 2)
    assert "latency +100%" in rollback.reason
    for _ in range(3):
        window(0.1)
        assert tuner.limit(HOST) == 2  # held after the rollback
    window(0.1)
    assert tuner.limit(HOST) == 3
    window(0.11)  # +10% after an increase: within rollback_latency, so the increase stays and grows
    assert tuner.limit(HOST) == 4


@pytest.mark.anyio
async def test_queue_bound_and_timeout_fail_clearly(upstream: SimulatedServer) -> None:
    upstream.behavior.latency = 0.3
    url = upstream.base_url + "/chat/completions"
    pipeline = pipeline_with(initial_limit=1, max_limit=1, max_queue=1)
    outcomes: list[Any] = []
    async with pipeline.instrument(httpx.AsyncClient()) as client:

        async def call() -> None:
            try:
                outcomes.append((await client.post(url, json=BODY)).status_code)
            except ConcurrencyLimitError as exc:
                outcomes.append(exc)

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(call)
    assert sorted(o for o in outcomes if isinstance(o, int)) == [200, 200]
    [error] = [o for o in outcomes if isinstance(o, ConcurrencyLimitError)]
    assert "max_queue = 1" in str(error)
    assert pipeline.stats.counters["tuner.rejected"] == 1
    assert pipeline.plugin("tuner").snapshot()[HOST] == {"limit": 1, "in_flight": 0, "queued": 0}

    timed = pipeline_with(initial_limit=1, max_limit=1, queue_timeout=0.05)
    with gated_upstream() as up, timed.instrument(httpx.Client(timeout=30)) as sync_client:
        up.hold()  # the first request keeps its slot until the second has given up waiting
        first = threading.Thread(target=sync_client.post, args=(up.url + "/v1/chat/completions",),
                                 kwargs={"json": BODY})
        first.start()
        up.wait_arrivals(1)
        with pytest.raises(ConcurrencyLimitError, match="queue_timeout"):
            sync_client.post(up.url + "/v1/chat/completions", json=BODY)
        up.release()
        first.join()
        assert sync_client.post(up.url + "/v1/chat/completions", json=BODY).status_code == 200  # the slot came back
    assert timed.plugin("tuner").snapshot()[HOST] == {"limit": 1, "in_flight": 0, "queued": 0}


def test_sync_waiters_get_slots_in_turn() -> None:
    pipeline = pipeline_with(initial_limit=2, max_limit=2)
    tuner = pipeline.plugin("tuner")
    with gated_upstream() as up, pipeline.instrument(httpx.Client(timeout=30)) as client:
        up.hold()
        with ThreadPoolExecutor(6) as pool:
            calls = [pool.submit(client.post, up.url + "/v1/chat/completions", json=BODY) for _ in range(6)]
            up.wait_arrivals(2)
            wait_until(lambda: tuner.snapshot()[HOST]["queued"] == 4)
            assert tuner.snapshot()[HOST] == {"limit": 2, "in_flight": 2, "queued": 4}
            assert up.arrived == 2  # the other four wait for a slot, not upstream
            up.release()
            assert [c.result().status_code for c in calls] == [200] * 6
    assert up.arrived == 6 and pipeline.stats.counters["tuner.queued"] == 4
    assert tuner.snapshot()[HOST] == {"limit": 2, "in_flight": 0, "queued": 0}


def wait_until(condition: Any) -> None:
    """Poll ``condition`` until it holds (a thread is on its way there); fails only if it never does."""
    deadline = time.monotonic() + PATIENCE
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.001)


def test_memory_pressure_shrinks_l1_first(upstream: SimulatedServer) -> None:
    pipeline = Pipeline({
        "plugins": ["normalize", "memory", "tuner"],
        "tuner": {"max_rss_bytes": 1, "memory_check_interval": 0.001, "shrink_fraction": 0.5},
    })
    memory = pipeline.plugin("memory")
    tuner = pipeline.plugin("tuner")
    clock = tuner.clock = FakeClock()
    url = upstream.base_url + "/chat/completions"
    with pipeline.instrument(httpx.Client()) as client:
        for i in range(6):
            clock.advance(0.002)  # past memory_check_interval: each request's end checks
            client.post(url, json={**BODY, "messages": [{"role": "user", "content": f"question {i}"}]})
    shrinks = [c for c in tuner.changes if c.kind == "memory_shrink"]
    assert shrinks and shrinks[0].target == "memory"
    assert memory.budget < memory.config.max_bytes
    assert memory.currsize <= memory.budget
    assert "max_rss_bytes" in shrinks[0].reason
    assert pipeline.stats.counters["tuner.memory_shrink"] == len(shrinks)


def test_memory_pressure_without_l1_lowers_limits(upstream: SimulatedServer) -> None:
    pipeline = pipeline_with(initial_limit=10, max_rss_bytes=1)
    with pipeline.instrument(httpx.Client()) as client:
        client.post(upstream.base_url + "/chat/completions", json=BODY)
    tuner = pipeline.plugin("tuner")
    assert tuner.limit(HOST) == 9
    assert "no L1 entries" in tuner.changes[-1].reason


def test_bad_options_fail_clearly() -> None:
    with pytest.raises(ConfigError, match="aimd"):
        pipeline_with(algorithm="vegas")
    with pytest.raises(ConfigError, match="min_limit <= initial_limit <= max_limit"):
        pipeline_with(initial_limit=50, max_limit=10)
    with pytest.raises(ConfigError, match="backoff"):
        pipeline_with(backoff=1.5)
