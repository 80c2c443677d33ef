"""What every router shares: in-flight accounting, candidates, the clock, and what an attempt teaches.

A router is one plugin with two hooks. ``aurelis_route`` asks the pipeline's health registry which endpoints
may be picked now (open circuits, ejected and rate-limited endpoints are left out; if none is left the
registry hands back all of them, "panic mode"), leaves out the endpoints that already failed *this* request
(a retry goes elsewhere while anywhere else is left; see :func:`failed_endpoints`), picks one with its own
algorithm (:meth:`Router._pick`) and
counts the attempt in flight. ``aurelis_attempt_end``, which the core calls exactly once per attempt (also
when the caller cancels, a timeout fires or a stream is closed early), releases the count and hands the
outcome to the algorithm (:meth:`Router._learn`). Cache hits never reach either hook.

Routers know nothing of httpx: they read ``ctx.json``, ``ctx.state``, the original request's buffered body
and an :class:`~aurelis_core.Attempt`'s timings, status and headers. The clock is injectable
(``clock=time.monotonic`` by default), so a discrete-event simulation can drive the real router objects with
a fake clock (see ``benchmarks/sim``). Attempt timings are differences of one clock, so they only need to be
consistent with each other.

Signals every learning router uses, defined once here:

- **outcome** (:func:`outcome`): success, failure (a transport error, 401/403/408/429, any 5xx), or neither
  (the caller cancelled; a 4xx that says the request, not the endpoint, was wrong).
- **latency** (:func:`latency_sample`): for a streamed answer the time to first byte (what a user waits for);
  otherwise the attempt's duration divided by the request's expected output tokens, so a 1000-token answer
  does not make its endpoint look 100x slower than a 10-token one. The core does not parse response bodies
  (that would cost every request a JSON parse), so the expected output is the request's output budget as its
  dialect reads it (``max_tokens``, ``max_completion_tokens``, ``max_output_tokens``, Gemini's
  ``generationConfig.maxOutputTokens``; 0 for an embedding), else the router's ``default_output_tokens``. An
  attempt that failed or was cut short gives only a lower bound on the latency: :func:`latency_sample` says
  so, and routers use such a sample only when it raises their estimate (a slow failure is slow; a fast 503
  must not look fast).
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import attrs

from aurelis_core.plugin import (
    FAILED_ENDPOINTS,
    Attempt,
    Endpoint,
    EndpointHealth,
    RequestContext,
    buffered_body,
    hookimpl,
    non_negative_int,
    positive_int,
    url_parts,
)

#: One logger for every router: which endpoint each attempt went to is one story whichever router tells it.
logger = logging.getLogger("aurelis.router")

__all__ = [
    "Clock",
    "RequestProfile",
    "Router",
    "RouterConfig",
    "failed_endpoints",
    "latency_sample",
    "outcome",
    "request_profile",
]

Clock = Callable[[], float]

#: ``ctx.state`` key under which the request's :class:`RequestProfile` is kept (computed once, reused by
#: retries and by both hooks).
STATE_KEY = "routing"

#: Bytes of JSON request body per prompt token: a rough, tokenizer-free estimate (English text and JSON
#: punctuation average 3-4 bytes per token), good enough to weigh a 40 kB prompt against a 400 B one.
BYTES_PER_TOKEN = 4

#: Candidate lists whose index sets a router keeps at once (see ``Router._allowed``).
_ALLOWED_SETS = 64

#: Statuses that count against the endpoint (the rest of 4xx blame the request, not where it was sent).
FAILURE_STATUSES = frozenset({401, 403, 408, 429})


@attrs.frozen
class RouterConfig:
    """Options every router takes."""

    #: Seed of the router's own random stream (``None``: from the OS, so processes start at different
    #: offsets and do not herd onto the same endpoint). Set it for reproducible tests and simulations.
    seed: int | None = attrs.field(default=None, validator=non_negative_int)
    #: Output tokens assumed for a request that sets no ``max_tokens`` (see the module docstring).
    default_output_tokens: int = attrs.field(default=256, validator=positive_int)


class RequestProfile:
    """What a router estimates about one request: prompt and output tokens, and whether it streams."""

    __slots__ = ("output_tokens", "prompt_tokens", "stream")

    def __init__(self, prompt_tokens: int, output_tokens: int, stream: bool) -> None:
        self.prompt_tokens = prompt_tokens
        self.output_tokens = output_tokens
        self.stream = stream

    @property
    def tokens(self) -> int:
        """Prompt plus expected output: what the request will spend of a tokens-per-minute budget."""
        return self.prompt_tokens + self.output_tokens


def request_profile(ctx: RequestContext, default_output_tokens: int) -> RequestProfile:
    """The request's :class:`RequestProfile`, computed on first use and kept in ``ctx.state``.

    Reads ``ctx.json`` (parsed once per request, by the ``normalize`` stage or on first use: routers need
    ``max_tokens`` whether or not a cache is enabled). A body that is not JSON, or not yet read (a streamed
    upload), gets the defaults.
    """
    profile: RequestProfile | None = ctx.state.get(STATE_KEY)
    if profile is not None:
        return profile
    body = buffered_body(ctx.original)
    data = ctx.json
    output = default_output_tokens
    stream = ctx.stream
    if isinstance(data, dict):
        # The request's dialect knows where its format puts the output budget (Gemini's
        # generationConfig.maxOutputTokens, the Responses API's max_output_tokens) and that an embedding has none.
        dialect = ctx.dialect
        path = url_parts(ctx.original.url)[3]
        limit = dialect.output_budget(path, data)
        if limit is not None:
            output = limit
        stream = stream or dialect.streams(path, data)
    prompt = len(body) // BYTES_PER_TOKEN if body else 0
    profile = ctx.state[STATE_KEY] = RequestProfile(prompt, output, stream)
    return profile


def outcome(attempt: Attempt) -> bool | None:
    """``True`` the endpoint served it, ``False`` it failed, ``None`` no verdict about the endpoint."""
    error = attempt.error
    if error is not None:
        # CancelledError, GeneratorExit, KeyboardInterrupt: the caller stopped waiting, which says nothing
        # certain about the endpoint (its latency, censored, is still used).
        return False if isinstance(error, Exception) else None
    status = attempt.status_code
    if status is None:
        return None
    if status < 400:
        return True
    if status >= 500 or status in FAILURE_STATUSES:
        return False
    return None


def failed_endpoints(ctx: RequestContext) -> frozenset[str] | set[str]:
    """Names of the endpoints that already failed during this request (empty for a first attempt).

    The record a retry policy keeps for routers, :data:`~aurelis_core.plugin.FAILED_ENDPOINTS`, when there is
    one: it also holds the endpoints that refused an attempt before the network (an open circuit) and those
    whose answer the policy retried though it does not blame the endpoint (a 409). Otherwise (a retry policy
    that keeps none), the endpoints of this request's earlier attempts whose :func:`outcome` was a failure.
    Read defensively: ``ctx.state`` is shared scratch space.
    """
    failed = FAILED_ENDPOINTS.get(ctx)
    if isinstance(failed, (set, frozenset)):
        return failed
    return frozenset(
        a.endpoint.name for a in ctx.attempts if a.endpoint is not None and outcome(a) is False
    )


def latency_sample(profile: RequestProfile, attempt: Attempt) -> tuple[float, bool] | None:
    """``(latency, complete)`` of an attempt, or ``None`` if it has no timings.

    ``latency`` is the time to first byte for a stream, otherwise seconds per expected output token.
    ``complete`` is false when the attempt failed or was cancelled before that point: the value is then only
    a lower bound.
    """
    if profile.stream and attempt.first_byte is not None:
        return attempt.first_byte - attempt.started, attempt.status_code is not None and attempt.status_code < 400
    finished = attempt.finished
    if finished is None:
        return None
    elapsed = finished - attempt.started
    if profile.stream:
        return elapsed, False  # no first byte: failed or cancelled while waiting for it
    return elapsed / profile.output_tokens, attempt.ok


class Router:
    """Base class of the router plugins: candidates, in-flight counts, locking and the two hooks.

    Subclasses set ``name`` and ``Config`` and implement :meth:`_pick` (and :meth:`_learn` if they learn from
    outcomes). Both run under the router's lock: sync clients may share one pipeline across threads, and an
    uncontended lock costs ~50 ns, far less than a torn counter would.
    """

    name: ClassVar[str]
    Config: ClassVar[type[RouterConfig]] = RouterConfig

    def __init__(self, config: RouterConfig | None, pipeline: Any, *, clock: Clock = time.monotonic) -> None:
        self.config = config if config is not None else self.Config()
        #: The endpoints this router picks from, in config order; indices into it identify them.
        self.endpoints: tuple[Endpoint, ...] = tuple(pipeline.endpoints)
        self.health: EndpointHealth = pipeline.health
        self.clock = clock
        self.rng = random.Random(self.config.seed)
        #: Attempts sent to each endpoint and not yet ended (by this router, in this process).
        self.inflight = [0] * len(self.endpoints)
        self._index = {e.name: i for i, e in enumerate(self.endpoints)}
        weights = [e.weight for e in self.endpoints]
        #: Cumulative weights for drawing candidates; ``None`` when all are equal (uniform draws are cheaper).
        self._cumulative = list(itertools.accumulate(weights)) if len(set(weights)) > 1 else None
        self._lock = threading.Lock()
        # The indices of the candidate lists :meth:`_allowed` saw, by id (holding each list keeps its id unique),
        # as a set and in order: one list per model the endpoints serve differently, and per set of blocked
        # endpoints.
        self._allowed_sets: dict[int, tuple[Sequence[Endpoint], frozenset[int], tuple[int, ...]]] = {}
        self._last_kept: tuple[Sequence[Endpoint], frozenset[int], tuple[int, ...]] = ([], frozenset(), ())
        #: Indices of the endpoints serving the model of the request being picked for (``None``: all of them),
        #: set under the lock before each :meth:`_pick`: the endpoints that take turns for that model.
        self._serving: frozenset[int] | None = None

    # --- hooks -------------------------------------------------------------------------------------------------

    @hookimpl
    def aurelis_route(self, ctx: RequestContext) -> Endpoint:
        now = self.clock()
        # The endpoints serving the request's model (all of them, the same tuple, unless endpoints list models),
        # then those of them available now.
        health = self.health
        endpoints = self.endpoints
        serving = health.serving(ctx, endpoints) if health.models.active else endpoints
        candidates = health.candidates(serving, now)
        if ctx.attempts:  # a retry: only then is there anything to avoid (first attempts skip the lookup)
            failed = failed_endpoints(ctx)
            if failed:
                candidates = [e for e in candidates if e.name not in failed] or candidates
        with self._lock:
            self._serving = None if serving is endpoints else self._allowed(serving)
            index = self._pick(ctx, candidates, now)
            self.inflight[index] += 1
            self._sent(index, ctx, now)
        endpoint = self.endpoints[index]
        if logger.isEnabledFor(logging.DEBUG):  # the check keeps the pick free when nobody listens
            logger.debug("%s: attempt %d to %s (of %d candidates: %s)", self.name, len(ctx.attempts) + 1,
                         endpoint.name, len(candidates), ", ".join(e.name for e in candidates))
        return endpoint

    @hookimpl
    def aurelis_attempt_end(self, ctx: RequestContext, attempt: Attempt) -> None:
        endpoint = attempt.endpoint
        index = self._index.get(endpoint.name) if endpoint is not None else None
        if index is None:
            return
        now = self.clock()
        with self._lock:
            # Never below zero, even for an attempt routed before this router was registered.
            if self.inflight[index] > 0:
                self.inflight[index] -= 1
                self._released(index, ctx)
            self._learn(index, ctx, attempt, now)

    # --- what subclasses implement -------------------------------------------------------------------------------

    def _pick(self, ctx: RequestContext, candidates: Sequence[Endpoint], now: float) -> int:
        """The index (into ``self.endpoints``) of the endpoint for this attempt. Called under the lock."""
        raise NotImplementedError

    def _sent(self, index: int, ctx: RequestContext, now: float) -> None:
        """An attempt was counted in flight on ``index`` (for routers that count more than requests)."""

    def _released(self, index: int, ctx: RequestContext) -> None:
        """The in-flight attempt on ``index`` ended; undo what :meth:`_sent` counted."""

    def _learn(self, index: int, ctx: RequestContext, attempt: Attempt, now: float) -> None:
        """Learn from an ended attempt. Called under the lock."""

    # --- helpers -------------------------------------------------------------------------------------------------

    def _schedule(
        self, schedulers: dict[frozenset[int] | None, EDFScheduler], weights: Sequence[float]
    ) -> EDFScheduler:
        """The turn-taking scheduler of the endpoints serving the current request's model (one per set of
        endpoints, made on first use with ``weights``; ``None`` keys the one of every endpoint)."""
        serving = self._serving
        scheduler = schedulers.get(serving)
        if scheduler is None:
            scheduler = schedulers[serving] = EDFScheduler(
                weights, self.rng, None if serving is None else sorted(serving)
            )
        return scheduler

    def _profile(self, ctx: RequestContext) -> RequestProfile:
        return request_profile(ctx, self.config.default_output_tokens)

    def _weight(self, index: int, now: float) -> float:
        """The endpoint's configured weight, scaled down while it is in slow start after a recovery."""
        endpoint = self.endpoints[index]
        return endpoint.weight * self.health.slow_start_factor(endpoint, now)

    def _two(self, candidates: Sequence[Endpoint], now: float) -> tuple[int, int]:
        """Two distinct candidates drawn in proportion to weight x slow start (the same one twice if there is
        only one candidate): the "two choices" of the P2C routers, O(1) expected.

        Weights and slow start act here, on which endpoints are *considered*; the router's score then picks
        between the two. So with equal load the traffic splits by weight, and a recovering endpoint is
        offered a growing share of the picks.
        """
        allowed = self._allowed(candidates)
        # With equal weights, a draw among a few of many endpoints (those serving a model) is made among them
        # directly rather than by rejection.
        few = self._kept(candidates)[2] if allowed is not None and self._cumulative is None else None
        a = self._draw(candidates, allowed, now, few)
        if len(candidates) == 1:
            return a, a
        for _ in range(8):
            b = self._draw(candidates, allowed, now, few)
            if b != a:
                return a, b
        return a, a  # one candidate holds nearly all the weight

    def _draw(
        self, candidates: Sequence[Endpoint], allowed: frozenset[int] | None, now: float,
        few: tuple[int, ...] | None = None,
    ) -> int:
        """One candidate by weight: inverse CDF over the configured weights (O(1) when they are all equal,
        O(log n) otherwise), rejecting endpoints that are not candidates or lose the slow-start coin. With
        equal weights, ``few`` (the candidates' indices) is drawn from directly."""
        random_ = self.rng.random
        n = len(self.endpoints)
        for _ in range(16):
            # int(random() * n) rather than randrange(n): a fifth of the cost, and no bias for n << 2**53.
            if few is not None:
                index = few[int(random_() * len(few))]
            elif self._cumulative is None:
                index = int(random_() * n)
            else:
                index = min(bisect.bisect(self._cumulative, random_() * self._cumulative[-1]), n - 1)
            if allowed is not None and index not in allowed:
                continue
            factor = self.health.slow_start_factor(self.endpoints[index], now)
            if factor >= 1.0 or random_() < factor:
                return index
        # Rejection kept failing (few candidates left, all slow-starting): any candidate, uniformly.
        return self._index[candidates[int(random_() * len(candidates))].name]

    def _allowed(self, candidates: Sequence[Endpoint]) -> frozenset[int] | None:
        """Indices of the candidates, or ``None`` when every endpoint is one (the common case, O(1)).

        The set is kept for the candidates it was built from: the health registry hands out the same list
        until a status changes, and the endpoints serving a model are one tuple, so a pick does not rebuild it
        (O(1), not O(n)).
        """
        if candidates is self.endpoints or len(candidates) == len(self.endpoints):
            return None
        return self._kept(candidates)[1]

    def _kept(self, candidates: Sequence[Endpoint]) -> tuple[Sequence[Endpoint], frozenset[int], tuple[int, ...]]:
        """``(candidates, their indices as a set, in order)``, built once per list (see :meth:`_allowed`)."""
        kept = self._last_kept
        if kept[0] is candidates:  # the same list as the last pick's: the usual case, one identity check
            return kept
        found = self._allowed_sets.get(id(candidates))
        if found is not None and found[0] is candidates:
            self._last_kept = found
            return found
        if len(self._allowed_sets) >= _ALLOWED_SETS:
            self._allowed_sets.clear()  # lists seen once (blocked sets that changed): start over
        indices = tuple(self._index[e.name] for e in candidates)
        kept = self._allowed_sets[id(candidates)] = self._last_kept = (candidates, frozenset(indices), indices)
        return kept


class EDFScheduler:
    """Earliest-deadline-first weighted scheduling: a heap of each endpoint's next deadline.

    Picking pops the earliest deadline and pushes it back ``1 / weight`` later, so each endpoint is picked in
    proportion to its weight, smoothly interleaved (gRPC's weighted round robin works the same way): O(log n).
    Initial deadlines get a random phase, so processes started together do not all begin with endpoint 0.
    A router keeps one scheduler for all its endpoints and one for the endpoints serving each model that not
    all of them serve (:meth:`Router._schedule`): the endpoints of a model take turns among themselves.
    An endpoint that is not a candidate loses its turn (its deadline moves on as if it had been picked), so
    it comes back at its fair share rather than with a burst of saved-up picks.
    """

    __slots__ = ("_heap",)

    def __init__(self, weights: Sequence[float], rng: random.Random, indices: Sequence[int] | None = None) -> None:
        # ``indices``: the endpoints taking turns here (those serving one model); ``None``: all of them.
        chosen = range(len(weights)) if indices is None else indices
        self._heap = [(rng.random() / weights[i], i) for i in chosen]
        heapq.heapify(self._heap)

    def pick(self, weight: Callable[[int], float], allowed: frozenset[int] | None) -> int:
        """The next endpoint among ``allowed`` (``None``: all); ``weight(i)`` spaces its next turn.

        ``allowed`` must not be empty (the health registry's panic mode guarantees a candidate): each skipped
        endpoint's deadline moves on, so an allowed one comes first within a few pops.
        """
        heap = self._heap
        replace = heapq.heapreplace
        while True:
            deadline, index = heap[0]
            replace(heap, (deadline + 1.0 / weight(index), index))
            if allowed is None or index in allowed:
                return index
