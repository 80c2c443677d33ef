"""The plugin, enabled by name through its entry point, against a simulated upstream on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from aurelis_plugin_template import RequestCounter

from aurelis_core import ConfigError, Pipeline
from aurelis_core.testing import SimulatedServer, simulated_upstream


@pytest.fixture(scope="module")
def upstream() -> Iterator[SimulatedServer]:
    with simulated_upstream() as up:
        yield up


def test_counts_by_outcome(upstream: SimulatedServer) -> None:
    pipeline = Pipeline({"plugins": ["normalize", "memory", "request_counter"], "request_counter": {"by_model": True}})
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    with pipeline.instrument(httpx.Client()) as client:
        client.post(upstream.base_url + "/chat/completions", json=body)
        client.post(upstream.base_url + "/chat/completions", json=body)
        upstream.behavior.update(fail_next=1)
        client.post(upstream.base_url + "/chat/completions", json={**body, "model": "n"})
    counter = pipeline.plugin("request_counter")
    assert isinstance(counter, RequestCounter)
    assert counter.counts == {"miss 200": 1, "hit 200": 1, "miss 500": 1, "model m": 2, "model n": 1}
    pipeline.close()


def test_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="did you mean 'by_model'"):
        Pipeline({"plugins": ["request_counter"], "request_counter": {"by_models": True}})
