"""How reports and figures read a number: what counts as one, and its text ("-" where it is missing)."""

from __future__ import annotations

import math

MISSING = "-"


def is_number(value: object) -> bool:
    """A finite int or float (``True``/``False``, ``None``, NaN and infinities are not numbers to show)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def as_percent(value: object) -> float | None:
    """A fraction as a percentage, or ``None`` when it is not a number."""
    return 100 * value if is_number(value) else None


def number(value: object, spec: str) -> str:
    return format(value, spec) if is_number(value) else MISSING


def percent(value: object) -> str:
    """A fraction as a percentage with one decimal, as every report table shows accuracies."""
    return number(as_percent(value), ".1f")
