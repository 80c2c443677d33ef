"""``gzip`` and ``brotli``: compress request bodies on the wire, ask for compressed answers.

Enable one or both (``plugins = [..., "brotli", "gzip"]``: the first listed is tried first). For every request
that reaches the network, the plugin

- adds ``Accept-Encoding: gzip, br`` (``br`` only when brotli is installed) if the caller set none, so answers
  come back compressed and are stored compressed (the cache keeps the raw bytes; the caller's client decodes
  them on read);
- compresses the request body with its codec and sets ``Content-Encoding``, **only when it pays**: the body is
  at least ``min_size`` bytes and the compressed body is at least ``min_saving`` smaller.

Deciding costs a compression, so it is not paid on every request: for each (target, content type) -- target
being the endpoint's name, or the host when no endpoints are configured -- the first ``samples`` bodies are
compressed and measured, and the average saving decides whether later bodies are compressed (still checked one
by one: the size is known once compressed) or sent as they are without trying. A "no" is looked at again after
``resample_after`` requests, in case the traffic changed.

Servers that do not accept a compressed request body are learnt, per target and codec, and sent plain after:

- ``415 Unsupported Media Type`` to a compressed request: remembered at once, and the request is sent again,
  uncompressed, right away (once).
- ``400`` to a compressed request, while the target has not yet accepted one of ours: the body cannot be read at
  that point (the decision to retry comes before it), so the request is sent again uncompressed; if *that*
  succeeds, the 400 was about the encoding and the target is remembered. Once a target has accepted a
  compressed body, its 400s are taken as the caller's own errors and passed through.

Both go through the pipeline's attempt loop: this plugin's ``aurelis_retry`` answers ``0`` (retry now) for
exactly those cases and ``None`` otherwise, so a general retry policy decides everything else. It is marked
``tryfirst`` because ``aurelis_retry`` is first-answer-wins: a general policy listed earlier would otherwise
answer for the 415 with its own backoff, or give up on it. The plain copy is the caller's original request, whose
body is in memory (only such bodies are compressed); like every re-send, it is never made for a request signed
for one attempt (the pipeline refuses it before asking this hook).

lz4 is a codec for values at rest (the cache tiers), not an HTTP content-coding: enabling an ``lz4`` plugin is
an error that says so.
"""

from __future__ import annotations

import logging
from typing import Any

import attrs
import cachetools

from aurelis_core.plugin import (
    Attempt,
    ConfigError,
    RequestContext,
    as_tuple,
    buffered_body,
    copy_request,
    each,
    hookimpl,
    in_range,
    label,
    non_negative_int,
    positive_int,
    signature_scheme,
)

from .codecs import Codec, get_codec, wire_codecs

__all__ = ["BrotliCompression", "BrotliConfig", "CompressConfig", "GzipCompression", "GzipConfig", "Lz4AtRestOnly"]

logger = logging.getLogger("aurelis.compress")

#: How many (target, content type) decisions are remembered; least recently used ones are forgotten first.
MAX_DECISIONS = 4096


@attrs.frozen
class CompressConfig:
    #: Endpoint names or hosts (``host`` or ``host:port``) whose requests are compressed; empty: all.
    endpoints: tuple[str, ...] = attrs.field(default=(), converter=as_tuple, validator=each(label))
    #: Bodies smaller than this many bytes are sent as they are (compressing them rarely pays).
    min_size: int = attrs.field(default=1024, validator=non_negative_int)
    #: The fraction of the body compression must save (0.1: at least 10% smaller), else send it plain.
    min_saving: float = attrs.field(default=0.10, validator=in_range(0, 1, hi_open=True))
    #: Bodies compressed and measured per (target, content type) before deciding.
    samples: int = attrs.field(default=3, validator=positive_int)
    #: A "does not pay" decision is sampled again after this many requests.
    resample_after: int = attrs.field(default=1000, validator=positive_int)
    #: The codec's level (gzip 1-9, brotli 0-11: each plugin's own class below checks its range); default: the
    #: codec registry's choice.
    level: int | None = None
    #: Add ``Accept-Encoding`` to requests that have none.
    accept_encoding: bool = True


@attrs.frozen
class GzipConfig(CompressConfig):
    """Options of ``gzip``: :class:`CompressConfig`'s, with gzip's levels."""

    level: int | None = attrs.field(default=None, validator=in_range(1, 9, integer=True))


@attrs.frozen
class BrotliConfig(CompressConfig):
    """Options of ``brotli``: :class:`CompressConfig`'s, with brotli's quality levels."""

    level: int | None = attrs.field(default=None, validator=in_range(0, 11, integer=True))


class _Decision:
    """What was learnt about compressing one (target, content type)."""

    __slots__ = ("pays", "samples", "saved", "skipped")

    def __init__(self) -> None:
        self.samples = 0
        self.saved = 0.0
        self.pays: bool | None = None
        self.skipped = 0


class _PerRequest:
    """This plugin's notes on one request, in ``ctx.state[plugin name]``."""

    __slots__ = ("compressed_attempt", "plain_after", "suspect", "target")

    def __init__(self) -> None:
        self.compressed_attempt = 0
        self.target = ""
        #: Set when this request is to be sent plain from now on (after a 415/400 to a compressed body).
        self.plain_after = False
        #: A 400 to our compressed body: if the plain retry succeeds, the target rejects the encoding.
        self.suspect = False


class _WireCompression:
    """Shared by the ``gzip`` and ``brotli`` plugins; ``codec_name`` says which codec a plugin uses."""

    name: str
    codec_name: str
    Config: type[CompressConfig] = CompressConfig

    def __init__(self, config: CompressConfig, pipeline: Any) -> None:
        self.config = config
        self.stats = pipeline.stats
        try:
            self.codec: Codec = get_codec(self.codec_name, config.level)
        except ImportError as exc:
            raise ConfigError(f"plugin {self.name!r}: {exc}") from None
        token = self.codec.http_token
        if token is None:  # a codec for values at rest only (lz4): no server would decode it
            raise ConfigError(f"plugin {self.name!r}: codec {self.codec_name!r} cannot be sent on the wire")
        self.token = token.encode()
        self.accept_encoding = ", ".join(
            {"gzip": "gzip", "brotli": "br"}[n] for n in reversed(wire_codecs())
        ).encode()
        self._only = frozenset(config.endpoints)
        self._decisions: cachetools.LRUCache[tuple[str, bytes], _Decision] = cachetools.LRUCache(MAX_DECISIONS)
        #: Targets that refused our encoding / accepted it at least once.
        self.rejected: set[str] = set()
        self.accepted: set[str] = set()

    def _target(self, ctx: RequestContext) -> str:
        endpoint = ctx.endpoint
        if endpoint is not None:
            return endpoint.name
        return str(ctx.request.url.netloc.decode("ascii"))

    def _wanted(self, target: str, request: Any) -> bool:
        only = self._only
        return not only or target in only or request.url.host in only

    @hookimpl
    def aurelis_compress(self, ctx: RequestContext, attempt: Attempt) -> None:
        request = ctx.request
        raw = request.headers.raw
        add_accept = self.config.accept_encoding
        for name, _ in raw:
            lname = name.lower()
            if lname == b"content-encoding":
                # The caller (or a plugin listed before this one) already encoded the body.
                return
            if lname == b"accept-encoding":
                add_accept = False
        body = self._compressed_body(ctx, request)
        if body is None and not add_accept:
            return
        headers = [(k, v) for k, v in raw if body is None or k.lower() != b"content-length"]
        if add_accept:
            headers.append((b"Accept-Encoding", self.accept_encoding))
        if body is None:
            new = copy_request(ctx.http, request, request.url, headers)
        else:
            headers.append((b"Content-Encoding", self.token))
            new = ctx.http.Request(
                request.method, request.url, headers=headers, content=body, extensions=request.extensions
            )
        ctx.request = new

    def _compressed_body(self, ctx: RequestContext, request: Any) -> bytes | None:
        """The compressed body if compressing this request pays, else ``None``."""
        content = buffered_body(request)
        # A body still held as a stream (an upload, a generator) is never read here: it passes through. A signed
        # request (SigV4, SharedKey...) is sent as it was signed: its signature covers the body's bytes.
        if content is None or len(content) < self.config.min_size or signature_scheme(request) is not None:
            return None
        target = self._target(ctx)
        if target in self.rejected or not self._wanted(target, request):
            return None
        notes = ctx.state.get(self.name)
        if notes is not None and notes.plain_after:
            return None
        key = (target, (request.headers.get("content-type") or "").partition(";")[0].strip().encode())
        decision = self._decisions.get(key)
        if decision is None:
            decision = self._decisions[key] = _Decision()
        if decision.pays is False:
            decision.skipped += 1
            if decision.skipped < self.config.resample_after:
                return None
            decision = self._decisions[key] = _Decision()  # look again: start a fresh sample
        compressed = self.codec.compress(content)
        saving = 1.0 - len(compressed) / len(content)
        if decision.pays is None:
            decision.samples += 1
            decision.saved += saving
            if decision.samples >= self.config.samples:
                decision.pays = decision.saved / decision.samples > self.config.min_saving
        if saving <= self.config.min_saving:
            return None
        if notes is None:
            notes = ctx.state[self.name] = _PerRequest()
        notes.compressed_attempt = len(ctx.attempts)
        notes.target = target
        return compressed

    @hookimpl(tryfirst=True)
    def aurelis_retry(self, ctx: RequestContext, attempt: Attempt) -> float | None:
        notes: _PerRequest | None = ctx.state.get(self.name)
        if notes is None or notes.compressed_attempt != attempt.number or notes.plain_after:
            return None
        status = attempt.status_code
        if status == 415:
            self.rejected.add(notes.target)
        elif status == 400 and notes.target not in self.accepted:
            notes.suspect = True
        else:
            return None
        notes.plain_after = True
        self.stats.counters["compress_fallbacks"] += 1
        logger.debug("fallback: %s answered %d to a %s body; sending it again uncompressed", notes.target, status,
                     self.codec_name)
        return 0.0

    @hookimpl
    def aurelis_attempt_end(self, ctx: RequestContext, attempt: Attempt) -> None:
        notes: _PerRequest | None = ctx.state.get(self.name)
        if notes is None or attempt.status_code is None or attempt.status_code >= 400:
            return
        if notes.compressed_attempt == attempt.number:
            self.accepted.add(notes.target)
        elif notes.suspect:
            # The same request, sent plain, succeeded where the compressed one got a 400.
            self.rejected.add(notes.target)


class GzipCompression(_WireCompression):
    """The ``gzip`` plugin: ``Content-Encoding: gzip`` request bodies."""

    name = "gzip"
    codec_name = "gzip"
    Config = GzipConfig


class BrotliCompression(_WireCompression):
    """The ``brotli`` plugin: ``Content-Encoding: br`` request bodies (extra ``compression``)."""

    name = "brotli"
    codec_name = "brotli"
    Config = BrotliConfig


class Lz4AtRestOnly:
    """``lz4`` is not an HTTP content-coding; this entry only turns a likely mistake into a clear error."""

    name = "lz4"

    def __init__(self, config: None, pipeline: Any) -> None:
        raise ConfigError(
            "plugin 'lz4': lz4 is a codec for cached values at rest, not an HTTP content-coding, so it is not a "
            "request stage; cache tiers compress with it through aurelis_plugins.codecs.get_codec('lz4'). "
            "For compressed requests on the wire enable 'gzip' or 'brotli'."
        )
