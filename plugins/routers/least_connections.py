"""``least_connections``: power of two choices on in-flight requests.

Two distinct candidates are drawn at random (in proportion to their ``weight``, and to their slow-start
ramp after a recovery) and the one with fewer attempts in flight from this process per unit of weight wins;
a tie goes to the first drawn, so with equal load the traffic splits by weight. Comparing two instead of
scanning all keeps a pick O(1) and, unlike "the global least", does not send every client process to the
same momentarily idle endpoint (Mitzenmacher's power of two choices: nearly the balance of a full scan,
without the herd). A slow endpoint holds its requests longer, so it keeps more in flight and is offered
fewer new ones: latency feedback without measuring latency.
"""

from __future__ import annotations

from collections.abc import Sequence

from aurelis_core.plugin import Endpoint, RequestContext

from ._base import Router, RouterConfig

__all__ = ["LeastConnections"]


class LeastConnections(Router):
    """The ``least_connections`` plugin. Options: ``seed``."""

    name = "least_connections"
    Config = RouterConfig

    def _pick(self, ctx: RequestContext, candidates: Sequence[Endpoint], now: float) -> int:
        a, b = self._two(candidates, now)
        endpoints = self.endpoints
        inflight = self.inflight
        # in_flight_b / weight_b < in_flight_a / weight_a, cross-multiplied to avoid two divisions.
        return b if inflight[b] * endpoints[a].weight < inflight[a] * endpoints[b].weight else a
