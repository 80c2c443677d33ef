"""A discrete-event simulation of client processes routing LLM calls over a set of endpoints.

It drives the real router plugins (``aurelis_plugins.routers``) through their two hooks with a fake clock,
so months of traffic patterns run in seconds and every run is reproducible from its seed. See
:mod:`.engine` for the model and :mod:`.scenarios` for the scenarios of the routing benchmark.
"""

from .engine import Clock, EndpointModel, Result, Simulation
from .scenarios import CLIENTS, ROUTERS, SCENARIOS, Scenario, bad_capacity_share, recovery_time, run_scenario

__all__ = [
    "CLIENTS", "ROUTERS", "SCENARIOS", "Clock", "EndpointModel", "Result", "Scenario", "Simulation",
    "bad_capacity_share", "recovery_time", "run_scenario",
]
