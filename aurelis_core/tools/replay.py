"""Workload replay: send recorded requests through a configured pipeline and report how it performed.

This is what ``aurelis replay`` runs. A **workload** is a JSON Lines file, one request per line::

    {"method": "POST", "path": "/chat/completions", "body": {"model": "gpt-4.1-mini", "messages": [...]}}
    {"method": "POST", "path": "/embeddings", "body": {"model": "text-embedding-3-small", "input": "hi"},
     "headers": {"x-team": "search"}, "at": 12.5}

(``method``, ``path``, ``body``, ``headers``, ``at``: the format is part of the plugin API, :mod:`aurelis_core.plugin`,
shared with ``aurelis record``, and its names are re-exported here: :class:`WorkloadRequest`,
:func:`load_workload`, :func:`join_url`, ``CREDENTIAL_HEADERS``.)

Requests go to the config's endpoints (through its router), or to ``base_url`` when it has none. With
:func:`simulated` the endpoints are replaced by local simulated upstreams on 127.0.0.1, so a replay needs
no network, no API key and no spend.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from aurelis_core import Endpoint
from aurelis_core.config import Config, ConfigError, load_config
from aurelis_core.plugin import WORKLOAD_CREDENTIAL_HEADERS, WorkloadRequest, load_workload
from aurelis_core.plugin import join_url as join_url

from .report import Report, Targets

if TYPE_CHECKING:
    from aurelis_core.testing import SimulatedServer

#: Headers a workload never holds (the plugin API's ``WORKLOAD_CREDENTIAL_HEADERS``, by its name here).
CREDENTIAL_HEADERS = WORKLOAD_CREDENTIAL_HEADERS

__all__ = ["SimulateOptions", "WorkloadRequest", "example_path", "load_workload", "replay", "simulated"]


def example_path(name: str) -> Path:
    """A file shipped in ``aurelis_core/examples`` (``workload.jsonl``, ``aurelis.toml``)."""
    return Path(__file__).parent.parent / "examples" / name


# --- simulation ------------------------------------------------------------------------------------------------


@attrs.frozen
class SimulateOptions:
    """How the simulated upstreams behave (``--sim-*`` options of ``aurelis replay``).

    ``endpoints``: how many upstreams to start; ``None``: one per endpoint of the config (keeping their names,
    weights and limits), or one if the config has none. The other fields are the simulator's knobs
    (:class:`aurelis_core.testing.Behavior`): ``latency`` seconds to first byte plus up to ``jitter`` more,
    ``latency_per_token`` per completion word, ``failure_rate`` of 500s, ``rpm``/``tpm`` limits per upstream
    (429 with ``retry-after`` beyond them).
    """

    endpoints: int | None = None
    latency: float = 0.05
    jitter: float = 0.05
    latency_per_token: float = 0.0
    failure_rate: float = 0.0
    rpm: int | None = None
    tpm: int | None = None
    seed: int = 0

    def behavior(self) -> dict[str, Any]:
        return {
            "latency": self.latency, "jitter": self.jitter, "latency_per_token": self.latency_per_token,
            "failure_rate": self.failure_rate, "rpm": self.rpm, "tpm": self.tpm, "seed": self.seed,
        }


@contextlib.contextmanager
def simulated(config: Config, options: SimulateOptions) -> Iterator[tuple[Config, list[SimulatedServer]]]:
    """Start simulated upstreams on 127.0.0.1 and yield ``config`` with its endpoints pointed at them."""
    try:
        from aurelis_core.testing import simulated_upstream
    except ImportError as exc:
        raise ImportError("--simulate needs: pip install 'aurelis[simulate]'") from exc
    if options.endpoints is not None:
        if options.endpoints < 1:
            raise ConfigError(f"--sim-endpoints must be >= 1, got {options.endpoints}")
        shapes = [Endpoint(url="http://127.0.0.1", name=f"sim-{i + 1}") for i in range(options.endpoints)]
    else:
        shapes = list(config.endpoints) or [Endpoint(url="http://127.0.0.1", name="sim-1")]
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(simulated_upstream(**options.behavior())) for _ in shapes]
        # The simulator ignores credentials; a configured api_key is dropped so it is never sent anywhere new.
        endpoints = tuple(
            attrs.evolve(shape, url=server.base_url, api_key=None)
            for shape, server in zip(shapes, servers, strict=True)
        )
        yield attrs.evolve(config, endpoints=endpoints), servers


# --- replay ----------------------------------------------------------------------------------------------------


async def replay(
    workload: Sequence[WorkloadRequest],
    config: Config | str | Path | None,
    *,
    base_url: str | None = None,
    credential: str | None = None,
    concurrency: int = 8,
    rate: float | None = None,
    timed: bool = False,
    speed: float = 1.0,
    timeout: float = 60.0,
    targets: Targets | None = None,
    on_result: Callable[[int, Any], None] | None = None,
) -> Report:
    """Send ``workload`` through a pipeline built from ``config``; return the report of the run.

    ``base_url`` is where requests are addressed (default: the first endpoint's URL; routing then spreads
    them over the endpoints). ``credential`` is sent as ``Authorization: Bearer``. ``concurrency`` and
    ``rate`` (requests/s) bound the load; ``timed`` sends each request at its recorded ``at`` offset divided
    by ``speed`` instead. The report's requests/s is the workload over the run's wall time.
    """
    import httpx

    from aurelis_core import Pipeline, gather

    config = load_config(config)
    if base_url is None:
        if not config.endpoints:
            raise ConfigError(
                f"{config.source}: no [[endpoints]] to send the workload to: add some, pass --base-url, "
                "or use --simulate"
            )
        base_url = config.endpoints[0].url
    schedule = None
    if timed:
        if not speed > 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        missing = sum(1 for r in workload if r.at is None)
        if missing:
            raise ValueError(f"--timed needs an 'at' offset on every request; {missing} have none")
        schedule = [(r.at or 0.0) / speed for r in workload]
    pipeline = Pipeline(config)
    try:
        await pipeline.astart()
        async with httpx.AsyncClient(timeout=timeout) as client:
            pipeline.instrument(client)
            requests = [r.request_args(base_url, credential) for r in workload]
            started = time.perf_counter()
            await gather(client, requests, concurrency=concurrency, rate=rate, schedule=schedule,
                         on_result=on_result)
            duration = time.perf_counter() - started
    finally:
        # Closing flushes write-behind tiers, so everything the run cached is stored before the report.
        await pipeline.aclose()
    return Report.from_stats(pipeline.stats, duration=duration, targets=targets)
