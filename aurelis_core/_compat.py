"""The one place that knows httpx and httpx2 apart, and the one place that touches their private attributes.

httpx 0.28 and httpx2 2.x have the same transport API but separate classes: a response handed to an httpx2
client must be an ``httpx2.Response``. Everything the pipeline builds is therefore made from the module the
request itself came from, looked up here once per request type.

Where the public API costs a copy or a re-parse per request (headers, URL parts, a body already in memory) or
offers no way at all (a client's transport and mounts), the helpers below read or write the attributes both
flavours keep privately. They are named in :data:`PRIVATE_ATTRIBUTES`, and a test fails if any other module of
Aurelis (or a first-party or contrib plugin) touches one of them: the ``httpx<0.29`` pin has this one file to
audit when httpx changes.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

__all__ = [
    "PRIVATE_ATTRIBUTES",
    "buffered_body",
    "build_response",
    "client_flavour",
    "client_transports",
    "copy_request",
    "extend_header_items",
    "flavour_of",
    "header_items",
    "is_async_client",
    "is_read",
    "replayable_body",
    "set_client_transports",
    "url_parts",
]

#: The private attributes of httpx/httpx2 objects read or written here, and nowhere else (a test holds every
#: other module to it): ``Headers._list``, ``URL._uri_reference``, ``Request._content``/``Response._content``,
#: ``ByteStream._stream``, ``Client._transport`` and ``Client._mounts``.
PRIVATE_ATTRIBUTES = frozenset({"_list", "_uri_reference", "_content", "_stream", "_transport", "_mounts"})

_by_type: dict[type, ModuleType] = {}

#: The distributions we know how to wrap: the top-level modules of their request/client classes.
SUPPORTED = ("httpx", "httpx2")

#: The classes every object of a flavour derives from. A flavour is found by identity against these, taken
#: from the module itself, never by name: ``import openai`` rewrites ``__module__`` on what it re-exports
#: (``openai.Transport`` *is* ``httpx2.BaseTransport``, whose ``__module__`` then reads ``"openai"``).
_ROOT_NAMES = (
    "BaseTransport", "AsyncBaseTransport", "Client", "AsyncClient", "Request", "Response", "SyncByteStream",
    "AsyncByteStream",
)
_roots: dict[str, tuple[type, ...]] = {}


def flavour_of(obj: Any) -> ModuleType:
    """The httpx-like module (``httpx`` or ``httpx2``) that ``obj``'s class belongs to.

    Subclasses resolve too (a custom transport deriving from ``httpx.BaseTransport``, one deriving from
    ``openai.Transport``). Only modules already imported are asked: an object of a flavour that was never
    imported cannot exist. The answer is kept per class, so this is one dict lookup after the first call.
    """
    cls = type(obj)
    module = _by_type.get(cls)
    if module is None:
        module = _by_type[cls] = _flavour_of_class(cls)
    return module


def _flavour_of_class(cls: type) -> ModuleType:
    for name in SUPPORTED:
        module = sys.modules.get(name)
        if module is None:
            continue
        roots = _roots.get(name)
        if roots is None:
            roots = _roots[name] = tuple(
                root for root in (getattr(module, attr, None) for attr in _ROOT_NAMES) if isinstance(root, type)
            )
        if issubclass(cls, roots):
            return module
    raise TypeError(
        f"expected an httpx or httpx2 object (a client, a transport, a request or a response), "
        f"got {cls.__module__}.{cls.__qualname__}"
    )


def client_flavour(client: Any) -> tuple[ModuleType, bool]:
    """``(module, is_async)`` for an ``httpx``/``httpx2`` ``Client`` or ``AsyncClient``."""
    http = flavour_of(client)
    if isinstance(client, http.AsyncClient):
        return http, True
    if isinstance(client, http.Client):
        return http, False
    raise TypeError(f"expected {http.__name__}.Client or {http.__name__}.AsyncClient, got {type(client)!r}")


def is_async_client(client: Any) -> bool:
    return client_flavour(client)[1]


def header_items(headers: Any) -> list[tuple[bytes, bytes, bytes]]:
    """``(raw name, lower-cased name, value)`` for every header, without copying.

    ``Headers.get`` lower-cases and scans on every call (~0.7 us each); stages that look for several headers
    make one pass over this list instead. Both flavours keep exactly this list as ``Headers._list``.
    """
    return headers._list  # type: ignore[no-any-return]


def extend_header_items(headers: Any, items: list[tuple[bytes, bytes, bytes]]) -> None:
    """Add ``items`` (triples as in :func:`header_items`) after the headers of ``headers``, taken as they are.

    The list is replaced by a new one, never extended in place: others may hold the old one (a flight's
    followers hold the leader's response headers). ``Headers.update``/``[]=`` would re-check and lower-case
    each item, and replace a name already there rather than add it.
    """
    headers._list = headers._list + items


def url_parts(url: Any) -> tuple[str, str, int | None, str, str | None]:
    """``(scheme, host, port, path, query)`` of a URL, as its (percent-encoded, lower-cased host) parts.

    Each ``URL`` property (``raw_scheme``, ``netloc``, ``raw_path``) re-derives and encodes its part (~0.5 us
    apiece); both flavours keep the parsed parts as ``URL._uri_reference``, read here in one go. ``port`` is
    ``None`` for the scheme's default port, ``query`` is ``None`` when the URL has no ``?``.
    """
    uri = url._uri_reference
    return uri.scheme, uri.host, uri.port, uri.path, uri.query


def build_response(
    http: ModuleType, status_code: int, items: list[tuple[bytes, bytes, bytes]], stream: Any,
    extensions: dict[str, Any],
) -> Any:
    """A ``http.Response`` whose headers are ``items`` (triples as in :func:`header_items`), taken as they are.

    ``Response(headers=pairs)`` re-checks and lower-cases every header (~0.2 us each) and copies
    ``extensions``; the pipeline's headers are triples it already holds (from a ``Headers`` or a cache entry)
    and its extensions dicts are fresh, so it hands both over. ``items`` must be a list the response may own.
    """
    response = http.Response(status_code, stream=stream)
    response.headers._list = items
    response.extensions = extensions
    return response


def buffered_body(request: Any) -> bytes | None:
    """The request's whole body when it is held in memory as bytes, else ``None``.

    A request built from ``content=`` bytes or str, ``json=``, ``data=`` without files, no body at all, or one
    whose body was ``read()``, holds its body as ``Request._content`` and streams it from a ``ByteStream`` (in
    both flavours). A ``ByteStream`` given as ``stream=`` holds its bytes too, without ``_content``. Anything
    else (a generator, an iterator, a file object, an async iterable, a multipart form) is streamed as it is
    sent: ``None``. The body is never read here. An object without a ``stream`` (a simulation's stand-in for
    a request) has no body either: ``None``.
    """
    # Per request, on the hot path (the key, the model label, routers, limits): the attribute read in a try
    # costs what an inline getattr(request, "_content", None) did (~29 ns against ~60 ns for this helper with
    # a getattr, measured on CPython 3.11); only a streamed upload, rare, pays for the exception.
    try:
        return request._content  # type: ignore[no-any-return]
    except AttributeError:
        pass
    stream = getattr(request, "stream", None)
    # The exact class: a subclass may iterate differently (once, say), so it proves nothing.
    if stream is not None and type(stream) is flavour_of(request).ByteStream:
        return stream._stream  # type: ignore[no-any-return]
    return None


def is_read(message: Any) -> bool:
    """Whether a request's or a response's whole body is in memory: built from ``content=``, or ``read()``.

    A response a transport built that way (``MockTransport``'s, a hand-written transport's) is also closed:
    its caller reads the content, never the stream. Both flavours keep the body as ``_content``, set only then.
    """
    # hasattr, not the try of buffered_body: a response from the network is usually not read, and an
    # exception per request would cost ~1 us.
    return hasattr(message, "_content")


def copy_request(http: ModuleType, request: Any, url: Any, headers: list[tuple[bytes, bytes]]) -> Any:
    """A new ``http.Request`` like ``request`` (method, body, extensions), to ``url`` with ``headers``.

    The copy shares the body: its stream, and the bytes when they are in memory, so that ``content`` and
    :func:`buffered_body` answer on the copy as they did on the original (``Request(stream=...)`` alone leaves
    the copy "not read"). The extensions are the same (``Request`` takes a shallow copy of the dict).
    """
    new = http.Request(request.method, url, headers=headers, stream=request.stream, extensions=request.extensions)
    # Per attempt with endpoints (the rewrite), so measured: with the body in memory, the usual case, the read
    # in a try costs less than hasattr() and then the read; a streamed upload pays for the exception.
    try:
        new._content = request._content
    except AttributeError:  # a streamed upload: the copy streams it too
        pass
    return new


def client_transports(client: Any) -> tuple[Any, dict[Any, Any]]:
    """``(transport, mounts)`` of an ``httpx``/``httpx2`` client, or ``(None, {})`` for another object.

    The transport the client sends through, and its proxy mounts (URL pattern -> transport or ``None``); httpx
    keeps them as ``Client._transport`` and ``Client._mounts`` and offers no public way to read or replace them.
    """
    return getattr(client, "_transport", None), getattr(client, "_mounts", {})


def set_client_transports(client: Any, transport: Any, mounts: dict[Any, Any]) -> None:
    """Make ``transport`` and ``mounts`` (as :func:`client_transports` gives them) those of ``client``."""
    client._transport = transport
    client._mounts = mounts


def replayable_body(request: Any) -> bool:
    """Whether sending ``request`` again sends the same body bytes.

    True for a body in memory (:func:`buffered_body`) and for a multipart form (``files=``) whose every part is
    bytes or str: the form's stream renders its parts afresh on each pass, with the boundary it chose once.
    False for a form with a file object (a second pass re-reads the file, which may have changed, or cannot
    seek) and for any iterator, generator, file or async-iterable body: httpx reads those once, and a second
    pass raises ``StreamConsumed`` (generators) or silently yields nothing (iterators, files at their end).
    """
    if buffered_body(request) is not None:
        return True
    stream = request.stream
    multipart = sys.modules.get(flavour_of(request).__name__ + "._multipart")
    if multipart is None or type(stream) is not multipart.MultipartStream:
        return False
    data_field = multipart.DataField
    return all(type(field) is data_field or isinstance(field.file, (bytes, str)) for field in stream.fields)
