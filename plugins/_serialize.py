"""A cache entry as bytes, for the tiers that store outside the process (``redis``, ``sqlite``).

Layout (all integers little-endian)::

    byte 0        format version (FORMAT_VERSION)
    byte 1        codec id of what follows (CODEC_IDS: 0 none, 1 lz4, 2 gzip, 3 brotli)
    bytes 2..     the payload, encoded with that codec of :mod:`aurelis_plugins.codecs`:
                    <H status> <d created> <d ttl, NaN for none> <H header count> <I chunk count + 1, 0 for none>
                    per header: <H name length> <I value length> name value
                    per chunk:  <I length> chunk
                    the body: the rest

Why this and not pickle or JSON: pickle would execute whatever a shared Redis hands it, and JSON would
base64 the body. This is one ``struct`` call plus slices each way, and the version byte lets a later format
read (or reject, as a miss) what an older one wrote. The codec id is per value, so a tier can change its
``codec`` option without invalidating what is already stored, and a value that does not shrink (a tiny
answer) is kept uncompressed rather than paying the codec on every read.

Only what :class:`~aurelis_core.CacheEntry` holds is written: status, the response headers the core kept
(per-call and credential-bearing headers are never in an entry) and the body. Hit counts are kept by each tier
next to the value, not inside it, so counting a hit never rewrites the value.
"""

from __future__ import annotations

import math
import struct

from aurelis_core import CacheEntry
from aurelis_core.config import ConfigError, choices_hint

from .codecs import Codec, get_codec

__all__ = ["CODEC_IDS", "FORMAT_VERSION", "SerializeError", "codec_named", "dumps", "loads"]

FORMAT_VERSION = 1

_HEAD = struct.Struct("<HddHI")
_HEADER = struct.Struct("<HI")
_LEN = struct.Struct("<I")

#: Below this many bytes compression is not tried: the frame overhead eats the gain.
MIN_COMPRESS = 128


class SerializeError(ValueError):
    """The bytes are not an entry this version can read (unknown version or codec, truncated)."""


#: The codec id written into each value, per codec name of :mod:`aurelis_plugins.codecs`. Ids are part of the
#: stored format: never renumber, only append.
CODEC_IDS = {"none": 0, "lz4": 1, "gzip": 2, "brotli": 3}
_NAMES = {ident: name for name, ident in CODEC_IDS.items()}


def codec_named(name: str, where: str) -> Codec:
    """The at-rest codec called ``name`` (``ConfigError`` naming the valid ones if none)."""
    if name not in CODEC_IDS:
        raise ConfigError(f"{where}: unknown codec {name!r}{choices_hint(name, CODEC_IDS)}")
    return get_codec(name)


def dumps(entry: CacheEntry, codec: Codec) -> bytes:
    """``entry`` as bytes, compressed with ``codec`` when that makes it smaller."""
    headers = entry.headers
    chunks = entry.chunks
    ttl = math.nan if entry.ttl is None else entry.ttl
    parts = [_HEAD.pack(entry.status_code, entry.created, ttl, len(headers), 0 if chunks is None else len(chunks) + 1)]
    for name, value in headers:
        parts.append(_HEADER.pack(len(name), len(value)))
        parts.append(name)
        parts.append(value)
    if chunks is not None:
        for chunk in chunks:
            parts.append(_LEN.pack(len(chunk)))
            parts.append(chunk)
    parts.append(entry.body)
    payload = b"".join(parts)
    ident = CODEC_IDS[codec.name]
    if ident and len(payload) >= MIN_COMPRESS:
        packed = codec.compress(payload)
        if len(packed) < len(payload):
            return bytes((FORMAT_VERSION, ident)) + packed
    return bytes((FORMAT_VERSION, 0)) + payload


def loads(data: bytes) -> CacheEntry:
    """The entry ``data`` holds; :class:`SerializeError` if it is not one this version can read."""
    if len(data) < 2 or data[0] != FORMAT_VERSION:
        raise SerializeError(f"not a cache entry of format {FORMAT_VERSION}")
    ident = data[1]
    name = _NAMES.get(ident)
    if name is None:
        raise SerializeError(f"unknown codec id {ident}")
    try:
        payload = get_codec(name).decompress(data[2:]) if ident else data[2:]
        view = memoryview(payload)
        status, created, ttl, n_headers, n_chunks = _HEAD.unpack_from(view, 0)
        offset = _HEAD.size
        headers = []
        for _ in range(n_headers):
            name_len, value_len = _HEADER.unpack_from(view, offset)
            offset += _HEADER.size
            name_end = offset + name_len
            value_end = name_end + value_len
            headers.append((bytes(view[offset:name_end]), bytes(view[name_end:value_end])))
            offset = value_end
        chunks: tuple[bytes, ...] | None = None
        if n_chunks:
            items = []
            for _ in range(n_chunks - 1):
                (length,) = _LEN.unpack_from(view, offset)
                offset += _LEN.size
                items.append(bytes(view[offset : offset + length]))
                offset += length
            chunks = tuple(items)
        if offset > len(view):
            raise SerializeError("truncated cache entry")
        body = bytes(view[offset:])
    except SerializeError:
        raise
    except Exception as exc:  # struct.error, a codec's own error type: all mean "not readable"
        raise SerializeError(f"unreadable cache entry: {exc}") from None
    return CacheEntry(
        status, headers, body, chunks=chunks, created=created, ttl=None if math.isnan(ttl) else ttl
    )
