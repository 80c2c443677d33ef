"""Private ``redis-server`` processes for tests that stop, freeze or kill them (the shared ``redis_url`` server of
``conftest.py`` must stay up for every other test): one node, a 3-master Cluster made by ``redis-cli``, or a
master with a replica and a sentinel watching them (a Sentinel group a test may fail over).

Each server is a child of the test process, on a free loopback port, without persistence, in a temporary
directory; leaving the context manager resumes (``SIGCONT``) and ends it, whatever the test did to it.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """One running ``redis-server``: ``url``, ``address`` (``host:port``), and what a test may do to it."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int) -> None:
        self.proc = proc
        self.port = port
        self.address = f"127.0.0.1:{port}"
        self.url = f"redis://127.0.0.1:{port}/0"

    def freeze(self) -> None:
        """``SIGSTOP``: the kernel still accepts connections, nothing answers them (a hung Redis)."""
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.thaw()
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (apt-get install redis-server, or brew install redis)", pytrace=False)
    return path


def _ping(url: str, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
        try:
            if client.ping():
                return True
        except redis.RedisError:
            pass
        finally:
            client.close()
        time.sleep(0.05)
    return False


def _start(workdir: Path, *options: str) -> Server:
    binary = _binary("redis-server")
    for _attempt in range(3):  # free-port discovery then launch has a tiny race: retry rather than flake
        port = free_port()
        log = (workdir / f"redis-{port}.log").open("wb")
        args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--daemonize", "no", "--dir", str(workdir), *options]
        proc = subprocess.Popen([binary, *args], stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
        log.close()  # the child holds its own descriptor
        server = Server(proc, port)
        if _ping(server.url, proc):
            return server
        server.stop()
    pytest.fail(f"could not start redis-server; see the logs in {workdir}", pytrace=False)


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[Server]:
    """One single-node server of the test's own."""
    server = _start(workdir)
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def redis_cluster(workdir: Path, masters: int = 3) -> Iterator[list[Server]]:
    """A Cluster of ``masters`` masters, no replicas, slots spread evenly, that keeps serving the slots it still
    has when a master dies (``cluster-require-full-coverage no``). Skips the test without ``redis-cli``."""
    cli = shutil.which("redis-cli")
    if cli is None:
        pytest.skip("redis-cli is not installed: the Cluster tests need it to create the cluster")
    servers: list[Server] = []
    try:
        for _ in range(masters):
            node = workdir / f"node-{len(servers)}"
            node.mkdir()
            servers.append(_start(node, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                                  "--cluster-node-timeout", "1000", "--cluster-require-full-coverage", "no",
                                  # The bus port defaults to port + 10000, past 65535 for most free ports.
                                  "--cluster-port", str(free_port())))
        subprocess.run([cli, "--cluster", "create", *(s.address for s in servers), "--cluster-yes"],
                       check=True, capture_output=True, timeout=30)
        deadline = time.monotonic() + 15
        while True:
            states = []
            for server in servers:
                client = redis.Redis.from_url(server.url)
                try:
                    states.append(client.cluster("info").get("cluster_state"))
                finally:
                    client.close()
            if all(state == "ok" for state in states):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"the cluster did not become ok: {states}", pytrace=False)
            time.sleep(0.1)
        yield servers
    finally:
        for server in servers:
            server.stop()


@contextlib.contextmanager
def redis_sentinel(workdir: Path, master: Server, name: str = "fleetmaster") -> Iterator[Server]:
    """One sentinel watching ``master`` under ``name`` (quorum 1)."""
    port = free_port()
    conf = workdir / f"sentinel-{port}.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\nsentinel monitor {name} 127.0.0.1 {master.port} 1\n")
    proc = subprocess.Popen([_binary("redis-server"), str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=workdir)
    sentinel = Server(proc, port)
    try:
        if not _ping(sentinel.url.rsplit("/", 1)[0], proc):
            pytest.fail("could not start redis-server --sentinel", pytrace=False)
        yield sentinel
    finally:
        sentinel.stop()


@contextlib.contextmanager
def redis_replica(workdir: Path, master: Server) -> Iterator[Server]:
    """A replica of ``master``, in sync with it when yielded."""
    workdir.mkdir(exist_ok=True)
    server = _start(workdir, "--replicaof", "127.0.0.1", str(master.port))
    try:
        client = redis.Redis.from_url(server.url)
        deadline = time.monotonic() + 15
        try:
            while client.info("replication").get("master_link_status") != "up":
                if time.monotonic() > deadline:
                    pytest.fail("the replica did not sync with its master", pytrace=False)
                time.sleep(0.05)
        finally:
            client.close()
        yield server
    finally:
        server.stop()


def wait_for_replica(sentinel: Server, name: str, replica: Server, timeout: float = 20.0) -> None:
    """Wait until ``sentinel`` knows ``replica`` of master ``name`` as a healthy replica (what SENTINEL FAILOVER
    needs to pick it)."""
    client = redis.Redis(host="127.0.0.1", port=sentinel.port, decode_responses=True)
    deadline = time.monotonic() + timeout
    try:
        while True:
            replicas = client.execute_command("SENTINEL", "REPLICAS", name)
            for fields in replicas:
                info = dict(zip(fields[::2], fields[1::2], strict=True)) if isinstance(fields, list) else fields
                if int(info.get("port", 0)) == replica.port and info.get("flags") == "slave" and \
                        info.get("master-link-status") == "ok":
                    return
            if time.monotonic() > deadline:
                pytest.fail(f"the sentinel does not see the replica as healthy: {replicas}", pytrace=False)
            time.sleep(0.1)
    finally:
        client.close()
