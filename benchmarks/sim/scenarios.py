"""The four routing scenarios (after the research notes' simulation), and how a router runs in them.

Load is given as a fraction of the endpoints' planned capacity (``slots / mean service time at a full
batch``). Every scenario runs ``T`` simulated seconds; results count requests that arrived after
``measure_from``.

1. ``slow_endpoint``: 5 identical endpoints, 60% load, 4 client processes; endpoint 0 becomes 10x slower at
   T/2 (measured from T/2).
2. ``heterogeneous``: 5 different endpoints, the fastest of which fails 25% of its requests fast; 60% load
   with a spike to 95% for T/6 seconds at T/3; outlier ejection (5 consecutive failures: 30 s) and one retry.
3. ``brownout``: 5 identical endpoints, endpoint 0 answers 60% of requests with a fast 503 from T/6 on; no
   ejection, no retry.
4. ``high_load``: 5 identical endpoints, 85% load, one client process, no faults.
"""

from __future__ import annotations

from collections.abc import Callable
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

from .engine import Clock, EndpointModel, Result, Simulation

__all__ = ["ROUTERS", "SCENARIOS", "Scenario", "bad_capacity_share", "run_scenario"]

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
    clients: int = 4
    retries: int = 0
    eject_after: int | None = None
    #: (time as a fraction of T, action on the models dict)
    changes: tuple[tuple[float, Callable[[dict[str, EndpointModel]], None]], ...] = ()
    #: (start, end) fractions of T during which the load is ``spike``.
    spike: tuple[float, float, float] | None = None
    measure_from: float = 0.05
    #: The endpoint that misbehaves (for the traffic-share column), if any.
    bad: str | None = None


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
        Scenario("high_load", _identical, 0.85, clients=1),
    )
}


def bad_capacity_share(scenario: Scenario) -> float:
    """The misbehaving endpoint's share of the capacity once every scheduled change has happened."""
    models = {m.name: m for m in scenario.models()}
    for _, change in scenario.changes:
        change(models)
    capacities = {name: m.capacity(MEAN_OUTPUT) for name, m in models.items()}
    return capacities[scenario.bad] / sum(capacities.values()) if scenario.bad else 0.0


def _router_factory(name: str) -> Callable[[tuple[Endpoint, ...], EndpointHealth, Clock, int], Any]:
    cls = ROUTERS[name]

    def make(endpoints: tuple[Endpoint, ...], health: EndpointHealth, clock: Clock, seed: int) -> Any:
        pipeline = SimpleNamespace(endpoints=endpoints, health=health)
        return cls(cls.Config(seed=seed), pipeline, clock=clock)

    return make


def run_scenario(scenario: Scenario, router: str, seed: int, duration: float) -> Result:
    """One run of ``router`` in ``scenario`` for ``duration`` simulated seconds."""
    models = scenario.models()
    capacity = sum(m.slots / m.mean_service(MEAN_OUTPUT) for m in models)
    base = scenario.load * capacity
    spike = scenario.spike

    def rate(t: float) -> float:
        if spike is not None and spike[0] * duration <= t < spike[1] * duration:
            return spike[2] * capacity
        return base

    sim = Simulation(
        models, _router_factory(router), seed=seed, clients=scenario.clients, rate=rate, max_tokens=MAX_TOKENS,
        retries=scenario.retries, eject_after=scenario.eject_after, measure_from=scenario.measure_from * duration,
    )
    for fraction, change in scenario.changes:
        sim.at(fraction * duration, change, sim.models)
    return sim.run(duration)
