"""What plugins may rely on in each other and in the pipeline, declared as Protocols.

A plugin is duck-typed: nothing forces it to derive from a base class. The parts of Aurelis that talk to plugins
beyond the hooks (``aurelis cache``, warming, the tuner's memory relief, the error that asks for a router) ask
for a *capability*, never for a plugin by name: "the first tier that can ``put``", "every tier that can
``shrink``". These Protocols are those capabilities, written down, so a third-party tier that implements
``put`` is warmed like the built-in ``memory`` tier, and one that implements ``stats``/``top``/``put``/``clear``
is managed by ``aurelis cache`` like ``redis`` and ``sqlite``. They are ``runtime_checkable``: ``isinstance``
tells whether a plugin has the methods (not their signatures: a type checker checks those).

:class:`Pipeline` is what a plugin may use of the pipeline it is built for; the concrete
:class:`aurelis_core.Pipeline` has more (``pm``, ``register``...), which is not for plugins.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ._models import CacheEntry, Endpoint, RequestContext
    from ._tenant import Tenant
    from .config import Config
    from .health import EndpointHealth
    from .stats import Stats

__all__ = ["CacheTier", "Pipeline", "Router", "ShrinkableTier", "WarmTarget"]


@runtime_checkable
class Pipeline(Protocol):
    """What a plugin may use of the pipeline it is built for (``__init__(self, config, pipeline)``, and the
    argument of ``aurelis_start``/``aurelis_close``).

    Annotate with it (``pipeline: Pipeline``) and a type checker tells you when a plugin reaches for something
    that is not part of this contract.
    """

    @property
    def config(self) -> Config:
        """The whole configuration (``config.tables[name]`` holds any plugin's raw table)."""

    @property
    def endpoints(self) -> Sequence[Endpoint]:
        """The configured endpoints, in config order (empty: requests go to their own URL)."""

    @property
    def stats(self) -> Stats:
        """The pipeline's counters and samples: a plugin counts its events in ``stats.counters``."""

    @property
    def health(self) -> EndpointHealth:
        """Which endpoints routers may pick: breakers and rate limiters write it, routers read it."""

    @property
    def tenant(self) -> Tenant:
        """Who is asking and what scopes an answer: the one definition every plugin scopes by."""

    @property
    def is_async(self) -> bool | None:
        """Whether the pipeline was started for async clients (``None`` before it starts)."""

    @property
    def tiers(self) -> tuple[str, ...]:
        """The names of the cache tier plugins, in the order a lookup asks them (those of :meth:`cache_tiers`)."""

    def cache_tiers(self) -> tuple[object, ...]:
        """The cache tier plugins (those implementing ``aurelis_cache_get``), in the order a lookup asks them.

        Find a tier by what it can do, not by its name: ``[t for t in pipeline.cache_tiers() if
        isinstance(t, ShrinkableTier)]``.
        """

    def plugin(self, name: str) -> Any:
        """The registered plugin instance called ``name`` (``KeyError`` naming the registered ones if none).

        For users and tests looking at one plugin; a plugin that needs another's capability should look for it
        with :meth:`cache_tiers` and a Protocol instead, so any plugin that offers it will do.
        """


@runtime_checkable
class WarmTarget(Protocol):
    """A cache tier that stores an entry under a key on request: what warming copies entries into.

    A tier with ``warm = {on_start = true}`` copies its most hit entries into the first tier of the pipeline
    that is a ``WarmTarget``, when that tier is asked before it (``memory``, in the usual layout).
    """

    def put(self, key: str, entry: CacheEntry) -> bool:
        """Store ``entry`` under the cache key ``key`` now; ``False`` if the tier does not take it (expired,
        too large)."""


@runtime_checkable
class ShrinkableTier(Protocol):
    """A cache tier held in the process's memory that can give some of it back (the ``tuner``'s
    ``max_rss_bytes`` relief asks every such tier that holds anything)."""

    @property
    def currsize(self) -> int:
        """Bytes held now."""

    @property
    def budget(self) -> int:
        """Bytes the tier may hold now."""

    def shrink(self, fraction: float) -> int:
        """Give back ``fraction`` (in (0, 1]) of what is held, and keep the lower budget; returns bytes freed."""


@runtime_checkable
class CacheTier(Protocol):
    """A cache tier that can be looked at and managed from outside the application's process: what
    ``aurelis cache stats|warm|clear`` works with (``redis`` and ``sqlite`` are; ``memory``, which lives and dies
    with each application process, is not).

    ``max_entry_bytes`` is the largest entry the tier stores (``None``: no limit); the pipeline does not buffer
    an answer announced larger than every tier's limit. Any tier may expose it, managed or not.
    """

    @property
    def max_entry_bytes(self) -> int | None:
        """The largest entry (body and headers, in bytes) the tier stores; ``None``: no limit."""

    def put(self, key: str, entry: CacheEntry) -> bool:
        """Store ``entry`` under the cache key ``key`` now (not written behind); ``False`` if it is not taken."""

    def top(self, count: int) -> list[tuple[str, CacheEntry]]:
        """The ``count`` most hit live entries, most hit first, with their cache keys."""

    def stats(self) -> dict[str, Any]:
        """What the tier holds (entries, bytes, hits...), as JSON-able figures."""

    def clear(self) -> int:
        """Delete every entry the tier wrote; returns how many. ``RuntimeError`` if the tier refuses its store."""


@runtime_checkable
class Router(Protocol):
    """A routing plugin: exactly one may be enabled, and pipelines with several endpoints need one.

    ``aurelis_route`` (a ``@hookimpl``) picks the endpoint of each attempt; a router that counts attempts in
    flight also implements ``aurelis_attempt_end``, which the core calls exactly once per attempt.
    """

    def aurelis_route(self, ctx: RequestContext) -> Endpoint | None:
        """The endpoint for the next attempt, or ``None`` to send the request to its own URL."""
