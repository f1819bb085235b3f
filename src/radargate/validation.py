"""Value checks shared by the typed configs: each error names the field, the value and what is allowed."""

from __future__ import annotations

import math
from collections.abc import Sequence


def require_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} is not allowed; it must be an integer >= {minimum}")


def require_bool(name: str, value: object) -> None:
    """YAML's ``yes``/``no`` arrive as text where the field is not a bool: only true and false are accepted."""
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r} is not allowed; use true or false")


def require_number(
    name: str,
    value: object,
    *,
    low: float,
    high: float = math.inf,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value >= low if low_inclusive else value > low) and (
            value <= high if high_inclusive else value < high
        )
    if not ok:
        left = "[" if low_inclusive else "("
        right = "]" if high_inclusive else ")"
        raise ValueError(f"{name}={value!r} is not allowed; it must be a number in {left}{low}, {high}{right}")


def require_choice(name: str, value: object, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is unknown; choose one of {', '.join(allowed)}")
