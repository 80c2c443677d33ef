"""``pipeline.report()``: the replay report over a sliding window of live traffic, checked through real
instrumented clients (sync and async) against the loopback simulator: its figures are what was sent, its window
slides, and its periodic logging runs while the pipeline does and stops when the client closes."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from support import PATIENCE

import aurelis_core
from aurelis_core import ConfigError
from aurelis_core.report import Report, Targets
from aurelis_core.testing import SimulatedServer


def chat(question: str, model: str = "m") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": question}]}


def test_a_sync_client_s_live_report_counts_what_was_sent(upstream_factory: Callable[..., SimulatedServer]) -> None:
    first, second = upstream_factory(), upstream_factory()
    config = {
        "plugins": ["normalize", "memory", "round_robin"],
        "endpoints": [{"url": first.base_url, "name": "first"}, {"url": second.base_url, "name": "second"}],
    }
    client = aurelis_core.instrument(httpx.Client(base_url=first.base_url, timeout=10), config)
    pipeline = aurelis_core.pipeline_of(client)
    assert pipeline is not None
    with client:
        for i in range(6):  # six misses, three to each endpoint
            assert client.post("/chat/completions", json=chat(f"q{i}", model="big")).status_code == 200
        for i in range(4):  # four hits of the memory tier
            assert client.post("/chat/completions", json=chat(f"q{i}", model="big")).status_code == 200
        first.behavior.status_override = second.behavior.status_override = 503
        for i in range(2):  # two errors, one on each endpoint
            assert client.post("/chat/completions", json=chat(f"e{i}", model="small")).status_code == 503
        report = pipeline.report()
    assert isinstance(report, Report)
    assert report.requests == 12
    assert report.cache == {"hit": 4, "miss": 8, "bypass": 0} and report.hits_by_tier == {"memory": 4}
    assert report.errors == 2 and report.error_kinds == {"http 503": 2}
    assert {name: group["requests"] for name, group in report.endpoints.items()} == {"first": 4, "second": 4}
    assert {name: group["errors"] for name, group in report.endpoints.items()} == {"first": 1, "second": 1}
    assert {name: group["requests"] for name, group in report.models.items()} == {"big": 10, "small": 2}
    assert first.count("/chat/completions") + second.count("/chat/completions") == 8
    assert report.plugins == ["normalize", "memory", "round_robin"]
    assert report.recommendations[0].startswith("2 requests failed (16.7%; http 503: 2)")
    # The same report a replay writes: text, JSON and the HTML page.
    assert "requests        12 in" in report.text()
    assert Report.from_dict(report.to_dict()).to_dict() == report.to_dict()
    page = report.html()
    assert page.startswith("<!doctype html>") and "<svg" in page


@pytest.mark.anyio
async def test_an_async_client_s_live_report_has_coalesced_followers_and_retries(
    upstream: SimulatedServer,
) -> None:
    upstream.behavior.latency = 0.3
    pipeline = aurelis_core.Pipeline({"plugins": ["normalize", "memory", "retry"], "endpoints": [upstream.base_url],
                                      "retry": {"base": 0.01}})
    async with pipeline.instrument(httpx.AsyncClient(base_url=upstream.base_url, timeout=10)) as client:
        # Five identical requests at once: one reaches the upstream, four follow it (hits of tier "coalesced").
        responses = await asyncio.gather(*(client.post("/chat/completions", json=chat("same")) for _ in range(5)))
        assert [r.status_code for r in responses] == [200] * 5
        upstream.behavior.latency = 0.0
        upstream.behavior.fail_next = 2  # the next request fails twice, then succeeds on its third attempt
        assert (await client.post("/chat/completions", json=chat("flaky"))).status_code == 200
        report = pipeline.report()
    assert upstream.count("/chat/completions") == 4
    assert report.requests == 6 and report.errors == 0
    assert report.hits_by_tier == {"coalesced": 4} and report.cache["miss"] == 2
    assert report.resilience == {"retries": 2, "coalesced": 4}
    assert report.endpoints[next(iter(report.endpoints))]["requests"] == 2


def test_the_window_slides_by_count(upstream: SimulatedServer) -> None:
    pipeline = aurelis_core.Pipeline({"report": {"window_requests": 5}})
    with pipeline.instrument(httpx.Client(base_url=upstream.base_url, timeout=10)) as client:
        for i in range(8):
            client.post("/chat/completions", json=chat("q", model=f"m{i}"))
        report = pipeline.report()
        assert report.requests == 5 and sorted(report.models) == ["m3", "m4", "m5", "m6", "m7"]
        assert pipeline.report(window_requests=2).requests == 2
        assert len(pipeline.stats.samples) == 5  # the window is the ring: memory is bounded by it


def test_the_window_slides_by_time_and_so_do_its_counters(upstream: SimulatedServer) -> None:
    pipeline = aurelis_core.Pipeline({"plugins": ["retry"], "endpoints": [upstream.base_url],
                                      "retry": {"base": 0.01}})
    with pipeline.instrument(httpx.Client(base_url=upstream.base_url, timeout=10)) as client:
        for i in range(3):  # each fails once, then succeeds
            upstream.behavior.fail_next = 1
            assert client.post("/chat/completions", json=chat(f"old{i}")).status_code == 200
        before = pipeline.report()
        assert before.requests == 3 and before.resilience == {"retries": 3}
        since = time.time()
        for i in range(2):
            assert client.post("/chat/completions", json=chat(f"new{i}")).status_code == 200
        recent = pipeline.report(window_seconds=time.time() - since)
    assert recent.requests == 2 and recent.resilience == {}
    # Throughput is over the window's seconds.
    assert recent.duration == pytest.approx(time.time() - since, abs=0.5)
    assert pipeline.report().requests == 5


def test_reports_while_requests_end_on_other_threads(upstream: SimulatedServer) -> None:
    # The ring is appended to by every request that ends; a report copies it while that goes on.
    pipeline = aurelis_core.Pipeline({"plugins": ["normalize", "memory"], "report": {"window_requests": 50}})
    errors: list[BaseException] = []
    with pipeline.instrument(httpx.Client(base_url=upstream.base_url, timeout=10)) as client:

        def send() -> None:
            try:
                for i in range(150):
                    client.post("/chat/completions", json=chat(f"q{i % 5}"))
            except BaseException as exc:  # reported by the assertion below
                errors.append(exc)

        senders = [threading.Thread(target=send) for _ in range(4)]
        for thread in senders:
            thread.start()
        reports = 0
        while any(thread.is_alive() for thread in senders):
            assert pipeline.report().requests <= 50
            reports += 1
        for thread in senders:
            thread.join()
        final = pipeline.report(window_requests=50)
    assert not errors and reports > 0
    assert final.requests == 50 and pipeline.stats.counters["requests"] == 600


def test_targets_score_the_live_report(upstream: SimulatedServer) -> None:
    config = {"report": {"targets": {"p50": 1e-9, "p95": 1e-9, "p99": 1e-9}}}
    with aurelis_core.instrument(httpx.Client(base_url=upstream.base_url, timeout=10), config) as client:
        client.post("/chat/completions", json=chat("q"))
        pipeline = aurelis_core.pipeline_of(client)
        assert pipeline is not None
        strict = pipeline.report()
        lenient = pipeline.report(targets=Targets(p50=60, p95=60, p99=60))
    assert strict.targets.p95 == 1e-9 and strict.score is not None and strict.score < 1
    assert lenient.score == pytest.approx(100.0)


# --- periodic logging --------------------------------------------------------------------------------------------


def _report_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "aurelis-report"}


def test_the_report_is_logged_periodically_until_the_client_closes(
    upstream: SimulatedServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aurelis.report")
    before = _report_threads()
    client = aurelis_core.instrument(httpx.Client(base_url=upstream.base_url, timeout=10),
                                     {"report": {"log_every": 1}})
    assert _report_threads() == before  # started with the pipeline, not when it is built
    client.post("/chat/completions", json=chat("q"))
    assert len(_report_threads() - before) == 1
    deadline = time.monotonic() + PATIENCE
    while not [r for r in caplog.records if r.name == "aurelis.report"] and time.monotonic() < deadline:
        time.sleep(0.05)
    [record, *_] = [r for r in caplog.records if r.name == "aurelis.report"]
    assert record.levelno == logging.INFO and "requests        1 in" in record.getMessage()
    client.close()
    # Closing the client closed its pipeline, which stopped (and waited for) the logging thread.
    assert _report_threads() == before
    logged = len([r for r in caplog.records if r.name == "aurelis.report"])
    time.sleep(1.2)
    assert len([r for r in caplog.records if r.name == "aurelis.report"]) == logged


@pytest.mark.anyio
async def test_an_async_pipeline_logs_from_its_thread_and_stops_on_aclose(upstream: SimulatedServer) -> None:
    before = _report_threads()
    pipeline = aurelis_core.Pipeline({"report": {"log_every": 60}})
    async with pipeline.instrument(httpx.AsyncClient(base_url=upstream.base_url, timeout=10)) as client:
        await client.post("/chat/completions", json=chat("q"))
        assert len(_report_threads() - before) == 1
    await pipeline.aclose()
    assert _report_threads() == before


def test_the_logging_stops_when_an_unclosed_pipeline_is_collected() -> None:
    before = _report_threads()
    pipeline = aurelis_core.Pipeline({"report": {"log_every": 60}})
    pipeline.start()
    [thread] = _report_threads() - before
    del pipeline
    gc.collect()
    thread.join(PATIENCE)
    assert not thread.is_alive()


def test_no_logging_thread_unless_asked(upstream: SimulatedServer) -> None:
    before = _report_threads()
    with aurelis_core.instrument(httpx.Client(base_url=upstream.base_url, timeout=10), {}) as client:
        client.post("/chat/completions", json=chat("q"))
        assert _report_threads() == before


# --- the [report] table is checked -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"window_requests": 0}, "[report] window_requests: expected an integer >= 1, got 0"),
        ({"window_seconds": -1}, "[report] window_seconds: expected a number > 0, got -1"),
        ({"log_every": 0.5}, "[report] log_every: expected a number >= 1, got 0.5"),
        ({"log_evry": 5}, "[report]: unknown key 'log_evry'; did you mean 'log_every'?"),
        ({"targets": {"p95": 0}}, "[report] targets: target 'p95' must be a number > 0, got 0"),
        ({"targets": {"hitrate": 1}}, "[report] targets: unknown target 'hitrate'; did you mean 'hit_rate'?"),
        ({"targets": {"rps": "fast"}}, "[report] targets['rps']: expected a number, got 'fast'"),
    ],
)
def test_the_report_table_is_checked_when_the_pipeline_is_built(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        aurelis_core.Pipeline({"report": table})
    assert message in str(caught.value)


def test_report_arguments_are_checked() -> None:
    pipeline = aurelis_core.Pipeline({})
    with pytest.raises(ValueError, match="window_requests: expected an integer >= 1, got 0"):
        pipeline.report(window_requests=0)
    with pytest.raises(ValueError, match="window_seconds: expected a number > 0"):
        pipeline.report(window_seconds=float("nan"))
