"""Request bodies as plugins see them: one JSON parse, one number policy, whoever parses first.

``ctx.json`` is filled either by the key stage (which parses the body anyway to make the key) or lazily, on
first use, by the core. Both must give plugins the same values, or a plugin would see ``1`` on a request that
was keyed and ``1.0`` on a repeat the key stage recognised without parsing. So both parse here:

- a number with an integral value is an ``int`` (``1.0``, ``1e2``), up to :data:`MAX_INT_DIGITS` digits;
- any other number is an exact :class:`decimal.Decimal` (``0.7`` is ``Decimal("0.7")``, never a binary float
  that rounds, and ``1e400`` is neither infinity nor ``null``);
- JSON's non-standard ``NaN``/``Infinity`` are refused, as RFC 8259 says.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec

__all__ = ["MAX_INT_DIGITS", "parse_json"]

#: Integral values with at most this many digits become ints; longer ones (``1e999999999``) stay decimals, so a
#: hostile exponent cannot make the parser build a gigantic integer.
MAX_INT_DIGITS = 1000


def _parse_number(text: str) -> int | Decimal:
    """The canonical value of a JSON number with a fraction or an exponent, given its text.

    Called by the decoder for each such number: normalising here costs one call per number, where walking the
    parsed tree afterwards would cost a visit per node. ``Decimal(text)`` is exact (the context's precision
    applies to arithmetic, not to construction) and costs about what ``float(text)`` does (~0.4 us).
    """
    value = Decimal(text)
    if text[-1] != "0" and "e" not in text and "E" not in text:
        # The usual number ("0.7", "0.95"): a fraction that does not end in zero is neither integral nor
        # carries trailing zeros, so it is already in the form the general path below would make (~3x cheaper).
        return value
    if not value:
        return 0  # 0.0, -0.0, 0e5: zero
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # a JSON number is finite
    length = len(digits)
    while digits[length - 1] == 0:  # 1.50 and 1.5 are one number: drop the coefficient's trailing zeros
        length -= 1
        exponent += 1
    if exponent >= 0 and length + exponent <= MAX_INT_DIGITS:
        return int(value)  # integral: the same key as the integer literal
    return Decimal((sign, digits[:length], exponent))


# msgspec, in C: ~2 us for a chat body where the standard library's json takes ~6-10 us.
_DECODER = msgspec.json.Decoder(float_hook=_parse_number)


def parse_json(body: bytes) -> Any:
    """The JSON value of ``body`` under the number policy above.

    Raises :class:`msgspec.DecodeError` (a :class:`ValueError`) when ``body`` is not UTF-8 JSON, and
    :class:`RecursionError` when it nests too deeply to parse.
    """
    return _DECODER.decode(body)
