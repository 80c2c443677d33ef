"""Test and benchmark helpers: a simulated OpenAI-compatible upstream and a loopback server.

`serve` and `simulated_upstream` need the ``simulate`` extra (uvicorn); the simulator app
itself has no dependencies beyond attrs.

Nothing is imported until a name is first used (module ``__getattr__``): this package
holds the ``pytest11`` plugin that every pytest run in an environment with Aurelis
loads, so importing it must cost nothing and need no optional dependency.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aurelis_core.testing.server import RunningServer, SimulatedServer, serve, simulated_upstream
    from aurelis_core.testing.simulator import (
        ASGIApp,
        Behavior,
        RecordedRequest,
        SimulatedUpstream,
        estimate_tokens,
    )

#: Public name -> the submodule that defines it.
_EXPORTS = {
    "ASGIApp": "simulator",
    "Behavior": "simulator",
    "RecordedRequest": "simulator",
    "SimulatedUpstream": "simulator",
    "estimate_tokens": "simulator",
    "RunningServer": "server",
    "SimulatedServer": "server",
    "serve": "server",
    "simulated_upstream": "server",
}

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


def __getattr__(name: str) -> Any:
    submodule = _EXPORTS.get(name)
    if submodule is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{submodule}"), name)
    globals()[name] = value  # found directly next time
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
