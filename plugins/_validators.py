"""attrs validators shared by the plugins' option classes.

Each accepts ``None`` exactly when the field is annotated as optional (``float | None``), so a required
option can never be switched off by writing nothing, and an optional one needs no ``optional()`` wrapper.
Messages name the option and the value, as config errors must.
"""

from __future__ import annotations

from typing import Any

__all__ = ["non_negative", "non_negative_int", "positive", "positive_int"]


def _none_allowed(attribute: Any) -> bool:
    return "None" in str(attribute.type)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def positive(instance: Any, attribute: Any, value: Any) -> None:
    """A number > 0."""
    if value is None and _none_allowed(attribute):
        return
    if not (_number(value) and value > 0):
        raise ValueError(f"{attribute.name!r} must be a number > 0, got {value!r}")


def non_negative(instance: Any, attribute: Any, value: Any) -> None:
    """A number >= 0."""
    if value is None and _none_allowed(attribute):
        return
    if not (_number(value) and value >= 0):
        raise ValueError(f"{attribute.name!r} must be a number >= 0, got {value!r}")


def positive_int(instance: Any, attribute: Any, value: Any) -> None:
    """An integer >= 1."""
    if value is None and _none_allowed(attribute):
        return
    if not (_integer(value) and value >= 1):
        raise ValueError(f"{attribute.name!r} must be an integer >= 1, got {value!r}")


def non_negative_int(instance: Any, attribute: Any, value: Any) -> None:
    """An integer >= 0."""
    if value is None and _none_allowed(attribute):
        return
    if not (_integer(value) and value >= 0):
        raise ValueError(f"{attribute.name!r} must be an integer >= 0, got {value!r}")
