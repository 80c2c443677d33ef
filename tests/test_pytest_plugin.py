"""The pytest plugin that ships with Aurelis (entry point pytest11 ``aurelis``), used as a user would."""

from __future__ import annotations

import httpx
import pytest

from aurelis_core import Pipeline
from aurelis_core.testing import SimulatedServer

CHAT = {"model": "sim-chat", "messages": [{"role": "user", "content": "hello"}]}


def test_plugin_is_registered_through_its_entry_point(pytestconfig: pytest.Config) -> None:
    plugin = pytestconfig.pluginmanager.get_plugin("aurelis")
    assert plugin is not None and plugin.__name__ == "aurelis_core.testing.pytest_plugin"


def test_pipeline_fixture_is_routed_to_the_simulated_upstream(
    aurelis_pipeline: Pipeline, aurelis_upstream: SimulatedServer
) -> None:
    assert aurelis_upstream.count() == 0  # reset for this test
    # The client addresses some other host: the pipeline's only endpoint is the simulator.
    with aurelis_pipeline.instrument(httpx.Client(base_url="http://provider.invalid/v1")) as client:
        first = client.post("/chat/completions", json=CHAT)
        second = client.post("/chat/completions", json=CHAT)
    assert first.headers["x-aurelis-cache"] == "miss" and second.headers["x-aurelis-cache"] == "hit"
    assert aurelis_upstream.count("/chat/completions") == 1


@pytest.mark.aurelis_config({"plugins": []})
def test_marker_sets_the_config(aurelis_pipeline: Pipeline, aurelis_upstream: SimulatedServer) -> None:
    assert aurelis_pipeline.config.plugins == ()
    with aurelis_pipeline.instrument(httpx.Client(base_url="http://provider.invalid/v1")) as client:
        client.post("/chat/completions", json=CHAT)
        client.post("/chat/completions", json=CHAT)
    assert aurelis_upstream.count("/chat/completions") == 2  # no cache tier: both went upstream
