"""Configuration: where it comes from and how it is checked.

A config has four kinds of top-level key:

- ``plugins``: the names of the plugins to enable, in order (the order tiers are asked, observers called...).
- ``endpoints``: a list of upstreams to route requests to (may be empty: requests go to their own URL).
- ``tenant``: who is asking and what scopes an answer (see :mod:`aurelis_core._tenant`), read by every plugin.
- ``redis_connection``: the Redis every Redis-using plugin shares unless it names its own (see
  :mod:`aurelis_core._redis_connection`).
- ``pricing``: USD per million tokens by model (see :mod:`aurelis_core.pricing`), read by whatever reports cost.
- ``fallbacks``: the models to try, in order, when a model's endpoints all failed (see
  :mod:`aurelis_core._fallback`).
- ``report``: the window of recent requests ``pipeline.report()`` reads, and its periodic logging (see
  :mod:`aurelis_core._live_report`).
- one table per plugin, named after it, holding that plugin's options.

It is read from a dict, an ``aurelis.toml`` file, or the ``[tool.aurelis]`` table of a ``pyproject.toml``,
and checked eagerly: an unknown plugin, an unknown key or a bad value fails when the pipeline is built, with a
message that names the valid choices, never halfway through a request.

How a table is checked (:func:`config_from_table`): every value against its option's *annotation* first, so
every option class -- built-in or third-party -- gets type checking without writing a validator; then the
option class's own attrs validators (ranges, formats: :mod:`aurelis_core.validators`) and cross-field rules.
Every error says ``"<source>: [table] key: expected ..., got ..."``, and all errors of a config are reported
together (:attr:`ConfigError.errors`).
"""

from __future__ import annotations

import math
import os
import re
import types
import typing
import warnings
from collections import abc
from collections.abc import Callable, Mapping
from typing import Any, Literal, NamedTuple, TypeVar

import attrs

from ._env import expand_env
from ._fallback import check_fallbacks
from ._live_report import ReportConfig
from ._models import Endpoint
from ._redis_connection import RedisConnection
from ._tenant import TenantConfig
from .pricing import ModelPrice, Pricing
from .validators import ALLOW_NON_FINITE, Invalid, describe
from .validators import choices_hint as choices_hint

__all__ = ["ALLOW_NON_FINITE", "Config", "ConfigError", "config_from_table", "load_config", "parse_config"]

T = TypeVar("T")

#: Top-level keys that are not plugin tables.
RESERVED_KEYS = ("plugins", "endpoints", "tenant", "redis_connection", "report", "pricing", "fallbacks")
#: Options of the ``normalize`` table that moved to ``[tenant]``: still accepted there, copied on load.
_MOVED_TO_TENANT = ("namespace", "secret")


class ConfigError(ValueError):
    """The configuration is invalid. The message says where, and what would be valid.

    ``errors`` holds one message per problem found (a config with three bad values reports all three, one per
    line of ``str(error)``).
    """

    def __init__(self, *errors: str) -> None:
        super().__init__("\n".join(errors))
        self.errors: tuple[str, ...] = errors

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), self.errors)


def _table_names(tables: Mapping[str, Mapping[str, Any]]) -> str:
    # The options are not shown: a value may be a credential from the environment (${REDIS_PASSWORD}).
    return "{" + ", ".join(f"{name!r}: {{...}}" for name in tables) + "}"


@attrs.frozen
class Config:
    """A parsed, shape-checked configuration. Plugin tables are checked against each plugin's options when
    the pipeline is built (only then are the plugin classes loaded)."""

    #: The plugins to enable, by name, in order: the order cache tiers are asked and observers called.
    plugins: tuple[str, ...] = ()
    #: The upstreams requests are routed to (``[[endpoints]]``); none: each request goes to its own URL.
    endpoints: tuple[Endpoint, ...] = ()
    #: Each plugin's option table, by plugin name, as written (checked when the pipeline is built).
    tables: Mapping[str, Mapping[str, Any]] = attrs.field(factory=dict, repr=_table_names)
    #: Where the config was read from, for error messages.
    source: str = "<dict>"
    #: The ``[tenant]`` table: who is asking, and what scopes an answer; read by every plugin.
    tenant: TenantConfig = attrs.field(factory=TenantConfig)
    #: The ``[redis_connection]`` table: the Redis plugins share unless they name their own (None: not given).
    redis_connection: RedisConnection | None = None
    #: The ``[report]`` table: the live report's window and periodic logging.
    report: ReportConfig = attrs.field(factory=ReportConfig)
    #: The ``[pricing]`` table: model prices (empty: none configured).
    pricing: Pricing = attrs.field(factory=Pricing)
    #: The ``[fallbacks]`` table: model -> the models to try next, in order (empty: no fallbacks).
    fallbacks: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> Config:
        """Check the top level and the endpoints of ``data``; :class:`ConfigError` lists every problem."""
        config, errors = parse_config(data, source)
        if errors:
            raise ConfigError(*errors)
        return config


def parse_config(data: Any, source: str = "<dict>") -> tuple[Config, list[str]]:
    """``data`` as a :class:`Config` built from its valid parts, and the errors found in the rest.

    What :meth:`Config.from_dict` does, without giving up at the first problem: ``aurelis config check`` uses
    it to go on and check the plugin tables of a config whose top level has errors too.
    """
    if not isinstance(data, Mapping):
        return Config(source=source), [f"{source}: expected a table/dict of config keys, got {describe(data)}"]
    errors: list[str] = []
    plugins: list[str] = []
    given = data.get("plugins", ())
    if isinstance(given, (list, tuple)):
        for index, name in enumerate(given):
            if not isinstance(name, str):
                errors.append(f"{source}: plugins[{index}]: expected a plugin name (a string), got {describe(name)}")
            elif name in plugins:
                errors.append(f"{source}: plugin listed twice in 'plugins': {name}")
            else:
                plugins.append(name)
    else:
        errors.append(f"{source}: plugins: expected a list of plugin names, got {describe(given)}")
    endpoints: list[Endpoint] = []
    given = data.get("endpoints", ())
    if isinstance(given, (list, tuple)):
        for index, item in enumerate(given):
            try:
                endpoint = _endpoint(item, f"{source}: endpoints[{index}]")
            except ConfigError as exc:
                errors.extend(exc.errors)
                continue
            if any(e.name == endpoint.name for e in endpoints):
                errors.append(f"{source}: endpoints[{index}] name: endpoint names must be unique, "
                              f"{endpoint.name!r} is taken")
                continue
            endpoints.append(endpoint)
    else:
        errors.append(f"{source}: endpoints: expected a list of tables ([[endpoints]]), got {describe(given)}")
    tables: dict[str, Mapping[str, Any]] = {}
    for key, value in data.items():
        if key in RESERVED_KEYS:
            continue
        if not isinstance(value, Mapping):
            errors.append(
                f"{source}: unknown top-level key {key!r} (plugin options go in a table named after the "
                f"plugin){choices_hint(str(key), RESERVED_KEYS)}"
            )
            continue
        tables[key] = dict(value)
    tenant, tenant_errors = _tenant(data, tables, source)
    errors.extend(tenant_errors)
    redis_connection = _table(RedisConnection, data, "redis_connection", source, errors)
    report = _table(ReportConfig, data, "report", source, errors) or ReportConfig()
    pricing, pricing_errors = _pricing(data.get("pricing", {}), source)
    errors.extend(pricing_errors)
    fallbacks, fallback_errors = check_fallbacks(data.get("fallbacks", {}), endpoints, source)
    errors.extend(fallback_errors)
    config = Config(plugins=tuple(plugins), endpoints=tuple(endpoints), tables=tables, source=source, tenant=tenant,
                    redis_connection=redis_connection, report=report, pricing=pricing, fallbacks=fallbacks)
    return config, errors


def _table(cls: type[T], data: Mapping[str, Any], key: str, source: str, errors: list[str]) -> T | None:
    """The top-level table ``key`` of ``data`` as a ``cls``, ``None`` when it is not given or has errors (added
    to ``errors``)."""
    given = data.get(key)
    if given is None:
        return None
    try:
        return config_from_table(cls, given, f"{source}: [{key}]")
    except ConfigError as exc:
        errors.extend(exc.errors)
        return None


def _pricing(given: Any, source: str) -> tuple[Pricing, list[str]]:
    """The ``[pricing]`` table: one ``{input, output, cached_input}`` table per model name or glob (its keys are
    model names, not options, so it is not a ``_table``)."""
    if not isinstance(given, Mapping):
        return Pricing(), [f"{source}: pricing: expected a table ([pricing]) of model prices, got {describe(given)}"]
    prices: dict[str, ModelPrice] = {}
    errors: list[str] = []
    for model, table in given.items():
        where = f"{source}: [pricing] {model!r}"
        if not isinstance(table, Mapping):
            errors.append(f"{where}: expected a table like {{input = 2.5, output = 10.0}} (USD per million tokens), "
                          f"got {describe(table)}")
            continue
        try:
            prices[str(model)] = config_from_table(ModelPrice, table, where)
        except ConfigError as exc:
            errors.extend(exc.errors)
    return Pricing(prices), errors


def _tenant(
    data: Mapping[str, Any], tables: dict[str, Mapping[str, Any]], source: str
) -> tuple[TenantConfig, list[str]]:
    """The ``[tenant]`` table, with the options still spelled in ``[normalize]`` moved into it."""
    given = data.get("tenant", {})
    if not isinstance(given, Mapping):
        return TenantConfig(), [f"{source}: tenant: expected a table ([tenant]), got {describe(given)}"]
    table = dict(given)
    errors: list[str] = []
    normalize = tables.get("normalize", {})
    for option in _MOVED_TO_TENANT:
        value = normalize.get(option)
        # A value of the wrong kind stays where it was written: the [normalize] table's check names it there.
        if not isinstance(value, str) or not value:
            continue
        if option in table and table[option] != value:
            errors.append(
                f"{source}: [normalize] {option} and [tenant] {option} differ; [normalize] {option} is an old "
                f"spelling of [tenant] {option}: keep only the latter"
            )
            continue
        table[option] = value
        warnings.warn(
            f"{source}: [normalize] {option} is now [tenant] {option} (read by every plugin that scopes by "
            "tenant); the old spelling keeps working",
            DeprecationWarning,
            stacklevel=5,
        )
    try:
        return config_from_table(TenantConfig, table, f"{source}: [tenant]"), errors
    except ConfigError as exc:
        return TenantConfig(), [*errors, *exc.errors]


def _endpoint(item: Any, where: str) -> Endpoint:
    if isinstance(item, str):
        item = {"url": item}
    if not isinstance(item, Mapping):
        raise ConfigError(f"{where}: expected a table with at least 'url' (or a URL string), got {describe(item)}")
    return config_from_table(Endpoint, item, where)


# --- checking a table against an option class -------------------------------------------------------------------


def config_from_table(cls: type[T], table: Mapping[str, Any], where: str) -> T:
    """Build the attrs class ``cls`` from a config table, or raise :class:`ConfigError` listing every problem.

    Each value is checked against its field's annotation before the class is built:

    - ``int`` takes integers only (not ``true``, not ``1.5``); ``float`` takes integers and floats (an integer
      becomes a float) but not booleans, and not ``nan``/``inf`` unless the field's metadata has
      ``{ALLOW_NON_FINITE: True}``; ``str``, ``bool`` take their own type only;
    - ``X | None``: ``None`` or an ``X``; other unions: the first member that fits;
    - ``tuple[X, ...]``, ``list[X]``, ``Sequence[X]``, ``frozenset[X]``: a list (never a bare string), each item
      an ``X``; ``tuple[X, Y]``: exactly that many items;
    - ``Mapping[K, V]``, ``dict[K, V]``: a table whose keys are ``K`` and values ``V``;
    - ``Literal[...]``: one of the listed values;
    - an attrs class: a table, built recursively (errors name ``key.subkey``);
    - ``Any`` and annotations it does not know (callables, type variables): anything.

    A field with a converter is checked against the type the converter's first parameter is annotated with,
    if that is not ``Any``, else against the field's annotation. Then the class is built, which runs its attrs
    validators (ranges, formats: :mod:`aurelis_core.validators`) and ``__attrs_post_init__`` (cross-field
    rules). Unknown keys are named with the valid ones, missing required keys are named, and errors say
    ``"<where> key: expected ..., got ..."``. Plugins call this (through the plugin loader) for their own
    option tables; so does every request that carries cache controls, so the checks are compiled once per
    class and cost a dict lookup and a call per key.
    """
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}: expected a table, got {describe(table)}")
    return _build(cls, table, where, "")


def _build(cls: type[T], table: Mapping[str, Any], where: str, prefix: str) -> T:
    plan = _PLANS.get(cls) or _plan(cls)
    options = plan.options
    kwargs: dict[str, Any] = {}
    errors: list[str] = []
    for key, value in table.items():
        option = options.get(key)
        if option is None:
            errors.append(f"{where}{_at(prefix)}: unknown key {key!r}{choices_hint(str(key), options)}")
            continue
        try:
            kwargs[key] = option.check(value, where, prefix + key)
        except _Mismatch as m:
            errors.append(f"{where} {m.at}: expected {m.expected}, got {describe(m.value, option.secret)}{m.hint}")
        except ConfigError as exc:  # a nested table
            errors.extend(exc.errors)
    for key in plan.required:
        if key not in table:
            errors.append(f"{where}{_at(prefix)}: missing key {key!r} ({options[key].expected})")
    if errors:
        # The options that have the right type may still be out of range: say so in the same report.
        errors.extend(_validation_errors(cls, plan, kwargs, None, where, prefix))
        raise ConfigError(*errors)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(*_validation_errors(cls, plan, kwargs, exc, where, prefix)) from None


def _at(prefix: str) -> str:
    """`` warm`` for the nested table ``warm.``; nothing at the top of a table."""
    return f" {prefix[:-1]}" if prefix else ""


def _validation_errors(
    cls: type, plan: _Plan, kwargs: dict[str, Any], exc: BaseException | None, where: str, prefix: str
) -> list[str]:
    """The errors of a table whose values have the right types but that failed to build (``exc``), or, with
    ``exc=None``, the errors of the well-typed part of a table that has others already.

    attrs stops at the first failing validator: to report every bad option at once, the option that failed is
    left out (its default is valid) and the class built again, until it builds or fails on something that
    is not one option's (a cross-field rule, only reported when it is the first error of the whole table:
    with options left out it may not hold for the table as written).
    """
    errors: list[str] = []
    whole = exc is not None  # the table as written failed (not a part of it): a cross-field error is its own
    while True:
        if exc is None:
            try:
                cls(**kwargs)
            except ConfigError:
                return errors
            except (TypeError, ValueError) as failed:
                exc = failed
            else:
                return errors
        key, message = _explain(exc, plan)
        if key is None:
            if whole and not errors:
                errors.append(f"{where}{_at(prefix)}: {message}")
            return errors
        errors.append(f"{where} {prefix}{message}")
        if key not in kwargs:
            return errors
        del kwargs[key]
        exc = None


def _explain(exc: BaseException, plan: _Plan) -> tuple[str | None, str]:
    """``(key of the option at fault or None, message)`` for a validator's or a post-init's error."""
    if isinstance(exc, Invalid):
        key = plan.keys.get(exc.field, exc.field)
        return key, f"{key}{exc.name[len(exc.field):]}: {exc.detail}"
    args = exc.args
    # attrs' validators raise (message, attribute, expected, value); instance_of's message is written for
    # programmers ("must be <class 'int'>"), so say those plainly.
    if len(args) == 4 and isinstance(args[1], attrs.Attribute):
        attribute, expected, value = args[1], args[2], args[3]
        key = plan.keys.get(attribute.name, attribute.name)
        secret = attribute.repr is False
        if isinstance(expected, type) or (isinstance(expected, tuple) and all(isinstance(t, type) for t in expected)):
            names = " or ".join(t.__name__ for t in (expected if isinstance(expected, tuple) else (expected,)))
            return key, f"{key}: expected {names}, got {describe(value, secret)}"
        if isinstance(expected, (tuple, list, set, frozenset, Mapping)):
            choices = ", ".join(repr(c) for c in expected)
            return key, f"{key}: expected one of {choices}, got {describe(value, secret)}"
        return key, f"{key}: {args[0] if not secret else 'invalid value'}"
    text = str(exc)
    # Most hand-written validators start their message with the option's quoted name: "'level' must be ...".
    match = re.match(r"'(\w+)'\s*:?\s*(.*)", text, re.DOTALL)
    if match is not None and match.group(1) in plan.keys:
        key = plan.keys[match.group(1)]
        return key, f"{key}: {match.group(2)}"
    return None, text


class _Mismatch(Exception):
    """A value does not fit its annotation (internal: becomes one line of a :class:`ConfigError`)."""

    def __init__(self, at: str, expected: str, value: Any, hint: str = "") -> None:
        self.at = at
        self.expected = expected
        self.value = value
        self.hint = hint


#: ``check(value, where, at) -> the value to build with``; raises _Mismatch (or ConfigError, for a nested table).
_Check = Callable[[Any, str, str], Any]


class _Shape(NamedTuple):
    """A compiled annotation: its check, and how an error describes what it takes (one value, several)."""

    check: _Check
    one: str
    many: str


class _Option(NamedTuple):
    check: _Check
    expected: str
    secret: bool


class _Plan(NamedTuple):
    #: key (what the table says: the field's alias) -> its option
    options: dict[str, _Option]
    #: keys without a default
    required: tuple[str, ...]
    #: attribute name -> key
    keys: dict[str, str]


#: class -> its compiled checks. Built on a class's first use (resolving its annotations and compiling a check
#: per field costs ~50-100 us); a request that carries cache controls then pays ~0.3 us a key.
_PLANS: dict[type, _Plan] = {}


def _plan(cls: type) -> _Plan:
    if not attrs.has(cls):
        raise TypeError(f"{cls!r} is not an attrs class")
    try:
        hints = typing.get_type_hints(cls, include_extras=True)
    except Exception as exc:
        raise TypeError(
            f"cannot check the options of {cls.__module__}.{cls.__qualname__}: its annotations do not resolve "
            f"({type(exc).__name__}: {exc})"
        ) from None
    options: dict[str, _Option] = {}
    required: list[str] = []
    keys: dict[str, str] = {}
    for field in attrs.fields(cls):
        if not field.init:
            continue
        key = getattr(field, "alias", None) or field.name
        keys[field.name] = key
        hint = hints.get(field.name, Any)
        if field.converter is not None:
            hint = _converter_input(field.converter) or hint
        shape = _compile(hint, finite=not field.metadata.get(ALLOW_NON_FINITE, False))
        options[key] = _Option(shape.check, shape.one, field.repr is False)
        if field.default is attrs.NOTHING:
            required.append(key)
    plan = _Plan(options, tuple(required), keys)
    _PLANS[cls] = plan
    return plan


def _converter_input(converter: Any) -> Any:
    """The type a converter's first parameter is annotated with, unless unannotated or ``Any``."""
    import inspect

    function = getattr(converter, "converter", converter)  # attrs.Converter wraps the callable
    try:
        parameters = list(inspect.signature(function).parameters)
        hints = typing.get_type_hints(function)
    except Exception:  # a builtin (tuple) or an unresolvable annotation: nothing stated
        return None
    hint = hints.get(parameters[0]) if parameters else None
    return None if hint is Any else hint


def _compile(hint: Any, finite: bool) -> _Shape:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any or hint is object:
        return _ANY
    if origin is typing.Annotated:
        return _compile(args[0], finite)
    if hint is None or hint is type(None):
        return _Shape(_none, "None", "None")
    value_of = getattr(hint, "__value__", None)  # a `type X = ...` alias
    if value_of is not None and not isinstance(hint, type):
        return _compile(value_of, finite)
    supertype = getattr(hint, "__supertype__", None)  # typing.NewType
    if supertype is not None:
        return _compile(supertype, finite)
    if hint is bool:
        return _Shape(_bool, "true or false", "booleans")
    if hint is int:
        return _Shape(_int, "an integer", "integers")
    if hint is float:
        return _Shape(_finite_float if finite else _float, "a number", "numbers")
    if hint is str:
        return _Shape(_str, "a string", "strings")
    if origin is Literal:
        return _literal(args)
    if origin is typing.Union or isinstance(hint, types.UnionType):
        return _union(args, finite)
    if isinstance(hint, type) and hint in _BARE:
        return _compile(_BARE[hint], finite)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return _sequence(_compile(args[0], finite), tuple)
        if not args or args == ((),):
            return _sequence(_ANY, tuple)
        return _fixed_tuple(tuple(_compile(a, finite) for a in args))
    if origin in _SEQUENCES:
        return _sequence(_compile(args[0], finite) if args else _ANY, _SEQUENCES[origin])
    if origin in _MAPPINGS:
        key, value = (_compile(args[0], finite), _compile(args[1], finite)) if args else (_ANY, _ANY)
        return _mapping(key, value)
    if isinstance(hint, type):
        if attrs.has(hint):
            return _nested(hint)
        if issubclass(hint, os.PathLike):
            return _path(hint)
        return _instance(hint)
    return _ANY


def _any(value: Any, where: str, at: str) -> Any:
    return value


_ANY = _Shape(_any, "anything", "anything")


def _none(value: Any, where: str, at: str) -> Any:
    if value is None:
        return None
    raise _Mismatch(at, "None", value)


def _bool(value: Any, where: str, at: str) -> Any:
    if value is True or value is False:
        return value
    raise _Mismatch(at, "true or false", value)


def _int(value: Any, where: str, at: str) -> Any:
    if type(value) is int or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise _Mismatch(at, "an integer", value)


def _float(value: Any, where: str, at: str) -> Any:
    if type(value) is float:
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            pass
    raise _Mismatch(at, "a number", value)


def _finite_float(value: Any, where: str, at: str) -> Any:
    number = _float(value, where, at)
    if math.isfinite(number):
        return number
    raise _Mismatch(at, "a finite number", value)


def _str(value: Any, where: str, at: str) -> Any:
    if isinstance(value, str):
        return value
    raise _Mismatch(at, "a string", value)


def _literal(values: tuple[Any, ...]) -> _Shape:
    one = f"one of {', '.join(repr(v) for v in values)}"
    names = [v for v in values if isinstance(v, str)]

    def check(value: Any, where: str, at: str) -> Any:
        for choice in values:
            if value == choice and type(value) is type(choice):
                return choice
        import difflib

        close = difflib.get_close_matches(value, names, n=1) if isinstance(value, str) else []
        raise _Mismatch(at, one, value, f"; did you mean {close[0]!r}?" if close else "")

    return _Shape(check, one, f"values among {', '.join(repr(v) for v in values)}")


def _union(args: tuple[Any, ...], finite: bool) -> _Shape:
    none_ok = type(None) in args
    arms = [_compile(a, finite) for a in args if a is not type(None)]
    one = " or ".join(a.one for a in arms)
    many = " or ".join(a.many for a in arms)
    if any(a is _ANY for a in arms):
        return _ANY
    if len(arms) == 1:
        only = arms[0].check

        def check_one(value: Any, where: str, at: str) -> Any:
            if value is None and none_ok:
                return None
            return only(value, where, at)

        return _Shape(check_one, one, many)

    def check(value: Any, where: str, at: str) -> Any:
        if value is None and none_ok:
            return None
        for arm in arms:
            try:
                return arm.check(value, where, at)
            except _Mismatch:
                continue
        raise _Mismatch(at, one, value)

    return _Shape(check, one, many)


_SEQUENCES: dict[Any, type] = {
    list: list, set: frozenset, frozenset: frozenset,
    abc.Sequence: tuple, abc.MutableSequence: list, abc.Set: frozenset, abc.MutableSet: set,
    abc.Iterable: tuple, abc.Collection: tuple,
}
_MAPPINGS = {dict, abc.Mapping, abc.MutableMapping}
#: Unparameterised containers, read as holding anything.
_BARE: dict[Any, Any] = {
    tuple: tuple[Any, ...], list: list[Any], dict: dict[Any, Any], set: set[Any], frozenset: frozenset[Any],
    **{o: o[Any] for o in _SEQUENCES if o not in (list, set, frozenset)},
    **{o: o[Any, Any] for o in _MAPPINGS if o is not dict},
}


def _sequence(item: _Shape, kind: type) -> _Shape:
    one = "a list" if item is _ANY else f"a list of {item.many}"
    item_check = item.check
    accepted = (list, tuple, set, frozenset) if kind in (set, frozenset) else (list, tuple)

    def check(value: Any, where: str, at: str) -> Any:
        if not isinstance(value, accepted):
            hint = " (a single value is still written as a list: [\"...\"])" if isinstance(value, str) else ""
            raise _Mismatch(at, one, value, hint)
        return kind([item_check(v, where, f"{at}[{i}]") for i, v in enumerate(value)])

    return _Shape(check, one, "lists" if item is _ANY else f"lists of {item.many}")


def _fixed_tuple(items: tuple[_Shape, ...]) -> _Shape:
    one = f"a list of {len(items)} items ({', '.join(i.one for i in items)})"

    def check(value: Any, where: str, at: str) -> Any:
        if not isinstance(value, (list, tuple)) or len(value) != len(items):
            raise _Mismatch(at, one, value)
        return tuple(shape.check(v, where, f"{at}[{i}]") for i, (shape, v) in enumerate(zip(items, value, strict=True)))

    return _Shape(check, one, f"lists of {len(items)} items")


def _mapping(key: _Shape, item: _Shape) -> _Shape:
    one = "a table" if item is _ANY else f"a table of {item.many}"
    key_check, item_check = key.check, item.check

    def check(value: Any, where: str, at: str) -> Any:
        if not isinstance(value, Mapping):
            raise _Mismatch(at, one, value)
        checked = {}
        for k, v in value.items():
            try:
                k = key_check(k, where, at)
            except _Mismatch:
                raise _Mismatch(at, f"a table whose keys are {key.many}", k) from None
            checked[k] = item_check(v, where, f"{at}[{k!r}]")
        return checked

    return _Shape(check, one, "tables" if item is _ANY else f"tables of {item.many}")


def _nested(cls: type) -> _Shape:
    def check(value: Any, where: str, at: str) -> Any:
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            raise _Mismatch(at, "a table", value)
        return _build(cls, value, where, at + ".")

    return _Shape(check, "a table", "tables")


def _path(cls: type) -> _Shape:
    def check(value: Any, where: str, at: str) -> Any:
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            return value if cls is os.PathLike else cls(value)
        raise _Mismatch(at, "a path (a string)", value)

    return _Shape(check, "a path (a string)", "paths")


def _instance(cls: type) -> _Shape:
    name = cls.__name__
    one = f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"

    def check(value: Any, where: str, at: str) -> Any:
        if isinstance(value, cls):
            return value
        raise _Mismatch(at, one, value)

    return _Shape(check, one, f"{name} values")


# --- loading -------------------------------------------------------------------------------------------------


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
    data, where = read_config_file(source)
    return Config.from_dict(data, source=where)


def read_config_file(path: str | os.PathLike[str]) -> tuple[Any, str]:
    """``(the config's table as written, its source name)`` from a TOML file, its strings' ``${VAR}`` replaced
    from the environment (see :mod:`aurelis_core._env`); :class:`ConfigError` if the file cannot be read, is
    not TOML or names a variable that is not set. Not checked beyond that (see :func:`parse_config`)."""
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigError(f"expected a dict, a Config or the path of a TOML file, got {describe(path)}")
    # Imported for config files only: a dict or Config needs neither (~15 ms of `import aurelis_core`).
    import tomllib
    from pathlib import Path

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    where = str(path)
    if path.name == "pyproject.toml":
        tool = data.get("tool", {})
        section = tool.get("aurelis") if isinstance(tool, Mapping) else None
        if section is None:
            raise ConfigError(f"{path}: no [tool.aurelis] table")
        data, where = section, f"{path} [tool.aurelis]"
    data, errors = expand_env(data, where)
    if errors:
        raise ConfigError(*errors)
    return data, where
