"""attrs validators shared by the plugins' option classes.

Types are not checked here: the config loader checks every value against its field's annotation (see
:func:`aurelis_core.config.config_from_table`). These state ranges and formats. The general ones are
:mod:`aurelis_core.validators`' (public, for third-party plugins too), re-exported so first-party plugins
import them from one place; the ones below need this package's codecs.

Each accepts ``None`` exactly when the field is annotated as optional (``float | None``), so a required
option can never be switched off by writing nothing, and an optional one needs no ``optional()`` wrapper.
"""

from __future__ import annotations

from aurelis_core.validators import (
    PROBE,
    Invalid,
    at_least,
    each,
    existing_file,
    file_path,
    host_port,
    in_range,
    label,
    non_empty,
    non_negative,
    non_negative_int,
    one_of,
    positive,
    positive_int,
    probe_bind,
    probe_redis,
    probe_tcp,
    probe_writable_file,
    redis_url,
    url_path,
)

from ._serialize import CODEC_IDS

__all__ = [
    "PROBE",
    "Invalid",
    "at_least",
    "at_rest_codec",
    "each",
    "existing_file",
    "file_path",
    "fraction",
    "host_port",
    "in_range",
    "label",
    "non_empty",
    "non_negative",
    "non_negative_int",
    "one_of",
    "positive",
    "positive_int",
    "probe_bind",
    "probe_redis",
    "probe_tcp",
    "probe_writable_file",
    "redis_url",
    "url_path",
    "writable_file_probe",
]

#: A codec the cache tiers can store values with (``none``, ``gzip``, ``brotli``, ``lz4``).
at_rest_codec = one_of(CODEC_IDS, "a codec name")

#: A number strictly between 0 and 1.
fraction = in_range(0, 1, lo_open=True, hi_open=True)


def writable_file_probe(instance: object, attribute: object, value: str) -> str | None:
    """Probe for ``metadata={PROBE: ...}`` of a file path option: can the file be created or written?"""
    return probe_writable_file(value)
