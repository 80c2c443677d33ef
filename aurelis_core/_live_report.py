"""The live report: the figures ``aurelis replay`` reports, over a sliding window of a pipeline's own traffic.

``pipeline.report()`` builds the very :class:`~aurelis_core.report.Report` a replay does (latencies, hit
rate and hits per tier, errors by kind, resilience, per model and endpoint, recommendations, score) from the
requests the pipeline finished recently, so a running service can be looked at the way a replay is.

Nothing is added to the request path for it: every finished request already leaves one
:class:`~aurelis_core.stats.Sample` in the pipeline's bounded ring (``pipeline.stats.samples``), and the report
reads a copy of that ring when asked. The ``[report]`` table sizes the ring (``window_requests``: the memory
bound, ~200 bytes a request), narrows the window by age (``window_seconds``) and can log the report every
``log_every`` seconds on the ``aurelis.report`` logger, from a daemon thread of its own that never touches a
request and stops when the pipeline closes.

The resilience figures (retries, failovers, breaker trips, rate-limit waits...) are counters, not samples: a
window's are the counters' change since the copy of them taken last before the window began. A copy is taken
by every report and every periodic log (reports less than a second apart share one: the later replaces the
earlier), and the last 3600 of them are kept; with periodic logging on, a window's counters therefore include
at most ``log_every`` seconds before it.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import attrs

from ._logs import component_logger
from .validators import at_least, choices_hint, describe, positive, positive_int

if TYPE_CHECKING:
    from .pricing import Pricing
    from .report import Report, Targets
    from .stats import Sample, Stats

__all__ = ["LiveReport", "ReportConfig"]

logger = component_logger("report")

#: Counter copies less than this many seconds apart are merged (the later replaces the earlier) ...
CHECKPOINT_SPACING = 1.0
#: ... and at most this many are kept: an hour of them at one a second.
MAX_CHECKPOINTS = 3600


@attrs.frozen
class ReportConfig:
    """The ``[report]`` table: the window ``pipeline.report()`` reads, and optional periodic logging."""

    #: The most recent requests kept for the report: the size of the pipeline's ring of samples
    #: (``pipeline.stats.samples``), so its memory bound, ~200 bytes a request.
    window_requests: int = attrs.field(default=100_000, validator=positive_int)
    #: Only the requests that ended in the last this many seconds (default: every request the ring holds).
    window_seconds: float | None = attrs.field(default=None, validator=positive)
    #: Log the report of the window every this many seconds, at INFO on ``aurelis.report`` (default: never).
    log_every: float | None = attrs.field(default=None, validator=at_least(1))
    #: What the score measures against, by the fields of :class:`~aurelis_core.report.Targets`
    #: (``{ p95 = 0.8, hit_rate = 0.5 }``); the others keep their defaults.
    targets: Mapping[str, float] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        if not self.targets:
            return  # the report module is imported only when there is something to check
        try:
            self.scored_against()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"'targets': {exc}") from None

    def scored_against(self) -> Targets:
        """The :class:`~aurelis_core.report.Targets` of ``targets``."""
        from .report import Targets

        valid = [field.name for field in attrs.fields(Targets)]
        unknown = sorted(set(self.targets) - set(valid))
        if unknown:
            raise ValueError(f"unknown target {unknown[0]!r}{choices_hint(unknown[0], valid)}")
        return Targets(**self.targets)


class LiveReport:
    """Reports over a window of ``stats``' recent samples; see the module docstring."""

    def __init__(
        self, stats: Stats, config: ReportConfig, plugins: Sequence[str], pricing: Pricing | None = None
    ) -> None:
        self.stats = stats
        self.config = config
        self.pricing = pricing
        #: ``None``: the defaults of :class:`~aurelis_core.report.Targets`.
        self.targets = config.scored_against() if config.targets else None
        self.plugins = tuple(plugins)
        self._checkpoints: deque[tuple[float, dict[str, int]]] = deque(maxlen=MAX_CHECKPOINTS)
        self._lock = threading.Lock()
        self._ticker: _Ticker | None = None

    def report(
        self, *, window_requests: int | None = None, window_seconds: float | None = None,
        targets: Targets | None = None,
    ) -> Report:
        """The report of the window: the last ``window_requests`` requests (at most the ring's size) that ended
        in the last ``window_seconds``, scored against ``targets``; each defaults to the ``[report]`` table's."""
        from .report import build_report

        count = self.config.window_requests if window_requests is None else window_requests
        seconds = self.config.window_seconds if window_seconds is None else window_seconds
        if not positive_int.ok(count):
            raise ValueError(f"window_requests: expected {positive_int.expected}, got {describe(count)}")
        if seconds is not None and not positive.ok(seconds):
            raise ValueError(f"window_seconds: expected {positive.expected}, got {describe(seconds)}")
        now = time.time()
        # One C-level copy of the ring (other threads keep appending to it): iterating the ring itself would fail
        # when a request ends meanwhile.
        samples: Sequence[Sample] = self.stats.samples.copy()
        cut = len(samples) > count
        if cut:
            samples = list(samples)[-count:]
        duration = None
        start = min((s.at - s.latency for s in samples), default=now)
        if seconds is not None:
            since = now - seconds
            samples = [s for s in samples if s.at >= since]
            # Throughput is over the window's seconds (idle ones included: that is the live rate), or since the
            # pipeline started when it is younger, or since the oldest request kept when the ring is the limit.
            start = max(since, self.stats.started)
            if cut and samples:
                start = max(start, min(s.at - s.latency for s in samples))
            duration = now - start
        counters = self._counters_since(start, now)
        return build_report(samples, duration=duration, targets=targets or self.targets, counters=counters,
                            plugins=self.plugins, pricing=self.pricing)

    def _counters_since(self, start: float, now: float) -> dict[str, int]:
        """The counters' change since the last copy taken at or before ``start`` (or the oldest kept); takes a
        new copy."""
        stats = self.stats
        current = dict(stats.counters)  # dict() of a Counter is one C-level copy: safe while requests count
        with self._lock:
            checkpoints = self._checkpoints
            # Copies taken before the counters were last reset no longer apply; at the reset they were all zero.
            while checkpoints and checkpoints[0][0] < stats.started:
                checkpoints.popleft()
            if not checkpoints:
                checkpoints.append((stats.started, {}))
            baseline = checkpoints[0][1]
            for taken, copy in checkpoints:
                if taken > start:
                    break
                baseline = copy
            if len(checkpoints) > 1 and now - checkpoints[-2][0] < CHECKPOINT_SPACING:
                # Reports in quick succession: the newest copy replaces the last one rather than adding more.
                checkpoints[-1] = (now, current)
            else:
                checkpoints.append((now, current))
        changes = {name: value - baseline.get(name, 0) for name, value in current.items()}
        return {name: change for name, change in changes.items() if change > 0}

    # --- periodic logging ------------------------------------------------------------------------------------

    def start_logging(self, owner: object) -> None:
        """Start logging the report every ``log_every`` seconds (if set) until :meth:`stop_logging`, or until
        ``owner`` (the pipeline) is garbage-collected unclosed."""
        interval = self.config.log_every
        with self._lock:
            if interval is None or self._ticker is not None:
                return
            self._ticker = _Ticker(self, interval)
        weakref.finalize(owner, self._ticker.stop, False)
        self._ticker.start()

    def stop_logging(self) -> None:
        """Stop the periodic logging and wait for a report being logged to finish. Idempotent."""
        with self._lock:
            ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.stop(True)

    def log(self) -> None:
        """Log the window's report once, at INFO on ``aurelis.report`` (nothing is built if that is off)."""
        if logger.isEnabledFor(logging.INFO):
            logger.info("live report\n%s", self.report().text())


class _Ticker:
    """A daemon thread that logs the report every ``interval`` seconds until stopped."""

    def __init__(self, live: LiveReport, interval: float) -> None:
        self._live = live
        self._interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="aurelis-report", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, wait: bool) -> None:
        self._stopped.set()
        if wait and self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            try:
                self._live.log()
            except Exception:
                # A report that cannot be built (a bug) must not end the logging for good, nor reach a request.
                logger.exception("the live report could not be built")
