"""Which endpoints serve which model, and the model on the wire.

An endpoint lists the models it serves (``models``: names and globs; absent, every model) and may call a model
by a name of its own (``model_map``: an Azure deployment, a provider's prefix). :class:`ModelRoutes` answers,
for the model a request names, the endpoints a router may pick (computed once per model and kept), and
rewrites the request for the endpoint picked: the ``model`` field of its JSON body, and its path where the
path names the model (where the request's dialect says: :meth:`~aurelis_core.plugin.Dialect.model_span`).

A request that names no model (``GET /models``, a body that is not JSON) goes to any endpoint, as without
``models``. A request for a model that no endpoint serves fails with :class:`ModelNotServed` before anything
is sent: with endpoints configured, requests never go to the client's own URL, so there is nowhere else to send
it (and its credential) that the config names.

A fallback (see :mod:`aurelis_core._fallback`) moves a request to another model; the model it is routed for
then is in its :data:`MODEL_ROUTE` record, which routers read through ``pipeline.health.serving(ctx, ...)``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from fnmatch import translate
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import msgspec

from ._compat import buffered_body, copy_request, url_parts
from ._dialects import Dialect
from ._models import Endpoint, RequestContext
from ._state import StateKey

__all__ = [
    "MODEL_HEADER",
    "MODEL_ROUTE",
    "DialectNotServed",
    "ModelNotServed",
    "ModelRoute",
    "ModelRoutes",
    "endpoint_family",
    "path_family",
    "request_model",
]

#: The response header that says which model answered (after a fallback, not the one asked for).
MODEL_HEADER = b"x-aurelis-model"

#: Distinct model names whose serving endpoints are remembered: the first ones seen, which are the ones a
#: deployment keeps asking for; a later name is matched against the endpoints on each request.
_REMEMBERED = 1024

_ENCODER = msgspec.json.Encoder(decimal_format="number")


class ModelNotServed(ValueError):
    """A request names a model that none of the configured endpoints serves; nothing was sent.

    ``model`` is the model asked for, ``served`` what the endpoints serve (names and globs).
    """

    def __init__(self, model: str, served: Sequence[str]) -> None:
        super().__init__(f"no endpoint serves the model {model!r}; the endpoints serve: {', '.join(served)}")
        self.model = model
        self.served = tuple(served)


class DialectNotServed(ModelNotServed):
    """A request speaks a wire format (a dialect) that none of the endpoints serving its model takes, among
    endpoints of several formats; nothing was sent (a request is never translated into another format).

    ``dialect`` is the request's dialect, ``served`` the formats the endpoints take.
    """

    def __init__(self, dialect: str, model: str | None, served: Sequence[str]) -> None:
        ValueError.__init__(
            self,
            f"no endpoint{'' if model is None else f' serving {model!r}'} takes {dialect} requests; the endpoints "
            f"take: {', '.join(served)} (an endpoint whose URL does not tell its format says it with "
            f"dialect = \"...\")",
        )
        self.model = model or ""
        self.dialect = dialect
        self.served = tuple(served)


class ModelRoute:
    """Where a request goes after a fallback: the ``model`` it asks for now, the ``endpoints`` that serve it
    (empty without endpoints: its own URL), and the number of its first attempt for that model."""

    __slots__ = ("endpoints", "first_attempt", "model")

    def __init__(self, model: str, endpoints: tuple[Endpoint, ...], first_attempt: int) -> None:
        self.model = model
        self.endpoints = endpoints
        self.first_attempt = first_attempt

    def __repr__(self) -> str:
        return f"<ModelRoute {self.model!r} from attempt {self.first_attempt}: {[e.name for e in self.endpoints]}>"


#: The model a request is routed for since a fallback (absent: the model it names).
MODEL_ROUTE: StateKey[ModelRoute] = StateKey("model_route")


def request_model(ctx: RequestContext) -> str | None:
    """The model the caller's request names: its JSON body's ``model``, else its path's (where its dialect's
    :meth:`~aurelis_core.plugin.Dialect.model_span` says)."""
    model = ctx.model
    if model is not None:
        return model
    path = url_parts(ctx.original.url)[3]
    span = ctx.dialect.model_span(path)
    return unquote(path[span[0] : span[1]]) if span is not None else None


@functools.lru_cache(maxsize=256)
def path_family(url: str) -> str:
    """The kind of request an endpoint's URL takes: ``azure_openai``, ``gemini``, ``anthropic`` or ``openai``
    (everything else speaks OpenAI's). A fallback stays within one family: no wire format is translated."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    openai_path = re.search(r"/openai(/|$)", parts.path) is not None
    if host.endswith("googleapis.com"):  # Gemini's own API, or its OpenAI-compatible one under /openai/
        return "openai" if openai_path else "gemini"
    if host.endswith(".openai.azure.com") or openai_path:
        return "azure_openai"
    if host == "api.anthropic.com":
        return "anthropic"
    return "openai"


def endpoint_family(endpoint: Endpoint) -> str:
    """The wire format an endpoint takes: the dialect its ``dialect`` option pins, else as its URL suggests
    (:func:`path_family`). A proxy in front of Anthropic's API, pinned ``dialect = "anthropic"``, is Anthropic's
    whatever its host."""
    return endpoint.dialect or path_family(endpoint.url)


def _matcher(patterns: tuple[str, ...]) -> Any:
    """One compiled match over an endpoint's model names and globs (case-sensitive, as ``fnmatchcase``)."""
    return re.compile("|".join(f"(?:{translate(p)})" for p in patterns)).match


class ModelRoutes:
    """The endpoints serving each model, for one pipeline's endpoints.

    ``active`` is false when no endpoint lists models or maps one, no fallback is configured and every endpoint
    takes one wire format: routing then costs nothing more than before models existed. Among endpoints of
    several formats (:func:`endpoint_family`), a request goes only to those of its own dialect.
    """

    def __init__(self, endpoints: Sequence[Endpoint], fallbacks: Mapping[str, Sequence[str]] | None = None) -> None:
        self.endpoints = tuple(endpoints)
        families = [endpoint_family(e) for e in self.endpoints]
        #: Whether the endpoints take more than one wire format: then each request keeps to its own.
        self.mixed = len(set(families)) > 1
        self._families = dict(zip((id(e) for e in self.endpoints), families, strict=True))
        self.restricted = any(e.models is not None for e in self.endpoints) or self.mixed
        self.active = self.restricted or any(e.model_map for e in self.endpoints) or bool(fallbacks)
        self._matchers = [None if e.models is None else _matcher(e.models) for e in self.endpoints]
        self._serving: dict[str, tuple[Endpoint, ...]] = {}
        self._speaking: dict[tuple[str | None, str], tuple[Endpoint, ...]] = {}

    def served(self) -> list[str]:
        """What the endpoints serve, names and globs, in config order (``*`` for an endpoint that serves all)."""
        names: list[str] = []
        for endpoint in self.endpoints:
            for model in endpoint.models or ("*",):
                if model not in names:
                    names.append(model)
        return names

    def serving(self, model: str) -> tuple[Endpoint, ...]:
        """The endpoints that serve ``model`` (all of them, the very tuple, when all do; empty when none does)."""
        found = self._serving.get(model)
        if found is not None:
            return found
        if not self.restricted:
            return self.endpoints
        chosen = tuple(e for e, match in zip(self.endpoints, self._matchers, strict=True)
                       if match is None or match(model) is not None)
        if len(chosen) == len(self.endpoints):
            chosen = self.endpoints
        if len(self._serving) < _REMEMBERED:
            self._serving[model] = chosen
        return chosen

    def for_request(self, ctx: RequestContext, endpoints: Sequence[Endpoint]) -> Sequence[Endpoint]:
        """The endpoints among which the next attempt of ``ctx`` may go: ``endpoints`` itself when all of them
        serve its model; :class:`ModelNotServed` when none does."""
        # Per attempt: the state read directly (what MODEL_ROUTE.get does, less a call), the model likewise.
        route = ctx.state.get(MODEL_ROUTE)  # type: ignore[call-overload]
        if route is not None:
            return route.endpoints  # type: ignore[no-any-return]
        if not self.restricted:
            return endpoints
        model = ctx.model
        if model is None:
            model = request_model(ctx)
        if model is None:
            serving = self.endpoints
        else:
            serving = self._serving.get(model) or self.serving(model)
            if not serving:
                raise ModelNotServed(model, self.served())
        if self.mixed:
            serving = self._speaking_dialect(serving, ctx.dialect.name, model)
        return endpoints if serving is self.endpoints else serving

    def _speaking_dialect(
        self, serving: tuple[Endpoint, ...], dialect: str, model: str | None
    ) -> tuple[Endpoint, ...]:
        """Those of ``serving`` (the endpoints serving ``model``) that take ``dialect``'s requests (remembered
        per model and dialect)."""
        key = (model, dialect)
        found = self._speaking.get(key)
        if found is None:
            found = tuple(e for e in serving if self._families[id(e)] == dialect)
            if not found:
                raise DialectNotServed(dialect, model, sorted(set(self._families.values())))
            if len(self._speaking) < _REMEMBERED:
                self._speaking[key] = found
        return found

    def routed_model(self, ctx: RequestContext) -> str | None:
        """The model ``ctx`` is routed for now: the one its request names, or the one a fallback chose."""
        route = MODEL_ROUTE.get(ctx)
        return route.model if route is not None else request_model(ctx)

    def apply(self, ctx: RequestContext, endpoint: Endpoint | None, request: Any, dialect: Dialect) -> Any:
        """``request`` (the caller's, moved onto ``endpoint``) asking for the routed model by the endpoint's
        name for it: its body's ``model`` and its path's model segment (where ``dialect``, the attempt's, finds
        one) rewritten where they differ."""
        original = request_model(ctx)
        model = self.routed_model(ctx)
        if model is None:
            return request
        target = endpoint.model_map.get(model, model) if endpoint is not None else model
        body_model = ctx.model
        body: bytes | None = None
        if body_model is not None and body_model != target:
            body = _with_body_model(ctx, body_model, target)
        url = request.url
        raw_path = url.raw_path
        # The span is of the path without its query, which comes after it in raw_path: the offsets hold there.
        span = dialect.model_span(url_parts(url)[3])
        if span is not None:
            segment = unquote(raw_path[span[0] : span[1]].decode("ascii", "replace"))
            if segment in (original, model) and segment != target:
                new = quote(target, safe="").encode("ascii")
                url = url.copy_with(raw_path=raw_path[: span[0]] + new + raw_path[span[1] :])
        if body is None and url is request.url:
            return request
        http = ctx.http
        headers = [(k, v) for k, v in request.headers.raw if body is None or k.lower() != b"content-length"]
        if body is None:
            return copy_request(http, request, url, headers)
        return http.Request(request.method, url, headers=headers, content=body, extensions=request.extensions)


def _with_body_model(ctx: RequestContext, old: str, new: str) -> bytes | None:
    """The caller's body with its ``model`` field set to ``new``: the field's bytes replaced where the value is
    written once as plain JSON (every other byte kept), else the parsed body encoded again. ``None`` when the
    body is not a JSON object (nothing to rewrite)."""
    body = buffered_body(ctx.original)
    data = ctx.json
    if not body or not isinstance(data, dict) or data.get("model") != old:
        return None
    written = msgspec.json.encode(old)
    field = re.compile(rb'"model"\s*:\s*' + re.escape(written))
    found = list(field.finditer(body))
    if len(found) == 1:
        end = found[0].end()  # the value only: the caller's spacing is kept
        return body[: end - len(written)] + msgspec.json.encode(new) + body[end:]
    return _ENCODER.encode({**data, "model": new})
