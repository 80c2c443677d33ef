"""Requests per second at concurrency 32: raw ``httpx.AsyncClient`` vs the ``httpx`` and ``aiohttp`` engines.

The upstream is nginx (Debian's ``nginx-light`` or ``nginx``) on a free 127.0.0.1 port, started here with a
temporary config that answers every request with a fixed chat completion (``return 200 '...'``): an upstream
fast enough that the client side is what is measured. Without nginx the simulated upstream (uvicorn) is used
instead, and the report says so (it is slower, so the ratios shrink toward 1).

    apt-get install -y nginx-light
    .venv/bin/python -m pytest benchmarks/bench_network.py -s

Each variant runs for ``ROUND_SECONDS`` per round, rounds interleaved so that noise from the (shared) machine
hits all variants alike; the best round of each counts. Targets: httpx engine >= 0.95x raw httpx, aiohttp
engine >= 3x raw httpx.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import httpx

import aurelis_core

CONCURRENCY = 32
ROUND_SECONDS = float(os.environ.get("AURELIS_BENCH_SECONDS", "2.0"))
ROUNDS = int(os.environ.get("AURELIS_BENCH_ROUNDS", "3"))

ANSWER = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "bench",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 9, "total_tokens": 18},
})
REQUEST = {"model": "bench", "messages": [{"role": "user", "content": "Say hello."}]}

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type application/json;
            return 200 '{answer}';
        }}
    }}
}}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def nginx_upstream() -> Iterator[str]:
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if binary is None:
        raise FileNotFoundError("nginx")
    with tempfile.TemporaryDirectory() as workdir:
        port = _free_port()
        conf = os.path.join(workdir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(dir=workdir, port=port, answer=ANSWER))
        proc = subprocess.Popen([binary, "-p", workdir, "-c", conf], stderr=subprocess.PIPE)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 10
            while True:
                try:
                    httpx.post(url + "/v1/chat/completions", json=REQUEST).raise_for_status()
                    break
                except httpx.TransportError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"nginx did not start: {proc.stderr.read()!r}") from None  # type: ignore[union-attr]
                    time.sleep(0.05)
            yield url
        finally:
            proc.terminate()
            proc.wait(10)


@contextlib.contextmanager
def upstream() -> Iterator[tuple[str, str]]:
    try:
        with nginx_upstream() as url:
            yield url, "nginx"
    except FileNotFoundError:
        from aurelis_core.testing import simulated_upstream

        with simulated_upstream() as up:
            yield up.url, "simulator (nginx not installed: install nginx-light for the real figures)"


async def _rate(client: httpx.AsyncClient, url: str, seconds: float) -> float:
    """Requests per second completed by ``CONCURRENCY`` workers looping for ``seconds``."""
    done = 0
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            response = await client.post(url, json=REQUEST)
            if response.status_code != 200:
                raise AssertionError(response.status_code)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(CONCURRENCY)])
    return done / (time.perf_counter() - started)


VARIANTS: dict[str, Any] = {
    "raw httpx": None,
    "httpx engine": {"plugins": ["httpx"]},
    "aiohttp engine": {"plugins": ["aiohttp"]},
}


async def measure(base: str) -> dict[str, float]:
    url = base + "/v1/chat/completions"
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    clients = {}
    for name, config in VARIANTS.items():
        client = httpx.AsyncClient(limits=limits)
        clients[name] = client if config is None else aurelis_core.instrument(client, config)
    best = dict.fromkeys(VARIANTS, 0.0)
    try:
        for client in clients.values():
            await _rate(client, url, 0.3)  # warm-up: open the connections, fill caches
        for _ in range(ROUNDS):
            for name, client in clients.items():
                best[name] = max(best[name], await _rate(client, url, ROUND_SECONDS))
    finally:
        for client in clients.values():
            await client.aclose()
    return best


def test_network_throughput(benchmark: Any) -> None:
    with upstream() as (url, kind):
        results = benchmark.pedantic(lambda: asyncio.run(measure(url)), rounds=1, iterations=1)
    raw = results["raw httpx"]
    print(f"\nupstream: {kind}; concurrency {CONCURRENCY}; best of {ROUNDS} x {ROUND_SECONDS:.1f} s")
    for name, rate in results.items():
        print(f"  {name:15s} {rate:8.0f} req/s  {rate / raw:5.2f}x raw httpx")
    benchmark.extra_info.update({name: round(rate) for name, rate in results.items()})
    benchmark.extra_info["upstream"] = kind
    assert results["httpx engine"] >= 0.95 * raw
    assert results["aiohttp engine"] >= 3.0 * raw
