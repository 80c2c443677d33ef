"""Core overhead: an L1 hit against the client's own floor, the miss path against the raw client (its CPU cost
over an instant transport, and the whole of it against a loopback upstream), import time.

Run: ``.venv/bin/python -m pytest benchmarks/bench_core.py -s``

Each figure is a ratio or a difference against a baseline measured in the same process, interleaved round by
round with the subject (which of the two goes first alternates), so the machine's noise and its drift hit both
alike. Both medians are printed with the figure the target is on. Sync and async clients are measured alike:
an async client's calls run on one event loop, timed inside it.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest

import aurelis_core

sys.path.insert(0, str(Path(__file__).parent))

from _upstreams import upstream as local_upstream

CONFIG = {"plugins": ["normalize", "memory"]}
BODY: dict[str, Any] = {
    "model": "gpt-4.1-mini",
    "messages": [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "Summarise the plot of Hamlet in two sentences."},
    ],
    "temperature": 0,
    "max_tokens": 200,
}
ANSWER = (
    b'{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4.1-mini","choices":[{"index":0,'
    b'"message":{"role":"assistant","content":"Prince Hamlet seeks revenge on his uncle Claudius, who murdered '
    b'his father to seize the throne. His hesitation and feigned madness lead to a tragic chain of deaths."},'
    b'"finish_reason":"stop"}],"usage":{"prompt_tokens":30,"completion_tokens":40,"total_tokens":70}}'
)


def instant_transport(http: Any, is_async: bool = False) -> Any:
    """The floor: a transport that answers at once with a fresh response, as a cache hit does."""

    def answer() -> Any:
        return http.Response(200, headers=[(b"content-type", b"application/json")], stream=http.ByteStream(ANSWER))

    class Instant(http.BaseTransport):  # type: ignore[misc]
        def handle_request(self, request: Any) -> Any:
            return answer()

    class AsyncInstant(http.AsyncBaseTransport):  # type: ignore[misc]
        async def handle_async_request(self, request: Any) -> Any:
            return answer()

    return AsyncInstant() if is_async else Instant()


def timed(fn: Callable[[], Any], n: int) -> float:
    """Seconds ``n`` calls of ``fn`` take."""
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return time.perf_counter() - start


def awaited(loop: asyncio.AbstractEventLoop) -> Callable[[Callable[[], Awaitable[Any]], int], float]:
    """:func:`timed` for an async ``fn``: the ``n`` calls run in one task on ``loop``, timed inside it."""

    async def run(fn: Callable[[], Awaitable[Any]], n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            await fn()
        return time.perf_counter() - start

    return lambda fn, n: loop.run_until_complete(run(fn, n))


def interleaved(
    a: Callable[[], Any], b: Callable[[], Any], rounds: int, batch: int = 20, warmup: int = 300,
    run: Callable[[Any, int], float] = timed,
) -> tuple[list[float], list[float]]:
    """Per-call seconds of ``a`` and ``b`` (one figure per batch: its mean), measured in alternating batches
    after ``warmup`` calls each; ``run`` makes and times the calls (:func:`timed`, or :func:`awaited`).

    The order within a round alternates, so neither side always runs right after the other (a batch that
    follows a slower one inherits its cache and allocator state).
    """
    run(a, warmup)
    run(b, warmup)
    times_a: list[float] = []
    times_b: list[float] = []
    pairs = ((a, times_a), (b, times_b))
    for round_ in range(rounds):
        for fn, out in pairs if round_ % 2 == 0 else pairs[::-1]:
            out.append(run(fn, batch) / batch)
    return times_a, times_b


MODES = pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
FLAVOURS = pytest.mark.parametrize("http", [httpx, httpx2], ids=["httpx", "httpx2"])


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def client(loop: asyncio.AbstractEventLoop) -> Iterator[Callable[..., Any]]:
    """Makes sync or async clients (``client(http, is_async, transport=None)``) and closes them after the test,
    an async one on ``loop``, so no connection is left to the event loop's teardown."""
    made: list[Any] = []

    def make(http: Any, is_async: bool, transport: Any = None) -> Any:
        made.append((http.AsyncClient if is_async else http.Client)(transport=transport))
        return made[-1]

    yield make
    for each in made:
        if isinstance(each, (httpx.AsyncClient, httpx2.AsyncClient)):
            loop.run_until_complete(each.aclose())
        else:
            each.close()


def name(http: Any, is_async: bool) -> str:
    return f"[{http.__name__} {'async' if is_async else 'sync'}]"


@FLAVOURS
@MODES
def test_l1_hit_vs_instant_transport(
    http: Any, is_async: bool, loop: asyncio.AbstractEventLoop, client: Callable[..., Any], benchmark: Any
) -> None:
    floor = client(http, is_async, instant_transport(http, is_async))
    cached = aurelis_core.instrument(client(http, is_async, instant_transport(http, is_async)), CONFIG)
    url = "https://api.example/v1/chat/completions"
    headers = {"authorization": "Bearer sk-bench"}

    def hit() -> Any:
        return cached.post(url, json=BODY, headers=headers).json()

    def bare() -> Any:
        return floor.post(url, json=BODY, headers=headers).json()

    async def ahit() -> Any:
        return (await cached.post(url, json=BODY, headers=headers)).json()

    async def abare() -> Any:
        return (await floor.post(url, json=BODY, headers=headers)).json()

    subject, baseline, run = (ahit, abare, awaited(loop)) if is_async else (hit, bare, timed)
    run(subject, 2)
    pipeline = aurelis_core.pipeline_of(cached)
    assert pipeline is not None and pipeline.stats.counters["hit"] == 1
    hit_times, floor_times = interleaved(subject, baseline, rounds=300, run=run)
    assert pipeline.stats.counters["miss"] == 1, dict(pipeline.stats.counters)
    hit_p50, floor_p50 = statistics.median(hit_times), statistics.median(floor_times)
    ratio = hit_p50 / floor_p50
    print(
        f"\n{name(http, is_async)} L1 hit p50 {hit_p50 * 1e6:.1f} us, floor p50 {floor_p50 * 1e6:.1f} us, "
        f"ratio {ratio:.3f} (target <= 1.25)"
    )
    benchmark.extra_info["ratio_vs_floor"] = ratio
    benchmark(run, subject, 1)
    assert ratio <= 1.25


def miss_overhead(
    raw: Any, wrapped: Any, url: str, loop: asyncio.AbstractEventLoop, benchmark: Any, label: str, rounds: int
) -> float:
    """Microseconds the median request of ``wrapped`` takes over ``raw``'s, both posting a new chat body each
    time (one more user turn, numbered), so every wrapped request misses. Prints both medians under ``label``
    and benchmarks the miss.

    The medians are of single requests (batches of one): p50 is a per-request figure, and the timer's own
    cost (~0.1 us a reading) is small beside a request's. That every wrapped request missed is checked on
    the pipeline's counters afterwards rather than on each response, so the timed call does only what the
    raw client's does.
    """
    counter = itertools.count()
    pipeline = aurelis_core.pipeline_of(wrapped)
    assert pipeline is not None

    def body() -> dict[str, Any]:
        return {**BODY, "messages": [*BODY["messages"], {"role": "user", "content": f"#{next(counter)}"}]}

    def miss() -> Any:
        return wrapped.post(url, json=body())

    def bare() -> Any:
        return raw.post(url, json=body()).read()

    async def amiss() -> Any:
        return await wrapped.post(url, json=body())

    async def abare() -> Any:
        return await (await raw.post(url, json=body())).aread()

    is_async = isinstance(wrapped, (httpx.AsyncClient, httpx2.AsyncClient))
    subject, baseline, run = (amiss, abare, awaited(loop)) if is_async else (miss, bare, timed)
    pipeline.stats.reset()
    miss_times, raw_times = interleaved(subject, baseline, rounds=rounds, batch=1, warmup=300, run=run)
    miss_p50, raw_p50 = statistics.median(miss_times), statistics.median(raw_times)
    counters = pipeline.stats.counters
    assert counters["miss"] == counters["requests"] == rounds + 300, dict(counters)
    overhead_us = (miss_p50 - raw_p50) * 1e6
    # Also printed: the overhead as a share of the raw request, which holds steady while this shared machine's
    # speed (and with it every figure in microseconds) swings by up to 2x between runs; and the mean, which
    # unlike p50 carries the rare slow request (a garbage collection, a memo reset).
    share = overhead_us / (raw_p50 * 1e4)
    mean_us = (statistics.fmean(miss_times) - statistics.fmean(raw_times)) * 1e6
    print(f"\n{label}: miss p50 {miss_p50 * 1e6:.1f} us, raw p50 {raw_p50 * 1e6:.1f} us, "
          f"overhead {overhead_us:+.1f} us = {share:.1f}% of the raw request (mean {mean_us:+.1f} us)")
    benchmark.extra_info["overhead_us"] = overhead_us
    benchmark.extra_info["overhead_share"] = overhead_us / (raw_p50 * 1e6)
    benchmark.extra_info["mean_overhead_us"] = mean_us
    benchmark.pedantic(run, (subject, 1), rounds=200)
    return overhead_us


@FLAVOURS
@MODES
def test_miss_path_cpu_overhead(
    http: Any, is_async: bool, loop: asyncio.AbstractEventLoop, client: Callable[..., Any], benchmark: Any
) -> None:
    """The miss path's own CPU cost: both clients over the instant transport, so no socket is involved.

    Target: the overhead (the wrapped miss's p50 less the raw request's) at most half the raw request's own
    p50 there, for each client kind: keying, looking up, storing and handing the answer over cost less than
    half of what the client itself spends on a request.
    """
    raw = client(http, is_async, instant_transport(http, is_async))
    wrapped = aurelis_core.instrument(client(http, is_async, instant_transport(http, is_async)), CONFIG)
    url = "https://api.example/v1/chat/completions"
    label = f"{name(http, is_async)} instant transport (CPU only)"
    overhead_us = miss_overhead(raw, wrapped, url, loop, benchmark, label, rounds=4000)
    share = benchmark.extra_info["overhead_share"]
    print(f"{label}: overhead {overhead_us:+.1f} us = {share:.2f}x the raw request (target <= 0.50x)")
    assert share <= 0.5


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[str, str]]:
    """nginx in its own process when installed (see ``_upstreams``), else the in-process simulator."""
    with local_upstream() as found:
        yield found


@FLAVOURS
@MODES
def test_miss_path_overhead(
    http: Any, is_async: bool, upstream: tuple[str, str], loop: asyncio.AbstractEventLoop,
    client: Callable[..., Any], benchmark: Any,
) -> None:
    """Every wrapped request is a miss (a fresh body each time): normalize, L1 lookup, read, store."""
    base, kind = upstream
    raw = client(http, is_async)
    wrapped = aurelis_core.instrument(client(http, is_async), CONFIG)
    label = f"{name(http, is_async)} upstream: {kind} (target: overhead <= +30 us)"
    overhead_us = miss_overhead(raw, wrapped, base + "/v1/chat/completions", loop, benchmark, label, rounds=4000)
    assert overhead_us <= 30


def import_ms(env: dict[str, str] | None = None) -> float:
    """Best of 5 ``python -X importtime -c "import aurelis_core"``: the package's cumulative figure, in ms."""
    best = float("inf")
    for _ in range(5):
        out = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", "import aurelis_core"], capture_output=True, text=True,
            env=env,
        ).stderr
        line = [x for x in out.splitlines() if re.search(r"\|\s+aurelis_core$", x)][-1]
        best = min(best, int(line.split("|")[1]) / 1000)
    return best


def test_import_time(tmp_path: Path) -> None:
    """The target is on the import as this environment runs it. Where it forbids writing bytecode
    (``PYTHONDONTWRITEBYTECODE``), every run compiles the package's sources, which an installed package does
    not; so the figure with bytecode cached (in a temporary ``PYTHONPYCACHEPREFIX``) is printed beside it."""
    as_is = import_ms()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(tmp_path)
    import_ms(env)  # writes the bytecode
    cached = import_ms(env)
    print(f"\nimport aurelis_core: {as_is:.1f} ms cumulative as this environment runs it, {cached:.1f} ms with "
          "bytecode cached (best of 5; target <= 150 ms)")
    assert as_is <= 150
