"""Run an ASGI app on a real loopback socket, in a background thread.

Tests that exercise an HTTP client for real -- connection pooling, request
compression, streaming, abrupt disconnects -- need a real socket; an in-process ASGI
transport would hide exactly the behaviour under test.  `serve` gives that with no
ceremony::

    with serve(app) as server:
        httpx.get(server.url + "/v1/models")

and `simulated_upstream` does the same for a fresh `SimulatedUpstream`::

    with simulated_upstream(latency=0.01) as up:
        client = openai.OpenAI(base_url=up.base_url, api_key="k")
        ...
        assert up.count("/chat/completions") == 1

Only loopback is ever bound: these servers have no authentication and must never be
reachable from another machine.  Port ``0`` (the default) lets the OS pick a free port;
the socket is bound *before* uvicorn starts, so there is no window in which another
process could grab the port between "find a free port" and "listen on it".
"""

from __future__ import annotations

import contextlib
import math
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import attrs

from aurelis_core.testing.simulator import ASGIApp, Behavior, RecordedRequest, SimulatedUpstream

__all__ = ["RunningServer", "SimulatedServer", "serve", "simulated_upstream"]

_LOOPBACK_NAMES = {"127.0.0.1": "127.0.0.1", "localhost": "127.0.0.1"}


def _uvicorn() -> Any:
    """uvicorn, imported on first use: it is an optional dependency (the ``simulate`` extra)."""
    try:
        import uvicorn
    except ImportError as exc:
        raise ImportError(
            "aurelis_core.testing.serve() and simulated_upstream() need uvicorn: pip install 'aurelis[simulate]'"
        ) from exc
    return uvicorn


@attrs.frozen
class RunningServer:
    """Where a server started by `serve` listens."""

    host: str
    port: int

    @property
    def url(self) -> str:
        """Base URL without a trailing slash, e.g. ``http://127.0.0.1:54321``."""
        return f"http://{self.host}:{self.port}"


@contextlib.contextmanager
def serve(
    app: ASGIApp,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    startup_timeout: float = 10.0,
    shutdown_timeout: float = 5.0,
) -> Iterator[RunningServer]:
    """Serve ``app`` with uvicorn on ``host:port`` for the duration of the ``with`` block.

    ``host`` must be ``"127.0.0.1"`` (``"localhost"`` is accepted as a spelling of it);
    anything else raises `ValueError`.  Each call runs its own uvicorn server with its
    own event loop in its own daemon thread, so any number can run side by side in one
    process.  On exit the server is asked to stop, in-flight requests get up to
    ``shutdown_timeout`` seconds, then the thread is joined.
    """
    bind_host = _LOOPBACK_NAMES.get(host)
    if bind_host is None:
        raise ValueError(f"serve() only binds to 127.0.0.1, not {host!r}")
    uvicorn = _uvicorn()

    # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on accepted sockets whose
    # ``proto`` says TCP, and accepted sockets copy it from this one.  Without NODELAY the
    # response body (a second write after the headers) waits out the client's delayed ACK:
    # a flat ~40 ms per request, which would make the simulator useless for benchmarks.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # SO_REUSEADDR lets a test suite restart on a port still in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((bind_host, port))
        actual_port: int = sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            log_level="warning",
            # log_config=None: do not let uvicorn reconfigure the process's logging
            # (it would install its own handlers, which tests and embedding apps own).
            log_config=None,
            access_log=False,
            lifespan="off",
            interface="asgi3",
            ws="none",
            timeout_graceful_shutdown=math.ceil(shutdown_timeout),
        )
        server = uvicorn.Server(config)
        failure: list[BaseException] = []

        def run() -> None:
            try:
                # Server.run() creates a fresh event loop for this thread; signal handlers
                # are skipped automatically outside the main thread.
                server.run(sockets=[sock])
            except BaseException as exc:  # SystemExit on startup failure included
                failure.append(exc)

        thread = threading.Thread(target=run, name=f"aurelis-serve-{actual_port}", daemon=True)
        thread.start()
        deadline = time.monotonic() + startup_timeout
        while not server.started:
            if failure or not thread.is_alive():
                raise RuntimeError(f"server on port {actual_port} failed to start") from (
                    failure[0] if failure else None
                )
            if time.monotonic() > deadline:
                server.should_exit = True
                raise RuntimeError(f"server on port {actual_port} did not start in {startup_timeout}s")
            time.sleep(0.005)
        try:
            yield RunningServer(host=bind_host, port=actual_port)
        finally:
            server.should_exit = True
            # uvicorn notices should_exit on its 0.1 s tick; the graceful timeout covers
            # in-flight requests, and force_exit is the last resort for stuck ones.
            thread.join(shutdown_timeout + 2.0)
            if thread.is_alive():
                server.force_exit = True
                thread.join(2.0)
    finally:
        sock.close()


class SimulatedServer:
    """A running `SimulatedUpstream` plus its address: the handle tests work with."""

    def __init__(self, app: SimulatedUpstream, server: RunningServer) -> None:
        self.app = app
        self.server = server

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no ``/v1``)."""
        return self.server.url

    @property
    def base_url(self) -> str:
        """``url + "/v1"``: what an OpenAI SDK client takes as ``base_url``."""
        return self.server.url + "/v1"

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def behavior(self) -> Behavior:
        """The live knobs of the simulator (see `Behavior`)."""
        return self.app.behavior

    @property
    def requests(self) -> list[RecordedRequest]:
        """Snapshot of the API requests received so far."""
        return self.app.requests

    def count(self, path_suffix: str | None = None) -> int:
        """Number of API requests received, optionally only for paths ending in ``path_suffix``."""
        return self.app.count(path_suffix)

    def stats(self) -> dict[str, Any]:
        """Counters and knobs, as served by ``GET /_sim/stats``."""
        return self.app.stats()

    def reset(self) -> None:
        """Clear records and counters and restore the initial knobs."""
        self.app.reset()

    def __repr__(self) -> str:
        return f"SimulatedServer(url={self.url!r})"


@contextlib.contextmanager
def simulated_upstream(
    *, port: int = 0, max_records: int = 10_000, **behavior: Any
) -> Iterator[SimulatedServer]:
    """Start a fresh `SimulatedUpstream` on loopback; keyword arguments set `Behavior` knobs."""
    app = SimulatedUpstream(max_records=max_records, **behavior)
    with serve(app, port=port) as server:
        yield SimulatedServer(app, server)
