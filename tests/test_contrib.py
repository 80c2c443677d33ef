"""The contrib/ packages as a third party's users meet them: installed, found through entry points, enabled
by name, blocked by ``AURELIS_DISABLE_PLUGINS``, and passing their own test suites.

The packages are installed (``pip install --no-deps``) into a temporary directory added to ``sys.path`` for
this module, not into the running environment: their ``.dist-info`` there carries the ``aurelis`` entry
points, so discovery works exactly as for an installed distribution, and the user's venv is left untouched.
Their dependencies (numpy, sentence-transformers and the MiniLM weights, opentelemetry-sdk) come from the
``test`` extra.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aurelis_core import Pipeline, instrument, pipeline_of
from aurelis_core._plugins import discover_plugins
from aurelis_core.testing import SimulatedServer

CONTRIB = Path(__file__).resolve().parent.parent / "contrib"
#: distribution -> (entry point name, import package)
PACKAGES = {
    "aurelis-semantic": ("semantic", "aurelis_semantic"),
    "aurelis-otel": ("otel", "aurelis_otel"),
    "aurelis-plugin-template": ("request_counter", "aurelis_plugin_template"),
}


@pytest.fixture(scope="module")
def contrib_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory holding the installed contrib packages, on ``sys.path`` for this module's tests."""
    work = tmp_path_factory.mktemp("contrib")
    sources = []
    for dist in PACKAGES:
        # Built from a copy: building in place would leave build/ and *.egg-info in the checkout.
        source = shutil.copytree(CONTRIB / dist, work / "src" / dist,
                                 ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
        sources.append(str(source))
    site = work / "site"
    # --no-build-isolation builds with this environment's setuptools (the test extra has it): a private build
    # environment per package would cost ~15 s more.
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(site), *sources],
        check=True,
    )
    sys.path.insert(0, str(site))
    try:
        yield site
    finally:
        sys.path.remove(str(site))
        for name in [m for m in sys.modules if m.split(".")[0] in {pkg for _, pkg in PACKAGES.values()}]:
            del sys.modules[name]


def env_with(site: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return env


def test_cli_lists_them(contrib_site: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "aurelis_core.tools.cli", "plugins"],
        env=env_with(contrib_site), capture_output=True, text=True, check=True,
    ).stdout
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines() if line.strip()}
    for dist, (name, _) in PACKAGES.items():
        assert rows.get(name) == dist, out


def test_discovered_through_entry_points(contrib_site: Path) -> None:
    found = discover_plugins()
    for dist, (name, package) in PACKAGES.items():
        assert found[name].origin == dist
        assert found[name].load().__module__.startswith(package)


def test_enabled_by_name_from_config(contrib_site: Path) -> None:
    pipeline = Pipeline({
        "plugins": ["normalize", "memory", "semantic", "otel", "request_counter"],
        "semantic": {"backend": "hashing", "threshold": 0.85},
        "otel": {"attempt_spans": False},
    })
    for dist, (name, package) in PACKAGES.items():
        assert pipeline.plugin_origins[name] == dist
        assert type(pipeline.plugin(name)).__module__.startswith(package)
    assert pipeline.tiers == ("memory", "semantic")
    pipeline.close()


def test_blocked_by_env(contrib_site: Path, monkeypatch: pytest.MonkeyPatch, upstream: SimulatedServer) -> None:
    monkeypatch.setenv("AURELIS_DISABLE_PLUGINS", "semantic, request_counter")
    pipeline = Pipeline({"plugins": ["normalize", "memory", "semantic", "request_counter", "otel"]})
    assert pipeline.tiers == ("memory",)
    for name in ("semantic", "request_counter"):
        with pytest.raises(KeyError):
            pipeline.plugin(name)
    assert pipeline.plugin("otel") is not None
    with pipeline.instrument(httpx.Client()) as client:
        assert client.get(upstream.base_url + "/models").status_code == 200
    pipeline.close()


# --- the semantic tier, enabled from config, against the simulated upstream -------------------------------


@pytest.fixture
def semantic_client(contrib_site: Path) -> Iterator[httpx.Client]:
    # The hashing backend keeps these tests fast; the real MiniLM model runs in the package's own suite below.
    config = {"plugins": ["normalize", "memory", "semantic"], "semantic": {"backend": "hashing", "threshold": 0.85}}
    with instrument(httpx.Client(), config) as client:
        yield client


def ask(client: httpx.Client, upstream: SimulatedServer, text: str, key: str = "k1", system: str = "Be brief.") -> str:
    response = client.post(
        upstream.base_url + "/chat/completions",
        json={"model": "m", "messages": [{"role": "system", "content": system}, {"role": "user", "content": text}]},
        headers={"authorization": f"Bearer {key}"},
    )
    assert response.status_code == 200
    return f"{response.headers['x-aurelis-cache']} {response.headers.get('x-aurelis-cache-tier', '-')}"


def test_semantic_paraphrase_hits_near_miss_does_not(semantic_client: httpx.Client, upstream: SimulatedServer) -> None:
    assert ask(semantic_client, upstream, "How do I reset my password?") == "miss -"
    assert ask(semantic_client, upstream, "Please, how do I reset my password?") == "hit semantic"
    # Never promoted into memory: a fuzzy answer must not become the exact answer to the reworded question.
    assert ask(semantic_client, upstream, "Please, how do I reset my password?") == "hit semantic"
    assert ask(semantic_client, upstream, "How do I reset my password?") == "hit memory"
    assert ask(semantic_client, upstream, "How do I reset my username?") == "miss -"
    assert upstream.count("/chat/completions") == 2


@pytest.mark.redis
def test_a_semantic_hit_never_reaches_redis(contrib_site: Path, redis_flush: str, upstream: SimulatedServer) -> None:
    config = {"plugins": ["normalize", "memory", "redis", "semantic"], "redis": {"url": redis_flush, "codec": "none"},
              "semantic": {"backend": "hashing", "threshold": 0.85}}
    with instrument(httpx.Client(), config) as client:
        assert ask(client, upstream, "How do I reset my password?") == "miss -"
        assert ask(client, upstream, "Please, how do I reset my password?") == "hit semantic"
    # A new process on the same Redis: the exact answer is there, none for the reworded question.
    with instrument(httpx.Client(), config) as client:
        assert ask(client, upstream, "How do I reset my password?") == "hit redis"
        assert ask(client, upstream, "Please, how do I reset my password?") == "miss -"
    assert upstream.count("/chat/completions") == 2


def test_semantic_never_crosses_api_keys_or_system_prompts(
    semantic_client: httpx.Client, upstream: SimulatedServer
) -> None:
    assert ask(semantic_client, upstream, "How do I reset my password?") == "miss -"
    assert ask(semantic_client, upstream, "Please, how do I reset my password?", key="k2") == "miss -"
    assert ask(semantic_client, upstream, "Please, how do I reset my password?", system="Be verbose.") == "miss -"
    assert upstream.count("/chat/completions") == 3


def test_otel_from_config_uses_the_global_tracer_provider(contrib_site: Path, upstream: SimulatedServer) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider: Any = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # the global can be set once per process
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with instrument(httpx.Client(), {"plugins": ["normalize", "memory", "otel"]}) as client:
        assert pipeline_of(client) is not None
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        for _ in range(2):
            client.post(upstream.base_url + "/chat/completions", json=body)
    requests = [s for s in exporter.get_finished_spans() if s.attributes and "aurelis.cache.status" in s.attributes]
    assert [s.name for s in requests] == ["chat m", "chat m"]
    assert [s.attributes["aurelis.cache.status"] for s in requests] == ["miss", "hit"]
    exporter.shutdown()


@pytest.mark.parametrize("dist", list(PACKAGES))
def test_package_suite_passes_installed(contrib_site: Path, dist: str) -> None:
    """Each package's own tests, run by pytest in a fresh process against the installed package (the
    semantic suite includes the one test that loads the real MiniLM model)."""
    root = CONTRIB / dist
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", str(root / "pyproject.toml"),
         "--rootdir", str(root), str(root / "tests")],
        env=env_with(contrib_site), capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout
