"""Instructions per request, counted by valgrind's callgrind: repeatable on a shared, noisy machine.

Run: ``.venv/bin/python benchmarks/instructions.py [httpx|httpx2]`` (needs ``valgrind``; ~1 min)

Timings on a loaded 2-core machine swing by tens of percent between runs; instruction counts do not (the same
binary and inputs give the same count, whatever else the machine does). Each figure is the difference between
a process that sends N requests and one that sends none (same set-up, same warm-up), divided by N, for:

- ``raw``: the client over an instant transport (answers at once, as a cache hit does): the floor;
- ``miss``: the same client instrumented with ``normalize`` + ``memory``, a new prompt each time;
- ``hit``: the same, one prompt again and again (an L1 hit).

It prints the hit and the miss per raw request: the instruction-count side of ``bench_core.py``'s
``test_l1_hit_vs_instant_transport`` (target 1.25x) and ``test_miss_path_cpu_overhead`` (overhead <= 0.5x).
Instructions are not time (a cache-missing load costs more than an add), so both are reported, neither
replaces the other.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import uuid
from typing import Any

ANSWER = (
    b'{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},'
    b'"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}'
)
URL = "https://api.example/v1/chat/completions"
REQUESTS = 300


def run(flavour: str, mode: str, count: int) -> None:
    """The measured process: ``count`` requests of ``mode`` after a common set-up and warm-up."""
    import importlib

    import aurelis_core

    http: Any = importlib.import_module(flavour)

    class Instant(http.BaseTransport):  # type: ignore[misc]
        def handle_request(self, request: Any) -> Any:
            return http.Response(200, headers=[(b"content-type", b"application/json")], stream=http.ByteStream(ANSWER))

    client = http.Client(transport=Instant())
    if mode != "raw":
        client = aurelis_core.instrument(client, {"plugins": ["normalize", "memory"]})
    fresh = [{"model": "m", "messages": [{"role": "user", "content": f"q {uuid.uuid4()}"}]} for _ in range(count + 5)]
    same = {"model": "m", "messages": [{"role": "user", "content": "the same question"}]}
    for body in [*fresh[:5], same]:
        client.post(URL, json=body).json()
    for body in fresh[5:]:
        client.post(URL, json=same if mode == "hit" else body).json()


def instructions(flavour: str, mode: str, count: int) -> int:
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "callgrind.out")
        result = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, __file__, "_run",
             flavour, mode, str(count)],
            capture_output=True, text=True, check=True,
        )
    found = re.search(r"Collected : (\d+)", result.stderr)
    assert found is not None, result.stderr[-2000:]
    return int(found.group(1))


def main() -> None:
    if sys.argv[1:2] == ["_run"]:
        run(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    flavour = sys.argv[1] if len(sys.argv) > 1 else "httpx"
    per = {mode: (instructions(flavour, mode, REQUESTS) - instructions(flavour, mode, 0)) / REQUESTS
           for mode in ("raw", "miss", "hit")}
    raw = per["raw"]
    print(f"{flavour} sync, instructions per request: raw {raw / 1e3:.1f}k, miss {per['miss'] / 1e3:.1f}k, "
          f"hit {per['hit'] / 1e3:.1f}k")
    print(f"L1 hit / raw: {per['hit'] / raw:.3f}x (target <= 1.25); miss overhead / raw: "
          f"{(per['miss'] - raw) / raw:.3f}x (target <= 0.50)")


if __name__ == "__main__":
    main()
