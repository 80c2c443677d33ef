"""httpx's private attributes are touched in ``aurelis_core/_compat.py`` and nowhere else.

Aurelis reads and writes a few attributes httpx and httpx2 keep privately (``Headers._list``, ``Request._content``,
``Client._transport``...), because the public API costs a copy per request or offers no way at all. The
``httpx<0.29`` pin is only safe if a new httpx release has one file to audit: this test reads the source of the
core, the first-party plugins and the contrib packages and fails on any other module that names one of them.
"""

from __future__ import annotations

import ast
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest

from aurelis_core import Pipeline, _compat
from aurelis_core._models import DEFAULT_CONTROLS
from aurelis_core.plugin import RequestContext, buffered_body, copy_request, hookimpl, worth_logging

ROOT = Path(__file__).resolve().parent.parent
COMPAT = ROOT / "aurelis_core" / "_compat.py"
#: Where Aurelis's own code lives: the core, the first-party plugins, the contrib packages' sources.
SOURCES = [ROOT / "aurelis_core", ROOT / "plugins", *sorted((ROOT / "contrib").glob("*/src"))]
_ATTRIBUTE_FUNCTIONS = {"getattr", "hasattr", "setattr", "delattr"}


def _httpx_private_names() -> frozenset[str]:
    """Every private attribute name of the httpx/httpx2 objects a request's path meets: instance attributes of
    each, and the names defined by their classes (methods, class attributes)."""
    names: set[str] = set()
    for http in (httpx, httpx2):
        client, async_client = http.Client(), http.AsyncClient()
        objects = [
            http.Request("POST", "https://example.test/v1?q=1", content=b"{}"),
            http.Response(200, content=b"{}"),
            http.Headers({"a": "b"}),
            http.URL("https://example.test/v1?q=1"),
            http.QueryParams("a=b"),
            http.Cookies(),
            http.ByteStream(b"{}"),
            http.Timeout(1.0),
            http.Limits(),
            http.HTTPTransport(),
            http.AsyncHTTPTransport(),
            client,
            async_client,
        ]
        for obj in objects:
            names.update(vars(obj))
            for cls in type(obj).__mro__:
                names.update(vars(cls))
        client.close()
    return frozenset(n for n in names if n.startswith("_") and not n.startswith("__"))


HTTPX_PRIVATE = _httpx_private_names()


def private_uses(source: str, names: frozenset[str]) -> list[tuple[int, str, str]]:
    """``(line, name, code)`` of each read or write of one of ``names`` on an object other than ``self``/``cls``
    (a class's own private attributes are its business), as ``obj.name`` or ``getattr(obj, "name"...)``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in names:
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            found.append((node.lineno, node.attr, ast.unparse(node)))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _ATTRIBUTE_FUNCTIONS
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and node.args[1].value in names
        ):
            found.append((node.lineno, node.args[1].value, ast.unparse(node)))
    return sorted(found)


def test_the_scan_finds_every_spelling() -> None:
    source = (
        "def f(request, response, client, self):\n"
        "    body = request._content\n"
        "    response.headers._list = []\n"
        "    client._transport = None\n"
        "    if hasattr(response, '_content'):\n"
        "        getattr(request, '_content', None)\n"
        "    setattr(client, '_mounts', {})\n"
        "    self._content = body\n"  # a class's own attribute of the same name: not httpx's
        "    request.content\n"
        "    response._reason\n"  # not a name asked about
    )
    names = frozenset({"_content", "_list", "_transport", "_mounts"})
    assert [(line, name) for line, name, _ in private_uses(source, names)] == [
        (2, "_content"), (3, "_list"), (4, "_transport"), (5, "_content"), (6, "_content"), (7, "_mounts"),
    ]


def test_compat_declares_the_httpx_private_attributes_it_uses() -> None:
    # The declared list stays honest: exactly the private attributes of httpx objects that _compat touches.
    used = {name for _, name, _ in private_uses(COMPAT.read_text(), HTTPX_PRIVATE)}
    assert used == _compat.PRIVATE_ATTRIBUTES
    assert {"_list", "_content", "_transport"} <= HTTPX_PRIVATE  # the names are found on live httpx objects


@pytest.mark.parametrize(
    "path",
    [p for root in SOURCES for p in sorted(root.rglob("*.py")) if p != COMPAT],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_no_module_but_compat_touches_httpx_private_attributes(path: Path) -> None:
    uses = private_uses(path.read_text(), HTTPX_PRIVATE)
    assert not uses, (
        f"{path.relative_to(ROOT)} touches private attributes of httpx objects: "
        + ", ".join(f"line {line}: {code}" for line, code in uses)
        + "; add a named helper to aurelis_core/_compat.py (and its PRIVATE_ATTRIBUTES) and call that"
    )


# --- the helpers, as a plugin or the core uses them ----------------------------------------------------------------


@pytest.mark.parametrize("http", [httpx, httpx2], ids=["httpx", "httpx2"])
def test_copy_request_shares_the_body_and_keeps_the_extensions(http: Any) -> None:
    extensions = {"timeout": {"connect": 1.0, "read": 1.0, "write": 1.0, "pool": 1.0}}
    original = http.Request("POST", "https://a.test/v1/chat", json={"q": 1}, extensions=extensions)
    copy = copy_request(http, original, http.URL("https://b.test/v2/chat"), [(b"x-one", b"1")])
    assert type(copy) is http.Request
    assert (copy.method, str(copy.url), copy.headers.raw) == ("POST", "https://b.test/v2/chat", [(b"x-one", b"1")])
    assert copy.content == original.content == b'{"q":1}' and buffered_body(copy) == original.content
    assert copy.extensions == original.extensions == extensions

    def upload() -> Iterator[bytes]:
        yield b"streamed"

    streamed = http.Request("POST", "https://a.test/v1/files", content=upload())
    copy = copy_request(http, streamed, streamed.url, [])
    # Not read behind the caller's back: the copy streams the same upload, once, when it is sent.
    assert buffered_body(copy) is None and copy.stream is streamed.stream
    assert b"".join(copy.stream) == b"streamed"


def test_a_body_given_as_a_byte_stream_is_read_like_content() -> None:
    body = b'{"model": "gpt-test", "messages": []}'
    for request in (
        httpx.Request("POST", "https://a.test/v1/chat", content=body),
        httpx.Request("POST", "https://a.test/v1/chat", stream=httpx.ByteStream(body)),
    ):
        assert buffered_body(request) == body
        assert RequestContext(request, None, httpx, False, DEFAULT_CONTROLS).json == json.loads(body)
        assert RequestContext(request, None, httpx, False, DEFAULT_CONTROLS).model == "gpt-test"


def test_failures_are_logged_once_per_burst() -> None:
    assert [n for n in range(1, 300_001) if worth_logging(n)] == [1, 100, 10_000, 100_000, 200_000, 300_000]


class BrokenTier:
    """A cache tier whose store is down: every read fails."""

    name = "broken"

    @hookimpl
    def aurelis_cache_get(self, ctx: RequestContext) -> None:
        raise ConnectionError("the store is down")


def test_a_failing_tier_is_counted_always_and_logged_once_per_burst(caplog: pytest.LogCaptureFixture) -> None:
    pipeline = Pipeline({"plugins": ["normalize"]}, plugins=[BrokenTier()])

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"ok": True})

    with caplog.at_level(logging.WARNING, logger="aurelis"), pipeline.instrument(
        httpx.Client(transport=httpx.MockTransport(answer))
    ) as client:
        for n in range(150):
            assert client.post("https://a.test/v1/chat/completions", json={"model": "m", "n": n}).status_code == 200
    assert pipeline.stats.tier_errors["broken.get"] == 150
    logged = [r.getMessage() for r in caplog.records if "cache tier 'broken'" in r.getMessage()]
    assert [m.split("(")[1].split(" ")[0] for m in logged] == ["1", "100"], logged
