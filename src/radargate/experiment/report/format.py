"""How reports and figures read a number: what counts as one, and its text ("-" where it is missing)."""

from __future__ import annotations

import math

MISSING = "-"
VERDICT_SHORT = {"better": "better", "worse": "worse", "no detectable difference": "no diff."}
"""An interval's verdict as a table cell writes it."""


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


def signed_difference(metric: str, value: float) -> str:
    """A difference as the reports write it: accuracy and exact match in points (+1.8), answer NLL in nats
    (-0.062)."""
    return f"{100 * value:+.1f}" if metric in ("acc", "exact_match") else f"{value:+.3f}"


def validation_text(record: dict | None) -> str:
    """A cell's last validation answer NLL and accuracy (``0.693 / 41.5``), or why there is none."""
    if record is None:
        return MISSING
    if record["failed"]:
        return "diverged"
    last = record["metrics"]["validation"][-1] if record["metrics"]["validation"] else {}
    return f"{number(last.get('macro_answer_nll'), '.3f')} / {percent(last.get('macro_acc'))}"
