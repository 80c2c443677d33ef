"""The data that flows through a pipeline: request context, attempts, cache entries, endpoints.

These are plain classes with ``__slots__``: one :class:`RequestContext` is made per request, so its
construction cost is part of every request's overhead and is kept to a handful of attribute stores.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from ._compat import buffered_body, url_parts
from ._dialects import BUILTIN
from ._json import parse_json
from ._usage import USAGE_TAIL as USAGE_TAIL
from ._usage import Usage as Usage
from ._usage import usage_counts as usage_counts
from ._usage import usage_tokens as usage_tokens
from .validators import Invalid, env_name, header_table, http_url, label, positive, positive_int, printable

__all__ = [
    "CACHE_BYPASS",
    "CACHE_HIT",
    "CACHE_MISS",
    "CLOCK_SKEW",
    "Attempt",
    "CacheEntry",
    "CacheInfo",
    "Endpoint",
    "RequestContext",
    "RequestControlError",
    "RequestControls",
    "Usage",
    "usage_counts",
    "usage_tokens",
]

_UNSET: Any = object()
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MODEL_FIELD = re.compile(rb'"model"\s*:\s*"([^"\\]{1,200})"')

CACHE_HIT = "hit"
CACHE_MISS = "miss"
CACHE_BYPASS = "bypass"


def _header_names(headers: Mapping[str, str]) -> str:
    # Values are not shown: a header (api-key, x-goog-api-key) may hold a credential.
    return "{" + ", ".join(f"{name!r}: '***'" for name in headers) + "}"


def _model_names(value: Any) -> Any:
    """``models`` as a tuple (a list, tuple or set), ``None`` kept; anything else is left for the check."""
    return tuple(value) if isinstance(value, (list, tuple, set, frozenset)) else value


def _model_list(instance: Any, attribute: Any, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, tuple) or not value:
        raise Invalid(attribute.name, "a non-empty list of model names or globs such as [\"gpt-4.1\", \"gpt-4.1-*\"]",
                      value)
    for index, model in enumerate(value):
        if not isinstance(model, str) or not model or _CONTROL.search(model):
            raise Invalid(f"{attribute.name}[{index}]", "a model name or glob (a non-empty string)", model)


def _model_table(instance: Any, attribute: Any, value: Any) -> None:
    if not isinstance(value, Mapping):
        raise Invalid(attribute.name, "a table of requested model = the endpoint's name for it", value)
    for requested, own in value.items():
        if not isinstance(requested, str) or not requested or _CONTROL.search(requested):
            raise Invalid(attribute.name, "model names as keys", requested)
        if not isinstance(own, str) or not own or _CONTROL.search(own) or "/" in own:
            raise Invalid(f"{attribute.name}[{requested!r}]", "the endpoint's name for the model (a non-empty "
                          "string without '/')", own)


@attrs.frozen
class Endpoint:
    """One upstream that requests may be routed to (``[[endpoints]]`` in the config).

    ``url`` is the endpoint's base URL (absolute http(s), without query or fragment: the request's own are
    kept); the request's path is kept and moved onto it. ``headers`` are added to every request sent there, and
    ``api_key`` replaces the caller's ``Authorization`` header, so one client can fan out over deployments that
    each have their own credential. ``api_key_env`` names the environment variable to read ``api_key`` from
    when the endpoint is made (an error names it when it is not set).

    ``models`` are the models the endpoint serves, names or globs (``*``, ``?``, ``[...]``, case-sensitive);
    ``None``, the default, serves every model. ``model_map`` maps a requested model to the endpoint's own name
    for it (an Azure deployment, a provider's prefix), written into the request's ``model`` field, and into
    its path where the path names the model (see :mod:`aurelis_core._model_routes`). ``dialect`` names the wire
    format the endpoint speaks (``openai``, ``azure_openai``, ``anthropic``, ``gemini``, or one a plugin adds),
    when its URL paths do not tell.
    """

    #: Absolute ``http(s)`` base URL, without query or fragment; the request's operation path is moved onto it.
    url: str = attrs.field(validator=http_url)
    #: A unique name, used in metrics and reports (empty: the URL).
    name: str = attrs.field(default="", validator=printable)
    #: Share of traffic for the weighted routers.
    weight: float = attrs.field(default=1.0, validator=positive)
    #: Headers added to every request sent here (an Azure ``api-key``: write it ``"${AZURE_KEY}"`` in a file);
    #: their values are never shown.
    headers: Mapping[str, str] = attrs.field(factory=dict, validator=header_table, repr=_header_names)
    #: Replaces the caller's ``Authorization`` with ``Bearer <api_key>``. Never logged, never stored.
    api_key: str | None = attrs.field(default=None, repr=False, validator=label)
    #: The environment variable ``api_key`` is read from when the config is loaded (instead of ``api_key``).
    api_key_env: str | None = attrs.field(default=None, validator=attrs.validators.optional(env_name))
    #: Requests per minute this upstream allows (the ``ratelimit`` plugin's period), before the table's own.
    rpm: int | None = attrs.field(default=None, validator=positive_int)
    #: Tokens per minute this upstream allows (the ``ratelimit`` plugin's period), before the table's own.
    tpm: int | None = attrs.field(default=None, validator=positive_int)
    #: The models served, names and globs (``["gpt-4.1", "gpt-4.1-*"]``); absent: every model.
    models: tuple[str, ...] | None = attrs.field(default=None, converter=_model_names, validator=_model_list)
    #: Requested model -> this endpoint's own name for it (``{"gpt-4.1" = "my-deployment"}``), sent instead.
    model_map: Mapping[str, str] = attrs.field(factory=dict, validator=_model_table)
    #: The wire format the endpoint speaks, when its URL paths do not tell (see docs/providers.md).
    dialect: str | None = attrs.field(default=None, validator=label)

    def __attrs_post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.url)
        if self.api_key_env is not None:
            key = os.environ.get(self.api_key_env)
            # An endpoint copied with attrs.evolve() comes with the key already read: that is not a second key.
            if self.api_key is not None and self.api_key != key:
                raise ValueError("'api_key_env': give api_key or api_key_env, not both")
            if not key:
                raise ValueError(f"'api_key_env': the environment variable {self.api_key_env} is not set "
                                 "(or is empty)")
            if _CONTROL.search(key):
                raise ValueError(f"'api_key_env': the environment variable {self.api_key_env} holds control "
                                 "characters")
            object.__setattr__(self, "api_key", key)
        if self.models is not None:
            from fnmatch import fnmatchcase

            unserved = [m for m in self.model_map if not any(fnmatchcase(m, p) for p in self.models)]
            if unserved:
                raise ValueError(f"'model_map': maps {', '.join(map(repr, unserved))}, which the endpoint does not "
                                 f"serve (models: {', '.join(self.models)})")


@attrs.frozen
class RequestControls:
    """Per-request cache controls, from ``request.extensions["aurelis"]`` and ``Cache-Control``.

    - ``skip``: neither read nor write any cache tier for this request.
    - ``refresh``: do not read the cache, but store the fresh answer (``Cache-Control: no-cache``).
    - ``no_store``: read the cache, but never store this answer (``Cache-Control: no-store``).
    - ``ttl``: seconds this answer may be served from cache, overriding each tier's default (a finite number
      > 0).
    - ``namespace``: an explicit tenant scope for the cache key, overriding the configured one (a non-empty
      string without control characters).
    - ``coalesce``: join an identical request already in flight rather than send another (on by default;
      ``False`` sends this one on its own, though it still stores its answer).
    """

    skip: bool = False
    refresh: bool = False
    no_store: bool = False
    ttl: float | None = attrs.field(default=None, validator=positive)
    namespace: str | None = attrs.field(default=None, validator=label)
    coalesce: bool = True


DEFAULT_CONTROLS = RequestControls()


class RequestControlError(ValueError):
    """A request's cache controls are invalid: an ``x-aurelis-*`` header, or a value in
    ``request.extensions["aurelis"]``, that the message names with what would be valid.

    Raised to the caller by the request call itself, before any cache is read or anything is sent: a control
    is never ignored or half-applied (a ``nan`` ttl would store an entry that never expires).
    """


#: Seconds by which an entry's ``created`` stamp may lie in the future before its age counts as unknown (and the
#: entry as expired): the clocks of processes that share a Redis or a SQLite file differ by a little, never by
#: more than this when they are synchronised (NTP keeps them within milliseconds).
CLOCK_SKEW = 5.0


class CacheEntry:
    """A stored response: status, headers and the raw body bytes exactly as the upstream sent them.

    The body keeps the upstream's ``Content-Encoding``; it is decoded only when the caller reads it.
    ``chunks`` is set for a stored event stream, one item per chunk as it arrived, so a replay can
    hand the caller the same chunk boundaries. ``created`` is a ``time.time()`` stamp (what the ``Age`` header
    and the shared tiers count from), ``ttl`` in seconds (``None``: the tier's default applies).

    An event stream is held once, as its chunks: its ``body`` is those chunks joined, made on each read of
    ``body`` (the pipeline itself never asks for it), so a 64 MiB stream costs 64 MiB, not twice that, and the
    chunks are the very objects the caller was handed. ``CacheEntry(status, headers, body, chunks=chunks)``
    takes ``body`` as the chunks joined (it is then dropped) or ``b""``.

    ``expires_at`` belongs to the ``memory`` tier that holds the entry: the ``time.monotonic()`` deadline it
    computed when it stored it (a step of the wall clock does not move it). ``None`` until then.

    ``similarity`` marks a *fuzzy* answer: a tier that answers a request with the stored answer to a similar
    one (the contrib ``semantic`` tier) hands over a copy carrying how alike the two were, and the pipeline
    never stores such an entry in any tier (no promotion, no ``aurelis_cache_set``): an approximate answer
    must not become the exact answer to the new request. ``None`` for an exact entry.
    """

    __slots__ = (
        "_body", "_chunks", "_usage", "created", "expires_at", "headers", "hits", "similarity", "status_code", "ttl"
    )

    def __init__(
        self,
        status_code: int,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
        *,
        chunks: Sequence[bytes] | None = None,
        created: float | None = None,
        ttl: float | None = None,
        hits: int = 0,
        similarity: float | None = None,
    ) -> None:
        self.status_code = status_code
        self.headers = headers
        if chunks is None:
            self._body: bytes | None = body
            self._chunks: tuple[bytes, ...] | None = None
        else:
            chunks = tuple(chunks)
            if body and len(body) != sum(map(len, chunks)):
                raise ValueError("CacheEntry: body must be the chunks joined, or b\"\" (it is joined on use)")
            self._body = None
            self._chunks = chunks
        self.created = time.time() if created is None else created
        self.ttl = ttl
        self.hits = hits
        self.similarity = similarity
        self.expires_at: float | None = None
        self._usage: Usage | None = _UNSET

    @property
    def body(self) -> bytes:
        """The whole body (for an event stream: its chunks joined, on each read)."""
        body = self._body
        return b"".join(self._chunks) if body is None else body  # type: ignore[arg-type]

    @property
    def chunks(self) -> tuple[bytes, ...] | None:
        """The chunks of a stored event stream as they arrived, or ``None`` for a whole answer."""
        return self._chunks

    @property
    def length(self) -> int:
        """Bytes of the body (without joining a stream's chunks)."""
        body = self._body
        return sum(map(len, self._chunks)) if body is None else len(body)  # type: ignore[arg-type]

    def tail(self, count: int) -> bytes:
        """The body's last ``count`` bytes or more (a stream's last chunks joined), without joining all of it."""
        body = self._body
        if body is not None:
            return body[-count:] if count < len(body) else body
        chunks = self._chunks
        assert chunks is not None
        start = len(chunks)
        held = 0
        while start and held < count:
            start -= 1
            held += len(chunks[start])
        return b"".join(chunks[start:])

    @property
    def usage(self) -> Usage | None:
        """The :class:`Usage` of the stored answer (what each hit on it saves), or ``None``, as the built-in
        dialects read it (:meth:`usage_in` reads it as a given one does).

        Found on first use and kept: the stats read it on every hit, and the body never changes.
        """
        return self.usage_in(None)

    def usage_in(self, dialect: Any) -> Usage | None:
        """The :class:`Usage` of the stored answer as ``dialect`` (a :class:`~aurelis_core.plugin.Dialect`, or
        ``None``: the built-in reading) reads it; found on first use and kept."""
        usage = self._usage
        if usage is _UNSET:
            chunks = self._chunks
            head = chunks[0][:USAGE_TAIL] if chunks else None
            tail = self.tail(USAGE_TAIL)
            usage = self._usage = usage_counts(tail, head) if dialect is None else dialect.usage(head, tail)
        return usage

    @property
    def tokens(self) -> int | None:
        """``usage.total_tokens`` of the stored answer (what each hit on it saves), or ``None``."""
        usage = self.usage
        return None if usage is None else usage.total

    @property
    def size(self) -> int:
        """Bytes this entry holds (body, headers): what byte-bounded tiers charge for it and limit it by."""
        size = self.length
        for name, value in self.headers:  # a loop, not sum() over a generator: a few headers, ~2x faster
            size += len(name) + len(value)
        return size

    def remaining(self, now: float, default_ttl: float | None) -> float:
        """Seconds this entry may still be served at wall-clock time ``now`` (``math.inf`` without a TTL).

        Its own ``ttl`` first, else ``default_ttl``. Zero or less when it has expired, and ``-inf`` when its age
        is unknown: ``created`` is NaN, or lies in the future by more than ``CLOCK_SKEW`` (a stamp from a clock
        that was wrong, or stepped back since): such an entry could otherwise be served for as long as the
        error, so it counts as expired.
        """
        age = now - self.created
        if not age >= -CLOCK_SKEW:  # NaN fails every comparison
            return -math.inf
        ttl = self.ttl if self.ttl is not None else default_ttl
        if ttl is None:
            return math.inf
        left = ttl - max(age, 0.0)
        return left if left == left else -math.inf

    def expired(self, now: float, default_ttl: float | None) -> bool:
        """True when the entry may no longer be served at wall-clock time ``now`` (see :meth:`remaining`)."""
        return not self.remaining(now, default_ttl) > 0

    def copy(self) -> CacheEntry:
        """A new entry sharing this one's body, chunks and headers (a tier that keeps its own per-entry state
        stores a copy of an entry another tier holds)."""
        entry = CacheEntry.__new__(CacheEntry)
        entry.status_code = self.status_code
        entry.headers = self.headers
        entry._body = self._body
        entry._chunks = self._chunks
        entry.created = self.created
        entry.ttl = self.ttl
        entry.hits = self.hits
        entry.expires_at = None
        entry._usage = self._usage
        return entry

    def __repr__(self) -> str:
        kind = "" if self._chunks is None else f" in {len(self._chunks)} chunks"
        return f"<CacheEntry {self.status_code} {self.length}B{kind}>"


class Attempt:
    """One try at sending the request upstream (the first, or a retry).

    ``end()`` is called exactly once, when the attempt is over: an error, or the response body fully read or
    closed. Routers and breakers read ``endpoint``, ``status_code``, ``error``, the timings and ``headers``
    (the response's headers once they arrived: ``x-ratelimit-*``, ``retry-after``) from here. ``body`` is the
    raw (still content-encoded) response body, set only when the pipeline read it whole before handing it over
    (a cacheable answer), so rate limiters can settle with its ``usage``; ``None`` for pass-through streams.
    For a body handed over as it arrives, ``tail`` is its last bytes once it ended (:data:`USAGE_TAIL`, where
    its usage block is) and, for an event stream, ``first_chunk`` when its first chunk reached the pipeline
    (``time.perf_counter()``: the time to first token) and ``head``, its first chunk's first bytes (where
    Anthropic's stream has its input tokens); :attr:`usage` reads ``body``, else ``head`` and ``tail``, as the
    attempt's ``dialect`` reads usage (the endpoint's, else the request's: see :mod:`aurelis_core._dialects`).
    """

    __slots__ = (
        "body", "dialect", "endpoint", "error", "finished", "first_byte", "first_chunk", "head", "headers",
        "number", "started", "status_code", "tail",
    )

    def __init__(self, number: int, endpoint: Endpoint | None, dialect: Any = None) -> None:
        self.number = number
        self.endpoint = endpoint
        #: The :class:`~aurelis_core.plugin.Dialect` the answer is read with; ``None``: OpenAI's reading.
        self.dialect = dialect
        self.head: bytes | None = None
        self.started = time.perf_counter()
        self.first_byte: float | None = None
        self.finished: float | None = None
        self.status_code: int | None = None
        self.headers: Any = None
        self.body: bytes | None = None
        self.first_chunk: float | None = None
        self.tail: bytes | None = None
        self.error: BaseException | None = None

    @property
    def duration(self) -> float | None:
        return None if self.finished is None else self.finished - self.started

    @property
    def usage(self) -> Usage | None:
        """The tokens the answer spent, from its usage block (see :func:`usage_counts`); ``None`` when the
        pipeline did not see the answer's end or it reports none. Parsed on each read: read it once."""
        body = self.body
        head = body[:USAGE_TAIL] if body is not None else self.head
        if body is None:
            body = self.tail
        if body is None:
            return None
        dialect = self.dialect
        return usage_counts(body, head) if dialect is None else dialect.usage(head, body)

    @property
    def ok(self) -> bool:
        return self.error is None and self.status_code is not None and self.status_code < 400


class CacheInfo:
    """Where a response came from; set as ``response.extensions["aurelis"]``.

    ``status`` is ``"hit"``, ``"miss"`` or ``"bypass"``; ``tier`` names the tier that answered a hit;
    ``key`` is the cache key (a hex digest, never a credential).
    """

    __slots__ = ("endpoint", "key", "status", "tier")

    def __init__(self, status: str, tier: str | None, key: str | None, endpoint: str | None) -> None:
        self.status = status
        self.tier = tier
        self.key = key
        self.endpoint = endpoint

    def __repr__(self) -> str:
        return f"<CacheInfo {self.status} tier={self.tier} endpoint={self.endpoint}>"


class RequestContext:
    """Everything the stages know about one request, passed to every per-request hook.

    ``request`` is the httpx (or httpx2) request as the caller built it; stages that change it (routing,
    compression) replace ``request`` with a new one and keep the original in ``original``. ``json`` is the
    parsed JSON body (``None`` if there is none), parsed on first use unless a stage set it. ``state`` is a
    scratch dict for
    plugins, keyed by plugin name. ``is_async`` tells an I/O hook whether it may return an awaitable that
    the async driver will await.
    """

    __slots__ = (
        "_dialect",
        "_json",
        "_model",
        "_stages",
        "attempts",
        "cache_status",
        "cache_tier",
        "controls",
        "entry",
        "error",
        "http",
        "is_async",
        "key",
        "original",
        "request",
        "response_status",
        "started",
        "state",
        "stream",
        "transport",
    )

    #: The pipeline's stage snapshot this request runs with (an ``aurelis_core._plugins.Stages``), set when its
    #: flow starts; not a plugin's business. Typed ``Any``: naming the registry's class here would make this
    #: bottom floor import the registry, which imports it (a circle, even if only for the type checker).
    _stages: Any

    def __init__(self, request: Any, transport: Any, http: Any, is_async: bool, controls: RequestControls) -> None:
        self.request = request
        self.original = request
        self.transport = transport
        self.http = http
        self.is_async = is_async
        self.controls = controls
        self.started = time.perf_counter()
        self._json: Any = _UNSET
        self._model: Any = _UNSET
        self._dialect: Any = None
        self.key: str | None = None
        self.stream = False
        self.cache_status = CACHE_BYPASS
        self.cache_tier: str | None = None
        #: The cache entry that answered a hit (``None`` otherwise): observers read its body (e.g. its usage).
        self.entry: CacheEntry | None = None
        self.attempts: list[Attempt] = []
        self.response_status: int | None = None
        self.error: BaseException | None = None
        self.state: dict[str, Any] = {}

    @property
    def endpoint(self) -> Endpoint | None:
        """The endpoint of the latest attempt (``None`` before routing, or with no endpoints)."""
        return self.attempts[-1].endpoint if self.attempts else None

    @property
    def json(self) -> Any:
        """The request's JSON body, parsed on first use (a stage that parsed it already sets it), or ``None``.

        Numbers follow one policy whoever parses (:func:`aurelis_core.plugin.parse_json`): integral values are
        ``int``, others exact ``Decimal``.

        Lazy because most requests never need it: a cache hit whose key came from a memoised body digest
        skips parsing entirely.
        """
        value = self._json
        if value is _UNSET:
            value = None
            body = buffered_body(self.original)  # never read a streaming upload behind the caller
            if body:
                try:
                    value = parse_json(body)
                except (ValueError, RecursionError):  # not UTF-8 JSON (a DecodeError is a ValueError), too deep
                    value = None
            self._json = value
        return value

    @json.setter
    def json(self, value: Any) -> None:
        self._json = value

    @property
    def dialect(self) -> Any:
        """The :class:`~aurelis_core.plugin.Dialect` the request speaks: its endpoint's when that pins one, else
        detected from its URL (memoised per path; the key stage sets it as it reads the URL anyway)."""
        dialect = self._dialect
        if dialect is None:
            stages = getattr(self, "_stages", None)
            url = self.original.url
            path = url_parts(url)[3]
            if stages is None:
                dialect = BUILTIN.for_url(url, path)
            else:
                dialect = stages.dialects.for_url(url, path)
            self._dialect = dialect
        return dialect

    @dialect.setter
    def dialect(self, value: Any) -> None:
        self._dialect = value

    @property
    def model(self) -> str | None:
        """The ``model`` field of a JSON body, if any: a low-cardinality label for metrics."""
        model = self._model
        if model is _UNSET:
            parsed = self._json
            if parsed is not _UNSET:
                model = parsed.get("model") if isinstance(parsed, dict) else None
                model = model if isinstance(model, str) else None
            else:
                # Nobody parsed the body: find the field with a C-speed scan of the raw bytes rather than
                # parse the whole body for one label (a JSON parse here was ~half the cost of a request that
                # no plugin looks into). A "model" string inside message text is escaped (\"model\"), so it
                # cannot match; a nested object's "model" key could, which a label can live with.
                body = buffered_body(self.original)
                match = _MODEL_FIELD.search(body) if body else None
                model = match.group(1).decode("utf-8", "replace") if match is not None else None
            self._model = model
        return model  # type: ignore[no-any-return]

    @model.setter
    def model(self, value: str | None) -> None:
        self._model = value
