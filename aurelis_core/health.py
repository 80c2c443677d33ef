"""Endpoint health: the one place routers learn which endpoints they may pick.

Breakers, rate limiters and retries *write* here (an endpoint's circuit opened, it answered 429 until a reset,
it came back); routers only *read* it, through :meth:`EndpointHealth.candidates` and
:meth:`EndpointHealth.slow_start_factor`. Keeping this state out of the routers means every router honours
open circuits and rate limits the same way, and a new router cannot forget to.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Literal

import attrs

from ._models import Endpoint

__all__ = ["CircuitState", "EndpointHealth", "EndpointStatus"]

CircuitState = Literal["closed", "open", "half_open"]


@attrs.define
class EndpointStatus:
    """What is known about one endpoint's availability. Times are ``time.monotonic()`` seconds."""

    circuit: CircuitState = "closed"
    #: Until when the endpoint must not be picked (circuit open, ejected, or rate-limited until a reset).
    blocked_until: float = 0.0
    #: Why it is blocked: "open", "rate_limited", "ejected" (for observability).
    reason: str | None = None
    #: Half-open probes that may still be admitted (the breaker sets and spends this).
    probes_left: int = 0
    #: When the endpoint last became available again, for slow start.
    recovered_at: float | None = None


class EndpointHealth:
    """Per-pipeline availability of each endpoint, keyed by endpoint name."""

    def __init__(self, endpoints: Sequence[Endpoint], slow_start: float = 30.0) -> None:
        self.status: dict[str, EndpointStatus] = {e.name: EndpointStatus() for e in endpoints}
        #: Seconds over which a recovered endpoint's share ramps from 10% to 100%.
        self.slow_start = slow_start
        self._any_blocked = False

    def available(self, endpoint: Endpoint, now: float | None = None) -> bool:
        status = self.status.get(endpoint.name)
        if status is None:
            return True
        if status.circuit == "half_open":
            return status.probes_left > 0
        return status.blocked_until <= (time.monotonic() if now is None else now)

    def candidates(self, endpoints: Sequence[Endpoint], now: float | None = None) -> Sequence[Endpoint]:
        """The endpoints a router may pick now; all of them ("panic mode") if none is available.

        The common case, nothing blocked, returns ``endpoints`` itself without building a list.
        """
        if not self._any_blocked:
            return endpoints
        now = time.monotonic() if now is None else now
        usable = [e for e in endpoints if self.available(e, now)]
        if len(usable) == len(endpoints):
            self._any_blocked = any(
                s.blocked_until > now or s.circuit != "closed" for s in self.status.values()
            )
        return usable or endpoints

    def block(self, endpoint: Endpoint, until: float, reason: str) -> None:
        """Keep ``endpoint`` out of the candidates until ``until`` (monotonic seconds)."""
        status = self.status.setdefault(endpoint.name, EndpointStatus())
        if until > status.blocked_until:
            status.blocked_until = until
            status.reason = reason
        self._any_blocked = True

    def set_circuit(self, endpoint: Endpoint, state: CircuitState, probes: int = 0) -> None:
        status = self.status.setdefault(endpoint.name, EndpointStatus())
        if state == "closed" and status.circuit != "closed":
            status.recovered_at = time.monotonic()
        status.circuit = state
        status.probes_left = probes
        if state != "closed":
            self._any_blocked = True

    def slow_start_factor(self, endpoint: Endpoint, now: float | None = None) -> float:
        """A weight multiplier in (0.1, 1]: ramps linearly over ``slow_start`` seconds after recovery."""
        status = self.status.get(endpoint.name)
        if status is None or status.recovered_at is None or self.slow_start <= 0:
            return 1.0
        elapsed = (time.monotonic() if now is None else now) - status.recovered_at
        if elapsed >= self.slow_start:
            status.recovered_at = None
            return 1.0
        return max(0.1, elapsed / self.slow_start)
