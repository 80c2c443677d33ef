"""Logs an operator can live with, checked against real failures: a Redis port nobody listens on, loopback
upstreams that answer 500.

- one logger per component under ``aurelis`` (``aurelis.cache.redis``, ``aurelis.retry``, ``aurelis.router``,
  ``aurelis.breaker``...), and a ``NullHandler`` on ``aurelis``: a program that never configures logging
  prints nothing;
- an expected fault is one WARNING line naming the tier, where it connects and the error; its traceback is a
  DEBUG record; a bug keeps its traceback;
- no message repeats the ``aurelis:`` the logger's name already gives;
- DEBUG lines for every routing pick, retry, failover and breaker transition.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis

import aurelis_core
from aurelis_core import CacheEntry, Pipeline, RequestContext, hookimpl
from aurelis_core.plugin import describe_error, expected_fault
from aurelis_core.testing import SimulatedServer

BODY = {"model": "m", "messages": [{"role": "user", "content": "logs"}]}


def dead_port() -> int:
    """A loopback port nobody listens on (bound, then released: connecting to it is refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def aurelis_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "aurelis" or r.name.startswith("aurelis.")]


def redis_client(upstream: SimulatedServer, port: int) -> httpx.Client:
    config = {"plugins": ["normalize", "redis"], "redis": {"url": f"redis://:hunter2@127.0.0.1:{port}/0"}}
    return aurelis_core.instrument(httpx.Client(base_url=upstream.base_url, timeout=10), config)


# --- the root logger ---------------------------------------------------------------------------------------------


PROGRAM = textwrap.dedent("""
    import logging, sys, httpx, aurelis_core
    from aurelis_core.testing import simulated_upstream
    if sys.argv[2] == "configured":
        logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
    with simulated_upstream() as up:
        config = {"plugins": ["normalize", "redis"], "redis": {"url": f"redis://127.0.0.1:{sys.argv[1]}/0"}}
        client = aurelis_core.instrument(httpx.Client(base_url=up.base_url), config)
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        for _ in range(3):
            assert client.post("/chat/completions", json=body).status_code == 200
        client.close()
""")


def test_a_program_that_configures_no_logging_hears_nothing_from_aurelis() -> None:
    assert any(isinstance(h, logging.NullHandler) for h in logging.getLogger("aurelis").handlers)
    port = str(dead_port())
    silent = subprocess.run([sys.executable, "-c", PROGRAM, port, "silent"], capture_output=True, text=True,
                            timeout=60)
    assert silent.returncode == 0, silent.stderr
    assert "cache tier" not in silent.stderr and "Traceback" not in silent.stderr
    # The same program with logging configured does hear it, as one line per fault: the silence above is the
    # handler's doing, not a fault that went unlogged.
    loud = subprocess.run([sys.executable, "-c", PROGRAM, port, "configured"], capture_output=True, text=True,
                          timeout=60)
    assert loud.returncode == 0, loud.stderr
    lines = [line for line in loud.stderr.splitlines() if line.startswith("aurelis")]
    assert lines and all(line.startswith("aurelis.cache.redis WARNING cache tier 'redis'") for line in lines)
    assert "Traceback" not in loud.stderr


# --- expected faults: one line -------------------------------------------------------------------------------------


def test_a_refused_redis_is_one_warning_line_naming_tier_host_port_and_error(
    upstream: SimulatedServer, caplog: pytest.LogCaptureFixture
) -> None:
    port = dead_port()
    client = redis_client(upstream, port)
    with caplog.at_level(logging.WARNING, logger="aurelis"):
        for _ in range(3):
            assert client.post("/chat/completions", json=BODY).status_code == 200
        client.close()
    records = aurelis_records(caplog)
    assert records and all(r.exc_info is None and r.exc_text is None for r in records)
    [get] = [r for r in records if "failed on get" in r.getMessage()]
    message = get.getMessage()
    assert get.name == "aurelis.cache.redis" and get.levelno == logging.WARNING
    assert f"cache tier 'redis' at 127.0.0.1:{port} failed on get (1 so far)" in message
    assert "ConnectionError" in message and "refused" in message.lower()
    assert "\n" not in message
    assert "hunter2" not in caplog.text  # where it connects, never the URL's password
    assert not any(r.getMessage().lower().startswith("aurelis") for r in records)


def test_the_traceback_of_an_expected_fault_is_a_debug_record(
    upstream: SimulatedServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = redis_client(upstream, dead_port())
    with caplog.at_level(logging.DEBUG, logger="aurelis.cache.redis"):
        assert client.post("/chat/completions", json=BODY).status_code == 200
        client.close()
    with_traceback = [r for r in aurelis_records(caplog) if r.exc_info is not None]
    assert with_traceback and all(r.levelno == logging.DEBUG for r in with_traceback)
    assert any(issubclass(r.exc_info[0], redis.ConnectionError) for r in with_traceback)  # type: ignore[index,arg-type]


class BuggyTier:
    """A tier with a bug (not the outside world failing): its traceback is what a bug report needs."""

    name = "buggy"

    @hookimpl
    def aurelis_cache_get(self, ctx: RequestContext) -> CacheEntry | None:
        raise TypeError("unsupported operand")

    @hookimpl
    def aurelis_cache_set(self, ctx: RequestContext, entry: CacheEntry, promote: bool) -> None:
        return None


def test_a_bug_in_a_tier_keeps_its_traceback_at_warning(
    upstream: SimulatedServer, caplog: pytest.LogCaptureFixture
) -> None:
    pipeline = Pipeline({"plugins": ["normalize"]}, plugins=[BuggyTier()])
    client = pipeline.instrument(httpx.Client(timeout=10))
    with caplog.at_level(logging.WARNING, logger="aurelis"):
        assert client.post(upstream.url + "/v1/chat/completions", json=BODY).status_code == 200
    client.close()
    [record] = aurelis_records(caplog)
    assert record.name == "aurelis.cache.buggy" and record.levelno == logging.WARNING
    assert record.exc_info is not None and record.exc_info[0] is TypeError
    assert "cache tier 'buggy' failed on get" in record.getMessage()


def test_expected_faults_and_their_one_line_description() -> None:
    assert expected_fault(ConnectionRefusedError(111, "Connection refused"))
    assert expected_fault(redis.ConnectionError("Error 111 connecting to 127.0.0.1:1."))
    assert expected_fault(redis.TimeoutError("Timeout reading from socket"))
    assert expected_fault(httpx.ConnectError("refused"))
    assert not expected_fault(TypeError("x"))
    assert not expected_fault(KeyError("x"))
    assert describe_error(redis.ConnectionError("Error 111\n  connecting")) == "ConnectionError: Error 111 connecting"
    assert describe_error(TimeoutError()) == "TimeoutError"


# --- DEBUG: routing picks, retries, failovers, breaker transitions -------------------------------------------------


def debug_lines(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger and r.levelno == logging.DEBUG]


def test_picks_failovers_and_breaker_transitions_are_debug_lines(
    upstream_factory: Callable[..., SimulatedServer], caplog: pytest.LogCaptureFixture
) -> None:
    bad, good = upstream_factory(failure_rate=1.0), upstream_factory()
    config: dict[str, Any] = {
        "plugins": ["round_robin", "retry", "breaker"],
        "endpoints": [{"url": bad.base_url, "name": "bad"}, {"url": good.base_url, "name": "good"}],
        "retry": {"seed": 1},
        "breaker": {"consecutive_failures": 2},
    }
    client = aurelis_core.instrument(httpx.Client(base_url=bad.base_url, timeout=10), config)
    with caplog.at_level(logging.DEBUG, logger="aurelis"):
        for _ in range(6):
            assert client.post("/chat/completions", json=BODY).status_code == 200
    client.close()
    picks = debug_lines(caplog, "aurelis.router")
    assert any(line.startswith("round_robin: attempt 1 to bad (of 2 candidates") for line in picks)
    assert any(line.startswith("round_robin: attempt 2 to good") for line in picks)
    failovers = debug_lines(caplog, "aurelis.retry")
    assert failovers and all(line.startswith("failover: attempt 1 of POST /v1/chat/completions to bad failed "
                                             "(status 500); the next goes to another endpoint") for line in failovers)
    assert len(failovers) == bad.count("/chat/completions")
    breaker = [r for r in caplog.records if r.name == "aurelis.breaker"]
    assert [r.getMessage().split(" for ")[0] for r in breaker] == ["breaker closed -> open"]
    assert breaker[0].getMessage().startswith("breaker closed -> open for bad: 2 consecutive failures")


def test_a_retry_on_the_same_endpoint_and_a_refusal_are_debug_lines(
    upstream: SimulatedServer, caplog: pytest.LogCaptureFixture
) -> None:
    def client(deadline: float) -> httpx.Client:
        return aurelis_core.instrument(
            httpx.Client(base_url=upstream.base_url, timeout=10),
            {"plugins": ["retry"], "retry": {"base": 0.01, "cap": 0.01, "seed": 1, "deadline": deadline}},
        )

    patient, hasty = client(60.0), client(0.0)
    with caplog.at_level(logging.DEBUG, logger="aurelis.retry"):
        upstream.behavior.fail_next = 1
        assert patient.post("/chat/completions", json=BODY).status_code == 200
        upstream.behavior.fail_next = 1
        assert hasty.post("/chat/completions", json=BODY).status_code == 500
    patient.close()
    hasty.close()
    [retried, refused] = debug_lines(caplog, "aurelis.retry")
    assert retried.startswith(f"retry: attempt 1 of POST /v1/chat/completions to {upstream.url} failed "
                              "(status 500); trying again in 0.0")
    assert refused.startswith("not retrying attempt 1 of POST /v1/chat/completions (status 500): waiting ")
    assert refused.endswith("would pass the 0 s deadline")


def test_nothing_below_warning_reaches_a_warning_handler(
    upstream_factory: Callable[..., SimulatedServer], caplog: pytest.LogCaptureFixture
) -> None:
    """The DEBUG lines above cost nothing and say nothing at the level production runs at."""
    bad, good = upstream_factory(failure_rate=1.0), upstream_factory()
    config: dict[str, Any] = {
        "plugins": ["round_robin", "retry"],
        "endpoints": [{"url": bad.base_url, "name": "bad"}, {"url": good.base_url, "name": "good"}],
    }
    client = aurelis_core.instrument(httpx.Client(base_url=bad.base_url, timeout=10), config)
    with caplog.at_level(logging.WARNING, logger="aurelis"):
        for _ in range(4):
            assert client.post("/chat/completions", json=BODY).status_code == 200
    client.close()
    assert bad.count("/chat/completions") >= 1 and aurelis_records(caplog) == []


# --- where requests go ---------------------------------------------------------------------------------------------


def test_a_client_whose_requests_go_elsewhere_is_told_once(
    upstream: SimulatedServer, caplog: pytest.LogCaptureFixture
) -> None:
    config = {"plugins": [], "endpoints": [upstream.base_url]}
    pipeline = Pipeline(config)
    with caplog.at_level(logging.WARNING, logger="aurelis"):
        elsewhere = pipeline.instrument(httpx.Client(base_url="https://api.example/v1", timeout=10))
        pipeline.instrument(httpx.Client(base_url="https://api.example/v2"))  # the same host: said already
        pipeline.instrument(httpx.Client(base_url=upstream.base_url))  # an endpoint's own host: nothing to say
        assert elsewhere.post("/embeddings", json={"model": "e", "input": "x"}).status_code == 200
    host = upstream.url.removeprefix("http://")
    assert [(r.name, r.getMessage()) for r in aurelis_records(caplog)] == [
        ("aurelis.pipeline", f"requests the client addresses to api.example go to the configured endpoints "
                             f"instead: {host}")
    ]
    pipeline.close()


def test_a_connection_error_names_the_host_it_failed_to_reach() -> None:
    port = dead_port()
    config = {"plugins": [], "endpoints": [{"url": f"http://127.0.0.1:{port}/v1", "name": "local"}]}
    client = aurelis_core.instrument(httpx.Client(base_url=f"http://127.0.0.1:{port}/v1", timeout=10), config)
    with pytest.raises(httpx.ConnectError) as caught:
        client.post("/chat/completions", json=BODY)
    assert caught.value.__notes__ == [
        f"aurelis: POST http://127.0.0.1:{port}/v1/chat/completions (endpoint 'local') failed after 1 attempt"
    ]
    assert "aurelis" not in str(caught.value)  # the message callers may match is the transport's own
    client.close()
