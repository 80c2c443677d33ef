"""Warming the first tier from a write-behind tier (``redis``, ``sqlite``) at start-up, written once.

``_tier_async`` (for async pipelines) is the source; ``_tier_sync`` (for sync ones) is generated from it by
``python -m aurelis_core._unasync``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from aurelis_core.plugin import component_logger, log_fault
from aurelis_plugins._warm import copy_into_first_tier

if TYPE_CHECKING:
    from ._tier import WriteBehindTier


async def warm(tier: WriteBehindTier, pipeline: Any) -> None:
    """Copy the tier's most hit live entries into the first tier that takes them (``memory``). A failure is logged,
    never raised: warming is an optimisation, and must not fail the first request."""
    try:
        copy_into_first_tier(pipeline, tier.name, await tier.atop(tier.config.warm.top))
    except Exception as exc:
        log_fault(component_logger(f"cache.{tier.name}"), logging.WARNING, "warming from cache tier %r failed",
                  tier.name, error=exc)
