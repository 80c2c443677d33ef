"""The one option validator that is the plugins' own: it needs the codecs of this package.

Every other validator is public and lives in :mod:`aurelis_core.plugin` (the plugin API, which re-exports
:mod:`aurelis_core.validators`); first-party plugins import them from there, as third-party plugins do.
"""

from __future__ import annotations

from aurelis_core.plugin import one_of

from ._serialize import CODEC_IDS

__all__ = ["at_rest_codec"]

#: A codec the cache tiers can store values with (``none``, ``gzip``, ``brotli``, ``lz4``).
at_rest_codec = one_of(CODEC_IDS, "a codec name")
