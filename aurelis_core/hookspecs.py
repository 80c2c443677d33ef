"""The hooks a plugin can implement: the pipeline's stages, in the order a request meets them.

A request flows through::

    normalize -> cache_get -> route -> admit -> compress -> send -> attempt_end -> retry? -> cache_set -> observe

(``route`` to ``retry`` form the attempt loop: a retry goes back to ``route``.) Read this module with
:mod:`aurelis_core.pipeline`, which runs the stages: together they are the whole request path.

Calling conventions
-------------------
pluggy only declares these hooks; the pipeline calls the implementations itself, from per-stage lists that it
builds anew, as one immutable snapshot, whenever a plugin is registered or unregistered (a request keeps the
snapshot it started with). pluggy's own call machinery (about 1-2 us per hook)
would be paid seven times per request, and pluggy cannot await ``async def`` implementations. So:

- **the table**: :data:`STAGES` has one row per hook: which implementations run (:data:`ALL`,
  :data:`FIRST_ANSWER`, :data:`EXACTLY_ONE`, or a rule of its own: :data:`UNTIL_HIT`, :data:`LARGEST_WAIT`),
  whether it may do I/O, and what it is for. It is the single source: the pipeline builds its per-stage lists
  from it, pluggy's ``firstresult`` markers below are derived from it, and tests check each docstring and the
  README's hook table against it. Adding a hook means a row here, a hookspec below, and a field of the
  pipeline's ``Stages`` snapshot (``aurelis_core._plugins``) named after it.
- **order**: implementations run in the order their plugins are listed in the config's ``plugins``.
- **I/O hooks** (marked *may do I/O*) may be written as ``def`` or ``async def``, or return an awaitable only
  when ``ctx.is_async`` is true. An async client awaits the result. A sync client calls ``def`` implementations
  directly and runs an awaitable on the pipeline's private event-loop thread (which works, but costs a thread
  hop: a plugin that serves sync clients well returns a plain value when ``ctx.is_async`` is false).
- **no-I/O hooks** are plain ``def`` and must return quickly: they run on the event loop of async clients.
- A hook raising an exception fails the request, except where a stage only optimises or records: a cache tier
  that raises is treated as a miss (for ``cache_get``) or a dropped write (for ``cache_set``), counted in the
  stats and logged, because a cache must never fail the caller's request; a ``normalize`` or ``compress`` that
  raises leaves the request uncached or uncoded (``stats.stage_errors``); an ``observe`` that raises is logged.

Every hook is prefixed ``aurelis_``. A plugin is a class whose instance carries ``@hookimpl`` methods; see
:mod:`aurelis_core.plugin`, the plugin API, for how a plugin is written and everything it may import.

Contributions besides hooks
---------------------------
A plugin may also hand the pipeline *things* rather than stage work, as attributes of its instance, read once
whenever the stage snapshot is built (at start, and on every register or unregister; a request keeps the
snapshot it started with). :data:`PLUGIN_ATTRIBUTES` lists them:

- ``dialects``: a sequence of :class:`~aurelis_core.plugin.Dialect` instances, wire formats the pipeline
  learns (by their ``name``, which ``[[endpoints]] dialect = "..."`` may then pin). Dialects of plugins are
  asked, in config order, before the built-in ones whether they detect a request's path; a name already
  taken (a built-in one, or an earlier plugin's) stays the first one's. Anything else than a named
  ``Dialect`` is a ``ConfigError``. A dialect's methods run on the request path, on every thread and event
  loop: no I/O, stateless, quick (see :class:`~aurelis_core.plugin.Dialect`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import pluggy

# ``Pipeline`` is the pipeline as plugins see it (the Protocol): the concrete class would tie this module into a
# circle through the pipeline, which imports the plugin registry, which imports this module.
if TYPE_CHECKING:
    from ._models import Attempt, CacheEntry, Endpoint, RequestContext
    from ._protocols import Pipeline

__all__ = [
    "ALL",
    "ASYNC_OR_SYNC",
    "EXACTLY_ONE",
    "FIRST_ANSWER",
    "LARGEST_WAIT",
    "PLUGIN_ATTRIBUTES",
    "PROJECT_NAME",
    "STAGES",
    "SYNC_ONLY",
    "UNTIL_HIT",
    "Rule",
    "Stage",
    "hookimpl",
    "hookspec",
    "stage",
]

PROJECT_NAME = "aurelis"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
#: Marks a plugin method as the implementation of the hook of the same name.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# --- the stage table -------------------------------------------------------------------------------------------


class Rule(NamedTuple):
    """Which implementations of a hook run, and how their answers combine."""

    #: How README's hook table says it.
    text: str
    #: The words the hook's docstring states it with (a test checks).
    says: str
    #: pluggy's marker: a call stops at the first non-``None`` answer. The pipeline calls the implementations
    #: itself (in config order, where pluggy calls the last registered first); the marker says the same rule.
    firstresult: bool


#: Every implementation runs, in order.
ALL = Rule("all, in order", "All implementations run", False)
#: In order until one returns something other than ``None``: that answer is the stage's.
FIRST_ANSWER = Rule("first non-`None` answer wins", "First answer wins", True)
#: At most one plugin may implement it (a second is refused when it is registered); without one, a default.
EXACTLY_ONE = Rule("exactly one", "Exactly one", True)
#: Cache tiers, in order, until one returns an entry; the entry is then copied into the tiers before it.
UNTIL_HIT = Rule("tiers in order until a hit", "stops at the first hit", True)
#: Every implementation runs; the stage waits for the largest answer (pluggy cannot say this: it is the
#: pipeline's own rule).
LARGEST_WAIT = Rule("all; the largest wait wins", "largest wait wins", False)


class Style(NamedTuple):
    """How an implementation may be written."""

    text: str
    says: str


#: May be ``def`` or ``async def`` (or return an awaitable only when ``ctx.is_async``): an I/O hook.
ASYNC_OR_SYNC = Style("`def` or `async def`", "``def`` or ``async def``")
#: A plain ``def`` that returns quickly: it runs on the event loop of async clients.
SYNC_ONLY = Style("`def`", "sync only")


class Stage(NamedTuple):
    """One hook of the request path or the life cycle: a row of :data:`STAGES`."""

    #: The hook's name (``aurelis_`` + the pipeline's name for the stage).
    hook: str
    #: Which implementations run.
    runs: Rule
    #: When, and how often, it is called.
    when: str
    #: ``def`` or ``async def``.
    style: Style
    #: Whether an implementation may do I/O.
    io: bool
    #: What it is for, in one line.
    purpose: str
    #: What one implementation is called in messages ("only one router may be enabled").
    role: str = "plugin"

    @property
    def name(self) -> str:
        """The stage's name without the ``aurelis_`` prefix: the field of the pipeline's snapshot."""
        return self.hook[len(PROJECT_NAME) + 1:]


#: The hooks in the order a pipeline meets them: the single source for the pipeline's stage lists, the pluggy
#: markers, the docstring tests and README's hook table.
STAGES: tuple[Stage, ...] = (
    Stage("aurelis_start", ALL, "once, before the first request", ASYNC_OR_SYNC, True,
          "prepare: open connections, warm caches, start background work"),
    Stage("aurelis_close", ALL, "once, at close; the others still run if one raises", ASYNC_OR_SYNC, True,
          "release: flush write-behind queues, close pools"),
    Stage("aurelis_normalize", FIRST_ANSWER, "per request, when a cache tier is enabled", SYNC_ONLY, False,
          "the request's cache key, or `None`: not cacheable"),
    Stage("aurelis_cache_get", UNTIL_HIT, "per request with a key; a hit is promoted upward", ASYNC_OR_SYNC,
          True, "look the key up in one cache tier", "cache tier"),
    Stage("aurelis_cache_set", ALL, "per storable answer, and per promotion", ASYNC_OR_SYNC, True,
          "store an answer in one cache tier", "cache tier"),
    Stage("aurelis_route", EXACTLY_ONE, "per attempt, when endpoints are configured", SYNC_ONLY, False,
          "pick the endpoint of the next attempt", "router"),
    Stage("aurelis_admit", LARGEST_WAIT, "per attempt", ASYNC_OR_SYNC, True,
          "seconds the attempt must wait: rate limits, concurrency"),
    Stage("aurelis_compress", ALL, "per attempt", SYNC_ONLY, False,
          "transform the outgoing request (content coding)"),
    Stage("aurelis_send", EXACTLY_ONE, "per attempt; without one, the client's own transport", ASYNC_OR_SYNC,
          True, "send the request, return the response once its headers arrived", "send engine"),
    Stage("aurelis_attempt_end", ALL, "exactly once per attempt (also on cancel, timeout, stream end)",
          SYNC_ONLY, False, "learn an attempt's outcome: routers, breakers, rate limiters"),
    Stage("aurelis_retry", FIRST_ANSWER, "after a failed attempt that may be sent again", SYNC_ONLY, False,
          "seconds to wait before another attempt, or `None`: no retry"),
    Stage("aurelis_observe", ALL, "exactly once per request (streams: when they end)", SYNC_ONLY, False,
          "record the finished request: metrics, reports"),
)

_BY_HOOK = {row.hook: row for row in STAGES}

#: What a plugin may contribute besides hooks, as an attribute of its instance: name -> what it holds (see the
#: module docstring, "Contributions besides hooks").
PLUGIN_ATTRIBUTES: dict[str, str] = {
    "dialects": "wire formats the pipeline learns: a sequence of named Dialect instances",
}


def stage(hook: str) -> Stage:
    """The row of :data:`STAGES` for ``hook`` (``KeyError`` if it is not a hook)."""
    return _BY_HOOK[hook]


_Spec = TypeVar("_Spec", bound=Callable[..., Any])


def _spec(function: _Spec) -> _Spec:
    """``@hookspec`` with the markers :data:`STAGES` says for this hook, so the two cannot disagree."""
    marked: _Spec = hookspec(firstresult=_BY_HOOK[function.__name__].runs.firstresult)(function)
    return marked


# --- life cycle ----------------------------------------------------------------------------------------------


@_spec
def aurelis_start(pipeline: Pipeline) -> Awaitable[None] | None:
    """Prepare before the first request: open connections, warm caches, start background work.

    All implementations run, in order. May do I/O (``def`` or ``async def``). Called once per pipeline, by
    ``Pipeline.start()`` / ``Pipeline.astart()``, or by the first request (in the client's own mode: sync or
    async) if the user did not call either. ``pipeline.is_async`` tells which mode it is started in.
    """


@_spec
def aurelis_close(pipeline: Pipeline) -> Awaitable[None] | None:
    """Release what ``aurelis_start`` or the requests acquired: flush write-behind queues, close pools.

    All implementations run, in order, even if one raises (the first error is re-raised after). May do I/O
    (``def`` or ``async def``). Called once, by ``Pipeline.close()`` / ``Pipeline.aclose()`` (which closing an
    instrumented client calls).
    """


# --- per request ---------------------------------------------------------------------------------------------


@_spec
def aurelis_normalize(ctx: RequestContext) -> str | None:
    """Return the request's cache key, or ``None`` if the request must not be cached.

    First answer wins: implementations run in order until one returns a key. No I/O, sync only. The key must
    cover everything that can change the answer, including the tenant (credential fingerprint or namespace);
    it must never contain a credential. An implementation may set ``ctx.json`` (the parsed body) and
    ``ctx.stream`` (the caller asked for an event stream) for the stages after it.
    Not called when no cache tier is enabled or ``ctx.controls.skip`` is set.
    """


@_spec
def aurelis_cache_get(ctx: RequestContext) -> CacheEntry | Awaitable[CacheEntry | None] | None:
    """Look ``ctx.key`` up in this cache tier: return the entry, or ``None`` on a miss.

    One implementation per tier; the pipeline asks the tiers in order and stops at the first hit, then
    promotes the entry into the tiers before the one that answered (``aurelis_cache_set`` with
    ``promote=True``). May do I/O (``def`` or ``async def``). An expired entry is a miss. An exception counts
    as a miss.
    """


@_spec
def aurelis_cache_set(ctx: RequestContext, entry: CacheEntry, promote: bool) -> Awaitable[None] | None:
    """Store ``entry`` under ``ctx.key`` in this cache tier.

    All implementations run (one per tier), in order (``promote`` is true when the entry was found in a lower
    tier and is copied up). May do I/O (``def`` or ``async def``); slow tiers should not hold up the response
    (queue the write). An exception is counted and dropped. Only complete 2xx responses that the request
    allows to be stored ever reach this hook, and never a fuzzy entry (``entry.similarity`` set).
    """


@_spec
def aurelis_route(ctx: RequestContext) -> Endpoint | None:
    """Pick the endpoint for the next attempt (``len(ctx.attempts)`` attempts were made before it).

    Exactly one router may be enabled; it is called once per attempt, only when endpoints are configured.
    No I/O, sync only, and cheap: it runs on every request that reaches the network. A router that counts
    in-flight requests increments here and decrements in ``aurelis_attempt_end``, which is guaranteed to follow.
    It picks among ``pipeline.health.serving(ctx, endpoints)``, the endpoints serving the model the request is
    routed for (then ``pipeline.health.candidates(...)`` of those: the available ones).
    Returning ``None`` sends the request to its own URL.
    """


@_spec
def aurelis_admit(ctx: RequestContext, attempt: Attempt) -> float | Awaitable[float | None] | None:
    """Return how many seconds this attempt must wait before it may be sent, or ``None`` to send now.

    All implementations run and the largest wait wins: the pipeline waits for the largest answer. May do I/O
    (``def`` or ``async def``: a shared limit in Redis).
    An implementation that cannot admit the attempt within its bound raises an error for the caller.
    """


@_spec
def aurelis_compress(ctx: RequestContext, attempt: Attempt) -> None:
    """Transform the outgoing request (content coding): replace ``ctx.request`` if it changes it.

    All implementations run, in order. No I/O, sync only.
    """


@_spec
def aurelis_send(ctx: RequestContext, attempt: Attempt) -> Any:
    """Send ``ctx.request`` and return the response (headers received; the body may still be streaming).

    Exactly one send engine may be enabled; without one the wrapped client's own transport sends.
    May do I/O (``def`` or ``async def``): return the response, or an awaitable of it when ``ctx.is_async``.
    Raise httpx's exception types.
    """


@_spec
def aurelis_attempt_end(ctx: RequestContext, attempt: Attempt) -> None:
    """An attempt is over: ``attempt.error`` is set, or its response's body was read or closed.

    All implementations run. No I/O, sync only. Called exactly once per attempt, also on cancellation, timeout
    and abandoned streams: routers release in-flight counts here, breakers and rate limiters learn the outcome.
    """


@_spec
def aurelis_retry(ctx: RequestContext, attempt: Attempt) -> float | None:
    """Decide whether to try again after a failed attempt: seconds to wait before the next one, or ``None``.

    First answer wins. No I/O, sync only. Called after an attempt that raised or answered with a status
    >= 400, before any of its body reached the caller (so a stream is never retried after its first byte).
    Not called for a request that may not be sent again: one whose body is a one-shot stream, or one signed
    for a single attempt (SigV4 and the like); the attempt's error or answer then goes to the caller as it is.
    """


@_spec
def aurelis_observe(ctx: RequestContext) -> None:
    """The request is over (for a streamed body: when the stream ended or was closed). Record what happened.

    All implementations run. No I/O, sync only: exporters that do I/O must queue. ``ctx.error`` holds the
    exception the caller got, if any; ``ctx.cache_status`` / ``ctx.cache_tier`` where the answer came from.
    """
