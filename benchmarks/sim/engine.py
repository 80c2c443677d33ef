"""The simulation engine: a fake clock, an event queue, endpoint models and client processes.

Model
-----
- **Endpoint** (:class:`EndpointModel`): an LLM server with ``slots`` concurrent generations (its batch) and a
  FIFO queue in front. A request takes ``(prefill + output_tokens * per_token) * slow * noise * (1 + batch_cost
  * busy / slots)`` seconds once it gets a slot: log-normal noise, and a per-token time that grows with the
  batch, as real servers' does. ``fail_rate`` of the requests fail fast (a 503 after ``fail_latency``,
  taking no slot). ``slow`` and ``fail_rate`` can change during a run (scheduled events).
- **Client process** (:class:`Client`): one router instance with its own health registry, as each process of
  a real deployment has; requests arrive as a Poisson stream. Each request has a deadline (``timeout``); an
  attempt still running then is cancelled (the server drops it, like a vLLM server on disconnect) and the
  request fails. A failed attempt is retried (immediately, on a newly routed endpoint) while ``retries`` and
  the deadline allow. Optional outlier ejection blocks an endpoint in the client's health registry after
  ``eject_after`` consecutive failures, for ``eject_for`` seconds.
- The router sees exactly what it sees in production: ``aurelis_route(ctx)`` before an attempt and
  ``aurelis_attempt_end(ctx, attempt)`` after it, with a real :class:`~aurelis_core.RequestContext` (its
  ``json`` holding ``max_tokens``) and a real :class:`~aurelis_core.Attempt` whose timings come from the fake
  clock. The simulation never looks inside the router.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import httpx

from aurelis_core import Attempt, Endpoint, RequestContext
from aurelis_core._models import DEFAULT_CONTROLS
from aurelis_core.health import EndpointHealth

__all__ = ["BIN", "Clock", "EndpointModel", "Result", "Simulation"]

#: Seconds per bin of :attr:`Result.timeline`.
BIN = 5.0
#: What every simulated request addresses: routers read its format (OpenAI chat) through its dialect.
CHAT_REQUEST = httpx.Request("POST", "https://api.example/v1/chat/completions")


class Clock:
    """The fake clock: the simulation sets ``now``; routers call the instance."""

    __slots__ = ("now",)

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class UpstreamError(Exception):
    """What a failed attempt's ``error`` holds in the simulation (a timeout)."""


@attrs.define
class EndpointModel:
    """One simulated endpoint (see the module docstring for the service-time formula)."""

    name: str
    slots: int = 8
    prefill: float = 0.3
    per_token: float = 0.02
    noise: float = 0.25
    batch_cost: float = 0.3
    slow: float = 1.0
    fail_rate: float = 0.0
    fail_latency: float = 0.05
    busy: int = 0
    queue: deque[Job] = attrs.field(factory=deque)

    def mean_service(self, mean_tokens: float) -> float:
        """Mean seconds per request at a full batch (what capacity is planned on)."""
        return (self.prefill + mean_tokens * self.per_token) * (1 + self.batch_cost)

    def capacity(self, mean_tokens: float) -> float:
        """Requests per second it serves at a full batch, as slow as it is now."""
        return self.slots / (self.mean_service(mean_tokens) * self.slow)


class Job:
    """One attempt on a server."""

    __slots__ = ("attempt", "client", "done", "request", "running")

    def __init__(self, client: Client, request: Request, attempt: Attempt) -> None:
        self.client = client
        self.request = request
        self.attempt = attempt
        self.done = False
        self.running = False


class Request:
    """One caller request: its context, arrival, deadline and output size."""

    __slots__ = ("arrived", "ctx", "deadline", "job", "output_tokens", "retries_left")

    def __init__(self, ctx: RequestContext, arrived: float, deadline: float, output_tokens: int, retries: int):
        self.ctx = ctx
        self.arrived = arrived
        self.deadline = deadline
        self.output_tokens = output_tokens
        self.retries_left = retries
        self.job: Job | None = None


@attrs.define
class Result:
    """What one run measured, over the requests that arrived in the measurement window."""

    latencies: list[float] = attrs.field(factory=list)
    errors: int = 0
    attempts_to: dict[str, int] = attrs.field(factory=dict)
    #: Attempts per endpoint from ``settle`` seconds after the measurement window opened (once routers had
    #: time to react to a change made when it opened).
    settled_attempts_to: dict[str, int] = attrs.field(factory=dict)
    #: Attempts per endpoint in each ``BIN`` seconds of the run (from time 0, measured or not), to see how a
    #: share evolves after a change.
    timeline: list[dict[str, int]] = attrs.field(factory=list)
    #: Per run (one entry each, kept by :meth:`merge`): seconds from a scenario's recovery until the
    #: recovered endpoint got its share back (``inf``: not within the run). Filled by the scenario runner.
    recoveries: list[float] = attrs.field(factory=list)

    @property
    def count(self) -> int:
        return len(self.latencies)

    def percentile(self, q: float) -> float:
        data = sorted(self.latencies)
        return data[min(len(data) - 1, max(0, math.ceil(q * len(data)) - 1))]

    @property
    def error_rate(self) -> float:
        return self.errors / self.count if self.count else 0.0

    def merge(self, other: Result) -> None:
        self.latencies.extend(other.latencies)
        self.errors += other.errors
        for name, n in other.attempts_to.items():
            self.attempts_to[name] = self.attempts_to.get(name, 0) + n
        for name, n in other.settled_attempts_to.items():
            self.settled_attempts_to[name] = self.settled_attempts_to.get(name, 0) + n
        self.recoveries.extend(other.recoveries)


class Client:
    """One client process: a router, its health registry, ejection counters."""

    def __init__(self, sim: Simulation, router: Any, health: EndpointHealth) -> None:
        self.sim = sim
        self.router = router
        self.health = health
        self.consecutive_failures: dict[str, int] = {}


class Simulation:
    """A run: endpoints, ``clients`` router instances, arrivals, scheduled changes, and the result.

    ``make_router(endpoints, health, clock, seed)`` builds one client's router. ``rate(t)`` is the total
    arrival rate (requests per second) at time ``t``, split evenly over the clients.
    """

    def __init__(
        self,
        models: Sequence[EndpointModel],
        make_router: Callable[[tuple[Endpoint, ...], EndpointHealth, Clock, int], Any],
        *,
        seed: int,
        clients: int,
        rate: Callable[[float], float],
        max_tokens: Sequence[int] = (32, 64, 128, 256),
        timeout: float = 20.0,
        retries: int = 0,
        eject_after: int | None = None,
        eject_for: float = 30.0,
        measure_from: float = 0.0,
        settle: float = 30.0,
    ) -> None:
        self.clock = Clock()
        self.rng = random.Random(seed)
        self.models = {m.name: m for m in models}
        self.endpoints = tuple(Endpoint(url=f"http://sim/{m.name}", name=m.name) for m in models)
        self.clients = []
        for k in range(clients):
            health = EndpointHealth(self.endpoints, clock=self.clock)
            router = make_router(self.endpoints, health, self.clock, seed * 1000 + k)
            self.clients.append(Client(self, router, health))
        self.rate = rate
        self.max_tokens = tuple(max_tokens)
        self.timeout = timeout
        self.retries = retries
        self.eject_after = eject_after
        self.eject_for = eject_for
        self.measure_from = measure_from
        self.settled_from = measure_from + settle
        self.result = Result()
        self._events: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = 0

    # --- the event queue ---------------------------------------------------------------------------------------

    def at(self, when: float, action: Callable[..., None], *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._events, (when, self._seq, action, args))

    def run(self, until: float) -> Result:
        for client in self.clients:
            self.at(0.0, self._arrival, client)
        events = self._events
        clock = self.clock
        while events:
            when, _, action, args = heapq.heappop(events)
            if when > until:
                break
            clock.now = when
            action(*args)
        return self.result

    # --- clients -----------------------------------------------------------------------------------------------

    def _arrival(self, client: Client) -> None:
        now = self.clock.now
        rng = self.rng
        # Thinning would be exact for a varying rate; rates here change in steps, so drawing each gap at the
        # current rate is exact except across a step.
        self.at(now + rng.expovariate(self.rate(now) / len(self.clients)), self._arrival, client)
        max_tokens = rng.choice(self.max_tokens)
        ctx = RequestContext(CHAT_REQUEST, None, None, False, DEFAULT_CONTROLS)
        ctx.json = {"model": "sim", "max_tokens": max_tokens}
        output = max(1, round(max_tokens * rng.uniform(0.3, 1.0)))
        request = Request(ctx, now, now + self.timeout, output, self.retries)
        self.at(request.deadline, self._deadline, client, request)
        self._attempt(client, request)

    def _attempt(self, client: Client, request: Request) -> None:
        now = self.clock.now
        ctx = request.ctx
        endpoint = client.router.aurelis_route(ctx)
        attempt = Attempt(len(ctx.attempts) + 1, endpoint)
        attempt.started = now
        ctx.attempts.append(attempt)
        timeline = self.result.timeline
        bin_ = int(now / BIN)
        while len(timeline) <= bin_:
            timeline.append({})
        timeline[bin_][endpoint.name] = timeline[bin_].get(endpoint.name, 0) + 1
        if now >= self.measure_from:
            self.result.attempts_to[endpoint.name] = self.result.attempts_to.get(endpoint.name, 0) + 1
            if now >= self.settled_from:
                settled = self.result.settled_attempts_to
                settled[endpoint.name] = settled.get(endpoint.name, 0) + 1
        job = request.job = Job(client, request, attempt)
        model = self.models[endpoint.name]
        if model.fail_rate and self.rng.random() < model.fail_rate:
            self.at(now + model.fail_latency, self._answer, job, 503)
        elif model.busy < model.slots:
            self._start(model, job)
        else:
            model.queue.append(job)

    def _start(self, model: EndpointModel, job: Job) -> None:
        model.busy += 1
        job.running = True
        seconds = (model.prefill + job.request.output_tokens * model.per_token) * model.slow
        seconds *= math.exp(self.rng.gauss(0.0, model.noise)) * (1 + model.batch_cost * model.busy / model.slots)
        self.at(self.clock.now + seconds, self._finish, model, job)

    def _free(self, model: EndpointModel) -> None:
        model.busy -= 1
        queue = model.queue
        while queue:
            job = queue.popleft()
            if not job.done:
                self._start(model, job)
                return

    def _finish(self, model: EndpointModel, job: Job) -> None:
        if job.done:
            return  # cancelled at its deadline; the slot was freed then
        self._free(model)
        self._answer(job, 200)

    def _answer(self, job: Job, status: int) -> None:
        if job.done:
            return
        job.done = True
        now = self.clock.now
        attempt = job.attempt
        attempt.first_byte = attempt.finished = now
        attempt.status_code = status
        client, request = job.client, job.request
        client.router.aurelis_attempt_end(request.ctx, attempt)
        self._eject_check(client, attempt, ok=status < 400)
        if status < 400:
            self._record(request, now - request.arrived, ok=True)
        elif request.retries_left > 0 and now < request.deadline:
            request.retries_left -= 1
            self._attempt(client, request)
        else:
            self._record(request, now - request.arrived, ok=False)

    def _deadline(self, client: Client, request: Request) -> None:
        job = request.job
        if job is None or job.done:
            return
        job.done = True
        attempt = job.attempt
        attempt.finished = self.clock.now
        attempt.error = UpstreamError("timed out")
        if job.running:
            self._free(self.models[attempt.endpoint.name])  # type: ignore[union-attr]
        client.router.aurelis_attempt_end(request.ctx, attempt)
        self._eject_check(client, attempt, ok=False)
        self._record(request, self.timeout, ok=False)

    def _eject_check(self, client: Client, attempt: Attempt, ok: bool) -> None:
        if self.eject_after is None or attempt.endpoint is None:
            return
        name = attempt.endpoint.name
        if ok:
            client.consecutive_failures[name] = 0
            return
        count = client.consecutive_failures[name] = client.consecutive_failures.get(name, 0) + 1
        if count >= self.eject_after:
            client.consecutive_failures[name] = 0
            client.health.block(attempt.endpoint, self.clock.now + self.eject_for, "ejected")

    def _record(self, request: Request, latency: float, ok: bool) -> None:
        if request.arrived < self.measure_from:
            return
        # A failed request counts as the timeout: the caller waited for nothing (p99* of the benchmark).
        self.result.latencies.append(latency if ok else self.timeout)
        if not ok:
            self.result.errors += 1
