"""How the report writes its figures: durations in the unit that fits, shares, counts, scores.

Shared by the text report, the HTML page and its chart axes, so a figure reads the same everywhere.
"""

from __future__ import annotations

import math

__all__ = ["count", "duration", "number", "percent", "percent_below", "rounded_down", "usd"]


def duration(seconds: float | None) -> str:
    """A duration in the unit that fits: cache hits are microseconds (never "0.0 ms"), upstream calls
    milliseconds, long generations seconds."""
    if seconds is None:
        return "-"
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f} \u00b5s"  # the micro sign, as an escape: it looks like the Greek mu
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def percent_below(value: float) -> str:
    """A share compared with a threshold it is below: rounded down, so 69.96% never prints as "70.0%"."""
    return f"{math.floor(value * 1000) / 10:.1f}%"


def rounded_down(value: float | None) -> str:
    """A score or a ratio of a target, rounded down: 99.6 is not "100", which would say the target was met."""
    return "-" if value is None else f"{math.floor(value + 1e-9):d}"


def number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def count(value: float) -> str:
    """A count or a rate, short: ``950``, ``1.5k``, ``12k``, ``3.2M``; fractions below 10 keep one digit."""
    magnitude = abs(value)
    for limit, suffix in ((1e6, "M"), (1e3, "k")):
        if magnitude >= limit:
            scaled = value / limit
            return f"{scaled:.1f}".rstrip("0").rstrip(".") + suffix if abs(scaled) < 10 else f"{scaled:.0f}{suffix}"
    if magnitude >= 10 or value == int(value):
        return f"{value:.0f}"
    return f"{value:.2g}" if magnitude < 1 else f"{value:.1f}".rstrip("0").rstrip(".")


def usd(amount: float) -> str:
    """Dollars, with three significant digits below a dollar (``$12.35``, ``$0.0042``, ``$0.000123``): a cached
    short answer saves fractions of a cent, and "$0.00" would say it saved nothing."""
    if amount == 0 or amount >= 1:
        return f"${amount:,.2f}"
    decimals = max(2, 2 - math.floor(math.log10(amount)))
    return f"${amount:.{decimals}f}"
