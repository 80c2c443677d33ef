"""The simulated upstreams come from Aurelis's testing helpers: ``upstream`` from the ``aurelis_upstream`` fixture
that installing Aurelis provides, ``upstream_factory`` for more independent ones."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from aurelis_core.testing import SimulatedServer, simulated_upstream


@pytest.fixture
def upstream(aurelis_upstream: SimulatedServer) -> SimulatedServer:
    """The simulated upstream of Aurelis's own pytest plugin (``aurelis_upstream``), reset for this test."""
    return aurelis_upstream


@pytest.fixture
def upstream_factory() -> Iterator[Callable[..., SimulatedServer]]:
    """``upstream_factory(**behavior)`` starts another simulated upstream, stopped after the test."""
    with ExitStack() as stack:

        def start(**behavior: Any) -> SimulatedServer:
            return stack.enter_context(simulated_upstream(**behavior))

        yield start


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
