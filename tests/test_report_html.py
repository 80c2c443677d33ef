"""The HTML report: its figures and charts from a report's series, and the page as Chromium renders it (no
console error, nothing fetched, every chart drawn, no two labels overlapping, light and dark, narrow and wide).
"""

from __future__ import annotations

import json
import random
import re
import xml.dom.minidom
from collections.abc import Iterator
from pathlib import Path

import pytest
from chromium import Browser, chromium_binary

from aurelis_core.plugin import Usage
from aurelis_core.report import Report, build_report
from aurelis_core.stats import Sample

CHARTS = ("spectrum", "latency-over-time", "throughput-over-time", "hit-rate-over-time", "traffic-per-endpoint",
          "traffic-per-model")


def busy_run(count: int = 6000, seconds: float = 300.0, seed: int = 7) -> list[Sample]:
    """Five minutes of traffic: three tiers warming up, two endpoints, three models, an error burst in the
    middle, cache hits in microseconds and upstream calls in hundreds of milliseconds with a long tail."""
    rng = random.Random(seed)
    samples = []
    for i in range(count):
        at = 1000.0 + seconds * i / count
        warm = min(0.8, 0.15 + at / seconds / 2 - 1000 / seconds / 2)  # the hit rate climbs as the cache fills
        model = rng.choices(["gpt-4.1-mini", "gpt-4.1", "text-embedding-3-small"], [6, 2, 3])[0]
        if rng.random() < warm:
            tier = rng.choices(["memory", "sqlite", "redis"], [6, 1, 2])[0]
            latency = {"memory": 40e-6, "sqlite": 400e-6, "redis": 1.5e-3}[tier] * rng.lognormvariate(0, 0.3)
            samples.append(Sample(at, latency, "hit", tier, model, None, 200, None, 1, Usage(100, 20)))
            continue
        endpoint = rng.choices(["primary", "secondary-eu-west"], [3, 1])[0]
        latency = 0.25 * rng.lognormvariate(0, 0.6) * (3 if model == "gpt-4.1" else 1)
        burst = 130 < at - 1000 < 160 and endpoint == "primary"
        status = 503 if burst and rng.random() < 0.7 else 200
        samples.append(Sample(at, latency, "miss", None, model, endpoint, status, None, 1,
                              Usage(100, 20) if status == 200 else None))
    return samples


def test_the_page_has_the_score_advice_and_every_chart() -> None:
    report = build_report(busy_run(), duration=300.0)
    page = report.html()
    assert page.index('id="score"') < page.index('id="recommendations"') < page.index('id="spectrum"')
    for chart in CHARTS:
        assert f'id="{chart}"' in page
    svgs = re.findall(r"<svg.*?</svg>", page, re.S)
    assert len(svgs) == 1 + 3 * len(CHARTS)  # the score's gauge, and each chart at three widths
    for svg in svgs:
        xml.dom.minidom.parseString(svg)  # well-formed
    assert "<script" not in page and "src=" not in page and "href=" not in page and "url(" not in page
    assert "@import" not in page
    # The marked percentiles are where the spectrum puts them, with their values.
    assert re.search(r"<li><span>p99</span> [\d.]+ (ms|s)</li>", page) and ">p99.9</text>" in page
    assert "503" in page and "secondary-eu-west" in page and "redis" in page


def test_the_timeline_counts_every_request_once() -> None:
    assert len(build_report(busy_run(count=600)).series["timeline"]["t"]) == 30  # 20 requests a bucket
    samples = busy_run(count=2000)
    timeline = build_report(samples, duration=300.0).series["timeline"]
    assert len(timeline["t"]) == 60  # at most
    assert timeline["width"] == pytest.approx(5.0) and timeline["t"][:2] == pytest.approx([2.5, 7.5])
    assert sum(timeline["requests"]) == 2000
    assert sum(timeline["hits"]) == sum(1 for s in samples if s.cache == "hit")
    assert sum(sum(hits) for hits in timeline["tier_hits"].values()) == sum(timeline["hits"])
    assert list(timeline["tier_hits"]) == ["memory", "redis", "sqlite"]  # by hits
    assert sum(timeline["errors"]) == sum(1 for s in samples if s.status == 503)
    assert all(h <= n for h, n in zip(timeline["hits"], timeline["lookups"], strict=True))


def test_the_percentile_spectrum() -> None:
    latencies = [i / 1000 for i in range(1, 1001)]  # 1 ms .. 1 s
    samples = [Sample(100 + i, v, "miss", None, "m", "e", 200, None, 1) for i, v in enumerate(latencies)]
    spectrum = dict((p, v) for p, v in build_report(samples).series["latency_percentiles"])
    assert spectrum[50.0] == pytest.approx(0.5) and spectrum[99.0] == pytest.approx(0.99)
    assert spectrum[99.9] == pytest.approx(0.999)  # the last one 1000 samples tell apart from the maximum
    assert 99.99 not in spectrum and max(spectrum) == pytest.approx(99.9)
    assert spectrum[0.0] == pytest.approx(0.001)
    points = list(spectrum)
    # Ten a decade from 0 to 99.9% (31 points, 90% and 99% among them), and the marked 50% and 95%.
    assert points == sorted(points) and len(points) == 33


def test_a_report_saved_before_the_charts_existed_still_renders() -> None:
    data = build_report(busy_run(count=200), duration=10.0).to_dict()
    data["series"] = {"latency_histogram": [], "hit_rate_over_time": [], "traffic_share": {"primary": 1.0}}
    page = Report.from_dict(json.loads(json.dumps(data))).html()
    assert "No timeline in this report." in page and 'id="traffic-per-endpoint"' in page


def test_an_empty_report_renders() -> None:
    page = build_report([]).html()
    assert 'id="score"' in page and "no data" in page


# --- in a real browser ---------------------------------------------------------------------------------------

#: In the browser: every expected chart shows exactly one of its drawings, not empty, and no two texts of a
#: drawing overlap (their boxes as laid out, by more than a pixel's sliver).
CHECK_LAYOUT = """
(() => {
  const found = {};
  for (const id of %s) {
    const figure = document.getElementById(id);
    if (!figure) { found[id] = 'missing'; continue; }
    const shown = [...figure.querySelectorAll('.plot svg')].filter(svg => getComputedStyle(svg).display !== 'none');
    if (shown.length !== 1) { found[id] = `${shown.length} drawings shown`; continue; }
    const box = shown[0].getBoundingClientRect();
    if (box.width < 200 || box.height < 40) { found[id] = `drawn ${box.width}x${box.height}`; continue; }
    const texts = [...shown[0].querySelectorAll('text')].map(t => [t.textContent, t.getBoundingClientRect()]);
    const overlaps = [];
    for (let i = 0; i < texts.length; i++) for (let j = i + 1; j < texts.length; j++) {
      const [a, ra] = texts[i], [b, rb] = texts[j];
      const w = Math.min(ra.right, rb.right) - Math.max(ra.left, rb.left);
      const h = Math.min(ra.bottom, rb.bottom) - Math.max(ra.top, rb.top);
      if (w > 1 && h > 1) overlaps.push(`${a} / ${b}`);
    }
    const sizes = texts.map(([, r]) => r.height);
    found[id] = {overlaps, width: box.width, smallest: Math.min(...sizes), largest: Math.max(...sizes)};
  }
  return found;
})()
"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    if chromium_binary() is None:
        pytest.skip("no Chromium installed (apt-get install chromium, or AURELIS_CHROMIUM=/path/to/chrome): the "
                    "HTML report is not checked in a browser")
    pytest.importorskip("websockets", reason="the browser is driven with websockets (pip install websockets)")
    with Browser(tmp_path_factory.mktemp("browser")) as opened:
        yield opened


@pytest.mark.parametrize("width", [360, 390, 700, 1000, 1400])
@pytest.mark.parametrize("dark", [False, True], ids=["light", "dark"])
def test_the_page_in_chromium(browser: Browser, tmp_path: Path, width: int, dark: bool) -> None:
    page_file = tmp_path / "report.html"
    page_file.write_text(build_report(busy_run(), duration=300.0).html(), encoding="utf-8")
    page = browser.open(page_file, width=width, dark=dark)
    assert page.problems == []
    layout = page.evaluate(CHECK_LAYOUT % json.dumps(list(CHARTS)))
    for chart in CHARTS:
        figures = layout[chart]
        assert isinstance(figures, dict), f"{chart}: {figures}"
        assert figures["overlaps"] == [], f"{chart} at {width} px: overlapping labels {figures['overlaps']}"
        # Text is drawn at 12 units in a drawing shown at 0.8 to 1.25 times its size: 9.5 to 17 px tall boxes.
        assert 9 <= figures["smallest"] and figures["largest"] <= 18, f"{chart} at {width} px: {figures}"
    assert page.evaluate("document.documentElement.scrollWidth") <= width  # nothing wider than the window
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert (background == "rgb(15, 18, 22)") == dark
    page.screenshot(tmp_path / f"report-{width}-{'dark' if dark else 'light'}.png")


def test_the_browser_check_sees_fetches_and_console_errors(browser: Browser, tmp_path: Path) -> None:
    page_file = tmp_path / "bad.html"
    page_file.write_text('<!doctype html><img src="https://cdn.example.com/chart.png">'
                         '<script>console.error("broken chart"); undefined_function();</script>', encoding="utf-8")
    problems = " | ".join(browser.open(page_file, width=800).problems)
    assert "request: https://cdn.example.com/chart.png" in problems
    assert "console.error: broken chart" in problems and "exception" in problems


def odd_run(kind: str) -> list[Sample]:
    if kind == "one request":
        return [Sample(100.0, 0.2, "miss", None, "m", "ep", 200, None, 1)]
    if kind == "every request failing":
        return [Sample(100 + i / 10, 0.01, "miss", None, "m", "ep", 500, None, 1) for i in range(220)]
    # A dozen models and endpoints whose names differ only at their ends, over 15 minutes.
    samples = []
    for i in range(3000):
        hit = i % 3 == 0
        samples.append(Sample(100 + i / 3, 0.05 * (1 + i % 13), "hit" if hit else "miss", "memory" if hit else None,
                              f"a-very-long-model-name-of-the-support-assistant-{i % 12}",
                              None if hit else f"endpoint-{i % 5}.example.internal", 200, None, 1))
    return samples


@pytest.mark.parametrize("width", [360, 1400])
@pytest.mark.parametrize("kind", ["one request", "every request failing", "long names"])
def test_odd_runs_in_chromium(browser: Browser, tmp_path: Path, kind: str, width: int) -> None:
    page_file = tmp_path / "report.html"
    page_file.write_text(build_report(odd_run(kind)).html(), encoding="utf-8")
    page = browser.open(page_file, width=width)
    assert page.problems == []
    layout = page.evaluate(CHECK_LAYOUT % json.dumps(list(CHARTS)))
    overlapping = {chart: figures["overlaps"] for chart, figures in layout.items()
                   if isinstance(figures, dict) and figures["overlaps"]}
    assert overlapping == {}
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    if kind == "long names":
        # The labels as drawn (a text's last child; its first is the tooltip with the whole name).
        labels = page.evaluate("[...[...document.querySelectorAll('#traffic-per-model svg')]"
                               ".find(s => getComputedStyle(s).display !== 'none')"
                               ".querySelectorAll('text.bar-label')].map(t => t.lastChild.textContent)")
        assert len(set(labels)) == 12, labels  # cut in the middle, told apart by their ends
