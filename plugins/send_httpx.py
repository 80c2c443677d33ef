"""``httpx``: the send engine that sends through httpx transports, with pool and HTTP/2 options per endpoint.

With no options it sends through the wrapped client's own transport, exactly as no engine would: whatever the
client was built with (TLS settings, proxies, limits, HTTP/2) keeps working, at the cost of one call.

With options, it builds its own transport (``httpx.HTTPTransport`` / ``AsyncHTTPTransport``, or httpx2's, to
match the client) per endpoint, once, and reuses it: each has its own connection pool, so a slow endpoint
cannot starve another of connections. Options under ``[httpx]`` apply to every request; a table under
``[httpx.endpoints.NAME]`` overrides them for the endpoint called ``NAME``::

    [httpx]
    http2 = true                     # needs the extra: pip install 'aurelis[http2]'
    max_connections = 200
    [httpx.endpoints.azure]
    max_keepalive_connections = 50
    keepalive_expiry = 30.0

HTTP/2 multiplexes all concurrent requests to one origin over a single TLS connection (servers negotiate it
through ALPN; plain ``http://`` stays HTTP/1.1). A transport this engine builds does not see the client's own
TLS or proxy settings: give ``verify`` (a CA bundle path, or false) here when the upstream needs it.

Connections: httpcore, under both transports, drops a pooled connection that the server closed before handing
it out, so a dead keep-alive connection is replaced without the caller seeing it; ``connect_retries`` (default
1) retries a connection that failed to open -- before any byte of the request was sent or any of its body read,
so a one-shot (generator) body still goes out whole -- at once.
"""

from __future__ import annotations

import importlib
import ssl
from collections.abc import Mapping
from typing import Any

import attrs

from aurelis_core.plugin import (
    Attempt,
    ConfigError,
    RequestContext,
    choices_hint,
    existing_file,
    hookimpl,
    non_negative_int,
    positive,
    positive_int,
)

__all__ = ["HttpxEngine", "HttpxOptions"]


@attrs.frozen
class HttpxOptions:
    """Transport options (all ``None``/unset: httpx's defaults)."""

    #: Negotiate HTTP/2 on https:// origins (extra ``http2``).
    http2: bool | None = None
    #: Most connections open at once (per endpoint transport).
    max_connections: int | None = attrs.field(default=None, validator=positive_int)
    #: Most idle connections kept open for reuse.
    max_keepalive_connections: int | None = attrs.field(default=None, validator=positive_int)
    #: Seconds an idle connection is kept open.
    keepalive_expiry: float | None = attrs.field(default=None, validator=positive)
    #: TLS verification: true, false, or the path of a CA bundle (which must exist).
    verify: bool | str | None = attrs.field(default=None, validator=existing_file)
    #: Times a connection that failed to open is retried, at once (nothing of the request was sent yet).
    connect_retries: int | None = attrs.field(default=None, validator=non_negative_int)

    def merged(self, base: HttpxOptions) -> HttpxOptions:
        """These options, with ``base``'s for the ones left unset."""
        return HttpxOptions(**{
            f.name: getattr(base, f.name) if getattr(self, f.name) is None else getattr(self, f.name)
            for f in attrs.fields(HttpxOptions)
        })

    @property
    def is_default(self) -> bool:
        return all(getattr(self, f.name) is None for f in attrs.fields(HttpxOptions))


@attrs.frozen
class HttpxConfig(HttpxOptions):
    #: Per-endpoint overrides: endpoint name -> options table (its options unset: the ones above apply).
    endpoints: Mapping[str, HttpxOptions] = attrs.field(factory=dict)


class HttpxEngine:
    """The ``httpx`` plugin."""

    name = "httpx"
    Config = HttpxConfig

    def __init__(self, config: HttpxConfig, pipeline: Any) -> None:
        where = f"{pipeline.config.source}: [httpx]"
        base = HttpxOptions(**{f.name: getattr(config, f.name) for f in attrs.fields(HttpxOptions)})
        names = {e.name for e in pipeline.endpoints}
        self._default: HttpxOptions | None = None if base.is_default else base
        self._per_endpoint: dict[str, HttpxOptions] = {}
        for name, options in config.endpoints.items():
            if name not in names:
                raise ConfigError(f"{where} endpoints: no endpoint named {name!r}{choices_hint(name, names)}")
            self._per_endpoint[name] = options.merged(base)
        # Checked now, not at the first https:// request, which is where httpx would fail (it does not check).
        if any(o.http2 for o in (base, *self._per_endpoint.values())):
            try:
                importlib.import_module("h2")
            except ImportError:
                raise ConfigError(f"{where}: http2 = true needs: pip install 'aurelis[http2]'") from None
        #: (flavour module, is_async, endpoint name or None) -> transport built by this engine.
        self._transports: dict[tuple[Any, bool, str | None], Any] = {}

    def _options_for(self, ctx: RequestContext, attempt: Attempt) -> tuple[str | None, HttpxOptions | None]:
        endpoint = attempt.endpoint
        if endpoint is not None:
            options = self._per_endpoint.get(endpoint.name)
            if options is not None:
                return endpoint.name, options
        return None, self._default

    @hookimpl
    def aurelis_send(self, ctx: RequestContext, attempt: Attempt) -> Any:
        name, options = self._options_for(ctx, attempt)
        if options is None:
            transport = ctx.transport
        else:
            key = (ctx.http, ctx.is_async, name)
            transport = self._transports.get(key)
            if transport is None:
                transport = self._transports[key] = _build(ctx.http, ctx.is_async, options)
        if ctx.is_async:
            return transport.handle_async_request(ctx.request)
        return transport.handle_request(ctx.request)

    @hookimpl
    def aurelis_close(self, pipeline: Any) -> Any:
        transports, self._transports = self._transports, {}
        for (_, is_async, _), transport in transports.items():
            if not is_async:
                transport.close()
        pending = [t for (_, is_async, _), t in transports.items() if is_async]
        if not pending:
            return None

        async def close_async() -> None:
            for transport in pending:
                await transport.aclose()

        if pipeline.is_async:
            return close_async()
        # Closed from sync code: async pools hold no running tasks, dropping them closes their sockets.
        return None


def _build(http: Any, is_async: bool, options: HttpxOptions) -> Any:
    limits = http.Limits(
        max_connections=options.max_connections or 100,
        max_keepalive_connections=options.max_keepalive_connections or 20,
        keepalive_expiry=options.keepalive_expiry or 5.0,
    )
    verify: Any = True if options.verify is None else options.verify
    if isinstance(verify, str):
        verify = ssl.create_default_context(cafile=verify)
    cls = http.AsyncHTTPTransport if is_async else http.HTTPTransport
    return cls(
        verify=verify,
        http2=bool(options.http2),
        limits=limits,
        retries=1 if options.connect_retries is None else options.connect_retries,
    )
