"""Dialects: what Aurelis knows of one provider's wire format.

The wrapper never translates between formats: it only has to *read* each one. A :class:`Dialect` answers,
for the requests and answers of one wire format, the questions the stages ask:

- **which requests are cacheable**: POSTs to the generation and embedding operations (path endings, checked
  against the raw path) whose JSON body asks for nothing stateful (:meth:`Dialect.cacheable`);
- **the model** a request asks for (:meth:`Dialect.model`: the body's ``model``, or the path's, for Azure
  deployments and Gemini) and whether it asks for an event stream (:meth:`Dialect.streams`);
- **when a streamed answer is complete** (:meth:`Dialect.stream_complete`): only a complete stream is stored,
  and each format marks its end its own way;
- **the tokens an answer spent** (:meth:`Dialect.usage`) and those a request will need, for tokens-per-minute
  admission (:meth:`Dialect.output_budget`, added to the prompt's size);
- **what a failure means** (:meth:`Dialect.classify`: a rate limit, an overload, a context too long, a bad
  credential) and **the rate-limit headroom** an answer reports (:meth:`Dialect.rate_limits`).

Four are built in: ``openai`` (chat completions, completions, embeddings and the Responses API; also what vLLM,
Ollama, llama.cpp, LiteLLM and GitHub Models speak), ``anthropic`` (Messages), ``gemini`` (the native
``generateContent`` API) and ``azure_openai``. A request's dialect is detected from its URL path
(:meth:`Dialect.detects`) unless its endpoint pins one (``dialect = "..."`` in ``[[endpoints]]``); detection is
memoised per path, so it costs a dict lookup per request.

Adding a dialect: subclass :class:`Dialect` (override what differs from OpenAI's reading), and list an instance
in the ``dialects`` attribute of a plugin class; enabling the plugin adds it, and a dialect added this way is
asked before the built-in ones whether it :meth:`~Dialect.detects` a path::

    class Cohere(Dialect):
        name = "cohere"
        paths = ("/v2/chat", "/v2/embed")

        def detects(self, path: str) -> bool:
            return path.startswith("/v2/")

    class CoherePlugin:
        name = "cohere"
        dialects = (Cohere(),)
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar
from urllib.parse import unquote

from ._usage import Usage, usage_counts

__all__ = [
    "BUILTIN_DIALECTS",
    "OPENAI",
    "Anthropic",
    "AzureOpenAI",
    "Dialect",
    "Dialects",
    "FailureKind",
    "Gemini",
    "OpenAI",
    "RateLimits",
    "event_stream_events",
    "parse_duration",
]


class FailureKind(enum.Enum):
    """What a failed answer means, whatever the provider spells it as (see :meth:`Dialect.classify`)."""

    #: Too many requests or tokens for the credential's quota (429): wait (``retry-after``) or go elsewhere.
    RATE_LIMIT = "rate_limit"
    #: The provider as a whole is overloaded (Anthropic's 529, Gemini's 503 ``UNAVAILABLE``): go elsewhere.
    OVERLOAD = "overload"
    #: The prompt and the output budget exceed the model's context window: the same request fails anywhere
    #: with that model; a model with a larger window may serve it.
    CONTEXT_LENGTH = "context_length"
    #: The credential is missing, wrong or not allowed (401, 403): no retry cures it.
    AUTH = "auth"
    #: The upstream failed (5xx other than overload, 408 and 409): trying again may cure it.
    SERVER = "server"
    #: The request itself is wrong (other 4xx): it fails again as it is.
    BAD_REQUEST = "bad_request"


class RateLimits:
    """The rate-limit headroom one answer reported: limits and remaining requests and tokens, and the seconds
    until each resets (``None``: not reported)."""

    __slots__ = (
        "limit_requests", "limit_tokens", "remaining_requests", "remaining_tokens", "reset_requests",
        "reset_tokens",
    )

    def __init__(
        self,
        limit_requests: float | None = None,
        remaining_requests: float | None = None,
        reset_requests: float | None = None,
        limit_tokens: float | None = None,
        remaining_tokens: float | None = None,
        reset_tokens: float | None = None,
    ) -> None:
        self.limit_requests = limit_requests
        self.remaining_requests = remaining_requests
        self.reset_requests = reset_requests
        self.limit_tokens = limit_tokens
        self.remaining_tokens = remaining_tokens
        self.reset_tokens = reset_tokens

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{name}={getattr(self, name)!r}" for name in self.__slots__ if getattr(self, name) is not None
        )
        return f"RateLimits({fields})"


#: ``6m0s``, ``1.5s``, ``250ms``, ``20``: the durations of OpenAI's ``x-ratelimit-reset-*`` headers.
# Go's units: microseconds are "us", "\u00b5s" (MICRO SIGN, what Go itself writes) or "\u03bcs" (GREEK SMALL
# LETTER MU, which Go also accepts); escaped because the two look the same.
_UNIT = {
    "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ns": 1e-9,
}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|us|\u00b5s|\u03bcs|ns|h|m|s)")


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if number == number and number >= 0 else None


def parse_duration(text: str) -> float | None:
    """Seconds in a rate-limit reset header: Go-style (``"6m0s"``, ``"1.5s"``, ``"20ms"``, what OpenAI sends) or
    a bare number of seconds; ``None`` if it is neither (or negative)."""
    text = text.strip()
    plain = _number(text)
    if plain is not None:
        return plain
    total = 0.0
    position = 0
    for match in _DURATION.finditer(text):
        if match.start() != position:
            return None
        total += float(match.group(1)) * _UNIT[match.group(2)]
        position = match.end()
    return total if position == len(text) and position else None


def _duration(value: str | None) -> float | None:
    return None if value is None else parse_duration(value)


#: The fields of :class:`RateLimits`, by header name after the prefix, as OpenAI and Anthropic spell them.
_OPENAI_LIMITS = {
    b"limit-requests": "limit_requests", b"remaining-requests": "remaining_requests",
    b"reset-requests": "reset_requests", b"limit-tokens": "limit_tokens", b"remaining-tokens": "remaining_tokens",
    b"reset-tokens": "reset_tokens",
}
_ANTHROPIC_LIMITS = {
    b"requests-limit": "limit_requests", b"requests-remaining": "remaining_requests",
    b"requests-reset": "reset_requests", b"tokens-limit": "limit_tokens", b"tokens-remaining": "remaining_tokens",
    b"tokens-reset": "reset_tokens",
}


def _reported(
    headers: Any, prefix: bytes, fields: Mapping[bytes, str], reset: Callable[[str | None], float | None]
) -> RateLimits | None:
    """The :class:`RateLimits` in the headers named ``prefix`` + a key of ``fields``, in one pass over them."""
    raw = getattr(headers, "raw", None)
    pairs = raw if raw is not None else [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    size = len(prefix)
    found = None
    for name, value in pairs:
        if name[:size].lower() == prefix:
            field = fields.get(name[size:].lower())
            if field is not None:
                if found is None:
                    found = RateLimits()
                text = value.decode("latin-1")
                setattr(found, field, reset(text) if field.startswith("reset") else _number(text))
    if found is None or (found.remaining_tokens is None and found.remaining_requests is None):
        return None
    return found


def event_stream_events(body: bytes) -> list[tuple[bytes, bytes]]:
    """The events of a server-sent event stream as ``(event name, data)`` pairs, in order (``b""`` for an
    event without a name); events without data (comments, keep-alives) are left out."""
    events = []
    for block in body.replace(b"\r\n", b"\n").strip(b"\n").split(b"\n\n"):
        name = b""
        data = []
        for line in block.split(b"\n"):
            if line.startswith(b"data:"):
                data.append(line[5:].lstrip(b" "))
            elif line.startswith(b"event:"):
                name = line[6:].strip()
        if data:
            events.append((name, b"\n".join(data)))
    return events


#: Azure OpenAI's deployment segment (``/openai/deployments/{name}/...``) and Gemini's model segment
#: (``/models/{model}:generateContent``, ``/tunedModels/{model}:...``) in a raw path.
_DEPLOYMENT = re.compile(r"/deployments/([^/]+)/")
_GEMINI_MODEL = re.compile(r"/(?:models|tunedModels)/([^/:]+)(?=:|$)")

#: The ``"type"`` a JSON event opens with (OpenAI's Responses and Anthropic's streams start every event's data
#: with it), read without parsing an event that may hold a whole answer.
_LEADING_TYPE = re.compile(rb'\A\s*\{\s*"type"\s*:\s*"([^"\\]{1,100})"')
_OUTPUT_BUDGET_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


def _event_type(name: bytes, data: bytes) -> bytes:
    if name:
        return name
    match = _LEADING_TYPE.match(data)
    return match.group(1) if match is not None else b""


def _error_text(body: bytes | None) -> str:
    """An error answer's message and code, lower-cased, for matching (``""`` when it has none)."""
    if not body:
        return ""
    try:
        data = json.loads(body[:65536])
    except (ValueError, UnicodeDecodeError):
        return body[:2048].decode("utf-8", "replace").lower()
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        return " ".join(str(error.get(k, "")) for k in ("type", "code", "status", "message")).lower()
    return str(error or "").lower()


#: How the providers word a prompt that does not fit the model's window.
_CONTEXT_WORDS = (
    "context_length_exceeded", "context length", "context window", "maximum context", "prompt is too long",
    "too many tokens", "input token count", "exceeds the maximum number of tokens", "string_above_max_length",
)


class Dialect:
    """One wire format. The base class reads OpenAI's; a subclass overrides what its format does otherwise.

    Instances are shared by every request and thread: keep them stateless (configuration in ``__init__`` only).
    Every method must be cheap and must not raise on a malformed answer (it returns "not complete", ``None``).
    """

    #: What users write in ``[[endpoints]] dialect = "..."`` and what logs and metrics call it.
    name: ClassVar[str] = "openai"
    #: Path endings (of the raw path, query left out) of the cacheable operations: POSTs to them whose body
    #: :meth:`cacheable` accepts get a cache key. Stateless, deterministic-by-request operations only.
    paths: ClassVar[tuple[str, ...]] = ("/chat/completions", "/completions", "/embeddings", "/responses")

    def detects(self, path: str) -> bool:
        """Whether a request to ``path`` (raw, without the query) speaks this dialect, when its endpoint does
        not say. Asked once per distinct path (the answer is memoised); the built-in ``openai`` is the fallback
        and detects nothing itself."""
        return False

    def cacheable_path(self, path: str, paths: tuple[str, ...] | None = None) -> bool:
        """Whether a POST to ``path`` may be cached (its body permitting): it ends with one of :attr:`paths`
        (or of ``paths``, the ``[normalize] paths`` option, which replaces them when set)."""
        return path.rstrip("/").endswith(self.paths if paths is None else paths)

    def cacheable(self, path: str, body: Mapping[str, Any]) -> bool:
        """Whether the JSON object ``body`` of a request to a cacheable path asks for a plain answer that may be
        stored and given again. Called once per distinct request (the key stage memoises it).

        OpenAI's Responses API: not a ``background`` job (the answer is a queued job's handle), nor a turn of a
        ``conversation`` (the server appends it: a cached answer would leave the conversation without it), nor
        a request with ``mcp`` tools (the server calls remote tools, whose effects a cached answer skips).
        ``store`` and ``previous_response_id`` are cacheable: a stored response never changes, so the same
        ``previous_response_id`` with the same input reads the same context, and the replayed answer names the
        response stored on the first call (which ``previous_response_id`` may go on from).
        """
        if body.get("background") is True or body.get("conversation") is not None:
            return False
        tools = body.get("tools")
        return not (isinstance(tools, list) and any(isinstance(t, dict) and t.get("type") == "mcp" for t in tools))

    def model(self, path: str, body: Mapping[str, Any]) -> str | None:
        """The model the request asks for: the one its path names (see :meth:`model_span`), else its body's
        ``model``; ``None`` when neither does."""
        span = self.model_span(path)
        if span is not None:
            return unquote(path[span[0] : span[1]])
        model = body.get("model")
        return model if isinstance(model, str) else None

    def model_span(self, path: str) -> tuple[int, int] | None:
        """Where the raw ``path`` (percent-encoded, without the query) names the model, as ``(start, end)``
        offsets, or ``None``: the model is named in the body only (the default). The one definition of a path's
        model: :meth:`model` reads it there, and a ``model_map`` rewrites it there."""
        return None

    def streams(self, path: str, body: Mapping[str, Any]) -> bool:
        """Whether the request asks for an event stream (the body's ``"stream": true``)."""
        return body.get("stream") is True

    def stream_complete(self, tail: bytes) -> bool:
        """Whether the event stream whose last bytes are ``tail`` reached its end marker; only a complete stream
        is stored. A stream cut off cleanly (a proxy timing out, a provider crashing between frames) looks like
        a short valid answer to every SDK: only the marker tells.

        OpenAI chat and completions: ``data: [DONE]``, or (providers that omit it) a last chunk whose choices
        carry a ``finish_reason``. The Responses API: a ``response.completed`` event (``response.failed``,
        ``response.incomplete`` and ``error`` are not complete).
        """
        for name, data in reversed(event_stream_events(tail)):
            if data.strip() == b"[DONE]":
                return True
            kind = _event_type(name, data)
            if kind.startswith(b"response.") or kind == b"error":  # the Responses API's events
                return kind == b"response.completed"
            try:
                payload = json.loads(data)
            except ValueError:
                return False
            choices = payload.get("choices") if isinstance(payload, dict) else None
            if not choices:
                continue  # the trailing usage chunk ("choices": []) follows the finishing one
            return any(isinstance(c, dict) and c.get("finish_reason") for c in choices)
        return False

    def usage(self, head: bytes | None, tail: bytes) -> Usage | None:
        """The tokens an answer spent: ``head`` is its first bytes (``None`` if unknown), ``tail`` its last
        :data:`~aurelis_core._models.USAGE_TAIL` or more. OpenAI puts its usage block last (a stream: in its last
        chunk, when asked with ``stream_options.include_usage``)."""
        return usage_counts(tail, head)

    def output_budget(self, path: str, body: Mapping[str, Any]) -> int | None:
        """The most output tokens the request allows (``max_completion_tokens``, ``max_tokens``,
        ``max_output_tokens``), or ``None`` when it sets none; an embedding's is 0."""
        for field in _OUTPUT_BUDGET_FIELDS:
            value = body.get(field)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                return value
        return 0 if self.embeds(path) else None

    def embeds(self, path: str) -> bool:
        """Whether ``path`` is an embedding operation (its answer spends no output tokens)."""
        return path.rstrip("/").endswith("/embeddings")

    def classify(self, status: int, headers: Any, body: bytes | None) -> FailureKind | None:
        """What a failed answer means (``None`` for a success). ``headers`` is the answer's (httpx ``Headers``
        or a mapping with lower-case names), ``body`` its raw bytes if read (an error body is small).

        429 is a rate limit, except OpenAI's ``insufficient_quota`` (the account is out of credit: an auth
        failure, which no wait cures); 401/403 auth; a 400 (or 413) that names the context window is
        ``CONTEXT_LENGTH``; 503 overload; 408, 409 and other 5xx server failures; other 4xx bad requests.
        """
        if status < 400:
            return None
        text = _error_text(body) if status in (400, 403, 413, 429) else ""
        if status == 429:
            return FailureKind.AUTH if "insufficient_quota" in text else FailureKind.RATE_LIMIT
        if status in (401, 403):
            return FailureKind.AUTH
        if status in (400, 413) and any(word in text for word in _CONTEXT_WORDS):
            return FailureKind.CONTEXT_LENGTH
        if status in (503, 529):
            return FailureKind.OVERLOAD
        if status >= 500 or status in (408, 409):
            return FailureKind.SERVER
        return FailureKind.BAD_REQUEST

    def rate_limits(self, headers: Any) -> RateLimits | None:
        """The headroom an answer reports (``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``), or
        ``None`` when it reports none."""
        return _reported(headers, b"x-ratelimit-", _OPENAI_LIMITS, _duration)

    def __repr__(self) -> str:
        return f"<dialect {self.name}>"


class OpenAI(Dialect):
    """OpenAI's API: chat completions, completions, embeddings, the Responses API; and every server that speaks
    it (vLLM, Ollama's ``/v1``, llama.cpp's server, LiteLLM, GitHub Models)."""


class AzureOpenAI(Dialect):
    """Azure OpenAI: ``/openai/deployments/{deployment}/...?api-version=...`` and the ``/openai/v1/...`` form,
    credential in ``api-key`` (or an Entra ID bearer token). The model of a deployment path is the deployment's
    name; streams open with a ``"choices": []`` chunk of ``prompt_filter_results`` (which the completion check,
    reading from the end, passes over). Azure sends ``retry-after-ms`` with ``retry-after``."""

    name = "azure_openai"

    def detects(self, path: str) -> bool:
        return path.startswith(("/openai/deployments/", "/openai/v1/"))

    def model_span(self, path: str) -> tuple[int, int] | None:
        # The deployment's segment, also under a gateway's prefix (``/apim/openai/deployments/{name}/...``).
        match = _DEPLOYMENT.search(path)
        return match.span(1) if match is not None else None


class Anthropic(Dialect):
    """Anthropic's Messages API (``POST /v1/messages``).

    Streams end with ``message_stop`` (an ``error`` event is not complete); usage is spread over the stream:
    the input tokens in ``message_start`` (the head), the output tokens in the last ``message_delta``. 529 is an
    overload of the whole service; rate limits are reported in ``anthropic-ratelimit-*`` headers (reset times
    as RFC 3339 dates).
    """

    name = "anthropic"
    #: Not ``/messages``: that shorter ending is also MCP's HTTP+SSE message endpoint and OpenAI's threads'.
    paths = ("/v1/messages",)

    def detects(self, path: str) -> bool:
        return path.rstrip("/").endswith("/v1/messages")

    def cacheable(self, path: str, body: Mapping[str, Any]) -> bool:
        # The MCP connector calls remote tools: a cached answer would skip their effects.
        return not body.get("mcp_servers")

    def stream_complete(self, tail: bytes) -> bool:
        for name, data in reversed(event_stream_events(tail)):
            kind = _event_type(name, data)
            if kind == b"ping":
                continue
            return kind == b"message_stop"
        return False

    def output_budget(self, path: str, body: Mapping[str, Any]) -> int | None:
        value = body.get("max_tokens")  # required by the API
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None

    def embeds(self, path: str) -> bool:
        return False

    def classify(self, status: int, headers: Any, body: bytes | None) -> FailureKind | None:
        if status == 529:
            return FailureKind.OVERLOAD
        kind = super().classify(status, headers, body)
        if kind is FailureKind.OVERLOAD and "overloaded" not in _error_text(body):
            return FailureKind.SERVER  # a 503 from a proxy in between, not the service's own overload
        return kind

    def rate_limits(self, headers: Any) -> RateLimits | None:
        # Anthropic reports input and output tokens apart too; "tokens" is the most restrictive of them.
        return _reported(headers, b"anthropic-ratelimit-", _ANTHROPIC_LIMITS, _until)


def _until(stamp: str | None) -> float | None:
    """Seconds from now until an RFC 3339 time (Anthropic's reset headers), never negative."""
    if stamp is None:
        return None
    import datetime
    import time

    try:
        moment = datetime.datetime.fromisoformat(stamp.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return max(0.0, moment.timestamp() - time.time())


class Gemini(Dialect):
    """Google's Gemini API, native form: ``POST /{v1,v1beta}/models/{model}:generateContent``,
    ``:streamGenerateContent?alt=sse``, ``:embedContent``, ``:batchEmbedContents``; credential in
    ``x-goog-api-key`` or ``?key=`` (both kept out of the key, into the tenant's fingerprint).

    The model is in the path; a stream is asked for by the path, not the body, and is complete when its last
    chunk's candidate carries a ``finishReason``. Usage is ``usageMetadata`` (``promptTokenCount``,
    ``candidatesTokenCount``, ``thoughtsTokenCount``, ``cachedContentTokenCount``), in every chunk of a stream,
    complete in the last. Gemini's OpenAI-compatible endpoint (``/v1beta/openai/...``) is ``openai``.
    """

    name = "gemini"
    paths = (":generateContent", ":streamGenerateContent", ":embedContent", ":batchEmbedContents")

    def detects(self, path: str) -> bool:
        return ("/models/" in path or "/tunedModels/" in path) and path.endswith((*self.paths, ":countTokens"))

    def model_span(self, path: str) -> tuple[int, int] | None:
        # The last "/models/" or "/tunedModels/" segment names it (a tuned model keeps its collection's name),
        # up to the method (":generateContent").
        spans = [match.span(1) for match in _GEMINI_MODEL.finditer(path)]
        return spans[-1] if spans else None

    def streams(self, path: str, body: Mapping[str, Any]) -> bool:
        return path.endswith(":streamGenerateContent")

    def stream_complete(self, tail: bytes) -> bool:
        for _, data in reversed(event_stream_events(tail)):
            try:
                payload = json.loads(data)
            except ValueError:
                return False
            candidates = payload.get("candidates") if isinstance(payload, dict) else None
            if not isinstance(candidates, list) or not candidates:
                return False
            return any(isinstance(c, dict) and c.get("finishReason") for c in candidates)
        return False

    def output_budget(self, path: str, body: Mapping[str, Any]) -> int | None:
        if self.embeds(path):
            return 0
        config = body.get("generationConfig") or body.get("generation_config")
        value = config.get("maxOutputTokens") if isinstance(config, dict) else None
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None

    def embeds(self, path: str) -> bool:
        return path.endswith((":embedContent", ":batchEmbedContents"))

    def classify(self, status: int, headers: Any, body: bytes | None) -> FailureKind | None:
        kind = super().classify(status, headers, body)
        if status == 400 and kind is FailureKind.BAD_REQUEST and "api key not valid" in _error_text(body):
            return FailureKind.AUTH  # Gemini answers a wrong key with 400 INVALID_ARGUMENT
        return kind


#: The built-in dialects, in the order detection asks them (``openai``, the fallback, last).
OPENAI = OpenAI()
BUILTIN_DIALECTS: tuple[Dialect, ...] = (AzureOpenAI(), Anthropic(), Gemini(), OPENAI)
#: How many paths a registry remembers the dialect of; cleared when full.
_PATH_MEMO = 4096


class Dialects:
    """The dialects a pipeline knows (the built-in ones and those its plugins add), and which one a request
    speaks. Immutable once built; detection is memoised per path."""

    __slots__ = ("_by_name", "_detecting", "_memo", "_pinned")

    def __init__(self, added: Iterable[Dialect] = (), pinned: Sequence[tuple[str, str]] = ()) -> None:
        added = tuple(added)
        self._by_name: dict[str, Dialect] = {}
        for dialect in (*added, *BUILTIN_DIALECTS):
            self._by_name.setdefault(dialect.name, dialect)
        # Added dialects are asked first: a third party may claim paths a built-in one would take.
        self._detecting = tuple(d for d in (*added, *BUILTIN_DIALECTS) if self._by_name[d.name] is d)
        self._memo: dict[str, Dialect] = {}
        #: (endpoint URL, dialect) of the endpoints that pin one, longest URL first.
        self._pinned = tuple(sorted(((url.rstrip("/"), self.named(name)) for url, name in pinned),
                                    key=lambda pair: -len(pair[0])))

    @property
    def names(self) -> tuple[str, ...]:
        """The names of every dialect known here."""
        return tuple(self._by_name)

    def named(self, name: str) -> Dialect:
        """The dialect called ``name`` (``KeyError`` naming the known ones if there is none)."""
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"unknown dialect {name!r}; known: {', '.join(sorted(self._by_name))}") from None

    def for_path(self, path: str) -> Dialect:
        """The dialect a request to ``path`` (raw, without the query) speaks, detected (memoised)."""
        dialect = self._memo.get(path)
        if dialect is None:
            dialect = next((d for d in self._detecting if d.detects(path)), OPENAI)
            if len(self._memo) >= _PATH_MEMO:
                self._memo.clear()
            self._memo[path] = dialect
        return dialect

    def for_url(self, url: Any, path: str) -> Dialect:
        """The dialect of a request to ``url`` (an httpx ``URL``; its raw ``path`` given): an endpoint's pinned
        one when the URL is under that endpoint's, else as detected from the path."""
        if self._pinned:
            text = str(url)
            for base, dialect in self._pinned:
                if text.startswith(base) and text[len(base):len(base) + 1] in ("", "/", "?"):
                    return dialect
        return self.for_path(path)


#: A registry with the built-in dialects only: for requests seen outside a pipeline.
BUILTIN = Dialects()
