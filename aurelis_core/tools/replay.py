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
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from aurelis_core import Endpoint
from aurelis_core.config import Config, ConfigError, load_config
from aurelis_core.plugin import WORKLOAD_CREDENTIAL_HEADERS, WorkloadRequest, load_workload
from aurelis_core.plugin import join_url as join_url
from aurelis_core.report import Report, Targets

if TYPE_CHECKING:
    from aurelis_core.testing import SimulatedServer

#: Headers a workload never holds (the plugin API's ``WORKLOAD_CREDENTIAL_HEADERS``, by its name here).
CREDENTIAL_HEADERS = WORKLOAD_CREDENTIAL_HEADERS

__all__ = [
    "SIMULATED_BASE_URL", "SimulateOptions", "WorkloadRequest", "example_path", "load_workload", "offered_rps",
    "replay", "simulated",
]


def example_path(name: str) -> Path:
    """A file shipped in ``aurelis_core/examples`` (``workload.jsonl``, ``aurelis.toml``)."""
    return Path(__file__).parent.parent / "examples" / name


# --- simulation ------------------------------------------------------------------------------------------------


# Checked when the options are made, so a bad knob fails before any upstream starts (a failure rate of 2 made
# every request fail, and the report scored the run 74/100).
def _non_negative(instance: Any, attribute: Any, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"--sim-{attribute.name.replace('_', '-')} must be a number >= 0, got {value!r}")


def _share(instance: Any, attribute: Any, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"--sim-{attribute.name.replace('_', '-')} must be between 0 and 1, got {value!r}")


def _at_least_one(instance: Any, attribute: Any, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"--sim-{attribute.name.replace('_', '-')} must be a whole number >= 1, got {value!r}")


#: Where ``aurelis replay --simulate`` addresses its requests (routing sends them to the simulated upstreams).
#: The cache key holds the URL the caller addressed, so a fixed one makes the keys of simulated runs the same
#: from run to run: a second run hits the SQLite tier the first one filled, and rewrites its entries instead of
#: adding new ones. The ``.invalid`` host (RFC 2606) keeps simulated answers apart from any real upstream's.
SIMULATED_BASE_URL = "http://simulated.aurelis.invalid/v1"


@attrs.frozen
class SimulateOptions:
    """How the simulated upstreams behave (``--sim-*`` options of ``aurelis replay``).

    ``endpoints``: how many upstreams to start; ``None``: one per endpoint of the config (keeping their names,
    weights and limits), or one if the config has none. The other fields are the simulator's knobs
    (:class:`aurelis_core.testing.Behavior`): ``latency`` seconds to first byte plus up to ``jitter`` more,
    ``latency_per_token`` per completion word, ``failure_rate`` of 500s, ``rpm``/``tpm`` limits per upstream
    (429 with ``retry-after`` beyond them).
    """

    endpoints: int | None = attrs.field(default=None, validator=attrs.validators.optional(_at_least_one))
    latency: float = attrs.field(default=0.05, validator=_non_negative)
    jitter: float = attrs.field(default=0.05, validator=_non_negative)
    latency_per_token: float = attrs.field(default=0.0, validator=_non_negative)
    failure_rate: float = attrs.field(default=0.0, validator=_share)
    rpm: int | None = attrs.field(default=None, validator=attrs.validators.optional(_at_least_one))
    tpm: int | None = attrs.field(default=None, validator=attrs.validators.optional(_at_least_one))
    seed: int = 0

    def behavior(self) -> dict[str, Any]:
        return {
            "latency": self.latency, "jitter": self.jitter, "latency_per_token": self.latency_per_token,
            "failure_rate": self.failure_rate, "rpm": self.rpm, "tpm": self.tpm, "seed": self.seed,
        }


@contextlib.contextmanager
def simulated(config: Config, options: SimulateOptions) -> Iterator[tuple[Config, list[SimulatedServer]]]:
    """Start simulated upstreams on 127.0.0.1 and yield ``config`` with its endpoints pointed at them.

    Address the replay at :data:`SIMULATED_BASE_URL` (``replay(..., base_url=SIMULATED_BASE_URL)``, as ``aurelis
    replay --simulate`` does) for cache keys that stay the same from run to run; the upstreams' own URLs change
    with their ports."""
    try:
        from aurelis_core.testing import simulated_upstream
    except ImportError as exc:
        raise ImportError("--simulate needs: pip install 'aurelis[simulate]'") from exc
    if options.endpoints is not None:
        shapes = [Endpoint(url="http://127.0.0.1", name=f"sim-{i + 1}") for i in range(options.endpoints)]
    else:
        shapes = list(config.endpoints) or [Endpoint(url="http://127.0.0.1", name="sim-1")]
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(simulated_upstream(**options.behavior())) for _ in shapes]
        # The simulator ignores credentials; a configured api_key is dropped so it is never sent anywhere new.
        endpoints = tuple(
            attrs.evolve(shape, url=server.base_url, api_key=None, api_key_env=None)
            for shape, server in zip(shapes, servers, strict=True)
        )
        yield attrs.evolve(config, endpoints=endpoints), servers


# --- replay ----------------------------------------------------------------------------------------------------


def offered_rps(
    workload: Sequence[WorkloadRequest], *, rate: float | None = None, timed: bool = False, speed: float = 1.0
) -> float | None:
    """Requests/s a replay offers: its ``rate``, or with ``timed`` the workload over its recorded span (sped up);
    ``None`` when only the concurrency bounds it (then the throughput is whatever the pipeline achieves)."""
    if timed:
        span = max((r.at or 0.0 for r in workload), default=0.0) / speed
        offered = len(workload) / span if span > 0 else None
        return min(offered, rate) if offered is not None and rate is not None else offered or rate
    return rate


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

    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be a whole number >= 1, got {concurrency!r}")
    for name, value in (("rate", rate), ("timeout", timeout)):
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a number > 0, got {value!r}")
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
    return Report.from_stats(
        pipeline.stats, duration=duration, targets=targets,
        offered_rps=offered_rps(workload, rate=rate, timed=timed, speed=speed), plugins=config.plugins,
        pricing=config.pricing,
    )
