"""The HTML page of a performance report: what a load-testing report shows, laid out to be looked at.

From the top: the score and the recommendations, the headline figures, then charts: the latency percentile
spectrum (HdrHistogram's plot: the tail on a log axis), latency p50/p95/p99, throughput and errors over time,
the hit rate by cache tier over time, traffic per endpoint and per model; then the tables and the plain-text
report. One file: inline SVG (see :mod:`~aurelis_core._charts`) and CSS, no script, nothing fetched; light
or dark as the reader's system is; charts redrawn for narrow and wide screens.

Reports saved before the timeline and the percentile spectrum were part of a report (``aurelis report`` on an
old ``report.json``) render without those charts, each replaced by a line saying so.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from . import _charts as charts
from ._charts import Series
from ._units import count as _count
from ._units import duration as _ms
from ._units import number as _num
from ._units import percent as _pct
from ._units import rounded_down as _floor
from ._units import usd as _usd

__all__ = ["ReportFigures", "render_html"]

#: Palette indexes (``--c0``..``--c7`` in the page's CSS) by meaning, the same on every chart.
UPSTREAM, P95, ERRORS, HITS, P99 = 0, 1, 2, 4, 6
#: Colours of the cache tiers, in order of their hits.
TIER_COLOURS = (4, 3, 5, 6, 7, 0)
#: Score bands: at or above the first it is good, the second fair, else poor.
GOOD_SCORE, FAIR_SCORE = 90, 70


class TargetFigures(Protocol):
    @property
    def p50(self) -> float: ...
    @property
    def p95(self) -> float: ...
    @property
    def p99(self) -> float: ...
    @property
    def rps(self) -> float | None: ...
    @property
    def hit_rate(self) -> float: ...


class ReportFigures(Protocol):
    """What the page reads of a :class:`~aurelis_core.report.Report` (typed here, not imported: the
    report module imports this one)."""

    @property
    def requests(self) -> int: ...
    @property
    def duration(self) -> float: ...
    @property
    def rps(self) -> float | None: ...
    @property
    def offered_rps(self) -> float | None: ...
    @property
    def latency(self) -> dict[str, float | None]: ...
    @property
    def hit_rate(self) -> float | None: ...
    @property
    def cache(self) -> dict[str, int]: ...
    @property
    def hits_by_tier(self) -> dict[str, int]: ...
    @property
    def errors(self) -> int: ...
    @property
    def error_rate(self) -> float | None: ...
    @property
    def error_kinds(self) -> dict[str, int]: ...
    @property
    def tokens_saved(self) -> int: ...
    @property
    def tokens_spent(self) -> int | None: ...
    @property
    def cost_spent(self) -> float | None: ...
    @property
    def cost_saved(self) -> float | None: ...
    @property
    def models(self) -> dict[str, dict[str, Any]]: ...
    @property
    def endpoints(self) -> dict[str, dict[str, Any]]: ...
    @property
    def resilience(self) -> dict[str, int]: ...
    @property
    def series(self) -> dict[str, Any]: ...
    @property
    def targets(self) -> TargetFigures: ...
    @property
    def score(self) -> float | None: ...
    @property
    def score_ratios(self) -> dict[str, float]: ...
    @property
    def recommendations(self) -> list[str]: ...

    def text(self) -> str: ...


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def render_html(report: ReportFigures) -> str:
    """The report as one self-contained HTML page."""
    body = "".join([
        _header(report), _verdict(report), _tiles(report),
        '<section class="charts">',
        _spectrum(report), _latency_over_time(report), _throughput_over_time(report), _hit_rate_by_tier(report),
        _traffic_per_endpoint(report), _traffic_per_model(report),
        "</section>",
        _tables(report),
        f'<details class="card"><summary>Plain-text report</summary><pre>{_e(report.text())}</pre></details>',
    ])
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="color-scheme" content="light dark">'
        f"<title>Aurelis performance report</title><style>{STYLE}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )


# --- top of the page ---------------------------------------------------------------------------------------


def _header(report: ReportFigures) -> str:
    offered = f", offered {report.offered_rps:.1f} req/s" if report.offered_rps else ""
    requests = "1 request" if report.requests == 1 else f"{report.requests} requests"
    return (f"<header><h1>Aurelis performance report</h1><p class=\"muted\">{requests} in "
            f"{report.duration:.3g} s ({_num(report.rps, '.1f')} req/s{offered})</p></header>")


def _band(score: float | None) -> str:
    if score is None:
        return "none"
    return "good" if score >= GOOD_SCORE else "fair" if score >= FAIR_SCORE else "poor"


def _verdict(report: ReportFigures) -> str:
    """The score (a ring filled to it) and the recommendations, side by side, first thing on the page."""
    score = report.score
    filled = 0.0 if score is None else max(0.0, min(100.0, score))
    t = report.targets
    rps = f", {t.rps:g} req/s" if t.rps is not None else ""
    gauge = (
        f'<svg class="gauge {_band(score)}" viewBox="0 0 120 120" role="img" aria-label="score {_floor(score)} of 100" '
        'xmlns="http://www.w3.org/2000/svg"><circle class="gauge-track" cx="60" cy="60" r="50"/>'
        f'<circle class="gauge-fill" cx="60" cy="60" r="50" pathLength="100" stroke-dasharray="{filled:.1f} 100" '
        'transform="rotate(-90 60 60)"/>'
        f'<text x="60" y="60" dy="0.35em" text-anchor="middle" class="gauge-value">{_floor(score)}</text>'
        '<text x="60" y="86" text-anchor="middle" class="gauge-unit">/ 100</text></svg>'
    )
    against = (f"against p50 {_ms(t.p50)}, p95 {_ms(t.p95)}, p99 {_ms(t.p99)}{rps}, hit rate {_pct(t.hit_rate)}, "
               "no errors")
    if report.recommendations:
        advice = "<ol>" + "".join(f"<li>{_e(line)}</li>" for line in report.recommendations) + "</ol>"
    else:
        advice = '<p class="muted">None: every figure is within the recommended bounds.</p>'
    return (
        '<section class="verdict">'
        f'<div class="card score" id="score">{gauge}<div><h2>Score</h2><p class="muted">{_e(against)}</p>'
        f"{_score_breakdown(report)}</div></div>"
        f'<div class="card advice" id="recommendations"><h2>Recommendations</h2>{advice}</div>'
        "</section>"
    )


def _score_breakdown(report: ReportFigures) -> str:
    """Each scored figure's share of its target, as a small bar: where the score was lost."""
    names = {"p50": "p50", "p95": "p95", "p99": "p99", "rps": "req/s", "hit_rate": "hit rate",
             "success": "succeeded"}
    rows = []
    for name, ratio in report.score_ratios.items():
        width = max(0.0, min(1.0, ratio)) * 100
        rows.append(f'<li><span>{_e(names.get(name, name))}</span><span class="meter">'
                    f'<span class="{_band(ratio * 100)}" style="width:{width:.1f}%"></span></span>'
                    f"<span>{_floor(ratio * 100)}%</span></li>")
    return f'<ul class="ratios">{"".join(rows)}</ul>' if rows else ""


def _tiles(report: ReportFigures) -> str:
    lat, t = report.latency, report.targets

    def over(value: float | None, target: float) -> str:
        return " over" if value is not None and value > target else ""

    hits = report.cache.get("hit", 0)
    tiles = [
        ("requests", _count(report.requests), f"in {report.duration:.3g} s", ""),
        ("throughput", f"{_num(report.rps, '.1f')}", "req/s", ""),
        ("p50", _ms(lat.get("p50")), f"target {_ms(t.p50)}", over(lat.get("p50"), t.p50)),
        ("p95", _ms(lat.get("p95")), f"target {_ms(t.p95)}", over(lat.get("p95"), t.p95)),
        ("p99", _ms(lat.get("p99")), f"max {_ms(lat.get('max'))}", over(lat.get("p99"), t.p99)),
        ("cache hit rate", _pct(report.hit_rate), f"{_count(hits)} hits",
         " over" if report.hit_rate is not None and report.hit_rate < t.hit_rate else ""),
        ("errors", _pct(report.error_rate), f"{_count(report.errors)} failed", " over" if report.errors else ""),
        ("tokens saved", _count(report.tokens_saved),
         "served from cache" if report.tokens_spent is None else f"{_count(report.tokens_spent)} spent", ""),
    ]
    if report.cost_spent is not None and report.cost_saved is not None:
        tiles.append(("cost saved", _usd(report.cost_saved), f"{_usd(report.cost_spent)} spent", ""))
    return '<section class="tiles">' + "".join(
        f'<div class="tile{flag}"><span class="muted">{_e(name)}</span><strong>{_e(value)}</strong>'
        f'<span class="muted">{_e(note)}</span></div>'
        for name, value, note, flag in tiles
    ) + "</section>"


# --- charts ----------------------------------------------------------------------------------------------


def _figure(key: str, title: str, caption: str, chart: str, legend: Sequence[tuple[int, str]] = (),
            wide: bool = False) -> str:
    keys = "".join(f'<li><span class="swatch f{colour}"></span>{_e(name)}</li>' for colour, name in legend)
    return (f'<figure class="card chart{" wide" if wide else ""}" id="{key}"><figcaption><h2>{_e(title)}</h2>'
            f'<p class="muted">{_e(caption)}</p></figcaption>'
            + (f'<ul class="legend">{keys}</ul>' if keys else "")
            + f'<div class="plot">{chart}</div></figure>')


def _missing(key: str, title: str, why: str, wide: bool = False) -> str:
    return _figure(key, title, why, '<p class="muted nodata">no data</p>', wide=wide)


def _spectrum(report: ReportFigures) -> str:
    title = "Latency by percentile"
    points = [(float(p), float(v)) for p, v in report.series.get("latency_percentiles", [])]
    if not points:
        return _missing("spectrum", title, "No requests (or a report saved before this chart existed).", wide=True)
    marked = [p for p in (50.0, 90.0, 99.0, 99.9, 99.99) if any(p == q for q, _ in points)]
    caption = ("Latency at each percentile, the tail spread out on a log axis (as HdrHistogram plots it): "
               "the share of requests as fast as the curve, cache hits included.")
    values = [(f"p{p:g}", v) for p, v in points if p in marked] + [("max", points[-1][1])]
    listed = "".join(f"<li><span>{name}</span> {_e(charts.duration_label_exact(v))}</li>" for name, v in values)
    chart = charts.spectrum_chart(title, points, marked) + f'<ul class="marks">{listed}</ul>'
    return _figure("spectrum", title, caption, chart, wide=True)


def _timeline(report: ReportFigures) -> Mapping[str, Any]:
    timeline: Mapping[str, Any] = report.series.get("timeline") or {}
    return timeline if timeline.get("t") else {}


def _span(report: ReportFigures, timeline: Mapping[str, Any]) -> float:
    return max(report.duration, float(timeline["t"][-1]) + float(timeline["width"]) / 2)


def _latency_over_time(report: ReportFigures) -> str:
    title = "Latency over time"
    timeline = _timeline(report)
    if not timeline:
        return _missing("latency-over-time", title, "No timeline in this report.")
    lines = [Series(f"p{q}", colour, timeline[f"p{q}"]) for q, colour in ((50, UPSTREAM), (95, P95), (99, P99))]
    values = [v for line in lines for v in line.values if v is not None]
    chart = charts.line_chart(title, timeline["t"], _span(report, timeline), lines, charts.duration_axis(values),
                              charts.duration_label_exact)
    caption = f"Percentiles of the requests ending in each {timeline['width']:.2g} s bucket."
    return _figure("latency-over-time", title, caption, chart, [(line.colour, line.name) for line in lines])


def _throughput_over_time(report: ReportFigures) -> str:
    title = "Throughput and errors over time"
    timeline = _timeline(report)
    if not timeline:
        return _missing("throughput-over-time", title, "No timeline in this report.")
    width = float(timeline["width"])
    hits = timeline["hits"]
    errors = timeline["errors"]
    upstream = [n - h - e for n, h, e in zip(timeline["requests"], hits, errors, strict=True)]
    layers = [Series("from cache", HITS, [h / width for h in hits]),
              Series("upstream", UPSTREAM, [u / width for u in upstream]),
              Series("errors", ERRORS, [e / width for e in errors])]
    totals = [n / width for n in timeline["requests"]]
    chart = charts.stacked_chart(title, timeline["t"], width, _span(report, timeline), layers,
                                 charts.rate_axis(totals), lambda v: f"{v:.3g} req/s")
    caption = "Requests per second ending in each bucket: answered from cache, by an upstream, or failed."
    return _figure("throughput-over-time", title, caption, chart, [(s.colour, s.name) for s in layers])


def _hit_rate_by_tier(report: ReportFigures) -> str:
    title = "Cache hit rate by tier over time"
    timeline = _timeline(report)
    tier_hits: Mapping[str, list[int]] = timeline.get("tier_hits", {})
    if not timeline or not any(timeline["lookups"]):
        why = "No timeline in this report." if not timeline else "No request looked up the cache."
        return _missing("hit-rate-over-time", title, why)
    lookups = timeline["lookups"]
    layers = [
        Series(tier, TIER_COLOURS[i % len(TIER_COLOURS)], [h / n if n else None for h, n in zip(hits, lookups,
                                                                                               strict=True)])
        for i, (tier, hits) in enumerate(tier_hits.items())
    ] or [Series("hits", HITS, [h / n if n else None for h, n in zip(timeline["hits"], lookups, strict=True)])]
    target = report.targets.hit_rate
    chart = charts.stacked_chart(title, timeline["t"], float(timeline["width"]), _span(report, timeline), layers,
                                 charts.percent_axis(), lambda v: f"{v:.0%}", area=True,
                                 marks=[(target, f"target {target:.0%}")])
    caption = ("Hits over lookups in each bucket, stacked by the tier that answered (bypassed requests are not "
               "lookups); gaps where nothing was looked up.")
    return _figure("hit-rate-over-time", title, caption, chart, [(s.colour, s.name) for s in layers], wide=True)


def _traffic_per_endpoint(report: ReportFigures) -> str:
    title = "Traffic per endpoint"
    share: Mapping[str, float] = report.series.get("traffic_share", {})
    if not share:
        return _missing("traffic-per-endpoint", title, "No requests.")
    rows = []
    for name, fraction in share.items():
        requests = round(fraction * report.requests)
        if name in report.endpoints:
            errors = int(report.endpoints[name]["errors"])
            segments = [(UPSTREAM, requests - errors, "answered"), (ERRORS, errors, "failed")]
        else:
            segments = [(HITS if name == "cache hit" else UPSTREAM, requests, "requests")]
        rows.append((name, segments, f"{_count(requests)} \u00b7 {fraction:.0%}"))
    caption = "Requests per endpoint, failed ones in red; cache hits reach no endpoint and are their own row."
    return _figure("traffic-per-endpoint", title, caption, charts.bar_rows(title, rows),
                   [(UPSTREAM, "answered"), (ERRORS, "failed"), (HITS, "from cache")])


def _traffic_per_model(report: ReportFigures) -> str:
    title = "Traffic per model"
    if not report.models:
        return _missing("traffic-per-model", title, "No requests.")
    rows = []
    for name, group in sorted(report.models.items(), key=lambda item: -item[1]["requests"]):
        requests, errors, hits = int(group["requests"]), int(group["errors"]), int(group.get("hits", 0))
        segments = [(HITS, hits, "from cache"), (UPSTREAM, requests - hits - errors, "upstream"),
                    (ERRORS, errors, "failed")]
        rows.append((name, segments, f"{_count(requests)} \u00b7 {group['share']:.0%}"))
    caption = "Requests per model: answered from cache, by an upstream, or failed."
    return _figure("traffic-per-model", title, caption, charts.bar_rows(title, rows),
                   [(HITS, "from cache"), (UPSTREAM, "upstream"), (ERRORS, "failed")])


# --- tables ----------------------------------------------------------------------------------------------


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _tables(report: ReportFigures) -> str:
    parts = []
    for title, groups, with_hits in (("Per model", report.models, True), ("Per endpoint", report.endpoints, False)):
        if not groups:
            continue
        headers = ["name", "requests", "share", "avg", "p95", *(["hit rate"] if with_hits else []), "errors"]
        rows = [[name, str(g["requests"]), _pct(g["share"]), _ms(g["avg"]), _ms(g["p95"]),
                 *([_pct(g["hit_rate"])] if with_hits else []), str(g["errors"])]
                for name, g in sorted(groups.items(), key=lambda item: -item[1]["requests"])]
        parts.append(f'<div class="card wide"><h2>{title}</h2>{_table(headers, rows)}</div>')
    lookups = report.cache.get("hit", 0) + report.cache.get("miss", 0)
    cache_rows = [[tier, str(hits), _pct(hits / lookups if lookups else None)]
                  for tier, hits in report.hits_by_tier.items()]
    cache_rows += [[status, str(report.cache.get(status, 0)), ""] for status in ("miss", "bypass")]
    parts.append(f'<div class="card"><h2>Cache</h2>{_table(["tier / status", "requests", "of lookups"], cache_rows)}'
                 "</div>")
    if report.error_kinds:
        rows = [[kind, str(n)] for kind, n in sorted(report.error_kinds.items(), key=lambda item: -item[1])]
        parts.append(f'<div class="card"><h2>Errors</h2>{_table(["kind", "requests"], rows)}</div>')
    if report.resilience:
        rows = [[name, str(n)] for name, n in report.resilience.items()]
        parts.append(f'<div class="card"><h2>Resilience</h2>{_table(["what the pipeline did", "times"], rows)}</div>')
    return f'<section class="tables">{"".join(parts)}</section>'


# --- style -----------------------------------------------------------------------------------------------
# Colours are variables, swapped for the dark theme; the palette is Tableau 10's, lightened in the dark. The
# charts' variants (``.v0``..``.v2``, drawn at charts.WIDTHS) are switched by the width of their own box.

STYLE = """
:root{color-scheme:light dark;--bg:#f4f5f7;--card:#fff;--fg:#1c2330;--muted:#5d6777;--border:#dde1e8;
--grid:#e6e9ee;--axis:#8a94a6;--good:#2e9e5b;--fair:#d89614;--poor:#d64545;
--c0:#4e79a7;--c1:#f28e2b;--c2:#e15759;--c3:#76b7b2;--c4:#59a14f;--c5:#edc948;--c6:#b07aa1;--c7:#ff9da7}
@media (prefers-color-scheme:dark){:root{--bg:#0f1216;--card:#181c22;--fg:#e4e8ee;--muted:#9aa4b3;
--border:#2a3039;--grid:#262c35;--axis:#5d6777;--good:#4cc27a;--fair:#f0b43c;--poor:#f06a6a;
--c0:#73a5d8;--c1:#ffa552;--c2:#ff7173;--c3:#8fd3cd;--c4:#7cc26f;--c5:#f5d76e;--c6:#cc9bc2;--c7:#ffb3bb}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif}
main{max-width:1180px;margin:0 auto;padding:1.25rem clamp(.6rem,3vw,2rem) 3rem}
h1{font-size:1.5rem;margin:0 0 .2rem}h2{font-size:1.05rem;margin:0 0 .35rem}
.muted{color:var(--muted)}header p{margin:0 0 1rem}
.card{background:var(--card);border:1px solid var(--border);border-radius:10px;padding:1rem 1.1rem;min-width:0}
.verdict{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,22rem),1fr));gap:1rem}
.score{display:flex;gap:1.1rem;align-items:flex-start;flex-wrap:wrap}.score>div{flex:1 1 14rem}
.score p{margin:0 0 .6rem;font-size:.9rem}
.gauge{width:7.5rem;flex:none}.gauge circle{fill:none;stroke-width:11}.gauge-track{stroke:var(--grid)}
.gauge-fill{stroke-linecap:round}.good .gauge-fill{stroke:var(--good)}.fair .gauge-fill{stroke:var(--fair)}
.poor .gauge-fill{stroke:var(--poor)}.none .gauge-fill{stroke:none}
.gauge-value{font-size:34px;font-weight:650;fill:var(--fg)}.gauge-unit{font-size:12px;fill:var(--muted)}
.ratios{list-style:none;margin:0;padding:0;font-size:.85rem}
.ratios li{display:grid;grid-template-columns:5.5rem 1fr 3rem;gap:.5rem;align-items:center;margin:.15rem 0}
.ratios li span:last-child{text-align:right;font-variant-numeric:tabular-nums}
.meter{height:.5rem;background:var(--grid);border-radius:4px;overflow:hidden}
.meter span{display:block;height:100%}.meter .good{background:var(--good)}.meter .fair{background:var(--fair)}
.meter .poor{background:var(--poor)}
.advice ol{margin:0;padding-left:1.2rem}.advice li{margin:.3rem 0}
.tiles{display:grid;grid-template-columns:repeat(2,1fr);gap:.75rem;margin:1rem 0}
@media (min-width:560px){.tiles{grid-template-columns:repeat(4,1fr)}}
@media (min-width:1100px){.tiles{grid-template-columns:repeat(8,1fr)}}
.tile{background:var(--card);border:1px solid var(--border);border-radius:10px;padding:.6rem .8rem;
display:flex;flex-direction:column;min-width:0}
.tile strong{font-size:1.35rem;font-variant-numeric:tabular-nums;white-space:nowrap}
.tile span{font-size:.8rem}.tile.over strong{color:var(--poor)}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,30rem),1fr));gap:1rem}
.chart{margin:0}.chart.wide{grid-column:1/-1}.chart figcaption p{margin:0;font-size:.85rem}
.legend{list-style:none;display:flex;flex-wrap:wrap;gap:.3rem 1rem;margin:.5rem 0 0;padding:0;font-size:.85rem}
.swatch{display:inline-block;width:.8rem;height:.8rem;border-radius:2px;margin-right:.35rem;vertical-align:-.1rem;
background:currentColor}
.plot{container-type:inline-size;margin-top:.5rem}.plot svg{display:none;width:100%;height:auto;overflow:visible}
.plot .v1{display:block}
@container (max-width:449px){.plot .v0{display:block}.plot .v1{display:none}}
@container (min-width:702px){.plot .v2{display:block}.plot .v1{display:none}}
svg text{font-size:12px;fill:var(--muted);font-family:system-ui,-apple-system,"Segoe UI",sans-serif}
.grid{stroke:var(--grid);stroke-width:1}.axis{stroke:var(--axis);stroke-width:1}
.line{fill:none;stroke-width:2.2;stroke-linejoin:round;stroke-linecap:round}
.ref{stroke:var(--muted);stroke-dasharray:5 4;stroke-width:1.2}svg .ref-label{fill:var(--muted);font-size:11px;
paint-order:stroke;stroke:var(--card);stroke-width:3px}
.area{fill-opacity:.85}.dot{stroke:var(--card);stroke-width:.8}
.mark{fill:var(--card);stroke:var(--fg);stroke-width:2}
svg .mark-label{fill:var(--fg);font-weight:600;paint-order:stroke;stroke:var(--card);stroke-width:4px;
stroke-linejoin:round}
.marks{list-style:none;display:flex;flex-wrap:wrap;gap:.3rem 1.2rem;margin:.4rem 0 0;padding:0;
font-variant-numeric:tabular-nums}.marks span{color:var(--muted)}
svg .bar-label{fill:var(--fg)}svg .bar-note{fill:var(--muted)}
.s0{stroke:var(--c0)}.s1{stroke:var(--c1)}.s2{stroke:var(--c2)}.s3{stroke:var(--c3)}.s4{stroke:var(--c4)}
.s5{stroke:var(--c5)}.s6{stroke:var(--c6)}.s7{stroke:var(--c7)}
.f0{fill:var(--c0);color:var(--c0)}.f1{fill:var(--c1);color:var(--c1)}.f2{fill:var(--c2);color:var(--c2)}
.f3{fill:var(--c3);color:var(--c3)}.f4{fill:var(--c4);color:var(--c4)}.f5{fill:var(--c5);color:var(--c5)}
.f6{fill:var(--c6);color:var(--c6)}.f7{fill:var(--c7);color:var(--c7)}
.nodata{padding:2rem 0;text-align:center}
.tables{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,26rem),1fr));gap:1rem;margin:1rem 0}
.tables .wide{grid-column:1/-1}.scroll{overflow-x:auto}table{border-collapse:collapse;width:100%;font-size:.88rem}
th,td{padding:.3rem .5rem;border-bottom:1px solid var(--border);text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}th{color:var(--muted);font-weight:600}
td{font-variant-numeric:tabular-nums}
details summary{cursor:pointer;font-weight:600}pre{overflow-x:auto;font-size:.8rem}
"""
