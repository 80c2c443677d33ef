"""The thin I/O layer: the wrapping transports, and ``instrument``.

Everything that decides *what* happens to a request is in :mod:`aurelis_core.pipeline`; this module only
runs it, synchronously or with ``await`` (through :mod:`aurelis_core._drivers`), and plugs it into httpx's
transport API. It never imports the pipeline module: what a transport uses of its pipeline is the small
:class:`FlowSource` Protocol below, so the request path has no import circle.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Protocol

from ._compat import client_flavour, client_transports, flavour_of, set_client_transports
from ._drivers import Flow, LoopBridge, drive_async, drive_sync
from ._models import DEFAULT_CONTROLS, USAGE_TAIL, RequestContext

__all__ = ["FlowSource", "ObservedStream", "instrument_client", "wrap_transport"]


class FlowSource(Protocol):
    """What a wrapping transport uses of its pipeline (:class:`aurelis_core.Pipeline` is one): the flow of a
    request, the loop bridge a sync driver needs, and closing when the transport owns the pipeline."""

    @property
    def bridge(self) -> LoopBridge: ...

    def flow(self, ctx: RequestContext) -> Flow: ...

    def close(self) -> None: ...

    async def aclose(self) -> None: ...


# --- streams -------------------------------------------------------------------------------------------------


class ObservedStream:
    """A response body passed through untouched, chunk by chunk, that reports when it ends.

    ``on_end(error)`` is called exactly once: when the body was read to the end (``None``), when reading it
    failed (the exception), or when it was closed early (``None``: the caller chose to stop). It is both a
    sync and an async stream, like the transport streams it wraps; ``close``/``aclose`` are forwarded.

    It notes when the first chunk passed (``first_chunk``, ``time.perf_counter()``) and keeps the last two
    chunks (:meth:`tail`) and the first one's start (``head``): a stream's time to first token and an answer's usage
    block, for the observers.
    """

    __slots__ = ("_ended", "_on_end", "_previous", "_stream", "first_chunk", "head", "last")

    def __init__(self, stream: Any, on_end: Callable[[BaseException | None], None]) -> None:
        self._stream = stream
        self._on_end = on_end
        self._ended = False
        self.first_chunk: float | None = None
        #: The first chunk's first bytes (an Anthropic stream's input tokens are there), ``None`` before.
        self.head: bytes | None = None
        self._previous = self.last = b""

    def tail(self) -> bytes:
        """The last :data:`USAGE_TAIL` bytes that passed (fewer if the body was shorter): where an answer's
        usage block is."""
        last = self.last
        if len(last) >= USAGE_TAIL:
            return last[-USAGE_TAIL:]
        return self._previous[len(last) - USAGE_TAIL:] + last

    def _passed(self, chunk: bytes) -> None:
        if self.first_chunk is None and chunk:
            self.first_chunk = time.perf_counter()
            self.head = chunk[:USAGE_TAIL]
        self._previous, self.last = self.last, chunk

    def _end(self, error: BaseException | None) -> None:
        if not self._ended:
            self._ended = True
            self._on_end(error)

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self._stream:
                self._passed(chunk)
                yield chunk
        except BaseException as exc:
            self._end(exc)
            raise
        self._end(None)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._stream:
                self._passed(chunk)
                yield chunk
        except BaseException as exc:
            self._end(exc)
            raise
        self._end(None)

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            self._end(None)

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            self._end(None)


_stream_classes: dict[Any, type] = {}


def observed_stream(http: Any, stream: Any, on_end: Callable[[BaseException | None], None]) -> ObservedStream:
    """An :class:`ObservedStream` that is also an instance of the flavour's Sync/AsyncByteStream, as httpx's
    clients assert of every response stream."""
    cls = _stream_classes.get(http)
    if cls is None:
        cls = _stream_classes[http] = type(
            "ObservedStream", (ObservedStream, http.SyncByteStream, http.AsyncByteStream), {"__slots__": ()}
        )
    return cls(stream, on_end)  # type: ignore[no-any-return]


# --- transports ----------------------------------------------------------------------------------------------

_transport_classes: dict[tuple[Any, bool], type] = {}


def _transport_class(http: Any, is_async: bool) -> type:
    """A transport class deriving from the flavour's own base class, so isinstance checks keep passing."""
    cls = _transport_classes.get((http, is_async))
    if cls is None:
        base = http.AsyncBaseTransport if is_async else http.BaseTransport
        mixin = _AsyncPipelineTransport if is_async else _SyncPipelineTransport
        cls = type(mixin.__name__.lstrip("_"), (mixin, base), {"__module__": __name__})
        _transport_classes[(http, is_async)] = cls
    return cls


class _PipelineTransport:
    """What the sync and async wrapping transports share: the inner transport, the pipeline, and the rule
    that the wrapper is invisible.

    A client given this transport must behave exactly as with the inner one: the context-manager protocol is
    forwarded call for call (httpx's ``Client.__enter__`` calls its transport's and every mount's
    ``__enter__``, and ``__exit__`` in place of ``close``), and any attribute the wrapper does not define
    itself is read from the inner transport (``client._transport._pool``, a custom transport's own fields).
    ``__getattr__`` is only reached for names the wrapper lacks, so it costs the request path nothing.
    """

    #: Set on every wrapping transport, so wrapping is idempotent and the pipeline can be found from a client.
    aurelis_pipeline: FlowSource

    def __init__(self, inner: Any, pipeline: FlowSource, owns_pipeline: bool, http: Any) -> None:
        self.inner = inner
        self.aurelis_pipeline = pipeline
        self._owns_pipeline = owns_pipeline
        #: The flavour (httpx or httpx2) of the requests this transport is expected to be given: its client's
        #: when instrument() knows it, else its inner transport's. The flavour of what the pipeline builds
        #: (responses, streams) is that of each request, which this guesses once here rather than looking it
        #: up per request: a request of another class (an httpx client over an httpx2-based transport, as
        #: the openai SDK builds for legacy httpx clients) is looked up instead.
        self._http = http
        self._request_type = http.Request

    def _flavour(self, request: Any) -> Any:
        return self._http if type(request) is self._request_type else flavour_of(request)

    def __getattr__(self, name: str) -> Any:
        # Only names missing from the wrapper get here. Dunder names are not forwarded: protocols (copy,
        # pickle, async context managers on a sync wrapper) must not be found on the inner transport by a
        # getattr() probe when the wrapper itself does not take part in them.
        if name.startswith("__") or name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} around {self.inner!r}>"


class _SyncPipelineTransport(_PipelineTransport):
    def handle_request(self, request: Any) -> Any:
        pipeline = self.aurelis_pipeline
        ctx = RequestContext(request, self.inner, self._flavour(request), False, DEFAULT_CONTROLS)
        return drive_sync(pipeline.flow(ctx), pipeline.bridge)

    def __enter__(self) -> Any:
        self.inner.__enter__()
        return self

    def __exit__(self, exc_type: Any = None, exc_value: Any = None, traceback: Any = None) -> Any:
        try:
            return self.inner.__exit__(exc_type, exc_value, traceback)
        finally:
            if self._owns_pipeline:
                self.aurelis_pipeline.close()

    def close(self) -> None:
        try:
            self.inner.close()
        finally:
            if self._owns_pipeline:
                self.aurelis_pipeline.close()


class _AsyncPipelineTransport(_PipelineTransport):
    async def handle_async_request(self, request: Any) -> Any:
        pipeline = self.aurelis_pipeline
        ctx = RequestContext(request, self.inner, self._flavour(request), True, DEFAULT_CONTROLS)
        return await drive_async(pipeline.flow(ctx))

    async def __aenter__(self) -> Any:
        await self.inner.__aenter__()
        return self

    async def __aexit__(self, exc_type: Any = None, exc_value: Any = None, traceback: Any = None) -> Any:
        try:
            return await self.inner.__aexit__(exc_type, exc_value, traceback)
        finally:
            if self._owns_pipeline:
                await self.aurelis_pipeline.aclose()

    async def aclose(self) -> None:
        try:
            await self.inner.aclose()
        finally:
            if self._owns_pipeline:
                await self.aurelis_pipeline.aclose()


def wrap_transport(
    inner: Any, pipeline: FlowSource, *, is_async: bool, owns_pipeline: bool = False, http: Any = None
) -> Any:
    """``inner`` wrapped by ``pipeline`` (returned unchanged if it already is).

    ``http`` is the flavour of the client the transport is for, when known. The wrapper derives from the inner
    transport's own base class (so ``isinstance`` checks on it keep their answer); a duck-typed transport
    with no httpx base class takes the client's.
    """
    if isinstance(inner, _PipelineTransport):
        return inner
    try:
        base = flavour_of(inner)
    except TypeError:
        if http is None:
            raise
        base = http
    return _transport_class(base, is_async)(inner, pipeline, owns_pipeline, http or base)


def instrument_client(client: Any, pipeline: FlowSource, owns_pipeline: bool = False) -> Any:
    """Replace ``client``'s transport and every proxy mount with pipeline-wrapped ones, in place.

    The client keeps building requests exactly as before (auth, redirects, cookies, event hooks, timeouts):
    only the hop from client to network goes through the pipeline, once per redirect hop or auth retry.
    Calling it again on the same client changes nothing.
    """
    http, is_async = client_flavour(client)
    transport, mounts = client_transports(client)
    set_client_transports(
        client,
        wrap_transport(transport, pipeline, is_async=is_async, owns_pipeline=owns_pipeline, http=http),
        {
            pattern: None if mount is None else wrap_transport(mount, pipeline, is_async=is_async, http=http)
            for pattern, mount in mounts.items()
        },
    )
    return client


def pipeline_of(client: Any) -> FlowSource | None:
    """The pipeline an instrumented client runs through, or ``None``."""
    return getattr(client_transports(client)[0], "aurelis_pipeline", None)
