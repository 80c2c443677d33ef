"""Codecs: the byte compressors shared by the wire (``Content-Encoding``) and the cache tiers (at rest).

>>> codec = get_codec("lz4")
>>> codec.decompress(codec.compress(b"x" * 4096)) == b"x" * 4096
True

Four codecs are known by name:

========  ==============  ===========================================================================
name      ``http_token``  use
========  ==============  ===========================================================================
``none``  ``None``        identity: no compression (a tier's way to say "store as is")
``gzip``  ``"gzip"``      on the wire (every server decodes it); zlib from the standard library
``brotli````"br"``        on the wire (smaller than gzip on JSON at similar speed); extra ``compression``
``lz4``   ``None``        at rest only: the fastest, the default for cache tiers; extra ``compression``
========  ==============  ===========================================================================

``http_token`` is the ``Content-Encoding`` value a codec is sent as; ``None`` means it must never appear on the
wire (lz4 is not an HTTP content-coding: no server would decode it). Codecs are stateless and thread-safe;
``get_codec`` returns shared instances, so calling it per value costs a dict lookup.

The formats are fixed so that stored values stay readable across versions: gzip is RFC 1952 (mtime 0, so the
same input always gives the same bytes), brotli is RFC 7932, lz4 is the LZ4 *frame* format (self-describing,
readable by the ``lz4`` command-line tool), not the bare block format.
"""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Callable
from typing import Any

from aurelis_core.plugin import ConfigError, choices_hint

__all__ = ["CODEC_NAMES", "BytesLike", "Codec", "codec_for_token", "get_codec", "wire_codecs"]

#: What a codec reads: any bytes-like object (the tiers decompress a ``memoryview`` of the stored value, uncopied).
BytesLike = bytes | bytearray | memoryview

#: Every codec name ``get_codec`` accepts.
CODEC_NAMES = ("none", "gzip", "brotli", "lz4")

#: Levels chosen for request/response-sized JSON (1-64 KiB). On a 16 KiB chat body (bench_codecs.py's) gzip 9
#: saved 0.1% more than gzip 6; brotli 11 made it 10% smaller than brotli 5 but took ~100x longer (26 ms vs
#: 0.25 ms), far more than the bytes saved are worth on a request.
DEFAULT_LEVELS = {"gzip": 6, "brotli": 5, "lz4": 0}

#: The extra that installs each optional codec's library.
_EXTRAS = {"brotli": ("brotli", "compression"), "lz4": ("lz4.frame", "compression")}


class Codec:
    """One compression format: ``compress(bytes) -> bytes`` and its inverse.

    ``name`` is the registry name, ``http_token`` the ``Content-Encoding`` token (``None``: at rest only),
    ``level`` the compression level it was made with (its meaning is the library's own).
    """

    __slots__ = ("_compress", "_decompress", "http_token", "level", "name")

    def __init__(
        self, name: str, http_token: str | None, level: int, compress: Callable[[BytesLike], bytes],
        decompress: Callable[[BytesLike], bytes],
    ) -> None:
        self.name = name
        self.http_token = http_token
        self.level = level
        self._compress = compress
        self._decompress = decompress

    def compress(self, data: BytesLike) -> bytes:
        return self._compress(data)

    def decompress(self, data: BytesLike) -> bytes:
        return self._decompress(data)

    def __repr__(self) -> str:
        return f"<Codec {self.name} level={self.level}>"


def _library(name: str) -> Any:
    module, extra = _EXTRAS[name]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"the {name} codec needs: pip install 'aurelis[{extra}]'") from None


def _identity(data: BytesLike) -> bytes:
    # Bytes are handed back as they are (no copy); only another buffer is copied, to keep the promise of bytes.
    return data if type(data) is bytes else bytes(data)


def _build(name: str, level: int) -> Codec:
    if name == "none":
        return Codec("none", None, 0, _identity, _identity)
    if name == "gzip":
        # zlib with wbits=31 writes a gzip member with mtime 0 and no file name: what gzip.compress(mtime=0)
        # does, without its Python-level header assembly.
        return Codec(
            "gzip", "gzip", level,
            lambda data: zlib.compress(data, level, wbits=31),
            lambda data: zlib.decompress(data, wbits=31),
        )
    if name == "brotli":
        brotli = _library("brotli")
        return Codec(
            "brotli", "br", level,
            lambda data: brotli.compress(data, quality=level),
            brotli.decompress,
        )
    if name == "lz4":
        frame = _library("lz4")
        # The frame stores the content size (one allocation on decompress) and no checksum (the library's
        # default): the stores behind the tiers keep their own integrity, and lz4 is chosen for speed.
        return Codec(
            "lz4", None, level,
            lambda data: frame.compress(data, compression_level=level, store_size=True),
            frame.decompress,
        )
    raise ConfigError(f"unknown codec {name!r}{choices_hint(name, CODEC_NAMES)}")


_shared: dict[tuple[str, int], Codec] = {}


def get_codec(name: str, level: int | None = None) -> Codec:
    """The codec called ``name`` (one of :data:`CODEC_NAMES`), at ``level`` (default: :data:`DEFAULT_LEVELS`).

    Raises :class:`~aurelis_core.ConfigError` naming the valid codecs for an unknown name, and ``ImportError``
    naming the extra to install when the codec's library is missing.
    """
    key = (name, DEFAULT_LEVELS.get(name, 0) if level is None else level)
    codec = _shared.get(key)
    if codec is None:
        codec = _shared[key] = _build(*key)
    return codec


_by_token = {"gzip": "gzip", "x-gzip": "gzip", "br": "brotli", "identity": "none"}


def codec_for_token(token: str) -> Codec | None:
    """The codec for a ``Content-Encoding`` token (``"gzip"``, ``"br"``...), or ``None`` if none is known."""
    name = _by_token.get(token.strip().lower())
    return None if name is None else get_codec(name)


def wire_codecs() -> tuple[str, ...]:
    """Names of the codecs that may be sent on the wire and are installed, best ratio first."""
    names = []
    for name in ("brotli", "gzip"):
        try:
            get_codec(name)
        except ImportError:
            continue
        names.append(name)
    return tuple(names)
