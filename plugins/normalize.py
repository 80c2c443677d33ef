"""``normalize``: the cache key, over the whole wire request, scoped to a tenant.

The key is one digest over these fields, in an order and encoding that cannot run together:

    format version, method, upstream origin, path and query, tenant scope, canonical body

- **canonical body**: the JSON body parsed and re-encoded with sorted keys and no optional whitespace (by
  msgspec, in C: ~2 us for a chat body where the standard library's json takes ~6-10 us); numbers are
  normalised while parsing (a float with an integral value becomes that integer), so ``0`` and ``0.0``, or
  ``{"a":1,"b":2}`` and ``{"b":2,"a":1.0}``, give the same key. Every field counts (a deny-list,
  ``ignore_fields``, can drop fields that do not change the answer), so a field that changes the output can
  never be forgotten by the key.
- **tenant scope**: an HMAC-SHA256 fingerprint of the credential headers (``Authorization``, ``api-key``,
  ``x-api-key``), so two API keys never share an entry and no credential is ever stored; or an explicit
  ``namespace`` from the config or the request.
- **upstream origin**: the URL the caller addressed (before routing), so two providers never share an entry.

Requests that cannot be keyed safely (not a POST to a configured path, not a UTF-8 JSON object body (RFC 8259
JSON is UTF-8), a body that is still a stream) get no key: they pass through uncached, never rejected.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from typing import Any

import attrs
import msgspec
from aurelis_plugins._validators import each, label, url_path

from aurelis_core import RequestContext, hookimpl
from aurelis_core._compat import header_items, url_parts

__all__ = ["KEY_VERSION", "Normalize", "NormalizeConfig"]

#: Bumped whenever the key's composition changes, so old cache entries are never misread.
KEY_VERSION = "aurelis-key-3"

CREDENTIAL_HEADERS = frozenset((b"authorization", b"api-key", b"x-api-key"))
_WHITESPACE = re.compile(r"\s+")
#: How many requests the memo keeps; it is cleared when full, or when the bodies it holds pass ``MEMO_BYTES``.
MEMO_ENTRIES = 4096
#: Bodies up to this size are memo keys themselves (Python's own hash: ~0.1 us for a chat body, against ~0.5 us
#: for a digest, and cached on the bytes object); larger ones by their digest, so the memo stays small.
MEMO_INLINE_BYTES = 8192
#: What the memo may hold in inline bodies (~200 B per entry besides).
MEMO_BYTES = 4 * 1024 * 1024
_NOT_CACHEABLE: Any = object()
#: Sorted keys (at every depth), no optional whitespace, UTF-8: one spelling per value.
_CANONICAL = msgspec.json.Encoder(order="sorted")


@attrs.frozen
class NormalizeConfig:
    #: An explicit tenant scope shared by every credential (default: one scope per credential).
    namespace: str | None = attrs.field(default=None, validator=label)
    #: The HMAC key for credential fingerprints (default: env ``AURELIS_CACHE_SECRET``, else a fixed label;
    #: set one so fingerprints cannot be correlated across deployments).
    secret: str | None = attrs.field(default=None, repr=False, validator=label)
    #: Collapse runs of whitespace in message text (opt-in: it can change what the model sees).
    fold_whitespace: bool = False
    #: Paths (suffixes) whose POSTs are cacheable: stateless, deterministic-by-request endpoints only. Each
    #: starts with "/": an empty suffix would make every JSON POST cacheable, side-effecting ones included.
    paths: tuple[str, ...] = attrs.field(
        default=("/chat/completions", "/completions", "/embeddings"), converter=tuple, validator=each(url_path)
    )
    #: Top-level body fields left out of the key (e.g. ``"user"`` to share answers across end users).
    ignore_fields: tuple[str, ...] = attrs.field(default=(), converter=tuple, validator=each(label))


def _parse_float(text: str) -> int | float:
    # Called by the decoder for every number with a fraction or exponent (given its text): normalising here
    # costs one call per such number, where walking the parsed tree afterwards would cost a visit per node.
    value = float(text)
    return int(value) if value.is_integer() else value


_DECODER = msgspec.json.Decoder(float_hook=_parse_float)


class Normalize:
    """The ``normalize`` plugin. See the module docstring for what the key covers."""

    name = "normalize"
    Config = NormalizeConfig

    def __init__(self, config: NormalizeConfig, pipeline: Any) -> None:
        self.config = config
        secret = config.secret or os.environ.get("AURELIS_CACHE_SECRET") or KEY_VERSION
        self._secret = secret.encode()
        # Matched against the raw (still percent-encoded) path: URL.path decodes on every access.
        self._paths = tuple(p.rstrip("/") for p in config.paths)
        self._ignore = frozenset(config.ignore_fields)
        self._memo: dict[tuple[Any, ...], Any] = {}
        self._memo_bytes = 0
        # credential bytes -> fingerprint; HMAC costs ~1.5 us, a dict hit ~50 ns, and a process sees few keys.
        self._fingerprints: dict[bytes, str] = {}

    def tenant(self, ctx: RequestContext) -> str:
        """The tenant scope of a request: ``ns:<namespace>`` or ``key:<fingerprint>`` or ``anonymous``."""
        namespace = ctx.controls.namespace or self.config.namespace
        if namespace is not None:
            return "ns:" + namespace
        material = b""
        for _, lower, value in header_items(ctx.original.headers):
            if lower in CREDENTIAL_HEADERS:
                material += lower + b"=" + value + b"\x00"
        return self._fingerprint(material)

    def _fingerprint(self, material: bytes) -> str:
        """The tenant of a request without a namespace, given its credential headers as ``name=value\\0``."""
        if not material:
            return "anonymous"
        fingerprint = self._fingerprints.get(material)
        if fingerprint is None:
            if len(self._fingerprints) >= 4096:
                self._fingerprints.clear()
            fingerprint = hmac.new(self._secret, material, hashlib.sha256).hexdigest()[:32]
            self._fingerprints[material] = fingerprint
        return "key:" + fingerprint

    @hookimpl
    def aurelis_normalize(self, ctx: RequestContext) -> str | None:
        request = ctx.original
        if request.method != "POST":
            return None
        scheme, host, port, path, query = url_parts(request.url)
        if not path.rstrip("/").endswith(self._paths):
            return None
        # One pass over the headers for the content type and the tenant's credentials (not three Headers.get
        # calls, nor two passes): this runs on every cacheable request.
        content_type: bytes | None = None
        material = b""
        for _, lower, value in header_items(request.headers):
            if lower in CREDENTIAL_HEADERS:
                material += lower + b"=" + value + b"\x00"
            elif lower == b"content-type" and content_type is None:
                content_type = value
        if content_type is None or b"json" not in content_type:
            return None
        try:
            body = request.content
        except Exception:  # a streaming upload (RequestNotRead): never read it behind the caller's back
            return None
        namespace = ctx.controls.namespace or self.config.namespace
        # Memo: everything the key depends on -> (key, model, stream). A repeated request (every cache hit) is
        # recognised with one hash of its body and a dict lookup, skipping the JSON parse, the canonical
        # re-encoding and the key's digest. A tuple compared field by field, the body itself (or, for a large
        # one, a 1-tuple of its digest, which never equals a body), so two different requests can never share
        # a memo slot, whatever their fields contain.
        size = len(body)
        body_id = body if size <= MEMO_INLINE_BYTES else (hashlib.blake2b(body, digest_size=16).digest(),)
        request_id = (body_id, scheme, host, port, path, query, material, namespace)
        memo = self._memo.get(request_id)
        if memo is None:
            memo = self._key(ctx, body, scheme, host, port, path, query, material, namespace)
            if size > MEMO_INLINE_BYTES:
                size = 16
            if len(self._memo) >= MEMO_ENTRIES or self._memo_bytes + size > MEMO_BYTES:
                self._memo.clear()
                self._memo_bytes = 0
            self._memo[request_id] = memo
            self._memo_bytes += size
        if memo is _NOT_CACHEABLE:
            return None
        key, model, stream = memo
        ctx.model = model
        # Keyed like any request: "stream" is part of the body, so a streamed answer and a whole one never
        # share an entry.
        ctx.stream = stream
        return key  # type: ignore[no-any-return]

    def _key(
        self, ctx: RequestContext, body: bytes, scheme: str, host: str, port: int | None, path: str,
        query: str | None, material: bytes, namespace: str | None,
    ) -> Any:
        """``(cache key, model, stream)`` of a request not in the memo, or ``_NOT_CACHEABLE``."""
        try:
            data = _DECODER.decode(body)
        except msgspec.DecodeError:  # not JSON, not UTF-8, or JSON's non-standard NaN/Infinity
            return _NOT_CACHEABLE
        if not isinstance(data, dict):
            return _NOT_CACHEABLE
        ctx.json = data
        model = data.get("model")
        stream = data.get("stream") is True
        if self._ignore:
            data = {k: v for k, v in data.items() if k not in self._ignore}
        if self.config.fold_whitespace:
            data = _fold_messages(data)
        tenant = "ns:" + namespace if namespace is not None else self._fingerprint(material)
        # One digest over newline-separated fields, the canonical body last. No field before the tenant can
        # contain a raw newline (URL parts are encoded, the rest are constants, a port number and a hex
        # fingerprint), and canonical JSON never does (msgspec escapes control characters in strings and adds
        # no whitespace), so the last newline ends the tenant: the fields cannot run together. The query keeps
        # its "?" (a path cannot contain one), so path and query cannot trade characters; the default port is
        # "" (the URL parser drops an explicit default port).
        target = path if query is None else path + "?" + query
        head = "\n".join(
            (KEY_VERSION, "POST", scheme, host, "" if port is None else str(port), target, tenant, "")
        )
        key = hashlib.blake2b(head.encode() + _CANONICAL.encode(data), digest_size=20).hexdigest()
        return key, model if isinstance(model, str) else None, stream


def _fold_messages(data: dict[str, Any]) -> dict[str, Any]:
    messages = data.get("messages")
    if not isinstance(messages, list):
        return data
    folded = []
    for message in messages:
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            message = {**message, "content": _WHITESPACE.sub(" ", message["content"]).strip()}
        folded.append(message)
    return {**data, "messages": folded}
