"""A cache entry as bytes, for the tiers that store outside the process (``redis``, ``sqlite``).

Format 2 (all integers little-endian)::

    byte 0        format version (FORMAT_VERSION)
    bytes 1..16   tag: MAC of the entry under its cache key (see below), or 16 zero bytes in a sealed value
    byte 17       codec id of what follows (CODEC_IDS: 0 none, 1 lz4, 2 gzip, 3 brotli)
    bytes 18..    the payload, encoded with that codec of :mod:`aurelis_plugins.codecs`:
                    <H status> <d created> <d ttl, NaN for none> <H header count> <I chunk count + 1, 0 for none>
                    per header: <H name length> <I value length> name value
                    per chunk:  <I length>           (an event stream's chunk boundaries)
                    the body: the rest               (for a stream: its chunks, back to back)

**Authentication.** The tag is ``Tenant.entry_mac(cache key, SHA-256(byte 0 + bytes 17..))``: keyed by the
deployment's secret (``[tenant] secret``), bound to the cache key the value was stored under. :func:`loads`
checks it before it decompresses or parses anything, so a value planted by someone who can write to the store
but does not hold the secret, a value copied to another key, and a truncated or altered one are all refused
(:class:`Unauthenticated`), never served. The MAC is taken over a digest of the value rather than the value
itself so that a large entry can be hashed piece by piece, as it is written, without joining it into one
buffer first; SHA-256 is collision resistant, so the digest stands for the value. SHA-256 rather than
BLAKE2b for that pass: OpenSSL's runs on the CPU's SHA instructions, measured 2.2x faster than hashlib's
BLAKE2b over 64 KiB on this project's benchmark machine (``benchmarks/bench_tiers.py`` prints the cost per hit).
A value sealed with AES-256-GCM (the ``sqlite`` tier's ``encryption_key``) carries zero bytes instead: the
seal already authenticates it under the row's key, see :mod:`aurelis_plugins.sqlite_tier`.

Why this and not pickle or JSON: pickle would execute whatever a shared Redis hands it, and JSON would
base64 the body. This is one ``struct`` call plus slices each way, and the version byte makes a value another
version wrote a miss (:class:`SerializeError`), never misread: format 1 had no tag. The codec id is per value,
so a tier can change its ``codec`` option without invalidating what is already stored, and a value that does
not shrink (a tiny answer) is kept uncompressed rather than paying the codec on every read.

**Large entries** (payloads over ``LARGE``) are never joined: :func:`dumps_parts` returns the value as a list of
pieces (the body or the stream's chunks themselves, or the compressed pieces of a streaming compressor), which a
tier writes one by one (``sqlite`` through incremental blob I/O) or joins once (``redis``, whose values are
small by its ``max_entry_bytes``).

Only what :class:`~aurelis_core.CacheEntry` holds is written: status, the response headers the core kept
(per-call and credential-bearing headers are never in an entry) and the body. Hit counts are kept by each tier
next to the value, not inside it, so counting a hit never rewrites the value.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import struct
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from aurelis_core.plugin import CacheEntry, ConfigError, choices_hint

from .codecs import Codec, get_codec

__all__ = [
    "CODEC_IDS",
    "FORMAT_VERSION",
    "PREFIX",
    "SerializeError",
    "Unauthenticated",
    "codec_named",
    "dumps",
    "dumps_parts",
    "loads",
]

FORMAT_VERSION = 2
TAG = 16
#: Bytes before the payload: version, tag, codec id.
PREFIX = 2 + TAG
_ZERO_TAG = bytes(TAG)

_HEAD = struct.Struct("<HddHI")
_HEADER = struct.Struct("<HI")

#: Below this many bytes compression is not tried: the frame overhead eats the gain.
MIN_COMPRESS = 128
#: Payloads larger than this are compressed in pieces and handed to the tier as pieces, never joined.
LARGE = 1 << 20
_PIECE = 1 << 20

#: ``Tenant.entry_mac``: (cache key, digest) -> 16-byte tag.
Mac = Callable[[str, bytes], bytes]
Piece = bytes | memoryview


class SerializeError(ValueError):
    """The bytes are not an entry this version can read (another format version, unknown codec, truncated)."""


class Unauthenticated(SerializeError):
    """The value's tag does not verify: planted, moved to another key, altered, truncated, or written under
    another secret."""


#: The codec id written into each value, per codec name of :mod:`aurelis_plugins.codecs`. Ids are part of the
#: stored format: never renumber, only append.
CODEC_IDS = {"none": 0, "lz4": 1, "gzip": 2, "brotli": 3}
_NAMES = {ident: name for name, ident in CODEC_IDS.items()}


def codec_named(name: str, where: str) -> Codec:
    """The at-rest codec called ``name`` (``ConfigError`` naming the valid ones if none)."""
    if name not in CODEC_IDS:
        raise ConfigError(f"{where}: unknown codec {name!r}{choices_hint(name, CODEC_IDS)}")
    return get_codec(name)


def digest(pieces: Iterable[Piece]) -> bytes:
    """SHA-256 of the value ``pieces`` make, tag excluded (what the tag authenticates)."""
    h = hashlib.sha256()
    for piece in pieces:
        h.update(piece)
    return h.digest()


def dumps_parts(entry: CacheEntry, codec: Codec, key: str, mac: Mac | None) -> tuple[list[Piece], int]:
    """``entry`` as the pieces of one value and their total length, compressed with ``codec`` when that makes it
    smaller, tagged with ``mac`` under cache key ``key`` (``mac=None``: zero tag, for a value sealed after).

    The body, or an event stream's chunks, are pieces themselves (no copy); so are the compressor's outputs
    for a large payload.
    """
    headers = entry.headers
    chunks = entry.chunks
    ttl = math.nan if entry.ttl is None else entry.ttl
    parts: list[Piece] = [
        _HEAD.pack(entry.status_code, entry.created, ttl, len(headers), 0 if chunks is None else len(chunks) + 1)
    ]
    for name, value in headers:
        parts.append(_HEADER.pack(len(name), len(value)))
        parts.append(name)
        parts.append(value)
    if chunks is None:
        parts.append(entry.body)
    else:
        parts.append(struct.pack(f"<{len(chunks)}I", *map(len, chunks)))
        parts.extend(chunks)
    length = sum(map(len, parts))
    ident = CODEC_IDS[codec.name]
    if ident and length >= MIN_COMPRESS:
        packed = _compress(codec, parts, length)
        packed_length = sum(map(len, packed))
        if packed_length < length:
            parts, length = packed, packed_length
        else:
            ident = 0
    else:
        ident = 0
    codec_byte = bytes((ident,))
    if mac is None:
        tag = _ZERO_TAG
    else:
        tag = mac(key, digest([bytes((FORMAT_VERSION,)), codec_byte, *parts]))
    return [bytes((FORMAT_VERSION,)) + tag + codec_byte, *parts], length + PREFIX


def dumps(entry: CacheEntry, codec: Codec, key: str, mac: Mac | None) -> bytes:
    """``entry`` as one value (see :func:`dumps_parts`)."""
    parts, _ = dumps_parts(entry, codec, key, mac)
    return b"".join(parts)


def _compress(codec: Codec, parts: Sequence[Piece], length: int) -> list[Piece]:
    """``parts`` compressed as one frame: in one call for a small payload, in pieces for a large one (so the
    payload is never joined: a streaming compressor takes it piece by piece)."""
    if length <= LARGE:
        return [codec.compress(b"".join(parts))]
    compressor = _streaming(codec, length)
    out: list[Piece] = []
    for part in parts:
        for start in range(0, len(part), _PIECE):  # pieces of at most 1 MiB: bounded work per call
            piece = compressor.compress(memoryview(part)[start : start + _PIECE])
            if piece:
                out.append(piece)
    out.append(compressor.flush())
    return out


class _Streaming:
    """One codec's streaming compressor, producing the same format as ``Codec.compress`` does in one call."""

    def __init__(self, compress: Callable[[Any], bytes], flush: Callable[[], bytes], head: bytes = b"") -> None:
        self._compress = compress
        self._flush = flush
        self._head = head

    def compress(self, data: Any) -> bytes:
        out = self._compress(data)
        if self._head:
            out, self._head = self._head + out, b""
        return out

    def flush(self) -> bytes:
        return self._head + self._flush()


def _streaming(codec: Codec, length: int) -> _Streaming:
    if codec.name == "gzip":
        gzip = zlib.compressobj(codec.level, wbits=31)
        return _Streaming(gzip.compress, gzip.flush)
    if codec.name == "brotli":
        import brotli  # type: ignore[import-untyped]  # the brotli package ships no type information

        compressor = brotli.Compressor(quality=codec.level)
        return _Streaming(lambda data: compressor.process(bytes(data)), compressor.finish)
    if codec.name == "lz4":
        import lz4.frame  # type: ignore[import-untyped]  # the lz4 package ships no type information

        lz4_frame = lz4.frame.LZ4FrameCompressor(compression_level=codec.level)
        # The frame's header carries the content size, as the one-call ``compress(store_size=True)`` writes it.
        head = lz4_frame.begin(source_size=length)
        return _Streaming(lz4_frame.compress, lz4_frame.flush, head)
    raise SerializeError(f"no streaming compressor for codec {codec.name!r}")


def loads(data: bytes, key: str, mac: Mac | None) -> CacheEntry:
    """The entry ``data`` holds under cache key ``key``.

    :class:`Unauthenticated` if its tag does not verify with ``mac`` (checked before anything else is read);
    ``mac=None`` skips the check, only for a value whose seal was just opened (it authenticated it).
    :class:`SerializeError` if it is not an entry this version can read.
    """
    if len(data) < PREFIX:
        raise SerializeError("truncated cache entry")
    if data[0] != FORMAT_VERSION:
        raise SerializeError(f"a value of format {data[0]}, not {FORMAT_VERSION} (written by another version)")
    view = memoryview(data)
    if mac is not None:
        expected = mac(key, digest((view[:1], view[1 + TAG :])))
        if not hmac.compare_digest(expected, view[1 : 1 + TAG]):
            raise Unauthenticated("the value's tag does not verify")
    ident = data[1 + TAG]
    name = _NAMES.get(ident)
    if name is None:
        raise SerializeError(f"unknown codec id {ident}")
    try:
        # The codecs read any buffer: the stored bytes are not copied before they are decompressed.
        payload = get_codec(name).decompress(view[PREFIX:]) if ident else view[PREFIX:]
        view = memoryview(payload)
        status, created, ttl, n_headers, n_chunks = _HEAD.unpack_from(view, 0)
        offset = _HEAD.size
        headers = []
        for _ in range(n_headers):
            name_len, value_len = _HEADER.unpack_from(view, offset)
            offset += _HEADER.size
            name_end = offset + name_len
            value_end = name_end + value_len
            if value_end > len(view):
                raise SerializeError("truncated cache entry")
            headers.append((bytes(view[offset:name_end]), bytes(view[name_end:value_end])))
            offset = value_end
        if n_chunks:
            count = n_chunks - 1
            lengths = struct.unpack_from(f"<{count}I", view, offset)
            offset += 4 * count
            if offset + sum(lengths) != len(view):
                raise SerializeError("truncated cache entry")
            chunks = []
            for length in lengths:
                chunks.append(bytes(view[offset : offset + length]))
                offset += length
            entry = CacheEntry(status, headers, b"", chunks=chunks, created=created)
        else:
            if offset > len(view):
                raise SerializeError("truncated cache entry")
            entry = CacheEntry(status, headers, bytes(view[offset:]), created=created)
    except SerializeError:
        raise
    except Exception as exc:  # struct.error, a codec's own error type: all mean "not readable"
        raise SerializeError(f"unreadable cache entry: {exc}") from None
    entry.ttl = None if math.isnan(ttl) else ttl
    return entry
