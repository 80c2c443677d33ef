"""The one place that knows httpx and httpx2 apart.

httpx 0.28 and httpx2 2.x have the same transport API but separate classes: a response handed to an httpx2
client must be an ``httpx2.Response``. Everything the pipeline builds is therefore made from the module the
request itself came from, looked up here once per request type.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

__all__ = [
    "buffered_body",
    "build_response",
    "client_flavour",
    "flavour_of",
    "header_items",
    "is_async_client",
    "replayable_body",
    "url_parts",
]

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

    A request built from ``content=`` bytes or str, ``json=``, ``data=`` without files, or one whose body was
    ``read()``, holds its body as ``Request._content`` and streams it from a ``ByteStream`` (in both flavours).
    A ``ByteStream`` given as ``stream=`` holds its bytes too, without ``_content``. Anything else (a generator,
    an iterator, a file object, an async iterable, a multipart form) is streamed as it is sent: ``None``.
    The body is never read here.
    """
    content = getattr(request, "_content", None)
    if content is not None:
        return content  # type: ignore[no-any-return]
    stream = request.stream
    # The exact class: a subclass may iterate differently (once, say), so it proves nothing.
    if type(stream) is flavour_of(request).ByteStream:
        return stream._stream  # type: ignore[no-any-return]
    return None


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
