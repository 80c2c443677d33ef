"""Cost (microseconds) and ratio of each codec on realistic chat bodies of 1 to 64 KiB.

Bodies are chat-completion requests (a system prompt, a multi-turn conversation, English prose with code) and
answers (JSON with the assistant's text), the kind of bytes that go on the wire and into the cache tiers.

    .venv/bin/python -m pytest benchmarks/bench_codecs.py -s

Each codec is timed with pytest-benchmark on the 16 KiB body (compress + decompress), and a table of all sizes
is printed. The figure that matters: lz4 (at rest) must be the cheapest, and brotli/gzip (on the wire) must save
well over the compress plugin's 10% bar on these bodies.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

import pytest

from aurelis_plugins.codecs import CODEC_NAMES, get_codec

SIZES = (1024, 4096, 16384, 65536)

_WORDS = (
    "the model answer request token stream cache latency upstream endpoint retry function return value "
    "python async await client server response header body json prompt system user assistant message "
    "please explain how this works and give an example with code that handles errors correctly"
).split()


def chat_body(size: int, seed: int = 0) -> bytes:
    """A chat request of about ``size`` bytes: prose with some code, across several turns."""
    rng = random.Random(seed)
    messages = [{"role": "system", "content": "You are a helpful assistant. Answer concisely and cite code."}]
    while len(json.dumps(messages)) < size:
        text = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(20, 80)))
        if rng.random() < 0.3:
            text += f"\n```python\ndef f{rng.randint(0, 999)}(x):\n    return x * {rng.randint(2, 9)}\n```"
        messages.append({"role": rng.choice(("user", "assistant")), "content": text})
    body = json.dumps({"model": "openai/gpt-4.1-mini", "messages": messages, "temperature": 0.2}).encode()
    return body[:size] if len(body) > size else body


def _time(fn: Any, data: bytes, budget: float = 0.05) -> float:
    """Best microseconds per call over a few short loops."""
    best = float("inf")
    for _ in range(3):
        n, started = 0, time.perf_counter()
        while time.perf_counter() - started < budget:
            fn(data)
            n += 1
        best = min(best, (time.perf_counter() - started) / n)
    return best * 1e6


def test_codec_table() -> None:
    print(f"\n{'codec':8s} {'size':>6s} {'ratio':>6s} {'compress us':>12s} {'decompress us':>14s}")
    figures: dict[tuple[str, int], tuple[float, float]] = {}
    for name in CODEC_NAMES:
        codec = get_codec(name)
        for size in SIZES:
            data = chat_body(size)
            packed = codec.compress(data)
            assert codec.decompress(packed) == data
            ratio = len(packed) / len(data)
            cost = _time(codec.compress, data)
            figures[(name, size)] = (ratio, cost)
            print(f"{name:8s} {size:6d} {ratio:6.3f} {cost:12.1f} {_time(codec.decompress, packed):14.1f}")
    for size in SIZES:
        # Everything that compresses is cheaper with lz4 than with the wire codecs.
        assert figures[("lz4", size)][1] < min(figures[("gzip", size)][1], figures[("brotli", size)][1])
        for wire in ("gzip", "brotli"):
            assert figures[(wire, size)][0] < 0.9  # saves more than the plugin's default 10% bar


@pytest.mark.parametrize("name", [n for n in CODEC_NAMES if n != "none"])
def test_codec_round_trip_16k(benchmark: Any, name: str) -> None:
    codec = get_codec(name)
    data = chat_body(16384)

    def round_trip() -> bytes:
        return codec.decompress(codec.compress(data))

    assert benchmark(round_trip) == data
