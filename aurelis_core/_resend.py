"""Whether the pipeline may send a request a second time: the rules no retry policy can override.

A retry re-sends the caller's request exactly as it was built: the same headers, the same body bytes. Two kinds
of request must never go out twice from here, whatever a retry hook answers:

- **a one-shot body**: a generator, an iterator, a file object or an async iterable is read as it is sent. A
  second pass raises ``StreamConsumed`` (generators) or, worse, sends an empty body (iterators and files at
  their end) whose answer would be returned for the original request. Only a body held in memory (or a
  multipart form of in-memory parts) is sent again; see :func:`~aurelis_core._compat.replayable_body`.
- **a per-attempt signature**: SigV4 and similar schemes sign the request's date (and often its body) for one
  attempt; their clients (botocore, the SDKs' Bedrock and Vertex providers) sign each retry afresh, which a
  re-send from below them would skip. A signature is re-sent by its signer, never by the wrapper. Bearer tokens
  are not signatures: a token from a provider (Azure AD, Google) lives minutes to hours and is re-sent as it was.

The checks run only after a failed attempt, when a retry policy is enabled, so they cost nothing on the way
to a successful answer.
"""

from __future__ import annotations

from typing import Any

from ._compat import header_items, replayable_body, url_parts

__all__ = ["REFUSED_SIGNED", "REFUSED_STREAM", "resend_refusal", "signature_scheme"]

#: Counter names (``pipeline.stats.counters``) of failed attempts whose request may not be sent again.
REFUSED_STREAM = "retry_refused_stream"
REFUSED_SIGNED = "retry_refused_signed"

#: ``Authorization`` schemes that sign the request for one attempt (lower-cased, with the separator after the
#: scheme name). SigV4 / SigV4a (AWS), SigV2 (old S3), GOOG4 HMAC and RSA (Google Cloud Storage's HMAC keys),
#: SharedKey / SharedKeyLite (Azure Storage, over ``x-ms-date``), HTTP Message Signatures' ``Signature`` (the
#: cavage draft, Oracle Cloud), TC3 (Tencent Cloud), Digest (a nonce count per request), Hawk (a timestamp and
#: nonce), OAuth 1.0 (a timestamp, nonce and signature; OAuth 2 is ``Bearer``).
SIGNING_SCHEMES = (
    b"aws4-hmac-sha256 ",
    b"aws4-ecdsa-p256-sha256 ",
    b"aws ",
    b"goog4-hmac-sha256 ",
    b"goog4-rsa-sha256 ",
    b"sharedkey ",
    b"sharedkeylite ",
    b"signature ",
    b"tc3-hmac-sha256 ",
    b"digest ",
    b"hawk ",
    b"oauth ",
)

#: Headers that exist only as inputs to a signature: SigV4's date, GOOG4's date, RFC 9421's signature parameters.
SIGNING_HEADERS = frozenset({b"x-amz-date", b"x-goog-date", b"signature-input"})

#: Query parameters of presigned URLs (SigV4 and Google's V4 signing), compared lower-cased.
SIGNING_QUERY_PARAMETERS = frozenset({"x-amz-signature", "x-goog-signature"})


def signature_scheme(request: Any) -> str | None:
    """What signs ``request`` for one attempt (an ``Authorization`` scheme, a signing header or a presigned
    URL's query parameter, as written in the request), or ``None`` when nothing does."""
    for name, lower, value in header_items(request.headers):
        if lower == b"authorization":
            scheme = value.lstrip().lower()
            for prefix in SIGNING_SCHEMES:
                if scheme.startswith(prefix):
                    return value.lstrip()[: len(prefix) - 1].decode("latin-1")
        elif lower in SIGNING_HEADERS:
            return name.decode("latin-1")
    query = url_parts(request.url)[4]
    if query:
        for parameter in query.split("&"):
            key = parameter.partition("=")[0]
            if key.lower() in SIGNING_QUERY_PARAMETERS:
                return key
    return None


def resend_refusal(request: Any) -> str | None:
    """The counter naming why ``request`` may not be sent again (:data:`REFUSED_STREAM`,
    :data:`REFUSED_SIGNED`), or ``None`` when a re-send sends the same, still valid, bytes."""
    if not replayable_body(request):
        return REFUSED_STREAM
    if signature_scheme(request) is not None:
        return REFUSED_SIGNED
    return None
