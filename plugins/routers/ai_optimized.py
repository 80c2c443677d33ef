"""``ai_optimized``: Thompson-sampled expected cost inside power of two choices (TS-P2C).

Per endpoint the router keeps time-decayed statistics (memory ``decay`` seconds) of the log of the normalised
latency per request in flight (mean, variance, effective sample count ``n``; see :mod:`._base` for the
normalisation; a sample is divided by the attempts this process had in flight there when it was sent, so an
endpoint measured while busy is not taken for a slow one) and of successes and failures. A pick draws two
random candidates and, for each, *samples* a plausible state of the endpoint from what is known:

- the mean log-latency ``mu ~ Normal(m, sqrt(var / (n + 1) + silence / forget_after))``, giving the latency
  ``L = exp(mu + var / 2)`` (a log-normal mean, so an erratic endpoint pays for its tail). An endpoint with
  no samples yet is given the pooled mean of all endpoints; one that has samples keeps its own mean however
  long ago they came, and only grows less certain with the seconds of silence (one known to be slow also
  keeps the certainty of its last samples, see ``KNOWN_SLOW_SAMPLES``): a process forgets a slow
  endpoint no faster than the evidence warrants (pulling its thin estimate back to the others' made every
  process probe it again within seconds);
- the success probability ``p ~ Beta(prior + successes, prior + failures)``, the prior being two outcomes at
  the success rate of all endpoints (a healthy endpoint that this process seldom uses is not taken for a
  risky one); drawn exactly while the counts are thin, else from the normal with the same mean and variance
  (Gaussian Thompson sampling, a tenth of the cost, and close once the counts are large);

and scores it ``cost = p * L * (in_flight + 1) + (1 - p) * F``: the expected wait behind the requests it
already holds if it succeeds, or the failure penalty ``F = failure_penalty x`` the pooled typical (geometric
mean) latency if it fails -- about two latencies instead when the caller's failures are seen to be retried.
The lower cost wins. (Weights and slow start bias which two candidates are drawn; the cost is measured, so it
needs no weight.)

Why this shape: sampling rather than using the means explores exactly as much as the uncertainty warrants --
an endpoint nobody has heard from lately draws wider samples and gets probed, a well-known bad one almost
never wins. Comparing only two random candidates keeps a pick O(1) and stops many client processes from
herding onto the one endpoint that looks best to all of them. ``in_flight + 1`` is what keeps it load-aware
when all endpoints are alike. A failed attempt's latency only raises an estimate (fast 503s must not look
fast; an attempt cut off by a timeout counts as at least that slow), and failures are scored by the penalty
instead.

Change detection: outcomes are remembered over a long window (``outcome_window``), which makes a healthy
endpoint's success rate nearly certain, so random dips of its draw seldom send traffic elsewhere. A long
memory alone would be slow to believe a brownout, or its end, so two CUSUM tests run beside it: each outcome
adds its log-likelihood ratio between "failing halfway from the recorded rate to always" (or "to never") and
"the recorded rate", floored at zero; when a sum passes its threshold the record is replaced by the outcomes
since that sum last left zero. An endpoint that rarely fails is believed broken after about two failures in a
row (e^4 to 1); one that fails a steady 25% does not trip it. One that failed 60% is believed recovered after
about four successes in a row (e^2 to 1: a wrong belief costs a couple of failed attempts before the first
test trips again, while a late one keeps a healthy endpoint idle). The failures of a silent endpoint fade
with ``outcome_decay``, so a process probes an endpoint in a brownout again about once a minute, and sees its
recovery within about a minute.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

import attrs

from aurelis_core.plugin import Attempt, Endpoint, RequestContext, positive, positive_int

from ._base import Router, RouterConfig, latency_sample, outcome

__all__ = ["AIOptimized", "AIOptimizedConfig"]

#: Variance of log-latency assumed before any sample (a factor of e^1 either way): wide, so unknown
#: endpoints are explored, not trusted.
PRIOR_VARIANCE = 1.0
#: Floor on a variance estimate: two identical samples must not make the router certain.
MIN_VARIANCE = 1e-4
#: The cost of a failure that is retried, in mean latencies: the wasted attempt plus the retry.
RETRIED_FAILURE_COST = 2.0
#: Weight, in outcomes, of an endpoint's prior success rate (the rate of all endpoints): a thin record is
#: judged by what is usual here, so a healthy endpoint that one process seldom uses is not taken for a
#: risky one (with a uniform prior, 15 successes still left a 6% chance of failure).
OUTCOME_PRIOR = 2.0
#: Below this many outcomes (prior included) the success probability is drawn from the exact Beta: its normal
#: approximation puts far too much weight near 1 when the counts are thin (Beta(2, 2) exceeds 0.97 with
#: probability 0.3%, the normal with its mean and variance 1.7%), which sent a process back to an endpoint in a
#: brownout ten times too often. ~0.7 us more per draw, paid only for endpoints a process seldom hears from.
EXACT_BETA_BELOW = 30.0
#: An endpoint whose mean log-latency is this many pooled standard deviations above the pooled mean is known
#: to be slow...
KNOWN_SLOW_DISTANCE = 2.0
#: ...and keeps the certainty about its mean of up to this many of its samples however long it goes unused
#: (silence widens it through ``forget_after`` only). With K client processes each holds 1/K of the samples,
#: and a slow endpoint's time-decayed count fell to zero between two of them: its draws were as wide as single
#: latencies, so it won about one pick in 200 at K = 16. Only slow ones: narrowing the draws of every endpoint
#: (or of those one deviation above the mean) also cut the probes that see a brownout's end.
KNOWN_SLOW_SAMPLES = 10
#: Per-sample decay of the mean number of attempts in flight when a latency sample's attempt was sent (the
#: scale that turns per-request-in-flight latencies back into latencies, for the failure cost).
LOAD_MEMORY = 0.99
#: Per-failure decay of the failure and retry counts (a memory of the last ~100 failures).
RETRY_MEMORY = 0.99
#: Evidence (a log-likelihood ratio, in nats) at which change detection concludes an endpoint's failure rate
#: rose: e^4, about 55 to 1. Two failures in a row of an endpoint that rarely fails reach it; a steady 25%
#: failure rate only drifts down (false alarms need ~6 failures in a row).
CHANGE_THRESHOLD = 4.0
#: Evidence at which change detection concludes the failure rate fell: e^2, about 7 to 1 (see the module
#: docstring; about four successes in a row of an endpoint whose record says it fails 60%).
RECOVERY_THRESHOLD = 2.0
#: The log-likelihood ratio a success adds: the alternative ("failing", rate (1 + q) / 2) gives a success half
#: the probability the current estimate (rate q) gives it, whatever q is.
SUCCESS_EVIDENCE = -math.log(2.0)
#: Standard normal quantiles at the midpoints of 4096 equal-probability bins. A draw is one ``random()`` and
#: an index (~60 ns) instead of ``gauss`` (~230 ns) or ``betavariate`` (~600-1000 ns, two gamma draws); the
#: tails are cut at 3.7 sigma, far beyond what decides a comparison of two endpoints.
_Z = tuple(NormalDist().inv_cdf((i + 0.5) / 4096) for i in range(4096))
#: ``ctx.state`` key holding when the current attempt was counted as pending (router clock).
SENT_KEY = "routing.ai_optimized.sent"
#: ``ctx.state`` key holding the attempts this process had in flight on the endpoint when the current attempt
#: was sent (itself included).
LOAD_KEY = "routing.ai_optimized.load"


@attrs.frozen
class AIOptimizedConfig(RouterConfig):
    """Options of ``ai_optimized``."""

    #: Time constant (seconds) of the decay of every statistic.
    decay: float = attrs.field(default=10.0, validator=positive)
    #: Successes and failures are remembered per outcome: each new one scales the older ones by
    #: ``1 - 1/outcome_window`` (a brownout shows after a handful of attempts, however little traffic the
    #: endpoint gets)...
    #: ``1 - 1/outcome_window``. A long memory makes a healthy endpoint's success rate certain (a short one
    #: leaves it a wide posterior whose random dips send traffic to worse endpoints); a change is still seen
    #: within a few attempts because change detection (see the module docstring) drops the old record...
    outcome_window: int = attrs.field(default=100, validator=positive_int)
    #: ...and by time, with this time constant in seconds (so a failed endpoint is probed again after a while
    #: of silence, and its recovery is seen).
    outcome_decay: float = attrs.field(default=60.0, validator=positive)
    #: The cost of a failure, as a multiple of the pooled mean latency (a failure costs the caller a retry or
    #: an error, far more than one slow answer).
    failure_penalty: float = attrs.field(default=50.0, validator=positive)
    #: Seconds of silence after which an endpoint's latency estimate is uncertain by a factor of e either way
    #: (the variance of its log grows by 1 / forget_after per second): how soon an endpoint that was slow is
    #: probed again when nothing else sends traffic there. Long, so a slow endpoint stays avoided (a 10x
    #: slow one, 2.3 away in log-latency, reaches one standard deviation after ~90 minutes of silence).
    forget_after: float = attrs.field(default=1000.0, validator=positive)


class _Cusum:
    """One CUSUM test: evidence for a change, and the outcomes since the evidence was last zero (the likeliest
    start of the change)."""

    __slots__ = ("evidence", "failures", "successes")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.evidence = self.successes = self.failures = 0.0

    def add(self, ok: bool, evidence: float, threshold: float) -> tuple[float, float] | None:
        """Add one outcome and its log-likelihood ratio; the outcomes since the change once it is believed."""
        total = self.evidence + evidence
        if total <= 0.0:
            self.reset()
            return None
        self.evidence = total
        self.successes += ok
        self.failures += not ok
        return (self.successes, self.failures) if total > threshold else None


class _LogStats:
    """Time-decayed weighted mean and variance of log-latency, and success/failure counts."""

    __slots__ = (
        "better", "failures", "m2", "mean", "n", "outcomes_updated", "samples", "successes", "updated", "worse",
    )

    def __init__(self) -> None:
        self.n = 0.0
        #: Latency samples ever added (not decayed): whether the mean and variance are the endpoint's own.
        self.samples = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.successes = 0.0
        self.failures = 0.0
        self.updated = -math.inf
        self.outcomes_updated = -math.inf
        # Change detection: is it failing more, or less, than the record says?
        self.worse = _Cusum()
        self.better = _Cusum()

    def decay_to(self, now: float, tau: float) -> None:
        factor = math.exp(-(now - self.updated) / tau)  # 0 before the first update
        self.updated = now
        self.n *= factor
        self.m2 *= factor

    def count(self, ok: bool, now: float, keep: float, tau: float) -> None:
        """Add an outcome; older ones fade by ``keep`` per new outcome and by time with constant ``tau``.

        Then two CUSUM tests, each summing the outcomes' log-likelihood ratios between an alternative and
        "the failure rate is the record's ``q``", floored at zero: "it is halfway from ``q`` to 1" (worse) and
        "halfway from ``q`` to 0" (better). When either sum passes ``CHANGE_THRESHOLD`` the old record is
        replaced by the outcomes since that sum last left zero: a brownout is believed after a couple of
        failures, and its end after a handful of successes, instead of after enough outcomes to outweigh
        the record.
        """
        factor = keep * math.exp(-(now - self.outcomes_updated) / tau)
        self.outcomes_updated = now
        successes = self.successes * factor
        failures = self.failures * factor
        q = (failures + 1.0) / (successes + failures + 2.0)  # the record's failure rate (posterior mean)
        worse = SUCCESS_EVIDENCE if ok else math.log((1.0 + q) / (2.0 * q))
        better = math.log((2.0 - q) / (2.0 - 2.0 * q)) if ok else -math.log(2.0)
        changed = self.worse.add(ok, worse, CHANGE_THRESHOLD) or self.better.add(ok, better, RECOVERY_THRESHOLD)
        if changed is not None:
            # The change is believed: the record from before it no longer describes the endpoint.
            self.successes, self.failures = changed
            self.worse.reset()
            self.better.reset()
            return
        self.successes = successes + ok
        self.failures = failures + (not ok)

    def add(self, value: float) -> None:
        # West's weighted incremental mean/variance; the decay already scaled the old weight.
        self.n += 1.0
        self.samples += 1
        delta = value - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (value - self.mean)

    @property
    def variance(self) -> float:
        return max(self.m2 / self.n, MIN_VARIANCE) if self.n > 1.0 else PRIOR_VARIANCE


class AIOptimized(Router):
    """The ``ai_optimized`` plugin. Options: ``seed``, ``decay``, ``outcome_window``, ``outcome_decay``,
    ``failure_penalty``, ``forget_after``, ``default_output_tokens``."""

    name = "ai_optimized"
    Config = AIOptimizedConfig
    config: AIOptimizedConfig

    def __init__(self, config: AIOptimizedConfig | None, pipeline: Any, **kwargs: Any) -> None:
        super().__init__(config, pipeline, **kwargs)
        self._stats = [_LogStats() for _ in self.endpoints]
        #: All endpoints' samples pooled: the prior for endpoints with little data, and the failure scale.
        self._pooled = _LogStats()
        # Buffered (non-stream) attempts in flight per endpoint: the sum of their send times and of their
        # expected output tokens, so the mean age per token of what is still pending is O(1) to read.
        self._pending_sent = [0.0] * len(self.endpoints)
        self._pending_tokens = [0] * len(self.endpoints)
        self._pending_count = [0] * len(self.endpoints)
        # Decayed counts of failed attempts and of retries (attempts after the first): their ratio says how
        # often a failure is retried rather than returned to the caller.
        self._failures = 0.0
        self._retries = 0.0
        # Outcomes of all endpoints, remembered like each endpoint's: the prior of an endpoint's success rate.
        self._all_successes = 0.0
        self._all_failures = 0.0
        #: Mean attempts in flight on an endpoint when a latency sample's attempt was sent.
        self._load = 1.0

    def _pick(self, ctx: RequestContext, candidates: Sequence[Endpoint], now: float) -> int:
        a, b = self._two(candidates, now)
        if a == b:
            return a
        pooled = self._pooled
        prior_mean = pooled.mean if pooled.n > 0 else 0.0
        prior_var = pooled.variance
        # A failure that the caller's retry absorbs costs about another attempt; one that reaches the caller
        # costs failure_penalty mean latencies. Which happens is learned: the share of failed attempts that
        # were followed by another attempt of the same request.
        retried = min(1.0, self._retries / self._failures) if self._failures else 0.0
        penalty = retried * RETRIED_FAILURE_COST + (1.0 - retried) * self.config.failure_penalty
        # The pooled latency is per request in flight: times the typical load, it is a typical latency.
        failure_cost = penalty * math.exp(prior_mean) * self._load
        # An endpoint's prior success rate: that of all endpoints (a fresh router: one half).
        successes, failures = self._all_successes, self._all_failures
        prior_success = OUTCOME_PRIOR * (successes + 1.0) / (successes + failures + 2.0)
        cost_a = self._cost(a, now, prior_mean, prior_var, prior_success, failure_cost)
        cost_b = self._cost(b, now, prior_mean, prior_var, prior_success, failure_cost)
        return b if cost_b < cost_a else a

    def _cost(
        self, index: int, now: float, prior_mean: float, prior_var: float, prior_success: float, failure_cost: float
    ) -> float:
        stats = self._stats[index]
        random_ = self.rng.random
        # Decay to now without storing it: the counts of an endpoint nobody sent to lately fade, so it is
        # explored again.
        age = now - stats.updated
        n = stats.n * math.exp(-age / self.config.decay)
        if stats.samples > 1:
            # The endpoint's own estimate, however old: decay makes it less certain (below), never more like
            # the others. (Pulling a silent slow endpoint back to the pooled mean made every process
            # forget it, and probe it again, within seconds.)
            variance = max(stats.m2 / stats.n, MIN_VARIANCE)
            mean = stats.mean
            if mean > prior_mean + KNOWN_SLOW_DISTANCE * math.sqrt(prior_var):
                # Known to be slow: its mean stays as certain as its last few samples made it, and only the
                # silence term below widens it. (Decaying their count by time gave an endpoint nobody uses
                # the spread of a single sample within a minute, so every process probed it again.)
                n = max(n, min(stats.samples, KNOWN_SLOW_SAMPLES))
        else:
            # One pseudo-sample of the pooled mean: shrinks a thin estimate towards the others.
            variance = prior_var
            mean = (n * stats.mean + prior_mean) / (n + 1.0)
        # The estimate's uncertainty: its samples' spread (an endpoint's own variance can still hold the jump
        # of a change long after it happened, so no wider than the pooled one), and its silence.
        spread = math.sqrt(min(variance, prior_var) / (n + 1.0) + age / self.config.forget_after)
        mu = mean + spread * _Z[int(random_() * 4096)]
        latency = math.exp(mu + variance / 2)
        tokens = self._pending_tokens[index]
        if tokens:
            # What is still in flight has already waited this long per token: a lower bound on the latency
            # that is known long before those attempts end -- the first sign that an endpoint turned slow.
            waited = (now * self._pending_count[index] - self._pending_sent[index]) / tokens
            latency = max(latency, waited)
        factor = math.exp(-(now - stats.outcomes_updated) / self.config.outcome_decay)
        # p ~ Beta(prior + successes, prior + failures): drawn exactly while the counts are thin, else from the
        # normal with its mean and variance (clamped to [0, 1]), a tenth of the cost of an exact Beta draw.
        a = prior_success + stats.successes * factor
        total = a + OUTCOME_PRIOR - prior_success + stats.failures * factor
        if total < EXACT_BETA_BELOW:
            p = self.rng.betavariate(a, total - a)
        else:
            p = a / total
            p += math.sqrt(p * (1.0 - p) / (total + 1.0)) * _Z[int(random_() * 4096)]
            p = 0.0 if p < 0.0 else 1.0 if p > 1.0 else p
        return p * latency * (self.inflight[index] + 1) + (1.0 - p) * failure_cost

    def _sent(self, index: int, ctx: RequestContext, now: float) -> None:
        if len(ctx.attempts) and not ctx.attempts[-1].ok:
            self._retries += 1.0
        ctx.state[LOAD_KEY] = self.inflight[index]
        profile = self._profile(ctx)
        if not profile.stream:  # a stream's age is mostly its body being read, not waiting
            ctx.state[SENT_KEY] = now
            self._pending_sent[index] += now
            self._pending_tokens[index] += profile.output_tokens
            self._pending_count[index] += 1

    def _released(self, index: int, ctx: RequestContext) -> None:
        sent = ctx.state.pop(SENT_KEY, None)
        if sent is not None:
            self._pending_sent[index] -= sent
            self._pending_tokens[index] -= self._profile(ctx).output_tokens
            self._pending_count[index] -= 1
            if not self._pending_count[index]:
                self._pending_sent[index] = 0.0  # drop accumulated float error

    def _learn(self, index: int, ctx: RequestContext, attempt: Attempt, now: float) -> None:
        load = ctx.state.pop(LOAD_KEY, 1)
        ok = outcome(attempt)
        sample = latency_sample(self._profile(ctx), attempt)
        if ok is None and sample is None:
            return
        stats = self._stats[index]
        tau = self.config.decay
        stats.decay_to(now, tau)
        if ok is False:
            self._failures = self._failures * RETRY_MEMORY + 1.0
            self._retries *= RETRY_MEMORY
        if ok is not None:
            config = self.config
            keep = 1.0 - 1.0 / config.outcome_window
            stats.count(ok, now, keep, config.outcome_decay)
            self._all_successes = self._all_successes * keep + ok
            self._all_failures = self._all_failures * keep + (not ok)
        if sample is not None and sample[0] > 0:
            self._load = self._load * LOAD_MEMORY + (1.0 - LOAD_MEMORY) * load
            value = math.log(sample[0] / load)
            # A failed or cancelled attempt's latency is a lower bound: it may only raise the estimate.
            if sample[1] or stats.n < 1e-9 or value > stats.mean:
                stats.add(value)
                pooled = self._pooled
                pooled.decay_to(now, tau)
                pooled.add(value)
