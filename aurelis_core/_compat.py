"""The one place that knows httpx and httpx2 apart.

httpx 0.28 and httpx2 2.x have the same transport API but separate classes: a response handed to an httpx2
client must be an ``httpx2.Response``. Everything the pipeline builds is therefore made from the module the
request itself came from, looked up here once per request type.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

__all__ = ["client_flavour", "flavour_of", "is_async_client", "transport_bases"]

_by_type: dict[type, ModuleType] = {}

#: The distributions we know how to wrap: the top-level module names of their request/client classes.
SUPPORTED = ("httpx", "httpx2")


def flavour_of(obj: Any) -> ModuleType:
    """The httpx-like module (``httpx`` or ``httpx2``) that ``obj``'s class belongs to."""
    cls = type(obj)
    module = _by_type.get(cls)
    if module is None:
        top = cls.__module__.partition(".")[0]
        if top not in SUPPORTED:
            raise TypeError(f"expected an httpx or httpx2 object, got {cls.__module__}.{cls.__qualname__}")
        module = _by_type[cls] = sys.modules[top]
    return module


def client_flavour(client: Any) -> tuple[ModuleType, bool]:
    """``(module, is_async)`` for an ``httpx``/``httpx2`` ``Client`` or ``AsyncClient``."""
    http = flavour_of(client)
    if isinstance(client, http.AsyncClient):
        return http, True
    if isinstance(client, http.Client):
        return http, False
    raise TypeError(f"expected {http.__name__}.Client or {http.__name__}.AsyncClient, got {type(client)!r}")


def is_async_client(client: Any) -> bool:
    return client_flavour(client)[1]


def transport_bases(http: ModuleType) -> tuple[type, type]:
    """``(BaseTransport, AsyncBaseTransport)`` of that flavour."""
    return http.BaseTransport, http.AsyncBaseTransport
