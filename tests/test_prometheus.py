"""The ``prometheus`` plugin against the simulated upstream: values after a known sequence, labels, exposition."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aurelis_core import Attempt, ConfigError, Pipeline, RequestContext, hookimpl
from aurelis_core.testing import SimulatedServer


def scrape(text: str | bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as {(name, sorted labels): value}."""
    if isinstance(text, bytes):
        text = text.decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def chat(client: httpx.Client, upstream: SimulatedServer, prompt: str, model: str = "sim-chat") -> httpx.Response:
    return client.post(
        upstream.base_url + "/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": prompt}]},
        headers={"authorization": "Bearer k"},
    )


def test_values_after_hits_misses_and_errors(upstream: SimulatedServer) -> None:
    pipeline = Pipeline(
        {"plugins": ["normalize", "memory", "prometheus"],
         "pricing": {"sim-*": {"input": 2_000_000, "output": 2_000_000}}}
    )
    metrics = pipeline.plugin("prometheus")
    with pipeline.instrument(httpx.Client()) as client:
        first = chat(client, upstream, "hello there")
        assert chat(client, upstream, "hello there").headers["x-aurelis-cache"] == "hit"
        chat(client, upstream, "something else")
        upstream.behavior.fail_next = 1
        assert chat(client, upstream, "a failing one").status_code == 500
    saved = first.json()["usage"]["total_tokens"]
    s = scrape(metrics.exposition())
    chat_labels = {"model": "sim-chat", "task_type": "chat"}
    assert value(s, "aurelis_requests_total", cache="miss", **chat_labels) == 3
    assert value(s, "aurelis_requests_total", cache="hit", **chat_labels) == 1
    assert value(s, "aurelis_cache_hits_total", cache_level="memory", model="sim-chat") == 1
    assert value(s, "aurelis_cache_misses_total", model="sim-chat") == 3
    assert value(s, "aurelis_errors_total", type="http_500", model="sim-chat") == 1
    assert value(s, "aurelis_response_time_seconds_count", cached="false", **chat_labels) == 3
    assert value(s, "aurelis_response_time_seconds_count", cached="true", **chat_labels) == 1
    assert value(s, "aurelis_response_time_seconds_bucket", cached="true", le="10.0", **chat_labels) == 1
    assert value(s, "aurelis_tokens_saved_total", model="sim-chat") == saved
    assert value(s, "aurelis_cost_saved_usd_total", model="sim-chat") == pytest.approx(saved * 2.0)
    assert value(s, "aurelis_pipeline_overhead_seconds_count", cached="true") == 1
    host = "127.0.0.1"
    assert value(s, "aurelis_upstream_attempts_total", endpoint=host, outcome="ok") == 2
    assert value(s, "aurelis_upstream_attempts_total", endpoint=host, outcome="http_500") == 1
    assert value(s, "aurelis_upstream_in_flight", endpoint=host) == 0
    assert value(s, "aurelis_resource_usage", metric="hit_rate") == pytest.approx(0.25)
    assert value(s, "aurelis_resource_usage", metric="memory_cache_entries") == 2
    assert value(s, "aurelis_retries_total", model="sim-chat") == 0


def test_labels_stay_low_cardinality(upstream: SimulatedServer) -> None:
    # No normalize stage: the model comes from the raw body, and only the first two models get a label value.
    pipeline = Pipeline({"plugins": ["prometheus"], "prometheus": {"max_label_values": 2}})
    metrics = pipeline.plugin("prometheus")
    prompts = [f"secret prompt number {i}" for i in range(4)]
    with pipeline.instrument(httpx.Client()) as client:
        for i, prompt in enumerate(prompts):
            chat(client, upstream, prompt, model=f"model-{i}")
        client.post(upstream.base_url + "/embeddings", json={"model": "model-0", "input": "x"})
        client.get(upstream.base_url + "/models")
    text = metrics.exposition().decode()
    s = scrape(text)
    models = {dict(labels).get("model") for (name, labels) in s if name == "aurelis_requests_total"}
    assert models == {"model-0", "model-1", "other", "unknown"}
    tasks = {dict(labels)["task_type"] for (name, labels) in s if name == "aurelis_requests_total"}
    assert tasks == {"chat", "embedding", "other"}
    assert value(s, "aurelis_requests_total", model="other", task_type="chat", cache="bypass") == 2
    assert value(s, "aurelis_requests_total", model="model-0", task_type="embedding", cache="bypass") == 1
    for prompt in prompts:
        assert prompt not in text
    assert "Bearer" not in text


class RetryOnce:
    """A minimal retry stage for the test: retry a 5xx once, at once."""

    name = "retry_once"

    @hookimpl
    def aurelis_retry(self, ctx: RequestContext, attempt: Attempt) -> float | None:
        return 0.0 if len(ctx.attempts) == 1 else None


@pytest.mark.anyio
async def test_retries_and_async_client(upstream: SimulatedServer) -> None:
    pipeline = Pipeline({"plugins": ["prometheus"]}, plugins=[RetryOnce()])
    metrics = pipeline.plugin("prometheus")
    upstream.behavior.fail_next = 1
    async with pipeline.instrument(httpx.AsyncClient()) as client:
        response = await client.post(
            upstream.base_url + "/chat/completions", json={"model": "sim-chat", "messages": [{"role": "user",
                                                                                             "content": "hi"}]}
        )
    assert response.status_code == 200
    s = scrape(metrics.exposition())
    assert value(s, "aurelis_retries_total", model="sim-chat") == 1
    assert value(s, "aurelis_upstream_attempts_total", endpoint="127.0.0.1", outcome="http_500") == 1
    assert value(s, "aurelis_upstream_attempts_total", endpoint="127.0.0.1", outcome="ok") == 1
    assert value(s, "aurelis_errors_total", type="http_500", model="sim-chat") == 0


def test_health_coalescing_and_http_server(upstream: SimulatedServer) -> None:
    pipeline = Pipeline(
        {"plugins": ["prometheus"], "prometheus": {"port": 0}, "endpoints": [{"url": upstream.base_url,
                                                                               "name": "primary"}]}
    )
    metrics = pipeline.plugin("prometheus")
    with pipeline.instrument(httpx.Client()) as client:
        chat(client, upstream, "hello")
        assert metrics.port is not None
        pipeline.health.set_circuit(pipeline.endpoints[0], "open")
        pipeline.health.block(pipeline.endpoints[0], float("inf"), "open")
        pipeline.stats.counters["coalesced"] += 3
        scraped = httpx.get(f"http://127.0.0.1:{metrics.port}/metrics")
        assert scraped.status_code == 200
        s = scrape(scraped.text)
        assert value(s, "aurelis_endpoint_circuit_state", endpoint="primary", state="open") == 1
        assert value(s, "aurelis_endpoint_circuit_state", endpoint="primary", state="closed") == 0
        assert value(s, "aurelis_endpoint_available", endpoint="primary") == 0
        assert value(s, "aurelis_coalesced_requests_total") == 3
        assert value(s, "aurelis_upstream_attempts_total", endpoint="primary", outcome="ok") == 1
        assert value(s, "process_resident_memory_bytes") > 0
        port = metrics.port
    pipeline.close()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/metrics")  # closing the pipeline stopped its server


def test_wsgi_app_serves_the_same_registry() -> None:
    pipeline = Pipeline({"plugins": ["prometheus"]})
    app = pipeline.plugin("prometheus").wsgi_app()
    captured: list[str] = []
    body = b"".join(app({"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics", "QUERY_STRING": ""},
                        lambda status, headers: captured.append(status)))
    assert captured == ["200 OK"]
    assert b"aurelis_resource_usage" in body


def test_bad_options_fail_clearly() -> None:
    with pytest.raises(ConfigError, match="port"):
        Pipeline({"plugins": ["prometheus"], "prometheus": {"port": 70000}})
    with pytest.raises(ConfigError, match=r"\[prometheus\] response_time_buckets\[1\]: expected increasing"):
        Pipeline({"plugins": ["prometheus"], "prometheus": {"response_time_buckets": [1, 0.5]}})
    with pytest.raises(ConfigError, match="max_label_values"):
        Pipeline({"plugins": ["prometheus"], "prometheus": {"max_labels": 3}})


def test_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.delitem(sys.modules, "aurelis_plugins.prometheus", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'aurelis\[prometheus\]'"):
        importlib.import_module("aurelis_plugins.prometheus")


class OwnMemoryTier:
    """A third-party in-memory tier: not called ``memory``, found by what it can do (a ShrinkableTier)."""

    name = "own_memory"

    def __init__(self) -> None:
        self.entries: dict[str, Any] = {}
        self.budget = 1_000_000

    @property
    def currsize(self) -> int:
        return sum(len(entry.body) for entry in self.entries.values())

    def __len__(self) -> int:
        return len(self.entries)

    def shrink(self, fraction: float) -> int:
        return 0

    @hookimpl
    def aurelis_cache_get(self, ctx: RequestContext) -> Any:
        return self.entries.get(ctx.key)  # type: ignore[arg-type]

    @hookimpl
    def aurelis_cache_set(self, ctx: RequestContext, entry: Any, promote: bool) -> None:
        self.entries[ctx.key] = entry  # type: ignore[index]


def test_memory_figures_come_from_any_in_memory_tier(upstream: SimulatedServer) -> None:
    tier = OwnMemoryTier()
    pipeline = Pipeline({"plugins": ["normalize", "prometheus"]}, plugins=[tier])
    with pipeline.instrument(httpx.Client()) as client:
        chat(client, upstream, "one")
        chat(client, upstream, "two")
    samples = scrape(pipeline.plugin("prometheus").exposition())
    assert value(samples, "aurelis_resource_usage", metric="memory_cache_entries") == 2
    assert value(samples, "aurelis_resource_usage", metric="memory_cache_bytes") == tier.currsize > 0
    assert value(samples, "aurelis_resource_usage", metric="memory_cache_budget_bytes") == 1_000_000
