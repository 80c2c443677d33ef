"""The plugin API, ``aurelis_core.plugin``: its surface, pinned; the boundary it draws around plugins, checked on
their sources; and the capabilities plugins find each other by, through real pipelines, a real entry point of a
third-party distribution, real SQLite files and real simulated upstreams on 127.0.0.1."""

from __future__ import annotations

import ast
import inspect
import json
import logging
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import aurelis_core
import aurelis_core.plugin as api
from aurelis_core import ConfigError, Pipeline
from aurelis_core.testing import SimulatedServer
from aurelis_core.tools.cli import main as cli_main

ROOT = Path(__file__).resolve().parent.parent
BODY = {"model": "m", "messages": [{"role": "user", "content": "plugin api"}]}


def chat(n: int) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": f"question {n}"}]}


# --- the surface -------------------------------------------------------------------------------------------------


def test_all_is_every_public_name_of_the_module() -> None:
    """httpx's rule: nothing public that ``__all__`` does not list, nothing listed that is not there."""
    # (Not identifiers: the names pytest's assertion rewriting adds to the modules of a distribution that
    # registers a pytest plugin, as this one does.)
    public = {name for name in vars(api) if not name.startswith("_") and name.isidentifier()}
    assert sorted(api.__all__) == sorted(public)
    assert len(set(api.__all__)) == len(api.__all__)


def test_the_names_are_pinned() -> None:
    """Adding or removing a name of the plugin API is a deliberate, reviewed change: third-party plugins
    depend on every one of them."""
    assert sorted(api.__all__) == sorted([
        # hooks, the request, the pipeline as a plugin sees it
        "hookimpl", "RequestContext", "Attempt", "CacheEntry", "Endpoint", "RequestControls", "Stats", "Config",
        "Pipeline",
        # what plugins find in each other, by capability
        "CacheTier", "WarmTarget", "ShrinkableTier", "Router",
        # per-request state
        "StateKey", "FAILED_ENDPOINTS", "DEADLINE", "Deadline",
        # models: which one a request asks for, its fallbacks
        "request_model", "MODEL_ROUTE", "ModelRoute", "FALLBACKS", "warrants_fallback", "ModelNotServed",
        # endpoint health
        "EndpointHealth", "EndpointStatus", "EndpointUnavailable", "CircuitState", "retry_after",
        # who is asking
        "Tenant", "Identity", "TenantConfig", "DEFAULT_CREDENTIAL_HEADERS", "DEFAULT_CREDENTIAL_PARAMS",
        "DEFAULT_SCOPE_HEADERS",
        # shared state
        "RedisConnection",
        # requests on the wire
        "header_items", "url_parts", "buffered_body", "replayable_body", "copy_request", "signature_scheme",
        "resend_refusal", "usage_tokens", "parse_json",
        # tokens and money
        "Usage", "usage_counts", "Pricing", "ModelPrice",
        # wire formats
        "Dialect", "OpenAI", "AzureOpenAI", "Anthropic", "Gemini", "FailureKind", "RateLimits",
        "event_stream_events",
        "parse_duration",
        # failures a request goes on without
        "worth_logging",
        # options
        "config_from_table", "ConfigError", "ALLOW_NON_FINITE", "PROBE", "Invalid", "as_tuple", "at_least",
        "choices_hint", "describe", "each", "env_name", "existing_file", "file_path", "fraction", "header_name",
        "header_table",
        "host_port", "http_url", "in_range", "label", "non_empty", "non_negative", "non_negative_int", "one_of",
        "positive", "positive_int", "printable", "probe_bind", "probe_redis", "probe_tcp", "probe_writable_file",
        "redis_url", "url_path", "path_ending", "writable_file_probe",
        # workloads
        "WorkloadRequest", "load_workload", "join_url", "WORKLOAD_CREDENTIAL_HEADERS",
        # installed plugins
        "discover_plugins", "blocked_plugins", "PluginSpec",
        # logs
        "component_logger", "log_fault", "expected_fault", "describe_error",
        # the samples of Stats
        "Sample", "percentile",
    ])


def test_it_re_exports_and_copies_nothing() -> None:
    """Each name is the very object users meet elsewhere: a plugin and the core never hold two versions."""
    import aurelis_core.health
    import aurelis_core.stats
    import aurelis_core.tools.replay
    import aurelis_core.validators

    for name in aurelis_core.__all__:
        if name in api.__all__ and name != "Pipeline":  # the class users build vs the Protocol plugins see
            assert getattr(api, name) is getattr(aurelis_core, name), name
    assert api.Pipeline is not aurelis_core.Pipeline
    for name in aurelis_core.validators.__all__:
        assert getattr(api, name) is getattr(aurelis_core.validators, name), name
    for name in aurelis_core.health.__all__:
        if name in api.__all__:
            assert getattr(api, name) is getattr(aurelis_core.health, name), name
    for name in ("Sample", "Stats", "percentile", "usage_tokens"):
        assert getattr(api, name) is getattr(aurelis_core.stats, name), name
    replay = aurelis_core.tools.replay
    assert api.WorkloadRequest is replay.WorkloadRequest
    assert api.load_workload is replay.load_workload
    assert api.join_url is replay.join_url
    assert api.WORKLOAD_CREDENTIAL_HEADERS is replay.CREDENTIAL_HEADERS


def test_every_name_is_documented() -> None:
    assert api.__doc__ is not None and "Writing a plugin" in api.__doc__
    for name in api.__all__:
        obj = getattr(api, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__doc__, f"{name} has no docstring"


def test_importing_it_costs_only_its_own_small_modules() -> None:
    """Plugins import the API when a pipeline is built: it must pull in nothing ``import aurelis_core`` and the
    pipeline do not already (no replay tool, no report, no third-party package)."""
    code = (
        "import sys, aurelis_core, aurelis_core.pipeline; before = set(sys.modules); import aurelis_core.plugin; "
        "print(sorted(set(sys.modules) - before))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    added = json.loads(out.replace("'", '"'))
    assert added and all(name.startswith("aurelis_core.") for name in added), added
    assert not {"aurelis_core.testing", "aurelis_core.tools"} & {name.rsplit(".", 1)[0] for name in added}
    assert not {"aurelis_core.replay", "aurelis_core.report"} & set(added)


def test_the_docstring_example_is_a_working_plugin(upstream: SimulatedServer) -> None:
    """The module docstring teaches with a complete plugin: it must run as written."""
    doc = api.__doc__ or ""
    start = doc.index("    import logging\n")
    example = textwrap.dedent(doc[start:doc.index("Publish it with an entry point")])
    namespace: dict[str, Any] = {}
    exec(compile(example, "<aurelis_core.plugin example>", "exec"), namespace)  # our own docstring
    pipeline = Pipeline({"plugins": []})
    config = namespace["SlowLogConfig"](threshold=1e-9)  # every attempt is "slow"
    pipeline.register(namespace["SlowLog"](config, pipeline), "slow_log")
    with pipeline.instrument(httpx.Client()) as client:
        for _ in range(2):
            assert client.post(upstream.base_url + "/chat/completions", json=BODY).status_code == 200
    pipeline.close()
    assert pipeline.stats.counters["slow_log.requests"] == 2
    with pytest.raises(ConfigError, match="threshold"):
        aurelis_core.config.config_from_table(namespace["SlowLogConfig"], {"threshold": 0}, "t")


# --- per-request state -------------------------------------------------------------------------------------------


def context() -> api.RequestContext:
    return api.RequestContext(None, None, httpx, False, api.RequestControls())


def test_state_keys_are_typed_slots_that_never_collide() -> None:
    first = api.StateKey[int]("counter")
    second = api.StateKey[int]("counter")  # the same name: still another key
    ctx = context()
    assert first.get(ctx) is None and first.get(ctx, 0) == 0
    first.set(ctx, 1)
    assert (first.get(ctx), second.get(ctx)) == (1, None)
    assert second.setdefault(ctx, 5) == 5 and second.setdefault(ctx, 7) == 5
    ctx.state["counter"] = "a plugin's own string key"  # a plugin keyed by name is untouched too
    assert (first.pop(ctx), first.get(ctx), second.get(ctx), ctx.state["counter"]) == (
        1, None, 5, "a plugin's own string key"
    )
    assert first.pop(ctx, -1) == -1
    assert "counter" in repr(first)


def test_a_type_checker_holds_plugins_to_the_api(tmp_path: Path) -> None:
    """What the Protocol and the typed keys are for: mypy (strict) flags a plugin that stores the wrong type under
    a key or reaches for the pipeline's internals, and types what a key gives back."""
    from mypy import api as mypy

    plugin = tmp_path / "plugin.py"
    plugin.write_text(textwrap.dedent("""\
        from aurelis_core.plugin import Pipeline, RequestContext, StateKey

        KEY = StateKey[float]("k")

        def hook(ctx: RequestContext, pipeline: Pipeline) -> None:
            reveal_type(KEY.get(ctx))
            reveal_type(KEY.setdefault(ctx, 1.0))
            KEY.set(ctx, "not a float")
            pipeline.pm.get_plugin("memory")
            reveal_type(pipeline.tenant)
    """))
    out, _, _ = mypy.run(["--strict", "--no-error-summary", "--cache-dir", str(tmp_path / "cache"), str(plugin)])
    lines = [line.split(": ", 1)[1] for line in out.splitlines()]
    assert lines == [
        'note: Revealed type is "float | None"',
        'note: Revealed type is "float"',
        'error: Argument 2 to "set" of "StateKey" has incompatible type "str"; expected "float"  [arg-type]',
        'error: "Pipeline" has no attribute "pm"  [attr-defined]',
        'note: Revealed type is "aurelis_core._tenant.Tenant"',
    ], out


# --- the pipeline as plugins see it ------------------------------------------------------------------------------


def test_the_pipeline_keeps_the_protocol_plugins_are_written_against(tmp_path: Path) -> None:
    pipeline = Pipeline({"plugins": ["normalize", "memory", "sqlite"], "sqlite": {"path": str(tmp_path / "c.db")}})
    assert isinstance(pipeline, api.Pipeline)
    memory, sqlite = pipeline.cache_tiers()
    assert pipeline.tiers == ("memory", "sqlite")
    assert (memory, sqlite) == (pipeline.plugin("memory"), pipeline.plugin("sqlite"))
    # What each built-in tier offers, as the parts that rely on it see it.
    assert isinstance(memory, api.WarmTarget) and isinstance(memory, api.ShrinkableTier)
    assert not isinstance(memory, api.CacheTier)  # it lives and dies with the process: nothing to manage
    assert isinstance(sqlite, api.CacheTier) and isinstance(sqlite, api.WarmTarget)
    assert not isinstance(sqlite, api.ShrinkableTier)
    pipeline.close()


# --- the boundary ------------------------------------------------------------------------------------------------

#: What plugins may import of aurelis_core; tests may also use the testing helpers.
ALLOWED = {"aurelis_core", "aurelis_core.plugin"}
ALLOWED_IN_TESTS = ALLOWED | {"aurelis_core.testing"}


def boundary_violations(source: str, where: str, allowed: set[str]) -> list[str]:
    """``"<where>:<line>: <what>"`` for every import of an ``aurelis_core`` module outside ``allowed``, anywhere in
    ``source`` (lazy imports in functions too), and every ``from aurelis_core import <submodule>``; by line."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "aurelis_core" and alias.name not in allowed:
                    found.append((node.lineno, f"import {alias.name}"))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            module = node.module
            if module.split(".")[0] != "aurelis_core":
                continue
            if module not in allowed:
                found.append((node.lineno, f"from {module} import ..."))
            elif module == "aurelis_core":
                for alias in node.names:
                    if alias.name not in aurelis_core.__all__ and f"aurelis_core.{alias.name}" not in allowed:
                        found.append((node.lineno, f"from aurelis_core import {alias.name}"))
    return [f"{where}:{line}: {what}" for line, what in sorted(found)]


def plugin_sources() -> Iterator[tuple[Path, set[str]]]:
    for path in sorted((ROOT / "plugins").rglob("*.py")):
        yield path, ALLOWED
    for package in sorted((ROOT / "contrib").iterdir()):
        for path in sorted((package / "src").rglob("*.py")):
            yield path, ALLOWED
        for folder in ("tests", "bench"):
            for path in sorted((package / folder).rglob("*.py")):
                yield path, ALLOWED_IN_TESTS


def test_plugins_and_contrib_import_only_the_plugin_api() -> None:
    """First-party plugins and contrib packages import ``aurelis_core`` and ``aurelis_core.plugin``, nothing else
    of the core (tests may add ``aurelis_core.testing``): what a third party can rely on is what they use."""
    sources = list(plugin_sources())
    assert len(sources) > 30  # the walk found the trees
    violations = [
        v for path, allowed in sources
        for v in boundary_violations(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)), allowed)
    ]
    assert violations == [], "imports outside the plugin API:\n" + "\n".join(violations)


def test_the_boundary_check_sees_every_kind_of_import() -> None:
    source = textwrap.dedent("""\
        from aurelis_core import hookimpl, health
        from aurelis_core.plugin import Tenant
        import aurelis_core.plugin
        import aurelis_core._compat
        def lazy():
            from aurelis_core.stats import usage_tokens
        from aurelis_core.testing import serve
        from aurelis_core import testing
    """)
    assert boundary_violations(source, "x.py", ALLOWED) == [
        "x.py:1: from aurelis_core import health",
        "x.py:4: import aurelis_core._compat",
        "x.py:6: from aurelis_core.stats import ...",
        "x.py:7: from aurelis_core.testing import ...",
        "x.py:8: from aurelis_core import testing",
    ]
    assert boundary_violations(source, "x.py", ALLOWED_IN_TESTS) == [
        "x.py:1: from aurelis_core import health",
        "x.py:4: import aurelis_core._compat",
        "x.py:6: from aurelis_core.stats import ...",
    ]


# --- a third-party distribution ----------------------------------------------------------------------------------

THIRD_PARTY = '''
"""A third-party distribution of plugins, as a user installs it: a router and three cache tiers."""

import json
import os

import attrs

from aurelis_core.plugin import CacheEntry, file_path, hookimpl


class Nearest:
    """Always the first endpoint."""

    name = "nearest"

    def __init__(self, config, pipeline):
        self.endpoints = pipeline.endpoints

    @hookimpl
    def aurelis_route(self, ctx):
        return self.endpoints[0]


class DictTier:
    """Entries in a dict of this process: it can ``put``, so warming fills it."""

    name = "dict_tier"

    def __init__(self, config, pipeline):
        self.entries = {}

    @hookimpl
    def aurelis_cache_get(self, ctx):
        return self.entries.get(ctx.key)

    @hookimpl
    def aurelis_cache_set(self, ctx, entry, promote):
        self.put(ctx.key, entry)

    def put(self, key, entry):
        self.entries[key] = entry
        return True


@attrs.frozen
class JsonTierConfig:
    path: str = attrs.field(validator=file_path)


class JsonTier:
    """Entries in a JSON file: managed from outside the process, by ``aurelis cache``."""

    name = "json_tier"
    Config = JsonTierConfig
    max_entry_bytes = None

    def __init__(self, config, pipeline):
        self.path = config.path

    def _load(self):
        if not os.path.exists(self.path):
            return {}
        with open(self.path) as file:
            return json.load(file)

    def _save(self, data):
        with open(self.path, "w") as file:
            json.dump(data, file)

    @hookimpl
    def aurelis_cache_get(self, ctx):
        found = self._load().get(ctx.key)
        if found is None:
            return None
        status, body, hits = found
        return CacheEntry(status, [(b"content-type", b"application/json")], body.encode("latin-1"), hits=hits)

    @hookimpl
    def aurelis_cache_set(self, ctx, entry, promote):
        self.put(ctx.key, entry)

    def put(self, key, entry):
        data = self._load()
        data[key] = [entry.status_code, entry.body.decode("latin-1"), entry.hits]
        self._save(data)
        return True

    def top(self, count):
        data = sorted(self._load().items(), key=lambda item: -item[1][2])[:count]
        return [(key, CacheEntry(status, [], body.encode("latin-1"), hits=hits)) for key, (status, body, hits) in data]

    def stats(self):
        return {"entries": len(self._load())}

    def clear(self):
        count = len(self._load())
        self._save({})
        return count


class StatsOnly:
    """A tier with figures but nothing to manage it by: not a CacheTier."""

    name = "stats_only"

    def __init__(self, config, pipeline):
        pass

    @hookimpl
    def aurelis_cache_get(self, ctx):
        return None

    def stats(self):
        return {"entries": 0}
'''

ENTRY_POINTS = """[aurelis]
nearest = aurelis_thirdparty_example:Nearest
dict_tier = aurelis_thirdparty_example:DictTier
json_tier = aurelis_thirdparty_example:JsonTier
stats_only = aurelis_thirdparty_example:StatsOnly
"""


@pytest.fixture
def third_party(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A distribution of third-party plugins on ``sys.path``, found through its ``aurelis`` entry points exactly as
    an installed one (a ``.dist-info`` with ``entry_points.txt``), without touching the environment."""
    site = tmp_path / "site"
    (site / "aurelis_thirdparty_example").mkdir(parents=True)
    (site / "aurelis_thirdparty_example" / "__init__.py").write_text(THIRD_PARTY)
    info = site / "aurelis_thirdparty_example-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: aurelis-thirdparty-example\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(site))
    yield site
    sys.modules.pop("aurelis_thirdparty_example", None)


def test_the_router_hint_names_every_router_that_can_be_enabled(third_party: Path) -> None:
    """Two endpoints and no router: the error lists the built-in routers and any installed third-party one."""
    endpoints = ["http://127.0.0.1:1", "http://127.0.0.1:2"]
    with pytest.raises(ConfigError) as raised:
        Pipeline({"endpoints": endpoints})
    hint = str(raised.value).partition("choose one of: ")[2]
    assert hint.split(", ") == [
        "round_robin", "least_connections", "weighted_response_time", "load_based", "ai_optimized", "nearest",
    ]
    pipeline = Pipeline({"plugins": ["nearest"], "endpoints": endpoints})  # and it is one
    assert isinstance(pipeline.plugin("nearest"), api.Router)
    pipeline.close()


# --- failed endpoints: retry policies and routers, through the core ----------------------------------------------


class RetryElsewhere:
    """A third-party retry policy: a 400 may be one deployment's limit (a shorter context window), so it is tried
    once on another endpoint. It tells routers through the core's record, not through anything of its own."""

    name = "retry_elsewhere"

    @api.hookimpl
    def aurelis_retry(self, ctx: api.RequestContext, attempt: api.Attempt) -> float | None:
        if attempt.number > 1 or attempt.endpoint is None:
            return None
        api.FAILED_ENDPOINTS.setdefault(ctx, set()).add(attempt.endpoint.name)
        return 0.0


def two_endpoints(first: SimulatedServer, second: SimulatedServer) -> list[dict[str, Any]]:
    # Round robin by weight: 'first' takes ~99% of the picks, so only a record of its failure moves a retry.
    return [{"url": first.base_url, "name": "first", "weight": 100}, {"url": second.base_url, "name": "second"}]


def test_routers_avoid_what_any_retry_policy_records(upstream_factory: Callable[..., SimulatedServer]) -> None:
    first, second = upstream_factory(fail_next=1, failure_status=400), upstream_factory()
    pipeline = Pipeline(
        {"plugins": ["round_robin"], "round_robin": {"seed": 1}, "endpoints": two_endpoints(first, second)},
        plugins=[RetryElsewhere()],
    )
    with pipeline.instrument(httpx.Client(base_url=first.base_url)) as client:
        assert client.post("/chat/completions", json=BODY).status_code == 200
    pipeline.close()
    # A 400 is not the endpoint's fault by the routers' own rule: only the policy's record sent the retry away.
    assert (first.count("/chat/completions"), second.count("/chat/completions")) == (1, 1)


def test_a_retried_conflict_goes_to_another_endpoint(upstream_factory: Callable[..., SimulatedServer]) -> None:
    """The retry plugin retries a 409 (a busy resource), which routers alone would not hold against the endpoint:
    its record of the failure reaches them through the core."""
    first, second = upstream_factory(fail_next=1, failure_status=409), upstream_factory()
    pipeline = Pipeline({
        "plugins": ["round_robin", "retry"], "round_robin": {"seed": 1}, "retry": {"base": 0.0, "cap": 0.0},
        "endpoints": two_endpoints(first, second),
    })
    with pipeline.instrument(httpx.Client(base_url=first.base_url)) as client:
        assert client.post("/chat/completions", json=BODY).status_code == 200
    pipeline.close()
    assert (first.count("/chat/completions"), second.count("/chat/completions")) == (1, 1)


# --- what plugins find in each other: capabilities, not names ----------------------------------------------------


def test_warming_fills_the_first_tier_that_can_take_entries(
    third_party: Path, upstream: SimulatedServer, tmp_path: Path
) -> None:
    """Not a tier named 'memory': the first tier before the warming one that can ``put``."""
    sqlite = {"path": str(tmp_path / "c.sqlite3")}
    pipeline = Pipeline({"plugins": ["normalize", "sqlite"], "sqlite": sqlite})
    with pipeline.instrument(httpx.Client()) as client:
        for n in range(2):
            client.post(upstream.base_url + "/chat/completions", json=chat(n))
    pipeline.close()  # writes the queue out

    pipeline = Pipeline({
        "plugins": ["normalize", "stats_only", "dict_tier", "sqlite"],
        "sqlite": {**sqlite, "warm": {"on_start": True}},
    })
    pipeline.start()
    assert len(pipeline.plugin("dict_tier").entries) == 2  # stats_only cannot take any: the next one did
    with pipeline.instrument(httpx.Client()) as client:
        response = client.post(upstream.base_url + "/chat/completions", json=chat(1))
    assert response.headers["x-aurelis-cache-tier"] == "dict_tier"
    pipeline.close()
    assert upstream.count("/chat/completions") == 2


def test_warming_never_fills_a_tier_asked_after_the_one_warming(
    third_party: Path, upstream: SimulatedServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sqlite = {"path": str(tmp_path / "c.sqlite3")}
    pipeline = Pipeline({"plugins": ["normalize", "sqlite"], "sqlite": sqlite})
    with pipeline.instrument(httpx.Client()) as client:
        client.post(upstream.base_url + "/chat/completions", json=chat(0))
    pipeline.close()
    pipeline = Pipeline(
        {"plugins": ["normalize", "sqlite", "dict_tier"], "sqlite": {**sqlite, "warm": {"on_start": True}}}
    )
    with caplog.at_level(logging.WARNING, logger="aurelis"):
        pipeline.start()
    assert pipeline.plugin("dict_tier").entries == {}
    assert any("no tier listed before it" in r.getMessage() for r in caplog.records)
    pipeline.close()


class ByteTier:
    """A third-party in-process tier bounded by bytes, that can give memory back (a ShrinkableTier)."""

    name = "byte_tier"

    def __init__(self, budget: int) -> None:
        self.entries: dict[str, api.CacheEntry] = {}
        self.budget = budget

    @property
    def currsize(self) -> int:
        return sum(entry.size for entry in self.entries.values())

    @api.hookimpl
    def aurelis_cache_get(self, ctx: api.RequestContext) -> api.CacheEntry | None:
        return self.entries.get(ctx.key or "")

    @api.hookimpl
    def aurelis_cache_set(self, ctx: api.RequestContext, entry: api.CacheEntry, promote: bool) -> None:
        if self.currsize + entry.size <= self.budget:
            self.entries[ctx.key or ""] = entry

    def shrink(self, fraction: float) -> int:
        before = self.currsize
        self.budget = int(before * (1 - fraction))
        while self.entries and self.currsize > self.budget:
            self.entries.pop(next(iter(self.entries)))
        return before - self.currsize


def test_memory_relief_shrinks_any_tier_that_can_give_memory_back(upstream: SimulatedServer) -> None:
    tier = ByteTier(budget=10_000)
    for n in range(4):
        tier.entries[f"k{n}"] = api.CacheEntry(200, [], b"x" * 1000)
    pipeline = Pipeline(
        {"plugins": ["normalize", "tuner"], "tuner": {"max_rss_bytes": 1, "shrink_fraction": 0.5}}, plugins=[tier]
    )
    with pipeline.instrument(httpx.Client()) as client:  # the first attempt's end checks the resident size
        client.post(upstream.base_url + "/chat/completions", json=BODY)
    pipeline.close()
    (change,) = [c for c in pipeline.plugin("tuner").changes if c.kind == "memory_shrink"]
    assert (change.target, change.old, change.new) == ("byte_tier", 10_000, 2000)
    assert len(tier.entries) == 2 and tier.currsize == 2000
    assert "freed 2000 bytes" in change.reason


def test_aurelis_cache_manages_any_tier_that_keeps_the_protocol(
    third_party: Path, upstream: SimulatedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    toml = tmp_path / "aurelis.toml"
    toml.write_text(
        'plugins = ["normalize", "memory", "stats_only", "json_tier"]\n'
        f'[json_tier]\npath = "{tmp_path / "tier.json"}"\n'
    )
    pipeline = Pipeline(toml)
    with pipeline.instrument(httpx.Client()) as client:
        for n in range(3):
            client.post(upstream.base_url + "/chat/completions", json=chat(n))
    pipeline.close()
    assert cli_main(["cache", "stats", "--json", "--config", str(toml)]) == 0
    # memory lives in the application's process, stats_only has nothing to manage it by: neither is listed.
    assert json.loads(capsys.readouterr().out) == {"json_tier": {"entries": 3}}
    assert cli_main(["cache", "clear", "--config", str(toml)]) == 0
    assert capsys.readouterr().out == "json_tier: deleted 3 entries\n"
