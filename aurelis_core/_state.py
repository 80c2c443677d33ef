"""Typed per-request state: what plugins keep about one request, and what they tell each other through it.

``RequestContext.state`` is a dict every plugin may write into. A plugin that keeps notes about one request
(what a rate limiter reserved, when an attempt was counted) needs a key that no other plugin uses, and a
plugin that *reads* another's notes needs to know their type. A :class:`StateKey` gives both, the way pytest's
``StashKey`` does for its ``Stash``: the key object itself is the dict key, so two keys never collide, whatever
their names, and its type parameter types what is stored under it::

    from aurelis_core.plugin import StateKey

    STARTED = StateKey[float]("my_plugin.started")     # at module level, once

    STARTED.set(ctx, time.monotonic())                  # mypy checks the value is a float
    started = STARTED.get(ctx)                          # float | None

A key defined by the core is a contract between plugins that do not know each other:
:data:`FAILED_ENDPOINTS` is written by retry policies and read by routers, so neither names the other;
:data:`DEADLINE` is written by retry policies and read by the core's model fallbacks.

Cost: ``key.get(ctx)`` is one method call and one dict lookup, ~65 ns against ~30 ns for ``ctx.state.get("x")``
(``timeit``, 3.11, unloaded); the keys the core defines are read only on retries, never on a first attempt.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast, overload

if TYPE_CHECKING:
    from ._models import RequestContext

__all__ = ["DEADLINE", "FAILED_ENDPOINTS", "Deadline", "StateKey"]

T = TypeVar("T")
D = TypeVar("D")


class StateKey(Generic[T]):
    """A key into ``ctx.state`` whose values are of type ``T``.

    Make one per kind of note, at module level (``StateKey[set[str]]("failed_endpoints")``); ``name`` only
    says what it is in a ``repr``: the key object itself, not its name, is what ``ctx.state`` is keyed by, so
    two keys with the same name are still two keys. Values live as long as the request's context.
    """

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    @overload
    def get(self, ctx: RequestContext) -> T | None: ...

    @overload
    def get(self, ctx: RequestContext, default: D) -> T | D: ...

    def get(self, ctx: RequestContext, default: Any = None) -> Any:
        """The value stored under this key for ``ctx``'s request, or ``default`` (``None``) if there is none."""
        return ctx.state.get(cast(str, self), default)

    def set(self, ctx: RequestContext, value: T) -> None:
        """Store ``value`` under this key for ``ctx``'s request (replacing what was there)."""
        ctx.state[cast(str, self)] = value

    def setdefault(self, ctx: RequestContext, default: T) -> T:
        """The value stored under this key; if there is none, ``default``, stored first."""
        return cast(T, ctx.state.setdefault(cast(str, self), default))

    @overload
    def pop(self, ctx: RequestContext) -> T | None: ...

    @overload
    def pop(self, ctx: RequestContext, default: D) -> T | D: ...

    def pop(self, ctx: RequestContext, default: Any = None) -> Any:
        """Remove the value stored under this key and return it, or ``default`` (``None``) if there was none."""
        return ctx.state.pop(cast(str, self), default)

    def __repr__(self) -> str:
        return f"<StateKey {self.name!r}>"


#: Names of the endpoints that failed during this request (for a request without endpoints, its origin URL),
#: which its next attempt should avoid while another endpoint is left. A retry policy adds the endpoint of each
#: attempt it retries, including attempts refused before the network (an open circuit, a rate limit); routers
#: read it. Absent until a retry policy writes it.
FAILED_ENDPOINTS: StateKey[set[str]] = StateKey("failed_endpoints")


class Deadline:
    """The moment past which no more attempts start for one request, on the clock it is counted on.

    ``at`` is a reading of ``clock`` (for the ``retry`` plugin: ``RequestContext.started`` plus its ``deadline``
    option, on ``time.perf_counter`` unless a test replaced the plugin's clock).
    """

    __slots__ = ("at", "clock")

    def __init__(self, at: float, clock: Callable[[], float]) -> None:
        self.at = at
        self.clock = clock

    def left(self) -> float:
        """Seconds until the deadline; zero or less once it has passed."""
        return self.at - self.clock()

    def __repr__(self) -> str:
        return f"<Deadline in {self.left():.3g} s>"


#: When the request must be over: written by a retry policy that has a deadline (``retry``'s ``deadline``) the
#: first time it is asked about the request, read by whatever would start another attempt without it: the
#: core's model fallbacks start none once it has passed. Absent without such a policy.
DEADLINE: StateKey[Deadline] = StateKey("deadline")
