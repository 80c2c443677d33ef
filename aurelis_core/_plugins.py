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

The registry also turns the registered plugins into the pipeline's :class:`Stages`: one immutable snapshot of
every stage's implementation functions, built from :data:`aurelis_core.hookspecs.STAGES`.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import pluggy

from . import hookspecs
from ._dialects import Dialect, Dialects
from .config import ConfigError, choices_hint

__all__ = [
    "BUILTIN_PLUGINS",
    "AurelisPluginManager",
    "PluginSpec",
    "Stages",
    "blocked_plugins",
    "build_stages",
    "discover_plugins",
    "implementers",
]

logger = logging.getLogger("aurelis.plugins")

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
                "entry point %r from %s is ignored: the name is taken by %s",
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

    The pipeline keeps a :class:`Stages` snapshot of the implementation functions (calling them directly is
    ~10x cheaper than pluggy's hook call); ``on_change`` builds a new one, so plugins registered or unregistered
    at any time, through the pipeline or directly on this manager, take effect on the next request.

    A change and the snapshot built after it happen under one lock: two threads (un)registering at once would
    otherwise let the one that read the plugins first store its snapshot last, and a plugin registered in
    between would be left out of it. A change the pipeline refuses (a second router) is undone before the
    error is raised, so the registered plugins and the snapshot never disagree.
    """

    def __init__(self, on_change: Callable[[], None]) -> None:
        super().__init__(hookspecs.PROJECT_NAME)
        self.add_hookspecs(hookspecs)
        self._on_change = on_change
        self._changing = threading.RLock()

    def register(self, plugin: object, name: str | None = None) -> str | None:
        with self._changing:
            result = super().register(plugin, name)
            try:
                self.check_pending()
                self._on_change()
            except BaseException:
                if result is not None:  # None: a blocked name, nothing was registered
                    super().unregister(plugin)
                raise
            return result

    def unregister(self, plugin: object | None = None, name: str | None = None) -> Any:
        with self._changing:
            if name is None and plugin is not None:
                name = self.get_name(plugin)
            result = super().unregister(plugin, name)
            try:
                self._on_change()
            except BaseException:
                if result is not None:
                    super().register(result, name)
                raise
            return result


#: What a stage list holds: a plugin's bound ``@hookimpl`` method.
Impl = Callable[..., Any]


@attrs.frozen
class Stages:
    """The implementation functions of every stage, as one immutable snapshot.

    Built in one go by :func:`build_stages`, stored in one attribute of the pipeline and replaced whole when a
    plugin is registered or unregistered. A request reads it once, when it starts, and keeps it to its end (a
    stream's end included): it never runs one stage with the old plugins and the next with the new ones.

    Its hook fields are named after the rows of :data:`~aurelis_core.hookspecs.STAGES` (the hook without its
    ``aurelis_`` prefix); a row without a field here fails the first pipeline built. Their shape follows the
    row: a tuple of functions in call order; ``(tier name, function)`` pairs for cache tiers (a tier's failures
    are counted under its name); one function or ``None`` for an ``EXACTLY_ONE`` stage.
    """

    start: tuple[Impl, ...]
    close: tuple[Impl, ...]
    normalize: tuple[Impl, ...]
    cache_get: tuple[tuple[str, Impl], ...]
    cache_set: tuple[tuple[str, Impl], ...]
    route: Impl | None
    admit: tuple[Impl, ...]
    compress: tuple[Impl, ...]
    send: Impl | None
    attempt_end: tuple[Impl, ...]
    retry: tuple[Impl, ...]
    observe: tuple[Impl, ...]
    # --- derived once here, so the request path does not ---
    #: The cache tiers' names, in lookup order.
    tiers: tuple[str, ...]
    #: The cache tier plugins, in the same order.
    tier_plugins: tuple[object, ...]
    #: For promotion: for each tier of ``cache_get``, the setters of the tiers listed before it.
    setters_above: tuple[tuple[tuple[str, Impl], ...], ...]
    #: Whether any cache tier is enabled (without one, no key is computed).
    caching: bool
    #: The largest entry any tier stores (a tier's ``max_entry_bytes``); ``None`` when one sets no limit or
    #: there is no tier: an answer announced larger is not buffered at all.
    entry_limit: int | None
    #: The dialects requests may speak: the built-in ones and those of the plugins' ``dialects`` attributes,
    #: with the endpoints that pin one.
    dialects: Dialects


def build_stages(
    pm: pluggy.PluginManager,
    where: str,
    endpoints: int = 0,
    defaults: Mapping[str, Impl] | None = None,
    pinned: Sequence[tuple[str, str]] = (),
) -> Stages:
    """The :class:`Stages` of the plugins registered on ``pm``, following :data:`~aurelis_core.hookspecs.STAGES`.

    ``defaults`` maps an ``EXACTLY_ONE`` stage's name to what runs when no plugin implements it (the send
    engine: the wrapped client's own transport). Raises :class:`ConfigError` (naming ``where``) when two plugins
    implement an ``EXACTLY_ONE`` stage, or ``endpoints`` > 1 and no router is enabled. ``pinned``: ``(URL,
    dialect name)`` of the endpoints that name their dialect (a name no dialect has is a ``ConfigError``).
    """
    defaults = defaults or {}
    fields: dict[str, Any] = {}
    named: dict[str, list[tuple[str, Impl]]] = {}
    for row in hookspecs.STAGES:
        impls = getattr(pm.hook, row.hook).get_hookimpls()
        # pluggy keeps registration order with tryfirst/trylast moved to the ends, and calls in reverse.
        # We call in config order: registration order, tryfirst first.
        ordered = sorted(impls, key=lambda i: 0 if i.tryfirst else 2 if i.trylast else 1)
        pairs = named[row.name] = [(i.plugin_name, i.function) for i in ordered]
        if row.runs is hookspecs.EXACTLY_ONE:
            if len(pairs) > 1:
                raise ConfigError(
                    f"{where}: only one {row.role} may be enabled, got: {', '.join(n for n, _ in pairs)}"
                )
            fields[row.name] = pairs[0][1] if pairs else defaults.get(row.name)
        elif row.role == "cache tier":
            fields[row.name] = tuple(pairs)
        else:
            fields[row.name] = tuple(f for _, f in pairs)
    if endpoints > 1 and fields["route"] is None:
        # Every plugin that can route, third-party ones included; found (which imports each plugin's module)
        # only now that the error is certain.
        raise ConfigError(
            f"{where}: {endpoints} endpoints need a router plugin in 'plugins'; "
            f"choose one of: {', '.join(implementers('aurelis_route', discover_plugins())) or '(none found)'}"
        )
    tiers = tuple(name for name, _ in named["cache_get"])
    dialects = _dialects(pm, where, pinned)
    setters = named["cache_set"]
    order = {name: i for i, name in enumerate(tiers)}
    limits: list[int | None] = [getattr(pm.get_plugin(name), "max_entry_bytes", None) for name, _ in setters]
    return Stages(
        **fields,
        tiers=tiers,
        tier_plugins=tuple(pm.get_plugin(name) for name in tiers),
        setters_above=tuple(
            tuple((name, fn) for name, fn in setters if order.get(name, len(order)) < index)
            for index in range(len(tiers))
        ),
        caching=bool(tiers),
        entry_limit=max(limit for limit in limits if limit is not None) if limits and None not in limits else None,
        dialects=dialects,
    )


def _dialects(pm: pluggy.PluginManager, where: str, pinned: Sequence[tuple[str, str]]) -> Dialects:
    """The built-in dialects, those the registered plugins add (their ``dialects`` attribute, in config order),
    and the endpoints' pins."""
    added: list[Dialect] = []
    for name, plugin in pm.list_name_plugin():
        offered = getattr(plugin, "dialects", None)
        if offered is None:
            continue
        for dialect in offered:
            if not isinstance(dialect, Dialect) or not dialect.name:
                raise ConfigError(f"{where}: plugin {name!r} offers {dialect!r} in 'dialects', not a named Dialect")
            added.append(dialect)
    known = Dialects(added)
    for url, dialect_name in pinned:
        if dialect_name not in known.names:
            raise ConfigError(
                f"{where}: endpoint {url}: unknown dialect {dialect_name!r}{choices_hint(dialect_name, known.names)}"
            )
    return Dialects(added, pinned)


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
