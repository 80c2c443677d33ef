"""``round_robin``: each endpoint in turn, in proportion to its ``weight``; no feedback from responses.

Earliest-deadline-first scheduling (see :class:`~aurelis_plugins.routers._base.EDFScheduler`): with equal
weights it is plain round robin from a random starting point; with weights ``[3, 1]`` the sequence is
``a a b a a a b a...``, smoothly interleaved rather than in bursts. The endpoints serving a model take turns
among themselves (an endpoint serving two models takes its turns for each). An endpoint in slow start after a recovery
gets its turns spaced by its reduced weight. A pick costs O(log n).

It is the baseline the adaptive routers are measured against: it keeps sending a slow or failing endpoint its
full share (only the health registry's exclusions stop it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aurelis_core.plugin import Endpoint, RequestContext

from ._base import EDFScheduler, Router, RouterConfig

__all__ = ["RoundRobin"]


class RoundRobin(Router):
    """The ``round_robin`` plugin. Options: ``seed``."""

    name = "round_robin"
    Config = RouterConfig

    def __init__(self, config: RouterConfig | None, pipeline: Any, **kwargs: Any) -> None:
        super().__init__(config, pipeline, **kwargs)
        self._weights = [e.weight for e in self.endpoints]
        #: One schedule for every endpoint, and one for the endpoints of each model not all of them serve.
        self._schedulers: dict[frozenset[int] | None, EDFScheduler] = {}
        self._now = 0.0

    def _pick(self, ctx: RequestContext, candidates: Sequence[Endpoint], now: float) -> int:
        self._now = now
        return self._schedule(self._schedulers, self._weights).pick(self._turn_weight, self._allowed(candidates))

    def _turn_weight(self, index: int) -> float:
        return self._weight(index, self._now)
