"""Aurelis: an embedded performance layer for calls to AI-model APIs.

Wrap the httpx or httpx2 client you already use, and every request flows through a pipeline of pluggable
stages (normalize, cache tiers, routing, compression, send, observe)::

    import httpx, aurelis_core
    client = aurelis_core.instrument(httpx.AsyncClient(), config="aurelis.toml")

Only this module's names (``__all__``) are public; the ``_``-prefixed modules are private. Plugins import what
they need besides these names from :mod:`aurelis_core.plugin`, the plugin API.
"""

from __future__ import annotations

import logging
from typing import Any, cast

from ._model_routes import DialectNotServed, ModelNotServed
from ._models import (
    Attempt,
    CacheEntry,
    CacheInfo,
    Endpoint,
    RequestContext,
    RequestControlError,
    RequestControls,
)
from .batch import gather
from .config import Config, ConfigError, load_config
from .hookspecs import hookimpl
from .pipeline import Pipeline
from .stats import Stats

__version__ = "0.1.0"

# A library prints nothing unless the application configures logging: without this handler, Python's
# last-resort handler would print Aurelis's warnings to stderr of every program that never set logging up.
logging.getLogger("aurelis").addHandler(logging.NullHandler())

__all__ = [
    "Attempt",
    "CacheEntry",
    "CacheInfo",
    "Config",
    "ConfigError",
    "DialectNotServed",
    "Endpoint",
    "ModelNotServed",
    "Pipeline",
    "RequestContext",
    "RequestControlError",
    "RequestControls",
    "Stats",
    "__version__",
    "cache_info",
    "gather",
    "hookimpl",
    "instrument",
    "load_config",
    "pipeline_of",
]


def instrument(client: Any, config: Config | Any = None, *, pipeline: Pipeline | None = None) -> Any:
    """Route ``client``'s requests through an Aurelis pipeline, in place; returns the same client.

    ``client`` is an ``httpx.Client``, ``httpx.AsyncClient``, ``httpx2.Client`` or ``httpx2.AsyncClient``.
    ``config`` is a dict, a :class:`Config`, or a path to ``aurelis.toml`` / ``pyproject.toml``; or pass a
    ready ``pipeline`` to share one (its caches, its stats) between several clients.

    The client's transport and every proxy mount are wrapped, so whatever the client was built with (TLS,
    proxies, limits, HTTP/2) keeps working. Instrumenting an instrumented client again changes nothing.
    Closing the client closes a pipeline that ``instrument`` made for it, not one you passed in.
    """
    from ._transports import instrument_client, pipeline_of

    current = pipeline_of(client)
    if current is not None:
        if pipeline is not None and pipeline is not current:
            raise ValueError("this client is already instrumented with another pipeline")
        return client
    if pipeline is not None:
        if config is not None:
            raise ValueError("pass either config or pipeline, not both")
        pipeline._note_base_url(client)
        return instrument_client(client, pipeline)
    pipeline = Pipeline(config)
    pipeline._note_base_url(client)
    return instrument_client(client, pipeline, owns_pipeline=True)


def pipeline_of(client: Any) -> Pipeline | None:
    """The pipeline ``client`` was instrumented with, or ``None``."""
    from ._transports import pipeline_of as _pipeline_of

    # Only instrument() wraps transports, always with a Pipeline; the transports know it by a Protocol alone.
    return cast("Pipeline | None", _pipeline_of(client))


def cache_info(response: Any) -> CacheInfo | None:
    """Where ``response`` came from (``hit``/``miss``/``bypass``, the tier, the endpoint), or ``None`` if it
    did not pass through Aurelis."""
    info = response.extensions.get("aurelis")
    return info if isinstance(info, CacheInfo) else None
