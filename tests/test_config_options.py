"""Every option of every plugin is checked at build time: walked here from the option classes themselves.

The option classes are found, not listed: the ``Config`` of every built-in plugin (``BUILTIN_PLUGINS``), of the
contrib plugins (their sources, when their dependencies are installed), plus ``Endpoint``, ``RequestControls``
and the ``[tenant]`` table. For each field (nested tables included) the test derives, from its annotation alone,
values of the wrong type and, for numbers, values out of range, and asserts each fails with a
:class:`ConfigError` that names the key. So an option added without a type the loader can check (``Any``), or a
number without a range, fails this test. Then a third-party option class, defined here, gets the same checks
with no validator written.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
import sys
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
import pytest

import aurelis_core.pipeline
from aurelis_core import ConfigError, Endpoint, Pipeline, RequestControls, hookimpl
from aurelis_core._live_report import ReportConfig
from aurelis_core._plugins import BUILTIN_PLUGINS, PluginSpec
from aurelis_core._tenant import TenantConfig
from aurelis_core.config import ALLOW_NON_FINITE, config_from_table
from aurelis_core.validators import in_range

CONTRIB = Path(__file__).resolve().parent.parent / "contrib"


def _contrib_option_classes() -> dict[str, type]:
    """``{plugin name: its Config}`` of the contrib packages whose dependencies are installed.

    Imported from their sources, then taken out of ``sys.modules`` and ``sys.path`` again, so that
    tests/test_contrib.py imports them from the distributions it installs."""
    found: dict[str, type] = {}
    for source in sorted(CONTRIB.glob("*/src")):
        before = set(sys.modules)
        sys.path.insert(0, str(source))
        try:
            for module in pkgutil.iter_modules([str(source)]):
                try:
                    package = importlib.import_module(module.name)
                except ImportError:
                    continue
                for value in vars(package).values():
                    if isinstance(value, type) and isinstance(getattr(value, "name", None), str):
                        config = getattr(value, "Config", None)
                        if config is not None:
                            found[value.name] = config
        finally:
            sys.path.remove(str(source))
            for name in set(sys.modules) - before:
                if name.split(".")[0] in {m.name for m in pkgutil.iter_modules([str(source)])}:
                    del sys.modules[name]
    return found


def _option_classes() -> dict[str, type]:
    classes: dict[str, type] = {}
    for name, target in BUILTIN_PLUGINS.items():
        config = getattr(PluginSpec(name, target, "builtin").load(), "Config", None)
        if config is not None:
            classes[name] = config
    classes.update(_contrib_option_classes())
    classes["endpoints"] = Endpoint
    classes["request controls"] = RequestControls
    classes["tenant"] = TenantConfig
    classes["report"] = ReportConfig
    return classes


OPTION_CLASSES = _option_classes()
#: Valid values for the keys a table must have (options without a default).
REQUIRED = {Endpoint: {"url": "https://a.example/v1"}}


def test_the_walk_finds_the_option_classes() -> None:
    assert {"normalize", "memory", "redis", "sqlite", "gzip", "brotli", "httpx", "aiohttp", "breaker", "retry",
            "ratelimit", "tuner", "prometheus", "record", "round_robin", "ai_optimized"} <= set(OPTION_CLASSES)
    if importlib.util.find_spec("numpy") is not None and importlib.util.find_spec("opentelemetry") is not None:
        assert {"semantic", "otel", "request_counter"} <= set(OPTION_CLASSES)


# --- deriving wrong values from an annotation ------------------------------------------------------------------


def _strip_none(hint: Any) -> Any:
    args = typing.get_args(hint)
    if type(None) in args:
        rest = tuple(a for a in args if a is not type(None))
        return rest[0] if len(rest) == 1 else typing.Union[rest]  # noqa: UP007 - built from a tuple
    return hint


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, __import__("types").UnionType)


def wrong_types(hint: Any) -> list[Any]:
    """Values that no option annotated ``hint`` may take (``None`` aside: optional fields take it)."""
    hint = _strip_none(hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is int:
        return ["5", 1.5, True]
    if hint is float:
        return ["5", True, math.nan, math.inf]
    if hint is str:
        return [5, True, ["a"]]
    if hint is bool:
        return ["yes", 1]
    if origin is Literal:
        return ["no such choice", 5]
    if _is_union(hint):
        return [v for v in (5, 1.5, ["a"], {"a": 1}) if not any(_fits(v, a) for a in args)]
    if origin in (tuple, list) or origin in (typing.get_origin(typing.Sequence[int]),):
        return ["a string", *[[bad] for bad in wrong_types(args[0])]]
    if origin in (dict, typing.get_origin(typing.Mapping[str, int])):
        return [["a"], *[{"k": bad} for bad in wrong_types(args[1])]]
    if isinstance(hint, type) and attrs.has(hint):
        return [True, "a string"]
    raise AssertionError(f"no check can be derived from the annotation {hint!r}: annotate the option with a type")


def _fits(value: Any, hint: Any) -> bool:
    return (hint is bool and isinstance(value, bool)) or (hint is str and isinstance(value, str)) or (
        hint is int and type(value) is int) or (hint is float and type(value) in (int, float))


def _ranges(validator: Any) -> Iterator[in_range]:
    """The ``in_range`` validators inside ``validator`` (alone, in a list, under ``each``/``optional``)."""
    if validator is None:
        return
    if isinstance(validator, in_range):
        yield validator
    for inner in getattr(validator, "_validators", ()):  # attrs' and_ (a list of validators)
        yield from _ranges(inner)
    for name in ("validator",):  # each(), attrs' optional()
        yield from _ranges(getattr(validator, name, None))


def _numeric(hint: Any) -> type | None:
    """``int``/``float`` for a number option, or a list/table of numbers; ``None`` otherwise."""
    hint = _strip_none(hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in (int, float):
        return hint  # type: ignore[no-any-return]
    if origin in (tuple, list):
        return _numeric(args[0])
    if origin in (dict, typing.get_origin(typing.Mapping[str, int])):
        return _numeric(args[1])
    return None


def out_of_range(field: attrs.Attribute, hint: Any) -> list[Any]:  # type: ignore[type-arg]
    """Numbers the option must refuse: negative ones (no option takes them today), and the values just past
    the bounds its range validators declare."""
    kind = _numeric(hint)
    if kind is None:
        return []
    values: list[float] = [-1 if kind is int else -1.0]
    for bounds in _ranges(field.validator):
        step = 1 if bounds.integer else 1e-6
        if bounds.lo is not None:
            values.append(bounds.lo if bounds.lo_open else bounds.lo - step)
        if bounds.hi is not None:
            values.append(bounds.hi if bounds.hi_open else bounds.hi + step)
    hint = _strip_none(hint)
    origin = typing.get_origin(hint)
    if origin in (tuple, list):
        return [[v] for v in values]
    if origin is not None:
        return [{"k": v} for v in values]
    return values


# --- the walk -----------------------------------------------------------------------------------------------------


def walk(cls: type, prefix: str = "") -> Iterator[tuple[str, attrs.Attribute, Any, Any]]:  # type: ignore[type-arg]
    """``(key, field, annotation, how to put a value there)`` for every option of ``cls``, nested ones too."""
    hints = typing.get_type_hints(cls)
    for field in attrs.fields(cls):
        if not field.init:
            continue
        key = prefix + (field.alias or field.name)
        hint = hints.get(field.name, Any)
        bare = _strip_none(hint)
        yield key, field, hint, None
        if isinstance(bare, type) and attrs.has(bare):
            yield from walk(bare, key + ".")
        if typing.get_origin(bare) in (dict, typing.get_origin(typing.Mapping[str, int])):
            value = typing.get_args(bare)[1]
            if isinstance(value, type) and attrs.has(value):
                yield from walk(value, key + "['k'].")


def table_with(cls: type, key: str, value: Any) -> dict[str, Any]:
    """The smallest valid table of ``cls`` with ``value`` at ``key`` (a dotted/indexed path)."""
    table: dict[str, Any] = dict(REQUIRED.get(cls, {}))
    node = table
    parts = key.replace("['k'].", ".\0.").split(".")
    for part in parts[:-1]:
        node = node.setdefault(part if part != "\0" else "k", {})
    node[parts[-1]] = value
    return table


def problems_of(cls: type, where: str = "[t]") -> list[str]:
    """What is wrong with how ``cls``'s options are checked (empty: every option refuses wrong values)."""
    problems = []
    for key, field, hint, _ in walk(cls):
        if hint is Any:
            problems.append(f"{cls.__qualname__}.{field.name} is annotated Any: its values cannot be checked")
            continue
        try:
            bad_values = wrong_types(hint) + out_of_range(field, hint)
        except AssertionError as exc:
            problems.append(str(exc))
            continue
        for bad in bad_values:
            try:
                config_from_table(cls, table_with(cls, key, bad), where)
            except ConfigError as exc:
                if f"{where} {key}" not in str(exc).replace("['k'].", "['k']."):
                    problems.append(f"{key} = {bad!r}: the error does not name the key: {exc}")
            else:
                problems.append(f"{key} = {bad!r} was accepted")
        default = field.default
        if default is not attrs.NOTHING and not isinstance(default, attrs.Factory) and default is not None:
            given = list(default) if isinstance(default, tuple) else default
            try:
                config_from_table(cls, table_with(cls, key, given), where)
            except ConfigError as exc:
                problems.append(f"{key} = {given!r} (its default) was refused: {exc}")
    return problems


@pytest.mark.parametrize("name", sorted(OPTION_CLASSES))
def test_every_option_refuses_wrong_values_naming_its_key(name: str) -> None:
    assert problems_of(OPTION_CLASSES[name]) == []


def _list_options(cls: type) -> Iterator[str]:
    """The top-level options of ``cls`` that hold a list (tuple or list annotations)."""
    hints = typing.get_type_hints(cls)
    for field in attrs.fields(cls):
        if field.init and typing.get_origin(_strip_none(hints.get(field.name, Any))) in (tuple, list):
            yield field.alias or field.name


LIST_OPTIONS = [(name, key) for name, cls in sorted(OPTION_CLASSES.items()) for key in _list_options(cls)]


def test_the_walk_finds_list_options() -> None:
    assert {("normalize", "ignore_fields"), ("tenant", "credential_headers"), ("retry", "methods")} <= set(
        LIST_OPTIONS
    )


@pytest.mark.parametrize(("name", "key"), LIST_OPTIONS)
def test_an_option_class_built_in_code_refuses_a_string_for_a_list(name: str, key: str) -> None:
    """Built in code (a plugin author's, a test's), not from a config file whose annotation check comes first:
    ``tuple("user")`` would have made a list of valid one-letter items that means something else."""
    cls = OPTION_CLASSES[name]
    with pytest.raises((ValueError, TypeError), match=key):
        cls(**{**REQUIRED.get(cls, {}), key: "user"})


def test_the_walk_finds_unchecked_options() -> None:
    """The walk can fail: an option typed ``Any``, a number without a range, are reported."""

    @attrs.frozen
    class Unchecked:
        count: int = 5
        anything: Any = None
        ratio: float = attrs.field(default=0.5, validator=in_range(0, 1))
        hidden: int = attrs.field(default=1, validator=lambda i, a, v: None)

    problems = problems_of(Unchecked)
    assert "count = -1 was accepted" in problems
    assert any("anything is annotated Any" in p for p in problems)
    assert "hidden = -1 was accepted" in problems
    assert not any(p.startswith("ratio") for p in problems)


# --- a third-party option class: checked from its annotations alone ---------------------------------------------


@attrs.frozen
class Limits:
    top: int = 10
    share: float = 0.5


@attrs.frozen
class ThirdPartyConfig:
    count: int = 1
    ratio: float = 0.5
    wild: float = attrs.field(default=0.0, metadata={ALLOW_NON_FINITE: True})
    maybe: float | None = None
    names: tuple[str, ...] = ()
    labels: Mapping[str, str] = attrs.field(factory=dict)
    mode: Literal["fast", "safe"] = "fast"
    limits: Limits = attrs.field(factory=Limits)
    token: str | None = attrs.field(default=None, repr=False)
    where: Path = Path("data")
    flag: bool = False


class ThirdParty:
    name = "third_party"
    Config = ThirdPartyConfig

    def __init__(self, config: ThirdPartyConfig, pipeline: Any) -> None:
        self.config = config

    @hookimpl
    def aurelis_observe(self, ctx: Any) -> None:
        pass


def test_a_third_party_option_class_is_checked_from_its_annotations() -> None:
    good = config_from_table(ThirdPartyConfig, {
        "count": 3, "ratio": 1, "wild": math.inf, "maybe": 2, "names": ["a", "b"], "labels": {"k": "v"},
        "mode": "safe", "limits": {"top": 5}, "token": "s3cret", "where": "out/dir", "flag": True,
    }, "[third_party]")
    assert good == ThirdPartyConfig(3, 1.0, math.inf, 2.0, ("a", "b"), {"k": "v"}, "safe", Limits(5), "s3cret",
                                    Path("out/dir"), True)
    assert type(good.ratio) is float and type(good.maybe) is float and type(good.names) is tuple
    with pytest.raises(ConfigError) as info:
        config_from_table(ThirdPartyConfig, {
            "count": True, "ratio": math.nan, "wild": "x", "maybe": "2", "names": "a", "labels": {"k": 1},
            "mode": "fsat", "limits": {"top": 1.5, "shares": 1}, "token": 12345, "where": 5, "flag": "no",
        }, "[third_party]")
    assert list(info.value.errors) == [
        "[third_party] count: expected an integer, got True (a boolean)",
        "[third_party] ratio: expected a finite number, got nan (a number)",
        "[third_party] wild: expected a number, got 'x' (a string)",
        "[third_party] maybe: expected a number, got '2' (a string)",
        "[third_party] names: expected a list of strings, got 'a' (a string) (a single value is still written "
        "as a list: [\"...\"])",
        "[third_party] labels['k']: expected a string, got 1 (an integer)",
        "[third_party] mode: expected one of 'fast', 'safe', got 'fsat' (a string); did you mean 'fast'?",
        "[third_party] limits.top: expected an integer, got 1.5 (a number)",
        "[third_party] limits: unknown key 'shares'; did you mean 'share'? valid: share, top",
        "[third_party] token: expected a string, got an integer",
        "[third_party] where: expected a path (a string), got 5 (an integer)",
        "[third_party] flag: expected true or false, got 'no' (a string)",
    ]
    assert problems_of(ThirdPartyConfig) != []  # its numbers have no range: the walk above would say so


def test_a_third_party_plugin_table_is_checked_when_the_pipeline_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    known = {"third_party": PluginSpec("third_party", f"{__name__}:ThirdParty", "a-third-party-dist")}
    monkeypatch.setattr(aurelis_core.pipeline, "discover_plugins", lambda: known)
    pipeline = Pipeline({"plugins": ["third_party"], "third_party": {"names": ["x"], "limits": {"share": 1}}})
    assert pipeline.plugin("third_party").config.limits == Limits(10, 1.0)
    with pytest.raises(ConfigError, match=r"<dict>: \[third_party\] names: expected a list of strings"):
        Pipeline({"plugins": ["third_party"], "third_party": {"names": "x"}})
    with pytest.raises(ConfigError, match=r"<dict>: \[third_party\] limits.share: expected a number"):
        Pipeline({"third_party": {"limits": {"share": "half"}}})  # not enabled: checked all the same
