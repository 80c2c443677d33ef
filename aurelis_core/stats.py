"""Counters and latency samples for every request a pipeline handles.

The pipeline records each finished request here (one method call, a few dict increments and a list append,
~1 us); metrics exporters and reports read from it. Samples live in a bounded ring so a long-running process
keeps a recent window, never an ever-growing list.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, NamedTuple

# usage_tokens lives with the cache entries that need it (``CacheEntry.tokens``); it is re-exported here, where
# it was first published, so the models never import this module and this one imports them.
from ._models import Usage
from ._models import usage_tokens as usage_tokens

if TYPE_CHECKING:
    from ._models import CacheEntry, RequestContext

__all__ = ["Sample", "Stats", "percentile", "usage_tokens", "worth_logging"]


class Sample(NamedTuple):
    """One finished request. ``at`` is wall-clock ``time.time()``; ``latency`` seconds as the pipeline saw it
    (for a streamed body: until the stream ended)."""

    at: float
    latency: float
    cache: str
    tier: str | None
    model: str | None
    endpoint: str | None
    status: int | None
    error: str | None
    attempts: int
    #: The tokens of the answer the caller got, from its usage block: for a cache hit, those the stored answer
    #: spent when it was fetched (what the hit saved); for an answer fetched now, what it spent, when the stats
    #: keep it (``Stats(spent_usage=True)``). ``None`` when the answer carried no usage block (or failed).
    usage: Usage | None = None


_new_sample = tuple.__new__

#: The prefix of the counters of hits on entries stored before the stats started, one per tier
#: (``"earlier_hit:sqlite"``); :attr:`~aurelis_core.report.Report.earlier_hits` reads them.
EARLIER_HIT = "earlier_hit:"


def worth_logging(count: int) -> bool:
    """Whether the ``count``-th failure of one kind is logged: the 1st, 100th and 10,000th, then every 100,000th.

    The rule for failures a request goes on without (a cache tier that cannot read or write): count every one
    (``stats.tier_error`` returns the count), log once per burst. A dead tier must neither flood the log nor
    fall silent while it stays dead.
    """
    return count in (1, 100, 10_000) or count % 100_000 == 0


class Stats:
    """Thread-safe enough for counters under the GIL: each update is a single dict/deque operation."""

    def __init__(self, max_samples: int = 100_000, *, spent_usage: bool = False) -> None:
        self.started = time.time()
        #: Whether samples of answers fetched from an upstream carry their usage (what they spent). Off unless
        #: something prices it (a ``[pricing]`` table): finding a usage block costs ~3-10 us, +4% of a raw
        #: request's instructions on every miss (``benchmarks/instructions.py``), for a figure nobody reads.
        #: A hit's usage is always kept: it is found once per entry, not once per hit.
        self.spent_usage = spent_usage
        self.counters: Counter[str] = Counter()
        self.hits_by_tier: Counter[str] = Counter()
        self.tier_errors: Counter[str] = Counter()
        #: Failures of optimising stages (``"normalize.<plugin>"``, ``"compress.<plugin>"``) that the requests
        #: went on without.
        self.stage_errors: Counter[str] = Counter()
        self.samples: deque[Sample] = deque(maxlen=max_samples)
        self._lock = threading.Lock()

    def record(self, ctx: RequestContext, now: float, hit: CacheEntry | None = None) -> None:
        counters = self.counters
        counters["requests"] += 1
        status = ctx.cache_status
        counters[status] += 1
        if ctx.cache_tier is not None and status == "hit":  # a coalesced follower of a failed answer is a miss
            self.hits_by_tier[ctx.cache_tier] += 1
            if hit is not None and hit.created < self.started:
                # On an entry stored before these stats started (by an earlier run or process): what a warm
                # persistent tier answered, told apart from what this run stored and read back.
                counters[EARLIER_HIT + ctx.cache_tier] += 1
        error = ctx.error
        if error is not None:
            counters["errors"] += 1
        elif ctx.response_status is not None and ctx.response_status >= 400:
            counters["error_responses"] += 1
        attempts = ctx.attempts
        endpoint = attempts[-1].endpoint if attempts else None
        if hit is not None:
            # A hit's usage is found once per entry (CacheEntry.usage_in keeps it), not once per hit, as the
            # request's dialect reads it.
            usage = hit.usage_in(ctx.dialect)
        elif self.spent_usage and attempts and error is None and (attempts[-1].status_code or 500) < 400:
            usage = attempts[-1].usage  # what a fetched answer spent; a failed one has no usage block to price
        else:
            usage = None
        # tuple.__new__ skips the NamedTuple's Python-level __new__ (~0.1 us rather than ~0.2 us): this runs
        # on every request.
        self.samples.append(
            _new_sample(
                Sample,
                (
                    time.time(),
                    now - ctx.started,
                    status,
                    ctx.cache_tier,
                    ctx.model,
                    endpoint.name if endpoint is not None else None,
                    ctx.response_status,
                    type(error).__name__ if error is not None else None,
                    len(attempts),
                    usage,
                ),
            )
        )

    def tier_error(self, tier: str, operation: str) -> int:
        """Count a failed tier operation; returns the new count (callers log when :func:`worth_logging`)."""
        key = f"{tier}.{operation}"
        self.tier_errors[key] += 1
        return self.tier_errors[key]

    def stage_error(self, name: str) -> int:
        """Count a failed optimising stage (``"<stage>.<plugin>"``); returns the new count."""
        self.stage_errors[name] += 1
        return self.stage_errors[name]

    @property
    def hit_rate(self) -> float:
        """Hits over cacheable lookups (hits + misses); bypassed requests do not count."""
        hits, misses = self.counters["hit"], self.counters["miss"]
        return hits / (hits + misses) if hits + misses else 0.0

    def latencies(self, cache: str | None = None) -> list[float]:
        return [s.latency for s in list(self.samples) if cache is None or s.cache == cache]

    def snapshot(self) -> dict[str, object]:
        """A JSON-able summary: counters, hits per tier, hit rate, latency percentiles."""
        lat = sorted(self.latencies())
        return {
            "counters": dict(self.counters),
            "hits_by_tier": dict(self.hits_by_tier),
            "tier_errors": dict(self.tier_errors),
            "stage_errors": dict(self.stage_errors),
            "hit_rate": self.hit_rate,
            "latency": {p: percentile(lat, q) for p, q in (("p50", 50), ("p95", 95), ("p99", 99))},
        }

    def reset(self) -> None:
        with self._lock:
            self.counters.clear()
            self.hits_by_tier.clear()
            self.tier_errors.clear()
            self.stage_errors.clear()
            self.samples.clear()
            self.started = time.time()


def percentile(sorted_values: Iterable[float], q: float) -> float | None:
    """The q-th percentile (nearest-rank) of already sorted values, ``None`` when there are none."""
    values = list(sorted_values)
    if not values:
        return None
    # Nearest rank: the smallest value with at least q% of the values at or below it (ceil, not round():
    # round() rounds halves to even, which picked the 6th of 10 values for p50).
    rank = max(0, min(len(values) - 1, math.ceil(q * len(values) / 100) - 1))
    return values[rank]
