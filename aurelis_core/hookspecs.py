"""The hooks a plugin can implement: the pipeline's stages, in the order a request meets them.

A request flows through::

    normalize -> cache_get -> route -> admit -> compress -> send -> attempt_end -> retry? -> cache_set -> observe

(``route`` to ``retry`` form the attempt loop: a retry goes back to ``route``.) Read this module with
:mod:`aurelis_core.pipeline`, which runs the stages: together they are the whole request path.

Calling conventions
-------------------
pluggy only declares these hooks; the pipeline calls the implementations itself, from per-stage lists that it
rebuilds whenever a plugin is registered or unregistered. pluggy's own call machinery (about 1-2 us per hook)
would be paid seven times per request, and pluggy cannot await ``async def`` implementations. So:

- **order**: implementations run in the order their plugins are listed in the config's ``plugins``.
- **I/O hooks** (marked *may do I/O*) may be written as ``def`` or ``async def``, or return an awaitable only
  when ``ctx.is_async`` is true. An async client awaits the result. A sync client calls ``def`` implementations
  directly and runs an awaitable on the pipeline's private event-loop thread (which works, but costs a thread
  hop: a plugin that serves sync clients well returns a plain value when ``ctx.is_async`` is false).
- **no-I/O hooks** are plain ``def`` and must return quickly: they run on the event loop of async clients.
- A hook raising an exception fails the request, except in the cache tiers: a tier that raises is treated as a
  miss (for ``cache_get``) or a dropped write (for ``cache_set``), counted in the stats and logged, because a
  cache must never fail the caller's request.

Every hook is prefixed ``aurelis_``. A plugin is a class whose instance carries ``@hookimpl`` methods; see
:mod:`aurelis_core.plugin`, the plugin API, for how a plugin is written and everything it may import.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import pluggy

# ``Pipeline`` is the pipeline as plugins see it (the Protocol): the concrete class would tie this module into a
# circle through the pipeline, which imports the plugin registry, which imports this module.
if TYPE_CHECKING:
    from ._models import Attempt, CacheEntry, Endpoint, RequestContext
    from ._protocols import Pipeline

__all__ = ["PROJECT_NAME", "hookimpl", "hookspec"]

PROJECT_NAME = "aurelis"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
#: Marks a plugin method as the implementation of the hook of the same name.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# --- life cycle ----------------------------------------------------------------------------------------------


@hookspec
def aurelis_start(pipeline: Pipeline) -> Awaitable[None] | None:
    """Prepare before the first request: open connections, warm caches, start background work.

    All implementations run, in order. May do I/O. Called once per pipeline, by ``Pipeline.start()`` /
    ``Pipeline.astart()``, or by the first request (in the client's own mode: sync or async) if the user did
    not call either. ``pipeline.is_async`` tells which mode it is started in.
    """


@hookspec
def aurelis_close(pipeline: Pipeline) -> Awaitable[None] | None:
    """Release what ``aurelis_start`` or the requests acquired: flush write-behind queues, close pools.

    All implementations run, in order, even if one raises (the first error is re-raised after). May do I/O.
    Called once, by ``Pipeline.close()`` / ``Pipeline.aclose()`` (which closing an instrumented client calls).
    """


# --- per request ---------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def aurelis_normalize(ctx: RequestContext) -> str | None:
    """Return the request's cache key, or ``None`` if the request must not be cached.

    First answer wins: implementations run in order until one returns a key. No I/O, sync only. The key must
    cover everything that can change the answer, including the tenant (credential fingerprint or namespace);
    it must never contain a credential. An implementation may set ``ctx.json`` (the parsed body) and
    ``ctx.stream`` (the caller asked for an event stream) for the stages after it.
    Not called when no cache tier is enabled or ``ctx.controls.skip`` is set.
    """


@hookspec
def aurelis_cache_get(ctx: RequestContext) -> CacheEntry | Awaitable[CacheEntry | None] | None:
    """Look ``ctx.key`` up in this cache tier: return the entry, or ``None`` on a miss.

    One implementation per tier; the pipeline asks the tiers in order and stops at the first hit, then
    promotes the entry into the tiers before the one that answered (``aurelis_cache_set`` with
    ``promote=True``). May do I/O. An expired entry is a miss. An exception counts as a miss.
    """


@hookspec
def aurelis_cache_set(ctx: RequestContext, entry: CacheEntry, promote: bool) -> Awaitable[None] | None:
    """Store ``entry`` under ``ctx.key`` in this cache tier.

    All tiers run, in order (``promote`` is true when the entry was found in a lower tier and is copied up).
    May do I/O; slow tiers should not hold up the response (queue the write). An exception is counted and
    dropped. Only complete 2xx responses that the request allows to be stored ever reach this hook.
    """


@hookspec(firstresult=True)
def aurelis_route(ctx: RequestContext) -> Endpoint | None:
    """Pick the endpoint for the next attempt (``len(ctx.attempts)`` attempts were made before it).

    Exactly one router may be enabled; it is called once per attempt, only when endpoints are configured.
    No I/O, sync only, and cheap: it runs on every request that reaches the network. A router that counts
    in-flight requests increments here and decrements in ``aurelis_attempt_end``, which is guaranteed to follow.
    Returning ``None`` sends the request to its own URL.
    """


@hookspec
def aurelis_admit(ctx: RequestContext, attempt: Attempt) -> float | Awaitable[float | None] | None:
    """Return how many seconds this attempt must wait before it may be sent, or ``None`` to send now.

    All implementations run; the pipeline waits for the largest answer. May do I/O (a shared limit in Redis).
    An implementation that cannot admit the attempt within its bound raises an error for the caller.
    """


@hookspec
def aurelis_compress(ctx: RequestContext, attempt: Attempt) -> None:
    """Transform the outgoing request (content coding): replace ``ctx.request`` if it changes it.

    All implementations run, in order. No I/O, sync only.
    """


@hookspec(firstresult=True)
def aurelis_send(ctx: RequestContext, attempt: Attempt) -> Any:
    """Send ``ctx.request`` and return the response (headers received; the body may still be streaming).

    Exactly one send engine may be enabled; without one the wrapped client's own transport sends.
    May do I/O: return the response, or an awaitable of it when ``ctx.is_async``. Raise httpx's exception types.
    """


@hookspec
def aurelis_attempt_end(ctx: RequestContext, attempt: Attempt) -> None:
    """An attempt is over: ``attempt.error`` is set, or its response's body was read or closed.

    All implementations run. No I/O, sync only. Called exactly once per attempt, also on cancellation, timeout
    and abandoned streams: routers release in-flight counts here, breakers and rate limiters learn the outcome.
    """


@hookspec(firstresult=True)
def aurelis_retry(ctx: RequestContext, attempt: Attempt) -> float | None:
    """Decide whether to try again after a failed attempt: seconds to wait before the next one, or ``None``.

    First answer wins. No I/O, sync only. Called after an attempt that raised or answered with a status
    >= 400, before any of its body reached the caller (so a stream is never retried after its first byte).
    Not called for a request that may not be sent again: one whose body is a one-shot stream, or one signed
    for a single attempt (SigV4 and the like); the attempt's error or answer then goes to the caller as it is.
    """


@hookspec
def aurelis_observe(ctx: RequestContext) -> None:
    """The request is over (for a streamed body: when the stream ended or was closed). Record what happened.

    All implementations run. No I/O, sync only: exporters that do I/O must queue. ``ctx.error`` holds the
    exception the caller got, if any; ``ctx.cache_status`` / ``ctx.cache_tier`` where the answer came from.
    """
