"""``normalize``: the cache key, over the whole wire request, scoped to a tenant.

The key is one digest over these fields, in an encoding that cannot run together (a JSON array of the fields,
then a newline, then the canonical body)::

    format version, method, upstream origin (scheme, host, port), path and query, tenant, scope, canonical body

- **canonical body**: the JSON body parsed and re-encoded with sorted keys and no optional whitespace (by
  msgspec, in C: ~2 us for a chat body where the standard library's json takes ~6-10 us). Numbers are
  normalised exactly while parsing: a number with an integral value becomes that integer (``0`` and ``0.0``,
  ``100`` and ``1e2`` share a key), any other keeps its exact decimal value (never rounded through a binary
  float, so ``0.1`` and ``0.10000000000000000001`` differ, and ``1e400`` is neither infinity nor ``null``).
  Every field counts (a deny-list, ``ignore_fields``, can drop fields that do not change the answer), so a
  field that changes the output can never be forgotten by the key.
- **tenant** and **scope**: defined once for every plugin by the pipeline (``pipeline.tenant``, see
  :mod:`aurelis_core._tenant` and the ``[tenant]`` table): an HMAC fingerprint of every credential header and
  credential query parameter (or an explicit namespace), and the answer-scoping headers (organization,
  project, API version, beta flags, accepted encodings) as they are. No credential is ever part of the key.
- **upstream origin, path and query**: the URL the caller addressed (before routing), so two providers or two
  local model servers on different ports never share an entry; credential query parameters (``?key=``) are
  taken out of the query and into the tenant's fingerprint.

Which requests are cacheable is the request's dialect's to say (:class:`aurelis_core.plugin.Dialect`: OpenAI's
chat, completions, embeddings and Responses API, Anthropic's messages, Gemini's generate and embed calls, Azure
OpenAI's deployments; a Responses API ``background`` job or ``conversation`` turn is not), or the ``paths``
option's when it is set. Requests that cannot be keyed safely get no key and pass through uncached, never
rejected: not a POST to a cacheable path, a body its dialect refuses, not a UTF-8 JSON object body (RFC 8259
JSON is UTF-8), a body that is still a stream, a body with a duplicated object key (upstreams disagree on which
value wins: some read the first, we would key the last), a body that nests objects and arrays more than
``MAX_DEPTH`` (100) levels deep, JSON's non-standard ``NaN``/``Infinity``.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import attrs
import msgspec

from aurelis_core.plugin import (
    Dialect,
    RequestContext,
    Tenant,
    TenantConfig,
    as_tuple,
    each,
    header_items,
    hookimpl,
    label,
    parse_json,
    path_ending,
    url_parts,
)

__all__ = ["KEY_VERSION", "Normalize", "NormalizeConfig"]

#: Bumped whenever the key's composition changes, so old cache entries are never misread.
KEY_VERSION = "aurelis-key-4"

_WHITESPACE = re.compile(r"\s+")
#: How many requests the memo keeps; it is cleared when full, or when the bodies it holds pass ``MEMO_BYTES``.
MEMO_ENTRIES = 4096
#: Bodies up to this size are memo keys themselves (Python's own hash: ~0.1 us for a chat body, against ~0.5 us
#: for a digest, and cached on the bytes object); larger ones by their digest, so the memo stays small.
MEMO_INLINE_BYTES = 8192
#: How many key heads (URL, credentials, scope, namespace) the key stage keeps digested; cleared when full.
HEAD_ENTRIES = 1024
#: What the memo may hold in inline bodies (~200 B per entry besides).
MEMO_BYTES = 4 * 1024 * 1024
#: What the memo knows of a request: ``(cache key, model, stream, dialect)``, or ``()`` (falsy) when it is not
#: cacheable.
_Memo = tuple[str, str | None, bool, Dialect] | tuple[()]
_NOT_CACHEABLE: tuple[()] = ()
#: Everything a key depends on besides the body: scheme, host, port, path, query, credential pairs, scope pairs,
#: namespace.
HeadId = tuple[
    str, str, int | None, str, str | None, tuple[tuple[bytes, bytes], ...], tuple[tuple[bytes, bytes], ...], str | None
]
_CREDENTIAL, _SCOPE, _CONTENT_TYPE = "credential", "scope", "content-type"
#: Sorted keys (at every depth), no optional whitespace, UTF-8, exact decimals as JSON numbers: one spelling per
#: value.
_CANONICAL = msgspec.json.Encoder(order="sorted", decimal_format="number")
#: Bodies that nest objects and arrays deeper than this are not cached. Without a fixed bound, whether a deep
#: body got a key would depend on how much stack the caller had left (the parser stops at Python's recursion
#: limit), so the same request could be cached in one process and not in another. Chat bodies with nested tool
#: schemas stay well within it.
MAX_DEPTH = 100
#: The only way a colon can reach a string without a literal ``:`` in the body (see ``_has_duplicate_keys``).
_ESCAPED_COLONS = (b"\\u003a", b"\\u003A")


@attrs.frozen
class NormalizeConfig:
    #: Deprecated spelling of ``[tenant] namespace`` (copied there when the config is loaded).
    namespace: str | None = attrs.field(default=None, validator=label)
    #: Deprecated spelling of ``[tenant] secret`` (copied there when the config is loaded).
    secret: str | None = attrs.field(default=None, repr=False, validator=label)
    #: Collapse runs of whitespace in message text (opt-in: it can change what the model sees).
    fold_whitespace: bool = False
    #: Path endings whose POSTs are cacheable, replacing those of every dialect (unset: each request's dialect
    #: says, see :class:`aurelis_core.plugin.Dialect`). Stateless, deterministic-by-request operations only; each
    #: starts with "/" or ":" (Gemini's ``:generateContent``): an empty ending would make every JSON POST
    #: cacheable, side-effecting ones included. The dialect's body rules still apply.
    paths: tuple[str, ...] | None = attrs.field(
        default=None,
        converter=attrs.converters.optional(as_tuple),
        validator=attrs.validators.optional(each(path_ending)),
    )
    #: Top-level body fields left out of the key (e.g. ``"user"`` to share answers across end users).
    ignore_fields: tuple[str, ...] = attrs.field(default=(), converter=as_tuple, validator=each(label))


def _has_duplicate_keys(body: bytes, canonical: bytes) -> bool:
    """Whether ``body`` repeats a key in some object, given the canonical encoding of what it parsed to.

    The decoder keeps the last of repeated keys; every member of an object costs one ``:`` in compact JSON, and
    every ``:`` in the body is a member's or a string's. So when no string in the body spells a colon as
    ``\\u003a``, the body has exactly as many colons as its canonical encoding unless a key was repeated (which
    drops a member, and the colons of the strings in its value). Two C-speed counts instead of a Python-level
    parse that tracks keys; a body that does spell a colon that way is treated as repeating one (not cached).
    """
    if _ESCAPED_COLONS[0] in body or _ESCAPED_COLONS[1] in body:
        return True
    return body.count(b":") != canonical.count(b":")


class Normalize:
    """The ``normalize`` plugin. See the module docstring for what the key covers."""

    name = "normalize"
    Config = NormalizeConfig

    def __init__(self, config: NormalizeConfig, pipeline: Any) -> None:
        self.config = config
        # The pipeline's tenant definition; a plugin built on its own (no pipeline) makes one from the
        # deprecated options, which a pipeline has already moved to its [tenant] table.
        self._tenant: Tenant = (
            pipeline.tenant if pipeline is not None
            else Tenant(TenantConfig(secret=config.secret, namespace=config.namespace))
        )
        self._namespace = config.namespace or self._tenant.namespace
        #: lower-cased header name -> what it is to the key (see aurelis_normalize)
        self._roles: dict[bytes, str] = {
            **dict.fromkeys(self._tenant.scope_headers, _SCOPE),
            **dict.fromkeys(self._tenant.credential_headers, _CREDENTIAL),
            b"content-type": _CONTENT_TYPE,
        }
        # Matched against the raw (still percent-encoded) path: URL.path decodes on every access.
        self._paths = None if config.paths is None else tuple(p.rstrip("/") for p in config.paths)
        self._ignore = frozenset(config.ignore_fields)
        self._memo: dict[tuple[Any, ...], _Memo] = {}
        #: head_id -> the key's digest state after its head (see _key)
        self._heads: dict[HeadId, Any] = {}
        self._memo_bytes = 0

    def tenant(self, ctx: RequestContext) -> str:
        """The tenant of a request (``pipeline.tenant.identify(...).tenant``; kept for existing callers)."""
        return str(self._tenant.identify(ctx.original, ctx.controls.namespace or self._namespace).tenant)

    @hookimpl
    def aurelis_normalize(self, ctx: RequestContext) -> str | None:
        request = ctx.original
        if request.method != "POST":
            return None
        scheme, host, port, path, query = url_parts(request.url)
        # Whether the path is cacheable in its dialect is part of the memoised answer below: a repeated request
        # (every cache hit) does not ask its dialect again.
        # One pass over the headers for the content type, the tenant's credentials and the answer's scope (not
        # a Headers.get per name, nor a pass each): this runs on every cacheable request.
        # One dict lookup per header tells what it is to the key (most headers are nothing to it).
        roles = self._roles
        content_type: bytes | None = None
        credentials: list[tuple[bytes, bytes]] = []
        scope: list[tuple[bytes, bytes]] = []
        for _, lower, value in header_items(request.headers):
            role = roles.get(lower)
            if role is None:
                continue
            if role is _CREDENTIAL:
                credentials.append((lower, value))
            elif role is _SCOPE:
                scope.append((lower, value))
            elif content_type is None:
                content_type = value
        if content_type is None or b"json" not in content_type:
            return None
        try:
            body = request.content
        except Exception:  # a streaming upload (RequestNotRead): never read it behind the caller's back
            return None
        if query:
            query, in_query = self._tenant.split_query(query)
            credentials.extend(in_query)
        namespace = ctx.controls.namespace or self._namespace
        # Memo: everything the key depends on -> (key, model, stream, dialect). A repeated request (every cache hit) is
        # recognised with one hash of its body and a dict lookup, skipping the JSON parse, the canonical
        # re-encoding and the key's digest. A tuple compared field by field, the body itself (or, for a large
        # one, a 1-tuple of its digest, which never equals a body), so two different requests can never share
        # a memo slot, whatever their fields contain.
        size = len(body)
        body_id = body if size <= MEMO_INLINE_BYTES else (hashlib.blake2b(body, digest_size=16).digest(),)
        head_id = (scheme, host, port, path, query, tuple(credentials), tuple(scope), namespace)
        request_id = (body_id, head_id)
        memo = self._memo.get(request_id)
        if memo is None:
            dialect = ctx.dialect
            memo = (
                self._key(ctx, body, head_id, dialect) if dialect.cacheable_path(path, self._paths)
                else _NOT_CACHEABLE
            )
            if size > MEMO_INLINE_BYTES:
                size = 16
            if len(self._memo) >= MEMO_ENTRIES or self._memo_bytes + size > MEMO_BYTES:
                self._memo.clear()
                self._memo_bytes = 0
            self._memo[request_id] = memo
            self._memo_bytes += size
        if not memo:  # _NOT_CACHEABLE
            return None
        key, model, stream, dialect = memo
        ctx.dialect = dialect
        ctx.model = model
        # Keyed like any request: "stream" is part of the body, so a streamed answer and a whole one never
        # share an entry.
        ctx.stream = stream
        return key

    def _key(self, ctx: RequestContext, body: bytes, head_id: HeadId, dialect: Dialect) -> _Memo:
        """``(cache key, model, stream, dialect)`` of a request not in the memo, or ``_NOT_CACHEABLE``."""
        try:
            data = parse_json(body)
            if not isinstance(data, dict):
                return _NOT_CACHEABLE
            canonical = _CANONICAL.encode(data)
        except Exception:
            # Not JSON, not UTF-8, JSON's non-standard NaN/Infinity (DecodeError), a lone surrogate in a string
            # (an encode error), nested too deeply (RecursionError): no key, the request passes through.
            return _NOT_CACHEABLE
        if _has_duplicate_keys(body, canonical) or _too_deep(body, data):
            return _NOT_CACHEABLE
        ctx.json = data
        path = head_id[3]
        if not dialect.cacheable(path, data):  # a background job, a conversation's turn...
            return _NOT_CACHEABLE
        model = dialect.model(path, data)
        stream = dialect.streams(path, data)
        if self._ignore or self.config.fold_whitespace:
            if self._ignore:
                data = {k: v for k, v in data.items() if k not in self._ignore}
            if self.config.fold_whitespace:
                data = _fold_messages(data)
            canonical = _CANONICAL.encode(data)
        # A client sends its requests to a few URLs with the same credentials and scope: everything before the
        # body is digested once per such head, and each new body costs a copy of that digest's state (~0.1 us)
        # instead of the tenant's HMAC, the scope's sorting and the head's encoding (~3 us with the headers an
        # SDK sends). The digest is the same as of the whole key's bytes in one go.
        digest = self._heads.get(head_id)
        if digest is None:
            if len(self._heads) >= HEAD_ENTRIES:
                self._heads.clear()
            digest = self._heads[head_id] = self._head_digest(head_id)
        digest = digest.copy()
        digest.update(canonical)
        return digest.hexdigest(), model, stream, dialect

    def _head_digest(self, head_id: HeadId) -> Any:
        """A BLAKE2b state fed with the key's head: every field before the body, and the newline that ends it."""
        scheme, host, port, path, query, credentials, scope, namespace = head_id
        tenant = "ns:" + namespace if namespace is not None else self._tenant.fingerprint(list(credentials))
        # The fields before the body as one JSON array: each field is a JSON string (or number, null, list)
        # whatever it contains, so no field can run into the next, and the array ends before the newline that
        # starts the canonical body. The query keeps its "?" so path and query cannot trade characters.
        target = path if query is None else path + "?" + query
        head = _CANONICAL.encode(
            # Scope pairs as they were sent (the accepted codings as a set), sorted; bytes encode as base64.
            [KEY_VERSION, "POST", scheme, host, port, target, tenant, sorted(map(_scope_pair, scope))]
        )
        return hashlib.blake2b(head + b"\n", digest_size=20)


def _too_deep(body: bytes, data: Any) -> bool:
    """Whether ``data`` (parsed from ``body``) nests deeper than :data:`MAX_DEPTH`."""
    # Two C-speed counts first: a body with fewer brackets than the bound cannot nest beyond it, which spares
    # the usual request the walk below.
    if body.count(b"{") + body.count(b"[") <= MAX_DEPTH:
        return False
    level: list[Any] = [data]
    for _ in range(MAX_DEPTH):  # breadth first, one level a turn: no recursion, whatever the depth
        level = [
            child
            for node in level
            for child in (node.values() if isinstance(node, dict) else node)
            if isinstance(child, (dict, list))
        ]
        if not level:
            return False
    return True


def _scope_pair(pair: tuple[bytes, bytes]) -> tuple[bytes, bytes]:
    # "gzip, br" and "br,gzip" accept the same encodings: one key. (The encodings are in the key at all because
    # a stored body keeps its Content-Encoding: a client without a zstd decoder must not get a zstd answer.)
    name, value = pair
    if name == b"accept-encoding":
        codings = {c.split(b";", 1)[0].strip().lower() for c in value.split(b",")}
        return name, b",".join(sorted(codings))
    return pair


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
