"""Every setting Aurelis accepts is honoured; every wrong one fails when the pipeline is built, naming the table
and the key and saying what was expected. Per-request controls fail before anything is sent, naming the header or
the extension key.

Each case here was once accepted (or failed deep inside with a TypeError/AttributeError) and is a regression
test; ``tests/test_config_options.py`` walks every option of every plugin generically.
"""

from __future__ import annotations

import math
from typing import Any

import httpx
import pytest

import aurelis_core
from aurelis_core import ConfigError, Pipeline, load_config
from aurelis_core.testing import SimulatedServer

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def config_error(config: Any) -> str:
    with pytest.raises(ConfigError) as info:
        Pipeline(config).close()
    return str(info.value)


# --- wrong types ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"memory": {"ttl": "300"}}, "<dict>: [memory] ttl: expected a number, got '300' (a string)"),
        ({"redis": {"prefix": 5}}, "<dict>: [redis] prefix: expected a string, got 5 (an integer)"),
        ({"sqlite": {"path": 5}}, "<dict>: [sqlite] path: expected a string, got 5 (an integer)"),
        ({"normalize": {"secret": 5}}, "<dict>: [normalize] secret: expected a string, got an integer"),
        ({"endpoints": [{"url": 5}]}, "<dict>: endpoints[0] url: expected a string, got 5 (an integer)"),
        ({"plugins": ["normalize", "memory"], "memory": {"max_bytes": True}},
         "[memory] max_bytes: expected an integer, got True (a boolean)"),
        ({"tuner": {"initial_limit": True}}, "[tuner] initial_limit: expected an integer, got True (a boolean)"),
        ({"redis": {"queue_size": True}}, "[redis] queue_size: expected an integer, got True (a boolean)"),
        ({"gzip": {"min_size": False}}, "[gzip] min_size: expected an integer, got False (a boolean)"),
        ({"aiohttp": {"max_connections": 1.5}}, "[aiohttp] max_connections: expected an integer, got 1.5"),
        ({"retry": {"max_attempts": True}}, "[retry] max_attempts: expected an integer, got True"),
        ({"ratelimit": {"default_max_tokens": 10.5}}, "[ratelimit] default_max_tokens: expected an integer"),
        ({"sqlite": {"warm": True}}, "[sqlite] warm: expected a table, got True (a boolean)"),
        ({"endpoints": [{"url": "https://a.example", "headers": ["a"]}]},
         "endpoints[0] headers: expected a table of strings, got ['a'] (a list)"),
        ({"endpoints": [{"url": "https://a.example", "headers": {"x-team": 5}}]},
         "endpoints[0] headers['x-team']: expected a string, got 5 (an integer)"),
        ({"normalize": {"paths": "/chat/completions"}},
         "[normalize] paths: expected a list of strings, got '/chat/completions' (a string)"),
        ({"record": {"paths": "/chat/completions"}}, "[record] paths: expected a list of strings"),
        ({"memory": {"ttl": math.nan}}, "[memory] ttl: expected a finite number, got nan"),
        ({"breaker": {"window": math.inf}}, "[breaker] window: expected a finite number, got inf"),
    ],
)
def test_a_wrong_type_fails_naming_the_table_and_key(config: dict[str, Any], message: str) -> None:
    assert message in config_error(config)


def test_a_secret_of_the_wrong_type_is_not_echoed() -> None:
    for config in (
        {"normalize": {"secret": 98765432}},
        {"endpoints": [{"url": "https://a.example", "api_key": 98765432}]},
        {"sqlite": {"encryption_key": 98765432}},
        {"redis": {"sentinels": ["h:1"], "password": 98765432}},
    ):
        message = config_error(config)
        assert "98765432" not in message and "expected a string" in message


def test_a_list_as_the_whole_config_fails_clearly() -> None:
    for given in (["normalize", "memory"], 5):
        with pytest.raises(ConfigError, match="expected a dict, a Config or the path of a TOML file, got"):
            load_config(given)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="expected a dict"):
            Pipeline(given)


def test_a_directory_as_the_config_file_fails_clearly(tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)


# --- values of the right type that cannot work ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"gzip": {"level": 99}}, "[gzip] level: expected an integer in 1..9, got 99"),
        ({"brotli": {"level": 12}}, "[brotli] level: expected an integer in 0..11, got 12"),
        ({"ratelimit": {"redis_url": "nope"}}, "[ratelimit] redis_url: expected a Redis URL"),
        ({"redis": {"url": "localhost:6379"}}, "[redis] url: expected a Redis URL"),
        ({"redis": {"url": "redis://h:port/0"}}, "[redis] url: expected a Redis URL"),
        ({"redis": {"url": "redis://h:6379/zero"}}, "[redis] url: expected a Redis URL"),
        ({"redis": {"url": "redis://h:6379/0?no_such_option=1"}}, "no_such_option"),
        ({"redis": {"url": "redis://h:6379/0", "password": "pw"}}, "[redis] password"),
        ({"redis": {"service_name": "other"}}, "[redis] service_name"),
        ({"redis": {"sentinels": []}}, "[redis] sentinels: expected a non-empty list"),
        ({"redis": {"sentinels": ["h:0"]}}, "[redis] sentinels[0]: expected"),
        ({"normalize": {"paths": [""]}}, "[normalize] paths[0]: expected a path ending such as '/chat/completions'"),
        ({"normalize": {"paths": ["/"]}}, "[normalize] paths[0]: expected a path ending such as '/chat/completions'"),
        ({"normalize": {"paths": ["chat/completions"]}}, "[normalize] paths[0]"),
        ({"normalize": {"namespace": ""}}, "[normalize] namespace: expected a non-empty string"),
        ({"normalize": {"secret": ""}}, "[normalize] secret: expected a non-empty string"),
        ({"sqlite": {"codec": "lz5"}}, "[sqlite] codec: expected a codec name, got 'lz5' (a string); did you mean"),
        ({"sqlite": {"encryption_key": "short"}}, "[sqlite] encryption_key: expected 32 bytes"),
        ({"aiohttp": {"verify": "/nonexistent/ca.pem"}}, "[aiohttp] verify: expected true, false or the path of"),
        ({"httpx": {"verify": "/nonexistent/ca.pem"}}, "[httpx] verify: expected true, false or the path of"),
        ({"httpx": {"endpoints": {"a": 5}}}, "[httpx] endpoints['a']: expected a table"),
        ({"retry": {"statuses": [200]}}, "[retry] statuses[0]: expected an integer in 400..599, got 200"),
        ({"pricing": {"m": {"input": -1, "output": 1}}}, "[pricing] 'm' input: expected a number >= 0, got -1"),
        ({"prometheus": {"addr": ""}}, "[prometheus] addr: expected a non-empty string"),
        ({"endpoints": [{"url": "https://a.example/v1?api-version=1"}]}, "endpoints[0] url: expected an absolute"),
        ({"endpoints": [{"url": "https://a.example", "headers": {"bad name": "x"}}]}, "endpoints[0] headers"),
        ({"endpoints": [{"url": "https://a.example", "headers": {"x-a": "1\r\nx-b: 2"}}]}, "endpoints[0] headers"),
        ({"endpoints": [{"url": "https://a.example", "api_key": ""}]}, "endpoints[0] api_key"),
        ({"endpoints": [{"name": "a"}]}, "endpoints[0]: missing key 'url'"),
        ({"routers": 1}, "unknown top-level key 'routers'"),
    ],
)
def test_a_value_that_cannot_work_fails_at_build_time(config: dict[str, Any], message: str) -> None:
    assert message in config_error(config)


def test_an_existing_directory_is_not_a_cache_file(tmp_path: Any) -> None:
    assert f"[sqlite] path: expected the path of a file, not a directory, got '{tmp_path}'" in config_error(
        {"sqlite": {"path": str(tmp_path)}}
    )
    assert "[record] path: expected the path of a file" in config_error({"record": {"path": str(tmp_path)}})


def test_every_error_of_a_config_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        Pipeline({
            "plugins": ["normalize", "memory"],
            "memory": {"ttl": "300", "max_bytes": -1, "policy": "fifo"},
            "redis": {"prefix": 5},
            "endpoints": [{"url": 5}],
        })
    errors = info.value.errors
    assert any("endpoints[0] url" in e for e in errors)
    # The plugin tables are checked once the top level is valid: fix the endpoint, see the rest.
    with pytest.raises(ConfigError) as info:
        Pipeline({
            "plugins": ["normalize", "memory"],
            "memory": {"ttl": "300", "max_bytes": -1, "policy": "fifo"},
            "redis": {"prefix": 5},
        })
    errors = info.value.errors
    assert sorted(e.split(":", 2)[1].strip() for e in errors) == [
        "[memory] max_bytes", "[memory] policy", "[memory] ttl", "[redis] prefix",
    ]
    assert str(info.value) == "\n".join(errors)


def test_every_range_error_of_a_table_is_reported_and_a_rule_between_options_too() -> None:
    with pytest.raises(ConfigError) as info:
        Pipeline({"tuner": {"backoff": 2, "smoothing": 0, "min_limit": 0, "max_queue": -1}})
    assert list(info.value.errors) == [
        "<dict>: [tuner] min_limit: expected an integer >= 1, got 0 (an integer)",
        "<dict>: [tuner] max_queue: expected an integer >= 0, got -1 (an integer)",
        "<dict>: [tuner] backoff: expected a number in (0, 1), got 2.0 (a number)",
        "<dict>: [tuner] smoothing: expected a number in (0, 1), got 0.0 (a number)",
    ]
    with pytest.raises(ConfigError) as info:
        Pipeline({"tuner": {"min_limit": 30}})
    assert list(info.value.errors) == [
        "<dict>: [tuner]: need min_limit <= initial_limit <= max_limit, got 30, 20, 500"
    ]


# --- per-request controls -------------------------------------------------------------------------------------


@pytest.fixture
def client(upstream: SimulatedServer) -> Any:
    client = Pipeline({"plugins": ["normalize", "memory"]}).instrument(httpx.Client(base_url=upstream.base_url))
    yield client
    client.close()


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"x-aurelis-ttl": "nan"}, "x-aurelis-ttl: expected a number of seconds > 0, got 'nan'"),
        ({"x-aurelis-ttl": "inf"}, "x-aurelis-ttl: expected a number of seconds > 0, got 'inf'"),
        ({"x-aurelis-ttl": "abc"}, "x-aurelis-ttl: expected a number of seconds > 0, got 'abc'"),
        ({"x-aurelis-ttl": "-5"}, "x-aurelis-ttl: expected a number of seconds > 0, got '-5'"),
        ({"x-aurelis-ttl": "0"}, "x-aurelis-ttl: expected a number of seconds > 0, got '0'"),
        ({"x-aurelis-ttl": "1_000"}, "x-aurelis-ttl: expected a number of seconds > 0, got '1_000'"),
        ({"x-aurelis-ttl": ""}, "x-aurelis-ttl: expected a number of seconds > 0, got ''"),
        ({"x-aurelis-cache": "sometimes"}, "x-aurelis-cache: 'sometimes' is not one of skip, refresh, no-store"),
        ({"x-aurelis-cache": ""}, "x-aurelis-cache: '' is not one of"),
        ({"x-aurelis-namespace": "a\x01b"}, "x-aurelis-namespace: expected a non-empty string without control"),
        ({"x-aurelis-namespace": ""}, "x-aurelis-namespace: expected a non-empty string"),
        ({"x-aurelis-ttll": "1"}, "unknown request header 'x-aurelis-ttll'; did you mean 'x-aurelis-ttl'?"),
    ],
)
def test_an_invalid_control_header_fails_before_anything_is_sent(
    client: httpx.Client, upstream: SimulatedServer, headers: dict[str, str], message: str
) -> None:
    with pytest.raises(aurelis_core.RequestControlError) as info:
        client.post("/chat/completions", json=BODY, headers=headers)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)
    assert upstream.count("/chat/completions") == 0


def test_a_repeated_control_header_with_two_values_fails(client: httpx.Client, upstream: SimulatedServer) -> None:
    headers = [("x-aurelis-ttl", "5"), ("x-aurelis-ttl", "500")]
    with pytest.raises(aurelis_core.RequestControlError, match="x-aurelis-ttl: given twice"):
        client.post("/chat/completions", json=BODY, headers=headers)
    assert upstream.count("/chat/completions") == 0


@pytest.mark.parametrize(
    ("controls", "message"),
    [
        ({"ttl": "300"}, "request.extensions['aurelis'] ttl: expected a number, got '300' (a string)"),
        ({"ttl": math.nan}, "request.extensions['aurelis'] ttl: expected a finite number, got nan"),
        ({"ttl": -1}, "request.extensions['aurelis'] ttl: expected a number > 0, got -1"),
        ({"ttl": True}, "request.extensions['aurelis'] ttl: expected a number, got True"),
        ({"skip": "yes"}, "request.extensions['aurelis'] skip: expected true or false, got 'yes' (a string)"),
        ({"coalesce": 0}, "request.extensions['aurelis'] coalesce: expected true or false, got 0"),
        ({"namespace": 5}, "request.extensions['aurelis'] namespace: expected a string, got 5"),
        ({"namespace": "team\na"}, "request.extensions['aurelis'] namespace: expected a non-empty string"),
        ({"tll": 1}, "request.extensions['aurelis']: unknown key 'tll'; did you mean 'ttl'?"),
    ],
)
def test_an_invalid_control_extension_fails_before_anything_is_sent(
    client: httpx.Client, upstream: SimulatedServer, controls: dict[str, Any], message: str
) -> None:
    with pytest.raises(aurelis_core.RequestControlError) as info:
        client.post("/chat/completions", json=BODY, extensions={"aurelis": controls})
    assert message in str(info.value)
    assert upstream.count("/chat/completions") == 0


def test_a_control_extension_that_is_not_a_dict_fails(client: httpx.Client, upstream: SimulatedServer) -> None:
    with pytest.raises(aurelis_core.RequestControlError, match=r"request.extensions\['aurelis'\]: expected a dict"):
        client.post("/chat/completions", json=BODY, extensions={"aurelis": "skip"})
    assert upstream.count("/chat/completions") == 0


def test_valid_controls_still_work(client: httpx.Client, upstream: SimulatedServer) -> None:
    assert client.post("/chat/completions", json=BODY, headers={"x-aurelis-ttl": "60"}).headers[
        "x-aurelis-cache"] == "miss"
    hit = client.post("/chat/completions", json=BODY, headers={"x-aurelis-ttl": " 2.5e1 "})
    assert hit.headers["x-aurelis-cache"] == "hit"
    spaced = client.post("/chat/completions", json=BODY, headers={"x-aurelis-namespace": "team a"})
    assert spaced.headers["x-aurelis-cache"] == "miss"
    assert client.post("/chat/completions", json=BODY, extensions={"aurelis": {"ttl": 30, "namespace": "team a"}}
                       ).headers["x-aurelis-cache"] == "hit"
    assert upstream.count("/chat/completions") == 2


def test_the_openai_sdk_gets_the_error_before_anything_is_sent(upstream: SimulatedServer) -> None:
    import openai

    http = Pipeline({"plugins": ["normalize", "memory"]}).instrument(httpx.Client())
    client = openai.OpenAI(base_url=upstream.base_url, api_key="sk-test", http_client=http, max_retries=2)
    with pytest.raises(aurelis_core.RequestControlError, match="x-aurelis-ttl: expected a number of seconds > 0"):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                       extra_headers={"x-aurelis-ttl": "nan"})
    assert upstream.count("/chat/completions") == 0
    client.close()
