"""A simulated OpenAI-compatible upstream, written as a bare ASGI application.

`SimulatedUpstream` answers the three endpoints that Aurelis cares about:

* ``POST .../chat/completions`` (plain JSON and ``"stream": true`` SSE),
* ``POST .../embeddings``,
* ``GET  .../models``,

matching on the *suffix* of the path so that both ``/v1/chat/completions`` and
``/chat/completions`` work, whatever ``base_url`` a client was configured with.

Answers are deterministic functions of the request (same prompt, same text), with
one deliberate exception: every chat completion carries a fresh serial number in its
``id`` (``chatcmpl-sim-1``, ``chatcmpl-sim-2``, ...).  That is what lets a test tell an
answer that really came from the upstream apart from one replayed by a cache.

Everything that makes a real provider awkward -- latency, jitter, random failures,
"the next N calls fail", rate limits with the provider's headers, streams that die
half-way -- is driven by a mutable `Behavior` object that a test may change at any
time, including while the server runs in another thread.  Out-of-process users (a
benchmark driving the simulator over the network) get the same control through
``GET /_sim/stats``, ``POST /_sim/behavior`` and ``POST /_sim/reset``.

Every API request is recorded *as it arrived on the wire* (raw body bytes, header
list), so a test can prove, for instance, that a client really gzip-compressed its
request body rather than merely setting a header.

The app is also used as a benchmark upstream, so the hot path avoids logging,
avoids sleeping when no latency is configured, and only takes a lock for the few
counters it must share with the test thread.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import gzip
import hashlib
import importlib
import json
import logging
import math
import random
import struct
import threading
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any, Final

import attrs

from ._providers import ProviderRoutes, dialect_of, failure_body, rate_limit_headers
from ._wire import BadRequest as _BadRequest
from ._wire import SimulatedConnectionDrop as _SimulatedConnectionDrop
from ._wire import estimate_tokens as estimate_tokens
from ._wire import send_json as _send_json
from ._wire import send_raw as _send_raw

# brotli is an optional extra; without it ``Content-Encoding: br`` gets a 415.  Imported
# dynamically because the package ships no type information.
_brotli: Any
try:
    _brotli = importlib.import_module("brotli")
except ImportError:  # pragma: no cover - depends on the installed extras
    _brotli = None

__all__ = [
    "ASGIApp",
    "Behavior",
    "RecordedRequest",
    "SimulatedUpstream",
    "estimate_tokens",
]

# --------------------------------------------------------------------------- ASGI types
# Spelled out here rather than imported from a server package: the simulator must not
# depend on which ASGI server (or test transport) ends up driving it.
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Models listed by ``GET /models``.  Chat requests may name any model: it is echoed.
DEFAULT_MODELS: Final[tuple[str, ...]] = ("sim-chat", "sim-chat-large", "sim-embed")

_RATE_WINDOW_SECONDS: Final = 60.0
_CONTROL_PREFIX: Final = "/_sim/"


# --------------------------------------------------------------------------- behaviour


def _reseed(instance: Behavior, _attribute: attrs.Attribute[Any], value: int | None) -> int | None:
    # on_setattr hook: assigning ``behavior.seed = 7`` from a test must also restart the
    # random stream, otherwise the assignment would silently not do what it says.
    instance._rng.seed(value)
    return value


@attrs.define(slots=True)
class Behavior:
    """Mutable knobs that shape how the simulated upstream answers.

    Change attributes directly (``up.behavior.latency = 0.05``) or several at once with
    `update`.  Plain attribute assignment is atomic in CPython, so changing a knob from
    the test thread while the server thread answers requests is safe; a request simply
    sees either the old or the new value.

    Order in which an API request is handled: the request is recorded; a malformed body, or
    a prompt longer than ``context_window``, gets ``400``; ``status_override`` answers every
    request with that status;
    ``max_inflight``, ``rpm`` and ``tpm`` overflow get an immediate ``429``; ``fail_next`` then ``failure_rate`` inject
    ``failure_status``; otherwise the request succeeds.  Base ``latency``/``jitter``
    applies to successes and injected failures, ``latency_per_token`` only to successes.
    """

    #: Seconds to wait before answering (time to first byte for streams).
    latency: float = 0.0
    #: Extra seconds per completion token (spread over chunks when streaming).
    latency_per_token: float = 0.0
    #: Up to this many extra seconds, drawn uniformly from the seeded RNG.
    jitter: float = 0.0
    #: Probability in [0, 1] that a request fails with ``failure_status``.
    failure_rate: float = 0.0
    #: Status used for injected failures (``fail_next``, ``failure_rate``); 529 is Anthropic's overload.
    failure_status: int = 500
    #: Seconds an injected failure asks the client to wait, sent as ``retry-after`` (whole seconds, rounded up)
    #: and ``retry-after-ms`` (as Azure and OpenAI do); ``None``: neither header.
    failure_retry_after: float | None = None
    #: The next N API requests fail with ``failure_status`` (decremented per failure).
    fail_next: int = 0
    #: Requests per minute; ``None`` disables the limit and its headers.
    rpm: int | None = None
    #: Tokens (prompt + completion) per minute; ``None`` disables the limit.
    tpm: int | None = None
    #: Send this many SSE frames, then drop the connection without ``[DONE]``.
    truncate_stream_after: int | None = None
    #: Seconds to wait between SSE frames (on top of ``latency_per_token``).
    chunk_delay: float = 0.0
    #: Words per SSE content chunk.
    chunk_tokens: int = 1
    #: When true and the request sets ``max_tokens``, pad the answer up to that many words
    #: (handy for benchmarks that need large responses from small prompts).
    pad_to_max_tokens: bool = False
    #: Length of embedding vectors when the request does not ask for ``dimensions``.
    embedding_dim: int = 16
    #: If set, every API request is answered with this status and an error body.
    status_override: int | None = None
    #: Prompt tokens a chat request may hold: a longer prompt is answered ``400`` with OpenAI's
    #: ``context_length_exceeded`` error (``None``: no limit).
    context_window: int | None = None
    #: Extra seconds of latency per API request in flight (this one included): an upstream that slows down
    #: as it is loaded, for adaptive concurrency tests.
    latency_per_inflight: float = 0.0
    #: Answer ``429`` to an API request that would make more than this many in flight (``None``: no limit).
    max_inflight: int | None = None
    #: Extra headers added to every API response.
    headers: dict[str, str] = attrs.field(factory=dict)
    #: Request ``Content-Encoding`` tokens (e.g. ``("gzip", "br")``) answered with ``415``, like a server
    #: that does not accept compressed request bodies.
    reject_encodings: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    #: Seed of the simulator's own RNG (failures, jitter); ``None`` = OS entropy.
    seed: int | None = attrs.field(default=0, on_setattr=_reseed)
    _rng: random.Random = attrs.field(init=False, factory=random.Random, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        self._rng.seed(self.seed)

    @property
    def rng(self) -> random.Random:
        """The seeded random stream used for failures and jitter."""
        return self._rng

    def update(self, **changes: Any) -> None:
        """Set several knobs at once; unknown names raise `AttributeError` before any change."""
        known = _public_field_names()
        unknown = sorted(set(changes) - known)
        if unknown:
            raise AttributeError(f"unknown Behavior field(s): {', '.join(unknown)}")
        for name, value in changes.items():
            setattr(self, name, value)

    def copy_from(self, other: Behavior) -> None:
        """Overwrite every knob with ``other``'s, keeping this object's identity.

        Tests often hold on to ``up.behavior``; resetting in place means such
        references keep pointing at the live configuration.
        """
        for name in _public_field_names():
            value = getattr(other, name)
            setattr(self, name, dict(value) if isinstance(value, dict) else value)

    def as_dict(self) -> dict[str, Any]:
        """The public knobs as a JSON-ready dict (used by ``GET /_sim/stats``)."""
        return {name: getattr(self, name) for name in sorted(_public_field_names())}


def _public_field_names() -> frozenset[str]:
    return frozenset(f.name for f in attrs.fields(Behavior) if f.init)


# --------------------------------------------------------------------------- recording


@attrs.frozen(slots=True)
class RecordedRequest:
    """One API request exactly as the simulator received it."""

    method: str
    #: Path without the query string, e.g. ``/v1/chat/completions``.
    path: str
    query_string: bytes
    #: Header list in wire order, names lower-cased (ASGI normalises them).
    headers: list[tuple[str, str]]
    #: Body bytes as received -- still compressed if ``Content-Encoding`` says so.
    body: bytes
    #: ``time.time()`` when the request body was fully read.
    time: float

    def header(self, name: str) -> str | None:
        """First value of header ``name`` (case-insensitive), or ``None``."""
        lname = name.lower()
        for key, value in self.headers:
            if key == lname:
                return value
        return None

    @property
    def decoded_body(self) -> bytes:
        """The body with any ``Content-Encoding`` undone (raises `ValueError` if it cannot be)."""
        return _decode_body(self.body, self.header("content-encoding"))

    def json(self) -> Any:
        """The decoded body parsed as JSON."""
        return json.loads(self.decoded_body)


class _UnsupportedEncodingError(ValueError):
    pass


def _decode_body(body: bytes, encoding: str | None) -> bytes:
    if not encoding:
        return body
    # Content-Encoding may list several codings, applied in order; undo them in reverse.
    for coding in reversed([c.strip().lower() for c in encoding.split(",") if c.strip()]):
        if coding == "identity":
            continue
        if coding in ("gzip", "x-gzip"):
            body = gzip.decompress(body)
        elif coding == "deflate":
            body = zlib.decompress(body)
        elif coding == "br":
            if _brotli is None:
                raise _UnsupportedEncodingError("brotli is not installed in the simulator")
            body = _brotli.decompress(body)
        else:
            raise _UnsupportedEncodingError(f"unsupported content-encoding {coding!r}")
    return body


# --------------------------------------------------------------------------- helpers


class _DropLogFilter(logging.Filter):
    # The server logs every exception escaping the app; a deliberate connection drop is
    # not worth a traceback in the test output, so exactly that exception is filtered.
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, _SimulatedConnectionDrop)


_drop_filter_lock = threading.Lock()
_drop_filter_installed = False


def _install_drop_log_filter() -> None:
    global _drop_filter_installed
    with _drop_filter_lock:
        if not _drop_filter_installed:
            logging.getLogger("uvicorn.error").addFilter(_DropLogFilter())
            _drop_filter_installed = True


def _error_body(message: str, err_type: str, code: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": err_type, "param": None, "code": code}}).encode()


_FAILURE_TYPES: Final[Mapping[int, tuple[str, str]]] = {
    400: ("invalid_request_error", "bad_request"),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "permission_denied"),
    404: ("invalid_request_error", "not_found"),
    408: ("timeout", "timeout"),
    409: ("invalid_request_error", "conflict"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", "internal_error"),
    502: ("server_error", "bad_gateway"),
    503: ("server_error", "service_unavailable"),
    504: ("server_error", "gateway_timeout"),
}


def _failure_body(status: int) -> bytes:
    err_type, code = _FAILURE_TYPES.get(status, ("server_error", "simulated_failure"))
    return _error_body(f"Simulated upstream failure (status {status}).", err_type, code)


def _dialect_failure(dialect: str, status: int) -> bytes:
    message = f"Simulated upstream failure (status {status})."
    if dialect == "anthropic" and status == 529:
        message = "Overloaded"
    return failure_body(dialect, status, message, _failure_body(status))


def _format_duration(seconds: float) -> str:
    # OpenAI's x-ratelimit-reset-* headers use Go-style durations: "20ms", "1.5s", "6m0s".
    seconds = max(seconds, 0.0)
    if seconds < 1.0:
        return f"{round(seconds * 1000)}ms"
    minutes, rest = divmod(seconds, 60.0)
    rest_s = f"{rest:.3f}".rstrip("0").rstrip(".")
    return f"{int(minutes)}m{rest_s}s" if minutes else f"{rest_s}s"


def _message_text(content: Any) -> str:
    # ``content`` is either a string or a list of typed parts (text, image_url, ...).
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        return " ".join(str(p) for p in parts)
    return ""


def _embedding_vector(item: Any, dim: int) -> list[float]:
    # Deterministic per input: a hash seeds a private RNG, then the vector is L2-normalised
    # so cosine similarity behaves like it would with a real model's unit vectors.
    digest = hashlib.blake2b(json.dumps(item, sort_keys=True).encode(), digest_size=8).digest()
    rng = random.Random(int.from_bytes(digest, "big"))
    vec = [rng.random() * 2.0 - 1.0 for _ in range(dim)]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]


@attrs.define(slots=True)
class _ChatPlan:
    """Everything a chat answer needs, computed once before admission control."""

    model: str
    content: str
    words: list[str]
    finish_reason: str
    prompt_tokens: int
    stream: bool
    include_usage: bool

    @property
    def completion_tokens(self) -> int:
        return len(self.words)


# --------------------------------------------------------------------------- the app


class SimulatedUpstream(ProviderRoutes):
    """An ASGI app behaving like an OpenAI-compatible API, for tests and benchmarks; it also speaks OpenAI's
    Responses API, Anthropic's Messages, Gemini's ``generateContent`` and Azure OpenAI's deployment paths (see
    :mod:`._providers`).

    Serve it with `aurelis_core.testing.server.serve` (a real socket, so compression,
    connection drops and streaming are exercised for real), or mount it into an
    in-process ASGI transport.

    >>> app = SimulatedUpstream(latency=0.01)          # knobs as keyword arguments
    >>> app.behavior.fail_next = 2                      # ...or changed at any time
    """

    #: The live knobs; mutate freely.
    behavior: Behavior

    def __init__(
        self, *, max_records: int = 10_000, models: Iterable[str] = DEFAULT_MODELS, **behavior: Any
    ) -> None:
        self.behavior = Behavior()
        self.behavior.update(**behavior)
        # reset() restores the knobs the upstream was *created* with, so a fixture that
        # builds an upstream with, say, ``rpm=10`` keeps that between tests.
        self._initial_behavior = Behavior()
        self._initial_behavior.copy_from(self.behavior)
        self.models: tuple[str, ...] = tuple(models)
        self._lock = threading.Lock()
        self._records: collections.deque[RecordedRequest] = collections.deque(maxlen=max_records)
        self._counts: collections.Counter[str] = collections.Counter()
        self._serial = 0
        self._request_seq = 0
        self._window_start = 0.0
        self._window_requests = 0
        self._window_tokens = 0
        self._inflight = 0
        _install_drop_log_filter()

    # ----------------------------------------------------------------- test-facing API

    @property
    def requests(self) -> list[RecordedRequest]:
        """Snapshot of recorded API requests, oldest first (bounded by ``max_records``)."""
        with self._lock:
            return list(self._records)

    @property
    def serial(self) -> int:
        """Number of chat completions generated since the last reset."""
        return self._serial

    def count(self, path_suffix: str | None = None) -> int:
        """API requests received (successful or not); only paths ending in ``path_suffix`` if given.

        Control requests (``/_sim/...``) are never counted or recorded.
        """
        with self._lock:
            if path_suffix is None:
                return sum(self._counts.values())
            return sum(n for path, n in self._counts.items() if path.endswith(path_suffix))

    def stats(self) -> dict[str, Any]:
        """Counters as a JSON-ready dict, the same payload as ``GET /_sim/stats``."""
        with self._lock:
            by_path = dict(self._counts)
            return {
                "total": sum(by_path.values()),
                "by_path": by_path,
                "serial": self._serial,
                "recorded": len(self._records),
                "behavior": self.behavior.as_dict(),
            }

    def reset(self) -> None:
        """Forget records, counters, serial and rate windows; restore the initial knobs."""
        with self._lock:
            self._records.clear()
            self._counts.clear()
            self._serial = 0
            self._request_seq = 0
            self._window_start = 0.0
            self._window_requests = 0
            self._window_tokens = 0
        # Assigning ``seed`` (part of copy_from) reseeds, so the random stream restarts too.
        self.behavior.copy_from(self._initial_behavior)

    # ----------------------------------------------------------------- ASGI entry point

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            # lifespan / websocket: nothing to set up, and no websocket support.
            if scope["type"] == "lifespan":
                await self._lifespan(receive, send)
            return
        path: str = scope["path"]
        method: str = scope["method"]
        body = await self._read_body(receive)
        if path.startswith(_CONTROL_PREFIX):
            await self._control(method, path, body, send)
            return
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        record = RecordedRequest(
            method=method,
            path=path,
            query_string=scope.get("query_string", b""),
            headers=headers,
            body=body,
            time=time.time(),
        )
        with self._lock:
            self._records.append(record)
            self._counts[path] += 1
            self._request_seq += 1
            request_id = f"req-sim-{self._request_seq}"
            self._inflight += 1
        extra = [(b"x-request-id", request_id.encode())]
        extra.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in self.behavior.headers.items())

        try:
            if path.endswith("/responses"):
                self._require(method, "POST")
                await self._responses(record, extra, send)
            elif path.endswith("/v1/messages"):
                self._require(method, "POST")
                await self._anthropic(record, extra, send)
            elif path.endswith((":generateContent", ":streamGenerateContent")):
                self._require(method, "POST")
                await self._gemini(record, extra, send)
            elif path.endswith("/chat/completions"):
                self._require(method, "POST")
                await self._chat(record, extra, send)
            elif path.endswith("/embeddings"):
                self._require(method, "POST")
                await self._embeddings(record, extra, send)
            elif path.endswith("/models"):
                self._require(method, "GET")
                if not await self._admit(0, extra, send):
                    return
                await self._delay(0)
                data = [
                    {"id": m, "object": "model", "created": 0, "owned_by": "simulator"} for m in self.models
                ]
                await _send_json(send, 200, {"object": "list", "data": data}, extra)
            else:
                raise _BadRequest(404, f"Unknown path {path}", "not_found")
        except _BadRequest as exc:
            err_type = "invalid_request_error"
            body = failure_body(dialect_of(path), exc.status, exc.message, _error_body(exc.message, err_type, exc.code))
            await _send_raw(send, exc.status, body, extra)
        finally:
            with self._lock:
                self._inflight -= 1

    # ----------------------------------------------------------------- endpoints

    async def _chat(self, record: RecordedRequest, extra: list[tuple[bytes, bytes]], send: Send) -> None:
        payload = self._parse_json(record)
        plan = self._plan_chat(payload)
        azure = record.path.startswith("/openai/deployments/")
        if azure:  # Azure answers with the deployment's name
            plan.model = record.path.split("/")[3]
        window = self.behavior.context_window
        if window is not None and plan.prompt_tokens > window:
            raise _BadRequest(
                400,
                f"This model's maximum context length is {window} tokens. However, your messages resulted in "
                f"{plan.prompt_tokens} tokens. Please reduce the length of the messages.",
                "context_length_exceeded",
            )
        if not await self._admit(plan.prompt_tokens + plan.completion_tokens, extra, send):
            return
        with self._lock:
            self._serial += 1
            serial = self._serial
        completion_id = f"chatcmpl-sim-{serial}"
        created = int(time.time())
        usage = {
            "prompt_tokens": plan.prompt_tokens,
            "completion_tokens": plan.completion_tokens,
            "total_tokens": plan.prompt_tokens + plan.completion_tokens,
        }
        if not plan.stream:
            await self._delay(plan.completion_tokens)
            body = {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": plan.model,
                "system_fingerprint": "fp_sim",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": plan.content, "refusal": None},
                        "logprobs": None,
                        "finish_reason": plan.finish_reason,
                    }
                ],
                "usage": usage,
            }
            await _send_json(send, 200, body, extra)
            return
        await self._stream_chat(plan, completion_id, created, usage, extra, send, azure)

    async def _stream_chat(
        self,
        plan: _ChatPlan,
        completion_id: str,
        created: int,
        usage: dict[str, int],
        extra: list[tuple[bytes, bytes]],
        send: Send,
        azure: bool = False,
    ) -> None:
        behavior = self.behavior
        await self._delay(0)  # time to first byte; per-token cost is spread over chunks

        def frame(delta: dict[str, Any], finish: str | None) -> bytes:
            chunk: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": plan.model,
                "system_fingerprint": "fp_sim",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
            if plan.include_usage:
                chunk["usage"] = None  # as OpenAI does: usage only on the trailing chunk
            return b"data: " + json.dumps(chunk).encode() + b"\n\n"

        step = max(1, behavior.chunk_tokens)
        frames: list[tuple[bytes, int]] = [(frame({"role": "assistant", "content": ""}, None), 0)]
        if azure:
            # Azure opens with the prompt's content-filter verdicts, in a chunk without choices.
            verdict = {"hate": {"filtered": False, "severity": "safe"}}
            filtered = {"prompt_index": 0, "content_filter_results": verdict}
            first = {"id": "", "object": "", "created": 0, "model": "", "choices": [],
                     "prompt_filter_results": [filtered]}
            frames.insert(0, (b"data: " + json.dumps(first).encode() + b"\n\n", 0))
        for start in range(0, len(plan.words), step):
            group = plan.words[start : start + step]
            # Later pieces keep their leading space so that joining the deltas rebuilds the text.
            text = " ".join(group) if start == 0 else " " + " ".join(group)
            frames.append((frame({"content": text}, None), len(group)))
        frames.append((frame({}, plan.finish_reason), 0))
        if plan.include_usage:
            usage_chunk = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": plan.model,
                "system_fingerprint": "fp_sim",
                "choices": [],
                "usage": usage,
            }
            frames.append((b"data: " + json.dumps(usage_chunk).encode() + b"\n\n", 0))
        frames.append((b"data: [DONE]\n\n", 0))

        await self._send_frames(frames, extra, send)

    async def _embeddings(
        self, record: RecordedRequest, extra: list[tuple[bytes, bytes]], send: Send
    ) -> None:
        payload = self._parse_json(record)
        raw_input = payload.get("input")
        if isinstance(raw_input, str) or (
            isinstance(raw_input, list) and raw_input and all(isinstance(t, int) for t in raw_input)
        ):
            items: list[Any] = [raw_input]  # one string, or one pre-tokenised input
        elif isinstance(raw_input, list) and raw_input:
            items = list(raw_input)
        else:
            raise _BadRequest(400, "'input' must be a non-empty string or array", "invalid_input")
        dim = payload.get("dimensions") or self.behavior.embedding_dim
        if not isinstance(dim, int) or dim <= 0:
            raise _BadRequest(400, "'dimensions' must be a positive integer", "invalid_dimensions")
        tokens = sum(estimate_tokens(i) if isinstance(i, str) else len(i) for i in items)
        if not await self._admit(tokens, extra, send):
            return
        await self._delay(0)
        as_base64 = payload.get("encoding_format") == "base64"
        data = []
        for index, item in enumerate(items):
            vec = _embedding_vector(item, dim)
            embedding: list[float] | str
            if as_base64:
                # The openai SDK asks for base64 by default: little-endian float32s.
                embedding = base64.b64encode(struct.pack(f"<{dim}f", *vec)).decode()
            else:
                embedding = vec
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        body = {
            "object": "list",
            "data": data,
            "model": payload.get("model", "sim-embed"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        await _send_json(send, 200, body, extra)

    # ----------------------------------------------------------------- request handling

    @staticmethod
    def _require(method: str, expected: str) -> None:
        if method != expected:
            raise _BadRequest(405, f"Method {method} not allowed; use {expected}", "method_not_allowed")

    def _parse_json(self, record: RecordedRequest) -> dict[str, Any]:
        encoding = (record.header("content-encoding") or "").lower()
        rejected = self.behavior.reject_encodings
        if rejected and any(c.strip() in rejected for c in encoding.split(",")):
            raise _BadRequest(415, f"Unsupported content-encoding {encoding!r}", "unsupported_content_encoding")
        try:
            raw = record.decoded_body
        except _UnsupportedEncodingError as exc:
            raise _BadRequest(415, str(exc), "unsupported_content_encoding") from None
        except Exception as exc:  # gzip/zlib/brotli each raise their own error types
            raise _BadRequest(400, f"Could not decode request body: {exc}", "invalid_body") from None
        try:
            payload = json.loads(raw)
        except (ValueError, RecursionError):  # not JSON, or nested too deeply for the parser
            raise _BadRequest(
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
                "using your HTTP library correctly.)",
                "invalid_json",
            ) from None
        if not isinstance(payload, dict):
            raise _BadRequest(400, "The request body must be a JSON object.", "invalid_json")
        return payload

    def _plan_chat(self, payload: dict[str, Any]) -> _ChatPlan:
        messages = payload.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _BadRequest(400, "'messages' must be a non-empty array", "invalid_messages")
        last_user = ""
        prompt_tokens = 0
        for message in messages:
            if not isinstance(message, dict):
                raise _BadRequest(400, "each message must be an object", "invalid_messages")
            text = _message_text(message.get("content"))
            # +1 per message stands in for the role/formatting overhead real models charge.
            prompt_tokens += estimate_tokens(text) + 1
            if message.get("role") == "user":
                last_user = text
        words = ("echo: " + last_user).split()
        max_tokens = payload.get("max_completion_tokens", payload.get("max_tokens"))
        finish_reason = "stop"
        if isinstance(max_tokens, int) and max_tokens > 0:
            if len(words) > max_tokens:
                words = words[:max_tokens]
                finish_reason = "length"
            elif self.behavior.pad_to_max_tokens:
                words = words + [f"w{i}" for i in range(max_tokens - len(words))]
        stream_options = payload.get("stream_options") or {}
        return _ChatPlan(
            model=str(payload.get("model", "sim-chat")),
            content=" ".join(words),
            words=words,
            finish_reason=finish_reason,
            prompt_tokens=prompt_tokens,
            stream=bool(payload.get("stream")),
            include_usage=bool(isinstance(stream_options, dict) and stream_options.get("include_usage")),
        )

    async def _admit(self, tokens: int, extra: list[tuple[bytes, bytes]], send: Send, dialect: str = "openai") -> bool:
        """Apply override, rate limits and injected failures; answer and return False if refused.

        On success the rate-limit headers are appended to ``extra`` for the real answer. Error bodies and
        rate-limit headers are those of ``dialect`` (``openai``, ``anthropic``, ``gemini``).
        """
        behavior = self.behavior
        if behavior.status_override is not None:
            status = behavior.status_override
            await _send_raw(send, status, _dialect_failure(dialect, status), extra)
            return False
        if behavior.max_inflight is not None and self._inflight > behavior.max_inflight:
            message = "Too many concurrent requests (simulated)."
            body = failure_body(dialect, 429, message, _error_body(message, "requests", "rate_limit_exceeded"))
            await _send_raw(send, 429, body, extra)
            return False
        rpm, tpm = behavior.rpm, behavior.tpm
        if rpm is not None or tpm is not None:
            refused, limit_headers = self._take_rate(tokens, rpm, tpm, dialect)
            extra.extend(limit_headers)
            if refused is not None:
                kind, wait = refused
                retry = [
                    (b"retry-after", str(max(1, math.ceil(wait))).encode()),
                    (b"retry-after-ms", str(max(1, math.ceil(wait * 1000))).encode()),
                ]
                message = (
                    f"Rate limit reached for {kind} per min (simulated). Please try again in "
                    f"{_format_duration(wait)}."
                )
                body = failure_body(dialect, 429, message, _error_body(message, kind, "rate_limit_exceeded"))
                await _send_raw(send, 429, body, extra + retry)
                return False
        fail = False
        if behavior.fail_next > 0:
            with self._lock:
                # Re-check under the lock: two concurrent requests must not both consume
                # the last pending failure.
                if behavior.fail_next > 0:
                    behavior.fail_next -= 1
                    fail = True
        if not fail and behavior.failure_rate > 0 and behavior.rng.random() < behavior.failure_rate:
            fail = True
        if fail:
            await self._delay(0)
            status = behavior.failure_status
            asked = behavior.failure_retry_after
            if asked is not None:
                extra = [
                    *extra,
                    (b"retry-after", str(math.ceil(asked)).encode()),
                    (b"retry-after-ms", str(round(asked * 1000)).encode()),
                ]
            await _send_raw(send, status, _dialect_failure(dialect, status), extra)
            return False
        return True

    def _take_rate(
        self, tokens: int, rpm: int | None, tpm: int | None, dialect: str = "openai"
    ) -> tuple[tuple[str, float] | None, list[tuple[bytes, bytes]]]:
        # A fixed one-minute window starting at the first request: crude, but predictable,
        # which matters more for tests than modelling a provider's token bucket.
        now = time.monotonic()
        with self._lock:
            if not self._window_start or now - self._window_start >= _RATE_WINDOW_SECONDS:
                self._window_start = now
                self._window_requests = 0
                self._window_tokens = 0
            reset_in = self._window_start + _RATE_WINDOW_SECONDS - now
            refused: tuple[str, float] | None = None
            if rpm is not None and self._window_requests + 1 > rpm:
                refused = ("requests", reset_in)
            elif tpm is not None and self._window_tokens + tokens > tpm:
                refused = ("tokens", reset_in)
            else:
                # Only admitted requests consume quota, as with real providers.
                self._window_requests += 1
                self._window_tokens += tokens
            used_requests, used_tokens = self._window_requests, self._window_tokens
        headers: list[tuple[bytes, bytes]] = []
        reset = _format_duration(reset_in).encode()
        if rpm is not None:
            headers += [
                (b"x-ratelimit-limit-requests", str(rpm).encode()),
                (b"x-ratelimit-remaining-requests", str(max(0, rpm - used_requests)).encode()),
                (b"x-ratelimit-reset-requests", reset),
            ]
        if tpm is not None:
            headers += [
                (b"x-ratelimit-limit-tokens", str(tpm).encode()),
                (b"x-ratelimit-remaining-tokens", str(max(0, tpm - used_tokens)).encode()),
                (b"x-ratelimit-reset-tokens", reset),
            ]
        return refused, rate_limit_headers(dialect, rpm, tpm, used_requests, used_tokens, reset_in, headers)

    async def _delay(self, completion_tokens: int) -> None:
        behavior = self.behavior
        pause = behavior.latency + behavior.latency_per_token * completion_tokens
        if behavior.latency_per_inflight > 0:
            pause += behavior.latency_per_inflight * self._inflight
        if behavior.jitter > 0:
            pause += behavior.rng.uniform(0.0, behavior.jitter)
        if pause > 0:  # no sleep(0) either: the benchmark path should not yield needlessly
            await asyncio.sleep(pause)

    @staticmethod
    async def _read_body(receive: Receive) -> bytes:
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    @staticmethod
    async def _lifespan(receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    # ----------------------------------------------------------------- control endpoints

    async def _control(self, method: str, path: str, body: bytes, send: Send) -> None:
        action = path[len(_CONTROL_PREFIX) :].rstrip("/")
        if action == "stats" and method == "GET":
            await _send_json(send, 200, self.stats(), [])
        elif action == "reset" and method == "POST":
            self.reset()
            await _send_json(send, 200, {"ok": True}, [])
        elif action == "behavior" and method == "POST":
            try:
                changes = json.loads(body or b"{}")
                if not isinstance(changes, dict):
                    raise ValueError("expected a JSON object")
                self.behavior.update(**changes)
            except (ValueError, AttributeError, TypeError) as exc:
                await _send_raw(send, 400, _error_body(str(exc), "invalid_request_error", "bad_behavior"), [])
                return
            await _send_json(send, 200, self.behavior.as_dict(), [])
        else:
            body_404 = _error_body(
                f"Unknown control endpoint {method} {path}", "invalid_request_error", "not_found"
            )
            await _send_raw(send, 404, body_404, [])
