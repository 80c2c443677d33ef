"""The ``prometheus`` plugin's LLM-traffic metrics against simulated upstreams, through instrumented clients:
tokens, cost, time to first token, attempts per endpoint, failovers, cache sizes per tier, buckets, and no
``_created`` series."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import prometheus_client
import pytest

from aurelis_core import ConfigError, Pipeline
from aurelis_core.testing import SimulatedServer
from aurelis_plugins.prometheus import multiprocess_exposition
from tests.test_prometheus import chat, scrape, value


def stream_chat(client: httpx.Client, upstream: SimulatedServer, prompt: str) -> tuple[str, dict[str, int]]:
    """A streamed chat completion read to its end: its cache status, and the usage of its last event."""
    body = {"model": "sim-chat", "messages": [{"role": "user", "content": prompt}], "stream": True,
            "stream_options": {"include_usage": True}}
    with client.stream("POST", upstream.base_url + "/chat/completions", json=body) as response:
        text = response.read().decode()
        status = response.headers.get("x-aurelis-cache", "")
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    return status, events[-1]["usage"]


PRICING = {"sim-*": {"input": 3.0, "output": 15.0}}


def usd(usage: dict[str, int]) -> float:
    return (usage["prompt_tokens"] * 3.0 + usage["completion_tokens"] * 15.0) / 1e6


def test_streams_count_tokens_cost_and_time_to_first_token(upstream: SimulatedServer) -> None:
    upstream.behavior.latency = 0.05  # the first chunk comes after this: the time to first token is at least it
    pipeline = Pipeline({"plugins": ["normalize", "memory", "prometheus"], "pricing": PRICING})
    metrics = pipeline.plugin("prometheus")
    with pipeline.instrument(httpx.Client()) as client:
        _, first = stream_chat(client, upstream, "tell me a story")
        _, second = stream_chat(client, upstream, "another story")
        status, again = stream_chat(client, upstream, "tell me a story")
    assert status == "hit" and again == first  # the stored stream, replayed
    s = scrape(metrics.exposition())
    labels = {"model": "sim-chat", "endpoint": "127.0.0.1"}
    assert value(s, "aurelis_tokens_total", type="input", **labels) == first["prompt_tokens"] + second[
        "prompt_tokens"]
    assert value(s, "aurelis_tokens_total", type="output", **labels) == first["completion_tokens"] + second[
        "completion_tokens"]
    assert value(s, "aurelis_cost_usd_total", **labels) == pytest.approx(usd(first) + usd(second))
    assert value(s, "aurelis_cost_saved_usd_total", model="sim-chat") == pytest.approx(usd(first))
    assert value(s, "aurelis_tokens_saved_total", model="sim-chat") == first["total_tokens"]
    # Two streams came from upstream (the hit has no first token to wait for), each after the latency.
    assert value(s, "aurelis_time_to_first_token_seconds_count", **labels) == 2
    assert value(s, "aurelis_time_to_first_token_seconds_bucket", le="0.025", **labels) == 0
    assert value(s, "aurelis_time_to_first_token_seconds_sum", **labels) >= 0.1


def test_uncached_answers_count_their_tokens_too(upstream: SimulatedServer) -> None:
    # No cache stage: every answer passes through unbuffered, the plugin reads the usage at its end.
    pipeline = Pipeline({"plugins": ["prometheus"], "pricing": PRICING})
    metrics = pipeline.plugin("prometheus")
    with pipeline.instrument(httpx.Client()) as client:
        usage = chat(client, upstream, "hello there").json()["usage"]
        _, streamed = stream_chat(client, upstream, "a streamed one")
    s = scrape(metrics.exposition())
    labels = {"model": "sim-chat", "endpoint": "127.0.0.1"}
    assert value(s, "aurelis_tokens_total", type="input", **labels) == usage["prompt_tokens"] + streamed[
        "prompt_tokens"]
    assert value(s, "aurelis_tokens_total", type="output", **labels) == usage["completion_tokens"] + streamed[
        "completion_tokens"]
    assert value(s, "aurelis_cost_usd_total", **labels) == pytest.approx(usd(usage) + usd(streamed))
    assert value(s, "aurelis_time_to_first_token_seconds_count", **labels) == 1  # the stream only


def test_the_openai_sdk_streaming_is_counted(upstream: SimulatedServer) -> None:
    pipeline = Pipeline({"plugins": ["normalize", "memory", "prometheus"], "pricing": PRICING})
    metrics = pipeline.plugin("prometheus")
    with pipeline.instrument(httpx.Client()) as http:
        client = openai.OpenAI(base_url=upstream.base_url, api_key="k", http_client=http, max_retries=0)
        stream = client.chat.completions.create(
            model="sim-chat", messages=[{"role": "user", "content": "hi"}], stream=True,
            stream_options={"include_usage": True},
        )
        usage = [chunk.usage for chunk in stream if chunk.usage is not None][-1]
    s = scrape(metrics.exposition())
    labels = {"model": "sim-chat", "endpoint": "127.0.0.1"}
    assert value(s, "aurelis_tokens_total", type="input", **labels) == usage.prompt_tokens
    assert value(s, "aurelis_tokens_total", type="output", **labels) == usage.completion_tokens
    assert value(s, "aurelis_time_to_first_token_seconds_count", **labels) == 1


def test_without_pricing_no_cost_is_reported(upstream: SimulatedServer) -> None:
    pipeline = Pipeline({"plugins": ["normalize", "memory", "prometheus"], "pricing": {"gpt-4o": {
        "input": 2.5, "output": 10.0}}})
    with pipeline.instrument(httpx.Client()) as client:
        chat(client, upstream, "hello")
        chat(client, upstream, "hello")
    text = pipeline.plugin("prometheus").exposition().decode()
    s = scrape(text)
    assert value(s, "aurelis_tokens_total", model="sim-chat", endpoint="127.0.0.1", type="output") > 0
    assert not any(name in ("aurelis_cost_usd_total", "aurelis_cost_saved_usd_total") for name, _ in s)


@pytest.mark.anyio
async def test_attempts_per_endpoint_retries_and_failovers(upstream_factory: Any) -> None:
    first, second = upstream_factory(), upstream_factory()
    first.behavior.fail_next = 1
    pipeline = Pipeline({
        "plugins": ["round_robin", "retry", "prometheus"], "retry": {"base": 0.0, "cap": 0.0},
        "round_robin": {"seed": 1},  # its first pick is the first endpoint
        "endpoints": [{"url": first.base_url, "name": "first"}, {"url": second.base_url, "name": "second"}],
    })
    metrics = pipeline.plugin("prometheus")
    async with pipeline.instrument(httpx.AsyncClient()) as client:
        response = await client.post(
            first.base_url + "/chat/completions", json={"model": "sim-chat", "messages": [{"role": "user",
                                                                                           "content": "hi"}]}
        )
    assert response.status_code == 200
    s = scrape(metrics.exposition())
    assert value(s, "aurelis_upstream_attempt_duration_seconds_count", endpoint="first") == 1
    assert value(s, "aurelis_upstream_attempt_duration_seconds_count", endpoint="second") == 1
    assert value(s, "aurelis_upstream_attempts_total", endpoint="first", outcome="http_500") == 1
    assert value(s, "aurelis_failovers_total", endpoint="first") == 1
    assert value(s, "aurelis_failovers_total", endpoint="second") == 0
    assert value(s, "aurelis_retries_total", model="sim-chat") == 1
    usage = response.json()["usage"]
    assert value(s, "aurelis_tokens_total", model="sim-chat", endpoint="second", type="output") == usage[
        "completion_tokens"]
    assert value(s, "aurelis_tokens_total", model="sim-chat", endpoint="first", type="output") == 0


def written_behind(pipeline: Pipeline, entries: int) -> None:
    """Wait until the sqlite tier's writer thread stored ``entries`` (it writes behind the requests)."""
    deadline = time.monotonic() + 30
    while pipeline.plugin("sqlite").stats()["entries"] < entries:
        assert time.monotonic() < deadline, "the sqlite tier never stored the entries"
        time.sleep(0.01)


def test_cache_entries_and_bytes_per_tier(upstream: SimulatedServer, tmp_path: Path) -> None:
    pipeline = Pipeline({
        "plugins": ["normalize", "memory", "sqlite", "prometheus"],
        "sqlite": {"path": str(tmp_path / "cache.db")},
        "prometheus": {"tier_stats_interval": 3600},
    })
    metrics = pipeline.plugin("prometheus")
    with pipeline.instrument(httpx.Client()) as client:
        for prompt in ("one", "two", "three"):
            chat(client, upstream, prompt)
        written_behind(pipeline, 3)
        s = scrape(metrics.exposition())
        memory = pipeline.plugin("memory")
        assert value(s, "aurelis_cache_entries", tier="memory") == len(memory) == 3
        assert value(s, "aurelis_cache_size_bytes", tier="memory") == memory.currsize > 0
        assert value(s, "aurelis_cache_budget_bytes", tier="memory") == memory.budget
        stored = pipeline.plugin("sqlite").stats()
        assert value(s, "aurelis_cache_entries", tier="sqlite") == stored["entries"] == 3
        assert value(s, "aurelis_cache_size_bytes", tier="sqlite") == stored["bytes"] > 0
        chat(client, upstream, "four")
        written_behind(pipeline, 4)
        s = scrape(metrics.exposition())
    assert value(s, "aurelis_cache_entries", tier="memory") == 4  # read on every scrape
    assert value(s, "aurelis_cache_entries", tier="sqlite") == 3  # counted once per tier_stats_interval


def test_shared_tier_counts_can_be_turned_off(upstream: SimulatedServer, tmp_path: Path) -> None:
    pipeline = Pipeline({
        "plugins": ["normalize", "sqlite", "prometheus"], "sqlite": {"path": str(tmp_path / "cache.db")},
        "prometheus": {"tier_stats_interval": 0},
    })
    with pipeline.instrument(httpx.Client()) as client:
        chat(client, upstream, "one")
        s = scrape(pipeline.plugin("prometheus").exposition())
    assert not any(dict(labels).get("tier") == "sqlite" for name, labels in s if name.startswith("aurelis_cache_"))


def test_buckets_span_hits_to_long_generations_and_are_configurable(upstream: SimulatedServer) -> None:
    default = Pipeline({"plugins": ["normalize", "memory", "prometheus"]})
    custom = Pipeline({"plugins": ["normalize", "memory", "prometheus"],
                       "prometheus": {"response_time_buckets": [0.001, 1, 600]}})
    for pipeline in (default, custom):
        with pipeline.instrument(httpx.Client()) as client:
            chat(client, upstream, "hello")
            chat(client, upstream, "hello")

    def bounds(pipeline: Pipeline, name: str) -> list[float]:
        s = scrape(pipeline.plugin("prometheus").exposition())
        return sorted(float(dict(labels)["le"]) for n, labels in s
                      if n == name and dict(labels).get("cached") == "true")
    spectrum = bounds(default, "aurelis_response_time_seconds_bucket")
    assert spectrum[0] <= 0.0001 and 300 <= spectrum[-2] < spectrum[-1] == float("inf")
    assert len(spectrum) >= 20
    assert bounds(custom, "aurelis_response_time_seconds_bucket") == [0.001, 1.0, 600.0, float("inf")]


@pytest.mark.parametrize(("buckets", "message"), [
    ([], r"response_time_buckets: expected increasing positive numbers"),
    ([0.5, 0.5], r"response_time_buckets\[1\]: expected increasing"),
    ([0, 1], r"response_time_buckets\[0\]: expected increasing"),
    ([1, float("inf")], r"response_time_buckets\[1\]: expected a finite number"),
    (["fast"], r"response_time_buckets\[0\]: expected a number"),
])
def test_bad_buckets_fail_clearly(buckets: list[Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Pipeline({"plugins": ["prometheus"], "prometheus": {"response_time_buckets": buckets}})


def test_no_created_series_and_the_process_wide_switch_untouched(upstream: SimulatedServer) -> None:
    pipeline = Pipeline({"plugins": ["normalize", "memory", "prometheus"]})
    with pipeline.instrument(httpx.Client()) as client:
        chat(client, upstream, "hello")
        chat(client, upstream, "hello")
    text = pipeline.plugin("prometheus").exposition().decode()
    assert "aurelis_requests_total" in text and "aurelis_response_time_seconds_bucket" in text
    assert "_created" not in text
    # The application's own metrics keep theirs: the plugin did not turn prometheus-client's switch.
    registry = prometheus_client.CollectorRegistry()
    prometheus_client.Counter("app_jobs", "An application's counter.", registry=registry).inc()
    assert "app_jobs_created" in prometheus_client.generate_latest(registry).decode()
    # A filtered scrape (?name[]=) sees the same series, still without _created.
    filtered = prometheus_client.generate_latest(
        pipeline.plugin("prometheus").registry.restricted_registry(["aurelis_requests_total",
                                                                    "aurelis_requests_created"])
    ).decode()
    assert "aurelis_requests_total{" in filtered and "_created" not in filtered


# --- several worker processes, one view ----------------------------------------------------------------------

WORKER = """
import json, sys
import httpx
from aurelis_core import Pipeline

base, name, count, distinct = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
pipeline = Pipeline({"plugins": ["normalize", "memory", "prometheus"], "pricing": {"sim-*": {"input": 3.0,
                                                                                            "output": 15.0}}})
output = 0
with pipeline.instrument(httpx.Client()) as client:
    for i in range(count):
        answer = client.post(base + "/chat/completions", json={"model": "sim-chat", "messages": [
            {"role": "user", "content": f"{name} asks question {i % distinct}"}]})
        if answer.headers["x-aurelis-cache"] == "miss":
            output += answer.json()["usage"]["completion_tokens"]
    if count == 0:  # the scraper: what its plugin serves
        sys.stdout.write(pipeline.plugin("prometheus").exposition().decode())
    else:
        sys.stdout.write(json.dumps({"output_tokens": output}))
"""


def run_workers(upstream: SimulatedServer, directory: Path, *plans: tuple[str, int, int]) -> list[str]:
    """Run one process per plan (name, requests, distinct prompts) at once, in multiprocess mode; their stdout."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    workers = [
        subprocess.Popen([sys.executable, "-c", WORKER, upstream.base_url, name, str(count), str(distinct)],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, count, distinct in plans
    ]
    outputs = []
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
        outputs.append(out)
    return outputs


def test_worker_processes_are_summed_into_one_view(upstream: SimulatedServer, tmp_path: Path) -> None:
    # Two workers serve requests at the same time (5 and 4 misses, 3 and 4 hits), each through its own
    # pipeline; a third process with no traffic of its own serves the metrics, as any worker would.
    first, second = run_workers(upstream, tmp_path, ("first", 8, 5), ("second", 8, 4))
    output_tokens = json.loads(first)["output_tokens"] + json.loads(second)["output_tokens"]
    (served,) = run_workers(upstream, tmp_path, ("scraper", 0, 1))
    assert "_created" not in served
    for text in (served, multiprocess_exposition(tmp_path).decode()):
        s = scrape(text)
        chat_labels = {"model": "sim-chat", "task_type": "chat"}
        assert value(s, "aurelis_requests_total", cache="miss", **chat_labels) == 9
        assert value(s, "aurelis_requests_total", cache="hit", **chat_labels) == 7
        assert value(s, "aurelis_cache_hits_total", cache_level="memory", model="sim-chat") == 7
        assert value(s, "aurelis_response_time_seconds_count", cached="false", **chat_labels) == 9
        assert value(s, "aurelis_response_time_seconds_bucket", le="+Inf", cached="true", **chat_labels) == 7
        labels = {"model": "sim-chat", "endpoint": "127.0.0.1"}
        assert value(s, "aurelis_tokens_total", type="output", **labels) == output_tokens
        assert value(s, "aurelis_upstream_attempts_total", endpoint="127.0.0.1", outcome="ok") == 9
        assert value(s, "aurelis_upstream_attempt_duration_seconds_count", endpoint="127.0.0.1") == 9
        # A live gauge is summed over the workers (multiprocess_mode="livesum"), not one series per pid.
        assert [dict(key) for name, key in s if name == "aurelis_upstream_in_flight"] == [{"endpoint": "127.0.0.1"}]
        assert value(s, "aurelis_upstream_in_flight", endpoint="127.0.0.1") == 0
    # The scrape-time figures are the serving process's own (its memory tier holds nothing).
    assert value(scrape(served), "aurelis_cache_entries", tier="memory") == 0


def test_breaker_state_per_endpoint(upstream_factory: Any) -> None:
    # The real breaker opens the circuit of an endpoint after two failures in a row; the gauge follows.
    failing, healthy = upstream_factory(), upstream_factory()
    failing.behavior.fail_next = 2
    pipeline = Pipeline({
        "plugins": ["breaker", "round_robin", "prometheus"], "breaker": {"consecutive_failures": 2},
        "endpoints": [{"url": failing.base_url, "name": "failing"}, {"url": healthy.base_url, "name": "healthy"}],
    })
    with pipeline.instrument(httpx.Client()) as client:
        for _ in range(4):  # round robin: two to each endpoint
            chat(client, failing, "hi")
        s = scrape(pipeline.plugin("prometheus").exposition())
    state = {dict(labels)["state"]: v for (name, labels), v in s.items()
             if name == "aurelis_endpoint_circuit_state" and dict(labels)["endpoint"] == "failing"}
    assert state == {"open": 1, "closed": 0, "half_open": 0}
    assert value(s, "aurelis_endpoint_circuit_state", endpoint="healthy", state="closed") == 1
    assert value(s, "aurelis_endpoint_available", endpoint="failing") == 0


@pytest.mark.anyio
@pytest.mark.parametrize("plugins", [["normalize", "memory", "prometheus"], ["prometheus"]])
async def test_async_streams_are_counted_too(upstream: SimulatedServer, plugins: list[str]) -> None:
    # Through the shared-stream path (a cacheable stream) and the pass-through one.
    upstream.behavior.latency = 0.05
    pipeline = Pipeline({"plugins": plugins, "pricing": PRICING})
    body = {"model": "sim-chat", "messages": [{"role": "user", "content": "an async story"}], "stream": True,
            "stream_options": {"include_usage": True}}
    async with pipeline.instrument(httpx.AsyncClient()) as client:
        async with client.stream("POST", upstream.base_url + "/chat/completions", json=body) as response:
            text = (await response.aread()).decode()
    usage = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")][-1]["usage"]
    s = scrape(pipeline.plugin("prometheus").exposition())
    labels = {"model": "sim-chat", "endpoint": "127.0.0.1"}
    assert value(s, "aurelis_tokens_total", type="output", **labels) == usage["completion_tokens"]
    assert value(s, "aurelis_cost_usd_total", **labels) == pytest.approx(usd(usage))
    assert value(s, "aurelis_time_to_first_token_seconds_count", **labels) == 1
    assert value(s, "aurelis_time_to_first_token_seconds_sum", **labels) >= 0.05


def test_a_shared_tier_that_cannot_count_leaves_its_figures_out(upstream: SimulatedServer) -> None:
    with socket.socket() as sock:  # a port nobody listens on: the tier's Redis refuses every connection
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    pipeline = Pipeline({"plugins": ["normalize", "redis", "prometheus"],
                         "redis": {"url": f"redis://127.0.0.1:{dead}/0"}})
    with pipeline.instrument(httpx.Client()) as client:
        assert chat(client, upstream, "hello").status_code == 200  # the request is not failed by the tier
        s = scrape(pipeline.plugin("prometheus").exposition())
    assert not any(dict(labels).get("tier") == "redis" for name, labels in s if name.startswith("aurelis_cache_e"))
    assert value(s, "aurelis_cache_tier_errors_total", tier="redis", operation="stats") == 1
