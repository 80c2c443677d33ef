"""The shared rate limiter's calls to Redis, written once.

``_gcra_async`` (for async clients) is the source; ``_gcra_sync`` (for sync clients) is generated from it by
``python -m aurelis_core._unasync``. Each mode has its own redis-py client (the sync module's or the asyncio
one's, one per event loop), made on first use by :class:`~aurelis_plugins._gcra.RedisGCRA`, which is hand-written
for that reason, as is closing them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ._gcra import _reservation

if TYPE_CHECKING:
    from ._gcra import RedisGCRA, Reservation, Spec


async def reserve(limiter: RedisGCRA, specs: Sequence[Spec], max_wait: float) -> Reservation:
    """Reserve ``specs`` in one script call, which also applies the corrections queued since the last one. A
    failure (raised) starts the limiter's cool-off; an answer ends it."""
    keys, args = limiter._args(specs, max_wait)
    try:
        # Inside: building a Cluster client already talks to the cluster, and may fail like any call.
        script = limiter._async_script()
        reply = await script(keys=keys, args=args)
    except limiter.errors:
        limiter.cooloff.failed()
        raise
    limiter.cooloff.answered()
    return _reservation(reply)
