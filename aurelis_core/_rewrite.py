"""Where an attempt goes: the caller's request moved onto the endpoint a router picked.

One rule places a request's path on an endpoint's base URL, for routing (:func:`rewrite`, on ``httpx`` URLs) and
for workload files (:func:`aurelis_core._workload.join_url`, on strings): :func:`place_path`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, AnyStr

from ._compat import copy_request
from ._models import Endpoint, RequestContext

__all__ = ["place_path", "rewrite"]


def place_path(prefix: AnyStr, path: AnyStr) -> AnyStr:
    """``path`` under the base path ``prefix`` (no trailing slash; empty for none): as it is when it already
    is ``prefix`` or starts with ``prefix/``, else ``prefix`` in front of it."""
    slash = b"/" if isinstance(path, bytes) else "/"
    if not prefix or path == prefix or path.startswith(prefix + slash):
        return path
    return prefix + path


@functools.lru_cache(maxsize=256)
def _base_of(http: Any, url: str) -> tuple[bytes, bytes, bytes]:
    """``(scheme, netloc, base path without trailing slash)`` of an endpoint URL, parsed once."""
    parsed = http.URL(url)
    return parsed.raw_scheme, parsed.netloc, parsed.raw_path.rstrip(b"/")


def rewrite(ctx: RequestContext, endpoint: Endpoint, endpoints: Sequence[Endpoint]) -> Any:
    """The original request moved onto ``endpoint``: its scheme, host, port and base path, then the request's
    *operation path*; the endpoint's headers and credential applied.

    The operation path (``/chat/completions``) is the request path without the caller's own base path, which
    is known when the caller addressed one of the configured endpoints (its ``base_url`` is, say,
    ``https://models.github.ai/inference``: ``/inference`` is dropped before ``/v1`` of another endpoint is put
    in front), or when the path already starts with the target's base path. Otherwise (a placeholder host)
    the whole request path is the operation path: give such a client a base URL without a path.
    """
    original = ctx.original
    http = ctx.http
    base = http.URL(endpoint.url)
    path = original.url.raw_path
    prefix = base.raw_path.rstrip(b"/")
    own = _caller_base(original.url, path, endpoints, http)
    # The caller addressed a configured endpoint: what follows its base path is the operation path, which goes
    # under the target's base path as it is. Otherwise the shared rule decides (see place_path).
    url = base.copy_with(raw_path=prefix + path[len(own):] if own is not None else place_path(prefix, path))
    headers = [(k, v) for k, v in original.headers.raw if k.lower() != b"host"]
    headers.insert(0, (b"Host", url.netloc))
    if endpoint.headers or endpoint.api_key:
        override = {k.lower().encode(): v.encode() for k, v in endpoint.headers.items()}
        if endpoint.api_key:
            override[b"authorization"] = b"Bearer " + endpoint.api_key.encode()
        headers = [(k, v) for k, v in headers if k.lower() not in override]
        headers.extend(override.items())
    return copy_request(http, original, url, headers)


def _caller_base(url: Any, path: bytes, endpoints: Sequence[Endpoint], http: Any) -> bytes | None:
    """The base path of the configured endpoint that ``url`` addresses, if it addresses one."""
    for endpoint in endpoints:
        scheme, netloc, prefix = _base_of(http, endpoint.url)
        if url.netloc == netloc and url.raw_scheme == scheme and path.startswith(prefix + b"/"):
            return prefix
    return None
