"""Fallbacks: when a model's endpoints all failed, the next model of an ordered list answers instead.

The ``[fallbacks]`` table maps a model to the models to try, in order, when it fails::

    [fallbacks]
    "gpt-4.1" = ["gpt-4.1-mini", "gpt-4o-mini"]

A request falls back when its last attempt failed in a way another model may not (:func:`warrants_fallback`:
a rate limit, an overload, a 5xx, a connection that failed, a prompt too long for the model) and the retry
policy gave up on the model (its attempts, or its endpoints, are spent). The next attempt asks for the next
model of the chain of the model the caller asked for, among the endpoints that serve it *and* take the same
kind of request as the endpoint that failed (:func:`~aurelis_core._model_routes.endpoint_family`: no wire
format is ever translated); a model no such endpoint serves is skipped. Without endpoints the request goes to its own
URL again, asking for the next model.

The cache key stays that of the caller's request, so the next identical request is a hit whichever model
answered; the answer says which did (``x-aurelis-model``). A stream falls back only before its first byte
reached the caller: its status is what decides. A request whose body cannot be sent again (a one-shot stream,
a signature: see ``_resend``) or that names its model nowhere it can be rewritten never falls back, and none falls
back once the deadline of its retry policy (``DEADLINE``: ``retry``'s ``deadline``) has passed.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

from ._compat import header_items, url_parts
from ._dialects import OPENAI, FailureKind
from ._logs import component_logger
from ._model_routes import MODEL_ROUTE, ModelRoute, ModelRoutes, endpoint_family, request_model
from ._models import Attempt, Endpoint, RequestContext
from ._resend import resend_refusal
from ._state import DEADLINE, StateKey
from .health import EndpointUnavailable
from .validators import choices_hint, describe

__all__ = ["FALLBACKS", "FALLBACK_STATUSES", "Fallbacks", "check_fallbacks", "warrants_fallback"]

logger = component_logger("fallback")

#: The hops of a request that fell back, in order: ``(from_model, to_model)``. Absent when it did not.
FALLBACKS: StateKey[list[tuple[str, str]]] = StateKey("fallbacks")

#: Statuses besides 5xx after which another model may answer: a timeout, a rate limit, an overload
#: (Anthropic's 529 is a 5xx).
FALLBACK_STATUSES = frozenset({408, 429})
#: Statuses whose error body may say the prompt is too long for the model.
CONTEXT_STATUSES = frozenset({400, 413, 422})
#: What an error body says when the prompt does not fit the model's context (lower-cased): OpenAI's and Azure's
#: code and message (also vLLM's), Anthropic's, Gemini's, and the generic forms of OpenAI-compatible servers.
CONTEXT_MARKERS = (
    b"context_length_exceeded",
    b"maximum context length",
    b"prompt is too long",
    b"exceeds the maximum number of tokens",
    b"context window",
    b"too many tokens",
)
#: Bytes of an error body read to classify it (error bodies are small; a larger one is not a context error).
ERROR_BODY_LIMIT = 64 * 1024


def warrants_fallback(attempt: Attempt, body: bytes | None, http: Any) -> bool:
    """Whether another model may answer where ``attempt`` failed: the one decision of what a fallback is for.

    Yes for a rate limit (429), an overload or any other 5xx (529, 503...), a timeout (408), a connection that
    failed or an endpoint that refused the attempt before the network, and a prompt too long for the model (a
    400, 413 or 422 whose error ``body``, decoded, says so). No for everything that another model would fail the
    same way: a credential refused (401, 403), a request that is wrong (other 4xx), an error of the caller's.
    """
    error = attempt.error
    if error is not None:
        return isinstance(error, (EndpointUnavailable, http.TransportError))
    status = attempt.status_code
    if status is None:
        return False
    # The provider's own words first (its dialect reads status, headers and body): a credential out of quota
    # fails on every model of the account; a context error in the dialect's wording is one.
    kind = (attempt.dialect or OPENAI).classify(status, attempt.headers, body)
    if kind is FailureKind.AUTH:
        return False
    if kind is FailureKind.CONTEXT_LENGTH or status >= 500 or status in FALLBACK_STATUSES:
        return True
    if status in CONTEXT_STATUSES and body:
        text = body[:ERROR_BODY_LIMIT].lower()
        return any(marker in text for marker in CONTEXT_MARKERS)
    return False


def error_body(raw: bytes, headers: Any) -> bytes:
    """An error answer's body with a gzip or deflate ``Content-Encoding`` undone (as far as the limit), else
    as it came."""
    coding = b""
    for _, lower, value in header_items(headers):
        if lower == b"content-encoding":
            coding = value.strip().lower()
    if coding in (b"gzip", b"deflate"):
        try:
            # wbits 47: a gzip or zlib header, detected; a raw deflate stream fails and is read as it came.
            return zlib.decompressobj(47).decompress(raw, ERROR_BODY_LIMIT)
        except zlib.error:
            return raw
    return raw


class Fallbacks:
    """The ``[fallbacks]`` chains of one pipeline, and the switch of a failed request to its next model."""

    def __init__(self, chains: Mapping[str, Sequence[str]], routes: ModelRoutes, counters: Any) -> None:
        self.chains = {model: tuple(chain) for model, chain in chains.items()}
        self.routes = routes
        self.counters = counters

    def possible(self, ctx: RequestContext) -> bool:
        """Whether the request's model has a chain at all (cheap: asked after every failed attempt)."""
        model = request_model(ctx)
        return model is not None and model in self.chains

    def switch(self, ctx: RequestContext, attempt: Attempt, body: bytes | None) -> bool:
        """Move the request to the next model of its chain after ``attempt`` failed; ``False`` when it may not
        fall back (see :func:`warrants_fallback` and the module docstring) or no model is left."""
        original = request_model(ctx)
        chain = self.chains.get(original) if original is not None else None
        if not chain or not warrants_fallback(attempt, body, ctx.http):
            return False
        if resend_refusal(ctx.original) is not None or not _rewritable(ctx, original):
            return False
        deadline = DEADLINE.get(ctx)
        if deadline is not None and deadline.left() <= 0:
            # The retry policy's deadline bounds the whole request: the next model would start past it.
            self.counters["fallback_deadline"] += 1
            logger.debug("no fallback from %s: the request's deadline has passed", original)
            return False
        route = MODEL_ROUTE.get(ctx)
        current = route.model if route is not None else original
        assert original is not None and current is not None
        start = chain.index(current) + 1 if current in chain else 0
        family = endpoint_family(attempt.endpoint) if attempt.endpoint is not None else None
        for model in chain[start:]:
            endpoints = self._serving(model, family)
            if endpoints is None:
                continue
            MODEL_ROUTE.set(ctx, ModelRoute(model, endpoints, len(ctx.attempts) + 1))
            FALLBACKS.setdefault(ctx, []).append((current, model))
            counters = self.counters
            counters["fallbacks"] += 1
            counters[f"fallback:{current}->{model}"] += 1
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("fallback: %s failed on attempt %d (%s); asking %s", current, attempt.number,
                             f"status {attempt.status_code}" if attempt.error is None
                             else type(attempt.error).__name__, model)
            return True
        return False

    def _serving(self, model: str, family: str | None) -> tuple[Endpoint, ...] | None:
        """The endpoints of ``family`` that serve ``model`` (``()`` without endpoints: the request's own URL), or
        ``None`` when there are endpoints and none of them does."""
        routes = self.routes
        if not routes.endpoints:
            return ()
        serving = routes.serving(model)
        if family is not None:
            serving = tuple(e for e in serving if endpoint_family(e) == family)
        return serving or None


def _rewritable(ctx: RequestContext, model: str | None) -> bool:
    """Whether the request names ``model`` where a fallback can change it: its JSON body, or its path."""
    data = ctx.json
    if isinstance(data, dict) and data.get("model") == model:
        return True
    return ctx.dialect.model_span(url_parts(ctx.original.url)[3]) is not None


def check_fallbacks(
    given: Any, endpoints: Sequence[Endpoint], source: str
) -> tuple[dict[str, tuple[str, ...]], list[str]]:
    """The ``[fallbacks]`` table as chains, and the errors in it: a chain that is not a list of model names,
    names a model twice or its own model, or names a model no endpoint serves (when the endpoints list
    models)."""
    where = f"{source}: [fallbacks]"
    if not isinstance(given, Mapping):
        return {}, [f"{where}: expected a table of model = [models to try next, in order], got {describe(given)}"]
    routes = ModelRoutes(endpoints)
    served = routes.served()
    chains: dict[str, tuple[str, ...]] = {}
    errors: list[str] = []
    for model, chain in given.items():
        at = f"{where} {model!r}"
        if not isinstance(chain, (list, tuple)) or not chain or not all(isinstance(m, str) and m for m in chain):
            errors.append(f"{at}: expected a non-empty list of model names such as [\"gpt-4.1-mini\"], "
                          f"got {describe(chain)}")
            continue
        if model in chain:
            errors.append(f"{at}: the chain names its own model: a model cannot fall back to itself")
            continue
        twice = sorted({m for m in chain if chain.count(m) > 1})
        if twice:
            errors.append(f"{at}: the chain names {', '.join(map(repr, twice))} more than once")
            continue
        if endpoints:
            unserved = [m for m in (model, *chain) if not routes.serving(m)]
            if unserved:
                errors.extend(f"{at}: no endpoint serves {m!r}{choices_hint(m, served)}" for m in unserved)
                continue
        chains[str(model)] = tuple(chain)
    return chains, errors
