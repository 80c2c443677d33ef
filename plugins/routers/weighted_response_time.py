"""``weighted_response_time``: weights from each endpoint's recent latency and success rate.

For every endpoint the router keeps time-decayed statistics (each sample weighs ``exp(-age / decay)``, so
``decay`` seconds is the memory): the mean normalised latency (see :mod:`._base`: seconds per expected output
token, or time to first byte for streams) and the success rate. Every ``update_period`` seconds the weights
are rebuilt as::

    weight = endpoint.weight * slow_start * success_rate ** 2 / mean_latency

and picks follow them by earliest-deadline-first scheduling (O(log n)), as gRPC's weighted round robin does.
Squaring the success rate matters: a brownout endpoint that fails fast would otherwise look attractive,
since its failures are quick. An endpoint without enough fresh data -- new, in its first ``blackout`` seconds
of reports, or silent for ``expiry`` seconds -- gets the mean weight of the others, so it is neither starved
nor flooded while its numbers are unknown.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import attrs

from aurelis_core.plugin import Attempt, Endpoint, RequestContext, non_negative, positive

from ._base import EDFScheduler, Router, RouterConfig, latency_sample, outcome

__all__ = ["WeightedResponseTime", "WeightedResponseTimeConfig"]


@attrs.frozen
class WeightedResponseTimeConfig(RouterConfig):
    """Options of ``weighted_response_time`` (all in seconds)."""

    #: Time constant of the decay: a sample ``decay`` seconds old weighs 1/e of a fresh one.
    decay: float = attrs.field(default=10.0, validator=positive)
    #: How often the weights are rebuilt from the statistics.
    update_period: float = attrs.field(default=1.0, validator=positive)
    #: An endpoint's own weight is used only once it has been reporting for this long.
    blackout: float = attrs.field(default=10.0, validator=non_negative)
    #: An endpoint with no report for this long is treated as new again.
    expiry: float = attrs.field(default=180.0, validator=positive)


class _Stats:
    """Decayed sums for one endpoint: latency mean (``n`` samples) and success/failure counts."""

    __slots__ = ("failures", "first_report", "last_report", "latency", "n", "successes")

    def __init__(self) -> None:
        self.n = 0.0
        self.latency = 0.0
        self.successes = 0.0
        self.failures = 0.0
        self.first_report = -math.inf
        self.last_report = -math.inf


class WeightedResponseTime(Router):
    """The ``weighted_response_time`` plugin. Options: ``seed``, ``decay``, ``update_period``, ``blackout``,
    ``expiry``, ``default_output_tokens``."""

    name = "weighted_response_time"
    Config = WeightedResponseTimeConfig
    config: WeightedResponseTimeConfig

    def __init__(self, config: WeightedResponseTimeConfig | None, pipeline: Any, **kwargs: Any) -> None:
        super().__init__(config, pipeline, **kwargs)
        self._stats = [_Stats() for _ in self.endpoints]
        self.weights = [e.weight for e in self.endpoints]
        #: One schedule for every endpoint, and one for the endpoints of each model not all of them serve.
        self._schedulers: dict[frozenset[int] | None, EDFScheduler] = {}
        self._rebuilt = -math.inf

    def _pick(self, ctx: RequestContext, candidates: Sequence[Endpoint], now: float) -> int:
        if now - self._rebuilt >= self.config.update_period:
            self._rebuild(now)
        scheduler = self._schedule(self._schedulers, self.weights)
        return scheduler.pick(self.weights.__getitem__, self._allowed(candidates))

    def _rebuild(self, now: float) -> None:
        """Recompute every endpoint's weight: O(n), once per ``update_period``, off the per-pick path."""
        self._rebuilt = now
        config = self.config
        own: list[float | None] = []
        for stats in self._stats:
            fresh = now - stats.last_report < config.expiry
            if fresh and now - stats.first_report >= config.blackout and stats.n > 0 and stats.latency > 0:
                total = stats.successes + stats.failures
                success = stats.successes / total if total > 0 else 1.0
                own.append(success * success / stats.latency)
            else:
                if not fresh:
                    stats.first_report = -math.inf  # silent too long: a new blackout when it reports again
                own.append(None)
        known = [w for w in own if w is not None]
        mean = sum(known) / len(known) if known else 1.0
        # Keep every weight above zero: an endpoint failing everything still gets a trickle of probes, which
        # is how it is seen to recover.
        floor = mean * 1e-3 if mean > 0 else 1.0
        self.weights[:] = [
            max(w if w is not None else mean, floor) * self._weight(i, now) for i, w in enumerate(own)
        ]
        # New schedules rather than new weights in the old ones: deadlines spaced by the old weights would
        # starve an endpoint whose weight just rose until the others caught up with its far deadline.
        self._schedulers.clear()

    def _learn(self, index: int, ctx: RequestContext, attempt: Attempt, now: float) -> None:
        ok = outcome(attempt)
        sample = latency_sample(self._profile(ctx), attempt)
        if ok is None and sample is None:
            return
        stats = self._stats[index]
        decay = math.exp(-(now - stats.last_report) / self.config.decay)  # 0 for the first report
        if stats.first_report == -math.inf:
            stats.first_report = now
        stats.last_report = now
        stats.successes *= decay
        stats.failures *= decay
        stats.n *= decay
        if ok is True:
            stats.successes += 1.0
        elif ok is False:
            stats.failures += 1.0
        if sample is not None:
            value, complete = sample
            # A failed or cancelled attempt's latency is a lower bound: it may only raise the estimate.
            if complete or stats.n == 0 or value > stats.latency:
                stats.n += 1.0
                stats.latency += (value - stats.latency) / stats.n
