"""The routing scenarios (after the research notes' simulation), and how a router runs in them.

Load is given as a fraction of the endpoints' planned capacity (``slots / mean service time at a full
batch``). Every scenario runs ``T`` simulated seconds; results count requests that arrived after
``measure_from``. Each runs with any number ``K`` of client processes (each its own router and health
registry, as replicas of a service are) sharing the endpoints and the offered load.

1. ``slow_endpoint``: 5 identical endpoints, 60% load; endpoint 0 becomes 10x slower at T/2 (measured from
   T/2).
2. ``heterogeneous``: 5 different endpoints, the fastest of which fails 25% of its requests fast; 60% load
   with a spike to 95% for T/6 seconds at T/3; outlier ejection (5 consecutive failures: 30 s) and one retry.
3. ``brownout``: 5 identical endpoints, endpoint 0 answers 60% of requests with a fast 503 from T/6 on; no
   ejection, no retry.
4. ``high_load``: 5 identical endpoints, 85% load, no faults.
5. ``brownout_ends``: as ``brownout``, but endpoint 0 is healthy again from T/3: how long until it gets its
   share of the traffic back (:func:`recovery_time`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

import attrs

from aurelis_core import Endpoint
from aurelis_core.health import EndpointHealth
from aurelis_plugins.routers.ai_optimized import AIOptimized
from aurelis_plugins.routers.least_connections import LeastConnections
from aurelis_plugins.routers.load_based import LoadBased
from aurelis_plugins.routers.round_robin import RoundRobin
from aurelis_plugins.routers.weighted_response_time import WeightedResponseTime

from .engine import BIN, Clock, EndpointModel, Result, Simulation

__all__ = ["CLIENTS", "ROUTERS", "SCENARIOS", "Scenario", "bad_capacity_share", "recovery_time", "run_scenario"]

#: The numbers of client processes every scenario is run with.
CLIENTS = (1, 4, 16)
#: A recovered endpoint has its share back once it gets at least this fraction of its capacity share...
RECOVERED_SHARE = 0.5
#: ...over a window of this many seconds.
RECOVERY_WINDOW = 10.0

ROUTERS: dict[str, type] = {
    cls.name: cls for cls in (RoundRobin, LeastConnections, WeightedResponseTime, LoadBased, AIOptimized)
}

#: The request mix's max_tokens; outputs are 30-100% of it.
MAX_TOKENS = (32, 64, 128, 256)
MEAN_OUTPUT = sum(MAX_TOKENS) / len(MAX_TOKENS) * 0.65


@attrs.frozen
class Scenario:
    name: str
    models: Callable[[], list[EndpointModel]]
    load: float
    retries: int = 0
    eject_after: int | None = None
    #: (time as a fraction of T, action on the models dict)
    changes: tuple[tuple[float, Callable[[dict[str, EndpointModel]], None]], ...] = ()
    #: (start, end) fractions of T during which the load is ``spike``.
    spike: tuple[float, float, float] | None = None
    measure_from: float = 0.05
    #: The endpoint that misbehaves (for the traffic-share column), if any.
    bad: str | None = None
    #: When (a fraction of T) the misbehaving endpoint is healthy again, for :func:`recovery_time`.
    recovers: float | None = None


def _identical() -> list[EndpointModel]:
    return [EndpointModel(f"e{i}") for i in range(5)]


def _heterogeneous() -> list[EndpointModel]:
    return [
        EndpointModel("e0", per_token=0.012, fail_rate=0.25),
        EndpointModel("e1", per_token=0.02),
        EndpointModel("e2", per_token=0.02),
        EndpointModel("e3", per_token=0.035),
        EndpointModel("e4", per_token=0.025, slots=16),
    ]


def _set(name: str, **changes: float) -> Callable[[dict[str, EndpointModel]], None]:
    def apply(models: dict[str, EndpointModel]) -> None:
        for key, value in changes.items():
            setattr(models[name], key, value)

    return apply


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("slow_endpoint", _identical, 0.60, changes=((0.5, _set("e0", slow=10.0)),), measure_from=0.5,
                 bad="e0"),
        Scenario("heterogeneous", _heterogeneous, 0.60, retries=1, eject_after=5, spike=(1 / 3, 1 / 2, 0.95),
                 bad="e0"),
        Scenario("brownout", _identical, 0.60, changes=((1 / 6, _set("e0", fail_rate=0.6)),), measure_from=1 / 6,
                 bad="e0"),
        Scenario("high_load", _identical, 0.85),
        Scenario("brownout_ends", _identical, 0.60,
                 changes=((1 / 6, _set("e0", fail_rate=0.6)), (1 / 3, _set("e0", fail_rate=0.0))),
                 measure_from=1 / 6, bad="e0", recovers=1 / 3),
    )
}


def bad_capacity_share(scenario: Scenario) -> float:
    """The misbehaving endpoint's share of the capacity once every scheduled change has happened."""
    models = {m.name: m for m in scenario.models()}
    for _, change in scenario.changes:
        change(models)
    capacities = {name: m.capacity(MEAN_OUTPUT) for name, m in models.items()}
    return capacities[scenario.bad] / sum(capacities.values()) if scenario.bad else 0.0


def recovery_time(timeline: Sequence[dict[str, int]], name: str, since: float, fair_share: float) -> float:
    """Seconds from ``since`` until the end of the first ``RECOVERY_WINDOW`` in which ``name`` got at least
    ``RECOVERED_SHARE`` of ``fair_share`` of the attempts (``inf``: never, within ``timeline``)."""
    width = round(RECOVERY_WINDOW / BIN)
    first = math.ceil(since / BIN)
    for start in range(first, len(timeline) - width + 1):
        window = timeline[start:start + width]
        total = sum(sum(b.values()) for b in window)
        if total and sum(b.get(name, 0) for b in window) >= RECOVERED_SHARE * fair_share * total:
            return (start + width) * BIN - since
    return math.inf


def _router_factory(name: str) -> Callable[[tuple[Endpoint, ...], EndpointHealth, Clock, int], Any]:
    cls = ROUTERS[name]

    def make(endpoints: tuple[Endpoint, ...], health: EndpointHealth, clock: Clock, seed: int) -> Any:
        pipeline = SimpleNamespace(endpoints=endpoints, health=health)
        return cls(cls.Config(seed=seed), pipeline, clock=clock)

    return make


def run_scenario(scenario: Scenario, router: str, seed: int, duration: float, clients: int) -> Result:
    """One run of ``router`` in ``scenario`` for ``duration`` simulated seconds with ``clients`` processes."""
    models = scenario.models()
    capacity = sum(m.slots / m.mean_service(MEAN_OUTPUT) for m in models)
    base = scenario.load * capacity
    spike = scenario.spike

    def rate(t: float) -> float:
        if spike is not None and spike[0] * duration <= t < spike[1] * duration:
            return spike[2] * capacity
        return base

    sim = Simulation(
        models, _router_factory(router), seed=seed, clients=clients, rate=rate, max_tokens=MAX_TOKENS,
        retries=scenario.retries, eject_after=scenario.eject_after, measure_from=scenario.measure_from * duration,
    )
    for fraction, change in scenario.changes:
        sim.at(fraction * duration, change, sim.models)
    result = sim.run(duration)
    if scenario.recovers is not None and scenario.bad is not None:
        fair = 1.0 / len(models)  # identical endpoints: the healthy share
        result.recoveries.append(recovery_time(result.timeline, scenario.bad, scenario.recovers * duration, fair))
    return result
