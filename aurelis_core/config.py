"""Configuration: where it comes from and how it is checked.

A config has four kinds of top-level key:

- ``plugins``: the names of the plugins to enable, in order (the order tiers are asked, observers called...).
- ``endpoints``: a list of upstreams to route requests to (may be empty: requests go to their own URL).
- ``tenant``: who is asking and what scopes an answer (see :mod:`aurelis_core._tenant`), read by every plugin.
- one table per plugin, named after it, holding that plugin's options.

It is read from a dict, an ``aurelis.toml`` file, or the ``[tool.aurelis]`` table of a ``pyproject.toml``,
and checked eagerly: an unknown plugin, an unknown key or a bad value fails when the pipeline is built, with a
message that names the valid choices, never halfway through a request.
"""

from __future__ import annotations

import difflib
import functools
import os
import types
import typing
import warnings
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import attrs

from ._models import Endpoint
from ._tenant import TenantConfig

__all__ = ["Config", "ConfigError", "config_from_table", "load_config"]

T = TypeVar("T")

#: Top-level keys that are not plugin tables.
RESERVED_KEYS = ("plugins", "endpoints", "tenant")
#: Options of the ``normalize`` table that moved to ``[tenant]``: still accepted there, moved on load.
_MOVED_TO_TENANT = ("namespace", "secret")


class ConfigError(ValueError):
    """The configuration is invalid. The message says where, and what would be valid."""


def choices_hint(given: str, valid: Iterable[str]) -> str:
    """``"; did you mean 'lru'? valid: a, b"`` -- the tail of an error about a name that is not known."""
    valid = sorted(valid)
    close = difflib.get_close_matches(given, valid, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{hint} valid: {', '.join(valid) if valid else '(none)'}"


@attrs.frozen
class Config:
    """A parsed, shape-checked configuration. Plugin tables are checked against each plugin's options when
    the pipeline is built (only then are the plugin classes loaded)."""

    plugins: tuple[str, ...] = ()
    endpoints: tuple[Endpoint, ...] = ()
    tables: Mapping[str, Mapping[str, Any]] = attrs.field(factory=dict)
    source: str = "<dict>"
    tenant: TenantConfig = attrs.field(factory=TenantConfig)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> Config:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: the config must be a table/dict, not {type(data).__name__}")
        plugins = data.get("plugins", ())
        if isinstance(plugins, str) or not isinstance(plugins, (list, tuple)):
            raise ConfigError(f"{source}: 'plugins' must be a list of plugin names, got {plugins!r}")
        for name in plugins:
            if not isinstance(name, str):
                raise ConfigError(f"{source}: 'plugins' must hold names (strings), got {name!r}")
        if len(set(plugins)) != len(plugins):
            dupes = sorted({p for p in plugins if plugins.count(p) > 1})
            raise ConfigError(f"{source}: plugin(s) listed twice in 'plugins': {', '.join(dupes)}")
        raw_endpoints = data.get("endpoints", ())
        if not isinstance(raw_endpoints, (list, tuple)):
            raise ConfigError(f"{source}: 'endpoints' must be a list of tables ([[endpoints]])")
        endpoints = tuple(
            _endpoint(item, f"{source}: endpoints[{i}]") for i, item in enumerate(raw_endpoints)
        )
        names = [e.name for e in endpoints]
        if len(set(names)) != len(names):
            raise ConfigError(f"{source}: endpoint names must be unique, got {names}")
        tables: dict[str, Mapping[str, Any]] = {}
        for key, value in data.items():
            if key in RESERVED_KEYS:
                continue
            if not isinstance(value, Mapping):
                raise ConfigError(
                    f"{source}: unknown top-level key {key!r} (plugin options go in a table named after the "
                    f"plugin){choices_hint(key, RESERVED_KEYS)}"
                )
            tables[key] = dict(value)
        tenant_table = data.get("tenant", {})
        if not isinstance(tenant_table, Mapping):
            raise ConfigError(f"{source}: 'tenant' must be a table ([tenant]), got {tenant_table!r}")
        tenant_table = dict(tenant_table)
        normalize = tables.get("normalize")
        if normalize is not None and any(k in normalize for k in _MOVED_TO_TENANT):
            normalize = dict(normalize)
            for option in _MOVED_TO_TENANT:
                if option not in normalize:
                    continue
                value = normalize.pop(option)
                if option in tenant_table and tenant_table[option] != value:
                    raise ConfigError(
                        f"{source}: [normalize] {option} and [tenant] {option} differ; [normalize] {option} is an "
                        f"old spelling of [tenant] {option}: keep only the latter"
                    )
                tenant_table[option] = value
                warnings.warn(
                    f"{source}: [normalize] {option} is now [tenant] {option} (read by every plugin that scopes "
                    "by tenant); the old spelling keeps working",
                    DeprecationWarning,
                    stacklevel=4,
                )
            tables["normalize"] = normalize
        tenant = config_from_table(TenantConfig, tenant_table, f"{source}: [tenant]")
        return cls(plugins=tuple(plugins), endpoints=endpoints, tables=tables, source=source, tenant=tenant)


def _endpoint(item: Any, where: str) -> Endpoint:
    if isinstance(item, str):
        item = {"url": item}
    if not isinstance(item, Mapping):
        raise ConfigError(f"{where}: an endpoint is a table with at least 'url', got {item!r}")
    endpoint = config_from_table(Endpoint, item, where)
    url = endpoint.url
    if not (url.startswith("http://") or url.startswith("https://")) or len(url.split("/", 3)[2]) == 0:
        raise ConfigError(f"{where}: 'url' must be an absolute http(s) URL, got {url!r}")
    if not endpoint.weight > 0:
        raise ConfigError(f"{where}: 'weight' must be > 0, got {endpoint.weight!r}")
    for limit in ("rpm", "tpm"):
        value = getattr(endpoint, limit)
        if value is not None and (not isinstance(value, int) or value <= 0):
            raise ConfigError(f"{where}: {limit!r} must be a positive integer, got {value!r}")
    return endpoint


def config_from_table(cls: type[T], table: Mapping[str, Any], where: str) -> T:
    """Build the attrs class ``cls`` from a config table, or raise :class:`ConfigError`.

    Unknown keys are named with the valid ones; a nested table for a field whose type is itself an attrs
    class is built recursively; attrs validators' and converters' errors are re-raised with ``where``.
    Plugins call this (through the plugin loader) for their own option tables.
    """
    if not attrs.has(cls):
        raise TypeError(f"{cls!r} is not an attrs class")
    hints = _type_hints(cls)
    fields = {f.name: f for f in attrs.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        field = fields.get(key)
        if field is None or not field.init:
            raise ConfigError(f"{where}: unknown key {key!r}{choices_hint(key, fields)}")
        nested = _attrs_class_of(hints.get(key))
        if nested is not None and isinstance(value, Mapping):
            value = config_from_table(nested, value, f"{where}.{key}")
        kwargs[key] = value
    try:
        return cls(**kwargs)  # type: ignore[return-value]
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {_explain(exc)}") from None


#: A class's resolved annotations, evaluated once: get_type_hints re-evaluates every string annotation on each
#: call (~40 us for RequestControls), and per-request controls (``x-aurelis-*``, extensions) come through here.
_type_hints = functools.cache(typing.get_type_hints)


def _attrs_class_of(hint: Any) -> type | None:
    if isinstance(hint, type) and attrs.has(hint):
        return hint
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        for arg in typing.get_args(hint):
            if isinstance(arg, type) and attrs.has(arg):
                return arg
    return None


def _explain(exc: BaseException) -> str:
    # attrs' validators raise (message, attribute, expected, value); instance_of's message is written for
    # programmers ("must be <class 'int'>"), so say that one plainly, and keep the others' own messages.
    args = exc.args
    if len(args) == 4 and isinstance(args[1], attrs.Attribute):
        attribute, expected, value = args[1], args[2], args[3]
        if isinstance(expected, type) or (
            isinstance(expected, tuple) and all(isinstance(t, type) for t in expected)
        ):
            types_ = expected if isinstance(expected, tuple) else (expected,)
            return f"{attribute.name!r} must be {' or '.join(t.__name__ for t in types_)}, got {value!r}"
        return str(args[0])
    return str(exc)


def load_config(source: Config | Mapping[str, Any] | str | os.PathLike[str] | None = None) -> Config:
    """Turn what the user gave into a :class:`Config`.

    - a ``Config``: returned as is; a dict: checked; ``None``: the file named by ``AURELIS_CONFIG``, else empty.
    - a path to a ``.toml`` file: its top level is the config, except ``pyproject.toml``, whose
      ``[tool.aurelis]`` table is.
    """
    if isinstance(source, Config):
        return source
    if source is None:
        env = os.environ.get("AURELIS_CONFIG")
        if not env:
            return Config()
        source = env
    if isinstance(source, Mapping):
        return Config.from_dict(source)
    # Imported for config files only: a dict or Config needs neither (~15 ms of `import aurelis_core`).
    import tomllib
    from pathlib import Path

    path = Path(source)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    if path.name == "pyproject.toml":
        section = data.get("tool", {}).get("aurelis")
        if section is None:
            raise ConfigError(f"{path}: no [tool.aurelis] table")
        return Config.from_dict(section, source=f"{path} [tool.aurelis]")
    return Config.from_dict(data, source=str(path))
