"""Per-request cache controls: ``request.extensions["aurelis"]``, the ``x-aurelis-*`` headers and ``Cache-Control``.

Read once per request, at the start of its flow (see :meth:`aurelis_core.pipeline.Pipeline.flow`). A caller that
can set headers but not request extensions (the openai SDK) sends ``x-aurelis-cache``, ``x-aurelis-ttl`` and
``x-aurelis-namespace``; they are checked like the extension's keys and removed before the request goes
upstream. An invalid control raises :class:`~aurelis_core.RequestControlError` naming it, before any cache is
read or anything is sent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import attrs

from ._compat import copy_request, header_items
from ._models import DEFAULT_CONTROLS, RequestContext, RequestControlError, RequestControls
from .config import ConfigError, choices_hint, config_from_table
from .validators import Invalid, describe

__all__ = ["CONTROL_HEADER_PREFIX", "controls_of"]

#: Request headers that carry per-request cache controls for callers (like the openai SDK) that can set
#: headers but not request extensions. They are removed before the request goes upstream.
CONTROL_HEADER_PREFIX = "x-aurelis-"


def controls_of(ctx: RequestContext) -> RequestControls:
    """Per-request cache controls from ``extensions["aurelis"]``, ``x-aurelis-*`` and ``Cache-Control``.

    Invalid controls raise :class:`RequestControlError` (a ``ValueError``) naming the header or extension key
    and what is valid, before any cache is read or anything is sent.
    """
    request = ctx.request
    given = request.extensions.get("aurelis")
    # One pass over the lower-cased header names: this runs on every request of a caching pipeline. The first
    # byte ("c", "x") is tested before the whole name: most headers fail it, which saves ~0.3 us a request.
    # (httpx accepts an empty header name; it is let through here as it is, for the transport to judge.)
    cache_control: str | None = None
    has_control_headers = False
    for _, lower, value in header_items(request.headers):
        first = lower[0] if lower else 0
        if first == 99 and lower == b"cache-control":
            cache_control = value.decode("latin-1")
        elif first == 120 and lower.startswith(b"x-aurelis-"):
            has_control_headers = True
    if given is None and cache_control is None and not has_control_headers:
        return DEFAULT_CONTROLS
    options: dict[str, Any] = {}
    if cache_control is not None:
        directives = {d.strip().lower() for d in cache_control.split(",")}
        if "no-store" in directives:
            options["no_store"] = True
        if "no-cache" in directives:
            options["refresh"] = True
    if has_control_headers:
        options.update(control_headers(ctx))
    if given is None:
        return RequestControls(**options)  # read from headers: checked, and typed, as they were read
    if isinstance(given, RequestControls):
        return given
    if not isinstance(given, Mapping):
        raise RequestControlError(
            f"{_EXTENSION}: expected a dict of cache controls or a RequestControls, got {describe(given)}"
        )
    options.update(given)
    # The same checks as a config table (types from RequestControls' annotations, then its validators): the
    # header values were checked already, so an error here is about an extension key, and names it.
    try:
        return config_from_table(RequestControls, options, _EXTENSION)
    except ConfigError as exc:
        raise RequestControlError("\n".join(exc.errors)) from None


_EXTENSION = "request.extensions['aurelis']"
#: The control headers, and the modes ``x-aurelis-cache`` takes (-> the RequestControls field they set).
_CONTROL_HEADERS = ("x-aurelis-cache", "x-aurelis-namespace", "x-aurelis-ttl")
_CACHE_MODES = {"skip": ("skip", True), "refresh": ("refresh", True), "no-store": ("no_store", True),
                "no-coalesce": ("coalesce", False)}
#: A plain decimal number (no sign, no "_" digit separators, no "nan"/"inf", which float() would all take).
_DECIMAL = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def control_headers(ctx: RequestContext) -> dict[str, Any]:
    """Read, check and strip ``x-aurelis-cache`` (comma-separated: skip, refresh, no-store, no-coalesce),
    ``x-aurelis-ttl``, ``x-aurelis-namespace``.

    Each value is checked here, with an error naming its header; ttl and namespace go through the validators
    of their :class:`RequestControls` fields, so a header and an extension key accept exactly the same values.
    A header repeated with another value is an error (which one was meant?); ``x-aurelis-cache`` may repeat,
    its modes add up.
    """
    request = ctx.request
    options: dict[str, Any] = {}
    given: dict[bytes, str] = {}
    kept = []
    for name, value in request.headers.raw:
        lname = name.lower()
        if not lname.startswith(b"x-aurelis-"):
            kept.append((name, value))
            continue
        text = value.decode("latin-1").strip()
        if lname == b"x-aurelis-cache":
            for mode in text.lower().split(","):
                setting = _CACHE_MODES.get(mode.strip())
                if setting is None:
                    raise RequestControlError(
                        f"x-aurelis-cache: {text!r} is not one of skip, refresh, no-store, no-coalesce "
                        "(or a comma-separated list of them)"
                    )
                options[setting[0]] = setting[1]
            continue
        header = lname.decode("latin-1")
        if header not in _CONTROL_HEADERS:
            raise RequestControlError(
                f"unknown request header {name.decode('latin-1')!r}{choices_hint(header, _CONTROL_HEADERS)}"
            )
        before = given.setdefault(lname, text)
        if before != text:
            raise RequestControlError(f"{header}: given twice, with different values ({before!r}, {text!r})")
        if lname == b"x-aurelis-ttl":
            # Not a plain number: nan, which the field's validator refuses as it refuses 0, -5 or 1e999 (inf).
            ttl = float(text) if _DECIMAL.fullmatch(text) else _NAN
            ttl_field = _CONTROL_FIELDS.ttl
            try:
                ttl_field.validator(None, ttl_field, ttl)  # type: ignore[misc]
            except Invalid:
                raise RequestControlError(f"{header}: expected a number of seconds > 0, got {text!r}") from None
            options["ttl"] = ttl
        else:
            field = _CONTROL_FIELDS.namespace
            try:
                field.validator(None, field, text)  # type: ignore[misc]
            except Invalid as exc:
                raise RequestControlError(f"{header}: {exc.detail}") from None
            options["namespace"] = text
    ctx.request = ctx.original = copy_request(ctx.http, request, request.url, kept)
    return options


_CONTROL_FIELDS = attrs.fields(RequestControls)
_NAN = float("nan")
