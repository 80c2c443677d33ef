"""The workload format: one recorded request per line of a JSON Lines file.

``aurelis record`` (the ``record`` plugin) writes it and ``aurelis replay`` reads it, so it lives here, in the
core, where both (and any third-party recorder) find it, rather than inside the replay tool::

    {"method": "POST", "path": "/chat/completions", "body": {"model": "gpt-4.1-mini", "messages": [...]}}
    {"method": "POST", "path": "/embeddings", "body": {"model": "text-embedding-3-small", "input": "hi"},
     "headers": {"x-team": "search"}, "at": 12.5}

- ``method``: the HTTP method (default ``"POST"``).
- ``path``: joined onto the base URL the way endpoints are (``/chat/completions`` against
  ``https://host/v1`` is ``https://host/v1/chat/completions``; a path that already starts with the base URL's
  path, like ``/v1/chat/completions``, is kept as is).
- ``body``: a JSON value, sent as the JSON body; a string is sent as raw text; absent: no body.
- ``headers`` (optional): extra request headers. Workloads never hold credentials: a recorder drops them (every
  name in :data:`CREDENTIAL_HEADERS`), and :func:`load_workload` refuses a line that carries one.
- ``at`` (optional): seconds since the start of the recording; ``--timed`` replays at those offsets.
"""

from __future__ import annotations

import json
import os
from typing import Any

import attrs

from ._rewrite import place_path
from ._tenant import DEFAULT_CREDENTIAL_HEADERS

__all__ = ["CREDENTIAL_HEADERS", "WorkloadRequest", "join_url", "load_workload"]

#: Header names that carry credentials: never written to, nor accepted from, a workload file (the default
#: credential headers of :mod:`aurelis_core._tenant`, and cookies).
CREDENTIAL_HEADERS = frozenset((*DEFAULT_CREDENTIAL_HEADERS, "cookie"))


@attrs.frozen
class WorkloadRequest:
    """One line of a workload file (see the module docstring for the format)."""

    path: str
    method: str = "POST"
    body: Any = None
    headers: dict[str, str] = attrs.field(factory=dict)
    at: float | None = None

    def to_json(self) -> str:
        """The request as one workload line (no trailing newline); empty optional fields are left out."""
        data: dict[str, Any] = {"method": self.method, "path": self.path}
        if self.body is not None:
            data["body"] = self.body
        if self.headers:
            data["headers"] = self.headers
        if self.at is not None:
            data["at"] = self.at
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False)

    def request_args(self, base_url: str, credential: str | None) -> dict[str, Any]:
        """Keyword arguments for ``client.request(...)``."""
        headers = dict(self.headers)
        if credential is not None:
            headers["authorization"] = f"Bearer {credential}"
        args: dict[str, Any] = {"method": self.method, "url": join_url(base_url, self.path), "headers": headers}
        if isinstance(self.body, str):
            args["content"] = self.body.encode()
        elif self.body is not None:
            args["json"] = self.body
        return args

    @property
    def model(self) -> str | None:
        model = self.body.get("model") if isinstance(self.body, dict) else None
        return model if isinstance(model, str) else None


def join_url(base_url: str, path: str) -> str:
    """``path`` on ``base_url``, with the same rule as endpoint routing (see the module docstring)."""
    scheme, _, rest = base_url.partition("://")
    host, slash, prefix = rest.partition("/")
    prefix = ("/" + prefix).rstrip("/") if slash else ""
    if not path.startswith("/"):
        path = "/" + path
    return f"{scheme}://{host}{place_path(prefix, path)}"


def load_workload(path: str | os.PathLike[str]) -> list[WorkloadRequest]:
    """Read a workload file; a bad line raises ``ValueError`` naming the file, the line and the problem."""
    requests = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                data = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{where}: not valid JSON: {exc}") from None
            if not isinstance(data, dict):
                raise ValueError(f"{where}: each line must be a JSON object, got {type(data).__name__}")
            unknown = set(data) - {"method", "path", "body", "headers", "at"}
            if unknown:
                raise ValueError(
                    f"{where}: unknown field(s) {', '.join(sorted(unknown))}; valid: at, body, headers, method, path"
                )
            if not isinstance(data.get("path"), str):
                raise ValueError(f"{where}: 'path' (a string like \"/chat/completions\") is required")
            headers = data.get("headers", {})
            if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
                raise ValueError(f"{where}: 'headers' must be an object of strings")
            secret = sorted(k for k in headers if k.lower() in CREDENTIAL_HEADERS)
            if secret:
                raise ValueError(
                    f"{where}: workloads must not carry credentials, found header(s) {', '.join(secret)}; "
                    "give the key with --api-key-env or the endpoints' api_key instead"
                )
            at = data.get("at")
            if at is not None and not (isinstance(at, (int, float)) and at >= 0):
                raise ValueError(f"{where}: 'at' must be a number of seconds >= 0, got {at!r}")
            method = data.get("method", "POST")
            if not isinstance(method, str):
                raise ValueError(f"{where}: 'method' must be a string, got {method!r}")
            requests.append(WorkloadRequest(data["path"], method.upper(), data.get("body"), headers, at))
    if not requests:
        raise ValueError(f"{path}: the workload is empty")
    return requests
