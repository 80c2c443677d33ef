"""Unit tests of the router plugins, driven through their two hooks with a fake clock (no network)."""

from __future__ import annotations

import collections
import itertools
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from aurelis_core import Attempt, ConfigError, Endpoint, Pipeline, RequestContext
from aurelis_core._models import DEFAULT_CONTROLS
from aurelis_core.health import EndpointHealth
from aurelis_core.plugin import FAILED_ENDPOINTS, Anthropic, parse_duration
from aurelis_plugins.routers.ai_optimized import AIOptimized
from aurelis_plugins.routers.least_connections import LeastConnections
from aurelis_plugins.routers.load_based import LoadBased
from aurelis_plugins.routers.round_robin import RoundRobin
from aurelis_plugins.routers.weighted_response_time import WeightedResponseTime

ALL = [RoundRobin, LeastConnections, WeightedResponseTime, LoadBased, AIOptimized]
NAMES = [cls.name for cls in ALL]
CHAT_URL = "https://api.example/v1/chat/completions"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def endpoints(*weights: float) -> tuple[Endpoint, ...]:
    return tuple(Endpoint(url=f"http://127.0.0.1:{9000 + i}", name=f"e{i}", weight=w) for i, w in enumerate(weights))


def make(cls: Any, eps: tuple[Endpoint, ...], clock: FakeClock | None = None, **options: Any) -> Any:
    clock = clock or FakeClock()
    pipeline = SimpleNamespace(endpoints=eps, health=EndpointHealth(eps, clock=clock))
    return cls(cls.Config(seed=7, **options), pipeline, clock=clock)


def context(max_tokens: int = 100, stream: bool = False) -> RequestContext:
    ctx = RequestContext(httpx.Request("POST", CHAT_URL), None, None, False, DEFAULT_CONTROLS)
    ctx.json = {"model": "m", "max_tokens": max_tokens, "stream": stream}
    return ctx


def start(router: Any, ctx: RequestContext, clock: FakeClock) -> Attempt:
    endpoint = router.aurelis_route(ctx)
    attempt = Attempt(len(ctx.attempts) + 1, endpoint)
    attempt.started = clock.now
    ctx.attempts.append(attempt)
    return attempt


def end(router: Any, ctx: RequestContext, attempt: Attempt, clock: FakeClock, status: int | None = 200,
        error: BaseException | None = None) -> None:
    attempt.finished = clock.now
    if status is not None:
        attempt.first_byte = clock.now
        attempt.status_code = status
    attempt.error = error
    router.aurelis_attempt_end(ctx, attempt)


def run_sequential(router: Any, clock: FakeClock, n: int, latency: Any = lambda name: 0.1,
                   status: Any = lambda name: 200) -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    for _ in range(n):
        ctx = context()
        attempt = start(router, ctx, clock)
        name = attempt.endpoint.name  # type: ignore[union-attr]
        counts[name] += 1
        clock.now += latency(name)
        end(router, ctx, attempt, clock, status=status(name))
        clock.now += 0.01
    return counts


# --- registration and config -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_each_router_is_a_builtin_plugin_with_checked_options(name: str) -> None:
    config = {"plugins": [name], "endpoints": ["http://127.0.0.1:1", "http://127.0.0.1:2"], name: {"seed": 3}}
    pipeline = Pipeline(config)
    assert pipeline.plugin(name).config.seed == 3
    with pytest.raises(ConfigError, match="seed"):
        Pipeline({**config, name: {"seed": "x"}})
    with pytest.raises(ConfigError, match=r"unknown key 'sede'.*did you mean 'seed'"):
        Pipeline({**config, name: {"sede": 1}})


def test_decay_options_must_be_positive() -> None:
    base = {"endpoints": ["http://127.0.0.1:1", "http://127.0.0.1:2"]}
    with pytest.raises(ConfigError, match=r"\[ai_optimized\] decay: expected a number > 0, got 0"):
        Pipeline({**base, "plugins": ["ai_optimized"], "ai_optimized": {"decay": 0}})
    with pytest.raises(ConfigError, match=r"\[weighted_response_time\] blackout: expected a number >= 0"):
        Pipeline({**base, "plugins": ["weighted_response_time"], "weighted_response_time": {"blackout": -1}})


def test_two_routers_are_refused() -> None:
    with pytest.raises(ConfigError, match="only one router"):
        Pipeline({"plugins": ["round_robin", "ai_optimized"], "endpoints": ["http://127.0.0.1:1"]})


# --- distribution ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [RoundRobin, WeightedResponseTime])
def test_edf_routers_follow_weights_exactly(cls: Any) -> None:
    clock = FakeClock()
    router = make(cls, endpoints(3, 1, 1), clock)
    counts = run_sequential(router, clock, 500)
    assert counts == {"e0": 300, "e1": 100, "e2": 100}


def test_round_robin_interleaves_and_starts_at_a_random_offset() -> None:
    eps = endpoints(1, 1, 1, 1)
    firsts = set()
    for seed in range(20):
        router = RoundRobin(RoundRobin.Config(seed=seed), SimpleNamespace(endpoints=eps, health=EndpointHealth(eps)))
        clock = FakeClock()
        sequence = [start(router, context(), clock).endpoint.name for _ in range(8)]  # type: ignore[union-attr]
        assert sorted(sequence[:4]) == ["e0", "e1", "e2", "e3"]
        assert sequence[4:] == sequence[:4]
        firsts.add(sequence[0])
    assert len(firsts) > 1


@pytest.mark.parametrize("cls", [LeastConnections, LoadBased])
def test_p2c_routers_split_by_weight_when_load_is_equal(cls: Any) -> None:
    clock = FakeClock()
    router = make(cls, endpoints(3, 1), clock)
    counts = run_sequential(router, clock, 4000)
    assert 0.70 < counts["e0"] / 4000 < 0.80


def test_least_connections_prefers_fewer_in_flight() -> None:
    clock = FakeClock()
    router = make(LeastConnections, endpoints(1, 1, 1), clock)
    held = [start(router, context(), clock) for _ in range(30)]
    # Two choices keep the in-flight counts within one of each other.
    assert max(router.inflight) - min(router.inflight) <= 1
    for attempt in held:
        end(router, context(), attempt, clock)
    assert router.inflight == [0, 0, 0]


def test_seed_makes_picks_reproducible() -> None:
    for cls in ALL:
        runs = []
        for _ in range(2):
            clock = FakeClock()
            router = make(cls, endpoints(1, 1, 1, 1), clock)
            runs.append([start(router, context(), clock).endpoint.name for _ in range(50)])  # type: ignore[union-attr]
        assert runs[0] == runs[1], cls.name


# --- in-flight accounting --------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL)
def test_in_flight_counts_return_to_zero_whatever_the_outcome(cls: Any) -> None:
    import asyncio

    clock = FakeClock()
    router = make(cls, endpoints(1, 1, 1), clock)
    outcomes = [
        {"status": 200}, {"status": 503}, {"status": 429}, {"status": 400},
        {"status": None, "error": TimeoutError("timed out")},
        {"status": None, "error": asyncio.CancelledError()},
        {"status": 200, "error": asyncio.CancelledError()},  # stream closed mid-body
    ]
    attempts = [(context(), outcome) for outcome in outcomes * 5]
    started = [(ctx, start(router, ctx, clock), outcome) for ctx, outcome in attempts]
    assert sum(router.inflight) == len(started)
    clock.now += 1.0
    for ctx, attempt, outcome in started:
        end(router, ctx, attempt, clock, **outcome)
    assert router.inflight == [0, 0, 0]
    # A stray end (an attempt this router never counted) never drives a count below zero.
    stray = Attempt(1, router.endpoints[0])
    stray.finished = clock.now
    router.aurelis_attempt_end(context(), stray)
    assert router.inflight == [0, 0, 0]
    if cls is LoadBased:
        assert [b.outstanding for b in router.budgets] == [0, 0, 0]
    if cls is AIOptimized:
        assert router._pending_count == [0, 0, 0] and router._pending_tokens == [0, 0, 0]


@pytest.mark.parametrize("cls", ALL)
def test_attempt_without_endpoint_is_ignored(cls: Any) -> None:
    router = make(cls, endpoints(1, 1))
    router.aurelis_attempt_end(context(), Attempt(1, None))
    assert router.inflight == [0, 0]


# --- health: exclusion, panic, slow start ------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL)
def test_blocked_endpoints_are_not_picked_and_all_blocked_means_panic(cls: Any) -> None:
    clock = FakeClock()
    eps = endpoints(1, 1, 1)
    router = make(cls, eps, clock)
    health = router.health
    health.block(eps[0], clock.now + 30, "open")
    health.block(eps[2], clock.now + 30, "rate_limited")
    assert set(run_sequential(router, clock, 50)) == {"e1"}
    health.block(eps[1], clock.now + 30, "ejected")
    assert len(run_sequential(router, clock, 200)) == 3  # panic: everyone again
    clock.now += 60  # the blocks expired
    assert len(run_sequential(router, clock, 200)) == 3


@pytest.mark.parametrize("cls", ALL)
def test_a_pick_with_blocked_endpoints_reuses_the_candidate_set(cls: Any) -> None:
    # With endpoints blocked, each pick must not rebuild the candidates from all endpoints: the registry's
    # list and the router's index set are built once and reused until a status changes.
    clock = FakeClock()
    eps = endpoints(*[1] * 16)
    router = make(cls, eps, clock)
    for endpoint in eps[:4]:
        router.health.block(endpoint, clock.now + 60, "open")
    counts = run_sequential(router, clock, 50)
    assert not set(counts) & {"e0", "e1", "e2", "e3"}
    candidates = router.health.candidates(eps)
    allowed = router._allowed(candidates)
    assert allowed == frozenset(range(4, 16)) and len(router._allowed_sets) == 1
    run_sequential(router, clock, 50)
    assert router._allowed(router.health.candidates(eps)) is allowed and len(router._allowed_sets) == 1
    router.health.block(eps[4], clock.now + 60, "rate_limited")
    assert "e4" not in run_sequential(router, clock, 50)
    assert router._allowed(router.health.candidates(eps)) == frozenset(range(5, 16))


@pytest.mark.parametrize("cls", ALL)
def test_half_open_endpoint_is_picked_only_while_it_has_probes(cls: Any) -> None:
    clock = FakeClock()
    eps = endpoints(1, 1)
    router = make(cls, eps, clock)
    router.health.set_circuit(eps[0], "half_open", probes=0)
    assert set(run_sequential(router, clock, 30)) == {"e1"}


@pytest.mark.parametrize("cls", ALL)
def test_recovered_endpoint_ramps_up_in_slow_start(cls: Any) -> None:
    clock = FakeClock()
    eps = endpoints(1, 1)
    router = make(cls, eps, clock)
    router.health.set_circuit(eps[0], "open")
    router.health.set_circuit(eps[0], "closed")  # just recovered, on the fake clock: 10% of its share
    assert router.health.status["e0"].recovered_at == clock.now
    early = run_sequential(router, clock, 400, latency=lambda name: 0.0)
    assert early["e0"] < early["e1"] * 0.5, early
    clock.now += 31  # the 30 s ramp is over
    late = run_sequential(router, clock, 400, latency=lambda name: 0.0)
    assert late["e0"] > 100, late


# --- learning routers --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [WeightedResponseTime, AIOptimized])
def test_learning_routers_avoid_a_slow_endpoint(cls: Any) -> None:
    clock = FakeClock()
    options = {"blackout": 0.0} if cls is WeightedResponseTime else {}
    router = make(cls, endpoints(1, 1, 1), clock, **options)
    counts = run_sequential(router, clock, 600, latency=lambda name: 2.0 if name == "e0" else 0.1)
    assert counts["e0"] < 60, counts


@pytest.mark.parametrize("cls", [WeightedResponseTime, AIOptimized])
def test_learning_routers_avoid_an_endpoint_that_fails_fast(cls: Any) -> None:
    clock = FakeClock()
    options = {"blackout": 0.0} if cls is WeightedResponseTime else {}
    router = make(cls, endpoints(1, 1, 1), clock, **options)
    # e0 fails at once: fast failures must not make it look attractive.
    counts = run_sequential(
        router, clock, 600, latency=lambda name: 0.001 if name == "e0" else 0.2,
        status=lambda name: 503 if name == "e0" else 200,
    )
    assert counts["e0"] < 60, counts


def test_weighted_response_time_gives_new_endpoints_the_mean_weight_during_blackout() -> None:
    clock = FakeClock()
    router = make(WeightedResponseTime, endpoints(1, 1), clock, blackout=10.0)
    run_sequential(router, clock, 8, latency=lambda name: 1.0 if name == "e0" else 0.1)  # < 10 s of reports
    clock.now += 1.0
    start(router, context(), clock)  # triggers a rebuild
    assert router.weights[0] == pytest.approx(router.weights[1])


@pytest.mark.parametrize("cls", ALL)
def test_a_retry_avoids_the_endpoints_that_failed_this_request(cls: Any) -> None:
    clock = FakeClock()
    eps = endpoints(1, 1, 1)
    for _ in range(30):
        router = make(cls, eps, clock)
        # Without the retry plugin: the request's own failed attempts say where not to go.
        ctx = context()
        first = start(router, ctx, clock)
        end(router, ctx, first, clock, status=503)
        second = start(router, ctx, clock)
        assert second.endpoint != first.endpoint
        end(router, ctx, second, clock, status=None, error=TimeoutError("timed out"))
        third = start(router, ctx, clock)
        assert third.endpoint not in (first.endpoint, second.endpoint)
        end(router, ctx, third, clock, status=503)
        # Everything failed: any endpoint rather than none.
        assert start(router, ctx, clock).endpoint in eps
        # With a retry policy's record (the core's FAILED_ENDPOINTS): it wins (here it names an endpoint no
        # attempt of this request reached).
        ctx = context()
        FAILED_ENDPOINTS.set(ctx, {"e0", "e1"})
        ctx.attempts.append(Attempt(1, None))
        assert start(router, ctx, clock).endpoint is eps[2]
        ctx = context()
        FAILED_ENDPOINTS.set(ctx, "not a set")  # type: ignore[arg-type]  # unexpected data: ignored, not trusted
        failed = start(router, ctx, clock)
        end(router, ctx, failed, clock, status=500)
        assert start(router, ctx, clock).endpoint != failed.endpoint
        clock.now += 1.0


def test_a_4xx_that_blames_the_request_does_not_steer_the_retry() -> None:
    from aurelis_plugins.routers._base import failed_endpoints

    ctx = context()
    for status, endpoint in ((400, "e0"), (404, "e1"), (429, "e2")):
        attempt = Attempt(len(ctx.attempts) + 1, Endpoint(url="http://127.0.0.1:1", name=endpoint))
        attempt.status_code = status
        ctx.attempts.append(attempt)
    assert failed_endpoints(ctx) == {"e2"}


def test_ai_optimized_believes_a_brownout_after_a_few_failures() -> None:
    # A long healthy record (hundreds of successes) must not outweigh a sudden run of failures: change
    # detection drops the record, so the endpoint is avoided after a handful of attempts, not dozens.
    clock = FakeClock()
    router = make(AIOptimized, endpoints(1, 1, 1), clock)
    run_sequential(router, clock, 600)
    counts = run_sequential(router, clock, 300, status=lambda name: 503 if name == "e0" else 200)
    assert counts["e0"] <= 3, counts


def test_ai_optimized_explores_an_endpoint_again_after_its_record_fades() -> None:
    clock = FakeClock()
    router = make(AIOptimized, endpoints(1, 1), clock)
    run_sequential(router, clock, 300, latency=lambda name: 0.1, status=lambda name: 503 if name == "e0" else 200)
    clock.now += 600.0  # ten minutes of silence: the evidence decayed away
    counts = run_sequential(router, clock, 200)
    assert counts["e0"] > 20, counts


def test_ai_optimized_does_not_forget_a_slow_endpoint_between_sparse_requests() -> None:
    # One replica of many sees little traffic: a request every 3 s. e0 is 20x slower than the others, and
    # long attempts there are cut off by the caller's timeout (a censored observation: at least that slow).
    # The process must not forget what it learned between two of its requests and probe e0 again and again
    # (a thin estimate used to fade back to the others' mean within seconds).
    clock = FakeClock()
    router = make(AIOptimized, endpoints(1, 1, 1), clock)
    counts: collections.Counter[str] = collections.Counter()
    for i in range(600):
        ctx = context(max_tokens=(50, 200)[i % 2])
        attempt = start(router, ctx, clock)
        name = attempt.endpoint.name  # type: ignore[union-attr]
        if i >= 100:  # after the first few minutes
            counts[name] += 1
        if name != "e0":
            clock.now += 0.1 * (1 + i % 2)
            end(router, ctx, attempt, clock)
        elif i % 2 == 0:
            clock.now += 2.0
            end(router, ctx, attempt, clock)
        else:
            clock.now += 2.5  # the caller gave up: 2.5 s or more
            end(router, ctx, attempt, clock, status=None, error=TimeoutError("timed out"))
        clock.now += 3.0
    assert counts["e0"] <= 5, counts  # under 1% of 500 requests


def test_ai_optimized_gives_an_endpoint_its_share_back_soon_after_a_brownout() -> None:
    clock = FakeClock()
    router = make(AIOptimized, endpoints(1, 1, 1), clock)
    run_sequential(router, clock, 600)
    failed = iter(range(10**6))
    # Brownout: e0 fails 3 requests in 5 for two minutes (~1100 requests); then it is healthy again.
    run_sequential(router, clock, 1100, status=lambda name: 503 if name == "e0" and next(failed) % 5 < 3 else 200)
    ended = clock.now
    shares = []
    while clock.now < ended + 120.0:
        counts = run_sequential(router, clock, 90)  # ~10 s
        shares.append(counts["e0"] / 90)
    assert max(shares[:6]) >= 0.15, shares  # within a minute, a 10 s stretch with at least half its share


def test_latency_is_normalised_per_output_token() -> None:
    clock = FakeClock()
    router = make(WeightedResponseTime, endpoints(1, 1), clock, blackout=0.0)
    # e0 answers 10x longer requests in 10x the time: per token it is as fast as e1.
    for _ in range(100):
        for name, tokens, seconds in (("e0", 1000, 1.0), ("e1", 100, 0.1)):
            ctx = context(max_tokens=tokens)
            attempt = Attempt(1, next(e for e in router.endpoints if e.name == name))
            attempt.started = clock.now
            router.inflight[int(name[1])] += 1
            clock.now += seconds
            end(router, ctx, attempt, clock)
    clock.now += 2
    start(router, context(), clock)
    assert router.weights[0] == pytest.approx(router.weights[1], rel=0.01)


# --- load_based ----------------------------------------------------------------------------------------------------


def test_parse_duration() -> None:
    assert parse_duration("6m0s") == 360.0
    assert parse_duration("1.5s") == 1.5
    assert parse_duration("20ms") == pytest.approx(0.02)
    assert parse_duration("1h2m3s") == 3723.0
    # Microseconds in each spelling Go accepts: "us", MICRO SIGN (what Go writes), GREEK SMALL LETTER MU.
    for micro in ("us", "\u00b5s", "\u03bcs"):
        assert parse_duration("250" + micro) == pytest.approx(25e-5)
    assert parse_duration("7") == 7.0
    assert parse_duration("soon") is None
    assert parse_duration("") is None


def _headers(**values: str) -> Any:
    import httpx

    return httpx.Headers({k.replace("_", "-"): v for k, v in values.items()})


def test_load_based_excludes_an_endpoint_without_token_headroom_until_reset() -> None:
    clock = FakeClock()
    router = make(LoadBased, endpoints(1, 1), clock)
    ctx = context(max_tokens=500)
    attempt = start(router, ctx, clock)
    attempt.headers = _headers(
        x_ratelimit_limit_tokens="10000", x_ratelimit_remaining_tokens="50", x_ratelimit_reset_tokens="20s",
        x_ratelimit_limit_requests="100", x_ratelimit_remaining_requests="50", x_ratelimit_reset_requests="1s",
    )
    end(router, ctx, attempt, clock)
    exhausted = attempt.endpoint.name  # type: ignore[union-attr]
    picks = run_sequential(router, clock, 100)  # 100 x 0.11 s = 11 s < 20 s
    assert exhausted not in picks
    clock.now += 30
    assert exhausted in run_sequential(router, clock, 100)


def test_load_based_reads_anthropics_rate_limit_headers_through_the_attempts_dialect() -> None:
    import datetime

    clock = FakeClock()
    router = make(LoadBased, endpoints(1, 1), clock)
    ctx = context(max_tokens=500)
    attempt = start(router, ctx, clock)
    attempt.dialect = Anthropic()
    reset = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=20)
    attempt.headers = _headers(
        anthropic_ratelimit_tokens_limit="10000", anthropic_ratelimit_tokens_remaining="50",
        anthropic_ratelimit_tokens_reset=reset.isoformat(timespec="seconds").replace("+00:00", "Z"),
    )
    end(router, ctx, attempt, clock)
    exhausted = attempt.endpoint.name  # type: ignore[union-attr]
    assert exhausted not in run_sequential(router, clock, 100)  # 11 s < the 20 s to the reset
    clock.now += 30
    assert exhausted in run_sequential(router, clock, 100)


def test_load_based_prefers_the_endpoint_with_more_headroom() -> None:
    clock = FakeClock()
    router = make(LoadBased, endpoints(1, 1), clock)
    for name, remaining in (("e0", "9000"), ("e1", "1000")):
        ctx = context()
        attempt = Attempt(1, next(e for e in router.endpoints if e.name == name))
        attempt.headers = _headers(x_ratelimit_limit_tokens="10000", x_ratelimit_remaining_tokens=remaining,
                                   x_ratelimit_reset_tokens="1m0s")
        attempt.status_code = 200
        router.aurelis_attempt_end(ctx, attempt)
    held = [start(router, context(), clock) for _ in range(40)]
    assert router.inflight[0] > 2 * router.inflight[1]
    for attempt in held:
        end(router, context(), attempt, clock)


@pytest.mark.parametrize("asked", [{"retry_after": "5"}, {"retry_after_ms": "5000"}, {"retry_after_ms": "5000",
                                                                                      "retry_after": "1"}])
def test_load_based_treats_a_429_with_retry_after_as_exhausted(asked: dict[str, str]) -> None:
    """``retry-after``, or Azure's and OpenAI's ``retry-after-ms`` (which wins: it is the precise one)."""
    clock = FakeClock()
    router = make(LoadBased, endpoints(1, 1), clock)
    ctx = context()
    attempt = start(router, ctx, clock)
    attempt.headers = _headers(**asked)
    end(router, ctx, attempt, clock, status=429)
    limited = attempt.endpoint.name  # type: ignore[union-attr]
    assert limited not in run_sequential(router, clock, 30, latency=lambda name: 0.0)
    clock.now += 4
    assert limited not in run_sequential(router, clock, 30, latency=lambda name: 0.0)
    clock.now += 2
    assert limited in run_sequential(router, clock, 30, latency=lambda name: 0.0)


def test_profile_reads_max_tokens_from_a_buffered_body_when_normalize_did_not_run() -> None:
    from aurelis_plugins.routers._base import request_profile

    def profile_of(url: str, body: bytes) -> Any:
        return request_profile(RequestContext(httpx.Request("POST", url, content=body), None, None, False,
                                              DEFAULT_CONTROLS), 256)

    profile = profile_of(CHAT_URL, b'{"max_tokens": 42, "stream": true, "messages": []}')
    assert (profile.output_tokens, profile.stream, profile.prompt_tokens) == (42, True, 12)
    assert profile_of(CHAT_URL, b"not json").output_tokens == 256
    # Each format's own budget, read through the request's dialect: Gemini's generationConfig, the Responses
    # API's max_output_tokens; an embedding writes no output; Gemini streams by its path.
    gemini = "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash"
    body = b'{"contents": [], "generationConfig": {"maxOutputTokens": 77}}'
    assert profile_of(gemini + ":generateContent", body).output_tokens == 77
    assert profile_of(gemini + ":streamGenerateContent?alt=sse", body).stream is True
    assert profile_of("https://api.openai.com/v1/responses", b'{"max_output_tokens": 9}').output_tokens == 9
    assert profile_of("https://api.openai.com/v1/embeddings", b'{"input": "x"}').output_tokens == 0


def test_ai_optimized_stays_sure_of_a_slow_endpoint_through_silence() -> None:
    # A process that learned e0 is 10x slow and then sent nothing for a minute (as one replica of many does
    # between its requests) must not draw e0's latency as widely as a single sample's: its mean is known from
    # many samples. The picks are drawn without learning from them, so every draw sees the same minute.
    picks = 0
    for seed in range(4):
        clock = FakeClock()
        router = make(AIOptimized, endpoints(1, 1, 1), clock)
        router.rng.seed(seed)
        noise = itertools.cycle((0.5, 1.0, 2.0))

        def latency(name: str, noise: Any = noise) -> float:
            return next(noise) * (1.0 if name == "e0" else 0.1)

        run_sequential(router, clock, 600, latency=latency)
        clock.now += 60.0
        ctx = context()
        picks += sum(router._pick(ctx, router.endpoints, clock.now) == 0 for _ in range(10000))
    assert picks <= 100, picks  # 0.25% (57); with the count of its samples decayed by time, 0.43% (173)
