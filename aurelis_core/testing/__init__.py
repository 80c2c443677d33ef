"""Test and benchmark helpers: a simulated OpenAI-compatible upstream and a loopback server.

Requires the ``simulate`` extra (uvicorn) for `serve` / `simulated_upstream`; the
simulator app itself has no dependencies beyond attrs.
"""

from aurelis_core.testing.server import RunningServer, SimulatedServer, serve, simulated_upstream
from aurelis_core.testing.simulator import (
    ASGIApp,
    Behavior,
    RecordedRequest,
    SimulatedUpstream,
    estimate_tokens,
)

__all__ = [
    "ASGIApp",
    "Behavior",
    "RecordedRequest",
    "RunningServer",
    "SimulatedServer",
    "SimulatedUpstream",
    "estimate_tokens",
    "serve",
    "simulated_upstream",
]
