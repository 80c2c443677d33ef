"""Model-aware routing, fallbacks and credentials from the environment, end to end.

Real simulated upstreams on 127.0.0.1, each standing for a deployment of some models, driven by the real openai
SDK (sync and async) through an instrumented client: what each upstream received is what the assertions read.
"""

from __future__ import annotations

import collections
import functools
import gzip
import inspect
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio.from_thread
import httpx2
import openai
import pytest

import aurelis_core
from aurelis_core import Attempt, ConfigError, Endpoint, ModelNotServed, Pipeline, RequestContext
from aurelis_core._env import expand_env
from aurelis_core._fallback import error_body, warrants_fallback
from aurelis_core._models import DEFAULT_CONTROLS
from aurelis_core.config import Config, load_config
from aurelis_core.health import EndpointHealth
from aurelis_core.plugin import AzureOpenAI, Dialect, Gemini, OpenAI
from aurelis_core.report import Report
from aurelis_core.testing import SimulatedServer
from aurelis_core.tools.cli import main
from aurelis_plugins.routers.ai_optimized import AIOptimized
from aurelis_plugins.routers.least_connections import LeastConnections
from aurelis_plugins.routers.load_based import LoadBased
from aurelis_plugins.routers.round_robin import RoundRobin
from aurelis_plugins.routers.weighted_response_time import WeightedResponseTime

#: Retries without waiting: a test measures what goes where, not how long it waits.
RETRY = {"max_attempts": 2, "base": 0.0, "cap": 0.0, "seed": 1}


def closed_port() -> int:
    """A port on 127.0.0.1 that nobody listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def messages(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def models_received(up: SimulatedServer) -> list[str]:
    return [r.json()["model"] for r in up.requests]


def config(big: SimulatedServer, mini: SimulatedServer, *plugins: str, router: str = "round_robin",
           **extra: Any) -> dict[str, Any]:
    """``big`` serves gpt-4.1 (by its deployment name ``deploy-41``), ``mini`` the small models; gpt-4.1 falls
    back to gpt-4.1-mini."""
    return {
        "plugins": ["normalize", "memory", "retry", router, *plugins],
        "endpoints": [
            {"url": big.base_url, "name": "big", "models": ["gpt-4.1"], "model_map": {"gpt-4.1": "deploy-41"}},
            {"url": mini.base_url, "name": "mini", "models": ["gpt-4.1-mini", "gpt-4o-*"]},
        ],
        "fallbacks": {"gpt-4.1": ["gpt-4.1-mini"]},
        "retry": RETRY,
        **extra,
    }


class Caller:
    """The openai SDK, sync or async, on an instrumented client; each call returns ``(headers, result)``."""

    def __init__(self, is_async: bool, cfg: dict[str, Any], base_url: str, portal: Any) -> None:
        self.is_async = is_async
        self.portal = portal
        http = aurelis_core.instrument(httpx2.AsyncClient() if is_async else httpx2.Client(), cfg)
        self.pipeline = aurelis_core.pipeline_of(http)
        self.http = http
        cls = openai.AsyncOpenAI if is_async else openai.OpenAI
        self.llm: Any = cls(base_url=base_url, api_key="sk-caller", http_client=http, max_retries=0)

    def chat(self, **kwargs: Any) -> tuple[Any, Any]:
        create = self.llm.chat.completions.with_raw_response.create
        if self.is_async:
            return self.portal.call(functools.partial(_achat, create, kwargs))  # type: ignore[no-any-return]
        raw = create(**kwargs)
        return raw.headers, raw.parse()

    def stream(self, **kwargs: Any) -> tuple[Any, str]:
        create = self.llm.chat.completions.with_raw_response.create
        if self.is_async:
            return self.portal.call(functools.partial(_astream, create, kwargs))  # type: ignore[no-any-return]
        raw = create(stream=True, **kwargs)
        return raw.headers, "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)

    def close(self) -> None:
        if self.is_async:
            self.portal.call(self.http.aclose)
        else:
            self.http.close()


async def _parsed(raw: Any) -> Any:
    parsed = raw.parse()
    return await parsed if inspect.isawaitable(parsed) else parsed


async def _achat(create: Any, kwargs: dict[str, Any]) -> tuple[Any, Any]:
    raw = await create(**kwargs)
    return raw.headers, await _parsed(raw)


async def _astream(create: Any, kwargs: dict[str, Any]) -> tuple[Any, str]:
    raw = await create(stream=True, **kwargs)
    return raw.headers, "".join([c.choices[0].delta.content or "" async for c in await _parsed(raw) if c.choices])


@pytest.fixture(params=[False, True], ids=["sync", "async"])
def caller(request: pytest.FixtureRequest) -> Iterator[Callable[..., Caller]]:
    with anyio.from_thread.start_blocking_portal() as portal:
        made: list[Caller] = []

        def make(cfg: dict[str, Any], base_url: str) -> Caller:
            made.append(Caller(request.param, cfg, base_url, portal))
            return made[-1]

        yield make
        for one in made:
            one.close()


# --- routing by model ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("router", ["round_robin", "least_connections", "weighted_response_time", "load_based",
                                    "ai_optimized"])
def test_each_router_sends_a_model_only_to_the_endpoints_serving_it(
    router: str, upstream_factory: Callable[..., SimulatedServer]
) -> None:
    big, mini, other = upstream_factory(), upstream_factory(), upstream_factory()
    cfg = config(big, mini, router=router)
    cfg["endpoints"].append({"url": other.base_url, "name": "other", "models": ["gpt-4o-*", "o3"]})
    with aurelis_core.instrument(httpx2.Client(), cfg) as http:
        llm = openai.OpenAI(base_url=big.base_url, api_key="sk", http_client=http, max_retries=0)
        for n in range(12):
            llm.chat.completions.create(model="gpt-4.1", messages=messages(f"big {n}"))  # type: ignore[arg-type]
            llm.chat.completions.create(model="gpt-4o-mini", messages=messages(f"small {n}"))  # type: ignore[arg-type]
            llm.chat.completions.create(model="o3", messages=messages(f"o3 {n}"))  # type: ignore[arg-type]
    # gpt-4.1 only where it is served, under the endpoint's own name for it; the others as asked.
    assert models_received(big) == ["deploy-41"] * 12
    assert set(models_received(mini)) == {"gpt-4o-mini"}
    assert set(models_received(other)) <= {"gpt-4o-mini", "o3"}
    assert models_received(other).count("o3") == 12
    assert len(models_received(mini)) + models_received(other).count("gpt-4o-mini") == 12


def test_the_model_is_rewritten_on_the_wire_and_named_in_the_answer(
    caller: Callable[..., Caller], upstream_factory: Callable[..., SimulatedServer]
) -> None:
    big, mini = upstream_factory(), upstream_factory()
    llm = caller(config(big, mini), big.base_url)
    headers, answer = llm.chat(model="gpt-4.1", messages=messages("hello"), temperature=0.25)
    sent = big.requests[0]
    assert sent.json() == {"model": "deploy-41", "messages": messages("hello"), "temperature": 0.25}
    assert int(sent.header("content-length") or 0) == len(sent.body)
    assert answer.model == "deploy-41"  # the simulator echoes what it was asked for
    assert headers["x-aurelis-model"] == "gpt-4.1"  # the caller's name for the model that answered
    headers, _ = llm.chat(model="gpt-4o-mini", messages=messages("hello"), temperature=0.25)
    assert models_received(mini) == ["gpt-4o-mini"] and headers["x-aurelis-model"] == "gpt-4o-mini"
    # Only the model's value changed on the wire: every other byte is the caller's.
    assert sent.body == mini.requests[0].body.replace(b'"gpt-4o-mini"', b'"deploy-41"')


def test_a_model_no_endpoint_serves_fails_before_anything_is_sent(
    caller: Callable[..., Caller], upstream_factory: Callable[..., SimulatedServer]
) -> None:
    big, mini = upstream_factory(), upstream_factory()
    llm = caller(config(big, mini), big.base_url)
    with pytest.raises(ModelNotServed, match=r"no endpoint serves the model 'claude-x'; the endpoints serve: "
                                             r"gpt-4\.1, gpt-4\.1-mini, gpt-4o-\*"):
        llm.chat(model="claude-x", messages=messages("hello"))
    assert big.count() == mini.count() == 0


def test_a_request_without_a_model_goes_to_any_endpoint(upstream_factory: Callable[..., SimulatedServer]) -> None:
    big, mini = upstream_factory(), upstream_factory()
    with aurelis_core.instrument(httpx2.Client(), config(big, mini)) as http:
        llm = openai.OpenAI(base_url=big.base_url, api_key="sk", http_client=http, max_retries=0)
        for _ in range(4):
            assert llm.models.list().data
    assert big.count("/models") == mini.count("/models") == 2


def test_azure_deployment_paths_are_rewritten(upstream_factory: Callable[..., SimulatedServer]) -> None:
    azure = upstream_factory()
    cfg = {
        "plugins": ["round_robin"],
        "endpoints": [{"url": f"{azure.url}/openai", "name": "azure", "models": ["gpt-4.1"],
                       "model_map": {"gpt-4.1": "my-deployment"}}],
    }
    with aurelis_core.instrument(httpx2.Client(), cfg) as http:
        llm = openai.AzureOpenAI(azure_endpoint=azure.url, api_version="2024-10-21", api_key="azure-key",
                                 http_client=http, max_retries=0)
        raw = llm.chat.completions.with_raw_response.create(model="gpt-4.1", messages=messages("hi"))  # type: ignore[arg-type]
    sent = azure.requests[0]
    assert sent.path == "/openai/deployments/my-deployment/chat/completions"
    assert sent.query_string == b"api-version=2024-10-21"
    assert sent.json()["model"] == "my-deployment"
    assert raw.headers["x-aurelis-model"] == "gpt-4.1"


def test_the_dialects_find_the_model_in_azure_deployment_and_gemini_paths() -> None:
    def named(dialect: Dialect, path: str) -> str | None:
        span = dialect.model_span(path)
        return None if span is None else path[span[0] : span[1]]

    azure, gemini, openai_ = AzureOpenAI(), Gemini(), OpenAI()
    assert named(azure, "/openai/deployments/gpt-4o/chat/completions") == "gpt-4o"
    assert named(azure, "/apim/openai/deployments/gpt-4o/chat/completions") == "gpt-4o"  # under a gateway
    assert named(azure, "/openai/v1/chat/completions") is None
    assert named(gemini, "/v1beta/models/gemini-2.0-flash:streamGenerateContent") == "gemini-2.0-flash"
    assert named(gemini, "/v1/models/gemini-2.0-flash:generateContent") == "gemini-2.0-flash"
    assert named(gemini, "/v1beta/tunedModels/my-tuned-7:generateContent") == "my-tuned-7"
    assert named(openai_, "/v1/chat/completions") is None and named(openai_, "/v1/models/gpt-4o") is None
    # model() reads the same place, then the body; unquoted.
    assert gemini.model("/v1beta/tunedModels/my%2Dtuned:generateContent", {}) == "my-tuned"
    assert azure.model("/openai/deployments/dep/chat/completions", {"model": "gpt-4o"}) == "dep"
    assert openai_.model("/v1/chat/completions", {"model": "gpt-4o"}) == "gpt-4o"


def test_a_model_map_rewrites_a_tuned_gemini_model_in_the_path(
    upstream_factory: Callable[..., SimulatedServer]
) -> None:
    up = upstream_factory()
    cfg = {"plugins": ["round_robin"], "endpoints": [
        {"url": up.url, "dialect": "gemini", "models": ["tuned-*"], "model_map": {"tuned-a": "tuned-b"}}]}
    with aurelis_core.instrument(httpx2.Client(), cfg) as http:
        response = http.post(up.url + "/v1beta/tunedModels/tuned-a:generateContent",
                             json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}]})
    assert response.status_code == 200 and response.headers["x-aurelis-model"] == "tuned-a"
    assert [r.path for r in up.requests] == ["/v1beta/tunedModels/tuned-b:generateContent"]


# --- fallbacks -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 500, 503, 529])
def test_a_model_whose_endpoints_all_fail_falls_back_and_the_original_key_is_hit_next(
    status: int, caller: Callable[..., Caller], upstream_factory: Callable[..., SimulatedServer]
) -> None:
    big, mini = upstream_factory(status_override=status), upstream_factory()
    llm = caller(config(big, mini), big.base_url)
    headers, answer = llm.chat(model="gpt-4.1", messages=messages("fall back please"))
    assert big.count() == 2  # the model's retries first (max_attempts = 2)
    assert models_received(mini) == ["gpt-4.1-mini"]  # then the next model, asked for by its name
    assert answer.model == "gpt-4.1-mini" and answer.choices[0].message.content == "echo: fall back please"
    assert headers["x-aurelis-model"] == "gpt-4.1-mini" and headers["x-aurelis-cache"] == "miss"
    counters = llm.pipeline.stats.counters
    assert counters["fallbacks"] == 1 and counters["fallback:gpt-4.1->gpt-4.1-mini"] == 1
    # The cache key is the caller's request's: the same call is a hit, and still says which model answered.
    headers, again = llm.chat(model="gpt-4.1", messages=messages("fall back please"))
    assert headers["x-aurelis-cache"] == "hit" and headers["x-aurelis-model"] == "gpt-4.1-mini"
    assert again.id == answer.id and big.count() == 2 and mini.count() == 1


def test_a_prompt_too_long_falls_back_at_once(
    caller: Callable[..., Caller], upstream_factory: Callable[..., SimulatedServer]
) -> None:
    big, mini = upstream_factory(context_window=4), upstream_factory()
    llm = caller(config(big, mini), big.base_url)
    headers, _ = llm.chat(model="gpt-4.1", messages=messages("a prompt too long for the small window"))
    assert big.count() == 1  # a 400 is not retried: the same model would refuse it again
    assert models_received(mini) == ["gpt-4.1-mini"] and headers["x-aurelis-model"] == "gpt-4.1-mini"
    _, short = llm.chat(model="gpt-4.1", messages=messages("short"))
    assert short.model == "deploy-41" and llm.pipeline.stats.counters["fallbacks"] == 1


@pytest.mark.parametrize(("status", "error"), [(401, openai.AuthenticationError), (400, openai.BadRequestError),
                                               (404, openai.NotFoundError)])
def test_no_fallback_for_what_another_model_would_fail_too(
    status: int, error: type[Exception], caller: Callable[..., Caller],
    upstream_factory: Callable[..., SimulatedServer],
) -> None:
    big, mini = upstream_factory(status_override=status), upstream_factory()
    llm = caller(config(big, mini), big.base_url)
    with pytest.raises(error) as raised:
        llm.chat(model="gpt-4.1", messages=messages("hello"))
    assert big.count() == 1 and mini.count() == 0
    assert "fallbacks" not in llm.pipeline.stats.counters
    assert raised.value.response.headers["x-aurelis-model"] == "gpt-4.1"  # type: ignore[attr-defined]
    assert raised.value.body["code"] is not None  # type: ignore[attr-defined]  # the error body reached the caller


def test_a_connection_that_fails_falls_back(
    caller: Callable[..., Caller], upstream_factory: Callable[..., SimulatedServer]
) -> None:
    big, mini = upstream_factory(), upstream_factory()
    cfg = config(big, mini)
    cfg["endpoints"][0]["url"] = f"http://127.0.0.1:{closed_port()}/v1"
    llm = caller(cfg, big.base_url)
    headers, _ = llm.chat(model="gpt-4.1", messages=messages("hello"))
    assert headers["x-aurelis-model"] == "gpt-4.1-mini" and models_received(mini) == ["gpt-4.1-mini"]


def test_a_stream_falls_back_before_its_first_byte_only(
    caller: Callable[..., Caller], upstream_factory: Callable[..., SimulatedServer]
) -> None:
    big, mini = upstream_factory(status_override=503), upstream_factory()
    llm = caller(config(big, mini), big.base_url)
    headers, text = llm.stream(model="gpt-4.1", messages=messages("stream me"))
    assert text == "echo: stream me" and headers["x-aurelis-model"] == "gpt-4.1-mini"
    assert big.count() == 2 and models_received(mini) == ["gpt-4.1-mini"]
    # A stream cut after its first bytes reached the caller is the caller's error: no other model is asked.
    big.behavior.update(status_override=None, truncate_stream_after=2)
    with pytest.raises((openai.APIConnectionError, httpx2.RemoteProtocolError)):
        llm.stream(model="gpt-4.1", messages=messages("cut me"))
    assert mini.count() == 1 and llm.pipeline.stats.counters["fallbacks"] == 1


def test_a_chain_is_walked_in_order_and_skips_models_not_served_alike(
    upstream_factory: Callable[..., SimulatedServer],
) -> None:
    big, mini, last = upstream_factory(status_override=503), upstream_factory(status_override=429), upstream_factory()
    cfg = config(big, mini, "prometheus")
    cfg["endpoints"].append({"url": last.base_url, "name": "last", "models": ["gpt-4o-mini"]})
    # An Anthropic endpoint serves claude: the OpenAI request is never sent there.
    cfg["endpoints"].append({"url": "https://api.anthropic.com/v1", "name": "anthropic", "models": ["claude-*"]})
    cfg["fallbacks"] = {"gpt-4.1": ["claude-haiku", "gpt-4.1-mini", "gpt-4o-mini"]}
    with aurelis_core.instrument(httpx2.Client(), cfg) as http:
        llm = openai.OpenAI(base_url=big.base_url, api_key="sk", http_client=http, max_retries=0)
        raw = llm.chat.completions.with_raw_response.create(model="gpt-4.1", messages=messages("hi"))  # type: ignore[arg-type]
        pipeline = aurelis_core.pipeline_of(http)
        metrics = pipeline.plugin("prometheus").exposition().decode()
    assert raw.headers["x-aurelis-model"] == "gpt-4o-mini"
    assert models_received(mini) == ["gpt-4.1-mini"] * 2 and models_received(last) == ["gpt-4o-mini"]
    assert pipeline.stats.counters["fallbacks"] == 2
    assert Report.from_stats(pipeline.stats).resilience["model fallbacks"] == 2
    assert 'aurelis_fallbacks_total{from_model="gpt-4.1",to_model="gpt-4.1-mini"} 1.0' in metrics
    assert 'aurelis_fallbacks_total{from_model="gpt-4.1-mini",to_model="gpt-4o-mini"} 1.0' in metrics


def test_without_endpoints_the_fallback_asks_the_same_upstream_for_the_next_model(
    caller: Callable[..., Caller], upstream: SimulatedServer
) -> None:
    upstream.behavior.update(fail_next=1, failure_status=529)
    llm = caller({"plugins": ["normalize", "memory"], "fallbacks": {"gpt-4.1": ["gpt-4.1-mini"]}}, upstream.base_url)
    headers, answer = llm.chat(model="gpt-4.1", messages=messages("hello"))
    assert models_received(upstream) == ["gpt-4.1", "gpt-4.1-mini"]
    assert answer.model == "gpt-4.1-mini" and headers["x-aurelis-model"] == "gpt-4.1-mini"


def test_no_fallback_starts_once_the_retry_deadline_has_passed(upstream: SimulatedServer) -> None:
    cfg = {"plugins": ["normalize", "retry"], "retry": {"max_attempts": 2, "base": 0, "deadline": 30.0},
           "fallbacks": {"gpt-4.1": ["gpt-4.1-mini"]}}
    late = [0.0]
    with aurelis_core.instrument(httpx2.Client(), cfg) as http:
        pipeline = aurelis_core.pipeline_of(http)
        assert pipeline is not None
        pipeline.plugin("retry").clock = lambda: time.perf_counter() + late[0]
        llm = openai.OpenAI(base_url=upstream.base_url, api_key="sk", http_client=http, max_retries=0)
        # In time: gpt-4.1's two attempts fail, the fallback answers.
        upstream.behavior.update(fail_next=2, failure_status=529)
        answer = llm.chat.completions.create(model="gpt-4.1", messages=messages("early"))  # type: ignore[arg-type]
        assert answer.model == "gpt-4.1-mini"
        assert models_received(upstream) == ["gpt-4.1", "gpt-4.1", "gpt-4.1-mini"]
        # Past the deadline (the retry plugin's clock says 100 s have gone by): neither a retry nor a fallback.
        late[0] = 100.0
        upstream.behavior.update(fail_next=1, failure_status=529)
        with pytest.raises(openai.InternalServerError):
            llm.chat.completions.create(model="gpt-4.1", messages=messages("late"))  # type: ignore[arg-type]
        assert models_received(upstream)[3:] == ["gpt-4.1"]
        counters = pipeline.stats.counters
        assert counters["fallbacks"] == 1 and counters["fallback_deadline"] == 1
        assert Report.from_stats(pipeline.stats).resilience["fallbacks refused"] == 1


# --- credentials from the environment ---------------------------------------------------------------------------


def test_api_key_env_sends_the_variables_credential_and_never_shows_it(
    monkeypatch: pytest.MonkeyPatch, upstream: SimulatedServer
) -> None:
    monkeypatch.setenv("AURELIS_TEST_KEY", "sk-from-the-environment")
    cfg = {"plugins": ["round_robin"], "endpoints": [{"url": upstream.base_url, "api_key_env": "AURELIS_TEST_KEY"}]}
    with aurelis_core.instrument(httpx2.Client(), cfg) as http:
        openai.OpenAI(base_url=upstream.base_url, api_key="sk-caller", http_client=http, max_retries=0
                      ).chat.completions.create(model="m", messages=messages("hi"))  # type: ignore[arg-type]
        endpoint = aurelis_core.pipeline_of(http).endpoints[0]
    assert upstream.requests[0].header("authorization") == "Bearer sk-from-the-environment"
    assert "sk-from-the-environment" not in repr(endpoint) and "AURELIS_TEST_KEY" in repr(endpoint)
    monkeypatch.delenv("AURELIS_TEST_KEY")
    with pytest.raises(ConfigError, match="endpoints\\[0\\] api_key_env: the environment variable AURELIS_TEST_KEY "
                                          "is not set"):
        Config.from_dict(cfg)


TOML = """\
plugins = ["round_robin"]

[[endpoints]]
url = "${AURELIS_TEST_BASE}/v1"
name = "azure"
headers = { api-key = "${AURELIS_TEST_SECRET}", x-note = "costs $${USD}" }
"""


def test_variables_in_toml_strings_are_expanded_and_config_check_never_prints_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    upstream: SimulatedServer,
) -> None:
    path = tmp_path / "aurelis.toml"
    path.write_text(TOML)
    monkeypatch.setenv("AURELIS_TEST_BASE", upstream.url)
    monkeypatch.setenv("AURELIS_TEST_SECRET", "azure-secret-123")
    loaded = load_config(path)
    endpoint = loaded.endpoints[0]
    assert "azure-secret-123" not in repr(loaded)
    assert endpoint.url == upstream.base_url
    assert endpoint.headers == {"api-key": "azure-secret-123", "x-note": "costs ${USD}"}  # $${ is a literal ${
    assert "azure-secret-123" not in repr(endpoint)
    assert main(["config", "check", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "azure-secret-123" not in out + err and "ok" in out
    with aurelis_core.instrument(httpx2.Client(), path) as http:
        http.post(f"{upstream.base_url}/chat/completions", json={"model": "m", "messages": messages("hi")})
    assert upstream.requests[0].header("api-key") == "azure-secret-123"
    # An unset variable is named, with where it is used; so is a reference that is not one.
    monkeypatch.delenv("AURELIS_TEST_SECRET")
    path.write_text(TOML.replace("costs $${USD}", "costs ${USD"))
    assert main(["config", "check", str(path)]) == 1
    _, err = capsys.readouterr()
    assert "endpoints[0].headers.api-key: the environment variable AURELIS_TEST_SECRET is not set" in err
    assert "endpoints[0].headers.x-note: '${' without its closing '}'" in err
    assert os.environ["AURELIS_TEST_BASE"] not in err


# --- config errors ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("table", "message"), [
    ({"endpoints": [{"url": "http://a/v1", "model": ["x"]}]},
     "endpoints[0]: unknown key 'model'; did you mean 'models'? valid: api_key, api_key_env, dialect, headers, "
     "model_map, models, name, rpm, tpm, url, weight"),
    ({"endpoints": [{"url": "http://a/v1", "models": "gpt-4.1"}]},
     "endpoints[0] models: expected a list of strings, got 'gpt-4.1' (a string) (a single value is still written "
     "as a list: [\"...\"])"),
    ({"endpoints": [{"url": "http://a/v1", "models": ["a"], "model_map": {"b": "dep"}}]},
     "endpoints[0] model_map: maps 'b', which the endpoint does not serve (models: a)"),
    ({"endpoints": [{"url": "http://a/v1", "api_key": "sk", "api_key_env": "KEY"}]},
     "endpoints[0] api_key_env: give api_key or api_key_env, not both"),
    ({"endpoints": [{"url": "http://a/v1", "api_key_env": "not a name"}]},
     "endpoints[0] api_key_env: expected an environment variable name such as 'AZURE_KEY', got 'not a name' "
     "(a string)"),
    ({"fallbacks": {"gpt-4.1": ["gpt-4.1-mini", "gpt-4.1"]}},
     "[fallbacks] 'gpt-4.1': the chain names its own model: a model cannot fall back to itself"),
    ({"fallbacks": {"gpt-4.1": ["a", "a"]}}, "[fallbacks] 'gpt-4.1': the chain names 'a' more than once"),
    ({"fallbacks": {"gpt-4.1": "gpt-4.1-mini"}},
     "[fallbacks] 'gpt-4.1': expected a non-empty list of model names such as [\"gpt-4.1-mini\"], got "
     "'gpt-4.1-mini' (a string)"),
    ({"endpoints": [{"url": "http://a/v1", "models": ["gpt-4.1", "gpt-4.1-mini"]}],
      "fallbacks": {"gpt-4.1": ["gpt-4.1-mnii"]}},
     "[fallbacks] 'gpt-4.1': no endpoint serves 'gpt-4.1-mnii'; did you mean 'gpt-4.1-mini'? valid: gpt-4.1, "
     "gpt-4.1-mini"),
])
def test_config_errors_name_what_is_wrong_and_the_valid_choices(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Pipeline(table)
    assert raised.value.errors == (f"<dict>: {message}",)


# --- the pieces on their own ------------------------------------------------------------------------------------

ROUTERS = [RoundRobin, LeastConnections, WeightedResponseTime, LoadBased, AIOptimized]


@pytest.mark.parametrize("cls", ROUTERS, ids=[cls.name for cls in ROUTERS])
def test_a_model_panics_among_its_own_endpoints_only(cls: Any) -> None:
    eps = (Endpoint(url="http://127.0.0.1:9000", name="a0", models=["a"]),
           Endpoint(url="http://127.0.0.1:9001", name="a1", models=["a", "b*"]),
           Endpoint(url="http://127.0.0.1:9002", name="b0", models=["b*"]))
    health = EndpointHealth(eps)
    router = cls(cls.Config(seed=3), SimpleNamespace(endpoints=eps, health=health))

    def picks(model: str, n: int = 60) -> collections.Counter[str]:
        counts: collections.Counter[str] = collections.Counter()
        for _ in range(n):
            ctx = RequestContext(httpx2.Request("POST", "http://127.0.0.1:9000/v1/chat/completions"), None, None,
                                 False, DEFAULT_CONTROLS)
            ctx.json = {"model": model}
            endpoint = router.aurelis_route(ctx)
            attempt = Attempt(1, endpoint)
            attempt.status_code, attempt.finished = 200, attempt.started + 0.01
            router.aurelis_attempt_end(ctx, attempt)
            counts[endpoint.name] += 1
        return counts

    assert set(picks("a")) == {"a0", "a1"} and set(picks("b-2")) == {"a1", "b0"}
    health.block(eps[0], health.clock() + 60, "open")
    assert set(picks("a")) == {"a1"}
    health.block(eps[1], health.clock() + 60, "open")
    assert set(picks("a")) == {"a0", "a1"}  # panic: every endpoint of the model, never another model's
    assert set(picks("b-2")) == {"b0"}
    with pytest.raises(ModelNotServed):
        picks("c", 1)


def test_what_warrants_a_fallback() -> None:
    def failed(status: int | None = None, error: BaseException | None = None) -> Attempt:
        attempt = Attempt(1, None)
        attempt.status_code, attempt.error = status, error
        return attempt

    for status in (408, 429, 500, 503, 529):
        assert warrants_fallback(failed(status), None, httpx2)
    for status in (400, 401, 403, 404, 409, 422):
        assert not warrants_fallback(failed(status), b'{"error": {"code": "invalid_request"}}', httpx2)
    assert warrants_fallback(failed(error=httpx2.ConnectError("refused")), None, httpx2)
    assert not warrants_fallback(failed(error=ValueError("the caller's own")), None, httpx2)
    anthropic = b'{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 210000 ' \
                b'tokens > 200000 maximum"}}'
    gemini = b'{"error": {"code": 400, "message": "The input token count (1200000) exceeds the maximum number of ' \
             b'tokens allowed (1048576).", "status": "INVALID_ARGUMENT"}}'
    for body in (anthropic, gemini, b'{"error": {"code": "context_length_exceeded"}}'):
        assert warrants_fallback(failed(400), body, httpx2)
    # A compressed error body is read decoded.
    coded = gzip.compress(anthropic)
    assert error_body(coded, httpx2.Headers({"content-encoding": "gzip"})) == anthropic
    assert error_body(b"not gzip", httpx2.Headers({"content-encoding": "gzip"})) == b"not gzip"


def test_variable_references_and_their_errors() -> None:
    env = {"HOST": "example.org", "KEY": "k$y"}
    data = {"a": "https://${HOST}/v1", "b": ["${KEY}", 3, {"c": "$${HOST} and ${KEY}"}], "${HOST}": "key kept"}
    assert expand_env(data, "f.toml", env) == (
        {"a": "https://example.org/v1", "b": ["k$y", 3, {"c": "${HOST} and k$y"}], "${HOST}": "key kept"}, [])
    _, errors = expand_env({"x": "${}", "y": ["${1A}"], "z": {"w": "${MISSING}"}, "v": "${HOST"}, "f.toml", env)
    assert errors == [
        "f.toml: x: ${} is not an environment variable reference: expected ${NAME} with NAME made of letters, "
        "digits and _ (write $${ for a literal ${)",
        "f.toml: y[0]: ${1A} is not an environment variable reference: expected ${NAME} with NAME made of "
        "letters, digits and _ (write $${ for a literal ${)",
        "f.toml: z.w: the environment variable MISSING is not set (referenced as ${MISSING})",
        "f.toml: v: '${' without its closing '}' (write $${ for a literal ${)",
    ]


def test_no_repr_of_a_config_shows_an_option_value_that_may_be_a_credential() -> None:
    config = Config.from_dict({
        "plugins": ["memory"], "memory": {"max_entries": 7},
        "redis_connection": {"url": "redis://:hunter2@127.0.0.1:6379/0"},
        "endpoints": [{"url": "http://a/v1", "api_key": "sk-secret", "headers": {"x-goog-api-key": "g-secret"}}],
    })
    shown = repr(config)
    assert "hunter2" not in shown and "sk-secret" not in shown and "g-secret" not in shown
    assert "redis://:***@127.0.0.1:6379/0" in shown and "'memory': {...}" in shown


def test_a_model_named_by_the_path_is_routed_rewritten_and_falls_back(
    upstream_factory: Callable[..., SimulatedServer],
) -> None:
    # Gemini's form: the model is in the path, the body has none. The simulator answers such paths 404, after
    # recording them: what it was asked is what matters here. The first model's endpoint does not answer.
    flash = upstream_factory()
    cfg = {
        "plugins": ["round_robin"],
        "endpoints": [
            {"url": f"http://127.0.0.1:{closed_port()}/v1beta", "name": "pro", "models": ["gemini-pro"]},
            {"url": f"{flash.url}/v1beta", "name": "flash", "models": ["gemini-flash"],
             "model_map": {"gemini-flash": "gemini-flash-001"}},
        ],
        "fallbacks": {"gemini-pro": ["gemini-flash"]},
    }
    body = {"contents": [{"parts": [{"text": "hi"}]}]}
    with aurelis_core.instrument(httpx2.Client(), cfg) as http:
        response = http.post(f"{flash.url}/v1beta/models/gemini-pro:generateContent?alt=sse", json=body)
        direct = http.post(f"{flash.url}/v1beta/models/gemini-flash:streamGenerateContent", json=body)
    assert [r.path for r in flash.requests] == ["/v1beta/models/gemini-flash-001:generateContent",
                                                "/v1beta/models/gemini-flash-001:streamGenerateContent"]
    assert flash.requests[0].query_string == b"alt=sse" and flash.requests[0].json() == body
    assert response.headers["x-aurelis-model"] == "gemini-flash" == direct.headers["x-aurelis-model"]


def test_an_open_circuit_on_every_endpoint_of_a_model_falls_back_without_sending(
    upstream_factory: Callable[..., SimulatedServer],
) -> None:
    big, mini = upstream_factory(status_override=500), upstream_factory()
    cfg = config(big, mini, "breaker", breaker={"consecutive_failures": 2, "open_for": 60.0})
    with aurelis_core.instrument(httpx2.Client(), cfg) as http:
        llm = openai.OpenAI(base_url=big.base_url, api_key="sk", http_client=http, max_retries=0)
        for n in range(3):
            raw = llm.chat.completions.with_raw_response.create(model="gpt-4.1", messages=messages(f"q{n}"))  # type: ignore[arg-type]
            assert raw.headers["x-aurelis-model"] == "gpt-4.1-mini"
    # Two failures opened big's circuit: the later requests fell back without reaching it.
    assert big.count() == 2 and models_received(mini) == ["gpt-4.1-mini"] * 3


# --- one wire format per request -------------------------------------------------------------------------------


@pytest.mark.parametrize("router", ["round_robin", "least_connections", "load_based"])
def test_among_endpoints_of_several_formats_each_request_keeps_to_its_own(
    router: str, upstream_factory: Callable[..., SimulatedServer]
) -> None:
    """No `models` lists: every endpoint serves every model, but an OpenAI request never reaches the endpoint
    pinned to Anthropic's format, and an Anthropic request never reaches the OpenAI ones; a Gemini request,
    which no endpoint takes, fails before anything is sent."""
    import anthropic
    from google import genai
    from google.genai import types

    oa1, oa2, claude = upstream_factory(), upstream_factory(), upstream_factory()
    root = claude.base_url.rsplit("/v1", 1)[0]
    cfg = {
        "plugins": ["normalize", router],
        "endpoints": [
            {"url": oa1.base_url, "name": "oa1"},
            {"url": root, "name": "claude", "dialect": "anthropic"},  # a loopback host: only the pin tells
            {"url": oa2.base_url, "name": "oa2"},
        ],
    }
    with aurelis_core.instrument(httpx2.Client(), cfg) as http:
        llm = openai.OpenAI(base_url=oa1.base_url, api_key="sk", http_client=http, max_retries=0)
        messenger = anthropic.Anthropic(base_url=root, api_key="ak", http_client=http, max_retries=0)
        for n in range(6):
            llm.chat.completions.create(model="any", messages=messages(f"chat {n}"))  # type: ignore[arg-type]
            messenger.messages.create(model="sim-claude", max_tokens=16,
                                      messages=[{"role": "user", "content": f"message {n}"}])
        elsewhere = oa1.base_url.rsplit("/v1", 1)[0]  # not under the pinned endpoint's URL: detected by its path
        gemini = genai.Client(api_key="gk", http_options=types.HttpOptions(base_url=elsewhere, httpx_client=http))
        with pytest.raises(aurelis_core.DialectNotServed, match=r"takes gemini requests.*anthropic, openai"):
            gemini.models.generate_content(model="sim-gemini", contents="hello")
    assert oa1.count() + oa2.count() == 6 and oa1.count("/v1/messages") + oa2.count("/v1/messages") == 0
    assert claude.count() == 6 == claude.count("/v1/messages")


def test_endpoint_family_follows_the_pin_then_the_url() -> None:
    from aurelis_core._model_routes import endpoint_family

    assert endpoint_family(Endpoint("http://127.0.0.1:9/v1", dialect="anthropic")) == "anthropic"
    assert endpoint_family(Endpoint("http://127.0.0.1:9/v1")) == "openai"
    assert endpoint_family(Endpoint("https://x.openai.azure.com")) == "azure_openai"
    assert endpoint_family(Endpoint("https://generativelanguage.googleapis.com/v1beta")) == "gemini"
    # Gemini's OpenAI-compatible API speaks OpenAI's format, not Azure's, though its path holds /openai/.
    assert endpoint_family(Endpoint("https://generativelanguage.googleapis.com/v1beta/openai")) == "openai"
