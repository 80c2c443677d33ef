"""``aiohttp``: a fast HTTP/1.1 send engine for async clients, behind the same httpx API (extra ``fast``).

The caller keeps its ``httpx.AsyncClient`` / ``httpx2.AsyncClient`` (auth, redirects, timeouts, event hooks,
the openai SDK): only the hop to the network goes through aiohttp, whose C-accelerated HTTP parser and lean
connection pool send several times more requests per second than httpcore on one core (measured in
benchmarks/bench_network.py). What the caller sees is unchanged:

- the response is an httpx (or httpx2) ``Response``, its body streamed chunk by chunk as it arrives (an event
  stream is forwarded frame by frame, not buffered), and closing it releases the connection;
- the body's bytes are the raw wire bytes (aiohttp's own decompression is off), so ``Content-Encoding`` is
  decoded by the caller's client and cached bodies stay compressed, exactly as with httpx;
- timeouts come from the request's ``timeout`` extension (what ``httpx.Timeout`` / the SDK's ``timeout=`` set):
  ``connect`` bounds opening a connection, ``pool`` + ``connect`` bounds getting one, ``read`` bounds each wait
  for bytes; they raise httpx's own types (``ConnectTimeout``, ``ReadTimeout``), as do connection failures
  (``ConnectError``, ``ReadError``, ``RemoteProtocolError``), so retry logic written for httpx -- the openai
  SDK's included -- keeps working. A wait for a free pooled connection that times out is a ``ConnectTimeout``
  (aiohttp does not tell the two apart);
- redirects, cookies and auth stay the caller's client's business (aiohttp follows no redirect, keeps no
  cookie jar).

One ``aiohttp.ClientSession`` (one pool) is kept per event loop, since a session belongs to the loop that made
it. Sync clients keep sending through their own transport: aiohttp is async only.

Connections: a pooled connection that the server closed is dropped by aiohttp's pool before reuse, so it is
replaced without the caller seeing it; a connection that fails to open (nothing of the request was sent) is
retried once, at once, when the body can be sent again (it is not a one-shot stream).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from typing import Any

import attrs

from aurelis_core.plugin import Attempt, RequestContext, buffered_body, existing_file, hookimpl, positive, positive_int

from ._per_loop import PerLoop

try:
    import aiohttp
    from multidict import CIMultiDict
    from yarl import URL
except ImportError:  # pragma: no cover - depends on the installed extras
    raise ImportError("the aiohttp send engine needs: pip install 'aurelis[fast]'") from None

__all__ = ["AiohttpConfig", "AiohttpEngine"]

#: Headers aiohttp would add on its own; the httpx request already carries the caller's, or chose to omit them.
_SKIP_AUTO_HEADERS = frozenset({"Accept", "Accept-Encoding", "User-Agent", "Content-Type"})


@attrs.frozen
class AiohttpConfig:
    #: Most connections open at once, over all hosts (per event loop).
    max_connections: int = attrs.field(default=100, validator=positive_int)
    #: Most connections open at once to one host; ``None``: only ``max_connections`` applies.
    max_connections_per_host: int | None = attrs.field(default=None, validator=positive_int)
    #: Seconds an idle connection is kept open for reuse.
    keepalive_expiry: float = attrs.field(default=15.0, validator=positive)
    #: TLS verification: true, false, or the path of a CA bundle (which must exist).
    verify: bool | str = attrs.field(default=True, validator=existing_file)


class AiohttpEngine:
    """The ``aiohttp`` plugin."""

    name = "aiohttp"
    Config = AiohttpConfig

    def __init__(self, config: AiohttpConfig, pipeline: Any) -> None:
        self.config = config
        self._ssl: Any = (
            ssl.create_default_context(cafile=config.verify) if isinstance(config.verify, str)
            else None if config.verify else False
        )
        self._sessions: PerLoop[aiohttp.ClientSession] = PerLoop()
        #: httpx timeout extension (as a tuple) -> aiohttp.ClientTimeout; callers reuse a handful of settings.
        self._timeouts: dict[tuple[Any, ...], aiohttp.ClientTimeout] = {}

    def _session(self) -> aiohttp.ClientSession:
        session = self._sessions.get()
        if session is None or session.closed:
            config = self.config
            connector = aiohttp.TCPConnector(
                limit=config.max_connections,
                limit_per_host=config.max_connections_per_host or 0,
                keepalive_timeout=config.keepalive_expiry,
                ssl=self._ssl,
            )
            session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,  # raw bytes, as httpx transports return them
                cookie_jar=aiohttp.DummyCookieJar(),  # cookies are the httpx client's business
                timeout=aiohttp.ClientTimeout(total=None),
                skip_auto_headers=_SKIP_AUTO_HEADERS,
                trust_env=False,
            )
            self._sessions.put(session)  # the sessions of closed loops are dropped: their sockets went with them
        return session

    def _timeout(self, request: Any) -> aiohttp.ClientTimeout:
        given = request.extensions.get("timeout") or {}
        key = (given.get("connect"), given.get("read"), given.get("pool"))
        timeout = self._timeouts.get(key)
        if timeout is None:
            connect, read, pool = key
            timeout = self._timeouts[key] = aiohttp.ClientTimeout(
                total=None,
                connect=None if connect is None or pool is None else connect + pool,
                sock_connect=connect,
                sock_read=read,
            )
        return timeout

    @hookimpl
    def aurelis_send(self, ctx: RequestContext, attempt: Attempt) -> Any:
        if not ctx.is_async:
            return ctx.transport.handle_request(ctx.request)
        return self._send(ctx.http, ctx.request)

    async def _send(self, http: Any, request: Any) -> Any:
        session = self._session()
        content = buffered_body(request)
        data: Any = content if content else (None if content is not None else _body_of(request.stream))
        headers = CIMultiDict((k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw)
        url = URL(str(request.url), encoded=True)
        timeout = self._timeout(request)
        for tries_left in (1, 0):
            try:
                response = await session.request(
                    request.method, url, headers=headers, data=data, timeout=timeout, allow_redirects=False
                )
                break
            except aiohttp.ClientConnectorError as exc:
                if tries_left and content is not None and not isinstance(
                    exc, aiohttp.ClientConnectorCertificateError
                ):
                    continue
                raise _httpx_error(http, request, exc) from exc
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise _httpx_error(http, request, exc) from exc
        return http.Response(
            response.status,
            headers=response.raw_headers,
            stream=_ResponseBody(response, http, request),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": (response.reason or "").encode()},
        )

    @hookimpl
    def aurelis_close(self, pipeline: Any) -> Any:
        # A session belongs to its loop: each live loop closes its own (a closed loop took its sockets).
        if pipeline.is_async:
            return self._sessions.aclose(_close_session)
        self._sessions.close(_close_session)
        return None


async def _close_session(session: aiohttp.ClientSession) -> None:
    await session.close()


async def _body_of(stream: Any) -> AsyncIterator[bytes]:
    async for chunk in stream:
        yield chunk


class _ResponseBody:
    """The aiohttp response body as an httpx async byte stream: chunks as they arrive, errors as httpx's."""

    __slots__ = ("_http", "_request", "_response")

    def __init__(self, response: aiohttp.ClientResponse, http: Any, request: Any) -> None:
        self._response = response
        self._http = http
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _httpx_error(self._http, self._request, exc) from exc

    async def aclose(self) -> None:
        response = self._response
        if response.content.at_eof():
            response.release()  # back to the pool
        else:
            response.close()  # abandoned mid-body: the connection cannot be reused


def _httpx_error(http: Any, request: Any, exc: BaseException) -> Exception:
    """The httpx exception a caller would have got for the same failure from an httpx transport."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        cls = http.ConnectTimeout
    elif isinstance(exc, TimeoutError):  # aiohttp's SocketTimeoutError (a read wait) and plain timeouts
        cls = http.ReadTimeout
    elif isinstance(exc, aiohttp.ClientConnectorError):
        cls = http.ConnectError
    elif isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError)):
        cls = http.RemoteProtocolError
    elif isinstance(exc, aiohttp.ClientOSError):
        cls = http.ReadError
    else:
        cls = http.TransportError
    error: Exception = cls(str(exc) or type(exc).__name__, request=request)
    return error
