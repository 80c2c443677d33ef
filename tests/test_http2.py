"""HTTP/2 through the ``httpx`` engine: many concurrent requests multiplexed over one TLS connection.

The server is hypercorn (a real HTTP/2 server) on 127.0.0.1 with a certificate this test makes; the ASGI app
records each request's HTTP version and the client address of its connection, so the test counts connections
from the server's side.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest

import aurelis_core

pytest.importorskip("h2", reason="needs the http2 extra")
hypercorn_asyncio = pytest.importorskip("hypercorn.asyncio")
from hypercorn.config import Config as HypercornConfig  # noqa: E402


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (it is its own CA): returns (cert path, key path)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


class Recorder:
    """An ASGI app answering a fixed chat completion after a short pause, recording how requests came."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []
        #: Requests are held until this many have arrived, so the concurrent ones are all in flight at once.
        self.expected = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.seen.append((scope["http_version"], tuple(scope["client"])))
        while (await receive()).get("more_body"):
            pass
        while len(self.seen) < self.expected:
            await asyncio.sleep(0.001)
        body = json.dumps({"id": "x", "choices": [{"message": {"content": "ok"}}]}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def h2_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Recorder]]:
    cert, key = make_certificate(tmp_path_factory.mktemp("tls"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = HypercornConfig()
    config.bind = [f"fd://{sock.detach()}"]  # hypercorn owns (and closes) the bound socket from here
    config.certfile, config.keyfile = str(cert), str(key)
    config.alpn_protocols = ["h2", "http/1.1"]
    config.accesslog = config.errorlog = None
    app = Recorder()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)

        async def main() -> None:
            started.set()
            await hypercorn_asyncio.serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]

        loop.run_until_complete(main())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    started.wait(5)
    url = f"https://127.0.0.1:{port}"
    for _ in range(100):  # until it answers
        try:
            httpx.get(url, verify=_ssl(cert), timeout=1)
            break
        except httpx.TransportError:
            threading.Event().wait(0.05)
    app.seen.clear()
    yield url, cert, app
    loop.call_soon_threadsafe(stop.set)
    thread.join(5)


def _ssl(cert: Path) -> Any:
    import ssl

    return ssl.create_default_context(cafile=str(cert))


@pytest.mark.anyio
@pytest.mark.parametrize("http", [httpx, httpx2], ids=["httpx", "httpx2"])
async def test_concurrent_requests_share_one_http2_connection(h2_server: Any, http: Any) -> None:
    url, cert, app = h2_server
    app.seen.clear()
    app.expected = 40
    config = {"plugins": ["httpx"], "httpx": {"http2": True, "verify": str(cert)}}
    async with aurelis_core.instrument(http.AsyncClient(), config) as client:
        answers = await asyncio.gather(
            *[client.post(url + "/v1/chat/completions", json={"n": i}) for i in range(40)]
        )
    assert all(a.status_code == 200 and a.http_version == "HTTP/2" for a in answers)
    assert len(app.seen) == 40
    assert {version for version, _ in app.seen} == {"2"}
    assert len({client_address for _, client_address in app.seen}) == 1  # one connection, 40 streams


@pytest.mark.anyio
async def test_without_http2_concurrent_requests_open_many_connections(h2_server: Any) -> None:
    url, cert, app = h2_server
    app.seen.clear()
    app.expected = 10
    config = {"plugins": ["httpx"], "httpx": {"verify": str(cert)}}
    async with aurelis_core.instrument(httpx.AsyncClient(), config) as client:
        answers = await asyncio.gather(*[client.post(url + "/x", json={"n": i}) for i in range(10)])
    assert all(a.http_version == "HTTP/1.1" for a in answers)
    assert len({client_address for _, client_address in app.seen}) == 10
