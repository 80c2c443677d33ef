"""Report figures against hand-computed ones, the score formula, advice, JSON round trip (the HTML page:
test_report_html.py)."""

from __future__ import annotations

import json

import httpx
import pytest

import aurelis_core
from aurelis_core.plugin import Usage
from aurelis_core.report import Report, Targets, build_report, score
from aurelis_core.stats import Sample, percentile, usage_tokens
from aurelis_core.testing import SimulatedServer


def sample(at: float, latency: float, cache: str = "miss", *, tier: str | None = None, model: str = "a",
           endpoint: str | None = "ep1", status: int | None = 200, error: str | None = None,
           tokens: int | None = None) -> Sample:
    return Sample(at, latency, cache, tier, model, endpoint, status, error, 1,
                  None if tokens is None else Usage(tokens, 0))


def ten_samples() -> list[Sample]:
    # Latencies 0.1 .. 1.0; 4 hits (3 memory, 1 sqlite), 4 misses, 2 bypass; one 500 and one exception.
    return [
        sample(100.1, 0.1, "hit", tier="memory", endpoint=None, tokens=10),
        sample(100.2, 0.2, "hit", tier="memory", endpoint=None, tokens=20),
        sample(100.3, 0.3, "hit", tier="memory", endpoint=None),
        sample(100.4, 0.4, "hit", tier="sqlite", endpoint=None, tokens=5),
        sample(100.5, 0.5, "miss"),
        sample(100.6, 0.6, "miss", status=500),
        sample(100.7, 0.7, "miss", model="b", endpoint="ep2"),
        sample(100.8, 0.8, "miss", model="b", endpoint="ep2", status=None, error="ConnectError"),
        sample(100.9, 0.9, "bypass", model="b"),
        sample(101.0, 1.0, "bypass", model="b", tokens=999),  # spent, not saved
    ]


def test_percentile_is_nearest_rank() -> None:
    values = [0.1 * i for i in range(1, 11)]
    assert percentile(values, 50) == pytest.approx(0.5)  # the 5th of 10
    assert percentile(values, 95) == pytest.approx(1.0)  # ceil(9.5) = 10th
    assert percentile(values, 10) == pytest.approx(0.1)
    assert percentile([], 50) is None


def test_figures_match_hand_computed() -> None:
    report = build_report(ten_samples(), duration=2.0)
    assert report.requests == 10
    assert report.rps == pytest.approx(5.0)
    assert report.latency["avg"] == pytest.approx(0.55)
    assert report.latency["p50"] == pytest.approx(0.5)
    assert report.latency["p95"] == pytest.approx(1.0)
    assert report.latency["p99"] == pytest.approx(1.0)
    assert report.latency["max"] == pytest.approx(1.0)
    assert report.hit_rate == pytest.approx(4 / 8)  # bypassed requests are not lookups
    assert report.cache == {"hit": 4, "miss": 4, "bypass": 2}
    assert report.hits_by_tier == {"memory": 3, "sqlite": 1}
    assert report.errors == 2
    assert report.error_rate == pytest.approx(0.2)
    assert report.tokens_saved == 35
    a, b = report.models["a"], report.models["b"]
    assert (a["requests"], b["requests"]) == (6, 4)
    assert a["avg"] == pytest.approx((0.1 + 0.2 + 0.3 + 0.4 + 0.5 + 0.6) / 6)
    assert a["hit_rate"] == pytest.approx(4 / 6) and a["hits"] == 4
    assert b["hit_rate"] == pytest.approx(0.0)
    assert (a["errors"], b["errors"]) == (1, 1)
    assert b["share"] == pytest.approx(0.4)
    # Per endpoint: only requests that reached one.
    assert report.endpoints["ep1"]["requests"] == 4  # the two misses and the two bypassed requests
    assert report.endpoints["ep2"]["requests"] == 2
    assert report.endpoints["ep2"]["avg"] == pytest.approx(0.75)
    share = report.series["traffic_share"]
    assert share["cache hit"] == pytest.approx(0.4)
    assert share["ep2"] == pytest.approx(0.2)
    assert sum(share.values()) == pytest.approx(1.0)
    assert report.series["latency_percentiles"][-1] == pytest.approx([90.0, 0.9])  # 1 - 1/10: the 9th of 10
    assert sum(report.series["timeline"]["requests"]) == 10


def test_duration_defaults_to_the_samples_window() -> None:
    # First request started at 100.1 - 0.1 = 100.0, the last ended at 101.0.
    assert build_report(ten_samples()).duration == pytest.approx(1.0)


def test_score_formula() -> None:
    report = build_report(ten_samples(), duration=2.0)
    # p50 0.5 <= 0.5, p95 1.0 <= 1.0, p99 1.0 <= 2.0: 1 each; hit rate 0.5/0.7; requests/s not scored without
    # a target; the mean times the 80% of requests that succeeded.
    expected = 100 * (1 + 1 + 1 + 0.5 / 0.7) / 4 * 0.8
    assert report.score == pytest.approx(expected)
    assert "rps" not in report.score_ratios and report.score_ratios["success"] == pytest.approx(0.8)
    # Latency over target: target / achieved.
    value, ratios = score({"p50": 2.0}, Targets(p50=0.5))
    assert ratios == {"p50": 0.25} and value == pytest.approx(25.0)
    # Unmeasurable figures are left out, not counted as failures.
    assert score({"p50": None, "hit_rate": None}, Targets()) == (None, {})
    rescored = report.rescored(Targets(rps=5, hit_rate=0.5))
    assert rescored.score == pytest.approx(80.0)  # every target met, 2 of 10 requests failed
    with pytest.raises(ValueError, match="must be a number > 0"):
        Targets(p95=0)
    with pytest.raises(ValueError, match="at most 1"):
        Targets(hit_rate=1.5)


def test_every_request_failing_scores_zero_however_fast() -> None:
    failed = [sample(100 + i / 10, 0.01, "miss", status=500) for i in range(10)]
    report = build_report(failed, duration=1.0)
    assert report.error_rate == 1.0 and report.score == pytest.approx(0.0)
    assert report.error_kinds == {"http 500": 10}
    assert "score           0/100" in report.text()


def test_requests_per_second_is_scored_against_the_offered_load() -> None:
    # 10 requests in 1 s, offered at 10 req/s: a 1000 req/s target is out of the run's reach, so it is the
    # offered load that is met or missed.
    samples = [sample(100 + i / 10, 0.1, "miss") for i in range(10)]
    offered = build_report(samples, duration=1.0, targets=Targets(rps=1000), offered_rps=10.0)
    assert offered.score_ratios["rps"] == pytest.approx(1.0)
    unbounded = build_report(samples, duration=1.0, targets=Targets(rps=1000))
    assert unbounded.score_ratios["rps"] == pytest.approx(0.01)
    slow = build_report(samples, duration=2.0, targets=Targets(rps=1000), offered_rps=10.0)
    assert slow.score_ratios["rps"] == pytest.approx(0.5)  # 5 req/s of the 10 offered
    assert "offered 10.0 req/s" in offered.text()


def test_rounding_never_contradicts_the_comparison() -> None:
    # 6996 hits of 10000 lookups: 69.96%, below 70%: never printed as "70.0% (below 70.0%)".
    samples = [sample(100 + i / 1e4, 0.1, "hit" if i < 6996 else "miss", tier="memory") for i in range(10_000)]
    report = build_report(samples, duration=1.0)
    [advice] = report.recommendations
    assert advice.startswith("Cache hit rate is 69.9% (below 70.0%)")
    # A ratio of 99.94% of a target is not "100%" and the score is not "100/100".
    assert report.score_ratios["hit_rate"] == pytest.approx(0.6996 / 0.7)
    assert "hit_rate 99%" in report.text() and "score           99/100" in report.text()


def test_recommendations() -> None:
    advice = build_report(ten_samples(), duration=2.0).recommendations
    assert len(advice) == 2
    assert advice[0].startswith("2 requests failed (20.0%; http 500: 1, ConnectError: 1)")
    assert "hit rate is 50.0%" in advice[1]
    slow = [sample(100 + i, 2.5 + (i % 2) * 2.0, "hit", model="big", endpoint=None) for i in range(10)]
    advice = build_report(slow).recommendations
    assert any("p95 latency is 4.50 s" in a for a in advice)
    assert any(a.startswith("Model big averages 3.50 s") for a in advice)
    assert not any("hit rate" in a for a in advice)


def test_empty_report() -> None:
    report = build_report([])
    assert report.requests == 0 and report.rps is None and report.score is None
    assert "requests        0" in report.text()
    report.html()


def test_json_round_trip_and_text() -> None:
    report = build_report(ten_samples(), duration=2.0)
    data = json.loads(json.dumps(report.to_dict()))
    assert Report.from_dict(data) == report
    with pytest.raises(ValueError, match="not an Aurelis report"):
        Report.from_dict({"requests": 1})
    text = report.text()
    assert "5.0 req/s" in text
    assert "p95 1.00 s" in text
    assert "hits 4, misses 4, bypass 2" in text
    assert "tokens saved    35" in text


def test_usage_tokens() -> None:
    assert usage_tokens(b'{"x": 1, "usage": {"prompt_tokens": 3, "total_tokens": 12}}') == 12
    assert usage_tokens(b'{"usage": {"total_tokens":7}}') == 7
    assert usage_tokens(b"\x1f\x8b\x08binary") is None


def test_tokens_saved_from_a_real_pipeline(upstream: SimulatedServer) -> None:
    body = {"model": "sim-chat", "messages": [{"role": "user", "content": "one two three"}]}
    pipeline = aurelis_core.Pipeline({"plugins": ["normalize", "memory"]})
    with pipeline.instrument(httpx.Client(base_url=upstream.base_url)) as client:
        first = client.post("/chat/completions", json=body)
        for _ in range(3):
            client.post("/chat/completions", json=body)
    report = Report.from_stats(pipeline.stats)
    assert report.cache["hit"] == 3 and report.hit_rate == pytest.approx(0.75)
    assert report.tokens_saved == 3 * first.json()["usage"]["total_tokens"]
    assert report.models["sim-chat"]["requests"] == 4


def test_tokens_spent_and_cost_from_a_real_pipeline(upstream: SimulatedServer) -> None:
    """An answer fetched is spent at its model's price, each hit on it saves the same; an unpriced model is named
    and left out of both sums, and a failed answer spends nothing."""
    pipeline = aurelis_core.Pipeline({
        "plugins": ["normalize", "memory"],
        "pricing": {"sim-*": {"input": 2.0, "output": 8.0}},
    })
    priced = {"model": "sim-chat", "messages": [{"role": "user", "content": "one two three"}]}
    unpriced = {"model": "other-model", "messages": [{"role": "user", "content": "four five"}]}
    with pipeline.instrument(httpx.Client(base_url=upstream.base_url)) as client:
        usage = client.post("/chat/completions", json=priced).json()["usage"]
        client.post("/chat/completions", json=priced)
        client.post("/chat/completions", json=priced)
        other = client.post("/chat/completions", json=unpriced).json()["usage"]
        upstream.behavior.fail_next = 1
        assert client.post("/chat/completions", json={**priced, "n": 2}).status_code == 500
    report = Report.from_stats(pipeline.stats, pricing=pipeline.config.pricing)
    one = (usage["prompt_tokens"] * 2.0 + usage["completion_tokens"] * 8.0) / 1e6
    assert report.tokens_spent == usage["total_tokens"] + other["total_tokens"]
    assert report.tokens_saved == 2 * usage["total_tokens"]
    assert report.cost_spent == pytest.approx(one)
    assert report.cost_saved == pytest.approx(2 * one)
    assert report.unpriced_models == ["other-model"]
    text = report.text()
    assert "cost            spent $" in text and "66.7% of what the requests would have cost" in text
    assert "no price for other-model" in text
    assert Report.from_dict(json.loads(json.dumps(report.to_dict()))) == report
    assert "cost saved" in report.html()
    # Without a pricing table there are token figures but no cost line.
    unpriced_report = Report.from_stats(pipeline.stats)
    assert unpriced_report.cost_spent is None and unpriced_report.tokens_spent is None
    assert "cost " not in unpriced_report.text() and "tokens saved    " in unpriced_report.text()
