"""``tuner``: an adaptive concurrency limit per endpoint, a bounded queue, and relief under memory pressure.

Each endpoint (or, without ``endpoints``, each host) gets a limit on the attempts in flight to it. An attempt
over the limit waits in a FIFO queue of at most ``max_queue`` attempts for a slot (``queue_timeout`` seconds
at most); past that it fails at once with :class:`ConcurrencyLimitError`, which says which bound was hit. A
slot is released when the attempt ends (``aurelis_attempt_end``), and handed straight to the first waiter, so
a released slot is never raced for.

The limit adapts once per ``window`` (and only once the window holds ``min_samples`` finished attempts):

- ``algorithm = "aimd"`` (the default): a window in which more than ``overload_tolerance`` of the attempts
  were overloaded (429, 5xx, timeout) multiplies the limit by ``backoff``; a clean window in which the limit
  was actually reached adds ``increase``. Simple and robust: it needs no latency model.
- ``algorithm = "gradient2"``: Netflix's Gradient2 on latency. ``gradient = clamp(rtt_tolerance * long / short,
  0.5, 1)`` where *short* is this window's mean latency and *long* a slow average of past windows;
  ``limit = limit * (1 - smoothing) + (limit * gradient + sqrt(limit)) * smoothing``. Overloaded windows
  still back off as in AIMD. Latency is per token when the answer was read whole and has a ``usage`` block
  (cacheable misses), otherwise the time to the response headers.

Every change is small (one step per window), logged, kept in :attr:`Tuner.changes` with its time, reason and
old -> new limit, and counted in ``pipeline.stats.counters`` (``tuner.increase``, ``tuner.decrease``,
``tuner.rollback``, ``tuner.queued``, ``tuner.rejected``, ``tuner.memory_shrink``). An increase is on
probation for one window: if that window is overloaded, or its latency is more than ``rollback_latency``
worse than before, the limit goes back to where it was and stays there for ``rollback_hold`` windows.

Memory: with ``max_rss_bytes`` set, the process's resident size is checked at most every
``memory_check_interval`` seconds, as attempts end. Over the bound, every cache tier held in the process that
can give memory back (a :class:`~aurelis_core.plugin.ShrinkableTier`: the L1 ``memory`` tier) gives up
``shrink_fraction`` of what it holds (and keeps the lower budget): the cheapest memory to free, since lower
tiers still hold the answers. With nothing left there, the concurrency limits are cut instead (fewer answers
in flight at once). Either way it is logged and recorded as a change.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Literal

import anyio
import anyio.from_thread
import anyio.lowlevel
import attrs

from aurelis_core.plugin import (
    Attempt,
    RequestContext,
    ShrinkableTier,
    at_least,
    fraction,
    hookimpl,
    in_range,
    non_negative_int,
    positive,
    positive_int,
)

__all__ = ["Change", "ConcurrencyLimitError", "Tuner", "TunerConfig", "rss_bytes"]

logger = logging.getLogger("aurelis.tuner")


class ConcurrencyLimitError(Exception):
    """An attempt could not get a slot: the queue was full, or it waited ``queue_timeout`` seconds."""


@attrs.frozen
class TunerConfig:
    #: ``"aimd"`` (back off on 429/5xx/timeouts) or ``"gradient2"`` (also follow the latency gradient).
    algorithm: Literal["aimd", "gradient2"] = "aimd"
    #: Attempts in flight per endpoint at the start, before the first adjustment.
    initial_limit: int = attrs.field(default=20, validator=positive_int)
    #: The limit never goes below this ...
    min_limit: int = attrs.field(default=1, validator=positive_int)
    #: ... nor above this.
    max_limit: int = attrs.field(default=500, validator=positive_int)
    #: Attempts that may wait for a slot per endpoint; 0: over the limit fails at once.
    max_queue: int = attrs.field(default=1000, validator=non_negative_int)
    #: Seconds an attempt may wait in the queue (``None``: as long as it takes).
    queue_timeout: float | None = attrs.field(default=60.0, validator=positive)
    #: Seconds between adjustments.
    window: float = attrs.field(default=1.0, validator=positive)
    #: Finished attempts a window needs before it is judged.
    min_samples: int = attrs.field(default=10, validator=positive_int)
    #: Multiplier applied to the limit after an overloaded window.
    backoff: float = attrs.field(default=0.9, validator=fraction)
    #: Added to the limit after a clean window that reached it (AIMD).
    increase: int = attrs.field(default=1, validator=positive_int)
    #: Share of overloaded attempts (429, 5xx, timeouts) a window may have before the limit backs off.
    overload_tolerance: float = attrs.field(default=0.0, validator=in_range(0, 1, hi_open=True))
    #: After an increase, a latency this much worse (0.25: +25%) in the next window rolls it back.
    rollback_latency: float = attrs.field(default=0.25, validator=positive)
    #: Windows without an increase after a rollback.
    rollback_hold: int = attrs.field(default=5, validator=non_negative_int)
    #: Gradient2: how far one window moves the limit towards its target.
    smoothing: float = attrs.field(default=0.2, validator=fraction)
    #: Gradient2: latency may grow this much over the long-term average before the limit shrinks.
    rtt_tolerance: float = attrs.field(default=1.5, validator=at_least(1.0))
    #: Resident set size (bytes) above which memory is given back (``None``: never checked).
    max_rss_bytes: int | None = attrs.field(default=None, validator=positive_int)
    #: Seconds between two resident-size checks.
    memory_check_interval: float = attrs.field(default=5.0, validator=positive)
    #: Share of the memory tier's bytes given back per check over ``max_rss_bytes``.
    shrink_fraction: float = attrs.field(default=0.25, validator=fraction)
    #: Changes kept in :attr:`Tuner.changes`.
    max_changes: int = attrs.field(default=1000, validator=positive_int)

    def __attrs_post_init__(self) -> None:
        if not self.min_limit <= self.initial_limit <= self.max_limit:
            raise ValueError(
                f"need min_limit <= initial_limit <= max_limit, got {self.min_limit}, {self.initial_limit}, "
                f"{self.max_limit}"
            )


@attrs.frozen
class Change:
    """One adjustment: ``at`` is ``time.time()``; ``target`` an endpoint/host, or for ``memory_shrink`` the cache
    tier that gave memory back (``"memory"``; then ``old`` and ``new`` are its byte budget); ``kind`` is
    increase, decrease, rollback or memory_shrink."""

    at: float
    target: str
    kind: str
    old: int
    new: int
    reason: str


class _Waiter:
    """An attempt queued for a slot. ``granted`` is set under the tuner's lock when a slot is handed to it."""

    __slots__ = ("event", "granted", "thread", "token")

    def __init__(self, is_async: bool) -> None:
        self.granted = False
        self.thread = threading.get_ident()
        self.event: Any
        if is_async:
            self.event = anyio.Event()
            self.token: Any = anyio.lowlevel.current_token()
        else:
            self.event = threading.Event()
            self.token = None

    def wake(self) -> None:
        if self.token is None or threading.get_ident() == self.thread:
            self.event.set()
        else:  # an async waiter woken from another thread: its event belongs to its own loop
            anyio.from_thread.run_sync(self.event.set, token=self.token)


class _Limiter:
    """The limit, the in-flight count, the queue and the current window's signals of one endpoint."""

    __slots__ = (
        "hold", "in_flight", "key", "limit", "long_rtt", "overloads", "peak", "pending", "queue", "rtt_count",
        "rtt_sum", "samples", "window_start",
    )

    def __init__(self, key: str, limit: int, now: float) -> None:
        self.key = key
        self.limit = limit
        self.in_flight = 0
        self.queue: deque[_Waiter] = deque()
        self.window_start = now
        self.samples = 0
        self.overloads = 0
        self.rtt_sum = 0.0
        self.rtt_count = 0
        #: Most attempts in flight or queued during the window: was the limit what held requests back?
        self.peak = 0
        self.long_rtt: float | None = None
        #: (limit before, its window's latency) while an increase is on probation.
        self.pending: tuple[int, float | None] | None = None
        self.hold = 0

    def grant(self) -> list[_Waiter]:
        """Hand free slots to the first waiters (call under the lock; wake them after releasing it)."""
        woken = []
        while self.queue and self.in_flight < self.limit:
            waiter = self.queue.popleft()
            waiter.granted = True
            self.in_flight += 1
            woken.append(waiter)
        return woken


class Tuner:
    """The ``tuner`` plugin. See the module docstring; list it before ``prometheus``."""

    name = "tuner"
    Config = TunerConfig

    def __init__(self, config: TunerConfig, pipeline: Any) -> None:
        self.config = config
        self.pipeline = pipeline
        self.changes: deque[Change] = deque(maxlen=config.max_changes)
        self._limiters: dict[str, _Limiter] = {}
        # One lock for all endpoints: it is held for a few dict and integer operations, never across a wait.
        self._lock = threading.Lock()
        self._next_memory_check = 0.0
        #: Where window and memory-check times come from; a test or a simulation sets a fake clock here.
        self.clock: Callable[[], float] = time.monotonic

    # --- reading -------------------------------------------------------------------------------------------

    def limit(self, key: str) -> int:
        """The current limit for endpoint (or host) ``key``."""
        limiter = self._limiters.get(key)
        return limiter.limit if limiter is not None else self.config.initial_limit

    def snapshot(self) -> dict[str, dict[str, int]]:
        """``{endpoint: {"limit", "in_flight", "queued"}}`` for every endpoint seen so far."""
        with self._lock:
            return {
                key: {"limit": lim.limit, "in_flight": lim.in_flight, "queued": len(lim.queue)}
                for key, lim in self._limiters.items()
            }

    # --- admission -----------------------------------------------------------------------------------------

    @hookimpl
    def aurelis_admit(self, ctx: RequestContext, attempt: Attempt) -> Any:
        endpoint = attempt.endpoint
        key = endpoint.name if endpoint is not None else ctx.request.url.host
        with self._lock:
            limiter = self._limiters.get(key)
            if limiter is None:
                limiter = self._limiters[key] = _Limiter(key, self.config.initial_limit, self.clock())
            if limiter.in_flight < limiter.limit and not limiter.queue:
                limiter.in_flight += 1
                limiter.peak = max(limiter.peak, limiter.in_flight)
                ctx.state[self.name] = (attempt, limiter)
                return None
            if len(limiter.queue) >= self.config.max_queue:
                self.pipeline.stats.counters["tuner.rejected"] += 1
                raise ConcurrencyLimitError(
                    f"aurelis tuner: {key!r} has {limiter.in_flight} attempts in flight (its limit is "
                    f"{limiter.limit}) and {len(limiter.queue)} queued (max_queue = {self.config.max_queue}); "
                    "raise [tuner] max_queue or max_limit, or send fewer requests at once"
                )
            waiter = _Waiter(ctx.is_async)
            limiter.queue.append(waiter)
            limiter.peak = max(limiter.peak, limiter.in_flight + len(limiter.queue))
            self.pipeline.stats.counters["tuner.queued"] += 1
        if ctx.is_async:
            return self._wait_async(ctx, attempt, limiter, waiter)
        try:
            got = waiter.event.wait(self.config.queue_timeout)
        except BaseException:
            if self._abandon(limiter, waiter):
                self._release(limiter)
            raise
        if not got and not self._abandon(limiter, waiter):
            raise self._timeout_error(limiter)
        ctx.state[self.name] = (attempt, limiter)
        return None

    async def _wait_async(
        self, ctx: RequestContext, attempt: Attempt, limiter: _Limiter, waiter: _Waiter
    ) -> None:
        try:
            with anyio.fail_after(self.config.queue_timeout):
                await waiter.event.wait()
        except TimeoutError:
            if not self._abandon(limiter, waiter):
                raise self._timeout_error(limiter) from None
        except BaseException:
            # Cancelled while queued: leave the queue, or pass on a slot that was handed over meanwhile.
            if self._abandon(limiter, waiter):
                self._release(limiter)
            raise
        ctx.state[self.name] = (attempt, limiter)

    def _abandon(self, limiter: _Limiter, waiter: _Waiter) -> bool:
        """Take a waiter that stopped waiting out of the queue; True if it had been granted a slot already."""
        with self._lock:
            if waiter.granted:
                return True
            limiter.queue.remove(waiter)
            return False

    def _timeout_error(self, limiter: _Limiter) -> ConcurrencyLimitError:
        self.pipeline.stats.counters["tuner.rejected"] += 1
        return ConcurrencyLimitError(
            f"aurelis tuner: waited {self.config.queue_timeout}s for a slot to {limiter.key!r} (limit "
            f"{limiter.limit}, {len(limiter.queue)} queued); raise [tuner] queue_timeout or max_limit"
        )

    def _release(self, limiter: _Limiter) -> None:
        with self._lock:
            limiter.in_flight -= 1
            woken = limiter.grant()
        for waiter in woken:
            waiter.wake()

    # --- learning ------------------------------------------------------------------------------------------

    @hookimpl
    def aurelis_attempt_end(self, ctx: RequestContext, attempt: Attempt) -> None:
        held = ctx.state.get(self.name)
        if held is None or held[0] is not attempt:
            return  # this attempt never got a slot (refused here or by an earlier admit stage)
        del ctx.state[self.name]
        limiter: _Limiter = held[1]
        overloaded, rtt = _signal(attempt)
        now = self.clock()
        config = self.config
        with self._lock:
            limiter.in_flight -= 1
            if overloaded is not None:
                limiter.samples += 1
                if overloaded:
                    limiter.overloads += 1
                elif rtt is not None:
                    limiter.rtt_sum += rtt
                    limiter.rtt_count += 1
            if now - limiter.window_start >= config.window and limiter.samples >= config.min_samples:
                self._adjust(limiter, now)
            woken = limiter.grant()
        for waiter in woken:
            waiter.wake()
        if config.max_rss_bytes is not None and now >= self._next_memory_check:
            self._next_memory_check = now + config.memory_check_interval
            self._relieve_memory(config.max_rss_bytes)

    def _adjust(self, limiter: _Limiter, now: float) -> None:
        """Judge the window that just ended and move the limit one step (under the lock)."""
        config = self.config
        old = limiter.limit
        share = limiter.overloads / limiter.samples
        rtt = limiter.rtt_sum / limiter.rtt_count if limiter.rtt_count else None
        pending, limiter.pending = limiter.pending, None
        binding = limiter.peak >= old
        new, kind, reason = old, "", ""
        if share > config.overload_tolerance:
            new = max(config.min_limit, min(old - 1, int(old * config.backoff)))
            kind, reason = "decrease", f"{limiter.overloads}/{limiter.samples} attempts overloaded (429/5xx/timeout)"
            if pending is not None:
                new = min(new, pending[0])
                kind, reason = "rollback", f"{reason} after the last increase"
        elif pending is not None and rtt and pending[1] and rtt > pending[1] * (1 + config.rollback_latency):
            new = pending[0]
            kind, reason = "rollback", f"latency {rtt / pending[1] - 1:+.0%} after the last increase"
        elif config.algorithm == "gradient2" and rtt is not None:
            new, reason = self._gradient(limiter, rtt, binding)
            kind = "increase" if new > old else "decrease"
        elif binding and limiter.hold == 0:
            new = old + config.increase
            kind, reason = "increase", f"limit reached with no overload in {limiter.samples} attempts"
        new = max(config.min_limit, min(config.max_limit, new))
        if kind == "rollback":
            limiter.hold = config.rollback_hold
        elif limiter.hold:
            limiter.hold -= 1
        if new > old and limiter.hold:
            new = old  # still holding after a rollback
        if new != old:
            if new > old:
                limiter.pending = (old, rtt)
            limiter.limit = new
            self._record(limiter.key, kind, old, new, reason)
        limiter.window_start = now
        limiter.samples = limiter.overloads = limiter.rtt_count = 0
        limiter.rtt_sum = 0.0
        limiter.peak = limiter.in_flight + len(limiter.queue)

    def _gradient(self, limiter: _Limiter, rtt: float, binding: bool) -> tuple[int, str]:
        """Gradient2's step for one window's mean latency ``rtt``."""
        config = self.config
        # The long-term average moves 5% per window (~20 windows of memory): slow enough that a slowdown shows
        # as a gradient for several windows, fast enough to accept a new normal within a minute or so.
        long = rtt if limiter.long_rtt is None else limiter.long_rtt * 0.95 + rtt * 0.05
        if long / rtt > 2:
            long *= 0.95  # after a slow spell, let the long-term average come back down faster
        limiter.long_rtt = long
        old = limiter.limit
        gradient = max(0.5, min(1.0, config.rtt_tolerance * long / rtt))
        target = old * (1 - config.smoothing) + (old * gradient + math.sqrt(old)) * config.smoothing
        if target > old and not binding:
            return old, ""  # unused headroom says nothing about a higher limit
        new = math.ceil(target) if target > old else math.floor(target)
        return new, f"latency {rtt * 1000:.3g} ms vs {long * 1000:.3g} ms long-term (gradient {gradient:.2f})"

    def _record(self, target: str, kind: str, old: int, new: int, reason: str) -> None:
        self.changes.append(Change(time.time(), target, kind, old, new, reason))
        self.pipeline.stats.counters[f"tuner.{kind}"] += 1
        log = logger.warning if kind == "memory_shrink" else logger.info
        log("aurelis tuner: %s %s %d -> %d: %s", target, kind, old, new, reason)

    # --- memory --------------------------------------------------------------------------------------------

    def _relieve_memory(self, max_rss: int) -> None:
        rss = rss_bytes()
        if rss <= max_rss:
            return
        why = f"resident size {rss} bytes > max_rss_bytes {max_rss}"
        shrunk = False
        # Found by what they can do, not by name: any tier that holds memory it can give back.
        for name, tier in zip(self.pipeline.tiers, self.pipeline.cache_tiers(), strict=True):
            if isinstance(tier, ShrinkableTier) and tier.currsize > 0:
                old = tier.budget
                freed = tier.shrink(self.config.shrink_fraction)
                self._record(name, "memory_shrink", old, tier.budget, f"{why}: freed {freed} bytes of L1")
                shrunk = True
        if shrunk:
            return
        with self._lock:
            for limiter in self._limiters.values():
                old = limiter.limit
                new = max(self.config.min_limit, int(old * self.config.backoff))
                if new != old:
                    limiter.limit = new
                    self._record(limiter.key, "decrease", old, new, f"{why}, and no L1 entries left to free")


def _signal(attempt: Attempt) -> tuple[bool | None, float | None]:
    """(overloaded?, latency) of a finished attempt; overloaded is ``None`` when it says nothing about load
    (cancelled, or failed before an answer for another reason than a timeout)."""
    error = attempt.error
    if error is not None:
        # httpx and httpx2 both name their timeouts *Timeout (ReadTimeout, PoolTimeout...).
        return (True, None) if "Timeout" in type(error).__name__ else (None, None)
    status = attempt.status_code or 0
    if status == 429 or status >= 500:
        return True, None
    latency = (attempt.first_byte or attempt.finished or attempt.started) - attempt.started
    body = attempt.body
    usage = attempt.usage if body is not None else None
    tokens = usage.total if usage is not None else None
    return False, latency / tokens if tokens else latency


def rss_bytes() -> int:
    """The process's resident set size now (Linux ``/proc/self/statm``); elsewhere its peak (``getrusage``)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024
