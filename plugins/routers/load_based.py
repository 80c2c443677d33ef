"""``load_based``: power of two choices on outstanding tokens, scaled by the upstream's rate-limit headroom.

LLM endpoints are limited in tokens per minute as much as in concurrency, and they say how close they are:
OpenAI-compatible APIs answer with ``x-ratelimit-limit-tokens``, ``x-ratelimit-remaining-tokens``,
``x-ratelimit-reset-tokens`` (and the same for ``-requests``), Anthropic with ``anthropic-ratelimit-tokens-*``
(each attempt's dialect reads them: :meth:`aurelis_core.plugin.Dialect.rate_limits`). This router keeps, per
endpoint, the tokens of the attempts it has in flight (prompt estimate plus expected output, see :mod:`._base`)
and the latest headroom those headers reported, and scores a candidate as::

    (outstanding_tokens / weight + this_request_tokens) / (1 - utilisation + headroom_floor)

where ``utilisation = 1 - remaining / limit`` (the larger of tokens and requests) until the reported reset,
then 0. Of two random candidates (drawn in proportion to weight and slow-start ramp) the lower score wins
(O(1)). A candidate whose reported remaining tokens
cannot cover this request (or whose remaining requests are 0) before its reset is skipped: sending there
would only earn a 429. A 429 without such headers marks the endpoint exhausted for its ``retry-after`` (or
``retry-after-ms``). If every candidate is exhausted the least-bad one is used (the rate limiter or retry
stage decides whether to wait).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import attrs

from aurelis_core.plugin import Attempt, Endpoint, OpenAI, RequestContext, positive, retry_after

from ._base import Router, RouterConfig

__all__ = ["LoadBased", "LoadBasedConfig"]

#: How an attempt made outside a pipeline (without a dialect) is read.
OPENAI = OpenAI()


@attrs.frozen
class LoadBasedConfig(RouterConfig):
    """Options of ``load_based``."""

    #: Added to the headroom ``1 - utilisation`` so an exhausted endpoint's score stays finite: the smaller,
    #: the harder a nearly exhausted endpoint is avoided.
    headroom_floor: float = attrs.field(default=0.02, validator=positive)


class _Budget:
    """One endpoint's outstanding tokens and the rate-limit headroom it last reported."""

    __slots__ = (
        "limit_requests", "limit_tokens", "outstanding", "remaining_requests", "remaining_tokens",
        "reset_requests", "reset_tokens",
    )

    def __init__(self) -> None:
        self.outstanding = 0
        self.limit_tokens = 0
        self.remaining_tokens = 0
        self.reset_tokens = -math.inf
        self.limit_requests = 0
        self.remaining_requests = 0
        self.reset_requests = -math.inf


class LoadBased(Router):
    """The ``load_based`` plugin. Options: ``seed``, ``headroom_floor``, ``default_output_tokens``."""

    name = "load_based"
    Config = LoadBasedConfig
    config: LoadBasedConfig

    def __init__(self, config: LoadBasedConfig | None, pipeline: Any, **kwargs: Any) -> None:
        super().__init__(config, pipeline, **kwargs)
        self.budgets = [_Budget() for _ in self.endpoints]

    # --- picking -------------------------------------------------------------------------------------------------

    def _pick(self, ctx: RequestContext, candidates: Sequence[Endpoint], now: float) -> int:
        tokens = self._profile(ctx).tokens
        # A few random pairs find a non-exhausted pair in O(1) expected time; only if they all fail is the
        # candidate list scanned.
        for _ in range(3):
            a, b = self._two(candidates, now)
            score_a = self._score(a, tokens, now)
            score_b = self._score(b, tokens, now)
            if score_a < math.inf or score_b < math.inf:
                return b if score_b < score_a else a
        best, best_score = self._index[candidates[0].name], math.inf
        for endpoint in candidates:
            index = self._index[endpoint.name]
            score = self._score(index, tokens, now)
            if score < best_score:
                best, best_score = index, score
        if best_score < math.inf:
            return best
        # Everyone is exhausted: the least outstanding work, whatever the headroom.
        return min((self._index[e.name] for e in candidates), key=lambda i: self.budgets[i].outstanding)

    def _score(self, index: int, tokens: int, now: float) -> float:
        """Lower is better; ``inf`` when the endpoint reported it cannot take ``tokens`` before its reset."""
        budget = self.budgets[index]
        utilisation = 0.0
        if now < budget.reset_tokens:
            if budget.remaining_tokens < tokens:
                return math.inf
            if budget.limit_tokens > 0:
                utilisation = 1.0 - budget.remaining_tokens / budget.limit_tokens
        if now < budget.reset_requests:
            if budget.remaining_requests <= 0:
                return math.inf
            if budget.limit_requests > 0:
                utilisation = max(utilisation, 1.0 - budget.remaining_requests / budget.limit_requests)
        headroom = 1.0 - utilisation + self.config.headroom_floor
        return (budget.outstanding / self.endpoints[index].weight + tokens) / headroom

    # --- accounting ----------------------------------------------------------------------------------------------

    def _sent(self, index: int, ctx: RequestContext, now: float) -> None:
        self.budgets[index].outstanding += self._profile(ctx).tokens

    def _released(self, index: int, ctx: RequestContext) -> None:
        budget = self.budgets[index]
        budget.outstanding = max(0, budget.outstanding - self._profile(ctx).tokens)

    def _learn(self, index: int, ctx: RequestContext, attempt: Attempt, now: float) -> None:
        headers = attempt.headers
        if headers is None:
            return
        budget = self.budgets[index]
        # As the attempt's dialect reads them: x-ratelimit-*, anthropic-ratelimit-*...
        reported = (attempt.dialect or OPENAI).rate_limits(headers)
        if reported is not None:
            if reported.remaining_tokens is not None:
                _update(budget, "tokens", reported.remaining_tokens, reported.limit_tokens, reported.reset_tokens, now)
            if reported.remaining_requests is not None:
                _update(budget, "requests", reported.remaining_requests, reported.limit_requests,
                        reported.reset_requests, now)
        if attempt.status_code == 429 and (reported is None or reported.remaining_requests is None):
            wait = retry_after(headers)
            if wait is not None:
                budget.remaining_requests = 0
                budget.reset_requests = max(budget.reset_requests, now + wait)


def _update(
    budget: _Budget, kind: str, remaining: float, limit: float | None, reset: float | None, now: float
) -> None:
    """Store one kind (``tokens`` or ``requests``) of reported headroom (malformed values were left out)."""
    left = int(remaining)
    limit = int(limit or 0)
    # Without a reset time the report is trusted for one minute, the usual limit window.
    setattr(budget, f"remaining_{kind}", left)
    setattr(budget, f"limit_{kind}", limit)
    setattr(budget, f"reset_{kind}", now + (reset if reset is not None else 60.0))
