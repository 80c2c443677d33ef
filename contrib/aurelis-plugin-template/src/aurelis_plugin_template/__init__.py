"""``request_counter``: counts finished requests by outcome -- the smallest complete Aurelis plugin.

A plugin is a class with a ``name``, an optional attrs ``Config`` (its ``[request_counter]`` table, checked
when the pipeline is built), an ``__init__(config, pipeline)``, and ``@hookimpl`` methods named after the
hooks of ``aurelis_core.hookspecs``. Import from ``aurelis_core.plugin`` (the plugin API) and, besides it,
only ``aurelis_core`` itself.
"""

from __future__ import annotations

import threading
from collections import Counter

import attrs

from aurelis_core.plugin import Pipeline, RequestContext, hookimpl

__all__ = ["CounterConfig", "RequestCounter"]


@attrs.frozen
class CounterConfig:
    # Options are checked against their annotations when the pipeline is built (a string here fails with
    # "[request_counter] by_model: expected true or false, got ..."); ranges and formats take a validator from
    # aurelis_core.plugin, e.g. ``attrs.field(default=10, validator=positive_int)``.
    #: Also count per model (the ``model`` field of the body).
    by_model: bool = False


class RequestCounter:
    """Counts requests as ``"<cache status> <status code or error>"`` (and per model, if configured)."""

    name = "request_counter"
    Config = CounterConfig

    def __init__(self, config: CounterConfig, pipeline: Pipeline) -> None:
        self.config = config
        self.counts: Counter[str] = Counter()
        # Sync clients may be shared across threads; observe hooks then run concurrently.
        self._lock = threading.Lock()

    @hookimpl
    def aurelis_observe(self, ctx: RequestContext) -> None:
        # observe: every implementation runs, sync, no I/O, once per request when it is over.
        outcome = type(ctx.error).__name__ if ctx.error is not None else str(ctx.response_status)
        label = f"{ctx.cache_status} {outcome}"
        with self._lock:
            self.counts[label] += 1
            if self.config.by_model and ctx.model is not None:
                self.counts[f"model {ctx.model}"] += 1
