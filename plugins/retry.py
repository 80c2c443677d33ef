"""``retry``: try a failed attempt again, on another endpoint when one is healthy, within a budget and a deadline.

What is retried (the rules of the openai SDK, so wrapping it changes nothing a user relies on):

- transport errors that may be transient: connect errors and timeouts (connect, read, write, pool), read and
  write errors, a connection the server dropped (``RemoteProtocolError``), of httpx or httpx2 (checked against
  the request's own flavour, ``ctx.http``);
- answers with a status in ``statuses`` (default 408, 409, 429) or any 5xx (Anthropic's 529 overload too),
  unless the attempt's dialect classifies the failure as one no retry cures
  (:meth:`~aurelis_core.plugin.Dialect.classify`: a bad or exhausted credential, ``AUTH``; a prompt beyond the
  model's context window, ``CONTEXT_LENGTH``: the openai SDK's 429 ``insufficient_quota``, when the body was
  read);
- an :class:`~aurelis_core.health.EndpointUnavailable` (an open circuit, a rate limit that would wait too long)
  only when another endpoint is available to take the attempt;
- an upstream's ``x-should-retry: true|false`` header overrides the status rules, as the openai SDK does.

When to retry:

- **failover first**: when the pipeline has another endpoint that has not failed during this request and that
  the health registry says is available, the next attempt goes now (no wait): the Retry-After of a busy
  endpoint says nothing about the others.
- otherwise, on the same upstream: after the *latest* failure's ``retry-after-ms``, ``x-ms-retry-after-ms`` or
  ``retry-after`` (seconds or an HTTP date) if it sent one, else after a full-jitter exponential backoff:
  ``uniform(0, min(cap, base * 2**(failures - 1)))`` (AWS's "full jitter": retries of many clients spread
  out instead of arriving in synchronized waves).
- never after ``max_attempts`` attempts, and never when the wait would end past ``deadline`` seconds after
  the request started (waits included; the duration of each attempt is bounded by the client's own timeout).
- only while the **retry budget** has a token: every request that reaches the network deposits
  ``budget_ratio`` tokens (up to ``budget_burst``, which is also the initial balance); every retry spends one.
  So retries add at most ``budget_ratio`` extra load in steady state: a failing upstream sees at most 1.2x its
  normal traffic with the defaults, not ``max_attempts`` x (a retry storm).

Coordination with routers (:data:`~aurelis_core.plugin.FAILED_ENDPOINTS`): before answering, the plugin adds
the failed attempt's endpoint name to the request's ``FAILED_ENDPOINTS`` record, a set defined by the core that
routers read (the same set is ``ctx.state["retry"].failed``, a :class:`RetryState`). Routers prefer endpoints
not in that set for the next attempt of the same request (and fall back to them if nothing else is left); the
health registry already hides open circuits and rate-limited endpoints across requests.

Which requests (the wrapper re-sends the caller's request byte for byte, so only a request that may safely
reach the server twice is retried):

- never a request whose body was a one-shot stream (a generator, an iterator, a file, an async iterable) or
  that is signed for one attempt (SigV4 and the like): the pipeline itself refuses those, before any retry
  hook is asked (see ``aurelis_core._resend``), and counts ``retry_refused_stream`` / ``retry_refused_signed``;
- any request whose attempt failed before it reached the server (an endpoint refused it, the connection did not
  open, the pool had no connection): the server did nothing;
- any request with an ``Idempotency-Key`` header: the server de-duplicates by it;
- GET, HEAD and OPTIONS (``methods``) on every path: they change nothing;
- PUT and DELETE (``methods``) and requests to the generation and embedding operations (``paths``: chat
  completions, completions, embeddings, responses, Anthropic's messages, Gemini's generate and embed calls)
  unless the path is under ``exclude`` (files, uploads, batches, fine-tuning, assistants, threads, MCP) or is
  an MCP call, and for ``paths``, unless the JSON body asks for state (a background response, a
  conversation, MCP tools, the continuation of a tool run: see :func:`_stateless_body`);
- nothing else (other POSTs). Refusals for this reason are counted as ``retry_not_idempotent``.

Credentials: the request goes again with the headers it had. A bearer token from a token provider (Azure AD,
Google) lives minutes to hours, far longer than a retry's ``deadline``, so re-sending it is safe; a client
that must refresh a credential on every attempt should let its SDK retry instead (its ``max_retries``).

Streams and answers: the pipeline asks this hook only after an attempt raised or answered with a status >= 400,
before any of its body was handed to the caller, so a streamed answer is never retried after its first byte. A
body that fails halfway after a 2xx is the caller's error, not retried.

SDK retries: the openai and anthropic SDKs retry by themselves (``max_retries``, default 2), google-genai only
when given ``retry_options``. With both layers on, attempts multiply (3 x 3 = 9 with the defaults): keep one.
The SDK's ``x-stainless-retry-count`` header is re-sent as it was (0 on every attempt made here): the wrapper
never changes request bytes.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import attrs

from aurelis_core.plugin import (
    DEADLINE,
    FAILED_ENDPOINTS,
    MODEL_ROUTE,
    Attempt,
    Deadline,
    EndpointUnavailable,
    FailureKind,
    Invalid,
    OpenAI,
    RequestContext,
    as_tuple,
    buffered_body,
    describe_error,
    each,
    header_items,
    hookimpl,
    in_range,
    non_negative,
    non_negative_int,
    one_of,
    positive_int,
    retry_after,
    url_parts,
)

__all__ = ["Retry", "RetryConfig", "RetryState"]

logger = logging.getLogger("aurelis.retry")

#: Methods that change nothing on the server (RFC 9110, 9.2.1): retried on every path when listed in ``methods``.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: The method names ``methods`` may hold.
HTTP_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "QUERY", "TRACE")

#: The idempotent methods of HTTP (RFC 9110, 9.2.2) but TRACE: repeating one has the effect of sending it once.
DEFAULT_METHODS = ("GET", "HEAD", "OPTIONS", "PUT", "DELETE")
#: Generation and embedding operations: each answer is computed from the request alone (the body rules of
#: ``_stateless_body`` catch the options that make one stateful). Anthropic's is ``/v1/messages``, not
#: ``/messages``: that shorter ending is also the message endpoint of MCP's HTTP+SSE transport (a tool call)
#: and of OpenAI's threads (``/threads/{id}/messages``, excluded anyway).
DEFAULT_PATHS = (
    "/chat/completions",
    "/completions",
    "/embeddings",
    "/responses",
    "/v1/messages",
    ":generateContent",
    ":streamGenerateContent",
    ":embedContent",
    ":batchEmbedContents",
)
#: Resources whose writes are never repeated without an ``Idempotency-Key``: files and uploads (and their
#: parts), batches, fine-tuning jobs, assistants and threads (with their messages and runs), MCP endpoints.
DEFAULT_EXCLUDE = ("/files", "/uploads", "/batches", "/fine_tuning", "/assistants", "/threads", "/mcp")

#: Failures the same request meets again however often it is sent (a status listed in ``statuses`` is otherwise
#: retried as the user asked).
_INCURABLE = frozenset({FailureKind.AUTH, FailureKind.CONTEXT_LENGTH})
#: How an attempt made outside a pipeline (without a dialect) is read.
OPENAI = OpenAI()

#: A request carrying this header may be retried whatever its path: the server de-duplicates by it.
IDEMPOTENCY_KEY = b"idempotency-key"
#: Headers of the Model Context Protocol's streamable HTTP transport: a request with one is an MCP call.
MCP_HEADERS = frozenset({b"mcp-session-id", b"mcp-protocol-version"})


def _upper(methods: Any) -> Any:
    # Methods are compared in upper case; what is not a list is left for the annotation's check to refuse.
    if not isinstance(methods, (list, tuple)):
        return methods
    return tuple(m.upper() if isinstance(m, str) else m for m in methods)


def _path_ending(instance: Any, attribute: Any, value: Any) -> None:
    if not (isinstance(value, str) and len(value) >= 2 and value.startswith(("/", ":")) and "?" not in value):
        raise Invalid(attribute.name, "a path ending such as '/chat/completions' or ':generateContent'", value)


def _path_segment(instance: Any, attribute: Any, value: Any) -> None:
    if not (isinstance(value, str) and len(value) >= 2 and value.startswith("/") and "?" not in value):
        raise Invalid(attribute.name, "a path segment such as '/files'", value)


@attrs.frozen
class RetryConfig:
    #: Attempts in all, the first included (1: never retry).
    max_attempts: int = attrs.field(default=3, validator=positive_int)
    #: Backoff base, seconds: the n-th retry waits uniform(0, min(cap, base * 2**(n-1))).
    base: float = attrs.field(default=0.5, validator=non_negative)
    #: Longest backoff wait, seconds (see ``base``).
    cap: float = attrs.field(default=8.0, validator=non_negative)
    #: Seconds from the request's start after which no wait may end and no attempt start (None: no limit).
    deadline: float | None = attrs.field(default=60.0, validator=non_negative)
    #: Retry tokens each request deposits (the share of extra load retries may add); a retry costs 1.
    budget_ratio: float = attrs.field(default=0.2, validator=non_negative)
    #: Most tokens the budget holds, and its initial balance (lets a quiet client still retry a burst).
    budget_burst: float = attrs.field(default=10.0, validator=non_negative)
    #: Statuses retried besides every 5xx.
    statuses: tuple[int, ...] = attrs.field(
        default=(408, 409, 429), converter=as_tuple, validator=each(in_range(400, 599, integer=True))
    )
    #: Seed for the jitter's random stream (None: from the OS), for reproducible runs.
    seed: int | None = attrs.field(default=None, validator=non_negative_int)
    #: Methods retried on every path outside ``exclude`` (GET, HEAD and OPTIONS on excluded paths too).
    methods: tuple[str, ...] = attrs.field(
        default=DEFAULT_METHODS, converter=_upper, validator=each(one_of(HTTP_METHODS, "an HTTP method"))
    )
    #: Path endings whose requests are retried whatever their method, unless their JSON body makes them stateful.
    paths: tuple[str, ...] = attrs.field(default=DEFAULT_PATHS, converter=as_tuple, validator=each(_path_ending))
    #: Path segments (``/files`` matches ``/v1/files`` and ``/v1/files/abc``) never retried but by safe methods.
    exclude: tuple[str, ...] = attrs.field(default=DEFAULT_EXCLUDE, converter=as_tuple, validator=each(_path_segment))


class RetryState:
    """``ctx.state["retry"]``: what the retry plugin learnt during one request.

    ``failed``: names of the endpoints whose attempts failed (for requests without endpoints, the origin URL):
    the request's :data:`~aurelis_core.plugin.FAILED_ENDPOINTS` set, which routers read; ``waits``: the seconds
    waited before each retry.
    """

    __slots__ = ("failed", "waits")

    def __init__(self, failed: set[str] | None = None) -> None:
        self.failed: set[str] = set() if failed is None else failed
        self.waits: list[float] = []


class Retry:
    """The ``retry`` plugin.

    ``clock`` is where "now" comes from when the deadline is checked; it must be the clock of
    ``RequestContext.started`` (``time.perf_counter``). Tests and simulations replace both with a fake clock.
    Whether another endpoint is available is read from the health registry, on the registry's own clock.
    """

    name = "retry"
    Config = RetryConfig

    def __init__(self, config: RetryConfig, pipeline: Any) -> None:
        self.config = config
        self.health = pipeline.health
        self.endpoints = pipeline.endpoints
        self.stats = pipeline.stats
        self.clock: Callable[[], float] = time.perf_counter
        self._random = random.Random(config.seed)
        self._tokens = config.budget_burst
        self._lock = threading.Lock()
        self._methods = frozenset(config.methods)
        # One search for all the excluded segments: a segment matches when the path continues with "/" or ":"
        # after it, or ends there ("/files" matches "/v1/files/abc", not "/v1/filesystem").
        self._exclude = re.compile(
            "(?:" + "|".join(re.escape(path) for path in config.exclude) + ")(?=[/:]|$)"
        ) if config.exclude else None

    @property
    def budget(self) -> float:
        """Retry tokens available now (never negative)."""
        return self._tokens

    @hookimpl
    def aurelis_attempt_end(self, ctx: RequestContext, attempt: Attempt) -> None:
        if attempt.number == 1:  # once per request that reached the network
            with self._lock:
                self._tokens = min(self.config.budget_burst, self._tokens + self.config.budget_ratio)

    @hookimpl
    def aurelis_retry(self, ctx: RequestContext, attempt: Attempt) -> float | None:
        config = self.config
        if config.deadline is not None and DEADLINE.get(ctx) is None:
            # Told to whatever else would start an attempt (the core's model fallbacks), on this plugin's clock.
            DEADLINE.set(ctx, Deadline(ctx.started + config.deadline, self.clock))
        # Attempts count per model: after a fallback, the next model gets max_attempts of its own.
        route = MODEL_ROUTE.get(ctx)
        number = attempt.number - route.first_attempt + 1 if route is not None else attempt.number
        if number >= config.max_attempts or not self._retryable(ctx, attempt):
            return None
        counters = self.stats.counters
        if not (self._unsent(ctx, attempt) or self._repeatable(ctx)):
            counters["retry_not_idempotent"] += 1
            _not_retrying(ctx, attempt, "the request may not safely reach the server twice")
            return None
        endpoint = self.health.upstream(ctx, attempt)
        state: RetryState | None = ctx.state.get("retry")
        if state is None:
            # One set, two readers: routers find it under the core's key, without knowing this plugin.
            state = ctx.state["retry"] = RetryState(FAILED_ENDPOINTS.setdefault(ctx, set()))
        state.failed.add(endpoint.name)
        failover = self._has_alternative(ctx, state.failed)
        if failover:
            delay = 0.0
        elif isinstance(attempt.error, EndpointUnavailable):
            _not_retrying(ctx, attempt, "no other endpoint is available")
            return None  # nothing else to try: the same endpoint would refuse again
        else:
            hint = retry_after(attempt.headers)
            if hint is None:
                with self._lock:
                    hint = self._random.uniform(0.0, min(config.cap, config.base * 2 ** (attempt.number - 1)))
            delay = hint
        if config.deadline is not None and self.clock() - ctx.started + delay >= config.deadline:
            counters["retry_deadline"] += 1
            _not_retrying(ctx, attempt, f"waiting {delay:.3g} s would pass the {config.deadline:g} s deadline")
            return None
        with self._lock:
            if self._tokens < 1:
                counters["retry_budget_exhausted"] += 1
                budget_left = False
            else:
                self._tokens -= 1
                budget_left = True
        if not budget_left:
            _not_retrying(ctx, attempt, "the retry budget is spent")
            return None
        counters["retries"] += 1
        if failover:
            counters["retry_failovers"] += 1
        state.waits.append(delay)
        if logger.isEnabledFor(logging.DEBUG):
            if failover:
                logger.debug("failover: attempt %d of %s %s to %s failed (%s); the next goes to another endpoint "
                             "(avoiding %s)", attempt.number, ctx.original.method, _path(ctx), endpoint.name,
                             _outcome(attempt), ", ".join(sorted(state.failed)))
            else:
                logger.debug("retry: attempt %d of %s %s to %s failed (%s); trying again in %.3f s", attempt.number,
                             ctx.original.method, _path(ctx), endpoint.name, _outcome(attempt), delay)
        return delay

    def _retryable(self, ctx: RequestContext, attempt: Attempt) -> bool:
        """Whether the failure is one that trying again may cure."""
        error = attempt.error
        if error is not None:
            http = ctx.http
            return isinstance(
                error, (EndpointUnavailable, http.TimeoutException, http.NetworkError, http.RemoteProtocolError)
            )
        headers = attempt.headers
        should = headers.get("x-should-retry") if headers is not None else None
        if should == "true":
            return True
        if should == "false":
            return False
        status = attempt.status_code
        if status is None or not (status >= 500 or status in self.config.statuses):
            return False
        # The provider's own words on what failed (its dialect reads status, headers and, if read, the body).
        kind = (attempt.dialect or OPENAI).classify(status, headers, attempt.body)
        return kind not in _INCURABLE

    def _unsent(self, ctx: RequestContext, attempt: Attempt) -> bool:
        """Whether the attempt failed before any of the request reached the server, which therefore did nothing:
        an endpoint refused before sending (an open circuit, a rate limit), a connection that did not open, no
        free connection in the pool. Any request may then be tried again (its body permitting, which the
        pipeline checks)."""
        http = ctx.http
        return isinstance(
            attempt.error, (EndpointUnavailable, http.ConnectError, http.ConnectTimeout, http.PoolTimeout)
        )

    def _repeatable(self, ctx: RequestContext) -> bool:
        """Whether the server may be sent the request again: doing it twice has the effect of doing it once.

        - an ``Idempotency-Key`` header: the caller asked the server to de-duplicate; any path, any method;
        - a safe method (GET, HEAD, OPTIONS) listed in ``methods``: on every path;
        - any other request to a path under ``exclude``, or an MCP call (its ``Mcp-*`` headers): never;
        - a method listed in ``methods`` (PUT and DELETE by default): yes;
        - a path ending with one of ``paths``: when its body holds nothing that makes it stateful (see
          :func:`_stateless_body`);
        - anything else (POSTs to other paths): never.
        """
        request = ctx.original
        mcp = False
        for _, lower, value in header_items(request.headers):
            if lower == IDEMPOTENCY_KEY and value.strip():
                return True
            if lower in MCP_HEADERS:
                mcp = True
        method = request.method
        safe = method in SAFE_METHODS
        path = url_parts(request.url)[3]
        if not safe and (mcp or (self._exclude is not None and self._exclude.search(path) is not None)):
            return False
        if method in self._methods:
            return True
        if not path.endswith(self.config.paths):
            return False
        return safe or _stateless_body(ctx)

    def _has_alternative(self, ctx: RequestContext, failed: set[str]) -> bool:
        """Whether an endpoint that serves the request's model, has not failed it and is available is left."""
        health = self.health
        now = health.clock()
        return any(e.name not in failed and health.available(e, now) for e in health.serving(ctx, self.endpoints))


#: Responses API input items that hand the server the results of tool calls (``function_call_output``,
#: ``computer_call_output``, ``shell_call_output``...) end with this; with ``mcp_approval_response`` they make a
#: request the continuation of a tool run.
_TOOL_OUTPUT_SUFFIX = "_output"
_MCP_APPROVAL = "mcp_approval_response"


def _path(ctx: RequestContext) -> str:
    return str(url_parts(ctx.original.url)[3])


def _outcome(attempt: Attempt) -> str:
    """What went wrong with an attempt, for a log line: ``status 503`` or ``ConnectError: ...``."""
    return describe_error(attempt.error) if attempt.error is not None else f"status {attempt.status_code}"


def _not_retrying(ctx: RequestContext, attempt: Attempt, why: str) -> None:
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("not retrying attempt %d of %s %s (%s): %s", attempt.number, ctx.original.method, _path(ctx),
                     _outcome(attempt), why)


def _stateless_body(ctx: RequestContext) -> bool:
    """Whether the body of a request to a generation path asks for nothing beyond one answer.

    Creating a chat completion, an embedding, a Gemini or Anthropic message changes no state the caller relies
    on: resending one costs tokens (a request that timed out may still be billed), nothing else. A Responses
    API request with ``store`` (its default) is kept as an object of its own; a retry after an attempt the
    server completed leaves one more stored response that nothing refers to, while the caller goes on from the
    one it got (a later ``previous_response_id`` names that one). Retried, unless the body asks for an effect a
    second run would repeat:

    - ``background: true``: the server queues a job and answers at once; a retry queues a second job that runs
      (and is billed) to its end, which the caller never sees nor can cancel;
    - ``conversation``: the turn's items are appended to a conversation; a retry would append them twice;
    - an ``mcp`` tool (Responses) or ``mcp_servers`` (Anthropic's MCP connector): the server calls remote MCP
      tools, whose effects a retry would repeat; the openai SDK sends these with its retries off;
    - ``input`` items that continue a tool run (tool outputs, an ``mcp_approval_response``): an approved MCP
      call would run twice, and the run's record would no longer match the responses the server made; the
      openai SDK's tool runner sends these with its retries off too.

    A body that cannot be read as JSON (a caller-compressed one, a multipart form) cannot be checked: not retried.
    An empty body asks for nothing.
    """
    body = buffered_body(ctx.original)
    if body is None:
        return False
    if not body:
        return True
    # Parsed once per request, from this same buffered body (the cache key may have done it already); None when
    # it is not JSON, which is refused below.
    data = ctx.json
    if not isinstance(data, dict):
        return False
    if data.get("background") is True or data.get("conversation") is not None or data.get("mcp_servers"):
        return False
    tools = data.get("tools")
    if isinstance(tools, list) and any(isinstance(tool, dict) and tool.get("type") == "mcp" for tool in tools):
        return False
    items = data.get("input")
    if isinstance(items, list):
        for item in items:
            kind = item.get("type") if isinstance(item, dict) else None
            if isinstance(kind, str) and (kind.endswith(_TOOL_OUTPUT_SUFFIX) or kind == _MCP_APPROVAL):
                return False
    return True
