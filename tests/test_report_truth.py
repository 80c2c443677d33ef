"""The report tells the truth, checked through real pipelines and the real command.

- a failed answer handed to coalesced followers is an error and a miss, never a hit;
- retries, failovers and breaker trips are in the report, and errors drive its advice;
- ``aurelis replay`` refuses bad arguments before it starts anything;
- the demo's SQLite tier answers the next simulated run, and its file does not grow with every run.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

import aurelis_core
from aurelis_core.config import load_config
from aurelis_core.plugin import Usage
from aurelis_core.report import Report, build_report
from aurelis_core.stats import Sample
from aurelis_core.testing import SimulatedServer
from aurelis_core.tools.cli import main
from aurelis_core.tools.replay import SIMULATED_BASE_URL, SimulateOptions, WorkloadRequest, replay, simulated

BODY = {"model": "m", "messages": [{"role": "user", "content": "the same question"}]}


# --- hits are good answers only --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_followers_of_a_failed_answer_are_misses_and_errors(upstream: SimulatedServer) -> None:
    # The upstream answers 500 after 0.3 s: the four requests that arrive meanwhile coalesce onto the first
    # one's call, and are handed its failure.
    upstream.behavior.latency = 0.3
    upstream.behavior.status_override = 500
    pipeline = aurelis_core.Pipeline({"plugins": ["normalize", "memory"]})
    async with pipeline.instrument(httpx.AsyncClient(base_url=upstream.base_url, timeout=10)) as client:
        responses = await asyncio.gather(*(client.post("/chat/completions", json=BODY) for _ in range(5)))
    assert [r.status_code for r in responses] == [500] * 5
    assert upstream.count("/chat/completions") == 1
    followers = [r for r in responses if r.headers.get("x-aurelis-cache-tier") == "coalesced"]
    assert len(followers) == 4 and {r.headers["x-aurelis-cache"] for r in followers} == {"miss"}
    assert pipeline.stats.counters["hit"] == 0 and dict(pipeline.stats.hits_by_tier) == {}
    report = Report.from_stats(pipeline.stats)
    assert report.cache["hit"] == 0 and report.hit_rate == 0.0 and report.hits_by_tier == {}
    assert report.errors == 5 and report.error_kinds == {"http 500": 5}
    assert report.resilience == {"coalesced": 4}
    assert report.score == pytest.approx(0.0)


def test_a_saved_report_never_counts_a_failed_answer_as_a_hit() -> None:
    # Samples recorded before followers of a failed answer became misses said "hit" for them.
    old = [Sample(100.0, 0.1, "miss", None, "m", "ep", 500, None, 1),
           Sample(100.1, 0.1, "hit", "coalesced", "m", None, 500, None, 0),
           Sample(100.2, 0.1, "hit", "memory", "m", None, 200, None, 0, Usage(12, 0))]
    report = build_report(old, duration=1.0)
    assert report.cache == {"hit": 1, "miss": 2, "bypass": 0} and report.hits_by_tier == {"memory": 1}
    assert report.tokens_saved == 12


# --- resilience in the report ------------------------------------------------------------------------------------


def test_retries_failovers_and_breaker_trips_are_reported_and_advised_on(
    upstream_factory: Callable[..., SimulatedServer],
) -> None:
    bad, good = upstream_factory(failure_rate=1.0), upstream_factory()
    config: dict[str, Any] = {
        "plugins": ["round_robin", "retry", "breaker"],
        "endpoints": [{"url": bad.base_url, "name": "bad"}, {"url": good.base_url, "name": "good"}],
        "breaker": {"consecutive_failures": 2},
    }
    pipeline = aurelis_core.Pipeline(config)
    with pipeline.instrument(httpx.Client(base_url=bad.base_url, timeout=10)) as client:
        for i in range(8):
            body = {"model": "m", "messages": [{"role": "user", "content": f"q{i}"}]}
            assert client.post("/chat/completions", json=body).status_code == 200
    report = Report.from_stats(pipeline.stats, plugins=config["plugins"])
    failed_calls = bad.count("/chat/completions")
    assert failed_calls == 2  # then its circuit opened
    assert report.errors == 0
    assert report.resilience == {"retries": failed_calls, "failovers": failed_calls, "breaker trips": 1}
    assert f"resilience      retries {failed_calls}, failovers {failed_calls}, breaker trips 1" in report.text()
    assert any(a.startswith("Circuit breakers opened 1 times") for a in report.recommendations)


def test_errors_lead_the_advice_and_say_what_to_do(upstream: SimulatedServer) -> None:
    upstream.behavior.status_override = 503
    config = {"plugins": ["normalize", "memory"], "endpoints": [upstream.base_url]}
    workload = [WorkloadRequest("/chat/completions", body={"model": "m", "messages": [
        {"role": "user", "content": f"q{i}"}]}) for i in range(10)]
    report = asyncio.run(replay(workload, config, concurrency=2))
    assert report.error_rate == 1.0 and report.score == pytest.approx(0.0)
    [advice] = report.recommendations  # a low hit rate is the errors' consequence: not advised on
    assert advice.startswith("10 requests failed (100.0%; http 503: 10): enable the `retry` plugin")


def test_latencies_print_in_the_unit_that_fits_and_no_column_is_always_empty() -> None:
    samples = [Sample(100 + i / 10, 42e-6, "hit", "memory", "m", None, 200, None, 0) for i in range(9)]
    samples.append(Sample(101.0, 0.25, "miss", None, "m", "ep", 200, None, 1))
    text = build_report(samples, duration=1.0).text()
    assert "p50 42 \u00b5s" in text and " 0.0 ms" not in text and "max 250.0 ms" in text
    model_header, endpoint_header = (line for line in text.splitlines() if line.startswith("  per "))
    assert "hit rate" in model_header and "hit rate" not in endpoint_header


# --- arguments checked before any work ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--simulate", "--sim-failure-rate", "2"], "--sim-failure-rate: expected a share between 0 and 1, got 2"),
        (["--simulate", "--sim-failure-rate", "-0.1"], "--sim-failure-rate: expected a share between 0 and 1"),
        (["--simulate", "--concurrency", "0"], "--concurrency: expected a whole number >= 1, got 0"),
        (["--simulate", "--rate", "0"], "--rate: expected a number > 0, got 0"),
        (["--simulate", "--sim-latency", "nan"], "--sim-latency: expected a finite number"),
        (["--simulate", "--target-hit-rate", "1.5"], "--target-hit-rate: expected a share between 0 and 1"),
        (["--simulate", "--speed", "3"], "--speed needs --timed"),
        (["--sim-latency", "0.1"], "--sim-latency needs --simulate"),
        (["--sim-rpm", "5", "--sim-jitter", "0"], "--sim-jitter, --sim-rpm need --simulate"),
    ],
)
def test_replay_refuses_bad_arguments_before_starting_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    try:
        code = main(["replay", *argv, "--out", str(out)])
    except SystemExit as exit_info:  # argparse's own usage errors
        code = exit_info.code  # type: ignore[assignment]
    assert code == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no report, no cache file: nothing ran


def test_simulate_options_are_checked_through_the_api_too() -> None:
    with pytest.raises(ValueError, match="--sim-failure-rate must be between 0 and 1, got 2"):
        SimulateOptions(failure_rate=2)
    with pytest.raises(ValueError, match="--sim-endpoints must be a whole number >= 1, got 0"):
        SimulateOptions(endpoints=0)
    with pytest.raises(ValueError, match="concurrency must be a whole number >= 1, got 0"):
        asyncio.run(replay([WorkloadRequest("/x")], {"endpoints": ["http://127.0.0.1:9"]}, concurrency=0))


# --- the demo's SQLite tier --------------------------------------------------------------------------------------


def entries(path: Path) -> int:
    with sqlite3.connect(path) as db:
        count: int = db.execute("SELECT count(*) FROM aurelis_entries").fetchone()[0]
    return count


def test_the_sqlite_tier_answers_the_next_simulated_run_and_its_file_does_not_grow(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite3"
    workload = [WorkloadRequest("/chat/completions", body={"model": "m", "messages": [
        {"role": "user", "content": f"q{i % 5}"}]}) for i in range(20)]
    config = load_config({"plugins": ["normalize", "memory", "sqlite"], "sqlite": {"path": str(path)},
                          "endpoints": [{"url": "https://api.example/v1", "name": "primary"}]})
    reports = []
    for _ in range(3):  # each run listens on fresh ports
        with simulated(config, SimulateOptions(latency=0.0, jitter=0.0)) as (sim_config, servers):
            reports.append(asyncio.run(replay(workload, sim_config, base_url=SIMULATED_BASE_URL, concurrency=1)))
            sent = servers[0].count("/chat/completions")
        if len(reports) == 1:
            assert sent == 5 and entries(path) == 5
    first, *later = reports
    assert first.hits_by_tier == {"memory": 15}
    for report in later:
        assert sent == 0  # every answer came from the file the first run filled
        assert report.hits_by_tier == {"sqlite": 5, "memory": 15} and report.hit_rate == 1.0
    assert entries(path) == 5


def test_a_compression_fallback_is_reported_and_logged(
    upstream: SimulatedServer, caplog: pytest.LogCaptureFixture
) -> None:
    # The upstream refuses gzip-coded bodies (415): the request goes again plain, once, and says so.
    upstream.behavior.reject_encodings = ("gzip",)
    text = " ".join(f"token{i % 97} is part of a long prompt" for i in range(400))
    pipeline = aurelis_core.Pipeline({"plugins": ["gzip"]})
    with caplog.at_level(logging.DEBUG, logger="aurelis.compress"), pipeline.instrument(httpx.Client()) as client:
        response = client.post(upstream.url + "/v1/chat/completions",
                               json={"model": "m", "messages": [{"role": "user", "content": text}]})
    assert response.status_code == 200
    assert [r.header("content-encoding") for r in upstream.requests] == ["gzip", None]
    assert Report.from_stats(pipeline.stats).resilience == {"plain resends": 1}
    [line] = [r.getMessage() for r in caplog.records if r.name == "aurelis.compress"]
    assert line == f"fallback: 127.0.0.1:{upstream.port} answered 415 to a gzip body; sending it again uncompressed"


def test_hits_on_what_this_run_stored_are_not_counted_as_earlier_runs(
    upstream: SimulatedServer, tmp_path: Path
) -> None:
    # SQLite alone: the run's second request reads back what its first stored, a hit in the persistent tier that
    # no earlier run made (a concurrent replay meets the same whenever a request's SQLite read follows another's
    # store). Only the next pipeline's hits are on entries stored before it began.
    config = {"plugins": ["normalize", "sqlite"], "sqlite": {"path": str(tmp_path / "cache.sqlite3")}}
    body = {"model": "m", "messages": [{"role": "user", "content": "q"}]}
    reports = []
    for _ in range(2):
        pipeline = aurelis_core.Pipeline(config)
        with pipeline.instrument(httpx.Client()) as client:
            for _ in range(2):
                assert client.post(upstream.url + "/v1/chat/completions", json=body).status_code == 200
                pipeline.plugin("sqlite").flush()  # stored now, not written behind: the next request reads it
        reports.append(Report.from_stats(pipeline.stats))
        assert pipeline.report().earlier_hits == reports[-1].earlier_hits  # the live report says the same
        pipeline.close()
    first, second = reports
    assert upstream.count("/v1/chat/completions") == 1
    assert first.hits_by_tier == {"sqlite": 1} and first.earlier_hits == {}
    assert "stored before this run" not in first.text()
    assert second.hits_by_tier == {"sqlite": 2} and second.earlier_hits == {"sqlite": 2}
    assert "sqlite        2 hits (100.0% of lookups), 2 on entries stored before this run" in second.text()


def test_the_demo_says_when_earlier_runs_answered_and_how_to_start_cold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AURELIS_CONFIG", raising=False)
    argv = ["replay", "--simulate", "--sim-latency", "0", "--sim-jitter", "0", "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    assert "note:" not in capsys.readouterr().err  # a cold start: the upstream answered
    assert main([*argv, "--sim-failure-rate", "1"]) == 0
    captured = capsys.readouterr()
    assert "note: 234 answers came from what earlier runs stored (hits in sqlite " in captured.err
    assert "), not from the simulated upstream; `aurelis cache clear` starts cold" in captured.err
    assert "errors          0 (0.0%)" in captured.out  # every answer from the file: nothing reached the failing sim
    assert main(["cache", "clear"]) == 0 and capsys.readouterr().out.startswith("sqlite: deleted ")
    assert main([*argv, "--sim-failure-rate", "1"]) == 0
    captured = capsys.readouterr()
    assert "note:" not in captured.err and "errors          234 (100.0%)" in captured.out
