"""The simulated upstream comes from the ``aurelis_upstream`` fixture that installing Aurelis provides."""

from __future__ import annotations

import pytest

from aurelis_core.testing import SimulatedServer


@pytest.fixture
def upstream(aurelis_upstream: SimulatedServer) -> SimulatedServer:
    """The simulated upstream of Aurelis's own pytest plugin (``aurelis_upstream``), reset for this test."""
    return aurelis_upstream


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
