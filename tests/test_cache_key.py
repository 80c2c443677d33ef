"""The cache key covers everything that can change the answer, and two tenants never share an entry.

The first half pins the cases that once broke these promises (each failed on the code before its fix); the
second proves them in general with hypothesis: generated JSON bodies written in many equivalent spellings get
one key, bodies that differ get different keys, bodies that cannot be keyed safely get none, and entries made for
one tenant (credential, organization, project...) are never served to another, in each of the three tiers.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Iterator
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aurelis_core import Pipeline, RequestContext, RequestControls, cache_info, instrument
from aurelis_core._tenant import DEFAULT_CREDENTIAL_HEADERS, DEFAULT_CREDENTIAL_PARAMS, DEFAULT_SCOPE_HEADERS
from aurelis_core.testing import SimulatedServer, simulated_upstream

URL = "https://api.example/v1/chat/completions"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def normalizer(config: dict[str, Any] | None = None) -> Any:
    """The ``normalize`` plugin of a pipeline built from ``config`` (plus normalize and memory)."""
    return Pipeline({"plugins": ["normalize", "memory"], **(config or {})}).plugin("normalize")


_DEFAULT = normalizer()


def key_of(raw: bytes | Any, *, url: str = URL, headers: dict[str, str] | None = None, plugin: Any = None,
           namespace: str | None = None) -> str | None:
    content = raw if isinstance(raw, bytes) else json.dumps(raw).encode()
    all_headers = {"content-type": "application/json", **(headers or {})}
    request = httpx.Request("POST", url, content=content, headers=all_headers)
    ctx = RequestContext(request, None, httpx, False, RequestControls(namespace=namespace))
    return (plugin or _DEFAULT).aurelis_normalize(ctx)  # type: ignore[no-any-return]


# --- who is asking ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("header", ["Ocp-Apim-Subscription-Key", "cf-aig-authorization", "x-goog-api-key",
                                    "x-portkey-api-key", "helicone-auth"])
def test_credentials_in_any_known_header_scope_the_key(header: str) -> None:
    a, b = key_of(CHAT, headers={header: "tenant-a"}), key_of(CHAT, headers={header: "tenant-b"})
    assert None not in (a, b) and a != b
    assert a != key_of(CHAT)  # and neither is the anonymous tenant


@pytest.mark.parametrize("header", ["OpenAI-Organization", "OpenAI-Project", "OpenAI-Beta", "anthropic-version",
                                    "anthropic-beta", "Accept-Encoding"])
def test_answer_scoping_headers_are_part_of_the_key(header: str) -> None:
    same_credential = {"authorization": "Bearer k"}
    a = key_of(CHAT, headers={**same_credential, header: "one"})
    b = key_of(CHAT, headers={**same_credential, header: "two"})
    assert None not in (a, b) and a != b


def test_headers_that_change_between_identical_calls_stay_out_of_the_key() -> None:
    base = key_of(CHAT, headers={"authorization": "Bearer k"})
    for header, value in [("x-stainless-retry-count", "1"), ("x-stainless-read-timeout", "30"),
                          ("user-agent", "OpenAI/Python 3.57"), ("x-request-id", "r1")]:
        assert key_of(CHAT, headers={"authorization": "Bearer k", header: value}) == base


def test_credential_query_parameters_are_fingerprinted_not_keyed_as_they_are() -> None:
    a = key_of(CHAT, url=URL + "?key=SECRET-A&alt=sse")
    b = key_of(CHAT, url=URL + "?key=SECRET-B&alt=sse")
    assert None not in (a, b) and a != b
    assert key_of(CHAT, url=URL + "?alt=sse") not in (a, b)
    # A namespace shares answers across credentials, in the query as in headers.
    shared = normalizer({"tenant": {"namespace": "team"}})
    assert key_of(CHAT, url=URL + "?key=A", plugin=shared) == key_of(CHAT, url=URL + "?key=B", plugin=shared)


def test_tenant_definition_is_extended_from_config() -> None:
    plugin = normalizer({"tenant": {"credential_headers": ["X-Gateway-Key"], "credential_params": ["sig2"],
                                    "scope_headers": ["x-region"]}})
    assert key_of(CHAT, headers={"x-gateway-key": "a"}, plugin=plugin) != key_of(
        CHAT, headers={"x-gateway-key": "b"}, plugin=plugin)
    assert key_of(CHAT, headers={"x-region": "eu"}, plugin=plugin) != key_of(
        CHAT, headers={"x-region": "us"}, plugin=plugin)
    assert key_of(CHAT, url=URL + "?sig2=a", plugin=plugin) != key_of(CHAT, url=URL + "?sig2=b", plugin=plugin)
    # The default pipeline ignores the custom header, as it ignores any header it was not told about.
    assert key_of(CHAT, headers={"x-gateway-key": "a"}) == key_of(CHAT, headers={"x-gateway-key": "b"})


def test_a_header_cannot_be_both_credential_and_scope() -> None:
    from aurelis_core import ConfigError

    with pytest.raises(ConfigError, match="both credential and scope"):
        Pipeline({"tenant": {"scope_headers": ["authorization"]}})


def test_the_tenant_is_one_definition_for_every_plugin() -> None:
    pipeline = Pipeline({"plugins": ["normalize", "memory"], "tenant": {"credential_headers": ["x-gw"]}})
    request = httpx.Request("POST", URL + "?key=q", headers={"x-gw": "a", "OpenAI-Project": "p"})
    identity = pipeline.tenant.identify(request)
    assert identity.tenant.startswith("key:")
    assert identity.scope == (("openai-project", "p"),)
    # The same credentials in a different order are another material; the same ones are the same tenant.
    again = pipeline.tenant.identify(httpx.Request("POST", URL + "?key=q", headers={"x-gw": "a"}))
    assert again.tenant == identity.tenant
    other = pipeline.tenant.identify(httpx.Request("POST", URL + "?key=r", headers={"x-gw": "a"}))
    assert other.tenant != identity.tenant


def test_old_normalize_spelling_of_namespace_and_secret_still_works() -> None:
    with pytest.warns(DeprecationWarning, match=r"\[tenant\] namespace"):
        pipeline = Pipeline({"plugins": ["normalize", "memory"], "normalize": {"namespace": "team"}})
    assert pipeline.tenant.namespace == "team"
    plugin = pipeline.plugin("normalize")
    assert key_of(CHAT, headers={"authorization": "a"}, plugin=plugin) == key_of(
        CHAT, headers={"authorization": "b"}, plugin=plugin)


def test_keys_and_fingerprints_never_contain_a_credential() -> None:
    secret = "sk-THIS-IS-SECRET-0123456789"
    key = key_of(CHAT, url=URL + f"?key={secret}", headers={"authorization": f"Bearer {secret}"})
    assert key is not None and secret not in key
    identity = _DEFAULT._tenant.identify(httpx.Request("POST", URL, headers={"authorization": secret}))
    assert secret not in repr(identity)


# --- what the body says --------------------------------------------------------------------------------------


def test_numbers_beyond_a_double_are_not_null_nor_each_other() -> None:
    keys = [key_of(raw) for raw in (b'{"model":"m","temperature":1e400}', b'{"model":"m","temperature":-1e400}',
                                    b'{"model":"m","temperature":null}')]
    assert None not in keys and len(set(keys)) == 3


def test_decimals_are_exact_and_integral_values_are_integers() -> None:
    assert key_of(b'{"t":0.1}') != key_of(b'{"t":0.1000000000000000055511151231257827}')
    assert key_of(b'{"t":100}') == key_of(b'{"t":1e2}') == key_of(b'{"t":100.000}') == key_of(b'{"t":0.1e3}')
    assert key_of(b'{"t":1.5}') == key_of(b'{"t":15e-1}') == key_of(b'{"t":1.50}')
    assert key_of(b'{"t":0}') == key_of(b'{"t":-0.0}')
    assert key_of(b'{"t":1e999999999}') not in (None, key_of(b'{"t":1e999999998}'))  # no giant integer built


@pytest.mark.parametrize("raw", [b'{"model":"a","model":"b"}', b'{"m":{"t":1,"t":1}}',
                                 b'{"a":[{"x":":","x":2}]}', b'{"a":"\\u003a","a":1}', b'{"a":"\\u003A"}',
                                 b'{"a":"b","a":"\\u003a"}', b'{"a":"b","a":"\\u003A"}'])
def test_bodies_with_a_repeated_key_are_not_cached(raw: bytes) -> None:
    # Upstreams disagree on which of the repeated values wins; a key of either could serve the wrong answer.
    assert key_of(raw) is None


def test_colons_inside_strings_do_not_look_like_repeated_keys() -> None:
    assert key_of({"model": "m", "messages": [{"content": "a: b :: c", "role": "user"}], "k:v": "::"}) is not None


@pytest.mark.parametrize("raw", [b'{"a":NaN}', b'{"a":Infinity}', b'{"a":"\\ud800"}', b'{"a":1} x', b"[1]",
                                 b'{"a":' * 5000 + b"1" + b"}" * 5000])
def test_bodies_that_cannot_be_keyed_safely_get_no_key(raw: bytes) -> None:
    assert key_of(raw) is None


def nested(depth: int) -> bytes:
    """An object ``depth`` containers deep, objects and arrays in turn, beside a shallow field."""
    opening = b"".join(b'{"a":' if level % 2 == 0 else b"[" for level in range(depth))
    closing = b"".join(b"}" if level % 2 == 0 else b"]" for level in reversed(range(depth)))
    return b'{"model":"m","deep":' + opening + b"1" + closing + b"}"


def test_the_depth_bound_is_fixed_not_the_stack_left() -> None:
    from aurelis_plugins.normalize import MAX_DEPTH

    within, beyond = nested(MAX_DEPTH - 1), nested(MAX_DEPTH)  # the top object is one level more
    assert key_of(within) is not None and key_of(beyond) is None
    # However much stack the caller has, the answer is the same.
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)
    try:
        assert key_of(beyond) is None and key_of(nested(3000)) is None and key_of(within) is not None
    finally:
        sys.setrecursionlimit(old)


def test_whitespace_is_kept_in_the_key_unless_folding_is_asked_for() -> None:
    spaced = {"model": "m", "messages": [{"role": "user", "content": "a  b"}]}
    single = {"model": "m", "messages": [{"role": "user", "content": "a b"}]}
    assert key_of(spaced) != key_of(single)
    folding = normalizer({"normalize": {"fold_whitespace": True}})
    assert key_of(spaced, plugin=folding) == key_of(single, plugin=folding)


class DeepBodyUpstream:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        return httpx.Response(200, json={"echo": len(request.content)})


def test_a_deeply_nested_body_passes_through_uncached(upstream: SimulatedServer) -> None:
    # ~1000 levels made the key's parser raise RecursionError, and the request failed with it.
    body = b'{"model":"m","x":' + b"[" * 1000 + b"]" * 1000 + b"}"
    client = instrument(httpx.Client(base_url=upstream.base_url), {"plugins": ["normalize", "memory"]})
    with client:
        for _ in range(2):
            response = client.post("/chat/completions", content=body, headers={"content-type": "application/json"})
            assert response.status_code in (200, 400)  # whatever the upstream says: it was asked
            assert response.headers.get("x-aurelis-cache") != "hit"
    assert upstream.count("/chat/completions") == 2


def test_a_failing_key_stage_is_counted_and_the_request_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    class Exploding:
        name = "exploding"

        from aurelis_core import hookimpl

        @hookimpl
        def aurelis_normalize(self, ctx: RequestContext) -> str | None:
            raise RecursionError("hostile body")

    upstream = DeepBodyUpstream()
    pipeline = Pipeline({"plugins": ["memory"]}, plugins=[Exploding()])
    client = pipeline.instrument(httpx.Client(transport=httpx.MockTransport(upstream)))
    with caplog.at_level("DEBUG", logger="aurelis"):
        for _ in range(3):
            assert client.post(URL, json=CHAT).status_code == 200
    assert upstream.calls == 3
    assert pipeline.stats.stage_errors == {"normalize.exploding": 3}
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "normalize.exploding" in warnings[0].getMessage()


# --- property tests: one key per meaning, a different key per difference ------------------------------------

_numbers = st.builds(
    lambda sign, digits, exponent: Decimal((sign, tuple(int(d) for d in str(digits)), exponent)),
    st.integers(0, 1), st.integers(0, 10**20), st.integers(-30, 30),
)
_scalars = st.one_of(st.none(), st.booleans(), _numbers, st.text(max_size=8),
                     st.sampled_from(["", ":", "a:b", "\u00e9", "\U0001f600", '"', "\\"]))
_values = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=4), children, max_size=4),
    ),
    max_leaves=12,
)
_bodies = st.dictionaries(st.text(max_size=6), _values, max_size=5)


def _meaning(value: Any) -> Any:
    """A reference model of what a JSON value means, independent of the code under test: numbers as exact
    rationals (so 1, 1.0 and 10e-1 are one number), objects as sets of members, every value tagged with its
    JSON type (so true is not 1, and "1" is not 1)."""
    if isinstance(value, bool):
        return ("bool", value)
    if value is None:
        return ("null",)
    if isinstance(value, (int, Decimal)):
        return ("num", Fraction(value))
    if isinstance(value, str):
        return ("str", value)
    if isinstance(value, list):
        return ("arr", tuple(_meaning(v) for v in value))
    return ("obj", frozenset((k, _meaning(v)) for k, v in value.items()))


def _spell_number(value: Decimal, rng: random.Random) -> str:
    """One of the many JSON spellings of ``value``: trailing zeros, the point anywhere, any exponent."""
    if not value:
        return rng.choice(["0", "0.0", "-0", "0e5", "0.000", "-0.0E-3"])
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    extra = rng.randint(0, 2)  # zeros moved from the exponent into the coefficient
    coefficient = "".join(map(str, digits)) + "0" * extra
    exponent -= extra
    point = rng.randint(0, len(coefficient))  # where the point goes; the exponent makes up for it
    exponent += len(coefficient) - point
    if point == 0:
        mantissa = "0." + coefficient
    elif point == len(coefficient):
        mantissa = coefficient
    else:
        mantissa = coefficient[:point] + "." + coefficient[point:]
    if exponent == 0 and rng.random() < 0.5:
        spelled = mantissa
    else:
        plus = rng.choice(["", "+"]) if exponent >= 0 else ""
        spelled = f"{mantissa}{rng.choice('eE')}{plus}{exponent}"
    return ("-" if sign else "") + spelled


def _write(value: Any, rng: random.Random) -> str:
    """``value`` as JSON text, in a random one of its spellings (member order, number spelling, whitespace,
    string escapes other than a colon's)."""
    space = rng.choice(["", " ", "\n  "])
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, (int, Decimal)):
        return _spell_number(Decimal(value), rng)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=rng.random() < 0.5)
    if isinstance(value, list):
        return "[" + space + ("," + space).join(_write(v, rng) for v in value) + space + "]"
    items = list(value.items())
    rng.shuffle(items)
    return "{" + space + ("," + space).join(
        f"{json.dumps(k, ensure_ascii=rng.random() < 0.5)}{space}:{space}{_write(v, rng)}" for k, v in items
    ) + space + "}"


@settings(max_examples=300, deadline=None)
@given(_bodies, st.randoms(use_true_random=False))
def test_every_spelling_of_a_body_has_one_key(body: dict[str, Any], rng: random.Random) -> None:
    first, second = _write(body, rng).encode(), _write(body, rng).encode()
    key = key_of(first)
    assert key is not None
    assert key_of(second) == key


@settings(max_examples=300, deadline=None)
@given(_bodies, _bodies, st.randoms(use_true_random=False))
def test_bodies_share_a_key_only_when_they_mean_the_same(a: dict[str, Any], b: dict[str, Any],
                                                          rng: random.Random) -> None:
    key_a, key_b = key_of(_write(a, rng).encode()), key_of(_write(b, rng).encode())
    assert (key_a == key_b) == (_meaning(a) == _meaning(b))


@st.composite
def _body_and_a_change(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    """A body and a copy with one small change somewhere: the near misses random pairs would rarely make."""
    body = draw(_bodies.filter(bool))
    changed = _copy(body)
    path: list[Any] = []
    node: Any = changed
    while isinstance(node, (dict, list)) and node and draw(st.booleans()):
        index = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
        path.append(index)
        node = node[index]
    parent: Any = changed
    for index in path[:-1]:
        parent = parent[index]
    replacement = draw(_values)
    if isinstance(node, Decimal) and not isinstance(node, bool) and draw(st.booleans()):
        # The nearest numbers: equal as binary floats when they carry more than 17 significant digits.
        exponent = node.as_tuple().exponent
        assert isinstance(exponent, int)
        replacement = node + Decimal((draw(st.integers(0, 1)), (1,), exponent - draw(st.integers(0, 3))))
    if path:
        parent[path[-1]] = replacement
    else:
        changed[draw(st.text(max_size=6))] = replacement
    return body, changed


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


@settings(max_examples=300, deadline=None)
@given(_body_and_a_change(), st.randoms(use_true_random=False))
def test_a_small_change_anywhere_changes_the_key(pair: tuple[dict[str, Any], dict[str, Any]],
                                                 rng: random.Random) -> None:
    body, changed = pair
    key_a, key_b = key_of(_write(body, rng).encode()), key_of(_write(changed, rng).encode())
    assert (key_a == key_b) == (_meaning(body) == _meaning(changed))


@settings(max_examples=200, deadline=None)
@given(_numbers, st.integers(0, 1), st.integers(0, 4), st.randoms(use_true_random=False))
def test_the_nearest_numbers_have_different_keys(number: Decimal, sign: int, finer: int, rng: random.Random) -> None:
    # Next to each other at any precision: equal as binary floats once they carry more than 17 digits.
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int)
    near = number + Decimal((sign, (1,), exponent - finer))
    key_a = key_of(('{"t":' + _spell_number(number, rng) + "}").encode())
    key_b = key_of(('{"t":' + _spell_number(near, rng) + "}").encode())
    assert (key_a == key_b) == (number == near)


@settings(max_examples=200, deadline=None)
@given(_bodies.filter(bool), st.randoms(use_true_random=False))
def test_a_repeated_key_is_never_cached(body: dict[str, Any], rng: random.Random) -> None:
    text = _write(body, rng)
    name = next(iter(body))
    # The first member of the top-level object, written twice with different values.
    repeated = "{" + json.dumps(name) + ":" + _write(None, rng) + "," + text[1:]
    assert key_of(repeated.encode()) is None


# --- property tests: tenants never share an entry, in any tier ------------------------------------------------

_header_values = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12)
_identities = st.fixed_dictionaries(
    {},
    optional={
        "credential": st.tuples(st.sampled_from(DEFAULT_CREDENTIAL_HEADERS), _header_values),
        "param": st.tuples(st.sampled_from(DEFAULT_CREDENTIAL_PARAMS), st.text("abcXYZ019", min_size=1, max_size=8)),
        "scope": st.tuples(st.sampled_from(DEFAULT_SCOPE_HEADERS), _header_values),
    },
)


def _request_parts(identity: dict[str, Any]) -> tuple[str, dict[str, str]]:
    headers = {"content-type": "application/json"}
    query = ""
    if "credential" in identity:
        name, value = identity["credential"]
        headers[name] = value
    if "scope" in identity:
        name, value = identity["scope"]
        headers[name] = value
    if "param" in identity:
        name, value = identity["param"]
        query = f"?{name}={value}"
    # httpx adds its own accept and accept-encoding headers; a scope header of the same name replaces them.
    return query, headers


def _same_identity(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two requests ask as the same tenant for the same variant of the answer."""
    return a == b


@pytest.fixture(scope="module")
def isolation_upstream() -> Iterator[SimulatedServer]:
    with simulated_upstream() as server:
        yield server


@pytest.fixture(params=["memory", "redis", "sqlite"])
def tier_pipeline(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    tier = request.param
    config: dict[str, Any] = {"plugins": ["normalize", tier]}
    if tier == "redis":
        config["redis"] = {"url": request.getfixturevalue("redis_flush"), "socket_timeout": 2.0,
                           "connect_timeout": 2.0}
    if tier == "sqlite":
        config["sqlite"] = {"path": str(tmp_path_factory.mktemp("isolation") / "cache.sqlite3")}
    pipeline = Pipeline(config)
    try:
        yield pipeline
    finally:
        pipeline.close()


_serial = iter(range(10**9))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_identities, _identities)
def test_an_entry_is_served_only_to_its_own_tenant(tier_pipeline: Pipeline, isolation_upstream: SimulatedServer,
                                                  a: dict[str, Any], b: dict[str, Any]) -> None:
    tier = tier_pipeline.tiers[0]
    body = {"model": "m", "messages": [{"role": "user", "content": f"isolation {next(_serial)}"}]}
    client = tier_pipeline.instrument(httpx.Client(base_url=isolation_upstream.base_url))
    query_a, headers_a = _request_parts(a)
    query_b, headers_b = _request_parts(b)
    first = client.post("/v1/chat/completions" + query_a, json=body, headers=headers_a)
    assert first.status_code == 200 and first.headers["x-aurelis-cache"] == "miss"
    plugin = tier_pipeline.plugin(tier)
    if hasattr(plugin, "flush"):
        plugin.flush()  # the shared tiers write behind: the entry is in the store before the second request
    second = client.post("/v1/chat/completions" + query_b, json=body, headers=headers_b)
    hit = second.headers["x-aurelis-cache"] == "hit"
    assert hit == _same_identity(a, b), (a, b, cache_info(first), cache_info(second))
    if hit:
        assert second.content == first.content


def test_credentials_never_reach_a_tier(tmp_path: Path, redis_flush: str, upstream: SimulatedServer) -> None:
    import redis

    secret = "sk-NEVER-STORED-4242"
    path = tmp_path / "cache.sqlite3"
    # Stored uncompressed, so a credential would show in the bytes as it is.
    pipeline = Pipeline({"plugins": ["normalize", "memory", "redis", "sqlite"],
                         "redis": {"url": redis_flush, "codec": "none"},
                         "sqlite": {"path": str(path), "codec": "none"}})
    client = pipeline.instrument(httpx.Client(base_url=upstream.base_url))
    with client:
        client.post(f"/v1/chat/completions?key={secret}", json=CHAT, headers={"authorization": f"Bearer {secret}",
                                                                                "x-api-key": secret})
        pipeline.plugin("redis").flush()
        pipeline.plugin("sqlite").flush()
    store = redis.Redis.from_url(redis_flush)
    try:
        for name in store.keys("*"):
            assert secret.encode() not in name
            value = store.get(name) if store.type(name) == b"string" else b""
            assert secret.encode() not in (value or b"")
    finally:
        store.close()
    assert secret.encode() not in path.read_bytes()
    assert upstream.count("/chat/completions") == 1


def test_a_repeated_request_is_known_by_its_model_too(upstream: SimulatedServer) -> None:
    """The key stage remembers requests it has keyed; a repeated one (every hit) still names its model."""
    pipeline = Pipeline({"plugins": ["normalize", "memory"]})
    # A nested "model" key before the body's own: the label is the body's model, not the first one in the bytes.
    body = {"metadata": {"model": "not-this"}, **CHAT, "model": "sim-chat"}
    with pipeline.instrument(httpx.Client()) as client:
        for _ in range(2):
            client.post(upstream.base_url + "/chat/completions", json=body)
    assert [(s.cache, s.model) for s in pipeline.stats.samples] == [("miss", "sim-chat"), ("hit", "sim-chat")]


def test_the_secret_never_shows_in_a_repr() -> None:
    from aurelis_core.plugin import TenantConfig
    from aurelis_plugins.normalize import NormalizeConfig

    assert "s3cr3t" not in repr(NormalizeConfig(secret="s3cr3t"))
    assert "s3cr3t" not in repr(TenantConfig(secret="s3cr3t"))
    assert "s3cr3t" not in repr(Pipeline({"plugins": ["normalize"], "tenant": {"secret": "s3cr3t"}}).config)


# --- what the mutation run found untested ------------------------------------------------------------------


def test_a_wide_body_is_keyed_however_many_brackets_it_has() -> None:
    from aurelis_plugins.normalize import MAX_DEPTH

    wide = {"model": "m", "tools": [{"type": "function", "function": {"parameters": {}}}] * (MAX_DEPTH * 2)}
    assert key_of(wide) is not None
    # The outer object, its list and nested()'s own top object are three levels besides the nested ones.
    deep_in_wide = b'{"tools":[' + b"{}," * (MAX_DEPTH * 2) + nested(MAX_DEPTH - 2) + b"]}"
    deep_enough = b'{"tools":[' + b"{}," * (MAX_DEPTH * 2) + nested(MAX_DEPTH - 3) + b"]}"
    assert key_of(deep_in_wide) is None and key_of(deep_enough) is not None


def test_accepted_encodings_are_keyed_as_a_set() -> None:
    def with_encoding(value: str) -> str | None:
        return key_of(CHAT, headers={"accept-encoding": value})

    assert with_encoding("gzip, br") == with_encoding("br,gzip") == with_encoding("BR;q=0.5, gzip")
    assert with_encoding("gzip") != with_encoding("gzip, br") != with_encoding("zstd, br")


def test_folding_whitespace_keeps_different_prompts_apart() -> None:
    folding = normalizer({"normalize": {"fold_whitespace": True}})

    def prompt(text: str) -> str | None:
        return key_of({"model": "m", "messages": [{"role": "user", "content": text}, "not a message"]},
                      plugin=folding)

    assert prompt(" a \n b ") == prompt("a b") != prompt("a c")
    assert key_of({"model": "m", "messages": "a  b"}, plugin=folding) != key_of(
        {"model": "m", "messages": "a b"}, plugin=folding)  # not a list of messages: left as it is


def test_identify_reads_every_credential_and_the_configured_namespace() -> None:
    from aurelis_core.plugin import Tenant, TenantConfig

    def request(**headers: str) -> httpx.Request:
        return httpx.Request("POST", URL, json=CHAT, headers=headers)

    tenant = Tenant(TenantConfig(secret="s"))
    assert tenant.identify(request()).tenant == "anonymous"
    a, b = request(**{"x-api-key": "a"}), request(**{"x-api-key": "b"})
    assert tenant.identify(a).tenant != tenant.identify(b).tenant
    assert tenant.identify(request(**{"x-api-key": "a"}), namespace="team").tenant == "ns:team"
    assert Tenant(TenantConfig(namespace="team")).identify(request(**{"x-api-key": "a"})).tenant == "ns:team"


def test_the_secret_comes_from_the_environment_when_the_config_has_none(monkeypatch: pytest.MonkeyPatch) -> None:
    from aurelis_core.plugin import Tenant, TenantConfig

    credentials = [(b"authorization", b"Bearer k")]
    monkeypatch.delenv("AURELIS_CACHE_SECRET", raising=False)
    unset = Tenant(TenantConfig())
    monkeypatch.setenv("AURELIS_CACHE_SECRET", "from-env")
    from_env = Tenant(TenantConfig())
    assert not unset.has_secret and from_env.has_secret
    assert from_env.fingerprint(credentials) == Tenant(TenantConfig(secret="from-env")).fingerprint(credentials)
    assert from_env.fingerprint(credentials) != unset.fingerprint(credentials)
    assert Tenant(TenantConfig(secret="config")).fingerprint(credentials) != from_env.fingerprint(credentials)


def test_an_entry_tag_cannot_be_moved_between_key_and_value() -> None:
    from aurelis_core.plugin import Tenant, TenantConfig

    tenant = Tenant(TenantConfig(secret="s"))
    assert tenant.entry_mac("ab", b"c") != tenant.entry_mac("a", b"bc")
    assert tenant.entry_mac("a", b"b") == Tenant(TenantConfig(secret="s")).entry_mac("a", b"b")
    assert tenant.entry_mac("a", b"b") != Tenant(TenantConfig(secret="t")).entry_mac("a", b"b")


def test_the_depth_bound_is_the_documented_one() -> None:
    from aurelis_plugins.normalize import MAX_DEPTH

    assert MAX_DEPTH == 100  # docs/concepts/cache-key.md: "more than 100 levels deep"
    assert key_of(nested(99)) is not None and key_of(nested(100)) is None


def test_a_tenant_built_without_config_has_the_defaults() -> None:
    from aurelis_core.plugin import Tenant, TenantConfig

    assert Tenant().config == TenantConfig()
    assert Tenant().credential_headers == Tenant(TenantConfig()).credential_headers


@pytest.mark.parametrize("option", ["credential_headers", "credential_params", "scope_headers"])
def test_a_list_option_given_as_one_string_is_refused(option: str) -> None:
    from aurelis_core import ConfigError

    with pytest.raises(ConfigError, match=rf"\[tenant\].*{option}"):
        Pipeline({"plugins": ["normalize"], "tenant": {option: "x-my-key"}})


def test_credential_parameters_are_redacted_for_files_and_logs() -> None:
    from aurelis_core.plugin import Tenant, TenantConfig

    tenant = Tenant(TenantConfig(credential_params=["key", "sig"]))
    assert tenant.redact_query("key=SECRET&alt=sse&Sig=x&flag") == "key=REDACTED&alt=sse&Sig=REDACTED&flag"
    assert tenant.redact_query("alt=sse") == "alt=sse"
    assert tenant.redact_query("") == "" and tenant.redact_query(None) is None


def test_a_credential_parameter_leaves_the_others_in_the_query_as_sent() -> None:
    from aurelis_core.plugin import Tenant, TenantConfig

    tenant = Tenant(TenantConfig(credential_params=["sig"]))
    assert tenant.split_query("alt=sse&key=S1&b=%20x&Sig=S2") == (
        "alt=sse&b=%20x", ((b"?key", b"S1"), (b"?Sig", b"S2"))
    )
    assert tenant.split_query("alt=sse") == ("alt=sse", ())


def test_credential_headers_are_recognised_by_name_in_any_case() -> None:
    from aurelis_core.plugin import Tenant, TenantConfig

    tenant = Tenant(TenantConfig(credential_headers=["X-My-Key"]))
    assert tenant.is_credential_header("Authorization") and tenant.is_credential_header(b"x-my-key")
    assert tenant.is_credential_header("X-MY-KEY") and not tenant.is_credential_header("accept")


def test_fingerprints_stay_right_and_their_memo_bounded_past_many_credentials() -> None:
    import tracemalloc

    from aurelis_core.plugin import Tenant

    tenant = Tenant()
    first = tenant.fingerprint([(b"authorization", b"Bearer k0")])
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(20_000):  # a process facing endless fresh keys (a scanner) must not grow without bound
        tenant.fingerprint([(b"authorization", b"Bearer k%d" % i)])
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert grown < 3_000_000  # ~4096 memoised fingerprints are ~1.5 MB; 20,000 would be ~7 MB
    assert tenant.fingerprint([(b"authorization", b"Bearer k0")]) == first
    assert tenant.fingerprint([(b"authorization", b"Bearer k1")]) != first


def test_numbers_reach_plugins_as_ints_when_integral_up_to_a_thousand_digits() -> None:
    def parsed(raw: bytes) -> Any:
        # A fresh key stage each time: the numbers below are those of the parse that makes the key (a request
        # the stage has keyed before is recognised without parsing it again).
        request = httpx.Request("POST", URL, content=raw, headers={"content-type": "application/json"})
        ctx = RequestContext(request, None, httpx, False, RequestControls())
        assert normalizer().aurelis_normalize(ctx) is not None
        return ctx.json["t"]

    assert type(parsed(b'{"t":1.0}')) is int and parsed(b'{"t":1.0}') == 1
    assert type(parsed(b'{"t":1e999}')) is int  # 1000 digits: still an integer
    assert type(parsed(b'{"t":1e1000}')) is Decimal  # past the bound: never a gigantic int
    assert key_of(b'{"t":1e999}') == key_of(b'{"t":1' + b"0" * 999 + b"}")


def test_a_repeated_request_shows_plugins_the_same_numbers_as_the_first() -> None:
    # The second request is recognised from the stage's memo without a parse; ctx.json is then parsed on first
    # use by the core, which must follow the key stage's number policy (not the standard library's floats).
    stage = normalizer()
    raw = b'{"model":"m","t":1.0,"p":0.7,"n":3,"big":1e1001,"messages":[]}'

    def seen() -> Any:
        request = httpx.Request("POST", URL, content=raw, headers={"content-type": "application/json"})
        ctx = RequestContext(request, None, httpx, False, RequestControls())
        assert stage.aurelis_normalize(ctx) is not None
        return ctx.json

    first, repeat = seen(), seen()
    assert first == repeat
    assert [type(first[k]) for k in ("t", "p", "n", "big")] == [int, Decimal, int, Decimal]
    assert [type(repeat[k]) for k in ("t", "p", "n", "big")] == [int, Decimal, int, Decimal]


def test_the_core_parses_bodies_nobody_keyed_with_the_same_number_policy() -> None:
    request = httpx.Request("POST", URL, content=b'{"t":2.50,"n":1e2}', headers={"content-type": "application/json"})
    ctx = RequestContext(request, None, httpx, False, RequestControls())
    assert ctx.json == {"t": Decimal("2.5"), "n": 100} and type(ctx.json["n"]) is int
    for refused in (b'{"t":NaN}', b"{not json", b"\xff"):
        ctx = RequestContext(httpx.Request("POST", URL, content=refused), None, httpx, False, RequestControls())
        assert ctx.json is None


def test_folding_leaves_messages_that_are_not_a_list_as_they_are() -> None:
    folding = normalizer({"normalize": {"fold_whitespace": True}})
    body = {"model": "m", "messages": "a  b"}
    assert key_of(body, plugin=folding) == key_of(body)
