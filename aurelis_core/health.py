"""Endpoint health: the one place routers learn which endpoints they may pick.

Breakers, rate limiters and retries *write* here (an endpoint's circuit opened, it answered 429 until a reset,
it came back); routers only *read* it, through :meth:`EndpointHealth.candidates` and
:meth:`EndpointHealth.slow_start_factor`. Keeping this state out of the routers means every router honours
open circuits and rate limits the same way, and a new router cannot forget to.

Also here, because every resilience plugin needs them: :class:`EndpointUnavailable` (the error raised *before*
an attempt reaches the network: a circuit is open, a rate limit would make it wait too long), which breakers
and retries recognise as "not the upstream's fault", and :func:`retry_after` (how long the upstream asked us
to stay away).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import attrs

from ._model_routes import ModelRoutes
from ._models import Endpoint

if TYPE_CHECKING:
    from ._models import Attempt, RequestContext

__all__ = ["CircuitState", "EndpointHealth", "EndpointStatus", "EndpointUnavailable", "retry_after"]

CircuitState = Literal["closed", "open", "half_open"]

#: Lists of endpoints whose candidates are kept at once: one per model the endpoints serve differently.
_CACHED_LISTS = 64


@attrs.define
class EndpointStatus:
    """What is known about one endpoint's availability. Times are seconds of the registry's clock."""

    circuit: CircuitState = "closed"
    #: Until when the endpoint must not be picked (circuit open, ejected, or rate-limited until a reset).
    blocked_until: float = 0.0
    #: Why it is blocked: "open", "rate_limited", "ejected" (for observability).
    reason: str | None = None
    #: Half-open probes that may still be admitted (the breaker sets and spends this).
    probes_left: int = 0
    #: When the endpoint last became available again, for slow start.
    recovered_at: float | None = None


class EndpointUnavailable(Exception):
    """An attempt was refused before it reached the network: the endpoint is unavailable right now.

    Raised by resilience plugins from ``aurelis_admit`` (subclasses: the breaker's ``CircuitOpenError``, the
    rate limiter's ``RateLimitTimeout``). Breakers do not count it as the upstream's failure; a retry plugin may
    try another endpoint. It deliberately is *not* an httpx ``TransportError``: nothing was sent, and the
    openai SDK, which retries transport errors on its own, wraps any other exception in ``APIConnectionError``
    (the original is its ``__cause__``). ``retry_after`` is when it may be worth trying again, in seconds.
    """

    def __init__(self, message: str, endpoint: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.retry_after = retry_after


def retry_after(headers: Mapping[str, str] | Any, now: float | None = None) -> float | None:
    """Seconds the upstream asked the client to wait, from a response's headers, or ``None``.

    Reads, first found wins: ``retry-after-ms`` and ``x-ms-retry-after-ms`` (milliseconds, sent by OpenAI and
    Azure), then ``retry-after`` (RFC 9110: delay-seconds or an HTTP-date, compared with ``now``, a
    ``time.time()`` stamp). Negative or unparsable values are ignored.
    """
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("x-ms-retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            if scale != 1.0:
                continue
            import email.utils  # an HTTP date is the rare form of Retry-After

            try:
                date = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                continue
            seconds = date.timestamp() - (time.time() if now is None else now)
            return max(0.0, seconds)
        if seconds >= 0 and seconds == seconds:  # not negative, not NaN
            return seconds
    return None


class EndpointHealth:
    """Per-pipeline availability of each endpoint, keyed by endpoint name.

    Requests sent with no endpoint configured (or a router that returns ``None``) go to their own URL; for
    those, :meth:`upstream` names one synthetic :class:`Endpoint` per origin, so breakers and rate limiters
    keep per-host state in the same registry.

    ``clock`` (default ``time.monotonic``) is where every time the registry reads or stores comes from: times
    passed in (``now``, ``until``) must be of the same clock. A test or simulation passes its fake clock here
    and to the router, so blocks and slow-start ramps follow simulated time.
    """

    def __init__(
        self, endpoints: Sequence[Endpoint], slow_start: float = 30.0, clock: Callable[[], float] = time.monotonic,
        models: ModelRoutes | None = None,
    ) -> None:
        self.status: dict[str, EndpointStatus] = {e.name: EndpointStatus() for e in endpoints}
        #: Which endpoints serve which model (see :meth:`serving`).
        self.models = models if models is not None else ModelRoutes(endpoints)
        #: Seconds over which a recovered endpoint's share ramps from 10% to 100%.
        self.slow_start = slow_start
        self.clock = clock
        self._any_blocked = False
        #: Bumped by every change of a status, so cached candidates know when they are stale.
        self._version = 0
        #: The last candidates handed out for each list of endpoints asked about (one list per model served):
        #: id(endpoints) -> (endpoints, version, computed at, valid until, result).
        self._cached: dict[int, tuple[Sequence[Endpoint], int, float, float, Sequence[Endpoint]]] = {}
        self._origins: dict[tuple[Any, Any, Any], Endpoint] = {}

    def upstream(self, ctx: RequestContext, attempt: Attempt) -> Endpoint:
        """The endpoint ``attempt`` goes to: its routed endpoint, else one per origin of the request's URL."""
        endpoint = attempt.endpoint
        if endpoint is not None:
            return endpoint
        url = ctx.request.url
        key = (url.scheme, url.host, url.port)
        endpoint = self._origins.get(key)
        if endpoint is None:
            host = f"[{url.host}]" if ":" in url.host else url.host  # an IPv6 address, as a URL writes it
            origin = f"{url.scheme}://{host}" + (f":{url.port}" if url.port is not None else "")
            endpoint = self._origins.setdefault(key, Endpoint(url=origin))
        return endpoint

    def serving(self, ctx: RequestContext, endpoints: Sequence[Endpoint]) -> Sequence[Endpoint]:
        """The endpoints of ``endpoints`` (a router's: the pipeline's) that serve the model ``ctx`` is routed for:
        ``endpoints`` itself when every one does (always, when no endpoint lists its models), else the same
        tuple for every request for that model; :class:`~aurelis_core._model_routes.ModelNotServed` when none
        does. What a router picks among, before :meth:`candidates` leaves out the unavailable ones."""
        models = self.models
        if not models.active:
            return endpoints
        return models.for_request(ctx, endpoints)

    def available(self, endpoint: Endpoint, now: float | None = None) -> bool:
        status = self.status.get(endpoint.name)
        if status is None:
            return True
        if status.circuit == "half_open":
            return status.probes_left > 0
        return status.blocked_until <= (self.clock() if now is None else now)

    def candidates(self, endpoints: Sequence[Endpoint], now: float | None = None) -> Sequence[Endpoint]:
        """The endpoints a router may pick now; all of them ("panic mode") if none is available.

        The common case, nothing blocked, returns ``endpoints`` itself without building a list. Otherwise the
        list is built once and handed out again (the same object) until a status changes or the earliest
        block ends, so a pick while some endpoints are blocked costs O(1), not a scan of all endpoints.
        """
        if not self._any_blocked:
            return endpoints
        now = self.clock() if now is None else now
        cached = self._cached.get(id(endpoints))
        if (cached is not None and cached[0] is endpoints and cached[1] == self._version
                and cached[2] <= now < cached[3]):
            return cached[4]
        usable = [e for e in endpoints if self.available(e, now)]
        if len(usable) == len(endpoints):
            self._any_blocked = any(
                s.blocked_until > now or s.circuit != "closed" for s in self.status.values()
            )
            if not self._any_blocked:
                self._cached.clear()
                return endpoints
        # Until the earliest block still running ends, the same endpoints stay usable (unless a status changes).
        until = min((s.blocked_until for s in self.status.values() if s.blocked_until > now), default=math.inf)
        result = usable or endpoints
        if len(self._cached) >= _CACHED_LISTS:
            self._cached.clear()  # lists asked about once (a test's, a simulation's): start over
        self._cached[id(endpoints)] = (endpoints, self._version, now, until, result)
        return result

    def block(self, endpoint: Endpoint, until: float, reason: str) -> None:
        """Keep ``endpoint`` out of the candidates until ``until`` (seconds of the registry's clock)."""
        status = self.status.setdefault(endpoint.name, EndpointStatus())
        if until > status.blocked_until:
            status.blocked_until = until
            status.reason = reason
            self._version += 1
        self._any_blocked = True

    def set_circuit(self, endpoint: Endpoint, state: CircuitState, probes: int = 0) -> None:
        status = self.status.setdefault(endpoint.name, EndpointStatus())
        if state == "closed" and status.circuit != "closed":
            status.recovered_at = self.clock()
        status.circuit = state
        status.probes_left = probes
        self._version += 1
        if state != "closed":
            self._any_blocked = True

    def slow_start_factor(self, endpoint: Endpoint, now: float | None = None) -> float:
        """A weight multiplier in (0.1, 1]: ramps linearly over ``slow_start`` seconds after recovery."""
        status = self.status.get(endpoint.name)
        if status is None or status.recovered_at is None or self.slow_start <= 0:
            return 1.0
        elapsed = (self.clock() if now is None else now) - status.recovered_at
        if elapsed >= self.slow_start:
            status.recovered_at = None
            return 1.0
        return max(0.1, elapsed / self.slow_start)
