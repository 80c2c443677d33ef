"""A simulated OpenAI-compatible upstream on 127.0.0.1, shared by the session and reset per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from aurelis_core.testing import SimulatedServer, simulated_upstream


@pytest.fixture(scope="session")
def _upstream_session() -> Iterator[SimulatedServer]:
    with simulated_upstream() as up:
        yield up


@pytest.fixture
def upstream(_upstream_session: SimulatedServer) -> SimulatedServer:
    _upstream_session.reset()
    return _upstream_session


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
