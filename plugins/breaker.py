"""``breaker``: a circuit breaker per endpoint (or per host when no endpoints are configured).

States, as in resilience4j and Polly::

    closed --(failure rate over the window >= failure_rate, with >= min_calls calls;
              or consecutive_failures in a row)--> open
    open --(open time elapsed; the next attempt routed there)--> half_open
    half_open --(close_after probe successes)--> closed
    half_open --(a probe fails)--> open, for longer: open_for * backoff**trips, capped at max_open_for

What counts as a failure: a transport error (connect error, timeout, read error, a stream cut off; any
``TransportError`` of the request's httpx flavour) and a 5xx answer. A 429 does *not*: the endpoint is healthy
but busy, so it is marked rate-limited in :class:`~aurelis_core.health.EndpointHealth` until
``now + Retry-After`` (``rate_limited_for`` seconds without the header) and routers skip it until then. Other
4xx answers are successes (the endpoint answered). Errors raised before the network
(:class:`~aurelis_core.health.EndpointUnavailable`) and cancellations count for nothing.

The breaker writes every state change to the pipeline's health registry (``block`` / ``set_circuit``), which
is how routers learn to avoid an open endpoint; an open endpoint's time-out ends lazily, at the first attempt
routed to it afterwards, which becomes a half-open probe. At most ``half_open_probes`` probes are in flight at
once (``probes_left`` in the registry tells routers whether another one may go). An attempt that reaches an
open circuit anyway (no router, a single endpoint, or every endpoint open so the router fell back to all of
them) fails fast with :class:`CircuitOpenError` instead of adding load to a failing upstream.

Observability: :meth:`Breaker.state`, :attr:`Breaker.transitions` (the latest 1000 changes), the pipeline's
``stats.counters["breaker_open"]``, ``["breaker_half_open"]``, ``["breaker_closed"]``,
``["breaker_rate_limited"]``, and a log line per change (WARNING when a circuit opens, INFO otherwise).

Time: the breaker reads the pipeline's health registry clock (``pipeline.health.clock``, ``time.monotonic`` by
default), the clock the registry's blocks are kept in. A test or a simulation that sets a fake clock there moves
the sliding window, the open time and the rate-limited time with it, without sleeping.

Shared by a fleet (``share = true``, through ``[redis_connection]`` or the table's own ``redis``): an endpoint
one replica opens is skipped by every replica within ``sync_interval`` (0.1 s) plus a round trip, and when its
open time is over one replica of the fleet holds the probe lease and sends the half-open probes. A replica whose
request just failed asks the fleet at once, so it sends an endpoint the fleet has open one failure, not its own
``consecutive_failures``. No request waits for Redis: a background thread exchanges the state, and while Redis
fails each replica's breakers are its own (see :mod:`aurelis_plugins._fleet_breaker`). Counted in
``stats.counters["breaker_redis_errors"]``.

Cost: the sliding window is a ring of ten time buckets (no allocation per call, and the failure rate is only
summed when a failure could trip the circuit); an ``aurelis_admit`` on a closed circuit is one dict lookup.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any, NamedTuple

import attrs

from aurelis_core.plugin import (
    Attempt,
    CircuitState,
    Endpoint,
    EndpointUnavailable,
    RedisConnection,
    RequestContext,
    at_least,
    hookimpl,
    in_range,
    log_fault,
    non_negative_int,
    positive,
    positive_int,
    retry_after,
    worth_logging,
)

if TYPE_CHECKING:
    from ._fleet_breaker import Fleet, Remote

__all__ = ["Breaker", "BreakerConfig", "CircuitOpenError", "Transition"]

logger = logging.getLogger("aurelis.breaker")

#: Buckets in the sliding window: finer buckets forget old calls more smoothly, but cost more to sum.
BUCKETS = 10


@attrs.frozen
class BreakerConfig:
    #: Share of failed calls in the window that opens the circuit (0 < rate <= 1).
    failure_rate: float = attrs.field(default=0.5, validator=in_range(0, 1, lo_open=True))
    #: Seconds of the sliding window the failure rate is computed over.
    window: float = attrs.field(default=30.0, validator=positive)
    #: Calls the window must hold before the failure rate may open the circuit.
    min_calls: int = attrs.field(default=10, validator=positive_int)
    #: Failures in a row that open the circuit whatever the rate (0: off).
    consecutive_failures: int = attrs.field(default=5, validator=non_negative_int)
    #: Seconds a circuit stays open after its first trip.
    open_for: float = attrs.field(default=5.0, validator=positive)
    #: Each further trip (a failed probe, or tripping again within ``window`` of closing) multiplies it by this.
    backoff: float = attrs.field(default=2.0, validator=at_least(1))
    #: ...up to this many seconds.
    max_open_for: float = attrs.field(default=120.0, validator=positive)
    #: Probes allowed in flight at once while half-open.
    half_open_probes: int = attrs.field(default=1, validator=positive_int)
    #: Successful probes that close the circuit.
    close_after: int = attrs.field(default=2, validator=positive_int)
    #: Seconds a 429 without ``Retry-After`` keeps the endpoint marked rate-limited.
    rate_limited_for: float = attrs.field(default=1.0, validator=positive)
    #: Share open circuits and one probe lease per endpoint with every replica, through the config's
    #: ``[redis_connection]`` (or ``redis``); false: each process has its own breakers.
    share: bool = False
    #: The Redis to share through, if not ``[redis_connection]`` (a table: ``url``, or ``sentinels`` +
    #: ``service_name``, or ``cluster_nodes``); giving it turns ``share`` on.
    redis: RedisConnection | None = None
    #: Prefix of the Redis keys.
    key_prefix: str = "aurelis:breaker:"
    #: Seconds between reads of the fleet's circuits: how late, at most (plus a round trip), a replica learns
    #: that another opened or closed one.
    sync_interval: float = attrs.field(default=0.1, validator=positive)
    #: Seconds each exchange with Redis may take (connect and answer) before the breakers are this process's own.
    redis_timeout: float = attrs.field(default=0.15, validator=positive)
    #: Seconds Redis is left alone after it failed; then one exchange probes it.
    redis_cooloff: float = attrs.field(default=2.0, validator=positive)

    def __attrs_post_init__(self) -> None:
        if self.max_open_for < self.open_for:
            raise ValueError(f"'max_open_for' ({self.max_open_for}) must be >= 'open_for' ({self.open_for})")


class CircuitOpenError(EndpointUnavailable):
    """The attempt's endpoint has an open circuit (or no half-open probe slot left): it was not sent.

    ``retry_after`` is the seconds until the circuit lets a probe through (``None`` while probes are out).
    """


class Transition(NamedTuple):
    """One state change. ``at`` is ``time.time()``."""

    at: float
    endpoint: str
    old: CircuitState
    new: CircuitState
    reason: str


class _Circuit:
    """One endpoint's breaker state. Guarded by the plugin's lock."""

    __slots__ = (
        "buckets", "closed_at", "consecutive", "endpoint", "lease_until", "open_until", "probe_ok", "probes_out",
        "state", "trips", "version", "wants_probe",
    )

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.state: CircuitState = "closed"
        self.consecutive = 0
        # [epoch, calls, failures] per bucket; epoch = int(now / bucket width) of the calls it holds.
        self.buckets = [[-1, 0, 0] for _ in range(BUCKETS)]
        self.trips = 0
        self.open_until = 0.0
        self.probes_out = 0
        self.probe_ok = 0
        self.closed_at: float | None = None
        # Shared circuits only: until when this replica holds the fleet's probe lease; whether it asks for it;
        # and a count of its own opens and closes, so a read of the fleet older than the latest is not applied.
        self.lease_until = 0.0
        self.wants_probe = False
        self.version = 0


class Breaker:
    """The ``breaker`` plugin."""

    name = "breaker"
    Config = BreakerConfig

    def __init__(self, config: BreakerConfig, pipeline: Any) -> None:
        self.config = config
        self.health = pipeline.health
        self.stats = pipeline.stats
        self._width = config.window / BUCKETS
        self._circuits: dict[str, _Circuit] = {}
        #: The latest state changes, oldest first.
        self.transitions: deque[Transition] = deque(maxlen=1000)
        # Sync clients may share a pipeline across threads; transitions must not interleave. Uncontended: ~50 ns.
        self._lock = threading.Lock()
        # The table's own Redis; else, if shared, the config's, else the default node.
        connection = config.redis
        if connection is None and config.share:
            connection = pipeline.config.redis_connection or RedisConnection()
        #: The fleet's circuits, when they are shared (see :mod:`aurelis_plugins._fleet_breaker`).
        self.fleet: Fleet | None = None
        if connection is not None:
            from ._fleet_breaker import Fleet

            self.fleet = Fleet(connection, config.key_prefix, config.redis_timeout, config.redis_cooloff,
                               config.sync_interval)

    def state(self, endpoint: Endpoint | str) -> CircuitState:
        """The circuit state of an endpoint (or its name; a host's origin URL when no endpoints are configured).

        An open circuit whose time-out has passed still reads ``"open"`` until an attempt probes it. Shared, an
        endpoint this replica has not used yet reads as the fleet has it.
        """
        name = endpoint if isinstance(endpoint, str) else endpoint.name
        circuit = self._circuits.get(name)
        if circuit is None:
            return "open" if self.fleet is not None and name in self.fleet.remote else "closed"
        return circuit.state

    # --- hooks -------------------------------------------------------------------------------------------------

    @hookimpl
    def aurelis_admit(self, ctx: RequestContext, attempt: Attempt) -> None:
        endpoint = self.health.upstream(ctx, attempt)
        circuit = self._circuits.get(endpoint.name)
        if circuit is None:
            if self.fleet is None:
                return None
            with self._lock:  # shared: the fleet may have this endpoint open already
                circuit = self._circuits.get(endpoint.name) or self._circuit_of(endpoint)
        if circuit.state == "closed":
            return None
        with self._lock:
            now = self.health.clock()
            if circuit.state == "open":
                if now < circuit.open_until:
                    wait = circuit.open_until - now
                    raise CircuitOpenError(
                        f"circuit open for {endpoint.name} (retry in {wait:.1f}s)", endpoint.name, wait
                    )
                fleet = self.fleet
                if fleet is not None and fleet.live and circuit.lease_until <= now:
                    # The fleet probes once: only the probe lease's holder goes half-open. Ask for it, and
                    # look again after the next exchange.
                    circuit.open_until = now + fleet.interval
                    self.health.block(endpoint, circuit.open_until, "open")
                    if not circuit.wants_probe:
                        circuit.wants_probe = True
                        fleet.wake()
                    raise CircuitOpenError(
                        f"circuit open for {endpoint.name} (its probe is the fleet's: another replica's, or "
                        "this one's once granted)", endpoint.name, fleet.interval,
                    )
                self._transition(circuit, "half_open", "open time elapsed")
            if circuit.state == "half_open":
                if circuit.probes_out >= self.config.half_open_probes:
                    raise CircuitOpenError(
                        f"circuit half-open for {endpoint.name}: all {self.config.half_open_probes} probe(s) "
                        "are in flight", endpoint.name,
                    )
                circuit.probes_out += 1
                self._publish_probes(circuit)
                ctx.state.setdefault("breaker", []).append(attempt)
        return None

    @hookimpl
    def aurelis_attempt_end(self, ctx: RequestContext, attempt: Attempt) -> None:
        outcome = self._outcome(ctx, attempt)  # True: success, False: failure, None: says nothing
        endpoint = self.health.upstream(ctx, attempt)
        probes = ctx.state.get("breaker")
        is_probe = probes is not None and attempt in probes
        if outcome is None and not is_probe:
            if attempt.status_code == 429:
                self._rate_limited(endpoint, attempt)
            return
        with self._lock:
            circuit = self._circuits.get(endpoint.name) or self._circuit_of(endpoint)
            now = self.health.clock()
            if is_probe:
                circuit.probes_out = max(0, circuit.probes_out - 1)
                if circuit.state == "half_open":
                    if outcome is False:
                        self._trip(circuit, now, "a half-open probe failed")
                    elif outcome is True:
                        circuit.probe_ok += 1
                        if circuit.probe_ok >= self.config.close_after:
                            self._close(circuit, now, f"{self.config.close_after} probe(s) succeeded")
                            self._publish(circuit, "close")
                        else:
                            self._publish_probes(circuit)
                    else:
                        self._publish_probes(circuit)
            elif circuit.state == "closed" and outcome is not None:
                self._record(circuit, now, failed=not outcome)
                if not outcome and circuit.state == "closed" and self.fleet is not None:
                    # It may be open in the fleet already: ask now rather than at the next interval, so this
                    # replica sends it one failure, not its own consecutive_failures.
                    self.fleet.wake()
        if attempt.status_code == 429:
            self._rate_limited(endpoint, attempt)

    @hookimpl
    def aurelis_start(self, pipeline: Any) -> Any:
        fleet = self.fleet
        if fleet is None:
            return None
        fleet.start(self._exchange)
        # A new replica learns which endpoints the fleet has open before its first request: it waits for the
        # first exchange, a couple of Redis timeouts at most.
        wait = 2 * self.config.redis_timeout
        if pipeline.is_async:
            return asyncio.to_thread(fleet.wait_first_round, wait)
        fleet.wait_first_round(wait)
        return None

    @hookimpl
    def aurelis_close(self, pipeline: Any) -> None:
        if self.fleet is not None:
            self.fleet.close()

    # --- the fleet (shared circuits) -----------------------------------------------------------------------------
    # Called with the lock held, but ``_exchange``, which the fleet's thread runs.

    def _circuit_of(self, endpoint: Endpoint) -> _Circuit:
        """A new circuit for ``endpoint``, in the state the fleet has it in (when shared)."""
        circuit = self._circuits[endpoint.name] = _Circuit(endpoint)
        if self.fleet is not None:
            self._adopt(circuit, self.fleet.remote.get(endpoint.name), False, self.health.clock())
        return circuit

    def _publish(self, circuit: _Circuit, kind: str, open_for: float = 0.0) -> None:
        """Tell the fleet this replica opened or closed ``circuit`` (which ends its lease, if it held it)."""
        fleet = self.fleet
        if fleet is None:
            return
        from ._fleet_breaker import Change

        circuit.version += 1
        circuit.lease_until = 0.0
        circuit.wants_probe = False
        fleet.publish(Change(circuit.endpoint.name, kind, open_for, circuit.trips))

    def _exchange(self) -> None:
        """One round with the fleet (on its thread): send this replica's opens and closes and its lease requests,
        then bring each circuit to the fleet's state, unless it changed here meanwhile (the next round sends it)."""
        fleet = self.fleet
        assert fleet is not None
        with self._lock:
            wanted = [name for name, c in self._circuits.items()
                      if c.wants_probe or (c.state == "half_open" and c.lease_until)]
            versions = {name: c.version for name, c in self._circuits.items()}
        try:
            granted = fleet.exchange(wanted)
        except Exception as exc:  # REDIS_ERRORS, and whatever else: the thread must go on
            count = self.stats.counters["breaker_redis_errors"] = self.stats.counters["breaker_redis_errors"] + 1
            if worth_logging(count):
                log_fault(logger, logging.WARNING, "sharing circuits through Redis failed (%d so far); the breakers "
                          "are this process's own until it answers", count, error=exc)
            return
        remote = fleet.remote
        with self._lock:
            now = self.health.clock()
            for name, circuit in self._circuits.items():
                if versions.get(name) == circuit.version:
                    self._adopt(circuit, remote.get(name), name in granted, now)

    def _adopt(self, circuit: _Circuit, remote: Remote | None, granted: bool, now: float) -> None:
        """Bring ``circuit`` to the fleet's state: ``remote`` (``None``: closed in the fleet), and whether this
        replica holds the probe lease."""
        if remote is None:
            if circuit.state != "closed":
                self._close(circuit, now, "closed in the fleet (another replica's probes succeeded)")
            return
        circuit.trips = remote.trips
        if remote.left > 0:
            until = now + remote.left
            circuit.lease_until = 0.0
            circuit.wants_probe = False
            if circuit.state != "open":
                self._open(circuit, until, f"opened in the fleet, for {remote.left:.3g}s more")
            elif until > circuit.open_until:
                circuit.open_until = until
                self.health.block(circuit.endpoint, until, "open")
            return
        # The fleet's open time is over: the lease's holder probes.
        if granted:
            assert self.fleet is not None
            circuit.lease_until = now + self.fleet.lease
            circuit.wants_probe = False
            if circuit.state == "open":
                circuit.open_until = min(circuit.open_until, now)
        elif circuit.state == "closed":
            self._open(circuit, now, "open in the fleet, waiting for a probe")

    # --- internals ---------------------------------------------------------------------------------------------

    @staticmethod
    def _outcome(ctx: RequestContext, attempt: Attempt) -> bool | None:
        error = attempt.error
        if error is not None:
            if isinstance(error, ctx.http.TransportError):
                return False
            return None  # cancelled, refused before sending, or a plugin's own error: not the upstream's doing
        status = attempt.status_code
        if status is None or status == 429:
            return None
        return status < 500

    def _record(self, circuit: _Circuit, now: float, failed: bool) -> None:
        epoch = int(now / self._width)
        bucket = circuit.buckets[epoch % BUCKETS]
        if bucket[0] != epoch:
            bucket[0], bucket[1], bucket[2] = epoch, 0, 0
        bucket[1] += 1
        if not failed:
            circuit.consecutive = 0
            return
        bucket[2] += 1
        circuit.consecutive += 1
        config = self.config
        if config.consecutive_failures and circuit.consecutive >= config.consecutive_failures:
            self._trip(circuit, now, f"{circuit.consecutive} consecutive failures")
            return
        oldest = epoch - BUCKETS
        calls = failures = 0
        for b_epoch, b_calls, b_failures in circuit.buckets:
            if b_epoch > oldest:
                calls += b_calls
                failures += b_failures
        if calls >= config.min_calls and failures >= config.failure_rate * calls:
            self._trip(circuit, now, f"{failures}/{calls} calls failed in the last {config.window:g}s")

    def _trip(self, circuit: _Circuit, now: float, reason: str) -> None:
        config = self.config
        if circuit.state == "closed" and circuit.closed_at is not None and now - circuit.closed_at > config.window:
            circuit.trips = 0  # stayed closed for a whole window: this is a new incident, not the same one
        open_for = min(config.max_open_for, config.open_for * config.backoff**circuit.trips)
        circuit.trips += 1
        self._open(circuit, now + open_for, f"{reason}; open for {open_for:g}s")
        self._publish(circuit, "open", open_for)

    def _open(self, circuit: _Circuit, until: float, reason: str) -> None:
        circuit.open_until = until
        circuit.probes_out = circuit.probe_ok = 0
        self.health.block(circuit.endpoint, until, "open")
        self._transition(circuit, "open", reason)

    def _close(self, circuit: _Circuit, now: float, reason: str) -> None:
        circuit.consecutive = circuit.probe_ok = 0
        for bucket in circuit.buckets:
            bucket[0], bucket[1], bucket[2] = -1, 0, 0
        circuit.closed_at = now
        circuit.lease_until = 0.0
        circuit.wants_probe = False
        self._transition(circuit, "closed", reason)

    def _publish_probes(self, circuit: _Circuit) -> None:
        left = max(0, self.config.half_open_probes - circuit.probes_out)
        self.health.set_circuit(circuit.endpoint, "half_open", left)

    def _transition(self, circuit: _Circuit, new: CircuitState, reason: str) -> None:
        old, circuit.state = circuit.state, new
        name = circuit.endpoint.name
        if new == "half_open":
            self._publish_probes(circuit)
        else:
            self.health.set_circuit(circuit.endpoint, new)
        self.transitions.append(Transition(time.time(), name, old, new, reason))
        self.stats.counters[f"breaker_{new}"] += 1
        logger.log(
            logging.WARNING if new == "open" else logging.INFO,
            "breaker %s -> %s for %s: %s", old, new, name, reason,
        )

    def _rate_limited(self, endpoint: Endpoint, attempt: Attempt) -> None:
        wait = retry_after(attempt.headers)
        seconds = self.config.rate_limited_for if wait is None else wait
        self.health.block(endpoint, self.health.clock() + seconds, "rate_limited")
        self.stats.counters["breaker_rate_limited"] += 1
