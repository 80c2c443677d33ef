"""Workload replay: send recorded requests through a configured pipeline and report how it performed.

This is what ``aurelis replay`` runs. A **workload** is a JSON Lines file, one request per line::

    {"method": "POST", "path": "/chat/completions", "body": {"model": "gpt-4.1-mini", "messages": [...]}}
    {"method": "POST", "path": "/embeddings", "body": {"model": "text-embedding-3-small", "input": "hi"},
     "headers": {"x-team": "search"}, "at": 12.5}

- ``method``: the HTTP method (default ``"POST"``).
- ``path``: joined onto the base URL the way endpoints are (``/chat/completions`` against
  ``https://host/v1`` is ``https://host/v1/chat/completions``; a path that already starts with the base URL's
  path, like ``/v1/chat/completions``, is kept as is).
- ``body``: a JSON value, sent as the JSON body; a string is sent as raw text; absent: no body.
- ``headers`` (optional): extra request headers. Workloads never hold credentials: ``aurelis record`` drops
  them, and ``load_workload`` refuses a line that carries one.
- ``at`` (optional): seconds since the start of the recording; ``--timed`` replays at those offsets.

Requests go to the config's endpoints (through its router), or to ``base_url`` when it has none. With
:func:`simulated` the endpoints are replaced by local simulated upstreams on 127.0.0.1, so a replay needs
no network, no API key and no spend.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from ._models import Endpoint
from ._tenant import DEFAULT_CREDENTIAL_HEADERS
from .config import Config, ConfigError, load_config
from .report import Report, Targets

if TYPE_CHECKING:
    from .testing import SimulatedServer

__all__ = ["SimulateOptions", "WorkloadRequest", "example_path", "load_workload", "replay", "simulated"]

#: Header names that carry credentials: never written to, nor accepted from, a workload file (the default
#: credential headers of :mod:`aurelis_core._tenant`, and cookies).
CREDENTIAL_HEADERS = frozenset((*DEFAULT_CREDENTIAL_HEADERS, "cookie"))


def example_path(name: str) -> Path:
    """A file shipped in ``aurelis_core/examples`` (``workload.jsonl``, ``aurelis.toml``)."""
    return Path(__file__).parent / "examples" / name


@attrs.frozen
class WorkloadRequest:
    """One line of a workload file (see the module docstring for the format)."""

    path: str
    method: str = "POST"
    body: Any = None
    headers: dict[str, str] = attrs.field(factory=dict)
    at: float | None = None

    def to_json(self) -> str:
        """The request as one workload line (no trailing newline); empty optional fields are left out."""
        data: dict[str, Any] = {"method": self.method, "path": self.path}
        if self.body is not None:
            data["body"] = self.body
        if self.headers:
            data["headers"] = self.headers
        if self.at is not None:
            data["at"] = self.at
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False)

    def request_args(self, base_url: str, credential: str | None) -> dict[str, Any]:
        """Keyword arguments for ``client.request(...)``."""
        headers = dict(self.headers)
        if credential is not None:
            headers["authorization"] = f"Bearer {credential}"
        args: dict[str, Any] = {"method": self.method, "url": join_url(base_url, self.path), "headers": headers}
        if isinstance(self.body, str):
            args["content"] = self.body.encode()
        elif self.body is not None:
            args["json"] = self.body
        return args

    @property
    def model(self) -> str | None:
        model = self.body.get("model") if isinstance(self.body, dict) else None
        return model if isinstance(model, str) else None


def join_url(base_url: str, path: str) -> str:
    """``path`` on ``base_url``, with the same rule as endpoint routing (see the module docstring)."""
    scheme, _, rest = base_url.partition("://")
    host, slash, prefix = rest.partition("/")
    prefix = ("/" + prefix).rstrip("/") if slash else ""
    if not path.startswith("/"):
        path = "/" + path
    if prefix and not (path == prefix or path.startswith(prefix + "/")):
        path = prefix + path
    return f"{scheme}://{host}{path}"


def load_workload(path: str | Path) -> list[WorkloadRequest]:
    """Read a workload file; a bad line raises ``ValueError`` naming the file, the line and the problem."""
    requests = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                data = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{where}: not valid JSON: {exc}") from None
            if not isinstance(data, dict):
                raise ValueError(f"{where}: each line must be a JSON object, got {type(data).__name__}")
            unknown = set(data) - {"method", "path", "body", "headers", "at"}
            if unknown:
                raise ValueError(
                    f"{where}: unknown field(s) {', '.join(sorted(unknown))}; valid: at, body, headers, method, path"
                )
            if not isinstance(data.get("path"), str):
                raise ValueError(f"{where}: 'path' (a string like \"/chat/completions\") is required")
            headers = data.get("headers", {})
            if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
                raise ValueError(f"{where}: 'headers' must be an object of strings")
            secret = sorted(k for k in headers if k.lower() in CREDENTIAL_HEADERS)
            if secret:
                raise ValueError(
                    f"{where}: workloads must not carry credentials, found header(s) {', '.join(secret)}; "
                    "give the key with --api-key-env or the endpoints' api_key instead"
                )
            at = data.get("at")
            if at is not None and not (isinstance(at, (int, float)) and at >= 0):
                raise ValueError(f"{where}: 'at' must be a number of seconds >= 0, got {at!r}")
            method = data.get("method", "POST")
            if not isinstance(method, str):
                raise ValueError(f"{where}: 'method' must be a string, got {method!r}")
            requests.append(WorkloadRequest(data["path"], method.upper(), data.get("body"), headers, at))
    if not requests:
        raise ValueError(f"{path}: the workload is empty")
    return requests


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
        from .testing import simulated_upstream
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

    from .batch import gather
    from .pipeline import Pipeline

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
