"""Local upstreams for the benchmarks: nginx when the machine has it, else the simulated upstream.

nginx (Debian's ``nginx-light`` or ``nginx``) runs on a free 127.0.0.1 port in its own process, started with a
temporary config that answers every request with a fixed chat completion (``return 200 '...'``): an upstream
fast enough, and far enough out of the benchmark's process, that the client side is what is measured. The
simulated upstream (uvicorn) is the fallback; it runs in a thread of the benchmark's own process, where it
competes with the client for the GIL, so its figures are noisier and its ratios shrink toward 1.

    apt-get install -y nginx-light
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import httpx

__all__ = ["ANSWER", "REQUEST", "nginx_upstream", "upstream"]

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
            proc.stderr.close()  # type: ignore[union-attr]


@contextlib.contextmanager
def upstream() -> Iterator[tuple[str, str]]:
    """``(base URL without /v1, what it is)``: nginx if installed, else the simulated upstream."""
    try:
        with nginx_upstream() as url:
            yield url, "nginx"
    except FileNotFoundError:
        from aurelis_core.testing import simulated_upstream

        with simulated_upstream() as up:
            yield up.url, "simulator (nginx not installed: install nginx-light for the real figures)"
