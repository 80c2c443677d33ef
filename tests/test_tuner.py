"""The ``tuner`` plugin against the simulated upstream: the limit follows overload, the queue is bounded,
memory pressure shrinks the L1 tier."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import anyio
import aurelis_plugins.tuner as tuner_module
import httpx
import pytest
from aurelis_plugins.tuner import ConcurrencyLimitError

from aurelis_core import Attempt, ConfigError, Pipeline, RequestContext, RequestControls
from aurelis_core.testing import SimulatedServer

BODY = {"model": "sim-chat", "messages": [{"role": "user", "content": "hi"}]}
HOST = "127.0.0.1"


async def load(
    client: httpx.AsyncClient, url: str, workers: int, seconds: float
) -> list[int]:
    """``workers`` callers sending back to back for ``seconds``; returns the status codes."""
    statuses: list[int] = []
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        while time.monotonic() < deadline:
            statuses.append((await client.post(url, json=BODY)).status_code)

    async with anyio.create_task_group() as tg:
        for _ in range(workers):
            tg.start_soon(worker)
    return statuses


def pipeline_with(**tuner: Any) -> Pipeline:
    return Pipeline({"plugins": ["tuner"], "tuner": tuner})


@pytest.mark.anyio
async def test_aimd_backs_off_under_429s_and_recovers(upstream: SimulatedServer) -> None:
    upstream.behavior.update(latency=0.01, max_inflight=4)
    pipeline = pipeline_with(initial_limit=16, window=0.05, min_samples=5, rollback_hold=2)
    tuner = pipeline.plugin("tuner")
    url = upstream.base_url + "/chat/completions"
    async with pipeline.instrument(httpx.AsyncClient(limits=httpx.Limits(max_connections=32))) as client:
        statuses = await load(client, url, workers=16, seconds=1.5)
        assert 429 in statuses
        lowered = tuner.limit(HOST)
        assert lowered <= 6
        decreases = [c for c in tuner.changes if c.kind in ("decrease", "rollback")]
        assert decreases and all(c.new < c.old for c in decreases)
        assert "overloaded" in decreases[0].reason
        # The lowered limit keeps the upstream nearer its bound: far fewer 429s once the limit has settled than
        # before it first came down. (Split by when the changes happened, not by share of the run: how fast the
        # first decrease comes depends on the machine's speed, which must not decide the outcome. And by when
        # each request ended as the pipeline recorded it, right after its attempt ended and the tuner learnt from
        # it: a caller may only resume after a burst of answers has already moved the limit.)
        ended = [(sample.at, sample.status) for sample in pipeline.stats.samples]
        before = [status for at, status in ended if at <= decreases[0].at]
        settled = [status for at, status in ended if at > decreases[-1].at]
        assert before and settled
        assert settled.count(200) / len(settled) > before.count(200) / len(before) + 0.2
        upstream.behavior.max_inflight = None
        await load(client, url, workers=16, seconds=1.0)
    assert tuner.limit(HOST) > lowered + 2
    assert any(c.kind == "increase" and c.at > decreases[-1].at for c in tuner.changes)
    counters = pipeline.stats.counters
    for kind in ("decrease", "rollback", "increase"):
        assert counters[f"tuner.{kind}"] == sum(1 for c in tuner.changes if c.kind == kind)
    assert tuner.snapshot()[HOST]["in_flight"] == 0


@pytest.mark.anyio
async def test_gradient2_follows_latency(upstream: SimulatedServer) -> None:
    upstream.behavior.latency = 0.01
    pipeline = pipeline_with(algorithm="gradient2", initial_limit=8, window=0.05, min_samples=4)
    tuner = pipeline.plugin("tuner")
    url = upstream.base_url + "/chat/completions"
    async with pipeline.instrument(httpx.AsyncClient(limits=httpx.Limits(max_connections=32))) as client:
        await load(client, url, workers=12, seconds=0.5)
        before, slowed_at = tuner.limit(HOST), time.time()
        upstream.behavior.latency_per_inflight = 0.01  # the upstream slows down as it is loaded
        await load(client, url, workers=12, seconds=1.0)
        recovered_at = time.time()
        upstream.behavior.latency_per_inflight = 0.0
        await load(client, url, workers=12, seconds=1.0)
    slowed = [c for c in tuner.changes if slowed_at < c.at < recovered_at]
    assert min(c.new for c in slowed) < before
    assert any(c.kind == "decrease" and "gradient" in c.reason for c in slowed)
    last_decrease = max(c.at for c in slowed if c.kind == "decrease")
    assert any(c.kind == "increase" and c.at > last_decrease for c in tuner.changes)


def test_rollback_when_latency_worsens_after_an_increase(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(tuner_module, "time", SimpleNamespace(monotonic=lambda: clock[0], time=time.time))
    pipeline = pipeline_with(initial_limit=2, window=1.0, min_samples=1, rollback_latency=0.5, rollback_hold=3)
    tuner = pipeline.plugin("tuner")

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
                clock[0] += 1.0  # the window ends with its last attempt
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
    with timed.instrument(httpx.Client()) as sync_client:
        first = threading.Thread(target=sync_client.post, args=(url,), kwargs={"json": BODY})
        first.start()
        time.sleep(0.1)
        with pytest.raises(ConcurrencyLimitError, match="queue_timeout"):
            sync_client.post(url, json=BODY)
        first.join()
        assert sync_client.post(url, json=BODY).status_code == 200  # the slot came back
    assert timed.plugin("tuner").snapshot()[HOST] == {"limit": 1, "in_flight": 0, "queued": 0}


def test_sync_waiters_get_slots_in_turn(upstream: SimulatedServer) -> None:
    upstream.behavior.latency = 0.05
    url = upstream.base_url + "/chat/completions"
    pipeline = pipeline_with(initial_limit=2, max_limit=2)
    peak = 0
    statuses: list[int] = []
    with pipeline.instrument(httpx.Client()) as client:
        threads = [threading.Thread(target=lambda: statuses.append(client.post(url, json=BODY).status_code))
                   for _ in range(6)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            peak = max(peak, pipeline.plugin("tuner").snapshot().get(HOST, {}).get("in_flight", 0))
            time.sleep(0.005)
    assert statuses == [200] * 6
    assert peak == 2
    assert pipeline.stats.counters["tuner.queued"] >= 3


def test_memory_pressure_shrinks_l1_first(upstream: SimulatedServer) -> None:
    pipeline = Pipeline({
        "plugins": ["normalize", "memory", "tuner"],
        "tuner": {"max_rss_bytes": 1, "memory_check_interval": 0.001, "shrink_fraction": 0.5},
    })
    memory = pipeline.plugin("memory")
    tuner = pipeline.plugin("tuner")
    url = upstream.base_url + "/chat/completions"
    with pipeline.instrument(httpx.Client()) as client:
        for i in range(6):
            time.sleep(0.002)
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
