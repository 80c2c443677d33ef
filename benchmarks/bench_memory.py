"""Peak memory of one large answer: the instrumented client against the raw one, plain and streamed.

Run: ``.venv/bin/python -m pytest benchmarks/bench_memory.py -s -p no:cacheprovider``

A real loopback server in its own process (so its own copy of the answer is not traced) serves a 64 MiB chat
completion, whole (``Content-Length``) or as an event stream of 16 KiB ``data:`` events ending in
``data: [DONE]``. One request is made with a raw ``httpx.Client``, then with an instrumented one, and
``tracemalloc``'s peak over that request is compared. The caller keeps what it read (the body, or the list of
chunks), as an application does with an answer; the instrumented peak includes writing the answer to every
tier (the write-behind queues are flushed inside the measured window).

Pipelines measured, each plain and streamed:

- ``normalize`` + ``memory`` with the defaults: the answer is larger than the tier takes (``max_entry_bytes``),
  so it is passed through; the plain answer, whose size the upstream announced, is not even buffered.
- ``normalize`` + ``memory``, the tier sized to take it (``max_bytes`` 512 MiB, ``max_entry_bytes`` 128 MiB):
  the answer is stored.
- the same plus ``sqlite`` sized to take it (``max_entry_bytes`` 128 MiB, ``codec = "none"``): stored in both.

Target: instrumented peak <= 1.5x the raw client's in every case.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aurelis_core import Pipeline

SIZE = 64 * 1024 * 1024
TARGET = 1.5
MIB = 1024 * 1024

#: The upstream: serves the answer whole at /v1/chat/completions, streamed when the request asks for it.
SERVER = textwrap.dedent("""
    import json, sys, time
    from aurelis_core.testing import serve

    SIZE = int(sys.argv[1])
    EVENT = 16 * 1024
    head = b'{"id":"chatcmpl-big","object":"chat.completion","model":"m","choices":[{"index":0,"message":'
    head += b'{"role":"assistant","content":"'
    tail = b'"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}'
    PLAIN = head + b"x" * (SIZE - len(head) - len(tail)) + tail
    frame = b'data: {"choices":[{"index":0,"delta":{"content":"'
    end = b'"}}]}\\n\\n'
    EVENT_BYTES = frame + b"y" * (EVENT - len(frame) - len(end)) + end
    DONE = b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\\n\\ndata: [DONE]\\n\\n'
    COUNT = SIZE // len(EVENT_BYTES)

    async def app(scope, receive, send):
        if scope["path"].endswith("/warmup"):
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if b'"stream": true' in body or b'"stream":true' in body:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream")]})
            for _ in range(COUNT):
                await send({"type": "http.response.body", "body": EVENT_BYTES, "more_body": True})
            await send({"type": "http.response.body", "body": DONE, "more_body": False})
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(PLAIN)).encode())]})
        await send({"type": "http.response.body", "body": PLAIN, "more_body": False})

    with serve(app) as server:
        print(server.url, flush=True)
        sys.stdin.read()  # until the benchmark closes our stdin
""")


@pytest.fixture(scope="module")
def big_upstream() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(SIZE)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        yield url + "/v1/chat/completions"
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()


def request(stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "a long answer, please"}]}
    if stream:
        body["stream"] = True
    return body


def one_request(client: httpx.Client, url: str, stream: bool, pipeline: Pipeline | None) -> tuple[int, int]:
    """(peak traced bytes over one request, bytes the caller got)."""
    gc.collect()
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    if stream:
        with client.stream("POST", url, json=request(True)) as response:
            kept = list(response.iter_raw())  # the caller keeps the answer it read
        got = sum(map(len, kept))
    else:
        response = client.post(url, json=request(False))
        kept = [response.content]
        got = len(kept[0])
    if pipeline is not None:
        for name in pipeline.tiers:
            flush = getattr(pipeline.plugin(name), "flush", None)
            if flush is not None:
                flush()
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    del kept, response
    return peak, got


def measure(url: str, cfg: dict[str, Any] | None, stream: bool) -> tuple[int, int, str]:
    """(peak bytes, bytes the caller got, the cache status) of one request on a fresh client."""
    pipeline = Pipeline(cfg) if cfg is not None else None
    with httpx.Client(timeout=120) as client:
        if pipeline is not None:
            pipeline.instrument(client)
        # A first small request opens the connection outside the measured window.
        client.get(url.rsplit("/v1/", 1)[0] + "/warmup")
        peak, got = one_request(client, url, stream, pipeline)
        status = _stored(pipeline) if pipeline is not None else "raw"
    if pipeline is not None:
        pipeline.close()
    gc.collect()
    return peak, got, status


def _stored(pipeline: Pipeline) -> str:
    held = []
    for name in pipeline.tiers:
        plugin = pipeline.plugin(name)
        if name == "memory":
            held.append(f"memory {len(plugin)}")
        elif hasattr(plugin, "stats"):
            held.append(f"{name} {plugin.stats()['entries']}")
    return ", ".join(held)


def test_peak_memory_of_a_64mib_answer(big_upstream: str, tmp_path: Path) -> None:
    big = {"max_bytes": 512 * MIB, "max_entry_bytes": 128 * MIB}
    configs: list[tuple[str, dict[str, Any]]] = [
        ("normalize+memory (defaults: passed through)", {"plugins": ["normalize", "memory"]}),
        ("normalize+memory (stored)", {"plugins": ["normalize", "memory"], "memory": big}),
        ("normalize+memory+sqlite (stored in both)", {
            "plugins": ["normalize", "memory", "sqlite"], "memory": big,
            "sqlite": {"path": str(tmp_path / "big.sqlite3"), "max_entry_bytes": 128 * MIB, "codec": "none",
                       "max_bytes": 1024 * MIB},
        }),
    ]
    failures = []
    for stream in (False, True):
        kind = "streamed" if stream else "plain"
        raw, got, _ = measure(big_upstream, None, stream)
        assert got >= SIZE - 64 * 1024, got
        print(f"\n{kind} {got / MIB:.1f} MiB answer: raw httpx.Client peak {raw / MIB:.1f} MiB")
        for name, cfg in configs:
            for path in tmp_path.glob("big.sqlite3*"):
                path.unlink()
            peak, got_here, held = measure(big_upstream, cfg, stream)
            assert got_here == got
            ratio = peak / raw
            print(f"  {name}: peak {peak / MIB:.1f} MiB, {ratio:.2f}x raw (target <= {TARGET}); held: {held}")
            if ratio > TARGET:
                failures.append(f"{kind} {name}: {ratio:.2f}x")
    assert not failures, failures


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-s", "-p", "no:cacheprovider"]))
