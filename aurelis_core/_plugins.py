"""Finding, configuring and registering plugins.

A plugin is a class. Its instance carries ``@hookimpl`` methods (see :mod:`aurelis_core.hookspecs`) and is
made once per pipeline, so it may keep state (a cache's entries, a router's counters). The class declares::

    class MyTier:
        name = "mytier"                 # the name users put in `plugins = [...]`
        Config = MyTierConfig           # optional: an attrs class for the [mytier] table
        def __init__(self, config: MyTierConfig | None, pipeline: Pipeline) -> None: ...

Plugins come from two places: the built-in set below (this package's ``aurelis_plugins``), and entry points in
the group ``aurelis`` of any installed distribution (``mytier = "my_pkg.tier:MyTier"``). Both are found by name
and imported only when enabled, which keeps ``import aurelis_core`` cheap. ``AURELIS_DISABLE_PLUGINS`` (comma
separated names) blocks plugins even if the config enables them.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from typing import Any

import attrs
import pluggy

from . import hookspecs
from .config import ConfigError, choices_hint

__all__ = [
    "BUILTIN_PLUGINS",
    "AurelisPluginManager",
    "PluginSpec",
    "blocked_plugins",
    "discover_plugins",
    "implementers",
]

logger = logging.getLogger("aurelis")

ENTRY_POINT_GROUP = "aurelis"

#: name -> "module:Class" of the plugins that ship with Aurelis.
BUILTIN_PLUGINS: dict[str, str] = {
    "normalize": "aurelis_plugins.normalize:Normalize",
    "memory": "aurelis_plugins.memory:MemoryCache",
    "record": "aurelis_plugins.record:Record",
    "redis": "aurelis_plugins.redis_tier:RedisTier",
    "sqlite": "aurelis_plugins.sqlite_tier:SQLiteTier",
    "prometheus": "aurelis_plugins.prometheus:Prometheus",
    "tuner": "aurelis_plugins.tuner:Tuner",
    "gzip": "aurelis_plugins.compress:GzipCompression",
    "brotli": "aurelis_plugins.compress:BrotliCompression",
    "lz4": "aurelis_plugins.compress:Lz4AtRestOnly",
    "httpx": "aurelis_plugins.send_httpx:HttpxEngine",
    "aiohttp": "aurelis_plugins.send_aiohttp:AiohttpEngine",
    "round_robin": "aurelis_plugins.routers.round_robin:RoundRobin",
    "least_connections": "aurelis_plugins.routers.least_connections:LeastConnections",
    "weighted_response_time": "aurelis_plugins.routers.weighted_response_time:WeightedResponseTime",
    "load_based": "aurelis_plugins.routers.load_based:LoadBased",
    "ai_optimized": "aurelis_plugins.routers.ai_optimized:AIOptimized",
    "breaker": "aurelis_plugins.breaker:Breaker",
    "retry": "aurelis_plugins.retry:Retry",
    "ratelimit": "aurelis_plugins.ratelimit:RateLimit",
}


@attrs.frozen
class PluginSpec:
    """Where a plugin comes from: ``origin`` is ``"builtin"`` or the distribution that declares it."""

    name: str
    target: str
    origin: str

    def load(self) -> type:
        module_name, _, attr = self.target.partition(":")
        try:
            module = importlib.import_module(module_name)
            obj = getattr(module, attr) if attr else module
        except ImportError as exc:
            raise ConfigError(
                f"plugin {self.name!r} ({self.target}, from {self.origin}) failed to import: {exc}"
            ) from exc
        if not isinstance(obj, type):
            raise ConfigError(f"plugin {self.name!r}: {self.target} is not a class")
        return obj


def discover_plugins() -> dict[str, PluginSpec]:
    """All plugins that can be enabled by name: the built-in ones, then entry points in group ``aurelis``."""
    # Imported when plugins are looked up (building a pipeline), not with the package: ~15 ms.
    from importlib.metadata import entry_points

    found = {name: PluginSpec(name, target, "builtin") for name, target in BUILTIN_PLUGINS.items()}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else "?"
        if ep.name in found:
            logger.warning(
                "aurelis: entry point %r from %s is ignored: the name is taken by %s",
                ep.name, dist, found[ep.name].origin,
            )
            continue
        found[ep.name] = PluginSpec(ep.name, ep.value, dist)
    return found


def blocked_plugins() -> frozenset[str]:
    """Names listed in ``AURELIS_DISABLE_PLUGINS`` (comma or space separated)."""
    raw = os.environ.get("AURELIS_DISABLE_PLUGINS", "")
    return frozenset(n.strip() for n in raw.replace(",", " ").split() if n.strip())


def instantiate(cls: type, table: Any, pipeline: Any, where: str) -> Any:
    """Build plugin ``cls`` with its option table checked against ``cls.Config``."""
    from .config import config_from_table

    config_cls = getattr(cls, "Config", None)
    if config_cls is None:
        if table:
            raise ConfigError(f"{where}: plugin takes no options, got {', '.join(table)}")
        config = None
    else:
        config = config_from_table(config_cls, table or {}, where)
    return cls(config, pipeline)


class AurelisPluginManager(pluggy.PluginManager):
    """A pluggy manager that tells its pipeline when the set of plugins changes.

    The pipeline keeps per-stage lists of implementation functions (calling them directly is ~10x cheaper than
    pluggy's hook call); ``on_change`` rebuilds those lists, so plugins registered or unregistered at any time,
    through the pipeline or directly on this manager, take effect on the next request.
    """

    def __init__(self, on_change: Callable[[], None]) -> None:
        super().__init__(hookspecs.PROJECT_NAME)
        self.add_hookspecs(hookspecs)
        self._on_change = on_change

    def register(self, plugin: object, name: str | None = None) -> str | None:
        result = super().register(plugin, name)
        self.check_pending()
        self._on_change()
        return result

    def unregister(self, plugin: object | None = None, name: str | None = None) -> Any:
        result = super().unregister(plugin, name)
        self._on_change()
        return result


def unknown_plugin(name: str, known: dict[str, PluginSpec], where: str) -> ConfigError:
    return ConfigError(f"{where}: unknown plugin {name!r}{choices_hint(name, known)}")


def implementers(hook: str, known: dict[str, PluginSpec]) -> list[str]:
    """The names, among ``known``, of the plugins whose class implements ``hook`` (a ``@hookimpl`` method).

    Imports every plugin's module: for error messages (which router could be enabled?), never on a hot path. A
    plugin that cannot be imported here (an extra that is not installed) is left out.
    """
    marker = f"{hookspecs.PROJECT_NAME}_impl"  # what pluggy's HookimplMarker sets on each implementation
    found = []
    for name, spec in known.items():
        try:
            cls = spec.load()
        except Exception:  # a broken plugin must not hide the error this list helps to explain
            continue
        if hasattr(getattr(cls, hook, None), marker):
            found.append(name)
    return found
