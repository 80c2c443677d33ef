"""``retry``: try a failed attempt again, on another endpoint when one is healthy, within a budget and a deadline.

What is retried (the rules of the openai SDK, so wrapping it changes nothing a user relies on):

- transport errors that may be transient: connect errors and timeouts (connect, read, write, pool), read and
  write errors, a connection the server dropped (``RemoteProtocolError``), of httpx or httpx2 (checked against
  the request's own flavour, ``ctx.http``);
- answers with a status in ``statuses`` (default 408, 409, 429) or any 5xx;
- an :class:`~aurelis_core.health.EndpointUnavailable` (an open circuit, a rate limit that would wait too long)
  only when another endpoint is available to take the attempt;
- an upstream's ``x-should-retry: true|false`` header overrides the status rules, as the openai SDK does.

When to retry:

- **failover first**: when the pipeline has another endpoint that has not failed during this request and that
  the health registry says is available, the next attempt goes now (no wait): the Retry-After of a busy
  endpoint says nothing about the others.
- otherwise, on the same upstream: after the *latest* failure's ``retry-after-ms``, ``x-ms-retry-after-ms`` or
  ``retry-after`` (seconds or an HTTP date) if it sent one, else after a full-jitter exponential backoff:
  ``uniform(0, min(cap, base * 2**(failures - 1)))`` (AWS's "full jitter": retries of many clients spread
  out instead of arriving in synchronized waves).
- never after ``max_attempts`` attempts, and never when the wait would end past ``deadline`` seconds after
  the request started (waits included; the duration of each attempt is bounded by the client's own timeout).
- only while the **retry budget** has a token: every request that reaches the network deposits
  ``budget_ratio`` tokens (up to ``budget_burst``, which is also the initial balance); every retry spends one.
  So retries add at most ``budget_ratio`` extra load in steady state: a failing upstream sees at most 1.2x its
  normal traffic with the defaults, not ``max_attempts`` x (a retry storm).

Coordination with routers (``ctx.state["retry"]``): before answering, the plugin adds the failed attempt's
endpoint name to ``ctx.state["retry"].failed`` (a :class:`RetryState`). Routers should prefer endpoints not in
that set for the next attempt of the same request (and fall back to them if nothing else is left); the health
registry already hides open circuits and rate-limited endpoints across requests.

Streams and bodies: the pipeline asks this hook only after an attempt raised or answered with a status >= 400,
before any of its body was handed to the caller, so a stream is never retried after its first byte. A body
that fails halfway after a 2xx is the caller's error, not retried.

POST safety: chat completions and embeddings are stateless, so resending one costs tokens but changes no state
(a request that timed out may still be billed upstream). Do not enable this plugin for endpoints whose POSTs
have side effects (creating files, assistants, batches) unless they are idempotent (``Idempotency-Key``).
If the openai SDK is the client, set its ``max_retries=0``: otherwise both layers retry and multiply.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import attrs
from aurelis_plugins._validators import each, in_range, non_negative, non_negative_int, positive_int

from aurelis_core import Attempt, RequestContext, hookimpl
from aurelis_core.health import EndpointUnavailable, retry_after

__all__ = ["Retry", "RetryConfig", "RetryState"]



@attrs.frozen
class RetryConfig:
    #: Attempts in all, the first included (1: never retry).
    max_attempts: int = attrs.field(default=3, validator=positive_int)
    #: Backoff base and cap, seconds: the n-th retry waits uniform(0, min(cap, base * 2**(n-1))).
    base: float = attrs.field(default=0.5, validator=non_negative)
    cap: float = attrs.field(default=8.0, validator=non_negative)
    #: Seconds from the request's start after which no wait may end and no attempt start (None: no limit).
    deadline: float | None = attrs.field(default=60.0, validator=non_negative)
    #: Retry tokens each request deposits (the share of extra load retries may add); a retry costs 1.
    budget_ratio: float = attrs.field(default=0.2, validator=non_negative)
    #: Most tokens the budget holds, and its initial balance (lets a quiet client still retry a burst).
    budget_burst: float = attrs.field(default=10.0, validator=non_negative)
    #: Statuses retried besides every 5xx.
    statuses: tuple[int, ...] = attrs.field(
        default=(408, 409, 429), converter=tuple, validator=each(in_range(400, 599, integer=True))
    )
    #: Seed for the jitter's random stream (None: from the OS), for reproducible runs.
    seed: int | None = attrs.field(default=None, validator=non_negative_int)


class RetryState:
    """``ctx.state["retry"]``: what the retry plugin learnt during one request (read by routers).

    ``failed``: names of the endpoints whose attempts failed (for requests without endpoints, the origin URL);
    ``waits``: the seconds waited before each retry.
    """

    __slots__ = ("failed", "waits")

    def __init__(self) -> None:
        self.failed: set[str] = set()
        self.waits: list[float] = []


class Retry:
    """The ``retry`` plugin."""

    name = "retry"
    Config = RetryConfig

    def __init__(self, config: RetryConfig, pipeline: Any) -> None:
        self.config = config
        self.health = pipeline.health
        self.endpoints = pipeline.endpoints
        self.stats = pipeline.stats
        self._random = random.Random(config.seed)
        self._tokens = config.budget_burst
        self._lock = threading.Lock()

    @property
    def budget(self) -> float:
        """Retry tokens available now (never negative)."""
        return self._tokens

    @hookimpl
    def aurelis_attempt_end(self, ctx: RequestContext, attempt: Attempt) -> None:
        if attempt.number == 1:  # once per request that reached the network
            with self._lock:
                self._tokens = min(self.config.budget_burst, self._tokens + self.config.budget_ratio)

    @hookimpl
    def aurelis_retry(self, ctx: RequestContext, attempt: Attempt) -> float | None:
        config = self.config
        if attempt.number >= config.max_attempts or not self._retryable(ctx, attempt):
            return None
        endpoint = self.health.upstream(ctx, attempt)
        state: RetryState | None = ctx.state.get("retry")
        if state is None:
            state = ctx.state["retry"] = RetryState()
        state.failed.add(endpoint.name)
        if self._has_alternative(state.failed):
            delay = 0.0
        elif isinstance(attempt.error, EndpointUnavailable):
            return None  # nothing else to try: the same endpoint would refuse again
        else:
            hint = retry_after(attempt.headers)
            if hint is None:
                with self._lock:
                    hint = self._random.uniform(0.0, min(config.cap, config.base * 2 ** (attempt.number - 1)))
            delay = hint
        counters = self.stats.counters
        if config.deadline is not None and time.perf_counter() - ctx.started + delay >= config.deadline:
            counters["retry_deadline"] += 1
            return None
        with self._lock:
            if self._tokens < 1:
                counters["retry_budget_exhausted"] += 1
                return None
            self._tokens -= 1
        counters["retries"] += 1
        state.waits.append(delay)
        return delay

    def _retryable(self, ctx: RequestContext, attempt: Attempt) -> bool:
        error = attempt.error
        if error is not None:
            http = ctx.http
            return isinstance(
                error, (EndpointUnavailable, http.TimeoutException, http.NetworkError, http.RemoteProtocolError)
            )
        headers = attempt.headers
        should = headers.get("x-should-retry") if headers is not None else None
        if should == "true":
            return True
        if should == "false":
            return False
        status = attempt.status_code
        return status is not None and (status >= 500 or status in self.config.statuses)

    def _has_alternative(self, failed: set[str]) -> bool:
        health = self.health
        now = time.monotonic()
        return any(e.name not in failed and health.available(e, now) for e in self.endpoints)
