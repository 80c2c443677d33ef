"""Routing benchmark: the real router plugins in a discrete-event simulation, and the cost of one pick.

Run: ``.venv/bin/python -m pytest benchmarks/bench_routing.py -s`` (``-s`` shows the tables).

``test_scenarios`` runs every router through the five scenarios of :mod:`sim.scenarios` with K = 1, 4 and 16
client processes (each its own router, as replicas of a service are), ``SEEDS`` seeds of ``DURATION``
simulated seconds each, prints p50 / p99* / error rate / share of attempts sent to the misbehaving endpoint
(and, for scenario 5, the seconds until it had its share back, per seed), and asserts the targets:

- at K = 4 (the research notes' setting; printed at every K): ``ai_optimized``'s p99* is at least 30% below
  ``round_robin``'s in scenarios 1-3 (p99*: a failed request counts as the timeout, 20 s: the caller waited
  and got nothing), and its error rate is no higher than ``weighted_response_time``'s;
- at every K: its p99* is within 15% of ``least_connections``' in scenario 4; from 30 s after endpoint 0 of
  scenario 1 slowed down it sends that endpoint at most ``AI_SLOW_SHARE`` (0.3%) of the attempts; after the
  brownout of scenario 5 ends, the endpoint has its share back (half its capacity share over 10 s) within
  ``RECOVERY_TARGET`` (60 s), median over the seeds;
- in scenario 1, from 30 s after endpoint 0 slowed down, the latency-learning routers (``SHARE_CHECKED``) send
  it at most twice its share of the capacity (a tenth of its old capacity: 2.4% of the total). The research
  notes ask this of every router but ``round_robin``; ``least_connections`` and ``load_based`` miss it (about
  6% and 7.5%, printed in the "after 30 s" column): they see only their own process's in-flight counts, which
  at this load are 0 or 1 per endpoint, so the slow endpoint often ties with a fast one.

p99* is this benchmark's own definition; the research table's p99 is over successful requests only (its
round robin shows p99 3.95 s with 20% errors in scenario 1), which would reward a router for failing its
slow requests. Counting a failure as the full timeout makes a 1% error rate alone put p99* at the timeout.

``test_pick_cost`` measures one ``aurelis_route`` + ``aurelis_attempt_end`` pair per router with
pytest-benchmark (5 endpoints, nothing blocked), against the same pair of calls on a router-less baseline
(a plain function returning the first endpoint), and prints the ratio. ``test_pick_cost_blocked`` measures
the same pair per router with 4, 16 and 64 endpoints, first none blocked, then a quarter of them blocked (as
open circuits, ejections and rate limits are), and prints the ratio of the blocked pick to the unblocked
one: a pick costs the same however many endpoints there are and whether some are blocked.
``test_pick_cost_models`` measures the pair per router with 8 endpoints and requests cycling over 3 models,
first with endpoints that serve every model, then with each endpoint listing the models it serves (names and a
glob), and prints the ratio: choosing among the endpoints serving a model must not slow a pick noticeably.
"""

from __future__ import annotations

import itertools
import sys
from fnmatch import fnmatchcase
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from sim import CLIENTS, ROUTERS, SCENARIOS, Result, bad_capacity_share, run_scenario

from aurelis_core import Attempt, Endpoint, RequestContext
from aurelis_core._models import DEFAULT_CONTROLS
from aurelis_core.health import EndpointHealth

SEEDS = range(5)
#: What the picks are for: routers read the request's format (OpenAI chat) through its dialect.
CHAT_REQUEST = httpx.Request("POST", "https://api.example/v1/chat/completions")
DURATION = 600.0
TIMEOUT = 20.0
#: Routers held to the traffic-share check of scenario 1 (see the module docstring).
SHARE_CHECKED = ("weighted_response_time", "ai_optimized")
#: The number of client processes of the research notes' simulation, at which the comparisons with
#: ``round_robin`` and ``weighted_response_time`` are asserted (they are printed at every K).
RESEARCH_CLIENTS = 4
#: ``ai_optimized``'s share of attempts to the slow endpoint of scenario 1, 30 s after it slowed, at every K.
AI_SLOW_SHARE = 0.003
#: Seconds after a brownout ends within which ``ai_optimized`` gives the endpoint its share back (scenario 5).
RECOVERY_TARGET = 60.0


def _run_all() -> dict[tuple[str, int], dict[str, Result]]:
    results: dict[tuple[str, int], dict[str, Result]] = {}
    for scenario_name, scenario in SCENARIOS.items():
        for clients in CLIENTS:
            per_router = results[scenario_name, clients] = {}
            for router in ROUTERS:
                total = Result()
                for seed in SEEDS:
                    total.merge(run_scenario(scenario, router, seed, DURATION, clients))
                per_router[router] = total
    return results


def _print(results: dict[tuple[str, int], dict[str, Result]]) -> None:
    for (scenario_name, clients), per_router in results.items():
        scenario = SCENARIOS[scenario_name]
        bad = scenario.bad
        print(f"\n{scenario_name}, K = {clients} ({len(SEEDS)} seeds x {DURATION:.0f} s)")
        recovery = " recovered after (s)" if scenario.recovers is not None else ""
        print(f"  {'router':24s} {'requests':>8s} {'p50 s':>7s} {'p99* s':>7s} {'errors':>7s} {'to bad':>7s}"
              f" {'after 30 s':>10s}{recovery}")
        for router, result in per_router.items():
            share = late = "      -"
            if bad:
                share = f"{100 * _share(result.attempts_to, bad):6.2f}%"
                late = f"{100 * _share(result.settled_attempts_to, bad):9.2f}%"
            times = " " + " ".join(f"{t:.0f}" for t in sorted(result.recoveries)) if recovery else ""
            print(
                f"  {router:24s} {result.count:8d} {result.percentile(0.5):7.2f} {result.percentile(0.99):7.2f}"
                f" {100 * result.error_rate:6.2f}% {share} {late}{times}"
            )


def _share(attempts_to: dict[str, int], name: str) -> float:
    total = sum(attempts_to.values())
    return attempts_to.get(name, 0) / total if total else 0.0


def test_scenarios() -> None:
    results = _run_all()
    _print(results)
    misses = []
    slow = SCENARIOS["slow_endpoint"]
    limit = 2 * bad_capacity_share(slow)
    for clients in CLIENTS:
        at = f"K = {clients}"
        if clients == RESEARCH_CLIENTS:
            for name in ("slow_endpoint", "heterogeneous", "brownout"):
                ai = results[name, clients]["ai_optimized"]
                rr = results[name, clients]["round_robin"]
                wrt = results[name, clients]["weighted_response_time"]
                ratio = ai.percentile(0.99) / rr.percentile(0.99)
                print(f"{name}, {at}: ai p99*/rr p99* = {ratio:.2f} (target <= 0.70); "
                      f"ai errors {100 * ai.error_rate:.2f}% vs wrt {100 * wrt.error_rate:.2f}%")
                if ratio > 0.70:
                    misses.append(f"{name}, {at}: ai_optimized p99* is {ratio:.2f} of round_robin's (target <= 0.70)")
                if ai.error_rate > wrt.error_rate:
                    misses.append(f"{name}, {at}: ai_optimized errors {100 * ai.error_rate:.2f}% > "
                                  f"weighted_response_time's {100 * wrt.error_rate:.2f}%")
        high = results["high_load", clients]
        ratio = high["ai_optimized"].percentile(0.99) / high["least_connections"].percentile(0.99)
        print(f"high_load, {at}: ai p99*/least_connections p99* = {ratio:.2f} (target <= 1.15)")
        if ratio > 1.15:
            misses.append(f"high_load, {at}: ai_optimized p99* is {ratio:.2f} of least_connections' (target <= 1.15)")
        for router in SHARE_CHECKED:
            result = results["slow_endpoint", clients][router]
            share = _share(result.settled_attempts_to, slow.bad)  # type: ignore[arg-type]
            if share > limit:
                misses.append(f"slow_endpoint, {at}: {router} sends {100 * share:.2f}% of attempts to the slow "
                              f"endpoint after 30 s (target <= {100 * limit:.2f}%, twice its capacity share)")
        ai_slow = results["slow_endpoint", clients]["ai_optimized"]
        share = _share(ai_slow.settled_attempts_to, slow.bad)  # type: ignore[arg-type]
        print(f"slow_endpoint, {at}: ai share to the slow endpoint after 30 s {100 * share:.2f}% "
              f"(target <= {100 * AI_SLOW_SHARE:.2f}%)")
        if share > AI_SLOW_SHARE:
            misses.append(f"slow_endpoint, {at}: ai_optimized sends {100 * share:.2f}% of attempts to the slow "
                          f"endpoint after 30 s (target <= {100 * AI_SLOW_SHARE:.2f}%)")
        recoveries = sorted(results["brownout_ends", clients]["ai_optimized"].recoveries)
        median = recoveries[len(recoveries) // 2]
        print(f"brownout_ends, {at}: ai gives the endpoint its share back after {median:.0f} s (median of "
              f"{len(recoveries)} runs; target < {RECOVERY_TARGET:.0f} s)")
        if median >= RECOVERY_TARGET:
            misses.append(f"brownout_ends, {at}: ai_optimized gives the endpoint its share back after {median:.0f} s "
                          f"(median; target < {RECOVERY_TARGET:.0f} s)")
    assert not misses, "\n".join(misses)


# --- cost of a pick ------------------------------------------------------------------------------------------

ENDPOINTS = tuple(Endpoint(url=f"http://127.0.0.1:{8000 + i}", name=f"e{i}") for i in range(5))


def _router(name: str) -> Any:
    cls = ROUTERS[name]
    pipeline = SimpleNamespace(endpoints=ENDPOINTS, health=EndpointHealth(ENDPOINTS))
    return cls(cls.Config(seed=1), pipeline)


def _pair(route: Any, end: Any) -> Any:
    ctx = RequestContext(CHAT_REQUEST, None, None, False, DEFAULT_CONTROLS)
    ctx.json = {"model": "m", "max_tokens": 128}

    def one() -> None:
        endpoint = route(ctx)
        attempt = Attempt(1, endpoint)
        attempt.status_code = 200
        attempt.first_byte = attempt.finished = attempt.started + 0.5
        end(ctx, attempt)

    # Warm the statistics so the learning routers run their steady-state path.
    for _ in range(200):
        one()
    return one


_baseline: dict[str, float] = {}


def _first(ctx: RequestContext) -> Endpoint:
    return ENDPOINTS[0]


def _nothing(ctx: RequestContext, attempt: Attempt) -> None:
    return None


def test_pick_cost_baseline(benchmark: Any) -> None:
    benchmark(_pair(_first, _nothing))
    _baseline["median"] = benchmark.stats.stats.median


@pytest.mark.parametrize("name", list(ROUTERS))
def test_pick_cost(benchmark: Any, name: str) -> None:
    router = _router(name)
    benchmark(_pair(router.aurelis_route, router.aurelis_attempt_end))
    median = benchmark.stats.stats.median
    base = _baseline.get("median")
    extra = f", {median / base:.1f}x the router-less loop ({base * 1e6:.2f} us)" if base else ""
    print(f"\n{name}: route + attempt_end {median * 1e6:.2f} us (median){extra}")


# --- cost of a pick while endpoints are blocked ------------------------------------------------------------------

#: (router, endpoints, blocked): each size unblocked first, then with a quarter of its endpoints blocked.
BLOCKED_CASES = [(name, size, blocked) for name in ROUTERS for size in (4, 16, 64) for blocked in (0, size // 4)]
_unblocked: dict[tuple[str, int], float] = {}


@pytest.mark.parametrize(("name", "size", "blocked"), BLOCKED_CASES)
def test_pick_cost_blocked(benchmark: Any, name: str, size: int, blocked: int) -> None:
    endpoints = tuple(Endpoint(url=f"http://127.0.0.1:{8000 + i}", name=f"e{i}") for i in range(size))
    health = EndpointHealth(endpoints)
    for endpoint in endpoints[:blocked]:  # open circuits, ejections, rate limits: blocked for the whole run
        health.block(endpoint, health.clock() + 3600.0, "open")
    cls = ROUTERS[name]
    router = cls(cls.Config(seed=1), SimpleNamespace(endpoints=endpoints, health=health))
    benchmark(_pair(router.aurelis_route, router.aurelis_attempt_end))
    median = benchmark.stats.stats.median
    if not blocked:
        _unblocked[name, size] = median
        print(f"\n{name}, {size} endpoints: {median * 1e6:.2f} us (median)")
        return
    base = _unblocked.get((name, size))
    ratio = f", {median / base:.2f}x the unblocked pick" if base else ""
    print(f"\n{name}, {size} endpoints, {blocked} blocked: {median * 1e6:.2f} us (median){ratio}")


# --- cost of a pick among the endpoints serving the request's model ------------------------------------------------

MODELS = ("gpt-4.1", "gpt-4.1-mini", "gpt-4o-mini")
#: What each of the 8 endpoints serves when endpoints list their models: 3 serve gpt-4.1, 3 gpt-4.1-mini, 2
#: the mini models by a glob.
SERVED = (("gpt-4.1",),) * 3 + (("gpt-4.1-mini",),) * 3 + (("gpt-4.1-mini", "gpt-4o-*"),) * 2
_every_model: dict[str, float] = {}


@pytest.mark.parametrize(("name", "listed"), [(name, listed) for name in ROUTERS for listed in (False, True)])
def test_pick_cost_models(benchmark: Any, name: str, listed: bool) -> None:
    endpoints = tuple(
        Endpoint(url=f"http://127.0.0.1:{8000 + i}", name=f"e{i}", models=served if listed else None)
        for i, served in enumerate(SERVED)
    )
    cls = ROUTERS[name]
    router = cls(cls.Config(seed=1), SimpleNamespace(endpoints=endpoints, health=EndpointHealth(endpoints)))
    contexts = []
    for model in MODELS:
        ctx = RequestContext(CHAT_REQUEST, None, None, False, DEFAULT_CONTROLS)
        ctx.json = {"model": model, "max_tokens": 128}
        contexts.append(ctx)
    turn = itertools.cycle(contexts).__next__
    route, end = router.aurelis_route, router.aurelis_attempt_end

    def one() -> Endpoint:
        ctx = turn()
        endpoint: Endpoint = route(ctx)
        attempt = Attempt(1, endpoint)
        attempt.status_code = 200
        attempt.first_byte = attempt.finished = attempt.started + 0.5
        end(ctx, attempt)
        return endpoint

    for n in range(300):  # warm the statistics; every pick goes to an endpoint serving the model
        endpoint = one()
        assert not listed or any(fnmatchcase(MODELS[n % 3], served) for served in endpoint.models or ())
    benchmark(one)
    median = benchmark.stats.stats.median
    if not listed:
        _every_model[name] = median
        print(f"\n{name}, 8 endpoints serving every model: {median * 1e6:.2f} us (median)")
        return
    base = _every_model.get(name)
    ratio = f", {median / base:.2f}x the pick without models" if base else ""
    print(f"\n{name}, 8 endpoints listing 3 models: {median * 1e6:.2f} us (median){ratio}")
