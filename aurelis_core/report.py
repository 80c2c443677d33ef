"""Performance reports: the figures a pipeline's :class:`~aurelis_core.stats.Stats` samples add up to.

>>> report = Report.from_stats(pipeline.stats)
>>> print(report.text())                 # or report.to_dict() (JSON-able), report.html()

What is computed, all from the samples (one per finished request):

- **latency**: average, p50/p95/p99 (nearest rank) and max, in seconds, as the pipeline saw each request
  (cache hits included: that is the latency callers got).
- **throughput**: requests over the window's duration: the wall time of a replay when one is given, else from
  the first request's start to the last one's end.
- **cache**: hit rate = hits / (hits + misses) (requests that bypass the cache do not count), hits per tier.
- **errors**: error rate = requests that raised or answered with a status >= 400, over all requests, and what
  they were (``http 500``, ``ConnectError``...). A coalesced follower handed a failed answer is an error and a
  miss, never a hit.
- **resilience**: what the pipeline did about failures, from its counters: retries, failovers to another
  endpoint, retries refused (not idempotent, past the deadline, budget spent), circuit breaker trips, attempts
  that waited for a rate limit or were refused by one, compressed requests sent again plain after a 415/400
  (plain resends), requests moved to the next model of their ``[fallbacks]`` chain (model fallbacks), requests
  coalesced onto another's upstream call.
- **tokens**: saved, the ``usage.total_tokens`` of every answer served from cache (what it spent when it was
  fetched); with a ``[pricing]`` table, spent too, those of every answer fetched from an upstream.
- **cost** (with a ``[pricing]`` table, see :mod:`aurelis_core.pricing`): spent and saved, the same answers'
  input, cached input and output tokens at their model's prices; the models the table names no price for are
  listed, and their answers left out of both sums rather than counted as free.
- **per model** and **per endpoint**: requests, share, average and p95 latency, hit rate, hits, errors.
- **recommendations**: errors above 1% (what failed, and what to do: retries and failover, a breaker, rate
  limits), breaker trips and rate-limit waits; hit rate below 70% (warm the cache, raise TTLs); p95 above 2 s
  (optimise requests); a model averaging above 3 s (route it elsewhere).
- **score**: how close the figures come to :class:`Targets`. Each target gives a ratio capped at 1: for the
  latencies ``min(1, target / achieved)`` (lower is better), for the hit rate ``min(1, achieved / target)``
  (higher is better). Requests/s is scored only when a target is given (``--target-rps``), against the lower
  of that target and the offered load (a replay at ``--rate 50`` is not marked down for missing 1000 req/s).
  The score is the mean of the ratios times the share of requests that succeeded, times 100: 100 means every
  target was met without an error, and a run where every request failed scores 0 however fast it failed. A
  figure that cannot be measured (no cacheable request: no hit rate) is left out of the mean rather than
  counted as a failure. Printed figures are rounded down where a target is compared (99.6% of a target is
  "99%", never "100%").

A report round-trips through JSON (:meth:`Report.to_dict` / :meth:`Report.from_dict`), so ``aurelis report``
can re-render a saved one as text or HTML, and re-score it against other targets. The HTML page
(:mod:`~aurelis_core._report_html`) is self-contained: inline SVG charts, no script, nothing fetched.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from ._units import duration as _ms
from ._units import number as _num
from ._units import percent as _pct
from ._units import percent_below as _pct_below
from ._units import rounded_down as _floor
from ._units import usd as _usd
from .pricing import Pricing
from .stats import EARLIER_HIT, Sample, Stats, percentile

__all__ = ["Report", "Targets", "build_report", "score"]

#: The recommendations' thresholds.
LOW_HIT_RATE = 0.7
SLOW_P95 = 2.0
SLOW_MODEL_AVERAGE = 3.0
HIGH_ERROR_RATE = 0.01

#: ``stats.counters`` read into :attr:`Report.resilience`, by the name the report gives them.
RESILIENCE_COUNTERS = {
    "retries": ("retries",),
    "failovers": ("retry_failovers",),
    "retries refused": ("retry_not_idempotent", "retry_deadline", "retry_budget_exhausted"),
    "breaker trips": ("breaker_open",),
    "rate-limit waits": ("ratelimit_waited",),
    "rate-limit refusals": ("ratelimit_rejected",),
    "plain resends": ("compress_fallbacks",),
    "model fallbacks": ("fallbacks",),
    "fallbacks refused": ("fallback_deadline",),
    "coalesced": ("coalesced",),
}

#: Points per decade of the latency percentile spectrum (from 0 to 90%, from 90% to 99%, ...).
SPECTRUM_STEPS = 10
#: Percentiles the spectrum holds exactly (where the samples reach them): the HTML page marks them.
MARKED_PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9, 99.99)
#: The over-time series: at most this many buckets, of this many requests on average.
MAX_TIME_BUCKETS = 60
REQUESTS_PER_BUCKET = 20


@attrs.frozen
class Targets:
    """What the score measures against (``--target-*`` options of ``aurelis replay`` / ``aurelis report``)."""

    p50: float = 0.5
    p95: float = 1.0
    p99: float = 2.0
    #: Requests/s; ``None`` (the default): throughput is not scored. A run's throughput is mostly what it was
    #: offered (its ``--rate``, its recorded timing, its concurrency), so a fixed default target would mark
    #: down every run that was not a flood.
    rps: float | None = None
    hit_rate: float = 0.7

    def __attrs_post_init__(self) -> None:
        for name, value in attrs.asdict(self).items():
            if value is None and name == "rps":
                continue
            if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"target {name!r} must be a number > 0, got {value!r}")
        if self.hit_rate > 1:
            raise ValueError(f"target 'hit_rate' must be at most 1, got {self.hit_rate!r}")


def score(figures: Mapping[str, float | None], targets: Targets) -> tuple[float | None, dict[str, float]]:
    """``(score, ratio per target)`` for achieved ``figures`` (keys as in :class:`Targets`, plus ``error_rate``
    and ``offered_rps``, the load the run was offered when it was bounded).

    See the module docstring for the formula. The score is ``None`` when no figure could be measured. The
    ratios include ``success`` (1 - error rate), the factor the mean of the others is multiplied by.
    """
    ratios: dict[str, float] = {}
    for name in ("p50", "p95", "p99"):
        achieved = figures.get(name)
        if achieved is not None:
            target = getattr(targets, name)
            ratios[name] = 1.0 if achieved <= target else target / achieved
    achieved = figures.get("rps")
    if achieved is not None and targets.rps is not None:
        offered = figures.get("offered_rps")
        target = min(targets.rps, offered) if offered else targets.rps
        ratios["rps"] = min(1.0, achieved / target)
    achieved = figures.get("hit_rate")
    if achieved is not None:
        ratios["hit_rate"] = min(1.0, achieved / targets.hit_rate)
    if not ratios:
        return None, ratios
    mean = sum(ratios.values()) / len(ratios)
    error_rate = figures.get("error_rate")
    if error_rate is not None:
        ratios["success"] = 1.0 - error_rate
        mean *= ratios["success"]
    return 100.0 * mean, ratios


def _is_error(sample: Sample) -> bool:
    return sample.error is not None or (sample.status is not None and sample.status >= 400)


def _error_kind(sample: Sample) -> str:
    return sample.error if sample.error is not None else f"http {sample.status}"


def _is_hit(sample: Sample) -> bool:
    # A failed answer is never a hit, whatever recorded it (reports saved before coalesced followers of a
    # failed answer were recorded as misses said "hit" for them).
    return sample.cache == "hit" and not _is_error(sample)


def _cache_status(sample: Sample) -> str:
    return "miss" if sample.cache == "hit" and _is_error(sample) else sample.cache


def _hit_rate(samples: Iterable[Sample]) -> float | None:
    hits = misses = 0
    for s in samples:
        status = _cache_status(s)
        if status == "hit":
            hits += 1
        elif status == "miss":
            misses += 1
    return hits / (hits + misses) if hits + misses else None


def _group(samples: list[Sample], total: int) -> dict[str, Any]:
    latencies = sorted(s.latency for s in samples)
    errors = sum(1 for s in samples if _is_error(s))
    return {
        "requests": len(samples),
        "share": len(samples) / total if total else 0.0,
        "avg": sum(latencies) / len(latencies),
        "p95": percentile(latencies, 95),
        "hit_rate": _hit_rate(samples),
        "hits": sum(1 for s in samples if _is_hit(s)),
        "errors": errors,
        "error_rate": errors / len(samples),
    }


def _percentile_spectrum(latencies: Sequence[float]) -> list[list[float]]:
    """``[[percentile, latency], ...]`` of sorted ``latencies``, HdrHistogram's way: points evenly spaced on a
    log axis of ``1 / (1 - percentile)`` (as many from 90% to 99% as from 0 to 90%), up to the last percentile
    the samples can tell apart from the maximum (``1 - 1/n``), plus the marked ones (``MARKED_PERCENTILES``)."""
    count = len(latencies)
    if not count:
        return []
    last = 100 * (1 - 1 / count)
    wanted = {round(last, 10)} | {q for q in MARKED_PERCENTILES if q <= last}
    step = 0
    while (q := round(100 * (1 - 10 ** (-step / SPECTRUM_STEPS)), 10)) < last:
        wanted.add(q)
        step += 1
    return [[q, percentile(latencies, q) or 0.0] for q in sorted(wanted)]


def _timeline(samples: Sequence[Sample], start: float, duration: float) -> dict[str, Any]:
    """The run over time, in buckets by request end: requests, errors, cache lookups and hits per tier (the
    hit rate by tier is hits / lookups), and the latency percentiles of the requests that ended in each.

    A bucket holds ``REQUESTS_PER_BUCKET`` requests on average (a short run has fewer, wider buckets), so its
    percentiles and rates are figures, not the noise of three requests. Lists are per bucket, ``t`` its middle
    (seconds since the first request started); a percentile is ``None`` where no request ended."""
    if not samples:
        return {}
    buckets = max(1, min(MAX_TIME_BUCKETS, len(samples) // REQUESTS_PER_BUCKET))
    width = max(duration, 1e-9) / buckets
    groups: list[list[Sample]] = [[] for _ in range(buckets)]
    for s in samples:
        groups[min(buckets - 1, max(0, int((s.at - start) / width)))].append(s)
    timeline: dict[str, Any] = {
        "width": width, "t": [(i + 0.5) * width for i in range(buckets)],
        "requests": [], "errors": [], "lookups": [], "hits": [], "p50": [], "p95": [], "p99": [],
    }
    hits_by_tier: list[Counter[str]] = []
    for group in groups:
        errors = hits = misses = 0
        by_tier: Counter[str] = Counter()
        for s in group:  # one pass, each sample classified once (a live report runs this over 100k samples)
            failed = _is_error(s)
            errors += failed
            if s.cache == "hit" and not failed:
                hits += 1
                if s.tier is not None:
                    by_tier[s.tier] += 1
            elif s.cache in ("hit", "miss"):
                misses += 1
        latencies = sorted(s.latency for s in group)
        timeline["requests"].append(len(group))
        timeline["errors"].append(errors)
        timeline["lookups"].append(hits + misses)
        timeline["hits"].append(hits)
        for q in (50, 95, 99):
            timeline[f"p{q}"].append(percentile(latencies, q))
        hits_by_tier.append(by_tier)
    tiers = sum(hits_by_tier, Counter[str]())
    timeline["tier_hits"] = {tier: [counts[tier] for counts in hits_by_tier] for tier, _ in tiers.most_common()}
    return timeline


@attrs.define
class Report:
    """The figures of one run; see the module docstring for what each means. Latencies are in seconds."""

    requests: int
    duration: float
    rps: float | None
    latency: dict[str, float | None]
    hit_rate: float | None
    cache: dict[str, int]
    hits_by_tier: dict[str, int]
    errors: int
    error_rate: float | None
    tokens_saved: int
    models: dict[str, dict[str, Any]]
    endpoints: dict[str, dict[str, Any]]
    #: What the HTML page plots: ``latency_percentiles`` (the percentile spectrum, ``[[percentile, seconds],
    #: ...]``), ``timeline`` (per time bucket: requests, errors, lookups, hits per tier, p50/p95/p99; see
    #: ``_timeline``) and ``traffic_share`` (share of requests per endpoint, cache hits as their own).
    series: dict[str, Any]
    targets: Targets = Targets()
    score: float | None = None
    score_ratios: dict[str, float] = attrs.field(factory=dict)
    recommendations: list[str] = attrs.field(factory=list)
    #: Requests/s the run was offered (its ``--rate``, or its recorded timing), ``None`` when unbounded.
    offered_rps: float | None = None
    #: Failed requests by kind: ``{"http 500": 20, "ConnectError": 2}``.
    error_kinds: dict[str, int] = attrs.field(factory=dict)
    #: What the pipeline did about failures (see ``RESILIENCE_COUNTERS``); only the non-zero ones.
    resilience: dict[str, int] = attrs.field(factory=dict)
    #: The plugins the pipeline ran, when known: the advice depends on them.
    plugins: list[str] | None = None
    #: Tokens the answers fetched from an upstream spent (their ``usage.total_tokens``); ``None`` without a
    #: pricing table (the stats keep what fetched answers spent only when something prices it).
    tokens_spent: int | None = None
    #: USD those answers cost at the ``[pricing]`` table's prices; ``None`` without a pricing table.
    cost_spent: float | None = None
    #: USD the answers served from cache would have cost again; ``None`` without a pricing table.
    cost_saved: float | None = None
    #: Models with answers that carried usage but that the pricing table names no price for (left out of the
    #: cost figures).
    unpriced_models: list[str] = attrs.field(factory=list)
    #: Hits per tier on entries stored before the stats began (by an earlier run or process; from the
    #: ``earlier_hit:<tier>`` counters): answers a warm persistent tier gave that the upstream was never asked for.
    earlier_hits: dict[str, int] = attrs.field(factory=dict)

    @classmethod
    def from_stats(
        cls, stats: Stats, *, duration: float | None = None, targets: Targets | None = None,
        offered_rps: float | None = None, plugins: Sequence[str] | None = None, pricing: Pricing | None = None,
    ) -> Report:
        """The report of everything ``stats`` holds (its bounded window of recent samples, and its counters);
        ``pricing`` (``pipeline.config.pricing``) prices the tokens."""
        return build_report(list(stats.samples), duration=duration, targets=targets, counters=stats.counters,
                            offered_rps=offered_rps, plugins=plugins, pricing=pricing)

    # --- scoring and advice --------------------------------------------------------------------------------

    def rescored(self, targets: Targets) -> Report:
        """This report's figures scored against other targets."""
        figures = {**{k: self.latency.get(k) for k in ("p50", "p95", "p99")}, "rps": self.rps,
                   "hit_rate": self.hit_rate, "error_rate": self.error_rate, "offered_rps": self.offered_rps}
        value, ratios = score(figures, targets)
        return attrs.evolve(self, targets=targets, score=value, score_ratios=ratios)

    def _advise(self) -> list[str]:
        advice = self._advise_errors()
        # Failed answers are never cached: while most requests fail, a low hit rate is their consequence and
        # advice about warming the cache would only bury the errors.
        mostly_failing = self.error_rate is not None and self.error_rate > 0.5
        if self.hit_rate is not None and self.hit_rate < LOW_HIT_RATE and not mostly_failing:
            advice.append(
                f"Cache hit rate is {_pct_below(self.hit_rate)} (below {_pct(LOW_HIT_RATE)}): warm the cache with "
                "your common prompts (replay a recorded workload at start-up) or raise the tiers' ttl."
            )
        p95 = self.latency.get("p95")
        if p95 is not None and p95 > SLOW_P95:
            advice.append(
                f"p95 latency is {p95:.2f} s (above {SLOW_P95:.0f} s): optimise the requests: shorter prompts, "
                "a lower max_tokens, streaming for long answers, request compression."
            )
        for model, figures in sorted(self.models.items()):
            if figures["avg"] > SLOW_MODEL_AVERAGE:
                advice.append(
                    f"Model {model} averages {figures['avg']:.2f} s (above {SLOW_MODEL_AVERAGE:.0f} s): route it "
                    "to faster endpoints (a latency-aware router) or use a smaller model for it."
                )
        return advice

    def _advise_errors(self) -> list[str]:
        """Advice on failures: errors first (they matter more than speed), then what the resilience plugins did."""
        advice: list[str] = []
        plugins = set(self.plugins) if self.plugins is not None else None
        resilience = self.resilience
        if self.error_rate is not None and self.error_rate > HIGH_ERROR_RATE:
            kinds = ", ".join(f"{kind}: {count}" for kind, count in
                              sorted(self.error_kinds.items(), key=lambda item: -item[1])[:4])
            line = f"{self.errors} requests failed ({_pct(self.error_rate)}; {kinds})"
            limited = sum(n for kind, n in self.error_kinds.items() if kind == "http 429")
            if limited:
                line += (". 429s mean the upstream's rate limit: add the `ratelimit` plugin with the provider's "
                         "rpm/tpm so requests wait their turn instead of failing, or lower the concurrency")
            elif plugins is not None and "retry" not in plugins:
                line += (": enable the `retry` plugin (with a second endpoint, it fails over at once) and "
                         "`breaker`, so a failing endpoint is skipped rather than retried into")
            elif resilience.get("retries"):
                line += (f" although {resilience['retries']} retries were made: the upstream itself is failing; "
                         "add endpoints to fail over to, or check the upstream")
            else:
                line += ": check the upstream and the requests (the errors by kind above)"
            advice.append(line + ".")
        trips = resilience.get("breaker trips", 0)
        if trips:
            advice.append(f"Circuit breakers opened {trips} times: an endpoint failed repeatedly and was skipped "
                          "while open; check it, or give it a lower weight.")
        waits = resilience.get("rate-limit waits", 0)
        if waits and self.requests and waits / self.requests > HIGH_ERROR_RATE:
            advice.append(f"{waits} attempts waited for a rate limit ({_pct(waits / self.requests)} of requests): "
                          "raise the limits if the provider allows, spread the load over more endpoints, or cache "
                          "more.")
        return advice

    # --- JSON ------------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict; :meth:`from_dict` reads it back."""
        data = attrs.asdict(self, recurse=True)
        data["format"] = "aurelis-report-1"
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Report:
        if data.get("format") != "aurelis-report-1":
            raise ValueError("not an Aurelis report (expected \"format\": \"aurelis-report-1\")")
        fields = {f.name for f in attrs.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        values["targets"] = Targets(**values.get("targets", {}))
        return cls(**values)

    # --- text ------------------------------------------------------------------------------------------------

    def text(self) -> str:
        """The report as plain text, for a terminal."""
        lat = self.latency
        offered = f", offered {self.offered_rps:.1f} req/s" if self.offered_rps else ""
        lines = [
            "Aurelis performance report",
            "",
            f"  requests        {self.requests} in {self.duration:.2f} s ({_num(self.rps, '.1f')} req/s{offered})",
            f"  latency         avg {_ms(lat.get('avg'))}  p50 {_ms(lat.get('p50'))}  p95 {_ms(lat.get('p95'))}"
            f"  p99 {_ms(lat.get('p99'))}  max {_ms(lat.get('max'))}",
            f"  cache hit rate  {_pct(self.hit_rate)}  (hits {self.cache.get('hit', 0)}, misses "
            f"{self.cache.get('miss', 0)}, bypass {self.cache.get('bypass', 0)})",
        ]
        lookups = self.cache.get("hit", 0) + self.cache.get("miss", 0)
        for tier, hits in self.hits_by_tier.items():
            earlier = self.earlier_hits.get(tier)
            lines.append(f"    {tier:<14}{hits} hits ({_pct(hits / lookups if lookups else None)} of lookups)"
                         + (f", {earlier} on entries stored before this run" if earlier else ""))
        kinds = ", ".join(f"{kind} {count}" for kind, count in
                          sorted(self.error_kinds.items(), key=lambda item: -item[1]))
        lines += [
            f"  errors          {self.errors} ({_pct(self.error_rate)})" + (f": {kinds}" if kinds else ""),
            f"  tokens saved    {self.tokens_saved}" if self.tokens_spent is None
            else f"  tokens          spent {self.tokens_spent}, saved {self.tokens_saved}",
        ]
        if self.cost_spent is not None and self.cost_saved is not None:
            would_be = self.cost_spent + self.cost_saved
            share = f" ({_pct(self.cost_saved / would_be)} of what the requests would have cost)" if would_be else ""
            unpriced = f"; no price for {', '.join(self.unpriced_models)}" if self.unpriced_models else ""
            lines.append(f"  cost            spent {_usd(self.cost_spent)}, saved {_usd(self.cost_saved)}{share}"
                         f"{unpriced}")
        if self.resilience:
            lines.append("  resilience      " + ", ".join(f"{name} {n}" for name, n in self.resilience.items()))
        lines.append("")
        for title, groups in (("model", self.models), ("endpoint", self.endpoints)):
            if not groups:
                continue
            # Per endpoint there is no hit rate: only requests that reached an endpoint have one, and a cache
            # hit never does, so the column would always read "-" (or 0%).
            with_hits = title == "model"
            lines.append(f"  {'per ' + title:<24}{'requests':>9}{'share':>8}{'avg':>10}{'p95':>10}"
                         + (f"{'hit rate':>10}" if with_hits else "") + f"{'errors':>8}")
            for name, g in sorted(groups.items(), key=lambda item: -item[1]["requests"]):
                lines.append(
                    f"    {name[:22]:<22}{g['requests']:>9}{_pct(g['share']):>8}{_ms(g['avg']):>10}"
                    f"{_ms(g['p95']):>10}" + (f"{_pct(g['hit_rate']):>10}" if with_hits else "") + f"{g['errors']:>8}"
                )
            lines.append("")
        t = self.targets
        rps_target = f", {t.rps:g} req/s" if t.rps is not None else ""
        lines.append(
            f"  score           {_floor(self.score)}/100 against targets p50 {_ms(t.p50)}, p95 {_ms(t.p95)}, "
            f"p99 {_ms(t.p99)}{rps_target}, hit rate {_pct(t.hit_rate)}, no errors"
        )
        if self.score_ratios:
            parts = ", ".join(f"{name} {_floor(ratio * 100)}%" for name, ratio in self.score_ratios.items()
                              if name != "success")
            success = self.score_ratios.get("success")
            lines.append(f"                  ({parts} of target"
                         + (f"; times {_floor(success * 100)}% of requests succeeded)" if success is not None else ")"))
        lines.append("")
        if self.recommendations:
            lines.append("  recommendations")
            lines += [f"    - {advice}" for advice in self.recommendations]
        else:
            lines.append("  recommendations: none, every figure is within the recommended bounds")
        return "\n".join(lines) + "\n"

    # --- HTML ------------------------------------------------------------------------------------------------

    def html(self) -> str:
        """A self-contained HTML page of this report: score and advice first, then charts (see
        :mod:`aurelis_core._report_html`)."""
        from ._report_html import render_html

        return render_html(self)


def build_report(
    samples: Sequence[Sample], *, duration: float | None = None, targets: Targets | None = None,
    counters: Mapping[str, int] | None = None, offered_rps: float | None = None,
    plugins: Sequence[str] | None = None, pricing: Pricing | None = None,
) -> Report:
    """The :class:`Report` of ``samples``; ``duration`` (seconds) overrides the window the samples span.

    ``counters`` (``stats.counters``) give the resilience figures; ``offered_rps`` the load the run was offered
    (scored throughput is measured against it); ``plugins`` the plugins that ran (the advice depends on them);
    ``pricing`` the prices that turn tokens into cost (none: no cost figures).
    """
    targets = targets or Targets()
    samples = sorted(samples, key=lambda s: s.at)
    total = len(samples)
    latencies = sorted(s.latency for s in samples)
    start = min((s.at - s.latency for s in samples), default=0.0)
    if duration is None:
        duration = (samples[-1].at - start) if samples else 0.0
    cache = Counter(_cache_status(s) for s in samples)
    failed = [s for s in samples if _is_error(s)]
    errors = len(failed)
    counters = counters or {}
    resilience = {name: sum(counters.get(key, 0) for key in keys) for name, keys in RESILIENCE_COUNTERS.items()}
    by_model: dict[str, list[Sample]] = defaultdict(list)
    by_endpoint: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_model[s.model or "(none)"].append(s)
        if s.endpoint is not None:
            by_endpoint[s.endpoint].append(s)
    share: Counter[str] = Counter()
    for s in samples:
        share[s.endpoint if s.endpoint is not None else "cache hit" if _is_hit(s) else "direct"] += 1
    report = Report(
        requests=total,
        duration=duration,
        rps=total / duration if duration > 0 else None,
        latency={
            "avg": sum(latencies) / total if total else None,
            "p50": percentile(latencies, 50),
            "p95": percentile(latencies, 95),
            "p99": percentile(latencies, 99),
            "max": latencies[-1] if latencies else None,
        },
        hit_rate=_hit_rate(samples),
        cache={k: cache.get(k, 0) for k in ("hit", "miss", "bypass")},
        hits_by_tier=dict(Counter(s.tier for s in samples if _is_hit(s) and s.tier is not None)),
        errors=errors,
        error_rate=errors / total if total else None,
        tokens_saved=sum(s.usage.total for s in samples if s.usage is not None and _is_hit(s)),
        models={name: _group(group, total) for name, group in by_model.items()},
        endpoints={name: _group(group, total) for name, group in by_endpoint.items()},
        series={
            "latency_percentiles": _percentile_spectrum(latencies),
            "timeline": _timeline(samples, start, duration),
            "traffic_share": {name: count / total for name, count in share.most_common()},
        },
        offered_rps=offered_rps,
        error_kinds=dict(Counter(_error_kind(s) for s in failed).most_common()),
        resilience={name: count for name, count in resilience.items() if count},
        plugins=list(plugins) if plugins is not None else None,
        earlier_hits={key[len(EARLIER_HIT):]: n for key, n in counters.items() if key.startswith(EARLIER_HIT) and n},
    )
    if pricing:
        report.tokens_spent = sum(s.usage.total for s in samples if s.usage is not None and not _is_hit(s))
        report.cost_spent, report.cost_saved, report.unpriced_models = _costs(samples, pricing)
    report = report.rescored(targets)
    report.recommendations = report._advise()
    return report


def _costs(samples: Iterable[Sample], pricing: Pricing) -> tuple[float, float, list[str]]:
    """USD spent (answers fetched) and saved (answers served from cache), and the models without a price."""
    spent = saved = 0.0
    unpriced: set[str] = set()
    for s in samples:
        if s.usage is None:
            continue
        cost = pricing.cost(s.model, s.usage)
        if cost is None:
            unpriced.add(s.model or "(no model)")
        elif _is_hit(s):
            saved += cost
        else:
            spent += cost
    return spent, saved, sorted(unpriced)
