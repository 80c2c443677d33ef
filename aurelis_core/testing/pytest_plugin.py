"""pytest fixtures for testing code that runs on Aurelis (installed as the ``pytest11`` plugin ``aurelis``).

``aurelis_upstream``
    A simulated OpenAI-compatible upstream on 127.0.0.1 (:class:`aurelis_core.testing.SimulatedServer`),
    started once per session and reset before each test (records, counters and knobs). Point your client at
    ``aurelis_upstream.base_url``; shape its behaviour with ``aurelis_upstream.behavior`` (latency,
    failure_rate, fail_next, rpm, truncate_stream_after...).
``aurelis_pipeline``
    A :class:`aurelis_core.Pipeline` whose endpoint is ``aurelis_upstream``, closed after the test. The config
    is ``{"plugins": ["normalize", "memory"]}`` unless the test says otherwise with
    ``@pytest.mark.aurelis_config({...})`` (a dict, or a path to a TOML file); the endpoints are always
    replaced by the simulated upstream, so a test can never reach a real provider.

::

    def test_second_call_is_cached(aurelis_pipeline, aurelis_upstream):
        client = aurelis_pipeline.instrument(httpx.Client(base_url=aurelis_upstream.base_url))
        ...
        assert aurelis_upstream.count("/chat/completions") == 1

The simulator needs the ``simulate`` extra (uvicorn); it is imported only when a fixture is used, so having
this plugin installed costs test suites that do not use it nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from aurelis_core import Pipeline
    from aurelis_core.testing import SimulatedServer

DEFAULT_CONFIG: dict[str, Any] = {"plugins": ["normalize", "memory"]}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "aurelis_config(config): the config (dict or TOML path) of the aurelis_pipeline fixture"
    )


@pytest.fixture(scope="session")
def _aurelis_upstream_server() -> Iterator[SimulatedServer]:
    from aurelis_core.testing import simulated_upstream

    try:
        import uvicorn  # noqa: F401  (only asked whether it is there: the server imports it itself)
    except ImportError:
        pytest.fail(
            "the aurelis_upstream and aurelis_pipeline fixtures need uvicorn: pip install 'aurelis[simulate]'",
            pytrace=False,
        )
    with simulated_upstream() as server:
        yield server


@pytest.fixture
def aurelis_upstream(_aurelis_upstream_server: SimulatedServer) -> SimulatedServer:
    """The simulated upstream, reset for this test."""
    _aurelis_upstream_server.reset()
    return _aurelis_upstream_server


@pytest.fixture
def aurelis_pipeline(request: pytest.FixtureRequest, aurelis_upstream: SimulatedServer) -> Iterator[Pipeline]:
    """A pipeline routed to ``aurelis_upstream`` (config from ``@pytest.mark.aurelis_config``)."""
    import attrs

    from aurelis_core import Endpoint, Pipeline, load_config

    marker = request.node.get_closest_marker("aurelis_config")
    config = load_config(marker.args[0] if marker is not None else DEFAULT_CONFIG)
    config = attrs.evolve(config, endpoints=(Endpoint(url=aurelis_upstream.base_url, name="simulated"),))
    pipeline = Pipeline(config)
    try:
        yield pipeline
    finally:
        pipeline.close()
