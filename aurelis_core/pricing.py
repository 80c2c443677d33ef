"""Model prices, from the ``[pricing]`` table: what an answer cost, and what a cache hit saved.

Nothing is fetched: prices change, differ by contract and region, and a library that phones home for them
would be wrong and slow. The user writes the prices they pay, in USD per million tokens, one table per model::

    [pricing]
    "gpt-4o" = { input = 2.50, output = 10.00, cached_input = 1.25 }
    "gpt-4o-mini*" = { input = 0.15, output = 0.60 }

A model's price is its exact name's, else the first glob pattern (``*``, ``?``, ``[...]``, as in
:mod:`fnmatch`, case-sensitive) that matches, in the order the table lists them. ``cached_input`` is the price
of the prompt tokens the provider served from its own prompt cache (``usage...cached_tokens``); without it they
cost the ``input`` price.

:class:`Pricing` is ``pipeline.config.pricing``; everything that turns tokens into money (the ``prometheus``
plugin, reports) asks it, so one table prices everything alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from fnmatch import fnmatchcase

import attrs

from ._models import Usage
from .validators import non_negative

__all__ = ["ModelPrice", "Pricing"]

#: Distinct model names whose price lookup is remembered (a glob match is a scan of the patterns): the first
#: ones seen, which are the ones a deployment keeps asking for; later names are looked up each time.
_REMEMBERED = 1024


@attrs.frozen
class ModelPrice:
    """What one model costs, in USD per million tokens."""

    #: USD per million input (prompt) tokens.
    input: float = attrs.field(validator=non_negative)
    #: USD per million output (completion) tokens.
    output: float = attrs.field(validator=non_negative)
    #: USD per million input tokens the provider served from its prompt cache (``None``: the ``input`` price).
    cached_input: float | None = attrs.field(default=None, validator=attrs.validators.optional(non_negative))

    def cost(self, usage: Usage) -> float:
        """USD the answer with ``usage`` cost at these prices."""
        cached = min(usage.cached_input, usage.input)
        cached_price = self.input if self.cached_input is None else self.cached_input
        return ((usage.input - cached) * self.input + cached * cached_price + usage.output * self.output) / 1e6


def _is_glob(name: str) -> bool:
    return any(char in name for char in "*?[")


@attrs.frozen
class Pricing:
    """Prices by model name (exact names first, then glob patterns in table order). Empty: no pricing."""

    prices: Mapping[str, ModelPrice] = attrs.field(factory=dict)
    _exact: dict[str, ModelPrice] = attrs.field(init=False, eq=False, repr=False)
    _globs: tuple[tuple[str, ModelPrice], ...] = attrs.field(init=False, eq=False, repr=False)
    _found: dict[str, ModelPrice | None] = attrs.field(init=False, eq=False, repr=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_exact", {k: v for k, v in self.prices.items() if not _is_glob(k)})
        object.__setattr__(self, "_globs", tuple((k, v) for k, v in self.prices.items() if _is_glob(k)))

    def __bool__(self) -> bool:
        return bool(self.prices)

    def price(self, model: str | None) -> ModelPrice | None:
        """The price of ``model``, or ``None`` when the table names no price for it."""
        if model is None:
            return None
        price = self._exact.get(model)
        if price is not None or not self._globs:
            return price
        found = self._found
        if model in found:
            return found[model]
        price = next((p for pattern, p in self._globs if fnmatchcase(model, pattern)), None)
        if len(found) < _REMEMBERED:
            found[model] = price
        return price

    def cost(self, model: str | None, usage: Usage | None) -> float | None:
        """USD an answer of ``model`` with ``usage`` cost; ``None`` when either is unknown."""
        if usage is None:
            return None
        price = self.price(model)
        return None if price is None else price.cost(usage)
