"""Who is asking, and which variant of an answer they ask for: the one definition every stage scopes by.

A cached answer may only ever be served to the tenant it was made for, and only for the same variant of the
request. Two things about a request decide that besides its URL and body, and this module is the only place
that defines them (the cache key, rate limits per credential, the workload recorder and the semantic tier all
read them from here, through ``pipeline.tenant``):

- **credentials**: the headers and query parameters that say *who* is asking (``Authorization``, ``api-key``,
  ``x-goog-api-key``, Gemini's ``?key=``...). They are never stored, logged or written anywhere: a request's
  tenant is an HMAC-SHA256 fingerprint of all of them (keyed by the deployment's secret), or an explicit
  namespace that the config or the request gives (which then shares answers across every credential).
- **answer-scoping headers**: the headers that select *which* answer the same credential gets
  (``OpenAI-Organization``, ``OpenAI-Project``, ``OpenAI-Beta``, ``anthropic-version``, ``anthropic-beta``,
  ``Accept``, ``Accept-Encoding``...). They are part of the cache key as they are. (Query parameters need no
  such list: the whole query, credentials taken out, is part of the key.)

Both sets have documented defaults (below) that cover the providers users meet, and are extended from the
``[tenant]`` table of the config::

    [tenant]
    secret = "..."                           # or AURELIS_CACHE_SECRET: keys the fingerprints and entry MACs
    namespace = "team-a"                     # optional: one scope for every credential
    credential_headers = ["x-my-gateway-key"]
    credential_params = ["sig"]
    scope_headers = ["x-my-region"]

The secret also keys the message authentication codes with which the shared tiers (Redis, SQLite) sign their
entries (:meth:`Tenant.entry_mac`), so a value planted by someone with write access to the store is never
served. Without a configured secret a fixed label is used: fingerprints then stay unreadable but can be
correlated across deployments, and entry MACs protect against corruption, not against a planted value.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import unquote_plus

import attrs

from .validators import each, header_name, label

__all__ = [
    "DEFAULT_CREDENTIAL_HEADERS",
    "DEFAULT_CREDENTIAL_PARAMS",
    "DEFAULT_SCOPE_HEADERS",
    "SECRET_ENV",
    "Identity",
    "Tenant",
    "TenantConfig",
]

#: The environment variable that holds the deployment's secret when the config gives none.
SECRET_ENV = "AURELIS_CACHE_SECRET"
#: The HMAC key when no secret is configured (see the module docstring for what that leaves open).
_FALLBACK_SECRET = b"aurelis-unkeyed-deployment"

#: Request headers that carry a credential (lower case). Each of them is fingerprinted, never kept.
DEFAULT_CREDENTIAL_HEADERS: tuple[str, ...] = (
    "authorization",  # OpenAI, Anthropic SDK 2.x, GitHub Models, Mistral, Groq, vLLM, Ollama, OpenRouter...
    "proxy-authorization",
    "api-key",  # Azure OpenAI
    "x-api-key",  # Anthropic
    "x-goog-api-key",  # Gemini
    "ocp-apim-subscription-key",  # Azure API Management
    "cf-aig-authorization",  # Cloudflare AI Gateway
    "x-portkey-api-key",
    "x-portkey-virtual-key",
    "helicone-auth",
    "x-litellm-api-key",
    "x-amz-security-token",  # AWS session credentials (Bedrock)
    "x-auth-token",
    "x-access-token",
    # Not "cookie": AI APIs authenticate by key, and their edges set cookies (Cloudflare's __cf_bm on OpenAI's
    # answers) that an httpx client sends back from its second request on, rotating every half hour: as a
    # credential they would split every tenant's entries. An API that authenticates by cookie adds it in
    # [tenant] credential_headers.
)

#: Query parameters that carry a credential (compared in lower case, after percent-decoding the name).
DEFAULT_CREDENTIAL_PARAMS: tuple[str, ...] = (
    "key",  # Gemini
    "api_key",
    "api-key",
    "apikey",
    "access_token",
    "token",
    "code",  # Azure Functions keys
    "subscription-key",  # Azure API Management
    "sig",  # Azure shared access signatures
    "signature",
    "x-amz-credential",
    "x-amz-security-token",
    "x-amz-signature",
    "x-goog-credential",
    "x-goog-signature",
)

#: Request headers that select which answer a credential gets (lower case): part of the cache key.
DEFAULT_SCOPE_HEADERS: tuple[str, ...] = (
    "openai-organization",
    "openai-project",
    "openai-beta",
    "anthropic-version",
    "anthropic-beta",
    "x-goog-user-project",
    "x-github-api-version",
    "api-version",
    "x-portkey-config",
    "x-portkey-provider",
    # The representation the answer comes in: a stored body keeps its Content-Encoding, so a client that
    # cannot decode it (no brotli installed) must not be handed another client's brotli answer.
    "accept",
    "accept-encoding",
)


def _lower(names: Any) -> Any:
    # Header and parameter names are compared in lower case; what is not a list is left for the annotation's
    # check to refuse (a bare string is never taken as a list of its characters).
    if isinstance(names, (list, tuple)):
        return tuple(n.strip().lower() if isinstance(n, str) else n for n in names)
    return names


@attrs.frozen
class TenantConfig:
    """The ``[tenant]`` table: who is asking, and what scopes an answer (see :mod:`aurelis_core._tenant`)."""

    #: The HMAC key of credential fingerprints and of the shared tiers' entry MACs (default: the environment
    #: variable ``AURELIS_CACHE_SECRET``; set one in production, the same on every replica).
    secret: str | None = attrs.field(default=None, repr=False, validator=label)
    #: One explicit tenant for every credential: answers are shared across all API keys (default: none, one
    #: tenant per credential).
    namespace: str | None = attrs.field(default=None, validator=label)
    #: Headers that carry credentials, besides the defaults (``DEFAULT_CREDENTIAL_HEADERS``).
    credential_headers: tuple[str, ...] = attrs.field(default=(), converter=_lower, validator=each(header_name))
    #: Query parameters that carry credentials, besides the defaults (``DEFAULT_CREDENTIAL_PARAMS``).
    credential_params: tuple[str, ...] = attrs.field(default=(), converter=_lower, validator=each(label))
    #: Headers that select which answer a credential gets, besides the defaults (``DEFAULT_SCOPE_HEADERS``).
    scope_headers: tuple[str, ...] = attrs.field(default=(), converter=_lower, validator=each(header_name))

    def __attrs_post_init__(self) -> None:
        both = sorted(set(self.credential_headers) & set(self.scope_headers) | (
            set(self.scope_headers) & set(DEFAULT_CREDENTIAL_HEADERS)
        ))
        if both:
            raise ValueError(
                f"header(s) {', '.join(both)} cannot be both credential and scope headers: a credential is "
                "only ever fingerprinted, a scope header is keyed as it is"
            )


@attrs.frozen
class Identity:
    """Who asked (``tenant``) and for which variant (``scope``), for one request.

    ``tenant`` is ``"ns:<namespace>"``, ``"key:<fingerprint>"`` or ``"anonymous"``; ``scope`` the
    answer-scoping headers as sorted ``(name, value)`` pairs. Neither ever holds a credential.
    """

    tenant: str
    scope: tuple[tuple[str, str], ...] = ()


class Tenant:
    """The pipeline's definition of tenant and scope (``pipeline.tenant``). Thread-safe, and cheap per request:
    the name sets are frozensets of the lower-cased bytes that ``Headers`` already holds, and fingerprints are
    memoised (an HMAC costs ~1.5 us, a dict hit ~50 ns, and a process sees few credentials)."""

    def __init__(self, config: TenantConfig | None = None) -> None:
        config = config if config is not None else TenantConfig()
        self.config = config
        secret = config.secret if config.secret is not None else os.environ.get(SECRET_ENV) or None
        #: Whether a secret was configured (config or environment): ``config check`` warns when shared tiers
        #: run without one.
        self.has_secret = secret is not None
        self._secret = secret.encode() if secret is not None else _FALLBACK_SECRET
        # Separate keys per use, derived from the one secret, so a fingerprint can never be replayed as a MAC.
        self._fingerprint_key = self._secret
        self._mac_key = hmac.new(self._secret, b"aurelis entry mac v1", hashlib.sha256).digest()
        self.namespace = config.namespace
        #: Lower-cased credential header names, as bytes (what ``_compat.header_items`` yields).
        self.credential_headers = frozenset(
            n.encode("latin-1") for n in (*DEFAULT_CREDENTIAL_HEADERS, *config.credential_headers)
        )
        #: Lower-cased credential query parameter names.
        self.credential_params = frozenset((*DEFAULT_CREDENTIAL_PARAMS, *config.credential_params))
        #: Lower-cased answer-scoping header names, as bytes.
        self.scope_headers = frozenset(
            n.encode("latin-1") for n in (*DEFAULT_SCOPE_HEADERS, *config.scope_headers)
        )
        self._fingerprints: dict[tuple[tuple[bytes, bytes], ...], str] = {}

    # --- the parts of a request ------------------------------------------------------------------------------

    def fingerprint(self, credentials: Sequence[tuple[bytes, bytes]]) -> str:
        """The tenant of a request without a namespace, given its credentials as ``(name, value)`` pairs (see
        :meth:`scan` and :meth:`split_query`): ``"key:<hmac>"``, or ``"anonymous"`` when it carries none."""
        if not credentials:
            return "anonymous"
        memo_key = tuple(credentials)
        fingerprint = self._fingerprints.get(memo_key)
        if fingerprint is None:
            if len(self._fingerprints) >= 4096:
                self._fingerprints.clear()
            # Length-prefixed, so no name or value can run into the next whatever bytes it holds.
            material = b"".join(b"%d:%s%d:%s" % (len(n), n, len(v), v) for n, v in memo_key)
            fingerprint = "key:" + hmac.new(self._fingerprint_key, material, hashlib.sha256).hexdigest()[:32]
            self._fingerprints[memo_key] = fingerprint
        return fingerprint

    def scan(
        self, header_items: Iterable[tuple[bytes, bytes, bytes]]
    ) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]:
        """``(credentials, scope)`` of a request's headers (``(raw, lower, value)`` triples), each a list of
        ``(lower-cased name, value)`` pairs in the order sent. Credentials are fingerprint input, never to be
        stored."""
        credential_names = self.credential_headers
        scope_names = self.scope_headers
        credentials: list[tuple[bytes, bytes]] = []
        scope: list[tuple[bytes, bytes]] = []
        for _, lower, value in header_items:
            if lower in credential_names:
                credentials.append((lower, value))
            elif lower in scope_names:
                scope.append((lower, value))
        return credentials, scope

    def split_query(self, query: str | None) -> tuple[str | None, tuple[tuple[bytes, bytes], ...]]:
        """``(the query without credential parameters, those parameters as credential pairs)``.

        The query keeps its other parameters exactly as sent (order and encoding: they are part of the key as
        they are); a credential parameter is recognised by its percent-decoded, lower-cased name.
        """
        if not query:
            return query, ()
        names = self.credential_params
        kept: list[str] = []
        credentials: list[tuple[bytes, bytes]] = []
        for part in query.split("&"):
            name, _, value = part.partition("=")
            if unquote_plus(name).strip().lower() in names:
                credentials.append((b"?" + name.encode("utf-8", "surrogateescape"),
                                    value.encode("utf-8", "surrogateescape")))
            else:
                kept.append(part)
        if not credentials:
            return query, ()
        return "&".join(kept), tuple(credentials)

    @staticmethod
    def scope_of(pairs: Sequence[tuple[bytes, bytes]]) -> tuple[tuple[str, str], ...]:
        """Scope pairs as a canonical, sorted tuple of ``(name, value)`` strings."""
        return tuple(sorted((n.decode("latin-1"), v.decode("latin-1")) for n, v in pairs))

    # --- a whole request -------------------------------------------------------------------------------------

    def identify(self, request: Any, namespace: str | None = None) -> Identity:
        """The :class:`Identity` of an httpx/httpx2 ``request``; ``namespace`` (a request's own control)
        overrides the configured one."""
        from ._compat import header_items, url_parts

        credentials, scope = self.scan(header_items(request.headers))
        _, in_query = self.split_query(url_parts(request.url)[4])
        namespace = namespace or self.namespace
        tenant = "ns:" + namespace if namespace is not None else self.fingerprint([*credentials, *in_query])
        return Identity(tenant, self.scope_of(scope))

    def redact_query(self, query: str | None) -> str | None:
        """``query`` with the values of its credential parameters replaced by ``REDACTED`` (for files, logs)."""
        if not query:
            return query
        params = self.credential_params
        parts = []
        for part in query.split("&"):
            name, eq, _ = part.partition("=")
            parts.append(f"{name}=REDACTED" if eq and unquote_plus(name).strip().lower() in params else part)
        return "&".join(parts)

    def is_credential_header(self, name: str | bytes) -> bool:
        """Whether a header of this name carries a credential."""
        raw = name.encode("latin-1") if isinstance(name, str) else name
        return raw.lower() in self.credential_headers

    # --- entries at rest ----------------------------------------------------------------------------------------

    def entry_mac(self, key: str, value: bytes) -> bytes:
        """A 16-byte tag of a stored ``value`` under cache key ``key``, keyed by the deployment's secret: the
        shared tiers store it with each value and serve only values whose tag verifies.

        Keyed BLAKE2b (a MAC by design, RFC 7693) rather than HMAC-SHA256: one hash instead of two, ~0.4 us for
        a chat answer against ~1.5 us, and faster per byte on large answers.
        """
        mac = hashlib.blake2b(key.encode(), key=self._mac_key, digest_size=16, person=b"aurelis-entry")
        mac.update(b"\x00")
        mac.update(value)
        return mac.digest()
