"""Configuration: sources, validation errors that name the valid choices, plugin blocking."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import aurelis_core
from aurelis_core import Config, ConfigError, Endpoint, Pipeline, hookimpl, load_config


def test_dict_toml_and_pyproject_give_the_same_config(tmp_path: Path) -> None:
    toml = 'plugins = ["normalize", "memory"]\n[memory]\npolicy = "lfu"\nmax_bytes = 1000000\n'
    (tmp_path / "aurelis.toml").write_text(toml)
    pyproject = "[project]\nname = 'x'\n[tool.aurelis]\n" + toml.replace("[memory]", "[tool.aurelis.memory]")
    (tmp_path / "pyproject.toml").write_text(pyproject)
    from_dict = load_config({"plugins": ["normalize", "memory"], "memory": {"policy": "lfu", "max_bytes": 1000000}})
    from_toml = load_config(tmp_path / "aurelis.toml")
    from_pyproject = load_config(str(tmp_path / "pyproject.toml"))
    for config in (from_toml, from_pyproject):
        assert config.plugins == from_dict.plugins
        assert config.tables == from_dict.tables
    pipeline = Pipeline(from_pyproject)
    assert pipeline.plugin("memory").config.policy == "lfu"


def test_aurelis_config_env_names_the_default_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.toml"
    path.write_text('plugins = ["normalize"]\n')
    monkeypatch.setenv("AURELIS_CONFIG", str(path))
    assert load_config(None).plugins == ("normalize",)
    monkeypatch.delenv("AURELIS_CONFIG")
    assert load_config(None) == Config()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"plugins": ["memroy"]}, "unknown plugin 'memroy'; did you mean 'memory'? valid: "),
        ({"plugins": ["memory"], "memory": {"policy": "fifo"}},
         "<dict>: [memory] policy: expected one of 'lru', 'lfu', got 'fifo' (a string)"),
        ({"plugins": ["memory"], "memory": {"max_byte": 10}}, "unknown key 'max_byte'; did you mean 'max_bytes'?"),
        ({"plugins": ["memory"], "memory": {"max_bytes": -1}}, "[memory] max_bytes: expected an integer >= 1, got -1"),
        ({"plugins": ["memory"], "memory": {"max_bytes": "big"}},
         "[memory] max_bytes: expected an integer, got 'big' (a string)"),
        ({"memory": {"ttl": 0}}, "[memory] ttl: expected a number > 0, got 0"),
        ({"plugin": ["memory"]}, "unknown top-level key 'plugin'"),
        ({"plugins": "memory"}, "plugins: expected a list of plugin names, got 'memory' (a string)"),
        ({"plugins": ["memory", "memory"]}, "listed twice"),
        ({"endpoints": [{"url": "ftp://x"}]}, "endpoints[0] url: expected an absolute http(s) URL"),
        ({"endpoints": [{"url": "http://a", "wieght": 2}]}, "unknown key 'wieght'; did you mean 'weight'?"),
        ({"endpoints": [{"url": "http://a", "weight": 0}]}, "endpoints[0] weight: expected a number > 0, got 0"),
        ({"endpoints": [{"url": "http://a", "name": "x"}, {"url": "http://b", "name": "x"}]}, "unique"),
        ({"endpoints": ["http://a", "http://b"]}, "need a router plugin"),
        ({"plugins": ["normalize"], "normalize": {"fold_whitespace": "yes"}},
         "[normalize] fold_whitespace: expected true or false, got 'yes' (a string)"),
    ],
)
def test_bad_config_fails_at_build_time_naming_valid_choices(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Pipeline(config)
    assert message in str(info.value)


def test_unknown_plugin_lists_every_valid_name() -> None:
    with pytest.raises(ConfigError) as info:
        Pipeline({"plugins": ["nope"]})
    assert "memory" in str(info.value) and "normalize" in str(info.value)


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("plugins = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")
    (tmp_path / "pyproject.toml").write_text("[project]\nname='x'\n")
    with pytest.raises(ConfigError, match=r"no \[tool.aurelis\]"):
        load_config(tmp_path / "pyproject.toml")


def test_endpoints_are_parsed() -> None:
    config = load_config({"endpoints": [{"url": "https://a.example/v1", "name": "a", "weight": 2, "rpm": 60}]})
    assert config.endpoints == (Endpoint(url="https://a.example/v1", name="a", weight=2, rpm=60),)
    assert load_config({"endpoints": ["https://b.example"]}).endpoints[0].name == "https://b.example"


class Router:
    def __init__(self, name: str) -> None:
        self.name = name

    @hookimpl
    def aurelis_route(self, ctx: Any) -> Any:
        return None


def test_single_stages_reject_two_plugins() -> None:
    with pytest.raises(ConfigError, match="only one router may be enabled, got: r1, r2"):
        Pipeline({}, plugins=[Router("r1"), Router("r2")])


def test_disable_plugins_env_blocks_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AURELIS_DISABLE_PLUGINS", "memory, other")
    pipeline = Pipeline({"plugins": ["normalize", "memory"]})
    assert pipeline.tiers == ()
    assert pipeline.pm.is_blocked("memory")
    with pytest.raises(KeyError, match="no plugin 'memory'"):
        pipeline.plugin("memory")


BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_plugins_registered_at_run_time_take_effect(upstream: Any) -> None:
    import httpx

    pipeline = Pipeline({"plugins": ["normalize"]})
    client = pipeline.instrument(httpx.Client())
    url = upstream.base_url + "/chat/completions"
    assert "x-aurelis-cache" not in client.post(url, json=BODY).headers
    from aurelis_plugins.memory import MemoryCache, MemoryConfig

    pipeline.register(MemoryCache(MemoryConfig(), pipeline), "memory")
    assert client.post(url, json=BODY).headers["x-aurelis-cache"] == "miss"
    assert client.post(url, json=BODY).headers["x-aurelis-cache"] == "hit"
    pipeline.unregister("memory")
    assert "x-aurelis-cache" not in client.post(url, json=BODY).headers
    assert upstream.count("chat/completions") == 3
    client.close()


def test_two_pipelines_share_nothing() -> None:
    a = Pipeline({"plugins": ["normalize", "memory"]})
    b = Pipeline({"plugins": ["normalize", "memory"]})
    assert a.plugin("memory") is not b.plugin("memory")
    assert a.stats is not b.stats and a.pm is not b.pm


def test_config_object_is_accepted_by_instrument() -> None:
    import httpx

    config = load_config({"plugins": ["normalize"]})
    client = aurelis_core.instrument(httpx.Client(), config)
    pipeline = aurelis_core.pipeline_of(client)
    assert pipeline is not None and pipeline.config is config
    client.close()
