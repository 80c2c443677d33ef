"""httpx's, the openai SDK's and the anthropic SDK's own test suites pass with every client instrumented.

With no plugins, an instrumented client must behave exactly like the raw one. The strongest check of that is
the test suites of the projects our wrapper sits between, which know every corner of their clients: each
suite runs twice from its release archive (the sdist, at the version installed here), once plain and once
with ``httpx.Client``/``AsyncClient`` and ``httpx2.Client``/``AsyncClient`` patched to end their ``__init__``
with ``aurelis_core.instrument(self, config)`` (``tests/peer_suites/aurelis_instrument_all.py``), and every test
that passes plain must pass instrumented. The only exceptions are tests that assert the concrete class or the
identity of a client's transport, which a wrapper cannot keep; they are listed by name below, with the reason.

The archives are downloaded by ``.ci/run`` into ``.peer-suites/`` (git-ignored)::

    python3 -m pip download --no-binary :all: --no-deps httpx==0.28.1 openai==3.57.0 anthropic==2.16.0 \
        -d .peer-suites

Without them these tests are skipped, unless ``AURELIS_REQUIRE_PEER_SUITES=1`` (set by ``.ci/run``) turns the
skip into a failure. A test that fails instrumented is run again in both modes before it counts: one that
then passes instrumented (and still passes plain) was a flaky test of the peer suite, not a regression.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARCHIVES = ROOT / ".peer-suites"
HARNESS = Path(__file__).resolve().parent / "peer_suites"
REQUIRED = os.environ.get("AURELIS_REQUIRE_PEER_SUITES") == "1"

#: A test "passes" in either of these outcomes; anything else after a plain pass is a regression.
PASSING = {"passed"}

Outcomes = dict[str, str]


@dataclass(frozen=True)
class Suite:
    distribution: str
    version: str
    #: The folder of the archive's own package source, left out so that the installed package is the one tested.
    source_dir: str
    #: pytest arguments after the harness's own.
    args: tuple[str, ...]
    #: The plain run of the suite must pass at least this many tests (a broken environment must not pass as
    #: "no regressions" with nothing run).
    min_passed: int
    #: Configs of the instrumented runs.
    configs: tuple[dict[str, Any], ...]
    #: test function name -> why it cannot pass through a wrapping transport.
    allowed: dict[str, str] = field(default_factory=dict)
    #: The test modules to run, from the extracted archive (None: the whole suite).
    select: Callable[[Path], list[str]] | None = None
    #: Whether the runs may go at the same time (httpx's suite serves on a fixed port, 8000: it may not).
    concurrent: bool = True

    @property
    def archive(self) -> Path:
        return ARCHIVES / f"{self.distribution}-{self.version}.tar.gz"


HTTPX_TRANSPORT_CLASS = (
    "asserts isinstance(client._transport_for_url(url), httpx.HTTPTransport): the wrapper is not one"
)

HTTPX = Suite(
    distribution="httpx",
    version="0.28.1",
    source_dir="httpx",
    # filterwarnings=error in httpx's config turns pytest-asyncio's configuration warning into an error; httpx's
    # async tests run on anyio's plugin, so the plugins it does not use are left out.
    args=("-p", "no:asyncio", "-p", "no:inline_snapshot"),
    min_passed=1300,
    configs=({},),
    allowed={
        "tests/client/test_proxies.py::test_transport_for_request": HTTPX_TRANSPORT_CLASS
        + " (and `transport is client._transport` for the unmatched URLs, which does pass)",
        "tests/client/test_proxies.py::test_socks_proxy": HTTPX_TRANSPORT_CLASS,
        "tests/client/test_proxies.py::test_proxy_with_mounts": "asserts the mounted transport object itself is "
        "returned (`transport == proxy_transport`): the client holds its wrapper",
    },
    concurrent=False,
)

#: The openai SDK's test modules that run under an instrumented client in a way of their own: the tests of its
#: HTTP layer, which is what the wrapper sits in (its client: ``test_client*``, ``test_module_client``; the
#: HTTP libraries it runs on: ``test_httpx*``; its transports with TLS, mTLS and x509 workload identity, which
#: build clients on forwarding transports: ``test_tls*``, ``test_mtls*``, ``test_x509*``; the Vertex
#: provider's transport: ``lib/test_vertex*``; the response and stream objects it makes of what a transport
#: returns: ``test_response``, ``test_legacy_response``, ``test_streaming``), and every module that sends
#: requests through the SDK's own client to its HTTP mock (``respx2``: chat, streams, files, Azure, Bedrock,
#: auth...): ~1,800 tests. The other ~11,400 run the same clients over MockTransports to test API features on
#: canned answers (tool runners, parsers, websockets, packaging), a path these modules already take; all of
#: them three times (plain, no plugins, normalize) measured ~8 CPU-minutes a run here, past this check's budget.
OPENAI_HTTP_LAYER = re.compile(
    r"tests/(lib/)?test_(client\w*|module_client|httpx\w*|tls\w*|mtls\w*|x509\w*|vertex\w*"
    r"|response|legacy_response|streaming)\.py"
)
OPENAI_HTTP_MOCK = re.compile(r"\brespx2\b")


def openai_modules(root: Path) -> list[str]:
    selected = []
    for path in (root / "tests").rglob("test_*.py"):
        name = str(path.relative_to(root))
        if "/respx2/" in name or "/api_resources/" in name:
            continue
        if OPENAI_HTTP_LAYER.fullmatch(name) or OPENAI_HTTP_MOCK.search(path.read_text(encoding="utf-8")):
            selected.append(name)
    return sorted(selected)


OPENAI_TRANSPORT_IDENTITY = (
    "asserts `http_client._transport is transport`, the MockTransport the test built the client with, to show "
    "the SDK put it back: the client holds its wrapper (whose .inner it is)"
)

OPENAI_TRANSPORT_MODULE = (
    "counts open connections with a helper that asserts the client's transport is an httpx2.HTTPTransport or "
    "that `type(transport).__module__ == 'httpx2'`: the client holds the wrapper, a class of aurelis_core"
)

OPENAI = Suite(
    distribution="openai",
    version="3.57.0",
    source_dir="src",
    # -n 0: one process per run; the runs go side by side. (tests/api_resources, which needs the SDK's mock API
    # server, is outside the selection: the SDK's own setup cannot run it without that server either.)
    args=("-n", "0"),
    min_passed=1000,
    configs=({}, {"plugins": ["normalize"]}),
    allowed={
        "tests/test_x509_workload_identity.py::test_sync_x509_does_not_mutate_or_independently_close_caller_transport":
        OPENAI_TRANSPORT_IDENTITY,
        "tests/test_x509_workload_identity.py::test_async_x509_does_not_mutate_or_independently_close_caller_transport":
        OPENAI_TRANSPORT_IDENTITY,
        "tests/test_x509_workload_identity_transport.py::"
        "test_sync_x509_preserves_mounted_transports_and_restores_caller_configuration": OPENAI_TRANSPORT_IDENTITY,
        "tests/test_x509_workload_identity_transport.py::"
        "test_async_x509_preserves_mounted_transports_and_restores_caller_configuration": OPENAI_TRANSPORT_IDENTITY,
        "tests/test_client.py::TestOpenAI::test_retrying_status_errors_doesnt_leak": OPENAI_TRANSPORT_MODULE,
        "tests/test_client.py::TestOpenAI::test_retrying_timeout_errors_doesnt_leak": OPENAI_TRANSPORT_MODULE,
        "tests/test_client.py::TestAsyncOpenAI::test_retrying_status_errors_doesnt_leak": OPENAI_TRANSPORT_MODULE,
        "tests/test_client.py::TestAsyncOpenAI::test_retrying_timeout_errors_doesnt_leak": OPENAI_TRANSPORT_MODULE,
    },
    select=openai_modules,
)


#: The anthropic SDK's HTTP layer (its client, middleware, header handling, responses and streams, and the
#: Bedrock, AWS and Azure clients that sign or route its requests) and its streaming and refusal-fallback
#: helpers, all on its HTTP mock (respx): ~1,000 tests. The rest of its suite runs tool runners, threads and
#: telemetry over the same clients (~5,700 more outside `api_resources`, which needs its mock server; ~5x the
#: time: run once with `normalize`, they showed no regression either).
ANTHROPIC_MODULES = (
    "tests/test_client.py",
    "tests/test_streaming.py",
    "tests/test_middleware.py",
    "tests/test_header_case_sensitivity.py",
    "tests/test_response.py",
    "tests/lib/streaming/test_messages.py",
    "tests/lib/streaming/test_beta_messages.py",
    "tests/lib/test_bedrock.py",
    "tests/lib/test_aws.py",
    "tests/lib/test_azure.py",
    "tests/lib/test_refusal_fallback.py",
    "tests/lib/test_refusal_fallback_streaming.py",
    "tests/lib/_parse/test_messages.py",
)

ANTHROPIC_TRANSPORT_CLASS = (
    "asserts isinstance(client._transport_for_url(url), httpx2.HTTPTransport) to read its pool's proxy: the "
    "client holds the wrapper (whose .inner it is)"
)
ANTHROPIC_TRANSPORT_MODULE = (
    "counts open connections with a helper that asserts the client's transport is an httpx2.HTTPTransport: "
    "the client holds the wrapper"
)

ANTHROPIC = Suite(
    distribution="anthropic",
    version="2.16.0",
    source_dir="src",
    args=("-n", "0"),
    min_passed=1000,
    configs=({}, {"plugins": ["normalize"]}),
    allowed={
        "tests/test_client.py::test_default_client_proxy_arguments_beat_environment": ANTHROPIC_TRANSPORT_CLASS,
        "tests/test_client.py::TestAnthropic::test_retrying_status_errors_doesnt_leak": ANTHROPIC_TRANSPORT_MODULE,
        "tests/test_client.py::TestAnthropic::test_retrying_timeout_errors_doesnt_leak": ANTHROPIC_TRANSPORT_MODULE,
        "tests/test_client.py::TestAsyncAnthropic::test_retrying_status_errors_doesnt_leak":
        ANTHROPIC_TRANSPORT_MODULE,
        "tests/test_client.py::TestAsyncAnthropic::test_retrying_timeout_errors_doesnt_leak":
        ANTHROPIC_TRANSPORT_MODULE,
    },
    select=lambda root: [module for module in ANTHROPIC_MODULES if (root / module).exists()],
)


# --- running a suite -----------------------------------------------------------------------------------------


def prepared(suite: Suite, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The suite's archive extracted (without its package source), or a skip/failure saying why not."""
    if not suite.archive.exists():
        reason = (
            f"{suite.archive.relative_to(ROOT)} is missing; .ci/run downloads it "
            f"(python3 -m pip download --no-binary :all: --no-deps {suite.distribution}=={suite.version} "
            f"-d .peer-suites)"
        )
        if REQUIRED:
            pytest.fail(reason + " and AURELIS_REQUIRE_PEER_SUITES=1 requires it")
        pytest.skip(reason)
    installed = installed_version(suite.distribution)
    if installed != suite.version:
        pytest.fail(
            f"{suite.distribution} {installed} is installed but the suite is of {suite.version}: "
            "update the pinned version here and in .ci/run together"
        )
    root = tmp_path_factory.mktemp(suite.distribution)
    top = f"{suite.distribution}-{suite.version}/"
    skipped = top + suite.source_dir + "/"
    with tarfile.open(suite.archive) as archive:
        members = []
        for member in archive.getmembers():
            if not member.name.startswith(top) or member.name.startswith(skipped):
                continue
            member.name = member.name[len(top):]
            if member.name:
                members.append(member)
        archive.extractall(root, members=members, filter="data")
    return root


def start(root: Path, suite: Suite, config: dict[str, Any] | None, name: str, targets: Sequence[str]) -> Any:
    """Start one run of ``suite`` (``config`` None: plain); returns (process, report path, log path)."""
    report, log = root / f"{name}.json", root / f"{name}.log"
    env = {
        key: value for key, value in os.environ.items()
        if not key.startswith("PYTEST_") and key not in ("AURELIS_CONFIG", "AURELIS_DISABLE_PLUGINS")
    }
    env["PYTHONPATH"] = str(HARNESS)
    env["AURELIS_PEER_REPORT"] = str(report)
    if config is not None:
        env["AURELIS_PEER_CONFIG"] = json.dumps(config)
    command = [
        sys.executable, "-m", "pytest", "-p", "aurelis_instrument_all", "-p", "no:cacheprovider", "-q",
        *suite.args, *targets,
    ]
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    return process, report, log


def run_all(root: Path, suite: Suite, runs: dict[str, dict[str, Any] | None], targets: Sequence[str]) -> dict[
    str, Outcomes
]:
    """Run each of ``runs`` (name -> config) and return each one's outcomes."""
    results: dict[str, Outcomes] = {}
    started: list[tuple[str, Any]] = []
    for name, config in runs.items():
        started.append((name, start(root, suite, config, name, targets)))
        if not suite.concurrent:
            results[name] = finish(*started.pop()[1])
    for name, handle in started:
        results[name] = finish(*handle)
    return results


def finish(process: subprocess.Popen[bytes], report: Path, log: Path) -> Outcomes:
    process.wait(timeout=1500)
    if not report.exists():
        pytest.fail(f"the run wrote no report (exit {process.returncode}):\n{log.read_text()[-4000:]}")
    return {nodeid: outcome for nodeid, (outcome, _) in json.loads(report.read_text()).items()}


def function_of(nodeid: str) -> str:
    return nodeid.partition("[")[0]


def compare(root: Path, suite: Suite) -> None:
    began = time.perf_counter()
    targets = suite.select(root) if suite.select is not None else []
    runs: dict[str, dict[str, Any] | None] = {"plain": None}
    runs.update({f"instrumented-{i}": config for i, config in enumerate(suite.configs)})
    results = run_all(root, suite, runs, targets)
    plain = results.pop("plain")
    passed = sorted(n for n, outcome in plain.items() if outcome in PASSING)
    assert len(passed) >= suite.min_passed, f"only {len(passed)} tests passed plain: is the environment complete?"
    problems = []
    for (name, instrumented), config in zip(results.items(), suite.configs, strict=True):
        candidates = [
            n for n in passed if instrumented.get(n) not in PASSING and function_of(n) not in suite.allowed
        ]
        if candidates:
            # Once more in both modes: a peer test that fails now and then (timing, ports) is not ours.
            again = run_all(root, suite, {"plain-again": None, f"{name}-again": config}, candidates)
            candidates = [
                n for n in candidates
                if again["plain-again"].get(n) in PASSING and again[f"{name}-again"].get(n) not in PASSING
            ]
        if candidates:
            listed = "\n".join(f"  {n}: {instrumented.get(n, 'not run')}" for n in candidates)
            problems.append(
                f"{len(candidates)} of {len(passed)} tests that pass plain fail with config {config}:\n{listed}\n"
                f"(log: {root / (name + '.log')})"
            )
    assert not problems, "\n".join(problems)
    # Kept in the test's output (shown with -rA or on failure) to track the suite's cost in CI.
    print(f"{suite.distribution} {suite.version}: {len(passed)} passing tests, {len(targets) or 'all'} modules, "
          f"{len(suite.configs)} instrumented run(s), {time.perf_counter() - began:.0f} s")


def test_httpx_suite_passes_with_every_client_instrumented(tmp_path_factory: pytest.TempPathFactory) -> None:
    compare(prepared(HTTPX, tmp_path_factory), HTTPX)


def test_openai_sdk_suite_passes_with_every_client_instrumented(tmp_path_factory: pytest.TempPathFactory) -> None:
    compare(prepared(OPENAI, tmp_path_factory), OPENAI)


def test_anthropic_sdk_suite_passes_with_every_client_instrumented(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    compare(prepared(ANTHROPIC, tmp_path_factory), ANTHROPIC)
