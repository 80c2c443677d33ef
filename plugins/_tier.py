"""What the slow, shared cache tiers (``redis``, ``sqlite``) have in common.

Both write behind (a :class:`~aurelis_plugins._writebehind.WriteBehind` queue and :class:`HitCounts`), can warm
the first tier (``memory``) at start-up from their most hit entries, count and log failed writes once per burst, and
close the same way: hand off pending hit counts, write out the queue, then release their connections. A tier
subclass provides its own reads and writes, ``top``/``atop`` (the most hit live entries), ``_aclose_async``
(its async connections) and ``_close_sync`` (its sync ones).
"""

from __future__ import annotations

import logging
from typing import Any

import attrs

from aurelis_core.plugin import CacheEntry, component_logger, hookimpl, log_fault, positive_int, worth_logging

from . import _tier_async, _tier_sync
from ._writebehind import HitCounts, WriteBehind

__all__ = ["WarmConfig", "WriteBehindTier"]


@attrs.frozen
class WarmConfig:
    """``warm = {on_start = true, top = 1000}``: at start-up, copy this tier's ``top`` most hit live entries
    into the first tier that can take them (``memory``; see :mod:`aurelis_plugins._warm`)."""

    #: Warm the first tier from this one when the pipeline starts.
    on_start: bool = False
    #: How many of the most hit live entries are copied.
    top: int = attrs.field(default=1000, validator=positive_int)


class WriteBehindTier:
    """Base class of the write-behind tiers; see the module docstring for what a subclass provides."""

    name: str
    config: Any
    pipeline: Any
    queue: WriteBehind[Any]
    hits: HitCounts

    # --- warming -------------------------------------------------------------------------------------------------

    @hookimpl
    def aurelis_start(self, pipeline: Any) -> Any:
        if not self.config.warm.on_start:
            return None
        # Written once, async, in ``_tier_async``; ``_tier_sync`` is generated from it (``aurelis_core._unasync``).
        if pipeline.is_async:
            return _tier_async.warm(self, pipeline)
        _tier_sync.warm(self, pipeline)
        return None

    def top(self, count: int) -> list[tuple[str, CacheEntry]]:
        raise NotImplementedError

    async def atop(self, count: int) -> list[tuple[str, CacheEntry]]:
        raise NotImplementedError

    # --- closing -------------------------------------------------------------------------------------------------

    @hookimpl
    def aurelis_close(self, pipeline: Any) -> Any:
        self.hits.hand_off(bool(pipeline.is_async))
        if pipeline.is_async:
            return self._aclose()
        self.queue.close()
        self._close_sync()
        return None

    async def _aclose(self) -> None:
        # Not a twin of the sync close above, on purpose: from async code, the connections opened for sync
        # clients are closed too (a pipeline used by both kinds of client is closed once).
        await self.queue.aclose()
        await self._aclose_async()
        self._close_sync()

    async def _aclose_async(self) -> None:
        """Close the connections opened for async clients."""

    def _close_sync(self) -> None:
        """Close the connections opened for sync clients (and, from sync code, any others left)."""

    # --- write-behind bookkeeping --------------------------------------------------------------------------------

    def _write_failed(self, exc: BaseException) -> None:
        # Counted always, logged once per burst: a dead tier must not flood the log.
        count = self.pipeline.stats.tier_error(self.name, "write")
        if worth_logging(count):
            where = getattr(self, "location", None)
            log_fault(
                component_logger(f"cache.{self.name}"), logging.WARNING, "cache tier %r%s failed to write (%d so far)",
                self.name, f" at {where}" if where else "", count, error=exc,
            )

    def _dropped(self) -> None:
        self.pipeline.stats.tier_error(self.name, "dropped")

    def flush(self) -> None:
        """Wait for the sync write-behind queue to be written (tests, the CLI)."""
        self.queue.flush()

    async def aflush(self) -> None:
        await self.queue.aflush()
