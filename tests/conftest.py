"""Shared fixtures: a simulated OpenAI-compatible upstream, extra upstreams, and Redis.

Fixtures
--------
``anyio_backend``
    ``"asyncio"``; async tests are marked ``@pytest.mark.anyio``.
``upstream``
    The ``aurelis_upstream`` fixture of Aurelis's own pytest plugin (so the suite tests it
    too): a `SimulatedServer` running for the whole session, reset before each test:
    records, counters, the completion serial and all `Behavior` knobs start clean.  Use
    ``upstream.base_url`` as an OpenAI ``base_url``.
``upstream_factory``
    ``upstream_factory(**behavior) -> SimulatedServer`` starts further independent
    upstreams (multi-endpoint routing, failover...); all are stopped after the test.
``redis_url``
    URL of a Redis server for the session.  Without ``REDIS_URL`` in the environment a
    private ``redis-server`` is started on a free loopback port (never the machine's
    6379 server) and its database 0 is used.  With ``REDIS_URL`` set, that server is
    used, but always with database **15** (override with ``AURELIS_TEST_REDIS_DB``) so
    that flushing between tests cannot clobber data in the user's usual database.
    ``redis-server`` missing is a hard failure, not a skip: a silently skipped storage
    backend is how regressions ship.
``redis_flush``
    Function-scoped: ``FLUSHDB`` on the test database before the test, then yields the
    same URL as ``redis_url``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from aurelis_core.testing import SimulatedServer, simulated_upstream

_USER_REDIS_DB_DEFAULT = 15


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


# --------------------------------------------------------------------------- upstreams


@pytest.fixture
def upstream(aurelis_upstream: SimulatedServer) -> SimulatedServer:
    """The simulated upstream of Aurelis's own pytest plugin (``aurelis_upstream``), reset for this test."""
    return aurelis_upstream


@pytest.fixture
def upstream_factory() -> Iterator[Callable[..., SimulatedServer]]:
    with ExitStack() as stack:

        def start(**behavior: Any) -> SimulatedServer:
            return stack.enter_context(simulated_upstream(**behavior))

        yield start


# --------------------------------------------------------------------------- redis


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _with_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


def _wait_for_ping(url: str, proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    import redis

    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with code {proc.returncode}")
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
        try:
            if client.ping():
                return
        except redis.RedisError as exc:
            last_error = exc
        finally:
            client.close()
        time.sleep(0.05)
    raise RuntimeError(f"Redis at {url} did not answer PING within {timeout}s: {last_error}")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    user_url = os.environ.get("REDIS_URL")
    if user_url:
        url = _with_db(user_url, int(os.environ.get("AURELIS_TEST_REDIS_DB", _USER_REDIS_DB_DEFAULT)))
        try:
            _wait_for_ping(url, None, timeout=5.0)
        except RuntimeError as exc:
            pytest.fail(f"REDIS_URL is set but unusable: {exc}")
        yield url
        return

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "redis-server is not installed. Install it (e.g. `apt-get install redis-server` or "
            "`brew install redis`) or point REDIS_URL at a server you own.",
            pytrace=False,
        )
    workdir: Path = tmp_path_factory.mktemp("redis")
    # Free-port discovery then launch has a tiny race; retry a few ports rather than flake.
    for _attempt in range(3):
        port = _free_loopback_port()
        log = (workdir / f"redis-{port}.log").open("wb")
        options = {
            "--port": str(port),
            "--bind": "127.0.0.1",  # loopback only, whatever the packaged config says
            "--save": "",  # no RDB snapshots: nothing to clean up, nothing slow
            "--appendonly": "no",
            "--daemonize": "no",  # stay our child so terminate() really stops it
            "--dir": str(workdir),
        }
        proc = subprocess.Popen(
            [binary, *(item for pair in options.items() for item in pair)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
        url = f"redis://127.0.0.1:{port}/0"
        try:
            _wait_for_ping(url, proc, timeout=10.0)
        except RuntimeError:
            proc.kill()
            proc.wait()
            log.close()
            continue
        try:
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
        return
    pytest.fail(f"could not start redis-server; see logs in {workdir}", pytrace=False)


@pytest.fixture
def redis_flush(redis_url: str) -> str:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        client.flushdb()
    finally:
        client.close()
    return redis_url
